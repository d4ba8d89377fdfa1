/* y = W x and Y = X W^T for float32 / fp16 / bf16 weights, portable C: the 8-lane float32
 * accumulation of rke_internal.h, one row and one token at a time. */
#include "rke_internal.h"

#define DOT_FLOAT(name, wtype, decode)                                                        \
    static float name(const wtype *w, const float *x, int64_t n) {                           \
        float acc[8] = {0};                                                                   \
        int64_t c = 0;                                                                        \
        for (; c + 8 <= n; c += 8) {                                                          \
            for (int i = 0; i < 8; i++) acc[i] = acc[i] + decode(w[c + i]) * x[c + i];        \
        }                                                                                     \
        for (int i = 0; c + i < n; i++) acc[i] = acc[i] + decode(w[c + i]) * x[c + i];        \
        return rke_hsum8(acc);                                                                \
    }

static inline float identity_f32(float v) { return v; }

DOT_FLOAT(dot_f32, float, identity_f32)
DOT_FLOAT(dot_f16, uint16_t, rke_fp16_to_f32)
DOT_FLOAT(dot_bf16, uint16_t, rke_bf16_to_f32)

#define MATMUL_FLOAT(t, wtype, dot)                                                           \
    void rke_matvec_##t##_scalar(const void *w, const void *x, float *y, int64_t n_cols,     \
                                 int64_t row_begin, int64_t row_end) {                        \
        const wtype *wr = (const wtype *)w;                                                   \
        for (int64_t r = row_begin; r < row_end; r++) {                                       \
            y[r] = dot(wr + r * n_cols, (const float *)x, n_cols);                            \
        }                                                                                     \
    }                                                                                         \
    void rke_matmul_##t##_scalar(const void *w, const void *x, float *y, int64_t n_tokens,   \
                                 int64_t n_rows, int64_t n_cols, int64_t row_begin,           \
                                 int64_t row_end) {                                           \
        const wtype *wr = (const wtype *)w;                                                   \
        const float *xt = (const float *)x;                                                   \
        for (int64_t r = row_begin; r < row_end; r++) {                                       \
            for (int64_t t = 0; t < n_tokens; t++) {                                          \
                y[t * n_rows + r] = dot(wr + r * n_cols, xt + t * n_cols, n_cols);            \
            }                                                                                 \
        }                                                                                     \
    }

MATMUL_FLOAT(f32, float, dot_f32)
MATMUL_FLOAT(f16, uint16_t, dot_f16)
MATMUL_FLOAT(bf16, uint16_t, dot_bf16)
