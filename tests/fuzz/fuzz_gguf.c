// tests/fuzz/fuzz_gguf.c: libFuzzer target for everything ferry derives from a GGUF file
// before it reads a weight: the header, metadata and tensor infos (gguf_open), the
// hyperparameters and layer pattern (hparams_load), the tensor-shape binding and memory
// plan of both modes (model_plan), the tokenizer built from the metadata (tok_create), and
// `ferry info`'s report (model_info_print).
//
// The input is the start of a GGUF file; the harness writes it into an in-memory file
// (memfd) followed by 16 MiB of zeros (sparse, so free), so tensor infos whose data would
// lie in that range pass the bounds checks and the deeper stages run, while larger
// offsets still exercise the past-the-end checks. Nothing may crash, leak, trip ASan/UBSan,
// or fail without a message.
//
// Seeds: tests/fuzz/corpus/fuzz_gguf (headers of small synthetic models of both
// architectures and layouts). Running it: see NOTES.md (fuzzing).
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/gguf.h"
#include "engine/hparams.h"
#include "engine/model.h"
#include "engine/model_info.h"
#include "engine/tokenizer.h"

#define PAD_BYTES (16u << 20)

static int g_fd = -1;
static char g_path[64];
static FILE *g_null;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  g_fd = memfd_create("fuzz_gguf", MFD_CLOEXEC);
  if (g_fd < 0) {
    perror("fuzz_gguf: memfd_create");
    abort();
  }
  snprintf(g_path, sizeof g_path, "/proc/self/fd/%d", g_fd);
  g_null = fopen("/dev/null", "w");
  ferry_log_set_level(FERRY_LOG_ERROR); // the stages' info lines are noise here
  return 0;
}

// A failing call must leave a message; a message must be one line.
static void check_failed(int rc) {
  if (!rc) return;
  FERRY_ASSERT(rc < 0);
  const char *m = ferry_errmsg();
  FERRY_ASSERT(strcmp(m, "unknown error") != 0);
  FERRY_ASSERT(strchr(m, '\n') == NULL);
  ferry_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (ftruncate(g_fd, 0) != 0 || pwrite(g_fd, data, size, 0) != (ssize_t)size ||
      ftruncate(g_fd, (off_t)size + PAD_BYTES) != 0)
    abort();
  ferry_clear_error();
  struct gguf_file *f = NULL;
  int rc = gguf_open(&f, g_path);
  check_failed(rc);
  if (rc) return 0;

  struct model_hparams hp;
  rc = hparams_load(&hp, f);
  check_failed(rc);
  if (!rc) {
    FERRY_ASSERT(hp.n_layer >= 1 && hp.n_layer <= hp.n_layer_file);
    FERRY_ASSERT(hp.n_head_kv >= 1 && hp.n_head % hp.n_head_kv == 0);
    FERRY_ASSERT(hp.n_expert_used >= 1 && hp.n_expert_used <= hp.n_expert);
    hparams_free(&hp);
    for (int dense = 0; dense < 2; dense++) {
      struct model_opts mo = {.exact = dense,
                              .dense_only = dense,
                              .n_ctx = 64,
                              .n_batch = 8,
                              .n_threads = 1,
                              .kv_k = FT_F16,
                              .kv_v = FT_F16};
      struct model_mem mm;
      check_failed(model_plan(f, &mo, dense ? FERRY_BACKEND_CUDA : FERRY_BACKEND_CPU, &mm));
    }
  } else {
    FERRY_ASSERT(hp.recurrent == NULL); // a failed load leaves nothing allocated
  }

  struct tokenizer *t = NULL;
  rc = tok_create(&t, f);
  check_failed(rc);
  if (!rc) {
    int32_t *ids = NULL;
    size_t n = 0;
    static const char text[] = "Hello, world! <|im_start|>user\n\xe4\xbd\xa0\xe5\xa5\xbd";
    FERRY_ASSERT(tok_encode(t, text, sizeof text - 1, true, &ids, &n) == 0);
    for (size_t i = 0; i < n; i++) FERRY_ASSERT(ids[i] >= 0 && ids[i] < tok_n_vocab(t));
    free(ids);
    tok_destroy(t);
  }

  check_failed(model_info_print(f, g_null, 64u << 20, 0, (data[size - 1] & 1) != 0, 8u << 20));
  gguf_close(f);
  return 0;
}
