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

// The placement plan for the default run options (session_plan, as `ferry run` makes it):
// on the CPU without --vram, on a device with it.
static int print_plan(const struct gguf_file *f, FILE *o, uint64_t ram, uint64_t vram,
                      uint64_t base) {
  struct run_opts ro = {.n_ctx = 4096, .n_batch = 256, .kv_k = FT_F16, .kv_v = FT_F16};
  const bool ram_given = ram != 0;
  if (!ram) ram = session_default_ram();
  const enum ferry_backend_kind kind = vram ? FERRY_BACKEND_CUDA : FERRY_BACKEND_CPU;
  char b0[32], b1[32];
  ferry_format_size(ram, b0, sizeof b0);
  ferry_format_size(vram, b1, sizeof b1);
  fprintf(o, "plan         backend %s, RAM budget %s%s", vram ? "cuda" : "cpu", b0,
          ram_given ? "" : " (available memory minus a margin)");
  if (vram) fprintf(o, ", VRAM budget %s", b1);
  fprintf(o, ", context %d, prefill batch %d, KV f16\n", ro.n_ctx, ro.n_batch);
  struct plan_need need;
  struct plan plan;
  int rc = session_plan(f, &ro, kind, ram, vram, base, &need, &plan);
  if (rc && !need.n_layer) return rc; // the model itself could not be planned
  plan_print(&plan, &need, o);
  if (rc) {
    fprintf(o, "  nothing fits: %s\n", ferry_errmsg());
    ferry_clear_error();
  }
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
  {
    // what one decode token reads: every dense weight but the embedding (one row of it,
    // unless it is also the output head) and k experts of every layer
    const struct gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
    const bool tied = !gguf_find_tensor(f, "output.weight");
    uint64_t touched = dense, one_per_layer = 0;
    if (emb && !tied) touched -= emb->nbytes - emb->nb1;
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
      const struct gguf_tensor *t = gguf_tensor_at(f, i);
      if (is_expert_tensor(t->name)) one_per_layer += t->nb2;
    }
    touched += one_per_layer * hp.n_expert_used;
    ferry_format_size(touched, b1, sizeof b1);
    fprintf(o,
            "decode       touches %s (%llu) of weights per token (dense but the embedding, %u "
            "experts per layer)\n",
            b1, (unsigned long long)touched, hp.n_expert_used);
  }
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
  rc = print_plan(f, o, ram, vram, base);
  char topo[512];
  if (numa_topo_describe(topo, sizeof topo) >= 0) fprintf(o, "topology     %s\n", topo);
  (void)json;
  hparams_free(&hp);
  return rc;
}
