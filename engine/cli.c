// engine/cli.c: the table of subcommands `ferry` dispatches to.
#include "engine/cli.h"

#include <stddef.h>

const struct ferry_cmd ferry_cmds[] = {
    {"info", cmd_info},         {"run", cmd_run},     {"score", cmd_score},
    {"tokenize", cmd_tokenize}, {"bench", cmd_bench}, {"synth", cmd_synth},
    {"cachesim", cmd_cachesim}, {"serve", cmd_serve}, {NULL, NULL},
};
