// engine/serve_int.h: what the parts of `ferry serve` share (private to engine/serve*.c):
// the server, jobs (one generation request) and their hand-over between an HTTP thread and
// the engine thread, the metrics, and the response formatting.
#pragma once
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/generate.h"
#include "engine/serve.h"
#include "engine/serve_req.h"

// A generation request. The HTTP thread fills the first block and queues it; the engine
// thread runs it. Fields after `mu` are guarded by it; `cv` signals new text and `done`.
// Two references (HTTP thread, engine); the last job_put frees it.
struct job {
  struct server *srv;
  enum serve_api api;
  struct serve_req req; // owns the stop strings
  char id[40];          // "chatcmpl-..." / "cmpl-..."
  int64_t created;      // unix seconds
  int32_t *ids;         // [n_ids] the prompt
  int n_ids;
  struct gen_params gp; // n_keep, callback and checkpoint are set by the engine
  int sock;             // the client's socket, polled for a hang-up (-1: none)
  double t_recv;        // when the request arrived

  pthread_mutex_t mu;
  pthread_cond_t cv;
  char *pend; // streams: final text the HTTP thread has not taken yet
  size_t pend_len, pend_cap;
  int n_tokens;      // generated so far
  bool started;      // the engine took it
  bool done;         // the engine is finished with it: status, err and r are set
  bool gone;         // the client went away (HTTP side noticed)
  bool first_handed; // the engine waited for the HTTP thread to take the first text
  double t_start, t_done;
  int status; // when done: 0, or the HTTP status of the error in err
  char err[512];
  struct gen_result r;
  int refs;
};

void job_put(struct job *j);

// Counters for /metrics. Routes and statuses are small fixed sets, so nothing a client sends
// adds a label.
enum route {
  R_HEALTH,
  R_METRICS,
  R_MODELS,
  R_CHAT,
  R_COMPLETIONS,
  R_OLLAMA_CHAT,
  R_OLLAMA_GENERATE,
  R_TAGS,
  R_PS,
  R_VERSION,
  R_SHOW,
  R_ROOT,
  R_OTHER,
  R_COUNT
};
enum { STATUS_SLOTS = 9 }; // 200 204 400 401 404 405 500 503 other
struct metrics {
  uint64_t requests[R_COUNT][STATUS_SLOTS];
  uint64_t prompt_tokens, cached_tokens, generated_tokens, cancelled;
  double ttft_sum, prefill_s, decode_s;
  uint64_t ttft_n, decode_tokens;
  double last_decode_tok_s;
  struct run_stats st; // session statistics after the last generation (cumulative counters)
};

struct server {
  struct session *s;
  const struct run_opts *o;
  struct serve_opts so;
  const char *alias;
  struct serve_defaults defaults; // what requests leave out
  int n_ctx;
  int port;
  int sig_pipe[2]; // SIGINT/SIGTERM -> the signal thread
  struct MHD_Daemon *d;

  pthread_mutex_t qmu; // the queue
  pthread_cond_t qcv;
  struct job **q; // ring of waiting jobs [so.queue + 1]
  int q_head, q_len, q_cap;
  bool busy;   // the engine is running a job
  bool closed; // shutting down: nothing is queued any more
  atomic_bool stopping;

  pthread_mutex_t prep_mu;         // one request body is parsed and tokenized at a time
  atomic_uint_fast64_t body_bytes; // request bodies held in memory, at most body_cap
  atomic_int active;               // requests being answered (for a graceful stop)
  uint64_t body_cap;

  pthread_mutex_t mmu; // metrics and the id/seed generator
  struct metrics m;
  struct ferry_rng rng; // response ids and the seeds of requests without one
  int pace_ms;          // FERRY_SERVE_PACE_MS: sleep per token (tests of slow generations)

  // prompt cache (engine thread only): the tokens at positions [0, pc_n) of the model, and
  // for recurrent models the position of the state checkpoint (-1: none)
  int32_t *pc_ids; // [n_ctx + 1]
  int pc_n, pc_ck;
  bool recurrent;

  // the model as /api/tags and /v1/models describe it
  int64_t mtime;
  char modified_at[40], digest[20], quant[16], params[16], family[32];
  uint64_t file_size;
};

// ---- serve_http.c: the HTTP side ----
int http_start(struct server *srv); // listens and starts the connection threads
void http_stop(struct server *srv); // closes every connection and joins the threads

// ---- serve.c: the queue (HTTP threads) ----
// 0, -EBUSY when the queue is full, -ESHUTDOWN when the server is stopping.
int queue_push(struct server *srv, struct job *j);
void metrics_count(struct server *srv, enum route r, int status);

// ---- serve_fmt.c: response bodies (jansson objects; the caller decrefs) ----
// `text` may hold any bytes: invalid UTF-8 becomes U+FFFD (JSON strings are Unicode).
json_t *fmt_text(const char *text, size_t n);
void fmt_rfc3339(char *buf, size_t n, int64_t ns_since_epoch); // 2006-01-02T15:04:05.999999999Z
int64_t fmt_now_ns(void);
// One streamed piece (text may be empty: chat's first chunk carries the role).
json_t *fmt_chunk(const struct job *j, const char *text, size_t n, bool role);
// The last streamed object (finish reason, usage or Ollama's timings); NULL for none.
json_t *fmt_final_chunk(const struct job *j);
json_t *fmt_usage_chunk(const struct job *j); // OpenAI include_usage
json_t *fmt_response(const struct job *j);    // the whole answer of a non-streamed request
json_t *fmt_load_response(const struct server *srv, const struct serve_req *req);
json_t *fmt_error(enum route r, int status, const char *msg);
json_t *fmt_models(const struct server *srv);
json_t *fmt_tags(const struct server *srv, bool ps);
char *fmt_metrics(struct server *srv, size_t *len);
const char *fmt_finish(const struct job *j); // "stop" / "length"
