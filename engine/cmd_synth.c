// engine/cmd_synth.c: `ferry synth` — writes a synthetic qwen3moe / qwen3next GGUF with
// random weights (engine/synth.h) from a preset or explicit dimensions.
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/base.h"
#include "base/files.h"
#include "engine/cli.h"
#include "engine/synth.h"
#include "kernels/types.h"

static void synth_usage(FILE *o) {
  fprintf(o,
          "usage: ferry synth (--arch qwen3moe|qwen3next | --preset NAME) --quant f32|q8_0|q4_k_m\n"
          "                   [dims] [--layout split|legacy] [--vocab-from FILE.gguf] [--seed S]\n"
          "                   [--routing random|real] [-t THREADS] -o OUT.gguf\n"
          "       ferry synth --vocab-only --vocab-from FILE.gguf [--name TEXT] -o OUT.gguf\n"
          "presets: qwen3-30b-a3b (qwen3moe), qwen3-next-80b-a3b (qwen3next, split layout)\n"
          "  without a preset the dims default to the fixtures' tiny models\n"
          "dims (override the preset):\n"
          "  --layers N --embd N --ff N --heads N --kv-heads N --head-dim N --rope-dims N\n"
          "  --experts N --experts-used N --expert-ff N --shared-ff N --ctx N --rope-base F\n"
          "  --ssm-conv N --ssm-state N --ssm-groups N (k-heads) --ssm-dt-rank N (v-heads)\n"
          "  --ssm-inner N --attn-interval N --vocab N --name TEXT\n"
          "--layout legacy (qwen3next): fused ssm_in, 1-D BF16 ffn_gate_inp_shexp, no\n"
          "  layer-pattern keys. --vocab-from copies every tokenizer.* key and sets the vocab\n"
          "  size; without it a minimal byte-level vocabulary (256 bytes + 26 Qwen3 added\n"
          "  tokens, no merges) is written.\n"
          "q4_k_m follows llama.cpp (Q4_K, Q6_K for output/attn_v/ffn_down by layer); rows\n"
          "  that are not a multiple of 256 fall back to Q8_0 (a warning says how many).\n"
          "  Large K-quant tensors reuse a per-tensor bank of 1024 quantized blocks, picked at\n"
          "  random per row and block (the reference quantizer is slow); --exact-quant\n"
          "  quantizes every row instead.\n"
          "--routing real constructs the weights so that the model's own router reproduces the\n"
          "  routing statistics of real Qwen3 MoE models (expert reuse between tokens, stale-gate\n"
          "  predictability, popularity skew growing with depth; NOTES.md). Needs --embd >= 512.\n"
          "  --routing-knobs k=v,... overrides its constants (experiments). Default: random.\n"
          "--vocab-only writes no weights: only the tokenizer of --vocab-from (a GGUF with no\n"
          "  tensors, usable by ferry tokenize and as --vocab-from).\n"
          "-o OUT.gguf is written under a temporary name and renamed when complete; an OUT\n"
          "  that exists and is not a regular file is refused.\n");
}

static int parse_u32(const char *flag, const char *s, uint32_t lo, uint32_t hi, uint32_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (!*s || *end || errno || s[0] == '-' || v < lo || v > hi)
    return ferry_fail(-EINVAL, "%s: '%s' is not an integer in %u..%u", flag, s, lo, hi);
  *out = (uint32_t)v;
  return 0;
}

enum {
  O_ARCH = 256,
  O_PRESET,
  O_LAYERS,
  O_EMBD,
  O_FF,
  O_HEADS,
  O_KV_HEADS,
  O_HEAD_DIM,
  O_ROPE_DIMS,
  O_EXPERTS,
  O_EXPERTS_USED,
  O_EXPERT_FF,
  O_SHARED_FF,
  O_CTX,
  O_ROPE_BASE,
  O_SSM_CONV,
  O_SSM_STATE,
  O_SSM_GROUPS,
  O_SSM_DT_RANK,
  O_SSM_INNER,
  O_ATTN_INTERVAL,
  O_VOCAB,
  O_LAYOUT,
  O_QUANT,
  O_VOCAB_FROM,
  O_SEED,
  O_NAME,
  O_EXACT,
  O_ROUTING,
  O_KNOBS,
  O_VOCAB_ONLY,
};

int cmd_synth(int argc, char **argv) {
  static const struct option opts[] = {{"arch", required_argument, 0, O_ARCH},
                                       {"preset", required_argument, 0, O_PRESET},
                                       {"layers", required_argument, 0, O_LAYERS},
                                       {"embd", required_argument, 0, O_EMBD},
                                       {"ff", required_argument, 0, O_FF},
                                       {"heads", required_argument, 0, O_HEADS},
                                       {"kv-heads", required_argument, 0, O_KV_HEADS},
                                       {"head-dim", required_argument, 0, O_HEAD_DIM},
                                       {"rope-dims", required_argument, 0, O_ROPE_DIMS},
                                       {"experts", required_argument, 0, O_EXPERTS},
                                       {"experts-used", required_argument, 0, O_EXPERTS_USED},
                                       {"expert-ff", required_argument, 0, O_EXPERT_FF},
                                       {"shared-ff", required_argument, 0, O_SHARED_FF},
                                       {"ctx", required_argument, 0, O_CTX},
                                       {"rope-base", required_argument, 0, O_ROPE_BASE},
                                       {"ssm-conv", required_argument, 0, O_SSM_CONV},
                                       {"ssm-state", required_argument, 0, O_SSM_STATE},
                                       {"ssm-groups", required_argument, 0, O_SSM_GROUPS},
                                       {"ssm-dt-rank", required_argument, 0, O_SSM_DT_RANK},
                                       {"ssm-inner", required_argument, 0, O_SSM_INNER},
                                       {"attn-interval", required_argument, 0, O_ATTN_INTERVAL},
                                       {"vocab", required_argument, 0, O_VOCAB},
                                       {"layout", required_argument, 0, O_LAYOUT},
                                       {"quant", required_argument, 0, O_QUANT},
                                       {"vocab-from", required_argument, 0, O_VOCAB_FROM},
                                       {"seed", required_argument, 0, O_SEED},
                                       {"name", required_argument, 0, O_NAME},
                                       {"exact-quant", no_argument, 0, O_EXACT},
                                       {"routing", required_argument, 0, O_ROUTING},
                                       {"routing-knobs", required_argument, 0, O_KNOBS},
                                       {"vocab-only", no_argument, 0, O_VOCAB_ONLY},
                                       {"threads", required_argument, 0, 't'},
                                       {"output", required_argument, 0, 'o'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  // Two passes: the first finds --arch/--preset (which reset every dimension), the second
  // applies the explicit dims on top, whatever the order on the command line.
  const char *arch = NULL, *preset = NULL, *out = NULL, *quant = NULL, *layout = NULL;
  const char *vocab_from = NULL, *name = NULL;
  bool vocab_only = false;
  int c;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":o:t:h", opts, NULL)) != -1) {
    switch (c) {
      case O_ARCH: arch = optarg; break;
      case O_PRESET: preset = optarg; break;
      case O_VOCAB_ONLY: vocab_only = true; break;
      case O_VOCAB_FROM: vocab_from = optarg; break;
      case O_NAME: name = optarg; break;
      case O_QUANT: quant = optarg; break;
      case 'o': out = optarg; break;
      case 'h': synth_usage(stdout); return 0;
      case '?':
      case ':': return cli_bad_option(c, argv, "synth");
      default: break;
    }
  }
  if (optind < argc)
    return ferry_fail(-EINVAL, "unexpected argument '%s' (see ferry synth --help)", argv[optind]);
  int rc;
  if (vocab_only) {
    if (arch || preset || quant)
      return ferry_fail(-EINVAL,
                        "--vocab-only writes no weights: drop --arch, --preset and --quant");
    if (!vocab_from) return ferry_fail(-EINVAL, "--vocab-only needs --vocab-from FILE.gguf");
    if (!out) return ferry_fail(-EINVAL, "missing -o OUT.gguf");
    if ((rc = ferry_outfile_check(out, "output file"))) return rc;
    uint32_t n_tok = 0;
    if ((rc = synth_write_vocab(vocab_from, out, name, &n_tok))) return rc;
    printf("wrote %s: vocabulary of %u tokens from %s, no tensors\n", out, n_tok, vocab_from);
    return 0;
  }
  quant = NULL, out = NULL; // read again below with the other flags
  struct synth_params p;
  if (preset) {
    synth_params_default(&p, SYNTH_QWEN3MOE);
    if ((rc = synth_params_preset(&p, preset))) return rc;
    const char *parch = p.arch == SYNTH_QWEN3MOE ? "qwen3moe" : "qwen3next";
    if (arch && strcmp(arch, parch))
      return ferry_fail(-EINVAL, "--arch %s contradicts --preset %s (a %s model)", arch, preset,
                        parch);
  } else if (arch) {
    if (!strcmp(arch, "qwen3moe"))
      synth_params_default(&p, SYNTH_QWEN3MOE);
    else if (!strcmp(arch, "qwen3next"))
      synth_params_default(&p, SYNTH_QWEN3NEXT);
    else
      return ferry_fail(-EINVAL, "--arch must be qwen3moe or qwen3next (got '%s')", arch);
  } else {
    return ferry_fail(-EINVAL, "need --arch or --preset (see ferry synth --help)");
  }

  optind = 1;
  rc = 0;
  while (!rc && (c = getopt_long(argc, argv, "o:t:h", opts, NULL)) != -1) {
    uint32_t v = 0;
    switch (c) {
#define DIM(opt, flag, field, lo, hi)         \
  case opt:                                   \
    rc = parse_u32(flag, optarg, lo, hi, &v); \
    p.field = v;                              \
    break
      DIM(O_LAYERS, "--layers", n_layer, 1, 1024);
      DIM(O_EMBD, "--embd", n_embd, 1, 65536);
      DIM(O_FF, "--ff", n_ff, 1, 1u << 20);
      DIM(O_HEADS, "--heads", n_head, 1, 1024);
      DIM(O_KV_HEADS, "--kv-heads", n_head_kv, 1, 1024);
      DIM(O_HEAD_DIM, "--head-dim", head_dim, 2, 1024);
      DIM(O_ROPE_DIMS, "--rope-dims", n_rot, 2, 1024);
      DIM(O_EXPERTS, "--experts", n_expert, 1, 4096);
      DIM(O_EXPERTS_USED, "--experts-used", n_expert_used, 1, 4096);
      DIM(O_EXPERT_FF, "--expert-ff", n_ff_exp, 1, 65536);
      DIM(O_SHARED_FF, "--shared-ff", n_ff_shexp, 1, 65536);
      DIM(O_CTX, "--ctx", n_ctx, 1, UINT32_MAX);
      DIM(O_SSM_CONV, "--ssm-conv", ssm_conv, 2, 16);
      DIM(O_SSM_STATE, "--ssm-state", ssm_state, 1, 4096);
      DIM(O_SSM_GROUPS, "--ssm-groups", ssm_groups, 1, 1024);
      DIM(O_SSM_DT_RANK, "--ssm-dt-rank", ssm_dt_rank, 1, 1024);
      DIM(O_SSM_INNER, "--ssm-inner", ssm_inner, 1, 1u << 20);
      DIM(O_ATTN_INTERVAL, "--attn-interval", full_attn_interval, 1, 1024);
      DIM(O_VOCAB, "--vocab", n_vocab, 1, 1u << 24);
#undef DIM
      case O_ROPE_BASE: {
        char *end;
        p.rope_base = strtof(optarg, &end);
        if (!*optarg || *end || !(p.rope_base > 0))
          rc = ferry_fail(-EINVAL, "--rope-base: '%s' is not a positive number", optarg);
        break;
      }
      case O_LAYOUT: layout = optarg; break;
      case O_QUANT: quant = optarg; break;
      case O_VOCAB_FROM: p.vocab_from = optarg; break;
      case O_NAME: p.name = optarg; break;
      case O_EXACT: p.exact = true; break;
      case O_ROUTING:
        if (!strcmp(optarg, "real"))
          p.routing = SYNTH_ROUTING_REAL;
        else if (!strcmp(optarg, "random"))
          p.routing = SYNTH_ROUTING_RANDOM;
        else
          rc = ferry_fail(-EINVAL, "--routing must be random or real (got '%s')", optarg);
        break;
      case O_KNOBS: p.routing_knobs = optarg; break;
      case O_SEED: {
        char *end;
        errno = 0;
        p.seed = strtoull(optarg, &end, 0);
        if (!*optarg || *end || errno || optarg[0] == '-')
          rc = ferry_fail(-EINVAL, "--seed: '%s' is not an unsigned integer", optarg);
        break;
      }
      case 't':
        rc = parse_u32("--threads", optarg, 1, 4096, &v);
        p.n_threads = (int)v;
        break;
      case 'o': out = optarg; break;
      default: break;
    }
  }
  if (rc) return rc;
  if (!quant) return ferry_fail(-EINVAL, "missing --quant f32|q8_0|q4_k_m");
  if (!strcasecmp(quant, "f32"))
    p.recipe = SYNTH_F32;
  else if (!strcasecmp(quant, "q8_0"))
    p.recipe = SYNTH_Q8_0;
  else if (!strcasecmp(quant, "q4_k_m"))
    p.recipe = SYNTH_Q4_K_M;
  else
    return ferry_fail(-EINVAL, "--quant must be f32, q8_0 or q4_k_m (got '%s')", quant);
  if (layout) {
    if (p.arch != SYNTH_QWEN3NEXT) return ferry_fail(-EINVAL, "--layout applies to qwen3next only");
    if (!strcmp(layout, "legacy"))
      p.legacy = true;
    else if (strcmp(layout, "split"))
      return ferry_fail(-EINVAL, "--layout must be split or legacy (got '%s')", layout);
  }
  if (!out) return ferry_fail(-EINVAL, "missing -o OUT.gguf");
  if (p.routing_knobs && p.routing != SYNTH_ROUTING_REAL)
    return ferry_fail(-EINVAL, "--routing-knobs needs --routing real");
  if ((rc = synth_params_validate(&p))) return rc;
  if ((rc = ferry_outfile_check(out, "output file"))) return rc; // before any work

  struct synth_stats st;
  rc = synth_write(&p, out, &st);
  if (rc) return ferry_fail_ctx(rc, "%s", out);
  char sz[32];
  ferry_format_size(st.file_bytes, sz, sizeof sz);
  printf(
      "wrote %s: %s %s, %lld tensors, vocab %u, %s (%llu bytes) in %.1f s (%.0f MB/s)\n", out,
      p.arch == SYNTH_QWEN3MOE ? "qwen3moe" : (p.legacy ? "qwen3next legacy" : "qwen3next split"),
      quant, (long long)st.n_tensors, st.n_vocab, sz, (unsigned long long)st.file_bytes, st.seconds,
      st.file_bytes / 1e6 / (st.seconds > 0 ? st.seconds : 1));
  printf("types:");
  for (int t = 0; t < FT_COUNT; t++)
    if (st.type_count[t])
      printf(" %s x%llu", ferry_type_info((uint32_t)t)->name, (unsigned long long)st.type_count[t]);
  printf("\n");
  if (st.n_fallback)
    printf("fallbacks: %d tensor(s) with rows not a multiple of the block size\n", st.n_fallback);
  return 0;
}
