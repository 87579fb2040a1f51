// kernels/cuda/deltanet.cu: the Gated DeltaNet mixer of Qwen3-Next on the GPU
// (MODEL_SPEC §5.6): causal depthwise conv with its rolling state, per-head L2 norm, the
// gates, the delta-rule recurrence, the gated RMSNorm and the regrouping of the legacy
// fused projections. CPU references: kernels/cpu/deltanet.h (cpu_ssm_conv_rows,
// cpu_l2norm_heads, cpu_delta_gates, cpu_delta_recurrent, cpu_gated_rmsnorm_heads,
// cpu_ssm_in_regroup, cpu_ssm_ba_regroup).
//
// The recurrence runs token by token for any T (prefill too): the value columns of a
// head's state evolve independently (m_j = sum_i S_ij k_i, S_ij += k_i beta (v_j - m_j),
// o_j = sum_i S_ij q_i), so a block owns 32 columns of one v-head, each lane one column,
// its warps a quarter of the key rows each, with the state in registers. Per token the
// only cross-warp step is the sum of m over the warps (one barrier); the output sums go
// to shared memory and are added up once per chunk of tokens. Grid: Hv x dv/32 blocks
// (128 at the real shape), no scratch, the same kernel for decode (T = 1).
#include "kernels/cuda/common.cuh"

namespace {

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- causal depthwise conv ----

// One thread per channel; its K taps and the K-1 previous inputs in registers (MAXK
// bounds K; the loops are unrolled to MAXK with guards so nothing is indexed at run time).
template <int MAXK>
__global__ void k_ssm_conv(float *__restrict__ y, float *__restrict__ state,
                           const float *__restrict__ u, const float *__restrict__ w, int64_t T,
                           int64_t C, int K, int act) {
  for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < C;
       c += (int64_t)gridDim.x * blockDim.x) {
    float wc[MAXK], win[MAXK];
    float wl = 0.0f; // tap K-1, for the current input
#pragma unroll
    for (int r = 0; r < MAXK; r++) {
      wc[r] = r < K ? w[c * K + r] : 0.0f;
      win[r] = r < K - 1 ? state[r * C + c] : 0.0f;
      if (r == K - 1) wl = wc[r];
    }
    for (int64_t t = 0; t < T; t++) {
      const float ut = u[t * C + c];
      float acc = 0.0f;
#pragma unroll
      for (int r = 0; r < MAXK - 1; r++)
        if (r < K - 1) acc = fmaf(wc[r], win[r], acc);
      acc = fmaf(wl, ut, acc);
      y[t * C + c] = act ? acc / (1.0f + __expf(-acc)) : acc;
#pragma unroll
      for (int r = 0; r < MAXK - 2; r++)
        if (r < K - 2) win[r] = win[r + 1];
#pragma unroll
      for (int r = 0; r < MAXK - 1; r++)
        if (r == K - 2) win[r] = ut;
    }
#pragma unroll
    for (int r = 0; r < MAXK - 1; r++)
      if (r < K - 1) state[r * C + c] = win[r];
  }
}

// ---- norms and gates ----

// One warp per (token, head): x_h *= scale / sqrt(sum x_h^2 + eps), the sum in double.
__global__ void k_l2norm_heads(float *x, int64_t ld, int64_t T, int64_t n_heads, int64_t d,
                               float eps, float scale) {
  const int lane = threadIdx.x & 31;
  const int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (wid >= T * n_heads) return;
  float *xh = x + (wid / n_heads) * ld + (wid % n_heads) * d;
  double ss = 0.0;
  for (int64_t i = lane; i < d; i += 32) ss += (double)xh[i] * xh[i];
  ss = warp_sum_d(ss);
  const float f = (float)((double)scale / sqrt(ss + (double)eps));
  for (int64_t i = lane; i < d; i += 32) xh[i] *= f;
}

// beta = sigmoid(b), g = ssm_a[h] * softplus(a + dt_bias[h]) (softplus(x) = x above 20).
__global__ void k_delta_gates(float *beta, float *g, const float *__restrict__ b,
                              const float *__restrict__ a, const float *__restrict__ ssm_a,
                              const float *__restrict__ dt_bias, int64_t T, int64_t Hv) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < T * Hv;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t h = i % Hv;
    beta[i] = 1.0f / (1.0f + expf(-b[i]));
    const float x = a[i] + dt_bias[h];
    const float sp = x > 20.0f ? x : log1pf(expf(x));
    g[i] = ssm_a[h] * sp;
  }
}

// One warp per head: y = (o * inv) * w * silu(z), inv = 1 / sqrt(mean(o^2) + eps) with the
// sum of squares in double.
__global__ void k_gated_rmsnorm(float *y, const float *o, const float *z,
                                const float *__restrict__ w, int64_t n_heads, int64_t d,
                                float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t h = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (h >= n_heads) return;
  const float *oh = o + h * d, *zh = z + h * d;
  float *yh = y + h * d;
  double ss = 0.0;
  for (int64_t i = lane; i < d; i += 32) ss += (double)oh[i] * oh[i];
  ss = warp_sum_d(ss);
  const float inv = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
  __syncwarp();
  for (int64_t i = lane; i < d; i += 32) {
    const float zi = zh[i];
    yh[i] = (oh[i] * inv) * w[i] * (zi / (1.0f + __expf(-zi)));
  }
}

// ---- legacy regrouping ----

// One thread per element of p [T][nk][2dk + 2r dv] -> qkv [T][2 nk dk + nv dv], z [T][nv dv].
__global__ void k_ssm_in_regroup(float *__restrict__ qkv, float *__restrict__ z,
                                 const float *__restrict__ p, int64_t T, int64_t nk, int64_t nv,
                                 int64_t dk, int64_t dv) {
  const int64_t r = nv / nk, grp = 2 * dk + 2 * r * dv, in_row = nk * grp;
  const int64_t qkv_row = 2 * nk * dk + nv * dv, z_row = nv * dv;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < T * in_row;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / in_row, g = (i % in_row) / grp, e = i % grp;
    const float v = p[i];
    float *qt = qkv + t * qkv_row;
    if (e < dk)
      qt[g * dk + e] = v; // q_g
    else if (e < 2 * dk)
      qt[nk * dk + g * dk + (e - dk)] = v; // k_g
    else if (e < 2 * dk + r * dv)
      qt[2 * nk * dk + g * r * dv + (e - 2 * dk)] = v; // v_{g r ..}
    else
      z[t * z_row + g * r * dv + (e - 2 * dk - r * dv)] = v; // z_{g r ..}
  }
}

// p [T][nk][2r] = [b (r) | a (r)] per group -> b, a [T][nv].
__global__ void k_ssm_ba_regroup(float *__restrict__ b, float *__restrict__ a,
                                 const float *__restrict__ p, int64_t T, int64_t nk, int64_t nv) {
  const int64_t r = nv / nk;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < T * 2 * nv;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / (2 * nv), g = (i % (2 * nv)) / (2 * r), e = i % (2 * r);
    if (e < r)
      b[t * nv + g * r + e] = p[i];
    else
      a[t * nv + g * r + (e - r)] = p[i];
  }
}

// ---- delta rule ----

constexpr int DR_WARPS = 4; // key rows split over 4 warps
constexpr int DR_TC = 16;   // tokens staged in shared memory at a time

// Block (h, column block cb): lane = value column j = 32 cb + lane, warp w = key rows
// w*R .. w*R+R-1 (R*DR_WARPS >= dk). State S[h][i][j] at S + (h*dk + i)*dv + j.
template <int R>
__global__ void __launch_bounds__(DR_WARPS * 32)
    k_delta_rule(float *__restrict__ o, int64_t ldo, float *__restrict__ S,
                 const float *__restrict__ q, int64_t ldq, const float *__restrict__ k, int64_t ldk,
                 const float *__restrict__ v, int64_t ldv, const float *__restrict__ beta,
                 const float *__restrict__ g, int64_t T, int64_t Hk, int64_t Hv, int64_t dk,
                 int64_t dv) {
  constexpr int DKM = R * DR_WARPS;
  __shared__ float sk[DR_TC][DKM], sq[DR_TC][DKM], sv[DR_TC][32], sb[DR_TC], sd[DR_TC];
  __shared__ float spm[2][DR_WARPS][32];
  __shared__ float spo[DR_TC][DR_WARPS][32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t h = blockIdx.x, kh = h / (Hv / Hk), j = (int64_t)blockIdx.y * 32 + lane;
  const bool col = j < dv;
  float s[R];
  float *Sh = S + h * dk * dv;
#pragma unroll
  for (int r = 0; r < R; r++) {
    const int64_t i = (int64_t)w * R + r;
    s[r] = col && i < dk ? Sh[i * dv + j] : 0.0f;
  }
  for (int64_t t0 = 0; t0 < T; t0 += DR_TC) {
    const int tc = T - t0 < DR_TC ? (int)(T - t0) : DR_TC;
    // stage the chunk's keys, queries (zero-padded to DKM), values of this column block,
    // betas and decays
    for (int e = threadIdx.x; e < DR_TC * DKM; e += blockDim.x) {
      const int tt = e / DKM, i = e % DKM;
      const bool ok = tt < tc && i < dk;
      sk[tt][i] = ok ? k[(t0 + tt) * ldk + kh * dk + i] : 0.0f;
      sq[tt][i] = ok ? q[(t0 + tt) * ldq + kh * dk + i] : 0.0f;
    }
    for (int e = threadIdx.x; e < DR_TC * 32; e += blockDim.x) {
      const int tt = e / 32, jj = e % 32;
      const int64_t jc = (int64_t)blockIdx.y * 32 + jj;
      sv[tt][jj] = tt < tc && jc < dv ? v[(t0 + tt) * ldv + h * dv + jc] : 0.0f;
    }
    if (threadIdx.x < DR_TC) {
      const int tt = threadIdx.x;
      sb[tt] = tt < tc ? beta[(t0 + tt) * Hv + h] : 0.0f;
      sd[tt] = tt < tc ? (float)exp((double)g[(t0 + tt) * Hv + h]) : 0.0f;
    }
    __syncthreads();
    for (int tt = 0; tt < tc; tt++) {
      const float dec = sd[tt];
      float pm = 0.0f;
#pragma unroll
      for (int r = 0; r < R; r++) {
        s[r] *= dec;
        pm = fmaf(s[r], sk[tt][w * R + r], pm);
      }
      spm[tt & 1][w][lane] = pm;
      __syncthreads();
      float m = 0.0f;
#pragma unroll
      for (int ww = 0; ww < DR_WARPS; ww++) m += spm[tt & 1][ww][lane];
      const float delta = sb[tt] * (sv[tt][lane] - m);
      float po = 0.0f;
#pragma unroll
      for (int r = 0; r < R; r++) {
        s[r] = fmaf(sk[tt][w * R + r], delta, s[r]);
        po = fmaf(s[r], sq[tt][w * R + r], po);
      }
      spo[tt][w][lane] = po;
    }
    __syncthreads();
    for (int tt = w; tt < tc; tt += DR_WARPS) {
      float acc = 0.0f;
#pragma unroll
      for (int ww = 0; ww < DR_WARPS; ww++) acc += spo[tt][ww][lane];
      if (col) o[(t0 + tt) * ldo + h * dv + j] = acc;
    }
    __syncthreads(); // the next chunk overwrites the staged rows
  }
#pragma unroll
  for (int r = 0; r < R; r++) {
    const int64_t i = (int64_t)w * R + r;
    if (col && i < dk) Sh[i * dv + j] = s[r];
  }
}

} // namespace

extern "C" int cuda_ssm_conv(float *y, float *state, const float *u, const float *w, int64_t T,
                             int64_t C, int64_t K, int apply_silu, void *stream) {
  if (K < 1 || K > 16 || T < 0 || C <= 0) return ferry_fail(-EINVAL, "cuda ssm_conv: bad shape");
  if (T == 0) return 0;
  cudaStream_t s = (cudaStream_t)stream;
  if (K <= 4)
    k_ssm_conv<4><<<grid_for(C, 128), 128, 0, s>>>(y, state, u, w, T, C, (int)K, apply_silu);
  else
    k_ssm_conv<16><<<grid_for(C, 128), 128, 0, s>>>(y, state, u, w, T, C, (int)K, apply_silu);
  CUDA_CHECK_LAUNCH("ssm_conv");
  return 0;
}

extern "C" int cuda_l2norm_heads(float *x, int64_t ld, int64_t T, int64_t n_heads, int64_t d,
                                 float eps, float scale, void *stream) {
  if (ld < n_heads * d || T < 0 || n_heads < 0 || d <= 0)
    return ferry_fail(-EINVAL, "cuda l2norm_heads: bad stride or sizes");
  if (T == 0 || n_heads == 0) return 0;
  const int64_t warps = T * n_heads;
  k_l2norm_heads<<<(unsigned)((warps + 3) / 4), 128, 0, (cudaStream_t)stream>>>(x, ld, T, n_heads,
                                                                                d, eps, scale);
  CUDA_CHECK_LAUNCH("l2norm_heads");
  return 0;
}

extern "C" int cuda_delta_gates(float *beta, float *g, const float *b, const float *a,
                                const float *ssm_a, const float *dt_bias, int64_t T, int64_t Hv,
                                void *stream) {
  if (T < 0 || Hv <= 0) return ferry_fail(-EINVAL, "cuda delta_gates: bad sizes");
  if (T == 0) return 0;
  k_delta_gates<<<grid_for(T * Hv, 256), 256, 0, (cudaStream_t)stream>>>(beta, g, b, a, ssm_a,
                                                                         dt_bias, T, Hv);
  CUDA_CHECK_LAUNCH("delta_gates");
  return 0;
}

extern "C" int cuda_delta_rule(float *o, int64_t ldo, float *S, const float *q, int64_t ldq,
                               const float *k, int64_t ldk, const float *v, int64_t ldv,
                               const float *beta, const float *g, int64_t T, int64_t Hk, int64_t Hv,
                               int64_t dk, int64_t dv, void *stream) {
  if (Hk <= 0 || Hv <= 0 || Hv % Hk || dk <= 0 || dv <= 0 || dk > 256 || T < 0 || Hv > 65535 ||
      (dv + 31) / 32 > 65535)
    return ferry_fail(-EINVAL, "cuda delta_rule: bad heads (%lld/%lld of %lld x %lld, dk <= 256)",
                      (long long)Hk, (long long)Hv, (long long)dk, (long long)dv);
  if (ldo < Hv * dv || ldq < Hk * dk || ldk < Hk * dk || ldv < Hv * dv)
    return ferry_fail(-EINVAL, "cuda delta_rule: bad strides");
  if (T == 0) return 0;
  cudaStream_t s = (cudaStream_t)stream;
  const dim3 grid((unsigned)Hv, (unsigned)((dv + 31) / 32));
#define DR(R)                                                                                   \
  k_delta_rule<R><<<grid, DR_WARPS * 32, 0, s>>>(o, ldo, S, q, ldq, k, ldk, v, ldv, beta, g, T, \
                                                 Hk, Hv, dk, dv)
  if (dk <= 4 * DR_WARPS)
    DR(4);
  else if (dk <= 16 * DR_WARPS)
    DR(16);
  else if (dk <= 32 * DR_WARPS)
    DR(32);
  else
    DR(64);
#undef DR
  CUDA_CHECK_LAUNCH("delta_rule");
  return 0;
}

extern "C" int cuda_gated_rmsnorm(float *y, const float *o, const float *z, const float *w,
                                  int64_t n_heads, int64_t d, float eps, void *stream) {
  if (n_heads < 0 || d <= 0) return ferry_fail(-EINVAL, "cuda gated_rmsnorm: bad sizes");
  if (n_heads == 0) return 0;
  k_gated_rmsnorm<<<(unsigned)((n_heads + 3) / 4), 128, 0, (cudaStream_t)stream>>>(y, o, z, w,
                                                                                   n_heads, d, eps);
  CUDA_CHECK_LAUNCH("gated_rmsnorm");
  return 0;
}

extern "C" int cuda_ssm_in_regroup(float *qkv, float *z, const float *p, int64_t T, int64_t nk,
                                   int64_t nv, int64_t dk, int64_t dv, void *stream) {
  if (nk <= 0 || nv <= 0 || nv % nk || dk <= 0 || dv <= 0 || T < 0)
    return ferry_fail(-EINVAL, "cuda ssm_in_regroup: bad heads");
  const int64_t total = T * (2 * nk * dk + 2 * nv * dv);
  if (total == 0) return 0;
  k_ssm_in_regroup<<<grid_for(total, 256), 256, 0, (cudaStream_t)stream>>>(qkv, z, p, T, nk, nv, dk,
                                                                           dv);
  CUDA_CHECK_LAUNCH("ssm_in_regroup");
  return 0;
}

extern "C" int cuda_ssm_ba_regroup(float *b, float *a, const float *p, int64_t T, int64_t nk,
                                   int64_t nv, void *stream) {
  if (nk <= 0 || nv <= 0 || nv % nk || T < 0)
    return ferry_fail(-EINVAL, "cuda ssm_ba_regroup: bad heads");
  if (T == 0) return 0;
  k_ssm_ba_regroup<<<grid_for(T * 2 * nv, 256), 256, 0, (cudaStream_t)stream>>>(b, a, p, T, nk, nv);
  CUDA_CHECK_LAUNCH("ssm_ba_regroup");
  return 0;
}
