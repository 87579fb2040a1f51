// engine/cli.c: the table of subcommands `ferry` dispatches to.
#include "engine/cli.h"

#include <stddef.h>

const struct ferry_cmd ferry_cmds[] = {
    {"info", cmd_info},
    {"tokenize", cmd_tokenize},
    {NULL, NULL},
};
