"""Rebuild a run's global model from its checkpoint, for any method.

    from kit.rebuild import load_run_model
    model, tokenizer = load_run_model("runs/quickstart")

FedKSeed's checkpoint holds the seed history, not the weights: theta_0 replayed through every
round's G reproduces the trained global weights bit for bit. The baselines' checkpoints hold their
global shared parameters (adapters, prompt encoders or all weights). The checkpoint records theta_0's
identity and z's definition: a different base model or z is refused before replay (z is drawn as
recorded, whatever this device's default backend), and the rebuilt weights are checked against the
digest recorded for the checkpoint's round (`--ckpt` too), or `summary.json`'s for older runs.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import yaml

from kit.checkpoint import LOOP_STATE_KEY, load_checkpoint
from kit.identity import check_rebuilt, check_theta0, theta0_identity
from kit.loop import FederatedLoop
from kit.methods import build_method
from kit.models import load_model, load_tokenizer
from kit.module import FedKSeedModule
from kit.zo.definition import ZDefinition, check_same
from kit.zo.master import check_recorded, hp_master_dtype, master_dtype_of


def read_run(run_dir: str | Path, checkpoint: str | Path | None = None):
    """(module hyperparameters, federation settings, the loop's checkpoint state, checkpoint path)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    ckpt_path = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.ckpt"
    for path, what in ((config_path, "resolved config"), (ckpt_path, "checkpoint")):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run_dir} a fedkseed run directory with a {what}?")
    config = yaml.safe_load(config_path.read_text())
    hp = {**_defaults(FedKSeedModule), **config["model"]}
    hp["method"] = config.get("method", hp["method"])
    loop = FederatedLoop(**{k: v for k, v in config["fed"].items() if k in _defaults(FederatedLoop)})
    state = load_checkpoint(ckpt_path, flag="--ckpt")["callbacks"][LOOP_STATE_KEY]
    return hp, loop.settings, state, ckpt_path


def load_run_model(run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "cpu"):
    """(model, tokenizer) with the global weights of `run_dir`'s checkpoint (default: last.ckpt)."""
    run_dir = Path(run_dir)
    hp, settings, state, ckpt_path = read_run(run_dir, checkpoint)
    method = build_method(hp["method"], hp, settings)
    model = load_model(hp["model"], dtype=hp_master_dtype(hp), device=device)
    check_recorded(state.get("master_dtype"), master_dtype_of(model), f"checkpoint {ckpt_path}")
    if state.get("theta0"):
        check_theta0(state["theta0"], theta0_identity(hp["model"], model), f"checkpoint {ckpt_path}")
    if state.get("z"):
        method.z_record = ZDefinition.from_dict(state["z"])
    model = method.prepare(model)
    if method.z_record is not None:
        check_same(method.z_record, method.z_definition(), f"checkpoint {ckpt_path}")
    method.load_state_dict(state["method_state"])
    method.restore_global()
    method.close()
    digests = state.get("round_digests") or []
    if len(digests) == state["rounds_done"] > 0:
        check_rebuilt(digests[-1], model, f"checkpoint {ckpt_path}")
    elif checkpoint is None and (run_dir / "summary.json").is_file():  # runs made before round digests
        summary = json.loads((run_dir / "summary.json").read_text())
        expected = summary.get("global_weights_sha256")
        if expected and summary["rounds"] == state["rounds_done"]:
            check_rebuilt(expected, model, str(run_dir))
    return model, load_tokenizer(hp["model"])


def _defaults(cls) -> dict:
    """The keyword arguments of `cls.__init__` with their defaults."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
