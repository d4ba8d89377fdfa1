/* rke_exp.h's versions as one entry point, so that tests can hold them to each other and to
 * numpy's exp: `lanes` 1 (scalar), 4 (SSE2) or 8 (AVX2: the caller checks the CPU first). */
#include "rke_exp.h"

void rke_exp_f32(const float *x, float *y, int64_t n, int lanes) {
    int64_t i = 0;
#if RKE_X86
    if (lanes == 8) {
        rke_exp_f32_avx2(x, y, n);
        return;
    }
#endif
#if RKE_HAVE_SSE2
    if (lanes == 4) {
        for (; i + 4 <= n; i += 4) _mm_storeu_ps(y + i, rke_exp4(_mm_loadu_ps(x + i)));
    }
#endif
    for (; i < n; i++) y[i] = rke_exp(x[i]);
}
