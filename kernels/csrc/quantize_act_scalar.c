/* Activations to q8x blocks, portable C: ggml's quantize_row_q8_0 rules (d = amax / 127,
 * round half away from zero) with a float32 d. The AVX2 twin must give the same bytes. */
#include "rke_internal.h"

#include <float.h>

/* round half away from zero of v in [-127, 127], without libm (roundf) */
static int round_away(float v) {
    int q = (int)v; /* truncates toward zero */
    const float frac = v - (float)q; /* exact */
    if (frac >= 0.5f) q += 1;
    if (frac <= -0.5f) q -= 1;
    return q;
}

void rke_quantize_q8x_scalar(const float *x, rke_block_q8x *xq, int64_t n_blocks) {
    for (int64_t b = 0; b < n_blocks; b++) {
        const float *xb = x + b * QK;
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) {
            const float a = __builtin_fabsf(xb[j]);
            amax = a > amax ? a : amax; /* a NaN never wins */
        }
        const float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        /* a subnormal d overflows 1/d; FLT_MAX keeps 0 * id == 0 */
        id = id < FLT_MAX ? id : FLT_MAX;
        int32_t s = 0;
        for (int j = 0; j < QK; j++) {
            float v = xb[j] * id;
            v = v > -127.0f ? v : -127.0f; /* also maps NaN to -127: defined, not meaningful */
            v = v < 127.0f ? v : 127.0f;
            const int q = round_away(v);
            xq[b].qs[j] = (int8_t)q;
            s += q;
        }
        xq[b].d = d;
        xq[b].s = s;
    }
}
