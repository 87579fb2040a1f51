// bench/bench_cuda.c: times every case of the shared op table (tests/gpu/op_table.h) on
// the CUDA backend with CUDA events, and prints microseconds per call and effective
// bandwidth (all operand bytes / time; for the mat-vecs that is the weight-streaming
// rate that bounds decode). With --cpu it also times the CPU reference backend.
// Usage: bench_cuda [--cpu] [--filter SUBSTRING] [--min-ms MS]
// Without CUDA support or a device it says so and exits 0 (it is not a test).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "numa/pool.h"
#include "tests/gpu/op_table.h"

static int time_case(struct ferry_backend *be, const struct op_case *c, double min_ms,
                     double *us_out, double *bytes_out) {
  struct op_run *r = NULL;
  struct ferry_stream *s = NULL;
  struct ferry_event *e0 = NULL, *e1 = NULL;
  int rc = op_run_setup(&r, c, be, 1234);
  if (!rc) rc = be->ops.stream_create(be, &s);
  if (!rc) rc = be->ops.event_create(be, &e0);
  if (!rc) rc = be->ops.event_create(be, &e1);
  for (int i = 0; !rc && i < 2; i++) rc = op_run_invoke(r, s); // warm-up (scratch, caches)
  if (!rc) rc = be->ops.stream_sync(be, s);
  int iters = 1;
  double us = 0;
  while (!rc) {
    const double t0 = ferry_now_s();
    rc = be->ops.event_record(be, e0, s);
    for (int i = 0; !rc && i < iters; i++) rc = op_run_invoke(r, s);
    if (!rc) rc = be->ops.event_record(be, e1, s);
    if (!rc) rc = be->ops.event_sync(be, e1);
    if (rc) break;
    float ms = be->ops.event_elapsed_ms(be, e0, e1);
    if (ms < 0) ms = (float)((ferry_now_s() - t0) * 1e3); // CPU: no event timing
    if (ms >= min_ms || iters >= 1 << 16) {
      us = ms * 1e3 / iters;
      break;
    }
    const int grow = ms > 0 ? (int)(min_ms / ms) + 1 : 16;
    iters *= grow < 2 ? 2 : grow > 16 ? 16 : grow;
  }
  *us_out = us;
  *bytes_out = r ? op_run_bytes(r) : 0;
  be->ops.event_destroy(be, e0);
  be->ops.event_destroy(be, e1);
  be->ops.stream_destroy(be, s);
  op_run_destroy(r);
  return rc;
}

int main(int argc, char **argv) {
  bool with_cpu = false;
  const char *filter = NULL;
  double min_ms = 50;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--cpu"))
      with_cpu = true;
    else if (!strcmp(argv[i], "--filter") && i + 1 < argc)
      filter = argv[++i];
    else if (!strcmp(argv[i], "--min-ms") && i + 1 < argc)
      min_ms = atof(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--cpu] [--filter SUBSTRING] [--min-ms MS]\n", argv[0]);
      return 2;
    }
  }
  struct ferry_backend *gpu = NULL, *cpu = NULL;
  struct ferry_pool *pool = NULL;
  if (ferry_backend_create(&gpu, "cuda", NULL, 0)) {
    fprintf(stderr, "bench_cuda: %s; nothing to time\n", ferry_errmsg());
    return 0;
  }
  if (with_cpu && (ferry_pool_create(&pool, 0) || ferry_backend_create(&cpu, "cpu", pool, 0))) {
    fprintf(stderr, "bench_cuda: %s\n", ferry_errmsg());
    return 1;
  }
  printf("%-4s %12s %9s %12s  %s\n", "case", "cuda us", "GB/s", with_cpu ? "cpu us" : "", "op");
  int failed = 0;
  for (int i = 0; i < G_OP_CASES_N; i++) {
    const struct op_case *c = &g_op_cases[i];
    char label[160];
    op_case_label(c, label, sizeof label);
    if (filter && !strstr(label, filter)) continue;
    double us = 0, bytes = 0, us_cpu = 0, b2;
    if (time_case(gpu, c, min_ms, &us, &bytes)) {
      fprintf(stderr, "case %d (%s): %s\n", i, label, ferry_errmsg());
      failed++;
      continue;
    }
    if (cpu && time_case(cpu, c, min_ms, &us_cpu, &b2)) us_cpu = -1;
    char cpu_col[32] = "";
    if (cpu) snprintf(cpu_col, sizeof cpu_col, "%12.1f", us_cpu);
    printf("%-4d %12.2f %9.1f %12s  %s\n", i, us, us > 0 ? bytes / (us * 1e3) : 0.0, cpu_col,
           label);
    fflush(stdout);
  }
  ferry_backend_destroy(cpu);
  ferry_backend_destroy(gpu);
  ferry_pool_destroy(pool);
  return failed ? 1 : 0;
}
