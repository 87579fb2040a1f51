// tests/gpu/test_ops.c: runs every case of tests/gpu/op_table.h on the CUDA backend and on
// the scalar reference backend ("ref") with identical random inputs and compares the
// outputs by normalised error (and NaN/Inf, and exact router ids); then checks that
// moe_ffn_ids gives moe_ffn's output rows bit for bit on CUDA (stream mode == full mode).
// Before looking for a device it checks that every op has table cases and a CUDA entry,
// so an incomplete table fails even on machines without a GPU; without a device the
// comparison is skipped (exit 77). FERRY_OP_FILTER=substring runs only the cases whose
// label contains it. Each line names the case index, so a failure points at one case.
#include <stdio.h>
#include <string.h>

#include "kernels/cuda/cuda.h"
#include "tests/check.h"
#include "tests/gpu/op_table.h"

static int run_case(int i, const struct op_case *c, struct ferry_backend *ref,
                    struct ferry_backend *gpu, bool *pass) {
  struct op_run *rc_ref = NULL, *rc_gpu = NULL;
  float *want = NULL, *out = NULL;
  int64_t n_ref = 0, n_out = 0;
  const uint64_t seed = 0x5eed0000u + (uint64_t)i;
  double t0 = ferry_now_s();
  int rc = op_run_setup(&rc_ref, c, ref, seed);
  if (!rc) rc = op_run_invoke(rc_ref, NULL);
  if (!rc) rc = op_run_output(rc_ref, &want, &n_ref);
  const double t_ref = ferry_now_s() - t0;
  char label[192];
  op_case_label(c, label, sizeof label);
  if (rc) {
    fprintf(stderr, "case %d (%s): reference failed: %s\n", i, label, ferry_errmsg());
    goto out;
  }
  t0 = ferry_now_s();
  rc = op_run_setup(&rc_gpu, c, gpu, seed);
  if (!rc) rc = op_run_invoke(rc_gpu, NULL);
  if (!rc) rc = op_run_output(rc_gpu, &out, &n_out);
  const double t_gpu = ferry_now_s() - t0;
  if (rc) {
    fprintf(stderr, "case %d (%s): cuda failed: %s\n", i, label, ferry_errmsg());
    goto out;
  }
  bool finite = true;
  const double err = n_out == n_ref ? op_case_error(c, out, want, n_out, &finite) : INFINITY;
  const double tol = op_case_tol(c, gpu);
  *pass = finite && err <= tol;
  printf("%-4s %3d  err %.2e  tol %.0e%s  ref %6.3fs gpu %6.3fs  %s\n", *pass ? "ok" : "FAIL", i,
         err, tol, finite ? "" : "  NaN/Inf", t_ref, t_gpu, label);
  if (!*pass && n_out == n_ref) { // where it differs: the first elements off by more than tol
    double scale = 0;
    for (int64_t j = 0; j < n_ref; j++) scale = fmax(scale, fabs(want[j]));
    int shown = 0;
    for (int64_t j = 0; j < n_ref && shown < 8; j++)
      if (!(fabs(out[j] - want[j]) <= tol * scale)) {
        printf("     [%lld] cuda %.8g ref %.8g\n", (long long)j, out[j], want[j]);
        shown++;
      }
  }
out:
  free(want);
  free(out);
  op_run_destroy(rc_ref);
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

  struct ferry_backend *ref = NULL, *gpu = NULL;
  CHECK_EQ(ferry_backend_create(&ref, "ref", NULL, 0), 0);
  if (ferry_backend_create(&gpu, "cuda", NULL, 0)) {
    fprintf(stderr, "cannot create the CUDA backend: %s\n", ferry_errmsg());
    return 1;
  }
  char desc[256];
  ferry_backend_describe(gpu, desc, sizeof desc);
  printf("test_ops: %d cases, CUDA backend on %s, against the scalar references\n", G_OP_CASES_N,
         desc);

  const char *filter = getenv("FERRY_OP_FILTER");
  int n_pass = 0, n_fail = 0, n_run = 0;
  for (int i = 0; i < G_OP_CASES_N; i++) {
    char label[192];
    op_case_label(&g_op_cases[i], label, sizeof label);
    if (filter && *filter && !strstr(label, filter)) continue;
    n_run++;
    bool pass = false;
    if (run_case(i, &g_op_cases[i], ref, gpu, &pass)) pass = false;
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

  // moe_ffn_ids == moe_ffn, bit for bit, for every expert case and both precisions.
  int n_ident = 0;
  for (int i = 0; i < G_OP_CASES_N; i++) {
    const struct op_case *c = &g_op_cases[i];
    if (c->op != FERRY_OP_MOE_FFN && c->op != FERRY_OP_MOE_FFN_IDS) continue;
    char label[192];
    op_case_label(c, label, sizeof label);
    if (filter && *filter && !strstr(label, filter)) continue;
    int64_t mismatch = -1;
    const int rc = op_moe_bitident(c, gpu, 0xb17u + (uint64_t)i, &mismatch);
    if (rc) fprintf(stderr, "case %d: %s\n", i, ferry_errmsg());
    printf("%-4s %3d  moe_ffn_ids == moe_ffn: %lld of %lld pairs differ  %s\n",
           !rc && mismatch == 0 ? "ok" : "FAIL", i, (long long)mismatch,
           (long long)(c->p[2] * c->p[4]), label);
    CHECK_EQ(rc, 0);
    CHECK_EQ(mismatch, 0);
    n_ident++;
  }
  printf("test_ops: bit identity checked on %d expert cases\n", n_ident);
  ferry_backend_destroy(gpu);
  ferry_backend_destroy(ref);
  CHECK_DONE();
}
