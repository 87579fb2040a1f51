// kernels/cpu/quants_avx512.c: AVX-512 (F, BW, VL + VNNI) dot products for the formats that
// carry most of the bytes (Q4_K experts and projections, Q6_K down/output, Q8_0). VNNI's
// dpbusd multiplies u8·s8 and sums four products into int32 in one step, and 512-bit
// registers take a 64-element sub-block pair at once. Like the AVX2 file, the K-quant
// paths compute the scalar reference's exact integer sums per block followed by the same
// float operations. Installed by quants.c only when cpuid reports every needed feature.
#include "kernels/cpu/quants_impl.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TGT __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

TGT static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

TGT static inline int hsum256_epi32(__m256i v) {
  __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4E));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0xB1));
  return _mm_cvtsi128_si32(x);
}

// Two int32 scale values, one per 256-bit half.
TGT static inline __m512i sc_halves(int lo, int hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(lo)), _mm256_set1_epi32(hi), 1);
}

TGT static float dot_q4_K_avx512(int64_t n, const void *w, const void *xq) {
  const block_q4_K *a = w;
  const block_q8_K *b = xq;
  const __m512i m4 = _mm512_set1_epi8(15);
  // Shift counts per 16-bit lane: lower half keeps the low nibbles, upper half the high.
  const __m512i shv = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  float s = 0;
  for (int64_t i = 0; i < n / 256; i++) {
    uint8_t sc[8], m[8];
    cpu_unpack_k4_scales(a[i].scales, sc, m);
    __m512i v = _mm512_setzero_si512();
    for (int c = 0; c < 4; c++) {
      // qs[32c..32c+31] holds elements 64c..64c+31 (low nibbles) and 64c+32.. (high).
      __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c)));
      q = _mm512_and_si512(_mm512_srlv_epi16(q, shv), m4);
      __m512i x = _mm512_loadu_si512(b[i].qs + 64 * c);
      __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, x);
      v = _mm512_add_epi32(v, _mm512_mullo_epi32(p, sc_halves(sc[2 * c], sc[2 * c + 1])));
    }
    int summ = 0;
    for (int j = 0; j < 8; j++) summ += m[j] * (b[i].bsums[2 * j] + b[i].bsums[2 * j + 1]);
    int sumi = _mm512_reduce_add_epi32(v);
    s += b[i].d * (h2f(a[i].d) * (float)sumi - h2f(a[i].dmin) * (float)summ);
  }
  return s;
}

TGT static float dot_q6_K_avx512(int64_t n, const void *w, const void *xq) {
  const block_q6_K *a = w;
  const block_q8_K *b = xq;
  const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
  // Per 256-bit half: shift counts that bring qh's 2-bit fields to bits 4..5.
  const __m512i shl_a = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(4)), _mm256_set1_epi16(2), 1);
  const __m512i shr_b = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  // Byte shuffle that repeats each of 4 scales 4 times (one int32 lane = 4 elements).
  const __m128i rep4 = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  float s = 0;
  for (int64_t i = 0; i < n / 256; i++) {
    __m128i sc8 = _mm_loadu_si128((const __m128i *)a[i].scales);
    __m512i v = _mm512_setzero_si512();
    for (int h = 0; h < 2; h++) {
      __m512i ql = _mm512_loadu_si512(a[i].ql + 64 * h);
      __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(a[i].qh + 32 * h)));
      // Elements 128h+0..63: low nibbles of ql, qh bits 0-1 (first 32) and 2-3 (next 32).
      __m512i qa = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi16(qh, shl_a), m30));
      // Elements 128h+64..127: high nibbles, qh bits 4-5 and 6-7.
      __m512i qb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                   _mm512_and_si512(_mm512_srlv_epi16(qh, shr_b), m30));
      __m512i xa = _mm512_loadu_si512(b[i].qs + 128 * h), xb = _mm512_loadu_si512(b[i].qs + 128 * h + 64);
      __m512i sa = _mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc8, _mm_add_epi8(rep4, _mm_set1_epi8((char)(8 * h)))));
      __m512i sb = _mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc8, _mm_add_epi8(rep4, _mm_set1_epi8((char)(8 * h + 4)))));
      v = _mm512_add_epi32(v, _mm512_mullo_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), qa, xa), sa));
      v = _mm512_add_epi32(v, _mm512_mullo_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), qb, xb), sb));
    }
    __m256i off = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)b[i].bsums), _mm256_cvtepi8_epi16(sc8));
    int sumi = _mm512_reduce_add_epi32(v) - 32 * hsum256_epi32(off);
    s += b[i].d * h2f(a[i].d) * (float)sumi;
  }
  return s;
}

TGT static float dot_q8_0_avx512(int64_t n, const void *w, const void *xq) {
  const block_q8_0 *a = w, *b = xq;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
  int64_t nb = n / 32, i = 0;
  for (; i < nb; i++) {
    __m256i qw = _mm256_loadu_si256((const __m256i *)a[i].qs);
    __m256i qx = _mm256_loadu_si256((const __m256i *)b[i].qs);
    // u8·s8 needs an unsigned side: |w| against x carrying w's sign (exact, incl. −128).
    __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(qw), _mm256_sign_epi8(qx, qw));
    __m256 d = _mm256_set1_ps(h2f(a[i].d) * h2f(b[i].d));
    if (i & 1) acc1 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc1);
    else acc0 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc0);
  }
  __m256 acc = _mm256_add_ps(acc0, acc1);
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

void cpu_quants_fill_avx512(cpu_vec_dot_fn tab[FT_COUNT]) {
  tab[FT_Q4_K] = dot_q4_K_avx512;
  tab[FT_Q6_K] = dot_q6_K_avx512;
  tab[FT_Q8_0] = dot_q8_0_avx512;
}

#else

void cpu_quants_fill_avx512(cpu_vec_dot_fn tab[FT_COUNT]) { (void)tab; }

#endif
