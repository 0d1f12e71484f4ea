"""The server's federation state and its round: configure_train -> clients train -> aggregate_train."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kit.errors import UsageError
from kit.federation.aggregate import aggregate, client_weights, pro_probabilities
from kit.federation.messages import Downlink, Uplink
from kit.federation.robust import bound_scalars, robust_aggregate
from kit.federation.seeds import SeedPool


def sample_clients(federation_seed: int, server_round: int, num_clients: int, fraction: float) -> list[int]:
    """The round's clients: max(1, int(N * fraction)) distinct ids, seeded by (seed, round), ascending."""
    n = max(1, int(num_clients * fraction))
    rng = np.random.default_rng([federation_seed, server_round, 0xC11E])
    return sorted(rng.choice(num_clients, size=n, replace=False).tolist())


def sample_seed_indices(
    federation_seed: int,
    server_round: int,
    client_id: int,
    steps: int,
    probabilities: np.ndarray | None,
    k: int,
) -> np.ndarray:
    """The seed index of each local step of a client: uniform (FedKSeed) or by p (FedKSeed-Pro)."""
    rng = np.random.default_rng([federation_seed, server_round, client_id, 0x5EED])
    if probabilities is None:
        return rng.integers(0, k, size=steps)
    return rng.choice(k, size=steps, p=probabilities.astype(np.float64) / probabilities.sum(dtype=np.float64))


def combine_scalars(
    scalars: Sequence[np.ndarray],
    num_samples: Sequence[int],
    size: int,
    aggregation: str = "mean",
    equal_weights: bool = False,
    trim_fraction: float = 0.0,
) -> np.ndarray:
    """The clients' scalar vectors (ascending client id) combined into one, float32: the mean weighted
    by sample count (or equally), or the robust rule per coordinate; zeros of length `size` when none."""
    if not scalars:
        return np.zeros(size, dtype=np.float32)
    if aggregation == "mean":
        return aggregate(scalars, client_weights(num_samples, equal_weights)).astype(np.float32)
    return robust_aggregate(np.stack(scalars), aggregation, trim_fraction).astype(np.float32)


@dataclass
class Server:
    """Seed pool, round counter and the per-seed gradient history of FedKSeed(-Pro).

    Args:
        pool: the K candidate seeds.
        pro: sample seeds by FedKSeed-Pro probabilities instead of uniformly.
        bias_loss_clip: history magnitudes are clipped to this before averaging (reference 1000).
        pro_temperature: scale of the min-max normalised scores inside the softmax (reference 1).
        equal_weights: weight clients equally instead of by sample count.
        aggregation: "mean" (weighted sum), "median" or "trimmed_mean" per seed (`kit.federation.robust`).
        trim_fraction: the trimmed mean drops this fraction of clients at each end, per seed.
        scalar_bound: clip each client's scalars to [-b, b] before aggregating (None: off); the
            history of FedKSeed-Pro records the clipped values.

    A seed a client did not touch counts as 0 for it under every rule: that is the client's whole
    update along that seed, as in the mean. With few clients per seed (tau * n much smaller than K) the
    median and trimmed mean therefore zero most seeds; `scalar_bound` is the tool for that regime.
    """

    pool: SeedPool
    pro: bool = False
    bias_loss_clip: float = 1000.0
    pro_temperature: float = 1.0
    equal_weights: bool = False
    aggregation: str = "mean"
    trim_fraction: float = 0.0
    scalar_bound: float | None = None
    server_round: int = 0  # rounds completed
    abs_sum: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        # the reference starts every seed's history with one entry grad_initial = 0
        self.abs_sum = np.zeros(self.pool.k, dtype=np.float64)
        self.count = np.ones(self.pool.k, dtype=np.int64)

    def probabilities(self) -> np.ndarray | None:
        """Seed probabilities for the next round (None for uniform FedKSeed)."""
        if not self.pro:
            return None
        return pro_probabilities(self.abs_sum, self.count, self.pro_temperature).astype(np.float32)

    def aggregate_train(
        self,
        uplinks: Sequence[Uplink],
        num_samples: Sequence[int],
        rule: Callable[[list[np.ndarray]], np.ndarray] | None = None,
    ) -> Downlink:
        """Aggregate the round's decoded uplinks (ascending client id) into its downlink.

        `rule` replaces the aggregation (central DP: the clipped, noised mean of the scalars).
        No uplink (every client missing or rejected): G = 0, the history and probabilities unchanged.
        """
        order = np.argsort([u.client_id for u in uplinks], kind="stable")
        scalars = [uplinks[i].scalars for i in order]
        if self.scalar_bound is not None:
            scalars = [bound_scalars(s, self.scalar_bound) for s in scalars]
        if rule is not None:
            total = rule(scalars).astype(np.float32)
        else:
            counts = [num_samples[i] for i in order]
            total = combine_scalars(
                scalars, counts, self.pool.k, self.aggregation, self.equal_weights, self.trim_fraction
            )
        for s in scalars:  # history: one entry per client and touched seed
            touched = np.flatnonzero(s)
            self.abs_sum[touched] += np.minimum(np.abs(s[touched].astype(np.float64)), self.bias_loss_clip)
            self.count[touched] += 1
        self.server_round += 1
        return Downlink(self.server_round, total, self.probabilities())

    def state_dict(self) -> dict:
        """Plain Python values (loadable by `torch.load(weights_only=True)`)."""
        return {
            "server_round": self.server_round,
            "abs_sum": self.abs_sum.tolist(),
            "count": self.count.tolist(),
            "k": self.pool.k,
            "fingerprint": self.pool.fingerprint.hex(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["k"] != self.pool.k:
            raise UsageError(
                f"the checkpoint's seed pool has K = {state['k']}, this run's --fed.num_seeds is "
                f"{self.pool.k}: resume with --fed.num_seeds {state['k']}"
            )
        if state["fingerprint"] != self.pool.fingerprint.hex():
            raise UsageError(
                f"the checkpoint's seed pool (fingerprint {state['fingerprint']}) is not this run's "
                f"({self.pool.fingerprint.hex()}): resume with the checkpoint's --fed.seed"
            )
        self.server_round = int(state["server_round"])
        self.abs_sum = np.asarray(state["abs_sum"], dtype=np.float64).copy()
        self.count = np.asarray(state["count"], dtype=np.int64).copy()
