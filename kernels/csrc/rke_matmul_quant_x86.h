/* The body of the x86 quantized kernels (y = W x and Y = X W^T against q8x activations), compiled
 * twice: by matmul_quant_avx2.c (RKE_VNNI 0: maddubs and madd make the integer sums) and by
 * matmul_quant_avxvnni.c (RKE_VNNI 1: vpdpbusd makes them). Each defines RKE_VNNI and
 * RKE_QUANT_ISA (the name suffix) and turns on its instruction set before including this. A
 * block's integer sum is exact however it is formed, so both give the scalar file's bits.
 *
 * Prompts (8 or more tokens) put 8 tokens in the lanes of a register: the activations come as
 * rke_block_q8x8 (rke_internal.h), 4 bytes of each token side by side, and one broadcast of 4
 * weight bytes multiplies all 8 tokens at once, so a block ends with one int32 sum per token in
 * its lane and one float multiply and add for 8 outputs (llama.cpp gets the same effect by
 * repacking the weights at load; this keeps the file's layout). Decode computes 8 rows' lanes
 * against one token and folds them into a register of 8 rows with three horizontal adds (int16
 * ones and a widening madd for the 4-bit types without VNNI). */
#ifndef RKE_MATMUL_QUANT_X86_H
#define RKE_MATMUL_QUANT_X86_H

enum { KIND_Q4_0, KIND_Q4_1, KIND_Q5_0, KIND_Q5_1, KIND_Q8_0, KIND_IQ4_NL };

static inline int64_t block_bytes(const int kind) {
    static const int64_t bytes[] = {18, 20, 22, 24, 34, 18};
    return bytes[kind];
}

/* the weight quants are signed (q8_0's qs, iq4_nl's codebook values), not unsigned q */
static inline int is_signed(const int kind) { return kind == KIND_Q8_0 || kind == KIND_IQ4_NL; }

static inline int has_min(const int kind) { return kind == KIND_Q4_1 || kind == KIND_Q5_1; }

/* log2 of what unpack_unsigned's bytes exceed the spec's wq by: wq = u - (1 << shift) */
static inline int offset_shift(const int kind) {
    switch (kind) {
    case KIND_Q4_0: return 3;
    case KIND_Q5_0: return 4;
    case KIND_Q8_0:
    case KIND_IQ4_NL: return 7;
    default: return -1; /* no offset */
    }
}

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

/* ggml's kvalues_iq4nl plus `bias`, in both 128-bit halves (pshufb looks up within a half) */
static inline __m256i iq4_nl_values(const int bias) {
    return _mm256_add_epi8(_mm256_broadcastsi128_si256(_mm_setr_epi8(
                               -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69,
                               89, 113)),
                           _mm256_set1_epi8((char)bias));
}

/* A block's 32 weight quants as unsigned bytes u = wq + (1 << offset_shift): q for the nibble
 * types, qs + 128 for q8_0, the codebook value + 128 for iq4_nl (all below 256). */
static inline __m256i unpack_unsigned(const int kind, const uint8_t *blk) {
    switch (kind) {
    case KIND_Q4_0: return unpack_nibbles(blk + 2);
    case KIND_Q4_1: return unpack_nibbles(blk + 4);
    case KIND_Q5_0: return _mm256_or_si256(unpack_nibbles(blk + 6), unpack_fifth_bits(blk + 2));
    case KIND_Q5_1: return _mm256_or_si256(unpack_nibbles(blk + 8), unpack_fifth_bits(blk + 4));
    case KIND_IQ4_NL: return _mm256_shuffle_epi8(iq4_nl_values(128), unpack_nibbles(blk + 2));
    default:
        return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(blk + 2)),
                                _mm256_set1_epi8((char)0x80));
    }
}

/* The signed quants of q8_0 and iq4_nl (maddubs without VNNI: u * x pairs could saturate). */
static inline __m256i unpack_signed(const int kind, const uint8_t *blk) {
    if (kind == KIND_IQ4_NL) return _mm256_shuffle_epi8(iq4_nl_values(0), unpack_nibbles(blk + 2));
    return _mm256_loadu_si256((const __m256i *)(blk + 2));
}

/* The quants as the products take them: unsigned everywhere but the signed types without VNNI. */
static inline __m256i unpack(const int kind, const uint8_t *blk) {
    return (!RKE_VNNI && is_signed(kind)) ? unpack_signed(kind, blk) : unpack_unsigned(kind, blk);
}

/* int32 lane i = sum over elements 4i..4i+3 of the unpacked quants times x: u * x, or w * x for
 * the signed types without VNNI (w's sign moved onto x: no int16 pair saturates, |w| <= 128 and
 * |x| <= 127; unsigned pairs stay below 2 * 31 * 127). */
static inline __m256i lanes(const int kind, __m256i q, __m256i x) {
#if RKE_VNNI
    (void)kind;
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), q, x);
#else
    const __m256i pairs = is_signed(kind)
                              ? _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q))
                              : _mm256_maddubs_epi16(q, x);
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
#endif
}

/* the products take u = wq + (1 << offset_shift): all but the signed types without VNNI
 * (which take wq itself) and the types with a minimum (whose q is the spec's) */
static inline int has_offset(const int kind) {
    return !(!RKE_VNNI && is_signed(kind)) && offset_shift(kind) >= 0;
}

/* what the unsigned quants' sum exceeds the spec's by: (1 << offset_shift) * s */
static inline int32_t offset_of(const int kind, int32_t s) {
    return has_offset(kind) ? (int32_t)((uint32_t)s << offset_shift(kind)) : 0;
}

static inline int32_t hsum_epi32(__m256i v) {
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 1));
    return _mm_cvtsi128_si32(t);
}

/* One row against one token (rows past the last 8-row tile). */
static inline float decode_row(const int kind, const uint8_t *w, const rke_block_q8x *x,
                               int64_t nb) {
    const int64_t bsize = block_bytes(kind);
    float acc = 0.0f, accm = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * bsize;
        const __m256i xv = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const int32_t isum = hsum_epi32(lanes(kind, unpack(kind, blk), xv)) - offset_of(kind, x[b].s);
        acc = acc + (float)isum * (*fp16_at(blk) * x[b].d);
        if (has_min(kind)) accm = accm + *fp16_at(blk + 2) * (x[b].d * (float)x[b].s);
    }
    return has_min(kind) ? acc + accm : acc;
}

/* Whether the AVX2 decode tile folds 4-bit rows' lanes as int16 (pair_lanes then returns the int16
 * pair sums): a lane holds 4 products of at most 15 * 127 = 1905 in magnitude, and the fold's first
 * two levels add 4 lanes, 16 products, at most 30480: still an int16; the last level widens to int32
 * (madd with ones). One madd a tile step instead of four, the same integers. 5-bit quants would
 * overflow (16 * 31 * 127). */
static inline int words16(const int kind) {
    return !RKE_VNNI && (kind == KIND_Q4_0 || kind == KIND_Q4_1);
}

/* Two rows' int32 lanes in one register, [row a: 4 lanes | row b: 4 lanes], each lane the sum of
 * 8 products: elements 4i..4i+3 and 16+4i..16+4i+3 (where words16: int16 words, [row a: 8 | row b:
 * 8], each the sum of 4 products, elements 2i, 2i+1, 16+2i, 16+2i+1). xlo and xhi hold the token's elements 0..15
 * and 16..31 in both halves. The nibble types and q8_0 load their halves straight into place (a
 * row's first 16 elements are its low nibbles or its first 16 bytes); the 5-bit types unpack
 * each row whole and swap halves. */
static inline __m256i pair_lanes(const int kind, const uint8_t *a, const uint8_t *b, __m256i xlo,
                                 __m256i xhi) {
    __m256i lo, hi;
    if (kind == KIND_Q5_0 || kind == KIND_Q5_1) {
        const __m256i ua = unpack(kind, a), ub = unpack(kind, b);
        lo = _mm256_permute2x128_si256(ua, ub, 0x20);
        hi = _mm256_permute2x128_si256(ua, ub, 0x31);
    } else if (kind == KIND_Q8_0) {
        lo = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(a + 2))),
                                     _mm_loadu_si128((const __m128i *)(b + 2)), 1);
        hi = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(a + 18))),
                                     _mm_loadu_si128((const __m128i *)(b + 18)), 1);
        if (RKE_VNNI) {
            lo = _mm256_xor_si256(lo, _mm256_set1_epi8((char)0x80));
            hi = _mm256_xor_si256(hi, _mm256_set1_epi8((char)0x80));
        }
    } else {
        const int64_t at = kind == KIND_Q4_1 ? 4 : 2;
        const __m256i v = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(a + at))),
            _mm_loadu_si128((const __m128i *)(b + at)), 1);
        lo = _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
        hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
        if (kind == KIND_IQ4_NL) {
            const __m256i values = iq4_nl_values(RKE_VNNI ? 128 : 0);
            lo = _mm256_shuffle_epi8(values, lo);
            hi = _mm256_shuffle_epi8(values, hi);
        }
    }
#if RKE_VNNI
    return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), lo, xlo), hi, xhi);
#else
    if (is_signed(kind)) {
        return _mm256_add_epi32(lanes(kind, lo, xlo), lanes(kind, hi, xhi));
    }
    /* unsigned pairs: two products of at most 31 * 127 each, twice: still an int16 */
    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi));
    return words16(kind) ? pairs : _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
#endif
}

/* The fp16 values at a, b, c, d as float32 in lanes 0..3: broadcast loads and blends, which
 * leave the shuffle port (busy with the lanes' folding) alone. */
static inline __m128 gather4(const uint8_t *a, const uint8_t *b, const uint8_t *c,
                             const uint8_t *d) {
    __m128 va = _mm_broadcast_ss(fp16_at(a)), vb = _mm_broadcast_ss(fp16_at(b));
    __m128 vc = _mm_broadcast_ss(fp16_at(c)), vd = _mm_broadcast_ss(fp16_at(d));
    /* opaque to gcc, which would otherwise fold a broadcast and a blend into an insertps */
    __asm__("" : "+x"(va), "+x"(vb), "+x"(vc), "+x"(vd));
    return _mm_blend_ps(_mm_blend_ps(va, vb, 0x2), _mm_blend_ps(vc, vd, 0x8), 0xC);
}

/* The fp16 values `at` bytes into 8 rows' blocks, in the decode tile's row order [r0 r1 r4 r5 | r2 r3 r6 r7] */
static inline __m256 gather8(const uint8_t *const blk[8], const int at) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(gather4(blk[0] + at, blk[1] + at, blk[4] + at, blk[5] + at)),
                                gather4(blk[2] + at, blk[3] + at, blk[6] + at, blk[7] + at), 1);
}

/* Decode: 8 consecutive rows against one token. Pairs of rows share a register of lanes
 * (pair_lanes); three hadds (int16 ones and a madd where words16) fold the 8 rows' lanes into one
 * register as [r0 r1 r4 r5 | r2 r3 r6 r7],
 * the scales are gathered in that order, and one permute at the end puts the rows in place. The
 * per-block costs that do not depend on the rows (the token's loads and offset, the fold's last hadd,
 * the loop) are shared by 8 rows: a 4-row tile did a third more instructions a row-block (one thread in
 * cache: Q4_0 -15-17 %, Q8_0 -9-11 % row-blocks/s), which matters because a thread has only about
 * twice the instruction throughput its share of the memory needs: Q4_0 decode is bound by them as
 * much as by memory.
 *
 * Prefetching, one of two ways by the size of a tile (PF_NEXT_TILE or PF_IN_ROW, a constant once
 * inlined). Short rows (a tile of at most IN_ROW_MIN_TILE bytes): each step prefetches, in address
 * order, the region NEXT_TILE_DISTANCE bytes past the start of the next tile, 8 * bsize bytes per step,
 * the pace at which this tile consumes its own (ahead0 and limit are byte offsets from w: where that
 * region starts, and the end of the rows this call may touch). Per-row prefetching a few blocks ahead,
 * as ggml does, left one thread at half the probe's bandwidth on 2048-column rows: the rows are short,
 * so most of those prefetches hit lines already on their way, and the next tile's lines were never
 * asked for early. Long rows (ChannelMix's value matrix, 8192 columns: a 36 KiB Q4_0 tile): this tile
 * and the next (72 KiB) no longer fit in the 48 KiB L1, and the region scheme ran 1.2-1.4x as long as a
 * plain read; instead every in_row_period(kind) steps (the most that stay within a 64-byte line, so no
 * line is skipped) prefetches each row ROW_LEAD blocks ahead, and near a row's end the same place in the next
 * tile's row (7 rows further on), if the next tile is below limit. 0.84-0.94x the time
 * of the region scheme on 8192 columns, in a harness alternating the two over an 800 MB matrix; on
 * 2048 columns the region scheme stays 10-18 % faster. */
#ifndef NEXT_TILE_DISTANCE
#define NEXT_TILE_DISTANCE 2048
#endif
#define ROW_LEAD 32
#define IN_ROW_MIN_TILE 24576
/* a tile over IN_ROW_MIN_TILE has rows of more than ROW_LEAD blocks of any type (34 bytes at most), so
 * the in-row prefetches and those into the next tile's rows land in the row they aim at */
_Static_assert(8 * ROW_LEAD * 34 < IN_ROW_MIN_TILE, "ROW_LEAD too long for IN_ROW_MIN_TILE");
enum { PF_NEXT_TILE, PF_IN_ROW };
static inline int in_row_period(const int kind) {
    return 64 / (int)block_bytes(kind); /* Q4_0 3, Q5_0 2, Q8_0 1 (no block is over 64 bytes) */
}
static inline __attribute__((always_inline)) void decode_tile(const int kind, const int pf,
                                                              const uint8_t *w,
                                                              const rke_block_q8x *x, float *y,
                                                              int64_t nb, int64_t row_bytes,
                                                              const int64_t ahead0,
                                                              const int64_t limit) {
    const int64_t bsize = block_bytes(kind), step = 8 * bsize;
    /* the region scheme's prefetches need no bounds check while the whole region is below limit */
    const int all_in = ahead0 + nb * step <= limit, has_next = limit >= 16 * row_bytes;
    const int64_t in_row = ROW_LEAD * bsize, next_row = ROW_LEAD * bsize + 7 * row_bytes;
    int countdown = 1;
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk[8];
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++) blk[r] = w + r * row_bytes + b * bsize;
        if (pf == PF_IN_ROW) {
            if (--countdown == 0) {
                countdown = in_row_period(kind);
                if (b + ROW_LEAD < nb) {
#pragma GCC unroll 8
                    for (int r = 0; r < 8; r++) _mm_prefetch((const char *)(blk[r] + in_row), _MM_HINT_T0);
                } else if (has_next) {
#pragma GCC unroll 8
                    for (int r = 0; r < 8; r++) _mm_prefetch((const char *)(blk[r] + next_row), _MM_HINT_T0);
                }
            }
        } else {
            /* offsets from w, so no pointer is formed past the chunk; a step's last line may be
             * only partly prefetched, and the next step's first prefetch covers the rest */
            const int64_t ahead = ahead0 + b * step;
            if (all_in) {
#pragma GCC unroll 8
                for (int64_t off = 0; off < step; off += 64) _mm_prefetch((const char *)(w + ahead + off), _MM_HINT_T0);
            } else {
#pragma GCC unroll 8
                for (int64_t off = 0; off < step; off += 64) {
                    if (ahead + off < limit) _mm_prefetch((const char *)(w + ahead + off), _MM_HINT_T0);
                }
            }
        }
        const rke_block_q8x *xb = x + b;
        const __m256i xlo = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)xb->qs));
        const __m256i xhi = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(xb->qs + 16)));
        /* lanes of [r0 | r2], [r1 | r3] -> [r0 01 23, r1 01 23 | r2 .., r3 ..]; the same for r4..r7; then
         * [r0, r1, r4, r5 | r2, r3, r6, r7] */
        const __m256i p02 = pair_lanes(kind, blk[0], blk[2], xlo, xhi), p13 = pair_lanes(kind, blk[1], blk[3], xlo, xhi);
        const __m256i p46 = pair_lanes(kind, blk[4], blk[6], xlo, xhi), p57 = pair_lanes(kind, blk[5], blk[7], xlo, xhi);
        /* where words16, the same folds on int16 words, then a widening pair sum */
        __m256i isum = words16(kind)
                           ? _mm256_madd_epi16(_mm256_hadd_epi16(_mm256_hadd_epi16(p02, p13), _mm256_hadd_epi16(p46, p57)),
                                               _mm256_set1_epi16(1))
                           : _mm256_hadd_epi32(_mm256_hadd_epi32(p02, p13), _mm256_hadd_epi32(p46, p57));
        if (has_offset(kind)) {
            const __m256i s = _mm256_castps_si256(_mm256_broadcast_ss((const float *)&xb->s));
            isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(s, offset_shift(kind)));
        }
        const __m256 dw = gather8(blk, 0);
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_broadcast_ss(&xb->d))));
        if (has_min(kind)) {
            const __m256 mw = gather8(blk, 2);
            accm = _mm256_add_ps(accm, _mm256_mul_ps(mw, _mm256_set1_ps(xb->d * (float)xb->s)));
        }
    }
    const __m256 sum = has_min(kind) ? _mm256_add_ps(acc, accm) : acc;
    /* 64-bit lanes (r0 r1), (r4 r5), (r2 r3), (r6 r7) -> rows in order */
    _mm256_storeu_ps(y, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(sum), 0xD8)));
}

/* decode: 8 rows share each activation block. What comes before the first tile's prefetches is asked
 * for at once (the region scheme: up to 16 KiB; in-row: each row's first ROW_LEAD blocks); prefetches
 * stay inside [row_begin, row_end). */
static inline __attribute__((always_inline)) void matvec(const int kind, const void *w,
                                                         const rke_block_q8x *x, float *y,
                                                         int64_t n_cols, int64_t row_begin,
                                                         int64_t row_end) {
    const int64_t nb = n_cols / QK, row_bytes = nb * block_bytes(kind);
    const uint8_t *wb = (const uint8_t *)w + row_begin * row_bytes;
    int64_t r = row_begin;
    /* two loops, so that each inlined decode_tile is compiled for its prefetch scheme alone */
    if (8 * row_bytes > IN_ROW_MIN_TILE) {
        if (row_end - row_begin >= 8) {
            for (int q = 0; q < 8; q++) {
                for (int64_t off = 0; off < ROW_LEAD * block_bytes(kind); off += 64) {
                    _mm_prefetch((const char *)(wb + q * row_bytes + off), _MM_HINT_T0);
                }
            }
        }
        for (; r + 8 <= row_end; r += 8) {
            decode_tile(kind, PF_IN_ROW, (const uint8_t *)w + r * row_bytes, x, y + r, nb, row_bytes, 0,
                        (row_end - r) * row_bytes);
        }
    } else {
        const int64_t first = 8 * row_bytes + NEXT_TILE_DISTANCE, bytes = (row_end - row_begin) * row_bytes;
        for (int64_t off = 0; off < first && off < bytes && off < 16384; off += 64) {
            _mm_prefetch((const char *)(wb + off), _MM_HINT_T0);
        }
        for (; r + 8 <= row_end; r += 8) {
            decode_tile(kind, PF_NEXT_TILE, (const uint8_t *)w + r * row_bytes, x, y + r, nb, row_bytes,
                        8 * row_bytes + NEXT_TILE_DISTANCE, (row_end - r) * row_bytes);
        }
    }
    for (; r < row_end; r++) y[r] = decode_row(kind, (const uint8_t *)w + r * row_bytes, x, nb);
}

/* vpdpbusd where it exists (the call sits in branches a non-VNNI build never takes) */
static inline __m256i dpbusd(__m256i sum, __m256i u, __m256i x) {
#if RKE_VNNI
    return _mm256_dpbusd_avx_epi32(sum, u, x);
#else
    (void)u, (void)x;
    return sum;
#endif
}

/* row r's quants 4g..4g+3 (of the stacked rows at q_mem) in every 32-bit lane: one load */
static inline __m256i broadcast_quants(const uint8_t *q_mem, const int r, const int g) {
    int32_t q4;
    memcpy(&q4, q_mem + 32 * r + 4 * g, 4);
    return _mm256_set1_epi32(q4);
}

/* elements 4g..4g+3 of the 8 tokens of each of ng groups' block */
static inline void load_columns(const rke_block_q8x8 *const xb[2], const int g, const int ng,
                                __m256i xv[2]) {
#pragma GCC unroll 2
    for (int k = 0; k < ng; k++) {
        xv[k] = _mm256_loadu_si256((const __m256i *)xb[k]->qs[g]);
        /* one load for both rows: gcc would fold it into each row's vpdpbusd, two loads, and
         * the load ports are what a block step waits for */
        __asm__("" : "+x"(xv[k]));
    }
}

/* Prompts: nr rows (1 or 2) against ng groups of 8 tokens (1 or 2; group k's blocks at
 * xg + k * nb), lane j of acc[r][k] being token 8k + j's output for row r, written to
 * y[(8k + j) * y_stride + r]. Per block, each row's quants go to the stack once and come back as
 * 8 broadcasts of 4 bytes (loads, not shuffles), each multiplied with the 4 bytes of the same
 * columns of every token: 2 rows x 16 tokens of products per 16 broadcasts. */
static inline __attribute__((always_inline)) void group_tile(const int kind, const uint8_t *w,
                                                             const rke_block_q8x8 *xg, float *y,
                                                             int64_t nb, int64_t row_bytes,
                                                             int64_t y_stride, const int nr,
                                                             const int ng) {
    const int64_t bsize = block_bytes(kind);
    /* The float sums, [acc, accm][r][k], stay on the stack: added to once per block, they leave
     * the 16 registers to the integer sums and the activations, which are then loaded once for
     * both rows, not once per row (+0-15 % on 2048-8192-column matrices). The pointer is
     * laundered like q_mem's below, or gcc would move the sums back into registers. */
    _Alignas(32) float acc_buf[2][2][2][8];
    float *acc_mem = &acc_buf[0][0][0][0];
    __asm__("" : "+r"(acc_mem));
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) _mm256_store_ps(acc_mem + 8 * i, _mm256_setzero_ps());
    /* rows 0, 1: the quants as the products take them; rows 2, 3: for the signed types without
     * VNNI, their absolute values (one abs per block instead of one per broadcast) */
    _Alignas(32) uint8_t q[4][32];
    /* the broadcasts read q through a pointer the compiler cannot follow: seeing the stored
     * register, gcc would otherwise make each broadcast two shuffles on the busiest port */
    const uint8_t *q_mem = &q[0][0];
    __asm__("" : "+r"(q_mem));
    for (int64_t b = 0; b < nb; b++) {
        /* the second group's block only when there is one: no pointer past the scratch */
        const rke_block_q8x8 *xb[2] = {xg + b, ng > 1 ? xg + nb + b : xg + b};
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) {
            const __m256i v = unpack(kind, w + r * row_bytes + b * bsize);
            _mm256_store_si256((__m256i *)q[r], v);
            if (!RKE_VNNI && is_signed(kind)) _mm256_store_si256((__m256i *)q[2 + r], _mm256_sign_epi8(v, v));
        }
        __m256i isum[2][2];
#pragma GCC unroll 2
        for (int k = 0; k < ng; k++) {
            const __m256i start =
                has_offset(kind) ? _mm256_sub_epi32(_mm256_setzero_si256(),
                                          _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)xb[k]->s),
                                                            offset_shift(kind)))
                       : _mm256_setzero_si256();
#pragma GCC unroll 2
            for (int r = 0; r < nr; r++) isum[r][k] = start;
        }
        /* VNNI: odd groups into a second sum, two chains of 4 (vpdpbusd's latency is 5) instead of
         * one of 8. Without VNNI, unsigned pair sums gather in int16 (below 2^15 over 8 groups of
         * 4-bit quants, 4 of 5-bit) before one madd. */
        __m256i odd[2][2], pairs[2][2];
        const int groups_per_madd = (kind == KIND_Q5_0 || kind == KIND_Q5_1) ? 4 : 8;
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) {
#pragma GCC unroll 2
            for (int k = 0; k < ng; k++) odd[r][k] = pairs[r][k] = _mm256_setzero_si256();
        }
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            __m256i xv[2];
            load_columns(xb, g, ng, xv);
#pragma GCC unroll 2
            for (int r = 0; r < nr; r++) {
                const __m256i wv = broadcast_quants(q_mem, r, g);
#pragma GCC unroll 2
                for (int k = 0; k < ng; k++) {
                    if (RKE_VNNI) {
                        __m256i *sum = g % 2 ? &odd[r][k] : &isum[r][k];
                        *sum = dpbusd(*sum, wv, xv[k]);
                    } else if (is_signed(kind)) {
                        const __m256i aw = broadcast_quants(q_mem, 2 + r, g);
                        const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv[k], wv));
                        isum[r][k] = _mm256_add_epi32(isum[r][k], _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
                        /* kept in order: gcc reassociates the adds into a tree and spills */
                        __asm__("" : "+x"(isum[r][k]));
                    } else {
                        pairs[r][k] = _mm256_add_epi16(pairs[r][k], _mm256_maddubs_epi16(wv, xv[k]));
                        __asm__("" : "+x"(pairs[r][k])); /* as above */
                        if ((g + 1) % groups_per_madd == 0) {
                            isum[r][k] = _mm256_add_epi32(isum[r][k],
                                                          _mm256_madd_epi16(pairs[r][k], _mm256_set1_epi16(1)));
                            pairs[r][k] = _mm256_setzero_si256();
                        }
                    }
                }
            }
        }
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) {
#pragma GCC unroll 2
            for (int k = 0; k < ng; k++) isum[r][k] = _mm256_add_epi32(isum[r][k], odd[r][k]);
        }
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) {
            const uint8_t *blk = w + r * row_bytes + b * bsize;
            const __m256 dw = _mm256_broadcast_ss(fp16_at(blk));
#pragma GCC unroll 2
            for (int k = 0; k < ng; k++) {
                const __m256 dx = _mm256_loadu_ps(xb[k]->d);
                const __m256 scale = _mm256_mul_ps(dw, dx);
                float *acc = acc_mem + 8 * (2 * r + k), *accm = acc + 32;
                const __m256 term = _mm256_mul_ps(_mm256_cvtepi32_ps(isum[r][k]), scale);
                _mm256_store_ps(acc, _mm256_add_ps(_mm256_load_ps(acc), term));
                if (has_min(kind)) {
                    const __m256 sdx = _mm256_mul_ps(dx, _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)xb[k]->s)));
                    const __m256 mterm = _mm256_mul_ps(_mm256_broadcast_ss(fp16_at(blk + 2)), sdx);
                    _mm256_store_ps(accm, _mm256_add_ps(_mm256_load_ps(accm), mterm));
                }
            }
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < nr; r++) {
#pragma GCC unroll 2
        for (int k = 0; k < ng; k++) {
            float *acc = acc_mem + 8 * (2 * r + k);
            if (has_min(kind)) {
                _mm256_store_ps(acc, _mm256_add_ps(_mm256_load_ps(acc), _mm256_load_ps(acc + 32)));
            }
            for (int j = 0; j < 8; j++) y[(8 * k + j) * y_stride + r] = acc[j];
        }
    }
}

/* Prompts: pairs of token groups (16 tokens) against all rows of [row_begin, row_end) (a pool
 * chunk, small enough to stay in L2 across the groups), 2 rows per tile; a last single group
 * takes the same tile with one group, tokens past the last group are decoded (matvec). */
static inline __attribute__((always_inline)) void matmul(const int kind, const void *w,
                                                         const rke_block_q8x *x, float *y,
                                                         int64_t n_tokens, int64_t n_rows,
                                                         int64_t n_cols, int64_t row_begin,
                                                         int64_t row_end) {
    const int64_t nb = n_cols / QK, row_bytes = nb * block_bytes(kind);
    const int64_t grouped = rke_grouped_tokens(n_tokens);
    const uint8_t *wb = (const uint8_t *)w;
    for (int64_t t = 0; t < grouped; t += 16) {
        const rke_block_q8x8 *xg = (const rke_block_q8x8 *)x + (t / 8) * nb;
        float *yt = y + t * n_rows;
        int64_t r = row_begin;
        if (t + 16 <= grouped) {
            for (; r + 2 <= row_end; r += 2) {
                group_tile(kind, wb + r * row_bytes, xg, yt + r, nb, row_bytes, n_rows, 2, 2);
            }
            if (r < row_end) {
                group_tile(kind, wb + r * row_bytes, xg, yt + r, nb, row_bytes, n_rows, 1, 2);
            }
        } else {
            for (; r + 2 <= row_end; r += 2) {
                group_tile(kind, wb + r * row_bytes, xg, yt + r, nb, row_bytes, n_rows, 2, 1);
            }
            if (r < row_end) {
                group_tile(kind, wb + r * row_bytes, xg, yt + r, nb, row_bytes, n_rows, 1, 1);
            }
        }
    }
    for (int64_t t = grouped; t < n_tokens; t++) {
        matvec(kind, w, x + t * nb, y + t * n_rows, n_cols, row_begin, row_end);
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
