/* y = W x and Y = X W^T for float32 / fp16 / bf16 weights with AVX2: one 8-float register per
 * output (the lanes of rke_internal.h, so the bits equal the scalar file's), several rows and
 * tokens per tile so each loaded weight vector is used more than once. */
#include "rke_avx2_target.h"
RKE_AVX2_BEGIN /* to RKE_AVX2_END: AVX2, FMA and F16C code */
#include "rke_avx2.h"

#if RKE_X86

enum { KIND_F32, KIND_F16, KIND_BF16 };

/* 8 weights from row memory as float32 (exact conversions) */
static inline __m256 load_w8(const int kind, const void *w, int64_t i) {
    if (kind == KIND_F32) return _mm256_loadu_ps((const float *)w + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (kind == KIND_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* Outputs y[t * y_stride + r] for nr rows of w (stride n_cols elements) and nt tokens of x
 * (stride n_cols). Columns past the last multiple of 8 go through zero-padded copies: the
 * padded lanes add 0 * 0 = +0, which leaves an accumulator's bits unchanged.
 *
 * Decode tiles prefetch as the quantized decode tile does (rke_matmul_quant_x86.h): each step
 * of 8 columns asks for the next lines of the region that starts `ahead0` bytes from w, below
 * `limit` (0: no prefetching). The LoRA matrices are small (48 KiB-1 MiB) and come between large
 * ones, so the hardware's prefetcher, which restarts at each 4 KiB page, left one thread at
 * 5-6 GB/s on them. */
static inline __attribute__((always_inline)) void tile(const int kind, const void *w,
                                                       const float *x, float *y,
                                                       int64_t n_cols, int64_t y_stride,
                                                       const int nr, const int nt,
                                                       const int64_t ahead0, const int64_t limit) {
    const int64_t wsize = kind == KIND_F32 ? 4 : 2;
    __m256 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) acc[r][t] = _mm256_setzero_ps();
    }
    const int64_t step = nr * 8 * wsize; /* bytes of w one column step reads */
    int64_t c = 0;
    for (; c + 8 <= n_cols; c += 8) {
        if (limit > 0) { /* a constant 0 (prompts, single rows) removes the loop once inlined */
            const int64_t ahead = ahead0 + c / 8 * step;
#pragma GCC unroll 2
            for (int64_t off = 0; off < step; off += 64) {
                if (ahead + off < limit) _mm_prefetch((const char *)w + ahead + off, _MM_HINT_T0);
            }
        }
        __m256 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            wv[r] = load_w8(kind, (const char *)w + r * n_cols * wsize, c);
        }
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const __m256 xv = _mm256_loadu_ps(x + t * n_cols + c);
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                acc[r][t] = _mm256_add_ps(acc[r][t], _mm256_mul_ps(wv[r], xv));
            }
        }
    }
    const int64_t rem = n_cols - c;
    if (rem) {
        for (int r = 0; r < nr; r++) {
            uint8_t wpad[32] = {0};
            memcpy(wpad, (const char *)w + (r * n_cols + c) * wsize, (size_t)(rem * wsize));
            const __m256 wv = load_w8(kind, wpad, 0);
            for (int t = 0; t < nt; t++) {
                float xpad[8] = {0};
                memcpy(xpad, x + t * n_cols + c, (size_t)rem * sizeof(float));
                acc[r][t] = _mm256_add_ps(acc[r][t], _mm256_mul_ps(wv, _mm256_loadu_ps(xpad)));
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) y[t * y_stride + r] = hsum8(acc[r][t]);
    }
}

#ifndef FLOAT_PREFETCH_DISTANCE
#define FLOAT_PREFETCH_DISTANCE 4096
#endif

/* decode: 4 rows share each activation load. A tile prefetches the region from
 * FLOAT_PREFETCH_DISTANCE bytes past the next tile's start; what comes before the first tile's
 * region is asked for at once, up to 16 KiB (where rows are longer, the rest of it is left to the
 * hardware's prefetcher). Prefetches stay inside [row_begin, row_end). */
static inline __attribute__((always_inline)) void matvec(const int kind, const void *w,
                                                         const float *x, float *y,
                                                         int64_t n_cols, int64_t row_begin,
                                                         int64_t row_end) {
    const int64_t wsize = kind == KIND_F32 ? 4 : 2, row_bytes = n_cols * wsize;
    const char *wb = (const char *)w + row_begin * row_bytes;
    const int64_t bytes = (row_end - row_begin) * row_bytes;
    const int64_t tile_bytes = 4 * row_bytes, first = tile_bytes + FLOAT_PREFETCH_DISTANCE;
    for (int64_t off = 0; off < first && off < bytes && off < 16384; off += 64) {
        _mm_prefetch(wb + off, _MM_HINT_T0);
    }
    int64_t r = row_begin;
    for (; r + 4 <= row_end; r += 4) {
        const int64_t at = (r - row_begin) * row_bytes;
        tile(kind, wb + at, x, y + r, n_cols, 1, 4, 1, first, bytes - at);
    }
    for (; r < row_end; r++) {
        tile(kind, wb + (r - row_begin) * row_bytes, x, y + r, n_cols, 1, 1, 1, 0, 0);
    }
}

/* prompts: 2 rows x 4 tokens per tile; tokens in blocks that stay in cache across the rows */
#define TOKEN_BLOCK 64
static inline __attribute__((always_inline)) void matmul(const int kind, const void *w,
                                                         const float *x, float *y,
                                                         int64_t n_tokens, int64_t n_rows,
                                                         int64_t n_cols, int64_t row_begin,
                                                         int64_t row_end) {
    const int64_t wsize = kind == KIND_F32 ? 4 : 2, row_bytes = n_cols * wsize;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += TOKEN_BLOCK) {
        const int64_t t1 = t0 + TOKEN_BLOCK < n_tokens ? t0 + TOKEN_BLOCK : n_tokens;
        for (int64_t r = row_begin; r < row_end;) {
            const void *wr = (const char *)w + r * row_bytes;
            int64_t t = t0;
            if (r + 2 <= row_end) {
                for (; t + 4 <= t1; t += 4) {
                    tile(kind, wr, x + t * n_cols, y + t * n_rows + r, n_cols, n_rows, 2, 4, 0, 0);
                }
                for (; t < t1; t++) {
                    tile(kind, wr, x + t * n_cols, y + t * n_rows + r, n_cols, n_rows, 2, 1, 0, 0);
                }
                r += 2;
            } else {
                for (; t + 4 <= t1; t += 4) {
                    tile(kind, wr, x + t * n_cols, y + t * n_rows + r, n_cols, n_rows, 1, 4, 0, 0);
                }
                for (; t < t1; t++) {
                    tile(kind, wr, x + t * n_cols, y + t * n_rows + r, n_cols, n_rows, 1, 1, 0, 0);
                }
                r += 1;
            }
        }
    }
}

#define FLOAT_KERNELS(t, kind)                                                                \
    void rke_matvec_##t##_avx2(const void *w, const void *x, float *y, int64_t n_cols,       \
                               int64_t row_begin, int64_t row_end) {                          \
        matvec(kind, w, (const float *)x, y, n_cols, row_begin, row_end);                     \
    }                                                                                         \
    void rke_matmul_##t##_avx2(const void *w, const void *x, float *y, int64_t n_tokens,     \
                               int64_t n_rows, int64_t n_cols, int64_t row_begin,             \
                               int64_t row_end) {                                             \
        matmul(kind, w, (const float *)x, y, n_tokens, n_rows, n_cols, row_begin, row_end);   \
    }

FLOAT_KERNELS(f32, KIND_F32)
FLOAT_KERNELS(f16, KIND_F16)
FLOAT_KERNELS(bf16, KIND_BF16)

#else
typedef int rke_matmul_float_avx2_is_empty_here;
#endif

RKE_AVX2_END
