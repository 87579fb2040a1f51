// kernels/backend.h: one compute interface over the CPU reference (kernels/cpu/) and the
// CUDA kernels (kernels/cuda/), so engine/ picks a backend per op at run time without
// #ifdefs. A backend is a table of function pointers plus an implementation context:
// backend memory (device memory for CUDA, the host heap for CPU), asynchronous copies,
// streams and events, and the forward-pass ops. Every op has the argument order of its
// CPU reference in kernels/cpu/ (ops.h, quants.h, matmul.h) with the backend first and
// the stream last.
//
// Pointers given to ops are backend memory (from ops.mem_alloc) unless a comment says
// host. Ops are asynchronous on the given stream (CUDA) or complete before returning
// (CPU); a NULL stream is the default stream. Ops return 0 or a negative errno-style code
// with a message (ferry_fail): -EINVAL for arguments the op cannot handle, -EIO for a
// device error. A backend is used by one thread at a time per stream; the CUDA matmul
// scratch belongs to the backend, so run matmuls of one backend on one stream at a time.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/types.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_pool;
struct ferry_backend;
struct ferry_stream; // opaque: cudaStream_t on CUDA, a dummy handle on CPU
struct ferry_event;  // opaque: cudaEvent_t on CUDA, a dummy handle on CPU

enum ferry_backend_kind { FERRY_BACKEND_CPU = 0, FERRY_BACKEND_CUDA = 1 };

// Every compute op, as X(ENUM_SUFFIX, ops_field). tests/gpu/op_table.h must hold at least
// one case per op (tests/unit/test_ops_table.c fails otherwise).
#define FERRY_OP_LIST(X)            \
  X(DEQUANT, dequant)               \
  X(MATVEC, matvec)                 \
  X(MATMUL, matmul)                 \
  X(MATMUL_GROUPED, matmul_grouped) \
  X(RMSNORM, rmsnorm)               \
  X(ROPE_NEOX, rope_neox)           \
  X(KV_STORE, kv_store)             \
  X(ATTN_DECODE, attn_decode)       \
  X(ATTN_PREFILL, attn_prefill)     \
  X(SWIGLU, swiglu)                 \
  X(ROUTER_TOPK, router_topk)       \
  X(ADD, add)                       \
  X(SCALE, scale)                   \
  X(AXPY, axpy)                     \
  X(SIGMOID_MUL, sigmoid_mul)

enum ferry_op {
#define FERRY_OP_ENUM_(E, f) FERRY_OP_##E,
  FERRY_OP_LIST(FERRY_OP_ENUM_)
#undef FERRY_OP_ENUM_
      FERRY_OP_COUNT
};

// Shorthands for the table below only (undefined after it).
#define be_t     struct ferry_backend
#define stream_t struct ferry_stream

struct ferry_backend_ops {
  // ---- memory ----
  int (*mem_alloc)(be_t *be, void **out, size_t bytes); // -ENOMEM with a message on failure
  void (*mem_free)(be_t *be, void *p);                  // NULL-safe
  // Copies between host memory and backend memory, ordered on stream s. For CUDA the
  // host side should be pinned for the copy to be asynchronous.
  int (*copy_h2d)(be_t *be, void *dst, const void *h_src, size_t bytes, stream_t *s);
  int (*copy_d2h)(be_t *be, void *h_dst, const void *src, size_t bytes, stream_t *s);
  int (*copy_d2d)(be_t *be, void *dst, const void *src, size_t bytes, stream_t *s);
  int (*memset0)(be_t *be, void *dst, size_t bytes, stream_t *s);
  // Host memory the device can copy from asynchronously: pinned (cudaHostAlloc) on CUDA,
  // 64-byte aligned heap on CPU. host_register pins memory allocated elsewhere (e.g.
  // NUMA-local expert slots) until host_unregister; a no-op on CPU.
  int (*host_alloc)(be_t *be, void **out, size_t bytes);
  void (*host_free)(be_t *be, void *p); // NULL-safe
  int (*host_register)(be_t *be, void *p, size_t bytes);
  int (*host_unregister)(be_t *be, void *p);
  // Free and total backend memory in bytes (CPU: MemAvailable and 0 = unknown total).
  int (*mem_info)(be_t *be, size_t *free_bytes, size_t *total_bytes);
  // ---- streams and events ----
  int (*stream_create)(be_t *be, stream_t **out);
  void (*stream_destroy)(be_t *be, stream_t *s); // NULL-safe
  int (*stream_sync)(be_t *be, stream_t *s);     // blocks until s is idle
  int (*event_create)(be_t *be, struct ferry_event **out);
  void (*event_destroy)(be_t *be, struct ferry_event *ev); // NULL-safe
  int (*event_record)(be_t *be, struct ferry_event *ev, stream_t *s);
  int (*stream_wait_event)(be_t *be, stream_t *s, struct ferry_event *ev); // no host block
  int (*event_sync)(be_t *be, struct ferry_event *ev);                     // blocks
  // Milliseconds between two recorded, completed events (-1 on CPU: no timing).
  float (*event_elapsed_ms)(be_t *be, struct ferry_event *start, struct ferry_event *end);

  // ---- compute ops (CPU reference named after each) ----
  // cpu_dequant_row: dst[0..n) = dequantised src (n a multiple of the block size).
  int (*dequant)(be_t *be, enum ferry_type t, const void *src, float *dst, int64_t n, stream_t *s);
  // cpu_matvec_exact: y[r] = W[r] . x, W nrows x n of type t, x F32.
  int (*matvec)(be_t *be, enum ferry_type t, const void *w, int64_t nrows, int64_t n,
                const float *x, float *y, stream_t *s);
  // cpu_matmul_exact: Y[i][r] = W[r] . X[i] for i < m (X row stride ldx, Y row stride ldy).
  int (*matmul)(be_t *be, enum ferry_type t, const void *w, int64_t nrows, int64_t n,
                const float *x, int64_t ldx, int64_t m, float *y, int64_t ldy, stream_t *s);
  // cpu_matmul_grouped: w (host array of n_group backend pointers) and offs (host array of
  // n_group+1) are host memory; rows (offs[n_group] indices into X) is backend memory.
  int (*matmul_grouped)(be_t *be, enum ferry_type t, const void *const *w, int64_t n_group,
                        int64_t nrows, int64_t n, const float *x, int64_t ldx, const int32_t *rows,
                        const int64_t *offs, float *y, int64_t ldy, stream_t *s);
  // cpu_rmsnorm_rows (per-head QK-norm: nrows = tokens*heads, n = head_dim). y may == x.
  int (*rmsnorm)(be_t *be, float *y, const float *x, const float *w, int64_t nrows, int64_t n,
                 float eps, stream_t *s);
  // cpu_rope_neox_rows (in place; partial rotary when n_rot < head_dim).
  int (*rope_neox)(be_t *be, float *x, int64_t n_tok, int64_t n_heads, int64_t head_dim,
                   int64_t n_rot, int64_t pos0, float freq_base, stream_t *s);
  // cpu_kv_store.
  int (*kv_store)(be_t *be, void *cache, enum ferry_type kv_type, int64_t kv_row_stride_elems,
                  int64_t pos0, int64_t n_tok, const float *src, int64_t n_elems, stream_t *s);
  // cpu_attn_decode / cpu_attn_prefill.
  int (*attn_decode)(be_t *be, float *out, const float *q, const void *kcache, const void *vcache,
                     enum ferry_type kv_type, int64_t n_ctx_used, int64_t n_head, int64_t n_kv_head,
                     int64_t head_dim, int64_t kv_row_stride_elems, float scale, stream_t *s);
  int (*attn_prefill)(be_t *be, float *out, const float *q, const void *kcache, const void *vcache,
                      enum ferry_type kv_type, int64_t n_tok, int64_t pos0, int64_t n_head,
                      int64_t n_kv_head, int64_t head_dim, int64_t kv_row_stride_elems, float scale,
                      stream_t *s);
  // cpu_swiglu.
  int (*swiglu)(be_t *be, float *y, const float *g, const float *u, int64_t n, stream_t *s);
  // cpu_router_topk_rows (ids int32).
  int (*router_topk)(be_t *be, const float *logits, int64_t n_tok, int64_t n_expert, int64_t k,
                     int *ids, float *weights, stream_t *s);
  // cpu_add, cpu_scale, cpu_axpy, cpu_sigmoid_mul.
  int (*add)(be_t *be, float *y, const float *a, const float *b, int64_t n, stream_t *s);
  int (*scale)(be_t *be, float *y, const float *x, float sc, int64_t n, stream_t *s);
  int (*axpy)(be_t *be, float *y, const float *x, float sc, int64_t n, stream_t *s);
  int (*sigmoid_mul)(be_t *be, float *y, const float *x, const float *g, int64_t n, stream_t *s);
};

// Read-only after creation.
struct ferry_backend {
  const char *name; // "cpu" or "cuda"
  enum ferry_backend_kind kind;
  struct ferry_backend_ops ops;
  void *impl; // cpu: struct ferry_pool * (may be NULL); cuda: struct cuda_ctx *
};

#undef be_t
#undef stream_t

// Creates a backend: name "cpu", "cuda" or "auto" (cuda when built with CUDA and a
// device is present, else cpu). pool (may be NULL) runs the CPU matmuls; it is borrowed.
// Returns 0, -ENODEV when "cuda" is asked for but not built or no device is present,
// -EINVAL for an unknown name.
int ferry_backend_create(struct ferry_backend **out, const char *name, struct ferry_pool *pool,
                         int device);
void ferry_backend_destroy(struct ferry_backend *be); // NULL-safe

// The static op table of a backend kind, without creating it (no device needed); NULL
// when the kind is not built in. Used by tests to check that every op is implemented.
const struct ferry_backend_ops *ferry_backend_ops_of(enum ferry_backend_kind kind);
// Whether ops->(field of op) is set.
bool ferry_backend_has_op(const struct ferry_backend_ops *ops, enum ferry_op op);
// "matvec", "rope_neox", ... (NULL for an out-of-range op).
const char *ferry_op_name(enum ferry_op op);
// Number of CUDA devices usable now (0 without CUDA support, driver or device).
int ferry_backend_cuda_devices(void);

#ifdef __cplusplus
}
#endif
