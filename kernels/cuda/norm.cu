// kernels/cuda/norm.cu: RMSNorm over contiguous rows with one shared weight vector; the
// same kernel does per-head QK-norm (rows = tokens x heads, n = head_dim). CPU reference:
// cpu_rmsnorm_rows. The sum of squares is taken in double and the scale rounded once, as
// the reference does, so the two agree to the last bit or so (one kernel per call).
#include "kernels/cuda/common.cuh"

namespace {

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One block per row. Each thread reads the same elements in both passes, so y may == x.
__global__ void k_rmsnorm(float *y, const float *x, const float *__restrict__ w, int64_t nrows,
                          int64_t n, float eps) {
  __shared__ double partial[32];
  __shared__ float s_scale;
  for (int64_t r = blockIdx.x; r < nrows; r += gridDim.x) {
    const float *xr = x + r * n;
    float *yr = y + r * n;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = warp_sum_d(ss);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    if (lane == 0) partial[warp] = ss;
    __syncthreads();
    if (warp == 0) {
      double v = lane < nwarps ? partial[lane] : 0.0;
      v = warp_sum_d(v);
      if (lane == 0) s_scale = (float)(1.0 / sqrt(v / (double)n + (double)eps));
    }
    __syncthreads();
    const float scale = s_scale;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = w[i] * (xr[i] * scale);
    __syncthreads(); // partial[] and s_scale are reused by the next row
  }
}

} // namespace

extern "C" int cuda_rmsnorm_rows(float *y, const float *x, const float *w, int64_t nrows, int64_t n,
                                 float eps, void *stream) {
  if (n <= 0 || nrows < 0) return ferry_fail(-EINVAL, "cuda rmsnorm: bad sizes");
  if (nrows == 0) return 0;
  // Short rows (QK-norm heads of 128/256) need few threads; hidden rows use 256.
  const int threads = n <= 128 ? 64 : n <= 512 ? 128 : 256;
  const unsigned blocks = (unsigned)(nrows < 65535 * 4 ? nrows : 65535 * 4);
  k_rmsnorm<<<blocks, threads, 0, (cudaStream_t)stream>>>(y, x, w, nrows, n, eps);
  CUDA_CHECK_LAUNCH("rmsnorm");
  return 0;
}
