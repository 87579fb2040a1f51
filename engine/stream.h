// engine/stream.h: stream mode — the routed experts of a loaded dense-only model come
// from the offload/ expert cache over the GGUF file (io_uring, O_DIRECT) instead of
// memory. Owns the reader and the cache; hands the model an expert_source.
#pragma once
#include <stdint.h>

#include "engine/gguf.h"
#include "engine/model.h"
#include "offload/budget.h"

struct stream;
struct run_stats;

// Bytes of the smallest cache that works: the k largest experts of one layer, as slots.
uint64_t stream_min_cache_bytes(const struct gguf_file *f, const struct model_hparams *hp);
// Bytes of one expert of every layer as cache slots (summed over layers), and of every
// expert of every layer (the most a cache can use).
void stream_expert_slot_bytes(const struct gguf_file *f, const struct model_hparams *hp,
                              uint64_t *one_per_layer, uint64_t *all);
// The VRAM tier's smallest working size (k experts per size class), one expert of every
// layer, and every expert, as VRAM slots.
void stream_vram_bytes(const struct gguf_file *f, const struct model_hparams *hp,
                       uint64_t *min_bytes, uint64_t *one_per_layer, uint64_t *all);
// Creates the cache with what the budget has left (host RAM), at least the minimum.
// Fails naming the budget, what is already used and the minimum cache.
// With a device backend be and vram_bytes > 0, a VRAM tier of that size sits above the host
// tier (whose slabs are then pinned for asynchronous copies); be may be NULL (CPU).
int stream_create(struct stream **out, const struct gguf_file *f, const struct model_hparams *hp,
                  struct budget *b, struct ferry_backend *be, uint64_t vram_bytes);
void stream_destroy(struct stream *s); // NULL-safe
void stream_expert_source(struct stream *s, struct expert_source *src);
void stream_fill_stats(struct stream *s, struct run_stats *st);
