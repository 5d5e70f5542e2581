/* A decoder layer stack (llama family and Gemma 3) for one token, on buffers planned once.

   Per layer: RMSNorm -> q, k, v products (one call) -> [q/k head norms] -> attention step ->
   o product -> [post-attention norm] -> residual -> RMSNorm -> gate, up products (one call) ->
   act(gate) * up -> down product -> [post-FFN norm] -> residual; bracketed steps are Gemma 3's
   (HF modeling_gemma3.py), the rest is both. The PyTorch modules (warmload/models) are the
   reference this must equal; it only removes the ~300 Python-level ops of a step. */

#include "kernels.h"

void plan_free(plan_t *P) {
    if (!P) return;
    free(P->layers);
    free(P->buffer);
    free(P);
}

plan_t *plan_alloc(int64_t n_layers, int64_t rows, int64_t chunk_tokens, int64_t hidden,
                   int64_t H, int64_t KV, int64_t D, int64_t inter, int64_t max_ctx) {
    plan_t *P = calloc(1, sizeof(plan_t));
    if (!P) return NULL;
    P->n_layers = n_layers, P->rows = rows, P->chunk_tokens = chunk_tokens;
    P->hidden = hidden, P->H = H, P->KV = KV, P->D = D, P->inter = inter, P->max_ctx = max_ctx;
    P->layers = calloc((size_t)n_layers, sizeof(layer_plan_t));
    int64_t B = rows > chunk_tokens ? rows : chunk_tokens; /* rows of every buffer */
    int64_t sizes[] = {B * hidden, B * H * D, B * KV * D, B * KV * D, B * H * D,
                       B * hidden, B * inter, B * inter};
    /* each buffer on its own cache lines: the threads of a product write neighbouring rows */
    int64_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i)
        total += sizes[i] = (sizes[i] + 15) / 16 * 16;
    P->buffer = aligned_alloc(64, sizeof(float) * (size_t)total);
    if (!P->layers || !P->buffer) {
        plan_free(P);
        return NULL;
    }
    float *at = P->buffer;
    float **slots[] = {&P->h, &P->q, &P->k, &P->v, &P->att, &P->o, &P->g, &P->u};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        *slots[i] = at;
        at += sizes[i];
    }
    return P;
}

static void add_into(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

static int run_layer(const plan_t *P, const layer_plan_t *L, float *x, int64_t B,
                     const int64_t *positions, int64_t pos0, int chunk) {
    int64_t hidden = P->hidden, H = P->H, KV = P->KV, D = P->D;
    int rc;
    rms_norm_rows(x, L->w_in, B, hidden, P->eps, P->offset, P->h);
    part_t qkv[3] = {L->q, L->k, L->v};
    if ((rc = product(qkv, 3, P->h, hidden, B))) return rc;
    if (L->w_q_norm) {
        rms_norm_rows(P->q, L->w_q_norm, B * H, D, P->eps, P->offset, P->q);
        rms_norm_rows(P->k, L->w_k_norm, B * KV, D, P->eps, P->offset, P->k);
    }
    rope_t rope = {L->cos, L->sin, 0, L->rope_pos_stride, L->rope_step, L->interleaved};
    if ((rc = attend_step(P->q, P->k, P->v, L->cache_k, L->cache_v, B, H, KV, D, P->max_ctx,
                          positions, pos0, chunk, L->window, L->scale, rope, P->att)))
        return rc;
    part_t o = L->o;
    if ((rc = product(&o, 1, P->att, H * D, B))) return rc;
    if (L->w_attn_out) rms_norm_rows(P->o, L->w_attn_out, B, hidden, P->eps, P->offset, P->o);
    add_into(x, P->o, B * hidden);
    rms_norm_rows(x, L->w_ffn_in, B, hidden, P->eps, P->offset, P->h);
    part_t gate_up[2] = {L->gate, L->up};
    if ((rc = product(gate_up, 2, P->h, hidden, B))) return rc;
    act_mul(P->g, P->u, B * P->inter, P->act, P->g);
    part_t down = L->down;
    if ((rc = product(&down, 1, P->g, P->inter, B))) return rc;
    if (L->w_ffn_out) rms_norm_rows(P->o, L->w_ffn_out, B, hidden, P->eps, P->offset, P->o);
    add_into(x, P->o, B * hidden);
    return 0;
}

int plan_run(const plan_t *P, float *x, int64_t n_tokens, const int64_t *positions,
             int64_t pos0, int chunk) {
    if (!chunk && n_tokens != P->rows) return -4;
    if (chunk) {
        if (P->rows != 1 || n_tokens < 1 || n_tokens > P->chunk_tokens || positions) return -4;
        if (pos0 < 0 || pos0 + n_tokens > P->max_ctx) return -3;
    }
    for (int64_t b = 0; !chunk && b < P->rows; ++b) {
        int64_t pos = positions ? positions[b] : pos0;
        if (pos < 0 || pos >= P->max_ctx) return -3;
    }
    for (int64_t i = 0; i < P->n_layers; ++i) {
        int rc = run_layer(P, &P->layers[i], x, n_tokens, positions, pos0, chunk);
        if (rc) return rc;
    }
    return 0;
}
