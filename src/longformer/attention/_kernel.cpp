// Fused Longformer band attention for the CPU: parts 1 (the sliding window) and 2 (every row
// attends the global keys) of blocked.py, forward and backward, in one pass over query blocks.
//
// Plain C++ with no torch headers: it compiles in about a second with g++ -O3 -march=native
// -fopenmp and is loaded with ctypes (see _native.py). q, k, v, dout and out arrive as raw pointers
// to contiguous (B, H, T, D) arrays of fp32, bf16 or fp16 (Problem::dtype): they are widened to fp32
// while being packed, so low-precision inputs cost no separate conversion pass. Everything else
// (log-sum-exp, delta, the gradients) is fp32.
//
// bf16 forward with bf16 dot products: where the CPU has AVX512-BF16, the four products of the
// forward take bf16 operands in pairs (vdpbf16ps: two bf16 products summed into each fp32 lane, at
// twice the FMA rate), with fp32 accumulation and an fp32 softmax; probabilities are rounded to bf16
// for the P V product. Elsewhere the same code runs with the pair product emulated by two FMAs
// (exact, the same operation order), which is how the tests check it on any machine.
//
// A head with dilation r is r independent undilated sequences (rows m, m + r, m + 2r, ...): the
// kernel walks them with a row stride of r * D, so dilation costs no copy. Each sequence is cut
// into blocks of c query rows. Block n of a sequence needs the keys [n*c - left, n*c - left + L)
// with L = c + left + right; its scores are kept TRANSPOSED, St (L x c): row l = key, column a =
// query, so that the softmax over keys runs down columns, vectorised across c queries. Key l is in
// the band of query a iff 0 <= l - a <= left + right. Tiles of St that lie wholly outside the band
// are never computed.
//
// Every product is one register-blocked micro-kernel, C (MR x NR) += A (MR x K) * B (K x NR), with
// A read at any (row, column) strides (broadcast) and B read as rows of NR contiguous floats.
// Work items are (sequence, range of blocks); when there are fewer sequences than threads a
// sequence is cut into several ranges, whose key-gradient edges are merged under a lock.
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

namespace {

// Per-thread scratch memory, reused across calls (OpenMP keeps its threads): fresh buffers of a few
// MB would come from mmap and be faulted in page by page on every call.
struct Scratch {
    std::vector<float> f[20];
    std::vector<uint32_t> w[8];  // bf16 pairs
    std::vector<uint8_t> u[2];
    std::vector<long> l;
};
thread_local Scratch scratch;

template <class E>
E *grow(std::vector<E> &v, long n, bool zero) {
    if ((long)v.size() < n) v.resize(n);
    if (zero) memset(v.data(), 0, n * sizeof(E));
    return v.data();
}
float *fbuf(int i, long n, bool zero) { return grow(scratch.f[i], n, zero); }
uint32_t *wbuf(int i, long n, bool zero) { return grow(scratch.w[i], n, zero); }

// Element strides of a (B, H, T, D) array along B, H and T; along D it is 1. The layers pass q, k, v as
// the projections make them, (B, T, H, D) memory, and take the output in that layout: no copies.
struct Strides {
    long b, h, t;
    long at(long bi, long hi, long ti) const { return bi * b + hi * h + ti * t; }
};

struct Problem {
    long B, H, T, D, Dp, window, causal, block, Gmax;
    Strides sq, sk, sv, so, sdo, sdq, sdk, sdv;  // of q, k, v, out, dout, dq, dk, dv
    int dtype;   // of q, k, v, dout and out (Dtype)
    bool dot16;  // forward with bf16 pair products (dtype is BF16)
    const long *dil;
    const uint8_t *band_ok;    // (B, T) keys the window may use (valid, not global), or null
    const uint8_t *key_valid;  // (B, T) or null: validity of global keys
    const uint8_t *row_global; // (B, T) or null: global query rows (backward: their gradient is part 3's)
    const int64_t *gpos;       // (B, Gmax) global positions, ascending; gcount[b] of them used
    const int64_t *gcount;
    float scale;
    uint32_t drop_thr, seed;  // keep a probability iff its hash >= drop_thr (0: no dropout)
    float keep_scale;         // 1 / (1 - drop_thr / 2^32)

    uint32_t row_hash(long b, long h, long i) const {
        uint32_t head = fmix32(seed ^ (uint32_t)((b * H + h) * 0x9E3779B1u));
        return fmix32(head ^ ((uint32_t)i * 0x85EBCA77u));
    }
    // keep_scale where kept, 0 where dropped, for VW (query, key) pairs: row hashes rh, key positions j
    vf keep(vu rh, vu j) const {
        vu e = fmix32<vu>(rh + j * 0xC2B2AE3Du);
        vi kept = (vi)(e >= (vu){} + drop_thr);
        return (vf)((vi)vset(keep_scale) & kept);
    }
    // ... for VW queries and one key position j
    vf keep(vu rh, long j) const { return keep(rh, vsetu((uint32_t)j)); }
};

struct Seq {  // one undilated sequence: rows m, m + r, ... of head h of batch element b
    long b, h, m, r, Tr;
};

struct Geometry {  // of the blocks of one sequence
    long left, right, span, c, Lp, nb;
    Geometry(const Problem &P, long Tr) {
        left = lmin(P.window, Tr - 1);
        right = P.causal ? 0 : left;
        span = left + right;
        c = lmin(P.block, round_up(Tr, NR));
        Lp = round_up(c + span, MR);
        nb = (Tr + c - 1) / c;
    }
};

struct Item {
    long seq, blk0, blk1;
    bool shared;  // the sequence is split: its key-gradient rows overlap another item's
};

// Sequences and work items: every sequence, cut into ranges when there are fewer of them than
// 2 * threads so that every thread has work.
void plan(const Problem &P, int threads, std::vector<Seq> &seqs, std::vector<Item> &items) {
    for (long b = 0; b < P.B; b++)
        for (long h = 0; h < P.H; h++) {
            long r = lmin(P.dil[h], P.T);
            for (long m = 0; m < r; m++) seqs.push_back({b, h, m, r, (P.T - m + r - 1) / r});
        }
    long want = 2L * threads;
    for (long s = 0; s < (long)seqs.size(); s++) {
        Geometry g(P, seqs[s].Tr);
        long parts = seqs.size() >= (size_t)want ? 1 : lmin(g.nb, (want + (long)seqs.size() - 1) / (long)seqs.size());
        for (long i = 0; i < parts; i++) items.push_back({s, g.nb * i / parts, g.nb * (i + 1) / parts, parts > 1});
    }
}

inline long row_off(const Strides &x, const Seq &s, long slot) { return x.at(s.b, s.h, s.m + slot * s.r); }
inline long head_off(const Strides &x, const Seq &s, long pos) { return x.at(s.b, s.h, pos); }

// Per-item buffers and the packed keys/values of the item's key range (zero outside the sequence).
// fp32 (Kp, Vp, Kg, Vg: rows of Dp floats), or with P.dot16 bf16 pairs: keys as rows of Dp / 2 pairs
// along d (Kb, Kgb), values as rows of Dp pairs along the key index (V2, Vg2: row p holds keys 2p and
// 2p + 1), the layouts the pair micro-kernel reads as A and B.
struct Work {
    const Problem &P;
    const Seq &s;
    Geometry g;
    long first;  // slot of packed row 0
    long rows;   // packed rows (even)
    long G, Gp;
    float *Kp = nullptr, *Vp = nullptr, *Kg = nullptr, *Vg = nullptr;
    uint32_t *Kb = nullptr, *V2 = nullptr, *Kgb = nullptr, *Vg2 = nullptr;
    uint8_t *kok, *gok;  // may the band use packed row i; is global key i valid
    long *gpos;          // positions of the global keys

    Work(const Problem &P, const Seq &s, const Item &it, const void *k, const void *v)
        : P(P), s(s), g(P, s.Tr) {
        first = it.blk0 * g.c - g.left;
        rows = (it.blk1 - it.blk0 - 1) * g.c + g.Lp;
        scratch.u[0].assign(rows, 0);
        kok = scratch.u[0].data();
        G = P.gcount ? P.gcount[s.b] : 0;
        Gp = round_up(G, MR);
        scratch.u[1].assign(Gp + 1, 0);
        gok = scratch.u[1].data();
        scratch.l.assign(Gp + 1, 0);
        gpos = scratch.l.data();
        for (long i = 0; i < rows; i++) {
            long j = first + i;
            if (j >= 0 && j < s.Tr) kok[i] = P.band_ok ? P.band_ok[s.b * P.T + s.m + j * s.r] : 1;
        }
        for (long i = 0; i < G; i++) {
            gpos[i] = P.gpos[s.b * P.Gmax + i];
            gok[i] = P.key_valid ? P.key_valid[s.b * P.T + gpos[i]] : 1;
        }
        if (P.dot16)
            pack_pairs(k, v);
        else
            pack_fp32(k, v);
    }

    void pack_fp32(const void *k, const void *v) {
        const long Dp = P.Dp, D = P.D;
        Kp = fbuf(0, rows * Dp, true);
        Vp = fbuf(1, rows * Dp, true);
        for (long i = 0; i < rows; i++) {
            long j = first + i;
            if (j < 0 || j >= s.Tr) continue;
            load_row(P.dtype, k, row_off(P.sk, s, j), &Kp[i * Dp], D, 1.0f);
            load_row(P.dtype, v, row_off(P.sv, s, j), &Vp[i * Dp], D, 1.0f);
        }
        Kg = fbuf(2, Gp * Dp, true);
        Vg = fbuf(3, Gp * Dp, true);
        for (long i = 0; i < G; i++) {
            load_row(P.dtype, k, head_off(P.sk, s, gpos[i]), &Kg[i * Dp], D, 1.0f);
            load_row(P.dtype, v, head_off(P.sv, s, gpos[i]), &Vg[i * Dp], D, 1.0f);
        }
    }

    // bf16 inputs, copied bit for bit into the pair layouts
    void pack_pairs(const void *k, const void *v) {
        const long Dp = P.Dp, D = P.D;
        const uint16_t *k16 = (const uint16_t *)k, *v16 = (const uint16_t *)v;
        Kb = wbuf(0, rows * Dp / 2, true);
        V2 = wbuf(1, rows / 2 * Dp, true);
        uint16_t *kb = (uint16_t *)Kb, *v2 = (uint16_t *)V2;
        for (long i = 0; i < rows; i++) {
            long j = first + i;
            if (j < 0 || j >= s.Tr) continue;
            const long ok = row_off(P.sk, s, j), ov = row_off(P.sv, s, j);
            memcpy(&kb[i * Dp], &k16[ok], D * sizeof(uint16_t));
            for (long d = 0; d < D; d++) v2[((i / 2) * Dp + d) * 2 + (i & 1)] = v16[ov + d];
        }
        Kgb = wbuf(2, Gp * Dp / 2, true);
        Vg2 = wbuf(3, Gp / 2 * Dp, true);
        uint16_t *kg = (uint16_t *)Kgb, *vg = (uint16_t *)Vg2;
        for (long i = 0; i < G; i++) {
            const long ok = head_off(P.sk, s, gpos[i]), ov = head_off(P.sv, s, gpos[i]);
            memcpy(&kg[i * Dp], &k16[ok], D * sizeof(uint16_t));
            for (long d = 0; d < D; d++) vg[((i / 2) * Dp + d) * 2 + (i & 1)] = v16[ov + d];
        }
    }

    // Rows [l0, l1) of St holding every band entry of the columns a0 .. a0 + VW - 1, widened by MR - 1
    // on both sides: the products that read these columns work in query tiles of MR (starting up to
    // MR - 1 before a column) or key tiles of MR, and never read a row outside this range, so rows
    // beyond it need no softmax.
    void reach(long a0, long &l0, long &l1) const {
        l0 = lmax(0, a0 - (MR - 1));
        l1 = lmin(g.Lp, a0 + VW + MR + g.span);
    }

    // dropout row hashes of VW queries of the block from column a0
    void row_hashes_into(long i0, long a0, uint32_t *rh) const {
        for (long a = 0; a < VW; a++) rh[a] = P.row_hash(s.b, s.h, s.m + (i0 + a0 + a) * s.r);
    }
    long key_pos(long i0, long l) const { return s.m + (i0 - g.left + l) * s.r; }  // of window row l

    // The (Dp x c) transpose t of the (c x Dp) rows n, in 4 x 4 tiles of SSE registers (c and Dp are
    // multiples of NR). Scattering elements one by one (each to another cache line) took 13% of the
    // forward on an AVX-512 CPU, and gathering columns 6%.
    void transpose_rows(const float *n, float *t) const {
        const long c = g.c, Dp = P.Dp;
        for (long a0 = 0; a0 < c; a0 += 4)
            for (long d0 = 0; d0 < Dp; d0 += 4) {
                const float *src = n + a0 * Dp + d0;
                __m128 r0 = _mm_loadu_ps(src), r1 = _mm_loadu_ps(src + Dp), r2 = _mm_loadu_ps(src + 2 * Dp),
                       r3 = _mm_loadu_ps(src + 3 * Dp);
                _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
                float *dst = t + d0 * c + a0;
                _mm_storeu_ps(dst, r0), _mm_storeu_ps(dst + c, r1), _mm_storeu_ps(dst + 2 * c, r2),
                    _mm_storeu_ps(dst + 3 * c, r3);
            }
    }

    // (Dp x c) transpose t of the block's rows of x (scaled), and their (c x Dp) copy n (scratch if null);
    // rows past the sequence and columns past D are zero.
    void pack_rows(const void *x, const Strides &xs, long i0, float scale, float *t, float *n) const {
        const long Dp = P.Dp;
        if (!n) n = fbuf(19, g.c * Dp, false);
        memset(n, 0, g.c * Dp * sizeof(float));
        for (long a = 0; a < g.c && i0 + a < s.Tr; a++) load_row(P.dtype, x, row_off(xs, s, i0 + a), &n[a * Dp], P.D, scale);
        transpose_rows(n, t);
    }

    // pack_rows for dO (unscaled), plus delta = rowsum(dO * O) of each row, written to delta_out (B, H, T)
    // and kept in Dl (c). Global rows take their gradient from part 3 (done in torch with delta_out):
    // here their dO and delta are zero.
    void pack_dout(const void *dout, const void *out, long i0, float *t, float *n, float *Dl, float *delta_out) const {
        const long D = P.D, Dp = P.Dp;
        float *o = fbuf(19, D, false);
        memset(n, 0, g.c * Dp * sizeof(float));
        for (long a = 0; a < g.c; a++) {
            Dl[a] = 0.0f;
            if (i0 + a >= s.Tr) continue;
            const long pos = s.m + (i0 + a) * s.r;
            float *src = &n[a * Dp];
            load_row(P.dtype, dout, row_off(P.sdo, s, i0 + a), src, D, 1.0f);
            load_row(P.dtype, out, row_off(P.so, s, i0 + a), o, D, 1.0f);
            float dl = 0.0f;
            for (long d = 0; d < D; d++) dl += src[d] * o[d];
            delta_out[(s.b * P.H + s.h) * P.T + pos] = dl;
            if (P.row_global && P.row_global[s.b * P.T + pos]) {
                memset(src, 0, D * sizeof(float));
                continue;
            }
            Dl[a] = dl;
        }
        transpose_rows(n, t);
    }

    // (Dp / 2 x c) pairs along d of the block's rows of the bf16 array x (unscaled), the B operand of
    // the scores with pair products
    void pack_rows_pairs(const void *x, long i0, uint32_t *t) const {
        const long c = g.c, Dp = P.Dp, D = P.D;
        const uint16_t *x16 = (const uint16_t *)x;
        uint16_t *t16 = (uint16_t *)t;
        memset(t, 0, Dp / 2 * c * sizeof(uint32_t));
        for (long a = 0; a < c && i0 + a < s.Tr; a++) {
            const long o = row_off(P.sq, s, i0 + a);
            for (long d = 0; d < D; d++) t16[((d / 2) * c + a) * 2 + (d & 1)] = x16[o + d];
        }
    }

    // Out (Lp x c) = W Bt for the Lp window rows W (K wide) and Bt (K x c), on the tiles that touch the
    // band only: tiles wholly outside it are left unset (callers mask or zero them).
    template <class E>
    void band_product(const E *W, const E *Bt, long K, float *out) const {
        const long c = g.c;
        for (long a0 = 0; a0 < c; a0 += NR)
            for (long l0 = 0; l0 < g.Lp; l0 += MR) {
                if (l0 + MR - 1 < a0 || l0 > a0 + NR - 1 + g.span) continue;
                kernel(K, W + l0 * K, K, 1, Bt + a0, c, out + l0 * c + a0, c, MR, false);
            }
    }

    // St (Lp x c) and Sg (Gp x c): masked scores of block blk (packed window at row w0), from the
    // scaled fp32 Qt, or with P.dot16 from the unscaled pairs Q2 (the softmax applies the scale).
    void scores(const float *Qt, const uint32_t *Q2, long w0, long i0, float *St, float *Sg) const {
        const long c = g.c, Lp = g.Lp, span = g.span, Dp = P.Dp;
        if (P.dot16)
            band_product(&Kb[w0 * Dp / 2], Q2, Dp / 2, St);
        else
            band_product(&Kp[w0 * Dp], Qt, Dp, St);
        for (long l = 0; l < Lp; l++) {
            float *srow = St + l * c;
            if (!kok[w0 + l]) {
                for (long a = 0; a < c; a++) srow[a] = NEG_INF;
                continue;
            }
            long lo = lmax(0, l - span), hi = lmin(c - 1, l);
            for (long a = 0; a < lo; a++) srow[a] = NEG_INF;
            for (long a = hi + 1; a < c; a++) srow[a] = NEG_INF;
        }
        if (!G) return;
        auto all_k = [&](long, long &lo, long &hi) { lo = 0, hi = P.dot16 ? Dp / 2 : Dp; };
        if (P.dot16)
            gemm(G, c, Kgb, Dp / 2, 1, Q2, c, Sg, c, false, all_k);  // rows G .. Gp - 1: -inf below
        else
            gemm(G, c, Kg, Dp, 1, Qt, c, Sg, c, false, all_k);
        for (long i = 0; i < Gp; i++) {
            float *srow = Sg + i * c;
            if (i >= G || !gok[i]) {
                for (long a = 0; a < c; a++) srow[a] = NEG_INF;
            } else if (P.causal) {  // query at position m + (i0 + a) r sees the global key iff it is not earlier
                for (long a = 0; a < c; a++)
                    if (s.m + (i0 + a) * s.r < gpos[i]) srow[a] = NEG_INF;
            }
        }
    }

    // Forward softmax of block i0 down the columns of St and Sg, VW queries at a time over the rows the
    // band can reach: probabilities (dropped out if asked) in place, per-query max (of the scores
    // times sc) and sum of the undropped probabilities.
    void softmax(long i0, float sc, float *St, float *Sg, float *mx, float *sm) const {
        if (sc == 1.0f)  // fp32 products had the scale in the queries: no multiply per score
            softmax_<false>(i0, sc, St, Sg, mx, sm);
        else
            softmax_<true>(i0, sc, St, Sg, mx, sm);
    }
    template <bool Scaled>
    void softmax_(long i0, float sc, float *St, float *Sg, float *mx, float *sm) const {
        const long c = g.c;
        const vf scv = vset(sc);
        auto ld = [&](const float *p) { return Scaled ? vld(p) * scv : vld(p); };
        uint32_t rh[VW];
        for (long a0 = 0; a0 < c; a0 += VW) {
            long l0, l1;
            reach(a0, l0, l1);
            vf m = vset(NEG_INF);
            for (long l = l0; l < l1; l++) m = vmax(m, ld(&St[l * c + a0]));
            for (long i = 0; i < G; i++) m = vmax(m, ld(&Sg[i * c + a0]));
            const vf base = m == vset(NEG_INF) ? vset(0.0f) : m;  // empty column: every p = 0
            vf sum = {};
            for (long l = l0; l < l1; l++) {
                vf p = vexp(ld(&St[l * c + a0]) - base);
                vst(&St[l * c + a0], p);
                sum += p;
            }
            for (long i = 0; i < G; i++) {
                vf p = vexp(ld(&Sg[i * c + a0]) - base);
                vst(&Sg[i * c + a0], p);
                sum += p;
            }
            vst(&mx[a0], m);
            vst(&sm[a0], sum);
            if (P.drop_thr) {  // the sum above is of the undropped probabilities: the softmax's
                row_hashes_into(i0, a0, rh);
                const vu r = vldu(rh);
                for (long l = l0; l < l1; l++) vst(&St[l * c + a0], vld(&St[l * c + a0]) * P.keep(r, key_pos(i0, l)));
                for (long i = 0; i < G; i++) vst(&Sg[i * c + a0], vld(&Sg[i * c + a0]) * P.keep(r, gpos[i]));
            }
        }
    }

    // P2 ((Lp / 2) x c pairs along the key index) = St rounded to bf16, over the rows each column group
    // reached (0 beyond them): the A operand of P V with pair products. Pg2 likewise from Sg.
    void probabilities_to_pairs(const float *St, const float *Sg, uint32_t *P2, uint32_t *Pg2) const {
        const long c = g.c;
        for (long a0 = 0; a0 < c; a0 += VW) {
            long l0, l1;
            reach(a0, l0, l1);
            for (long l = l0 & ~1L; l < l1; l += 2) {
                const vu lo = l >= l0 ? vbf16_bits(vld(&St[l * c + a0])) : vu{};
                const vu hi = l + 1 < l1 ? vbf16_bits(vld(&St[(l + 1) * c + a0])) : vu{};
                vst((float *)&P2[(l / 2) * c + a0], (vf)(lo | (hi << 16)));
            }
            for (long i = 0; i < Gp; i += 2) {  // rows from G on hold -inf scores, not probabilities
                const vu lo = i < G ? vbf16_bits(vld(&Sg[i * c + a0])) : vu{};
                const vu hi = i + 1 < G ? vbf16_bits(vld(&Sg[(i + 1) * c + a0])) : vu{};
                vst((float *)&Pg2[(i / 2) * c + a0], (vf)(lo | (hi << 16)));
            }
        }
    }
};

static inline float hsum(vf x) {
    float t = 0.0f;
    for (int i = 0; i < VW; i++) t += x[i];
    return t;
}

// Part 3 of the forward (the global rows' full attention), fused into the band pass: while a block's
// keys are in cache, the global rows of the head attend them. Block n of a sequence owns its slots
// n*c .. n*c + c - 1 as keys here, so every key of the head is seen exactly once across the items of
// its sequences. Per global row a running softmax, in part: the max score m (Gs), the sum l of
// exp(s - m) (Gs; before dropout) and o = P V (Gs x Dp; dropped out if asked); lf_band_forward merges
// the parts of a head's items. The scores are fp32 products (bf16 inputs widened), as
// lf_global_rows_backward recomputes them. Reading K and V again for these rows (torch's flash op, at
// G = 1) cost 3% of the forward.
struct GlobalPart {
    const Work &w;
    const Problem &P;
    const long G, c;
    float *m, *l, *o;
    float *Qg, *Kt, *S;            // scaled global queries (G x Dp), block keys transposed (Dp x c), scores (G x c)
    float *Kc = nullptr, *Vc = nullptr;  // bf16 pair products: the block's keys and values widened to fp32
    uint32_t *rh;                  // dropout row hashes of the global rows
    int32_t *kok;                  // per key of the block: may the global rows attend it (lanes)

    GlobalPart(const Work &w, const void *q, float *part, long Gs)
        : w(w), P(w.P), G(w.G), c(w.g.c), m(part), l(part + Gs), o(part + 2 * Gs) {
        const long Dp = P.Dp;
        Qg = fbuf(10, G * Dp, true);
        Kt = fbuf(11, Dp * c, false);
        S = fbuf(12, G * c + MR, false);
        rh = wbuf(7, G, true);
        kok = (int32_t *)fbuf(15, c, false);
        for (long g = 0; g < G; g++) {
            m[g] = NEG_INF, l[g] = 0.0f;
            load_row(P.dtype, q, P.sq.at(w.s.b, w.s.h, w.gpos[g]), &Qg[g * Dp], P.D, P.scale);
            if (P.drop_thr) rh[g] = P.row_hash(w.s.b, w.s.h, w.gpos[g]);
        }
        memset(o, 0, G * Dp * sizeof(float));
        if (P.dot16) Kc = fbuf(13, c * Dp, false), Vc = fbuf(14, c * Dp, false);
    }

    // the keys of block i0 (packed window from row w0)
    void block(long i0, long w0, const void *k, const void *v) {
        const Seq &s = w.s;
        const long Dp = P.Dp, nk = lmin(c, s.Tr - i0);
        const float *Kr, *Vr;  // the block's c key and value rows, zero past the sequence
        if (P.dot16) {         // the packed keys are bf16 pairs: widen the block's own rows
            memset(Kc, 0, c * Dp * sizeof(float));
            memset(Vc, 0, c * Dp * sizeof(float));
            for (long t = 0; t < nk; t++) {
                load_row(P.dtype, k, row_off(P.sk, s, i0 + t), &Kc[t * Dp], P.D, 1.0f);
                load_row(P.dtype, v, row_off(P.sv, s, i0 + t), &Vc[t * Dp], P.D, 1.0f);
            }
            Kr = Kc, Vr = Vc;
        } else {
            Kr = &w.Kp[(w0 + w.g.left) * Dp], Vr = &w.Vp[(w0 + w.g.left) * Dp];
        }
        w.transpose_rows(Kr, Kt);
        gemm(G, c, Qg, Dp, 1, Kt, c, S, c, false, [&](long, long &lo, long &hi) { lo = 0, hi = Dp; });
        // the block's keys that exist and are valid, as lanes of all ones or zero
        for (long t = 0; t < c; t++)
            kok[t] = t < nk && (!P.key_valid || P.key_valid[s.b * P.T + s.m + (i0 + t) * s.r]) ? -1 : 0;
        vu lane;
        for (int i = 0; i < VW; i++) lane[i] = (uint32_t)i;
        const vf ninf = vset(NEG_INF);
        for (long g = 0; g < G; g++) {
            float *sr = &S[g * c];
            // causal: keys t < last only (not after the global row)
            long last = c;
            if (P.causal) last = w.gpos[g] < s.m ? 0 : lmax(0, lmin(c, (w.gpos[g] - s.m) / s.r - i0 + 1));
            vf mx = ninf;
            for (long t = 0; t < c; t += VW) {
                vi allowed;
                memcpy(&allowed, &kok[t], sizeof allowed);
                allowed &= (vi)((vi)(lane + (uint32_t)t) < (vi)vsetu((uint32_t)last));
                const vf sv = (vf)(((vi)vld(&sr[t]) & allowed) | ((vi)ninf & ~allowed));
                vst(&sr[t], sv);
                mx = vmax(mx, sv);
            }
            float bm = NEG_INF;
            for (int i = 0; i < VW; i++) bm = mx[i] > bm ? mx[i] : bm;
            if (bm == NEG_INF) {  // nothing to attend in this block
                memset(sr, 0, c * sizeof(float));
                continue;
            }
            if (bm > m[g]) {  // a new maximum: rescale what the row has so far
                const float f = m[g] == NEG_INF ? 0.0f : expf(m[g] - bm);
                l[g] *= f;
                for (long d = 0; d < Dp; d++) o[g * Dp + d] *= f;
                m[g] = bm;
            }
            const vf base = vset(m[g]);
            vf sum = {};
            for (long t = 0; t < c; t += VW) {
                vf p = vexp(vld(&sr[t]) - base);
                sum += p;
                if (P.drop_thr) p = p * P.keep(vsetu(rh[g]), vsetu((uint32_t)(s.m + (i0 + t) * s.r)) + lane * (uint32_t)s.r);
                vst(&sr[t], p);
            }
            l[g] += hsum(sum);
        }
        gemm(G, Dp, S, c, 1, Vr, Dp, o, Dp, true, [&](long, long &lo, long &hi) { lo = 0, hi = nk; });
    }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// forward

// keys per chunk of the P V product (see forward_item)
#ifndef PV_KC
#define PV_KC 64
#endif

// part (null without global tokens): this item's part 3 partials (see GlobalPart), Gs rows
static void forward_item(const Problem &P, const Seq &s, const Item &it, const void *q, const void *k,
                         const void *v, void *out, float *lse, float *part, long Gs) {
    Work w(P, s, it, k, v);
    std::optional<GlobalPart> glob;
    if (part && w.G) glob.emplace(w, q, part, Gs);
    const long c = w.g.c, Lp = w.g.Lp, span = w.g.span, Dp = P.Dp, G = w.G, Gp = w.Gp;
    float *St = fbuf(5, Lp * c + MR, false), *Sg = fbuf(6, Gp * c + MR, false), *O = fbuf(7, c * Dp, false),
          *mx = fbuf(8, c, false), *sm = fbuf(9, c, false);
    // fp32: the scaled transposed queries; pair products: the queries, probabilities as pairs
    float *Qt = P.dot16 ? nullptr : fbuf(4, Dp * c, false);
    uint32_t *Q2 = P.dot16 ? wbuf(4, Dp / 2 * c, false) : nullptr;
    uint32_t *P2 = P.dot16 ? wbuf(5, Lp / 2 * c + MR, false) : nullptr;
    uint32_t *Pg2 = P.dot16 ? wbuf(6, Gp / 2 * c + MR, false) : nullptr;
    for (long blk = it.blk0; blk < it.blk1; blk++) {
        const long i0 = blk * c, w0 = (blk - it.blk0) * c;
        if (P.dot16)
            w.pack_rows_pairs(q, i0, Q2);
        else
            w.pack_rows(q, P.sq, i0, P.scale, Qt, nullptr);
        if (glob) glob->block(i0, w0, k, v);
        w.scores(Qt, Q2, w0, i0, St, Sg);
        w.softmax(i0, P.dot16 ? P.scale : 1.0f, St, Sg, mx, sm);
        // O = P V over the band rows of each query tile, plus the global keys, in chunks of PV_KC keys: a
        // chunk of P and of V (PV_KC x c and PV_KC x Dp floats) stays in L1 while every query tile reads it,
        // where one pass per tile over all its 2w keys streamed both from L2
        if (P.dot16) w.probabilities_to_pairs(St, Sg, P2, Pg2);
        memset(O, 0, c * Dp * sizeof(float));
        for (long k0 = 0; k0 < Lp; k0 += PV_KC) {
            const long k1 = k0 + PV_KC;
            if (P.dot16)  // in pairs of keys; a0 is even (a multiple of MR), and so are k0 and k1
                gemm(c, Dp, P2, 1, c, &w.V2[w0 / 2 * Dp], Dp, O, Dp, true, [&](long a0, long &lo, long &hi) {
                         lo = lmax(a0, k0) / 2, hi = (lmin(lmin(Lp, a0 + MR + span), k1) + 1) / 2;
                     });
            else
                gemm(c, Dp, St, 1, c, &w.Vp[w0 * Dp], Dp, O, Dp, true, [&](long a0, long &lo, long &hi) {
                    lo = lmax(a0, k0), hi = lmin(lmin(Lp, a0 + MR + span), k1);
                });
        }
        if (G) {
            if (P.dot16)
                gemm(c, Dp, Pg2, 1, c, w.Vg2, Dp, O, Dp, true, [&](long, long &lo, long &hi) { lo = 0, hi = (G + 1) / 2; });
            else
                gemm(c, Dp, Sg, 1, c, w.Vg, Dp, O, Dp, true, [&](long, long &lo, long &hi) { lo = 0, hi = G; });
        }
        for (long a = 0; a < c && i0 + a < s.Tr; a++) {
            const float inv = sm[a] > 0 ? 1.0f / sm[a] : 0.0f;
            store_row(P.dtype, out, row_off(P.so, s, i0 + a), &O[a * Dp], P.D, inv);
            lse[(s.b * P.H + s.h) * P.T + s.m + (i0 + a) * s.r] = sm[a] > 0 ? mx[a] + logf(sm[a]) : NEG_INF;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// backward

static void backward_item(const Problem &P, const Seq &s, const Item &it, const void *q, const void *k,
                          const void *v, const void *dout, const void *out, const float *lse, float *delta, float *dq,
                          float *dk, float *dv) {
    Work w(P, s, it, k, v);
    const long c = w.g.c, Lp = w.g.Lp, span = w.g.span, Dp = P.Dp, G = w.G, Gp = w.Gp;
    float *Qt = fbuf(4, Dp * c, false), *Qb = fbuf(10, c * Dp, false), *dOt = fbuf(11, Dp * c, false),
          *dOb = fbuf(12, c * Dp, false), *St = fbuf(5, Lp * c + MR, false), *dSt = fbuf(13, Lp * c + MR, false),
          *Sg = fbuf(6, Gp * c + MR, false), *dSg = fbuf(14, Gp * c + MR, false), *dQ = fbuf(7, c * Dp, false),
          *L = fbuf(8, c, false), *Dl = fbuf(9, c, false);
    uint32_t rh[VW] = {};
    float *dKp = fbuf(15, w.rows * Dp, true), *dVp = fbuf(16, w.rows * Dp, true), *dKg = fbuf(17, Gp * Dp, true),
          *dVg = fbuf(18, Gp * Dp, true);
    const long head = (s.b * P.H + s.h) * P.T;
    for (long blk = it.blk0; blk < it.blk1; blk++) {
        const long i0 = blk * c, w0 = (blk - it.blk0) * c;
        w.pack_rows(q, P.sq, i0, P.scale, Qt, Qb);
        w.pack_dout(dout, out, i0, dOt, dOb, Dl, delta);
        for (long a = 0; a < c; a++) {
            L[a] = 0.0f;
            if (i0 + a < s.Tr) {
                const long pos = s.m + (i0 + a) * s.r;
                L[a] = lse[head + pos] == NEG_INF ? 0.0f : lse[head + pos];  // empty row: every p = 0
            }
        }
        w.scores(Qt, nullptr, w0, i0, St, Sg);
        const float *Kw = &w.Kp[w0 * Dp], *Vw = &w.Vp[w0 * Dp];
        // dPt = Vw dO^T on the band tiles; the rest stays unset and is masked by p = 0 below
        w.band_product(Vw, dOt, Dp, dSt);
        if (G) gemm(Gp, c, w.Vg, Dp, 1, dOt, c, dSg, c, false, [&](long, long &lo, long &hi) {
            lo = 0, hi = Dp;
        });
        // P = exp(S - lse), dS = P (dP - delta), zero wherever P is (bitwise, so unset dP never leaks)
        for (long a0 = 0; a0 < c; a0 += VW) {
            const vf lv = vld(&L[a0]), dl = vld(&Dl[a0]);
            long l0, l1;
            w.reach(a0, l0, l1);
            if (P.drop_thr) w.row_hashes_into(i0, a0, rh);
            const vu r = vldu(rh);
            // with dropout (keep factor k): dV takes P k, and dS = P (dP k - delta)
            for (long l = l0; l < l1; l++) {
                vf p = vexp(vld(&St[l * c + a0]) - lv), dp = vld(&dSt[l * c + a0]);
                vi nonzero = p != vset(0.0f);
                if (P.drop_thr) {
                    const vf k = P.keep(r, w.key_pos(i0, l));
                    dp = dp * k;
                    vst(&St[l * c + a0], p * k);
                } else {
                    vst(&St[l * c + a0], p);
                }
                vst(&dSt[l * c + a0], (vf)((vi)(p * (dp - dl)) & nonzero));
            }
            for (long i = 0; i < Gp; i++) {
                vf p = vexp(vld(&Sg[i * c + a0]) - lv), dp = vld(&dSg[i * c + a0]);
                vi nonzero = p != vset(0.0f);
                if (P.drop_thr && i < G) {
                    const vf k = P.keep(r, w.gpos[i]);
                    dp = dp * k;
                    vst(&Sg[i * c + a0], p * k);
                } else {
                    vst(&Sg[i * c + a0], p);
                }
                vst(&dSg[i * c + a0], (vf)((vi)(p * (dp - dl)) & nonzero));
            }
        }
        // key rows: dV += P dO, dK += dS (scale q); query tiles: dQ = dS^T K (scaled at the end)
        auto band_queries = [&](long l0, long &lo, long &hi) { lo = lmax(0, l0 - span), hi = lmin(c, l0 + MR); };
        gemm(Lp, Dp, St, c, 1, dOb, Dp, &dVp[w0 * Dp], Dp, true, band_queries);
        gemm(Lp, Dp, dSt, c, 1, Qb, Dp, &dKp[w0 * Dp], Dp, true, band_queries);
        gemm(c, Dp, dSt, 1, c, Kw, Dp, dQ, Dp, false, [&](long a0, long &lo, long &hi) {
            lo = a0, hi = lmin(Lp, a0 + MR + span);
        });
        if (G) {
            auto all = [&](long, long &lo, long &hi) { lo = 0, hi = c; };
            gemm(Gp, Dp, Sg, c, 1, dOb, Dp, dVg, Dp, true, all);
            gemm(Gp, Dp, dSg, c, 1, Qb, Dp, dKg, Dp, true, all);
            gemm(c, Dp, dSg, 1, c, w.Kg, Dp, dQ, Dp, true, [&](long, long &lo, long &hi) {
                lo = 0, hi = G;
            });
        }
        for (long a = 0; a < c && i0 + a < s.Tr; a++) {
            float *dst = dq + row_off(P.sdq, s, i0 + a);
            for (long d = 0; d < P.D; d++) dst[d] = dQ[a * Dp + d] * P.scale;
        }
    }
    // scatter the key gradients: rows of a split sequence overlap its neighbours', and global keys are
    // shared by every sequence of their head
    auto scatter = [&]() {
        for (long i = 0; i < w.rows; i++) {
            long j = w.first + i;
            // rows the band never uses (padding, global keys) have zero gradient here; skipping them also
            // keeps this unlocked path off the global-key rows that other threads update under the lock
            if (j < 0 || j >= s.Tr || !w.kok[i]) continue;
            float *gk = dk + row_off(P.sdk, s, j), *gv = dv + row_off(P.sdv, s, j);
            for (long d = 0; d < P.D; d++) gk[d] += dKp[i * Dp + d], gv[d] += dVp[i * Dp + d];
        }
    };
    if (it.shared) {
#pragma omp critical(longformer_dk)
        scatter();
    } else {
        scatter();
    }
    if (G) {
#pragma omp critical(longformer_dk)
        for (long i = 0; i < G; i++) {
            float *gk = dk + head_off(P.sdk, s, w.gpos[i]), *gv = dv + head_off(P.sdv, s, w.gpos[i]);
            for (long d = 0; d < P.D; d++) gk[d] += dKg[i * Dp + d], gv[d] += dVg[i * Dp + d];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// part 3 of the backward: the global rows (full attention over every key), per head and range of keys
// (the forward's part 3 is GlobalPart, inside the band pass)

static const long KEY_CHUNK = 512;  // keys per work item of the global rows

// The global rows of head (b, h) against keys [t0, t1): their scaled queries transposed (Dp x Gp, G
// padded to NR), the keys and values as rows of Dp (zero beyond t1), and the scores kept transposed,
// St (keys x Gp), so that a softmax over keys runs along rows of VW global queries.
struct GlobalRows {
    const Problem &P;
    long b, h, t0, n, np, G, Gp, head;
    const int64_t *gpos;
    float *Qt, *St;
    const float *Kc, *Vc;  // rows of Dp floats, kls and vls floats apart
    uint32_t *rh;          // dropout row hashes of the global rows
    int32_t *last_key;     // per global row: the last key position it may see (-1: padding lane)
    long kls, vls;

    GlobalRows(const Problem &P, long b, long h, long t0, long t1, const void *q, const void *k, const void *v)
        : P(P), b(b), h(h), t0(t0), n(t1 - t0), np(round_up(t1 - t0, MR)), G(P.gcount[b]), Gp(round_up(G, NR)),
          head((b * P.H + h) * P.T), gpos(P.gpos + b * P.Gmax) {
        const long Dp = P.Dp, D = P.D;
        Qt = fbuf(0, Dp * Gp, true);
        float *row = fbuf(4, D, false);
        rh = (uint32_t *)fbuf(7, Gp, true);
        last_key = (int32_t *)fbuf(15, Gp, false);
        for (long g = 0; g < Gp; g++) last_key[g] = g >= G ? -1 : P.causal ? (int32_t)gpos[g] : INT32_MAX;
        for (long g = 0; g < G; g++) {
            load_row(P.dtype, q, P.sq.at(b, h, gpos[g]), row, D, P.scale);
            for (long d = 0; d < D; d++) Qt[d * Gp + g] = row[d];
            if (P.drop_thr) rh[g] = P.row_hash(b, h, gpos[g]);
        }
        if (P.dtype == F32 && D == Dp && t0 + np <= P.T) {
            // fp32 rows of Dp floats are read where they are (rows n .. np - 1, of later keys, are masked): at
            // small G this copy would cost as much as the work
            Kc = (const float *)k + P.sk.at(b, h, t0), Vc = (const float *)v + P.sv.at(b, h, t0);
            kls = P.sk.t, vls = P.sv.t;
        } else {
            float *kc = fbuf(8, np * Dp, true), *vc = fbuf(9, np * Dp, true);
            for (long t = 0; t < n; t++) {
                load_row(P.dtype, k, P.sk.at(b, h, t0 + t), &kc[t * Dp], D, 1.0f);
                load_row(P.dtype, v, P.sv.at(b, h, t0 + t), &vc[t * Dp], D, 1.0f);
            }
            Kc = kc, Vc = vc, kls = vls = Dp;
        }
        St = fbuf(10, np * Gp + MR, false);
        gemm(np, Gp, Kc, kls, 1, Qt, Gp, St, Gp, false, [&](long, long &lo, long &hi) { lo = 0, hi = Dp; });
    }

    // lanes g0 .. g0 + VW - 1 that may attend key row t (a valid key, causal order, a real global row)
    vi allowed(long t, long g0) const {
        const long pos = t0 + t;
        if (t >= n || (P.key_valid && !P.key_valid[b * P.T + pos])) return vi{};
        vi last;  // the last key position each lane may see
        memcpy(&last, &last_key[g0], sizeof last);
        return last >= (vi)vsetu((uint32_t)pos);
    }
    // keep factors of the global rows g0 .. g0 + VW - 1 for key row t (dropout)
    vf keep(long t, long g0) const { return P.keep(vldu(&rh[g0]), t0 + t); }
};

// Backward of the global rows of head (b, h) against keys [t0, t1): adds their share of dK and dV to
// those key rows (which no other item touches) and of dQ to the global rows (under a lock).
static void global_rows_backward_item(const Problem &P, long b, long h, long t0, long t1, const void *q,
                                      const void *k, const void *v, const void *dout, const float *lse,
                                      const float *delta, float *dq, float *dk, float *dv) {
    GlobalRows R(P, b, h, t0, t1, q, k, v);
    const long G = R.G, Gp = R.Gp, Dp = P.Dp, D = P.D, n = R.n, np = R.np, head = R.head;
    // the scaled global queries as rows (Gp x Dp), their dO transposed and as rows, lse and delta
    float *Qn = fbuf(1, Gp * Dp, true), *dOt = fbuf(2, Dp * Gp, true), *dOn = fbuf(3, Gp * Dp, true);
    float *row = fbuf(4, D, false), *L = fbuf(5, Gp, true), *Dl = fbuf(6, Gp, true);
    for (long g = 0; g < G; g++) {
        const long pos = R.gpos[g];
        for (long d = 0; d < D; d++) Qn[g * Dp + d] = R.Qt[d * Gp + g];
        load_row(P.dtype, dout, P.sdo.at(b, h, pos), row, D, 1.0f);
        for (long d = 0; d < D; d++) dOt[d * Gp + g] = row[d], dOn[g * Dp + d] = row[d];
        L[g] = lse[head + pos];
        Dl[g] = delta[head + pos];
    }
    float *St = R.St, *dSt = fbuf(11, np * Gp + MR, false);
    gemm(np, Gp, R.Vc, R.vls, 1, dOt, Gp, dSt, Gp, false, [&](long, long &lo, long &hi) { lo = 0, hi = Dp; });
    // P = exp(S - lse) where allowed, dS = P (dP - delta); with dropout (keep factor f): dV takes P f
    // and dS = P (dP f - delta)
    const vf ninf = vset(NEG_INF);
    for (long t = 0; t < np; t++)
        for (long g0 = 0; g0 < Gp; g0 += VW) {
            float *sp = &St[t * Gp + g0], *dsp = &dSt[t * Gp + g0];
            const vf lv = vld(&L[g0]);
            const vi ok = R.allowed(t, g0) & (lv != ninf);  // a global row with no key at all: every p = 0
            const vf p = (vf)((vi)vexp(vld(sp) - (vf)((vi)lv & ok)) & ok);
            vf dp = vld(dsp);
            if (P.drop_thr) {
                const vf f = R.keep(t, g0);
                dp = dp * f;
                vst(sp, p * f);
            } else {
                vst(sp, p);
            }
            vst(dsp, p * (dp - vld(&Dl[g0])));
        }
    // key rows: dV += P dO_g, dK += dS Q_g (scaled); global rows: dQ_g += dS^T K (scaled below)
    float *dVc = fbuf(12, np * Dp, false), *dKc = fbuf(13, np * Dp, false), *dQ = fbuf(14, Gp * Dp, false);
    auto all_g = [&](long, long &lo, long &hi) { lo = 0, hi = G; };
    gemm(np, Dp, St, Gp, 1, dOn, Dp, dVc, Dp, false, all_g);
    gemm(np, Dp, dSt, Gp, 1, Qn, Dp, dKc, Dp, false, all_g);
    gemm(Gp, Dp, dSt, 1, Gp, R.Kc, R.kls, dQ, Dp, false, [&](long, long &lo, long &hi) { lo = 0, hi = n; });
    for (long t = 0; t < n; t++) {
        float *gk = dk + P.sdk.at(b, h, t0 + t), *gv = dv + P.sdv.at(b, h, t0 + t);
        for (long d = 0; d < D; d++) gk[d] += dKc[t * Dp + d], gv[d] += dVc[t * Dp + d];
    }
#pragma omp critical(longformer_dq)
    for (long g = 0; g < G; g++) {
        float *gq = dq + P.sdq.at(b, h, R.gpos[g]);
        for (long d = 0; d < D; d++) gq[d] += dQ[g * Dp + d] * P.scale;
    }
}

// The (b, h, key range) work items of the global rows: every head of every batch element with globals.
static std::vector<long> global_items(const Problem &P, long chunks) {
    std::vector<long> items;  // (b * H + h) * chunks + chunk
    for (long b = 0; b < P.B; b++)
        if (P.gcount[b] > 0)
            for (long i = 0; i < P.H * chunks; i++) items.push_back(b * P.H * chunks + i);
    return items;
}

// ---------------------------------------------------------------------------------------------
// entry points (ctypes)

static Problem make_problem(const int64_t *cfg, const uint8_t *band_ok, const uint8_t *key_valid, const int64_t *gpos,
                            const int64_t *gcount, float scale, const uint8_t *row_global = nullptr) {
    // cfg: B, H, T, D, window, causal, block, Gmax, dropout threshold (0: none), dropout seed, dtype (Dtype),
    // bf16 pair products in the forward (0: never, 1: where the CPU has them, 2: always, emulated where
    // it has not), the (B, H, T) element strides of q, k, v, out, dout, dq, dk, dv (24 values; a tensor
    // a call does not take may have any), then H dilations
    Problem P;
    P.B = cfg[0], P.H = cfg[1], P.T = cfg[2], P.D = cfg[3], P.window = cfg[4], P.causal = cfg[5], P.block = cfg[6];
    P.Gmax = cfg[7];
    P.Dp = round_up(P.D, NR);
    P.drop_thr = (uint32_t)cfg[8], P.seed = (uint32_t)cfg[9];
    P.keep_scale = P.drop_thr ? (float)(1.0 / (1.0 - (double)P.drop_thr / 4294967296.0)) : 1.0f;
    P.dtype = (int)cfg[10];
    P.dot16 = P.dtype == BF16 && (cfg[11] == 2 || (cfg[11] == 1 && BF16_DOT_NATIVE));
    Strides *st[8] = {&P.sq, &P.sk, &P.sv, &P.so, &P.sdo, &P.sdq, &P.sdk, &P.sdv};
    for (int i = 0; i < 8; i++) *st[i] = {cfg[12 + 3 * i], cfg[13 + 3 * i], cfg[14 + 3 * i]};
    P.dil = (const long *)(cfg + 36);
    P.band_ok = band_ok, P.key_valid = key_valid, P.gpos = gpos, P.gcount = gcount, P.scale = scale;
    P.row_global = row_global;
    return P;
}

// Part 3's partials of a forward (GlobalPart, one per work item), merged per head (its items are
// consecutive) by their log-sum-exps into the global rows of out and lse, over what parts 1 and 2
// wrote there.
static void merge_global_parts(const Problem &P, const std::vector<Seq> &seqs, const std::vector<Item> &items,
                               const std::vector<float> &parts, long Gs, void *out, float *lse, int threads) {
    const long n = (long)items.size(), stride = Gs * (P.Dp + 2);
    auto head = [&](long i) { const Seq &s = seqs[items[i].seq]; return s.b * P.H + s.h; };
    std::vector<long> first;
    for (long i = 0; i < n; i++)
        if (i == 0 || head(i) != head(i - 1)) first.push_back(i);
    const long heads = (long)first.size();
    first.push_back(n);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (long r = 0; r < heads; r++) {
        const long i0 = first[r], i1 = first[r + 1], bh = head(i0), b = bh / P.H, G = P.gcount[b], D = P.D;
        std::vector<float> o(D);
        for (long g = 0; g < G; g++) {
            float M = NEG_INF, L = 0.0f;
            for (long i = i0; i < i1; i++) M = fmaxf(M, parts[i * stride + g]);
            std::fill(o.begin(), o.end(), 0.0f);
            if (M != NEG_INF)
                for (long i = i0; i < i1; i++) {
                    const float *part = &parts[i * stride];
                    if (part[g] == NEG_INF) continue;
                    const float f = expf(part[g] - M);
                    L += part[Gs + g] * f;
                    for (long d = 0; d < D; d++) o[d] += part[2 * Gs + g * P.Dp + d] * f;
                }
            const long pos = P.gpos[b * P.Gmax + g];
            store_row(P.dtype, out, P.so.at(b, bh % P.H, pos), o.data(), D, L > 0 ? 1.0f / L : 0.0f);
            lse[bh * P.T + pos] = L > 0 ? M + logf(L) : NEG_INF;
        }
    }
}

extern "C" {

int lf_simd_width(void) { return VW; }

// Part 3 of the backward: the gradients of the global rows' full attention, added to dq, dk and dv
// (fp32). q, k, v and dout of cfg's dtype; lse and delta (B, H, T) as saved and as written by
// lf_band_backward. Run after lf_band_backward.
void lf_global_rows_backward(const int64_t *cfg, const void *q, const void *k, const void *v, const void *dout,
                             const float *lse, const float *delta, float *dq, float *dk, float *dv,
                             const uint8_t *key_valid, const int64_t *gpos, const int64_t *gcount, float scale,
                             int threads) {
    Problem P = make_problem(cfg, nullptr, key_valid, gpos, gcount, scale);
    const long chunks = (P.T + KEY_CHUNK - 1) / KEY_CHUNK;
    const std::vector<long> items = global_items(P, chunks);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (long i = 0; i < (long)items.size(); i++) {
        const long bh = items[i] / chunks, c = items[i] % chunks;
        global_rows_backward_item(P, bh / P.H, bh % P.H, c * KEY_CHUNK, lmin(P.T, (c + 1) * KEY_CHUNK), q, k, v, dout,
                                  lse, delta, dq, dk, dv);
    }
}

int lf_bf16_dot_native(void) { return BF16_DOT_NATIVE; }

// Parts 1 to 3 of the forward (the band, every row against the global keys, the global rows'
// full attention). q, k, v and out of cfg's dtype; lse fp32.
void lf_band_forward(const int64_t *cfg, const void *q, const void *k, const void *v, void *out, float *lse,
                     const uint8_t *band_ok, const uint8_t *key_valid, const int64_t *gpos, const int64_t *gcount,
                     float scale, int threads) {
    Problem P = make_problem(cfg, band_ok, key_valid, gpos, gcount, scale);
    std::vector<Seq> seqs;
    std::vector<Item> items;
    plan(P, threads, seqs, items);
    const long Gs = round_up(P.Gmax, MR), stride = Gs * (P.Dp + 2), n = (long)items.size();
    std::vector<float> parts(P.Gmax ? n * stride : 0);  // part 3 partials of each item
    float *pp = P.Gmax ? parts.data() : nullptr;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (long i = 0; i < n; i++)
        forward_item(P, seqs[items[i].seq], items[i], q, k, v, out, lse, pp ? pp + i * stride : nullptr, Gs);
    if (P.Gmax) merge_global_parts(P, seqs, items, parts, Gs, out, lse, threads);
}

// q, k, v, dout and out (the forward's output) of cfg's dtype, everything else fp32 (the forward's
// pair products do not apply). Writes delta = rowsum(dout * out) (B, H, T) for every row, dq fully,
// and adds into dk and dv, which must be zero on entry. Rows marked in row_global get no gradient here.
void lf_band_backward(const int64_t *cfg, const void *q, const void *k, const void *v, const void *dout,
                      const void *out, const float *lse, float *delta, float *dq, float *dk, float *dv,
                      const uint8_t *band_ok, const uint8_t *key_valid, const uint8_t *row_global, const int64_t *gpos,
                      const int64_t *gcount, float scale, int threads) {
    Problem P = make_problem(cfg, band_ok, key_valid, gpos, gcount, scale, row_global);
    P.dot16 = false;
    std::vector<Seq> seqs;
    std::vector<Item> items;
    plan(P, threads, seqs, items);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (long i = 0; i < (long)items.size(); i++)
        backward_item(P, seqs[items[i].seq], items[i], q, k, v, dout, out, lse, delta, dq, dk, dv);
}
}
