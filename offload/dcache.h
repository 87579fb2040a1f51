// offload/dcache.h: the VRAM tier of the routed-expert cache. Expert (l, e) occupies one
// device slot holding its gate, up and down matrices back to back; slots are allocated
// once at create (charged to the device budget, category expert slots), grouped in size
// classes like the host tier (layers whose experts have the same size share slots), and
// reused least-recently-used first.
//
// Bytes arrive only from host memory (the pinned host tier): dcache_fill copies them on
// the cache's copy stream and records an event the compute stream waits for. A slot read
// by compute work is refilled only after that work: dcache_release records where its last
// use ends, and the next fill's copy waits for it on the device, never on the host.
//
// Pins: lookup and fill pin the slot until release; pinned slots are never evicted.
// Threads: one thread (the engine's) calls everything.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "offload/budget.h"

#ifdef __cplusplus
extern "C" {
#endif

struct dcache;

struct dcache_layer {
  uint32_t n_experts; // 0: no routed experts in this layer
  uint64_t len[3];    // bytes of one expert's gate, up and down matrices
};

struct dcache_params {
  uint32_t n_layers;
  const struct dcache_layer *layers; // [n_layers], copied
  struct ferry_backend *be;          // not owned
  struct ferry_stream *copy;         // the copy stream (not owned)
  struct budget *budget;             // not owned, may be NULL; charged (DEVICE, EXPERTS)
  uint64_t bytes;                    // capacity; each size class gets its share by layers
  uint32_t min_slots;                // create fails if a class gets fewer (k); 0 -> 1
};

struct dcache_ref {
  int32_t slot;              // private
  const void *dev[3];        // gate, up, down in device memory
  struct ferry_event *ready; // the fill's copy (wait for it on the compute stream); NULL
                             // once the bytes are known to be there
};

struct dcache_stats {
  uint64_t capacity_bytes;
  uint32_t capacity_slots, n_classes;
  uint64_t hits, misses; // lookups that found / did not find the expert
  uint64_t fills, evictions, h2d_bytes;
};

// Fails with a message: bad layout, budget exceeded, device out of memory, or a class
// with fewer than min_slots slots (naming the bytes that would give it enough).
int dcache_create(struct dcache **out, const struct dcache_params *p);
void dcache_destroy(struct dcache *c); // NULL-safe; waits for the copy stream
// Pins (layer, expert) and fills out if a slot holds it (or is being filled with it).
// Counts a hit or a miss. Never blocks.
bool dcache_lookup(struct dcache *c, uint32_t layer, int32_t expert, struct dcache_ref *out);
// Takes the least recently used unpinned slot of the layer's class (evicting its expert),
// queues the copy of host[0..2] (host memory, pinned for an asynchronous copy; the caller
// keeps it valid until out->ready has completed) after the slot's last use, and pins it.
// Returns 0, -ENOSPC when every slot of the class is pinned, or a backend error.
int dcache_fill(struct dcache *c, uint32_t layer, int32_t expert, const void *const host[3],
                struct dcache_ref *out);
// Unpins. `used` (may be NULL) is an event recorded on the compute stream after the last
// work reading the slot: the next fill of the slot waits for it. The event must outlive
// the cache or be re-recorded only later on the same stream.
void dcache_release(struct dcache *c, struct dcache_ref *r, struct ferry_event *used);
bool dcache_contains(const struct dcache *c, uint32_t layer, int32_t expert);
// The smallest capacity for which create succeeds with these layers and min_slots.
uint64_t dcache_min_bytes(const struct dcache_layer *layers, uint32_t n_layers, uint32_t min_slots);
void dcache_stats(const struct dcache *c, struct dcache_stats *out);
// Bytes of one expert's slot, and the slots of the smallest size class.
uint64_t dcache_slot_bytes(const struct dcache_layer *l);
uint32_t dcache_min_class_slots(const struct dcache *c);

#ifdef __cplusplus
}
#endif
