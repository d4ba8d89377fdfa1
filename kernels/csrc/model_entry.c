/* The model entry points Python calls: scratch size, and one forward call over a chunk of tokens
 * (embedding, the version's layers, ln_out and the head). */
#include "rke_model_internal.h"

static const rke_ops *ops_for(int impl) {
#if RKE_X86
    if (impl == RKE_IMPL_AVX2) return &rke_ops_avx2;
    if (impl == RKE_IMPL_AVXVNNI && rke_impl_compiled(impl)) return &rke_ops_avx2;
#endif
    return impl == RKE_IMPL_SCALAR ? &rke_ops_scalar : NULL;
}

static int64_t layers_scratch(const rke_model *m, int64_t T) {
    switch (m->version) {
    case 4: return rke_rwkv4_scratch(m, T);
    case 5: return rke_rwkv5_scratch(m, T);
    case 6: return rke_rwkv6_scratch(m, T);
    case 7: return rke_rwkv7_scratch(m, T);
    default: return -1;
    }
}

/* q8x blocks of the widest activation row (C, F or a LoRA rank) */
static int64_t xq_row(const rke_model *m) {
    int64_t widest = m->n_ffn > m->n_embd ? m->n_ffn : m->n_embd;
    for (int q = 0; q < 4; q++) widest = m->lora[q] > widest ? m->lora[q] : widest;
    return (widest + QK - 1) / QK;
}

/* the q8x scratch as floats (a block is 10 floats' bytes): a row per token, or per product of
 * rke_linear_many */
static int64_t xq_floats(const rke_model *m, int64_t T) {
    const int64_t rows = T > RKE_MANY_MAX ? T : RKE_MANY_MAX;
    return rows * xq_row(m) * (int64_t)(sizeof(rke_block_q8x) / sizeof(float));
}

/* the arena's fixed part: x, the head's input rows, the q8x blocks */
static void common_layout(rke_arena *a, const rke_model *m, int64_t T, float **x, float **rows,
                          float **xq) {
    *x = rke_take(a, T * m->n_embd);
    *rows = rke_take(a, T * m->n_embd);
    *xq = rke_take(a, xq_floats(m, T));
}

int64_t rke_model_scratch_floats(const rke_model *m, int64_t n_tokens) {
    const int64_t layers = layers_scratch(m, n_tokens);
    if (n_tokens < 1 || layers < 0) return -1;
    rke_arena a = {NULL, 0};
    float *x, *rows, *xq;
    common_layout(&a, m, n_tokens, &x, &rows, &xq);
    return a.used + layers;
}

int rke_model_forward(const rke_model *m, rke_pool *pool, int impl, float *scratch,
                      int64_t scratch_floats, float *state, const int32_t *tokens,
                      const float *x_in, int64_t n_tokens, float *logits,
                      int64_t n_logit_rows) {
    const rke_ops *ops = ops_for(impl);
    if (!ops) return RKE_BAD_IMPL;
    const int64_t needed = rke_model_scratch_floats(m, n_tokens);
    if (needed < 0 || scratch_floats < needed) return RKE_BAD_SIZE;
    if (n_logit_rows != 0 && n_logit_rows != 1 && n_logit_rows != n_tokens) return RKE_BAD_SIZE;
    if (!x_in && (!tokens || !rke_embedding_supported(m->emb.qtype))) return RKE_BAD_QTYPE;
    const int64_t C = m->n_embd, T = n_tokens;
    rke_arena a = {scratch, 0};
    float *x, *rows, *xq;
    common_layout(&a, m, T, &x, &rows, &xq);
    rke_run run = {m, pool, impl, ops, (rke_block_q8x *)xq, xq_row(m), T};
    if (x_in) {
        memcpy(x, x_in, (size_t)(T * C) * sizeof(float));
    } else {
        rke_embed(&run, tokens, x);
    }
    float *rest = scratch + a.used;
    int rc;
    switch (m->version) {
    case 4: rc = rke_rwkv4_layers(&run, state, x, rest); break;
    case 5: rc = rke_rwkv5_layers(&run, state, x, rest); break;
    case 6: rc = rke_rwkv6_layers(&run, state, x, rest); break;
    default: rc = rke_rwkv7_layers(&run, state, x, rest); break;
    }
    if (rc != RKE_OK || n_logit_rows == 0) return rc;
    run.T = n_logit_rows;
    rke_layer_norm(&run, x + (T - n_logit_rows) * C, m->ln_out_w, m->ln_out_b, rows, C,
                   m->layer_norm_eps);
    return rke_linear(&run, &m->head, rows, logits);
}
