// kernels/cuda/ffn.cu: elementwise ops of the feed-forward and residual path (SwiGLU,
// add, scale, axpy, sigmoid gate, the shared-expert row gate, strided copies) and the MoE
// router (softmax over all experts, top-k with ties to the lower index, renormalisation
// with the denominator clamped at 6.1035e-5). CPU references: cpu_swiglu, cpu_add,
// cpu_scale, cpu_axpy, cpu_sigmoid_mul, cpu_router_topk_rows, backend_cpu.c's
// gate_add_rows and copy2d. Sums and products the CPU rounds one by one (axpy, the row
// gate) use the IEEE-rounded intrinsics, so no FMA contraction changes their bits.
#include "kernels/cuda/common.cuh"

namespace {

enum ew_op { EW_SWIGLU, EW_ADD, EW_SCALE, EW_AXPY, EW_SIGMOID_MUL };

// One kernel body for all elementwise ops; OP is a compile-time constant.
template <int OP>
__global__ void k_elementwise(float *y, const float *a, const float *b, float sc, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    switch (OP) {
      case EW_SWIGLU: {
        const float g = a[i];
        y[i] = g / (1.0f + __expf(-g)) * b[i];
        break;
      }
      case EW_ADD: y[i] = a[i] + b[i]; break;
      case EW_SCALE: y[i] = sc * a[i]; break;
      case EW_AXPY: y[i] = __fadd_rn(y[i], __fmul_rn(sc, a[i])); break;
      case EW_SIGMOID_MUL: y[i] = a[i] / (1.0f + __expf(-b[i])); break;
    }
  }
}

template <int OP>
int ew_launch(float *y, const float *a, const float *b, float sc, int64_t n, void *stream,
              const char *what) {
  if (n < 0) return ferry_fail(-EINVAL, "cuda %s: negative length", what);
  if (n == 0) return 0;
  k_elementwise<OP><<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(y, a, b, sc, n);
  CUDA_CHECK_LAUNCH(what);
  return 0;
}

constexpr int ROUTER_EPL = 32; // experts per lane: n_expert <= 1024
constexpr int ROUTER_WARPS = 4;

// One warp per token. Expert e lives in lane e % 32, slot e / 32.
__global__ void k_router_topk(const float *__restrict__ logits, int64_t n_tok, int n_expert, int k,
                              int *ids, float *weights) {
  const int lane = threadIdx.x & 31;
  const int64_t t = (int64_t)blockIdx.x * ROUTER_WARPS + (threadIdx.x >> 5);
  if (t >= n_tok) return;
  const float *lt = logits + t * n_expert;
  float lv[ROUTER_EPL];
  float mx = -INFINITY;
#pragma unroll
  for (int j = 0; j < ROUTER_EPL; j++) {
    const int e = lane + 32 * j;
    lv[j] = e < n_expert ? lt[e] : -INFINITY;
    mx = fmaxf(mx, lv[j]);
  }
  mx = warp_max(mx);
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < ROUTER_EPL; j++)
    if (lane + 32 * j < n_expert) sum += __expf(lv[j] - mx);
  sum = warp_sum(sum);
  uint32_t taken = 0;
  float psel = 0.0f;
  for (int i = 0; i < k; i++) {
    // Lane-local best: slots ascend with the expert index, so strict > keeps the lower one.
    float bv = -INFINITY;
    int be = 0x7fffffff;
#pragma unroll
    for (int j = 0; j < ROUTER_EPL; j++) {
      const int e = lane + 32 * j;
      if (e < n_expert && !((taken >> j) & 1u) && (be == 0x7fffffff || lv[j] > bv)) {
        bv = lv[j];
        be = e;
      }
    }
    // Warp arg-max, ties to the lower expert index.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oe = __shfl_xor_sync(0xffffffffu, be, o);
      if (oe != 0x7fffffff && (be == 0x7fffffff || ov > bv || (ov == bv && oe < be))) {
        bv = ov;
        be = oe;
      }
    }
    if (be % 32 == lane) taken |= 1u << (be / 32);
    const float p = __expf(bv - mx) / sum;
    psel += p;
    if (lane == 0) {
      ids[t * k + i] = be;
      weights[t * k + i] = p;
    }
  }
  const float inv = 1.0f / fmaxf(psel, 6.1035e-5f);
  __syncwarp();
  for (int i = lane; i < k; i += 32) weights[t * k + i] *= inv;
}

// y[t][i] += sigmoid(g[t]) * x[t][i]; sigmoid as the CPU computes it in F32 (exp rounded
// to float from double: the correctly rounded expf).
__global__ void k_gate_add_rows(float *y, const float *__restrict__ x, const float *__restrict__ g,
                                int64_t n_rows, int64_t d) {
  const int64_t total = n_rows * d;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float e = (float)exp(-(double)g[i / d]);
    const float sg = __fdiv_rn(1.0f, __fadd_rn(1.0f, e));
    y[i] = __fadd_rn(y[i], __fmul_rn(sg, x[i]));
  }
}

} // namespace

extern "C" int cuda_gate_add_rows(float *y, const float *x, const float *g, int64_t n_rows,
                                  int64_t d, void *stream) {
  if (n_rows < 0 || d < 0) return ferry_fail(-EINVAL, "cuda gate_add_rows: bad sizes");
  if (n_rows == 0 || d == 0) return 0;
  k_gate_add_rows<<<grid_for(n_rows * d, 256), 256, 0, (cudaStream_t)stream>>>(y, x, g, n_rows, d);
  CUDA_CHECK_LAUNCH("gate_add_rows");
  return 0;
}

extern "C" int cuda_copy2d(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t nrows,
                           int64_t ncols, void *stream) {
  if (ncols < 0 || nrows < 0 || ldd < ncols || lds < ncols)
    return ferry_fail(-EINVAL, "cuda copy2d: bad strides");
  if (nrows == 0 || ncols == 0) return 0;
  CUDA_CHECK(cudaMemcpy2DAsync(dst, (size_t)ldd * 4, src, (size_t)lds * 4, (size_t)ncols * 4,
                               (size_t)nrows, cudaMemcpyDeviceToDevice, (cudaStream_t)stream));
  return 0;
}

extern "C" int cuda_swiglu(float *y, const float *g, const float *u, int64_t n, void *stream) {
  return ew_launch<EW_SWIGLU>(y, g, u, 0.0f, n, stream, "swiglu");
}

extern "C" int cuda_add(float *y, const float *a, const float *b, int64_t n, void *stream) {
  return ew_launch<EW_ADD>(y, a, b, 0.0f, n, stream, "add");
}

extern "C" int cuda_scale(float *y, const float *x, float s, int64_t n, void *stream) {
  return ew_launch<EW_SCALE>(y, x, NULL, s, n, stream, "scale");
}

extern "C" int cuda_axpy(float *y, const float *x, float s, int64_t n, void *stream) {
  return ew_launch<EW_AXPY>(y, x, NULL, s, n, stream, "axpy");
}

extern "C" int cuda_sigmoid_mul(float *y, const float *x, const float *g, int64_t n, void *stream) {
  return ew_launch<EW_SIGMOID_MUL>(y, x, g, 0.0f, n, stream, "sigmoid_mul");
}

extern "C" int cuda_router_topk_rows(const float *logits, int64_t n_tok, int64_t n_expert,
                                     int64_t k, int *ids, float *weights, void *stream) {
  if (k < 1 || k > n_expert)
    return ferry_fail(-EINVAL, "cuda router: top-k %lld out of range for %lld experts",
                      (long long)k, (long long)n_expert);
  if (n_expert > ROUTER_EPL * 32)
    return ferry_fail(-EINVAL, "cuda router: %lld experts (at most %d)", (long long)n_expert,
                      ROUTER_EPL * 32);
  if (n_tok <= 0) return 0;
  const int64_t blocks = (n_tok + ROUTER_WARPS - 1) / ROUTER_WARPS;
  k_router_topk<<<(unsigned)blocks, ROUTER_WARPS * 32, 0, (cudaStream_t)stream>>>(
      logits, n_tok, (int)n_expert, (int)k, ids, weights);
  CUDA_CHECK_LAUNCH("router_topk");
  return 0;
}
