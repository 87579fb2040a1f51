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
#define FERRY_UNROLL  _Pragma("unroll")
#define FERRY_UNROLL2 _Pragma("unroll 2")
#else
#define FERRY_UNROLL
#define FERRY_UNROLL2
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

// cuBLAS is opened at run time (cuda_blas_load, on the first context), not linked: mapping
// libcublas/libcublasLt at start-up costs ~215 MB of RSS in every process, CPU-only runs
// included. The few entry points ferry uses go through this table; the macros below keep
// the call sites written as plain cuBLAS calls.
struct cuda_blas_api {
  cublasStatus_t (*create)(cublasHandle_t *);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
  cublasStatus_t (*set_workspace)(cublasHandle_t, void *, size_t);
  cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t);
  cublasStatus_t (*sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                          const float *, const float *, int, const float *, int, const float *,
                          float *, int);
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void *, const void *, cudaDataType, int, const void *,
                            cudaDataType, int, const void *, void *, cudaDataType, int,
                            cublasComputeType_t, cublasGemmAlgo_t);
};
extern struct cuda_blas_api g_blas;
// Loads libcublas once (thread-safe); 0 or -ENODEV with a message naming what is missing.
int cuda_blas_load(void);
#undef cublasCreate
#undef cublasDestroy
#undef cublasSetStream
#undef cublasSetWorkspace
#undef cublasSgemm
#define cublasCreate(...)       g_blas.create(__VA_ARGS__)
#define cublasDestroy(...)      g_blas.destroy(__VA_ARGS__)
#define cublasSetStream(...)    g_blas.set_stream(__VA_ARGS__)
#define cublasSetWorkspace(...) g_blas.set_workspace(__VA_ARGS__)
#define cublasSetMathMode(...)  g_blas.set_math_mode(__VA_ARGS__)
#define cublasSgemm(...)        g_blas.sgemm(__VA_ARGS__)
#define cublasGemmEx(...)       g_blas.gemm_ex(__VA_ARGS__)

#define CUBLAS_CHECK(call)                                                                        \
  do {                                                                                            \
    cublasStatus_t s_ = (call);                                                                   \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                              \
      return ferry_fail(-EIO, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__, #call, (int)s_); \
  } while (0)

// Below this many activation rows a product runs as mat-vecs (one weight pass per row);
// from it on, weights are dequantized to tiles for cuBLAS. MoE groups use the same rule
// per group, so a pair's output depends only on its group's size (moe_ffn == moe_ffn_ids).
constexpr int64_t GEMM_MIN_ROWS = 3;
// Attention decode splits the positions over at most this many blocks per head.
constexpr int ATT_MAX_SPLITS = 32;

// The workspaces of cuda_reserve, sized from struct ferry_limits (cuda_scratch_layout).
// Device memory unless marked h_ (pinned host).
struct cuda_scratch {
  bool reserved;           // cuda_reserve has run
  struct ferry_limits lim; // what it is sized for
  uint64_t bytes;          // device bytes
  void *base;              // the one device allocation
  void *h_base;            // the one pinned host allocation
  // matrix products
  void *blas_ws; // cuBLAS workspace (set on the handle, so capture never allocates)
  size_t blas_ws_bytes;
  void *wtile; // dequantized weight tiles (F16 or F32)
  size_t wtile_bytes;
  void *xconv; // converted / gathered activations (F16 or F32)
  size_t xconv_bytes;
  // routed experts, pairs = max_tok * moe_k
  int64_t pairs;
  void *moe_xg;      // [pairs][moe_d] gathered inputs (F16 or F32)
  float *moe_gu;     // [pairs][2 * moe_ff] gate | up outputs (GEMM path; gate alone when
                     // the per-pair path runs gate and up apart)
  float *moe_h;      // [pairs][moe_ff] swiglu(gate, up) (F32)
  void *moe_hc;      // [pairs][moe_ff] the same converted for the down GEMM (F16 or F32)
  int32_t *moe_rows; // [pairs] token of each grouped row (moe_ffn_ids, host grouping)
  int32_t *h_ids, *h_rows, *h_map;  // [pairs] pinned
  int32_t *h_cnt, *h_off;           // [moe_n_expert + 1] (plain host)
  struct ferry_moe_group *h_groups; // [moe_n_expert] (plain host)
  // attention decode partials: [n_head][att_splits][head_dim + 2]
  float *att_part;
  int att_splits;
};

struct cuda_ctx {
  int device;
  int n_sm;
  cublasHandle_t blas;
  cudaStream_t blas_stream; // the stream set on blas (with the workspace: see cuda_gemm)
  bool blas_set;            // blas_stream is valid
  struct cuda_scratch sc;
  char desc[192];
};

// Element size of the GEMM path's operands: F16 (FAST, quantized or F16 weights) or F32.
enum { DT_HALF = 0, DT_FLOAT = 1 };
int gemm_dtype(enum ferry_prec prec, enum ferry_type t);
// C(nrows x m, col-major, ldc = ldy) = W(nrows x n)^T-view . X(n x m): Y[i][r] = W[r].X[i],
// W and X of element type dt.
int cuda_gemm(struct cuda_ctx *ctx, int dt, const void *w, int64_t nrows, int64_t n, const void *x,
              int64_t ldx, int64_t m, float *y, int64_t ldy, cudaStream_t s);
// Dequantize n elements of t at src into dst as F16 (dt DT_HALF) or F32.
int cuda_dequant_to(enum ferry_type t, const void *src, void *dst, int dt, int64_t n,
                    cudaStream_t s);
// X rows (x + (rows ? rows[i] : i) * ldx, i < m, rows in device memory) -> m compact rows
// of n elements of type dt at dst.
int cuda_gather_rows(int dt, const float *x, int64_t ldx, const int32_t *rows, int64_t m, int64_t n,
                     void *dst, cudaStream_t s);
// -EINVAL with a message when t is not a weight type or n not a multiple of its block.
int cuda_check_weight(enum ferry_type t, int64_t n, const char *what);
// Bytes of a row of n elements of t (t checked).
int64_t cuda_row_bytes(enum ferry_type t, int64_t n);
