// engine/cmd_score.c: `ferry score` — teacher forcing. Feeds t_0..t_{L-2} and, for every
// position i from N-1 to L-2, reports the log-softmax that predicts t_{i+1}.
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/cli.h"
#include "engine/generate.h"
#include "engine/json.h"
#include "engine/sampler.h"

static int parse_ids(const char *s, int32_t **out, int *n) {
  int cap = 64, len = 0;
  int32_t *ids = malloc(cap * sizeof *ids);
  if (!ids) return ferry_fail(-ENOMEM, "out of memory");
  const char *p = s;
  for (;;) {
    while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
    if (!*p) break;
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno || v < 0 || v > INT32_MAX) {
      free(ids);
      return ferry_fail(-EINVAL, "--ids: '%.20s' is not a token id", p);
    }
    if (len == cap) {
      int32_t *ni = realloc(ids, (cap *= 2) * sizeof *ids);
      if (!ni) {
        free(ids);
        return ferry_fail(-ENOMEM, "out of memory");
      }
      ids = ni;
    }
    ids[len++] = (int32_t)v;
    p = end;
  }
  *out = ids, *n = len;
  return 0;
}

int cmd_score(int argc, char **argv) {
  struct run_opts o;
  int rc = run_opts_parse(&o, "score", argc, argv);
  if (rc) return rc > 0 ? 0 : rc;
  int32_t *ids = NULL;
  int L = 0;
  if ((rc = parse_ids(o.ids, &ids, &L))) return rc;
  if (L < 2) {
    free(ids);
    return ferry_fail(-EINVAL, "--ids needs at least 2 tokens");
  }
  if (o.from > L - 1) {
    free(ids);
    return ferry_fail(-EINVAL, "--from %d must be at most %d (the number of ids minus one)", o.from,
                      L - 1);
  }
  if (!o.logprobs) o.logprobs = 5;
  struct session *s;
  if ((rc = session_open(&s, &o))) {
    free(ids);
    return rc;
  }
  struct model *m = session_model(s);
  int n_vocab = (int)model_hparams(m)->n_vocab;
  for (int i = 0; i < L; i++) // the last id is only a target, but it must be a token too
    if (ids[i] >= n_vocab) {
      rc = ferry_fail(-EINVAL, "token id %d is out of range (vocabulary of %d)", ids[i], n_vocab);
      free(ids);
      session_close(s);
      return rc;
    }
  int n_in = L - 1, n_steps = L - o.from;
  int K = o.logprobs < n_vocab ? o.logprobs : n_vocab;
  bool *want = calloc(n_in, sizeof *want);
  float *logits = malloc(sizeof(float) * (size_t)n_vocab * n_steps);
  double *lp = malloc(sizeof(double) * n_vocab);
  int32_t *tid = malloc(sizeof(int32_t) * K);
  double *tlp = malloc(sizeof(double) * K);
  if (!want || !logits || !lp || !tid || !tlp) {
    rc = ferry_fail(-ENOMEM, "out of memory");
    goto done;
  }
  for (int i = o.from - 1; i < n_in; i++) want[i] = true;
  double t0 = ferry_now_s();
  model_reset(m);
  if ((rc = model_forward(m, ids, n_in, want, logits))) goto done;
  for (int j = 0; j < n_steps; j++)
    if ((rc = logits_check_finite(logits + (size_t)j * n_vocab, n_vocab, o.from - 1 + j)))
      goto done;
  double dt = ferry_now_s() - t0;
  struct run_stats st = {0};
  st.n_prompt = n_in;
  st.prefill_s = dt;
  session_fill_stats(s, &st);
  struct jw w;
  if ((rc = jw_open(&w, o.json_path))) goto done;
  jw_obj(&w);
  jw_key(&w, "model"), jw_str(&w, o.model);
  jw_key(&w, "arch"), jw_str(&w, model_hparams(m)->arch_name);
  jw_key(&w, "mode"), jw_str(&w, session_mode_name(s));
  jw_key(&w, "backend"), jw_str(&w, st.backend);
  jw_key(&w, "device"), jw_str(&w, st.device);
  jw_key(&w, "peak_vram_bytes"), jw_uint(&w, st.peak_vram);
  jw_key(&w, "vram_budget_bytes"), jw_uint(&w, st.vram_budget);
  jw_key(&w, "exact"), jw_bool(&w, o.exact);
  jw_key(&w, "n_tokens"), jw_int(&w, L);
  jw_key(&w, "from"), jw_int(&w, o.from);
  jw_key(&w, "load_s"), jw_num(&w, st.load_s);
  jw_key(&w, "eval_s"), jw_num(&w, dt);
  jw_key(&w, "peak_rss_bytes"), jw_uint(&w, st.peak_rss);
  jw_key(&w, "io"), jw_obj(&w);
  jw_key(&w, "bytes_read"), jw_uint(&w, st.io_bytes);
  jw_key(&w, "reads"), jw_uint(&w, st.io_reads);
  jw_key(&w, "direct"), jw_bool(&w, st.io_direct);
  jw_obj_end(&w);
  jw_key(&w, "steps"), jw_arr(&w);
  for (int j = 0; j < n_steps; j++) {
    int i = o.from - 1 + j;
    logsoftmax(logits + (size_t)j * n_vocab, n_vocab, lp);
    topk_logprobs(lp, n_vocab, K, tid, tlp);
    int32_t target = ids[i + 1];
    jw_obj(&w);
    jw_key(&w, "pos"), jw_int(&w, i);
    jw_key(&w, "target"), jw_int(&w, target);
    jw_key(&w, "logprob_target"), jw_num(&w, lp[target]);
    jw_key(&w, "top"), jw_top(&w, tid, tlp, K);
    jw_obj_end(&w);
  }
  jw_arr_end(&w);
  jw_obj_end(&w);
  rc = jw_close(&w, o.json_path);
  if (o.stats) gen_print_stats(stderr, session_mode_name(s), &st);
done:
  free(want), free(logits), free(lp), free(tid), free(tlp), free(ids);
  session_close(s);
  return rc;
}
