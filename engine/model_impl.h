// engine/model_impl.h: the insides of struct model, shared by the files that build the
// forward pass: model.c (binding, memory plan, loading, state), forward.c (the forward
// context, the blocks both architectures share: attention, routed experts, embedding and
// output head; the decode graph), qwen3moe.c and qwen3next.c (one layer of each
// architecture). Private to engine/.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "engine/model.h"
#include "kernels/backend.h"

// Forward buffers, all in backend memory, sized for B = n_batch tokens and allocated once
// at load from one table (fwd_layout) that the memory plan reads too.
struct fwd_bufs {
  int32_t *io;  // [1 + B] position of the chunk's first token, then the token ids
  float *x;     // [B][d] residual stream
  float *xn;    // [B][d] normalised input of the current block
  float *proj;  // [B][wide] widest projection output (qwen3next q|gate, legacy ssm_in)
  float *q;     // [B][H*hd] queries; qwen3next DeltaNet: conv input u [B][conv_dim]
  float *k, *v; // [B][Hkv*hd] keys and values of this chunk
  float *gate;  // [B][H*hd] qwen3next attention output gate; DeltaNet: z [B][value_dim]
  float *att;   // [B][max(H*hd, value_dim)] attention / delta-rule output
  float *conv;  // [B][conv_dim] DeltaNet conv output (q | k | v)
  float *ba;    // [B][2*Hv] DeltaNet ssm_ba output
  float *dn_b, *dn_a, *dn_beta, *dn_g; // [B][Hv] DeltaNet gate inputs and gates
  float *blk;                          // [B][d] output projection of the current block
  float *rlog;        // [2][B][E] router logits of this layer and of the stale-gate guess
  int32_t *ids;       // [B][K] experts per token, router order
  float *wts;         // [B][K] their weights
  int32_t *pred;      // [B][K] stale-gate guess of the next layer's experts
  float *slots;       // [B*K][d] one expert output per (token, slot) pair
  int32_t *map;       // [B*K] pair -> row of slots
  int32_t *rows;      // [B*K] token of each grouped row (stream mode)
  float *moe;         // [B][d] routed-expert sum (+ shared expert)
  float *sh_g, *sh_u; // [B][sff] shared expert gate / up
  float *sh_out;      // [B][d] shared expert output
  float *sh_gate;     // [B] shared expert gate logit
  float *head;        // [HR][V] logits of up to HR rows (backends without host memory)
  void *base;         // the one allocation all of the above point into
  uint64_t bytes;     // its size
};

struct model {
  const struct gguf_file *f;
  struct model_hparams hp;
  struct model_opts o;
  struct ferry_backend *be; // borrowed
  struct ferry_stream *st;  // the compute stream (NULL: default)
  enum ferry_prec prec;
  bool host_mem; // backend memory is host memory (CPU backends)
  struct expert_source src;
  bool src_set;
  struct route_observer obs;
  bool obs_set;
  bool check_finite; // FERRY_CHECK_FINITE=1: check every layer's output

  struct weight token_embd, output_norm, output;
  struct layer_weights *layers;
  struct ferry_moe_table *etab; // [n_layer] resident experts (full mode)

  void *wmem_alloc;    // the allocation wmem is in
  uint8_t *wmem;       // resident weights (backend memory, page-aligned)
  uint64_t wmem_bytes; // as allocated
  uint64_t load_bytes; // read from the file
  double load_s;

  // per-sequence state (backend memory)
  int pos;
  int n_ctx;
  void **kc, **vc;    // [n_layer] KV cache of full-attention layers (NULL for DeltaNet)
  int64_t kv_stride;  // elements per cached position (n_head_kv * head_dim)
  float **conv_state; // [n_layer] (K-1) x conv_dim (DeltaNet)
  float **ssm_state;  // [n_layer] Hv x dk x dv (DeltaNet)
  void *state_mem;    // one allocation holding all of the above
  uint64_t state_bytes;
  void *ckpt_mem;     // checkpoint of the recurrent state (model_opts.checkpoint)
  int ckpt_pos;       // its position, -1 if none
  uint64_t rec_bytes; // bytes of the recurrent part of state_mem (copied to the checkpoint)
  void *rec_begin;    // start of the recurrent part

  // forward
  int B;  // tokens per chunk
  int HR; // output-head rows per block (backends without host memory)
  struct fwd_bufs b;
  uint64_t scratch_bytes; // b.bytes + the backend's reserved scratch
  // host side
  int32_t *h_io;      // [1 + B] pinned: what b.io receives
  float *h_head;      // [HR][V] pinned logits staging (backends without host memory)
  int32_t *h_ids;     // [B*K] routing on the host (stream mode grouping, observers)
  float *h_wts;       // [B*K]
  int32_t *h_pred;    // [n_layer][B*K] stale-gate guesses on the host (graph replay)
  int32_t *h_ids_all; // [n_layer][B*K] per-layer routing copies for observers in graphs
  float *h_wts_all;   // [n_layer][B*K]
  int32_t *grp_cnt, *grp_off, *uniq; // [E + 1]
  int32_t *h_rows, *h_map;           // [B*K]
  bool *done;                        // [E]
  struct ferry_moe_group *groups;    // [E]
  const void *(*eptr)[3];            // [E]
  struct ferry_moe_group *cgroups;   // [E] groups computed on the CPU (device backends)
  struct expert_ref *refs;           // [E] acquired experts of a layer (stream mode)
  float *h_xn;         // [B][d] pinned: a layer's expert input for the CPU (stream, device)
  float *h_cslots;     // [B*K][d] pinned: outputs of the experts the CPU computed
  uint64_t host_bytes; // the host-side arrays above
  // stream mode on a device backend
  struct ferry_backend *cpu; // computes the experts the cost model gives the CPU (borrowed)
  struct cost_model cm;
  struct expert_counters ecnt;
  struct ferry_event *ev_used; // recorded after a layer's device expert work
  // decode graph
  struct ferry_graph *graph;
  bool graph_failed;     // capture refused: decode runs op by op
  bool capturing;        // ops are being recorded into the graph
  struct fwd_prof *prof; // FERRY_PROFILE=1: time per section (forward.c), else NULL
};

// forward.c
int fwd_alloc(struct model *m, bool dry);
// FERRY_PROFILE: marks the end of a section of the forward pass (its time runs from the
// previous mark); prints and frees the totals.
void fwd_prof_mark(struct model *m, const char *section);
int fwd_prof_init(struct model *m);
void fwd_prof_done(struct model *m);
void fwd_free(struct model *m);
int fwd_chunk(struct model *m, const int32_t *tok, int T, const bool *want, float *logits,
              int *n_out);
// Shared blocks: y[T][w.nrows] = x[T][w.n] . W^T with the model's precision.
int fwd_linear(struct model *m, const struct weight *w, const float *x, int64_t T, float *y);
int fwd_attention(struct model *m, int l, int T);
int fwd_moe(struct model *m, int l, int T);
// Measures the cost model's rates (stream mode on a device with a CPU backend).
int fwd_calibrate(struct model *m);
// In forward.c and the layer files: return a non-zero status at once; an op of the model's
// backend on the model's stream.
#define CK(e)            \
  do {                   \
    int rc_ = (e);       \
    if (rc_) return rc_; \
  } while (0)
#define OP(name, ...) m->be->ops.name(m->be, __VA_ARGS__, m->st)

// qwen3moe.c / qwen3next.c: one transformer layer.
int qwen3moe_layer(struct model *m, int l, int T);
int qwen3next_layer(struct model *m, int l, int T);
