/* exp in float32 for the per-token stages, as a scalar function and an SSE2 twin that return the
 * same bits: Cody-Waite reduction x = n ln2 + r (ln2 split so that n * hi is exact), Cephes's
 * degree-6 polynomial for exp(r) (S. Moshier, Cephes expf.c), times 2^n; every operation
 * rounded on its own (no FMA), so the order below is the definition. Within 1 ulp of exp on
 * [-87.33, 88.37]; +inf above, 0 below (where expf gives a subnormal), NaN for NaN. glibc's expf
 * is one call per element: in RWKV-7's decay and gates that was ~10 % of a prompt. */
#ifndef RKE_EXP_H
#define RKE_EXP_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "rke_internal.h"
#if defined(__SSE2__) || defined(_M_X64)
#define RKE_HAVE_SSE2 1
#include <emmintrin.h>
#else
#define RKE_HAVE_SSE2 0
#endif

#if RKE_X86
/* y = rke_exp(x) over n floats with rke_exp_avx2.h's 8 lanes (exp_f32_avx2.c; AVX2 CPUs only) */
void rke_exp_f32_avx2(const float *x, float *y, int64_t n);
#endif

#define RKE_EXP_HI 88.37f
#define RKE_EXP_LO -87.33f
#define RKE_EXP_LOG2E 1.44269504088896341f
#define RKE_EXP_ROUND 12582912.0f /* 1.5 * 2^23: adding it rounds to an integer, ties to even */
#define RKE_EXP_LN2_HI 0.693359375f
#define RKE_EXP_LN2_LO -2.12194440e-4f
#define RKE_EXP_P0 1.9875691500e-4f
#define RKE_EXP_P1 1.3981999507e-3f
#define RKE_EXP_P2 8.3334519073e-3f
#define RKE_EXP_P3 4.1665795894e-2f
#define RKE_EXP_P4 1.6666665459e-1f
#define RKE_EXP_P5 5.0000001201e-1f

static inline float rke_exp(float x) {
    if (x != x) return x;
    if (x > RKE_EXP_HI) return INFINITY;
    if (x < RKE_EXP_LO) return 0.0f;
    const float t = x * RKE_EXP_LOG2E + RKE_EXP_ROUND;
    const float n = t - RKE_EXP_ROUND;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    const uint32_t scale_bits = (uint32_t)(bits - 0x4B400000 + 127) << 23; /* 2^n, n in -126..127 */
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    float r = x - n * RKE_EXP_LN2_HI;
    r = r - n * RKE_EXP_LN2_LO;
    float p = RKE_EXP_P0;
    p = p * r + RKE_EXP_P1;
    p = p * r + RKE_EXP_P2;
    p = p * r + RKE_EXP_P3;
    p = p * r + RKE_EXP_P4;
    p = p * r + RKE_EXP_P5;
    return ((p * (r * r) + r) + 1.0f) * scale;
}

static inline float rke_sigmoid_fast(float z) { return 1.0f / (1.0f + rke_exp(-z)); }

#if RKE_HAVE_SSE2
static inline __m128 rke_exp4(__m128 x) {
    const __m128 round = _mm_set1_ps(RKE_EXP_ROUND);
    const __m128 t = _mm_add_ps(_mm_mul_ps(x, _mm_set1_ps(RKE_EXP_LOG2E)), round);
    const __m128 n = _mm_sub_ps(t, round);
    const __m128i n_bits = _mm_sub_epi32(_mm_castps_si128(t), _mm_set1_epi32(0x4B400000 - 127));
    const __m128 scale = _mm_castsi128_ps(_mm_slli_epi32(n_bits, 23));
    __m128 r = _mm_sub_ps(x, _mm_mul_ps(n, _mm_set1_ps(RKE_EXP_LN2_HI)));
    r = _mm_sub_ps(r, _mm_mul_ps(n, _mm_set1_ps(RKE_EXP_LN2_LO)));
    __m128 p = _mm_set1_ps(RKE_EXP_P0);
    p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(RKE_EXP_P1));
    p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(RKE_EXP_P2));
    p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(RKE_EXP_P3));
    p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(RKE_EXP_P4));
    p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(RKE_EXP_P5));
    __m128 y = _mm_mul_ps(_mm_add_ps(_mm_add_ps(_mm_mul_ps(p, _mm_mul_ps(r, r)), r), _mm_set1_ps(1.0f)),
                          scale);
    /* the scalar version's special cases, in its order: NaN, then above, then below */
    const __m128 big = _mm_cmpgt_ps(x, _mm_set1_ps(RKE_EXP_HI));
    const __m128 small = _mm_cmplt_ps(x, _mm_set1_ps(RKE_EXP_LO));
    const __m128 nan = _mm_cmpunord_ps(x, x);
    y = _mm_or_ps(_mm_andnot_ps(big, y), _mm_and_ps(big, _mm_set1_ps(INFINITY)));
    y = _mm_andnot_ps(small, y);
    return _mm_or_ps(_mm_andnot_ps(nan, y), _mm_and_ps(nan, x));
}

static inline __m128 rke_sigmoid4(__m128 z) {
    const __m128 one = _mm_set1_ps(1.0f);
    return _mm_div_ps(one, _mm_add_ps(one, rke_exp4(_mm_xor_ps(z, _mm_set1_ps(-0.0f)))));
}
#endif

#endif
