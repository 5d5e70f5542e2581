/* aarch64 NEON row dots for quants.c's type table: included there in place of the AVX2 ones,
   it defines the names the table uses (dot_*, dotn_*, q8_*) and its DOT_OF / DOTN_OF / Q8_OF /
   DEQ_OF macros. The dots are arm/neon_rows.h's row_tokens, the one arithmetic of this build's
   integer products (gemm.c takes it too). Reference: ggml-cpu/arch/arm/quants.c. */

#ifndef WARMLOAD_ARM_NEON_QUANTS_H
#define WARMLOAD_ARM_NEON_QUANTS_H

#include "neon_rows.h"

#define ARM_DOTS(suffix, id)                                                                   \
    static float dot_##suffix(const uint8_t *w, const xblock *x, int nb) {                     \
        float out;                                                                             \
        row_tokens(id, w, nb, x, 0, 1, &out, 0);                                               \
        return out;                                                                            \
    }                                                                                          \
    static void dotn_##suffix(const uint8_t *w, const xblock *x, int nb, int64_t x_stride,     \
                              float *out, int64_t out_stride) {                                \
        row_tokens(id, w, nb, x, x_stride, 4, out, out_stride);                                \
    }

ARM_DOTS(q4_0, T_Q4_0)
ARM_DOTS(q4_1, T_Q4_1)
ARM_DOTS(q5_0, T_Q5_0)
ARM_DOTS(q5_1, T_Q5_1)
ARM_DOTS(q8_0, T_Q8_0)
ARM_DOTS(q4_k, T_Q4_K)
ARM_DOTS(q5_k, T_Q5_K)
ARM_DOTS(q6_k, T_Q6_K)

/* to_q8 (kernels.h) from the same unpacking: q_unsigned types get back their unsigned bytes
   (Q4_0 and Q5_0 their offsets as c); a scale per 4 values, folding Q6_K's 16-value scales. */
static inline void arm_to_q8(int id, int bias, const uint8_t *b, int8_t *q, float *s, float *c) {
    int n_groups = arm_block_of(id) == 256 ? 2 : 1;
    for (int g = 0; g < n_groups; ++g) {
        wgroup_t wg;
        int n_valid = arm_block_of(id) == 32 ? 1 : 4;
        unpack_group(id, b, g, n_valid, &wg);
        for (int i = 0; i < n_valid; ++i, q += 32, s += 8) {
            const wblock_t *o = &wg.b[i];
            vst1q_s8(q, vaddq_s8(o->lo, vdupq_n_s8((int8_t)bias)));
            vst1q_s8(q + 16, vaddq_s8(o->hi, vdupq_n_s8((int8_t)bias)));
            for (int l = 0; l < 8; ++l) s[l] = wg.dw[i] * (float)(l < 4 ? o->sl : o->sh);
            if (c) *c++ = bias ? -(float)bias * wg.dw[i] : wg.c[i];
        }
    }
}

static void q8_q4_0(const uint8_t *b, int8_t *q, float *s, float *c) { arm_to_q8(T_Q4_0, 8, b, q, s, c); }
static void q8_q4_1(const uint8_t *b, int8_t *q, float *s, float *c) { arm_to_q8(T_Q4_1, 0, b, q, s, c); }
static void q8_q5_0(const uint8_t *b, int8_t *q, float *s, float *c) { arm_to_q8(T_Q5_0, 16, b, q, s, c); }
static void q8_q5_1(const uint8_t *b, int8_t *q, float *s, float *c) { arm_to_q8(T_Q5_1, 0, b, q, s, c); }
static void q8_q8_0(const uint8_t *b, int8_t *q, float *s, float *c) { arm_to_q8(T_Q8_0, 0, b, q, s, NULL); (void)c; }
static void q8_q4_k(const uint8_t *b, int8_t *q, float *s, float *c) { arm_to_q8(T_Q4_K, 0, b, q, s, c); }
static void q8_q5_k(const uint8_t *b, int8_t *q, float *s, float *c) { arm_to_q8(T_Q5_K, 0, b, q, s, c); }
static void q8_q6_k(const uint8_t *b, int8_t *q, float *s, float *c) { arm_to_q8(T_Q6_K, 0, b, q, s, NULL); (void)c; }

/* sum a[i] * b[i] for i < n (n a multiple of 16): four chains of 4 lanes (the float path and
   dequantized rows; FMA latency hides behind the other chains). */
static inline float arm_dot_f32(const float *a, const float *b, int n) {
    float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f),
                          vdupq_n_f32(0.0f)};
    for (int k = 0; k < n; k += 16)
        for (int i = 0; i < 4; ++i)
            acc[i] = vfmaq_f32(acc[i], vld1q_f32(a + k + 4 * i), vld1q_f32(b + k + 4 * i));
    return vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
}

/* Dequantizers of the 32-value types, 4 floats at a time with the scalar formulas' operations
   (d * q, or d * q then + m: no fused multiply-add, as -std=c11 compiles deq_*), so the same
   bits as deq_* (quants.c), signs of zeros included. */
static inline void arm_deq32(int id, const uint8_t *b, float *y) {
    wblock_t o;
    float d, m;
    unp32(id, b, &o, &d, &m);
    const int8x16_t halves[2] = {o.lo, o.hi};
    const float32x4_t vd = vdupq_n_f32(d), vm = vdupq_n_f32(m);
    const int add_m = id == T_Q4_1 || id == T_Q5_0 || id == T_Q5_1; /* deq_q5 adds m = 0 too */
    for (int h = 0; h < 2; ++h) {
        int16x8_t w[2] = {vmovl_s8(vget_low_s8(halves[h])), vmovl_high_s8(halves[h])};
        for (int i = 0; i < 4; ++i) {
            int16x4_t part = i & 1 ? vget_high_s16(w[i / 2]) : vget_low_s16(w[i / 2]);
            float32x4_t v = vmulq_f32(vd, vcvtq_f32_s32(vmovl_s16(part)));
            vst1q_f32(y + 16 * h + 4 * i, add_m ? vaddq_f32(v, vm) : v);
        }
    }
}

static void deqv_q4_0(const uint8_t *b, float *y) { arm_deq32(T_Q4_0, b, y); }
static void deqv_q4_1(const uint8_t *b, float *y) { arm_deq32(T_Q4_1, b, y); }
static void deqv_q5_0(const uint8_t *b, float *y) { arm_deq32(T_Q5_0, b, y); }
static void deqv_q5_1(const uint8_t *b, float *y) { arm_deq32(T_Q5_1, b, y); }
static void deqv_q8_0(const uint8_t *b, float *y) { arm_deq32(T_Q8_0, b, y); }

#define DOT_OF(f) f
#define DOTN_OF(f) f
#define Q8_OF(f) f
#define DEQ_OF(scalar, vector) vector

#endif
