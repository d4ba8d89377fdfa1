/* The memory read-bandwidth probe behind `rwkv-edge bench`: the pool's threads sum a large buffer
 * of 64-bit words. The sum (mod 2^64, so independent of how the words are split among threads) is
 * returned, which keeps the compiler from skipping loads and lets a test prove every word was read.
 * Only sum_avx2 is compiled for AVX2 (a target attribute): the library is built for the baseline
 * CPU, and Python asks for that path only when dispatch says the CPU has AVX2. */
#include <stdatomic.h>

#include "rke_internal.h"

#if RKE_X86
#include <immintrin.h>
#endif

/* Words per pool chunk: 512 KiB, large enough that taking a chunk costs nothing next to reading
 * it, small enough that a delayed thread is caught up by the others. */
#define PROBE_GRAIN (64 * 1024)

typedef uint64_t (*sum_fn)(const uint64_t *w, int64_t n);

static uint64_t sum_scalar(const uint64_t *w, int64_t n) {
    /* four independent chains, so the loop waits on memory rather than on one chain of adds */
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += w[i];
        s1 += w[i + 1];
        s2 += w[i + 2];
        s3 += w[i + 3];
    }
    for (; i < n; i++) s0 += w[i];
    return (s0 + s1) + (s2 + s3);
}

#if RKE_X86
__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint64_t *w, int64_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(w + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(w + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(w + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(w + i + 12)));
    }
    const __m256i a = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, a);
    return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + sum_scalar(w + i, n - i);
}
#endif

typedef struct {
    sum_fn sum;
    const uint64_t *words;
    _Atomic uint64_t *total;
} probe_ctx;

static void probe_task(const void *ctx, int64_t begin, int64_t end) {
    const probe_ctx *c = ctx;
    atomic_fetch_add(c->total, c->sum(c->words + begin, end - begin));
}

int rke_read_sum(rke_pool *pool, int impl, const uint64_t *words, int64_t n_words,
                 uint64_t *sum) {
    sum_fn fn = NULL;
    if (impl == RKE_IMPL_SCALAR) fn = sum_scalar;
#if RKE_X86
    if (impl == RKE_IMPL_AVX2 || impl == RKE_IMPL_AVXVNNI) fn = sum_avx2;
#endif
    if (!fn) return RKE_BAD_IMPL;
    if (n_words < 0) return RKE_BAD_SIZE;
    _Atomic uint64_t total = 0;
    const probe_ctx c = {fn, words, &total};
    rke_pool_run(pool, probe_task, &c, n_words, PROBE_GRAIN);
    *sum = atomic_load(&total);
    return RKE_OK;
}
