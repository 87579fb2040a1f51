// engine/serve_req.h: `ferry serve`'s mapping from a request body (OpenAI or Ollama JSON) to
// what the generate loop needs: the prompt text (chat messages rendered with the ChatML
// template), sampling parameters, length, stop strings, streaming flags.
//
// Pure: no HTTP, no model, no globals; any thread may call it. Every bad input (invalid JSON,
// nesting deeper than SERVE_MAX_DEPTH, a known field of the wrong type or out of range, an
// unsupported feature such as images, tools or n > 1) fails with -EINVAL and a message that
// names the field, meant for the client. Unknown fields are ignored (clients send many).
// Memory is bounded by a constant times the body length. tests/fuzz/fuzz_serve_params.c
// fuzzes it.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/generate.h"

enum serve_api {
  SERVE_OAI_CHAT,        // POST /v1/chat/completions
  SERVE_OAI_COMPLETION,  // POST /v1/completions
  SERVE_OLLAMA_CHAT,     // POST /api/chat
  SERVE_OLLAMA_GENERATE, // POST /api/generate
};

enum { SERVE_MAX_DEPTH = 64, SERVE_MAX_STOP = 16, SERVE_MAX_STOP_LEN = 256 };

struct serve_req {
  enum serve_api api;
  char *model;  // requested model name, "" when absent
  char *prompt; // the text to tokenize (special tokens parsed), NUL-terminated
  size_t prompt_len;
  bool load_only;     // Ollama: no prompt / no messages = "load the model" (answered at once)
  bool stream;        // OpenAI default false, Ollama default true
  bool include_usage; // OpenAI stream_options.include_usage
  int64_t n_predict;  // < 0: until the context is full; INT64_MIN: not given
  int64_t num_ctx;    // Ollama options.num_ctx; 0: not given
  float temp, top_p, min_p;
  int top_k;
  uint64_t seed;
  bool temp_set, top_p_set, min_p_set, top_k_set, seed_set;
  char *stop[SERVE_MAX_STOP]; // NUL-terminated, non-empty, valid UTF-8
  int n_stop;
};
#define SERVE_N_PREDICT_UNSET INT64_MIN

// Parses body[0..len) for `api` into r (which the caller frees with serve_req_free, also
// after a failure). Chat messages are rendered as `ferry run` renders one turn (ChatML, no
// think block), so the same single question gives the same prompt. 0, -EINVAL (client
// error, message set) or -ENOMEM.
int serve_req_parse(struct serve_req *r, enum serve_api api, const char *body, size_t len);
void serve_req_free(struct serve_req *r);

// What the server falls back on for fields a request leaves out.
struct serve_defaults {
  int n_ctx;                // the loaded context
  int n_predict;            // max tokens of a request that gives none; < 0: up to the context
  struct sampler_params sp; // the flags' and the file's sampling recommendations
  bool seed_fixed;          // requests without a seed use sp.seed (--seed); else random_seed
};
// Checks a prompt of n_prompt tokens against the context (the server's, or a smaller num_ctx)
// and fills gp's sampling, length and stop strings (pointing into r, which must outlive gp).
// -EINVAL with a message that names the limit (empty prompt, prompt not shorter than the
// context).
int serve_req_gen_params(const struct serve_req *r, int n_prompt, const struct serve_defaults *d,
                         uint64_t random_seed, struct gen_params *gp);
