// engine/synth.h: synthetic models with random weights, written as GGUF files with the
// tensor names, shapes, types and metadata keys llama.cpp uses for qwen3moe and qwen3next
// (both Qwen3-Next layouts). Used to exercise the engine at full scale (expert streaming,
// caches) without downloading real weights, and for small self-consistent test models.
//
// Weights: each row of each tensor has its own RNG stream seeded from (seed, FNV-1a hash of
// the tensor name, row), so a file is a pure function of its parameters, independent of the
// thread count. Values are approximately normal (Irwin-Hall sum of four 16-bit uniforms,
// rescaled to the exact mean and standard deviation; tails end at 3.46 sigma), with the
// scales of the fixtures (fixtures README §1.1): std 1/sqrt(fan_in) for matrices,
// token_embd std 0.5, output std 3/sqrt(n_embd), norms 1 + N(0, 0.05), ssm_conv1d std 0.3,
// ssm_dt.bias U(0,1), ssm_a -U(0.05,1). Large Q4_K/Q6_K tensors (>= 4096 blocks) are
// assembled from a per-tensor bank of 1024 genuinely quantized blocks, picked per row and
// block position by the row's RNG, because the reference K-quant quantizer costs ~100 ns a
// weight (see synth.c); `exact` turns that off.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "kernels/types.h"

#ifdef __cplusplus
extern "C" {
#endif

enum synth_arch { SYNTH_QWEN3MOE = 0, SYNTH_QWEN3NEXT = 1 };
enum synth_recipe { SYNTH_F32 = 0, SYNTH_Q8_0 = 1, SYNTH_Q4_K_M = 2 };
// How the model routes tokens to experts. RANDOM: every weight random (routing close to
// uniform). REAL: weights constructed so that the model's own router, run by the engine,
// reproduces published routing statistics of real Qwen3 MoE models (temporal reuse,
// stale-gate predictability, popularity skew growing with depth); see synth.c and
// NOTES.md ("Realistic routing").
enum synth_routing { SYNTH_ROUTING_RANDOM = 0, SYNTH_ROUTING_REAL = 1 };

struct synth_params {
  enum synth_arch arch;
  enum synth_recipe recipe;
  bool legacy;      // qwen3next: fused ssm_in, 1-D BF16 ffn_gate_inp_shexp, no layer-pattern keys
  const char *name; // general.name (NULL: "synth <arch> (random weights)")
  uint32_t n_layer; // block_count
  uint32_t n_embd;  // embedding_length
  uint32_t n_ff;    // feed_forward_length (unused by the models, written for fidelity)
  uint32_t n_head, n_head_kv, head_dim;
  uint32_t n_rot; // rope.dimension_count (qwen3moe: written only if != head_dim)
  uint32_t n_expert, n_expert_used, n_ff_exp;
  uint32_t n_ff_shexp; // qwen3next shared expert width
  uint32_t n_ctx;      // context_length
  float rope_base, norm_eps;
  // qwen3next Gated DeltaNet
  uint32_t ssm_conv;    // conv_kernel
  uint32_t ssm_state;   // state_size = head_k_dim
  uint32_t ssm_groups;  // group_count = number of k-heads
  uint32_t ssm_dt_rank; // time_step_rank = number of v-heads
  uint32_t ssm_inner;   // inner_size = value_dim
  uint32_t full_attn_interval;
  uint32_t n_vocab;       // 0: the token count of vocab_from, or the minimal vocabulary (282)
  const char *vocab_from; // GGUF whose tokenizer.* keys are copied (NULL: minimal byte vocab)
  uint64_t seed;
  bool exact; // quantize every row (no block bank; slow for big K-quant tensors)
  enum synth_routing routing;
  const char *routing_knobs; // REAL: "name=value,..." overrides of the construction's
                             // constants (experiments; synth.c lists them), or NULL
  int n_threads;             // <= 0: one per physical core
};

// Tiny defaults for an architecture (the dims of the fixtures' tiny models, F32 recipe).
void synth_params_default(struct synth_params *p, enum synth_arch arch);
// Sets arch and every dimension for "qwen3-30b-a3b" or "qwen3-next-80b-a3b" (split
// layout). Returns -EINVAL with a message for an unknown name.
int synth_params_preset(struct synth_params *p, const char *preset);
// Checks every dimension and their relations. 0 or -EINVAL with a message.
int synth_params_validate(const struct synth_params *p);

struct synth_stats {
  uint64_t file_bytes; // size of the written file
  int64_t n_tensors;
  int n_fallback; // tensors whose recipe type did not fit their row length
  uint32_t n_vocab;
  uint64_t type_count[FT_COUNT];
  double seconds; // wall time of the whole write (fdatasync included)
};

// Estimates the file size for p without writing (needs vocab_from readable when set).
int synth_estimate_bytes(const struct synth_params *p, uint64_t *out);

// Writes the model to path (via a temporary file beside it, renamed at the end). Blocks; uses a thread pool
// of p->n_threads for generation and quantization and writes sequentially. Memory stays
// bounded (about 32 MiB of row buffers plus the metadata) whatever the model size.
// Returns 0 or a negative code with the message set; st may be NULL.
int synth_write(const struct synth_params *p, const char *path, struct synth_stats *st);

// Writes a vocabulary-only GGUF (no tensors) to path: general.architecture and every
// tokenizer.* key of the GGUF at src_path, general.type "vocab", general.name = name
// (NULL: "<source name> vocabulary"). *n_tokens (may be NULL) gets the vocabulary size.
int synth_write_vocab(const char *src_path, const char *path, const char *name, uint32_t *n_tokens);

#ifdef __cplusplus
}
#endif
