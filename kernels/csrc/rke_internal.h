/* Shared by the kernel files, never seen by cffi: block size checks, exact scalar fp16/bf16
 * decoding, the 8-lane accumulation every implementation follows, and the per-ISA kernel table.
 *
 * The numerics (kernels/reference.py is the executable spec) are fixed so that every
 * implementation returns the same bits:
 *   float weights: lane i (0..7) accumulates columns c = i (mod 8) in column order,
 *                  acc[i] = acc[i] + w[c] * x[c] in float32 (the product rounded, then the sum),
 *                  then the tree rke_hsum8 below;
 *   quantized:     per block b in order, isum = the exact int32 sum of the block's 32 products
 *                  wq * xq, then acc = acc + (float)isum * (dw * dx); for q4_1 / q5_1 a second
 *                  accumulator takes accm = accm + mw * (dx * (float)s), and y = acc + accm.
 * Mul then add, never FMA (-ffp-contract=off). The quantized rule needs no fixed lanes: AVX2
 * holds 8 tokens (prompts) or 8 rows (decode) in one register, each lane a whole output.
 */
#ifndef RKE_INTERNAL_H
#define RKE_INTERNAL_H
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "rke_kernels.h"

#define QK 32 /* elements per block of every quantized type */

static_assert(sizeof(rke_block_q4_0) == 18, "q4_0 block must be ggml's 18 bytes");
static_assert(sizeof(rke_block_q4_1) == 20, "q4_1 block must be ggml's 20 bytes");
static_assert(sizeof(rke_block_q5_0) == 22, "q5_0 block must be ggml's 22 bytes");
static_assert(sizeof(rke_block_q5_1) == 24, "q5_1 block must be ggml's 24 bytes");
static_assert(sizeof(rke_block_q8_0) == 34, "q8_0 block must be ggml's 34 bytes");
static_assert(sizeof(rke_block_iq4_nl) == 18, "iq4_nl block must be ggml's 18 bytes");
static_assert(sizeof(rke_block_q8x) == 40, "q8x block is d, s, qs[32]");

/* Prompt activations. rke_matmul quantizes the first rke_grouped_tokens(T) tokens in groups of 8,
 * a group's block b as one rke_block_q8x8: its 8 tokens side by side, so that one 32-byte load
 * holds elements 4g..4g+3 of each of them (what a broadcast of 4 weight bytes multiplies). The
 * group's nb blocks take the place of its 8 tokens' rows of q8x blocks; tokens past the last
 * whole group keep their q8x rows. */
typedef struct {
    float d[8];
    int32_t s[8];
    int8_t qs[8][8][4]; /* [g][k][i]: token k's element 4g + i */
} rke_block_q8x8;
static_assert(sizeof(rke_block_q8x8) == 8 * sizeof(rke_block_q8x), "a group's block is 8 q8x");

static inline int64_t rke_grouped_tokens(int64_t n_tokens) { return n_tokens & ~(int64_t)7; }

/* token t's block b in either layout: element j at qs[(j / 4) * gstride + j % 4] */
typedef struct {
    const int8_t *qs;
    int64_t gstride;
    float d;
    int32_t s;
} rke_act_block;

static inline rke_act_block rke_act_at(const rke_block_q8x *x, int64_t nb, int64_t n_tokens,
                                       int64_t t, int64_t b) {
    if (t < rke_grouped_tokens(n_tokens)) {
        const rke_block_q8x8 *g = (const rke_block_q8x8 *)x + (t / 8) * nb + b;
        const int k = (int)(t % 8);
        return (rke_act_block){&g->qs[0][k][0], 32, g->d[k], g->s[k]};
    }
    const rke_block_q8x *p = x + t * nb + b;
    return (rke_act_block){p->qs, 4, p->d, p->s};
}

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#define RKE_X86 1
#else
#define RKE_X86 0
#endif

static inline float rke_f32_from_bits(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* IEEE half -> float, exact (every half is a float), subnormals included; NaNs come out quiet
 * as F16C makes them. */
static inline float rke_fp16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu;
    const uint32_t mant = h & 0x3FFu;
    if (exp == 0x1F) {
        return rke_f32_from_bits(sign | 0x7F800000u | (mant << 13) | (mant ? 0x400000u : 0u));
    }
    if (exp == 0) {
        /* mant * 2^-24 is exact in float32 */
        const float f = (float)mant * 0x1p-24f;
        return sign ? -f : f;
    }
    return rke_f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

/* rke_fp16_to_f32 of every half, filled when the library loads (fp16_table.c). */
extern float rke_fp16_table[65536];

/* bf16 is the upper half of a float32. */
static inline float rke_bf16_to_f32(uint16_t h) { return rke_f32_from_bits((uint32_t)h << 16); }

/* The fixed reduction tree of the 8 lanes (the order _mm256 code gets with extract/movehl). */
static inline float rke_hsum8(const float acc[8]) {
    const float t0 = acc[0] + acc[4], t1 = acc[1] + acc[5];
    const float t2 = acc[2] + acc[6], t3 = acc[3] + acc[7];
    return (t0 + t2) + (t1 + t3);
}

/* Rows [row_begin, row_end) of y = W x. x is float (n_cols) for the float weight types and
 * q8x blocks (n_cols / 32) for the quantized ones. */
typedef void (*rke_matvec_fn)(const void *w, const void *x, float *y, int64_t n_cols,
                              int64_t row_begin, int64_t row_end);
/* Rows [row_begin, row_end) of Y (n_tokens, n_rows) = X (n_tokens, ...) @ W^T. */
typedef void (*rke_matmul_fn)(const void *w, const void *x, float *y, int64_t n_tokens,
                              int64_t n_rows, int64_t n_cols, int64_t row_begin,
                              int64_t row_end);
typedef void (*rke_quantize_fn)(const float *x, rke_block_q8x *xq, int64_t n_blocks);

#define RKE_DECLARE_TYPE(t, isa)                                                              \
    void rke_matvec_##t##_##isa(const void *w, const void *x, float *y, int64_t n_cols,      \
                                int64_t row_begin, int64_t row_end);                          \
    void rke_matmul_##t##_##isa(const void *w, const void *x, float *y, int64_t n_tokens,    \
                                int64_t n_rows, int64_t n_cols, int64_t row_begin,            \
                                int64_t row_end);
#define RKE_DECLARE_ISA(isa)                                                                  \
    RKE_DECLARE_TYPE(f32, isa)                                                                \
    RKE_DECLARE_TYPE(f16, isa)                                                                \
    RKE_DECLARE_TYPE(bf16, isa)                                                               \
    RKE_DECLARE_TYPE(q4_0, isa)                                                               \
    RKE_DECLARE_TYPE(q4_1, isa)                                                               \
    RKE_DECLARE_TYPE(q5_0, isa)                                                               \
    RKE_DECLARE_TYPE(q5_1, isa)                                                               \
    RKE_DECLARE_TYPE(q8_0, isa)                                                               \
    RKE_DECLARE_TYPE(iq4_nl, isa)                                                             \
    void rke_quantize_q8x_##isa(const float *x, rke_block_q8x *xq, int64_t n_blocks);

RKE_DECLARE_ISA(scalar)
#if RKE_X86
RKE_DECLARE_ISA(avx2)
/* avxvnni: its own quantized kernels, AVX2's for the rest */
RKE_DECLARE_TYPE(q4_0, avxvnni)
RKE_DECLARE_TYPE(q4_1, avxvnni)
RKE_DECLARE_TYPE(q5_0, avxvnni)
RKE_DECLARE_TYPE(q5_1, avxvnni)
RKE_DECLARE_TYPE(q8_0, avxvnni)
RKE_DECLARE_TYPE(iq4_nl, avxvnni)
#endif

/* Several independent y = W x as one pool task (fewer hand-overs than one rke_matvec each, and
 * no thread idles at the end of a small matrix); each y is rke_matvec's, bit for bit. xq is the
 * job's own scratch of n_cols / 32 blocks (quantized types). Defined in entry.c. */
#define RKE_MANY_MAX 8
typedef struct {
    int qtype;
    const void *w;
    const float *x;
    rke_block_q8x *xq;
    float *y;
    int64_t n_rows, n_cols;
} rke_matvec_job;
int rke_matvec_many(rke_pool *pool, int impl, const rke_matvec_job *jobs, int n_jobs);

/* The pool runs task(ctx, begin, end) over [0, n_items) in chunks of `grain` items (the last
 * chunk may be shorter); with pool == NULL the caller runs it all. Defined in pool.c. */
typedef void (*rke_task_fn)(const void *ctx, int64_t begin, int64_t end);
void rke_pool_run(rke_pool *pool, rke_task_fn task, const void *ctx, int64_t n_items,
                  int64_t grain);
/* The same with chunks of a multiple of `grain` items that shrink as the items run out, from
 * 1 / (2 x threads) of them to one grain: the threads end together, where equal chunks can leave
 * one thread a whole chunk behind (a token's largest products are each a few such chunks). */
void rke_pool_run_guided(rke_pool *pool, rke_task_fn task, const void *ctx, int64_t n_items,
                         int64_t grain);

#endif
