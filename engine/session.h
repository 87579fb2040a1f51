// engine/session.h: what `ferry run`, `score` and `bench` share — option parsing, the
// memory plan and mode choice, loading (full or stream), the generate loop, statistics,
// and the --json / --stats outputs.
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "offload/plan.h"

enum run_mode { MODE_AUTO = 0, MODE_FULL, MODE_STREAM };

#define RUN_MAX_LOGIT_BIAS 64

struct run_opts {
  const char *model;
  const char *prompt, *prompt_file, *system, *json_path, *ids;
  const char *modes; // bench: "full,stream"
  int n_predict;     // tokens to generate
  bool raw;          // no chat template
  float temp, top_p, min_p;
  int top_k;
  bool temp_set, top_p_set, min_p_set, top_k_set;
  uint64_t seed;
  int threads; // 0 = one per physical core
  int n_ctx;   // 0 = default (4096, capped by the model)
  int n_batch; // prefill chunk
  enum run_mode mode;
  uint64_t ram, vram;  // 0 = unset (defaults: available memory minus a margin; no GPU)
  const char *backend; // "auto" (NULL), "cpu" or "cuda"; --cpu = --backend cpu
  bool no_graph;       // decode op by op even where graphs can be captured
  enum expert_policy expert_compute; // --expert-compute auto|cpu|gpu (stream mode, device)
  bool stats;
  int logprobs; // K > 0: record top-K log-probabilities per step
  bool exact;
  int from; // score: first position (N) whose prediction is reported, >= 1
  enum ferry_type kv_k, kv_v;
  bool kv_set;
  bool no_progress;
  bool prefetch;
  const char *trace_experts; // --trace-experts FILE
  bool routing_stats;        // --routing-stats
  double prefetch_cap;       // --prefetch-cap (0: ECACHE_PREFETCH_CAP; < 0: none)
  bool prompt_cache; // serve: keep a checkpoint of the recurrent state (model_opts.checkpoint)
  // Filled by gen_read_prompt before the session opens: the prompt's bytes (charged to the
  // RAM budget with the tokens made from them, see session_open).
  const char *prompt_text;
  size_t prompt_len;
  struct logit_bias logit_bias[RUN_MAX_LOGIT_BIAS]; // --logit-bias ID(+|-)BIAS, repeatable
  int n_logit_bias;
};

// Parses argv (argv[0] is the subcommand). `cmd` selects which flags are legal.
// Returns 0, 1 after printing --help, or a negative code with a message.
int run_opts_parse(struct run_opts *o, const char *cmd, int argc, char **argv);

// What the expert tiers did: the counters of a whole run, and of its decode phase alone
// (from the first generated token on: what a projection of decode speed needs).
struct run_traffic {
  uint64_t io_bytes, h2d_bytes;
  uint64_t vram_hits, vram_misses, host_hits, host_misses;
  uint64_t experts_gpu, experts_cpu;
  double disk_wait_s, copy_wait_s, cpu_expert_s;
};

struct run_stats {
  const char *backend; // "cpu", "cuda" (session_fill_stats)
  const char *device;  // the device (or CPU) it ran on
  double load_s, ttft_s, prefill_s, decode_s;
  int n_prompt, n_generated;
  uint64_t peak_rss, ram_budget, vram_budget, peak_vram;
  uint64_t io_bytes, io_reads;
  double io_s;
  bool io_direct;
  uint64_t host_capacity, host_hits, host_misses, host_evictions;
  uint64_t dev_capacity, dev_hits, dev_misses, dev_evictions; // VRAM tier
  uint64_t h2d_bytes;                                         // expert bytes copied host -> VRAM
  uint64_t experts_gpu, experts_cpu; // experts computed on the device / the CPU
  uint64_t promoted;                 // host hits copied to VRAM for their reuse
  double disk_wait_s, copy_wait_s;   // blocked on reads / on host->VRAM copies
  double cpu_expert_s;               // CPU expert compute
  uint64_t host_capacity_bytes;
  // stale-gate prefetch (stream mode with --prefetch; offload/ecache.h counters)
  bool prefetch;
  uint64_t pf_issued, pf_used, pf_wrong, pf_skipped, pf_bytes, pf_cancelled;
  uint64_t demand_bytes;
  // --routing-stats (engine/routing.h); -1 where undefined
  bool has_routing;
  double lag1_reuse, stale_gate_accuracy, coverage90;
  struct run_traffic decode; // the decode phase's share of the counters above
};

struct session;

// The RAM budget when --ram is not given: available memory (host or memory cgroup, the
// smaller) minus a margin of an eighth, clamped to [64 MiB, 512 MiB].
uint64_t session_default_ram(void);

// Bytes of the RAM budget the process and the prompt take before the model loads (see
// session.c): VmRSS at the call plus SESSION_PROMPT_BYTES_PER_BYTE per prompt byte (a chat
// rendering of the text, up to one 4-byte id per byte, and the result's copy of the ids).
#define SESSION_PROMPT_BYTES_PER_BYTE 9
uint64_t session_baseline_bytes(const struct run_opts *o);

// Opens the model, plans memory against the budgets, picks the mode (printing the
// choice for auto), and loads. Fails with one message (file errors, budget too small,
// unsupported model).
int session_open(struct session **out, const struct run_opts *o);
void session_close(struct session *s);
struct model *session_model(struct session *s);
const struct gguf_file *session_gguf(struct session *s);
const struct tokenizer *session_tokenizer(struct session *s);
const char *session_mode_name(const struct session *s);
void session_fill_stats(struct session *s, struct run_stats *st);
// The tier counters so far (a subset of session_fill_stats, without its RSS read and routing
// summary), and the difference of two such snapshots.
void session_traffic(struct session *s, struct run_traffic *t);
void run_traffic_since(struct run_traffic *d, const struct run_traffic *now,
                       const struct run_traffic *then);
const char *session_backend_name(const struct session *s); // "cpu", "cuda"
const char *session_device(const struct session *s); // "NVIDIA H200 (sm_90, ...)", "CPU (...)"
// The model options a run's flags give.
struct model_opts session_model_opts(const struct run_opts *o);
// The placement plan of DESIGN §8 for this file, flags, backend kind and budgets: what
// session_open loads, what `ferry info` and `ferry bench` print. need receives the byte
// counts it was made from (filled even when it fails). Fails with the plan's one message
// when nothing fits.
// base: what the process itself and the prompt take (session_baseline_bytes), host memory.
int session_plan(const struct gguf_file *f, const struct run_opts *o, enum ferry_backend_kind kind,
                 uint64_t ram, uint64_t vram, uint64_t base, struct plan_need *need,
                 struct plan *out);
// Flushes the expert trace (if any); reports a failed write.
int session_flush(struct session *s);
