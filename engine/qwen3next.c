// engine/qwen3next.c: one layer of Qwen3-Next (MODEL_SPEC §5): a Gated DeltaNet mixer
// (three layers in four) or gated full attention, then routed experts plus a shared expert
// behind a sigmoid gate. Both on-disk layouts of the DeltaNet projections: split
// (attn_qkv + attn_gate) and legacy (fused ssm_in, regrouped after the projection).
#include <math.h>

#include "engine/model_impl.h"

// Gated DeltaNet mixer on b.xn, added to b.x (§5.6). The decode step and short chunks run
// the exact recurrence, longer prefill chunks the chunked form (the backend chooses).
static int deltanet(struct model *m, int l, int T) {
  const struct model_hparams *hp = &m->hp;
  const struct layer_weights *L = &m->layers[l];
  struct fwd_bufs *b = &m->b;
  const int64_t d = hp->n_embd, nk = hp->ssm_n_k_heads, nv = hp->ssm_n_v_heads;
  const int64_t dk = hp->ssm_head_k, dv = hp->ssm_head_v;
  const int64_t key_dim = nk * dk, value_dim = nv * dv, conv_dim = 2 * key_dim + value_dim;
  float *u = b->q, *z = b->gate, *y = b->conv, *o = b->att;
  if (hp->legacy_layout) {
    CK(fwd_linear(m, &L->ssm_in, b->xn, T, b->proj));
    CK(OP(ssm_in_regroup, u, z, b->proj, T, nk, nv, dk, dv));
  } else {
    CK(fwd_linear(m, &L->attn_qkv, b->xn, T, u));
    CK(fwd_linear(m, &L->attn_gate, b->xn, T, z));
  }
  CK(fwd_linear(m, &L->ssm_ba, b->xn, T, b->ba));
  CK(OP(ssm_ba_regroup, b->dn_b, b->dn_a, b->ba, T, nk, nv));
  CK(OP(delta_gates, b->dn_beta, b->dn_g, b->dn_b, b->dn_a, L->ssm_a.data, L->ssm_dt.data, T, nv));
  CK(OP(ssm_conv, y, m->conv_state[l], u, L->ssm_conv1d.data, T, conv_dim, hp->ssm_conv_k, 1));
  CK(OP(l2norm_heads, y, conv_dim, T, nk, dk, hp->eps, 1.0f / sqrtf((float)dk)));
  CK(OP(l2norm_heads, y + key_dim, conv_dim, T, nk, dk, hp->eps, 1.0f));
  CK(OP(delta_rule, o, value_dim, m->ssm_state[l], y, conv_dim, y + key_dim, conv_dim,
        y + 2 * key_dim, conv_dim, b->dn_beta, b->dn_g, T, nk, nv, dk, dv));
  CK(OP(gated_rmsnorm, o, o, z, L->ssm_norm.data, T * nv, dv, hp->eps));
  CK(fwd_linear(m, &L->ssm_out, o, T, b->blk));
  return OP(add, b->x, b->x, b->blk, T * d);
}

// The shared expert, scaled by sigmoid of its scalar gate, added to b.moe (§5.5).
static int shared_expert(struct model *m, int l, int T) {
  const struct model_hparams *hp = &m->hp;
  const struct layer_weights *L = &m->layers[l];
  struct fwd_bufs *b = &m->b;
  CK(fwd_linear(m, &L->sh_gate, b->xn, T, b->sh_g));
  CK(fwd_linear(m, &L->sh_up, b->xn, T, b->sh_u));
  CK(OP(swiglu, b->sh_g, b->sh_g, b->sh_u, (int64_t)T * hp->n_ff_shexp));
  CK(fwd_linear(m, &L->sh_down, b->sh_g, T, b->sh_out));
  CK(fwd_linear(m, &L->sh_gate_inp, b->xn, T, b->sh_gate));
  return OP(gate_add_rows, b->moe, b->sh_out, b->sh_gate, T, hp->n_embd);
}

int qwen3next_layer(struct model *m, int l, int T) {
  const struct model_hparams *hp = &m->hp;
  const struct layer_weights *L = &m->layers[l];
  struct fwd_bufs *b = &m->b;
  const int64_t d = hp->n_embd;
  CK(OP(rmsnorm, b->xn, b->x, L->attn_norm.data, T, d, hp->eps));
  CK(hp->recurrent[l] ? deltanet(m, l, T) : fwd_attention(m, l, T));
  fwd_prof_mark(m, hp->recurrent[l] ? "deltanet" : "attention");
  CK(OP(rmsnorm, b->xn, b->x, L->ffn_norm.data, T, d, hp->eps));
  CK(fwd_moe(m, l, T));
  CK(shared_expert(m, l, T));
  fwd_prof_mark(m, "shared");
  CK(OP(add, b->x, b->x, b->moe, T * d));
  fwd_prof_mark(m, "residual");
  return 0;
}
