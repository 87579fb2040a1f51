// kernels/backend.c: the CPU and CUDA op tables behind kernels/backend.h. The CPU table
// calls the scalar references (memory is the host heap, streams and events are dummies
// because every op completes before returning); the CUDA table, compiled only with
// FERRY_HAVE_CUDA, forwards to kernels/cuda/cuda.h with the stream handle unwrapped.
#include "kernels/backend.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quants.h"
#ifdef FERRY_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

#define POOL(be) ((struct ferry_pool *)(be)->impl)

// ---- CPU: memory, streams, events ----

static int cpu_mem_alloc(struct ferry_backend *be, void **out, size_t bytes) {
  *out = ferry_alloc_aligned(64, bytes ? bytes : 1);
  return *out ? 0 : ferry_fail(-ENOMEM, "cpu backend: cannot allocate %zu bytes", bytes);
}
static void cpu_mem_free(struct ferry_backend *be, void *p) { ferry_free_aligned(p); }
static int cpu_copy(struct ferry_backend *be, void *dst, const void *src, size_t bytes,
                    struct ferry_stream *s) {
  if (bytes) memmove(dst, src, bytes);
  return 0;
}
static int cpu_memset0(struct ferry_backend *be, void *dst, size_t bytes, struct ferry_stream *s) {
  if (bytes) memset(dst, 0, bytes);
  return 0;
}
static int cpu_host_register(struct ferry_backend *be, void *p, size_t bytes) { return 0; }
static int cpu_host_unregister(struct ferry_backend *be, void *p) { return 0; }
static int cpu_mem_info(struct ferry_backend *be, size_t *free_bytes, size_t *total_bytes) {
  *free_bytes = (size_t)ferry_mem_available_bytes();
  *total_bytes = 0;
  return 0;
}
// CPU ops finish before returning, so streams and events only need distinct non-NULL
// handles; one static byte serves all of them.
static char g_cpu_handle;
static int cpu_stream_create(struct ferry_backend *be, struct ferry_stream **out) {
  *out = (struct ferry_stream *)&g_cpu_handle;
  return 0;
}
static void cpu_stream_destroy(struct ferry_backend *be, struct ferry_stream *s) {}
static int cpu_stream_sync(struct ferry_backend *be, struct ferry_stream *s) { return 0; }
static int cpu_event_create(struct ferry_backend *be, struct ferry_event **out) {
  *out = (struct ferry_event *)&g_cpu_handle;
  return 0;
}
static void cpu_event_destroy(struct ferry_backend *be, struct ferry_event *ev) {}
static int cpu_event_record(struct ferry_backend *be, struct ferry_event *ev,
                            struct ferry_stream *s) {
  return 0;
}
static int cpu_stream_wait_event(struct ferry_backend *be, struct ferry_stream *s,
                                 struct ferry_event *ev) {
  return 0;
}
static int cpu_event_sync(struct ferry_backend *be, struct ferry_event *ev) { return 0; }
static float cpu_event_elapsed_ms(struct ferry_backend *be, struct ferry_event *a,
                                  struct ferry_event *b) {
  return -1.0f;
}

// ---- CPU: ops ----

static int check_weight(enum ferry_type t, int64_t n, const char *what) {
  const struct ferry_type_info *ti = ferry_type_info(t);
  if (!ti || !ti->weight)
    return ferry_fail(-EINVAL, "cpu %s: type %d is not a weight type", what, (int)t);
  if (n <= 0 || n % ti->blck)
    return ferry_fail(-EINVAL, "cpu %s: row length %lld is not a multiple of %u", what,
                      (long long)n, ti->blck);
  return 0;
}

static int cpu_be_dequant(struct ferry_backend *be, enum ferry_type t, const void *src, float *dst,
                          int64_t n, struct ferry_stream *s) {
  int rc = check_weight(t, n, "dequant");
  if (rc) return rc;
  cpu_dequant_row(t, src, dst, n);
  return 0;
}

static int cpu_be_matvec(struct ferry_backend *be, enum ferry_type t, const void *w, int64_t nrows,
                         int64_t n, const float *x, float *y, struct ferry_stream *s) {
  int rc = check_weight(t, n, "matvec");
  if (rc) return rc;
  cpu_matvec_exact(POOL(be), t, w, nrows, n, x, y);
  return 0;
}

static int cpu_be_matmul(struct ferry_backend *be, enum ferry_type t, const void *w, int64_t nrows,
                         int64_t n, const float *x, int64_t ldx, int64_t m, float *y, int64_t ldy,
                         struct ferry_stream *s) {
  int rc = check_weight(t, n, "matmul");
  if (rc) return rc;
  if (ldx < n || ldy < nrows) return ferry_fail(-EINVAL, "cpu matmul: bad strides");
  cpu_matmul_exact(POOL(be), t, w, nrows, n, x, ldx, m, y, ldy);
  return 0;
}

static int cpu_be_matmul_grouped(struct ferry_backend *be, enum ferry_type t, const void *const *w,
                                 int64_t n_group, int64_t nrows, int64_t n, const float *x,
                                 int64_t ldx, const int32_t *rows, const int64_t *offs, float *y,
                                 int64_t ldy, struct ferry_stream *s) {
  int rc = check_weight(t, n, "matmul_grouped");
  if (rc) return rc;
  if (ldx < n || ldy < nrows || n_group <= 0 || offs[0] != 0)
    return ferry_fail(-EINVAL, "cpu matmul_grouped: bad strides or groups");
  for (int64_t g = 0; g < n_group; g++)
    if (offs[g + 1] < offs[g]) return ferry_fail(-EINVAL, "cpu matmul_grouped: offs not sorted");
  cpu_matmul_grouped(POOL(be), t, w, n_group, nrows, n, x, ldx, rows, offs, y, ldy);
  return 0;
}

static int cpu_be_rmsnorm(struct ferry_backend *be, float *y, const float *x, const float *w,
                          int64_t nrows, int64_t n, float eps, struct ferry_stream *s) {
  if (n <= 0 || nrows < 0) return ferry_fail(-EINVAL, "cpu rmsnorm: bad sizes");
  cpu_rmsnorm_rows(y, x, w, nrows, n, eps);
  return 0;
}

static int cpu_be_rope_neox(struct ferry_backend *be, float *x, int64_t n_tok, int64_t n_heads,
                            int64_t head_dim, int64_t n_rot, int64_t pos0, float freq_base,
                            struct ferry_stream *s) {
  if (n_rot <= 0 || n_rot % 2 || n_rot > head_dim || n_heads <= 0 || n_tok < 0 || pos0 < 0)
    return ferry_fail(-EINVAL, "cpu rope: bad sizes (n_rot %lld, head_dim %lld)", (long long)n_rot,
                      (long long)head_dim);
  cpu_rope_neox_rows(x, n_tok, n_heads, head_dim, n_rot, pos0, freq_base);
  return 0;
}

static int cpu_be_kv_store(struct ferry_backend *be, void *cache, enum ferry_type kv_type,
                           int64_t stride, int64_t pos0, int64_t n_tok, const float *src,
                           int64_t n_elems, struct ferry_stream *s) {
  return cpu_kv_store(cache, kv_type, stride, pos0, n_tok, src, n_elems);
}

static int check_attn(enum ferry_type kv_type, int64_t n_head, int64_t n_kv_head, int64_t head_dim,
                      int64_t stride) {
  if (kv_type != FT_F32 && kv_type != FT_F16 && kv_type != FT_Q8_0)
    return ferry_fail(-EINVAL, "cpu attention: KV type %d not supported", (int)kv_type);
  if (n_head <= 0 || n_kv_head <= 0 || n_head % n_kv_head || head_dim <= 0 ||
      stride < n_kv_head * head_dim || (kv_type == FT_Q8_0 && (head_dim % 32 || stride % 32)))
    return ferry_fail(-EINVAL, "cpu attention: bad shape (heads %lld/%lld, head_dim %lld)",
                      (long long)n_head, (long long)n_kv_head, (long long)head_dim);
  return 0;
}

static int cpu_be_attn_decode(struct ferry_backend *be, float *out, const float *q, const void *kc,
                              const void *vc, enum ferry_type kv_type, int64_t n_ctx_used,
                              int64_t n_head, int64_t n_kv_head, int64_t head_dim, int64_t stride,
                              float scale, struct ferry_stream *s) {
  int rc = check_attn(kv_type, n_head, n_kv_head, head_dim, stride);
  if (rc) return rc;
  if (n_ctx_used <= 0) return ferry_fail(-EINVAL, "cpu attn_decode: empty context");
  cpu_attn_decode(out, q, kc, vc, kv_type, n_ctx_used, n_head, n_kv_head, head_dim, stride, scale);
  return 0;
}

static int cpu_be_attn_prefill(struct ferry_backend *be, float *out, const float *q, const void *kc,
                               const void *vc, enum ferry_type kv_type, int64_t n_tok, int64_t pos0,
                               int64_t n_head, int64_t n_kv_head, int64_t head_dim, int64_t stride,
                               float scale, struct ferry_stream *s) {
  int rc = check_attn(kv_type, n_head, n_kv_head, head_dim, stride);
  if (rc) return rc;
  if (n_tok < 0 || pos0 < 0) return ferry_fail(-EINVAL, "cpu attn_prefill: bad positions");
  cpu_attn_prefill(out, q, kc, vc, kv_type, n_tok, pos0, n_head, n_kv_head, head_dim, stride,
                   scale);
  return 0;
}

static int cpu_be_swiglu(struct ferry_backend *be, float *y, const float *g, const float *u,
                         int64_t n, struct ferry_stream *s) {
  cpu_swiglu(y, g, u, n);
  return 0;
}

static int cpu_be_router_topk(struct ferry_backend *be, const float *logits, int64_t n_tok,
                              int64_t n_expert, int64_t k, int *ids, float *weights,
                              struct ferry_stream *s) {
  return cpu_router_topk_rows(logits, n_tok, n_expert, k, ids, weights);
}

static int cpu_be_add(struct ferry_backend *be, float *y, const float *a, const float *b, int64_t n,
                      struct ferry_stream *s) {
  cpu_add(y, a, b, n);
  return 0;
}
static int cpu_be_scale(struct ferry_backend *be, float *y, const float *x, float sc, int64_t n,
                        struct ferry_stream *s) {
  cpu_scale(y, x, sc, n);
  return 0;
}
static int cpu_be_axpy(struct ferry_backend *be, float *y, const float *x, float sc, int64_t n,
                       struct ferry_stream *s) {
  cpu_axpy(y, x, sc, n);
  return 0;
}
static int cpu_be_sigmoid_mul(struct ferry_backend *be, float *y, const float *x, const float *g,
                              int64_t n, struct ferry_stream *s) {
  cpu_sigmoid_mul(y, x, g, n);
  return 0;
}

static const struct ferry_backend_ops k_cpu_ops = {
    .mem_alloc = cpu_mem_alloc,
    .mem_free = cpu_mem_free,
    .copy_h2d = cpu_copy,
    .copy_d2h = cpu_copy,
    .copy_d2d = cpu_copy,
    .memset0 = cpu_memset0,
    .host_alloc = cpu_mem_alloc,
    .host_free = cpu_mem_free,
    .host_register = cpu_host_register,
    .host_unregister = cpu_host_unregister,
    .mem_info = cpu_mem_info,
    .stream_create = cpu_stream_create,
    .stream_destroy = cpu_stream_destroy,
    .stream_sync = cpu_stream_sync,
    .event_create = cpu_event_create,
    .event_destroy = cpu_event_destroy,
    .event_record = cpu_event_record,
    .stream_wait_event = cpu_stream_wait_event,
    .event_sync = cpu_event_sync,
    .event_elapsed_ms = cpu_event_elapsed_ms,
    .dequant = cpu_be_dequant,
    .matvec = cpu_be_matvec,
    .matmul = cpu_be_matmul,
    .matmul_grouped = cpu_be_matmul_grouped,
    .rmsnorm = cpu_be_rmsnorm,
    .rope_neox = cpu_be_rope_neox,
    .kv_store = cpu_be_kv_store,
    .attn_decode = cpu_be_attn_decode,
    .attn_prefill = cpu_be_attn_prefill,
    .swiglu = cpu_be_swiglu,
    .router_topk = cpu_be_router_topk,
    .add = cpu_be_add,
    .scale = cpu_be_scale,
    .axpy = cpu_be_axpy,
    .sigmoid_mul = cpu_be_sigmoid_mul,
};

// ---- CUDA ----
#ifdef FERRY_HAVE_CUDA

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

static const struct ferry_backend_ops k_cuda_ops = {
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
#endif // FERRY_HAVE_CUDA

// ---- creation and introspection ----

const struct ferry_backend_ops *ferry_backend_ops_of(enum ferry_backend_kind kind) {
  if (kind == FERRY_BACKEND_CPU) return &k_cpu_ops;
#ifdef FERRY_HAVE_CUDA
  if (kind == FERRY_BACKEND_CUDA) return &k_cuda_ops;
#endif
  return NULL;
}

bool ferry_backend_has_op(const struct ferry_backend_ops *ops, enum ferry_op op) {
  switch (op) {
#define FERRY_OP_HAS_(E, f) \
  case FERRY_OP_##E: return ops->f != NULL;
    FERRY_OP_LIST(FERRY_OP_HAS_)
#undef FERRY_OP_HAS_
    default: return false;
  }
}

const char *ferry_op_name(enum ferry_op op) {
  switch (op) {
#define FERRY_OP_NAME_(E, f) \
  case FERRY_OP_##E: return #f;
    FERRY_OP_LIST(FERRY_OP_NAME_)
#undef FERRY_OP_NAME_
    default: return NULL;
  }
}

int ferry_backend_cuda_devices(void) {
#ifdef FERRY_HAVE_CUDA
  return cuda_device_count();
#else
  return 0;
#endif
}

int ferry_backend_create(struct ferry_backend **out, const char *name, struct ferry_pool *pool,
                         int device) {
  *out = NULL;
  bool want_cuda;
  if (!strcmp(name, "cpu"))
    want_cuda = false;
  else if (!strcmp(name, "cuda"))
    want_cuda = true;
  else if (!strcmp(name, "auto"))
    want_cuda = ferry_backend_cuda_devices() > 0;
  else
    return ferry_fail(-EINVAL, "unknown backend '%s' (cpu, cuda or auto)", name);

  struct ferry_backend *be = calloc(1, sizeof(*be));
  if (!be) return ferry_fail(-ENOMEM, "backend: out of memory");
  if (!want_cuda) {
    be->name = "cpu";
    be->kind = FERRY_BACKEND_CPU;
    be->ops = k_cpu_ops;
    be->impl = pool;
    *out = be;
    return 0;
  }
#ifdef FERRY_HAVE_CUDA
  struct cuda_ctx *ctx;
  int rc = cuda_ctx_create(&ctx, device);
  if (rc) {
    free(be);
    return ferry_fail_ctx(rc, "cuda backend");
  }
  be->name = "cuda";
  be->kind = FERRY_BACKEND_CUDA;
  be->ops = k_cuda_ops;
  be->impl = ctx;
  *out = be;
  return 0;
#else
  free(be);
  return ferry_fail(-ENODEV,
                    "cuda backend: ferry was built without CUDA (-DFERRY_CUDA=OFF "
                    "or nvcc not found)");
#endif
}

void ferry_backend_destroy(struct ferry_backend *be) {
  if (!be) return;
#ifdef FERRY_HAVE_CUDA
  if (be->kind == FERRY_BACKEND_CUDA) cuda_ctx_destroy((struct cuda_ctx *)be->impl);
#endif
  free(be);
}
