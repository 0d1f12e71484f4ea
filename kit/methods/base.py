"""What every federated method provides to the round loop, in Flower's vocabulary.

A method owns three things and nothing else: the client update (`client`), its payload (the uplink
and downlink bytes, encoded and validated by the method's own message format) and the server rule
(`aggregate_train` + `apply_downlink`). The loop (`kit.loop`) is the same for every method:

    for each round r:  sample clients -> for each: restore global params -> client(r, c) -> steps
                       -> finish() = uplink bytes -> aggregate_train(r, uplinks) = downlink bytes
                       -> restore global params -> apply_downlink(r, downlink) -> save global params

Uplinks and downlinks travel between processes as the bytes a real network would carry, so the
byte counts are the payloads' own lengths.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from kit.zo.definition import ZDefinition


@dataclass(frozen=True)
class FedSettings:
    """Federation settings a method may need (from the loop's `fed` group).

    Args:
        seed: federation seed (seed pool, per-step seed choices, dropout of each client).
        local_steps: tau, local steps of each client per round.
        num_seeds: K, the candidate seed pool (FedKSeed).
        bias_loss_clip: FedKSeed-Pro clips history magnitudes to this (reference 1000).
        pro_temperature: FedKSeed-Pro's softmax scale (reference 1).
        equal_weights: aggregate clients with equal weights instead of by sample count.
    """

    seed: int = 42
    local_steps: int = 200
    num_seeds: int = 4096
    bias_loss_clip: float = 1000.0
    pro_temperature: float = 1.0
    equal_weights: bool = False


@dataclass(frozen=True)
class StepOutcome:
    """One local step: its training loss and whether the update was skipped (non-finite loss, clip)."""

    loss: float
    skipped: bool = False


LossFn = Callable[[dict], torch.Tensor]


class ClientUpdate(ABC):
    """One client's local training in one round, started from the global parameters."""

    @abstractmethod
    def step(self, batch: dict, local_step: int) -> StepOutcome:
        """One local step on `batch` (the `local_step`-th of the round, 0-based)."""

    @abstractmethod
    def finish(self) -> bytes:
        """The client's encoded uplink for this round."""


class Method(ABC):
    """A federated method: client update, payloads and server rule. Subclasses set `name`."""

    name: str = ""
    z_record: ZDefinition | None = None  # a run's recorded z: set before `prepare` to rebuild under it

    @abstractmethod
    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        """Make `net` trainable the method's way (e.g. wrap it with a PEFT adapter); returns the model."""

    @abstractmethod
    def global_params(self) -> list[torch.Tensor]:
        """The parameters the federation shares: clients start each round from their global values."""

    @abstractmethod
    def client(
        self,
        server_round: int,
        client_id: int,
        loss_fn: LossFn,
        saved_global: Callable[[], Iterable[torch.Tensor]],
    ) -> ClientUpdate:
        """A fresh client update (fresh optimizer, the round's seeds) for `client_id` in `server_round`.

        `saved_global()` yields the global values of `global_params()`, in order (for deltas).
        """

    @abstractmethod
    def aggregate_train(
        self, server_round: int, uplinks: Sequence[tuple[int, bytes]], num_samples: Sequence[int]
    ) -> bytes:
        """Decode and validate the round's uplinks (ascending client id), aggregate, encode the downlink."""

    @abstractmethod
    def apply_downlink(self, server_round: int, downlink: bytes) -> dict[str, float]:
        """The global update: move the global parameters (restored by the loop) by the decoded downlink.

        Called with the bytes clients receive, so server and clients apply the same numbers. Returns
        method-specific metrics of the round (e.g. `fed/seeds_touched`).
        """

    @abstractmethod
    def state_dict(self) -> dict:
        """The global state in a checkpoint (plain values and tensors, `weights_only`-loadable)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Load `state_dict()`'s output (the global parameters are set by `restore_global`)."""

    @abstractmethod
    def restore_global(self) -> None:
        """Put the loaded global state into the prepared model's parameters (resume, rebuild)."""

    def z_definition(self) -> ZDefinition | None:
        """The definition of the z the method draws (None: it draws none)."""
        return None

    def summary(self) -> dict:
        """Method-specific entries of `summary.json`."""
        return {}

    def close(self) -> None:  # noqa: B027 (a no-op unless the method holds helpers)
        """Release helpers (thread pools, kernels)."""
