// kernels/cuda/norm.cu: RMSNorm over contiguous rows with one shared weight vector; the
// same kernel does per-head QK-norm (rows = tokens x heads, n = head_dim). CPU reference:
// cpu_rmsnorm_rows.
#include "kernels/cuda/common.cuh"

namespace {

// One block per row. Each thread reads the same elements in both passes, so y may == x.
__global__ void k_rmsnorm(float *y, const float *x, const float *__restrict__ w, int64_t nrows,
                          int64_t n, float eps) {
  __shared__ float partial[32];
  for (int64_t r = blockIdx.x; r < nrows; r += gridDim.x) {
    const float *xr = x + r * n;
    float *yr = y + r * n;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
    ss = warp_sum(ss);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    if (lane == 0) partial[warp] = ss;
    __syncthreads();
    if (warp == 0) {
      float v = lane < nwarps ? partial[lane] : 0.0f;
      v = warp_sum(v);
      if (lane == 0) partial[0] = v;
    }
    __syncthreads();
    const float scale = rsqrtf(partial[0] / (float)n + eps);
    __syncthreads(); // partial[] is reused by the next row
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = w[i] * (xr[i] * scale);
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
