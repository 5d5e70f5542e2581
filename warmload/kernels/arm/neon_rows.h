/* aarch64 NEON: one weight row times 1..8 tokens of 8-bit activation blocks (xblock), for every
   block type with an integer product here. Included by arm/neon_quants.h (quants.c: the row
   dots) and arm/neon_gemm.h (gemm.c: the many-token product), so both run this one function.

   Each weight row is read 4 blocks of 32 values at a time (a K-quant super-block is 2 such
   groups): the blocks are unpacked into signed bytes once, then every token takes, per block,
   the exact integer sum of w_q * x_q (sdot where __ARM_FEATURE_DOTPROD, else vmull_s8 and
   vpadalq_s16: the same integers), the 4 blocks' sums transposed into one int32x4 (lane j:
   block 4g + j), and one multiply-add by the blocks' scales dw * dx (plus c * x.s for types with
   mins or offsets). Lane j chains blocks j, j + 4, ..; the row's result is
   ((l0 + l1) + (l2 + l3)) + the same of the offset terms. Every token's result is the same
   bits whatever tile it shares and whichever of the NEON / dotprod / i8mm builds runs it.

   Sub-blocks of 16 with integer scales (Q3_K, Q6_K) fold their scales into the block's integer
   sum (sl * sum_lo + sh * sum_hi, exact); the float scale is then the super-block's d.
   Layouts: llama.cpp ggml/src/ggml-common.h; unpacking as ggml-cpu/arch/arm/quants.c. */

#ifndef WARMLOAD_ARM_NEON_ROWS_H
#define WARMLOAD_ARM_NEON_ROWS_H

#include <arm_neon.h>

#include "../kernels.h"

#define ARM_INLINE static inline __attribute__((always_inline))
#define ARM_TILE 8 /* tokens per pass over a row */

/* One block of 32 values: bytes lo (values 0..15) and hi (16..31); sl, sh: integer scales of
   the two halves (scaled types only). */
typedef struct {
    int8x16_t lo, hi;
    int32_t sl, sh;
} wblock_t;

/* 4 unpacked blocks with their float scales dw and offset coefficients c. */
typedef struct {
    wblock_t b[4];
    float dw[4], c[4];
} wgroup_t;

static const int8_t ARM_IQ4NL[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                     1,    13,   25,  38,  53,  69,  89,  113};

/* ------------------------------------------------------------------- integer block sums */

ARM_INLINE int32x4_t dot16(int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(vdupq_n_s32(0), a, b);
#else
    int32x4_t p = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(p, vmull_high_s8(a, b));
#endif
}

ARM_INLINE int32x4_t dot32(int8x16_t a0, int8x16_t b0, int8x16_t a1, int8x16_t b1) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), a0, b0), a1, b1);
#else
    int32x4_t p = vpaddlq_s16(vmull_s8(vget_low_s8(a0), vget_low_s8(b0)));
    p = vpadalq_s16(p, vmull_high_s8(a0, b0));
    p = vpadalq_s16(p, vmull_s8(vget_low_s8(a1), vget_low_s8(b1)));
    return vpadalq_s16(p, vmull_high_s8(a1, b1));
#endif
}

/* Lanes that sum to the block's exact integer dot with x's 32 bytes q. */
ARM_INLINE int32x4_t block_dot(const wblock_t *w, const int8_t *q, int scaled) {
    int8x16_t x0 = vld1q_s8(q), x1 = vld1q_s8(q + 16);
    if (!scaled) return dot32(w->lo, x0, w->hi, x1);
    return vmlaq_n_s32(vmulq_n_s32(dot16(w->lo, x0), w->sl), dot16(w->hi, x1), w->sh);
}

/* ------------------------------------------------------------------------ unpacking */

ARM_INLINE float arm_f16(const uint8_t *p) {
    __fp16 h;
    memcpy(&h, p, 2);
    return (float)h;
}

/* 16 bytes of nibbles: lo = the low nibbles, hi = the high ones. */
ARM_INLINE void nibbles(const uint8_t *p, uint8x16_t *lo, uint8x16_t *hi) {
    uint8x16_t v = vld1q_u8(p);
    *lo = vandq_u8(v, vdupq_n_u8(0x0F));
    *hi = vshrq_n_u8(v, 4);
}

/* 32 bits (little endian) -> 0x10 in byte j where bit j is set: bits 0..15 in lo. */
ARM_INLINE void fifth_bits(const uint8_t *p, uint8x16_t *lo, uint8x16_t *hi) {
    uint32_t bits;
    memcpy(&bits, p, 4);
    const uint8x16_t mask = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t i0 = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    const uint8x16_t i1 = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    uint8x16_t b = vreinterpretq_u8_u32(vdupq_n_u32(bits)), ten = vdupq_n_u8(0x10);
    *lo = vandq_u8(vtstq_u8(vqtbl1q_u8(b, i0), mask), ten);
    *hi = vandq_u8(vtstq_u8(vqtbl1q_u8(b, i1), mask), ten);
}

ARM_INLINE void set_u8(wblock_t *o, uint8x16_t lo, uint8x16_t hi, int bias) {
    o->lo = vsubq_s8(vreinterpretq_s8_u8(lo), vdupq_n_s8((int8_t)bias));
    o->hi = vsubq_s8(vreinterpretq_s8_u8(hi), vdupq_n_s8((int8_t)bias));
    o->sl = o->sh = 1;
}

/* The 32-value types, block b of a row (signed bytes: Q4_0 and Q5_0 lose their offsets). */
ARM_INLINE void unp32(int id, const uint8_t *w, wblock_t *o, float *dw, float *c) {
    uint8x16_t lo, hi, h0, h1;
    *dw = arm_f16(w), *c = 0.0f;
    switch (id) {
    case T_Q4_0: nibbles(w + 2, &lo, &hi); set_u8(o, lo, hi, 8); break;
    case T_Q4_1: nibbles(w + 4, &lo, &hi); set_u8(o, lo, hi, 0); *c = arm_f16(w + 2); break;
    case T_Q5_0:
        nibbles(w + 6, &lo, &hi), fifth_bits(w + 2, &h0, &h1);
        set_u8(o, vorrq_u8(lo, h0), vorrq_u8(hi, h1), 16);
        break;
    case T_Q5_1:
        nibbles(w + 8, &lo, &hi), fifth_bits(w + 4, &h0, &h1);
        set_u8(o, vorrq_u8(lo, h0), vorrq_u8(hi, h1), 0);
        *c = arm_f16(w + 2);
        break;
    case T_Q8_0:
        o->lo = vld1q_s8((const int8_t *)w + 2), o->hi = vld1q_s8((const int8_t *)w + 18);
        o->sl = o->sh = 1;
        break;
    default: { /* T_IQ4_NL */
        const int8x16_t table = vld1q_s8(ARM_IQ4NL);
        nibbles(w + 2, &lo, &hi);
        o->lo = vqtbl1q_s8(table, lo), o->hi = vqtbl1q_s8(table, hi);
        o->sl = o->sh = 1;
    }
    }
}

/* Q3_K's 16 six-bit scales (minus 32), as ggml's dequantize_row_q3_K decodes them. */
ARM_INLINE void q3k_scales(const uint8_t *b, int8_t *scales) {
    uint32_t aux[4];
    memcpy(aux, b, 12);
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f, tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    memcpy(scales, aux, 16);
    for (int i = 0; i < 16; ++i) scales[i] -= 32;
}

/* Blocks 4h..4h+3 of a 256-value super-block s (h: half 0 or 1). */
ARM_INLINE void unp256(int id, const uint8_t *s, int h, wgroup_t *g) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    int8_t q3_scales[16];
    if (id == T_Q3_K) q3k_scales(s + 96, q3_scales);
    for (int i = 0; i < 4; ++i) {
        int j = 4 * h + i; /* block of the super-block */
        wblock_t *o = &g->b[i];
        g->c[i] = 0.0f;
        if (id == T_Q4_K || id == T_Q5_K) {
            int sc, mn;
            scale_min_k4(j, s + 4, &sc, &mn);
            g->dw[i] = arm_f16(s) * sc, g->c[i] = -arm_f16(s + 2) * mn;
            const uint8_t *qs = s + (id == T_Q5_K ? 48 : 16) + 32 * (j / 2);
            uint8x16_t a = vld1q_u8(qs), b = vld1q_u8(qs + 16);
            uint8x16_t lo = j & 1 ? vshrq_n_u8(a, 4) : vandq_u8(a, m4);
            uint8x16_t hi = j & 1 ? vshrq_n_u8(b, 4) : vandq_u8(b, m4);
            if (id == T_Q5_K) {
                const uint8x16_t bit = vdupq_n_u8((uint8_t)(1 << j)), ten = vdupq_n_u8(0x10);
                lo = vorrq_u8(lo, vandq_u8(vtstq_u8(vld1q_u8(s + 16), bit), ten));
                hi = vorrq_u8(hi, vandq_u8(vtstq_u8(vld1q_u8(s + 32), bit), ten));
            }
            set_u8(o, lo, hi, 0);
        } else if (id == T_Q6_K) {
            int half = j / 4, r = j % 4;
            const uint8_t *ql = s + 64 * half + 32 * (r & 1), *qh = s + 128 + 32 * half;
            const int8x16_t shift = vdupq_n_s8((int8_t)(4 - 2 * r));
            const uint8x16_t m30 = vdupq_n_u8(0x30);
            uint8x16_t a = vld1q_u8(ql), b = vld1q_u8(ql + 16);
            uint8x16_t lo = r >= 2 ? vshrq_n_u8(a, 4) : vandq_u8(a, m4);
            uint8x16_t hi = r >= 2 ? vshrq_n_u8(b, 4) : vandq_u8(b, m4);
            lo = vorrq_u8(lo, vandq_u8(vshlq_u8(vld1q_u8(qh), shift), m30));
            hi = vorrq_u8(hi, vandq_u8(vshlq_u8(vld1q_u8(qh + 16), shift), m30));
            set_u8(o, lo, hi, 32);
            const int8_t *sc = (const int8_t *)(s + 192) + 8 * half + 2 * r;
            o->sl = sc[0], o->sh = sc[1];
            g->dw[i] = arm_f16(s + 208);
        } else if (id == T_Q3_K) {
            const uint8_t *qs = s + 32 + 32 * (j / 4);
            const int8x16_t shift = vdupq_n_s8((int8_t)(-2 * (j % 4)));
            const uint8x16_t m3 = vdupq_n_u8(3), bit = vdupq_n_u8((uint8_t)(1 << j));
            /* q - 4 where the high-mask bit is clear */
            uint8x16_t lo = vandq_u8(vshlq_u8(vld1q_u8(qs), shift), m3);
            uint8x16_t hi = vandq_u8(vshlq_u8(vld1q_u8(qs + 16), shift), m3);
            uint8x16_t hl = vandq_u8(vtstq_u8(vld1q_u8(s), bit), vdupq_n_u8(4));
            uint8x16_t hh = vandq_u8(vtstq_u8(vld1q_u8(s + 16), bit), vdupq_n_u8(4));
            set_u8(o, vaddq_u8(lo, hl), vaddq_u8(hi, hh), 4);
            o->sl = q3_scales[2 * j], o->sh = q3_scales[2 * j + 1];
            g->dw[i] = arm_f16(s + 108);
        } else { /* T_IQ4_XS */
            const int8x16_t table = vld1q_s8(ARM_IQ4NL);
            uint16_t sh = rd16(s + 2);
            int ls = ((s[4 + j / 2] >> 4 * (j % 2)) & 0xF) | (((sh >> 2 * j) & 3) << 4);
            uint8x16_t lo, hi;
            nibbles(s + 8 + 16 * j, &lo, &hi);
            o->lo = vqtbl1q_s8(table, lo), o->hi = vqtbl1q_s8(table, hi);
            o->sl = o->sh = 1;
            g->dw[i] = arm_f16(s) * (ls - 32);
        }
    }
}

ARM_INLINE int arm_block_of(int id) {
    return id == T_Q4_0 || id == T_Q4_1 || id == T_Q5_0 || id == T_Q5_1 || id == T_Q8_0 ||
                   id == T_IQ4_NL
               ? 32
               : 256;
}

ARM_INLINE int arm_type_size(int id) {
    switch (id) {
    case T_Q4_0: case T_IQ4_NL: return 18;
    case T_Q4_1: return 20;
    case T_Q5_0: return 22;
    case T_Q5_1: return 24;
    case T_Q8_0: return 34;
    case T_Q3_K: return 110;
    case T_Q4_K: return 144;
    case T_Q5_K: return 176;
    case T_Q6_K: return 210;
    default: return 136; /* T_IQ4_XS */
    }
}

/* Group g (blocks 4g..4g+3, n_valid of them real; the rest zero) of a row of nb blocks. */
ARM_INLINE void unpack_group(int id, const uint8_t *w, int64_t g, int n_valid, wgroup_t *o) {
    if (arm_block_of(id) == 256) {
        unp256(id, w + (g / 2) * arm_type_size(id), (int)(g % 2), o);
        return;
    }
    for (int i = 0; i < 4; ++i) {
        if (i < n_valid) {
            unp32(id, w + (4 * g + i) * arm_type_size(id), &o->b[i], &o->dw[i], &o->c[i]);
        } else {
            o->b[i].lo = o->b[i].hi = vdupq_n_s8(0);
            o->b[i].sl = o->b[i].sh = 1;
            o->dw[i] = o->c[i] = 0.0f;
        }
    }
}

ARM_INLINE int arm_scaled(int id) { return id == T_Q6_K || id == T_Q3_K; }
ARM_INLINE int arm_offsets(int id) { return id == T_Q4_1 || id == T_Q5_1 || id == T_Q4_K || id == T_Q5_K; }

/* ------------------------------------------------------------------------- a row's dots */

/* One token's share of a group: 4 exact block sums, one multiply-add (and one for offsets). */
ARM_INLINE void token_group(int id, const wgroup_t *g, const xblock *x, int n_valid,
                            float32x4_t *acc, float32x4_t *off) {
    int32x4_t p[4];
    float dx[4], sx[4];
    for (int i = 0; i < 4; ++i) {
        if (i < n_valid) {
            p[i] = block_dot(&g->b[i], x[i].q, arm_scaled(id));
            dx[i] = x[i].d, sx[i] = x[i].s;
        } else {
            p[i] = vdupq_n_s32(0), dx[i] = sx[i] = 0.0f;
        }
    }
    int32x4_t sums = vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
    float32x4_t scale = vmulq_f32(vld1q_f32(g->dw), vld1q_f32(dx));
    *acc = vfmaq_f32(*acc, vcvtq_f32_s32(sums), scale);
    if (arm_offsets(id)) *off = vfmaq_f32(*off, vld1q_f32(g->c), vld1q_f32(sx));
}

ARM_INLINE float lanes_sum(float32x4_t v) {
    return (vgetq_lane_f32(v, 0) + vgetq_lane_f32(v, 1)) +
           (vgetq_lane_f32(v, 2) + vgetq_lane_f32(v, 3));
}

/* out[t * out_stride] = row w . x_t for t < nt, x_t = x + t * x_stride blocks (nb of them). */
ARM_INLINE void row_tokens(int id, const uint8_t *w, int64_t nb, const xblock *x,
                           int64_t x_stride, int nt, float *out, int64_t out_stride) {
    float32x4_t acc[ARM_TILE], off[ARM_TILE];
    for (int t = 0; t < nt; ++t) acc[t] = off[t] = vdupq_n_f32(0.0f);
    int64_t groups = (nb + 3) / 4;
    for (int64_t g = 0; g < groups; ++g) {
        int n_valid = nb - 4 * g < 4 ? (int)(nb - 4 * g) : 4;
        wgroup_t wg;
        unpack_group(id, w, g, n_valid, &wg);
        for (int t = 0; t < nt; ++t)
            token_group(id, &wg, x + t * x_stride + 4 * g, n_valid, &acc[t], &off[t]);
    }
    for (int t = 0; t < nt; ++t) out[t * out_stride] = lanes_sum(acc[t]) + lanes_sum(off[t]);
}

/* The types row_tokens takes (every K-quant but Q2_K, whose mins are per 16 values). */
ARM_INLINE int arm_has_rows(int id) {
    switch (id) {
    case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0: case T_IQ4_NL:
    case T_Q3_K: case T_Q4_K: case T_Q5_K: case T_Q6_K: case T_IQ4_XS: return 1;
    default: return 0;
    }
}

/* row_tokens with the type and token count constant (each its own unrolled code). */
#define ARM_ROWS(name, id)                                                                     \
    static void name(const uint8_t *w, int64_t nb, const xblock *x, int64_t x_stride, int nt, \
                     float *out, int64_t out_stride) {                                         \
        switch (nt) {                                                                          \
        case 8: row_tokens(id, w, nb, x, x_stride, 8, out, out_stride); break;                 \
        case 4: row_tokens(id, w, nb, x, x_stride, 4, out, out_stride); break;                 \
        case 1: row_tokens(id, w, nb, x, x_stride, 1, out, out_stride); break;                 \
        default: row_tokens(id, w, nb, x, x_stride, nt, out, out_stride);                      \
        }                                                                                      \
    }

typedef void (*arm_rows_fn)(const uint8_t *, int64_t, const xblock *, int64_t, int, float *,
                            int64_t);

ARM_ROWS(arm_rows_q4_0, T_Q4_0)
ARM_ROWS(arm_rows_q4_1, T_Q4_1)
ARM_ROWS(arm_rows_q5_0, T_Q5_0)
ARM_ROWS(arm_rows_q5_1, T_Q5_1)
ARM_ROWS(arm_rows_q8_0, T_Q8_0)
ARM_ROWS(arm_rows_iq4_nl, T_IQ4_NL)
ARM_ROWS(arm_rows_q3_k, T_Q3_K)
ARM_ROWS(arm_rows_q4_k, T_Q4_K)
ARM_ROWS(arm_rows_q5_k, T_Q5_K)
ARM_ROWS(arm_rows_q6_k, T_Q6_K)
ARM_ROWS(arm_rows_iq4_xs, T_IQ4_XS)

static inline arm_rows_fn arm_rows_of(int id) {
    switch (id) {
    case T_Q4_0: return arm_rows_q4_0;
    case T_Q4_1: return arm_rows_q4_1;
    case T_Q5_0: return arm_rows_q5_0;
    case T_Q5_1: return arm_rows_q5_1;
    case T_Q8_0: return arm_rows_q8_0;
    case T_IQ4_NL: return arm_rows_iq4_nl;
    case T_Q3_K: return arm_rows_q3_k;
    case T_Q4_K: return arm_rows_q4_k;
    case T_Q5_K: return arm_rows_q5_k;
    case T_Q6_K: return arm_rows_q6_k;
    case T_IQ4_XS: return arm_rows_iq4_xs;
    default: return NULL;
    }
}

#endif
