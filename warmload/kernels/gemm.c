/* Integer products of weight rows with several tokens at once (VNNI dpbusd, or on AVX2 its
   maddubs + madd emulation with llama.cpp's sign trick): prompt chunks, decode steps and
   batches of them, so a token's result does not depend on how many tokens share the call.
   Without AVX2 (generic builds) there is none and the callers keep their other paths
   (kernels.h, make_part).

   x is quantized as quantize_x does (8-bit blocks of 32: the same d and q as the row dots) and
   kept twice, as signed q and as unsigned q + 128. Each weight row is unpacked, up to TILE
   tokens at a time, into bytes with a float scale per 4 values (a VNNI int32 lane): in
   registers for the common types (AVX-512), through a small buffer for the rest (to_q8). Types
   with mins or offsets unpack unsigned q and an offset coefficient c per 32 values; the others
   signed q:

       unsigned q_w:  W[n] . x[t] = sum over lanes of scale_w * d_x * sum_4 q_w q_x
                                    + sum over blocks of c_w * d_x * sum(q_x)
       signed q_w:    W[n] . x[t] = sum over lanes of scale_w * d_x *
                                    (sum_4 (q_x + 128) q_w - 128 sum_4 q_w)

   where the -128 correction is the accumulator that dpbusd starts from.

   The 32-value types (Q4_0 .. Q8_0) take 16 blocks of a row at once on AVX-512 (row_grouped),
   Q4_K and Q5_K two super-blocks of 8 sub-blocks of 32 (row_q45_k): transposed so that int32
   lane l sums block l, 8 dpbusd give each block's exact sum, and one float multiply-add per
   block (two with offsets) scales it: 12 vector ops per 512 values and token, where a scale per
   4 values takes 32. Q6_K's 16 sub-blocks of 16 are a group of 4 vectors (its own x layout).
   The blocks after the last whole group take the per-4-values way, the buffered types (Q3_K,
   IQ4_NL, IQ4_XS) take it throughout.

   Every token's sums are taken in the same order however many tokens share the call. */

#include "kernels.h"

#if HAVE_NEON
#include "arm/neon_gemm.h" /* the same entry points with sdot / smmla */
#else
#include "blocks.h"

#if defined(__AVX512VNNI__) && defined(__AVX512F__) && defined(__AVX512BW__)
#define GEMM_VNNI 1
#define VB 64 /* bytes per vector */
typedef __m512i vi;
typedef __m512 vf;
#define LOADI(p) _mm512_loadu_si512((const void *)(p))
#define LOADF(p) _mm512_loadu_ps(p)
#define ZEROF() _mm512_setzero_ps()
#define ZEROI() _mm512_setzero_si512()
#define DPBUSD(acc, u8, s8) _mm512_dpbusd_epi32(acc, u8, s8)
#define CVT(v) _mm512_cvtepi32_ps(v)
#define MUL(a, b) _mm512_mul_ps(a, b)
#define FMADD(a, b, c) _mm512_fmadd_ps(a, b, c)
#define ADDF(a, b) _mm512_add_ps(a, b)
#define ONES8() _mm512_set1_epi8(1)
#define SUBI(a, b) _mm512_sub_epi32(a, b)
#define SLLI7(v) _mm512_slli_epi32(v, 7)
#define REDUCE(v) _mm512_reduce_add_ps(v)
#elif defined(__AVX2__) && defined(__FMA__)
#define GEMM_VNNI 1
#define VB 32
typedef __m256i vi;
typedef __m256 vf;
#define LOADI(p) _mm256_loadu_si256((const __m256i *)(p))
#define LOADF(p) _mm256_loadu_ps(p)
#define ZEROF() _mm256_setzero_ps()
#define ZEROI() _mm256_setzero_si256()
#if defined(__AVXVNNI__)
#define DPBUSD(acc, u8, s8) _mm256_dpbusd_avx_epi32(acc, u8, s8)
#else /* AVX2: dpbusd as maddubs + madd, exact only while |u8 * s8| pairs fit int16 (below) */
#define DPBUSD(acc, u8, s8) \
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u8, s8), _mm256_set1_epi16(1)))
#define DPBUSD_EMULATED 1
#endif
#define CVT(v) _mm256_cvtepi32_ps(v)
#define MUL(a, b) _mm256_mul_ps(a, b)
#define FMADD(a, b, c) _mm256_fmadd_ps(a, b, c)
#define ADDF(a, b) _mm256_add_ps(a, b)
#define ONES8() _mm256_set1_epi8(1)
#define SUBI(a, b) _mm256_sub_epi32(a, b)
#define SLLI7(v) _mm256_slli_epi32(v, 7)
#define REDUCE(v) hsum_ps(v)
#else
#define GEMM_VNNI 0
#endif

int gemm_available(void) { return GEMM_VNNI ? GEMM_ALL_STEPS : 0; }

#if GEMM_VNNI

#define LANES (VB / 4) /* int32 lanes (and lane scales) per vector */
/* Token loops fully unrolled, so each token's accumulator stays in a register. */
#define UNROLL_TOKENS _Pragma("GCC unroll 8")
#if VB == 64
#define TILE 8   /* tokens per pass over a row (accumulators in registers) */
#define CHAINS 1 /* accumulators per token */
#else
/* 256-bit: two accumulators per token (even and odd vectors of a row), so that one token's
   multiply-adds do not wait on each other (a decode step was bound by their latency); 4 tokens
   a pass keep the 8 accumulators in registers. Every token takes the same order whatever nt. */
#define TILE 4
#define CHAINS 2
#endif

static int64_t padded(int64_t k) { return (k + VB - 1) / VB * VB; }

/* --------------------------------------------------------------------------- x of a chunk */

static struct {
    int64_t cap;     /* bytes */
    uint8_t *buffer;
} g_x;

/* One block of 32 values as quantize_x makes it (d = max|x| / 127, q = nearest(x * (1 / d)),
   sum = d * sum(q)), stored as q and as q + 128, with d once per lane. */
static void quantize_block(const float *x, int8_t *qs, uint8_t *q, float *scale, float *sum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], m = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float d = _mm_cvtss_f32(h) / 127.0f, id = d ? 1.0f / d : 0.0f;
    __m256i n[4];
    for (int i = 0; i < 4; ++i) n[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(id)));
    __m256i total = _mm256_add_epi32(_mm256_add_epi32(n[0], n[1]), _mm256_add_epi32(n[2], n[3]));
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
    bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, bytes);
    _mm256_storeu_si256((__m256i *)q, _mm256_xor_si256(bytes, _mm256_set1_epi8((char)0x80)));
    _mm256_storeu_ps(scale, _mm256_set1_ps(d));
    *sum = d * (float)_mm_cvtsi128_si32(t);
}

#define GROUP 16                /* blocks of a row taken at once by row_grouped */
#define GROUP_BYTES (GROUP * QK) /* their values: bytes of x per group */

/* Block b's q (32 bytes) into the group layout: its dword g at [b / 16][g][b % 16]. */
static void to_group_layout(const void *q, int64_t b, void *grouped) {
    uint8_t *at = (uint8_t *)grouped + b / GROUP * GROUP_BYTES + b % GROUP * 4;
    for (int g = 0; g < QK / 4; ++g) memcpy(at + g * GROUP * 4, (const uint8_t *)q + 4 * g, 4);
}

/* Block b's q + 128 into the super-block layout: value v of sub-block j (16 values) of
   super-block S at [S][v / 4][j][v % 4]. */
static void to_super_layout(const uint8_t *q, int64_t b, uint8_t *super) {
    uint8_t *at = super + b / 8 * QK_K;
    for (int half = 0; half < 2; ++half) {
        int j = (int)(b % 8) * 2 + half; /* sub-block of the super-block */
        for (int g = 0; g < 4; ++g) memcpy(at + g * 64 + j * 4, q + half * 16 + 4 * g, 4);
    }
}

int gemm_prepare_x(gemm_x_t *gx, const float *x, int64_t k, int64_t n_tokens) {
    int64_t kp = padded(k), nb = k / QK, ng = (nb + GROUP - 1) / GROUP;
    int64_t n_super = k % QK_K ? 0 : k / QK_K;
    int64_t row_major = 3 * kp + nb * 4 * 3, grouped = ng * (2 * GROUP_BYTES + 2 * GROUP * 4);
    int64_t super = n_super * (QK_K + QK_K / 16 * 4);
    int64_t need = n_tokens * (row_major + grouped + super);
    if (g_x.cap < need) {
        free(g_x.buffer);
        g_x.buffer = aligned_alloc(64, (size_t)((need + 63) / 64 * 64));
        g_x.cap = g_x.buffer ? need : 0;
        if (!g_x.buffer) return -1;
    }
    gx->n_tokens = n_tokens, gx->kp = kp, gx->nb = nb, gx->ng = ng;
    uint8_t *at = g_x.buffer; /* the grouped arrays first: every one 64-byte aligned */
    gx->gs = (int8_t *)at, at += n_tokens * ng * GROUP_BYTES;
    gx->gu = at, at += n_tokens * ng * GROUP_BYTES;
    gx->gd = (float *)at, at += n_tokens * ng * GROUP * 4;
    gx->gsum = (float *)at, at += n_tokens * ng * GROUP * 4;
    gx->n_super = n_super;
    gx->su = at, at += n_tokens * n_super * QK_K;
    gx->sd = (float *)at, at += n_tokens * n_super * (QK_K / 16) * 4;
    gx->q = at, at += n_tokens * kp;
    gx->qs = (int8_t *)at, at += n_tokens * kp;
    gx->scale = (float *)at;
    gx->sum = gx->scale + n_tokens * (kp / 4);
    gx->sum16 = gx->sum + n_tokens * nb;
    for (int64_t t = 0; t < n_tokens; ++t) {
        uint8_t *q = gx->q + t * kp;
        int8_t *qs = gx->qs + t * kp;
        float *scale = gx->scale + t * (kp / 4);
        int8_t *gs = gx->gs + t * ng * GROUP_BYTES;
        uint8_t *gu = gx->gu + t * ng * GROUP_BYTES;
        float *gd = gx->gd + t * ng * GROUP, *gsum = gx->gsum + t * ng * GROUP;
        for (int64_t b = 0; b < nb; ++b) {
            quantize_block(x + t * k + b * QK, qs + b * QK, q + b * QK, scale + b * (QK / 4),
                           gx->sum + t * nb + b);
            gd[b] = scale[b * (QK / 4)], gsum[b] = gx->sum[t * nb + b];
            int first = 0, second = 0; /* the halves' sums, for offsets per 16 values */
            for (int i = 0; i < QK / 2; ++i) first += qs[b * QK + i], second += qs[b * QK + 16 + i];
            gx->sum16[t * 2 * nb + 2 * b] = gd[b] * (float)first;
            gx->sum16[t * 2 * nb + 2 * b + 1] = gd[b] * (float)second;
            if (VB != 64) continue; /* the group layouts serve the AVX-512 row kernels only */
            to_group_layout(qs + b * QK, b, gs);
            to_group_layout(q + b * QK, b, gu);
            if (n_super) {
                to_super_layout(q + b * QK, b, gx->su + t * k);
                float *sd = gx->sd + t * (k / 16) + 2 * b;
                sd[0] = sd[1] = gd[b];
            }
        }
        memset(q + k, 128, (size_t)(kp - k)); /* padding: q_x 0 against w 0, scale 0 */
        memset(qs + k, 0, (size_t)(kp - k));
        memset(scale + k / 4, 0, sizeof(float) * (size_t)((kp - k) / 4));
        static const uint8_t zero[QK], offset[QK] = {[0 ... QK - 1] = 128};
        for (int64_t b = nb; b < ng * GROUP; ++b) { /* padding blocks, against zero weights */
            to_group_layout(zero, b, gs);
            to_group_layout(offset, b, gu);
            gd[b] = gsum[b] = 0.0f;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------- the product */

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* x of a tile of tokens from value `at` on: signed q, q + 128, lane scales. */
typedef struct {
    const int8_t *qs;
    const uint8_t *q;
    const float *scale;
    int64_t kp;
} xtile_t;

/* x of a tile of tokens in the group layout (gemm_x_t.gs ..). */
typedef struct {
    const int8_t *gs;
    const uint8_t *gu;
    const float *gd, *gsum;
    int64_t ng;
    int vectors; /* per group: 8 (blocks of 32), or 4 (Q6_K's sub-blocks of 16) */
} xgroups_t;

/* Types whose rows sum blocks exactly in groups (gemm.c's header); they add their offset
   terms themselves, the others in rows_tile's pass over the offset coefficients. */
ALWAYS_INLINE int grouped(int id) {
    return VB == 64 && (id == T_Q4_0 || id == T_Q4_1 || id == T_Q5_0 || id == T_Q5_1 ||
                        id == T_Q8_0 || id == T_Q4_K || id == T_Q5_K || id == T_Q6_K);
}

ALWAYS_INLINE xtile_t x_at(xtile_t x, int64_t at) {
    return (xtile_t){x.qs + at, x.q + at, x.scale + at / 4, x.kp};
}

/* One vector of a weight row (VB bytes w, their lane scales s) against nt tokens. Unsigned w
   meets x's signed q directly; signed w meets q + 128, and the -128 * sum(w) correction,
   computed from w (exact integers), starts each token's dpbusd. */
ALWAYS_INLINE void tokens_step(vi w, vf s, int unsigned_w, xtile_t x, int nt, vf *acc) {
#if DPBUSD_EMULATED /* maddubs saturates int16 pairs: (q + 128) * w could; |w| * sign(q, w) cannot
                       (|q| <= 127, |w| <= 128; unsigned w <= 63), as llama.cpp's AVX2 dots */
    vi abs_w = unsigned_w ? w : _mm256_sign_epi8(w, w);
    UNROLL_TOKENS
    for (int i = 0; i < nt; ++i) {
        vi xq = LOADI(x.qs + i * x.kp);
        vi p = DPBUSD(ZEROI(), abs_w, unsigned_w ? xq : _mm256_sign_epi8(xq, w));
#else
    vi corr = unsigned_w ? ZEROI() : SUBI(ZEROI(), SLLI7(DPBUSD(ZEROI(), ONES8(), w)));
    UNROLL_TOKENS
    for (int i = 0; i < nt; ++i) {
        vi p = unsigned_w ? DPBUSD(ZEROI(), w, LOADI(x.qs + i * x.kp))
                          : DPBUSD(corr, LOADI(x.q + i * x.kp), w);
#endif
        acc[i] = FMADD(CVT(p), MUL(s, LOADF(x.scale + i * (x.kp / 4))), acc[i]);
    }
}

#define UNIT 256 /* values of a row unpacked at once */

/* Any type with to_q8: a unit of blocks unpacked into a buffer, then read back vector by
   vector (zeros after the row's last value, as the padding of x). */
ALWAYS_INLINE void row_buffered(const qtype *type, const uint8_t *w, int64_t nb, xtile_t x,
                                int nt, float *c, vf *acc) {
    int8_t q[UNIT] __attribute__((aligned(64)));
    float s[UNIT / 4] __attribute__((aligned(64)));
    int64_t blocks = nb * QK / type->block, per_unit = UNIT / type->block;
    const int per_c = type->offset_values ? type->offset_values : QK;
    for (int64_t b0 = 0; b0 < blocks; b0 += per_unit) {
        int64_t n = blocks - b0 < per_unit ? blocks - b0 : per_unit, values = n * type->block;
        for (int64_t b = 0; b < n; ++b)
            type->to_q8(w + (b0 + b) * type->type_size, q + b * type->block,
                        s + b * (type->block / 4), c + (b0 + b) * (type->block / per_c));
        if (values % VB) {
            memset(q + values, 0, (size_t)(VB - values % VB));
            memset(s + values / 4, 0, sizeof(float) * (size_t)((VB - values % VB) / 4));
        }
        int64_t at = b0 * type->block;
        for (int64_t g = 0; g * VB < values; ++g)
            tokens_step(LOADI(q + g * VB), LOADF(s + g * LANES), type->q_unsigned,
                        x_at(x, at + g * VB), nt, acc + (CHAINS > 1 && (g & 1)) * TILE);
    }
}

/* Block `w` of a 32-value type: bytes, scale and offset coefficient (as its to_q8). */
ALWAYS_INLINE void block32(int id, const uint8_t *w, __m256i *q, float *d, float *c) {
    switch (id) {
    case T_Q4_0: unp_q4_0(w, q, d, c); break;
    case T_Q4_1: unp_q4_1(w, q, d, c); break;
    case T_Q5_0: unp_q5_0(w, q, d, c); break;
    case T_Q5_1: unp_q5_1(w, q, d, c); break;
    default: unp_q8_0(w, q, d, c); break;
    }
}

/* A Q4_K or Q5_K super-block's 8 scales (d * sc) and offset coefficients (-dmin * m), from
   its 12 bytes of 6-bit scales and mins (scale_min_k4, unpacked 8 at a time as llama.cpp). */
ALWAYS_INLINE void scales_q45_k(const uint8_t *w, __m256 *d, __m256 *c) {
    uint32_t u[4];
    memcpy(u, w + 4, 12);
    u[3] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
    uint32_t mins_lo = u[1] & 0x3f3f3f3f;
    u[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
    u[2] = mins_lo;
    u[0] &= 0x3f3f3f3f; /* bytes 0-7: scales, 8-15: mins */
    __m128i sm = _mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]); /* no reload */
    *d = _mm256_mul_ps(_mm256_set1_ps(rdf16(w)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm)));
    *c = _mm256_mul_ps(_mm256_set1_ps(-rdf16(w + 2)),
                       _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8))));
}

#define PREFETCH_AHEAD 1024 /* bytes of a row's blocks asked for ahead of their use */

#include "x86/gemm_rows256.h" /* row kernels of the 256-bit variants */

#if VB == 64
/* The common types unpacked straight into registers (AVX-512): the same bytes and scales as
   their to_q8, so the same sums as row_buffered. */

ALWAYS_INLINE __m512i join_i(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* Blocks w and w + size of a 32-value type in one vector, as two block32 calls would give
   them: bytes [block 0's 32 values, block 1's], lane scales, and the two offset coefficients. */
ALWAYS_INLINE void pair32(int id, int size, const uint8_t *w, vi *q, vf *s, __m128 *c) {
    const uint8_t *w1 = w + size;
    if (id == T_Q8_0) {
        *q = join_i(_mm256_loadu_si256((const __m256i *)(w + 2)),
                    _mm256_loadu_si256((const __m256i *)(w1 + 2)));
    } else { /* nibbles: low halves are values 0-15 of a block, high halves 16-31 */
        int at = id == T_Q4_0 ? 2 : id == T_Q4_1 ? 4 : id == T_Q5_0 ? 6 : 8;
        __m256i v = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(w + at))),
            _mm_loadu_si128((const __m128i *)(w1 + at)), 1); /* [qs0 | qs1] */
        __m512i z = _mm512_and_si512(join_i(v, _mm256_srli_epi16(v, 4)), _mm512_set1_epi8(0x0F));
        z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0)); /* [lo0 hi0 lo1 hi1] */
        if (id == T_Q5_0 || id == T_Q5_1) { /* the fifth bits: bit j of qh is value j's */
            int hb = id == T_Q5_0 ? 2 : 4;
            uint32_t h0, h1;
            memcpy(&h0, w + hb, 4), memcpy(&h1, w1 + hb, 4);
            __mmask64 bits = (__mmask64)h0 | (__mmask64)h1 << 32;
            z = _mm512_or_si512(z, _mm512_maskz_mov_epi8(bits, _mm512_set1_epi8(0x10)));
        }
        *q = z;
    }
    /* d (and m) of both blocks converted at once: [d0, m0, d1, m1] */
    uint32_t h0, h1;
    memcpy(&h0, w, 4), memcpy(&h1, w1, 4);
    __m128 dm = _mm_cvtph_ps(_mm_unpacklo_epi32(_mm_cvtsi32_si128((int)h0), _mm_cvtsi32_si128((int)h1)));
    *s = _mm512_permutexvar_ps(_mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0),
                               _mm512_castps128_ps512(dm));
    __m128 d = _mm_shuffle_ps(dm, dm, _MM_SHUFFLE(2, 0, 2, 0));
    switch (id) { /* offset coefficients: the mins, or -offset * d */
    case T_Q4_0: *c = _mm_mul_ps(_mm_set1_ps(-8.0f), d); break;
    case T_Q5_0: *c = _mm_mul_ps(_mm_set1_ps(-16.0f), d); break;
    case T_Q8_0: *c = _mm_setzero_ps(); break;
    default: *c = _mm_shuffle_ps(dm, dm, _MM_SHUFFLE(3, 1, 3, 1)); break; /* Q4_1, Q5_1 */
    }
}

/* The 4 bytes at w of each of 16 blocks `size` apart, one per lane: a gather (on CPUs with the
   gather-data-sampling microcode fix it is slower; scalar loads through a buffer were slower
   here, the vector load waiting on 16 stores). */
ALWAYS_INLINE __m512i lanes_at(const uint8_t *w, int size) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm512_i32gather_epi32(_mm512_mullo_epi32(lane, _mm512_set1_epi32(size)), w, 1);
}

/* 16 blocks (a group) of a 32-value type, transposed: W[g] holds values 4g..4g+3 of block l
   in int32 lane l (unsigned q; signed for Q8_0), d the blocks' scales and c their offset
   coefficients (the mins, or -offset * d), lane by lane. */
ALWAYS_INLINE void unpack_group(int id, int size, const uint8_t *w, __m512i *W, __m512 *d,
                                __m512 *c) {
    if (id == T_Q8_0) { /* R[j] = [block j | block 4 + j], R[4 + j] = [8 + j | 12 + j] */
        __m512i R[8], t[8], u[8];
        for (int j = 0; j < 8; ++j) {
            int b0 = j < 4 ? j : 4 + j, b1 = b0 + 4;
            R[j] = join_i(_mm256_loadu_si256((const __m256i *)(w + b0 * size + 2)),
                          _mm256_loadu_si256((const __m256i *)(w + b1 * size + 2)));
        }
        for (int j = 0; j < 8; j += 2) {
            t[j] = _mm512_unpacklo_epi32(R[j], R[j + 1]);
            t[j + 1] = _mm512_unpackhi_epi32(R[j], R[j + 1]);
        }
        for (int h = 0; h < 8; h += 4) {
            u[h] = _mm512_unpacklo_epi64(t[h], t[h + 2]);
            u[h + 1] = _mm512_unpackhi_epi64(t[h], t[h + 2]);
            u[h + 2] = _mm512_unpacklo_epi64(t[h + 1], t[h + 3]);
            u[h + 3] = _mm512_unpackhi_epi64(t[h + 1], t[h + 3]);
        }
        /* u[i] (u[4 + i]): 128-bit lanes of dword i and i + 4 of the low / high blocks */
        for (int i = 0; i < 4; ++i) {
            W[i] = _mm512_shuffle_i32x4(u[i], u[4 + i], _MM_SHUFFLE(2, 0, 2, 0));
            W[4 + i] = _mm512_shuffle_i32x4(u[i], u[4 + i], _MM_SHUFFLE(3, 1, 3, 1));
        }
    } else { /* Z[i]: 128-bit lane L holds block 4L + i's 16 bytes of nibbles */
        int qs = id == T_Q4_0 ? 2 : id == T_Q4_1 ? 4 : id == T_Q5_0 ? 6 : 8;
        __m512i Z[4], t[4];
        for (int i = 0; i < 4; ++i) {
            /* immediates spelled out: gcc -O2 and clang do not unroll a loop into them */
#define BLOCK_AT(L) _mm_loadu_si128((const __m128i *)(w + (4 * (L) + i) * size + qs))
            __m512i z = _mm512_castsi128_si512(BLOCK_AT(0));
            z = _mm512_inserti32x4(z, BLOCK_AT(1), 1);
            z = _mm512_inserti32x4(z, BLOCK_AT(2), 2);
            Z[i] = _mm512_inserti32x4(z, BLOCK_AT(3), 3);
#undef BLOCK_AT
        }
        t[0] = _mm512_unpacklo_epi32(Z[0], Z[1]), t[1] = _mm512_unpackhi_epi32(Z[0], Z[1]);
        t[2] = _mm512_unpacklo_epi32(Z[2], Z[3]), t[3] = _mm512_unpackhi_epi32(Z[2], Z[3]);
        __m512i T[4] = {_mm512_unpacklo_epi64(t[0], t[2]), _mm512_unpackhi_epi64(t[0], t[2]),
                        _mm512_unpacklo_epi64(t[1], t[3]), _mm512_unpackhi_epi64(t[1], t[3])};
        const __m512i m4 = _mm512_set1_epi8(0x0F);
        for (int i = 0; i < 4; ++i) { /* low nibbles: values 0-15, high: 16-31 */
            W[i] = _mm512_and_si512(T[i], m4);
            W[4 + i] = _mm512_and_si512(_mm512_srli_epi16(T[i], 4), m4);
        }
        if (id == T_Q5_0 || id == T_Q5_1) { /* fifth bits: bit v of qh is value v's */
            __m512i qh = lanes_at(w + (id == T_Q5_0 ? 2 : 4), size);
            const __m512i dword = _mm512_set4_epi32(0x0C0C0C0C, 0x08080808, 0x04040404, 0);
            for (int g = 0; g < 8; ++g) { /* values 4g..4g+3: bits 4 (g % 2).. of byte g / 2 */
                __m512i spread = _mm512_shuffle_epi8(
                    qh, _mm512_add_epi8(dword, _mm512_set1_epi8((char)(g / 2))));
                __mmask64 on = _mm512_test_epi8_mask(
                    spread, _mm512_set1_epi32(g % 2 ? (int)0x80402010 : 0x08040201));
                W[g] = _mm512_mask_add_epi8(W[g], on, W[g], _mm512_set1_epi8(0x10));
            }
        }
    }
    __m512i dm = lanes_at(w, size); /* d, and m above it for Q4_1 and Q5_1 */
    *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
    switch (id) {
    case T_Q4_0: *c = _mm512_mul_ps(_mm512_set1_ps(-8.0f), *d); break;
    case T_Q5_0: *c = _mm512_mul_ps(_mm512_set1_ps(-16.0f), *d); break;
    case T_Q8_0: *c = _mm512_setzero_ps(); break;
    default: *c = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16))); break;
    }
}

/* One group of a row against nt tokens: each block's exact int32 sum, then per block
   acc += (d_w * d_x) * sum + c_w * (d_x * sum(q_x)). The integer sums are split in two
   chains (even and odd g) only for latency: integers add exactly in any order. */
ALWAYS_INLINE void group_tokens(const __m512i *W, __m512 d, __m512 c, int unsigned_w,
                                xgroups_t x, int64_t G, int nt, vf *acc) {
    __m512i corr = _mm512_setzero_si512(); /* signed w against q + 128: -128 * sum(w) */
    if (!unsigned_w) {
        for (int g = 0; g < x.vectors; ++g)
            corr = _mm512_dpbusd_epi32(corr, _mm512_set1_epi8(1), W[g]);
        corr = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(corr, 7));
    }
    UNROLL_TOKENS
    for (int i = 0; i < nt; ++i) {
        int64_t xo = (i * x.ng + G) * x.vectors * VB, so = (i * x.ng + G) * GROUP;
        __m512i s0 = corr, s1 = _mm512_setzero_si512();
        for (int g = 0; g < x.vectors; g += 2) {
            if (unsigned_w) {
                s0 = _mm512_dpbusd_epi32(s0, W[g], LOADI(x.gs + xo + g * VB));
                s1 = _mm512_dpbusd_epi32(s1, W[g + 1], LOADI(x.gs + xo + (g + 1) * VB));
            } else {
                s0 = _mm512_dpbusd_epi32(s0, LOADI(x.gu + xo + g * VB), W[g]);
                s1 = _mm512_dpbusd_epi32(s1, LOADI(x.gu + xo + (g + 1) * VB), W[g + 1]);
            }
        }
        __m512 sum = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
        acc[i] = _mm512_fmadd_ps(sum, _mm512_mul_ps(d, LOADF(x.gd + so)), acc[i]);
        if (unsigned_w) acc[i] = _mm512_fmadd_ps(c, LOADF(x.gsum + so), acc[i]);
    }
}

/* Offset terms of a row's last blocks (c: their coefficients by lane) for nt tokens. */
ALWAYS_INLINE void tail_offsets(__m512 c, xgroups_t x, int64_t G, int nt, vf *acc) {
    UNROLL_TOKENS
    for (int i = 0; i < nt; ++i)
        acc[i] = _mm512_fmadd_ps(c, LOADF(x.gsum + (i * x.ng + G) * GROUP), acc[i]);
}

/* 32-value types: 16 blocks at a time (row_grouped), and the last blocks of a row (fewer than
   16) two per vector as the other types, with per-lane scales; their offset terms take one
   multiply-add per token, against x's group-layout sums. */
ALWAYS_INLINE void row_grouped(int id, int size, const uint8_t *w, int64_t nb, xtile_t x,
                               xgroups_t xg, int nt, vf *acc) {
    const int unsigned_w = id != T_Q8_0;
    int64_t G = 0;
    for (; (G + 1) * GROUP <= nb; ++G, w += GROUP * size) {
        for (int o = 0; o < GROUP * size; o += 64)
            _mm_prefetch((const char *)w + PREFETCH_AHEAD + o, _MM_HINT_T0);
        __m512i W[8];
        __m512 d, c;
        unpack_group(id, size, w, W, &d, &c);
        group_tokens(W, d, c, unsigned_w, xg, G, nt, acc);
    }
    int64_t first = G * GROUP, n = nb - first, b = 0;
    if (!n) return;
    __m512 cv = _mm512_setzero_ps(); /* offset coefficients, lane b for block first + b */
    for (; b + 1 < n; b += 2, w += 2 * size) {
        vi q;
        vf s;
        __m128 c;
        pair32(id, size, w, &q, &s, &c);
        cv = _mm512_mask_broadcastss_ps(cv, (__mmask16)(1u << b), c);
        cv = _mm512_mask_broadcastss_ps(cv, (__mmask16)(2u << b), _mm_movehdup_ps(c));
        tokens_step(q, s, unsigned_w, x_at(x, (first + b) * QK), nt, acc);
    }
    if (b < n) { /* an odd last block */
        __m256i q0;
        float d0, c;
        block32(id, w, &q0, &d0, &c);
        cv = _mm512_mask_broadcastss_ps(cv, (__mmask16)(1u << b), _mm_set_ss(c));
        __m512 s = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(d0)),
                                      _mm256_setzero_ps(), 1);
        tokens_step(join_i(q0, _mm256_setzero_si256()), s, unsigned_w,
                    x_at(x, (first + b) * QK), nt, acc);
    }
    if (unsigned_w) tail_offsets(cv, xg, G, nt, acc);
}

/* Two Q4_K or Q5_K super-blocks (16 sub-blocks of 32) as a group: lane 8s + j is sub-block j
   of super-block s (as unpack_group's lane l is block l). Sub-block 2i is the low nibbles of
   quant bytes 32i.., 2i + 1 their high nibbles; Q5_K's fifth bit of value v of sub-block j is
   bit j of high-bit byte v. */
ALWAYS_INLINE void unpack_group_q45_k(int five, const uint8_t *w, __m512i *W, __m512 *d,
                                      __m512 *c) {
    const int size = five ? 176 : 144, qs = five ? 48 : 16;
    const uint8_t *w1 = w + size;
    __m512i A0 = LOADI(w + qs), B0 = LOADI(w + qs + 64); /* bytes 32i + 4g: dword 8i + g */
    __m512i A1 = LOADI(w1 + qs), B1 = LOADI(w1 + qs + 64);
    __m512i qh = five ? join_i(_mm256_loadu_si256((const __m256i *)(w + 16)),
                               _mm256_loadu_si256((const __m256i *)(w1 + 16)))
                      : _mm512_setzero_si512();
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i bit = _mm512_sllv_epi32( /* lane 8s + j: bit j of each byte */
        _mm512_set1_epi32(0x01010101),
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7));
    for (int g = 0; g < 8; ++g) {
        const __m512i pick = _mm512_setr_epi32(g, 8 + g, 16 + g, 24 + g, g, 8 + g, 16 + g,
                                               24 + g, g, 8 + g, 16 + g, 24 + g, g, 8 + g,
                                               16 + g, 24 + g);
        __m512i p0 = _mm512_permutex2var_epi32(A0, pick, B0); /* lanes 0-3: dwords (0, i, g) */
        __m512i p1 = _mm512_permutex2var_epi32(A1, pick, B1);
        __m256i y = _mm256_inserti128_si256(_mm512_castsi512_si256(p0),
                                            _mm512_castsi512_si128(p1), 1);
        __m512i z = _mm512_cvtepu32_epi64(y); /* qword 4s + i: the dword, zeros above */
        z = _mm512_or_si512(z, _mm512_srli_epi32(_mm512_slli_epi64(z, 32), 4));
        W[g] = _mm512_and_si512(z, m4); /* low nibbles in lane 2m, high ones in 2m + 1 */
        if (five) {
            const __m512i from = _mm512_setr_epi32(g, g, g, g, g, g, g, g, 8 + g, 8 + g, 8 + g,
                                                   8 + g, 8 + g, 8 + g, 8 + g, 8 + g);
            __mmask64 on = _mm512_test_epi8_mask(_mm512_permutexvar_epi32(from, qh), bit);
            W[g] = _mm512_mask_add_epi8(W[g], on, W[g], _mm512_set1_epi8(0x10));
        }
    }
    __m256 d0, c0, d1, c1;
    scales_q45_k(w, &d0, &c0);
    scales_q45_k(w1, &d1, &c1);
    *d = _mm512_insertf32x8(_mm512_castps256_ps512(d0), d1, 1);
    *c = _mm512_insertf32x8(_mm512_castps256_ps512(c0), c1, 1);
}

/* Q4_K and Q5_K: two super-blocks at a time as a group; an odd last one as 4 vectors of 64
   values with per-lane scales, its offset terms as the 32-value types' tail. */
ALWAYS_INLINE void row_q45_k(int five, const uint8_t *w, int64_t nb, xtile_t x, xgroups_t xg,
                             int nt, vf *acc) {
    const int size = five ? 176 : 144;
    int64_t G = 0;
    for (; (G + 1) * GROUP <= nb; ++G, w += 2 * size) {
        for (int o = 0; o < 2 * size; o += 64)
            _mm_prefetch((const char *)w + PREFETCH_AHEAD + o, _MM_HINT_T0);
        __m512i W[8];
        __m512 d, c;
        unpack_group_q45_k(five, w, W, &d, &c);
        group_tokens(W, d, c, 1, xg, G, nt, acc);
    }
    if (G * GROUP == nb) return;
    __m256 scales, c;
    scales_q45_k(w, &scales, &c);
    __m512 scales16 = _mm512_castps256_ps512(scales);
    const uint8_t *qs = w + (five ? 48 : 16);
    __m256i hbits = five ? _mm256_loadu_si256((const __m256i *)(w + 16)) : _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
        __m256i lo, hi;
        unp_q45_k(qs, hbits, five, j, &lo, &hi);
        __m512i pick = _mm512_set_epi32(2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1,
                                        2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j, 2 * j, 2 * j,
                                        2 * j, 2 * j, 2 * j, 2 * j, 2 * j);
        tokens_step(join_i(lo, hi), _mm512_permutexvar_ps(pick, scales16), 1,
                    x_at(x, (G * GROUP + 2 * j) * QK), nt, acc);
    }
    tail_offsets(_mm512_castps256_ps512(c), xg, G, nt, acc); /* lanes 8-15: 0 */
}

/* Q6_K: a super-block of 16 sub-blocks of 16 values with int8 scales is a group of its own
   (4 vectors): W[g] holds values 4g..4g+3 of sub-block j in lane j, signed (q - 32). */
ALWAYS_INLINE void unpack_q6_k(const uint8_t *w, __m512i *W, __m512 *d) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
    const __m256i m32 = _mm256_set1_epi8(32);
    __m256i v[8]; /* v[4 half + k]: values 128 half + 32 k .. +31, sub-blocks 2m and 2m + 1 */
    for (int half = 0; half < 2; ++half) {
        const uint8_t *l = w + 64 * half, *h = w + 128 + 32 * half;
        __m256i q0 = _mm256_loadu_si256((const __m256i *)l);
        __m256i q1 = _mm256_loadu_si256((const __m256i *)(l + 32));
        __m256i hh = _mm256_loadu_si256((const __m256i *)h);
        for (int k = 0; k < 4; ++k) {
            __m256i lowbits = _mm256_and_si256(k < 2 ? (k ? q1 : q0) :
                                               _mm256_srli_epi16(k == 2 ? q0 : q1, 4), m4);
            __m256i highbits = _mm256_and_si256(_mm256_srli_epi16(hh, 2 * k), m2);
            v[4 * half + k] =
                _mm256_sub_epi8(_mm256_or_si256(lowbits, _mm256_slli_epi16(highbits, 4)), m32);
        }
    }
    /* Z[i]: 128-bit lane L holds sub-block 4L + i (v[2L + i / 2], half i % 2) */
    __m512i even0 = join_i(v[0], v[2]), even1 = join_i(v[4], v[6]);
    __m512i odd0 = join_i(v[1], v[3]), odd1 = join_i(v[5], v[7]);
    __m512i Z[4] = {_mm512_shuffle_i32x4(even0, even1, _MM_SHUFFLE(2, 0, 2, 0)),
                    _mm512_shuffle_i32x4(even0, even1, _MM_SHUFFLE(3, 1, 3, 1)),
                    _mm512_shuffle_i32x4(odd0, odd1, _MM_SHUFFLE(2, 0, 2, 0)),
                    _mm512_shuffle_i32x4(odd0, odd1, _MM_SHUFFLE(3, 1, 3, 1))};
    __m512i t0 = _mm512_unpacklo_epi32(Z[0], Z[1]), t1 = _mm512_unpackhi_epi32(Z[0], Z[1]);
    __m512i t2 = _mm512_unpacklo_epi32(Z[2], Z[3]), t3 = _mm512_unpackhi_epi32(Z[2], Z[3]);
    W[0] = _mm512_unpacklo_epi64(t0, t2), W[1] = _mm512_unpackhi_epi64(t0, t2);
    W[2] = _mm512_unpacklo_epi64(t1, t3), W[3] = _mm512_unpackhi_epi64(t1, t3);
    __m128i sc = _mm_loadu_si128((const __m128i *)(w + 192));
    *d = _mm512_mul_ps(_mm512_set1_ps(rdf16(w + 208)), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)));
}

ALWAYS_INLINE void row_q6_k(const uint8_t *w, int64_t nb, xgroups_t xs, int nt, vf *acc) {
    for (int64_t S = 0; S * 8 < nb; ++S, w += 210) {
        for (int o = 0; o < 210; o += 64)
            _mm_prefetch((const char *)w + PREFETCH_AHEAD + o, _MM_HINT_T0);
        __m512i W[4];
        __m512 d;
        unpack_q6_k(w, W, &d);
        group_tokens(W, d, _mm512_setzero_ps(), 0, xs, S, nt, acc);
    }
}
#endif

/* out[i] = the sum of acc[i]'s lanes for i < nt, in one order whatever nt is: on AVX-512 the
   halves added, then pairs, pairs of pairs, and the two 128-bit halves; 8 tokens share the
   shuffles (a transposed sum), fewer take the same steps one by one. */
#if VB == 64
ALWAYS_INLINE float reduce_one(__m512 v) {
    __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    s = _mm256_hadd_ps(s, s);
    s = _mm256_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}

ALWAYS_INLINE __m128 reduce_four(const __m512 *v) {
    __m256 t[4];
    for (int i = 0; i < 4; ++i)
        t[i] = _mm256_add_ps(_mm512_castps512_ps256(v[i]), _mm512_extractf32x8_ps(v[i], 1));
    __m256 q = _mm256_hadd_ps(_mm256_hadd_ps(t[0], t[1]), _mm256_hadd_ps(t[2], t[3]));
    return _mm_add_ps(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1));
}

ALWAYS_INLINE void reduce_tokens(const vf *acc, int nt, float *out) {
    if (nt == 8) {
        _mm_storeu_ps(out, reduce_four(acc));
        _mm_storeu_ps(out + 4, reduce_four(acc + 4));
    } else {
        for (int i = 0; i < nt; ++i) out[i] = reduce_one(acc[i]);
    }
}
#else
ALWAYS_INLINE void reduce_tokens(const vf *acc, int nt, float *out) {
    for (int i = 0; i < nt; ++i) out[i] = REDUCE(acc[i]);
}
#endif

/* out[i] = the row's lane sums with token i of nt (c: the row's offset coefficients). */
ALWAYS_INLINE void row_tokens(const qtype *type, const uint8_t *w, int64_t nb, xtile_t x,
                              xgroups_t xg, xgroups_t xs, int nt, float *c, float *out) {
    vf acc[CHAINS * TILE];
    for (int i = 0; i < nt; ++i)
        for (int h = 0; h < CHAINS; ++h) acc[h * TILE + i] = ZEROF();
    switch (type->id) {
#if VB == 64
    case T_Q4_0: row_grouped(T_Q4_0, 18, w, nb, x, xg, nt, acc); break;
    case T_Q4_1: row_grouped(T_Q4_1, 20, w, nb, x, xg, nt, acc); break;
    case T_Q5_0: row_grouped(T_Q5_0, 22, w, nb, x, xg, nt, acc); break;
    case T_Q5_1: row_grouped(T_Q5_1, 24, w, nb, x, xg, nt, acc); break;
    case T_Q8_0: row_grouped(T_Q8_0, 34, w, nb, x, xg, nt, acc); break;
    case T_Q4_K: row_q45_k(0, w, nb, x, xg, nt, acc); break;
    case T_Q5_K: row_q45_k(1, w, nb, x, xg, nt, acc); break;
    case T_Q6_K: row_q6_k(w, nb, xs, nt, acc); break;
#else
    case T_Q4_0: row_blocks32(T_Q4_0, 18, w, nb, x, nt, c, acc); break;
    case T_Q4_1: row_blocks32(T_Q4_1, 20, w, nb, x, nt, c, acc); break;
    case T_Q5_0: row_blocks32(T_Q5_0, 22, w, nb, x, nt, c, acc); break;
    case T_Q5_1: row_blocks32(T_Q5_1, 24, w, nb, x, nt, c, acc); break;
    case T_Q8_0: row_blocks32(T_Q8_0, 34, w, nb, x, nt, c, acc); break;
    case T_Q4_K: row_q45_k32(0, w, nb, x, nt, c, acc); break;
    case T_Q5_K: row_q45_k32(1, w, nb, x, nt, c, acc); break;
    case T_Q6_K: row_q6_k32(w, nb, x, nt, acc); break;
#endif
    default: row_buffered(type, w, nb, x, nt, c, acc); break;
    }
    if (CHAINS > 1)
        for (int i = 0; i < nt; ++i) acc[i] = ADDF(acc[i], acc[(CHAINS > 1) * TILE + i]);
    reduce_tokens(acc, nt, out);
}

/* out[i] = sum over blocks b of c[b] * s_i[b] (the offset terms of one row for nt tokens, s_i
   = the token's block sums, `stride` apart), lane-wise and then as reduce_tokens. */
ALWAYS_INLINE void offsets_tokens(const float *c, const float *s, int64_t stride, int64_t n,
                                  int nt, float *out) {
    vf acc[TILE];
    for (int i = 0; i < nt; ++i) acc[i] = ZEROF();
    int64_t b = 0;
    for (; b + LANES <= n; b += LANES) {
        vf cv = LOADF(c + b);
        for (int i = 0; i < nt; ++i) acc[i] = FMADD(cv, LOADF(s + i * stride + b), acc[i]);
    }
    if (b < n) { /* the tail, zeros past the row's last block */
#if VB == 64
        __mmask16 m = (__mmask16)((1u << (n - b)) - 1);
        vf cv = _mm512_maskz_loadu_ps(m, c + b);
        for (int i = 0; i < nt; ++i)
            acc[i] = FMADD(cv, _mm512_maskz_loadu_ps(m, s + i * stride + b), acc[i]);
#else
        __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - b)),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        vf cv = _mm256_maskload_ps(c + b, m);
        for (int i = 0; i < nt; ++i)
            acc[i] = FMADD(cv, _mm256_maskload_ps(s + i * stride + b, m), acc[i]);
#endif
    }
    reduce_tokens(acc, nt, out);
}

/* Tokens t0 .. t0 + nt of rows r0 .. r1 (nt a constant after inlining). The offset terms are
   added after all rows: each row's coefficients are read back long after they were written. */
ALWAYS_INLINE void rows_tile(const gemm_x_t *gx, const part_t *p, int64_t r0, int64_t r1,
                             int64_t t0, int nt, float *c) {
    int64_t kp = gx->kp, nb = gx->nb;
    int64_t cn = p->type->offset_values == 16 ? 2 * nb : nb; /* offset coefficients a row */
    xtile_t x = {gx->qs + t0 * kp, gx->q + t0 * kp, gx->scale + t0 * (kp / 4), kp};
    int64_t ng = gx->ng;
    xgroups_t xg = {gx->gs + t0 * ng * GROUP_BYTES, gx->gu + t0 * ng * GROUP_BYTES,
                    gx->gd + t0 * ng * GROUP, gx->gsum + t0 * ng * GROUP, ng, 8};
    int64_t ns = gx->n_super;
    xgroups_t xs = {NULL, gx->su + t0 * ns * QK_K, gx->sd + t0 * ns * GROUP, NULL, ns, 4};
    for (int64_t r = r0; r < r1; ++r) {
        float out[TILE];
        row_tokens(p->type, p->w + r * p->row_bytes, nb, x, xg, xs, nt, c + (r - r0) * cn, out);
        for (int i = 0; i < nt; ++i) p->y[(t0 + i) * p->n_rows + r] = out[i];
    }
    if (p->type->q_unsigned && !grouped(p->type->id))
        for (int64_t r = r0; r < r1; ++r) {
            float off[TILE];
            if (cn != nb) /* per half block: 2 nb coefficients and sums */
                offsets_tokens(c + (r - r0) * cn, gx->sum16 + t0 * cn, cn, cn, nt, off);
            else
                offsets_tokens(c + (r - r0) * nb, gx->sum + t0 * nb, nb, nb, nt, off);
            for (int i = 0; i < nt; ++i) p->y[(t0 + i) * p->n_rows + r] += off[i];
        }
}

/* Tiles of TILE tokens, then one of the rest: each pass unpacks every row once more. */
void gemm_rows(const gemm_x_t *gx, const part_t *p, int64_t r0, int64_t r1, float *c) {
    int64_t t = 0;
    for (; t + TILE <= gx->n_tokens; t += TILE) rows_tile(gx, p, r0, r1, t, TILE, c);
    switch (gx->n_tokens - t) { /* nt a constant in each */
#if TILE > 4
    case 7: rows_tile(gx, p, r0, r1, t, 7, c); break;
    case 6: rows_tile(gx, p, r0, r1, t, 6, c); break;
    case 5: rows_tile(gx, p, r0, r1, t, 5, c); break;
    case 4: rows_tile(gx, p, r0, r1, t, 4, c); break;
#endif
    case 3: rows_tile(gx, p, r0, r1, t, 3, c); break;
    case 2: rows_tile(gx, p, r0, r1, t, 2, c); break;
    case 1: rows_tile(gx, p, r0, r1, t, 1, c); break;
    default: break;
    }
}

#else

int gemm_prepare_x(gemm_x_t *gx, const float *x, int64_t k, int64_t n_tokens) {
    (void)gx, (void)x, (void)k, (void)n_tokens;
    return -1;
}

void gemm_rows(const gemm_x_t *gx, const part_t *p, int64_t r0, int64_t r1, float *c) {
    (void)gx, (void)p, (void)r0, (void)r1, (void)c;
}

#endif

#endif /* !__aarch64__ */
