// tests/unit/test_attn.c: the fast attention kernel against the scalar reference
// (cpu_attn_prefill) on random queries and caches in F32, F16 and Q8_0, for decode and
// causal prefill, several GQA shapes (the real models' included), with and without a pool.
#include <math.h>
#include <string.h>

#include "base/base.h"
#include "kernels/cpu/attn.h"
#include "kernels/cpu/ops.h"
#include "numa/pool.h"
#include "tests/check.h"

static double rel_err(const float *a, const float *b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++)
    num += (a[i] - b[i]) * (double)(a[i] - b[i]), den += (double)b[i] * b[i];
  return sqrt(num / (den + 1e-30));
}

int main(void) {
  struct ferry_rng r;
  ferry_rng_seed(&r, 99);
  struct ferry_pool *pool;
  CHECK_EQ(ferry_pool_create(&pool, 2), 0);
  const int64_t shapes[][3] = {{8, 2, 32}, {32, 4, 128}, {16, 2, 256}, {4, 4, 64}, {6, 3, 32}};
  const enum ferry_type types[] = {FT_F32, FT_F16, FT_Q8_0};
  const int64_t cases[][2] = {{1, 0}, {1, 37}, {7, 0}, {5, 90}, {64, 3}}; // n_tok, pos0
  int n_checked = 0;
  for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
    int64_t H = shapes[si][0], Hkv = shapes[si][1], D = shapes[si][2], stride = Hkv * D;
    for (size_t ti = 0; ti < 3; ti++)
      for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int64_t T = cases[ci][0], pos0 = cases[ci][1], n_ctx = pos0 + T + 3;
        size_t rb = types[ti] == FT_F32   ? stride * 4
                    : types[ti] == FT_F16 ? stride * 2
                                          : stride / 32 * 34;
        uint8_t *kc = calloc(n_ctx, rb), *vc = calloc(n_ctx, rb);
        float *kv = malloc(sizeof(float) * stride * (pos0 + T)),
              *q = malloc(sizeof(float) * T * H * D);
        float *ref = malloc(sizeof(float) * T * H * D), *got = malloc(sizeof(float) * T * H * D);
        for (int64_t i = 0; i < stride * (pos0 + T); i++) kv[i] = ferry_rng_normal(&r);
        CHECK_EQ(cpu_kv_store(kc, types[ti], stride, 0, pos0 + T, kv, stride), 0);
        for (int64_t i = 0; i < stride * (pos0 + T); i++) kv[i] = ferry_rng_normal(&r);
        CHECK_EQ(cpu_kv_store(vc, types[ti], stride, 0, pos0 + T, kv, stride), 0);
        for (int64_t i = 0; i < T * H * D; i++) q[i] = 2.0f * ferry_rng_normal(&r);
        float scale = 1.0f / sqrtf((float)D);
        cpu_attn_prefill(ref, q, kc, vc, types[ti], T, pos0, H, Hkv, D, stride, scale);
        size_t per = cpu_attn_scratch_floats(n_ctx, H, Hkv, D);
        float *scratch = malloc(sizeof(float) * per * 2);
        for (int pi = 0; pi < 2; pi++) {
          memset(got, 0xff, sizeof(float) * T * H * D);
          cpu_attn_fast(pi ? pool : NULL, got, q, kc, vc, types[ti], T, pos0, H, Hkv, D, stride,
                        scale, scratch, n_ctx);
          double e = rel_err(got, ref, T * H * D);
          if (!(e < 2e-6)) {
            fprintf(stderr,
                    "H=%lld Hkv=%lld D=%lld type=%d T=%lld pos0=%lld pool=%d: rel err %.3g\n",
                    (long long)H, (long long)Hkv, (long long)D, types[ti], (long long)T,
                    (long long)pos0, pi, e);
            CHECK(e < 2e-6);
          }
          n_checked++;
        }
        free(scratch), free(kc), free(vc), free(kv), free(q), free(ref), free(got);
      }
  }
  ferry_pool_destroy(pool);
  fprintf(stderr, "%d attention cases\n", n_checked);
  CHECK_DONE();
}
