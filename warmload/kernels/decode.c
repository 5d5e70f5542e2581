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

plan_t *plan_alloc(int64_t n_layers, int64_t hidden, int64_t H, int64_t KV, int64_t D,
                   int64_t inter, int64_t max_ctx) {
    plan_t *P = calloc(1, sizeof(plan_t));
    if (!P) return NULL;
    P->n_layers = n_layers;
    P->hidden = hidden, P->H = H, P->KV = KV, P->D = D, P->inter = inter, P->max_ctx = max_ctx;
    P->layers = calloc((size_t)n_layers, sizeof(layer_plan_t));
    int64_t sizes[] = {hidden, H * D, KV * D, KV * D, H * D, hidden, inter, inter, max_ctx};
    int64_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) total += sizes[i];
    P->buffer = malloc(sizeof(float) * (size_t)total);
    if (!P->layers || !P->buffer) {
        plan_free(P);
        return NULL;
    }
    float *at = P->buffer;
    float **slots[] = {&P->h, &P->q, &P->k, &P->v, &P->att, &P->o, &P->g, &P->u, &P->scores};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        *slots[i] = at;
        at += sizes[i];
    }
    return P;
}

static void add_into(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

static int run_layer(const plan_t *P, const layer_plan_t *L, float *x, int64_t pos) {
    int64_t hidden = P->hidden, H = P->H, KV = P->KV, D = P->D;
    int rc;
    rms_norm_rows(x, L->w_in, 1, hidden, P->eps, P->offset, P->h);
    part_t qkv[3] = {L->q, L->k, L->v};
    if ((rc = product(qkv, 3, P->h, hidden, 1))) return rc;
    if (L->w_q_norm) {
        rms_norm_rows(P->q, L->w_q_norm, H, D, P->eps, P->offset, P->q);
        rms_norm_rows(P->k, L->w_k_norm, KV, D, P->eps, P->offset, P->k);
    }
    attend_step(P->q, P->k, P->v, L->cache_k, L->cache_v, 1, H, KV, D, P->max_ctx, NULL, pos,
                L->window, L->scale, L->cos + pos * L->rope_pos_stride,
                L->sin + pos * L->rope_pos_stride, 0, L->rope_step, L->interleaved, P->scores,
                P->att);
    part_t o = L->o;
    if ((rc = product(&o, 1, P->att, H * D, 1))) return rc;
    if (L->w_attn_out) rms_norm_rows(P->o, L->w_attn_out, 1, hidden, P->eps, P->offset, P->o);
    add_into(x, P->o, hidden);
    rms_norm_rows(x, L->w_ffn_in, 1, hidden, P->eps, P->offset, P->h);
    part_t gate_up[2] = {L->gate, L->up};
    if ((rc = product(gate_up, 2, P->h, hidden, 1))) return rc;
    act_mul(P->g, P->u, P->inter, P->act, P->g);
    part_t down = L->down;
    if ((rc = product(&down, 1, P->g, P->inter, 1))) return rc;
    if (L->w_ffn_out) rms_norm_rows(P->o, L->w_ffn_out, 1, hidden, P->eps, P->offset, P->o);
    add_into(x, P->o, hidden);
    return 0;
}

int plan_run(const plan_t *P, float *x, int64_t pos) {
    if (pos < 0 || pos >= P->max_ctx) return -3;
    for (int64_t i = 0; i < P->n_layers; ++i) {
        int rc = run_layer(P, &P->layers[i], x, pos);
        if (rc) return rc;
    }
    return 0;
}
