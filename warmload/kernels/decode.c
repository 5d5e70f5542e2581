/* A decoder layer stack for a decode step or a short prompt chunk, as warmload/models/base.py's
   LayerSpec describes it (fused.py builds the plan from the specs and refuses what this cannot
   run: LayerNorm, parallel blocks, soft-capped scores, layers without rope).

   Per layer: RMSNorm -> q, k, v products (one call) -> [q/k/v biases] -> [q/k head norms] ->
   attention step -> o product -> [post-attention norm] -> residual -> RMSNorm -> gate, up
   products (one call) -> act(gate) * up -> down product -> [post-FFN norm] -> residual;
   bracketed steps are present when the layer has them (biases: Qwen2; head norms: Qwen3,
   Gemma 3; post norms: Gemma 3). A fused qkv or gate_up matrix (Phi-3) arrives as three or two
   matrices over row ranges of one buffer (rows of GGML blocks are independent). The PyTorch modules (warmload/models) are the
   reference this must equal; it only removes the ~300 Python-level ops of a step. */

#include "kernels.h"

void plan_free(plan_t *P) {
    if (!P) return;
    free(P->layers);
    free(P);
}

plan_t *plan_alloc(int64_t n_layers, int64_t rows, int64_t chunk_tokens, int64_t hidden,
                   int64_t H, int64_t KV, int64_t D, int64_t inter, int64_t max_ctx) {
    plan_t *P = calloc(1, sizeof(plan_t));
    if (!P) return NULL;
    P->n_layers = n_layers, P->rows = rows, P->chunk_tokens = chunk_tokens;
    P->hidden = hidden, P->H = H, P->KV = KV, P->D = D, P->inter = inter, P->max_ctx = max_ctx;
    P->layers = calloc((size_t)n_layers, sizeof(layer_plan_t));
    if (!P->layers) {
        plan_free(P);
        return NULL;
    }
    return P;
}

/* The activations of a step: one set for every plan, as plans run one at a time (the caller
   holds kernels_lock), grown to the largest step or chunk seen. */
typedef struct {
    float *h, *q, *k, *v, *att, *o, *g, *u;
} activations_t;

static struct {
    float *buffer;
    int64_t cap; /* floats */
} g_act;

static int activations(const plan_t *P, int64_t B, activations_t *a) {
    int64_t sizes[] = {B * P->hidden, B * P->H * P->D, B * P->KV * P->D, B * P->KV * P->D,
                       B * P->H * P->D, B * P->hidden, B * P->inter, B * P->inter};
    /* each buffer on its own cache lines: the threads of a product write neighbouring rows */
    int64_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i)
        total += sizes[i] = (sizes[i] + 15) / 16 * 16;
    if (g_act.cap < total) {
        free(g_act.buffer);
        g_act.buffer = aligned_alloc(64, sizeof(float) * (size_t)total);
        g_act.cap = g_act.buffer ? total : 0;
        if (!g_act.buffer) return -1;
    }
    float *at = g_act.buffer;
    float **slots[] = {&a->h, &a->q, &a->k, &a->v, &a->att, &a->o, &a->g, &a->u};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        *slots[i] = at;
        at += sizes[i];
    }
    return 0;
}

/* A layer's matrix writing into y. */
static part_t into(part_t p, float *y) {
    p.y = y;
    return p;
}

static void add_into(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

/* y (B, n) += bias (n) on every row (Qwen2's q/k/v biases, as HF's nn.Linear adds them) */
static void add_bias(float *y, const float *bias, int64_t B, int64_t n) {
    if (!bias) return;
    for (int64_t b = 0; b < B; ++b) add_into(y + b * n, bias, n);
}

static int run_layer(const plan_t *P, const layer_plan_t *L, float *x, int64_t B,
                     const int64_t *rows, const int64_t *positions, int64_t pos0, int chunk,
                     const activations_t *a) {
    int64_t hidden = P->hidden, H = P->H, KV = P->KV, D = P->D;
    int rc;
    rms_norm_rows(x, L->w_in, B, hidden, P->eps, P->offset, a->h);
    part_t qkv[3] = {into(L->q, a->q), into(L->k, a->k), into(L->v, a->v)};
    if ((rc = product(qkv, 3, a->h, hidden, B))) return rc;
    add_bias(a->q, L->b_q, B, H * D);
    add_bias(a->k, L->b_k, B, KV * D);
    add_bias(a->v, L->b_v, B, KV * D);
    if (L->w_q_norm) {
        rms_norm_rows(a->q, L->w_q_norm, B * H, D, P->eps, P->offset, a->q);
        rms_norm_rows(a->k, L->w_k_norm, B * KV, D, P->eps, P->offset, a->k);
    }
    rope_t rope = {L->cos, L->sin, 0, L->rope_pos_stride, L->rope_step, L->interleaved};
    if ((rc = attend_step(a->q, a->k, a->v, L->cache_k, L->cache_v, B, H, KV, D, P->max_ctx,
                          rows, positions, pos0, chunk, L->window, L->scale, L->softcap, rope,
                          a->att)))
        return rc;
    part_t o = into(L->o, a->o);
    if ((rc = product(&o, 1, a->att, H * D, B))) return rc;
    if (L->w_attn_out) rms_norm_rows(a->o, L->w_attn_out, B, hidden, P->eps, P->offset, a->o);
    add_into(x, a->o, B * hidden);
    rms_norm_rows(x, L->w_ffn_in, B, hidden, P->eps, P->offset, a->h);
    part_t gate_up[2] = {into(L->gate, a->g), into(L->up, a->u)};
    if ((rc = product(gate_up, 2, a->h, hidden, B))) return rc;
    act_mul(a->g, a->u, B * P->inter, P->act, a->g);
    part_t down = into(L->down, a->o);
    if ((rc = product(&down, 1, a->g, P->inter, B))) return rc;
    if (L->w_ffn_out) rms_norm_rows(a->o, L->w_ffn_out, B, hidden, P->eps, P->offset, a->o);
    add_into(x, a->o, B * hidden);
    return 0;
}

int plan_run(const plan_t *P, float *x, int64_t n_tokens, const int64_t *rows,
             const int64_t *positions, int64_t pos0, int chunk) {
    if (rows && (!chunk || !positions)) return -4;
    if (!chunk && n_tokens != P->rows) return -4;
    if (chunk && (n_tokens < 1 || n_tokens > P->chunk_tokens || (!rows && P->rows != 1)))
        return -4;
    if (chunk && !rows) {
        if (positions) return -4;
        if (pos0 < 0 || pos0 + n_tokens > P->max_ctx) return -3;
    }
    for (int64_t i = 0; (!chunk || rows) && i < n_tokens; ++i) {
        if (rows && (rows[i] < 0 || rows[i] >= P->rows)) return -4;
        int64_t pos = positions ? positions[i] : pos0;
        if (pos < 0 || pos >= P->max_ctx) return -3;
    }
    activations_t a;
    if (activations(P, n_tokens, &a)) return -1;
    for (int64_t i = 0; i < P->n_layers; ++i) {
        int rc = run_layer(P, &P->layers[i], x, n_tokens, rows, positions, pos0, chunk, &a);
        if (rc) return rc;
    }
    return 0;
}
