// bench/bench_tokenizer.c: tokenizer throughput (MB/s, one thread) on deterministic
// English-like text, plus mixed-script text and a worst case of unique words (no cache hits).
// Target: >= 5 MB/s on English. Usage:
//   bench_tokenizer [MODEL.gguf] [MB]   (default: $FERRY_FIXTURES/models/qwen3moe-tiny-Q8_0.gguf, 8)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/base.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"

static const char *const k_words[] = {
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "I",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "time",
    "people",
    "government",
    "information",
    "development",
    "international",
    "understanding",
    "nevertheless",
    "river",
    "mountain",
    "village",
    "quick",
    "brown",
    "fox",
    "jumps",
    "lazy",
    "dog",
    "computer",
    "science",
    "history",
    "language",
    "model",
    "tokenizer",
    "performance",
    "however",
    "although",
    "because",
    "Mr.",
    "Smith",
    "London",
    "January",
    "Monday",
    "don't",
    "it's",
    "we're",
    "they've",
    "I'll",
};

// Sentences of 5..24 words, capitalized, with commas, numbers and paragraph breaks.
static char *english_text(size_t bytes, uint64_t seed) {
  struct ferry_rng r;
  ferry_rng_seed(&r, seed);
  char *s = malloc(bytes + 64);
  size_t n = 0;
  while (n < bytes) {
    size_t words = 5 + ferry_rng_u64(&r) % 20;
    for (size_t w = 0; w < words && n < bytes; w++) {
      const char *x = k_words[ferry_rng_u64(&r) % (sizeof k_words / sizeof *k_words)];
      if (w) s[n++] = ' ';
      size_t l = strlen(x);
      if (n + l + 8 > bytes + 64) break;
      memcpy(s + n, x, l);
      if (w == 0 && s[n] >= 'a' && s[n] <= 'z') s[n] -= 32;
      n += l;
      if (ferry_rng_u64(&r) % 12 == 0) s[n++] = ',';
      if (ferry_rng_u64(&r) % 40 == 0)
        n += (size_t)snprintf(s + n, 8, " %u", (unsigned)(ferry_rng_u64(&r) % 10000));
    }
    s[n++] = '.';
    s[n++] = ferry_rng_u64(&r) % 6 == 0 ? '\n' : ' ';
  }
  s[bytes] = 0;
  return s;
}

static char *mixed_text(size_t bytes, uint64_t seed) {
  static const char *const parts[] = {"人工智能是计算机科学的一个分支。",
                                      "日本語のテキスト。",
                                      "Привет, как дела? ",
                                      "café naïve ",
                                      "🚀 ✅ ",
                                      "def f(x):\n    return x + 1\n",
                                      "  \t\n"};
  struct ferry_rng r;
  ferry_rng_seed(&r, seed);
  char *s = malloc(bytes + 64);
  size_t n = 0;
  while (n < bytes) {
    const char *p = parts[ferry_rng_u64(&r) % (sizeof parts / sizeof *parts)];
    size_t l = strlen(p);
    if (n + l > bytes) break;
    memcpy(s + n, p, l);
    n += l;
  }
  memset(s + n, ' ', bytes - n);
  s[bytes] = 0;
  return s;
}

// Random lowercase "words" that never repeat: every word goes through BPE.
static char *unique_text(size_t bytes, uint64_t seed) {
  struct ferry_rng r;
  ferry_rng_seed(&r, seed);
  char *s = malloc(bytes + 1);
  for (size_t i = 0; i < bytes; i++) {
    uint64_t v = ferry_rng_u64(&r) % 32;
    s[i] = v < 5 ? ' ' : (char)('a' + v % 26);
  }
  s[bytes] = 0;
  return s;
}

// Thread CPU time: the machine may be shared, and wall time then measures the neighbours.
static double cpu_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void run(const struct tokenizer *t, const char *name, const char *text, size_t len) {
  int32_t *ids;
  size_t n;
  double best = 1e9, best_cpu = 1e9;
  for (int rep = 0; rep < 3; rep++) {
    double t0 = ferry_now_s(), c0 = cpu_now_s();
    if (tok_encode(t, text, len, false, &ids, &n)) {
      fprintf(stderr, "encode failed: %s\n", ferry_errmsg());
      exit(1);
    }
    double dt = ferry_now_s() - t0, dc = cpu_now_s() - c0;
    if (dt < best) best = dt;
    if (dc < best_cpu) best_cpu = dc;
    if (rep < 2) free(ids);
  }
  double t0 = ferry_now_s();
  char *dec;
  size_t dl;
  if (tok_decode(t, ids, n, true, &dec, &dl)) exit(1);
  double ddt = ferry_now_s() - t0;
  printf(
      "%-8s %6.2f MB %8zu tokens %5.2f B/token  encode %7.2f MB/s (cpu time: %7.2f MB/s)  decode "
      "%7.1f MB/s  roundtrip %s\n",
      name, len / 1e6, n, (double)len / (double)n, len / 1e6 / best, len / 1e6 / best_cpu,
      dl / 1e6 / ddt, dl == len && !memcmp(dec, text, len) ? "ok" : "DIFFERS");
  free(dec);
  free(ids);
}

int main(int argc, char **argv) {
  char def[4096];
  const char *model = argc > 1 ? argv[1] : NULL;
  if (!model) {
    const char *fx = getenv("FERRY_FIXTURES");
    snprintf(def, sizeof def, "%s/models/qwen3moe-tiny-Q8_0.gguf", fx ? fx : "../shared/fixtures");
    model = def;
  }
  double mb = argc > 2 ? atof(argv[2]) : 8;
  size_t bytes = (size_t)(mb * 1e6);
  struct gguf_file *f;
  if (gguf_open(&f, model)) {
    fprintf(stderr, "%s\n", ferry_errmsg());
    return 1;
  }
  struct tokenizer *t;
  double t0 = ferry_now_s();
  if (tok_create(&t, f)) {
    fprintf(stderr, "%s\n", ferry_errmsg());
    return 1;
  }
  printf("model %s: %d tokens, tokenizer built in %.3f s\n", model, tok_n_vocab(t),
         ferry_now_s() - t0);
  gguf_close(f);
  char *en = english_text(bytes, 1), *mx = mixed_text(bytes, 2), *un = unique_text(bytes / 4, 3);
  run(t, "english", en, bytes);
  run(t, "mixed", mx, bytes);
  run(t, "unique", un, bytes / 4);
  // A short prompt, the common interactive case (no word cache).
  const char *p =
      "The quick brown fox jumps over the lazy dog. Once upon a time, in a small village,";
  double best = 1e9;
  for (int rep = 0; rep < 2000; rep++) {
    int32_t *ids;
    size_t n;
    double s0 = ferry_now_s();
    tok_encode(t, p, strlen(p), true, &ids, &n);
    double dt = ferry_now_s() - s0;
    if (dt < best) best = dt;
    free(ids);
  }
  printf("short prompt (%zu bytes): %.1f us\n", strlen(p), best * 1e6);
  free(en);
  free(mx);
  free(un);
  tok_destroy(t);
  return 0;
}
