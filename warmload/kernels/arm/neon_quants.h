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

#define DOT_OF(f) f
#define DOTN_OF(f) f
#define Q8_OF(f) f
#define DEQ_OF(scalar, vector) scalar

#endif
