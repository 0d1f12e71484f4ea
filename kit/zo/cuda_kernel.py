"""z's definition (kit/zo/native/zkernel.c) as a Triton kernel. Imports Triton: load it only through
`kit.zo.cuda.load`, so CPU installs never need Triton.

One program fills BLOCK_SIZE consecutive elements of a chunk. Element e of the chunk is element
16 q + t of block b = e // 64 (q, t = divmod(e % 64, 16)) and comes from Philox counter 16 b + t:
gaussian q = 0, 1: r cos a, r sin a from words (w0, w1); q = 2, 3: the same from (w2, w3);
rademacher: the sign bit of w_q. Every float operation is IEEE round-to-nearest: the kernel is
launched with FMA fusion off, divisions are div_rn and square roots sqrt_rn (Triton's `/` and
`tl.sqrt` are approximations).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox-4x32-10; words are uint32 tensors, keys uint64 scalars below 2^32 (products in uint64,
    as zkernel.c, so no literal above 2^31 is typed as a signed 32-bit value)."""
    for _ in tl.static_range(10):
        p0 = c0.to(tl.uint64) * 0xD2511F53
        p1 = c2.to(tl.uint64) * 0xCD9E8D57
        n0 = (p1 >> 32).to(tl.uint32) ^ c1 ^ k0.to(tl.uint32)
        n2 = (p0 >> 32).to(tl.uint32) ^ c3 ^ k1.to(tl.uint32)
        c1 = (p1 & 0xFFFFFFFF).to(tl.uint32)
        c3 = (p0 & 0xFFFFFFFF).to(tl.uint32)
        c0 = n0
        c2 = n2
        k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF
        k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


@triton.jit
def _radius(w):
    f = ((w >> 8) + 1).to(tl.int32).to(tl.float32)  # exact: <= 2^24
    bits = f.to(tl.uint32, bitcast=True)
    m = ((bits & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = m > 1.41421356237309504880
    m = tl.where(big, m * 0.5, m)
    e24 = (151 - (bits >> 23).to(tl.int32) - big.to(tl.int32)).to(tl.float32)
    s = tl.math.div_rn(m - 1.0, m + 1.0)
    s2 = s * s
    p = s2 * 1.4935866e-1 + 1.9988771e-1
    p = p * s2 + 3.3333388e-1
    at = s * s2 * p + s
    return tl.math.sqrt_rn(e24 * 1.38629436111989061883 - at * 4.0)


@triton.jit
def _cos_sin(wa, quarter_turn):
    v = wa + 0x20000000
    rem = ((v & 0x3FFFFFFF) >> 6).to(tl.int32) - 0x800000
    x = rem.to(tl.float32) * quarter_turn  # float32(pi / 2 / 2^24), passed in as portable's constant
    z = x * x
    sp = z * -1.9515295891e-4 + 8.3321608736e-3
    sp = sp * z - 1.6666654611e-1
    s = sp * z * x + x
    c = tl.math.sqrt_rn(1.0 - s * s)
    swap = ((v >> 30) & 1) != 0
    big_s = tl.where(swap, c, s)
    big_c = tl.where(swap, s, c)
    big_s = tl.where((v >> 31) != 0, -big_s, big_s)
    big_c = tl.where(((v + 0x40000000) >> 31) != 0, -big_c, big_c)
    return big_c, big_s


@triton.jit
def fill_kernel(out_ptr, n, k0, k1, quarter_turn, RADEMACHER: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = e < n
    r = e % 64
    q = (r // 16).to(tl.int32)
    counter = (e // 64) * 16 + r % 16
    c0 = (counter & 0xFFFFFFFF).to(tl.uint32)
    c1 = (counter >> 32).to(tl.uint32)
    domain = 1 if RADEMACHER else 0
    c2 = tl.zeros_like(c0) + domain
    c3 = tl.zeros_like(c0)
    w0, w1, w2, w3 = _philox(c0, c1, c2, c3, k0.to(tl.uint64), k1.to(tl.uint64))
    if RADEMACHER:
        w = tl.where(q == 0, w0, tl.where(q == 1, w1, tl.where(q == 2, w2, w3)))
        z = tl.where((w >> 31) != 0, -1.0, 1.0)
    else:
        first = q < 2
        radius = _radius(tl.where(first, w0, w2))
        c, s = _cos_sin(tl.where(first, w1, w3), quarter_turn)
        z = radius * tl.where((q % 2) == 0, c, s)
    tl.store(out_ptr + e, z, mask=mask)
