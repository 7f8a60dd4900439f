// Part 3 of the fused kernel (see _kernel.cpp): the global rows' full attention. Forward:
// GlobalPart, run inside the band pass; backward: GlobalRows, a pass of its own over key ranges.
#pragma once

#include "_kernel_work.h"

namespace {

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
