/* rke_exp.h's two versions as one entry point, so that tests can hold them to each other and to
 * numpy's exp. */
#include "rke_exp.h"

void rke_exp_f32(const float *x, float *y, int64_t n, int vector) {
    int64_t i = 0;
#if RKE_HAVE_SSE2
    if (vector) {
        for (; i + 4 <= n; i += 4) _mm_storeu_ps(y + i, rke_exp4(_mm_loadu_ps(x + i)));
    }
#else
    (void)vector;
#endif
    for (; i < n; i++) y[i] = rke_exp(x[i]);
}
