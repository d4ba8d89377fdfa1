/* rke_exp_avx2.h's exp over an array, for exp_f32.c's test entry point. */
#include "rke_avx2_target.h"
RKE_AVX2_BEGIN /* to RKE_AVX2_END: AVX2, FMA and F16C code */
#include "rke_exp_avx2.h"

#if RKE_X86
void rke_exp_f32_avx2(const float *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, rke_exp8(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) y[i] = rke_exp(x[i]);
}
#else
typedef int rke_exp_f32_avx2_is_empty_here;
#endif

RKE_AVX2_END
