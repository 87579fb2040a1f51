// kernels/cpu/quants_avx2.c: AVX2 (+FMA, F16C) dot products, compiled per function with
// target attributes so the rest of the build stays baseline x86-64; quants.c only installs
// them after checking the CPU. All paths compute the scalar reference's exact integer sums
// (per 32-element lane group, per block); Q4_K/Q5_K/Q6_K/Q8_0/Q4_0 and the float types then
// convert per lane and accumulate in float vectors — rounding-level differences from the
// reference, as llama.cpp's own SIMD paths have — while Q2_K/Q3_K sum per block exactly.
#include <string.h>

#include "base/base.h"
#include "kernels/cpu/quants_impl.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define TGT __attribute__((target("avx2,fma,f16c")))

TGT static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

TGT static inline float hsum_ps(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

TGT static inline int hsum_epi32(__m256i v) {
  __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4E));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0xB1));
  return _mm_cvtsi128_si32(x);
}

// Σ pairs of u8·s8 products scaled by int16 factors: 8 int32 lanes. q ≤ 63 keeps the
// maddubs pair sums (≤ 2·63·127) clear of int16 saturation.
TGT static inline __m256i dot_u8s8(__m256i q, __m256i a, __m256i sc16) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), sc16);
}

// For blocks with sixteen 16-element groups: `base` holds the int16 scales of one
// 128-element half (groups 8h..8h+7) in both 128-bit lanes; pair_pick(base, k) gives the
// scale vector of its 32-element chunk k (lanes 0-7 group 2k, lanes 8-15 group 2k+1).
static const uint8_t k_pair16[4][32] __attribute__((aligned(32))) = {
#define P16(a, b)                                                                                \
  {                                                                                              \
    a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, b, b + 1, b, \
        b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1                        \
  }
    P16(0, 2), P16(4, 6), P16(8, 10), P16(12, 14)
#undef P16
};

// sc8: the sixteen int8 scales of a block; h selects groups 0-7 or 8-15.
TGT static inline __m256i pair_base(__m128i sc8, int h) {
  return _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(h ? _mm_unpackhi_epi64(sc8, sc8) : sc8));
}

TGT static inline __m256i pair_pick(__m256i base, int k) {
  return _mm256_shuffle_epi8(base, _mm256_load_si256((const __m256i *)k_pair16[k]));
}

// ---------------------------------------------------------------- float types

TGT static float dot_f32_avx2(int64_t n, const void *w, const void *xq) {
  const float *a = w, *b = xq;
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

TGT static inline __m256 ld_f16(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
TGT static inline __m256 ld_bf16(const uint16_t *p) {
  __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

#define FLOAT16_DOT(NAME, LD, CVT)                                                  \
  TGT static float NAME(int64_t n, const void *w, const void *xq) {                 \
    const uint16_t *a = w, *b = xq;                                                 \
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                     \
    int64_t i = 0;                                                                  \
    for (; i + 32 <= n; i += 32) {                                                  \
      s0 = _mm256_fmadd_ps(LD(a + i), LD(b + i), s0);                               \
      s1 = _mm256_fmadd_ps(LD(a + i + 8), LD(b + i + 8), s1);                       \
      s2 = _mm256_fmadd_ps(LD(a + i + 16), LD(b + i + 16), s2);                     \
      s3 = _mm256_fmadd_ps(LD(a + i + 24), LD(b + i + 24), s3);                     \
    }                                                                               \
    float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3))); \
    for (; i < n; i++) s += CVT(a[i]) * CVT(b[i]);                                  \
    return s;                                                                       \
  }

FLOAT16_DOT(dot_f16_avx2, ld_f16, h2f)
FLOAT16_DOT(dot_bf16_avx2, ld_bf16, ferry_bf16_to_f32)

// ---------------------------------------------------------------- Q8_0 / Q4_0

// Signed·signed int8 dot via maddubs: |w| (unsigned) times x carrying w's sign.
TGT static inline __m256 dot_s8_ps(__m256i w, __m256i x) {
  __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

TGT static float dot_q8_0_avx2(int64_t n, const void *w, const void *xq) {
  const block_q8_0 *a = w, *b = xq;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
  int64_t nb = n / 32, i = 0;
  for (; i + 2 <= nb; i += 2) {
    __m256 p0 = dot_s8_ps(_mm256_loadu_si256((const __m256i *)a[i].qs),
                          _mm256_loadu_si256((const __m256i *)b[i].qs));
    __m256 p1 = dot_s8_ps(_mm256_loadu_si256((const __m256i *)a[i + 1].qs),
                          _mm256_loadu_si256((const __m256i *)b[i + 1].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(a[i].d) * h2f(b[i].d)), p0, acc0);
    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(a[i + 1].d) * h2f(b[i + 1].d)), p1, acc1);
  }
  for (; i < nb; i++) {
    __m256 p0 = dot_s8_ps(_mm256_loadu_si256((const __m256i *)a[i].qs),
                          _mm256_loadu_si256((const __m256i *)b[i].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(a[i].d) * h2f(b[i].d)), p0, acc0);
  }
  return hsum_ps(_mm256_add_ps(acc0, acc1));
}

TGT static float dot_q4_0_avx2(int64_t n, const void *w, const void *xq) {
  const block_q4_0 *a = w;
  const block_q8_0 *b = xq;
  const __m128i m4 = _mm_set1_epi8(15);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / 32; i++) {
    __m128i q = _mm_loadu_si128((const __m128i *)a[i].qs);
    __m256i qw = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
    qw = _mm256_sub_epi8(qw, _mm256_set1_epi8(8));
    __m256 p = dot_s8_ps(qw, _mm256_loadu_si256((const __m256i *)b[i].qs));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(a[i].d) * h2f(b[i].d)), p, acc);
  }
  return hsum_ps(acc);
}

// ---------------------------------------------------------------- K-quants

// Q4_K/Q5_K 6-bit scales and mins as 16 bytes [SC0..SC7, M0..M7], unpacked with 32-bit
// word operations (same bit map as cpu_unpack_k4_scales, checked by the tests).
TGT static inline __m128i k4_scales_mins(const uint8_t s[12]) {
  uint32_t a0, a1, a2;
  memcpy(&a0, s, 4), memcpy(&a1, s + 4, 4), memcpy(&a2, s + 8, 4);
  uint32_t sl = a0 & 0x3F3F3F3Fu, ml = a1 & 0x3F3F3F3Fu;
  uint32_t sh = (a2 & 0x0F0F0F0Fu) | ((a0 >> 2) & 0x30303030u);
  uint32_t mh = ((a2 >> 4) & 0x0F0F0F0Fu) | ((a1 >> 2) & 0x30303030u);
  return _mm_set_epi32((int)mh, (int)ml, (int)sh, (int)sl);
}

// pshufb indices broadcasting int16 lane k of each 128-bit half.
static const uint8_t k_bcast16[8][32] __attribute__((aligned(32))) = {
#define B16(k)                                                                                    \
  {                                                                                               \
    2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1,     \
        2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, \
        2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1, \
        2 * k, 2 * k + 1                                                                          \
  }
    B16(0), B16(1), B16(2), B16(3), B16(4),
    B16(5), B16(6), B16(7)
#undef B16
};

TGT static inline __m256i bcast16(__m256i s, int k) {
  return _mm256_shuffle_epi8(s, _mm256_load_si256((const __m256i *)k_bcast16[k]));
}

// [d·xd, dmin·xd] from a block's adjacent f16 d and dmin in one conversion (the same
// products as scalar h2f(d)·xd).
TGT static inline __m128 k4_dd(const uint16_t *d_dmin, float xd) {
  uint32_t u;
  memcpy(&u, d_dmin, 4);
  return _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128((int)u)), _mm_set1_ps(xd));
}

// Mins term of one Q4_K/Q5_K block: 8 int32 lanes M_j·(bsums[2j] + bsums[2j+1]).
TGT static inline __m256i k4_mins(__m128i scm, const int16_t *bsums) {
  __m256i md = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(scm, scm));
  return _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bsums), md);
}

// Per block the integer sums stay exact; they are converted per lane and accumulated in
// float vectors (no horizontal sum per block), which is what makes this path fast.
TGT static float dot_q4_K_avx2(int64_t n, const void *w, const void *xq) {
  const block_q4_K *a = w;
  const block_q8_K *b = xq;
  const __m256i m4 = _mm256_set1_epi8(15);
  __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / 256; i++) {
    __m128i scm = k4_scales_mins(a[i].scales);
    __m256i S = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scm));
    __m256i v = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
      __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c));
      __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      v = _mm256_add_epi32(v, dot_u8s8(lo, _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * c)),
                                       bcast16(S, 2 * c)));
      v = _mm256_add_epi32(
          v, dot_u8s8(hi, _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * c + 32)),
                      bcast16(S, 2 * c + 1)));
    }
    __m128 dd = k4_dd(&a[i].d, b[i].d);
    acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(v), acc);
    accm = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
                           _mm256_cvtepi32_ps(k4_mins(scm, b[i].bsums)), accm);
  }
  return hsum_ps(_mm256_sub_ps(acc, accm));
}

TGT static float dot_q5_K_avx2(int64_t n, const void *w, const void *xq) {
  const block_q5_K *a = w;
  const block_q8_K *b = xq;
  const __m256i m4 = _mm256_set1_epi8(15), b4 = _mm256_set1_epi8(16);
  __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / 256; i++) {
    __m128i scm = k4_scales_mins(a[i].scales);
    __m256i S = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scm));
    __m256i qh = _mm256_loadu_si256((const __m256i *)a[i].qh);
    __m256i v = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
      __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c));
      __m256i bl = _mm256_set1_epi8((char)(1 << (2 * c))),
              bh = _mm256_set1_epi8((char)(1 << (2 * c + 1)));
      __m256i hl = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bl), bl), b4);
      __m256i hh = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bh), bh), b4);
      __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), hl);
      __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), hh);
      v = _mm256_add_epi32(v, dot_u8s8(lo, _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * c)),
                                       bcast16(S, 2 * c)));
      v = _mm256_add_epi32(
          v, dot_u8s8(hi, _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * c + 32)),
                      bcast16(S, 2 * c + 1)));
    }
    __m128 dd = k4_dd(&a[i].d, b[i].d);
    acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(v), acc);
    accm = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
                           _mm256_cvtepi32_ps(k4_mins(scm, b[i].bsums)), accm);
  }
  return hsum_ps(_mm256_sub_ps(acc, accm));
}

TGT static float dot_q6_K_avx2(int64_t n, const void *w, const void *xq) {
  const block_q6_K *a = w;
  const block_q8_K *b = xq;
  const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / 256; i++) {
    __m128i sc8 = _mm_loadu_si128((const __m128i *)a[i].scales);
    __m256i v = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m256i ql0 = _mm256_loadu_si256((const __m256i *)(a[i].ql + 64 * h));
      __m256i ql1 = _mm256_loadu_si256((const __m256i *)(a[i].ql + 64 * h + 32));
      __m256i qh = _mm256_loadu_si256((const __m256i *)(a[i].qh + 32 * h));
      __m256i q0 = _mm256_or_si256(_mm256_and_si256(ql0, m4),
                                   _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
      __m256i q1 = _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                   _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
      __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                   _mm256_and_si256(qh, m30));
      __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
      const int8_t *x = b[i].qs + 128 * h;
      __m256i base = pair_base(sc8, h);
      v = _mm256_add_epi32(
          v, dot_u8s8(q0, _mm256_loadu_si256((const __m256i *)x), pair_pick(base, 0)));
      v = _mm256_add_epi32(
          v, dot_u8s8(q1, _mm256_loadu_si256((const __m256i *)(x + 32)), pair_pick(base, 1)));
      v = _mm256_add_epi32(
          v, dot_u8s8(q2, _mm256_loadu_si256((const __m256i *)(x + 64)), pair_pick(base, 2)));
      v = _mm256_add_epi32(
          v, dot_u8s8(q3, _mm256_loadu_si256((const __m256i *)(x + 96)), pair_pick(base, 3)));
    }
    // The stored quants are q+32: remove 32·Σ_g sc_g·Σ_{p∈g} x_p using the bsums.
    __m256i off = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)b[i].bsums),
                                    _mm256_cvtepi8_epi16(sc8));
    v = _mm256_sub_epi32(v, _mm256_slli_epi32(off, 5));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(b[i].d * h2f(a[i].d)), _mm256_cvtepi32_ps(v), acc);
  }
  return hsum_ps(acc);
}

// Q3_K's sixteen 6-bit scales (minus 32) as int8, from the 12 bytes as words a0, a1, a2:
// low nibbles of k<8 in a0/a1, of k>=8 in their high nibbles, 2-bit tops in a2.
TGT static inline __m128i q3_scales(const uint8_t s[12]) {
  uint32_t a0, a1, a2;
  memcpy(&a0, s, 4), memcpy(&a1, s + 4, 4), memcpy(&a2, s + 8, 4);
  const uint32_t m4 = 0x0F0F0F0Fu, m2 = 0x03030303u;
  uint32_t w0 = (a0 & m4) | ((a2 & m2) << 4), w1 = (a1 & m4) | (((a2 >> 2) & m2) << 4);
  uint32_t w2 = ((a0 >> 4) & m4) | (((a2 >> 4) & m2) << 4),
           w3 = ((a1 >> 4) & m4) | (((a2 >> 6) & m2) << 4);
  return _mm_sub_epi8(_mm_set_epi32((int)w3, (int)w2, (int)w1, (int)w0), _mm_set1_epi8(32));
}

TGT static float dot_q3_K_avx2(int64_t n, const void *w, const void *xq) {
  const block_q3_K *a = w;
  const block_q8_K *b = xq;
  const __m256i m3 = _mm256_set1_epi8(3), b2 = _mm256_set1_epi8(4);
  float s = 0;
  for (int64_t i = 0; i < n / 256; i++) {
    __m128i sc8 = q3_scales(a[i].scales);
    __m256i hm = _mm256_loadu_si256((const __m256i *)a[i].hmask);
    __m256i v = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * h));
      __m256i base = pair_base(sc8, h);
      // The four 2-bit planes of q, lowest first (constant shifts).
      __m256i planes[4] = {q, _mm256_srli_epi16(q, 2), _mm256_srli_epi16(q, 4),
                           _mm256_srli_epi16(q, 6)};
#pragma GCC unroll 4
      for (int j = 0; j < 4; j++) {
        int sb = 4 * h + j;
        __m256i bit = _mm256_set1_epi8((char)(1 << sb));
        __m256i hb = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit), b2);
        __m256i lo = _mm256_and_si256(planes[j], m3);
        __m256i x = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * sb));
        v = _mm256_add_epi32(v, dot_u8s8(_mm256_or_si256(lo, hb), x, pair_pick(base, j)));
      }
    }
    // Stored levels are q+4: remove 4·Σ_g sc_g·bsums_g.
    __m256i off = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)b[i].bsums),
                                    _mm256_cvtepi8_epi16(sc8));
    v = _mm256_sub_epi32(v, _mm256_slli_epi32(off, 2));
    int sumi = hsum_epi32(v);
    s += b[i].d * h2f(a[i].d) * (float)sumi;
  }
  return s;
}

TGT static float dot_q2_K_avx2(int64_t n, const void *w, const void *xq) {
  const block_q2_K *a = w;
  const block_q8_K *b = xq;
  const __m256i m3 = _mm256_set1_epi8(3);
  float s = 0;
  for (int64_t i = 0; i < n / 256; i++) {
    __m128i s8 = _mm_loadu_si128((const __m128i *)a[i].scales);
    __m128i sc4 = _mm_and_si128(s8, _mm_set1_epi8(15)); // 4-bit scales (mins in the high nibbles)
    __m256i v = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * h));
      __m256i base = pair_base(sc4, h);
      __m256i planes[4] = {q, _mm256_srli_epi16(q, 2), _mm256_srli_epi16(q, 4),
                           _mm256_srli_epi16(q, 6)};
#pragma GCC unroll 4
      for (int j = 0; j < 4; j++) {
        int sb = 4 * h + j;
        __m256i lo = _mm256_and_si256(planes[j], m3);
        __m256i x = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * sb));
        v = _mm256_add_epi32(v, dot_u8s8(lo, x, pair_pick(base, j)));
      }
    }
    __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), _mm_set1_epi8(15)));
    int summ = hsum_epi32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)b[i].bsums), mins));
    int sumi = hsum_epi32(v);
    s += b[i].d * (h2f(a[i].d) * (float)sumi - h2f(a[i].dmin) * (float)summ);
  }
  return s;
}

// ---------------------------------------------------------------- 4 activations per row
// cpu_matmul's kernels: the weight block is unpacked once per chunk and dotted with four
// activation rows (xq + k*xs); per activation the arithmetic is the single-row kernel's.

TGT static void dot4_q4_K_avx2(int64_t n, const void *w, const void *xq, size_t xs, float out[4]) {
  const block_q4_K *a = w;
  const uint8_t *x0 = xq;
  const __m256i m4 = _mm256_set1_epi8(15);
  __m256 acc[4], accm[4];
  for (int k = 0; k < 4; k++) acc[k] = accm[k] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / 256; i++) {
    const block_q8_K *b[4];
    for (int k = 0; k < 4; k++) b[k] = (const block_q8_K *)(x0 + k * xs) + i;
    __m128i scm = k4_scales_mins(a[i].scales);
    __m256i S = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scm));
    __m256i v[4];
    for (int k = 0; k < 4; k++) v[k] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
      __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c));
      __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      __m256i s0 = bcast16(S, 2 * c), s1 = bcast16(S, 2 * c + 1);
#pragma GCC unroll 4
      for (int k = 0; k < 4; k++) {
        v[k] = _mm256_add_epi32(
            v[k], dot_u8s8(lo, _mm256_loadu_si256((const __m256i *)(b[k]->qs + 64 * c)), s0));
        v[k] = _mm256_add_epi32(
            v[k], dot_u8s8(hi, _mm256_loadu_si256((const __m256i *)(b[k]->qs + 64 * c + 32)), s1));
      }
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
      __m128 dd = k4_dd(&a[i].d, b[k]->d);
      acc[k] = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(v[k]), acc[k]);
      accm[k] = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
                                _mm256_cvtepi32_ps(k4_mins(scm, b[k]->bsums)), accm[k]);
    }
  }
  // Same operations in the same order as dot_q4_K_avx2: bit-identical per activation, so
  // prefill (cpu_matmul) and decode (cpu_matvec) give the same numbers for a token.
  for (int k = 0; k < 4; k++) out[k] = hsum_ps(_mm256_sub_ps(acc[k], accm[k]));
}

TGT static void dot4_q6_K_avx2(int64_t n, const void *w, const void *xq, size_t xs, float out[4]) {
  const block_q6_K *a = w;
  const uint8_t *x0 = xq;
  const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
  __m256 acc[4];
  for (int k = 0; k < 4; k++) acc[k] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / 256; i++) {
    const block_q8_K *b[4];
    for (int k = 0; k < 4; k++) b[k] = (const block_q8_K *)(x0 + k * xs) + i;
    __m128i sc8 = _mm_loadu_si128((const __m128i *)a[i].scales);
    __m256i v[4];
    for (int k = 0; k < 4; k++) v[k] = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m256i ql0 = _mm256_loadu_si256((const __m256i *)(a[i].ql + 64 * h));
      __m256i ql1 = _mm256_loadu_si256((const __m256i *)(a[i].ql + 64 * h + 32));
      __m256i qh = _mm256_loadu_si256((const __m256i *)(a[i].qh + 32 * h));
      __m256i base = pair_base(sc8, h);
#pragma GCC unroll 4
      for (int j = 0; j < 4; j++) {
        __m256i lo4 = j & 1 ? ql1 : ql0;
        if (j >= 2) lo4 = _mm256_srli_epi16(lo4, 4);
        // qh bits 2j..2j+1 moved to bits 4..5: shift left 4, 2, 0 or right 2.
        __m256i hb = j == 0   ? _mm256_slli_epi16(qh, 4)
                     : j == 1 ? _mm256_slli_epi16(qh, 2)
                     : j == 2 ? qh
                              : _mm256_srli_epi16(qh, 2);
        __m256i q = _mm256_or_si256(_mm256_and_si256(lo4, m4), _mm256_and_si256(hb, m30));
        __m256i sj = pair_pick(base, j);
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
          v[k] = _mm256_add_epi32(
              v[k],
              dot_u8s8(q, _mm256_loadu_si256((const __m256i *)(b[k]->qs + 128 * h + 32 * j)), sj));
      }
    }
    __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
    float da = h2f(a[i].d);
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
      __m256i off = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)b[k]->bsums), sc16);
      __m256i vk = _mm256_sub_epi32(v[k], _mm256_slli_epi32(off, 5));
      acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(b[k]->d * da), _mm256_cvtepi32_ps(vk), acc[k]);
    }
  }
  for (int k = 0; k < 4; k++) out[k] = hsum_ps(acc[k]);
}

void cpu_quants_fill_avx2_dot4(cpu_vec_dot4_fn tab4[FT_COUNT]) {
  tab4[FT_Q4_K] = dot4_q4_K_avx2;
  tab4[FT_Q6_K] = dot4_q6_K_avx2;
}

void cpu_quants_fill_avx2(cpu_vec_dot_fn tab[FT_COUNT]) {
  tab[FT_F32] = dot_f32_avx2;
  tab[FT_F16] = dot_f16_avx2;
  tab[FT_BF16] = dot_bf16_avx2;
  tab[FT_Q8_0] = dot_q8_0_avx2;
  tab[FT_Q4_0] = dot_q4_0_avx2;
  tab[FT_Q2_K] = dot_q2_K_avx2;
  tab[FT_Q3_K] = dot_q3_K_avx2;
  tab[FT_Q4_K] = dot_q4_K_avx2;
  tab[FT_Q5_K] = dot_q5_K_avx2;
  tab[FT_Q6_K] = dot_q6_K_avx2;
}

#else // not x86: the scalar table stays

void cpu_quants_fill_avx2(cpu_vec_dot_fn tab[FT_COUNT]) { (void)tab; }
void cpu_quants_fill_avx2_dot4(cpu_vec_dot4_fn tab4[FT_COUNT]) { (void)tab4; }

#endif
