// kernels/cpu/quants_avx512.c: AVX-512 (F, BW, VL + VNNI) dot products for the formats that
// carry most of the bytes (Q4_K experts and projections, Q6_K down/output, Q8_0). VNNI's
// dpbusd multiplies u8·s8 and sums four products into int32 in one step, and 512-bit
// registers take a 64-element sub-block pair at once. Like the AVX2 file, the integer
// sums are exact and only the float accumulation order differs from the scalar reference.
// Q4_K/Q6_K also have 4-activation kernels for cpu_matmul (weights unpacked once per 4).
// Installed by quants.c only when cpuid reports every needed feature.
#include <string.h>

#include "kernels/cpu/quants_impl.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TGT __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

TGT static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

TGT static inline float hsum256_ps(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// Q4_K 6-bit scales and mins as bytes [SC0..SC7, M0..M7], unpacked in a vector register.
// With the 12 bytes as words a0, a1, a2 (MODEL_SPEC §2.3 bit map):
//   SC0-3 = a0 & 0x3F..  SC4-7 = (a2 & 0x0F..) | ((a0 >> 2) & 0x30..)
//   M0-3  = a1 & 0x3F..  M4-7  = ((a2 >> 4) & 0x0F..) | ((a1 >> 2) & 0x30..)
// The 16-byte load reads 4 bytes into qs, inside the block.
TGT static inline __m128i k4_scales_mins(const uint8_t *s) {
  __m128i raw = _mm_loadu_si128((const __m128i *)s);
  __m128i lo = _mm_and_si128(
      _mm_srlv_epi32(_mm_shuffle_epi32(raw, _MM_SHUFFLE(2, 1, 2, 0)), _mm_setr_epi32(0, 0, 0, 4)),
      _mm_setr_epi32(0x3F3F3F3F, 0x0F0F0F0F, 0x3F3F3F3F, 0x0F0F0F0F));
  __m128i hi = _mm_and_si128(_mm_srli_epi32(_mm_shuffle_epi32(raw, _MM_SHUFFLE(1, 1, 0, 0)), 2),
                             _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
  return _mm_or_si128(lo, hi);
}

// [d·xd, dmin·xd] from a block's adjacent f16 d and dmin in one conversion (the same
// products as the scalar h2f(d)·xd, so results do not change).
TGT static inline __m128 k4_dd(const uint16_t *d_dmin, float xd) {
  uint32_t u;
  memcpy(&u, d_dmin, 4);
  return _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128((int)u)), _mm_set1_ps(xd));
}

// Per 64-element chunk c, dpbusd gives 16 int32 lanes (lanes 0-7 sub-block 2c, 8-15
// sub-block 2c+1). Chunks are folded pairwise (64-bit unpacks keep each 128-bit lane's
// sub-block) so two multiplies by the 6-bit scales cover a block. Integer sums are exact;
// per-lane conversion and float accumulation across blocks avoid horizontal sums in the loop.
TGT static float dot_q4_K_avx512(int64_t n, const void *w, const void *xq) {
  const block_q4_K *a = w;
  const block_q8_K *b = xq;
  const __m512i m4 = _mm512_set1_epi8(15);
  // Shift counts per 16-bit lane: lower half keeps the low nibbles, upper half the high.
  const __m512i shv = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  const __m512i pick01 = _mm512_setr_epi32(0, 0, 2, 2, 0, 0, 2, 2, 1, 1, 3, 3, 1, 1, 3, 3);
  const __m512i pick23 = _mm512_setr_epi32(4, 4, 6, 6, 4, 4, 6, 6, 5, 5, 7, 7, 5, 5, 7, 7);
  __m512 acc = _mm512_setzero_ps();
  __m256 accm = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / 256; i++) {
    __m128i scm = k4_scales_mins(a[i].scales);
    __m512i p[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
      // qs[32c..32c+31] holds elements 64c..64c+31 (low nibbles) and 64c+32.. (high).
      __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c)));
      q = _mm512_and_si512(_mm512_srlv_epi16(q, shv), m4);
      p[c] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(b[i].qs + 64 * c));
    }
    __m512i f01 =
        _mm512_add_epi32(_mm512_unpacklo_epi64(p[0], p[1]), _mm512_unpackhi_epi64(p[0], p[1]));
    __m512i f23 =
        _mm512_add_epi32(_mm512_unpacklo_epi64(p[2], p[3]), _mm512_unpackhi_epi64(p[2], p[3]));
    __m512i sc32 = _mm512_cvtepu8_epi32(scm);
    __m512i v = _mm512_add_epi32(_mm512_mullo_epi32(f01, _mm512_permutexvar_epi32(pick01, sc32)),
                                 _mm512_mullo_epi32(f23, _mm512_permutexvar_epi32(pick23, sc32)));
    __m256i md = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(scm, scm));
    __m256i mv = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)b[i].bsums), md);
    __m128 dd = k4_dd(&a[i].d, b[i].d);
    acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(v), acc);
    accm =
        _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), _mm256_cvtepi32_ps(mv), accm);
  }
  return _mm512_reduce_add_ps(acc) - hsum256_ps(accm);
}

TGT static float dot_q6_K_avx512(int64_t n, const void *w, const void *xq) {
  const block_q6_K *a = w;
  const block_q8_K *b = xq;
  const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
  // Per 256-bit half: shift counts that bring qh's 2-bit fields to bits 4..5.
  const __m512i shl_a =
      _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(4)), _mm256_set1_epi16(2), 1);
  const __m512i shr_b = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  // Byte shuffle that repeats each of 4 scales 4 times (one int32 lane = 4 elements).
  const __m128i rep4 = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / 256; i++) {
    __m128i sc8 = _mm_loadu_si128((const __m128i *)a[i].scales);
    __m512i v = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m512i ql = _mm512_loadu_si512(a[i].ql + 64 * h);
      __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(a[i].qh + 32 * h)));
      // Elements 128h+0..63: low nibbles of ql, qh bits 0-1 (first 32) and 2-3 (next 32).
      __m512i qa = _mm512_or_si512(_mm512_and_si512(ql, m4),
                                   _mm512_and_si512(_mm512_sllv_epi16(qh, shl_a), m30));
      // Elements 128h+64..127: high nibbles, qh bits 4-5 and 6-7.
      __m512i qb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                   _mm512_and_si512(_mm512_srlv_epi16(qh, shr_b), m30));
      __m512i xa = _mm512_loadu_si512(b[i].qs + 128 * h),
              xb = _mm512_loadu_si512(b[i].qs + 128 * h + 64);
      __m512i sa = _mm512_cvtepi8_epi32(
          _mm_shuffle_epi8(sc8, _mm_add_epi8(rep4, _mm_set1_epi8((char)(8 * h)))));
      __m512i sb = _mm512_cvtepi8_epi32(
          _mm_shuffle_epi8(sc8, _mm_add_epi8(rep4, _mm_set1_epi8((char)(8 * h + 4)))));
      v = _mm512_add_epi32(
          v, _mm512_mullo_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), qa, xa), sa));
      v = _mm512_add_epi32(
          v, _mm512_mullo_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), qb, xb), sb));
    }
    // Fold to 8 lanes and remove 32·Σ_g sc_g·bsums_g (the stored quants are q+32).
    __m256i v8 = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    __m256i off = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)b[i].bsums),
                                    _mm256_cvtepi8_epi16(sc8));
    v8 = _mm256_sub_epi32(v8, _mm256_slli_epi32(off, 5));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(b[i].d * h2f(a[i].d)), _mm256_cvtepi32_ps(v8), acc);
  }
  return hsum256_ps(acc);
}

// u8·s8 needs an unsigned side: |w| against x carrying w's sign (exact, incl. w = −128;
// activations are within ±127). Two blocks per 512-bit register.
TGT static float dot_q8_0_avx512(int64_t n, const void *w, const void *xq) {
  const block_q8_0 *a = w, *b = xq;
  __m512 acc = _mm512_setzero_ps();
  int64_t nb = n / 32, i = 0;
  for (; i + 2 <= nb; i += 2) {
    __m512i qw =
        _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a[i].qs)),
                           _mm256_loadu_si256((const __m256i *)a[i + 1].qs), 1);
    __m512i qx =
        _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)b[i].qs)),
                           _mm256_loadu_si256((const __m256i *)b[i + 1].qs), 1);
    __m512i sx = _mm512_mask_sub_epi8(qx, _mm512_movepi8_mask(qw), _mm512_setzero_si512(), qx);
    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(qw), sx);
    __m512 d = _mm512_mask_broadcastss_ps(_mm512_set1_ps(h2f(a[i].d) * h2f(b[i].d)), 0xFF00,
                                          _mm_set_ss(h2f(a[i + 1].d) * h2f(b[i + 1].d)));
    acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
  }
  float s = _mm512_reduce_add_ps(acc);
  if (i < nb) { // odd block count
    __m256i qw = _mm256_loadu_si256((const __m256i *)a[i].qs);
    __m256i qx = _mm256_loadu_si256((const __m256i *)b[i].qs);
    __m256i p =
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(qw), _mm256_sign_epi8(qx, qw));
    __m256 v = _mm256_mul_ps(_mm256_set1_ps(h2f(a[i].d) * h2f(b[i].d)), _mm256_cvtepi32_ps(p));
    s += hsum256_ps(v);
  }
  return s;
}

// ---------------------------------------------------------------- 4 activations per row
// Same arithmetic as the single-row kernels, per activation; the weight block is unpacked
// once for the four (prefill: cpu_matmul).

TGT static void dot4_q4_K_avx512(int64_t n, const void *w, const void *xq, size_t xs,
                                 float out[4]) {
  const block_q4_K *a = w;
  const uint8_t *x0 = xq;
  const __m512i m4 = _mm512_set1_epi8(15);
  const __m512i shv = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  const __m512i pick01 = _mm512_setr_epi32(0, 0, 2, 2, 0, 0, 2, 2, 1, 1, 3, 3, 1, 1, 3, 3);
  const __m512i pick23 = _mm512_setr_epi32(4, 4, 6, 6, 4, 4, 6, 6, 5, 5, 7, 7, 5, 5, 7, 7);
  __m512 acc[4];
  __m256 accm[4];
  for (int k = 0; k < 4; k++) acc[k] = _mm512_setzero_ps(), accm[k] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / 256; i++) {
    __m128i scm = k4_scales_mins(a[i].scales);
    __m512i q[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
      __m512i t = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c)));
      q[c] = _mm512_and_si512(_mm512_srlv_epi16(t, shv), m4);
    }
    __m512i sc32 = _mm512_cvtepu8_epi32(scm);
    __m512i s01 = _mm512_permutexvar_epi32(pick01, sc32),
            s23 = _mm512_permutexvar_epi32(pick23, sc32);
    __m256i md = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(scm, scm));
    __m128 dd0 = _mm_cvtph_ps(_mm_cvtsi32_si128((int)(a[i].d | (uint32_t)a[i].dmin << 16)));
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
      const block_q8_K *b = (const block_q8_K *)(x0 + k * xs) + i;
      __m128 dd = _mm_mul_ps(dd0, _mm_set1_ps(b->d));
      __m512i p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[0], _mm512_loadu_si512(b->qs));
      __m512i p1 =
          _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[1], _mm512_loadu_si512(b->qs + 64));
      __m512i p2 =
          _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[2], _mm512_loadu_si512(b->qs + 128));
      __m512i p3 =
          _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[3], _mm512_loadu_si512(b->qs + 192));
      __m512i f01 = _mm512_add_epi32(_mm512_unpacklo_epi64(p0, p1), _mm512_unpackhi_epi64(p0, p1));
      __m512i f23 = _mm512_add_epi32(_mm512_unpacklo_epi64(p2, p3), _mm512_unpackhi_epi64(p2, p3));
      __m512i v = _mm512_add_epi32(_mm512_mullo_epi32(f01, s01), _mm512_mullo_epi32(f23, s23));
      __m256i mv = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)b->bsums), md);
      acc[k] = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(v), acc[k]);
      accm[k] = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), _mm256_cvtepi32_ps(mv),
                                accm[k]);
    }
  }
  for (int k = 0; k < 4; k++) out[k] = _mm512_reduce_add_ps(acc[k]) - hsum256_ps(accm[k]);
}

TGT static void dot4_q6_K_avx512(int64_t n, const void *w, const void *xq, size_t xs,
                                 float out[4]) {
  const block_q6_K *a = w;
  const uint8_t *x0 = xq;
  const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
  const __m512i shl_a =
      _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(4)), _mm256_set1_epi16(2), 1);
  const __m512i shr_b = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  const __m128i rep4 = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m256 acc[4];
  for (int k = 0; k < 4; k++) acc[k] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / 256; i++) {
    __m128i sc8 = _mm_loadu_si128((const __m128i *)a[i].scales);
    __m512i q[4], sv[4];
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m512i ql = _mm512_loadu_si512(a[i].ql + 64 * h);
      __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(a[i].qh + 32 * h)));
      q[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4),
                                 _mm512_and_si512(_mm512_sllv_epi16(qh, shl_a), m30));
      q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                     _mm512_and_si512(_mm512_srlv_epi16(qh, shr_b), m30));
      sv[2 * h] = _mm512_cvtepi8_epi32(
          _mm_shuffle_epi8(sc8, _mm_add_epi8(rep4, _mm_set1_epi8((char)(8 * h)))));
      sv[2 * h + 1] = _mm512_cvtepi8_epi32(
          _mm_shuffle_epi8(sc8, _mm_add_epi8(rep4, _mm_set1_epi8((char)(8 * h + 4)))));
    }
    __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
    float da = h2f(a[i].d);
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
      const block_q8_K *b = (const block_q8_K *)(x0 + k * xs) + i;
      __m512i v = _mm512_mullo_epi32(
          _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[0], _mm512_loadu_si512(b->qs)), sv[0]);
      v = _mm512_add_epi32(
          v, _mm512_mullo_epi32(
                 _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[1], _mm512_loadu_si512(b->qs + 64)),
                 sv[1]));
      v = _mm512_add_epi32(
          v, _mm512_mullo_epi32(
                 _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[2], _mm512_loadu_si512(b->qs + 128)),
                 sv[2]));
      v = _mm512_add_epi32(
          v, _mm512_mullo_epi32(
                 _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[3], _mm512_loadu_si512(b->qs + 192)),
                 sv[3]));
      __m256i v8 = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
      __m256i off = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)b->bsums), sc16);
      v8 = _mm256_sub_epi32(v8, _mm256_slli_epi32(off, 5));
      acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(b->d * da), _mm256_cvtepi32_ps(v8), acc[k]);
    }
  }
  for (int k = 0; k < 4; k++) out[k] = hsum256_ps(acc[k]);
}

void cpu_quants_fill_avx512_dot4(cpu_vec_dot4_fn tab4[FT_COUNT]) {
  tab4[FT_Q4_K] = dot4_q4_K_avx512;
  tab4[FT_Q6_K] = dot4_q6_K_avx512;
}

void cpu_quants_fill_avx512(cpu_vec_dot_fn tab[FT_COUNT]) {
  tab[FT_Q4_K] = dot_q4_K_avx512;
  tab[FT_Q6_K] = dot_q6_K_avx512;
  tab[FT_Q8_0] = dot_q8_0_avx512;
}

#else

void cpu_quants_fill_avx512(cpu_vec_dot_fn tab[FT_COUNT]) { (void)tab; }
void cpu_quants_fill_avx512_dot4(cpu_vec_dot4_fn tab4[FT_COUNT]) { (void)tab4; }

#endif
