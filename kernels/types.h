// kernels/types.h: tensor element types as GGUF stores them (ggml type ids), their block
// geometry, and row-size arithmetic. Shared by the CPU and CUDA backends and by engine/.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum ferry_type {
  FT_F32 = 0,
  FT_F16 = 1,
  FT_Q4_0 = 2,
  FT_Q8_0 = 8,
  FT_Q2_K = 10,
  FT_Q3_K = 11,
  FT_Q4_K = 12,
  FT_Q5_K = 13,
  FT_Q6_K = 14,
  FT_Q8_K = 15, // activation format for K-quant dots only
  FT_BF16 = 30,
  FT_COUNT = 40,
};

struct ferry_type_info {
  const char *name; // "q4_K" as llama.cpp prints it
  uint32_t blck;    // elements per block
  uint32_t size;    // bytes per block
  bool weight;      // supported as a weight type in files
};

// NULL for ids ferry does not know (the GGUF reader rejects such tensors).
const struct ferry_type_info *ferry_type_info(uint32_t type);
// Bytes of one row of n elements; n must be a multiple of the block size.
static inline uint64_t ferry_row_bytes(const struct ferry_type_info *ti, uint64_t n) {
  return n / ti->blck * ti->size;
}
// Parses "f32", "q4_k", ... (case-insensitive); returns -1 if unknown.
int ferry_type_from_name(const char *s);

#ifdef __cplusplus
}
#endif
