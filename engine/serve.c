// engine/serve.c: the engine side of `ferry serve`: the bounded request queue, the loop that
// runs one generation at a time on the calling thread, the prompt cache over the last
// conversation, cancellation (client gone, SIGINT/SIGTERM) and the per-request statistics.
#include "engine/serve.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/serve_int.h"

// ---------------------------------------------------------------------------------------
// jobs and the queue

void job_put(struct job *j) {
  if (!j) return;
  pthread_mutex_lock(&j->mu);
  bool last = --j->refs == 0;
  pthread_mutex_unlock(&j->mu);
  if (!last) return;
  serve_req_free(&j->req);
  gen_result_free(&j->r);
  free(j->ids);
  free(j->pend);
  pthread_mutex_destroy(&j->mu);
  pthread_cond_destroy(&j->cv);
  free(j);
}

int queue_push(struct server *srv, struct job *j) {
  pthread_mutex_lock(&srv->qmu);
  int rc = 0;
  if (srv->closed)
    rc = -ESHUTDOWN;
  else if (srv->q_len + (srv->busy ? 1 : 0) >= srv->so.queue + 1)
    rc = -EBUSY;
  else {
    srv->q[(srv->q_head + srv->q_len++) % srv->q_cap] = j;
    pthread_mutex_lock(&j->mu);
    j->refs++; // the engine's
    pthread_mutex_unlock(&j->mu);
    pthread_cond_signal(&srv->qcv);
  }
  pthread_mutex_unlock(&srv->qmu);
  return rc;
}

// Blocks until a job is waiting (returned, the engine now busy) or the server stops (NULL).
static struct job *queue_pop(struct server *srv) {
  pthread_mutex_lock(&srv->qmu);
  srv->busy = false;
  while (!srv->q_len && !atomic_load(&srv->stopping)) pthread_cond_wait(&srv->qcv, &srv->qmu);
  struct job *j = NULL;
  if (!atomic_load(&srv->stopping)) {
    j = srv->q[srv->q_head];
    srv->q_head = (srv->q_head + 1) % srv->q_cap;
    srv->q_len--;
    srv->busy = true;
  }
  pthread_mutex_unlock(&srv->qmu);
  return j;
}

static void job_finish(struct job *j, int status, const char *msg) {
  pthread_mutex_lock(&j->mu);
  j->done = true;
  j->t_done = ferry_now_s();
  j->status = status;
  if (status) snprintf(j->err, sizeof j->err, "%s", msg);
  pthread_cond_broadcast(&j->cv);
  pthread_mutex_unlock(&j->mu);
}

// Shutdown: nothing more is queued; the jobs still waiting get 503.
static void queue_close(struct server *srv) {
  pthread_mutex_lock(&srv->qmu);
  srv->closed = true;
  while (srv->q_len) {
    struct job *j = srv->q[srv->q_head];
    srv->q_head = (srv->q_head + 1) % srv->q_cap;
    srv->q_len--;
    job_finish(j, 503, "the server is shutting down");
    job_put(j);
  }
  pthread_mutex_unlock(&srv->qmu);
}

// ---------------------------------------------------------------------------------------
// generation

// The peer closed its end (or the socket is gone). A request's connection stays open while
// its HTTP thread waits for the job, so the descriptor is the client's; if a stream's
// connection was already closed, `gone` is set as well.
static bool peer_gone(int fd) {
  if (fd < 0) return false;
  struct pollfd p = {.fd = fd, .events = POLLRDHUP};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

enum { FIRST_HANDOFF_MS = 5 };

// The loop's per-token callback: hands final text to the HTTP thread of a stream and says
// whether to stop (client gone, shutting down). Allocates only when the pending buffer must
// grow (the HTTP thread swaps buffers, so both keep their capacity).
static bool job_on_token(void *ctx, int32_t id, const char *text, size_t n) {
  struct job *j = ctx;
  bool stop = false;
  pthread_mutex_lock(&j->mu);
  if (n && j->req.stream) {
    if (j->pend_len + n > j->pend_cap) {
      size_t cap = j->pend_cap ? j->pend_cap : 4096;
      while (cap < j->pend_len + n) cap *= 2;
      char *p = realloc(j->pend, cap);
      if (!p)
        stop = true;
      else
        j->pend = p, j->pend_cap = cap;
    }
    if (!stop) memcpy(j->pend + j->pend_len, text, n), j->pend_len += n;
  }
  if (id >= 0) j->n_tokens++;
  if (id != GEN_ID_PREFILL) pthread_cond_broadcast(&j->cv);
  // The first text of a stream: let the HTTP thread take it before the next token's forward
  // pass occupies every core (up to FIRST_HANDOFF_MS): the client's first byte comes sooner.
  if (j->req.stream && id >= 0 && j->pend_len && !j->first_handed) {
    j->first_handed = true;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += FIRST_HANDOFF_MS * 1000000l;
    if (until.tv_nsec >= 1000000000l) until.tv_sec++, until.tv_nsec -= 1000000000l;
    while (j->pend_len && !j->gone && pthread_cond_timedwait(&j->cv, &j->mu, &until) == 0) {}
  }
  stop = stop || j->gone || atomic_load(&j->srv->stopping);
  pthread_mutex_unlock(&j->mu);
  if (!stop && id >= 0 && j->srv->pace_ms > 0)
    nanosleep(&(struct timespec){j->srv->pace_ms / 1000, j->srv->pace_ms % 1000 * 1000000}, NULL);
  return stop || (id != GEN_ID_END && peer_gone(j->sock));
}

// Prompt cache: the tokens at positions [0, pc_n) of the model, and for recurrent models the
// position of the state checkpoint. Returns how many tokens of the prompt need no computing.
static int pcache_keep(const struct server *srv, const int32_t *ids, int n) {
  if (!srv->so.prompt_cache) return 0;
  int l = 0, lim = srv->pc_n < n ? srv->pc_n : n;
  while (l < lim && srv->pc_ids[l] == ids[l]) l++;
  if (l >= n) l = n - 1; // at least one token is computed: its logits start the answer
  if (!srv->recurrent) return l;
  return srv->pc_ck > 0 && srv->pc_ck <= l ? srv->pc_ck : 0;
}

static void pcache_record(struct server *srv, const struct job *j, const struct gen_result *r,
                          bool ok) {
  int pos = model_pos(session_model(srv->s));
  if (!ok || pos < j->n_ids || pos > srv->n_ctx) { // unknown state: start over next time
    srv->pc_n = 0, srv->pc_ck = -1;
    return;
  }
  memcpy(srv->pc_ids, j->ids, sizeof(int32_t) * j->n_ids);
  // the generated tokens that were fed back (the last sampled one never is)
  memcpy(srv->pc_ids + j->n_ids, r->tokens, sizeof(int32_t) * (pos - j->n_ids));
  srv->pc_n = pos;
  srv->pc_ck = srv->recurrent ? j->n_ids : -1;
}

static void metrics_after(struct server *srv, const struct job *j, const struct gen_result *r) {
  pthread_mutex_lock(&srv->mmu);
  struct metrics *m = &srv->m;
  m->prompt_tokens += j->n_ids;
  m->cached_tokens += r->n_keep;
  m->generated_tokens += r->n_generated;
  if (r->finish == GEN_FINISH_CANCELLED) m->cancelled++;
  if (r->n_generated > 0) {
    m->ttft_sum += r->st.ttft_s, m->ttft_n++;
    m->prefill_s += r->st.prefill_s, m->decode_s += r->st.decode_s;
    m->decode_tokens += r->n_generated - 1;
    m->last_decode_tok_s = gen_decode_rate(&r->st);
    m->st = r->st;
  }
  pthread_mutex_unlock(&srv->mmu);
}

static void run_job(struct server *srv, struct job *j) {
  pthread_mutex_lock(&j->mu);
  j->started = true;
  j->t_start = ferry_now_s();
  bool gone = j->gone;
  pthread_mutex_unlock(&j->mu);
  if (gone || peer_gone(j->sock)) {
    log_info("serve: %s: dropped, the client left while it waited", j->id);
    job_finish(j, 499, "the client closed the connection");
    return;
  }
  j->gp.n_keep = pcache_keep(srv, j->ids, j->n_ids);
  j->gp.checkpoint = srv->so.prompt_cache;
  j->gp.n_batch = srv->o->n_batch;
  j->gp.on_token = job_on_token;
  j->gp.ctx = j;
  struct gen_result r;
  int rc = gen_generate(srv->s, &j->gp, j->ids, j->n_ids, &r);
  char msg[512];
  snprintf(msg, sizeof msg, "%s", rc ? ferry_errmsg() : "");
  pcache_record(srv, j, &r, rc == 0);
  metrics_after(srv, j, &r);
  if (rc) log_error("serve: %s: generation failed: %s", j->id, msg);
  if (r.finish == GEN_FINISH_CANCELLED)
    log_info("serve: %s: stopped after %d generated tokens (%s)", j->id, r.n_generated,
             atomic_load(&srv->stopping) ? "shutting down" : "the client left");
  pthread_mutex_lock(&j->mu);
  j->r = r; // the job owns the result now
  pthread_mutex_unlock(&j->mu);
  if (rc)
    job_finish(j, 500, msg);
  else if (r.finish == GEN_FINISH_CANCELLED && atomic_load(&srv->stopping))
    job_finish(j, 503, "the server is shutting down");
  else if (r.finish == GEN_FINISH_CANCELLED)
    job_finish(j, 499, "the client closed the connection");
  else
    job_finish(j, 0, NULL);
}

// ---------------------------------------------------------------------------------------
// signals: SIGINT/SIGTERM may land on any thread (the pool's workers exist before the
// server), so the handler only writes the signal to a pipe; this thread does the rest.

static int g_signal_pipe = -1; // write end

static void on_signal(int sig) {
  int e = errno;
  unsigned char b = (unsigned char)sig;
  if (write(g_signal_pipe, &b, 1) < 0) { // full or closed: a signal is already on its way
  }
  errno = e;
}

static void *signal_thread(void *arg) {
  struct server *srv = arg;
  unsigned char sig = 0;
  while (read(srv->sig_pipe[0], &sig, 1) < 0 && errno == EINTR) {}
  log_info("serve: %s received, finishing the current token and closing",
           sig == SIGINT ? "SIGINT" : "SIGTERM");
  atomic_store(&srv->stopping, true);
  pthread_mutex_lock(&srv->qmu);
  pthread_cond_broadcast(&srv->qcv);
  pthread_mutex_unlock(&srv->qmu);
  return NULL;
}

// ---------------------------------------------------------------------------------------
// what /api/tags says about the model

static const char *file_type_name(uint32_t ft) {
  switch (ft) { // llama.cpp's general.file_type values
    case 0: return "F32";
    case 1: return "F16";
    case 2: return "Q4_0";
    case 7: return "Q8_0";
    case 10: return "Q2_K";
    case 12: return "Q3_K_M";
    case 14: return "Q4_K_S";
    case 15: return "Q4_K_M";
    case 17: return "Q5_K_M";
    case 18: return "Q6_K";
    case 32: return "BF16";
    default: return "unknown";
  }
}

static void describe_model(struct server *srv) {
  const struct gguf_file *f = session_gguf(srv->s);
  double n = 0;
  for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
    const struct gguf_tensor *t = gguf_tensor_at(f, i);
    n += (double)t->ne[0] * (double)t->ne[1] * (double)t->ne[2] * (double)t->ne[3];
  }
  if (n >= 1e9)
    snprintf(srv->params, sizeof srv->params, "%.1fB", n / 1e9);
  else
    snprintf(srv->params, sizeof srv->params, "%.1fM", n / 1e6);
  uint32_t ft;
  snprintf(srv->quant, sizeof srv->quant, "%s",
           gguf_get_u32(f, "general.file_type", &ft) == 0 ? file_type_name(ft) : "unknown");
  ferry_clear_error();
  snprintf(srv->family, sizeof srv->family, "%s", model_hparams(session_model(srv->s))->arch_name);
  srv->file_size = gguf_file_size(f);
  struct stat sb;
  srv->mtime = stat(gguf_path(f), &sb) == 0 ? (int64_t)sb.st_mtime : 0;
  fmt_rfc3339(srv->modified_at, sizeof srv->modified_at, srv->mtime * 1000000000ll);
  // an identifier for clients that key models by digest: FNV-1a of path, size and mtime
  uint64_t h = 1469598103934665603ull;
  for (const char *p = gguf_path(f); *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
  h = (h ^ srv->file_size) * 1099511628211ull;
  h = (h ^ (uint64_t)srv->mtime) * 1099511628211ull;
  snprintf(srv->digest, sizeof srv->digest, "%016llx", (unsigned long long)h);
}

// ---------------------------------------------------------------------------------------

static void server_free(struct server *srv) {
  for (int i = 0; i < 2; i++)
    if (srv->sig_pipe[i] >= 0) close(srv->sig_pipe[i]);
  free(srv->q);
  free(srv->pc_ids);
  pthread_mutex_destroy(&srv->qmu);
  pthread_cond_destroy(&srv->qcv);
  pthread_mutex_destroy(&srv->prep_mu);
  pthread_mutex_destroy(&srv->mmu);
  free(srv);
}

int serve_run(struct session *s, const struct run_opts *o, const struct serve_opts *so) {
  struct server *srv = calloc(1, sizeof *srv);
  if (!srv) return ferry_fail(-ENOMEM, "out of memory");
  srv->s = s, srv->o = o, srv->so = *so;
  srv->sig_pipe[0] = srv->sig_pipe[1] = -1;
  srv->alias = so->alias;
  srv->n_ctx = model_n_ctx(session_model(s));
  srv->defaults = (struct serve_defaults){.n_ctx = srv->n_ctx,
                                          .n_predict = so->n_predict_set ? o->n_predict : -1,
                                          .seed_fixed = so->seed_set};
  gen_sampling_defaults(s, o, &srv->defaults.sp);
  ferry_rng_seed(&srv->rng, (uint64_t)fmt_now_ns() ^ ((uint64_t)getpid() << 32)); // ids, seeds
  const char *pace = getenv("FERRY_SERVE_PACE_MS");
  srv->pace_ms = pace ? atoi(pace) : 0;
  srv->q_cap = so->queue + 1;
  srv->q = calloc(srv->q_cap, sizeof *srv->q);
  srv->pc_ids = malloc(sizeof(int32_t) * (srv->n_ctx + 1));
  srv->pc_ck = -1;
  const struct model_hparams *hp = model_hparams(session_model(s));
  for (uint32_t l = 0; l < hp->n_layer; l++) srv->recurrent |= hp->recurrent && hp->recurrent[l];
  srv->body_cap = so->max_body * 4 > (64ull << 20) ? so->max_body * 4 : 64ull << 20;
  pthread_mutex_init(&srv->qmu, NULL);
  pthread_cond_init(&srv->qcv, NULL);
  pthread_mutex_init(&srv->prep_mu, NULL);
  pthread_mutex_init(&srv->mmu, NULL);
  if (!srv->q || !srv->pc_ids) {
    close(so->listen_fd);
    server_free(srv);
    return ferry_fail(-ENOMEM, "out of memory");
  }
  describe_model(srv);

  // The HTTP threads get the affinity this thread had before the pool pinned it.
  ferry_log_get_level(); // initialised before other threads log
  json_object_seed(0);   // jansson's hash seed, before other threads create objects
  cpu_set_t pinned;
  bool repin = so->cpus && !pthread_getaffinity_np(pthread_self(), sizeof pinned, &pinned) &&
               !pthread_setaffinity_np(pthread_self(), sizeof *so->cpus, so->cpus);
  pthread_t sig_thread;
  int rc = http_start(srv);
  bool sig_ok = !rc && !pipe2(srv->sig_pipe, O_CLOEXEC) &&
                !fcntl(srv->sig_pipe[1], F_SETFL, O_NONBLOCK) &&
                !pthread_create(&sig_thread, NULL, signal_thread, srv);
  if (repin) pthread_setaffinity_np(pthread_self(), sizeof pinned, &pinned);
  if (!rc && !sig_ok) {
    http_stop(srv);
    rc = ferry_fail(-EAGAIN, "cannot start the signal thread");
  }
  if (rc) {
    server_free(srv);
    return rc;
  }
  // A handler also replaces SIG_IGN: shells start background jobs with SIGINT ignored, and
  // `kill -INT` must still stop the server.
  struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART}, old_int, old_term,
                   old_pipe, ign = {.sa_handler = SIG_IGN};
  g_signal_pipe = srv->sig_pipe[1];
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGPIPE, &ign, &old_pipe);
  fprintf(stderr, "ferry serve: listening on http://%s:%d (model '%s', context %d, queue %d)\n",
          so->host, srv->port, srv->alias, srv->n_ctx, so->queue);
  fflush(stderr);

  struct job *j;
  while ((j = queue_pop(srv))) {
    run_job(srv, j);
    job_put(j);
  }
  queue_close(srv);
  http_stop(srv);
  pthread_join(sig_thread, NULL);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  sigaction(SIGPIPE, &old_pipe, NULL);
  g_signal_pipe = -1;
  log_info("serve: stopped");
  server_free(srv);
  return 0;
}
