// kernels/cpu/matmul.c: weight-row × activation products on the CPU, split over rows with
// the numa/ pool. Two families:
//  - fast (cpu_matvec / cpu_matmul): the per-type cpu_vec_dot against activations already
//    in the vec-dot format (llama.cpp's numerics; what decode and prefill normally use);
//    cpu_matmul uses a path's 4-activation kernel where there is one;
//  - exact (cpu_matvec_exact / cpu_matmul_exact): each weight row is dequantized to F32 and
//    dotted with F32 activations accumulating in double, the fixtures' exact mode.
// No allocation per call: the exact path dequantizes into a fixed 32 KiB stack piece
// (rows longer than one piece are processed piece by piece), so there is no length cap and
// no per-thread scratch to manage.
#include <stdatomic.h>
#include <string.h>

#include "base/base.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quants_impl.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// Rows per chunk handed to a worker: keeps chunks of ≥ 32 KiB of weights so waking a
// thread is worth it, and never less than 4 rows.
static int64_t row_grain(size_t row_bytes) {
  int64_t g = (int64_t)(32768 / (row_bytes ? row_bytes : 1));
  return g < 4 ? 4 : g;
}

// Rows are handed out dynamically: each pool worker takes the next chunk of rows from a
// shared counter until none are left. With a static split one late or slowed worker (a
// shared or oversubscribed machine, mixed core types) would hold the whole call up by
// its full share; here the others simply take more chunks. One relaxed atomic per chunk
// of ≥ 32 KiB of weights costs nothing measurable.
struct dyn_rows {
  _Atomic int64_t next;
  int64_t nchunks, chunk, nrows;
  ferry_pool_fn body;
  void *ctx;
};

static void dyn_task(void *vctx, int64_t b, int64_t e, int tid) {
  struct dyn_rows *d = vctx;
  for (;;) {
    int64_t c = atomic_fetch_add_explicit(&d->next, 1, memory_order_relaxed);
    if (c >= d->nchunks) return;
    int64_t r0 = c * d->chunk, r1 = r0 + d->chunk < d->nrows ? r0 + d->chunk : d->nrows;
    d->body(d->ctx, r0, r1, tid);
  }
}

static void run_rows(struct ferry_pool *pool, int64_t nrows, size_t row_bytes, ferry_pool_fn body,
                     void *ctx) {
  if (nrows <= 0) return;
  // About 8 chunks per worker (enough to even out a slow worker), none under 32 KiB.
  int64_t nw = ferry_pool_size(pool), chunk = (nrows + nw * 8 - 1) / (nw * 8);
  if (chunk < row_grain(row_bytes)) chunk = row_grain(row_bytes);
  int64_t nchunks = (nrows + chunk - 1) / chunk;
  if (!pool || nw <= 1 || nchunks <= 1) {
    body(ctx, 0, nrows, 0);
    return;
  }
  struct dyn_rows d = {0, nchunks, chunk, nrows, body, ctx};
  ferry_pool_run(pool, nw < nchunks ? nw : nchunks, 1, dyn_task, &d);
}

size_t cpu_act_row_bytes(enum ferry_type t, int64_t n) {
  const struct ferry_type_info *ti = ferry_type_info(cpu_vec_dot_type(t));
  FERRY_ASSERT(ti && n % ti->blck == 0);
  return (size_t)ferry_row_bytes(ti, (uint64_t)n);
}

static size_t weight_row_bytes(enum ferry_type t, int64_t n) {
  const struct ferry_type_info *ti = ferry_type_info(t);
  FERRY_ASSERT(ti && ti->weight && n > 0 && n % ti->blck == 0);
  return (size_t)ferry_row_bytes(ti, (uint64_t)n);
}

// ---------------------------------------------------------------- fast path

struct mm_ctx {
  cpu_vec_dot_fn dot;
  cpu_vec_dot4_fn dot4; // NULL: no 4-activation kernel for this type/path
  const uint8_t *w;
  size_t rb; // weight row bytes
  int64_t n;
  const uint8_t *xq;
  size_t xs; // activation row stride (bytes)
  int64_t m;
  float *y;
  int64_t ldy;
};

static void matvec_task(void *vctx, int64_t b, int64_t e, int tid) {
  const struct mm_ctx *c = vctx;
  for (int64_t r = b; r < e; r++) c->y[r] = c->dot(c->n, c->w + (size_t)r * c->rb, c->xq);
}

void cpu_matvec(struct ferry_pool *pool, enum ferry_type t, const void *w, int64_t nrows, int64_t n,
                const void *xq, float *y) {
  struct mm_ctx c = {cpu_vec_dot_get(t), NULL, w, weight_row_bytes(t, n), n, xq, 0, 1, y, 0};
  run_rows(pool, nrows, c.rb, matvec_task, &c);
}

// Row blocks of MM_RB weight rows × tiles of MM_MT activation rows: a block (e.g. 16 rows
// of 1152 B for Q4_K 2048) stays in L1/L2 while every activation tile passes over it, so
// weights stream from memory once per call whatever m is.
enum { MM_RB = 16, MM_MT = 8 };

static void matmul_task(void *vctx, int64_t b, int64_t e, int tid) {
  const struct mm_ctx *c = vctx;
  for (int64_t r0 = b; r0 < e; r0 += MM_RB) {
    int64_t r1 = r0 + MM_RB < e ? r0 + MM_RB : e;
    for (int64_t i0 = 0; i0 < c->m; i0 += MM_MT) {
      int64_t i1 = i0 + MM_MT < c->m ? i0 + MM_MT : c->m;
      for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = c->w + (size_t)r * c->rb;
        int64_t i = i0;
        if (c->dot4)
          for (float o[4]; i + 4 <= i1; i += 4) {
            c->dot4(c->n, wr, c->xq + (size_t)i * c->xs, c->xs, o);
            for (int k = 0; k < 4; k++) c->y[(i + k) * c->ldy + r] = o[k];
          }
        for (; i < i1; i++) c->y[i * c->ldy + r] = c->dot(c->n, wr, c->xq + (size_t)i * c->xs);
      }
    }
  }
}

void cpu_matmul(struct ferry_pool *pool, enum ferry_type t, const void *w, int64_t nrows, int64_t n,
                const void *xq, size_t xq_stride, int64_t m, float *y, int64_t ldy) {
  if (m <= 0) return;
  if (m == 1) {
    cpu_matvec(pool, t, w, nrows, n, xq, y);
    return;
  }
  struct mm_ctx c = {cpu_vec_dot_get(t),
                     cpu_vec_dot4_get(t),
                     w,
                     weight_row_bytes(t, n),
                     n,
                     xq,
                     xq_stride,
                     m,
                     y,
                     ldy};
  run_rows(pool, nrows, c.rb, matmul_task, &c);
}

// Batched products: chunks of rows never cross a job; a shared counter hands out chunks
// over all jobs, so one pool call (one barrier) covers e.g. the gate and up products of
// every expert of a decode step.
struct batch_ctx {
  _Atomic int64_t next;
  int n_jobs;
  const int64_t *first;   // [n_jobs + 1] index of each job's first chunk
  const int64_t *chunk;   // [n_jobs] rows per chunk
  const struct mm_ctx *c; // [n_jobs]
  const int64_t *nrows;   // [n_jobs]
};

static void batch_task(void *vctx, int64_t b, int64_t e, int tid) {
  struct batch_ctx *d = vctx;
  int64_t total = d->first[d->n_jobs];
  for (;;) {
    int64_t k = atomic_fetch_add_explicit(&d->next, 1, memory_order_relaxed);
    if (k >= total) return;
    int lo = 0, hi = d->n_jobs - 1; // the job whose chunk range holds k
    while (lo < hi) {
      int mid = (lo + hi + 1) / 2;
      if (d->first[mid] <= k)
        lo = mid;
      else
        hi = mid - 1;
    }
    int64_t r0 = (k - d->first[lo]) * d->chunk[lo];
    int64_t r1 = r0 + d->chunk[lo] < d->nrows[lo] ? r0 + d->chunk[lo] : d->nrows[lo];
    const struct mm_ctx *c = &d->c[lo];
    if (c->m == 1)
      matvec_task((void *)c, r0, r1, tid);
    else
      matmul_task((void *)c, r0, r1, tid);
  }
}

void cpu_matmul_batch(struct ferry_pool *pool, int n_jobs, const struct cpu_mm_job *jobs) {
  if (n_jobs <= 0) return;
  FERRY_ASSERT(n_jobs <= 4096);
  int64_t first[n_jobs + 1], chunk[n_jobs], nrows[n_jobs];
  struct mm_ctx c[n_jobs];
  int64_t nw = pool ? ferry_pool_size(pool) : 1, total = 0;
  for (int j = 0; j < n_jobs; j++) {
    const struct cpu_mm_job *J = &jobs[j];
    size_t rb = weight_row_bytes(J->t, J->n);
    c[j] = (struct mm_ctx){cpu_vec_dot_get(J->t),
                           J->m > 1 ? cpu_vec_dot4_get(J->t) : NULL,
                           J->w,
                           rb,
                           J->n,
                           J->xq,
                           J->xq_stride,
                           J->m,
                           J->y,
                           J->ldy};
    // the same chunking rule as run_rows, so a lone job splits as cpu_matmul would
    int64_t ch = (J->nrows + nw * 8 - 1) / (nw * 8);
    if (ch < row_grain(rb)) ch = row_grain(rb);
    chunk[j] = ch;
    nrows[j] = J->m > 0 ? J->nrows : 0;
    first[j] = total;
    total += (nrows[j] + ch - 1) / ch;
  }
  first[n_jobs] = total;
  struct batch_ctx d = {0, n_jobs, first, chunk, c, nrows};
  if (!pool || nw <= 1 || total <= 1)
    batch_task(&d, 0, 1, 0);
  else
    ferry_pool_run(pool, nw < total ? nw : total, 1, batch_task, &d);
}

// ---------------------------------------------------------------- exact path

// Σ a[i]·b[i] in double. Products of two floats are exact in double, so only the
// summation rounds (at 2^-53): the order of the sum does not matter at F32 precision.
static double dot_f64_scalar(const float *a, const float *b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static double dot_f64_avx2(const float *a, const float *b,
                                                               int64_t n) {
  __m256d s0 = _mm256_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + i)), _mm256_cvtps_pd(_mm_loadu_ps(b + i)),
                         s0);
    s1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + i + 4)),
                         _mm256_cvtps_pd(_mm_loadu_ps(b + i + 4)), s1);
    s2 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + i + 8)),
                         _mm256_cvtps_pd(_mm_loadu_ps(b + i + 8)), s2);
    s3 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + i + 12)),
                         _mm256_cvtps_pd(_mm_loadu_ps(b + i + 12)), s3);
  }
  __m256d s = _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3));
  __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
  double r = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  for (; i < n; i++) r += (double)a[i] * b[i];
  return r;
}
#endif

typedef double (*dot_f64_fn)(const float *, const float *, int64_t);

static dot_f64_fn pick_dot_f64(void) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return dot_f64_avx2;
#endif
  return dot_f64_scalar;
}

// Elements dequantized at a time: a multiple of every block size (256 and 32).
enum { EX_PIECE = 8192 };

struct ex_ctx {
  enum ferry_type t;
  const struct ferry_type_info *ti;
  dot_f64_fn dot;
  const uint8_t *w;
  size_t rb;
  int64_t n;
  const float *x;
  int64_t ldx, m;
  float *y;
  int64_t ldy;
};

static void exact_task(void *vctx, int64_t b, int64_t e, int tid) {
  const struct ex_ctx *c = vctx;
  float buf[EX_PIECE] __attribute__((aligned(64)));
  double acc[MM_MT];
  for (int64_t r = b; r < e; r++) {
    const uint8_t *wr = c->w + (size_t)r * c->rb;
    if (c->t == FT_F32 || c->n <= EX_PIECE) {
      // Whole row at once: dequantize once, dot with every activation row.
      const float *wf = (const float *)wr;
      if (c->t != FT_F32) {
        cpu_dequant_row(c->t, wr, buf, c->n);
        wf = buf;
      }
      for (int64_t i = 0; i < c->m; i++)
        c->y[i * c->ldy + r] = (float)c->dot(wf, c->x + i * c->ldx, c->n);
      continue;
    }
    // Long rows: piece by piece, carrying one double accumulator per activation of a tile.
    for (int64_t i0 = 0; i0 < c->m; i0 += MM_MT) {
      int64_t i1 = i0 + MM_MT < c->m ? i0 + MM_MT : c->m;
      memset(acc, 0, sizeof acc);
      for (int64_t k0 = 0; k0 < c->n; k0 += EX_PIECE) {
        int64_t len = c->n - k0 < EX_PIECE ? c->n - k0 : EX_PIECE;
        cpu_dequant_row(c->t, wr + ferry_row_bytes(c->ti, (uint64_t)k0), buf, len);
        for (int64_t i = i0; i < i1; i++) acc[i - i0] += c->dot(buf, c->x + i * c->ldx + k0, len);
      }
      for (int64_t i = i0; i < i1; i++) c->y[i * c->ldy + r] = (float)acc[i - i0];
    }
  }
}

void cpu_matmul_exact(struct ferry_pool *pool, enum ferry_type t, const void *w, int64_t nrows,
                      int64_t n, const float *x, int64_t ldx, int64_t m, float *y, int64_t ldy) {
  if (m <= 0) return;
  struct ex_ctx c = {
      t, ferry_type_info(t), pick_dot_f64(), w, weight_row_bytes(t, n), n, x, ldx, m, y, ldy};
  run_rows(pool, nrows, c.rb, exact_task, &c);
}

void cpu_matvec_exact(struct ferry_pool *pool, enum ferry_type t, const void *w, int64_t nrows,
                      int64_t n, const float *x, float *y) {
  cpu_matmul_exact(pool, t, w, nrows, n, x, n, 1, y, 1);
}
