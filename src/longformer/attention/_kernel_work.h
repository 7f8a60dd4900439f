// The fused kernel's problem description and work planning (see _kernel.cpp): strides, the
// sequences a dilated head splits into, their blocks, the work items and each item's buffers.
#pragma once

#include "_kernel_simd.h"

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

}  // namespace
