/* Float32 -> K-quant blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) for the quantizer, in C.

   Reference: llama.cpp ggml/src/ggml-quants.c, quantize_row_q2_K_ref .. quantize_row_q6_K_ref:
   what ggml_quantize_chunk, and so llama_model_quantize, runs without an importance matrix.
   The scale searches they call (make_qx_quants with rmse_type 1 and no weights, make_q3_quants
   with do_rmse, make_qkx2_quants) are in kquant_search.c and, 8 groups at a time with AVX2,
   kquant_x8.c; this file builds the blocks around them. Block layouts: ggml-common.h.

   The output must be llama.cpp's byte for byte, so every float expression keeps the reference's
   types and operation order: float32 throughout, sums accumulated left to right, integer
   quants converted to float where the reference converts them, nearest_int by the same
   1.5 * 2**23 addition (its result for out-of-range input included), fp16 conversion with
   round to nearest even (F16C's _cvtss_sh where available, as GGML_FP32_TO_FP16 on x86).
   setup.py compiles with -std=c11, in which GCC does not contract a * b + c into FMAs (that
   would change the rounding). The numpy kernels (warmload/quant/quantize_k.py) are the
   fallback without this extension; tests compare both with each other and with llama.cpp. */

#include "kernels.h"

#if defined(__F16C__) && !HAVE_AVX2
#include <immintrin.h>
#endif

#define nearest_int kq_nearest_int
#define GROUP_MAX_EPS 1e-15f

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* float32 -> float16 bits, round to nearest even (NaN stays NaN, overflow goes to inf). */
static inline uint16_t f32_to_fp16(float f) {
#if defined(__F16C__)
    return _cvtss_sh(f, 0);
#else
    /* Scale so the float adder does the rounding at the fp16 mantissa width (the method of
       Maratos' FP16 library, which ggml's software path also uses). */
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t w = f32_bits(f), shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = bits_f32((bias >> 1) + 0x07800000u) + base;
    uint32_t bits = f32_bits(base);
    uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
#endif
}

static inline void put_fp16(uint8_t *p, float f) { uint16_t h = f32_to_fp16(f); memcpy(p, &h, 2); }

/* ------------------------------------------------------------------ one super-block each */

static void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                      (L[j + l + 96] << 6));
}

/* Q2_K (84 bytes): scales[16], qs[64], d, dmin */
static void block_q2_k(const float *x, uint8_t *y, int simd) {
    uint8_t L[QK_K], *sc = y, *qs = y + 16;
    float weights[QK_K], mins[16], scales[16];
    float max_scale = 0, max_min = 0;
    for (int l = 0; l < QK_K; ++l) weights[l] = fabsf(x[l]);
    kq_search_qkx2(x, weights, 16, 16, 3, -0.5f, 0.1f, 15, 1, scales, mins, L, simd);
    for (int j = 0; j < 16; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0) {
        float iscale = 15.f / max_scale;
        for (int j = 0; j < 16; ++j) sc[j] = (uint8_t)nearest_int(iscale * scales[j]);
        put_fp16(y + 80, max_scale / 15.f);
    } else {
        memset(sc, 0, 16);
        put_fp16(y + 80, 0.f);
    }
    if (max_min > 0) {
        float iscale = 15.f / max_min;
        for (int j = 0; j < 16; ++j) sc[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
        put_fp16(y + 82, max_min / 15.f);
    } else {
        put_fp16(y + 82, 0.f);
    }
    float dall = rdf16(y + 80), dmall = rdf16(y + 82);
    for (int j = 0; j < 16; ++j) {
        const float d = dall * (sc[j] & 0xF);
        if (!d) continue;
        const float dm = dmall * (sc[j] >> 4);
        for (int ii = 0; ii < 16; ++ii)
            L[16 * j + ii] = (uint8_t)KMAX(0, KMIN(3, nearest_int((x[16 * j + ii] + dm) / d)));
    }
    pack_2bit(L, qs);
}

/* Q3_K (110 bytes): hmask[32], qs[64], scales[12], d */
static void block_q3_k(const float *x, uint8_t *y, int simd) {
    int8_t L[QK_K];
    uint8_t *hmask = y, *qs = y + 32, *sc = y + 96;
    float scales[16], max_scale = 0, amax = 0;
    kq_search_sym16(x, 4, 1, scales, L, simd);
    for (int j = 0; j < 16; ++j) {
        float scale = fabsf(scales[j]);
        if (scale > amax) { amax = scale; max_scale = scales[j]; }
    }
    memset(sc, 0, 12);
    if (max_scale) {
        float iscale = -32.f / max_scale;
        for (int j = 0; j < 16; ++j) {
            int8_t l = (int8_t)nearest_int(iscale * scales[j]);
            l = (int8_t)(KMAX(-32, KMIN(31, l)) + 32);
            if (j < 8) sc[j] = (uint8_t)(l & 0xF);
            else sc[j - 8] |= (uint8_t)((l & 0xF) << 4);
            l >>= 4;
            sc[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
        }
        put_fp16(y + 108, 1 / iscale);
    } else {
        put_fp16(y + 108, 0.f);
    }
    float dall = rdf16(y + 108);
    for (int j = 0; j < 16; ++j) {
        int8_t s = (int8_t)(j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4);
        s = (int8_t)((s | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
        float d = dall * s;
        if (!d) continue;
        for (int ii = 0; ii < 16; ++ii)
            L[16 * j + ii] = (int8_t)(KMAX(-4, KMIN(3, nearest_int(x[16 * j + ii] / d))) + 4);
    }
    memset(hmask, 0, 32);
    uint8_t Lu[QK_K];
    for (int j = 0; j < QK_K; ++j) {
        uint8_t l = (uint8_t)L[j];
        if (l > 3) {
            hmask[j % 32] |= (uint8_t)(1 << (j / 32));
            l -= 4;
        }
        Lu[j] = l;
    }
    pack_2bit(Lu, qs);
}

/* Q4_K/Q5_K's common part: searches, the 12 packed 6-bit scale/min bytes at y + 4, d and dmin
   at y, y + 2, and the final quants L. */
static void scale_min_k4_block(const float *x, uint8_t *y, uint8_t *L, int nmax, float rmin,
                               float rdelta, int nstep, int simd) {
    float weights[QK_K], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    uint8_t *sc = y + 4;
    for (int j = 0; j < 8; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[32 * j + l] = av_x + fabsf(x[32 * j + l]);
    }
    kq_search_qkx2(x, weights, 32, 8, nmax, rmin, rdelta, nstep, 0, scales, mins, L, simd);
    for (int j = 0; j < 8; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; ++j) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = KMIN(63, ls);
        lm = KMIN(63, lm);
        if (j < 4) {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            sc[j - 4] |= (uint8_t)((ls >> 4) << 6);
            sc[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    put_fp16(y, max_scale / 63.f);
    put_fp16(y + 2, max_min / 63.f);
    float dall = rdf16(y), dmall = rdf16(y + 2);
    for (int j = 0; j < 8; ++j) {
        int s, m;
        scale_min_k4(j, sc, &s, &m);
        const float d = dall * s;
        if (!d) continue;
        const float dm = dmall * m;
        for (int ii = 0; ii < 32; ++ii)
            L[32 * j + ii] = (uint8_t)KMAX(0, KMIN(nmax, nearest_int((x[32 * j + ii] + dm) / d)));
    }
}

/* Q4_K (144 bytes): d, dmin, scales[12], qs[128] */
static void block_q4_k(const float *x, uint8_t *y, int simd) {
    uint8_t L[QK_K], *q = y + 16;
    scale_min_k4_block(x, y, L, 15, -1.f, 0.1f, 20, simd);
    for (int j = 0; j < QK_K; j += 64) {
        for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
        q += 32;
    }
}

/* Q5_K (176 bytes): d, dmin, scales[12], qh[32], qs[128] */
static void block_q5_k(const float *x, uint8_t *y, int simd) {
    uint8_t L[QK_K], *qh = y + 16, *ql = y + 48;
    scale_min_k4_block(x, y, L, 31, -0.5f, 0.1f, 15, simd);
    memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < QK_K; n += 64) {
        for (int j = 0; j < 32; ++j) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
            if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
            ql[j] = (uint8_t)(l1 | (l2 << 4));
        }
        m1 = (uint8_t)(m1 << 2);
        m2 = (uint8_t)(m2 << 2);
        ql += 32;
    }
}

/* Q6_K (210 bytes): ql[128], qh[64], scales[16] (int8), d */
static void block_q6_k(const float *x, uint8_t *y, int simd) {
    int8_t L[QK_K];
    uint8_t *ql = y, *qh = y + 128;
    int8_t *sc = (int8_t *)(y + 192);
    float scales[16], max_scale = 0, max_abs_scale = 0;
    kq_search_sym16(x, 32, 0, scales, L, simd);
    for (int ib = 0; ib < 16; ++ib) {
        float abs_scale = fabsf(scales[ib]);
        if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scales[ib]; }
    }
    if (max_abs_scale < GROUP_MAX_EPS) {
        memset(y, 0, 210);
        put_fp16(y + 208, 0.f);
        return;
    }
    float iscale = -128.f / max_scale;
    put_fp16(y + 208, 1 / iscale);
    for (int ib = 0; ib < 16; ++ib) sc[ib] = (int8_t)KMIN(127, nearest_int(iscale * scales[ib]));
    float dall = rdf16(y + 208);
    for (int j = 0; j < 16; ++j) {
        float d = dall * sc[j];
        if (!d) continue;
        for (int ii = 0; ii < 16; ++ii)
            L[16 * j + ii] = (int8_t)(KMAX(-32, KMIN(31, nearest_int(x[16 * j + ii] / d))) + 32);
    }
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            const uint8_t *Lu = (const uint8_t *)L + j + l;
            ql[l] = (uint8_t)((Lu[0] & 0xF) | ((Lu[64] & 0xF) << 4));
            ql[l + 32] = (uint8_t)((Lu[32] & 0xF) | ((Lu[96] & 0xF) << 4));
            qh[l] = (uint8_t)((Lu[0] >> 4) | ((Lu[32] >> 4) << 2) | ((Lu[64] >> 4) << 4) |
                              ((Lu[96] >> 4) << 6));
        }
        ql += 64;
        qh += 32;
    }
}

int64_t kquant_block_size(int type_id) {
    switch (type_id) {
    case T_Q2_K: return 84;
    case T_Q3_K: return 110;
    case T_Q4_K: return 144;
    case T_Q5_K: return 176;
    case T_Q6_K: return 210;
    default: return 0;
    }
}

int kquant_blocks(int type_id, const float *x, int64_t n_blocks, uint8_t *y, int simd) {
    void (*fn)(const float *, uint8_t *, int);
    switch (type_id) {
    case T_Q2_K: fn = block_q2_k; break;
    case T_Q3_K: fn = block_q3_k; break;
    case T_Q4_K: fn = block_q4_k; break;
    case T_Q5_K: fn = block_q5_k; break;
    case T_Q6_K: fn = block_q6_k; break;
    default: return -1;
    }
    int64_t size = kquant_block_size(type_id);
    for (int64_t i = 0; i < n_blocks; ++i) fn(x + i * QK_K, y + i * size, simd);
    return 0;
}
