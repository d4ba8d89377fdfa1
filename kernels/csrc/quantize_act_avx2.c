/* Activations to q8x blocks with AVX2: the same bytes as quantize_act_scalar.c (same amax, the
 * same float32 d and 1/d, the same clamp and round-half-away-from-zero). */
#include "rke_avx2_target.h"
RKE_AVX2_BEGIN /* to RKE_AVX2_END: AVX2, FMA and F16C code */
#include "rke_avx2.h"

#if RKE_X86
#include <float.h>

/* round half away from zero of v in [-127, 127]: truncate, then step by the exact remainder */
static inline __m256i round_away(__m256 v) {
    const __m256i q = _mm256_cvttps_epi32(v);
    const __m256 frac = _mm256_sub_ps(v, _mm256_cvtepi32_ps(q));
    const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ));
    const __m256i down =
        _mm256_castps_si256(_mm256_cmp_ps(frac, _mm256_set1_ps(-0.5f), _CMP_LE_OQ));
    return _mm256_add_epi32(_mm256_sub_epi32(q, up), down); /* masks are -1 */
}

static inline int32_t hsum_epi32(__m256i v) {
    const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    const __m128i u = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
    return _mm_cvtsi128_si32(_mm_add_epi32(u, _mm_shuffle_epi32(u, 1)));
}

void rke_quantize_q8x_avx2(const float *x, rke_block_q8x *xq, int64_t n_blocks) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int64_t b = 0; b < n_blocks; b++) {
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(x + b * QK + 8 * i);
            /* max(a, amax) returns amax when a is NaN, as the scalar `a > amax ? a : amax` */
            amax = _mm256_max_ps(_mm256_and_ps(v[i], abs_mask), amax);
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float d = _mm_cvtss_f32(m4) / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        id = id < FLT_MAX ? id : FLT_MAX;
        const __m256 idv = _mm256_set1_ps(id);
        __m256i q[4];
        for (int i = 0; i < 4; i++) {
            __m256 s = _mm256_mul_ps(v[i], idv);
            s = _mm256_max_ps(s, _mm256_set1_ps(-127.0f)); /* NaN -> -127 like the scalar */
            s = _mm256_min_ps(s, _mm256_set1_ps(127.0f));
            q[i] = round_away(s);
        }
        const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]),
                                             _mm256_add_epi32(q[2], q[3]));
        /* the packs work per 128-bit half; the permute puts the 32 bytes back in order */
        const __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
        const __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), order);
        _mm256_storeu_si256((__m256i *)xq[b].qs, bytes);
        xq[b].d = d;
        xq[b].s = hsum_epi32(sum);
    }
}
#else
typedef int rke_quantize_act_avx2_is_empty_here;
#endif

RKE_AVX2_END
