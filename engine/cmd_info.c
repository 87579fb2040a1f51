// engine/cmd_info.c: `ferry info` — what a GGUF file holds: architecture, hyperparameters,
// tensor counts and bytes per type, dense vs routed-expert bytes, one expert's bytes per
// layer, and (with budgets) the placement plan.
#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "base/base.h"
#include "engine/cli.h"
#include "engine/gguf.h"
#include "engine/model_info.h"
#include "engine/session.h"
#include "kernels/types.h"

int cmd_info(int argc, char **argv) {
  const char *path = NULL;
  bool json = false;
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'}, {"ram", required_argument, 0, 'r'},
      {"vram", required_argument, 0, 'v'},  {"json", no_argument, 0, 'j'},
      {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
  uint64_t ram = 0, vram = 0;
  int c;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":m:h", opts, NULL)) != -1) {
    switch (c) {
      case 'm': path = optarg; break;
      case 'r':
        if (ferry_parse_size(optarg, &ram)) return ferry_fail_ctx(-EINVAL, "--ram");
        if (!ram)
          return ferry_fail(-EINVAL, "--ram: '%s' is 0 bytes; give a budget such as 8G or 512M",
                            optarg);
        break;
      case 'v':
        if (ferry_parse_size(optarg, &vram)) return ferry_fail_ctx(-EINVAL, "--vram");
        break;
      case 'j': json = true; break;
      case 'h': printf("usage: ferry info -m MODEL.gguf [--ram SIZE] [--vram SIZE]\n"); return 0;
      default: return cli_bad_option(c, argv, "info");
    }
  }
  if (optind < argc) return ferry_fail(-EINVAL, "unexpected argument '%s'", argv[optind]);
  if (!path) return ferry_fail(-EINVAL, "missing -m MODEL.gguf");
  // what a session would charge for the process, measured before the file is parsed
  struct run_opts none = {0};
  uint64_t base = session_baseline_bytes(&none);
  struct gguf_file *f;
  int rc = gguf_open(&f, path);
  if (rc) return rc;
  rc = model_info_print(f, stdout, ram, vram, json, base);
  gguf_close(f);
  return rc;
}
