// tests/gpu/test_ops.c: runs every case of tests/gpu/op_table.h on the CUDA backend and
// on the CPU reference backend with identical random inputs and compares the outputs by
// normalised error (and NaN/Inf, and exact router ids). Before looking for a device it
// checks that every op has table cases and a CUDA entry, so an incomplete table fails
// even on machines without a GPU; without a device the comparison is skipped (exit 77).
// FERRY_OP_FILTER=substring runs only the cases whose label contains it.
#include <stdio.h>
#include <string.h>

#include "kernels/cuda/cuda.h"
#include "numa/pool.h"
#include "tests/check.h"
#include "tests/gpu/op_table.h"

static int run_case(int i, const struct op_case *c, struct ferry_backend *cpu,
                    struct ferry_backend *gpu, bool *pass) {
  struct op_run *rc_cpu = NULL, *rc_gpu = NULL;
  float *ref = NULL, *out = NULL;
  int64_t n_ref = 0, n_out = 0;
  const uint64_t seed = 0x5eed0000u + (uint64_t)i;
  double t0 = ferry_now_s();
  int rc = op_run_setup(&rc_cpu, c, cpu, seed);
  if (!rc) rc = op_run_invoke(rc_cpu, NULL);
  if (!rc) rc = op_run_output(rc_cpu, &ref, &n_ref);
  const double t_cpu = ferry_now_s() - t0;
  if (rc) {
    fprintf(stderr, "cpu reference failed: %s\n", ferry_errmsg());
    goto out;
  }
  t0 = ferry_now_s();
  rc = op_run_setup(&rc_gpu, c, gpu, seed);
  if (!rc) rc = op_run_invoke(rc_gpu, NULL);
  if (!rc) rc = op_run_output(rc_gpu, &out, &n_out);
  const double t_gpu = ferry_now_s() - t0;
  if (rc) {
    fprintf(stderr, "cuda failed: %s\n", ferry_errmsg());
    goto out;
  }
  bool finite = true;
  const double err = n_out == n_ref ? op_case_error(c, out, ref, n_out, &finite) : INFINITY;
  *pass = finite && err <= c->tol;
  char label[160];
  op_case_label(c, label, sizeof label);
  printf("%-4s %3d  err %.2e  tol %.0e%s  cpu %6.3fs gpu %6.3fs  %s\n", *pass ? "ok" : "FAIL", i,
         err, c->tol, finite ? "" : "  NaN/Inf", t_cpu, t_gpu, label);
out:
  free(ref);
  free(out);
  op_run_destroy(rc_cpu);
  op_run_destroy(rc_gpu);
  return rc;
}

int main(void) {
  // Completeness first: needs no device.
  enum ferry_op missing[FERRY_OP_COUNT];
  const int nm = op_table_missing(missing);
  for (int i = 0; i < nm; i++)
    fprintf(stderr, "op '%s' has no case in tests/gpu/op_table.h\n", ferry_op_name(missing[i]));
  CHECK_EQ(nm, 0);
  const struct ferry_backend_ops *cu = ferry_backend_ops_of(FERRY_BACKEND_CUDA);
  CHECK(cu != NULL);
  for (int op = 0; cu && op < FERRY_OP_COUNT; op++)
    if (!ferry_backend_has_op(cu, (enum ferry_op)op)) {
      fprintf(stderr, "op '%s' has no CUDA entry\n", ferry_op_name((enum ferry_op)op));
      CHECK(false);
    }
  if (g_check_failures) CHECK_DONE();

  const int ndev = ferry_backend_cuda_devices();
  if (ndev <= 0) SKIP("no CUDA device: %d op cases not compared", G_OP_CASES_N);

  struct ferry_pool *pool = NULL;
  CHECK_EQ(ferry_pool_create(&pool, 0), 0);
  struct ferry_backend *cpu = NULL, *gpu = NULL;
  CHECK_EQ(ferry_backend_create(&cpu, "cpu", pool, 0), 0);
  if (ferry_backend_create(&gpu, "cuda", NULL, 0)) {
    fprintf(stderr, "cannot create the CUDA backend: %s\n", ferry_errmsg());
    return 1;
  }
  char desc[256];
  cuda_ctx_describe((const struct cuda_ctx *)gpu->impl, desc, sizeof desc);
  printf("test_ops: %d cases, CUDA backend on %s\n", G_OP_CASES_N, desc);

  const char *filter = getenv("FERRY_OP_FILTER");
  int n_pass = 0, n_fail = 0, n_run = 0;
  for (int i = 0; i < G_OP_CASES_N; i++) {
    char label[160];
    op_case_label(&g_op_cases[i], label, sizeof label);
    if (filter && *filter && !strstr(label, filter)) continue;
    n_run++;
    bool pass = false;
    if (run_case(i, &g_op_cases[i], cpu, gpu, &pass)) pass = false;
    if (pass)
      n_pass++;
    else {
      n_fail++;
      fprintf(stderr, "%s:%d: case %d failed: %s\n", __FILE__, __LINE__, i, label);
      g_check_failures++;
    }
  }
  printf("test_ops: %d passed, %d failed, %d run of %d cases\n", n_pass, n_fail, n_run,
         G_OP_CASES_N);
  ferry_backend_destroy(gpu);
  ferry_backend_destroy(cpu);
  ferry_pool_destroy(pool);
  CHECK_DONE();
}
