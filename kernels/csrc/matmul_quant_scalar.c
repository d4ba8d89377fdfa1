/* y = W x and Y = X W^T for q4_0, q4_1, q5_0, q5_1, q8_0 and iq4_nl weights against q8x activations,
 * portable C: exact int32 lane sums per block, then the float32 accumulation of rke_internal.h. */
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

/* acc[i] += lane i of one block: the exact sum over elements 4i..4i+3, times the block scale */
static void accumulate_block(float acc[8], const int8_t wq[32], const int8_t xq[32],
                             float scale) {
    for (int i = 0; i < 8; i++) {
        int32_t lane = 0;
        for (int k = 0; k < 4; k++) lane += (int32_t)wq[4 * i + k] * (int32_t)xq[4 * i + k];
        acc[i] = acc[i] + (float)lane * scale;
    }
}

/* HAS_MIN: the type stores m, whose term m * sum(x) is the ninth accumulator */
#define DOT_QUANT(t, HAS_MIN)                                                                 \
    static float dot_##t(const rke_block_##t *w, const rke_block_q8x *x, int64_t nb) {        \
        float acc[8] = {0};                                                                   \
        float accm = 0.0f;                                                                    \
        for (int64_t b = 0; b < nb; b++) {                                                    \
            int8_t wq[32];                                                                    \
            unpack_##t(&w[b], wq);                                                            \
            accumulate_block(acc, wq, x[b].qs, rke_fp16_to_f32(w[b].d) * x[b].d);             \
            if (HAS_MIN) accm = accm + dot_min_##t(&w[b]) * (x[b].d * (float)x[b].s);         \
        }                                                                                     \
        return HAS_MIN ? rke_hsum8(acc) + accm : rke_hsum8(acc);                              \
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
            y[r] = dot_##t(wb + r * nb, (const rke_block_q8x *)x, nb);                        \
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
                y[t * n_rows + r] = dot_##t(wb + r * nb, xb + t * nb, nb);                    \
            }                                                                                 \
        }                                                                                     \
    }

MATMUL_QUANT(q4_0)
MATMUL_QUANT(q4_1)
MATMUL_QUANT(q5_0)
MATMUL_QUANT(q5_1)
MATMUL_QUANT(q8_0)
MATMUL_QUANT(iq4_nl)
