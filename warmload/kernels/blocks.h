/* AVX2 building blocks of the GGML block formats, shared by the row dots (quants.c) and the
   prompt products (gemm.c): bytes of nibbles and bits to 32 bytes, and each 32-value type's
   block unpacked into registers. Layouts: llama.cpp ggml/src/ggml-common.h. */

#ifndef WARMLOAD_BLOCKS_H
#define WARMLOAD_BLOCKS_H

#include "kernels.h"

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

/* One unpacked block: quants (unsigned, or signed for Q8_0), scale d, offset coefficient c
   (the block's value is d * q + c per element, c multiplying x's d * sum(q)). */
typedef void (*unpack_fn)(const uint8_t *w, __m256i *q, float *d, float *c);

static inline void unp_q4_0(const uint8_t *w, __m256i *q, float *d, float *c) {
    *q = nibbles32(w + 2), *d = rdf16(w), *c = -8.0f * *d;
}
static inline void unp_q4_1(const uint8_t *w, __m256i *q, float *d, float *c) {
    *q = nibbles32(w + 4), *d = rdf16(w), *c = rdf16(w + 2);
}
static inline void unp_q5_0(const uint8_t *w, __m256i *q, float *d, float *c) {
    *q = _mm256_or_si256(nibbles32(w + 6), _mm256_and_si256(bits32(w + 2), _mm256_set1_epi8(0x10)));
    *d = rdf16(w), *c = -16.0f * *d;
}
static inline void unp_q5_1(const uint8_t *w, __m256i *q, float *d, float *c) {
    *q = _mm256_or_si256(nibbles32(w + 8), _mm256_and_si256(bits32(w + 4), _mm256_set1_epi8(0x10)));
    *d = rdf16(w), *c = rdf16(w + 2);
}
static inline void unp_q8_0(const uint8_t *w, __m256i *q, float *d, float *c) {
    *q = _mm256_loadu_si256((const __m256i *)(w + 2)), *d = rdf16(w), *c = 0.0f;
}

/* Values 64j..64j+63 of a Q4_K or Q5_K super-block (quants qs): the 32 low nibbles (sub-block
   2j) and the 32 high ones (2j + 1); with `five`, Q5_K's fifth bits, bits 2j and 2j + 1 of each
   byte of hbits (the block's 32 bytes of high bits). */
static inline void unp_q45_k(const uint8_t *qs, __m256i hbits, int five, int j, __m256i *lo,
                             __m256i *hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), b4 = _mm256_set1_epi8(0x10);
    __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
    *lo = _mm256_and_si256(v, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    if (five) {
        __m256i u1 = _mm256_set1_epi8((char)(1 << (2 * j)));
        __m256i u2 = _mm256_set1_epi8((char)(2 << (2 * j)));
        __m256i h1 = _mm256_cmpeq_epi8(_mm256_and_si256(hbits, u1), u1);
        __m256i h2 = _mm256_cmpeq_epi8(_mm256_and_si256(hbits, u2), u2);
        *lo = _mm256_or_si256(*lo, _mm256_and_si256(h1, b4));
        *hi = _mm256_or_si256(*hi, _mm256_and_si256(h2, b4));
    }
}

#endif

#endif
