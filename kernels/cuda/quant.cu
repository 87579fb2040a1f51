// kernels/cuda/quant.cu: every weight format on the GPU: dequantization, the decode
// mat-vec with fused dequantization, the prefill mat-mul (dequantize row tiles to F16,
// cublasGemmEx with F32 accumulation) and the grouped-expert mat-mul of MoE prefill.
//
// Each format is a trait with a "piece": a run of PL consecutive elements of one block
// that share one scale (16 for the K-quants, 8 for Q8_0/Q4_0, 1 for the float types).
// piece() decodes one piece into registers, following MODEL_SPEC §2 formula by formula,
// so the mat-vec and the dequantizer share one decoder per format. Within a warp the
// lanes take consecutive pieces, so a warp reads whole blocks together.
#include "kernels/cuda/common.cuh"

#include <cuda_bf16.h>

namespace {

// get_scale_min_k4 of MODEL_SPEC §2.3 (Q4_K, Q5_K): 6-bit scale and min of sub-block j.
__host__ __device__ __forceinline__ void scale_min_k4(const uint8_t *s, int j, float *sc,
                                                      float *m) {
  if (j < 4) {
    *sc = (float)(s[j] & 63);
    *m = (float)(s[j + 4] & 63);
  } else {
    *sc = (float)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    *m = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// Copies N bytes from p into o. When the caller guarantees p is aligned to A bytes (A = 2,
// 4 or 16), it uses A-byte words: a lane reads its 16 quant bytes in one 16-byte load
// instead of 16 byte loads. A = 1 reads bytes. (Also compiled for the host replay.)
template <int N, int A>
__host__ __device__ __forceinline__ void ldbytes(const uint8_t *p, uint8_t *o) {
  if constexpr (A >= 16 && N % 16 == 0) {
    FERRY_UNROLL
    for (int j = 0; j < N / 16; j++) {
      const uint4 v = ((const uint4 *)p)[j];
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
      FERRY_UNROLL
      for (int k = 0; k < 16; k++) o[16 * j + k] = (uint8_t)(w[k >> 2] >> (8 * (k & 3)));
    }
  } else if constexpr (A >= 4 && N % 4 == 0) {
    FERRY_UNROLL
    for (int j = 0; j < N / 4; j++) {
      const uint32_t w = ((const uint32_t *)p)[j];
      FERRY_UNROLL
      for (int k = 0; k < 4; k++) o[4 * j + k] = (uint8_t)(w >> (8 * k));
    }
  } else if constexpr (A >= 2 && N % 2 == 0) {
    FERRY_UNROLL
    for (int j = 0; j < N / 2; j++) {
      const uint16_t w = ((const uint16_t *)p)[j];
      o[2 * j] = (uint8_t)w;
      o[2 * j + 1] = (uint8_t)(w >> 8);
    }
  } else {
    FERRY_UNROLL
    for (int i = 0; i < N; i++) o[i] = p[i];
  }
}

// ALIGN: the alignment a block must start at for piece<ALIGN> to use wide loads (every
// byte run it reads then sits at a multiple of its word size). BYTES is a multiple of
// ALIGN, so a matrix whose start is ALIGN-aligned has every block aligned.
struct t_q4_k {
  static constexpr int QK = 256, BYTES = 144, PL = 16, ALIGN = 16;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const int sb = pc >> 1, l0 = (pc & 1) * 16, shift = (sb & 1) * 4;
    float sc, m;
    scale_min_k4(b + 4, sb, &sc, &m);
    const float d = load_f16(b) * sc, dm = load_f16(b + 2) * m;
    uint8_t q[16];
    ldbytes<16, A>(b + 16 + 32 * (sb >> 1) + l0, q);
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) v[i] = d * (float)((q[i] >> shift) & 0xF) - dm;
  }
};

struct t_q5_k {
  static constexpr int QK = 256, BYTES = 176, PL = 16, ALIGN = 16;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const int sb = pc >> 1, l0 = (pc & 1) * 16, shift = (sb & 1) * 4;
    float sc, m;
    scale_min_k4(b + 4, sb, &sc, &m);
    const float d = load_f16(b) * sc, dm = load_f16(b + 2) * m;
    uint8_t qh[16], q[16];
    ldbytes<16, A>(b + 16 + l0, qh);
    ldbytes<16, A>(b + 48 + 32 * (sb >> 1) + l0, q);
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) {
      const int lo = (q[i] >> shift) & 0xF, hi = (qh[i] >> sb) & 1;
      v[i] = d * (float)(lo + 16 * hi) - dm;
    }
  }
};

struct t_q6_k {
  static constexpr int QK = 256, BYTES = 210, PL = 16, ALIGN = 2;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const int p0 = pc * 16, h = p0 >> 7, r = p0 & 127, g = r >> 5, l0 = r & 31;
    const float d = load_f16(b + 208) * (float)(int8_t)b[192 + pc];
    uint8_t ql[16], qh[16];
    ldbytes<16, A>(b + 64 * h + 32 * (g & 1) + l0, ql);
    ldbytes<16, A>(b + 128 + 32 * h + l0, qh);
    const int lshift = g >= 2 ? 4 : 0, hshift = 2 * g;
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) {
      const int q = (((ql[i] >> lshift) & 0xF) | (((qh[i] >> hshift) & 3) << 4)) - 32;
      v[i] = d * (float)q;
    }
  }
};

struct t_q3_k {
  static constexpr int QK = 256, BYTES = 110, PL = 16, ALIGN = 2;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const uint8_t *s = b + 96;
    const int k = pc;
    const int lo = k < 8 ? (s[k] & 0xF) : (s[k - 8] >> 4);
    const int hi = (s[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
    const float d = load_f16(b + 108) * (float)((lo | (hi << 4)) - 32);
    const int p0 = pc * 16, h = p0 >> 7, j = (p0 & 127) >> 5, l0 = p0 & 31, hbit = p0 >> 5;
    uint8_t q[16], hm[16];
    ldbytes<16, A>(b + 32 + 32 * h + l0, q);
    ldbytes<16, A>(b + l0, hm);
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) {
      const int qv = ((q[i] >> (2 * j)) & 3) - (((hm[i] >> hbit) & 1) ? 0 : 4);
      v[i] = d * (float)qv;
    }
  }
};

struct t_q2_k {
  static constexpr int QK = 256, BYTES = 84, PL = 16, ALIGN = 4;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const int sc = b[pc];
    const float d = load_f16(b + 80) * (float)(sc & 0xF), dm = load_f16(b + 82) * (float)(sc >> 4);
    const int p0 = pc * 16, h = p0 >> 7, j = (p0 & 127) >> 5, l0 = p0 & 31;
    uint8_t q[16];
    ldbytes<16, A>(b + 16 + 32 * h + l0, q);
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) v[i] = d * (float)((q[i] >> (2 * j)) & 3) - dm;
  }
};

struct t_q8_0 {
  static constexpr int QK = 32, BYTES = 34, PL = 8, ALIGN = 2;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const float d = load_f16(b);
    uint8_t q[8];
    ldbytes<8, A>(b + 2 + pc * 8, q);
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) v[i] = d * (float)(int8_t)q[i];
  }
};

struct t_q4_0 {
  static constexpr int QK = 32, BYTES = 18, PL = 8, ALIGN = 2;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const float d = load_f16(b);
    // Elements 0..15 are the low nibbles of qs[0..15], 16..31 the high nibbles.
    const int e0 = pc * 8, shift = e0 >= 16 ? 4 : 0;
    uint8_t q[8];
    ldbytes<8, A>(b + 2 + (e0 & 15), q);
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) v[i] = d * (float)(((q[i] >> shift) & 0xF) - 8);
  }
};

struct t_f32 {
  static constexpr int QK = 1, BYTES = 4, PL = 1, ALIGN = 4;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int, float *v) {
    if constexpr (A >= 4)
      v[0] = *(const float *)b;
    else
      v[0] = bits_to_f32((uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) |
                         ((uint32_t)b[3] << 24));
  }
};

struct t_f16 {
  static constexpr int QK = 1, BYTES = 2, PL = 1, ALIGN = 2;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int, float *v) {
    if constexpr (A >= 2)
      v[0] = __half2float(*(const __half *)b);
    else
      v[0] = load_f16(b);
  }
};

struct t_bf16 {
  static constexpr int QK = 1, BYTES = 2, PL = 1, ALIGN = 2;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int, float *v) {
    v[0] = bits_to_f32((uint32_t)(b[0] | (b[1] << 8)) << 16);
  }
};

// ---- kernels ----

__device__ __forceinline__ void put(float *dst, float v) { *dst = v; }
__device__ __forceinline__ void put(__half *dst, float v) { *dst = __float2half_rn(v); }

// One thread per piece over a flat run of nblocks blocks (A: as in k_matvec).
template <class T, typename OUT, int A>
__global__ void k_dequant(const uint8_t *__restrict__ src, OUT *__restrict__ dst, int64_t nblocks) {
  constexpr int NP = T::QK / T::PL;
  const int64_t total = nblocks * NP;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = i / NP;
    const int pc = (int)(i % NP);
    float v[T::PL];
    T::template piece<A>(src + b * T::BYTES, pc, v);
    OUT *o = dst + b * T::QK + pc * T::PL;
    FERRY_UNROLL
    for (int k = 0; k < T::PL; k++) put(o + k, v[k]);
  }
}

constexpr int MV_WARPS = 4; // rows per 128-thread block

// The dot of one weight row (nb blocks at wr) with x, by one warp: lanes stride over the
// row's pieces; the sum lands in every lane. A > 1 (the "aligned" instantiation): the
// row meets T::ALIGN (so every block does) and x is 16-byte aligned, so quant bytes and
// activations are read in wide words.
template <class T, int A>
__device__ __forceinline__ float warp_row_dot(const uint8_t *__restrict__ wr, int64_t nb,
                                              const float *__restrict__ xi, int lane) {
  constexpr int NP = T::QK / T::PL;
  float acc = 0.0f;
  for (int64_t j = lane; j < nb * NP; j += 32) {
    const int64_t b = j / NP;
    const int pc = (int)(j % NP);
    float v[T::PL];
    T::template piece<A>(wr + b * T::BYTES, pc, v);
    const float *xb = xi + b * T::QK + pc * T::PL;
    if constexpr (A > 1 && T::PL % 4 == 0) {
      FERRY_UNROLL
      for (int k = 0; k < T::PL; k += 4) {
        const float4 x4 = *(const float4 *)(xb + k);
        acc = fmaf(v[k], x4.x, acc);
        acc = fmaf(v[k + 1], x4.y, acc);
        acc = fmaf(v[k + 2], x4.z, acc);
        acc = fmaf(v[k + 3], x4.w, acc);
      }
    } else {
      FERRY_UNROLL
      for (int k = 0; k < T::PL; k++) acc = fmaf(v[k], xb[k], acc);
    }
  }
  return warp_sum(acc);
}

// One warp per weight row. blockIdx.y picks the activation row: x + (rows ? rows[i] :
// i)*ldx -> y + i*ldy, so one launch serves a few tokens (small prefill batches).
template <class T, int A>
__global__ void __launch_bounds__(MV_WARPS * 32)
    k_matvec(const uint8_t *__restrict__ w, int64_t nrows, int64_t n, const float *__restrict__ x,
             int64_t ldx, const int32_t *__restrict__ rows, float *__restrict__ y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
  if (row >= nrows) return; // whole warp leaves together
  const int64_t i = blockIdx.y;
  const int64_t nb = n / T::QK;
  const float acc = warp_row_dot<T, A>(w + row * nb * T::BYTES, nb,
                                       x + (rows ? (int64_t)rows[i] : i) * ldx, lane);
  if (lane == 0) y[i * ldy + row] = acc;
}

// Up to MV_ITEMS (weight matrix, pair) items per launch, passed by value: the small
// groups of a grouped product (decode: one token per expert) in one launch instead of
// one per expert. Item k multiplies matrix w[k] with x row rows[pair[k]] into y row pair[k].
constexpr int MV_ITEMS = 64;
struct mv_items {
  const uint8_t *w[MV_ITEMS];
  int32_t pair[MV_ITEMS];
};

template <class T, int A>
__global__ void __launch_bounds__(MV_WARPS * 32)
    k_matvec_items(const mv_items items, int64_t nrows, int64_t n, const float *__restrict__ x,
                   int64_t ldx, const int32_t *__restrict__ rows, float *__restrict__ y,
                   int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
  if (row >= nrows) return;
  const int64_t i = items.pair[blockIdx.y];
  const int64_t nb = n / T::QK;
  const float acc = warp_row_dot<T, A>(items.w[blockIdx.y] + row * nb * T::BYTES, nb,
                                       x + (int64_t)rows[i] * ldx, lane);
  if (lane == 0) y[i * ldy + row] = acc;
}

// X (m rows, stride ldx, F32) -> compact rows of n in OUT; rows == NULL means identity.
template <typename OUT>
__global__ void k_gather_rows(const float *__restrict__ x, int64_t ldx, const int32_t *rows,
                              int64_t m, int64_t n, OUT *__restrict__ dst) {
  const int64_t total = m * n;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / n, c = i % n;
    const int64_t src_row = rows ? (int64_t)rows[r] : r;
    put(dst + i, x[src_row * ldx + c]);
  }
}

// ---- dispatch ----

enum { DT_HALF = 0, DT_FLOAT = 1 };

struct type_desc {
  int64_t qk, bytes;
};

bool type_geom(enum ferry_type t, type_desc *d) {
  // clang-format off
  switch (t) {
#define G(FT, T)                                                                          \
  case FT: *d = {T::QK, T::BYTES}; return true;
    G(FT_Q4_K, t_q4_k) G(FT_Q5_K, t_q5_k) G(FT_Q6_K, t_q6_k) G(FT_Q3_K, t_q3_k)
    G(FT_Q2_K, t_q2_k) G(FT_Q8_0, t_q8_0) G(FT_Q4_0, t_q4_0) G(FT_F32, t_f32)
    G(FT_F16, t_f16) G(FT_BF16, t_bf16)
#undef G
  default: return false;
  }
  // clang-format on
}

template <class T, typename OUT>
int launch_dequant(const void *src, OUT *dst, int64_t nblocks, cudaStream_t s) {
  const int64_t pieces = nblocks * (T::QK / T::PL);
  if ((uintptr_t)src % T::ALIGN == 0)
    k_dequant<T, OUT, T::ALIGN>
        <<<grid_for(pieces, 256), 256, 0, s>>>((const uint8_t *)src, dst, nblocks);
  else
    k_dequant<T, OUT, 1><<<grid_for(pieces, 256), 256, 0, s>>>((const uint8_t *)src, dst, nblocks);
  CUDA_CHECK_LAUNCH("dequant");
  return 0;
}

template <typename OUT>
int dequant_any(enum ferry_type t, const void *src, OUT *dst, int64_t n, cudaStream_t s) {
  // clang-format off
  switch (t) {
#define D(FT, T)                                                                          \
  case FT: return launch_dequant<T, OUT>(src, dst, n / T::QK, s);
    D(FT_Q4_K, t_q4_k) D(FT_Q5_K, t_q5_k) D(FT_Q6_K, t_q6_k) D(FT_Q3_K, t_q3_k)
    D(FT_Q2_K, t_q2_k) D(FT_Q8_0, t_q8_0) D(FT_Q4_0, t_q4_0) D(FT_F32, t_f32)
    D(FT_F16, t_f16) D(FT_BF16, t_bf16)
#undef D
  default: return ferry_fail(-EINVAL, "cuda: dequant of type %d not supported", (int)t);
  }
  // clang-format on
}

int check_weight(enum ferry_type t, int64_t n, const char *what) {
  type_desc g = {1, 1};
  if (!type_geom(t, &g))
    return ferry_fail(-EINVAL, "cuda %s: weight type %d not supported", what, (int)t);
  if (n <= 0 || n % g.qk)
    return ferry_fail(-EINVAL, "cuda %s: row length %lld is not a multiple of %lld", what,
                      (long long)n, (long long)g.qk);
  return 0;
}

template <class T>
int launch_matvec(const void *w, int64_t nrows, int64_t n, const float *x, int64_t ldx,
                  const int32_t *rows, int64_t m, float *y, int64_t ldy, cudaStream_t s) {
  const int64_t blocks = (nrows + MV_WARPS - 1) / MV_WARPS;
  if (blocks > 0x7fffffffLL || m > 65535)
    return ferry_fail(-EINVAL, "cuda matvec: grid too large (%lld rows, %lld tokens)",
                      (long long)nrows, (long long)m);
  static_assert(T::BYTES % T::ALIGN == 0, "blocks keep the alignment of the first");
  const bool aligned = (uintptr_t)w % T::ALIGN == 0 && (uintptr_t)x % 16 == 0 && ldx % 4 == 0;
  const dim3 grid((unsigned)blocks, (unsigned)m);
  if (aligned)
    k_matvec<T, T::ALIGN>
        <<<grid, MV_WARPS * 32, 0, s>>>((const uint8_t *)w, nrows, n, x, ldx, rows, y, ldy);
  else
    k_matvec<T, 1>
        <<<grid, MV_WARPS * 32, 0, s>>>((const uint8_t *)w, nrows, n, x, ldx, rows, y, ldy);
  CUDA_CHECK_LAUNCH("matvec");
  return 0;
}

template <class T>
int launch_matvec_items(const mv_items &it, int count, int64_t nrows, int64_t n, const float *x,
                        int64_t ldx, const int32_t *rows, float *y, int64_t ldy, cudaStream_t s) {
  const int64_t blocks = (nrows + MV_WARPS - 1) / MV_WARPS;
  if (blocks > 0x7fffffffLL) return ferry_fail(-EINVAL, "cuda matvec: too many rows");
  bool aligned = (uintptr_t)x % 16 == 0 && ldx % 4 == 0;
  for (int k = 0; k < count; k++) aligned = aligned && (uintptr_t)it.w[k] % T::ALIGN == 0;
  const dim3 grid((unsigned)blocks, (unsigned)count);
  if (aligned)
    k_matvec_items<T, T::ALIGN><<<grid, MV_WARPS * 32, 0, s>>>(it, nrows, n, x, ldx, rows, y, ldy);
  else
    k_matvec_items<T, 1><<<grid, MV_WARPS * 32, 0, s>>>(it, nrows, n, x, ldx, rows, y, ldy);
  CUDA_CHECK_LAUNCH("matvec_items");
  return 0;
}

int matvec_items(enum ferry_type t, const mv_items &it, int count, int64_t nrows, int64_t n,
                 const float *x, int64_t ldx, const int32_t *rows, float *y, int64_t ldy,
                 cudaStream_t s) {
  // clang-format off
  switch (t) {
#define M(FT, T)                                                                          \
  case FT: return launch_matvec_items<T>(it, count, nrows, n, x, ldx, rows, y, ldy, s);
    M(FT_Q4_K, t_q4_k) M(FT_Q5_K, t_q5_k) M(FT_Q6_K, t_q6_k) M(FT_Q3_K, t_q3_k)
    M(FT_Q2_K, t_q2_k) M(FT_Q8_0, t_q8_0) M(FT_Q4_0, t_q4_0) M(FT_F32, t_f32)
    M(FT_F16, t_f16) M(FT_BF16, t_bf16)
#undef M
  default: return ferry_fail(-EINVAL, "cuda matvec: type %d not supported", (int)t);
  }
  // clang-format on
}

// Mat-vec for m activation rows (see k_matvec); type already checked.
int matvec_rows(enum ferry_type t, const void *w, int64_t nrows, int64_t n, const float *x,
                int64_t ldx, const int32_t *rows, int64_t m, float *y, int64_t ldy,
                cudaStream_t s) {
  // clang-format off
  switch (t) {
#define M(FT, T)                                                                          \
  case FT: return launch_matvec<T>(w, nrows, n, x, ldx, rows, m, y, ldy, s);
    M(FT_Q4_K, t_q4_k) M(FT_Q5_K, t_q5_k) M(FT_Q6_K, t_q6_k) M(FT_Q3_K, t_q3_k)
    M(FT_Q2_K, t_q2_k) M(FT_Q8_0, t_q8_0) M(FT_Q4_0, t_q4_0) M(FT_F32, t_f32)
    M(FT_F16, t_f16) M(FT_BF16, t_bf16)
#undef M
  default: return ferry_fail(-EINVAL, "cuda matvec: type %d not supported", (int)t);
  }
  // clang-format on
}

// Compute element type of the GEMM path: F16 for quantized and F16 weights; F32 where an
// F16 copy could overflow (BF16) or is not needed (F32).
int gemm_dtype(enum ferry_type t) { return (t == FT_F32 || t == FT_BF16) ? DT_FLOAT : DT_HALF; }

// C(nrows x m, col-major, ldc=ldy) = W(nrows x n)ᵀ-view · X(n x m): Y[i][r] = W[r].X[i].
int gemm(struct cuda_ctx *ctx, int dt, const void *w, int64_t nrows, int64_t n, const void *x,
         int64_t ldx, int64_t m, float *y, int64_t ldy, cudaStream_t s) {
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t ab = dt == DT_HALF ? CUDA_R_16F : CUDA_R_32F;
  if (nrows > INT32_MAX || n > INT32_MAX || m > INT32_MAX || ldx > INT32_MAX || ldy > INT32_MAX)
    return ferry_fail(-EINVAL, "cuda gemm: dimensions exceed cuBLAS int range");
  CUBLAS_CHECK(cublasSetStream(ctx->blas, s));
  CUBLAS_CHECK(cublasGemmEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nrows, (int)m, (int)n, &alpha,
                            w, ab, (int)n, x, ab, (int)ldx, &beta, y, CUDA_R_32F, (int)ldy,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return 0;
}

// Largest dequantized weight tile (bytes) the GEMM path keeps in scratch at once.
constexpr size_t W_TILE_BYTES = (size_t)64 << 20;

// Y = X · Wᵀ with X already converted (dt elements, compact rows of n at xc).
int matmul_converted(struct cuda_ctx *ctx, enum ferry_type t, const void *w, int64_t nrows,
                     int64_t n, const void *xc, int64_t m, float *y, int64_t ldy, cudaStream_t s) {
  const int dt = gemm_dtype(t);
  const size_t esz = dt == DT_HALF ? 2 : 4;
  if (t == FT_F16 || t == FT_F32) // already in the GEMM type: no tile needed
    return gemm(ctx, dt, w, nrows, n, xc, n, m, y, ldy, s);
  type_desc g = {1, 1};
  type_geom(t, &g);
  const int64_t row_bytes = n / g.qk * g.bytes;
  int64_t tile_rows = (int64_t)(W_TILE_BYTES / ((size_t)n * esz));
  if (tile_rows < 1) tile_rows = 1;
  if (tile_rows > nrows) tile_rows = nrows;
  void *tile;
  int rc = cuda_ctx_scratch(ctx, CUDA_SCRATCH_W, (size_t)tile_rows * n * esz, s, &tile);
  if (rc) return rc;
  for (int64_t r0 = 0; r0 < nrows; r0 += tile_rows) {
    const int64_t rn = nrows - r0 < tile_rows ? nrows - r0 : tile_rows;
    const uint8_t *wt = (const uint8_t *)w + r0 * row_bytes;
    rc = dt == DT_HALF ? dequant_any<__half>(t, wt, (__half *)tile, rn * n, s)
                       : dequant_any<float>(t, wt, (float *)tile, rn * n, s);
    if (rc) return rc;
    rc = gemm(ctx, dt, tile, rn, n, xc, n, m, y + r0, ldy, s);
    if (rc) return rc;
  }
  return 0;
}

int convert_rows(int dt, const float *x, int64_t ldx, const int32_t *rows, int64_t m, int64_t n,
                 void *dst, cudaStream_t s) {
  if (dt == DT_HALF)
    k_gather_rows<__half><<<grid_for(m * n, 256), 256, 0, s>>>(x, ldx, rows, m, n, (__half *)dst);
  else
    k_gather_rows<float><<<grid_for(m * n, 256), 256, 0, s>>>(x, ldx, rows, m, n, (float *)dst);
  CUDA_CHECK_LAUNCH("gather_rows");
  return 0;
}

// Host replay of k_dequant / k_matvec: same decoders, same load widths (A), same piece
// schedule per lane.
template <class T, int A>
void host_dequant(const uint8_t *src, float *dst, int64_t nblocks) {
  constexpr int NP = T::QK / T::PL;
  for (int64_t i = 0; i < nblocks * NP; i++) {
    float v[T::PL];
    T::template piece<A>(src + (i / NP) * T::BYTES, (int)(i % NP), v);
    for (int k = 0; k < T::PL; k++) dst[(i / NP) * T::QK + (i % NP) * T::PL + k] = v[k];
  }
}

template <class T, int A>
void host_matvec(const uint8_t *w, int64_t nrows, int64_t n, const float *x, float *y) {
  constexpr int NP = T::QK / T::PL;
  const int64_t nb = n / T::QK;
  for (int64_t row = 0; row < nrows; row++) {
    const uint8_t *wr = w + row * nb * T::BYTES;
    float lanes[32] = {0};
    for (int lane = 0; lane < 32; lane++)
      for (int64_t j = lane; j < nb * NP; j += 32) {
        const int64_t b = j / NP;
        const int pc = (int)(j % NP);
        float v[T::PL];
        T::template piece<A>(wr + b * T::BYTES, pc, v);
        const float *xb = x + b * T::QK + pc * T::PL;
        for (int k = 0; k < T::PL; k++) lanes[lane] = fmaf(v[k], xb[k], lanes[lane]);
      }
    float acc = 0.0f;
    for (int lane = 0; lane < 32; lane++) acc += lanes[lane];
    y[row] = acc;
  }
}

// Below this many activation rows the mat-vec kernel (one weight pass per row) is used.
constexpr int64_t GEMM_MIN_ROWS = 3;

} // namespace

extern "C" int cuda_dequant(enum ferry_type t, const void *src, float *dst, int64_t n,
                            void *stream) {
  int rc = check_weight(t, n, "dequant");
  if (rc) return rc;
  return dequant_any<float>(t, src, dst, n, (cudaStream_t)stream);
}

extern "C" int cuda_matvec(enum ferry_type t, const void *w, int64_t nrows, int64_t n,
                           const float *x, float *y, void *stream) {
  int rc = check_weight(t, n, "matvec");
  if (rc) return rc;
  if (nrows <= 0) return 0;
  return matvec_rows(t, w, nrows, n, x, n, NULL, 1, y, nrows, (cudaStream_t)stream);
}

extern "C" int cuda_matmul(struct cuda_ctx *ctx, enum ferry_type t, const void *w, int64_t nrows,
                           int64_t n, const float *x, int64_t ldx, int64_t m, float *y, int64_t ldy,
                           void *stream) {
  int rc = check_weight(t, n, "matmul");
  if (rc) return rc;
  if (ldx < n || ldy < nrows) return ferry_fail(-EINVAL, "cuda matmul: bad strides");
  if (m <= 0 || nrows <= 0) return 0;
  cudaStream_t s = (cudaStream_t)stream;
  if (m < GEMM_MIN_ROWS) return matvec_rows(t, w, nrows, n, x, ldx, NULL, m, y, ldy, s);
  const int dt = gemm_dtype(t);
  if (t == FT_F32 && ldx == n) return gemm(ctx, dt, w, nrows, n, x, ldx, m, y, ldy, s);
  void *xc;
  if ((rc = cuda_ctx_scratch(ctx, CUDA_SCRATCH_X, (size_t)m * n * (dt == DT_HALF ? 2 : 4), s, &xc)))
    return rc;
  if ((rc = convert_rows(dt, x, ldx, NULL, m, n, xc, s))) return rc;
  return matmul_converted(ctx, t, w, nrows, n, xc, m, y, ldy, s);
}

extern "C" int cuda_matmul_grouped(struct cuda_ctx *ctx, enum ferry_type t, const void *const *w,
                                   int64_t n_group, int64_t nrows, int64_t n, const float *x,
                                   int64_t ldx, const int32_t *rows, const int64_t *offs, float *y,
                                   int64_t ldy, void *stream) {
  int rc = check_weight(t, n, "matmul_grouped");
  if (rc) return rc;
  if (ldx < n || ldy < nrows) return ferry_fail(-EINVAL, "cuda matmul_grouped: bad strides");
  if (n_group <= 0 || offs[0] != 0) return ferry_fail(-EINVAL, "cuda matmul_grouped: bad groups");
  for (int64_t g = 0; g < n_group; g++)
    if (offs[g + 1] < offs[g]) return ferry_fail(-EINVAL, "cuda matmul_grouped: offs not sorted");
  const int64_t total = offs[n_group];
  if (total == 0 || nrows <= 0) return 0;
  cudaStream_t s = (cudaStream_t)stream;
  const int dt = gemm_dtype(t);
  const size_t esz = dt == DT_HALF ? 2 : 4;
  bool any_gemm = false;
  for (int64_t g = 0; g < n_group; g++) any_gemm |= offs[g + 1] - offs[g] >= GEMM_MIN_ROWS;
  void *xc = NULL;
  if (any_gemm) { // the GEMM groups read X gathered and converted once
    if ((rc = cuda_ctx_scratch(ctx, CUDA_SCRATCH_X, (size_t)total * n * esz, s, &xc))) return rc;
    if ((rc = convert_rows(dt, x, ldx, rows, total, n, xc, s))) return rc;
  }
  // A group of one or two tokens reads the expert once per token either way: such groups
  // go to the mat-vec kernel (no dequantization into scratch), batched MV_ITEMS
  // (expert, token) items per launch; decode's k experts of one token are one launch.
  mv_items items;
  int n_items = 0;
  for (int64_t g = 0; g < n_group; g++) {
    const int64_t cnt = offs[g + 1] - offs[g];
    if (cnt == 0 || cnt >= GEMM_MIN_ROWS) continue;
    for (int64_t i = offs[g]; i < offs[g + 1]; i++) {
      items.w[n_items] = (const uint8_t *)w[g];
      items.pair[n_items++] = (int32_t)i;
      if (n_items == MV_ITEMS) {
        if ((rc = matvec_items(t, items, n_items, nrows, n, x, ldx, rows, y, ldy, s))) return rc;
        n_items = 0;
      }
    }
  }
  if (n_items && (rc = matvec_items(t, items, n_items, nrows, n, x, ldx, rows, y, ldy, s)))
    return rc;
  for (int64_t g = 0; g < n_group; g++) {
    const int64_t cnt = offs[g + 1] - offs[g];
    if (cnt < GEMM_MIN_ROWS) continue;
    const uint8_t *xg = (const uint8_t *)xc + (size_t)offs[g] * n * esz;
    if ((rc = matmul_converted(ctx, t, w[g], nrows, n, xg, cnt, y + offs[g] * ldy, ldy, s)))
      return rc;
  }
  return 0;
}

extern "C" int cuda_host_dequant(enum ferry_type t, const void *src, float *dst, int64_t n) {
  int rc = check_weight(t, n, "host_dequant");
  if (rc) return rc;
  const uint8_t *b = (const uint8_t *)src;
  // clang-format off
  switch (t) {
#define H(FT, T)                                                                          \
  case FT:                                                                                \
    if ((uintptr_t)b % T::ALIGN == 0)                                                     \
      host_dequant<T, T::ALIGN>(b, dst, n / T::QK);                                       \
    else                                                                                  \
      host_dequant<T, 1>(b, dst, n / T::QK);                                              \
    return 0;
    H(FT_Q4_K, t_q4_k) H(FT_Q5_K, t_q5_k) H(FT_Q6_K, t_q6_k) H(FT_Q3_K, t_q3_k)
    H(FT_Q2_K, t_q2_k) H(FT_Q8_0, t_q8_0) H(FT_Q4_0, t_q4_0) H(FT_F32, t_f32)
    H(FT_F16, t_f16) H(FT_BF16, t_bf16)
#undef H
  default: return ferry_fail(-EINVAL, "cuda host_dequant: type %d not supported", (int)t);
  }
  // clang-format on
}

extern "C" int cuda_host_matvec(enum ferry_type t, const void *w, int64_t nrows, int64_t n,
                                const float *x, float *y) {
  int rc = check_weight(t, n, "host_matvec");
  if (rc) return rc;
  const uint8_t *b = (const uint8_t *)w;
  // clang-format off
  switch (t) {
#define H(FT, T)                                                                          \
  case FT:                                                                                \
    if ((uintptr_t)b % T::ALIGN == 0)                                                     \
      host_matvec<T, T::ALIGN>(b, nrows, n, x, y);                                        \
    else                                                                                  \
      host_matvec<T, 1>(b, nrows, n, x, y);                                               \
    return 0;
    H(FT_Q4_K, t_q4_k) H(FT_Q5_K, t_q5_k) H(FT_Q6_K, t_q6_k) H(FT_Q3_K, t_q3_k)
    H(FT_Q2_K, t_q2_k) H(FT_Q8_0, t_q8_0) H(FT_Q4_0, t_q4_0) H(FT_F32, t_f32)
    H(FT_F16, t_f16) H(FT_BF16, t_bf16)
#undef H
  default: return ferry_fail(-EINVAL, "cuda host_matvec: type %d not supported", (int)t);
  }
  // clang-format on
}
