// engine/stream.c: glue between the model's expert_source and the offload/ expert cache.
#include "engine/stream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/session.h"
#include "io/reader.h"
#include "offload/ecache.h"

struct stream {
  struct io_reader *reader;
  struct ecache *cache; // host tier (pinned RAM on a device backend) over the file
  struct ecache_layer *layers;
  struct dcache *vram; // VRAM tier, or NULL
  struct ferry_backend *be;
  struct ferry_stream *copy; // host->VRAM copies
  uint32_t n_layer, n_expert;
  int32_t *tmp_e, *tmp_i;   // [n_expert] acquire: experts missing from VRAM, their index
  struct ecache_ref *tmp_h; // [n_expert]
  double copy_wait_s;
};

static int layer_layout(const struct gguf_file *f, uint32_t l, struct ecache_layer *out) {
  static const char *parts[3] = {"gate", "up", "down"};
  memset(out, 0, sizeof *out);
  for (int p = 0; p < 3; p++) {
    char n[96];
    snprintf(n, sizeof n, "blk.%u.ffn_%s_exps.weight", l, parts[p]);
    const struct gguf_tensor *t = gguf_find_tensor(f, n);
    if (!t) return ferry_fail(-EINVAL, "%s: missing tensor '%s'", gguf_path(f), n);
    out->n_experts = (uint32_t)t->ne[2];
    out->part[p] = (struct ecache_slice){.base = t->abs_offset, .stride = t->nb2, .len = t->nb2};
  }
  return 0;
}

int stream_expert_layout(const struct gguf_file *f, const struct model_hparams *hp,
                         struct ecache_layer *out) {
  for (uint32_t l = 0; l < hp->n_layer; l++) {
    int rc = layer_layout(f, l, &out[l]);
    if (rc) return rc;
  }
  return 0;
}

// Bytes of one host slot of a layer: each matrix read as its own O_DIRECT span.
static uint64_t host_slot_bytes(const struct ecache_layer *L) {
  uint64_t slot = 0;
  for (int q = 0; q < 3; q++) slot += io_span_max(L->part[q].len);
  return slot;
}

uint64_t stream_cache_bytes(const struct ecache_layer *layers, uint32_t n_layer, uint64_t left) {
  // No more slots than there are experts: a cache larger than all of them is wasted RAM.
  uint64_t all = 0;
  for (uint32_t l = 0; l < n_layer; l++) all += host_slot_bytes(&layers[l]) * layers[l].n_experts;
  return left < all ? left : all;
}

uint64_t stream_min_cache_bytes(const struct gguf_file *f, const struct model_hparams *hp) {
  struct ecache_layer *layers = calloc(hp->n_layer, sizeof *layers);
  if (!layers) return UINT64_MAX / 4;
  for (uint32_t l = 0; l < hp->n_layer; l++)
    if (layer_layout(f, l, &layers[l])) layers[l].n_experts = 0;
  uint64_t need = ecache_min_host_bytes(layers, hp->n_layer, hp->n_expert_used);
  free(layers);
  return need;
}

void stream_expert_slot_bytes(const struct gguf_file *f, const struct model_hparams *hp,
                              uint64_t *one_per_layer, uint64_t *all) {
  *one_per_layer = *all = 0;
  for (uint32_t l = 0; l < hp->n_layer; l++) {
    struct ecache_layer L;
    if (layer_layout(f, l, &L)) {
      ferry_clear_error();
      continue;
    }
    const uint64_t slot = host_slot_bytes(&L);
    *one_per_layer += slot;
    *all += slot * L.n_experts;
  }
}

// The VRAM tier's view of a layer: its expert count and matrix sizes.
static struct dcache_layer vram_layer(const struct ecache_layer *L) {
  struct dcache_layer d = {.n_experts = L->n_experts};
  for (int q = 0; q < 3; q++) d.len[q] = L->part[q].len;
  return d;
}

static bool vram_layers(const struct gguf_file *f, const struct model_hparams *hp,
                        struct dcache_layer *dl) {
  for (uint32_t l = 0; l < hp->n_layer; l++) {
    struct ecache_layer L;
    if (layer_layout(f, l, &L)) {
      ferry_clear_error();
      return false;
    }
    dl[l] = vram_layer(&L);
  }
  return true;
}

void stream_vram_bytes(const struct gguf_file *f, const struct model_hparams *hp,
                       uint64_t *min_bytes, uint64_t *one_per_layer, uint64_t *all) {
  *min_bytes = *one_per_layer = *all = 0;
  struct dcache_layer *dl = calloc(hp->n_layer ? hp->n_layer : 1, sizeof *dl);
  if (dl && vram_layers(f, hp, dl)) {
    *min_bytes = dcache_min_bytes(dl, hp->n_layer, hp->n_expert_used);
    for (uint32_t l = 0; l < hp->n_layer; l++) {
      const uint64_t slot = dcache_slot_bytes(&dl[l]);
      *one_per_layer += slot;
      *all += slot * dl[l].n_experts;
    }
  }
  free(dl);
}

// Test seam: FERRY_IO_FAULT="kind:nth:arg[,...]" (kind errno|short|delay; e.g.
// "errno:40:5" fails the 40th expert read with EIO) arms the io/ fault injector so the
// end-to-end tests can fail, shorten or delay reads of a real run.
static void arm_faults_from_env(void) {
  const char *env = getenv("FERRY_IO_FAULT");
  if (!env || !*env) return;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", env);
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char kind[16];
    unsigned long long nth = 0;
    long long arg = 0;
    if (sscanf(tok, "%15[a-z]:%llu:%lld", kind, &nth, &arg) < 2) {
      log_warn("FERRY_IO_FAULT: ignoring '%s'", tok);
      continue;
    }
    enum io_fault_kind k = !strcmp(kind, "errno")   ? IO_FAULT_ERRNO
                           : !strcmp(kind, "short") ? IO_FAULT_SHORT
                           : !strcmp(kind, "delay") ? IO_FAULT_DELAY
                                                    : 0;
    if (!k) {
      log_warn("FERRY_IO_FAULT: unknown kind '%s'", kind);
      continue;
    }
    io_fault_set(k, nth, arg);
  }
}

// Host slabs of a device backend are pinned so copies to VRAM are asynchronous DMA.
static void *pinned_alloc(uint64_t bytes, void *ctx) {
  struct ferry_backend *be = ctx;
  void *p = NULL;
  if (be->ops.host_alloc(be, &p, bytes)) return NULL;
  return p;
}
static void pinned_free(void *p, uint64_t bytes, void *ctx) {
  struct ferry_backend *be = ctx;
  be->ops.host_free(be, p);
}

int stream_create(struct stream **out, const struct gguf_file *f, const struct model_hparams *hp,
                  struct budget *b, struct ferry_backend *be, uint64_t vram_bytes,
                  double prefetch_cap) {
  *out = NULL;
  struct stream *s = calloc(1, sizeof *s);
  if (!s) return ferry_fail(-ENOMEM, "out of memory");
  s->n_layer = hp->n_layer;
  s->n_expert = hp->n_expert;
  s->be = be;
  s->layers = calloc(hp->n_layer, sizeof *s->layers);
  s->tmp_e = calloc(hp->n_expert, sizeof *s->tmp_e);
  s->tmp_i = calloc(hp->n_expert, sizeof *s->tmp_i);
  s->tmp_h = calloc(hp->n_expert, sizeof *s->tmp_h);
  int rc = 0;
  if (!s->layers || !s->tmp_e || !s->tmp_i || !s->tmp_h) {
    rc = ferry_fail(-ENOMEM, "out of memory");
    goto fail;
  }
  for (uint32_t l = 0; l < hp->n_layer; l++)
    if ((rc = layer_layout(f, l, &s->layers[l]))) goto fail;
  const uint64_t min = ecache_min_host_bytes(s->layers, hp->n_layer, hp->n_expert_used),
                 left = budget_left(b, BUDGET_HOST);
  if (left < min) { // the plan checked this: a failure here is a planning bug
    rc = ferry_fail(-ENOMEM, "expert cache: %llu bytes of RAM budget left, %llu needed",
                    (unsigned long long)left, (unsigned long long)min);
    goto fail;
  }
  if ((rc = io_reader_open(&s->reader, gguf_path(f), NULL))) goto fail;
  arm_faults_from_env();
  const bool pinned = be && be->kind == FERRY_BACKEND_CUDA;
  struct ecache_params p = {.n_layers = hp->n_layer,
                            .layers = s->layers,
                            .reader = s->reader,
                            .budget = b,
                            .host_bytes = stream_cache_bytes(s->layers, hp->n_layer, left),
                            .min_slots = hp->n_expert_used,
                            .prefetch_cap = prefetch_cap,
                            .host_alloc = pinned ? pinned_alloc : NULL,
                            .host_free = pinned ? pinned_free : NULL,
                            .alloc_ctx = be};
  if ((rc = ecache_create(&s->cache, &p))) goto fail;
  if (vram_bytes && be && be->kind != FERRY_BACKEND_CPU) {
    struct dcache_layer *dl = calloc(hp->n_layer, sizeof *dl);
    if (!dl) {
      rc = ferry_fail(-ENOMEM, "out of memory");
      goto fail;
    }
    for (uint32_t l = 0; l < hp->n_layer; l++) dl[l] = vram_layer(&s->layers[l]);
    if (!(rc = be->ops.stream_create(be, &s->copy))) {
      struct dcache_params dp = {.n_layers = hp->n_layer,
                                 .layers = dl,
                                 .be = be,
                                 .copy = s->copy,
                                 .budget = b,
                                 .bytes = vram_bytes,
                                 .min_slots = hp->n_expert_used};
      rc = dcache_create(&s->vram, &dp);
    }
    free(dl);
    if (rc) goto fail;
  }
  *out = s;
  return 0;
fail:
  stream_destroy(s);
  return rc;
}

void stream_destroy(struct stream *s) {
  if (!s) return;
  dcache_destroy(s->vram);
  if (s->copy) s->be->ops.stream_destroy(s->be, s->copy);
  ecache_destroy(s->cache);
  io_reader_close(s->reader);
  free(s->layers);
  free(s->tmp_e), free(s->tmp_i), free(s->tmp_h);
  free(s);
}

static void set_host(struct expert_ref *r) {
  r->host_ready = r->h.state == ECACHE_READY;
  for (int p = 0; p < 3; p++) r->host[p] = r->host_ready ? r->h.data[p] : NULL;
}

// VRAM first (a VRAM hit does not touch the host tier, so the host LRU ages out what lives
// in VRAM and the two tiers hold mostly different experts), then the host tier for the
// rest, whose misses are read in one batch.
static int src_acquire(void *ctx, int layer, int n, const int32_t *experts,
                       struct expert_ref *out) {
  struct stream *s = ctx;
  int m = 0;
  for (int i = 0; i < n; i++) {
    struct expert_ref *r = &out[i];
    memset(r, 0, sizeof *r);
    r->expert = experts[i];
    r->h.slot = -1;
    if (s->vram && dcache_lookup(s->vram, (uint32_t)layer, experts[i], &r->d)) {
      r->tier = EXPERT_VRAM;
      r->on_dev = true;
      for (int p = 0; p < 3; p++) r->dev[p] = r->d.dev[p];
      r->ev = r->d.ready;
      continue;
    }
    s->tmp_e[m] = experts[i];
    s->tmp_i[m++] = i;
  }
  int rc = m ? ecache_acquire(s->cache, (uint32_t)layer, (uint32_t)m, s->tmp_e, s->tmp_h) : 0;
  if (rc) {
    for (int i = 0; i < n; i++)
      if (out[i].on_dev) dcache_release(s->vram, &out[i].d, NULL), out[i].on_dev = false;
    return rc;
  }
  for (int j = 0; j < m; j++) {
    struct expert_ref *r = &out[s->tmp_i[j]];
    r->h = s->tmp_h[j];
    r->host_pinned = true;
    r->tier = r->h.state == ECACHE_READY ? EXPERT_HOST : EXPERT_DISK;
    set_host(r);
  }
  return 0;
}

// Non-blocking: reaps completed reads so experts are computed as they land.
static void src_poll(void *ctx, int n, struct expert_ref *refs) {
  struct stream *s = ctx;
  for (int i = 0; i < n; i++)
    if (refs[i].host_pinned && !refs[i].host_ready) {
      ecache_poll(s->cache, 1, &refs[i].h);
      set_host(&refs[i]);
    }
}

static int src_wait(void *ctx, struct expert_ref *r) {
  struct stream *s = ctx;
  if (r->host_ready || !r->host_pinned) return 0;
  int rc = ecache_wait(s->cache, &r->h);
  if (!rc) set_host(r);
  return rc;
}

static int src_to_device(void *ctx, int layer, struct expert_ref *r) {
  struct stream *s = ctx;
  FERRY_ASSERT(r->host_ready && !r->on_dev);
  int rc = dcache_fill(s->vram, (uint32_t)layer, r->expert, r->host, &r->d);
  if (rc) return rc;
  r->on_dev = r->copied = true;
  for (int p = 0; p < 3; p++) r->dev[p] = r->d.dev[p];
  r->ev = r->d.ready;
  return 0;
}

static void src_release(void *ctx, int layer, int n, struct expert_ref *refs,
                        struct ferry_event *used) {
  struct stream *s = ctx;
  for (int i = 0; i < n; i++) {
    struct expert_ref *r = &refs[i];
    if (r->copied) { // the host slot is the copy's source until the copy is done
      const double t0 = ferry_now_s();
      if (s->be->ops.event_sync(s->be, r->d.ready)) ferry_clear_error();
      s->copy_wait_s += ferry_now_s() - t0;
      r->copied = false;
    }
    if (r->on_dev) dcache_release(s->vram, &r->d, used), r->on_dev = false;
    if (r->host_pinned) ecache_release(s->cache, (uint32_t)layer, 1, &r->h), r->host_pinned = false;
  }
}

static void src_prefetch(void *ctx, int layer, int n, const int32_t *experts) {
  struct stream *s = ctx;
  int m = 0;
  for (int i = 0; i < n; i++) // what is in VRAM needs no read
    if (!s->vram || !dcache_contains(s->vram, (uint32_t)layer, experts[i]))
      s->tmp_e[m++] = experts[i];
  if (m && ecache_prefetch(s->cache, (uint32_t)layer, (uint32_t)m, s->tmp_e) < 0)
    ferry_clear_error(); // only a hint
}

void stream_expert_source(struct stream *s, struct expert_source *src) {
  *src = (struct expert_source){.ctx = s,
                                .acquire = src_acquire,
                                .poll = src_poll,
                                .wait = src_wait,
                                .to_device = s->vram ? src_to_device : NULL,
                                .release = src_release,
                                .prefetch = src_prefetch,
                                .dev_slots = s->vram ? (int)dcache_min_class_slots(s->vram) : 0};
}
void stream_fill_stats(struct stream *s, struct run_stats *st) {
  struct io_stats io;
  io_reader_stats(s->reader, &io);
  st->io_bytes = io.bytes_read;
  st->io_reads = io.reads;
  st->io_s = io.read_s;
  st->io_direct = io.direct;
  struct ecache_stats es;
  ecache_stats(s->cache, &es);
  st->host_capacity = es.capacity_slots[ECACHE_HOST];
  st->host_capacity_bytes = es.capacity_bytes[ECACHE_HOST];
  st->host_hits = es.tier[ECACHE_HOST].hits;
  st->host_misses = es.tier[ECACHE_HOST].misses;
  st->host_evictions = es.tier[ECACHE_HOST].evictions;
  st->copy_wait_s += s->copy_wait_s;
  if (s->vram) {
    struct dcache_stats ds;
    dcache_stats(s->vram, &ds);
    st->dev_capacity = ds.capacity_slots;
    st->dev_hits = ds.hits;
    st->dev_misses = ds.misses;
    st->dev_evictions = ds.evictions;
    st->h2d_bytes = ds.h2d_bytes;
  }
  const struct ecache_counters *t = &es.tier[ECACHE_HOST];
  st->pf_issued = t->prefetches, st->pf_used = t->pf_used, st->pf_wrong = t->pf_wrong;
  st->pf_cancelled = t->pf_cancelled, st->pf_skipped = t->pf_skipped, st->pf_bytes = t->pf_bytes;
  st->demand_bytes = t->demand_bytes;
}
