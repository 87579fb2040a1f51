// offload/ecache.c: the host tier of the expert cache (see ecache.h). Data structures:
// a map (layer, expert) -> slot, one slab and one LRU list per size class, and per slot
// its three io requests. A slot is EMPTY, LOADING (reads queued or in flight), READY or
// FAILED; only unpinned EMPTY/READY slots sit in the LRU list (an EMPTY one may still
// have reads of a dropped prefetch in flight: take_victim waits for them before reuse).
// Prefetched slots ("spec") sit outside the list, unpinned, until the next acquire
// claims or drops them; their reads may be deferred (not yet handed to the reader)
// while demand reads are outstanding.
//
// Simulation mode (no reader): no memory, no reads; a load lands at once. Every
// decision (hits, misses, victims, prefetch claims and drops, the cap) depends only on
// the sequence of calls, never on when reads complete, so a simulation replays a run's
// counters exactly (ferry cachesim).
#include "offload/ecache.h"

#include <errno.h>
#include <string.h>

#include "base/base.h"
#include "offload/lru.h"

enum slot_state { SLOT_EMPTY = 0, SLOT_LOADING, SLOT_READY, SLOT_FAILED };

struct slot {
  uint8_t *h;    // host memory (slot_bytes of its class)
  int buf_index; // registered reader buffer holding the slot, or -1
  uint32_t cls;
  int32_t layer, expert; // -1 when empty
  uint32_t pins;
  uint8_t state;
  bool spec;     // loaded by prefetch, not yet claimed by an acquire (in c->spec)
  bool deferred; // spec whose reads are not handed to the reader yet
  struct lru_link link;
  struct io_req req[ECACHE_N_PARTS];
};

struct eclass {
  uint64_t slot_bytes;
  uint32_t first, n_slots, n_layers;
  uint8_t *slab;
  struct lru_list list;
};

struct ecache {
  uint32_t n_layers;
  struct ecache_layer *layers;
  uint64_t (*poff)[ECACHE_N_PARTS]; // [layer][part] offset of the part's span in a slot
  uint32_t *layer_cls;
  uint64_t *map_base; // [layer] first index in where[]
  int32_t *where;     // [(layer, expert)] slot or -1
  struct slot *slots;
  uint32_t n_slots;
  struct eclass *cls;
  uint32_t n_cls;
  struct ecache_counters *lc; // per layer
  struct ecache_counters tot;
  uint64_t capacity_bytes;
  struct io_reader *reader; // NULL: simulation mode
  struct budget *budget;
  bool registered, charged;
  int32_t *spec; // [n_slots] slots holding unclaimed prefetches
  uint32_t n_spec, n_deferred;
  uint32_t n_demand_loading; // LOADING slots that are not spec
  double prefetch_cap;       // < 0: no cap
  uint64_t wasted_bytes;     // slot bytes of dropped (wrong) prefetches
  uint64_t needed_bytes;     // slot bytes of demand misses and claimed prefetches
  uint32_t min_slots;
  void *(*host_alloc)(uint64_t, void *);
  void (*host_free)(void *, uint64_t, void *);
  void *alloc_ctx;
};

static const char *const k_part[ECACHE_N_PARTS] = {"gate", "up", "down"};

// ---- LRU list ----
static void lru_remove(struct ecache *c, struct slot *s) {
  lru_unlink(&c->cls[s->cls].list, &c->slots[0].link, sizeof *c->slots, (int32_t)(s - c->slots));
}

// at_lru_end: empty slots go to the victim end so they are reused before any data.
static void lru_insert(struct ecache *c, struct slot *s, bool at_lru_end) {
  FERRY_ASSERT(!s->link.in && !s->pins && (s->state == SLOT_EMPTY || s->state == SLOT_READY));
  lru_insert_at(&c->cls[s->cls].list, &c->slots[0].link, sizeof *c->slots, (int32_t)(s - c->slots),
                at_lru_end);
}

// ---- slot state ----
static int32_t *where_of(struct ecache *c, uint32_t layer, int32_t e) {
  return &c->where[c->map_base[layer] + (uint64_t)e];
}

static void slot_unmap(struct ecache *c, struct slot *s) {
  if (s->layer >= 0) {
    int32_t *w = where_of(c, (uint32_t)s->layer, s->expert);
    FERRY_ASSERT(*w == (int32_t)(s - c->slots));
    *w = -1;
  }
  s->layer = s->expert = -1;
  s->state = SLOT_EMPTY;
}

// LOADING -> READY/FAILED once all three reads are done (reaped by the reader).
static void slot_poll(struct ecache *c, struct slot *s) {
  if (s->state != SLOT_LOADING) return;
  bool failed = false;
  for (int p = 0; p < ECACHE_N_PARTS; p++) {
    if (s->req[p].state != IO_REQ_DONE) return;
    failed |= s->req[p].err != 0;
  }
  s->state = failed ? SLOT_FAILED : SLOT_READY;
  if (!s->spec) c->n_demand_loading--;
  if (failed) {
    c->lc[s->layer].errors++;
    c->tot.errors++;
  }
  if (!s->pins && !s->spec) { // an unpinned load finished: it becomes reusable
    if (failed) slot_unmap(c, s);
    lru_insert(c, s, failed);
  }
}

static bool slot_busy(const struct slot *s) {
  for (int p = 0; p < ECACHE_N_PARTS; p++)
    if (s->req[p].state == IO_REQ_QUEUED || s->req[p].state == IO_REQ_INFLIGHT) return true;
  return false;
}

// Waits for every read of s (ignoring their errors; slot_poll records them).
static void slot_drain(struct ecache *c, struct slot *s) {
  for (int p = 0; p < ECACHE_N_PARTS; p++)
    if (s->req[p].state == IO_REQ_QUEUED || s->req[p].state == IO_REQ_INFLIGHT)
      io_read_wait(c->reader, &s->req[p]);
  slot_poll(c, s);
}

static uint64_t slot_bytes_of(const struct ecache *c, const struct slot *s) {
  return c->cls[s->cls].slot_bytes;
}

static void slot_pin(struct ecache *c, struct slot *s) {
  if (!s->pins) lru_remove(c, s);
  s->pins++;
}

static void fill_ref(struct ecache *c, struct slot *s, struct ecache_ref *r) {
  r->state = ECACHE_READY;
  r->tier = ECACHE_HOST;
  for (int p = 0; p < ECACHE_N_PARTS; p++)
    r->data[p] = s->h ? s->h + c->poff[s->layer][p] + s->req[p].data_off : NULL;
}

// Hands the three reads of s (already mapped to (layer, e)) to the reader. On failure the
// reads already queued are waited for and the slot is left LOADING with no reads: the
// caller unmaps or fails it.
static int slot_queue(struct ecache *c, struct slot *s) {
  const struct ecache_layer *L = &c->layers[s->layer];
  for (int p = 0; p < ECACHE_N_PARTS; p++) {
    uint64_t off = L->part[p].base + (uint64_t)s->expert * L->part[p].stride;
    io_req_init(&s->req[p], s->h + c->poff[s->layer][p], c->registered ? s->buf_index : -1, off,
                L->part[p].len);
    int rc = io_read_queue(c->reader, &s->req[p]);
    if (rc < 0) {
      for (int q = 0; q < p; q++) io_read_wait(c->reader, &s->req[q]);
      return ferry_fail_ctx(rc, "expert cache: layer %d expert %d %s slice", s->layer, s->expert,
                            k_part[p]);
    }
  }
  return 0;
}

// Maps (layer, e) to s and queues its three reads (a demand load), or with `spec` marks it
// a prefetch whose reads wait in the deferred set. In simulation mode the load lands at
// once. The layout was validated at create, so this fails only on a reader-level problem.
static int slot_load(struct ecache *c, struct slot *s, uint32_t layer, int32_t e, bool spec) {
  s->layer = (int32_t)layer;
  s->expert = e;
  *where_of(c, layer, e) = (int32_t)(s - c->slots);
  s->spec = spec;
  if (!c->reader) {
    s->state = SLOT_READY;
    return 0;
  }
  s->state = SLOT_LOADING;
  if (spec) {
    s->deferred = true;
    c->n_deferred++;
    return 0;
  }
  c->n_demand_loading++;
  int rc = slot_queue(c, s);
  if (rc) {
    c->n_demand_loading--;
    slot_unmap(c, s);
  }
  return rc;
}

// Reusable slots of a class without blocking, plus how many more could be had by
// waiting for unpinned loads. Finished unpinned loads are moved into the LRU on the way.
static uint32_t class_available(struct ecache *c, uint32_t cls, uint32_t *loading) {
  struct eclass *k = &c->cls[cls];
  *loading = 0;
  for (uint32_t i = k->first; i < k->first + k->n_slots; i++) {
    struct slot *s = &c->slots[i];
    if (s->state == SLOT_LOADING && !s->pins && !s->spec) {
      slot_poll(c, s);
      if (s->state == SLOT_LOADING) (*loading)++;
    }
  }
  return k->list.count;
}

// Takes the least recently used reusable slot of a class, evicting its expert. With
// may_wait, waits for an unpinned load when the list is empty. Returns NULL if none.
static struct slot *take_victim(struct ecache *c, uint32_t cls, bool may_wait) {
  struct eclass *k = &c->cls[cls];
  if (k->list.lru < 0 && may_wait) {
    for (uint32_t i = k->first; i < k->first + k->n_slots && k->list.lru < 0; i++) {
      struct slot *s = &c->slots[i];
      if (s->state == SLOT_LOADING && !s->pins && !s->spec) slot_drain(c, s);
    }
  }
  if (k->list.lru < 0) return NULL;
  struct slot *s = &c->slots[k->list.lru];
  if (c->reader && slot_busy(s)) // a dropped prefetch still reading into it
    for (int p = 0; p < ECACHE_N_PARTS; p++)
      if (s->req[p].state == IO_REQ_QUEUED || s->req[p].state == IO_REQ_INFLIGHT)
        io_read_wait(c->reader, &s->req[p]);
  lru_remove(c, s);
  if (s->state == SLOT_READY) {
    c->lc[s->layer].evictions++;
    c->tot.evictions++;
  }
  slot_unmap(c, s);
  return s;
}

// ---- create / destroy ----
static void *default_alloc(uint64_t bytes, void *ctx) {
  (void)ctx;
  return ferry_alloc_aligned(IO_ALIGN, bytes);
}
static void default_free(void *p, uint64_t bytes, void *ctx) {
  (void)bytes, (void)ctx;
  ferry_free_aligned(p);
}

static int validate_layout(const struct ecache_params *p, uint64_t file_size) {
  for (uint32_t l = 0; l < p->n_layers; l++) {
    const struct ecache_layer *L = &p->layers[l];
    if (!L->n_experts) continue;
    if (L->n_experts > INT32_MAX)
      return ferry_fail(-EINVAL, "expert cache: layer %u has %u experts", l, L->n_experts);
    for (int q = 0; q < ECACHE_N_PARTS; q++) {
      const struct ecache_slice *s = &L->part[q];
      uint64_t last, end;
      if (!s->len || ferry_mul_u64(L->n_experts - 1, s->stride, &last) ||
          ferry_add_u64(last, s->base, &last) || ferry_add_u64(last, s->len, &end) ||
          end > file_size)
        return ferry_fail(-EINVAL,
                          "expert cache: layer %u %s slices (base %llu, stride %llu, "
                          "length %llu, %u experts) do not fit in the file (%llu bytes)",
                          l, k_part[q], (unsigned long long)s->base, (unsigned long long)s->stride,
                          (unsigned long long)s->len, L->n_experts, (unsigned long long)file_size);
    }
  }
  return 0;
}

// Slot bytes of one layer: the three slices' aligned supersets (worst misalignment when
// the expert stride is not block-aligned).
uint64_t ecache_layer_slot_bytes(const struct ecache_layer *L) {
  uint64_t at = 0;
  for (int q = 0; q < ECACHE_N_PARTS; q++) {
    const struct ecache_slice *s = &L->part[q];
    at += (s->stride % IO_ALIGN == 0 || L->n_experts == 1) ? io_span_bytes(s->base, s->len)
                                                           : io_span_max(s->len);
  }
  return at;
}

uint64_t ecache_min_host_bytes(const struct ecache_layer *layers, uint32_t n_layers,
                               uint32_t min_slots) {
  // Classes are layers of equal slot bytes; class j gets floor(cap * L_j / denom) slots
  // with denom = sum_j L_j * slot_j, so every class has min_slots from
  // cap = max_j ceil(min_slots * denom / L_j) on.
  uint64_t denom = 0, need = 0;
  if (!min_slots) min_slots = 1;
  for (uint32_t l = 0; l < n_layers; l++)
    if (layers[l].n_experts) denom += ecache_layer_slot_bytes(&layers[l]);
  for (uint32_t l = 0; l < n_layers; l++) {
    if (!layers[l].n_experts) continue;
    uint64_t slot = ecache_layer_slot_bytes(&layers[l]), lj = 0;
    for (uint32_t m = 0; m < n_layers; m++)
      lj += layers[m].n_experts && ecache_layer_slot_bytes(&layers[m]) == slot;
    uint64_t nj = ((uint64_t)min_slots * denom + lj - 1) / lj;
    if (nj > need) need = nj;
  }
  return need;
}

int ecache_create(struct ecache **out, const struct ecache_params *p) {
  *out = NULL;
  if (!p || !p->n_layers || !p->layers || (!p->reader && !p->simulate))
    return ferry_fail(-EINVAL, "expert cache: missing layers or reader");
  int rc = validate_layout(p, p->reader ? io_reader_file_size(p->reader) : UINT64_MAX);
  if (rc) return rc;
  struct ecache *c = calloc(1, sizeof *c);
  if (!c) return ferry_fail(-ENOMEM, "out of memory");
  c->n_layers = p->n_layers;
  c->reader = p->simulate ? NULL : p->reader;
  c->prefetch_cap = p->prefetch_cap == 0 ? ECACHE_PREFETCH_CAP : p->prefetch_cap;
  c->budget = p->budget;
  c->min_slots = p->min_slots ? p->min_slots : 1;
  c->host_alloc = p->host_alloc ? p->host_alloc : default_alloc;
  c->host_free = p->host_alloc ? p->host_free : default_free;
  c->alloc_ctx = p->alloc_ctx;
  c->layers = malloc(p->n_layers * sizeof *c->layers);
  c->poff = calloc(p->n_layers, sizeof *c->poff);
  c->layer_cls = calloc(p->n_layers, sizeof *c->layer_cls);
  c->map_base = calloc(p->n_layers, sizeof *c->map_base);
  c->lc = calloc(p->n_layers, sizeof *c->lc);
  c->cls = calloc(p->n_layers, sizeof *c->cls);
  uint64_t *size = calloc(p->n_layers, sizeof *size);
  rc = -ENOMEM;
  if (!c->layers || !c->poff || !c->layer_cls || !c->map_base || !c->lc || !c->cls || !size) {
    ferry_fail(-ENOMEM, "out of memory");
    goto fail;
  }
  memcpy(c->layers, p->layers, p->n_layers * sizeof *c->layers);

  // Slot layout per layer and size classes.
  uint64_t n_map = 0, total_moe_layers = 0;
  for (uint32_t l = 0; l < p->n_layers; l++) {
    const struct ecache_layer *L = &c->layers[l];
    c->map_base[l] = n_map;
    n_map += L->n_experts;
    c->layer_cls[l] = UINT32_MAX;
    if (!L->n_experts) continue;
    total_moe_layers++;
    uint64_t at = 0;
    for (int q = 0; q < ECACHE_N_PARTS; q++) {
      const struct ecache_slice *s = &L->part[q];
      c->poff[l][q] = at;
      // Equal misalignment for every expert when the stride is block-aligned (GGUF
      // experts, MODEL_SPEC 1.6); otherwise size for the worst misalignment.
      at += (s->stride % IO_ALIGN == 0 || L->n_experts == 1) ? io_span_bytes(s->base, s->len)
                                                             : io_span_max(s->len);
    }
    FERRY_ASSERT(at == ecache_layer_slot_bytes(L));
    size[l] = at;
    uint32_t k = 0;
    while (k < c->n_cls && c->cls[k].slot_bytes != at) k++;
    if (k == c->n_cls) c->cls[c->n_cls++].slot_bytes = at;
    c->cls[k].n_layers++;
    c->layer_cls[l] = k;
  }
  if (!total_moe_layers) {
    rc = ferry_fail(-EINVAL, "expert cache: no layer has routed experts");
    goto fail;
  }

  // Capacity split: about the same number of slots for every layer.
  uint64_t denom = 0, got = 0;
  for (uint32_t k = 0; k < c->n_cls; k++) denom += c->cls[k].n_layers * c->cls[k].slot_bytes;
  for (uint32_t k = 0; k < c->n_cls; k++) {
    struct eclass *K = &c->cls[k];
    uint64_t n = p->host_bytes ? (uint64_t)((unsigned __int128)p->host_bytes * K->n_layers / denom)
                               : (uint64_t)p->host_slots * K->n_layers / total_moe_layers;
    if (n > INT32_MAX / 2) n = INT32_MAX / 2;
    K->n_slots = (uint32_t)n;
    got += n;
  }
  if (!p->host_bytes) // hand out the rounding remainder
    for (uint32_t k = 0; got < p->host_slots; k = (k + 1) % c->n_cls, got++) c->cls[k].n_slots++;
  for (uint32_t k = 0; k < c->n_cls; k++) {
    struct eclass *K = &c->cls[k];
    if (K->n_slots < c->min_slots) {
      // The proportional split gives class j floor(cap * L_j / denom) slots, so every class
      // gets min_slots once the capacity reaches the largest min_slots * denom / L_j.
      uint64_t need = 0;
      for (uint32_t j = 0; j < c->n_cls; j++) {
        uint64_t nj =
            p->host_bytes
                ? ((uint64_t)c->min_slots * denom + c->cls[j].n_layers - 1) / c->cls[j].n_layers
                : ((uint64_t)c->min_slots * total_moe_layers + c->cls[j].n_layers - 1) /
                      c->cls[j].n_layers;
        if (nj > need) need = nj;
      }
      char have[32], want[64];
      if (p->host_bytes) {
        ferry_format_size(p->host_bytes, have, sizeof have);
        ferry_format_size(need, want, sizeof want);
      } else {
        snprintf(have, sizeof have, "%u slots", p->host_slots);
        snprintf(want, sizeof want, "%llu slots", (unsigned long long)need);
      }
      rc = ferry_fail(-ENOSPC,
                      "expert cache: host capacity %s gives only %u slot(s) of %llu "
                      "bytes to %u layer(s), but one layer pins up to %u experts at once; the "
                      "minimum capacity is %s; raise --ram",
                      have, K->n_slots, (unsigned long long)K->slot_bytes, K->n_layers,
                      c->min_slots, want);
      goto fail;
    }
    K->first = c->n_slots;
    c->n_slots += K->n_slots;
    c->capacity_bytes += (uint64_t)K->n_slots * K->slot_bytes;
  }

  if (c->budget) {
    rc = budget_charge(c->budget, BUDGET_HOST, BUDGET_EXPERTS, c->capacity_bytes);
    if (rc) {
      ferry_fail_ctx(rc, "expert cache host tier (%u slots)", c->n_slots);
      goto fail;
    }
    c->charged = true;
  }
  c->where = malloc((n_map ? n_map : 1) * sizeof *c->where);
  c->slots = calloc(c->n_slots, sizeof *c->slots);
  c->spec = calloc(c->n_slots, sizeof *c->spec);
  if (!c->where || !c->slots || !c->spec) {
    rc = ferry_fail(-ENOMEM, "out of memory");
    goto fail;
  }
  for (uint64_t i = 0; i < n_map; i++) c->where[i] = -1;
  if (!c->reader) { // simulation: slots without memory
    for (uint32_t k = 0; k < c->n_cls; k++) {
      struct eclass *K = &c->cls[k];
      lru_list_init(&K->list);
      for (uint32_t i = 0; i < K->n_slots; i++) {
        struct slot *s = &c->slots[K->first + i];
        s->cls = k, s->layer = s->expert = -1, lru_link_init(&s->link), s->buf_index = -1;
        lru_insert(c, s, true);
      }
    }
    free(size);
    *out = c;
    return 0;
  }

  // Slabs, slots and their registration (one reader buffer per <= 1 GiB of slots).
  uint32_t n_iov = 0;
  for (uint32_t k = 0; k < c->n_cls; k++) {
    struct eclass *K = &c->cls[k];
    uint64_t per = (1ull << 30) / K->slot_bytes;
    if (!per) per = 1;
    n_iov += (uint32_t)((K->n_slots + per - 1) / per);
  }
  struct iovec *iov = calloc(n_iov ? n_iov : 1, sizeof *iov);
  if (!iov) {
    rc = ferry_fail(-ENOMEM, "out of memory");
    goto fail;
  }
  n_iov = 0;
  for (uint32_t k = 0; k < c->n_cls; k++) {
    struct eclass *K = &c->cls[k];
    lru_list_init(&K->list);
    uint64_t bytes = (uint64_t)K->n_slots * K->slot_bytes;
    K->slab = c->host_alloc(bytes, c->alloc_ctx);
    if (!K->slab || (uintptr_t)K->slab % IO_ALIGN) {
      char b[32];
      ferry_format_size(bytes, b, sizeof b);
      if (K->slab) c->host_free(K->slab, bytes, c->alloc_ctx);
      K->slab = NULL;
      free(iov);
      rc = ferry_fail(-ENOMEM, "expert cache: cannot allocate %s of 4096-aligned host slots", b);
      goto fail;
    }
    uint64_t per = (1ull << 30) / K->slot_bytes;
    if (!per) per = 1;
    for (uint32_t i = 0; i < K->n_slots; i++) {
      struct slot *s = &c->slots[K->first + i];
      s->h = K->slab + (uint64_t)i * K->slot_bytes;
      s->cls = k;
      s->layer = s->expert = -1;
      lru_link_init(&s->link);
      if (i % per == 0) {
        uint64_t n = K->n_slots - i < per ? K->n_slots - i : per;
        iov[n_iov++] = (struct iovec){s->h, n * K->slot_bytes};
      }
      s->buf_index = (int)(n_iov - 1);
      lru_insert(c, s, true);
    }
  }
  rc = !p->register_buffers ? -EBUSY : n_iov ? io_reader_register(c->reader, iov, n_iov) : -EINVAL;
  free(iov);
  if (rc == 0) {
    c->registered = true;
  } else if (rc == -EBUSY) { // not asked for, or the reader serves someone else's buffers
    log_debug("expert cache: reader buffers already registered; using plain reads");
    ferry_clear_error();
  } else {
    goto fail;
  }
  free(size);
  *out = c;
  return 0;
fail:
  free(size);
  ecache_destroy(c);
  return rc;
}

void ecache_destroy(struct ecache *c) {
  if (!c) return;
  if (c->slots && c->reader) {
    for (uint32_t i = 0; i < c->n_slots; i++) {
      struct slot *s = &c->slots[i];
      for (int p = 0; p < ECACHE_N_PARTS; p++)
        if (s->req[p].state == IO_REQ_QUEUED || s->req[p].state == IO_REQ_INFLIGHT)
          io_read_wait(c->reader, &s->req[p]);
    }
  }
  if (c->registered) io_reader_unregister(c->reader);
  if (c->cls)
    for (uint32_t k = 0; k < c->n_cls; k++)
      if (c->cls[k].slab)
        c->host_free(c->cls[k].slab, (uint64_t)c->cls[k].n_slots * c->cls[k].slot_bytes,
                     c->alloc_ctx);
  if (c->charged) budget_release(c->budget, BUDGET_HOST, BUDGET_EXPERTS, c->capacity_bytes);
  free(c->slots);
  free(c->spec);
  free(c->where);
  free(c->cls);
  free(c->lc);
  free(c->map_base);
  free(c->layer_cls);
  free(c->poff);
  free(c->layers);
  free(c);
}

// ---- acquire / wait / release / prefetch ----
static int check_experts(const struct ecache *c, uint32_t layer, uint32_t n,
                         const int32_t *experts) {
  if (layer >= c->n_layers || !c->layers[layer].n_experts)
    return ferry_fail(-EINVAL, "expert cache: layer %u has no routed experts (%u layers)", layer,
                      c->n_layers);
  for (uint32_t i = 0; i < n; i++)
    if (experts[i] < 0 || (uint32_t)experts[i] >= c->layers[layer].n_experts)
      return ferry_fail(-EINVAL,
                        "expert cache: expert %d of layer %u is out of range (%u "
                        "experts)",
                        experts[i], layer, c->layers[layer].n_experts);
  return 0;
}

// Unpins a slot; when the last pin goes it becomes reusable (or, still loading, waits in
// LOADING until it lands).
static void slot_unpin(struct ecache *c, struct slot *s) {
  FERRY_ASSERT(s->pins > 0);
  if (--s->pins) return;
  slot_poll(c, s); // a finished load that nobody waited for
  if (s->state == SLOT_READY) {
    if (!s->link.in) lru_insert(c, s, false);
  } else if (s->state == SLOT_FAILED) {
    slot_unmap(c, s);
    lru_insert(c, s, true);
  }
}

// Hands the deferred prefetch reads to the reader once no demand read is outstanding
// (prefetch reads have a lower priority than demand misses).
static void pump(struct ecache *c) {
  if (!c->reader || !c->n_deferred || c->n_demand_loading) return;
  for (uint32_t i = 0; i < c->n_spec; i++) {
    struct slot *s = &c->slots[c->spec[i]];
    if (!s->deferred) continue;
    s->deferred = false;
    c->n_deferred--;
    if (slot_queue(c, s)) { // a hint: the slot is dropped when the next acquire resolves it
      ferry_clear_error();
      s->state = SLOT_FAILED;
      continue;
    }
    c->tot.pf_bytes += slot_bytes_of(c, s);
    c->lc[s->layer].pf_bytes += slot_bytes_of(c, s);
  }
  FERRY_ASSERT(c->n_deferred == 0);
  io_reader_submit(c->reader);
}

static bool in_list(int32_t e, uint32_t n, const int32_t *experts) {
  for (uint32_t i = 0; i < n; i++)
    if (experts[i] == e) return true;
  return false;
}

// Every acquire first resolves the outstanding prefetches (made for this acquire): those
// it asks for are claimed (they count as hits; deferred reads become demand reads), the
// others are dropped as wrong guesses: unmapped, their deferred reads never issued
// (cancelled), their slots back at the victim end of the LRU list. Only the call sequence
// decides which, so simulation and engine agree.
static void resolve_spec(struct ecache *c, uint32_t layer, uint32_t n, const int32_t *experts) {
  bool queued = false;
  for (uint32_t i = 0; i < c->n_spec; i++) {
    struct slot *s = &c->slots[c->spec[i]];
    FERRY_ASSERT(s->spec && !s->pins && !s->link.in);
    uint32_t L = (uint32_t)s->layer;
    uint64_t b = slot_bytes_of(c, s);
    s->spec = false;
    if (L == layer && s->state != SLOT_FAILED && in_list(s->expert, n, experts)) {
      c->lc[L].pf_used++, c->tot.pf_used++;
      c->needed_bytes += b;
      if (s->state == SLOT_LOADING) c->n_demand_loading++;
      if (s->deferred) {
        s->deferred = false;
        c->n_deferred--;
        if (slot_queue(c, s)) {
          ferry_clear_error(); // the acquire below sees it FAILED and reads it again
          c->n_demand_loading--;
          s->state = SLOT_FAILED;
          slot_unmap(c, s);
          lru_insert(c, s, true);
          continue;
        }
        c->tot.pf_bytes += b, c->lc[L].pf_bytes += b;
        queued = true;
      }
      continue; // step 1 of the acquire pins it
    }
    c->lc[L].pf_wrong++, c->tot.pf_wrong++;
    c->wasted_bytes += b;
    if (s->deferred) {
      s->deferred = false;
      c->n_deferred--;
      c->lc[L].pf_cancelled++, c->tot.pf_cancelled++;
    }
    slot_unmap(c, s);       // reads still in flight land in an EMPTY slot; nobody reads them
    lru_insert(c, s, true); // reused first; take_victim waits for reads still in flight
  }
  c->n_spec = 0;
  if (queued) io_reader_submit(c->reader);
}

int ecache_acquire(struct ecache *c, uint32_t layer, uint32_t n, const int32_t *experts,
                   struct ecache_ref *out) {
  int rc = check_experts(c, layer, n, experts);
  if (rc) return rc;
  const struct ecache_layer *L = &c->layers[layer];
  uint32_t cls = c->layer_cls[layer], need = 0;
  if (c->n_spec) resolve_spec(c, layer, n, experts);

  // 1. Pin what is present (loaded or loading) so the misses below cannot evict it.
  for (uint32_t i = 0; i < n; i++) {
    struct ecache_ref *r = &out[i];
    *r = (struct ecache_ref){.layer = layer,
                             .expert = experts[i],
                             .slot = -1,
                             .state = ECACHE_IN_FLIGHT,
                             .tier = ECACHE_HOST};
    for (int p = 0; p < ECACHE_N_PARTS; p++) r->bytes[p] = L->part[p].len;
    int32_t id = *where_of(c, layer, experts[i]);
    if (id < 0) {
      need++;
      continue;
    }
    struct slot *s = &c->slots[id];
    slot_poll(c, s);
    if (s->state == SLOT_EMPTY || (s->state == SLOT_FAILED && !s->pins)) {
      need++; // a failed unpinned load was unmapped by slot_poll
      continue;
    }
    slot_pin(c, s);
    r->slot = id;
    if (s->state == SLOT_READY) fill_ref(c, s, r);
  }

  // 2. Enough reusable slots for the misses? Otherwise fail with nothing changed.
  uint32_t loading = 0, avail = c->cls[cls].list.count;
  if (need > avail) avail = class_available(c, cls, &loading); // O(slots): only when short
  if (need > avail + loading) {
    for (uint32_t i = 0; i < n; i++)
      if (out[i].slot >= 0) slot_unpin(c, &c->slots[out[i].slot]), out[i].slot = -1;
    const struct eclass *K = &c->cls[cls];
    uint32_t pinned = 0;
    for (uint32_t i = K->first; i < K->first + K->n_slots; i++) pinned += c->slots[i].pins > 0;
    char min[32];
    ferry_format_size((uint64_t)n * K->slot_bytes, min, sizeof min);
    return ferry_fail(-ENOSPC,
                      "expert cache: cannot place %u expert(s) of layer %u: %u of the "
                      "%u host slots of its size class (%llu bytes each) are pinned; the "
                      "minimum capacity is the k experts of one layer (here %u slots, %s) "
                      "free on top of what other layers keep pinned; release experts of other "
                      "layers first or raise --ram",
                      need, layer, pinned, K->n_slots, (unsigned long long)K->slot_bytes, n, min);
  }

  // 3. Misses: take victims, queue reads (one submission for the layer).
  uint64_t hits = n - need, misses = 0;
  for (uint32_t i = 0; i < n && need; i++) {
    struct ecache_ref *r = &out[i];
    if (r->slot >= 0) continue;
    int32_t id = *where_of(c, layer, experts[i]);
    if (id >= 0) { // a duplicate of an earlier miss in this call
      slot_pin(c, &c->slots[id]);
      r->slot = id;
      hits++;
      continue;
    }
    struct slot *s = take_victim(c, cls, true);
    // Counted above, so only a failing ring (reads that never complete) gets here.
    rc = s ? 0 : ferry_fail_ctx(-EIO, "expert cache: no slot came free for layer %u", layer);
    if (s) {
      s->pins = 1;
      rc = slot_load(c, s, layer, experts[i], false);
      if (rc) s->pins = 0, lru_insert(c, s, true);
    }
    if (rc) {
      for (uint32_t j = 0; j < n; j++)
        if (out[j].slot >= 0) slot_unpin(c, &c->slots[out[j].slot]), out[j].slot = -1;
      if (c->reader) io_reader_submit(c->reader);
      return rc;
    }
    r->slot = (int32_t)(s - c->slots);
    if (!c->reader) fill_ref(c, s, r);
    misses++;
    c->needed_bytes += slot_bytes_of(c, s);
    c->tot.demand_bytes += slot_bytes_of(c, s);
    c->lc[layer].demand_bytes += slot_bytes_of(c, s);
  }
  if (misses && c->reader) {
    rc = io_reader_submit(c->reader);
    if (rc < 0) {
      ferry_fail_ctx(rc, "expert cache: layer %u", layer);
      // The requests stay queued in the reader; waits will submit them again.
    }
  }
  c->lc[layer].acquires += n;
  c->lc[layer].hits += hits;
  c->lc[layer].misses += misses;
  c->tot.acquires += n;
  c->tot.hits += hits;
  c->tot.misses += misses;
  return 0;
}

int ecache_wait(struct ecache *c, struct ecache_ref *r) {
  FERRY_ASSERT(r->slot >= 0 && (uint32_t)r->slot < c->n_slots);
  struct slot *s = &c->slots[r->slot];
  FERRY_ASSERT(s->pins > 0 && s->layer == (int32_t)r->layer && s->expert == r->expert);
  if (s->state == SLOT_LOADING) slot_drain(c, s);
  pump(c);
  if (s->state == SLOT_LOADING) // the ring itself failed; the reads may still land
    return ferry_fail_ctx(-EIO, "expert cache: layer %u expert %d", r->layer, r->expert);
  if (s->state == SLOT_FAILED) {
    int p = 0;
    while (p < ECACHE_N_PARTS && !s->req[p].err) p++;
    FERRY_ASSERT(p < ECACHE_N_PARTS);
    int rc = io_read_wait(c->reader, &s->req[p]); // done: re-creates its message
    return ferry_fail_ctx(rc, "expert cache: layer %u expert %d %s slice", r->layer, r->expert,
                          k_part[p]);
  }
  FERRY_ASSERT(s->state == SLOT_READY);
  fill_ref(c, s, r);
  return 0;
}

int ecache_poll(struct ecache *c, uint32_t n, struct ecache_ref *refs) {
  if (c->reader) io_reader_poll(c->reader);
  int ready = 0;
  for (uint32_t i = 0; i < n; i++) {
    struct ecache_ref *r = &refs[i];
    if (r->state == ECACHE_IN_FLIGHT && r->slot >= 0) {
      struct slot *s = &c->slots[r->slot];
      slot_poll(c, s);
      if (s->state == SLOT_READY) fill_ref(c, s, r);
    }
    ready += r->state == ECACHE_READY;
  }
  pump(c);
  return ready;
}

void ecache_release(struct ecache *c, uint32_t layer, uint32_t n, struct ecache_ref *refs) {
  for (uint32_t i = 0; i < n; i++) {
    struct ecache_ref *r = &refs[i];
    if (r->slot < 0) continue;
    FERRY_ASSERT((uint32_t)r->slot < c->n_slots && r->layer == layer);
    struct slot *s = &c->slots[r->slot];
    FERRY_ASSERT(s->layer == (int32_t)layer && s->expert == r->expert);
    slot_unpin(c, s);
    r->slot = -1;
    for (int p = 0; p < ECACHE_N_PARTS; p++) r->data[p] = NULL;
  }
  pump(c);
}

int ecache_prefetch(struct ecache *c, uint32_t layer, uint32_t n, const int32_t *experts) {
  int rc = check_experts(c, layer, n, experts);
  if (rc) return rc;
  uint32_t cls = c->layer_cls[layer];
  if (c->prefetch_cap >= 0 && (double)c->wasted_bytes > c->prefetch_cap * (double)c->needed_bytes) {
    c->lc[layer].pf_skipped += n, c->tot.pf_skipped += n;
    return 0;
  }
  int started = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (*where_of(c, layer, experts[i]) >= 0) continue; // cached, loading or prefetched
    struct slot *s = take_victim(c, cls, false);
    if (!s) break;
    slot_load(c, s, layer, experts[i], true); // spec: never fails (reads are deferred)
    c->spec[c->n_spec++] = (int32_t)(s - c->slots);
    started++;
  }
  if (started) {
    c->lc[layer].prefetches += (uint64_t)started;
    c->tot.prefetches += (uint64_t)started;
    if (!c->reader) {
      uint64_t b = (uint64_t)started * c->cls[cls].slot_bytes;
      c->lc[layer].pf_bytes += b, c->tot.pf_bytes += b;
    }
    pump(c);
  }
  return started;
}

// ---- introspection ----
void ecache_stats(const struct ecache *c, struct ecache_stats *out) {
  memset(out, 0, sizeof *out);
  out->capacity_bytes[ECACHE_HOST] = c->capacity_bytes;
  out->capacity_slots[ECACHE_HOST] = c->n_slots;
  out->n_classes = c->n_cls;
  out->tier[ECACHE_HOST] = c->tot;
}

void ecache_layer_counters(const struct ecache *c, uint32_t layer, struct ecache_counters *out) {
  FERRY_ASSERT(layer < c->n_layers);
  *out = c->lc[layer];
}

uint64_t ecache_slot_bytes(const struct ecache *c, uint32_t layer) {
  if (layer >= c->n_layers || c->layer_cls[layer] == UINT32_MAX) return 0;
  return c->cls[c->layer_cls[layer]].slot_bytes;
}

bool ecache_contains(const struct ecache *c, uint32_t layer, int32_t expert) {
  if (layer >= c->n_layers || expert < 0 || (uint32_t)expert >= c->layers[layer].n_experts)
    return false;
  int32_t id = c->where[c->map_base[layer] + (uint64_t)expert];
  return id >= 0 && c->slots[id].state == SLOT_READY;
}

void ecache_check(const struct ecache *c) {
  uint64_t bytes = 0;
  for (uint32_t k = 0; k < c->n_cls; k++) {
    const struct eclass *K = &c->cls[k];
    bytes += (uint64_t)K->n_slots * K->slot_bytes;
    uint32_t cnt = 0;
    int32_t prev = -1;
    for (int32_t id = K->list.mru; id >= 0; id = c->slots[id].link.next) {
      const struct slot *s = &c->slots[id];
      FERRY_ASSERT(s->link.in && s->cls == k && s->link.prev == prev && !s->pins);
      FERRY_ASSERT(s->state == SLOT_EMPTY || s->state == SLOT_READY);
      FERRY_ASSERT(++cnt <= K->n_slots);
      prev = id;
    }
    FERRY_ASSERT(prev == K->list.lru && cnt == K->list.count);
  }
  FERRY_ASSERT(bytes == c->capacity_bytes);
  uint32_t in_lru = 0;
  for (uint32_t i = 0; i < c->n_slots; i++) {
    const struct slot *s = &c->slots[i];
    in_lru += s->link.in;
    if (s->state == SLOT_EMPTY) {
      FERRY_ASSERT(s->layer < 0 && !s->pins);
    } else {
      FERRY_ASSERT(s->layer >= 0 && (uint32_t)s->layer < c->n_layers);
      FERRY_ASSERT(c->layer_cls[s->layer] == s->cls);
      FERRY_ASSERT(c->where[c->map_base[s->layer] + (uint64_t)s->expert] == (int32_t)i);
      if (s->state == SLOT_LOADING || s->state == SLOT_FAILED) FERRY_ASSERT(!s->link.in);
      if (s->state == SLOT_FAILED) FERRY_ASSERT(s->pins > 0 || s->spec);
    }
    if (s->spec) {
      FERRY_ASSERT(!s->pins && !s->link.in && s->state != SLOT_EMPTY);
      uint32_t j = 0;
      while (j < c->n_spec && c->spec[j] != (int32_t)i) j++;
      FERRY_ASSERT(j < c->n_spec);
    }
    FERRY_ASSERT(!s->deferred || (s->spec && s->state == SLOT_LOADING));
    if (s->state == SLOT_READY && !s->spec) FERRY_ASSERT(s->link.in == (s->pins == 0));
  }
  uint32_t mapped = 0;
  for (uint32_t l = 0; l < c->n_layers; l++)
    for (uint32_t e = 0; e < c->layers[l].n_experts; e++) {
      int32_t id = c->where[c->map_base[l] + e];
      if (id < 0) continue;
      mapped++;
      FERRY_ASSERT((uint32_t)id < c->n_slots && c->slots[id].layer == (int32_t)l &&
                   c->slots[id].expert == (int32_t)e);
    }
  uint32_t nonempty = 0;
  for (uint32_t i = 0; i < c->n_slots; i++) nonempty += c->slots[i].state != SLOT_EMPTY;
  FERRY_ASSERT(mapped == nonempty);
  uint64_t a = 0, h = 0, m = 0;
  for (uint32_t l = 0; l < c->n_layers; l++) {
    FERRY_ASSERT(c->lc[l].acquires == c->lc[l].hits + c->lc[l].misses);
    a += c->lc[l].acquires, h += c->lc[l].hits, m += c->lc[l].misses;
  }
  FERRY_ASSERT(a == c->tot.acquires && h == c->tot.hits && m == c->tot.misses);
  (void)in_lru;
}
