/* The thread team and `product`: x (n_tokens, k) float32 times one or more packed weight
   matrices, split over rows between the calling thread and workers that spin briefly between
   products (a decode step issues ~100 of them a few microseconds apart) and then sleep; and
   `parallel_for`, any other per-item work (a decode step's attention) on the same team. */

#include "kernels.h"

/* ----------------------------------------------------------------------------- thread pool */
/* A product is split into chunks of rows. Threads claim chunks with a CAS on one 64-bit word
   holding [generation:24][n_chunks:20][next chunk:20], so a worker that wakes late (the machine
   is busy, it was descheduled) finds the generation moved on and claims nothing: the caller never
   waits for a thread that has not started, only for chunks that were claimed. The job's fields
   stay valid while any chunk of it is unfinished, which is all a claimer relies on. */

/* A product of one x with 1..MAX_PARTS matrices (q, k and v; gate and up), whose chunks of
   rows are numbered one after the other. */
typedef struct {
    task_fn task; /* a parallel_for (each chunk one item), or NULL: a product */
    void *task_arg;
    part_t parts[MAX_PARTS];
    int n_parts;
    int64_t k, n_tokens;
    const float *x;
    const xblock *xq;
    gemm_x_t gx; /* x of MODE_GEMM parts */
    atomic_ullong claim;
    atomic_llong done;  /* chunks finished */
} job_t;

#define MAX_CHUNKS ((1 << 20) - 1)
#define SPIN_ROUNDS 2000 /* yields (~1 us each when the core is free) before a worker sleeps */

static job_t g_job;
static atomic_uint g_generation; /* published after the job's fields */
static atomic_int g_sleepers;
static atomic_int g_stop;
static pthread_mutex_t g_wake_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wake_cv = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t g_submit_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_t g_workers[MAX_THREADS];
static int g_n_workers;

static inline void cpu_relax(void) {
#if HAVE_AVX2
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* float32 -> bfloat16, round to nearest even (finite values: dequantized weights). */
static void round_to_bf16(const float *x, uint16_t *out, int64_t n) {
    const uint32_t *bits = (const uint32_t *)x;
    for (int64_t i = 0; i < n; ++i)
        out[i] = (uint16_t)((bits[i] + 0x7FFF + ((bits[i] >> 16) & 1)) >> 16);
}

static void run_rows(const job_t *j, const part_t *p, int64_t r0, int64_t r1, float *row) {
    int64_t nb32 = j->k / QK, blocks = j->k / p->type->block;
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t *w = p->w + r * p->row_bytes;
        if (p->mode == MODE_INT8) {
            int64_t t = 0;
            if (p->type->dotn) /* unpack each block once for 4 rows of x */
                for (; t + 4 <= j->n_tokens; t += 4)
                    p->type->dotn(w, j->xq + t * nb32, (int)nb32, nb32, p->y + t * p->n_rows + r,
                                  p->n_rows);
            for (; t < j->n_tokens; ++t)
                p->y[t * p->n_rows + r] = p->type->dot(w, j->xq + t * nb32, (int)nb32);
            continue;
        }
        float *dst = p->mode == MODE_DEQUANT ? p->y + r * j->k : row;
        for (int64_t b = 0; b < blocks; ++b)
            p->type->deq(w + b * p->type->type_size, dst + b * p->type->block);
        if (p->mode == MODE_DEQUANT_BF16) round_to_bf16(row, (uint16_t *)p->y + r * j->k, j->k);
        if (p->mode == MODE_FLOAT)
            for (int64_t t = 0; t < j->n_tokens; ++t)
                p->y[t * p->n_rows + r] = dot_f32(row, j->x + t * j->k, (int)j->k);
    }
}

/* Per-thread buffers kept between calls: a float row (the float path, attention scores) and a
   chunk's offset coefficients (gemm_rows), 64-byte aligned so no two threads share a line. */
typedef struct {
    float *buf[MAX_THREADS + 1];
    int64_t cap[MAX_THREADS + 1];
} scratch_t;

static scratch_t g_rows, g_offsets;

static float *scratch(scratch_t *s, int slot, int64_t n) {
    if (s->cap[slot] < n) {
        free(s->buf[slot]);
        size_t bytes = ((size_t)n * sizeof(float) + 63) / 64 * 64;
        s->buf[slot] = aligned_alloc(64, bytes);
        s->cap[slot] = s->buf[slot] ? n : 0;
    }
    return s->buf[slot];
}

float *thread_scratch(int slot, int64_t n) { return scratch(&g_rows, slot, n); }

/* Claims and runs chunks of generation `gen` until none is left; `slot` names the thread's
   scratch row (float path), sized only once a chunk is claimed and the job is known. */
static void work_on(job_t *j, unsigned gen, int slot) {
    float *row = NULL;
    unsigned long long c = atomic_load(&j->claim);
    for (;;) {
        unsigned long long idx = c & 0xFFFFF, n = (c >> 20) & 0xFFFFF;
        if ((c >> 40) != (gen & 0xFFFFFF) || idx >= n) return;
        if (!atomic_compare_exchange_weak(&j->claim, &c, c + 1)) continue;
        if (j->task) {
            j->task(j->task_arg, (int64_t)idx, slot);
            atomic_fetch_add(&j->done, 1);
            c = atomic_load(&j->claim);
            continue;
        }
        const part_t *p = &j->parts[0];
        for (int i = 1; i < j->n_parts && (int64_t)idx >= j->parts[i].first_chunk; ++i)
            p = &j->parts[i];
        int needs_row = p->mode == MODE_FLOAT || p->mode == MODE_DEQUANT_BF16;
        if (needs_row && !row && !(row = thread_scratch(slot, j->k))) abort();
        int64_t r0 = ((int64_t)idx - p->first_chunk) * p->chunk, r1 = r0 + p->chunk;
        if (r1 > p->n_rows) r1 = p->n_rows;
        if (p->mode != MODE_GEMM) {
            run_rows(j, p, r0, r1, row);
        } else {
            float *offsets = scratch(&g_offsets, slot, p->chunk * 2 * j->gx.nb);
            if (!offsets) abort();
            gemm_rows(&j->gx, p, r0, r1, offsets);
        }
        atomic_fetch_add(&j->done, 1);
        c = atomic_load(&j->claim);
    }
}

static void *worker_main(void *arg) {
    int slot = (int)(intptr_t)arg;
    unsigned seen = atomic_load(&g_generation);
    for (;;) {
        int spins = 0;
        /* yield while spinning: torch's own OpenMP threads, busy between our products, must
           not wait for this core (measured: SDPA 100x slower against a pause-only spin) */
        while (atomic_load(&g_generation) == seen && spins < SPIN_ROUNDS && !atomic_load(&g_stop)) {
            sched_yield();
            ++spins;
        }
        if (atomic_load(&g_generation) == seen) {
            pthread_mutex_lock(&g_wake_mu);
            atomic_fetch_add(&g_sleepers, 1);
            while (atomic_load(&g_generation) == seen && !atomic_load(&g_stop))
                pthread_cond_wait(&g_wake_cv, &g_wake_mu);
            atomic_fetch_sub(&g_sleepers, 1);
            pthread_mutex_unlock(&g_wake_mu);
        }
        if (atomic_load(&g_stop)) return NULL;
        seen = atomic_load(&g_generation);
        work_on(&g_job, seen, slot);
    }
}

static void stop_workers(void) {
    pthread_mutex_lock(&g_wake_mu);
    atomic_store(&g_stop, 1);
    pthread_cond_broadcast(&g_wake_cv);
    pthread_mutex_unlock(&g_wake_mu);
    for (int i = 0; i < g_n_workers; ++i) pthread_join(g_workers[i], NULL);
    g_n_workers = 0;
    atomic_store(&g_stop, 0);
}

static int start_workers(int n) {
    for (int i = 0; i < n; ++i) {
        if (pthread_create(&g_workers[i], NULL, worker_main, (void *)(intptr_t)(i + 1)) != 0)
            return -1;
        g_n_workers = i + 1;
    }
    return 0;
}

/* Runs g_job (fields set by the caller) on this thread and the workers; returns when done. */
static void run_parallel(int64_t n_chunks) {
    unsigned gen = atomic_load(&g_generation) + 1;
    atomic_store(&g_job.done, 0);
    atomic_store(&g_job.claim, ((unsigned long long)(gen & 0xFFFFFF) << 40) |
                                   ((unsigned long long)n_chunks << 20));
    atomic_store(&g_generation, gen);
    if (atomic_load(&g_sleepers) > 0) {
        pthread_mutex_lock(&g_wake_mu);
        pthread_cond_broadcast(&g_wake_cv);
        pthread_mutex_unlock(&g_wake_mu);
    }
    work_on(&g_job, gen, 0);
    while (atomic_load(&g_job.done) < n_chunks) cpu_relax();
}


static xblock *g_xq;
static size_t g_xq_cap;

/* Splits every part's rows into chunks: two per thread (room to even out a thread that was
   descheduled) of at most 256 rows; for more than one tile of tokens, 16 rows, which stay in
   cache while every tile passes over them. Each chunk costs a claim on a shared counter and a
   restart of the hardware prefetch: at 8 per thread, an 8-token step of SmolLM2 spent ~25%
   more in its products (measured, benchmarks/bench_batch_step.py). */
static int64_t plan_chunks(job_t *j) {
    int64_t threads = g_n_workers + 1, first = 0;
    for (int i = 0; i < j->n_parts; ++i) {
        part_t *p = &j->parts[i];
        int64_t chunk = p->n_rows / (threads * 2);
        chunk = chunk < 1 ? 1 : chunk > 256 ? 256 : chunk;
        if (j->n_tokens > 8 && chunk > 16) chunk = 16; /* rows re-read for every tile */
        p->chunk = chunk;
        p->first_chunk = first;
        first += (p->n_rows + chunk - 1) / chunk;
    }
    return first;
}

void make_part(part_t *p, const qtype *type, const void *w, int64_t n_rows, int64_t k, float *y,
               int mode) {
    p->type = type;
    p->w = (const uint8_t *)w;
    p->y = y;
    p->n_rows = n_rows;
    p->row_bytes = k / type->block * type->type_size;
    p->mode = mode == MODE_ROW_DOTS ? MODE_INT8 : mode;
    if (mode == MODE_INT8 && type->to_q8 && gemm_available() == GEMM_ALL_STEPS)
        p->mode = MODE_GEMM; /* one integer arithmetic for any number of tokens */
    else if (p->mode == MODE_INT8 && !type->dot)
        p->mode = MODE_FLOAT;
    if (p->mode == MODE_GEMM && (!type->to_q8 || !gemm_available())) p->mode = MODE_FLOAT;
}

void kernels_lock(void) { pthread_mutex_lock(&g_submit_mu); }
void kernels_unlock(void) { pthread_mutex_unlock(&g_submit_mu); }

int product(part_t *parts, int n_parts, const float *x, int64_t k, int64_t n_tokens) {
    int any_int8 = 0, any_float = 0, any_gemm = 0;
    for (int i = 0; i < n_parts; ++i) {
        any_int8 |= parts[i].mode == MODE_INT8;
        any_float |= parts[i].mode == MODE_FLOAT || parts[i].mode == MODE_DEQUANT_BF16;
        any_gemm |= parts[i].mode == MODE_GEMM;
    }
    size_t need = (size_t)(n_tokens * (k / QK));
    if (any_int8 && need > g_xq_cap) {
        free(g_xq);
        g_xq = malloc(need * sizeof(xblock));
        g_xq_cap = g_xq ? need : 0;
    }
    if ((any_int8 && !g_xq) || (any_float && !thread_scratch(0, k))) return -1;
    job_t *j = &g_job;
    if (any_gemm && gemm_prepare_x(&j->gx, x, k, n_tokens)) return -1;
    if (any_int8)
        for (int64_t t = 0; t < n_tokens; ++t)
            quantize_x(x + t * k, g_xq + t * (k / QK), (int)(k / QK));
    j->task = NULL;
    memcpy(j->parts, parts, sizeof(part_t) * (size_t)n_parts);
    j->n_parts = n_parts;
    j->k = k;
    j->n_tokens = n_tokens;
    j->x = x;
    j->xq = g_xq;
    int64_t n_chunks = plan_chunks(j);
    if (n_chunks > MAX_CHUNKS) return -2;
    run_parallel(n_chunks);
    return 0;
}

int parallel_for(int64_t n, task_fn task, void *arg) {
    if (n <= 0) return 0;
    if (n > MAX_CHUNKS) return -2;
    g_job.task = task;
    g_job.task_arg = arg;
    run_parallel(n);
    return 0;
}

int set_thread_count(int n) {
    if (n - 1 == g_n_workers) return 0;
    stop_workers();
    return start_workers(n - 1);
}

int thread_count(void) { return g_n_workers + 1; }
