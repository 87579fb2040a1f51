// kernels/cpu/quants.c: run-time dispatch of cpu_vec_dot. The table starts as the scalar
// reference; the AVX2 and AVX-512 files overwrite the entries they accelerate when this
// CPU (and the OS, via cpuid/xgetbv as __builtin_cpu_supports reports) supports them.
// Chosen once on first use; cpu_vec_dot_force swaps it for tests and benchmarks.
#include <pthread.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "base/base.h"
#include "kernels/cpu/quants_impl.h"

static cpu_vec_dot_fn g_tab[FT_COUNT];
static cpu_vec_dot4_fn g_tab4[FT_COUNT];
static const char *g_name[FT_COUNT];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

// F16C through cpuid leaf 1 (ECX bit 29): not every compiler's __builtin_cpu_supports
// knows it. AVX2 implies the OS saves YMM state, which F16C also needs.
static int have_f16c(void) {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d;
  return __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
#else
  return 0;
#endif
}

static int have_avx2(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && have_f16c();
#else
  return 0;
#endif
}

static int have_avx512(void) {
#if defined(__x86_64__)
  return have_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
  return 0;
#endif
}

// Builds the table for `level` (0 scalar, 1 avx2, 2 avx512), recording which layer
// supplied each entry so cpu_vec_dot_path names the code that really runs.
static void build(int level) {
  cpu_vec_dot_fn tab[FT_COUNT], prev[FT_COUNT];
  cpu_vec_dot4_fn tab4[FT_COUNT] = {0};
  const char *name[FT_COUNT];
  cpu_quants_fill_ref(tab);
  for (int t = 0; t < FT_COUNT; t++) name[t] = tab[t] ? "scalar" : NULL;
  if (level >= 1) {
    memcpy(prev, tab, sizeof tab);
    cpu_quants_fill_avx2(tab);
    cpu_quants_fill_avx2_dot4(tab4);
    for (int t = 0; t < FT_COUNT; t++)
      if (tab[t] != prev[t]) name[t] = "avx2";
  }
  if (level >= 2) {
    memcpy(prev, tab, sizeof tab);
    cpu_quants_fill_avx512(tab);
    cpu_quants_fill_avx512_dot4(tab4);
    for (int t = 0; t < FT_COUNT; t++)
      if (tab[t] != prev[t]) name[t] = "avx512";
  }
  for (int t = 0; t < FT_COUNT; t++) {
    __atomic_store_n(&g_tab4[t], tab4[t], __ATOMIC_RELEASE);
    __atomic_store_n(&g_name[t], name[t], __ATOMIC_RELAXED);
    __atomic_store_n(&g_tab[t], tab[t], __ATOMIC_RELEASE);
  }
}

static void init_once(void) { build(have_avx512() ? 2 : have_avx2() ? 1 : 0); }

cpu_vec_dot_fn cpu_vec_dot_get(enum ferry_type t) {
  pthread_once(&g_once, init_once);
  FERRY_ASSERT((unsigned)t < FT_COUNT);
  cpu_vec_dot_fn f = __atomic_load_n(&g_tab[t], __ATOMIC_ACQUIRE);
  FERRY_ASSERT(f && "cpu_vec_dot: unsupported weight type");
  return f;
}

cpu_vec_dot4_fn cpu_vec_dot4_get(enum ferry_type t) {
  pthread_once(&g_once, init_once);
  FERRY_ASSERT((unsigned)t < FT_COUNT);
  return __atomic_load_n(&g_tab4[t], __ATOMIC_ACQUIRE);
}

float cpu_vec_dot(enum ferry_type t, int64_t n, const void *w, const void *xq) {
  return cpu_vec_dot_get(t)(n, w, xq);
}

const char *cpu_vec_dot_path(enum ferry_type t) {
  pthread_once(&g_once, init_once);
  if ((unsigned)t >= FT_COUNT || !g_name[t]) return "none";
  return __atomic_load_n(&g_name[t], __ATOMIC_RELAXED);
}

int cpu_vec_dot_force(const char *path) {
  pthread_once(&g_once, init_once);
  int level;
  if (!strcmp(path, "scalar"))
    level = 0;
  else if (!strcmp(path, "avx2"))
    level = have_avx2() ? 1 : -1;
  else if (!strcmp(path, "avx512"))
    level = have_avx512() ? 2 : -1;
  else if (!strcmp(path, "auto"))
    level = have_avx512() ? 2 : have_avx2() ? 1 : 0;
  else
    level = -1;
  if (level < 0) return -1;
  build(level);
  return 0;
}
