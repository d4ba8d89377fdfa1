/* The persistent thread pool: workers split a task's items in chunks taken from an atomic
 * counter, the calling thread working too; equal chunks, or (guided) chunks that shrink as the
 * items run out. Workers spin briefly between tasks (decode runs
 * many short matvecs back to back), then sleep on a condition variable. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "rke_internal.h"

/* pause instructions a worker spins before sleeping: ~50-100 us on current x86 */
#define SPIN_PAUSES 2000

struct rke_pool {
    int n_threads; /* workers + the caller */
    pthread_t *workers;
    pthread_mutex_t run_lock; /* one task at a time, whichever Python thread calls */
    pthread_mutex_t sleep_lock;
    pthread_cond_t wake;
    atomic_uint_fast64_t generation; /* bumped once per task */
    atomic_int n_sleeping;
    atomic_int n_finished; /* workers done with the current task */
    atomic_int stop;
    atomic_int_fast64_t next_chunk; /* equal chunks: the next chunk's index; guided: the next item */
    /* the current task, written before `generation` is bumped */
    rke_task_fn task;
    const void *ctx;
    int64_t n_items, grain;
    int guided;
};

static inline void cpu_relax(void) {
#if RKE_X86
    __builtin_ia32_pause();
#endif
}

/* Guided self-scheduling: each chunk takes 1 / (2 x threads) of the items left, in whole grains, so
 * the last chunks are one grain and the threads finish within about a grain of each other. */
static void run_guided(rke_pool *pool) {
    const int64_t n = pool->n_items, grain = pool->grain, parts = 2 * (int64_t)pool->n_threads;
    int_fast64_t begin = atomic_load(&pool->next_chunk);
    while (begin < n) {
        const int64_t want = (n - begin + parts - 1) / parts;
        const int64_t size = (want + grain - 1) / grain * grain;
        const int64_t end = size < n - begin ? begin + size : n;
        /* on failure `begin` becomes what another thread left */
        if (atomic_compare_exchange_weak(&pool->next_chunk, &begin, end)) {
            pool->task(pool->ctx, begin, end);
            begin = atomic_load(&pool->next_chunk);
        }
    }
}

static void run_chunks(rke_pool *pool) {
    if (pool->guided) {
        run_guided(pool);
        return;
    }
    const int64_t n_chunks = (pool->n_items + pool->grain - 1) / pool->grain;
    for (;;) {
        const int64_t c = atomic_fetch_add(&pool->next_chunk, 1);
        if (c >= n_chunks) return;
        const int64_t begin = c * pool->grain;
        const int64_t end = begin + pool->grain < pool->n_items ? begin + pool->grain
                                                                 : pool->n_items;
        pool->task(pool->ctx, begin, end);
    }
}

static uint_fast64_t wait_for_task(rke_pool *pool, uint_fast64_t seen) {
    for (int i = 0; i < SPIN_PAUSES; i++) {
        const uint_fast64_t g = atomic_load(&pool->generation);
        if (g != seen) return g;
        cpu_relax();
    }
    pthread_mutex_lock(&pool->sleep_lock);
    /* count ourselves before the last check, so a caller who bumps after it sees a sleeper */
    atomic_fetch_add(&pool->n_sleeping, 1);
    uint_fast64_t g;
    while ((g = atomic_load(&pool->generation)) == seen) {
        pthread_cond_wait(&pool->wake, &pool->sleep_lock);
    }
    atomic_fetch_sub(&pool->n_sleeping, 1);
    pthread_mutex_unlock(&pool->sleep_lock);
    return g;
}

static void *worker_main(void *arg) {
    rke_pool *pool = arg;
    uint_fast64_t seen = 0;
    for (;;) {
        seen = wait_for_task(pool, seen);
        if (atomic_load(&pool->stop)) return NULL;
        run_chunks(pool);
        atomic_fetch_add(&pool->n_finished, 1);
    }
}

static void start_task(rke_pool *pool) {
    atomic_fetch_add(&pool->generation, 1);
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->sleep_lock);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->sleep_lock);
    }
}

rke_pool *rke_pool_create(int n_threads) {
    if (n_threads < 1) return NULL;
    rke_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    pool->workers = calloc((size_t)n_threads, sizeof *pool->workers);
    if (!pool->workers) {
        free(pool);
        return NULL;
    }
    pthread_mutex_init(&pool->run_lock, NULL);
    pthread_mutex_init(&pool->sleep_lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->n_sleeping, 0);
    atomic_init(&pool->n_finished, 0);
    atomic_init(&pool->stop, 0);
    atomic_init(&pool->next_chunk, 0);
    for (int i = 0; i < n_threads - 1; i++) {
        if (pthread_create(&pool->workers[i], NULL, worker_main, pool) != 0) {
            pool->n_threads = i + 1; /* the workers started so far, for destroy */
            rke_pool_destroy(pool);
            return NULL;
        }
    }
    return pool;
}

void rke_pool_destroy(rke_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->run_lock); /* never while a task runs */
    atomic_store(&pool->stop, 1);
    start_task(pool);
    for (int i = 0; i < pool->n_threads - 1; i++) pthread_join(pool->workers[i], NULL);
    pthread_mutex_unlock(&pool->run_lock);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->sleep_lock);
    pthread_mutex_destroy(&pool->run_lock);
    free(pool->workers);
    free(pool);
}

int rke_pool_threads(const rke_pool *pool) { return pool ? pool->n_threads : 1; }

static void run_task(rke_pool *pool, rke_task_fn task, const void *ctx, int64_t n_items,
                     int64_t grain, int guided) {
    if (n_items <= 0) return;
    if (grain < 1) grain = 1;
    if (!pool || pool->n_threads == 1 || n_items <= grain) {
        task(ctx, 0, n_items);
        return;
    }
    pthread_mutex_lock(&pool->run_lock);
    pool->task = task;
    pool->ctx = ctx;
    pool->n_items = n_items;
    pool->grain = grain;
    pool->guided = guided;
    atomic_store(&pool->next_chunk, 0);
    atomic_store(&pool->n_finished, 0);
    start_task(pool);
    run_chunks(pool);
    const int n_workers = pool->n_threads - 1;
    /* a worker the OS has descheduled is waited for without burning its core */
    for (long spins = 0; atomic_load(&pool->n_finished) < n_workers; spins++) {
        if (spins < SPIN_PAUSES) {
            cpu_relax();
        } else {
            sched_yield();
        }
    }
    pthread_mutex_unlock(&pool->run_lock);
}

void rke_pool_run(rke_pool *pool, rke_task_fn task, const void *ctx, int64_t n_items,
                  int64_t grain) {
    run_task(pool, task, ctx, n_items, grain, 0);
}

void rke_pool_run_guided(rke_pool *pool, rke_task_fn task, const void *ctx, int64_t n_items,
                         int64_t grain) {
    run_task(pool, task, ctx, n_items, grain, 1);
}

/* rke_pool_trace: what each item and chunk start saw, for the tests */
typedef struct {
    int32_t *visits, *starts;
} trace_ctx;

static void trace_task(const void *ctx, int64_t begin, int64_t end) {
    const trace_ctx *c = ctx;
    __atomic_fetch_add(&c->starts[begin], 1, __ATOMIC_RELAXED);
    for (int64_t i = begin; i < end; i++) __atomic_fetch_add(&c->visits[i], 1, __ATOMIC_RELAXED);
}

void rke_pool_trace(rke_pool *pool, int64_t n_items, int64_t grain, int guided, int32_t *visits,
                    int32_t *starts) {
    const trace_ctx c = {visits, starts};
    run_task(pool, trace_task, &c, n_items, grain, guided);
}
