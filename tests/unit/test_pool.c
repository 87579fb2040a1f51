// tests/unit/test_pool.c: the pinned thread pool computes the same sums as a serial loop
// for every thread count and chunking corner, pins each worker to the core hwloc assigned,
// and survives many back-to-back tiny calls (the per-layer pattern) without deadlock.
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "../check.h"
#include "base/base.h"
#include "numa/pool.h"
#include "numa/topo.h"

#define MAX_T 64

struct sum_ctx {
  const int64_t *a;
  int64_t part[MAX_T]; // per-worker partial sums
  int64_t covered[MAX_T];
  int calls[MAX_T];
  int64_t grain;
  int bad_chunk; // a chunk smaller than grain (when n >= grain) or out of order
};

static void sum_fn(void *vctx, int64_t b, int64_t e, int tid) {
  struct sum_ctx *c = vctx;
  if (e - b < c->grain || b >= e) c->bad_chunk = 1;
  int64_t s = 0;
  for (int64_t i = b; i < e; i++) s += c->a[i];
  c->part[tid] += s;
  c->covered[tid] += e - b;
  c->calls[tid]++;
}

static void check_sum(struct ferry_pool *p, const int64_t *a, int64_t n, int64_t grain) {
  struct sum_ctx c;
  memset(&c, 0, sizeof c);
  c.a = a;
  c.grain = grain < 1 ? 1 : (grain > n ? n : grain);
  ferry_pool_run(p, n, grain, sum_fn, &c);
  int64_t serial = 0, par = 0, cov = 0;
  for (int64_t i = 0; i < n; i++) serial += a[i];
  int nt = ferry_pool_size(p);
  for (int t = 0; t < nt; t++) {
    par += c.part[t];
    cov += c.covered[t];
    CHECK(c.calls[t] <= 1); // one contiguous chunk per worker
  }
  CHECK_EQ(par, serial);
  CHECK_EQ(cov, n);
  CHECK(!c.bad_chunk);
}

struct aff_ctx {
  struct ferry_pool *p;
  _Atomic int mismatches, checked, unpinned, narrowed;
  int allowed; // CPUs this process may run on
};

// Runs on each worker: the pool's claimed set must be the thread's real affinity, and that
// affinity must be narrower than the process's (checked with the kernel, not the pool).
static void aff_fn(void *vctx, int64_t b, int64_t e, int tid) {
  struct aff_ctx *c = vctx;
  cpu_set_t want, have;
  CPU_ZERO(&have);
  if (sched_getaffinity(0, sizeof have, &have) == 0 && CPU_COUNT(&have) < c->allowed)
    atomic_fetch_add(&c->narrowed, 1);
  if (ferry_pool_worker_cpus(c->p, tid, &want) != 0) {
    atomic_fetch_add(&c->unpinned, 1);
    return;
  }
  if (!CPU_EQUAL(&want, &have)) atomic_fetch_add(&c->mismatches, 1);
  atomic_fetch_add(&c->checked, 1);
}

struct tiny_ctx {
  _Atomic int64_t total;
};
static void tiny_fn(void *vctx, int64_t b, int64_t e, int tid) {
  struct tiny_ctx *c = vctx;
  atomic_fetch_add(&c->total, e - b);
}

int main(void) {
  enum { N = 100003 };
  int64_t *a = malloc(sizeof(int64_t) * N);
  struct ferry_rng rng;
  ferry_rng_seed(&rng, 1234);
  for (int i = 0; i < N; i++) a[i] = (int64_t)(ferry_rng_u64(&rng) % 2000001) - 1000000;

  char topo[512];
  CHECK_EQ(numa_topo_describe(topo, sizeof topo), 0);
  CHECK(strstr(topo, "physical core") != NULL);
  fprintf(stderr, "topology: %s\n", topo);
  int cores = numa_topo_physical_cores();
  CHECK(cores >= 1);
  cpu_set_t proc;
  CPU_ZERO(&proc);
  CHECK_EQ(sched_getaffinity(0, sizeof proc, &proc), 0);
  int allowed = CPU_COUNT(&proc);
  bool can_pin = allowed > 1; // the topology loaded: numa_topo_describe succeeded above

  // NULL pool runs inline.
  check_sum(NULL, a, N, 1);

  int counts[] = {1, 2, 3, 5, 7, 0 /* default: one per core */};
  for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
    struct ferry_pool *p = NULL;
    CHECK_EQ(ferry_pool_create(&p, counts[ci]), 0);
    if (!p) continue;
    int nt = ferry_pool_size(p);
    CHECK_EQ(nt, counts[ci] > 0 ? counts[ci] : cores);
    check_sum(p, a, N, 1);     // big n
    check_sum(p, a, N, 4096);  // grain splits
    check_sum(p, a, 3, 1);     // n < threads (for 5, 7)
    check_sum(p, a, 17, 1000); // grain > n: one chunk
    check_sum(p, a, 1, 1);
    check_sum(p, a, 0, 1); // empty: nothing called
    check_sum(p, a, 2 * nt + 1, 2);

    // Affinity: every worker (including the caller as worker 0) is pinned and runs on its
    // set. Where the topology is known and the process may use more than one CPU, a worker
    // left unpinned is a failure, not a note.
    struct aff_ctx ac = {.p = p, .allowed = allowed};
    ferry_pool_run(p, nt, 1, aff_fn, &ac);
    CHECK_EQ(atomic_load(&ac.mismatches), 0);
    CHECK_EQ(atomic_load(&ac.checked) + atomic_load(&ac.unpinned), nt);
    if (can_pin) {
      CHECK_EQ(atomic_load(&ac.unpinned), 0);
      CHECK_EQ(atomic_load(&ac.narrowed), nt);
    } else {
      fprintf(stderr, "SKIP: one allowed CPU or no topology: pinning not checked\n");
    }
    // With no more threads than cores, each worker has its own core (disjoint sets).
    if (nt <= cores && nt > 1) {
      cpu_set_t s0, s1, x;
      if (ferry_pool_worker_cpus(p, 0, &s0) == 0 && ferry_pool_worker_cpus(p, 1, &s1) == 0) {
        CPU_AND(&x, &s0, &s1);
        CHECK_EQ(CPU_COUNT(&x), 0);
      }
    }
    CHECK(ferry_pool_worker_cpus(p, nt, &(cpu_set_t){0}) < 0);
    ferry_clear_error();

    // 10k back-to-back small runs (the per-layer pattern) must neither deadlock nor
    // drop items.
    struct tiny_ctx tc = {0};
    double t0 = ferry_now_s();
    for (int it = 0; it < 10000; it++) ferry_pool_run(p, 64, 1, tiny_fn, &tc);
    double dt = ferry_now_s() - t0;
    CHECK_EQ(atomic_load(&tc.total), 64 * 10000);
    fprintf(stderr, "threads %d: 10k small runs in %.1f ms (%.2f us/run)\n", nt, dt * 1e3,
            dt * 1e6 / 10000);
    ferry_pool_destroy(p);
  }
  ferry_pool_destroy(NULL);
  free(a);
  CHECK_DONE();
}
