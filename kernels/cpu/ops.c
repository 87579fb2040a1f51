// kernels/cpu/ops.c: scalar references of the small forward-pass ops (see ops.h). They
// favour clarity and accuracy (double accumulators, angles in double) over speed: every
// CUDA kernel and any future SIMD path is checked against them.
#include "kernels/cpu/ops.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/cpu/matmul.h"

// ---- normalisation ----

void cpu_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
  const float r = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
  for (int64_t i = 0; i < n; i++) y[i] = w[i] * (x[i] * r);
}

void cpu_rmsnorm_rows(float *y, const float *x, const float *w, int64_t nrows, int64_t n,
                      float eps) {
  for (int64_t r = 0; r < nrows; r++) cpu_rmsnorm(y + r * n, x + r * n, w, n, eps);
}

void cpu_rmsnorm_heads(float *x, const float *w, int64_t n_heads, int64_t head_dim, float eps) {
  cpu_rmsnorm_rows(x, x, w, n_heads, head_dim, eps);
}

// ---- rotary embedding ----

void cpu_rope_neox(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int64_t pos,
                   float freq_base) {
  FERRY_ASSERT(n_rot > 0 && n_rot % 2 == 0 && n_rot <= head_dim);
  const int64_t half = n_rot / 2;
  for (int64_t i = 0; i < half; i++) {
    // theta depends only on (pos, i): compute once for all heads.
    const double theta = (double)pos * pow((double)freq_base, -2.0 * (double)i / (double)n_rot);
    const float c = (float)cos(theta), s = (float)sin(theta);
    for (int64_t h = 0; h < n_heads; h++) {
      float *xh = x + h * head_dim;
      const float a = xh[i], b = xh[i + half];
      xh[i] = a * c - b * s;
      xh[i + half] = b * c + a * s;
    }
  }
}

void cpu_rope_neox_rows(float *x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                        int64_t pos0, float freq_base) {
  for (int64_t t = 0; t < n_tok; t++)
    cpu_rope_neox(x + t * n_heads * head_dim, n_heads, head_dim, n_rot, pos0 + t, freq_base);
}

// ---- KV cache ----

// Q8_0 block: f16 scale then 32 int8 quants (MODEL_SPEC §2.2).
enum { Q8_0_BLCK = 32, Q8_0_SIZE = 34 };

static void q8_0_quantize_block(const float *x, uint8_t *blk) {
  float amax = 0.0f;
  for (int i = 0; i < Q8_0_BLCK; i++) amax = fmaxf(amax, fabsf(x[i]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const uint16_t dh = ferry_f32_to_f16(d);
  memcpy(blk, &dh, 2);
  for (int i = 0; i < Q8_0_BLCK; i++) blk[2 + i] = (uint8_t)(int8_t)roundf(x[i] * id);
}

// Reads element e of a KV row (row points at the start of the position's row).
static inline float kv_get(const void *row, enum ferry_type t, int64_t e) {
  switch (t) {
    case FT_F32: return ((const float *)row)[e];
    case FT_F16: return ferry_f16_to_f32(((const uint16_t *)row)[e]);
    default: {
      const uint8_t *blk = (const uint8_t *)row + e / Q8_0_BLCK * Q8_0_SIZE;
      uint16_t dh;
      memcpy(&dh, blk, 2);
      return ferry_f16_to_f32(dh) * (float)(int8_t)blk[2 + e % Q8_0_BLCK];
    }
  }
}

static inline size_t kv_row_bytes(enum ferry_type t, int64_t elems) {
  switch (t) {
    case FT_F32: return (size_t)elems * 4;
    case FT_F16: return (size_t)elems * 2;
    default: return (size_t)(elems / Q8_0_BLCK) * Q8_0_SIZE;
  }
}

int cpu_kv_store(void *cache, enum ferry_type kv_type, int64_t kv_row_stride_elems, int64_t pos0,
                 int64_t n_tok, const float *src, int64_t n_elems) {
  if (kv_type != FT_F32 && kv_type != FT_F16 && kv_type != FT_Q8_0)
    return ferry_fail(-EINVAL, "kv_store: unsupported cache type %d", (int)kv_type);
  if (n_elems > kv_row_stride_elems || pos0 < 0 || n_tok < 0)
    return ferry_fail(-EINVAL, "kv_store: bad sizes (n_elems %lld, stride %lld)",
                      (long long)n_elems, (long long)kv_row_stride_elems);
  if (kv_type == FT_Q8_0 && (n_elems % Q8_0_BLCK || kv_row_stride_elems % Q8_0_BLCK))
    return ferry_fail(-EINVAL, "kv_store: q8_0 cache needs multiples of 32 elements");
  const size_t rb = kv_row_bytes(kv_type, kv_row_stride_elems);
  for (int64_t t = 0; t < n_tok; t++) {
    uint8_t *row = (uint8_t *)cache + (size_t)(pos0 + t) * rb;
    const float *s = src + t * n_elems;
    switch (kv_type) {
      case FT_F32: memcpy(row, s, (size_t)n_elems * 4); break;
      case FT_F16:
        for (int64_t e = 0; e < n_elems; e++) ((uint16_t *)row)[e] = ferry_f32_to_f16(s[e]);
        break;
      default:
        for (int64_t b = 0; b < n_elems / Q8_0_BLCK; b++)
          q8_0_quantize_block(s + b * Q8_0_BLCK, row + b * Q8_0_SIZE);
        break;
    }
  }
  return 0;
}

// ---- attention ----

// One query head against positions 0..n_ctx-1 of KV head kvh. Online softmax (running
// max m and sum l, rescaling the accumulator when the max grows): one pass over the
// cache and no scratch proportional to the context, so callers allocate nothing per
// token. Scores and probabilities are f32 (as the model's softmax); sums are in double.
static void attn_one_head(float *out, const float *qh, const void *kcache, const void *vcache,
                          enum ferry_type t, int64_t n_ctx, int64_t kvh, int64_t head_dim,
                          size_t row_bytes, float scale, double *acc) {
  float m = -INFINITY;
  double l = 0.0;
  for (int64_t d = 0; d < head_dim; d++) acc[d] = 0.0;
  for (int64_t p = 0; p < n_ctx; p++) {
    const void *krow = (const uint8_t *)kcache + (size_t)p * row_bytes;
    double dot = 0.0;
    for (int64_t d = 0; d < head_dim; d++)
      dot += (double)qh[d] * kv_get(krow, t, kvh * head_dim + d);
    const float s = (float)dot * scale;
    if (s > m) { // rescale what was summed under the old max
      const double c = m == -INFINITY ? 0.0 : (double)expf(m - s);
      l *= c;
      for (int64_t d = 0; d < head_dim; d++) acc[d] *= c;
      m = s;
    }
    const float pw = expf(s - m);
    l += pw;
    const void *vrow = (const uint8_t *)vcache + (size_t)p * row_bytes;
    for (int64_t d = 0; d < head_dim; d++)
      acc[d] += (double)pw * kv_get(vrow, t, kvh * head_dim + d);
  }
  for (int64_t d = 0; d < head_dim; d++) out[d] = (float)(acc[d] / l);
}

static void attn_rows(float *out, const float *q, const void *kcache, const void *vcache,
                      enum ferry_type kv_type, int64_t n_tok, int64_t pos0, int64_t n_head,
                      int64_t n_kv_head, int64_t head_dim, int64_t stride, float scale) {
  FERRY_ASSERT(kv_type == FT_F32 || kv_type == FT_F16 || kv_type == FT_Q8_0);
  FERRY_ASSERT(n_kv_head > 0 && n_head % n_kv_head == 0);
  FERRY_ASSERT(head_dim > 0 && head_dim <= 1024);
  const int64_t group = n_head / n_kv_head;
  const size_t rb = kv_row_bytes(kv_type, stride);
  double acc[1024];
  for (int64_t t = 0; t < n_tok; t++)
    for (int64_t h = 0; h < n_head; h++) {
      const int64_t off = (t * n_head + h) * head_dim;
      attn_one_head(out + off, q + off, kcache, vcache, kv_type, pos0 + t + 1, h / group, head_dim,
                    rb, scale, acc);
    }
}

void cpu_attn_decode(float *out, const float *q, const void *kcache, const void *vcache,
                     enum ferry_type kv_type, int64_t n_ctx_used, int64_t n_head, int64_t n_kv_head,
                     int64_t head_dim, int64_t kv_row_stride_elems, float scale) {
  FERRY_ASSERT(n_ctx_used > 0);
  attn_rows(out, q, kcache, vcache, kv_type, 1, n_ctx_used - 1, n_head, n_kv_head, head_dim,
            kv_row_stride_elems, scale);
}

void cpu_attn_prefill(float *out, const float *q, const void *kcache, const void *vcache,
                      enum ferry_type kv_type, int64_t n_tok, int64_t pos0, int64_t n_head,
                      int64_t n_kv_head, int64_t head_dim, int64_t kv_row_stride_elems,
                      float scale) {
  attn_rows(out, q, kcache, vcache, kv_type, n_tok, pos0, n_head, n_kv_head, head_dim,
            kv_row_stride_elems, scale);
}

// ---- feed-forward and MoE ----

void cpu_swiglu(float *y, const float *g, const float *u, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const float gi = g[i];
    y[i] = gi / (1.0f + expf(-gi)) * u[i];
  }
}

int cpu_router_topk(const float *logits, int64_t n_expert, int64_t k, int *ids, float *weights) {
  if (k < 1 || k > n_expert)
    return ferry_fail(-EINVAL, "router: top-k %lld out of range for %lld experts", (long long)k,
                      (long long)n_expert);
  float mx = -INFINITY;
  for (int64_t e = 0; e < n_expert; e++) mx = fmaxf(mx, logits[e]);
  double sum = 0.0;
  for (int64_t e = 0; e < n_expert; e++) sum += exp((double)(logits[e] - mx));
  // Selection by repeated arg-max keeps the tie rule obvious: a strictly larger
  // probability is needed to displace a lower index. Ranking by logit is ranking by P.
  float psel = 0.0f;
  for (int64_t i = 0; i < k; i++) {
    int best = -1;
    for (int64_t e = 0; e < n_expert; e++) {
      bool taken = false;
      for (int64_t j = 0; j < i; j++) taken |= ids[j] == e;
      if (taken) continue;
      if (best < 0 || logits[e] > logits[best]) best = (int)e;
    }
    ids[i] = best;
    weights[i] = (float)(exp((double)(logits[best] - mx)) / sum);
    psel += weights[i];
  }
  const float den = fmaxf(psel, 6.1035e-5f);
  for (int64_t i = 0; i < k; i++) weights[i] /= den;
  return 0;
}

int cpu_router_topk_rows(const float *logits, int64_t n_tok, int64_t n_expert, int64_t k, int *ids,
                         float *weights) {
  for (int64_t t = 0; t < n_tok; t++) {
    int rc = cpu_router_topk(logits + t * n_expert, n_expert, k, ids + t * k, weights + t * k);
    if (rc) return rc;
  }
  return 0;
}

void cpu_matmul_grouped(struct ferry_pool *pool, enum ferry_type t, const void *const *w,
                        int64_t n_group, int64_t nrows, int64_t n, const float *x, int64_t ldx,
                        const int32_t *rows, const int64_t *offs, float *y, int64_t ldy) {
  for (int64_t g = 0; g < n_group; g++)
    for (int64_t i = offs[g]; i < offs[g + 1]; i++)
      cpu_matvec_exact(pool, t, w[g], nrows, n, x + (int64_t)rows[i] * ldx, y + i * ldy);
}

// ---- elementwise ----

void cpu_add(float *y, const float *a, const float *b, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

void cpu_scale(float *y, const float *x, float s, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = s * x[i];
}

void cpu_axpy(float *y, const float *x, float s, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += s * x[i];
}

void cpu_sigmoid_mul(float *y, const float *x, const float *g, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-g[i]));
}
