"""numpy re-implementation of z's definition (kit/zo/native/zkernel.c), operation for operation.

Independent of the kit's own code: the native kernels and the portable torch backend are both
checked against it bit for bit.
"""

from __future__ import annotations

import numpy as np

f32 = np.float32

_M0, _M1, _W0, _W1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57), 0x9E3779B9, 0xBB67AE85
_LO = np.uint64(0xFFFFFFFF)


def ref_philox(counters: np.ndarray, domain: int, key: int) -> list[np.ndarray]:
    """Philox-4x32-10 of counters (j lo, j hi, domain, 0) under key (K lo, K hi): four uint32 arrays."""
    j = np.asarray(counters, dtype=np.uint64)
    c = [j & _LO, j >> np.uint64(32), np.full_like(j, domain), np.zeros_like(j)]
    k0, k1 = key & 0xFFFFFFFF, key >> 32
    for _ in range(10):
        p0, p1 = _M0 * c[0], _M1 * c[2]
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0),
            p1 & _LO,
            (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1),
            p0 & _LO,
        ]
        k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
    return [x.astype(np.uint32) for x in c]


def _ref_radius(w: np.ndarray) -> np.ndarray:
    f = ((w >> np.uint32(8)) + np.uint32(1)).astype(np.int32).astype(f32)
    bits = f.view(np.uint32)
    m = ((bits & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)).view(f32)
    big = m > f32(1.41421356237309504880)
    m = np.where(big, m * f32(0.5), m)
    e24 = (151 - (bits >> np.uint32(23)).astype(np.int32) - big.astype(np.int32)).astype(f32)
    s = (m - f32(1)) / (m + f32(1))
    s2 = s * s
    p = f32(1.4935866e-1) * s2 + f32(1.9988771e-1)
    p = p * s2 + f32(3.3333388e-1)
    at = s * s2 * p + s
    return np.sqrt(e24 * f32(1.38629436111989061883) - f32(4) * at)


def _ref_cos_sin(wa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = wa + np.uint32(0x20000000)
    rem = ((v & np.uint32(0x3FFFFFFF)) >> np.uint32(6)).astype(np.int32) - np.int32(0x800000)
    x = rem.astype(f32) * f32(1.57079632679489661923 / 16777216.0)
    z = x * x
    sp = f32(-1.9515295891e-4) * z + f32(8.3321608736e-3)
    sp = sp * z - f32(1.6666654611e-1)
    s = sp * z * x + x
    c = np.sqrt(f32(1) - s * s)
    swap = (v & np.uint32(0x40000000)) != 0
    big_s, big_c = np.where(swap, c, s), np.where(swap, s, c)
    big_s = (big_s.view(np.uint32) ^ (v & np.uint32(0x80000000))).view(f32)
    big_c = (big_c.view(np.uint32) ^ ((v + np.uint32(0x40000000)) & np.uint32(0x80000000))).view(f32)
    return big_c, big_s


def ref_z(n: int, key: int, distribution: str = "gaussian") -> np.ndarray:
    blocks = -(-n // 64)
    domain = 0 if distribution == "gaussian" else 1
    words = [w.reshape(blocks, 16) for w in ref_philox(np.arange(blocks * 16), domain, key)]
    if distribution == "rademacher":
        signs = np.stack(words, axis=1).reshape(-1) >> np.uint32(31)
        return np.where(signs == 1, f32(-1), f32(1)).astype(f32)[:n]
    r_a, r_b = _ref_radius(words[0]), _ref_radius(words[2])
    (c_a, s_a), (c_b, s_b) = _ref_cos_sin(words[1]), _ref_cos_sin(words[3])
    return np.concatenate([r_a * c_a, r_a * s_a, r_b * c_b, r_b * s_b], axis=1).reshape(-1)[:n]
