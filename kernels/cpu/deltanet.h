// kernels/cpu/deltanet.h: CPU kernels of the Qwen3-Next Gated DeltaNet mixer
// (MODEL_SPEC §5.6, §5.7): the causal depthwise conv (decode step and prefill), per-head
// L2 norm, the gates (beta, g, decay), the delta-rule recurrence (one token, T tokens,
// and the chunked WY form), the gated RMSNorm, and the regrouping of the legacy fused
// projections (ssm_in, ssm_ba) into the split layout.
//
// Why a separate file: these ops have no counterpart in qwen3moe and carry recurrent
// state, so they are kept together with their own tests (tests/unit/test_deltanet.c)
// and benchmark (bench/bench_deltanet.c).
//
// Conventions: everything is F32, the recurrent state too (as llama.cpp keeps it).
// All row-major, rows contiguous unless an ld* (row stride, in floats) says otherwise.
// Names: Hk = number of k-heads (ssm.group_count), Hv = number of v-heads
// (ssm.time_step_rank), dk = head_k_dim, dv = head_v_dim, T = tokens, C = channels.
// v-head h reads k-head h / (Hv/Hk) (repeat-interleave, NOT tiled, §5.6 step 6).
// Functions are pure apart from their outputs and the state they are given, allocate
// nothing (except cpu_delta_chunked and cpu_delta_prefill, which say so), block until
// done, and are thread-safe for disjoint outputs. Shape invariants are checked with FERRY_ASSERT
// (a wrong shape is a programming error, not input data).
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_pool;

// Largest dk / dv the kernels accept (stack scratch is sized by it). The real model
// has 128.
#define CPU_DELTA_MAX_HEAD_DIM 512

// ---- causal depthwise conv (ssm_conv1d), §5.6 step 3 ----
// One token.
//   y     [C]          output; may alias u. silu(conv) when apply_silu != 0, else conv.
//   state [(K-1) x C]  the last K-1 raw (pre-conv) inputs, row 0 = oldest; updated in
//                      place to drop row 0 and append u.
//   u     [C]          this token's conv input (channel order [q | k | v], §5.6 step 2)
//   w     [C x K]      taps of channel c at w + c*K; tap K-1 multiplies the current input,
//                      tap 0 the oldest (GGUF ssm_conv1d, ne {K, C}). No bias.
//   K in [1, 16] (the model has 4).
// y_c = sum_{r<K-1} w[c][r]*state[r][c] + w[c][K-1]*u_c, summed in that order in f32
// (fused multiply-adds where the CPU has them); SiLU uses a vector exp good to a few ulp.
void cpu_ssm_conv_step(float *y, float *state, const float *u, const float *w, int64_t C, int64_t K,
                       int apply_silu);
// T tokens (prefill): the same as T calls of cpu_ssm_conv_step, bit for bit (on the same
// kernel path, see cpu_delta_force).
//   y [T x C] (must not overlap u), u [T x C], state as above (updated to the last K-1
//   rows of [state, u_0..u_{T-1}]). T may be 0 (no-op).
void cpu_ssm_conv_rows(float *y, float *state, const float *u, const float *w, int64_t T, int64_t C,
                       int64_t K, int apply_silu);
// The same with the channels split over the pool's workers (pool may be NULL); the
// same bits as cpu_ssm_conv_rows.
void cpu_ssm_conv_rows_mt(struct ferry_pool *pool, float *y, float *state, const float *u,
                          const float *w, int64_t T, int64_t C, int64_t K, int apply_silu);

// ---- L2 norm per head, §5.6 step 5 ----
// In place on x [n_heads x d]: x_h <- scale * x_h / sqrt(sum x_h^2 + eps) (sum in double).
// Use eps = 1e-6 (the model's rms eps); scale = 1 for k, 1/sqrt(dk) for q.
void cpu_l2norm_heads(float *x, int64_t n_heads, int64_t d, float eps, float scale);

// ---- gates, §5.6 step 7 ----
// For T tokens and Hv v-heads (index t*Hv + h):
//   beta  = sigmoid(b)
//   g     = ssm_a[h] * softplus(a + dt_bias[h])   (<= 0; softplus(x) = x for x > 20)
//   decay = exp(g)                                  (in (0, 1])
//   beta, g, decay [T x Hv] outputs; g and decay may be NULL when not wanted.
//   b, a [T x Hv] (from cpu_ssm_ba_regroup or the split projection), ssm_a [Hv]
//   (= -exp(A_log), GGUF blk.L.ssm_a), dt_bias [Hv] (GGUF blk.L.ssm_dt.bias).
void cpu_delta_gates(float *beta, float *g, float *decay, const float *b, const float *a,
                     const float *ssm_a, const float *dt_bias, int64_t T, int64_t Hv);

// ---- delta-rule recurrence, §5.6 step 8 ----
// One token, all v-heads. For each v-head h with kh = h / (Hv/Hk):
//   S_h <- decay_h * S_h;  m = S_h^T k_kh;  delta = beta_h (v_h - m);
//   S_h <- S_h + k_kh delta^T;  o_h = S_h^T q_kh (the updated state).
//   o     [Hv x dv]        output
//   S     [Hv][dk][dv]     state, S_h[i][j] at S + (h*dk + i)*dv + j (i = key dim)
//   q     [Hk x dk]        L2-normalised and scaled by 1/sqrt(dk) (cpu_l2norm_heads)
//   k     [Hk x dk]        L2-normalised
//   v     [Hv x dv]
//   beta  [Hv], decay [Hv] = exp(g), from cpu_delta_gates
// Hv must be a multiple of Hk; dk, dv <= CPU_DELTA_MAX_HEAD_DIM. o must not overlap inputs.
void cpu_delta_step(float *o, float *S, const float *q, const float *k, const float *v,
                    const float *beta, const float *decay, int64_t Hk, int64_t Hv, int64_t dk,
                    int64_t dv);
// The same, with the v-heads split over the pool's workers (pool may be NULL: inline).
void cpu_delta_step_mt(struct ferry_pool *pool, float *o, float *S, const float *q, const float *k,
                       const float *v, const float *beta, const float *decay, int64_t Hk,
                       int64_t Hv, int64_t dk, int64_t dv);

// T tokens by the exact recurrence (the reference prefill): the same numbers as T calls
// of cpu_delta_step, but each v-head runs all T tokens while its state is hot in cache,
// and the v-heads are split over the pool (pool may be NULL).
//   o [T rows, stride ldo >= Hv*dv]; q [T, ldq >= Hk*dk]; k [T, ldk]; v [T, ldv >= Hv*dv]
//   (strides let q, k, v be read in place from the conv output rows [q | k | v]);
//   beta, decay [T x Hv]; S as above, updated to the state after token T-1.
void cpu_delta_recurrent(struct ferry_pool *pool, float *o, int64_t ldo, float *S, const float *q,
                         int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                         const float *beta, const float *decay, int64_t T, int64_t Hk, int64_t Hv,
                         int64_t dk, int64_t dv);

// T tokens by the chunked (WY) form of §5.7, chunks of `chunk` tokens (the tail chunk is
// shorter); equal to cpu_delta_recurrent up to rounding (tests: < 1e-6 relative).
// Arguments as cpu_delta_recurrent, except that it takes g [T x Hv] (log decay, <= 0)
// instead of decay: cumulative decays are formed as exp of sums of g, which neither
// underflows to log(0) nor loses precision the way log(decay) would.
// chunk in [1, 256]; 32 measured fastest on CPU (see cpu_delta_prefill). Allocates scratch
// per call (~230 KiB per pool worker at dk = dv = 128, chunk 64).
// Returns 0, or -ENOMEM (message set) if the scratch cannot be allocated.
int cpu_delta_chunked(struct ferry_pool *pool, float *o, int64_t ldo, float *S, const float *q,
                      int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                      const float *beta, const float *g, int64_t T, int64_t Hk, int64_t Hv,
                      int64_t dk, int64_t dv, int64_t chunk);

// The same with caller-owned scratch, allocating nothing: scratch holds n_workers (pool
// size, or 1 without a pool) times cpu_delta_chunk_scratch_floats(chunk, dk, dv) floats,
// 64-byte aligned. T may be 0.
size_t cpu_delta_chunk_scratch_floats(int64_t chunk, int64_t dk, int64_t dv);
void cpu_delta_chunked_ws(struct ferry_pool *pool, float *o, int64_t ldo, float *S, const float *q,
                          int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                          const float *beta, const float *g, int64_t T, int64_t Hk, int64_t Hv,
                          int64_t dk, int64_t dv, int64_t chunk, float *scratch);
// Prefill by whichever form is faster for T: the chunked form with chunk
// CPU_DELTA_CHUNK when T >= CPU_DELTA_CHUNK_MIN_T, else the recurrence (decays computed
// here from g). Arguments as cpu_delta_chunked (g, not decay); Hv <= 256.
// Measured (bench_deltanet, real shape, one thread, AMD EPYC with AVX-512): at T = 512
// recurrent 16-19 ms, chunked C=32 12.5-14 ms (AVX2 path: 23 vs 21 ms); at T = 8 the
// recurrence is faster (0.23 vs 0.31 ms). Returns 0 or -ENOMEM (message set).
#define CPU_DELTA_CHUNK       32
#define CPU_DELTA_CHUNK_MIN_T 16
int cpu_delta_prefill(struct ferry_pool *pool, float *o, int64_t ldo, float *S, const float *q,
                      int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                      const float *beta, const float *g, int64_t T, int64_t Hk, int64_t Hv,
                      int64_t dk, int64_t dv);

// ---- gated RMSNorm, §5.6 step 9 ----
// y_h = RMSNorm_eps(o_h; w) * silu(z_h) for each of n_heads heads of d (one weight w[d]
// shared by all heads: GGUF ssm_norm, a plain multiplier). y, o, z [n_heads x d];
// y may alias o or z. Sum of squares in double.
void cpu_gated_rmsnorm_heads(float *y, const float *o, const float *z, const float *w,
                             int64_t n_heads, int64_t d, float eps);
// The same with the heads split over the pool's workers (pool may be NULL); n_heads may
// be T * Hv for T contiguous tokens.
void cpu_gated_rmsnorm_heads_mt(struct ferry_pool *pool, float *y, const float *o, const float *z,
                                const float *w, int64_t n_heads, int64_t d, float eps);

// Test/bench hook: force the vector kernels (conv, gated norm, recurrence) onto "base"
// (portable C), "avx2" (AVX2+FMA) or "avx512" (AVX-512F), or back to "auto" (the best
// the CPU has). Returns 0, or -1 if that path is unavailable here. Not for use while
// other threads run these kernels.
int cpu_delta_force(const char *path);

// ---- legacy projection regrouping, §5.4 and fixtures README §1.2 ----
// ssm_in (legacy fused in_proj_qkvz) output for T tokens -> the split layout.
//   p   [T x nk*(2*dk + 2*r*dv)], r = nv/nk: nk groups, group g =
//       [q_g (dk) | k_g (dk) | v_{g*r}..v_{g*r+r-1} (r*dv) | z_{g*r}..z_{g*r+r-1} (r*dv)]
//   qkv [T x (2*nk*dk + nv*dv)] = [q_0..q_{nk-1} | k_0..k_{nk-1} | v_0..v_{nv-1}]
//       (the conv input order, = split attn_qkv output)
//   z   [T x nv*dv] = [z_0..z_{nv-1}] (= split attn_gate output)
// Outputs must not overlap p.
void cpu_ssm_in_regroup(float *qkv, float *z, const float *p, int64_t T, int64_t nk, int64_t nv,
                        int64_t dk, int64_t dv);
// ssm_ba output for T tokens -> b, a.
//   p [T x 2*nv]: nk groups of 2r, group g = [b_{g*r}..b_{g*r+r-1} | a_{g*r}..a_{g*r+r-1}]
//   b, a [T x nv] in v-head order.
void cpu_ssm_ba_regroup(float *b, float *a, const float *p, int64_t T, int64_t nk, int64_t nv);

#ifdef __cplusplus
}
#endif
