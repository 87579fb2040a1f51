// engine/hparams.c: metadata -> struct model_hparams, with every consistency check that can
// be made before looking at tensors.
#include "engine/hparams.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

static int get_u32(const struct gguf_file *f, const char *arch, const char *key, uint32_t *out,
                   bool required, uint32_t def) {
  char k[128];
  snprintf(k, sizeof k, "%s.%s", arch, key);
  int rc = gguf_get_u32(f, k, out);
  if (rc == -ENOENT) {
    if (required) return ferry_fail(-EINVAL, "%s: missing metadata '%s'", gguf_path(f), k);
    *out = def;
    return 0;
  }
  return rc;
}

static int get_f32(const struct gguf_file *f, const char *arch, const char *key, float *out,
                   float def) {
  char k[128];
  snprintf(k, sizeof k, "%s.%s", arch, key);
  int rc = gguf_get_f32(f, k, out);
  if (rc == -ENOENT) {
    *out = def;
    return 0;
  }
  return rc;
}

void hparams_free(struct model_hparams *hp) {
  free(hp->recurrent);
  hp->recurrent = NULL;
}

static int load(struct model_hparams *hp, const struct gguf_file *f);

// On failure nothing stays allocated: callers (the plan, bench, the session's stream
// check) return at once and must not leak the layer pattern.
int hparams_load(struct model_hparams *hp, const struct gguf_file *f) {
  int rc = load(hp, f);
  if (rc) hparams_free(hp);
  return rc;
}

static int load(struct model_hparams *hp, const struct gguf_file *f) {
  memset(hp, 0, sizeof *hp);
  const char *path = gguf_path(f);
  if (gguf_n_tensors(f) == 0) {
    const char *type = gguf_get_str(f, "general.type");
    return ferry_fail(-EINVAL, "%s: the file has no tensors%s%s%s: it is not a model", path,
                      type ? " (general.type '" : "", type ? type : "", type ? "')" : "");
  }
  const char *arch = gguf_get_str(f, "general.architecture");
  if (!arch) return ferry_fail(-EINVAL, "%s: missing metadata 'general.architecture'", path);
  if (!strcmp(arch, "qwen3moe"))
    hp->arch = ARCH_QWEN3MOE;
  else if (!strcmp(arch, "qwen3next"))
    hp->arch = ARCH_QWEN3NEXT;
  else
    return ferry_fail(-EINVAL,
                      "%s: unsupported architecture '%.40s' (ferry runs qwen3moe and qwen3next)",
                      path, arch);
  snprintf(hp->arch_name, sizeof hp->arch_name, "%s", arch);
  int rc;
  uint32_t nextn = 0, key_len, val_len;
  if ((rc = get_u32(f, arch, "block_count", &hp->n_layer_file, true, 0)) ||
      (rc = get_u32(f, arch, "nextn_predict_layers", &nextn, false, 0)) ||
      (rc = get_u32(f, arch, "context_length", &hp->n_ctx_train, false, 4096)) ||
      (rc = get_u32(f, arch, "embedding_length", &hp->n_embd, true, 0)) ||
      (rc = get_u32(f, arch, "attention.head_count", &hp->n_head, true, 0)) ||
      (rc = get_u32(f, arch, "attention.head_count_kv", &hp->n_head_kv, false, hp->n_head)) ||
      (rc = get_u32(f, arch, "attention.key_length", &key_len, false, 0)) ||
      (rc = get_u32(f, arch, "attention.value_length", &val_len, false, 0)) ||
      (rc = get_u32(f, arch, "expert_count", &hp->n_expert, true, 0)) ||
      (rc = get_u32(f, arch, "expert_used_count", &hp->n_expert_used, true, 0)) ||
      (rc = get_u32(f, arch, "expert_feed_forward_length", &hp->n_ff_exp, true, 0)) ||
      (rc = get_f32(f, arch, "rope.freq_base", &hp->rope_base, 10000.0f)) ||
      (rc = get_f32(f, arch, "attention.layer_norm_rms_epsilon", &hp->eps, 1e-6f)))
    return rc;
  if (hp->n_head == 0 || hp->n_embd == 0 || hp->n_layer_file == 0)
    return ferry_fail(-EINVAL, "%s: zero embedding length, head count or block count", path);
  // Every block has at least three tensors of its own (norms, router, experts); a larger
  // count is corrupt metadata, refused before anything is sized by it.
  if (hp->n_layer_file > (uint64_t)gguf_n_tensors(f))
    return ferry_fail(-EINVAL, "%s: %s.block_count %u is larger than the file's %lld tensors allow",
                      path, arch, hp->n_layer_file, (long long)gguf_n_tensors(f));
  if (hp->n_ctx_train == 0)
    return ferry_fail(-EINVAL, "%s: %s.context_length is 0 (the model declares no context)", path,
                      arch);
  if (!key_len) key_len = hp->n_embd / hp->n_head;
  if (!val_len) val_len = key_len;
  if (key_len != val_len)
    return ferry_fail(-EINVAL, "%s: attention key_length %u != value_length %u (unsupported)", path,
                      key_len, val_len);
  hp->head_dim = key_len;
  if ((rc = get_u32(f, arch, "rope.dimension_count", &hp->n_rot, false, hp->head_dim))) return rc;
  if (nextn >= hp->n_layer_file)
    return ferry_fail(-EINVAL, "%s: nextn_predict_layers %u >= block_count %u", path, nextn,
                      hp->n_layer_file);
  hp->n_layer = hp->n_layer_file - nextn;
  if (hp->n_head_kv == 0 || hp->n_head % hp->n_head_kv)
    return ferry_fail(-EINVAL, "%s: head_count %u is not a multiple of head_count_kv %u", path,
                      hp->n_head, hp->n_head_kv);
  if (hp->n_rot == 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2)
    return ferry_fail(-EINVAL, "%s: rope.dimension_count %u must be even and <= head dim %u", path,
                      hp->n_rot, hp->head_dim);
  if (hp->n_expert == 0 || hp->n_expert_used == 0 || hp->n_expert_used > hp->n_expert)
    return ferry_fail(-EINVAL, "%s: expert_used_count %u must be in 1..expert_count (%u)", path,
                      hp->n_expert_used, hp->n_expert);
  if (!(hp->rope_base > 0) || !(hp->eps > 0) || hp->eps > 1)
    return ferry_fail(-EINVAL, "%s: invalid rope.freq_base or rms epsilon", path);

  const struct gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
  if (!emb) return ferry_fail(-EINVAL, "%s: missing tensor 'token_embd.weight'", path);
  if (emb->ne[0] != hp->n_embd)
    return ferry_fail(-EINVAL,
                      "%s: token_embd.weight has row length %llu, expected embedding_length %u",
                      path, (unsigned long long)emb->ne[0], hp->n_embd);
  if (emb->ne[1] > INT32_MAX) return ferry_fail(-EINVAL, "%s: vocabulary too large", path);
  hp->n_vocab = (uint32_t)emb->ne[1];

  if (hp->arch == ARCH_QWEN3NEXT) {
    if ((rc = get_u32(f, arch, "expert_shared_feed_forward_length", &hp->n_ff_shexp, true, 0)) ||
        (rc = get_u32(f, arch, "ssm.conv_kernel", &hp->ssm_conv_k, true, 0)) ||
        (rc = get_u32(f, arch, "ssm.state_size", &hp->ssm_head_k, true, 0)) ||
        (rc = get_u32(f, arch, "ssm.group_count", &hp->ssm_n_k_heads, true, 0)) ||
        (rc = get_u32(f, arch, "ssm.time_step_rank", &hp->ssm_n_v_heads, true, 0)) ||
        (rc = get_u32(f, arch, "ssm.inner_size", &hp->ssm_inner, true, 0)))
      return rc;
    if (!hp->ssm_conv_k || !hp->ssm_head_k || !hp->ssm_n_k_heads || !hp->ssm_n_v_heads ||
        hp->ssm_n_v_heads % hp->ssm_n_k_heads || hp->ssm_inner % hp->ssm_n_v_heads)
      return ferry_fail(-EINVAL,
                        "%s: inconsistent DeltaNet head counts (group_count %u, time_step_rank %u, "
                        "inner_size %u, state_size %u)",
                        path, hp->ssm_n_k_heads, hp->ssm_n_v_heads, hp->ssm_inner, hp->ssm_head_k);
    hp->ssm_head_v = hp->ssm_inner / hp->ssm_n_v_heads;
    hp->recurrent = calloc(hp->n_layer, sizeof *hp->recurrent);
    if (!hp->recurrent) return ferry_fail(-ENOMEM, "out of memory");
    char k[128];
    snprintf(k, sizeof k, "%s.attention.recurrent_layers", arch);
    const struct gguf_kv *rl = gguf_find_kv(f, k);
    uint32_t interval = 4;
    if ((rc = get_u32(f, arch, "full_attention_interval", &interval, false, 4))) return rc;
    if (interval == 0) return ferry_fail(-EINVAL, "%s: full_attention_interval is 0", path);
    for (uint32_t l = 0; l < hp->n_layer; l++) hp->recurrent[l] = (l + 1) % interval != 0;
    if (rl) {
      if (rl->type != GGUF_ARRAY || rl->arr_type != GGUF_BOOL || rl->arr_n < hp->n_layer)
        return ferry_fail(-EINVAL, "%s: '%s' must be a bool array of at least %u entries", path, k,
                          hp->n_layer);
      for (uint32_t l = 0; l < hp->n_layer; l++)
        hp->recurrent[l] = ((const uint8_t *)rl->arr)[l] != 0;
    }
    // The pattern must agree with the tensors present: a DeltaNet layer has ssm_* tensors,
    // a full-attention layer has attn_q.
    bool any_legacy = false, any_split = false;
    for (uint32_t l = 0; l < hp->n_layer; l++) {
      char n1[96], n2[96], n3[96];
      snprintf(n1, sizeof n1, "blk.%u.ssm_in.weight", l);
      snprintf(n2, sizeof n2, "blk.%u.attn_qkv.weight", l);
      snprintf(n3, sizeof n3, "blk.%u.attn_q.weight", l);
      bool has_in = gguf_find_tensor(f, n1), has_qkv = gguf_find_tensor(f, n2),
           has_q = gguf_find_tensor(f, n3);
      if (hp->recurrent[l] && !has_in && !has_qkv)
        return ferry_fail(-EINVAL,
                          "%s: layer %u is a DeltaNet layer by the layer pattern but has no ssm_in "
                          "or attn_qkv tensor",
                          path, l);
      if (!hp->recurrent[l] && !has_q)
        return ferry_fail(
            -EINVAL,
            "%s: layer %u is a full-attention layer by the layer pattern but has no attn_q tensor",
            path, l);
      any_legacy |= hp->recurrent[l] && has_in;
      any_split |= hp->recurrent[l] && has_qkv && !has_in;
    }
    if (any_legacy && any_split)
      return ferry_fail(-EINVAL, "%s: mixes legacy (ssm_in) and split (attn_qkv) DeltaNet layers",
                        path);
    hp->legacy_layout = any_legacy;
  }
  return 0;
}
