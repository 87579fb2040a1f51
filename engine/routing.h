// engine/routing.h: what ferry records about routing decisions, through the model's route
// observer (engine/model.h): expert traces (`--trace-experts FILE`, one JSON line per token
// per MoE layer) and routing statistics (`--routing-stats`).
//
// Trace line (keys in this order; `pred` only when the run computed stale-gate
// predictions, i.e. always with --trace-experts, and not for layer 0; `chunk` is the first position of the forward chunk the token was computed in,
// so a replay can group the tokens the engine acquired experts for together):
//   {"pos": P, "layer": L, "chunk": C, "experts": [ids in router order], "weights": [...],
//    "pred": [ids predicted by the stale gate, router order]}
//
// Statistics (each averaged over layers, then reported as shares in [0, 1]):
//   lag1_reuse           share of a token's k experts that the previous position used in
//                        the same layer (pairs of consecutive positions only);
//   stale_gate_accuracy  share of a layer's k experts that its router, applied to the
//                        previous layer's MoE input, also put in its top-k (layers >= 1);
//   coverage90           the fewest experts that carry 90% of a layer's routings, as a
//                        share of its experts (counted over the whole run).
// Prompt tokens are included in both. Memory is allocated at create; the observer
// allocates nothing per token (the trace goes through one stdio buffer).
// Threads: the engine's thread only.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "engine/model.h"

struct routing;

struct routing_opts {
  const char *trace_path; // NULL: no trace
  bool stats;             // keep statistics
  int n_layer, n_expert, k;
};

struct routing_summary {
  bool valid;                 // statistics were kept and at least one layer was seen
  double lag1_reuse;          // -1 when no consecutive positions were seen
  double stale_gate_accuracy; // -1 when no predictions were seen
  double coverage90;
  uint64_t tokens;    // (position, layer) records of layer 0 = positions seen
  uint64_t lag_pairs; // (token, layer) pairs counted in lag1_reuse
  uint64_t predicted; // (token, layer) records with a prediction
};

// Opens the trace file (truncating it) when asked. Fails with a message naming the file.
int routing_create(struct routing **out, const struct routing_opts *o);
// Closes the trace (without reporting write errors; call routing_flush first).
void routing_destroy(struct routing *r); // NULL-safe
// The observer to hand to model_set_route_observer; valid while r lives.
void routing_observer(struct routing *r, struct route_observer *out);
// Flushes the trace and reports a failed write (disk full, ...) with the file's name.
int routing_flush(struct routing *r);
void routing_summarize(const struct routing *r, struct routing_summary *out);
// Per-layer values of the statistics (arrays of n_layer; -1 where undefined). Any may be NULL.
void routing_layer_stats(const struct routing *r, double *lag1, double *stale, double *cov90,
                         double *top1_share);

// Intersection size of two id lists of length k (k is small: O(k^2)).
int routing_overlap(const int32_t *a, const int32_t *b, int k);
// The fewest of n counts (any order) that sum to at least 90% of their total; 0 when the
// total is 0. Sorts `counts` in place (descending).
int routing_cover90(uint64_t *counts, int n);
