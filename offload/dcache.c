// offload/dcache.c: the VRAM tier of the expert cache (see dcache.h). A map (layer,
// expert) -> slot, one device allocation and one LRU list per size class, and per slot the
// event of its last fill and the event after its last use.
#include "offload/dcache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "offload/lru.h"

#define DC_ALIGN 256 // each matrix of a slot starts at a multiple of this

struct dslot {
  uint8_t *d; // device memory (slot_bytes of its class)
  uint32_t cls;
  int32_t layer, expert; // -1 when empty
  uint32_t pins;
  struct lru_link link;
  struct ferry_event *filled; // recorded on the copy stream after the last fill
  struct ferry_event *used;   // the caller's event after the last use (may be NULL)
};

struct dclass {
  uint64_t slot_bytes;
  uint32_t first, n_slots, n_layers;
  uint8_t *mem;
  struct lru_list list;
};

struct dcache {
  uint32_t n_layers;
  struct dcache_layer *layers;
  uint32_t *layer_cls;
  uint64_t *map_base;
  int32_t *where; // [(layer, expert)] slot or -1
  struct dslot *slots;
  uint32_t n_slots;
  struct dclass *cls;
  uint32_t n_cls;
  struct ferry_backend *be;
  struct ferry_stream *copy;
  struct budget *budget;
  uint64_t capacity;
  bool charged;
  struct dcache_stats st;
};

static uint64_t part_off(const struct dcache_layer *L, int p) {
  uint64_t off = 0;
  for (int q = 0; q < p; q++) off += ferry_align_up(L->len[q], DC_ALIGN);
  return off;
}
static uint64_t slot_bytes_of(const struct dcache_layer *L) { return part_off(L, 3); }

// ---- LRU ----
static void lru_remove(struct dcache *c, struct dslot *s) {
  lru_unlink(&c->cls[s->cls].list, &c->slots[0].link, sizeof *c->slots, (int32_t)(s - c->slots));
}
static void lru_push_mru(struct dcache *c, struct dslot *s) {
  FERRY_ASSERT(!s->link.in && !s->pins);
  lru_insert_at(&c->cls[s->cls].list, &c->slots[0].link, sizeof *c->slots, (int32_t)(s - c->slots),
                false);
}

// Classes: one per distinct slot size, in order of first appearance. Returns the count;
// cls_of[l] receives layer l's class (UINT32_MAX for layers without experts).
static uint32_t make_classes(const struct dcache_layer *layers, uint32_t n_layers, uint64_t *sizes,
                             uint32_t *counts, uint32_t *cls_of) {
  uint32_t n = 0;
  for (uint32_t l = 0; l < n_layers; l++) {
    cls_of[l] = UINT32_MAX;
    if (!layers[l].n_experts) continue;
    const uint64_t b = slot_bytes_of(&layers[l]);
    uint32_t k = 0;
    while (k < n && sizes[k] != b) k++;
    if (k == n) sizes[n] = b, counts[n++] = 0;
    counts[k]++;
    cls_of[l] = k;
  }
  return n;
}

uint64_t dcache_min_bytes(const struct dcache_layer *layers, uint32_t n_layers,
                          uint32_t min_slots) {
  if (!min_slots) min_slots = 1;
  uint64_t *sizes = calloc(n_layers + 1, sizeof *sizes);
  uint32_t *counts = calloc(n_layers + 1, sizeof *counts), *cls_of = calloc(n_layers + 1, 4);
  uint64_t need = 0;
  if (sizes && counts && cls_of) {
    const uint32_t n = make_classes(layers, n_layers, sizes, counts, cls_of);
    uint32_t with = 0;
    for (uint32_t k = 0; k < n; k++) with += counts[k];
    for (uint32_t k = 0; k < n; k++) {
      // class k gets bytes * counts[k] / with; it needs min_slots slots
      const uint64_t b = (min_slots * sizes[k] * with + counts[k] - 1) / counts[k];
      if (b > need) need = b;
    }
  }
  free(sizes), free(counts), free(cls_of);
  return need;
}

int dcache_create(struct dcache **out, const struct dcache_params *p) {
  *out = NULL;
  struct dcache *c = calloc(1, sizeof *c);
  if (!c) return ferry_fail(-ENOMEM, "out of memory");
  c->n_layers = p->n_layers;
  c->be = p->be;
  c->copy = p->copy;
  c->budget = p->budget;
  const uint32_t min_slots = p->min_slots ? p->min_slots : 1;
  c->layers = malloc((p->n_layers + 1) * sizeof *c->layers);
  c->layer_cls = calloc(p->n_layers + 1, sizeof *c->layer_cls);
  c->map_base = calloc(p->n_layers + 1, sizeof *c->map_base);
  uint64_t *sizes = calloc(p->n_layers + 1, sizeof *sizes);
  uint32_t *counts = calloc(p->n_layers + 1, sizeof *counts);
  int rc = 0;
  if (!c->layers || !c->layer_cls || !c->map_base || !sizes || !counts) {
    rc = ferry_fail(-ENOMEM, "out of memory");
    goto fail;
  }
  memcpy(c->layers, p->layers, p->n_layers * sizeof *c->layers);
  c->n_cls = make_classes(c->layers, c->n_layers, sizes, counts, c->layer_cls);
  uint32_t with = 0;
  uint64_t n_map = 0;
  for (uint32_t k = 0; k < c->n_cls; k++) with += counts[k];
  for (uint32_t l = 0; l < c->n_layers; l++) {
    c->map_base[l] = n_map;
    n_map += c->layers[l].n_experts;
  }
  c->cls = calloc(c->n_cls ? c->n_cls : 1, sizeof *c->cls);
  c->where = malloc((n_map ? n_map : 1) * sizeof *c->where);
  if (!c->cls || !c->where) {
    rc = ferry_fail(-ENOMEM, "out of memory");
    goto fail;
  }
  for (uint64_t i = 0; i < n_map; i++) c->where[i] = -1;
  for (uint32_t k = 0; k < c->n_cls; k++) {
    struct dclass *K = &c->cls[k];
    K->slot_bytes = sizes[k];
    K->n_layers = counts[k];
    uint64_t n = p->bytes / with * counts[k] / K->slot_bytes;
    uint64_t experts = 0; // never more slots than the class's experts
    for (uint32_t l = 0; l < c->n_layers; l++)
      if (c->layer_cls[l] == k) experts += c->layers[l].n_experts;
    if (n > experts) n = experts;
    if (n < min_slots) {
      const uint64_t need = dcache_min_bytes(c->layers, c->n_layers, min_slots);
      char b1[32], b2[32];
      ferry_format_size(p->bytes, b1, sizeof b1);
      ferry_format_size(need, b2, sizeof b2);
      rc = ferry_fail(-ENOMEM,
                      "VRAM expert tier: %s gives only %llu slot(s) of %llu bytes, a layer "
                      "computes up to %u experts at once; it needs at least %s (%llu bytes)",
                      b1, (unsigned long long)n, (unsigned long long)K->slot_bytes, min_slots, b2,
                      (unsigned long long)need);
      goto fail;
    }
    K->first = c->n_slots;
    K->n_slots = (uint32_t)n;
    lru_list_init(&K->list);
    c->n_slots += (uint32_t)n;
    c->capacity += n * K->slot_bytes;
  }
  c->slots = calloc(c->n_slots ? c->n_slots : 1, sizeof *c->slots);
  if (!c->slots) {
    rc = ferry_fail(-ENOMEM, "out of memory");
    goto fail;
  }
  if (c->budget && c->capacity) {
    if ((rc = budget_charge(c->budget, BUDGET_DEVICE, BUDGET_EXPERTS, c->capacity))) goto fail;
    c->charged = true;
  }
  for (uint32_t k = 0; k < c->n_cls; k++) {
    struct dclass *K = &c->cls[k];
    rc = c->be->ops.mem_alloc(c->be, (void **)&K->mem, (uint64_t)K->n_slots * K->slot_bytes);
    if (rc) {
      ferry_fail_ctx(rc, "VRAM expert tier");
      goto fail;
    }
    for (uint32_t i = 0; i < K->n_slots; i++) {
      struct dslot *s = &c->slots[K->first + i];
      s->d = K->mem + (uint64_t)i * K->slot_bytes;
      s->cls = k;
      s->layer = s->expert = -1;
      lru_link_init(&s->link);
      if ((rc = c->be->ops.event_create(c->be, &s->filled))) goto fail;
      lru_push_mru(c, s);
    }
  }
  c->st.capacity_bytes = c->capacity;
  c->st.capacity_slots = c->n_slots;
  c->st.n_classes = c->n_cls;
  free(sizes), free(counts);
  *out = c;
  return 0;
fail:
  free(sizes), free(counts);
  dcache_destroy(c);
  return rc;
}

void dcache_destroy(struct dcache *c) {
  if (!c) return;
  if (c->be && c->copy) c->be->ops.stream_sync(c->be, c->copy);
  for (uint32_t i = 0; c->slots && i < c->n_slots; i++)
    if (c->slots[i].filled) c->be->ops.event_destroy(c->be, c->slots[i].filled);
  for (uint32_t k = 0; c->cls && k < c->n_cls; k++)
    if (c->cls[k].mem) c->be->ops.mem_free(c->be, c->cls[k].mem);
  if (c->charged) budget_release(c->budget, BUDGET_DEVICE, BUDGET_EXPERTS, c->capacity);
  free(c->slots), free(c->cls), free(c->where), free(c->map_base), free(c->layer_cls);
  free(c->layers);
  free(c);
}

static int32_t *where_of(struct dcache *c, uint32_t layer, int32_t e) {
  return &c->where[c->map_base[layer] + (uint64_t)e];
}

static void fill_ref(struct dcache *c, struct dslot *s, struct dcache_ref *out) {
  const struct dcache_layer *L = &c->layers[s->layer];
  out->slot = (int32_t)(s - c->slots);
  for (int p = 0; p < 3; p++) out->dev[p] = s->d + part_off(L, p);
  out->ready = s->filled;
}

bool dcache_lookup(struct dcache *c, uint32_t layer, int32_t expert, struct dcache_ref *out) {
  FERRY_ASSERT(layer < c->n_layers && expert >= 0 && (uint32_t)expert < c->layers[layer].n_experts);
  const int32_t id = *where_of(c, layer, expert);
  if (id < 0) {
    c->st.misses++;
    return false;
  }
  struct dslot *s = &c->slots[id];
  lru_remove(c, s);
  s->pins++;
  c->st.hits++;
  fill_ref(c, s, out);
  return true;
}

int dcache_fill(struct dcache *c, uint32_t layer, int32_t expert, const void *const host[3],
                struct dcache_ref *out) {
  FERRY_ASSERT(layer < c->n_layers && c->layer_cls[layer] != UINT32_MAX);
  FERRY_ASSERT(*where_of(c, layer, expert) < 0);
  struct dclass *K = &c->cls[c->layer_cls[layer]];
  if (K->list.lru < 0)
    return ferry_fail(-ENOSPC, "VRAM expert tier: all %u slots of layer %u's size are pinned",
                      K->n_slots, layer);
  struct dslot *s = &c->slots[K->list.lru];
  lru_remove(c, s);
  if (s->layer >= 0) {
    *where_of(c, (uint32_t)s->layer, s->expert) = -1;
    c->st.evictions++;
  }
  s->layer = (int32_t)layer;
  s->expert = expert;
  *where_of(c, layer, expert) = (int32_t)(s - c->slots);
  s->pins = 1;
  struct ferry_backend *be = c->be;
  const struct dcache_layer *L = &c->layers[layer];
  int rc = 0;
  if (s->used) rc = be->ops.stream_wait_event(be, c->copy, s->used);
  for (int p = 0; p < 3 && !rc; p++)
    rc = be->ops.copy_h2d(be, s->d + part_off(L, p), host[p], L->len[p], c->copy);
  if (!rc) rc = be->ops.event_record(be, s->filled, c->copy);
  if (rc) { // the slot's contents are unknown: leave it empty
    *where_of(c, layer, expert) = -1;
    s->layer = s->expert = -1;
    s->pins = 0;
    lru_push_mru(c, s);
    return rc;
  }
  s->used = NULL;
  c->st.fills++;
  c->st.h2d_bytes += L->len[0] + L->len[1] + L->len[2];
  fill_ref(c, s, out);
  return 0;
}

void dcache_release(struct dcache *c, struct dcache_ref *r, struct ferry_event *used) {
  struct dslot *s = &c->slots[r->slot];
  FERRY_ASSERT(s->pins > 0);
  if (used) s->used = used;
  if (--s->pins == 0) lru_push_mru(c, s);
}

bool dcache_contains(const struct dcache *c, uint32_t layer, int32_t expert) {
  return c->where[c->map_base[layer] + (uint64_t)expert] >= 0;
}

void dcache_stats(const struct dcache *c, struct dcache_stats *out) { *out = c->st; }

uint64_t dcache_slot_bytes(const struct dcache_layer *l) { return slot_bytes_of(l); }

uint32_t dcache_min_class_slots(const struct dcache *c) {
  uint32_t m = UINT32_MAX;
  for (uint32_t k = 0; k < c->n_cls; k++)
    if (c->cls[k].n_slots < m) m = c->cls[k].n_slots;
  return c->n_cls ? m : 0;
}
