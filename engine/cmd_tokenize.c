// engine/cmd_tokenize.c: `ferry tokenize` — the token ids of a text, as the engine would
// feed them. The text is tokenized as given (no template) with special tokens parsed
// (llama.cpp's parse_special=true), so a rendered chat prompt gives its real ids; --chat
// renders the ChatML prompt first, --no-special treats <|...|> texts as plain text.
// Input must be valid UTF-8 (the library would pass invalid bytes through as byte tokens,
// but on the command line they are almost always a wrong file or encoding).
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "base/files.h"
#include "engine/cli.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"

// Reading stops here: /dev/zero or an endless pipe must not take all memory.
#define TOKENIZE_MAX_BYTES (1ull << 30)

static void tokenize_usage(FILE *o) {
  fprintf(
      o,
      "usage: ferry tokenize -m MODEL.gguf (-p TEXT | -f FILE) [options]\n"
      "  -m, --model PATH   GGUF file whose tokenizer is used\n"
      "  -p, --prompt TEXT  text to tokenize\n"
      "  -f, --file PATH    read the text from a file ('-' = stdin; at most 1 GiB)\n"
      "      --pieces       one line per token: id, tab, the token's bytes as a C string\n"
      "      --no-special   treat control-token texts (<|im_start|> ...) as plain text\n"
      "      --chat         wrap the text in the ChatML prompt (user turn + generation prompt)\n"
      "      --system TEXT  with --chat: a system turn first\n"
      "      --no-think     with --chat on a hybrid (thinking) template: empty think block\n"
      "      --count        print only the number of tokens\n"
      "Special tokens in the text are parsed by default, as for a rendered prompt.\n");
}

static void print_piece(const char *b, size_t n) {
  putchar('"');
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)b[i];
    switch (c) {
      case '\n': fputs("\\n", stdout); break;
      case '\r': fputs("\\r", stdout); break;
      case '\t': fputs("\\t", stdout); break;
      case '"': fputs("\\\"", stdout); break;
      case '\\': fputs("\\\\", stdout); break;
      default:
        if (c < 0x20 || c == 0x7F) {
          printf("\\x%02X", c);
        } else if (c >= 0x80) { // whole UTF-8 characters as is, stray bytes escaped
          size_t l = ferry_utf8_invalid_at(b + i, n - i) > 0 ? 1 : 0;
          if (l) {
            size_t cl = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            fwrite(b + i, 1, cl, stdout);
            i += cl - 1;
          } else {
            printf("\\x%02X", c);
          }
        } else {
          putchar(c);
        }
    }
  }
  putchar('"');
}

int cmd_tokenize(int argc, char **argv) {
  const char *model = NULL, *prompt = NULL, *file = NULL, *system = NULL;
  bool pieces = false, no_special = false, chat = false, no_think = false, count = false;
  enum { O_PIECES = 256, O_NO_SPECIAL, O_CHAT, O_SYSTEM, O_NO_THINK, O_COUNT };
  static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                       {"prompt", required_argument, 0, 'p'},
                                       {"file", required_argument, 0, 'f'},
                                       {"pieces", no_argument, 0, O_PIECES},
                                       {"no-special", no_argument, 0, O_NO_SPECIAL},
                                       {"chat", no_argument, 0, O_CHAT},
                                       {"system", required_argument, 0, O_SYSTEM},
                                       {"no-think", no_argument, 0, O_NO_THINK},
                                       {"count", no_argument, 0, O_COUNT},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int c;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":m:p:f:h", opts, NULL)) != -1) {
    switch (c) {
      case 'm': model = optarg; break;
      case 'p': prompt = optarg; break;
      case 'f': file = optarg; break;
      case O_PIECES: pieces = true; break;
      case O_NO_SPECIAL: no_special = true; break;
      case O_CHAT: chat = true; break;
      case O_SYSTEM: system = optarg; break;
      case O_NO_THINK: no_think = true; break;
      case O_COUNT: count = true; break;
      case 'h': tokenize_usage(stdout); return 0;
      default: return cli_bad_option(c, argv, "tokenize");
    }
  }
  if (optind < argc) return ferry_fail(-EINVAL, "unexpected argument '%s'", argv[optind]);
  if (!model) return ferry_fail(-EINVAL, "missing -m MODEL.gguf");
  if (!prompt && !file) return ferry_fail(-EINVAL, "missing -p TEXT or -f FILE");
  if (prompt && file) return ferry_fail(-EINVAL, "give either -p or -f, not both");
  if ((system || no_think) && !chat)
    return ferry_fail(-EINVAL, "--system and --no-think need --chat");

  char *text = NULL, *rendered = NULL;
  size_t len = 0;
  int rc;
  if (file) {
    if ((rc = ferry_read_file(file, TOKENIZE_MAX_BYTES, "input file", &text, &len))) return rc;
  } else {
    len = strlen(prompt);
  }
  const char *src = file ? text : prompt, *what = file ? file : "-p text";
  size_t bad = ferry_utf8_invalid_at(src, len);
  if (bad < len) {
    rc = ferry_fail(-EINVAL, "%s: invalid UTF-8 at byte %zu", what, bad);
    free(text);
    return rc;
  }
  if (system && ferry_utf8_invalid_at(system, strlen(system)) < strlen(system)) {
    free(text);
    return ferry_fail(-EINVAL, "--system: invalid UTF-8");
  }

  struct gguf_file *f = NULL;
  struct tokenizer *t = NULL;
  int32_t *ids = NULL;
  size_t n = 0;
  if ((rc = gguf_open(&f, model))) goto done;
  if ((rc = tok_create(&t, f))) {
    ferry_fail_ctx(rc, "%s", model);
    goto done;
  }
  if (chat) {
    if (memchr(src, 0, len)) {
      rc = ferry_fail(-EINVAL, "%s: NUL byte in a chat message", what);
      goto done;
    }
    if ((rc = tok_render_chat(t, system, src, no_think ? TOK_CHAT_NO_THINK : 0, &rendered)))
      goto done;
    src = rendered;
    len = strlen(rendered);
  }
  if ((rc = tok_encode(t, src, len, !no_special, &ids, &n))) goto done;
  if (count) {
    printf("%zu\n", n);
  } else if (pieces) {
    for (size_t i = 0; i < n; i++) {
      const char *b;
      size_t bl;
      tok_piece(t, ids[i], &b, &bl);
      printf("%d\t", ids[i]);
      print_piece(b, bl);
      putchar('\n');
    }
  } else {
    for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    putchar('\n');
  }
  if (fflush(stdout))
    rc = ferry_fail(-(errno ? errno : EIO), "cannot write to standard output: %s",
                    strerror(errno ? errno : EIO));

done:
  free(ids);
  free(rendered);
  free(text);
  tok_destroy(t);
  gguf_close(f);
  return rc;
}
