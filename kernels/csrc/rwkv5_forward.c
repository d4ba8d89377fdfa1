/* RWKV-5 (5.0, 5.1, 5.2) layers for T tokens in C: runtime/rwkv5.py's time_mix and the
 * receptance-gated ChannelMix (docs/rwkv-math.md §5). 5.0 has no gate; 5.0/5.1 decays and
 * bonuses arrive broadcast to one value per head channel, so all three run the same code. */
#include "rke_model_internal.h"

typedef struct {
    float *xa, *xk, *xv, *xr, *xg, *r, *k, *v, *g, *y; /* (T, C) */
} buffers5;

static void layout(rke_arena *a, const rke_model *m, int64_t T, buffers5 *b) {
    float **tc[] = {&b->xa, &b->xk, &b->xv, &b->xr, &b->xg, &b->r, &b->k, &b->v, &b->g, &b->y};
    for (size_t q = 0; q < sizeof tc / sizeof tc[0]; q++) *tc[q] = rke_take(a, T * m->n_embd);
}

int64_t rke_rwkv5_scratch(const rke_model *m, int64_t T) {
    rke_arena a = {NULL, 0};
    buffers5 b;
    layout(&a, m, T, &b);
    const int64_t cm = rke_channel_mix_scratch(m, T);
    return a.used > cm ? a.used : cm;
}

typedef struct {
    const rke_run *run;
    const rke_rwkv5_layer *L;
    float *S; /* (H, N, N) */
    const buffers5 *B;
} wkv_ctx;

static void wkv_head(const void *ctx, int64_t h) {
    const wkv_ctx *c = ctx;
    const int64_t N = c->run->m->head_size, C = c->run->m->n_embd, o = h * N;
    c->run->ops->wkv5(c->S + h * N * N, c->B->r + o, c->B->k + o, c->B->v + o, c->L->w + o,
                      c->L->u + o, c->B->y + o, c->run->T, N, C, 0);
}

static int time_mix(const rke_run *run, int64_t layer, float *state, float *x, void *bufs) {
    const rke_model *m = run->m;
    const rke_rwkv5_layer *L = (const rke_rwkv5_layer *)m->layers + layer;
    const buffers5 *B = bufs;
    const int64_t T = run->T, C = m->n_embd, N = m->head_size;
    const int gated = L->gate.data != NULL;
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
            if (gated) B->xg[o + i] = a[i] + xx * L->m_g[i];
        }
    }
    memcpy(x_prev, B->xa + (T - 1) * C, (size_t)C * sizeof(float));
    const rke_matrix *const proj[] = {&L->receptance, &L->key, &L->value, &L->gate};
    const float *const proj_x[] = {B->xr, B->xk, B->xv, B->xg};
    float *const proj_y[] = {B->r, B->k, B->v, B->g};
    int rc = rke_linear_many(run, gated ? 4 : 3, proj, proj_x, proj_y);
    if (rc != RKE_OK) return rc;

    const wkv_ctx wc = {run, L, state + 2 * C, B};
    rke_parallel(run, wkv_head, &wc, m->n_head, 3 * N * N * T);
    rke_group_norm(B->y, L->ln_x_w, L->ln_x_b, T, C, N, m->group_norm_eps);
    if (gated) {
        for (int64_t i = 0; i < T * C; i++) {
            const float z = B->g[i];
            B->y[i] = B->y[i] * (z * rke_sigmoid(z));
        }
    }
    rc = rke_linear(run, &L->output, B->y, B->xa);
    if (rc != RKE_OK) return rc;
    for (int64_t i = 0; i < T * C; i++) x[i] = x[i] + B->xa[i];
    return RKE_OK;
}

/* the shared ChannelMix with this layer's weights, in the arena the TimeMix is done with */
static int channel_mix(const rke_run *run, int64_t layer, float *x_prev, float *x, void *scratch) {
    const rke_rwkv5_layer *L = (const rke_rwkv5_layer *)run->m->layers + layer;
    return rke_run_channel_mix(run, &L->ffn, L->ln2_w, L->ln2_b, x_prev, x, scratch);
}

int rke_rwkv5_layers(const rke_run *run, float *state, float *x, float *scratch) {
    rke_arena a = {scratch, 0};
    buffers5 B;
    layout(&a, run->m, run->T, &B);
    return rke_run_layers(run, state, x, time_mix, &B, channel_mix, scratch);
}
