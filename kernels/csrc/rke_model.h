/* rwkv-edge C forward pass of a whole model: the structs Python fills at load and the entry
 * points, parsed by cffi's cdef like rke_kernels.h (lines starting with '#' are dropped there).
 *
 * Every pointer points into arrays Python has checked against the dims in rke_model
 * (kernels/model_native.py), so the C code trusts the sizes below. Shapes use C = n_embd,
 * F = n_ffn, V = n_vocab, H = n_head, N = head_size and the LoRA ranks D.
 */
#ifndef RKE_MODEL_H
#define RKE_MODEL_H
#include <stdint.h>

#include "rke_kernels.h"

/* A weight matrix [n_rows, n_cols] (PyTorch's [out, in]) of ggml type qtype, rows contiguous. */
typedef struct {
    const void *data;
    int32_t qtype;
    int64_t n_rows, n_cols;
} rke_matrix;

/* The receptance-gated ChannelMix of v4, v5 and v6. */
typedef struct {
    const float *m_k, *m_r; /* (C) token-shift mixes, x + (x_prev - x) * m */
    rke_matrix key;         /* (F, C) */
    rke_matrix value;       /* (C, F) */
    rke_matrix receptance;  /* (C, C) */
} rke_channel_mix;

typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b; /* (C) */
    const float *m_k, *m_v, *m_r;               /* (C) */
    const float *w;                             /* (C) log-decay, -exp(time_decay) */
    const float *u;                             /* (C) log-bonus, time_first */
    rke_matrix key, value, receptance, output;  /* (C, C) */
    rke_channel_mix ffn;
} rke_rwkv4_layer;

/* 5.0, 5.1 and 5.2: 5.0 has no gate (m_g NULL, gate.data NULL). */
typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const float *m_k, *m_v, *m_r, *m_g;  /* (C) */
    const float *w;                      /* (C) decay in (0, 1) per head channel */
    const float *u;                      /* (C) bonus per head channel */
    const float *ln_x_w, *ln_x_b;        /* (C) */
    rke_matrix key, value, receptance, gate, output;
    rke_channel_mix ffn;
} rke_rwkv5_layer;

/* LoRA matrices are rke_matrix too, [out, in] like every Linear: time_maa_w1 (C, 5 D_mix) is
 * given as its transpose (5 D_mix, C), and so on. */
typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const float *maa_x;     /* (C) */
    const float *maa_wkvrg; /* (5, C) base mixes in LoRA chunk order w, k, v, r, g */
    rke_matrix maa_w1;      /* (5 D_mix, C) */
    rke_matrix maa_w2[5];   /* (C, D_mix) each, chunks w, k, v, r, g */
    const float *decay;     /* (C) time_decay, raw */
    rke_matrix decay_w1;    /* (D_decay, C) */
    rke_matrix decay_w2;    /* (C, D_decay) */
    const float *u;         /* (C) time_faaaa */
    const float *ln_x_w, *ln_x_b;
    rke_matrix key, value, receptance, gate, output;
    rke_channel_mix ffn;
} rke_rwkv6_layer;

/* LoRA matrices [out, in] as rke_matrix: w1 (C, D_w) is given as its transpose (D_w, C).
 * v0, v1, v2 are NULL in layer 0 (it makes v_first). */
typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const float *x_r, *x_w, *x_k, *x_v, *x_a, *x_g; /* (C) */
    const float *w0, *a0, *v0;                      /* (C) */
    rke_matrix w1, a1, v1, g1;                      /* (D_w, C), (D_a, C), (D_v, C), (D_g, C) */
    rke_matrix w2, a2, v2, g2;                      /* (C, D_*) */
    const float *k_k, *k_a, *r_k;                   /* (C) */
    const float *ln_x_w, *ln_x_b;
    rke_matrix receptance, key, value, output;      /* (C, C) */
    const float *ffn_x_k;                           /* (C) */
    rke_matrix ffn_key;                             /* (F, C) */
    rke_matrix ffn_value;                           /* (C, F) */
} rke_rwkv7_layer;

typedef struct {
    int32_t version; /* 4, 5, 6 or 7; the 5.x variants differ only in their layer fields */
    int64_t n_vocab, n_embd, n_layer, n_ffn, n_head, head_size;
    int64_t lora[4];   /* v6: D_mix, D_decay; v7: D_w, D_a, D_v, D_g */
    float layer_norm_eps, group_norm_eps;
    int64_t rescale_every; /* halve x after every n-th layer; 0 never */
    rke_matrix emb;        /* (V, C) */
    int32_t emb_round;     /* after ln0, round x to RKE_F16 or RKE_BF16 precision; RKE_F32: no */
    const float *ln0_w, *ln0_b, *ln_out_w, *ln_out_b; /* (C) */
    rke_matrix head;       /* (V, C) */
    const void *layers;    /* n_layer rke_rwkv{4,5,6,7}_layer, by version */
} rke_model;

/* Can rke_model_forward look up embedding rows of this type itself? (Otherwise pass x_in.) */
int rke_embedding_supported(int qtype);

/* The embedding's steps, public for tests: y (n) = one row of n elements (whole blocks) of the
 * given type, as quant/blocks.py dequantizes it (0 if the type is unknown); and x (n) rounded
 * in place to RKE_F16 or RKE_BF16 precision as runtime/weights.round_to does (other types: no
 * change). */
int rke_dequantize_row(int qtype, const void *row, float *y, int64_t n);
void rke_round_to(float *x, int64_t n, int qtype);

/* Floats of scratch rke_model_forward needs for calls of up to n_tokens tokens. */
int64_t rke_model_scratch_floats(const rke_model *m, int64_t n_tokens);

/* Advance state (n_layer rows of the State layout, runtime/state.py) over n_tokens tokens.
 * The inputs are tokens (ids < n_vocab), or, when x_in is not NULL, x_in (n_tokens, C): rows
 * already looked up and normalised by ln0. logits gets n_logit_rows rows of V: 0 (none), 1 (the
 * last token's) or n_tokens (every token's). scratch holds scratch_floats floats, at least
 * rke_model_scratch_floats(m, n_tokens). */
int rke_model_forward(const rke_model *m, rke_pool *pool, int impl, float *scratch,
                      int64_t scratch_floats, float *state, const int32_t *tokens,
                      const float *x_in, int64_t n_tokens, float *logits,
                      int64_t n_logit_rows);

#endif
