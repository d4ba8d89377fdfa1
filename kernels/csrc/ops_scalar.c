/* The model's small vector operations in portable C (with SSE2, x86-64's baseline, where it is
 * there): the reference order of operations that ops_avx2.c reproduces bit for bit (lane i % 8
 * for reductions, rke_hsum8 at the end). */
#include "rke_exp.h"
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

/* channels i.. of rke_gates7 one by one: the definition the vector loops reproduce */
void rke_gates7_tail(const rke_gates7 *g, int64_t i, int64_t C) {
    for (; i < C; i++) {
        g->w[i] = rke_exp(-RKE_V7_DECAY_SCALE * rke_sigmoid_fast(g->w0[i] + g->w[i]));
        g->alpha[i] = rke_sigmoid_fast(g->a0[i] + g->alpha[i]);
        if (g->first_layer) {
            g->v_first[i] = g->v[i];
        } else {
            g->v[i] = g->v[i] + (g->v_first[i] - g->v[i]) * rke_sigmoid_fast(g->v0[i] + g->v_lora[i]);
        }
        g->kk[i] = g->k[i] * g->k_k[i];
        g->k[i] = g->k[i] * (1.0f + (g->alpha[i] - 1.0f) * g->k_a[i]);
    }
}

static void gates7_scalar(const rke_gates7 *g, int64_t C) {
    int64_t i = 0;
#if RKE_HAVE_SSE2
    /* rke_exp.h's SSE2 twin: the scalar loop's bits, four channels at a time */
    const __m128 one = _mm_set1_ps(1.0f);
    for (; i + 4 <= C; i += 4) {
        const __m128 s = rke_sigmoid4(_mm_add_ps(_mm_loadu_ps(g->w0 + i), _mm_loadu_ps(g->w + i)));
        _mm_storeu_ps(g->w + i, rke_exp4(_mm_mul_ps(_mm_set1_ps(-RKE_V7_DECAY_SCALE), s)));
        const __m128 al = rke_sigmoid4(_mm_add_ps(_mm_loadu_ps(g->a0 + i), _mm_loadu_ps(g->alpha + i)));
        _mm_storeu_ps(g->alpha + i, al);
        const __m128 vi = _mm_loadu_ps(g->v + i);
        if (g->first_layer) {
            _mm_storeu_ps(g->v_first + i, vi);
        } else {
            const __m128 gate = rke_sigmoid4(_mm_add_ps(_mm_loadu_ps(g->v0 + i), _mm_loadu_ps(g->v_lora + i)));
            _mm_storeu_ps(g->v + i, _mm_add_ps(vi, _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(g->v_first + i), vi), gate)));
        }
        const __m128 ki = _mm_loadu_ps(g->k + i);
        _mm_storeu_ps(g->kk + i, _mm_mul_ps(ki, _mm_loadu_ps(g->k_k + i)));
        const __m128 ka = _mm_mul_ps(_mm_sub_ps(al, one), _mm_loadu_ps(g->k_a + i));
        _mm_storeu_ps(g->k + i, _mm_mul_ps(ki, _mm_add_ps(one, ka)));
    }
#endif
    rke_gates7_tail(g, i, C);
}

const rke_ops rke_ops_scalar = {
    .wkv5 = wkv5_scalar,
    .wkv7 = wkv7_scalar,
    .gates7 = gates7_scalar,
};
