// kernels/backend_cuda.c: the CUDA op table behind kernels/backend.h, compiled only with
// FERRY_HAVE_CUDA; forwards to kernels/cuda/cuda.h with the stream handle unwrapped.
#ifdef FERRY_HAVE_CUDA
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/backend_impl.h"
#include "kernels/cuda/cuda.h"

#define CTX(be) ((struct cuda_ctx *)(be)->impl)
#define ST(s)   ((void *)(s))

static int cu_mem_alloc(struct ferry_backend *be, void **out, size_t bytes) {
  return cuda_malloc(out, bytes);
}
static void cu_mem_free(struct ferry_backend *be, void *p) { cuda_free(p); }
static int cu_copy_h2d(struct ferry_backend *be, void *dst, const void *src, size_t bytes,
                       struct ferry_stream *s) {
  return cuda_memcpy_h2d(dst, src, bytes, ST(s));
}
static int cu_copy_d2h(struct ferry_backend *be, void *dst, const void *src, size_t bytes,
                       struct ferry_stream *s) {
  return cuda_memcpy_d2h(dst, src, bytes, ST(s));
}
static int cu_copy_d2d(struct ferry_backend *be, void *dst, const void *src, size_t bytes,
                       struct ferry_stream *s) {
  return cuda_memcpy_d2d(dst, src, bytes, ST(s));
}
static int cu_memset0(struct ferry_backend *be, void *dst, size_t bytes, struct ferry_stream *s) {
  return cuda_memset0(dst, bytes, ST(s));
}
static int cu_host_alloc(struct ferry_backend *be, void **out, size_t bytes) {
  return cuda_host_alloc(out, bytes);
}
static void cu_host_free(struct ferry_backend *be, void *p) { cuda_host_free(p); }
static int cu_host_register(struct ferry_backend *be, void *p, size_t bytes) {
  return cuda_host_register(p, bytes);
}
static int cu_host_unregister(struct ferry_backend *be, void *p) { return cuda_host_unregister(p); }
static int cu_mem_info(struct ferry_backend *be, size_t *free_bytes, size_t *total_bytes) {
  return cuda_mem_info(free_bytes, total_bytes);
}
static int cu_stream_create(struct ferry_backend *be, struct ferry_stream **out) {
  return cuda_stream_create((void **)out);
}
static void cu_stream_destroy(struct ferry_backend *be, struct ferry_stream *s) {
  cuda_stream_destroy(ST(s));
}
static int cu_stream_sync(struct ferry_backend *be, struct ferry_stream *s) {
  return cuda_stream_sync(ST(s));
}
static int cu_event_create(struct ferry_backend *be, struct ferry_event **out) {
  return cuda_event_create((void **)out);
}
static void cu_event_destroy(struct ferry_backend *be, struct ferry_event *ev) {
  cuda_event_destroy(ev);
}
static int cu_event_record(struct ferry_backend *be, struct ferry_event *ev,
                           struct ferry_stream *s) {
  return cuda_event_record(ev, ST(s));
}
static int cu_stream_wait_event(struct ferry_backend *be, struct ferry_stream *s,
                                struct ferry_event *ev) {
  return cuda_stream_wait_event(ST(s), ev);
}
static int cu_event_sync(struct ferry_backend *be, struct ferry_event *ev) {
  return cuda_event_sync(ev);
}
static float cu_event_elapsed_ms(struct ferry_backend *be, struct ferry_event *a,
                                 struct ferry_event *b) {
  return cuda_event_elapsed_ms(a, b);
}

static int cu_dequant(struct ferry_backend *be, enum ferry_type t, const void *src, float *dst,
                      int64_t n, struct ferry_stream *s) {
  return cuda_dequant(t, src, dst, n, ST(s));
}
static int cu_matvec(struct ferry_backend *be, enum ferry_type t, const void *w, int64_t nrows,
                     int64_t n, const float *x, float *y, struct ferry_stream *s) {
  return cuda_matvec(t, w, nrows, n, x, y, ST(s));
}
static int cu_matmul(struct ferry_backend *be, enum ferry_type t, const void *w, int64_t nrows,
                     int64_t n, const float *x, int64_t ldx, int64_t m, float *y, int64_t ldy,
                     struct ferry_stream *s) {
  return cuda_matmul(CTX(be), t, w, nrows, n, x, ldx, m, y, ldy, ST(s));
}
static int cu_matmul_grouped(struct ferry_backend *be, enum ferry_type t, const void *const *w,
                             int64_t n_group, int64_t nrows, int64_t n, const float *x, int64_t ldx,
                             const int32_t *rows, const int64_t *offs, float *y, int64_t ldy,
                             struct ferry_stream *s) {
  return cuda_matmul_grouped(CTX(be), t, w, n_group, nrows, n, x, ldx, rows, offs, y, ldy, ST(s));
}
static int cu_rmsnorm(struct ferry_backend *be, float *y, const float *x, const float *w,
                      int64_t nrows, int64_t n, float eps, struct ferry_stream *s) {
  return cuda_rmsnorm_rows(y, x, w, nrows, n, eps, ST(s));
}
static int cu_rope_neox(struct ferry_backend *be, float *x, int64_t n_tok, int64_t n_heads,
                        int64_t head_dim, int64_t n_rot, int64_t pos0, float freq_base,
                        struct ferry_stream *s) {
  return cuda_rope_neox_rows(x, n_tok, n_heads, head_dim, n_rot, pos0, freq_base, ST(s));
}
static int cu_kv_store(struct ferry_backend *be, void *cache, enum ferry_type kv_type,
                       int64_t stride, int64_t pos0, int64_t n_tok, const float *src,
                       int64_t n_elems, struct ferry_stream *s) {
  return cuda_kv_store(cache, kv_type, stride, pos0, n_tok, src, n_elems, ST(s));
}
static int cu_attn_decode(struct ferry_backend *be, float *out, const float *q, const void *kc,
                          const void *vc, enum ferry_type kv_type, int64_t n_ctx_used,
                          int64_t n_head, int64_t n_kv_head, int64_t head_dim, int64_t stride,
                          float scale, struct ferry_stream *s) {
  return cuda_attn_decode(out, q, kc, vc, kv_type, n_ctx_used, n_head, n_kv_head, head_dim, stride,
                          scale, ST(s));
}
static int cu_attn_prefill(struct ferry_backend *be, float *out, const float *q, const void *kc,
                           const void *vc, enum ferry_type kv_type, int64_t n_tok, int64_t pos0,
                           int64_t n_head, int64_t n_kv_head, int64_t head_dim, int64_t stride,
                           float scale, struct ferry_stream *s) {
  return cuda_attn_prefill(out, q, kc, vc, kv_type, n_tok, pos0, n_head, n_kv_head, head_dim,
                           stride, scale, ST(s));
}
static int cu_swiglu(struct ferry_backend *be, float *y, const float *g, const float *u, int64_t n,
                     struct ferry_stream *s) {
  return cuda_swiglu(y, g, u, n, ST(s));
}
static int cu_router_topk(struct ferry_backend *be, const float *logits, int64_t n_tok,
                          int64_t n_expert, int64_t k, int *ids, float *weights,
                          struct ferry_stream *s) {
  return cuda_router_topk_rows(logits, n_tok, n_expert, k, ids, weights, ST(s));
}
static int cu_add(struct ferry_backend *be, float *y, const float *a, const float *b, int64_t n,
                  struct ferry_stream *s) {
  return cuda_add(y, a, b, n, ST(s));
}
static int cu_scale(struct ferry_backend *be, float *y, const float *x, float sc, int64_t n,
                    struct ferry_stream *s) {
  return cuda_scale(y, x, sc, n, ST(s));
}
static int cu_axpy(struct ferry_backend *be, float *y, const float *x, float sc, int64_t n,
                   struct ferry_stream *s) {
  return cuda_axpy(y, x, sc, n, ST(s));
}
static int cu_sigmoid_mul(struct ferry_backend *be, float *y, const float *x, const float *g,
                          int64_t n, struct ferry_stream *s) {
  return cuda_sigmoid_mul(y, x, g, n, ST(s));
}

const struct ferry_backend_ops ferry_cuda_ops = {
    .mem_alloc = cu_mem_alloc,
    .mem_free = cu_mem_free,
    .copy_h2d = cu_copy_h2d,
    .copy_d2h = cu_copy_d2h,
    .copy_d2d = cu_copy_d2d,
    .memset0 = cu_memset0,
    .host_alloc = cu_host_alloc,
    .host_free = cu_host_free,
    .host_register = cu_host_register,
    .host_unregister = cu_host_unregister,
    .mem_info = cu_mem_info,
    .stream_create = cu_stream_create,
    .stream_destroy = cu_stream_destroy,
    .stream_sync = cu_stream_sync,
    .event_create = cu_event_create,
    .event_destroy = cu_event_destroy,
    .event_record = cu_event_record,
    .stream_wait_event = cu_stream_wait_event,
    .event_sync = cu_event_sync,
    .event_elapsed_ms = cu_event_elapsed_ms,
    .dequant = cu_dequant,
    .matvec = cu_matvec,
    .matmul = cu_matmul,
    .matmul_grouped = cu_matmul_grouped,
    .rmsnorm = cu_rmsnorm,
    .rope_neox = cu_rope_neox,
    .kv_store = cu_kv_store,
    .attn_decode = cu_attn_decode,
    .attn_prefill = cu_attn_prefill,
    .swiglu = cu_swiglu,
    .router_topk = cu_router_topk,
    .add = cu_add,
    .scale = cu_scale,
    .axpy = cu_axpy,
    .sigmoid_mul = cu_sigmoid_mul,
};

int cuda_backend_init(struct ferry_backend *be, int device) {
  struct cuda_ctx *ctx;
  int rc = cuda_ctx_create(&ctx, device);
  if (rc) return ferry_fail_ctx(rc, "cuda backend");
  be->name = "cuda";
  be->kind = FERRY_BACKEND_CUDA;
  be->ops = ferry_cuda_ops;
  be->impl = ctx;
  return 0;
}

void cuda_backend_fini(struct ferry_backend *be) { cuda_ctx_destroy(CTX(be)); }

void cuda_backend_describe(const struct ferry_backend *be, char *buf, size_t n) {
  cuda_ctx_describe(CTX(be), buf, n);
}
#endif // FERRY_HAVE_CUDA
