// kernels/cuda/attn.cu: KV-cache store (F32, F16, Q8_0) and causal GQA attention over the
// cache (query head h reads KV head h / (n_head/n_kv_head)). Positions come from device
// memory (*pos = position of the chunk's first token), so a captured decode graph
// replays at any position. CPU references: cpu_kv_store, cpu_attn_prefill (layout in
// kernels/cpu/ops.h).
//
// Each block's warps split its positions and keep an online softmax (running max, sum,
// and an output accumulator in registers: head_dim/32 dims per lane), merged through
// shared memory. Decode (one query) is flash-decoding: a fixed grid of (head, split)
// blocks, each taking a share of 0..*pos derived inside the kernel, writes a partial
// (max, sum, accumulator) to the reserved scratch, and a second kernel merges the splits.
// Prefill runs one block per (head, query).
#include "kernels/cuda/common.cuh"

namespace {

constexpr int ATT_MAX_DPL = 8;    // dims per lane: head_dim <= 256
constexpr int ATT_WARPS = 4;      // warps per block
constexpr int ATT_MIN_CHUNK = 64; // positions per decode split at least

// Online softmax of one warp over positions p0 + warp, p0 + warp + ATT_WARPS, ... < p1,
// then the block's merge: returns the block's max M and sum L, and leaves the block's
// accumulator (relative to M) in acc_out[0..head_dim) (shared memory).
template <int KV>
__device__ void attn_range(const float *qh, const uint8_t *__restrict__ kc,
                           const uint8_t *__restrict__ vc, int64_t kv_off, int64_t head_dim,
                           int64_t row_bytes, float scale, int64_t p0, int64_t p1, float *M_out,
                           float *L_out, float *acc_out) {
  __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
  __shared__ float s_acc[ATT_WARPS][ATT_MAX_DPL * 32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float qv[ATT_MAX_DPL], acc[ATT_MAX_DPL];
#pragma unroll
  for (int j = 0; j < ATT_MAX_DPL; j++) {
    const int64_t d = lane + 32 * j;
    qv[j] = d < head_dim ? qh[d] * scale : 0.0f;
    acc[j] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t p = p0 + warp; p < p1; p += ATT_WARPS) {
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
  float Mx = -INFINITY;
  for (int w = 0; w < ATT_WARPS; w++) Mx = fmaxf(Mx, s_m[w]);
  float L = 0.0f, f[ATT_WARPS];
  for (int w = 0; w < ATT_WARPS; w++) {
    f[w] = s_m[w] == -INFINITY ? 0.0f : __expf(s_m[w] - Mx);
    L += s_l[w] * f[w];
  }
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++) o = fmaf(s_acc[w][d], f[w], o);
    acc_out[d] = o;
  }
  *M_out = Mx;
  *L_out = L;
}

// Prefill: block (h, t) for query t at position *pos + t over positions 0..*pos+t.
template <int KV>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    k_attn_rows(float *out, const float *__restrict__ q, const uint8_t *__restrict__ kc,
                const uint8_t *__restrict__ vc, const int32_t *__restrict__ pos, int64_t n_head,
                int64_t group, int64_t head_dim, int64_t row_bytes, float scale) {
  __shared__ float s_out[ATT_MAX_DPL * 32];
  const int64_t pos0 = *pos;
  if (pos0 < 0) return;
  const int h = blockIdx.x;
  const int64_t t = blockIdx.y;
  float M, L;
  attn_range<KV>(q + (t * n_head + h) * head_dim, kc, vc, (h / group) * head_dim, head_dim,
                 row_bytes, scale, 0, pos0 + t + 1, &M, &L, s_out);
  const float inv = 1.0f / L;
  float *oh = out + (t * n_head + h) * head_dim;
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) oh[d] = s_out[d] * inv;
}

// Decode, pass 1: block (h, j) takes split j of positions 0..*pos and writes its partial
// [max, sum, accumulator[head_dim]] to part + (h * splits + j) * (head_dim + 2).
template <int KV>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    k_attn_split(const float *__restrict__ q, const uint8_t *__restrict__ kc,
                 const uint8_t *__restrict__ vc, const int32_t *__restrict__ pos, int64_t group,
                 int64_t head_dim, int64_t row_bytes, float scale, int splits,
                 float *__restrict__ part) {
  const int h = blockIdx.x, j = blockIdx.y;
  const int64_t ctx = *pos >= 0 ? (int64_t)*pos + 1 : 0;
  int64_t chunk = (ctx + splits - 1) / splits;
  if (chunk < ATT_MIN_CHUNK) chunk = ATT_MIN_CHUNK;
  const int64_t p0 = j * chunk, p1 = p0 + chunk < ctx ? p0 + chunk : ctx;
  float *ph = part + ((int64_t)h * splits + j) * (head_dim + 2);
  float M, L;
  attn_range<KV>(q + h * head_dim, kc, vc, (h / group) * head_dim, head_dim, row_bytes, scale, p0,
                 p1, &M, &L, ph + 2); // an empty split leaves M = -inf, L = 0, acc = 0
  if (threadIdx.x == 0) {
    ph[0] = M;
    ph[1] = L;
  }
}

// Decode, pass 2: block h merges its splits' partials into out[h][0..head_dim).
__global__ void k_attn_combine(float *__restrict__ out, const float *__restrict__ part,
                               int64_t head_dim, int splits) {
  const int h = blockIdx.x;
  const float *ph = part + (int64_t)h * splits * (head_dim + 2);
  float Mx = -INFINITY;
  for (int j = 0; j < splits; j++) Mx = fmaxf(Mx, ph[j * (head_dim + 2)]);
  float L = 0.0f;
  for (int j = 0; j < splits; j++) {
    const float m = ph[j * (head_dim + 2)];
    if (m != -INFINITY) L += ph[j * (head_dim + 2) + 1] * __expf(m - Mx);
  }
  const float inv = 1.0f / L;
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int j = 0; j < splits; j++) {
      const float m = ph[j * (head_dim + 2)];
      if (m != -INFINITY) o = fmaf(ph[j * (head_dim + 2) + 2 + d], __expf(m - Mx), o);
    }
    out[h * head_dim + d] = o * inv;
  }
}

__global__ void k_kv_store_f(uint8_t *cache, int kv_type, int64_t row_bytes,
                             const int32_t *__restrict__ pos, int64_t n_tok,
                             const float *__restrict__ src, int64_t n_elems) {
  const int64_t pos0 = *pos;
  if (pos0 < 0) return;
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

// One thread per 32-element Q8_0 block, step for step the reference quantizer
// (q8_0_quantize_block in kernels/cpu/ops.c): amax, d = amax / 127, id = 1 / d, q =
// roundf(x * id) (halves away from zero), d stored as f16 (round to nearest even). The
// divisions and the product use the IEEE-rounded intrinsics, which --use_fast_math
// would otherwise replace by approximations.
__global__ void k_kv_store_q8_0(uint8_t *cache, int64_t row_bytes, const int32_t *__restrict__ pos,
                                int64_t n_tok, const float *__restrict__ src, int64_t n_elems) {
  const int64_t pos0 = *pos;
  if (pos0 < 0) return;
  const int64_t nb = n_elems / 32, total = n_tok * nb;
  for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < total;
       b += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = b / nb, j = b % nb;
    const float *x = src + t * n_elems + j * 32;
    float v[32], amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; i++) {
      v[i] = x[i];
      amax = fmaxf(amax, fabsf(v[i]));
    }
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
    uint8_t *blk = cache + (pos0 + t) * row_bytes + j * 34;
    const unsigned short hb = __half_as_ushort(__float2half_rn(d));
    blk[0] = (uint8_t)(hb & 0xFF);
    blk[1] = (uint8_t)(hb >> 8);
#pragma unroll
    for (int i = 0; i < 32; i++) blk[2 + i] = (uint8_t)(int8_t)(int)roundf(__fmul_rn(v[i], id));
  }
}

} // namespace

extern "C" int cuda_kv_store(void *cache, enum ferry_type kv_type, int64_t kv_row_stride_elems,
                             const int32_t *pos, int64_t n_tok, const float *src, int64_t n_elems,
                             void *stream) {
  cudaStream_t s = (cudaStream_t)stream;
  if (kv_type != FT_F32 && kv_type != FT_F16 && kv_type != FT_Q8_0)
    return ferry_fail(-EINVAL, "cuda kv_store: unsupported cache type %d", (int)kv_type);
  if (n_elems > kv_row_stride_elems || n_tok < 0 || n_elems < 0)
    return ferry_fail(-EINVAL, "cuda kv_store: bad sizes");
  if (kv_type == FT_Q8_0 && (n_elems % 32 || kv_row_stride_elems % 32))
    return ferry_fail(-EINVAL, "cuda kv_store: q8_0 cache needs multiples of 32 elements");
  if (n_tok == 0 || n_elems == 0) return 0;
  const int64_t rb = kv_row_bytes(kv_type, kv_row_stride_elems);
  if (kv_type == FT_Q8_0)
    k_kv_store_q8_0<<<grid_for(n_tok * n_elems / 32, 128), 128, 0, s>>>((uint8_t *)cache, rb, pos,
                                                                        n_tok, src, n_elems);
  else
    k_kv_store_f<<<grid_for(n_tok * n_elems, 256), 256, 0, s>>>((uint8_t *)cache, (int)kv_type, rb,
                                                                pos, n_tok, src, n_elems);
  CUDA_CHECK_LAUNCH("kv_store");
  return 0;
}

extern "C" int cuda_attn(struct cuda_ctx *ctx, enum ferry_prec prec, float *out, const float *q,
                         const void *kcache, const void *vcache, enum ferry_type kv_type,
                         int64_t n_tok, const int32_t *pos, int64_t n_head, int64_t n_kv_head,
                         int64_t head_dim, int64_t stride, float scale, void *stream) {
  cudaStream_t s = (cudaStream_t)stream;
  if (kv_type != FT_F32 && kv_type != FT_F16 && kv_type != FT_Q8_0)
    return ferry_fail(-EINVAL, "cuda attention: KV type %d not supported", (int)kv_type);
  if (n_head <= 0 || n_kv_head <= 0 || n_head % n_kv_head || head_dim <= 0 ||
      head_dim > ATT_MAX_DPL * 32 || n_tok < 0 || n_head > 65535)
    return ferry_fail(-EINVAL, "cuda attention: bad shape (heads %lld/%lld, head_dim %lld)",
                      (long long)n_head, (long long)n_kv_head, (long long)head_dim);
  if (stride < n_kv_head * head_dim || (kv_type == FT_Q8_0 && (head_dim % 32 || stride % 32)))
    return ferry_fail(-EINVAL, "cuda attention: bad KV row stride %lld", (long long)stride);
  if (n_tok == 0) return 0;
  if (n_tok > 65535) return ferry_fail(-EINVAL, "cuda attention: more than 65535 queries");
  const int64_t rb = kv_row_bytes(kv_type, stride);
  const int64_t group = n_head / n_kv_head;
  const uint8_t *kc = (const uint8_t *)kcache, *vc = (const uint8_t *)vcache;
  const struct cuda_scratch *sc = &ctx->sc;
  (void)prec; // both precisions: F32 scores, softmax and accumulation
  if (n_tok == 1) {
    if (!sc->att_part || n_head > sc->lim.n_head || head_dim > sc->lim.head_dim)
      return ferry_fail(-EINVAL,
                        "cuda attention: %lld heads of %lld exceed the reserved decode scratch "
                        "(call reserve with n_ctx, n_head and head_dim)",
                        (long long)n_head, (long long)head_dim);
    const dim3 grid((unsigned)n_head, (unsigned)sc->att_splits);
#define ATT_SPLIT(KV)                                                                          \
  k_attn_split<KV><<<grid, ATT_WARPS * 32, 0, s>>>(q, kc, vc, pos, group, head_dim, rb, scale, \
                                                   sc->att_splits, sc->att_part)
    switch (kv_type) {
      case FT_F32: ATT_SPLIT(FT_F32); break;
      case FT_F16: ATT_SPLIT(FT_F16); break;
      default: ATT_SPLIT(FT_Q8_0); break;
    }
#undef ATT_SPLIT
    CUDA_CHECK_LAUNCH("attention split");
    k_attn_combine<<<(unsigned)n_head, 128, 0, s>>>(out, sc->att_part, head_dim, sc->att_splits);
    CUDA_CHECK_LAUNCH("attention combine");
    return 0;
  }
  const dim3 grid((unsigned)n_head, (unsigned)n_tok);
#define ATT_ROWS(KV) \
  k_attn_rows<KV>    \
      <<<grid, ATT_WARPS * 32, 0, s>>>(out, q, kc, vc, pos, n_head, group, head_dim, rb, scale)
  switch (kv_type) {
    case FT_F32: ATT_ROWS(FT_F32); break;
    case FT_F16: ATT_ROWS(FT_F16); break;
    default: ATT_ROWS(FT_Q8_0); break;
  }
#undef ATT_ROWS
  CUDA_CHECK_LAUNCH("attention");
  return 0;
}
