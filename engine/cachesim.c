// engine/cachesim.c: trace parsing and the cache policies of `ferry cachesim` (see
// cachesim.h). Ferry's policy is the real offload/ecache in simulation mode, so it cannot
// drift from the engine; the generic policies are written here.
#include "engine/cachesim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

// ---- trace --------------------------------------------------------------------------------
#define TRACE_MAX_K      4096
#define TRACE_MAX_LAYER  4096
#define TRACE_MAX_EXPERT (1 << 20)

// Value of "key" in a JSON line: points after the colon (spaces skipped), or NULL.
static const char *find_key(const char *line, const char *key) {
  size_t n = strlen(key);
  for (const char *p = strchr(line, '"'); p; p = strchr(p + 1, '"')) {
    if (!strncmp(p + 1, key, n) && p[n + 1] == '"') {
      const char *q = p + n + 2;
      while (*q == ' ' || *q == '\t') q++;
      if (*q != ':') continue;
      q++;
      while (*q == ' ' || *q == '\t') q++;
      return q;
    }
  }
  return NULL;
}

static int parse_int(const char *s, long lo, long hi, int32_t *out, const char **end) {
  char *e;
  errno = 0;
  long v = strtol(s, &e, 10);
  if (e == s || errno || v < lo || v > hi) return -1;
  if (*e == '.' || *e == 'e' || *e == 'E') return -1; // not an integer
  *out = (int32_t)v;
  if (end) *end = e;
  return 0;
}

// [a, b, ...] of up to max integers in [0, hi]; returns the count or -1.
static int parse_ids(const char *s, int32_t *out, int max) {
  if (*s != '[') return -1;
  s++;
  int n = 0;
  for (;;) {
    while (*s == ' ') s++;
    if (*s == ']') return n;
    if (n == max) return -1;
    if (parse_int(s, 0, TRACE_MAX_EXPERT - 1, &out[n], &s)) return -1;
    n++;
    while (*s == ' ') s++;
    if (*s == ',') {
      s++;
      continue;
    }
    if (*s == ']') return n;
    return -1;
  }
}

static int grow(struct trace *t, int64_t *cap) {
  int64_t nc = *cap ? 2 * *cap : 4096;
  void *a = realloc(t->pos, sizeof(int32_t) * nc), *b = realloc(t->layer, sizeof(int32_t) * nc);
  if (a) t->pos = a;
  if (b) t->layer = b;
  void *c = realloc(t->chunk, sizeof(int32_t) * nc), *d = realloc(t->has_pred, sizeof(bool) * nc);
  if (c) t->chunk = c;
  if (d) t->has_pred = d;
  if (!a || !b || !c || !d) return -ENOMEM;
  if (t->k) {
    void *e = realloc(t->ids, sizeof(int32_t) * nc * t->k);
    if (e) t->ids = e;
    void *f = realloc(t->pred, sizeof(int32_t) * nc * t->k);
    if (f) t->pred = f;
    if (!e || !f) return -ENOMEM;
  }
  *cap = nc;
  return 0;
}

int trace_load(struct trace *t, const char *path) {
  memset(t, 0, sizeof *t);
  FILE *f = fopen(path, "r");
  if (!f) return ferry_fail(-errno, "cannot open trace '%s': %s", path, strerror(errno));
  char *line = NULL;
  size_t lcap = 0;
  ssize_t len;
  int64_t cap = 0, lineno = 0;
  int rc = 0;
  int32_t *ids = malloc(sizeof(int32_t) * TRACE_MAX_K),
          *pred = malloc(sizeof(int32_t) * TRACE_MAX_K);
  if (!ids || !pred) rc = ferry_fail(-ENOMEM, "out of memory");
  while (!rc && (len = getline(&line, &lcap, f)) >= 0) {
    lineno++;
    const char *s = line;
    while (*s == ' ' || *s == '\t') s++;
    if (*s == '\n' || *s == 0) continue;
#define BAD(...)                                     \
  rc = ferry_fail(-EINVAL, "%s:%lld: " __VA_ARGS__); \
  break
    if (*s != '{') {
      BAD("not a JSON object (expected one {\"pos\", \"layer\", \"experts\", ...} per line)", path,
          (long long)lineno);
    }
    const char *vp = find_key(s, "pos"), *vl = find_key(s, "layer"), *ve = find_key(s, "experts");
    const char *vc = find_key(s, "chunk"), *vq = find_key(s, "pred");
    int32_t pos, layer, chunk;
    if (!vp || !vl || !ve) {
      BAD("missing \"%s\"", path, (long long)lineno, !vp ? "pos" : !vl ? "layer" : "experts");
    }
    if (parse_int(vp, 0, INT32_MAX, &pos, NULL)) {
      BAD("\"pos\" is not a non-negative integer", path, (long long)lineno);
    }
    if (parse_int(vl, 0, TRACE_MAX_LAYER - 1, &layer, NULL)) {
      BAD("\"layer\" is not an integer in 0..%d", path, (long long)lineno, TRACE_MAX_LAYER - 1);
    }
    chunk = pos;
    if (vc && parse_int(vc, 0, INT32_MAX, &chunk, NULL)) {
      BAD("\"chunk\" is not a non-negative integer", path, (long long)lineno);
    }
    int k = parse_ids(ve, ids, TRACE_MAX_K);
    if (k <= 0) {
      BAD("\"experts\" is not a non-empty list of expert ids (integers in 0..%d)", path,
          (long long)lineno, TRACE_MAX_EXPERT - 1);
    }
    if (t->k && k != t->k) {
      BAD("%d experts, but earlier lines have %d", path, (long long)lineno, k, t->k);
    }
    int kp = vq ? parse_ids(vq, pred, TRACE_MAX_K) : 0;
    if (vq && kp != k) {
      BAD("\"pred\" must list %d expert ids", path, (long long)lineno, k);
    }
    if (!t->k) t->k = k;
    if (t->n == cap && grow(t, &cap)) {
      rc = ferry_fail(-ENOMEM, "out of memory reading %s", path);
      break;
    }
    t->pos[t->n] = pos, t->layer[t->n] = layer, t->chunk[t->n] = chunk;
    t->has_pred[t->n] = vq != NULL;
    memcpy(t->ids + t->n * k, ids, sizeof(int32_t) * k);
    memcpy(t->pred + t->n * k, vq ? pred : ids, sizeof(int32_t) * k);
    for (int i = 0; i < k; i++)
      if (ids[i] > t->max_expert) t->max_expert = ids[i];
    if (layer + 1 > t->n_layer) t->n_layer = layer + 1;
    t->n_positions += layer == 0;
    t->n++;
#undef BAD
  }
  if (!rc && ferror(f)) rc = ferry_fail(-EIO, "cannot read trace '%s'", path);
  if (!rc && t->n == 0) rc = ferry_fail(-EINVAL, "%s: no records (an empty trace)", path);
  free(line), free(ids), free(pred);
  fclose(f);
  if (rc) trace_free(t);
  return rc;
}

void trace_free(struct trace *t) {
  free(t->pos), free(t->layer), free(t->chunk), free(t->ids), free(t->pred), free(t->has_pred);
  memset(t, 0, sizeof *t);
}

const char *sim_policy_name(enum sim_policy p) {
  static const char *n[] = {"ferry", "lru", "lfu", "s3fifo"};
  return p < SIM_N_POLICIES ? n[p] : "?";
}

// Groups: consecutive records of one (chunk, layer) are one engine acquire.
static int64_t group_end(const struct trace *t, int64_t i) {
  int64_t j = i + 1;
  while (j < t->n && t->chunk[j] == t->chunk[i] && t->layer[j] == t->layer[i]) j++;
  return j;
}

// The prediction the engine hands to prefetch after group [i, j): the next group's
// "pred", when it is the next layer of the same one-token chunk.
static const int32_t *next_pred(const struct trace *t, int64_t i, int64_t j, uint32_t n_layers) {
  if (j - i != 1 || j >= t->n) return NULL;
  int64_t j2 = group_end(t, j);
  if (j2 - j != 1 || t->chunk[j] != t->chunk[i] || t->layer[j] != t->layer[i] + 1 ||
      (uint32_t)t->layer[j] >= n_layers || !t->has_pred[j])
    return NULL;
  return t->pred + j * t->k;
}

static int check_layout(const struct trace *t, const struct sim_config *c) {
  if ((uint32_t)t->n_layer > c->n_layers)
    return ferry_fail(-EINVAL, "the trace has layer %d but the model has %u layers", t->n_layer - 1,
                      c->n_layers);
  for (int64_t i = 0; i < t->n; i++)
    for (int q = 0; q < t->k; q++)
      if ((uint32_t)t->ids[i * t->k + q] >= c->layers[t->layer[i]].n_experts ||
          (t->has_pred[i] && (uint32_t)t->pred[i * t->k + q] >= c->layers[t->layer[i]].n_experts))
        return ferry_fail(-EINVAL,
                          "the trace names expert %d of layer %d, but that layer has %u experts "
                          "(is it a trace of this model?)",
                          t->ids[i * t->k + q], t->layer[i], c->layers[t->layer[i]].n_experts);
  if (c->prefetch) {
    bool any = false;
    for (int64_t i = 0; i < t->n && !any; i++) any = t->has_pred[i];
    if (!any)
      return ferry_fail(-EINVAL,
                        "prefetch needs the predicted ids (\"pred\"), which this trace lacks "
                        "(ferry run --trace-experts records them from layer 1 on)");
  }
  return 0;
}

// Unique ids of records [i, j), ascending (the engine's counting-sort order).
static int uniq_of(const struct trace *t, int64_t i, int64_t j, uint8_t *mark, uint32_t E,
                   int32_t *out) {
  for (int64_t r = i; r < j; r++)
    for (int q = 0; q < t->k; q++) mark[t->ids[r * t->k + q]] = 1;
  int n = 0;
  for (uint32_t e = 0; e < E; e++)
    if (mark[e]) out[n++] = (int32_t)e, mark[e] = 0;
  return n;
}

static uint32_t max_experts(const struct sim_config *c) {
  uint32_t E = 0;
  for (uint32_t l = 0; l < c->n_layers; l++)
    if (c->layers[l].n_experts > E) E = c->layers[l].n_experts;
  return E;
}

// ---- ferry: offload/ecache in simulation mode ----------------------------------------------
static int run_ferry(const struct trace *t, const struct sim_config *c, struct sim_result *out) {
  struct ecache_params p = {.n_layers = c->n_layers,
                            .layers = c->layers,
                            .simulate = true,
                            .host_bytes = c->host_bytes,
                            .host_slots = c->host_slots,
                            .min_slots = c->min_slots,
                            .prefetch_cap = c->cap};
  struct ecache *ec = NULL;
  int rc = ecache_create(&ec, &p);
  if (rc) return rc;
  uint32_t E = max_experts(c);
  uint8_t *mark = calloc(E, 1);
  int32_t *uniq = malloc(sizeof(int32_t) * E);
  struct ecache_ref *refs = malloc(sizeof *refs * E);
  struct ecache_stats s0 = {0}, s1;
  bool snap = c->warmup <= 0;
  int64_t counted = 0;
  if (!mark || !uniq || !refs) rc = ferry_fail(-ENOMEM, "out of memory");
  for (int64_t i = 0; !rc && i < t->n;) {
    int64_t j = group_end(t, i);
    if (!snap && t->chunk[i] >= c->warmup) ecache_stats(ec, &s0), snap = true;
    if (snap && t->layer[i] == 0) counted += j - i;
    uint32_t l = (uint32_t)t->layer[i];
    int nu = uniq_of(t, i, j, mark, c->layers[l].n_experts, uniq);
    int maxb = nu;
    for (int u0 = 0; u0 < nu;) {
      int nb = nu - u0 < maxb ? nu - u0 : maxb;
      rc = ecache_acquire(ec, l, (uint32_t)nb, uniq + u0, refs);
      if (rc == -ENOSPC && nb > 1) {
        maxb = nb / 2;
        rc = 0;
        ferry_clear_error();
        continue;
      }
      if (rc) {
        ferry_fail_ctx(rc, "replaying layer %u at position %d", l, t->pos[i]);
        break;
      }
      const int32_t *pf = c->prefetch && u0 == 0 ? next_pred(t, i, j, c->n_layers) : NULL;
      if (pf) ecache_prefetch(ec, l + 1, (uint32_t)t->k, pf);
      ecache_release(ec, l, (uint32_t)nb, refs);
      u0 += nb;
    }
    i = j;
  }
  if (!rc) {
    ecache_stats(ec, &s1);
    const struct ecache_counters *a = &s0.tier[ECACHE_HOST], *b = &s1.tier[ECACHE_HOST];
    *out = (struct sim_result){.hits = b->hits - a->hits,
                               .misses = b->misses - a->misses,
                               .evictions = b->evictions - a->evictions,
                               .pf_issued = b->prefetches - a->prefetches,
                               .pf_used = b->pf_used - a->pf_used,
                               .pf_wrong = b->pf_wrong - a->pf_wrong,
                               .pf_skipped = b->pf_skipped - a->pf_skipped,
                               .bytes_demand = b->demand_bytes - a->demand_bytes,
                               .bytes_prefetch = b->pf_bytes - a->pf_bytes,
                               .capacity_slots = s1.capacity_slots[ECACHE_HOST],
                               .capacity_bytes = s1.capacity_bytes[ECACHE_HOST],
                               .positions = counted};
  }
  free(mark), free(uniq), free(refs);
  ecache_destroy(ec);
  return rc;
}

// ---- generic policies ---------------------------------------------------------------------
// One cache instance: entries are (layer, expert) keys with a size (the layer's slot
// bytes); capacity in bytes. Nodes live in a pool; `where` maps key -> node.
struct node {
  int64_t key;
  uint64_t size;
  int32_t prev, next; // LRU list / S3-FIFO queue links
  uint32_t freq;
  uint64_t tick; // LFU tie-break (last use)
  int32_t heap;  // LFU heap index
  uint8_t q;     // S3-FIFO: 0 small, 1 main
};

struct gc {
  enum sim_policy pol;
  uint64_t cap, used;
  struct node *nd;
  int32_t n_nodes, free_head;
  int32_t *where; // [n_keys] node or -1
  // LRU / S3-FIFO queues: head = most recent
  int32_t head[2], tail[2];
  uint64_t qbytes[2];
  // LFU heap
  int32_t *heap;
  int32_t n_heap;
  uint64_t now;
  // S3-FIFO ghost: FIFO of keys
  int64_t *ghost;
  uint8_t *in_ghost; // [n_keys]
  int32_t g_head, g_n, g_cap;
};

static void q_unlink(struct gc *g, int32_t i) {
  struct node *n = &g->nd[i];
  int q = n->q;
  if (n->prev >= 0)
    g->nd[n->prev].next = n->next;
  else
    g->head[q] = n->next;
  if (n->next >= 0)
    g->nd[n->next].prev = n->prev;
  else
    g->tail[q] = n->prev;
  g->qbytes[q] -= n->size;
}

static void q_push(struct gc *g, int32_t i, int q) {
  struct node *n = &g->nd[i];
  n->q = (uint8_t)q;
  n->prev = -1;
  n->next = g->head[q];
  if (g->head[q] >= 0) g->nd[g->head[q]].prev = i;
  g->head[q] = i;
  if (g->tail[q] < 0) g->tail[q] = i;
  g->qbytes[q] += n->size;
}

static bool lfu_less(const struct gc *g, int32_t a, int32_t b) {
  const struct node *x = &g->nd[a], *y = &g->nd[b];
  return x->freq != y->freq ? x->freq < y->freq : x->tick < y->tick;
}
static void heap_swap(struct gc *g, int32_t i, int32_t j) {
  int32_t a = g->heap[i], b = g->heap[j];
  g->heap[i] = b, g->heap[j] = a;
  g->nd[b].heap = i, g->nd[a].heap = j;
}
static void heap_fix(struct gc *g, int32_t i) {
  while (i > 0 && lfu_less(g, g->heap[i], g->heap[(i - 1) / 2]))
    heap_swap(g, i, (i - 1) / 2), i = (i - 1) / 2;
  for (;;) {
    int32_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < g->n_heap && lfu_less(g, g->heap[l], g->heap[m])) m = l;
    if (r < g->n_heap && lfu_less(g, g->heap[r], g->heap[m])) m = r;
    if (m == i) break;
    heap_swap(g, i, m), i = m;
  }
}
static void heap_remove(struct gc *g, int32_t node) {
  int32_t i = g->nd[node].heap;
  heap_swap(g, i, --g->n_heap);
  if (i < g->n_heap) heap_fix(g, i);
}

static void ghost_add(struct gc *g, int64_t key) {
  if (!g->g_cap) return;
  if (g->g_n == g->g_cap) { // forget the oldest
    int64_t old = g->ghost[g->g_head];
    g->in_ghost[old] = 0;
    g->g_head = (g->g_head + 1) % g->g_cap;
    g->g_n--;
  }
  g->ghost[(g->g_head + g->g_n) % g->g_cap] = key;
  g->g_n++;
  g->in_ghost[key] = 1;
}

static void node_free(struct gc *g, int32_t i) {
  g->where[g->nd[i].key] = -1;
  g->used -= g->nd[i].size;
  g->nd[i].next = g->free_head;
  g->free_head = i;
}

// Evicts one entry by the policy; returns false when empty.
static bool gc_evict(struct gc *g) {
  if (g->pol == SIM_LRU) {
    int32_t v = g->tail[0];
    if (v < 0) return false;
    q_unlink(g, v);
    node_free(g, v);
    return true;
  }
  if (g->pol == SIM_LFU) {
    if (!g->n_heap) return false;
    int32_t v = g->heap[0];
    heap_remove(g, v);
    node_free(g, v);
    return true;
  }
  // S3-FIFO: small queue holds ~10% of the bytes; a small entry used again moves to main,
  // otherwise it is remembered in the ghost; main entries used again get another round.
  for (;;) {
    if (g->head[0] < 0 && g->head[1] < 0) return false;
    if (g->head[0] >= 0 && (g->qbytes[0] * 10 >= g->cap || g->head[1] < 0)) {
      int32_t v = g->tail[0];
      q_unlink(g, v);
      if (g->nd[v].freq > 0) {
        g->nd[v].freq = 0;
        q_push(g, v, 1);
        continue;
      }
      ghost_add(g, g->nd[v].key);
      node_free(g, v);
      return true;
    }
    int32_t v = g->tail[1];
    q_unlink(g, v);
    if (g->nd[v].freq > 0) {
      g->nd[v].freq--;
      q_push(g, v, 1);
      continue;
    }
    node_free(g, v);
    return true;
  }
}

static bool gc_has(const struct gc *g, int64_t key) { return g->where[key] >= 0; }

// Makes room for `size` more bytes (plus `reserved` held by prefetches). False if it cannot.
static bool gc_room(struct gc *g, uint64_t size, uint64_t reserved, uint64_t *evictions) {
  while (g->used + reserved + size > g->cap) {
    if (!gc_evict(g)) return false;
    (*evictions)++;
  }
  return true;
}

// Inserts a key known absent (room already made).
static void gc_insert(struct gc *g, int64_t key, uint64_t size) {
  int32_t i = g->free_head;
  FERRY_ASSERT(i >= 0);
  g->free_head = g->nd[i].next;
  struct node *n = &g->nd[i];
  *n = (struct node){.key = key, .size = size, .prev = -1, .next = -1, .freq = 0};
  g->where[key] = i;
  g->used += size;
  if (g->pol == SIM_LRU) {
    q_push(g, i, 0);
  } else if (g->pol == SIM_LFU) {
    n->freq = 1, n->tick = ++g->now;
    n->heap = g->n_heap;
    g->heap[g->n_heap++] = i;
    heap_fix(g, n->heap);
  } else {
    int q = g->in_ghost[key] ? 1 : 0;
    if (q) g->in_ghost[key] = 0; // stays in the ghost FIFO as a stale entry
    q_push(g, i, q);
  }
}

static void gc_touch(struct gc *g, int64_t key) {
  int32_t i = g->where[key];
  if (g->pol == SIM_LRU) {
    q_unlink(g, i);
    q_push(g, i, 0);
  } else if (g->pol == SIM_LFU) {
    g->nd[i].freq++, g->nd[i].tick = ++g->now;
    heap_fix(g, g->nd[i].heap);
  } else if (g->nd[i].freq < 3) {
    g->nd[i].freq++;
  }
}

static int gc_init(struct gc *g, enum sim_policy pol, uint64_t cap, int64_t n_keys,
                   int32_t max_nodes) {
  memset(g, 0, sizeof *g);
  g->pol = pol, g->cap = cap;
  g->nd = calloc((size_t)max_nodes, sizeof *g->nd);
  g->where = malloc(sizeof(int32_t) * (size_t)n_keys);
  g->heap = malloc(sizeof(int32_t) * (size_t)max_nodes);
  g->in_ghost = calloc((size_t)n_keys, 1);
  g->g_cap = max_nodes;
  g->ghost = malloc(sizeof(int64_t) * (size_t)max_nodes);
  if (!g->nd || !g->where || !g->heap || !g->in_ghost || !g->ghost)
    return ferry_fail(-ENOMEM, "out of memory");
  for (int64_t k = 0; k < n_keys; k++) g->where[k] = -1;
  for (int32_t i = 0; i < max_nodes; i++) g->nd[i].next = i + 1 < max_nodes ? i + 1 : -1;
  g->n_nodes = max_nodes;
  g->head[0] = g->head[1] = g->tail[0] = g->tail[1] = -1;
  return 0;
}

static void gc_free(struct gc *g) {
  free(g->nd), free(g->where), free(g->heap), free(g->in_ghost), free(g->ghost);
}

struct spec {
  int64_t key;
  uint64_t size;
  int inst;
};

static int run_generic(const struct trace *t, const struct sim_config *c, struct sim_result *out) {
  uint32_t L = c->n_layers, E = max_experts(c);
  int64_t n_keys = (int64_t)L * E;
  uint64_t *slot = malloc(sizeof(uint64_t) * L), denom = 0, min_slot = UINT64_MAX;
  if (!slot) return ferry_fail(-ENOMEM, "out of memory");
  for (uint32_t l = 0; l < L; l++) {
    slot[l] = c->layers[l].n_experts ? ecache_layer_slot_bytes(&c->layers[l]) : 0;
    if (slot[l]) denom += slot[l], min_slot = slot[l] < min_slot ? slot[l] : min_slot;
  }
  // capacity: the same bytes as ferry's; per layer: equal slot counts as ferry's split
  uint64_t bytes = c->host_bytes;
  if (!bytes) bytes = denom ? (uint64_t)c->host_slots / L * denom : 0;
  uint64_t per_layer_slots = denom ? bytes / denom : 0;
  if (per_layer_slots < c->min_slots) {
    free(slot);
    return ferry_fail(-ENOSPC,
                      "capacity gives %llu slot(s) per layer, fewer than the %u experts "
                      "one token uses",
                      (unsigned long long)per_layer_slots, c->min_slots);
  }
  int n_inst = c->global ? 1 : (int)L;
  struct gc *g = calloc((size_t)n_inst, sizeof *g);
  struct spec *sp = malloc(sizeof *sp * (size_t)(t->k + 1));
  uint8_t *mark = calloc(E, 1);
  int32_t *uniq = malloc(sizeof(int32_t) * E);
  int rc = (!g || !sp || !mark || !uniq) ? ferry_fail(-ENOMEM, "out of memory") : 0;
  uint64_t cap_total = 0;
  for (int q = 0; !rc && q < n_inst; q++) {
    uint64_t cap = c->global ? bytes : per_layer_slots * slot[q];
    int32_t nodes = (int32_t)(cap / min_slot + (uint64_t)t->k + 2);
    if (nodes > n_keys + t->k + 2) nodes = (int32_t)(n_keys + t->k + 2);
    rc = gc_init(&g[q], c->policy, cap, n_keys, nodes);
    cap_total += cap;
  }
  struct sim_result r = {.capacity_bytes = cap_total,
                         .capacity_slots = c->global ? bytes / (denom / L) : per_layer_slots * L};
  struct sim_result base = {0};
  bool snap = c->warmup <= 0;
  int n_spec = 0;
  uint64_t reserved = 0, wasted = 0, needed = 0;
  for (int64_t i = 0; !rc && i < t->n;) {
    int64_t j = group_end(t, i);
    if (!snap && t->chunk[i] >= c->warmup) base = r, snap = true;
    if (snap && t->layer[i] == 0) r.positions += j - i;
    uint32_t l = (uint32_t)t->layer[i];
    struct gc *G = &g[c->global ? 0 : l];
    int nu = uniq_of(t, i, j, mark, c->layers[l].n_experts, uniq);
    // resolve the outstanding guesses (made for this access)
    for (int s = 0; s < n_spec; s++) {
      struct gc *GS = &g[sp[s].inst];
      reserved -= sp[s].size;
      bool claimed = false;
      for (int u = 0; u < nu && !claimed; u++)
        claimed = GS == G && sp[s].key == (int64_t)l * E + uniq[u];
      if (claimed) { // its bytes were reserved: it enters as an entry now, a hit below
        gc_insert(GS, sp[s].key, sp[s].size);
        r.pf_used++, needed += sp[s].size;
      } else {
        r.pf_wrong++, wasted += sp[s].size;
      }
    }
    n_spec = 0;
    // like an acquire: the hits first (so a miss cannot evict an expert this access uses),
    // then the misses, both in ascending id order
    for (int u = 0; u < nu; u++) {
      int64_t key = (int64_t)l * E + uniq[u];
      if (gc_has(G, key)) {
        r.hits++;
        gc_touch(G, key);
        uniq[u] = -1;
      }
    }
    for (int u = 0; u < nu; u++) {
      if (uniq[u] < 0) continue;
      int64_t key = (int64_t)l * E + uniq[u];
      r.misses++;
      r.bytes_demand += slot[l], needed += slot[l];
      if (!gc_room(G, slot[l], c->global ? reserved : 0, &r.evictions)) continue;
      gc_insert(G, key, slot[l]);
      if (c->policy == SIM_S3FIFO) G->nd[G->where[key]].freq = 0;
    }
    const int32_t *pf = c->prefetch ? next_pred(t, i, j, L) : NULL;
    if (pf) {
      if (c->cap >= 0 &&
          (double)wasted > (c->cap == 0 ? ECACHE_PREFETCH_CAP : c->cap) * (double)needed) {
        r.pf_skipped += (uint64_t)t->k;
      } else {
        uint32_t l1 = l + 1;
        int inst = c->global ? 0 : (int)l1;
        struct gc *GN = &g[inst];
        for (int q = 0; q < t->k; q++) {
          int64_t key = (int64_t)l1 * E + pf[q];
          bool dup = gc_has(GN, key);
          for (int s = 0; s < n_spec && !dup; s++) dup = sp[s].key == key;
          if (dup) continue;
          uint64_t res_inst = 0;
          for (int s = 0; s < n_spec; s++)
            if (sp[s].inst == inst) res_inst += sp[s].size;
          if (!gc_room(GN, slot[l1], res_inst, &r.evictions)) break;
          sp[n_spec++] = (struct spec){key, slot[l1], inst};
          reserved += slot[l1];
          r.pf_issued++, r.bytes_prefetch += slot[l1];
        }
      }
    }
    i = j;
  }
  if (!rc) {
    r.hits -= base.hits, r.misses -= base.misses, r.evictions -= base.evictions;
    r.pf_issued -= base.pf_issued, r.pf_used -= base.pf_used, r.pf_wrong -= base.pf_wrong;
    r.pf_skipped -= base.pf_skipped, r.bytes_demand -= base.bytes_demand;
    r.bytes_prefetch -= base.bytes_prefetch;
    *out = r;
  }
  for (int q = 0; g && q < n_inst; q++) gc_free(&g[q]);
  free(g), free(sp), free(mark), free(uniq), free(slot);
  return rc;
}

int sim_run(const struct trace *t, const struct sim_config *c, struct sim_result *out) {
  memset(out, 0, sizeof *out);
  int rc = check_layout(t, c);
  if (rc) return rc;
  if (c->policy == SIM_FERRY) return run_ferry(t, c, out);
  return run_generic(t, c, out);
}
