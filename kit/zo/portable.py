"""z in plain torch ops, on any device: the executable specification of kit/zo/native/zkernel.c.

    from kit.zo.portable import z_chunk, axpy_
    z = z_chunk(1000, key, "gaussian", torch.device("cuda"))   # the bits of native's zk_gauss_fill
    axpy_(p, z, alpha, keep)                                    # p = keep * p + alpha * z

The definition (Philox-4x32-10 counters, blocks of 64 floats, float32 Box-Muller from basic
operations) is zkernel.c's header, replicated operation for operation so the bits match:
* Philox's 32x32 -> 64-bit products are done in int64 with one factor split in 16-bit halves, so
  no intermediate exceeds 2^49: exact on every device, no reliance on integer overflow.
* Every float step is one separate elementwise op (mul, add, sub, div, where, neg), each
  correctly rounded in IEEE float32 on CPUs and GPUs. The square root is torch.sqrt corrected by
  exact integer midpoint tests (torch's CPU sqrt is off by one ulp for some inputs). No fused
  multiply-add (torch's `alpha=` and `addcmul` forms may fuse), no library transcendental
  function, no division by a Python scalar (CUDA makes it a multiplication by the reciprocal).
  Constants are rounded to float32 first, as C float literals.
Exactness is the point, not speed: on a CPU it is a few hundred times slower than the native
kernels (a fallback for machines without a C compiler); on a GPU it is memory-bound elementwise work.
"""

from __future__ import annotations

import numpy as np
import torch

VERSION = 2  # the definition's version: kit.zo.native.VERSION (ZK_VERSION in zkernel.c)
NB, BLOCK = 16, 64  # Philox counters per block, floats per block
MASK32 = 0xFFFFFFFF
M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
DOMAINS = {"gaussian": 0, "rademacher": 1}


def _f32(x: float) -> float:
    """x rounded to float32 (then exact in any float op), as a C float literal."""
    return float(np.float32(x))


SQRT2 = _f32(1.41421356237309504880)
LN2_X2 = _f32(1.38629436111989061883)
ATANH_P = (_f32(1.4935866e-1), _f32(1.9988771e-1), _f32(3.3333388e-1))
SIN_P = (_f32(-1.9515295891e-4), _f32(8.3321608736e-3), _f32(1.6666654611e-1))
QUARTER_TURN_2_24 = _f32(1.57079632679489661923 / 16777216.0)


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * m, for int64 `a` in [0, 2^32) and a 32-bit constant m."""
    x = a * (m & 0xFFFF)  # < 2^48
    y = a * (m >> 16)  # < 2^48; a * m = x + y 2^16
    t = x + ((y & 0xFFFF) << 16)  # < 2^49
    return (y >> 16) + (t >> 32), t & MASK32


def philox(counters: torch.Tensor, domain: int, key: int) -> list[torch.Tensor]:
    """Philox-4x32-10 of counters (j lo, j hi, domain, 0) under key (K lo, K hi): four int64 word tensors."""
    c0, c1 = counters & MASK32, counters >> 32
    c2 = torch.full_like(counters, domain)
    c3 = torch.zeros_like(counters)
    k0, k1 = key & MASK32, (key >> 32) & MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, M0)
        hi1, lo1 = _mulhilo(c2, M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return [c0, c1, c2, c3]


def _upper_midpoint_below(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Whether x^(1/2) lies above the midpoint of y and its upper neighbour, decided exactly in int64.

    For positive normal floats x = mx 2^(ex-150) and y = my 2^(ey-150) (mx, my 24-bit integers) the
    midpoint is (2 my + 1) 2^(ey-151), so the test is mx 2^(ex - 2 ey + 152) > (2 my + 1)^2: both
    sides below 2^52 when y is within a few ulps of sqrt(x), never equal (one is even, one odd).
    """
    xb, yb = x.view(torch.int32).to(torch.int64), y.view(torch.int32).to(torch.int64)
    mx, my = (xb & 0x7FFFFF) | 0x800000, (yb & 0x7FFFFF) | 0x800000
    shift = (xb >> 23) - 2 * (yb >> 23) + 152
    odd = 2 * my + 1
    return torch.bitwise_left_shift(mx, shift.clamp(0, 40)) > odd * odd


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 square root of x >= 0 (positive values normal), on any device.

    torch.sqrt is not correctly rounded on every backend (on x86 CPUs it is off by one ulp for some
    inputs), so its result is corrected against exact integer midpoint tests: twice, which fixes
    any error up to two ulps.
    """
    y = torch.sqrt(x)
    for _ in range(2):
        yi = y.view(torch.int32)
        up, down = (yi + 1).view(torch.float32), (yi - 1).view(torch.float32)
        y = torch.where(_upper_midpoint_below(x, y), up, torch.where(_upper_midpoint_below(x, down), y, down))
    return torch.where(x == 0, x, y)


def _radius(w: torch.Tensor) -> torch.Tensor:
    """sqrt(-2 log u), u = ((w >> 8) + 1) 2^-24, as zkernel.c's bm_radius (atanh series for the log)."""
    f = ((w >> 8) + 1).to(torch.float32)  # exact: <= 2^24
    bits = f.view(torch.int32)
    m = ((bits & 0x007FFFFF) | 0x3F800000).view(torch.float32)  # [1, 2)
    big = m > SQRT2
    m = torch.where(big, m * 0.5, m)
    e24 = (151 - (bits >> 23) - big.to(torch.int32)).to(torch.float32)  # 24 - e, exact
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    p = s2 * ATANH_P[0] + ATANH_P[1]
    p = p * s2 + ATANH_P[2]
    at = s * s2 * p + s
    return _sqrt(e24 * LN2_X2 - at * 4.0)


def _cos_sin(wa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos a, sin a), a = 2 pi wa 2^-32 on a 2^-26 turn grid, as zkernel.c's box_muller."""
    v = (wa + 0x20000000) & MASK32
    rem = ((v & 0x3FFFFFFF) >> 6) - 0x800000  # x' 2^24, |x'| <= 1/2 quarter turn
    x = rem.to(torch.float32) * QUARTER_TURN_2_24
    z = x * x
    sp = z * SIN_P[0] + SIN_P[1]
    sp = sp * z - SIN_P[2]
    s = sp * z * x + x
    c = _sqrt(1.0 - s * s)
    swap = ((v >> 30) & 1).bool()  # quadrant k odd: cos and sin trade places
    big_s, big_c = torch.where(swap, c, s), torch.where(swap, s, c)
    big_s = torch.where((v >> 31).bool(), -big_s, big_s)  # k = 2, 3 (negation flips the sign bit)
    big_c = torch.where((((v + 0x40000000) & MASK32) >> 31).bool(), -big_c, big_c)  # k = 1, 2
    return big_c, big_s


def z_chunk(
    n: int, key: int, distribution: str = "gaussian", device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The first n floats of z for the 64-bit chunk key `key` (float32, on `device`)."""
    if distribution not in DOMAINS:
        raise ValueError(
            f"distribution {distribution!r} must be 'gaussian' or 'rademacher' (--zo.distribution)"
        )
    blocks = -(-n // BLOCK)
    counters = torch.arange(blocks * NB, dtype=torch.int64, device=device)
    words = [w.view(blocks, NB) for w in philox(counters, DOMAINS[distribution], key)]
    if distribution == "rademacher":
        w = torch.stack(words, dim=1)  # [blocks, q, t]: element 16 q + t of a block
        one = torch.ones((), dtype=torch.float32, device=device)
        return torch.where((w >> 31).bool(), -one, one).view(-1)[:n]
    r_a, r_b = _radius(words[0]), _radius(words[2])
    (c_a, s_a), (c_b, s_b) = _cos_sin(words[1]), _cos_sin(words[3])
    return torch.stack([r_a * c_a, r_a * s_a, r_b * c_b, r_b * s_b], dim=1).view(-1)[:n]


def axpy_(p: torch.Tensor, z: torch.Tensor, alpha: float, keep: float = 1.0) -> torch.Tensor:
    """p = keep * p + alpha * z, each product and the sum rounded once: for float32 `p` the bits of
    the native kernels (alpha and keep rounded to float32 as they are there); other dtypes in theirs."""
    if p.dtype != torch.float32:
        if keep != 1.0:
            p.mul_(keep)
        return p.add_(z.to(p.dtype) * alpha)
    if keep != 1.0:  # keep = 1 is exact either way: skip the pass
        p.mul_(_f32(keep))
    return p.add_(z * _f32(alpha))
