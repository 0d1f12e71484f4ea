"""Moving weights by downlinks: the server's global update and a client's catch-up replay.

The global update of round r is theta <- keep * theta - lr * sum_j G_j z_j over the seeds with
G_j != 0, in ascending j, where keep = (1 - lr * weight_decay)^tau on matrices (1 on biases and
norms): the factor a client's tau local steps apply to the weights it starts from (each step decays
matrices by lr * weight_decay, `kit.zo.estimator.zo_step`). The uplink's per-seed sums cannot carry
the decay of the gradient terms inside a round, a second-order effect (lr * weight_decay * tau ~ 1e-6
at the paper's settings). The server, a client's replay and a resumed run all use `apply_scalars`,
so they agree bit for bit. float16 / bfloat16 master weights move per seed by the reference's
out-of-place update theta - lr * (G_j * z_j) in their dtype (`Perturber.update`, kit/zo/master.py),
round after round on the previous global weights, as the kit's float32 server does; the reference's
server instead rebuilds from theta_0 with every seed's scalars summed over all rounds so far
(zhenqincn/FedKSeed server.py, update_global_model_by_seed_pool), see docs/precision.md. The
merged replay sums each seed's scalars over the missed rounds first (at most K passes however long
the client was away) and agrees up to float rounding; it cannot fold weight decay (matrices and
biases would need different sums per seed), so it refuses it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from kit.federation.messages import Downlink
from kit.federation.seeds import SeedPool
from kit.zo.perturb import Perturber


def round_decay(lr: float, weight_decay: float, local_steps: int) -> float:
    """The fraction of the matrices a round's global update removes: 1 - (1 - lr * weight_decay)^tau."""
    return 1.0 - (1.0 - lr * weight_decay) ** local_steps


def apply_scalars(
    perturber: Perturber, pool: SeedPool, scalars: np.ndarray, lr: float, decay: float = 0.0
) -> int:
    """theta <- (1 - decay) theta - lr * sum_j scalars_j z_j (decay on matrices only; touched seeds
    in ascending j); returns the passes made. The decay rides on the first pass."""
    touched = np.flatnonzero(scalars).tolist()
    if decay and not touched:
        perturber.add(pool[0], 0.0, decay=decay)  # a decay-only pass: alpha 0 adds nothing
        return 1
    for n, j in enumerate(touched):
        perturber.update(pool[j], lr, float(scalars[j]), decay=decay if n == 0 else 0.0)
    return len(touched)


def replay(
    perturber: Perturber, pool: SeedPool, downlinks: Iterable[Downlink], lr: float, decay: float = 0.0
) -> int:
    """Exact catch-up: apply each missed downlink in round order (bit-identical to the server).

    `decay`: the per-round `round_decay` of the run (0 without weight decay)."""
    passes = 0
    last = None
    for dl in downlinks:
        if last is not None and dl.round != last + 1:
            raise ValueError(f"downlinks must be consecutive rounds: round {dl.round} follows {last}")
        last = dl.round
        passes += apply_scalars(perturber, pool, dl.scalars, lr, decay)
    return passes


def merged_replay(
    perturber: Perturber, pool: SeedPool, downlinks: Iterable[Downlink], lr: float, decay: float = 0.0
) -> int:
    """Fast catch-up: one pass per seed touched in any missed round (equal to `replay` up to rounding)."""
    if decay:
        raise ValueError(
            "merged replay cannot fold weight decay (decayed matrices and undecayed biases would need "
            "different per-seed sums); catch up with the exact replay, or train with --model.weight_decay 0"
        )
    total = np.zeros(pool.k, dtype=np.float64)
    for dl in downlinks:
        total += dl.scalars.astype(np.float64)
    return apply_scalars(perturber, pool, total, lr)
