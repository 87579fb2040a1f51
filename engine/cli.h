// engine/cli.h: the subcommand table. Each command parses its own flags and returns 0,
// a positive exit code, or a negative code with the error message set (main prints it).
#pragma once

struct ferry_cmd {
  const char *name;
  int (*fn)(int argc, char **argv); // argv[0] is the command name
};
extern const struct ferry_cmd ferry_cmds[];

int cmd_info(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_cachesim(int argc, char **argv);
int cmd_serve(int argc, char **argv);

// The error for getopt_long's '?' (unknown option) or ':' (missing value, when the option
// string starts with ':'), naming the option as the user typed it: "-z" for an unknown
// letter even inside a cluster like -zq, "--frob" for an unknown long option. Call it
// right after getopt_long returned c. Always returns -EINVAL.
int cli_bad_option(int c, char **argv, const char *cmd);
