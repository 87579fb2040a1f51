// kernels/cpu/matmul.h: quantized matrix-vector (decode) and matrix-matrix (prefill)
// products on the CPU, parallel over rows with the numa/ pool. W is `nrows` rows of `n`
// elements of type t, rows contiguous (stride ferry_row_bytes(t, n)).
// The fast path dots against activations pre-quantized with cpu_quantize_act (type
// cpu_vec_dot_type(t)); the exact path dequantizes each weight row to F32 and dots it
// with F32 activations (accumulating in double), as the fixtures' exact references do.
// Blocking; pool may be NULL (single-threaded).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "kernels/types.h"
#include "numa/pool.h"

#ifdef __cplusplus
extern "C" {
#endif

// y[r] = W[r] . xq for r in [0, nrows).
void cpu_matvec(struct ferry_pool *pool, enum ferry_type t, const void *w, int64_t nrows, int64_t n,
                const void *xq, float *y);
// Y[i][r] = W[r] . X[i] for i in [0, m): X rows at xq + i*xq_stride (bytes), Y rows at
// y + i*ldy (floats). Reads each weight row once per tile of activations.
void cpu_matmul(struct ferry_pool *pool, enum ferry_type t, const void *w, int64_t nrows, int64_t n,
                const void *xq, size_t xq_stride, int64_t m, float *y, int64_t ldy);
// Several fast-path products in one pool call (one barrier instead of one per product):
// job j computes Y_j[i][r] = W_j[r] . X_j[i] like cpu_matmul. Each output row is
// computed exactly as cpu_matmul would compute it for that job alone, so results do not
// depend on how products are batched.
struct cpu_mm_job {
  enum ferry_type t;
  const void *w;
  int64_t nrows, n;
  const void *xq;
  size_t xq_stride;
  int64_t m;
  float *y;
  int64_t ldy;
};
void cpu_matmul_batch(struct ferry_pool *pool, int n_jobs, const struct cpu_mm_job *jobs);

// Exact versions: x / X are F32 (X row stride ldx floats).
void cpu_matvec_exact(struct ferry_pool *pool, enum ferry_type t, const void *w, int64_t nrows,
                      int64_t n, const float *x, float *y);
void cpu_matmul_exact(struct ferry_pool *pool, enum ferry_type t, const void *w, int64_t nrows,
                      int64_t n, const float *x, int64_t ldx, int64_t m, float *y, int64_t ldy);

// Bytes of one activation row of n elements in the vec-dot format of weight type t.
size_t cpu_act_row_bytes(enum ferry_type t, int64_t n);

#ifdef __cplusplus
}
#endif
