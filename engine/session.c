// engine/session.c: option parsing, the memory plan and mode choice, and loading.
#include "engine/session.h"

#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "base/files.h"
#include "engine/cli.h"
#include "engine/routing.h"
#include "engine/stream.h"
#include "kernels/backend.h"
#include "numa/pool.h"
#include "numa/topo.h"
#include "offload/budget.h"
#include "offload/plan.h"

// ---------------------------------------------------------------------------------------
// options

enum {
  OPT_SYSTEM = 256,
  OPT_RAW,
  OPT_TEMP,
  OPT_TOPK,
  OPT_TOPP,
  OPT_MINP,
  OPT_SEED,
  OPT_MODE,
  OPT_RAM,
  OPT_VRAM,
  OPT_CPU,
  OPT_STATS,
  OPT_JSON,
  OPT_LOGPROBS,
  OPT_EXACT,
  OPT_IDS,
  OPT_FROM,
  OPT_CTK,
  OPT_CTV,
  OPT_MODES,
  OPT_NOPROG,
  OPT_PREFETCH,
  OPT_BACKEND,
  OPT_NOGRAPH,
  OPT_XCOMPUTE,
  OPT_TRACE,
  OPT_RSTATS,
  OPT_PFCAP,
  OPT_LOGIT_BIAS,
  OPT_HELP,
};

static const struct option k_opts[] = {{"model", required_argument, 0, 'm'},
                                       {"prompt", required_argument, 0, 'p'},
                                       {"file", required_argument, 0, 'f'},
                                       {"system", required_argument, 0, OPT_SYSTEM},
                                       {"n-predict", required_argument, 0, 'n'},
                                       {"raw", no_argument, 0, OPT_RAW},
                                       {"temp", required_argument, 0, OPT_TEMP},
                                       {"top-k", required_argument, 0, OPT_TOPK},
                                       {"top-p", required_argument, 0, OPT_TOPP},
                                       {"min-p", required_argument, 0, OPT_MINP},
                                       {"seed", required_argument, 0, OPT_SEED},
                                       {"threads", required_argument, 0, 't'},
                                       {"ctx-size", required_argument, 0, 'c'},
                                       {"batch-size", required_argument, 0, 'b'},
                                       {"mode", required_argument, 0, OPT_MODE},
                                       {"ram", required_argument, 0, OPT_RAM},
                                       {"vram", required_argument, 0, OPT_VRAM},
                                       {"cpu", no_argument, 0, OPT_CPU},
                                       {"backend", required_argument, 0, OPT_BACKEND},
                                       {"no-graph", no_argument, 0, OPT_NOGRAPH},
                                       {"expert-compute", required_argument, 0, OPT_XCOMPUTE},
                                       {"stats", no_argument, 0, OPT_STATS},
                                       {"json", required_argument, 0, OPT_JSON},
                                       {"logprobs", required_argument, 0, OPT_LOGPROBS},
                                       {"exact", no_argument, 0, OPT_EXACT},
                                       {"ids", required_argument, 0, OPT_IDS},
                                       {"from", required_argument, 0, OPT_FROM},
                                       {"cache-type-k", required_argument, 0, OPT_CTK},
                                       {"cache-type-v", required_argument, 0, OPT_CTV},
                                       {"modes", required_argument, 0, OPT_MODES},
                                       {"no-progress", no_argument, 0, OPT_NOPROG},
                                       {"prefetch", no_argument, 0, OPT_PREFETCH},
                                       {"trace-experts", required_argument, 0, OPT_TRACE},
                                       {"routing-stats", no_argument, 0, OPT_RSTATS},
                                       {"prefetch-cap", required_argument, 0, OPT_PFCAP},
                                       {"logit-bias", required_argument, 0, OPT_LOGIT_BIAS},
                                       {"help", no_argument, 0, OPT_HELP},
                                       {0, 0, 0, 0}};

static int parse_int(const char *flag, const char *s, long lo, long hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end) return ferry_fail(-EINVAL, "%s: '%s' is not an integer", flag, s);
  if (v < lo || v > hi)
    return ferry_fail(-EINVAL, "%s: %ld is out of range [%ld, %ld]", flag, v, lo, hi);
  *out = (int)v;
  return 0;
}

static int parse_float(const char *flag, const char *s, double lo, double hi, float *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end) return ferry_fail(-EINVAL, "%s: '%s' is not a number", flag, s);
  if (!(v >= lo && v <= hi))
    return ferry_fail(-EINVAL, "%s: %g is out of range [%g, %g]", flag, v, lo, hi);
  *out = (float)v;
  return 0;
}

// --ram: a budget of at least one byte. "0" or "0.5" (which rounds to 0) would otherwise
// mean "unset", i.e. all available memory: the opposite of what was asked for.
static int parse_ram(const char *s, uint64_t *out) {
  int rc = ferry_parse_size(s, out);
  if (rc) return ferry_fail_ctx(rc, "--ram");
  if (*out == 0)
    return ferry_fail(-EINVAL,
                      "--ram: '%s' is 0 bytes; give a budget such as 8G or 512M (without --ram "
                      "the budget is the available memory)",
                      s);
  return 0;
}

// --seed: an unsigned integer, or -1 for a random seed (as llama.cpp), which is logged.
static int parse_seed(const char *s, uint64_t *out) {
  if (!strcmp(s, "-1")) {
    uint64_t r = 0;
    if (getentropy(&r, sizeof r) != 0) r = (uint64_t)(ferry_now_s() * 1e9) ^ (uint64_t)getpid();
    *out = r;
    log_info("--seed -1: random seed %llu", (unsigned long long)r);
    return 0;
  }
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-' || s[0] == '+')
    return ferry_fail(-EINVAL, "--seed: '%s' is not an unsigned integer (or -1 for a random seed)",
                      s);
  *out = v;
  return 0;
}

static int parse_kv_type(const char *flag, const char *s, enum ferry_type *out) {
  if (!strcmp(s, "f32"))
    *out = FT_F32;
  else if (!strcmp(s, "f16"))
    *out = FT_F16;
  else if (!strcmp(s, "q8_0"))
    *out = FT_Q8_0;
  else
    return ferry_fail(-EINVAL, "%s: '%s' is not a KV cache type (f32, f16, q8_0)", flag, s);
  return 0;
}

static void usage(const char *cmd) {
  if (!strcmp(cmd, "score"))
    printf(
        "usage: ferry score -m MODEL.gguf --ids \"ID ID ...\" --from N [--logprobs K] [--exact]\n"
        "                   [--mode auto|full|stream] [--ram SIZE] [--vram SIZE] [--backend B] [-t "
        "N]\n"
        "                   [-c CTX] --json PATH\n");
  else if (!strcmp(cmd, "bench"))
    printf(
        "usage: ferry bench -m MODEL.gguf [--modes auto,full,stream] [-p PROMPT | -f FILE] [--raw] "
        "[-n N]\n"
        "                   [-t N] [--ram SIZE] [--temp T] [--seed S] [--json PATH]\n"
        "                   [--prefetch] [--trace-experts FILE] [--routing-stats]\n"
        "  with several modes the trace of mode M goes to FILE.M\n");
  else
    printf(
        "usage: ferry run -m MODEL.gguf [-p PROMPT | -f FILE] [--system TEXT] [-n N] [--raw]\n"
        "                 [--temp T] [--top-k K] [--top-p P] [--min-p P] [--seed S] [-t THREADS] "
        "[-c CTX]\n"
        "                 [-b BATCH] [--mode auto|full|stream] [--ram SIZE] [--vram SIZE]\n"
        "                 [--backend auto|cpu|cuda|sim] [--cpu] [--no-graph]\n"
        "                 [--expert-compute auto|cpu|gpu]\n"
        "                 [--stats] [--json PATH] [--logprobs K] [--exact] [--logit-bias "
        "ID(+|-)BIAS]\n"
        "                 [--cache-type-k f32|f16|q8_0] [--cache-type-v f32|f16|q8_0]\n"
        "                 [--prefetch] [--prefetch-cap F] [--trace-experts FILE] "
        "[--routing-stats]\n");
}

int run_opts_parse(struct run_opts *o, const char *cmd, int argc, char **argv) {
  memset(o, 0, sizeof *o);
  o->n_predict = 256;
  o->temp = 0.7f, o->top_k = 20, o->top_p = 0.8f, o->min_p = 0.0f; // Qwen3 Instruct model cards
  o->seed = 0xf3443;
  o->n_batch = 256;
  o->kv_k = o->kv_v = FT_F16;
  o->logprobs = 0;
  bool score = !strcmp(cmd, "score"), bench = !strcmp(cmd, "bench");
  int c, rc = 0;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":m:p:f:n:t:c:b:h", k_opts, NULL)) != -1) {
    switch (c) {
      case 'm': o->model = optarg; break;
      case 'p': o->prompt = optarg; break;
      case 'f': o->prompt_file = optarg; break;
      case OPT_SYSTEM: o->system = optarg; break;
      case 'n': rc = parse_int("-n", optarg, 0, 1 << 24, &o->n_predict); break;
      case OPT_RAW: o->raw = true; break;
      case OPT_TEMP:
        rc = parse_float("--temp", optarg, 0, 100, &o->temp), o->temp_set = true;
        break;
      case OPT_TOPK:
        rc = parse_int("--top-k", optarg, 0, 1 << 30, &o->top_k), o->top_k_set = true;
        break;
      case OPT_TOPP:
        rc = parse_float("--top-p", optarg, 0, 1, &o->top_p), o->top_p_set = true;
        break;
      case OPT_MINP:
        rc = parse_float("--min-p", optarg, 0, 1, &o->min_p), o->min_p_set = true;
        break;
      case OPT_SEED: rc = parse_seed(optarg, &o->seed); break;
      case 't': rc = parse_int("-t", optarg, 0, 1024, &o->threads); break;
      case 'c': rc = parse_int("-c", optarg, 1, 1 << 24, &o->n_ctx); break;
      case 'b': rc = parse_int("-b", optarg, 1, 8192, &o->n_batch); break;
      case OPT_MODE:
        if (!strcmp(optarg, "auto"))
          o->mode = MODE_AUTO;
        else if (!strcmp(optarg, "full"))
          o->mode = MODE_FULL;
        else if (!strcmp(optarg, "stream"))
          o->mode = MODE_STREAM;
        else
          rc = ferry_fail(-EINVAL, "--mode: '%s' is not auto, full or stream", optarg);
        break;
      case OPT_RAM: rc = parse_ram(optarg, &o->ram); break;
      case OPT_VRAM:
        rc = ferry_parse_size(optarg, &o->vram);
        if (rc) ferry_fail_ctx(rc, "--vram");
        break;
      case OPT_CPU: o->backend = "cpu"; break;
      case OPT_BACKEND:
        if (strcmp(optarg, "auto") && strcmp(optarg, "cpu") && strcmp(optarg, "cuda") &&
            strcmp(optarg, "sim"))
          rc = ferry_fail(-EINVAL, "--backend: '%s' is not auto, cpu, cuda or sim", optarg);
        o->backend = optarg;
        break;
      case OPT_NOGRAPH: o->no_graph = true; break;
      case OPT_XCOMPUTE:
        if (!strcmp(optarg, "auto"))
          o->expert_compute = EXPERT_AUTO;
        else if (!strcmp(optarg, "cpu"))
          o->expert_compute = EXPERT_CPU;
        else if (!strcmp(optarg, "gpu"))
          o->expert_compute = EXPERT_GPU;
        else
          rc = ferry_fail(-EINVAL, "--expert-compute: '%s' is not auto, cpu or gpu", optarg);
        break;
      case OPT_STATS: o->stats = true; break;
      case OPT_JSON: o->json_path = optarg; break;
      case OPT_LOGPROBS: rc = parse_int("--logprobs", optarg, 0, 1000, &o->logprobs); break;
      case OPT_EXACT: o->exact = true; break;
      case OPT_IDS: o->ids = optarg; break;
      case OPT_FROM: rc = parse_int("--from", optarg, 1, INT32_MAX, &o->from); break;
      case OPT_CTK: rc = parse_kv_type("--cache-type-k", optarg, &o->kv_k), o->kv_set = true; break;
      case OPT_CTV: rc = parse_kv_type("--cache-type-v", optarg, &o->kv_v), o->kv_set = true; break;
      case OPT_MODES: o->modes = optarg; break;
      case OPT_NOPROG: o->no_progress = true; break;
      case OPT_PREFETCH: o->prefetch = true; break;
      case OPT_TRACE:
        if (score) return ferry_fail(-EINVAL, "--trace-experts is for run and bench, not score");
        if (!*optarg) return ferry_fail(-EINVAL, "--trace-experts needs a file name");
        o->trace_experts = optarg;
        break;
      case OPT_PFCAP: {
        char *end;
        errno = 0;
        o->prefetch_cap = strtod(optarg, &end);
        if (errno || end == optarg || *end || o->prefetch_cap > 100)
          rc = ferry_fail(-EINVAL, "--prefetch-cap: '%s' is not a number <= 100 (negative: no cap)",
                          optarg);
        else if (o->prefetch_cap == 0)
          o->prefetch_cap = 1e-12; // 0 means "the default" to the cache: keep a real zero
        break;
      }
      case OPT_RSTATS:
        if (score) return ferry_fail(-EINVAL, "--routing-stats is for run and bench, not score");
        o->routing_stats = true;
        break;
      case OPT_LOGIT_BIAS:
        if (o->n_logit_bias == RUN_MAX_LOGIT_BIAS)
          rc = ferry_fail(-EINVAL, "--logit-bias: at most %d", RUN_MAX_LOGIT_BIAS);
        else
          rc = logit_bias_parse(optarg, &o->logit_bias[o->n_logit_bias++]);
        break;
      case 'h':
      case OPT_HELP: usage(cmd); return 1;
      case ':':
      case '?': return cli_bad_option(c, argv, cmd);
    }
    if (rc) return rc;
  }
  if (optind < argc)
    return ferry_fail(-EINVAL, "unexpected argument '%s' (see ferry %s --help)", argv[optind], cmd);
  if (!o->model) return ferry_fail(-EINVAL, "missing -m MODEL.gguf");
  if (score) {
    if (!o->ids) return ferry_fail(-EINVAL, "missing --ids \"ID ID ...\"");
    if (!o->from)
      return ferry_fail(
          -EINVAL, "missing --from N (the number of context tokens before the first scored one)");
    if (!o->json_path) return ferry_fail(-EINVAL, "missing --json PATH");
  } else if (!bench && strcmp(cmd, "serve")) {
    if (o->prompt && o->prompt_file) return ferry_fail(-EINVAL, "give either -p or -f, not both");
    if (!o->prompt && !o->prompt_file) return ferry_fail(-EINVAL, "missing -p PROMPT or -f FILE");
  }
  if (o->exact && !o->kv_set) o->kv_k = o->kv_v = FT_F32;
  if (o->kv_k != o->kv_v)
    return ferry_fail(-EINVAL, "--cache-type-k and --cache-type-v must be equal (for now)");
  if (o->logprobs && !o->json_path && !score && !bench)
    return ferry_fail(-EINVAL,
                      "--logprobs needs --json PATH (the log-probabilities are written "
                      "to the JSON report)");
  // Outputs are checked now, not after a run of minutes: the path must be creatable and
  // must not name a device, FIFO or directory.
  if (o->json_path && (rc = ferry_outfile_check(o->json_path, "--json file"))) return rc;
  return 0;
}

// ---------------------------------------------------------------------------------------
// session

struct session {
  struct run_opts o;
  struct gguf_file *f;
  struct model *m;
  struct tokenizer *tok;
  struct ferry_pool *pool;
  struct ferry_backend *be;
  struct ferry_backend *cpu; // stream mode on a device: computes experts from host RAM
  struct stream *stream;     // stream mode only
  struct budget *budget;
  struct plan plan;
  struct routing *routing; // --trace-experts / --routing-stats
  double load_s;
  char device[160];
};

uint64_t session_default_ram(void) {
  // Leave room for the rest of the system: an eighth of what is available, at least
  // 64 MiB and at most 512 MiB (so a small memory cgroup is not mostly given away).
  uint64_t avail = ferry_mem_available_bytes(), margin = avail / 8;
  if (margin < (64ull << 20)) margin = 64ull << 20;
  if (margin > (512ull << 20)) margin = 512ull << 20;
  return avail > 2 * margin ? avail - margin : avail / 2;
}

// The VRAM budget when --vram is not given: what the device has free now minus 512 MiB
// for the CUDA context's own growth and cuBLAS workspaces.
static uint64_t default_vram(struct ferry_backend *be) {
  size_t free_b = 0, total_b = 0;
  if (be->ops.mem_info(be, &free_b, &total_b)) {
    ferry_clear_error();
    return 0;
  }
  const uint64_t margin = 512ull << 20;
  return free_b > margin ? free_b - margin : 0;
}

struct model_opts session_model_opts(const struct run_opts *o) {
  return (struct model_opts){.exact = o->exact,
                             .n_ctx = o->n_ctx,
                             .n_batch = o->n_batch,
                             .n_threads = o->threads,
                             .kv_k = o->kv_k,
                             .kv_v = o->kv_v,
                             .progress = !o->no_progress && isatty(2),
                             .prefetch = o->prefetch,
                             .predict_routes = o->routing_stats || o->trace_experts != NULL,
                             .checkpoint = o->prompt_cache,
                             .no_graph = o->no_graph};
}

int session_plan(const struct gguf_file *f, const struct run_opts *o, enum ferry_backend_kind kind,
                 uint64_t ram, uint64_t vram, uint64_t base, struct plan_need *need,
                 struct plan *out) {
  memset(need, 0, sizeof *need);
  memset(out, 0, sizeof *out);
  struct model_opts mo = session_model_opts(o);
  struct model_mem full, str;
  int rc = model_plan(f, &mo, kind, &full);
  if (rc) return rc;
  mo.dense_only = true;
  if ((rc = model_plan(f, &mo, kind, &str))) return rc;
  struct model_hparams hp;
  if ((rc = hparams_load(&hp, f))) return rc;
  *need = (struct plan_need){.dense = full.dense,
                             .experts = full.experts,
                             .state = full.state,
                             .scratch = full.scratch,
                             .host = full.host + base,
                             .s_dense = str.dense,
                             .s_state = str.state,
                             .s_scratch = str.scratch,
                             .s_host = str.host + base,
                             .min_cache = stream_min_cache_bytes(f, &hp),
                             .n_layer = hp.n_layer,
                             .n_expert = hp.n_expert};
  stream_expert_slot_bytes(f, &hp, &need->expert_slot_bytes, &need->all_experts);
  stream_vram_bytes(f, &hp, &need->dev_min_cache, &need->dev_slot_bytes, &need->dev_all_experts);
  hparams_free(&hp);
  const struct plan_req req = {.mode = o->mode == MODE_FULL     ? PLAN_FULL
                                       : o->mode == MODE_STREAM ? PLAN_STREAM
                                                                : PLAN_AUTO,
                               .device = kind != FERRY_BACKEND_CPU,
                               .ram = ram,
                               .vram = vram,
                               .ram_given = o->ram != 0,
                               .vram_given = o->vram != 0,
                               .vram_tier_needed = o->expert_compute == EXPERT_GPU};
  return plan_make(need, &req, out);
}

// What the budget must hold besides the model: the process itself and the prompt.
// The process part is its resident set (VmRSS of /proc/self/status) when the session
// starts, after the CPU topology the thread pool and scratch plan read has been loaded:
// the binary and shared libraries' touched pages, the main stack, hwloc's topology (about
// 3 MiB, kept for the process) and the prompt text the caller already holds (measured
// 5.8-6.1 MiB on the development VM). The prompt adds SESSION_PROMPT_BYTES_PER_BYTE per
// byte for what is made from it during the run. The sum is rounded up to 4 MiB: VmRSS
// moves by ~0.3 MiB between runs of the same command (address layout), and the minimum
// budget ferry names must not move with it.
#if defined(__SANITIZE_ADDRESS__)
#define SESSION_SANITIZER_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SESSION_SANITIZER_BUILD 1
#endif
#endif

uint64_t session_baseline_bytes(const struct run_opts *o) {
  uint64_t prompt = (uint64_t)SESSION_PROMPT_BYTES_PER_BYTE * o->prompt_len;
#ifdef SESSION_SANITIZER_BUILD
  // Under ASan, VmRSS is mostly the sanitizer's shadow memory and its quarantine of freed
  // blocks (which differs from process to process: bench's children inherit the parent's),
  // not the process's own baseline; charge what a Release build measures instead, so the
  // minimum budget stays one number (RSS bounds are checked in Release builds only).
  return ferry_align_up((6ull << 20) + prompt, 4ull << 20);
#else
  (void)numa_topo_physical_cores(); // loads and caches the topology
#ifdef __GLIBC__
  malloc_trim(0); // freed heap pages (bench's parent parsed the file before forking) leave RSS
#endif
  return ferry_align_up(ferry_rss_bytes() + prompt, 4ull << 20);
#endif
}

int session_open(struct session **out, const struct run_opts *o) {
  *out = NULL;
  struct session *s = calloc(1, sizeof *s);
  if (!s) return ferry_fail(-ENOMEM, "out of memory");
  s->o = *o;
  const double t0 = ferry_now_s();
  const uint64_t base = session_baseline_bytes(o); // before the session allocates anything
  int rc = gguf_open(&s->f, o->model);
  if (rc) goto fail;
  if ((rc = tok_create(&s->tok, s->f))) goto fail;
  if ((rc = ferry_pool_create(&s->pool, o->threads))) goto fail;
  if ((rc = ferry_backend_create(&s->be, o->backend ? o->backend : "auto", s->pool, 0))) goto fail;
  ferry_backend_describe(s->be, s->device, sizeof s->device);
  for (int i = 0; i < 2; i++) {
    const enum ferry_type t = i ? o->kv_v : o->kv_k;
    if (!(s->be->kv_types >> t & 1)) {
      rc = ferry_fail(-ENOTSUP,
                      "the %s KV cache is not supported on the %s backend yet; use "
                      "--cache-type-k/v f16 or f32, or --backend cpu",
                      ferry_type_info(t)->name, s->be->name);
      goto fail;
    }
  }
  const bool device = s->be->kind != FERRY_BACKEND_CPU;
  const uint64_t ram = o->ram ? o->ram : session_default_ram();
  const uint64_t vram = !device ? 0 : o->vram ? o->vram : default_vram(s->be);
  struct plan_need need;
  if ((rc = session_plan(s->f, o, s->be->kind, ram, vram, base, &need, &s->plan))) goto fail;
  const bool stream = s->plan.mode == PLAN_STREAM;
  if (o->mode == MODE_AUTO)
    log_info("mode auto -> %s on %s (%s)", plan_mode_name(s->plan.mode), s->be->name, s->device);
  // Charge the plan before allocating (the expert cache charges itself when created).
  if ((rc = budget_create(&s->budget, ram, device ? vram : 0))) goto fail;
  for (int t = 0; t < BUDGET_N_TIERS; t++)
    for (int c = 0; c < BUDGET_N_CATS; c++)
      if (s->plan.charge[t][c] && (rc = budget_charge(s->budget, (enum budget_tier)t,
                                                      (enum budget_cat)c, s->plan.charge[t][c])))
        goto fail;
  struct model_opts mo = session_model_opts(o);
  mo.dense_only = stream;
  if ((rc = model_load(&s->m, s->f, &mo, s->be))) goto fail;
  {
    // the plan was charged: what the model allocated must be what it planned
    struct model_mem used;
    model_mem_used(s->m, &used);
    const enum budget_tier tb = device ? BUDGET_DEVICE : BUDGET_HOST;
    const uint64_t *c = s->plan.charge[tb];
    FERRY_ASSERT(used.dense + used.experts <= c[BUDGET_DENSE] + c[BUDGET_EXPERTS] &&
                 used.state <= c[BUDGET_KV] && used.scratch <= c[BUDGET_SCRATCH]);
  }
  if (stream) {
    if ((rc = stream_create(&s->stream, s->f, model_hparams(s->m), s->budget, s->be,
                            s->plan.vram_cache, o->prefetch_cap)))
      goto fail;
    struct expert_source src;
    stream_expert_source(s->stream, &src);
    // on a device, experts in host RAM may be computed by the CPU (cost model, offload/)
    if (device && o->expert_compute != EXPERT_GPU &&
        (rc = ferry_backend_create(&s->cpu, "cpu", s->pool, 0)))
      goto fail;
    const struct cost_model cm = {.policy = o->expert_compute,
                                  .h2d_gbps = 12,
                                  .cpu_gbps = 20,
                                  .cpu_tok_frac = 0.5,
                                  .gpu_s = 20e-6,
                                  .gpu_tok_frac = 0.02};
    if ((rc = model_set_expert_source(s->m, &src, s->cpu, &cm))) goto fail;
  }
  if (o->trace_experts || o->routing_stats) {
    const struct model_hparams *hp = model_hparams(s->m);
    struct routing_opts ro = {.trace_path = o->trace_experts,
                              .stats = o->routing_stats,
                              .n_layer = (int)hp->n_layer,
                              .n_expert = (int)hp->n_expert,
                              .k = (int)hp->n_expert_used};
    if ((rc = routing_create(&s->routing, &ro))) goto fail;
    struct route_observer ob;
    routing_observer(s->routing, &ob);
    model_set_route_observer(s->m, &ob);
  }
  s->load_s = ferry_now_s() - t0;
  *out = s;
  return 0;
fail:
  session_close(s);
  return rc;
}

void session_close(struct session *s) {
  if (!s) return;
  routing_destroy(s->routing);
  model_destroy(s->m); // first: its stream may still wait on the tiers' copy events
  stream_destroy(s->stream);
  budget_destroy(s->budget);
  ferry_backend_destroy(s->cpu);
  ferry_backend_destroy(s->be);
  ferry_pool_destroy(s->pool);
  tok_destroy(s->tok);
  gguf_close(s->f);
  free(s);
}

struct model *session_model(struct session *s) {
  return s->m;
}
const struct gguf_file *session_gguf(struct session *s) { return s->f; }
const struct tokenizer *session_tokenizer(struct session *s) { return s->tok; }
const char *session_mode_name(const struct session *s) { return plan_mode_name(s->plan.mode); }
const char *session_backend_name(const struct session *s) { return s->be->name; }
const char *session_device(const struct session *s) { return s->device; }

// The expert tiers' counters alone (no RSS read, no routing summary): cheap enough to take
// inside the timed decode phase.
static void tier_counters(struct session *s, struct run_stats *st) {
  st->io_direct = false;
  if (s->stream) stream_fill_stats(s->stream, st);
  if (s->m) {
    struct expert_counters ec;
    model_expert_counters(s->m, &ec);
    st->experts_gpu = ec.gpu;
    st->experts_cpu = ec.cpu;
    st->promoted = ec.promoted;
    st->disk_wait_s = ec.disk_wait_s;
    st->copy_wait_s += ec.copy_wait_s;
    st->cpu_expert_s = ec.cpu_s;
  }
}

void session_traffic(struct session *s, struct run_traffic *t) {
  struct run_stats st = {0};
  tier_counters(s, &st);
  *t = (struct run_traffic){.io_bytes = st.io_bytes,
                            .h2d_bytes = st.h2d_bytes,
                            .vram_hits = st.dev_hits,
                            .vram_misses = st.dev_misses,
                            .host_hits = st.host_hits,
                            .host_misses = st.host_misses,
                            .experts_gpu = st.experts_gpu,
                            .experts_cpu = st.experts_cpu,
                            .disk_wait_s = st.disk_wait_s,
                            .copy_wait_s = st.copy_wait_s,
                            .cpu_expert_s = st.cpu_expert_s};
}

void run_traffic_since(struct run_traffic *d, const struct run_traffic *now,
                       const struct run_traffic *then) {
  *d = (struct run_traffic){.io_bytes = now->io_bytes - then->io_bytes,
                            .h2d_bytes = now->h2d_bytes - then->h2d_bytes,
                            .vram_hits = now->vram_hits - then->vram_hits,
                            .vram_misses = now->vram_misses - then->vram_misses,
                            .host_hits = now->host_hits - then->host_hits,
                            .host_misses = now->host_misses - then->host_misses,
                            .experts_gpu = now->experts_gpu - then->experts_gpu,
                            .experts_cpu = now->experts_cpu - then->experts_cpu,
                            .disk_wait_s = now->disk_wait_s - then->disk_wait_s,
                            .copy_wait_s = now->copy_wait_s - then->copy_wait_s,
                            .cpu_expert_s = now->cpu_expert_s - then->cpu_expert_s};
}

void session_fill_stats(struct session *s, struct run_stats *st) {
  st->backend = s->be->name;
  st->device = s->device;
  st->load_s = s->load_s;
  st->peak_rss = ferry_peak_rss_bytes();
  st->ram_budget = s->plan.ram;
  st->vram_budget = s->plan.vram;
  st->peak_vram = budget_peak_total(s->budget, BUDGET_DEVICE);
  tier_counters(s, st);
  st->prefetch = s->stream && s->o.prefetch;
  st->has_routing = false;
  st->lag1_reuse = st->stale_gate_accuracy = st->coverage90 = -1;
  if (s->routing && s->o.routing_stats) {
    struct routing_summary rs;
    routing_summarize(s->routing, &rs);
    st->has_routing = rs.valid;
    st->lag1_reuse = rs.lag1_reuse;
    st->stale_gate_accuracy = rs.stale_gate_accuracy;
    st->coverage90 = rs.coverage90;
  }
}

int session_flush(struct session *s) { return routing_flush(s->routing); }
