// kernels/cpu/attn.c: fast GQA attention (see attn.h). One task is one (token, KV head)
// pair: K rows are converted to F32 once and dotted with every query head of the group,
// then V rows are converted once and accumulated into every head's output.
#include "kernels/cpu/attn.h"

#include <math.h>
#include <string.h>

#include "base/base.h"
#include "numa/pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { Q8_BLCK = 32, Q8_SIZE = 34 };

size_t cpu_attn_scratch_floats(int64_t n_ctx, int64_t n_head, int64_t n_kv_head, int64_t head_dim) {
  int64_t group = n_head / n_kv_head;
  // scores [group][n_ctx], row buffer [head_dim], accumulators [group][head_dim], padding
  return (size_t)(group * n_ctx + head_dim + group * head_dim + 64);
}

static size_t row_bytes(enum ferry_type t, int64_t elems) {
  return t == FT_F32   ? (size_t)elems * 4
         : t == FT_F16 ? (size_t)elems * 2
                       : (size_t)(elems / Q8_BLCK) * Q8_SIZE;
}

// ---- conversion and vector helpers: scalar and AVX2 variants ----

static void cvt_row_scalar(float *dst, const void *src, enum ferry_type t, int64_t e0, int64_t n) {
  if (t == FT_F32) {
    memcpy(dst, (const float *)src + e0, (size_t)n * 4);
  } else if (t == FT_F16) {
    const uint16_t *h = (const uint16_t *)src + e0;
    for (int64_t i = 0; i < n; i++) dst[i] = ferry_f16_to_f32(h[i]);
  } else {
    for (int64_t i = 0; i < n; i++) {
      int64_t e = e0 + i;
      const uint8_t *blk = (const uint8_t *)src + e / Q8_BLCK * Q8_SIZE;
      uint16_t dh;
      memcpy(&dh, blk, 2);
      dst[i] = ferry_f16_to_f32(dh) * (float)(int8_t)blk[2 + e % Q8_BLCK];
    }
  }
}
static float dot_scalar(const float *a, const float *b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}
static void axpy_scalar(float *y, const float *x, float a, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) static void cvt_row_avx2(float *dst, const void *src,
                                                                  enum ferry_type t, int64_t e0,
                                                                  int64_t n) {
  if (t == FT_F16) {
    const uint16_t *h = (const uint16_t *)src + e0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) dst[i] = ferry_f16_to_f32(h[i]);
  } else {
    cvt_row_scalar(dst, src, t, e0, n);
  }
}
__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b,
                                                          int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8)
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  s0 = _mm256_add_ps(s0, s1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float s = _mm_cvtss_f32(h);
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}
__attribute__((target("avx2,fma"))) static void axpy_avx2(float *y, const float *x, float a,
                                                          int64_t n) {
  __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * x[i];
}
#endif

struct attn_fns {
  void (*cvt)(float *, const void *, enum ferry_type, int64_t, int64_t);
  float (*dot)(const float *, const float *, int64_t);
  void (*axpy)(float *, const float *, float, int64_t);
};

static const struct attn_fns *pick(void) {
  static struct attn_fns f;
  static int ready;
  if (!ready) {
    f = (struct attn_fns){cvt_row_scalar, dot_scalar, axpy_scalar};
#if defined(__x86_64__)
    __builtin_cpu_init();
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    bool f16c = (c >> 29) & 1;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)
      f = (struct attn_fns){cvt_row_avx2, dot_avx2, axpy_avx2};
#endif
    ready = 1;
  }
  return &f;
}

struct attn_ctx {
  const struct attn_fns *fn;
  float *out;
  const float *q;
  const uint8_t *kc, *vc;
  enum ferry_type t;
  int64_t pos0, n_head, n_kv_head, group, head_dim;
  size_t rb;
  float scale;
  float *scratch;
  size_t per_worker;
  int64_t n_ctx_max;
};

static void attn_task(void *vctx, int64_t b, int64_t e, int tid) {
  const struct attn_ctx *c = vctx;
  const struct attn_fns *fn = c->fn;
  int64_t G = c->group, D = c->head_dim;
  float *sc = c->scratch + (size_t)tid * c->per_worker;
  float *row = sc + G * c->n_ctx_max, *acc = row + D;
  for (int64_t task = b; task < e; task++) {
    int64_t t = task / c->n_kv_head, kvh = task % c->n_kv_head;
    int64_t n_ctx = c->pos0 + t + 1;
    const float *qg = c->q + (t * c->n_head + kvh * G) * D; // the group's query heads
    for (int64_t p = 0; p < n_ctx; p++) {
      fn->cvt(row, c->kc + (size_t)p * c->rb, c->t, kvh * D, D);
      for (int64_t g = 0; g < G; g++)
        sc[g * c->n_ctx_max + p] = fn->dot(qg + g * D, row, D) * c->scale;
    }
    for (int64_t g = 0; g < G; g++) {
      float *s = sc + g * c->n_ctx_max, mx = -INFINITY, sum = 0;
      for (int64_t p = 0; p < n_ctx; p++) mx = s[p] > mx ? s[p] : mx;
      for (int64_t p = 0; p < n_ctx; p++) sum += (s[p] = expf(s[p] - mx));
      float inv = 1.0f / sum;
      for (int64_t p = 0; p < n_ctx; p++) s[p] *= inv;
    }
    memset(acc, 0, sizeof(float) * G * D);
    for (int64_t p = 0; p < n_ctx; p++) {
      fn->cvt(row, c->vc + (size_t)p * c->rb, c->t, kvh * D, D);
      for (int64_t g = 0; g < G; g++) fn->axpy(acc + g * D, row, sc[g * c->n_ctx_max + p], D);
    }
    memcpy(c->out + (t * c->n_head + kvh * G) * D, acc, sizeof(float) * G * D);
  }
}

void cpu_attn_fast(struct ferry_pool *pool, float *out, const float *q, const void *kcache,
                   const void *vcache, enum ferry_type kv_type, int64_t n_tok, int64_t pos0,
                   int64_t n_head, int64_t n_kv_head, int64_t head_dim, int64_t kv_row_stride_elems,
                   float scale, float *scratch, int64_t n_ctx_max) {
  FERRY_ASSERT(kv_type == FT_F32 || kv_type == FT_F16 || kv_type == FT_Q8_0);
  FERRY_ASSERT(n_kv_head > 0 && n_head % n_kv_head == 0 && pos0 + n_tok <= n_ctx_max);
  struct attn_ctx c = {pick(),
                       out,
                       q,
                       kcache,
                       vcache,
                       kv_type,
                       pos0,
                       n_head,
                       n_kv_head,
                       n_head / n_kv_head,
                       head_dim,
                       row_bytes(kv_type, kv_row_stride_elems),
                       scale,
                       scratch,
                       cpu_attn_scratch_floats(n_ctx_max, n_head, n_kv_head, head_dim),
                       n_ctx_max};
  int64_t tasks = n_tok * n_kv_head;
  if (!pool)
    attn_task(&c, 0, tasks, 0);
  else
    ferry_pool_run(pool, tasks, 1, attn_task, &c);
}
