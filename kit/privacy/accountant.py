"""(epsilon, delta) of a run's DP mechanism, by the `dp-accounting` library's RDP accountant.

Client-level, replace-one neighbouring (one client's data replaced; the number of clients is public).

* central: each round the server sums the clipped updates of m clients drawn uniformly without
  replacement from N, and adds Gaussian noise of std sigma times the sum's sensitivity:
  `SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(sigma))`, composed over the rounds.
* local: a client's noised update is a Gaussian mechanism each round it is sampled (the server knows
  who is sampled, so no amplification by sampling): `GaussianDpEvent(sigma)` composed over the
  largest number of rounds any client took part in.

    central_epsilon(1.0, population=200, sample_size=10, rounds=100, delta=1e-5)
    calibrate(lambda s: central_epsilon(s, 200, 10, 100, 1e-5), target=8.0)   # the sigma for eps 8
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from kit.errors import UsageError

SIGMA_MAX = 1024.0  # the calibration's largest noise multiplier (noise 1024 x the sensitivity)
SIGMA_MIN = 1 / 64  # and its smallest (a target met by less noise gets this)
_REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE


def _epsilon(event: dp_accounting.DpEvent, delta: float) -> float:
    accountant = RdpAccountant(neighboring_relation=_REPLACE_ONE)
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


@lru_cache(maxsize=4096)
def central_epsilon(sigma: float, population: int, sample_size: int, rounds: int, delta: float) -> float:
    """epsilon after `rounds` rounds of the central mechanism (inf when sigma is 0, 0 before round 1)."""
    if rounds == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    round_event = dp_accounting.SampledWithoutReplacementDpEvent(
        population, sample_size, dp_accounting.GaussianDpEvent(sigma)
    )
    return _epsilon(dp_accounting.SelfComposedDpEvent(round_event, rounds), delta)


@lru_cache(maxsize=4096)
def local_epsilon(sigma: float, participations: int, delta: float) -> float:
    """epsilon of a client that sent `participations` locally noised updates (inf when sigma is 0)."""
    if participations == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), participations)
    return _epsilon(event, delta)


def calibrate(epsilon_of: Callable[[float], float], target: float, knobs: str) -> float:
    """The smallest noise multiplier whose epsilon is at most `target`, to 0.1% (a bracket by doubling
    or halving from 1, then bisection over the library's epsilon, which falls as sigma grows); a
    UsageError naming `knobs` when even SIGMA_MAX does not reach it."""
    lo, hi = 1.0, 1.0
    if epsilon_of(hi) > target:
        while epsilon_of(hi) > target:
            if hi >= SIGMA_MAX:
                raise UsageError(
                    f"--fed.dp_target_epsilon {target} cannot be met (epsilon {epsilon_of(hi):.3g} even at "
                    f"noise multiplier {hi:g}): raise --fed.dp_target_epsilon or --fed.dp_delta, or lower "
                    f"{knobs}"
                )
            lo, hi = hi, hi * 2
    else:
        while epsilon_of(lo) <= target:
            if lo <= SIGMA_MIN:
                return lo
            lo, hi = lo / 2, lo
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if epsilon_of(mid) <= target else (mid, hi)
    return hi
