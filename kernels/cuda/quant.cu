// kernels/cuda/quant.cu: quantized weights on the GPU: dequantization (flat and by
// embedding row ids), the mat-vec with fused dequantization (decode, and products of
// fewer than GEMM_MIN_ROWS activation rows), the matrix product of larger batches
// (dequantize row tiles, then cuBLAS) and the grouped-expert product. The format
// decoders live in quant.cuh. CPU references: cpu_dequant_row, cpu_matvec_exact,
// cpu_matmul_exact, cpu_matmul_grouped.
//
// Mat-vec: one warp per weight row; its lanes take the row's units (quant.cuh) in turn,
// so a warp reads whole blocks with wide loads, and the lanes' sums meet in a shuffle
// reduction. blockIdx.y picks the activation row, so one launch serves a few tokens.
#include "kernels/cuda/quant.cuh"

namespace {

using namespace fq;

__device__ __forceinline__ void put(float *dst, float v) { *dst = v; }
__device__ __forceinline__ void put(__half *dst, float v) { *dst = __float2half_rn(v); }

// One thread per piece over a flat run of nblocks blocks.
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

// Embedding rows: one thread per piece of n rows of d elements; row i is ids[i].
template <class T, int A>
__global__ void k_embed(const uint8_t *__restrict__ table, uint64_t row_bytes,
                        const int32_t *__restrict__ ids, int64_t n, int64_t d,
                        float *__restrict__ out) {
  constexpr int NP = T::QK / T::PL;
  const int64_t per_row = d / T::QK * NP, total = n * per_row;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / per_row, k = i % per_row, b = k / NP;
    const int pc = (int)(k % NP);
    float v[T::PL];
    T::template piece<A>(table + (uint64_t)ids[r] * row_bytes + b * T::BYTES, pc, v);
    float *o = out + r * d + b * T::QK + pc * T::PL;
    FERRY_UNROLL
    for (int j = 0; j < T::PL; j++) o[j] = v[j];
  }
}

constexpr int MV_WARPS = 4; // weight rows per 128-thread block

// y[i*ldy + row] = W[row] . x[(rows ? rows[i] : i) * ldx] for i = blockIdx.y.
template <class T, int A>
__global__ void __launch_bounds__(MV_WARPS * 32)
    k_matvec(const uint8_t *__restrict__ w, int64_t nrows, int64_t n, int64_t row_bytes,
             const float *__restrict__ x, int64_t ldx, const int32_t *__restrict__ rows,
             float *__restrict__ y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
  if (row >= nrows) return; // whole warp leaves together
  const int64_t i = blockIdx.y;
  const float *xi = x + (rows ? (int64_t)rows[i] : i) * ldx;
  const float acc = warp_sum(lane_dot<T, A>(w + row * row_bytes, n / T::QK, xi, lane));
  if (lane == 0) y[i * ldy + row] = acc;
}

// Up to MV_ITEMS (weight matrix, grouped row) items per launch, passed by value: the
// small groups of a grouped product (decode: one token per expert) in one launch. Item k
// multiplies matrix w[k] with x row rows[pair[k]] into y row pair[k].
constexpr int MV_ITEMS = 64;
struct mv_items {
  const uint8_t *w[MV_ITEMS];
  int32_t pair[MV_ITEMS];
};

template <class T, int A>
__global__ void __launch_bounds__(MV_WARPS * 32)
    k_matvec_items(const mv_items items, int64_t nrows, int64_t n, int64_t row_bytes,
                   const float *__restrict__ x, int64_t ldx, const int32_t *__restrict__ rows,
                   float *__restrict__ y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
  if (row >= nrows) return;
  const int64_t i = items.pair[blockIdx.y];
  const float acc = warp_sum(lane_dot<T, A>(items.w[blockIdx.y] + row * row_bytes, n / T::QK,
                                            x + (int64_t)rows[i] * ldx, lane));
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

struct type_desc {
  int64_t qk, bytes;
};

bool type_geom(enum ferry_type t, type_desc *d) {
  switch (t) {
#define G(FT, T) \
  case FT: *d = {T::QK, T::BYTES}; return true;
    FQ_TYPES(G)
#undef G
    default: return false;
  }
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
  switch (t) {
#define D(FT, T) \
  case FT: return launch_dequant<T, OUT>(src, dst, n / T::QK, s);
    FQ_TYPES(D)
#undef D
    default: return ferry_fail(-EINVAL, "cuda: dequant of type %d not supported", (int)t);
  }
}

template <class T>
int launch_embed(const void *table, uint64_t row_bytes, const int32_t *ids, int64_t n, int64_t d,
                 float *out, cudaStream_t s) {
  const int64_t pieces = n * (d / T::QK) * (T::QK / T::PL);
  const uint8_t *tb = (const uint8_t *)table;
  if ((uintptr_t)tb % T::ALIGN == 0 && row_bytes % T::ALIGN == 0)
    k_embed<T, T::ALIGN><<<grid_for(pieces, 256), 256, 0, s>>>(tb, row_bytes, ids, n, d, out);
  else
    k_embed<T, 1><<<grid_for(pieces, 256), 256, 0, s>>>(tb, row_bytes, ids, n, d, out);
  CUDA_CHECK_LAUNCH("embed");
  return 0;
}

template <class T>
int launch_matvec(const void *w, int64_t nrows, int64_t n, const float *x, int64_t ldx,
                  const int32_t *rows, int64_t m, float *y, int64_t ldy, cudaStream_t s) {
  const int64_t blocks = (nrows + MV_WARPS - 1) / MV_WARPS;
  if (blocks > 0x7fffffffLL || m > 65535)
    return ferry_fail(-EINVAL, "cuda matvec: grid too large (%lld rows, %lld tokens)",
                      (long long)nrows, (long long)m);
  const int64_t rb = n / T::QK * T::BYTES;
  const dim3 grid((unsigned)blocks, (unsigned)m);
  const uint8_t *wb = (const uint8_t *)w;
  if (mv_align<T>(w, rb, n, x, ldx) > 1)
    k_matvec<T, wide_a<T>><<<grid, MV_WARPS * 32, 0, s>>>(wb, nrows, n, rb, x, ldx, rows, y, ldy);
  else
    k_matvec<T, 1><<<grid, MV_WARPS * 32, 0, s>>>(wb, nrows, n, rb, x, ldx, rows, y, ldy);
  CUDA_CHECK_LAUNCH("matvec");
  return 0;
}

template <class T>
int launch_matvec_items(const mv_items &it, int count, int64_t nrows, int64_t n, const float *x,
                        int64_t ldx, const int32_t *rows, float *y, int64_t ldy, cudaStream_t s) {
  const int64_t blocks = (nrows + MV_WARPS - 1) / MV_WARPS;
  if (blocks > 0x7fffffffLL) return ferry_fail(-EINVAL, "cuda matvec: too many rows");
  const int64_t rb = n / T::QK * T::BYTES;
  bool aligned = true;
  for (int k = 0; k < count; k++) aligned = aligned && mv_align<T>(it.w[k], rb, n, x, ldx) > 1;
  const dim3 grid((unsigned)blocks, (unsigned)count);
  if (aligned)
    k_matvec_items<T, wide_a<T>>
        <<<grid, MV_WARPS * 32, 0, s>>>(it, nrows, n, rb, x, ldx, rows, y, ldy);
  else
    k_matvec_items<T, 1><<<grid, MV_WARPS * 32, 0, s>>>(it, nrows, n, rb, x, ldx, rows, y, ldy);
  CUDA_CHECK_LAUNCH("matvec_items");
  return 0;
}

int matvec_items(enum ferry_type t, const mv_items &it, int count, int64_t nrows, int64_t n,
                 const float *x, int64_t ldx, const int32_t *rows, float *y, int64_t ldy,
                 cudaStream_t s) {
  switch (t) {
#define M(FT, T) \
  case FT: return launch_matvec_items<T>(it, count, nrows, n, x, ldx, rows, y, ldy, s);
    FQ_TYPES(M)
#undef M
    default: return ferry_fail(-EINVAL, "cuda matvec: type %d not supported", (int)t);
  }
}

// Mat-vec for m activation rows (see k_matvec); type already checked.
int matvec_rows(enum ferry_type t, const void *w, int64_t nrows, int64_t n, const float *x,
                int64_t ldx, const int32_t *rows, int64_t m, float *y, int64_t ldy,
                cudaStream_t s) {
  switch (t) {
#define M(FT, T) \
  case FT: return launch_matvec<T>(w, nrows, n, x, ldx, rows, m, y, ldy, s);
    FQ_TYPES(M)
#undef M
    default: return ferry_fail(-EINVAL, "cuda matvec: type %d not supported", (int)t);
  }
}

// Y = X . W^T for m rows of X already of the GEMM element type dt (xd, row stride ldxd
// elements): W is used directly when it already has that type, else dequantized in row
// tiles into the reserved tile buffer.
int matmul_tiles(struct cuda_ctx *ctx, int dt, enum ferry_type t, const void *w, int64_t nrows,
                 int64_t n, const void *xd, int64_t ldxd, int64_t m, float *y, int64_t ldy,
                 cudaStream_t s) {
  if ((t == FT_F16 && dt == DT_HALF) || (t == FT_F32 && dt == DT_FLOAT))
    return cuda_gemm(ctx, dt, w, nrows, n, xd, ldxd, m, y, ldy, s);
  const size_t esz = dt == DT_HALF ? 2 : 4;
  const struct cuda_scratch *sc = &ctx->sc;
  int64_t tile_rows = sc->wtile ? (int64_t)(sc->wtile_bytes / ((size_t)n * esz)) : 0;
  if (tile_rows < 1)
    return ferry_fail(-EINVAL,
                      "cuda matmul: no weight tile for rows of %lld (call reserve with "
                      "max_tok >= %lld)",
                      (long long)n, (long long)GEMM_MIN_ROWS);
  if (tile_rows > nrows) tile_rows = nrows;
  const int64_t row_bytes = cuda_row_bytes(t, n);
  for (int64_t r0 = 0; r0 < nrows; r0 += tile_rows) {
    const int64_t rn = nrows - r0 < tile_rows ? nrows - r0 : tile_rows;
    int rc = cuda_dequant_to(t, (const uint8_t *)w + r0 * row_bytes, sc->wtile, dt, rn * n, s);
    if (!rc) rc = cuda_gemm(ctx, dt, sc->wtile, rn, n, xd, ldxd, m, y + r0, ldy, s);
    if (rc) return rc;
  }
  return 0;
}

// Host replay of k_dequant / k_matvec: same decoders, same load widths (A), same unit
// schedule per lane and the same butterfly order of the warp reduction.
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
  const int64_t rb = n / T::QK * T::BYTES;
  for (int64_t row = 0; row < nrows; row++) {
    float lanes[32];
    for (int lane = 0; lane < 32; lane++)
      lanes[lane] = lane_dot<T, A>(w + row * rb, n / T::QK, x, lane);
    for (int o = 16; o > 0; o >>= 1) { // warp_sum's butterfly
      float nx[32];
      for (int l = 0; l < 32; l++) nx[l] = lanes[l] + lanes[l ^ o];
      memcpy(lanes, nx, sizeof lanes);
    }
    y[row] = lanes[0];
  }
}

} // namespace

// ---- shared with moe.cu ----

int cuda_check_weight(enum ferry_type t, int64_t n, const char *what) {
  type_desc g = {1, 1};
  if (!type_geom(t, &g))
    return ferry_fail(-EINVAL, "cuda %s: weight type %d not supported", what, (int)t);
  if (n <= 0 || n % g.qk)
    return ferry_fail(-EINVAL, "cuda %s: row length %lld is not a multiple of %lld", what,
                      (long long)n, (long long)g.qk);
  return 0;
}

int64_t cuda_row_bytes(enum ferry_type t, int64_t n) {
  type_desc g = {1, 1};
  type_geom(t, &g);
  return n / g.qk * g.bytes;
}

int gemm_dtype(enum ferry_prec prec, enum ferry_type t) {
  if (prec == FERRY_PREC_EXACT || t == FT_F32 || t == FT_BF16) return DT_FLOAT;
  return DT_HALF;
}

int cuda_gemm(struct cuda_ctx *ctx, int dt, const void *w, int64_t nrows, int64_t n, const void *x,
              int64_t ldx, int64_t m, float *y, int64_t ldy, cudaStream_t s) {
  const float alpha = 1.0f, beta = 0.0f;
  if (nrows > INT32_MAX || n > INT32_MAX || m > INT32_MAX || ldx > INT32_MAX || ldy > INT32_MAX)
    return ferry_fail(-EINVAL, "cuda gemm: dimensions exceed cuBLAS int range");
  if (!ctx->blas_set || ctx->blas_stream != s) {
    // cublasSetStream resets the workspace to cuBLAS's own pool (which would allocate, and
    // cannot during graph capture): set the reserved one again after it.
    CUBLAS_CHECK(cublasSetStream(ctx->blas, s));
    if (ctx->sc.blas_ws)
      CUBLAS_CHECK(cublasSetWorkspace(ctx->blas, ctx->sc.blas_ws, ctx->sc.blas_ws_bytes));
    ctx->blas_stream = s;
    ctx->blas_set = true;
  }
  if (dt == DT_FLOAT) // plain F32 (default math: no TF32)
    CUBLAS_CHECK(cublasSgemm(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nrows, (int)m, (int)n,
                             &alpha, (const float *)w, (int)n, (const float *)x, (int)ldx, &beta, y,
                             (int)ldy));
  else
    CUBLAS_CHECK(cublasGemmEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nrows, (int)m, (int)n,
                              &alpha, w, CUDA_R_16F, (int)n, x, CUDA_R_16F, (int)ldx, &beta, y,
                              CUDA_R_32F, (int)ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return 0;
}

int cuda_dequant_to(enum ferry_type t, const void *src, void *dst, int dt, int64_t n,
                    cudaStream_t s) {
  return dt == DT_HALF ? dequant_any<__half>(t, src, (__half *)dst, n, s)
                       : dequant_any<float>(t, src, (float *)dst, n, s);
}

int cuda_gather_rows(int dt, const float *x, int64_t ldx, const int32_t *rows, int64_t m, int64_t n,
                     void *dst, cudaStream_t s) {
  if (m <= 0 || n <= 0) return 0;
  if (dt == DT_HALF)
    k_gather_rows<__half><<<grid_for(m * n, 256), 256, 0, s>>>(x, ldx, rows, m, n, (__half *)dst);
  else
    k_gather_rows<float><<<grid_for(m * n, 256), 256, 0, s>>>(x, ldx, rows, m, n, (float *)dst);
  CUDA_CHECK_LAUNCH("gather_rows");
  return 0;
}

// ---- ops ----

extern "C" int cuda_dequant(enum ferry_type t, const void *src, float *dst, int64_t n,
                            void *stream) {
  int rc = cuda_check_weight(t, n, "dequant");
  if (rc) return rc;
  return dequant_any<float>(t, src, dst, n, (cudaStream_t)stream);
}

extern "C" int cuda_embed(enum ferry_type t, const void *table, uint64_t row_bytes,
                          const int32_t *ids, int64_t n, int64_t d, float *out, void *stream) {
  int rc = cuda_check_weight(t, d, "embed");
  if (rc) return rc;
  if (n < 0 || row_bytes < (uint64_t)cuda_row_bytes(t, d))
    return ferry_fail(-EINVAL, "cuda embed: %lld rows of %llu bytes for %lld elements",
                      (long long)n, (unsigned long long)row_bytes, (long long)d);
  if (n == 0) return 0;
  cudaStream_t s = (cudaStream_t)stream;
  switch (t) {
#define E(FT, T) \
  case FT: return launch_embed<T>(table, row_bytes, ids, n, d, out, s);
    FQ_TYPES(E)
#undef E
    default: return ferry_fail(-EINVAL, "cuda embed: type %d not supported", (int)t);
  }
}

extern "C" int cuda_matvec(enum ferry_type t, const void *w, int64_t nrows, int64_t n,
                           const float *x, float *y, void *stream) {
  int rc = cuda_check_weight(t, n, "matvec");
  if (rc) return rc;
  if (nrows < 0) return ferry_fail(-EINVAL, "cuda matvec: negative row count");
  if (nrows == 0) return 0;
  return matvec_rows(t, w, nrows, n, x, n, NULL, 1, y, nrows, (cudaStream_t)stream);
}

extern "C" int cuda_matmul(struct cuda_ctx *ctx, enum ferry_prec prec, enum ferry_type t,
                           const void *w, int64_t nrows, int64_t n, const float *x, int64_t ldx,
                           int64_t m, float *y, int64_t ldy, void *stream) {
  int rc = cuda_check_weight(t, n, "matmul");
  if (rc) return rc;
  if (ldx < n || ldy < nrows || m < 0 || nrows < 0)
    return ferry_fail(-EINVAL, "cuda matmul: bad strides or sizes");
  if (m == 0 || nrows == 0) return 0;
  cudaStream_t s = (cudaStream_t)stream;
  if (m < GEMM_MIN_ROWS) return matvec_rows(t, w, nrows, n, x, ldx, NULL, m, y, ldy, s);
  const int dt = gemm_dtype(prec, t);
  if (dt == DT_FLOAT) // F32 activations as they are: cuBLAS takes the row stride
    return matmul_tiles(ctx, dt, t, w, nrows, n, x, ldx, m, y, ldy, s);
  const struct cuda_scratch *sc = &ctx->sc;
  if (!sc->xconv || (size_t)m * n * 2 > sc->xconv_bytes)
    return ferry_fail(-EINVAL,
                      "cuda matmul: %lld x %lld activations exceed the reserved scratch (call "
                      "reserve with larger limits)",
                      (long long)m, (long long)n);
  if ((rc = cuda_gather_rows(DT_HALF, x, ldx, NULL, m, n, sc->xconv, s))) return rc;
  return matmul_tiles(ctx, DT_HALF, t, w, nrows, n, sc->xconv, n, m, y, ldy, s);
}

extern "C" int cuda_matmul_grouped(struct cuda_ctx *ctx, enum ferry_type t, const void *const *w,
                                   int64_t n_group, int64_t nrows, int64_t n, const float *x,
                                   int64_t ldx, const int32_t *rows, const int64_t *offs, float *y,
                                   int64_t ldy, void *stream) {
  int rc = cuda_check_weight(t, n, "matmul_grouped");
  if (rc) return rc;
  if (ldx < n || ldy < nrows || nrows < 0)
    return ferry_fail(-EINVAL, "cuda matmul_grouped: bad strides");
  if (n_group <= 0 || offs[0] != 0) return ferry_fail(-EINVAL, "cuda matmul_grouped: bad groups");
  for (int64_t g = 0; g < n_group; g++)
    if (offs[g + 1] < offs[g]) return ferry_fail(-EINVAL, "cuda matmul_grouped: offs not sorted");
  const int64_t total = offs[n_group];
  if (total == 0 || nrows == 0) return 0;
  cudaStream_t s = (cudaStream_t)stream;
  bool any_gemm = false;
  for (int64_t g = 0; g < n_group; g++) any_gemm |= offs[g + 1] - offs[g] >= GEMM_MIN_ROWS;
  const struct cuda_scratch *sc = &ctx->sc;
  if (any_gemm) { // the GEMM groups read X gathered once, in F32 (the op is exact)
    if (!sc->xconv || (size_t)total * n * 4 > sc->xconv_bytes)
      return ferry_fail(-EINVAL,
                        "cuda matmul_grouped: %lld rows of %lld exceed the reserved scratch "
                        "(call reserve with larger limits)",
                        (long long)total, (long long)n);
    if ((rc = cuda_gather_rows(DT_FLOAT, x, ldx, rows, total, n, sc->xconv, s))) return rc;
  }
  // A group of one or two tokens reads the expert once per token either way: such groups
  // go to the mat-vec kernel, batched MV_ITEMS (expert, token) items per launch.
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
    const float *xg = (const float *)sc->xconv + offs[g] * n;
    if ((rc =
             matmul_tiles(ctx, DT_FLOAT, t, w[g], nrows, n, xg, n, cnt, y + offs[g] * ldy, ldy, s)))
      return rc;
  }
  return 0;
}

extern "C" int cuda_host_dequant(enum ferry_type t, const void *src, float *dst, int64_t n) {
  int rc = cuda_check_weight(t, n, "host_dequant");
  if (rc) return rc;
  const uint8_t *b = (const uint8_t *)src;
  switch (t) {
#define H(FT, T)                                    \
  case FT:                                          \
    if ((uintptr_t)b % T::ALIGN == 0)               \
      host_dequant<T, T::ALIGN>(b, dst, n / T::QK); \
    else                                            \
      host_dequant<T, 1>(b, dst, n / T::QK);        \
    return 0;
    FQ_TYPES(H)
#undef H
    default: return ferry_fail(-EINVAL, "cuda host_dequant: type %d not supported", (int)t);
  }
}

extern "C" int cuda_host_matvec(enum ferry_type t, const void *w, int64_t nrows, int64_t n,
                                const float *x, float *y) {
  int rc = cuda_check_weight(t, n, "host_matvec");
  if (rc) return rc;
  const uint8_t *b = (const uint8_t *)w;
  switch (t) {
#define H(FT, T)                                           \
  case FT:                                                 \
    if (mv_align<T>(b, n / T::QK * T::BYTES, n, x, n) > 1) \
      host_matvec<T, wide_a<T>>(b, nrows, n, x, y);        \
    else                                                   \
      host_matvec<T, 1>(b, nrows, n, x, y);                \
    return 0;
    FQ_TYPES(H)
#undef H
    default: return ferry_fail(-EINVAL, "cuda host_matvec: type %d not supported", (int)t);
  }
}
