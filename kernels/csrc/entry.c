/* The entry points Python calls: pick the kernel for (implementation, weight type), quantize the
 * activations when the type needs it, and split the rows across the pool. */
#include "rke_avx2_target.h"
#include "rke_internal.h"

typedef struct {
    rke_matvec_fn matvec;
    rke_matmul_fn matmul;
    int64_t block_bytes; /* bytes per block of `block_elems` elements */
    int64_t block_elems;
} kernel_entry;

#define ENTRY(t, isa, bytes, elems)                                                           \
    (kernel_entry) { rke_matvec_##t##_##isa, rke_matmul_##t##_##isa, bytes, elems }

/* float_isa's kernels for the float types, quant_isa's for the block-quantized ones */
#define ENTRIES(float_isa, quant_isa)                                                         \
    switch (qtype) {                                                                          \
    case RKE_F32: *out = ENTRY(f32, float_isa, 4, 1); return 1;                               \
    case RKE_F16: *out = ENTRY(f16, float_isa, 2, 1); return 1;                               \
    case RKE_BF16: *out = ENTRY(bf16, float_isa, 2, 1); return 1;                             \
    case RKE_Q4_0: *out = ENTRY(q4_0, quant_isa, 18, QK); return 1;                           \
    case RKE_Q4_1: *out = ENTRY(q4_1, quant_isa, 20, QK); return 1;                           \
    case RKE_Q5_0: *out = ENTRY(q5_0, quant_isa, 22, QK); return 1;                           \
    case RKE_Q5_1: *out = ENTRY(q5_1, quant_isa, 24, QK); return 1;                           \
    case RKE_Q8_0: *out = ENTRY(q8_0, quant_isa, 34, QK); return 1;                           \
    case RKE_IQ4_NL: *out = ENTRY(iq4_nl, quant_isa, 18, QK); return 1;                       \
    default: return 0;                                                                        \
    }

static int find_kernel(int impl, int qtype, kernel_entry *out) {
    if (impl == RKE_IMPL_SCALAR) {
        ENTRIES(scalar, scalar)
    }
#if RKE_X86
    if (impl == RKE_IMPL_AVX2) {
        ENTRIES(avx2, avx2)
    }
#endif
#if RKE_HAVE_AVXVNNI
    if (impl == RKE_IMPL_AVXVNNI) {
        ENTRIES(avx2, avxvnni)
    }
#endif
    return 0;
}

static rke_quantize_fn find_quantizer(int impl) {
#if RKE_X86
    if (impl == RKE_IMPL_AVX2 || (impl == RKE_IMPL_AVXVNNI && RKE_HAVE_AVXVNNI)) {
        return rke_quantize_q8x_avx2;
    }
#endif
    return impl == RKE_IMPL_SCALAR ? rke_quantize_q8x_scalar : NULL;
}

/* Rows per chunk: a multiple of the 8-row decode tiles, about 4 chunks per thread so a thread that
 * the OS delays is caught up by the others, and at least ~16 KiB of weights per chunk so the
 * hand-over costs little. */
static int64_t row_grain(const rke_pool *pool, int64_t n_rows, int64_t row_work_bytes) {
    const int64_t per_thread = (n_rows + 4 * rke_pool_threads(pool) - 1) /
                               (4 * rke_pool_threads(pool));
    const int64_t min_rows = (16384 + row_work_bytes - 1) / row_work_bytes;
    const int64_t rows = per_thread > min_rows ? per_thread : min_rows;
    return (rows + 7) / 8 * 8;
}

typedef struct {
    rke_quantize_fn quantize;
    const float *x;
    rke_block_q8x *xq;
    int64_t nb;           /* blocks per token */
    int64_t group_blocks; /* items that are a group's block (rke_block_q8x8), before the rest */
} quantize_ctx;

/* 8 tokens' block, quantized one by one, side by side as rke_internal.h's rke_block_q8x8 */
static void interleave(const rke_block_q8x tokens[8], rke_block_q8x8 *out) {
    for (int k = 0; k < 8; k++) {
        out->d[k] = tokens[k].d;
        out->s[k] = tokens[k].s;
        for (int g = 0; g < 8; g++) memcpy(out->qs[g][k], tokens[k].qs + 4 * g, 4);
    }
}

/* items: each group's blocks (group i / nb, block i % nb), then the remaining tokens' q8x blocks */
static void quantize_task(const void *ctx, int64_t begin, int64_t end) {
    const quantize_ctx *c = ctx;
    int64_t i = begin;
    for (; i < end && i < c->group_blocks; i++) {
        const int64_t group = i / c->nb, b = i % c->nb;
        rke_block_q8x tokens[8];
        for (int k = 0; k < 8; k++) {
            c->quantize(c->x + ((8 * group + k) * c->nb + b) * QK, &tokens[k], 1);
        }
        interleave(tokens, (rke_block_q8x8 *)c->xq + i);
    }
    if (i < end) { /* past the groups: q8x block p, where the groups' 8 * group_blocks end */
        const int64_t p = 8 * c->group_blocks + (i - c->group_blocks);
        c->quantize(c->x + p * QK, c->xq + p, end - i);
    }
}

typedef struct {
    kernel_entry k;
    const void *w;
    const void *x;
    float *y;
    int64_t n_tokens, n_rows, n_cols;
} matmul_ctx;

static void matvec_task(const void *ctx, int64_t begin, int64_t end) {
    const matmul_ctx *c = ctx;
    c->k.matvec(c->w, c->x, c->y, c->n_cols, begin, end);
}

static void matmul_task(const void *ctx, int64_t begin, int64_t end) {
    const matmul_ctx *c = ctx;
    c->k.matmul(c->w, c->x, c->y, c->n_tokens, c->n_rows, c->n_cols, begin, end);
}

int rke_quantize_q8x(int impl, const float *x, rke_block_q8x *xq, int64_t n_blocks) {
    const rke_quantize_fn quantize = find_quantizer(impl);
    if (!quantize) return RKE_BAD_IMPL;
    if (n_blocks < 0) return RKE_BAD_SIZE;
    quantize(x, xq, n_blocks);
    return RKE_OK;
}

static int run(rke_pool *pool, int impl, int qtype, const void *w, const float *x,
               rke_block_q8x *xq, float *y, int64_t n_tokens, int64_t n_rows, int64_t n_cols,
               rke_task_fn task) {
    matmul_ctx c = {.w = w, .y = y, .n_tokens = n_tokens, .n_rows = n_rows, .n_cols = n_cols};
    if (!find_kernel(impl, qtype, &c.k)) {
        return rke_impl_compiled(impl) ? RKE_BAD_QTYPE : RKE_BAD_IMPL;
    }
    if (n_tokens < 1 || n_rows < 1 || n_cols < 1 || n_cols % c.k.block_elems) {
        return RKE_BAD_SIZE;
    }
    c.x = x;
    if (c.k.block_elems == QK) {
        const int64_t nb = n_cols / QK, grouped = rke_grouped_tokens(n_tokens);
        const quantize_ctx q = {find_quantizer(impl), x, xq, nb, grouped / 8 * nb};
        rke_pool_run(pool, quantize_task, &q, q.group_blocks + (n_tokens - grouped) * nb, 128);
        c.x = xq;
    }
    const int64_t row_bytes = n_cols / c.k.block_elems * c.k.block_bytes;
    /* guided chunks shrink to one grain: 8 rows (a tile) and 32 KiB of work, twice row_grain's
     * floor, since a guided product ends in several one-grain chunks and each costs a
     * compare-and-swap and its first region's prefetch */
    const int64_t min_rows = (32768 + row_bytes * n_tokens - 1) / (row_bytes * n_tokens);
    rke_pool_run_guided(pool, task, &c, n_rows, (min_rows + 7) / 8 * 8);
    return RKE_OK;
}

int rke_matvec(rke_pool *pool, int impl, int qtype, const void *w, const float *x,
               rke_block_q8x *xq, float *y, int64_t n_rows, int64_t n_cols) {
    return run(pool, impl, qtype, w, x, xq, y, 1, n_rows, n_cols, matvec_task);
}

int rke_matmul(rke_pool *pool, int impl, int qtype, const void *w, const float *x,
               rke_block_q8x *xq, float *y, int64_t n_tokens, int64_t n_rows, int64_t n_cols) {
    return run(pool, impl, qtype, w, x, xq, y, n_tokens, n_rows, n_cols, matmul_task);
}

/* rke_matvec_many: every job's rows cut into that job's chunks, all chunks one pool task */
typedef struct {
    const rke_matvec_job *jobs;
    kernel_entry k[RKE_MANY_MAX];
    const void *x[RKE_MANY_MAX];     /* x, or its q8x blocks */
    int64_t grain[RKE_MANY_MAX];     /* rows per chunk */
    int64_t first[RKE_MANY_MAX + 1]; /* the first chunk of each job */
} many_ctx;

static void many_task(const void *ctx, int64_t begin, int64_t end) {
    const many_ctx *c = ctx;
    int q = 0;
    for (int64_t chunk = begin; chunk < end; chunk++) {
        while (chunk >= c->first[q + 1]) q++;
        const rke_matvec_job *j = &c->jobs[q];
        const int64_t r0 = (chunk - c->first[q]) * c->grain[q];
        const int64_t r1 = r0 + c->grain[q] < j->n_rows ? r0 + c->grain[q] : j->n_rows;
        c->k[q].matvec(j->w, c->x[q], j->y, j->n_cols, r0, r1);
    }
}

int rke_matvec_many(rke_pool *pool, int impl, const rke_matvec_job *jobs, int n_jobs) {
    if (n_jobs < 1 || n_jobs > RKE_MANY_MAX) return RKE_BAD_SIZE;
    many_ctx c = {.jobs = jobs};
    for (int q = 0; q < n_jobs; q++) {
        const rke_matvec_job *j = &jobs[q];
        if (!find_kernel(impl, j->qtype, &c.k[q])) {
            return rke_impl_compiled(impl) ? RKE_BAD_QTYPE : RKE_BAD_IMPL;
        }
        if (j->n_rows < 1 || j->n_cols < 1 || j->n_cols % c.k[q].block_elems) return RKE_BAD_SIZE;
        c.x[q] = j->x;
        if (c.k[q].block_elems == QK) { /* one row of activations: too little to hand out */
            find_quantizer(impl)(j->x, j->xq, j->n_cols / QK);
            c.x[q] = j->xq;
        }
        const int64_t row_bytes = j->n_cols / c.k[q].block_elems * c.k[q].block_bytes;
        c.grain[q] = row_grain(pool, j->n_rows, row_bytes);
        c.first[q + 1] = c.first[q] + (j->n_rows + c.grain[q] - 1) / c.grain[q];
    }
    rke_pool_run(pool, many_task, &c, c.first[n_jobs], 1);
    return RKE_OK;
}
