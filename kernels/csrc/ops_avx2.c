/* The model's small vector operations with AVX2: the same bits as ops_scalar.c (lane i % 8 of
 * one 8-float register per reduction, separate multiply and add). Tails shorter than 8 go
 * through the register spilled to memory, element j into lane j % 8, as the scalar code does. */
#include "rke_avx2_target.h"
RKE_AVX2_BEGIN /* to RKE_AVX2_END: AVX2, FMA and F16C code */
#include "rke_avx2.h"
#include "rke_exp_avx2.h"
#include "rke_model_internal.h"

#if RKE_X86

/* acc's lanes plus the products a[j] * b[j] (times c[j] unless c is NULL) of the tail j in
 * [j, n), each into lane j % 8 as the scalar loops add them */
static inline float finish(__m256 acc, const float *a, const float *b, const float *c, int64_t j,
                           int64_t n) {
    if (j == n) return hsum8(acc);
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    for (; j < n; j++) lanes[j & 7] = lanes[j & 7] + (c ? (a[j] * b[j]) * c[j] : a[j] * b[j]);
    return rke_hsum8(lanes);
}

static float dot_avx2(const float *a, const float *b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    }
    return finish(acc, a, b, NULL, i, n);
}

static void wkv5_avx2(float *S, const float *r, const float *k, const float *v, const float *w,
                      const float *u, float *y, int64_t T, int64_t N, int64_t stride,
                      int64_t w_stride) {
    const int64_t NV = N / 8 * 8;
    for (int64_t t = 0; t < T; t++) {
        const float *rt = r + t * stride, *kt = k + t * stride, *vt = v + t * stride;
        const float *wt = w + t * w_stride;
        __m256 bacc = _mm256_setzero_ps();
        for (int64_t j = 0; j < NV; j += 8) {
            const __m256 ru = _mm256_mul_ps(_mm256_loadu_ps(rt + j), _mm256_loadu_ps(u + j));
            bacc = _mm256_add_ps(bacc, _mm256_mul_ps(ru, _mm256_loadu_ps(kt + j)));
        }
        const float bonus = finish(bacc, rt, u, kt, NV, N);
        for (int64_t i = 0; i < N; i++) {
            float *Si = S + i * N;
            const float vi = vt[i];
            const __m256 vv = _mm256_set1_ps(vi);
            __m256 acc = _mm256_setzero_ps();
            int64_t j = 0;
            for (; j < NV; j += 8) {
                const __m256 s = _mm256_loadu_ps(Si + j);
                acc = _mm256_add_ps(acc, _mm256_mul_ps(s, _mm256_loadu_ps(rt + j)));
                const __m256 kv = _mm256_mul_ps(vv, _mm256_loadu_ps(kt + j));
                _mm256_storeu_ps(Si + j, _mm256_add_ps(_mm256_mul_ps(s, _mm256_loadu_ps(wt + j)), kv));
            }
            /* the tail's S . r reads S before its update, as in ops_scalar.c */
            const float yi = finish(acc, Si, rt, NULL, NV, N);
            for (; j < N; j++) Si[j] = Si[j] * wt[j] + vi * kt[j];
            y[t * stride + i] = yi + bonus * vi;
        }
    }
}

static void wkv7_avx2(float *S, const float *r, const float *w, const float *k, const float *v,
                      const float *kk, const float *b, float *y, int64_t T, int64_t N,
                      int64_t stride) {
    const int64_t NV = N / 8 * 8;
    for (int64_t t = 0; t < T; t++) {
        const float *rt = r + t * stride, *wt = w + t * stride, *kt = k + t * stride;
        const float *kkt = kk + t * stride, *bt = b + t * stride;
        const float *vt = v + t * stride;
        for (int64_t i = 0; i < N; i++) {
            float *Si = S + i * N;
            const float sa = -dot_avx2(Si, kkt, N);
            const float vi = vt[i];
            const __m256 sav = _mm256_set1_ps(sa), vv = _mm256_set1_ps(vi);
            __m256 acc = _mm256_setzero_ps();
            int64_t j = 0;
            for (; j < NV; j += 8) {
                const __m256 sb = _mm256_mul_ps(sav, _mm256_loadu_ps(bt + j));
                const __m256 vk = _mm256_mul_ps(vv, _mm256_loadu_ps(kt + j));
                const __m256 sw = _mm256_mul_ps(_mm256_loadu_ps(Si + j), _mm256_loadu_ps(wt + j));
                const __m256 s = _mm256_add_ps(sw, _mm256_add_ps(sb, vk));
                _mm256_storeu_ps(Si + j, s);
                acc = _mm256_add_ps(acc, _mm256_mul_ps(s, _mm256_loadu_ps(rt + j)));
            }
            for (; j < N; j++) Si[j] = Si[j] * wt[j] + (sa * bt[j] + vi * kt[j]);
            /* the tail's S . r reads S after its update, as in ops_scalar.c */
            y[t * stride + i] = finish(acc, Si, rt, NULL, NV, N);
        }
    }
}

static void gates7_avx2(const rke_gates7 *g, int64_t C) {
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= C; i += 8) {
        const __m256 s = rke_sigmoid8(_mm256_add_ps(_mm256_loadu_ps(g->w0 + i), _mm256_loadu_ps(g->w + i)));
        _mm256_storeu_ps(g->w + i, rke_exp8(_mm256_mul_ps(_mm256_set1_ps(-RKE_V7_DECAY_SCALE), s)));
        const __m256 al = rke_sigmoid8(_mm256_add_ps(_mm256_loadu_ps(g->a0 + i), _mm256_loadu_ps(g->alpha + i)));
        _mm256_storeu_ps(g->alpha + i, al);
        const __m256 vi = _mm256_loadu_ps(g->v + i);
        if (g->first_layer) {
            _mm256_storeu_ps(g->v_first + i, vi);
        } else {
            const __m256 gate = rke_sigmoid8(_mm256_add_ps(_mm256_loadu_ps(g->v0 + i), _mm256_loadu_ps(g->v_lora + i)));
            _mm256_storeu_ps(g->v + i,
                             _mm256_add_ps(vi, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(g->v_first + i), vi), gate)));
        }
        const __m256 ki = _mm256_loadu_ps(g->k + i);
        _mm256_storeu_ps(g->kk + i, _mm256_mul_ps(ki, _mm256_loadu_ps(g->k_k + i)));
        const __m256 ka = _mm256_mul_ps(_mm256_sub_ps(al, one), _mm256_loadu_ps(g->k_a + i));
        _mm256_storeu_ps(g->k + i, _mm256_mul_ps(ki, _mm256_add_ps(one, ka)));
    }
    rke_gates7_tail(g, i, C);
}

const rke_ops rke_ops_avx2 = {
    .wkv5 = wkv5_avx2,
    .wkv7 = wkv7_avx2,
    .gates7 = gates7_avx2,
};

#endif

RKE_AVX2_END
