"""FedKSeed and FedKSeed-Pro: ZO steps over a pool of K seeds, K scalars up and down.

Client: tau two-point ZO steps, each along z(seed_j) with j drawn uniformly (FedKSeed) or by the
server's probabilities (Pro); the uplink is the per-seed sum of the scalar gradients. Server:
G_j = sum_c w_c acc_c[j], then theta_g -= lr sum_j G_j z_j over the touched seeds (ascending j).
The global state is theta_0 plus every round's G: the checkpoint holds no weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from kit.federation.bounds import check_scalars, scalar_uplink_bound
from kit.federation.messages import (
    Downlink,
    Uplink,
    decode_downlink,
    decode_uplink,
    encode_downlink,
    encode_uplink,
    max_uplink_size,
)
from kit.federation.screening import Accepted
from kit.federation.seeds import SeedPool
from kit.federation.server import Server, sample_seed_indices
from kit.federation.sync import apply_scalars, merged_replay, replay, round_decay
from kit.methods.base import ClientUpdate, FedSettings, LossFn, Method, StepOutcome
from kit.methods.zo_common import SeededWeights
from kit.zo.estimator import zo_step


class FedKSeed(SeededWeights, Method):
    """FedKSeed (`pro=False`) or FedKSeed-Pro (`pro=True`) over the module's ZO args `hp`."""

    supports_dp = True

    def __init__(self, hp: Mapping, fed: FedSettings, pro: bool = False) -> None:
        self.name = "fedkseed-pro" if pro else "fedkseed"
        self.hp, self.fed = hp, fed
        self.central_dp = not pro  # Pro's probabilities come from the un-noised per-client history
        self.pool = SeedPool(fed.num_seeds, fed.seed)
        self.server = Server(
            self.pool,
            pro,
            fed.bias_loss_clip,
            fed.pro_temperature,
            fed.equal_weights,
            fed.aggregation,
            fed.trim_fraction,
            fed.scalar_bound,
        )
        self.downlinks: list[np.ndarray] = []  # G of every round: with theta_0, the whole global state
        self.probabilities_sorted: list[list[float]] = []
        self.probs = self.server.probabilities()
        self.perturber = None
        self._params: list[torch.Tensor] = []
        # the global update decays matrices as a client's tau steps do (kit.federation.sync)
        self.decay = round_decay(hp["lr"], hp["weight_decay"], fed.local_steps)
        self.uplink_bound = (  # what no honest client can send (kit.federation.bounds)
            scalar_uplink_bound(fed.local_steps, hp["zo_eps"], hp.get("grad_clip"), fed.loss_range)
            if fed.screen_bound
            else None
        )

    def client(self, server_round: int, client_id: int, loss_fn: LossFn, saved_global) -> ClientUpdate:
        return _FedKSeedClient(self, server_round, client_id, loss_fn)

    def max_uplink_bytes(self) -> int:
        return max_uplink_size(self.pool.k)

    def decode_uplink(self, server_round: int, wire: bytes) -> tuple[int, Uplink]:
        up = decode_uplink(wire, self.pool.k, self.pool.fingerprint, expected_round=server_round)
        check_scalars(up.scalars, self._screen_bound())
        return up.client_id, up

    def _screen_bound(self) -> float | None:
        """The scalar bound; local DP: an honest client's clipped scalar plus 10 noise std (a noise draw
        beyond it has probability 1.5e-23)."""
        if self.uplink_bound is None or self.dp is None or self.dp.mode != "local":
            return self.uplink_bound
        return min(self.uplink_bound, self.dp.clip) + 10 * self.dp.std

    def aggregate_train(
        self, server_round: int, uplinks: Sequence[tuple[int, bytes]], num_samples: Mapping[int, int]
    ) -> tuple[bytes, object]:
        self._sampled = sorted(num_samples)  # central DP: the noise's support is the sampled clients' seeds
        return super().aggregate_train(server_round, uplinks, num_samples)

    def aggregate_accepted(
        self, server_round: int, accepted: Sequence[Accepted], num_samples: Sequence[int]
    ) -> bytes:
        # no accepted uplink: G = 0 still goes down (header only), keeping rounds and Pro's p aligned
        rule = None
        if self.dp is not None and self.dp.mode == "central":
            support = np.unique(np.concatenate([self.planned_seeds(server_round, c) for c in self._sampled]))
            rule = lambda scalars: self.dp.central_mean(server_round, scalars, self.pool.k, support)  # noqa: E731
        down = self.server.aggregate_train([a.value for a in accepted], num_samples, rule)
        return encode_downlink(down, self.pool.fingerprint)

    # -- secure aggregation (kit/privacy/secagg.py, on Flower: kit/deploy/secagg.py) ----------------
    def secure_refusal(self) -> str | None:
        """Why this configuration cannot aggregate masked sums (None: it can)."""
        fed = self.fed
        if self.server.pro:
            return "fedkseed-pro's probabilities need each client's scalars; use --method fedkseed"
        if fed.aggregation != "mean" or fed.scalar_bound is not None:
            return "robust rules and --fed.scalar_bound need each client's scalars; use the mean"
        if self.dp is not None and self.dp.mode == "central":
            return "central DP clips each client's scalars at the server; use --fed.dp_mode local"
        return None

    def secure_vector(self, server_round: int, wire: bytes, num_examples: int) -> np.ndarray:
        """A client's summand: [w * scalars, w] with w its sample count (1 under equal weights), so the
        sum over clients gives the server's weighted mean and nothing more."""
        _, up = self.decode_uplink(server_round, wire)
        w = 1.0 if self.fed.equal_weights else float(num_examples)
        return np.concatenate([w * up.scalars.astype(np.float64), [w]])

    def aggregate_secure(self, server_round: int, total: np.ndarray | None) -> bytes:
        """The downlink from the sum of the clients' `secure_vector`s (None or weight 0: G = 0)."""
        k = self.pool.k
        g = np.zeros(k) if total is None or not total[k] > 0 else total[:k] / total[k]
        down = self.server.aggregate_train([], [], lambda _scalars: g)
        return encode_downlink(down, self.pool.fingerprint)

    def planned_seeds(self, server_round: int, client_id: int) -> np.ndarray:
        """The seed indices of `client_id`'s tau steps in `server_round` (a function of the seeds and
        the round's probabilities, not of data)."""
        fed, k = self.fed, self.pool.k
        return sample_seed_indices(fed.seed, server_round, client_id, fed.local_steps, self.probs, k)

    def apply_downlink(self, server_round: int, downlink: bytes) -> dict[str, float]:
        down = decode_downlink(downlink, self.pool.k, self.pool.fingerprint, expected_round=server_round)
        apply_scalars(self.perturber, self.pool, down.scalars, self.hp["lr"], self.decay)
        self.downlinks.append(down.scalars)
        self.probs = down.probabilities
        metrics = {"fed/seeds_touched": float(np.count_nonzero(down.scalars))}
        if down.probabilities is not None:
            self.probabilities_sorted.append(np.sort(down.probabilities)[::-1].tolist())
            # Pro's spread: the reference's min-max normalisation inside softmax caps it at e**temperature
            metrics["pro/p_max_over_min"] = float(down.probabilities.max()) / float(down.probabilities.min())
        return metrics

    def state_dict(self) -> dict:
        return {
            "server": self.server.state_dict(),
            "downlinks": [torch.from_numpy(g.copy()) for g in self.downlinks],
            "probabilities_sorted": self.probabilities_sorted,
        }

    def load_state_dict(self, state: dict) -> None:
        self.server.load_state_dict(state["server"])
        self.downlinks = [g.numpy().astype(np.float32) for g in state["downlinks"]]
        self.probabilities_sorted = state["probabilities_sorted"]
        self.probs = self.server.probabilities()

    def restore_global(self) -> None:
        """theta_g = theta_0 replayed through every round's G (bit-identical to the trained weights)."""
        for g in self.downlinks:
            apply_scalars(self.perturber, self.pool, g, self.hp["lr"], self.decay)

    # -- a node's catch-up: replay of the missed rounds' G ------------------------------------------
    def downlink(self, server_round: int) -> bytes:
        probs = self.probs if server_round == len(self.downlinks) else None  # the next round's p (Pro)
        g = self.downlinks[server_round - 1]
        return encode_downlink(Downlink(server_round, g, probs), self.pool.fingerprint)

    def replay_cost(self, first: int, last: int) -> tuple[list[int], int | None]:
        missed = self.downlinks[first - 1 : last]
        per_round = [int(np.count_nonzero(g)) for g in missed]
        union = int(np.count_nonzero(np.any(np.stack(missed), axis=0))) if missed else 0
        return per_round, None if self.decay else union  # the merged replay cannot fold weight decay

    def catch_up(self, at: int, downlinks: Sequence[tuple[int, bytes]], merged: bool = False) -> int:
        k, fp = self.pool.k, self.pool.fingerprint
        decoded = [decode_downlink(wire, k, fp, expected_round=r) for r, wire in downlinks]
        missing = [d for d in decoded if d.round > at]
        passes = 0
        if missing:
            lr = self.hp["lr"]
            if merged:
                passes = merged_replay(self.perturber, self.pool, missing, lr, self.decay)
            else:
                passes = replay(self.perturber, self.pool, missing, lr, self.decay)
        # the next round's seed probabilities (Pro) come with the newest downlink; round 1: the initial
        self.probs = decoded[-1].probabilities if decoded else self.server.probabilities()
        return passes

    def summary(self) -> dict:
        return {
            "K": self.pool.k,
            "uplink_bytes_dense": 36 + 4 * self.pool.k,
            "uplink_scalar_bound": self.uplink_bound,
            "pro_probabilities_sorted": self.probabilities_sorted if self.server.pro else None,
        }

    def z_definition(self):
        return self.perturber.definition if self.perturber is not None else None

    def close(self) -> None:
        if self.perturber is not None:
            self.perturber.close()


class _FedKSeedClient(ClientUpdate):
    def __init__(self, method: FedKSeed, server_round: int, client_id: int, loss_fn: LossFn) -> None:
        self.m, self.round, self.client_id, self.loss_fn = method, server_round, client_id, loss_fn
        self.indices = method.planned_seeds(server_round, client_id)
        self.acc = np.zeros(method.pool.k, dtype=np.float64)

    def step(self, batch: dict, local_step: int) -> StepOutcome:
        j = int(self.indices[local_step])
        hp = self.m.hp
        with torch.no_grad():
            out = zo_step(
                self.m.perturber,
                lambda: self.loss_fn(batch),
                j,
                self.m.pool[j],
                eps=hp["zo_eps"],
                lr=hp["lr"],
                weight_decay=hp["weight_decay"],
                grad_clip=hp["grad_clip"],
            )
        if not out.skipped:
            self.acc[j] += out.projected_grad
        return StepOutcome(out.loss, out.skipped)

    def finish(self) -> bytes:
        dp = self.m.dp
        if dp is not None and dp.mode == "local":  # clipped, noised at the seeds it was to touch
            self.acc = dp.local(self.round, self.client_id, self.acc, np.unique(self.indices))
        up = Uplink(self.round, self.client_id, self.acc.astype(np.float32))
        return encode_uplink(up, self.m.pool.fingerprint)
