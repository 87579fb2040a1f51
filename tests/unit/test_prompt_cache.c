// tests/unit/test_prompt_cache.c: what the server's prompt cache stands on, on the tiny
// fixtures: model_checkpoint / model_rewind (the recurrent state comes back bit for bit from
// the checkpoint; unreachable positions fail; KV-only models rewind anywhere), and the
// shared generate loop (a cached prefix gives the same tokens as a fresh prefill, stop
// strings cut the text where they first appear, even across tokens, the callback sees
// exactly the final text, and can cancel).
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../check.h"
#include "base/base.h"
#include "engine/generate.h"

static char g_path[4096];

static struct session *open_model(const char *name) {
  const char *fx = getenv("FERRY_FIXTURES");
  if (!fx) SKIP("FERRY_FIXTURES is not set");
  snprintf(g_path, sizeof g_path, "%s/models/%s", fx, name);
  struct run_opts o = {.model = g_path,
                       .n_ctx = 256,
                       .n_batch = 64,
                       .threads = 1,
                       .kv_k = FT_F32,
                       .kv_v = FT_F32,
                       .exact = true,
                       .no_progress = true,
                       .ram = 1ull << 30,
                       .mode = MODE_FULL,
                       .prompt_cache = true};
  struct session *s;
  if (session_open(&s, &o)) {
    fprintf(stderr, "cannot open %s: %s\n", g_path, ferry_errmsg());
    exit(1);
  }
  return s;
}

static void ids_of(int32_t *ids, int n, int seed) {
  for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 7919 + seed * 104729) % 3000) + 20;
}

// Logits after `tail` following a rewind equal those of the uninterrupted sequence.
static void check_rewind(const char *name, bool recurrent) {
  struct session *s = open_model(name);
  struct model *m = session_model(s);
  int nv = (int)model_hparams(m)->n_vocab;
  float *l1 = malloc(sizeof(float) * nv), *l2 = malloc(sizeof(float) * nv),
        *l3 = malloc(sizeof(float) * nv);
  int32_t a[40], b[12], ab[52];
  ids_of(a, 40, 1), ids_of(b, 12, 2);
  memcpy(ab, a, sizeof a), memcpy(ab + 40, b, sizeof b);

  model_reset(m);
  CHECK_EQ(model_forward(m, a, 40, NULL, l1), 0);
  CHECK_EQ(model_checkpoint(m), 0);
  CHECK_EQ(model_forward(m, b, 12, NULL, l1), 0);
  CHECK_EQ(model_pos(m), 52);
  CHECK_EQ(model_rewind(m, 53), -EINVAL); // beyond the sequence
  CHECK_EQ(model_rewind(m, 40), 0);       // the checkpoint
  CHECK_EQ(model_pos(m), 40);
  CHECK_EQ(model_forward(m, b, 12, NULL, l2), 0);
  CHECK(!memcmp(l1, l2, sizeof(float) * nv)); // same state, same computation: bit for bit
  int rc = model_rewind(m, 20);
  CHECK_EQ(rc, recurrent ? -EINVAL : 0);
  if (recurrent) CHECK(strstr(ferry_errmsg(), "checkpoint at 40") != NULL);
  CHECK_EQ(model_rewind(m, 0), 0);
  CHECK_EQ(model_pos(m), 0);
  CHECK_EQ(model_forward(m, ab, 52, NULL, l3), 0); // one prefill: chunking may differ slightly
  double worst = 0;
  for (int i = 0; i < nv; i++)
    if (fabs(l3[i] - l1[i]) > worst) worst = fabs(l3[i] - l1[i]);
  CHECK(worst < 1e-3);
  // a rewind before the checkpoint dropped it (those positions were overwritten)
  CHECK_EQ(model_rewind(m, 40), recurrent ? -EINVAL : 0);
  free(l1), free(l2), free(l3);
  session_close(s);
}

struct seen {
  char text[8192];
  size_t len;
  int tokens, prefill, ends, cancel_after;
};

static bool on_token(void *ctx, int32_t id, const char *text, size_t n) {
  struct seen *v = ctx;
  if (id == GEN_ID_PREFILL) return v->prefill++, false;
  if (id == GEN_ID_END) v->ends++;
  if (id >= 0) v->tokens++;
  CHECK(v->len + n < sizeof v->text);
  memcpy(v->text + v->len, text, n);
  v->len += n;
  return v->cancel_after && v->tokens >= v->cancel_after;
}

static int gen(struct session *s, const int32_t *p, int n, int keep, const char *const *stop,
               int n_stop, struct seen *v, struct gen_result *r) {
  struct gen_params gp = {.sp = {.temp = 0},
                          .n_predict = 24,
                          .n_keep = keep,
                          .n_batch = 16,
                          .checkpoint = true,
                          .stop = stop,
                          .n_stop = n_stop,
                          .on_token = on_token,
                          .ctx = v};
  memset(v->text, 0, sizeof v->text);
  v->len = 0, v->tokens = v->prefill = v->ends = 0;
  int rc = gen_generate(s, &gp, p, n, r);
  CHECK_EQ(rc, 0);
  CHECK_EQ(v->len, r->text_len); // the callback saw exactly the final text
  CHECK(!memcmp(v->text, r->text, r->text_len));
  return rc;
}

static void check_loop(const char *name) {
  struct session *s = open_model(name);
  const struct tokenizer *tok = session_tokenizer(s);
  int32_t p[60];
  ids_of(p, 60, 3);
  struct seen v = {0};
  struct gen_result r0, r1, r2;

  // fresh, then the same prompt extended, computed from the cache and from scratch
  gen(s, p, 40, 0, NULL, 0, &v, &r0);
  CHECK_EQ(v.prefill, 2); // 40 tokens in chunks of 16: callbacks after the first two
  CHECK_EQ(v.ends, 1);
  CHECK_EQ(r0.finish, GEN_FINISH_LENGTH);
  CHECK_EQ(r0.n_generated, 24);
  gen(s, p, 60, 40, NULL, 0, &v, &r1); // the checkpoint is at 40
  CHECK_EQ(r1.n_keep, 40);
  gen(s, p, 60, 0, NULL, 0, &v, &r2);
  CHECK_EQ(r1.n_generated, r2.n_generated);
  CHECK(!memcmp(r1.tokens, r2.tokens, sizeof(int32_t) * r2.n_generated));
  gen_result_free(&r1), gen_result_free(&r2);

  // stop strings: the piece of generated token 5 alone, and tokens 4 and 5 together (across
  // a token boundary); the text ends right before the first occurrence in the full text
  const char *b4, *b5;
  size_t n4, n5;
  CHECK_EQ(tok_piece(tok, r0.tokens[4], &b4, &n4), 0);
  CHECK_EQ(tok_piece(tok, r0.tokens[5], &b5, &n5), 0);
  char one[64] = {0}, two[128] = {0}, never[160] = {0};
  if (n4 == 0 || n5 == 0 || n4 + n5 >= sizeof one) {
    fprintf(stderr, "%s: tokens 4/5 have no text, stop-string cases skipped\n", name);
  } else {
    memcpy(one, b5, n5);
    memcpy(two, b4, n4), memcpy(two + n4, b5, n5);
    snprintf(never, sizeof never, "%s\x01\x02never", two); // its prefix appears: held, then told
    const char *stops[][2] = {{one, NULL}, {two, NULL}, {never, NULL}, {never, two}};
    int counts[] = {1, 1, 1, 2};
    for (int c = 0; c < 4; c++) {
      const char *want = c == 2 ? NULL : two;
      size_t cut = r0.text_len;
      const char *first = strstr(r0.text, c == 0 ? one : two);
      if (want && first) cut = (size_t)(first - r0.text);
      gen(s, p, 40, 0, stops[c], counts[c], &v, &r1);
      CHECK_EQ(r1.text_len, cut);
      CHECK(!memcmp(r1.text, r0.text, cut));
      CHECK_EQ(r1.finish, c == 2 ? GEN_FINISH_LENGTH : GEN_FINISH_STOP);
      gen_result_free(&r1);
    }
  }

  // cancel from the callback: stops right after that token
  v.cancel_after = 3;
  gen(s, p, 40, 0, NULL, 0, &v, &r1);
  CHECK_EQ(r1.finish, GEN_FINISH_CANCELLED);
  CHECK_EQ(r1.n_generated, 3);
  CHECK(!memcmp(r1.tokens, r0.tokens, 3 * sizeof(int32_t)));
  CHECK_EQ(model_pos(session_model(s)), 40 + 2); // the last token was not computed
  gen_result_free(&r1);
  gen_result_free(&r0);
  session_close(s);
}

int main(void) {
  check_rewind("pub-qwen3next-tiny-F32.gguf", true);
  check_rewind("pub-qwen3moe-tiny-F32.gguf", false);
  check_loop("pub-qwen3next-tiny-F32.gguf");
  check_loop("pub-qwen3moe-tiny-F32.gguf");
  CHECK_DONE();
}
