// engine/serve_req.c: request bodies (OpenAI, Ollama) -> generation parameters, parsed with
// jansson. Field names and defaults follow the two APIs' documentation; see serve_req.h for
// the contract and NOTES.md (Serving) for what is accepted, ignored or refused.
#include "engine/serve_req.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

// ---------------------------------------------------------------------------------------
// a growable string for the rendered prompt

struct sbuf {
  char *s;
  size_t len, cap;
};

static int sb_add(struct sbuf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *ns = realloc(b->s, cap);
    if (!ns) return ferry_fail(-ENOMEM, "out of memory");
    b->s = ns, b->cap = cap;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = 0;
  return 0;
}
static int sb_str(struct sbuf *b, const char *s) { return sb_add(b, s, strlen(s)); }

// ---------------------------------------------------------------------------------------
// typed field access: null counts as absent; a present field of the wrong type is an error

static bool too_deep(const json_t *v, int depth) {
  if (depth > SERVE_MAX_DEPTH) return true;
  const char *k;
  json_t *x;
  size_t i;
  if (json_is_object(v)) {
    json_object_foreach((json_t *)v, k, x) if (too_deep(x, depth + 1)) return true;
  } else if (json_is_array(v)) {
    json_array_foreach(v, i, x) if (too_deep(x, depth + 1)) return true;
  }
  return false;
}

static json_t *field(const json_t *o, const char *key) {
  json_t *v = json_object_get(o, key);
  return json_is_null(v) ? NULL : v;
}

static int get_bool(const json_t *o, const char *pre, const char *key, bool *out) {
  json_t *v = field(o, key);
  if (!v) return 0;
  if (!json_is_boolean(v)) return ferry_fail(-EINVAL, "'%s%s' must be true or false", pre, key);
  *out = json_is_true(v);
  return 0;
}

static int get_num(const json_t *o, const char *pre, const char *key, double lo, double hi,
                   float *out, bool *set) {
  json_t *v = field(o, key);
  if (!v) return 0;
  double x = json_number_value(v);
  if (!json_is_number(v) || !(x >= lo && x <= hi))
    return ferry_fail(-EINVAL, "'%s%s' must be a number in [%g, %g]", pre, key, lo, hi);
  *out = (float)x, *set = true;
  return 0;
}

static int get_int(const json_t *o, const char *pre, const char *key, int64_t lo, int64_t hi,
                   int64_t *out, bool *set) {
  json_t *v = field(o, key);
  if (!v) return 0;
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
    return ferry_fail(-EINVAL, "'%s%s' must be an integer in [%lld, %lld]", pre, key, (long long)lo,
                      (long long)hi);
  *out = json_integer_value(v);
  if (set) *set = true;
  return 0;
}

static int get_str(const json_t *o, const char *pre, const char *key, const char **out,
                   size_t *len) {
  json_t *v = field(o, key);
  if (!v) return 0;
  if (!json_is_string(v)) return ferry_fail(-EINVAL, "'%s%s' must be a string", pre, key);
  *out = json_string_value(v);
  if (len) *len = json_string_length(v);
  return 0;
}

// A feature ferry does not have: refused when the field holds anything but its "off" value
// (null, false, "", [], {} or the number given).
static int refuse_if(const json_t *o, const char *key, const char *what) {
  json_t *v = field(o, key);
  bool off = !v || json_is_false(v) || (json_is_string(v) && !json_string_length(v)) ||
             (json_is_array(v) && !json_array_size(v)) ||
             (json_is_object(v) && !json_object_size(v)) ||
             (json_is_integer(v) && !json_integer_value(v));
  return off ? 0 : ferry_fail(-EINVAL, "'%s': %s are not supported", key, what);
}

// ---------------------------------------------------------------------------------------
// shared fields

static int parse_stop(struct serve_req *r, const json_t *o, const char *pre) {
  json_t *v = field(o, "stop");
  if (!v) return 0;
  json_t *one[1] = {v}, *x;
  size_t n = 1;
  if (json_is_array(v))
    n = json_array_size(v);
  else if (!json_is_string(v))
    return ferry_fail(-EINVAL, "'%sstop' must be a string or an array of strings", pre);
  if (n > SERVE_MAX_STOP)
    return ferry_fail(-EINVAL, "'%sstop' has %zu strings; at most %d are supported", pre, n,
                      SERVE_MAX_STOP);
  for (size_t i = 0; i < n; i++) {
    x = json_is_array(v) ? json_array_get(v, i) : one[0];
    size_t len = json_string_length(x);
    if (!json_is_string(x) || len == 0 || len > SERVE_MAX_STOP_LEN)
      return ferry_fail(-EINVAL, "'%sstop[%zu]' must be a non-empty string of at most %d bytes",
                        pre, i, SERVE_MAX_STOP_LEN);
    if (!(r->stop[r->n_stop] = strdup(json_string_value(x))))
      return ferry_fail(-ENOMEM, "out of memory");
    r->n_stop++;
  }
  return 0;
}

// Sampling fields with the same names in OpenAI bodies and Ollama options.
static int parse_sampling(struct serve_req *r, const json_t *o, const char *pre) {
  int64_t top_k = 0, seed = 0;
  bool seed_given = false;
  int rc;
  if ((rc = get_num(o, pre, "temperature", 0, 100, &r->temp, &r->temp_set)) ||
      (rc = get_num(o, pre, "top_p", 0, 1, &r->top_p, &r->top_p_set)) ||
      (rc = get_num(o, pre, "min_p", 0, 1, &r->min_p, &r->min_p_set)) ||
      (rc = get_int(o, pre, "top_k", 0, 1 << 30, &top_k, &r->top_k_set)) ||
      (rc = get_int(o, pre, "seed", INT64_MIN, INT64_MAX, &seed, &seed_given)) ||
      (rc = parse_stop(r, o, pre)))
    return rc;
  r->top_k = (int)top_k;
  if (seed_given && seed >= 0) r->seed = (uint64_t)seed, r->seed_set = true; // < 0: random
  return 0;
}

// ---------------------------------------------------------------------------------------
// chat messages -> ChatML (the same text tok_render_chat gives for one system + user turn)

static int content_text(const json_t *m, size_t i, const char *role, struct sbuf *b) {
  json_t *c = field(m, "content");
  if (!c) return 0; // an assistant turn with no text
  if (json_is_string(c)) {
    const char *s = json_string_value(c);
    size_t n = json_string_length(c);
    // Qwen3's template keeps only the answer of earlier assistant turns, not their reasoning
    const char *end_think = !strcmp(role, "assistant") ? strstr(s, "</think>") : NULL;
    for (const char *t = end_think; t; t = strstr(t + 1, "</think>")) end_think = t;
    if (end_think) {
      s = end_think + strlen("</think>");
      while (*s == '\n') s++;
      n = strlen(s);
    }
    return sb_add(b, s, n);
  }
  if (!json_is_array(c))
    return ferry_fail(-EINVAL, "'messages[%zu].content' must be a string or an array of parts", i);
  size_t j;
  json_t *part;
  json_array_foreach(c, j, part) {
    const char *type = NULL, *text = NULL;
    size_t n = 0;
    if (!json_is_object(part) || get_str(part, "", "type", &type, NULL) || !type)
      return ferry_fail(-EINVAL, "'messages[%zu].content[%zu]' must be an object with a 'type'", i,
                        j);
    if (strcmp(type, "text"))
      return ferry_fail(-EINVAL,
                        "'messages[%zu].content[%zu]': parts of type '%.40s' are not "
                        "supported (text only)",
                        i, j, type);
    if (get_str(part, "", "text", &text, &n) || !text)
      return ferry_fail(-EINVAL, "'messages[%zu].content[%zu].text' must be a string", i, j);
    int rc = sb_add(b, text, n);
    if (rc) return rc;
  }
  return 0;
}

static int render_messages(struct serve_req *r, const json_t *msgs) {
  if (!msgs) return ferry_fail(-EINVAL, "'messages' is required");
  if (!json_is_array(msgs)) return ferry_fail(-EINVAL, "'messages' must be an array");
  if (json_array_size(msgs) == 0) {
    if (r->api == SERVE_OLLAMA_CHAT) return r->load_only = true, 0;
    return ferry_fail(-EINVAL, "'messages' is empty");
  }
  struct sbuf b = {0};
  size_t i;
  json_t *m;
  int rc = 0;
  json_array_foreach(msgs, i, m) {
    const char *role = NULL;
    if (!json_is_object(m)) {
      rc = ferry_fail(-EINVAL, "'messages[%zu]' must be an object", i);
      break;
    }
    if ((rc = get_str(m, "", "role", &role, NULL))) {
      ferry_fail(rc, "'messages[%zu].role' must be a string", i);
      break;
    }
    if (role && !strcmp(role, "developer")) role = "system"; // OpenAI's newer name
    if (!role || (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))) {
      rc = ferry_fail(-EINVAL, "'messages[%zu].role' must be system, user or assistant", i);
      break;
    }
    if ((rc = refuse_if(m, "tool_calls", "tool calls")) ||
        (rc = refuse_if(m, "images", "images"))) {
      ferry_fail_ctx(rc, "messages[%zu]", i);
      break;
    }
    if ((rc = sb_str(&b, "<|im_start|>")) || (rc = sb_str(&b, role)) || (rc = sb_str(&b, "\n")) ||
        (rc = content_text(m, i, role, &b)) || (rc = sb_str(&b, "<|im_end|>\n")))
      break;
  }
  if (!rc) rc = sb_str(&b, "<|im_start|>assistant\n");
  if (rc) {
    free(b.s);
    return rc;
  }
  r->prompt = b.s, r->prompt_len = b.len;
  return 0;
}

// ---------------------------------------------------------------------------------------
// the four request kinds

static int parse_openai(struct serve_req *r, const json_t *o) {
  int64_t v = 0;
  bool set = false;
  int rc;
  json_t *n = field(o, "n");
  if (n && !(json_is_integer(n) && json_integer_value(n) == 1))
    return ferry_fail(-EINVAL, "'n': only 1 choice per request is supported");
  if ((rc = get_bool(o, "", "stream", &r->stream)) || (rc = parse_sampling(r, o, "")) ||
      (rc = refuse_if(o, "tools", "tools")) || (rc = refuse_if(o, "logprobs", "log-probabilities")))
    return rc;
  json_t *so = field(o, "stream_options");
  if (so && !json_is_object(so)) return ferry_fail(-EINVAL, "'stream_options' must be an object");
  if (so && (rc = get_bool(so, "stream_options.", "include_usage", &r->include_usage))) return rc;
  // max_completion_tokens is the newer name; it wins when both are given
  if ((rc = get_int(o, "", "max_tokens", 1, INT32_MAX, &v, &set))) return rc;
  if (set) r->n_predict = v;
  set = false;
  if ((rc = get_int(o, "", "max_completion_tokens", 1, INT32_MAX, &v, &set))) return rc;
  if (set) r->n_predict = v;
  json_t *rf = field(o, "response_format"), *t = rf ? json_object_get(rf, "type") : NULL;
  if (rf && !(json_is_string(t) && !strcmp(json_string_value(t), "text")))
    return ferry_fail(-EINVAL, "'response_format': only {\"type\": \"text\"} is supported");
  if (r->api == SERVE_OAI_CHAT) return render_messages(r, json_object_get(o, "messages"));

  if ((rc = refuse_if(o, "echo", "echoed prompts")) || (rc = refuse_if(o, "suffix", "suffixes")))
    return rc;
  json_t *p = field(o, "prompt");
  if (json_is_array(p) && json_array_size(p) == 1) p = json_array_get(p, 0);
  if (!json_is_string(p))
    return ferry_fail(-EINVAL, "'prompt' must be a string (or an array of one string)");
  if (!(r->prompt = strdup(json_string_value(p)))) return ferry_fail(-ENOMEM, "out of memory");
  r->prompt_len = json_string_length(p);
  return 0;
}

static int parse_ollama(struct serve_req *r, const json_t *o) {
  int rc;
  r->stream = true; // Ollama's default
  if ((rc = get_bool(o, "", "stream", &r->stream)) || (rc = refuse_if(o, "format", "formats")) ||
      (rc = refuse_if(o, "tools", "tools")))
    return rc;
  json_t *opt = field(o, "options");
  if (opt && !json_is_object(opt)) return ferry_fail(-EINVAL, "'options' must be an object");
  if (opt) {
    int64_t v = 0;
    bool set = false;
    if ((rc = parse_sampling(r, opt, "options.")) ||
        (rc = get_int(opt, "options.", "num_predict", -2, INT32_MAX, &v, &set)))
      return rc;
    if (set) r->n_predict = v;
    if ((rc = get_int(opt, "options.", "num_ctx", 1, INT32_MAX, &r->num_ctx, NULL))) return rc;
  }
  if (r->api == SERVE_OLLAMA_CHAT) return render_messages(r, json_object_get(o, "messages"));

  const char *prompt = NULL, *system = NULL;
  size_t plen = 0;
  bool raw = false;
  if ((rc = get_str(o, "", "prompt", &prompt, &plen)) ||
      (rc = get_str(o, "", "system", &system, NULL)) || (rc = get_bool(o, "", "raw", &raw)) ||
      (rc = refuse_if(o, "images", "images")) || (rc = refuse_if(o, "suffix", "suffixes")) ||
      (rc = refuse_if(o, "template", "custom templates")) ||
      (rc = refuse_if(o, "context", "contexts (the prompt cache reuses the last conversation)")))
    return rc;
  if (!prompt || !*prompt) return r->load_only = true, 0;
  struct sbuf b = {0};
  if (raw)
    rc = sb_add(&b, prompt, plen);
  else if (!(rc = system ? sb_str(&b, "<|im_start|>system\n") : 0) &&
           !(rc = system ? sb_str(&b, system) : 0) &&
           !(rc = system ? sb_str(&b, "<|im_end|>\n") : 0))
    if (!(rc = sb_str(&b, "<|im_start|>user\n")) && !(rc = sb_add(&b, prompt, plen)))
      rc = sb_str(&b, "<|im_end|>\n<|im_start|>assistant\n");
  if (rc) {
    free(b.s);
    return rc;
  }
  r->prompt = b.s, r->prompt_len = b.len;
  return 0;
}

int serve_req_parse(struct serve_req *r, enum serve_api api, const char *body, size_t len) {
  memset(r, 0, sizeof *r);
  r->api = api;
  r->n_predict = SERVE_N_PREDICT_UNSET;
  json_error_t err;
  json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
  if (!o) {
    if (err.position >= (int)len && len > 0 && err.line > 0)
      return ferry_fail(-EINVAL, "invalid JSON: %s (at the end of the body)", err.text);
    return ferry_fail(-EINVAL, "invalid JSON: %s (line %d, column %d)", err.text, err.line,
                      err.column);
  }
  int rc;
  const char *model = "";
  if (!json_is_object(o))
    rc = ferry_fail(-EINVAL, "the body must be a JSON object");
  else if (too_deep(o, 1))
    rc = ferry_fail(-EINVAL, "the body nests deeper than %d levels", SERVE_MAX_DEPTH);
  else if (!(rc = get_str(o, "", "model", &model, NULL)))
    rc = api == SERVE_OAI_CHAT || api == SERVE_OAI_COMPLETION ? parse_openai(r, o)
                                                              : parse_ollama(r, o);
  if (!rc && !(r->model = strdup(model ? model : ""))) rc = ferry_fail(-ENOMEM, "out of memory");
  json_decref(o);
  return rc;
}

int serve_req_gen_params(const struct serve_req *r, int n_prompt, const struct serve_defaults *d,
                         uint64_t random_seed, struct gen_params *gp) {
  if (n_prompt <= 0) return ferry_fail(-EINVAL, "the prompt is empty");
  int ctx = d->n_ctx;
  const char *which = "the server's context, ferry serve -c";
  if (r->num_ctx > 0 && r->num_ctx < ctx) ctx = (int)r->num_ctx, which = "options.num_ctx";
  if (n_prompt >= ctx)
    return ferry_fail(-EINVAL, "the prompt has %d tokens but the context is %d tokens (%s)",
                      n_prompt, ctx, which);
  int64_t room = ctx - (int64_t)n_prompt, np = r->n_predict;
  if (np == SERVE_N_PREDICT_UNSET) np = d->n_predict;
  gp->n_predict = (int)(np < 0 || np > room ? room : np);
  struct sampler_params *sp = &gp->sp;
  *sp = d->sp;
  if (r->temp_set) sp->temp = r->temp;
  if (r->top_p_set) sp->top_p = r->top_p;
  if (r->min_p_set) sp->min_p = r->min_p;
  if (r->top_k_set) sp->top_k = r->top_k;
  sp->seed = r->seed_set ? r->seed : d->seed_fixed ? d->sp.seed : random_seed;
  gp->stop = (const char *const *)r->stop;
  gp->n_stop = r->n_stop;
  return 0;
}

void serve_req_free(struct serve_req *r) {
  free(r->model);
  free(r->prompt);
  for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
  memset(r, 0, sizeof *r);
}
