// engine/generate.c: prompt building, the generate loop, and the run reports.
#include "engine/generate.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "base/files.h"
#include "engine/json.h"
#include "engine/sampler.h"

static bool utf8_valid(const char *s, size_t n, size_t *bad) {
  *bad = ferry_utf8_invalid_at(s, n);
  return *bad == n;
}

int gen_read_prompt(struct run_opts *o, char **owned) {
  *owned = NULL;
  char *text;
  size_t len;
  int rc;
  const char *file = o->prompt_file;
  if (file) {
    if ((rc = ferry_read_file(file, GEN_PROMPT_MAX_BYTES, "prompt file", &text, &len))) return rc;
  } else {
    text = strdup(o->prompt ? o->prompt : "");
    if (!text) return ferry_fail(-ENOMEM, "out of memory");
    len = strlen(text);
  }
  const char *what = file ? "the prompt file" : "the prompt";
  size_t bad;
  if (!utf8_valid(text, len, &bad)) {
    rc = ferry_fail(-EINVAL, "%s%s%s%s is not valid UTF-8 (at byte %zu)", what, file ? " '" : "",
                    file ? file : "", file ? "'" : "", bad);
    goto fail;
  }
  // The chat template is text: a NUL would end the message there and drop the rest.
  const char *nul = o->raw ? NULL : memchr(text, 0, len);
  if (nul) {
    rc =
        ferry_fail(-EINVAL,
                   "%s%s%s%s has a NUL byte at byte %zu, which a chat message cannot hold (use "
                   "--raw to tokenize the bytes as they are)",
                   what, file ? " '" : "", file ? file : "", file ? "'" : "", (size_t)(nul - text));
    goto fail;
  }
  if (o->system && !utf8_valid(o->system, strlen(o->system), &bad)) {
    rc = ferry_fail(-EINVAL, "--system is not valid UTF-8 (at byte %zu)", bad);
    goto fail;
  }
  o->prompt_text = text, o->prompt_len = len;
  *owned = text;
  return 0;
fail:
  free(text);
  return rc;
}

int gen_prompt_ids(struct session *s, const struct run_opts *o, int32_t **ids, int *n) {
  char *owned = NULL, *full = NULL;
  int rc;
  struct run_opts ro = *o;
  if (!ro.prompt_text && (rc = gen_read_prompt(&ro, &owned))) return rc;
  const char *text = ro.prompt_text;
  size_t len = ro.prompt_len;
  if (!o->raw) {
    rc = tok_render_chat(session_tokenizer(s), o->system, text, 0, &full);
    free(owned);
    if (rc) return rc;
    text = full, len = strlen(full);
  } else {
    full = owned;
  }
  size_t nn = 0;
  rc = tok_encode(session_tokenizer(s), text, len, true, ids, &nn);
  free(full);
  if (rc) return rc;
  if (nn == 0) {
    free(*ids);
    *ids = NULL;
    return ferry_fail(-EINVAL, "the prompt is empty");
  }
  *n = (int)nn;
  return 0;
}

void topk_logprobs(const double *lp, int n, int k, int32_t *ids, double *vals) {
  // insertion into a sorted list of k: O(n k), k is small
  int have = 0;
  for (int i = 0; i < n; i++) {
    if (have == k && lp[i] <= vals[k - 1]) continue;
    int j = have < k ? have++ : k - 1;
    while (j > 0 && vals[j - 1] < lp[i]) {
      vals[j] = vals[j - 1], ids[j] = ids[j - 1];
      j--;
    }
    vals[j] = lp[i], ids[j] = i;
  }
}

void gen_sampling_defaults(struct session *s, const struct run_opts *o, struct sampler_params *sp) {
  const struct gguf_file *f = session_gguf(s);
  sp->temp = o->temp, sp->top_k = o->top_k, sp->top_p = o->top_p, sp->min_p = o->min_p,
  sp->seed = o->seed;
  sp->bias = o->logit_bias, sp->n_bias = o->n_logit_bias;
  float v;
  uint32_t k;
  if (!o->temp_set && gguf_get_f32(f, "general.sampling.temp", &v) == 0 && v >= 0) sp->temp = v;
  if (!o->top_p_set && gguf_get_f32(f, "general.sampling.top_p", &v) == 0 && v >= 0 && v <= 1)
    sp->top_p = v;
  if (!o->min_p_set && gguf_get_f32(f, "general.sampling.min_p", &v) == 0 && v >= 0 && v <= 1)
    sp->min_p = v;
  if (!o->top_k_set && gguf_get_u32(f, "general.sampling.top_k", &k) == 0) sp->top_k = (int)k;
  ferry_clear_error(); // a mistyped recommendation is ignored, not fatal
}

// The generated text and how much of it the callback has been given.
struct gen_text {
  struct gen_result *r;
  size_t cap, told;
};

// Appends decoded bytes to the result text.
static int text_append(struct gen_text *g, const char *bytes, size_t nb) {
  struct gen_result *r = g->r;
  while (r->text_len + nb + 1 > g->cap) {
    char *nt = realloc(r->text, g->cap *= 2);
    if (!nt) return ferry_fail(-ENOMEM, "out of memory");
    r->text = nt;
  }
  memcpy(r->text + r->text_len, bytes, nb);
  r->text_len += nb;
  r->text[r->text_len] = 0;
  return 0;
}

// After `added` new bytes: cuts the text at the first stop string that ends in them (true),
// else returns in *hold how many trailing bytes might still begin one.
static bool stop_check(const struct gen_params *p, struct gen_result *r, size_t added,
                       size_t *hold) {
  *hold = 0;
  size_t len = r->text_len, cut = len + 1;
  for (int i = 0; i < p->n_stop; i++) {
    size_t sl = strlen(p->stop[i]);
    size_t from =
        len - added + 1 > sl ? len - added + 1 - sl : 0; // matches ending in the new bytes
    const char *hit = len - from >= sl ? memmem(r->text + from, len - from, p->stop[i], sl) : NULL;
    if (hit && (size_t)(hit - r->text) < cut) cut = (size_t)(hit - r->text);
    for (size_t k = sl - 1 < len ? sl - 1 : len; k > *hold; k--)
      if (r->text[len - k] == p->stop[i][0] && !memcmp(r->text + len - k, p->stop[i], k)) {
        *hold = k;
        break;
      }
  }
  if (cut > len) return false;
  r->text_len = cut;
  r->text[cut] = 0;
  return true;
}

// Gives the callback the text that is final now; true when it asks to stop.
static bool tell(const struct gen_params *p, struct gen_text *g, int32_t id, size_t hold) {
  size_t end = g->r->text_len - hold;
  if (end < g->told) end = g->told; // a cut never goes below what was told (held back)
  const char *t = g->r->text + g->told;
  size_t n = end - g->told;
  g->told = end;
  return p->on_token && p->on_token(p->ctx, id, t, n);
}

int gen_generate(struct session *s, const struct gen_params *p, const int32_t *prompt, int n_prompt,
                 struct gen_result *r) {
  memset(r, 0, sizeof *r);
  struct model *m = session_model(s);
  const struct tokenizer *tok = session_tokenizer(s);
  int n_vocab = (int)model_hparams(m)->n_vocab;
  int n_ctx = model_n_ctx(m);
  if (n_prompt > n_ctx)
    return ferry_fail(-EINVAL, "the prompt has %d tokens but the context is %d (raise -c)",
                      n_prompt, n_ctx);
  if (p->n_keep < 0 || p->n_keep >= n_prompt)
    return ferry_fail(-EINVAL, "gen_generate: %d cached tokens for a prompt of %d", p->n_keep,
                      n_prompt);
  int n_max = p->n_predict;
  if (n_prompt + n_max > n_ctx) {
    log_warn("generation limited to %d tokens by the context of %d", n_ctx - n_prompt, n_ctx);
    n_max = n_ctx - n_prompt;
  }
  struct sampler *smp = NULL;
  struct tok_decoder *dec = NULL;
  float *logits = malloc(sizeof(float) * n_vocab);
  double *lp = malloc(sizeof(double) * n_vocab);
  int chunk = p->n_batch > 0 ? p->n_batch : n_prompt;
  bool *no_logits = calloc(chunk, sizeof(bool));
  r->prompt = malloc(sizeof(int32_t) * (n_prompt ? n_prompt : 1));
  r->tokens = malloc(sizeof(int32_t) * (n_max + 1));
  r->k = p->logprobs;
  if (r->k > n_vocab) r->k = n_vocab;
  r->steps = calloc(n_max + 1, sizeof *r->steps);
  // per-step top-K storage is allocated once, not per generated token
  r->top_ids_all = malloc(sizeof(int32_t) * (size_t)(n_max + 1) * (r->k ? r->k : 1));
  r->top_lp_all = malloc(sizeof(double) * (size_t)(n_max + 1) * (r->k ? r->k : 1));
  struct gen_text g = {.r = r, .cap = 4096};
  r->text = malloc(g.cap);
  int rc = 0;
  if (!logits || !lp || !no_logits || !r->prompt || !r->tokens || !r->steps || !r->text ||
      !r->top_ids_all || !r->top_lp_all) {
    rc = ferry_fail(-ENOMEM, "out of memory");
    goto done;
  }
  r->text[0] = 0;
  memcpy(r->prompt, prompt, sizeof(int32_t) * n_prompt);
  r->n_prompt = n_prompt;
  r->n_keep = p->n_keep;
  r->finish = GEN_FINISH_LENGTH;
  if ((rc = sampler_create(&smp, &p->sp, n_vocab)) || (rc = tok_decoder_create(&dec, tok, false)))
    goto done;
  double t0 = ferry_now_s();
  if ((rc = model_rewind(m, p->n_keep))) goto done;
  for (int i = p->n_keep; i < n_prompt; i += chunk) {
    int T = n_prompt - i < chunk ? n_prompt - i : chunk;
    bool last = i + T == n_prompt;
    if ((rc = model_forward(m, prompt + i, T, last ? NULL : no_logits, logits))) goto done;
    if (!last && p->on_token && p->on_token(p->ctx, GEN_ID_PREFILL, NULL, 0)) {
      r->finish = GEN_FINISH_CANCELLED;
      goto done;
    }
  }
  if (p->checkpoint && (rc = model_checkpoint(m))) goto done;
  double t_prefill = ferry_now_s();
  r->st.prefill_s = t_prefill - t0;
  double t_first = 0;
  struct run_traffic at_first = {0};
  bool stopped = false;
  for (int i = 0; i < n_max; i++) {
    if ((rc = logits_check_finite(logits, n_vocab, n_prompt - 1 + i))) goto done;
    int32_t id = sampler_sample(smp, logits);
    if (i == 0) {
      t_first = ferry_now_s();
      session_traffic(s, &at_first); // the decode phase's counters start here
    }
    if (r->k > 0) {
      logsoftmax(logits, n_vocab, lp);
      r->steps[i].id = id;
      r->steps[i].top_ids = r->top_ids_all + (size_t)i * r->k;
      r->steps[i].top_lp = r->top_lp_all + (size_t)i * r->k;
      topk_logprobs(lp, n_vocab, r->k, r->steps[i].top_ids, r->steps[i].top_lp);
    }
    r->tokens[r->n_generated++] = id;
    if (tok_is_eog(tok, id)) {
      r->finish = GEN_FINISH_EOG;
      break;
    }
    const char *bytes;
    size_t nb, hold = 0;
    if ((rc = tok_decoder_push(dec, id, &bytes, &nb)) || (rc = text_append(&g, bytes, nb)))
      goto done;
    if (p->n_stop && (stopped = stop_check(p, r, nb, &hold))) r->finish = GEN_FINISH_STOP;
    if (tell(p, &g, id, hold) && !stopped) {
      r->finish = GEN_FINISH_CANCELLED;
      break;
    }
    if (stopped || i + 1 == n_max) break;
    if ((rc = model_forward(m, &id, 1, NULL, logits))) goto done;
  }
  if (!stopped) {
    const char *bytes;
    size_t nb, hold;
    tok_decoder_flush(dec, &bytes, &nb);
    if ((rc = text_append(&g, bytes, nb))) goto done;
    if (p->n_stop && stop_check(p, r, nb, &hold)) r->finish = GEN_FINISH_STOP;
  }
  tell(p, &g, GEN_ID_END, 0);
  double t_end = ferry_now_s();
  r->st.ttft_s = (t_first ? t_first : t_prefill) - t0;
  r->st.decode_s = t_end - (t_first ? t_first : t_prefill);
  r->st.n_prompt = n_prompt;
  r->st.n_generated = r->n_generated;
  session_fill_stats(s, &r->st);
  if (t_first) {
    struct run_traffic now;
    session_traffic(s, &now);
    run_traffic_since(&r->st.decode, &now, &at_first);
  }
  rc = session_flush(s);
done:
  sampler_destroy(smp);
  tok_decoder_destroy(dec);
  free(logits);
  free(lp);
  free(no_logits);
  return rc;
}

// ferry run's callback: the text goes to stdout as it becomes final. A failed write (a
// full disk, a closed pipe, /dev/full) stops the generation and becomes the run's error.
struct print_ctx {
  FILE *out;
  int err; // errno of the first failed write
};
static bool print_text(void *ctx, int32_t id, const char *text, size_t n) {
  struct print_ctx *pc = ctx;
  if (pc->out && n && (fwrite(text, 1, n, pc->out) != n || fflush(pc->out) != 0)) {
    pc->err = errno ? errno : EIO;
    return true;
  }
  return false;
}

int gen_run(struct session *s, const struct run_opts *o, const int32_t *prompt, int n_prompt,
            FILE *out, struct gen_result *r) {
  struct print_ctx pc = {.out = out};
  struct gen_params p = {
      .n_predict = o->n_predict, .logprobs = o->logprobs, .on_token = print_text, .ctx = &pc};
  gen_sampling_defaults(s, o, &p.sp);
  int rc = gen_generate(s, &p, prompt, n_prompt, r);
  if (rc == 0 && out && !pc.err && (fputc('\n', out) == EOF || fflush(out) != 0))
    pc.err = errno ? errno : EIO;
  if (rc == 0 && pc.err)
    rc = ferry_fail(-pc.err, "cannot write the generated text: %s", strerror(pc.err));
  return rc;
}

void gen_result_free(struct gen_result *r) {
  free(r->steps);
  free(r->top_ids_all);
  free(r->top_lp_all);
  free(r->prompt);
  free(r->tokens);
  free(r->text);
  memset(r, 0, sizeof *r);
}

static double rate(int n, double s) { return s > 0 ? n / s : 0; }
double gen_prefill_rate(const struct run_stats *st) { return rate(st->n_prompt, st->prefill_s); }
// decode rate counts the tokens after the first (the first comes from the prefill)
double gen_decode_rate(const struct run_stats *st) {
  return rate(st->n_generated > 1 ? st->n_generated - 1 : 0, st->decode_s);
}

static void json_tier(struct jw *w, const char *name, uint64_t cap, uint64_t hits, uint64_t misses,
                      uint64_t ev) {
  jw_key(w, name), jw_obj(w);
  jw_key(w, "capacity"), jw_uint(w, cap);
  jw_key(w, "hits"), jw_uint(w, hits);
  jw_key(w, "misses"), jw_uint(w, misses);
  jw_key(w, "evictions"), jw_uint(w, ev);
  jw_obj_end(w);
}

void gen_json_stats(struct jw *w, const struct run_stats *st) {
  jw_key(w, "load_s"), jw_num(w, st->load_s);
  jw_key(w, "ttft_s"), jw_num(w, st->ttft_s);
  jw_key(w, "prefill_tok_s"), jw_num(w, gen_prefill_rate(st));
  jw_key(w, "decode_tok_s"), jw_num(w, gen_decode_rate(st));
  jw_key(w, "peak_rss_bytes"), jw_uint(w, st->peak_rss);
  jw_key(w, "peak_vram_bytes"), jw_uint(w, st->peak_vram);
  jw_key(w, "ram_budget_bytes"), jw_uint(w, st->ram_budget);
  jw_key(w, "vram_budget_bytes"), jw_uint(w, st->vram_budget);
  jw_key(w, "io"), jw_obj(w);
  jw_key(w, "bytes_read"), jw_uint(w, st->io_bytes);
  jw_key(w, "reads"), jw_uint(w, st->io_reads);
  jw_key(w, "read_s"), jw_num(w, st->io_s);
  jw_key(w, "direct"), jw_bool(w, st->io_direct);
  jw_obj_end(w);
  jw_key(w, "expert_cache"), jw_obj(w);
  json_tier(w, "host", st->host_capacity, st->host_hits, st->host_misses, st->host_evictions);
  json_tier(w, "vram", st->dev_capacity, st->dev_hits, st->dev_misses, st->dev_evictions);
  jw_key(w, "host_capacity_bytes"), jw_uint(w, st->host_capacity_bytes);
  if (st->prefetch) {
    jw_key(w, "prefetch"), jw_obj(w);
    jw_key(w, "issued"), jw_uint(w, st->pf_issued);
    jw_key(w, "used"), jw_uint(w, st->pf_used);
    jw_key(w, "wrong"), jw_uint(w, st->pf_wrong);
    jw_key(w, "cancelled"), jw_uint(w, st->pf_cancelled);
    jw_key(w, "skipped_by_cap"), jw_uint(w, st->pf_skipped);
    jw_key(w, "bytes_read"), jw_uint(w, st->pf_bytes);
    jw_key(w, "demand_bytes"), jw_uint(w, st->demand_bytes);
    jw_obj_end(w);
  }
  jw_obj_end(w);
  jw_key(w, "h2d_bytes"), jw_uint(w, st->h2d_bytes);
  jw_key(w, "experts_computed"), jw_obj(w);
  jw_key(w, "gpu"), jw_uint(w, st->experts_gpu);
  jw_key(w, "cpu"), jw_uint(w, st->experts_cpu);
  jw_obj_end(w);
  jw_key(w, "experts_promoted"), jw_uint(w, st->promoted);
  const int nt = st->n_prompt + st->n_generated > 0 ? st->n_prompt + st->n_generated : 1;
  jw_key(w, "stall_s_per_token"), jw_obj(w);
  jw_key(w, "disk"), jw_num(w, st->disk_wait_s / nt);
  jw_key(w, "copy"), jw_num(w, st->copy_wait_s / nt);
  jw_obj_end(w);
  jw_key(w, "cpu_expert_s"), jw_num(w, st->cpu_expert_s);
  const struct run_traffic *dt = &st->decode;
  jw_key(w, "decode_traffic"), jw_obj(w);
  jw_key(w, "io_bytes"), jw_uint(w, dt->io_bytes);
  jw_key(w, "h2d_bytes"), jw_uint(w, dt->h2d_bytes);
  jw_key(w, "vram_hits"), jw_uint(w, dt->vram_hits);
  jw_key(w, "vram_misses"), jw_uint(w, dt->vram_misses);
  jw_key(w, "host_hits"), jw_uint(w, dt->host_hits);
  jw_key(w, "host_misses"), jw_uint(w, dt->host_misses);
  jw_key(w, "experts_gpu"), jw_uint(w, dt->experts_gpu);
  jw_key(w, "experts_cpu"), jw_uint(w, dt->experts_cpu);
  jw_key(w, "disk_wait_s"), jw_num(w, dt->disk_wait_s);
  jw_key(w, "copy_wait_s"), jw_num(w, dt->copy_wait_s);
  jw_key(w, "cpu_expert_s"), jw_num(w, dt->cpu_expert_s);
  jw_obj_end(w);
  if (st->has_routing) {
    jw_key(w, "routing"), jw_obj(w);
    jw_key(w, "lag1_reuse"), st->lag1_reuse >= 0 ? jw_num(w, st->lag1_reuse) : jw_null(w);
    jw_key(w, "stale_gate_accuracy");
    st->stale_gate_accuracy >= 0 ? jw_num(w, st->stale_gate_accuracy) : jw_null(w);
    jw_key(w, "coverage90"), st->coverage90 >= 0 ? jw_num(w, st->coverage90) : jw_null(w);
    jw_obj_end(w);
  }
}

int gen_write_json(struct session *s, const struct run_opts *o, const struct gen_result *r,
                   const char *path) {
  struct jw w;
  int rc = jw_open(&w, path);
  if (rc) return rc;
  jw_obj(&w);
  jw_key(&w, "model"), jw_str(&w, o->model);
  jw_key(&w, "arch"), jw_str(&w, model_hparams(session_model(s))->arch_name);
  jw_key(&w, "mode"), jw_str(&w, session_mode_name(s));
  jw_key(&w, "backend"), jw_str(&w, r->st.backend ? r->st.backend : "cpu");
  jw_key(&w, "device"), jw_str(&w, r->st.device ? r->st.device : "");
  jw_key(&w, "exact"), jw_bool(&w, o->exact);
  jw_key(&w, "prompt_tokens"), jw_arr(&w);
  for (int i = 0; i < r->n_prompt; i++) jw_int(&w, r->prompt[i]);
  jw_arr_end(&w);
  jw_key(&w, "generated_tokens"), jw_arr(&w);
  for (int i = 0; i < r->n_generated; i++) jw_int(&w, r->tokens[i]);
  jw_arr_end(&w);
  jw_key(&w, "text"), jw_strn(&w, r->text ? r->text : "", r->text_len);
  jw_key(&w, "n_prompt"), jw_int(&w, r->n_prompt);
  jw_key(&w, "n_generated"), jw_int(&w, r->n_generated);
  gen_json_stats(&w, &r->st);
  if (r->k > 0) {
    jw_key(&w, "steps"), jw_arr(&w);
    for (int i = 0; i < r->n_generated; i++) {
      jw_obj(&w);
      jw_key(&w, "id"), jw_int(&w, r->steps[i].id);
      jw_key(&w, "top"), jw_top(&w, r->steps[i].top_ids, r->steps[i].top_lp, r->k);
      jw_obj_end(&w);
    }
    jw_arr_end(&w);
  }
  jw_obj_end(&w);
  return jw_close(&w, path);
}

void gen_print_stats(FILE *f, const char *mode, const struct run_stats *st) {
  char rss[32], io[32], bud[32];
  ferry_format_size(st->peak_rss, rss, sizeof rss);
  ferry_format_size(st->io_bytes, io, sizeof io);
  ferry_format_size(st->ram_budget, bud, sizeof bud);
  uint64_t acc = st->host_hits + st->host_misses;
  fprintf(f, "\n");
  fprintf(f, "  mode             %s\n", mode);
  if (st->backend) fprintf(f, "  backend          %s: %s\n", st->backend, st->device);
  fprintf(f, "  load time        %.2f s\n", st->load_s);
  fprintf(f, "  TTFT             %.3f s\n", st->ttft_s);
  fprintf(f, "  prefill          %.2f tok/s (%d tokens)\n", gen_prefill_rate(st), st->n_prompt);
  fprintf(f, "  decode           %.2f tok/s (%d tokens)\n", gen_decode_rate(st), st->n_generated);
  fprintf(f, "  peak RAM (RSS)   %s (budget %s)\n", rss, bud);
  if (st->vram_budget) {
    char pv[32], vb[32];
    ferry_format_size(st->peak_vram, pv, sizeof pv);
    ferry_format_size(st->vram_budget, vb, sizeof vb);
    fprintf(f, "  peak VRAM        %s (budget %s)\n", pv, vb);
  } else {
    fprintf(f, "  peak VRAM        0 B (no device)\n");
  }
  fprintf(f, "  read from disk   %s in %llu reads, %.2f s waiting%s\n", io,
          (unsigned long long)st->io_reads, st->io_s,
          st->io_reads ? (st->io_direct ? " (O_DIRECT)" : " (buffered)") : "");
  const uint64_t vacc = st->dev_hits + st->dev_misses;
  if (vacc)
    fprintf(f,
            "  expert hit rate  VRAM %.1f%% (%llu hits, %llu misses, %llu evictions, %llu slots)\n",
            100.0 * (double)st->dev_hits / (double)vacc, (unsigned long long)st->dev_hits,
            (unsigned long long)st->dev_misses, (unsigned long long)st->dev_evictions,
            (unsigned long long)st->dev_capacity);
  if (acc)
    fprintf(f,
            "  expert hit rate  %s %.1f%% (%llu hits, %llu misses, %llu evictions, %llu slots)\n",
            vacc ? "RAM " : "host", 100.0 * (double)st->host_hits / (double)acc,
            (unsigned long long)st->host_hits, (unsigned long long)st->host_misses,
            (unsigned long long)st->host_evictions, (unsigned long long)st->host_capacity);
  if (st->experts_gpu || st->h2d_bytes) {
    char h2d[32];
    ferry_format_size(st->h2d_bytes, h2d, sizeof h2d);
    const int nt = st->n_prompt + st->n_generated > 0 ? st->n_prompt + st->n_generated : 1;
    fprintf(f,
            "  experts computed %llu on the device, %llu on the CPU (%.2f s); %llu promoted to "
            "VRAM, %s copied\n",
            (unsigned long long)st->experts_gpu, (unsigned long long)st->experts_cpu,
            st->cpu_expert_s, (unsigned long long)st->promoted, h2d);
    fprintf(f, "  stalls per token disk %.2f ms, copies %.2f ms\n", 1e3 * st->disk_wait_s / nt,
            1e3 * st->copy_wait_s / nt);
  }
  if (st->prefetch) {
    uint64_t res = st->pf_used + st->pf_wrong;
    char pb[32];
    ferry_format_size(st->pf_bytes, pb, sizeof pb);
    fprintf(f,
            "  prefetch         %llu issued, %llu used, %llu wrong (%.1f%% right), %llu "
            "cancelled, %llu skipped by the cap, %s read\n",
            (unsigned long long)st->pf_issued, (unsigned long long)st->pf_used,
            (unsigned long long)st->pf_wrong, res ? 100.0 * (double)st->pf_used / (double)res : 0.0,
            (unsigned long long)st->pf_cancelled, (unsigned long long)st->pf_skipped, pb);
  }
  if (st->has_routing) {
    fprintf(f, "  routing          lag-1 reuse ");
    if (st->lag1_reuse >= 0)
      fprintf(f, "%.1f%%", 100 * st->lag1_reuse);
    else
      fprintf(f, "-");
    fprintf(f, ", stale-gate accuracy ");
    if (st->stale_gate_accuracy >= 0)
      fprintf(f, "%.1f%%", 100 * st->stale_gate_accuracy);
    else
      fprintf(f, "-");
    fprintf(f, ", coverage90 %.1f%% of the experts\n", 100 * st->coverage90);
  }
}
