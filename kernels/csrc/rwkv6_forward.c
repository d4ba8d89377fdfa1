/* RWKV-6 layers for T tokens in C: runtime/rwkv6.py's time_mix (data-dependent token shift
 * and decay, LoRA chunks in the order w, k, v, r, g) and the receptance-gated ChannelMix
 * (docs/rwkv-math.md §6). */
#include "rke_model_internal.h"

typedef struct {
    float *xa, *xx, *z, *r, *k, *v, *g, *y;   /* (T, C) */
    float *lam[5];                            /* (T, C) LoRA mix outputs, then x_w ... x_g */
    float *h;                                 /* (T, 5 D_mix) */
    float *hf[5];                             /* (T, D_mix) chunk f of h */
    float *hd;                                /* (T, D_decay) */
} buffers6;

static void layout(rke_arena *a, const rke_model *m, int64_t T, buffers6 *b) {
    const int64_t TC = T * m->n_embd, D = m->lora[0];
    float **tc[] = {&b->xa, &b->xx, &b->z, &b->r, &b->k, &b->v, &b->g, &b->y};
    for (size_t q = 0; q < sizeof tc / sizeof tc[0]; q++) *tc[q] = rke_take(a, TC);
    for (int f = 0; f < 5; f++) b->lam[f] = rke_take(a, TC);
    b->h = rke_take(a, T * 5 * D);
    for (int f = 0; f < 5; f++) b->hf[f] = rke_take(a, T * D);
    b->hd = rke_take(a, T * m->lora[1]);
}

int64_t rke_rwkv6_scratch(const rke_model *m, int64_t T) {
    rke_arena a = {NULL, 0};
    buffers6 b;
    layout(&a, m, T, &b);
    const int64_t cm = rke_channel_mix_scratch(m, T);
    return a.used > cm ? a.used : cm;
}

typedef struct {
    const rke_run *run;
    const rke_rwkv6_layer *L;
    float *S; /* (H, N, N) */
    const float *w;
    const buffers6 *B;
} wkv_ctx;

static void wkv_head(const void *ctx, int64_t h) {
    const wkv_ctx *c = ctx;
    const int64_t N = c->run->m->head_size, C = c->run->m->n_embd, o = h * N;
    c->run->ops->wkv5(c->S + h * N * N, c->B->r + o, c->B->k + o, c->B->v + o, c->w + o,
                      c->L->u + o, c->B->y + o, c->run->T, N, C, C);
}

static int time_mix(const rke_run *run, int64_t layer, float *state, float *x, void *bufs) {
    const rke_model *m = run->m;
    const rke_rwkv6_layer *L = (const rke_rwkv6_layer *)m->layers + layer;
    const buffers6 *B = bufs;
    const int64_t T = run->T, C = m->n_embd, N = m->head_size, D = m->lora[0];
    float *x_prev = state;
    rke_layer_norm(run, x, L->ln1_w, L->ln1_b, B->xa, C, m->layer_norm_eps);
    for (int64_t t = 0; t < T; t++) {
        const float *prev = rke_prev_row(x_prev, B->xa, t, C), *a = B->xa + t * C;
        for (int64_t i = 0; i < C; i++) {
            const float xx = prev[i] - a[i];
            B->xx[t * C + i] = xx;
            B->z[t * C + i] = a[i] + xx * L->maa_x[i];
        }
    }
    memcpy(x_prev, B->xa + (T - 1) * C, (size_t)C * sizeof(float));

    int rc = rke_linear(run, &L->maa_w1, B->z, B->h);
    if (rc != RKE_OK) return rc;
    for (int64_t t = 0; t < T; t++) {
        for (int f = 0; f < 5; f++) {
            for (int64_t d = 0; d < D; d++) B->hf[f][t * D + d] = tanhf(B->h[t * 5 * D + f * D + d]);
        }
    }
    const rke_matrix *const up[] = {&L->maa_w2[0], &L->maa_w2[1], &L->maa_w2[2], &L->maa_w2[3],
                                    &L->maa_w2[4]};
    rc = rke_linear_many(run, 5, up, (const float *const *)B->hf, B->lam);
    if (rc != RKE_OK) return rc;
    for (int f = 0; f < 5; f++) { /* x_f = x + xx * (maa_f + lam_f), in place of lam_f */
        const float *maa = L->maa_wkvrg + f * C;
        float *lam = B->lam[f];
        for (int64_t t = 0; t < T; t++) {
            for (int64_t c = 0; c < C; c++) {
                const int64_t i = t * C + c;
                lam[i] = B->xa[i] + B->xx[i] * (maa[c] + lam[i]);
            }
        }
    }
    const float *xw = B->lam[0], *xk = B->lam[1], *xv = B->lam[2], *xr = B->lam[3];
    const float *xg = B->lam[4];
    const rke_matrix *const proj[] = {&L->receptance, &L->key, &L->value, &L->gate, &L->decay_w1};
    const float *const proj_x[] = {xr, xk, xv, xg, xw};
    float *const proj_y[] = {B->r, B->k, B->v, B->g, B->hd};
    rc = rke_linear_many(run, 5, proj, proj_x, proj_y);
    if (rc != RKE_OK) return rc;
    for (int64_t i = 0; i < T * C; i++) B->g[i] = B->g[i] * rke_sigmoid(B->g[i]);

    for (int64_t i = 0; i < T * m->lora[1]; i++) B->hd[i] = tanhf(B->hd[i]);
    float *w = B->z; /* z is dead */
    rc = rke_linear(run, &L->decay_w2, B->hd, w);
    if (rc != RKE_OK) return rc;
    for (int64_t t = 0; t < T; t++) {
        for (int64_t c = 0; c < C; c++) w[t * C + c] = expf(-expf(L->decay[c] + w[t * C + c]));
    }

    const wkv_ctx wc = {run, L, state + 2 * C, w, B};
    rke_parallel(run, wkv_head, &wc, m->n_head, 3 * N * N * T);
    rke_group_norm(B->y, L->ln_x_w, L->ln_x_b, T, C, N, m->group_norm_eps);
    for (int64_t i = 0; i < T * C; i++) B->y[i] = B->y[i] * B->g[i];
    rc = rke_linear(run, &L->output, B->y, B->xa);
    if (rc != RKE_OK) return rc;
    for (int64_t i = 0; i < T * C; i++) x[i] = x[i] + B->xa[i];
    return RKE_OK;
}

/* the shared ChannelMix with this layer's weights, in the arena the TimeMix is done with */
static int channel_mix(const rke_run *run, int64_t layer, float *x_prev, float *x, void *scratch) {
    const rke_rwkv6_layer *L = (const rke_rwkv6_layer *)run->m->layers + layer;
    return rke_run_channel_mix(run, &L->ffn, L->ln2_w, L->ln2_b, x_prev, x, scratch);
}

int rke_rwkv6_layers(const rke_run *run, float *state, float *x, float *scratch) {
    rke_arena a = {scratch, 0};
    buffers6 B;
    layout(&a, run->m, run->T, &B);
    return rke_run_layers(run, state, x, time_mix, &B, channel_mix, scratch);
}
