// kernels/cpu/quants.h: block formats on the CPU — row dequantization (the scalar
// reference every other path is tested against), reference-quality quantization (used by
// the synthetic-model writer), activation quantization, and dot products of one weight
// row with a quantized activation row. Pure functions; any thread may call them.
//
// Activation ("vec dot") type per weight type, as llama.cpp's CPU backend does it:
//   Q2_K..Q6_K -> Q8_K, Q8_0 and Q4_0 -> Q8_0, F16 -> F16, BF16 -> BF16, F32 -> F32.
#pragma once
#include <stdint.h>

#include "kernels/types.h"

#ifdef __cplusplus
extern "C" {
#endif

// Q8_K activation block (256 elements, 292 bytes): d is f32 and may be negative.
typedef struct {
  float d;
  int8_t qs[256];
  int16_t bsums[16];
} block_q8_K;

// y[0..n) = dequantized row. n a multiple of the type's block size.
void cpu_dequant_row(enum ferry_type t, const void *src, float *dst, int64_t n);
// Reference quantizer (llama.cpp's *_ref quality, no importance matrix). Deterministic.
void cpu_quantize_row(enum ferry_type t, const float *src, void *dst, int64_t n);

// The activation type a weight of type t is dotted with.
enum ferry_type cpu_vec_dot_type(enum ferry_type t);
// Quantizes activations x[0..n) into the vec-dot format vt (Q8_K, Q8_0, F16, BF16 or F32 copy).
void cpu_quantize_act(enum ferry_type vt, const float *x, void *dst, int64_t n);

// Dot of one weight row (type t, n elements) with an activation row already in
// cpu_vec_dot_type(t). _ref is the scalar reference; cpu_vec_dot picks the fastest path
// this CPU supports (chosen once at first use).
float cpu_vec_dot_ref(enum ferry_type t, int64_t n, const void *w, const void *xq);
float cpu_vec_dot(enum ferry_type t, int64_t n, const void *w, const void *xq);

// Names the path cpu_vec_dot uses for t ("scalar", "avx2", "avx512").
const char *cpu_vec_dot_path(enum ferry_type t);
// Test hook: force the dispatch to "scalar", "avx2" or "avx512" (returns -1 if unavailable).
int cpu_vec_dot_force(const char *path);

#ifdef __cplusplus
}
#endif
