// engine/synth_vocab.c: `ferry synth --vocab-only`: a GGUF with no tensors that carries the
// tokenizer of another GGUF (general.architecture and every tokenizer.* key, in the source's
// order). The tokenizer tests and --vocab-from need only these keys, so a model's
// vocabulary can be kept and shipped without its weights (tests/fixtures holds the real
// Qwen3 vocabulary this way: 5.9 MB instead of a 27 MB model).
#include <errno.h>
#include <string.h>

#include "base/base.h"
#include "engine/gguf.h"
#include "engine/gguf_write.h"
#include "engine/synth.h"

int synth_write_vocab(const char *src_path, const char *path, const char *name,
                      uint32_t *n_tokens) {
  struct gguf_file *src = NULL;
  struct gguf_writer *w = NULL;
  int rc = gguf_open(&src, src_path);
  if (rc) return ferry_fail_ctx(rc, "--vocab-from");
  const struct gguf_kv *toks = gguf_get_arr(src, "tokenizer.ggml.tokens", GGUF_STRING);
  const char *arch = gguf_get_str(src, "general.architecture");
  if (!toks || toks->arr_n == 0) {
    rc = ferry_fail(-EINVAL, "%s: no tokenizer.ggml.tokens array to copy", src_path);
    goto out;
  }
  char nm[256];
  const char *src_name = gguf_get_str(src, "general.name");
  snprintf(nm, sizeof nm, "%s", name ? name : "");
  if (!name) snprintf(nm, sizeof nm, "%.200s vocabulary", src_name ? src_name : "ferry");
  if ((rc = gguf_writer_create(&w, path, 0))) goto out;
  if (arch) rc = gguf_writer_add_str(w, "general.architecture", arch);
  if (!rc) rc = gguf_writer_add_str(w, "general.type", "vocab");
  if (!rc) rc = gguf_writer_add_str(w, "general.name", nm);
  for (int64_t i = 0; !rc && i < gguf_n_kv(src); i++) {
    const struct gguf_kv *kv = gguf_kv_at(src, i);
    if (!strncmp(kv->key, "tokenizer.", 10)) rc = gguf_writer_copy_kv(w, kv);
  }
  if (!rc) rc = gguf_writer_begin_data(w);
  if (!rc) rc = gguf_writer_finish(w);
  if (!rc && n_tokens) *n_tokens = (uint32_t)toks->arr_n;
out:
  gguf_writer_destroy(w);
  gguf_close(src);
  return rc;
}
