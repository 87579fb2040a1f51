// kernels/cuda/cuda.h: C API of the CUDA kernels (kernels/cuda/*.cu) behind the "cuda"
// table of kernels/backend.h. Each compute op takes the arguments of its backend op
// (kernels/backend.h says what they mean), with the context first and the stream last (a
// cudaStream_t passed as void *, NULL = the default stream). All pointers are device
// memory unless marked host. Ops are asynchronous: they enqueue work and return 0, or a
// negative errno-style code with a message (ferry_fail): -EINVAL for arguments a kernel
// cannot handle or shapes beyond the reserved scratch, -EIO for a CUDA or cuBLAS error.
// No op allocates: the workspaces come from cuda_reserve (struct ferry_limits).
// This header does not include CUDA headers, so plain C code can use it.
//
// Numerics: the mat-vec dequantizes weights in registers and dots them with F32
// activations (no Q8_1 activation rounding), for both precisions. Larger matrix products
// dequantize row tiles: to F32 and cublasSgemm for FERRY_PREC_EXACT, to F16 and
// cublasGemmEx (F32 accumulation) for FERRY_PREC_FAST.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "kernels/types.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---- device and context (runtime.cu) ----
// Number of usable devices; 0 when there is no driver or no device (never fails).
int cuda_device_count(void);
// The context owns a cuBLAS handle and the scratch of cuda_reserve. One stream at a time
// may run the ops of one context.
struct cuda_ctx;
int cuda_ctx_create(struct cuda_ctx **out, int device);
void cuda_ctx_destroy(struct cuda_ctx *ctx); // NULL-safe; synchronizes the device
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" into buf.
void cuda_ctx_describe(const struct cuda_ctx *ctx, char *buf, size_t n);
// Allocates (or grows, never shrinks: limits are merged field by field with the ones
// reserved before) the scratch for shapes up to *lim. Synchronizes the device.
int cuda_reserve(struct cuda_ctx *ctx, const struct ferry_limits *lim);
// Device bytes cuda_reserve allocates for lim (no device needed) / has allocated.
uint64_t cuda_scratch_bytes(const struct ferry_limits *lim);
uint64_t cuda_reserved_bytes(const struct cuda_ctx *ctx);

// ---- memory, streams, events, graphs (runtime.cu) ----
int cuda_malloc(void **d_out, size_t bytes);
void cuda_free(void *d);
int cuda_host_alloc(void **p_out, size_t bytes); // pinned host memory
void cuda_host_free(void *p);
int cuda_host_register(void *p, size_t bytes); // pins existing host memory
int cuda_host_unregister(void *p);
int cuda_mem_info(size_t *free_bytes, size_t *total_bytes); // current device
int cuda_memcpy_h2d(void *d_dst, const void *h_src, size_t bytes, void *stream);
int cuda_memcpy_d2h(void *h_dst, const void *d_src, size_t bytes, void *stream);
int cuda_memcpy_d2d(void *d_dst, const void *d_src, size_t bytes, void *stream);
int cuda_memset0(void *d_dst, size_t bytes, void *stream);
int cuda_stream_create(void **out); // non-blocking stream
void cuda_stream_destroy(void *stream);
int cuda_stream_sync(void *stream);
int cuda_event_create(void **out);
void cuda_event_destroy(void *ev);
int cuda_event_record(void *ev, void *stream);
int cuda_stream_wait_event(void *stream, void *ev);
int cuda_event_sync(void *ev);
float cuda_event_elapsed_ms(void *start, void *end); // -1 on error
// Graph capture on a non-NULL stream (thread-local mode: other threads may keep using
// CUDA). graph_end instantiates; *out is a cudaGraphExec_t.
int cuda_graph_begin(void *stream);
int cuda_graph_end(void *stream, void **out);
int cuda_graph_launch(void *graph_exec, void *stream);
void cuda_graph_destroy(void *graph_exec);
// 1 when stream is being captured, 0 when not, negative on error.
int cuda_stream_capturing(void *stream);

// ---- quantized weights and matrix products (quant.cu) ----
// Weight types: F32, F16, BF16, Q4_0, Q8_0, Q2_K..Q6_K.
int cuda_dequant(enum ferry_type t, const void *src, float *dst, int64_t n, void *stream);
int cuda_embed(enum ferry_type t, const void *table, uint64_t row_bytes, const int32_t *ids,
               int64_t n, int64_t d, float *out, void *stream);
int cuda_matvec(enum ferry_type t, const void *w, int64_t nrows, int64_t n, const float *x,
                float *y, void *stream);
int cuda_matmul(struct cuda_ctx *ctx, enum ferry_prec prec, enum ferry_type t, const void *w,
                int64_t nrows, int64_t n, const float *x, int64_t ldx, int64_t m, float *y,
                int64_t ldy, void *stream);
// w and offs are host arrays, rows is device memory (kernels/backend.h). Groups of 3 rows
// or more need the reserved gather buffer: offs[n_group] * n <= max(max_tok * max_in,
// max_tok * moe_k * max(moe_d, moe_ff)).
int cuda_matmul_grouped(struct cuda_ctx *ctx, enum ferry_type t, const void *const *w,
                        int64_t n_group, int64_t nrows, int64_t n, const float *x, int64_t ldx,
                        const int32_t *rows, const int64_t *offs, float *y, int64_t ldy,
                        void *stream);

// ---- routed experts (moe.cu) ----
int cuda_moe_ffn(struct cuda_ctx *ctx, enum ferry_prec prec, const struct ferry_moe_shape *sh,
                 const float *x, int64_t n_tok, const int32_t *rows, int n_group,
                 const struct ferry_moe_group *g, float *y, void *stream);
int cuda_moe_ffn_ids(struct cuda_ctx *ctx, enum ferry_prec prec, const struct ferry_moe_shape *sh,
                     const struct ferry_moe_table *tab, const float *x, int64_t n_tok, int64_t k,
                     const int32_t *ids, float *y, int32_t *map, void *stream);
int cuda_moe_combine(float *y, const float *slots, const int32_t *map, const float *w,
                     int64_t n_tok, int64_t k, int64_t d, void *stream);

// Self-test hooks (no device needed): the device decoders of cuda_dequant and the lane
// schedule of the mat-vec replayed on the host, with the same wide or narrow loads the
// device would pick for this pointer's alignment, so CI machines without a GPU still
// check the CUDA format decoding against the CPU reference. Host pointers.
int cuda_host_dequant(enum ferry_type t, const void *src, float *dst, int64_t n);
int cuda_host_matvec(enum ferry_type t, const void *w, int64_t nrows, int64_t n, const float *x,
                     float *y);

// ---- attention and positions (attn.cu, rope.cu) ----
// pos: one int32 in device memory (kernels/backend.h).
int cuda_rope_neox(float *x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                   const int32_t *pos, float freq_base, void *stream);
int cuda_kv_store(void *cache, enum ferry_type kv_type, int64_t kv_row_stride_elems,
                  const int32_t *pos, int64_t n_tok, const float *src, int64_t n_elems,
                  void *stream);
// head_dim <= 256. One query (n_tok == 1) runs split over the positions (partials in the
// reserved scratch, a fixed grid: capturable at any position).
int cuda_attn(struct cuda_ctx *ctx, enum ferry_prec prec, float *out, const float *q,
              const void *kcache, const void *vcache, enum ferry_type kv_type, int64_t n_tok,
              const int32_t *pos, int64_t n_head, int64_t n_kv_head, int64_t head_dim,
              int64_t kv_row_stride_elems, float scale, void *stream);

// ---- small ops (norm.cu, ffn.cu) ----
int cuda_rmsnorm_rows(float *y, const float *x, const float *w, int64_t nrows, int64_t n, float eps,
                      void *stream);
int cuda_swiglu(float *y, const float *g, const float *u, int64_t n, void *stream);
// n_expert <= 1024.
int cuda_router_topk_rows(const float *logits, int64_t n_tok, int64_t n_expert, int64_t k, int *ids,
                          float *weights, void *stream);
int cuda_add(float *y, const float *a, const float *b, int64_t n, void *stream);
int cuda_scale(float *y, const float *x, float s, int64_t n, void *stream);
int cuda_axpy(float *y, const float *x, float s, int64_t n, void *stream);
int cuda_sigmoid_mul(float *y, const float *x, const float *g, int64_t n, void *stream);
int cuda_gate_add_rows(float *y, const float *x, const float *g, int64_t n_rows, int64_t d,
                       void *stream);
int cuda_copy2d(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t nrows,
                int64_t ncols, void *stream);

// ---- Gated DeltaNet (deltanet.cu) ----
int cuda_ssm_conv(float *y, float *state, const float *u, const float *w, int64_t T, int64_t C,
                  int64_t K, int apply_silu, void *stream);
int cuda_l2norm_heads(float *x, int64_t ld, int64_t T, int64_t n_heads, int64_t d, float eps,
                      float scale, void *stream);
int cuda_delta_gates(float *beta, float *g, const float *b, const float *a, const float *ssm_a,
                     const float *dt_bias, int64_t T, int64_t Hv, void *stream);
// dk <= 256.
int cuda_delta_rule(float *o, int64_t ldo, float *S, const float *q, int64_t ldq, const float *k,
                    int64_t ldk, const float *v, int64_t ldv, const float *beta, const float *g,
                    int64_t T, int64_t Hk, int64_t Hv, int64_t dk, int64_t dv, void *stream);
int cuda_gated_rmsnorm(float *y, const float *o, const float *z, const float *w, int64_t n_heads,
                       int64_t d, float eps, void *stream);
int cuda_ssm_in_regroup(float *qkv, float *z, const float *p, int64_t T, int64_t nk, int64_t nv,
                        int64_t dk, int64_t dv, void *stream);
int cuda_ssm_ba_regroup(float *b, float *a, const float *p, int64_t T, int64_t nk, int64_t nv,
                        void *stream);

#ifdef __cplusplus
}
#endif
