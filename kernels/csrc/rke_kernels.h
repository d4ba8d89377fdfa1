/* rwkv-edge C kernels: the public API, parsed by cffi's cdef (lines starting with '#' are dropped
 * there, so this file holds only typedefs, enums and prototypes).
 *
 * Blocks have ggml's bytes (ggml-common.h), so files written by ggml tools are used in place.
 * Every size is explicit; pointers are checked in Python (kernels/checks.py) before they get here.
 */
#ifndef RKE_KERNELS_H
#define RKE_KERNELS_H
#include <stdint.h>

/* Weight blocks of 32 elements. d is the scale and m the minimum (IEEE fp16 bits); qs are 4-bit
 * quants with element j in the low nibble of byte j and element j + 16 in its high nibble (or
 * int8 quants for q8_0); qh is a little-endian u32 whose bit j is bit 4 of element j. */
typedef struct { uint16_t d; uint8_t qs[16]; } rke_block_q4_0;
typedef struct { uint16_t d; uint16_t m; uint8_t qs[16]; } rke_block_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } rke_block_q5_0;
typedef struct { uint16_t d; uint16_t m; uint8_t qh[4]; uint8_t qs[16]; } rke_block_q5_1;
typedef struct { uint16_t d; int8_t qs[32]; } rke_block_q8_0;
/* iq4_nl: element j is d * kvalues[code j], codes packed as q4_0's; kvalues is ggml's kvalues_iq4nl
 * {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}. */
typedef struct { uint16_t d; uint8_t qs[16]; } rke_block_iq4_nl;

/* "Q8 activations": 32 activations as d * qs[j], with d a float32 (not fp16: no second rounding)
 * and s = sum of qs (for the m terms of q4_1 / q5_1). qs is always in -127..127. */
typedef struct { float d; int32_t s; int8_t qs[32]; } rke_block_q8x;

/* ggml type ids (GGUF's), the qtype argument. */
enum rke_qtype {
    RKE_F32 = 0, RKE_F16 = 1, RKE_Q4_0 = 2, RKE_Q4_1 = 3, RKE_Q5_0 = 6, RKE_Q5_1 = 7,
    RKE_Q8_0 = 8, RKE_IQ4_NL = 20, RKE_BF16 = 30
};

/* Implementations: the same numerics, bit for bit (see kernels/reference.py). AVXVNNI is AVX2 with
 * the quantized kernels' block products done by vpdpbusd. */
enum rke_impl { RKE_IMPL_SCALAR = 0, RKE_IMPL_AVX2 = 1, RKE_IMPL_AVXVNNI = 2 };

/* rke_cpu_features() bits: usable by this process (the OS saves the AVX state). */
enum rke_cpu_feature {
    RKE_CPU_AVX = 1, RKE_CPU_FMA = 2, RKE_CPU_F16C = 4, RKE_CPU_AVX2 = 8, RKE_CPU_AVXVNNI = 16
};

/* Return codes of the entry points. Python validates first, so only a bug can see these. */
enum rke_status { RKE_OK = 0, RKE_BAD_IMPL = -1, RKE_BAD_QTYPE = -2, RKE_BAD_SIZE = -3 };

int rke_cpu_features(void);
int rke_impl_compiled(int impl);

/* A persistent pool of n_threads - 1 workers; the calling thread is the n-th. */
typedef struct rke_pool rke_pool;
rke_pool *rke_pool_create(int n_threads);
void rke_pool_destroy(rke_pool *pool);
int rke_pool_threads(const rke_pool *pool);
/* For the tests: runs n_items through the pool in chunks of `grain` (guided != 0: chunks that
 * shrink to one grain, as single matrix products use), adding 1 to visits[i] for every item a
 * chunk covers and to starts[begin] for every chunk (both n_items long, zeroed by the caller). */
void rke_pool_trace(rke_pool *pool, int64_t n_items, int64_t grain, int guided, int32_t *visits,
                    int32_t *starts);

/* x (n_tokens * n_cols) float32 -> xq (n_tokens * n_cols / 32) blocks. n_cols % 32 == 0. */
int rke_quantize_q8x(int impl, const float *x, rke_block_q8x *xq, int64_t n_blocks);

/* y (n_rows) = W (n_rows, n_cols) @ x (n_cols). w holds n_rows rows of whole blocks. xq is
 * scratch of n_cols / 32 blocks, used by the quantized types only. pool may be NULL. */
int rke_matvec(rke_pool *pool, int impl, int qtype, const void *w, const float *x,
               rke_block_q8x *xq, float *y, int64_t n_rows, int64_t n_cols);

/* Y (n_tokens, n_rows) = X (n_tokens, n_cols) @ W (n_rows, n_cols)^T; xq is scratch of
 * n_tokens * n_cols / 32 blocks. Row t of Y equals rke_matvec of row t of X, bit for bit. */
int rke_matmul(rke_pool *pool, int impl, int qtype, const void *w, const float *x,
               rke_block_q8x *xq, float *y, int64_t n_tokens, int64_t n_rows, int64_t n_cols);

/* y = exp(x) as the model code computes it (rke_exp.h): lanes 8 takes the AVX2 version (x86
 * only, and only on a CPU with AVX2), 4 the SSE2 one where there is one, anything else the
 * scalar one; all give the same bits. */
void rke_exp_f32(const float *x, float *y, int64_t n, int lanes);

/* Memory-bandwidth probe (bandwidth.c): *sum = the sum mod 2^64 of n_words words, every word
 * loaded once by the pool's threads. pool may be NULL. */
int rke_read_sum(rke_pool *pool, int impl, const uint64_t *words, int64_t n_words,
                 uint64_t *sum);

#endif
