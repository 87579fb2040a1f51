// engine/cachesim.h: replays an expert trace (engine/routing.h) against cache policies:
// ferry's own (the real offload/ecache in simulation mode, driven the way the engine
// drives it: unique experts of a chunk ascending, halved batches when a size class is
// short, the stale-gate prefetch after the first batch of a decode step), LRU, LFU and
// S3-FIFO, each per layer or global, with or without stale-gate prefetch.
// Used by `ferry cachesim`; single-threaded; allocates per replay, not per record.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "offload/ecache.h"

// A parsed trace: n records of k ids each, in file order.
struct trace {
  int64_t n;
  int k, n_layer, max_expert; // n_layer = max layer + 1; max_expert = largest id seen
  int32_t *pos, *layer, *chunk;
  int32_t *ids;  // [n][k]
  int32_t *pred; // [n][k] (valid where has_pred)
  bool *has_pred;
  int64_t n_positions; // records of layer 0
};

// Reads a trace file. One clear message for an unreadable file or a malformed line
// (naming the line: missing key, bad number, wrong count of ids, negative id, ...).
int trace_load(struct trace *t, const char *path);
void trace_free(struct trace *t);

enum sim_policy { SIM_FERRY = 0, SIM_LRU, SIM_LFU, SIM_S3FIFO, SIM_N_POLICIES };
const char *sim_policy_name(enum sim_policy p);

struct sim_config {
  enum sim_policy policy;
  bool global;    // one cache over all layers (generic policies); else one per layer
  bool prefetch;  // stale-gate prefetch (needs "pred" in the trace)
  double cap;     // prefetch cap (as ecache_params.prefetch_cap)
  int64_t warmup; // positions before this are not counted (their chunks, exactly)
  // Capacity: per layer l, slot bytes slot[l] (the ecache layout gives them); ferry's
  // policy gets host_bytes (or host_slots when host_bytes is 0), the generic policies the
  // same bytes (global) or floor(bytes / sum of slot bytes) slots per layer.
  const struct ecache_layer *layers;
  uint32_t n_layers, min_slots;
  uint64_t host_bytes;
  uint32_t host_slots;
};

struct sim_result {
  uint64_t hits, misses, evictions;
  uint64_t pf_issued, pf_used, pf_wrong, pf_skipped;
  uint64_t bytes_demand, bytes_prefetch; // slot bytes read
  uint64_t capacity_slots, capacity_bytes;
  int64_t positions; // counted positions
};

// Replays t under c. Fails with a message (trace and layout disagree, capacity below the
// minimum, prefetch asked for but the trace has no predictions).
int sim_run(const struct trace *t, const struct sim_config *c, struct sim_result *out);
