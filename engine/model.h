// engine/model.h: a loaded model — hyperparameters, views of every weight, the per-sequence
// state (KV cache, DeltaNet conv/recurrent state) — and the forward pass of qwen3moe and
// qwen3next, computed only through kernels/backend.h (CPU or CUDA).
//
// Where things live: every resident weight, the state and the forward buffers are in the
// backend's memory (host RAM for the CPU backend, VRAM for CUDA). Routed experts are
// either resident too (full mode) or come from an expert source (stream mode: the
// offload/ cache). One thread drives a model.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "engine/gguf.h"
#include "engine/hparams.h"
#include "kernels/backend.h"
#include "kernels/types.h"
#include "offload/costmodel.h"
#include "offload/dcache.h"
#include "offload/ecache.h"

// Where a weight's bytes are.
enum weight_loc {
  WLOC_NONE = 0, // absent (optional weight) or not loaded yet
  WLOC_BACKEND,  // resident in the model's backend memory
  WLOC_STREAMED, // routed experts served by the expert source
};

// A 2-D (or 1-D) weight view: nrows rows of n elements of type `type`, row stride nb1.
struct weight {
  const struct gguf_tensor *t; // NULL if the tensor is absent (optional weights)
  enum ferry_type type;
  int64_t n;     // row length (ne[0])
  int64_t nrows; // ne[1] (for 3-D expert tensors: rows of one expert)
  uint64_t nb1, nb2;
  enum weight_loc loc;
  const void *data; // backend memory when loc == WLOC_BACKEND (expert 0 for 3-D), else NULL
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
  struct weight exps[3];                              // gate, up, down: nrows/n of ONE expert
  struct weight sh_gate, sh_up, sh_down, sh_gate_inp; // qwen3next shared expert
};

// Where routed experts come from in stream mode: tiers of caches over the file (offload/:
// VRAM slots, pinned host slots, the disk). acquire pins n experts of a layer and fills
// one ref per expert (several acquires may be in flight: each has its own refs). An
// expert is in VRAM (dev[] usable on the device after `ev`), in host RAM (host_ready) or
// being read from disk into a host slot (host_ready once poll/wait sees it land).
enum expert_tier { EXPERT_VRAM = 0, EXPERT_HOST, EXPERT_DISK };
struct expert_ref {
  int32_t expert;
  enum expert_tier tier; // where acquire found it
  bool host_ready;       // host[] holds the bytes
  const void *host[3];   // gate, up, down in host memory
  bool on_dev;           // dev[] is the expert's VRAM slot
  const void *dev[3];
  struct ferry_event *ev; // dev[] is filled once this completes (NULL: already)
  bool host_pinned;       // private: a host-tier pin is held (h)
  bool copied;            // private: h's bytes were copied to the device (release waits)
  struct ecache_ref h;    // private
  struct dcache_ref d;    // private
};
struct expert_source {
  void *ctx;
  // Pins the n experts (router order, no duplicates) in the tier that has them and submits
  // one batch of reads for the misses. -ENOSPC when the host tier cannot hold n at once
  // (the caller asks for fewer).
  int (*acquire)(void *ctx, int layer, int n, const int32_t *experts, struct expert_ref *out);
  // Never blocks: marks the refs whose reads have landed host_ready.
  void (*poll)(void *ctx, int n, struct expert_ref *refs);
  // Blocks until r's bytes are in host memory (a disk stall).
  int (*wait)(void *ctx, struct expert_ref *r);
  // Copies a host_ready expert into a VRAM slot on the copy stream (sets on_dev, dev, ev);
  // -ENOSPC when every VRAM slot of its size is pinned. NULL without a VRAM tier.
  int (*to_device)(void *ctx, int layer, struct expert_ref *r);
  // Drops the pins. `used` (may be NULL) is recorded on the compute stream after the work
  // that read dev[]; host slots copied to the device are kept until their copies are done.
  void (*release)(void *ctx, int layer, int n, struct expert_ref *refs, struct ferry_event *used);
  // Optional hint: start reading these experts of `layer` (not pinned, never blocks).
  void (*prefetch)(void *ctx, int layer, int n, const int32_t *experts);
  int dev_slots; // VRAM slots of the smallest size class (0: no VRAM tier)
};

// Counters of where experts were computed and what the tiers cost (stream mode).
struct expert_counters {
  uint64_t gpu, cpu;  // experts computed on the device / on the CPU from host RAM
  uint64_t promoted;  // host hits copied to VRAM for reuse
  double disk_wait_s; // blocked waiting for reads
  double copy_wait_s; // blocked waiting for host->device copies
  double cpu_s;       // CPU expert compute
};

struct model_opts {
  bool exact;      // F32 activations, exact dequantization, F32 KV
  bool dense_only; // stream mode: do not load routed experts
  int n_ctx;       // context length to allocate state for (0: 4096, capped by the model)
  int n_batch;     // prefill chunk (tokens per forward call; 0: 256)
  int n_threads;   // CPU pool size the model will be used with (0: one per physical core)
  enum ferry_type kv_k, kv_v;
  bool progress;       // progress bar on stderr while loading
  bool prefetch;       // stream mode: prefetch the next layer's guessed experts
  bool checkpoint;     // allocate a checkpoint of the recurrent state (model_checkpoint)
  bool predict_routes; // compute the stale-gate prediction of each layer's experts
  bool no_graph;       // never capture decode in a graph (debugging, A/B measurements)
};

// Bytes a model needs, by where they live, for a backend kind (computed without loading).
struct model_mem {
  uint64_t dense;   // resident dense weights (backend memory)
  uint64_t experts; // routed experts if resident (0 with dense_only)
  uint64_t state;   // KV cache + recurrent state (+ its checkpoint), backend memory
  uint64_t scratch; // forward buffers + the backend's reserved scratch, backend memory
  uint64_t host;    // host memory besides the above: parsed metadata and tokenizer, pinned
                    // step/logit buffers, routing arrays, load staging
};

struct model;

// Opens the model in f (which must outlive it) on backend be (borrowed), validates every
// tensor's presence and shape, allocates state and buffers, and reads the weights (all, or
// dense only) into the backend's memory through io/ (O_DIRECT). Fails with one clear
// message (missing tensor, wrong shape, out of memory, read error).
int model_load(struct model **out, const struct gguf_file *f, const struct model_opts *o,
               struct ferry_backend *be);
void model_destroy(struct model *m);
const struct model_hparams *model_hparams(const struct model *m);
const struct layer_weights *model_layer(const struct model *m, int l);
struct ferry_backend *model_backend(const struct model *m);
// Stream mode: where routed experts come from. With a device backend, cpu (a CPU backend
// on the same pool, borrowed) computes the experts the cost model gives the CPU; NULL
// computes every expert on the device.
int model_set_expert_source(struct model *m, const struct expert_source *src,
                            struct ferry_backend *cpu, const struct cost_model *cm);
void model_expert_counters(const struct model *m, struct expert_counters *out);
// What the model allocated (same fields as model_plan; host counts what it allocated on
// the host apart from the metadata).
void model_mem_used(const struct model *m, struct model_mem *out);
// The bytes a session needs for this model, options and backend kind, without loading
// (host includes model_meta_bytes for the parsed metadata and tokenizer).
int model_plan(const struct gguf_file *f, const struct model_opts *o, enum ferry_backend_kind kind,
               struct model_mem *out);
// RAM of the parsed metadata and the tokenizer.
uint64_t model_meta_bytes(const struct gguf_file *f);
double model_load_seconds(const struct model *m);
uint64_t model_load_bytes(const struct model *m); // bytes read from the file by model_load
int model_n_ctx(const struct model *m);

// Resets the sequence (KV and recurrent state to empty, position 0).
void model_reset(struct model *m);
int model_pos(const struct model *m);

// Saves the recurrent state (DeltaNet conv + ssm state of every recurrent layer) at the
// current position into the model's one checkpoint (replacing the previous one). Needs
// model_opts.checkpoint (-EINVAL otherwise). No-op returning 0 for models without
// recurrent layers.
int model_checkpoint(struct model *m);
// Moves the sequence back to pos (0 <= pos <= model_pos): KV rows at pos and later are
// simply overwritten later. For recurrent layers the state can only go back to the
// checkpoint's position (restored from it) or to 0 (reset). Returns 0, or -EINVAL with a
// message if pos cannot be reached.
int model_rewind(struct model *m, int pos);

// Observer of routing decisions (traces, statistics). Called once per MoE layer per forward
// chunk, after top-k, on the engine's thread. T tokens at positions pos0..pos0+T-1;
// ids/w: [T][k] in router order (host memory, valid during the call). pred: [T][k] the
// ids predicted for THIS layer by applying its router to the previous layer's MoE input
// (the stale gate), or NULL for layer 0 or when model_opts.predict_routes is off.
struct route_observer {
  void *ctx;
  void (*on_route)(void *ctx, int layer, int pos0, int T, int k, const int32_t *ids, const float *w,
                   const int32_t *pred);
};
void model_set_route_observer(struct model *m, const struct route_observer *o);

// Runs n tokens at the current position (then advances it). For each i with
// want_logits[i] (NULL: only the last token) writes n_vocab logits (host memory) to
// logits + j*n_vocab, j counting the requested rows in order. Splits into n_batch chunks.
// Fails on context overflow, a bad token id or an expert-source / backend error.
int model_forward(struct model *m, const int32_t *tokens, int n, const bool *want_logits,
                  float *logits);
