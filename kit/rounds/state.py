"""A run's state, the same for every runtime: the method on its model (θ₀ and z checked against what
a checkpoint recorded), the checkpointed global state and its rebuild (checked against the recorded
digest), and the run's description in `summary.json`.

Used by Lightning's loop, Flower's strategy, `kit.rebuild` (so `eval --run`, `export`) alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

import torch

from kit.errors import UsageError
from kit.federation.faults import FaultModel
from kit.identity import check_rebuilt, check_theta0, theta0_identity
from kit.methods.base import FedSettings, Method
from kit.zo.definition import ZDefinition, check_same
from kit.zo.master import check_recorded, master_dtype_of


def prepare_model(
    method: Method, net: torch.nn.Module, model_id: str, recorded: Mapping | None, where: str
) -> tuple[torch.nn.Module, dict]:
    """θ₀'s identity, then the method's model (`method.prepare`); returns (model, θ₀ identity).

    With `recorded` (a checkpoint's `master_dtype`, `theta0` and `z`, named `where` in errors) weights of
    another dtype or another θ₀ are refused
    and z is drawn as recorded whatever this device's default backend (another z refused)."""
    recorded = recorded or {}
    if recorded:  # absent in older checkpoints: float32
        check_recorded(recorded.get("master_dtype"), master_dtype_of(net), where)
    theta0 = theta0_identity(model_id, net)
    if recorded.get("theta0"):
        check_theta0(recorded["theta0"], theta0, where)
    if recorded.get("z"):
        method.z_record = ZDefinition.from_dict(recorded["z"])
    net = method.prepare(net)
    if method.z_record is not None:
        check_same(method.z_record, method.z_definition(), where)
    return net, theta0


def z_dict(method: Method) -> dict | None:
    """The definition of the z the method draws, as recorded (None: it draws none)."""
    zdef = method.z_definition()
    return zdef.to_dict() if zdef is not None else None


def checkpoint_state(method: Method, rounds_done: int, theta0: dict | None, round_digests: list[str]) -> dict:
    """The run's global state in a checkpoint (plain values and tensors, `weights_only`-loadable)."""
    return {
        "method": method.name,
        "rounds_done": rounds_done,
        "method_state": method.state_dict(),
        "theta0": theta0,
        "z": z_dict(method),
        "round_digests": list(round_digests),
    }


def check_method(state: Mapping, method: Method, where: str) -> None:
    """Refuse a checkpoint of another method."""
    if state.get("method") != method.name:
        raise ValueError(
            f"{where} is of a {state.get('method')!r} run, this run is {method.name!r}: "
            "resume with the same --method"
        )


def restore_global(
    method: Method, method_state: Mapping, net: torch.nn.Module, state: Mapping, where: str
) -> bool:
    """Load the checkpointed global state into the prepared model and check it against the digest
    recorded for its round; returns whether a digest was checked (older checkpoints have none)."""
    method.load_state_dict(dict(method_state))
    method.restore_global()
    return _check_round_digest(net, state, int(state["rounds_done"]), where)


def _check_round_digest(net: torch.nn.Module, state: Mapping, at_round: int, where: str) -> bool:
    """Check the model against the digest the checkpoint recorded for round `at_round` >= 1; False when
    it recorded none (older checkpoints)."""
    digests = state.get("round_digests") or []
    if at_round > 0 and len(digests) == int(state["rounds_done"]):
        check_rebuilt(digests[at_round - 1], net, where)
        return True
    return False


def restore_at_round(
    method: Method, method_state: Mapping, net: torch.nn.Module, state: Mapping, at_round: int, where: str
) -> bool:
    """Load the checkpointed global state as it was after round `at_round` (0 .. the checkpoint's round):
    θ₀ itself at round 0 (any method; its identity is checked by `prepare_model`), else θ₀ replayed through
    the first `at_round` downlinks, as a node catches up, for the methods whose history is their downlinks;
    checked against that round's recorded digest. Returns whether a digest was checked."""
    done = int(state["rounds_done"])
    if at_round == done:
        return restore_global(method, method_state, net, state, where)
    if not 0 <= at_round < done:
        raise UsageError(f"round {at_round} is not in {where}: it holds rounds 0 to {done}")
    if at_round == 0:
        return False  # the prepared model is θ₀
    method.load_state_dict(dict(method_state))
    if method.replay_cost(1, at_round) is None:
        raise UsageError(
            f"{where}: {method.name} keeps its last global state, not its rounds' history, so round "
            f"{at_round} of {done} cannot be rebuilt: run it to {at_round} rounds (--trainer.max_epochs "
            f"{at_round})"
        )
    method.catch_up(0, [(r, method.downlink(r)) for r in range(1, at_round + 1)])
    return _check_round_digest(net, state, at_round, f"{where} at round {at_round}")


def run_facts(
    method: Method,
    settings: FedSettings,
    faults: FaultModel,
    rounds_done: int,
    fraction: float,
    num_clients: int,
    dropped_examples: Mapping,
    theta0: dict | None,
    runtime: str,
) -> dict:
    """The run's description in `summary.json` (the same keys under every runtime)."""
    return {
        "method": method.name,
        "runtime": runtime,
        "rounds": rounds_done,
        "clients_per_round": max(1, int(num_clients * fraction)),
        "num_clients": num_clients,
        "local_steps": settings.local_steps,
        "seed": settings.seed,
        **method.summary(),
        "dropped_examples": dict(dropped_examples),
        "faults": {
            **asdict(faults),
            "aggregation": settings.aggregation,
            "trim_fraction": settings.trim_fraction,
            "scalar_bound": settings.scalar_bound,
        },
        "screening": {
            "screen_bound": settings.screen_bound,
            "loss_range": settings.loss_range,
            "tensor_norm_ratio": settings.tensor_norm_ratio,
        },
        "theta0": theta0,
        "z": z_dict(method),
    }
