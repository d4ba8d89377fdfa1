/* rke_exp.h's exp and sigmoid eight lanes wide, for the *_avx2.c files (after RKE_AVX2_BEGIN):
 * rke_exp4's operations on a wider register, so rke_exp's bits. */
#ifndef RKE_EXP_AVX2_H
#define RKE_EXP_AVX2_H
#include "rke_avx2.h"
#include "rke_exp.h"

#if RKE_X86
static inline __m256 rke_exp8(__m256 x) {
    const __m256 round = _mm256_set1_ps(RKE_EXP_ROUND);
    const __m256 t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(RKE_EXP_LOG2E)), round);
    const __m256 n = _mm256_sub_ps(t, round);
    const __m256i n_bits = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B400000 - 127));
    const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(n_bits, 23));
    __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(RKE_EXP_LN2_HI)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(RKE_EXP_LN2_LO)));
    __m256 p = _mm256_set1_ps(RKE_EXP_P0);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(RKE_EXP_P1));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(RKE_EXP_P2));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(RKE_EXP_P3));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(RKE_EXP_P4));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(RKE_EXP_P5));
    __m256 y = _mm256_mul_ps(
        _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0f)), scale);
    /* rke_exp's special cases, in its order: NaN, then above, then below */
    const __m256 big = _mm256_cmp_ps(x, _mm256_set1_ps(RKE_EXP_HI), _CMP_GT_OQ);
    const __m256 small = _mm256_cmp_ps(x, _mm256_set1_ps(RKE_EXP_LO), _CMP_LT_OQ);
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), big);
    y = _mm256_andnot_ps(small, y);
    return _mm256_blendv_ps(y, x, nan);
}

static inline __m256 rke_sigmoid8(__m256 z) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, rke_exp8(_mm256_xor_ps(z, _mm256_set1_ps(-0.0f)))));
}

#endif
#endif
