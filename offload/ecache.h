// offload/ecache.h: the routed-expert cache. Expert (l, e) is three file slices (gate,
// up, down); the cache keeps recently used experts in slots and reads missing ones from
// the model file through an io_reader, all misses of a layer in one submission.
//
// Tiers: the host tier (RAM slots, registered with the reader) is implemented; the
// device tier is reserved in the enums and stats (capacity 0) for the CUDA path.
//
// Slots: allocated once at ecache_create from the budget (host RAM, "expert slots"),
// never per token. Slot size is per *size class*: every layer's slot size is the sum of
// its three aligned spans (each slice's 4096-aligned superset), and layers with equal
// slot size share one class, one slab and one LRU list. A layer never borrows slots of
// another class, so the capacity is split between classes in proportion to their
// number of layers (every layer gets about the same number of slots). For qwen3moe
// this gives two classes (down Q4_K / Q6_K) and wastes nothing on padding to the
// largest expert.
//
// Pins: acquire pins each expert until release; a pinned slot is never evicted and its
// data pointers stay valid. Eviction is LRU over unpinned, loaded slots. Reads in
// flight are never evicted (the kernel is writing into them); an unpinned expert still
// loading (prefetch, or released before waiting) is waited for before reuse.
//
// Prefetch (ecache_prefetch): guesses for the next acquire (the engine's stale-gate
// predictions for the next layer). A guess not cached takes the least recently used
// unpinned slot and is held aside, unpinned and outside the LRU list, until the next
// acquire: if that acquire asks for it, it is a hit (a read that started a layer early);
// if not, it is dropped (unmapped, its slot first in line for reuse) and counted wrong.
// Priority: prefetch reads are handed to the reader only once no demand read is
// outstanding (checked in acquire, poll, wait and release); a wrong guess whose reads were
// never issued costs nothing (counted cancelled). Cap: while the bytes of wrong guesses
// exceed prefetch_cap times the bytes the engine needed (demand misses plus claimed
// prefetches), prefetch does nothing (counted skipped); this bounds the bytes read to
// (1 + cap) times the needed bytes, up to one layer's guesses. All of this depends only on
// the sequence of calls, not on I/O timing: hit, miss and prefetch counts are reproducible.
//
// Simulation (params.simulate): no memory and no reads, every load lands at once, data
// pointers are NULL; the same decisions as the real cache (ferry cachesim replays traces
// with it).
//
// Threads: one thread (the engine's) calls everything; not thread-safe.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "io/reader.h"
#include "offload/budget.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ecache;

enum ecache_part { ECACHE_GATE = 0, ECACHE_UP, ECACHE_DOWN, ECACHE_N_PARTS };
enum ecache_tier { ECACHE_HOST = 0, ECACHE_DEVICE, ECACHE_N_TIERS };

// One tensor's slices: expert e is the file range [base + e*stride, +len).
struct ecache_slice {
  uint64_t base;   // absolute file offset of expert 0 (data_offset + tensor offset)
  uint64_t stride; // bytes between experts (nb2)
  uint64_t len;    // bytes of one expert's slice (nb2); > 0
};
struct ecache_layer {
  uint32_t n_experts;                       // 0: no routed experts in this layer
  struct ecache_slice part[ECACHE_N_PARTS]; // gate, up, down
};

// Default prefetch cap: wrong-guess bytes at most this share of the needed bytes
// (NOTES.md, "Realistic routing and prefetch (issue 13)", has the measurements).
#define ECACHE_PREFETCH_CAP 0.25

struct ecache_params {
  uint32_t n_layers;
  const struct ecache_layer *layers; // [n_layers], copied
  struct io_reader *reader;          // not owned; must outlive the cache
  struct budget *budget;             // not owned, may be NULL; slots are charged to
                                     // (BUDGET_HOST, BUDGET_EXPERTS) until destroy
  uint64_t host_bytes;               // host tier capacity in bytes, or if 0:
  uint32_t host_slots;               //   in slots (total over all size classes)
  // Register the slabs with the reader as fixed buffers. Off by default: registering pins
  // (and so faults in) every page of the slabs before the first token, seconds for
  // gigabytes, while plain O_DIRECT reads fault each slot in on its first use and cost a
  // few microseconds of page pinning per read (NOTES.md).
  bool register_buffers;
  uint32_t min_slots; // most experts one layer pins at once (k); create
                      // fails if a size class gets fewer; 0 -> 1
  // Optional host slab allocator (e.g. cudaHostAlloc for pinned memory); must return
  // 4096-aligned memory or NULL. Default: ferry_alloc_aligned.
  void *(*host_alloc)(uint64_t bytes, void *ctx);
  void (*host_free)(void *p, uint64_t bytes, void *ctx);
  void *alloc_ctx;
  bool simulate;       // no reader, no memory: a replay of the decisions only
  double prefetch_cap; // 0: ECACHE_PREFETCH_CAP; < 0: no cap
};

enum ecache_ref_state { ECACHE_READY = 0, ECACHE_IN_FLIGHT };

// One acquired expert. Filled by ecache_acquire; data[] valid while state == READY and
// until release.
struct ecache_ref {
  uint32_t layer;
  int32_t expert;
  enum ecache_ref_state state;
  enum ecache_tier tier;               // where data[] lives
  const uint8_t *data[ECACHE_N_PARTS]; // gate, up, down: exactly the file slice bytes
  uint64_t bytes[ECACHE_N_PARTS];      // slice lengths
  int32_t slot;                        // private
};

struct ecache_counters {
  uint64_t acquires;     // experts acquired (hits + misses)
  uint64_t hits;         // found in the tier (loaded, or already loading)
  uint64_t misses;       // read from storage by acquire
  uint64_t evictions;    // loaded experts dropped to make room (counted on their layer)
  uint64_t prefetches;   // guesses taken by ecache_prefetch (slots set aside)
  uint64_t errors;       // expert loads that failed
  uint64_t pf_used;      // guesses claimed by the next acquire (counted in hits too)
  uint64_t pf_wrong;     // guesses dropped
  uint64_t pf_cancelled; // wrong guesses whose reads were never issued
  uint64_t pf_skipped;   // guesses not taken because of the cap
  uint64_t pf_bytes;     // bytes of prefetch reads issued (slot bytes; all in simulation)
  uint64_t demand_bytes; // bytes of demand misses (slot bytes)
};

struct ecache_stats {
  uint64_t capacity_bytes[ECACHE_N_TIERS];
  uint32_t capacity_slots[ECACHE_N_TIERS];
  uint32_t n_classes; // host size classes
  struct ecache_counters tier[ECACHE_N_TIERS];
};

// Validates the layout against the reader's file, charges the budget, allocates the slabs
// and registers them with the reader (if it has no buffers registered yet). Blocks
// (allocation). Fails with a clear message: bad layout (layer, part), budget exceeded,
// or capacity below min_slots per class (naming the minimum in slots and bytes).
int ecache_create(struct ecache **out, const struct ecache_params *p);
// Waits for every read in flight, unregisters, frees and returns the budget. NULL-safe.
void ecache_destroy(struct ecache *c);

// Pins n experts of one layer (router order) and fills out[n]. Each is READY (data[]
// valid now) or IN_FLIGHT (read submitted; call ecache_wait). All misses are submitted in
// one batch before it returns; it does not wait for them, except to reclaim an unpinned
// slot that is still loading when nothing else is free. Duplicates are allowed (pinned
// twice). Fails without pinning anything: -EINVAL for a bad layer or expert,
// -ENOSPC when the layer's size class has too few unpinned slots (message names the
// minimum capacity).
int ecache_acquire(struct ecache *c, uint32_t layer, uint32_t n, const int32_t *experts,
                   struct ecache_ref *out);
// Blocks until ref's three slices have landed, then sets READY and data[]. Returns 0, or a
// negative errno with a message naming layer, expert, slice, file offset and errno; the
// ref stays pinned (release it as usual) and the expert is dropped from the cache on
// release, so a later acquire reads it again.
int ecache_wait(struct ecache *c, struct ecache_ref *ref);
// Never blocks: reaps finished reads and turns the IN_FLIGHT refs whose slices have all
// landed into READY (data[] set). Returns how many of refs are READY. Lets the engine
// compute experts in completion order (it must still sum them in router order). A ref
// whose read failed stays IN_FLIGHT; ecache_wait reports its error.
int ecache_poll(struct ecache *c, uint32_t n, struct ecache_ref *refs);
// Drops the pins of refs (from ecache_acquire of that layer); READY ones become most
// recently used. Never blocks.
void ecache_release(struct ecache *c, uint32_t layer, uint32_t n, struct ecache_ref *refs);

// Starts reads for experts of a layer that are not cached, without pinning (a hint that
// they will be acquired soon). Uses only free or evictable slots and never waits. Returns
// the number of reads started (>= 0) or -EINVAL for a bad layer or expert.
int ecache_prefetch(struct ecache *c, uint32_t layer, uint32_t n, const int32_t *experts);

// Bytes of one slot of a layer: its three slices' 4096-aligned supersets.
uint64_t ecache_layer_slot_bytes(const struct ecache_layer *L);

// The smallest host_bytes for which ecache_create succeeds with these layers and
// min_slots (every size class gets min_slots slots). Used to plan before creating.
uint64_t ecache_min_host_bytes(const struct ecache_layer *layers, uint32_t n_layers,
                               uint32_t min_slots);

void ecache_stats(const struct ecache *c, struct ecache_stats *out);
void ecache_layer_counters(const struct ecache *c, uint32_t layer, struct ecache_counters *out);
// Bytes of one slot for a layer (its size class), and whether (layer, expert) is loaded.
uint64_t ecache_slot_bytes(const struct ecache *c, uint32_t layer);
bool ecache_contains(const struct ecache *c, uint32_t layer, int32_t expert);
// Walks every structure and aborts (FERRY_ASSERT) on an inconsistency: map <-> slots,
// LRU membership, pins, counters. For tests and debug builds; O(slots + experts).
void ecache_check(const struct ecache *c);

#ifdef __cplusplus
}
#endif
