/* Shared declarations of warmload's CPU kernels (the extensions warmload.kernels._cpu_<variant>:
   one build per ISA variant, setup.py; picked at import by dispatch.py).

   quants.c     GGML block formats: row dots against 8-bit activations, block dequantizers
   gemm.c       prompt chunks: unpacked weight rows times many 8-bit tokens (VNNI)
   pool.c       the thread team and `product`: x times one or more packed weight matrices
   attention.c  one decode step of attention (rope, cache write, softmax over the window)
   decode.c     a whole decoder layer stack for one token, on preplanned buffers
   module.c     the Python bindings

   Block layouts: llama.cpp ggml/src/ggml-common.h. */

#ifndef WARMLOAD_KERNELS_H
#define WARMLOAD_KERNELS_H

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
/* Windows' C runtimes have no aligned_alloc, and what _aligned_malloc returns must go back
   through _aligned_free: every allocation of the kernels takes that pair (MinGW-w64 builds). */
#include <malloc.h>
static inline void *win_calloc(size_t n, size_t size) {
    void *p = _aligned_malloc(n * size, 16);
    if (p) memset(p, 0, n * size);
    return p;
}
#define aligned_alloc(align, n) _aligned_malloc((n), (align))
#define malloc(n) _aligned_malloc((n), 16)
#define calloc(n, size) win_calloc((n), (size))
#define free(p) _aligned_free(p)
#endif

#if defined(__AVX2__)
#include <immintrin.h>
#define HAVE_AVX2 1
#else
#define HAVE_AVX2 0
#endif

/* aarch64 NEON kernels (headers in arm/); -DWARMLOAD_GENERIC builds the plain C ones instead */
#if defined(__aarch64__) && defined(__ARM_NEON) && !defined(WARMLOAD_GENERIC)
#define HAVE_NEON 1
#else
#define HAVE_NEON 0
#endif

/* ---------------------------------------------------------------- types and block layouts */

enum {
    T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
    T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_IQ4_NL = 20,
    T_IQ4_XS = 23, T_BF16 = 30,
};

#define QK 32   /* activation block */
#define QK_K 256

typedef struct { float d; float s; int8_t q[QK]; } xblock; /* s = d * sum(q) */

static inline float fp16_to_f32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#elif defined(__aarch64__)
    __fp16 f;
    memcpy(&f, &h, 2);
    return (float)f;
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) { bits = sign; }
        else { float f = ldexpf((float)man, -24); memcpy(&bits, &f, 4); bits |= sign; }
    } else if (exp == 31) { bits = sign | 0x7f800000 | (man << 13); }
    else { bits = sign | ((exp + 112) << 23) | (man << 13); }
    float out; memcpy(&out, &bits, 4); return out;
#endif
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16; float out; memcpy(&out, &bits, 4); return out;
}

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline float rdf16(const uint8_t *p) { return fp16_to_f32(rd16(p)); }

static inline void scale_min_k4(int j, const uint8_t *q, int *d, int *m) {
    if (j < 4) { *d = q[j] & 63; *m = q[j + 4] & 63; }
    else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}


/* ------------------------------------------------------------------------ quants.c */

typedef float (*dot_fn)(const uint8_t *, const xblock *, int);
/* 4 rows of x at once: out[t * out_stride] = row . x_t, x_t = x + t * x_stride blocks */
typedef void (*dotn_fn)(const uint8_t *w, const xblock *x, int nb, int64_t x_stride, float *out,
                        int64_t out_stride);
typedef void (*deq_fn)(const uint8_t *, float *);
/* One block -> bytes q, a float scale per 4 values and, for q_unsigned types, an offset
   coefficient c per 32 values: the block's values are scale * q + c (gemm.c). */
typedef void (*to_q8_fn)(const uint8_t *block, int8_t *q, float *scale, float *c);

typedef struct {
    int id;
    int block;      /* elements per weight block */
    int type_size;  /* bytes per weight block */
    dot_fn dot;     /* integer path (x quantized), or NULL */
    deq_fn deq;     /* float path: one block -> floats */
    dotn_fn dotn;   /* integer path for 4 rows of x at once, or NULL */
    to_q8_fn to_q8; /* integer products of many tokens (gemm.c), or NULL */
    int q_unsigned; /* to_q8 writes unsigned q and offset coefficients c; else signed q */
    int offset_values; /* values per offset coefficient c: 16 (Q2_K's mins), else 0 = 32 */
} qtype;

extern const qtype QTYPES[];
extern const int N_QTYPES;
const qtype *find_type(int id);
float dot_f32(const float *a, const float *b, int n);
void quantize_x(const float *x, xblock *out, int nb);

/* -------------------------------------------------------------------------- pool.c */

#define MAX_PARTS 4
#define MAX_THREADS 64

/* How a part is computed: integer dots on the 8-bit x (types with a dot only), dequantized rows
   dotted with the float x, or no product at all: the dequantized rows written to y (n_rows, k);
   MODE_GEMM: integer products of rows unpacked once for many tokens (gemm.c; types with to_q8
   on a VNNI machine, else it falls back to MODE_FLOAT). Where gemm.c unpacks in registers,
   MODE_INT8 becomes MODE_GEMM: decode steps, batches and short prompts share one arithmetic.
   MODE_DEQUANT_BF16 is MODE_DEQUANT rounded to bfloat16 (nearest even), y then (n_rows, k)
   uint16: the weights of a bfloat16 GEMM, half the bytes and no second pass to convert. */
enum {
    MODE_FLOAT = 0,
    MODE_INT8 = 1,
    MODE_DEQUANT = 2,
    MODE_GEMM = 3,
    MODE_ROW_DOTS = 4,
    MODE_DEQUANT_BF16 = 5,
};
/* MODE_ROW_DOTS asks for the per-row integer dots as such (MODE_INT8 never remapped): how
   tests check them on machines whose decode steps take MODE_GEMM. */

/* One weight matrix of a product: y[t, n] = W[n] . x[t] for n < n_rows. */
typedef struct {
    const qtype *type;
    const uint8_t *w;
    int64_t n_rows, row_bytes, chunk, first_chunk;
    float *y;
    int mode;
} part_t;

/* task(arg, i, slot) for i in 0..n, split over the kernel threads (slot: the thread's number,
   for thread_scratch); 0, or -2 (too many items). Callers hold kernels_lock, as for product. */
typedef void (*task_fn)(void *arg, int64_t i, int slot);
int parallel_for(int64_t n, task_fn task, void *arg);
/* A float buffer of at least n owned by thread `slot` (kept between calls), or NULL. */
float *thread_scratch(int slot, int64_t n);

/* part p of a product: type, weights, rows, output and mode (MODE_INT8 falls back to
   MODE_FLOAT for types without an integer dot) */
void make_part(part_t *p, const qtype *type, const void *w, int64_t n_rows, int64_t k, float *y,
               int mode);
/* The kernels run one product at a time: callers hold this lock around `product`. */
void kernels_lock(void);
void kernels_unlock(void);
/* x (n_tokens, k) times 1..MAX_PARTS matrices; 0, or -1 (no memory) / -2 (too large). */
int product(part_t *parts, int n_parts, const float *x, int64_t k, int64_t n_tokens);
int set_thread_count(int n); /* 0, or -1 if threads could not start */
int thread_count(void);

/* -------------------------------------------------------------------------- gemm.c */

/* x of a prompt chunk, quantized for gemm_rows (see gemm.c). */
typedef struct {
    int64_t n_tokens, kp, nb; /* kp: k padded to whole vectors; nb = k / 32 */
    uint8_t *q;               /* (n_tokens, kp): q + 128 (against signed weights) */
    int8_t *qs;               /* (n_tokens, kp): q (against unsigned weights) */
    float *scale;             /* (n_tokens, kp / 4): the block's d, once per 4 values */
    float *sum;               /* (n_tokens, nb): d * sum(q) per block */
    float *sum16;             /* (n_tokens, 2 nb): d * sum(q) per half block (Q2_K's mins) */
    /* the same q laid out for 32-value weight types, 16 blocks (a group) at a time: vector g
       of group G holds values 4g..4g+3 of each of blocks 16G..16G+15 (gemm.c, row_grouped) */
    int64_t ng;               /* groups: nb / 16 rounded up (padding blocks: q 0, d 0) */
    int8_t *gs;               /* (n_tokens, ng * 512): q */
    uint8_t *gu;              /* (n_tokens, ng * 512): q + 128 */
    float *gd;                /* (n_tokens, ng * 16): d per block */
    float *gsum;              /* (n_tokens, ng * 16): d * sum(q) per block */
    /* for 16-value sub-blocks (Q6_K), when k is whole super-blocks of 256: vector g of
       super-block S holds values 4g..4g+3 of each of its 16 sub-blocks */
    int64_t n_super;          /* k / 256, or 0 */
    uint8_t *su;              /* (n_tokens, k): q + 128 */
    float *sd;                /* (n_tokens, k / 16): d of the block of 32 holding the sub-block */
} gemm_x_t;

/* 0: no integer products of many tokens (no AVX2: generic builds); GEMM_ALL_STEPS: there is
   one (AVX-512 VNNI: the common types unpacked in registers; AVX-VNNI and AVX2 (dpbusd as
   maddubs + madd): through a buffer) and decode steps take it too (make_part), so a token's
   result does not depend on how it was batched. 1 is no longer returned (it was: prompt
   chunks only). */
enum { GEMM_ALL_STEPS = 2 };
int gemm_available(void);
/* gx <- x (n_tokens, k), in a buffer owned by gemm.c; 0, or -1 (no memory / no VNNI). */
int gemm_prepare_x(gemm_x_t *gx, const float *x, int64_t k, int64_t n_tokens);
/* p->y[t, r] for rows r0..r1 of part p and every token of gx. */
/* c: room for (r1 - r0) * 2 * gx->nb floats (each row's offset coefficients) */
void gemm_rows(const gemm_x_t *gx, const part_t *p, int64_t r0, int64_t r1, float *c);

/* --------------------------------------------------------------------- attention.c */

void rope_head(float *x, int d, const float *cos, const float *sin, int64_t step,
               int interleaved);
#define MAX_HEAD_DIM 1024
/* Where a row's rope angles are: cos/sin + row * b + pos * position, one every step floats. */
typedef struct {
    const float *cos, *sin;
    int64_t row, pos, step;
    int interleaved;
} rope_t;
/* A decode step (n rows, row b at positions[b] or pos0, each its own cache row) or, with
   chunk, n tokens whose keys are all stored before any attends: of one sequence at pos0.. in
   cache row 0, or with rows, token i in cache row rows[i] at positions[i] (a ragged step: any
   rows' decode tokens and prompt chunks at once); scores soft-capped where softcap > 0 (0: off);
   0, or -2 (too many items). */
int attend_step(const float *q, const float *k, const float *v, float *cache_k, float *cache_v,
                int64_t n, int64_t H, int64_t KV, int64_t D, int64_t max_ctx,
                const int64_t *rows, const int64_t *positions, int64_t pos0, int chunk,
                int64_t window, float scale, float softcap, rope_t rope, float *out);
enum { ACT_SILU = 0, ACT_GELU_TANH = 1 };
/* out = act(gate) * up, element-wise (out may be gate) */
void act_mul(const float *gate, const float *up, int64_t n, int act, float *out);
void rms_norm_rows(const float *x, const float *w, int64_t n_rows, int64_t dim, float eps,
                   float offset, float *y);

/* ------------------------------------------------------------------------ decode.c */

typedef struct {
    part_t q, k, v, o, gate, up, down;
    const float *w_in, *w_attn_out, *w_ffn_in, *w_ffn_out, *w_q_norm, *w_k_norm; /* or NULL */
    const float *b_q, *b_k, *b_v; /* q/k/v biases (Qwen2), or NULL */
    float *cache_k, *cache_v;           /* (rows, KV, max_ctx, D) */
    const float *cos, *sin;             /* angle j of position p at [p * pos_stride + j * step] */
    int64_t rope_pos_stride, rope_step;
    int interleaved;
    int64_t window; /* <= 0: global */
    float scale;
    float softcap; /* attention scores soft-cap (Gemma 2), 0: none */
} layer_plan_t;

typedef struct {
    int64_t n_layers, rows, chunk_tokens, hidden, H, KV, D, inter, max_ctx;
    float eps, offset;
    int act; /* 0 silu, 1 gelu (tanh) */
    layer_plan_t *layers; /* their parts' outputs are set per step (decode.c activations) */
} plan_t;

/* A plan of `rows` cache rows; chunk_tokens > 0: it takes prompt chunks (one-row plans) and
   ragged steps of up to that many tokens. */
plan_t *plan_alloc(int64_t n_layers, int64_t rows, int64_t chunk_tokens, int64_t hidden,
                   int64_t H, int64_t KV, int64_t D, int64_t inter, int64_t max_ctx);
void plan_free(plan_t *P);
/* x (n_tokens, hidden) through every layer, in place. A decode step (chunk 0, n_tokens = rows):
   row b at positions[b], or every row at pos0 when positions is NULL. A prompt chunk (chunk 1,
   n_tokens <= chunk_tokens, positions NULL, a one-row plan): token i of the row's sequence at
   pos0 + i, each attending to the cache and the chunk's tokens before it. A ragged step (chunk
   1, rows and positions given, n_tokens <= chunk_tokens): token i in row rows[i] at
   positions[i], attending as a chunk's token does. 0, a product() error, -3 for a position
   outside the cache, -4 for a shape the plan cannot take. The caller holds kernels_lock(). */
int plan_run(const plan_t *P, float *x, int64_t n_tokens, const int64_t *rows,
             const int64_t *positions, int64_t pos0, int chunk);

/* ------------------------------------------- kquant.c, kquant_search.c, kquant_x8.c */

/* llama.cpp's nearest_int: round half to even by the 1.5 * 2**23 addition (|fval| < 2**22;
   out-of-range input gives the reference's garbage, which callers clamp like the reference) */
static inline int kq_nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}
#define KMAX(a, b) ((a) > (b) ? (a) : (b))
#define KMIN(a, b) ((a) < (b) ? (a) : (b))

/* kquant_search.c: the searches of a super-block's groups: make_qkx2_quants on n_groups groups
   of n (weights w alongside; scales, mins and quants L out), make_qx_quants (q3 = 0) or
   make_q3_quants (q3 = 1) on 16 groups of 16 */
void kq_search_qkx2(const float *x, const float *w, int n, int n_groups, int nmax, float rmin,
                    float rdelta, int nstep, int use_mad, float *scales, float *mins, uint8_t *L,
                    int simd);
void kq_search_sym16(const float *x, int nmax, int q3, float *scales, int8_t *L, int simd);

/* bytes of one K-quant block of 256 weights (Q2_K .. Q6_K), 0 for other types */
int64_t kquant_block_size(int type_id);
/* n_blocks * 256 float32 -> K-quant blocks as llama.cpp's quantize_row_*_ref writes them;
   0, or -1 for a type without a kernel. Thread-safe (no shared state). simd: run the scale
   searches 8 groups at a time (AVX2 builds; the bytes are the same either way). */
int kquant_blocks(int type_id, const float *x, int64_t n_blocks, uint8_t *y, int simd);
#define KQUANT_SIMD HAVE_AVX2

/* kquant_x8.c (AVX2): the searches on 8 groups at once, transposed: tx[i * 8 + g] is element
   i of group g; the integer quants come back as tL[i * 8 + g] */
void qkx2_quants_x8(int n, int nmax, const float *tx, const float *tw, int32_t *tL, float *scale,
                    float *the_min, float rmin, float rdelta, int nstep, int use_mad);
void qx_quants_rmse1_x8(int n, int nmax, const float *tx, int32_t *tL, float *scale);
void q3_quants_rmse_x8(int n, int nmax, const float *tx, int32_t *tL, float *scale);

#endif
