// base: implementation of logging, error messages, size parsing, RNG and half floats.
#include "base/base.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

static int g_level = -1;

// A message is one line: names and strings quoted from a file (a tensor name, an
// architecture) may hold control bytes, which are shown as '?'.
static void one_line(char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = '?';
}
static const char *const k_level_names[] = {"error", "warn", "info", "debug"};

void ferry_log_set_level(enum ferry_log_level lvl) { g_level = (int)lvl; }

enum ferry_log_level ferry_log_get_level(void) {
  if (g_level < 0) {
    const char *e = getenv("FERRY_LOG");
    g_level = FERRY_LOG_INFO;
    for (int i = 0; e && i < 4; i++)
      if (!strcmp(e, k_level_names[i])) g_level = i;
  }
  return (enum ferry_log_level)g_level;
}

void ferry_log(enum ferry_log_level lvl, const char *fmt, ...) {
  if ((int)lvl > (int)ferry_log_get_level()) return;
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  one_line(buf);
  fprintf(stderr, "ferry: %s%s\n",
          lvl == FERRY_LOG_ERROR  ? "error: "
          : lvl == FERRY_LOG_WARN ? "warning: "
                                  : "",
          buf);
}

static _Thread_local char t_err[1024];

int ferry_fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t_err, sizeof t_err, fmt, ap);
  va_end(ap);
  one_line(t_err);
  return code;
}

int ferry_fail_ctx(int code, const char *fmt, ...) {
  char ctx[512], old[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ctx, sizeof ctx, fmt, ap);
  va_end(ap);
  memcpy(old, t_err, sizeof old);
  const char *rest = old[0] ? old : strerror(code < 0 ? -code : code);
  // the message may be cut at the buffer's end; say so rather than warn about it
  int n = snprintf(t_err, sizeof t_err, "%.500s: ", ctx);
  if (n > 0 && (size_t)n < sizeof t_err)
    snprintf(t_err + n, sizeof t_err - (size_t)n, "%.500s", rest);
  one_line(t_err);
  return code;
}

const char *ferry_errmsg(void) { return t_err[0] ? t_err : "unknown error"; }
void ferry_clear_error(void) { t_err[0] = 0; }

void ferry_assert_fail(const char *file, int line, const char *expr) {
  fprintf(stderr, "ferry: internal error: %s:%d: assertion failed: %s\n", file, line, expr);
  abort();
}

double ferry_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int ferry_parse_size(const char *s, uint64_t *out) {
  if (!s || !*s) return ferry_fail(-EINVAL, "empty size");
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || errno || !(v >= 0) || isnan(v))
    return ferry_fail(-EINVAL, "malformed size '%s' (expected e.g. 12G, 512M, 4096)", s);
  double mul = 1;
  if (*end) {
    switch (toupper((unsigned char)*end)) {
      case 'K': mul = 1024.0; break;
      case 'M': mul = 1024.0 * 1024; break;
      case 'G': mul = 1024.0 * 1024 * 1024; break;
      case 'T': mul = 1024.0 * 1024 * 1024 * 1024; break;
      case 'B': mul = 1; break;
      default: return ferry_fail(-EINVAL, "malformed size '%s' (unknown unit '%c')", s, *end);
    }
    end++;
    if (*end == 'i' || *end == 'I') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return ferry_fail(-EINVAL, "malformed size '%s' (trailing '%s')", s, end);
  }
  double b = v * mul;
  if (b >= 18446744073709551615.0) return ferry_fail(-EINVAL, "size '%s' is too large", s);
  *out = (uint64_t)b;
  return 0;
}

void ferry_format_size(uint64_t bytes, char *buf, size_t n) {
  const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)bytes;
  int i = 0;
  while (v >= 1024 && i < 4) v /= 1024, i++;
  if (i == 0)
    snprintf(buf, n, "%llu B", (unsigned long long)bytes);
  else
    snprintf(buf, n, "%.2f %s", v, u[i]);
}

static uint64_t read_status_kb(const char *path, const char *key) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[256];
  uint64_t kb = 0;
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, key, kl)) {
      kb = strtoull(line + kl, NULL, 10);
      break;
    }
  fclose(f);
  return kb * 1024;
}

uint64_t ferry_peak_rss_bytes(void) { return read_status_kb("/proc/self/status", "VmHWM:"); }
uint64_t ferry_rss_bytes(void) { return read_status_kb("/proc/self/status", "VmRSS:"); }
static uint64_t read_u64_file(const char *path, bool *ok) {
  FILE *f = fopen(path, "r");
  *ok = false;
  if (!f) return 0;
  char line[64];
  uint64_t v = 0;
  if (fgets(line, sizeof line, f) && strncmp(line, "max", 3)) {
    v = strtoull(line, NULL, 10);
    *ok = true;
  }
  fclose(f);
  return v;
}

static uint64_t read_stat_key(const char *path, const char *key) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[256];
  uint64_t v = 0;
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, key, kl) && line[kl] == ' ') {
      v = strtoull(line + kl + 1, NULL, 10);
      break;
    }
  fclose(f);
  return v;
}

// Memory the cgroup hierarchy of this process still allows: min over the process's
// cgroup and its ancestors of limit - usage + inactive file pages (reclaimable).
// UINT64_MAX when no limit applies. Handles cgroup v1 (memory controller) and v2.
static uint64_t cgroup_available(void) {
  FILE *f = fopen("/proc/self/cgroup", "r");
  if (!f) return UINT64_MAX;
  char line[1024], rel[1024] = "";
  bool v1 = false, found = false;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2) continue;
    *c2 = 0;
    const char *ctrl = c1 + 1;
    if (strstr(ctrl, "memory")) { // v1 line "N:memory:/path" (possibly "memory,..."")
      snprintf(rel, sizeof rel, "%s", c2 + 1);
      v1 = found = true;
      break;
    }
    if (!*ctrl && !found) { // v2 line "0::/path"
      snprintf(rel, sizeof rel, "%s", c2 + 1);
      found = true;
    }
  }
  fclose(f);
  if (!found) return UINT64_MAX;
  uint64_t best = UINT64_MAX;
  char dir[1200];
  for (;;) {
    snprintf(dir, sizeof dir, "/sys/fs/cgroup%s%s", v1 ? "/memory" : "", rel);
    char p[1300];
    bool ok1, ok2;
    snprintf(p, sizeof p, "%s/%s", dir, v1 ? "memory.limit_in_bytes" : "memory.max");
    uint64_t limit = read_u64_file(p, &ok1);
    snprintf(p, sizeof p, "%s/%s", dir, v1 ? "memory.usage_in_bytes" : "memory.current");
    uint64_t usage = read_u64_file(p, &ok2);
    if (ok1 && ok2 && limit < (1ull << 60)) {
      snprintf(p, sizeof p, "%s/memory.stat", dir);
      uint64_t inactive = read_stat_key(p, v1 ? "total_inactive_file" : "inactive_file");
      uint64_t avail = limit > usage ? limit - usage : 0;
      avail += inactive < usage ? inactive : 0;
      if (avail > limit) avail = limit;
      if (avail < best) best = avail;
    }
    char *slash = strrchr(rel, '/');
    if (!slash || rel[0] == 0 || !strcmp(rel, "/")) break;
    if (slash == rel)
      rel[1] = 0, rel[0] = '/';
    else
      *slash = 0;
    if (!strcmp(rel, "/") && dir[strlen(dir) - 1] == '/') break;
  }
  return best;
}

uint64_t ferry_mem_available_bytes(void) {
  uint64_t sys = read_status_kb("/proc/meminfo", "MemAvailable:");
  uint64_t cg = cgroup_available();
  return cg < sys ? cg : sys;
}

void *ferry_alloc_aligned(size_t align, size_t size) {
  void *p = NULL;
  if (size == 0) size = align;
  int rc = posix_memalign(&p, align, ferry_align_up(size, align));
  if (rc) {
    ferry_fail(-ENOMEM, "out of memory allocating %zu bytes", size);
    return NULL;
  }
  return p;
}
void ferry_free_aligned(void *p) { free(p); }

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
void ferry_rng_seed(struct ferry_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
uint64_t ferry_rng_u64(struct ferry_rng *r) {
  uint64_t *s = r->s;
  uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t, s[3] = rotl(s[3], 45);
  return res;
}
float ferry_rng_uniform(struct ferry_rng *r) {
  return (float)(ferry_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}
float ferry_rng_normal(struct ferry_rng *r) {
  double u1 = ((double)(ferry_rng_u64(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  double u2 = (double)(ferry_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

size_t ferry_utf8_seq(const unsigned char *s, size_t n) {
  if (!n) return 0;
  unsigned char c = s[0];
  size_t l;
  unsigned lo = 0x80, hi = 0xBF;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF)
    l = 2;
  else if (c >= 0xE0 && c <= 0xEF)
    l = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
  else if (c >= 0xF0 && c <= 0xF4)
    l = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
  else
    return 0;
  if (l > n || s[1] < lo || s[1] > hi) return 0;
  for (size_t k = 2; k < l; k++)
    if ((s[k] & 0xC0) != 0x80) return 0;
  return l;
}

size_t ferry_utf8_invalid_at(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    size_t l = ferry_utf8_seq(u + i, n - i);
    if (!l) return i;
    i += l;
  }
  return n;
}

float ferry_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  union {
    uint32_t u;
    float f;
  } v;
  if (exp == 0) {
    float m = ldexpf((float)man, -24);
    return sign ? -m : m;
  } else if (exp == 31) {
    v.u = sign | 0x7f800000u | (man << 13);
  } else {
    v.u = sign | ((exp + 112) << 23) | (man << 13);
  }
  return v.f;
}

uint16_t ferry_f32_to_f16(float f) {
  union {
    float f;
    uint32_t u;
  } v = {.f = f};
  uint32_t x = v.u, sign = (x >> 16) & 0x8000;
  uint32_t ax = x & 0x7fffffff;
  if (ax >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 : 0));
  if (ax >= 0x477ff000) return (uint16_t)(sign | 0x7c00); // rounds to inf
  if (ax < 0x38800000) {                                  // subnormal or zero in f16
    float a = fabsf(f) * 16777216.0f;                     // / 2^-24
    uint32_t m = (uint32_t)nearbyintf(a);
    return (uint16_t)(sign | m);
  }
  uint32_t exp = ((ax >> 23) - 112) << 10, man = ax & 0x7fffff;
  uint32_t h = exp | (man >> 13);
  uint32_t rem = man & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return (uint16_t)(sign | h);
}

uint16_t ferry_f32_to_bf16(float f) {
  union {
    float f;
    uint32_t u;
  } v = {.f = f};
  if ((v.u & 0x7fffffff) > 0x7f800000) return (uint16_t)((v.u >> 16) | 64); // quiet NaN
  return (uint16_t)((v.u + (0x7fff + ((v.u >> 16) & 1))) >> 16);
}
