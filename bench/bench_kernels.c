// bench_kernels: weight bandwidth of cpu_matvec per format and dot path at the
// Qwen3-30B-A3B decode shapes (expert gate/up 768×2048, expert down 2048×768, output
// 151936×2048), 1 thread and the pool, printed next to the machine's measured read and
// memcpy bandwidth. Expert-sized matrices fit in cache, so the bench cycles through enough
// distinct copies (≥ 256 MiB) that every call streams its weights from DRAM, as decode
// does with many experts. Weights are real quantized rows (a set of 64 rows replicated).
//
// --hot instead times a 128-row matrix that stays in L2: the kernels' compute ceiling.
// usage: bench_kernels [--quick] [--hot] [--threads N] [--formats q4_K,q6_K,...] [--paths scalar,avx2,avx512]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quants.h"
#include "numa/pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static double g_min_time = 0.3;
static int g_hot; // --hot: one small matrix kept in L2 (kernel compute speed, no DRAM)

// ---- memory bandwidth
struct rd_ctx {
  const uint8_t *buf;
  size_t bytes;
  double *sums;
};

#if defined(__x86_64__)
__attribute__((target("avx2"))) static double read_chunk(const uint8_t *p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 128 <= n; i += 128) {
    a0 = _mm256_xor_si256(a0, _mm256_load_si256((const __m256i *)(p + i)));
    a1 = _mm256_xor_si256(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
    a2 = _mm256_xor_si256(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
    a3 = _mm256_xor_si256(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
  }
  __m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
  return (double)_mm256_extract_epi64(a, 0);
}
#else
static double read_chunk(const uint8_t *p, size_t n) {
  uint64_t s = 0;
  for (size_t i = 0; i + 8 <= n; i += 8) s ^= *(const uint64_t *)(p + i);
  return (double)s;
}
#endif

enum { RD_CHUNK = 1 << 20 };

static void read_task(void *vc, int64_t b, int64_t e, int tid) {
  struct rd_ctx *c = vc;
  double s = 0;
  for (int64_t i = b; i < e; i++) s += read_chunk(c->buf + (size_t)i * RD_CHUNK, RD_CHUNK);
  c->sums[tid] += s;
}

struct cp_ctx {
  uint8_t *dst;
  const uint8_t *src;
};
static void copy_task(void *vc, int64_t b, int64_t e, int tid) {
  struct cp_ctx *c = vc;
  memcpy(c->dst + (size_t)b * RD_CHUNK, c->src + (size_t)b * RD_CHUNK, (size_t)(e - b) * RD_CHUNK);
}

static void bench_memory(struct ferry_pool *pool, int threads) {
  size_t bytes = (size_t)512 << 20;
  uint8_t *a = ferry_alloc_aligned(4096, bytes), *b = ferry_alloc_aligned(4096, bytes);
  if (!a || !b) {
    fprintf(stderr, "bench_kernels: out of memory\n");
    exit(1);
  }
  memset(a, 1, bytes), memset(b, 2, bytes);
  double sums[256] = {0};
  struct rd_ctx rc = {a, bytes, sums};
  int64_t nchunks = (int64_t)(bytes / RD_CHUNK);
  double rd = 0, cp = 0; // best pass, GB/s
  double t0 = ferry_now_s();
  for (int it = 0; it < 2 || ferry_now_s() - t0 < g_min_time; it++) {
    double c0 = ferry_now_s();
    ferry_pool_run(pool, nchunks, 1, read_task, &rc);
    double g = (double)bytes / (ferry_now_s() - c0) / 1e9;
    if (g > rd) rd = g;
  }
  struct cp_ctx cc = {b, a};
  t0 = ferry_now_s();
  for (int it = 0; it < 2 || ferry_now_s() - t0 < g_min_time; it++) {
    double c0 = ferry_now_s();
    ferry_pool_run(pool, nchunks, 1, copy_task, &cc);
    double g = (double)bytes / (ferry_now_s() - c0) / 1e9;
    if (g > cp) cp = g;
  }
  printf(
      "memory   threads %d: read %.1f GB/s, memcpy %.1f GB/s (read+write bytes %.1f GB/s), best "
      "pass%s\n",
      threads, rd, cp, 2 * cp, sums[0] == 12345.0 ? " " : "");
  ferry_free_aligned(a), ferry_free_aligned(b);
}

// ---- matvec
struct shape {
  const char *name;
  int64_t rows, n;
};

static void bench_matvec(struct ferry_pool *pool, int threads, enum ferry_type t, const char *path,
                         struct shape s) {
  const struct ferry_type_info *ti = ferry_type_info(t);
  size_t rb = ferry_row_bytes(ti, s.n), mat = rb * s.rows;
  size_t want = (size_t)256 << 20;
  if (g_hot) s.rows = 128, s.name = s.n == 2048 ? "hot 128x2048" : "hot 128x768", mat = rb * s.rows;
  int copies = g_hot || mat >= want ? 1 : (int)((want + mat - 1) / mat);
  uint8_t *w = ferry_alloc_aligned(64, mat * copies);
  if (!w) {
    fprintf(stderr, "bench_kernels: out of memory\n");
    exit(1);
  }
  // 64 distinct quantized rows, replicated.
  struct ferry_rng r;
  ferry_rng_seed(&r, 5);
  float *x = malloc(s.n * 4), *y = malloc(s.rows * 4);
  for (int k = 0; k < 64; k++) {
    for (int64_t i = 0; i < s.n; i++) x[i] = 0.02f * ferry_rng_normal(&r);
    cpu_quantize_row(t, x, w + k * rb, s.n);
  }
  for (size_t off = 64 * rb; off < mat * copies; off += rb)
    memcpy(w + off, w + (off / rb % 64) * rb, rb);
  for (int64_t i = 0; i < s.n; i++) x[i] = ferry_rng_normal(&r);
  void *xq = malloc(cpu_act_row_bytes(t, s.n));
  cpu_quantize_act(cpu_vec_dot_type(t), x, xq, s.n);
  cpu_vec_dot_force(path);
  // Best single call as well as the mean: on a shared machine the best call is the
  // closer estimate of what the kernel and memory can do.
  int it = 0;
  double t0 = ferry_now_s(), el, best = 1e30;
  do {
    double c0 = ferry_now_s();
    cpu_matvec(pool, t, w + (size_t)(it % copies) * mat, s.rows, s.n, xq, y);
    double c1 = ferry_now_s() - c0;
    if (c1 < best) best = c1;
    it++;
  } while ((el = ferry_now_s() - t0) < g_min_time || it < 3);
  printf("matvec   %-5s %-6s threads %d %-18s best %7.2f GB/s  mean %7.2f GB/s  %9.1f us/call\n",
         ti->name, cpu_vec_dot_path(t), threads, s.name, (double)mat / best / 1e9,
         (double)mat * it / el / 1e9, el / it * 1e6);
  fflush(stdout);
  free(x), free(y), free(xq);
  ferry_free_aligned(w);
}

static int in_list(const char *list, const char *name) {
  if (!list) return 1;
  size_t n = strlen(name);
  for (const char *p = list; (p = strstr(p, name)); p += n)
    if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == 0)) return 1;
  return 0;
}

int main(int argc, char **argv) {
  const char *formats = NULL, *paths = "scalar,avx2,avx512";
  int threads = 2;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick"))
      g_min_time = 0.1;
    else if (!strcmp(argv[i], "--hot"))
      g_hot = 1;
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--formats") && i + 1 < argc)
      formats = argv[++i];
    else if (!strcmp(argv[i], "--paths") && i + 1 < argc)
      paths = argv[++i];
    else {
      fprintf(stderr,
              "usage: %s [--quick] [--hot] [--threads N] [--formats q4_K,...] [--paths "
              "scalar,avx2,avx512]\n",
              argv[0]);
      return 2;
    }
  }
  struct ferry_pool *pool = NULL;
  if (threads > 1 && ferry_pool_create(&pool, threads) != 0) {
    fprintf(stderr, "bench_kernels: %s\n", ferry_errmsg());
    return 1;
  }
  if (!g_hot) {
    bench_memory(NULL, 1);
    if (pool) bench_memory(pool, ferry_pool_size(pool));
  }
  const enum ferry_type types[] = {FT_Q4_K, FT_Q6_K, FT_Q8_0, FT_Q5_K, FT_Q3_K,
                                   FT_Q2_K, FT_Q4_0, FT_F16,  FT_BF16, FT_F32};
  const struct shape shapes[] = {{"gate 768x2048", 768, 2048},
                                 {"down 2048x768", 2048, 768},
                                 {"output 151936x2048", 151936, 2048}};
  const char *pl[] = {"scalar", "avx2", "avx512"};
  for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
    if (!in_list(formats, ferry_type_info(types[k])->name)) continue;
    for (int p = 0; p < 3; p++) {
      if (!in_list(paths, pl[p]) || cpu_vec_dot_force(pl[p]) != 0) continue;
      // A path that supplies nothing of its own for this type repeats a lower one: skip.
      if (strcmp(cpu_vec_dot_path(types[k]), pl[p])) continue;
      for (size_t si = 0; si < (g_hot ? 2 : sizeof shapes / sizeof shapes[0]); si++) {
        bench_matvec(NULL, 1, types[k], pl[p], shapes[si]);
        if (pool) bench_matvec(pool, ferry_pool_size(pool), types[k], pl[p], shapes[si]);
      }
    }
  }
  ferry_pool_destroy(pool);
  return 0;
}
