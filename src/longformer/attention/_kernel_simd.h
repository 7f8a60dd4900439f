// The fused kernel's arithmetic (see _kernel.cpp): vector types for AVX-512 or AVX2, fp32/bf16
// loads and conversions, exp, the dropout hash, and the register-blocked micro-kernel every
// product of the kernel runs on.
#pragma once

#include <math.h>
#include <omp.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <optional>
#include <vector>

// MR x NR accumulators: 6 x 2 vectors of the 16 AVX2 registers; AVX-512 has 32, and 8 rows divide the
// 64-query blocks exactly (6 would compute 66 rows for 64)
#if defined(__AVX512F__)
#define VW 16
#define MR 8
#else
#define VW 8
#define MR 6
#endif
#define NR (2 * VW)

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));
typedef uint32_t vu __attribute__((vector_size(VW * 4)));

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define BF16_DOT_NATIVE 1
#else
#define BF16_DOT_NATIVE 0
#endif

enum Dtype { F32 = 0, BF16 = 1, F16 = 2 };

static inline vf vld(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vst(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vu vldu(const uint32_t *p) { vu v; memcpy(&v, p, sizeof v); return v; }
// A broadcast. Through the intrinsic: GCC turns `vf{} + x` into a scalar add plus a broadcast
// (0 + x is not x for x = -0) and an element-wise fill into a broadcast plus an insert.
static inline vf vset(float x) {
#if defined(__AVX512F__)
    return (vf)_mm512_set1_ps(x);
#elif defined(__AVX__)
    return (vf)_mm256_set1_ps(x);
#else
    vf v;
    for (int i = 0; i < VW; i++) v[i] = x;
    return v;
#endif
}
static inline vu vsetu(uint32_t x) {
#if defined(__AVX512F__)
    return (vu)_mm512_set1_epi32((int)x);
#elif defined(__AVX__)
    return (vu)_mm256_set1_epi32((int)x);
#else
    vu v;
    for (int i = 0; i < VW; i++) v[i] = x;
    return v;
#endif
}
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// The micro-kernel's element operations, for fp32 operands and for bf16 pairs (a uint32_t holding
// two bf16, the even element in the low half): acc + a * b, or acc + a.hi * b.hi + a.lo * b.lo.
static inline vf vload(const float *p) { return vld(p); }
static inline vu vload(const uint32_t *p) { return vldu(p); }
static inline vf vbcast(float x) { return vset(x); }
static inline vu vbcast(uint32_t x) { return vsetu(x); }
static inline vf madd(vf acc, vf a, vf b) { return acc + a * b; }
static inline vf madd(vf acc, vu a, vu b) {
#if BF16_DOT_NATIVE
    return (vf)_mm512_dpbf16_ps((__m512)acc, (__m512bh)a, (__m512bh)b);
#else
    // vdpbf16ps adds the odd (high) product first, then the even one; bf16 x bf16 is exact in fp32
    const vu hi = vsetu(0xFFFF0000u);
    acc += (vf)(a & hi) * (vf)(b & hi);
    return acc + (vf)(a << 16) * (vf)(b << 16);
#endif
}

// Scalar conversions, rounding to nearest even as torch does.
static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN stays a (quiet) NaN
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}
// bf16 bits (in the low half) of VW non-negative finite floats
static inline vu vbf16_bits(vf x) {
    const vu u = (vu)x;
    return (u + vsetu(0x7FFFu) + ((u >> 16) & vsetu(1u))) >> 16;
}

// n elements from x (of dtype dt) at element offset off, widened to fp32 and multiplied by scale
static void load_row(int dt, const void *x, long off, float *dst, long n, float scale) {
    if (dt == F32) {
        const float *s = (const float *)x + off;
        for (long i = 0; i < n; i++) dst[i] = s[i] * scale;
    } else if (dt == BF16) {
        const uint16_t *s = (const uint16_t *)x + off;
        for (long i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]) * scale;
    } else {
        const _Float16 *s = (const _Float16 *)x + off;
        for (long i = 0; i < n; i++) dst[i] = (float)s[i] * scale;
    }
}

// n fp32 values times scale, rounded into x (of dtype dt) at element offset off
static void store_row(int dt, void *x, long off, const float *src, long n, float scale) {
    if (dt == F32) {
        float *d = (float *)x + off;
        for (long i = 0; i < n; i++) d[i] = src[i] * scale;
    } else if (dt == BF16) {
        uint16_t *d = (uint16_t *)x + off;
        for (long i = 0; i < n; i++) d[i] = f32_to_bf16(src[i] * scale);
    } else {
        _Float16 *d = (_Float16 *)x + off;
        for (long i = 0; i < n; i++) d[i] = (_Float16)(src[i] * scale);
    }
}

static const float NEG_INF = -INFINITY;

// Dropout of attention probabilities. Whether probability (i, j) of head (b, h) is kept is a hash of
// (seed, b * H + h, i, j): nothing is stored, backward regenerates the same mask, and dropout.py
// computes the identical mask in torch for the global rows and the dense reference.
template <class U>  // uint32_t, or a vector of them (vu): the same operations either way
static inline U fmix32(U x) {  // murmur3's finaliser
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return x;
}

// exp(x) for x <= ~0 (scores minus their maximum or log-sum-exp): exactly 0 below -87 and for -inf.
// Range reduction x = n ln2 + r, |r| <= ln2 / 2, then a degree-6 Taylor polynomial (relative error
// ~2e-7, below fp32 rounding of the sums it feeds).
static inline vf vexp(vf x) {
#if defined(__AVX512F__)
    // the same reduction and polynomial, with the AVX-512 rounding and scaling instructions: vscalefps
    // multiplies by 2^n without the integer shift and add (nor the clamp above, which they needed), 13
    // operations instead of 18; the softmax is 13% of the forward
    const __m512 xc = _mm512_max_ps(_mm512_set1_ps(-87.0f), (__m512)x);  // NaN stays NaN (the 2nd operand)
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __mmask16 keep = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ);  // -inf: 0
    return (vf)_mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n));
#else
    const vf lo = vset(-87.0f), hi = vset(88.0f);
    vf xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    const vf magic = vset(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    vf n = (xc * vset(1.44269504088896341f) + magic) - magic;
    vf r = xc - n * vset(0.693359375f);
    r = r - n * vset(-2.12194440e-4f);
    vf p = vset(1.0f / 720);
    p = p * r + vset(1.0f / 120);
    p = p * r + vset(1.0f / 24);
    p = p * r + vset(1.0f / 6);
    p = p * r + vset(0.5f);
    p = p * r + vset(1.0f);
    p = p * r + vset(1.0f);
    vi e = __builtin_convertvector(n, vi) << 23;
    vf y = (vf)((vi)p + e);
    return x < lo ? vset(0.0f) : y;
#endif
}

// C[i][0:NR] (+)= sum_p A(i, p) * B[p][0:NR] for i < R, A(i, p) = A[i * ars + p * acs]; E is float,
// or uint32_t for bf16 pairs (then p counts pairs and each term is a pair product, see madd).
template <class E, int R>
static void kernel_rows(long K, const E *A, long ars, long acs, const E *B, long ldb, float *C, long ldc,
                        bool accumulate) {
    // R x 2 accumulators held in registers (the loops over i are unrolled, so the array is scalarised)
    vf acc[R][2];
#pragma GCC unroll 16
    for (int i = 0; i < R; i++) acc[i][0] = vf{}, acc[i][1] = vf{};
    for (long p = 0; p < K; p++) {
        const auto b0 = vload(B), b1 = vload(B + VW);
        const E *ap = A + p * acs;
#pragma GCC unroll 16
        for (int i = 0; i < R; i++) {
            const auto a = vbcast(ap[i * ars]);
            acc[i][0] = madd(acc[i][0], a, b0), acc[i][1] = madd(acc[i][1], a, b1);
        }
        B += ldb;
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; i++) {
        float *c = C + i * ldc;
        if (accumulate) {
            vst(c, vld(c) + acc[i][0]);
            vst(c + VW, vld(c + VW) + acc[i][1]);
        } else {
            vst(c, acc[i][0]);
            vst(c + VW, acc[i][1]);
        }
    }
}

// kernel_rows for mr = 1 .. MR rows: a tail of fewer rows (a single global token's row, say) costs
// only its own rows. Each row's sums are the same operations in the same order at any R.
template <class E, int R = MR>
static void kernel(long K, const E *A, long ars, long acs, const E *B, long ldb, float *C, long ldc, int mr,
                   bool accumulate) {
    if constexpr (R > 1)
        if (mr < R) return kernel<E, R - 1>(K, A, ars, acs, B, ldb, C, ldc, mr, accumulate);
    kernel_rows<E, R>(K, A, ars, acs, B, ldb, C, ldc, accumulate);
}

// C (m x n, n a multiple of NR) (+)= A (m x K) B (K x n). Row tile i0 uses only the K range
// [klo(i0), khi(i0)) (the band), given by the caller.
template <class E, class Range>
static void gemm(long m, long n, const E *A, long ars, long acs, const E *B, long ldb, float *C, long ldc,
                 bool accumulate, Range range) {
    for (long n0 = 0; n0 < n; n0 += NR)
        for (long i0 = 0; i0 < m; i0 += MR) {
            long klo, khi;
            range(i0, klo, khi);
            int mr = (int)(m - i0 < MR ? m - i0 : MR);
            if (khi <= klo) {
                if (!accumulate)
                    for (int i = 0; i < mr; i++) memset(C + (i0 + i) * ldc + n0, 0, NR * sizeof(float));
                continue;
            }
            kernel(khi - klo, A + i0 * ars + klo * acs, ars, acs, B + klo * ldb + n0, ldb, C + i0 * ldc + n0, ldc, mr,
                   accumulate);
        }
}

static inline long round_up(long x, long m) { return (x + m - 1) / m * m; }
static inline long lmin(long a, long b) { return a < b ? a : b; }
static inline long lmax(long a, long b) { return a > b ? a : b; }
