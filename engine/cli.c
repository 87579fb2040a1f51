// engine/cli.c: the table of subcommands `ferry` dispatches to.
#include "engine/cli.h"

#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <string.h>

#include "base/base.h"

const struct ferry_cmd ferry_cmds[] = {
    {"info", cmd_info},         {"run", cmd_run},     {"score", cmd_score},
    {"tokenize", cmd_tokenize}, {"bench", cmd_bench}, {"synth", cmd_synth},
    {"cachesim", cmd_cachesim}, {"serve", cmd_serve}, {NULL, NULL},
};

int cli_bad_option(int c, char **argv, const char *cmd) {
  // argv[optind - 1] is the word getopt last finished, which inside a cluster ("-zq") is
  // not the one holding the bad letter; optopt is the letter itself (0 for a long option).
  const char *word = optind > 0 ? argv[optind - 1] : "";
  if (c == ':') {
    if (!strncmp(word, "--", 2))
      return ferry_fail(-EINVAL, "option '%s' needs a value (see ferry %s --help)", word, cmd);
    return ferry_fail(-EINVAL, "option '-%c' needs a value (see ferry %s --help)", optopt, cmd);
  }
  if (optopt > 0 && optopt < 128)
    return ferry_fail(-EINVAL, "unknown option '-%c' (see ferry %s --help)", optopt, cmd);
  int n = (int)strcspn(word, "="); // "--frob=1" -> "--frob"
  return ferry_fail(-EINVAL, "unknown option '%.*s' (see ferry %s --help)", n, word, cmd);
}
