// kernels/cuda/cuda.h: C API of the CUDA kernels (kernels/cuda/*.cu). Each op has the
// argument order of its CPU reference (kernels/cpu/ops.h, quants.h, matmul.h) with the
// stream appended (a cudaStream_t passed as void *, NULL = default stream); ops that need
// cuBLAS or scratch memory also take the context. All pointers are device memory unless
// marked host. Ops are asynchronous: they enqueue work and return 0, or a negative
// errno-style code with a message (ferry_fail): -EINVAL for arguments a kernel cannot
// handle, -EIO for a CUDA or cuBLAS error, -ENOMEM when device memory runs out.
// This header does not include CUDA headers, so plain C code can use it.
//
// Activations of the quantized mat-vec are F32: each warp dequantizes weight blocks in
// registers and dots them with F32 x (no Q8_1 activation rounding), so results match the
// exact CPU reference (cpu_matvec_exact) to float rounding.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "kernels/types.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---- device and context ----
// Number of usable devices; 0 when there is no driver or no device (never fails).
int cuda_device_count(void);
// The context owns a cuBLAS handle and the matmul scratch (grown on demand, freed by
// destroy). One stream at a time may run matmuls of one context.
struct cuda_ctx;
int cuda_ctx_create(struct cuda_ctx **out, int device);
void cuda_ctx_destroy(struct cuda_ctx *ctx); // NULL-safe; synchronizes the device
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" into buf.
void cuda_ctx_describe(const struct cuda_ctx *ctx, char *buf, size_t n);

// ---- memory, streams, events ----
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

// ---- quantized weights (quant.cu) ----
// dst[0..n) = dequantized src; any weight type of kernels/types.h.
int cuda_dequant(enum ferry_type t, const void *src, float *dst, int64_t n, void *stream);
// y[r] = W[r] . x for r < nrows; fused dequantization, F32 activations.
int cuda_matvec(enum ferry_type t, const void *w, int64_t nrows, int64_t n, const float *x,
                float *y, void *stream);
// Y[i][r] = W[r] . X[i] for i < m. Small m uses the mat-vec kernel; larger m dequantizes
// W in row tiles to F16 (F32 for F32/BF16 weights), converts X likewise and multiplies
// with cublasGemmEx (F32 accumulation).
int cuda_matmul(struct cuda_ctx *ctx, enum ferry_type t, const void *w, int64_t nrows, int64_t n,
                const float *x, int64_t ldx, int64_t m, float *y, int64_t ldy, void *stream);
// Grouped-expert product (see cpu_matmul_grouped): w and offs are host arrays, rows is
// device memory. Gathers the X rows once, then one GEMM per non-empty group.
int cuda_matmul_grouped(struct cuda_ctx *ctx, enum ferry_type t, const void *const *w,
                        int64_t n_group, int64_t nrows, int64_t n, const float *x, int64_t ldx,
                        const int32_t *rows, const int64_t *offs, float *y, int64_t ldy,
                        void *stream);

// Self-test hooks (no device needed): the device decoders of cuda_dequant and the
// per-lane piece schedule of cuda_matvec replayed on the host, with the same wide or byte
// loads the device would pick for this pointer's alignment, so CI machines without a GPU
// still check the CUDA format decoding against the CPU reference. Host pointers.
int cuda_host_dequant(enum ferry_type t, const void *src, float *dst, int64_t n);
int cuda_host_matvec(enum ferry_type t, const void *w, int64_t nrows, int64_t n, const float *x,
                     float *y);

// ---- small ops (norm.cu, rope.cu, attn.cu, ffn.cu) ----
int cuda_rmsnorm_rows(float *y, const float *x, const float *w, int64_t nrows, int64_t n, float eps,
                      void *stream);
int cuda_rope_neox_rows(float *x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                        int64_t pos0, float freq_base, void *stream);
int cuda_kv_store(void *cache, enum ferry_type kv_type, int64_t kv_row_stride_elems, int64_t pos0,
                  int64_t n_tok, const float *src, int64_t n_elems, void *stream);
// head_dim <= 256.
int cuda_attn_decode(float *out, const float *q, const void *kcache, const void *vcache,
                     enum ferry_type kv_type, int64_t n_ctx_used, int64_t n_head, int64_t n_kv_head,
                     int64_t head_dim, int64_t kv_row_stride_elems, float scale, void *stream);
int cuda_attn_prefill(float *out, const float *q, const void *kcache, const void *vcache,
                      enum ferry_type kv_type, int64_t n_tok, int64_t pos0, int64_t n_head,
                      int64_t n_kv_head, int64_t head_dim, int64_t kv_row_stride_elems, float scale,
                      void *stream);
int cuda_swiglu(float *y, const float *g, const float *u, int64_t n, void *stream);
// n_expert <= 1024.
int cuda_router_topk_rows(const float *logits, int64_t n_tok, int64_t n_expert, int64_t k, int *ids,
                          float *weights, void *stream);
int cuda_add(float *y, const float *a, const float *b, int64_t n, void *stream);
int cuda_scale(float *y, const float *x, float s, int64_t n, void *stream);
int cuda_axpy(float *y, const float *x, float s, int64_t n, void *stream);
int cuda_sigmoid_mul(float *y, const float *x, const float *g, int64_t n, void *stream);

#ifdef __cplusplus
}
#endif
