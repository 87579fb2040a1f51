// engine/cmd_cachesim.c: `ferry cachesim TRACE` — replays an expert trace (--trace-experts)
// against cache policies and sizes and prints hit rates and bytes read per token
// (engine/cachesim.h). Sizes come from budgets for a model file (--model M --ram SIZE
// [--vram SIZE], computed exactly as `ferry run --mode stream` computes its cache) or as
// slots per layer (--slots 51 or --slots 25%,50%,75%).
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "engine/cachesim.h"
#include "engine/cli.h"
#include "engine/gguf.h"
#include "engine/hparams.h"
#include "engine/json.h"
#include "engine/model.h"
#include "engine/session.h"
#include "engine/stream.h"

#define MAX_SIZES 16

static void usage(FILE *o) {
  fprintf(
      o,
      "usage: ferry cachesim TRACE [--model M.gguf] (--ram SIZE [--vram SIZE] | --slots LIST)\n"
      "                      [--policies ferry,lru,lfu,s3fifo] [--scope layer,global]\n"
      "                      [--prefetch off|on|both] [--cap F] [--warmup N] [--experts N]\n"
      "                      [-c CTX] [-b BATCH] [-t THREADS] [--json PATH]\n"
      "TRACE: the JSON lines of ferry run/bench --trace-experts.\n"
      "--ram/--vram: budgets for the model file (needs --model); the expert capacity is what\n"
      "  `ferry run --mode stream --ram SIZE` gives its cache (pass the run's -c/-b/-t too).\n"
      "  --vram adds what is left of it after the dense weights, state and scratch, as one\n"
      "  cache with the RAM (ferry has no device tier yet).\n"
      "--slots: slots per layer, N or P%% of the experts, comma-separated (25%%,50%%,75%%).\n"
      "--policies: ferry = the engine's own cache (offload/ecache in simulation: size classes,\n"
      "  pins, batches), lru, lfu, s3fifo; --scope: per-layer or global budgets (generic\n"
      "  policies; ferry's cache is per size class). --prefetch: stale-gate prefetch (needs\n"
      "  the trace's \"pred\"); --cap: prefetch cap (default %.2f, negative: none).\n"
      "--warmup N: count only chunks starting at position N or later.\n"
      "Without --model: --slots only, n_experts from --experts or the trace, no bytes.\n",
      ECACHE_PREFETCH_CAP);
}

enum { O_MODEL = 256, O_RAM, O_VRAM, O_SLOTS, O_POL, O_SCOPE, O_PF, O_CAP, O_WARM, O_EXP, O_JSON };

struct size_spec {
  bool pct;
  double v;
};

static int parse_sizes(const char *s, struct size_spec *out, int *n) {
  *n = 0;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", s);
  for (char *sv = NULL, *tok = strtok_r(buf, ",", &sv); tok; tok = strtok_r(NULL, ",", &sv)) {
    char *end;
    errno = 0;
    double v = strtod(tok, &end);
    bool pct = *end == '%';
    if (pct) end++;
    if (end == tok || *end || errno || !(v > 0) || (pct && v > 100) || (!pct && v != (long)v))
      return ferry_fail(-EINVAL,
                        "--slots: '%s' is not a positive whole number of slots or a percentage "
                        "(e.g. 51 or 40%%)",
                        tok);
    if (*n == MAX_SIZES) return ferry_fail(-EINVAL, "--slots: at most %d sizes", MAX_SIZES);
    out[(*n)++] = (struct size_spec){pct, v};
  }
  if (!*n) return ferry_fail(-EINVAL, "--slots: no size given");
  return 0;
}

static int parse_list(const char *flag, const char *s, const char *const *names, int n_names,
                      bool *on) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", s);
  memset(on, 0, sizeof(bool) * (size_t)n_names);
  int any = 0;
  for (char *sv = NULL, *tok = strtok_r(buf, ",", &sv); tok; tok = strtok_r(NULL, ",", &sv)) {
    int i = 0;
    while (i < n_names && strcmp(tok, names[i])) i++;
    if (i == n_names) return ferry_fail(-EINVAL, "%s: unknown value '%s'", flag, tok);
    on[i] = true, any++;
  }
  if (!any) return ferry_fail(-EINVAL, "%s: empty list", flag);
  return 0;
}

// The host capacity `ferry run --mode stream --ram ram` gives its expert cache, from the
// same placement plan (offload/plan.c); with vram, the plan of a device and its VRAM expert
// tier added (the simulator models one cache of both tiers' capacity).
static int budget_capacity(const struct gguf_file *f, uint64_t ram, uint64_t vram, int n_ctx,
                           int n_batch, int threads, uint64_t *out) {
  struct run_opts o = {.mode = MODE_STREAM,
                       .n_ctx = n_ctx,
                       .n_batch = n_batch,
                       .threads = threads,
                       .kv_k = FT_F16,
                       .kv_v = FT_F16,
                       .routing_stats = true}; // a traced run computes predictions
  struct plan_need need;
  struct plan plan;
  int rc = session_plan(f, &o, vram ? FERRY_BACKEND_CUDA : FERRY_BACKEND_CPU, ram, vram,
                        session_baseline_bytes(&o), &need, &plan);
  if (rc) return rc;
  *out = plan.host_cache + plan.vram_cache;
  return 0;
}

int cmd_cachesim(int argc, char **argv) {
  static const struct option opts[] = {{"model", required_argument, 0, O_MODEL},
                                       {"ram", required_argument, 0, O_RAM},
                                       {"vram", required_argument, 0, O_VRAM},
                                       {"slots", required_argument, 0, O_SLOTS},
                                       {"policies", required_argument, 0, O_POL},
                                       {"scope", required_argument, 0, O_SCOPE},
                                       {"prefetch", required_argument, 0, O_PF},
                                       {"cap", required_argument, 0, O_CAP},
                                       {"warmup", required_argument, 0, O_WARM},
                                       {"experts", required_argument, 0, O_EXP},
                                       {"json", required_argument, 0, O_JSON},
                                       {"ctx-size", required_argument, 0, 'c'},
                                       {"batch-size", required_argument, 0, 'b'},
                                       {"threads", required_argument, 0, 't'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *model = NULL, *slots = NULL, *json = NULL;
  const char *pol_s = "ferry,lru,lfu,s3fifo", *scope_s = "layer,global", *pf_s = "both";
  uint64_t ram = 0, vram = 0;
  double cap = 0;
  long warmup = 0, experts = 0, n_ctx = 0, n_batch = 256, threads = 0;
  int c, rc = 0;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":c:b:t:h", opts, NULL)) != -1) {
    char *end = NULL;
    switch (c) {
      case O_MODEL: model = optarg; break;
      case O_RAM:
        if ((rc = ferry_parse_size(optarg, &ram))) return ferry_fail_ctx(rc, "--ram");
        break;
      case O_VRAM:
        if ((rc = ferry_parse_size(optarg, &vram))) return ferry_fail_ctx(rc, "--vram");
        break;
      case O_SLOTS: slots = optarg; break;
      case O_POL: pol_s = optarg; break;
      case O_SCOPE: scope_s = optarg; break;
      case O_PF: pf_s = optarg; break;
      case O_JSON: json = optarg; break;
      case O_CAP:
        cap = strtod(optarg, &end);
        if (end == optarg || *end)
          return ferry_fail(-EINVAL, "--cap: '%s' is not a number", optarg);
        if (cap == 0) cap = 1e-12; // 0 means "default" to the cache: keep a real zero
        break;
#define LNG(ch, name, var, lo, hi)                                                       \
  case ch:                                                                               \
    errno = 0;                                                                           \
    var = strtol(optarg, &end, 10);                                                      \
    if (end == optarg || *end || errno || var < (lo) || var > (hi))                      \
      return ferry_fail(-EINVAL, "%s: '%s' is not an integer in %ld..%ld", name, optarg, \
                        (long)(lo), (long)(hi));                                         \
    break;
        LNG(O_WARM, "--warmup", warmup, 0, 1L << 30)
        LNG(O_EXP, "--experts", experts, 1, 1 << 20)
        LNG('c', "-c", n_ctx, 1, 1 << 24)
        LNG('b', "-b", n_batch, 1, 8192)
        LNG('t', "-t", threads, 0, 1024)
#undef LNG
      case 'h': usage(stdout); return 0;
      case ':': return ferry_fail(-EINVAL, "option '%s' needs a value", argv[optind - 1]);
      default:
        return ferry_fail(-EINVAL, "unknown option '%s' (see ferry cachesim --help)",
                          argv[optind - 1]);
    }
  }
  if (optind >= argc) return ferry_fail(-EINVAL, "missing TRACE (see ferry cachesim --help)");
  if (optind + 1 < argc)
    return ferry_fail(-EINVAL, "unexpected argument '%s' (one TRACE at a time)", argv[optind + 1]);
  const char *trace_path = argv[optind];
  if (!ram && !slots) return ferry_fail(-EINVAL, "give --ram SIZE (with --model) or --slots LIST");
  if (ram && slots) return ferry_fail(-EINVAL, "give either --ram or --slots, not both");
  if (vram && !ram) return ferry_fail(-EINVAL, "--vram goes with --ram");
  if (ram && !model)
    return ferry_fail(-EINVAL, "--ram needs --model (the budgets are for a model)");
  static const char *const pol_names[] = {"ferry", "lru", "lfu", "s3fifo"};
  static const char *const scope_names[] = {"layer", "global"};
  bool pol_on[SIM_N_POLICIES], scope_on[2];
  if ((rc = parse_list("--policies", pol_s, pol_names, SIM_N_POLICIES, pol_on)) ||
      (rc = parse_list("--scope", scope_s, scope_names, 2, scope_on)))
    return rc;
  bool pf_off = !strcmp(pf_s, "off") || !strcmp(pf_s, "both");
  bool pf_on = !strcmp(pf_s, "on") || !strcmp(pf_s, "both");
  if (!pf_off && !pf_on) return ferry_fail(-EINVAL, "--prefetch must be off, on or both");
  struct size_spec sizes[MAX_SIZES];
  int n_sizes = 0;
  if (slots && (rc = parse_sizes(slots, sizes, &n_sizes))) return rc;

  struct trace t;
  if ((rc = trace_load(&t, trace_path))) return rc;
  struct gguf_file *f = NULL;
  struct model_hparams hp;
  bool hp_ok = false;
  struct ecache_layer *layers = NULL;
  uint32_t n_layers = (uint32_t)t.n_layer, k = (uint32_t)t.k;
  struct jw w;
  bool jw_opened = false;
  if (model) {
    if ((rc = gguf_open(&f, model)) || (rc = hparams_load(&hp, f))) goto out;
    hp_ok = true;
    n_layers = hp.n_layer;
    if (hp.n_expert_used != k) {
      rc = ferry_fail(-EINVAL, "the trace has %u experts per token but %s uses %u", k, model,
                      hp.n_expert_used);
      goto out;
    }
    layers = calloc(n_layers, sizeof *layers);
    if (!layers || (rc = stream_expert_layout(f, &hp, layers))) {
      if (!rc) rc = ferry_fail(-ENOMEM, "out of memory");
      goto out;
    }
  } else {
    uint32_t E = experts ? (uint32_t)experts : (uint32_t)t.max_expert + 1;
    layers = calloc(n_layers, sizeof *layers);
    if (!layers) {
      rc = ferry_fail(-ENOMEM, "out of memory");
      goto out;
    }
    for (uint32_t l = 0; l < n_layers; l++) {
      layers[l].n_experts = E;
      for (int q = 0; q < ECACHE_N_PARTS; q++)
        layers[l].part[q] =
            (struct ecache_slice){.base = (uint64_t)q << 40, .stride = 4096, .len = 4096};
    }
  }
  uint32_t E0 = layers[0].n_experts;
  uint64_t denom = 0;
  for (uint32_t l = 0; l < n_layers; l++)
    denom += layers[l].n_experts ? ecache_layer_slot_bytes(&layers[l]) : 0;
  if (ram) {
    uint64_t b = 0;
    if ((rc = budget_capacity(f, ram, vram, (int)n_ctx, (int)n_batch, (int)threads, &b))) goto out;
    n_sizes = 1;
    sizes[0] = (struct size_spec){false, (double)b}; // bytes, marked below
  }
  if (json) {
    if ((rc = jw_open(&w, json))) goto out;
    jw_opened = true;
    jw_obj(&w);
    jw_key(&w, "trace"), jw_str(&w, trace_path);
    if (model) jw_key(&w, "model"), jw_str(&w, model);
    jw_key(&w, "positions"), jw_int(&w, t.n_positions);
    jw_key(&w, "layers"), jw_int(&w, n_layers);
    jw_key(&w, "experts"), jw_int(&w, E0);
    jw_key(&w, "k"), jw_int(&w, k);
    jw_key(&w, "results"), jw_arr(&w);
  }
  printf("ferry cachesim: %s, %lld positions, %u layers, %u experts, top-%u%s\n", trace_path,
         (long long)t.n_positions, n_layers, E0, k, warmup ? " (after warm-up)" : "");
  printf("%-22s %-7s %-7s %-3s %9s %9s %11s %11s %12s\n", "capacity", "policy", "scope", "pf",
         "hit rate", "hits", "misses", "MiB/token", "pf right");
  for (int si = 0; si < n_sizes && !rc; si++) {
    struct sim_config cfg = {
        .layers = layers, .n_layers = n_layers, .min_slots = k, .cap = cap, .warmup = warmup};
    char label[64];
    if (ram) {
      cfg.host_bytes = (uint64_t)sizes[si].v;
      char b[32];
      ferry_format_size(cfg.host_bytes, b, sizeof b);
      snprintf(label, sizeof label, "%s", b);
    } else {
      uint64_t per =
          sizes[si].pct ? (uint64_t)(sizes[si].v / 100.0 * E0 + 0.5) : (uint64_t)sizes[si].v;
      if (per < k) per = k;
      cfg.host_bytes = per * denom; // the same slots in every layer, whatever the classes
      snprintf(label, sizeof label, "%llu/layer (%.0f%%)", (unsigned long long)per,
               100.0 * (double)per / E0);
    }
    for (int p = 0; p < SIM_N_POLICIES && !rc; p++) {
      if (!pol_on[p]) continue;
      for (int sc = 0; sc < 2 && !rc; sc++) {
        if (!scope_on[sc] || (p == SIM_FERRY && sc == 1 && scope_on[0])) continue;
        for (int pf = 0; pf < 2 && !rc; pf++) {
          if ((pf == 0 && !pf_off) || (pf == 1 && !pf_on)) continue;
          cfg.policy = (enum sim_policy)p;
          cfg.global = sc == 1;
          cfg.prefetch = pf == 1;
          struct sim_result r;
          if ((rc = sim_run(&t, &cfg, &r))) break;
          uint64_t acc = r.hits + r.misses;
          double hr = acc ? (double)r.hits / (double)acc : 0;
          double mib = r.positions ? (double)(r.bytes_demand + r.bytes_prefetch) /
                                         (double)r.positions / (1 << 20)
                                   : 0;
          uint64_t res = r.pf_used + r.pf_wrong;
          char pr[32] = "-", mb[32] = "-";
          if (pf && res) snprintf(pr, sizeof pr, "%.1f%%", 100.0 * r.pf_used / res);
          if (model) snprintf(mb, sizeof mb, "%.2f", mib);
          printf("%-22s %-7s %-7s %-3s %8.1f%% %9llu %11llu %11s %12s\n", label,
                 sim_policy_name(cfg.policy),
                 p == SIM_FERRY ? "class"
                 : sc           ? "global"
                                : "layer",
                 pf ? "on" : "off", 100 * hr, (unsigned long long)r.hits,
                 (unsigned long long)r.misses, mb, pr);
          if (json) {
            jw_obj(&w);
            jw_key(&w, "policy"), jw_str(&w, sim_policy_name(cfg.policy));
            jw_key(&w, "scope"), jw_str(&w, p == SIM_FERRY ? "class" : sc ? "global" : "layer");
            jw_key(&w, "prefetch"), jw_bool(&w, pf);
            jw_key(&w, "capacity_bytes"), jw_uint(&w, r.capacity_bytes);
            jw_key(&w, "capacity_slots"), jw_uint(&w, r.capacity_slots);
            if (!ram) jw_key(&w, "slots_per_layer"), jw_uint(&w, cfg.host_bytes / denom);
            jw_key(&w, "hits"), jw_uint(&w, r.hits);
            jw_key(&w, "misses"), jw_uint(&w, r.misses);
            jw_key(&w, "evictions"), jw_uint(&w, r.evictions);
            jw_key(&w, "hit_rate"), jw_num(&w, hr);
            jw_key(&w, "positions"), jw_int(&w, r.positions);
            jw_key(&w, "bytes_per_token");
            model ? jw_num(&w, mib * (1 << 20)) : jw_null(&w);
            jw_key(&w, "prefetch_issued"), jw_uint(&w, r.pf_issued);
            jw_key(&w, "prefetch_used"), jw_uint(&w, r.pf_used);
            jw_key(&w, "prefetch_wrong"), jw_uint(&w, r.pf_wrong);
            jw_key(&w, "prefetch_skipped"), jw_uint(&w, r.pf_skipped);
            jw_obj_end(&w);
          }
        }
      }
    }
  }
  if (json && !rc) {
    jw_arr_end(&w);
    jw_obj_end(&w);
    rc = jw_close(&w, json);
    jw_opened = false;
  }
out:
  if (jw_opened) jw_close(&w, json);
  free(layers);
  if (hp_ok) hparams_free(&hp);
  gguf_close(f);
  trace_free(&t);
  return rc;
}
