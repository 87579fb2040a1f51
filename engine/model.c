// engine/model.c: a model's weights, state and memory plan: binding the GGUF tensors to
// views (shapes checked against the hyperparameters), sizing and allocating state and
// forward buffers in the backend's memory, and reading the weights through io/ (O_DIRECT,
// several large reads in flight; through pinned staging buffers when the backend's memory
// is not host memory). The forward pass itself is in forward.c, qwen3moe.c, qwen3next.c.
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "base/base.h"
#include "engine/model_impl.h"
#include "io/reader.h"
#include "numa/topo.h"

// ---------------------------------------------------------------------------------------
// weight binding

static int bind(struct model *m, struct weight *w, bool required, int64_t ne0, int64_t ne1,
                int64_t ne2, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static int bind(struct model *m, struct weight *w, bool required, int64_t ne0, int64_t ne1,
                int64_t ne2, const char *fmt, ...) {
  char name[128];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  memset(w, 0, sizeof *w);
  const struct gguf_tensor *t = gguf_find_tensor(m->f, name);
  if (!t) {
    if (!required) return 0;
    return ferry_fail(-EINVAL, "%s: missing tensor '%s'", gguf_path(m->f), name);
  }
  // 1-D vectors may be stored as {n} or {n, 1}.
  int64_t want[3] = {ne0, ne1, ne2};
  for (int i = 0; i < 3; i++) {
    if ((int64_t)t->ne[i] != want[i] || t->ne[3] != 1)
      return ferry_fail(
          -EINVAL, "%s: tensor '%s' has shape [%llu, %llu, %llu], expected [%lld, %lld, %lld]",
          gguf_path(m->f), name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
          (unsigned long long)t->ne[2], (long long)ne0, (long long)ne1, (long long)ne2);
  }
  w->t = t;
  w->type = (enum ferry_type)t->type;
  w->n = (int64_t)t->ne[0];
  w->nrows = (int64_t)t->ne[1];
  w->nb1 = t->nb1;
  w->nb2 = t->nb2;
  return 0;
}

// Small vectors (norms, biases, gates) are used as F32 arrays; they must be F32 unless
// the caller handles other types.
static int need_f32(struct model *m, const struct weight *w) {
  if (w->t && w->type != FT_F32)
    return ferry_fail(-EINVAL, "%s: tensor '%s' must be f32, is %s", gguf_path(m->f), w->t->name,
                      ferry_type_info(w->type)->name);
  return 0;
}

static int bind_attention(struct model *m, struct layer_weights *L, uint32_t l) {
  const struct model_hparams *hp = &m->hp;
  const bool next = hp->arch == ARCH_QWEN3NEXT;
  const int64_t d = hp->n_embd, hd = hp->head_dim, H = hp->n_head, Hkv = hp->n_head_kv;
  const int64_t qdim = next ? 2 * H * hd : H * hd; // qwen3next: per head [query | gate]
  int rc;
  if ((rc = bind(m, &L->wq, true, d, qdim, 1, "blk.%u.attn_q.weight", l)) ||
      (rc = bind(m, &L->wk, true, d, Hkv * hd, 1, "blk.%u.attn_k.weight", l)) ||
      (rc = bind(m, &L->wv, true, d, Hkv * hd, 1, "blk.%u.attn_v.weight", l)) ||
      (rc = bind(m, &L->wo, true, H * hd, d, 1, "blk.%u.attn_output.weight", l)) ||
      (rc = bind(m, &L->q_norm, true, hd, 1, 1, "blk.%u.attn_q_norm.weight", l)) ||
      (rc = bind(m, &L->k_norm, true, hd, 1, 1, "blk.%u.attn_k_norm.weight", l)) ||
      (rc = need_f32(m, &L->q_norm)) || (rc = need_f32(m, &L->k_norm)))
    return rc;
  return 0;
}

static int bind_deltanet(struct model *m, struct layer_weights *L, uint32_t l) {
  const struct model_hparams *hp = &m->hp;
  const int64_t d = hp->n_embd, nk = hp->ssm_n_k_heads, nv = hp->ssm_n_v_heads;
  const int64_t dk = hp->ssm_head_k, dv = hp->ssm_head_v;
  const int64_t key_dim = nk * dk, value_dim = nv * dv, conv_dim = 2 * key_dim + value_dim;
  int rc;
  if (hp->legacy_layout) {
    if ((rc = bind(m, &L->ssm_in, true, d, conv_dim + value_dim, 1, "blk.%u.ssm_in.weight", l)))
      return rc;
  } else if ((rc = bind(m, &L->attn_qkv, true, d, conv_dim, 1, "blk.%u.attn_qkv.weight", l)) ||
             (rc = bind(m, &L->attn_gate, true, d, value_dim, 1, "blk.%u.attn_gate.weight", l))) {
    return rc;
  }
  if ((rc = bind(m, &L->ssm_ba, true, d, 2 * nv, 1, "blk.%u.ssm_ba.weight", l)) ||
      (rc = bind(m, &L->ssm_conv1d, true, hp->ssm_conv_k, conv_dim, 1, "blk.%u.ssm_conv1d.weight",
                 l)) ||
      (rc = bind(m, &L->ssm_dt, true, nv, 1, 1, "blk.%u.ssm_dt.bias", l)) ||
      (rc = bind(m, &L->ssm_a, true, nv, 1, 1, "blk.%u.ssm_a", l)) ||
      (rc = bind(m, &L->ssm_norm, true, dv, 1, 1, "blk.%u.ssm_norm.weight", l)) ||
      (rc = bind(m, &L->ssm_out, true, value_dim, d, 1, "blk.%u.ssm_out.weight", l)) ||
      (rc = need_f32(m, &L->ssm_conv1d)) || (rc = need_f32(m, &L->ssm_dt)) ||
      (rc = need_f32(m, &L->ssm_a)) || (rc = need_f32(m, &L->ssm_norm)))
    return rc;
  return 0;
}

static int bind_moe(struct model *m, struct layer_weights *L, uint32_t l) {
  const struct model_hparams *hp = &m->hp;
  const int64_t d = hp->n_embd, E = hp->n_expert, ff = hp->n_ff_exp;
  int rc;
  if ((rc = bind(m, &L->router, true, d, E, 1, "blk.%u.ffn_gate_inp.weight", l)) ||
      (rc = bind(m, &L->exps[EXP_GATE], true, d, ff, E, "blk.%u.ffn_gate_exps.weight", l)) ||
      (rc = bind(m, &L->exps[EXP_UP], true, d, ff, E, "blk.%u.ffn_up_exps.weight", l)) ||
      (rc = bind(m, &L->exps[EXP_DOWN], true, ff, d, E, "blk.%u.ffn_down_exps.weight", l)))
    return rc;
  if (hp->arch == ARCH_QWEN3NEXT) {
    const int64_t sff = hp->n_ff_shexp;
    if ((rc = bind(m, &L->sh_gate, true, d, sff, 1, "blk.%u.ffn_gate_shexp.weight", l)) ||
        (rc = bind(m, &L->sh_up, true, d, sff, 1, "blk.%u.ffn_up_shexp.weight", l)) ||
        (rc = bind(m, &L->sh_down, true, sff, d, 1, "blk.%u.ffn_down_shexp.weight", l)) ||
        (rc = bind(m, &L->sh_gate_inp, true, d, 1, 1, "blk.%u.ffn_gate_inp_shexp.weight", l)))
      return rc;
  }
  return 0;
}

static int bind_all(struct model *m) {
  const struct model_hparams *hp = &m->hp;
  const int64_t d = hp->n_embd, V = hp->n_vocab;
  const bool next = hp->arch == ARCH_QWEN3NEXT;
  int rc;
  if ((rc = bind(m, &m->token_embd, true, d, V, 1, "token_embd.weight")) ||
      (rc = bind(m, &m->output_norm, true, d, 1, 1, "output_norm.weight")) ||
      (rc = bind(m, &m->output, false, d, V, 1, "output.weight")) ||
      (rc = need_f32(m, &m->output_norm)))
    return rc;
  if (!m->output.t) m->output = m->token_embd; // tied embeddings
  m->layers = calloc(hp->n_layer, sizeof *m->layers);
  if (!m->layers) return ferry_fail(-ENOMEM, "out of memory");
  for (uint32_t l = 0; l < hp->n_layer; l++) {
    struct layer_weights *L = &m->layers[l];
    const bool rec = next && hp->recurrent[l];
    if ((rc = bind(m, &L->attn_norm, true, d, 1, 1, "blk.%u.attn_norm.weight", l)) ||
        (rc = bind(m, &L->ffn_norm, true, d, 1, 1,
                   next ? "blk.%u.post_attention_norm.weight" : "blk.%u.ffn_norm.weight", l)) ||
        (rc = need_f32(m, &L->attn_norm)) || (rc = need_f32(m, &L->ffn_norm)) ||
        (rc = rec ? bind_deltanet(m, L, l) : bind_attention(m, L, l)) || (rc = bind_moe(m, L, l)))
      return rc;
  }
  return 0;
}

static bool is_routed(const struct gguf_tensor *t) { return strstr(t->name, "_exps.") != NULL; }

// Every weight view of the model, for passes over all of them.
static int weight_views(struct model *m, struct weight **out, int cap) {
  int n = 0;
  out[n++] = &m->token_embd, out[n++] = &m->output_norm, out[n++] = &m->output;
  const int per = sizeof(struct layer_weights) / sizeof(struct weight);
  for (uint32_t l = 0; l < m->hp.n_layer; l++) {
    struct weight *w = (struct weight *)&m->layers[l];
    for (int j = 0; j < per; j++) {
      FERRY_ASSERT(n < cap);
      out[n++] = &w[j];
    }
  }
  return n;
}

// ---------------------------------------------------------------------------------------
// sizes

static bool layer_recurrent(const struct model_hparams *hp, uint32_t l) {
  return hp->arch == ARCH_QWEN3NEXT && hp->recurrent[l];
}
static uint64_t conv_state_bytes(const struct model_hparams *hp) {
  const uint64_t conv_dim = 2ull * hp->ssm_n_k_heads * hp->ssm_head_k + hp->ssm_inner;
  return ferry_align_up(4ull * (hp->ssm_conv_k - 1) * conv_dim, 256);
}
static uint64_t ssm_state_bytes(const struct model_hparams *hp) {
  return ferry_align_up(4ull * hp->ssm_n_v_heads * hp->ssm_head_k * hp->ssm_head_v, 256);
}
static uint64_t kv_bytes(const struct model_hparams *hp, int n_ctx, enum ferry_type t) {
  const uint64_t row = (uint64_t)hp->n_head_kv * hp->head_dim;
  return ferry_align_up((uint64_t)n_ctx * ferry_row_bytes(ferry_type_info(t), row), 256);
}
// The recurrent part of the state (what a checkpoint copies).
static uint64_t recurrent_bytes(const struct model_hparams *hp) {
  uint64_t total = 0;
  for (uint32_t l = 0; l < hp->n_layer; l++)
    if (layer_recurrent(hp, l)) total += conv_state_bytes(hp) + ssm_state_bytes(hp);
  return total;
}
static uint64_t state_bytes(const struct model_hparams *hp, int n_ctx, enum ferry_type kv_k,
                            enum ferry_type kv_v) {
  uint64_t total = recurrent_bytes(hp);
  for (uint32_t l = 0; l < hp->n_layer; l++)
    if (!layer_recurrent(hp, l)) total += kv_bytes(hp, n_ctx, kv_k) + kv_bytes(hp, n_ctx, kv_v);
  return total;
}

// Resident weights: each region of the file (runs of tensors to load, see plan_regions) is
// placed at a 4096-aligned address plus its start's offset within a page, so host-memory
// backends can read straight into it with O_DIRECT.
struct region {
  uint64_t off, len; // file range
  uint64_t at;       // offset in wmem of the byte at `off`
};

// Gaps below this between two tensors to load are read rather than skipped.
#define REGION_GAP (64u << 10)

static int plan_regions(const struct gguf_file *f, bool dense_only, struct region **out, int *n_out,
                        uint64_t *bytes) {
  const int64_t nt = gguf_n_tensors(f);
  struct region *r = calloc(nt ? nt : 1, sizeof *r);
  if (!r) return ferry_fail(-ENOMEM, "out of memory");
  // tensors in file order (the reader already validated that they do not overlap)
  int64_t *order = malloc((nt ? nt : 1) * sizeof *order);
  if (!order) {
    free(r);
    return ferry_fail(-ENOMEM, "out of memory");
  }
  int64_t no = 0;
  for (int64_t i = 0; i < nt; i++)
    if (!(dense_only && is_routed(gguf_tensor_at(f, i)))) order[no++] = i;
  for (int64_t i = 1; i < no; i++) { // insertion sort by offset (tensors are mostly in order)
    int64_t v = order[i], j = i;
    while (j > 0 &&
           gguf_tensor_at(f, order[j - 1])->abs_offset > gguf_tensor_at(f, v)->abs_offset) {
      order[j] = order[j - 1];
      j--;
    }
    order[j] = v;
  }
  int n = 0;
  for (int64_t i = 0; i < no; i++) {
    const struct gguf_tensor *t = gguf_tensor_at(f, order[i]);
    if (n && t->abs_offset <= r[n - 1].off + r[n - 1].len + REGION_GAP) {
      const uint64_t end = t->abs_offset + t->nbytes;
      if (end > r[n - 1].off + r[n - 1].len) r[n - 1].len = end - r[n - 1].off;
      continue;
    }
    // A region's aligned span ends at align_up(at + len): the next one starts after it.
    const uint64_t base = n ? ferry_align_up(r[n - 1].at + r[n - 1].len, IO_ALIGN) : 0;
    r[n++] = (struct region){
        .off = t->abs_offset, .len = t->nbytes, .at = base + t->abs_offset % IO_ALIGN};
  }
  *bytes = n ? ferry_align_up(r[n - 1].at + r[n - 1].len, IO_ALIGN) : 0;
  free(order);
  *out = r;
  *n_out = n;
  return 0;
}

// Where tensor t's bytes are in wmem.
static uint64_t region_addr(const struct region *r, int n, const struct gguf_tensor *t) {
  for (int i = 0; i < n; i++)
    if (t->abs_offset >= r[i].off && t->abs_offset + t->nbytes <= r[i].off + r[i].len)
      return r[i].at + (t->abs_offset - r[i].off);
  FERRY_ASSERT(!"tensor outside every load region");
  return 0;
}

// The largest shapes the forward pass hands the backend.
static void backend_limits(const struct model *m, struct ferry_limits *lim) {
  const struct model_hparams *hp = &m->hp;
  memset(lim, 0, sizeof *lim);
  lim->n_threads = m->o.n_threads;
  lim->max_tok = m->B;
  int64_t mi = hp->n_embd;
  if ((int64_t)hp->n_head * hp->head_dim > mi) mi = (int64_t)hp->n_head * hp->head_dim;
  if ((int64_t)hp->n_ff_exp > mi) mi = hp->n_ff_exp;
  if ((int64_t)hp->n_ff_shexp > mi) mi = hp->n_ff_shexp;
  if ((int64_t)hp->ssm_inner > mi) mi = hp->ssm_inner;
  lim->max_in = mi;
  struct weight *ws[4096];
  struct model *mm = (struct model *)m;
  const int nw = weight_views(mm, ws, 4096);
  for (int i = 0; i < nw; i++)
    if (ws[i]->t && ws[i]->n > 1) lim->weight_types |= 1ull << ws[i]->type;
  bool any_attn = false, any_rec = false;
  for (uint32_t l = 0; l < hp->n_layer; l++) {
    if (layer_recurrent(hp, l))
      any_rec = true;
    else
      any_attn = true;
  }
  if (any_attn) {
    lim->n_ctx = m->n_ctx;
    lim->n_head = hp->n_head;
    lim->n_kv_head = hp->n_head_kv;
    lim->head_dim = hp->head_dim;
  }
  lim->moe_d = hp->n_embd;
  lim->moe_ff = hp->n_ff_exp;
  lim->moe_k = hp->n_expert_used;
  lim->moe_n_expert = hp->n_expert;
  if (any_rec) {
    lim->dn_hk = hp->ssm_n_k_heads;
    lim->dn_hv = hp->ssm_n_v_heads;
    lim->dn_dk = hp->ssm_head_k;
    lim->dn_dv = hp->ssm_head_v;
  }
}

// Host-side arrays of the forward pass (routing copies, grouping); with dry set only
// counts. Pinned buffers come from the backend's host_alloc.
static int host_alloc(struct model *m, bool dry) {
  const struct model_hparams *hp = &m->hp;
  const bool tiers = !m->host_mem && m->o.dense_only; // CPU expert compute beside a device
  const int64_t B = m->B, K = hp->n_expert_used, E = hp->n_expert, L = hp->n_layer;
  const int64_t V = hp->n_vocab;
  uint64_t total = 0;
  struct {
    void **p;
    uint64_t bytes;
    bool pinned;
  } t[] = {
      {(void **)&m->h_io, (1 + B) * 4, true},
      {(void **)&m->h_head, m->host_mem ? 0 : (uint64_t)m->HR * V * 4, true},
      {(void **)&m->h_ids, B * K * 4, true},
      {(void **)&m->h_wts, B * K * 4, true},
      {(void **)&m->h_pred, L * B * K * 4, true},
      {(void **)&m->h_ids_all, L * K * 4, true},
      {(void **)&m->h_wts_all, L * K * 4, true},
      {(void **)&m->grp_cnt, (E + 1) * 4, false},
      {(void **)&m->grp_off, (E + 1) * 4, false},
      {(void **)&m->uniq, (E + 1) * 4, false},
      {(void **)&m->h_rows, B * K * 4, false},
      {(void **)&m->h_map, B * K * 4, false},
      {(void **)&m->done, E + 1, false},
      {(void **)&m->groups, (E + 1) * sizeof(struct ferry_moe_group), false},
      {(void **)&m->eptr, (E + 1) * 3 * sizeof(void *), false},
      {(void **)&m->cgroups, (E + 1) * sizeof(struct ferry_moe_group), false},
      {(void **)&m->refs, (E + 1) * sizeof(struct expert_ref), false},
      {(void **)&m->h_xn, tiers ? B * hp->n_embd * 4 : 0, true},
      {(void **)&m->h_cslots, tiers ? B * K * hp->n_embd * 4 : 0, true},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    const uint64_t bytes = ferry_align_up(t[i].bytes ? t[i].bytes : 1, 64);
    total += bytes;
    if (dry) continue;
    int rc = 0;
    if (t[i].pinned)
      rc = m->be->ops.host_alloc(m->be, t[i].p, bytes);
    else if (!(*t[i].p = ferry_alloc_aligned(64, bytes)))
      rc = -ENOMEM;
    if (rc) return ferry_fail_ctx(-ENOMEM, "host buffers of the forward pass");
    memset(*t[i].p, 0, bytes);
  }
  m->host_bytes = total;
  return 0;
}

static void host_free(struct model *m) {
  if (!m->be) return;
  void *pinned[] = {m->h_io,      m->h_head,    m->h_ids, m->h_wts,   m->h_pred,
                    m->h_ids_all, m->h_wts_all, m->h_xn,  m->h_cslots};
  for (size_t i = 0; i < sizeof pinned / sizeof pinned[0]; i++)
    m->be->ops.host_free(m->be, pinned[i]);
  void *heap[] = {m->grp_cnt, m->grp_off, m->uniq,    m->h_rows, m->h_map,
                  m->done,    m->groups,  m->cgroups, m->refs,   (void *)m->eptr};
  for (size_t i = 0; i < sizeof heap / sizeof heap[0]; i++) ferry_free_aligned(heap[i]);
}

// Reads of the load: up to LOAD_DEPTH in flight, LOAD_CHUNK each; into pinned staging
// buffers (as many, no larger than the data) when the backend's memory is not host memory.
#define LOAD_CHUNK (16u << 20)
#define LOAD_DEPTH 8

static uint64_t staging_chunk(uint64_t total) {
  const uint64_t c = ferry_align_up(total, IO_ALIGN);
  return c < LOAD_CHUNK ? c : LOAD_CHUNK;
}
static uint64_t staging_bytes(uint64_t total) {
  const uint64_t chunk = staging_chunk(total), n = (total + chunk - 1) / chunk;
  return (n < LOAD_DEPTH ? n : LOAD_DEPTH) * (chunk + 2 * IO_ALIGN);
}

static void resolve_opts(struct model *m, const struct model_opts *o, const struct gguf_file *f) {
  m->f = f;
  m->o = *o;
  if (m->o.n_ctx <= 0) m->o.n_ctx = 4096;
  if ((uint32_t)m->o.n_ctx > m->hp.n_ctx_train) m->o.n_ctx = (int)m->hp.n_ctx_train;
  m->n_ctx = m->o.n_ctx;
  if (m->o.n_batch <= 0) m->o.n_batch = 256;
  if (m->o.n_threads <= 0) m->o.n_threads = numa_topo_physical_cores();
  m->B = m->o.n_batch;
  m->HR = m->B < 16 ? m->B : 16;
  m->prec = m->o.exact ? FERRY_PREC_EXACT : FERRY_PREC_FAST;
}

uint64_t model_meta_bytes(const struct gguf_file *f) {
  // Five times the header's size on disk: measured 4.5x with the full Qwen3 vocabulary
  // (5.9 MB header; 14 MB parsed, 12 MB more for the tokenizer's tables).
  return 5 * gguf_data_offset(f);
}

int model_plan(const struct gguf_file *f, const struct model_opts *o, enum ferry_backend_kind kind,
               struct model_mem *out) {
  memset(out, 0, sizeof *out);
  struct model tmp = {0};
  int rc = hparams_load(&tmp.hp, f);
  if (rc) return rc;
  resolve_opts(&tmp, o, f);
  tmp.host_mem = kind == FERRY_BACKEND_CPU;
  struct region *reg = NULL;
  int n_reg = 0;
  uint64_t wbytes = 0, dbytes = 0;
  if (!(rc = bind_all(&tmp)) && !(rc = plan_regions(f, false, &reg, &n_reg, &wbytes))) {
    free(reg);
    rc = plan_regions(f, true, &reg, &n_reg, &dbytes);
  }
  if (!rc) {
    out->dense = dbytes + (dbytes ? IO_ALIGN : 0);
    out->experts = o->dense_only     ? 0
                   : wbytes > dbytes ? wbytes - dbytes
                                     : 0; // full: one allocation
    out->state = state_bytes(&tmp.hp, tmp.n_ctx, o->kv_k, o->kv_v) +
                 (o->checkpoint ? recurrent_bytes(&tmp.hp) : 0);
    fwd_alloc(&tmp, true);
    struct ferry_limits lim;
    backend_limits(&tmp, &lim);
    out->scratch = tmp.b.bytes + ferry_backend_scratch_bytes(kind, &lim) +
                   (o->dense_only ? 0 : tmp.hp.n_layer * sizeof(struct ferry_moe_table));
    host_alloc(&tmp, true);
    out->host = tmp.host_bytes + model_meta_bytes(f) +
                (tmp.host_mem ? 0 : staging_bytes(o->dense_only ? dbytes : wbytes));
    if (!tmp.host_mem && o->dense_only) { // the CPU backend that computes experts from RAM
      lim.n_ctx = lim.n_head = lim.n_kv_head = lim.head_dim = 0;
      lim.dn_hk = lim.dn_hv = lim.dn_dk = lim.dn_dv = 0;
      out->host += ferry_backend_scratch_bytes(FERRY_BACKEND_CPU, &lim);
    }
  }
  free(reg);
  free(tmp.layers);
  hparams_free(&tmp.hp);
  return rc;
}

// ---------------------------------------------------------------------------------------
// loading

static void progress(const struct model *m, uint64_t done, uint64_t total) {
  if (!m->o.progress) return;
  int pct = total ? (int)(100.0 * (double)done / (double)total) : 100;
  int bars = pct / 4;
  fprintf(stderr, "\rloading [%.*s%*s] %3d%%", bars, "#########################", 25 - bars, "",
          pct);
  if (done >= total) fprintf(stderr, "\n");
}

// One read of the pipeline: a piece of a region.
struct load_piece {
  struct io_req q;
  uint8_t *stage;         // pinned staging (backends without host memory), page-aligned
  void *stage_alloc;      // the allocation it is in
  uint8_t *dst;           // where byte q.off lands (backend memory)
  struct ferry_event *ev; // staging: the copy out of it has been issued up to here
  bool used;
};

// Reads every region into wmem with up to LOAD_DEPTH reads of LOAD_CHUNK in flight.
// Host-memory backends read straight into place; others through pinned staging buffers
// whose copies to the device overlap the next reads.
static int load_regions(struct model *m, const struct region *reg, int n_reg) {
  struct io_reader *r = NULL;
  struct io_reader_opts ro = {.queue_depth = 2 * LOAD_DEPTH};
  int rc = io_reader_open(&r, gguf_path(m->f), &ro);
  if (rc) return rc;
  struct ferry_backend *be = m->be;
  struct load_piece pc[LOAD_DEPTH];
  memset(pc, 0, sizeof pc);
  uint64_t total = 0, done = 0;
  for (int i = 0; i < n_reg; i++) total += reg[i].len;
  const uint64_t chunk = m->host_mem ? LOAD_CHUNK : staging_chunk(total);
  const int depth = (int)(m->host_mem ? LOAD_DEPTH : staging_bytes(total) / (chunk + 2 * IO_ALIGN));
  for (int i = 0; i < depth && !m->host_mem && !rc; i++) {
    rc = be->ops.host_alloc(be, &pc[i].stage_alloc, chunk + 2 * IO_ALIGN);
    pc[i].stage = rc ? NULL : (uint8_t *)ferry_align_up((uintptr_t)pc[i].stage_alloc, IO_ALIGN);
    if (!rc) rc = be->ops.event_create(be, &pc[i].ev);
  }
  // the next piece to issue: region ri, byte offset ro_ within it
  int ri = 0;
  uint64_t roff = 0;
  int head = 0; // oldest piece in flight (FIFO)
  int inflight = 0;
  while (!rc && (ri < n_reg || inflight)) {
    // issue pieces while a slot is free
    while (!rc && ri < n_reg && inflight < depth) {
      struct load_piece *p = &pc[(head + inflight) % depth];
      const struct region *g = &reg[ri];
      // pieces start at page boundaries of the file so that, read into place, every
      // piece's span lands exactly where the region's bytes belong
      const uint64_t off = g->off + roff;
      uint64_t len = chunk - off % IO_ALIGN;
      if (len > g->len - roff) len = g->len - roff;
      p->dst = m->wmem + g->at + roff;
      if (p->stage) rc = be->ops.event_sync(be, p->ev); // its last copy has finished
      void *dst = p->stage ? p->stage : p->dst - off % IO_ALIGN;
      io_req_init(&p->q, dst, -1, off, len);
      if (!rc) rc = io_read_queue(r, &p->q);
      p->used = true;
      inflight++;
      roff += len;
      if (roff >= g->len) ri++, roff = 0;
    }
    if (rc) break;
    if ((rc = io_reader_submit(r)) < 0) break;
    rc = 0;
    // complete the oldest
    struct load_piece *p = &pc[head];
    if ((rc = io_read_wait(r, &p->q))) break;
    if (p->stage) {
      rc = be->ops.copy_h2d(be, p->dst, p->stage + p->q.data_off, p->q.len, m->st);
      if (!rc) rc = be->ops.event_record(be, p->ev, m->st);
    }
    done += p->q.len;
    progress(m, done, total);
    head = (head + 1) % depth;
    inflight--;
  }
  if (rc) io_reader_wait_all(r);
  struct io_stats st;
  io_reader_stats(r, &st);
  m->load_bytes = st.bytes_read;
  if (!rc && !m->host_mem) rc = be->ops.stream_sync(be, m->st);
  for (int i = 0; i < LOAD_DEPTH; i++) {
    if (pc[i].ev) be->ops.event_destroy(be, pc[i].ev);
    if (pc[i].stage_alloc) be->ops.host_free(be, pc[i].stage_alloc);
  }
  if (rc) ferry_fail_ctx(rc, "loading the weights");
  io_reader_close(r);
  return rc;
}

static int load_weights(struct model *m) {
  const double t0 = ferry_now_s();
  struct region *reg = NULL;
  int n_reg = 0;
  uint64_t bytes = 0;
  int rc = plan_regions(m->f, m->o.dense_only, &reg, &n_reg, &bytes);
  if (rc) return rc;
  if (!n_reg) {
    free(reg);
    return ferry_fail(-EINVAL, "%s: no tensor data", gguf_path(m->f));
  }
  // one page more, so the regions can start at a page boundary (O_DIRECT reads into place)
  if ((rc = m->be->ops.mem_alloc(m->be, &m->wmem_alloc, bytes + IO_ALIGN))) {
    free(reg);
    return ferry_fail_ctx(rc, "weights (%llu bytes)", (unsigned long long)bytes);
  }
  m->wmem = (uint8_t *)ferry_align_up((uintptr_t)m->wmem_alloc, IO_ALIGN);
  m->wmem_bytes = bytes + IO_ALIGN;
  // Weights in host memory: transparent huge pages, far fewer TLB misses over gigabytes
  // (decode 10 -> 16 tok/s on the 12-layer 30B file when introduced). Only the weights: the
  // scratch advised too made prefill 20% slower (2 MiB pages zeroed at first touch).
  if (m->host_mem && bytes >= (2u << 20)) {
    const uintptr_t a0 = ferry_align_up((uintptr_t)m->wmem, 2u << 20);
    const uintptr_t a1 = ((uintptr_t)m->wmem + bytes) & ~(uintptr_t)((2u << 20) - 1);
    if (a1 > a0) madvise((void *)a0, a1 - a0, MADV_HUGEPAGE);
  }
  if (!(rc = load_regions(m, reg, n_reg))) {
    struct weight *ws[4096];
    const int nw = weight_views(m, ws, 4096);
    for (int i = 0; i < nw; i++) {
      struct weight *w = ws[i];
      if (!w->t) continue;
      if (m->o.dense_only && is_routed(w->t)) {
        w->loc = WLOC_STREAMED;
        continue;
      }
      w->loc = WLOC_BACKEND;
      w->data = m->wmem + region_addr(reg, n_reg, w->t);
    }
    if (m->output.t == m->token_embd.t) m->output = m->token_embd;
  }
  free(reg);
  m->load_s = ferry_now_s() - t0;
  return rc;
}

// ---------------------------------------------------------------------------------------
// state

static int alloc_state(struct model *m) {
  const struct model_hparams *hp = &m->hp;
  m->kc = calloc(hp->n_layer, sizeof *m->kc);
  m->vc = calloc(hp->n_layer, sizeof *m->vc);
  m->conv_state = calloc(hp->n_layer, sizeof *m->conv_state);
  m->ssm_state = calloc(hp->n_layer, sizeof *m->ssm_state);
  if (!m->kc || !m->vc || !m->conv_state || !m->ssm_state)
    return ferry_fail(-ENOMEM, "out of memory");
  m->kv_stride = (int64_t)hp->n_head_kv * hp->head_dim;
  const struct ferry_type_info *tk = ferry_type_info(m->o.kv_k), *tv = ferry_type_info(m->o.kv_v);
  if (m->kv_stride % tk->blck || m->kv_stride % tv->blck || hp->head_dim % tk->blck ||
      hp->head_dim % tv->blck)
    return ferry_fail(-EINVAL, "KV cache type %s/%s needs a head dim that is a multiple of %u",
                      tk->name, tv->name, tk->blck > tv->blck ? tk->blck : tv->blck);
  m->state_bytes = state_bytes(hp, m->n_ctx, m->o.kv_k, m->o.kv_v);
  m->rec_bytes = recurrent_bytes(hp);
  int rc = m->be->ops.mem_alloc(m->be, &m->state_mem, m->state_bytes ? m->state_bytes : 1);
  if (rc) return ferry_fail_ctx(rc, "KV cache and state for %d positions", m->n_ctx);
  // the recurrent part first, so a checkpoint is one copy
  uint8_t *p = m->state_mem;
  m->rec_begin = p;
  for (uint32_t l = 0; l < hp->n_layer; l++)
    if (layer_recurrent(hp, l)) {
      m->conv_state[l] = (float *)p, p += conv_state_bytes(hp);
      m->ssm_state[l] = (float *)p, p += ssm_state_bytes(hp);
    }
  for (uint32_t l = 0; l < hp->n_layer; l++)
    if (!layer_recurrent(hp, l)) {
      m->kc[l] = p, p += kv_bytes(hp, m->n_ctx, m->o.kv_k);
      m->vc[l] = p, p += kv_bytes(hp, m->n_ctx, m->o.kv_v);
    }
  m->ckpt_pos = -1;
  if (m->o.checkpoint && m->rec_bytes) {
    rc = m->be->ops.mem_alloc(m->be, &m->ckpt_mem, m->rec_bytes);
    if (rc) return ferry_fail_ctx(rc, "recurrent-state checkpoint");
    m->state_bytes += m->rec_bytes;
  }
  return 0;
}

static int build_expert_tables(struct model *m) {
  if (m->o.dense_only) return 0;
  m->etab = calloc(m->hp.n_layer, sizeof *m->etab);
  if (!m->etab) return ferry_fail(-ENOMEM, "out of memory");
  for (uint32_t l = 0; l < m->hp.n_layer; l++) {
    const struct layer_weights *L = &m->layers[l];
    for (int p = 0; p < 3; p++) {
      m->etab[l].base[p] = L->exps[p].data;
      m->etab[l].stride[p] = L->exps[p].nb2;
    }
    m->etab[l].n_expert = m->hp.n_expert;
  }
  return 0;
}

int model_load(struct model **out, const struct gguf_file *f, const struct model_opts *o,
               struct ferry_backend *be) {
  *out = NULL;
  struct model *m = calloc(1, sizeof *m);
  if (!m) return ferry_fail(-ENOMEM, "out of memory");
  int rc = hparams_load(&m->hp, f);
  if (rc) {
    free(m);
    return rc;
  }
  resolve_opts(m, o, f);
  m->be = be;
  m->host_mem = be->kind == FERRY_BACKEND_CPU;
  const char *cf = getenv("FERRY_CHECK_FINITE");
  m->check_finite = cf && *cf && strcmp(cf, "0") != 0;
  if ((rc = bind_all(m))) goto fail;
  if (m->hp.n_layer_file > m->hp.n_layer)
    log_info("%s: ignoring %u multi-token-prediction block(s) (blk.%u and up)", gguf_path(f),
             m->hp.n_layer_file - m->hp.n_layer, m->hp.n_layer);
  // a device computes on its own stream: graphs cannot be captured on the default one
  if (!m->host_mem && (rc = be->ops.stream_create(be, &m->st))) goto fail;
  struct ferry_limits lim;
  backend_limits(m, &lim);
  if ((rc = be->ops.reserve(be, &lim)) || (rc = fwd_alloc(m, false)) ||
      (rc = host_alloc(m, false)) || (rc = alloc_state(m)))
    goto fail;
  m->scratch_bytes = m->b.bytes + ferry_backend_reserved(be);
  if ((rc = load_weights(m)) || (rc = build_expert_tables(m)) || (rc = fwd_prof_init(m))) goto fail;
  model_reset(m);
  *out = m;
  return 0;
fail:
  model_destroy(m);
  return rc;
}

void model_destroy(struct model *m) {
  if (!m) return;
  if (m->be) {
    // work still queued on the compute stream may read the buffers freed below
    if (m->st) m->be->ops.stream_sync(m->be, m->st);
    fwd_prof_done(m);
    if (m->graph) m->be->ops.graph_destroy(m->be, m->graph);
    if (m->ev_used) m->be->ops.event_destroy(m->be, m->ev_used);
    fwd_free(m);
    host_free(m);
    m->be->ops.mem_free(m->be, m->state_mem);
    m->be->ops.mem_free(m->be, m->ckpt_mem);
    m->be->ops.mem_free(m->be, m->wmem_alloc);
    if (m->st) {
      m->be->ops.stream_sync(m->be, m->st);
      m->be->ops.stream_destroy(m->be, m->st);
    }
  }
  free(m->kc), free(m->vc), free(m->conv_state), free(m->ssm_state);
  free(m->etab);
  free(m->layers);
  hparams_free(&m->hp);
  free(m);
}

const struct model_hparams *model_hparams(const struct model *m) { return &m->hp; }
const struct layer_weights *model_layer(const struct model *m, int l) { return &m->layers[l]; }
struct ferry_backend *model_backend(const struct model *m) {
  return m->be;
}
int model_set_expert_source(struct model *m, const struct expert_source *src,
                            struct ferry_backend *cpu, const struct cost_model *cm) {
  m->src = *src;
  m->src_set = true;
  m->cpu = m->host_mem ? NULL : cpu;
  if (cm) m->cm = *cm;
  int rc;
  if (!m->host_mem && !m->ev_used && (rc = m->be->ops.event_create(m->be, &m->ev_used))) return rc;
  if (m->cpu) {
    struct ferry_limits lim;
    backend_limits(m, &lim);
    lim.n_ctx = lim.n_head = lim.n_kv_head = lim.head_dim = 0; // experts only
    lim.dn_hk = lim.dn_hv = lim.dn_dk = lim.dn_dv = 0;
    if ((rc = m->cpu->ops.reserve(m->cpu, &lim))) return rc;
    if (m->cm.policy == EXPERT_AUTO && (rc = fwd_calibrate(m))) return rc;
  }
  return 0;
}

void model_expert_counters(const struct model *m, struct expert_counters *out) { *out = m->ecnt; }

void model_set_route_observer(struct model *m, const struct route_observer *o) {
  m->obs = o ? *o : (struct route_observer){0};
  m->obs_set = o && o->on_route;
  if (m->graph) { // a captured graph may lack the routing copies the observer needs
    m->be->ops.graph_destroy(m->be, m->graph);
    m->graph = NULL;
  }
}
void model_mem_used(const struct model *m, struct model_mem *out) {
  memset(out, 0, sizeof *out);
  uint64_t dense = 0, all = 0;
  for (int64_t i = 0; i < gguf_n_tensors(m->f); i++) {
    const struct gguf_tensor *t = gguf_tensor_at(m->f, i);
    all += t->nbytes;
    if (!is_routed(t)) dense += t->nbytes;
  }
  // wmem holds the regions (with their gaps and padding): split it in proportion
  out->dense = m->o.dense_only ? m->wmem_bytes : (uint64_t)((double)m->wmem_bytes * dense / all);
  out->experts = m->wmem_bytes - out->dense;
  out->state = m->state_bytes;
  out->scratch = m->scratch_bytes + (m->etab ? m->hp.n_layer * sizeof(struct ferry_moe_table) : 0);
  out->host = m->host_bytes;
}
double model_load_seconds(const struct model *m) { return m->load_s; }
uint64_t model_load_bytes(const struct model *m) { return m->load_bytes; }
int model_n_ctx(const struct model *m) { return m->n_ctx; }
int model_pos(const struct model *m) { return m->pos; }

void model_reset(struct model *m) {
  m->pos = 0;
  m->ckpt_pos = -1; // the positions it summarised are overwritten from here
  if (m->rec_bytes) {
    int rc = m->be->ops.memset0(m->be, m->rec_begin, m->rec_bytes, m->st);
    FERRY_ASSERT(rc == 0);
  }
}

int model_checkpoint(struct model *m) {
  if (!m->rec_bytes) return 0;
  if (!m->ckpt_mem)
    return ferry_fail(-EINVAL, "no checkpoint memory (load the model with checkpoint on)");
  int rc = m->be->ops.copy_d2d(m->be, m->ckpt_mem, m->rec_begin, m->rec_bytes, m->st);
  if (rc) return rc;
  m->ckpt_pos = m->pos;
  return 0;
}

int model_rewind(struct model *m, int pos) {
  if (pos < 0 || pos > m->pos)
    return ferry_fail(-EINVAL, "cannot rewind to position %d (the sequence is at %d)", pos, m->pos);
  if (pos == m->pos) return 0;
  if (!m->rec_bytes || pos == 0) {
    if (pos == 0) model_reset(m);
    if (pos < m->ckpt_pos) m->ckpt_pos = -1; // its positions are overwritten from here
    m->pos = pos;
    return 0;
  }
  if (pos != m->ckpt_pos)
    return ferry_fail(-EINVAL,
                      "cannot rewind the recurrent state to position %d (checkpoint at %d)", pos,
                      m->ckpt_pos);
  int rc = m->be->ops.copy_d2d(m->be, m->rec_begin, m->ckpt_mem, m->rec_bytes, m->st);
  if (rc) return rc;
  m->pos = pos;
  return 0;
}

int model_forward(struct model *m, const int32_t *tokens, int n, const bool *want_logits,
                  float *logits) {
  if (n <= 0) return ferry_fail(-EINVAL, "no tokens to process");
  if (m->pos + n > m->n_ctx)
    return ferry_fail(-EINVAL, "context full: %d + %d tokens exceed the context of %d (raise -c)",
                      m->pos, n, m->n_ctx);
  for (int i = 0; i < n; i++)
    if (tokens[i] < 0 || (uint32_t)tokens[i] >= m->hp.n_vocab)
      return ferry_fail(-EINVAL, "token id %d is out of range (vocabulary of %u)", tokens[i],
                        m->hp.n_vocab);
  if (m->o.dense_only && !m->src_set) return ferry_fail(-EINVAL, "no expert source configured");
  int n_out = 0;
  bool want_buf[m->B];
  for (int i0 = 0; i0 < n; i0 += m->B) {
    const int T = n - i0 < m->B ? n - i0 : m->B;
    for (int t = 0; t < T; t++) want_buf[t] = want_logits ? want_logits[i0 + t] : (i0 + t == n - 1);
    int rc = fwd_chunk(m, tokens + i0, T, want_buf, logits, &n_out);
    if (rc) return rc;
  }
  return 0;
}
