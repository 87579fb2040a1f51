// tests/unit/test_sampler.c: the sampler on random logits — greedy is the argmax, top-k 1
// is greedy, draws follow softmax(logits / T) over the top-k set, top-p and min-p cut the
// tail, equal seeds give equal sequences, and the top-K log-probability list is exact.
// Hostile logits (NaN, inf; issue 15: a NaN pivot made the top-k selection read past the
// array) never give an id out of range, --logit-bias parses llama.cpp's syntax and moves
// the draws, and logits_check_finite names what is wrong.
#include <errno.h>
#include <math.h>
#include <string.h>

#include "base/base.h"
#include "engine/generate.h"
#include "engine/sampler.h"
#include "tests/check.h"

// NaN anywhere (the quickselect pivot included) and +-inf: every draw is a real id, a
// NaN is never chosen while a finite candidate exists. Run under ASan by scripts/test.sh,
// which turns the old out-of-bounds scan into a failure.
static void check_nan(void) {
  enum { V = 3000 };
  static float lg[V];
  struct ferry_rng r;
  ferry_rng_seed(&r, 5);
  for (int pattern = 0; pattern < 6; pattern++) {
    for (int i = 0; i < V; i++) lg[i] = 2.0f * ferry_rng_normal(&r);
    if (pattern == 0) lg[V / 2] = NAN, lg[(V - 1) / 2] = NAN; // the first pivot
    if (pattern == 1)
      for (int i = 0; i < V; i += 3) lg[i] = NAN; // a third
    if (pattern == 2)
      for (int i = 0; i < V; i++) lg[i] = NAN; // all
    if (pattern == 3) lg[7] = INFINITY, lg[8] = -INFINITY, lg[9] = NAN;
    if (pattern == 4)
      for (int i = 0; i < V; i++) lg[i] = -INFINITY;
    if (pattern == 5) lg[0] = NAN, lg[V - 1] = NAN;
    for (int k = 0; k < 4; k++) {
      struct sampler_params sp = {.temp = k ? 0.8f : 0,
                                  .top_k = k == 1   ? 40
                                           : k == 2 ? 1
                                                    : 0,
                                  .top_p = k == 3 ? 0.9f : 1,
                                  .min_p = 0.05f,
                                  .seed = 3};
      struct sampler *s;
      CHECK_EQ(sampler_create(&s, &sp, V), 0);
      for (int d = 0; d < 50; d++) {
        int32_t id = sampler_sample(s, lg);
        CHECK(id >= 0 && id < V);
        if (pattern != 2 && pattern != 4 && k > 0) CHECK(!isnan(lg[id]));
        if (pattern == 3 && k > 0) CHECK_EQ(id, 7); // +inf dominates
      }
      sampler_destroy(s);
    }
    CHECK(logits_check_finite(lg, V, 9) < 0);
    CHECK(strstr(ferry_errmsg(), "position 9 are not finite") != NULL);
    ferry_clear_error();
  }
  for (int i = 0; i < V; i++) lg[i] = (float)i / V;
  CHECK_EQ(logits_check_finite(lg, V, 0), 0);
}

static void check_bias(const float *logits) {
  enum { V = 5000 };
  struct logit_bias b[4];
  CHECK_EQ(logit_bias_parse("15043+1.5", &b[0]), 0);
  CHECK(b[0].id == 15043 && b[0].bias == 1.5f);
  CHECK_EQ(logit_bias_parse("7-inf", &b[1]), 0);
  CHECK(b[1].id == 7 && isinf(b[1].bias) && b[1].bias < 0);
  CHECK_EQ(logit_bias_parse("0+0", &b[2]), 0);
  const char *badv[] = {"", "12", "x+1", "-1+1", "12+", "12+x", "12*3", "12+1e", "12+nan"};
  for (size_t i = 0; i < sizeof badv / sizeof *badv; i++) {
    CHECK(logit_bias_parse(badv[i], &b[3]) == -EINVAL);
    ferry_clear_error();
  }
  int32_t best = 0;
  for (int i = 1; i < V; i++)
    if (logits[i] > logits[best]) best = i;
  struct logit_bias ban = {best, -INFINITY}, force = {123, INFINITY}, out = {V, 1};
  struct sampler *s;
  struct sampler_params g = {.temp = 0, .top_p = 1, .bias = &ban, .n_bias = 1};
  CHECK_EQ(sampler_create(&s, &g, V), 0);
  CHECK(sampler_sample(s, logits) != best);
  sampler_destroy(s);
  struct sampler_params f = {
      .temp = 1, .top_k = 20, .top_p = 0.8f, .seed = 1, .bias = &force, .n_bias = 1};
  CHECK_EQ(sampler_create(&s, &f, V), 0);
  for (int i = 0; i < 10; i++) CHECK_EQ(sampler_sample(s, logits), 123);
  sampler_destroy(s);
  struct sampler_params o = {.temp = 1, .top_p = 1, .bias = &out, .n_bias = 1};
  CHECK(sampler_create(&s, &o, V) == -EINVAL);
  ferry_clear_error();
}

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

  check_nan();
  check_bias(logits);

  // logsoftmax sums to 1
  double sum = 0;
  for (int i = 0; i < V; i++) sum += exp(lp[i]);
  CHECK_NEAR(sum, 1.0, 1e-9);
  CHECK_DONE();
}
