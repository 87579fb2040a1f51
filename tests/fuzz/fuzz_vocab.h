// tests/fuzz/fuzz_vocab.h: the tokenizer the fuzz targets use, the real Qwen3 vocabulary:
// $FERRY_FUZZ_MODEL, else $FERRY_FIXTURES/models/qwen3-vocab.gguf, else the repository's
// tests/fixtures (found from this file's path). A file that cannot be loaded aborts the
// target with one line naming it.
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"

static struct tokenizer *fuzz_load_vocab(const char *target) {
  char path[4096];
  const char *m = getenv("FERRY_FUZZ_MODEL"), *fx = getenv("FERRY_FIXTURES");
  if (m)
    snprintf(path, sizeof path, "%s", m);
  else if (fx)
    snprintf(path, sizeof path, "%s/models/qwen3-vocab.gguf", fx);
  else { // <repo>/tests/fuzz/fuzz_vocab.h -> <repo>/tests/fixtures
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    snprintf(path, sizeof path, "%s/../fixtures/models/qwen3-vocab.gguf", slash ? dir : ".");
  }
  struct gguf_file *f;
  struct tokenizer *tok = NULL;
  if (gguf_open(&f, path) || tok_create(&tok, f)) {
    fprintf(stderr, "%s: cannot load %s: %s (set FERRY_FUZZ_MODEL)\n", target, path,
            ferry_errmsg());
    abort();
  }
  gguf_close(f);
  return tok;
}
