// engine/cmd_bench.c: `ferry bench` — the same prompt, seed and sampling through each
// mode in turn (default full, then stream), one side-by-side table on stdout (load time,
// TTFT, prefill and decode rates, peak RSS, bytes read, reads, expert hit rate) and
// whether every mode generated the same tokens (stream must equal full bit for bit).
//
// Each mode runs in its own child process (fork), which sends its results back through
// a pipe and leaves with _exit. Why a process and not /proc/self/clear_refs: VmHWM is
// per process, and after the first mode closes, the allocator may keep freed pages and
// the worker threads their stacks, so a reset peak would still carry the first mode's
// leftovers. A fresh child starts from the parent's small footprint (the parent only
// reads the GGUF header to plan), so each mode's peak RSS is its own. The OS page cache
// is shared: the second mode may load faster because the first one warmed it.
//
// Stream mode without --ram gets a budget that forces real streaming: dense weights +
// KV/state + scratch + the process and prompt + a quarter of the routed-expert bytes (at least the smallest
// cache stream mode accepts), computed from the model with the same plan session_open
// uses. --ram, when given, is the budget of stream and auto runs; full mode always gets
// the default budget (available memory), since it is the reference.
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/cli.h"
#include "engine/generate.h"
#include "engine/hparams.h"
#include "engine/json.h"
#include "engine/stream.h"

#define BENCH_MAX_MODES 8

static const char k_default_prompt[] =
    "The harbour at dawn was quiet except for the gulls. A small ferry waited at the pier, its "
    "engine "
    "ticking as it warmed, while the first passengers carried bicycles and baskets of bread up the "
    "ramp. "
    "The captain checked the tide tables, looked at the grey sky over the islands, and decided the "
    "crossing "
    "would be calm enough. Describe what the passengers might see during the trip.";

// One mode's outcome, as the child sends it (fixed part; then the ids follow).
struct bench_wire {
  int rc;        // 0, or the child's negative error code
  char err[512]; // the child's error message when rc < 0
  char mode[16]; // the mode that ran (auto resolves to full or stream)
  char backend[16], device[160];
  struct run_stats st; // its backend/device pointers are the child's: use the arrays above
  int n_prompt, n_generated;
};

struct bench_mode {
  enum run_mode req; // what was asked for
  struct bench_wire w;
  int32_t *prompt, *tokens;
};

static const char *mode_req_name(enum run_mode m) {
  return m == MODE_FULL ? "full" : m == MODE_STREAM ? "stream" : "auto";
}

// Parses "full,stream" into modes[]; one clear message on a bad or empty entry.
static int parse_modes(const char *s, enum run_mode *modes, int *n) {
  *n = 0;
  const char *p = s;
  for (;;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    enum run_mode m;
    if (len == 4 && !strncmp(p, "full", 4))
      m = MODE_FULL;
    else if (len == 6 && !strncmp(p, "stream", 6))
      m = MODE_STREAM;
    else if (len == 4 && !strncmp(p, "auto", 4))
      m = MODE_AUTO;
    else
      return ferry_fail(
          -EINVAL,
          "--modes: '%.*s' is not full, stream or auto (give a comma-separated list, e.g. "
          "--modes full,stream)",
          (int)len, p);
    if (*n == BENCH_MAX_MODES)
      return ferry_fail(-EINVAL, "--modes: at most %d modes", BENCH_MAX_MODES);
    modes[(*n)++] = m;
    if (!e) break;
    p = e + 1;
  }
  return 0;
}

// Whether the user gave -n / --n-predict (run_opts_parse defaults it to 256; bench
// defaults to 32). Recognises the forms getopt_long accepts for this flag on its own
// (-n N, -nN, --n-predict N, --n-predict=N); a flag value that itself starts with -n
// (say -p "-nothing") also counts, which only changes the default.
static bool n_given(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--")) break;
    if (!strncmp(argv[i], "-n", 2)) return true;
    if (!strncmp(argv[i], "--n-predict", 11)) return true;
  }
  return false;
}

// The stream budget that forces real streaming (see the top of the file). The plan is
// the CPU backend's: the parent never touches CUDA (a CUDA context does not survive fork),
// and a device backend's stream budget is its host part, which this over-estimates.
static int default_stream_ram(const struct run_opts *o, uint64_t *out) {
  struct gguf_file *f = NULL;
  int rc = gguf_open(&f, o->model);
  if (rc) return rc;
  struct plan_need need;
  struct plan plan;
  struct run_opts so = *o;
  so.mode = MODE_STREAM;
  rc = session_plan(f, &so, FERRY_BACKEND_CPU, UINT64_MAX / 4, 0, session_baseline_bytes(o), &need,
                    &plan);
  if (!rc) {
    uint64_t cache = need.all_experts / 4;
    if (cache < need.min_cache) cache = need.min_cache;
    *out = need.s_dense + need.s_state + need.s_scratch + need.s_host + cache;
  }
  gguf_close(f);
  return rc;
}

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t k = write(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    c += k, n -= (size_t)k;
  }
  return 0;
}

// Reads until n bytes or EOF; returns the bytes read.
static size_t read_all(int fd, void *p, size_t n) {
  char *c = p;
  size_t got = 0;
  while (got < n) {
    ssize_t k = read(fd, c + got, n - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    got += (size_t)k;
  }
  return got;
}

// Child side: runs one mode, sends a bench_wire and the ids. Returns the exit status.
static int child_run(const struct run_opts *o, int fd) {
  struct bench_wire w;
  memset(&w, 0, sizeof w);
  struct session *s = NULL;
  int32_t *ids = NULL;
  int n = 0;
  struct gen_result r = {0};
  int rc = session_open(&s, o);
  if (!rc) {
    snprintf(w.mode, sizeof w.mode, "%s", session_mode_name(s));
    if (!(rc = gen_prompt_ids(s, o, &ids, &n))) rc = gen_run(s, o, ids, n, NULL, &r);
  }
  if (rc) {
    w.rc = rc < 0 ? rc : -EIO;
    snprintf(w.err, sizeof w.err, "%s", ferry_errmsg());
  } else {
    w.st = r.st;
    snprintf(w.backend, sizeof w.backend, "%s", r.st.backend ? r.st.backend : "");
    snprintf(w.device, sizeof w.device, "%s", r.st.device ? r.st.device : "");
    w.st.backend = w.st.device = NULL;
    w.n_prompt = r.n_prompt;
    w.n_generated = r.n_generated;
  }
  int bad = write_all(fd, &w, sizeof w);
  if (!rc && !bad)
    bad = write_all(fd, r.prompt, sizeof(int32_t) * (size_t)r.n_prompt) ||
          write_all(fd, r.tokens, sizeof(int32_t) * (size_t)r.n_generated);
  gen_result_free(&r);
  free(ids);
  session_close(s);
  return bad ? 3 : 0;
}

// Parent side: forks a child for one mode and collects its results into m.
static int run_mode_child(const struct run_opts *o, struct bench_mode *m) {
  int fds[2];
  if (pipe(fds)) return ferry_fail(-errno, "pipe: %s", strerror(errno));
  fflush(stdout), fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(fds[0]), close(fds[1]);
    return ferry_fail(-e, "fork: %s", strerror(e));
  }
  if (pid == 0) {
    close(fds[0]);
    int st = child_run(o, fds[1]);
    close(fds[1]);
    fflush(stdout), fflush(stderr);
    _exit(st); // a forked child must not return into the parent's code (see the top)
  }
  close(fds[1]);
  const char *name = mode_req_name(m->req);
  size_t got = read_all(fds[0], &m->w, sizeof m->w);
  int rc = 0;
  if (got == sizeof m->w && m->w.rc == 0) {
    if (m->w.n_prompt < 0 || m->w.n_generated < 0 || m->w.n_prompt > (1 << 28) ||
        m->w.n_generated > (1 << 28)) {
      rc = ferry_fail(-EIO, "mode %s: malformed result from the child process", name);
    } else {
      m->prompt = malloc(sizeof(int32_t) * ((size_t)m->w.n_prompt + 1));
      m->tokens = malloc(sizeof(int32_t) * ((size_t)m->w.n_generated + 1));
      if (!m->prompt || !m->tokens)
        rc = ferry_fail(-ENOMEM, "out of memory");
      else if (read_all(fds[0], m->prompt, sizeof(int32_t) * (size_t)m->w.n_prompt) !=
                   sizeof(int32_t) * (size_t)m->w.n_prompt ||
               read_all(fds[0], m->tokens, sizeof(int32_t) * (size_t)m->w.n_generated) !=
                   sizeof(int32_t) * (size_t)m->w.n_generated)
        rc = ferry_fail(-EIO, "mode %s: the child process sent a truncated result", name);
    }
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  if (rc) return rc;
  if (got == sizeof m->w && m->w.rc) {
    m->w.err[sizeof m->w.err - 1] = 0;
    return ferry_fail(m->w.rc, "mode %s: %s", name, m->w.err);
  }
  if (WIFSIGNALED(status))
    return ferry_fail(-EIO, "mode %s: the run was killed by signal %d (%s)", name, WTERMSIG(status),
                      strsignal(WTERMSIG(status)));
  if (got != sizeof m->w || !WIFEXITED(status) || WEXITSTATUS(status))
    return ferry_fail(-EIO, "mode %s: the run ended without a result (exit status %d)", name,
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  return 0;
}

static bool same_ids(const int32_t *a, int na, const int32_t *b, int nb) {
  return na == nb && (na == 0 || !memcmp(a, b, sizeof(int32_t) * (size_t)na));
}

static void print_row(FILE *f, const char *label, char (*cells)[48], int n) {
  fprintf(f, "%-18s", label);
  for (int i = 0; i < n; i++) fprintf(f, " %16s", cells[i]);
  fputc('\n', f);
}

static void print_table(FILE *f, const struct run_opts *o, const struct bench_mode *ms, int n,
                        bool identical) {
  char c[BENCH_MAX_MODES][48];
  char th[32];
  if (o->threads)
    snprintf(th, sizeof th, "%d threads", o->threads);
  else
    snprintf(th, sizeof th, "one thread per physical core");
  fprintf(f, "ferry bench: %s, %d prompt tokens, -n %d, %s\n", o->model, ms[0].w.n_prompt,
          o->n_predict, th);
  for (int i = 0; i < n; i++) snprintf(c[i], sizeof c[i], "%s", ms[i].w.mode);
  print_row(f, "", c, n);
  for (int i = 0; i < n; i++) snprintf(c[i], sizeof c[i], "%.3f", ms[i].w.st.load_s);
  print_row(f, "load s", c, n);
  for (int i = 0; i < n; i++) snprintf(c[i], sizeof c[i], "%.3f", ms[i].w.st.ttft_s);
  print_row(f, "TTFT s", c, n);
  for (int i = 0; i < n; i++) snprintf(c[i], sizeof c[i], "%.2f", gen_prefill_rate(&ms[i].w.st));
  print_row(f, "prefill tok/s", c, n);
  for (int i = 0; i < n; i++) snprintf(c[i], sizeof c[i], "%.2f", gen_decode_rate(&ms[i].w.st));
  print_row(f, "decode tok/s", c, n);
  for (int i = 0; i < n; i++) ferry_format_size(ms[i].w.st.peak_rss, c[i], sizeof c[i]);
  print_row(f, "peak RSS", c, n);
  for (int i = 0; i < n; i++) ferry_format_size(ms[i].w.st.ram_budget, c[i], sizeof c[i]);
  print_row(f, "RAM budget", c, n);
  for (int i = 0; i < n; i++) ferry_format_size(ms[i].w.st.io_bytes, c[i], sizeof c[i]);
  print_row(f, "bytes read", c, n);
  for (int i = 0; i < n; i++)
    snprintf(c[i], sizeof c[i], "%llu", (unsigned long long)ms[i].w.st.io_reads);
  print_row(f, "reads", c, n);
  for (int i = 0; i < n; i++) snprintf(c[i], sizeof c[i], "%.3f", ms[i].w.st.io_s);
  print_row(f, "read wait s", c, n);
  for (int i = 0; i < n; i++) {
    const struct run_stats *st = &ms[i].w.st;
    uint64_t acc = st->host_hits + st->host_misses;
    if (acc)
      snprintf(c[i], sizeof c[i], "%.1f%%", 100.0 * (double)st->host_hits / (double)acc);
    else
      snprintf(c[i], sizeof c[i], "-");
  }
  print_row(f, "expert hit rate", c, n);
  for (int i = 0; i < n; i++)
    snprintf(c[i], sizeof c[i], "%llu", (unsigned long long)ms[i].w.st.host_capacity);
  print_row(f, "cache slots", c, n);
  for (int i = 0; i < n; i++) snprintf(c[i], sizeof c[i], "%d", ms[i].w.n_generated);
  print_row(f, "generated tokens", c, n);
  bool any_pf = false, any_rt = false;
  for (int i = 0; i < n; i++) any_pf |= ms[i].w.st.prefetch, any_rt |= ms[i].w.st.has_routing;
  if (any_pf) {
    for (int i = 0; i < n; i++) {
      const struct run_stats *st = &ms[i].w.st;
      uint64_t res = st->pf_used + st->pf_wrong;
      if (st->prefetch && res)
        snprintf(c[i], sizeof c[i], "%.1f%% of %llu", 100.0 * (double)st->pf_used / (double)res,
                 (unsigned long long)res);
      else
        snprintf(c[i], sizeof c[i], "-");
    }
    print_row(f, "prefetch right", c, n);
  }
  if (any_rt) {
    const char *lab[3] = {"lag-1 reuse", "stale-gate acc.", "coverage90"};
    for (int j = 0; j < 3; j++) {
      for (int i = 0; i < n; i++) {
        const struct run_stats *st = &ms[i].w.st;
        double v = j == 0 ? st->lag1_reuse : j == 1 ? st->stale_gate_accuracy : st->coverage90;
        if (st->has_routing && v >= 0)
          snprintf(c[i], sizeof c[i], "%.1f%%", 100 * v);
        else
          snprintf(c[i], sizeof c[i], "-");
      }
      print_row(f, lab[j], c, n);
    }
  }
  fprintf(f, "identical tokens   %s\n",
          identical ? "yes" : "NO (the modes generated different tokens: stream must equal full)");
}

static void json_mode(struct jw *w, const struct bench_mode *m) {
  jw_obj(w);
  jw_key(w, "mode"), jw_str(w, m->w.mode);
  jw_key(w, "backend"), jw_str(w, m->w.backend);
  jw_key(w, "device"), jw_str(w, m->w.device);
  gen_json_stats(w, &m->w.st);
  jw_key(w, "n_generated"), jw_int(w, m->w.n_generated);
  jw_key(w, "generated_tokens"), jw_arr(w);
  for (int i = 0; i < m->w.n_generated; i++) jw_int(w, m->tokens[i]);
  jw_arr_end(w);
  jw_obj_end(w);
}

static int write_json(const char *path, const struct run_opts *o, const struct bench_mode *ms,
                      int n, bool identical) {
  struct jw w;
  int rc = jw_open(&w, path);
  if (rc) return rc;
  jw_obj(&w);
  jw_key(&w, "model"), jw_str(&w, o->model);
  jw_key(&w, "threads"), jw_int(&w, o->threads);
  jw_key(&w, "n_predict"), jw_int(&w, o->n_predict);
  jw_key(&w, "n_prompt"), jw_int(&w, ms[0].w.n_prompt);
  jw_key(&w, "prompt_tokens"), jw_arr(&w);
  for (int i = 0; i < ms[0].w.n_prompt; i++) jw_int(&w, ms[0].prompt[i]);
  jw_arr_end(&w);
  jw_key(&w, "modes"), jw_arr(&w);
  for (int i = 0; i < n; i++) json_mode(&w, &ms[i]);
  jw_arr_end(&w);
  jw_key(&w, "identical"), jw_bool(&w, identical);
  jw_obj_end(&w);
  return jw_close(&w, path);
}

int cmd_bench(int argc, char **argv) {
  struct run_opts o;
  int rc = run_opts_parse(&o, "bench", argc, argv);
  if (rc) return rc > 0 ? 0 : rc;
  if (o.prompt && o.prompt_file) return ferry_fail(-EINVAL, "give either -p or -f, not both");
  if (o.ids) return ferry_fail(-EINVAL, "--ids is for ferry score, not bench");
  if (o.logprobs)
    return ferry_fail(-EINVAL, "--logprobs is not used by bench (see ferry run --json)");
  if (!o.prompt && !o.prompt_file) o.prompt = k_default_prompt;
  if (!n_given(argc, argv)) o.n_predict = 32;
  enum run_mode req[BENCH_MAX_MODES];
  int n = 0;
  if ((rc = parse_modes(o.modes ? o.modes : "full,stream", req, &n))) return rc;
  char *text = NULL; // read once, before any mode loads the model (the children share it)
  if ((rc = gen_read_prompt(&o, &text))) return rc;
  uint64_t stream_ram = o.ram;
  bool want_stream = false;
  for (int i = 0; i < n; i++) want_stream |= req[i] == MODE_STREAM;
  if (!stream_ram && want_stream) {
    if ((rc = default_stream_ram(&o, &stream_ram))) {
      free(text);
      return rc;
    }
    char b[32];
    ferry_format_size(stream_ram, b, sizeof b);
    log_info(
        "bench: stream mode budget %s (dense + state + scratch + 1/4 of the expert bytes; --ram "
        "overrides)",
        b);
  }
  struct bench_mode ms[BENCH_MAX_MODES];
  memset(ms, 0, sizeof ms);
  char trace[BENCH_MAX_MODES][4096];
  for (int i = 0; i < n && !rc; i++) {
    struct run_opts mo = o;
    if (o.trace_experts && n > 1) { // one trace per mode: FILE.full, FILE.stream, ...
      snprintf(trace[i], sizeof trace[i], "%s.%s", o.trace_experts, mode_req_name(req[i]));
      mo.trace_experts = trace[i];
    }
    mo.mode = req[i];
    mo.stats = false, mo.json_path = NULL;
    mo.ram = req[i] == MODE_FULL ? 0 : req[i] == MODE_STREAM ? stream_ram : o.ram;
    ms[i].req = req[i];
    rc = run_mode_child(&mo, &ms[i]);
  }
  bool identical = true;
  if (!rc) {
    for (int i = 1; i < n; i++) {
      if (!same_ids(ms[0].prompt, ms[0].w.n_prompt, ms[i].prompt, ms[i].w.n_prompt)) {
        rc = ferry_fail(-EIO, "modes %s and %s tokenized the prompt differently", ms[0].w.mode,
                        ms[i].w.mode);
        break;
      }
      identical &= same_ids(ms[0].tokens, ms[0].w.n_generated, ms[i].tokens, ms[i].w.n_generated);
    }
  }
  if (!rc) {
    print_table(stdout, &o, ms, n, identical);
    fflush(stdout);
    if (o.json_path) rc = write_json(o.json_path, &o, ms, n, identical);
  }
  for (int i = 0; i < n; i++) free(ms[i].prompt), free(ms[i].tokens);
  free(text);
  if (!rc && !identical) return 3; // the table says why; a script must not miss it
  return rc;
}
