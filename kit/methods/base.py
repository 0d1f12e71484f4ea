"""What every federated method provides to the round loop, in Flower's vocabulary.

A method owns three things and nothing else: the client update (`client`), its payload (the uplink
and downlink bytes, encoded and validated by the method's own message format) and the server rule
(`aggregate_train` + `apply_downlink`). The loop (`kit.loop`) is the same for every method:

    for each round r:  sample clients -> for each: restore global params -> client(r, c) -> steps
                       -> finish() = uplink bytes -> aggregate_train(r, uplinks) = downlink bytes
                       -> restore global params -> apply_downlink(r, downlink) -> save global params

Uplinks and downlinks travel between processes as the bytes a real network would carry, so the
byte counts are the payloads' own lengths. The server trusts no uplink: `aggregate_train` screens
them (`kit.federation.screening`) with the method's decoder and aggregates only the accepted ones,
weights renormalised over them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kit.errors import UsageError
from kit.federation.robust import AGGREGATIONS
from kit.federation.screening import Accepted, Screening, screen_uplinks
from kit.zo.definition import ZDefinition

if TYPE_CHECKING:
    from kit.privacy.mechanism import DPMechanism

NO_UPDATE = b""  # the downlink of a round with nothing to apply (tensor payloads; FedKSeed sends G = 0)


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
        aggregation: "mean" (weighted by sample count), or per coordinate over clients "median" or
            "trimmed_mean" (`kit.federation.robust`).
        trim_fraction: the trimmed mean drops this fraction of clients at each end.
        scalar_bound: FedKSeed: clip each client's scalars to [-b, b] before aggregating (None: off).
        screen_bound: reject uplinks no honest client can send (`kit.federation.bounds`): FedKSeed
            scalars beyond tau * C / (2 eps), tensor payloads beyond `tensor_norm_ratio`.
        loss_range: the C above when grad_clip is off: an upper bound of the training loss (nats).
        tensor_norm_ratio: tensor payloads: a client's change may be at most this times the norm of
            the global parameters.
    """

    seed: int = 42
    local_steps: int = 200
    num_seeds: int = 4096
    bias_loss_clip: float = 1000.0
    pro_temperature: float = 1.0
    equal_weights: bool = False
    aggregation: str = "mean"
    trim_fraction: float = 0.1
    scalar_bound: float | None = None
    screen_bound: bool = True
    loss_range: float = 100.0
    tensor_norm_ratio: float = 100.0

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise UsageError(
                f"--fed.aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}"
            )
        if not 0 <= self.trim_fraction < 0.5:
            raise UsageError(f"--fed.trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.scalar_bound is not None and not self.scalar_bound > 0:
            raise UsageError(f"--fed.scalar_bound must be > 0 or null (off), got {self.scalar_bound}")
        for name in ("loss_range", "tensor_norm_ratio"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--fed.{name} must be > 0, got {getattr(self, name)}")


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
    dp: DPMechanism | None = None  # client-level DP of the uplinks (kit/rounds/privacy.py sets it)
    central_dp: bool = True  # False: the server releases more than the noised mean (Pro's probabilities)
    supports_dp: bool = False  # the method clips and noises with `dp` (FedKSeed, the tensor payloads)

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

    def aggregate_train(
        self, server_round: int, uplinks: Sequence[tuple[int, bytes]], num_samples: Mapping[int, int]
    ) -> tuple[bytes, Screening]:
        """Screen the round's uplinks ((sender, bytes), arrival order), aggregate the accepted ones.

        `num_samples` maps each client sampled this round to its sample count: the senders the server
        expects. Returns the downlink bytes and the screening (accepted clients, counted rejections).
        """
        decode = lambda wire: self.decode_uplink(server_round, wire)  # noqa: E731
        screening = screen_uplinks(server_round, uplinks, num_samples, decode, self.max_uplink_bytes())
        counts = [num_samples[a.client] for a in screening.accepted]
        return self.aggregate_accepted(server_round, screening.accepted, counts), screening

    @abstractmethod
    def max_uplink_bytes(self) -> int:
        """Length of the largest legal uplink (longer ones are rejected unread)."""

    @abstractmethod
    def decode_uplink(self, server_round: int, wire: bytes) -> tuple[int, Any]:
        """Validate an uplink of `server_round`: (the client id it names, its decoded value); raises
        `MessageError` with a reason."""

    @abstractmethod
    def aggregate_accepted(
        self, server_round: int, accepted: Sequence[Accepted], num_samples: Sequence[int]
    ) -> bytes:
        """The server rule over the screened uplinks (ascending client id; possibly none): the downlink."""

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

    # -- a node's catch-up (the Flower runtime: kit/deploy) --------------------------------------
    def downlink(self, server_round: int) -> bytes:
        """Round `server_round`'s downlink as a node receives it, for a catch-up by replay (the newest
        also carries the client-side state of the next round, e.g. FedKSeed-Pro's probabilities).

        Only methods that replay (`replay_cost` is not None) keep their downlinks."""
        raise ValueError(f"{self.name} keeps no downlinks: its nodes download the global state")

    def replay_cost(self, first: int, last: int) -> tuple[list[int], int | None] | None:
        """Passes over the weights to replay rounds first..last: per round, and merged into one (None:
        not mergeable). None: the method's nodes catch up by downloading the global state instead."""
        return None

    def catch_up(self, at: int, downlinks: Sequence[tuple[int, bytes]], merged: bool = False) -> int:
        """A node's sync: the global parameters hold round `at`; apply the downlinks ((round, bytes),
        consecutive) of the rounds after it, and take the client-side state the newest one carries
        (none: round 1's). Bit-identical to the server (`merged`: one pass per seed, equal up to
        rounding). Returns the passes made over the weights."""
        if any(r > at for r, _ in downlinks):
            raise ValueError(f"{self.name} catches up by downloading the global state, not by downlinks")
        return 0

    def z_definition(self) -> ZDefinition | None:
        """The definition of the z the method draws (None: it draws none)."""
        return None

    def summary(self) -> dict:
        """Method-specific entries of `summary.json`."""
        return {}

    def close(self) -> None:  # noqa: B027 (a no-op unless the method holds helpers)
        """Release helpers (thread pools, kernels)."""
