// engine/sampler.c: sampling. Filters apply in llama.cpp's usual order: top-k, top-p,
// min-p, then temperature and a draw from the renormalised distribution.
#include "engine/sampler.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct cand {
  int32_t id;
  float logit;
};

struct sampler {
  struct sampler_params p;
  int n_vocab;
  struct cand *c;
  double *prob;
  struct logit_bias *bias;
  float *biased; // [n_vocab] logits + biases (only with biases)
  struct ferry_rng rng;
};

int sampler_create(struct sampler **out, const struct sampler_params *p, int n_vocab) {
  *out = NULL;
  struct sampler *s = calloc(1, sizeof *s);
  if (!s) return ferry_fail(-ENOMEM, "out of memory");
  s->p = *p;
  s->n_vocab = n_vocab;
  for (int i = 0; i < p->n_bias; i++)
    if (p->bias[i].id < 0 || p->bias[i].id >= n_vocab) {
      free(s);
      return ferry_fail(-EINVAL, "--logit-bias: token id %d is out of range (vocabulary of %d)",
                        p->bias[i].id, n_vocab);
    }
  s->c = malloc(sizeof *s->c * n_vocab);
  s->prob = malloc(sizeof *s->prob * n_vocab);
  if (p->n_bias) {
    s->bias = malloc(sizeof *s->bias * p->n_bias);
    s->biased = malloc(sizeof *s->biased * n_vocab);
  }
  if (!s->c || !s->prob || (p->n_bias && (!s->bias || !s->biased))) {
    sampler_destroy(s);
    return ferry_fail(-ENOMEM, "out of memory");
  }
  if (p->n_bias) memcpy(s->bias, p->bias, sizeof *s->bias * p->n_bias);
  s->p.bias = s->bias;
  ferry_rng_seed(&s->rng, p->seed);
  *out = s;
  return 0;
}

void sampler_destroy(struct sampler *s) {
  if (!s) return;
  free(s->c);
  free(s->prob);
  free(s->bias);
  free(s->biased);
  free(s);
}

static int32_t argmax(const float *x, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

// A total order (descending logit, then ascending id). Candidates never hold NaN
// (sampler_sample maps it to -inf): with NaN the comparison is not an order, and the
// quickselect scans below run past the array.
static int cmp_cand(const void *a, const void *b) {
  const struct cand *x = a, *y = b;
  if (x->logit > y->logit) return -1;
  if (x->logit < y->logit) return 1;
  return (x->id > y->id) - (x->id < y->id);
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
  if (s->p.n_bias) {
    memcpy(s->biased, logits, sizeof *s->biased * s->n_vocab);
    for (int i = 0; i < s->p.n_bias; i++) s->biased[s->bias[i].id] += s->bias[i].bias;
    logits = s->biased;
  }
  if (s->p.temp <= 0) return argmax(logits, s->n_vocab);
  int n = s->n_vocab;
  for (int i = 0; i < n; i++) s->c[i] = (struct cand){i, isnan(logits[i]) ? -INFINITY : logits[i]};
  // partial order: with top-k, select the k best first; otherwise a full sort
  int k = s->p.top_k > 0 && s->p.top_k < n ? s->p.top_k : n;
  if (k < n) select_top(s->c, n, k); // O(n): only the k best are sorted below
  qsort(s->c, k, sizeof *s->c, cmp_cand);
  n = k;
  if (s->c[0].logit == INFINITY) return s->c[0].id; // forced by --logit-bias ID+inf
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

int logits_check_finite(const float *logits, int n, int pos) {
  int bad = 0, first = -1;
  for (int i = 0; i < n; i++)
    if (!isfinite(logits[i])) bad++, first = first < 0 ? i : first;
  if (!bad) return 0;
  const char *hint = getenv("FERRY_CHECK_FINITE") && strcmp(getenv("FERRY_CHECK_FINITE"), "0")
                         ? "every layer's output was finite, so they arose in the output norm or "
                           "the output matrix"
                         : "set FERRY_CHECK_FINITE=1 to find the first layer whose output is not";
  return ferry_fail(
      -ERANGE,
      "the logits at position %d are not finite (%d of %d values; the first, at token "
      "id %d, is %g): the model's weights hold NaN/inf or an activation overflowed; %s",
      pos, bad, n, first, (double)logits[first], hint);
}

int logit_bias_parse(const char *s, struct logit_bias *out) {
  char *end;
  errno = 0;
  long id = strtol(s, &end, 10);
  if (end == s || errno || id < 0 || id > INT32_MAX || (*end != '+' && *end != '-'))
    return ferry_fail(-EINVAL,
                      "--logit-bias: '%s' is not TOKEN_ID+BIAS or TOKEN_ID-BIAS (e.g. 15043+1.5, "
                      "15043-inf)",
                      s);
  const char *v = end;
  errno = 0;
  double b = strtod(v, &end); // the sign belongs to the bias; "inf" is accepted
  if (end == v || *end || isnan(b))
    return ferry_fail(-EINVAL, "--logit-bias: '%s': the bias '%s' is not a number", s, v);
  out->id = (int32_t)id;
  out->bias = (float)b;
  return 0;
}
