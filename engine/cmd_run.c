// engine/cmd_run.c: `ferry run` — one-shot generation from a prompt.
#include <errno.h>
#include <stdlib.h>

#include "base/base.h"
#include "engine/cli.h"
#include "engine/generate.h"

int cmd_run(int argc, char **argv) {
  struct run_opts o;
  int rc = run_opts_parse(&o, "run", argc, argv);
  if (rc) return rc > 0 ? 0 : rc;
  char *text = NULL; // the prompt is read and checked before the model loads
  if ((rc = gen_read_prompt(&o, &text))) return rc;
  struct session *s;
  if ((rc = session_open(&s, &o))) {
    free(text);
    return rc;
  }
  int32_t *ids = NULL;
  int n = 0;
  struct gen_result r = {0};
  if ((rc = gen_prompt_ids(s, &o, &ids, &n))) goto done;
  if ((rc = gen_run(s, &o, ids, n, stdout, &r))) goto done;
  if (o.stats) gen_print_stats(stderr, session_mode_name(s), &r.st);
  if (o.json_path) rc = gen_write_json(s, &o, &r, o.json_path);
done:
  gen_result_free(&r);
  free(ids);
  free(text);
  session_close(s);
  return rc;
}
