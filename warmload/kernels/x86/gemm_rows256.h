/* gemm.c's row kernels for 256-bit vectors (AVX2, AVX-VNNI), included by gemm.c where its
   macros (VB, tokens_step, TILE ..) and block32 / scales_q45_k are defined. x86 only. */

#if VB == 32
/* The common types unpacked straight into registers (AVX2, AVX-VNNI): the bytes, scales and
   offset coefficients of their to_q8, block by block, without row_buffered's buffer and its
   call per block (which made a decode step ~2-4x slower than the row dots; measured with
   benchmarks/bench_decode_profile.py's shapes). */

/* Block b of a 32-value row (at w) against nt tokens, into the chain acc. */
ALWAYS_INLINE void block32_tokens(int id, const uint8_t *w, int64_t b, xtile_t x, int nt,
                                  float *c, vf *acc) {
    __m256i q;
    float d;
    block32(id, w, &q, &d, c + b);
    tokens_step(q, _mm256_set1_ps(d), id != T_Q8_0, x_at(x, b * QK), nt, acc);
}

ALWAYS_INLINE void row_blocks32(int id, int size, const uint8_t *w, int64_t nb, xtile_t x,
                                int nt, float *c, vf *acc) {
    /* two blocks a step, so that the chain (acc or acc + TILE) is known at compile time and
       the accumulators stay in registers (indexed by b & 1 they went through the stack). No
       software prefetch: one every 16 blocks made the streaming Q8_0 output matrix of Gemma 3
       (262144 x 640) take 2x as long on Zen 4 (15.0 -> 7.5 ms a decode step, 2 threads); the
       hardware prefetcher follows these rows alone. */
    int64_t b = 0;
    for (; b + 1 < nb; b += 2, w += 2 * size) {
        block32_tokens(id, w, b, x, nt, c, acc);
        block32_tokens(id, w + size, b + 1, x, nt, c, acc + TILE);
    }
    if (b < nb) block32_tokens(id, w, b, x, nt, c, acc);
}

ALWAYS_INLINE void row_q45_k32(int five, const uint8_t *w, int64_t nb, xtile_t x, int nt,
                               float *c, vf *acc) {
    const int size = five ? 176 : 144;
    for (int64_t S = 0; S * 8 < nb; ++S, w += size) {
        _mm_prefetch((const char *)w + PREFETCH_AHEAD, _MM_HINT_T0);
        _mm_prefetch((const char *)w + PREFETCH_AHEAD + 64, _MM_HINT_T0);
        __m256 d, cm;
        scales_q45_k(w, &d, &cm);
        _mm256_storeu_ps(c + 8 * S, cm);
        float ds[8];
        _mm256_storeu_ps(ds, d);
        const uint8_t *qs = w + (five ? 48 : 16);
        __m256i hbits = five ? LOADI(w + 16) : _mm256_setzero_si256();
        for (int j = 0; j < 4; ++j) {
            __m256i lo, hi;
            unp_q45_k(qs, hbits, five, j, &lo, &hi);
            int64_t at = (8 * S + 2 * j) * QK;
            tokens_step(lo, _mm256_set1_ps(ds[2 * j]), 1, x_at(x, at), nt, acc);
            tokens_step(hi, _mm256_set1_ps(ds[2 * j + 1]), 1, x_at(x, at + QK), nt, acc + TILE);
        }
    }
}

/* Q6_K: values 128 h + 32 k.. of a super-block (sub-blocks 8h + 2k and 8h + 2k + 1, their
   scales d * sc in lanes 0-3 and 4-7), signed q - 32, as q8_q6_k writes them. */
ALWAYS_INLINE void row_q6_k32(const uint8_t *w, int64_t nb, xtile_t x, int nt, vf *acc) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
    const __m256i m32 = _mm256_set1_epi8(32);
    for (int64_t S = 0; S * 8 < nb; ++S, w += 210) {
        for (int o = 0; o < 210; o += 64)
            _mm_prefetch((const char *)w + PREFETCH_AHEAD + o, _MM_HINT_T0);
        const int8_t *sc = (const int8_t *)(w + 192);
        float d = rdf16(w + 208);
        for (int half = 0; half < 2; ++half) {
            const uint8_t *l = w + 64 * half, *h = w + 128 + 32 * half;
            __m256i q0 = LOADI(l), q1 = LOADI(l + 32), hh = LOADI(h);
            for (int k = 0; k < 4; ++k) {
                __m256i low = _mm256_and_si256(k & 2 ? _mm256_srli_epi16(k & 1 ? q1 : q0, 4)
                                                     : (k & 1 ? q1 : q0), m4);
                __m256i high = _mm256_and_si256(_mm256_srli_epi16(hh, 2 * k), m2);
                __m256i q = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16(high, 4)), m32);
                int j = 8 * half + 2 * k;
                __m256 s = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_set1_ps(d * sc[j])),
                                                _mm_set1_ps(d * sc[j + 1]), 1);
                tokens_step(q, s, 0, x_at(x, S * QK_K + 128 * half + 32 * k), nt,
                            acc + (k & 1) * TILE);
            }
        }
    }
}
#endif
