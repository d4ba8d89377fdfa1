/* The model's small vector operations in portable C: the reference order of operations that
 * ops_avx2.c reproduces bit for bit (lane i % 8 for reductions, rke_hsum8 at the end). */
#include "rke_model_internal.h"

static float dot_scalar(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    for (int64_t i = 0; i < n; i++) acc[i & 7] = acc[i & 7] + a[i] * b[i];
    return rke_hsum8(acc);
}

static void wkv5_scalar(float *S, const float *r, const float *k, const float *v,
                        const float *w, const float *u, float *y, int64_t T, int64_t N,
                        int64_t stride, int64_t w_stride) {
    for (int64_t t = 0; t < T; t++) {
        const float *rt = r + t * stride, *kt = k + t * stride, *vt = v + t * stride;
        const float *wt = w + t * w_stride;
        float bonus_acc[8] = {0};
        for (int64_t j = 0; j < N; j++) {
            bonus_acc[j & 7] = bonus_acc[j & 7] + (rt[j] * u[j]) * kt[j];
        }
        const float bonus = rke_hsum8(bonus_acc);
        for (int64_t i = 0; i < N; i++) {
            float *Si = S + i * N;
            const float vi = vt[i];
            float acc[8] = {0};
            for (int64_t j = 0; j < N; j++) {
                acc[j & 7] = acc[j & 7] + Si[j] * rt[j];
                Si[j] = Si[j] * wt[j] + vi * kt[j];
            }
            y[t * stride + i] = rke_hsum8(acc) + bonus * vi;
        }
    }
}

static void wkv7_scalar(float *S, const float *r, const float *w, const float *k,
                        const float *v, const float *kk, const float *b, float *y, int64_t T,
                        int64_t N, int64_t stride) {
    for (int64_t t = 0; t < T; t++) {
        const float *rt = r + t * stride, *wt = w + t * stride, *kt = k + t * stride;
        const float *kkt = kk + t * stride, *bt = b + t * stride;
        const float *vt = v + t * stride;
        for (int64_t i = 0; i < N; i++) {
            float *Si = S + i * N;
            const float sa = -dot_scalar(Si, kkt, N);
            const float vi = vt[i];
            float acc[8] = {0};
            for (int64_t j = 0; j < N; j++) {
                Si[j] = Si[j] * wt[j] + (sa * bt[j] + vi * kt[j]);
                acc[j & 7] = acc[j & 7] + Si[j] * rt[j];
            }
            y[t * stride + i] = rke_hsum8(acc);
        }
    }
}

const rke_ops rke_ops_scalar = {
    .wkv5 = wkv5_scalar,
    .wkv7 = wkv7_scalar,
};
