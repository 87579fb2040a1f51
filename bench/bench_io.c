// bench_io: how fast the io/ reader pulls bytes off the disk. Two measurements through
// io_reader (O_DIRECT, registered buffers): sequential reads of a big file in 4 MiB
// chunks, and random expert-sized reads (884,736 bytes at 32-byte-aligned offsets, like
// one Qwen3-30B expert slice) at several queue depths. Prints MB/s (10^6 bytes/s).
//
//   bench_io FILE [--create SIZE] [--seq SIZE] [--reads N] [--span BYTES] [--qd 8,16,32]
//            [--buffered] [--tokens N] [--cache SIZE]
// --create writes FILE with random bytes first (SIZE like 4G). --seq limits the bytes
// read sequentially (default: the whole file). --tokens N (default 0: skipped) then
// runs the expert cache over the file laid out as Qwen3-30B expert tensors (128 experts
// of 3 x 884,736 bytes per layer, as many layers as fit), routing k = 8 uniformly random
// experts per layer per token with a host cache of --cache bytes (default 1G): the worst
// case (no locality) of stream-mode decode.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "io/reader.h"
#include "offload/budget.h"
#include "offload/ecache.h"

#define SEQ_CHUNK (4u << 20)

static int create_file(const char *path, uint64_t size) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return ferry_fail(-errno, "cannot create %s: %s", path, strerror(errno));
  size_t blk = 8u << 20;
  uint64_t *buf = malloc(blk);
  struct ferry_rng rng;
  ferry_rng_seed(&rng, 42);
  for (uint64_t done = 0; done < size;) {
    for (size_t i = 0; i < blk / 8; i++) buf[i] = ferry_rng_u64(&rng);
    size_t n = size - done < blk ? (size_t)(size - done) : blk;
    if (write(fd, buf, n) != (ssize_t)n) {
      free(buf);
      close(fd);
      return ferry_fail(-EIO, "short write to %s", path);
    }
    done += n;
  }
  free(buf);
  fsync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  return 0;
}

// Keeps qd reads in flight; next(i, &off, &len) gives read i. Returns seconds.
typedef void (*next_fn)(uint64_t i, uint64_t *off, uint64_t *len, void *ctx);
static double run(struct io_reader *r, uint8_t *slab, uint64_t slot, uint32_t qd, uint64_t n,
                  next_fn next, void *ctx, uint64_t *bytes) {
  struct io_req *q = calloc(qd, sizeof *q);
  double t0 = ferry_now_s();
  uint64_t issued = 0;
  *bytes = 0;
  for (; issued < n && issued < qd; issued++) {
    uint64_t off, len;
    next(issued, &off, &len, ctx);
    io_req_init(&q[issued], slab + issued * slot, (int)issued, off, len);
    if (io_read_queue(r, &q[issued])) goto fail;
  }
  io_reader_submit(r);
  for (uint64_t i = 0; i < n; i++) {
    struct io_req *x = &q[i % qd];
    if (io_read_wait(r, x)) goto fail;
    *bytes += x->len;
    if (issued < n) {
      uint64_t off, len;
      next(issued++, &off, &len, ctx);
      io_req_init(x, slab + (i % qd) * slot, (int)(i % qd), off, len);
      if (io_read_queue(r, x)) goto fail;
      io_reader_submit(r);
    }
  }
  free(q);
  return ferry_now_s() - t0;
fail:
  fprintf(stderr, "bench_io: %s\n", ferry_errmsg());
  io_reader_wait_all(r);
  free(q);
  return -1;
}

struct seq_ctx {
  uint64_t size;
};
static void seq_next(uint64_t i, uint64_t *off, uint64_t *len, void *ctx) {
  struct seq_ctx *s = ctx;
  *off = i * SEQ_CHUNK;
  *len = s->size - *off < SEQ_CHUNK ? s->size - *off : SEQ_CHUNK;
}

struct rand_ctx {
  uint64_t file_size, span;
  struct ferry_rng rng;
};
static void rand_next(uint64_t i, uint64_t *off, uint64_t *len, void *ctx) {
  struct rand_ctx *c = ctx;
  (void)i;
  *off = ferry_rng_u64(&c->rng) % ((c->file_size - c->span) / 32) * 32;
  *len = c->span;
}

// Simulated decode: per token and layer, acquire 8 random experts, wait, touch, release.
static void bench_ecache(struct io_reader *r, uint64_t tokens, uint64_t cache) {
  const uint64_t slice = 884736, ne = 128, k = 8;
  uint64_t per_layer = 3 * ne * slice + 3 * 32;
  uint32_t nl = (uint32_t)((io_reader_file_size(r) - 4096) / per_layer);
  if (!nl) return;
  struct ecache_layer *L = calloc(nl, sizeof *L);
  uint64_t at = 4096 + 160; // 32-aligned, not 4096-aligned, like GGUF tensors
  for (uint32_t l = 0; l < nl; l++) {
    L[l].n_experts = (uint32_t)ne;
    for (int p = 0; p < ECACHE_N_PARTS; p++) {
      L[l].part[p] = (struct ecache_slice){.base = at, .stride = slice, .len = slice};
      at += ne * slice + 32;
    }
  }
  struct budget *b = NULL;
  budget_create(&b, BUDGET_UNLIMITED, 0);
  struct ecache *c = NULL;
  struct ecache_params p = {.n_layers = nl,
                            .layers = L,
                            .reader = r,
                            .budget = b,
                            .host_bytes = cache,
                            .min_slots = (uint32_t)k};
  if (ecache_create(&c, &p)) {
    fprintf(stderr, "bench_io: %s\n", ferry_errmsg());
    free(L);
    budget_destroy(b);
    return;
  }
  struct ferry_rng rng;
  ferry_rng_seed(&rng, 5);
  struct ecache_ref refs[8];
  int32_t ex[8];
  volatile uint8_t sink = 0;
  struct io_stats s0, s1;
  io_reader_stats(r, &s0);
  double t0 = ferry_now_s();
  for (uint64_t t = 0; t < tokens; t++) {
    for (uint32_t l = 0; l < nl; l++) {
      for (uint64_t i = 0; i < k; i++) {
        bool dup;
        do {
          ex[i] = (int32_t)(ferry_rng_u64(&rng) % ne);
          dup = false;
          for (uint64_t j = 0; j < i; j++) dup |= ex[j] == ex[i];
        } while (dup);
      }
      if (ecache_acquire(c, l, (uint32_t)k, ex, refs)) goto out;
      for (uint64_t i = 0; i < k; i++) {
        if (refs[i].state == ECACHE_IN_FLIGHT && ecache_wait(c, &refs[i])) goto out;
        sink ^= refs[i].data[ECACHE_DOWN][slice - 1];
      }
      ecache_release(c, l, (uint32_t)k, refs);
    }
  }
out:;
  double dt = ferry_now_s() - t0;
  io_reader_stats(r, &s1);
  struct ecache_stats st;
  ecache_stats(c, &st);
  struct ecache_counters h = st.tier[ECACHE_HOST];
  uint64_t bytes = s1.bytes_read - s0.bytes_read;
  printf(
      "ecache %u layers x 8 of 128 experts, cache %.2f GiB (%u slots): %.1f ms/token, "
      "%.1f MB/s, hit rate %.1f%% (%llu hits, %llu misses)\n",
      nl, st.capacity_bytes[ECACHE_HOST] / 1073741824.0, st.capacity_slots[ECACHE_HOST],
      dt / tokens * 1e3, bytes / dt / 1e6, 100.0 * h.hits / (h.acquires ? h.acquires : 1),
      (unsigned long long)h.hits, (unsigned long long)h.misses);
  (void)sink;
  ecache_destroy(c);
  budget_destroy(b);
  free(L);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr,
            "usage: bench_io FILE [--create SIZE] [--seq SIZE] [--reads N] "
            "[--span BYTES] [--qd 8,16,32] [--buffered]\n");
    return 2;
  }
  const char *path = argv[1];
  uint64_t create = 0, seq = 0, span = 884736, reads = 2000;
  const char *qds = "1,8,16,32";
  bool buffered = false;
  uint64_t tokens = 0, cache = 1ull << 30;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int rc = 0;
    if (!strcmp(a, "--create") && v)
      rc = ferry_parse_size(v, &create), i++;
    else if (!strcmp(a, "--seq") && v)
      rc = ferry_parse_size(v, &seq), i++;
    else if (!strcmp(a, "--span") && v)
      rc = ferry_parse_size(v, &span), i++;
    else if (!strcmp(a, "--reads") && v)
      reads = strtoull(v, NULL, 10), i++;
    else if (!strcmp(a, "--qd") && v)
      qds = v, i++;
    else if (!strcmp(a, "--buffered"))
      buffered = true;
    else if (!strcmp(a, "--tokens") && v)
      tokens = strtoull(v, NULL, 10), i++;
    else if (!strcmp(a, "--cache") && v)
      rc = ferry_parse_size(v, &cache), i++;
    else
      rc = ferry_fail(-EINVAL, "unknown argument '%s'", a);
    if (rc) {
      fprintf(stderr, "bench_io: %s\n", ferry_errmsg());
      return 2;
    }
  }
  if (create) {
    fprintf(stderr, "writing %s (%llu bytes)...\n", path, (unsigned long long)create);
    if (create_file(path, create)) {
      fprintf(stderr, "bench_io: %s\n", ferry_errmsg());
      return 1;
    }
  }
  uint32_t qd_list[16], n_qd = 0, qd_max = 8;
  for (const char *s = qds; *s && n_qd < 16;) {
    uint32_t q = (uint32_t)strtoul(s, (char **)&s, 10);
    if (q) qd_list[n_qd++] = q, qd_max = q > qd_max ? q : qd_max;
    if (*s == ',')
      s++;
    else if (*s)
      break;
  }
  struct io_reader *r = NULL;
  struct io_reader_opts o = {.queue_depth = 2 * qd_max, .force_buffered = buffered};
  if (io_reader_open(&r, path, &o)) {
    fprintf(stderr, "bench_io: %s\n", ferry_errmsg());
    return 1;
  }
  uint64_t fsize = io_reader_file_size(r);
  if (fsize < span + 4096) {
    fprintf(stderr, "bench_io: %s is too small\n", path);
    return 1;
  }
  uint64_t slot = io_span_max(span > SEQ_CHUNK ? span : SEQ_CHUNK);
  uint8_t *slab = ferry_alloc_aligned(IO_ALIGN, qd_max * slot);
  if (!slab) {
    fprintf(stderr, "bench_io: %s\n", ferry_errmsg());
    return 1;
  }
  memset(slab, 1, qd_max * slot); // fault the pages in outside the timing
  struct iovec *iov = calloc(qd_max, sizeof *iov);
  for (uint32_t i = 0; i < qd_max; i++) iov[i] = (struct iovec){slab + i * slot, slot};
  io_reader_register(r, iov, qd_max);
  struct io_stats st;
  io_reader_stats(r, &st);
  printf("file %s: %.2f GiB, direct=%d registered=%d\n", path, fsize / 1073741824.0, st.direct,
         st.registered);

  uint64_t bytes;
  struct seq_ctx sc = {.size = seq && seq < fsize ? seq : fsize};
  uint64_t n_seq = (sc.size + SEQ_CHUNK - 1) / SEQ_CHUNK;
  double t = run(r, slab, slot, 8, n_seq, seq_next, &sc, &bytes);
  if (t > 0)
    printf("sequential  4 MiB chunks qd 8 : %8.1f MB/s (%llu MB in %.2f s)\n", bytes / t / 1e6,
           (unsigned long long)(bytes / 1000000), t);
  for (uint32_t k = 0; k < n_qd; k++) {
    struct rand_ctx rc = {.file_size = fsize, .span = span};
    ferry_rng_seed(&rc.rng, 7 + k);
    t = run(r, slab, slot, qd_list[k], reads, rand_next, &rc, &bytes);
    if (t > 0)
      printf("random %7llu B spans qd %-3u: %8.1f MB/s (%.0f reads/s, %llu reads)\n",
             (unsigned long long)span, qd_list[k], bytes / t / 1e6, reads / t,
             (unsigned long long)reads);
  }
  if (tokens) {
    io_reader_unregister(r); // the cache registers its own slots
    bench_ecache(r, tokens, cache);
  }
  io_reader_stats(r, &st);
  printf("reader: %llu reads, %.2f GB, %.2f s waiting, direct=%d\n", (unsigned long long)st.reads,
         st.bytes_read / 1e9, st.read_s, st.direct);
  io_reader_close(r);
  free(iov);
  ferry_free_aligned(slab);
  return 0;
}
