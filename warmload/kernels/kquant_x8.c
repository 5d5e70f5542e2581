/* The K-quant scale searches of kquant.c on 8 groups at once, one group per AVX2 lane.

   Reference: llama.cpp ggml/src/ggml-quants.c make_qkx2_quants, make_qx_quants (rmse_type 1,
   no weights) and make_q3_quants (do_rmse). Each lane runs its group's scalar algorithm: the
   same float32 operations in the same order (every sum still runs left to right over the
   group's elements, since the elements are the loop and the groups the lanes), the branches
   turned into per-lane masks and blends. So each lane's result is the scalar code's, bit for
   bit; tests check both against llama.cpp. No FMA: a multiply and an add stay two roundings.

   Layout: the groups arrive transposed, tx[i * 8 + g] = element i of group g; quants go out
   the same way, tL[i * 8 + g], as int32. */

#include "kernels.h"

#if HAVE_AVX2

#define V8 __m256
#define VI8 __m256i

static inline VI8 v_nearest_int(V8 v) {
    VI8 i = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12582912.f)));
    return _mm256_sub_epi32(_mm256_and_si256(i, _mm256_set1_epi32(0x007fffff)),
                            _mm256_set1_epi32(0x00400000));
}

static inline VI8 v_clamp(VI8 l, int lo, int hi) {
    return _mm256_max_epi32(_mm256_set1_epi32(lo), _mm256_min_epi32(_mm256_set1_epi32(hi), l));
}

static inline V8 v_abs(V8 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
static inline V8 v_blend(V8 mask, V8 yes, V8 no) { return _mm256_blendv_ps(no, yes, mask); }
static inline VI8 vi_blend(V8 mask, VI8 yes, VI8 no) {
    return _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(no), _mm256_castsi256_ps(yes), mask));
}
#define GT(a, b) _mm256_cmp_ps(a, b, _CMP_GT_OQ)
#define LT(a, b) _mm256_cmp_ps(a, b, _CMP_LT_OQ)

/* `if (ax > amax) { amax = ax; max = x; }` over the group; returns amax, *vmax the signed max */
static inline V8 first_absmax_x8(int n, const float *tx, V8 *vmax) {
    V8 amax = _mm256_setzero_ps(), max = _mm256_setzero_ps();
    for (int i = 0; i < n; ++i) {
        V8 x = _mm256_loadu_ps(tx + 8 * i), ax = v_abs(x), gt = GT(ax, amax);
        amax = v_blend(gt, ax, amax);
        max = v_blend(gt, x, max);
    }
    *vmax = max;
    return amax;
}

void qkx2_quants_x8(int n, int nmax, const float *tx, const float *tw, int32_t *tL, float *scale_out,
                    float *the_min, float rmin, float rdelta, int nstep, int use_mad) {
    V8 x0 = _mm256_loadu_ps(tx), min = x0, max = x0;
    V8 sum_w = _mm256_loadu_ps(tw), sum_x = _mm256_mul_ps(sum_w, x0);
    for (int i = 1; i < n; ++i) {
        V8 x = _mm256_loadu_ps(tx + 8 * i), w = _mm256_loadu_ps(tw + 8 * i);
        min = _mm256_min_ps(x, min); /* (x < min) ? x : min */
        max = _mm256_max_ps(x, max); /* (x > max) ? x : max */
        sum_w = _mm256_add_ps(sum_w, w);
        sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(w, x));
    }
    const V8 zero = _mm256_setzero_ps(), sign = _mm256_set1_ps(-0.0f);
    min = v_blend(GT(min, zero), zero, min);
    const V8 flat = _mm256_cmp_ps(max, min, _CMP_EQ_OQ);
    V8 iscale = _mm256_div_ps(_mm256_set1_ps((float)nmax), _mm256_sub_ps(max, min));
    V8 scale = _mm256_div_ps(_mm256_set1_ps(1.0f), iscale);
    V8 best = zero;
    for (int i = 0; i < n; ++i) {
        V8 x = _mm256_loadu_ps(tx + 8 * i);
        VI8 l = v_clamp(v_nearest_int(_mm256_mul_ps(iscale, _mm256_sub_ps(x, min))), 0, nmax);
        _mm256_storeu_si256((VI8 *)(tL + 8 * i), l);
        V8 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, _mm256_cvtepi32_ps(l)), min), x);
        diff = use_mad ? _mm256_andnot_ps(sign, diff) : _mm256_mul_ps(diff, diff);
        best = _mm256_add_ps(best, _mm256_mul_ps(_mm256_loadu_ps(tw + 8 * i), diff));
    }
    VI8 laux[32];
    for (int is = 0; is <= nstep; ++is) {
        iscale = _mm256_div_ps(_mm256_set1_ps(rmin + rdelta * is + nmax), _mm256_sub_ps(max, min));
        V8 sum_l = zero, sum_l2 = zero, sum_xl = zero;
        for (int i = 0; i < n; ++i) {
            V8 x = _mm256_loadu_ps(tx + 8 * i), w = _mm256_loadu_ps(tw + 8 * i);
            VI8 l = v_clamp(v_nearest_int(_mm256_mul_ps(iscale, _mm256_sub_ps(x, min))), 0, nmax);
            laux[i] = l;
            V8 wl = _mm256_mul_ps(w, _mm256_cvtepi32_ps(l)), lf = _mm256_cvtepi32_ps(l);
            sum_l = _mm256_add_ps(sum_l, wl);
            sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, lf));
            sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, x));
        }
        V8 D = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
        V8 ok = _mm256_andnot_ps(flat, GT(D, zero));
        if (_mm256_testz_ps(ok, ok)) continue;
        V8 this_scale = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)), D);
        V8 this_min = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)), D);
        V8 pos = GT(this_min, zero);
        this_min = v_blend(pos, zero, this_min);
        this_scale = v_blend(pos, _mm256_div_ps(sum_xl, sum_l2), this_scale);
        V8 cur = zero;
        for (int i = 0; i < n; ++i) {
            V8 x = _mm256_loadu_ps(tx + 8 * i);
            V8 diff = _mm256_sub_ps(
                _mm256_add_ps(_mm256_mul_ps(this_scale, _mm256_cvtepi32_ps(laux[i])), this_min), x);
            diff = use_mad ? _mm256_andnot_ps(sign, diff) : _mm256_mul_ps(diff, diff);
            cur = _mm256_add_ps(cur, _mm256_mul_ps(_mm256_loadu_ps(tw + 8 * i), diff));
        }
        V8 better = _mm256_and_ps(ok, LT(cur, best));
        if (_mm256_testz_ps(better, better)) continue;
        for (int i = 0; i < n; ++i) {
            VI8 *p = (VI8 *)(tL + 8 * i);
            _mm256_storeu_si256(p, vi_blend(better, laux[i], _mm256_loadu_si256(p)));
        }
        best = v_blend(better, cur, best);
        scale = v_blend(better, this_scale, scale);
        min = v_blend(better, this_min, min);
    }
    for (int i = 0; i < n; ++i) {
        VI8 *p = (VI8 *)(tL + 8 * i);
        _mm256_storeu_si256(p, vi_blend(flat, _mm256_setzero_si256(), _mm256_loadu_si256(p)));
    }
    _mm256_storeu_ps(scale_out, v_blend(flat, zero, scale));
    _mm256_storeu_ps(the_min, _mm256_xor_ps(min, sign));
}

void qx_quants_rmse1_x8(int n, int nmax, const float *tx, int32_t *tL, float *scale_out) {
    V8 max, amax = first_absmax_x8(n, tx, &max);
    const V8 zero = _mm256_setzero_ps();
    const V8 empty = LT(amax, _mm256_set1_ps(1e-15f));
    V8 iscale = _mm256_div_ps(_mm256_set1_ps((float)-nmax), max);
    V8 sumlx = zero, suml2 = zero;
    for (int i = 0; i < n; ++i) {
        V8 x = _mm256_loadu_ps(tx + 8 * i), w = _mm256_mul_ps(x, x);
        V8 l = _mm256_cvtepi32_ps(v_clamp(v_nearest_int(_mm256_mul_ps(iscale, x)), -nmax, nmax - 1));
        sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, x), l));
        suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, l), l));
    }
    /* `suml2 ? sumlx/suml2 : 0`: NaN counts as true in C, hence the unordered compare */
    V8 scale = v_blend(_mm256_cmp_ps(suml2, zero, _CMP_NEQ_UQ), _mm256_div_ps(sumlx, suml2), zero);
    V8 best = _mm256_mul_ps(scale, sumlx), best_iscale = iscale;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = _mm256_div_ps(_mm256_set1_ps(-(nmax + 0.1f * is)), max);
        sumlx = suml2 = zero;
        for (int i = 0; i < n; ++i) {
            V8 x = _mm256_loadu_ps(tx + 8 * i), w = _mm256_mul_ps(x, x);
            V8 l = _mm256_cvtepi32_ps(
                v_clamp(v_nearest_int(_mm256_mul_ps(iscale, x)), -nmax, nmax - 1));
            sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, x), l));
            suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, l), l));
        }
        V8 better = _mm256_and_ps(
            GT(suml2, zero), GT(_mm256_mul_ps(sumlx, sumlx), _mm256_mul_ps(best, suml2)));
        if (_mm256_testz_ps(better, better)) continue;
        V8 s = _mm256_div_ps(sumlx, suml2);
        scale = v_blend(better, s, scale);
        best = v_blend(better, _mm256_mul_ps(s, sumlx), best);
        best_iscale = v_blend(better, iscale, best_iscale);
    }
    for (int i = 0; i < n; ++i) {
        VI8 l = v_clamp(v_nearest_int(_mm256_mul_ps(best_iscale, _mm256_loadu_ps(tx + 8 * i))),
                        -nmax, nmax - 1);
        l = _mm256_add_epi32(l, _mm256_set1_epi32(nmax));
        _mm256_storeu_si256((VI8 *)(tL + 8 * i), vi_blend(empty, _mm256_setzero_si256(), l));
    }
    _mm256_storeu_ps(scale_out, v_blend(empty, zero, scale));
}

void q3_quants_rmse_x8(int n, int nmax, const float *tx, int32_t *tL, float *scale_out) {
    V8 max, amax = first_absmax_x8(n, tx, &max);
    const V8 zero = _mm256_setzero_ps();
    const V8 empty = LT(amax, _mm256_set1_ps(1e-15f));
    V8 iscale = _mm256_div_ps(_mm256_set1_ps((float)-nmax), max);
    V8 sumlx = zero, suml2 = zero, L[32];
    for (int i = 0; i < n; ++i) {
        V8 x = _mm256_loadu_ps(tx + 8 * i), w = _mm256_mul_ps(x, x);
        L[i] = _mm256_cvtepi32_ps(v_clamp(v_nearest_int(_mm256_mul_ps(iscale, x)), -nmax, nmax - 1));
        sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, x), L[i]));
        suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, L[i]), L[i]));
    }
    /* a lane stops at its first pass without a change (the C loop's break) */
    V8 active = _mm256_andnot_ps(empty, _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
    for (int itry = 0; itry < 5 && !_mm256_testz_ps(active, active); ++itry) {
        V8 changed = zero;
        for (int i = 0; i < n; ++i) {
            V8 x = _mm256_loadu_ps(tx + 8 * i), w = _mm256_mul_ps(x, x), wx = _mm256_mul_ps(w, x);
            V8 slx = _mm256_sub_ps(sumlx, _mm256_mul_ps(wx, L[i]));
            V8 go = _mm256_and_ps(active, GT(slx, zero));
            if (_mm256_testz_ps(go, go)) continue;
            V8 sl2 = _mm256_sub_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, L[i]), L[i]));
            V8 nl = _mm256_cvtepi32_ps(
                v_clamp(v_nearest_int(_mm256_div_ps(_mm256_mul_ps(x, sl2), slx)), -nmax, nmax - 1));
            go = _mm256_and_ps(go, _mm256_cmp_ps(nl, L[i], _CMP_NEQ_OQ));
            if (_mm256_testz_ps(go, go)) continue;
            slx = _mm256_add_ps(slx, _mm256_mul_ps(wx, nl));
            sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(w, nl), nl));
            V8 lhs = _mm256_mul_ps(_mm256_mul_ps(slx, slx), suml2);
            V8 rhs = _mm256_mul_ps(_mm256_mul_ps(sumlx, sumlx), sl2);
            go = _mm256_and_ps(go, _mm256_and_ps(GT(sl2, zero), GT(lhs, rhs)));
            L[i] = v_blend(go, nl, L[i]);
            sumlx = v_blend(go, slx, sumlx);
            suml2 = v_blend(go, sl2, suml2);
            changed = _mm256_or_ps(changed, go);
        }
        active = _mm256_and_ps(active, changed);
    }
    for (int i = 0; i < n; ++i) {
        VI8 l = _mm256_add_epi32(_mm256_cvtps_epi32(L[i]), _mm256_set1_epi32(nmax));
        _mm256_storeu_si256((VI8 *)(tL + 8 * i), vi_blend(empty, _mm256_setzero_si256(), l));
    }
    V8 scale = v_blend(GT(suml2, zero), _mm256_div_ps(sumlx, suml2), zero);
    _mm256_storeu_ps(scale_out, v_blend(empty, zero, scale));
}

#endif
