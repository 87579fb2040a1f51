// engine/hparams.h: model hyperparameters read from GGUF metadata and validated against
// each other, for the two architectures ferry runs (qwen3moe, qwen3next).
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "engine/gguf.h"

enum model_arch { ARCH_QWEN3MOE = 0, ARCH_QWEN3NEXT = 1 };

struct model_hparams {
  enum model_arch arch;
  char arch_name[32];    // "qwen3moe" / "qwen3next"
  uint32_t n_layer;      // trunk layers run by the forward pass (block_count - nextn)
  uint32_t n_layer_file; // block_count as stored (MTP blocks included)
  uint32_t n_ctx_train;
  uint32_t n_embd; // d
  uint32_t n_head; // query heads (full attention)
  uint32_t n_head_kv;
  uint32_t head_dim; // key/value length of full attention
  uint32_t n_rot;    // rotary dims (NEOX), <= head_dim
  float rope_base;
  float eps; // RMSNorm epsilon (also the L2-norm epsilon of DeltaNet)
  uint32_t n_expert, n_expert_used, n_ff_exp;
  uint32_t n_ff_shexp; // qwen3next shared expert width (0 for qwen3moe)
  uint32_t n_vocab;    // rows of token_embd
  // qwen3next Gated DeltaNet
  uint32_t ssm_conv_k;    // conv kernel (4)
  uint32_t ssm_head_k;    // head_k_dim = state_size
  uint32_t ssm_n_k_heads; // group_count
  uint32_t ssm_n_v_heads; // time_step_rank
  uint32_t ssm_head_v;    // inner_size / n_v_heads
  uint32_t ssm_inner;     // value_dim
  bool *recurrent;        // [n_layer] true for a Gated DeltaNet layer (qwen3next)
  bool legacy_layout;     // fused ssm_in (true) or attn_qkv + attn_gate (false)
};

// Reads and checks the hyperparameters; the tensor shapes are checked by the loader.
// Fails with "file: what is wrong" for an unknown arch or missing/inconsistent keys.
int hparams_load(struct model_hparams *hp, const struct gguf_file *f);
void hparams_free(struct model_hparams *hp);
