"""The pool of K candidate seeds, derived from one federation seed so that it costs nothing to share."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SEED_HIGH = 10**11  # the reference draws candidate seeds from [1, 1e11)


@dataclass(frozen=True)
class SeedPool:
    """K distinct seeds drawn from `federation_seed`; `fingerprint` identifies the pool on the wire."""

    k: int
    federation_seed: int
    seeds: tuple[int, ...] = field(init=False, repr=False)
    fingerprint: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.k < 1 or self.k > 2**31:
            raise ValueError(f"K={self.k} must be in [1, 2^31] (--fed.num_seeds)")
        rng = np.random.default_rng([self.federation_seed, 0x5EED])
        seeds: list[int] = []
        seen: set[int] = set()
        while len(seeds) < self.k:  # redraw the (astronomically rare) duplicates
            for s in rng.integers(1, SEED_HIGH, self.k - len(seeds)).tolist():
                if s not in seen:
                    seen.add(s)
                    seeds.append(s)
        object.__setattr__(self, "seeds", tuple(seeds))
        digest = hashlib.sha256(np.asarray(seeds, dtype="<i8").tobytes()).digest()
        object.__setattr__(self, "fingerprint", digest[:8])

    def __len__(self) -> int:
        return self.k

    def __getitem__(self, j: int) -> int:
        return self.seeds[j]
