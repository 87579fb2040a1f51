// engine/serve_http.c: the HTTP side of `ferry serve` on libmicrohttpd, one thread per
// connection: routing, Bearer authentication, bounded request bodies, the hand-over of a
// generation request to the engine thread (serve.c), and streamed responses (SSE for the
// OpenAI API, newline-delimited JSON for Ollama's).
//
// A connection thread may block: while its request waits in the queue or generates, and in
// a stream's reader until the engine has new text. Memory a client can make us hold is
// bounded: --max-body per body, srv->body_cap over all bodies, one body parsed at a time.
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/serve_int.h"

enum { IDLE_TIMEOUT_S = 60, STOP_GRACE_S = 2, STREAM_BLOCK = 16 << 10 };

struct route_def {
  const char *path;
  enum route r;
  bool post;
};
static const struct route_def k_routes[] = {
    {"/health", R_HEALTH, false},
    {"/metrics", R_METRICS, false},
    {"/v1/models", R_MODELS, false},
    {"/models", R_MODELS, false},
    {"/v1/chat/completions", R_CHAT, true},
    {"/chat/completions", R_CHAT, true},
    {"/v1/completions", R_COMPLETIONS, true},
    {"/completions", R_COMPLETIONS, true},
    {"/api/chat", R_OLLAMA_CHAT, true},
    {"/api/generate", R_OLLAMA_GENERATE, true},
    {"/api/tags", R_TAGS, false},
    {"/api/ps", R_PS, false},
    {"/api/version", R_VERSION, false},
    {"/api/show", R_SHOW, true},
    {"/", R_ROOT, false},
};

// One HTTP request (MHD's per-request pointer).
struct conn_req {
  struct server *srv;
  enum route route;
  bool ollama; // errors in Ollama's shape ({"error": "message"})
  double t_recv;
  char *body;
  size_t len, cap, held; // held: bytes counted in srv->body_bytes
  bool replied;          // a response is queued (an error found while the body arrived)
};

// ---------------------------------------------------------------------------------------
// responses

static enum MHD_Result send_response(struct MHD_Connection *c, struct conn_req *cr, int status,
                                     struct MHD_Response *resp, const char *ctype) {
  if (!resp) return MHD_NO;
  if (ctype) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
  MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
  if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
  enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, resp);
  MHD_destroy_response(resp);
  metrics_count(cr->srv, cr->route, status);
  cr->replied = true;
  return ok;
}

static enum MHD_Result reply_bytes(struct MHD_Connection *c, struct conn_req *cr, int status,
                                   const char *ctype, char *body, size_t len) {
  return send_response(c, cr, status,
                       MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE), ctype);
}

static enum MHD_Result reply_json(struct MHD_Connection *c, struct conn_req *cr, int status,
                                  json_t *o) {
  char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
  json_decref(o);
  if (!s) return MHD_NO; // out of memory: drop the connection
  return reply_bytes(c, cr, status, "application/json", s, strlen(s));
}

static enum MHD_Result reply_error(struct MHD_Connection *c, struct conn_req *cr, int status,
                                   const char *msg) {
  log_debug("serve: %d %s", status, msg);
  return reply_json(c, cr, status, fmt_error(cr->ollama ? R_OLLAMA_CHAT : R_CHAT, status, msg));
}

// ---------------------------------------------------------------------------------------
// generation requests

static bool model_matches(const char *want, const char *alias) {
  size_t n = strlen(alias);
  return !strcmp(want, alias) || (!strncmp(want, alias, n) && !strcmp(want + n, ":latest"));
}

// Body -> job: parse, check the model and the context, tokenize, fill the generation
// parameters. On failure *status is the HTTP status and the message is set.
static int job_prepare(struct server *srv, struct job *j, const char *body, size_t len,
                       int *status) {
  *status = 400;
  int rc = serve_req_parse(&j->req, j->api, body, len);
  if (rc) {
    if (rc == -ENOMEM) *status = 503;
    return rc;
  }
  if (*j->req.model && !model_matches(j->req.model, srv->alias)) {
    *status = 404;
    return ferry_fail(-ENOENT, "model '%.200s' not found; this server serves '%s'", j->req.model,
                      srv->alias);
  }
  if (j->req.load_only) return 0;
  size_t n = 0;
  rc = tok_encode(session_tokenizer(srv->s), j->req.prompt, j->req.prompt_len, true, &j->ids, &n);
  free(j->req.prompt); // the ids are what is kept
  j->req.prompt = NULL;
  if (rc) return *status = 503, rc;
  j->n_ids = (int)n;
  pthread_mutex_lock(&srv->mmu);
  uint64_t seed = ferry_rng_u64(&srv->rng), a = ferry_rng_u64(&srv->rng),
           b = ferry_rng_u64(&srv->rng);
  pthread_mutex_unlock(&srv->mmu);
  if ((rc = serve_req_gen_params(&j->req, j->n_ids, &srv->defaults, seed, &j->gp))) return rc;
  bool chat = j->api == SERVE_OAI_CHAT;
  snprintf(j->id, sizeof j->id, "%s-%012llx%012llx", chat ? "chatcmpl" : "cmpl",
           (unsigned long long)(a >> 16), (unsigned long long)(b >> 16));
  j->created = fmt_now_ns() / 1000000000;
  return 0;
}

// One line per generation; for streams also how long after the engine's first token the
// first byte was handed to the socket (the server's own latency).
static void log_request(const struct job *j, double t_first_byte) {
  const struct gen_result *r = &j->r;
  char fb[64] = "";
  if (t_first_byte > 0)
    snprintf(fb, sizeof fb, ", first byte %.2f ms after it",
             1e3 * (t_first_byte - j->t_start - r->st.ttft_s));
  const char *how = j->status                           ? j->err
                    : r->finish == GEN_FINISH_CANCELLED ? "cancelled: client gone"
                                                        : fmt_finish(j);
  log_info(
      "serve: %s: prompt %d tokens (%d cached), %d generated (%s), queued %.1f ms, "
      "TTFT %.1f ms%s, %.1f tok/s",
      j->id, j->n_ids, r->n_keep, r->n_generated, how, 1e3 * (j->t_start - j->t_recv),
      1e3 * r->st.ttft_s, fb, gen_decode_rate(&r->st));
}

// A streamed answer: what the engine handed over, formatted into `out` for MHD.
struct stream {
  struct job *j;
  bool sse; // OpenAI: server-sent events; Ollama: one JSON object per line
  char *out;
  size_t len, off, cap;
  char *text; // taken from the job (swapped with its pending buffer)
  size_t tcap;
  bool role_sent, ended;
  double t_first_byte;
};

static int out_reserve(struct stream *st, size_t n) {
  if (st->len + n <= st->cap) return 0;
  size_t cap = st->cap ? st->cap : 4096;
  while (cap < st->len + n) cap *= 2;
  char *p = realloc(st->out, cap);
  if (!p) return -ENOMEM;
  st->out = p, st->cap = cap;
  return 0;
}

static int out_bytes(struct stream *st, const char *s, size_t n) {
  if (out_reserve(st, n)) return -ENOMEM;
  memcpy(st->out + st->len, s, n);
  st->len += n;
  return 0;
}

// One event: `data: {json}` and a blank line (SSE), or `{json}` and a newline (NDJSON).
static int out_event(struct stream *st, json_t *o) {
  size_t flags = JSON_COMPACT | JSON_REAL_PRECISION(10), n = o ? json_dumpb(o, NULL, 0, flags) : 0;
  int rc = n ? 0 : -ENOMEM;
  if (!rc && st->sse) rc = out_bytes(st, "data: ", 6);
  if (!rc) rc = out_reserve(st, n);
  if (!rc) st->len += json_dumpb(o, st->out + st->len, n, flags);
  if (!rc) rc = out_bytes(st, st->sse ? "\n\n" : "\n", st->sse ? 2 : 1);
  json_decref(o);
  return rc;
}

// Formats what the engine handed over: the role (first OpenAI chat chunk), new text, and
// when the job is done its last chunks.
static int stream_fill(struct stream *st, size_t tlen, bool done) {
  struct job *j = st->j;
  int rc = 0;
  if (!st->role_sent && j->api == SERVE_OAI_CHAT) rc = out_event(st, fmt_chunk(j, "", 0, true));
  st->role_sent = true;
  if (!rc && tlen) rc = out_event(st, fmt_chunk(j, st->text, tlen, false));
  if (rc || !done) return rc;
  if (j->status) {
    rc = out_event(st, fmt_error(st->sse ? R_CHAT : R_OLLAMA_CHAT, j->status, j->err));
  } else {
    rc = out_event(st, fmt_final_chunk(j));
    if (!rc && j->req.include_usage) rc = out_event(st, fmt_usage_chunk(j));
  }
  if (!rc && st->sse && !j->status) rc = out_bytes(st, "data: [DONE]\n\n", 14); // an error ends it
  return rc;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
  struct stream *st = cls;
  struct job *j = st->j;
  while (st->off == st->len) {
    if (st->ended) return MHD_CONTENT_READER_END_OF_STREAM;
    st->off = st->len = 0;
    bool need_role = !st->role_sent && j->api == SERVE_OAI_CHAT;
    pthread_mutex_lock(&j->mu);
    while (!need_role && !j->pend_len && !j->done) pthread_cond_wait(&j->cv, &j->mu);
    char *t = j->pend;
    size_t tcap = j->pend_cap, tlen = j->pend_len;
    j->pend = st->text, j->pend_cap = st->tcap, j->pend_len = 0;
    st->text = t, st->tcap = tcap;
    bool done = j->done;
    if (tlen) pthread_cond_broadcast(&j->cv); // the engine may wait for the first text
    pthread_mutex_unlock(&j->mu);
    if (stream_fill(st, tlen, done)) return MHD_CONTENT_READER_END_WITH_ERROR;
    st->ended = done;
  }
  size_t n = st->len - st->off < max ? st->len - st->off : max;
  memcpy(buf, st->out + st->off, n);
  st->off += n;
  if (!st->t_first_byte) st->t_first_byte = ferry_now_s();
  return (ssize_t)n;
}

static void stream_free(void *cls) {
  struct stream *st = cls;
  struct job *j = st->j;
  pthread_mutex_lock(&j->mu);
  j->gone = true; // a no-op when done; otherwise the client went away: stop generating
  bool done = j->done;
  pthread_mutex_unlock(&j->mu);
  if (done) log_request(j, st->t_first_byte);
  job_put(j);
  free(st->out);
  free(st->text);
  free(st);
}

static struct job *job_new(struct server *srv, enum serve_api api, double t_recv) {
  struct job *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  pthread_mutex_init(&j->mu, NULL);
  pthread_condattr_t ca; // timed waits on the monotonic clock
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&j->cv, &ca);
  pthread_condattr_destroy(&ca);
  j->refs = 1, j->srv = srv, j->api = api, j->sock = -1, j->t_recv = t_recv;
  return j;
}

// A queued job's answer: waits for its end (plain) or its first token (stream), then sends
// the whole body, an error, or starts the stream (which then holds the reference: *jp = NULL).
static enum MHD_Result reply_job(struct MHD_Connection *c, struct conn_req *cr, struct job **jp) {
  struct job *j = *jp;
  pthread_mutex_lock(&j->mu);
  while (!j->done && !(j->req.stream && j->n_tokens > 0)) pthread_cond_wait(&j->cv, &j->mu);
  bool done = j->done;
  pthread_mutex_unlock(&j->mu);
  if (done && j->status == 499) return MHD_NO; // the client is gone: close
  if (done && j->status) return reply_error(c, cr, j->status, j->err);
  if (!j->req.stream) {
    enum MHD_Result ok = reply_json(c, cr, 200, fmt_response(j));
    log_request(j, 0);
    return ok;
  }
  struct stream *st = calloc(1, sizeof *st);
  struct MHD_Response *resp = st ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK,
                                                                     stream_read, st, stream_free)
                                 : NULL;
  if (!resp) {
    free(st);
    return MHD_NO;
  }
  st->j = j, st->sse = j->api == SERVE_OAI_CHAT || j->api == SERVE_OAI_COMPLETION;
  *jp = NULL;
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
  return send_response(c, cr, 200, resp, st->sse ? "text/event-stream" : "application/x-ndjson");
}

static enum MHD_Result handle_generate(struct MHD_Connection *c, struct conn_req *cr,
                                       enum serve_api api) {
  struct server *srv = cr->srv;
  struct job *j = job_new(srv, api, cr->t_recv);
  if (!j) return reply_error(c, cr, 503, "out of memory");
  int status;
  pthread_mutex_lock(&srv->prep_mu);
  int rc = job_prepare(srv, j, cr->body ? cr->body : "", cr->len, &status);
  pthread_mutex_unlock(&srv->prep_mu);
  atomic_fetch_sub(&srv->body_bytes, cr->held);
  free(cr->body);
  cr->body = NULL, cr->held = cr->len = cr->cap = 0;
  enum MHD_Result ok;
  if (rc) {
    ok = reply_error(c, cr, status, ferry_errmsg());
  } else if (j->req.load_only) {
    ok = reply_json(c, cr, 200, fmt_load_response(srv, &j->req));
  } else {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    j->sock = ci ? ci->connect_fd : -1;
    // a generation may take longer than an idle connection is allowed to (restored when done)
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    rc = queue_push(srv, j);
    if (rc == -EBUSY) {
      char msg[160];
      snprintf(msg, sizeof msg,
               "the server is busy: %d request(s) are waiting (--queue %d); try again later",
               srv->so.queue, srv->so.queue);
      ok = reply_error(c, cr, 503, msg);
    } else if (rc) {
      ok = reply_error(c, cr, 503, "the server is shutting down");
    } else {
      ok = reply_job(c, cr, &j);
    }
  }
  job_put(j);
  return ok;
}

// ---------------------------------------------------------------------------------------
// the other endpoints

static enum MHD_Result handle_show(struct MHD_Connection *c, struct conn_req *cr) {
  json_error_t err;
  json_t *o = json_loadb(cr->body ? cr->body : "", cr->len, JSON_REJECT_DUPLICATES, &err);
  const char *name = NULL;
  if (json_is_object(o)) {
    json_t *m = json_object_get(o, "model");
    if (!m) m = json_object_get(o, "name");
    name = json_string_value(m);
  }
  char msg[320];
  enum MHD_Result ok;
  if (!name) {
    ok = reply_error(c, cr, 400, "the body must be a JSON object with a string 'model'");
  } else if (!model_matches(name, cr->srv->alias)) {
    snprintf(msg, sizeof msg, "model '%.200s' not found", name);
    ok = reply_error(c, cr, 404, msg);
  } else {
    json_t *t = fmt_tags(cr->srv, false),
           *d = json_object_get(json_array_get(json_object_get(t, "models"), 0), "details");
    json_t *r =
        json_pack("{s:s, s:s, s:s, s:O, s:{s:s, s:i}, s:[s]}", "modelfile", "", "parameters", "",
                  "template", "", "details", d, "model_info", "general.architecture",
                  cr->srv->family, "context_length", cr->srv->n_ctx, "capabilities", "completion");
    json_decref(t);
    ok = reply_json(c, cr, 200, r);
  }
  json_decref(o);
  return ok;
}

static enum MHD_Result handle(struct MHD_Connection *c, struct conn_req *cr) {
  struct server *srv = cr->srv;
  switch (cr->route) {
    case R_HEALTH: return reply_json(c, cr, 200, json_pack("{s:s}", "status", "ok"));
    case R_METRICS: {
      size_t n;
      char *s = fmt_metrics(srv, &n);
      return s ? reply_bytes(c, cr, 200, "text/plain; version=0.0.4", s, n) : MHD_NO;
    }
    case R_MODELS: return reply_json(c, cr, 200, fmt_models(srv));
    case R_TAGS: return reply_json(c, cr, 200, fmt_tags(srv, false));
    case R_PS: return reply_json(c, cr, 200, fmt_tags(srv, true));
    case R_VERSION: return reply_json(c, cr, 200, json_pack("{s:s}", "version", "0.9.0"));
    case R_SHOW: return handle_show(c, cr);
    case R_ROOT: {
      char *s = strdup("ferry is running (OpenAI API under /v1, Ollama API under /api)\n");
      return s ? reply_bytes(c, cr, 200, "text/plain", s, strlen(s)) : MHD_NO;
    }
    case R_CHAT: return handle_generate(c, cr, SERVE_OAI_CHAT);
    case R_COMPLETIONS: return handle_generate(c, cr, SERVE_OAI_COMPLETION);
    case R_OLLAMA_CHAT: return handle_generate(c, cr, SERVE_OLLAMA_CHAT);
    case R_OLLAMA_GENERATE: return handle_generate(c, cr, SERVE_OLLAMA_GENERATE);
    default: return reply_error(c, cr, 404, "no such endpoint");
  }
}

// Constant-time comparison: the time taken does not say how much of the key was right.
static bool key_ok(const char *header, const char *key) {
  if (!header || strncmp(header, "Bearer ", 7)) return false;
  const char *got = header + 7;
  size_t n = strlen(key), m = strlen(got);
  unsigned char diff = n != m;
  for (size_t i = 0; i < n; i++) diff |= (unsigned char)key[i] ^ (unsigned char)got[i < m ? i : 0];
  return !diff;
}

static enum MHD_Result reply_too_big(struct MHD_Connection *c, struct conn_req *cr) {
  char msg[128];
  snprintf(msg, sizeof msg, "the body is larger than the limit of %llu bytes (--max-body)",
           (unsigned long long)cr->srv->so.max_body);
  return reply_error(c, cr, 400, msg);
}

// Appends n bytes of the body, within --max-body and the server's budget for all bodies.
static enum MHD_Result take_body(struct MHD_Connection *c, struct conn_req *cr, const char *upload,
                                 size_t n) {
  struct server *srv = cr->srv;
  if (cr->len + n > srv->so.max_body) return reply_too_big(c, cr);
  if (cr->len + n > cr->cap) {
    size_t cap = cr->cap ? cr->cap : 4096;
    while (cap < cr->len + n) cap *= 2;
    if (cap > srv->so.max_body) cap = srv->so.max_body;
    uint64_t more = cap - cr->held;
    if (atomic_fetch_add(&srv->body_bytes, more) + more > srv->body_cap) {
      atomic_fetch_sub(&srv->body_bytes, more);
      return reply_error(c, cr, 503, "the server holds too many request bodies; try again");
    }
    char *p = realloc(cr->body, cap);
    if (!p) {
      atomic_fetch_sub(&srv->body_bytes, more);
      return reply_error(c, cr, 503, "out of memory");
    }
    cr->body = p, cr->held = cr->cap = cap;
  }
  memcpy(cr->body + cr->len, upload, n);
  cr->len += n;
  return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
  struct server *srv = cls;
  struct conn_req *cr = *con_cls;
  if (!cr) { // headers are in: route, authenticate, check the announced length
    if (!(cr = calloc(1, sizeof *cr))) return MHD_NO;
    *con_cls = cr;
    atomic_fetch_add(&srv->active, 1);
    cr->srv = srv, cr->t_recv = ferry_now_s(), cr->route = R_OTHER;
    bool post = !strcmp(method, "POST"), get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    const struct route_def *rd = NULL;
    for (size_t i = 0; i < sizeof k_routes / sizeof k_routes[0]; i++)
      if (!strcmp(url, k_routes[i].path)) rd = &k_routes[i];
    if (rd) cr->route = rd->r;
    cr->ollama = !strncmp(url, "/api/", 5);
    if (!strcmp(method, "OPTIONS")) { // CORS preflight (browsers send no credentials)
      struct MHD_Response *r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
      if (r) {
        MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
        MHD_add_response_header(r, "Access-Control-Max-Age", "86400");
      }
      return send_response(c, cr, 204, r, NULL);
    }
    if (srv->so.api_key && cr->route != R_HEALTH &&
        !key_ok(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
                srv->so.api_key))
      return reply_error(c, cr, 401, "invalid or missing API key (Authorization: Bearer KEY)");
    if (!rd) return reply_error(c, cr, 404, "no such endpoint");
    if (rd->post ? !post : !get) {
      char msg[96];
      snprintf(msg, sizeof msg, "%s needs %s", rd->path, rd->post ? "POST" : "GET");
      return reply_error(c, cr, 405, msg);
    }
    const char *cl =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > srv->so.max_body) return reply_too_big(c, cr);
    if (!post) return handle(c, cr);
    return MHD_YES;
  }
  if (*upload_size) { // more of the body
    size_t n = *upload_size;
    *upload_size = 0;
    return cr->replied ? MHD_YES : take_body(c, cr, upload, n); // after an error: dropped
  }
  if (cr->replied) return MHD_YES;
  return handle(c, cr);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  struct conn_req *cr = *con_cls;
  if (cr) {
    atomic_fetch_sub(&cr->srv->body_bytes, cr->held);
    atomic_fetch_sub(&cr->srv->active, 1);
    free(cr->body);
    free(cr);
    *con_cls = NULL;
  }
  MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
  char buf[512];
  vsnprintf(buf, sizeof buf, fmt, ap);
  size_t n = strlen(buf);
  while (n && buf[n - 1] == '\n') buf[--n] = 0;
  log_debug("serve: libmicrohttpd: %s", buf);
}

int serve_listen(struct serve_opts *so) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
  char port[16];
  snprintf(port, sizeof port, "%d", so->port);
  int rc = getaddrinfo(so->host, port, &hints, &ai);
  if (rc)
    return ferry_fail(-EINVAL, "--host '%s': %s", so->host,
                      rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  so->ipv6 = ai->ai_family == AF_INET6;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
      bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 128)) {
    int e = errno;
    freeaddrinfo(ai);
    if (fd >= 0) close(fd);
    return ferry_fail(-e, "cannot listen on %s port %d: %s (choose another --host or --port)",
                      so->host, so->port, strerror(e));
  }
  freeaddrinfo(ai);
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  getsockname(fd, (struct sockaddr *)&ss, &sl);
  so->port = ntohs(so->ipv6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                            : ((struct sockaddr_in *)&ss)->sin_port);
  so->listen_fd = fd;
  return 0;
}

int http_start(struct server *srv) {
  int fd = srv->so.listen_fd;
  srv->port = srv->so.port;
  unsigned flags = MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC |
                   MHD_USE_ERROR_LOG | (srv->so.ipv6 ? MHD_USE_IPv6 : 0);
  srv->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_LISTEN_SOCKET, fd,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)(srv->so.queue + 32),
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, srv, MHD_OPTION_END);
  if (!srv->d) {
    close(fd);
    return ferry_fail(-EIO, "cannot start the HTTP server (libmicrohttpd)");
  }
  return 0;
}

// Stops accepting, gives the requests being answered (their generations are over: the
// engine has stopped) up to STOP_GRACE_S to send their last bytes, then closes everything.
void http_stop(struct server *srv) {
  if (!srv->d) return;
  MHD_socket fd = MHD_quiesce_daemon(srv->d);
  if (fd != MHD_INVALID_SOCKET) close(fd);
  for (double t0 = ferry_now_s();
       atomic_load(&srv->active) > 0 && ferry_now_s() - t0 < STOP_GRACE_S;)
    nanosleep(&(struct timespec){0, 10 * 1000000}, NULL);
  MHD_stop_daemon(srv->d);
  srv->d = NULL;
}
