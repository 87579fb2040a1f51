// offload/budget.c: per-tier, per-category byte accounting (see budget.h). Totals are
// kept alongside the categories so a charge checks the limit in O(1) under the lock.
#include "offload/budget.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "base/base.h"

struct budget {
  pthread_mutex_t mu;
  uint64_t limit[BUDGET_N_TIERS];
  uint64_t used[BUDGET_N_TIERS][BUDGET_N_CATS];
  uint64_t peak[BUDGET_N_TIERS][BUDGET_N_CATS];
  uint64_t total[BUDGET_N_TIERS];
  uint64_t total_peak[BUDGET_N_TIERS];
};

static const char *const k_tier[BUDGET_N_TIERS] = {"host RAM", "device VRAM"};
static const char *const k_cat[BUDGET_N_CATS] = {"dense weights", "expert slots", "KV/state",
                                                 "scratch", "io buffers"};
static const char *const k_flag[BUDGET_N_TIERS] = {"--ram", "--vram"};

const char *budget_tier_name(enum budget_tier t) {
  return (unsigned)t < BUDGET_N_TIERS ? k_tier[t] : "?";
}
const char *budget_cat_name(enum budget_cat c) {
  return (unsigned)c < BUDGET_N_CATS ? k_cat[c] : "?";
}

int budget_create(struct budget **out, uint64_t host_limit, uint64_t device_limit) {
  struct budget *b = calloc(1, sizeof *b);
  *out = NULL;
  if (!b) return ferry_fail(-ENOMEM, "out of memory");
  pthread_mutex_init(&b->mu, NULL);
  b->limit[BUDGET_HOST] = host_limit;
  b->limit[BUDGET_DEVICE] = device_limit;
  *out = b;
  return 0;
}

void budget_destroy(struct budget *b) {
  if (!b) return;
  pthread_mutex_destroy(&b->mu);
  free(b);
}

static void fmt(uint64_t v, char *buf, size_t n) {
  if (v == BUDGET_UNLIMITED)
    snprintf(buf, n, "unlimited");
  else
    ferry_format_size(v, buf, n);
}

int budget_charge(struct budget *b, enum budget_tier t, enum budget_cat c, uint64_t bytes) {
  FERRY_ASSERT((unsigned)t < BUDGET_N_TIERS && (unsigned)c < BUDGET_N_CATS);
  pthread_mutex_lock(&b->mu);
  uint64_t lim = b->limit[t], tot = b->total[t], next;
  if (ferry_add_u64(tot, bytes, &next) || (lim != BUDGET_UNLIMITED && next > lim)) {
    char ask[32], left[32], limit[32], uses[256] = "";
    ferry_format_size(bytes, ask, sizeof ask);
    ferry_format_size(lim > tot ? lim - tot : 0, left, sizeof left);
    fmt(lim, limit, sizeof limit);
    size_t k = 0;
    for (int i = 0; i < BUDGET_N_CATS; i++) {
      if (!b->used[t][i] || k >= sizeof uses) continue;
      char s[32];
      ferry_format_size(b->used[t][i], s, sizeof s);
      k += (size_t)snprintf(uses + k, sizeof uses - k, "%s%s %s", k ? ", " : "", k_cat[i], s);
    }
    pthread_mutex_unlock(&b->mu);
    if (lim == 0)
      return ferry_fail(-ENOMEM,
                        "%s budget: %s asks for %s but this tier has no memory (%s 0 "
                        "or no device)",
                        k_tier[t], k_cat[c], ask, k_flag[t]);
    return ferry_fail(-ENOMEM,
                      "%s budget exceeded: %s asks for %s (%llu bytes) but only %s of "
                      "%s is left (in use: %s); raise %s",
                      k_tier[t], k_cat[c], ask, (unsigned long long)bytes, left, limit,
                      k ? uses : "nothing", k_flag[t]);
  }
  b->total[t] = next;
  if (next > b->total_peak[t]) b->total_peak[t] = next;
  b->used[t][c] += bytes;
  if (b->used[t][c] > b->peak[t][c]) b->peak[t][c] = b->used[t][c];
  pthread_mutex_unlock(&b->mu);
  return 0;
}

void budget_release(struct budget *b, enum budget_tier t, enum budget_cat c, uint64_t bytes) {
  if (!b || !bytes) return;
  FERRY_ASSERT((unsigned)t < BUDGET_N_TIERS && (unsigned)c < BUDGET_N_CATS);
  pthread_mutex_lock(&b->mu);
  FERRY_ASSERT(b->used[t][c] >= bytes);
  b->used[t][c] -= bytes;
  b->total[t] -= bytes;
  pthread_mutex_unlock(&b->mu);
}

// Readers lock too: a 64-bit read is atomic on x86-64 but the pairs below are not.
#define LOCKED(expr)                                 \
  do {                                               \
    pthread_mutex_lock((pthread_mutex_t *)&b->mu);   \
    uint64_t _v = (expr);                            \
    pthread_mutex_unlock((pthread_mutex_t *)&b->mu); \
    return _v;                                       \
  } while (0)

uint64_t budget_limit(const struct budget *b, enum budget_tier t) { LOCKED(b->limit[t]); }
uint64_t budget_used(const struct budget *b, enum budget_tier t, enum budget_cat c) {
  LOCKED(b->used[t][c]);
}
uint64_t budget_peak(const struct budget *b, enum budget_tier t, enum budget_cat c) {
  LOCKED(b->peak[t][c]);
}
uint64_t budget_used_total(const struct budget *b, enum budget_tier t) { LOCKED(b->total[t]); }
uint64_t budget_peak_total(const struct budget *b, enum budget_tier t) { LOCKED(b->total_peak[t]); }
uint64_t budget_left(const struct budget *b, enum budget_tier t) {
  LOCKED(b->limit[t] == BUDGET_UNLIMITED ? BUDGET_UNLIMITED
         : b->limit[t] > b->total[t]     ? b->limit[t] - b->total[t]
                                         : 0);
}

int budget_format(const struct budget *b, char *buf, size_t n) {
  size_t k = 0;
  char s1[32], s2[32], s3[32];
#define OUT(...)                                                              \
  do {                                                                        \
    int _w = snprintf(buf + (k < n ? k : n), k < n ? n - k : 0, __VA_ARGS__); \
    if (_w > 0) k += (size_t)_w;                                              \
  } while (0)
  if (n) buf[0] = 0;
  pthread_mutex_lock((pthread_mutex_t *)&b->mu);
  for (int t = 0; t < BUDGET_N_TIERS; t++) {
    fmt(b->limit[t], s1, sizeof s1);
    ferry_format_size(b->total[t], s2, sizeof s2);
    ferry_format_size(b->total_peak[t], s3, sizeof s3);
    OUT("%-12s budget %-12s used %-12s peak %s\n", k_tier[t], s1, s2, s3);
    for (int c = 0; c < BUDGET_N_CATS; c++) {
      if (!b->peak[t][c]) continue;
      ferry_format_size(b->used[t][c], s2, sizeof s2);
      ferry_format_size(b->peak[t][c], s3, sizeof s3);
      OUT("  %-17s        used %-12s peak %s\n", k_cat[c], s2, s3);
    }
  }
  pthread_mutex_unlock((pthread_mutex_t *)&b->mu);
#undef OUT
  return (int)k;
}
