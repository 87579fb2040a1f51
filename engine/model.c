// engine/model.c: loading weights and the CPU forward pass of qwen3moe and qwen3next, as
// ../shared/MODEL_SPEC.md §4 and §5 state them.
//
// A forward call runs a chunk of T tokens through every layer as matrix products. MoE
// layers group the chunk's tokens by expert, so each expert's weights are touched once per
// chunk; every (token, slot) output lands in its own row and the slots are summed in
// router order, so the result does not depend on the order experts are computed or where
// their bytes came from (full and stream mode are bit-identical).
//
// Two numeric paths: exact (F32 activations times exactly dequantized weights, double
// accumulation, F32 KV) and fast (activations quantized to each weight's vec-dot type,
// as llama.cpp's CPU backend does, F16 KV by default).
#include "engine/model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/base.h"
#include "kernels/cpu/attn.h"
#include "kernels/cpu/deltanet.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quants.h"
#include "numa/pool.h"
#include "numa/topo.h"

struct model {
  const struct gguf_file *f;
  struct model_hparams hp;
  struct model_opts o;
  struct ferry_pool *pool;
  struct expert_source src;
  bool src_set;

  struct weight token_embd, output_norm, output;
  struct layer_weights *layers;

  uint8_t *wbuf; // resident weight bytes
  uint64_t wbuf_bytes,
      wbuf_base; // wbuf holds file bytes [wbuf_base, wbuf_base + wbuf_bytes) (full mode)
  double load_s;

  // per-sequence state
  int pos;
  int n_ctx;
  void **kc, **vc;    // [n_layer] KV cache of full-attention layers (NULL for DeltaNet)
  int64_t kv_stride;  // elements per cached position (n_head_kv * head_dim)
  float **conv_state; // [n_layer] (K-1) x conv_dim (DeltaNet)
  float **ssm_state;  // [n_layer] Hv x dk x dv (DeltaNet)
  uint64_t state_bytes;

  // scratch, sized for n_batch tokens, allocated once
  int B;
  float *x, *a, *q, *k, *v, *att, *gate, *mlog, *moe_out, *slot_out, *tmp1, *tmp2, *tmp3, *tmp4;
  float *eg, *eu, *ed, *ex; // expert gather buffers [B][ff] / [B][d]
  int32_t *top_ids;
  float *top_w;
  int32_t *grp_rows, *grp_cnt, *grp_off, *uniq;
  bool *done;            // [n_expert] per acquired expert: computed
  int32_t *sel, *pos_of; // [n_expert] experts computed together; [B*K] pair -> grouped row
  int32_t *pf_ids;       // [k] prefetch guess for the next layer
  float *attn_scratch;   // [attn_workers] x cpu_attn_scratch_floats(n_ctx, ...)
  int attn_workers;
  float *pf_w;
  const void *(*eptr)[3];    // [n_expert] bytes of the selected experts
  uint8_t *xg_g, *xg_u, *hq; // fast path: quantized expert inputs in grouped order
  uint8_t *qin;              // fast path: [B] token inputs quantized for gate and up
  float *eG, *eU;            // fast path: [B*K][ff] gate / up outputs in grouped order
  size_t rb_g, rb_u, rb_d;   // their activation row bytes
  int res_layer;             // full mode: the layer of the last acquire
  const int32_t *res_experts;
  uint8_t *actq;
  uint64_t scratch_bytes;
  bool check_finite; // FERRY_CHECK_FINITE=1 (read at load): check every layer's output
};

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

static int bind_all(struct model *m) {
  const struct model_hparams *hp = &m->hp;
  int64_t d = hp->n_embd, V = hp->n_vocab;
  int rc;
  if ((rc = bind(m, &m->token_embd, true, d, V, 1, "token_embd.weight")) ||
      (rc = bind(m, &m->output_norm, true, d, 1, 1, "output_norm.weight")) ||
      (rc = bind(m, &m->output, false, d, V, 1, "output.weight")) ||
      (rc = need_f32(m, &m->output_norm)))
    return rc;
  if (!m->output.t) m->output = m->token_embd; // tied embeddings
  m->layers = calloc(hp->n_layer, sizeof *m->layers);
  if (!m->layers) return ferry_fail(-ENOMEM, "out of memory");
  int64_t E = hp->n_expert, ff = hp->n_ff_exp, hd = hp->head_dim, H = hp->n_head,
          Hkv = hp->n_head_kv;
  bool next = hp->arch == ARCH_QWEN3NEXT;
  for (uint32_t l = 0; l < hp->n_layer; l++) {
    struct layer_weights *L = &m->layers[l];
    bool rec = next && hp->recurrent[l];
    if ((rc = bind(m, &L->attn_norm, true, d, 1, 1, "blk.%u.attn_norm.weight", l)) ||
        (rc = bind(m, &L->ffn_norm, true, d, 1, 1,
                   next ? "blk.%u.post_attention_norm.weight" : "blk.%u.ffn_norm.weight", l)) ||
        (rc = need_f32(m, &L->attn_norm)) || (rc = need_f32(m, &L->ffn_norm)))
      return rc;
    if (!rec) {
      int64_t qdim = next ? 2 * H * hd : H * hd;
      if ((rc = bind(m, &L->wq, true, d, qdim, 1, "blk.%u.attn_q.weight", l)) ||
          (rc = bind(m, &L->wk, true, d, Hkv * hd, 1, "blk.%u.attn_k.weight", l)) ||
          (rc = bind(m, &L->wv, true, d, Hkv * hd, 1, "blk.%u.attn_v.weight", l)) ||
          (rc = bind(m, &L->wo, true, H * hd, d, 1, "blk.%u.attn_output.weight", l)) ||
          (rc = bind(m, &L->q_norm, true, hd, 1, 1, "blk.%u.attn_q_norm.weight", l)) ||
          (rc = bind(m, &L->k_norm, true, hd, 1, 1, "blk.%u.attn_k_norm.weight", l)) ||
          (rc = need_f32(m, &L->q_norm)) || (rc = need_f32(m, &L->k_norm)))
        return rc;
    } else {
      int64_t nk = hp->ssm_n_k_heads, nv = hp->ssm_n_v_heads, dk = hp->ssm_head_k,
              dv = hp->ssm_head_v;
      int64_t key_dim = nk * dk, value_dim = nv * dv, conv_dim = 2 * key_dim + value_dim;
      if (hp->legacy_layout) {
        if ((rc = bind(m, &L->ssm_in, true, d, conv_dim + value_dim, 1, "blk.%u.ssm_in.weight", l)))
          return rc;
      } else if ((rc = bind(m, &L->attn_qkv, true, d, conv_dim, 1, "blk.%u.attn_qkv.weight", l)) ||
                 (rc = bind(m, &L->attn_gate, true, d, value_dim, 1, "blk.%u.attn_gate.weight",
                            l))) {
        return rc;
      }
      if ((rc = bind(m, &L->ssm_ba, true, d, 2 * nv, 1, "blk.%u.ssm_ba.weight", l)) ||
          (rc = bind(m, &L->ssm_conv1d, true, hp->ssm_conv_k, conv_dim, 1,
                     "blk.%u.ssm_conv1d.weight", l)) ||
          (rc = bind(m, &L->ssm_dt, true, nv, 1, 1, "blk.%u.ssm_dt.bias", l)) ||
          (rc = bind(m, &L->ssm_a, true, nv, 1, 1, "blk.%u.ssm_a", l)) ||
          (rc = bind(m, &L->ssm_norm, true, dv, 1, 1, "blk.%u.ssm_norm.weight", l)) ||
          (rc = bind(m, &L->ssm_out, true, value_dim, d, 1, "blk.%u.ssm_out.weight", l)) ||
          (rc = need_f32(m, &L->ssm_conv1d)) || (rc = need_f32(m, &L->ssm_dt)) ||
          (rc = need_f32(m, &L->ssm_a)) || (rc = need_f32(m, &L->ssm_norm)))
        return rc;
    }
    if ((rc = bind(m, &L->router, true, d, E, 1, "blk.%u.ffn_gate_inp.weight", l)) ||
        (rc = bind(m, &L->exps[EXP_GATE], true, d, ff, E, "blk.%u.ffn_gate_exps.weight", l)) ||
        (rc = bind(m, &L->exps[EXP_UP], true, d, ff, E, "blk.%u.ffn_up_exps.weight", l)) ||
        (rc = bind(m, &L->exps[EXP_DOWN], true, ff, d, E, "blk.%u.ffn_down_exps.weight", l)))
      return rc;
    if (next) {
      int64_t sff = hp->n_ff_shexp;
      if ((rc = bind(m, &L->sh_gate, true, d, sff, 1, "blk.%u.ffn_gate_shexp.weight", l)) ||
          (rc = bind(m, &L->sh_up, true, d, sff, 1, "blk.%u.ffn_up_shexp.weight", l)) ||
          (rc = bind(m, &L->sh_down, true, sff, d, 1, "blk.%u.ffn_down_shexp.weight", l)) ||
          (rc = bind(m, &L->sh_gate_inp, true, d, 1, 1, "blk.%u.ffn_gate_inp_shexp.weight", l)))
        return rc;
    }
  }
  return 0;
}

static bool is_routed(const struct gguf_tensor *t) { return strstr(t->name, "_exps.") != NULL; }

static void resolve(struct model *m, struct weight *w) {
  if (!w->t) return;
  if (m->o.dense_only && is_routed(w->t)) {
    w->data = NULL;
    return;
  }
  w->data = m->wbuf + (w->t->abs_offset - m->wbuf_base);
}

static void progress(struct model *m, uint64_t done, uint64_t total) {
  if (!m->o.progress) return;
  int pct = total ? (int)(100.0 * (double)done / (double)total) : 100;
  int bars = pct / 4;
  fprintf(stderr, "\rloading [%.*s%*s] %3d%%", bars, "#########################", 25 - bars, "",
          pct);
  if (done >= total) fprintf(stderr, "\n");
}

// Full mode reads the whole data section with large sequential reads into one buffer;
// dense-only mode reads the non-expert tensors, coalescing neighbours.
static int load_data(struct model *m) {
  const struct gguf_file *f = m->f;
  double t0 = ferry_now_s();
  uint64_t lo = UINT64_MAX, hi = 0;
  int64_t nt = gguf_n_tensors(f);
  for (int64_t i = 0; i < nt; i++) {
    const struct gguf_tensor *t = gguf_tensor_at(f, i);
    if (m->o.dense_only && is_routed(t)) continue;
    if (t->abs_offset < lo) lo = t->abs_offset;
    if (t->abs_offset + t->nbytes > hi) hi = t->abs_offset + t->nbytes;
  }
  if (hi <= lo) return ferry_fail(-EINVAL, "%s: no tensor data", gguf_path(f));
  if (!m->o.dense_only) {
    // One buffer for the whole data section, read with large O_DIRECT reads (no page
    // cache copy, nothing left behind in the page cache) into transparent huge pages
    // (far fewer page faults than 4 KiB pages for gigabytes of weights).
    m->wbuf_base = lo - lo % 4096;
    m->wbuf_bytes = hi - m->wbuf_base;
    uint64_t alloc = ferry_align_up(m->wbuf_bytes, 2u << 20);
    m->wbuf = ferry_alloc_aligned(2u << 20, alloc);
    if (!m->wbuf) return ferry_fail_ctx(-ENOMEM, "loading weights");
    madvise(m->wbuf, alloc, MADV_HUGEPAGE);
    int fd = open(gguf_path(f), O_RDONLY | O_DIRECT | O_CLOEXEC);
    const uint64_t chunk = 64ull << 20;
    for (uint64_t off = 0; off < m->wbuf_bytes; off += chunk) {
      uint64_t n = m->wbuf_bytes - off < chunk ? m->wbuf_bytes - off : chunk;
      int rc = -1;
      if (fd >= 0) {
        // the last read may end past EOF: O_DIRECT lengths are rounded up to the block
        ssize_t r = pread(fd, m->wbuf + off, ferry_align_up(n, 4096), (off_t)(m->wbuf_base + off));
        rc = r >= (ssize_t)n ? 0 : -1;
        if (rc) {
          close(fd);
          fd = -1; // fall back to buffered reads from here on
        }
      }
      if (rc && (rc = gguf_pread(f, m->wbuf + off, n, m->wbuf_base + off))) return rc;
      progress(m, off + n, m->wbuf_bytes);
    }
    if (fd >= 0) close(fd);
  } else {
    // Pack dense tensors back to back (keeping 64-byte alignment) in one buffer; the
    // weight views point into it (resolve() is not used for this layout).
    uint64_t total = 0;
    for (int64_t i = 0; i < nt; i++) {
      const struct gguf_tensor *t = gguf_tensor_at(f, i);
      if (!is_routed(t)) total += ferry_align_up(t->nbytes, 64);
    }
    m->wbuf_bytes = total;
    m->wbuf = ferry_alloc_aligned(4096, total);
    if (!m->wbuf) return ferry_fail_ctx(-ENOMEM, "loading dense weights");
    m->wbuf_base = 0;
    // O_DIRECT through an aligned bounce buffer: stream mode promises that nothing it
    // reads lands in the page cache (a memory cgroup would be charged for it).
    const uint64_t bounce_bytes = 2u << 20;
    uint8_t *bounce = ferry_alloc_aligned(4096, bounce_bytes + 8192);
    int fd = bounce ? open(gguf_path(f), O_RDONLY | O_DIRECT | O_CLOEXEC) : -1;
    uint64_t pos = 0;
    int rc = 0;
    for (int64_t i = 0; i < nt && !rc; i++) {
      const struct gguf_tensor *t = gguf_tensor_at(f, i);
      if (is_routed(t)) continue;
      for (uint64_t done = 0; done < t->nbytes && !rc;) {
        uint64_t n = t->nbytes - done < bounce_bytes ? t->nbytes - done : bounce_bytes;
        uint64_t off = t->abs_offset + done, a0 = off - off % 4096,
                 span = ferry_align_up(off + n, 4096) - a0;
        ssize_t r = fd >= 0 ? pread(fd, bounce, span, (off_t)a0) : -1;
        if (r >= (ssize_t)(off - a0 + n)) {
          memcpy(m->wbuf + pos + done, bounce + (off - a0), n);
        } else { // O_DIRECT refused or short: buffered read of this piece
          if (fd >= 0) close(fd);
          fd = -1;
          rc = gguf_pread(f, m->wbuf + pos + done, n, off);
        }
        done += n;
      }
      pos += ferry_align_up(t->nbytes, 64);
      progress(m, pos, total);
    }
    if (fd >= 0)
      close(fd);
    else
      posix_fadvise(gguf_fd(f), 0, 0, POSIX_FADV_DONTNEED); // what buffered reads cached
    ferry_free_aligned(bounce);
    if (rc) return rc;
  }
  m->load_s = ferry_now_s() - t0;
  return 0;
}

// Dense-only: data pointers follow the packing order of load_data.
static void resolve_packed(struct model *m) {
  const struct gguf_file *f = m->f;
  uint64_t pos = 0;
  int64_t nt = gguf_n_tensors(f);
  // Map tensor -> packed offset via a pass over weights: for each weight, find its
  // tensor's index position by scanning (n_tensors is small: < 1000).
  uint64_t *offs = calloc(nt ? nt : 1, sizeof *offs);
  FERRY_ASSERT(offs);
  for (int64_t i = 0; i < nt; i++) {
    const struct gguf_tensor *t = gguf_tensor_at(f, i);
    if (is_routed(t)) continue;
    offs[i] = pos;
    pos += ferry_align_up(t->nbytes, 64);
  }
  struct weight *ws[] = {&m->token_embd, &m->output_norm, &m->output};
  for (int i = 0; i < 3; i++)
    if (ws[i]->t) ws[i]->data = m->wbuf + offs[ws[i]->t - gguf_tensor_at(f, 0)];
  int per = sizeof(struct layer_weights) / sizeof(struct weight);
  for (uint32_t l = 0; l < m->hp.n_layer; l++) {
    struct weight *w = (struct weight *)&m->layers[l];
    for (int j = 0; j < per; j++)
      if (w[j].t)
        w[j].data = is_routed(w[j].t) ? NULL : m->wbuf + offs[w[j].t - gguf_tensor_at(f, 0)];
  }
  free(offs);
}

uint64_t model_state_bytes(const struct model_hparams *hp, int n_ctx, enum ferry_type kv_k,
                           enum ferry_type kv_v) {
  uint64_t total = 0;
  uint64_t row = (uint64_t)hp->n_head_kv * hp->head_dim;
  const struct ferry_type_info *tk = ferry_type_info(kv_k), *tv = ferry_type_info(kv_v);
  for (uint32_t l = 0; l < hp->n_layer; l++) {
    if (hp->arch == ARCH_QWEN3NEXT && hp->recurrent[l]) {
      uint64_t conv_dim = 2ull * hp->ssm_n_k_heads * hp->ssm_head_k + hp->ssm_inner;
      total += 4ull * (hp->ssm_conv_k - 1) * conv_dim;
      total += 4ull * hp->ssm_n_v_heads * hp->ssm_head_k * hp->ssm_head_v;
    } else {
      total += (uint64_t)n_ctx * (ferry_row_bytes(tk, row) + ferry_row_bytes(tv, row));
    }
  }
  return total;
}

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
  for (uint32_t l = 0; l < hp->n_layer; l++) {
    if (hp->arch == ARCH_QWEN3NEXT && hp->recurrent[l]) {
      uint64_t conv_dim = 2ull * hp->ssm_n_k_heads * hp->ssm_head_k + hp->ssm_inner;
      m->conv_state[l] = ferry_alloc_aligned(64, 4ull * (hp->ssm_conv_k - 1) * conv_dim);
      m->ssm_state[l] =
          ferry_alloc_aligned(64, 4ull * hp->ssm_n_v_heads * hp->ssm_head_k * hp->ssm_head_v);
      if (!m->conv_state[l] || !m->ssm_state[l]) return ferry_fail_ctx(-ENOMEM, "recurrent state");
    } else {
      m->kc[l] = ferry_alloc_aligned(64, (uint64_t)m->n_ctx * ferry_row_bytes(tk, m->kv_stride));
      m->vc[l] = ferry_alloc_aligned(64, (uint64_t)m->n_ctx * ferry_row_bytes(tv, m->kv_stride));
      if (!m->kc[l] || !m->vc[l])
        return ferry_fail_ctx(-ENOMEM, "KV cache for %d positions", m->n_ctx);
    }
  }
  m->state_bytes = model_state_bytes(hp, m->n_ctx, m->o.kv_k, m->o.kv_v);
  return 0;
}

// With dry set, only counts the bytes (the plan is computed before anything is loaded).
static float *falloc_(struct model *m, uint64_t n, bool dry) {
  uint64_t bytes = ferry_align_up(n * sizeof(float), 64);
  m->scratch_bytes += bytes;
  return dry ? (float *)(uintptr_t)64 : ferry_alloc_aligned(64, bytes);
}

static int alloc_scratch(struct model *m, bool dry) {
#define falloc(m, n) falloc_(m, n, dry)
  const struct model_hparams *hp = &m->hp;
  int64_t B = m->B, d = hp->n_embd, K = hp->n_expert_used, E = hp->n_expert;
  int64_t qdim = (int64_t)hp->n_head * hp->head_dim * (hp->arch == ARCH_QWEN3NEXT ? 2 : 1);
  int64_t ff = hp->n_ff_exp > hp->n_ff_shexp ? hp->n_ff_exp : hp->n_ff_shexp;
  int64_t wide = qdim; // widest projection output / input
  if (hp->arch == ARCH_QWEN3NEXT) {
    int64_t conv_dim = 2ll * hp->ssm_n_k_heads * hp->ssm_head_k + hp->ssm_inner;
    if (conv_dim + hp->ssm_inner > wide) wide = conv_dim + hp->ssm_inner;
  }
  if (d > wide) wide = d;
  if (ff > wide) wide = ff;
  m->x = falloc(m, B * d), m->a = falloc(m, B * d), m->q = falloc(m, B * wide),
  m->k = falloc(m, B * wide);
  m->v = falloc(m, B * wide), m->att = falloc(m, B * wide), m->gate = falloc(m, B * wide);
  m->mlog = falloc(m, (B + 1) * E), m->moe_out = falloc(m, B * d),
  m->slot_out = falloc(m, B * K * d);
  m->tmp1 = falloc(m, B * wide), m->tmp2 = falloc(m, B * wide), m->tmp3 = falloc(m, B * wide),
  m->tmp4 = falloc(m, B * wide);
  m->eg = falloc(m, B * ff), m->eu = falloc(m, B * ff), m->ed = falloc(m, B * d),
  m->ex = falloc(m, B * d);
  m->sel = (int32_t *)falloc(m, E + 1);
  m->pf_ids = (int32_t *)falloc(m, K), m->pf_w = falloc(m, K);
  // attention scratch for every pool worker the session may create
  int cores = numa_topo_physical_cores();
  m->attn_workers = m->o.n_threads > cores ? m->o.n_threads : cores > 0 ? cores : 1;
  m->attn_scratch = falloc(m, (uint64_t)m->attn_workers *
                                  cpu_attn_scratch_floats(m->o.n_ctx > 0 ? m->o.n_ctx : 4096,
                                                          hp->n_head, hp->n_head_kv, hp->head_dim));
  m->pos_of = (int32_t *)falloc(m, B * K);
  m->eptr = (const void *(*)[3])falloc(m, (E + 1) * 3 * sizeof(void *) / sizeof(float));
  // Fast path: every (token, slot) pair of a chunk gets its own row of quantized input,
  // gate/up output and quantized hidden, so a whole batch of experts runs in two pool
  // calls. Row bytes are the widest of the layers' expert types.
  m->rb_g = m->rb_u = m->rb_d = 0;
  if (!m->o.exact && m->layers)
    for (uint32_t l = 0; l < hp->n_layer; l++) {
      const struct layer_weights *L = &m->layers[l];
      size_t g = cpu_act_row_bytes(L->exps[EXP_GATE].type, d),
             u = cpu_act_row_bytes(L->exps[EXP_UP].type, d);
      size_t dn = cpu_act_row_bytes(L->exps[EXP_DOWN].type, hp->n_ff_exp);
      if (g > m->rb_g) m->rb_g = g;
      if (u > m->rb_u) m->rb_u = u;
      if (dn > m->rb_d) m->rb_d = dn;
    }
  int64_t pairs = B * K;
  m->xg_g = (uint8_t *)falloc(m, (pairs * m->rb_g + 3) / 4 + 1);
  m->xg_u = (uint8_t *)falloc(m, (pairs * m->rb_u + 3) / 4 + 1);
  m->hq = (uint8_t *)falloc(m, (pairs * m->rb_d + 3) / 4 + 1);
  m->qin = (uint8_t *)falloc(m, (B * (m->rb_g + m->rb_u) + 3) / 4 + 1);
  m->eG = falloc(m, m->o.exact ? 1 : pairs * hp->n_ff_exp);
  m->eU = falloc(m, m->o.exact ? 1 : pairs * hp->n_ff_exp);
  m->top_w = falloc(m, B * K);
  m->top_ids = (int32_t *)falloc(m, B * K);
  m->grp_rows = (int32_t *)falloc(m, B * K);
  m->grp_cnt = (int32_t *)falloc(m, E + 1);
  m->grp_off = (int32_t *)falloc(m, E + 1);
  m->uniq = (int32_t *)falloc(m, E + 1);
  m->done = (bool *)falloc(m, E / 4 + 1);
  m->actq = (uint8_t *)falloc(m, (uint64_t)B * wide + 1024);
#undef falloc
  if (dry) return 0;
  if (!m->x || !m->a || !m->q || !m->k || !m->v || !m->att || !m->gate || !m->mlog || !m->moe_out ||
      !m->slot_out || !m->tmp1 || !m->tmp2 || !m->tmp3 || !m->tmp4 || !m->eg || !m->eu || !m->ed ||
      !m->ex || !m->top_w || !m->sel || !m->pos_of || !m->pf_ids || !m->pf_w || !m->attn_scratch ||
      !m->eptr || !m->xg_g || !m->xg_u || !m->hq || !m->qin || !m->eG || !m->eU || !m->top_ids ||
      !m->grp_rows || !m->grp_cnt || !m->grp_off || !m->uniq || !m->done || !m->actq)
    return ferry_fail_ctx(-ENOMEM, "scratch buffers");
  return 0;
}

// Full mode: experts are resident; acquire only remembers which were asked for.
static int resident_acquire(void *ctx, int layer, int n, const int32_t *experts) {
  struct model *m = ctx;
  m->res_layer = layer;
  m->res_experts = experts;
  (void)n;
  return 0;
}
static bool resident_ready(void *ctx, int i) { return true; }
static void resident_release(void *ctx, int layer, int n) {}
static int resident_get(void *ctx, int i, const void *ptrs[3]) {
  struct model *m = ctx;
  const struct layer_weights *L = &m->layers[m->res_layer];
  for (int p = 0; p < 3; p++)
    ptrs[p] = (const uint8_t *)L->exps[p].data + (uint64_t)m->res_experts[i] * L->exps[p].nb2;
  return 0;
}

int model_load(struct model **out, const struct gguf_file *f, const struct model_opts *o) {
  *out = NULL;
  struct model *m = calloc(1, sizeof *m);
  if (!m) return ferry_fail(-ENOMEM, "out of memory");
  m->f = f;
  m->o = *o;
  const char *cf = getenv("FERRY_CHECK_FINITE");
  m->check_finite = cf && *cf && strcmp(cf, "0");
  int rc = hparams_load(&m->hp, f);
  if (rc) goto fail;
  if (m->o.n_ctx <= 0) m->o.n_ctx = 4096;
  if ((uint32_t)m->o.n_ctx > m->hp.n_ctx_train) m->o.n_ctx = (int)m->hp.n_ctx_train;
  m->n_ctx = m->o.n_ctx;
  if (m->o.n_batch <= 0) m->o.n_batch = 256;
  m->B = m->o.n_batch;
  if ((rc = bind_all(m))) goto fail;
  if (m->hp.n_layer_file > m->hp.n_layer)
    log_info("%s: ignoring %u multi-token-prediction block(s) (blk.%u and up)", gguf_path(f),
             m->hp.n_layer_file - m->hp.n_layer, m->hp.n_layer);
  if ((rc = load_data(m))) goto fail;
  if (m->o.dense_only) {
    resolve_packed(m);
  } else {
    resolve(m, &m->token_embd), resolve(m, &m->output_norm), resolve(m, &m->output);
    int per = sizeof(struct layer_weights) / sizeof(struct weight);
    for (uint32_t l = 0; l < m->hp.n_layer; l++) {
      struct weight *w = (struct weight *)&m->layers[l];
      for (int j = 0; j < per; j++) resolve(m, &w[j]);
    }
    m->src = (struct expert_source){.ctx = m,
                                    .acquire = resident_acquire,
                                    .ready = resident_ready,
                                    .get = resident_get,
                                    .release = resident_release};
    m->src_set = true;
  }
  if ((rc = alloc_state(m)) || (rc = alloc_scratch(m, false))) goto fail;
  model_reset(m);
  *out = m;
  return 0;
fail:
  model_destroy(m);
  return rc;
}

// Five times the header's size on disk: measured 4.5x with the full Qwen3 vocabulary
// (5.9 MB header; 14 MB parsed, 12 MB more for the tokenizer's tables).
uint64_t model_meta_bytes(const struct gguf_file *f) { return 5 * gguf_data_offset(f); }

int model_plan(const struct gguf_file *f, const struct model_opts *o, uint64_t *weights,
               uint64_t *state, uint64_t *scratch) {
  struct model tmp = {.f = f, .o = *o};
  int rc = hparams_load(&tmp.hp, f);
  if (rc) return rc;
  if ((rc = bind_all(&tmp))) { // scratch sizes depend on the expert types
    free(tmp.layers);
    hparams_free(&tmp.hp);
    return rc;
  }
  int n_ctx = o->n_ctx > 0 ? o->n_ctx : 4096;
  if ((uint32_t)n_ctx > tmp.hp.n_ctx_train) n_ctx = (int)tmp.hp.n_ctx_train;
  tmp.B = o->n_batch > 0 ? o->n_batch : 256;
  tmp.kv_stride = (int64_t)tmp.hp.n_head_kv * tmp.hp.head_dim;
  alloc_scratch(&tmp, true);
  *scratch = tmp.scratch_bytes + model_meta_bytes(f); // the session charges this too
  *state = model_state_bytes(&tmp.hp, n_ctx, o->kv_k, o->kv_v);
  *weights = 0;
  for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
    const struct gguf_tensor *t = gguf_tensor_at(f, i);
    if (!(o->dense_only && is_routed(t))) *weights += ferry_align_up(t->nbytes, 64);
  }
  free(tmp.layers);
  hparams_free(&tmp.hp);
  return 0;
}

void model_destroy(struct model *m) {
  if (!m) return;
  for (uint32_t l = 0; m->kc && l < m->hp.n_layer; l++) {
    ferry_free_aligned(m->kc[l]), ferry_free_aligned(m->vc[l]);
    ferry_free_aligned(m->conv_state[l]), ferry_free_aligned(m->ssm_state[l]);
  }
  free(m->kc), free(m->vc), free(m->conv_state), free(m->ssm_state);
  void *bufs[] = {
      m->x,       m->a,       m->q,        m->k,      m->v,     m->att,          m->gate,
      m->mlog,    m->moe_out, m->slot_out, m->tmp1,   m->tmp2,  m->tmp3,         m->tmp4,
      m->eg,      m->eu,      m->ed,       m->ex,     m->top_w, m->top_ids,      m->grp_rows,
      m->grp_cnt, m->sel,     m->pos_of,   m->pf_ids, m->pf_w,  m->attn_scratch, (void *)m->eptr,
      m->xg_g,    m->xg_u,    m->hq,       m->qin,    m->eG,    m->eU,           m->grp_off,
      m->uniq,    m->done,    m->actq};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) ferry_free_aligned(bufs[i]);
  ferry_free_aligned(m->wbuf);
  free(m->layers);
  hparams_free(&m->hp);
  free(m);
}

const struct model_hparams *model_hparams(const struct model *m) { return &m->hp; }
const struct layer_weights *model_layer(const struct model *m, int l) { return &m->layers[l]; }
void model_set_pool(struct model *m, struct ferry_pool *pool) {
  FERRY_ASSERT(!pool || ferry_pool_size(pool) <= m->attn_workers);
  m->pool = pool;
}
void model_set_expert_source(struct model *m, const struct expert_source *src) {
  m->src = *src;
  m->src_set = true;
}
void model_mem(const struct model *m, uint64_t *weights, uint64_t *state, uint64_t *scratch) {
  if (weights) *weights = m->wbuf_bytes;
  if (state) *state = m->state_bytes;
  if (scratch) *scratch = m->scratch_bytes;
}
double model_load_seconds(const struct model *m) { return m->load_s; }
int model_n_ctx(const struct model *m) { return m->n_ctx; }
int model_pos(const struct model *m) { return m->pos; }

void model_reset(struct model *m) {
  m->pos = 0;
  const struct model_hparams *hp = &m->hp;
  for (uint32_t l = 0; l < hp->n_layer; l++) {
    if (m->conv_state[l]) {
      uint64_t conv_dim = 2ull * hp->ssm_n_k_heads * hp->ssm_head_k + hp->ssm_inner;
      memset(m->conv_state[l], 0, 4ull * (hp->ssm_conv_k - 1) * conv_dim);
      memset(m->ssm_state[l], 0, 4ull * hp->ssm_n_v_heads * hp->ssm_head_k * hp->ssm_head_v);
    }
  }
}

// ---------------------------------------------------------------------------------------
// forward

// y[T][w.nrows] = x[T][w.n] . W^T, with W's bytes at wdata.
static void mm(struct model *m, const struct weight *w, const void *wdata, const float *x,
               int64_t T, float *y) {
  if (m->o.exact) {
    cpu_matmul_exact(m->pool, w->type, wdata, w->nrows, w->n, x, w->n, T, y, w->nrows);
    return;
  }
  enum ferry_type vt = cpu_vec_dot_type(w->type);
  size_t rb = cpu_act_row_bytes(w->type, w->n);
  for (int64_t t = 0; t < T; t++) cpu_quantize_act(vt, x + t * w->n, m->actq + t * rb, w->n);
  cpu_matmul(m->pool, w->type, wdata, w->nrows, w->n, m->actq, rb, T, y, w->nrows);
}

static void embed(struct model *m, const int32_t *tok, int T) {
  const struct weight *w = &m->token_embd;
  for (int t = 0; t < T; t++)
    cpu_dequant_row(w->type, (const uint8_t *)w->data + (uint64_t)tok[t] * w->nb1,
                    m->x + (int64_t)t * w->n, w->n);
}

// Full (softmax) attention of qwen3moe and the gated attention of qwen3next.
static void attention(struct model *m, int l, int T) {
  const struct model_hparams *hp = &m->hp;
  const struct layer_weights *L = &m->layers[l];
  int64_t H = hp->n_head, Hkv = hp->n_head_kv, hd = hp->head_dim, d = hp->n_embd;
  bool gated = hp->arch == ARCH_QWEN3NEXT;
  int64_t qdim = H * hd;
  float *q = m->q, *k = m->k, *v = m->v, *o = m->att;
  if (gated) {
    // attn_q rows are per head [query hd | gate hd]: split into q and gate.
    mm(m, &L->wq, L->wq.data, m->a, T, m->tmp1);
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < H; h++) {
        memcpy(q + t * qdim + h * hd, m->tmp1 + t * 2 * qdim + h * 2 * hd, hd * sizeof(float));
        memcpy(m->gate + t * qdim + h * hd, m->tmp1 + t * 2 * qdim + h * 2 * hd + hd,
               hd * sizeof(float));
      }
  } else {
    mm(m, &L->wq, L->wq.data, m->a, T, q);
  }
  mm(m, &L->wk, L->wk.data, m->a, T, k);
  mm(m, &L->wv, L->wv.data, m->a, T, v);
  for (int64_t t = 0; t < T; t++) {
    cpu_rmsnorm_heads(q + t * qdim, L->q_norm.data, H, hd, hp->eps);
    cpu_rmsnorm_heads(k + t * Hkv * hd, L->k_norm.data, Hkv, hd, hp->eps);
  }
  cpu_rope_neox_rows(q, T, H, hd, hp->n_rot, m->pos, hp->rope_base);
  cpu_rope_neox_rows(k, T, Hkv, hd, hp->n_rot, m->pos, hp->rope_base);
  int rc = cpu_kv_store(m->kc[l], m->o.kv_k, m->kv_stride, m->pos, T, k, Hkv * hd);
  FERRY_ASSERT(rc == 0);
  rc = cpu_kv_store(m->vc[l], m->o.kv_v, m->kv_stride, m->pos, T, v, Hkv * hd);
  FERRY_ASSERT(rc == 0);
  FERRY_ASSERT(m->o.kv_k == m->o.kv_v);
  if (m->o.exact) // the scalar reference: double sums, what the exact path promises
    cpu_attn_prefill(o, q, m->kc[l], m->vc[l], m->o.kv_k, T, m->pos, H, Hkv, hd, m->kv_stride,
                     1.0f / sqrtf((float)hd));
  else
    cpu_attn_fast(m->pool, o, q, m->kc[l], m->vc[l], m->o.kv_k, T, m->pos, H, Hkv, hd, m->kv_stride,
                  1.0f / sqrtf((float)hd), m->attn_scratch, m->n_ctx);
  if (gated) cpu_sigmoid_mul(o, o, m->gate, T * qdim);
  mm(m, &L->wo, L->wo.data, o, T, m->tmp1);
  cpu_add(m->x, m->x, m->tmp1, T * d);
}

// Gated DeltaNet mixer (qwen3next), token by token in the exact recurrent form.
static int deltanet(struct model *m, int l, int T) {
  const struct model_hparams *hp = &m->hp;
  const struct layer_weights *L = &m->layers[l];
  int64_t d = hp->n_embd, nk = hp->ssm_n_k_heads, nv = hp->ssm_n_v_heads, dk = hp->ssm_head_k,
          dv = hp->ssm_head_v;
  int64_t key_dim = nk * dk, value_dim = nv * dv, conv_dim = 2 * key_dim + value_dim,
          Kc = hp->ssm_conv_k;
  float *u = m->q, *z = m->k, *y = m->tmp2, *o = m->att;
  if (hp->legacy_layout) {
    mm(m, &L->ssm_in, L->ssm_in.data, m->a, T, m->tmp1);
    cpu_ssm_in_regroup(u, z, m->tmp1, T, nk, nv, dk, dv);
  } else {
    mm(m, &L->attn_qkv, L->attn_qkv.data, m->a, T, u);
    mm(m, &L->attn_gate, L->attn_gate.data, m->a, T, z);
  }
  mm(m, &L->ssm_ba, L->ssm_ba.data, m->a, T, m->tmp3);
  float *b = m->tmp4, *a = b + T * nv, *beta = a + T * nv, *g = beta + T * nv, *decay = g + T * nv;
  cpu_ssm_ba_regroup(b, a, m->tmp3, T, nk, nv);
  cpu_delta_gates(beta, g, decay, b, a, L->ssm_a.data, L->ssm_dt.data, T, nv);
  cpu_ssm_conv_rows(y, m->conv_state[l], u, L->ssm_conv1d.data, T, conv_dim, Kc, 1);
  for (int64_t t = 0; t < T; t++) {
    cpu_l2norm_heads(y + t * conv_dim, nk, dk, hp->eps, 1.0f / sqrtf((float)dk));
    cpu_l2norm_heads(y + t * conv_dim + key_dim, nk, dk, hp->eps, 1.0f);
  }
  // Decode and short chunks run the exact recurrence; longer prefill chunks the chunked
  // (WY) form, equal up to rounding and faster from 16 tokens on (NOTES.md).
  if (T < CPU_DELTA_CHUNK_MIN_T) {
    cpu_delta_recurrent(m->pool, o, value_dim, m->ssm_state[l], y, conv_dim, y + key_dim, conv_dim,
                        y + 2 * key_dim, conv_dim, beta, decay, T, nk, nv, dk, dv);
  } else {
    int rc = cpu_delta_prefill(m->pool, o, value_dim, m->ssm_state[l], y, conv_dim, y + key_dim,
                               conv_dim, y + 2 * key_dim, conv_dim, beta, g, T, nk, nv, dk, dv);
    if (rc) return rc;
  }
  for (int64_t t = 0; t < T; t++)
    cpu_gated_rmsnorm_heads(o + t * value_dim, o + t * value_dim, z + t * value_dim,
                            L->ssm_norm.data, nv, dv, hp->eps);
  mm(m, &L->ssm_out, L->ssm_out.data, o, T, m->tmp1);
  cpu_add(m->x, m->x, m->tmp1, T * d);
  return 0;
}

// Exact path, one expert at a time: gathers its tokens' F32 rows, and writes its
// outputs to the grouped rows [grp_off[e], +cnt) of slot_out.
static void expert_exact(struct model *m, const struct layer_weights *L, int32_t e,
                         const void *const *p) {
  int64_t d = m->hp.n_embd, K = m->hp.n_expert_used;
  int cnt = m->grp_cnt[e];
  const int32_t *rows = m->grp_rows + m->grp_off[e];
  for (int r = 0; r < cnt; r++)
    memcpy(m->ex + (int64_t)r * d, m->a + (int64_t)(rows[r] / K) * d, d * sizeof(float));
  mm(m, &L->exps[EXP_GATE], p[EXP_GATE], m->ex, cnt, m->eg);
  mm(m, &L->exps[EXP_UP], p[EXP_UP], m->ex, cnt, m->eu);
  cpu_swiglu(m->eg, m->eg, m->eu, (int64_t)cnt * L->exps[EXP_GATE].nrows);
  cpu_matmul_exact(m->pool, L->exps[EXP_DOWN].type, p[EXP_DOWN], d, L->exps[EXP_DOWN].n, m->eg,
                   L->exps[EXP_DOWN].n, cnt, m->slot_out + (int64_t)m->grp_off[e] * d, d);
}

// Fast path, n experts at once: the gate and up products of all of them in one pool
// call, then the down products in another. Inputs were quantized into grouped rows
// (xg_g / xg_u) by moe(); outputs land in the grouped rows of slot_out.
static void experts_fast(struct model *m, const struct layer_weights *L, int n) {
  int64_t d = m->hp.n_embd, ff = m->hp.n_ff_exp;
  const struct weight *wg = &L->exps[EXP_GATE], *wu = &L->exps[EXP_UP], *wd = &L->exps[EXP_DOWN];
  struct cpu_mm_job jobs[2 * n];
  for (int i = 0; i < n; i++) {
    int32_t e = m->sel[i];
    int64_t p0 = m->grp_off[e], cnt = m->grp_cnt[e];
    jobs[2 * i] =
        (struct cpu_mm_job){wg->type, m->eptr[i][EXP_GATE], ff, d, m->xg_g + p0 * m->rb_g, m->rb_g,
                            cnt,      m->eG + p0 * ff,      ff};
    jobs[2 * i + 1] =
        (struct cpu_mm_job){wu->type, m->eptr[i][EXP_UP], ff, d, m->xg_u + p0 * m->rb_u, m->rb_u,
                            cnt,      m->eU + p0 * ff,    ff};
  }
  cpu_matmul_batch(m->pool, 2 * n, jobs);
  enum ferry_type vt = cpu_vec_dot_type(wd->type);
  size_t rb = cpu_act_row_bytes(wd->type, ff);
  for (int i = 0; i < n; i++) {
    int32_t e = m->sel[i];
    int64_t p0 = m->grp_off[e], cnt = m->grp_cnt[e];
    cpu_swiglu(m->eG + p0 * ff, m->eG + p0 * ff, m->eU + p0 * ff, cnt * ff);
    for (int64_t r = p0; r < p0 + cnt; r++)
      cpu_quantize_act(vt, m->eG + r * ff, m->hq + r * rb, ff);
    jobs[i] = (struct cpu_mm_job){wd->type, m->eptr[i][EXP_DOWN], d, ff, m->hq + p0 * rb, rb,
                                  cnt,      m->slot_out + p0 * d, d};
  }
  cpu_matmul_batch(m->pool, n, jobs);
}

// Decode in stream mode: guess the next layer's experts by running its router on this
// layer's MoE input (the residual stream changes little from one layer to the next) and
// start reading them, so their reads overlap this layer's compute. A wrong guess costs a
// read and may evict a cached expert. Off unless --prefetch: on random-weight models the
// guesses are wrong and it reads 4x more (NOTES.md); to be measured on real weights.
static void prefetch_next(struct model *m, int l, int T, const float *mn) {
  const struct model_hparams *hp = &m->hp;
  if (T != 1 || !m->src.prefetch || (uint32_t)l + 1 >= hp->n_layer || !m->o.prefetch) return;
  int64_t E = hp->n_expert, K = hp->n_expert_used;
  const struct layer_weights *N = &m->layers[l + 1];
  float *lg = m->mlog + E; // mlog has room for (B + 1) * E
  mm(m, &N->router, N->router.data, mn, 1, lg);
  if (cpu_router_topk(lg, E, K, m->pf_ids, m->pf_w) == 0)
    m->src.prefetch(m->src.ctx, l + 1, (int)K, m->pf_ids);
}

static int moe(struct model *m, int l, int T) {
  const struct model_hparams *hp = &m->hp;
  const struct layer_weights *L = &m->layers[l];
  int64_t d = hp->n_embd, E = hp->n_expert, K = hp->n_expert_used;
  float *mn = m->a;
  // router logits are computed in F32 whatever the path (the router weight is F32)
  mm(m, &L->router, L->router.data, mn, T, m->mlog);
  int rc = cpu_router_topk_rows(m->mlog, T, E, K, m->top_ids, m->top_w);
  FERRY_ASSERT(rc == 0);
  // group (token, slot) pairs by expert (counting sort keeps token order inside a group)
  memset(m->grp_cnt, 0, (E + 1) * sizeof(int32_t));
  for (int64_t i = 0; i < T * K; i++) m->grp_cnt[m->top_ids[i]]++;
  int nu = 0;
  for (int64_t e = 0, acc = 0; e < E; e++) {
    m->grp_off[e] = (int32_t)acc;
    acc += m->grp_cnt[e];
    if (m->grp_cnt[e]) m->uniq[nu++] = (int32_t)e;
  }
  m->grp_off[E] = (int32_t)(T * K);
  for (int64_t e = 0; e < E; e++) m->grp_cnt[e] = 0;
  for (int64_t i = 0; i < T * K; i++) {
    int32_t e = m->top_ids[i];
    m->grp_rows[m->grp_off[e] + m->grp_cnt[e]++] = (int32_t)i;
  }
  for (int64_t p = 0; p < T * K; p++) m->pos_of[m->grp_rows[p]] = (int32_t)p;
  if (!m->o.exact) {
    // quantize each token's input once, then copy it to the grouped rows of its pairs
    const struct weight *wg = &L->exps[EXP_GATE], *wu = &L->exps[EXP_UP];
    size_t rbg = cpu_act_row_bytes(wg->type, d), rbu = cpu_act_row_bytes(wu->type, d);
    FERRY_ASSERT(rbg <= m->rb_g && rbu <= m->rb_u);
    uint8_t *qg = m->qin, *qu = m->qin + (size_t)T * rbg;
    for (int64_t t = 0; t < T; t++) {
      cpu_quantize_act(cpu_vec_dot_type(wg->type), mn + t * d, qg + t * rbg, d);
      cpu_quantize_act(cpu_vec_dot_type(wu->type), mn + t * d, qu + t * rbu, d);
    }
    for (int64_t p = 0; p < T * K; p++) {
      int64_t t = m->grp_rows[p] / K;
      memcpy(m->xg_g + p * m->rb_g, qg + t * rbg, rbg);
      memcpy(m->xg_u + p * m->rb_u, qu + t * rbu, rbu);
    }
  }
  // Acquire the layer's experts in as few batches as the source can hold. Compute what
  // is resident (or has landed) together while the other reads are in flight; when
  // nothing is ready, block on the next one.
  int maxb = nu;
  for (int u0 = 0; u0 < nu;) {
    int nb = nu - u0 < maxb ? nu - u0 : maxb;
    rc = m->src.acquire(m->src.ctx, l, nb, m->uniq + u0);
    if (rc == -ENOSPC && nb > 1) {
      maxb = nb / 2;
      continue;
    }
    if (rc) return ferry_fail_ctx(rc, "layer %d experts", l);
    if (u0 == 0) prefetch_next(m, l, T, mn); // after this layer's own misses are queued
    memset(m->done, 0, nb);
    for (int left = nb; left > 0;) {
      int ns = 0, idx[nb];
      for (int j = 0; j < nb; j++)
        if (!m->done[j] && m->src.ready(m->src.ctx, j)) idx[ns++] = j;
      if (ns == 0)
        for (int j = 0; j < nb && !ns; j++)
          if (!m->done[j]) idx[ns++] = j;
      for (int i = 0; i < ns; i++) {
        rc = m->src.get(m->src.ctx, idx[i], m->eptr[i]);
        if (rc) {
          m->src.release(m->src.ctx, l, nb);
          return rc;
        }
        m->sel[i] = m->uniq[u0 + idx[i]];
        m->done[idx[i]] = true;
      }
      if (m->o.exact)
        for (int i = 0; i < ns; i++) expert_exact(m, L, m->sel[i], m->eptr[i]);
      else
        experts_fast(m, L, ns);
      left -= ns;
    }
    m->src.release(m->src.ctx, l, nb);
    u0 += nb;
  }
  // weighted sum in router order
  for (int64_t t = 0; t < T; t++) {
    float *y = m->moe_out + t * d;
    memset(y, 0, d * sizeof(float));
    for (int64_t s = 0; s < K; s++)
      cpu_axpy(y, m->slot_out + (int64_t)m->pos_of[t * K + s] * d, m->top_w[t * K + s], d);
  }
  if (hp->arch == ARCH_QWEN3NEXT) {
    // shared expert with a sigmoid scalar gate
    int64_t sff = hp->n_ff_shexp;
    mm(m, &L->sh_gate, L->sh_gate.data, mn, T, m->eg);
    mm(m, &L->sh_up, L->sh_up.data, mn, T, m->eu);
    cpu_swiglu(m->eg, m->eg, m->eu, T * sff);
    mm(m, &L->sh_down, L->sh_down.data, m->eg, T, m->ed);
    mm(m, &L->sh_gate_inp, L->sh_gate_inp.data, mn, T, m->tmp1);
    for (int64_t t = 0; t < T; t++) {
      float g = 1.0f / (1.0f + expf(-m->tmp1[t]));
      cpu_axpy(m->moe_out + t * d, m->ed + t * d, g, d);
    }
  }
  cpu_add(m->x, m->x, m->moe_out, T * d);
  return 0;
}

// With FERRY_CHECK_FINITE=1: fails at the first layer whose output x (the residual
// stream of the chunk, T rows of n_embd) holds NaN or inf, naming the layer and position,
// so a bad weight or an overflow is found where it starts rather than in the logits.
static int check_finite(struct model *m, int layer, const float *x, int64_t n) {
  if (!m->check_finite) return 0;
  int64_t d = m->hp.n_embd;
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(x[i]))
      return ferry_fail(-ERANGE,
                        "FERRY_CHECK_FINITE: the output of layer %d is not finite at position %lld "
                        "(element %lld is %g); every earlier layer's output was finite",
                        layer, (long long)(m->pos + i / d), (long long)(i % d), (double)x[i]);
  return 0;
}

static int forward_chunk(struct model *m, const int32_t *tok, int T, const bool *want,
                         float *logits, int *n_out) {
  const struct model_hparams *hp = &m->hp;
  int64_t d = hp->n_embd;
  embed(m, tok, T);
  for (uint32_t l = 0; l < hp->n_layer; l++) {
    const struct layer_weights *L = &m->layers[l];
    cpu_rmsnorm_rows(m->a, m->x, L->attn_norm.data, T, d, hp->eps);
    int rc = 0;
    if (hp->arch == ARCH_QWEN3NEXT && hp->recurrent[l])
      rc = deltanet(m, (int)l, T);
    else
      attention(m, (int)l, T);
    if (rc) return rc;
    cpu_rmsnorm_rows(m->a, m->x, L->ffn_norm.data, T, d, hp->eps);
    if ((rc = moe(m, (int)l, T))) return rc;
    if ((rc = check_finite(m, (int)l, m->x, (int64_t)T * d))) return rc;
  }
  m->pos += T;
  // output head for the requested rows
  int nw = 0;
  for (int t = 0; t < T; t++)
    if (want[t]) memcpy(m->a + (int64_t)nw++ * d, m->x + (int64_t)t * d, d * sizeof(float));
  if (nw) {
    cpu_rmsnorm_rows(m->a, m->a, m->output_norm.data, nw, d, hp->eps);
    // the output matrix is large: one row block of tokens at a time keeps logits in place
    mm(m, &m->output, m->output.data, m->a, nw, logits + (int64_t)*n_out * hp->n_vocab);
  }
  *n_out += nw;
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
  if (!m->src_set) return ferry_fail(-EINVAL, "no expert source configured");
  int n_out = 0;
  bool want_buf[m->B];
  for (int i0 = 0; i0 < n; i0 += m->B) {
    int T = n - i0 < m->B ? n - i0 : m->B;
    for (int t = 0; t < T; t++) want_buf[t] = want_logits ? want_logits[i0 + t] : (i0 + t == n - 1);
    int rc = forward_chunk(m, tokens + i0, T, want_buf, logits, &n_out);
    if (rc) return rc;
  }
  return 0;
}
