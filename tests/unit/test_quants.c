// test_quants: CPU block formats. (1) MODEL_SPEC §2.3 test vectors dequantize exactly;
// (2) quantize→dequantize error on random normal data stays under each format's bound;
// (3) activation quantizers follow their rules (Q8_K §2.4, Q8_0 as llama.cpp's x86 path);
// (4) every SIMD path equals the scalar reference on identical inputs; (5) dot products
// with quantized activations stay within the activation rounding error of the float dot.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/cpu/quants.h"
#include "kernels/types.h"
#include "tests/check.h"

static const enum ferry_type k_weights[] = {FT_F32,  FT_F16,  FT_BF16, FT_Q8_0, FT_Q4_0,
                                            FT_Q2_K, FT_Q3_K, FT_Q4_K, FT_Q5_K, FT_Q6_K};
#define NW (int)(sizeof k_weights / sizeof k_weights[0])

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) abort();
  return p;
}

static void fill_normal(struct ferry_rng *r, float *x, int64_t n, float scale) {
  for (int64_t i = 0; i < n; i++) x[i] = scale * ferry_rng_normal(r);
}

// ---- (1) spec test vectors
struct vec {
  enum ferry_type t;
  int d_off, dmin_off; // -1: no dmin
  double sum, x0, x1, x31, x64, x255;
};

static void test_vectors(void) {
  const struct vec v[] = {
      {FT_Q4_K, 0, 2, 5780.4697, 33.581566, -0.510109, 18.085350, 44.478859, 6.248314},
      {FT_Q5_K, 0, 2, 11956.5615, 83.169456, -0.510109, 18.085350, 44.478859, 12.246849},
      {FT_Q6_K, 208, -1, 461.0874, -143.065063, 169.558594, -9.597656, -303.925781, -5.998535},
      {FT_Q3_K, 108, -1, 95.776611, 8.098022, -10.797363, 6.398438, 3.399170, 4.198975},
      {FT_Q2_K, 80, 82, 273.025635, 3.299194, 0.000000, -0.030006, 1.409615, 0.569847},
      {FT_Q8_0, 0, -1, -17.595703, 8.497925, 12.197021, -4.798828, NAN, NAN},
      {FT_Q4_0, 0, -1, -2.099487, -0.299927, 0.199951, 0.000000, NAN, NAN},
  };
  for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
    const struct ferry_type_info *ti = ferry_type_info(v[k].t);
    uint8_t blk[512];
    float y[256];
    for (uint32_t i = 0; i < ti->size; i++) blk[i] = (uint8_t)((37 * i + 11) % 256);
    blk[v[k].d_off] = 0x66, blk[v[k].d_off + 1] = 0x2E; // f16 0x2E66, little-endian
    if (v[k].dmin_off >= 0) blk[v[k].dmin_off] = 0x1F, blk[v[k].dmin_off + 1] = 0x21;
    cpu_dequant_row(v[k].t, blk, y, ti->blck);
    double s = 0;
    for (uint32_t i = 0; i < ti->blck; i++) s += y[i];
    fprintf(stderr, "vector %-5s sum %.4f x0 %.6f x1 %.6f x31 %.6f\n", ti->name, s, y[0], y[1],
            y[31]);
    CHECK_NEAR(s, v[k].sum, 2e-3);
    CHECK_NEAR(y[0], v[k].x0, 2e-6 + 1e-7 * fabs(v[k].x0));
    CHECK_NEAR(y[1], v[k].x1, 2e-6 + 1e-7 * fabs(v[k].x1));
    CHECK_NEAR(y[31], v[k].x31, 2e-6 + 1e-7 * fabs(v[k].x31));
    if (ti->blck == 256) {
      CHECK_NEAR(y[64], v[k].x64, 2e-6 + 1e-7 * fabs(v[k].x64));
      CHECK_NEAR(y[255], v[k].x255, 2e-6 + 1e-7 * fabs(v[k].x255));
    }
  }
}

// ---- (2) round-trip error
static double rel_rms(const float *a, const float *b, int64_t n) {
  double e = 0, s = 0;
  for (int64_t i = 0; i < n; i++)
    e += (double)(a[i] - b[i]) * (a[i] - b[i]), s += (double)a[i] * a[i];
  return sqrt(e / s);
}

static void test_roundtrip(void) {
  // Relative RMS error bounds on N(0,1) data, set ~20% above what these quantizers
  // measure (printed below), in line with llama.cpp's reference quantizers.
  const struct {
    enum ferry_type t;
    double bound;
  } b[] = {
      {FT_F32, 0},     {FT_F16, 3.5e-4}, {FT_BF16, 2.8e-3}, {FT_Q8_0, 6.5e-3}, {FT_Q4_0, 0.105},
      {FT_Q2_K, 0.36}, {FT_Q3_K, 0.20},  {FT_Q4_K, 0.090},  {FT_Q5_K, 0.045},  {FT_Q6_K, 0.022},
  };
  const int64_t n = 256 * 64;
  struct ferry_rng r;
  ferry_rng_seed(&r, 42);
  float *x = xmalloc(n * 4), *y = xmalloc(n * 4);
  uint8_t *q = xmalloc(n * 4), *q2 = xmalloc(n * 4);
  fill_normal(&r, x, n, 1.0f);
  for (size_t k = 0; k < sizeof b / sizeof b[0]; k++) {
    const struct ferry_type_info *ti = ferry_type_info(b[k].t);
    cpu_quantize_row(b[k].t, x, q, n);
    cpu_dequant_row(b[k].t, q, y, n);
    double e = rel_rms(x, y, n);
    fprintf(stderr, "roundtrip %-5s rel rms %.5f (bound %.5f)\n", ti->name, e, b[k].bound);
    CHECK(e <= b[k].bound);
    // Deterministic: the same input gives the same bytes.
    cpu_quantize_row(b[k].t, x, q2, n);
    CHECK(!memcmp(q, q2, ferry_row_bytes(ti, n)));
    // Scale invariance of the error (no absolute epsilons hiding in the search).
    float *xs = xmalloc(n * 4);
    for (int64_t i = 0; i < n; i++) xs[i] = x[i] * 1e-3f;
    cpu_quantize_row(b[k].t, xs, q2, n);
    cpu_dequant_row(b[k].t, q2, y, n);
    CHECK(rel_rms(xs, y, n) <= b[k].bound * 1.05 + 1e-6);
    free(xs);
  }
  // Offset (all-positive) data exercises the K-quant mins.
  for (int64_t i = 0; i < n; i++) x[i] = 2.0f + fabsf(x[i]);
  cpu_quantize_row(FT_Q4_K, x, q, n);
  cpu_dequant_row(FT_Q4_K, q, y, n);
  fprintf(stderr, "roundtrip q4_K on |N|+2: rel rms %.5f\n", rel_rms(x, y, n));
  CHECK(rel_rms(x, y, n) < 0.03);
  // A zero block quantizes to zeros; so does a block of denormal-tiny values (whose
  // inverse scale would overflow), without undefined float->int conversions (UBSan).
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < 256; i++) x[i] = pass ? 1e-39f * (float)((i % 7) - 3) : 0.0f;
    for (int k = 0; k < NW; k++) {
      enum ferry_type t = k_weights[k];
      if (pass && (t == FT_F32 || t == FT_F16 || t == FT_BF16)) continue; // floats keep them
      cpu_quantize_row(k_weights[k], x, q, 256);
      cpu_dequant_row(k_weights[k], q, y, 256);
      for (int i = 0; i < 256; i++) CHECK(y[i] == 0.0f);
    }
    block_q8_K a8[1];
    uint8_t a0[8 * 34];
    cpu_quantize_act(FT_Q8_K, x, a8, 256);
    cpu_quantize_act(FT_Q8_0, x, a0, 256);
    CHECK(a8[0].d == 0.0f && a8[0].qs[1] == 0 && a0[0] == 0 && a0[1] == 0 && a0[3] == 0);
  }
  free(x), free(y), free(q), free(q2);
}

// ---- (3) activation quantizers
static void test_act_rules(void) {
  struct ferry_rng r;
  ferry_rng_seed(&r, 7);
  float x[512];
  fill_normal(&r, x, 512, 0.7f);
  x[3] = -4.0f;  // block 0: the extreme is negative -> d > 0 ... sign kept
  x[300] = 5.0f; // block 1: positive extreme -> d < 0
  x[5] = -0.0f;  // a signed zero in the data
  block_q8_K b[2];
  cpu_quantize_act(FT_Q8_K, x, b, 512);
  CHECK(b[0].d > 0 && b[1].d < 0);
  for (int k = 0; k < 2; k++) {
    float amax = 0, xmax = 0;
    for (int p = 0; p < 256; p++)
      if (fabsf(x[256 * k + p]) > amax) amax = fabsf(x[256 * k + p]), xmax = x[256 * k + p];
    float is = -127.f / xmax;
    CHECK(b[k].d == 1 / is);
    for (int p = 0; p < 256; p++) {
      float v = rintf(is * x[256 * k + p]);
      CHECK_EQ(b[k].qs[p], v > 127 ? 127 : (int)v);
    }
    for (int g = 0; g < 16; g++) {
      int s = 0;
      for (int l = 0; l < 16; l++) s += b[k].qs[16 * g + l];
      CHECK_EQ(b[k].bsums[g], s);
    }
  }
  // Ties round to even: x = 2.5·(xmax/−127) lands exactly on a .5 multiple.
  float t[256] = {0};
  t[0] = -127.0f, t[1] = 2.5f, t[2] = 3.5f, t[3] = -2.5f;
  cpu_quantize_act(FT_Q8_K, t, b, 256);
  CHECK_EQ(b[0].qs[1], 2);
  CHECK_EQ(b[0].qs[2], 4);
  CHECK_EQ(b[0].qs[3], -2);
  // Q8_0 activations: d = f16(amax/127), q = round_half_even(x·127/amax).
  uint8_t q8[34];
  float u[32] = {0};
  u[0] = 127.0f, u[1] = 0.5f, u[2] = 1.5f, u[3] = -33.2f;
  cpu_quantize_act(FT_Q8_0, u, q8, 32);
  CHECK(q8[0] == 0x00 && q8[1] == 0x3C); // f16 1.0
  CHECK_EQ((int8_t)q8[2 + 1], 0);
  CHECK_EQ((int8_t)q8[2 + 2], 2);
  CHECK_EQ((int8_t)q8[2 + 3], -33);
  CHECK(cpu_vec_dot_type(FT_Q4_K) == FT_Q8_K && cpu_vec_dot_type(FT_Q6_K) == FT_Q8_K);
  CHECK(cpu_vec_dot_type(FT_Q4_0) == FT_Q8_0 && cpu_vec_dot_type(FT_BF16) == FT_BF16);
}

// ---- (4) + (5) dot products
// Half the rounding step of activation element i in format vt (for the error model).
static void act_half_step(enum ferry_type vt, const float *x, int64_t n, double *h) {
  int64_t B = vt == FT_Q8_K ? 256 : vt == FT_Q8_0 ? 32 : 1;
  for (int64_t b0 = 0; b0 < n; b0 += B) {
    float amax = 0;
    for (int64_t i = b0; i < b0 + B; i++) amax = fmaxf(amax, fabsf(x[i]));
    for (int64_t i = b0; i < b0 + B; i++) {
      switch (vt) {
        case FT_Q8_K: h[i] = amax / 127.0 / 2; break;
        case FT_Q8_0: h[i] = amax / 127.0 / 2 * 1.002 + amax * 1e-3; break; // + f16 d rounding
        case FT_F16: h[i] = fabs(x[i]) * 0x1p-11 + 0x1p-25; break;
        case FT_BF16: h[i] = fabs(x[i]) * 0x1p-8; break;
        default: h[i] = 0;
      }
    }
  }
}

static void test_dots(void) {
  const int64_t sizes_k[] = {256, 256 * 7, 2048, 768, 512, 256 * 3};
  const int64_t sizes_0[] = {32, 32 * 5, 2048, 768, 512, 32 * 9};
  const char *paths[] = {"scalar", "avx2", "avx512"};
  struct ferry_rng r;
  ferry_rng_seed(&r, 1234);
  const int64_t nmax = 2048;
  float *w = xmalloc(nmax * 4), *x = xmalloc(nmax * 4), *wd = xmalloc(nmax * 4);
  double *h = xmalloc(nmax * 8);
  uint8_t *wq = xmalloc(nmax * 4), *xq = xmalloc(nmax * 4 + 64);
  int worst_stat = 0;
  for (int k = 0; k < NW; k++) {
    enum ferry_type t = k_weights[k];
    enum ferry_type vt = cpu_vec_dot_type(t);
    const struct ferry_type_info *ti = ferry_type_info(t);
    const int64_t *sizes = ti->blck == 256 ? sizes_k : sizes_0;
    double max_rel_path = 0, max_z = 0;
    for (int si = 0; si < 6; si++) {
      int64_t n = sizes[si];
      fill_normal(&r, w, n, 0.05f);
      fill_normal(&r, x, n, 1.0f);
      x[n / 3] = 9.0f; // an outlier, as real activations have
      cpu_quantize_row(t, w, wq, n);
      cpu_dequant_row(t, wq, wd, n);
      cpu_quantize_act(vt, x, xq, n);
      cpu_vec_dot_force("scalar");
      float ref = cpu_vec_dot_ref(t, n, wq, xq);
      CHECK(ref == cpu_vec_dot(t, n, wq, xq));
      double mag = 0, fdot = 0, var = 0;
      act_half_step(vt, x, n, h);
      for (int64_t i = 0; i < n; i++) {
        mag += fabs((double)wd[i] * x[i]);
        fdot += (double)wd[i] * x[i];
        var += (double)wd[i] * wd[i] * h[i] * h[i] / 3; // uniform rounding error variance
      }
      // (4) every available fast path equals the reference to 1e-5 of Σ|w·x|.
      for (int pi = 1; pi < 3; pi++) {
        if (cpu_vec_dot_force(paths[pi]) != 0) continue;
        float got = cpu_vec_dot(t, n, wq, xq);
        double rel = fabs(got - ref) / mag;
        if (rel > max_rel_path) max_rel_path = rel;
        if (!(rel <= 1e-5))
          fprintf(stderr, "%s n=%lld path %s (%s): got %.8g ref %.8g\n", ti->name, (long long)n,
                  paths[pi], cpu_vec_dot_path(t), got, ref);
        CHECK(rel <= 1e-5);
      }
      // (5) quantized-activation dot vs the float dot of the same (dequantized) weights.
      double z = fabs(ref - fdot) / (sqrt(var) + 2e-6 * mag);
      if (z > max_z) max_z = z;
      if (z > 3) worst_stat++;
      CHECK(z <= 6);
    }
    cpu_vec_dot_force("auto");
    fprintf(stderr,
            "dot %-5s act %-4s path %-6s max |fast-ref|/sum|wx| %.2e, max |q-f|/sigma %.2f\n",
            ti->name, ferry_type_info(vt)->name, cpu_vec_dot_path(t), max_rel_path, max_z);
  }
  CHECK(worst_stat <= 4); // ~0.3% of 60 cases expected beyond 3 sigma
  free(w), free(x), free(wd), free(h), free(wq), free(xq);
}

// (4b) Fast paths on random block bytes: every bit pattern of quants and 6-bit scales
// (incl. Q8_0 weights of −128), with sane random d/dmin so the sums stay finite.
static void test_dots_random_bytes(void) {
  const struct {
    enum ferry_type t;
    int d, dmin;
  } f[] = {
      {FT_Q8_0, 0, -1}, {FT_Q4_0, 0, -1}, {FT_Q2_K, 80, 82},  {FT_Q3_K, 108, -1},
      {FT_Q4_K, 0, 2},  {FT_Q5_K, 0, 2},  {FT_Q6_K, 208, -1},
  };
  const char *paths[] = {"avx2", "avx512"};
  struct ferry_rng r;
  ferry_rng_seed(&r, 77);
  const int64_t n = 2048 + 256 * 3;
  float *x = xmalloc(n * 4), *wd = xmalloc(n * 4);
  uint8_t *wq = xmalloc(n * 2), *xq = xmalloc(n * 2);
  for (size_t k = 0; k < sizeof f / sizeof f[0]; k++) {
    const struct ferry_type_info *ti = ferry_type_info(f[k].t);
    enum ferry_type vt = cpu_vec_dot_type(f[k].t);
    for (int rep = 0; rep < 4; rep++) {
      size_t rb = ferry_row_bytes(ti, n);
      for (size_t i = 0; i < rb; i++) wq[i] = (uint8_t)ferry_rng_u64(&r);
      for (int64_t b = 0; b < n / ti->blck; b++) {
        uint8_t *blk = wq + b * ti->size;
        uint16_t d = ferry_f32_to_f16(0.01f * (ferry_rng_uniform(&r) + 0.1f));
        memcpy(blk + f[k].d, &d, 2);
        if (f[k].dmin >= 0) {
          d = ferry_f32_to_f16(0.01f * ferry_rng_uniform(&r));
          memcpy(blk + f[k].dmin, &d, 2);
        }
      }
      fill_normal(&r, x, n, 1.0f);
      cpu_quantize_act(vt, x, xq, n);
      cpu_dequant_row(f[k].t, wq, wd, n);
      double mag = 0;
      for (int64_t i = 0; i < n; i++) mag += fabs((double)wd[i] * x[i]);
      float ref = cpu_vec_dot_ref(f[k].t, n, wq, xq);
      for (int p = 0; p < 2; p++) {
        if (cpu_vec_dot_force(paths[p]) != 0) continue;
        float got = cpu_vec_dot(f[k].t, n, wq, xq);
        if (!(fabs(got - ref) <= 1e-5 * mag))
          fprintf(stderr, "random bytes %s path %s: got %.8g ref %.8g (sum|wx| %.3g)\n", ti->name,
                  cpu_vec_dot_path(f[k].t), got, ref, mag);
        CHECK(fabs(got - ref) <= 1e-5 * mag);
      }
    }
  }
  cpu_vec_dot_force("auto");
  free(x), free(wd), free(wq), free(xq);
}

// (6) Real llama.cpp output: the fixture Q4_K_M and Q8_0 files hold the same source weights.
// Dequantizing both must agree within Q4_K/Q6_K error (a wrong bit position would not),
// and re-quantizing the Q8_0 weights with ferry's quantizer must be about as accurate as
// llama.cpp's own Q4_K/Q6_K output. A minimal GGUF walk, enough for these files.
struct gg_tensor {
  char name[96];
  uint32_t type;
  uint64_t ne0, nel;
  const uint8_t *data;
};
struct gg_file {
  uint8_t *buf;
  size_t len;
  int nt;
  struct gg_tensor t[128];
};

static int gg_skip(const uint8_t **p, const uint8_t *end, uint32_t ty) {
  static const int sz[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  if (ty > 12) return -1;
  if (ty == 8) {
    uint64_t n;
    memcpy(&n, *p, 8);
    *p += 8 + n;
  } else if (ty == 9) {
    uint32_t at;
    uint64_t n;
    memcpy(&at, *p, 4), memcpy(&n, *p + 4, 8);
    *p += 12;
    for (uint64_t i = 0; i < n; i++)
      if (gg_skip(p, end, at)) return -1;
  } else {
    *p += sz[ty];
  }
  return *p <= end ? 0 : -1;
}

static int gg_load(const char *path, struct gg_file *g) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  fseek(f, 0, SEEK_END);
  g->len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  g->buf = xmalloc(g->len);
  size_t got = fread(g->buf, 1, g->len, f);
  fclose(f);
  if (got != g->len || memcmp(g->buf, "GGUF", 4)) return -1;
  const uint8_t *p = g->buf + 8, *end = g->buf + g->len;
  uint64_t nt, nkv;
  memcpy(&nt, p, 8), memcpy(&nkv, p + 8, 8);
  p += 16;
  if (nt > 128) return -1;
  for (uint64_t i = 0; i < nkv; i++) {
    uint64_t kl;
    memcpy(&kl, p, 8);
    p += 8 + kl;
    uint32_t ty;
    memcpy(&ty, p, 4);
    p += 4;
    if (gg_skip(&p, end, ty)) return -1;
  }
  uint64_t offs[128];
  for (uint64_t i = 0; i < nt; i++) {
    struct gg_tensor *t = &g->t[i];
    uint64_t nl;
    memcpy(&nl, p, 8);
    if (nl >= sizeof t->name) return -1;
    memcpy(t->name, p + 8, nl), t->name[nl] = 0;
    p += 8 + nl;
    uint32_t nd;
    memcpy(&nd, p, 4);
    p += 4;
    t->nel = 1;
    for (uint32_t d = 0; d < nd; d++) {
      uint64_t ne;
      memcpy(&ne, p, 8);
      p += 8;
      if (d == 0) t->ne0 = ne;
      t->nel *= ne;
    }
    memcpy(&t->type, p, 4), memcpy(&offs[i], p + 4, 8);
    p += 12;
  }
  size_t data = ((size_t)(p - g->buf) + 31) / 32 * 32; // general.alignment is 32 here
  for (uint64_t i = 0; i < nt; i++) g->t[i].data = g->buf + data + offs[i];
  g->nt = (int)nt;
  return 0;
}

// Real llama.cpp-quantized data: every Q4_K / Q6_K tensor of pub-qwen3moe-kq-Q4_K_M.
// (1) Dequantized, each tensor has the spread its generator gave it (fixtures README §1.1:
//     std 1/sqrt(fan_in) for matrices, 0.5 for token_embd, 3/sqrt(n_embd) for output),
//     within 4% (quantization adds about 1%): a wrong scale, sign or nibble order in the
//     block decoding does not. (2) Ferry's quantizer, given those dequantized values (which
//     lie on llama.cpp's grid), gives back nearly the same values. (3) Every fast dot equals
//     the reference dot on real rows. The Q8_0 twin of this model that this test used to
//     compare against is not in the repository (tests/fixtures/README.md).
static void test_fixture_models(void) {
  const char *dir = getenv("FERRY_FIXTURES");
  char pk[512];
  snprintf(pk, sizeof pk, "%s/models/pub-qwen3moe-kq-Q4_K_M.gguf",
           dir ? dir : FERRY_SOURCE_FIXTURES);
  struct gg_file *gk = calloc(1, sizeof *gk);
  if (gg_load(pk, gk)) {
    fprintf(stderr, "FAIL: fixture model %s not found or unreadable\n", pk);
    CHECK(!"fixture model readable");
    free(gk->buf), free(gk);
    return;
  }
  struct ferry_rng r;
  ferry_rng_seed(&r, 4242);
  int compared = 0;
  double worst_std = 0, worst_re = 0;
  for (int i = 0; i < gk->nt; i++) {
    struct gg_tensor *a = &gk->t[i];
    if (a->type != FT_Q4_K && a->type != FT_Q6_K) continue;
    float *ya = xmalloc(a->nel * 4), *yc = xmalloc(a->nel * 4);
    uint8_t *q = xmalloc(a->nel);
    cpu_dequant_row(a->type, a->data, ya, (int64_t)a->nel);
    double ss = 0;
    for (uint64_t k = 0; k < a->nel; k++) ss += (double)ya[k] * ya[k];
    double sd = sqrt(ss / (double)a->nel);
    double want = !strcmp(a->name, "token_embd.weight") ? 0.5
                  : !strcmp(a->name, "output.weight")   ? 3.0 / sqrt((double)a->ne0)
                                                        : 1.0 / sqrt((double)a->ne0);
    double e_std = fabs(sd / want - 1);
    cpu_quantize_row(a->type, ya, q, (int64_t)a->nel);
    cpu_dequant_row(a->type, q, yc, (int64_t)a->nel);
    double e_re = rel_rms(ya, yc, (int64_t)a->nel);
    const double bound = 0.005; // measured 3.3e-4 at worst
    if (compared < 4 || e_std > 0.04 || e_re > bound)
      fprintf(stderr,
              "fixture %-28s %-4s std %.4f (generator %.4f), ferry requantized rel err %.5f\n",
              a->name, ferry_type_info(a->type)->name, sd, want, e_re);
    CHECK(e_std <= 0.04);
    CHECK(e_re <= bound);
    if (e_std > worst_std) worst_std = e_std;
    if (e_re > worst_re) worst_re = e_re;
    // Fast dots on real rows agree with the reference.
    int64_t n = (int64_t)a->ne0;
    size_t rb = ferry_row_bytes(ferry_type_info(a->type), n);
    float *x = xmalloc((size_t)n * 4);
    for (int64_t k = 0; k < n; k++) x[k] = ferry_rng_normal(&r);
    block_q8_K *xq = xmalloc((size_t)n / 256 * sizeof(block_q8_K));
    cpu_quantize_act(FT_Q8_K, x, xq, n);
    for (int64_t row = 0; row < 8 && (uint64_t)(row + 1) * n <= a->nel; row++) {
      float ref = cpu_vec_dot_ref(a->type, n, a->data + row * rb, xq);
      double mag = 0;
      for (int64_t k = 0; k < n; k++) mag += fabs((double)ya[row * n + k] * x[k]);
      CHECK(fabs(cpu_vec_dot(a->type, n, a->data + row * rb, xq) - ref) <= 1e-5 * mag);
    }
    free(ya), free(yc), free(q), free(xq), free(x);
    compared++;
  }
  fprintf(stderr, "fixture tensors compared: %d (worst std deviation %.4f, requantized %.5f)\n",
          compared, worst_std, worst_re);
  CHECK(compared >= 20);
  free(gk->buf), free(gk);
}

// A force to an unknown path is refused and leaves the dispatch working.
static void test_force(void) {
  CHECK(cpu_vec_dot_force("sse9") == -1);
  CHECK(cpu_vec_dot_force("scalar") == 0);
  CHECK(!strcmp(cpu_vec_dot_path(FT_Q4_K), "scalar"));
  CHECK(cpu_vec_dot_force("auto") == 0);
  fprintf(stderr, "auto paths: q4_K %s, q6_K %s, q8_0 %s, f16 %s\n", cpu_vec_dot_path(FT_Q4_K),
          cpu_vec_dot_path(FT_Q6_K), cpu_vec_dot_path(FT_Q8_0), cpu_vec_dot_path(FT_F16));
}

// Paths the CPU cannot run are left out of the dot tests below; say so once, so a run on an
// older CPU does not look like a full pass.
static void report_paths(void) {
  const char *paths[] = {"avx2", "avx512"};
  for (int p = 0; p < 2; p++)
    if (cpu_vec_dot_force(paths[p]) != 0)
      fprintf(stderr, "SKIP: the %s dot products are not supported by this CPU: not tested\n",
              paths[p]);
  cpu_vec_dot_force("auto");
  ferry_clear_error();
}

int main(void) {
  report_paths();
  test_vectors();
  test_roundtrip();
  test_act_rules();
  test_force();
  test_dots();
  test_dots_random_bytes();
  test_fixture_models();
  CHECK_DONE();
}
