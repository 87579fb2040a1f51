// kernels/cpu/deltanet.c: Gated DeltaNet CPU kernels (see deltanet.h for the contract).
//
// The recurrence is L2/L1-bound (the state of one v-head is dk*dv floats, 64 KiB at the
// real shape), so each v-head runs all its tokens while its state is hot, with the value
// dim tiled into register accumulators (two passes over S per token: retrieve, then
// update + output). The chunked WY form turns the same work into small matrix products
// (see the comment above DN_FN(gemm_tile)).
//
// The vector part (second half of this file) is written once with GCC vector extensions
// and compiled once per ISA by including this file into itself: 4-float vectors with the
// baseline ISA (SSE2 / NEON, so the default build stays portable) and, on x86-64,
// 8-float vectors with AVX2+FMA and 16-float vectors with AVX-512F. dn_level() picks one
// at run time by CPU features. (target_clones("arch=haswell") would test the CPU model,
// not its features, and miss AMD parts; one vector width for all would spill the
// baseline one to memory.)
#ifndef DN_VW // ===================== scalar part, API, dispatch =====================
#include "kernels/cpu/deltanet.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "base/base.h"
#include "numa/pool.h"

#define DN_INLINE     static inline __attribute__((always_inline))
#define DN_CAT2(a, b) a##_##b
#define DN_CAT(a, b)  DN_CAT2(a, b)
#define DN_FN(name)   DN_CAT(name, DN_SUF)

static inline float silu_f(float x) { return x / (1.0f + expf(-x)); }

// ---------------------------------------------------------------------------------------
// conv1d
// ---------------------------------------------------------------------------------------

#define DN_MAX_CONV_K 16

// ---------------------------------------------------------------------------------------
// norms and gates
// ---------------------------------------------------------------------------------------

void cpu_l2norm_heads(float *x, int64_t n_heads, int64_t d, float eps, float scale) {
  FERRY_ASSERT(n_heads >= 0 && d > 0);
  for (int64_t h = 0; h < n_heads; h++) {
    float *xh = x + h * d;
    double ss = 0.0;
    for (int64_t i = 0; i < d; i++) ss += (double)xh[i] * xh[i];
    float f = (float)((double)scale / sqrt(ss + (double)eps));
    for (int64_t i = 0; i < d; i++) xh[i] *= f;
  }
}

static inline float softplus_f(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

void cpu_delta_gates(float *beta, float *g, float *decay, const float *b, const float *a,
                     const float *ssm_a, const float *dt_bias, int64_t T, int64_t Hv) {
  FERRY_ASSERT(T >= 0 && Hv > 0);
  for (int64_t t = 0; t < T; t++) {
    for (int64_t h = 0; h < Hv; h++) {
      int64_t i = t * Hv + h;
      beta[i] = 1.0f / (1.0f + expf(-b[i]));
      float gi = ssm_a[h] * softplus_f(a[i] + dt_bias[h]);
      if (g) g[i] = gi;
      if (decay) decay[i] = expf(gi);
    }
  }
}

// ---------------------------------------------------------------------------------------
// legacy regrouping
// ---------------------------------------------------------------------------------------

void cpu_ssm_in_regroup(float *qkv, float *z, const float *p, int64_t T, int64_t nk, int64_t nv,
                        int64_t dk, int64_t dv) {
  FERRY_ASSERT(nk > 0 && nv > 0 && nv % nk == 0 && dk > 0 && dv > 0 && T >= 0);
  const int64_t r = nv / nk, grp = 2 * dk + 2 * r * dv;
  const int64_t in_row = nk * grp, qkv_row = 2 * nk * dk + nv * dv, z_row = nv * dv;
  const size_t kb = (size_t)dk * sizeof(float), vb = (size_t)(r * dv) * sizeof(float);
  for (int64_t t = 0; t < T; t++) {
    const float *pt = p + t * in_row;
    float *qt = qkv + t * qkv_row, *zt = z + t * z_row;
    for (int64_t g = 0; g < nk; g++) {
      const float *src = pt + g * grp;
      memcpy(qt + g * dk, src, kb);                            // q_g
      memcpy(qt + nk * dk + g * dk, src + dk, kb);             // k_g
      memcpy(qt + 2 * nk * dk + g * r * dv, src + 2 * dk, vb); // v_{g r .. g r + r-1}
      memcpy(zt + g * r * dv, src + 2 * dk + r * dv, vb);      // z_{g r .. g r + r-1}
    }
  }
}

void cpu_ssm_ba_regroup(float *b, float *a, const float *p, int64_t T, int64_t nk, int64_t nv) {
  FERRY_ASSERT(nk > 0 && nv > 0 && nv % nk == 0 && T >= 0);
  const int64_t r = nv / nk;
  for (int64_t t = 0; t < T; t++) {
    const float *pt = p + t * 2 * nv;
    for (int64_t g = 0; g < nk; g++) {
      for (int64_t i = 0; i < r; i++) {
        b[t * nv + g * r + i] = pt[g * 2 * r + i];
        a[t * nv + g * r + i] = pt[g * 2 * r + r + i];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// recurrent delta rule and chunked form: shared definitions
// ---------------------------------------------------------------------------------------

struct dn_args {
  float *o;
  int64_t ldo;
  float *S;
  const float *q, *k, *v;
  int64_t ldq, ldk, ldv;
  const float *beta, *gd; // gd: decay (recurrent) or g (chunked)
  int64_t T, Hk, Hv, dk, dv, chunk;
  float *scratch; // chunked: one slice of scratch_floats per worker
  int64_t scratch_floats;
};

// Triangular shortcuts for the L x L products of a chunk:
//   GEMM_LOWER_OUT: only tiles touching the lower triangle (incl. diagonal) of C are
//                   computed; the rest of C is left as it was (the caller masks it).
//   GEMM_LOWER_A:   A is lower triangular (incl. diagonal): row m sums kk <= m only.
enum { GEMM_FULL = 0, GEMM_LOWER_OUT = 1, GEMM_LOWER_A = 2 };

// Scratch layout per worker, with Cm = the chunk size:
//   KT [dk x Cm]  keys of the chunk, transposed (B operand of Q K^T and K K^T)
//   QK [Cm x Cm]  Q K^T, then masked and decayed
//   A  [Cm x Cm]  K K^T, then the strictly lower beta_t Gam_ts (k_t.k_s)
//   D  [Cm x dv]  K S0, then the right-hand side, then the deltas
//   eg [Cm], G [Cm] (doubles, 2 floats each)
static int64_t chunk_g_offset(int64_t Cm, int64_t dk, int64_t dv) {
  return (dk * Cm + 2 * Cm * Cm + Cm * dv + Cm + 1) / 2 * 2; // G (doubles) 8-byte aligned
}
static int64_t chunk_scratch_floats(int64_t Cm, int64_t dk, int64_t dv) {
  int64_t n = chunk_g_offset(Cm, dk, dv) + 2 * Cm;
  return (n + 15) / 16 * 16; // keep every worker's slice 64-byte aligned
}

// ---- the vector bodies, once per ISA ----
#define DN_VW  4
#define DN_MR  4
#define DN_SUF base
#define DN_TARGET
#include "kernels/cpu/deltanet.c"
#undef DN_VW
#undef DN_MR
#undef DN_SUF
#undef DN_TARGET

#if defined(__x86_64__) && defined(__GNUC__)
#define DN_VW     8
#define DN_MR     4
#define DN_SUF    avx2
#define DN_TARGET __attribute__((target("avx2,fma")))
#include "kernels/cpu/deltanet.c"
#undef DN_VW
#undef DN_MR
#undef DN_SUF
#undef DN_TARGET

#define DN_VW     16
#define DN_MR     8
#define DN_SUF    avx512
#define DN_TARGET __attribute__((target("avx512f,avx2,fma")))
#include "kernels/cpu/deltanet.c"
#undef DN_VW
#undef DN_MR
#undef DN_SUF
#undef DN_TARGET

static int dn_cpu_avx512(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
         __builtin_cpu_supports("fma");
}
static int dn_cpu_avx2(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static int dn_cpu_avx2(void) { return 0; }
static int dn_cpu_avx512(void) { return 0; }
#endif

// -1: not decided yet; 0: baseline; 1: AVX2+FMA; 2: AVX-512F. Set on first use (a benign race: every
// thread computes the same value) or by cpu_delta_force.
static int g_dn_level = -1;
static int dn_level(void) {
  int l = __atomic_load_n(&g_dn_level, __ATOMIC_RELAXED);
  if (l < 0) {
    l = dn_cpu_avx512() ? 2 : dn_cpu_avx2();
    __atomic_store_n(&g_dn_level, l, __ATOMIC_RELAXED);
  }
  return l;
}

int cpu_delta_force(const char *path) {
  int l;
  if (!strcmp(path, "base"))
    l = 0;
  else if (!strcmp(path, "avx2"))
    l = dn_cpu_avx2() ? 1 : -1;
  else if (!strcmp(path, "avx512"))
    l = dn_cpu_avx512() ? 2 : -1;
  else if (!strcmp(path, "auto"))
    l = dn_cpu_avx512() ? 2 : dn_cpu_avx2();
  else
    l = -1;
  if (l < 0) return -1;
  __atomic_store_n(&g_dn_level, l, __ATOMIC_RELAXED);
  return 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define DN_PICK(name) \
  (dn_level() == 2 ? name##_avx512 : dn_level() == 1 ? name##_avx2 : name##_base)
#else
#define DN_PICK(name) name##_base
#endif

// ---------------------------------------------------------------------------------------
// conv1d and gated RMSNorm (vector bodies below)
// ---------------------------------------------------------------------------------------

void cpu_ssm_conv_step(float *y, float *state, const float *u, const float *w, int64_t C, int64_t K,
                       int apply_silu) {
  FERRY_ASSERT(C > 0 && K >= 1 && K <= DN_MAX_CONV_K);
  DN_PICK(conv_step)(y, state, u, w, C, K, apply_silu);
}

// Channels are split over the pool in groups of DN_CONV_GROUP, a multiple of every
// ISA's block (DN_CB = 8 vectors: 32, 64 or 128 floats).
#define DN_CONV_GROUP 128
struct dn_conv_args {
  float *y;
  const float *state, *u, *w;
  int64_t T, C, K;
  int act;
};
static void conv_task(void *ctx, int64_t g0, int64_t g1, int tid) {
  const struct dn_conv_args *a = ctx;
  int64_t ce = g1 * DN_CONV_GROUP < a->C ? g1 * DN_CONV_GROUP : a->C;
  DN_PICK(conv_rows)(a->y, a->state, a->u, a->w, a->T, a->C, a->K, a->act, g0 * DN_CONV_GROUP, ce);
}

void cpu_ssm_conv_rows_mt(struct ferry_pool *pool, float *y, float *state, const float *u,
                          const float *w, int64_t T, int64_t C, int64_t K, int apply_silu) {
  FERRY_ASSERT(C > 0 && K >= 1 && K <= DN_MAX_CONV_K && T >= 0);
  if (T == 0) return;
  struct dn_conv_args a = {
      .y = y, .state = state, .u = u, .w = w, .T = T, .C = C, .K = K, .act = apply_silu};
  const int64_t ng = (C + DN_CONV_GROUP - 1) / DN_CONV_GROUP;
  if (pool)
    ferry_pool_run(pool, ng, 1, conv_task, &a);
  else
    conv_task(&a, 0, ng, 0);
  const int64_t P = K - 1; // new state: the last P rows of [state, u]
  if (P == 0) return;
  if (T >= P) {
    memcpy(state, u + (T - P) * C, (size_t)(P * C) * sizeof(float));
  } else {
    memmove(state, state + T * C, (size_t)((P - T) * C) * sizeof(float));
    memcpy(state + (P - T) * C, u, (size_t)(T * C) * sizeof(float));
  }
}

void cpu_ssm_conv_rows(float *y, float *state, const float *u, const float *w, int64_t T, int64_t C,
                       int64_t K, int apply_silu) {
  cpu_ssm_conv_rows_mt(NULL, y, state, u, w, T, C, K, apply_silu);
}

struct dn_norm_args {
  float *y;
  const float *o, *z, *w;
  int64_t d;
  float eps;
};
static void norm_task(void *ctx, int64_t h0, int64_t h1, int tid) {
  const struct dn_norm_args *a = ctx;
  DN_PICK(gated_rmsnorm)(a->y, a->o, a->z, a->w, h0, h1, a->d, a->eps);
}

void cpu_gated_rmsnorm_heads_mt(struct ferry_pool *pool, float *y, const float *o, const float *z,
                                const float *w, int64_t n_heads, int64_t d, float eps) {
  FERRY_ASSERT(n_heads >= 0 && d > 0);
  struct dn_norm_args a = {.y = y, .o = o, .z = z, .w = w, .d = d, .eps = eps};
  if (pool)
    ferry_pool_run(pool, n_heads, 16, norm_task, &a);
  else
    norm_task(&a, 0, n_heads, 0);
}

void cpu_gated_rmsnorm_heads(float *y, const float *o, const float *z, const float *w,
                             int64_t n_heads, int64_t d, float eps) {
  cpu_gated_rmsnorm_heads_mt(NULL, y, o, z, w, n_heads, d, eps);
}

// ---------------------------------------------------------------------------------------
// delta rule entry points
// ---------------------------------------------------------------------------------------

static void check_shape(int64_t Hk, int64_t Hv, int64_t dk, int64_t dv) {
  FERRY_ASSERT(Hk > 0 && Hv > 0 && Hv % Hk == 0);
  FERRY_ASSERT(dk > 0 && dv > 0 && dk <= CPU_DELTA_MAX_HEAD_DIM && dv <= CPU_DELTA_MAX_HEAD_DIM);
}

static void run_heads(struct ferry_pool *pool, int64_t Hv, ferry_pool_fn fn, void *ctx) {
  if (pool)
    ferry_pool_run(pool, Hv, 1, fn, ctx);
  else
    fn(ctx, 0, Hv, 0);
}

void cpu_delta_recurrent(struct ferry_pool *pool, float *o, int64_t ldo, float *S, const float *q,
                         int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                         const float *beta, const float *decay, int64_t T, int64_t Hk, int64_t Hv,
                         int64_t dk, int64_t dv) {
  check_shape(Hk, Hv, dk, dv);
  FERRY_ASSERT(T >= 0 && ldo >= Hv * dv && ldq >= Hk * dk && ldk >= Hk * dk && ldv >= Hv * dv);
  if (T == 0) return;
  struct dn_args a = {.o = o,
                      .ldo = ldo,
                      .S = S,
                      .q = q,
                      .k = k,
                      .v = v,
                      .ldq = ldq,
                      .ldk = ldk,
                      .ldv = ldv,
                      .beta = beta,
                      .gd = decay,
                      .T = T,
                      .Hk = Hk,
                      .Hv = Hv,
                      .dk = dk,
                      .dv = dv};
  run_heads(pool, Hv, DN_PICK(recurrent_heads), &a);
}

void cpu_delta_step(float *o, float *S, const float *q, const float *k, const float *v,
                    const float *beta, const float *decay, int64_t Hk, int64_t Hv, int64_t dk,
                    int64_t dv) {
  cpu_delta_recurrent(NULL, o, Hv * dv, S, q, Hk * dk, k, Hk * dk, v, Hv * dv, beta, decay, 1, Hk,
                      Hv, dk, dv);
}

void cpu_delta_step_mt(struct ferry_pool *pool, float *o, float *S, const float *q, const float *k,
                       const float *v, const float *beta, const float *decay, int64_t Hk,
                       int64_t Hv, int64_t dk, int64_t dv) {
  cpu_delta_recurrent(pool, o, Hv * dv, S, q, Hk * dk, k, Hk * dk, v, Hv * dv, beta, decay, 1, Hk,
                      Hv, dk, dv);
}

size_t cpu_delta_chunk_scratch_floats(int64_t chunk, int64_t dk, int64_t dv) {
  return (size_t)chunk_scratch_floats(chunk, dk, dv);
}

void cpu_delta_chunked_ws(struct ferry_pool *pool, float *o, int64_t ldo, float *S, const float *q,
                          int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                          const float *beta, const float *g, int64_t T, int64_t Hk, int64_t Hv,
                          int64_t dk, int64_t dv, int64_t chunk, float *scratch) {
  check_shape(Hk, Hv, dk, dv);
  FERRY_ASSERT(T >= 0 && chunk >= 1 && chunk <= 256 && ldo >= Hv * dv && ldq >= Hk * dk &&
               ldk >= Hk * dk && ldv >= Hv * dv);
  if (T == 0) return;
  const int64_t Cm = T < chunk ? T : chunk;
  struct dn_args a = {.o = o,
                      .ldo = ldo,
                      .S = S,
                      .q = q,
                      .k = k,
                      .v = v,
                      .ldq = ldq,
                      .ldk = ldk,
                      .ldv = ldv,
                      .beta = beta,
                      .gd = g,
                      .T = T,
                      .Hk = Hk,
                      .Hv = Hv,
                      .dk = dk,
                      .dv = dv,
                      .chunk = Cm,
                      .scratch = scratch,
                      .scratch_floats = chunk_scratch_floats(Cm, dk, dv)};
  run_heads(pool, Hv, DN_PICK(chunked_heads), &a);
}

int cpu_delta_chunked(struct ferry_pool *pool, float *o, int64_t ldo, float *S, const float *q,
                      int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                      const float *beta, const float *g, int64_t T, int64_t Hk, int64_t Hv,
                      int64_t dk, int64_t dv, int64_t chunk) {
  if (T <= 0) return 0;
  const int64_t Cm = T < chunk ? T : chunk;
  const int64_t per = chunk_scratch_floats(Cm, dk, dv);
  const int nw = pool ? ferry_pool_size(pool) : 1;
  float *scratch = ferry_alloc_aligned(64, (size_t)(per * nw) * sizeof(float));
  if (!scratch)
    return ferry_fail_ctx(-ENOMEM, "delta chunked scratch (%lld floats)", (long long)(per * nw));
  cpu_delta_chunked_ws(pool, o, ldo, S, q, ldq, k, ldk, v, ldv, beta, g, T, Hk, Hv, dk, dv, chunk,
                       scratch);
  ferry_free_aligned(scratch);
  return 0;
}

int cpu_delta_prefill(struct ferry_pool *pool, float *o, int64_t ldo, float *S, const float *q,
                      int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                      const float *beta, const float *g, int64_t T, int64_t Hk, int64_t Hv,
                      int64_t dk, int64_t dv) {
  if (T >= CPU_DELTA_CHUNK_MIN_T)
    return cpu_delta_chunked(pool, o, ldo, S, q, ldq, k, ldk, v, ldv, beta, g, T, Hk, Hv, dk, dv,
                             CPU_DELTA_CHUNK);
  FERRY_ASSERT(Hv <= 256);
  float dec[CPU_DELTA_CHUNK_MIN_T * 256]; // 16 KiB of stack
  for (int64_t i = 0; i < T * Hv; i++) dec[i] = expf(g[i]);
  cpu_delta_recurrent(pool, o, ldo, S, q, ldq, k, ldk, v, ldv, beta, dec, T, Hk, Hv, dk, dv);
  return 0;
}

#else // ===================== vector part (DN_VW floats per vector) =====================

// Vectors of DN_VW floats; unaligned loads/stores go through memcpy. (Macros rather
// than functions: a 32-byte vector argument trips GCC's psabi note.)
#define DN_LD(p)                 \
  ({                             \
    vf v_;                       \
    memcpy(&v_, (p), sizeof v_); \
    v_;                          \
  })
#define DN_ST(p, x)              \
  do {                           \
    vf x_ = (x);                 \
    memcpy((p), &x_, sizeof x_); \
  } while (0)
#define vf    DN_FN(vf) // a distinct type name per instantiation
typedef float vf __attribute__((vector_size(4 * DN_VW)));
#define vi    DN_FN(vi)
typedef int32_t vi __attribute__((vector_size(4 * DN_VW)));
#define vu    DN_FN(vu)
typedef uint32_t vu __attribute__((vector_size(4 * DN_VW)));

// ---- exp and SiLU ----

// x clamped to [lo, hi] (NaN passes through).
DN_TARGET DN_INLINE vf DN_FN(vclamp)(vf x, float lo, float hi) {
  vf l = (vf){0} + lo, h = (vf){0} + hi;
  vi m = x < l;
  x = (vf)(((vi)x & ~m) | ((vi)l & m));
  m = x > h;
  return (vf)(((vi)x & ~m) | ((vi)h & m));
}

// exp(x) for x in [-86, 88] (callers clamp), within a few ulp: 2^n e^r with
// n = round(x/ln2) (by the 1.5*2^23 rounding trick), r = x - n ln2 in two parts
// (|r| <= ln2/2), e^r by its degree-7 Taylor polynomial (truncation error < 6e-9).
DN_TARGET DN_INLINE vf DN_FN(vexp)(vf x) {
  const float magic = 12582912.0f;
  vf t = x * 1.44269504f + magic;
  vf n = t - magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = r * (1.0f / 5040.0f) + (1.0f / 720.0f);
  p = p * r + (1.0f / 120.0f);
  p = p * r + (1.0f / 24.0f);
  p = p * r + (1.0f / 6.0f);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  vu e = ((vu)t - (vu)((vf){0} + magic)) << 23; // n in the exponent field (unsigned: no UB)
  return (vf)((vu)p + e);
}

// silu(x) = x / (1 + exp(-x)); exp's argument clamped so that it stays finite and normal,
// and 0 below x = -88 (where |silu| < 1e-36; the clamp alone would give x / 1.6e38).
DN_TARGET DN_INLINE vf DN_FN(vsilu)(vf x) {
  vf s = x / (1.0f + DN_FN(vexp)(DN_FN(vclamp)(-x, -86.0f, 88.0f)));
  return (vf)((vi)s & ~(x < -88.0f));
}

// ---- causal depthwise conv ----
// Channels go in blocks of DN_CB; a block's taps are transposed to wT[r][i] (zero-padded
// to whole vectors) so that each tap is one vector load.
#define DN_CB (8 * DN_VW)

#if DN_VW == 4
#define DN_EVEN 0, 2, 4, 6
#define DN_ODD  1, 3, 5, 7
#elif DN_VW == 8
#define DN_EVEN 0, 2, 4, 6, 8, 10, 12, 14
#define DN_ODD  1, 3, 5, 7, 9, 11, 13, 15
#else
#define DN_EVEN 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define DN_ODD  1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
#endif

DN_TARGET DN_INLINE void DN_FN(conv_wT)(float *wT, const float *w, int64_t n, int64_t K) {
  const int64_t np = (n + DN_VW - 1) / DN_VW * DN_VW;
  int64_t i0 = 0;
  if (K == 4) { // the model's kernel: de-interleave 4 taps by two even/odd rounds
    for (; i0 + DN_VW <= n; i0 += DN_VW) {
      const float *src = w + i0 * 4;
      vf v0 = DN_LD(src), v1 = DN_LD(src + DN_VW), v2 = DN_LD(src + 2 * DN_VW),
         v3 = DN_LD(src + 3 * DN_VW);
      vf e0 = __builtin_shufflevector(v0, v1, DN_EVEN),
         o0 = __builtin_shufflevector(v0, v1, DN_ODD);
      vf e1 = __builtin_shufflevector(v2, v3, DN_EVEN),
         o1 = __builtin_shufflevector(v2, v3, DN_ODD);
      DN_ST(wT + i0, __builtin_shufflevector(e0, e1, DN_EVEN));
      DN_ST(wT + DN_CB + i0, __builtin_shufflevector(o0, o1, DN_EVEN));
      DN_ST(wT + 2 * DN_CB + i0, __builtin_shufflevector(e0, e1, DN_ODD));
      DN_ST(wT + 3 * DN_CB + i0, __builtin_shufflevector(o0, o1, DN_ODD));
    }
  }
  for (int64_t r = 0; r < K; r++) {
    for (int64_t i = i0; i < n; i++) wT[r * DN_CB + i] = w[i * K + r];
    for (int64_t i = n; i < np; i++) wT[r * DN_CB + i] = 0.0f;
  }
}
#undef DN_EVEN
#undef DN_ODD

// One vector of outputs at channel offset c: sum_r wT[r][c] rows[r][c], then SiLU.
DN_TARGET DN_INLINE vf DN_FN(conv_one)(const float *const *rows, const float *wT, int64_t c,
                                       int64_t K, int act) {
  vf acc = DN_LD(wT + c) * DN_LD(rows[0] + c);
  for (int64_t r = 1; r < K; r++) acc += DN_LD(wT + r * DN_CB + c) * DN_LD(rows[r] + c);
  return act ? DN_FN(vsilu)(acc) : acc;
}

// One token, channels [0, n) of a block. A partial last vector runs on zero-padded
// copies of its inputs, so step and prefill (which split channels the same way) agree
// bit for bit. y may alias rows[K-1] (each vector is read before it is written).
DN_TARGET DN_INLINE void DN_FN(conv_vec)(float *y, const float *const *rows, const float *wT,
                                         int64_t n, int64_t K, int act) {
  int64_t c = 0;
  for (; c + DN_VW <= n; c += DN_VW) DN_ST(y + c, DN_FN(conv_one)(rows, wT, c, K, act));
  if (c < n) {
    float pad[DN_MAX_CONV_K][DN_VW], out[DN_VW];
    const float *prow[DN_MAX_CONV_K];
    for (int64_t r = 0; r < K; r++) {
      for (int64_t i = 0; i < DN_VW; i++) pad[r][i] = c + i < n ? rows[r][c + i] : 0.0f;
      prow[r] = pad[r] - c; // conv_one indexes prow[r] + c
    }
    DN_ST(out, DN_FN(conv_one)(prow, wT, c, K, act));
    memcpy(y + c, out, (size_t)(n - c) * sizeof(float));
  }
}

// Channels [cb, ce) of T tokens; cb is a multiple of DN_CONV_GROUP (so the blocks, and
// with them the rounding, are those of a whole-range call).
DN_TARGET static void DN_FN(conv_rows)(float *y, const float *state, const float *u, const float *w,
                                       int64_t T, int64_t C, int64_t K, int act, int64_t cb,
                                       int64_t ce) {
  float wT[DN_MAX_CONV_K * DN_CB];
  const float *rows[DN_MAX_CONV_K];
  const int64_t P = K - 1;
  for (int64_t c0 = cb; c0 < ce; c0 += DN_CB) {
    const int64_t n = ce - c0 < DN_CB ? ce - c0 : DN_CB;
    DN_FN(conv_wT)(wT, w + c0 * K, n, K);
    for (int64_t t = 0; t < T; t++) {
      for (int64_t r = 0; r < K; r++) { // input r of token t's window: index t-P+r of [state, u]
        int64_t idx = t - P + r;
        rows[r] = (idx < 0 ? state + (P + idx) * C : u + idx * C) + c0;
      }
      DN_FN(conv_vec)(y + t * C + c0, rows, wT, n, K, act);
    }
  }
}

DN_TARGET static void DN_FN(conv_step)(float *y, float *state, const float *u, const float *w,
                                       int64_t C, int64_t K, int act) {
  float wT[DN_MAX_CONV_K * DN_CB], ybuf[DN_CB];
  const float *rows[DN_MAX_CONV_K];
  for (int64_t c0 = 0; c0 < C; c0 += DN_CB) {
    const int64_t n = C - c0 < DN_CB ? C - c0 : DN_CB;
    const size_t nb = (size_t)n * sizeof(float);
    DN_FN(conv_wT)(wT, w + c0 * K, n, K);
    for (int64_t r = 0; r < K - 1; r++) rows[r] = state + r * C + c0;
    rows[K - 1] = u + c0;
    DN_FN(conv_vec)(ybuf, rows, wT, n, K, act);
    // shift this block of the state and append u before y (which may alias u) is written
    for (int64_t r = 0; r + 1 < K - 1; r++)
      memcpy(state + r * C + c0, state + (r + 1) * C + c0, nb);
    if (K > 1) memcpy(state + (K - 2) * C + c0, u + c0, nb);
    memcpy(y + c0, ybuf, nb);
  }
}

// ---- gated RMSNorm ----
// Heads [h0, h1).
DN_TARGET static void DN_FN(gated_rmsnorm)(float *y, const float *o, const float *z, const float *w,
                                           int64_t h0, int64_t h1, int64_t d, float eps) {
  for (int64_t h = h0; h < h1; h++) {
    const float *oh = o + h * d, *zh = z + h * d;
    float *yh = y + h * d;
    double ss = 0.0;
    for (int64_t i = 0; i < d; i++) ss += (double)oh[i] * oh[i];
    const float inv = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
    int64_t i = 0;
    for (; i + DN_VW <= d; i += DN_VW)
      DN_ST(yh + i, DN_LD(oh + i) * inv * DN_LD(w + i) * DN_FN(vsilu)(DN_LD(zh + i)));
    for (; i < d; i++) yh[i] = (oh[i] * inv) * w[i] * silu_f(zh[i]);
  }
}

// ---- delta rule ----

// Pass 1 for value columns [j, j + DN_VW*nv): m = S^T k.
DN_INLINE void DN_FN(retrieve_tile)(float *m, const float *S, const float *k, int64_t dk,
                                    int64_t dv, int64_t j, int nv) {
  vf acc[4];
#pragma GCC unroll 4
  for (int u = 0; u < nv; u++) acc[u] = (vf){0};
  for (int64_t i = 0; i < dk; i++) {
    const float *row = S + i * dv + j;
    float ki = k[i];
#pragma GCC unroll 4
    for (int u = 0; u < nv; u++) acc[u] += DN_LD(row + DN_VW * u) * ki;
  }
#pragma GCC unroll 4
  for (int u = 0; u < nv; u++) DN_ST(m + j + DN_VW * u, acc[u]);
}

// Pass 2 for value columns [j, j + DN_VW*nv): S = decay*S + k delta^T, o = S^T q.
DN_INLINE void DN_FN(update_tile)(float *o, float *S, const float *q, const float *k,
                                  const float *delta, float decay, int64_t dk, int64_t dv,
                                  int64_t j, int nv) {
  vf acc[4], dl[4];
#pragma GCC unroll 4
  for (int u = 0; u < nv; u++) acc[u] = (vf){0};
#pragma GCC unroll 4
  for (int u = 0; u < nv; u++) dl[u] = DN_LD(delta + j + DN_VW * u);
  for (int64_t i = 0; i < dk; i++) {
    float *row = S + i * dv + j;
    float ki = k[i], qi = q[i];
#pragma GCC unroll 4
    for (int u = 0; u < nv; u++) {
      vf s = DN_LD(row + DN_VW * u) * decay + dl[u] * ki;
      DN_ST(row + DN_VW * u, s);
      acc[u] += s * qi;
    }
  }
#pragma GCC unroll 4
  for (int u = 0; u < nv; u++) DN_ST(o + j + DN_VW * u, acc[u]);
}

// One token of one v-head. Retrieval is decay * (S^T k), which equals (decay*S)^T k of
// §5.6 up to rounding and saves a pass over S.
DN_INLINE void DN_FN(head_step)(float *o, float *S, const float *q, const float *k, const float *v,
                                float beta, float decay, int64_t dk, int64_t dv) {
  float delta[CPU_DELTA_MAX_HEAD_DIM];
  int64_t j = 0;
  for (; j + 4 * DN_VW <= dv; j += 4 * DN_VW) DN_FN(retrieve_tile)(delta, S, k, dk, dv, j, 4);
  for (; j + DN_VW <= dv; j += DN_VW) DN_FN(retrieve_tile)(delta, S, k, dk, dv, j, 1);
  for (; j < dv; j++) {
    float acc = 0.0f;
    for (int64_t i = 0; i < dk; i++) acc += S[i * dv + j] * k[i];
    delta[j] = acc;
  }
  for (j = 0; j < dv; j++) delta[j] = beta * (v[j] - decay * delta[j]);
  j = 0;
  for (; j + 4 * DN_VW <= dv; j += 4 * DN_VW)
    DN_FN(update_tile)(o, S, q, k, delta, decay, dk, dv, j, 4);
  for (; j + DN_VW <= dv; j += DN_VW) DN_FN(update_tile)(o, S, q, k, delta, decay, dk, dv, j, 1);
  for (; j < dv; j++) {
    float acc = 0.0f;
    for (int64_t i = 0; i < dk; i++) {
      float s = S[i * dv + j] * decay + delta[j] * k[i];
      S[i * dv + j] = s;
      acc += s * q[i];
    }
    o[j] = acc;
  }
}

DN_TARGET static void DN_FN(recurrent_heads)(void *ctx, int64_t h0, int64_t h1, int tid) {
  const struct dn_args *a = ctx;
  const int64_t r = a->Hv / a->Hk;
  for (int64_t h = h0; h < h1; h++) {
    const int64_t kh = h / r;
    float *Sh = a->S + h * a->dk * a->dv;
    for (int64_t t = 0; t < a->T; t++) {
      DN_FN(head_step)
      (a->o + t * a->ldo + h * a->dv, Sh, a->q + t * a->ldq + kh * a->dk,
       a->k + t * a->ldk + kh * a->dk, a->v + t * a->ldv + h * a->dv, a->beta[t * a->Hv + h],
       a->gd[t * a->Hv + h], a->dk, a->dv);
    }
  }
}

// ---------------------------------------------------------------------------------------
// chunked (WY) form
// ---------------------------------------------------------------------------------------
//
// For one v-head and a chunk of L tokens with incoming state S0 (dk x dv), G_t = sum of
// g over the chunk up to t, Gam_ts = exp(G_t - G_s) (s <= t; every exponent is <= 0, so
// nothing overflows), the recurrence unrolls to
//   S_t = e^{G_t} S0 + sum_{s<=t} Gam_ts k_s d_s^T,   o_t = S_t^T q_t,
// where the deltas d_t solve the unit lower-triangular system
//   d_t + sum_{s<t} beta_t (k_t.k_s) Gam_ts d_s = beta_t (v_t - e^{G_t} S0^T k_t).
// (d = V' of §5.7: solving for it directly skips forming U and W separately.) Then
//   O   = diag(e^G) Q S0 + lower_incl(Q K^T . Gam) D
//   S_L = e^{G_L} S0 + K^T diag(e^{G_L - G}) D.
// Work per token ~ 3*dk*dv (K S0, Q S0, K^T D) + O(L*(dk+dv)), about the recurrence's
// 4*dk*dv, but as matrix products with register tiles instead of streaming S per token.

// C[M x N] = cs*C + A[M x K] B[K x N] for rows [m, m+mr), columns [j, j+DN_VW*nv);
// mr <= DN_MR (rows per register tile: 4, or 8 with AVX-512's 32 registers).
// cs == 0 overwrites C (C may be uninitialised).
DN_INLINE void DN_FN(gemm_tile)(float *C, int64_t ldc, float cs, const float *A, int64_t lda,
                                const float *B, int64_t ldb, int64_t K, int64_t m, int64_t j,
                                int mr, int nv) {
  vf acc[DN_MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < mr; r++)
#pragma GCC unroll 2
    for (int u = 0; u < nv; u++) acc[r][u] = (vf){0};
  for (int64_t kk = 0; kk < K; kk++) {
    vf b[2];
#pragma GCC unroll 2
    for (int u = 0; u < nv; u++) b[u] = DN_LD(B + kk * ldb + j + DN_VW * u);
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++) {
      float av = A[(m + r) * lda + kk];
#pragma GCC unroll 2
      for (int u = 0; u < nv; u++) acc[r][u] += b[u] * av;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < mr; r++) {
#pragma GCC unroll 2
    for (int u = 0; u < nv; u++) {
      float *dst = C + (m + r) * ldc + j + DN_VW * u;
      vf x = acc[r][u];
      if (cs != 0.0f) x += DN_LD(dst) * cs;
      DN_ST(dst, x);
    }
  }
}

DN_INLINE void DN_FN(gemm_nn)(float *C, int64_t ldc, float cs, const float *A, int64_t lda,
                              const float *B, int64_t ldb, int64_t M, int64_t N, int64_t K,
                              int tri) {
#define DN_KEFF(m, mr)    (tri == GEMM_LOWER_A && (m) + (mr) < K ? (m) + (mr) : K)
#define DN_SKIP(m, mr, j) (tri == GEMM_LOWER_OUT && (j) > (m) + (mr)-1)
  int64_t j = 0;
  for (; j + 2 * DN_VW <= N; j += 2 * DN_VW) {
    int64_t m = 0;
    for (; m + DN_MR <= M; m += DN_MR)
      if (!DN_SKIP(m, DN_MR, j))
        DN_FN(gemm_tile)(C, ldc, cs, A, lda, B, ldb, DN_KEFF(m, DN_MR), m, j, DN_MR, 2);
    for (; m < M; m++)
      if (!DN_SKIP(m, 1, j))
        DN_FN(gemm_tile)(C, ldc, cs, A, lda, B, ldb, DN_KEFF(m, 1), m, j, 1, 2);
  }
  for (; j + DN_VW <= N; j += DN_VW) {
    int64_t m = 0;
    for (; m + DN_MR <= M; m += DN_MR)
      if (!DN_SKIP(m, DN_MR, j))
        DN_FN(gemm_tile)(C, ldc, cs, A, lda, B, ldb, DN_KEFF(m, DN_MR), m, j, DN_MR, 1);
    for (; m < M; m++)
      if (!DN_SKIP(m, 1, j))
        DN_FN(gemm_tile)(C, ldc, cs, A, lda, B, ldb, DN_KEFF(m, 1), m, j, 1, 1);
  }
  for (; j < N; j++) {
    for (int64_t m = 0; m < M; m++) {
      if (DN_SKIP(m, 1, j)) continue;
      float acc = 0.0f;
      for (int64_t kk = 0, ke = DN_KEFF(m, 1); kk < ke; kk++)
        acc += A[m * lda + kk] * B[kk * ldb + j];
      C[m * ldc + j] = cs != 0.0f ? acc + C[m * ldc + j] * cs : acc;
    }
  }
#undef DN_KEFF
#undef DN_SKIP
}

// X[t] -= sum_{s<t} A[t][s] X[s] for t = 0..L-1 in order (forward substitution with the
// unit lower-triangular I + A), X [L x n] with row stride ldx, A [L x L] stride lda.
DN_INLINE void DN_FN(forward_subst)(float *X, int64_t ldx, const float *A, int64_t lda, int64_t L,
                                    int64_t n) {
  for (int64_t t = 1; t < L; t++) {
    float *xt = X + t * ldx;
    const float *at = A + t * lda;
    int64_t j = 0;
    for (; j + 4 * DN_VW <= n; j += 4 * DN_VW) {
      vf acc[4];
#pragma GCC unroll 4
      for (int u = 0; u < 4; u++) acc[u] = DN_LD(xt + j + DN_VW * u);
      for (int64_t s = 0; s < t; s++) {
        float a = at[s];
        const float *xs = X + s * ldx + j;
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) acc[u] -= DN_LD(xs + DN_VW * u) * a;
      }
#pragma GCC unroll 4
      for (int u = 0; u < 4; u++) DN_ST(xt + j + DN_VW * u, acc[u]);
    }
    for (; j < n; j++) {
      float acc = xt[j];
      for (int64_t s = 0; s < t; s++) acc -= at[s] * X[s * ldx + j];
      xt[j] = acc;
    }
  }
}

DN_TARGET static void DN_FN(chunked_heads)(void *ctx, int64_t h0, int64_t h1, int tid) {
  const struct dn_args *a = ctx;
  const int64_t r = a->Hv / a->Hk, dk = a->dk, dv = a->dv, Cm = a->chunk, Hv = a->Hv;
  float *ws = a->scratch + (int64_t)tid * a->scratch_floats;
  float *KT = ws, *QK = KT + dk * Cm, *A = QK + Cm * Cm, *D = A + Cm * Cm, *eg = D + Cm * dv;
  double *G = (double *)(ws + chunk_g_offset(Cm, dk, dv));
  for (int64_t h = h0; h < h1; h++) {
    const int64_t kh = h / r;
    float *S = a->S + h * dk * dv;
    for (int64_t t0 = 0; t0 < a->T; t0 += Cm) {
      const int64_t L = a->T - t0 < Cm ? a->T - t0 : Cm;
      const float *Q = a->q + t0 * a->ldq + kh * dk;
      const float *K = a->k + t0 * a->ldk + kh * dk;
      const float *V = a->v + t0 * a->ldv + h * dv;
      const float *beta = a->beta + t0 * Hv + h; // stride Hv
      const float *g = a->gd + t0 * Hv + h;
      float *O = a->o + t0 * a->ldo + h * dv;

      double acc = 0.0;
      for (int64_t t = 0; t < L; t++) {
        acc += (double)g[t * Hv];
        G[t] = acc;
        eg[t] = (float)exp(acc);
      }
      for (int64_t t = 0; t < L; t++)
        for (int64_t i = 0; i < dk; i++) KT[i * Cm + t] = K[t * a->ldk + i];

      // Products with the incoming state first (S is overwritten at the end).
      DN_FN(gemm_nn)(D, dv, 0.0f, K, a->ldk, S, dv, L, dv, dk, GEMM_FULL);       // D = K S0
      DN_FN(gemm_nn)(O, a->ldo, 0.0f, Q, a->ldq, S, dv, L, dv, dk, GEMM_FULL);   // O = Q S0
      DN_FN(gemm_nn)(QK, Cm, 0.0f, Q, a->ldq, KT, Cm, L, L, dk, GEMM_LOWER_OUT); // Q K^T
      DN_FN(gemm_nn)(A, Cm, 0.0f, K, a->ldk, KT, Cm, L, L, dk, GEMM_LOWER_OUT);  // K K^T

      for (int64_t t = 0; t < L; t++) {
        const float bt = beta[t * Hv];
        float *qk = QK + t * Cm, *at = A + t * Cm;
        for (int64_t s = 0; s <= t; s++) {
          float gam = expf((float)(G[t] - G[s]));
          qk[s] *= gam;
          at[s] = s < t ? bt * at[s] * gam : 0.0f;
        }
        for (int64_t s = t + 1; s < L; s++) qk[s] = 0.0f, at[s] = 0.0f;
        // right-hand side beta_t (v_t - e^{G_t} S0^T k_t); O row t scaled by e^{G_t}
        float *dt = D + t * dv, *ot = O + t * a->ldo;
        const float *vt = V + t * a->ldv;
        const float e = eg[t];
        int64_t j = 0;
        for (; j + DN_VW <= dv; j += DN_VW) {
          DN_ST(dt + j, (DN_LD(vt + j) - DN_LD(dt + j) * e) * bt);
          DN_ST(ot + j, DN_LD(ot + j) * e);
        }
        for (; j < dv; j++) {
          dt[j] = bt * (vt[j] - e * dt[j]);
          ot[j] *= e;
        }
      }
      DN_FN(forward_subst)(D, dv, A, Cm, L, dv);                              // D = deltas (V')
      DN_FN(gemm_nn)(O, a->ldo, 1.0f, QK, Cm, D, dv, L, dv, L, GEMM_LOWER_A); // O += (QK . Gam) D

      // S = e^{G_L} S0 + K^T diag(e^{G_L - G}) D
      const double GL = G[L - 1];
      for (int64_t t = 0; t < L; t++) {
        float f = (float)exp(GL - G[t]);
        float *dt = D + t * dv;
        int64_t j = 0;
        for (; j + DN_VW <= dv; j += DN_VW) DN_ST(dt + j, DN_LD(dt + j) * f);
        for (; j < dv; j++) dt[j] *= f;
      }
      DN_FN(gemm_nn)(S, dv, eg[L - 1], KT, Cm, D, dv, dk, dv, L, GEMM_FULL);
    }
  }
}

#undef vf
#undef vi
#undef vu
#undef DN_CB
#undef DN_LD
#undef DN_ST
#endif // DN_VW
