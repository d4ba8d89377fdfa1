/* Small vector helpers shared by the *_avx2.c files, which include this after RKE_AVX2_BEGIN
 * (rke_avx2_target.h). */
#ifndef RKE_AVX2_H
#define RKE_AVX2_H

#include "rke_internal.h"
#if RKE_X86
#include <immintrin.h>
#endif

#if RKE_X86

/* The fixed tree of rke_hsum8: (a0 + a4), ..., then (t0 + t2) + (t1 + t3). */
static inline float hsum8(__m256 acc) {
    const __m128 t = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    const __m128 u = _mm_add_ps(t, _mm_movehl_ps(t, t));
    return _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)));
}

static inline uint16_t load_u16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The fp16 at p (unaligned) as float32, in rke_fp16_table: a pointer, so that _mm256_broadcast_ss
 * of it stays one load (a broadcast from a register takes a shuffle-port uop). */
static inline const float *fp16_at(const uint8_t *p) { return &rke_fp16_table[load_u16(p)]; }

#endif
#endif
