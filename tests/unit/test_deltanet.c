// tests/unit/test_deltanet.c: the Gated DeltaNet kernels (kernels/cpu/deltanet.h) against
// straightforward double-precision references written from MODEL_SPEC §5.6/§5.7, the
// worked example of §5.6, the chunked form against the recurrence, and the legacy
// regrouping on index patterns. All data random and non-zero.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/cpu/deltanet.h"
#include "numa/pool.h"
#include "tests/check.h"

static struct ferry_rng g_rng;
static struct ferry_pool *g_pool; // 2 workers, or NULL if the pool cannot start

static float *rnd_normal(int64_t n, float scale) {
  float *x = malloc((size_t)n * sizeof(float));
  for (int64_t i = 0; i < n; i++) x[i] = scale * ferry_rng_normal(&g_rng);
  return x;
}
static float *rnd_uniform(int64_t n, float lo, float hi) {
  float *x = malloc((size_t)n * sizeof(float));
  for (int64_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * ferry_rng_uniform(&g_rng);
  return x;
}
static float *dup(const float *x, int64_t n) {
  float *y = malloc((size_t)n * sizeof(float));
  memcpy(y, x, (size_t)n * sizeof(float));
  return y;
}
static double silu_d(double x) { return x / (1.0 + exp(-x)); }

// max |a-b| / max |ref| over n values
static double rel_err(const float *a, const double *ref, int64_t n) {
  double md = 0, mr = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - ref[i]);
    if (!(d <= md)) md = d; // NaN propagates as failure
    if (fabs(ref[i]) > mr) mr = fabs(ref[i]);
  }
  return mr > 0 ? md / mr : md;
}
static double rel_err_f(const float *a, const float *b, int64_t n) {
  double md = 0, mr = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]);
    if (!(d <= md)) md = d;
    if (fabs(b[i]) > mr) mr = fabs(b[i]);
  }
  return mr > 0 ? md / mr : md;
}

// ---- conv ----
static void test_conv(void) {
  const int64_t C = 37 + 300 * (g_pool != NULL); // > 2 channel groups when pooled
  const int64_t Ks[] = {1, 2, 4};
  const int64_t Ts[] = {1, 2, 3, 5, 17};
  for (int ki = 0; ki < 3; ki++) {
    const int64_t K = Ks[ki], P = K - 1;
    for (int ti = 0; ti < 5; ti++) {
      const int64_t T = Ts[ti];
      for (int act = 0; act < 2; act++) {
        float *w = rnd_normal(C * K, 0.3f), *u = rnd_normal(T * C, 1.0f);
        float *st0 = rnd_normal(P * C + 1, 1.0f); // +1: never a zero-size malloc
        // double reference over [state, u]
        double *yr = malloc((size_t)(T * C) * sizeof(double));
        for (int64_t t = 0; t < T; t++)
          for (int64_t c = 0; c < C; c++) {
            double acc = 0;
            for (int64_t r = 0; r < K; r++) {
              int64_t idx = t - P + r;
              double x = idx < 0 ? st0[(P + idx) * C + c] : u[idx * C + c];
              acc += (double)w[c * K + r] * x;
            }
            yr[t * C + c] = act ? silu_d(acc) : acc;
          }
        // T steps, y aliasing a copy of u (allowed for the step)
        float *st_a = dup(st0, P * C + 1), *ys = dup(u, T * C);
        for (int64_t t = 0; t < T; t++)
          cpu_ssm_conv_step(ys + t * C, st_a, ys + t * C, w, C, K, act);
        CHECK(rel_err(ys, yr, T * C) < 1e-6);
        // prefill equals the steps bit for bit, state too
        float *st_b = dup(st0, P * C + 1), *yp = malloc((size_t)(T * C) * sizeof(float));
        cpu_ssm_conv_rows(yp, st_b, u, w, T, C, K, act);
        CHECK(memcmp(yp, ys, (size_t)(T * C) * sizeof(float)) == 0);
        CHECK(memcmp(st_a, st_b, (size_t)(P * C) * sizeof(float)) == 0);
        // and so does the pooled prefill (C large enough for several channel groups)
        if (g_pool) {
          float *st_c = dup(st0, P * C + 1), *ym = malloc((size_t)(T * C) * sizeof(float));
          cpu_ssm_conv_rows_mt(g_pool, ym, st_c, u, w, T, C, K, act);
          CHECK(memcmp(ym, ys, (size_t)(T * C) * sizeof(float)) == 0);
          CHECK(memcmp(st_c, st_a, (size_t)(P * C) * sizeof(float)) == 0);
          free(st_c), free(ym);
        }
        // the state is the last P raw inputs of [state, u]
        for (int64_t r = 0; r < P; r++) {
          int64_t idx = T - P + r;
          const float *want = idx < 0 ? st0 + (P + idx) * C : u + idx * C;
          CHECK(memcmp(st_b + r * C, want, (size_t)C * sizeof(float)) == 0);
        }
        free(w), free(u), free(st0), free(yr), free(st_a), free(ys), free(st_b), free(yp);
      }
    }
  }
  // Tap K-1 multiplies the current input and tap 0 the oldest (§5.6 step 3).
  float w[4] = {1000, 100, 10, 1}, st[3] = {1, 2, 3}, u = 4, y;
  cpu_ssm_conv_step(&y, st, &u, w, 1, 4, 0);
  CHECK_NEAR(y, 1000 * 1 + 100 * 2 + 10 * 3 + 4, 0);
  CHECK(st[0] == 2 && st[1] == 3 && st[2] == 4);
}

// SiLU over its whole range (the vector exp): a 1-tap conv with weight 1 is silu(u).
static void test_silu_range(void) {
  const int64_t C = 4003;
  float *u = malloc(sizeof(float) * C), *y = malloc(sizeof(float) * C),
        *w = malloc(sizeof(float) * C);
  for (int64_t c = 0; c < C; c++) {
    u[c] = -120.0f + 240.0f * (float)c / (float)(C - 1) + 1e-3f * ferry_rng_normal(&g_rng);
    w[c] = 1.0f;
  }
  u[0] = -1e30f, u[1] = 1e30f, u[2] = 0.0f, u[3] = -87.5f, u[4] = 88.9f, u[5] = 1e-20f;
  cpu_ssm_conv_step(y, NULL, u, w, C, 1, 1);
  for (int64_t c = 0; c < C; c++) {
    double ref = silu_d(u[c]);
    if (fabs(ref) > 1e-30)
      CHECK_NEAR(y[c], ref, 4e-7 * fabs(ref));
    else
      CHECK(fabs(y[c]) < 1e-30);
  }
  free(u), free(y), free(w);
}

// ---- L2 norm, gates, gated RMSNorm ----
static void test_norms_gates(void) {
  const int64_t H = 5, d = 24;
  float *x = rnd_normal(H * d, 2.0f), *x0 = dup(x, H * d);
  cpu_l2norm_heads(x, H, d, 1e-6f, 0.25f);
  for (int64_t h = 0; h < H; h++) {
    double ss = 0;
    for (int64_t i = 0; i < d; i++) ss += (double)x0[h * d + i] * x0[h * d + i];
    for (int64_t i = 0; i < d; i++)
      CHECK_NEAR(x[h * d + i], 0.25 * x0[h * d + i] / sqrt(ss + 1e-6), 1e-6);
  }
  // eps matters for tiny vectors: x / sqrt(sum + eps), not x / sqrt(sum)
  float tiny[2] = {1e-4f, -2e-4f};
  cpu_l2norm_heads(tiny, 1, 2, 1e-6f, 1.0f);
  CHECK_NEAR(tiny[0], 1e-4 / sqrt(5e-8 + 1e-6), 1e-6);

  const int64_t T = 3, Hv = 8;
  float *b = rnd_normal(T * Hv, 2.0f), *a = rnd_normal(T * Hv, 2.0f);
  float *ssm_a = rnd_uniform(Hv, -1.0f, -0.05f), *dt = rnd_uniform(Hv, 0.0f, 1.0f);
  a[5] = 30.0f; // softplus(x) = x above 20
  a[6] = -30.0f;
  float beta[24], g[24], dec[24], beta2[24];
  cpu_delta_gates(beta, g, dec, b, a, ssm_a, dt, T, Hv);
  cpu_delta_gates(beta2, NULL, NULL, b, a, ssm_a, dt, T, Hv);
  CHECK(memcmp(beta, beta2, sizeof beta) == 0);
  for (int64_t t = 0; t < T; t++)
    for (int64_t h = 0; h < Hv; h++) {
      int64_t i = t * Hv + h;
      double xa = (double)a[i] + dt[h];
      double sp = xa > 20 ? xa : log1p(exp(xa));
      double gr = (double)ssm_a[h] * sp;
      CHECK_NEAR(beta[i], 1.0 / (1.0 + exp(-(double)b[i])), 1e-6);
      CHECK_NEAR(g[i], gr, 1e-5 * fabs(gr) + 1e-7);
      CHECK_NEAR(dec[i], exp(gr), 1e-6);
      CHECK(g[i] <= 0 && dec[i] > 0 && dec[i] <= 1);
    }
  CHECK_NEAR(g[5], (double)ssm_a[5] * ((double)a[5] + dt[5]), 1e-4);

  const int64_t nh = 4, dd = 20;
  float *o = rnd_normal(nh * dd, 1.5f), *z = rnd_normal(nh * dd, 1.5f);
  float *wn = rnd_uniform(dd, 0.8f, 1.2f), *y = malloc(sizeof(float) * nh * dd);
  double ref[80];
  for (int64_t h = 0; h < nh; h++) {
    double ss = 0;
    for (int64_t i = 0; i < dd; i++) ss += (double)o[h * dd + i] * o[h * dd + i];
    double inv = 1.0 / sqrt(ss / dd + 1e-6);
    for (int64_t i = 0; i < dd; i++)
      ref[h * dd + i] = o[h * dd + i] * inv * wn[i] * silu_d(z[h * dd + i]);
  }
  cpu_gated_rmsnorm_heads(y, o, z, wn, nh, dd, 1e-6f);
  CHECK(rel_err(y, ref, nh * dd) < 1e-6);
  float *oa = dup(o, nh * dd); // in place (y aliases o)
  cpu_gated_rmsnorm_heads(oa, oa, z, wn, nh, dd, 1e-6f);
  CHECK(memcmp(oa, y, sizeof(float) * nh * dd) == 0);
  { // pooled: 70 heads split over the workers give the same bits
    const int64_t NH = 70;
    float *o2 = rnd_normal(NH * dd, 1.0f), *z2 = rnd_normal(NH * dd, 1.0f);
    float *y1 = malloc(sizeof(float) * NH * dd), *y2 = malloc(sizeof(float) * NH * dd);
    cpu_gated_rmsnorm_heads(y1, o2, z2, wn, NH, dd, 1e-6f);
    cpu_gated_rmsnorm_heads_mt(g_pool, y2, o2, z2, wn, NH, dd, 1e-6f);
    CHECK(memcmp(y1, y2, sizeof(float) * NH * dd) == 0);
    free(o2), free(z2), free(y1), free(y2);
  }
  free(x), free(x0), free(b), free(a), free(ssm_a), free(dt), free(o), free(z), free(wn);
  free(y), free(oa);
}

// ---- delta rule ----
// The worked example of MODEL_SPEC §5.6 (one head, dk = dv = 2).
static void test_worked_example(void) {
  const float s2 = 1.0f / sqrtf(2.0f);
  float q[2][2] = {{1 * s2, 0}, {0, 1 * s2}}, k[2][2] = {{1, 0}, {0.6f, 0.8f}};
  float v[2][2] = {{2, 3}, {1, 1}}, beta[2] = {0.5f, 1.0f}, dec[2] = {1.0f, 0.5f};
  float S[4] = {0}, o[2];
  cpu_delta_step(o, S, q[0], k[0], v[0], &beta[0], &dec[0], 1, 1, 2, 2);
  CHECK_NEAR(S[0], 1.0, 1e-6);
  CHECK_NEAR(S[1], 1.5, 1e-6);
  CHECK_NEAR(S[2], 0.0, 1e-6);
  CHECK_NEAR(S[3], 0.0, 1e-6);
  CHECK_NEAR(o[0], 0.70711, 1e-5);
  CHECK_NEAR(o[1], 1.06066, 1e-5);
  cpu_delta_step(o, S, q[1], k[1], v[1], &beta[1], &dec[1], 1, 1, 2, 2);
  CHECK_NEAR(S[0], 0.92, 1e-6);
  CHECK_NEAR(S[1], 1.08, 1e-6);
  CHECK_NEAR(S[2], 0.56, 1e-6);
  CHECK_NEAR(S[3], 0.44, 1e-6);
  CHECK_NEAR(o[0], 0.39598, 1e-5);
  CHECK_NEAR(o[1], 0.31113, 1e-5);
  // the same two tokens through the chunked form (g = log decay)
  float g[2] = {0.0f, logf(0.5f)}, S2[4] = {0}, o2[4];
  CHECK_EQ(cpu_delta_chunked(NULL, o2, 2, S2, &q[0][0], 2, &k[0][0], 2, &v[0][0], 2, beta, g, 2, 1,
                             1, 2, 2, 64),
           0);
  CHECK_NEAR(o2[2], 0.39598, 1e-5);
  CHECK_NEAR(o2[3], 0.31113, 1e-5);
  CHECK_NEAR(o2[0], 0.70711, 1e-5);
  CHECK_NEAR(S2[0], 0.92, 1e-6);
  CHECK_NEAR(S2[3], 0.44, 1e-6);
}

struct dn_case {
  int64_t T, Hk, Hv, dk, dv;
  float *q, *k, *v, *beta, *g, *dec, *S0;
  int64_t ldq, ldk, ldv; // q, k, v live inside one [T x (ldq)] row like the conv output
  float *row;
};

// Random inputs laid out like the conv output rows [q | k | v | pad].
static void case_make(struct dn_case *c, int64_t T, int64_t Hk, int64_t Hv, int64_t dk,
                      int64_t dv) {
  c->T = T, c->Hk = Hk, c->Hv = Hv, c->dk = dk, c->dv = dv;
  int64_t ld = 2 * Hk * dk + Hv * dv + 3;
  c->row = rnd_normal(T * ld, 1.0f);
  c->q = c->row, c->k = c->row + Hk * dk, c->v = c->row + 2 * Hk * dk;
  c->ldq = c->ldk = c->ldv = ld;
  for (int64_t t = 0; t < T; t++) {
    cpu_l2norm_heads(c->q + t * ld, Hk, dk, 1e-6f, 1.0f / sqrtf((float)dk));
    cpu_l2norm_heads(c->k + t * ld, Hk, dk, 1e-6f, 1.0f);
  }
  c->beta = rnd_uniform(T * Hv, 0.01f, 0.99f);
  c->g = malloc(sizeof(float) * T * Hv);
  c->dec = malloc(sizeof(float) * T * Hv);
  for (int64_t i = 0; i < T * Hv; i++) {
    float u = ferry_rng_uniform(&g_rng);
    c->g[i] = -3.0f * u * u; // decays in (0.05, 1], many close to 1 (long memory)
    c->dec[i] = expf(c->g[i]);
  }
  c->S0 = rnd_normal(Hv * dk * dv, 0.5f); // a non-zero incoming state
}
static void case_free(struct dn_case *c) {
  free(c->row), free(c->beta), free(c->g), free(c->dec), free(c->S0);
}

// Double-precision reference, literally §5.6 step 8 (decay first, repeat-interleave).
static void ref_recurrent(const struct dn_case *c, double *o, double *S) {
  const int64_t r = c->Hv / c->Hk, dk = c->dk, dv = c->dv;
  for (int64_t i = 0; i < c->Hv * dk * dv; i++) S[i] = c->S0[i];
  double *m = malloc(sizeof(double) * dv);
  for (int64_t t = 0; t < c->T; t++)
    for (int64_t h = 0; h < c->Hv; h++) {
      const float *q = c->q + t * c->ldq + (h / r) * dk, *k = c->k + t * c->ldk + (h / r) * dk;
      const float *v = c->v + t * c->ldv + h * dv;
      double *Sh = S + h * dk * dv, b = c->beta[t * c->Hv + h], lam = c->dec[t * c->Hv + h];
      for (int64_t i = 0; i < dk * dv; i++) Sh[i] *= lam;
      for (int64_t j = 0; j < dv; j++) {
        m[j] = 0;
        for (int64_t i = 0; i < dk; i++) m[j] += Sh[i * dv + j] * k[i];
      }
      for (int64_t i = 0; i < dk; i++)
        for (int64_t j = 0; j < dv; j++) Sh[i * dv + j] += k[i] * b * (v[j] - m[j]);
      for (int64_t j = 0; j < dv; j++) {
        double acc = 0;
        for (int64_t i = 0; i < dk; i++) acc += Sh[i * dv + j] * q[i];
        o[(t * c->Hv + h) * dv + j] = acc;
      }
    }
  free(m);
}

// Gates at their limits: decays that underflow to 0 (g = -200: the state resets),
// exactly 1 (g = 0), betas near 0 and 1, and runs of identical keys (the worst case for
// the triangular solve of the chunked form).
static void case_extreme(struct dn_case *c) {
  const float gs[] = {0.0f, -1e-3f, -0.7f, -50.0f, -200.0f};
  const int64_t Hv = c->Hv, ld = c->ldk;
  for (int64_t i = 0; i < c->T * Hv; i++) {
    uint64_t x = ferry_rng_u64(&g_rng);
    c->g[i] = (x & 7) < 5 ? gs[(x & 7) % 2] : gs[(x & 7) - 3]; // mostly 0 / -1e-3
    c->dec[i] = expf(c->g[i]);
    c->beta[i] = (x >> 8) & 1 ? 0.999f : 1e-3f;
  }
  for (int64_t t = 1; t < c->T; t++)
    if ((ferry_rng_u64(&g_rng) & 3) != 0) // 3 in 4 tokens repeat the previous key
      memcpy(c->k + t * ld, c->k + (t - 1) * ld, sizeof(float) * c->Hk * c->dk);
}

static void test_delta_x(struct ferry_pool *pool, int64_t T, int64_t Hk, int64_t Hv, int64_t dk,
                         int64_t dv, int64_t chunk, int with_ref, int extreme) {
  struct dn_case c;
  case_make(&c, T, Hk, Hv, dk, dv);
  if (extreme) case_extreme(&c);
  const int64_t no = T * Hv * dv, ns = Hv * dk * dv;
  // (1) T single steps (contiguous copies of each token's q, k, v)
  float *o1 = malloc(sizeof(float) * no), *S1 = dup(c.S0, ns);
  for (int64_t t = 0; t < T; t++)
    cpu_delta_step(o1 + t * Hv * dv, S1, c.q + t * c.ldq, c.k + t * c.ldk, c.v + t * c.ldv,
                   c.beta + t * Hv, c.dec + t * Hv, Hk, Hv, dk, dv);
  // (2) the T-token recurrence (strided) and its pooled variant: identical bits
  float *o2 = malloc(sizeof(float) * no), *S2 = dup(c.S0, ns);
  cpu_delta_recurrent(NULL, o2, Hv * dv, S2, c.q, c.ldq, c.k, c.ldk, c.v, c.ldv, c.beta, c.dec, T,
                      Hk, Hv, dk, dv);
  CHECK(memcmp(o1, o2, sizeof(float) * no) == 0);
  CHECK(memcmp(S1, S2, sizeof(float) * ns) == 0);
  if (pool) {
    float *o3 = malloc(sizeof(float) * no), *S3 = dup(c.S0, ns);
    cpu_delta_recurrent(pool, o3, Hv * dv, S3, c.q, c.ldq, c.k, c.ldk, c.v, c.ldv, c.beta, c.dec, T,
                        Hk, Hv, dk, dv);
    CHECK(memcmp(o1, o3, sizeof(float) * no) == 0);
    CHECK(memcmp(S1, S3, sizeof(float) * ns) == 0);
    free(o3), free(S3);
  }
  // (3) chunked, output with a padded row stride
  const int64_t ldo = Hv * dv + 5;
  float *oc = malloc(sizeof(float) * T * ldo), *Sc = dup(c.S0, ns);
  for (int64_t i = 0; i < T * ldo; i++) oc[i] = 12345.0f; // padding must stay untouched
  CHECK_EQ(cpu_delta_chunked(pool, oc, ldo, Sc, c.q, c.ldq, c.k, c.ldk, c.v, c.ldv, c.beta, c.g, T,
                             Hk, Hv, dk, dv, chunk),
           0);
  float *ocd = malloc(sizeof(float) * no);
  for (int64_t t = 0; t < T; t++) {
    memcpy(ocd + t * Hv * dv, oc + t * ldo, sizeof(float) * Hv * dv);
    for (int64_t j = Hv * dv; j < ldo; j++) CHECK(oc[t * ldo + j] == 12345.0f);
  }
  double eo = rel_err_f(ocd, o1, no), es = rel_err_f(Sc, S1, ns);
  if (!(eo < 1e-5 && es < 1e-5))
    fprintf(stderr,
            "chunked vs recurrent T=%lld Hk=%lld Hv=%lld dk=%lld dv=%lld chunk=%lld: "
            "o %.3g S %.3g\n",
            (long long)T, (long long)Hk, (long long)Hv, (long long)dk, (long long)dv,
            (long long)chunk, eo, es);
  CHECK(eo < 1e-5);
  CHECK(es < 1e-5);
  // (4) the dispatcher: the chunked bits for long prompts, else the recurrent ones
  float *op = malloc(sizeof(float) * no), *Sp = dup(c.S0, ns);
  CHECK_EQ(cpu_delta_prefill(pool, op, Hv * dv, Sp, c.q, c.ldq, c.k, c.ldk, c.v, c.ldv, c.beta, c.g,
                             T, Hk, Hv, dk, dv),
           0);
  CHECK(rel_err_f(op, o1, no) < 1e-5);
  CHECK(rel_err_f(Sp, S1, ns) < 1e-5);
  if (T < CPU_DELTA_CHUNK_MIN_T) { // decay = expf(g) exactly as the test made it
    CHECK(memcmp(op, o1, sizeof(float) * no) == 0);
    CHECK(memcmp(Sp, S1, sizeof(float) * ns) == 0);
  }
  free(op), free(Sp);
  // (5) both against the double reference
  if (with_ref) {
    double *ro = malloc(sizeof(double) * no), *rS = malloc(sizeof(double) * ns);
    ref_recurrent(&c, ro, rS);
    double e1 = rel_err(o1, ro, no), e2 = rel_err(S1, rS, ns);
    double e3 = rel_err(ocd, ro, no), e4 = rel_err(Sc, rS, ns);
    if (!(e1 < 1e-5 && e2 < 1e-5 && e3 < 1e-5 && e4 < 1e-5))
      fprintf(stderr, "vs double T=%lld dk=%lld dv=%lld: rec o %.3g S %.3g, chunk o %.3g S %.3g\n",
              (long long)T, (long long)dk, (long long)dv, e1, e2, e3, e4);
    CHECK(e1 < 1e-5 && e2 < 1e-5 && e3 < 1e-5 && e4 < 1e-5);
    free(ro), free(rS);
  }
  free(o1), free(S1), free(o2), free(S2), free(oc), free(Sc), free(ocd);
  case_free(&c);
}
static void test_delta(struct ferry_pool *pool, int64_t T, int64_t Hk, int64_t Hv, int64_t dk,
                       int64_t dv, int64_t chunk, int with_ref) {
  test_delta_x(pool, T, Hk, Hv, dk, dv, chunk, with_ref, 0);
}

// A tiled head mapping (h mod Hk) must give different numbers: catches a swapped mapping.
static void test_head_mapping(void) {
  const int64_t Hk = 2, Hv = 4, d = 8;
  float *q = rnd_normal(Hk * d, 0.3f), *k = rnd_normal(Hk * d, 0.3f), *v = rnd_normal(Hv * d, 1);
  cpu_l2norm_heads(k, Hk, d, 1e-6f, 1.0f);
  float beta[4] = {0.5f, 0.6f, 0.7f, 0.8f}, dec[4] = {1, 1, 1, 1};
  float S[4 * 8 * 8] = {0}, o[32];
  cpu_delta_step(o, S, q, k, v, beta, dec, Hk, Hv, d, d);
  // from zero state: o_h = beta_h (k.q) v_h with k, q of k-head h/2
  for (int64_t h = 0; h < Hv; h++) {
    int64_t g = h / 2;
    double kq = 0;
    for (int64_t i = 0; i < d; i++) kq += (double)k[g * d + i] * q[g * d + i];
    for (int64_t j = 0; j < d; j++) CHECK_NEAR(o[h * d + j], beta[h] * kq * v[h * d + j], 1e-6);
  }
  free(q), free(k), free(v);
}

// ---- legacy regrouping on index patterns ----
static void test_regroup(void) {
  const int64_t T = 2, nk = 3, nv = 6, dk = 4, dv = 5, r = nv / nk;
  const int64_t grp = 2 * dk + 2 * r * dv, in_row = nk * grp;
  const int64_t qkv_row = 2 * nk * dk + nv * dv, z_row = nv * dv;
  float *p = malloc(sizeof(float) * T * in_row);
  for (int64_t i = 0; i < T * in_row; i++) p[i] = (float)i + 1; // value = source index + 1
  float *qkv = malloc(sizeof(float) * T * qkv_row), *z = malloc(sizeof(float) * T * z_row);
  cpu_ssm_in_regroup(qkv, z, p, T, nk, nv, dk, dv);
  for (int64_t t = 0; t < T; t++) {
    for (int64_t g = 0; g < nk; g++)
      for (int64_t i = 0; i < dk; i++) {
        CHECK_EQ(qkv[t * qkv_row + g * dk + i], t * in_row + g * grp + i + 1);
        CHECK_EQ(qkv[t * qkv_row + nk * dk + g * dk + i], t * in_row + g * grp + dk + i + 1);
      }
    for (int64_t h = 0; h < nv; h++)
      for (int64_t j = 0; j < dv; j++) {
        int64_t g = h / r, tt = h % r;
        CHECK_EQ(qkv[t * qkv_row + 2 * nk * dk + h * dv + j],
                 t * in_row + g * grp + 2 * dk + tt * dv + j + 1);
        CHECK_EQ(z[t * z_row + h * dv + j],
                 t * in_row + g * grp + 2 * dk + r * dv + tt * dv + j + 1);
      }
  }
  // the real shape, legacy §5.4: o = 768 g + j
  {
    const int64_t NK = 16, NV = 32, D = 128, N = 12288;
    float *pp = malloc(sizeof(float) * N), *qq = malloc(sizeof(float) * 8192),
          *zz = malloc(sizeof(float) * 4096);
    for (int64_t i = 0; i < N; i++) pp[i] = (float)i;
    cpu_ssm_in_regroup(qq, zz, pp, 1, NK, NV, D, D);
    CHECK_EQ(qq[0], 0);
    CHECK_EQ(qq[128], 768);  // q_1[0]
    CHECK_EQ(qq[2048], 128); // k_0[0]
    CHECK_EQ(qq[2048 + 15 * 128 + 7], 768 * 15 + 128 + 7);
    CHECK_EQ(qq[4096 + 3 * 128 + 9], 768 * 1 + 256 + 128 + 9); // v_3 = group 1, t 1
    CHECK_EQ(zz[31 * 128 + 127], 768 * 15 + 512 + 128 + 127);
    free(pp), free(qq), free(zz);
  }
  float *pba = malloc(sizeof(float) * T * 2 * nv), b[12], a[12];
  for (int64_t i = 0; i < T * 2 * nv; i++) pba[i] = (float)i + 1;
  cpu_ssm_ba_regroup(b, a, pba, T, nk, nv);
  for (int64_t t = 0; t < T; t++)
    for (int64_t h = 0; h < nv; h++) {
      CHECK_EQ(b[t * nv + h], t * 2 * nv + (h / r) * 2 * r + h % r + 1);
      CHECK_EQ(a[t * nv + h], t * 2 * nv + (h / r) * 2 * r + r + h % r + 1);
    }
  // the real ssm_ba: o = 4g + j, j = 0,1 -> b_{2g}, b_{2g+1}; j = 2,3 -> a_{2g}, a_{2g+1}
  float p64[64], b32[32], a32[32];
  for (int i = 0; i < 64; i++) p64[i] = (float)i;
  cpu_ssm_ba_regroup(b32, a32, p64, 1, 16, 32);
  CHECK_EQ(b32[5], 4 * 2 + 1);
  CHECK_EQ(a32[5], 4 * 2 + 3);
  CHECK_EQ(a32[30], 4 * 15 + 2);
  free(p), free(qkv), free(z), free(pba);
}

int main(void) {
  ferry_rng_seed(&g_rng, 20251123);
  test_regroup();

  struct ferry_pool *pool = NULL;
  if (ferry_pool_create(&pool, 2) != 0) {
    fprintf(stderr, "no pool (%s): pooled variants run inline\n", ferry_errmsg());
    pool = NULL;
  }
  g_pool = pool;
  const char *paths[] = {"base", "avx2", "avx512"};
  for (int pi = 0; pi < 3; pi++) {
    if (cpu_delta_force(paths[pi]) != 0) {
      fprintf(stderr, "SKIP: deltanet path %s is not supported by this CPU: not tested\n",
              paths[pi]);
      continue;
    }
    test_conv();
    test_silu_range();
    test_norms_gates();
    test_worked_example();
    test_head_mapping();
    const int64_t Ts[] = {1, 7, 64, 65, 200};
    for (int i = 0; i < 5; i++) {
      test_delta(NULL, Ts[i], 2, 4, 16, 16, 64, 1);
      test_delta(pool, Ts[i], 2, 4, 20, 12, 64, 1); // value/key dims off the 8/32 tiles
      test_delta(pool, Ts[i], 16, 32, 128, 128, 64, Ts[i] <= 65);
    }
    test_delta(pool, 100, 2, 4, 32, 40, 16, 1); // other chunk sizes
    test_delta(NULL, 9, 1, 3, 8, 8, 1, 1);
    test_delta(NULL, 130, 2, 2, 64, 64, 128, 1);
    test_delta_x(pool, 200, 2, 4, 16, 16, 64, 1, 1);
    test_delta_x(pool, 150, 16, 32, 128, 128, 64, 0, 1);
  }
  CHECK(cpu_delta_force("auto") == 0);
  CHECK(cpu_delta_force("sse9") == -1);
  ferry_pool_destroy(pool);
  CHECK_DONE();
}
