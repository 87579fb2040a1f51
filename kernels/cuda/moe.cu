// kernels/cuda/moe.cu: the routed-expert FFN (moe_ffn: groups described by the host,
// moe_ffn_ids: experts chosen on the device) and the router-order combine. CPU
// reference: three exact products and cpu_swiglu per group (backend_cpu.c), cpu_axpy.
//
// Two paths, chosen per group by its size alone (so a pair's output depends only on its
// expert and token, the grouping of the other pairs aside):
//  - groups of fewer than GEMM_MIN_ROWS pairs (decode: every group): per pair, one kernel
//    for the gate and up mat-vecs with the SwiGLU fused (one warp per hidden row, both
//    dots in that warp), then one kernel for the down mat-vec. The pairs come from an
//    item source: a by-value list (moe_ffn) or the device ids (moe_ffn_ids, which needs
//    no host synchronisation and can be captured in a graph). Both sources run the same
//    kernel code, so moe_ffn_ids == moe_ffn bit for bit.
//  - larger groups, FAST: a grouped tensor-core product over all the call's groups at
//    once (k_moe_mma): one launch for gate, up and SwiGLU, one for down, each block a
//    64 x 64 tile of one group, weights dequantized to F16 in shared memory 32 columns at
//    a time, F32 accumulation (WMMA). EXACT (and gate/up of different types): gather the
//    group's F32 inputs, dequantize gate and up into one F32 tile, one cublasSgemm for
//    both, SwiGLU, dequantize down, one product.
//    moe_ffn_ids reads the ids back (not capturable), groups the pairs on the host
//    exactly as the CPU backend does, and runs this same code.
#include <mma.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/quant.cuh"

namespace {

using namespace fq;

constexpr int MOE_WARPS = 4;  // hidden / output rows per 128-thread block
constexpr int MOE_ITEMS = 64; // pairs per launch of the list source

struct moe_item {
  const uint8_t *w[3]; // gate, up, down
  int64_t row;         // grouped row: its hidden row in h and its output row in y
  int64_t tok;         // its token: input row x + tok * d
};

// moe_ffn: pairs listed by the host; tok = rows[row] (device memory).
struct src_list {
  const uint8_t *w[3][MOE_ITEMS];
  int32_t row[MOE_ITEMS];
  const int32_t *rows;
  __device__ __forceinline__ moe_item get(int i) const {
    moe_item it;
    it.w[0] = w[0][i];
    it.w[1] = w[1][i];
    it.w[2] = w[2][i];
    it.row = row[i];
    it.tok = rows[row[i]];
    return it;
  }
  __device__ __forceinline__ void mark(int) const {}
};

// moe_ffn_ids: pair p = t*k + j uses expert ids[p]; row p; tok p / k; map[p] = p.
struct src_ids {
  const uint8_t *base[3];
  uint64_t stride[3];
  const int32_t *ids;
  int64_t k;
  int32_t *map;
  __device__ __forceinline__ moe_item get(int p) const {
    const int64_t e = ids[p];
    moe_item it;
    it.w[0] = base[0] + e * stride[0];
    it.w[1] = base[1] + e * stride[1];
    it.w[2] = base[2] + e * stride[2];
    it.row = p;
    it.tok = p / k;
    return it;
  }
  __device__ __forceinline__ void mark(int p) const { map[p] = p; }
};

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

// h[row][r] = silu(gate[r] . x_tok) * (up[r] . x_tok) for hidden row r of item blockIdx.y.
template <class T, int A, class SRC>
__global__ void __launch_bounds__(MOE_WARPS * 32)
    k_moe_gate_up(const SRC src, int64_t ff, int64_t d, int64_t rb, const float *__restrict__ x,
                  float *__restrict__ h) {
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t)blockIdx.x * MOE_WARPS + (threadIdx.x >> 5);
  if (blockIdx.x == 0 && threadIdx.x == 0) src.mark(blockIdx.y);
  if (r >= ff) return;
  const moe_item it = src.get(blockIdx.y);
  const float *xt = x + it.tok * d;
  const float g = warp_sum(lane_dot<T, A>(it.w[0] + r * rb, d / T::QK, xt, lane));
  const float u = warp_sum(lane_dot<T, A>(it.w[1] + r * rb, d / T::QK, xt, lane));
  if (lane == 0) h[it.row * ff + r] = silu_mul(g, u);
}

// out[row][r] = W_which[r] . x_tok: gate or up alone, when their types differ.
template <class T, int A, class SRC>
__global__ void __launch_bounds__(MOE_WARPS * 32)
    k_moe_one(const SRC src, int which, int64_t ff, int64_t d, int64_t rb,
              const float *__restrict__ x, float *__restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t)blockIdx.x * MOE_WARPS + (threadIdx.x >> 5);
  if (which == 0 && blockIdx.x == 0 && threadIdx.x == 0) src.mark(blockIdx.y);
  if (r >= ff) return;
  const moe_item it = src.get(blockIdx.y);
  const float v = warp_sum(lane_dot<T, A>(it.w[which] + r * rb, d / T::QK, x + it.tok * d, lane));
  if (lane == 0) out[it.row * ff + r] = v;
}

// h[row][i] = silu(g[row][i]) * u[row][i] for the items (after two k_moe_one).
// u may be h (in place).
template <class SRC>
__global__ void k_moe_swiglu_items(const SRC src, int64_t ff, const float *g, const float *u,
                                   float *h) {
  const int64_t row = src.get(blockIdx.y).row;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < ff;
       i += (int64_t)gridDim.x * blockDim.x)
    h[row * ff + i] = silu_mul(g[row * ff + i], u[row * ff + i]);
}

// y[row][r] = down[r] . h[row] for output row r of item blockIdx.y.
template <class T, int A, class SRC>
__global__ void __launch_bounds__(MOE_WARPS * 32)
    k_moe_down(const SRC src, int64_t d, int64_t ff, int64_t rb, const float *__restrict__ h,
               float *__restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t)blockIdx.x * MOE_WARPS + (threadIdx.x >> 5);
  if (r >= d) return;
  const moe_item it = src.get(blockIdx.y);
  const float v = warp_sum(lane_dot<T, A>(it.w[2] + r * rb, ff / T::QK, h + it.row * ff, lane));
  if (lane == 0) y[it.row * d + r] = v;
}

// GEMM path: gu rows [gate (ff) | up (ff)] -> h rows of ff in OUT (F16 or F32).
template <typename OUT>
__global__ void k_swiglu_rows(const float *__restrict__ gu, int64_t cnt, int64_t ff,
                              OUT *__restrict__ h) {
  const int64_t total = cnt * ff;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / ff, c = i % ff;
    const float v = silu_mul(gu[r * 2 * ff + c], gu[r * 2 * ff + ff + c]);
    if constexpr (sizeof(OUT) == 2)
      h[i] = __float2half_rn(v);
    else
      h[i] = v;
  }
}

// y[t][i] = sum_j w[t*k+j] * slots[map[t*k+j]][i], j in order from zero, each product
// and sum rounded on its own as cpu_axpy does (no FMA): bit-identical to the CPU.
__global__ void k_moe_combine(float *__restrict__ y, const float *__restrict__ slots,
                              const int32_t *__restrict__ map, const float *__restrict__ w,
                              int64_t n_tok, int64_t k, int64_t d) {
  const int64_t total = n_tok * d;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / d, c = i % d;
    float acc = 0.0f;
    for (int64_t j = 0; j < k; j++) {
      const int64_t p = t * k + j;
      const int64_t s = map ? (int64_t)map[p] : p;
      acc = __fadd_rn(acc, __fmul_rn(w[p], slots[s * d + c]));
    }
    y[i] = acc;
  }
}

// ---- grouped tensor-core product (FAST, groups of GEMM_MIN_ROWS pairs or more) ----

constexpr int MM_BM = 64, MM_BN = 64, MM_BK = 32, MM_THREADS = 128, MM_ITEMS = 128;
constexpr int MM_LDH = MM_BK + 8; // shared row stride of the F16 tiles (halves)
constexpr int MM_LDF = MM_BN + 4; // of the F32 output staging (floats)

// One 64-row slice of a group: weights (gate/up, or down), its first grouped row, rows.
struct mm_item {
  const uint8_t *w0, *w1;
  int32_t r0, cnt;
};
struct mm_items {
  mm_item it[MM_ITEMS];
};

// Block (item, column tile): out[r0 + r][n0 + c] for r < cnt, c < 64, of
//   GATED: silu(x_r . Wg[n]) * (x_r . Wu[n]) with x_r = x + rows[r0 + r] * ldx;
//   else:  x_r . W[n] with x_r = x + (r0 + r) * ldx.
// K (a multiple of 32) in steps of 32: the X tile (F32 -> F16) and the weight tiles
// (dequantized pieces -> F16) in shared memory, 2 x 2 WMMA 16x16x16 fragments per warp.
template <class T, int A, bool GATED>
__global__ void __launch_bounds__(MM_THREADS)
    k_moe_mma(const mm_items items, int64_t N, int64_t K, int64_t rbw, const float *__restrict__ x,
              int64_t ldx, const int32_t *__restrict__ rows, float *__restrict__ out, int64_t ldo) {
  using namespace nvcuda;
  constexpr int NW = GATED ? 2 : 1;
  constexpr int PPR = MM_BK / T::PL; // pieces per weight row per K step
  __shared__ __align__(32) __half xs[MM_BM][MM_LDH];
  __shared__ __align__(32) __half ws[NW][MM_BN][MM_LDH];
  __shared__ __align__(32) float stage[MM_BM][MM_LDF];
  const mm_item it = items.it[blockIdx.x];
  const int64_t n0 = (int64_t)blockIdx.y * MM_BN;
  const int tid = threadIdx.x, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
  const uint8_t *wsrc[2] = {it.w0, it.w1};
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NW][2][2];
#pragma unroll
  for (int g = 0; g < NW; g++)
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
      for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[g][i][j], 0.0f);
  for (int64_t k0 = 0; k0 < K; k0 += MM_BK) {
    for (int e = tid; e < MM_BM * MM_BK; e += MM_THREADS) {
      const int r = e / MM_BK, c = e % MM_BK;
      float v = 0.0f;
      if (r < it.cnt) {
        const int64_t sr = GATED ? (int64_t)rows[it.r0 + r] : (int64_t)it.r0 + r;
        v = x[sr * ldx + k0 + c];
      }
      xs[r][c] = __float2half_rn(v);
    }
#pragma unroll
    for (int g = 0; g < NW; g++)
      for (int e = tid; e < MM_BN * PPR; e += MM_THREADS) {
        const int nr = e / PPR, pp = e % PPR;
        const int64_t n = n0 + nr, kk = k0 + pp * T::PL;
        float v[T::PL];
        if (n < N) {
          T::template piece<A>(wsrc[g] + n * rbw + (kk / T::QK) * T::BYTES,
                               (int)((kk % T::QK) / T::PL), v);
        } else {
#pragma unroll
          for (int q = 0; q < T::PL; q++) v[q] = 0.0f;
        }
#pragma unroll
        for (int q = 0; q < T::PL; q++) ws[g][nr][pp * T::PL + q] = __float2half_rn(v[q]);
      }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < MM_BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a[2];
#pragma unroll
      for (int i = 0; i < 2; i++) wmma::load_matrix_sync(a[i], &xs[wm * 32 + i * 16][kk], MM_LDH);
#pragma unroll
      for (int g = 0; g < NW; g++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;
          wmma::load_matrix_sync(b, &ws[g][wn * 32 + j * 16][kk], MM_LDH);
#pragma unroll
          for (int i = 0; i < 2; i++) wmma::mma_sync(acc[g][i][j], a[i], b, acc[g][i][j]);
        }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) {
      if constexpr (GATED) // same fragment type: element t of gate and up is one position
        for (int t = 0; t < acc[0][i][j].num_elements; t++)
          acc[0][i][j].x[t] = silu_mul(acc[0][i][j].x[t], acc[1][i][j].x[t]);
      wmma::store_matrix_sync(&stage[wm * 32 + i * 16][wn * 32 + j * 16], acc[0][i][j], MM_LDF,
                              wmma::mem_row_major);
    }
  __syncthreads();
  for (int e = tid; e < MM_BM * MM_BN; e += MM_THREADS) {
    const int r = e / MM_BN, c = e % MM_BN;
    if (r < it.cnt && n0 + c < N) out[((int64_t)it.r0 + r) * ldo + n0 + c] = stage[r][c];
  }
}

template <class T, bool GATED>
int launch_mma(const mm_items &L, int count, int64_t N, int64_t K, int64_t rbw, const float *x,
               int64_t ldx, const int32_t *rows, float *out, int64_t ldo, cudaStream_t s) {
  bool al = rbw % T::ALIGN == 0;
  for (int i = 0; i < count; i++)
    al = al && (uintptr_t)L.it[i].w0 % T::ALIGN == 0 &&
         (!GATED || (uintptr_t)L.it[i].w1 % T::ALIGN == 0);
  const dim3 grid((unsigned)count, (unsigned)((N + MM_BN - 1) / MM_BN));
  if (al)
    k_moe_mma<T, T::ALIGN, GATED><<<grid, MM_THREADS, 0, s>>>(L, N, K, rbw, x, ldx, rows, out, ldo);
  else
    k_moe_mma<T, 1, GATED><<<grid, MM_THREADS, 0, s>>>(L, N, K, rbw, x, ldx, rows, out, ldo);
  CUDA_CHECK_LAUNCH("moe mma");
  return 0;
}

int mma_type(enum ferry_type t, bool gated, const mm_items &L, int count, int64_t N, int64_t K,
             int64_t rbw, const float *x, int64_t ldx, const int32_t *rows, float *out, int64_t ldo,
             cudaStream_t s) {
  switch (t) {
#define G(FT, T)                                                                       \
  case FT:                                                                             \
    return gated ? launch_mma<T, true>(L, count, N, K, rbw, x, ldx, rows, out, ldo, s) \
                 : launch_mma<T, false>(L, count, N, K, rbw, x, ldx, rows, out, ldo, s);
    FQ_TYPES(G)
#undef G
    default: return ferry_fail(-EINVAL, "cuda moe: type %d not supported", (int)t);
  }
}

// Whether the grouped tensor-core path takes these groups: FAST, gate and up of one type,
// both products' K a multiple of its 32-column step.
// FERRY_CUDA_NO_MMA=1 turns the grouped tensor-core path off (diagnosis, A/B timing).
bool mma_ok(enum ferry_prec prec, const struct ferry_moe_shape *sh) {
  static int off = -1;
  if (off < 0) {
    const char *e = getenv("FERRY_CUDA_NO_MMA");
    off = e && *e && strcmp(e, "0") != 0;
  }
  // F32 and BF16 experts stay in F32 as the dense products do (gemm_dtype): the fast path
  // rounds activations to F16 only where the weights are quantized anyway
  return !off && prec == FERRY_PREC_FAST && sh->t_gate == sh->t_up && sh->d % MM_BK == 0 &&
         sh->ff % MM_BK == 0 && gemm_dtype(prec, sh->t_gate) == DT_HALF &&
         gemm_dtype(prec, sh->t_down) == DT_HALF;
}

// The GEMM-sized groups of g through k_moe_mma: h = swiglu rows, then y rows.
int moe_groups_mma(const struct ferry_moe_shape *sh, const float *x, const int32_t *rows,
                   int n_group, const struct ferry_moe_group *g, float *h, float *y,
                   cudaStream_t s) {
  const int64_t d = sh->d, ff = sh->ff;
  const int64_t rb_gu = cuda_row_bytes(sh->t_gate, d), rb_d = cuda_row_bytes(sh->t_down, ff);
  for (int pass = 0; pass < 2; pass++) { // 0: gate + up -> h, 1: down -> y
    mm_items L;
    int n = 0, rc = 0;
    for (int gi = 0; gi <= n_group; gi++) {
      const bool last = gi == n_group;
      if (!last && g[gi].cnt < GEMM_MIN_ROWS) continue;
      for (int32_t m0 = 0; !last && m0 < g[gi].cnt; m0 += MM_BM) {
        mm_item &it = L.it[n++];
        it.w0 = (const uint8_t *)g[gi].w[pass ? 2 : 0];
        it.w1 = pass ? NULL : (const uint8_t *)g[gi].w[1];
        it.r0 = g[gi].off + m0;
        it.cnt = g[gi].cnt - m0 < MM_BM ? g[gi].cnt - m0 : MM_BM;
        if (n == MM_ITEMS) {
          rc = pass ? mma_type(sh->t_down, false, L, n, d, ff, rb_d, h, ff, NULL, y, d, s)
                    : mma_type(sh->t_gate, true, L, n, ff, d, rb_gu, x, d, rows, h, ff, s);
          if (rc) return rc;
          n = 0;
        }
      }
      if (last && n) {
        rc = pass ? mma_type(sh->t_down, false, L, n, d, ff, rb_d, h, ff, NULL, y, d, s)
                  : mma_type(sh->t_gate, true, L, n, ff, d, rb_gu, x, d, rows, h, ff, s);
        if (rc) return rc;
      }
    }
  }
  return 0;
}

// ---- launches of the per-pair path ----

struct moe_dims {
  int64_t d, ff, rb_g, rb_u, rb_d;
};

template <class T, class SRC>
int launch_gate_up(const SRC &src, bool aligned, int count, const moe_dims &m, const float *x,
                   float *h, cudaStream_t s) {
  const dim3 grid((unsigned)((m.ff + MOE_WARPS - 1) / MOE_WARPS), (unsigned)count);
  if (aligned)
    k_moe_gate_up<T, wide_a<T>, SRC><<<grid, MOE_WARPS * 32, 0, s>>>(src, m.ff, m.d, m.rb_g, x, h);
  else
    k_moe_gate_up<T, 1, SRC><<<grid, MOE_WARPS * 32, 0, s>>>(src, m.ff, m.d, m.rb_g, x, h);
  CUDA_CHECK_LAUNCH("moe gate_up");
  return 0;
}

template <class T, class SRC>
int launch_one(const SRC &src, bool aligned, int which, int count, const moe_dims &m,
               const float *x, float *out, cudaStream_t s) {
  const dim3 grid((unsigned)((m.ff + MOE_WARPS - 1) / MOE_WARPS), (unsigned)count);
  const int64_t rb = which == 0 ? m.rb_g : m.rb_u;
  if (aligned)
    k_moe_one<T, wide_a<T>, SRC><<<grid, MOE_WARPS * 32, 0, s>>>(src, which, m.ff, m.d, rb, x, out);
  else
    k_moe_one<T, 1, SRC><<<grid, MOE_WARPS * 32, 0, s>>>(src, which, m.ff, m.d, rb, x, out);
  CUDA_CHECK_LAUNCH("moe gate/up");
  return 0;
}

template <class T, class SRC>
int launch_down(const SRC &src, bool aligned, int count, const moe_dims &m, const float *h,
                float *y, cudaStream_t s) {
  const dim3 grid((unsigned)((m.d + MOE_WARPS - 1) / MOE_WARPS), (unsigned)count);
  if (aligned)
    k_moe_down<T, wide_a<T>, SRC><<<grid, MOE_WARPS * 32, 0, s>>>(src, m.d, m.ff, m.rb_d, h, y);
  else
    k_moe_down<T, 1, SRC><<<grid, MOE_WARPS * 32, 0, s>>>(src, m.d, m.ff, m.rb_d, h, y);
  CUDA_CHECK_LAUNCH("moe down");
  return 0;
}

// Whether every weight pointer in ptrs (count of them, rows of rb bytes) and the
// activations (rows of n at x) allow type t's wide loads.
template <class T>
bool all_wide(const uint8_t *const *ptrs, int count, int64_t rb, int64_t n, const float *x) {
  for (int i = 0; i < count; i++)
    if (mv_align<T>(ptrs[i], rb, n, x, n) <= 1) return false;
  return true;
}

// Runs the per-pair path for `count` items of src: h = swiglu rows, y = output rows.
// aligned_*: whether the gate/up and the down weights allow wide loads for every item.
template <class SRC>
int per_pair(const SRC &src, int count, const struct ferry_moe_shape *sh, const moe_dims &m,
             bool aligned_gu_g, bool aligned_gu_u, bool aligned_d, const float *x, float *h,
             float *gbuf, float *y, cudaStream_t s) {
  int rc = 0;
  if (sh->t_gate == sh->t_up) {
    const bool al = aligned_gu_g && aligned_gu_u;
    switch (sh->t_gate) {
#define G(FT, T) \
  case FT: rc = launch_gate_up<T>(src, al, count, m, x, h, s); break;
      FQ_TYPES(G)
#undef G
      default: return ferry_fail(-EINVAL, "cuda moe: gate type %d not supported", (int)sh->t_gate);
    }
  } else { // gate into gbuf, up into h, then h = swiglu(gbuf, h)
    for (int which = 0; which < 2 && !rc; which++) {
      const enum ferry_type t = which ? sh->t_up : sh->t_gate;
      const bool al = which ? aligned_gu_u : aligned_gu_g;
      float *out = which ? h : gbuf;
      switch (t) {
#define G(FT, T) \
  case FT: rc = launch_one<T>(src, al, which, count, m, x, out, s); break;
        FQ_TYPES(G)
#undef G
        default: return ferry_fail(-EINVAL, "cuda moe: type %d not supported", (int)t);
      }
    }
    if (rc) return rc;
    k_moe_swiglu_items<SRC>
        <<<dim3(grid_for(m.ff, 256), (unsigned)count), 256, 0, s>>>(src, m.ff, gbuf, h, h);
    CUDA_CHECK_LAUNCH("moe swiglu");
  }
  if (rc) return rc;
  switch (sh->t_down) {
#define G(FT, T) \
  case FT: return launch_down<T>(src, aligned_d, count, m, h, y, s);
    FQ_TYPES(G)
#undef G
    default: return ferry_fail(-EINVAL, "cuda moe: down type %d not supported", (int)sh->t_down);
  }
}

bool type_wide_ok(enum ferry_type t, const uint8_t *const *ptrs, int count, int64_t rb, int64_t n,
                  const float *x) {
  switch (t) {
#define G(FT, T) \
  case FT: return all_wide<T>(ptrs, count, rb, n, x);
    FQ_TYPES(G)
#undef G
    default: return false;
  }
}

int check_shape(const struct cuda_ctx *ctx, const struct ferry_moe_shape *sh, int64_t pairs,
                const char *what) {
  int rc;
  if ((rc = cuda_check_weight(sh->t_gate, sh->d, what)) ||
      (rc = cuda_check_weight(sh->t_up, sh->d, what)) ||
      (rc = cuda_check_weight(sh->t_down, sh->ff, what)))
    return rc;
  const struct cuda_scratch *sc = &ctx->sc;
  if (sc->pairs <= 0 || pairs > sc->pairs || sh->d > sc->lim.moe_d || sh->ff > sc->lim.moe_ff)
    return ferry_fail(-EINVAL,
                      "cuda %s: %lld pairs of %lld x %lld experts exceed the reserved scratch "
                      "(call reserve with larger limits)",
                      what, (long long)pairs, (long long)sh->ff, (long long)sh->d);
  return 0;
}

// The moe_ffn body (also moe_ffn_ids' grouped path); shape already checked.
int moe_groups(struct cuda_ctx *ctx, enum ferry_prec prec, const struct ferry_moe_shape *sh,
               const float *x, const int32_t *rows, int n_group, const struct ferry_moe_group *g,
               float *y, cudaStream_t s) {
  const struct cuda_scratch *sc = &ctx->sc;
  const moe_dims m = {sh->d, sh->ff, cuda_row_bytes(sh->t_gate, sh->d),
                      cuda_row_bytes(sh->t_up, sh->d), cuda_row_bytes(sh->t_down, sh->ff)};
  int rc;
  // small groups: per pair, up to MOE_ITEMS pairs per launch
  src_list L;
  L.rows = rows;
  int n = 0;
  auto flush = [&]() -> int {
    const bool ag = type_wide_ok(sh->t_gate, L.w[0], n, m.rb_g, m.d, x);
    const bool au = type_wide_ok(sh->t_up, L.w[1], n, m.rb_u, m.d, x);
    const bool ad = type_wide_ok(sh->t_down, L.w[2], n, m.rb_d, m.ff, sc->moe_h);
    const int r = per_pair(L, n, sh, m, ag, au, ad, x, sc->moe_h, sc->moe_gu, y, s);
    n = 0;
    return r;
  };
  for (int gi = 0; gi < n_group; gi++) {
    if (g[gi].cnt <= 0 || g[gi].cnt >= GEMM_MIN_ROWS) continue;
    if (n + g[gi].cnt > MOE_ITEMS && (rc = flush())) return rc;
    for (int32_t r = g[gi].off; r < g[gi].off + g[gi].cnt; r++) {
      for (int q = 0; q < 3; q++) L.w[q][n] = (const uint8_t *)g[gi].w[q];
      L.row[n++] = r;
    }
  }
  if (n && (rc = flush())) return rc;
  // large groups: the grouped tensor-core product (FAST), else tiles and cuBLAS
  if (mma_ok(prec, sh)) return moe_groups_mma(sh, x, rows, n_group, g, sc->moe_h, y, s);
  const int dt = gemm_dtype(prec, sh->t_gate) == DT_HALF && gemm_dtype(prec, sh->t_up) == DT_HALF &&
                         gemm_dtype(prec, sh->t_down) == DT_HALF
                     ? DT_HALF
                     : DT_FLOAT;
  const size_t esz = dt == DT_HALF ? 2 : 4;
  const int64_t d = sh->d, ff = sh->ff;
  for (int gi = 0; gi < n_group; gi++) {
    const int64_t r0 = g[gi].off, cnt = g[gi].cnt;
    if (cnt < GEMM_MIN_ROWS) continue;
    if (!sc->moe_xg || !sc->wtile || (size_t)(2 * ff * d) * esz > sc->wtile_bytes)
      return ferry_fail(-EINVAL,
                        "cuda moe_ffn: a group of %lld pairs needs the GEMM scratch (call "
                        "reserve with max_tok >= %lld)",
                        (long long)cnt, (long long)GEMM_MIN_ROWS);
    uint8_t *xg = (uint8_t *)sc->moe_xg + (size_t)r0 * d * esz;
    uint8_t *hc = (uint8_t *)sc->moe_hc + (size_t)r0 * ff * esz;
    float *gu = sc->moe_gu + r0 * 2 * ff;
    uint8_t *tile = (uint8_t *)sc->wtile;
    if ((rc = cuda_gather_rows(dt, x, d, rows + r0, cnt, d, xg, s)) ||
        (rc = cuda_dequant_to(sh->t_gate, g[gi].w[0], tile, dt, ff * d, s)) ||
        (rc = cuda_dequant_to(sh->t_up, g[gi].w[1], tile + (size_t)ff * d * esz, dt, ff * d, s)) ||
        (rc = cuda_gemm(ctx, dt, tile, 2 * ff, d, xg, d, cnt, gu, 2 * ff, s)))
      return rc;
    if (dt == DT_HALF)
      k_swiglu_rows<__half><<<grid_for(cnt * ff, 256), 256, 0, s>>>(gu, cnt, ff, (__half *)hc);
    else
      k_swiglu_rows<float><<<grid_for(cnt * ff, 256), 256, 0, s>>>(gu, cnt, ff, (float *)hc);
    CUDA_CHECK_LAUNCH("moe swiglu rows");
    if ((rc = cuda_dequant_to(sh->t_down, g[gi].w[2], tile, dt, d * ff, s)) ||
        (rc = cuda_gemm(ctx, dt, tile, d, ff, hc, ff, cnt, y + r0 * d, d, s)))
      return rc;
  }
  return 0;
}

} // namespace

extern "C" int cuda_moe_ffn(struct cuda_ctx *ctx, enum ferry_prec prec,
                            const struct ferry_moe_shape *sh, const float *x, int64_t n_tok,
                            const int32_t *rows, int n_group, const struct ferry_moe_group *g,
                            float *y, void *stream) {
  int64_t pairs = 0;
  if (n_group < 0 || n_tok < 0) return ferry_fail(-EINVAL, "cuda moe_ffn: bad sizes");
  for (int i = 0; i < n_group; i++) {
    if (g[i].off < 0 || g[i].cnt < 0) return ferry_fail(-EINVAL, "cuda moe_ffn: bad group");
    if (g[i].off + g[i].cnt > pairs) pairs = g[i].off + g[i].cnt;
  }
  int rc = check_shape(ctx, sh, pairs, "moe_ffn");
  if (rc) return rc;
  if (pairs == 0) return 0;
  return moe_groups(ctx, prec, sh, x, rows, n_group, g, y, (cudaStream_t)stream);
}

extern "C" int cuda_moe_ffn_ids(struct cuda_ctx *ctx, enum ferry_prec prec,
                                const struct ferry_moe_shape *sh, const struct ferry_moe_table *tab,
                                const float *x, int64_t n_tok, int64_t k, const int32_t *ids,
                                float *y, int32_t *map, void *stream) {
  if (n_tok < 0 || k <= 0 || tab->n_expert <= 0)
    return ferry_fail(-EINVAL, "cuda moe_ffn_ids: bad sizes");
  const int64_t P = n_tok * k, E = tab->n_expert;
  int rc = check_shape(ctx, sh, P, "moe_ffn_ids");
  if (rc) return rc;
  if (P == 0) return 0;
  cudaStream_t s = (cudaStream_t)stream;
  struct cuda_scratch *sc = &ctx->sc;
  if (n_tok < GEMM_MIN_ROWS) {
    // Every expert has fewer than GEMM_MIN_ROWS tokens here: the per-pair path, as
    // moe_ffn runs such groups, straight from the device ids.
    const moe_dims m = {sh->d, sh->ff, cuda_row_bytes(sh->t_gate, sh->d),
                        cuda_row_bytes(sh->t_up, sh->d), cuda_row_bytes(sh->t_down, sh->ff)};
    src_ids S;
    for (int q = 0; q < 3; q++) {
      S.base[q] = (const uint8_t *)tab->base[q];
      S.stride[q] = tab->stride[q];
    }
    S.ids = ids;
    S.k = k;
    S.map = map;
    // wide loads when the first expert and the stride keep every expert aligned
    const uint8_t *p0[3] = {S.base[0], S.base[1], S.base[2]};
    const uint8_t *p1[3] = {S.base[0] + S.stride[0], S.base[1] + S.stride[1],
                            S.base[2] + S.stride[2]};
    const uint8_t *pg[2] = {p0[0], p1[0]}, *pu[2] = {p0[1], p1[1]}, *pd[2] = {p0[2], p1[2]};
    const bool ag = type_wide_ok(sh->t_gate, pg, 2, m.rb_g, m.d, x);
    const bool au = type_wide_ok(sh->t_up, pu, 2, m.rb_u, m.d, x);
    const bool ad = type_wide_ok(sh->t_down, pd, 2, m.rb_d, m.ff, sc->moe_h);
    return per_pair(S, (int)P, sh, m, ag, au, ad, x, sc->moe_h, sc->moe_gu, y, s);
  }
  rc = cuda_stream_capturing(stream);
  if (rc < 0) return rc;
  if (rc)
    return ferry_fail(-EINVAL,
                      "cuda moe_ffn_ids: %lld tokens need the ids on the host, which a graph "
                      "capture cannot wait for (capture decode steps of fewer than %lld tokens)",
                      (long long)n_tok, (long long)GEMM_MIN_ROWS);
  if (E > sc->lim.moe_n_expert)
    return ferry_fail(-EINVAL, "cuda moe_ffn_ids: %lld experts exceed the reserved %lld",
                      (long long)E, (long long)sc->lim.moe_n_expert);
  CUDA_CHECK(cudaMemcpyAsync(sc->h_ids, ids, (size_t)P * 4, cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
  // Counting sort by expert, token order inside a group (as the CPU backend groups).
  int32_t *cnt = sc->h_cnt, *off = sc->h_off;
  memset(cnt, 0, (size_t)(E + 1) * sizeof(int32_t));
  for (int64_t p = 0; p < P; p++) {
    if (sc->h_ids[p] < 0 || sc->h_ids[p] >= E)
      return ferry_fail(-EINVAL, "cuda moe_ffn_ids: expert id %d out of range", sc->h_ids[p]);
    cnt[sc->h_ids[p]]++;
  }
  int n_group = 0;
  for (int64_t e = 0, acc = 0; e < E; e++) {
    off[e] = (int32_t)acc;
    if (cnt[e]) {
      struct ferry_moe_group *gr = &sc->h_groups[n_group++];
      for (int q = 0; q < 3; q++) gr->w[q] = (const uint8_t *)tab->base[q] + e * tab->stride[q];
      gr->off = (int32_t)acc;
      gr->cnt = cnt[e];
    }
    acc += cnt[e];
    cnt[e] = 0;
  }
  for (int64_t p = 0; p < P; p++) {
    const int32_t e = sc->h_ids[p], r = off[e] + cnt[e]++;
    sc->h_rows[r] = (int32_t)(p / k);
    sc->h_map[p] = r;
  }
  CUDA_CHECK(cudaMemcpyAsync(sc->moe_rows, sc->h_rows, (size_t)P * 4, cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(map, sc->h_map, (size_t)P * 4, cudaMemcpyHostToDevice, s));
  return moe_groups(ctx, prec, sh, x, sc->moe_rows, n_group, sc->h_groups, y, s);
}

extern "C" int cuda_moe_combine(float *y, const float *slots, const int32_t *map, const float *w,
                                int64_t n_tok, int64_t k, int64_t d, void *stream) {
  if (n_tok < 0 || k <= 0 || d <= 0) return ferry_fail(-EINVAL, "cuda moe_combine: bad sizes");
  if (n_tok == 0) return 0;
  k_moe_combine<<<grid_for(n_tok * d, 256), 256, 0, (cudaStream_t)stream>>>(y, slots, map, w, n_tok,
                                                                            k, d);
  CUDA_CHECK_LAUNCH("moe_combine");
  return 0;
}
