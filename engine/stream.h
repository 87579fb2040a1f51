// engine/stream.h: stream mode — the routed experts of a loaded dense-only model come
// from the offload/ expert cache over the GGUF file (io_uring, O_DIRECT) instead of
// memory. Owns the reader and the cache; hands the model an expert_source.
#pragma once
#include <stdint.h>

#include "engine/gguf.h"
#include "engine/model.h"
#include "offload/budget.h"
#include "offload/ecache.h"

struct stream;
struct run_stats;

// The routed experts' file layout, one entry per layer (out: hp->n_layer entries).
int stream_expert_layout(const struct gguf_file *f, const struct model_hparams *hp,
                         struct ecache_layer *out);
// The host capacity stream mode gives the cache when `left` bytes of the budget remain:
// `left`, but no more than all the experts take as slots (ferry cachesim uses it too).
uint64_t stream_cache_bytes(const struct ecache_layer *layers, uint32_t n_layer, uint64_t left);
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
// prefetch_cap: as ecache_params.prefetch_cap (0: the default).
int stream_create(struct stream **out, const struct gguf_file *f, const struct model_hparams *hp,
                  struct budget *b, struct ferry_backend *be, uint64_t vram_bytes,
                  double prefetch_cap);
void stream_destroy(struct stream *s); // NULL-safe
void stream_expert_source(struct stream *s, struct expert_source *src);
void stream_fill_stats(struct stream *s, struct run_stats *st);
