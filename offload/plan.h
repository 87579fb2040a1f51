// offload/plan.h: the placement plan — for a model's memory needs, the budgets and the
// requested mode, where everything lives (host RAM or device VRAM), which mode runs, how
// large the expert caches are, and, when nothing fits, the one message that says what to
// raise. Computed once before anything is loaded; `ferry run/score/serve`, `info` and
// `bench` all use it, and the session charges exactly its numbers to the budget.
//
// It knows nothing of model math: the engine supplies the byte counts (struct plan_need).
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "offload/budget.h"

#ifdef __cplusplus
extern "C" {
#endif

enum plan_mode { PLAN_AUTO = 0, PLAN_FULL, PLAN_STREAM };

// What the model needs. Backend memory (the backend's own: VRAM for a device backend,
// RAM for the CPU) holds the resident weights, state and forward scratch; host memory
// always holds the rest (metadata, tokenizer, pinned staging, routing arrays).
struct plan_need {
  // full mode (every weight resident)
  uint64_t dense, experts, state, scratch, host;
  // stream mode (dense weights resident, routed experts cached)
  uint64_t s_dense, s_state, s_scratch, s_host;
  uint64_t min_cache;   // the smallest host expert cache that works (k experts per class)
  uint64_t all_experts; // every expert as cache slots: no cache needs more
  uint32_t n_layer, n_expert;
  uint64_t expert_slot_bytes; // one expert of every layer, as slots (for "experts per layer")
  // the VRAM expert tier (device backends, stream mode)
  uint64_t dev_min_cache;   // the smallest VRAM tier that works (k experts per size class)
  uint64_t dev_all_experts; // every expert as VRAM slots
  uint64_t dev_slot_bytes;  // one expert of every layer as VRAM slots
};

struct plan_req {
  enum plan_mode mode;
  bool device;                // the backend is a device (its memory is VRAM)
  uint64_t ram, vram;         // budgets (vram ignored without a device)
  bool ram_given, vram_given; // from flags (for messages)
  bool vram_tier_needed;      // every expert is computed on the device (no CPU compute)
};

struct plan {
  enum plan_mode mode; // PLAN_FULL or PLAN_STREAM
  bool device;
  uint64_t ram, vram; // the budgets
  // bytes to charge, per tier and category (budget.h)
  uint64_t charge[BUDGET_N_TIERS][BUDGET_N_CATS];
  uint64_t host_cache;                  // stream: host expert cache bytes (slots)
  uint64_t vram_cache;                  // stream on a device: VRAM expert tier (0: none)
  uint64_t full_backend, full_host;     // what full mode needs (for the report)
  uint64_t stream_backend, stream_host; // what stream mode needs without the cache
};

// Decides the mode and placement. Fails (-ENOMEM) with one message naming what does not
// fit and the smallest --ram / --vram that would, or the mode to use instead.
int plan_make(const struct plan_need *n, const struct plan_req *r, struct plan *out);
// The plan as `ferry info` prints it (several lines, "plan " first).
void plan_print(const struct plan *p, const struct plan_need *n, FILE *o);
const char *plan_mode_name(enum plan_mode m); // "auto", "full", "stream"

#ifdef __cplusplus
}
#endif
