// engine/sampler.h: turns logits into a token: greedy (temp 0) or temperature with top-k,
// top-p and min-p filters, seeded. Working buffers are allocated once at create.
#pragma once
#include <stdint.h>

#include "base/base.h"

struct sampler_params {
  float temp;  // 0 = greedy
  int top_k;   // 0 = off
  float top_p; // 1 = off
  float min_p; // 0 = off
  uint64_t seed;
};

struct sampler;
int sampler_create(struct sampler **out, const struct sampler_params *p, int n_vocab);
void sampler_destroy(struct sampler *s);
int32_t sampler_sample(struct sampler *s, const float *logits);
// log-softmax of logits (temperature 1) into out[n]; returns the max index.
int32_t logsoftmax(const float *logits, int n, double *out);
