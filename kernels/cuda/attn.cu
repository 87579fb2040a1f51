// kernels/cuda/attn.cu: KV-cache store (F32, F16, Q8_0) and attention over the cache:
// decode (one query) and causal prefill (n_tok queries at pos0..pos0+n_tok-1), GQA
// (query head h reads KV head h / (n_head/n_kv_head)). CPU references: cpu_kv_store,
// cpu_attn_decode, cpu_attn_prefill; the cache layout is described in kernels/cpu/ops.h.
//
// One block per (query head, token); its warps split the positions and each keeps an
// online softmax (running max, sum, and output accumulator in registers: head_dim/32
// dims per lane), merged through shared memory at the end. Decode is prefill with one
// token; a decode over a long context gets 16 warps per block instead of 4, since it has
// only n_head blocks. Splitting long contexts over several blocks (flash-decoding) and
// sharing K/V reads between the heads of a GQA group are left for later.
#include "kernels/cuda/common.cuh"

namespace {

constexpr int ATT_MAX_DPL = 8; // dims per lane: head_dim <= 256

template <int KV, int ATT_WARPS>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    k_attn(float *out, const float *__restrict__ q, const uint8_t *__restrict__ kc,
           const uint8_t *__restrict__ vc, int64_t pos0, int64_t n_head, int64_t group,
           int64_t head_dim, int64_t row_bytes, float scale) {
  __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
  __shared__ float s_acc[ATT_WARPS][ATT_MAX_DPL * 32];
  const int h = blockIdx.x;
  const int64_t t = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n_ctx = pos0 + t + 1;
  const int64_t kv_off = (h / group) * head_dim;
  const float *qh = q + (t * n_head + h) * head_dim;

  float qv[ATT_MAX_DPL], acc[ATT_MAX_DPL];
#pragma unroll
  for (int j = 0; j < ATT_MAX_DPL; j++) {
    const int64_t d = lane + 32 * j;
    qv[j] = d < head_dim ? qh[d] * scale : 0.0f;
    acc[j] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t p = warp; p < n_ctx; p += ATT_WARPS) {
    const uint8_t *krow = kc + p * row_bytes;
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < ATT_MAX_DPL; j++) {
      const int64_t d = lane + 32 * j;
      if (d < head_dim) dot = fmaf(qv[j], kv_load<KV>(krow, kv_off + d), dot);
    }
    const float s = warp_sum(dot);
    const float m_new = fmaxf(m, s);
    const float corr = __expf(m - m_new); // 0 on the first position (m = -inf)
    const float pw = __expf(s - m_new);
    l = l * corr + pw;
    const uint8_t *vrow = vc + p * row_bytes;
#pragma unroll
    for (int j = 0; j < ATT_MAX_DPL; j++) {
      const int64_t d = lane + 32 * j;
      const float v = d < head_dim ? kv_load<KV>(vrow, kv_off + d) : 0.0f;
      acc[j] = fmaf(pw, v, acc[j] * corr);
    }
    m = m_new;
  }
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < ATT_MAX_DPL; j++) s_acc[warp][lane + 32 * j] = acc[j];
  __syncthreads();
  // Merge: warps that saw no position have m = -inf and weigh 0.
  float M = -INFINITY;
  for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, s_m[w]);
  float L = 0.0f, f[ATT_WARPS];
  for (int w = 0; w < ATT_WARPS; w++) {
    f[w] = s_m[w] == -INFINITY ? 0.0f : __expf(s_m[w] - M);
    L += s_l[w] * f[w];
  }
  const float inv = 1.0f / L;
  float *oh = out + (t * n_head + h) * head_dim;
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++) o = fmaf(s_acc[w][d], f[w], o);
    oh[d] = o * inv;
  }
}

int attn_launch(float *out, const float *q, const void *kcache, const void *vcache,
                enum ferry_type kv_type, int64_t n_tok, int64_t pos0, int64_t n_head,
                int64_t n_kv_head, int64_t head_dim, int64_t stride, float scale, cudaStream_t s) {
  if (n_head <= 0 || n_kv_head <= 0 || n_head % n_kv_head || head_dim <= 0 ||
      head_dim > ATT_MAX_DPL * 32 || pos0 < 0 || n_tok < 0 || n_head > 65535 * 4)
    return ferry_fail(-EINVAL, "cuda attention: bad shape (heads %lld/%lld, head_dim %lld)",
                      (long long)n_head, (long long)n_kv_head, (long long)head_dim);
  if (stride < n_kv_head * head_dim || (kv_type == FT_Q8_0 && (head_dim % 32 || stride % 32)))
    return ferry_fail(-EINVAL, "cuda attention: bad KV row stride %lld", (long long)stride);
  if (n_tok == 0) return 0;
  if (n_tok > 65535) return ferry_fail(-EINVAL, "cuda attention: more than 65535 queries");
  const dim3 grid((unsigned)n_head, (unsigned)n_tok);
  const int64_t rb = kv_row_bytes(kv_type, stride);
  const int64_t group = n_head / n_kv_head;
  const uint8_t *kc = (const uint8_t *)kcache, *vc = (const uint8_t *)vcache;
  const bool wide = n_tok == 1 && pos0 >= 512;
#define ATT_LAUNCH(KV, W) \
  k_attn<KV, W><<<grid, W * 32, 0, s>>>(out, q, kc, vc, pos0, n_head, group, head_dim, rb, scale)
  switch (kv_type) {
    case FT_F32:
      if (wide)
        ATT_LAUNCH(FT_F32, 16);
      else
        ATT_LAUNCH(FT_F32, 4);
      break;
    case FT_F16:
      if (wide)
        ATT_LAUNCH(FT_F16, 16);
      else
        ATT_LAUNCH(FT_F16, 4);
      break;
    case FT_Q8_0:
      if (wide)
        ATT_LAUNCH(FT_Q8_0, 16);
      else
        ATT_LAUNCH(FT_Q8_0, 4);
      break;
    default: return ferry_fail(-EINVAL, "cuda attention: KV type %d not supported", (int)kv_type);
  }
#undef ATT_LAUNCH
  CUDA_CHECK_LAUNCH("attention");
  return 0;
}

__global__ void k_kv_store_f(uint8_t *cache, int kv_type, int64_t row_bytes, int64_t pos0,
                             int64_t n_tok, const float *src, int64_t n_elems) {
  const int64_t total = n_tok * n_elems;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / n_elems, e = i % n_elems;
    uint8_t *row = cache + (pos0 + t) * row_bytes;
    if (kv_type == FT_F32)
      ((float *)row)[e] = src[i];
    else
      ((__half *)row)[e] = __float2half_rn(src[i]);
  }
}

// One warp per 32-element Q8_0 block: d = amax/127, q = round(x/d) (reference quantizer).
__global__ void k_kv_store_q8_0(uint8_t *cache, int64_t row_bytes, int64_t pos0, int64_t n_tok,
                                const float *src, int64_t n_elems) {
  const int64_t nb = n_elems / 32, total = n_tok * nb;
  const int lane = threadIdx.x & 31;
  for (int64_t b = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; b < total;
       b += ((int64_t)gridDim.x * blockDim.x) >> 5) {
    const int64_t t = b / nb, j = b % nb;
    const float x = src[t * n_elems + j * 32 + lane];
    const float amax = warp_max(fabsf(x));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? __frcp_rn(d) : 0.0f;
    uint8_t *blk = cache + (pos0 + t) * row_bytes + j * 34;
    if (lane == 0) {
      const unsigned short hb = __half_as_ushort(__float2half_rn(d));
      blk[0] = (uint8_t)(hb & 0xFF);
      blk[1] = (uint8_t)(hb >> 8);
    }
    blk[2 + lane] = (uint8_t)(int8_t)roundf(x * id);
  }
}

} // namespace

extern "C" int cuda_kv_store(void *cache, enum ferry_type kv_type, int64_t kv_row_stride_elems,
                             int64_t pos0, int64_t n_tok, const float *src, int64_t n_elems,
                             void *stream) {
  cudaStream_t s = (cudaStream_t)stream;
  if (kv_type != FT_F32 && kv_type != FT_F16 && kv_type != FT_Q8_0)
    return ferry_fail(-EINVAL, "cuda kv_store: unsupported cache type %d", (int)kv_type);
  if (n_elems > kv_row_stride_elems || pos0 < 0 || n_tok < 0)
    return ferry_fail(-EINVAL, "cuda kv_store: bad sizes");
  if (kv_type == FT_Q8_0 && (n_elems % 32 || kv_row_stride_elems % 32))
    return ferry_fail(-EINVAL, "cuda kv_store: q8_0 cache needs multiples of 32 elements");
  if (n_tok == 0 || n_elems == 0) return 0;
  const int64_t rb = kv_row_bytes(kv_type, kv_row_stride_elems);
  if (kv_type == FT_Q8_0)
    k_kv_store_q8_0<<<grid_for(n_tok * n_elems, 256), 256, 0, s>>>((uint8_t *)cache, rb, pos0,
                                                                   n_tok, src, n_elems);
  else
    k_kv_store_f<<<grid_for(n_tok * n_elems, 256), 256, 0, s>>>((uint8_t *)cache, (int)kv_type, rb,
                                                                pos0, n_tok, src, n_elems);
  CUDA_CHECK_LAUNCH("kv_store");
  return 0;
}

extern "C" int cuda_attn_decode(float *out, const float *q, const void *kcache, const void *vcache,
                                enum ferry_type kv_type, int64_t n_ctx_used, int64_t n_head,
                                int64_t n_kv_head, int64_t head_dim, int64_t kv_row_stride_elems,
                                float scale, void *stream) {
  if (n_ctx_used <= 0) return ferry_fail(-EINVAL, "cuda attn_decode: empty context");
  return attn_launch(out, q, kcache, vcache, kv_type, 1, n_ctx_used - 1, n_head, n_kv_head,
                     head_dim, kv_row_stride_elems, scale, (cudaStream_t)stream);
}

extern "C" int cuda_attn_prefill(float *out, const float *q, const void *kcache, const void *vcache,
                                 enum ferry_type kv_type, int64_t n_tok, int64_t pos0,
                                 int64_t n_head, int64_t n_kv_head, int64_t head_dim,
                                 int64_t kv_row_stride_elems, float scale, void *stream) {
  return attn_launch(out, q, kcache, vcache, kv_type, n_tok, pos0, n_head, n_kv_head, head_dim,
                     kv_row_stride_elems, scale, (cudaStream_t)stream);
}
