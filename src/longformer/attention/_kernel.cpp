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
//
// Files: _kernel_simd.h (arithmetic and the micro-kernel), _kernel_work.h (problem, planning,
// per-item buffers), _kernel_global.h (part 3, the global rows), this file (the band's forward and
// backward per work item, and the entry points).
#include "_kernel_global.h"

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
