// bench/membw.c: RAM read bandwidth, the denominator of the memory-bandwidth bound on
// decode speed (bytes of weights touched per token / bytes per second). T threads each
// sum their slice of a buffer much larger than the caches; the best of R passes is
// reported (the least disturbed by other load), with the median next to it.
//
// Standalone on purpose (no ferry library, not in the bench_* glob), so it measures the
// machine and nothing else:
//   cc -O2 -march=native -pthread bench/membw.c -o /tmp/membw && /tmp/membw [MiB] [threads] [passes]
// Defaults: 1024 MiB, 2 threads, 15 passes (the best of many, as the box is shared). Prints one line per thread count 1..T.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct job {
  const uint64_t *p;
  size_t n; // words
  uint64_t sum;
  pthread_barrier_t *bar;
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Four independent 64-byte accumulators (GCC/Clang vector extension, so the loads are as
// wide as the target allows at -O2) so the loads, not the add chain, set the pace.
typedef uint64_t v8u64 __attribute__((vector_size(64)));

static uint64_t sum_words(const uint64_t *p, size_t n) {
  v8u64 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    v8u64 x0, x1, x2, x3;
    memcpy(&x0, p + i, 64), memcpy(&x1, p + i + 8, 64), memcpy(&x2, p + i + 16, 64),
        memcpy(&x3, p + i + 24, 64);
    a0 += x0, a1 += x1, a2 += x2, a3 += x3;
  }
  v8u64 a = a0 + a1 + a2 + a3;
  uint64_t s = 0;
  for (int k = 0; k < 8; k++) s += a[k];
  for (; i < n; i++) s += p[i];
  return s;
}

static void *worker(void *arg) {
  struct job *j = arg;
  pthread_barrier_wait(j->bar);
  j->sum = sum_words(j->p, j->n);
  pthread_barrier_wait(j->bar);
  return NULL;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 1024;
  int max_t = argc > 2 ? atoi(argv[2]) : 2;
  int passes = argc > 3 ? atoi(argv[3]) : 15;
  if (!mib || max_t < 1 || max_t > 256 || passes < 1 || passes > 1000) {
    fprintf(stderr, "usage: membw [MiB>0] [threads 1..256] [passes 1..1000]\n");
    return 2;
  }
  size_t bytes = mib << 20, words = bytes / 8;
  uint64_t *buf = aligned_alloc(4096, bytes);
  if (!buf) {
    fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
    return 1;
  }
  for (size_t i = 0; i < words; i++)
    buf[i] = i * 0x9E3779B97F4A7C15ull; // touch every page, non-zero
  uint64_t check = 0;
  for (int t = 1; t <= max_t; t++) {
    double *gbs = malloc(sizeof(double) * passes);
    struct job *jobs = calloc(t, sizeof *jobs);
    pthread_t *th = calloc(t, sizeof *th);
    if (!gbs || !jobs || !th) return 1;
    for (int r = 0; r < passes; r++) {
      pthread_barrier_t bar;
      pthread_barrier_init(&bar, NULL, (unsigned)t + 1);
      size_t per = words / t;
      for (int i = 0; i < t; i++) {
        jobs[i] = (struct job){buf + per * i, i == t - 1 ? words - per * i : per, 0, &bar};
        pthread_create(&th[i], NULL, worker, &jobs[i]);
      }
      pthread_barrier_wait(&bar); // all threads started: go
      double t0 = now_s();
      pthread_barrier_wait(&bar); // all sums done
      double dt = now_s() - t0;
      for (int i = 0; i < t; i++) pthread_join(th[i], NULL), check += jobs[i].sum;
      pthread_barrier_destroy(&bar);
      gbs[r] = bytes / dt / 1e9;
    }
    qsort(gbs, passes, sizeof *gbs, cmp_d);
    printf("membw: %zu MiB, %d thread%s: best %.2f GB/s, median %.2f GB/s (%d passes)\n", mib, t,
           t > 1 ? "s" : "", gbs[passes - 1], gbs[passes / 2], passes);
    free(gbs), free(jobs), free(th);
  }
  fprintf(stderr, "(checksum %llx)\n", (unsigned long long)check);
  free(buf);
  return 0;
}
