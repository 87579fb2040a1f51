// engine/serve_fmt.c: the bodies `ferry serve` answers with, built with jansson: OpenAI's
// chat.completion(.chunk) and text_completion objects, Ollama's chat/generate objects with
// their timing fields, model lists, errors, and the Prometheus text of /metrics. Shapes follow
// the two APIs' documentation (wire formats only).
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/base.h"
#include "engine/serve_int.h"

int64_t fmt_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

void fmt_rfc3339(char *buf, size_t n, int64_t ns) {
  time_t s = (time_t)(ns / 1000000000ll);
  struct tm tm;
  gmtime_r(&s, &tm);
  size_t k = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + k, n - k, ".%09lldZ", (long long)(ns % 1000000000ll));
}

json_t *fmt_text(const char *text, size_t n) {
  if (ferry_utf8_invalid_at(text, n) == n) return json_stringn(text, n);
  // a model may emit bytes that are not UTF-8: one U+FFFD per such byte, as --json does
  char *s = malloc(3 * n + 1);
  if (!s) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n;) {
    size_t len = ferry_utf8_seq((const unsigned char *)text + i, n - i);
    if (len) {
      memcpy(s + k, text + i, len), k += len, i += len;
    } else {
      memcpy(s + k, "\xef\xbf\xbd", 3), k += 3, i++;
    }
  }
  json_t *o = json_stringn(s, k);
  free(s);
  return o;
}

const char *fmt_finish(const struct job *j) {
  return j->r.finish == GEN_FINISH_LENGTH ? "length" : "stop";
}

static const char *model_name(const struct job *j) {
  return *j->req.model ? j->req.model : j->srv->alias;
}

static bool is_openai(const struct job *j) {
  return j->api == SERVE_OAI_CHAT || j->api == SERVE_OAI_COMPLETION;
}

// The head every OpenAI object starts with.
static json_t *oai_head(const struct job *j, const char *object) {
  return json_pack("{s:s, s:s, s:I, s:s}", "id", j->id, "object", object, "created",
                   (json_int_t)j->created, "model", model_name(j));
}

static json_t *oai_usage(const struct job *j) {
  int n = j->r.n_generated;
  return json_pack("{s:i, s:i, s:i, s:{s:i}}", "prompt_tokens", j->n_ids, "completion_tokens", n,
                   "total_tokens", j->n_ids + n, "prompt_tokens_details", "cached_tokens",
                   j->r.n_keep);
}

static double ms(double s) { return round(s * 1e6) / 1e3; } // milliseconds, to the microsecond

// Not part of OpenAI's API (clients ignore it): where the time went.
static json_t *timings(const struct job *j) {
  const struct gen_result *r = &j->r;
  return json_pack("{s:i, s:i, s:f, s:i, s:f, s:f, s:f}", "cache_n", r->n_keep, "prompt_n",
                   j->n_ids - r->n_keep, "prompt_ms", ms(r->st.prefill_s), "predicted_n",
                   r->n_generated, "predicted_ms", ms(r->st.decode_s), "ttft_ms", ms(r->st.ttft_s),
                   "queue_ms", ms(j->t_start - j->t_recv));
}

static json_t *ollama_head(const char *model) {
  char at[48];
  fmt_rfc3339(at, sizeof at, fmt_now_ns());
  return json_pack("{s:s, s:s}", "model", model, "created_at", at);
}

// Adds the text to an Ollama object as `message` (chat) or `response` (generate).
static void ollama_text(json_t *o, const struct job *j, json_t *text) {
  if (j->api == SERVE_OLLAMA_CHAT)
    json_object_set_new(o, "message",
                        json_pack("{s:s, s:o}", "role", "assistant", "content", text));
  else
    json_object_set_new(o, "response", text);
}

static void ollama_done(json_t *o, const struct job *j) {
  const struct gen_result *r = &j->r;
  json_object_set_new(o, "done", json_true());
  json_object_set_new(o, "done_reason", json_string(fmt_finish(j)));
  json_t *t =
      json_pack("{s:I, s:I, s:i, s:I, s:i, s:I}", "total_duration",
                (json_int_t)(1e9 * (j->t_done - j->t_recv)), "load_duration",
                (json_int_t)(1e9 * (j->t_start - j->t_recv)), "prompt_eval_count",
                j->n_ids - r->n_keep, "prompt_eval_duration", (json_int_t)(1e9 * r->st.prefill_s),
                "eval_count", r->n_generated, "eval_duration", (json_int_t)(1e9 * r->st.decode_s));
  json_object_update(o, t);
  json_decref(t);
}

json_t *fmt_chunk(const struct job *j, const char *text, size_t n, bool role) {
  json_t *s = fmt_text(text, n), *o;
  if (!s) return NULL;
  if (j->api == SERVE_OAI_CHAT) {
    o = oai_head(j, "chat.completion.chunk");
    json_t *delta = role ? json_pack("{s:s, s:o}", "role", "assistant", "content", s)
                         : json_pack("{s:o}", "content", s);
    json_object_set_new(o, "choices",
                        json_pack("[{s:i, s:o, s:n, s:n}]", "index", 0, "delta", delta, "logprobs",
                                  "finish_reason"));
  } else if (j->api == SERVE_OAI_COMPLETION) {
    o = oai_head(j, "text_completion");
    json_object_set_new(
        o, "choices",
        json_pack("[{s:i, s:o, s:n, s:n}]", "index", 0, "text", s, "logprobs", "finish_reason"));
  } else {
    o = ollama_head(model_name(j));
    ollama_text(o, j, s);
    json_object_set_new(o, "done", json_false());
  }
  if (is_openai(j) && j->req.include_usage) json_object_set_new(o, "usage", json_null());
  return o;
}

json_t *fmt_final_chunk(const struct job *j) {
  if (!is_openai(j)) {
    json_t *o = ollama_head(model_name(j));
    ollama_text(o, j, json_string(""));
    ollama_done(o, j);
    return o;
  }
  bool chat = j->api == SERVE_OAI_CHAT;
  json_t *o = oai_head(j, chat ? "chat.completion.chunk" : "text_completion");
  json_t *choice = chat ? json_pack("{s:i, s:{}, s:n, s:s}", "index", 0, "delta", "logprobs",
                                    "finish_reason", fmt_finish(j))
                        : json_pack("{s:i, s:s, s:n, s:s}", "index", 0, "text", "", "logprobs",
                                    "finish_reason", fmt_finish(j));
  json_object_set_new(o, "choices", json_pack("[o]", choice));
  if (j->req.include_usage) json_object_set_new(o, "usage", json_null());
  json_object_set_new(o, "timings", timings(j));
  return o;
}

json_t *fmt_usage_chunk(const struct job *j) {
  json_t *o = oai_head(j, j->api == SERVE_OAI_CHAT ? "chat.completion.chunk" : "text_completion");
  json_object_set_new(o, "choices", json_array());
  json_object_set_new(o, "usage", oai_usage(j));
  return o;
}

json_t *fmt_response(const struct job *j) {
  json_t *text = fmt_text(j->r.text ? j->r.text : "", j->r.text_len), *o;
  if (!text) return NULL;
  if (j->api == SERVE_OAI_CHAT) {
    o = oai_head(j, "chat.completion");
    json_object_set_new(
        o, "choices",
        json_pack("[{s:i, s:{s:s, s:o}, s:n, s:s}]", "index", 0, "message", "role", "assistant",
                  "content", text, "logprobs", "finish_reason", fmt_finish(j)));
  } else if (j->api == SERVE_OAI_COMPLETION) {
    o = oai_head(j, "text_completion");
    json_object_set_new(o, "choices",
                        json_pack("[{s:i, s:o, s:n, s:s}]", "index", 0, "text", text, "logprobs",
                                  "finish_reason", fmt_finish(j)));
  } else {
    o = ollama_head(model_name(j));
    ollama_text(o, j, text);
    ollama_done(o, j);
    return o;
  }
  json_object_set_new(o, "usage", oai_usage(j));
  json_object_set_new(o, "timings", timings(j));
  return o;
}

json_t *fmt_load_response(const struct server *srv, const struct serve_req *req) {
  json_t *o = ollama_head(*req->model ? req->model : srv->alias);
  if (req->api == SERVE_OLLAMA_CHAT)
    json_object_set_new(o, "message", json_pack("{s:s, s:s}", "role", "assistant", "content", ""));
  else
    json_object_set_new(o, "response", json_string(""));
  json_object_set_new(o, "done", json_true());
  json_object_set_new(o, "done_reason", json_string("load"));
  return o;
}

json_t *fmt_error(enum route r, int status, const char *msg) {
  if (r == R_OLLAMA_CHAT || r == R_OLLAMA_GENERATE) return json_pack("{s:s}", "error", msg);
  const char *type = status == 401   ? "authentication_error"
                     : status == 404 ? "not_found_error"
                     : status == 503 ? "unavailable_error"
                     : status >= 500 ? "server_error"
                                     : "invalid_request_error";
  return json_pack("{s:{s:s, s:s, s:i}}", "error", "message", msg, "type", type, "code", status);
}

json_t *fmt_models(const struct server *srv) {
  return json_pack("{s:s, s:[{s:s, s:s, s:I, s:s}]}", "object", "list", "data", "id", srv->alias,
                   "object", "model", "created", (json_int_t)srv->mtime, "owned_by", "ferry");
}

json_t *fmt_tags(const struct server *srv, bool ps) {
  json_t *m = json_pack(
      "{s:s, s:s, s:s, s:I, s:s, s:{s:s, s:s, s:s, s:[s], s:s, s:s}}", "name", srv->alias, "model",
      srv->alias, "modified_at", srv->modified_at, "size", (json_int_t)srv->file_size, "digest",
      srv->digest, "details", "parent_model", "", "format", "gguf", "family", srv->family,
      "families", srv->family, "parameter_size", srv->params, "quantization_level", srv->quant);
  if (m && ps) { // loaded models: resident until the server stops
    json_object_set_new(m, "size", json_integer((json_int_t)ferry_peak_rss_bytes()));
    json_object_set_new(m, "size_vram", json_integer(0));
    json_object_set_new(m, "expires_at", json_string("2318-01-01T00:00:00Z"));
    json_object_del(m, "modified_at");
  }
  return json_pack("{s:[o]}", "models", m);
}

// ---------------------------------------------------------------------------------------
// /metrics (Prometheus text format 0.0.4)

static const char *const k_route_names[R_COUNT] = {"/health",
                                                   "/metrics",
                                                   "/v1/models",
                                                   "/v1/chat/completions",
                                                   "/v1/completions",
                                                   "/api/chat",
                                                   "/api/generate",
                                                   "/api/tags",
                                                   "/api/ps",
                                                   "/api/version",
                                                   "/api/show",
                                                   "/",
                                                   "other"};
static const int k_status_codes[STATUS_SLOTS] = {200, 204, 400, 401, 404, 405, 500, 503, 0};

void metrics_count(struct server *srv, enum route r, int status) {
  int slot = STATUS_SLOTS - 1;
  for (int i = 0; i < STATUS_SLOTS - 1; i++)
    if (k_status_codes[i] == status) slot = i;
  pthread_mutex_lock(&srv->mmu);
  srv->m.requests[r][slot]++;
  pthread_mutex_unlock(&srv->mmu);
}

static void counter(FILE *f, const char *name, const char *help, double v) {
  fprintf(f, "# HELP %s %s\n# TYPE %s counter\n%s %.17g\n", name, help, name, name, v);
}
static void gauge(FILE *f, const char *name, const char *help, double v) {
  fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, v);
}

char *fmt_metrics(struct server *srv, size_t *len) {
  char *buf = NULL;
  FILE *f = open_memstream(&buf, len);
  if (!f) return NULL;
  pthread_mutex_lock(&srv->qmu);
  int waiting = srv->q_len, busy = srv->busy;
  pthread_mutex_unlock(&srv->qmu);
  pthread_mutex_lock(&srv->mmu);
  struct metrics m = srv->m;
  pthread_mutex_unlock(&srv->mmu);
  fprintf(f,
          "# HELP ferry_requests_total HTTP requests answered, by endpoint and status.\n"
          "# TYPE ferry_requests_total counter\n");
  for (int r = 0; r < R_COUNT; r++)
    for (int s = 0; s < STATUS_SLOTS; s++)
      if (m.requests[r][s]) {
        char code[8];
        snprintf(code, sizeof code, "%d", k_status_codes[s]);
        fprintf(f, "ferry_requests_total{endpoint=\"%s\",status=\"%s\"} %llu\n", k_route_names[r],
                k_status_codes[s] ? code : "other", (unsigned long long)m.requests[r][s]);
      }
  counter(f, "ferry_prompt_tokens_total", "Prompt tokens of generation requests.",
          (double)m.prompt_tokens);
  counter(f, "ferry_prompt_tokens_cached_total",
          "Prompt tokens taken from the prompt cache instead of computed.",
          (double)m.cached_tokens);
  counter(f, "ferry_generated_tokens_total", "Tokens generated.", (double)m.generated_tokens);
  counter(f, "ferry_generations_cancelled_total",
          "Generations stopped early (client gone or shutdown).", (double)m.cancelled);
  fprintf(f,
          "# HELP ferry_ttft_seconds Time to first token (prefill and first sample) per "
          "generation.\n# TYPE ferry_ttft_seconds summary\nferry_ttft_seconds_sum %.17g\n"
          "ferry_ttft_seconds_count %llu\n",
          m.ttft_sum, (unsigned long long)m.ttft_n);
  counter(f, "ferry_prefill_seconds_total", "Time spent computing prompts.", m.prefill_s);
  counter(f, "ferry_decode_seconds_total", "Time spent generating after the first token.",
          m.decode_s);
  counter(f, "ferry_decode_tokens_total", "Tokens generated after the first of each request.",
          (double)m.decode_tokens);
  gauge(f, "ferry_decode_tokens_per_second", "Decode rate of the last generation.",
        m.last_decode_tok_s);
  const char *tiers[2] = {"host", "device"};
  uint64_t v[4][2] = {{m.st.host_hits, m.st.dev_hits},
                      {m.st.host_misses, m.st.dev_misses},
                      {m.st.host_evictions, m.st.dev_evictions},
                      {m.st.host_capacity, m.st.dev_capacity}};
  const char *names[4] = {"ferry_expert_cache_hits_total", "ferry_expert_cache_misses_total",
                          "ferry_expert_cache_evictions_total", "ferry_expert_cache_slots"};
  const char *helps[4] = {"Routed experts found in the cache (stream mode).",
                          "Routed experts read from storage (stream mode).",
                          "Experts evicted from the cache.", "Expert slots in the cache."};
  for (int k = 0; k < 4; k++) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", names[k], helps[k], names[k],
            k == 3 ? "gauge" : "counter");
    for (int t = 0; t < 2; t++)
      fprintf(f, "%s{tier=\"%s\"} %llu\n", names[k], tiers[t], (unsigned long long)v[k][t]);
  }
  counter(f, "ferry_io_read_bytes_total", "Bytes read from the model file while generating.",
          (double)m.st.io_bytes);
  counter(f, "ferry_io_reads_total", "Reads from the model file while generating.",
          (double)m.st.io_reads);
  counter(f, "ferry_io_read_seconds_total", "Time spent waiting for reads.", m.st.io_s);
  gauge(f, "ferry_queue_length", "Requests waiting behind the one generating.", waiting);
  gauge(f, "ferry_requests_generating", "1 while a request is generating.", busy);
  gauge(f, "ferry_peak_rss_bytes", "Peak resident memory of the server.",
        (double)ferry_peak_rss_bytes());
  if (fclose(f)) {
    free(buf);
    return NULL;
  }
  return buf;
}
