/* aarch64 i8mm (smmla): two weight rows times two tokens per instruction, as ggml's
   ggml_vec_dot_q4_0_q8_0 with nrc == 2 and llamafile's tinyBLAS_Q0_ARM. Each block's 2x2 exact
   integer sums feed the same float chains as arm/neon_rows.h's row_tokens (chain i: blocks
   i, i + 4, ..; result ((c0 + c1) + (c2 + c3)) plus the same of the offsets), so a token's
   result is the same bits as the sdot and plain NEON builds give it. */

#ifndef WARMLOAD_ARM_NEON_I8MM_H
#define WARMLOAD_ARM_NEON_I8MM_H

#include "neon_rows.h"

ARM_INLINE int8x16_t zip_lo(int8x16_t a, int8x16_t b) {
    return vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}
ARM_INLINE int8x16_t zip_hi(int8x16_t a, int8x16_t b) {
    return vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}

/* Block i of groups ga (row a) and gb (row b) against tokens t and u: [a.t, a.u, b.t, b.u]. */
ARM_INLINE int32x4_t mmla_block(int id, const wgroup_t *ga, const wgroup_t *gb, int i,
                                const int8_t *qt, const int8_t *qu) {
    int8x16_t t0 = vld1q_s8(qt), t1 = vld1q_s8(qt + 16), u0 = vld1q_s8(qu), u1 = vld1q_s8(qu + 16);
    const wblock_t *a = &ga->b[i], *b = &gb->b[i];
    int32x4_t lo = vmmlaq_s32(vdupq_n_s32(0), zip_lo(a->lo, b->lo), zip_lo(t0, u0));
    lo = vmmlaq_s32(lo, zip_hi(a->lo, b->lo), zip_hi(t0, u0));
    if (!arm_scaled(id)) {
        lo = vmmlaq_s32(lo, zip_lo(a->hi, b->hi), zip_lo(t1, u1));
        return vmmlaq_s32(lo, zip_hi(a->hi, b->hi), zip_hi(t1, u1));
    }
    int32x4_t hi = vmmlaq_s32(vdupq_n_s32(0), zip_lo(a->hi, b->hi), zip_lo(t1, u1));
    hi = vmmlaq_s32(hi, zip_hi(a->hi, b->hi), zip_hi(t1, u1));
    const int32_t sl[4] = {a->sl, a->sl, b->sl, b->sl}, sh[4] = {a->sh, a->sh, b->sh, b->sh};
    return vmlaq_s32(vmulq_s32(lo, vld1q_s32(sl)), hi, vld1q_s32(sh));
}

ARM_INLINE float32x4_t pair4(float a, float b) {
    const float v[4] = {a, a, b, b};
    return vld1q_f32(v);
}
ARM_INLINE float32x4_t cross4(float t, float u) {
    const float v[4] = {t, u, t, u};
    return vld1q_f32(v);
}

/* Rows wa, wb times nt tokens (x_t = x + t * nb; an odd last token paired with itself): each
   group of both rows unpacked once for every token pair. out[t] = a.x_t, out[ARM_TILE + t] =
   b.x_t. */
ARM_INLINE void mmla_rows(int id, const uint8_t *wa, const uint8_t *wb, int64_t nb,
                          const xblock *x, int nt, float *out) {
    enum { PAIRS = ARM_TILE / 2 };
    float32x4_t acc[PAIRS][4], off[PAIRS][4];
    int n_pairs = (nt + 1) / 2;
    for (int p = 0; p < n_pairs; ++p)
        for (int i = 0; i < 4; ++i) acc[p][i] = off[p][i] = vdupq_n_f32(0.0f);
    int64_t groups = (nb + 3) / 4;
    for (int64_t g = 0; g < groups; ++g) {
        int n_valid = nb - 4 * g < 4 ? (int)(nb - 4 * g) : 4;
        wgroup_t ga, gb;
        unpack_group(id, wa, g, n_valid, &ga);
        unpack_group(id, wb, g, n_valid, &gb);
        for (int p = 0; p < n_pairs; ++p) {
            int t = 2 * p, u = t + 1 < nt ? t + 1 : t;
            for (int i = 0; i < 4; ++i) {
                const xblock *bt = x + t * nb + 4 * g + i, *bu = x + u * nb + 4 * g + i;
                int32x4_t s = vdupq_n_s32(0);
                float dt = 0.0f, du = 0.0f, st = 0.0f, su = 0.0f;
                if (i < n_valid) {
                    s = mmla_block(id, &ga, &gb, i, bt->q, bu->q);
                    dt = bt->d, du = bu->d, st = bt->s, su = bu->s;
                }
                float32x4_t scale = vmulq_f32(pair4(ga.dw[i], gb.dw[i]), cross4(dt, du));
                acc[p][i] = vfmaq_f32(acc[p][i], vcvtq_f32_s32(s), scale);
                if (arm_offsets(id))
                    off[p][i] = vfmaq_f32(off[p][i], pair4(ga.c[i], gb.c[i]), cross4(st, su));
            }
        }
    }
    for (int p = 0; p < n_pairs; ++p) {
        float32x4_t a = vaddq_f32(vaddq_f32(acc[p][0], acc[p][1]), vaddq_f32(acc[p][2], acc[p][3]));
        float32x4_t o = vaddq_f32(vaddq_f32(off[p][0], off[p][1]), vaddq_f32(off[p][2], off[p][3]));
        float r[4];
        vst1q_f32(r, vaddq_f32(a, o));
        int t = 2 * p;
        out[t] = r[0], out[ARM_TILE + t] = r[2];
        if (t + 1 < nt) out[t + 1] = r[1], out[ARM_TILE + t + 1] = r[3];
    }
}

/* Rows r0.. in pairs times the nt (2..8) tokens of a tile; returns the first row left for the
   one-row path (an odd last row). */
ARM_INLINE int64_t i8mm_rows_of(int id, const uint8_t *w, int64_t row_bytes, int64_t r0,
                                int64_t r1, int64_t nb, const xblock *x, int nt, float *y,
                                int64_t ld) {
    int64_t r = r0;
    for (; r + 2 <= r1; r += 2) {
        const uint8_t *wa = w + r * row_bytes;
        float out[2 * ARM_TILE];
        mmla_rows(id, wa, wa + row_bytes, nb, x, nt, out);
        for (int t = 0; t < nt; ++t) y[t * ld + r] = out[t], y[t * ld + r + 1] = out[ARM_TILE + t];
    }
    return r;
}

#define I8MM_CASE(id) \
    case id: return i8mm_rows_of(id, w, row_bytes, r0, r1, nb, x, nt, y, ld);

static int64_t i8mm_rows(int id, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1,
                         int64_t nb, const xblock *x, int nt, float *y, int64_t ld) {
    switch (id) {
    I8MM_CASE(T_Q4_0) I8MM_CASE(T_Q4_1) I8MM_CASE(T_Q5_0) I8MM_CASE(T_Q5_1) I8MM_CASE(T_Q8_0)
    I8MM_CASE(T_IQ4_NL) I8MM_CASE(T_Q3_K) I8MM_CASE(T_Q4_K) I8MM_CASE(T_Q5_K) I8MM_CASE(T_Q6_K)
    I8MM_CASE(T_IQ4_XS)
    default: return r0;
    }
}

#endif
