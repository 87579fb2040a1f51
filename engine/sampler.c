// engine/sampler.c: sampling. Filters apply in llama.cpp's usual order: top-k, top-p,
// min-p, then temperature and a draw from the renormalised distribution.
#include "engine/sampler.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

struct cand {
  int32_t id;
  float logit;
};

struct sampler {
  struct sampler_params p;
  int n_vocab;
  struct cand *c;
  double *prob;
  struct ferry_rng rng;
};

int sampler_create(struct sampler **out, const struct sampler_params *p, int n_vocab) {
  *out = NULL;
  struct sampler *s = calloc(1, sizeof *s);
  if (!s) return ferry_fail(-ENOMEM, "out of memory");
  s->p = *p;
  s->n_vocab = n_vocab;
  s->c = malloc(sizeof *s->c * n_vocab);
  s->prob = malloc(sizeof *s->prob * n_vocab);
  if (!s->c || !s->prob) {
    sampler_destroy(s);
    return ferry_fail(-ENOMEM, "out of memory");
  }
  ferry_rng_seed(&s->rng, p->seed);
  *out = s;
  return 0;
}

void sampler_destroy(struct sampler *s) {
  if (!s) return;
  free(s->c);
  free(s->prob);
  free(s);
}

static int32_t argmax(const float *x, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

static int cmp_cand(const void *a, const void *b) {
  const struct cand *x = a, *y = b;
  if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
  return x->id - y->id;
}

// Moves the k best candidates (by cmp_cand order) to c[0..k) by quickselect; a full
// sort of a 151,936-entry vocabulary would cost milliseconds per token.
static void select_top(struct cand *c, int n, int k) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    struct cand pivot = c[lo + (hi - lo) / 2];
    int i = lo, j = hi;
    while (i <= j) {
      while (cmp_cand(&c[i], &pivot) < 0) i++;
      while (cmp_cand(&c[j], &pivot) > 0) j--;
      if (i <= j) {
        struct cand t = c[i];
        c[i] = c[j], c[j] = t;
        i++, j--;
      }
    }
    if (k - 1 <= j)
      hi = j;
    else if (k - 1 >= i)
      lo = i;
    else
      break;
  }
}

int32_t sampler_sample(struct sampler *s, const float *logits) {
  if (s->p.temp <= 0) return argmax(logits, s->n_vocab);
  int n = s->n_vocab;
  for (int i = 0; i < n; i++) s->c[i] = (struct cand){i, logits[i]};
  // partial order: with top-k, select the k best first; otherwise a full sort
  int k = s->p.top_k > 0 && s->p.top_k < n ? s->p.top_k : n;
  if (k < n) select_top(s->c, n, k); // O(n): only the k best are sorted below
  qsort(s->c, k, sizeof *s->c, cmp_cand);
  n = k;
  double maxl = s->c[0].logit, sum = 0;
  for (int i = 0; i < n; i++) sum += (s->prob[i] = exp(((double)s->c[i].logit - maxl)));
  if (s->p.top_p < 1.0f) {
    double acc = 0;
    int keep = n;
    for (int i = 0; i < n; i++) {
      acc += s->prob[i] / sum;
      if (acc >= s->p.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }
  if (s->p.min_p > 0) {
    int keep = 1;
    while (keep < n && s->prob[keep] >= s->p.min_p * s->prob[0]) keep++;
    n = keep;
  }
  sum = 0;
  for (int i = 0; i < n; i++) sum += (s->prob[i] = exp(((double)s->c[i].logit - maxl) / s->p.temp));
  double r = (double)ferry_rng_uniform(&s->rng) * sum, acc = 0;
  for (int i = 0; i < n; i++) {
    acc += s->prob[i];
    if (r < acc) return s->c[i].id;
  }
  return s->c[n - 1].id;
}

int32_t logsoftmax(const float *logits, int n, double *out) {
  int32_t best = argmax(logits, n);
  double maxl = logits[best], sum = 0;
  for (int i = 0; i < n; i++) sum += exp((double)logits[i] - maxl);
  double lse = maxl + log(sum);
  for (int i = 0; i < n; i++) out[i] = (double)logits[i] - lse;
  return best;
}
