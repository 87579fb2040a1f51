// kernels/backend_cpu.c: the two CPU op tables behind kernels/backend.h.
//   "cpu": the engine's CPU backend. The fast kernels of kernels/cpu/ on the numa/ pool:
//          activations quantized to each weight's vec-dot type (FERRY_PREC_FAST), the
//          grouped-head attention, batched expert products, the multi-threaded DeltaNet
//          kernels; the exact path (FERRY_PREC_EXACT) dequantizes weights and sums in
//          double as the fixtures' exact references do.
//   "ref": the scalar references, single-threaded and always exact: what the op table
//          (tests/gpu/op_table.h) compares every other backend with.
// Memory is the host heap, streams and events are dummies (every op completes before it
// returns), graphs cannot be captured. The scratch of the fast paths is allocated once in
// reserve() from struct ferry_limits; no op allocates.
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/backend_impl.h"
#include "kernels/cpu/attn.h"
#include "kernels/cpu/deltanet.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quants.h"
#include "numa/pool.h"

struct cpu_impl {
  struct ferry_pool *pool; // NULL: single-threaded (always NULL for "ref")
  bool ref;
  bool sim; // "sim": device memory counted against sim_total
  uint64_t sim_total, sim_used;
  double sim_gbps; // host<->device copy pacing (0: none)
  pthread_mutex_t sim_mu;
  int workers;             // pool size (1 without a pool)
  struct ferry_limits lim; // what the scratch below is sized for
  uint64_t bytes;          // scratch bytes allocated
  uint8_t *scratch;        // one block; the pointers below point into it
  // matmul, fast path
  uint8_t *actq; // [max_tok] activation rows of up to max_in elements in a vec-dot format
  // attention, fast path
  float *attn; // [workers][cpu_attn_scratch_floats(n_ctx, ...)]
  size_t attn_per;
  // delta rule
  float *dn_chunk; // [workers][cpu_delta_chunk_scratch_floats(CPU_DELTA_CHUNK, dk, dv)]
  float *dn_decay; // [CPU_DELTA_CHUNK_MIN_T][Hv] exp(g) of the recurrent path
  // routed experts (pairs = max_tok * moe_k)
  uint8_t *qin;                   // [max_tok] token inputs quantized for gate, then for up
  uint8_t *xg_g, *xg_u;           // [pairs] quantized inputs in grouped order
  uint8_t *hq;                    // [pairs] quantized hidden rows
  float *eG, *eU;                 // [pairs][ff] gate / up outputs (fast); exact: [max_tok][ff]
  float *ex;                      // [max_tok][d] gathered F32 inputs (exact)
  struct cpu_mm_job *jobs;        // [2 * moe_n_expert]
  struct ferry_moe_group *groups; // [moe_n_expert] (moe_ffn_ids)
  int32_t *grp_cnt, *grp_off;     // [moe_n_expert + 1]
  int32_t *grp_rows;              // [pairs] token of each grouped row (moe_ffn_ids)
  size_t rb_qin;                  // bytes of one token's qin (gate + up rows)
};

#define IMPL(be) ((struct cpu_impl *)(be)->impl)
#define POOL(be) (IMPL(be)->pool)

// ---- sizes ----

// The widest vec-dot activation row of n elements over the weight types in the mask.
static size_t act_row_max(uint64_t types, int64_t n) {
  size_t best = (size_t)n * sizeof(float); // F32 weights: F32 activations
  for (int t = 0; t < FT_COUNT; t++) {
    if (!(types >> t & 1)) continue;
    const struct ferry_type_info *ti = ferry_type_info((uint32_t)t);
    if (!ti || !ti->weight) continue;
    const struct ferry_type_info *vi = ferry_type_info(cpu_vec_dot_type((enum ferry_type)t));
    int64_t nn = (n + vi->blck - 1) / vi->blck * vi->blck;
    size_t b = (size_t)ferry_row_bytes(vi, (uint64_t)nn);
    if (b > best) best = b;
  }
  return best;
}

// Lays out the scratch for lim at base (NULL: only counts). Returns the bytes needed.
static uint64_t layout(struct cpu_impl *c, const struct ferry_limits *lim, int workers,
                       uint8_t *base) {
  uint64_t off = 0;
#define TAKE(ptr, type, bytes)                                     \
  do {                                                             \
    uint64_t b_ = ferry_align_up((uint64_t)(bytes), 64);           \
    if (c) (ptr) = base ? (type)(void *)(base + off) : (type)NULL; \
    off += b_;                                                     \
  } while (0)
  struct cpu_impl dummy;
  if (!c) c = &dummy;
  const int64_t B = lim->max_tok > 0 ? lim->max_tok : 1;
  TAKE(c->actq, uint8_t *, (uint64_t)B * act_row_max(lim->weight_types, lim->max_in));
  c->attn_per = 0;
  if (lim->n_ctx > 0 && lim->n_head > 0 && lim->n_kv_head > 0) {
    c->attn_per = cpu_attn_scratch_floats(lim->n_ctx, lim->n_head, lim->n_kv_head, lim->head_dim);
    c->attn_per = ferry_align_up(c->attn_per, 16);
    TAKE(c->attn, float *, (uint64_t)workers * c->attn_per * sizeof(float));
  }
  if (lim->dn_hv > 0) {
    TAKE(
        c->dn_chunk, float *,
        (uint64_t)workers *cpu_delta_chunk_scratch_floats(CPU_DELTA_CHUNK, lim->dn_dk, lim->dn_dv) *
            sizeof(float));
    TAKE(c->dn_decay, float *, (uint64_t)CPU_DELTA_CHUNK_MIN_T * lim->dn_hv * sizeof(float));
  }
  if (lim->moe_k > 0 && lim->moe_n_expert > 0) {
    const int64_t pairs = B * lim->moe_k, d = lim->moe_d, ff = lim->moe_ff;
    const size_t rb_d = act_row_max(lim->weight_types, d);
    const size_t rb_ff = act_row_max(lim->weight_types, ff);
    c->rb_qin = 2 * rb_d;
    TAKE(c->qin, uint8_t *, (uint64_t)B * c->rb_qin);
    TAKE(c->xg_g, uint8_t *, (uint64_t)pairs * rb_d);
    TAKE(c->xg_u, uint8_t *, (uint64_t)pairs * rb_d);
    TAKE(c->hq, uint8_t *, (uint64_t)pairs * rb_ff);
    TAKE(c->eG, float *, (uint64_t)pairs *ff * sizeof(float));
    TAKE(c->eU, float *, (uint64_t)pairs *ff * sizeof(float));
    TAKE(c->ex, float *, (uint64_t)B *d * sizeof(float));
    TAKE(c->jobs, struct cpu_mm_job *, 2 * lim->moe_n_expert * sizeof(struct cpu_mm_job));
    TAKE(c->groups, struct ferry_moe_group *, lim->moe_n_expert * sizeof(struct ferry_moe_group));
    TAKE(c->grp_cnt, int32_t *, (lim->moe_n_expert + 1) * sizeof(int32_t));
    TAKE(c->grp_off, int32_t *, (lim->moe_n_expert + 1) * sizeof(int32_t));
    TAKE(c->grp_rows, int32_t *, pairs * sizeof(int32_t));
  }
#undef TAKE
  return off;
}

uint64_t cpu_backend_scratch_bytes(const struct ferry_limits *lim, int n_workers) {
  return layout(NULL, lim, n_workers, NULL);
}

// A second reserve grows the scratch to the larger of the two limits, field by field.
static void merge_limits(struct ferry_limits *a, const struct ferry_limits *b) {
  // the attention scratch grows with the query heads per KV head: keep the larger group
  if (b->n_kv_head > 0 &&
      (a->n_kv_head <= 0 || b->n_head / b->n_kv_head > a->n_head / a->n_kv_head))
    a->n_head = b->n_head, a->n_kv_head = b->n_kv_head;
#define MX(f) a->f = a->f > b->f ? a->f : b->f
  MX(n_threads), MX(max_tok), MX(max_in), MX(n_ctx), MX(head_dim);
  MX(moe_d), MX(moe_ff), MX(moe_k), MX(moe_n_expert), MX(dn_hk), MX(dn_hv), MX(dn_dk), MX(dn_dv);
#undef MX
  a->weight_types |= b->weight_types;
}

static int cpu_reserve(struct ferry_backend *be, const struct ferry_limits *req) {
  struct cpu_impl *c = IMPL(be);
  struct ferry_limits merged = c->lim, *lim = &merged;
  merge_limits(lim, req);
  const uint64_t need = layout(NULL, lim, c->workers, NULL);
  if (c->sim) { // the scratch is device memory of the simulated device
    pthread_mutex_lock(&c->sim_mu);
    const bool fits = c->sim_used - c->bytes + need <= c->sim_total;
    if (fits) c->sim_used = c->sim_used - c->bytes + need;
    pthread_mutex_unlock(&c->sim_mu);
    if (!fits)
      return ferry_fail(-ENOMEM, "sim device: no room for %llu bytes of scratch",
                        (unsigned long long)need);
  }
  uint8_t *p = need ? ferry_alloc_aligned(64, need) : NULL;
  if (need && !p) {
    char b[32];
    ferry_format_size(need, b, sizeof b);
    return ferry_fail(-ENOMEM, "cpu backend: cannot allocate %s of scratch", b);
  }
  ferry_free_aligned(c->scratch);
  c->scratch = p;
  c->bytes = need;
  c->lim = merged;
  layout(c, lim, c->workers, p);
  return 0;
}

// ---- memory, streams, events ----

static int cpu_mem_alloc(struct ferry_backend *be, void **out, size_t bytes) {
  *out = ferry_alloc_aligned(64, bytes ? bytes : 1);
  return *out ? 0 : ferry_fail(-ENOMEM, "cpu backend: cannot allocate %zu bytes", bytes);
}
static void cpu_mem_free(struct ferry_backend *be, void *p) { ferry_free_aligned(p); }
static int cpu_copy(struct ferry_backend *be, void *dst, const void *src, size_t bytes,
                    struct ferry_stream *s) {
  if (bytes) memmove(dst, src, bytes);
  return 0;
}
static int cpu_memset0(struct ferry_backend *be, void *dst, size_t bytes, struct ferry_stream *s) {
  if (bytes) memset(dst, 0, bytes);
  return 0;
}
static int cpu_host_register(struct ferry_backend *be, void *p, size_t bytes) { return 0; }
static int cpu_host_unregister(struct ferry_backend *be, void *p) { return 0; }
static int cpu_mem_info(struct ferry_backend *be, size_t *free_bytes, size_t *total_bytes) {
  *free_bytes = (size_t)ferry_mem_available_bytes();
  *total_bytes = 0;
  return 0;
}
// CPU ops finish before returning, so streams and events only need distinct non-NULL
// handles; one static byte serves all of them.
static char g_cpu_handle;
static int cpu_stream_create(struct ferry_backend *be, struct ferry_stream **out) {
  *out = (struct ferry_stream *)&g_cpu_handle;
  return 0;
}
static void cpu_stream_destroy(struct ferry_backend *be, struct ferry_stream *s) {}
static int cpu_stream_sync(struct ferry_backend *be, struct ferry_stream *s) { return 0; }
static int cpu_event_create(struct ferry_backend *be, struct ferry_event **out) {
  *out = (struct ferry_event *)&g_cpu_handle;
  return 0;
}
static void cpu_event_destroy(struct ferry_backend *be, struct ferry_event *ev) {}
static int cpu_event_record(struct ferry_backend *be, struct ferry_event *ev,
                            struct ferry_stream *s) {
  return 0;
}
static int cpu_stream_wait_event(struct ferry_backend *be, struct ferry_stream *s,
                                 struct ferry_event *ev) {
  return 0;
}
static int cpu_event_sync(struct ferry_backend *be, struct ferry_event *ev) { return 0; }
static float cpu_event_elapsed_ms(struct ferry_backend *be, struct ferry_event *a,
                                  struct ferry_event *b) {
  return -1.0f;
}
static int cpu_graph_begin(struct ferry_backend *be, struct ferry_stream *s) { return -ENOTSUP; }
static int cpu_graph_end(struct ferry_backend *be, struct ferry_stream *s,
                         struct ferry_graph **out) {
  *out = NULL;
  return ferry_fail(-ENOTSUP, "cpu backend: no graph capture");
}
static int cpu_graph_launch(struct ferry_backend *be, struct ferry_graph *g,
                            struct ferry_stream *s) {
  return ferry_fail(-ENOTSUP, "cpu backend: no graph capture");
}
static void cpu_graph_destroy(struct ferry_backend *be, struct ferry_graph *g) {}

// ---- checks ----

static int check_weight(enum ferry_type t, int64_t n, const char *what) {
  const struct ferry_type_info *ti = ferry_type_info(t);
  if (!ti || !ti->weight)
    return ferry_fail(-EINVAL, "cpu %s: type %d is not a weight type", what, (int)t);
  if (n <= 0 || n % ti->blck)
    return ferry_fail(-EINVAL, "cpu %s: row length %lld is not a multiple of %u", what,
                      (long long)n, ti->blck);
  return 0;
}

// The fast path's activations must fit what reserve() sized.
static int check_act(struct cpu_impl *c, enum ferry_type t, int64_t n, int64_t m,
                     const char *what) {
  if (!c->scratch || m > c->lim.max_tok || n > c->lim.max_in || !(c->lim.weight_types >> t & 1))
    return ferry_fail(-EINVAL,
                      "cpu %s: %lld x %lld %s activations exceed the reserved scratch "
                      "(call reserve with larger limits)",
                      what, (long long)m, (long long)n, ferry_type_info(t)->name);
  return 0;
}

// ---- matrix products ----

static int cpu_be_dequant(struct ferry_backend *be, enum ferry_type t, const void *src, float *dst,
                          int64_t n, struct ferry_stream *s) {
  int rc = check_weight(t, n, "dequant");
  if (rc) return rc;
  cpu_dequant_row(t, src, dst, n);
  return 0;
}

static int cpu_be_embed(struct ferry_backend *be, enum ferry_type t, const void *table,
                        uint64_t row_bytes, const int32_t *ids, int64_t n, int64_t d, float *out,
                        struct ferry_stream *s) {
  int rc = check_weight(t, d, "embed");
  if (rc) return rc;
  for (int64_t i = 0; i < n; i++)
    cpu_dequant_row(t, (const uint8_t *)table + (uint64_t)ids[i] * row_bytes, out + i * d, d);
  return 0;
}

static int cpu_be_matvec(struct ferry_backend *be, enum ferry_type t, const void *w, int64_t nrows,
                         int64_t n, const float *x, float *y, struct ferry_stream *s) {
  int rc = check_weight(t, n, "matvec");
  if (rc) return rc;
  cpu_matvec_exact(POOL(be), t, w, nrows, n, x, y);
  return 0;
}

static int cpu_be_matmul(struct ferry_backend *be, enum ferry_prec prec, enum ferry_type t,
                         const void *w, int64_t nrows, int64_t n, const float *x, int64_t ldx,
                         int64_t m, float *y, int64_t ldy, struct ferry_stream *s) {
  struct cpu_impl *c = IMPL(be);
  int rc = check_weight(t, n, "matmul");
  if (rc) return rc;
  if (ldx < n || ldy < nrows) return ferry_fail(-EINVAL, "cpu matmul: bad strides");
  if (prec == FERRY_PREC_EXACT || c->ref) {
    cpu_matmul_exact(c->pool, t, w, nrows, n, x, ldx, m, y, ldy);
    return 0;
  }
  if ((rc = check_act(c, t, n, m, "matmul"))) return rc;
  const enum ferry_type vt = cpu_vec_dot_type(t);
  const size_t rb = cpu_act_row_bytes(t, n);
  for (int64_t i = 0; i < m; i++) cpu_quantize_act(vt, x + i * ldx, c->actq + i * rb, n);
  cpu_matmul(c->pool, t, w, nrows, n, c->actq, rb, m, y, ldy);
  return 0;
}

static int cpu_be_matmul_grouped(struct ferry_backend *be, enum ferry_type t, const void *const *w,
                                 int64_t n_group, int64_t nrows, int64_t n, const float *x,
                                 int64_t ldx, const int32_t *rows, const int64_t *offs, float *y,
                                 int64_t ldy, struct ferry_stream *s) {
  int rc = check_weight(t, n, "matmul_grouped");
  if (rc) return rc;
  if (ldx < n || ldy < nrows || n_group <= 0 || offs[0] != 0)
    return ferry_fail(-EINVAL, "cpu matmul_grouped: bad strides or groups");
  for (int64_t g = 0; g < n_group; g++)
    if (offs[g + 1] < offs[g]) return ferry_fail(-EINVAL, "cpu matmul_grouped: offs not sorted");
  cpu_matmul_grouped(POOL(be), t, w, n_group, nrows, n, x, ldx, rows, offs, y, ldy);
  return 0;
}

// ---- routed experts ----

static int check_moe(struct cpu_impl *c, const struct ferry_moe_shape *sh, int64_t n_tok,
                     int64_t pairs, int n_group) {
  int rc;
  if ((rc = check_weight(sh->t_gate, sh->d, "moe")) ||
      (rc = check_weight(sh->t_up, sh->d, "moe")) || (rc = check_weight(sh->t_down, sh->ff, "moe")))
    return rc;
  const struct ferry_limits *l = &c->lim;
  const uint64_t types = (1ull << sh->t_gate) | (1ull << sh->t_up) | (1ull << sh->t_down);
  if (!c->scratch || n_tok > l->max_tok || pairs > l->max_tok * l->moe_k || sh->d > l->moe_d ||
      sh->ff > l->moe_ff || n_group > l->moe_n_expert || (types & ~l->weight_types))
    return ferry_fail(-EINVAL,
                      "cpu moe: %lld tokens, %lld pairs, %d experts of %lld x %lld exceed the "
                      "reserved scratch (call reserve with larger limits)",
                      (long long)n_tok, (long long)pairs, n_group, (long long)sh->ff,
                      (long long)sh->d);
  return 0;
}

// Exact: one expert at a time, its tokens' F32 rows gathered, products in double.
static void moe_exact(struct cpu_impl *c, const struct ferry_moe_shape *sh, const float *x,
                      const int32_t *rows, int n_group, const struct ferry_moe_group *g, float *y) {
  const int64_t d = sh->d, ff = sh->ff, B = c->lim.max_tok;
  for (int i = 0; i < n_group; i++) {
    // a group never has more rows than tokens (an expert appears once per token), but
    // split defensively so the [max_tok] buffers always suffice
    for (int32_t r0 = 0; r0 < g[i].cnt; r0 += (int32_t)B) {
      const int64_t cnt = g[i].cnt - r0 < B ? g[i].cnt - r0 : B, base = g[i].off + r0;
      for (int64_t r = 0; r < cnt; r++)
        memcpy(c->ex + r * d, x + (int64_t)rows[base + r] * d, d * sizeof(float));
      cpu_matmul_exact(c->pool, sh->t_gate, g[i].w[0], ff, d, c->ex, d, cnt, c->eG, ff);
      cpu_matmul_exact(c->pool, sh->t_up, g[i].w[1], ff, d, c->ex, d, cnt, c->eU, ff);
      cpu_swiglu(c->eG, c->eG, c->eU, cnt * ff);
      cpu_matmul_exact(c->pool, sh->t_down, g[i].w[2], d, ff, c->eG, ff, cnt, y + base * d, d);
    }
  }
}

// Fast: the gate and up products of every group in one pool call, then the down products
// in another. cpu_matmul_batch computes each row as a lone product would, so the result
// does not depend on how groups are batched.
static void moe_fast(struct cpu_impl *c, const struct ferry_moe_shape *sh, const float *x,
                     int64_t n_tok, bool x_changed, const int32_t *rows, int n_group,
                     const struct ferry_moe_group *g, float *y) {
  const int64_t d = sh->d, ff = sh->ff;
  const enum ferry_type vg = cpu_vec_dot_type(sh->t_gate), vu = cpu_vec_dot_type(sh->t_up);
  const size_t rbg = cpu_act_row_bytes(sh->t_gate, d), rbu = cpu_act_row_bytes(sh->t_up, d);
  if (x_changed)
    for (int64_t t = 0; t < n_tok; t++) {
      cpu_quantize_act(vg, x + t * d, c->qin + t * c->rb_qin, d);
      cpu_quantize_act(vu, x + t * d, c->qin + t * c->rb_qin + rbg, d);
    }
  struct cpu_mm_job *jobs = c->jobs;
  for (int i = 0; i < n_group; i++) {
    const int64_t p0 = g[i].off, cnt = g[i].cnt;
    for (int64_t r = p0; r < p0 + cnt; r++) {
      const uint8_t *q = c->qin + (int64_t)rows[r] * c->rb_qin;
      memcpy(c->xg_g + r * rbg, q, rbg);
      memcpy(c->xg_u + r * rbu, q + rbg, rbu);
    }
    jobs[2 * i] = (struct cpu_mm_job){sh->t_gate, g[i].w[0],       ff, d, c->xg_g + p0 * rbg, rbg,
                                      cnt,        c->eG + p0 * ff, ff};
    jobs[2 * i + 1] = (struct cpu_mm_job){sh->t_up, g[i].w[1],       ff, d, c->xg_u + p0 * rbu, rbu,
                                          cnt,      c->eU + p0 * ff, ff};
  }
  cpu_matmul_batch(c->pool, 2 * n_group, jobs);
  const enum ferry_type vd = cpu_vec_dot_type(sh->t_down);
  const size_t rbd = cpu_act_row_bytes(sh->t_down, ff);
  for (int i = 0; i < n_group; i++) {
    const int64_t p0 = g[i].off, cnt = g[i].cnt;
    cpu_swiglu(c->eG + p0 * ff, c->eG + p0 * ff, c->eU + p0 * ff, cnt * ff);
    for (int64_t r = p0; r < p0 + cnt; r++)
      cpu_quantize_act(vd, c->eG + r * ff, c->hq + r * rbd, ff);
    jobs[i] = (struct cpu_mm_job){sh->t_down, g[i].w[2], d,          ff, c->hq + p0 * rbd,
                                  rbd,        cnt,       y + p0 * d, d};
  }
  cpu_matmul_batch(c->pool, n_group, jobs);
}

static int cpu_be_moe_ffn(struct ferry_backend *be, enum ferry_prec prec,
                          const struct ferry_moe_shape *sh, const float *x, int64_t n_tok,
                          bool x_changed, const int32_t *rows, int n_group,
                          const struct ferry_moe_group *g, float *y, struct ferry_stream *s) {
  struct cpu_impl *c = IMPL(be);
  int64_t pairs = 0;
  for (int i = 0; i < n_group; i++) {
    if (g[i].off < 0 || g[i].cnt < 0) return ferry_fail(-EINVAL, "cpu moe_ffn: bad group");
    if (g[i].off + g[i].cnt > pairs) pairs = g[i].off + g[i].cnt;
  }
  int rc = check_moe(c, sh, n_tok, pairs, n_group);
  if (rc) return rc;
  if (prec == FERRY_PREC_EXACT || c->ref)
    moe_exact(c, sh, x, rows, n_group, g, y);
  else
    moe_fast(c, sh, x, n_tok, x_changed, rows, n_group, g, y);
  return 0;
}

static int cpu_be_moe_ffn_ids(struct ferry_backend *be, enum ferry_prec prec,
                              const struct ferry_moe_shape *sh, const struct ferry_moe_table *tab,
                              const float *x, int64_t n_tok, int64_t k, const int32_t *ids,
                              float *y, int32_t *map, struct ferry_stream *s) {
  struct cpu_impl *c = IMPL(be);
  const int64_t E = tab->n_expert, P = n_tok * k;
  int rc = check_moe(c, sh, n_tok, P, (int)E);
  if (rc) return rc;
  // Group the (token, slot) pairs by expert; a counting sort keeps token order inside a
  // group, as the stream path's grouping does.
  memset(c->grp_cnt, 0, (E + 1) * sizeof(int32_t));
  for (int64_t p = 0; p < P; p++) {
    if (ids[p] < 0 || ids[p] >= E)
      return ferry_fail(-EINVAL, "cpu moe_ffn_ids: expert id %d out of range", ids[p]);
    c->grp_cnt[ids[p]]++;
  }
  int n_group = 0;
  for (int64_t e = 0, acc = 0; e < E; e++) {
    c->grp_off[e] = (int32_t)acc;
    if (c->grp_cnt[e]) {
      struct ferry_moe_group *gr = &c->groups[n_group++];
      for (int q = 0; q < 3; q++) gr->w[q] = (const uint8_t *)tab->base[q] + e * tab->stride[q];
      gr->off = (int32_t)acc;
      gr->cnt = c->grp_cnt[e];
    }
    acc += c->grp_cnt[e];
    c->grp_cnt[e] = 0;
  }
  for (int64_t p = 0; p < P; p++) {
    const int32_t r = c->grp_off[ids[p]] + c->grp_cnt[ids[p]]++;
    c->grp_rows[r] = (int32_t)(p / k);
    map[p] = r;
  }
  if (prec == FERRY_PREC_EXACT || c->ref)
    moe_exact(c, sh, x, c->grp_rows, n_group, c->groups, y);
  else
    moe_fast(c, sh, x, n_tok, true, c->grp_rows, n_group, c->groups, y);
  return 0;
}

static int cpu_be_moe_combine(struct ferry_backend *be, float *y, const float *slots,
                              const int32_t *map, const float *w, int64_t n_tok, int64_t k,
                              int64_t d, struct ferry_stream *s) {
  for (int64_t t = 0; t < n_tok; t++) {
    float *yt = y + t * d;
    memset(yt, 0, d * sizeof(float));
    for (int64_t j = 0; j < k; j++) {
      const int64_t p = t * k + j;
      cpu_axpy(yt, slots + (int64_t)(map ? map[p] : p) * d, w[p], d);
    }
  }
  return 0;
}

// ---- small ops ----

static int cpu_be_rmsnorm(struct ferry_backend *be, float *y, const float *x, const float *w,
                          int64_t nrows, int64_t n, float eps, struct ferry_stream *s) {
  if (n <= 0 || nrows < 0) return ferry_fail(-EINVAL, "cpu rmsnorm: bad sizes");
  cpu_rmsnorm_rows(y, x, w, nrows, n, eps);
  return 0;
}

static int cpu_be_rope_neox(struct ferry_backend *be, float *x, int64_t n_tok, int64_t n_heads,
                            int64_t head_dim, int64_t n_rot, const int32_t *pos, float freq_base,
                            struct ferry_stream *s) {
  if (n_rot <= 0 || n_rot % 2 || n_rot > head_dim || n_heads <= 0 || n_tok < 0 || *pos < 0)
    return ferry_fail(-EINVAL, "cpu rope: bad sizes (n_rot %lld, head_dim %lld)", (long long)n_rot,
                      (long long)head_dim);
  cpu_rope_neox_rows(x, n_tok, n_heads, head_dim, n_rot, *pos, freq_base);
  return 0;
}

static int cpu_be_kv_store(struct ferry_backend *be, void *cache, enum ferry_type kv_type,
                           int64_t stride, const int32_t *pos, int64_t n_tok, const float *src,
                           int64_t n_elems, struct ferry_stream *s) {
  if (*pos < 0) return ferry_fail(-EINVAL, "cpu kv_store: negative position");
  return cpu_kv_store(cache, kv_type, stride, *pos, n_tok, src, n_elems);
}

static int cpu_be_attn(struct ferry_backend *be, enum ferry_prec prec, float *out, const float *q,
                       const void *kc, const void *vc, enum ferry_type kv_type, int64_t n_tok,
                       const int32_t *pos, int64_t n_head, int64_t n_kv_head, int64_t head_dim,
                       int64_t stride, float scale, struct ferry_stream *s) {
  struct cpu_impl *c = IMPL(be);
  if (kv_type != FT_F32 && kv_type != FT_F16 && kv_type != FT_Q8_0)
    return ferry_fail(-EINVAL, "cpu attention: KV type %d not supported", (int)kv_type);
  if (n_head <= 0 || n_kv_head <= 0 || n_head % n_kv_head || head_dim <= 0 ||
      stride < n_kv_head * head_dim || (kv_type == FT_Q8_0 && (head_dim % 32 || stride % 32)))
    return ferry_fail(-EINVAL, "cpu attention: bad shape (heads %lld/%lld, head_dim %lld)",
                      (long long)n_head, (long long)n_kv_head, (long long)head_dim);
  const int64_t pos0 = *pos;
  if (n_tok < 0 || pos0 < 0) return ferry_fail(-EINVAL, "cpu attention: bad positions");
  if (head_dim > 1024)
    return ferry_fail(-EINVAL, "cpu attention: head_dim %lld > 1024", (long long)head_dim);
  if (prec == FERRY_PREC_EXACT || c->ref) {
    cpu_attn_prefill(out, q, kc, vc, kv_type, n_tok, pos0, n_head, n_kv_head, head_dim, stride,
                     scale);
    return 0;
  }
  // the scratch holds, per worker, the scores of one KV head's query group over n_ctx
  if (!c->attn || pos0 + n_tok > c->lim.n_ctx ||
      cpu_attn_scratch_floats(c->lim.n_ctx, n_head, n_kv_head, head_dim) > c->attn_per)
    return ferry_fail(-EINVAL,
                      "cpu attention: %lld positions or its heads exceed the reserved scratch",
                      (long long)(pos0 + n_tok));
  cpu_attn_fast(c->pool, out, q, kc, vc, kv_type, n_tok, pos0, n_head, n_kv_head, head_dim, stride,
                scale, c->attn, c->lim.n_ctx);
  return 0;
}

static int cpu_be_swiglu(struct ferry_backend *be, float *y, const float *g, const float *u,
                         int64_t n, struct ferry_stream *s) {
  cpu_swiglu(y, g, u, n);
  return 0;
}

static int cpu_be_router_topk(struct ferry_backend *be, const float *logits, int64_t n_tok,
                              int64_t n_expert, int64_t k, int *ids, float *weights,
                              struct ferry_stream *s) {
  return cpu_router_topk_rows(logits, n_tok, n_expert, k, ids, weights);
}

static int cpu_be_add(struct ferry_backend *be, float *y, const float *a, const float *b, int64_t n,
                      struct ferry_stream *s) {
  cpu_add(y, a, b, n);
  return 0;
}
static int cpu_be_scale(struct ferry_backend *be, float *y, const float *x, float sc, int64_t n,
                        struct ferry_stream *s) {
  cpu_scale(y, x, sc, n);
  return 0;
}
static int cpu_be_axpy(struct ferry_backend *be, float *y, const float *x, float sc, int64_t n,
                       struct ferry_stream *s) {
  cpu_axpy(y, x, sc, n);
  return 0;
}
static int cpu_be_sigmoid_mul(struct ferry_backend *be, float *y, const float *x, const float *g,
                              int64_t n, struct ferry_stream *s) {
  cpu_sigmoid_mul(y, x, g, n);
  return 0;
}
static int cpu_be_gate_add_rows(struct ferry_backend *be, float *y, const float *x, const float *g,
                                int64_t n_rows, int64_t d, struct ferry_stream *s) {
  for (int64_t t = 0; t < n_rows; t++)
    cpu_axpy(y + t * d, x + t * d, 1.0f / (1.0f + expf(-g[t])), d);
  return 0;
}
static int cpu_be_copy2d(struct ferry_backend *be, float *dst, int64_t ldd, const float *src,
                         int64_t lds, int64_t nrows, int64_t ncols, struct ferry_stream *s) {
  if (ncols < 0 || nrows < 0 || ldd < ncols || lds < ncols)
    return ferry_fail(-EINVAL, "cpu copy2d: bad strides");
  for (int64_t r = 0; r < nrows; r++) memcpy(dst + r * ldd, src + r * lds, ncols * sizeof(float));
  return 0;
}

// ---- Gated DeltaNet ----

static int cpu_be_ssm_conv(struct ferry_backend *be, float *y, float *state, const float *u,
                           const float *w, int64_t T, int64_t C, int64_t K, int apply_silu,
                           struct ferry_stream *s) {
  if (K < 1 || K > 16 || T < 0 || C <= 0) return ferry_fail(-EINVAL, "cpu ssm_conv: bad shape");
  if (IMPL(be)->ref)
    cpu_ssm_conv_rows(y, state, u, w, T, C, K, apply_silu);
  else
    cpu_ssm_conv_rows_mt(POOL(be), y, state, u, w, T, C, K, apply_silu);
  return 0;
}

static int cpu_be_l2norm_heads(struct ferry_backend *be, float *x, int64_t ld, int64_t T,
                               int64_t n_heads, int64_t d, float eps, float scale,
                               struct ferry_stream *s) {
  if (ld < n_heads * d) return ferry_fail(-EINVAL, "cpu l2norm_heads: bad stride");
  for (int64_t t = 0; t < T; t++) cpu_l2norm_heads(x + t * ld, n_heads, d, eps, scale);
  return 0;
}

static int cpu_be_delta_gates(struct ferry_backend *be, float *beta, float *g, const float *b,
                              const float *a, const float *ssm_a, const float *dt_bias, int64_t T,
                              int64_t Hv, struct ferry_stream *s) {
  cpu_delta_gates(beta, g, NULL, b, a, ssm_a, dt_bias, T, Hv);
  return 0;
}

static int check_delta(int64_t Hk, int64_t Hv, int64_t dk, int64_t dv) {
  if (Hk <= 0 || Hv <= 0 || Hv % Hk || dk <= 0 || dv <= 0 || dk > CPU_DELTA_MAX_HEAD_DIM ||
      dv > CPU_DELTA_MAX_HEAD_DIM)
    return ferry_fail(-EINVAL, "cpu delta_rule: bad heads (%lld/%lld of %lld x %lld)",
                      (long long)Hk, (long long)Hv, (long long)dk, (long long)dv);
  return 0;
}

static int cpu_be_delta_rule(struct ferry_backend *be, float *o, int64_t ldo, float *S,
                             const float *q, int64_t ldq, const float *k, int64_t ldk,
                             const float *v, int64_t ldv, const float *beta, const float *g,
                             int64_t T, int64_t Hk, int64_t Hv, int64_t dk, int64_t dv,
                             struct ferry_stream *s) {
  struct cpu_impl *c = IMPL(be);
  int rc = check_delta(Hk, Hv, dk, dv);
  if (rc) return rc;
  if (c->ref) {
    // the exact recurrence, one token at a time
    float dec[256];
    if (Hv > 256) return ferry_fail(-EINVAL, "ref delta_rule: more than 256 v-heads");
    for (int64_t t = 0; t < T; t++) {
      for (int64_t h = 0; h < Hv; h++) dec[h] = expf(g[t * Hv + h]);
      cpu_delta_recurrent(NULL, o + t * ldo, ldo, S, q + t * ldq, ldq, k + t * ldk, ldk,
                          v + t * ldv, ldv, beta + t * Hv, dec, 1, Hk, Hv, dk, dv);
    }
    return 0;
  }
  if (!c->dn_chunk || Hv > c->lim.dn_hv || dk > c->lim.dn_dk || dv > c->lim.dn_dv)
    return ferry_fail(-EINVAL, "cpu delta_rule: heads exceed the reserved scratch");
  if (T >= CPU_DELTA_CHUNK_MIN_T) {
    cpu_delta_chunked_ws(c->pool, o, ldo, S, q, ldq, k, ldk, v, ldv, beta, g, T, Hk, Hv, dk, dv,
                         CPU_DELTA_CHUNK, c->dn_chunk);
    return 0;
  }
  for (int64_t i = 0; i < T * Hv; i++) c->dn_decay[i] = expf(g[i]);
  cpu_delta_recurrent(c->pool, o, ldo, S, q, ldq, k, ldk, v, ldv, beta, c->dn_decay, T, Hk, Hv, dk,
                      dv);
  return 0;
}

static int cpu_be_gated_rmsnorm(struct ferry_backend *be, float *y, const float *o, const float *z,
                                const float *w, int64_t n_heads, int64_t d, float eps,
                                struct ferry_stream *s) {
  if (IMPL(be)->ref)
    cpu_gated_rmsnorm_heads(y, o, z, w, n_heads, d, eps);
  else
    cpu_gated_rmsnorm_heads_mt(POOL(be), y, o, z, w, n_heads, d, eps);
  return 0;
}

static int cpu_be_ssm_in_regroup(struct ferry_backend *be, float *qkv, float *z, const float *p,
                                 int64_t T, int64_t nk, int64_t nv, int64_t dk, int64_t dv,
                                 struct ferry_stream *s) {
  if (nk <= 0 || nv % nk) return ferry_fail(-EINVAL, "cpu ssm_in_regroup: bad heads");
  cpu_ssm_in_regroup(qkv, z, p, T, nk, nv, dk, dv);
  return 0;
}

static int cpu_be_ssm_ba_regroup(struct ferry_backend *be, float *b, float *a, const float *p,
                                 int64_t T, int64_t nk, int64_t nv, struct ferry_stream *s) {
  if (nk <= 0 || nv % nk) return ferry_fail(-EINVAL, "cpu ssm_ba_regroup: bad heads");
  cpu_ssm_ba_regroup(b, a, p, T, nk, nv);
  return 0;
}

// ---------------------------------------------------------------------------------------
// "sim": the CPU kernels standing in for a GPU, so every device path of the engine (VRAM
// budgets, separate buffers, host<->device copies, copy streams and events) runs in CI.
// - Memory: its own "device" allocations, counted against a total (FERRY_SIM_VRAM, default
//   24 GiB; mem_info reports it); the engine treats them as device memory (it copies).
// - Streams: the NULL stream is synchronous. A created stream is a queue served by its own
//   copy thread: copies and memsets issued on it run there in order, paced at
//   FERRY_SIM_PCIE_GBPS (GB/s, 0 or unset: unpaced) for host<->device copies.
// - Compute ops run at once on the calling thread with the "cpu" kernels, after draining
//   the queue of the stream they were issued on (so stream order holds). Work on another
//   stream is only ordered by events: event_record marks a point in a stream's queue,
//   stream_wait_event on the NULL stream (or before a compute op) blocks until it passed.

#include <time.h>

struct sim_item {
  enum { SIM_COPY, SIM_ZERO, SIM_WAIT } kind;
  void *dst;
  const void *src;
  size_t bytes;
  bool paced;
  struct ferry_event *ev; // SIM_WAIT: the event to wait for
};

struct sim_stream {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct sim_item *q;       // ring of cap items
  uint64_t cap, head, tail; // items [head, tail) pending; tail counts every item ever queued
  bool stop;
  struct cpu_impl *c;
};

struct ferry_event {
  struct sim_stream *s; // NULL: complete
  uint64_t seq;         // complete once s->head >= seq
};

static void sim_pace(struct cpu_impl *c, size_t bytes, double t0) {
  if (c->sim_gbps <= 0) return;
  const double want = (double)bytes / (c->sim_gbps * 1e9), left = want - (ferry_now_s() - t0);
  if (left <= 0) return;
  struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
  nanosleep(&ts, NULL);
}

static bool sim_event_done(const struct ferry_event *ev) {
  if (!ev || !ev->s) return true;
  pthread_mutex_lock(&ev->s->mu);
  bool done = ev->s->head >= ev->seq;
  pthread_mutex_unlock(&ev->s->mu);
  return done;
}

static void sim_event_wait(struct ferry_event *ev) {
  if (!ev || !ev->s) return;
  struct sim_stream *s = ev->s;
  pthread_mutex_lock(&s->mu);
  while (s->head < ev->seq) pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
}

static void *sim_thread(void *arg) {
  struct sim_stream *s = arg;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (!s->stop && s->head == s->tail) pthread_cond_wait(&s->cv, &s->mu);
    if (s->head == s->tail && s->stop) break;
    struct sim_item it = s->q[s->head % s->cap];
    pthread_mutex_unlock(&s->mu);
    const double t0 = ferry_now_s();
    if (it.kind == SIM_COPY) {
      memmove(it.dst, it.src, it.bytes);
      if (it.paced) sim_pace(s->c, it.bytes, t0);
    } else if (it.kind == SIM_ZERO) {
      memset(it.dst, 0, it.bytes);
    } else {
      sim_event_wait(it.ev);
    }
    pthread_mutex_lock(&s->mu);
    s->head++;
    pthread_cond_broadcast(&s->cv);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

static void sim_drain(struct ferry_stream *st) {
  struct sim_stream *s = (struct sim_stream *)st;
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  while (s->head < s->tail) pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
}

static int sim_enqueue(struct ferry_stream *st, struct sim_item it) {
  struct sim_stream *s = (struct sim_stream *)st;
  pthread_mutex_lock(&s->mu);
  while (s->tail - s->head >= s->cap) pthread_cond_wait(&s->cv, &s->mu);
  s->q[s->tail % s->cap] = it;
  s->tail++;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return 0;
}

// Device allocations carry their size in a 64-byte header, for the total.
static int sim_mem_alloc(struct ferry_backend *be, void **out, size_t bytes) {
  struct cpu_impl *c = IMPL(be);
  *out = NULL;
  pthread_mutex_lock(&c->sim_mu);
  const bool fits = c->sim_used + bytes <= c->sim_total;
  if (fits) c->sim_used += bytes;
  pthread_mutex_unlock(&c->sim_mu);
  if (!fits) {
    char b1[32], b2[32];
    ferry_format_size(bytes, b1, sizeof b1);
    ferry_format_size(c->sim_total - c->sim_used, b2, sizeof b2);
    return ferry_fail(-ENOMEM, "sim device: cannot allocate %s (%s free)", b1, b2);
  }
  uint8_t *p = ferry_alloc_aligned(64, bytes + 64);
  if (!p) {
    pthread_mutex_lock(&c->sim_mu);
    c->sim_used -= bytes;
    pthread_mutex_unlock(&c->sim_mu);
    return ferry_fail(-ENOMEM, "sim device: out of host memory for %zu bytes", bytes);
  }
  memcpy(p, &bytes, sizeof bytes);
  *out = p + 64;
  return 0;
}
static void sim_mem_free(struct ferry_backend *be, void *p) {
  if (!p) return;
  struct cpu_impl *c = IMPL(be);
  uint8_t *h = (uint8_t *)p - 64;
  size_t bytes;
  memcpy(&bytes, h, sizeof bytes);
  pthread_mutex_lock(&c->sim_mu);
  c->sim_used -= bytes;
  pthread_mutex_unlock(&c->sim_mu);
  ferry_free_aligned(h);
}
static int sim_mem_info(struct ferry_backend *be, size_t *free_bytes, size_t *total_bytes) {
  struct cpu_impl *c = IMPL(be);
  pthread_mutex_lock(&c->sim_mu);
  *free_bytes = c->sim_total - c->sim_used;
  *total_bytes = c->sim_total;
  pthread_mutex_unlock(&c->sim_mu);
  return 0;
}
static int sim_copy(struct ferry_stream *s, void *dst, const void *src, size_t bytes, bool paced,
                    struct cpu_impl *c) {
  if (!bytes) return 0;
  if (s) return sim_enqueue(s, (struct sim_item){SIM_COPY, dst, src, bytes, paced, NULL});
  const double t0 = ferry_now_s();
  memmove(dst, src, bytes);
  if (paced) sim_pace(c, bytes, t0);
  return 0;
}
static int sim_copy_h2d(struct ferry_backend *be, void *dst, const void *src, size_t bytes,
                        struct ferry_stream *s) {
  return sim_copy(s, dst, src, bytes, true, IMPL(be));
}
static int sim_copy_d2h(struct ferry_backend *be, void *dst, const void *src, size_t bytes,
                        struct ferry_stream *s) {
  return sim_copy(s, dst, src, bytes, true, IMPL(be));
}
static int sim_copy_d2d(struct ferry_backend *be, void *dst, const void *src, size_t bytes,
                        struct ferry_stream *s) {
  return sim_copy(s, dst, src, bytes, false, IMPL(be));
}
static int sim_memset0(struct ferry_backend *be, void *dst, size_t bytes, struct ferry_stream *s) {
  if (!bytes) return 0;
  if (s) return sim_enqueue(s, (struct sim_item){SIM_ZERO, dst, NULL, bytes, false, NULL});
  memset(dst, 0, bytes);
  return 0;
}
static int sim_stream_create(struct ferry_backend *be, struct ferry_stream **out) {
  struct sim_stream *s = calloc(1, sizeof *s);
  if (!s) return ferry_fail(-ENOMEM, "sim: out of memory");
  s->cap = 1024;
  s->q = calloc(s->cap, sizeof *s->q);
  s->c = IMPL(be);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  if (!s->q || pthread_create(&s->thread, NULL, sim_thread, s)) {
    free(s->q);
    free(s);
    return ferry_fail(-ENOMEM, "sim: cannot start a copy thread");
  }
  *out = (struct ferry_stream *)s;
  return 0;
}
static void sim_stream_destroy(struct ferry_backend *be, struct ferry_stream *st) {
  struct sim_stream *s = (struct sim_stream *)st;
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  s->stop = true;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s->q);
  free(s);
}
static int sim_stream_sync(struct ferry_backend *be, struct ferry_stream *s) {
  sim_drain(s);
  return 0;
}
static int sim_event_create(struct ferry_backend *be, struct ferry_event **out) {
  *out = calloc(1, sizeof **out);
  return *out ? 0 : ferry_fail(-ENOMEM, "sim: out of memory");
}
static void sim_event_destroy(struct ferry_backend *be, struct ferry_event *ev) { free(ev); }
static int sim_event_record(struct ferry_backend *be, struct ferry_event *ev,
                            struct ferry_stream *st) {
  struct sim_stream *s = (struct sim_stream *)st;
  ev->s = s;
  if (s) {
    pthread_mutex_lock(&s->mu);
    ev->seq = s->tail;
    pthread_mutex_unlock(&s->mu);
  }
  return 0;
}
static int sim_stream_wait_event(struct ferry_backend *be, struct ferry_stream *s,
                                 struct ferry_event *ev) {
  if (sim_event_done(ev)) return 0;
  if (!s) {
    sim_event_wait(ev);
    return 0;
  }
  return sim_enqueue(s, (struct sim_item){SIM_WAIT, NULL, NULL, 0, false, ev});
}
static int sim_event_sync(struct ferry_backend *be, struct ferry_event *ev) {
  sim_event_wait(ev);
  return 0;
}

// Compute ops: drain the op's stream, then run the "cpu" kernel at once.
static int sim_dequant(struct ferry_backend *be, enum ferry_type t, const void *src, float *dst,
                       int64_t n, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_dequant(be, t, src, dst, n, s);
}

static int sim_embed(struct ferry_backend *be, enum ferry_type t, const void *table,
                     uint64_t row_bytes, const int32_t *ids, int64_t n, int64_t d, float *out,
                     struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_embed(be, t, table, row_bytes, ids, n, d, out, s);
}

static int sim_matvec(struct ferry_backend *be, enum ferry_type t, const void *w, int64_t nrows,
                      int64_t n, const float *x, float *y, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_matvec(be, t, w, nrows, n, x, y, s);
}

static int sim_matmul(struct ferry_backend *be, enum ferry_prec prec, enum ferry_type t,
                      const void *w, int64_t nrows, int64_t n, const float *x, int64_t ldx,
                      int64_t m, float *y, int64_t ldy, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_matmul(be, prec, t, w, nrows, n, x, ldx, m, y, ldy, s);
}

static int sim_matmul_grouped(struct ferry_backend *be, enum ferry_type t, const void *const *w,
                              int64_t n_group, int64_t nrows, int64_t n, const float *x,
                              int64_t ldx, const int32_t *rows, const int64_t *offs, float *y,
                              int64_t ldy, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_matmul_grouped(be, t, w, n_group, nrows, n, x, ldx, rows, offs, y, ldy, s);
}

static int sim_moe_ffn(struct ferry_backend *be, enum ferry_prec prec,
                       const struct ferry_moe_shape *sh, const float *x, int64_t n_tok,
                       bool x_changed, const int32_t *rows, int n_group,
                       const struct ferry_moe_group *g, float *y, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_moe_ffn(be, prec, sh, x, n_tok, x_changed, rows, n_group, g, y, s);
}

static int sim_moe_ffn_ids(struct ferry_backend *be, enum ferry_prec prec,
                           const struct ferry_moe_shape *sh, const struct ferry_moe_table *tab,
                           const float *x, int64_t n_tok, int64_t k, const int32_t *ids, float *y,
                           int32_t *map, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_moe_ffn_ids(be, prec, sh, tab, x, n_tok, k, ids, y, map, s);
}

static int sim_moe_combine(struct ferry_backend *be, float *y, const float *slots,
                           const int32_t *map, const float *w, int64_t n_tok, int64_t k, int64_t d,
                           struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_moe_combine(be, y, slots, map, w, n_tok, k, d, s);
}

static int sim_rmsnorm(struct ferry_backend *be, float *y, const float *x, const float *w,
                       int64_t nrows, int64_t n, float eps, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_rmsnorm(be, y, x, w, nrows, n, eps, s);
}

static int sim_rope_neox(struct ferry_backend *be, float *x, int64_t n_tok, int64_t n_heads,
                         int64_t head_dim, int64_t n_rot, const int32_t *pos, float freq_base,
                         struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_rope_neox(be, x, n_tok, n_heads, head_dim, n_rot, pos, freq_base, s);
}

static int sim_kv_store(struct ferry_backend *be, void *cache, enum ferry_type kv_type,
                        int64_t stride, const int32_t *pos, int64_t n_tok, const float *src,
                        int64_t n_elems, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_kv_store(be, cache, kv_type, stride, pos, n_tok, src, n_elems, s);
}

static int sim_attn(struct ferry_backend *be, enum ferry_prec prec, float *out, const float *q,
                    const void *kc, const void *vc, enum ferry_type kv_type, int64_t n_tok,
                    const int32_t *pos, int64_t n_head, int64_t n_kv_head, int64_t head_dim,
                    int64_t stride, float scale, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_attn(be, prec, out, q, kc, vc, kv_type, n_tok, pos, n_head, n_kv_head, head_dim,
                     stride, scale, s);
}

static int sim_swiglu(struct ferry_backend *be, float *y, const float *g, const float *u, int64_t n,
                      struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_swiglu(be, y, g, u, n, s);
}

static int sim_router_topk(struct ferry_backend *be, const float *logits, int64_t n_tok,
                           int64_t n_expert, int64_t k, int *ids, float *weights,
                           struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_router_topk(be, logits, n_tok, n_expert, k, ids, weights, s);
}

static int sim_add(struct ferry_backend *be, float *y, const float *a, const float *b, int64_t n,
                   struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_add(be, y, a, b, n, s);
}

static int sim_scale(struct ferry_backend *be, float *y, const float *x, float sc, int64_t n,
                     struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_scale(be, y, x, sc, n, s);
}

static int sim_axpy(struct ferry_backend *be, float *y, const float *x, float sc, int64_t n,
                    struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_axpy(be, y, x, sc, n, s);
}

static int sim_sigmoid_mul(struct ferry_backend *be, float *y, const float *x, const float *g,
                           int64_t n, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_sigmoid_mul(be, y, x, g, n, s);
}

static int sim_gate_add_rows(struct ferry_backend *be, float *y, const float *x, const float *g,
                             int64_t n_rows, int64_t d, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_gate_add_rows(be, y, x, g, n_rows, d, s);
}

static int sim_copy2d(struct ferry_backend *be, float *dst, int64_t ldd, const float *src,
                      int64_t lds, int64_t nrows, int64_t ncols, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_copy2d(be, dst, ldd, src, lds, nrows, ncols, s);
}

static int sim_ssm_conv(struct ferry_backend *be, float *y, float *state, const float *u,
                        const float *w, int64_t T, int64_t C, int64_t K, int apply_silu,
                        struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_ssm_conv(be, y, state, u, w, T, C, K, apply_silu, s);
}

static int sim_l2norm_heads(struct ferry_backend *be, float *x, int64_t ld, int64_t T,
                            int64_t n_heads, int64_t d, float eps, float scale,
                            struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_l2norm_heads(be, x, ld, T, n_heads, d, eps, scale, s);
}

static int sim_delta_gates(struct ferry_backend *be, float *beta, float *g, const float *b,
                           const float *a, const float *ssm_a, const float *dt_bias, int64_t T,
                           int64_t Hv, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_delta_gates(be, beta, g, b, a, ssm_a, dt_bias, T, Hv, s);
}

static int sim_delta_rule(struct ferry_backend *be, float *o, int64_t ldo, float *S, const float *q,
                          int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                          const float *beta, const float *g, int64_t T, int64_t Hk, int64_t Hv,
                          int64_t dk, int64_t dv, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_delta_rule(be, o, ldo, S, q, ldq, k, ldk, v, ldv, beta, g, T, Hk, Hv, dk, dv, s);
}

static int sim_gated_rmsnorm(struct ferry_backend *be, float *y, const float *o, const float *z,
                             const float *w, int64_t n_heads, int64_t d, float eps,
                             struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_gated_rmsnorm(be, y, o, z, w, n_heads, d, eps, s);
}

static int sim_ssm_in_regroup(struct ferry_backend *be, float *qkv, float *z, const float *p,
                              int64_t T, int64_t nk, int64_t nv, int64_t dk, int64_t dv,
                              struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_ssm_in_regroup(be, qkv, z, p, T, nk, nv, dk, dv, s);
}

static int sim_ssm_ba_regroup(struct ferry_backend *be, float *b, float *a, const float *p,
                              int64_t T, int64_t nk, int64_t nv, struct ferry_stream *s) {
  sim_drain(s);
  return cpu_be_ssm_ba_regroup(be, b, a, p, T, nk, nv, s);
}

// ---- tables and lifetime ----

#define CPU_OPS_COMMON                                                                             \
  .mem_alloc = cpu_mem_alloc, .mem_free = cpu_mem_free, .copy_h2d = cpu_copy,                      \
  .copy_d2h = cpu_copy, .copy_d2d = cpu_copy, .memset0 = cpu_memset0, .host_alloc = cpu_mem_alloc, \
  .host_free = cpu_mem_free, .host_register = cpu_host_register,                                   \
  .host_unregister = cpu_host_unregister, .mem_info = cpu_mem_info, .reserve = cpu_reserve,        \
  .stream_create = cpu_stream_create, .stream_destroy = cpu_stream_destroy,                        \
  .stream_sync = cpu_stream_sync, .event_create = cpu_event_create,                                \
  .event_destroy = cpu_event_destroy, .event_record = cpu_event_record,                            \
  .stream_wait_event = cpu_stream_wait_event, .event_sync = cpu_event_sync,                        \
  .event_elapsed_ms = cpu_event_elapsed_ms, .graph_begin = cpu_graph_begin,                        \
  .graph_end = cpu_graph_end, .graph_launch = cpu_graph_launch,                                    \
  .graph_destroy = cpu_graph_destroy, .dequant = cpu_be_dequant, .embed = cpu_be_embed,            \
  .matvec = cpu_be_matvec, .matmul = cpu_be_matmul, .matmul_grouped = cpu_be_matmul_grouped,       \
  .moe_ffn = cpu_be_moe_ffn, .moe_ffn_ids = cpu_be_moe_ffn_ids, .moe_combine = cpu_be_moe_combine, \
  .rmsnorm = cpu_be_rmsnorm, .rope_neox = cpu_be_rope_neox, .kv_store = cpu_be_kv_store,           \
  .attn = cpu_be_attn, .swiglu = cpu_be_swiglu, .router_topk = cpu_be_router_topk,                 \
  .add = cpu_be_add, .scale = cpu_be_scale, .axpy = cpu_be_axpy,                                   \
  .sigmoid_mul = cpu_be_sigmoid_mul, .gate_add_rows = cpu_be_gate_add_rows,                        \
  .copy2d = cpu_be_copy2d, .ssm_conv = cpu_be_ssm_conv, .l2norm_heads = cpu_be_l2norm_heads,       \
  .delta_gates = cpu_be_delta_gates, .delta_rule = cpu_be_delta_rule,                              \
  .gated_rmsnorm = cpu_be_gated_rmsnorm, .ssm_in_regroup = cpu_be_ssm_in_regroup,                  \
  .ssm_ba_regroup = cpu_be_ssm_ba_regroup

// One function table; "ref" differs only in its impl (ref = true, no pool).
const struct ferry_backend_ops ferry_cpu_ops = {CPU_OPS_COMMON};
const struct ferry_backend_ops ferry_ref_ops = {CPU_OPS_COMMON};
const struct ferry_backend_ops ferry_sim_ops = {.mem_alloc = sim_mem_alloc,
                                                .mem_free = sim_mem_free,
                                                .copy_h2d = sim_copy_h2d,
                                                .copy_d2h = sim_copy_d2h,
                                                .copy_d2d = sim_copy_d2d,
                                                .memset0 = sim_memset0,
                                                .host_alloc = cpu_mem_alloc,
                                                .host_free = cpu_mem_free,
                                                .host_register = cpu_host_register,
                                                .host_unregister = cpu_host_unregister,
                                                .mem_info = sim_mem_info,
                                                .reserve = cpu_reserve,
                                                .stream_create = sim_stream_create,
                                                .stream_destroy = sim_stream_destroy,
                                                .stream_sync = sim_stream_sync,
                                                .event_create = sim_event_create,
                                                .event_destroy = sim_event_destroy,
                                                .event_record = sim_event_record,
                                                .stream_wait_event = sim_stream_wait_event,
                                                .event_sync = sim_event_sync,
                                                .event_elapsed_ms = cpu_event_elapsed_ms,
                                                .graph_begin = cpu_graph_begin,
                                                .graph_end = cpu_graph_end,
                                                .graph_launch = cpu_graph_launch,
                                                .graph_destroy = cpu_graph_destroy,
#define SIM_OP_(E, f) .f = sim_##f,
                                                FERRY_OP_LIST(SIM_OP_)
#undef SIM_OP_
};

int cpu_backend_init(struct ferry_backend *be, struct ferry_pool *pool, enum cpu_flavour fl) {
  struct cpu_impl *c = calloc(1, sizeof *c);
  if (!c) return ferry_fail(-ENOMEM, "cpu backend: out of memory");
  c->ref = fl == CPU_REF;
  c->sim = fl == CPU_SIM;
  c->pool = c->ref ? NULL : pool;
  c->workers = c->pool ? ferry_pool_size(c->pool) : 1;
  be->name = fl == CPU_REF ? "ref" : fl == CPU_SIM ? "sim" : "cpu";
  be->kind = fl == CPU_SIM ? FERRY_BACKEND_SIM : FERRY_BACKEND_CPU;
  be->ops = fl == CPU_REF ? ferry_ref_ops : fl == CPU_SIM ? ferry_sim_ops : ferry_cpu_ops;
  be->kv_types = 1u << FT_F32 | 1u << FT_F16 | 1u << FT_Q8_0;
  be->impl = c;
  if (c->sim) {
    pthread_mutex_init(&c->sim_mu, NULL);
    c->sim_total = 24ull << 30;
    const char *v = getenv("FERRY_SIM_VRAM"), *g = getenv("FERRY_SIM_PCIE_GBPS");
    if (v && *v && ferry_parse_size(v, &c->sim_total)) {
      free(c);
      return ferry_fail(-EINVAL, "FERRY_SIM_VRAM: '%s' is not a size", v);
    }
    if (g && *g) {
      char *end;
      c->sim_gbps = strtod(g, &end);
      if (*end || !(c->sim_gbps >= 0)) {
        free(c);
        return ferry_fail(-EINVAL, "FERRY_SIM_PCIE_GBPS: '%s' is not a rate in GB/s", g);
      }
    }
  }
  return 0;
}

void cpu_backend_describe_sim(const struct ferry_backend *be, char *buf, size_t n) {
  const struct cpu_impl *c = IMPL(be);
  char b[32];
  ferry_format_size(c->sim_total, b, sizeof b);
  if (c->sim_gbps > 0)
    snprintf(buf, n, "sim (CPU kernels as a %s device, copies paced at %.1f GB/s)", b, c->sim_gbps);
  else
    snprintf(buf, n, "sim (CPU kernels as a %s device, copies unpaced)", b);
}

void cpu_backend_fini(struct ferry_backend *be) {
  struct cpu_impl *c = IMPL(be);
  if (!c) return;
  if (c->sim) pthread_mutex_destroy(&c->sim_mu);
  ferry_free_aligned(c->scratch);
  free(c);
  be->impl = NULL;
}

uint64_t cpu_backend_reserved(const struct ferry_backend *be) { return IMPL(be)->bytes; }
struct ferry_pool *cpu_backend_pool(const struct ferry_backend *be) {
  return IMPL(be)->pool;
}
