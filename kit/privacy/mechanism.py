"""The DP mechanism's math: clipping to an L2 ball and seeded Gaussian noise, on flat float arrays.

    g = clip_l2(scalars, 1.0)                             # ||g|| <= 1
    g = g + gaussian_noise(len(g), 0.5, (seed, rnd, CENTRAL))   # the same draws on a rerun or resume

A run's mechanism (`DPMechanism`) holds the resolved numbers: mode, C, sigma, delta, the noise seed and
the sampling (N clients, m per round) that its accountant needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CENTRAL, LOCAL = 0xD9C0, 0xD910  # the noise streams' tags (a generator per round, per client for local)


def clip_l2(x: np.ndarray, clip: float) -> np.ndarray:
    """`x` scaled by min(1, clip / ||x||) in float64 (a copy)."""
    x = np.asarray(x, dtype=np.float64)
    norm = float(np.sqrt(np.dot(x, x)))
    return x * (clip / norm) if norm > clip else x.copy()


def gaussian_noise(size: int, std: float, words: Sequence[int], dtype=np.float64) -> np.ndarray:
    """`size` N(0, std^2) draws from a generator seeded by `words` (a pure function of them)."""
    rng = np.random.default_rng([int(w) for w in words])
    return rng.standard_normal(size, dtype=dtype) * dtype(std)


@dataclass(frozen=True)
class DPMechanism:
    """A run's resolved mechanism.

    Args:
        mode: "central" or "local".
        clip: C, the L2 bound of one client's update.
        noise_multiplier: sigma; the noise's std is sigma * 2C (2C: the replace-one sensitivity).
        delta: the delta of the reported epsilon.
        seed: the noise seed.
        population: N, the clients.
        sample_size: m, the clients sampled per round (the central mean's fixed denominator).
        participations: after round r (index r - 1), the most rounds any client was sampled in.
        target_epsilon: the configured target, when sigma was derived from it.
    """

    mode: str
    clip: float
    noise_multiplier: float
    delta: float
    seed: int
    population: int
    sample_size: int
    participations: tuple[int, ...] = ()
    target_epsilon: float | None = None

    @property
    def std(self) -> float:
        """The Gaussian noise's standard deviation, per coordinate."""
        return self.noise_multiplier * 2.0 * self.clip

    def clip_factor(self, norm: float) -> float:
        """The factor that brings an update of L2 norm `norm` into the ball of radius C."""
        return min(1.0, self.clip / norm) if norm > 0 else 1.0

    def noise(self, size: int, words: Sequence[int], dtype=np.float64) -> np.ndarray:
        """`size` draws of the mechanism's noise from the stream `words` (`central_words`, `local_words`)."""
        return gaussian_noise(size, self.std, (self.seed, *words), dtype)

    @staticmethod
    def central_words(server_round: int) -> tuple[int, ...]:
        return (server_round, CENTRAL)

    @staticmethod
    def local_words(server_round: int, client: int) -> tuple[int, ...]:
        return (server_round, client, LOCAL)

    def central_mean(
        self, server_round: int, updates: Sequence[np.ndarray], size: int, support: np.ndarray
    ) -> np.ndarray:
        """(sum of the clipped updates + noise at the `support` coordinates) / m, float64, length `size`.

        `support`: the coordinates any sampled client may touch, a data-independent set (every one for
        tensors; the round's planned seeds for FedKSeed); the others stay zero. Dropped clients shrink
        the sum, never the fixed denominator m."""
        total = np.zeros(size, dtype=np.float64)
        for u in updates:
            total += clip_l2(u, self.clip)
        total[support] += self.noise(len(support), self.central_words(server_round))
        return total / self.sample_size

    def local(self, server_round: int, client: int, update: np.ndarray, support: np.ndarray) -> np.ndarray:
        """A client's clipped update with its own noise at `support` (its planned coordinates), float64."""
        out = clip_l2(update, self.clip)
        out[support] += self.noise(len(support), self.local_words(server_round, client))
        return out

    def epsilon(self, rounds_done: int) -> float:
        """epsilon (at `delta`) after `rounds_done` rounds, by the accountant."""
        from kit.privacy.accountant import central_epsilon  # dp-accounting: 0.7 s to import, lazily

        if self.mode == "central":
            args = (self.population, self.sample_size, rounds_done, self.delta)
            return central_epsilon(self.noise_multiplier, *args)
        return self.epsilon_per_participation(rounds_done)

    def epsilon_per_participation(self, rounds_done: int) -> float:
        """epsilon with no amplification by sampling: a Gaussian mechanism per round a client took part
        in (local mode's account; central mode's when the adversary knows who was sampled)."""
        from kit.privacy.accountant import local_epsilon

        k = self.participations[rounds_done - 1] if rounds_done else 0
        return local_epsilon(self.noise_multiplier, k, self.delta)

    def facts(self, rounds_done: int) -> dict:
        """summary.json's `privacy` entry."""
        eps = self.epsilon(rounds_done)
        return {
            "mode": self.mode,
            "clip": self.clip,
            "noise_multiplier": self.noise_multiplier,
            "noise_std": self.std,
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "epsilon": eps if np.isfinite(eps) else None,  # None: infinite (no noise)
            "epsilon_per_round": [_finite(self.epsilon(r)) for r in range(1, rounds_done + 1)],
            "epsilon_if_sampling_known": _finite(self.epsilon_per_participation(rounds_done)),
            "max_participations": self.participations[rounds_done - 1] if rounds_done else 0,
            "accountant": "dp-accounting RDP, replace-one, "
            + ("sampled without replacement" if self.mode == "central" else "per participation"),
            "population": self.population,
            "sample_size": self.sample_size,
        }


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None
