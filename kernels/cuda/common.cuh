// kernels/cuda/common.cuh: helpers shared by the .cu files: error checks that turn a CUDA
// or cuBLAS failure into a ferry error naming the call, warp reductions, launch sizing,
// and KV-cache element access. Private to kernels/cuda/.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

// base/base.h uses C11 _Noreturn, which C++ spells [[noreturn]].
#ifndef _Noreturn
#define _Noreturn [[noreturn]]
#define FERRY_UNDEF_NORETURN_
#endif
#include "base/base.h"
#ifdef FERRY_UNDEF_NORETURN_
#undef _Noreturn
#undef FERRY_UNDEF_NORETURN_
#endif
#include "kernels/cuda/cuda.h"
#include "kernels/types.h"

// Returns -EIO (or -ENOMEM) from the enclosing int function when a CUDA call fails. The
// runtime's last-error slot is cleared so that a later launch check does not report this
// (non-sticky) error again.
#define CUDA_CHECK(call)                                                                   \
  do {                                                                                     \
    cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess) {                                                               \
      (void)cudaGetLastError();                                                            \
      return ferry_fail(e_ == cudaErrorMemoryAllocation ? -ENOMEM : -EIO, "%s:%d: %s: %s", \
                        __FILE__, __LINE__, #call, cudaGetErrorString(e_));                \
    }                                                                                      \
  } while (0)

// After a kernel launch: reports a bad launch configuration or an earlier async error.
#define CUDA_CHECK_LAUNCH(what) CUDA_CHECK(cudaGetLastError())

#define FERRY_WARP 32

// #pragma unroll for code compiled for both host and device (the host compiler warns).
#ifdef __CUDA_ARCH__
#define FERRY_UNROLL _Pragma("unroll")
#else
#define FERRY_UNROLL
#endif

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Little-endian f16 at any byte address (blocks of 34, 110, 210 bytes are not aligned).
// Host-callable too: the decoders run on the host in cuda_host_* self-tests.
__host__ __device__ __forceinline__ float load_f16(const uint8_t *p) {
  const unsigned short h = (unsigned short)(p[0] | (p[1] << 8));
  return __half2float(__ushort_as_half(h));
}

__host__ __device__ __forceinline__ float bits_to_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

static inline unsigned grid_for(int64_t n, int threads) {
  int64_t g = (n + threads - 1) / threads;
  if (g > 65535 * 16) g = 65535 * 16; // kernels use grid-stride loops beyond this
  return (unsigned)(g > 0 ? g : 1);
}

// KV cache element e of one position row (layout in kernels/cpu/ops.h).
template <int KV>
__device__ __forceinline__ float kv_load(const uint8_t *row, int64_t e);
template <>
__device__ __forceinline__ float kv_load<FT_F32>(const uint8_t *row, int64_t e) {
  return ((const float *)row)[e];
}
template <>
__device__ __forceinline__ float kv_load<FT_F16>(const uint8_t *row, int64_t e) {
  return __half2float(((const __half *)row)[e]);
}
template <>
__device__ __forceinline__ float kv_load<FT_Q8_0>(const uint8_t *row, int64_t e) {
  const uint8_t *blk = row + (e >> 5) * 34;
  return load_f16(blk) * (float)(int8_t)blk[2 + (e & 31)];
}

static inline int64_t kv_row_bytes(enum ferry_type t, int64_t elems) {
  return t == FT_F32 ? elems * 4 : t == FT_F16 ? elems * 2 : elems / 32 * 34;
}

// ---- context (runtime.cu) ----
#include <cublas_v2.h>

#define CUBLAS_CHECK(call)                                                                        \
  do {                                                                                            \
    cublasStatus_t s_ = (call);                                                                   \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                              \
      return ferry_fail(-EIO, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__, #call, (int)s_); \
  } while (0)

enum cuda_scratch { CUDA_SCRATCH_W = 0, CUDA_SCRATCH_X = 1, CUDA_SCRATCH_COUNT };

struct cuda_ctx {
  int device;
  cublasHandle_t blas;
  void *d_scratch[CUDA_SCRATCH_COUNT];
  size_t scratch_bytes[CUDA_SCRATCH_COUNT];
  char desc[192];
};

// Scratch buffer `which` of at least `bytes`, grown (after draining `stream`, whose
// queued kernels may still read the old buffer) when too small.
int cuda_ctx_scratch(struct cuda_ctx *ctx, enum cuda_scratch which, size_t bytes, void *stream,
                     void **out);
