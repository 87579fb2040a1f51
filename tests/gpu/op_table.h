// tests/gpu/op_table.h: the one table of op test cases, shared by the backend comparison
// test (tests/gpu/test_ops.c: cuda vs ref), the CPU-side test (tests/unit/test_ops_table.c:
// cpu vs ref, and the completeness checks) and the kernel benchmark (bench/bench_cuda.c).
// A case names an op, a type, a shape, a precision (for the ops that take one) and a
// tolerance; op_run_* builds deterministic random inputs for it on any backend (reserving
// the backend's scratch for the case's shape, positions in backend memory), runs the op,
// and returns the output as floats, so two backends are compared by normalised error on
// identical inputs. Shapes mix awkward sizes (odd rows, tails, padding, tiny contexts,
// exact ties, misaligned pointers) with the real models' shapes (qwen3moe 30B-A3B,
// qwen3next 80B-A3B). Header-only (static functions): each test binary is one source file.
#pragma once
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/backend.h"
#include "kernels/cpu/deltanet.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quants.h"

struct op_case {
  enum ferry_op op;
  enum ferry_type type; // weight type, KV type; FT_F32 where the op has none
  int64_t p[8];         // shape; meaning per op in the table's comments and op_run_setup
  double tol;           // largest normalised error accepted against the reference ("ref")
  const char *note;     // where the shape comes from
  enum ferry_prec prec; // for matmul, moe_ffn, moe_ffn_ids, attn (FAST when not given)
};

// Tolerances against the scalar reference (double sums), by what the backend may differ in:
//   TOL_EXACT   the same formula in F32 (elementwise ops, norms, stores): rounding only
//   TOL_DOT     F32 dot products of thousands of terms (mat-vec, F32 GEMM, attention,
//               the delta rule's state)
//   TOL_GEMM    FAST products: CUDA rounds weights and activations to F16 (2^-11)
//   TOL_CPU_FAST the CPU's FAST products quantize activations to Q8_K / Q8_0 (~1/127 per
//               block of 32 or 256; used instead of the case's tolerance when the CPU runs a
//               FAST case, see op_case_tol)
#define TOL_EXACT    1e-5
#define TOL_DOT      1e-4
#define TOL_GEMM     5e-3
#define TOL_CPU_FAST 3e-2

#define P_EXACT FERRY_PREC_EXACT
#define P_FAST  FERRY_PREC_FAST

// Cases of ops without a precision leave .prec out (FAST).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
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
  // EMBED: p0 = table rows, p1 = d, p2 = ids, p3 = extra bytes per table row
  {FERRY_OP_EMBED, FT_Q6_K, {1000, 2048, 7}, TOL_EXACT, "qwen3moe token_embd q6_K"},
  {FERRY_OP_EMBED, FT_Q4_K, {333, 512, 5, 3}, TOL_EXACT, "padded rows (byte loads)"},
  {FERRY_OP_EMBED, FT_Q8_0, {100, 96, 9}, TOL_EXACT, "q8_0"},
  {FERRY_OP_EMBED, FT_BF16, {50, 130, 4}, TOL_EXACT, "bf16 odd d"},
  {FERRY_OP_EMBED, FT_F32, {64, 2048, 1}, TOL_EXACT, "f32 decode"},
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
  {FERRY_OP_MATVEC, FT_F16, {64, 2048}, TOL_DOT, "f16, vector loads"},
  {FERRY_OP_MATVEC, FT_BF16, {1, 2048}, TOL_DOT, "qwen3next ffn_gate_inp_shexp"},
  {FERRY_OP_MATVEC, FT_Q4_K, {768, 2048}, TOL_DOT, "qwen3moe ffn_gate_exps[e]"},
  {FERRY_OP_MATVEC, FT_Q6_K, {2048, 768}, TOL_DOT, "qwen3moe ffn_down_exps[e]"},
  {FERRY_OP_MATVEC, FT_Q4_K, {4096, 2048}, TOL_DOT, "qwen3moe attn_q"},
  {FERRY_OP_MATVEC, FT_Q5_K, {4096, 2048}, TOL_DOT, "attn_q as q5_K"},
  {FERRY_OP_MATVEC, FT_Q8_0, {512, 2048}, TOL_DOT, "attn_k as q8_0"},
  {FERRY_OP_MATVEC, FT_F32, {128, 2048}, TOL_DOT, "qwen3moe ffn_gate_inp (router)"},
  {FERRY_OP_MATVEC, FT_F32, {512, 2048}, TOL_DOT, "qwen3next ffn_gate_inp (router)"},
  {FERRY_OP_MATVEC, FT_Q6_K, {151936, 2048}, TOL_DOT, "output (lm head)"},
  {FERRY_OP_MATVEC, FT_Q4_K, {64, 512, 1}, TOL_DOT, "misaligned"},
  {FERRY_OP_MATVEC, FT_Q5_K, {19, 256, 1}, TOL_DOT, "misaligned"},
  {FERRY_OP_MATVEC, FT_Q6_K, {33, 256, 1}, TOL_DOT, "misaligned"},
  {FERRY_OP_MATVEC, FT_Q3_K, {9, 512, 1}, TOL_DOT, "misaligned"},
  {FERRY_OP_MATVEC, FT_Q2_K, {9, 512, 1}, TOL_DOT, "misaligned"},
  {FERRY_OP_MATVEC, FT_Q8_0, {21, 64, 1}, TOL_DOT, "misaligned"},
  {FERRY_OP_MATVEC, FT_Q4_0, {21, 64, 1}, TOL_DOT, "misaligned"},
  {FERRY_OP_MATVEC, FT_F32, {17, 64, 1}, TOL_DOT, "misaligned"},
  {FERRY_OP_MATVEC, FT_BF16, {17, 64, 1}, TOL_DOT, "misaligned"},
  // MATMUL: p0 = rows, p1 = n, p2 = m tokens, p3 = extra X row stride, p4 = extra Y stride
  {FERRY_OP_MATMUL, FT_Q4_K, {67, 512, 5, 3, 1}, TOL_DOT, "odd, padded strides", P_EXACT},
  {FERRY_OP_MATMUL, FT_Q4_K, {67, 512, 5, 3, 1}, TOL_GEMM, "odd, padded strides", P_FAST},
  {FERRY_OP_MATMUL, FT_Q5_K, {45, 256, 7}, TOL_GEMM, "odd", P_FAST},
  {FERRY_OP_MATMUL, FT_Q6_K, {63, 768, 4}, TOL_DOT, "odd", P_EXACT},
  {FERRY_OP_MATMUL, FT_Q6_K, {63, 768, 4}, TOL_GEMM, "odd", P_FAST},
  {FERRY_OP_MATMUL, FT_Q3_K, {33, 512, 3}, TOL_GEMM, "odd", P_FAST},
  {FERRY_OP_MATMUL, FT_Q2_K, {31, 256, 9}, TOL_DOT, "odd", P_EXACT},
  {FERRY_OP_MATMUL, FT_Q8_0, {37, 96, 6}, TOL_GEMM, "odd", P_FAST},
  {FERRY_OP_MATMUL, FT_Q8_0, {37, 96, 6}, TOL_DOT, "odd", P_EXACT},
  {FERRY_OP_MATMUL, FT_Q4_0, {39, 64, 5}, TOL_GEMM, "odd", P_FAST},
  {FERRY_OP_MATMUL, FT_F32, {19, 100, 11, 5, 2}, TOL_DOT, "f32 padded", P_FAST},
  {FERRY_OP_MATMUL, FT_F32, {19, 100, 11, 5, 2}, TOL_DOT, "f32 padded", P_EXACT},
  {FERRY_OP_MATMUL, FT_F16, {21, 130, 8}, TOL_GEMM, "f16", P_FAST},
  {FERRY_OP_MATMUL, FT_F16, {21, 130, 8}, TOL_DOT, "f16", P_EXACT},
  {FERRY_OP_MATMUL, FT_BF16, {3, 2048, 9}, TOL_DOT, "bf16 (shexp gate, prefill)", P_FAST},
  {FERRY_OP_MATMUL, FT_Q4_K, {768, 2048, 1}, TOL_DOT, "m=1 -> mat-vec path", P_FAST},
  {FERRY_OP_MATMUL, FT_Q4_K, {768, 2048, 2, 7, 3}, TOL_DOT, "m=2 -> mat-vec, padded", P_EXACT},
  {FERRY_OP_MATMUL, FT_Q4_K, {4096, 2048, 37}, TOL_GEMM, "qwen3moe attn_q prefill", P_FAST},
  {FERRY_OP_MATMUL, FT_Q4_K, {4096, 2048, 37}, TOL_DOT, "qwen3moe attn_q prefill", P_EXACT},
  {FERRY_OP_MATMUL, FT_Q6_K, {2048, 4096, 16}, TOL_GEMM, "qwen3next attn_output prefill", P_FAST},
  {FERRY_OP_MATMUL, FT_Q4_K, {4096, 2048, 512}, TOL_GEMM, "qwen3moe attn_q pp512", P_FAST},
  {FERRY_OP_MATMUL, FT_Q6_K, {151936, 2048, 4}, TOL_GEMM, "lm head, 4 tokens (tiles)", P_FAST},
  {FERRY_OP_MATMUL, FT_F32, {128, 2048, 33}, TOL_DOT, "router prefill", P_FAST},
  // MATMUL_GROUPED (exact): p0 = rows, p1 = n, p2 = tokens, p3 = experts, p4 = top-k
  {FERRY_OP_MATMUL_GROUPED, FT_Q4_K, {67, 256, 9, 5, 2}, TOL_DOT, "odd, groups of 0..9"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q8_0, {35, 64, 13, 7, 3}, TOL_DOT, "odd"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q6_K, {33, 512, 6, 3, 3}, TOL_DOT, "every token in every group"},
  {FERRY_OP_MATMUL_GROUPED, FT_F16, {29, 96, 11, 4, 2}, TOL_DOT, "f16"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q4_K, {37, 256, 40, 64, 2}, TOL_DOT, "over 64 one-token items"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q4_K, {768, 2048, 1, 128, 8}, TOL_DOT, "qwen3moe decode experts"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q4_K, {512, 2048, 1, 512, 10}, TOL_DOT, "qwen3next decode experts"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q4_K, {768, 2048, 33, 128, 8}, TOL_DOT, "qwen3moe gate/up prefill"},
  {FERRY_OP_MATMUL_GROUPED, FT_Q6_K, {2048, 768, 21, 128, 8}, TOL_DOT, "qwen3moe down prefill"},
  // MOE_FFN / MOE_FFN_IDS: p0 = d, p1 = ff, p2 = tokens, p3 = experts, p4 = top-k,
  // p5 = down type (0: as gate), p6 = moe_ffn in two calls with disjoint groups,
  // p7 = up type (0: as gate)
  {FERRY_OP_MOE_FFN, FT_Q4_K, {256, 64, 1, 6, 3, FT_Q8_0}, TOL_DOT, "decode, tiny", P_EXACT},
  {FERRY_OP_MOE_FFN, FT_Q4_K, {256, 64, 9, 4, 2, FT_Q8_0, 1}, TOL_DOT, "groups 1..9, two calls", P_EXACT},
  {FERRY_OP_MOE_FFN, FT_Q4_K, {256, 64, 9, 4, 2, FT_Q8_0, 1}, TOL_GEMM, "groups 1..9, two calls", P_FAST},
  {FERRY_OP_MOE_FFN, FT_Q8_0, {96, 256, 7, 5, 3, FT_Q6_K}, TOL_GEMM, "q8_0 / q6_K down", P_FAST},
  {FERRY_OP_MOE_FFN, FT_Q4_K, {256, 256, 5, 3, 2, FT_Q6_K, 0, FT_Q5_K}, TOL_DOT, "gate, up types differ", P_EXACT},
  {FERRY_OP_MOE_FFN, FT_Q4_K, {256, 256, 5, 3, 2, FT_Q6_K, 0, FT_Q5_K}, TOL_GEMM, "gate, up types differ (F16 tiles)", P_FAST},
  {FERRY_OP_MOE_FFN, FT_BF16, {96, 64, 6, 2, 2}, TOL_GEMM, "bf16 experts, tensor-core path", P_FAST},
  {FERRY_OP_MOE_FFN, FT_F16, {64, 48, 2, 4, 2}, TOL_DOT, "f16, groups of 1-2", P_FAST},
  {FERRY_OP_MOE_FFN, FT_Q4_K, {2048, 768, 1, 32, 8, FT_Q6_K}, TOL_DOT, "qwen3moe decode", P_FAST},
  {FERRY_OP_MOE_FFN, FT_Q4_K, {2048, 768, 64, 16, 8, FT_Q6_K, 1}, TOL_GEMM, "qwen3moe prefill", P_FAST},
  {FERRY_OP_MOE_FFN, FT_Q4_K, {2048, 768, 64, 16, 8, FT_Q6_K}, TOL_DOT, "qwen3moe prefill", P_EXACT},
  {FERRY_OP_MOE_FFN, FT_Q4_K, {2048, 512, 1, 64, 10}, TOL_DOT, "qwen3next decode", P_FAST},
  {FERRY_OP_MOE_FFN_IDS, FT_Q4_K, {256, 64, 1, 6, 3, FT_Q8_0}, TOL_DOT, "decode, tiny", P_EXACT},
  {FERRY_OP_MOE_FFN_IDS, FT_Q4_K, {256, 64, 2, 6, 3, FT_Q8_0}, TOL_DOT, "2 tokens: device path", P_FAST},
  {FERRY_OP_MOE_FFN_IDS, FT_Q4_K, {256, 64, 9, 4, 2, FT_Q8_0}, TOL_DOT, "host grouping", P_EXACT},
  {FERRY_OP_MOE_FFN_IDS, FT_Q4_K, {256, 64, 9, 4, 2, FT_Q8_0}, TOL_GEMM, "host grouping", P_FAST},
  {FERRY_OP_MOE_FFN_IDS, FT_Q4_K, {256, 256, 2, 3, 2, FT_Q6_K, 0, FT_Q5_K}, TOL_DOT, "gate, up types differ", P_EXACT},
  {FERRY_OP_MOE_FFN_IDS, FT_Q4_K, {2048, 768, 1, 32, 8, FT_Q6_K}, TOL_DOT, "qwen3moe decode", P_FAST},
  {FERRY_OP_MOE_FFN_IDS, FT_Q4_K, {2048, 768, 33, 16, 8, FT_Q6_K}, TOL_GEMM, "qwen3moe prefill", P_FAST},
  {FERRY_OP_MOE_FFN_IDS, FT_Q4_K, {2048, 512, 1, 64, 10}, TOL_DOT, "qwen3next decode", P_EXACT},
  // MOE_COMBINE: p0 = tokens, p1 = k, p2 = d, p3 = with a map (else NULL)
  {FERRY_OP_MOE_COMBINE, FT_F32, {1, 8, 2048, 1}, TOL_EXACT, "qwen3moe decode"},
  {FERRY_OP_MOE_COMBINE, FT_F32, {7, 10, 2048, 1}, TOL_EXACT, "qwen3next prefill"},
  {FERRY_OP_MOE_COMBINE, FT_F32, {5, 3, 101, 0}, TOL_EXACT, "odd, no map"},
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
  {FERRY_OP_KV_STORE, FT_Q8_0, {4, 512, 512, 3}, TOL_EXACT, "q8_0 (reference quantizer)"},
  {FERRY_OP_KV_STORE, FT_Q8_0, {1, 256, 288, 17}, TOL_EXACT, "q8_0 decode, padded row"},
  // ATTN: p0 = queries, p1 = pos0, p2 = heads, p3 = KV heads, p4 = head_dim, p5 = row padding
  {FERRY_OP_ATTN, FT_F16, {1, 36, 32, 4, 128}, TOL_DOT, "qwen3moe decode", P_FAST},
  {FERRY_OP_ATTN, FT_Q8_0, {1, 299, 32, 4, 128}, TOL_DOT, "qwen3moe q8_0 KV", P_EXACT},
  {FERRY_OP_ATTN, FT_F16, {1, 999, 16, 2, 256}, TOL_DOT, "qwen3next full attention", P_FAST},
  {FERRY_OP_ATTN, FT_Q8_0, {1, 2047, 32, 4, 128}, TOL_DOT, "qwen3moe q8_0 KV, long", P_FAST},
  {FERRY_OP_ATTN, FT_F16, {1, 8191, 32, 4, 128}, TOL_DOT, "qwen3moe decode at 8k", P_EXACT},
  {FERRY_OP_ATTN, FT_F32, {1, 699, 6, 3, 40, 8}, TOL_DOT, "odd, long", P_EXACT},
  {FERRY_OP_ATTN, FT_F32, {1, 0, 4, 2, 64}, TOL_DOT, "one position", P_FAST},
  {FERRY_OP_ATTN, FT_F32, {1, 4, 6, 3, 40, 8}, TOL_DOT, "odd head_dim, padded rows", P_EXACT},
  {FERRY_OP_ATTN, FT_Q8_0, {1, 2, 8, 8, 96, 32}, TOL_DOT, "no GQA, padded", P_FAST},
  {FERRY_OP_ATTN, FT_F16, {17, 0, 32, 4, 128}, TOL_DOT, "qwen3moe prompt", P_FAST},
  {FERRY_OP_ATTN, FT_Q8_0, {9, 20, 16, 2, 256}, TOL_DOT, "qwen3next chunk after 20", P_EXACT},
  {FERRY_OP_ATTN, FT_F32, {5, 3, 6, 2, 40, 4}, TOL_DOT, "odd, padded", P_EXACT},
  {FERRY_OP_ATTN, FT_F16, {64, 448, 32, 4, 128}, TOL_DOT, "qwen3moe prefill chunk at 448", P_FAST},
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
  // GATE_ADD_ROWS: p0 = rows, p1 = d
  {FERRY_OP_GATE_ADD_ROWS, FT_F32, {1, 2048}, TOL_EXACT, "qwen3next shared expert decode"},
  {FERRY_OP_GATE_ADD_ROWS, FT_F32, {9, 1001}, TOL_EXACT, "odd"},
  // COPY2D: p0 = rows, p1 = columns, p2 = extra source stride, p3 = extra destination stride
  {FERRY_OP_COPY2D, FT_F32, {16, 256, 256, 0}, TOL_EXACT, "qwen3next query | gate split"},
  {FERRY_OP_COPY2D, FT_F32, {7, 33, 5, 3}, TOL_EXACT, "odd"},
  // ROUTER_TOPK: p0 = tokens, p1 = experts, p2 = k, p3 = discrete logits (exact ties)
  {FERRY_OP_ROUTER_TOPK, FT_F32, {1, 128, 8}, TOL_DOT, "qwen3moe decode"},
  {FERRY_OP_ROUTER_TOPK, FT_F32, {13, 128, 8}, TOL_DOT, "qwen3moe prefill"},
  {FERRY_OP_ROUTER_TOPK, FT_F32, {3, 512, 10}, TOL_DOT, "qwen3next"},
  {FERRY_OP_ROUTER_TOPK, FT_F32, {5, 60, 7, 1}, TOL_DOT, "odd, many exact ties"},
  {FERRY_OP_ROUTER_TOPK, FT_F32, {2, 1000, 3}, TOL_DOT, "1000 experts"},
  {FERRY_OP_ROUTER_TOPK, FT_F32, {4, 33, 33, 1}, TOL_DOT, "k = n_expert, ties"},
  // SSM_CONV: p0 = tokens, p1 = channels, p2 = K, p3 = SiLU
  {FERRY_OP_SSM_CONV, FT_F32, {1, 8192, 4, 1}, TOL_EXACT, "qwen3next decode step"},
  {FERRY_OP_SSM_CONV, FT_F32, {37, 8192, 4, 1}, TOL_EXACT, "qwen3next prefill"},
  {FERRY_OP_SSM_CONV, FT_F32, {2, 100, 4, 0}, TOL_EXACT, "T < K-1, no SiLU"},
  {FERRY_OP_SSM_CONV, FT_F32, {5, 33, 7, 1}, TOL_EXACT, "K = 7"},
  {FERRY_OP_SSM_CONV, FT_F32, {3, 17, 1, 1}, TOL_EXACT, "K = 1 (no state)"},
  // L2NORM_HEADS: p0 = tokens, p1 = heads, p2 = d, p3 = extra row stride
  {FERRY_OP_L2NORM_HEADS, FT_F32, {1, 16, 128, 4096}, TOL_EXACT, "qwen3next q in the conv row"},
  {FERRY_OP_L2NORM_HEADS, FT_F32, {7, 3, 20, 5}, TOL_EXACT, "odd"},
  // DELTA_GATES: p0 = tokens, p1 = v-heads
  {FERRY_OP_DELTA_GATES, FT_F32, {1, 32}, TOL_EXACT, "qwen3next decode"},
  {FERRY_OP_DELTA_GATES, FT_F32, {37, 32}, TOL_EXACT, "prefill"},
  // DELTA_RULE: p0 = tokens, p1 = Hk, p2 = Hv, p3 = dk, p4 = dv, p5 = q, k, v read in
  // place from conv output rows [q | k | v] (else contiguous), p6 = extra output stride
  {FERRY_OP_DELTA_RULE, FT_F32, {1, 16, 32, 128, 128, 1}, TOL_DOT, "qwen3next decode step"},
  {FERRY_OP_DELTA_RULE, FT_F32, {64, 16, 32, 128, 128, 1}, TOL_DOT, "qwen3next prefill chunk"},
  {FERRY_OP_DELTA_RULE, FT_F32, {21, 2, 4, 16, 16, 0, 3}, TOL_DOT, "fixture heads"},
  {FERRY_OP_DELTA_RULE, FT_F32, {40, 2, 4, 64, 64, 1}, TOL_DOT, "fixture heads 64"},
  {FERRY_OP_DELTA_RULE, FT_F32, {5, 1, 3, 40, 72, 0, 1}, TOL_DOT, "odd dims"},
  {FERRY_OP_DELTA_RULE, FT_F32, {3, 1, 1, 256, 32, 0}, TOL_DOT, "dk = 256"},
  // GATED_RMSNORM: p0 = heads (tokens x v-heads), p1 = d
  {FERRY_OP_GATED_RMSNORM, FT_F32, {32, 128}, TOL_EXACT, "qwen3next decode"},
  {FERRY_OP_GATED_RMSNORM, FT_F32, {7 * 4, 40}, TOL_EXACT, "odd"},
  // SSM_IN_REGROUP: p0 = tokens, p1 = nk, p2 = nv, p3 = dk, p4 = dv
  {FERRY_OP_SSM_IN_REGROUP, FT_F32, {2, 16, 32, 128, 128}, TOL_EXACT, "qwen3next legacy ssm_in"},
  {FERRY_OP_SSM_IN_REGROUP, FT_F32, {3, 2, 6, 5, 7}, TOL_EXACT, "odd"},
  // SSM_BA_REGROUP: p0 = tokens, p1 = nk, p2 = nv
  {FERRY_OP_SSM_BA_REGROUP, FT_F32, {3, 16, 32}, TOL_EXACT, "qwen3next legacy ssm_ba"},
  {FERRY_OP_SSM_BA_REGROUP, FT_F32, {2, 2, 6}, TOL_EXACT, "odd"},
};
// clang-format on
#pragma GCC diagnostic pop
#define G_OP_CASES_N ((int)(sizeof g_op_cases / sizeof g_op_cases[0]))

// Whether op takes an enum ferry_prec.
static inline bool op_has_prec(enum ferry_op op) {
  return op == FERRY_OP_MATMUL || op == FERRY_OP_MOE_FFN || op == FERRY_OP_MOE_FFN_IDS ||
         op == FERRY_OP_ATTN;
}

// Tolerance of case c on backend be: the case's, widened for the CPU's FAST products
// (quantized activations) where the op has a precision.
static inline double op_case_tol(const struct op_case *c, const struct ferry_backend *be) {
  if (be->kind == FERRY_BACKEND_CPU && op_has_prec(c->op) && c->prec == FERRY_PREC_FAST &&
      c->op != FERRY_OP_ATTN && c->tol < TOL_CPU_FAST)
    return TOL_CPU_FAST;
  return c->tol;
}

// ---- running one case on one backend ----

#define OPR_MAXBUF 10

struct op_run {
  const struct op_case *c;
  struct ferry_backend *be;
  void *d[OPR_MAXBUF]; // backend buffers
  void *v[OPR_MAXBUF]; // what the op gets: d[i] + an offset (misaligned cases)
  size_t bytes[OPR_MAXBUF];
  double touched;                 // bytes the op reads and writes (bench bandwidth)
  const void **wptr;              // grouped: host array of expert pointers
  int64_t *offs;                  // grouped: host offsets
  int64_t total;                  // grouped, moe: (token, expert) pairs
  struct ferry_moe_group *groups; // moe: host groups
  int n_group;
  int32_t *pair_row; // moe: host, grouped row of pair p (token p/k, slot p%k)
};

static inline void op_fill_normal(struct ferry_rng *r, float *x, int64_t n, float scale) {
  for (int64_t i = 0; i < n; i++) x[i] = scale * ferry_rng_normal(r);
}

// Buffer i of `bytes` at byte offset `off` inside a fresh allocation, filled from h (or
// zeroed when h is NULL). Waits for the copy, so h may be freed afterwards.
static inline int op_upload_at(struct op_run *r, int i, const void *h, size_t bytes, size_t off) {
  int rc = r->be->ops.mem_alloc(r->be, &r->d[i], bytes + off + 1);
  if (rc) return rc;
  r->v[i] = (uint8_t *)r->d[i] + off;
  r->bytes[i] = bytes;
  rc = h ? r->be->ops.copy_h2d(r->be, r->v[i], h, bytes, NULL)
         : r->be->ops.memset0(r->be, r->v[i], bytes, NULL);
  return rc ? rc : r->be->ops.stream_sync(r->be, NULL);
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
  free(h);
  return rc;
}

static inline int op_upload_normal(struct op_run *r, int i, struct ferry_rng *rng, int64_t n,
                                   float sc) {
  return op_upload_normal_at(r, i, rng, n, sc, 0);
}

static inline int op_upload_i32(struct op_run *r, int i, int32_t v) {
  return op_upload(r, i, &v, sizeof v);
}

// nrows quantized rows of n: nd distinct random rows (quantizing 150k rows with the
// reference quantizer would dominate the test time), placed in a shuffled order.
static inline void *op_make_weights_nd(struct ferry_rng *rng, enum ferry_type t, int64_t nrows,
                                       int64_t n, int64_t nd, size_t *bytes_out) {
  const struct ferry_type_info *ti = ferry_type_info(t);
  const size_t rb = (size_t)ferry_row_bytes(ti, (uint64_t)n);
  if (nd > nrows) nd = nrows;
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

static inline void *op_make_weights(struct ferry_rng *rng, enum ferry_type t, int64_t nrows,
                                    int64_t n, size_t *bytes_out) {
  return op_make_weights_nd(rng, t, nrows, n, 48, bytes_out);
}

static inline int op_upload_weights_at(struct op_run *r, int i, struct ferry_rng *rng,
                                       enum ferry_type t, int64_t nrows, int64_t n, size_t off) {
  size_t bytes;
  void *h = op_make_weights(rng, t, nrows, n, &bytes);
  int rc = op_upload_at(r, i, h, bytes, off);
  free(h);
  return rc;
}

static inline int op_upload_weights(struct op_run *r, int i, struct ferry_rng *rng,
                                    enum ferry_type t, int64_t nrows, int64_t n) {
  return op_upload_weights_at(r, i, rng, t, nrows, n, 0);
}

// E experts of nrows x n, each with its own distinct rows (so a wrong expert id shows),
// one after the other.
static inline int op_upload_experts(struct op_run *r, int i, struct ferry_rng *rng,
                                    enum ferry_type t, int64_t E, int64_t nrows, int64_t n) {
  const size_t eb = (size_t)ferry_row_bytes(ferry_type_info(t), (uint64_t)n) * (size_t)nrows;
  uint8_t *all = malloc(eb * (size_t)E);
  FERRY_ASSERT(all);
  for (int64_t e = 0; e < E; e++) {
    size_t b;
    void *w = op_make_weights_nd(rng, t, nrows, n, 6, &b);
    memcpy(all + (size_t)e * eb, w, eb);
    free(w);
  }
  int rc = op_upload(r, i, all, eb * (size_t)E);
  free(all);
  return rc;
}

static inline size_t op_kv_row_bytes(enum ferry_type t, int64_t elems) {
  return t == FT_F32   ? (size_t)elems * 4
         : t == FT_F16 ? (size_t)elems * 2
                       : (size_t)elems / 32 * 34;
}

// A KV cache of n_pos rows built on the host with the CPU store, then uploaded, so every
// backend reads identical bytes.
static inline int op_upload_cache(struct op_run *r, int i, struct ferry_rng *rng, enum ferry_type t,
                                  int64_t n_pos, int64_t stride, int64_t used) {
  const size_t bytes = op_kv_row_bytes(t, stride) * (size_t)n_pos;
  void *h = calloc(1, bytes ? bytes : 1);
  float *src = malloc((size_t)(n_pos * used) * sizeof(float) + 1);
  FERRY_ASSERT(h && src);
  op_fill_normal(rng, src, n_pos * used, 1.0f);
  int rc = cpu_kv_store(h, t, stride, 0, n_pos, src, used);
  if (!rc) rc = op_upload(r, i, h, bytes);
  free(src);
  free(h);
  return rc;
}

static inline void op_run_destroy(struct op_run *r) {
  if (!r) return;
  for (int i = 0; i < OPR_MAXBUF; i++) r->be->ops.mem_free(r->be, r->d[i]);
  free(r->wptr);
  free(r->offs);
  free(r->groups);
  free(r->pair_row);
  free(r);
}

static inline int64_t op_max64(int64_t a, int64_t b) { return a > b ? a : b; }

// The limits reserve() gets for case c: exactly its shapes.
static inline struct ferry_limits op_case_limits(const struct op_case *c) {
  const int64_t *p = c->p;
  struct ferry_limits l;
  memset(&l, 0, sizeof l);
  l.max_tok = 1;
  l.weight_types = 1ull << c->type;
  switch (c->op) {
    case FERRY_OP_MATVEC:
    case FERRY_OP_DEQUANT: l.max_in = c->op == FERRY_OP_MATVEC ? p[1] : p[0]; break;
    case FERRY_OP_EMBED: l.max_in = p[1]; break;
    case FERRY_OP_MATMUL:
      l.max_tok = p[2];
      l.max_in = p[1];
      break;
    case FERRY_OP_MATMUL_GROUPED: // an expert product: rows of moe_d
      l.max_tok = p[2];
      l.max_in = p[1];
      l.moe_d = p[1];
      l.moe_k = p[4];
      break;
    case FERRY_OP_MOE_FFN:
    case FERRY_OP_MOE_FFN_IDS:
      l.max_tok = p[2];
      l.max_in = op_max64(p[0], p[1]);
      l.moe_d = p[0];
      l.moe_ff = p[1];
      l.moe_n_expert = p[3];
      l.moe_k = p[4];
      l.weight_types |= (1ull << (p[5] ? p[5] : c->type)) | (1ull << (p[7] ? p[7] : c->type));
      break;
    case FERRY_OP_ATTN:
      l.max_tok = p[0];
      l.n_ctx = p[1] + p[0];
      l.n_head = p[2];
      l.n_kv_head = p[3];
      l.head_dim = p[4];
      break;
    case FERRY_OP_DELTA_RULE:
      l.max_tok = p[0];
      l.dn_hk = p[1];
      l.dn_hv = p[2];
      l.dn_dk = p[3];
      l.dn_dv = p[4];
      break;
    default: break;
  }
  return l;
}

// Routes n_tok tokens to k distinct experts each among E (like a router) and groups the
// pairs by expert in token order (the counting sort of the CPU backend and the engine):
// rows[i] = token of grouped row i, offs[e] = first grouped row of expert e (E+1
// entries), pair_row[p] = grouped row of pair p. ids [n_tok][k] gets the picks.
static inline void op_route(struct ferry_rng *rng, int64_t n_tok, int64_t E, int64_t k,
                            int32_t *ids, int32_t *rows, int64_t *offs, int32_t *pair_row) {
  for (int64_t t = 0; t < n_tok; t++)
    for (int64_t j = 0; j < k; j++) {
      int32_t e;
      bool dup;
      do {
        e = (int32_t)(ferry_rng_u64(rng) % (uint64_t)E);
        dup = false;
        for (int64_t q = 0; q < j; q++) dup |= ids[t * k + q] == e;
      } while (dup);
      ids[t * k + j] = e;
    }
  int64_t i = 0;
  for (int64_t e = 0; e < E; e++) {
    offs[e] = i;
    for (int64_t t = 0; t < n_tok; t++)
      for (int64_t j = 0; j < k; j++)
        if (ids[t * k + j] == e) {
          if (pair_row) pair_row[t * k + j] = (int32_t)i;
          rows[i++] = (int32_t)t;
        }
  }
  offs[E] = i;
}

static inline float op_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Builds the inputs of case c on backend be from seed (same seed -> same inputs on every
// backend), after reserving be's scratch for the case. Returns 0 or a negative code.
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
  const struct ferry_limits lim = op_case_limits(c);
  int rc = be->ops.reserve(be, &lim);
  switch (rc ? -1 : (int)c->op) {
    case -1: break;
    case FERRY_OP_DEQUANT:
      rc = op_upload_weights(r, 0, &rng, c->type, 1, p[0]);
      if (!rc) rc = op_upload(r, 1, NULL, (size_t)p[0] * 4);
      break;
    case FERRY_OP_EMBED: { // table rows padded to row_bytes, ids with repeats and the last row
      const int64_t nrows = p[0], d = p[1], n = p[2];
      const size_t rb0 = (size_t)ferry_row_bytes(ferry_type_info(c->type), (uint64_t)d);
      const size_t rb = rb0 + (size_t)p[3];
      size_t wb;
      uint8_t *w = op_make_weights(&rng, c->type, nrows, d, &wb);
      uint8_t *tab = calloc((size_t)nrows, rb);
      int32_t *ids = malloc((size_t)n * sizeof(int32_t));
      FERRY_ASSERT(tab && ids);
      for (int64_t i = 0; i < nrows; i++) memcpy(tab + (size_t)i * rb, w + (size_t)i * rb0, rb0);
      for (int64_t i = 0; i < n; i++)
        ids[i] = i == 0 ? (int32_t)(nrows - 1) : (int32_t)(ferry_rng_u64(&rng) % (uint64_t)nrows);
      if (n > 2) ids[2] = ids[1];
      rc = op_upload(r, 0, tab, rb * (size_t)nrows);
      if (!rc) rc = op_upload(r, 1, ids, (size_t)n * sizeof(int32_t));
      if (!rc) rc = op_upload(r, 2, NULL, (size_t)(n * d) * 4);
      r->touched = (double)n * (double)rb + (double)n * 4 + (double)(n * d) * 4;
      free(w);
      free(tab);
      free(ids);
      break;
    }
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
      const size_t eb = (size_t)ferry_row_bytes(ferry_type_info(c->type), (uint64_t)n) * nrows;
      rc = op_upload_weights(r, 0, &rng, c->type, nrows * n_group, n);
      if (rc) break;
      r->wptr = malloc((size_t)n_group * sizeof(void *));
      r->offs = calloc((size_t)n_group + 1, sizeof(int64_t));
      int32_t *rows = malloc((size_t)(n_tok * k) * sizeof(int32_t));
      int32_t *ids = malloc((size_t)(n_tok * k) * sizeof(int32_t));
      FERRY_ASSERT(r->wptr && r->offs && rows && ids);
      for (int64_t g = 0; g < n_group; g++) r->wptr[g] = (const uint8_t *)r->v[0] + (size_t)g * eb;
      op_route(&rng, n_tok, n_group, k, ids, rows, r->offs, NULL);
      r->total = r->offs[n_group];
      int64_t used = 0;
      for (int64_t g = 0; g < n_group; g++) used += r->offs[g + 1] > r->offs[g];
      r->touched = (double)used * (double)eb + (double)(n_tok * n) * 4 + (double)r->total * 4 +
                   (double)(r->total * nrows) * 4;
      rc = op_upload_normal(r, 1, &rng, n_tok * n, 1.0f);
      if (!rc) rc = op_upload(r, 2, rows, (size_t)r->total * sizeof(int32_t));
      if (!rc) rc = op_upload(r, 3, NULL, (size_t)(r->total * nrows) * 4);
      free(rows);
      free(ids);
      break;
    }
    case FERRY_OP_MOE_FFN:
    case FERRY_OP_MOE_FFN_IDS: {
      // buffers: 0 gate, 1 up, 2 down (all experts), 3 x, 4 ids, 5 grouped rows' tokens,
      // 6 y [pairs][d], 7 map [pairs]
      const int64_t d = p[0], ff = p[1], n_tok = p[2], E = p[3], k = p[4], P = n_tok * k;
      const enum ferry_type tg = c->type, tu = p[7] ? (enum ferry_type)p[7] : c->type;
      const enum ferry_type td = p[5] ? (enum ferry_type)p[5] : c->type;
      rc = op_upload_experts(r, 0, &rng, tg, E, ff, d);
      if (!rc) rc = op_upload_experts(r, 1, &rng, tu, E, ff, d);
      if (!rc) rc = op_upload_experts(r, 2, &rng, td, E, d, ff);
      if (!rc) rc = op_upload_normal(r, 3, &rng, n_tok * d, 1.0f);
      if (rc) break;
      int32_t *ids = malloc((size_t)P * sizeof(int32_t)), *rows = malloc((size_t)P * 4);
      int64_t *offs = malloc((size_t)(E + 1) * sizeof(int64_t));
      r->pair_row = malloc((size_t)P * sizeof(int32_t));
      r->groups = calloc((size_t)E, sizeof(struct ferry_moe_group));
      FERRY_ASSERT(ids && rows && offs && r->pair_row && r->groups);
      op_route(&rng, n_tok, E, k, ids, rows, offs, r->pair_row);
      const uint64_t eb[3] = {ferry_row_bytes(ferry_type_info(tg), (uint64_t)d) * (uint64_t)ff,
                              ferry_row_bytes(ferry_type_info(tu), (uint64_t)d) * (uint64_t)ff,
                              ferry_row_bytes(ferry_type_info(td), (uint64_t)ff) * (uint64_t)d};
      for (int64_t e = 0; e < E; e++) {
        if (offs[e + 1] == offs[e]) continue;
        struct ferry_moe_group *g = &r->groups[r->n_group++];
        for (int q = 0; q < 3; q++) g->w[q] = (const uint8_t *)r->v[q] + e * eb[q];
        g->off = (int32_t)offs[e];
        g->cnt = (int32_t)(offs[e + 1] - offs[e]);
      }
      r->total = P;
      r->touched = (double)r->n_group * (double)(eb[0] + eb[1] + eb[2]) + (double)(n_tok * d) * 4 +
                   (double)(P * d) * 4;
      rc = op_upload(r, 4, ids, (size_t)P * sizeof(int32_t));
      if (!rc) rc = op_upload(r, 5, rows, (size_t)P * sizeof(int32_t));
      if (!rc) rc = op_upload(r, 6, NULL, (size_t)(P * d) * 4);
      if (!rc) rc = op_upload(r, 7, NULL, (size_t)P * sizeof(int32_t));
      free(ids);
      free(rows);
      free(offs);
      break;
    }
    case FERRY_OP_MOE_COMBINE: { // 0 slots, 1 map (a permutation), 2 weights, 3 y
      const int64_t P = p[0] * p[1], d = p[2];
      int32_t *map = malloc((size_t)P * sizeof(int32_t));
      FERRY_ASSERT(map);
      for (int64_t i = 0; i < P; i++) map[i] = (int32_t)i;
      for (int64_t i = P - 1; i > 0; i--) { // Fisher-Yates
        const int64_t j = (int64_t)(ferry_rng_u64(&rng) % (uint64_t)(i + 1));
        const int32_t t = map[i];
        map[i] = map[j];
        map[j] = t;
      }
      rc = op_upload_normal(r, 0, &rng, P * d, 1.0f);
      if (!rc) rc = op_upload(r, 1, map, (size_t)P * sizeof(int32_t));
      if (!rc) rc = op_upload_normal(r, 2, &rng, P, 0.5f);
      if (!rc) rc = op_upload_normal(r, 3, &rng, p[0] * d, 1.0f); // overwritten by the op
      free(map);
      break;
    }
    case FERRY_OP_RMSNORM:
      rc = op_upload_normal(r, 0, &rng, p[0] * p[1], 2.0f);
      if (!rc) rc = op_upload_normal(r, 1, &rng, p[1], 1.0f);
      if (!rc && !p[2]) rc = op_upload(r, 2, NULL, (size_t)(p[0] * p[1]) * 4);
      break;
    case FERRY_OP_ROPE_NEOX:
      rc = op_upload_normal(r, 0, &rng, p[0] * p[1] * p[2], 1.0f);
      if (!rc) rc = op_upload_i32(r, 1, (int32_t)p[4]);
      break;
    case FERRY_OP_KV_STORE:
      rc = op_upload_normal(r, 0, &rng, p[0] * p[1], 3.0f);
      if (!rc) rc = op_upload(r, 1, NULL, op_kv_row_bytes(c->type, p[2]) * (size_t)(p[3] + p[0]));
      if (!rc) rc = op_upload_i32(r, 2, (int32_t)p[3]);
      r->touched = (double)(p[0] * p[1]) * 4 + (double)op_kv_row_bytes(c->type, p[2]) * p[0];
      break;
    case FERRY_OP_ATTN: { // 0 q, 1 K cache, 2 V cache, 3 out, 4 pos
      const int64_t n_tok = p[0], pos0 = p[1], used = p[3] * p[4], stride = used + p[5];
      const int64_t n_pos = pos0 + n_tok;
      rc = op_upload_normal(r, 0, &rng, n_tok * p[2] * p[4], 1.0f);
      if (!rc) rc = op_upload_cache(r, 1, &rng, c->type, n_pos, stride, used);
      if (!rc) rc = op_upload_cache(r, 2, &rng, c->type, n_pos, stride, used);
      if (!rc) rc = op_upload(r, 3, NULL, (size_t)(n_tok * p[2] * p[4]) * 4);
      if (!rc) rc = op_upload_i32(r, 4, (int32_t)pos0);
      r->touched = 2.0 * (double)n_pos * (double)op_kv_row_bytes(c->type, used) +
                   2.0 * (double)(n_tok * p[2] * p[4]) * 4;
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
      if (c->op == FERRY_OP_SCALE) r->touched = 2.0 * p[0] * 4;
      if (c->op == FERRY_OP_SWIGLU || c->op == FERRY_OP_ADD || c->op == FERRY_OP_SIGMOID_MUL)
        r->touched = 3.0 * p[0] * 4;
      break;
    case FERRY_OP_GATE_ADD_ROWS: // 0 y, 1 x, 2 g
      rc = op_upload_normal(r, 0, &rng, p[0] * p[1], 1.0f);
      if (!rc) rc = op_upload_normal(r, 1, &rng, p[0] * p[1], 1.0f);
      if (!rc) rc = op_upload_normal(r, 2, &rng, p[0], 2.0f);
      r->touched = 3.0 * (double)(p[0] * p[1]) * 4;
      break;
    case FERRY_OP_COPY2D: // 0 src [rows][cols + p2], 1 dst [rows][cols + p3] (random: the
                          // padding must stay as it was)
      rc = op_upload_normal(r, 0, &rng, p[0] * (p[1] + p[2]), 1.0f);
      if (!rc) rc = op_upload_normal(r, 1, &rng, p[0] * (p[1] + p[3]), 1.0f);
      r->touched = 2.0 * (double)(p[0] * p[1]) * 4;
      break;
    case FERRY_OP_ROUTER_TOPK: {
      float *h = malloc((size_t)(p[0] * p[1]) * sizeof(float));
      FERRY_ASSERT(h);
      op_fill_normal(&rng, h, p[0] * p[1], 2.0f);
      if (p[3]) // a handful of distinct values: many exact ties, lower index must win
        for (int64_t i = 0; i < p[0] * p[1]; i++) h[i] = floorf(h[i]) * 0.5f;
      rc = op_upload(r, 0, h, (size_t)(p[0] * p[1]) * 4);
      free(h);
      if (!rc) rc = op_upload(r, 1, NULL, (size_t)(p[0] * p[2]) * sizeof(int));
      if (!rc) rc = op_upload(r, 2, NULL, (size_t)(p[0] * p[2]) * 4);
      break;
    }
    case FERRY_OP_SSM_CONV: // 0 y [T][C], 1 state [K-1][C], 2 u [T][C], 3 w [C][K]
      rc = op_upload(r, 0, NULL, (size_t)(p[0] * p[1]) * 4);
      if (!rc) rc = op_upload_normal(r, 1, &rng, (p[2] - 1) * p[1], 1.0f);
      if (!rc) rc = op_upload_normal(r, 2, &rng, p[0] * p[1], 1.0f);
      if (!rc) rc = op_upload_normal(r, 3, &rng, p[1] * p[2], 0.5f);
      break;
    case FERRY_OP_L2NORM_HEADS: // 0 x [T][heads*d + p3]
      rc = op_upload_normal(r, 0, &rng, p[0] * (p[1] * p[2] + p[3]), 1.5f);
      r->touched = 2.0 * (double)(p[0] * p[1] * p[2]) * 4;
      break;
    case FERRY_OP_DELTA_GATES: { // 0 beta, 1 g, 2 b, 3 a, 4 ssm_a, 5 dt_bias
      const int64_t T = p[0], Hv = p[1];
      float *h = malloc((size_t)(T * Hv + Hv) * sizeof(float));
      FERRY_ASSERT(h);
      rc = op_upload(r, 0, NULL, (size_t)(T * Hv) * 4);
      if (!rc) rc = op_upload(r, 1, NULL, (size_t)(T * Hv) * 4);
      if (!rc) rc = op_upload_normal(r, 2, &rng, T * Hv, 2.0f);
      if (!rc) rc = op_upload_normal(r, 3, &rng, T * Hv, 8.0f); // softplus's x > 20 branch too
      for (int64_t i = 0; i < Hv; i++) h[i] = -expf(ferry_rng_normal(&rng));
      if (!rc) rc = op_upload(r, 4, h, (size_t)Hv * 4);
      if (!rc) rc = op_upload_normal(r, 5, &rng, Hv, 1.0f);
      free(h);
      break;
    }
    case FERRY_OP_DELTA_RULE: {
      // 0 o [T][ldo], 1 S [Hv][dk][dv], 2 q (or the [q | k | v] rows), 3 k, 4 v, 5 beta,
      // 6 g. q and k heads L2-normalised (q scaled by 1/sqrt(dk)) as the model feeds them.
      const int64_t T = p[0], Hk = p[1], Hv = p[2], dk = p[3], dv = p[4];
      const int64_t ldo = Hv * dv + p[6];
      const int64_t lq = p[5] ? 2 * Hk * dk + Hv * dv : Hk * dk;
      const int64_t rows_f = p[5] ? T * lq : T * (2 * Hk * dk + Hv * dv);
      float *h = malloc((size_t)(rows_f + 2 * T * Hv) * sizeof(float));
      FERRY_ASSERT(h);
      op_fill_normal(&rng, h, rows_f, 1.0f);
      // q at h + t*lq (contiguous: h), k at + Hk*dk (contiguous: h + T*Hk*dk)
      for (int64_t t = 0; t < T; t++)
        for (int which = 0; which < 2; which++) {
          float *base = p[5] ? h + t * lq + which * Hk * dk : h + which * T * Hk * dk + t * Hk * dk;
          for (int64_t hh = 0; hh < Hk; hh++)
            cpu_l2norm_heads(base + hh * dk, 1, dk, 1e-6f, which ? 1.0f : 1.0f / sqrtf((float)dk));
        }
      float *bg = h + rows_f;
      for (int64_t i = 0; i < T * Hv; i++) {
        bg[i] = op_sigmoid(ferry_rng_normal(&rng));
        bg[T * Hv + i] = -(0.05f + 0.6f * ferry_rng_uniform(&rng));
      }
      rc = op_upload_normal(r, 0, &rng, T * ldo, 1.0f); // the padding must stay
      if (!rc) rc = op_upload_normal(r, 1, &rng, Hv * dk * dv, 0.1f);
      if (!rc && p[5]) rc = op_upload(r, 2, h, (size_t)rows_f * 4);
      if (!rc && !p[5]) rc = op_upload(r, 2, h, (size_t)(T * Hk * dk) * 4);
      if (!rc && !p[5]) rc = op_upload(r, 3, h + T * Hk * dk, (size_t)(T * Hk * dk) * 4);
      if (!rc && !p[5]) rc = op_upload(r, 4, h + 2 * T * Hk * dk, (size_t)(T * Hv * dv) * 4);
      if (!rc) rc = op_upload(r, 5, bg, (size_t)(T * Hv) * 4);
      if (!rc) rc = op_upload(r, 6, bg + T * Hv, (size_t)(T * Hv) * 4);
      r->touched =
          2.0 * (double)(Hv * dk * dv) * 4 + (double)(T * (2 * Hk * dk + 2 * Hv * dv + 2 * Hv)) * 4;
      free(h);
      break;
    }
    case FERRY_OP_GATED_RMSNORM: // 0 y, 1 o, 2 z, 3 w
      rc = op_upload(r, 0, NULL, (size_t)(p[0] * p[1]) * 4);
      if (!rc) rc = op_upload_normal(r, 1, &rng, p[0] * p[1], 1.0f);
      if (!rc) rc = op_upload_normal(r, 2, &rng, p[0] * p[1], 2.0f);
      if (!rc) rc = op_upload_normal(r, 3, &rng, p[1], 1.0f);
      break;
    case FERRY_OP_SSM_IN_REGROUP: { // 0 qkv, 1 z, 2 p
      const int64_t T = p[0], nk = p[1], nv = p[2], dk = p[3], dv = p[4];
      rc = op_upload(r, 0, NULL, (size_t)(T * (2 * nk * dk + nv * dv)) * 4);
      if (!rc) rc = op_upload(r, 1, NULL, (size_t)(T * nv * dv) * 4);
      if (!rc) rc = op_upload_normal(r, 2, &rng, T * (2 * nk * dk + 2 * nv * dv), 1.0f);
      break;
    }
    case FERRY_OP_SSM_BA_REGROUP: // 0 b, 1 a, 2 p
      rc = op_upload(r, 0, NULL, (size_t)(p[0] * p[2]) * 4);
      if (!rc) rc = op_upload(r, 1, NULL, (size_t)(p[0] * p[2]) * 4);
      if (!rc) rc = op_upload_normal(r, 2, &rng, p[0] * 2 * p[2], 1.0f);
      break;
    default: rc = ferry_fail(-EINVAL, "op table: no input maker for op %d", (int)c->op);
  }
  if (!rc) rc = be->ops.stream_sync(be, NULL);
  if (rc) {
    op_run_destroy(r);
    return rc;
  }
  if (r->touched == 0) // default: every buffer once
    for (int i = 0; i < OPR_MAXBUF; i++) r->touched += (double)r->bytes[i];
  *out = r;
  return 0;
}

// moe_ffn of case r over groups [g0, g1) (x_changed on the first call).
static inline int op_moe_ffn_call(struct op_run *r, int g0, int g1, bool x_changed,
                                  struct ferry_stream *s) {
  const int64_t *p = r->c->p;
  const struct ferry_moe_shape sh = {r->c->type, p[7] ? (enum ferry_type)p[7] : r->c->type,
                                     p[5] ? (enum ferry_type)p[5] : r->c->type, p[0], p[1]};
  return r->be->ops.moe_ffn(r->be, r->c->prec, &sh, r->v[3], p[2], x_changed, r->v[5], g1 - g0,
                            r->groups + g0, r->v[6], s);
}

static inline int op_moe_ids_call(struct op_run *r, struct ferry_stream *s) {
  const int64_t *p = r->c->p;
  const enum ferry_type tg = r->c->type, tu = p[7] ? (enum ferry_type)p[7] : tg;
  const enum ferry_type td = p[5] ? (enum ferry_type)p[5] : tg;
  const struct ferry_moe_shape sh = {tg, tu, td, p[0], p[1]};
  const struct ferry_type_info *ti[3] = {ferry_type_info(tg), ferry_type_info(tu),
                                         ferry_type_info(td)};
  const struct ferry_moe_table tab = {{r->v[0], r->v[1], r->v[2]},
                                      {ferry_row_bytes(ti[0], (uint64_t)p[0]) * (uint64_t)p[1],
                                       ferry_row_bytes(ti[1], (uint64_t)p[0]) * (uint64_t)p[1],
                                       ferry_row_bytes(ti[2], (uint64_t)p[1]) * (uint64_t)p[0]},
                                      p[3]};
  return r->be->ops.moe_ffn_ids(r->be, r->c->prec, &sh, &tab, r->v[3], p[2], p[4], r->v[4], r->v[6],
                                r->v[7], s);
}

// Runs the op once on stream s (asynchronous on CUDA). In-place ops (rope, axpy, in-place
// rmsnorm, kv_store, the conv and delta-rule states, ...) change their input, so a second
// invoke computes something else; the benchmark does not care, the comparison invokes once.
static inline int op_run_invoke(struct op_run *r, struct ferry_stream *s) {
  const struct op_case *c = r->c;
  const struct ferry_backend_ops *o = &r->be->ops;
  struct ferry_backend *be = r->be;
  const int64_t *p = c->p;
  void **d = r->v;
  switch (c->op) {
    case FERRY_OP_DEQUANT: return o->dequant(be, c->type, d[0], d[1], p[0], s);
    case FERRY_OP_EMBED: {
      const uint64_t rb = ferry_row_bytes(ferry_type_info(c->type), (uint64_t)p[1]) + p[3];
      return o->embed(be, c->type, d[0], rb, d[1], p[2], p[1], d[2], s);
    }
    case FERRY_OP_MATVEC: return o->matvec(be, c->type, d[0], p[0], p[1], d[1], d[2], s);
    case FERRY_OP_MATMUL:
      return o->matmul(be, c->prec, c->type, d[0], p[0], p[1], d[1], p[1] + p[3], p[2], d[2],
                       p[0] + p[4], s);
    case FERRY_OP_MATMUL_GROUPED:
      return o->matmul_grouped(be, c->type, r->wptr, p[3], p[0], p[1], d[1], p[1], d[2], r->offs,
                               d[3], p[0], s);
    case FERRY_OP_MOE_FFN: {
      if (!p[6] || r->n_group < 2) return op_moe_ffn_call(r, 0, r->n_group, true, s);
      const int half = r->n_group / 2;
      int rc = op_moe_ffn_call(r, half, r->n_group, true, s); // later groups first
      return rc ? rc : op_moe_ffn_call(r, 0, half, false, s);
    }
    case FERRY_OP_MOE_FFN_IDS: return op_moe_ids_call(r, s);
    case FERRY_OP_MOE_COMBINE:
      return o->moe_combine(be, d[3], d[0], p[3] ? d[1] : NULL, d[2], p[0], p[1], p[2], s);
    case FERRY_OP_RMSNORM:
      return o->rmsnorm(be, p[2] ? d[0] : d[2], d[0], d[1], p[0], p[1], 1e-6f, s);
    case FERRY_OP_ROPE_NEOX: return o->rope_neox(be, d[0], p[0], p[1], p[2], p[3], d[1], 1e7f, s);
    case FERRY_OP_KV_STORE: return o->kv_store(be, d[1], c->type, p[2], d[2], p[0], d[0], p[1], s);
    case FERRY_OP_ATTN:
      return o->attn(be, c->prec, d[3], d[0], d[1], d[2], c->type, p[0], d[4], p[2], p[3], p[4],
                     p[3] * p[4] + p[5], 1.0f / sqrtf((float)p[4]), s);
    case FERRY_OP_SWIGLU: return o->swiglu(be, d[2], d[0], d[1], p[0], s);
    case FERRY_OP_ADD: return o->add(be, d[2], d[0], d[1], p[0], s);
    case FERRY_OP_SCALE: return o->scale(be, d[2], d[0], 0.37f, p[0], s);
    case FERRY_OP_AXPY: return o->axpy(be, d[2], d[0], -1.25f, p[0], s);
    case FERRY_OP_SIGMOID_MUL: return o->sigmoid_mul(be, d[2], d[0], d[1], p[0], s);
    case FERRY_OP_GATE_ADD_ROWS: return o->gate_add_rows(be, d[0], d[1], d[2], p[0], p[1], s);
    case FERRY_OP_COPY2D: return o->copy2d(be, d[1], p[1] + p[3], d[0], p[1] + p[2], p[0], p[1], s);
    case FERRY_OP_ROUTER_TOPK: return o->router_topk(be, d[0], p[0], p[1], p[2], d[1], d[2], s);
    case FERRY_OP_SSM_CONV:
      return o->ssm_conv(be, d[0], d[1], d[2], d[3], p[0], p[1], p[2], (int)p[3], s);
    case FERRY_OP_L2NORM_HEADS:
      return o->l2norm_heads(be, d[0], p[1] * p[2] + p[3], p[0], p[1], p[2], 1e-6f,
                             1.0f / sqrtf((float)p[2]), s);
    case FERRY_OP_DELTA_GATES:
      return o->delta_gates(be, d[0], d[1], d[2], d[3], d[4], d[5], p[0], p[1], s);
    case FERRY_OP_DELTA_RULE: {
      const int64_t T = p[0], Hk = p[1], Hv = p[2], dk = p[3], dv = p[4];
      const int64_t ldo = Hv * dv + p[6];
      if (p[5]) { // q, k, v in place in the [q | k | v] rows
        const int64_t ld = 2 * Hk * dk + Hv * dv;
        const float *row = d[2];
        return o->delta_rule(be, d[0], ldo, d[1], row, ld, row + Hk * dk, ld, row + 2 * Hk * dk, ld,
                             d[5], d[6], T, Hk, Hv, dk, dv, s);
      }
      return o->delta_rule(be, d[0], ldo, d[1], d[2], Hk * dk, d[3], Hk * dk, d[4], Hv * dv, d[5],
                           d[6], T, Hk, Hv, dk, dv, s);
    }
    case FERRY_OP_GATED_RMSNORM:
      return o->gated_rmsnorm(be, d[0], d[1], d[2], d[3], p[0], p[1], 1e-6f, s);
    case FERRY_OP_SSM_IN_REGROUP:
      return o->ssm_in_regroup(be, d[0], d[1], d[2], p[0], p[1], p[2], p[3], p[4], s);
    case FERRY_OP_SSM_BA_REGROUP:
      return o->ssm_ba_regroup(be, d[0], d[1], d[2], p[0], p[1], p[2], s);
    default: return ferry_fail(-EINVAL, "op table: no invoker for op %d", (int)c->op);
  }
}

static inline int op_download(struct op_run *r, int i, void *h, size_t bytes) {
  int rc = r->be->ops.copy_d2h(r->be, h, r->v[i], bytes, NULL);
  return rc ? rc : r->be->ops.stream_sync(r->be, NULL);
}

// Appends buffer i (n floats) to *f at *at.
static inline int op_append(struct op_run *r, int i, float *f, int64_t *at, int64_t n) {
  int rc = op_download(r, i, f + *at, (size_t)n * 4);
  *at += n;
  return rc;
}

// The op's result as floats (malloc'd, caller frees). Waits for the device. Ops with
// several outputs return them one after the other (e.g. y, then the conv state).
static inline int op_run_output(struct op_run *r, float **out, int64_t *n_out) {
  const struct op_case *c = r->c;
  const int64_t *p = c->p;
  int rc = r->be->ops.stream_sync(r->be, NULL);
  if (rc) return rc;
  int idx[3] = {-1, -1, -1};
  int64_t cnt[3] = {0, 0, 0};
  switch (c->op) {
    case FERRY_OP_DEQUANT: idx[0] = 1, cnt[0] = p[0]; break;
    case FERRY_OP_EMBED: idx[0] = 2, cnt[0] = p[2] * p[1]; break;
    case FERRY_OP_MATVEC: idx[0] = 2, cnt[0] = p[0]; break;
    case FERRY_OP_MATMUL: idx[0] = 2, cnt[0] = p[2] * (p[0] + p[4]); break;
    case FERRY_OP_MATMUL_GROUPED: idx[0] = 3, cnt[0] = r->total * p[0]; break;
    case FERRY_OP_MOE_FFN: idx[0] = 6, cnt[0] = r->total * p[0]; break;
    case FERRY_OP_MOE_COMBINE: idx[0] = 3, cnt[0] = p[0] * p[2]; break;
    case FERRY_OP_RMSNORM: idx[0] = p[2] ? 0 : 2, cnt[0] = p[0] * p[1]; break;
    case FERRY_OP_ROPE_NEOX: idx[0] = 0, cnt[0] = p[0] * p[1] * p[2]; break;
    case FERRY_OP_ATTN: idx[0] = 3, cnt[0] = p[0] * p[2] * p[4]; break;
    case FERRY_OP_SWIGLU:
    case FERRY_OP_ADD:
    case FERRY_OP_SCALE:
    case FERRY_OP_AXPY:
    case FERRY_OP_SIGMOID_MUL: idx[0] = 2, cnt[0] = p[0]; break;
    case FERRY_OP_GATE_ADD_ROWS: idx[0] = 0, cnt[0] = p[0] * p[1]; break;
    case FERRY_OP_COPY2D: idx[0] = 1, cnt[0] = p[0] * (p[1] + p[3]); break;
    case FERRY_OP_SSM_CONV:
      idx[0] = 0, cnt[0] = p[0] * p[1];
      idx[1] = 1, cnt[1] = (p[2] - 1) * p[1];
      break;
    case FERRY_OP_L2NORM_HEADS: idx[0] = 0, cnt[0] = p[0] * (p[1] * p[2] + p[3]); break;
    case FERRY_OP_DELTA_GATES:
      idx[0] = 0, cnt[0] = p[0] * p[1];
      idx[1] = 1, cnt[1] = p[0] * p[1];
      break;
    case FERRY_OP_DELTA_RULE:
      idx[0] = 0, cnt[0] = p[0] * (p[2] * p[4] + p[6]);
      idx[1] = 1, cnt[1] = p[2] * p[3] * p[4];
      break;
    case FERRY_OP_GATED_RMSNORM: idx[0] = 0, cnt[0] = p[0] * p[1]; break;
    case FERRY_OP_SSM_IN_REGROUP:
      idx[0] = 0, cnt[0] = p[0] * (2 * p[1] * p[3] + p[2] * p[4]);
      idx[1] = 1, cnt[1] = p[0] * p[2] * p[4];
      break;
    case FERRY_OP_SSM_BA_REGROUP:
      idx[0] = 0, cnt[0] = p[0] * p[2];
      idx[1] = 1, cnt[1] = p[0] * p[2];
      break;
    case FERRY_OP_MOE_FFN_IDS: { // rows in pair order: y[map[p]]; NaN if map is no permutation
      const int64_t P = r->total, d = p[0];
      float *y = malloc((size_t)(P * d) * sizeof(float));
      float *f = malloc((size_t)(P * d) * sizeof(float));
      int32_t *map = malloc((size_t)P * sizeof(int32_t));
      bool *seen = calloc((size_t)P, 1);
      FERRY_ASSERT(y && f && map && seen);
      rc = op_download(r, 6, y, (size_t)(P * d) * 4);
      if (!rc) rc = op_download(r, 7, map, (size_t)P * sizeof(int32_t));
      for (int64_t q = 0; !rc && q < P; q++) {
        const bool ok = map[q] >= 0 && map[q] < P && !seen[map[q]];
        if (ok) seen[map[q]] = true;
        for (int64_t i = 0; i < d; i++) f[q * d + i] = ok ? y[(int64_t)map[q] * d + i] : NAN;
      }
      free(y);
      free(map);
      free(seen);
      if (rc) {
        free(f);
        return rc;
      }
      *out = f;
      *n_out = P * d;
      return 0;
    }
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
  const int64_t n = cnt[0] + cnt[1] + cnt[2];
  float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  FERRY_ASSERT(f);
  int64_t at = 0;
  for (int k = 0; k < 3 && !rc; k++)
    if (idx[k] >= 0 && cnt[k] > 0) rc = op_append(r, idx[k], f, &at, cnt[k]);
  if (rc) {
    free(f);
    return rc;
  }
  *out = f;
  *n_out = n;
  return 0;
}

// Bytes the op reads and writes: only what it touches (the experts a grouped product or
// an expert FFN uses, the cache rows attention reads), the bench's bandwidth figure.
static inline double op_run_bytes(const struct op_run *r) { return r->touched; }

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

// "matvec q4_K [768 2048] qwen3moe ffn_gate_exps[e]" (with "exact"/"fast" where the op
// takes a precision).
static inline void op_case_label(const struct op_case *c, char *buf, size_t n) {
  const struct ferry_type_info *ti = ferry_type_info(c->type);
  int k = 8;
  while (k > 1 && c->p[k - 1] == 0) k--;
  int off = snprintf(buf, n, "%s %s%s [", ferry_op_name(c->op), ti ? ti->name : "?",
                     !op_has_prec(c->op)           ? ""
                     : c->prec == FERRY_PREC_EXACT ? " exact"
                                                   : " fast");
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

// Runs case c (a MOE_FFN or MOE_FFN_IDS case) on be twice over the same inputs: moe_ffn
// with the host groups and moe_ffn_ids with the device ids, and counts the pairs whose
// output rows differ in any bit (*mismatch; stream mode == full mode needs 0).
static inline int op_moe_bitident(const struct op_case *c, struct ferry_backend *be, uint64_t seed,
                                  int64_t *mismatch) {
  struct op_run *r = NULL;
  *mismatch = -1;
  int rc = op_run_setup(&r, c, be, seed);
  if (rc) return rc;
  const int64_t P = r->total, d = c->p[0];
  float *a = malloc((size_t)(P * d) * 4), *b = malloc((size_t)(P * d) * 4);
  int32_t *map = malloc((size_t)P * 4);
  FERRY_ASSERT(a && b && map);
  rc = op_moe_ffn_call(r, 0, r->n_group, true, NULL);
  if (!rc) rc = op_download(r, 6, a, (size_t)(P * d) * 4);
  if (!rc) rc = be->ops.memset0(be, r->v[6], (size_t)(P * d) * 4, NULL);
  if (!rc) rc = op_moe_ids_call(r, NULL);
  if (!rc) rc = op_download(r, 6, b, (size_t)(P * d) * 4);
  if (!rc) rc = op_download(r, 7, map, (size_t)P * 4);
  if (!rc) {
    *mismatch = 0;
    for (int64_t q = 0; q < P; q++) {
      const bool ok =
          map[q] >= 0 && map[q] < P &&
          !memcmp(a + (int64_t)r->pair_row[q] * d, b + (int64_t)map[q] * d, (size_t)d * 4);
      *mismatch += !ok;
    }
  }
  free(a);
  free(b);
  free(map);
  op_run_destroy(r);
  return rc;
}
