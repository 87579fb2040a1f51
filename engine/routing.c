// engine/routing.c: expert traces and routing statistics (see routing.h).
#include "engine/routing.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

struct layer_acc {
  int32_t *prev; // [k] ids of the last position seen
  int prev_pos;  // its position, -1 before the first
  uint64_t lag_hits, lag_pairs;
  uint64_t pred_hits, pred_n;
  uint64_t *counts; // [n_expert] routings per expert
};

struct routing {
  struct routing_opts o;
  FILE *trace;
  char *trace_path;
  char *buf; // stdio buffer of the trace
  struct layer_acc *L;
  uint64_t *sort_tmp; // [n_expert]
  bool write_failed;
};

#define TRACE_BUF (1u << 20)

int routing_overlap(const int32_t *a, const int32_t *b, int k) {
  int n = 0;
  for (int i = 0; i < k; i++)
    for (int j = 0; j < k; j++)
      if (a[i] == b[j]) {
        n++;
        break;
      }
  return n;
}

static int cmp_desc(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

int routing_cover90(uint64_t *counts, int n) {
  uint64_t total = 0;
  for (int i = 0; i < n; i++) total += counts[i];
  if (!total) return 0;
  qsort(counts, (size_t)n, sizeof *counts, cmp_desc);
  uint64_t acc = 0;
  for (int i = 0; i < n; i++) {
    acc += counts[i];
    if (10 * acc >= 9 * total) return i + 1;
  }
  return n;
}

int routing_create(struct routing **out, const struct routing_opts *o) {
  *out = NULL;
  if (o->n_layer <= 0 || o->n_expert <= 0 || o->k <= 0 || o->k > o->n_expert)
    return ferry_fail(-EINVAL, "routing: bad dimensions (%d layers, %d experts, top-%d)",
                      o->n_layer, o->n_expert, o->k);
  struct routing *r = calloc(1, sizeof *r);
  if (!r) return ferry_fail(-ENOMEM, "out of memory");
  r->o = *o;
  r->L = calloc((size_t)o->n_layer, sizeof *r->L);
  r->sort_tmp = calloc((size_t)o->n_expert, sizeof *r->sort_tmp);
  int rc = 0;
  if (!r->L || !r->sort_tmp) {
    rc = ferry_fail(-ENOMEM, "out of memory");
    goto fail;
  }
  for (int l = 0; l < o->n_layer; l++) {
    r->L[l].prev = calloc((size_t)o->k, sizeof *r->L[l].prev);
    r->L[l].counts = calloc((size_t)o->n_expert, sizeof *r->L[l].counts);
    r->L[l].prev_pos = -1;
    if (!r->L[l].prev || !r->L[l].counts) {
      rc = ferry_fail(-ENOMEM, "out of memory");
      goto fail;
    }
  }
  if (o->trace_path) {
    r->trace_path = strdup(o->trace_path);
    r->buf = malloc(TRACE_BUF);
    r->trace = fopen(o->trace_path, "w");
    if (!r->trace) {
      rc = ferry_fail(-errno, "cannot write --trace-experts file '%s': %s", o->trace_path,
                      strerror(errno));
      goto fail;
    }
    if (!r->trace_path || !r->buf) {
      rc = ferry_fail(-ENOMEM, "out of memory");
      goto fail;
    }
    setvbuf(r->trace, r->buf, _IOFBF, TRACE_BUF);
  }
  *out = r;
  return 0;
fail:
  routing_destroy(r);
  return rc;
}

void routing_destroy(struct routing *r) {
  if (!r) return;
  if (r->trace) fclose(r->trace);
  free(r->buf);
  free(r->trace_path);
  for (int l = 0; r->L && l < r->o.n_layer; l++) free(r->L[l].prev), free(r->L[l].counts);
  free(r->L);
  free(r->sort_tmp);
  free(r);
}

static void write_ids(FILE *f, const int32_t *ids, int k) {
  fputc('[', f);
  for (int i = 0; i < k; i++) fprintf(f, i ? ", %d" : "%d", ids[i]);
  fputc(']', f);
}

static void on_route(void *ctx, int layer, int pos0, int T, int k, const int32_t *ids,
                     const float *w, const int32_t *pred) {
  struct routing *r = ctx;
  if (layer < 0 || layer >= r->o.n_layer || k != r->o.k) return;
  struct layer_acc *L = &r->L[layer];
  for (int t = 0; t < T; t++) {
    const int32_t *id = ids + (size_t)t * k;
    int pos = pos0 + t;
    if (r->trace && !r->write_failed) {
      FILE *f = r->trace;
      fprintf(f, "{\"pos\": %d, \"layer\": %d, \"chunk\": %d, \"experts\": ", pos, layer, pos0);
      write_ids(f, id, k);
      fputs(", \"weights\": [", f);
      for (int i = 0; i < k; i++) fprintf(f, i ? ", %.6g" : "%.6g", (double)w[(size_t)t * k + i]);
      fputc(']', f);
      if (pred) {
        fputs(", \"pred\": ", f);
        write_ids(f, pred + (size_t)t * k, k);
      }
      if (fputs("}\n", f) < 0) r->write_failed = true;
    }
    if (!r->o.stats) continue;
    for (int i = 0; i < k; i++)
      if (id[i] >= 0 && id[i] < r->o.n_expert) L->counts[id[i]]++;
    if (L->prev_pos >= 0 && pos == L->prev_pos + 1) {
      L->lag_hits += (uint64_t)routing_overlap(id, L->prev, k);
      L->lag_pairs++;
    }
    memcpy(L->prev, id, sizeof(int32_t) * (size_t)k);
    L->prev_pos = pos;
    if (pred) {
      L->pred_hits += (uint64_t)routing_overlap(id, pred + (size_t)t * k, k);
      L->pred_n++;
    }
  }
}

void routing_observer(struct routing *r, struct route_observer *out) {
  *out = (struct route_observer){.ctx = r, .on_route = on_route};
}

int routing_flush(struct routing *r) {
  if (!r || !r->trace) return 0;
  errno = 0;
  int bad = r->write_failed || fflush(r->trace) != 0 || ferror(r->trace);
  int e = errno;
  if (bad)
    return ferry_fail(-(e ? e : EIO), "writing --trace-experts file '%s' failed: %s", r->trace_path,
                      strerror(e ? e : EIO));
  return 0;
}

void routing_layer_stats(const struct routing *r, double *lag1, double *stale, double *cov90,
                         double *top1_share) {
  int k = r->o.k, E = r->o.n_expert;
  for (int l = 0; l < r->o.n_layer; l++) {
    const struct layer_acc *L = &r->L[l];
    if (lag1) lag1[l] = L->lag_pairs ? (double)L->lag_hits / ((double)L->lag_pairs * k) : -1;
    if (stale) stale[l] = L->pred_n ? (double)L->pred_hits / ((double)L->pred_n * k) : -1;
    memcpy(r->sort_tmp, L->counts, sizeof(uint64_t) * (size_t)E);
    uint64_t total = 0;
    for (int e = 0; e < E; e++) total += L->counts[e];
    int n = routing_cover90(r->sort_tmp, E);
    if (cov90) cov90[l] = total ? (double)n / E : -1;
    if (top1_share) top1_share[l] = total ? (double)r->sort_tmp[0] / (double)total : -1;
  }
}

void routing_summarize(const struct routing *r, struct routing_summary *out) {
  memset(out, 0, sizeof *out);
  out->lag1_reuse = out->stale_gate_accuracy = out->coverage90 = -1;
  if (!r || !r->o.stats) return;
  int n = r->o.n_layer;
  double *v = calloc(3 * (size_t)n, sizeof *v);
  if (!v) return;
  routing_layer_stats(r, v, v + n, v + 2 * n, NULL);
  double s[3] = {0, 0, 0};
  int c[3] = {0, 0, 0};
  for (int j = 0; j < 3; j++)
    for (int l = 0; l < n; l++)
      if (v[j * n + l] >= 0) s[j] += v[j * n + l], c[j]++;
  if (c[0]) out->lag1_reuse = s[0] / c[0];
  if (c[1]) out->stale_gate_accuracy = s[1] / c[1];
  if (c[2]) out->coverage90 = s[2] / c[2], out->valid = true;
  for (int l = 0; l < n; l++) out->lag_pairs += r->L[l].lag_pairs, out->predicted += r->L[l].pred_n;
  for (int e = 0; e < r->o.n_expert; e++) out->tokens += r->L[0].counts[e];
  out->tokens /= (uint64_t)r->o.k;
  free(v);
}
