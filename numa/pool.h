// numa/pool.h: a fixed pool of worker threads, one per physical core by default, each
// pinned with hwloc. The caller thread takes part as worker 0. Work is split by index
// without allocating per call. One caller at a time (not re-entrant).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_pool;

// Task body: called for every i in [begin, end) assigned to worker `tid`.
typedef void (*ferry_pool_fn)(void *ctx, int64_t begin, int64_t end, int tid);

// n_threads <= 0: one per physical core. Returns 0 or a negative code (message set).
int ferry_pool_create(struct ferry_pool **out, int n_threads);
void ferry_pool_destroy(struct ferry_pool *p); // NULL-safe
int ferry_pool_size(const struct ferry_pool *p);
// Runs fn over [0, n) split into contiguous chunks of at least `grain` items; blocks until
// all are done. p may be NULL (runs inline on the caller).
void ferry_pool_run(struct ferry_pool *p, int64_t n, int64_t grain, ferry_pool_fn fn, void *ctx);

#ifdef __cplusplus
}
#endif
