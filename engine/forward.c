// engine/forward.c: the forward pass over kernels/backend.h, as ../shared/MODEL_SPEC.md §4
// and §5 state it: the forward buffers, the blocks both architectures share (embedding,
// attention, routed experts, output head), one chunk of tokens through every layer, and
// the decode graph.
//
// A chunk of T tokens (T = 1 in decode) runs through each layer as matrix products. The
// routed experts of a layer either are resident (full mode: the backend picks them by id,
// moe_ffn_ids, without a round trip to the host) or come from the expert source (stream
// mode: the ids come back to the host, tokens are grouped by expert, each expert is
// computed once per chunk as soon as its bytes are ready, moe_ffn). Every (token, slot)
// output has its own row and the slots are summed in router order (moe_combine), so the
// result does not depend on the order experts are computed or where their bytes came
// from: full and stream mode are bit-identical on one backend.
//
// Decode on a backend that can capture graphs (CUDA) records the whole token once (input
// copy, every layer, output head, logits copy) and replays it; the position is read by
// the kernels from backend memory, so the same graph serves every position.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/model_impl.h"

// ---------------------------------------------------------------------------------------
// FERRY_PROFILE=1: where a forward pass spends its time, by section (embedding, attention,
// DeltaNet, router, experts, shared expert, head). Marks are events on the compute stream
// (device backends) or wall-clock times (CPU); each section's time runs from the previous
// mark. Decode runs op by op while profiling (a graph cannot be split). Printed to stderr
// when the model is destroyed.

#define PROF_MARKS 512
#define PROF_NAMES 16
struct fwd_prof {
  int n;                                  // marks of the current chunk
  const char *mark[PROF_MARKS];           // section that ends at mark i
  struct ferry_event *ev[PROF_MARKS + 1]; // ev[0] starts the chunk
  double wall[PROF_MARKS + 1];
  const char *name[PROF_NAMES];
  double total[PROF_NAMES];
  uint64_t count[PROF_NAMES];
  double chunk_s; // summed chunk wall time
};

int fwd_prof_init(struct model *m) {
  const char *e = getenv("FERRY_PROFILE");
  if (!e || !*e || !strcmp(e, "0")) return 0;
  struct fwd_prof *p = calloc(1, sizeof *p);
  if (!p) return ferry_fail(-ENOMEM, "out of memory");
  m->prof = p;
  if (!m->host_mem)
    for (int i = 0; i <= PROF_MARKS; i++) CK(m->be->ops.event_create(m->be, &p->ev[i]));
  return 0;
}

static void prof_start(struct model *m) {
  struct fwd_prof *p = m->prof;
  p->n = 0;
  p->wall[0] = ferry_now_s();
  if (p->ev[0]) m->be->ops.event_record(m->be, p->ev[0], m->st);
}

void fwd_prof_mark(struct model *m, const char *section) {
  struct fwd_prof *p = m->prof;
  if (!p || m->capturing || p->n >= PROF_MARKS) return;
  p->mark[p->n] = section;
  p->n++;
  p->wall[p->n] = ferry_now_s();
  if (p->ev[p->n]) m->be->ops.event_record(m->be, p->ev[p->n], m->st);
}

static void prof_end(struct model *m) {
  struct fwd_prof *p = m->prof;
  if (!m->host_mem) m->be->ops.stream_sync(m->be, m->st);
  p->chunk_s += ferry_now_s() - p->wall[0];
  for (int i = 0; i < p->n; i++) {
    double dt = p->wall[i + 1] - p->wall[i];
    if (p->ev[i]) {
      const float ms = m->be->ops.event_elapsed_ms(m->be, p->ev[i], p->ev[i + 1]);
      if (ms >= 0) dt = ms * 1e-3;
    }
    int k = 0;
    while (k < PROF_NAMES && p->name[k] && strcmp(p->name[k], p->mark[i])) k++;
    if (k == PROF_NAMES) continue;
    p->name[k] = p->mark[i];
    p->total[k] += dt;
    p->count[k]++;
  }
}

void fwd_prof_done(struct model *m) {
  struct fwd_prof *p = m->prof;
  if (!p) return;
  double sum = 0;
  for (int k = 0; k < PROF_NAMES && p->name[k]; k++) sum += p->total[k];
  fprintf(stderr, "profile (%s): %.3f s in forward passes, %.3f s in sections\n", m->be->name,
          p->chunk_s, sum);
  for (int k = 0; k < PROF_NAMES && p->name[k]; k++)
    fprintf(stderr, "  %-12s %9.3f ms %5.1f%% (%llu)\n", p->name[k], p->total[k] * 1e3,
            sum > 0 ? 100 * p->total[k] / sum : 0, (unsigned long long)p->count[k]);
  for (int i = 0; i <= PROF_MARKS; i++)
    if (p->ev[i]) m->be->ops.event_destroy(m->be, p->ev[i]);
  free(p);
  m->prof = NULL;
}

// ---------------------------------------------------------------------------------------
// buffers

int fwd_alloc(struct model *m, bool dry) {
  const struct model_hparams *hp = &m->hp;
  const int64_t B = m->B, d = hp->n_embd, H = hp->n_head, Hkv = hp->n_head_kv, hd = hp->head_dim;
  const int64_t E = hp->n_expert, K = hp->n_expert_used, V = hp->n_vocab, sff = hp->n_ff_shexp;
  const bool next = hp->arch == ARCH_QWEN3NEXT;
  bool rec = false;
  for (uint32_t l = 0; next && l < hp->n_layer; l++) rec |= hp->recurrent[l];
  const int64_t nv = rec ? hp->ssm_n_v_heads : 0;
  const int64_t key_dim = rec ? (int64_t)hp->ssm_n_k_heads * hp->ssm_head_k : 0;
  const int64_t value_dim = rec ? nv * hp->ssm_head_v : 0, conv_dim = 2 * key_dim + value_dim;
  const int64_t qdim = H * hd;
  int64_t wide = next ? 2 * qdim : 0;
  if (rec && hp->legacy_layout && conv_dim + value_dim > wide) wide = conv_dim + value_dim;
  const int64_t qw = qdim > conv_dim ? qdim : conv_dim;
  const int64_t aw = qdim > value_dim ? qdim : value_dim;
  struct fwd_bufs *b = &m->b;
  struct {
    void **p;
    int64_t bytes;
  } t[] = {
      {(void **)&b->io, (1 + B) * 4},
      {(void **)&b->x, B * d * 4},
      {(void **)&b->xn, B * d * 4},
      {(void **)&b->proj, B * wide * 4},
      {(void **)&b->q, B * qw * 4},
      {(void **)&b->k, B * Hkv * hd * 4},
      {(void **)&b->v, B * Hkv * hd * 4},
      {(void **)&b->gate, B * aw * 4},
      {(void **)&b->att, B * aw * 4},
      {(void **)&b->conv, B * conv_dim * 4},
      {(void **)&b->ba, B * 2 * nv * 4},
      {(void **)&b->dn_b, B * nv * 4},
      {(void **)&b->dn_a, B * nv * 4},
      {(void **)&b->dn_beta, B * nv * 4},
      {(void **)&b->dn_g, B * nv * 4},
      {(void **)&b->blk, B * d * 4},
      {(void **)&b->rlog, 2 * B * E * 4},
      {(void **)&b->ids, B * K * 4},
      {(void **)&b->wts, B * K * 4},
      {(void **)&b->pred, B * K * 4},
      {(void **)&b->slots, B * K * d * 4},
      {(void **)&b->map, B * K * 4},
      {(void **)&b->rows, B * K * 4},
      {(void **)&b->moe, B * d * 4},
      {(void **)&b->sh_g, B * sff * 4},
      {(void **)&b->sh_u, B * sff * 4},
      {(void **)&b->sh_out, sff ? B * d * 4 : 0},
      {(void **)&b->sh_gate, sff ? B * 4 : 0},
      {(void **)&b->head, m->host_mem ? 0 : (int64_t)m->HR * V * 4},
  };
  const int n = (int)(sizeof t / sizeof t[0]);
  uint64_t total = 0;
  for (int i = 0; i < n; i++) total += ferry_align_up((uint64_t)t[i].bytes, 256);
  b->bytes = total;
  if (dry) return 0;
  int rc = m->be->ops.mem_alloc(m->be, &b->base, total);
  if (rc) return ferry_fail_ctx(rc, "forward buffers");
  uint8_t *p = b->base;
  for (int i = 0; i < n; i++) {
    *t[i].p = t[i].bytes ? p : NULL;
    p += ferry_align_up((uint64_t)t[i].bytes, 256);
  }
  return 0;
}

void fwd_free(struct model *m) {
  if (m->b.base) m->be->ops.mem_free(m->be, m->b.base);
  m->b.base = NULL;
}

// ---------------------------------------------------------------------------------------
// shared blocks

int fwd_linear(struct model *m, const struct weight *w, const float *x, int64_t T, float *y) {
  FERRY_ASSERT(w->loc == WLOC_BACKEND);
  return OP(matmul, m->prec, w->type, w->data, w->nrows, w->n, x, w->n, T, y, w->nrows);
}

// Full (softmax) attention of qwen3moe and the gated attention of qwen3next, on b.xn,
// added to b.x.
int fwd_attention(struct model *m, int l, int T) {
  const struct model_hparams *hp = &m->hp;
  const struct layer_weights *L = &m->layers[l];
  struct fwd_bufs *b = &m->b;
  const int64_t H = hp->n_head, Hkv = hp->n_head_kv, hd = hp->head_dim, d = hp->n_embd;
  const bool gated = hp->arch == ARCH_QWEN3NEXT;
  if (gated) {
    // attn_q rows are per head [query hd | gate hd]: split into q and gate
    CK(fwd_linear(m, &L->wq, b->xn, T, b->proj));
    CK(OP(copy2d, b->q, hd, b->proj, 2 * hd, T * H, hd));
    CK(OP(copy2d, b->gate, hd, b->proj + hd, 2 * hd, T * H, hd));
  } else {
    CK(fwd_linear(m, &L->wq, b->xn, T, b->q));
  }
  CK(fwd_linear(m, &L->wk, b->xn, T, b->k));
  CK(fwd_linear(m, &L->wv, b->xn, T, b->v));
  CK(OP(rmsnorm, b->q, b->q, L->q_norm.data, T * H, hd, hp->eps));
  CK(OP(rmsnorm, b->k, b->k, L->k_norm.data, T * Hkv, hd, hp->eps));
  CK(OP(rope_neox, b->q, T, H, hd, hp->n_rot, b->io, hp->rope_base));
  CK(OP(rope_neox, b->k, T, Hkv, hd, hp->n_rot, b->io, hp->rope_base));
  CK(OP(kv_store, m->kc[l], m->o.kv_k, m->kv_stride, b->io, T, b->k, Hkv * hd));
  CK(OP(kv_store, m->vc[l], m->o.kv_v, m->kv_stride, b->io, T, b->v, Hkv * hd));
  FERRY_ASSERT(m->o.kv_k == m->o.kv_v);
  CK(OP(attn, m->prec, b->att, b->q, m->kc[l], m->vc[l], m->o.kv_k, T, b->io, H, Hkv, hd,
        m->kv_stride, 1.0f / sqrtf((float)hd)));
  if (gated) CK(OP(sigmoid_mul, b->att, b->att, b->gate, T * H * hd));
  CK(fwd_linear(m, &L->wo, b->att, T, b->blk));
  return OP(add, b->x, b->x, b->blk, T * d);
}

static struct ferry_moe_shape moe_shape(const struct model *m, const struct layer_weights *L) {
  return (struct ferry_moe_shape){.t_gate = L->exps[EXP_GATE].type,
                                  .t_up = L->exps[EXP_UP].type,
                                  .t_down = L->exps[EXP_DOWN].type,
                                  .d = m->hp.n_embd,
                                  .ff = m->hp.n_ff_exp};
}

// Groups the chunk's (token, slot) pairs of h_ids by expert (a counting sort keeps token
// order inside a group): uniq[0..nu) the experts used, grp_off/grp_cnt their grouped rows,
// h_rows[r] the token of grouped row r, h_map[p] the grouped row of pair p.
static int group_pairs(struct model *m, int T) {
  const int64_t E = m->hp.n_expert, K = m->hp.n_expert_used;
  memset(m->grp_cnt, 0, (E + 1) * sizeof(int32_t));
  for (int64_t p = 0; p < T * K; p++) m->grp_cnt[m->h_ids[p]]++;
  int nu = 0;
  for (int64_t e = 0, acc = 0; e < E; e++) {
    m->grp_off[e] = (int32_t)acc;
    acc += m->grp_cnt[e];
    if (m->grp_cnt[e]) m->uniq[nu++] = (int32_t)e;
    m->grp_cnt[e] = 0;
  }
  for (int64_t p = 0; p < T * K; p++) {
    const int32_t e = m->h_ids[p], r = m->grp_off[e] + m->grp_cnt[e]++;
    m->h_rows[r] = (int32_t)(p / K);
    m->h_map[p] = r;
  }
  return nu;
}

// Device backends: the experts the cost model gave the CPU, computed from host RAM by the
// CPU backend on the layer's input (copied down once per layer), their output rows copied
// up into b.slots.
static int moe_on_cpu(struct model *m, const struct ferry_moe_shape *sh, int T, int nc,
                      bool *first) {
  struct fwd_bufs *b = &m->b;
  const int64_t d = m->hp.n_embd;
  if (*first) {
    CK(OP(copy_d2h, m->h_xn, b->xn, (size_t)T * d * 4));
    CK(m->be->ops.stream_sync(m->be, m->st));
  }
  const double t0 = ferry_now_s();
  CK(m->cpu->ops.moe_ffn(m->cpu, m->prec, sh, m->h_xn, T, *first, m->h_rows, nc, m->cgroups,
                         m->h_cslots, NULL));
  m->ecnt.cpu_s += ferry_now_s() - t0;
  *first = false;
  for (int i = 0; i < nc; i++) {
    const int64_t off = m->cgroups[i].off, cnt = m->cgroups[i].cnt;
    CK(OP(copy_h2d, b->slots + off * d, m->h_cslots + off * d, (size_t)(cnt * d * 4)));
  }
  m->ecnt.cpu += (uint64_t)nc;
  return 0;
}

// Where one acquired expert is computed: on the backend from its VRAM slot (device) or
// host bytes (CPU backends), or by the CPU from host RAM. Returns 1 when it was placed in
// one of the two batches, 0 when its bytes are not there yet.
static int place_expert(struct model *m, int l, struct expert_ref *r, int cnt, double *cpu_busy,
                        double *gpu_busy, int *nd, int *nc) {
  const struct layer_weights *L = &m->layers[l];
  const uint64_t bytes = L->exps[0].nb2 + L->exps[1].nb2 + L->exps[2].nb2;
  const void *const *w = NULL;
  bool on_cpu = false;
  if (r->on_dev) {
    w = r->dev;
    *gpu_busy += cost_gpu_s(&m->cm, 0, cnt);
  } else if (!r->host_ready) {
    return 0;
  } else if (m->host_mem) {
    w = r->host;
  } else {
    // in host RAM: the cost model (or --expert-compute) picks the side
    enum expert_side side = !m->cpu ? SIDE_GPU
                            : !m->src.to_device
                                ? SIDE_CPU
                                : cost_decide(&m->cm, bytes, cnt, cpu_busy, gpu_busy);
    if (side == SIDE_GPU) {
      int rc = m->src.to_device(m->src.ctx, l, r);
      if (rc == -ENOSPC && m->cpu) {
        ferry_clear_error();
        side = SIDE_CPU;
      } else if (rc) {
        return rc < 0 ? rc : -EIO;
      } else {
        w = r->dev;
      }
    }
    if (side == SIDE_CPU) {
      on_cpu = true;
      w = r->host;
      // promotion: an expert found in host RAM has been used before; copy it to VRAM for
      // its next use while the CPU computes it now (skipped when every slot is pinned)
      if (r->tier == EXPERT_HOST && m->src.to_device) {
        if (m->src.to_device(m->src.ctx, l, r))
          ferry_clear_error();
        else
          m->ecnt.promoted++;
      }
    }
  }
  const int32_t e = r->expert;
  struct ferry_moe_group *g = on_cpu ? &m->cgroups[(*nc)++] : &m->groups[(*nd)++];
  *g = (struct ferry_moe_group){.w = {w[0], w[1], w[2]}, .off = m->grp_off[e], .cnt = cnt};
  if (!on_cpu && r->on_dev && r->ev) CK(m->be->ops.stream_wait_event(m->be, m->st, r->ev));
  return 1;
}

// Stream mode: acquire the layer's experts in as few batches as the source can hold;
// compute what is resident (VRAM, or host RAM) together while the other reads are in
// flight, and when nothing is ready, block on the next read.
static int moe_streamed(struct model *m, int l, int T) {
  const struct layer_weights *L = &m->layers[l];
  struct fwd_bufs *b = &m->b;
  const int64_t K = m->hp.n_expert_used;
  const struct ferry_moe_shape sh = moe_shape(m, L);
  CK(OP(copy_d2h, m->h_ids, b->ids, (size_t)T * K * 4));
  CK(m->be->ops.stream_sync(m->be, m->st));
  const int nu = group_pairs(m, T);
  CK(OP(copy_h2d, b->rows, m->h_rows, (size_t)T * K * 4));
  CK(OP(copy_h2d, b->map, m->h_map, (size_t)T * K * 4));
  bool first_dev = true, first_cpu = true;
  // without the CPU, every expert of a batch needs a VRAM slot at once
  int maxb = !m->host_mem && (!m->cpu || m->cm.policy == EXPERT_GPU) && m->src.dev_slots &&
                     m->src.dev_slots < nu
                 ? m->src.dev_slots
                 : nu;
  for (int u0 = 0; u0 < nu;) {
    const int nb = nu - u0 < maxb ? nu - u0 : maxb;
    struct expert_ref *refs = m->refs;
    int rc = m->src.acquire(m->src.ctx, l, nb, m->uniq + u0, refs);
    if (rc == -ENOSPC && nb > 1) {
      maxb = nb / 2;
      ferry_clear_error();
      continue;
    }
    if (rc) return ferry_fail_ctx(rc, "layer %d experts", l);
    if (u0 == 0 && T == 1 && m->o.prefetch && m->src.prefetch &&
        (uint32_t)l + 1 < m->hp.n_layer) // after this layer's own misses are queued
      m->src.prefetch(m->src.ctx, l + 1, (int)K, m->h_pred + (int64_t)(l + 1) * m->B * K);
    memset(m->done, 0, nb);
    double cpu_busy = 0, gpu_busy = 0;
    for (int left = nb; left > 0 && !rc;) {
      m->src.poll(m->src.ctx, nb, refs);
      int nd = 0, nc = 0;
      for (int j = 0; j < nb && rc >= 0; j++) {
        if (m->done[j]) continue;
        const int32_t e = m->uniq[u0 + j];
        const int cnt = m->grp_cnt[e];
        rc = place_expert(m, l, &refs[j], cnt, &cpu_busy, &gpu_busy, &nd, &nc);
        if (rc > 0) m->done[j] = true;
      }
      if (rc < 0) break;
      rc = 0;
      if (!nd && !nc) { // nothing has landed: block on the first outstanding read
        for (int j = 0; j < nb; j++)
          if (!m->done[j]) {
            const double t0 = ferry_now_s();
            rc = m->src.wait(m->src.ctx, &refs[j]);
            m->ecnt.disk_wait_s += ferry_now_s() - t0;
            break;
          }
        continue;
      }
      // the device batch first (asynchronous), then the CPU's while the device works
      if (nd) {
        rc = OP(moe_ffn, m->prec, &sh, b->xn, T, first_dev, b->rows, nd, m->groups, b->slots);
        first_dev = false;
        *(m->host_mem ? &m->ecnt.cpu : &m->ecnt.gpu) += (uint64_t)nd;
      }
      if (!rc && nc) rc = moe_on_cpu(m, &sh, T, nc, &first_cpu);
      left -= nd + nc;
    }
    struct ferry_event *used = NULL;
    if (!rc && m->ev_used) {
      rc = m->be->ops.event_record(m->be, m->ev_used, m->st);
      used = m->ev_used;
    }
    m->src.release(m->src.ctx, l, nb, refs, used);
    if (rc) return rc;
    u0 += nb;
  }
  return OP(moe_combine, b->moe, b->slots, b->map, b->wts, T, K, m->hp.n_embd);
}

// Gives the observer this layer's routing (host copies). In a graph the copies are
// recorded and the observer is called after the replay (fwd_chunk).
static int observe(struct model *m, int l, int T) {
  const int64_t K = m->hp.n_expert_used, BK = (int64_t)m->B * K;
  const bool pred = m->o.predict_routes && l > 0;
  if (m->capturing) {
    CK(OP(copy_d2h, m->h_ids_all + l * K, m->b.ids, K * 4));
    return OP(copy_d2h, m->h_wts_all + l * K, m->b.wts, K * 4);
  }
  CK(OP(copy_d2h, m->h_ids, m->b.ids, (size_t)T * K * 4));
  CK(OP(copy_d2h, m->h_wts, m->b.wts, (size_t)T * K * 4));
  CK(m->be->ops.stream_sync(m->be, m->st));
  m->obs.on_route(m->obs.ctx, l, m->pos, T, (int)K, m->h_ids, m->h_wts,
                  pred ? m->h_pred + l * BK : NULL);
  return 0;
}

// The routed experts of layer l on b.xn: their router-order sum into b.moe (not yet added
// to the residual: qwen3next adds its shared expert first).
int fwd_moe(struct model *m, int l, int T) {
  const struct model_hparams *hp = &m->hp;
  const struct layer_weights *L = &m->layers[l];
  struct fwd_bufs *b = &m->b;
  const int64_t E = hp->n_expert, K = hp->n_expert_used, BK = (int64_t)m->B * K;
  CK(fwd_linear(m, &L->router, b->xn, T, b->rlog));
  CK(OP(router_topk, b->rlog, T, E, K, b->ids, b->wts));
  fwd_prof_mark(m, "router");
  // The stale gate: the next layer's router on this layer's input guesses its experts
  // (the residual stream changes little from one layer to the next); for prefetch in
  // stream mode and for the routing statistics.
  const bool guess = m->o.predict_routes || (m->o.prefetch && m->o.dense_only && T == 1);
  if (guess && (uint32_t)l + 1 < hp->n_layer) {
    float *lg = b->rlog + (int64_t)m->B * E; // this layer's logits are used up: their half
    CK(fwd_linear(m, &m->layers[l + 1].router, b->xn, T, lg)); // takes the guess's weights
    CK(OP(router_topk, lg, T, E, K, b->pred, b->rlog));
    CK(OP(copy_d2h, m->h_pred + (l + 1) * BK, b->pred, (size_t)T * K * 4));
  }
  if (guess) fwd_prof_mark(m, "guess");
  if (L->exps[EXP_GATE].loc == WLOC_STREAMED) {
    CK(moe_streamed(m, l, T));
  } else {
    const struct ferry_moe_shape sh = moe_shape(m, L);
    CK(OP(moe_ffn_ids, m->prec, &sh, &m->etab[l], b->xn, T, K, b->ids, b->slots, b->map));
    CK(OP(moe_combine, b->moe, b->slots, b->map, b->wts, T, K, hp->n_embd));
  }
  fwd_prof_mark(m, "experts");
  if (m->obs_set) CK(observe(m, l, T));
  return 0;
}

// ---------------------------------------------------------------------------------------
// one chunk

// FERRY_CHECK_FINITE=1: fails naming the first layer whose output holds a NaN or an
// infinity (the residual stream after it), so a bad weight is found where it acts.
static int check_finite(struct model *m, int l, int T) {
  const int64_t n = (int64_t)T * m->hp.n_embd;
  const float *x = m->b.x;
  float *h = m->h_head;
  const int64_t piece = m->host_mem ? n : (int64_t)m->HR * m->hp.n_vocab;
  for (int64_t i0 = 0; i0 < n; i0 += piece) {
    const int64_t cnt = n - i0 < piece ? n - i0 : piece;
    const float *p = x + i0;
    if (!m->host_mem) {
      CK(OP(copy_d2h, h, x + i0, (size_t)cnt * 4));
      CK(m->be->ops.stream_sync(m->be, m->st));
      p = h;
    }
    for (int64_t i = 0; i < cnt; i++)
      if (!isfinite(p[i])) {
        const int64_t t = (i0 + i) / m->hp.n_embd;
        return ferry_fail(-ERANGE,
                          "FERRY_CHECK_FINITE: the output of layer %d is not finite at position "
                          "%lld (element %lld is %g); every earlier layer's output was finite",
                          l, (long long)(m->pos + t), (long long)((i0 + i) % m->hp.n_embd),
                          (double)p[i]);
      }
  }
  return 0;
}

// Embedding and every layer; b.io already holds the position and the tokens.
static int fwd_body(struct model *m, int T) {
  const struct model_hparams *hp = &m->hp;
  const struct weight *e = &m->token_embd;
  CK(OP(embed, e->type, e->data, e->nb1, m->b.io + 1, T, hp->n_embd, m->b.x));
  fwd_prof_mark(m, "embed");
  for (uint32_t l = 0; l < hp->n_layer; l++) {
    CK(hp->arch == ARCH_QWEN3NEXT ? qwen3next_layer(m, (int)l, T) : qwen3moe_layer(m, (int)l, T));
    if (m->check_finite) CK(check_finite(m, (int)l, T));
  }
  return 0;
}

// The output head for rows [0, nw) of src (already gathered): final norm into b.xn, then
// the logits, straight into `logits` (host memory) on host-memory backends, else HR rows
// at a time through b.head and the pinned h_head.
static int fwd_head(struct model *m, const float *src, int nw, float *logits) {
  const struct model_hparams *hp = &m->hp;
  const int64_t d = hp->n_embd, V = hp->n_vocab;
  struct fwd_bufs *b = &m->b;
  CK(OP(rmsnorm, b->xn, src, m->output_norm.data, nw, d, hp->eps));
  if (m->host_mem) return fwd_linear(m, &m->output, b->xn, nw, logits);
  for (int r0 = 0; r0 < nw; r0 += m->HR) {
    const int cnt = nw - r0 < m->HR ? nw - r0 : m->HR;
    CK(fwd_linear(m, &m->output, b->xn + (int64_t)r0 * d, cnt, b->head));
    CK(OP(copy_d2h, m->h_head, b->head, (size_t)cnt * V * 4));
    if (m->capturing) continue; // the caller copies h_head out after the replay
    CK(m->be->ops.stream_sync(m->be, m->st));
    memcpy(logits + (int64_t)r0 * V, m->h_head, (size_t)cnt * V * 4);
  }
  return 0;
}

// Records the decode step (T = 1, the last row's logits) as a graph. Returns 0 with
// m->graph set, or 0 with graph_failed set when the backend cannot capture it (then decode
// runs op by op), or an error.
static int capture_decode(struct model *m) {
  int rc = m->be->ops.graph_begin(m->be, m->st);
  if (rc == -ENOTSUP) {
    ferry_clear_error();
    m->graph_failed = true;
    return 0;
  }
  if (rc) return rc;
  m->capturing = true;
  rc = OP(copy_h2d, m->b.io, m->h_io, 2 * sizeof(int32_t));
  if (!rc) rc = fwd_body(m, 1);
  if (!rc) rc = fwd_head(m, m->b.x, 1, NULL);
  m->capturing = false;
  struct ferry_graph *g = NULL;
  const int rc_end = m->be->ops.graph_end(m->be, m->st, &g);
  if (rc || rc_end) {
    // an op that cannot be captured: run op by op from now on
    log_warn("decode graph not captured (%s); running op by op", ferry_errmsg());
    ferry_clear_error();
    if (g) m->be->ops.graph_destroy(m->be, g);
    m->graph_failed = true;
    return 0;
  }
  m->graph = g;
  return 0;
}

static bool graph_usable(const struct model *m, int T, const bool *want) {
  return T == 1 && want[0] && !m->graph_failed && !m->o.no_graph && !m->host_mem &&
         !m->o.dense_only && !m->check_finite && !m->prof;
}

int fwd_chunk(struct model *m, const int32_t *tok, int T, const bool *want, float *logits,
              int *n_out) {
  const struct model_hparams *hp = &m->hp;
  const int64_t d = hp->n_embd, V = hp->n_vocab;
  m->h_io[0] = m->pos;
  memcpy(m->h_io + 1, tok, (size_t)T * sizeof(int32_t));
  if (graph_usable(m, T, want)) {
    if (!m->graph) CK(capture_decode(m));
    if (m->graph) {
      CK(m->be->ops.graph_launch(m->be, m->graph, m->st));
      CK(m->be->ops.stream_sync(m->be, m->st));
      memcpy(logits + (int64_t)*n_out * V, m->h_head, (size_t)V * 4);
      if (m->obs_set) {
        const int64_t K = hp->n_expert_used, BK = (int64_t)m->B * K;
        for (uint32_t l = 0; l < hp->n_layer; l++)
          m->obs.on_route(m->obs.ctx, (int)l, m->pos, 1, (int)K, m->h_ids_all + l * K,
                          m->h_wts_all + l * K,
                          m->o.predict_routes && l > 0 ? m->h_pred + l * BK : NULL);
      }
      m->pos += 1;
      *n_out += 1;
      return 0;
    }
  }
  if (m->prof) prof_start(m);
  CK(OP(copy_h2d, m->b.io, m->h_io, (size_t)(1 + T) * sizeof(int32_t)));
  CK(fwd_body(m, T));
  m->pos += T;
  if (m->prof && !want[T - 1]) { // no head in this chunk (a prefill chunk before the last)
    int any = 0;
    for (int t = 0; t < T; t++) any |= want[t];
    if (!any) prof_end(m);
  }
  // the output head for the requested rows (gathered into b.blk unless they are all the
  // rows or just the last one)
  int nw = 0;
  for (int t = 0; t < T; t++) nw += want[t];
  if (!nw) return 0;
  const float *src = m->b.x;
  if (!(nw == T || (nw == 1 && want[T - 1]))) {
    int j = 0;
    for (int t = 0; t < T; t++)
      if (want[t]) CK(OP(copy_d2d, m->b.blk + (int64_t)j++ * d, m->b.x + (int64_t)t * d, d * 4));
    src = m->b.blk;
  } else if (nw == 1) {
    src = m->b.x + (int64_t)(T - 1) * d;
  }
  CK(fwd_head(m, src, nw, logits + (int64_t)*n_out * V));
  *n_out += nw;
  if (m->prof) {
    fwd_prof_mark(m, "head");
    prof_end(m);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------
// the cost model's rates, measured on this machine with layer 0's expert 0

static int calib_time(struct model *m, struct ferry_backend *be, int reps, double *out,
                      int (*fn)(struct model *m, void *arg), void *arg) {
  CK(fn(m, arg)); // warm-up
  CK(be->ops.stream_sync(be, be == m->be ? m->st : NULL));
  const double t0 = ferry_now_s();
  for (int i = 0; i < reps; i++) CK(fn(m, arg));
  CK(be->ops.stream_sync(be, be == m->be ? m->st : NULL));
  *out = (ferry_now_s() - t0) / reps;
  return 0;
}

struct calib {
  struct ferry_moe_shape sh;
  const void *w[3];
  uint64_t bytes;
  int cnt;
};

static int calib_h2d(struct model *m, void *arg) {
  struct calib *c = arg;
  return OP(copy_h2d, m->b.slots, m->h_cslots, c->bytes);
}
static int calib_gpu(struct model *m, void *arg) {
  struct calib *c = arg;
  const uint8_t *d = (const uint8_t *)m->b.slots, *w0 = c->w[0];
  struct ferry_moe_group g = {
      .w = {d, d + ((const uint8_t *)c->w[1] - w0), d + ((const uint8_t *)c->w[2] - w0)},
      .off = 0,
      .cnt = c->cnt};
  return OP(moe_ffn, m->prec, &c->sh, m->b.xn, c->cnt, true, m->b.rows, 1, &g, m->b.blk);
}
static int calib_cpu(struct model *m, void *arg) {
  struct calib *c = arg;
  struct ferry_moe_group g = {.w = {c->w[0], c->w[1], c->w[2]}, .off = 0, .cnt = c->cnt};
  float *y = (float *)((uint8_t *)m->h_cslots + ferry_align_up(c->bytes, 64));
  return m->cpu->ops.moe_ffn(m->cpu, m->prec, &c->sh, m->h_xn, c->cnt, true, m->h_rows, 1, &g, y,
                             NULL);
}

int fwd_calibrate(struct model *m) {
  const struct layer_weights *L = &m->layers[0];
  const int64_t d = m->hp.n_embd, K = m->hp.n_expert_used, B = m->B;
  struct calib c = {.sh = moe_shape(m, L), .cnt = 1};
  c.bytes = L->exps[0].nb2 + L->exps[1].nb2 + L->exps[2].nb2;
  // the expert's bytes in the first rows of h_cslots, its outputs after them
  if (ferry_align_up(c.bytes, 64) + 8ull * d * 4 > (uint64_t)B * K * d * 4 ||
      c.bytes > (uint64_t)B * K * d * 4 || B < 8 || !L->exps[0].t)
    return 0; // too small to measure here: the defaults of the cost model stand
  uint8_t *h = (uint8_t *)m->h_cslots;
  for (int p = 0, off = 0; p < 3; off += (int)L->exps[p].nb2, p++) {
    CK(gguf_pread(m->f, h + off, L->exps[p].nb2, L->exps[p].t->abs_offset));
    c.w[p] = h + off;
  }
  uint64_t rng = 0x9e3779b97f4a7c15ull;
  for (int64_t i = 0; i < 8 * d; i++) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    m->h_xn[i] = (float)((int64_t)(rng >> 40) - (1 << 23)) / (float)(1 << 23);
  }
  for (int i = 0; i < 8; i++) m->h_rows[i] = i;
  CK(OP(copy_h2d, m->b.xn, m->h_xn, 8 * d * 4));
  CK(OP(copy_h2d, m->b.rows, m->h_rows, 8 * 4));
  double t_h2d, t_g1, t_g8, t_c1, t_c8;
  CK(calib_time(m, m->be, 4, &t_h2d, calib_h2d, &c));
  CK(calib_time(m, m->be, 4, &t_g1, calib_gpu, &c));
  c.cnt = 8;
  CK(calib_time(m, m->be, 2, &t_g8, calib_gpu, &c));
  CK(calib_time(m, m->cpu, 3, &t_c8, calib_cpu, &c));
  c.cnt = 1;
  CK(calib_time(m, m->cpu, 4, &t_c1, calib_cpu, &c));
  m->cm.h2d_gbps = (double)c.bytes / (t_h2d > 0 ? t_h2d : 1e-9) / 1e9;
  m->cm.gpu_s = t_g1;
  m->cm.gpu_tok_frac = t_g8 > t_g1 && t_g1 > 0 ? (t_g8 / t_g1 - 1) / 7 : 0;
  m->cm.cpu_gbps = (double)c.bytes / (t_c1 > 0 ? t_c1 : 1e-9) / 1e9;
  m->cm.cpu_tok_frac = t_c8 > t_c1 && t_c1 > 0 ? (t_c8 / t_c1 - 1) / 7 : 0;
  log_info(
      "expert cost model: host->device %.1f GB/s, CPU %.1f GB/s (+%.2f per token), device "
      "%.1f us per expert (+%.2f per token)",
      m->cm.h2d_gbps, m->cm.cpu_gbps, m->cm.cpu_tok_frac, m->cm.gpu_s * 1e6, m->cm.gpu_tok_frac);
  return 0;
}
