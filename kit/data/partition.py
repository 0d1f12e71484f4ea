"""Splitting example indices over clients: label-Dirichlet (non-iid) and iid.

    >>> [len(c) for c in iid_partition(10, 3, seed=0)]
    [3, 3, 4]

Both take their own `np.random.RandomState(seed)`; the global numpy RNG is never touched.
"""

from __future__ import annotations

import numpy as np

MAX_DIRICHLET_TRIES = 1000


def dirichlet_partition(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Split indices of `labels` over `num_clients` with per-class proportions drawn from Dirichlet(`alpha`).

    The reference algorithm (`utils_data/partition_data.py`, `partition_idx_labeldir`): redraw the whole
    split until every client holds at least `min_size` indices; per class, shuffle its indices, draw
    client proportions, give nothing more to clients that already hold n / num_clients, and cut at the
    cumulative proportions; finally shuffle each client. Unlike the reference, every class present is
    covered (it only looped over codes below the number of classes).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if alpha <= 0:
        raise ValueError(f"the Dirichlet alpha must be > 0, got {alpha}")
    if num_clients * min_size > n:
        raise ValueError(
            f"cannot give {num_clients} clients at least {min_size} examples each from {n} examples; "
            "use fewer clients or a smaller minimum client size"
        )
    rng = np.random.RandomState(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(MAX_DIRICHLET_TRIES):
        clients: list[list[int]] = [[] for _ in range(num_clients)]
        for class_indices in by_class:
            idx = class_indices.copy()
            rng.shuffle(idx)
            proportions = rng.dirichlet(np.repeat(alpha, num_clients))
            # 1) clients that already hold their fair share n / N get nothing more of this class
            open_clients = np.array([len(c) < n / num_clients for c in clients])
            proportions = proportions * open_clients
            total = proportions.sum()
            # 2) tiny alpha can underflow every open client's share to 0: split evenly among them instead
            proportions = proportions / total if total > 0 else open_clients / open_clients.sum()
            # 3) cut this class at the cumulative proportions
            cuts = (np.cumsum(proportions) * len(idx)).astype(int)[:-1]
            for client, part in zip(clients, np.split(idx, cuts), strict=True):
                client.extend(part.tolist())
        if min(len(c) for c in clients) >= min_size:
            break
    else:
        raise ValueError(
            f"no Dirichlet(alpha={alpha}) split gave all {num_clients} clients at least {min_size} "
            f"examples in {MAX_DIRICHLET_TRIES} tries; use fewer clients, a larger alpha or a smaller "
            "minimum client size"
        )
    result = [np.array(c, dtype=np.int64) for c in clients]
    for client in result:
        rng.shuffle(client)
    return result


def iid_partition(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """A seeded permutation of range(n) cut into `num_clients` parts of n // num_clients, the last
    taking the remainder (the reference's iid `random_split`, `utils_data/load_data.py`)."""
    if not 1 <= num_clients <= n:
        raise ValueError(f"cannot split {n} examples over {num_clients} clients (need 1 <= clients <= {n})")
    perm = np.random.RandomState(seed).permutation(n)
    size = n // num_clients
    return np.split(perm, [size * i for i in range(1, num_clients)])
