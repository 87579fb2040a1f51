// engine/qwen3moe.c: one layer of Qwen3-MoE (MODEL_SPEC §4): pre-norm attention with
// QK-norm and NEOX RoPE, then pre-norm routed experts (softmax router, top-k renormalised).
#include "engine/model_impl.h"

int qwen3moe_layer(struct model *m, int l, int T) {
  const struct model_hparams *hp = &m->hp;
  const struct layer_weights *L = &m->layers[l];
  struct fwd_bufs *b = &m->b;
  const int64_t d = hp->n_embd;
  struct ferry_backend *be = m->be;
  int rc;
  if ((rc = be->ops.rmsnorm(be, b->xn, b->x, L->attn_norm.data, T, d, hp->eps, m->st)) ||
      (rc = fwd_attention(m, l, T)))
    return rc;
  fwd_prof_mark(m, "attention");
  if ((rc = be->ops.rmsnorm(be, b->xn, b->x, L->ffn_norm.data, T, d, hp->eps, m->st)) ||
      (rc = fwd_moe(m, l, T)) || (rc = be->ops.add(be, b->x, b->x, b->moe, T * d, m->st)))
    return rc;
  fwd_prof_mark(m, "residual");
  return 0;
}
