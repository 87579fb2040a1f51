// kernels/cpu/quants_impl.h: private to kernels/cpu — the block structs of every format
// (byte layouts of MODEL_SPEC §2, checked by size asserts) and the per-type dot-function
// table the SIMD files fill in. Nothing outside kernels/cpu includes this.
#pragma once
#include <stdint.h>

#include "kernels/cpu/quants.h"

typedef struct {
  uint16_t d;
  int8_t qs[32];
} block_q8_0;
typedef struct {
  uint16_t d;
  uint8_t qs[16];
} block_q4_0;
typedef struct {
  uint8_t scales[16];
  uint8_t qs[64];
  uint16_t d, dmin;
} block_q2_K;
typedef struct {
  uint8_t hmask[32];
  uint8_t qs[64];
  uint8_t scales[12];
  uint16_t d;
} block_q3_K;
typedef struct {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[128];
} block_q4_K;
typedef struct {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
} block_q5_K;
typedef struct {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
} block_q6_K;

_Static_assert(sizeof(block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(block_q2_K) == 84, "q2_K layout");
_Static_assert(sizeof(block_q3_K) == 110, "q3_K layout");
_Static_assert(sizeof(block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(block_q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(block_q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(block_q8_K) == 292, "q8_K layout");

// One weight row (n elements) dotted with one activation row in cpu_vec_dot_type(t).
typedef float (*cpu_vec_dot_fn)(int64_t n, const void *w, const void *xq);

// Unpacks the 12-byte 6-bit scale/min field of Q4_K/Q5_K (MODEL_SPEC §2.3).
static inline void cpu_unpack_k4_scales(const uint8_t s[12], uint8_t sc[8], uint8_t m[8]) {
  for (int j = 0; j < 4; j++) {
    sc[j] = s[j] & 63;
    m[j] = s[j + 4] & 63;
    sc[j + 4] = (uint8_t)((s[j + 8] & 15) | ((s[j] >> 6) << 4));
    m[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
  }
}

// Unpacks the sixteen signed 6-bit scales of Q3_K.
static inline void cpu_unpack_q3_scales(const uint8_t s[12], int8_t sc[16]) {
  for (int k = 0; k < 16; k++) {
    int lo = k < 8 ? (s[k] & 15) : (s[k - 8] >> 4);
    int hi = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
    sc[k] = (int8_t)((lo | hi << 4) - 32);
  }
}

// One weight row against 4 activation rows (xq + k*xs, k < 4): out[k] = row · x_k. Lets
// cpu_matmul unpack each weight block once for 4 activations (prefill).
typedef void (*cpu_vec_dot4_fn)(int64_t n, const void *w, const void *xq, size_t xs, float out[4]);

// Dot function used by cpu_vec_dot for t right now (never NULL for a supported type).
cpu_vec_dot_fn cpu_vec_dot_get(enum ferry_type t);
// The 4-activation kernel of the current path for t, or NULL (then call the dot 4 times).
cpu_vec_dot4_fn cpu_vec_dot4_get(enum ferry_type t);
// Fill tab4[t] for the types each SIMD file has 4-activation kernels for.
void cpu_quants_fill_avx2_dot4(cpu_vec_dot4_fn tab4[FT_COUNT]);
void cpu_quants_fill_avx512_dot4(cpu_vec_dot4_fn tab4[FT_COUNT]);

// Scalar table (quants_ref.c).
void cpu_quants_fill_ref(cpu_vec_dot_fn tab[FT_COUNT]);
// Per-ISA tables: fill tab[t] for the types a file accelerates (others left untouched).
void cpu_quants_fill_avx2(cpu_vec_dot_fn tab[FT_COUNT]);
void cpu_quants_fill_avx512(cpu_vec_dot_fn tab[FT_COUNT]);
