/* Steps every RWKV version's forward pass shares: matrix products through the kernel dispatch,
 * LayerNorm and GroupNorm, per-head tasks across the pool, the embedding
 * lookup with ln0, the receptance-gated ChannelMix of v4-v6 and the loop over the layers. */
#include "rke_model_internal.h"
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define RKE_RELU_SSE2 1
#else
#define RKE_RELU_SSE2 0
#endif

int rke_linear(const rke_run *run, const rke_matrix *W, const float *x, float *y) {
    if (run->T == 1) {
        return rke_matvec(run->pool, run->impl, W->qtype, W->data, x, run->xq, y, W->n_rows,
                          W->n_cols);
    }
    return rke_matmul(run->pool, run->impl, W->qtype, W->data, x, run->xq, y, run->T, W->n_rows,
                      W->n_cols);
}

float rke_pairwise_sum(const float *x, int64_t n, int squares) {
    if (n < 8) {
        float res = -0.0f; /* numpy's start: a sum of -0.0s stays -0.0 */
        for (int64_t i = 0; i < n; i++) res = res + (squares ? x[i] * x[i] : x[i]);
        return res;
    }
    if (n <= 128) {
        float r[8];
        for (int j = 0; j < 8; j++) r[j] = squares ? x[j] * x[j] : x[j];
        int64_t i = 8;
        for (; i < n - n % 8; i += 8) {
            for (int j = 0; j < 8; j++) r[j] = r[j] + (squares ? x[i + j] * x[i + j] : x[i + j]);
        }
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res = res + (squares ? x[i] * x[i] : x[i]);
        return res;
    }
    const int64_t half = n / 2 - (n / 2) % 8;
    return rke_pairwise_sum(x, half, squares) + rke_pairwise_sum(x + half, n - half, squares);
}

int rke_linear_many(const rke_run *run, int n, const rke_matrix *const W[], const float *const x[],
                    float *const y[]) {
    if (run->T > 1) { /* each product already has T rows of work to share */
        int rc = RKE_OK;
        for (int q = 0; q < n && rc == RKE_OK; q++) rc = rke_linear(run, W[q], x[q], y[q]);
        return rc;
    }
    rke_matvec_job jobs[RKE_MANY_MAX];
    for (int q = 0; q < n; q++) {
        jobs[q] = (rke_matvec_job){W[q]->qtype, W[q]->data, x[q], run->xq + q * run->xq_row, y[q],
                                   W[q]->n_rows, W[q]->n_cols};
    }
    return rke_matvec_many(run->pool, run->impl, jobs, n);
}

/* (x - mean) / sqrt(var + eps) * w + b over n values, as runtime/norms.py computes it */
static void normalize(const float *x, const float *w, const float *b, float *y, int64_t n,
                      float eps) {
    const float mean = rke_pairwise_sum(x, n, 0) / (float)n;
    for (int64_t i = 0; i < n; i++) y[i] = x[i] - mean;
    const float var = rke_pairwise_sum(y, n, 1) / (float)n;
    const float sd = sqrtf(var + eps);
    for (int64_t i = 0; i < n; i++) y[i] = y[i] / sd * w[i] + b[i];
}

typedef struct {
    const float *x, *w, *b;
    float *y;
    int64_t C;
    float eps;
} ln_ctx;

static void ln_row(const void *ctx, int64_t t) {
    const ln_ctx *c = ctx;
    normalize(c->x + t * c->C, c->w, c->b, c->y + t * c->C, c->C, c->eps);
}

void rke_layer_norm(const rke_run *run, const float *x, const float *w, const float *b, float *y,
                    int64_t C, float eps) {
    const ln_ctx c = {x, w, b, y, C, eps};
    rke_parallel(run, ln_row, &c, run->T, 8 * C);
}

void rke_group_norm(float *y, const float *w, const float *b, int64_t T, int64_t C, int64_t N,
                    float eps) {
    for (int64_t t = 0; t < T; t++) {
        float *yt = y + t * C;
        for (int64_t h = 0; h < C; h += N) {
            const float mean = rke_pairwise_sum(yt + h, N, 0) / (float)N;
            for (int64_t i = h; i < h + N; i++) yt[i] = yt[i] - mean;
            const float var = rke_pairwise_sum(yt + h, N, 1) / (float)N;
            const float sd = sqrtf(var + eps);
            for (int64_t i = h; i < h + N; i++) yt[i] = yt[i] / sd;
        }
        for (int64_t i = 0; i < C; i++) yt[i] = yt[i] * w[i] + b[i];
    }
}

typedef struct {
    rke_item_fn fn;
    const void *ctx;
} items_ctx;

static void items_task(const void *ctx, int64_t begin, int64_t end) {
    const items_ctx *c = ctx;
    for (int64_t i = begin; i < end; i++) c->fn(c->ctx, i);
}

void rke_parallel(const rke_run *run, rke_item_fn fn, const void *ctx, int64_t n_items,
                  int64_t flops) {
    const items_ctx c = {fn, ctx};
    /* below ~16k flops per call the hand-over to other threads costs more than it saves */
    rke_pool_run(n_items * flops < 16384 ? NULL : run->pool, items_task, &c, n_items, 1);
}

/* float32 -> fp16 bits, round to nearest even (overflow to inf, subnormals kept); as numpy */
static uint16_t fp16_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) return (uint16_t)(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0u));
    if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds past 65504 */
    if (ax < 0x38800000u) {                                    /* below the smallest normal */
        if (ax < 0x33000000u) return (uint16_t)sign;          /* under half the smallest subnormal */
        const uint32_t mant = (ax & 0x7FFFFFu) | 0x800000u;
        const int shift = 126 - (int)(ax >> 23); /* 14..24: value = mant * 2^(e - 150) */
        const uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        return (uint16_t)(sign | (q + (rem > half || (rem == half && (q & 1)))));
    }
    const uint32_t q = (ax >> 13) - (112u << 10), rem = ax & 0x1FFFu;
    return (uint16_t)(sign | (q + (rem > 0x1000u || (rem == 0x1000u && (q & 1)))));
}

void rke_round_to(float *x, int64_t n, int qtype) {
    if (qtype == RKE_F16) {
        for (int64_t i = 0; i < n; i++) x[i] = rke_fp16_to_f32(fp16_bits(x[i]));
    } else if (qtype == RKE_BF16) {
        /* runtime/weights.round_to: + 0x7FFF + lsb, then truncate (wrapping like numpy uint32) */
        for (int64_t i = 0; i < n; i++) {
            uint32_t bits;
            memcpy(&bits, &x[i], sizeof bits);
            bits = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
            memcpy(&x[i], &bits, sizeof bits);
        }
    }
}

void rke_embed(const rke_run *run, const int32_t *tokens, float *x) {
    const rke_model *m = run->m;
    const int64_t C = m->n_embd, row_bytes = rke_row_bytes(m->emb.qtype, C);
    for (int64_t t = 0; t < run->T; t++) {
        float *xt = x + t * C;
        rke_dequantize_row(m->emb.qtype, (const char *)m->emb.data + tokens[t] * row_bytes, xt, C);
        normalize(xt, m->ln0_w, m->ln0_b, xt, C, m->layer_norm_eps);
        rke_round_to(xt, C, m->emb_round);
    }
}

void rke_relu_square(float *h, int64_t n) {
    int64_t i = 0;
#if RKE_RELU_SSE2
    /* maxps returns its second operand for NaN and for -0 vs +0: exactly `h > 0 ? h : 0`. The
     * compiler made that a compare and a branch, mispredicted on about half of the signs. */
    for (; i + 4 <= n; i += 4) {
        const __m128 z = _mm_max_ps(_mm_loadu_ps(h + i), _mm_setzero_ps());
        _mm_storeu_ps(h + i, _mm_mul_ps(z, z));
    }
#endif
    for (; i < n; i++) {
        const float z = h[i] > 0.0f ? h[i] : 0.0f;
        h[i] = z * z;
    }
}

int64_t rke_channel_mix_scratch(const rke_model *m, int64_t T) {
    rke_arena a = {NULL, 0};
    for (int q = 0; q < 4; q++) rke_take(&a, T * m->n_embd); /* xb, xk, xr, r */
    rke_take(&a, T * m->n_ffn);                               /* h */
    return a.used;
}

int rke_run_channel_mix(const rke_run *run, const rke_channel_mix *cm, const float *ln2_w,
                    const float *ln2_b, float *x_prev, float *x, float *scratch) {
    const int64_t T = run->T, C = run->m->n_embd, F = run->m->n_ffn;
    rke_arena a = {scratch, 0};
    float *xb = rke_take(&a, T * C), *xk = rke_take(&a, T * C), *xr = rke_take(&a, T * C);
    float *r = rke_take(&a, T * C), *h = rke_take(&a, T * F);
    rke_layer_norm(run, x, ln2_w, ln2_b, xb, C, run->m->layer_norm_eps);
    for (int64_t t = 0; t < T; t++) {
        const float *prev = rke_prev_row(x_prev, xb, t, C), *b = xb + t * C;
        for (int64_t i = 0; i < C; i++) {
            const float xx = prev[i] - b[i];
            xk[t * C + i] = b[i] + xx * cm->m_k[i];
            xr[t * C + i] = b[i] + xx * cm->m_r[i];
        }
    }
    memcpy(x_prev, xb + (T - 1) * C, (size_t)C * sizeof(float));
    const rke_matrix *const proj[] = {&cm->receptance, &cm->key};
    const float *const proj_x[] = {xr, xk};
    float *const proj_y[] = {r, h};
    int rc = rke_linear_many(run, 2, proj, proj_x, proj_y);
    if (rc != RKE_OK) return rc;
    rke_relu_square(h, T * F);
    rc = rke_linear(run, &cm->value, h, xk);
    if (rc != RKE_OK) return rc;
    for (int64_t i = 0; i < T * C; i++) x[i] = x[i] + rke_sigmoid(r[i]) * xk[i];
    return RKE_OK;
}

int rke_run_layers(const rke_run *run, float *state, float *x, rke_layer_step time_mix,
                   void *tm_bufs, rke_layer_step channel_mix, void *cm_bufs) {
    const rke_model *m = run->m;
    const int64_t C = m->n_embd, per_layer = rke_state_floats(m);
    for (int64_t i = 0; i < m->n_layer; i++) {
        float *st = state + i * per_layer;
        int rc = time_mix(run, i, st, x, tm_bufs);
        /* every version's state row keeps the ChannelMix x_prev second (runtime/state.py) */
        if (rc == RKE_OK) rc = channel_mix(run, i, st + C, x, cm_bufs);
        if (rc != RKE_OK) return rc;
        /* such files divide layer i's output weights by 2^(i / rescale_every); x follows */
        if (m->rescale_every && (i + 1) % m->rescale_every == 0) {
            for (int64_t j = 0; j < run->T * C; j++) x[j] = x[j] * 0.5f;
        }
    }
    return RKE_OK;
}
