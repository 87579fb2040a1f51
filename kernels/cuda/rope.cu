// kernels/cuda/rope.cu: NEOX ("rotate-half") rotary embedding in place, full or partial
// (n_rot < head_dim: the remaining dims pass through). Angles in double as the CPU
// reference (cpu_rope_neox_rows) does, so long positions agree to float rounding; the
// op is tiny, so double math costs nothing that matters even on consumer GPUs. The
// position of the first token is read from device memory (graph replays).
#include "kernels/cuda/common.cuh"

namespace {

// One thread per rotated pair (token t, head h, index i < n_rot/2).
__global__ void k_rope_neox(float *x, int64_t n_tok, int64_t n_heads, int64_t head_dim,
                            int64_t n_rot, const int32_t *__restrict__ pos, double log2_base) {
  const int64_t pos0 = *pos;
  if (pos0 < 0) return;
  const int64_t half = n_rot / 2;
  const int64_t total = n_tok * n_heads * half;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total;
       k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = k % half, th = k / half; // th = t*n_heads + h
    const int64_t t = th / n_heads;
    const double theta = (double)(pos0 + t) * exp2(-2.0 * (double)i / (double)n_rot * log2_base);
    double sd, cd;
    sincos(theta, &sd, &cd);
    const float s = (float)sd, c = (float)cd;
    float *xh = x + th * head_dim;
    const float a = xh[i], b = xh[i + half];
    // each product rounded on its own, as the CPU reference computes them
    xh[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    xh[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
  }
}

} // namespace

extern "C" int cuda_rope_neox(float *x, int64_t n_tok, int64_t n_heads, int64_t head_dim,
                              int64_t n_rot, const int32_t *pos, float freq_base, void *stream) {
  if (n_rot <= 0 || n_rot % 2 || n_rot > head_dim || n_heads <= 0 || n_tok < 0)
    return ferry_fail(-EINVAL, "cuda rope: bad sizes (n_rot %lld, head_dim %lld)", (long long)n_rot,
                      (long long)head_dim);
  const int64_t total = n_tok * n_heads * (n_rot / 2);
  if (total == 0) return 0;
  k_rope_neox<<<grid_for(total, 256), 256, 0, (cudaStream_t)stream>>>(
      x, n_tok, n_heads, head_dim, n_rot, pos, log2((double)freq_base));
  CUDA_CHECK_LAUNCH("rope_neox");
  return 0;
}
