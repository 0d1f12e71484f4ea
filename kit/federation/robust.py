"""Robust aggregation rules: what one bad client can do to a round is bounded.

    G = robust_aggregate(np.stack(client_scalars), "median")        # per-seed coordinate median
    G = robust_aggregate(np.stack(client_scalars), "trimmed_mean", 0.2)

`mean` is the plain weighted sum (`kit.federation.aggregate.aggregate`); the robust rules work on a
stack of the accepted clients' vectors, one row per client, coordinate by coordinate:

* median: the middle value over clients (the mean of the two middle ones for an even count);
  one client alone can move no coordinate unless the others disagree among themselves;
* trimmed_mean: drop the int(trim * n) smallest and largest values of each coordinate, average the
  rest (n = 1, 2 or small trim: nothing is dropped and it is the unweighted mean).

Both give every client one vote and ignore sample counts: a weight a client reports itself is the
easiest thing for it to inflate. `bound_scalars` clips each client's values to [-b, b] before any
rule (FedKSeed's `--fed.scalar_bound`), bounding one client's pull on a seed to b * w_c under mean.
Cost: a sort over clients per coordinate, O(K * n log n) for K seeds and n clients (for tensor
payloads O(P * n log n) and n decoded payloads in memory), tiny next to one forward pass.
"""

from __future__ import annotations

import numpy as np

AGGREGATIONS = ("mean", "median", "trimmed_mean")


def bound_scalars(scalars: np.ndarray, bound: float) -> np.ndarray:
    """Each value clipped to [-bound, bound] (a copy, in the input's dtype)."""
    return np.clip(scalars, -bound, bound)


def coordinate_median(rows: np.ndarray) -> np.ndarray:
    """Median over axis 0 (clients), float64; the mean of the two middle values for an even count."""
    s = np.sort(rows, axis=0)
    mid = s.shape[0] // 2
    if s.shape[0] % 2:
        return s[mid].astype(np.float64)
    return (s[mid - 1].astype(np.float64) + s[mid]) / 2


def trimmed_mean(rows: np.ndarray, trim: float) -> np.ndarray:
    """Mean over axis 0 (clients) of the values left after dropping int(trim * n) at each end, float64."""
    if not 0 <= trim < 0.5:
        raise ValueError(f"--fed.trim_fraction must be in [0, 0.5), got {trim}")
    n = rows.shape[0]
    cut = int(trim * n)
    return np.sort(rows, axis=0)[cut : n - cut].mean(axis=0, dtype=np.float64)


def robust_aggregate(rows: np.ndarray, rule: str, trim: float = 0.0) -> np.ndarray:
    """The robust rule `rule` ("median" or "trimmed_mean") over `rows` ([clients, ...]), float64."""
    if rows.shape[0] == 0:
        raise ValueError("no clients to aggregate")
    if rule == "median":
        return coordinate_median(rows)
    if rule == "trimmed_mean":
        return trimmed_mean(rows, trim)
    raise ValueError(
        f"unknown robust aggregation {rule!r}: fix --fed.aggregation (one of {', '.join(AGGREGATIONS)})"
    )
