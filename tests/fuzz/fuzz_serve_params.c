// tests/fuzz/fuzz_serve_params.c: libFuzzer target for `ferry serve`'s request mapping: an
// arbitrary body for each of the four generation endpoints -> serve_req_parse -> the
// tokenized prompt -> serve_req_gen_params, as serve_http.c chains them.
//
// serve_req.c is compiled into this target (like fuzz_tokenizer.c) so it carries libFuzzer's
// coverage instrumentation. Checks per input (byte 0 picks the endpoint, the rest is the
// body): nothing crashes, leaks or trips ASan/UBSan; a refusal is -EINVAL with a message;
// an accepted request has a NUL-free prompt (or is a load request), at most SERVE_MAX_STOP
// non-empty stop strings of at most SERVE_MAX_STOP_LEN bytes, sampling values in their
// ranges, and generation parameters that fit the context.
// Model for the tokenizer: tests/fuzz/fuzz_vocab.h.
// Corpus and running: see NOTES.md (Serving).
#include "engine/serve_req.c"

#include "tests/fuzz/fuzz_vocab.h"

#include <stdio.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"

static struct tokenizer *g_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  g_tok = fuzz_load_vocab("fuzz_serve_params");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0 || size > 1 << 20) return 0;
  enum serve_api api = (enum serve_api)(data[0] % 4);
  struct serve_req r;
  int rc = serve_req_parse(&r, api, (const char *)data + 1, size - 1);
  FERRY_ASSERT(rc == 0 || rc == -EINVAL || rc == -ENOMEM);
  if (rc) {
    FERRY_ASSERT(ferry_errmsg()[0]);
    serve_req_free(&r);
    return 0;
  }
  FERRY_ASSERT(r.model && r.n_stop >= 0 && r.n_stop <= SERVE_MAX_STOP);
  for (int i = 0; i < r.n_stop; i++)
    FERRY_ASSERT(r.stop[i][0] && strlen(r.stop[i]) <= SERVE_MAX_STOP_LEN);
  FERRY_ASSERT(!r.temp_set || (r.temp >= 0 && r.temp <= 100));
  FERRY_ASSERT(!r.top_p_set || (r.top_p >= 0 && r.top_p <= 1));
  FERRY_ASSERT(!r.min_p_set || (r.min_p >= 0 && r.min_p <= 1));
  FERRY_ASSERT(r.top_k >= 0 && r.num_ctx >= 0);
  if (r.load_only) {
    FERRY_ASSERT(api == SERVE_OLLAMA_CHAT || api == SERVE_OLLAMA_GENERATE);
    serve_req_free(&r);
    return 0;
  }
  FERRY_ASSERT(r.prompt && strlen(r.prompt) == r.prompt_len);
  int32_t *ids = NULL;
  size_t n = 0;
  FERRY_ASSERT(tok_encode(g_tok, r.prompt, r.prompt_len, true, &ids, &n) == 0);
  struct serve_defaults d = {.n_ctx = 64 + data[0],
                             .n_predict = data[0] & 1 ? 16 : -1,
                             .sp = {.temp = 0.7f, .top_k = 20, .top_p = 0.8f}};
  struct gen_params gp = {0};
  rc = serve_req_gen_params(&r, (int)n, &d, 7, &gp);
  FERRY_ASSERT(rc == 0 || rc == -EINVAL);
  if (rc == 0) {
    int ctx = r.num_ctx > 0 && r.num_ctx < d.n_ctx ? (int)r.num_ctx : d.n_ctx;
    FERRY_ASSERT(n > 0 && (int)n < ctx && gp.n_predict >= 0 && (int)n + gp.n_predict <= ctx);
    FERRY_ASSERT(gp.n_stop == r.n_stop && gp.sp.temp >= 0 && gp.sp.top_p <= 1);
  } else {
    FERRY_ASSERT(n == 0 || (int)n >= d.n_ctx || (r.num_ctx > 0 && (int64_t)n >= r.num_ctx));
  }
  free(ids);
  serve_req_free(&r);
  return 0;
}
