// tests/gpu/op_table.h: the one table of op test cases, shared by the backend comparison
// test (tests/gpu/test_ops.c), the completeness check (tests/unit/test_ops_table.c) and
// the kernel benchmark (bench/bench_cuda.c). A case names an op, a type, a shape and a
// tolerance; op_run_* builds deterministic random inputs for it on any backend, runs the
// op, and returns the output as floats, so two backends are compared by normalised error
// on identical inputs. Shapes mix awkward sizes (odd rows, tails, padding, tiny contexts,
// exact ties) with the real models' shapes (qwen3moe 30B-A3B, qwen3next 80B-A3B).
// Header-only (static functions): each test binary is one source file.
#pragma once
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/backend.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quants.h"

struct op_case {
  enum ferry_op op;
  enum ferry_type type; // weight type, KV type; FT_F32 where the op has none
  int64_t p[6];         // shape; meaning per op in op_run_setup
  double tol;           // largest normalised error accepted against the CPU reference
  const char *note;     // where the shape comes from
};

// Tolerances: exact ops differ only by float rounding; the GEMM path rounds weights and
// activations to F16 (2^-11 relative), Q8_0 KV stores may round one quant differently.
#define TOL_EXACT 1e-5
#define TOL_DOT   1e-4
#define TOL_GEMM  5e-3
#define TOL_ATTN  1e-3

// clang-format off
static const struct op_case g_op_cases[] = {
  // DEQUANT: p0 = elements
  {FERRY_OP_DEQUANT, FT_Q4_K, {256 * 7}, TOL_EXACT, "q4_K"},
  {FERRY_OP_DEQUANT, FT_Q5_K, {256 * 5}, TOL_EXACT, "q5_K"},
  {FERRY_OP_DEQUANT, FT_Q6_K, {256 * 9}, TOL_EXACT, "q6_K"},
  {FERRY_OP_DEQUANT, FT_Q3_K, {256 * 3}, TOL_EXACT, "q3_K"},
  {FERRY_OP_DEQUANT, FT_Q2_K, {256 * 3}, TOL_EXACT, "q2_K"},
  {FERRY_OP_DEQUANT, FT_Q8_0, {32 * 13}, TOL_EXACT, "q8_0"},
  {FERRY_OP_DEQUANT, FT_Q4_0, {32 * 11}, TOL_EXACT, "q4_0"},
  {FERRY_OP_DEQUANT, FT_F32, {1001}, TOL_EXACT, "f32 odd"},
  {FERRY_OP_DEQUANT, FT_F16, {1003}, TOL_EXACT, "f16 odd"},
  {FERRY_OP_DEQUANT, FT_BF16, {999}, TOL_EXACT, "bf16 odd"},
  // MATVEC: p0 = rows, p1 = n, p2 = misaligned W and x (byte-load path)
  {FERRY_OP_MATVEC, FT_Q4_K, {37, 512}, TOL_DOT, "odd rows"},
  {FERRY_OP_MATVEC, FT_Q5_K, {33, 768}, TOL_DOT, "odd rows"},
  {FERRY_OP_MATVEC, FT_Q6_K, {29, 1280}, TOL_DOT, "odd rows"},
  {FERRY_OP_MATVEC, FT_Q3_K, {31, 256}, TOL_DOT, "one block per row"},
  {FERRY_OP_MATVEC, FT_Q2_K, {35, 512}, TOL_DOT, "odd rows"},
  {FERRY_OP_MATVEC, FT_Q8_0, {41, 96}, TOL_DOT, "3 blocks per row"},
  {FERRY_OP_MATVEC, FT_Q4_0, {43, 160}, TOL_DOT, "5 blocks per row"},
  {FERRY_OP_MATVEC, FT_F32, {17, 1001}, TOL_DOT, "odd n"},
  {FERRY_OP_MATVEC, FT_F16, {257, 65}, TOL_DOT, "odd n"},
  {FERRY_OP_MATVEC, FT_BF16, {1, 2048}, TOL_DOT, "qwen3next ffn_gate_inp_shexp"},
  {FERRY_OP_MATVEC, FT_Q4_K, {768, 2048}, TOL_DOT, "qwen3moe ffn_gate_exps[e]"},
  {FERRY_OP_MATVEC, FT_Q6_K, {2048, 768}, TOL_DOT, "qwen3moe ffn_down_exps[e]"},
  {FERRY_OP_MATVEC, FT_Q4_K, {4096, 2048}, TOL_DOT, "qwen3moe attn_q"},
  {FERRY_OP_MATVEC, FT_Q8_0, {512, 2048}, TOL_DOT, "attn_k as q8_0"},
  {FERRY_OP_MATVEC, FT_F32, {128, 2048}, TOL_DOT, "qwen3moe ffn_gate_inp (router)"},
  {FERRY_OP_MATVEC, FT_F32, {512, 2048}, TOL_DOT, "qwen3next ffn_gate_inp (router)"},
  {FERRY_OP_MATVEC, FT_Q6_K, {151936, 2048}, TOL_DOT, "output (lm head)"},
  {FERRY_OP_MATVEC, FT_Q4_K, {64, 512, 1}, TOL_DOT, "misaligned"},
  {FERRY_OP_MATVEC, FT_Q5_K, {19, 256, 1}, TOL_DOT, "misaligned"},
  {FERRY_OP_MATVEC, FT_Q6_K, {33, 256, 1}, TOL_DOT, "misaligned"},
  {FERRY_OP_MATVEC, FT_Q8_0, {21, 64, 1}, TOL_DOT, "misaligned"},
  {FERRY_OP_MATVEC, FT_F32, {17, 64, 1}, TOL_DOT, "misaligned"},
  // MATMUL: p0 = rows, p1 = n, p2 = m tokens, p3 = extra X row stride, p4 = extra Y stride
  {FERRY_OP_MATMUL, FT_Q4_K, {67, 512, 5, 3, 1}, TOL_GEMM, "odd, padded strides"},
  {FERRY_OP_MATMUL, FT_Q5_K, {45, 256, 7}, TOL_GEMM, "odd"},
  {FERRY_OP_MATMUL, FT_Q6_K, {63, 768, 4}, TOL_GEMM, "odd"},
  {FERRY_OP_MATMUL, FT_Q3_K, {33, 512, 3}, TOL_GEMM, "odd"},
  {FERRY_OP_MATMUL, FT_Q2_K, {31, 256, 9}, TOL_GEMM, "odd"},
  {FERRY_OP_MATMUL, FT_Q8_0, {37, 96, 6}, TOL_GEMM, "odd"},
  {FERRY_OP_MATMUL, FT_Q4_0, {39, 64, 5}, TOL_GEMM, "odd"},
  {FERRY_OP_MATMUL, FT_F32, {19, 100, 11, 5, 2}, TOL_GEMM, "f32 padded"},
  {FERRY_OP_MATMUL, FT_F16, {21, 130, 8}, TOL_GEMM, "f16"},
  {FERRY_OP_MATMUL, FT_BF16, {3, 2048, 9}, TOL_GEMM, "bf16 (shexp gate, prefill)"},
  {FERRY_OP_MATMUL, FT_Q4_K, {768, 2048, 1}, TOL_DOT, "m=1 -> mat-vec path"},
  {FERRY_OP_MATMUL, FT_Q4_K, {768, 2048, 2, 7, 3}, TOL_DOT, "m=2 -> mat-vec path, padded"},
  {FERRY_OP_MATMUL, FT_Q4_K, {4096, 2048, 37}, TOL_GEMM, "qwen3moe attn_q prefill"},
  {FERRY_OP_MATMUL, FT_Q6_K, {2048, 4096, 16}, TOL_GEMM, "qwen3next attn_output prefill"},
  {FERRY_OP_MATMUL, FT_F32, {128, 2048, 33}, TOL_GEMM, "router prefill"},
  // MATMUL_GROUPED: p0 = rows, p1 = n, p2 = tokens, p3 = experts, p4 = top-k
  {FERRY_OP_MATMUL_GROUPED, FT_Q4_K, {67, 256, 9, 5, 2}, TOL_GEMM, "odd, groups of 0..9"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q8_0, {35, 64, 13, 7, 3}, TOL_GEMM, "odd"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q6_K, {33, 512, 6, 3, 3}, TOL_GEMM, "every token in every group"},
  {FERRY_OP_MATMUL_GROUPED, FT_F16, {29, 96, 11, 4, 2}, TOL_GEMM, "f16"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q4_K, {37, 256, 40, 64, 2}, TOL_GEMM, "over 64 one-token items"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q4_K, {768, 2048, 1, 128, 8}, TOL_DOT, "qwen3moe decode experts"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q4_K, {512, 2048, 1, 512, 10}, TOL_DOT, "qwen3next decode experts"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q4_K, {768, 2048, 33, 128, 8}, TOL_GEMM, "qwen3moe gate/up prefill"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q6_K, {2048, 768, 21, 128, 8}, TOL_GEMM, "qwen3moe down prefill"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q4_K, {512, 2048, 20, 512, 10}, TOL_GEMM, "qwen3next gate/up prefill"},
  // RMSNORM: p0 = rows, p1 = n, p2 = in place
  {FERRY_OP_RMSNORM, FT_F32, {1, 2048}, TOL_EXACT, "attn_norm decode"},
  {FERRY_OP_RMSNORM, FT_F32, {7, 2048, 1}, TOL_EXACT, "prefill, in place"},
  {FERRY_OP_RMSNORM, FT_F32, {32 * 5, 128, 1}, TOL_EXACT, "qwen3moe QK-norm heads"},
  {FERRY_OP_RMSNORM, FT_F32, {16 * 3, 256}, TOL_EXACT, "qwen3next QK-norm heads"},
  {FERRY_OP_RMSNORM, FT_F32, {3, 1001}, TOL_EXACT, "odd n"},
  {FERRY_OP_RMSNORM, FT_F32, {5, 1}, TOL_EXACT, "n = 1"},
  // ROPE_NEOX: p0 = tokens, p1 = heads, p2 = head_dim, p3 = n_rot, p4 = pos0
  {FERRY_OP_ROPE_NEOX, FT_F32, {1, 32, 128, 128, 5}, TOL_EXACT, "qwen3moe q decode"},
  {FERRY_OP_ROPE_NEOX, FT_F32, {7, 4, 128, 128, 0}, TOL_EXACT, "qwen3moe k prefill from 0"},
  {FERRY_OP_ROPE_NEOX, FT_F32, {3, 16, 256, 64, 1000}, TOL_EXACT, "qwen3next partial rotary"},
  {FERRY_OP_ROPE_NEOX, FT_F32, {2, 3, 48, 30, 123}, TOL_EXACT, "odd partial"},
  {FERRY_OP_ROPE_NEOX, FT_F32, {2, 2, 128, 128, 200000}, TOL_EXACT, "long position"},
  // KV_STORE: p0 = tokens, p1 = elements per token, p2 = row stride, p3 = pos0
  {FERRY_OP_KV_STORE, FT_F32, {3, 512, 512, 2}, TOL_EXACT, "f32"},
  {FERRY_OP_KV_STORE, FT_F16, {5, 512, 544, 1}, TOL_EXACT, "f16 padded row"},
  {FERRY_OP_KV_STORE, FT_F16, {2, 101, 103, 0}, TOL_EXACT, "f16 odd"},
  {FERRY_OP_KV_STORE, FT_Q8_0, {4, 512, 512, 3}, TOL_GEMM, "q8_0"},
  // ATTN_DECODE: p0 = context, p1 = heads, p2 = KV heads, p3 = head_dim, p4 = row padding
  {FERRY_OP_ATTN_DECODE, FT_F16, {37, 32, 4, 128}, TOL_ATTN, "qwen3moe"},
  {FERRY_OP_ATTN_DECODE, FT_Q8_0, {300, 32, 4, 128}, TOL_ATTN, "qwen3moe q8_0 KV"},
  {FERRY_OP_ATTN_DECODE, FT_F16, {1000, 16, 2, 256}, TOL_ATTN, "qwen3next full attention"},
  {FERRY_OP_ATTN_DECODE, FT_Q8_0, {2048, 32, 4, 128}, TOL_ATTN, "qwen3moe q8_0 KV, long"},
  {FERRY_OP_ATTN_DECODE, FT_F32, {700, 6, 3, 40, 8}, TOL_ATTN, "odd, long (16-warp path)"},
  {FERRY_OP_ATTN_DECODE, FT_F32, {1, 4, 2, 64}, TOL_ATTN, "one position"},
  {FERRY_OP_ATTN_DECODE, FT_F32, {5, 6, 3, 40, 8}, TOL_ATTN, "odd head_dim, padded rows"},
  {FERRY_OP_ATTN_DECODE, FT_Q8_0, {3, 8, 8, 96, 32}, TOL_ATTN, "no GQA, padded"},
  // ATTN_PREFILL: p0 = tokens, p1 = pos0, p2 = heads, p3 = KV heads, p4 = head_dim
  {FERRY_OP_ATTN_PREFILL, FT_F16, {17, 0, 32, 4, 128}, TOL_ATTN, "qwen3moe prompt"},
  {FERRY_OP_ATTN_PREFILL, FT_Q8_0, {9, 20, 16, 2, 256}, TOL_ATTN, "qwen3next chunk after 20"},
  {FERRY_OP_ATTN_PREFILL, FT_F32, {5, 3, 6, 2, 40}, TOL_ATTN, "odd"},
  // elementwise: p0 = n
  {FERRY_OP_SWIGLU, FT_F32, {768}, TOL_EXACT, "qwen3moe expert"},
  {FERRY_OP_SWIGLU, FT_F32, {100003}, TOL_EXACT, "odd, many blocks"},
  {FERRY_OP_ADD, FT_F32, {2048}, TOL_EXACT, "residual"},
  {FERRY_OP_ADD, FT_F32, {1}, TOL_EXACT, "n = 1"},
  {FERRY_OP_SCALE, FT_F32, {2047}, TOL_EXACT, "odd"},
  {FERRY_OP_AXPY, FT_F32, {2048}, TOL_EXACT, "expert accumulate"},
  {FERRY_OP_AXPY, FT_F32, {2048 * 7 + 3}, TOL_EXACT, "odd"},
  {FERRY_OP_SIGMOID_MUL, FT_F32, {4096}, TOL_EXACT, "qwen3next output gate"},
  {FERRY_OP_SIGMOID_MUL, FT_F32, {999}, TOL_EXACT, "odd"},
  // ROUTER_TOPK: p0 = tokens, p1 = experts, p2 = k, p3 = discrete logits (exact ties)
  {FERRY_OP_ROUTER_TOPK, FT_F32, {1, 128, 8}, TOL_DOT, "qwen3moe decode"},
  {FERRY_OP_ROUTER_TOPK, FT_F32, {13, 128, 8}, TOL_DOT, "qwen3moe prefill"},
  {FERRY_OP_ROUTER_TOPK, FT_F32, {3, 512, 10}, TOL_DOT, "qwen3next"},
  {FERRY_OP_ROUTER_TOPK, FT_F32, {5, 60, 7, 1}, TOL_DOT, "odd, many exact ties"},
  {FERRY_OP_ROUTER_TOPK, FT_F32, {2, 1000, 3}, TOL_DOT, "1000 experts"},
  {FERRY_OP_ROUTER_TOPK, FT_F32, {4, 33, 33, 1}, TOL_DOT, "k = n_expert, ties"},
};
// clang-format on
#define G_OP_CASES_N ((int)(sizeof g_op_cases / sizeof g_op_cases[0]))

// ---- running one case on one backend ----

#define OPR_MAXBUF 6

struct op_run {
  const struct op_case *c;
  struct ferry_backend *be;
  void *d[OPR_MAXBUF]; // backend buffers
  void *v[OPR_MAXBUF]; // what the op gets: d[i] + an offset (misaligned cases)
  size_t bytes[OPR_MAXBUF];
  const void **wptr; // grouped: host array of expert pointers
  int64_t *offs;     // grouped: host offsets
  int64_t total;     // grouped: (token, expert) pairs
};

static inline void op_fill_normal(struct ferry_rng *r, float *x, int64_t n, float scale) {
  for (int64_t i = 0; i < n; i++) x[i] = scale * ferry_rng_normal(r);
}

// Buffer i of `bytes` at byte offset `off` inside a fresh allocation, filled from h (or
// zeroed when h is NULL).
static inline int op_upload_at(struct op_run *r, int i, const void *h, size_t bytes, size_t off) {
  int rc = r->be->ops.mem_alloc(r->be, &r->d[i], bytes + off);
  if (rc) return rc;
  r->v[i] = (uint8_t *)r->d[i] + off;
  r->bytes[i] = bytes;
  if (h) return r->be->ops.copy_h2d(r->be, r->v[i], h, bytes, NULL);
  return r->be->ops.memset0(r->be, r->v[i], bytes, NULL);
}

static inline int op_upload(struct op_run *r, int i, const void *h, size_t bytes) {
  return op_upload_at(r, i, h, bytes, 0);
}

static inline int op_upload_normal_at(struct op_run *r, int i, struct ferry_rng *rng, int64_t n,
                                      float sc, size_t off) {
  float *h = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  if (!h) return -ENOMEM;
  op_fill_normal(rng, h, n, sc);
  int rc = op_upload_at(r, i, h, (size_t)n * sizeof(float), off);
  // Synchronous upload: the host copy goes away now.
  if (!rc) rc = r->be->ops.stream_sync(r->be, NULL);
  free(h);
  return rc;
}

static inline int op_upload_normal(struct op_run *r, int i, struct ferry_rng *rng, int64_t n,
                                   float sc) {
  return op_upload_normal_at(r, i, rng, n, sc, 0);
}

// nrows quantized rows of n: a few distinct random rows (quantizing 150k rows with the
// reference quantizer would dominate the test time), placed in a shuffled order.
static inline void *op_make_weights(struct ferry_rng *rng, enum ferry_type t, int64_t nrows,
                                    int64_t n, size_t *bytes_out) {
  const struct ferry_type_info *ti = ferry_type_info(t);
  const size_t rb = (size_t)ferry_row_bytes(ti, (uint64_t)n);
  const int64_t nd = nrows < 48 ? nrows : 48;
  uint8_t *distinct = malloc(rb * (size_t)nd);
  uint8_t *w = malloc(rb * (size_t)nrows);
  float *row = malloc((size_t)n * sizeof(float));
  FERRY_ASSERT(distinct && w && row);
  for (int64_t i = 0; i < nd; i++) {
    op_fill_normal(rng, row, n, 0.05f);
    cpu_quantize_row(t, row, distinct + (size_t)i * rb, n);
  }
  const uint64_t salt = ferry_rng_u64(rng);
  for (int64_t r = 0; r < nrows; r++)
    memcpy(w + (size_t)r * rb, distinct + (size_t)((r * 7 + salt) % (uint64_t)nd) * rb, rb);
  free(row);
  free(distinct);
  *bytes_out = rb * (size_t)nrows;
  return w;
}

static inline int op_upload_weights_at(struct op_run *r, int i, struct ferry_rng *rng,
                                       enum ferry_type t, int64_t nrows, int64_t n, size_t off) {
  size_t bytes;
  void *h = op_make_weights(rng, t, nrows, n, &bytes);
  int rc = op_upload_at(r, i, h, bytes, off);
  if (!rc) rc = r->be->ops.stream_sync(r->be, NULL);
  free(h);
  return rc;
}

static inline size_t op_kv_row_bytes(enum ferry_type t, int64_t elems) {
  return t == FT_F32   ? (size_t)elems * 4
         : t == FT_F16 ? (size_t)elems * 2
                       : (size_t)elems / 32 * 34;
}

static inline int op_upload_weights(struct op_run *r, int i, struct ferry_rng *rng,
                                    enum ferry_type t, int64_t nrows, int64_t n) {
  return op_upload_weights_at(r, i, rng, t, nrows, n, 0);
}

// A KV cache of n_pos rows built on the host with the CPU store, then uploaded, so both
// backends read identical bytes.
static inline int op_upload_cache(struct op_run *r, int i, struct ferry_rng *rng, enum ferry_type t,
                                  int64_t n_pos, int64_t stride, int64_t used) {
  const size_t bytes = op_kv_row_bytes(t, stride) * (size_t)n_pos;
  void *h = calloc(1, bytes ? bytes : 1);
  float *src = malloc((size_t)(n_pos * used) * sizeof(float));
  FERRY_ASSERT(h && src);
  op_fill_normal(rng, src, n_pos * used, 1.0f);
  int rc = cpu_kv_store(h, t, stride, 0, n_pos, src, used);
  if (!rc) rc = op_upload(r, i, h, bytes);
  if (!rc) rc = r->be->ops.stream_sync(r->be, NULL);
  free(src);
  free(h);
  return rc;
}

static inline void op_run_destroy(struct op_run *r) {
  if (!r) return;
  for (int i = 0; i < OPR_MAXBUF; i++) r->be->ops.mem_free(r->be, r->d[i]);
  free(r->wptr);
  free(r->offs);
  free(r);
}

// Builds the inputs of case c on backend be from seed (same seed -> same inputs on every
// backend). Returns 0 or a negative code.
static inline int op_run_setup(struct op_run **out, const struct op_case *c,
                               struct ferry_backend *be, uint64_t seed) {
  *out = NULL;
  struct op_run *r = calloc(1, sizeof(*r));
  if (!r) return -ENOMEM;
  r->c = c;
  r->be = be;
  struct ferry_rng rng;
  ferry_rng_seed(&rng, seed);
  const int64_t *p = c->p;
  int rc = 0;
  switch (c->op) {
    case FERRY_OP_DEQUANT:
      rc = op_upload_weights(r, 0, &rng, c->type, 1, p[0]);
      if (!rc) rc = op_upload(r, 1, NULL, (size_t)p[0] * 4);
      break;
    case FERRY_OP_MATVEC: // p2: W and x 4 bytes past 16-byte alignment
      rc = op_upload_weights_at(r, 0, &rng, c->type, p[0], p[1], p[2] ? 4 : 0);
      if (!rc) rc = op_upload_normal_at(r, 1, &rng, p[1], 1.0f, p[2] ? 4 : 0);
      if (!rc) rc = op_upload(r, 2, NULL, (size_t)p[0] * 4);
      break;
    case FERRY_OP_MATMUL:
      rc = op_upload_weights(r, 0, &rng, c->type, p[0], p[1]);
      if (!rc) rc = op_upload_normal(r, 1, &rng, p[2] * (p[1] + p[3]), 1.0f);
      if (!rc) rc = op_upload(r, 2, NULL, (size_t)(p[2] * (p[0] + p[4])) * 4);
      break;
    case FERRY_OP_MATMUL_GROUPED: {
      const int64_t nrows = p[0], n = p[1], n_tok = p[2], n_group = p[3], k = p[4];
      const struct ferry_type_info *ti = ferry_type_info(c->type);
      const size_t eb = (size_t)ferry_row_bytes(ti, (uint64_t)n) * (size_t)nrows;
      rc = op_upload_weights(r, 0, &rng, c->type, nrows * n_group, n);
      if (rc) break;
      r->wptr = malloc((size_t)n_group * sizeof(void *));
      r->offs = calloc((size_t)n_group + 1, sizeof(int64_t));
      int32_t *rows = malloc((size_t)(n_tok * k) * sizeof(int32_t));
      int *pick = malloc((size_t)(n_tok * k) * sizeof(int));
      FERRY_ASSERT(r->wptr && r->offs && rows && pick);
      for (int64_t g = 0; g < n_group; g++) r->wptr[g] = (const uint8_t *)r->v[0] + (size_t)g * eb;
      // Each token picks k distinct experts, like a router.
      for (int64_t t = 0; t < n_tok; t++)
        for (int64_t j = 0; j < k; j++) {
          int e;
          bool dup;
          do {
            e = (int)(ferry_rng_u64(&rng) % (uint64_t)n_group);
            dup = false;
            for (int64_t q = 0; q < j; q++) dup |= pick[t * k + q] == e;
          } while (dup);
          pick[t * k + j] = e;
        }
      int64_t i = 0;
      for (int64_t g = 0; g < n_group; g++) {
        r->offs[g] = i;
        for (int64_t t = 0; t < n_tok; t++)
          for (int64_t j = 0; j < k; j++)
            if (pick[t * k + j] == g) rows[i++] = (int32_t)t;
      }
      r->offs[n_group] = i;
      r->total = i;
      rc = op_upload_normal(r, 1, &rng, n_tok * n, 1.0f);
      if (!rc) rc = op_upload(r, 2, rows, (size_t)i * sizeof(int32_t));
      if (!rc) rc = be->ops.stream_sync(be, NULL);
      if (!rc) rc = op_upload(r, 3, NULL, (size_t)(i * nrows) * 4);
      free(rows);
      free(pick);
      break;
    }
    case FERRY_OP_RMSNORM:
      rc = op_upload_normal(r, 0, &rng, p[0] * p[1], 2.0f);
      if (!rc) rc = op_upload_normal(r, 1, &rng, p[1], 1.0f);
      if (!rc && !p[2]) rc = op_upload(r, 2, NULL, (size_t)(p[0] * p[1]) * 4);
      break;
    case FERRY_OP_ROPE_NEOX: rc = op_upload_normal(r, 0, &rng, p[0] * p[1] * p[2], 1.0f); break;
    case FERRY_OP_KV_STORE:
      rc = op_upload_normal(r, 0, &rng, p[0] * p[1], 3.0f);
      if (!rc) rc = op_upload(r, 1, NULL, op_kv_row_bytes(c->type, p[2]) * (size_t)(p[3] + p[0]));
      break;
    case FERRY_OP_ATTN_DECODE: {
      const int64_t stride = p[2] * p[3] + p[4];
      rc = op_upload_normal(r, 0, &rng, p[1] * p[3], 1.0f);
      if (!rc) rc = op_upload_cache(r, 1, &rng, c->type, p[0], stride, p[2] * p[3]);
      if (!rc) rc = op_upload_cache(r, 2, &rng, c->type, p[0], stride, p[2] * p[3]);
      if (!rc) rc = op_upload(r, 3, NULL, (size_t)(p[1] * p[3]) * 4);
      break;
    }
    case FERRY_OP_ATTN_PREFILL: {
      const int64_t stride = p[3] * p[4], n_pos = p[1] + p[0];
      rc = op_upload_normal(r, 0, &rng, p[0] * p[2] * p[4], 1.0f);
      if (!rc) rc = op_upload_cache(r, 1, &rng, c->type, n_pos, stride, stride);
      if (!rc) rc = op_upload_cache(r, 2, &rng, c->type, n_pos, stride, stride);
      if (!rc) rc = op_upload(r, 3, NULL, (size_t)(p[0] * p[2] * p[4]) * 4);
      break;
    }
    case FERRY_OP_SWIGLU:
    case FERRY_OP_ADD:
    case FERRY_OP_SCALE:
    case FERRY_OP_AXPY:
    case FERRY_OP_SIGMOID_MUL:
      rc = op_upload_normal(r, 0, &rng, p[0], 3.0f);
      if (!rc) rc = op_upload_normal(r, 1, &rng, p[0], 3.0f);
      if (!rc) rc = op_upload_normal(r, 2, &rng, p[0], 1.0f);
      break;
    case FERRY_OP_ROUTER_TOPK: {
      float *h = malloc((size_t)(p[0] * p[1]) * sizeof(float));
      FERRY_ASSERT(h);
      op_fill_normal(&rng, h, p[0] * p[1], 2.0f);
      if (p[3]) // a handful of distinct values: many exact ties, lower index must win
        for (int64_t i = 0; i < p[0] * p[1]; i++) h[i] = floorf(h[i]) * 0.5f;
      rc = op_upload(r, 0, h, (size_t)(p[0] * p[1]) * 4);
      if (!rc) rc = be->ops.stream_sync(be, NULL);
      free(h);
      if (!rc) rc = op_upload(r, 1, NULL, (size_t)(p[0] * p[2]) * sizeof(int));
      if (!rc) rc = op_upload(r, 2, NULL, (size_t)(p[0] * p[2]) * 4);
      break;
    }
    default: rc = ferry_fail(-EINVAL, "op table: no input maker for op %d", (int)c->op);
  }
  if (!rc) rc = be->ops.stream_sync(be, NULL);
  if (rc) {
    op_run_destroy(r);
    return rc;
  }
  *out = r;
  return 0;
}

// Runs the op once on stream s (asynchronous on CUDA). In-place ops (rope, axpy,
// in-place rmsnorm) change their input, so a second invoke computes something else; the
// benchmark does not care, the comparison invokes once.
static inline int op_run_invoke(struct op_run *r, struct ferry_stream *s) {
  const struct op_case *c = r->c;
  const struct ferry_backend_ops *o = &r->be->ops;
  struct ferry_backend *be = r->be;
  const int64_t *p = c->p;
  void **d = r->v;
  switch (c->op) {
    case FERRY_OP_DEQUANT: return o->dequant(be, c->type, d[0], d[1], p[0], s);
    case FERRY_OP_MATVEC: return o->matvec(be, c->type, d[0], p[0], p[1], d[1], d[2], s);
    case FERRY_OP_MATMUL:
      return o->matmul(be, c->type, d[0], p[0], p[1], d[1], p[1] + p[3], p[2], d[2], p[0] + p[4],
                       s);
    case FERRY_OP_MATMUL_GROUPED:
      return o->matmul_grouped(be, c->type, r->wptr, p[3], p[0], p[1], d[1], p[1], d[2], r->offs,
                               d[3], p[0], s);
    case FERRY_OP_RMSNORM:
      return o->rmsnorm(be, p[2] ? d[0] : d[2], d[0], d[1], p[0], p[1], 1e-6f, s);
    case FERRY_OP_ROPE_NEOX: return o->rope_neox(be, d[0], p[0], p[1], p[2], p[3], p[4], 1e7f, s);
    case FERRY_OP_KV_STORE: return o->kv_store(be, d[1], c->type, p[2], p[3], p[0], d[0], p[1], s);
    case FERRY_OP_ATTN_DECODE:
      return o->attn_decode(be, d[3], d[0], d[1], d[2], c->type, p[0], p[1], p[2], p[3],
                            p[2] * p[3] + p[4], 1.0f / sqrtf((float)p[3]), s);
    case FERRY_OP_ATTN_PREFILL:
      return o->attn_prefill(be, d[3], d[0], d[1], d[2], c->type, p[0], p[1], p[2], p[3], p[4],
                             p[3] * p[4], 1.0f / sqrtf((float)p[4]), s);
    case FERRY_OP_SWIGLU: return o->swiglu(be, d[2], d[0], d[1], p[0], s);
    case FERRY_OP_ADD: return o->add(be, d[2], d[0], d[1], p[0], s);
    case FERRY_OP_SCALE: return o->scale(be, d[2], d[0], 0.37f, p[0], s);
    case FERRY_OP_AXPY: return o->axpy(be, d[2], d[0], -1.25f, p[0], s);
    case FERRY_OP_SIGMOID_MUL: return o->sigmoid_mul(be, d[2], d[0], d[1], p[0], s);
    case FERRY_OP_ROUTER_TOPK: return o->router_topk(be, d[0], p[0], p[1], p[2], d[1], d[2], s);
    default: return ferry_fail(-EINVAL, "op table: no invoker for op %d", (int)c->op);
  }
}

static inline int op_download(struct op_run *r, int i, void *h, size_t bytes) {
  int rc = r->be->ops.copy_d2h(r->be, h, r->v[i], bytes, NULL);
  return rc ? rc : r->be->ops.stream_sync(r->be, NULL);
}

// The op's result as floats (malloc'd, caller frees). Waits for the device.
static inline int op_run_output(struct op_run *r, float **out, int64_t *n_out) {
  const struct op_case *c = r->c;
  const int64_t *p = c->p;
  int rc = r->be->ops.stream_sync(r->be, NULL);
  if (rc) return rc;
  int idx;
  int64_t n;
  switch (c->op) {
    case FERRY_OP_DEQUANT: idx = 1, n = p[0]; break;
    case FERRY_OP_MATVEC: idx = 2, n = p[0]; break;
    case FERRY_OP_MATMUL: idx = 2, n = p[2] * (p[0] + p[4]); break;
    case FERRY_OP_MATMUL_GROUPED: idx = 3, n = r->total * p[0]; break;
    case FERRY_OP_RMSNORM: idx = p[2] ? 0 : 2, n = p[0] * p[1]; break;
    case FERRY_OP_ROPE_NEOX: idx = 0, n = p[0] * p[1] * p[2]; break;
    case FERRY_OP_ATTN_DECODE: idx = 3, n = p[1] * p[3]; break;
    case FERRY_OP_ATTN_PREFILL: idx = 3, n = p[0] * p[2] * p[4]; break;
    case FERRY_OP_SWIGLU:
    case FERRY_OP_ADD:
    case FERRY_OP_SCALE:
    case FERRY_OP_AXPY:
    case FERRY_OP_SIGMOID_MUL: idx = 2, n = p[0]; break;
    case FERRY_OP_KV_STORE: { // the whole cache, decoded
      const int64_t n_pos = p[3] + p[0], stride = p[2];
      const size_t rb = op_kv_row_bytes(c->type, stride);
      uint8_t *h = malloc(rb * (size_t)n_pos);
      float *f = malloc((size_t)(n_pos * stride) * sizeof(float));
      FERRY_ASSERT(h && f);
      rc = op_download(r, 1, h, rb * (size_t)n_pos);
      for (int64_t i = 0; !rc && i < n_pos; i++)
        cpu_dequant_row(c->type, h + (size_t)i * rb, f + i * stride, stride);
      free(h);
      if (rc) {
        free(f);
        return rc;
      }
      *out = f;
      *n_out = n_pos * stride;
      return 0;
    }
    case FERRY_OP_ROUTER_TOPK: { // weights, then ids as floats
      const int64_t m = p[0] * p[2];
      float *f = malloc((size_t)(2 * m) * sizeof(float));
      int *ids = malloc((size_t)m * sizeof(int));
      FERRY_ASSERT(f && ids);
      rc = op_download(r, 2, f, (size_t)m * 4);
      if (!rc) rc = op_download(r, 1, ids, (size_t)m * sizeof(int));
      for (int64_t i = 0; i < m; i++) f[m + i] = (float)ids[i];
      free(ids);
      if (rc) {
        free(f);
        return rc;
      }
      *out = f;
      *n_out = 2 * m;
      return 0;
    }
    default: return ferry_fail(-EINVAL, "op table: no output for op %d", (int)c->op);
  }
  float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  FERRY_ASSERT(f);
  rc = op_download(r, idx, f, (size_t)n * 4);
  if (rc) {
    free(f);
    return rc;
  }
  *out = f;
  *n_out = n;
  return 0;
}

// Bytes the op reads and writes (all its buffers): the bandwidth figure of the bench.
static inline double op_run_bytes(const struct op_run *r) {
  double b = 0;
  for (int i = 0; i < OPR_MAXBUF; i++) b += (double)r->bytes[i];
  return b;
}

// sqrt(sum (a-ref)^2 / sum ref^2); *finite = false if a holds NaN or Inf.
static inline double op_nerr(const float *a, const float *ref, int64_t n, bool *finite) {
  double num = 0, den = 0;
  *finite = true;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(a[i])) *finite = false;
    const double dlt = (double)a[i] - (double)ref[i];
    num += dlt * dlt;
    den += (double)ref[i] * ref[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

// Error of output a against the reference ref for case c: the normalised error, except
// that router ids (the second half of its output) must match exactly (INFINITY if not).
static inline double op_case_error(const struct op_case *c, const float *a, const float *ref,
                                   int64_t n, bool *finite) {
  if (c->op != FERRY_OP_ROUTER_TOPK) return op_nerr(a, ref, n, finite);
  const int64_t m = n / 2;
  const double e = op_nerr(a, ref, m, finite);
  for (int64_t i = m; i < n; i++)
    if (a[i] != ref[i]) return INFINITY;
  return e;
}

// "matvec q4_K [768 2048] qwen3moe ffn_gate_exps[e]"
static inline void op_case_label(const struct op_case *c, char *buf, size_t n) {
  const struct ferry_type_info *ti = ferry_type_info(c->type);
  int k = 6;
  while (k > 1 && c->p[k - 1] == 0) k--;
  int off = snprintf(buf, n, "%s %s [", ferry_op_name(c->op), ti ? ti->name : "?");
  for (int i = 0; i < k && off < (int)n; i++)
    off += snprintf(buf + off, n - (size_t)off, i ? " %lld" : "%lld", (long long)c->p[i]);
  if (off < (int)n) snprintf(buf + off, n - (size_t)off, "] %s", c->note);
}

// Ops without a case in the table (a new op must come with cases). Returns the count.
static inline int op_table_missing(enum ferry_op *missing) {
  int nm = 0;
  for (int op = 0; op < FERRY_OP_COUNT; op++) {
    bool found = false;
    for (int i = 0; i < G_OP_CASES_N; i++) found |= g_op_cases[i].op == (enum ferry_op)op;
    if (!found) missing[nm++] = (enum ferry_op)op;
  }
  return nm;
}
