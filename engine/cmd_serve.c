// engine/cmd_serve.c: `ferry serve` — the command line: serve's own flags are taken out of
// argv first, the rest are `ferry run`'s model and memory flags (run_opts_parse), then the
// session is opened once and served until SIGINT/SIGTERM.
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/cli.h"
#include "engine/serve.h"

static void usage(void) {
  printf(
      "usage: ferry serve -m MODEL.gguf [--host ADDR] [--port N] [--api-key KEY] [--queue N]\n"
      "                   [--alias NAME] [--max-body SIZE] [--no-prompt-cache]\n"
      "                   [-c CTX] [-t N] [-b BATCH] [-n N] [--mode auto|full|stream]\n"
      "                   [--ram SIZE] [--vram SIZE] [--cache-type-k/v f32|f16|q8_0] [--exact]\n"
      "                   [--temp T] [--top-k K] [--top-p P] [--min-p P] [--seed S]\n"
      "  --host ADDR        address to listen on (default 127.0.0.1)\n"
      "  --port N           port (default 8080; 0: any free port, printed on stderr)\n"
      "  --api-key KEY      require 'Authorization: Bearer KEY' on every endpoint but /health\n"
      "                     (default: $FERRY_API_KEY if set, else no authentication)\n"
      "  --queue N          requests that may wait behind the one generating (default 8);\n"
      "                     more get 503\n"
      "  --alias NAME       model name served (default: the file name without .gguf)\n"
      "  --max-body SIZE    largest request body (default 8M)\n"
      "  --no-prompt-cache  compute every prompt from the start\n"
      "  -n N               default max tokens per request (default: until the context is "
      "full)\n"
      "  sampling flags     defaults for requests that do not set them\n"
      "OpenAI API: POST /v1/chat/completions, /v1/completions; GET /v1/models, /health, "
      "/metrics\n"
      "Ollama API: POST /api/chat, /api/generate, /api/show; GET /api/tags, /api/ps, "
      "/api/version\n");
}

static int parse_int(const char *flag, const char *s, long lo, long hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi)
    return ferry_fail(-EINVAL, "%s: '%s' is not an integer in [%ld, %ld]", flag, s, lo, hi);
  *out = (int)v;
  return 0;
}

static int check_name(const char *flag, const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 200 || ferry_utf8_invalid_at(s, n) != n)
    return ferry_fail(-EINVAL, "%s: '%s' must be 1 to 200 bytes of UTF-8", flag, s);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
      return ferry_fail(-EINVAL, "%s must not contain control characters", flag);
  return 0;
}

// Takes serve's flags (and their values) out of argv; what is left goes to run_opts_parse.
static int take_serve_flags(struct serve_opts *so, int *argc, char **argv) {
  static const char *const with_value[] = {"--host",  "--port",  "--api-key",
                                           "--queue", "--alias", "--max-body"};
  int n = 1, rc = 0;
  for (int i = 1; i < *argc && !rc; i++) {
    const char *a = argv[i], *val = NULL;
    int which = -1;
    for (int k = 0; k < 6 && which < 0; k++) {
      size_t l = strlen(with_value[k]);
      if (!strncmp(a, with_value[k], l) && (a[l] == 0 || a[l] == '=')) {
        which = k;
        if (a[l] == '=')
          val = a + l + 1;
        else if (i + 1 < *argc)
          val = argv[++i];
        else
          return ferry_fail(-EINVAL, "option '%s' needs a value", a);
      }
    }
    if (which < 0 && !strcmp(a, "--no-prompt-cache")) {
      so->prompt_cache = false;
      continue;
    }
    if (which < 0) {
      if (!strcmp(a, "-n") || !strncmp(a, "--n-predict", 11) ||
          (a[0] == '-' && a[1] == 'n' && a[2]))
        so->n_predict_set = true;
      if (!strncmp(a, "--seed", 6)) so->seed_set = true;
      argv[n++] = argv[i];
      continue;
    }
    switch (which) {
      case 0: so->host = val; break;
      case 1: rc = parse_int("--port", val, 0, 65535, &so->port); break;
      case 2:
        so->api_key = val;
        if (!*val) rc = ferry_fail(-EINVAL, "--api-key must not be empty");
        break;
      case 3: rc = parse_int("--queue", val, 0, 4096, &so->queue); break;
      case 4: so->alias = val, rc = check_name("--alias", val); break;
      case 5:
        if ((rc = ferry_parse_size(val, &so->max_body)))
          ferry_fail_ctx(rc, "--max-body");
        else if (so->max_body < 1024 || so->max_body > (1ull << 30))
          rc = ferry_fail(-EINVAL, "--max-body: %s is outside [1K, 1G]", val);
        break;
    }
  }
  *argc = n;
  argv[n] = NULL;
  return rc;
}

int cmd_serve(int argc, char **argv) {
  struct serve_opts so = {.host = "127.0.0.1",
                          .port = 8080,
                          .queue = 8,
                          .max_body = 8ull << 20,
                          .prompt_cache = true,
                          .api_key = getenv("FERRY_API_KEY")};
  if (so.api_key && !*so.api_key) so.api_key = NULL;
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage();
      return 0;
    }
  char **args = malloc(sizeof(char *) * (argc + 1));
  if (!args) return ferry_fail(-ENOMEM, "out of memory");
  memcpy(args, argv, sizeof(char *) * argc);
  int n = argc;
  struct run_opts o;
  int rc = take_serve_flags(&so, &n, args);
  if (!rc) rc = run_opts_parse(&o, "serve", n, args);
  free(args);
  if (rc) return rc > 0 ? 0 : rc;
  static const char *const run_only[] = {"-p/-f",      "--system", "--json", "--ids",  "--modes",
                                         "--logprobs", "--from",   "--raw",  "--stats"};
  bool bad[] = {o.prompt || o.prompt_file,
                o.system != NULL,
                o.json_path != NULL,
                o.ids != NULL,
                o.modes != NULL,
                o.logprobs > 0,
                o.from > 0,
                o.raw,
                o.stats};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (bad[i])
      return ferry_fail(-EINVAL, "%s is not a flag of ferry serve (see ferry serve --help)",
                        run_only[i]);
  char alias[256];
  if (!so.alias) { // the file name without its directory and .gguf
    const char *base = strrchr(o.model, '/') ? strrchr(o.model, '/') + 1 : o.model;
    size_t len = strlen(base);
    if (len > 5 && !strcmp(base + len - 5, ".gguf")) len -= 5;
    snprintf(alias, sizeof alias, "%.*s", (int)(len < 200 ? len : 200), base);
    if (check_name("the model file name", alias))
      return ferry_fail(-EINVAL, "the model file name cannot be the model's name; use --alias");
    so.alias = alias;
  }
  cpu_set_t cpus; // the pool pins this thread; the HTTP threads get the original set
  so.cpus = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? &cpus : NULL;
  o.prompt_cache = so.prompt_cache;
  if ((rc = serve_listen(&so))) return rc;
  struct session *s;
  if ((rc = session_open(&s, &o))) {
    close(so.listen_fd);
    return rc;
  }
  rc = serve_run(s, &o, &so);
  session_close(s);
  return rc;
}
