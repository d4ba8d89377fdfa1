/* RWKV-7 layers for T tokens in C: runtime/rwkv7.py's time_mix and channel_mix, same names and
 * the same order of operations per element (docs/rwkv-math.md §7). */
#include "rke_model_internal.h"

/* (T, C) buffers: v_first, layer 0's v that every later layer's value residual reads; then one
 * layer's xn, the LayerNorm output, and the mixes xr..xg as the reference names them; the LoRA
 * inputs are reused for their outputs once read */
typedef struct {
    float *v_first, *xn, *xr, *xw, *xk, *xv, *xa, *xg, *r, *k, *v, *y;
    float *hw, *ha, *hv, *hg; /* (T, D_*) LoRA hidden */
    float *h;                 /* (T, F) ChannelMix hidden, over xv..y when it fits (layout) */
} buffers7;

static void layout(rke_arena *a, const rke_model *m, int64_t T, buffers7 *b) {
    const int64_t TC = T * m->n_embd;
    float **tc[] = {&b->v_first, &b->xn, &b->xr, &b->xw, &b->xk, &b->xv,
                    &b->xa,      &b->xg, &b->r,  &b->k,  &b->v,  &b->y};
    for (size_t q = 0; q < sizeof tc / sizeof tc[0]; q++) *tc[q] = rke_take(a, TC);
    b->hw = rke_take(a, T * m->lora[0]);
    b->ha = rke_take(a, T * m->lora[1]);
    b->hv = rke_take(a, T * m->lora[2]);
    b->hg = rke_take(a, T * m->lora[3]);
    /* ChannelMix reads xn and xr and writes xk; xv..y (7 contiguous (T, C) buffers) are free by then,
     * so its hidden layer takes their place when it fits (F = 4C in every RWKV-7 model) */
    b->h = T * m->n_ffn <= 7 * TC ? b->xv : rke_take(a, T * m->n_ffn);
}

int64_t rke_rwkv7_scratch(const rke_model *m, int64_t T) {
    rke_arena a = {NULL, 0};
    buffers7 b;
    layout(&a, m, T, &b);
    return a.used;
}

typedef struct {
    const rke_run *run;
    float *S; /* (H, N, N) */
    const float *r, *w, *k, *v, *kk, *b;
    float *y;
} wkv_ctx;

static void wkv_head(const void *ctx, int64_t h) {
    const wkv_ctx *c = ctx;
    const int64_t N = c->run->m->head_size, C = c->run->m->n_embd, o = h * N;
    c->run->ops->wkv7(c->S + h * N * N, c->r + o, c->w + o, c->k + o, c->v + o, c->kk + o,
                      c->b + o, c->y + o, c->run->T, N, C);
}

/* One layer's TimeMix: the per-token stages run over the chunk's tokens in parallel */
typedef struct {
    const rke_run *run;
    const rke_rwkv7_layer *L;
    const buffers7 *B;
    const float *x_prev; /* (C) the state's previous input, for token 0 */
    int first_layer;
} tm_ctx;

/* the six token-shift mixes of token t (LN1 of every token is done) */
static void mix_token(const void *ctx, int64_t t) {
    const tm_ctx *c = ctx;
    const rke_rwkv7_layer *L = c->L;
    const buffers7 *B = c->B;
    const int64_t C = c->run->m->n_embd, o = t * C;
    const float *prev = rke_prev_row(c->x_prev, B->xn, t, C), *a = B->xn + o;
    for (int64_t i = 0; i < C; i++) {
        const float xx = prev[i] - a[i];
        B->xr[o + i] = a[i] + xx * L->x_r[i];
        B->xw[o + i] = a[i] + xx * L->x_w[i];
        B->xk[o + i] = a[i] + xx * L->x_k[i];
        B->xv[o + i] = a[i] + xx * L->x_v[i];
        B->xa[o + i] = a[i] + xx * L->x_a[i];
        B->xg[o + i] = a[i] + xx * L->x_g[i];
    }
}

/* token t's decay w, in-context rate alpha, value residual, removal key kk and b = kk * alpha,
 * and its scaled key k, from the projections and LoRA outputs */
static void prepare_token(const void *ctx, int64_t t) {
    const tm_ctx *c = ctx;
    const rke_rwkv7_layer *L = c->L;
    const buffers7 *B = c->B;
    const int64_t C = c->run->m->n_embd, N = c->run->m->head_size, o = t * C;
    float *kk = B->xk + o, *b = B->xr + o;
    const rke_gates7 g = {B->xw + o, B->xa + o, B->v + o, B->v_first + o, kk,    B->k + o,
                          B->xv + o, L->w0,     L->a0,    L->v0,          L->k_k, L->k_a,
                          c->first_layer};
    c->run->ops->gates7(&g, C);
    const float *alpha = g.alpha;
    for (int64_t h = 0; h < C; h += N) {
        const float norm = sqrtf(rke_pairwise_sum(kk + h, N, 1)); /* np.linalg.norm's sum */
        const float div = norm > 1e-12f ? norm : 1e-12f;
        for (int64_t j = h; j < h + N; j++) kk[j] = kk[j] / div;
    }
    for (int64_t i = 0; i < C; i++) b[i] = kk[i] * alpha[i];
}

/* token t's WKV output y: GroupNorm, the r.k bonus of each head, the gate */
static void finish_token(const void *ctx, int64_t t) {
    const tm_ctx *c = ctx;
    const rke_rwkv7_layer *L = c->L;
    const buffers7 *B = c->B;
    const rke_model *m = c->run->m;
    const int64_t C = m->n_embd, N = m->head_size, o = t * C;
    float *y = B->y + o;
    const float *r = B->r + o, *k = B->k + o, *v = B->v + o, *g = B->xg + o;
    rke_group_norm(y, L->ln_x_w, L->ln_x_b, 1, C, N, m->group_norm_eps);
    for (int64_t h = 0; h < C; h += N) {
        float acc[8] = {0};
        for (int64_t j = 0; j < N; j++) acc[j & 7] = acc[j & 7] + r[h + j] * k[h + j] * L->r_k[h + j];
        const float rk = rke_hsum8(acc);
        for (int64_t j = h; j < h + N; j++) y[j] = (y[j] + rk * v[j]) * g[j];
    }
}

static int time_mix(const rke_run *run, int64_t layer, float *state, float *x, void *bufs) {
    const rke_model *m = run->m;
    const rke_rwkv7_layer *L = (const rke_rwkv7_layer *)m->layers + layer;
    const buffers7 *B = bufs;
    const int first_layer = layer == 0;
    const int64_t T = run->T, C = m->n_embd, H = m->n_head, N = m->head_size;
    float *x_prev = state, *S = state + 2 * C;
    const tm_ctx tc = {run, L, B, x_prev, first_layer};
    rke_layer_norm(run, x, L->ln1_w, L->ln1_b, B->xn, C, m->layer_norm_eps);
    rke_parallel(run, mix_token, &tc, T, 12 * C);
    memcpy(x_prev, B->xn + (T - 1) * C, (size_t)C * sizeof(float));

    /* r, k, v and the LoRAs' down projections all read the mixes: one batch */
    const int n_down = first_layer ? 6 : 7; /* layer 0 has no value-residual LoRA */
    const rke_matrix *const down[] = {&L->receptance, &L->key, &L->value, &L->w1, &L->a1, &L->g1, &L->v1};
    const float *const down_x[] = {B->xr, B->xk, B->xv, B->xw, B->xa, B->xg, B->xv};
    float *const down_y[] = {B->r, B->k, B->v, B->hw, B->ha, B->hg, B->hv};
    int rc = rke_linear_many(run, n_down, down, down_x, down_y);
    if (rc != RKE_OK) return rc;
    const int64_t Dw = m->lora[0], Dg = m->lora[3];
    for (int64_t i = 0; i < T * Dw; i++) B->hw[i] = tanhf(B->hw[i]);
    for (int64_t i = 0; i < T * Dg; i++) B->hg[i] = rke_sigmoid(B->hg[i]);
    /* the LoRA inputs are dead now: their buffers take the outputs */
    const rke_matrix *const up[] = {&L->w2, &L->a2, &L->g2, &L->v2};
    const float *const up_x[] = {B->hw, B->ha, B->hg, B->hv};
    float *const up_y[] = {B->xw, B->xa, B->xg, B->xv};
    rc = rke_linear_many(run, first_layer ? 3 : 4, up, up_x, up_y);
    if (rc != RKE_OK) return rc;

    rke_parallel(run, prepare_token, &tc, T, 120 * C);
    /* the WKV's a is -kk (folded into the kernel's sign) */
    const wkv_ctx wc = {run, S, B->r, B->xw, B->k, B->v, B->xk, B->xr, B->y};
    rke_parallel(run, wkv_head, &wc, H, 5 * N * N * T);
    rke_parallel(run, finish_token, &tc, T, 12 * C);
    rc = rke_linear(run, &L->output, B->y, B->xn);
    if (rc != RKE_OK) return rc;
    for (int64_t i = 0; i < T * C; i++) x[i] = x[i] + B->xn[i];
    return RKE_OK;
}

static int channel_mix(const rke_run *run, int64_t layer, float *x_prev, float *x, void *bufs) {
    const rke_rwkv7_layer *L = (const rke_rwkv7_layer *)run->m->layers + layer;
    const buffers7 *B = bufs;
    const int64_t T = run->T, C = run->m->n_embd, F = run->m->n_ffn;
    float *xb = B->xn, *xk = B->xr, *out = B->xk;
    rke_layer_norm(run, x, L->ln2_w, L->ln2_b, xb, C, run->m->layer_norm_eps);
    for (int64_t t = 0; t < T; t++) {
        const float *prev = rke_prev_row(x_prev, xb, t, C), *b = xb + t * C;
        for (int64_t i = 0; i < C; i++) xk[t * C + i] = b[i] + (prev[i] - b[i]) * L->ffn_x_k[i];
    }
    memcpy(x_prev, xb + (T - 1) * C, (size_t)C * sizeof(float));
    int rc = rke_linear(run, &L->ffn_key, xk, B->h);
    if (rc != RKE_OK) return rc;
    rke_relu_square(B->h, T * F);
    rc = rke_linear(run, &L->ffn_value, B->h, out);
    if (rc != RKE_OK) return rc;
    for (int64_t i = 0; i < T * C; i++) x[i] = x[i] + out[i];
    return RKE_OK;
}

int rke_rwkv7_layers(const rke_run *run, float *state, float *x, float *scratch) {
    rke_arena a = {scratch, 0};
    buffers7 B;
    layout(&a, run->m, run->T, &B);
    return rke_run_layers(run, state, x, time_mix, &B, channel_mix, &B);
}
