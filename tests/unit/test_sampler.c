// tests/unit/test_sampler.c: the sampler on random logits — greedy is the argmax, top-k 1
// is greedy, draws follow softmax(logits / T) over the top-k set, top-p and min-p cut the
// tail, equal seeds give equal sequences, and the top-K log-probability list is exact.
#include <math.h>
#include <string.h>

#include "base/base.h"
#include "engine/generate.h"
#include "engine/sampler.h"
#include "tests/check.h"

int main(void) {
  enum { V = 5000 };
  static float logits[V];
  static double lp[V];
  struct ferry_rng r;
  ferry_rng_seed(&r, 42);
  for (int i = 0; i < V; i++) logits[i] = 3.0f * ferry_rng_normal(&r);
  int32_t best = 0;
  for (int i = 1; i < V; i++)
    if (logits[i] > logits[best]) best = i;

  struct sampler *s;
  struct sampler_params greedy = {.temp = 0, .top_k = 0, .top_p = 1, .min_p = 0, .seed = 1};
  CHECK_EQ(sampler_create(&s, &greedy, V), 0);
  CHECK_EQ(sampler_sample(s, logits), best);
  sampler_destroy(s);
  struct sampler_params k1 = {.temp = 1.0f, .top_k = 1, .top_p = 1, .min_p = 0, .seed = 9};
  CHECK_EQ(sampler_create(&s, &k1, V), 0);
  for (int i = 0; i < 20; i++) CHECK_EQ(sampler_sample(s, logits), best);
  sampler_destroy(s);

  // top-k 8 at T = 0.7: empirical frequencies vs softmax over the 8 best
  int32_t top[8];
  double topv[8];
  CHECK_EQ(logsoftmax(logits, V, lp), best);
  topk_logprobs(lp, V, 8, top, topv);
  CHECK_EQ(top[0], best);
  for (int j = 1; j < 8; j++) CHECK(topv[j] <= topv[j - 1]);
  double want[8], z = 0;
  for (int j = 0; j < 8; j++) z += (want[j] = exp((logits[top[j]] - logits[best]) / 0.7));
  struct sampler_params pk = {.temp = 0.7f, .top_k = 8, .top_p = 1, .min_p = 0, .seed = 5};
  CHECK_EQ(sampler_create(&s, &pk, V), 0);
  int count[8] = {0}, n = 20000, outside = 0;
  for (int i = 0; i < n; i++) {
    int32_t id = sampler_sample(s, logits);
    int j = 0;
    while (j < 8 && top[j] != id) j++;
    if (j == 8)
      outside++;
    else
      count[j]++;
  }
  sampler_destroy(s);
  CHECK_EQ(outside, 0);
  for (int j = 0; j < 8; j++) {
    double p = want[j] / z, sd = sqrt(p * (1 - p) / n);
    CHECK_NEAR((double)count[j] / n, p, 5 * sd + 1e-3);
  }

  // top-p: only the smallest prefix of the sorted distribution with mass >= p survives
  struct sampler_params pp = {.temp = 1.0f, .top_k = 40, .top_p = 0.5f, .min_p = 0, .seed = 6};
  CHECK_EQ(sampler_create(&s, &pp, V), 0);
  int32_t t40[40];
  double v40[40];
  topk_logprobs(lp, V, 40, t40, v40);
  double mass40 = 0, acc = 0;
  for (int j = 0; j < 40; j++) mass40 += exp(v40[j]);
  int keep = 0;
  while (keep < 40 && acc < 0.5) acc += exp(v40[keep++]) / mass40;
  for (int i = 0; i < 2000; i++) {
    int32_t id = sampler_sample(s, logits);
    int j = 0;
    while (j < 40 && t40[j] != id) j++;
    CHECK(j < keep);
  }
  sampler_destroy(s);

  // min-p: nothing below min_p * p_max
  struct sampler_params pm = {.temp = 1.0f, .top_k = 0, .top_p = 1, .min_p = 0.2f, .seed = 8};
  CHECK_EQ(sampler_create(&s, &pm, V), 0);
  for (int i = 0; i < 2000; i++) {
    int32_t id = sampler_sample(s, logits);
    CHECK(exp((double)logits[id] - logits[best]) >= 0.2 - 1e-6);
  }
  sampler_destroy(s);

  // determinism
  struct sampler *a, *b;
  struct sampler_params pd = {
      .temp = 1.2f, .top_k = 50, .top_p = 0.95f, .min_p = 0.01f, .seed = 77};
  CHECK_EQ(sampler_create(&a, &pd, V), 0);
  CHECK_EQ(sampler_create(&b, &pd, V), 0);
  for (int i = 0; i < 200; i++) CHECK_EQ(sampler_sample(a, logits), sampler_sample(b, logits));
  sampler_destroy(a), sampler_destroy(b);

  // logsoftmax sums to 1
  double sum = 0;
  for (int i = 0; i < V; i++) sum += exp(lp[i]);
  CHECK_NEAR(sum, 1.0, 1e-9);
  CHECK_DONE();
}
