/* zk-cflags: -O3 -fPIC -shared -ffp-contract=off -fno-math-errno -fno-trapping-math
 *
 * Native CPU kernels for the seeded perturbation z of kit/zo/perturb.py (backend="native").
 * Plain C, no libm, no torch headers; built and loaded by kit/zo/native/__init__.py, which reads the
 * compiler flags from the first line above (they are part of the hashed source).
 *
 * Definition of z for one chunk of n floats with 64-bit key K (K = mix(seed, param, chunk)):
 *
 *   Philox-4x32-10 (Salmon et al. 2011, the generator of cuRAND and of torch's CUDA RNG) with key
 *   (K & 0xffffffff, K >> 32) and counter (j & 0xffffffff, j >> 32, domain, 0) gives four 32-bit words
 *   w0..w3 for counter j; domain = 0 for "gaussian", 1 for "rademacher".
 *   Elements are laid out in blocks of 64: block b uses counters j = 16 b + t, t = 0..15, and its
 *   element 16 q + t (q = 0..3) comes from counter 16 b + t:
 *     gaussian:   q=0: r_A cos(a_A)  q=1: r_A sin(a_A)  q=2: r_B cos(a_B)  q=3: r_B sin(a_B)
 *                 with (r_A, a_A) from (w0, w1) and (r_B, a_B) from (w2, w3), Box-Muller in float32:
 *                 r = sqrt(-2 log(u)), u = ((w >> 8) + 1) 2^-24 in (0, 1]  (so |z| <= 5.77),
 *                 a = 2 pi w' 2^-32 rounded to 2^-26 of a turn (w' the angle word).
 *     rademacher: z = +1 or -1 from the top bit of w_q (set: -1).
 *   A chunk of n elements is the first n elements of that sequence (a prefix: z does not depend on
 *   n beyond it).
 *
 * Determinism: everything is either exact 32-bit integer arithmetic or a fixed sequence of IEEE-754
 * float32 +, -, *, sqrt and exact int->float conversions (our own polynomial log/sin/cos, Cephes
 * coefficients, ~1e-7 relative error), with FMA contraction off and no fast-math. Those operations
 * are correctly rounded on every conforming FPU, so the scalar, SSE2 and AVX2 code paths (the
 * target_clones below) and every compiler/CPU of an IEEE-754 architecture give the same bits.
 * Assumes the default FP environment (round to nearest, no flush-to-zero of denormal inputs in the
 * axpy; z itself never makes a denormal).
 */
#include <stdint.h>
#include <string.h>

#define ZK_VERSION 1
#define NB 16           /* Philox counters per block */
#define BLOCK (4 * NB)  /* floats per block */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(ZK_NO_CLONES)
#define ZK_EXPORT __attribute__((visibility("default"), target_clones("avx2", "default")))
#else
#define ZK_EXPORT __attribute__((visibility("default")))
#endif
#define ZK_INLINE static inline __attribute__((always_inline))

ZK_INLINE uint32_t as_u32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
ZK_INLINE float as_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---- Philox-4x32-10 on NB counters at once (vectorised across t) ---------------------------- */
ZK_INLINE void philox_block(uint32_t w[4][NB], uint64_t first, uint32_t domain, uint64_t key)
{
    /* first is a multiple of NB: counter first + t never carries into the high word */
    const uint32_t base = (uint32_t)first, high = (uint32_t)(first >> 32);
    for (int t = 0; t < NB; t++) {
        uint32_t c0 = base + (uint32_t)t, c1 = high, c2 = domain, c3 = 0u;
        uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
        for (int r = 0; r < 10; r++) { /* fully unrolled; the loop over t is vectorised */
            /* high and low halves written separately: gcc vectorises each (pmuludq / pmulld) */
            uint32_t n0 = (uint32_t)(((uint64_t)0xCD9E8D57u * c2) >> 32) ^ c1 ^ k0;
            uint32_t n1 = 0xCD9E8D57u * c2;
            uint32_t n2 = (uint32_t)(((uint64_t)0xD2511F53u * c0) >> 32) ^ c3 ^ k1;
            uint32_t n3 = 0xD2511F53u * c0;
            c0 = n0; c1 = n1; c2 = n2; c3 = n3;
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        w[0][t] = c0; w[1][t] = c1; w[2][t] = c2; w[3][t] = c3;
    }
}

/* ---- float32 math: fixed sequences of IEEE operations -------------------------------------- */

/* log(u) for u in [2^-24, 1] (normal, positive): Cephes logf. */
ZK_INLINE float zk_log(float u)
{
    uint32_t bits = as_u32(u);
    int32_t e = (int32_t)(bits >> 23) - 126;
    float m = as_f32((bits & 0x007fffffu) | 0x3f000000u); /* [0.5, 1) */
    int32_t lo = m < 0.70710678118654752440f;
    float xa = m + m - 1.0f;
    float xb = m - 1.0f;
    float x = lo ? xa : xb;
    float fe = (float)(e - lo);
    float z = x * x;
    float y = 7.0376836292E-2f;
    y = y * x - 1.1514610310E-1f;
    y = y * x + 1.1676998740E-1f;
    y = y * x - 1.2420140846E-1f;
    y = y * x + 1.4249322787E-1f;
    y = y * x - 1.6668057665E-1f;
    y = y * x + 2.0000714765E-1f;
    y = y * x - 2.4999993993E-1f;
    y = y * x + 3.3333331174E-1f;
    y = y * x * z;
    y = y + -2.12194440E-4f * fe;
    y = y + -0.5f * z;
    x = x + y;
    x = x + 0.693359375f * fe;
    return x;
}

/* Gaussian pair from two words: *c = r cos(a), *s = r sin(a). */
ZK_INLINE void box_muller(uint32_t wr, uint32_t wa, float *c_out, float *s_out)
{
    float u = (float)(int32_t)((wr >> 8) + 1u) * 5.9604644775390625E-8f; /* 2^-24, exact */
    float r = __builtin_sqrtf(-2.0f * zk_log(u));
    /* angle = (k + x') quarter turns, k = nearest quadrant, x' in [-1/2, 1/2) on a 2^-24 grid */
    uint32_t v = wa + 0x20000000u;
    uint32_t k = v >> 30;
    int32_t rem = (int32_t)((v & 0x3fffffffu) >> 6) - 0x800000;
    float x = (float)rem * (float)(1.57079632679489661923 / 16777216.0); /* |x| <= pi/4 */
    float z = x * x;
    /* Cephes sinf / cosf kernels on [-pi/4, pi/4] */
    float sp = -1.9515295891E-4f;
    sp = sp * z + 8.3321608736E-3f;
    sp = sp * z - 1.6666654611E-1f;
    float s = sp * z * x + x;
    float cp = 2.443315711809948E-5f;
    cp = cp * z - 1.388731625493765E-3f;
    cp = cp * z + 4.166664568298827E-2f;
    float c = cp * z * z - 0.5f * z + 1.0f;
    /* quadrant: k=0 (c, s), 1 (-s, c), 2 (-c, -s), 3 (s, -c) as (cos, sin) */
    uint32_t swap = k & 1u;
    float S = swap ? c : s;
    float C = swap ? s : c;
    S = as_f32(as_u32(S) ^ ((k & 2u) << 30));
    C = as_f32(as_u32(C) ^ (((k + 1u) & 2u) << 30));
    *c_out = r * C;
    *s_out = r * S;
}

ZK_INLINE void gauss_block(float *out, uint64_t b, uint64_t key)
{
    uint32_t w[4][NB];
    philox_block(w, b * NB, 0u, key);
    for (int t = 0; t < NB; t++) box_muller(w[0][t], w[1][t], &out[t], &out[NB + t]);
    for (int t = 0; t < NB; t++) box_muller(w[2][t], w[3][t], &out[2 * NB + t], &out[3 * NB + t]);
}

ZK_INLINE void rademacher_block(float *out, uint64_t b, uint64_t key)
{
    uint32_t w[4][NB];
    philox_block(w, b * NB, 1u, key);
    for (int q = 0; q < 4; q++)
        for (int t = 0; t < NB; t++) out[q * NB + t] = as_f32(0x3f800000u | (w[q][t] & 0x80000000u));
}

/* ---- exported kernels ----------------------------------------------------------------------- */
/* Each comes in a gaussian (zk_gauss_*) and a rademacher (zk_rade_*) flavour:
 *   fill(out, n, key):                     out[i] = z[i]
 *   axpy(p, n, key, alpha, keep):          p[i] = keep * p[i] + alpha * z[i]        (z never stored)
 *   axpy_fill(p, zout, n, key, alpha, keep): zout[i] = z[i]; p[i] = keep * p[i] + alpha * z[i]
 * and zk_axpy_z(p, z, n, alpha, keep): p[i] = keep * p[i] + alpha * z[i] with a stored z.
 * Every product and the sum are rounded separately (no FMA), so fill + axpy_z == axpy bit for bit. */

#define ZK_KERNELS(NAME, BLOCKFN)                                                                 \
    ZK_EXPORT void zk_##NAME##_fill(float *out, int64_t n, uint64_t key)                          \
    {                                                                                             \
        int64_t nb = n / BLOCK, rest = n % BLOCK;                                                 \
        for (int64_t b = 0; b < nb; b++) {                                                        \
            float z[BLOCK];                                                                       \
            BLOCKFN(z, (uint64_t)b, key);                                                         \
            memcpy(out + b * BLOCK, z, sizeof z);                                                 \
        }                                                                                         \
        if (rest) {                                                                               \
            float z[BLOCK];                                                                       \
            BLOCKFN(z, (uint64_t)nb, key);                                                        \
            memcpy(out + nb * BLOCK, z, (size_t)rest * sizeof(float));                            \
        }                                                                                         \
    }                                                                                             \
    ZK_EXPORT void zk_##NAME##_axpy(float *p, int64_t n, uint64_t key, float alpha, float keep)   \
    {                                                                                             \
        for (int64_t b = 0; b * BLOCK < n; b++) {                                                 \
            float z[BLOCK];                                                                       \
            BLOCKFN(z, (uint64_t)b, key);                                                         \
            float *q = p + b * BLOCK;                                                             \
            if (n - b * BLOCK >= BLOCK) {                                                         \
                for (int i = 0; i < BLOCK; i++) q[i] = keep * q[i] + alpha * z[i];                \
            } else {                                                                              \
                for (int64_t i = 0; i < n - b * BLOCK; i++) q[i] = keep * q[i] + alpha * z[i];    \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    ZK_EXPORT void zk_##NAME##_axpy_fill(float *p, float *zout, int64_t n, uint64_t key, float alpha, \
                                         float keep)                                              \
    {                                                                                             \
        for (int64_t b = 0; b * BLOCK < n; b++) {                                                 \
            float z[BLOCK];                                                                       \
            BLOCKFN(z, (uint64_t)b, key);                                                         \
            float *q = p + b * BLOCK, *o = zout + b * BLOCK;                                      \
            if (n - b * BLOCK >= BLOCK) {                                                         \
                for (int i = 0; i < BLOCK; i++) { o[i] = z[i]; q[i] = keep * q[i] + alpha * z[i]; } \
            } else {                                                                              \
                for (int64_t i = 0; i < n - b * BLOCK; i++) {                                     \
                    o[i] = z[i];                                                                  \
                    q[i] = keep * q[i] + alpha * z[i];                                            \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

ZK_KERNELS(gauss, gauss_block)
ZK_KERNELS(rade, rademacher_block)

ZK_EXPORT void zk_axpy_z(float *restrict p, const float *restrict z, int64_t n, float alpha, float keep)
{
    for (int64_t i = 0; i < n; i++) p[i] = keep * p[i] + alpha * z[i];
}

/* Raw Philox-4x32-10 of one counter (for known-answer tests). */
__attribute__((visibility("default"))) void zk_philox4x32(const uint32_t ctr[4], const uint32_t key[2],
                                                          uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1; c3 = (uint32_t)p0; c0 = n0; c2 = n2;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

__attribute__((visibility("default"))) int zk_version(void) { return ZK_VERSION; }
