/* Shared by the model forward files, never seen by cffi: the per-call context, the scratch arena,
 * the small vector operations each ISA implements (ops_scalar.c, ops_avx2.c) and the steps every
 * version uses (model_common.c).
 *
 * Numerics: the WKV's dot products add element i into lane i % 8 in index order and end with
 * the rke_hsum8 tree, and every elementwise step is a separate multiply and add, so the scalar
 * and AVX2 implementations return the same bits (no FMA: -ffp-contract=off); exponentials come
 * from libm in both. The norms sum as numpy does (rke_pairwise_sum), so LayerNorm and GroupNorm
 * return numpy's bits for the same input.
 */
#ifndef RKE_MODEL_INTERNAL_H
#define RKE_MODEL_INTERNAL_H
#include <math.h>
#include <stdint.h>

#include "rke_internal.h"
#include "rke_model.h"

/* exp(-1/2) as the reference writes it: w = exp(-0.606531 * sigmoid(w0 + lora)) */
#define RKE_V7_DECAY_SCALE 0.606531f

/* RWKV-7's per-channel gates of one token (runtime/rwkv7.py), in place over C channels:
 * w = exp(-0.606531 sigmoid(w0 + w)), alpha = sigmoid(a0 + alpha); v = v + (v_first - v) *
 * sigmoid(v0 + v_lora), except on layer 0, whose v becomes v_first; kk = k * k_k and
 * k = k * (1 + (alpha - 1) * k_a). The sigmoids and exp are rke_exp.h's. */
typedef struct {
    float *w, *alpha, *v, *v_first, *kk, *k;      /* (C) */
    const float *v_lora, *w0, *a0, *v0, *k_k, *k_a; /* (C) */
    int first_layer;
} rke_gates7;

/* The operations whose speed matters, one table per ISA. Pointers into (T, stride) arrays. */
typedef struct {
    /* One head of the v5/v6 WKV over T tokens; S (N, N) [value][key], the token rows of r, k,
     * v, w and y are `stride` floats apart (w_stride 0: the same decay for every token).
     * y_i = S_i . r + bonus_t * v_i with bonus_t = (r * u) . k, then S_ij = S_ij w_j + v_i k_j. */
    void (*wkv5)(float *S, const float *r, const float *k, const float *v, const float *w,
                 const float *u, float *y, int64_t T, int64_t N, int64_t stride,
                 int64_t w_stride);
    /* One head of the v7 WKV over T tokens: sa_i = -(S_i . kk), S_ij = S_ij w_j + (sa_i b_j +
     * v_i k_j), y_i = S_i . r with the new S. */
    void (*wkv7)(float *S, const float *r, const float *w, const float *k, const float *v,
                 const float *kk, const float *b, float *y, int64_t T, int64_t N,
                 int64_t stride);
    void (*gates7)(const rke_gates7 *g, int64_t C);
} rke_ops;

extern const rke_ops rke_ops_scalar;
/* rke_gates7 from channel i to C one channel at a time (ops_scalar.c): the vector loops' tail */
void rke_gates7_tail(const rke_gates7 *g, int64_t i, int64_t C);
#if RKE_X86
extern const rke_ops rke_ops_avx2;
#endif

/* One forward call: the model, where matrix products run, and the q8x scratch they share. */
typedef struct {
    const rke_model *m;
    rke_pool *pool;
    int impl;
    const rke_ops *ops;
    rke_block_q8x *xq; /* max(T, RKE_MANY_MAX) rows of xq_row blocks */
    int64_t xq_row;    /* q8x blocks of the widest activation row */
    int64_t T;         /* tokens in this call */
} rke_run;

/* Bump allocation from the caller's scratch; with base NULL it only counts (for the size). */
typedef struct {
    float *base;
    int64_t used; /* floats */
} rke_arena;

static inline float *rke_take(rke_arena *a, int64_t n) {
    float *p = a->base ? a->base + a->used : NULL;
    a->used += (n + 15) / 16 * 16; /* 64-byte steps keep every buffer's start aligned alike */
    return p;
}

static inline float rke_sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }

/* the previous token's row: the state's for t == 0 */
static inline const float *rke_prev_row(const float *state_row, const float *x, int64_t t,
                                        int64_t C) {
    return t == 0 ? state_row : x + (t - 1) * C;
}

/* sum of x[i] (squares: of x[i] * x[i]) in numpy's order: its pairwise summation of a contiguous
 * float32 row (blocks of up to 128 in 8 interleaved partial sums, halved above that) */
float rke_pairwise_sum(const float *x, int64_t n, int squares);

/* h[i] = max(h[i], 0)^2 in place (NaN -> 0), the ChannelMix activation, branch-free. */
void rke_relu_square(float *h, int64_t n);

/* Y (T, W.n_rows) = X (T, W.n_cols) @ W^T through the kernel dispatch (rke_matvec for T == 1). */
int rke_linear(const rke_run *run, const rke_matrix *W, const float *x, float *y);

/* Y[q] = X[q] @ W[q]^T for n independent products (n <= RKE_MANY_MAX): one pool task when T is 1 */
int rke_linear_many(const rke_run *run, int n, const rke_matrix *const W[], const float *const x[],
                    float *const y[]);

/* y = LN(x) for the run's T rows of C: two-pass statistics, (x - mean) / sqrt(var + eps) * w + b,
 * rows split across the pool. y may be x. */
void rke_layer_norm(const rke_run *run, const float *x, const float *w, const float *b, float *y,
                    int64_t C, float eps);

/* GroupNorm of y (T, C) in place, one group of N per head, then the (C) affine. */
void rke_group_norm(float *y, const float *w, const float *b, int64_t T, int64_t C, int64_t N,
                    float eps);

/* Run fn(ctx, i) for every item i < n_items (heads, channel groups, tokens) across the pool;
 * `flops`, the work of one item, decides whether handing out is worth it. */
typedef void (*rke_item_fn)(const void *ctx, int64_t item);
void rke_parallel(const rke_run *run, rke_item_fn fn, const void *ctx, int64_t n_items,
                  int64_t flops);

/* x (T, C) = the embedding rows of tokens, LN(ln0), rounded as emb_round says. */
void rke_embed(const rke_run *run, const int32_t *tokens, float *x);

/* The bytes of a row of n elements (whole blocks) of the given type; 0 if the type is unknown. */
int64_t rke_row_bytes(int qtype, int64_t n);

/* The per-version layer stacks: scratch floats they need for T tokens, and the run itself over
 * x (T, C) in place. */
int64_t rke_rwkv4_scratch(const rke_model *m, int64_t T);
int64_t rke_rwkv5_scratch(const rke_model *m, int64_t T);
int64_t rke_rwkv6_scratch(const rke_model *m, int64_t T);
int64_t rke_rwkv7_scratch(const rke_model *m, int64_t T);
int rke_rwkv4_layers(const rke_run *run, float *state, float *x, float *scratch);
int rke_rwkv5_layers(const rke_run *run, float *state, float *x, float *scratch);
int rke_rwkv6_layers(const rke_run *run, float *state, float *x, float *scratch);
int rke_rwkv7_layers(const rke_run *run, float *state, float *x, float *scratch);

/* The receptance-gated ChannelMix (v4-v6) for x (T, C) += CM(LN2(x)); x_prev (C) updated. */
int64_t rke_channel_mix_scratch(const rke_model *m, int64_t T);
int rke_run_channel_mix(const rke_run *run, const rke_channel_mix *cm, const float *ln2_w,
                    const float *ln2_b, float *x_prev, float *x, float *scratch);

/* One half of layer `layer` over x (T, C) in place: its TimeMix, given the layer's state row,
 * or its ChannelMix, given that row's ChannelMix x_prev (C). bufs: the scratch it laid out. */
typedef int (*rke_layer_step)(const rke_run *run, int64_t layer, float *state, float *x,
                              void *bufs);

/* Every version's layer stack: per layer time_mix, then channel_mix, then the rescale_every
 * halving. Each step gets its own bufs (they may overlap: the steps never run at once). */
int rke_run_layers(const rke_run *run, float *state, float *x, rke_layer_step time_mix,
                   void *tm_bufs, rke_layer_step channel_mix, void *cm_bufs);

/* Floats per layer of the state (runtime/state.py). */
static inline int64_t rke_state_floats(const rke_model *m) {
    if (m->version == 4) return 5 * m->n_embd;
    return 2 * m->n_embd + m->n_head * m->head_size * m->head_size;
}

#endif
