/* The element-wise and per-head steps of a decoder layer: rope on a head (llama.cpp's "normal" =
   adjacent pairs, "neox" = halves), the softmax of one query head over its row's cached keys,
   the row-wise RMSNorm and the gated activation. One implementation for the module path and
   the decode plan, so both compute the same bits. References: llama.cpp ggml_rope, HF
   modeling_llama.py / modeling_gemma3.py (GELU tanh approximation, SiLU). */

#include "kernels.h"

/* Rotates the pairs of one head in place: "neox" pairs (j, j + D/2), "interleaved" (2j, 2j+1);
   angle j's cosine and sine sit at cos[j * step], sin[j * step]. */
void rope_head(float *x, int d, const float *cos, const float *sin, int64_t step,
               int interleaved) {
    int half = d / 2;
    for (int j = 0; j < half; ++j) {
        int a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + half;
        float x0 = x[a], x1 = x[b], c = cos[j * step], s = sin[j * step];
        x[a] = x0 * c - x1 * s;
        x[b] = x1 * c + x0 * s;
    }
}

/* out = softmax(scale * q . keys[lo..pos]) . values[lo..pos]; scores has room for pos + 1. */
void attend_head(const float *q, const float *keys, const float *values, int64_t lo,
                 int64_t pos, int64_t d, float scale, float *scores, float *out) {
    float mx = -INFINITY;
    for (int64_t l = lo; l <= pos; ++l) {
        float sc = scale * dot_f32(q, keys + l * d, (int)d);
        scores[l] = sc;
        mx = sc > mx ? sc : mx;
    }
    float sum = 0.0f;
    for (int64_t l = lo; l <= pos; ++l) sum += (scores[l] = expf(scores[l] - mx));
    for (int64_t j = 0; j < d; ++j) out[j] = 0.0f;
    for (int64_t l = lo; l <= pos; ++l) {
        const float *vl = values + l * d;
        float p = scores[l];
        for (int64_t j = 0; j < d; ++j) out[j] += p * vl[j];
    }
    float inv = 1.0f / sum;
    for (int64_t j = 0; j < d; ++j) out[j] *= inv;
}

/* y = x / sqrt(mean(x^2) + eps) * (offset + w), row by row, in float32 as torch's rms_norm
   (the sum of squares in double: one rounding less, same result to the last bit or two). */
void rms_norm_rows(const float *x, const float *w, int64_t n_rows, int64_t dim, float eps,
                   float offset, float *y) {
    for (int64_t r = 0; r < n_rows; ++r, x += dim, y += dim) {
        double ss = 0.0;
        for (int64_t j = 0; j < dim; ++j) ss += (double)x[j] * x[j];
        float scale = 1.0f / sqrtf((float)(ss / (double)dim) + eps);
        if (offset != 0.0f)
            for (int64_t j = 0; j < dim; ++j) y[j] = x[j] * scale * (offset + w[j]);
        else
            for (int64_t j = 0; j < dim; ++j) y[j] = x[j] * scale * w[j];
    }
}

/* One decode step for B rows, each at its own position (positions[b], or pos0 for all when
   positions is NULL): rotate q and the new k, store k and v in the row's cache at the position,
   attend each query head over keys [pos - window + 1, pos] (0..pos when window <= 0) of its KV
   head. q, out (B, H, D); k, v (B, KV, D); caches (B, KV, max_ctx, D); row b's rope angles at
   cos + b * rope.row + pos * rope.pos (sin alike), one every rope.step floats: gathered per-row
   tables (row) or whole tables indexed by position (pos); scores: max_ctx floats. */
void attend_step(const float *q, const float *k, const float *v, float *cache_k, float *cache_v,
                 int64_t B, int64_t H, int64_t KV, int64_t D, int64_t max_ctx,
                 const int64_t *positions, int64_t pos0, int64_t window, float scale,
                 rope_t rope, float *scores, float *out) {
    float qh[MAX_HEAD_DIM];
    for (int64_t b = 0; b < B; ++b) {
        int64_t pos = positions ? positions[b] : pos0;
        int64_t at = b * rope.row + pos * rope.pos;
        const float *cs = rope.cos + at, *sn = rope.sin + at;
        int64_t rope_step = rope.step;
        int interleaved = rope.interleaved;
        for (int64_t g = 0; g < KV; ++g) {
            float *kdst = cache_k + ((b * KV + g) * max_ctx + pos) * D;
            memcpy(kdst, k + (b * KV + g) * D, sizeof(float) * D);
            rope_head(kdst, (int)D, cs, sn, rope_step, interleaved);
            memcpy(cache_v + ((b * KV + g) * max_ctx + pos) * D, v + (b * KV + g) * D,
                   sizeof(float) * D);
        }
        int64_t lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
        for (int64_t h = 0; h < H; ++h) {
            int64_t g = h / (H / KV);
            memcpy(qh, q + (b * H + h) * D, sizeof(float) * D);
            rope_head(qh, (int)D, cs, sn, rope_step, interleaved);
            attend_head(qh, cache_k + (b * KV + g) * max_ctx * D,
                        cache_v + (b * KV + g) * max_ctx * D, lo, pos, D, scale, scores,
                        out + (b * H + h) * D);
        }
    }
}

static inline float activate(float x, int act) {
    if (act == ACT_SILU) return x / (1.0f + expf(-x));
    const float c = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

void act_mul(const float *gate, const float *up, int64_t n, int act, float *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = activate(gate[i], act) * up[i];
}
