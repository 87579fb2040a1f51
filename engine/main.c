// engine/main.c: the `ferry` command line. Dispatches subcommands; only this file exits.
// A command's output on stdout is part of its result: if it cannot be written (a full
// disk, /dev/full, a closed pipe reader that ignores SIGPIPE), the command fails.
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "base/base.h"
#include "base/files.h"
#include "engine/cli.h"

static void usage(FILE *o) {
  fprintf(o,
          "usage: ferry <command> [options]\n"
          "commands:\n"
          "  run       generate text from a prompt\n"
          "  serve     OpenAI- and Ollama-compatible HTTP server that keeps the model loaded\n"
          "  score     teacher-forced log-probabilities of a token sequence\n"
          "  tokenize  print the token ids of a text\n"
          "  info      model dimensions, sizes and the placement plan\n"
          "  bench     compare modes side by side\n"
          "  synth     write a synthetic model (random weights, or --routing real)\n"
          "  cachesim  replay an expert trace against cache policies and sizes\n"
          "run 'ferry <command> --help' for its options\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "ferry: error: missing command (try 'ferry --help')\n");
    return 2;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
    usage(stdout);
    return 0;
  }
  ferry_outfile_cleanup_on_signals(); // SIGINT/SIGTERM remove half-written outputs
  for (const struct ferry_cmd *c = ferry_cmds; c->name; c++)
    if (!strcmp(c->name, cmd)) {
      int rc = c->fn(argc - 1, argv + 1);
      if (rc < 0) {
        fprintf(stderr, "ferry %s: error: %s\n", cmd, ferry_errmsg());
        return 1;
      }
      errno = 0;
      if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "ferry %s: error: cannot write to standard output: %s\n", cmd,
                errno ? strerror(errno) : "write error");
        return 1;
      }
      return rc;
    }
  fprintf(stderr, "ferry: error: unknown command '%s' (try 'ferry --help')\n", cmd);
  return 2;
}
