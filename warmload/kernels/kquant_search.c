/* The K-quant scale searches of llama.cpp, one group at a time, and the dispatch between them
   and their 8-groups-at-once AVX2 versions (kquant_x8.c); kquant.c builds the blocks.

   Reference: llama.cpp ggml/src/ggml-quants.c make_qx_quants (rmse_type 1, no weights),
   make_q3_quants (do_rmse) and make_qkx2_quants. Same float32 operations in the same order as
   the reference (see kquant.c for why that matters). */

#include "kernels.h"

#define nearest_int kq_nearest_int
#define GROUP_MAX_EPS 1e-15f

/* The first value of largest magnitude, sign kept; 0 when every |x| is below GROUP_MAX_EPS. */
static float signed_max(int n, const float *x) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    return amax < GROUP_MAX_EPS ? 0.0f : max;
}

/* make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL): symmetric scale, weights x*x. */
static float qx_quants_rmse1(int n, int nmax, const float *x, int8_t *L) {
    float max = signed_max(n, x);
    if (max == 0.0f) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = KMAX(-nmax, KMIN(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    float best_iscale = iscale;
    int improved = 0;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = KMAX(-nmax, KMIN(nmax - 1, nearest_int(iscale * x[i])));
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            /* the reference rewrites L here; the last winner's quants are the same */
            best_iscale = iscale;
            improved = 1;
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    if (improved)
        for (int i = 0; i < n; ++i)
            L[i] = (int8_t)(nmax + KMAX(-nmax, KMIN(nmax - 1, nearest_int(best_iscale * x[i]))));
    return scale;
}

/* make_q3_quants(n, nmax, x, L, do_rmse = true): symmetric scale, then coordinate descent. */
static float q3_quants_rmse(int n, int nmax, const float *x, int8_t *L) {
    float max = signed_max(n, x);
    if (max == 0.0f) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = KMAX(-nmax, KMIN(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int new_l = KMAX(-nmax, KMIN(nmax - 1, nearest_int(x[i] * sl2 / slx)));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* The quants of one candidate of make_qkx2_quants and its weighted sums. */
static inline void qkx2_sums(int n, int nmax, const float *x, const float *weights, float iscale,
                             float min, uint8_t *Laux, float *s_l, float *s_l2, float *s_xl) {
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
        int l = KMAX(0, KMIN(nmax, nearest_int(iscale * (x[i] - min))));
        Laux[i] = (uint8_t)l;
        float w = weights[i];
        sum_l += w * l;
        sum_l2 += w * l * l;
        sum_xl += w * l * x[i];
    }
    *s_l = sum_l, *s_l2 = sum_l2, *s_xl = sum_xl;
}

static inline float qkx2_error(int n, const float *x, const float *weights, const uint8_t *L,
                               float scale, float min, int use_mad) {
    float err = 0;
    for (int i = 0; i < n; ++i) {
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        err += weights[i] * diff;
    }
    return err;
}

/* make_qkx2_quants: asymmetric (scale, min) search over nstep + 1 candidate scales. */
static float qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                         float *the_min, float rmin, float rdelta, int nstep, int use_mad) {
    uint8_t Laux[32];
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)KMAX(0, KMIN(nmax, nearest_int(iscale * (x[i] - min))));
    float best_error = qkx2_error(n, x, weights, L, scale, min, use_mad);
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l, sum_l2, sum_xl;
        qkx2_sums(n, nmax, x, weights, iscale, min, Laux, &sum_l, &sum_l2, &sum_xl);
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = qkx2_error(n, x, weights, Laux, this_scale, this_min, use_mad);
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* ------------------------------------------------------- the searches of a super-block */

/* one group at a time (the reference's loops) or with AVX2 8 groups at once (kquant_x8.c, the
   same arithmetic per lane); `simd` chooses, tests run both */

static void transpose8(const float *x, int n, float *tx) { /* 8 groups of n -> tx[i * 8 + g] */
    for (int g = 0; g < 8; ++g)
        for (int i = 0; i < n; ++i) tx[i * 8 + g] = x[g * n + i];
}

static void untranspose8_u8(const int32_t *tL, int n, uint8_t *L) {
    for (int g = 0; g < 8; ++g)
        for (int i = 0; i < n; ++i) L[g * n + i] = (uint8_t)tL[i * 8 + g];
}

/* make_qkx2_quants on the n_groups groups of n weights of x (weights w alongside) */
void kq_search_qkx2(const float *x, const float *w, int n, int n_groups, int nmax, float rmin,
                    float rdelta, int nstep, int use_mad, float *scales, float *mins, uint8_t *L,
                    int simd) {
#if HAVE_AVX2
    if (simd) {
        float tx[32 * 8], tw[32 * 8];
        int32_t tL[32 * 8];
        for (int g0 = 0; g0 < n_groups; g0 += 8) {
            transpose8(x + g0 * n, n, tx);
            transpose8(w + g0 * n, n, tw);
            qkx2_quants_x8(n, nmax, tx, tw, tL, scales + g0, mins + g0, rmin, rdelta, nstep,
                           use_mad);
            untranspose8_u8(tL, n, L + g0 * n);
        }
        return;
    }
#endif
    (void)simd;
    for (int g = 0; g < n_groups; ++g)
        scales[g] = qkx2_quants(n, nmax, x + g * n, w + g * n, L + g * n, &mins[g], rmin, rdelta,
                                nstep, use_mad);
}

/* make_qx_quants (q3 = 0) or make_q3_quants (q3 = 1) on the 16 groups of 16 of x */
void kq_search_sym16(const float *x, int nmax, int q3, float *scales, int8_t *L, int simd) {
#if HAVE_AVX2
    if (simd) {
        float tx[16 * 8];
        int32_t tL[16 * 8];
        for (int g0 = 0; g0 < 16; g0 += 8) {
            transpose8(x + g0 * 16, 16, tx);
            if (q3) q3_quants_rmse_x8(16, nmax, tx, tL, scales + g0);
            else qx_quants_rmse1_x8(16, nmax, tx, tL, scales + g0);
            untranspose8_u8(tL, 16, (uint8_t *)L + g0 * 16);
        }
        return;
    }
#endif
    (void)simd;
    for (int g = 0; g < 16; ++g)
        scales[g] = q3 ? q3_quants_rmse(16, nmax, x + 16 * g, L + 16 * g)
                       : qx_quants_rmse1(16, nmax, x + 16 * g, L + 16 * g);
}
