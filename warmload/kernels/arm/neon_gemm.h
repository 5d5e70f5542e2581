/* aarch64 NEON: gemm.c's entry points (kernels.h: gemm_available, gemm_prepare_x, gemm_rows),
   included by gemm.c in place of its x86 body. Weight rows times tiles of up to 8 tokens, each
   row unpacked once per tile (arm/neon_rows.h); where __ARM_FEATURE_MATMUL_INT8, pairs of rows
   times pairs of tokens take smmla (arm/neon_i8mm.h), with the same float arithmetic per token
   and row, so that every build and every tiling gives the same bits. The row dots of quants.c
   are the same function, so decode steps, batches and prompt chunks agree bit for bit; hence
   gemm_available() says 2 (decode steps take it too) and make_part sends MODE_INT8 here.

   x is quantized by quantize_x (8-bit blocks of 32) into n_tokens * nb xblocks kept at gx->q;
   the x86 layouts of gemm_x_t (groups, super-blocks, q + 128) are not built here.
   Reference: llamafile's tinyBLAS_Q0_ARM (sgemm.cpp), ggml-cpu/arch/arm/quants.c. */

#ifndef WARMLOAD_ARM_NEON_GEMM_H
#define WARMLOAD_ARM_NEON_GEMM_H

#include "neon_rows.h"
#if defined(__ARM_FEATURE_MATMUL_INT8)
#include "neon_i8mm.h"
#endif

/* 2: decode steps take these products too (kernels.h: GEMM_IN_REGISTERS, named GEMM_ALL_STEPS
   once every x86 variant has one) */
int gemm_available(void) { return 2; }

static struct {
    size_t cap; /* xblocks */
    xblock *buffer;
} g_arm_x;

int gemm_prepare_x(gemm_x_t *gx, const float *x, int64_t k, int64_t n_tokens) {
    int64_t nb = k / QK;
    size_t need = (size_t)(n_tokens * nb);
    if (g_arm_x.cap < need) {
        free(g_arm_x.buffer);
        g_arm_x.buffer = aligned_alloc(64, (need * sizeof(xblock) + 63) / 64 * 64);
        g_arm_x.cap = g_arm_x.buffer ? need : 0;
        if (!g_arm_x.buffer) return -1;
    }
    memset(gx, 0, sizeof *gx);
    gx->n_tokens = n_tokens, gx->kp = k, gx->nb = nb;
    gx->q = (uint8_t *)g_arm_x.buffer;
    for (int64_t t = 0; t < n_tokens; ++t)
        quantize_x(x + t * k, g_arm_x.buffer + t * nb, (int)nb);
    return 0;
}

/* A type with to_q8 but no NEON rows (none in QTYPES today): its dequantized blocks dotted
   with x's dequantized blocks, in float. */
static void arm_rows_float(const qtype *type, const uint8_t *w, int64_t nb, const xblock *x,
                           float *out) {
    float v[QK_K];
    double s = 0.0;
    int per = type->block / QK;
    for (int64_t b = 0; b < nb; b += per) {
        type->deq(w + b / per * type->type_size, v);
        for (int i = 0; i < type->block; ++i) s += (double)v[i] * x[b + i / QK].d * x[b + i / QK].q[i % QK];
    }
    *out = (float)s;
}

void gemm_rows(const gemm_x_t *gx, const part_t *p, int64_t r0, int64_t r1, float *c) {
    (void)c;
    const xblock *x = (const xblock *)gx->q;
    int64_t nb = gx->nb, n = gx->n_tokens, ld = p->n_rows;
    arm_rows_fn rows = arm_rows_of(p->type->id);
    for (int64_t t0 = 0; t0 < n; t0 += ARM_TILE) {
        int nt = n - t0 < ARM_TILE ? (int)(n - t0) : ARM_TILE;
        int64_t r = r0;
#if defined(__ARM_FEATURE_MATMUL_INT8)
        if (rows && nt > 1) r = i8mm_rows(p->type->id, p->w, p->row_bytes, r0, r1, nb,
                                          x + t0 * nb, nt, p->y + t0 * ld, ld);
#endif
        for (; r < r1; ++r) {
            const uint8_t *w = p->w + r * p->row_bytes;
            if (rows) {
                rows(w, nb, x + t0 * nb, nb, nt, p->y + t0 * ld + r, ld);
                continue;
            }
            for (int t = 0; t < nt; ++t)
                arm_rows_float(p->type, w, nb, x + (t0 + t) * nb, p->y + (t0 + t) * ld + r);
        }
    }
}

#endif
