// kernels/cpu/quants_ref.c: the scalar reference of every CPU block format — row
// dequantization written straight from MODEL_SPEC §2 (the oracle every SIMD path and the
// CUDA backend are tested against), reference-quality quantizers (the synthetic-model
// writer depends on them), activation quantization (Q8_K / Q8_0 / F16 / BF16 / F32), and
// scalar dot products with llama.cpp-like numerics: exact integer sums per sub-block, then
// scaled and accumulated in float per block.
#include <math.h>
#include <string.h>

#include "base/base.h"
#include "kernels/cpu/quants_impl.h"

#define QK 256

static inline float h2f(uint16_t h) { return ferry_f16_to_f32(h); }
static inline uint16_t f2h(float f) { return ferry_f32_to_f16(f); }

// Round half to even, as llama.cpp's nearest_int. Adding 1.5·2^23 leaves the rounded
// integer in the low mantissa bits (the FPU's round-to-nearest-even does the rounding),
// branch-free, unlike the inlined rintf of baseline x86-64 (the quantizers' hot path).
// Out of range or NaN (never in sane data) gives 0 rather than undefined behaviour.
static inline int nearest_int(float v) {
  if (!(fabsf(v) < 4194303.f)) return 0;
  float t = v + 12582912.f;
  int32_t i;
  memcpy(&i, &t, 4);
  return (i & 0x007fffff) - 0x00400000;
}

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

// Blocks whose largest magnitude is below this quantize to zero: inverse scales of such
// blocks would overflow to inf (llama.cpp produces inf/NaN there; real data never has them).
#define QEPS 1e-30f

// ---------------------------------------------------------------- dequantization

static void dequant_q8_0(const block_q8_0 *b, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, y += 32) {
    float d = h2f(b[i].d);
    for (int p = 0; p < 32; p++) y[p] = d * b[i].qs[p];
  }
}

static void dequant_q4_0(const block_q4_0 *b, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, y += 32) {
    float d = h2f(b[i].d);
    for (int j = 0; j < 16; j++) {
      y[j] = d * ((b[i].qs[j] & 15) - 8);
      y[j + 16] = d * ((b[i].qs[j] >> 4) - 8);
    }
  }
}

static void dequant_q2_K(const block_q2_K *b, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, y += QK) {
    float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    for (int p = 0; p < QK; p++) {
      int h = p / 128, j = (p % 128) / 32, l = p % 32;
      int q = (b[i].qs[32 * h + l] >> (2 * j)) & 3;
      int sc = b[i].scales[p / 16];
      y[p] = d * (sc & 15) * q - dmin * (sc >> 4);
    }
  }
}

static void dequant_q3_K(const block_q3_K *b, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, y += QK) {
    float d = h2f(b[i].d);
    int8_t sc[16];
    cpu_unpack_q3_scales(b[i].scales, sc);
    for (int p = 0; p < QK; p++) {
      int h = p / 128, j = (p % 128) / 32, l = p % 32;
      int q = ((b[i].qs[32 * h + l] >> (2 * j)) & 3) - (((b[i].hmask[l] >> (p / 32)) & 1) ? 0 : 4);
      y[p] = d * sc[p / 16] * q;
    }
  }
}

static void dequant_q4_K(const block_q4_K *b, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, y += QK) {
    float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    uint8_t sc[8], m[8];
    cpu_unpack_k4_scales(b[i].scales, sc, m);
    for (int p = 0; p < QK; p++) {
      int sb = p / 32, l = p % 32;
      uint8_t byte = b[i].qs[32 * (sb / 2) + l];
      int q = (sb & 1) ? byte >> 4 : byte & 15;
      y[p] = d * sc[sb] * q - dmin * m[sb];
    }
  }
}

static void dequant_q5_K(const block_q5_K *b, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, y += QK) {
    float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    uint8_t sc[8], m[8];
    cpu_unpack_k4_scales(b[i].scales, sc, m);
    for (int p = 0; p < QK; p++) {
      int sb = p / 32, l = p % 32;
      uint8_t byte = b[i].qs[32 * (sb / 2) + l];
      int q = ((sb & 1) ? byte >> 4 : byte & 15) + 16 * ((b[i].qh[l] >> sb) & 1);
      y[p] = d * sc[sb] * q - dmin * m[sb];
    }
  }
}

static void dequant_q6_K(const block_q6_K *b, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, y += QK) {
    float d = h2f(b[i].d);
    for (int p = 0; p < QK; p++) {
      int h = p / 128, r = p % 128, g = r / 32, l = r % 32;
      uint8_t byte = b[i].ql[64 * h + 32 * (g & 1) + l];
      int lo = g < 2 ? byte & 15 : byte >> 4;
      int hi = (b[i].qh[32 * h + l] >> (2 * g)) & 3;
      y[p] = d * b[i].scales[p / 16] * ((lo | hi << 4) - 32);
    }
  }
}

void cpu_dequant_row(enum ferry_type t, const void *src, float *dst, int64_t n) {
  const struct ferry_type_info *ti = ferry_type_info(t);
  FERRY_ASSERT(ti && n >= 0 && n % ti->blck == 0);
  int64_t nb = n / ti->blck;
  switch (t) {
    case FT_F32: memcpy(dst, src, (size_t)n * 4); break;
    case FT_F16: {
      const uint16_t *s = src;
      for (int64_t i = 0; i < n; i++) dst[i] = h2f(s[i]);
      break;
    }
    case FT_BF16: {
      const uint16_t *s = src;
      for (int64_t i = 0; i < n; i++) dst[i] = ferry_bf16_to_f32(s[i]);
      break;
    }
    case FT_Q8_0: dequant_q8_0(src, dst, nb); break;
    case FT_Q4_0: dequant_q4_0(src, dst, nb); break;
    case FT_Q2_K: dequant_q2_K(src, dst, nb); break;
    case FT_Q3_K: dequant_q3_K(src, dst, nb); break;
    case FT_Q4_K: dequant_q4_K(src, dst, nb); break;
    case FT_Q5_K: dequant_q5_K(src, dst, nb); break;
    case FT_Q6_K: dequant_q6_K(src, dst, nb); break;
    case FT_Q8_K: {
      const block_q8_K *b = src;
      for (int64_t i = 0; i < nb; i++)
        for (int p = 0; p < QK; p++) dst[i * QK + p] = b[i].d * b[i].qs[p];
      break;
    }
    default: FERRY_ASSERT(!"cpu_dequant_row: unsupported type");
  }
}

// ---------------------------------------------------------------- quantization helpers

// Asymmetric fit x ≈ scale·L − min with L ∈ [0, nmax] and min ≥ 0, minimizing the
// w-weighted squared (or absolute, use_abs) error. Candidate inverse scales
// (nmax + rmin + rdelta·k)/(max − min) for k in [0, nstep] each give a rounding L; for
// each L the best (scale, offset) is the closed-form 2×2 weighted least-squares solution
// (offset clamped to ≤ 0, i.e. the stored min is never negative). Returns scale, writes
// L and *min_out (the value to subtract, ≥ 0).
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           float *min_out, float rmin, float rdelta, int nstep, int use_abs) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; i++) {
    if (x[i] < lo) lo = x[i];
    if (x[i] > hi) hi = x[i];
  }
  if (lo > 0) lo = 0;
  if (hi - lo < QEPS) {
    memset(L, 0, (size_t)n);
    *min_out = -lo;
    return 0.f;
  }
  float iscale = nmax / (hi - lo), scale = 1 / iscale, off = lo;
  double best = 0;
  for (int i = 0; i < n; i++) {
    L[i] = (uint8_t)clampi(nearest_int(iscale * (x[i] - lo)), 0, nmax);
    float e = scale * L[i] + lo - x[i];
    best += w[i] * (use_abs ? fabsf(e) : e * e);
  }
  uint8_t Lt[32];
  float wx[32];
  FERRY_ASSERT(n <= 32 && n % 2 == 0);
  // Sums that do not depend on L, once; the squared error of a candidate then follows in
  // closed form: Σw(s·l + o − x)² = s²Σwl² + o²Σw + 2so·Σwl − 2sΣwxl − 2oΣwx + Σwx².
  double sw = 0, sx = 0, sxx = 0;
  for (int i = 0; i < n; i++) {
    wx[i] = w[i] * x[i];
    sw += w[i], sx += wx[i], sxx += (double)wx[i] * x[i];
  }
  for (int k = 0; k <= nstep; k++) {
    float is = (rmin + rdelta * k + nmax) / (hi - lo);
    // Two interleaved partial sums per quantity keep the add chains short.
    double sl0 = 0, sl1 = 0, sll0 = 0, sll1 = 0, sxl0 = 0, sxl1 = 0;
    for (int i = 0; i < n; i += 2) {
      int l0 = clampi(nearest_int(is * (x[i] - lo)), 0, nmax);
      int l1 = clampi(nearest_int(is * (x[i + 1] - lo)), 0, nmax);
      Lt[i] = (uint8_t)l0, Lt[i + 1] = (uint8_t)l1;
      sl0 += w[i] * l0, sll0 += w[i] * (l0 * l0), sxl0 += wx[i] * l0;
      sl1 += w[i + 1] * l1, sll1 += w[i + 1] * (l1 * l1), sxl1 += wx[i + 1] * l1;
    }
    double sl = sl0 + sl1, sl2 = sll0 + sll1, sxl = sxl0 + sxl1;
    double D = sw * sl2 - sl * sl;
    if (D <= 0) continue;
    double sc = (sw * sxl - sx * sl) / D, o = (sl2 * sx - sl * sxl) / D;
    if (o > 0) {
      o = 0;
      sc = sxl / sl2;
    }
    double err = 0;
    if (use_abs) {
      for (int i = 0; i < n; i++) err += w[i] * fabs(sc * Lt[i] + o - x[i]);
    } else {
      err = sc * sc * sl2 + o * o * sw + 2 * sc * o * sl - 2 * sc * sxl - 2 * o * sx + sxx;
    }
    if (err < best) {
      best = err;
      memcpy(L, Lt, (size_t)n);
      scale = (float)sc;
      off = (float)o;
    }
  }
  *min_out = -off;
  return scale;
}

// Symmetric fit x ≈ scale·L with L ∈ [−nmax, nmax−1], weights x² (large values matter
// most). The first candidate maps the signed extreme to −nmax (so the asymmetric range is
// used on the extreme's side); nearby inverse scales (nmax ± 0.1k)/|xmax| are tried and the
// one maximizing (Σw·x·L)²/(Σw·L²) — i.e. minimizing the weighted error at the
// least-squares scale — wins. Returns the scale (may be negative), writes L + nmax.
static float fit_scale_sym(int n, int nmax, const float *x, uint8_t *L) {
  float amax = 0, xmax = 0;
  for (int i = 0; i < n; i++)
    if (fabsf(x[i]) > amax) amax = fabsf(x[i]), xmax = x[i];
  if (amax < QEPS) {
    memset(L, nmax, (size_t)n);
    return 0.f;
  }
  float best_scale = 0;
  double best = -1;
  for (int k = -9; k <= 9; k++) {
    float is = -(nmax + 0.1f * k) / xmax;
    double sxl = 0, sl2 = 0;
    for (int i = 0; i < n; i++) {
      int l = clampi(nearest_int(is * x[i]), -nmax, nmax - 1);
      double w = (double)x[i] * x[i];
      sxl += w * x[i] * l, sl2 += w * l * l;
    }
    if (sl2 <= 0) continue;
    double score = sxl * sxl / sl2;
    if (score > best) {
      best = score;
      best_scale = (float)(sxl / sl2);
    }
  }
  if (best_scale == 0.f) best_scale = -xmax / nmax; // degenerate (all weight on zeros)
  for (int i = 0; i < n; i++)
    L[i] = (uint8_t)(clampi(nearest_int(x[i] / best_scale), -nmax, nmax - 1) + nmax);
  return best_scale;
}

// ---------------------------------------------------------------- quantizers

static void quant_q8_0(const float *x, block_q8_0 *b, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, x += 32) {
    float amax = 0;
    for (int p = 0; p < 32; p++) amax = fmaxf(amax, fabsf(x[p]));
    float d = amax / 127, id = amax >= QEPS ? 1 / d : 0;
    b[i].d = f2h(d);
    for (int p = 0; p < 32; p++) b[i].qs[p] = (int8_t)roundf(x[p] * id);
  }
}

static void quant_q4_0(const float *x, block_q4_0 *b, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, x += 32) {
    float amax = 0, xmax = 0;
    for (int p = 0; p < 32; p++)
      if (fabsf(x[p]) > amax) amax = fabsf(x[p]), xmax = x[p];
    // The signed extreme maps to −8, the end of the range with the extra level.
    float d = xmax / -8, id = amax >= QEPS ? 1 / d : 0;
    b[i].d = f2h(d);
    for (int j = 0; j < 16; j++) {
      int q0 = clampi(nearest_int(x[j] * id) + 8, 0, 15);
      int q1 = clampi(nearest_int(x[j + 16] * id) + 8, 0, 15);
      b[i].qs[j] = (uint8_t)(q0 | q1 << 4);
    }
  }
}

static void quant_q2_K(const float *x, block_q2_K *b, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, x += QK) {
    uint8_t L[QK];
    float w[16], scales[16], mins[16], max_s = 0, max_m = 0;
    for (int g = 0; g < 16; g++) {
      for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * g + l]);
      scales[g] = fit_scale_min(16, 3, x + 16 * g, w, L + 16 * g, &mins[g], -0.5f, 0.1f, 15, 1);
      if (scales[g] > max_s) max_s = scales[g];
      if (mins[g] > max_m) max_m = mins[g];
    }
    float is = max_s > QEPS ? 15 / max_s : 0, im = max_m > QEPS ? 15 / max_m : 0;
    for (int g = 0; g < 16; g++) {
      int ls = clampi(nearest_int(is * scales[g]), 0, 15);
      int lm = clampi(nearest_int(im * mins[g]), 0, 15);
      b[i].scales[g] = (uint8_t)(ls | lm << 4);
    }
    b[i].d = f2h(max_s / 15);
    b[i].dmin = f2h(max_m / 15);
    float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    for (int g = 0; g < 16; g++) {
      float dl = d * (b[i].scales[g] & 15), ml = dmin * (b[i].scales[g] >> 4);
      for (int l = 0; l < 16; l++)
        L[16 * g + l] = dl ? (uint8_t)clampi(nearest_int((x[16 * g + l] + ml) / dl), 0, 3) : 0;
    }
    memset(b[i].qs, 0, sizeof b[i].qs);
    for (int p = 0; p < QK; p++) {
      int h = p / 128, j = (p % 128) / 32, l = p % 32;
      b[i].qs[32 * h + l] |= (uint8_t)(L[p] << (2 * j));
    }
  }
}

static void quant_q3_K(const float *x, block_q3_K *b, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, x += QK) {
    uint8_t L[QK];
    float scales[16], max_s = 0, amax_s = 0;
    for (int g = 0; g < 16; g++) {
      scales[g] = fit_scale_sym(16, 4, x + 16 * g, L + 16 * g);
      if (fabsf(scales[g]) > amax_s) amax_s = fabsf(scales[g]), max_s = scales[g];
    }
    memset(b[i].scales, 0, 12);
    float is = amax_s > QEPS ? -32 / max_s : 0;
    for (int g = 0; g < 16; g++) {
      int v = clampi(nearest_int(is * scales[g]), -32, 31) + 32;
      if (g < 8)
        b[i].scales[g] |= (uint8_t)(v & 15);
      else
        b[i].scales[g - 8] |= (uint8_t)((v & 15) << 4);
      b[i].scales[8 + g % 4] |= (uint8_t)((v >> 4) << (2 * (g / 4)));
    }
    b[i].d = f2h(is ? 1 / is : 0);
    float d = h2f(b[i].d);
    int8_t sc[16];
    cpu_unpack_q3_scales(b[i].scales, sc);
    for (int g = 0; g < 16; g++) {
      float dl = d * sc[g];
      for (int l = 0; l < 16; l++)
        L[16 * g + l] = dl ? (uint8_t)(clampi(nearest_int(x[16 * g + l] / dl), -4, 3) + 4) : 4;
    }
    memset(b[i].hmask, 0, 32);
    memset(b[i].qs, 0, 64);
    for (int p = 0; p < QK; p++) {
      int h = p / 128, j = (p % 128) / 32, l = p % 32;
      b[i].qs[32 * h + l] |= (uint8_t)((L[p] & 3) << (2 * j));
      if (L[p] >= 4) b[i].hmask[l] |= (uint8_t)(1 << (p / 32));
    }
  }
}

// Q4_K and Q5_K share everything but the number of levels and the high-bit plane.
static void quant_k4(const float *x, uint16_t *dd, uint16_t *ddmin, uint8_t s[12], uint8_t L[QK],
                     int nmax) {
  float w[32], scales[8], mins[8], max_s = 0, max_m = 0;
  for (int j = 0; j < 8; j++) {
    const float *xs = x + 32 * j;
    float sx2 = 0;
    for (int l = 0; l < 32; l++) sx2 += xs[l] * xs[l];
    float av = sqrtf(sx2 / 32);
    // Weight large-magnitude elements more, but never ignore small ones.
    for (int l = 0; l < 32; l++) w[l] = av + fabsf(xs[l]);
    scales[j] = nmax == 15
                    ? fit_scale_min(32, nmax, xs, w, L + 32 * j, &mins[j], -1.f, 0.1f, 20, 0)
                    : fit_scale_min(32, nmax, xs, w, L + 32 * j, &mins[j], -0.5f, 0.1f, 15, 0);
    if (scales[j] > max_s) max_s = scales[j];
    if (mins[j] > max_m) max_m = mins[j];
  }
  float is = max_s > QEPS ? 63 / max_s : 0, im = max_m > QEPS ? 63 / max_m : 0;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; j++) {
    ls[j] = (uint8_t)clampi(nearest_int(is * scales[j]), 0, 63);
    lm[j] = (uint8_t)clampi(nearest_int(im * mins[j]), 0, 63);
  }
  for (int j = 0; j < 4; j++) {
    s[j] = (uint8_t)(ls[j] | ((ls[j + 4] >> 4) << 6));
    s[j + 4] = (uint8_t)(lm[j] | ((lm[j + 4] >> 4) << 6));
    s[j + 8] = (uint8_t)((ls[j + 4] & 15) | ((lm[j + 4] & 15) << 4));
  }
  *dd = f2h(max_s / 63);
  *ddmin = f2h(max_m / 63);
  float d = h2f(*dd), dmin = h2f(*ddmin);
  for (int j = 0; j < 8; j++) {
    float dl = d * ls[j], ml = dmin * lm[j];
    for (int l = 0; l < 32; l++)
      L[32 * j + l] = dl ? (uint8_t)clampi(nearest_int((x[32 * j + l] + ml) / dl), 0, nmax) : 0;
  }
}

static void quant_q4_K(const float *x, block_q4_K *b, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, x += QK) {
    uint8_t L[QK];
    quant_k4(x, &b[i].d, &b[i].dmin, b[i].scales, L, 15);
    for (int c = 0; c < 4; c++)
      for (int l = 0; l < 32; l++)
        b[i].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | L[64 * c + 32 + l] << 4);
  }
}

static void quant_q5_K(const float *x, block_q5_K *b, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, x += QK) {
    uint8_t L[QK];
    quant_k4(x, &b[i].d, &b[i].dmin, b[i].scales, L, 31);
    memset(b[i].qh, 0, 32);
    for (int c = 0; c < 4; c++)
      for (int l = 0; l < 32; l++)
        b[i].qs[32 * c + l] = (uint8_t)((L[64 * c + l] & 15) | (L[64 * c + 32 + l] & 15) << 4);
    for (int p = 0; p < QK; p++)
      if (L[p] & 16) b[i].qh[p % 32] |= (uint8_t)(1 << (p / 32));
  }
}

static void quant_q6_K(const float *x, block_q6_K *b, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, x += QK) {
    uint8_t L[QK];
    float scales[16], max_s = 0, amax_s = 0;
    for (int g = 0; g < 16; g++) {
      scales[g] = fit_scale_sym(16, 32, x + 16 * g, L + 16 * g);
      if (fabsf(scales[g]) > amax_s) amax_s = fabsf(scales[g]), max_s = scales[g];
    }
    float is = amax_s > QEPS ? -128 / max_s : 0;
    for (int g = 0; g < 16; g++)
      b[i].scales[g] = (int8_t)clampi(nearest_int(is * scales[g]), -128, 127);
    b[i].d = f2h(is ? 1 / is : 0);
    float d = h2f(b[i].d);
    for (int g = 0; g < 16; g++) {
      float dl = d * b[i].scales[g];
      for (int l = 0; l < 16; l++)
        L[16 * g + l] = dl ? (uint8_t)(clampi(nearest_int(x[16 * g + l] / dl), -32, 31) + 32) : 32;
    }
    memset(b[i].qh, 0, 64);
    for (int p = 0; p < QK; p++) {
      int h = p / 128, r = p % 128, g = r / 32, l = r % 32;
      uint8_t *ql = &b[i].ql[64 * h + 32 * (g & 1) + l];
      if (g < 2)
        *ql = (uint8_t)(L[p] & 15);
      else
        *ql |= (uint8_t)((L[p] & 15) << 4);
      b[i].qh[32 * h + l] |= (uint8_t)((L[p] >> 4) << (2 * g));
    }
  }
}

static void quant_q8_K(const float *x, block_q8_K *b, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, x += QK) {
    float amax = 0, xmax = 0;
    for (int p = 0; p < QK; p++)
      if (fabsf(x[p]) > amax) amax = fabsf(x[p]), xmax = x[p];
    if (amax < QEPS) { // §2.4 says amax == 0; see QEPS
      memset(&b[i], 0, sizeof b[i]);
      continue;
    }
    float is = -127.f / xmax;
    for (int p = 0; p < QK; p++) {
      int v = nearest_int(is * x[p]);
      b[i].qs[p] = (int8_t)(v < 127 ? v : 127);
    }
    for (int g = 0; g < 16; g++) {
      int s = 0;
      for (int l = 0; l < 16; l++) s += b[i].qs[16 * g + l];
      b[i].bsums[g] = (int16_t)s;
    }
    b[i].d = 1 / is;
  }
}

// Q8_0 activations as llama.cpp's x86 CPU backend makes them: d = amax/127 stored as f16,
// but the quants use the f32 inverse 127/amax (not 1/f16(d)) and round half to even
// (_mm256_round_ps nearest); the scalar *_ref in ggml rounds half away from zero instead,
// which only differs on exact .5 ties.
static void quant_act_q8_0(const float *x, block_q8_0 *b, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, x += 32) {
    float amax = 0;
    for (int p = 0; p < 32; p++) amax = fmaxf(amax, fabsf(x[p]));
    b[i].d = f2h(amax / 127);
    float id = amax >= QEPS ? 127.f / amax : 0;
    for (int p = 0; p < 32; p++) b[i].qs[p] = (int8_t)nearest_int(x[p] * id);
  }
}

void cpu_quantize_row(enum ferry_type t, const float *src, void *dst, int64_t n) {
  const struct ferry_type_info *ti = ferry_type_info(t);
  FERRY_ASSERT(ti && n >= 0 && n % ti->blck == 0);
  int64_t nb = n / ti->blck;
  switch (t) {
    case FT_F32: memcpy(dst, src, (size_t)n * 4); break;
    case FT_F16: {
      uint16_t *d = dst;
      for (int64_t i = 0; i < n; i++) d[i] = f2h(src[i]);
      break;
    }
    case FT_BF16: {
      uint16_t *d = dst;
      for (int64_t i = 0; i < n; i++) d[i] = ferry_f32_to_bf16(src[i]);
      break;
    }
    case FT_Q8_0: quant_q8_0(src, dst, nb); break;
    case FT_Q4_0: quant_q4_0(src, dst, nb); break;
    case FT_Q2_K: quant_q2_K(src, dst, nb); break;
    case FT_Q3_K: quant_q3_K(src, dst, nb); break;
    case FT_Q4_K: quant_q4_K(src, dst, nb); break;
    case FT_Q5_K: quant_q5_K(src, dst, nb); break;
    case FT_Q6_K: quant_q6_K(src, dst, nb); break;
    case FT_Q8_K: quant_q8_K(src, dst, nb); break;
    default: FERRY_ASSERT(!"cpu_quantize_row: unsupported type");
  }
}

enum ferry_type cpu_vec_dot_type(enum ferry_type t) {
  switch (t) {
    case FT_Q2_K:
    case FT_Q3_K:
    case FT_Q4_K:
    case FT_Q5_K:
    case FT_Q6_K: return FT_Q8_K;
    case FT_Q8_0:
    case FT_Q4_0: return FT_Q8_0;
    case FT_F16: return FT_F16;
    case FT_BF16: return FT_BF16;
    case FT_F32: return FT_F32;
    default: FERRY_ASSERT(!"cpu_vec_dot_type: unsupported weight type");
  }
  return FT_F32;
}

void cpu_quantize_act(enum ferry_type vt, const float *x, void *dst, int64_t n) {
  switch (vt) {
    case FT_Q8_K:
      FERRY_ASSERT(n % QK == 0);
      quant_q8_K(x, dst, n / QK);
      break;
    case FT_Q8_0:
      FERRY_ASSERT(n % 32 == 0);
      quant_act_q8_0(x, dst, n / 32);
      break;
    case FT_F16:
    case FT_BF16:
    case FT_F32: cpu_quantize_row(vt, x, dst, n); break;
    default: FERRY_ASSERT(!"cpu_quantize_act: not an activation type");
  }
}

// ---------------------------------------------------------------- scalar dots

static float dot_f32(int64_t n, const void *w, const void *xq) {
  const float *a = w, *b = xq;
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return (float)s;
}

static float dot_f16(int64_t n, const void *w, const void *xq) {
  const uint16_t *a = w, *b = xq;
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)h2f(a[i]) * h2f(b[i]);
  return (float)s;
}

static float dot_bf16(int64_t n, const void *w, const void *xq) {
  const uint16_t *a = w, *b = xq;
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)ferry_bf16_to_f32(a[i]) * ferry_bf16_to_f32(b[i]);
  return (float)s;
}

static float dot_q8_0(int64_t n, const void *w, const void *xq) {
  const block_q8_0 *a = w, *b = xq;
  float s = 0;
  for (int64_t i = 0; i < n / 32; i++) {
    int sumi = 0;
    for (int p = 0; p < 32; p++) sumi += a[i].qs[p] * b[i].qs[p];
    s += h2f(a[i].d) * h2f(b[i].d) * (float)sumi;
  }
  return s;
}

static float dot_q4_0(int64_t n, const void *w, const void *xq) {
  const block_q4_0 *a = w;
  const block_q8_0 *b = xq;
  float s = 0;
  for (int64_t i = 0; i < n / 32; i++) {
    int sumi = 0;
    for (int j = 0; j < 16; j++)
      sumi += ((a[i].qs[j] & 15) - 8) * b[i].qs[j] + ((a[i].qs[j] >> 4) - 8) * b[i].qs[j + 16];
    s += h2f(a[i].d) * h2f(b[i].d) * (float)sumi;
  }
  return s;
}

static float dot_q2_K(int64_t n, const void *w, const void *xq) {
  const block_q2_K *a = w;
  const block_q8_K *b = xq;
  float s = 0;
  for (int64_t i = 0; i < n / QK; i++) {
    int sumi = 0, summ = 0;
    for (int g = 0; g < 16; g++) {
      int sg = 0;
      for (int l = 0; l < 16; l++) {
        int p = 16 * g + l, h = p / 128, j = (p % 128) / 32;
        sg += ((a[i].qs[32 * h + p % 32] >> (2 * j)) & 3) * b[i].qs[p];
      }
      sumi += (a[i].scales[g] & 15) * sg;
      summ += (a[i].scales[g] >> 4) * b[i].bsums[g];
    }
    s += b[i].d * (h2f(a[i].d) * (float)sumi - h2f(a[i].dmin) * (float)summ);
  }
  return s;
}

static float dot_q3_K(int64_t n, const void *w, const void *xq) {
  const block_q3_K *a = w;
  const block_q8_K *b = xq;
  float s = 0;
  for (int64_t i = 0; i < n / QK; i++) {
    int8_t sc[16];
    cpu_unpack_q3_scales(a[i].scales, sc);
    int sumi = 0;
    for (int g = 0; g < 16; g++) {
      int sg = 0;
      for (int l = 0; l < 16; l++) {
        int p = 16 * g + l, h = p / 128, j = (p % 128) / 32, ll = p % 32;
        int q =
            ((a[i].qs[32 * h + ll] >> (2 * j)) & 3) - (((a[i].hmask[ll] >> (p / 32)) & 1) ? 0 : 4);
        sg += q * b[i].qs[p];
      }
      sumi += sc[g] * sg;
    }
    s += b[i].d * h2f(a[i].d) * (float)sumi;
  }
  return s;
}

static float dot_q4_K(int64_t n, const void *w, const void *xq) {
  const block_q4_K *a = w;
  const block_q8_K *b = xq;
  float s = 0;
  for (int64_t i = 0; i < n / QK; i++) {
    uint8_t sc[8], m[8];
    cpu_unpack_k4_scales(a[i].scales, sc, m);
    int sumi = 0, summ = 0;
    for (int sb = 0; sb < 8; sb++) {
      int sg = 0;
      for (int l = 0; l < 32; l++) {
        uint8_t byte = a[i].qs[32 * (sb / 2) + l];
        sg += ((sb & 1) ? byte >> 4 : byte & 15) * b[i].qs[32 * sb + l];
      }
      sumi += sc[sb] * sg;
      summ += m[sb] * (b[i].bsums[2 * sb] + b[i].bsums[2 * sb + 1]);
    }
    s += b[i].d * (h2f(a[i].d) * (float)sumi - h2f(a[i].dmin) * (float)summ);
  }
  return s;
}

static float dot_q5_K(int64_t n, const void *w, const void *xq) {
  const block_q5_K *a = w;
  const block_q8_K *b = xq;
  float s = 0;
  for (int64_t i = 0; i < n / QK; i++) {
    uint8_t sc[8], m[8];
    cpu_unpack_k4_scales(a[i].scales, sc, m);
    int sumi = 0, summ = 0;
    for (int sb = 0; sb < 8; sb++) {
      int sg = 0;
      for (int l = 0; l < 32; l++) {
        uint8_t byte = a[i].qs[32 * (sb / 2) + l];
        int q = ((sb & 1) ? byte >> 4 : byte & 15) + 16 * ((a[i].qh[l] >> sb) & 1);
        sg += q * b[i].qs[32 * sb + l];
      }
      sumi += sc[sb] * sg;
      summ += m[sb] * (b[i].bsums[2 * sb] + b[i].bsums[2 * sb + 1]);
    }
    s += b[i].d * (h2f(a[i].d) * (float)sumi - h2f(a[i].dmin) * (float)summ);
  }
  return s;
}

static float dot_q6_K(int64_t n, const void *w, const void *xq) {
  const block_q6_K *a = w;
  const block_q8_K *b = xq;
  float s = 0;
  for (int64_t i = 0; i < n / QK; i++) {
    int sumi = 0;
    for (int g = 0; g < 16; g++) {
      int sg = 0;
      for (int l16 = 0; l16 < 16; l16++) {
        int p = 16 * g + l16, h = p / 128, r = p % 128, gg = r / 32, l = r % 32;
        uint8_t byte = a[i].ql[64 * h + 32 * (gg & 1) + l];
        int lo = gg < 2 ? byte & 15 : byte >> 4;
        int hi = (a[i].qh[32 * h + l] >> (2 * gg)) & 3;
        sg += ((lo | hi << 4) - 32) * b[i].qs[p];
      }
      sumi += a[i].scales[g] * sg;
    }
    s += b[i].d * h2f(a[i].d) * (float)sumi;
  }
  return s;
}

// The scalar table; cpu_vec_dot's dispatch starts from a copy of it.
static const cpu_vec_dot_fn k_ref_dots[FT_COUNT] = {
    [FT_F32] = dot_f32,   [FT_F16] = dot_f16,   [FT_BF16] = dot_bf16, [FT_Q8_0] = dot_q8_0,
    [FT_Q4_0] = dot_q4_0, [FT_Q2_K] = dot_q2_K, [FT_Q3_K] = dot_q3_K, [FT_Q4_K] = dot_q4_K,
    [FT_Q5_K] = dot_q5_K, [FT_Q6_K] = dot_q6_K,
};

void cpu_quants_fill_ref(cpu_vec_dot_fn tab[FT_COUNT]) {
  for (int t = 0; t < FT_COUNT; t++) tab[t] = k_ref_dots[t];
}

float cpu_vec_dot_ref(enum ferry_type t, int64_t n, const void *w, const void *xq) {
  FERRY_ASSERT((unsigned)t < FT_COUNT && k_ref_dots[t]);
  return k_ref_dots[t](n, w, xq);
}
