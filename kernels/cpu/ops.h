// kernels/cpu/ops.h: scalar CPU references of the small (non-matmul) ops of the forward
// pass: RMSNorm, NEOX RoPE, KV-cache store, attention (decode and causal prefill), SwiGLU,
// router softmax + top-k + renormalisation, elementwise add/scale/axpy/sigmoid-gate, and
// the grouped-expert product used by MoE prefill. Each CUDA kernel in kernels/cuda/ has
// the same argument order and is tested against these functions (tests/gpu/).
// All functions are pure (no allocation except where stated), thread-safe, and blocking.
// Layouts are row-major with contiguous rows unless a stride argument says otherwise.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "kernels/types.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_pool;

// ---- normalisation ----
// y[i] = w[i] * x[i] / sqrt(mean(x^2) + eps) over one row of n. y may == x.
void cpu_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps);
// The same for nrows contiguous rows of n (x row r at x + r*n), one weight vector w[n]
// shared by all rows. y may == x.
void cpu_rmsnorm_rows(float *y, const float *x, const float *w, int64_t nrows, int64_t n,
                      float eps);
// Per-head QK-norm in place: x holds n_heads heads of head_dim; each head is normalised
// over its own head_dim with the shared weight w[head_dim].
void cpu_rmsnorm_heads(float *x, const float *w, int64_t n_heads, int64_t head_dim, float eps);

// ---- rotary embedding (NEOX / rotate-half) ----
// In place on n_heads heads of head_dim at position pos. Only the first n_rot dims of
// each head rotate (n_rot even, <= head_dim); pairs are (i, i + n_rot/2) for
// i < n_rot/2 with theta_i = pos * base^(-2i/n_rot), computed in double. Dims n_rot..
// head_dim-1 pass through unchanged.
void cpu_rope_neox(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int64_t pos,
                   float freq_base);
// n_tok rows of n_heads*head_dim (row t at x + t*n_heads*head_dim) at positions pos0 + t.
void cpu_rope_neox_rows(float *x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                        int64_t pos0, float freq_base);

// ---- KV cache ----
// The cache of one layer is rows of kv_row_stride_elems elements, one row per position;
// KV head j of position p starts at element p*kv_row_stride_elems + j*head_dim. The
// element type kv_type is FT_F32, FT_F16 or FT_Q8_0 (for Q8_0, head_dim and the row
// stride are multiples of 32 and the byte offset of element e is e/32*34).
//
// Stores n_tok rows of n_elems floats (src row t at src + t*n_elems) at positions pos0+t,
// converting to kv_type (Q8_0: d = amax/127, q = round(x/d) as the reference quantizer).
// Returns 0, or -EINVAL for an unsupported type or misaligned sizes.
int cpu_kv_store(void *cache, enum ferry_type kv_type, int64_t kv_row_stride_elems, int64_t pos0,
                 int64_t n_tok, const float *src, int64_t n_elems);

// ---- attention ----
// Decode: one query (n_head heads of head_dim, q[n_head*head_dim]) against cached
// positions 0..n_ctx_used-1. Query head h reads KV head h / (n_head / n_kv_head) (GQA).
// scores = scale * q.k; softmax in f32 (max-subtracted); out[h*head_dim + d] =
// sum_t p(t) v_t[d]. kv_type: FT_F32, FT_F16 or FT_Q8_0 (layout above). head_dim <= 1024.
// One pass with an online softmax; allocates nothing.
void cpu_attn_decode(float *out, const float *q, const void *kcache, const void *vcache,
                     enum ferry_type kv_type, int64_t n_ctx_used, int64_t n_head, int64_t n_kv_head,
                     int64_t head_dim, int64_t kv_row_stride_elems, float scale);
// Causal prefill: n_tok queries (row t at q + t*n_head*head_dim) at positions pos0+t;
// query t attends to positions 0..pos0+t, which must already be in the cache.
// out has the same layout as q.
void cpu_attn_prefill(float *out, const float *q, const void *kcache, const void *vcache,
                      enum ferry_type kv_type, int64_t n_tok, int64_t pos0, int64_t n_head,
                      int64_t n_kv_head, int64_t head_dim, int64_t kv_row_stride_elems,
                      float scale);

// ---- feed-forward and MoE ----
// y[i] = silu(g[i]) * u[i]; silu(x) = x / (1 + exp(-x)). y may alias g or u.
void cpu_swiglu(float *y, const float *g, const float *u, int64_t n);
// Router for one token: softmax over all n_expert logits (f32, max-subtracted), the k
// largest probabilities (ties -> lower index) into ids[0..k) in descending order, and
// weights[i] = P[ids[i]] / max(sum_{j<k} P[ids[j]], 6.1035e-5).
// Returns 0, or -EINVAL if k < 1 or k > n_expert.
int cpu_router_topk(const float *logits, int64_t n_expert, int64_t k, int *ids, float *weights);
// n_tok tokens: logits row t at logits + t*n_expert; ids/weights row t at + t*k.
int cpu_router_topk_rows(const float *logits, int64_t n_tok, int64_t n_expert, int64_t k, int *ids,
                         float *weights);

// Grouped-expert product (MoE prefill): for group g in [0, n_group), the weight matrix
// w[g] (nrows rows of n elements of type t, rows contiguous) multiplies the activation
// rows x + rows[i]*ldx for i in [offs[g], offs[g+1]) and writes y + i*ldy. So output row
// i belongs to the i-th (token, expert) pair of the grouped list; offs[0] = 0 and
// offs[n_group] is the number of pairs. Exact path (dequantised weights, F32 x).
void cpu_matmul_grouped(struct ferry_pool *pool, enum ferry_type t, const void *const *w,
                        int64_t n_group, int64_t nrows, int64_t n, const float *x, int64_t ldx,
                        const int32_t *rows, const int64_t *offs, float *y, int64_t ldy);

// ---- elementwise ----
void cpu_add(float *y, const float *a, const float *b, int64_t n); // y = a + b (y may alias)
void cpu_scale(float *y, const float *x, float s, int64_t n);      // y = s * x (y may == x)
void cpu_axpy(float *y, const float *x, float s, int64_t n);       // y += s * x
// y = x * sigmoid(g) (Qwen3-Next output gate); y may alias x or g.
void cpu_sigmoid_mul(float *y, const float *x, const float *g, int64_t n);

#ifdef __cplusplus
}
#endif
