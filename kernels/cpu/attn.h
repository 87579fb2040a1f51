// kernels/cpu/attn.h: fast causal GQA attention over a KV cache on the CPU (the decode
// and prefill hot path). Same cache layout and semantics as cpu_attn_prefill in
// kernels/cpu/ops.h, which stays the scalar reference this is tested against
// (tests/unit/test_attn.c).
//
// Work is split over (token, KV head) pairs with the numa/ pool; the query heads that
// share a KV head are processed together, so each cached K/V row is converted to F32
// once per group, not once per head. Scores and the softmax are F32 (two passes: all
// scores, then the max-subtracted exponentials), accumulation in F32 with FMA.
// AVX2+FMA+F16C is used where the CPU has it (chosen once at run time).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "kernels/types.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_pool;

// Floats of scratch one worker needs for contexts up to n_ctx.
size_t cpu_attn_scratch_floats(int64_t n_ctx, int64_t n_head, int64_t n_kv_head, int64_t head_dim);

// As cpu_attn_prefill (queries row t at positions pos0 + t attend to 0..pos0+t), with
// scratch = n_workers * cpu_attn_scratch_floats(...) floats (n_workers = pool size, or 1
// without a pool) sized for at least pos0 + n_tok positions. Allocates nothing; blocks.
void cpu_attn_fast(struct ferry_pool *pool, float *out, const float *q, const void *kcache,
                   const void *vcache, enum ferry_type kv_type, int64_t n_tok, int64_t pos0,
                   int64_t n_head, int64_t n_kv_head, int64_t head_dim, int64_t kv_row_stride_elems,
                   float scale, float *scratch, int64_t n_ctx_max);

#ifdef __cplusplus
}
#endif
