// engine/generate.h: the generate loop (prefill, then sample/decode until an
// end-of-generation token, a stop string or -n), with timing, optional per-step top-K
// log-probabilities, and the --json / --stats reports. `ferry run` and `ferry serve` share
// gen_generate; `ferry run` reaches it through gen_run.
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/sampler.h"
#include "engine/session.h"

struct gen_step {
  int32_t id;
  int32_t *top_ids; // [K]
  double *top_lp;   // [K]
};

// The per-token callback. id >= 0: a token was generated (end-of-generation tokens are not
// reported) and text[0..n) is what became final with it (may be empty: an incomplete UTF-8
// character, or text that may be the start of a stop string, is held back).
// GEN_ID_PREFILL: between prefill chunks, no text. GEN_ID_END: once after the last token, with
// the text still held (a stop string and what follows it are cut); its return is ignored.
// Returning true stops generation after this token (or before the next prefill chunk).
enum { GEN_ID_PREFILL = -1, GEN_ID_END = -2 };
typedef bool (*gen_token_fn)(void *ctx, int32_t id, const char *text, size_t n);

struct gen_params {
  struct sampler_params sp;
  int n_predict;           // tokens to generate at most (also capped by the context)
  int n_keep;              // prompt[0..n_keep) is in the model already (prompt cache); < n_prompt
  int n_batch;             // prefill tokens between callbacks; 0: the whole prompt in one call
  bool checkpoint;         // model_checkpoint after the prompt (recurrent state, prompt cache)
  int logprobs;            // K > 0: record top-K log-probabilities per step
  const char *const *stop; // [n_stop] non-empty stop strings
  int n_stop;
  gen_token_fn on_token; // may be NULL
  void *ctx;
};

enum gen_finish { GEN_FINISH_EOG, GEN_FINISH_STOP, GEN_FINISH_LENGTH, GEN_FINISH_CANCELLED };

struct gen_result {
  enum gen_finish finish;
  int n_keep; // prompt tokens that were not computed (p->n_keep)
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
// The generate loop: moves the model back to p->n_keep (model_rewind), prefills the rest of
// the prompt, then samples and decodes until an end-of-generation token, a stop string,
// p->n_predict tokens, the context's end, or the callback says stop. Allocates its buffers
// once per call, nothing per token. Fails (with a message) on a prompt longer than the
// context, an unreachable n_keep or a forward-pass error; r holds what was generated so far.
int gen_generate(struct session *s, const struct gen_params *p, const int32_t *prompt, int n_prompt,
                 struct gen_result *r);
// `ferry run`: gen_generate with the flags' sampling and length; streams decoded text to
// `out` when non-NULL and ends it with a newline.
int gen_run(struct session *s, const struct run_opts *o, const int32_t *prompt, int n_prompt,
            FILE *out, struct gen_result *r);
// Sampling parameters: flags win; then the file's general.sampling.* recommendations; then
// the Qwen3 Instruct model card's (temp 0.7, top-k 20, top-p 0.8, min-p 0).
void gen_sampling_defaults(struct session *s, const struct run_opts *o, struct sampler_params *sp);
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
