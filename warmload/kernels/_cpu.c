/* CPU kernels for the decode hot path: quantized matrix products on packed GGML weights, as
   llama.cpp's CPU backend computes them, and RMSNorm in one pass.

   y[t, n] = sum_k W[n, k] * x[t, k] where W stays in its GGML block format (zero copy from the
   mapped file) and x is float32. For the common types the activations are first quantized to
   8-bit blocks of 32 (one float scale each, plus d * sum(q) for the types with an offset), and
   every weight block is dotted with its activation block in integer arithmetic (AVX2 maddubs,
   or AVX-VNNI dpbusd), as ggml-cpu's vec_dot_*_q8_* do. Other types (Q2_K, Q3_K, IQ4_*, F16,
   BF16) are dequantized block by block into floats and dotted with the float activations.

   Work is split over rows between the calling thread and a small pool of workers that spin
   briefly between calls (a decode step issues ~200 products a few tens of microseconds apart)
   and then sleep. One product runs at a time; callers from several threads queue on a mutex.

   Block layouts: llama.cpp ggml/src/ggml-common.h; dequantization: ggml-quants.c
   dequantize_row_*; integer dot products: ggml-cpu/arch/x86/quants.c. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#define HAVE_AVX2 1
#else
#define HAVE_AVX2 0
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

static const int8_t IQ4NL_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                        1,    13,   25,  38,  53,  69,  89,  113};

static inline void scale_min_k4(int j, const uint8_t *q, int *d, int *m) {
    if (j < 4) { *d = q[j] & 63; *m = q[j + 4] & 63; }
    else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

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

static void deq_q3_k(const uint8_t *b, float *y) {
    const uint8_t *hm = b, *q = b + 32;
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
    for (int n = 0; n < QK_K; n += 128) {
        int shift = 0;
        for (int j = 0; j < 4; ++j) {
            for (int half = 0; half < 2; ++half) {
                float dl = d_all * (scales[is++] - 32);
                for (int l = 16 * half; l < 16 * half + 16; ++l)
                    *y++ = dl * ((int)((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
            }
            shift += 2;
            m <<= 1;
        }
        q += 32;
    }
}

static void deq_iq4_nl(const uint8_t *b, float *y) {
    float d = rdf16(b);
    for (int j = 0; j < 16; ++j) {
        y[j] = d * IQ4NL_VALUES[b[2 + j] & 0xF];
        y[j + 16] = d * IQ4NL_VALUES[b[2 + j] >> 4];
    }
}

static void deq_iq4_xs(const uint8_t *b, float *y) {
    float d = rdf16(b);
    uint16_t scales_h = rd16(b + 2);
    const uint8_t *scales_l = b + 4, *qs = b + 8;
    for (int ib = 0; ib < 8; ++ib) {
        int ls = ((scales_l[ib / 2] >> 4 * (ib % 2)) & 0xF) | (((scales_h >> 2 * ib) & 3) << 4);
        float dl = d * (ls - 32);
        for (int j = 0; j < 16; ++j) {
            y[j] = dl * IQ4NL_VALUES[qs[j] & 0xF];
            y[j + 16] = dl * IQ4NL_VALUES[qs[j] >> 4];
        }
        y += 32;
        qs += 16;
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
static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 16 bytes of nibbles -> 32 bytes: the 16 low nibbles, then the 16 high nibbles. */
static inline __m256i nibbles32(const uint8_t *p) {
    __m128i t = _mm_loadu_si128((const __m128i *)p);
    __m256i b = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

/* 32 bits -> 32 bytes, 0xFF where the bit is set. */
static inline __m256i bits32(const uint8_t *p) {
    uint32_t x;
    memcpy(&x, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

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

static inline __m256 dot_u8_f(const uint8_t *unused, __m256i a, const xblock *x) {
    (void)unused;
    return _mm256_cvtepi32_ps(dot_u8s8(a, _mm256_loadu_si256((const __m256i *)x->q)));
}
#endif

/* ------------------------------------------------------- row dots, 32-element block types */
/* Each returns sum_k W[row, k] * x[k] for one row of nb 32-blocks (nb = K / 32). */

static float dot_q4_0(const uint8_t *w, const xblock *x, int nb) {
#if HAVE_AVX2
    __m256 acc = _mm256_setzero_ps();
    float off = 0.0f;
    for (int i = 0; i < nb; ++i, w += 18) {
        float d = rdf16(w);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x[i].d), dot_u8_f(w, nibbles32(w + 2), &x[i]),
                              acc);
        off += d * x[i].s;
    }
    return hsum_ps(acc) - 8.0f * off;
#else
    float sum = 0.0f;
    for (int i = 0; i < nb; ++i, w += 18) {
        int acc = 0;
        for (int j = 0; j < 16; ++j)
            acc += ((w[2 + j] & 0xF) - 8) * x[i].q[j] + ((w[2 + j] >> 4) - 8) * x[i].q[j + 16];
        sum += rdf16(w) * x[i].d * acc;
    }
    return sum;
#endif
}

static float dot_q4_1(const uint8_t *w, const xblock *x, int nb) {
#if HAVE_AVX2
    __m256 acc = _mm256_setzero_ps();
    float off = 0.0f;
    for (int i = 0; i < nb; ++i, w += 20) {
        float d = rdf16(w);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x[i].d), dot_u8_f(w, nibbles32(w + 4), &x[i]),
                              acc);
        off += rdf16(w + 2) * x[i].s;
    }
    return hsum_ps(acc) + off;
#else
    float sum = 0.0f;
    for (int i = 0; i < nb; ++i, w += 20) {
        int acc = 0;
        for (int j = 0; j < 16; ++j)
            acc += (w[4 + j] & 0xF) * x[i].q[j] + (w[4 + j] >> 4) * x[i].q[j + 16];
        sum += rdf16(w) * x[i].d * acc + rdf16(w + 2) * x[i].s;
    }
    return sum;
#endif
}

static float dot_q5_0(const uint8_t *w, const xblock *x, int nb) {
#if HAVE_AVX2
    __m256 acc = _mm256_setzero_ps();
    float off = 0.0f;
    const __m256i bit4 = _mm256_set1_epi8(0x10);
    for (int i = 0; i < nb; ++i, w += 22) {
        float d = rdf16(w);
        __m256i q = _mm256_or_si256(nibbles32(w + 6), _mm256_and_si256(bits32(w + 2), bit4));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x[i].d), dot_u8_f(w, q, &x[i]), acc);
        off += d * x[i].s;
    }
    return hsum_ps(acc) - 16.0f * off;
#else
    float sum = 0.0f;
    for (int i = 0; i < nb; ++i, w += 22) {
        uint32_t qh; memcpy(&qh, w + 2, 4);
        int acc = 0;
        for (int j = 0; j < 16; ++j) {
            int lo = (w[6 + j] & 0xF) | (((qh >> j) & 1) << 4);
            int hi = (w[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            acc += (lo - 16) * x[i].q[j] + (hi - 16) * x[i].q[j + 16];
        }
        sum += rdf16(w) * x[i].d * acc;
    }
    return sum;
#endif
}

static float dot_q5_1(const uint8_t *w, const xblock *x, int nb) {
#if HAVE_AVX2
    __m256 acc = _mm256_setzero_ps();
    float off = 0.0f;
    const __m256i bit4 = _mm256_set1_epi8(0x10);
    for (int i = 0; i < nb; ++i, w += 24) {
        __m256i q = _mm256_or_si256(nibbles32(w + 8), _mm256_and_si256(bits32(w + 4), bit4));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(rdf16(w) * x[i].d), dot_u8_f(w, q, &x[i]), acc);
        off += rdf16(w + 2) * x[i].s;
    }
    return hsum_ps(acc) + off;
#else
    float sum = 0.0f;
    for (int i = 0; i < nb; ++i, w += 24) {
        uint32_t qh; memcpy(&qh, w + 4, 4);
        int acc = 0;
        for (int j = 0; j < 16; ++j) {
            int lo = (w[8 + j] & 0xF) | (((qh >> j) & 1) << 4);
            int hi = (w[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            acc += lo * x[i].q[j] + hi * x[i].q[j + 16];
        }
        sum += rdf16(w) * x[i].d * acc + rdf16(w + 2) * x[i].s;
    }
    return sum;
#endif
}

static float dot_q8_0(const uint8_t *w, const xblock *x, int nb) {
#if HAVE_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; ++i, w += 34) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(w + 2));
        __m256i p = dot_s8s8(q, _mm256_loadu_si256((const __m256i *)x[i].q));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(rdf16(w) * x[i].d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum_ps(acc);
#else
    float sum = 0.0f;
    for (int i = 0; i < nb; ++i, w += 34) {
        int acc = 0;
        for (int j = 0; j < 32; ++j) acc += (int8_t)w[2 + j] * x[i].q[j];
        sum += rdf16(w) * x[i].d * acc;
    }
    return sum;
#endif
}

/* ---------------------------------------------------------- row dots, K-quants (256 blocks) */

static float dot_q4_k(const uint8_t *w, const xblock *x, int nb) {
    int nsuper = nb / 8;
    float sum = 0.0f;
    for (int i = 0; i < nsuper; ++i, w += 144, x += 8) {
        float d = rdf16(w), dmin = rdf16(w + 2);
        const uint8_t *scales = w + 4, *qs = w + 16;
        int sc[8], mn[8];
        for (int j = 0; j < 8; ++j) scale_min_k4(j, scales, &sc[j], &mn[j]);
        float off = 0.0f;
        for (int j = 0; j < 8; ++j) off += mn[j] * x[j].s;
#if HAVE_AVX2
        __m256 acc = _mm256_setzero_ps();
        for (int j = 0; j < 4; ++j) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            __m256i lo = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0F));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(sc[2 * j] * x[2 * j].d),
                                  dot_u8_f(NULL, lo, &x[2 * j]), acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(sc[2 * j + 1] * x[2 * j + 1].d),
                                  dot_u8_f(NULL, hi, &x[2 * j + 1]), acc);
        }
        sum += d * hsum_ps(acc) - dmin * off;
#else
        float acc = 0.0f;
        for (int j = 0; j < 4; ++j) {
            int a = 0, b = 0;
            for (int l = 0; l < 32; ++l) {
                a += (qs[32 * j + l] & 0xF) * x[2 * j].q[l];
                b += (qs[32 * j + l] >> 4) * x[2 * j + 1].q[l];
            }
            acc += sc[2 * j] * x[2 * j].d * a + sc[2 * j + 1] * x[2 * j + 1].d * b;
        }
        sum += d * acc - dmin * off;
#endif
    }
    return sum;
}

static float dot_q5_k(const uint8_t *w, const xblock *x, int nb) {
    int nsuper = nb / 8;
    float sum = 0.0f;
    for (int i = 0; i < nsuper; ++i, w += 176, x += 8) {
        float d = rdf16(w), dmin = rdf16(w + 2);
        const uint8_t *scales = w + 4, *qh = w + 16, *qs = w + 48;
        int sc[8], mn[8];
        for (int j = 0; j < 8; ++j) scale_min_k4(j, scales, &sc[j], &mn[j]);
        float off = 0.0f;
        for (int j = 0; j < 8; ++j) off += mn[j] * x[j].s;
#if HAVE_AVX2
        __m256 acc = _mm256_setzero_ps();
        const __m256i hbits = _mm256_loadu_si256((const __m256i *)qh);
        const __m256i m4 = _mm256_set1_epi8(0x0F), b4 = _mm256_set1_epi8(0x10);
        for (int j = 0; j < 4; ++j) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            __m256i u1 = _mm256_set1_epi8((char)(1 << (2 * j)));
            __m256i u2 = _mm256_set1_epi8((char)(2 << (2 * j)));
            __m256i h1 = _mm256_and_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(hbits, u1), u1), b4);
            __m256i h2 = _mm256_and_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(hbits, u2), u2), b4);
            __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), h1);
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), h2);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(sc[2 * j] * x[2 * j].d),
                                  dot_u8_f(NULL, lo, &x[2 * j]), acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(sc[2 * j + 1] * x[2 * j + 1].d),
                                  dot_u8_f(NULL, hi, &x[2 * j + 1]), acc);
        }
        sum += d * hsum_ps(acc) - dmin * off;
#else
        float acc = 0.0f;
        for (int j = 0; j < 4; ++j) {
            int a = 0, b = 0;
            for (int l = 0; l < 32; ++l) {
                int lo = (qs[32 * j + l] & 0xF) | ((qh[l] >> (2 * j)) & 1) << 4;
                int hi = (qs[32 * j + l] >> 4) | ((qh[l] >> (2 * j + 1)) & 1) << 4;
                a += lo * x[2 * j].q[l];
                b += hi * x[2 * j + 1].q[l];
            }
            acc += sc[2 * j] * x[2 * j].d * a + sc[2 * j + 1] * x[2 * j + 1].d * b;
        }
        sum += d * acc - dmin * off;
#endif
    }
    return sum;
}

static float dot_q6_k(const uint8_t *w, const xblock *x, int nb) {
    int nsuper = nb / 8;
    float sum = 0.0f;
    for (int i = 0; i < nsuper; ++i, w += 210, x += 8) {
        const uint8_t *ql = w, *qh = w + 128;
        const int8_t *sc = (const int8_t *)(w + 192);
        float d = rdf16(w + 208);
#if HAVE_AVX2
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
#else
        float acc = 0.0f;
        for (int half = 0; half < 2; ++half) {
            const uint8_t *l = ql + 64 * half, *h = qh + 32 * half;
            const int8_t *s = sc + 8 * half;
            const xblock *xb = x + 4 * half;
            for (int g = 0; g < 4; ++g) {
                int a = 0, b = 0;
                for (int k = 0; k < 32; ++k) {
                    int lo = g & 1 ? l[32 + k] : l[k];
                    lo = g >= 2 ? lo >> 4 : lo & 0xF;
                    int q = (lo | (((h[k] >> (2 * g)) & 3) << 4)) - 32;
                    if (k < 16) a += q * xb[g].q[k]; else b += q * xb[g].q[k];
                }
                acc += xb[g].d * (s[2 * g] * a + s[2 * g + 1] * b);
            }
        }
        sum += d * acc;
#endif
    }
    return sum;
}

/* ------------------------------------------------------------------------- dispatch table */

typedef float (*dot_fn)(const uint8_t *, const xblock *, int);
typedef void (*deq_fn)(const uint8_t *, float *);

typedef struct {
    int id;
    int block;      /* elements per weight block */
    int type_size;  /* bytes per weight block */
    dot_fn dot;     /* integer path (x quantized), or NULL */
    deq_fn deq;     /* float path: one block -> floats */
} qtype;

static const qtype QTYPES[] = {
    {T_Q4_0, 32, 18, dot_q4_0, deq_q4_0},     {T_Q4_1, 32, 20, dot_q4_1, deq_q4_1},
    {T_Q5_0, 32, 22, dot_q5_0, deq_q5_0},     {T_Q5_1, 32, 24, dot_q5_1, deq_q5_1},
    {T_Q8_0, 32, 34, dot_q8_0, deq_q8_0},     {T_Q4_K, 256, 144, dot_q4_k, deq_q4_k},
    {T_Q5_K, 256, 176, dot_q5_k, deq_q5_k},   {T_Q6_K, 256, 210, dot_q6_k, deq_q6_k},
    {T_Q2_K, 256, 84, NULL, deq_q2_k},    {T_Q3_K, 256, 110, NULL, deq_q3_k},
    {T_IQ4_NL, 32, 18, NULL, deq_iq4_nl}, {T_IQ4_XS, 256, 136, NULL, deq_iq4_xs},
    {T_F16, 32, 64, NULL, deq_f16},       {T_BF16, 32, 64, NULL, deq_bf16},
};

static const qtype *find_type(int id) {
    for (size_t i = 0; i < sizeof QTYPES / sizeof QTYPES[0]; ++i)
        if (QTYPES[i].id == id) return &QTYPES[i];
    return NULL;
}

static float dot_f32(const float *a, const float *b, int n) {
#if HAVE_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= n; k += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), acc1);
    }
    float s = hsum_ps(_mm256_add_ps(acc0, acc1));
#else
    float s = 0.0f;
    int k = 0;
#endif
    for (; k < n; ++k) s += a[k] * b[k];
    return s;
}

/* Activations -> 8-bit blocks: d = max|x| / 127, q = round(x / d) (ggml quantize_row_q8_1). */
static void quantize_x(const float *x, xblock *out, int nb) {
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

/* ----------------------------------------------------------------------------- thread pool */
/* A product is split into chunks of rows. Threads claim chunks with a CAS on one 64-bit word
   holding [generation:24][n_chunks:20][next chunk:20], so a worker that wakes late (the machine
   is busy, it was descheduled) finds the generation moved on and claims nothing: the caller never
   waits for a thread that has not started, only for chunks that were claimed. The job's fields
   stay valid while any chunk of it is unfinished, which is all a claimer relies on. */

#define MAX_PARTS 4

/* One weight matrix of a product: y_part[t, n] = W[n] . x[t]. */
typedef struct {
    const qtype *type;
    const uint8_t *w;
    int64_t n_rows, row_bytes, chunk, first_chunk;
    float *y;
    int int8; /* integer dots on the quantized x, else dequantized rows . float x */
} part_t;

/* A product of one x with 1..MAX_PARTS matrices (q, k and v; gate and up), whose chunks of
   rows are numbered one after the other. */
typedef struct {
    part_t parts[MAX_PARTS];
    int n_parts;
    int64_t k, n_tokens;
    const float *x;
    const xblock *xq;
    atomic_ullong claim;
    atomic_llong done;  /* chunks finished */
} job_t;

#define MAX_THREADS 64
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
#endif
}

static void run_rows(const job_t *j, const part_t *p, int64_t r0, int64_t r1, float *row) {
    int64_t nb32 = j->k / QK;
    float buf[QK_K];
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t *w = p->w + r * p->row_bytes;
        if (p->int8) {
            for (int64_t t = 0; t < j->n_tokens; ++t)
                p->y[t * p->n_rows + r] = p->type->dot(w, j->xq + t * nb32, (int)nb32);
            continue;
        }
        int64_t blocks = j->k / p->type->block;
        for (int64_t b = 0; b < blocks; ++b) {
            p->type->deq(w + b * p->type->type_size, buf);
            memcpy(row + b * p->type->block, buf, sizeof(float) * p->type->block);
        }
        for (int64_t t = 0; t < j->n_tokens; ++t)
            p->y[t * p->n_rows + r] = dot_f32(row, j->x + t * j->k, (int)j->k);
    }
}

static float *g_row_scratch[MAX_THREADS + 1];
static int64_t g_row_cap[MAX_THREADS + 1];

static float *row_scratch(int slot, int64_t k) {
    if (g_row_cap[slot] < k) {
        free(g_row_scratch[slot]);
        g_row_scratch[slot] = malloc(sizeof(float) * (size_t)k);
        g_row_cap[slot] = g_row_scratch[slot] ? k : 0;
    }
    return g_row_scratch[slot];
}

/* Claims and runs chunks of generation `gen` until none is left; `slot` names the thread's
   scratch row (float path), sized only once a chunk is claimed and the job is known. */
static void work_on(job_t *j, unsigned gen, int slot) {
    float *row = NULL;
    unsigned long long c = atomic_load(&j->claim);
    for (;;) {
        unsigned long long idx = c & 0xFFFFF, n = (c >> 20) & 0xFFFFF;
        if ((c >> 40) != (gen & 0xFFFFFF) || idx >= n) return;
        if (!atomic_compare_exchange_weak(&j->claim, &c, c + 1)) continue;
        const part_t *p = &j->parts[0];
        for (int i = 1; i < j->n_parts && (int64_t)idx >= j->parts[i].first_chunk; ++i)
            p = &j->parts[i];
        if (!p->int8 && !row && !(row = row_scratch(slot, j->k))) abort();
        int64_t r0 = ((int64_t)idx - p->first_chunk) * p->chunk, r1 = r0 + p->chunk;
        run_rows(j, p, r0, r1 < p->n_rows ? r1 : p->n_rows, row);
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

/* ------------------------------------------------------------------------- Python binding */

static xblock *g_xq;
static size_t g_xq_cap;

/* Fills part p from a (type_id, w_ptr, n_rows, y_ptr, int8) tuple; 0 on success. int8 asks
   for the integer path where the type has one (decode-sized x: no row dequantization). */
static int parse_part(PyObject *item, long long k, part_t *p) {
    int type_id, int8;
    unsigned long long w, y;
    long long n_rows;
    if (!PyArg_ParseTuple(item, "iKLKp", &type_id, &w, &n_rows, &y, &int8)) return -1;
    p->type = find_type(type_id);
    if (!p->type) {
        PyErr_Format(PyExc_ValueError, "ggml type %d has no kernel", type_id);
        return -1;
    }
    if (n_rows <= 0 || k % p->type->block) {
        PyErr_Format(PyExc_ValueError, "bad shape: %lld rows of %lld", n_rows, k);
        return -1;
    }
    p->w = (const uint8_t *)(uintptr_t)w;
    p->y = (float *)(uintptr_t)y;
    p->n_rows = n_rows;
    p->row_bytes = k / p->type->block * p->type->type_size;
    p->int8 = int8 && p->type->dot;
    return 0;
}

/* Splits every part's rows into chunks (a few per thread, capped so rows stay in cache). */
static int64_t plan_chunks(job_t *j) {
    int64_t threads = g_n_workers + 1, first = 0;
    for (int i = 0; i < j->n_parts; ++i) {
        part_t *p = &j->parts[i];
        int64_t chunk = p->n_rows / (threads * 8);
        chunk = chunk < 1 ? 1 : chunk > 64 ? 64 : chunk;
        if (j->n_tokens > 1 && chunk > 16) chunk = 16;
        p->chunk = chunk;
        p->first_chunk = first;
        first += (p->n_rows + chunk - 1) / chunk;
    }
    return first;
}

static PyObject *py_matmul(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x;
    long long k, n_tokens;
    PyObject *parts;
    if (!PyArg_ParseTuple(args, "LKLO!", &k, &x, &n_tokens, &PyTuple_Type, &parts)) return NULL;
    Py_ssize_t n_parts = PyTuple_GET_SIZE(parts);
    if (n_parts < 1 || n_parts > MAX_PARTS || n_tokens <= 0 || k <= 0 || k % QK)
        return PyErr_Format(PyExc_ValueError, "bad product: %zd parts, k=%lld, %lld tokens",
                            n_parts, k, n_tokens);
    part_t staged[MAX_PARTS];
    int any_int8 = 0, any_float = 0;
    for (Py_ssize_t i = 0; i < n_parts; ++i) {
        if (parse_part(PyTuple_GET_ITEM(parts, i), k, &staged[i]) < 0) return NULL;
        if (staged[i].int8) any_int8 = 1; else any_float = 1;
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&g_submit_mu);
    size_t need = (size_t)(n_tokens * (k / QK));
    if (any_int8 && need > g_xq_cap) {
        free(g_xq);
        g_xq = malloc(need * sizeof(xblock));
        g_xq_cap = g_xq ? need : 0;
    }
    if ((any_int8 && !g_xq) || (any_float && !row_scratch(0, k))) failed = 1;
    else {
        job_t *j = &g_job;
        if (any_int8)
            for (long long t = 0; t < n_tokens; ++t)
                quantize_x((const float *)(uintptr_t)x + t * k, g_xq + t * (k / QK), (int)(k / QK));
        memcpy(j->parts, staged, sizeof(part_t) * (size_t)n_parts);
        j->n_parts = (int)n_parts;
        j->k = k;
        j->n_tokens = n_tokens;
        j->x = (const float *)(uintptr_t)x;
        j->xq = g_xq;
        int64_t n_chunks = plan_chunks(j);
        if (n_chunks > MAX_CHUNKS) failed = 2;
        else run_parallel(n_chunks);
    }
    pthread_mutex_unlock(&g_submit_mu);
    Py_END_ALLOW_THREADS
    if (failed == 2) return PyErr_Format(PyExc_ValueError, "product too large for one call");
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* y = x / sqrt(mean(x^2) + eps) * (offset + w), row by row, in float32 as torch's rms_norm
   (the sum of squares in double: one rounding less, same result to the last bit or two). */
static PyObject *py_rms_norm(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, w, y;
    long long n_rows, dim;
    double eps, offset;
    if (!PyArg_ParseTuple(args, "KKLLddK", &x, &w, &n_rows, &dim, &eps, &offset, &y)) return NULL;
    if (n_rows < 0 || dim <= 0) return PyErr_Format(PyExc_ValueError, "bad shape");
    const float *xs = (const float *)(uintptr_t)x, *ws = (const float *)(uintptr_t)w;
    float *ys = (float *)(uintptr_t)y;
    float off = (float)offset;
    for (long long r = 0; r < n_rows; ++r, xs += dim, ys += dim) {
        double ss = 0.0;
        for (long long j = 0; j < dim; ++j) ss += (double)xs[j] * xs[j];
        float scale = 1.0f / sqrtf((float)(ss / (double)dim) + (float)eps);
        if (off != 0.0f)
            for (long long j = 0; j < dim; ++j) ys[j] = xs[j] * scale * (off + ws[j]);
        else
            for (long long j = 0; j < dim; ++j) ys[j] = xs[j] * scale * ws[j];
    }
    Py_RETURN_NONE;
}

/* -------------------------------------------------------------- decode-step attention */

/* Rotates the pairs of one head in place: "neox" pairs (j, j + D/2), "interleaved" (2j, 2j+1);
   angle j's cosine and sine sit at cos[j * step], sin[j * step]. */
static void rope_head(float *x, int d, const float *cos, const float *sin, int64_t step,
                      int interleaved) {
    int half = d / 2;
    for (int j = 0; j < half; ++j) {
        int a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + half;
        float x0 = x[a], x1 = x[b], c = cos[j * step], s = sin[j * step];
        x[a] = x0 * c - x1 * s;
        x[b] = x1 * c + x0 * s;
    }
}

/* One decode step of attention for B rows, each at its own position (B, 1 token each):
   rotate q and the new k, store k and v in the cache row at the position, then softmax over
   the row's keys [pos - window + 1, pos] (all of 0..pos without a window) with GQA. Layouts:
   q, out (B, H, D); k, v (B, KV, D); caches (B, KV, max_ctx, D), float32 contiguous; positions
   int64 (B,), or none (0) for every row at pos0; row b's rope angles at cos + b * rope_row,
   sin + b * rope_row, every rope_step floats (so views of torch's rope tables serve). */
static PyObject *py_decode_attention(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long q_p, k_p, v_p, ck_p, cv_p, pos_p, cos_p, sin_p, out_p;
    long long B, H, KV, D, max_ctx, pos0, window, rope_row, rope_step;
    double scale;
    int interleaved;
    if (!PyArg_ParseTuple(args, "KKKKKLLLLLKLLdKKLLiK", &q_p, &k_p, &v_p, &ck_p, &cv_p, &B, &H,
                          &KV, &D, &max_ctx, &pos_p, &pos0, &window, &scale, &cos_p, &sin_p,
                          &rope_row, &rope_step, &interleaved, &out_p))
        return NULL;
    if (B <= 0 || H <= 0 || KV <= 0 || H % KV || D <= 0 || D % 2 || D > 1024 || max_ctx <= 0)
        return PyErr_Format(PyExc_ValueError, "bad attention shape");
    const int64_t *positions = (const int64_t *)(uintptr_t)pos_p;
    for (long long b = 0; b < B; ++b) {
        long long pos = positions ? positions[b] : pos0;
        if (pos < 0 || pos >= max_ctx)
            return PyErr_Format(PyExc_ValueError, "position %lld outside the cache of %lld", pos,
                                max_ctx);
    }
    float *scores = malloc(sizeof(float) * (size_t)max_ctx);
    if (!scores) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    const float *cos_t = (const float *)(uintptr_t)cos_p, *sin_t = (const float *)(uintptr_t)sin_p;
    float *ck = (float *)(uintptr_t)ck_p, *cv = (float *)(uintptr_t)cv_p;
    float qh[1024], acc[1024];
    for (long long b = 0; b < B; ++b) {
        int64_t pos = positions ? positions[b] : pos0;
        const float *cs = cos_t + b * rope_row, *sn = sin_t + b * rope_row;
        for (long long g = 0; g < KV; ++g) {
            float *kdst = ck + ((b * KV + g) * max_ctx + pos) * D;
            memcpy(kdst, (const float *)(uintptr_t)k_p + (b * KV + g) * D, sizeof(float) * D);
            rope_head(kdst, (int)D, cs, sn, rope_step, interleaved);
            memcpy(cv + ((b * KV + g) * max_ctx + pos) * D,
                   (const float *)(uintptr_t)v_p + (b * KV + g) * D, sizeof(float) * D);
        }
        int64_t lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
        for (long long h = 0; h < H; ++h) {
            long long g = h / (H / KV);
            memcpy(qh, (const float *)(uintptr_t)q_p + (b * H + h) * D, sizeof(float) * D);
            rope_head(qh, (int)D, cs, sn, rope_step, interleaved);
            const float *keys = ck + (b * KV + g) * max_ctx * D;
            const float *vals = cv + (b * KV + g) * max_ctx * D;
            float mx = -INFINITY;
            for (int64_t l = lo; l <= pos; ++l) {
                float sc = (float)scale * dot_f32(qh, keys + l * D, (int)D);
                scores[l] = sc;
                mx = sc > mx ? sc : mx;
            }
            float sum = 0.0f;
            for (int64_t l = lo; l <= pos; ++l) sum += (scores[l] = expf(scores[l] - mx));
            for (long long j = 0; j < D; ++j) acc[j] = 0.0f;
            for (int64_t l = lo; l <= pos; ++l) {
                const float *vl = vals + l * D;
                float p = scores[l];
                for (long long j = 0; j < D; ++j) acc[j] += p * vl[j];
            }
            float *o = (float *)(uintptr_t)out_p + (b * H + h) * D;
            for (long long j = 0; j < D; ++j) o[j] = acc[j] / sum;
        }
    }
    Py_END_ALLOW_THREADS
    free(scores);
    Py_RETURN_NONE;
}

static PyObject *py_set_threads(PyObject *self, PyObject *args) {
    (void)self;
    int n;
    if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
    if (n < 1 || n > MAX_THREADS)
        return PyErr_Format(PyExc_ValueError, "threads must be in 1..%d, not %d", MAX_THREADS, n);
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&g_submit_mu);
    if (n - 1 != g_n_workers) {
        stop_workers();
        failed = start_workers(n - 1);
    }
    pthread_mutex_unlock(&g_submit_mu);
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_Format(PyExc_OSError, "could not start %d kernel threads", n - 1);
    Py_RETURN_NONE;
}

static PyObject *py_get_threads(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    return PyLong_FromLong(g_n_workers + 1);
}

static PyObject *py_types(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    for (size_t i = 0; i < sizeof QTYPES / sizeof QTYPES[0]; ++i) {
        PyObject *key = PyLong_FromLong(QTYPES[i].id);
        PyObject *val = PyUnicode_FromString(QTYPES[i].dot ? "int8" : "float");
        if (!key || !val || PyDict_SetItem(out, key, val) < 0) {
            Py_XDECREF(key); Py_XDECREF(val); Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(key); Py_DECREF(val);
    }
    return out;
}

static PyMethodDef METHODS[] = {
    {"matmul", py_matmul, METH_VARARGS,
     "matmul(k, x_ptr, n_tokens, ((ggml_type, w_ptr, n_rows, y_ptr, int8), ...)): per part,\n"
     "y[t, n] = W[n] . x[t] (x float32 (n_tokens, k); W GGML rows; y float32 (n_tokens, n_rows))"},
    {"rms_norm", py_rms_norm, METH_VARARGS,
     "rms_norm(x_ptr, w_ptr, n_rows, dim, eps, offset, y_ptr): float32 RMSNorm of each row"},
    {"decode_attention", py_decode_attention, METH_VARARGS,
     "decode_attention(q, k, v, cache_k, cache_v, B, H, KV, D, max_ctx, positions, pos0,\n"
     "window, scale, cos, sin, rope_row, rope_step, interleaved, out): rope, cache write and\n"
     "attention of one decode step"},
    {"set_threads", py_set_threads, METH_VARARGS, "set_threads(n): threads per product"},
    {"get_threads", py_get_threads, METH_NOARGS, "threads per product"},
    {"types", py_types, METH_NOARGS, "{ggml type id: 'int8' | 'float'} of the kernels"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_cpu", NULL, -1, METHODS};

PyMODINIT_FUNC PyInit__cpu(void) {
    return PyModule_Create(&MODULE);
}
