// engine/model.h: a loaded model — hyperparameters, views of every weight, and the
// per-sequence state (KV cache, DeltaNet conv/recurrent state) — and the forward pass
// for qwen3moe and qwen3next on the CPU.
//
// Weights live in memory the model owns (full mode: the whole data section; stream mode:
// the dense tensors only, routed experts come from an expert source such as the offload/
// cache). One thread drives a model; the kernels below it use the numa/ pool.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "engine/gguf.h"
#include "engine/hparams.h"
#include "kernels/types.h"

struct ferry_pool;

// A 2-D (or 1-D) weight view: nrows rows of n elements of type `type`, row stride nb1.
struct weight {
  const struct gguf_tensor *t; // NULL if the tensor is absent (optional weights)
  enum ferry_type type;
  int64_t n;     // row length (ne[0])
  int64_t nrows; // ne[1] (for 3-D expert tensors: rows of one expert)
  uint64_t nb1, nb2;
  const void *data; // resident data, or NULL for streamed routed experts
};

enum { EXP_GATE = 0, EXP_UP = 1, EXP_DOWN = 2 };

struct layer_weights {
  struct weight attn_norm, ffn_norm; // ffn_norm = post_attention_norm for qwen3next
  // full attention
  struct weight wq, wk, wv, wo, q_norm, k_norm;
  // Gated DeltaNet (qwen3next): legacy ssm_in, or split qkv + gate
  struct weight ssm_in, attn_qkv, attn_gate, ssm_ba, ssm_conv1d, ssm_dt, ssm_a, ssm_norm, ssm_out;
  // MoE
  struct weight router;
  struct weight exps[3]; // gate, up, down: nrows/n of ONE expert; data = expert 0 when resident
  struct weight sh_gate, sh_up, sh_down, sh_gate_inp; // qwen3next shared expert
};

// Where routed experts come from: resident memory (full mode) or a cache (stream mode).
// acquire pins the n experts of `layer` (starting reads for misses, not waiting);
// ready(i) says whether expert i of that call can be used without blocking; get(i)
// returns its gate/up/down bytes, blocking on I/O if needed; release drops the pins.
// acquire returns -ENOSPC when the source cannot hold n experts at once (the caller
// then asks for fewer).
struct expert_source {
  void *ctx;
  int (*acquire)(void *ctx, int layer, int n, const int32_t *experts);
  bool (*ready)(void *ctx, int i);
  int (*get)(void *ctx, int i, const void *ptrs[3]);
  void (*release)(void *ctx, int layer, int n);
  // Optional hint: start reading these experts of `layer` (not pinned, never blocks).
  void (*prefetch)(void *ctx, int layer, int n, const int32_t *experts);
};

enum kv_type_sel { KV_F16 = FT_F16, KV_F32 = FT_F32, KV_Q8_0 = FT_Q8_0 };

struct model_opts {
  bool exact;      // F32 activations, exact dequantization, F32 KV
  bool dense_only; // stream mode: do not load routed experts
  int n_ctx;       // context length to allocate state for
  int n_batch;     // prefill chunk (tokens per forward call)
  int n_threads;   // pool size the model will be used with (0: one per physical core)
  enum ferry_type kv_k, kv_v;
  bool progress;   // progress bar on stderr while loading
  bool prefetch;   // stream mode: prefetch the next layer's guessed experts (off by default)
  bool checkpoint; // allocate the recurrent-state checkpoint (model_checkpoint), charged as state
};

struct model;

// Opens the model in f (which must outlive it), validates every tensor's presence and
// shape, and reads the weights (all, or dense only) into memory it allocates.
// Fails with one clear message (missing tensor, wrong shape, out of memory).
int model_load(struct model **out, const struct gguf_file *f, const struct model_opts *o);
void model_destroy(struct model *m);
const struct model_hparams *model_hparams(const struct model *m);
const struct layer_weights *model_layer(const struct model *m, int l);
void model_set_pool(struct model *m, struct ferry_pool *pool);
void model_set_expert_source(struct model *m, const struct expert_source *src);
// Bytes the model allocated: weights, state (KV + recurrent), scratch.
void model_mem(const struct model *m, uint64_t *weights, uint64_t *state, uint64_t *scratch);
// Bytes of per-sequence state for n_ctx positions (for the plan, before loading).
uint64_t model_state_bytes(const struct model_hparams *hp, int n_ctx, enum ferry_type kv_k,
                           enum ferry_type kv_v);
// The bytes a session needs for weights, state and scratch (model_load's allocations plus
// model_meta_bytes for the parsed metadata and tokenizer), without loading.
int model_plan(const struct gguf_file *f, const struct model_opts *o, uint64_t *weights,
               uint64_t *state, uint64_t *scratch);
// RAM of the parsed metadata and the tokenizer (charged as scratch by the session).
uint64_t model_meta_bytes(const struct gguf_file *f);
double model_load_seconds(const struct model *m);
int model_n_ctx(const struct model *m);

// Resets the sequence (KV and recurrent state to empty, position 0). Drops the checkpoint.
void model_reset(struct model *m);
int model_pos(const struct model *m);

// Saves the recurrent state (DeltaNet conv + ssm state of every recurrent layer) at the
// current position into the model's one checkpoint (replacing the previous one). The
// checkpoint memory is allocated at load (model_opts.checkpoint = true) and charged like the
// state. No-op returning 0 for models without recurrent layers; -EINVAL with a message if the
// model has recurrent layers but was loaded without model_opts.checkpoint.
int model_checkpoint(struct model *m);
// Moves the sequence back to pos (0 <= pos <= model_pos): KV rows at pos and later are
// simply overwritten later. For recurrent layers the state can only go back to the
// checkpoint's position (restored from it) or to 0 (reset). Returns 0, or -EINVAL with a
// message if pos cannot be reached. Going back before the checkpoint's position drops the
// checkpoint (the positions it summarises are then overwritten).
int model_rewind(struct model *m, int pos);

// Runs n tokens at the current position (then advances it). For each i with
// want_logits[i] (NULL: only the last token) writes n_vocab logits to
// logits + j*n_vocab, j counting the requested rows in order. Splits into n_batch chunks.
// Fails on context overflow or an expert-source error.
int model_forward(struct model *m, const int32_t *tokens, int n, const bool *want_logits,
                  float *logits);
