// kernels/cuda/quant.cuh: every weight format on the GPU, as traits shared by quant.cu
// (dequant, embed, mat-vec, matmul) and moe.cu (the expert FFN). Private to kernels/cuda/.
//
// Each format has two decoders, both following MODEL_SPEC §2 formula by formula and both
// also compiled for the host (cuda_host_dequant / cuda_host_matvec replay them in CI):
//  - piece<A>(block, pc, v): a run of PL consecutive elements of one block that share one
//    scale (16 for the K-quants, 8 for Q8_0/Q4_0, 1 for the float types), decoded to
//    floats. Used to dequantize (GEMM tiles, embeddings).
//  - dot<A>(block, u, xb): the dot of "unit" u of a block (UPB units per block) with the
//    matching activations xb[0..QK). Used by the mat-vec. A unit is what one lane reads in
//    a few wide loads (16 to 32 elements); quants become floats by the magic-number trick
//    (0x4B000000 | q is the float 2^23 + q, so one byte permute and one subtraction,
//    exact, instead of a quarter-rate integer-to-float conversion), each sub-block's
//    products are summed first and scaled once.
// A is the alignment the caller guarantees for every block start (and, for A > 1, that
// x is 16-byte aligned): loads are as wide as A allows; A = 1 reads bytes. The
// arithmetic never depends on A, so a product gives the same bits whatever the pointers'
// alignment (moe_ffn == moe_ffn_ids bit for bit needs that).
#pragma once
#include <cuda_bf16.h>

#include "kernels/cuda/common.cuh"

namespace fq {

// get_scale_min_k4 of MODEL_SPEC §2.3 (Q4_K, Q5_K): 6-bit scale and min of sub-block j.
__host__ __device__ __forceinline__ void scale_min_k4(const uint8_t *s, int j, float *sc,
                                                      float *m) {
  if (j < 4) {
    *sc = (float)(s[j] & 63);
    *m = (float)(s[j + 4] & 63);
  } else {
    *sc = (float)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    *m = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// The same from the 12 scale bytes held in three little-endian words (no byte array, so
// a run-time j stays in registers).
__host__ __device__ __forceinline__ void scale_min_k4w(uint32_t s0, uint32_t s1, uint32_t s2, int j,
                                                       float *sc, float *m) {
  if (j < 4) {
    *sc = (float)((s0 >> (8 * j)) & 63);
    *m = (float)((s1 >> (8 * j)) & 63);
  } else {
    const int i = 8 * (j - 4);
    *sc = (float)(((s2 >> i) & 0xF) | (((s0 >> i) >> 6 & 3) << 4));
    *m = (float)(((s2 >> i) >> 4 & 0xF) | (((s1 >> i) >> 6 & 3) << 4));
  }
}

// Copies N bytes from p into o with A-byte words where the caller guarantees p is
// A-aligned (A = 2, 4 or 16); A = 1 reads bytes.
template <int N, int A>
__host__ __device__ __forceinline__ void ldbytes(const uint8_t *p, uint8_t *o) {
  if constexpr (A >= 16 && N % 16 == 0) {
    FERRY_UNROLL
    for (int j = 0; j < N / 16; j++) {
      const uint4 v = ((const uint4 *)p)[j];
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
      FERRY_UNROLL
      for (int k = 0; k < 16; k++) o[16 * j + k] = (uint8_t)(w[k >> 2] >> (8 * (k & 3)));
    }
  } else if constexpr (A >= 4 && N % 4 == 0) {
    FERRY_UNROLL
    for (int j = 0; j < N / 4; j++) {
      const uint32_t w = ((const uint32_t *)p)[j];
      FERRY_UNROLL
      for (int k = 0; k < 4; k++) o[4 * j + k] = (uint8_t)(w >> (8 * k));
    }
  } else if constexpr (A >= 2 && N % 2 == 0) {
    FERRY_UNROLL
    for (int j = 0; j < N / 2; j++) {
      const uint16_t w = ((const uint16_t *)p)[j];
      o[2 * j] = (uint8_t)w;
      o[2 * j + 1] = (uint8_t)(w >> 8);
    }
  } else {
    FERRY_UNROLL
    for (int i = 0; i < N; i++) o[i] = p[i];
  }
}

// A little-endian 32-bit word at p (p A-aligned: one load for A >= 4, two for A = 2).
template <int A>
__host__ __device__ __forceinline__ uint32_t ld32(const uint8_t *p) {
  if constexpr (A >= 4) {
    return *(const uint32_t *)p;
  } else if constexpr (A >= 2) {
    const uint16_t *q = (const uint16_t *)p;
    return (uint32_t)q[0] | ((uint32_t)q[1] << 16);
  } else {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
  }
}

// 16 bytes at p as four words (one load for A >= 16).
template <int A>
__host__ __device__ __forceinline__ uint4 ld128(const uint8_t *p) {
  if constexpr (A >= 16) {
    return *(const uint4 *)p;
  } else {
    uint4 v;
    v.x = ld32<A>(p);
    v.y = ld32<A>(p + 4);
    v.z = ld32<A>(p + 8);
    v.w = ld32<A>(p + 12);
    return v;
  }
}

// 16-bit float at p (2-aligned for A >= 2).
template <int A>
__host__ __device__ __forceinline__ float ldh(const uint8_t *p) {
  if constexpr (A >= 2)
    return __half2float(__ushort_as_half(*(const unsigned short *)p));
  else
    return load_f16(p);
}

// Four activations at p (16-byte aligned when A > 1).
template <int A>
__host__ __device__ __forceinline__ float4 ldx4(const float *p) {
  if constexpr (A > 1) {
    return *(const float4 *)p;
  } else {
    float4 v;
    v.x = p[0];
    v.y = p[1];
    v.z = p[2];
    v.w = p[3];
    return v;
  }
}

__host__ __device__ __forceinline__ uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#ifdef __CUDA_ARCH__
  return __byte_perm(x, y, s);
#else
  const uint64_t v = ((uint64_t)y << 32) | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; i++) r |= (uint32_t)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
#endif
}

constexpr float MAGIC = 8388608.0f; // 2^23: the float with bits 0x4B000000

// Byte K of v (0..255) as a float minus `bias` (exact): bits 0x4B0000vv = 2^23 + vv.
template <int K>
__host__ __device__ __forceinline__ float bytef(uint32_t v, float magic_plus_bias) {
  return bits_to_f32(byte_perm(v, 0x4Bu, 0x4550u | K)) - magic_plus_bias;
}

// acc + sum_k x[k] * (byte k of v - bias), in the order k = 0..3.
__host__ __device__ __forceinline__ float dot4(uint32_t v, float4 x, float mb, float acc) {
  acc = fmaf(x.x, bytef<0>(v, mb), acc);
  acc = fmaf(x.y, bytef<1>(v, mb), acc);
  acc = fmaf(x.z, bytef<2>(v, mb), acc);
  return fmaf(x.w, bytef<3>(v, mb), acc);
}

__host__ __device__ __forceinline__ float sum4(float4 x, float acc) {
  return acc + x.x + x.y + x.z + x.w;
}

// ---- K-quants, 256 elements per block ----

// The end of a Q4_K/Q5_K unit: sub-blocks sb0 and sb0 + 1 (the low and high nibbles of the
// same bytes) scaled and offset by their 6-bit scales and mins. al, ah: the unit's dots
// with the quants; sl, sh: the sums of the matching activations.
template <int A>
__host__ __device__ __forceinline__ float k4_unit(const uint8_t *b, int sb0, float al, float ah,
                                                  float sl, float sh) {
  const uint32_t s0 = ld32<A>(b + 4), s1 = ld32<A>(b + 8), s2 = ld32<A>(b + 12);
  float sc0, m0, sc1, m1;
  scale_min_k4w(s0, s1, s2, sb0, &sc0, &m0);
  scale_min_k4w(s0, s1, s2, sb0 + 1, &sc1, &m1);
  const float d = ldh<A>(b), dm = ldh<A>(b + 2);
  return d * (sc0 * al + sc1 * ah) - dm * (m0 * sl + m1 * sh);
}

struct t_q4_k {
  static constexpr int QK = 256, BYTES = 144, PL = 16, ALIGN = 16, UPB = 8;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const int sb = pc >> 1, l0 = (pc & 1) * 16, shift = (sb & 1) * 4;
    float sc, m;
    scale_min_k4(b + 4, sb, &sc, &m);
    const float d = load_f16(b) * sc, dm = load_f16(b + 2) * m;
    uint8_t q[16];
    ldbytes<16, A>(b + 16 + 32 * (sb >> 1) + l0, q);
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) v[i] = d * (float)((q[i] >> shift) & 0xF) - dm;
  }
  // Unit u: quant bytes 32*jj + l0 .. +15 (jj = u/2, l0 = 0 or 16): elements l0.. of
  // sub-block 2jj (low nibbles) and of sub-block 2jj+1 (high nibbles).
  template <int A>
  __host__ __device__ static float dot(const uint8_t *b, int u, const float *xb) {
    const int jj = u >> 1, l0 = (u & 1) * 16;
    const uint4 q = ld128<A>(b + 16 + 32 * jj + l0);
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
    const float *xl = xb + 64 * jj + l0, *xh = xl + 32;
    float al = 0.0f, ah = 0.0f, sl = 0.0f, sh = 0.0f;
    FERRY_UNROLL
    for (int i = 0; i < 4; i++) {
      const float4 x0 = ldx4<A>(xl + 4 * i), x1 = ldx4<A>(xh + 4 * i);
      al = dot4(w[i] & 0x0F0F0F0Fu, x0, MAGIC, al);
      ah = dot4((w[i] >> 4) & 0x0F0F0F0Fu, x1, MAGIC, ah);
      sl = sum4(x0, sl);
      sh = sum4(x1, sh);
    }
    return k4_unit<A>(b, 2 * jj, al, ah, sl, sh);
  }
};

struct t_q5_k {
  static constexpr int QK = 256, BYTES = 176, PL = 16, ALIGN = 16, UPB = 8;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const int sb = pc >> 1, l0 = (pc & 1) * 16, shift = (sb & 1) * 4;
    float sc, m;
    scale_min_k4(b + 4, sb, &sc, &m);
    const float d = load_f16(b) * sc, dm = load_f16(b + 2) * m;
    uint8_t qh[16], q[16];
    ldbytes<16, A>(b + 16 + l0, qh);
    ldbytes<16, A>(b + 48 + 32 * (sb >> 1) + l0, q);
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) {
      const int lo = (q[i] >> shift) & 0xF, hi = (qh[i] >> sb) & 1;
      v[i] = d * (float)(lo + 16 * hi) - dm;
    }
  }
  // As Q4_K; bit sb of qh[l] is the fifth bit of element l of sub-block sb.
  template <int A>
  __host__ __device__ static float dot(const uint8_t *b, int u, const float *xb) {
    const int jj = u >> 1, l0 = (u & 1) * 16, sb0 = 2 * jj, sb1 = 2 * jj + 1;
    const uint4 q = ld128<A>(b + 48 + 32 * jj + l0), h = ld128<A>(b + 16 + l0);
    const uint32_t w[4] = {q.x, q.y, q.z, q.w}, hw[4] = {h.x, h.y, h.z, h.w};
    const float *xl = xb + 64 * jj + l0, *xh = xl + 32;
    float al = 0.0f, ah = 0.0f, sl = 0.0f, sh = 0.0f;
    FERRY_UNROLL
    for (int i = 0; i < 4; i++) {
      const float4 x0 = ldx4<A>(xl + 4 * i), x1 = ldx4<A>(xh + 4 * i);
      const uint32_t lo = (w[i] & 0x0F0F0F0Fu) | (((hw[i] >> sb0) & 0x01010101u) << 4);
      const uint32_t hi = ((w[i] >> 4) & 0x0F0F0F0Fu) | (((hw[i] >> sb1) & 0x01010101u) << 4);
      al = dot4(lo, x0, MAGIC, al);
      ah = dot4(hi, x1, MAGIC, ah);
      sl = sum4(x0, sl);
      sh = sum4(x1, sh);
    }
    return k4_unit<A>(b, sb0, al, ah, sl, sh);
  }
};

struct t_q6_k {
  static constexpr int QK = 256, BYTES = 210, PL = 16, ALIGN = 2, UPB = 16;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const int p0 = pc * 16, h = p0 >> 7, r = p0 & 127, g = r >> 5, l0 = r & 31;
    const float d = load_f16(b + 208) * (float)(int8_t)b[192 + pc];
    uint8_t ql[16], qh[16];
    ldbytes<16, A>(b + 64 * h + 32 * (g & 1) + l0, ql);
    ldbytes<16, A>(b + 128 + 32 * h + l0, qh);
    const int lshift = g >= 2 ? 4 : 0, hshift = 2 * g;
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) {
      const int q = (((ql[i] >> lshift) & 0xF) | (((qh[i] >> hshift) & 3) << 4)) - 32;
      v[i] = d * (float)q;
    }
  }
  // Unit u: half h = u/8, l0 = 4*(u%8): elements 128h + 32g + l0 .. +3 for g = 0..3, from
  // ql[64h + l0], ql[64h + 32 + l0] (low nibbles g = 0, 1; high nibbles g = 2, 3) and
  // qh[32h + l0] (bits 2g, 2g+1); scale sc[8h + 2g + l0/16].
  template <int A>
  __host__ __device__ static float dot(const uint8_t *b, int u, const float *xb) {
    const int h = u >> 3, l0 = (u & 7) * 4, c = l0 >> 4;
    const uint32_t ql0 = ld32<A>(b + 64 * h + l0), ql1 = ld32<A>(b + 64 * h + 32 + l0);
    const uint32_t qh = ld32<A>(b + 128 + 32 * h + l0);
    const float *x = xb + 128 * h + l0;
    float tot = 0.0f;
    FERRY_UNROLL
    for (int g = 0; g < 4; g++) {
      const uint32_t ql = (g & 1) ? ql1 : ql0;
      const uint32_t v =
          ((ql >> (4 * (g >> 1))) & 0x0F0F0F0Fu) | (((qh >> (2 * g)) & 0x03030303u) << 4);
      const float a = dot4(v, ldx4<A>(x + 32 * g), MAGIC + 32.0f, 0.0f);
      const float sc = (float)(int8_t)b[192 + 8 * h + 2 * g + c];
      tot = fmaf(sc, a, tot);
    }
    return ldh<A>(b + 208) * tot;
  }
};

struct t_q3_k {
  static constexpr int QK = 256, BYTES = 110, PL = 16, ALIGN = 2, UPB = 16;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const uint8_t *s = b + 96;
    const int k = pc;
    const int lo = k < 8 ? (s[k] & 0xF) : (s[k - 8] >> 4);
    const int hi = (s[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
    const float d = load_f16(b + 108) * (float)((lo | (hi << 4)) - 32);
    const int p0 = pc * 16, h = p0 >> 7, j = (p0 & 127) >> 5, l0 = p0 & 31, hbit = p0 >> 5;
    uint8_t q[16], hm[16];
    ldbytes<16, A>(b + 32 + 32 * h + l0, q);
    ldbytes<16, A>(b + l0, hm);
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) {
      const int qv = ((q[i] >> (2 * j)) & 3) - (((hm[i] >> hbit) & 1) ? 0 : 4);
      v[i] = d * (float)qv;
    }
  }
  // Unit u: half h = u/8, l0 = 4*(u%8): elements 128h + 32g + l0 .. +3 (g = 0..3) from
  // bits 2g of qs[32h + l0 ..] and bit 4h+g of hmask[l0 ..]: value q + 4*hbit - 4.
  // Scale index k = 8h + 2g + l0/16 (6 bits from the 12 packed scale bytes, minus 32).
  template <int A>
  __host__ __device__ static float dot(const uint8_t *b, int u, const float *xb) {
    const int h = u >> 3, l0 = (u & 7) * 4, c = l0 >> 4;
    const uint32_t wq = ld32<A>(b + 32 + 32 * h + l0), wm = ld32<A>(b + l0);
    const uint8_t *s = b + 96;
    const float *x = xb + 128 * h + l0;
    float tot = 0.0f;
    FERRY_UNROLL
    for (int g = 0; g < 4; g++) {
      const uint32_t v =
          ((wq >> (2 * g)) & 0x03030303u) | (((wm >> (4 * h + g)) & 0x01010101u) << 2);
      const float a = dot4(v, ldx4<A>(x + 32 * g), MAGIC + 4.0f, 0.0f);
      const int kk = 2 * g + c, k = 8 * h + kk; // kk < 8
      const int lo = (s[kk] >> (4 * h)) & 0xF;
      const int hi = (s[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
      tot = fmaf((float)((lo | (hi << 4)) - 32), a, tot);
    }
    return ldh<A>(b + 108) * tot;
  }
};

struct t_q2_k {
  static constexpr int QK = 256, BYTES = 84, PL = 16, ALIGN = 4, UPB = 16;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const int sc = b[pc];
    const float d = load_f16(b + 80) * (float)(sc & 0xF), dm = load_f16(b + 82) * (float)(sc >> 4);
    const int p0 = pc * 16, h = p0 >> 7, j = (p0 & 127) >> 5, l0 = p0 & 31;
    uint8_t q[16];
    ldbytes<16, A>(b + 16 + 32 * h + l0, q);
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) v[i] = d * (float)((q[i] >> (2 * j)) & 3) - dm;
  }
  // Unit u: half h = u/8, l0 = 4*(u%8): elements 128h + 32g + l0 .. +3 from bits 2g of
  // qs[32h + l0 ..]; scale byte 8h + 2g + l0/16 (low nibble scale, high nibble min).
  template <int A>
  __host__ __device__ static float dot(const uint8_t *b, int u, const float *xb) {
    const int h = u >> 3, l0 = (u & 7) * 4, c = l0 >> 4;
    const uint32_t wq = ld32<A>(b + 16 + 32 * h + l0);
    const float *x = xb + 128 * h + l0;
    float tot = 0.0f, mn = 0.0f;
    FERRY_UNROLL
    for (int g = 0; g < 4; g++) {
      const float4 x4 = ldx4<A>(x + 32 * g);
      const float a = dot4((wq >> (2 * g)) & 0x03030303u, x4, MAGIC, 0.0f);
      const int sc = b[8 * h + 2 * g + c];
      tot = fmaf((float)(sc & 0xF), a, tot);
      mn = fmaf((float)(sc >> 4), sum4(x4, 0.0f), mn);
    }
    return ldh<A>(b + 80) * tot - ldh<A>(b + 82) * mn;
  }
};

// ---- 32-element blocks ----

struct t_q8_0 {
  static constexpr int QK = 32, BYTES = 34, PL = 8, ALIGN = 2, UPB = 2;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const float d = load_f16(b);
    uint8_t q[8];
    ldbytes<8, A>(b + 2 + pc * 8, q);
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) v[i] = d * (float)(int8_t)q[i];
  }
  // Unit u: quants 16u .. 16u+15 (int8 made unsigned by flipping the sign bit).
  template <int A>
  __host__ __device__ static float dot(const uint8_t *b, int u, const float *xb) {
    const uint8_t *q = b + 2 + 16 * u;
    const float *x = xb + 16 * u;
    float a = 0.0f;
    FERRY_UNROLL
    for (int i = 0; i < 4; i++)
      a = dot4(ld32<A>(q + 4 * i) ^ 0x80808080u, ldx4<A>(x + 4 * i), MAGIC + 128.0f, a);
    return ldh<A>(b) * a;
  }
};

struct t_q4_0 {
  static constexpr int QK = 32, BYTES = 18, PL = 8, ALIGN = 2, UPB = 2;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int pc, float *v) {
    const float d = load_f16(b);
    // Elements 0..15 are the low nibbles of qs[0..15], 16..31 the high nibbles.
    const int e0 = pc * 8, shift = e0 >= 16 ? 4 : 0;
    uint8_t q[8];
    ldbytes<8, A>(b + 2 + (e0 & 15), q);
    FERRY_UNROLL
    for (int i = 0; i < PL; i++) v[i] = d * (float)(((q[i] >> shift) & 0xF) - 8);
  }
  // Unit u: qs[8u .. 8u+7]: elements 8u.. (low nibbles) and 16 + 8u.. (high nibbles).
  template <int A>
  __host__ __device__ static float dot(const uint8_t *b, int u, const float *xb) {
    const uint8_t *q = b + 2 + 8 * u;
    const float *x = xb + 8 * u;
    float a = 0.0f;
    FERRY_UNROLL
    for (int i = 0; i < 2; i++) {
      const uint32_t w = ld32<A>(q + 4 * i);
      a = dot4(w & 0x0F0F0F0Fu, ldx4<A>(x + 4 * i), MAGIC + 8.0f, a);
      a = dot4((w >> 4) & 0x0F0F0F0Fu, ldx4<A>(x + 16 + 4 * i), MAGIC + 8.0f, a);
    }
    return ldh<A>(b) * a;
  }
};

// ---- float types: QK = 1; the mat-vec reads them with float_dot below ----

struct t_f32 {
  static constexpr int QK = 1, BYTES = 4, PL = 1, ALIGN = 4, UPB = 1, VEC = 4;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int, float *v) {
    if constexpr (A >= 4)
      v[0] = *(const float *)b;
    else
      v[0] = bits_to_f32((uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) |
                         ((uint32_t)b[3] << 24));
  }
  // VEC elements from 16 aligned bytes.
  __host__ __device__ static void vec(uint4 q, float *v) {
    v[0] = bits_to_f32(q.x);
    v[1] = bits_to_f32(q.y);
    v[2] = bits_to_f32(q.z);
    v[3] = bits_to_f32(q.w);
  }
};

__host__ __device__ __forceinline__ float h2f(uint32_t bits16) {
  return __half2float(__ushort_as_half((unsigned short)bits16));
}

struct t_f16 {
  static constexpr int QK = 1, BYTES = 2, PL = 1, ALIGN = 2, UPB = 1, VEC = 8;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int, float *v) {
    v[0] = ldh<A>(b);
  }
  __host__ __device__ static void vec(uint4 q, float *v) {
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
    FERRY_UNROLL
    for (int i = 0; i < 4; i++) {
      v[2 * i] = h2f(w[i] & 0xFFFF);
      v[2 * i + 1] = h2f(w[i] >> 16);
    }
  }
};

struct t_bf16 {
  static constexpr int QK = 1, BYTES = 2, PL = 1, ALIGN = 2, UPB = 1, VEC = 8;
  template <int A>
  __host__ __device__ static void piece(const uint8_t *b, int, float *v) {
    v[0] = bits_to_f32((uint32_t)(b[0] | (b[1] << 8)) << 16);
  }
  __host__ __device__ static void vec(uint4 q, float *v) {
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
    FERRY_UNROLL
    for (int i = 0; i < 4; i++) {
      v[2 * i] = bits_to_f32(w[i] << 16);
      v[2 * i + 1] = bits_to_f32(w[i] & 0xFFFF0000u);
    }
  }
};

template <class T>
inline constexpr bool is_float_type = T::QK == 1;

// The wide-load instantiation of T's mat-vec: 16 for the float types (vector path), else
// T::ALIGN. The other instantiation is A = 1 (byte loads).
template <class T>
inline constexpr int wide_a = is_float_type<T> ? 16 : T::ALIGN;

// One lane's share of the dot of a weight row (nb blocks, or nb elements for the float
// types) with x: lane takes units lane, lane+32, ... For the float types A = 16 means
// row and x are 16-byte aligned and nb % VEC == 0: VEC elements per 16-byte load.
template <class T, int A>
__host__ __device__ __forceinline__ float lane_dot(const uint8_t *wr, int64_t nb, const float *x,
                                                   int lane) {
  float acc = 0.0f;
  if constexpr (is_float_type<T>) {
    if constexpr (A >= 16) {
      const int64_t nv = nb / T::VEC;
      for (int64_t j = lane; j < nv; j += 32) {
        float v[T::VEC];
        T::vec(*(const uint4 *)(wr + j * 16), v);
        const float *xj = x + j * T::VEC;
        FERRY_UNROLL
        for (int k = 0; k < T::VEC; k += 4) {
          const float4 x4 = *(const float4 *)(xj + k);
          acc = fmaf(v[k], x4.x, acc);
          acc = fmaf(v[k + 1], x4.y, acc);
          acc = fmaf(v[k + 2], x4.z, acc);
          acc = fmaf(v[k + 3], x4.w, acc);
        }
      }
    } else {
      for (int64_t j = lane; j < nb; j += 32) {
        float v;
        T::template piece<A>(wr + j * T::BYTES, 0, &v);
        acc = fmaf(v, x[j], acc);
      }
    }
  } else {
    const int64_t nu = nb * T::UPB;
    // two units per trip: the second unit's loads are issued before the first is summed
    FERRY_UNROLL2
    for (int64_t j = lane; j < nu; j += 32) {
      const int64_t b = j / T::UPB;
      acc += T::template dot<A>(wr + b * T::BYTES, (int)(j % T::UPB), x + b * T::QK);
    }
  }
  return acc;
}

// The alignment class (template A) of a mat-vec over rows of row_bytes starting at w with
// activations x (the float types: 16 when every row and x allow 16-byte loads).
template <class T>
__host__ __forceinline__ int mv_align(const void *w, int64_t row_bytes, int64_t n, const float *x,
                                      int64_t ldx) {
  const bool x_ok = (uintptr_t)x % 16 == 0 && ldx % 4 == 0;
  if constexpr (is_float_type<T>) {
    return x_ok && (uintptr_t)w % 16 == 0 && row_bytes % 16 == 0 && n % T::VEC == 0 ? 16 : 1;
  } else {
    return x_ok && (uintptr_t)w % T::ALIGN == 0 && row_bytes % T::ALIGN == 0 ? T::ALIGN : 1;
  }
}

// Expands X(FT, T) for every weight type.
// clang-format off
#define FQ_TYPES(X)                                                                    \
  X(FT_Q4_K, fq::t_q4_k) X(FT_Q5_K, fq::t_q5_k) X(FT_Q6_K, fq::t_q6_k)                 \
  X(FT_Q3_K, fq::t_q3_k) X(FT_Q2_K, fq::t_q2_k) X(FT_Q8_0, fq::t_q8_0)                 \
  X(FT_Q4_0, fq::t_q4_0) X(FT_F32, fq::t_f32) X(FT_F16, fq::t_f16) X(FT_BF16, fq::t_bf16)
// clang-format on

} // namespace fq
