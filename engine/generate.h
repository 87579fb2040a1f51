// engine/generate.h: the generate loop (prefill, then sample/decode until an
// end-of-generation token or -n), with timing, optional per-step top-K log-probabilities,
// and the --json / --stats reports.
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/session.h"

struct gen_step {
  int32_t id;
  int32_t *top_ids; // [K]
  double *top_lp;   // [K]
};

struct gen_result {
  int32_t *prompt;
  int n_prompt;
  int32_t *tokens; // generated ids (an end-of-generation token, if any, is the last)
  int n_generated;
  char *text; // decoded generated text
  size_t text_len;
  struct gen_step *steps; // n_generated entries when logprobs > 0
  int32_t *top_ids_all;   // storage of the steps' top_ids / top_lp
  double *top_lp_all;
  int k;
  struct run_stats st;
};

// The largest prompt file read (-f); reading stops there (a /dev/zero prompt costs 1 GiB).
#define GEN_PROMPT_MAX_BYTES (1ull << 30)

// Reads and checks the prompt before anything is loaded: -p, or -f FILE ('-' = stdin, at
// most GEN_PROMPT_MAX_BYTES), valid UTF-8, no NUL byte unless --raw (the chat template is
// text), --system valid UTF-8. Sets o->prompt_text / prompt_len to the text, which the
// caller frees through *owned after the run.
int gen_read_prompt(struct run_opts *o, char **owned);
// Builds the prompt ids from the options: the text gen_read_prompt read (or reads now),
// chat template unless --raw. Fails on unreadable files, invalid UTF-8, or an empty prompt.
int gen_prompt_ids(struct session *s, const struct run_opts *o, int32_t **ids, int *n);
// Runs generation; streams decoded text to `out` when non-NULL.
int gen_run(struct session *s, const struct run_opts *o, const int32_t *prompt, int n_prompt,
            FILE *out, struct gen_result *r);
void gen_result_free(struct gen_result *r);
int gen_write_json(struct session *s, const struct run_opts *o, const struct gen_result *r,
                   const char *path);
void gen_print_stats(FILE *f, const char *mode, const struct run_stats *st);
// The statistics fields of DESIGN §6 (load_s ... expert_cache) into an open JSON object.
struct jw;
void gen_json_stats(struct jw *w, const struct run_stats *st);
double gen_prefill_rate(const struct run_stats *st);
double gen_decode_rate(const struct run_stats *st); // tokens after the first / decode time
// Top-K of a log-softmax (descending; ties -> lower id).
void topk_logprobs(const double *lp, int n, int k, int32_t *ids, double *vals);
