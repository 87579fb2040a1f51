// tests/unit/test_matmul_batch.c: cpu_matmul_batch must give, bit for bit, what
// cpu_matmul gives for each product alone (the engine batches a layer's experts and
// relies on batching not changing results), with and without a thread pool.
#include <string.h>

#include "base/base.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quants.h"
#include "numa/pool.h"
#include "tests/check.h"

enum { N_JOBS = 7 };

int main(void) {
  struct ferry_rng r;
  ferry_rng_seed(&r, 2024);
  enum ferry_type types[N_JOBS] = {FT_Q4_K, FT_Q6_K, FT_Q8_0, FT_Q4_K, FT_F32, FT_Q6_K, FT_BF16};
  int64_t nrows[N_JOBS] = {77, 256, 33, 1, 50, 129, 40},
          n[N_JOBS] = {512, 256, 96, 768, 40, 512, 64};
  int64_t ms[N_JOBS] = {1, 3, 5, 2, 1, 8, 4};
  struct cpu_mm_job jobs[N_JOBS];
  void *w[N_JOBS], *xq[N_JOBS];
  float *y[N_JOBS], *ref[N_JOBS];
  for (int j = 0; j < N_JOBS; j++) {
    const struct ferry_type_info *ti = ferry_type_info(types[j]);
    size_t rb = ferry_row_bytes(ti, n[j]), ab = cpu_act_row_bytes(types[j], n[j]);
    w[j] = malloc(rb * nrows[j]);
    xq[j] = malloc(ab * ms[j]);
    y[j] = calloc(nrows[j] * ms[j], sizeof(float));
    ref[j] = calloc(nrows[j] * ms[j], sizeof(float));
    float *row = malloc(sizeof(float) * n[j]);
    for (int64_t i = 0; i < nrows[j]; i++) {
      for (int64_t k = 0; k < n[j]; k++) row[k] = ferry_rng_normal(&r);
      cpu_quantize_row(types[j], row, (uint8_t *)w[j] + i * rb, n[j]);
    }
    for (int64_t i = 0; i < ms[j]; i++) {
      for (int64_t k = 0; k < n[j]; k++) row[k] = ferry_rng_normal(&r);
      cpu_quantize_act(cpu_vec_dot_type(types[j]), row, (uint8_t *)xq[j] + i * ab, n[j]);
    }
    free(row);
    jobs[j] = (struct cpu_mm_job){types[j], w[j], nrows[j], n[j], xq[j], ab, ms[j], y[j], nrows[j]};
    cpu_matmul(NULL, types[j], w[j], nrows[j], n[j], xq[j], ab, ms[j], ref[j], nrows[j]);
  }
  struct ferry_pool *pool = NULL;
  CHECK_EQ(ferry_pool_create(&pool, 2), 0);
  struct ferry_pool *pools[2] = {NULL, pool};
  for (int pi = 0; pi < 2; pi++) {
    for (int j = 0; j < N_JOBS; j++) memset(y[j], 0xff, sizeof(float) * nrows[j] * ms[j]);
    cpu_matmul_batch(pools[pi], N_JOBS, jobs);
    for (int j = 0; j < N_JOBS; j++) {
      CHECK(!memcmp(y[j], ref[j], sizeof(float) * nrows[j] * ms[j]));
      bool nonzero = false;
      for (int64_t i = 0; i < nrows[j] * ms[j]; i++) nonzero |= ref[j][i] != 0;
      CHECK(nonzero);
    }
  }
  ferry_pool_destroy(pool);
  for (int j = 0; j < N_JOBS; j++) free(w[j]), free(xq[j]), free(y[j]), free(ref[j]);
  CHECK_DONE();
}
