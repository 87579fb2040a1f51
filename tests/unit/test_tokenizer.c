// tests/unit/test_tokenizer.c: the tokenizer against llama.cpp's goldens (both vocabularies:
// ids with parse_special true and false, pieces, round trip), the golden prompts, the ChatML
// rendering, the EOG set, NFC, streaming decode, invalid UTF-8 and empty input, an
// independent naive BPE on random words, and decode(encode(s)) == NFC(s) on thousands of
// random mixed-script strings. The full vocabulary is the vocabulary-only GGUF of the real
// Qwen3 tokenizer (tests/fixtures/models/qwen3-vocab.gguf, written by `ferry synth
// --vocab-only` from the 27 MB full-vocabulary fixture model). Fixtures: $FERRY_FIXTURES,
// else the repository's tests/fixtures; missing fixtures fail the test.
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "base/base.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "tests/check.h"

// ---- a minimal JSON reader (enough for the fixture files) -------------------------------

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };
struct jval {
  enum jtype type;
  double num;
  char *str;          // J_STR: bytes (may contain NUL), len in n
  size_t n;           // J_STR length; J_ARR/J_OBJ element count
  struct jval *items; // J_ARR / J_OBJ values
  char **keys;        // J_OBJ
};

struct jparser {
  const char *s;
  size_t i, n;
  bool err;
};

static void jskip(struct jparser *p) {
  while (p->i < p->n && strchr(" \t\r\n", p->s[p->i])) p->i++;
}

static unsigned jhex4(struct jparser *p) {
  unsigned v = 0;
  for (int k = 0; k < 4; k++) {
    char c = p->i < p->n ? p->s[p->i++] : 0;
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      v |= (unsigned)(c - 'A' + 10);
    else
      p->err = true;
  }
  return v;
}

static char *jstring(struct jparser *p, size_t *len) {
  char *o = malloc(p->n - p->i + 1);
  size_t k = 0;
  p->i++; // opening quote
  while (p->i < p->n && p->s[p->i] != '"') {
    char c = p->s[p->i++];
    if (c != '\\') {
      o[k++] = c;
      continue;
    }
    c = p->s[p->i++];
    switch (c) {
      case 'n': o[k++] = '\n'; break;
      case 't': o[k++] = '\t'; break;
      case 'r': o[k++] = '\r'; break;
      case 'b': o[k++] = '\b'; break;
      case 'f': o[k++] = '\f'; break;
      case 'u': {
        unsigned cp = jhex4(p);
        if (cp >= 0xD800 && cp < 0xDC00 && p->i + 1 < p->n && p->s[p->i] == '\\' &&
            p->s[p->i + 1] == 'u') {
          p->i += 2;
          unsigned lo = jhex4(p);
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        k += (size_t)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)o + k);
        break;
      }
      default: o[k++] = c; break;
    }
  }
  p->i++; // closing quote
  o[k] = 0;
  *len = k;
  return o;
}

static void jparse(struct jparser *p, struct jval *v) {
  memset(v, 0, sizeof *v);
  jskip(p);
  if (p->i >= p->n) {
    p->err = true;
    return;
  }
  char c = p->s[p->i];
  if (c == '{' || c == '[') {
    bool obj = c == '{';
    v->type = obj ? J_OBJ : J_ARR;
    p->i++;
    size_t cap = 0;
    for (;;) {
      jskip(p);
      if (p->i < p->n && p->s[p->i] == (obj ? '}' : ']')) {
        p->i++;
        return;
      }
      if (v->n == cap) {
        cap = cap ? cap * 2 : 8;
        v->items = realloc(v->items, cap * sizeof *v->items);
        if (obj) v->keys = realloc(v->keys, cap * sizeof *v->keys);
      }
      if (obj) {
        size_t kl;
        v->keys[v->n] = jstring(p, &kl);
        jskip(p);
        p->i++; // ':'
      }
      jparse(p, &v->items[v->n++]);
      if (p->err) return;
      jskip(p);
      if (p->i < p->n && p->s[p->i] == ',') p->i++;
    }
  } else if (c == '"') {
    v->type = J_STR;
    v->str = jstring(p, &v->n);
  } else if (!strncmp(p->s + p->i, "true", 4) || !strncmp(p->s + p->i, "false", 5)) {
    v->type = J_BOOL;
    v->num = p->s[p->i] == 't';
    p->i += p->s[p->i] == 't' ? 4 : 5;
  } else if (!strncmp(p->s + p->i, "null", 4)) {
    v->type = J_NULL;
    p->i += 4;
  } else {
    char *end;
    v->type = J_NUM;
    v->num = strtod(p->s + p->i, &end);
    if (end == p->s + p->i) p->err = true;
    p->i = (size_t)(end - p->s);
  }
}

static const struct jval *jget(const struct jval *o, const char *key) {
  if (!o || o->type != J_OBJ) return NULL;
  for (size_t i = 0; i < o->n; i++)
    if (!strcmp(o->keys[i], key)) return &o->items[i];
  return NULL;
}

static void jfree(struct jval *v) {
  for (size_t i = 0; i < v->n && (v->type == J_ARR || v->type == J_OBJ); i++) {
    jfree(&v->items[i]);
    if (v->type == J_OBJ) free(v->keys[i]);
  }
  free(v->items);
  free(v->keys);
  free(v->str);
}

static char *read_file(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return NULL;
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  if (fread(b, 1, (size_t)n, fp) != (size_t)n) {
    free(b);
    fclose(fp);
    return NULL;
  }
  fclose(fp);
  b[n] = 0;
  *len = (size_t)n;
  return b;
}

static bool load_json(const char *path, struct jval *v) {
  size_t n;
  char *s = read_file(path, &n);
  if (!s) return false;
  struct jparser p = {s, 0, n, false};
  jparse(&p, v);
  free(s);
  return !p.err;
}

// ---- helpers ----------------------------------------------------------------------------

static const char *g_fix;
#define FULL_VOCAB "qwen3-vocab" // the real Qwen3 tokenizer, 151,936 ids, no tensors

static struct tokenizer *load_tok(const char *model) {
  char path[4096];
  snprintf(path, sizeof path, "%s/models/%s", g_fix, model);
  struct gguf_file *f;
  if (gguf_open(&f, path)) {
    fprintf(stderr, "cannot open %s: %s\n", path, ferry_errmsg());
    return NULL;
  }
  struct tokenizer *t = NULL;
  if (tok_create(&t, f)) fprintf(stderr, "tok_create %s: %s\n", path, ferry_errmsg());
  gguf_close(f);
  return t;
}

static bool ids_equal(const int32_t *ids, size_t n, const struct jval *arr) {
  if (!arr || arr->type != J_ARR || arr->n != n) return false;
  for (size_t i = 0; i < n; i++)
    if (ids[i] != (int32_t)arr->items[i].num) return false;
  return true;
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
  fprintf(stderr, "  %s:", what);
  for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
  fprintf(stderr, "\n");
}

static void check_fixture_file(const char *json, const char *model) {
  char path[4096];
  snprintf(path, sizeof path, "%s/tokenizer/%s", g_fix, json);
  struct jval root;
  CHECK(load_json(path, &root));
  struct tokenizer *t = load_tok(model);
  CHECK(t != NULL);
  if (!t) return;
  const struct jval *strs = jget(&root, "strings");
  CHECK(strs && strs->n >= 26);
  int n_ok = 0;
  for (size_t si = 0; strs && si < strs->n; si++) {
    const struct jval *s = &strs->items[si];
    const struct jval *text = jget(s, "text"), *id = jget(s, "id");
    int32_t *ids;
    size_t n;
    bool ok = true;
    CHECK_EQ(tok_encode(t, text->str, text->n, true, &ids, &n), 0);
    if (!ids_equal(ids, n, jget(s, "llama_cpp_ids"))) {
      fprintf(stderr, "%s/%s: ids differ\n", json, id->str);
      print_ids("got", ids, n);
      ok = false;
    }
    // pieces: a string (UTF-8) or an array of bytes
    const struct jval *pieces = jget(s, "pieces");
    for (size_t k = 0; ok && k < n && pieces && k < pieces->n; k++) {
      const char *b;
      size_t bl;
      CHECK_EQ(tok_piece(t, ids[k], &b, &bl), 0);
      const struct jval *pc = &pieces->items[k];
      bool same;
      if (pc->type == J_STR) {
        same = bl == pc->n && !memcmp(b, pc->str, bl);
      } else {
        same = bl == pc->n;
        for (size_t j = 0; same && j < bl; j++) same = (uint8_t)b[j] == (uint8_t)pc->items[j].num;
      }
      if (!same) {
        fprintf(stderr, "%s/%s: piece %zu of id %d differs\n", json, id->str, k, ids[k]);
        ok = false;
      }
    }
    if (pieces && pieces->n != n) ok = false;
    char *dec;
    size_t dl;
    CHECK_EQ(tok_decode(t, ids, n, true, &dec, &dl), 0);
    const struct jval *detok = jget(s, "detokenized");
    if (!(dl == detok->n && !memcmp(dec, detok->str, dl))) {
      fprintf(stderr, "%s/%s: detokenized text differs\n", json, id->str);
      ok = false;
    }
    free(dec);
    free(ids);
    CHECK_EQ(tok_encode(t, text->str, text->n, false, &ids, &n), 0);
    if (!ids_equal(ids, n, jget(s, "llama_cpp_ids_parse_special_false"))) {
      fprintf(stderr, "%s/%s: ids (parse_special=false) differ\n", json, id->str);
      print_ids("got", ids, n);
      ok = false;
    }
    free(ids);
    CHECK(ok);
    n_ok += ok;
  }
  fprintf(stderr, "%s on %s: %d/%zu strings match\n", json, model, n_ok, strs ? strs->n : 0);
  tok_destroy(t);
  jfree(&root);
}

static void check_golden_prompts(void) {
  // golden file -> the GGUF holding its tokenizer
  static const char *const models[] = {"qwen3moe-tiny-Q8_0", "qwen3next-tiny-Q8_0",
                                       "pub-qwen3moe-tiny-F32", "pub-qwen3moe-kq-Q4_K_M",
                                       "pub-qwen3next-legacy-kq-Q4_K_M"};
  int n_prompts = 0;
  for (size_t m = 0; m < sizeof models / sizeof *models; m++) {
    char path[4096], gg[512];
    snprintf(path, sizeof path, "%s/golden/%s.golden.json", g_fix, models[m]);
    struct jval root;
    CHECK(load_json(path, &root));
    snprintf(gg, sizeof gg, "%s.gguf", strncmp(models[m], "pub-", 4) ? FULL_VOCAB : models[m]);
    struct tokenizer *t = load_tok(gg);
    CHECK(t != NULL);
    const struct jval *ps = jget(&root, "prompts");
    for (size_t i = 0; t && ps && i < ps->n; i++) {
      const struct jval *p = &ps->items[i];
      const struct jval *text = jget(p, "prompt_text");
      int32_t *ids;
      size_t n;
      CHECK_EQ(tok_encode(t, text->str, text->n, true, &ids, &n), 0);
      bool ok = ids_equal(ids, n, jget(p, "prompt_token_ids"));
      if (!ok) {
        fprintf(stderr, "%s prompt %s: ids differ\n", models[m], jget(p, "id")->str);
        print_ids("got", ids, n);
      }
      CHECK(ok);
      free(ids);
      n_prompts++;
      const struct jval *msgs = jget(p, "messages");
      if (msgs && msgs->type == J_ARR) {
        const char *sys = NULL, *user = NULL;
        for (size_t k = 0; k < msgs->n; k++) {
          const char *role = jget(&msgs->items[k], "role")->str;
          const char *content = jget(&msgs->items[k], "content")->str;
          if (!strcmp(role, "system")) sys = content;
          if (!strcmp(role, "user")) user = content;
        }
        char *r;
        CHECK_EQ(tok_render_chat(t, sys, user, 0, &r), 0);
        CHECK(r && !strcmp(r, text->str));
        free(r);
      }
    }
    tok_destroy(t);
    jfree(&root);
  }
  CHECK_EQ(n_prompts, 15);
}

static void check_eog_and_misc(void) {
  struct tokenizer *t = load_tok(FULL_VOCAB ".gguf");
  CHECK(t != NULL);
  if (!t) return;
  CHECK_EQ(tok_n_vocab(t), 151936);
  CHECK_EQ(tok_eos(t), 151645);
  static const int32_t eog_full[] = {151643, 151645, 151662, 151663, 151664, 128247};
  int n_eog = 0;
  for (int32_t i = 0; i < tok_n_vocab(t); i++) n_eog += tok_is_eog(t, i);
  CHECK_EQ(n_eog, 6);
  for (size_t i = 0; i < 6; i++) CHECK(tok_is_eog(t, eog_full[i]));
  CHECK(!tok_is_eog(t, -1) && !tok_is_eog(t, 151936) && !tok_is_eog(t, 151644));
  CHECK_EQ(tok_token_type(t, 151644), TOK_TYPE_CONTROL);
  CHECK_EQ(tok_token_type(t, 151667), TOK_TYPE_USER_DEFINED);
  CHECK_EQ(tok_token_type(t, 151700), TOK_TYPE_UNUSED);
  CHECK_EQ(tok_token_type(t, 9707), TOK_TYPE_NORMAL);
  CHECK_EQ(tok_find(t, "<think>", 7), 151667);
  CHECK_EQ(tok_find(t, "no such token", 13), -1);

  // Verified ids (MODEL_SPEC §3.7) and the digits rule.
  int32_t *ids;
  size_t n;
  CHECK_EQ(tok_encode(t, "42", 2, true, &ids, &n), 0);
  CHECK(n == 2 && ids[0] == 19 && ids[1] == 17);
  free(ids);
  CHECK_EQ(tok_encode(t, "<|im_start|>", 12, false, &ids, &n), 0);
  int32_t plain[] = {27, 91, 318, 4906, 91, 29};
  CHECK(n == 6 && !memcmp(ids, plain, sizeof plain));
  free(ids);

  // Empty input and NULL with length 0; NULL with a length is an error, not a crash.
  CHECK_EQ(tok_encode(t, "", 0, true, &ids, &n), 0);
  CHECK(n == 0 && ids == NULL);
  CHECK_EQ(tok_encode(t, NULL, 0, false, &ids, &n), 0);
  CHECK(n == 0 && ids == NULL);
  CHECK(tok_encode(t, NULL, 5, false, &ids, &n) < 0);
  const char *pb;
  size_t pl;
  CHECK(tok_piece(t, -1, &pb, &pl) < 0 && tok_piece(t, 151936, &pb, &pl) < 0);
  int32_t bad = 151936;
  char *dec;
  size_t dl;
  CHECK(tok_decode(t, &bad, 1, false, &dec, &dl) < 0);

  // CONTROL tokens are hidden unless asked for; USER_DEFINED are text.
  int32_t mix[] = {151644, 872, 198, 151667, 151645};
  CHECK_EQ(tok_decode(t, mix, 5, false, &dec, &dl), 0);
  CHECK(!strcmp(dec, "user\n<think>"));
  free(dec);
  CHECK_EQ(tok_decode(t, mix, 5, true, &dec, &dl), 0);
  CHECK(!strcmp(dec, "<|im_start|>user\n<think><|im_end|>"));
  free(dec);

  // Streaming: a partial UTF-8 sequence is held until its last byte arrives; bytes that can
  // never complete are passed through as soon as that is certain.
  {
    struct tok_decoder *d;
    const char *b;
    size_t bl;
    CHECK_EQ(tok_decoder_create(&d, t, false), 0);
    CHECK_EQ(tok_decoder_push(d, 26525, &b, &bl), 0); // " \xF0\x9F\x98"
    CHECK(bl == 1 && b[0] == ' ');
    CHECK_EQ(tok_decoder_push(d, 151644, &b, &bl), 0); // <|im_start|>: hidden, holds on
    CHECK_EQ(bl, 0);
    CHECK_EQ(tok_decoder_push(d, 114, &b, &bl), 0); // "\xB6" completes U+1F636
    CHECK(bl == 4 && !memcmp(b, "\xF0\x9F\x98\xB6", 4));
    CHECK_EQ(tok_decoder_push(d, 378, &b, &bl), 0); // "\xE2\x80" (first 2 of 3)
    CHECK_EQ(bl, 0);
    CHECK_EQ(tok_decoder_push(d, 9707, &b, &bl), 0); // "Hello": the held bytes cannot complete
    CHECK(bl == 7 && !memcmp(b, "\xE2\x80Hello", 7));
    CHECK(tok_decoder_push(d, -3, &b, &bl) < 0);
    CHECK_EQ(tok_decoder_push(d, 378, &b, &bl), 0);
    tok_decoder_flush(d, &b, &bl); // end of stream: whatever is held comes out
    CHECK(bl == 2 && !memcmp(b, "\xE2\x80", 2));
    tok_decoder_flush(d, &b, &bl);
    CHECK_EQ(bl, 0);
    tok_decoder_destroy(d);
    tok_decoder_destroy(NULL);
  }

  // NFC: decomposed input gives the ids of the composed text (HF semantics).
  int32_t *a, *b;
  size_t na, nb;
  const char *dec_e =
                 "caf"
                 "e\xCC\x81",
             *comp_e = "caf\xC3\xA9";
  CHECK_EQ(tok_encode(t, dec_e, strlen(dec_e), false, &a, &na), 0);
  CHECK_EQ(tok_encode(t, comp_e, strlen(comp_e), false, &b, &nb), 0);
  CHECK(na == nb && na > 0 && !memcmp(a, b, na * sizeof *a));
  free(a);
  free(b);
  const char *angstrom = "\xE2\x84\xAB", *a_ring = "\xC3\x85"; // U+212B -> U+00C5
  CHECK_EQ(tok_encode(t, angstrom, 3, false, &a, &na), 0);
  CHECK_EQ(tok_encode(t, a_ring, 2, false, &b, &nb), 0);
  CHECK(na == nb && !memcmp(a, b, na * sizeof *a));
  free(a);
  free(b);
  const char *jamo = "\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB", *hangul = "\xED\x95\x9C"; // 한
  CHECK_EQ(tok_encode(t, jamo, strlen(jamo), false, &a, &na), 0);
  CHECK_EQ(tok_encode(t, hangul, strlen(hangul), false, &b, &nb), 0);
  CHECK(na == nb && !memcmp(a, b, na * sizeof *a));
  free(a);
  free(b);

  // Whitespace semantics: "   hi" -> "  ", " hi"; U+180E is not whitespace.
  CHECK_EQ(tok_encode(t, "   hi", 5, false, &ids, &n), 0);
  CHECK_EQ(n, 2);
  if (n == 2) {
    CHECK_EQ(tok_piece(t, ids[0], &pb, &pl), 0);
    CHECK(pl == 2 && !memcmp(pb, "  ", 2));
    CHECK_EQ(tok_piece(t, ids[1], &pb, &pl), 0);
    CHECK(pl == 3 && !memcmp(pb, " hi", 3));
  }
  free(ids);

  // Chat: the non-thinking/hybrid decision and the empty think block.
  char *r;
  CHECK_EQ(tok_render_chat(t, NULL, "Hi there", 0, &r), 0);
  CHECK(!strcmp(r, "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"));
  free(r);
  CHECK_EQ(tok_render_chat(t, NULL, "Hi", TOK_CHAT_NO_THINK, &r), 0);
  const char *tail = "assistant\n<think>\n\n</think>\n\n";
  bool has_block = strlen(r) > strlen(tail) && !strcmp(r + strlen(r) - strlen(tail), tail);
  CHECK(has_block == tok_chat_is_hybrid(t));
  free(r);
  CHECK(tok_render_chat(t, "sys", NULL, 0, &r) < 0);
  tok_destroy(t);

  t = load_tok("pub-qwen3next-tiny-F32.gguf");
  CHECK(t != NULL);
  if (!t) return;
  CHECK_EQ(tok_n_vocab(t), 4224);
  CHECK_EQ(tok_eos(t), 4098);
  static const int32_t eog_red[] = {4096, 4098, 4115, 4116, 4117};
  n_eog = 0;
  for (int32_t i = 0; i < tok_n_vocab(t); i++) n_eog += tok_is_eog(t, i);
  CHECK_EQ(n_eog, 5);
  for (size_t i = 0; i < 5; i++) CHECK(tok_is_eog(t, eog_red[i]));
  tok_destroy(t);
}

// ---- random strings ---------------------------------------------------------------------

static const char *const k_frags[] = {
    "Hello",
    " world",
    "the",
    " quick",
    "I'm",
    "'s",
    "'LL",
    "'re",
    "don't",
    "ſ",
    "Straße",
    "café",
    "e\xCC\x81",
    "a\xCC\x8A",
    "\xCC\x81",
    "\xE2\x84\xAB",
    "\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB",
    "naïve",
    "你好",
    "世界",
    "人工智能",
    "日本語",
    "のテキスト",
    "Привет",
    "Български",
    "ελληνικά",
    "עברית",
    "العربية",
    "हिन्दी",
    "ក្រុម",
    "ไทย",
    "한국어",
    "🚀",
    "😶\xE2\x80\x8D🌫\xEF\xB8\x8F",
    "👍🏽",
    "🦙",
    "👨\xE2\x80\x8D👩\xE2\x80\x8D👧",
    " ",
    "  ",
    "   ",
    "\t",
    "\t\t",
    "\n",
    "\r\n",
    "\r",
    "\n\n\n",
    " \n ",
    "\xC2\xA0",
    "\xE3\x80\x80",
    "\xE2\x80\x8B",
    "\xE1\xA0\x8E",
    "\xE2\x80\xA8",
    "0",
    "42",
    "1234567",
    "3.14",
    "1,000",
    "٣",
    "²",
    "\x01",
    "\x07",
    "\x1B[0m",
    "\x7F",
    "\xC2\x85",
    "!",
    "?!",
    "...",
    "---",
    "```",
    "\"",
    "'",
    "(",
    ")",
    "{",
    "}",
    "<",
    ">",
    "<|",
    "|>",
    "<|im_start",
    "im_end|>",
    "<| im_start |>",
    "<|im_start|>",
    "<|endoftext|>",
    "<think>",
    "</think",
    "<tool_call>",
    "<|fim_pad|>",
    "[PAD151700]",
    "<s>",
    "</s>",
    "\xEF\xBF\xBD",
    "\xF0\x9F\x98\x80",
    "\xF4\x8F\xBF\xBF",
    "\xE0\xA4\x95\xE0\xA5\x8D",
};

static size_t random_string(struct ferry_rng *r, char *buf, size_t cap) {
  size_t n = 0, k = 1 + ferry_rng_u64(r) % 24;
  for (size_t i = 0; i < k; i++) {
    const char *f = k_frags[ferry_rng_u64(r) % (sizeof k_frags / sizeof *k_frags)];
    size_t l = strlen(f);
    if (n + l >= cap) break;
    memcpy(buf + n, f, l);
    n += l;
  }
  // Sometimes a random code point (any plane, valid scalar values only).
  if (ferry_rng_u64(r) % 3 == 0 && n + 4 < cap) {
    uint32_t cp = (uint32_t)(ferry_rng_u64(r) % 0x110000);
    if (cp >= 0xD800 && cp < 0xE000) cp = 0x20AC;
    n += (size_t)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)buf + n);
  }
  buf[n] = 0;
  return n;
}

// Streams ids through a tok_decoder; every chunk must be valid UTF-8 when the whole text is.
static char *stream_decode(const struct tokenizer *t, const int32_t *ids, size_t n, bool special,
                           bool expect_valid, size_t *len) {
  struct tok_decoder *d;
  CHECK_EQ(tok_decoder_create(&d, t, special), 0);
  char *o = malloc(64);
  size_t k = 0, cap = 64;
  for (size_t i = 0; i <= n; i++) {
    const char *b;
    size_t bl;
    if (i < n)
      CHECK_EQ(tok_decoder_push(d, ids[i], &b, &bl), 0);
    else
      tok_decoder_flush(d, &b, &bl);
    if (expect_valid && bl) {
      utf8proc_int32_t cp;
      for (size_t j = 0; j < bl;) {
        utf8proc_ssize_t l =
            utf8proc_iterate((const utf8proc_uint8_t *)b + j, (utf8proc_ssize_t)(bl - j), &cp);
        if (l <= 0) {
          CHECK(!"streamed chunk is not whole UTF-8");
          break;
        }
        j += (size_t)l;
      }
    }
    if (k + bl + 1 > cap) {
      cap = (k + bl + 1) * 2;
      o = realloc(o, cap);
    }
    memcpy(o + k, b, bl);
    k += bl;
  }
  tok_decoder_destroy(d);
  o[k] = 0;
  *len = k;
  return o;
}

static void check_roundtrip(const char *model, int iters) {
  struct tokenizer *t = load_tok(model);
  CHECK(t != NULL);
  if (!t) return;
  struct ferry_rng r;
  ferry_rng_seed(&r, 0xC0FFEE);
  char buf[2048];
  int fails = 0;
  for (int it = 0; it < iters && fails < 5; it++) {
    size_t n = random_string(&r, buf, sizeof buf);
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t nl = utf8proc_map((const utf8proc_uint8_t *)buf, (utf8proc_ssize_t)n, &nfc,
                                       UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    CHECK(nl >= 0);
    for (int ps = 0; ps < 2; ps++) {
      int32_t *ids;
      size_t ni;
      CHECK_EQ(tok_encode(t, buf, n, ps, &ids, &ni), 0);
      // parse_special=false leaves control texts as text, so it round-trips without
      // showing specials; parse_special=true needs them shown.
      char *dec;
      size_t dl;
      CHECK_EQ(tok_decode(t, ids, ni, ps, &dec, &dl), 0);
      bool ok = (utf8proc_ssize_t)dl == nl && !memcmp(dec, nfc, dl);
      size_t sl;
      char *st = stream_decode(t, ids, ni, ps, true, &sl);
      ok = ok && sl == dl && !memcmp(st, dec, dl);
      if (!ok) {
        fprintf(stderr, "%s: round trip failed (parse_special=%d) for \"%s\"\n", model, ps, buf);
        fails++;
      }
      CHECK(ok);
      free(st);
      free(dec);
      free(ids);
    }
    free(nfc);
  }
  tok_destroy(t);
}

// Invalid UTF-8: never fails; each invalid byte becomes its byte token; the round trip is
// exact (nothing here is changed by NFC).
static void check_invalid_utf8(void) {
  struct tokenizer *t = load_tok(FULL_VOCAB ".gguf");
  CHECK(t != NULL);
  if (!t) return;
  static const char *const parts[] = {
      "abc",          " ",  "\x80", "\xFF", "\xC0\xAF", "\xE4\xB8",  "\xED\xA0\x80", "\xF5",
      "\xF0\x9F\x98", "你", "\n",   "1",    "\xC3",     "<|im_end|>"};
  struct ferry_rng r;
  ferry_rng_seed(&r, 77);
  for (int it = 0; it < 2000; it++) {
    char buf[512];
    size_t n = 0, k = 1 + ferry_rng_u64(&r) % 16;
    for (size_t i = 0; i < k; i++) {
      const char *p = parts[ferry_rng_u64(&r) % (sizeof parts / sizeof *parts)];
      memcpy(buf + n, p, strlen(p));
      n += strlen(p);
    }
    int32_t *ids;
    size_t ni;
    CHECK_EQ(tok_encode(t, buf, n, false, &ids, &ni), 0);
    char *dec;
    size_t dl;
    CHECK_EQ(tok_decode(t, ids, ni, false, &dec, &dl), 0);
    CHECK(dl == n && !memcmp(dec, buf, n));
    size_t sl;
    char *st = stream_decode(t, ids, ni, false, false, &sl);
    CHECK(sl == n && !memcmp(st, buf, n));
    free(st);
    free(dec);
    free(ids);
  }
  // A lone invalid byte is exactly its byte token.
  int32_t *ids;
  size_t ni;
  CHECK_EQ(tok_encode(t, "\xFF", 1, false, &ids, &ni), 0);
  const char *pb;
  size_t pl;
  CHECK(ni == 1 && tok_piece(t, ids[0], &pb, &pl) == 0 && pl == 1 && (uint8_t)pb[0] == 0xFF);
  free(ids);
  tok_destroy(t);
}

// ---- an independent naive BPE on random words --------------------------------------------
// Symbols as strings, every step rescans all adjacent pairs for the lowest merge rank (from
// the GGUF merges array directly). Compares with tok_encode on single words.

struct naive {
  const struct gguf_str *merges;
  size_t n_merges;
  char **mstr; // "A B" strings sorted for bsearch
  int32_t *mrank;
};

static int cmp_str_idx(const void *a, const void *b, void *ctx) {
  const struct gguf_str *m = ctx;
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  size_t lx = m[x].len, ly = m[y].len, l = lx < ly ? lx : ly;
  int c = memcmp(m[x].data, m[y].data, l);
  return c ? c : (lx < ly ? -1 : lx > ly);
}

static int32_t naive_rank(const struct naive *nv, const int32_t *order, const char *s, size_t len) {
  size_t lo = 0, hi = nv->n_merges;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const struct gguf_str *m = &nv->merges[order[mid]];
    size_t l = m->len < len ? m->len : len;
    int c = memcmp(m->data, s, l);
    if (!c) c = m->len < len ? -1 : m->len > len;
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < nv->n_merges) {
    const struct gguf_str *m = &nv->merges[order[lo]];
    if (m->len == len && !memcmp(m->data, s, len)) {
      int32_t best = order[lo]; // duplicates: lowest rank
      for (size_t k = lo; k < nv->n_merges; k++) {
        const struct gguf_str *m2 = &nv->merges[order[k]];
        if (m2->len != len || memcmp(m2->data, s, len)) break;
        if (order[k] < best) best = order[k];
      }
      return best;
    }
  }
  return -1;
}

static void check_naive_bpe(void) {
  char path[4096];
  snprintf(path, sizeof path, "%s/models/" FULL_VOCAB ".gguf", g_fix);
  struct gguf_file *f;
  if (gguf_open(&f, path)) {
    CHECK(!"open");
    return;
  }
  struct tokenizer *t;
  CHECK_EQ(tok_create(&t, f), 0);
  const struct gguf_kv *km = gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_STRING);
  struct naive nv = {km->arr, km->arr_n, NULL, NULL};
  int32_t *order = malloc(nv.n_merges * sizeof *order);
  for (size_t i = 0; i < nv.n_merges; i++) order[i] = (int32_t)i;
  qsort_r(order, nv.n_merges, sizeof *order, cmp_str_idx, (void *)nv.merges);

  const struct gguf_kv *kt = gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING);
  const struct gguf_str *ts = kt->arr;
  int32_t byte_tok[256];
  for (int b = 0; b < 256; b++) byte_tok[b] = -1;
  for (int32_t id = 0; id < tok_n_vocab(t); id++) {
    const char *pb;
    size_t pl;
    tok_piece(t, id, &pb, &pl);
    if (pl == 1 && tok_token_type(t, id) == TOK_TYPE_NORMAL && byte_tok[(uint8_t)pb[0]] < 0)
      byte_tok[(uint8_t)pb[0]] = id;
  }
  // Words: random letters from a small alphabet (many merges apply), with a leading space.
  static const char *const alpha[] = {"e",  "t",  "a",   "o", "i", "n", "s", "h", "r", "l",
                                      "th", "in", "ing", "é", "ö", "и", "я", "ü", "ß"};
  struct ferry_rng r;
  ferry_rng_seed(&r, 4242);
  int bad = 0;
  for (int it = 0; it < 3000 && bad < 5; it++) {
    char w[256];
    size_t wl = 0;
    w[wl++] = ' ';
    // Every 4th word is a long run of one piece (many equal-rank pairs: leftmost first).
    bool run = it % 4 == 0;
    size_t k = run ? 20 + ferry_rng_u64(&r) % 60 : 1 + ferry_rng_u64(&r) % 14;
    const char *a = alpha[ferry_rng_u64(&r) % (sizeof alpha / sizeof *alpha)];
    for (size_t i = 0; i < k && wl + 4 < 250; i++) {
      if (!run) a = alpha[ferry_rng_u64(&r) % (sizeof alpha / sizeof *alpha)];
      memcpy(w + wl, a, strlen(a));
      wl += strlen(a);
    }
    // naive: symbols are byte-mapped strings
    static char sym[256][256];
    size_t ns = 0;
    for (size_t i = 0; i < wl; i++) {
      int32_t bid = byte_tok[(uint8_t)w[i]];
      memcpy(sym[ns], ts[bid].data, ts[bid].len);
      sym[ns][ts[bid].len] = 0;
      ns++;
    }
    for (;;) {
      int32_t best = -1;
      size_t bi = 0;
      for (size_t i = 0; i + 1 < ns; i++) {
        char key[260];
        size_t la = strlen(sym[i]), lb = strlen(sym[i + 1]);
        memcpy(key, sym[i], la);
        key[la] = ' ';
        memcpy(key + la + 1, sym[i + 1], lb);
        int32_t rk = naive_rank(&nv, order, key, la + 1 + lb);
        if (rk >= 0 && (best < 0 || rk < best)) {
          best = rk;
          bi = i;
        }
      }
      if (best < 0) break;
      char *dst = sym[bi];
      const char *src = sym[bi + 1];
      size_t la = strlen(dst), lb = strlen(src);
      memcpy(dst + la, src, lb + 1);
      memmove(sym[bi + 1], sym[bi + 2], (ns - bi - 2) * sizeof sym[0]);
      ns--;
    }
    int32_t *ids;
    size_t ni;
    CHECK_EQ(tok_encode(t, w, wl, false, &ids, &ni), 0);
    bool ok = ni == ns;
    for (size_t i = 0; ok && i < ns; i++) ok = ids[i] == tok_find(t, sym[i], strlen(sym[i]));
    if (!ok) {
      w[wl] = 0;
      fprintf(stderr, "naive BPE differs on \"%s\"\n", w);
      bad++;
    }
    CHECK(ok);
    free(ids);
  }
  free(order);
  tok_destroy(t);
  gguf_close(f);
}

// The tokenizer is shared read-only: threads encoding at once get the single-thread ids.
struct thr_arg {
  const struct tokenizer *t;
  const char *text;
  size_t len;
  const int32_t *want;
  size_t n_want;
  int bad;
};

static void *thr_main(void *p) {
  struct thr_arg *a = p;
  for (int it = 0; it < 20; it++) {
    int32_t *ids;
    size_t n;
    if (tok_encode(a->t, a->text, a->len, true, &ids, &n) || n != a->n_want ||
        memcmp(ids, a->want, n * sizeof *ids))
      a->bad++;
    free(ids);
  }
  return NULL;
}

static void check_threads(void) {
  struct tokenizer *t = load_tok(FULL_VOCAB ".gguf");
  CHECK(t != NULL);
  if (!t) return;
  struct ferry_rng r;
  ferry_rng_seed(&r, 99);
  enum { NT = 4 };
  static char texts[NT][8192];
  size_t lens[NT];
  int32_t *want[NT];
  size_t nw[NT];
  pthread_t th[NT];
  struct thr_arg args[NT];
  for (int i = 0; i < NT; i++) {
    lens[i] = 0;
    while (lens[i] < 6000)
      lens[i] += random_string(&r, texts[i] + lens[i], sizeof texts[i] - lens[i]);
    CHECK_EQ(tok_encode(t, texts[i], lens[i], true, &want[i], &nw[i]), 0);
    args[i] = (struct thr_arg){t, texts[i], lens[i], want[i], nw[i], 0};
  }
  for (int i = 0; i < NT; i++) CHECK_EQ(pthread_create(&th[i], NULL, thr_main, &args[i]), 0);
  for (int i = 0; i < NT; i++) {
    pthread_join(th[i], NULL);
    CHECK_EQ(args[i].bad, 0);
    free(want[i]);
  }
  tok_destroy(t);
}

int main(void) {
  g_fix = getenv("FERRY_FIXTURES");
  if (!g_fix) g_fix = FERRY_SOURCE_FIXTURES;
  char probe[4096];
  snprintf(probe, sizeof probe, "%s/tokenizer/tokenization.json", g_fix);
  FILE *fp = fopen(probe, "rb");
  if (!fp) {
    fprintf(stderr, "FAIL: no fixtures at %s (tests/fixtures is part of the repository)\n", g_fix);
    return 1;
  }
  fclose(fp);

  check_fixture_file("tokenization.json", FULL_VOCAB ".gguf");
  check_fixture_file("tokenization_reduced4096.json", "pub-qwen3moe-tiny-F32.gguf");
  check_fixture_file("tokenization_reduced4096.json", "pub-qwen3next-legacy-kq-Q4_K_M.gguf");
  check_golden_prompts();
  check_eog_and_misc();
  check_invalid_utf8();
  check_naive_bpe();
  check_threads();
  check_roundtrip(FULL_VOCAB ".gguf", 3000);
  check_roundtrip("pub-qwen3moe-tiny-F32.gguf", 2000);
  CHECK_DONE();
}
