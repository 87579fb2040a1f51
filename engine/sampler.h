// engine/sampler.h: turns logits into a token: greedy (temp 0) or temperature with top-k,
// top-p and min-p filters, seeded. Working buffers are allocated once at create.
#pragma once
#include <stdint.h>

#include "base/base.h"

// llama.cpp's --logit-bias: bias is added to the token's logit before sampling (greedy
// included); -INFINITY bans the token, +INFINITY forces it.
struct logit_bias {
  int32_t id;
  float bias;
};

struct sampler_params {
  float temp;  // 0 = greedy
  int top_k;   // 0 = off
  float top_p; // 1 = off
  float min_p; // 0 = off
  uint64_t seed;
  const struct logit_bias *bias; // n_bias entries (copied by sampler_create)
  int n_bias;
};

struct sampler;
// Fails (-EINVAL, message) when a bias names a token outside [0, n_vocab).
int sampler_create(struct sampler **out, const struct sampler_params *p, int n_vocab);
void sampler_destroy(struct sampler *s);
// Samples from logits[n_vocab] (not modified; the biases apply to a copy). NaN logits
// count as -inf.
int32_t sampler_sample(struct sampler *s, const float *logits);
// Parses one --logit-bias value "ID+BIAS" or "ID-BIAS" (BIAS a number or inf).
int logit_bias_parse(const char *s, struct logit_bias *out);
// log-softmax of logits (temperature 1) into out[n]; returns the max index.
int32_t logsoftmax(const float *logits, int n, double *out);
// 0 if all n logits are finite; else -ERANGE with a message naming the position, how many
// values and the first one (the check where logits reach the host: run, score, bench).
int logits_check_finite(const float *logits, int n, int pos);
