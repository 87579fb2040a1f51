// numa/pool.c: a fixed pool of pinned worker threads with a cheap per-call handoff.
//
// Why this shape: the engine calls the pool once or more per layer per token, so a call
// must cost microseconds. The caller publishes the job in plain fields, then bumps a
// generation counter (release); workers spin on the counter for a short while and then
// sleep on it with a futex, so back-to-back calls never touch the kernel while sleeping
// calls still cost nothing when idle. Completion is a countdown the caller spins on and,
// after the spin, sleeps on (futex), woken by the last worker only if it is asleep.
// Every worker takes part in every call (also those whose chunk is empty), which keeps
// the job fields stable until all workers are done reading them: the caller cannot
// publish the next job before the countdown reaches zero.
#include "numa/pool.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <hwloc/glibc-sched.h>

#include "base/base.h"
#include "numa/topo.h"
#include "numa/topo_internal.h"

// Pause-loop iterations before a waiter goes to sleep (~tens of microseconds). Override
// with FERRY_POOL_SPIN (0 = sleep at once, useful on oversubscribed machines). Pools with
// more threads than PUs never spin.
#define POOL_SPIN_DEFAULT 20000

struct pool_worker {
  struct ferry_pool *pool;
  int tid;
  pthread_t th;
  int started;        // pthread_create succeeded (tid >= 1)
  hwloc_cpuset_t set; // where this worker is pinned (NULL: unpinned)
  _Atomic int bound;  // 1 once hwloc_set_cpubind succeeded in the thread
} __attribute__((aligned(64)));

struct ferry_pool {
  int n;
  int spin;
  struct pool_worker *w;
  hwloc_topology_t topo;
  hwloc_cpuset_t caller_old; // caller affinity before the pool pinned it (restored)
  // Job, written by the caller before the generation bump, read by workers after it.
  ferry_pool_fn fn;
  void *ctx;
  int64_t items;
  int k; // number of non-empty chunks (<= n)
  _Alignas(64) _Atomic uint32_t gen;
  _Atomic int32_t sleepers;
  _Atomic int stop;
  _Atomic uint32_t ready; // workers that finished pinning themselves (create waits)
  _Alignas(64) _Atomic int32_t remaining;
  _Atomic int32_t caller_waiting;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  __asm__ __volatile__("" ::: "memory");
#endif
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t expected) {
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}
static void futex_wake(_Atomic uint32_t *addr, int n) {
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

// Chunk t of k over [0, n): sizes differ by at most one, so each is >= n / k >= grain.
static inline void pool_chunk(int64_t n, int k, int t, int64_t *b, int64_t *e) {
  int64_t q = n / k, r = n % k;
  *b = q * t + (t < r ? t : r);
  *e = *b + q + (t < r ? 1 : 0);
}

static void pool_do_chunk(struct ferry_pool *p, int tid) {
  if (tid >= p->k) return;
  int64_t b, e;
  pool_chunk(p->items, p->k, tid, &b, &e);
  if (b < e) p->fn(p->ctx, b, e, tid);
}

static void *pool_worker_main(void *arg) {
  struct pool_worker *w = arg;
  struct ferry_pool *p = w->pool;
  if (w->set && hwloc_set_cpubind(p->topo, w->set, HWLOC_CPUBIND_THREAD) == 0)
    atomic_store(&w->bound, 1);
  else if (w->set)
    log_warn("pool: could not pin worker %d (%s); it runs unpinned", w->tid, strerror(errno));
  atomic_fetch_add(&p->ready, 1);
  futex_wake(&p->ready, 1);
  uint32_t seen = 0;
  for (;;) {
    uint32_t g = atomic_load_explicit(&p->gen, memory_order_acquire);
    for (int i = 0; g == seen && i < p->spin; i++) {
      cpu_relax();
      g = atomic_load_explicit(&p->gen, memory_order_acquire);
    }
    if (g == seen) {
      // seq_cst increment pairs with the caller's seq_cst bump then sleepers load:
      // either we see the new generation here or the caller sees us and wakes us.
      atomic_fetch_add(&p->sleepers, 1);
      while ((g = atomic_load(&p->gen)) == seen) futex_wait(&p->gen, seen);
      atomic_fetch_sub(&p->sleepers, 1);
    }
    seen = g;
    if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
    pool_do_chunk(p, w->tid);
    if (atomic_fetch_sub(&p->remaining, 1) == 1 && atomic_load(&p->caller_waiting))
      futex_wake((_Atomic uint32_t *)&p->remaining, 1);
  }
  return NULL;
}

// Picks the cpuset for worker i: core i when there are enough cores, otherwise PU i
// (wrapping) so oversubscribed pools still spread evenly. Returns NULL when unavailable.
static hwloc_cpuset_t pool_pick_set(hwloc_topology_t t, int i, int n) {
  int cores = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
  int pus = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
  hwloc_obj_t o = NULL;
  if (cores > 0 && n <= cores)
    o = hwloc_get_obj_by_type(t, HWLOC_OBJ_CORE, (unsigned)i);
  else if (pus > 0)
    o = hwloc_get_obj_by_type(t, HWLOC_OBJ_PU, (unsigned)(i % pus));
  if (!o || !o->cpuset) return NULL;
  return hwloc_bitmap_dup(o->cpuset);
}

int ferry_pool_create(struct ferry_pool **out, int n_threads) {
  *out = NULL;
  if (n_threads <= 0) n_threads = numa_topo_physical_cores();
  if (n_threads > 4096) return ferry_fail(-EINVAL, "pool: %d threads is too many", n_threads);
  struct ferry_pool *p = ferry_alloc_aligned(64, sizeof *p);
  if (!p) return -ENOMEM;
  memset(p, 0, sizeof *p);
  p->n = n_threads;
  // Spinning only pays when every thread has a PU of its own; oversubscribed threads
  // would burn the very PU the thread they wait for needs.
  int pus = numa_topo_get() ? hwloc_get_nbobjs_by_type(numa_topo_get(), HWLOC_OBJ_PU) : 1;
  ferry_clear_error();
  p->spin = n_threads > pus ? 0 : POOL_SPIN_DEFAULT;
  const char *env = getenv("FERRY_POOL_SPIN");
  if (env && *env) p->spin = atoi(env) < 0 ? 0 : atoi(env);
  p->w = ferry_alloc_aligned(64, sizeof(struct pool_worker) * (size_t)n_threads);
  if (!p->w) {
    ferry_free_aligned(p);
    return -ENOMEM;
  }
  memset(p->w, 0, sizeof(struct pool_worker) * (size_t)n_threads);
  p->topo = numa_topo_get(); // NULL: run unpinned (warned below)
  if (!p->topo) {
    log_warn("pool: %s; threads run unpinned", ferry_errmsg());
    ferry_clear_error();
  }
  for (int i = 0; i < n_threads; i++) {
    p->w[i].pool = p;
    p->w[i].tid = i;
    p->w[i].set = p->topo ? pool_pick_set(p->topo, i, n_threads) : NULL;
  }
  // Worker 0 is the caller: pin it too, remembering its old mask for destroy.
  if (p->topo && p->w[0].set) {
    p->caller_old = hwloc_bitmap_alloc();
    if (p->caller_old && hwloc_get_cpubind(p->topo, p->caller_old, HWLOC_CPUBIND_THREAD) == 0 &&
        hwloc_set_cpubind(p->topo, p->w[0].set, HWLOC_CPUBIND_THREAD) == 0) {
      atomic_store(&p->w[0].bound, 1);
    } else {
      log_warn("pool: could not pin the calling thread; it runs unpinned");
      hwloc_bitmap_free(p->caller_old);
      p->caller_old = NULL;
    }
  }
  for (int i = 1; i < n_threads; i++) {
    int rc = pthread_create(&p->w[i].th, NULL, pool_worker_main, &p->w[i]);
    if (rc != 0) {
      for (int j = i; j < n_threads; j++) hwloc_bitmap_free(p->w[j].set);
      p->n = i; // destroy joins and frees only the started ones
      ferry_pool_destroy(p);
      return ferry_fail(-rc, "pool: pthread_create for worker %d: %s", i, strerror(rc));
    }
    p->w[i].started = 1;
  }
  // Wait until every worker is pinned, so affinity queries and the first call see the
  // final placement.
  uint32_t r;
  while ((r = atomic_load(&p->ready)) != (uint32_t)(n_threads - 1)) futex_wait(&p->ready, r);
  *out = p;
  return 0;
}

void ferry_pool_destroy(struct ferry_pool *p) {
  if (!p) return;
  atomic_store_explicit(&p->stop, 1, memory_order_release);
  atomic_fetch_add(&p->gen, 1);
  futex_wake(&p->gen, INT_MAX);
  for (int i = 1; i < p->n; i++)
    if (p->w[i].started) pthread_join(p->w[i].th, NULL);
  if (p->caller_old) {
    hwloc_set_cpubind(p->topo, p->caller_old, HWLOC_CPUBIND_THREAD);
    hwloc_bitmap_free(p->caller_old);
  }
  for (int i = 0; i < p->n; i++) hwloc_bitmap_free(p->w[i].set);
  ferry_free_aligned(p->w);
  ferry_free_aligned(p);
}

int ferry_pool_size(const struct ferry_pool *p) { return p ? p->n : 1; }

void ferry_pool_run(struct ferry_pool *p, int64_t n, int64_t grain, ferry_pool_fn fn, void *ctx) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  int64_t kmax = n / grain;
  int k = (!p || kmax < 1) ? 1 : (kmax < p->n ? (int)kmax : p->n);
  if (k == 1) { // nothing to share: no wake-up at all
    fn(ctx, 0, n, 0);
    return;
  }
  p->fn = fn;
  p->ctx = ctx;
  p->items = n;
  p->k = k;
  atomic_store_explicit(&p->caller_waiting, 0, memory_order_relaxed);
  atomic_store_explicit(&p->remaining, p->n - 1, memory_order_relaxed);
  atomic_fetch_add(&p->gen, 1); // seq_cst: publishes the job (release) before sleepers load
  if (atomic_load(&p->sleepers) > 0) futex_wake(&p->gen, INT_MAX);
  pool_do_chunk(p, 0);
  int32_t r = atomic_load_explicit(&p->remaining, memory_order_acquire);
  for (int i = 0; r != 0 && i < p->spin; i++) {
    cpu_relax();
    r = atomic_load_explicit(&p->remaining, memory_order_acquire);
  }
  if (r != 0) {
    atomic_store(&p->caller_waiting, 1);
    while ((r = atomic_load(&p->remaining)) != 0)
      futex_wait((_Atomic uint32_t *)&p->remaining, (uint32_t)r);
  }
}

int ferry_pool_worker_cpus(const struct ferry_pool *p, int tid, cpu_set_t *out) {
  if (!p || !out || tid < 0 || tid >= p->n) return ferry_fail(-EINVAL, "pool: no worker %d", tid);
  const struct pool_worker *w = &p->w[tid];
  if (!w->set || !atomic_load((_Atomic int *)&w->bound)) return -ENOENT;
  CPU_ZERO(out);
  if (hwloc_cpuset_to_glibc_sched_affinity(p->topo, w->set, out, sizeof *out) != 0)
    return ferry_fail(-EINVAL, "pool: worker %d cpuset does not fit cpu_set_t", tid);
  return 0;
}
