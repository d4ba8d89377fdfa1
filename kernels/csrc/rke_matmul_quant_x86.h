/* The body of the x86 quantized kernels (y = W x and Y = X W^T against q8x activations), compiled
 * twice: by matmul_quant_avx2.c (RKE_VNNI 0: maddubs and madd make a block's int32 lanes) and by
 * matmul_quant_avxvnni.c (RKE_VNNI 1: one vpdpbusd makes the same integers). Each defines RKE_VNNI and
 * RKE_QUANT_ISA (the name suffix) and turns on its instruction set before including this. Everything
 * past the lanes is shared, so both give the scalar file's bits.
 *
 * How, much as ggml does it: unpack a block to 32 bytes (one AND and one shift for the nibbles, then
 * for iq4_nl one byte shuffle that looks the codes up in its 16-value codebook), multiply-add bytes
 * into int32 lanes, then one float multiply and add per block, the block's fp16 scale looked up in
 * rke_fp16_table. The lanes and their order are those of rke_internal.h. */
#ifndef RKE_MATMUL_QUANT_X86_H
#define RKE_MATMUL_QUANT_X86_H

enum { KIND_Q4_0, KIND_Q4_1, KIND_Q5_0, KIND_Q5_1, KIND_Q8_0, KIND_IQ4_NL };

static inline int64_t block_bytes(const int kind) {
    static const int64_t bytes[] = {18, 20, 22, 24, 34, 18};
    return bytes[kind];
}

/* the weight bytes are signed (q8_0's qs, iq4_nl's codebook values), not unsigned quants */
static inline int is_signed(const int kind) { return kind == KIND_Q8_0 || kind == KIND_IQ4_NL; }

static inline int has_min(const int kind) { return kind == KIND_Q4_1 || kind == KIND_Q5_1; }

/* 16 bytes of nibbles -> 32 bytes in 0..15: element j is the low nibble of byte j and element
 * j + 16 its high nibble, so the shifted copy is simply the upper half */
static inline __m256i unpack_nibbles(const uint8_t *qs) {
    /* the 16 bytes in both halves, the upper half shifted right by 4 (a variable shift, not an
     * insert: the shuffle port is the busy one) */
    const __m256i packed = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    const __m256i both = _mm256_srlv_epi64(packed, _mm256_set_epi64x(4, 4, 0, 0));
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

/* the u32 qh -> 32 bytes, 0x10 where bit j of qh is set */
static inline __m256i unpack_fifth_bits(const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, sizeof bits);
    /* byte j takes qh byte j / 8 ... */
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32((int)bits),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
    /* ... and keeps its bit j % 8 */
    const __m256i select = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

/* A block's 32 weight quants as bytes: unsigned q for the nibble types (q4_0 and q5_0 take
 * their offset through `offset_pairs`), signed qs for q8_0. */
static inline __m256i unpack(const int kind, const uint8_t *blk) {
    switch (kind) {
    case KIND_Q4_0: return unpack_nibbles(blk + 2);
    case KIND_Q4_1: return unpack_nibbles(blk + 4);
    case KIND_Q5_0: return _mm256_or_si256(unpack_nibbles(blk + 6), unpack_fifth_bits(blk + 2));
    case KIND_Q5_1: return _mm256_or_si256(unpack_nibbles(blk + 8), unpack_fifth_bits(blk + 4));
    case KIND_IQ4_NL: {
        /* ggml's kvalues_iq4nl in both 128-bit halves: pshufb looks up within a half */
        const __m256i values = _mm256_broadcastsi128_si256(_mm_setr_epi8(
            -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113));
        return _mm256_shuffle_epi8(values, unpack_nibbles(blk + 2));
    }
    default: return _mm256_loadu_si256((const __m256i *)(blk + 2));
    }
}

#if RKE_VNNI
/* Minus offset * (x[4i] + ... + x[4i+3]) in int32 lane i, the value q4_0's and q5_0's lanes start
 * from, so that one vpdpbusd leaves the lanes of q - 8 or q - 16: one per activation block, shared by
 * all rows of a tile. */
static inline __m256i offset_pairs(const int kind, __m256i x) {
    const __m256i zero = _mm256_setzero_si256();
    if (kind == KIND_Q4_0) {
        return _mm256_sub_epi32(zero, _mm256_dpbusd_avx_epi32(zero, _mm256_set1_epi8(8), x));
    }
    if (kind == KIND_Q5_0) {
        return _mm256_sub_epi32(zero, _mm256_dpbusd_avx_epi32(zero, _mm256_set1_epi8(16), x));
    }
    return zero;
}
#else
/* The int16 pairs offset * (x[2k] + x[2k+1]) that turn q4_0's q and q5_0's q into the signed
 * q - 8 and q - 16: one per activation block, shared by all rows of a tile. */
static inline __m256i offset_pairs(const int kind, __m256i x) {
    if (kind == KIND_Q4_0) return _mm256_maddubs_epi16(_mm256_set1_epi8(8), x);
    if (kind == KIND_Q5_0) return _mm256_maddubs_epi16(_mm256_set1_epi8(16), x);
    return _mm256_setzero_si256();
}
#endif

#if RKE_VNNI
/* int32 lane i = sum over elements 4i..4i+3 of w * x, as float: vpdpbusd adds the four
 * unsigned-by-signed byte products to the lane without saturating, the same exact integers as
 * maddubs and madd make below (q8_0 and iq4_nl take the sign trick, the _0 types start from their
 * offset lanes). */
static inline __m256 lanes(const int kind, __m256i w, __m256i x, __m256i offset) {
    if (is_signed(kind)) {
        return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(
            _mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)));
    }
    return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(offset, w, x));
}
#else
/* int32 lane i = sum over elements 4i..4i+3 of w * x, as float (exact: |lane| < 2^17).
 * maddubs multiplies unsigned by signed bytes: q8_0 and iq4_nl pass |w| and x with w's sign (no
 * int16 pair saturates: |w| <= 128 and |x| <= 127); the nibble types pass q >= 0 as it is, then
 * the _0 types subtract their offset pairs (|pair| <= 2 * 31 * 127, no overflow). */
static inline __m256 lanes(const int kind, __m256i w, __m256i x, __m256i offset) {
    __m256i pairs;
    if (is_signed(kind)) {
        pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    } else if (has_min(kind)) {
        pairs = _mm256_maddubs_epi16(w, x);
    } else {
        pairs = _mm256_sub_epi16(_mm256_maddubs_epi16(w, x), offset);
    }
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
#endif

/* Decode: rows [0, nr) of w against one token. A tile's rows are consecutive, so it reads one
 * region of memory; meanwhile it prefetches, in address order, the region NEXT_TILE_DISTANCE
 * bytes past the start of the next tile (nr * bsize bytes per block step, the pace at which
 * this tile consumes its own; ahead0 and limit are byte offsets from w: where that region
 * starts, and the end of the rows this call may touch, 0 for none). Per-row prefetching a few blocks ahead, as ggml does, left one
 * thread at half the probe's bandwidth on 2048-column rows: the rows are short, so most of
 * those prefetches hit lines already on their way, and the next tile's lines were never asked
 * for early. Each row's block is finished before the next row's is unpacked: fewer live
 * registers than the prompt tile (no spills). */
#ifndef NEXT_TILE_DISTANCE
#define NEXT_TILE_DISTANCE 2048
#endif
static inline __attribute__((always_inline)) void decode_tile(const int kind, const uint8_t *w,
                                                              const rke_block_q8x *x, float *y,
                                                              int64_t nb, int64_t row_bytes,
                                                              const int nr, const int64_t ahead0,
                                                              const int64_t limit) {
    const int64_t bsize = block_bytes(kind), step = nr * bsize;
    __m256 acc[4];
    float accm[4];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
        acc[r] = _mm256_setzero_ps();
        accm[r] = 0.0f;
    }
    for (int64_t b = 0; b < nb; b++) {
        /* offsets from w, so no pointer is formed past the chunk; a step (<= 4 * 34 bytes) may
         * touch a fourth line, which the next step's first prefetch covers */
        const int64_t ahead = ahead0 + b * step;
        if (ahead < limit) _mm_prefetch((const char *)(w + ahead), _MM_HINT_T0);
        if (ahead + 64 < limit) _mm_prefetch((const char *)(w + ahead + 64), _MM_HINT_T0);
        if (step > 128 && ahead + 128 < limit) {
            _mm_prefetch((const char *)(w + ahead + 128), _MM_HINT_T0);
        }
        const rke_block_q8x *xb = x + b;
        const __m256i xv = _mm256_loadu_si256((const __m256i *)xb->qs);
        const __m256i offset = offset_pairs(kind, xv);
        const __m256 dx = _mm256_set1_ps(xb->d);
        const float sdx = xb->d * (float)xb->s;
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const uint8_t *blk = w + r * row_bytes + b * bsize;
            const __m256 dw = _mm256_broadcast_ss(fp16_at(blk));
            const __m256 term = _mm256_mul_ps(lanes(kind, unpack(kind, blk), xv, offset),
                                              _mm256_mul_ps(dw, dx));
            acc[r] = _mm256_add_ps(acc[r], term);
            if (has_min(kind)) accm[r] = accm[r] + *fp16_at(blk + 2) * sdx;
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
        y[r] = has_min(kind) ? hsum8(acc[r]) + accm[r] : hsum8(acc[r]);
    }
}

/* decode: 4 rows share each activation block; prefetches stay inside [row_begin, row_end) */
static inline __attribute__((always_inline)) void matvec(const int kind, const void *w,
                                                         const rke_block_q8x *x, float *y,
                                                         int64_t n_cols, int64_t row_begin,
                                                         int64_t row_end) {
    const int64_t nb = n_cols / QK, row_bytes = nb * block_bytes(kind);
    const uint8_t *wb = (const uint8_t *)w;
    int64_t r = row_begin;
    for (; r + 4 <= row_end; r += 4) {
        decode_tile(kind, wb + r * row_bytes, x, y + r, nb, row_bytes, 4,
                    4 * row_bytes + NEXT_TILE_DISTANCE, (row_end - r) * row_bytes);
    }
    for (; r < row_end; r++) decode_tile(kind, wb + r * row_bytes, x, y + r, nb, row_bytes, 1, 0, 0);
}

/* lane k of s (k in 0..3) in all eight lanes; s holds the same four values in both halves */
static inline __m256 splat(__m256 s, const int k) {
    switch (k) {
    case 0: return _mm256_permute_ps(s, 0x00);
    case 1: return _mm256_permute_ps(s, 0x55);
    case 2: return _mm256_permute_ps(s, 0xAA);
    default: return _mm256_permute_ps(s, 0xFF);
    }
}

/* Prompts: outputs y[t * y_stride + r] for nr rows and 4 tokens. dx4[4 b + t] is token t's
 * activation scale for block b, so one multiply gives a row's four scales dw * dx, and a shuffle
 * (on the port the integer work leaves idle) hands each product its own: the same products as
 * the decode tile's, bit for bit, with a quarter of the multiplies. */
static inline __attribute__((always_inline)) void tile4(const int kind, const uint8_t *w,
                                                        const rke_block_q8x *x,
                                                        const float *dx4, float *y, int64_t nb,
                                                        int64_t row_bytes, int64_t y_stride,
                                                        const int nr) {
    const int64_t bsize = block_bytes(kind);
    __m256 acc[2][4];
    float accm[2][4];
#pragma GCC unroll 2
    for (int r = 0; r < nr; r++) {
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) {
            acc[r][t] = _mm256_setzero_ps();
            accm[r][t] = 0.0f;
        }
    }
    for (int64_t b = 0; b < nb; b++) {
        __m256i wq[2];
        __m256 scales[2];
        float mw[2];
        const __m256 dx = _mm256_broadcast_ps((const __m128 *)(dx4 + 4 * b));
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) {
            const uint8_t *blk = w + r * row_bytes + b * bsize;
            wq[r] = unpack(kind, blk);
            scales[r] = _mm256_mul_ps(_mm256_broadcast_ss(fp16_at(blk)), dx);
            if (has_min(kind)) mw[r] = *fp16_at(blk + 2);
        }
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) {
            const rke_block_q8x *xb = x + t * nb + b;
            const __m256i xv = _mm256_loadu_si256((const __m256i *)xb->qs);
            const __m256i offset = offset_pairs(kind, xv);
#pragma GCC unroll 2
            for (int r = 0; r < nr; r++) {
                const __m256 term = _mm256_mul_ps(lanes(kind, wq[r], xv, offset),
                                                  splat(scales[r], t));
                acc[r][t] = _mm256_add_ps(acc[r][t], term);
                if (has_min(kind)) accm[r][t] = accm[r][t] + mw[r] * (xb->d * (float)xb->s);
            }
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < nr; r++) {
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) {
            y[t * y_stride + r] = has_min(kind) ? hsum8(acc[r][t]) + accm[r][t] : hsum8(acc[r][t]);
        }
    }
}

/* Prompts: tokens in groups of 4, each group against all rows of [row_begin, row_end) (a
 * pool chunk, small enough to stay in L2 across the groups), 2 rows per tile; leftover tokens
 * take the decode tile. The group's scales go to the stack first: up to MAX_GROUP_BLOCKS
 * blocks (16384 columns), beyond which the tile goes without the shared scales. */
#define MAX_GROUP_BLOCKS 512
static inline __attribute__((always_inline)) void matmul(const int kind, const void *w,
                                                         const rke_block_q8x *x, float *y,
                                                         int64_t n_tokens, int64_t n_rows,
                                                         int64_t n_cols, int64_t row_begin,
                                                         int64_t row_end) {
    const int64_t nb = n_cols / QK, row_bytes = nb * block_bytes(kind);
    const uint8_t *wb = (const uint8_t *)w;
    float dx4[4 * MAX_GROUP_BLOCKS];
    int64_t t = 0;
    for (; nb <= MAX_GROUP_BLOCKS && t + 4 <= n_tokens; t += 4) {
        for (int64_t b = 0; b < nb; b++) {
            for (int k = 0; k < 4; k++) dx4[4 * b + k] = x[(t + k) * nb + b].d;
        }
        int64_t r = row_begin;
        for (; r + 2 <= row_end; r += 2) {
            tile4(kind, wb + r * row_bytes, x + t * nb, dx4, y + t * n_rows + r, nb, row_bytes,
                  n_rows, 2);
        }
        if (r < row_end) {
            tile4(kind, wb + r * row_bytes, x + t * nb, dx4, y + t * n_rows + r, nb, row_bytes,
                  n_rows, 1);
        }
    }
    for (; t < n_tokens; t++) {
        float *yt = y + t * n_rows;
        int64_t r = row_begin;
        for (; r + 4 <= row_end; r += 4) {
            decode_tile(kind, wb + r * row_bytes, x + t * nb, yt + r, nb, row_bytes, 4, 0, 0);
        }
        for (; r < row_end; r++) {
            decode_tile(kind, wb + r * row_bytes, x + t * nb, yt + r, nb, row_bytes, 1, 0, 0);
        }
    }
}

#define RKE_QUANT_NAME3(op, t, isa) rke_##op##_##t##_##isa
#define RKE_QUANT_NAME(op, t, isa) RKE_QUANT_NAME3(op, t, isa)
#define QUANT_KERNELS(t, kind)                                                                \
    void RKE_QUANT_NAME(matvec, t, RKE_QUANT_ISA)(const void *w, const void *x, float *y,    \
                                                  int64_t n_cols, int64_t row_begin,          \
                                                  int64_t row_end) {                          \
        matvec(kind, w, (const rke_block_q8x *)x, y, n_cols, row_begin, row_end);             \
    }                                                                                         \
    void RKE_QUANT_NAME(matmul, t, RKE_QUANT_ISA)(const void *w, const void *x, float *y,    \
                                                  int64_t n_tokens, int64_t n_rows,           \
                                                  int64_t n_cols, int64_t row_begin,          \
                                                  int64_t row_end) {                          \
        matmul(kind, w, (const rke_block_q8x *)x, y, n_tokens, n_rows, n_cols, row_begin,     \
               row_end);                                                                      \
    }

QUANT_KERNELS(q4_0, KIND_Q4_0)
QUANT_KERNELS(q4_1, KIND_Q4_1)
QUANT_KERNELS(q5_0, KIND_Q5_0)
QUANT_KERNELS(q5_1, KIND_Q5_1)
QUANT_KERNELS(q8_0, KIND_Q8_0)
QUANT_KERNELS(iq4_nl, KIND_IQ4_NL)

#endif
