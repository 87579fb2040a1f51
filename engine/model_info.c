// engine/model_info.c: the `ferry info` report, computed from tensor infos only (no data
// is read), so it is instant even for a 45 GB file.
#include "engine/model_info.h"

#include <string.h>

#include "base/base.h"
#include "engine/hparams.h"
#include "engine/model.h"
#include "engine/session.h"
#include "engine/stream.h"
#include "io/reader.h"
#include "kernels/types.h"
#include "numa/topo.h"

static bool is_expert_tensor(const char *name) { return strstr(name, "_exps.") != NULL; }

void model_info_split_bytes(const struct gguf_file *f, uint64_t *dense, uint64_t *experts) {
  *dense = *experts = 0;
  for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
    const struct gguf_tensor *t = gguf_tensor_at(f, i);
    *(is_expert_tensor(t->name) ? experts : dense) += t->nbytes;
  }
}

// The placement plan for the default run options: what full mode needs, and how stream
// mode splits the RAM budget between resident dense weights, state, scratch and the
// expert cache.
static int print_plan(const struct gguf_file *f, FILE *o, const struct model_hparams *hp,
                      uint64_t ram, uint64_t vram, uint64_t base) {
  struct model_opts mo = {.n_ctx = 4096, .n_batch = 256, .kv_k = FT_F16, .kv_v = FT_F16};
  uint64_t w, st, sc, wd;
  int rc = model_plan(f, &mo, &w, &st, &sc);
  if (rc) return rc;
  mo.dense_only = true;
  if ((rc = model_plan(f, &mo, &wd, &st, &sc))) return rc;
  sc += base; // the process and the prompt, as session_open charges them (scratch)
  bool ram_given = ram != 0;
  if (!ram) {
    ram = session_default_ram();
  }
  uint64_t min_cache = stream_min_cache_bytes(f, hp), dense_total = wd + st + sc;
  char b[8][32];
  ferry_format_size(ram, b[0], 32);
  ferry_format_size(w + st + sc, b[1], 32);
  ferry_format_size(w, b[2], 32);
  ferry_format_size(st, b[3], 32);
  ferry_format_size(sc, b[4], 32);
  ferry_format_size(wd, b[5], 32);
  ferry_format_size(dense_total + min_cache, b[6], 32);
  fprintf(o, "plan         RAM budget %s%s, context %d, prefill batch %d, KV f16\n", b[0],
          ram_given ? "" : " (available memory minus a margin)", mo.n_ctx, mo.n_batch);
  fprintf(o, "  full       needs %s: weights %s + KV/state %s + scratch and process %s -> %s\n",
          b[1], b[2], b[3], b[4], w + st + sc <= ram ? "fits" : "does not fit");
  fprintf(o,
          "  stream     dense weights %s + KV/state %s + scratch and process %s resident; minimum "
          "--ram %s "
          "(%llu)\n",
          b[5], b[3], b[4], b[6], (unsigned long long)(dense_total + min_cache));
  if (dense_total + min_cache <= ram) {
    uint64_t cache = ram - dense_total, per_layer = 0;
    for (uint32_t l = 0; l < hp->n_layer; l++) {
      uint64_t slot = 0;
      const char *parts[3] = {"gate", "up", "down"};
      for (int p = 0; p < 3; p++) {
        char n[96];
        snprintf(n, sizeof n, "blk.%u.ffn_%s_exps.weight", l, parts[p]);
        const struct gguf_tensor *t = gguf_find_tensor(f, n);
        if (t) slot += io_span_max(t->nb2);
      }
      per_layer += slot;
    }
    uint64_t slots = per_layer ? cache / per_layer : 0;
    if (slots > hp->n_expert) slots = hp->n_expert;
    ferry_format_size(cache, b[7], 32);
    fprintf(
        o, "  stream     expert cache (host RAM) %s: about %llu of %u experts per layer (%.1f%%)\n",
        b[7], (unsigned long long)slots, hp->n_expert, 100.0 * (double)slots / hp->n_expert);
  } else {
    fprintf(o, "  stream     does not fit: raise --ram to at least %s\n", b[6]);
  }
  fprintf(o, "  auto       picks %s\n",
          w + st + sc <= ram               ? "full"
          : dense_total + min_cache <= ram ? "stream"
                                           : "nothing (too little RAM)");
  if (vram)
    fprintf(o, "  vram       %llu bytes requested; this build computes on the CPU\n",
            (unsigned long long)vram);
  return 0;
}

int model_info_print(const struct gguf_file *f, FILE *o, uint64_t ram, uint64_t vram, bool json,
                     uint64_t base) {
  struct model_hparams hp;
  int rc = hparams_load(&hp, f);
  if (rc) return rc;
  uint64_t count[FT_COUNT] = {0}, bytes[FT_COUNT] = {0}, dense, experts;
  for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
    const struct gguf_tensor *t = gguf_tensor_at(f, i);
    count[t->type]++, bytes[t->type] += t->nbytes;
  }
  model_info_split_bytes(f, &dense, &experts);
  char b1[32], b2[32], b3[32];
  const char *name = gguf_get_str(f, "general.name");
  fprintf(o, "model        %s\n", gguf_path(f));
  fprintf(o, "name         %s\n", name ? name : "(none)");
  fprintf(o, "arch         %s%s\n", hp.arch_name,
          hp.arch == ARCH_QWEN3NEXT ? (hp.legacy_layout ? " (legacy layout: fused ssm_in)"
                                                        : " (split layout: attn_qkv + attn_gate)")
                                    : "");
  fprintf(o, "gguf         v%u, %lld tensors, %lld metadata keys, alignment %llu, data at %llu\n",
          gguf_version(f), (long long)gguf_n_tensors(f), (long long)gguf_n_kv(f),
          (unsigned long long)gguf_alignment(f), (unsigned long long)gguf_data_offset(f));
  fprintf(o, "layers       %u", hp.n_layer);
  if (hp.n_layer_file != hp.n_layer)
    fprintf(o, " (+%u MTP blocks ignored)", hp.n_layer_file - hp.n_layer);
  fprintf(o, "\nembd         %u\nvocab        %u\nctx_train    %u\n", hp.n_embd, hp.n_vocab,
          hp.n_ctx_train);
  fprintf(o,
          "attention    %u heads, %u kv heads, head dim %u, rope dims %u, rope base %g, eps %g\n",
          hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_rot, hp.rope_base, hp.eps);
  fprintf(o, "experts      %u, %u used, expert ff %u", hp.n_expert, hp.n_expert_used, hp.n_ff_exp);
  if (hp.n_ff_shexp) fprintf(o, ", shared expert ff %u", hp.n_ff_shexp);
  fprintf(o, "\n");
  if (hp.arch == ARCH_QWEN3NEXT) {
    uint32_t n_rec = 0;
    for (uint32_t l = 0; l < hp.n_layer; l++) n_rec += hp.recurrent[l];
    fprintf(
        o,
        "deltanet     %u layers, %u k-heads x %u, %u v-heads x %u, conv %u; full attention layers:",
        n_rec, hp.ssm_n_k_heads, hp.ssm_head_k, hp.ssm_n_v_heads, hp.ssm_head_v, hp.ssm_conv_k);
    for (uint32_t l = 0; l < hp.n_layer; l++)
      if (!hp.recurrent[l]) fprintf(o, " %u", l);
    fprintf(o, "\n");
  }
  fprintf(o, "tensor types");
  for (int t = 0; t < FT_COUNT; t++)
    if (count[t]) {
      ferry_format_size(bytes[t], b1, sizeof b1);
      fprintf(o, "  %s: %llu (%s)", ferry_type_info((uint32_t)t)->name,
              (unsigned long long)count[t], b1);
    }
  fprintf(o, "\n");
  ferry_format_size(dense + experts, b1, sizeof b1);
  ferry_format_size(dense, b2, sizeof b2);
  ferry_format_size(experts, b3, sizeof b3);
  fprintf(o, "bytes        total %s (%llu), dense %s (%llu), routed experts %s (%llu)\n", b1,
          (unsigned long long)(dense + experts), b2, (unsigned long long)dense, b3,
          (unsigned long long)experts);
  fprintf(o, "one expert   bytes per layer (gate + up + down):\n");
  for (uint32_t l = 0; l < hp.n_layer; l++) {
    uint64_t part[3] = {0};
    const char *parts[3] = {"gate", "up", "down"};
    for (int p = 0; p < 3; p++) {
      char n[96];
      snprintf(n, sizeof n, "blk.%u.ffn_%s_exps.weight", l, parts[p]);
      const struct gguf_tensor *t = gguf_find_tensor(f, n);
      if (t) part[p] = t->nb2;
    }
    fprintf(o, "  layer %2u   %llu + %llu + %llu = %llu\n", l, (unsigned long long)part[0],
            (unsigned long long)part[1], (unsigned long long)part[2],
            (unsigned long long)(part[0] + part[1] + part[2]));
  }
  rc = print_plan(f, o, &hp, ram, vram, base);
  char topo[512];
  if (numa_topo_describe(topo, sizeof topo) >= 0) fprintf(o, "topology     %s\n", topo);
  (void)json;
  hparams_free(&hp);
  return rc;
}
