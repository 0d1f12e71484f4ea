"""z's definition (kit/zo/native/zkernel.c) as one fused Triton kernel. Imports Triton: load it only
through `kit.zo.cuda.load`, so CPU installs never need Triton.

One launch covers a whole parameter: its chunks of chunk_size elements, each under its own key
mix(seed, i, c), derived in the kernel (SplitMix64 of a per-parameter prefix), so a pass costs one
launch per parameter, not one per chunk. One lane (one GPU thread at COUNTERS = 32 num_warps) runs
one Philox counter j = 16 b + t of one chunk and uses all four of its words: element 16 q + t of
block b (q = 0..3), i.e. elements 64 (j >> 4) + (j & 15) + 16 q of the chunk. gaussian: q = 0, 1
are r cos a, r sin a from words (w0, w1), q = 2, 3 the same from (w2, w3); rademacher: the sign
bit of w_q. Per element the kernel then, in one pass,

    MODE_FILL:       z_out = z
    MODE_AXPY:       p = keep * p + scale * z                    (perturb, restore, update, decay)
    MODE_AXPY_FILL:  p = keep * p + scale * z and z_out = z      (keep_z's first pass)

Bit-exact by construction, whatever the Triton version or GPU: every float operation is an IEEE
round-to-nearest float32 operation (launched with FMA contraction off; divisions `div_rn` and square
roots `sqrt_rn`, as Triton's `/` and `tl.sqrt` are approximations), and a sign is changed by XOR of
the sign bit, never by a float negation (`-x` was `0 - x` in older Triton: -(+0) = +0). The key's
halves are typed uint32 and never specialised: Triton's launcher turns an integer argument equal to
1 into a constant otherwise (a different, untested program for 1 key in ~2^31); nor are the sizes
(one compiled program per distribution, mode and key kind, whatever the lengths). The ahead-of-time
test (tests/test_zo_cuda_kernel.py) checks all of this in the PTX for sm_80 and sm_90.
"""

from __future__ import annotations

import triton
import triton.language as tl

MODE_FILL, MODE_AXPY, MODE_AXPY_FILL = 0, 1, 2
COUNTERS = 128  # Philox counters (lanes) per program: 512 elements
NUM_WARPS = 4  # 128 threads: one counter per thread


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox-4x32-10 on uint32 words (c0..c3 tensors, k0, k1 uint32 scalars; uint32 arithmetic wraps)."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _flip(x, sign):
    """x with its sign bit XORed with `sign` (0 or 0x80000000): an exact negation, signed zeros kept."""
    return (x.to(tl.uint32, bitcast=True) ^ sign).to(tl.float32, bitcast=True)


@triton.jit
def _radius(w):
    """sqrt(-2 log u), u = ((w >> 8) + 1) 2^-24, as zkernel.c's bm_radius."""
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
def _cos_sin(wa):
    """(cos a, sin a), a = 2 pi wa 2^-32 on a 2^-26 turn grid, as zkernel.c's box_muller."""
    v = wa + 0x20000000
    rem = ((v & 0x3FFFFFFF) >> 6).to(tl.int32) - 0x800000
    quarter_turn = tl.full((), 0x33C90FDB, tl.uint32).to(tl.float32, bitcast=True)  # f32(pi/2 2^-24)
    x = rem.to(tl.float32) * quarter_turn
    z = x * x
    sp = z * -1.9515295891e-4 + 8.3321608736e-3
    sp = sp * z - 1.6666654611e-1
    s = sp * z * x + x
    c = tl.math.sqrt_rn(1.0 - s * s)
    swap = ((v >> 30) & 1) != 0
    big_s = _flip(tl.where(swap, c, s), v & 0x80000000)  # quadrants 2, 3
    big_c = _flip(tl.where(swap, s, c), (v + 0x40000000) & 0x80000000)  # quadrants 1, 2
    return big_c, big_s


@triton.jit
def _apply(p_ptr, z_ptr, start, e, size, z, scale, keep, MODE: tl.constexpr):
    """The per-element work of MODE at chunk elements e (< size) of the chunk at `start`."""
    mask = e < size
    at = start + e
    if MODE != 0:  # MODE_FILL
        p = tl.load(p_ptr + at, mask=mask, other=0.0)
        tl.store(p_ptr + at, keep * p + scale * z, mask=mask)
    if MODE != 1:  # MODE_AXPY
        tl.store(z_ptr + at, z, mask=mask)


@triton.jit
def _splitmix64(x):
    """SplitMix64 (kit/zo/seeding.py) on uint64 (wrapping arithmetic)."""
    x = x + 0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    return x ^ (x >> 31)


@triton.jit(do_not_specialize=("n", "chunk_size", "chunk_counters", "key_lo", "key_hi"))
def z_kernel(
    p_ptr,
    z_ptr,
    n,
    chunk_size,
    chunk_counters,
    key_lo: tl.uint32,
    key_hi: tl.uint32,
    scale,
    keep,
    MODE: tl.constexpr,
    RADEMACHER: tl.constexpr,
    PER_CHUNK_KEYS: tl.constexpr,
    COUNTERS: tl.constexpr,
):
    """n elements cut in chunks of chunk_size (chunk_counters = 16 ceil(chunk_size / 64) counters
    each). PER_CHUNK_KEYS: chunk c's key is mix(seed, i, c) = splitmix64(h ^ c) >> 1 with
    h = (key_hi, key_lo) = splitmix64(splitmix64(seed) ^ i) (kit/zo/seeding.py); else one chunk
    (chunk_size = n) under the key (key_hi, key_lo)."""
    lane = tl.program_id(0).to(tl.int64) * COUNTERS + tl.arange(0, COUNTERS)
    c = lane // chunk_counters
    j = lane - c * chunk_counters  # the Philox counter within chunk c
    start = c * chunk_size
    size = tl.minimum(n - start, chunk_size)  # <= 0 past the last chunk: all masked
    h = (key_hi.to(tl.uint64) << 32) | key_lo.to(tl.uint64)
    if PER_CHUNK_KEYS:  # noqa: SIM108 (a constexpr branch: only one is compiled)
        key = _splitmix64(h ^ c.to(tl.uint64)) >> 1
    else:
        key = h + tl.full((COUNTERS,), 0, tl.uint64)
    k0 = (key & 0xFFFFFFFF).to(tl.uint32)
    k1 = (key >> 32).to(tl.uint32)
    c0 = (j & 0xFFFFFFFF).to(tl.uint32)
    c1 = (j >> 32).to(tl.uint32)
    zero = tl.full((COUNTERS,), 0, tl.uint32)
    domain = 1 if RADEMACHER else 0
    w0, w1, w2, w3 = _philox(c0, c1, zero + domain, zero, k0, k1)
    e = (j >> 4) * 64 + (j & 15)  # chunk element of q = 0; q adds 16 q
    if RADEMACHER:
        one = tl.full((COUNTERS,), 0x3F800000, tl.uint32)
        z0 = (one | (w0 & 0x80000000)).to(tl.float32, bitcast=True)
        z1 = (one | (w1 & 0x80000000)).to(tl.float32, bitcast=True)
        z2 = (one | (w2 & 0x80000000)).to(tl.float32, bitcast=True)
        z3 = (one | (w3 & 0x80000000)).to(tl.float32, bitcast=True)
    else:
        r_a = _radius(w0)
        c_a, s_a = _cos_sin(w1)
        r_b = _radius(w2)
        c_b, s_b = _cos_sin(w3)
        z0 = r_a * c_a
        z1 = r_a * s_a
        z2 = r_b * c_b
        z3 = r_b * s_b
    _apply(p_ptr, z_ptr, start, e, size, z0, scale, keep, MODE)
    _apply(p_ptr, z_ptr, start, e + 16, size, z1, scale, keep, MODE)
    _apply(p_ptr, z_ptr, start, e + 32, size, z2, scale, keep, MODE)
    _apply(p_ptr, z_ptr, start, e + 48, size, z3, scale, keep, MODE)
