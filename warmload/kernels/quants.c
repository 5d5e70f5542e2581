/* GGML block formats for the products: each type's row dot against 8-bit activation blocks
   (AVX2 maddubs or AVX-VNNI dpbusd, as ggml-cpu's vec_dot_*_q8_*), and its block dequantizer
   for the float path. References: llama.cpp ggml/src/ggml-common.h (layouts), ggml-quants.c
   (dequantize_row_*), ggml-cpu/arch/x86/quants.c (integer dots). */

#include "kernels.h"
#include "blocks.h"

static const int8_t IQ4NL_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                        1,    13,   25,  38,  53,  69,  89,  113};

/* ------------------------------------------------- block dequantizers (generic float path) */

static void deq_q2_k(const uint8_t *b, float *y) {
    const uint8_t *scales = b, *q = b + 16;
    float d = rdf16(b + 80), dmin = rdf16(b + 82);
    int is = 0;
    for (int n = 0; n < QK_K; n += 128) {
        int shift = 0;
        for (int j = 0; j < 4; ++j) {
            for (int half = 0; half < 2; ++half) {
                int sc = scales[is++];
                float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
                for (int l = 0; l < 16; ++l) *y++ = dl * ((q[l + 16 * half] >> shift) & 3) - ml;
            }
            shift += 2;
        }
        q += 32;
    }
}

static void deq_q4_0(const uint8_t *b, float *y) {
    float d = rdf16(b);
    for (int j = 0; j < 16; ++j) {
        y[j] = d * ((b[2 + j] & 0xF) - 8);
        y[j + 16] = d * ((b[2 + j] >> 4) - 8);
    }
}

static void deq_q4_1(const uint8_t *b, float *y) {
    float d = rdf16(b), m = rdf16(b + 2);
    for (int j = 0; j < 16; ++j) {
        y[j] = d * (b[4 + j] & 0xF) + m;
        y[j + 16] = d * (b[4 + j] >> 4) + m;
    }
}

static void deq_q5(const uint8_t *qh_p, const uint8_t *qs, float d, float m, int offset,
                   float *y) {
    uint32_t qh;
    memcpy(&qh, qh_p, 4);
    for (int j = 0; j < 16; ++j) {
        y[j] = d * ((int)((qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - offset) + m;
        y[j + 16] = d * ((int)((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - offset) + m;
    }
}

static void deq_q5_0(const uint8_t *b, float *y) { deq_q5(b + 2, b + 6, rdf16(b), 0.0f, 16, y); }

static void deq_q5_1(const uint8_t *b, float *y) {
    deq_q5(b + 4, b + 8, rdf16(b), rdf16(b + 2), 0, y);
}

static void deq_q8_0(const uint8_t *b, float *y) {
    float d = rdf16(b);
    for (int j = 0; j < 32; ++j) y[j] = d * (int8_t)b[2 + j];
}

static void deq_q4_k(const uint8_t *b, float *y) {
    float d = rdf16(b), dmin = rdf16(b + 2);
    const uint8_t *q = b + 16;
    for (int j = 0; j < 4; ++j, q += 32, y += 64) {
        int sc1, m1, sc2, m2;
        scale_min_k4(2 * j, b + 4, &sc1, &m1);
        scale_min_k4(2 * j + 1, b + 4, &sc2, &m2);
        float d1 = d * sc1, n1 = dmin * m1, d2 = d * sc2, n2 = dmin * m2;
        for (int l = 0; l < 32; ++l) {
            y[l] = d1 * (q[l] & 0xF) - n1;
            y[l + 32] = d2 * (q[l] >> 4) - n2;
        }
    }
}

static void deq_q5_k(const uint8_t *b, float *y) {
    float d = rdf16(b), dmin = rdf16(b + 2);
    const uint8_t *qh = b + 16, *q = b + 48;
    for (int j = 0; j < 4; ++j, q += 32, y += 64) {
        int sc1, m1, sc2, m2;
        scale_min_k4(2 * j, b + 4, &sc1, &m1);
        scale_min_k4(2 * j + 1, b + 4, &sc2, &m2);
        float d1 = d * sc1, n1 = dmin * m1, d2 = d * sc2, n2 = dmin * m2;
        for (int l = 0; l < 32; ++l) {
            y[l] = d1 * ((q[l] & 0xF) | (((qh[l] >> (2 * j)) & 1) << 4)) - n1;
            y[l + 32] = d2 * ((q[l] >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4)) - n2;
        }
    }
}

static void deq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = rdf16(b + 208);
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
        for (int l = 0; l < 32; ++l) {
            int is = l / 16;
            y[l] = d * sc[is] * ((int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            y[l + 32] = d * sc[is + 2] * ((int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            y[l + 64] = d * sc[is + 4] * ((int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            y[l + 96] = d * sc[is + 6] * ((int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

static void deq_f16(const uint8_t *b, float *y) {
    for (int j = 0; j < QK; ++j) y[j] = rdf16(b + 2 * j);
}

static void deq_bf16(const uint8_t *b, float *y) {
    for (int j = 0; j < QK; ++j) y[j] = bf16_to_f32(rd16(b + 2 * j));
}

/* --------------------------------------------------------------- AVX2 building blocks */

#if HAVE_AVX2
/* Unsigned bytes a times signed bytes b, summed in pairs of pairs: 8 int32. */
static inline __m256i dot_u8s8(__m256i a, __m256i b) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, b);
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}

/* Signed bytes a times signed bytes b: 8 int32. */
static inline __m256i dot_s8s8(__m256i a, __m256i b) {
    return dot_u8s8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

static inline __m256 dot_u8_f(__m256i a, const xblock *x) {
    return _mm256_cvtepi32_ps(dot_u8s8(a, _mm256_loadu_si256((const __m256i *)x->q)));
}
#endif

/* ------------------------------------------------------- row dots, 32-element block types */
/* Integer dots need AVX2; without it every type takes the float path (dequantized rows dotted
   with the float x: make_part falls back when a type has no dot). */
#if HAVE_AVX2

/* Sum over nb blocks of `size` bytes with two accumulators: one FMA chain per block would
   bound a row at 4 cycles per block (FMA latency) while the block's own work takes ~3. */
typedef __m256 (*block_fn)(const uint8_t *, const xblock *, __m256, float *);

static inline float dot_blocks(const uint8_t *w, const xblock *x, int nb, int size,
                               block_fn block) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    float o0 = 0.0f, o1 = 0.0f;
    int i = 0;
    for (; i + 1 < nb; i += 2) {
        a0 = block(w + i * size, &x[i], a0, &o0);
        a1 = block(w + (i + 1) * size, &x[i + 1], a1, &o1);
    }
    if (i < nb) a0 = block(w + i * size, &x[i], a0, &o0);
    return hsum_ps(_mm256_add_ps(a0, a1)) + (o0 + o1);
}

static inline __m256 blk_q4_0(const uint8_t *w, const xblock *x, __m256 acc, float *off) {
    float d = rdf16(w);
    *off -= 8.0f * d * x->s;
    return _mm256_fmadd_ps(_mm256_set1_ps(d * x->d), dot_u8_f(nibbles32(w + 2), x), acc);
}

static inline __m256 blk_q4_1(const uint8_t *w, const xblock *x, __m256 acc, float *off) {
    *off += rdf16(w + 2) * x->s;
    return _mm256_fmadd_ps(_mm256_set1_ps(rdf16(w) * x->d), dot_u8_f(nibbles32(w + 4), x), acc);
}

static inline __m256 blk_q5_0(const uint8_t *w, const xblock *x, __m256 acc, float *off) {
    float d = rdf16(w);
    __m256i q = _mm256_or_si256(nibbles32(w + 6),
                                _mm256_and_si256(bits32(w + 2), _mm256_set1_epi8(0x10)));
    *off -= 16.0f * d * x->s;
    return _mm256_fmadd_ps(_mm256_set1_ps(d * x->d), dot_u8_f(q, x), acc);
}

static inline __m256 blk_q5_1(const uint8_t *w, const xblock *x, __m256 acc, float *off) {
    __m256i q = _mm256_or_si256(nibbles32(w + 8),
                                _mm256_and_si256(bits32(w + 4), _mm256_set1_epi8(0x10)));
    *off += rdf16(w + 2) * x->s;
    return _mm256_fmadd_ps(_mm256_set1_ps(rdf16(w) * x->d), dot_u8_f(q, x), acc);
}

static inline __m256 blk_q8_0(const uint8_t *w, const xblock *x, __m256 acc, float *off) {
    (void)off;
    __m256i q = _mm256_loadu_si256((const __m256i *)(w + 2));
    __m256i p = dot_s8s8(q, _mm256_loadu_si256((const __m256i *)x->q));
    return _mm256_fmadd_ps(_mm256_set1_ps(rdf16(w) * x->d), _mm256_cvtepi32_ps(p), acc);
}

/* Each returns sum_k W[row, k] * x[k] for one row of nb 32-blocks (nb = K / 32). */

static float dot_q4_0(const uint8_t *w, const xblock *x, int nb) {
    return dot_blocks(w, x, nb, 18, blk_q4_0);
}

static float dot_q4_1(const uint8_t *w, const xblock *x, int nb) {
    return dot_blocks(w, x, nb, 20, blk_q4_1);
}

static float dot_q5_0(const uint8_t *w, const xblock *x, int nb) {
    return dot_blocks(w, x, nb, 22, blk_q5_0);
}

static float dot_q5_1(const uint8_t *w, const xblock *x, int nb) {
    return dot_blocks(w, x, nb, 24, blk_q5_1);
}

static float dot_q8_0(const uint8_t *w, const xblock *x, int nb) {
    return dot_blocks(w, x, nb, 34, blk_q8_0);
}

/* ------------------------------------- several rows of x per weight row (batched decode) */
/* Several rows of x (a batched decode step) dot each weight row: unpack each block once for 4
   of them, instead of again per row. Same sums, same order, as the one-row dots, so a row's
   result does not depend on how many rows share the call. */

/* One token's share of a block: the integer dot on its chain (even blocks on one, odd on the
   other, as dot_blocks) and the offset term. */
#define TOKEN_STEP(acc, off, t)                                                                \
    do {                                                                                       \
        const xblock *xb = x + (t) * x_stride + i;                                             \
        __m256i xq = _mm256_loadu_si256((const __m256i *)xb->q);                               \
        __m256i p = dot_u8s8(aq, is_signed ? _mm256_sign_epi8(xq, q) : xq);                    \
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xb->d), _mm256_cvtepi32_ps(p), acc);          \
        off += c * xb->s;                                                                      \
    } while (0)

/* out[t * out_stride] = row . x_t for 4 tokens whose blocks start x_stride apart, with the
   one-token dots' arithmetic (dot_blocks): the same bits, in registers, one unpack per block. */
static inline void dots_4(const uint8_t *w, const xblock *x, int nb, int size, int64_t x_stride,
                          float *out, int64_t out_stride, unpack_fn unpack, int is_signed) {
    __m256 e0 = _mm256_setzero_ps(), e1 = e0, e2 = e0, e3 = e0; /* even blocks */
    __m256 u0 = e0, u1 = e0, u2 = e0, u3 = e0;                  /* odd blocks */
    float oe0 = 0, oe1 = 0, oe2 = 0, oe3 = 0, ou0 = 0, ou1 = 0, ou2 = 0, ou3 = 0;
    for (int i = 0; i < nb; ++i) {
        __m256i q;
        float d, c;
        unpack(w + i * size, &q, &d, &c);
        __m256i aq = is_signed ? _mm256_sign_epi8(q, q) : q;
        if (i & 1) {
            TOKEN_STEP(u0, ou0, 0); TOKEN_STEP(u1, ou1, 1);
            TOKEN_STEP(u2, ou2, 2); TOKEN_STEP(u3, ou3, 3);
        } else {
            TOKEN_STEP(e0, oe0, 0); TOKEN_STEP(e1, oe1, 1);
            TOKEN_STEP(e2, oe2, 2); TOKEN_STEP(e3, oe3, 3);
        }
    }
    out[0] = hsum_ps(_mm256_add_ps(e0, u0)) + (oe0 + ou0);
    out[out_stride] = hsum_ps(_mm256_add_ps(e1, u1)) + (oe1 + ou1);
    out[2 * out_stride] = hsum_ps(_mm256_add_ps(e2, u2)) + (oe2 + ou2);
    out[3 * out_stride] = hsum_ps(_mm256_add_ps(e3, u3)) + (oe3 + ou3);
}

#define DOTN(name, size, unpack, is_signed)                                                   \
    static void name(const uint8_t *w, const xblock *x, int nb, int64_t x_stride, float *out,  \
                     int64_t out_stride) {                                                     \
        dots_4(w, x, nb, size, x_stride, out, out_stride, unpack, is_signed);                  \
    }
DOTN(dotn_q4_0, 18, unp_q4_0, 0)
DOTN(dotn_q4_1, 20, unp_q4_1, 0)
DOTN(dotn_q5_0, 22, unp_q5_0, 0)
DOTN(dotn_q5_1, 24, unp_q5_1, 0)
DOTN(dotn_q8_0, 34, unp_q8_0, 1)

/* ---------------------------------------------------------- row dots, K-quants (256 blocks) */

/* Q4_K and Q5_K: 8 x 32 values per super-block with 6-bit scales and mins; Q5_K adds a fifth
   bit per value from its 32 bytes of high bits. */
static inline float dot_q45_k(const uint8_t *w, const xblock *x, int nb, int five) {
    const int size = five ? 176 : 144;
    int nsuper = nb / 8;
    float sum = 0.0f;
    for (int i = 0; i < nsuper; ++i, w += size, x += 8) {
        float d = rdf16(w), dmin = rdf16(w + 2);
        const uint8_t *scales = w + 4, *qs = w + (five ? 48 : 16);
        int sc[8], mn[8];
        for (int j = 0; j < 8; ++j) scale_min_k4(j, scales, &sc[j], &mn[j]);
        float off = 0.0f;
        for (int j = 0; j < 8; ++j) off += mn[j] * x[j].s;
        __m256 acc = _mm256_setzero_ps();
        const __m256i hbits =
            five ? _mm256_loadu_si256((const __m256i *)(w + 16)) : _mm256_setzero_si256();
        for (int j = 0; j < 4; ++j) {
            __m256i lo, hi;
            unp_q45_k(qs, hbits, five, j, &lo, &hi);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(sc[2 * j] * x[2 * j].d),
                                  dot_u8_f(lo, &x[2 * j]), acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(sc[2 * j + 1] * x[2 * j + 1].d),
                                  dot_u8_f(hi, &x[2 * j + 1]), acc);
        }
        sum += d * hsum_ps(acc) - dmin * off;
    }
    return sum;
}

static float dot_q4_k(const uint8_t *w, const xblock *x, int nb) { return dot_q45_k(w, x, nb, 0); }
static float dot_q5_k(const uint8_t *w, const xblock *x, int nb) { return dot_q45_k(w, x, nb, 1); }

static float dot_q6_k(const uint8_t *w, const xblock *x, int nb) {
    int nsuper = nb / 8;
    float sum = 0.0f;
    for (int i = 0; i < nsuper; ++i, w += 210, x += 8) {
        const uint8_t *ql = w, *qh = w + 128;
        const int8_t *sc = (const int8_t *)(w + 192);
        float d = rdf16(w + 208);
        __m256 acc = _mm256_setzero_ps();
        const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
        const __m256i m32 = _mm256_set1_epi8(32);
        for (int half = 0; half < 2; ++half) {
            const uint8_t *l = ql + 64 * half, *h = qh + 32 * half;
            const int8_t *s = sc + 8 * half;
            const xblock *xb = x + 4 * half;
            __m256i q0 = _mm256_loadu_si256((const __m256i *)l);
            __m256i q1 = _mm256_loadu_si256((const __m256i *)(l + 32));
            __m256i hh = _mm256_loadu_si256((const __m256i *)h);
            __m256i v[4];
            v[0] = _mm256_or_si256(_mm256_and_si256(q0, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(hh, m2), 4));
            v[1] = _mm256_or_si256(
                _mm256_and_si256(q1, m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 2), m2), 4));
            v[2] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(q0, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 4), m2), 4));
            v[3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(q1, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 6), m2), 4));
            for (int g = 0; g < 4; ++g) {
                __m256i q = _mm256_sub_epi8(v[g], m32); /* -32..31 */
                __m256i xq = _mm256_loadu_si256((const __m256i *)xb[g].q);
                __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q),
                                                   _mm256_sign_epi8(xq, q));
                /* low 128 bits: sub-block 2g, high: 2g + 1 */
                __m256i scl = _mm256_set_m128i(_mm_set1_epi16(s[2 * g + 1]),
                                               _mm_set1_epi16(s[2 * g]));
                __m256i p32 = _mm256_madd_epi16(p16, scl);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(xb[g].d), _mm256_cvtepi32_ps(p32), acc);
            }
        }
        sum += d * hsum_ps(acc);
    }
    return sum;
}

#endif

/* ----------------------------------------------- blocks as bytes (integer products, gemm.c) */
/* Each writes a block's values as scale * q + c: one scale per 4 values (a VNNI lane); q
   unsigned bytes with c per 32 values (the types with mins or offsets: Q4_0/1, Q5_0/1,
   Q4_K, Q5_K), else signed bytes and no c. */

#if HAVE_AVX2
static inline void put_q8(int8_t *q, __m256i v) { _mm256_storeu_si256((__m256i *)q, v); }
static inline void put_scale(float *s, float d) { _mm256_storeu_ps(s, _mm256_set1_ps(d)); }

/* The 32-value types: their register unpacking, stored (Q8_0 writes a c of 0, never read). */
static inline void q8_32(unpack_fn unpack, const uint8_t *b, int8_t *q, float *s, float *c) {
    __m256i v;
    float d;
    unpack(b, &v, &d, c);
    put_q8(q, v);
    put_scale(s, d);
}

static void q8_q4_0(const uint8_t *b, int8_t *q, float *s, float *c) { q8_32(unp_q4_0, b, q, s, c); }
static void q8_q4_1(const uint8_t *b, int8_t *q, float *s, float *c) { q8_32(unp_q4_1, b, q, s, c); }
static void q8_q5_0(const uint8_t *b, int8_t *q, float *s, float *c) { q8_32(unp_q5_0, b, q, s, c); }
static void q8_q5_1(const uint8_t *b, int8_t *q, float *s, float *c) { q8_32(unp_q5_1, b, q, s, c); }
static void q8_q8_0(const uint8_t *b, int8_t *q, float *s, float *c) { q8_32(unp_q8_0, b, q, s, c); }

/* Q4_K and Q5_K: scales d * sc and offset coefficients -dmin * mn per 32 values. */
static inline void q8_q45_k(const uint8_t *b, int8_t *q, float *s, float *c, int five) {
    float d = rdf16(b), dmin = rdf16(b + 2);
    for (int j = 0; j < 8; ++j) {
        int sc, mn;
        scale_min_k4(j, b + 4, &sc, &mn);
        put_scale(s + 8 * j, d * sc);
        c[j] = -dmin * mn;
    }
    const __m256i hbits =
        five ? _mm256_loadu_si256((const __m256i *)(b + 16)) : _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
        __m256i lo, hi;
        unp_q45_k(b + (five ? 48 : 16), hbits, five, j, &lo, &hi);
        put_q8(q + 64 * j, lo);
        put_q8(q + 64 * j + 32, hi);
    }
}

static void q8_q4_k(const uint8_t *b, int8_t *q, float *s, float *c) { q8_q45_k(b, q, s, c, 0); }
static void q8_q5_k(const uint8_t *b, int8_t *q, float *s, float *c) { q8_q45_k(b, q, s, c, 1); }

static void q8_q6_k(const uint8_t *b, int8_t *q, float *s, float *c) {
    (void)c;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = rdf16(b + 208);
    for (int i = 0; i < 64; ++i) s[i] = d * sc[i / 4]; /* 16 sub-blocks of 16 values */
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03), m32 = _mm256_set1_epi8(32);
    for (int half = 0; half < 2; ++half, q += 128) {
        const uint8_t *l = b + 64 * half, *h = b + 128 + 32 * half;
        __m256i q0 = _mm256_loadu_si256((const __m256i *)l);
        __m256i q1 = _mm256_loadu_si256((const __m256i *)(l + 32));
        __m256i hh = _mm256_loadu_si256((const __m256i *)h);
        __m256i v0 = _mm256_or_si256(_mm256_and_si256(q0, m4),
                                     _mm256_slli_epi16(_mm256_and_si256(hh, m2), 4));
        __m256i v1 = _mm256_or_si256(
            _mm256_and_si256(q1, m4),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 2), m2), 4));
        __m256i v2 = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(q0, 4), m4),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 4), m2), 4));
        __m256i v3 = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(q1, 4), m4),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 6), m2), 4));
        put_q8(q, _mm256_sub_epi8(v0, m32));
        put_q8(q + 32, _mm256_sub_epi8(v1, m32));
        put_q8(q + 64, _mm256_sub_epi8(v2, m32));
        put_q8(q + 96, _mm256_sub_epi8(v3, m32));
    }
}
#endif

/* The rarer types, unpacked value by value (as their dequantizers). */

static void q8_q3_k(const uint8_t *b, int8_t *q, float *s, float *c) {
    (void)c;
    const uint8_t *hm = b, *qs = b + 32;
    uint32_t aux[4];
    memcpy(aux, b + 96, 12);
    float d_all = rdf16(b + 108);
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f, tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    const int8_t *scales = (const int8_t *)aux;
    int is = 0;
    uint8_t m = 1;
    for (int n = 0; n < QK_K; n += 128, qs += 32) {
        for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
            for (int half = 0; half < 2; ++half, ++is) {
                for (int i = 0; i < 4; ++i) s[4 * is + i] = d_all * (scales[is] - 32);
                for (int l = 16 * half; l < 16 * half + 16; ++l)
                    *q++ = (int8_t)((int)((qs[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
            }
        }
    }
}

/* Q2_K: 2-bit unsigned q, scale d * sc per 16 values and offset coefficient -dmin * m per 16
   values (offset_values 16: gemm.c sums x per half block for them), deq_q2_k's order. */
static void q8_q2_k(const uint8_t *b, int8_t *q, float *s, float *c) {
    const uint8_t *scales = b, *qs = b + 16;
    float d = rdf16(b + 80), dmin = rdf16(b + 82);
    int is = 0;
    for (int n = 0; n < QK_K; n += 128, qs += 32)
        for (int shift = 0; shift < 8; shift += 2)
            for (int half = 0; half < 2; ++half, ++is) {
                for (int i = 0; i < 4; ++i) s[4 * is + i] = d * (scales[is] & 0xF);
                c[is] = -dmin * (scales[is] >> 4);
                for (int l = 16 * half; l < 16 * half + 16; ++l)
                    *q++ = (int8_t)((qs[l] >> shift) & 3);
            }
}

static void q8_iq4_nl(const uint8_t *b, int8_t *q, float *s, float *c) {
    (void)c;
    for (int j = 0; j < 16; ++j) {
        q[j] = IQ4NL_VALUES[b[2 + j] & 0xF];
        q[j + 16] = IQ4NL_VALUES[b[2 + j] >> 4];
    }
    for (int i = 0; i < 8; ++i) s[i] = rdf16(b);
}

static void q8_iq4_xs(const uint8_t *b, int8_t *q, float *s, float *c) {
    (void)c;
    float d = rdf16(b);
    uint16_t scales_h = rd16(b + 2);
    const uint8_t *scales_l = b + 4, *qs = b + 8;
    for (int ib = 0; ib < 8; ++ib, q += 32, qs += 16, s += 8) {
        int ls = ((scales_l[ib / 2] >> 4 * (ib % 2)) & 0xF) | (((scales_h >> 2 * ib) & 3) << 4);
        for (int i = 0; i < 8; ++i) s[i] = d * (ls - 32);
        for (int j = 0; j < 16; ++j) {
            q[j] = IQ4NL_VALUES[qs[j] & 0xF];
            q[j + 16] = IQ4NL_VALUES[qs[j] >> 4];
        }
    }
}

/* Their dequantizers: the same bytes and scales, multiplied out (the float path). */
static inline void deq_via_q8(to_q8_fn unpack, int n, const uint8_t *b, float *y) {
    int8_t q[QK_K];
    float s[QK_K / 4], c[QK_K / QK];
    unpack(b, q, s, c);
    for (int i = 0; i < n; ++i) y[i] = s[i / 4] * q[i];
}

static void deq_q3_k(const uint8_t *b, float *y) { deq_via_q8(q8_q3_k, QK_K, b, y); }
static void deq_iq4_nl(const uint8_t *b, float *y) { deq_via_q8(q8_iq4_nl, QK, b, y); }
static void deq_iq4_xs(const uint8_t *b, float *y) { deq_via_q8(q8_iq4_xs, QK_K, b, y); }

/* ------------------------------------------------------------------------- dispatch table */

#if HAVE_AVX2
#define DOT_OF(f) f
#define DOTN_OF(f) f

/* Dequantization of the 32-element types, 8 floats at a time: y = d * (q - offset) or d * q + m,
   the scalar formulas' order. Prompt chunks dequantize every weight row once per chunk. */
static inline void deq_avx(__m256i q, int is_signed, int offset, float d, float m, float *y) {
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    for (int k = 0; k < 4; ++k) {
        __m256i v = is_signed ? _mm256_cvtepi8_epi32(part[k]) : _mm256_cvtepu8_epi32(part[k]);
        __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(v, _mm256_set1_epi32(offset)));
        _mm256_storeu_ps(y + 8 * k, m != 0.0f ? _mm256_fmadd_ps(vd, f, vm) : _mm256_mul_ps(vd, f));
    }
}

static void deqv_q4_0(const uint8_t *b, float *y) { deq_avx(nibbles32(b + 2), 0, 8, rdf16(b), 0.0f, y); }
static void deqv_q4_1(const uint8_t *b, float *y) {
    deq_avx(nibbles32(b + 4), 0, 0, rdf16(b), rdf16(b + 2), y);
}
static void deqv_q5_0(const uint8_t *b, float *y) {
    __m256i q = _mm256_or_si256(nibbles32(b + 6), _mm256_and_si256(bits32(b + 2), _mm256_set1_epi8(0x10)));
    deq_avx(q, 0, 16, rdf16(b), 0.0f, y);
}
static void deqv_q5_1(const uint8_t *b, float *y) {
    __m256i q = _mm256_or_si256(nibbles32(b + 8), _mm256_and_si256(bits32(b + 4), _mm256_set1_epi8(0x10)));
    deq_avx(q, 0, 0, rdf16(b), rdf16(b + 2), y);
}
static void deqv_q8_0(const uint8_t *b, float *y) {
    deq_avx(_mm256_loadu_si256((const __m256i *)(b + 2)), 1, 0, rdf16(b), 0.0f, y);
}
#define DEQ_OF(scalar, vector) vector
#define Q8_OF(f) f
#elif HAVE_NEON
#include "arm/neon_quants.h" /* NEON row dots: DOT_OF, DOTN_OF, Q8_OF, DEQ_OF */
#else
#define Q8_OF(f) NULL
#define DEQ_OF(scalar, vector) scalar
#define DOT_OF(f) NULL
#define DOTN_OF(f) NULL
#endif

const qtype QTYPES[] = {
    {T_Q4_0, 32, 18, DOT_OF(dot_q4_0), DEQ_OF(deq_q4_0, deqv_q4_0), DOTN_OF(dotn_q4_0), Q8_OF(q8_q4_0), 1},
    {T_Q4_1, 32, 20, DOT_OF(dot_q4_1), DEQ_OF(deq_q4_1, deqv_q4_1), DOTN_OF(dotn_q4_1), Q8_OF(q8_q4_1), 1},
    {T_Q5_0, 32, 22, DOT_OF(dot_q5_0), DEQ_OF(deq_q5_0, deqv_q5_0), DOTN_OF(dotn_q5_0), Q8_OF(q8_q5_0), 1},
    {T_Q5_1, 32, 24, DOT_OF(dot_q5_1), DEQ_OF(deq_q5_1, deqv_q5_1), DOTN_OF(dotn_q5_1), Q8_OF(q8_q5_1), 1},
    {T_Q8_0, 32, 34, DOT_OF(dot_q8_0), DEQ_OF(deq_q8_0, deqv_q8_0), DOTN_OF(dotn_q8_0), Q8_OF(q8_q8_0), 0},
    {T_Q4_K, 256, 144, DOT_OF(dot_q4_k), deq_q4_k, NULL, Q8_OF(q8_q4_k), 1},
    {T_Q5_K, 256, 176, DOT_OF(dot_q5_k), deq_q5_k, NULL, Q8_OF(q8_q5_k), 1},
    {T_Q6_K, 256, 210, DOT_OF(dot_q6_k), deq_q6_k, NULL, Q8_OF(q8_q6_k), 0},
    {T_Q2_K, 256, 84, NULL, deq_q2_k, NULL, q8_q2_k, 1, 16}, /* mins per 16 values */
    {T_Q3_K, 256, 110, NULL, deq_q3_k, NULL, q8_q3_k, 0},
    {T_IQ4_NL, 32, 18, NULL, deq_iq4_nl, NULL, q8_iq4_nl, 0},
    {T_IQ4_XS, 256, 136, NULL, deq_iq4_xs, NULL, q8_iq4_xs, 0},
    {T_F16, 32, 64, NULL, deq_f16},
    {T_BF16, 32, 64, NULL, deq_bf16},
};

const int N_QTYPES = sizeof QTYPES / sizeof QTYPES[0];

const qtype *find_type(int id) {
    for (int i = 0; i < N_QTYPES; ++i)
        if (QTYPES[i].id == id) return &QTYPES[i];
    return NULL;
}

float dot_f32(const float *a, const float *b, int n) {
#if HAVE_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= n; k += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), acc1);
    }
    float s = hsum_ps(_mm256_add_ps(acc0, acc1));
#elif HAVE_NEON
    int k = n & ~15;
    float s = arm_dot_f32(a, b, k); /* arm/neon_quants.h */
#else
    float s = 0.0f;
    int k = 0;
#endif
    for (; k < n; ++k) s += a[k] * b[k];
    return s;
}

/* Activations -> 8-bit blocks: d = max|x| / 127, q = round(x / d) (ggml quantize_row_q8_1). */
void quantize_x(const float *x, xblock *out, int nb) {
    for (int i = 0; i < nb; ++i, x += QK) {
        float amax = 0.0f;
        for (int j = 0; j < QK; ++j) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        int s = 0;
        for (int j = 0; j < QK; ++j) {
            int q = (int)nearbyintf(x[j] * id);
            out[i].q[j] = (int8_t)q;
            s += q;
        }
        out[i].d = d;
        out[i].s = d * (float)s;
    }
}

