/* zk-cflags: -O3 -fPIC -shared -ffp-contract=off -fno-math-errno -fno-trapping-math
 *
 * Native CPU kernels for the seeded perturbation z of kit/zo/perturb.py (backend="native").
 * Plain C (+ x86 integer intrinsics), no libm, no torch headers; built and loaded by
 * kit/zo/native/__init__.py, which reads the compiler flags from the first line above (so they are
 * part of the hashed source).
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
 *                 a = 2 pi w' 2^-32 to 2^-26 of a turn (w' the angle word), its nearest quadrant
 *                 from the top 2 bits of w' + 2^29 and sin/cos of the rest in [-pi/4, pi/4].
 *     rademacher: z = +1 or -1 from the top bit of w_q (set: -1).
 *   A chunk of n elements is the first n elements of that sequence (a prefix: z does not depend on
 *   n beyond it).  tests/test_zo_native.py re-implements this definition in numpy, bit for bit.
 *
 * Determinism: everything is exact 32-bit integer arithmetic or a fixed sequence of IEEE-754 float32
 * +, -, *, /, sqrt and exact int->float conversions (our own log via a minimax atanh series, the
 * Cephes sinf kernel and cos = sqrt(1 - sin^2): a few ulps, ~3e-7 relative at worst), with FMA
 * contraction off, no fast-math and no libm. Those operations are correctly rounded on every
 * conforming FPU, so each instruction-set variant below ("avx2", "sse2", "c": the same float code,
 * vectorised differently; integer Philox by intrinsics or plain C) and every compiler and CPU of an
 * architecture with FLT_EVAL_METHOD 0 give the same bits. Assumes the default FP environment (round
 * to nearest; no flush-to-zero of denormal weights in the axpy; z itself never makes a denormal).
 */
#include <float.h>
#include <stdint.h>
#include <string.h>

#if FLT_EVAL_METHOD != 0
#error "zkernel.c needs float arithmetic in float (FLT_EVAL_METHOD 0: SSE2 on x86, not x87)"
#endif

#define ZK_VERSION 2
#define NB 16           /* Philox counters per block */
#define BLOCK (4 * NB)  /* floats per block */

#define ZK_API __attribute__((visibility("default")))
#define ZK_INLINE static inline __attribute__((always_inline))
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(ZK_PORTABLE)
#define ZK_X86 1
#include <immintrin.h>
#endif

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

ZK_INLINE uint32_t as_u32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
ZK_INLINE float as_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---- Philox-4x32-10 on the NB counters first..first+NB-1 of a block --------------------------- */
/* first is a multiple of NB, so first + t never carries into the counter's high word.
 * rk: the round keys (k0, k1) of rounds 0..9, computed once per call by philox_keys (in memory, so
 * the vector variants broadcast them with a plain load). */

ZK_INLINE void philox_keys(uint32_t rk[20], uint64_t key)
{
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int r = 0; r < 10; r++) {
        rk[2 * r] = k0;
        rk[2 * r + 1] = k1;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
}

ZK_INLINE void philox_c(uint32_t w[4][NB], uint64_t first, uint32_t domain, const uint32_t rk[20])
{
    const uint32_t base = (uint32_t)first, high = (uint32_t)(first >> 32);
    for (int t = 0; t < NB; t++) {
        uint32_t c0 = base + (uint32_t)t, c1 = high, c2 = domain, c3 = 0u;
        for (int r = 0; r < 10; r++) {
            uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ rk[2 * r], n2 = (uint32_t)(p0 >> 32) ^ c3 ^ rk[2 * r + 1];
            c1 = (uint32_t)p1;
            c3 = (uint32_t)p0;
            c0 = n0;
            c2 = n2;
        }
        w[0][t] = c0; w[1][t] = c1; w[2][t] = c2; w[3][t] = c3;
    }
}

#ifdef ZK_X86
/* 32x32 -> 64 products of all four (SSE2) or eight (AVX2) lanes by M: high and low halves. */
ZK_INLINE void mulhilo_sse2(__m128i a, __m128i m, __m128i *hi, __m128i *lo)
{
    __m128i pe = _mm_mul_epu32(a, m);                     /* lanes 0, 2 */
    __m128i po = _mm_mul_epu32(_mm_srli_epi64(a, 32), m); /* lanes 1, 3 */
    *lo = _mm_unpacklo_epi32(_mm_shuffle_epi32(pe, _MM_SHUFFLE(0, 0, 2, 0)),
                             _mm_shuffle_epi32(po, _MM_SHUFFLE(0, 0, 2, 0)));
    *hi = _mm_unpacklo_epi32(_mm_shuffle_epi32(pe, _MM_SHUFFLE(0, 0, 3, 1)),
                             _mm_shuffle_epi32(po, _MM_SHUFFLE(0, 0, 3, 1)));
}

ZK_INLINE void philox_sse2(uint32_t w[4][NB], uint64_t first, uint32_t domain, const uint32_t rk[20])
{
    const __m128i m0 = _mm_set1_epi32((int)PHILOX_M0), m1 = _mm_set1_epi32((int)PHILOX_M1);
    __m128i c0[NB / 4], c1[NB / 4], c2[NB / 4], c3[NB / 4];
    for (int h = 0; h < NB / 4; h++) {
        c0[h] = _mm_add_epi32(_mm_set1_epi32((int)(uint32_t)first), _mm_setr_epi32(4 * h, 4 * h + 1, 4 * h + 2, 4 * h + 3));
        c1[h] = _mm_set1_epi32((int)(uint32_t)(first >> 32));
        c2[h] = _mm_set1_epi32((int)domain);
        c3[h] = _mm_setzero_si128();
    }
    for (int r = 0; r < 10; r++) {
        const __m128i kk0 = _mm_set1_epi32((int)rk[2 * r]), kk1 = _mm_set1_epi32((int)rk[2 * r + 1]);
        for (int h = 0; h < NB / 4; h++) {
            __m128i hi0, lo0, hi1, lo1;
            mulhilo_sse2(c0[h], m0, &hi0, &lo0);
            mulhilo_sse2(c2[h], m1, &hi1, &lo1);
            c0[h] = _mm_xor_si128(_mm_xor_si128(hi1, c1[h]), kk0);
            c2[h] = _mm_xor_si128(_mm_xor_si128(hi0, c3[h]), kk1);
            c1[h] = lo1;
            c3[h] = lo0;
        }
    }
    for (int h = 0; h < NB / 4; h++) {
        _mm_storeu_si128((__m128i *)&w[0][4 * h], c0[h]);
        _mm_storeu_si128((__m128i *)&w[1][4 * h], c1[h]);
        _mm_storeu_si128((__m128i *)&w[2][4 * h], c2[h]);
        _mm_storeu_si128((__m128i *)&w[3][4 * h], c3[h]);
    }
}

__attribute__((target("avx2"))) ZK_INLINE void mulhilo_avx2(__m256i a, __m256i m, __m256i *hi, __m256i *lo)
{
    __m256i pe = _mm256_mul_epu32(a, m);                        /* even lanes */
    __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m); /* odd lanes */
    *lo = _mm256_mullo_epi32(a, m);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}

__attribute__((target("avx2"))) ZK_INLINE void philox_avx2(uint32_t w[4][NB], uint64_t first, uint32_t domain,
                                                           const uint32_t rk[20])
{
    const __m256i m0 = _mm256_set1_epi32((int)PHILOX_M0), m1 = _mm256_set1_epi32((int)PHILOX_M1);
    __m256i c0[NB / 8], c1[NB / 8], c2[NB / 8], c3[NB / 8];
    for (int h = 0; h < NB / 8; h++) {
        c0[h] = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)first),
                                 _mm256_setr_epi32(8 * h, 8 * h + 1, 8 * h + 2, 8 * h + 3, 8 * h + 4, 8 * h + 5,
                                                   8 * h + 6, 8 * h + 7));
        c1[h] = _mm256_set1_epi32((int)(uint32_t)(first >> 32));
        c2[h] = _mm256_set1_epi32((int)domain);
        c3[h] = _mm256_setzero_si256();
    }
    _Pragma("GCC unroll 10") for (int r = 0; r < 10; r++) {
        const __m256i kk0 = _mm256_set1_epi32((int)rk[2 * r]), kk1 = _mm256_set1_epi32((int)rk[2 * r + 1]);
        for (int h = 0; h < NB / 8; h++) {
            __m256i hi0, lo0, hi1, lo1;
            mulhilo_avx2(c0[h], m0, &hi0, &lo0);
            mulhilo_avx2(c2[h], m1, &hi1, &lo1);
            c0[h] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[h]), kk0);
            c2[h] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[h]), kk1);
            c1[h] = lo1;
            c3[h] = lo0;
        }
    }
    for (int h = 0; h < NB / 8; h++) {
        _mm256_storeu_si256((__m256i *)&w[0][8 * h], c0[h]);
        _mm256_storeu_si256((__m256i *)&w[1][8 * h], c1[h]);
        _mm256_storeu_si256((__m256i *)&w[2][8 * h], c2[h]);
        _mm256_storeu_si256((__m256i *)&w[3][8 * h], c3[h]);
    }
}
#endif

/* ---- float32 math: fixed sequences of IEEE operations -------------------------------------- */

/* Radius r = sqrt(-2 log u) of Box-Muller for u = k 2^-24, k = (w >> 8) + 1 in [1, 2^24].
 * k = m 2^e exactly with m in [sqrt(1/2), sqrt(2)), so -2 log u = 2 (24 - e) log 2 - 2 log m, and
 * log m = 2 atanh(s) = 2 (s + s^3 P(s^2)), s = (m - 1) / (m + 1) in [-0.1716, 0.1716], with P a
 * minimax fit (relative error of atanh below 1e-9). Overall error: a few float32 ulps. */
ZK_INLINE float bm_radius(uint32_t w)
{
    float f = (float)(int32_t)((w >> 8) + 1u);               /* exact */
    uint32_t bits = as_u32(f);
    float m = as_f32((bits & 0x007fffffu) | 0x3f800000u);   /* [1, 2) */
    int32_t big = m > 1.41421356237309504880f;
    float mh = m * 0.5f;                                     /* exact */
    m = big ? mh : m;
    int32_t e24 = 151 - (int32_t)(bits >> 23) - big;         /* 24 - e, in [0, 24] */
    float s = (m - 1.0f) / (m + 1.0f);
    float s2 = s * s;
    float p = 1.4935866e-1f;
    p = p * s2 + 1.9988771e-1f;
    p = p * s2 + 3.3333388e-1f;
    float at = s * s2 * p + s;                               /* atanh(s) = log(m) / 2 */
    float r2 = (float)e24 * 1.38629436111989061883f - 4.0f * at;
    return __builtin_sqrtf(r2);
}

/* Gaussian pair from two words: *c = r cos(a), *s = r sin(a), a = 2 pi wa 2^-32 (to 2^-26 turn). */
ZK_INLINE void box_muller(uint32_t wr, uint32_t wa, float *c_out, float *s_out)
{
    float r = bm_radius(wr);
    /* a = (k + x') quarter turns, k = nearest quadrant (top 2 bits of v), x' in [-1/2, 1/2) */
    uint32_t v = wa + 0x20000000u;
    int32_t rem = (int32_t)((v & 0x3fffffffu) >> 6) - 0x800000;                 /* x' 2^24 */
    float x = (float)rem * (float)(1.57079632679489661923 / 16777216.0);         /* |x| <= pi/4 */
    float z = x * x;
    /* sin: Cephes sinf kernel on [-pi/4, pi/4]; cos = sqrt(1 - sin^2) >= sqrt(1/2) there */
    float sp = -1.9515295891E-4f;
    sp = sp * z + 8.3321608736E-3f;
    sp = sp * z - 1.6666654611E-1f;
    float s = sp * z * x + x;
    float c = __builtin_sqrtf(1.0f - s * s);
    /* quadrant k = v >> 30, as (cos, sin): 0 (c, s), 1 (-s, c), 2 (-c, -s), 3 (s, -c) */
    int32_t swap = (int32_t)(v << 1) < 0;                                        /* k odd */
    float S = swap ? c : s;
    float C = swap ? s : c;
    S = as_f32(as_u32(S) ^ (v & 0x80000000u));                                   /* k = 2, 3 */
    C = as_f32(as_u32(C) ^ ((v + 0x40000000u) & 0x80000000u));                  /* k = 1, 2 */
    *c_out = r * C;
    *s_out = r * S;
}

/* Box-Muller on the 16 counters of a block: 64 floats in the layout described at the top. */
ZK_INLINE void gauss_from_words(float *out, uint32_t w[4][NB])
{
    for (int t = 0; t < NB; t++) box_muller(w[0][t], w[1][t], &out[t], &out[NB + t]);
    for (int t = 0; t < NB; t++) box_muller(w[2][t], w[3][t], &out[2 * NB + t], &out[3 * NB + t]);
}

ZK_INLINE void rade_from_words(float *out, uint32_t w[4][NB])
{
    for (int q = 0; q < 4; q++)
        for (int t = 0; t < NB; t++) out[q * NB + t] = as_f32(0x3f800000u | (w[q][t] & 0x80000000u));
}

/* ---- exported kernels ----------------------------------------------------------------------- */
/* For each instruction set ISA in {avx2, sse2, c} (avx2/sse2 on x86 only) and each distribution
 * (gauss, rade):
 *   zk_<dist>_fill_<ISA>(out, n, key):                         out[i] = z[i]
 *   zk_<dist>_axpy_<ISA>(p, n, key, alpha, keep):              p[i] = keep * p[i] + alpha * z[i]
 *   zk_<dist>_axpy_fill_<ISA>(p, zout, n, key, alpha, keep):   both of the above (z stored in zout)
 * and zk_axpy_z_<ISA>(p, z, n, alpha, keep):                   p[i] = keep * p[i] + alpha * z[i]
 * Both products and the sum are rounded separately (no FMA): fill + axpy_z == axpy, bit for bit. */

#define ZK_DIST_KERNELS(DIST, ISA, ATTR, DOMAIN)                                                      \
    ATTR ZK_INLINE void DIST##_block_##ISA(float *z, uint64_t b, const uint32_t rk[20])               \
    {                                                                                                 \
        uint32_t w[4][NB];                                                                            \
        philox_##ISA(w, b * NB, DOMAIN, rk);                                                          \
        DIST##_from_words(z, w);                                                                      \
    }                                                                                                 \
    ATTR ZK_API void zk_##DIST##_fill_##ISA(float *out, int64_t n, uint64_t key)                      \
    {                                                                                                 \
        uint32_t rk[20];                                                                              \
        philox_keys(rk, key);                                                                         \
        int64_t full = n / BLOCK;                                                                     \
        for (int64_t b = 0; b < full; b++) DIST##_block_##ISA(out + b * BLOCK, (uint64_t)b, rk);      \
        if (n > full * BLOCK) {                                                                       \
            float z[BLOCK];                                                                           \
            DIST##_block_##ISA(z, (uint64_t)full, rk);                                                \
            memcpy(out + full * BLOCK, z, (size_t)(n - full * BLOCK) * sizeof(float));                \
        }                                                                                             \
    }                                                                                                 \
    ATTR ZK_API void zk_##DIST##_axpy_##ISA(float *p, int64_t n, uint64_t key, float alpha, float keep) \
    {                                                                                                 \
        float z[BLOCK];                                                                               \
        uint32_t rk[20];                                                                              \
        philox_keys(rk, key);                                                                         \
        for (int64_t b = 0; b * BLOCK < n; b++) {                                                     \
            DIST##_block_##ISA(z, (uint64_t)b, rk);                                                   \
            float *q = p + b * BLOCK;                                                                 \
            if (n - b * BLOCK >= BLOCK) {                                                             \
                for (int i = 0; i < BLOCK; i++) q[i] = keep * q[i] + alpha * z[i];                    \
            } else {                                                                                  \
                for (int64_t i = 0; i < n - b * BLOCK; i++) q[i] = keep * q[i] + alpha * z[i];        \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
    ATTR ZK_API void zk_##DIST##_axpy_fill_##ISA(float *p, float *zout, int64_t n, uint64_t key,      \
                                                 float alpha, float keep)                            \
    {                                                                                                 \
        float z[BLOCK];                                                                               \
        uint32_t rk[20];                                                                              \
        philox_keys(rk, key);                                                                         \
        for (int64_t b = 0; b * BLOCK < n; b++) {                                                     \
            DIST##_block_##ISA(z, (uint64_t)b, rk);                                                   \
            float *q = p + b * BLOCK, *o = zout + b * BLOCK;                                          \
            if (n - b * BLOCK >= BLOCK) {                                                             \
                for (int i = 0; i < BLOCK; i++) {                                                     \
                    o[i] = z[i];                                                                      \
                    q[i] = keep * q[i] + alpha * z[i];                                                \
                }                                                                                     \
            } else {                                                                                  \
                for (int64_t i = 0; i < n - b * BLOCK; i++) {                                         \
                    o[i] = z[i];                                                                      \
                    q[i] = keep * q[i] + alpha * z[i];                                                \
                }                                                                                     \
            }                                                                                         \
        }                                                                                             \
    }

#define ZK_ISA_KERNELS(ISA, ATTR)                                                                     \
    ZK_DIST_KERNELS(gauss, ISA, ATTR, 0u)                                                             \
    ZK_DIST_KERNELS(rade, ISA, ATTR, 1u)                                                              \
    ATTR ZK_API void zk_axpy_z_##ISA(float *restrict p, const float *restrict z, int64_t n, float alpha, \
                                     float keep)                                                      \
    {                                                                                                 \
        for (int64_t i = 0; i < n; i++) p[i] = keep * p[i] + alpha * z[i];                            \
    }

ZK_ISA_KERNELS(c, )
#ifdef ZK_X86
ZK_ISA_KERNELS(sse2, )
ZK_ISA_KERNELS(avx2, __attribute__((target("avx2"))))
#endif

/* Which variants this build has and this CPU runs, best first: "avx2,sse2,c" etc. */
static int zk_has_avx2(void)
{
#ifdef ZK_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

ZK_API const char *zk_isas(void)
{
#ifdef ZK_X86
    return zk_has_avx2() ? "avx2,sse2,c" : "sse2,c";
#else
    return "c";
#endif
}

/* Unsuffixed entry points for C callers: the best variant for this CPU (all give the same bits). */
#ifdef ZK_X86
#define ZK_BEST(F, ...) (zk_has_avx2() ? F##_avx2(__VA_ARGS__) : F##_sse2(__VA_ARGS__))
#else
#define ZK_BEST(F, ...) F##_c(__VA_ARGS__)
#endif
ZK_API void zk_gauss_fill(float *out, int64_t n, uint64_t key) { ZK_BEST(zk_gauss_fill, out, n, key); }
ZK_API void zk_rade_fill(float *out, int64_t n, uint64_t key) { ZK_BEST(zk_rade_fill, out, n, key); }
ZK_API void zk_gauss_axpy(float *p, int64_t n, uint64_t key, float alpha, float keep)
{
    ZK_BEST(zk_gauss_axpy, p, n, key, alpha, keep);
}
ZK_API void zk_rade_axpy(float *p, int64_t n, uint64_t key, float alpha, float keep)
{
    ZK_BEST(zk_rade_axpy, p, n, key, alpha, keep);
}
ZK_API void zk_gauss_axpy_fill(float *p, float *zout, int64_t n, uint64_t key, float alpha, float keep)
{
    ZK_BEST(zk_gauss_axpy_fill, p, zout, n, key, alpha, keep);
}
ZK_API void zk_rade_axpy_fill(float *p, float *zout, int64_t n, uint64_t key, float alpha, float keep)
{
    ZK_BEST(zk_rade_axpy_fill, p, zout, n, key, alpha, keep);
}
ZK_API void zk_axpy_z(float *p, const float *z, int64_t n, float alpha, float keep)
{
    ZK_BEST(zk_axpy_z, p, z, n, alpha, keep);
}

/* ---- float16 / bfloat16 master weights (kit/zo/master.py) ---------------------------------- */
/* The reference's out-of-place ops on 16-bit weights, given the float32 z of a chunk (from fill):
 * zq = z rounded to the weights' format; every op in float32, its result rounded to nearest even in
 * that format (as torch computes a float16 / bfloat16 op with a Python scalar rounded to float32):
 *   zk_<fmt>_perturb_z(p, z, n, s):            p = p + s * zq
 *   zk_<fmt>_update_z(p, z, n, r, lr, g):      p = p + r * zq (if r != 0), then p = p - lr * (g * zq)
 * fmt: f16 (IEEE binary16) or bf16. Integer rounding only: no dependence on the FP environment. */
ZK_INLINE float zk_from_f16(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in float32 */
        float f = (float)m * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    if (e == 31) return as_f32(sign | 0x7f800000u | (m << 13));
    return as_f32(sign | ((e + 112u) << 23) | (m << 13));
}

ZK_INLINE uint16_t zk_to_f16(float f)
{
    uint32_t x = as_u32(f), sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520: rounds to infinity */
    if (x < 0x38800000u) { /* below 2^-14: a subnormal half (or zero), in units of 2^-24 */
        uint32_t e = x >> 23;
        if (e < 102u) return (uint16_t)sign; /* below 2^-25: rounds to zero (2^-25 itself: to even 0) */
        uint32_t m = (x & 0x7fffffu) | 0x800000u, shift = 126u - e; /* 14 <= shift <= 24 */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r); /* r = 1024 is the smallest normal's encoding */
    }
    x += 0xfffu + ((x >> 13) & 1u); /* round the 13 dropped bits to nearest even */
    return (uint16_t)(sign | ((x - (112u << 23)) >> 13));
}

ZK_INLINE float zk_from_bf16(uint16_t h) { return as_f32((uint32_t)h << 16); }

ZK_INLINE uint16_t zk_to_bf16(float f)
{
    uint32_t x = as_u32(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* NaN, quiet */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

#define ZK_HALF_KERNELS(FMT)                                                                          \
    ZK_API void zk_##FMT##_perturb_z_c(uint16_t *p, const float *z, int64_t n, float s)               \
    {                                                                                                 \
        for (int64_t i = 0; i < n; i++) {                                                             \
            float zq = zk_from_##FMT(zk_to_##FMT(z[i]));                                              \
            p[i] = zk_to_##FMT(zk_from_##FMT(p[i]) + zk_from_##FMT(zk_to_##FMT(zq * s)));             \
        }                                                                                             \
    }                                                                                                 \
    ZK_API void zk_##FMT##_update_z_c(uint16_t *p, const float *z, int64_t n, float r, float lr, float g) \
    {                                                                                                 \
        for (int64_t i = 0; i < n; i++) {                                                             \
            float zq = zk_from_##FMT(zk_to_##FMT(z[i]));                                              \
            float q = zk_from_##FMT(p[i]);                                                            \
            if (r != 0.0f) q = zk_from_##FMT(zk_to_##FMT(q + zk_from_##FMT(zk_to_##FMT(zq * r))));    \
            float step = zk_from_##FMT(zk_to_##FMT(lr * zk_from_##FMT(zk_to_##FMT(zq * g))));         \
            p[i] = zk_to_##FMT(q - step);                                                             \
        }                                                                                             \
    }
ZK_HALF_KERNELS(f16)
ZK_HALF_KERNELS(bf16)

/* float16 with F16C (x86): the same ops, 8 lanes; vcvtps2ph with an explicit round-to-nearest-even
 * immediate is the IEEE conversion (subnormals, overflow to infinity), so the bits equal the C code's. */
#ifdef ZK_X86
#include <cpuid.h>
ZK_API int zk_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) && zk_has_avx2();
}
#define ZK_R16(x) _mm256_cvtph_ps(_mm256_cvtps_ph((x), _MM_FROUND_TO_NEAREST_INT))
__attribute__((target("avx2,f16c"))) ZK_API void zk_f16_perturb_z_avx2(uint16_t *p, const float *z, int64_t n,
                                                                        float s)
{
    int64_t i = 0;
    const __m256 vs = _mm256_set1_ps(s);
    for (; i + 8 <= n; i += 8) {
        __m256 zq = ZK_R16(_mm256_loadu_ps(z + i));
        __m256 q = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + i)));
        __m256 sum = _mm256_add_ps(q, ZK_R16(_mm256_mul_ps(zq, vs)));
        _mm_storeu_si128((__m128i *)(p + i), _mm256_cvtps_ph(sum, _MM_FROUND_TO_NEAREST_INT));
    }
    zk_f16_perturb_z_c(p + i, z + i, n - i, s);
}
__attribute__((target("avx2,f16c"))) ZK_API void zk_f16_update_z_avx2(uint16_t *p, const float *z, int64_t n,
                                                                       float r, float lr, float g)
{
    int64_t i = 0;
    const __m256 vr = _mm256_set1_ps(r), vl = _mm256_set1_ps(lr), vg = _mm256_set1_ps(g);
    for (; i + 8 <= n; i += 8) {
        __m256 zq = ZK_R16(_mm256_loadu_ps(z + i));
        __m256 q = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + i)));
        if (r != 0.0f) q = ZK_R16(_mm256_add_ps(q, ZK_R16(_mm256_mul_ps(zq, vr))));
        __m256 step = ZK_R16(_mm256_mul_ps(vl, ZK_R16(_mm256_mul_ps(zq, vg))));
        _mm_storeu_si128((__m128i *)(p + i), _mm256_cvtps_ph(_mm256_sub_ps(q, step), _MM_FROUND_TO_NEAREST_INT));
    }
    zk_f16_update_z_c(p + i, z + i, n - i, r, lr, g);
}
#else
ZK_API int zk_has_f16c(void) { return 0; }
#endif

/* Raw Philox-4x32-10 of one counter (for known-answer tests). */
ZK_API void zk_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

ZK_API int zk_version(void) { return ZK_VERSION; }
