// tests/unit/test_hparams.c: hparams_load leaves nothing allocated when it fails. A
// qwen3next file whose layer pattern cannot be built (full_attention_interval 0, a layer
// without its tensors) used to leak the pattern array it had allocated first (issue 15;
// LeakSanitizer found it on a fuzzed file), and the plan and the session return at once
// on that failure. Also: block_count far beyond the tensors and context_length 0 fail with
// their own message.
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../check.h"
#include "base/base.h"
#include "engine/gguf.h"
#include "engine/gguf_write.h"
#include "engine/hparams.h"
#include "engine/model.h"
#include "kernels/types.h"

// A qwen3next header with token_embd only; the caller picks interval, blocks and context.
static int write_next(const char *path, uint32_t interval, uint32_t blocks, uint32_t ctx) {
  struct gguf_writer *w;
  int rc = gguf_writer_create(&w, path, 0);
  if (rc) return rc;
  const char *a = "qwen3next";
  char k[96];
#define U32(key, v) \
  if (!rc) snprintf(k, sizeof k, "%s." key, a), rc = gguf_writer_add_u32(w, k, v)
  rc = gguf_writer_add_str(w, "general.architecture", a);
  U32("block_count", blocks);
  U32("context_length", ctx);
  U32("embedding_length", 32);
  U32("attention.head_count", 2);
  U32("attention.head_count_kv", 1);
  U32("expert_count", 4);
  U32("expert_used_count", 2);
  U32("expert_feed_forward_length", 32);
  U32("expert_shared_feed_forward_length", 32);
  U32("ssm.conv_kernel", 4);
  U32("ssm.state_size", 8);
  U32("ssm.group_count", 1);
  U32("ssm.time_step_rank", 2);
  U32("ssm.inner_size", 16);
  U32("full_attention_interval", interval);
#undef U32
  uint64_t ne[2] = {32, 8};
  static float zero[32 * 8];
  if (!rc) rc = gguf_writer_add_tensor(w, "token_embd.weight", 2, ne, FT_F32);
  for (int i = 0; i < 4 && !rc; i++) { // as many tensors as blocks, so block_count is plausible
    snprintf(k, sizeof k, "pad.%d", i);
    rc = gguf_writer_add_tensor(w, k, 1, ne, FT_F32);
  }
  if (!rc) rc = gguf_writer_begin_data(w);
  for (int i = 0; i < 5 && !rc; i++)
    rc = gguf_writer_write(w, zero, i ? 32 * sizeof(float) : sizeof zero);
  if (!rc) rc = gguf_writer_finish(w);
  gguf_writer_destroy(w);
  return rc;
}

static void expect_fail(const char *path, const char *msg) {
  struct gguf_file *f = NULL;
  CHECK_EQ(gguf_open(&f, path), 0);
  if (!f) return;
  struct model_hparams hp;
  memset(&hp, 0x55, sizeof hp); // a failed load must not leave a stale pointer either
  CHECK(hparams_load(&hp, f) < 0);
  CHECK(hp.recurrent == NULL);
  CHECK(strstr(ferry_errmsg(), msg) != NULL);
  if (!strstr(ferry_errmsg(), msg)) fprintf(stderr, "message: %s\n", ferry_errmsg());
  ferry_clear_error();
  struct model_opts mo = {
      .n_ctx = 64, .n_batch = 8, .n_threads = 1, .kv_k = FT_F16, .kv_v = FT_F16};
  struct model_mem mm;
  CHECK(model_plan(f, &mo, FERRY_BACKEND_CPU, &mm) < 0); // LeakSanitizer checks the early return
  ferry_clear_error();
  gguf_close(f);
}

int main(void) {
  char path[] = "/tmp/ferry_hp_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  close(fd);
  CHECK_EQ(write_next(path, 0, 4, 4096), 0);
  expect_fail(path, "full_attention_interval is 0");
  CHECK_EQ(write_next(path, 4, 1, 4096), 0);
  expect_fail(path, "layer 0 is a DeltaNet layer");
  CHECK_EQ(write_next(path, 4, 4000000000u, 4096), 0);
  expect_fail(path, "block_count 4000000000 is larger than the file's 5 tensors allow");
  CHECK_EQ(write_next(path, 4, 1, 0), 0);
  expect_fail(path, "context_length is 0");
  unlink(path);
  CHECK_DONE();
}
