// tests/gpu/test_backend.c: the non-op half of the CUDA backend and its graph capture:
// - clear -EINVAL errors (never a crash) for arguments the kernels cannot handle, on the
//   CPU backend and on CUDA alike;
// - device memory, copies ordered across two streams by an event, memset, event timing;
// - graph capture of a decode step (positions in device memory, updated by a captured
//   copy from pinned host memory): rope, kv_store, attention, moe_ffn_ids (one token),
//   moe_combine captured once and replayed at positions 0..N-1, compared bit for bit
//   with the same ops run eagerly and, within rounding, with the scalar references;
//   capture refuses what needs the host (moe_ffn_ids over several tokens).
// Exit 77 without a CUDA device (after the CPU half).
#include <errno.h>
#include <string.h>

#include "base/base.h"
#include "kernels/backend.h"
#include "kernels/cpu/quants.h"
#include "tests/check.h"

static void check_bad_args(struct ferry_backend *be) {
  float *buf = NULL;
  int32_t *pos = NULL;
  CHECK_EQ(be->ops.mem_alloc(be, (void **)&buf, 1 << 20), 0);
  CHECK_EQ(be->ops.mem_alloc(be, (void **)&pos, 4), 0);
  if (!buf || !pos) return;
  CHECK_EQ(be->ops.memset0(be, buf, 1 << 20, NULL), 0);
  CHECK_EQ(be->ops.memset0(be, pos, 4, NULL), 0);
  const struct ferry_backend_ops *o = &be->ops;
  // Row length not a multiple of the K-quant block; not a weight type.
  CHECK_EQ(o->matvec(be, FT_Q4_K, buf, 4, 100, buf, buf, NULL), -EINVAL);
  CHECK_EQ(o->dequant(be, FT_Q6_K, buf, buf, 300, NULL), -EINVAL);
  CHECK_EQ(o->matvec(be, FT_Q8_K, buf, 4, 256, buf, buf, NULL), -EINVAL);
  CHECK_EQ(o->embed(be, FT_Q4_K, buf, 144, (const int32_t *)pos, 1, 100, buf, NULL), -EINVAL);
  // Strides smaller than the row.
  CHECK_EQ(o->matmul(be, FERRY_PREC_EXACT, FT_F32, buf, 4, 64, buf, 32, 5, buf, 4, NULL), -EINVAL);
  CHECK_EQ(o->copy2d(be, buf, 3, buf, 8, 2, 4, NULL), -EINVAL);
  // FAST products of several rows before reserve(): the scratch is not there.
  CHECK_EQ(o->matmul(be, FERRY_PREC_FAST, FT_Q4_K, buf, 4, 256, buf, 256, 8, buf, 4, NULL),
           -EINVAL);
  // Router k out of range.
  CHECK_EQ(o->router_topk(be, buf, 1, 8, 9, (int *)buf, buf, NULL), -EINVAL);
  CHECK_EQ(o->router_topk(be, buf, 1, 8, 0, (int *)buf, buf, NULL), -EINVAL);
  // Attention: heads not a multiple of KV heads, unsupported cache type, bad stride.
  CHECK_EQ(
      o->attn(be, FERRY_PREC_EXACT, buf, buf, buf, buf, FT_F16, 1, pos, 6, 4, 64, 256, 1.0f, NULL),
      -EINVAL);
  CHECK_EQ(
      o->attn(be, FERRY_PREC_EXACT, buf, buf, buf, buf, FT_Q4_K, 1, pos, 8, 4, 64, 256, 1.0f, NULL),
      -EINVAL);
  CHECK_EQ(
      o->attn(be, FERRY_PREC_EXACT, buf, buf, buf, buf, FT_F16, 1, pos, 8, 4, 64, 128, 1.0f, NULL),
      -EINVAL);
  // RoPE with odd or oversized n_rot; KV store misaligned for Q8_0.
  CHECK_EQ(o->rope_neox(be, buf, 1, 2, 64, 33, pos, 1e4f, NULL), -EINVAL);
  CHECK_EQ(o->rope_neox(be, buf, 1, 2, 64, 66, pos, 1e4f, NULL), -EINVAL);
  CHECK_EQ(o->kv_store(be, buf, FT_Q8_0, 64, pos, 1, buf, 48, NULL), -EINVAL);
  // DeltaNet: v-heads not a multiple of k-heads; conv kernel too wide.
  CHECK_EQ(
      o->delta_rule(be, buf, 96, buf, buf, 32, buf, 32, buf, 96, buf, buf, 1, 2, 3, 16, 32, NULL),
      -EINVAL);
  CHECK_EQ(o->ssm_conv(be, buf, buf, buf, buf, 1, 8, 17, 1, NULL), -EINVAL);
  CHECK_EQ(o->ssm_in_regroup(be, buf, buf, buf, 1, 2, 3, 4, 4, NULL), -EINVAL);
  // Experts beyond the reserved scratch.
  struct ferry_limits lim;
  memset(&lim, 0, sizeof lim);
  lim.max_tok = 1;
  lim.max_in = 256;
  lim.weight_types = 1ull << FT_Q4_K;
  lim.moe_d = 256;
  lim.moe_ff = 256;
  lim.moe_k = 2;
  lim.moe_n_expert = 4;
  CHECK_EQ(o->reserve(be, &lim), 0);
  const struct ferry_moe_shape sh = {FT_Q4_K, FT_Q4_K, FT_Q4_K, 256, 256};
  const struct ferry_moe_table tab = {{buf, buf, buf}, {0, 0, 0}, 4};
  CHECK_EQ(o->moe_ffn_ids(be, FERRY_PREC_FAST, &sh, &tab, buf, 2, 2, (const int32_t *)pos, buf,
                          (int32_t *)buf, NULL),
           -EINVAL); // 4 pairs > max_tok * moe_k = 2
  const struct ferry_moe_shape wide = {FT_Q4_K, FT_Q4_K, FT_Q4_K, 512, 256};
  CHECK_EQ(o->moe_ffn_ids(be, FERRY_PREC_FAST, &wide, &tab, buf, 1, 2, (const int32_t *)pos, buf,
                          (int32_t *)buf, NULL),
           -EINVAL); // d > moe_d
  CHECK(ferry_backend_reserved(be) > 0);
  CHECK(strlen(ferry_errmsg()) > 0);
  CHECK_EQ(be->ops.stream_sync(be, NULL), 0); // nothing broke the device
  be->ops.mem_free(be, buf);
  be->ops.mem_free(be, pos);
}

// ---- a captured decode step ----

enum { NH = 8, NKV = 2, HD = 64, CTX = 16, D = 256, FF = 256, NE = 6, K = 3 };

struct step {
  struct ferry_backend *be;
  int32_t *pos;                          // backend memory
  int32_t *h_pos;                        // pinned (CUDA) / host memory
  float *q0, *k0, *v0, *x;               // inputs, backend memory
  int32_t *ids;                          // [K]
  float *rw;                             // [K] router weights
  void *wexp[3];                         // experts (gate, up, down) of NE
  float *q, *k, *kc, *vc, *out, *y, *yc; // work and outputs
  int32_t *map;
};

static uint64_t eb(int p) {
  return ferry_row_bytes(ferry_type_info(FT_Q4_K), p == 2 ? FF : D) * (uint64_t)(p == 2 ? D : FF);
}

static int step_alloc(struct step *st, struct ferry_backend *be, void *const h_exp[3]) {
  memset(st, 0, sizeof *st);
  st->be = be;
  const struct ferry_backend_ops *o = &be->ops;
  int rc = o->mem_alloc(be, (void **)&st->pos, 4);
  if (!rc) rc = o->host_alloc(be, (void **)&st->h_pos, 4);
#define A(ptr, n) \
  if (!rc) rc = o->mem_alloc(be, (void **)&st->ptr, (size_t)(n)*4)
  A(q0, NH * HD);
  A(k0, NKV * HD);
  A(v0, NKV * HD);
  A(x, D);
  A(ids, K);
  A(rw, K);
  A(q, NH * HD);
  A(k, NKV * HD);
  A(kc, CTX * NKV * HD);
  A(vc, CTX * NKV * HD);
  A(out, NH * HD);
  A(y, K * D);
  A(yc, D);
  A(map, K);
#undef A
  for (int p = 0; p < 3 && !rc; p++) {
    rc = o->mem_alloc(be, &st->wexp[p], eb(p) * NE);
    if (!rc) rc = o->copy_h2d(be, st->wexp[p], h_exp[p], eb(p) * NE, NULL);
  }
  // F16 caches: CTX rows of NKV*HD halves, zeroed
  if (!rc) rc = o->memset0(be, st->kc, (size_t)CTX * NKV * HD * 4, NULL);
  if (!rc) rc = o->memset0(be, st->vc, (size_t)CTX * NKV * HD * 4, NULL);
  struct ferry_limits lim;
  memset(&lim, 0, sizeof lim);
  lim.max_tok = 1;
  lim.max_in = D;
  lim.weight_types = 1ull << FT_Q4_K;
  lim.n_ctx = CTX;
  lim.n_head = NH;
  lim.n_kv_head = NKV;
  lim.head_dim = HD;
  lim.moe_d = D;
  lim.moe_ff = FF;
  lim.moe_k = K;
  lim.moe_n_expert = NE;
  if (!rc) rc = o->reserve(be, &lim);
  if (!rc) rc = o->stream_sync(be, NULL);
  return rc;
}

static void step_free(struct step *st) {
  struct ferry_backend *be = st->be;
  if (!be) return;
  void *bufs[] = {st->pos, st->q0, st->k0,  st->v0,      st->x,       st->ids,
                  st->rw,  st->q,  st->k,   st->kc,      st->vc,      st->out,
                  st->y,   st->yc, st->map, st->wexp[0], st->wexp[1], st->wexp[2]};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->ops.mem_free(be, bufs[i]);
  be->ops.host_free(be, st->h_pos);
}

// The decode step at *h_pos, everything on stream s (capturable on CUDA).
static int step_issue(struct step *st, struct ferry_stream *s) {
  struct ferry_backend *be = st->be;
  const struct ferry_backend_ops *o = &be->ops;
  const struct ferry_moe_shape sh = {FT_Q4_K, FT_Q4_K, FT_Q4_K, D, FF};
  const struct ferry_moe_table tab = {
      {st->wexp[0], st->wexp[1], st->wexp[2]}, {eb(0), eb(1), eb(2)}, NE};
  int rc = o->copy_h2d(be, st->pos, st->h_pos, 4, s);
  if (!rc) rc = o->copy_d2d(be, st->q, st->q0, NH * HD * 4, s);
  if (!rc) rc = o->copy_d2d(be, st->k, st->k0, NKV * HD * 4, s);
  if (!rc) rc = o->rope_neox(be, st->q, 1, NH, HD, HD, st->pos, 1e6f, s);
  if (!rc) rc = o->rope_neox(be, st->k, 1, NKV, HD, HD, st->pos, 1e6f, s);
  if (!rc) rc = o->kv_store(be, st->kc, FT_F16, NKV * HD, st->pos, 1, st->k, NKV * HD, s);
  if (!rc) rc = o->kv_store(be, st->vc, FT_F16, NKV * HD, st->pos, 1, st->v0, NKV * HD, s);
  if (!rc)
    rc = o->attn(be, FERRY_PREC_FAST, st->out, st->q, st->kc, st->vc, FT_F16, 1, st->pos, NH, NKV,
                 HD, NKV * HD, 0.125f, s);
  if (!rc)
    rc = o->moe_ffn_ids(be, FERRY_PREC_FAST, &sh, &tab, st->x, 1, K, st->ids, st->y, st->map, s);
  if (!rc) rc = o->moe_combine(be, st->yc, st->y, st->map, st->rw, 1, K, D, s);
  return rc;
}

// This step's inputs (from host arrays) into st's input buffers, outside any graph.
static int step_inputs(struct step *st, const float *hq, const float *hk, const float *hv,
                       const float *hx, const int32_t *hids, const float *hrw, int pos,
                       struct ferry_stream *s) {
  struct ferry_backend *be = st->be;
  const struct ferry_backend_ops *o = &be->ops;
  *st->h_pos = pos;
  int rc = o->copy_h2d(be, st->q0, hq, NH * HD * 4, s);
  if (!rc) rc = o->copy_h2d(be, st->k0, hk, NKV * HD * 4, s);
  if (!rc) rc = o->copy_h2d(be, st->v0, hv, NKV * HD * 4, s);
  if (!rc) rc = o->copy_h2d(be, st->x, hx, D * 4, s);
  if (!rc) rc = o->copy_h2d(be, st->ids, hids, K * 4, s);
  if (!rc) rc = o->copy_h2d(be, st->rw, hrw, K * 4, s);
  if (!rc) rc = o->stream_sync(be, s); // the host arrays change for the next step
  return rc;
}

static int fetch(struct step *st, const void *src, void *h, size_t bytes) {
  int rc = st->be->ops.copy_d2h(st->be, h, src, bytes, NULL);
  return rc ? rc : st->be->ops.stream_sync(st->be, NULL);
}

static double nerr(const float *a, const float *b, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; i++) {
    num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    den += (double)b[i] * b[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void test_graph_decode(struct ferry_backend *gpu) {
  struct ferry_backend *ref = NULL;
  CHECK_EQ(ferry_backend_create(&ref, "ref", NULL, 0), 0);
  if (!ref) return;
  struct ferry_rng rng;
  ferry_rng_seed(&rng, 2024);
  // experts: distinct random q4_K matrices
  void *h_exp[3];
  for (int p = 0; p < 3; p++) {
    const int rows = p == 2 ? D : FF, n = p == 2 ? FF : D;
    const size_t rb = ferry_row_bytes(ferry_type_info(FT_Q4_K), n);
    uint8_t *w = malloc(eb(p) * NE);
    float *row = malloc(n * sizeof(float));
    for (int r = 0; r < rows * NE; r++) {
      for (int i = 0; i < n; i++) row[i] = 0.05f * ferry_rng_normal(&rng);
      cpu_quantize_row(FT_Q4_K, row, w + (size_t)r * rb, n);
    }
    free(row);
    h_exp[p] = w;
  }
  struct step G, E, R; // graph, eager, reference
  CHECK_EQ(step_alloc(&G, gpu, h_exp), 0);
  CHECK_EQ(step_alloc(&E, gpu, h_exp), 0);
  CHECK_EQ(step_alloc(&R, ref, h_exp), 0);
  struct ferry_stream *s = NULL;
  CHECK_EQ(gpu->ops.stream_create(gpu, &s), 0);
  struct ferry_graph *g = NULL;
  // Capture refuses a NULL stream, and what must wait for the host.
  CHECK_EQ(gpu->ops.graph_begin(gpu, NULL), -EINVAL);
  CHECK_EQ(gpu->ops.graph_begin(gpu, s), 0);
  const struct ferry_moe_shape sh = {FT_Q4_K, FT_Q4_K, FT_Q4_K, D, FF};
  const struct ferry_moe_table tab = {{G.wexp[0], G.wexp[1], G.wexp[2]}, {eb(0), eb(1), eb(2)}, NE};
  CHECK_EQ(gpu->ops.moe_ffn_ids(gpu, FERRY_PREC_FAST, &sh, &tab, G.x, 3, 1, G.ids, G.y, G.map, s),
           -EINVAL);
  CHECK_EQ(gpu->ops.graph_end(gpu, s, &g), 0); // an empty graph
  gpu->ops.graph_destroy(gpu, g);
  g = NULL;
  // Capture the step once (at whatever *h_pos holds: it is read when the graph runs).
  *G.h_pos = 0;
  CHECK_EQ(gpu->ops.graph_begin(gpu, s), 0);
  CHECK_EQ(step_issue(&G, s), 0);
  CHECK_EQ(gpu->ops.graph_end(gpu, s, &g), 0);
  if (g_check_failures) goto out;
  float hq[NH * HD], hk[NKV * HD], hv[NKV * HD], hx[D], hrw[K];
  float a[NH * HD], b[NH * HD], c[NH * HD], ya[D], yb[D], yr[D];
  uint16_t ka[CTX * NKV * HD], kb[CTX * NKV * HD];
  int32_t hids[K];
  int bad_bits = 0;
  double worst = 0;
  for (int pos = 0; pos < CTX; pos++) {
    for (int i = 0; i < NH * HD; i++) hq[i] = ferry_rng_normal(&rng);
    for (int i = 0; i < NKV * HD; i++) hk[i] = ferry_rng_normal(&rng);
    for (int i = 0; i < NKV * HD; i++) hv[i] = ferry_rng_normal(&rng);
    for (int i = 0; i < D; i++) hx[i] = ferry_rng_normal(&rng);
    for (int j = 0; j < K; j++) {
      bool dup;
      do {
        hids[j] = (int32_t)(ferry_rng_u64(&rng) % NE);
        dup = false;
        for (int q = 0; q < j; q++) dup |= hids[q] == hids[j];
      } while (dup);
      hrw[j] = ferry_rng_uniform(&rng);
    }
    struct step *all[3] = {&G, &E, &R};
    for (int k = 0; k < 3; k++)
      CHECK_EQ(step_inputs(all[k], hq, hk, hv, hx, hids, hrw, pos, k == 2 ? NULL : s), 0);
    CHECK_EQ(gpu->ops.graph_launch(gpu, g, s), 0);
    CHECK_EQ(step_issue(&E, s), 0);
    CHECK_EQ(gpu->ops.stream_sync(gpu, s), 0);
    CHECK_EQ(step_issue(&R, NULL), 0);
    CHECK_EQ(fetch(&G, G.out, a, sizeof a), 0);
    CHECK_EQ(fetch(&E, E.out, b, sizeof b), 0);
    CHECK_EQ(fetch(&R, R.out, c, sizeof c), 0);
    CHECK_EQ(fetch(&G, G.yc, ya, sizeof ya), 0);
    CHECK_EQ(fetch(&E, E.yc, yb, sizeof yb), 0);
    CHECK_EQ(fetch(&R, R.yc, yr, sizeof yr), 0);
    CHECK_EQ(fetch(&G, G.kc, ka, sizeof ka), 0);
    CHECK_EQ(fetch(&E, E.kc, kb, sizeof kb), 0);
    bad_bits += memcmp(a, b, sizeof a) != 0;
    bad_bits += memcmp(ya, yb, sizeof ya) != 0;
    bad_bits += memcmp(ka, kb, sizeof ka) != 0;
    const double ea = nerr(a, c, NH * HD), ey = nerr(ya, yr, D);
    if (ea > worst) worst = ea;
    if (ey > worst) worst = ey;
    if (ea > 1e-4 || ey > 1e-4)
      fprintf(stderr, "pos %d: attention err %.2e, experts err %.2e vs ref\n", pos, ea, ey);
  }
  printf(
      "test_backend: decode step captured once, replayed at %d positions: %d outputs differ "
      "from eager, worst error vs ref %.2e\n",
      CTX, bad_bits, worst);
  CHECK_EQ(bad_bits, 0);
  CHECK(worst <= 1e-4);
out:
  gpu->ops.graph_destroy(gpu, g);
  gpu->ops.stream_destroy(gpu, s);
  step_free(&G);
  step_free(&E);
  step_free(&R);
  for (int p = 0; p < 3; p++) free(h_exp[p]);
  ferry_backend_destroy(ref);
}

int main(void) {
  struct ferry_backend *cpu = NULL;
  CHECK_EQ(ferry_backend_create(&cpu, "cpu", NULL, 0), 0);
  check_bad_args(cpu);
  CHECK_EQ(cpu->ops.graph_begin(cpu, (struct ferry_stream *)&cpu), -ENOTSUP);
  ferry_backend_destroy(cpu);
  if (ferry_backend_cuda_devices() <= 0)
    SKIP("no CUDA device: backend memory/stream/graph tests not run");

  struct ferry_backend *be = NULL;
  CHECK_EQ(ferry_backend_create(&be, "cuda", NULL, 0), 0);
  if (!be) CHECK_DONE();
  CHECK(be->kind == FERRY_BACKEND_CUDA);
  CHECK(!strcmp(be->name, "cuda"));
  check_bad_args(be);

  size_t fr = 0, tot = 0;
  CHECK_EQ(be->ops.mem_info(be, &fr, &tot), 0);
  CHECK(tot > 0 && fr > 0 && fr <= tot);

  // h2d (pinned source) on stream a -> event -> stream b waits -> axpy + d2d on b -> d2h
  // into registered memory.
  enum { N = 1 << 20 };
  float *h = NULL, *back = malloc(N * sizeof(float));
  CHECK_EQ(be->ops.host_alloc(be, (void **)&h, N * sizeof(float)), 0);
  if (!h || !back) CHECK_DONE();
  CHECK_EQ(be->ops.host_register(be, back, N * sizeof(float)), 0);
  struct ferry_rng rng;
  ferry_rng_seed(&rng, 3);
  for (int i = 0; i < N; i++) h[i] = ferry_rng_normal(&rng);
  void *d1 = NULL, *d2 = NULL;
  struct ferry_stream *a = NULL, *b = NULL;
  struct ferry_event *ev = NULL, *t0 = NULL, *t1 = NULL;
  CHECK_EQ(be->ops.mem_alloc(be, &d1, N * sizeof(float)), 0);
  CHECK_EQ(be->ops.mem_alloc(be, &d2, N * sizeof(float)), 0);
  CHECK_EQ(be->ops.stream_create(be, &a), 0);
  CHECK_EQ(be->ops.stream_create(be, &b), 0);
  CHECK_EQ(be->ops.event_create(be, &ev), 0);
  CHECK_EQ(be->ops.event_create(be, &t0), 0);
  CHECK_EQ(be->ops.event_create(be, &t1), 0);
  CHECK_EQ(be->ops.event_record(be, t0, a), 0);
  CHECK_EQ(be->ops.copy_h2d(be, d1, h, N * sizeof(float), a), 0);
  CHECK_EQ(be->ops.event_record(be, ev, a), 0);
  CHECK_EQ(be->ops.event_record(be, t1, a), 0);
  CHECK_EQ(be->ops.stream_wait_event(be, b, ev), 0);
  CHECK_EQ(be->ops.memset0(be, d2, N * sizeof(float), b), 0);
  CHECK_EQ(be->ops.axpy(be, d2, d1, 2.0f, N, b), 0); // d2 = 2 h
  CHECK_EQ(be->ops.copy_d2d(be, d1, d2, N * sizeof(float), b), 0);
  CHECK_EQ(be->ops.copy_d2h(be, back, d1, N * sizeof(float), b), 0);
  CHECK_EQ(be->ops.stream_sync(be, b), 0);
  int bad = 0;
  for (int i = 0; i < N; i++) bad += back[i] != 2.0f * h[i];
  CHECK_EQ(bad, 0);
  CHECK_EQ(be->ops.event_sync(be, t1), 0);
  CHECK(be->ops.event_elapsed_ms(be, t0, t1) >= 0.0f);
  be->ops.event_destroy(be, ev);
  be->ops.event_destroy(be, t0);
  be->ops.event_destroy(be, t1);
  be->ops.stream_destroy(be, a);
  be->ops.stream_destroy(be, b);
  be->ops.mem_free(be, d1);
  be->ops.mem_free(be, d2);
  be->ops.mem_free(be, NULL);
  // An impossible allocation fails with -ENOMEM and a message, not an abort.
  void *huge = NULL;
  CHECK_EQ(be->ops.mem_alloc(be, &huge, (size_t)1 << 50), -ENOMEM);
  CHECK(huge == NULL);
  CHECK_EQ(be->ops.host_unregister(be, back), 0);
  be->ops.host_free(be, h);
  free(back);

  test_graph_decode(be);
  ferry_backend_destroy(be);
  CHECK_DONE();
}
