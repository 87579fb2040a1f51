// test_ecache: the host expert cache over a synthetic "model file" of random bytes with
// GGUF-like expert tensors (unaligned bases; block-aligned and unaligned strides; two
// slot size classes). Random acquire/prefetch/release sequences with a small cache check
// that the bytes are always the file's, pinned experts are never evicted or overwritten,
// counters add up, capacity and budget hold; plus exact LRU order, the minimum-capacity
// errors, a budget refusal, and an EIO injected mid-way (clear error, cache consistent).
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/magic.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "base/base.h"
#include "io/reader.h"
#include "offload/budget.h"
#include "offload/ecache.h"
#include "tests/check.h"

// Counts heap allocations so the test can check that acquire/wait/poll/release/prefetch
// allocate nothing (no allocation per token). Sanitizer builds interpose malloc
// themselves, so the counter is compiled out there.
#if defined(__SANITIZE_ADDRESS__)
#define COUNT_ALLOCS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define COUNT_ALLOCS 0
#endif
#endif
#ifndef COUNT_ALLOCS
#define COUNT_ALLOCS 1
#endif
static uint64_t g_allocs;
#if COUNT_ALLOCS
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
void *malloc(size_t n) {
  g_allocs++;
  return __libc_malloc(n);
}
void *calloc(size_t a, size_t b) {
  g_allocs++;
  return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n) {
  g_allocs++;
  return __libc_realloc(p, n);
}
void *aligned_alloc(size_t a, size_t n) {
  g_allocs++;
  return __libc_memalign(a, n);
}
int posix_memalign(void **out, size_t a, size_t n) {
  g_allocs++;
  *out = __libc_memalign(a, n);
  return *out ? 0 : ENOMEM;
}
#endif

#define NL   5
#define NE   16
#define KMAX 4

static uint8_t *g_file;
static uint64_t g_size;
static struct ecache_layer g_layers[NL];
static struct ferry_rng g_rng;

// Lays out NL layers: layers 0, 2, 4 have a bigger "down" (another size class), layer 3
// has strides that are not multiples of 4096. Tensors start at 32-aligned offsets only.
static void make_layout(void) {
  uint64_t at = 4096 * 3 + 32 * 7; // a header, then 32-aligned tensors
  for (int l = 0; l < NL; l++) {
    g_layers[l].n_experts = NE;
    for (int p = 0; p < ECACHE_N_PARTS; p++) {
      uint64_t len = 3 * 4096;
      if (p == ECACHE_DOWN && l % 2 == 0) len = 5 * 4096;
      if (l == 3) len = 14000 + 32 * p;
      g_layers[l].part[p] = (struct ecache_slice){.base = at, .stride = len, .len = len};
      at += NE * len + 32 * (uint64_t)(1 + p);
    }
  }
  g_size = at + 777;
}

static const uint8_t *file_bytes(uint32_t l, int32_t e, int p) {
  const struct ecache_slice *s = &g_layers[l].part[p];
  return g_file + s->base + (uint64_t)e * s->stride;
}

// file_layer: the layer of g_layers that the cache's layer r->layer describes.
static bool ref_ok_as(const struct ecache_ref *r, uint32_t file_layer) {
  if (r->state != ECACHE_READY) return false;
  for (int p = 0; p < ECACHE_N_PARTS; p++) {
    if (!r->data[p] || r->bytes[p] != g_layers[file_layer].part[p].len) return false;
    if (memcmp(r->data[p], file_bytes(file_layer, r->expert, p), r->bytes[p])) return false;
  }
  return true;
}
static bool ref_ok(const struct ecache_ref *r) { return ref_ok_as(r, r->layer); }

static const char *disk_dir(void) {
  const char *c[3] = {getenv("FERRY_BUILD"), "/var/tmp", "."};
  for (int i = 0; i < 3; i++) {
    struct statfs sf;
    if (c[i] && statfs(c[i], &sf) == 0 && sf.f_type != TMPFS_MAGIC && access(c[i], W_OK) == 0)
      return c[i];
  }
  return NULL;
}

static void pick(uint32_t n, int32_t *ex, bool allow_dup) {
  for (uint32_t i = 0; i < n; i++) {
    for (;;) {
      ex[i] = (int32_t)(ferry_rng_u64(&g_rng) % NE);
      bool dup = false;
      for (uint32_t j = 0; j < i; j++) dup |= ex[j] == ex[i];
      if (!dup || (allow_dup && ferry_rng_u64(&g_rng) % 4 == 0)) break;
    }
  }
}

struct held {
  uint32_t layer, n;
  struct ecache_ref refs[KMAX];
};

// Random traffic: acquire k experts of a random layer, wait, verify; sometimes keep an
// acquisition pinned across later steps (as a pipelined engine would) and verify its
// bytes again later; sometimes prefetch. -ENOSPC is expected exactly when the pinned
// slots of the class leave too few for the misses.
static void random_traffic(struct ecache *c, struct budget *b, int steps) {
  struct held hold[3];
  int n_hold = 0;
  struct ecache_stats st;
  ecache_stats(c, &st);
  uint64_t cap = st.capacity_bytes[ECACHE_HOST];
  uint64_t errors0 = st.tier[ECACHE_HOST].errors;
  int nospc = 0;
  uint64_t allocs0 = g_allocs;
  for (int step = 0; step < steps; step++) {
    uint32_t l = (uint32_t)(ferry_rng_u64(&g_rng) % NL);
    uint32_t k = 1 + (uint32_t)(ferry_rng_u64(&g_rng) % KMAX);
    int32_t ex[KMAX];
    pick(k, ex, true);
    if (ferry_rng_u64(&g_rng) % 5 == 0) {
      int32_t pf[KMAX];
      uint32_t nl = (l + 1) % NL;
      pick(2, pf, false);
      CHECK(ecache_prefetch(c, nl, 2, pf) >= 0);
    }
    struct ecache_stats s0;
    ecache_stats(c, &s0);
    struct held h = {.layer = l, .n = k};
    int rc = ecache_acquire(c, l, k, ex, h.refs);
    if (rc == -ENOSPC) {
      nospc++;
      CHECK(n_hold > 0); // only pins can exhaust a class sized for KMAX
      CHECK(strstr(ferry_errmsg(), "pinned") != NULL);
      struct ecache_stats s1;
      ecache_stats(c, &s1);
      CHECK_EQ(s1.tier[ECACHE_HOST].acquires, s0.tier[ECACHE_HOST].acquires);
      for (int i = 0; i < n_hold; i++) ecache_release(c, hold[i].layer, hold[i].n, hold[i].refs);
      n_hold = 0;
      rc = ecache_acquire(c, l, k, ex, h.refs);
    }
    CHECK_EQ(rc, 0);
    if (rc) continue;
    if (step % 2) { // completion order: poll until everything has landed
      int ready, spins = 0;
      while ((ready = ecache_poll(c, k, h.refs)) < (int)k && spins++ < 100000) usleep(10);
      CHECK_EQ(ready, (int)k);
    }
    for (uint32_t i = 0; i < k; i++) {
      if (h.refs[i].state == ECACHE_IN_FLIGHT) CHECK_EQ(ecache_wait(c, &h.refs[i]), 0);
      CHECK(ref_ok(&h.refs[i]));
      CHECK(ecache_contains(c, l, ex[i]));
    }
    ecache_check(c);
    // Held (pinned) experts: still cached, bytes untouched by everything since.
    for (int i = 0; i < n_hold; i++)
      for (uint32_t j = 0; j < hold[i].n; j++) {
        CHECK(ecache_contains(c, hold[i].layer, hold[i].refs[j].expert));
        CHECK(ref_ok(&hold[i].refs[j]));
      }
    if (n_hold < 3 && ferry_rng_u64(&g_rng) % 3 == 0) {
      hold[n_hold++] = h;
    } else {
      ecache_release(c, l, k, h.refs);
      if (n_hold && ferry_rng_u64(&g_rng) % 2) {
        n_hold--;
        ecache_release(c, hold[n_hold].layer, hold[n_hold].n, hold[n_hold].refs);
      }
    }
    ecache_check(c);
    if (b) {
      CHECK_EQ(budget_used(b, BUDGET_HOST, BUDGET_EXPERTS), cap);
      CHECK(budget_used_total(b, BUDGET_HOST) <= budget_limit(b, BUDGET_HOST));
    }
  }
  for (int i = 0; i < n_hold; i++) ecache_release(c, hold[i].layer, hold[i].n, hold[i].refs);
  CHECK_EQ(g_allocs, allocs0); // nothing allocated per acquire/wait/release/prefetch
  ecache_check(c);
  ecache_stats(c, &st);
  struct ecache_counters t = st.tier[ECACHE_HOST], sum = {0};
  CHECK_EQ(t.acquires, t.hits + t.misses);
  for (uint32_t l = 0; l < NL; l++) {
    struct ecache_counters lc;
    ecache_layer_counters(c, l, &lc);
    CHECK_EQ(lc.acquires, lc.hits + lc.misses);
    sum.acquires += lc.acquires, sum.hits += lc.hits, sum.misses += lc.misses;
    sum.evictions += lc.evictions, sum.prefetches += lc.prefetches;
  }
  CHECK_EQ(sum.acquires, t.acquires);
  CHECK_EQ(sum.hits, t.hits);
  CHECK_EQ(sum.misses, t.misses);
  CHECK_EQ(sum.evictions, t.evictions);
  CHECK_EQ(sum.prefetches, t.prefetches);
  CHECK(t.hits > 0 && t.misses > 0 && t.evictions > 0 && t.prefetches > 0);
  CHECK_EQ(t.errors, errors0);
  CHECK_EQ(st.capacity_bytes[ECACHE_DEVICE], 0);
  fprintf(stderr,
          "traffic: %llu acquires, %llu hits, %llu misses, %llu evictions, %llu "
          "prefetches, %d ENOSPC\n",
          (unsigned long long)t.acquires, (unsigned long long)t.hits, (unsigned long long)t.misses,
          (unsigned long long)t.evictions, (unsigned long long)t.prefetches, nospc);
}

static struct ecache_params params(struct io_reader *r, struct budget *b, uint32_t slots) {
  return (struct ecache_params){
      .n_layers = NL,
      .layers = g_layers,
      .reader = r,
      .budget = b,
      .host_slots = slots,
      .register_buffers = true, // the engine reads plain; cover fixed reads here
      .min_slots = KMAX};
}

static void same_counters(const struct ecache_counters *a, const struct ecache_counters *b) {
  CHECK_EQ(a->acquires, b->acquires);
  CHECK_EQ(a->hits, b->hits);
  CHECK_EQ(a->misses, b->misses);
  CHECK_EQ(a->evictions, b->evictions);
  CHECK_EQ(a->prefetches, b->prefetches);
  CHECK_EQ(a->pf_used, b->pf_used);
  CHECK_EQ(a->pf_wrong, b->pf_wrong);
  CHECK_EQ(a->pf_skipped, b->pf_skipped);
  CHECK_EQ(a->demand_bytes, b->demand_bytes);
}

// Decode-like traffic (layer after layer, each acquire followed by a guess for the next
// layer that is partly right) through a real cache and a simulated one with the same
// layout: every counter must agree after every call, whatever the I/O timing (random
// completion delays are injected; some acquires are polled, some waited for in order).
static void sim_replays_real(struct io_reader *rd, double cap, int tokens) {
  struct ecache *real = NULL, *sim = NULL;
  struct ecache_params p = params(rd, NULL, 3 * NL * KMAX / 2);
  p.prefetch_cap = cap;
  CHECK_EQ(ecache_create(&real, &p), 0);
  p.simulate = true;
  p.reader = NULL;
  CHECK_EQ(ecache_create(&sim, &p), 0);
  int32_t prev[NL][KMAX] = {{0}};
  uint64_t allocs0 = g_allocs;
  for (int t = 0; t < tokens; t++) {
    for (uint32_t l = 0; l < NL; l++) {
      int32_t ex[KMAX];
      pick(KMAX, ex, false);
      for (int i = 0; i < KMAX / 2; i++) // temporal reuse: half of the last token's experts
        if (ferry_rng_u64(&g_rng) % 2) {
          bool dup = false;
          for (int j = 0; j < KMAX; j++) dup |= ex[j] == prev[l][i];
          if (!dup) ex[i] = prev[l][i];
        }
      memcpy(prev[l], ex, sizeof ex);
      if (ferry_rng_u64(&g_rng) % 8 == 0)
        io_fault_set(IO_FAULT_DELAY, 1 + ferry_rng_u64(&g_rng) % 6, 300);
      struct ecache_ref rr[KMAX], rs[KMAX];
      CHECK_EQ(ecache_acquire(real, l, KMAX, ex, rr), 0);
      CHECK_EQ(ecache_acquire(sim, l, KMAX, ex, rs), 0);
      if (l + 1 < NL) { // the guess: the next layer's experts, some of them wrong
        int32_t g[KMAX];
        pick(KMAX, g, false);
        CHECK_EQ(ecache_prefetch(real, l + 1, KMAX, g), ecache_prefetch(sim, l + 1, KMAX, g));
      }
      if (t % 2) {
        int spins = 0;
        while (ecache_poll(real, KMAX, rr) < KMAX && spins++ < 100000) usleep(5);
      }
      for (int i = 0; i < KMAX; i++) {
        if (rr[i].state == ECACHE_IN_FLIGHT) CHECK_EQ(ecache_wait(real, &rr[i]), 0);
        CHECK(ref_ok(&rr[i]));
        CHECK_EQ(rs[i].state, ECACHE_READY);
      }
      ecache_release(real, l, KMAX, rr);
      ecache_release(sim, l, KMAX, rs);
      struct ecache_stats a, b;
      ecache_stats(real, &a);
      ecache_stats(sim, &b);
      same_counters(&a.tier[ECACHE_HOST], &b.tier[ECACHE_HOST]);
      ecache_check(real);
      ecache_check(sim);
    }
  }
  CHECK_EQ(g_allocs, allocs0);
  io_fault_clear();
  struct ecache_stats a;
  ecache_stats(real, &a);
  const struct ecache_counters *c = &a.tier[ECACHE_HOST];
  CHECK(c->pf_used > 0 && c->pf_wrong > 0 && c->hits > 0 && c->misses > 0);
  CHECK(c->pf_bytes <= c->prefetches * 3 * 49152 + c->prefetches * 3 * 65536); // issued <= taken
  if (cap > 0) CHECK(c->pf_skipped > 0); // random guesses are mostly wrong: the cap bites
  fprintf(stderr,
          "sim == real (cap %.2f): %llu hits, %llu misses, %llu guesses (%llu used, %llu "
          "wrong, %llu cancelled, %llu skipped)\n",
          cap, (unsigned long long)c->hits, (unsigned long long)c->misses,
          (unsigned long long)c->prefetches, (unsigned long long)c->pf_used,
          (unsigned long long)c->pf_wrong, (unsigned long long)c->pf_cancelled,
          (unsigned long long)c->pf_skipped);
  ecache_destroy(real);
  ecache_destroy(sim);
}

int main(void) {
  struct io_uring probe;
  int prc = io_uring_queue_init(4, &probe, 0);
  if (prc == -ENOSYS || prc == -EPERM) SKIP("io_uring unavailable (%s)", strerror(-prc));
  if (prc == 0) io_uring_queue_exit(&probe);
  const char *dir = disk_dir();
  if (!dir) SKIP("no writable non-tmpfs directory for the test file");

  ferry_rng_seed(&g_rng, 99);
  make_layout();
  g_file = malloc(g_size);
  for (uint64_t i = 0; i < g_size; i++) g_file[i] = (uint8_t)ferry_rng_u64(&g_rng);
  char path[4096];
  snprintf(path, sizeof path, "%s/ferry_test_ecache_%d.bin", dir, (int)getpid());
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  FERRY_ASSERT(fd >= 0 && write(fd, g_file, g_size) == (ssize_t)g_size);
  close(fd);

  struct io_reader *rd = NULL;
  FERRY_ASSERT(io_reader_open(&rd, path, NULL) == 0);
  struct budget *b = NULL;
  budget_create(&b, 64ull << 20, 0);

  // Sizes: 2 classes; layer 3 (unaligned stride) is sized for the worst misalignment.
  struct ecache *c = NULL;
  struct ecache_params p = params(rd, b, 3 * NL * KMAX / 2);
  CHECK_EQ(ecache_create(&c, &p), 0);
  struct ecache_stats st;
  ecache_stats(c, &st);
  CHECK_EQ(st.n_classes, 3);
  CHECK_EQ(st.capacity_slots[ECACHE_HOST], 30);
  CHECK_EQ(ecache_slot_bytes(c, 1), 9 * 4096 + 3 * 4096); // each 3x4096 span + 4096 slack
  CHECK_EQ(ecache_slot_bytes(c, 0), ecache_slot_bytes(c, 2));
  CHECK_EQ(ecache_slot_bytes(c, 3), io_span_max(14000) + io_span_max(14032) + io_span_max(14064));
  CHECK_EQ(budget_used(b, BUDGET_HOST, BUDGET_EXPERTS), st.capacity_bytes[ECACHE_HOST]);

  // Hits and misses, exactly.
  int32_t e2[2] = {3, 9};
  struct ecache_ref r2[2];
  CHECK_EQ(ecache_acquire(c, 1, 2, e2, r2), 0);
  CHECK_EQ(r2[0].state, ECACHE_IN_FLIGHT);
  CHECK_EQ(ecache_wait(c, &r2[0]), 0);
  CHECK_EQ(ecache_wait(c, &r2[1]), 0);
  CHECK(ref_ok(&r2[0]) && ref_ok(&r2[1]));
  ecache_release(c, 1, 2, r2);
  CHECK_EQ(ecache_acquire(c, 1, 2, e2, r2), 0);
  CHECK_EQ(r2[0].state, ECACHE_READY);
  CHECK(ref_ok(&r2[0]) && ref_ok(&r2[1]));
  ecache_release(c, 1, 2, r2);
  struct ecache_counters lc;
  ecache_layer_counters(c, 1, &lc);
  CHECK_EQ(lc.misses, 2);
  CHECK_EQ(lc.hits, 2);
  ecache_check(c);

  // Bad input: one clear error, nothing pinned.
  int32_t bad = NE;
  CHECK_EQ(ecache_acquire(c, 0, 1, &bad, r2), -EINVAL);
  CHECK(strstr(ferry_errmsg(), "out of range") != NULL);
  CHECK_EQ(ecache_acquire(c, NL, 1, e2, r2), -EINVAL);
  CHECK_EQ(ecache_prefetch(c, 0, 1, &bad), -EINVAL);
  ecache_check(c);

  random_traffic(c, b, 3000);
  ecache_destroy(c);
  CHECK_EQ(budget_used(b, BUDGET_HOST, BUDGET_EXPERTS), 0);

  // Exact LRU order on one class: layer 1 alone (one class, 6 slots).
  struct ecache_layer one = g_layers[1];
  struct ecache_params p1 = {
      .n_layers = 1, .layers = &one, .reader = rd, .budget = b, .host_slots = 6, .min_slots = 2};
  CHECK_EQ(ecache_create(&c, &p1), 0);
  for (int32_t e = 0; e < 6; e++) {
    struct ecache_ref r;
    CHECK_EQ(ecache_acquire(c, 0, 1, &e, &r), 0);
    CHECK_EQ(ecache_wait(c, &r), 0);
    ecache_release(c, 0, 1, &r);
  }
  {
    struct ecache_ref r;
    int32_t e = 0;
    CHECK_EQ(ecache_acquire(c, 0, 1, &e, &r), 0); // hit: 0 becomes most recent
    CHECK_EQ(r.state, ECACHE_READY);
    ecache_release(c, 0, 1, &r);
    e = 6;
    CHECK_EQ(ecache_acquire(c, 0, 1, &e, &r), 0); // evicts 1, the least recent
    CHECK_EQ(ecache_wait(c, &r), 0);
    CHECK(!ecache_contains(c, 0, 1));
    CHECK(ecache_contains(c, 0, 0) && ecache_contains(c, 0, 2));
    // Everything pinned: 6 slots, hold 6, ask for one more.
    int32_t six[6] = {0, 2, 3, 4, 5, 6};
    struct ecache_ref rs[6];
    ecache_release(c, 0, 1, &r);
    CHECK_EQ(ecache_acquire(c, 0, 6, six, rs), 0);
    for (int i = 0; i < 6; i++) CHECK(ref_ok_as(&rs[i], 1));
    e = 7;
    CHECK_EQ(ecache_acquire(c, 0, 1, &e, &r), -ENOSPC);
    CHECK(strstr(ferry_errmsg(), "6 of the 6 host slots") != NULL);
    CHECK(strstr(ferry_errmsg(), "minimum capacity") != NULL);
    fprintf(stderr, "all pinned: %s\n", ferry_errmsg());
    // A prefetch with no free slot starts nothing and does not block.
    CHECK_EQ(ecache_prefetch(c, 0, 1, &e), 0);
    ecache_release(c, 0, 6, rs);
    CHECK_EQ(ecache_prefetch(c, 0, 1, &e), 1);
    CHECK_EQ(ecache_acquire(c, 0, 1, &e, &r), 0); // in flight or landed: a hit either way
    if (r.state == ECACHE_IN_FLIGHT) CHECK_EQ(ecache_wait(c, &r), 0);
    CHECK(ref_ok_as(&r, 1));
    ecache_release(c, 0, 1, &r);
    ecache_layer_counters(c, 0, &lc);
    CHECK_EQ(lc.misses, 7);
    CHECK_EQ(lc.prefetches, 1);
    CHECK_EQ(lc.evictions, 2);
  }
  ecache_check(c);
  ecache_destroy(c);

  // Minimum capacity at create, in slots and in bytes; budget refusal.
  p = params(rd, b, NL * KMAX / 2);
  CHECK_EQ(ecache_create(&c, &p), -ENOSPC);
  CHECK(strstr(ferry_errmsg(), "minimum capacity is") != NULL);
  CHECK(c == NULL);
  p.host_slots = 0;
  p.host_bytes = 1 << 20;
  CHECK_EQ(ecache_create(&c, &p), -ENOSPC);
  CHECK(strstr(ferry_errmsg(), "minimum capacity is") != NULL);
  fprintf(stderr, "min capacity message: %s\n", ferry_errmsg());
  p.host_bytes = 0;
  p.host_slots = 5000;
  CHECK_EQ(ecache_create(&c, &p), -ENOMEM);
  CHECK(strstr(ferry_errmsg(), "expert slots") != NULL);
  CHECK(strstr(ferry_errmsg(), "host RAM") != NULL);
  CHECK_EQ(budget_used_total(b, BUDGET_HOST), 0);
  // A layout outside the file.
  struct ecache_layer far = g_layers[0];
  far.part[ECACHE_UP].base = g_size;
  struct ecache_params pf = {.n_layers = 1, .layers = &far, .reader = rd, .host_slots = 8};
  CHECK_EQ(ecache_create(&c, &pf), -EINVAL);
  CHECK(strstr(ferry_errmsg(), "layer 0 up slices") != NULL);

  // EIO mid-way: the failing expert reports layer, expert, offset and errno; its slot is
  // dropped on release; everything else stays correct; a later acquire re-reads it.
  p = params(rd, b, 3 * NL * KMAX / 2);
  CHECK_EQ(ecache_create(&c, &p), 0);
  random_traffic(c, b, 200);
  io_fault_clear();
  io_fault_set(IO_FAULT_ERRNO, 7, EIO);
  int failures = 0;
  for (int step = 0; step < 40; step++) {
    uint32_t l = (uint32_t)(step % NL);
    int32_t ex[KMAX];
    pick(KMAX, ex, false);
    struct ecache_ref rs[KMAX];
    CHECK_EQ(ecache_acquire(c, l, KMAX, ex, rs), 0);
    for (int i = 0; i < KMAX; i++) {
      int rc = rs[i].state == ECACHE_IN_FLIGHT ? ecache_wait(c, &rs[i]) : 0;
      if (rc) {
        failures++;
        CHECK_EQ(rc, -EIO);
        const char *m = ferry_errmsg();
        char want[96];
        snprintf(want, sizeof want, "layer %u expert %d", l, ex[i]);
        CHECK(strstr(m, want) != NULL);
        CHECK(strstr(m, "errno 5") != NULL);
        bool off_named = false;
        for (int q = 0; q < ECACHE_N_PARTS; q++) {
          snprintf(want, sizeof want, "offset %llu",
                   (unsigned long long)(file_bytes(l, ex[i], q) - g_file));
          off_named |= strstr(m, want) != NULL;
        }
        CHECK(off_named);
        fprintf(stderr, "injected: %s\n", m);
        CHECK_EQ(ecache_wait(c, &rs[i]), -EIO); // stays failed until released
      } else {
        CHECK(ref_ok(&rs[i]));
      }
    }
    ecache_release(c, l, KMAX, rs);
    ecache_check(c);
    if (failures == 1 && step > 5) break;
  }
  CHECK_EQ(failures, 1);
  ecache_stats(c, &st);
  CHECK_EQ(st.tier[ECACHE_HOST].errors, 1);
  io_fault_clear();
  random_traffic(c, b, 300); // consistent and correct after the failure
  ecache_destroy(c);
  io_reader_close(rd);

  // The simulation replays the real cache's decisions exactly, with and without the cap.
  FERRY_ASSERT(io_reader_open(&rd, path, NULL) == 0);
  sim_replays_real(rd, -1, 60);
  sim_replays_real(rd, 0.25, 60);
  io_reader_close(rd);

  // The same traffic through the buffered fallback path.
  struct io_reader_opts o = {.force_buffered = true};
  FERRY_ASSERT(io_reader_open(&rd, path, &o) == 0);
  p = params(rd, b, 3 * NL * KMAX / 2);
  CHECK_EQ(ecache_create(&c, &p), 0);
  random_traffic(c, b, 300);
  ecache_destroy(c);
  io_reader_close(rd);
  ecache_destroy(NULL);
  unlink(path);
  free(g_file);

  // Real Qwen3-30B slice sizes (884,736 bytes, 32-aligned bases; MODEL_SPEC 1.6): two
  // layers of 8 experts, the slot is the three 4096-aligned supersets.
  {
    uint64_t sl = 884736, at = 4096 * 5 + 96;
    for (int l = 0; l < 2; l++) {
      g_layers[l].n_experts = 8;
      for (int q = 0; q < ECACHE_N_PARTS; q++) {
        g_layers[l].part[q] = (struct ecache_slice){.base = at, .stride = sl, .len = sl};
        at += 8 * sl + 64;
      }
    }
    g_size = at;
    g_file = malloc(g_size);
    for (uint64_t i = 0; i < g_size; i += 8) {
      uint64_t v = ferry_rng_u64(&g_rng);
      memcpy(g_file + i, &v, g_size - i < 8 ? g_size - i : 8);
    }
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    FERRY_ASSERT(fd >= 0 && write(fd, g_file, g_size) == (ssize_t)g_size);
    close(fd);
    FERRY_ASSERT(io_reader_open(&rd, path, NULL) == 0);
    struct ecache_params pr = {.n_layers = 2,
                               .layers = g_layers,
                               .reader = rd,
                               .budget = b,
                               .host_bytes = 10 * 3 * 888832,
                               .min_slots = 4};
    CHECK_EQ(ecache_create(&c, &pr), 0);
    CHECK_EQ(ecache_slot_bytes(c, 0), 3 * 888832); // 217 blocks per slice
    ecache_stats(c, &st);
    CHECK_EQ(st.capacity_slots[ECACHE_HOST], 10);
    for (int step = 0; step < 60; step++) {
      uint32_t l = (uint32_t)(step % 2);
      int32_t ex[4];
      for (int i = 0; i < 4; i++) ex[i] = (int32_t)((ferry_rng_u64(&g_rng) % 2) * 4 + i);
      struct ecache_ref rs[4];
      CHECK_EQ(ecache_acquire(c, l, 4, ex, rs), 0);
      for (int i = 0; i < 4; i++) {
        if (rs[i].state == ECACHE_IN_FLIGHT) CHECK_EQ(ecache_wait(c, &rs[i]), 0);
        CHECK(ref_ok(&rs[i]));
      }
      ecache_release(c, l, 4, rs);
      ecache_check(c);
    }
    ecache_stats(c, &st);
    CHECK(st.tier[ECACHE_HOST].hits > 0 && st.tier[ECACHE_HOST].evictions > 0);
    ecache_destroy(c);
    io_reader_close(rd);
  }

  CHECK_EQ(budget_used_total(b, BUDGET_HOST), 0);
  CHECK(!COUNT_ALLOCS || g_allocs > 10); // the counter does see create's allocations
  budget_destroy(b);
  unlink(path);
  free(g_file);
  CHECK_DONE();
}
