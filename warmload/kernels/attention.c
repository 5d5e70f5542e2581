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

#if defined(__AVX512F__)
#define ATTN_AVX512 1
/* e^x of 16 floats (Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial in r,
   then 2^n by scalef; within 2 ulp of expf, 0 below -103 and +inf above 88.7). */
static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-103.0f)), _mm512_set1_ps(88.7f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* The dot products of q with 4 keys (D a multiple of 16), summed in one fixed order. */
static inline __m128 dot4(const float *q, const float *k, int64_t d) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    for (int64_t j = 0; j < d; j += 16) {
        __m512 qj = _mm512_loadu_ps(q + j);
        for (int i = 0; i < 4; ++i) acc[i] = _mm512_fmadd_ps(qj, _mm512_loadu_ps(k + i * d + j), acc[i]);
    }
    __m256 t[4];
    for (int i = 0; i < 4; ++i)
        t[i] = _mm256_add_ps(_mm512_castps512_ps256(acc[i]), _mm512_extractf32x8_ps(acc[i], 1));
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(t[0], t[1]), _mm256_hadd_ps(t[2], t[3]));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
#else
#define ATTN_AVX512 0
#endif

/* Soft-capped scores (Gemma 2's attn_logit_softcapping): s -> cap * tanh(s / cap), as HF's
   eager attention; cap <= 0 leaves them as they are. */
static void cap_scores(float *scores, int64_t n, float cap) {
    if (cap <= 0.0f) return;
    for (int64_t l = 0; l < n; ++l) scores[l] = tanhf(scores[l] / cap) * cap;
}

/* out = softmax(cap(scale * q . keys[lo..pos])) . values[lo..pos] for one query head (keys
   and values (max_ctx, d) rows; cap: cap_scores); scores has room for pos + 1 - lo floats. */
static void attend_head(const float *q, const float *keys, const float *values, int64_t lo,
                        int64_t pos, int64_t d, float scale, float softcap, float *scores,
                        float *out) {
    int64_t n = pos + 1 - lo;
    keys += lo * d, values += lo * d;
#if ATTN_AVX512
    if (d % 16 == 0 && d <= 256) {
        int64_t l = 0;
        for (; l + 4 <= n; l += 4)
            _mm_storeu_ps(scores + l, _mm_mul_ps(_mm_set1_ps(scale), dot4(q, keys + l * d, d)));
        for (; l < n; ++l) { /* the last keys, one at a time */
            __m512 acc = _mm512_setzero_ps();
            for (int64_t j = 0; j < d; j += 16)
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), _mm512_loadu_ps(keys + l * d + j), acc);
            scores[l] = scale * _mm512_reduce_add_ps(acc);
        }
        cap_scores(scores, n, softcap);
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (l = 0; l < n; l += 16) {
            __mmask16 m = n - l >= 16 ? 0xFFFF : (__mmask16)((1u << (n - l)) - 1);
            mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, scores + l));
        }
        __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), sum = _mm512_setzero_ps();
        for (l = 0; l < n; l += 16) {
            __mmask16 m = n - l >= 16 ? 0xFFFF : (__mmask16)((1u << (n - l)) - 1);
            __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + l), top)));
            _mm512_mask_storeu_ps(scores + l, m, e);
            sum = _mm512_add_ps(sum, e);
        }
        __m512 acc[16];
        int64_t nv = d / 16;
        for (int64_t j = 0; j < nv; ++j) acc[j] = _mm512_setzero_ps();
        for (l = 0; l < n; ++l) {
            __m512 p = _mm512_set1_ps(scores[l]);
            for (int64_t j = 0; j < nv; ++j)
                acc[j] = _mm512_fmadd_ps(p, _mm512_loadu_ps(values + l * d + 16 * j), acc[j]);
        }
        __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
        for (int64_t j = 0; j < nv; ++j) _mm512_storeu_ps(out + 16 * j, _mm512_mul_ps(acc[j], inv));
        return;
    }
#endif
    for (int64_t l = 0; l < n; ++l) scores[l] = scale * dot_f32(q, keys + l * d, (int)d);
    cap_scores(scores, n, softcap);
    float mx = -INFINITY;
    for (int64_t l = 0; l < n; ++l) mx = scores[l] > mx ? scores[l] : mx;
    float sum = 0.0f;
    for (int64_t l = 0; l < n; ++l) sum += (scores[l] = expf(scores[l] - mx));
    for (int64_t j = 0; j < d; ++j) out[j] = 0.0f;
    for (int64_t l = 0; l < n; ++l) {
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

/* The work of a decode step (item i = row i, each at its own position, with its own cache row),
   of a prompt chunk (item i = token i of one sequence at pos0 + i, all in cache row 0) or of a
   ragged step (item i in cache row rows[i] at positions[i]). */
typedef struct {
    const float *q, *k, *v;
    float *cache_k, *cache_v;
    int64_t H, KV, D, max_ctx, pos0, window;
    const int64_t *rows, *positions;
    int chunk;
    float scale, softcap;
    rope_t rope;
    float *out;
} step_t;

static int64_t item_pos(const step_t *s, int64_t i) {
    return s->positions ? s->positions[i] : s->pos0 + (s->chunk ? i : 0);
}

/* Item i's cache of KV head g (keys or values, (max_ctx, D)) and its rope angles. */
static float *item_cache(const step_t *s, float *cache, int64_t i, int64_t g) {
    int64_t row = s->rows ? s->rows[i] : s->chunk ? 0 : i;
    return cache + (row * s->KV + g) * s->max_ctx * s->D;
}

static int64_t item_angles(const step_t *s, int64_t i) {
    return i * s->rope.row + item_pos(s, i) * s->rope.pos;
}

/* Item i's new key (rotated) and value of KV head g into the cache at its position. */
static void store_kv(const step_t *s, int64_t i, int64_t g) {
    int64_t D = s->D, pos = item_pos(s, i), at = item_angles(s, i);
    float *key = item_cache(s, s->cache_k, i, g) + pos * D;
    memcpy(key, s->k + (i * s->KV + g) * D, sizeof(float) * D);
    rope_head(key, (int)D, s->rope.cos + at, s->rope.sin + at, s->rope.step, s->rope.interleaved);
    memcpy(item_cache(s, s->cache_v, i, g) + pos * D, s->v + (i * s->KV + g) * D,
           sizeof(float) * D);
}

/* Item i's query heads of KV head g, rotated and attended over keys [pos - window + 1, pos]
   (0..pos when window <= 0). */
static void attend_heads(const step_t *s, int64_t i, int64_t g, int slot) {
    int64_t D = s->D, per_group = s->H / s->KV, pos = item_pos(s, i), at = item_angles(s, i);
    int64_t lo = s->window > 0 && pos - s->window + 1 > 0 ? pos - s->window + 1 : 0;
    float *scores = thread_scratch(slot, pos + 1 - lo);
    if (!scores) abort();
    const float *keys = item_cache(s, s->cache_k, i, g), *values = item_cache(s, s->cache_v, i, g);
    float qh[MAX_HEAD_DIM] __attribute__((aligned(64)));
    for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) {
        memcpy(qh, s->q + (i * s->H + h) * D, sizeof(float) * D);
        rope_head(qh, (int)D, s->rope.cos + at, s->rope.sin + at, s->rope.step,
                  s->rope.interleaved);
        attend_head(qh, keys, values, lo, pos, D, s->scale, s->softcap, scores,
                    s->out + (i * s->H + h) * D);
    }
}

static void step_task(void *arg, int64_t task, int slot) { /* a decode row: its own cache */
    const step_t *s = arg;
    store_kv(s, task / s->KV, task % s->KV);
    attend_heads(s, task / s->KV, task % s->KV, slot);
}

static void store_task(void *arg, int64_t task, int slot) {
    (void)slot;
    const step_t *s = arg;
    store_kv(s, task / s->KV, task % s->KV);
}

static void attend_task(void *arg, int64_t task, int slot) {
    const step_t *s = arg;
    attend_heads(s, task / s->KV, task % s->KV, slot);
}

/* Rope, cache write and attention of n items (see step_t): q, out (n, H, D); k, v (n, KV, D);
   caches (rows, KV, max_ctx, D); item i's rope angles at cos + i * rope.row + pos * rope.pos
   (sin alike), one every rope.step floats: per-item tables (row) or whole tables indexed by
   position (pos); softcap > 0 caps the scores (cap_scores). The (item, KV head) pairs are split over the kernel threads, each computed
   alone, so a row's result never depends on how many share the step; a chunk's keys are all
   stored before any of its tokens attends (token i sees tokens 0..i of the chunk). */
int attend_step(const float *q, const float *k, const float *v, float *cache_k, float *cache_v,
                int64_t n, int64_t H, int64_t KV, int64_t D, int64_t max_ctx,
                const int64_t *rows, const int64_t *positions, int64_t pos0, int chunk,
                int64_t window, float scale, float softcap, rope_t rope, float *out) {
    step_t s = {q, k, v, cache_k, cache_v, H, KV, D, max_ctx, pos0, window, rows, positions,
                chunk, scale, softcap, rope, out};
    if (!chunk) return parallel_for(n * KV, step_task, &s);
    int rc = parallel_for(n * KV, store_task, &s);
    return rc ? rc : parallel_for(n * KV, attend_task, &s);
}

#if !ATTN_AVX512
static inline float activate(float x, int act) {
    if (act == ACT_SILU) return x / (1.0f + expf(-x));
    const float c = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}
#endif

/* Element by element, every element through the same formula (masked tail), so a row's result
   never depends on where it sits in a batch. */
void act_mul(const float *gate, const float *up, int64_t n, int act, float *out) {
#if ATTN_AVX512
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(m, gate + i), a;
        if (act == ACT_SILU) {
            a = _mm512_div_ps(x, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        } else { /* tanh(y) = 1 - 2 / (1 + e^2y) */
            __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
            __m512 y = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                                     _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x));
            __m512 e = exp16(_mm512_add_ps(y, y));
            __m512 t = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(one, e)));
            a = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, t));
        }
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(a, _mm512_maskz_loadu_ps(m, up + i)));
    }
#else
    for (int64_t i = 0; i < n; ++i) out[i] = activate(gate[i], act) * up[i];
#endif
}
