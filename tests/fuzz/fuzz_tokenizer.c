// tests/fuzz/fuzz_tokenizer.c: libFuzzer target for the tokenizer (encode, decode, streaming
// decode, chat rendering) on arbitrary bytes with the real 151,936-token Qwen3 vocabulary.
//
// The tokenizer source is compiled into this target (not taken from ferry_engine) so that it
// carries libFuzzer's coverage instrumentation, which the module libraries do not have; the
// static library's copy is then never linked in.
//
// Checks per input (byte 0 picks the flags, the rest is the text):
//   - every id is in range; nothing crashes, leaks or trips ASan/UBSan;
//   - streaming decode == tok_decode;
//   - re-encoding the decoded text gives the same ids (NFC and the pre-tokenizer are stable);
//   - if no byte is >= 0xCC (so NFC cannot apply), decode(encode(s)) == s byte for byte,
//     invalid UTF-8 included.
// Vocabulary: tests/fuzz/fuzz_vocab.h (the vocabulary-only GGUF of the real Qwen3 tokenizer).
// Seeds: tests/fuzz/corpus/fuzz_tokenizer. Running it: see NOTES.md (fuzzing).
#include "engine/tokenizer.c"

#include "tests/fuzz/fuzz_vocab.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct tokenizer *g_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  g_tok = fuzz_load_vocab("fuzz_tokenizer");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0 || size > 1 << 16) return 0;
  bool parse_special = data[0] & 1;
  const char *text = (const char *)data + 1;
  size_t len = size - 1;
  const struct tokenizer *t = g_tok;

  int32_t *ids;
  size_t n;
  FERRY_ASSERT(tok_encode(t, text, len, parse_special, &ids, &n) == 0);
  FERRY_ASSERT((n == 0) == (ids == NULL));
  FERRY_ASSERT(n <= 3 * len); // one token per byte at most, and NFC grows UTF-8 3x at most
  for (size_t i = 0; i < n; i++) FERRY_ASSERT(ids[i] >= 0 && ids[i] < tok_n_vocab(t));

  // Special tokens must be shown when they were parsed, or the text would lose them.
  char *dec;
  size_t dl;
  FERRY_ASSERT(tok_decode(t, ids, n, parse_special, &dec, &dl) == 0);

  struct tok_decoder *d;
  FERRY_ASSERT(tok_decoder_create(&d, t, parse_special) == 0);
  size_t k = 0;
  for (size_t i = 0; i <= n; i++) {
    const char *b;
    size_t bl;
    if (i < n)
      FERRY_ASSERT(tok_decoder_push(d, ids[i], &b, &bl) == 0);
    else
      tok_decoder_flush(d, &b, &bl);
    FERRY_ASSERT(k + bl <= dl && !memcmp(dec + k, b, bl));
    k += bl;
  }
  FERRY_ASSERT(k == dl);
  tok_decoder_destroy(d);

  bool nfc_free = true;
  for (size_t i = 0; i < len; i++) nfc_free &= (uint8_t)text[i] < 0xCC;
  if (nfc_free) FERRY_ASSERT(dl == len && !memcmp(dec, text, len));

  int32_t *ids2;
  size_t n2;
  FERRY_ASSERT(tok_encode(t, dec, dl, parse_special, &ids2, &n2) == 0);
  FERRY_ASSERT(n2 == n && (n == 0 || !memcmp(ids, ids2, n * sizeof *ids)));
  free(ids2);

  if (!memchr(text, 0, len) && len < 4096) {
    char *u = malloc(len + 1), *r;
    memcpy(u, text, len);
    u[len] = 0;
    FERRY_ASSERT(tok_render_chat(t, (data[0] & 2) ? "sys" : NULL, u, TOK_CHAT_NO_THINK, &r) == 0);
    FERRY_ASSERT(strstr(r, u) != NULL);
    free(r);
    free(u);
  }
  free(dec);
  free(ids);
  return 0;
}
