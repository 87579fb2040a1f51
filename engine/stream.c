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
  struct ecache *cache;
  struct ecache_layer *layers;
  struct ecache_ref *refs; // [n_expert] refs of the current acquire
  uint32_t n_layer, n_expert;
  uint32_t n_acq; // refs of the current acquire
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

uint64_t stream_cache_bytes(const struct ecache_layer *layers, uint32_t n_layer, uint64_t left) {
  // No more slots than there are experts: a cache larger than all of them is wasted RAM.
  uint64_t all = 0;
  for (uint32_t l = 0; l < n_layer; l++) {
    uint64_t slot = 0;
    for (int q = 0; q < 3; q++) slot += io_span_max(layers[l].part[q].len);
    all += slot * layers[l].n_experts;
  }
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

int stream_create(struct stream **out, const struct gguf_file *f, const struct model_hparams *hp,
                  struct budget *b, double prefetch_cap) {
  *out = NULL;
  struct stream *s = calloc(1, sizeof *s);
  if (!s) return ferry_fail(-ENOMEM, "out of memory");
  s->n_layer = hp->n_layer;
  s->n_expert = hp->n_expert;
  s->layers = calloc(hp->n_layer, sizeof *s->layers);
  s->refs = calloc(hp->n_expert, sizeof *s->refs);
  int rc = 0;
  if (!s->layers || !s->refs) {
    rc = ferry_fail(-ENOMEM, "out of memory");
    goto fail;
  }
  for (uint32_t l = 0; l < hp->n_layer; l++)
    if ((rc = layer_layout(f, l, &s->layers[l]))) goto fail;
  uint64_t min = stream_min_cache_bytes(f, hp);
  uint64_t left = budget_left(b, BUDGET_HOST);
  if (left < min) {
    char b1[32], b2[32], b3[32];
    ferry_format_size(budget_limit(b, BUDGET_HOST), b1, sizeof b1);
    ferry_format_size(budget_used_total(b, BUDGET_HOST), b2, sizeof b2);
    ferry_format_size(min, b3, sizeof b3);
    rc = ferry_fail(-ENOMEM,
                    "RAM budget %s is too small for stream mode: dense weights, state and scratch "
                    "take %s and the "
                    "expert cache needs at least %s (%u experts of one layer); raise --ram to at "
                    "least %llu bytes",
                    b1, b2, b3, hp->n_expert_used,
                    (unsigned long long)(budget_used_total(b, BUDGET_HOST) + min));
    goto fail;
  }
  if ((rc = io_reader_open(&s->reader, gguf_path(f), NULL))) goto fail;
  arm_faults_from_env();
  struct ecache_params p = {.n_layers = hp->n_layer,
                            .layers = s->layers,
                            .reader = s->reader,
                            .budget = b,
                            .host_bytes = stream_cache_bytes(s->layers, hp->n_layer, left),
                            .min_slots = hp->n_expert_used,
                            .prefetch_cap = prefetch_cap};
  if ((rc = ecache_create(&s->cache, &p))) goto fail;
  *out = s;
  return 0;
fail:
  stream_destroy(s);
  return rc;
}

void stream_destroy(struct stream *s) {
  if (!s) return;
  ecache_destroy(s->cache);
  io_reader_close(s->reader);
  free(s->layers);
  free(s->refs);
  free(s);
}

static int src_acquire(void *ctx, int layer, int n, const int32_t *experts) {
  struct stream *s = ctx;
  s->n_acq = (uint32_t)n;
  return ecache_acquire(s->cache, (uint32_t)layer, (uint32_t)n, experts, s->refs);
}
// Non-blocking: reaps completed reads so experts are computed as they land.
static bool src_ready(void *ctx, int i) {
  struct stream *s = ctx;
  if (s->refs[i].state != ECACHE_READY) ecache_poll(s->cache, s->n_acq, s->refs);
  return s->refs[i].state == ECACHE_READY;
}
static int src_get(void *ctx, int i, const void *ptrs[3]) {
  struct stream *s = ctx;
  struct ecache_ref *r = &s->refs[i];
  if (r->state != ECACHE_READY) {
    int rc = ecache_wait(s->cache, r);
    if (rc) return rc;
  }
  for (int p = 0; p < 3; p++) ptrs[p] = r->data[p];
  return 0;
}
static void src_release(void *ctx, int layer, int n) {
  struct stream *s = ctx;
  ecache_release(s->cache, (uint32_t)layer, (uint32_t)n, s->refs);
}

static void src_prefetch(void *ctx, int layer, int n, const int32_t *experts) {
  struct stream *s = ctx;
  if (ecache_prefetch(s->cache, (uint32_t)layer, (uint32_t)n, experts) < 0)
    ferry_clear_error(); // only a hint
}

void stream_expert_source(struct stream *s, struct expert_source *src) {
  *src = (struct expert_source){.ctx = s,
                                .acquire = src_acquire,
                                .ready = src_ready,
                                .get = src_get,
                                .release = src_release,
                                .prefetch = src_prefetch};
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
  const struct ecache_counters *t = &es.tier[ECACHE_HOST];
  st->pf_issued = t->prefetches, st->pf_used = t->pf_used, st->pf_wrong = t->pf_wrong;
  st->pf_cancelled = t->pf_cancelled, st->pf_skipped = t->pf_skipped, st->pf_bytes = t->pf_bytes;
  st->demand_bytes = t->demand_bytes;
}
