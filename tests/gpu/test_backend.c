// tests/gpu/test_backend.c: the non-op half of the CUDA backend: device memory, copies
// ordered across two streams by an event, memset, event timing, and clear -EINVAL errors
// (never a crash) for arguments the kernels cannot handle. The CPU backend runs the same
// argument checks first, so both backends reject the same bad calls. Exit 77 without a
// CUDA device.
#include <errno.h>
#include <string.h>

#include "base/base.h"
#include "kernels/backend.h"
#include "tests/check.h"

static void check_bad_args(struct ferry_backend *be) {
  float *buf = NULL;
  CHECK_EQ(be->ops.mem_alloc(be, (void **)&buf, 1 << 20), 0);
  if (!buf) return;
  const struct ferry_backend_ops *o = &be->ops;
  // Row length not a multiple of the K-quant block.
  CHECK_EQ(o->matvec(be, FT_Q4_K, buf, 4, 100, buf, buf, NULL), -EINVAL);
  CHECK_EQ(o->dequant(be, FT_Q6_K, buf, buf, 300, NULL), -EINVAL);
  // Not a weight type.
  CHECK_EQ(o->matvec(be, FT_Q8_K, buf, 4, 256, buf, buf, NULL), -EINVAL);
  // Strides smaller than the row.
  CHECK_EQ(o->matmul(be, FT_F32, buf, 4, 64, buf, 32, 5, buf, 4, NULL), -EINVAL);
  // Router k out of range.
  CHECK_EQ(o->router_topk(be, buf, 1, 8, 9, (int *)buf, buf, NULL), -EINVAL);
  CHECK_EQ(o->router_topk(be, buf, 1, 8, 0, (int *)buf, buf, NULL), -EINVAL);
  // Attention: heads not a multiple of KV heads, unsupported cache type, bad stride.
  CHECK_EQ(o->attn_decode(be, buf, buf, buf, buf, FT_F16, 4, 6, 4, 64, 256, 1.0f, NULL), -EINVAL);
  CHECK_EQ(o->attn_decode(be, buf, buf, buf, buf, FT_Q4_K, 4, 8, 4, 64, 256, 1.0f, NULL), -EINVAL);
  CHECK_EQ(o->attn_decode(be, buf, buf, buf, buf, FT_F16, 4, 8, 4, 64, 128, 1.0f, NULL), -EINVAL);
  CHECK_EQ(o->attn_decode(be, buf, buf, buf, buf, FT_F16, 0, 8, 4, 64, 256, 1.0f, NULL), -EINVAL);
  // RoPE with odd or oversized n_rot; KV store misaligned for Q8_0.
  CHECK_EQ(o->rope_neox(be, buf, 1, 2, 64, 33, 0, 1e4f, NULL), -EINVAL);
  CHECK_EQ(o->rope_neox(be, buf, 1, 2, 64, 66, 0, 1e4f, NULL), -EINVAL);
  CHECK_EQ(o->kv_store(be, buf, FT_Q8_0, 64, 0, 1, buf, 48, NULL), -EINVAL);
  CHECK(strlen(ferry_errmsg()) > 0);
  CHECK_EQ(be->ops.stream_sync(be, NULL), 0); // nothing broke the device
  be->ops.mem_free(be, buf);
}

int main(void) {
  struct ferry_backend *cpu = NULL;
  CHECK_EQ(ferry_backend_create(&cpu, "cpu", NULL, 0), 0);
  check_bad_args(cpu);
  ferry_backend_destroy(cpu);
  if (ferry_backend_cuda_devices() <= 0)
    SKIP("no CUDA device: backend memory/stream tests not run");

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
  ferry_backend_destroy(be);
  CHECK_DONE();
}
