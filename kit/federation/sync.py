"""Moving weights by downlinks: the server's global update and a client's catch-up replay.

The global update is theta <- theta - lr * sum_j G_j z_j over the seeds with G_j != 0, in ascending
j. A client that missed rounds replays the downlinks it missed in order, which reproduces the
server's weights bit for bit. The merged replay sums each seed's scalars over the missed rounds
first (at most K passes however long the client was away) and agrees up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from kit.federation.messages import Downlink
from kit.federation.seeds import SeedPool
from kit.zo.perturb import Perturber


def apply_scalars(
    perturber: Perturber, pool: SeedPool, scalars: np.ndarray, lr: float, weight_decay: float = 0.0
) -> int:
    """theta -= lr * sum_j scalars_j z_j (touched seeds only, ascending j); returns passes made.

    With weight decay each touched seed also decays the matrices once, as the reference's replay.
    """
    touched = np.flatnonzero(scalars)
    for j in touched.tolist():
        perturber.add(pool[j], -lr * float(scalars[j]), decay=lr * weight_decay)
    return int(touched.size)


def replay(
    perturber: Perturber, pool: SeedPool, downlinks: Iterable[Downlink], lr: float, weight_decay: float = 0.0
) -> int:
    """Exact catch-up: apply each missed downlink in round order (bit-identical to the server)."""
    passes = 0
    last = None
    for dl in downlinks:
        if last is not None and dl.round != last + 1:
            raise ValueError(f"downlinks must be consecutive rounds: round {dl.round} follows {last}")
        last = dl.round
        passes += apply_scalars(perturber, pool, dl.scalars, lr, weight_decay)
    return passes


def merged_replay(perturber: Perturber, pool: SeedPool, downlinks: Iterable[Downlink], lr: float) -> int:
    """Fast catch-up: one pass per seed touched in any missed round (equal up to rounding; no decay)."""
    total = np.zeros(pool.k, dtype=np.float64)
    for dl in downlinks:
        total += dl.scalars.astype(np.float64)
    return apply_scalars(perturber, pool, total, lr)
