// engine/synth.c: writes synthetic qwen3moe / qwen3next GGUF models (see synth.h).
//
// Plan first, then stream: the full tensor list (names, shapes, init law, type) is built
// up front so the metadata and tensor infos can be written before any data; then each
// tensor is produced in batches of rows. A batch is generated and quantized in parallel
// on the pool (each worker owns a contiguous range of rows and a one-row float scratch),
// then written sequentially by the caller. Rows are independent RNG streams, so batching
// and thread count never change the bytes.
#include "engine/synth.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>

#include "base/base.h"
#include "engine/gguf.h"
#include "engine/gguf_write.h"
#include "kernels/cpu/quants.h"
#include "numa/pool.h"

#define SYNTH_BATCH_BYTES ((uint64_t)16 << 20)
#define SYNTH_MAX_TENSORS 4096

enum init_law { INIT_NORMAL, INIT_UNIFORM };
// What the type recipe needs to know about a tensor.
enum role {
  ROLE_SMALL,
  ROLE_SHEXP_GATE,
  ROLE_EMBD,
  ROLE_OUTPUT,
  ROLE_ATTN_V,
  ROLE_FFN_DOWN,
  ROLE_WEIGHT
};

struct plan_tensor {
  char name[64];
  uint32_t n_dims;
  uint64_t ne[4];
  uint32_t type;
  enum init_law law;
  float a, b; // normal: mean a, std b; uniform: [a, b)
  enum role role;
  int layer;     // -1 for global tensors
  uint64_t hash; // FNV-1a of name
  int rk;        // --routing real: how rows are built (enum rkind), 0 = like random
};

struct rreal;
struct plan {
  struct plan_tensor *t;
  int n;
  int n_fallback;
  struct rreal *R; // --routing real
};

// ---- parameters ------------------------------------------------------------------------
void synth_params_default(struct synth_params *p, enum synth_arch arch) {
  memset(p, 0, sizeof *p);
  p->arch = arch;
  p->recipe = SYNTH_F32;
  p->n_layer = 4;
  p->n_embd = 64;
  p->norm_eps = 1e-6f;
  p->seed = 42;
  if (arch == SYNTH_QWEN3MOE) {
    p->n_ff = 96;
    p->n_head = 8, p->n_head_kv = 2, p->head_dim = 16, p->n_rot = 16;
    p->n_expert = 16, p->n_expert_used = 4, p->n_ff_exp = 32;
    p->n_ctx = 40960;
    p->rope_base = 1e6f;
  } else {
    p->n_ff = 128;
    p->n_head = 4, p->n_head_kv = 2, p->head_dim = 32, p->n_rot = 8;
    p->n_expert = 32, p->n_expert_used = 4, p->n_ff_exp = 32, p->n_ff_shexp = 64;
    p->n_ctx = 262144;
    p->rope_base = 1e7f;
    p->ssm_conv = 4, p->ssm_state = 16, p->ssm_groups = 2, p->ssm_dt_rank = 4, p->ssm_inner = 64;
    p->full_attn_interval = 4;
  }
}

int synth_params_preset(struct synth_params *p, const char *preset) {
  if (!preset) return ferry_fail(-EINVAL, "no preset name");
  if (!strcmp(preset, "qwen3-30b-a3b")) {
    enum synth_recipe r = p->recipe;
    synth_params_default(p, SYNTH_QWEN3MOE);
    p->recipe = r;
    p->n_layer = 48, p->n_embd = 2048, p->n_ff = 6144;
    p->n_head = 32, p->n_head_kv = 4, p->head_dim = 128, p->n_rot = 128;
    p->n_expert = 128, p->n_expert_used = 8, p->n_ff_exp = 768;
    p->n_ctx = 262144, p->rope_base = 1e7f;
    return 0;
  }
  if (!strcmp(preset, "qwen3-next-80b-a3b")) {
    enum synth_recipe r = p->recipe;
    synth_params_default(p, SYNTH_QWEN3NEXT);
    p->recipe = r;
    p->n_layer = 48, p->n_embd = 2048, p->n_ff = 5120;
    p->n_head = 16, p->n_head_kv = 2, p->head_dim = 256, p->n_rot = 64;
    p->n_expert = 512, p->n_expert_used = 10, p->n_ff_exp = 512, p->n_ff_shexp = 512;
    p->n_ctx = 262144, p->rope_base = 1e7f;
    p->ssm_conv = 4, p->ssm_state = 128, p->ssm_groups = 16, p->ssm_dt_rank = 32,
    p->ssm_inner = 4096;
    p->full_attn_interval = 4;
    return 0;
  }
  return ferry_fail(-EINVAL, "unknown preset '%s' (known: qwen3-30b-a3b, qwen3-next-80b-a3b)",
                    preset);
}

int synth_params_validate(const struct synth_params *p) {
#define NEED(cond, ...) \
  if (!(cond)) return ferry_fail(-EINVAL, __VA_ARGS__)
  NEED(p->arch == SYNTH_QWEN3MOE || p->arch == SYNTH_QWEN3NEXT, "unknown architecture");
  NEED(p->recipe <= SYNTH_Q4_K_M, "unknown quantization recipe");
  NEED(p->n_layer >= 1 && p->n_layer <= 1024, "--layers must be in 1..1024 (got %u)", p->n_layer);
  NEED(p->n_embd >= 1 && p->n_embd <= 65536, "--embd must be in 1..65536 (got %u)", p->n_embd);
  NEED(p->n_head >= 1 && p->n_head_kv >= 1 && p->n_head % p->n_head_kv == 0,
       "--heads (%u) must be a positive multiple of --kv-heads (%u)", p->n_head, p->n_head_kv);
  NEED(p->head_dim >= 2 && p->head_dim <= 1024 && p->head_dim % 2 == 0,
       "--head-dim must be even, 2..1024 (got %u)", p->head_dim);
  NEED(p->n_rot >= 2 && p->n_rot <= p->head_dim && p->n_rot % 2 == 0,
       "--rope-dims must be even and at most --head-dim (got %u)", p->n_rot);
  NEED(p->n_expert >= 1 && p->n_expert <= 4096, "--experts must be in 1..4096 (got %u)",
       p->n_expert);
  NEED(p->n_expert_used >= 1 && p->n_expert_used <= p->n_expert,
       "--experts-used must be in 1..--experts (got %u of %u)", p->n_expert_used, p->n_expert);
  NEED(p->n_ff_exp >= 1 && p->n_ff_exp <= 65536, "--expert-ff must be in 1..65536 (got %u)",
       p->n_ff_exp);
  NEED(p->n_ff >= 1, "--ff must be positive");
  NEED(p->n_ctx >= 1, "--ctx must be positive");
  NEED(p->rope_base > 0 && isfinite(p->rope_base), "--rope-base must be positive");
  NEED(p->norm_eps > 0 && isfinite(p->norm_eps), "norm epsilon must be positive");
  NEED(p->n_vocab == 0 || (p->n_vocab >= 282 && p->n_vocab <= 1u << 24) || p->vocab_from,
       "--vocab must be in 282..16777216 without --vocab-from (256 bytes + 26 added tokens)");
  if (p->arch == SYNTH_QWEN3MOE) {
    NEED(!p->legacy, "--layout applies to qwen3next only");
  } else {
    NEED(p->n_ff_shexp >= 1 && p->n_ff_shexp <= 65536, "--shared-ff must be in 1..65536 (got %u)",
         p->n_ff_shexp);
    NEED(p->ssm_conv >= 2 && p->ssm_conv <= 16, "--ssm-conv must be in 2..16 (got %u)",
         p->ssm_conv);
    NEED(p->ssm_state >= 1 && p->ssm_groups >= 1 && p->ssm_dt_rank >= 1,
         "--ssm-state/--ssm-groups/--ssm-dt-rank must be positive");
    NEED(p->ssm_dt_rank % p->ssm_groups == 0,
         "--ssm-dt-rank (v-heads %u) must be a multiple of --ssm-groups (k-heads %u)",
         p->ssm_dt_rank, p->ssm_groups);
    NEED(p->ssm_inner >= p->ssm_dt_rank && p->ssm_inner % p->ssm_dt_rank == 0,
         "--ssm-inner (%u) must be a multiple of --ssm-dt-rank (%u)", p->ssm_inner, p->ssm_dt_rank);
    NEED(p->full_attn_interval >= 1, "--attn-interval must be positive");
    NEED(!p->legacy || p->full_attn_interval == 4,
         "the legacy layout has no layer-pattern keys, so readers assume interval 4 (got "
         "--attn-interval %u)",
         p->full_attn_interval);
  }
  return 0;
#undef NEED
}

// ---- plan ------------------------------------------------------------------------------
static uint64_t fnv1a(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
  return h;
}

static int plan_add(struct plan *pl, int layer, const char *suffix, enum role role,
                    enum init_law law, float a, float b, uint32_t n_dims, uint64_t ne0,
                    uint64_t ne1, uint64_t ne2) {
  if (pl->n >= SYNTH_MAX_TENSORS)
    return ferry_fail(-E2BIG, "synth: more than %d tensors", SYNTH_MAX_TENSORS);
  struct plan_tensor *t = &pl->t[pl->n++];
  memset(t, 0, sizeof *t);
  if (layer >= 0)
    snprintf(t->name, sizeof t->name, "blk.%d.%s", layer, suffix);
  else
    snprintf(t->name, sizeof t->name, "%s", suffix);
  t->n_dims = n_dims;
  t->ne[0] = ne0, t->ne[1] = ne1, t->ne[2] = ne2, t->ne[3] = 1;
  t->law = law, t->a = a, t->b = b;
  t->role = role;
  t->layer = layer;
  t->hash = fnv1a(t->name);
  return 0;
}

// A weight matrix {in, out[, experts]} with std 1/sqrt(in).
#define MAT(L, sfx, role, in, out) \
  plan_add(pl, L, sfx, role, INIT_NORMAL, 0.f, 1.f / sqrtf((float)(in)), 2, in, out, 1)
#define EXPS(L, sfx, role, in, out, e) \
  plan_add(pl, L, sfx, role, INIT_NORMAL, 0.f, 1.f / sqrtf((float)(in)), 3, in, out, e)
#define NORM(L, sfx, n) plan_add(pl, L, sfx, ROLE_SMALL, INIT_NORMAL, 1.f, 0.05f, 1, n, 1, 1)

static bool use_more_bits(int i, int n) {
  return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

static bool is_full_attn(const struct synth_params *p, uint32_t L) {
  return p->arch == SYNTH_QWEN3MOE || (L + 1) % p->full_attn_interval == 0;
}

static int plan_moe_ffn(struct plan *pl, const struct synth_params *p, int L) {
  uint32_t E = p->n_embd;
  int rc = 0;
  rc |= MAT(L, "ffn_gate_inp.weight", ROLE_SMALL, E, p->n_expert);
  rc |= EXPS(L, "ffn_down_exps.weight", ROLE_FFN_DOWN, p->n_ff_exp, E, p->n_expert);
  rc |= EXPS(L, "ffn_gate_exps.weight", ROLE_WEIGHT, E, p->n_ff_exp, p->n_expert);
  rc |= EXPS(L, "ffn_up_exps.weight", ROLE_WEIGHT, E, p->n_ff_exp, p->n_expert);
  if (p->arch == SYNTH_QWEN3NEXT) {
    float s = 1.f / sqrtf((float)E);
    if (p->legacy)
      rc |= plan_add(pl, L, "ffn_gate_inp_shexp.weight", ROLE_SHEXP_GATE, INIT_NORMAL, 0.f, s, 1, E,
                     1, 1);
    // The converter writes {n_embd, 1}; llama-quantize rewrites it as 1-D {n_embd}.
    else
      rc |= plan_add(pl, L, "ffn_gate_inp_shexp.weight", ROLE_SHEXP_GATE, INIT_NORMAL, 0.f, s,
                     p->recipe == SYNTH_F32 ? 2 : 1, E, 1, 1);
    rc |= MAT(L, "ffn_gate_shexp.weight", ROLE_WEIGHT, E, p->n_ff_shexp);
    rc |= MAT(L, "ffn_up_shexp.weight", ROLE_WEIGHT, E, p->n_ff_shexp);
    rc |= MAT(L, "ffn_down_shexp.weight", ROLE_FFN_DOWN, p->n_ff_shexp, E);
  }
  return rc ? -E2BIG : 0;
}

// Tensor order follows llama.cpp's converter (the F32 fixtures): token_embd, the blocks,
// output_norm, output.
static int plan_build(struct plan *pl, const struct synth_params *p, uint32_t n_vocab) {
  uint32_t E = p->n_embd, H = p->n_head, Hkv = p->n_head_kv, hd = p->head_dim;
  int rc =
      plan_add(pl, -1, "token_embd.weight", ROLE_EMBD, INIT_NORMAL, 0.f, 0.5f, 2, E, n_vocab, 1);
  for (int L = 0; !rc && L < (int)p->n_layer; L++) {
    rc |= NORM(L, "attn_norm.weight", E);
    if (p->arch == SYNTH_QWEN3MOE) {
      rc |= MAT(L, "attn_q.weight", ROLE_WEIGHT, E, H * hd);
      rc |= MAT(L, "attn_k.weight", ROLE_WEIGHT, E, Hkv * hd);
      rc |= MAT(L, "attn_v.weight", ROLE_ATTN_V, E, Hkv * hd);
      rc |= MAT(L, "attn_output.weight", ROLE_WEIGHT, H * hd, E);
      rc |= NORM(L, "attn_q_norm.weight", hd);
      rc |= NORM(L, "attn_k_norm.weight", hd);
      rc |= NORM(L, "ffn_norm.weight", E);
    } else {
      rc |= NORM(L, "post_attention_norm.weight", E);
      if (is_full_attn(p, (uint32_t)L)) {
        rc |= MAT(L, "attn_q.weight", ROLE_WEIGHT, E, 2 * H * hd); // query and gate per head
        rc |= MAT(L, "attn_k.weight", ROLE_WEIGHT, E, Hkv * hd);
        rc |= MAT(L, "attn_v.weight", ROLE_ATTN_V, E, Hkv * hd);
        rc |= MAT(L, "attn_output.weight", ROLE_WEIGHT, H * hd, E);
        rc |= NORM(L, "attn_q_norm.weight", hd);
        rc |= NORM(L, "attn_k_norm.weight", hd);
      } else {
        uint32_t key_dim = p->ssm_groups * p->ssm_state, value_dim = p->ssm_inner,
                 nv = p->ssm_dt_rank;
        uint32_t conv_dim = 2 * key_dim + value_dim;
        if (p->legacy) {
          rc |= MAT(L, "ssm_in.weight", ROLE_WEIGHT, E, 2 * key_dim + 2 * value_dim);
        } else {
          // Under Q4_K_M llama.cpp counts attn_qkv with the attn_v tensors (fixtures README §1.2).
          rc |= MAT(L, "attn_qkv.weight", ROLE_ATTN_V, E, conv_dim);
          rc |= MAT(L, "attn_gate.weight", ROLE_WEIGHT, E, value_dim);
        }
        rc |= plan_add(pl, L, "ssm_conv1d.weight", ROLE_SMALL, INIT_NORMAL, 0.f, 0.3f, 2,
                       p->ssm_conv, conv_dim, 1);
        rc |= plan_add(pl, L, "ssm_dt.bias", ROLE_SMALL, INIT_UNIFORM, 0.f, 1.f, 1, nv, 1, 1);
        rc |= plan_add(pl, L, "ssm_a", ROLE_SMALL, INIT_UNIFORM, -1.f, -0.05f, 1, nv, 1, 1);
        rc |= MAT(L, "ssm_ba.weight", ROLE_WEIGHT, E, 2 * nv);
        rc |= NORM(L, "ssm_norm.weight", value_dim / nv);
        rc |= MAT(L, "ssm_out.weight", ROLE_WEIGHT, value_dim, E);
      }
    }
    if (!rc) rc = plan_moe_ffn(pl, p, L);
  }
  if (!rc) rc |= NORM(-1, "output_norm.weight", E);
  if (!rc)
    rc |= plan_add(pl, -1, "output.weight", ROLE_OUTPUT, INIT_NORMAL, 0.f, 3.f / sqrtf((float)E), 2,
                   E, n_vocab, 1);
  return rc ? -E2BIG : 0;
}

// The recipe's type for a tensor; a K-quant whose row is not a multiple of 256 falls back
// to Q8_0 (llama.cpp would pick Q5_0/Q8_0; ferry does not support Q5_0), and Q8_0 whose
// row is not a multiple of 32 falls back to F32.
static void plan_assign_types(struct plan *pl, const struct synth_params *p) {
  int n_v = 0, i_v = 0;
  for (int i = 0; i < pl->n; i++) n_v += pl->t[i].role == ROLE_ATTN_V;
  pl->n_fallback = 0;
  for (int i = 0; i < pl->n; i++) {
    struct plan_tensor *t = &pl->t[i];
    uint32_t ty = FT_F32;
    if (p->recipe == SYNTH_F32) {
      ty = FT_F32;
    } else if (t->role == ROLE_SMALL) {
      ty = FT_F32;
    } else if (t->role == ROLE_SHEXP_GATE) {
      ty = p->legacy ? FT_BF16 : FT_F32; // pre-Feb-2026 conversions kept it in the source BF16
    } else if (p->recipe == SYNTH_Q8_0) {
      ty = FT_Q8_0;
    } else {
      switch (t->role) {
        case ROLE_OUTPUT: ty = FT_Q6_K; break;
        case ROLE_ATTN_V: ty = use_more_bits(i_v, n_v) ? FT_Q6_K : FT_Q4_K; break;
        case ROLE_FFN_DOWN:
          ty = use_more_bits(t->layer, (int)p->n_layer) ? FT_Q6_K : FT_Q4_K;
          break;
        default: ty = FT_Q4_K; break;
      }
    }
    if (t->role == ROLE_ATTN_V) i_v++;
    if ((ty == FT_Q4_K || ty == FT_Q6_K) && t->ne[0] % 256) {
      ty = FT_Q8_0;
      pl->n_fallback++;
    }
    if (ty == FT_Q8_0 && t->ne[0] % 32) {
      ty = FT_F32;
      pl->n_fallback++;
    }
    t->type = ty;
  }
}

static uint64_t plan_tensor_bytes(const struct plan_tensor *t) {
  const struct ferry_type_info *ti = ferry_type_info(t->type);
  return ferry_row_bytes(ti, t->ne[0]) * t->ne[1] * t->ne[2] * t->ne[3];
}

// ---- vocabulary ------------------------------------------------------------------------
struct added_token {
  const char *text;
  int32_t type;
};
// The 26 Qwen3 added tokens in their original order (types: 3 CONTROL, 4 USER_DEFINED).
static const struct added_token k_added[] = {
    {"<|endoftext|>", 3},
    {"<|im_start|>", 3},
    {"<|im_end|>", 3},
    {"<|object_ref_start|>", 3},
    {"<|object_ref_end|>", 3},
    {"<|box_start|>", 3},
    {"<|box_end|>", 3},
    {"<|quad_start|>", 3},
    {"<|quad_end|>", 3},
    {"<|vision_start|>", 3},
    {"<|vision_end|>", 3},
    {"<|vision_pad|>", 3},
    {"<|image_pad|>", 3},
    {"<|video_pad|>", 3},
    {"<tool_call>", 4},
    {"</tool_call>", 4},
    {"<|fim_prefix|>", 3},
    {"<|fim_middle|>", 3},
    {"<|fim_suffix|>", 3},
    {"<|fim_pad|>", 3},
    {"<|repo_name|>", 3},
    {"<|file_sep|>", 3},
    {"<tool_response>", 4},
    {"</tool_response>", 4},
    {"<think>", 4},
    {"</think>", 4},
};
#define N_ADDED   (int)(sizeof k_added / sizeof k_added[0])
#define MIN_VOCAB (256 + N_ADDED)

// UTF-8 of the GPT-2 byte-to-unicode symbol of vocabulary id i < 256: the 188 printable
// bytes map to themselves (ids 0..187, ascending), the other 68 to U+0100.. (ids 188..255).
static int byte_symbol(int id, char out[4]) {
  int cp = -1, k = 0;
  for (int b = 0; b < 256; b++) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    if (printable && k++ == id) cp = b;
  }
  if (cp < 0) {
    int extra = 0;
    for (int b = 0; b < 256; b++) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      if (!printable && k++ == id) cp = 256 + extra;
      if (!printable) extra++;
    }
  }
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  out[0] = (char)(0xC0 | (cp >> 6));
  out[1] = (char)(0x80 | (cp & 0x3F));
  return 2;
}

// The minimal byte-level vocabulary: 256 byte tokens, the 26 added tokens, then
// "[PAD<id>]" UNUSED tokens up to n_vocab; no merges (every byte is its own token).
static int vocab_write_minimal(struct gguf_writer *w, uint32_t n_vocab) {
  char **strs = calloc(n_vocab, sizeof *strs);
  uint64_t *lens = calloc(n_vocab, sizeof *lens);
  int32_t *types = calloc(n_vocab, sizeof *types);
  int rc = 0;
  if (!strs || !lens || !types) {
    rc = ferry_fail(-ENOMEM, "synth: out of memory for the vocabulary");
    goto out;
  }
  for (uint32_t i = 0; i < n_vocab && !rc; i++) {
    char buf[32];
    int n;
    if (i < 256)
      n = byte_symbol((int)i, buf), types[i] = 1;
    else if (i < MIN_VOCAB)
      n = snprintf(buf, sizeof buf, "%s", k_added[i - 256].text), types[i] = k_added[i - 256].type;
    else
      n = snprintf(buf, sizeof buf, "[PAD%u]", i), types[i] = 5;
    strs[i] = malloc((size_t)n + 1);
    if (!strs[i])
      rc = ferry_fail(-ENOMEM, "synth: out of memory for the vocabulary");
    else
      memcpy(strs[i], buf, (size_t)n), strs[i][n] = 0, lens[i] = (uint64_t)n;
  }
  if (!rc) rc = gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
  if (!rc) rc = gguf_writer_add_str(w, "tokenizer.ggml.pre", "qwen2");
  if (!rc)
    rc = gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", (const char *const *)strs, lens,
                                   n_vocab);
  if (!rc) rc = gguf_writer_add_array(w, "tokenizer.ggml.token_type", GGUF_I32, types, n_vocab);
  if (!rc) rc = gguf_writer_add_str_array(w, "tokenizer.ggml.merges", NULL, NULL, 0);
  if (!rc) rc = gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 256 + 2);     // <|im_end|>
  if (!rc) rc = gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", 256 + 0); // <|endoftext|>
  if (!rc) rc = gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 256 + 0);
  if (!rc) rc = gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false);
out:
  if (strs)
    for (uint32_t i = 0; i < n_vocab; i++) free(strs[i]);
  free(strs);
  free(lens);
  free(types);
  return rc;
}

// Token count of a vocabulary source (0 with a message if it has none).
static int vocab_count(const struct gguf_file *src, uint32_t *out) {
  const struct gguf_kv *kv = gguf_get_arr(src, "tokenizer.ggml.tokens", GGUF_STRING);
  if (!kv || kv->arr_n == 0 || kv->arr_n > (1u << 24))
    return ferry_fail(-EINVAL, "%s: no usable tokenizer.ggml.tokens array", gguf_path(src));
  *out = (uint32_t)kv->arr_n;
  return 0;
}

static int resolve_vocab(const struct synth_params *p, struct gguf_file **src, uint32_t *n_vocab) {
  *src = NULL;
  if (!p->vocab_from) {
    *n_vocab = p->n_vocab ? p->n_vocab : MIN_VOCAB;
    return 0;
  }
  int rc = gguf_open(src, p->vocab_from);
  if (rc) return ferry_fail_ctx(rc, "--vocab-from");
  rc = vocab_count(*src, n_vocab);
  if (!rc && p->n_vocab && p->n_vocab != *n_vocab)
    rc = ferry_fail(-EINVAL, "--vocab %u disagrees with the %u tokens of %s", p->n_vocab, *n_vocab,
                    p->vocab_from);
  if (rc) {
    gguf_close(*src);
    *src = NULL;
  }
  return rc;
}

// ---- metadata ----------------------------------------------------------------------------
static void size_label(const struct plan *pl, const struct synth_params *p, char *buf, size_t n) {
  // As llama.cpp's converter: "<experts>x<params of one expert path>", where the shared
  // part counts fully and the routed experts count once.
  double shared = 0, routed = 0;
  for (int i = 0; i < pl->n; i++) {
    const struct plan_tensor *t = &pl->t[i];
    double el = (double)t->ne[0] * t->ne[1] * t->ne[2];
    if (strstr(t->name, "_exps."))
      routed += el;
    else
      shared += el;
  }
  double v = shared + routed / p->n_expert;
  const char *unit = "";
  if (v >= 1e12)
    v /= 1e12, unit = "T";
  else if (v >= 1e9)
    v /= 1e9, unit = "B";
  else if (v >= 1e6)
    v /= 1e6, unit = "M";
  else if (v >= 1e3)
    v /= 1e3, unit = "K";
  if (v < 10)
    snprintf(buf, n, "%ux%.1f%s", p->n_expert, v, unit);
  else
    snprintf(buf, n, "%ux%.0f%s", p->n_expert, v, unit);
}

static int write_metadata(struct gguf_writer *w, const struct synth_params *p,
                          const struct plan *pl, const struct gguf_file *vsrc, uint32_t n_vocab) {
  const char *arch = p->arch == SYNTH_QWEN3MOE ? "qwen3moe" : "qwen3next";
  char name[160], label[64], key[128];
  if (p->name)
    snprintf(name, sizeof name, "%s", p->name);
  else
    snprintf(name, sizeof name, "synth %s%s (%s)", arch, p->legacy ? " legacy" : "",
             p->routing == SYNTH_ROUTING_REAL ? "realistic routing" : "random weights");
  size_label(pl, p, label, sizeof label);
  int rc = gguf_writer_add_str(w, "general.architecture", arch);
  if (!rc) rc = gguf_writer_add_str(w, "general.type", "model");
  if (!rc) rc = gguf_writer_add_str(w, "general.name", name);
  if (!rc) rc = gguf_writer_add_str(w, "general.size_label", label);
#define KU32(k, v) \
  if (!rc) snprintf(key, sizeof key, "%s." k, arch), rc = gguf_writer_add_u32(w, key, (v))
#define KF32(k, v) \
  if (!rc) snprintf(key, sizeof key, "%s." k, arch), rc = gguf_writer_add_f32(w, key, (v))
  KU32("block_count", p->n_layer);
  KU32("context_length", p->n_ctx);
  KU32("embedding_length", p->n_embd);
  KU32("feed_forward_length", p->n_ff);
  KU32("attention.head_count", p->n_head);
  KU32("attention.head_count_kv", p->n_head_kv);
  KF32("rope.freq_base", p->rope_base);
  KF32("attention.layer_norm_rms_epsilon", p->norm_eps);
  KU32("expert_count", p->n_expert);
  KU32("expert_used_count", p->n_expert_used);
  KU32("attention.key_length", p->head_dim);
  KU32("attention.value_length", p->head_dim);
  KU32("expert_feed_forward_length", p->n_ff_exp);
  if (p->arch == SYNTH_QWEN3NEXT) {
    KU32("expert_shared_feed_forward_length", p->n_ff_shexp);
    KU32("ssm.conv_kernel", p->ssm_conv);
    KU32("ssm.state_size", p->ssm_state);
    KU32("ssm.group_count", p->ssm_groups);
    KU32("ssm.time_step_rank", p->ssm_dt_rank);
    KU32("ssm.inner_size", p->ssm_inner);
    if (!p->legacy && !rc) {
      uint8_t *rec = malloc(p->n_layer);
      if (!rec) return ferry_fail(-ENOMEM, "synth: out of memory");
      for (uint32_t L = 0; L < p->n_layer; L++) rec[L] = !is_full_attn(p, L);
      snprintf(key, sizeof key, "%s.attention.recurrent_layers", arch);
      rc = gguf_writer_add_array(w, key, GGUF_BOOL, rec, p->n_layer);
      free(rec);
      KU32("full_attention_interval", p->full_attn_interval);
    }
    KU32("rope.dimension_count", p->n_rot);
  } else if (p->n_rot != p->head_dim) {
    KU32("rope.dimension_count", p->n_rot);
  }
#undef KU32
#undef KF32
  static const uint32_t k_ftype[] = {[SYNTH_F32] = 0, [SYNTH_Q8_0] = 7, [SYNTH_Q4_K_M] = 15};
  if (!rc) rc = gguf_writer_add_u32(w, "general.file_type", k_ftype[p->recipe]);
  if (!rc) rc = gguf_writer_add_u32(w, "general.quantization_version", 2);
  if (!rc && p->routing == SYNTH_ROUTING_REAL)
    rc = gguf_writer_add_str(w, "ferry.synth.routing", "real");
  if (rc) return rc;
  if (!vsrc) return vocab_write_minimal(w, n_vocab);
  for (int64_t i = 0; i < gguf_n_kv(vsrc) && !rc; i++) {
    const struct gguf_kv *kv = gguf_kv_at(vsrc, i);
    if (!strncmp(kv->key, "tokenizer.", 10)) rc = gguf_writer_copy_kv(w, kv);
  }
  return rc ? ferry_fail_ctx(rc, "copying the tokenizer of %s", gguf_path(vsrc)) : 0;
}

// ---- generation --------------------------------------------------------------------------
static inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static void stream_seed(struct ferry_rng *rng, const struct plan_tensor *t, uint64_t seed,
                        uint64_t stream) {
  ferry_rng_seed(rng, mix64(seed ^ mix64(t->hash + 0x9e3779b97f4a7c15ull * (stream + 1))));
}

// ---- --routing real ----------------------------------------------------------------------
// The construction (NOTES.md "Realistic routing" has the measurements and the why). The
// residual stream's first 256 dimensions (one K-quant block) are reserved:
//   dim 0       a constant (every token embedding has beta there): it gives every router a
//               per-expert bias (router column 0, popularity skew growing with depth), and
//               every attention / DeltaNet layer constant queries and keys;
//   dims 1..255 the routing subspace S that every router reads (router rows are zero
//               elsewhere). The embedding puts a token-specific part there (what changes
//               from token to token); the mixers (attention, DeltaNet) add a slowly
//               varying context, a recency-weighted average of the previous tokens'
//               content; nothing else writes to S (expert and shared-expert down rows for
//               dims < 256 are zero), so the residual stream's S part changes little from
//               layer to layer (the stale gate works) and little from token to token
//               (consecutive tokens share experts).
// The recency weighting comes out of the real forward pass: attention queries and keys
// are constant vectors on two RoPE pairs, so a score is A*cos(theta*(t-s)) summed over the
// pairs, a Gaussian window over the past whose width is set by the pair's frequency and A
// (the q/k norm weights); DeltaNet layers with constant q = k keep an exponential moving
// average of the values (state S = k m^T, m <- (1-beta) m + beta v), with beta per v-head
// from ssm_ba. Values read the other 1792 dimensions (token content); outputs go to S only.
enum rkind {
  RK_NONE = 0,
  RK_EMBD,   // token_embd: block 0 = [beta, u * N(0,1) x 255]
  RK_NORM,   // attn/ffn norms: 1 on block 0
  RK_ROUTER, // ffn_gate_inp: [bias_e, S row, 0...]
  RK_ATTN_Q, // constant queries on two RoPE pairs per kv group (gate rows of qwen3next: 0)
  RK_ATTN_K, // constant keys, same pairs
  RK_T_IN,   // values: block 0 zero
  RK_S_OUT,  // mixer output: only rows 1..255 (S)
  RK_NO_S,   // expert / shared-expert down: rows < 256 zero
  RK_QKNORM, // q/k norm weights: the score amplitude
  RK_QKV,    // DeltaNet attn_qkv: constant q/k (dim 0 of each head), values like RK_T_IN
  RK_GATE,   // DeltaNet attn_gate: constant z
  RK_BA,     // DeltaNet ssm_ba: b per v-head (beta = 1/tau), a = 0
  RK_CONV,   // DeltaNet conv taps (0, ..., 0, 1)
  RK_FILL,   // a constant (ssm_dt.bias 0, ssm_a -1e-3, ssm_norm 1)
};

// Constants of the construction. Units: the token-specific part of S has std u per
// dimension; "gains" are the std of the mixers' context part relative to u, before the
// 1/sqrt(window) of averaging (as in the simulation that chose them); bias is the std of
// the router's per-expert bias relative to the token-specific logit std.
struct rknobs {
  float u, beta, rho; // S token part std, dim-0 constant, router S-row scale
  float g0, gj;       // context gain of the first mixer layer / the others
  float s_lo, s_hi;   // recency window (tokens): Gaussian sigma / EMA time constant
  float b_lo, b_hi;   // router bias std at the first / the last layer
  float amp;          // attention score amplitude A
  float growth;       // residual |x|^2 growth per layer (estimate, for DeltaNet betas)
  float vs;           // DeltaNet value std before the conv's silu (small: silu ~ linear,
                      // so the averaged values carry no large constant part)
  float ma;           // DeltaNet: share of v-heads without memory that average the last two
                      // tokens (conv taps 0,0,1,1): reuse by the next token only
};

static void rknobs_default(struct rknobs *k, bool next) {
  if (!next) // 128 experts, top-8 (Qwen3-30B-A3B figures)
    *k = (struct rknobs){.u = 0.25f,
                         .beta = 1.0f,
                         .rho = 1.5f,
                         .g0 = 14.f,
                         .gj = 2.f,
                         .s_lo = 32.f,
                         .s_hi = 128.f,
                         .b_lo = 0.f,
                         .b_hi = 0.7f,
                         .amp = 16.f,
                         .growth = 0.24f,
                         .vs = 0.2f,
                         .ma = 0.f};
  else // 512 experts, top-10 (the Qwen3-Next layout)
    *k = (struct rknobs){.u = 0.25f,
                         .beta = 1.0f,
                         .rho = 1.5f,
                         .g0 = 8.f,
                         .gj = 1.f,
                         .s_lo = 2.f,
                         .s_hi = 10.f,
                         .b_lo = 0.2f,
                         .b_hi = 0.6f,
                         .amp = 64.f,
                         .growth = 0.24f,
                         .vs = 0.2f,
                         .ma = 0.f};
}

static int rknobs_parse(struct rknobs *k, const char *s) {
  if (!s || !*s) return 0;
  char buf[512];
  snprintf(buf, sizeof buf, "%s", s);
  for (char *sv = NULL, *tok = strtok_r(buf, ",", &sv); tok; tok = strtok_r(NULL, ",", &sv)) {
    char name[32];
    float v;
    if (sscanf(tok, "%31[a-z_0-9]=%f", name, &v) != 2 || !isfinite(v))
      return ferry_fail(-EINVAL, "--routing-knobs: '%s' is not name=number", tok);
    const struct {
      const char *name;
      float *v;
    } knobs[] = {{"u", &k->u},       {"beta", &k->beta}, {"rho", &k->rho},       {"g0", &k->g0},
                 {"gj", &k->gj},     {"s_lo", &k->s_lo}, {"s_hi", &k->s_hi},     {"b_lo", &k->b_lo},
                 {"b_hi", &k->b_hi}, {"amp", &k->amp},   {"growth", &k->growth}, {"vs", &k->vs},
                 {"ma", &k->ma}};
    size_t q = 0;
    while (q < sizeof knobs / sizeof knobs[0] && strcmp(name, knobs[q].name)) q++;
    if (q < sizeof knobs / sizeof knobs[0]) {
      *knobs[q].v = v;
      continue;
    }
    return ferry_fail(-EINVAL,
                      "--routing-knobs: unknown knob '%s' (u, beta, rho, g0, gj, s_lo, s_hi, "
                      "b_lo, b_hi, amp, growth, vs, ma)",
                      name);
  }
  if (!(k->u > 0 && k->beta > 0 && k->rho > 0 && k->s_lo >= 1 && k->s_hi >= k->s_lo && k->amp > 0 &&
        k->b_lo >= 0 && k->b_hi >= 0 && k->g0 >= 0 && k->gj >= 0 && k->growth >= 0))
    return ferry_fail(-EINVAL, "--routing-knobs: values out of range");
  return 0;
}

#define RR_BLOCK 256 // reserved dims: [0, RR_BLOCK)

struct rreal {
  struct rknobs k;
  uint32_t d, hd, n_rot, H, Hkv, E, n_layer, nk, nv, dk, key_dim, value_dim;
  bool next;
  float g_norm; // q/k norm weight
  int *pair;    // [n_layer * Hkv] first RoPE pair of each kv group (attention layers)
  float *tau;   // [n_layer * nv] EMA time constant of each v-head (DeltaNet layers)
  float *x0;    // [n_layer] estimate of the normalized dim-0 value at the layer's input
  float *wout;  // [n_layer] std of the mixer's output rows into S
  float *bias;  // [n_layer] router bias std (x-space units of the router row)
};

static void rreal_free(struct rreal *R) {
  if (!R) return;
  free(R->pair), free(R->tau), free(R->x0), free(R->wout), free(R->bias);
  free(R);
}

// DeltaNet v-heads without memory (knob ma): every round(1/ma)-th head.
static bool rr_ma_head(const struct rreal *R, uint32_t l, uint32_t h) {
  if (R->k.ma <= 0) return false;
  uint32_t m = (uint32_t)lroundf(1.f / R->k.ma);
  return (h + l) % (m ? m : 1) == 0;
}

static bool rr_full_attn(const struct rreal *R, uint32_t l, const struct synth_params *p) {
  return !R->next || (l + 1) % p->full_attn_interval == 0;
}

static int rreal_create(struct rreal **out, const struct synth_params *p) {
  *out = NULL;
  struct rreal *R = calloc(1, sizeof *R);
  if (!R) return ferry_fail(-ENOMEM, "synth: out of memory");
  R->next = p->arch == SYNTH_QWEN3NEXT;
  rknobs_default(&R->k, R->next);
  int rc = rknobs_parse(&R->k, p->routing_knobs);
  if (rc) goto fail;
  R->d = p->n_embd, R->hd = p->head_dim, R->n_rot = p->n_rot, R->H = p->n_head;
  R->Hkv = p->n_head_kv, R->E = p->n_expert, R->n_layer = p->n_layer;
  R->nk = p->ssm_groups, R->nv = p->ssm_dt_rank, R->dk = p->ssm_state;
  R->key_dim = p->ssm_groups * p->ssm_state, R->value_dim = p->ssm_inner;
  if (R->d < 2 * RR_BLOCK || R->d % RR_BLOCK || R->n_rot < 8 || R->H % R->Hkv) {
    rc = ferry_fail(-EINVAL,
                    "--routing real needs --embd a multiple of %d and at least %d (got %u) and "
                    "--rope-dims >= 8",
                    RR_BLOCK, 2 * RR_BLOCK, R->d);
    goto fail;
  }
  if (R->next && (p->legacy || R->dk < 1 || R->nv % R->nk)) {
    rc = ferry_fail(-EINVAL, "--routing real supports the split qwen3next layout only");
    goto fail;
  }
  R->pair = calloc((size_t)R->n_layer * R->Hkv, sizeof *R->pair);
  R->tau = calloc((size_t)R->n_layer * (R->nv ? R->nv : 1), sizeof *R->tau);
  R->x0 = calloc(R->n_layer, sizeof *R->x0);
  R->wout = calloc(R->n_layer, sizeof *R->wout);
  R->bias = calloc(R->n_layer, sizeof *R->bias);
  if (!R->pair || !R->tau || !R->x0 || !R->wout || !R->bias) {
    rc = ferry_fail(-ENOMEM, "synth: out of memory");
    goto fail;
  }
  const struct rknobs *k = &R->k;
  // two RoPE pairs (i, i+1) per kv group: score ~ A (1 - theta_eff^2 dt^2 / 2), so the
  // window's sigma is 1 / (theta_eff sqrt(A)); q^ and k^ entries are g sqrt(hd / 2)
  R->g_norm = sqrtf(k->amp / sqrtf((float)R->hd));
  double lb = log(p->rope_base), r = exp(-2.0 * lb / R->n_rot);
  double emb2 = (double)k->beta * k->beta + (RR_BLOCK - 1) * (double)k->u * k->u +
                (R->d - RR_BLOCK) * 0.25; // token_embd: std 0.5 outside block 0
  for (uint32_t l = 0; l < R->n_layer; l++) {
    struct ferry_rng rng;
    ferry_rng_seed(&rng, mix64(p->seed ^ mix64(0x726f7574696e67ull + l)));
    double xn = sqrt(emb2 * (1.0 + k->growth * l));
    R->x0[l] = (float)(k->beta * sqrt((double)R->d) / xn);
    float frac = R->n_layer > 1 ? (float)l / (float)(R->n_layer - 1) : 0.f;
    float bstd = k->b_lo + (k->b_hi - k->b_lo) * frac;
    R->bias[l] = bstd * k->rho * k->u / k->beta;
    float G = l == 0 ? k->g0 : k->gj;
    if (rr_full_attn(R, l, p)) {
      double inv_neff = 0;
      for (uint32_t g = 0; g < R->Hkv; g++) {
        double sig = exp(log(k->s_lo) + (log(k->s_hi) - log(k->s_lo)) * ferry_rng_uniform(&rng));
        double th = 1.0 / (sig * sqrt(k->amp)) / sqrt((1 + r * r) / 2);
        int i = (int)lround(-log(th) * R->n_rot / (2 * lb));
        int imax = (int)R->n_rot / 2 - 2;
        R->pair[l * R->Hkv + g] = i < 0 ? 0 : i > imax ? imax : i;
        inv_neff += 1.0 / (1.77 * sig);
      }
      (void)inv_neff;           // attention averages by itself: the gain needs no window factor
      const float s_v = 0.935f; // value std: W_v rows 1/sqrt(d) over the 1792 content dims
      R->wout[l] = G * k->u / (s_v * sqrtf((float)R->H * R->hd));
    } else {
      double inv_neff = 0;
      for (uint32_t h = 0; h < R->nv; h++) {
        double tau = exp(log(k->s_lo) + (log(k->s_hi) - log(k->s_lo)) * ferry_rng_uniform(&rng));
        if (tau < 1.1) tau = 1.1;
        if (rr_ma_head(R, l, h)) tau = 1.05; // beta = 0.95: the conv's two-token average
        R->tau[l * R->nv + h] = (float)tau;
        inv_neff += tau < 1.1 ? 0.5 : 1.0 / (2 * tau - 1);
      }
      inv_neff /= R->nv;
      // the gated RMSNorm makes each head's output unit-rms whatever the window, so the
      // averaging factor of attention is applied here by hand (silu(z) = 1)
      R->wout[l] = G * k->u * sqrtf((float)inv_neff) / sqrtf((float)R->value_dim);
    }
  }
  *out = R;
  return 0;
fail:
  rreal_free(R);
  return rc;
}

// Per-tensor kind from its name; mixer outputs get their own law (bank) std.
static void plan_routing_real(struct plan *pl, const struct rreal *R) {
  static const struct {
    const char *sfx;
    int rk;
  } map[] = {
      {"token_embd.weight", RK_EMBD},
      {"attn_norm.weight", RK_NORM},
      {"ffn_norm.weight", RK_NORM},
      {"post_attention_norm.weight", RK_NORM},
      {"ffn_gate_inp.weight", RK_ROUTER},
      {"attn_q.weight", RK_ATTN_Q},
      {"attn_k.weight", RK_ATTN_K},
      {"attn_v.weight", RK_T_IN},
      {"attn_output.weight", RK_S_OUT},
      {"attn_q_norm.weight", RK_QKNORM},
      {"attn_k_norm.weight", RK_QKNORM},
      {"ffn_down_exps.weight", RK_NO_S},
      {"ffn_down_shexp.weight", RK_NO_S},
      {"attn_qkv.weight", RK_QKV},
      {"attn_gate.weight", RK_GATE},
      {"ssm_ba.weight", RK_BA},
      {"ssm_conv1d.weight", RK_CONV},
      {"ssm_dt.bias", RK_FILL},
      {"ssm_a", RK_FILL},
      {"ssm_norm.weight", RK_FILL},
      {"ssm_out.weight", RK_S_OUT},
  };
  for (int i = 0; i < pl->n; i++) {
    struct plan_tensor *t = &pl->t[i];
    const char *sfx = t->name;
    if (t->layer >= 0) sfx = strchr(strchr(t->name, '.') + 1, '.') + 1;
    for (size_t j = 0; j < sizeof map / sizeof map[0]; j++)
      if (!strcmp(sfx, map[j].sfx)) t->rk = map[j].rk;
    if (t->rk == RK_S_OUT) t->a = 0.f, t->b = R->wout[t->layer];
    if (t->rk == RK_QKV) t->a = 0.f, t->b = R->k.vs / sqrtf((float)(R->d - RR_BLOCK));
  }
}

enum { BK_ZERO = 0, BK_RAND, BK_SET };

// Block 0 = (v, 0, ..., 0).
static void set0(float *x, int bl, uint8_t *kind, float v) {
  for (int j = 0; j < bl; j++) x[j] = 0;
  x[0] = v;
  kind[0] = BK_SET;
}

// Fills the kinds of a row's blocks (nb blocks of bl values) and the values of its BK_SET
// blocks in x (the other values of x are left alone).
static void rr_row(const struct rreal *R, const struct plan_tensor *t, uint64_t seed, uint64_t row,
                   float *x, uint8_t *kind, int nb, int bl) {
  const struct rknobs *k = &R->k;
  int l = t->layer;
  uint64_t ne1 = t->ne[1];
  memset(kind, BK_ZERO, (size_t)nb);
  struct ferry_rng rng;
  stream_seed(&rng, t, seed, row | (1ull << 62));
  switch (t->rk) {
    case RK_EMBD:
      memset(kind, BK_RAND, (size_t)nb);
      kind[0] = BK_SET;
      x[0] = k->beta;
      for (int j = 1; j < bl; j++) x[j] = k->u * ferry_rng_normal(&rng);
      break;
    case RK_NORM:
      memset(kind, BK_RAND, (size_t)nb);
      kind[0] = BK_SET;
      for (int j = 0; j < bl; j++) x[j] = 1.f;
      break;
    case RK_ROUTER: {
      kind[0] = BK_SET;
      for (int j = 0; j < bl; j++) x[j] = 0;
      float sc = k->rho / sqrtf((float)(RR_BLOCK - 1));
      x[0] = R->bias[l] * ferry_rng_normal(&rng);
      for (int j = 1; j < bl; j++) x[j] = sc * ferry_rng_normal(&rng);
      break;
    }
    case RK_ATTN_Q:
    case RK_ATTN_K: {
      uint64_t o = row % ne1, h, i;
      if (t->rk == RK_ATTN_K) {
        h = o / R->hd, i = o % R->hd; // h is the kv group
      } else if (R->next) {
        h = o / (2 * R->hd), i = o % (2 * R->hd);
        if (i >= R->hd) break; // output gate rows: sigmoid(0) = 1/2
        h /= R->H / R->Hkv;
      } else {
        h = o / R->hd / (R->H / R->Hkv), i = o % R->hd;
      }
      int p0 = R->pair[l * R->Hkv + h];
      if (i == (uint64_t)p0 || i == (uint64_t)p0 + 1) set0(x, bl, kind, 1.f / R->x0[l]);
      break;
    }
    case RK_T_IN:
      memset(kind, BK_RAND, (size_t)nb);
      kind[0] = BK_ZERO;
      break;
    case RK_S_OUT: {
      uint64_t o = row % ne1;
      if (o >= 1 && o < RR_BLOCK) memset(kind, BK_RAND, (size_t)nb);
      break;
    }
    case RK_NO_S:
      if (row % ne1 >= RR_BLOCK) memset(kind, BK_RAND, (size_t)nb);
      break;
    case RK_QKNORM:
      memset(kind, BK_SET, (size_t)nb);
      for (int j = 0; j < nb * bl; j++) x[j] = R->g_norm;
      break;
    case RK_QKV: {
      uint64_t o = row % ne1;
      if (o < 2ull * R->key_dim) {
        if (o % R->dk == 0) set0(x, bl, kind, 1.f / R->x0[l]);
      } else {
        memset(kind, BK_RAND, (size_t)nb);
        kind[0] = BK_ZERO;
      }
      break;
    }
    case RK_GATE: // silu(1.28) = 1.0
      set0(x, bl, kind, 1.28f / R->x0[l]);
      break;
    case RK_BA: {
      uint32_t rr = R->nv / R->nk; // v-heads per k-head; groups of 2 rr rows: b then a
      uint64_t o = row % ne1, g = o / (2 * rr), j = o % (2 * rr);
      if (j < rr) {
        float tau = R->tau[l * R->nv + g * rr + j];
        set0(x, bl, kind, -logf(tau - 1.f) / R->x0[l]); // beta = sigmoid(b) = 1/tau
      }
      break;
    }
    case RK_CONV: { // row = channel; v-heads without memory average the last two tokens
      uint64_t ch = row % ne1;
      bool ma =
          ch >= 2ull * R->key_dim &&
          rr_ma_head(R, (uint32_t)l, (uint32_t)((ch - 2ull * R->key_dim) / (R->value_dim / R->nv)));
      memset(kind, BK_SET, (size_t)nb);
      for (int j = 0; j < nb * bl; j++)
        x[j] = j == nb * bl - 1 || (ma && j == nb * bl - 2) ? 1.f : 0.f;
      break;
    }
    case RK_FILL: {
      float v = strstr(t->name, "ssm_a") ? -1e-3f : strstr(t->name, "ssm_dt") ? 0.f : 1.f;
      memset(kind, BK_SET, (size_t)nb);
      for (int j = 0; j < nb * bl; j++) x[j] = v;
      break;
    }
    default: memset(kind, BK_RAND, (size_t)nb); break;
  }
}

// n values of tensor t's law from stream `stream` (a row index, or a bank block index with
// the top bit set) into x.
static void gen_values(const struct plan_tensor *t, uint64_t seed, uint64_t stream, float *x,
                       uint64_t n) {
  struct ferry_rng rng;
  stream_seed(&rng, t, seed, stream);
  if (t->law == INIT_UNIFORM) {
    for (uint64_t i = 0; i < n; i++) x[i] = t->a + (t->b - t->a) * ferry_rng_uniform(&rng);
    return;
  }
  // Irwin-Hall(4) on 16-bit uniforms: mean 4 * 32767.5, variance 4 * (65536^2 - 1) / 12.
  const float mean = 131070.0f, inv_sd = 1.0f / 37837.23f;
  const float scale = t->b * inv_sd;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t u = ferry_rng_u64(&rng);
    uint32_t s = (uint32_t)(u & 0xffff) + (uint32_t)((u >> 16) & 0xffff) +
                 (uint32_t)((u >> 32) & 0xffff) + (uint32_t)(u >> 48);
    x[i] = t->a + ((float)s - mean) * scale;
  }
}

static void convert_row(uint32_t type, const float *x, void *dst, int64_t n) {
  if (type == FT_F32) {
    memcpy(dst, x, (size_t)n * sizeof(float));
  } else if (type == FT_BF16) {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = ferry_f32_to_bf16(x[i]);
  } else if (type == FT_F16) {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = ferry_f32_to_f16(x[i]);
  } else {
    cpu_quantize_row((enum ferry_type)type, x, dst, n);
  }
}

// Block bank: the reference K-quant quantizers cost ~100 ns per weight, which would make a
// full-size model take most of an hour on a small machine. Large K-quant tensors are
// therefore built from a bank of SYNTH_BANK_BLOCKS blocks, each a genuine quantization of
// fresh samples of the tensor's law, and every block position of every row picks a bank
// block with the row's own RNG. Each row is still a sample of the right distribution and
// rows are independent in practice (two rows share a block at a given position with
// probability 1/SYNTH_BANK_BLOCKS); the cost drops to a memcpy per block. Tensors with
// the same type and law (e.g. ffn_gate_exps and ffn_up_exps of every layer) share one bank,
// seeded from the law rather than a tensor name, so a 48-layer model quantizes only a
// handful of banks; rows still pick blocks with their own per-tensor, per-row streams.
#define SYNTH_BANK_BLOCKS     1024u
#define SYNTH_MAX_BANKS       64
#define SYNTH_BANK_MIN_BLOCKS ((uint64_t)SYNTH_BANK_BLOCKS * 4)
#define SYNTH_BANK_STREAM     (1ull << 63)

struct bank {
  uint32_t type;
  enum init_law law;
  float a, b;
  uint8_t *data; // SYNTH_BANK_BLOCKS blocks of `type`
};

static bool use_bank(const struct synth_params *p, const struct plan_tensor *t) {
  if (p->exact || (t->type != FT_Q4_K && t->type != FT_Q6_K)) return false;
  return t->ne[0] / 256 * t->ne[1] * t->ne[2] * t->ne[3] >= SYNTH_BANK_MIN_BLOCKS;
}

struct batch_ctx {
  const struct plan_tensor *t;
  uint64_t seed;
  uint64_t row0;
  uint64_t row_bytes;
  uint8_t *out;
  float **scratch;     // one row of floats per worker
  const uint8_t *bank; // NULL: quantize every row
  uint32_t block_bytes;
  const struct rreal *R; // --routing real (used when t->rk != RK_NONE)
};

// A row of a --routing real tensor: zero, bank (random) and constructed blocks.
static void real_row(const struct batch_ctx *c, uint64_t row, uint8_t *dst, float *x) {
  const struct plan_tensor *t = c->t;
  uint64_t n = t->ne[0];
  int nb = n % RR_BLOCK == 0 ? (int)(n / RR_BLOCK) : 1, bl = (int)(n / (uint64_t)nb);
  uint8_t kind[nb];
  if (c->bank) {
    rr_row(c->R, t, c->seed, row, x, kind, nb, bl);
    struct ferry_rng rng;
    stream_seed(&rng, t, c->seed, row);
    for (int j = 0; j < nb; j++) {
      uint64_t idx = ((ferry_rng_u64(&rng) >> 32) * SYNTH_BANK_BLOCKS) >> 32;
      uint8_t *d = dst + (uint64_t)j * c->block_bytes;
      if (kind[j] == BK_ZERO)
        memset(d, 0, c->block_bytes);
      else if (kind[j] == BK_RAND)
        memcpy(d, c->bank + idx * c->block_bytes, c->block_bytes);
      else
        cpu_quantize_row((enum ferry_type)t->type, x + (uint64_t)j * bl, d, bl);
    }
    return;
  }
  gen_values(t, c->seed, row, x, n);
  rr_row(c->R, t, c->seed, row, x, kind, nb, bl);
  for (int j = 0; j < nb; j++)
    if (kind[j] == BK_ZERO) memset(x + (uint64_t)j * bl, 0, sizeof(float) * (size_t)bl);
  convert_row(t->type, x, dst, (int64_t)n);
}

static void batch_fn(void *vctx, int64_t b, int64_t e, int tid) {
  struct batch_ctx *c = vctx;
  float *x = c->scratch[tid];
  uint64_t n = c->t->ne[0];
  for (int64_t r = b; r < e; r++) {
    uint8_t *dst = c->out + (uint64_t)r * c->row_bytes;
    if (c->R && c->t->rk) {
      real_row(c, c->row0 + (uint64_t)r, dst, x);
    } else if (c->bank) {
      struct ferry_rng rng;
      stream_seed(&rng, c->t, c->seed, c->row0 + (uint64_t)r);
      for (uint64_t j = 0; j < n / 256; j++) {
        uint64_t idx = ((ferry_rng_u64(&rng) >> 32) * SYNTH_BANK_BLOCKS) >> 32;
        memcpy(dst + j * c->block_bytes, c->bank + idx * c->block_bytes, c->block_bytes);
      }
    } else {
      gen_values(c->t, c->seed, c->row0 + (uint64_t)r, x, n);
      convert_row(c->t->type, x, dst, (int64_t)n);
    }
  }
}

static void bank_fn(void *vctx, int64_t b, int64_t e, int tid) {
  struct batch_ctx *c = vctx;
  float *x = c->scratch[tid];
  for (int64_t i = b; i < e; i++) {
    gen_values(c->t, c->seed, SYNTH_BANK_STREAM | (uint64_t)i, x, 256);
    cpu_quantize_row((enum ferry_type)c->t->type, x, c->out + (uint64_t)i * c->block_bytes, 256);
  }
}

static int plan_prepare(const struct synth_params *p, struct plan *pl, struct gguf_file **vsrc,
                        uint32_t *n_vocab) {
  int rc = synth_params_validate(p);
  if (rc) return rc;
  rc = resolve_vocab(p, vsrc, n_vocab);
  if (rc) return rc;
  pl->t = calloc(SYNTH_MAX_TENSORS, sizeof *pl->t);
  if (!pl->t) return ferry_fail(-ENOMEM, "synth: out of memory");
  rc = plan_build(pl, p, *n_vocab);
  if (rc) return rc;
  plan_assign_types(pl, p);
  if (p->routing == SYNTH_ROUTING_REAL) {
    if ((rc = rreal_create(&pl->R, p))) return rc;
    plan_routing_real(pl, pl->R);
  }
  return 0;
}

int synth_estimate_bytes(const struct synth_params *p, uint64_t *out) {
  struct plan pl = {0};
  struct gguf_file *vsrc = NULL;
  uint32_t n_vocab = 0;
  int rc = plan_prepare(p, &pl, &vsrc, &n_vocab);
  uint64_t total = 0;
  for (int i = 0; !rc && i < pl.n; i++) total += ferry_align_up(plan_tensor_bytes(&pl.t[i]), 32);
  *out = total;
  free(pl.t);
  rreal_free(pl.R);
  gguf_close(vsrc);
  return rc;
}

int synth_write(const struct synth_params *p, const char *path, struct synth_stats *st) {
  double t0 = ferry_now_s();
  struct plan pl = {0};
  struct gguf_file *vsrc = NULL;
  struct gguf_writer *w = NULL;
  struct ferry_pool *pool = NULL;
  float **scratch = NULL;
  uint8_t *batch = NULL;
  struct bank banks[SYNTH_MAX_BANKS];
  int n_banks = 0;
  uint32_t n_vocab = 0;
  int n_threads = 0;
  int rc = plan_prepare(p, &pl, &vsrc, &n_vocab);
  if (rc) goto out;
  if (pl.n_fallback)
    log_warn(
        "synth: %d tensor(s) have rows that do not fit the recipe's block size; they use Q8_0 "
        "instead of a K-quant (or F32 instead of Q8_0)",
        pl.n_fallback);

  // Refuse early when the disk cannot hold the result (leaving 1 GiB spare).
  uint64_t total = 0, max_row = 0;
  for (int i = 0; i < pl.n; i++) {
    total += ferry_align_up(plan_tensor_bytes(&pl.t[i]), 32);
    if (pl.t[i].ne[0] > max_row) max_row = pl.t[i].ne[0];
  }
  if (max_row < 256) max_row = 256; // bank blocks are generated 256 values at a time
  {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
      snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
      slash[1] = 0; // a file in "/"
    else
      *slash = 0;
    struct statvfs sv;
    if (statvfs(dir, &sv) == 0) {
      uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
      if (total + ((uint64_t)1 << 30) > avail) {
        char a[32], b[32];
        ferry_format_size(total, a, sizeof a);
        ferry_format_size(avail, b, sizeof b);
        rc = ferry_fail(
            -ENOSPC, "synth: the model needs %s plus a 1.00 GiB reserve but only %s are free in %s",
            a, b, dir);
        goto out;
      }
    }
  }

  rc = gguf_writer_create(&w, path, 0);
  if (rc) goto out;
  rc = write_metadata(w, p, &pl, vsrc, n_vocab);
  gguf_close(vsrc); // the tokenizer arrays now live (serialized) in the writer only
  vsrc = NULL;
  for (int i = 0; !rc && i < pl.n; i++)
    rc = gguf_writer_add_tensor(w, pl.t[i].name, pl.t[i].n_dims, pl.t[i].ne, pl.t[i].type);
  if (!rc) rc = gguf_writer_begin_data(w);
  if (rc) goto out;

  rc = ferry_pool_create(&pool, p->n_threads);
  if (rc) goto out;
  n_threads = ferry_pool_size(pool);
  scratch = calloc((size_t)n_threads, sizeof *scratch);
  batch = ferry_alloc_aligned(4096, SYNTH_BATCH_BYTES);
  if (!scratch || !batch) {
    rc = ferry_fail(-ENOMEM, "synth: out of memory for row buffers");
    goto out;
  }
  for (int i = 0; i < n_threads; i++) {
    scratch[i] = ferry_alloc_aligned(64, max_row * sizeof(float));
    if (!scratch[i]) {
      rc = -ENOMEM;
      goto out;
    }
  }

  uint64_t done = 0, next_report = total / 20;
  for (int i = 0; i < pl.n && !rc; i++) {
    const struct plan_tensor *t = &pl.t[i];
    uint64_t row_bytes = ferry_row_bytes(ferry_type_info(t->type), t->ne[0]);
    uint64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    // A single row larger than the batch buffer cannot occur: rows are at most 65536 F32.
    uint64_t per_batch = SYNTH_BATCH_BYTES / row_bytes;
    FERRY_ASSERT(per_batch >= 1);
    const uint8_t *bk = NULL;
    uint32_t block_bytes = ferry_type_info(t->type)->size;
    if (use_bank(p, t)) {
      int bi = 0;
      while (bi < n_banks && !(banks[bi].type == t->type && banks[bi].law == t->law &&
                               banks[bi].a == t->a && banks[bi].b == t->b))
        bi++;
      if (bi == n_banks) {
        if (n_banks == SYNTH_MAX_BANKS)
          bi = (int)(i % SYNTH_MAX_BANKS); // reuse a slot
        else if (!(banks[n_banks].data = ferry_alloc_aligned(
                       64, (size_t)SYNTH_BANK_BLOCKS * 256))) { // any K block fits
          rc = -ENOMEM;
          break;
        } else {
          n_banks++;
        }
        // A pseudo-tensor carrying the law, named after it, seeds the bank.
        struct plan_tensor law = *t;
        snprintf(law.name, sizeof law.name, "bank:%u:%d:%a:%a", t->type, (int)t->law, t->a, t->b);
        law.hash = fnv1a(law.name);
        banks[bi].type = t->type, banks[bi].law = t->law, banks[bi].a = t->a, banks[bi].b = t->b;
        struct batch_ctx bc = {&law,    p->seed, 0,           0,   banks[bi].data,
                               scratch, NULL,    block_bytes, NULL};
        ferry_pool_run(pool, SYNTH_BANK_BLOCKS, 16, bank_fn, &bc);
      }
      bk = banks[bi].data;
    }
    for (uint64_t r0 = 0; r0 < rows && !rc; r0 += per_batch) {
      uint64_t k = rows - r0 < per_batch ? rows - r0 : per_batch;
      struct batch_ctx c = {t, p->seed, r0, row_bytes, batch, scratch, bk, block_bytes, pl.R};
      ferry_pool_run(pool, (int64_t)k, 1, batch_fn, &c);
      rc = gguf_writer_write(w, batch, k * row_bytes);
      done += k * row_bytes;
    }
    if (done >= next_report && total > ((uint64_t)256 << 20)) {
      double dt = ferry_now_s() - t0;
      log_info("synth: %.0f%% (%.0f MB in %.1f s, %.0f MB/s)", 100.0 * (double)done / (double)total,
               done / 1e6, dt, done / 1e6 / (dt > 0 ? dt : 1));
      next_report = done + total / 20;
    }
  }
  if (!rc) rc = gguf_writer_finish(w);
  if (!rc && st) {
    memset(st, 0, sizeof *st);
    st->file_bytes = gguf_writer_bytes_written(w);
    st->n_tensors = pl.n;
    st->n_fallback = pl.n_fallback;
    st->n_vocab = n_vocab;
    for (int i = 0; i < pl.n; i++) st->type_count[pl.t[i].type]++;
    st->seconds = ferry_now_s() - t0;
  }
out:
  if (scratch)
    for (int i = 0; i < n_threads; i++) ferry_free_aligned(scratch[i]);
  free(scratch);
  ferry_free_aligned(batch);
  for (int i = 0; i < n_banks; i++) ferry_free_aligned(banks[i].data);
  ferry_pool_destroy(pool);
  gguf_writer_destroy(w);
  gguf_close(vsrc);
  free(pl.t);
  rreal_free(pl.R);
  return rc;
}
