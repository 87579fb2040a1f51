// tests/unit/test_ops_table.c: CPU-side checks of the op interface (no GPU needed):
// - completeness: every op has a CPU entry, a CUDA entry when CUDA is built, and cases in
//   the shared op table (tests/gpu/op_table.h);
// - the table on the "cpu" backend (the engine's fast kernels) against "ref" (the scalar
//   references) with each case's tolerance (FAST products get the quantized-activation
//   tolerance): a wrong CPU kernel fails here, in CI, without a GPU. Cases too large for
//   a quick run (the LM head, pp512 products; a lower cap under ASan) are skipped and
//   counted;
// - moe_ffn_ids == moe_ffn bit for bit on the CPU backend (stream mode == full mode);
// - the scalar reference ops against hand-computed results on small cases (RoPE pairs
//   (i, i+n_rot/2), partial rotary, QK-norm per head, router ties -> lower index and the
//   clamped renormalisation, causal attention with GQA over F32/F16/Q8_0 caches);
// - with CUDA built, the CUDA format decoders and mat-vec lane schedule replayed on the
//   host against the CPU reference for every weight type, and the CUDA scratch plan.
#include <errno.h>
#include <math.h>
#include <string.h>

#include "kernels/cpu/matmul.h"
#include "numa/pool.h"
#include "tests/check.h"
#include "tests/gpu/op_table.h"
#ifdef FERRY_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

// Every non-op entry (memory, copies, streams, events) is set.
static void check_runtime_entries(const struct ferry_backend_ops *o, const char *name) {
#define ENTRY(f)                                      \
  if (!o->f) {                                        \
    fprintf(stderr, "%s backend: no " #f "\n", name); \
    CHECK(false);                                     \
  }
  ENTRY(mem_alloc);
  ENTRY(mem_free);
  ENTRY(copy_h2d);
  ENTRY(copy_d2h);
  ENTRY(copy_d2d);
  ENTRY(memset0);
  ENTRY(host_alloc);
  ENTRY(host_free);
  ENTRY(host_register);
  ENTRY(host_unregister);
  ENTRY(mem_info);
  ENTRY(reserve);
  ENTRY(stream_create);
  ENTRY(stream_destroy);
  ENTRY(stream_sync);
  ENTRY(event_create);
  ENTRY(event_destroy);
  ENTRY(event_record);
  ENTRY(stream_wait_event);
  ENTRY(event_sync);
  ENTRY(event_elapsed_ms);
  ENTRY(graph_begin);
  ENTRY(graph_end);
  ENTRY(graph_launch);
  ENTRY(graph_destroy);
#undef ENTRY
}

static void test_completeness(void) {
  enum ferry_op missing[FERRY_OP_COUNT];
  const int nm = op_table_missing(missing);
  for (int i = 0; i < nm; i++)
    fprintf(stderr, "op '%s' has no case in tests/gpu/op_table.h\n", ferry_op_name(missing[i]));
  CHECK_EQ(nm, 0);
  const struct ferry_backend_ops *cpu = ferry_backend_ops_of(FERRY_BACKEND_CPU);
  CHECK(cpu != NULL);
  for (int op = 0; op < FERRY_OP_COUNT; op++) {
    CHECK(ferry_op_name((enum ferry_op)op) != NULL);
    if (!ferry_backend_has_op(cpu, (enum ferry_op)op)) {
      fprintf(stderr, "op '%s' has no CPU entry\n", ferry_op_name((enum ferry_op)op));
      CHECK(false);
    }
  }
  CHECK(ferry_op_name(FERRY_OP_COUNT) == NULL);
  check_runtime_entries(cpu, "cpu");
  const struct ferry_backend_ops *cu = ferry_backend_ops_of(FERRY_BACKEND_CUDA);
#ifdef FERRY_HAVE_CUDA
  CHECK(cu != NULL);
  if (cu) check_runtime_entries(cu, "cuda");
  for (int op = 0; cu && op < FERRY_OP_COUNT; op++)
    if (!ferry_backend_has_op(cu, (enum ferry_op)op)) {
      fprintf(stderr, "op '%s' has no CUDA entry\n", ferry_op_name((enum ferry_op)op));
      CHECK(false);
    }
#else
  CHECK(cu == NULL);
  struct ferry_backend *be = NULL;
  CHECK_EQ(ferry_backend_create(&be, "cuda", NULL, 0), -ENODEV);
  CHECK(be == NULL);
#endif
  struct ferry_backend *bad = NULL;
  CHECK_EQ(ferry_backend_create(&bad, "tpu", NULL, 0), -EINVAL);
  struct ferry_backend *a = NULL;
  CHECK_EQ(ferry_backend_create(&a, "auto", NULL, 0), 0);
  CHECK(a && (a->kind == FERRY_BACKEND_CPU) == (ferry_backend_cuda_devices() == 0));
  ferry_backend_destroy(a);
  ferry_backend_destroy(NULL);
}

static void test_rmsnorm(void) {
  const float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 2, 0.5f};
  float y[4];
  cpu_rmsnorm(y, x, w, 4, 0.0f);
  const double r = sqrt(30.0 / 4.0);
  for (int i = 0; i < 4; i++) CHECK_NEAR(y[i], w[i] * x[i] / r, 1e-6);
  // Per head: two heads of 2, each normalised on its own.
  float h[4] = {3, 4, 0.5f, -0.5f};
  const float hw[2] = {1, 2};
  cpu_rmsnorm_heads(h, hw, 2, 2, 0.0f);
  const double r0 = sqrt(25.0 / 2.0), r1 = sqrt(0.25);
  CHECK_NEAR(h[0], 3 / r0, 1e-6);
  CHECK_NEAR(h[1], 2 * 4 / r0, 1e-6);
  CHECK_NEAR(h[2], 0.5 / r1, 1e-6);
  CHECK_NEAR(h[3], -2 * 0.5 / r1, 1e-6);
  // In place equals out of place; eps is inside the root.
  float z[4] = {1, 2, 3, 4};
  cpu_rmsnorm(z, z, w, 4, 0.5f);
  for (int i = 0; i < 4; i++) CHECK_NEAR(z[i], w[i] * x[i] / sqrt(30.0 / 4.0 + 0.5), 1e-6);
}

static void test_rope(void) {
  // head_dim 8, full rotary: pairs (i, i+4), theta_i = pos * base^(-2i/8).
  float x[8] = {0};
  x[0] = 1.0f;
  x[1] = 1.0f;
  cpu_rope_neox(x, 1, 8, 8, 3, 10000.0f);
  const double t0 = 3.0, t1 = 3.0 * pow(10000.0, -2.0 / 8.0);
  CHECK_NEAR(x[0], cos(t0), 1e-6);
  CHECK_NEAR(x[4], sin(t0), 1e-6);
  CHECK_NEAR(x[1], cos(t1), 1e-6);
  CHECK_NEAR(x[5], sin(t1), 1e-6);
  CHECK_NEAR(x[2], 0, 0); // adjacent dims are not partners
  // A second head rotates the same way; position 0 is the identity.
  float y[16], y0[16];
  struct ferry_rng rng;
  ferry_rng_seed(&rng, 5);
  for (int i = 0; i < 16; i++) y[i] = y0[i] = ferry_rng_normal(&rng);
  cpu_rope_neox(y, 2, 8, 8, 0, 1e6f);
  for (int i = 0; i < 16; i++) CHECK_NEAR(y[i], y0[i], 0);
  // Partial: head_dim 8, n_rot 4 -> pairs (0,2), (1,3) with exponent denominator 4; 4..7 pass.
  cpu_rope_neox(y, 2, 8, 4, 7, 100.0f);
  for (int hd = 0; hd < 2; hd++) {
    const float *a = y0 + 8 * hd, *b = y + 8 * hd;
    for (int i = 0; i < 2; i++) {
      const double th = 7.0 * pow(100.0, -2.0 * i / 4.0);
      CHECK_NEAR(b[i], a[i] * cos(th) - a[i + 2] * sin(th), 1e-5);
      CHECK_NEAR(b[i + 2], a[i + 2] * cos(th) + a[i] * sin(th), 1e-5);
    }
    for (int i = 4; i < 8; i++) CHECK_NEAR(b[i], a[i], 0);
  }
  // Rows: token t at pos0 + t.
  float r[2][8] = {{1, 0, 0, 0, 0, 0, 0, 0}, {1, 0, 0, 0, 0, 0, 0, 0}};
  cpu_rope_neox_rows(&r[0][0], 2, 1, 8, 8, 10, 10000.0f);
  CHECK_NEAR(r[0][0], cos(10.0), 1e-6);
  CHECK_NEAR(r[1][0], cos(11.0), 1e-6);
  CHECK_NEAR(r[1][4], sin(11.0), 1e-6);
}

static void test_router(void) {
  const float l[5] = {1, 3, 3, 2, 0};
  int ids[5];
  float w[5];
  CHECK_EQ(cpu_router_topk(l, 5, 2, ids, w), 0);
  CHECK_EQ(ids[0], 1); // tie between 1 and 2: lower index first
  CHECK_EQ(ids[1], 2);
  CHECK_NEAR(w[0], 0.5, 1e-6);
  CHECK_NEAR(w[1], 0.5, 1e-6);
  CHECK_EQ(cpu_router_topk(l, 5, 3, ids, w), 0);
  CHECK_EQ(ids[2], 3);
  const double e3 = exp(3.0), e2 = exp(2.0);
  CHECK_NEAR(w[0], e3 / (2 * e3 + e2), 1e-6);
  CHECK_NEAR(w[2], e2 / (2 * e3 + e2), 1e-6);
  CHECK_NEAR(w[0] + w[1] + w[2], 1.0, 1e-6);
  // All equal: ids 0..k-1 in order.
  const float eq[6] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
  CHECK_EQ(cpu_router_topk(eq, 6, 4, ids, w), 0);
  for (int i = 0; i < 4; i++) CHECK_EQ(ids[i], i);
  // The renormalisation denominator is clamped at 6.1035e-5: 20000 equal experts, top-1
  // has P = 5e-5, so its weight is 5e-5 / 6.1035e-5, not 1.
  float *many = calloc(20000, sizeof(float));
  CHECK_EQ(cpu_router_topk(many, 20000, 1, ids, w), 0);
  CHECK_EQ(ids[0], 0);
  CHECK_NEAR(w[0], 5e-5 / 6.1035e-5, 1e-4);
  free(many);
  CHECK_EQ(cpu_router_topk(l, 5, 0, ids, w), -EINVAL);
  CHECK_EQ(cpu_router_topk(l, 5, 6, ids, w), -EINVAL);
  // Rows: second token independent of the first.
  const float two[2][3] = {{0, 1, 2}, {2, 1, 0}};
  int id2[2];
  float w2[2];
  CHECK_EQ(cpu_router_topk_rows(&two[0][0], 2, 3, 1, id2, w2), 0);
  CHECK_EQ(id2[0], 2);
  CHECK_EQ(id2[1], 0);
  CHECK_NEAR(w2[0], 1.0, 1e-6);
}

static void test_elementwise(void) {
  const float g[3] = {0, 1, -2}, u[3] = {5, 2, 3};
  float y[3];
  cpu_swiglu(y, g, u, 3);
  CHECK_NEAR(y[0], 0, 0);
  CHECK_NEAR(y[1], 2.0 / (1.0 + exp(-1.0)), 1e-6);
  CHECK_NEAR(y[2], 3.0 * -2.0 / (1.0 + exp(2.0)), 1e-6);
  cpu_add(y, g, u, 3);
  CHECK_NEAR(y[2], 1, 0);
  cpu_scale(y, u, 0.5f, 3);
  CHECK_NEAR(y[0], 2.5, 0);
  cpu_axpy(y, u, 2.0f, 3); // 0.5u + 2u
  CHECK_NEAR(y[1], 5.0, 1e-6);
  cpu_sigmoid_mul(y, u, g, 3);
  CHECK_NEAR(y[0], 2.5, 1e-6);
  CHECK_NEAR(y[1], 2.0 / (1.0 + exp(-1.0)), 1e-6);
}

// Caches of 2 positions x 2 KV heads x head_dim 32 (Q8_0 needs 32); query heads 0,1 read
// KV head 0 and heads 2,3 read KV head 1 (GQA 2).
static void test_attention(enum ferry_type kvt, double tol) {
  enum { HD = 32, NKV = 2, NH = 4, ROW = NKV * HD };
  float k[2][ROW] = {{0}}, v[2][ROW] = {{0}};
  // KV head 0: k0 = 0, k1 = ln3 * e0 -> weights (1/4, 3/4) for q = e0 (scale 1).
  k[1][0] = logf(3.0f);
  v[0][0] = 1.0f;
  v[1][1] = 1.0f;
  // KV head 1: equal keys -> uniform weights; values 2 and 4 in dim 2.
  v[0][HD + 2] = 2.0f;
  v[1][HD + 2] = 4.0f;
  const size_t rb = op_kv_row_bytes(kvt, ROW);
  uint8_t *kc = calloc(2, rb), *vc = calloc(2, rb);
  CHECK_EQ(cpu_kv_store(kc, kvt, ROW, 0, 2, &k[0][0], ROW), 0);
  CHECK_EQ(cpu_kv_store(vc, kvt, ROW, 0, 2, &v[0][0], ROW), 0);
  float q[NH * HD] = {0}, out[2 * NH * HD];
  for (int h = 0; h < NH; h++) q[h * HD] = 1.0f;
  cpu_attn_decode(out, q, kc, vc, kvt, 2, NH, NKV, HD, ROW, 1.0f);
  for (int h = 0; h < 2; h++) {
    CHECK_NEAR(out[h * HD + 0], 0.25, tol);
    CHECK_NEAR(out[h * HD + 1], 0.75, tol);
  }
  for (int h = 2; h < 4; h++) {
    CHECK_NEAR(out[h * HD + 2], 3.0, 3 * tol);
    CHECK_NEAR(out[h * HD + 0], 0.0, tol);
  }
  // Causal prefill of both positions: token 0 only sees position 0.
  float q2[2 * NH * HD];
  memcpy(q2, q, sizeof q);
  memcpy(q2 + NH * HD, q, sizeof q);
  cpu_attn_prefill(out, q2, kc, vc, kvt, 2, 0, NH, NKV, HD, ROW, 1.0f);
  CHECK_NEAR(out[0], 1.0, tol);
  CHECK_NEAR(out[1], 0.0, tol);
  CHECK_NEAR(out[2 * HD + 2], 2.0, 2 * tol);
  CHECK_NEAR(out[NH * HD + 0], 0.25, tol);
  CHECK_NEAR(out[NH * HD + 1], 0.75, tol);
  CHECK_NEAR(out[NH * HD + 2 * HD + 2], 3.0, 3 * tol);
  free(kc);
  free(vc);
}

static void test_kv_store(void) {
  // Q8_0 store round trip: error at most half a quant step (amax/254) per element.
  float src[64], back[64];
  struct ferry_rng rng;
  ferry_rng_seed(&rng, 11);
  for (int i = 0; i < 64; i++) src[i] = 3.0f * ferry_rng_normal(&rng);
  uint8_t cache[3 * 68];
  memset(cache, 0, sizeof cache);
  CHECK_EQ(cpu_kv_store(cache, FT_Q8_0, 64, 1, 1, src, 64), 0);
  for (int i = 0; i < 68; i++) CHECK_EQ(cache[i], 0); // position 0 untouched
  cpu_dequant_row(FT_Q8_0, cache + 68, back, 64);
  for (int b = 0; b < 2; b++) {
    float amax = 0;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(src[32 * b + i]));
    for (int i = 0; i < 32; i++) CHECK_NEAR(back[32 * b + i], src[32 * b + i], amax / 254 * 1.01);
  }
  CHECK_EQ(cpu_kv_store(cache, FT_Q8_0, 64, 0, 1, src, 48), -EINVAL);
  CHECK_EQ(cpu_kv_store(cache, FT_Q4_K, 64, 0, 1, src, 64), -EINVAL);
}

static void test_grouped(void) {
  // F32 experts of 2 rows x 3: expert g row r = (g+1)*(r+1) * [1, 1, 1].
  float w[2][2][3];
  for (int g = 0; g < 2; g++)
    for (int r = 0; r < 2; r++)
      for (int c = 0; c < 3; c++) w[g][r][c] = (float)((g + 1) * (r + 1));
  const float x[3][3] = {{1, 0, 0}, {0, 2, 0}, {1, 1, 1}};
  const void *wp[2] = {w[0], w[1]};
  const int32_t rows[3] = {2, 0, 1}; // expert 0: token 2; expert 1: tokens 0, 1
  const int64_t offs[3] = {0, 1, 3};
  float y[3][2];
  cpu_matmul_grouped(NULL, FT_F32, wp, 2, 2, 3, &x[0][0], 3, rows, offs, &y[0][0], 2);
  CHECK_NEAR(y[0][0], 3, 1e-6); // expert 0 row 0 . token 2
  CHECK_NEAR(y[0][1], 6, 1e-6);
  CHECK_NEAR(y[1][0], 2, 1e-6); // expert 1 row 0 . token 0
  CHECK_NEAR(y[2][1], 8, 1e-6); // expert 1 row 1 . token 1
}

// Rough work of a case on the scalar reference (multiply-adds, elements moved): the
// unit test runs the cases below a cap.
static double case_cost(const struct op_case *c) {
  const int64_t *p = c->p;
  switch (c->op) {
    case FERRY_OP_MATVEC: return (double)p[0] * p[1];
    case FERRY_OP_MATMUL: return (double)p[0] * p[1] * p[2];
    case FERRY_OP_MATMUL_GROUPED: return (double)p[0] * p[1] * (p[2] * p[4] + p[3]);
    case FERRY_OP_MOE_FFN:
    case FERRY_OP_MOE_FFN_IDS: return 3.0 * p[0] * p[1] * (p[2] * p[4] + p[3]);
    case FERRY_OP_ATTN: return 2.0 * p[0] * (p[1] + p[0]) * p[2] * p[4];
    case FERRY_OP_DELTA_RULE: return 4.0 * p[0] * p[2] * p[3] * p[4];
    default: return 0;
  }
}

#if defined(__SANITIZE_ADDRESS__)
#define FERRY_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FERRY_ASAN 1
#endif
#endif
#ifdef FERRY_ASAN
#define CASE_COST_CAP 1.2e7
#else
#define CASE_COST_CAP 6e7
#endif

// Every case of the table below the cost cap on the CPU backend against the scalar
// references, with the same inputs (same seed): within the case's tolerance, finite,
// and not all zero (an op that writes nothing cannot pass by accident).
static void test_table_cpu_vs_ref(struct ferry_pool *pool) {
  struct ferry_backend *cpu = NULL, *ref = NULL;
  CHECK_EQ(ferry_backend_create(&cpu, "cpu", pool, 0), 0);
  CHECK_EQ(ferry_backend_create(&ref, "ref", NULL, 0), 0);
  if (!cpu || !ref) return;
  const char *filter = getenv("FERRY_OP_FILTER");
  int ran = 0, skipped = 0, failed = 0;
  for (int i = 0; i < G_OP_CASES_N; i++) {
    const struct op_case *c = &g_op_cases[i];
    char label[192];
    op_case_label(c, label, sizeof label);
    if (filter && *filter && !strstr(label, filter)) continue;
    if (case_cost(c) > CASE_COST_CAP) {
      skipped++;
      continue;
    }
    float *o[2] = {NULL, NULL};
    int64_t n[2] = {0, 0};
    struct ferry_backend *bes[2] = {cpu, ref};
    int rc = 0;
    for (int k = 0; k < 2 && !rc; k++) {
      struct op_run *r = NULL;
      rc = op_run_setup(&r, c, bes[k], 0x7ab1e000u + (uint64_t)i);
      if (!rc) rc = op_run_invoke(r, NULL);
      if (!rc) rc = op_run_output(r, &o[k], &n[k]);
      if (rc) fprintf(stderr, "case %d (%s) on %s: %s\n", i, label, bes[k]->name, ferry_errmsg());
      op_run_destroy(r);
    }
    CHECK_EQ(rc, 0);
    if (!rc) {
      bool finite = false;
      const double err = n[0] == n[1] ? op_case_error(c, o[0], o[1], n[0], &finite) : INFINITY;
      double ss = 0;
      for (int64_t j = 0; j < n[1]; j++) ss += (double)o[1][j] * o[1][j];
      const double tol = op_case_tol(c, cpu);
      const bool ok = finite && err <= tol && ss > 0;
      if (!ok) {
        fprintf(stderr, "FAIL %3d  err %.2e  tol %.0e%s%s  %s\n", i, err, tol,
                finite ? "" : "  NaN/Inf", ss > 0 ? "" : "  reference all zero", label);
        failed++;
      } else if (getenv("FERRY_OP_VERBOSE")) {
        printf("ok   %3d  err %.2e  tol %.0e  %s\n", i, err, tol, label);
      }
      CHECK(ok);
      ran++;
    }
    free(o[0]);
    free(o[1]);
  }
  printf(
      "test_ops_table: cpu vs ref: %d cases run, %d failed, %d skipped above the size cap "
      "(%.0e)\n",
      ran, failed, skipped, CASE_COST_CAP);
  if (!filter) CHECK(ran > G_OP_CASES_N * 3 / 4);
  ferry_backend_destroy(cpu);
  ferry_backend_destroy(ref);
}

// moe_ffn_ids gives moe_ffn's rows bit for bit on the CPU backend, both precisions.
static void test_moe_bitident_cpu(struct ferry_pool *pool) {
  struct ferry_backend *cpu = NULL;
  CHECK_EQ(ferry_backend_create(&cpu, "cpu", pool, 0), 0);
  if (!cpu) return;
  int n = 0;
  for (int i = 0; i < G_OP_CASES_N; i++) {
    const struct op_case *c = &g_op_cases[i];
    if ((c->op != FERRY_OP_MOE_FFN && c->op != FERRY_OP_MOE_FFN_IDS) ||
        case_cost(c) > CASE_COST_CAP)
      continue;
    int64_t mismatch = -1;
    CHECK_EQ(op_moe_bitident(c, cpu, 0xb17u + (uint64_t)i, &mismatch), 0);
    if (mismatch) fprintf(stderr, "case %d: %lld pairs differ\n", i, (long long)mismatch);
    CHECK_EQ(mismatch, 0);
    n++;
  }
  CHECK(n >= 6);
  ferry_backend_destroy(cpu);
}

#ifdef FERRY_HAVE_CUDA
// The CUDA decoders and mat-vec lane schedule replayed on the host against the CPU
// reference: once from aligned buffers (the wide-load units, 16-byte x loads) and once
// from a copy one byte past it (the byte-load fallback), for row lengths of one and of
// several units per lane.
static void test_cuda_decoders_on_host(void) {
  static const enum ferry_type types[] = {FT_Q4_K, FT_Q5_K, FT_Q6_K, FT_Q3_K, FT_Q2_K,
                                          FT_Q8_0, FT_Q4_0, FT_F32,  FT_F16,  FT_BF16};
  static const int64_t lens[] = {256, 768, 4096};
  struct ferry_rng rng;
  ferry_rng_seed(&rng, 99);
  for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
      const enum ferry_type t = types[ti];
      const char *name = ferry_type_info(t)->name;
      const int64_t nrows = 5, n = lens[li];
      size_t bytes;
      uint8_t *w0 = op_make_weights(&rng, t, nrows, n, &bytes);
      uint8_t *w = ferry_alloc_aligned(64, bytes + 64),
              *shifted = ferry_alloc_aligned(64, bytes + 64);
      memcpy(w, w0, bytes);
      memcpy(shifted + 1, w0, bytes);
      float *ref = malloc(sizeof(float) * nrows * n), *got = malloc(sizeof(float) * nrows * n);
      float *x = ferry_alloc_aligned(64, sizeof(float) * n), y_ref[5], y_got[5];
      op_fill_normal(&rng, x, n, 1.0f);
      cpu_dequant_row(t, w, ref, nrows * n);
      cpu_matvec_exact(NULL, t, w, nrows, n, x, y_ref);
      for (int pass = 0; pass < 2; pass++) {
        const uint8_t *src = pass ? shifted + 1 : w;
        bool finite;
        CHECK_EQ(cuda_host_dequant(t, src, got, nrows * n), 0);
        const double e = op_nerr(got, ref, nrows * n, &finite);
        if (!(e <= 1e-6))
          fprintf(stderr, "host dequant %s n %lld pass %d: err %g\n", name, (long long)n, pass, e);
        CHECK(e <= 1e-6 && finite);
        CHECK_EQ(cuda_host_matvec(t, src, nrows, n, x, y_got), 0);
        const double em = op_nerr(y_got, y_ref, nrows, &finite);
        if (!(em <= 1e-5))
          fprintf(stderr, "host matvec %s n %lld pass %d: err %g\n", name, (long long)n, pass, em);
        CHECK(em <= 1e-5 && finite);
      }
      free(w0);
      ferry_free_aligned(w);
      ferry_free_aligned(shifted);
      ferry_free_aligned(x);
      free(ref);
      free(got);
    }
  CHECK_EQ(cuda_host_dequant(FT_Q4_K, NULL, NULL, 100), -EINVAL);
}
#endif

// The scratch plan: what reserve() allocates for the real shapes, without a device.
static void test_scratch_plan(void) {
  struct ferry_limits l;
  memset(&l, 0, sizeof l);
  l.max_tok = 512;
  l.max_in = 4096;
  l.weight_types = (1ull << FT_Q4_K) | (1ull << FT_Q6_K);
  l.n_ctx = 4096;
  l.n_head = 32;
  l.n_kv_head = 4;
  l.head_dim = 128;
  l.moe_d = 2048;
  l.moe_ff = 768;
  l.moe_k = 8;
  l.moe_n_expert = 128;
  const uint64_t cpu = ferry_backend_scratch_bytes(FERRY_BACKEND_CPU, &l);
  CHECK(cpu > 0);
  const uint64_t cu = ferry_backend_scratch_bytes(FERRY_BACKEND_CUDA, &l);
#ifdef FERRY_HAVE_CUDA
  // at least the expert buffers: [pairs][d] inputs and three [pairs][ff]-sized ones
  CHECK(cu >= (uint64_t)512 * 8 * (2048 + 4 * 768) * 4);
  CHECK(cu < (uint64_t)1 << 30);
  struct ferry_limits dec = l;
  dec.max_tok = 1; // decode only: no GEMM tiles, much less
  const uint64_t cu1 = ferry_backend_scratch_bytes(FERRY_BACKEND_CUDA, &dec);
  CHECK(cu1 > 0 && cu1 < cu / 8);
  printf(
      "test_ops_table: scratch for 30B shapes: cpu %.1f MiB, cuda %.1f MiB (decode only "
      "%.2f MiB)\n",
      cpu / 1048576.0, cu / 1048576.0, cu1 / 1048576.0);
#else
  CHECK_EQ(cu, 0);
#endif
}

int main(void) {
  test_completeness();
  test_rmsnorm();
  test_rope();
  test_router();
  test_elementwise();
  test_attention(FT_F32, 1e-6);
  test_attention(FT_F16, 1e-3);
  test_attention(FT_Q8_0, 2e-2);
  test_kv_store();
  test_grouped();
  test_scratch_plan();
#ifdef FERRY_HAVE_CUDA
  test_cuda_decoders_on_host();
#endif
  struct ferry_pool *pool = NULL;
  CHECK_EQ(ferry_pool_create(&pool, 0), 0);
  test_table_cpu_vs_ref(pool);
  test_moe_bitident_cpu(pool);
  ferry_pool_destroy(pool);
  CHECK_DONE();
}
