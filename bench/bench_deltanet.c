// bench/bench_deltanet.c: speed of the Gated DeltaNet recurrence at the Qwen3-Next shape
// (Hk 16, Hv 32, dk = dv = 128): prefill by the exact recurrence vs the chunked WY form
// (chunk 32/64/128), and the one-token decode step. The engine uses chunked prefill only
// if it wins here.
// Usage: bench_deltanet [T=512] [threads=1] [reps=5] [path=auto|base|avx2]
// (threads > 1 uses a ferry_pool; path forces the kernel ISA, see cpu_delta_force)
// Prints one line per variant: best-of-reps milliseconds (thread CPU time with one
// thread, wall time with a pool), tokens/s, and the max relative
// difference of the chunked output from the recurrent one.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/base.h"
#include "kernels/cpu/deltanet.h"
#include "numa/pool.h"

enum { HK = 16, HV = 32, DK = 128, DV = 128 };

// With one thread, time the calling thread's CPU time: the machines this runs on are
// often shared, and CPU time is much less disturbed by other processes than wall time.
static int g_cpu_clock;
static double now_s(void) {
  if (!g_cpu_clock) return ferry_now_s();
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *alloc_f(int64_t n) {
  float *p = ferry_alloc_aligned(64, (size_t)n * sizeof(float));
  if (!p) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  return p;
}

int main(int argc, char **argv) {
  int64_t T = argc > 1 ? atoll(argv[1]) : 512;
  int threads = argc > 2 ? atoi(argv[2]) : 1;
  int reps = argc > 3 ? atoi(argv[3]) : 5;
  const char *path = argc > 4 ? argv[4] : "auto";
  if (T < 1 || threads < 1 || reps < 1) {
    fprintf(stderr, "usage: bench_deltanet [T>=1] [threads>=1] [reps>=1]\n");
    return 2;
  }
  if (cpu_delta_force(path) != 0) {
    fprintf(stderr, "path %s not available on this CPU\n", path);
    return 1;
  }
  g_cpu_clock = threads == 1;
  struct ferry_pool *pool = NULL;
  if (threads > 1 && ferry_pool_create(&pool, threads) != 0) {
    fprintf(stderr, "pool: %s\n", ferry_errmsg());
    return 1;
  }
  struct ferry_rng rng;
  ferry_rng_seed(&rng, 7);
  const int64_t ld = 2 * HK * DK + HV * DV; // conv output row [q | k | v], read in place
  const int64_t no = T * HV * DV, ns = (int64_t)HV * DK * DV;
  float *row = alloc_f(T * ld), *beta = alloc_f(T * HV), *g = alloc_f(T * HV),
        *dec = alloc_f(T * HV), *S0 = alloc_f(ns), *S = alloc_f(ns), *o_rec = alloc_f(no),
        *o = alloc_f(no);
  for (int64_t i = 0; i < T * ld; i++) row[i] = ferry_rng_normal(&rng);
  for (int64_t t = 0; t < T; t++) {
    cpu_l2norm_heads(row + t * ld, HK, DK, 1e-6f, 1.0f / sqrtf((float)DK));
    cpu_l2norm_heads(row + t * ld + HK * DK, HK, DK, 1e-6f, 1.0f);
  }
  for (int64_t i = 0; i < T * HV; i++) {
    beta[i] = ferry_rng_uniform(&rng);
    g[i] = -0.5f * ferry_rng_uniform(&rng);
    dec[i] = expf(g[i]);
  }
  for (int64_t i = 0; i < ns; i++) S0[i] = 0.1f * ferry_rng_normal(&rng);
  const float *q = row, *k = row + HK * DK, *v = row + 2 * HK * DK;

  printf("deltanet Hk=%d Hv=%d dk=%d dv=%d T=%lld threads=%d path=%s (best of %d, %s time)\n", HK,
         HV, DK, DV, (long long)T, threads, path, reps, g_cpu_clock ? "thread CPU" : "wall");
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    memcpy(S, S0, ns * sizeof(float));
    double t0 = now_s();
    cpu_delta_recurrent(pool, o_rec, HV * DV, S, q, ld, k, ld, v, ld, beta, dec, T, HK, HV, DK, DV);
    double dt = now_s() - t0;
    if (dt < best) best = dt;
  }
  printf("  recurrent prefill     %9.2f ms  %9.0f tok/s\n", best * 1e3, T / best);

  const int64_t chunks[] = {32, 64, 128};
  for (int c = 0; c < 3; c++) {
    best = 1e30;
    for (int r = 0; r < reps; r++) {
      memcpy(S, S0, ns * sizeof(float));
      double t0 = now_s();
      if (cpu_delta_chunked(pool, o, HV * DV, S, q, ld, k, ld, v, ld, beta, g, T, HK, HV, DK, DV,
                            chunks[c]) != 0) {
        fprintf(stderr, "chunked: %s\n", ferry_errmsg());
        return 1;
      }
      double dt = now_s() - t0;
      if (dt < best) best = dt;
    }
    double md = 0, mr = 0;
    for (int64_t i = 0; i < no; i++) {
      md = fmax(md, fabs((double)o[i] - o_rec[i]));
      mr = fmax(mr, fabs((double)o_rec[i]));
    }
    printf("  chunked prefill C=%-3lld %9.2f ms  %9.0f tok/s  rel diff %.2g\n",
           (long long)chunks[c], best * 1e3, T / best, md / mr);
  }

  // decode: one token at a time (state carried), per-token latency of one layer
  best = 1e30;
  for (int r = 0; r < reps; r++) {
    memcpy(S, S0, ns * sizeof(float));
    int64_t n = T < 64 ? T : 64;
    double t0 = now_s();
    for (int64_t t = 0; t < n; t++)
      cpu_delta_step_mt(pool, o + t * HV * DV, S, q + t * ld, k + t * ld, v + t * ld, beta + t * HV,
                        dec + t * HV, HK, HV, DK, DV);
    double dt = (now_s() - t0) / (double)n;
    if (dt < best) best = dt;
  }
  printf("  decode step           %9.1f us/token/layer\n", best * 1e6);
  // the other per-token ops of the mixer (single-threaded kernels)
  {
    const int64_t C = ld, K = 4;
    float *w = alloc_f(C * K), *cst = alloc_f((K - 1) * C), *y = alloc_f(T * C), *z = alloc_f(no);
    for (int64_t i = 0; i < C * K; i++) w[i] = 0.3f * ferry_rng_normal(&rng);
    for (int64_t i = 0; i < no; i++) z[i] = ferry_rng_normal(&rng);
    memset(cst, 0, (K - 1) * C * sizeof(float));
    double b_rows = 1e30, b_step = 1e30, b_norm = 1e30;
    for (int r = 0; r < reps; r++) {
      double t0 = now_s();
      cpu_ssm_conv_rows(y, cst, row, w, T, C, K, 1);
      double t1 = now_s();
      for (int64_t t = 0; t < T; t++) cpu_ssm_conv_step(y + t * C, cst, row + t * C, w, C, K, 1);
      double t2 = now_s();
      cpu_gated_rmsnorm_heads(o, o_rec, z, w, T * HV, DV, 1e-6f);
      double t3 = now_s();
      b_rows = fmin(b_rows, t1 - t0), b_step = fmin(b_step, (t2 - t1) / T);
      b_norm = fmin(b_norm, t3 - t2);
    }
    printf("  conv+silu prefill     %9.2f ms  (C=%lld, K=4)\n", b_rows * 1e3, (long long)C);
    printf("  conv+silu step        %9.1f us/token/layer\n", b_step * 1e6);
    printf("  gated rmsnorm         %9.2f ms  (T x %d heads)\n", b_norm * 1e3, HV);
    ferry_free_aligned(w), ferry_free_aligned(cst), ferry_free_aligned(y), ferry_free_aligned(z);
  }
  ferry_pool_destroy(pool);
  return 0;
}
