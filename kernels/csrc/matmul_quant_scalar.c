/* y = W x and Y = X W^T for q4_0, q4_1, q5_0, q5_1, q8_0 and iq4_nl weights against q8x activations,
 * portable C: a block's exact int32 sum, then the float32 accumulation of rke_internal.h. */
#include "rke_internal.h"

/* Each unpack gives the block's 32 weight quants as the integers the dot product uses:
 * q - 8 (q4_0), q - 16 (q5_0), q (q4_1, q5_1: their minimum is a separate term), qs (q8_0),
 * the codebook value of q (iq4_nl). */

static const int8_t IQ4_NL_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                         1,    13,   25,  38,  53,  69,  89,  113};

static void unpack_nibbles(const uint8_t qs[16], int8_t q[32], int offset) {
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)((qs[j] & 0x0F) - offset);
        q[j + 16] = (int8_t)((qs[j] >> 4) - offset);
    }
}

static void unpack_five_bits(const uint8_t qh[4], const uint8_t qs[16], int8_t q[32],
                             int offset) {
    const uint32_t bits = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 |
                          (uint32_t)qh[3] << 24;
    for (int j = 0; j < 16; j++) {
        const int lo = qs[j] & 0x0F, hi = qs[j] >> 4;
        q[j] = (int8_t)((lo | (int)((bits >> j) & 1u) << 4) - offset);
        q[j + 16] = (int8_t)((hi | (int)((bits >> (j + 16)) & 1u) << 4) - offset);
    }
}

static void unpack_q4_0(const rke_block_q4_0 *b, int8_t q[32]) { unpack_nibbles(b->qs, q, 8); }
static void unpack_q4_1(const rke_block_q4_1 *b, int8_t q[32]) { unpack_nibbles(b->qs, q, 0); }
static void unpack_q5_0(const rke_block_q5_0 *b, int8_t q[32]) {
    unpack_five_bits(b->qh, b->qs, q, 16);
}
static void unpack_q5_1(const rke_block_q5_1 *b, int8_t q[32]) {
    unpack_five_bits(b->qh, b->qs, q, 0);
}
static void unpack_q8_0(const rke_block_q8_0 *b, int8_t q[32]) { memcpy(q, b->qs, 32); }
static void unpack_iq4_nl(const rke_block_iq4_nl *b, int8_t q[32]) {
    for (int j = 0; j < 16; j++) {
        q[j] = IQ4_NL_VALUES[b->qs[j] & 0x0F];
        q[j + 16] = IQ4_NL_VALUES[b->qs[j] >> 4];
    }
}

/* the exact integer sum of a block's 32 products */
static int32_t block_isum(const int8_t wq[32], rke_act_block a) {
    int32_t isum = 0;
    for (int g = 0; g < 8; g++) {
        for (int i = 0; i < 4; i++) isum += (int32_t)wq[4 * g + i] * (int32_t)a.qs[g * a.gstride + i];
    }
    return isum;
}

/* HAS_MIN: the type stores m, whose term m * sum(x) is the second accumulator. Token t of the
 * n_tokens in x's layout (rke_act_at). */
#define DOT_QUANT(t, HAS_MIN)                                                                 \
    static float dot_##t(const rke_block_##t *w, const rke_block_q8x *x, int64_t nb,          \
                         int64_t n_tokens, int64_t tok) {                                     \
        float acc = 0.0f, accm = 0.0f;                                                        \
        for (int64_t b = 0; b < nb; b++) {                                                    \
            int8_t wq[32];                                                                    \
            unpack_##t(&w[b], wq);                                                            \
            const rke_act_block a = rke_act_at(x, nb, n_tokens, tok, b);                      \
            acc = acc + (float)block_isum(wq, a) * (rke_fp16_to_f32(w[b].d) * a.d);           \
            if (HAS_MIN) accm = accm + dot_min_##t(&w[b]) * (a.d * (float)a.s);               \
        }                                                                                     \
        return HAS_MIN ? acc + accm : acc;                                                    \
    }

/* dot_min_<t>: the fp16 minimum of a block, for the types that have one */
static float dot_min_q4_1(const rke_block_q4_1 *b) { return rke_fp16_to_f32(b->m); }
static float dot_min_q5_1(const rke_block_q5_1 *b) { return rke_fp16_to_f32(b->m); }
#define dot_min_q4_0(b) 0.0f
#define dot_min_q5_0(b) 0.0f
#define dot_min_q8_0(b) 0.0f
#define dot_min_iq4_nl(b) 0.0f

DOT_QUANT(q4_0, 0)
DOT_QUANT(q4_1, 1)
DOT_QUANT(q5_0, 0)
DOT_QUANT(q5_1, 1)
DOT_QUANT(q8_0, 0)
DOT_QUANT(iq4_nl, 0)

#define MATMUL_QUANT(t)                                                                       \
    void rke_matvec_##t##_scalar(const void *w, const void *x, float *y, int64_t n_cols,     \
                                 int64_t row_begin, int64_t row_end) {                        \
        const int64_t nb = n_cols / QK;                                                       \
        const rke_block_##t *wb = (const rke_block_##t *)w;                                   \
        for (int64_t r = row_begin; r < row_end; r++) {                                       \
            y[r] = dot_##t(wb + r * nb, (const rke_block_q8x *)x, nb, 1, 0);                  \
        }                                                                                     \
    }                                                                                         \
    void rke_matmul_##t##_scalar(const void *w, const void *x, float *y, int64_t n_tokens,   \
                                 int64_t n_rows, int64_t n_cols, int64_t row_begin,           \
                                 int64_t row_end) {                                           \
        const int64_t nb = n_cols / QK;                                                       \
        const rke_block_##t *wb = (const rke_block_##t *)w;                                   \
        const rke_block_q8x *xb = (const rke_block_q8x *)x;                                   \
        for (int64_t r = row_begin; r < row_end; r++) {                                       \
            for (int64_t t = 0; t < n_tokens; t++) {                                          \
                y[t * n_rows + r] = dot_##t(wb + r * nb, xb, nb, n_tokens, t);                \
            }                                                                                 \
        }                                                                                     \
    }

MATMUL_QUANT(q4_0)
MATMUL_QUANT(q4_1)
MATMUL_QUANT(q5_0)
MATMUL_QUANT(q5_1)
MATMUL_QUANT(q8_0)
MATMUL_QUANT(iq4_nl)
