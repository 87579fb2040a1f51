// bench/bench_cuda.c: times every case of the shared op table (tests/gpu/op_table.h) on
// the CUDA backend with CUDA events and prints microseconds per call and the bandwidth of
// the bytes the op touches (op_run_bytes: only the experts a grouped product uses, the
// cache rows attention reads, ...), next to the device's own copy bandwidth measured in
// the same run (a large device-to-device cudaMemcpy: bytes read + written / time), so
// each line says what fraction of the achievable rate the op reaches. For the mat-vecs
// that is the weight-streaming rate that bounds decode. With --cpu it also times the CPU
// backend ("cpu", the engine's fast kernels).
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
  for (int i = 0; !rc && i < 2; i++) rc = op_run_invoke(r, s); // warm-up (caches, modules)
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

// Device copy bandwidth in GB/s: a 1 GiB device-to-device copy, best of 10.
static double copy_bandwidth(struct ferry_backend *be) {
  const size_t bytes = (size_t)1 << 30;
  void *a = NULL, *b = NULL;
  struct ferry_stream *s = NULL;
  struct ferry_event *e0 = NULL, *e1 = NULL;
  double best = 0;
  int rc = be->ops.mem_alloc(be, &a, bytes);
  if (!rc) rc = be->ops.mem_alloc(be, &b, bytes);
  if (!rc) rc = be->ops.stream_create(be, &s);
  if (!rc) rc = be->ops.event_create(be, &e0);
  if (!rc) rc = be->ops.event_create(be, &e1);
  if (!rc) rc = be->ops.memset0(be, a, bytes, s);
  for (int i = 0; !rc && i < 11; i++) {
    rc = be->ops.event_record(be, e0, s);
    if (!rc) rc = be->ops.copy_d2d(be, b, a, bytes, s);
    if (!rc) rc = be->ops.event_record(be, e1, s);
    if (!rc) rc = be->ops.event_sync(be, e1);
    const float ms = rc ? -1 : be->ops.event_elapsed_ms(be, e0, e1);
    const double gbs = ms > 0 ? 2.0 * (double)bytes / (ms * 1e6) : 0;
    if (i > 0 && gbs > best) best = gbs; // the first copy warms up
  }
  if (rc) fprintf(stderr, "bench_cuda: copy bandwidth: %s\n", ferry_errmsg());
  be->ops.event_destroy(be, e0);
  be->ops.event_destroy(be, e1);
  be->ops.stream_destroy(be, s);
  be->ops.mem_free(be, a);
  be->ops.mem_free(be, b);
  return best;
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
  char desc[256];
  ferry_backend_describe(gpu, desc, sizeof desc);
  const double copy_gbs = copy_bandwidth(gpu);
  printf("bench_cuda: %s; device copy bandwidth %.1f GB/s (1 GiB d2d, read + write)\n", desc,
         copy_gbs);
  printf("%-4s %12s %9s %6s %12s  %s\n", "case", "cuda us", "GB/s", "copy%",
         with_cpu ? "cpu us" : "", "op");
  int failed = 0;
  for (int i = 0; i < G_OP_CASES_N; i++) {
    const struct op_case *c = &g_op_cases[i];
    char label[192];
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
    const double gbs = us > 0 ? bytes / (us * 1e3) : 0.0;
    printf("%-4d %12.2f %9.1f %5.0f%% %12s  %s\n", i, us, gbs,
           copy_gbs > 0 ? 100.0 * gbs / copy_gbs : 0.0, cpu_col, label);
    fflush(stdout);
  }
  ferry_backend_destroy(cpu);
  ferry_backend_destroy(gpu);
  ferry_pool_destroy(pool);
  return failed ? 1 : 0;
}
