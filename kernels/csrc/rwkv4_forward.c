/* RWKV-4 layers for T tokens in C: runtime/rwkv4.py's time_mix (the WKV average with a running
 * max, docs/rwkv-math.md §4.3) and the receptance-gated ChannelMix. */
#include "rke_model_internal.h"

/* channels per parallel item of the WKV (one cache line of each state vector) */
#define CHANNEL_GROUP 16

typedef struct {
    float *xa, *xk, *xv, *xr, *r, *k, *v, *y; /* (T, C) */
} buffers4;

static void layout(rke_arena *a, const rke_model *m, int64_t T, buffers4 *b) {
    float **tc[] = {&b->xa, &b->xk, &b->xv, &b->xr, &b->r, &b->k, &b->v, &b->y};
    for (size_t q = 0; q < sizeof tc / sizeof tc[0]; q++) *tc[q] = rke_take(a, T * m->n_embd);
}

int64_t rke_rwkv4_scratch(const rke_model *m, int64_t T) {
    rke_arena a = {NULL, 0};
    buffers4 b;
    layout(&a, m, T, &b);
    const int64_t cm = rke_channel_mix_scratch(m, T);
    return a.used > cm ? a.used : cm;
}

static inline float max2(float a, float b) { return a >= b ? a : b; }

typedef struct {
    const rke_run *run;
    const rke_rwkv4_layer *L;
    float *aa, *bb, *pp; /* (C) state */
    const buffers4 *B;
} wkv_ctx;

/* y = r * wkv for channels [c0, c0 + CHANNEL_GROUP), every token in order */
static void wkv_group(const void *ctx, int64_t group) {
    const wkv_ctx *c = ctx;
    const int64_t C = c->run->m->n_embd, c0 = group * CHANNEL_GROUP;
    const int64_t c1 = c0 + CHANNEL_GROUP < C ? c0 + CHANNEL_GROUP : C;
    const float *w = c->L->w, *u = c->L->u;
    for (int64_t t = 0; t < c->run->T; t++) {
        const float *kt = c->B->k + t * C, *vt = c->B->v + t * C, *rt = c->B->r + t * C;
        float *yt = c->B->y + t * C;
        for (int64_t i = c0; i < c1; i++) {
            const float aa = c->aa[i], bb = c->bb[i], pp = c->pp[i];
            float ww = u[i] + kt[i];
            float q = max2(pp, ww);
            float e1 = expf(pp - q), e2 = expf(ww - q);
            yt[i] = rt[i] * ((e1 * aa + e2 * vt[i]) / (e1 * bb + e2));
            ww = pp + w[i];
            q = max2(ww, kt[i]);
            e1 = expf(ww - q);
            e2 = expf(kt[i] - q);
            c->aa[i] = e1 * aa + e2 * vt[i];
            c->bb[i] = e1 * bb + e2;
            c->pp[i] = q;
        }
    }
}

static int time_mix(const rke_run *run, int64_t layer, float *state, float *x, void *bufs) {
    const rke_model *m = run->m;
    const rke_rwkv4_layer *L = (const rke_rwkv4_layer *)m->layers + layer;
    const buffers4 *B = bufs;
    const int64_t T = run->T, C = m->n_embd;
    float *x_prev = state;
    rke_layer_norm(run, x, L->ln1_w, L->ln1_b, B->xa, C, m->layer_norm_eps);
    for (int64_t t = 0; t < T; t++) {
        const float *prev = rke_prev_row(x_prev, B->xa, t, C), *a = B->xa + t * C;
        const int64_t o = t * C;
        for (int64_t i = 0; i < C; i++) {
            const float xx = prev[i] - a[i];
            B->xk[o + i] = a[i] + xx * L->m_k[i];
            B->xv[o + i] = a[i] + xx * L->m_v[i];
            B->xr[o + i] = a[i] + xx * L->m_r[i];
        }
    }
    memcpy(x_prev, B->xa + (T - 1) * C, (size_t)C * sizeof(float));
    const rke_matrix *const proj[] = {&L->receptance, &L->key, &L->value};
    const float *const proj_x[] = {B->xr, B->xk, B->xv};
    float *const proj_y[] = {B->r, B->k, B->v};
    int rc = rke_linear_many(run, 3, proj, proj_x, proj_y);
    if (rc != RKE_OK) return rc;
    for (int64_t i = 0; i < T * C; i++) B->r[i] = rke_sigmoid(B->r[i]);
    const wkv_ctx wc = {run, L, state + 2 * C, state + 3 * C, state + 4 * C, B};
    rke_parallel(run, wkv_group, &wc, (C + CHANNEL_GROUP - 1) / CHANNEL_GROUP,
                 40 * CHANNEL_GROUP * T);
    rc = rke_linear(run, &L->output, B->y, B->xa);
    if (rc != RKE_OK) return rc;
    for (int64_t i = 0; i < T * C; i++) x[i] = x[i] + B->xa[i];
    return RKE_OK;
}

/* the shared ChannelMix with this layer's weights, in the arena the TimeMix is done with */
static int channel_mix(const rke_run *run, int64_t layer, float *x_prev, float *x, void *scratch) {
    const rke_rwkv4_layer *L = (const rke_rwkv4_layer *)run->m->layers + layer;
    return rke_run_channel_mix(run, &L->ffn, L->ln2_w, L->ln2_b, x_prev, x, scratch);
}

int rke_rwkv4_layers(const rke_run *run, float *state, float *x, float *scratch) {
    rke_arena a = {scratch, 0};
    buffers4 B;
    layout(&a, run->m, run->T, &B);
    return rke_run_layers(run, state, x, time_mix, &B, channel_mix, scratch);
}
