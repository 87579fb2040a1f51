// test_matmul: cpu_matvec / cpu_matmul (fast) and their exact versions against naive
// loops — cpu_vec_dot_ref per row for the fast path, dequantize + double dot for the exact
// path — for every weight type, with and without the thread pool, awkward sizes (row
// counts not multiples of the tiles, m not a multiple of the activation tile, padded
// strides, rows longer than the exact path's dequantization piece).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quants.h"
#include "numa/pool.h"
#include "tests/check.h"

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) abort();
  return p;
}

static const enum ferry_type k_types[] = {FT_F32,  FT_F16,  FT_BF16, FT_Q8_0, FT_Q4_0,
                                          FT_Q2_K, FT_Q3_K, FT_Q4_K, FT_Q5_K, FT_Q6_K};

struct shape {
  int64_t nrows, n, m;
};

static void run_case(struct ferry_pool *pool, enum ferry_type t, struct shape s,
                     struct ferry_rng *r) {
  const struct ferry_type_info *ti = ferry_type_info(t);
  enum ferry_type vt = cpu_vec_dot_type(t);
  size_t rb = ferry_row_bytes(ti, s.n), ab = cpu_act_row_bytes(t, s.n);
  size_t xs = ab + 24; // padded activation stride
  int64_t ldy = s.nrows + 3, ldx = s.n + 5;
  float *wf = xmalloc(s.n * 4), *wd = xmalloc((size_t)s.nrows * s.n * 4);
  float *x = xmalloc((size_t)s.m * ldx * 4);
  uint8_t *w = xmalloc(rb * s.nrows), *xq = xmalloc(xs * s.m);
  float *y = xmalloc((size_t)s.m * ldy * 4), *yv = xmalloc(s.nrows * 4);
  for (int64_t i = 0; i < s.nrows; i++) {
    for (int64_t k = 0; k < s.n; k++) wf[k] = 0.02f * ferry_rng_normal(r);
    cpu_quantize_row(t, wf, w + i * rb, s.n);
    cpu_dequant_row(t, w + i * rb, wd + i * s.n, s.n);
  }
  for (int64_t i = 0; i < s.m; i++) {
    for (int64_t k = 0; k < ldx; k++) x[i * ldx + k] = ferry_rng_normal(r);
    cpu_quantize_act(vt, x + i * ldx, xq + i * xs, s.n);
  }
  // Fast matmul vs reference dots; sentinels in y's padding must survive.
  for (size_t k = 0; k < (size_t)s.m * ldy; k++) y[k] = -777.0f;
  cpu_matmul(pool, t, w, s.nrows, s.n, xq, xs, s.m, y, ldy);
  int bad = 0;
  for (int64_t i = 0; i < s.m; i++) {
    for (int64_t rr = 0; rr < s.nrows; rr++) {
      double mag = 0;
      for (int64_t k = 0; k < s.n; k++) mag += fabs((double)wd[rr * s.n + k] * x[i * ldx + k]);
      float ref = cpu_vec_dot_ref(t, s.n, w + rr * rb, xq + i * xs);
      if (!(fabs(y[i * ldy + rr] - ref) <= 1e-5 * mag)) bad++;
    }
    for (int64_t rr = s.nrows; rr < ldy; rr++) CHECK(y[i * ldy + rr] == -777.0f);
  }
  CHECK_EQ(bad, 0);
  // Matvec equals the first column of the matmul bit for bit: the 4-activation kernels do
  // the single-row kernel's operations, so a token gets the same numbers in prefill and decode.
  cpu_matvec(pool, t, w, s.nrows, s.n, xq, yv);
  int diff = 0;
  for (int64_t rr = 0; rr < s.nrows; rr++) diff += yv[rr] != y[rr];
  CHECK_EQ(diff, 0);

  // Exact: dequantized weights · F32 activations in double.
  cpu_matmul_exact(pool, t, w, s.nrows, s.n, x, ldx, s.m, y, ldy);
  bad = 0;
  for (int64_t i = 0; i < s.m; i++)
    for (int64_t rr = 0; rr < s.nrows; rr++) {
      double d = 0, mag = 0;
      for (int64_t k = 0; k < s.n; k++) {
        d += (double)wd[rr * s.n + k] * x[i * ldx + k];
        mag += fabs((double)wd[rr * s.n + k] * x[i * ldx + k]);
      }
      if (!(fabs(y[i * ldy + rr] - d) <= 1e-7 * mag + fabs(d) * 1e-7)) bad++;
    }
  CHECK_EQ(bad, 0);
  cpu_matvec_exact(pool, t, w, s.nrows, s.n, x, yv);
  diff = 0;
  for (int64_t rr = 0; rr < s.nrows; rr++) diff += yv[rr] != y[rr];
  CHECK_EQ(diff, 0);
  free(wf), free(wd), free(x), free(w), free(xq), free(y), free(yv);
}

int main(void) {
  struct ferry_pool *pool = NULL;
  int rc = ferry_pool_create(&pool, 2);
  CHECK(rc == 0);
  CHECK_EQ(cpu_act_row_bytes(FT_Q4_K, 2048), 8 * 292);
  CHECK_EQ(cpu_act_row_bytes(FT_Q6_K, 768), 3 * 292);
  CHECK_EQ(cpu_act_row_bytes(FT_Q4_0, 2048), 64 * 34);
  CHECK_EQ(cpu_act_row_bytes(FT_F16, 512), 1024);
  CHECK_EQ(cpu_act_row_bytes(FT_BF16, 512), 1024);
  CHECK_EQ(cpu_act_row_bytes(FT_F32, 512), 2048);
  const struct shape shapes[] = {
      {67, 768, 11},      // rows not a multiple of the row block; m spans 2 tiles
      {5, 2048, 1},       // matvec via matmul
      {130, 512, 8},      // exactly one activation tile
      {9, 8192 + 768, 3}, // longer than one exact-path piece
      {1, 256, 5},        // one row: fewer rows than threads
  };
  struct ferry_rng r;
  ferry_rng_seed(&r, 99);
  // Every dispatch level: the matmul's 4-activation kernels exist only on some paths.
  const char *paths[] = {"scalar", "avx2", "avx512"};
  for (int p = 0; p < 3; p++) {
    if (cpu_vec_dot_force(paths[p]) != 0) {
      fprintf(stderr, "SKIP: the %s path is not supported by this CPU: not tested\n", paths[p]);
      continue;
    }
    for (size_t k = 0; k < sizeof k_types / sizeof k_types[0]; k++)
      for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        run_case(NULL, k_types[k], shapes[si], &r);
        if (pool) run_case(pool, k_types[k], shapes[si], &r);
      }
  }
  cpu_vec_dot_force("auto");
  // Empty products touch nothing.
  float sentinel = 3.0f;
  uint8_t wq[144] = {0}, xq8[292] = {0};
  cpu_matvec(pool, FT_Q4_K, wq, 0, 256, xq8, &sentinel);
  cpu_matmul(pool, FT_Q4_K, wq, 1, 256, xq8, 292, 0, &sentinel, 1);
  cpu_matvec_exact(pool, FT_Q4_K, wq, 0, 256, (const float *)xq8, &sentinel);
  CHECK(sentinel == 3.0f);
  ferry_pool_destroy(pool);
  CHECK_DONE();
}
