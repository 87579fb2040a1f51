// test_budget: per-tier, per-category accounting: random charge/release sequences
// against a shadow model (current, peak, limit never exceeded), the over-budget message
// (tier, category, asked, left), a tier with no memory, and the printable summary.
#include <errno.h>
#include <string.h>

#include "base/base.h"
#include "offload/budget.h"
#include "tests/check.h"

int main(void) {
  struct budget *b = NULL;
  const uint64_t lim = 1000000;
  CHECK_EQ(budget_create(&b, lim, 0), 0);
  struct ferry_rng rng;
  ferry_rng_seed(&rng, 7);

  uint64_t used[BUDGET_N_CATS] = {0}, peak[BUDGET_N_CATS] = {0}, tot_peak = 0;
  int refused = 0;
  for (int i = 0; i < 20000; i++) {
    enum budget_cat c = (enum budget_cat)(ferry_rng_u64(&rng) % BUDGET_N_CATS);
    uint64_t tot = 0;
    for (int k = 0; k < BUDGET_N_CATS; k++) tot += used[k];
    if (ferry_rng_u64(&rng) % 2) {
      uint64_t n = 1 + ferry_rng_u64(&rng) % 200000;
      int rc = budget_charge(b, BUDGET_HOST, c, n);
      if (tot + n <= lim) {
        CHECK_EQ(rc, 0);
        used[c] += n;
        if (used[c] > peak[c]) peak[c] = used[c];
        if (tot + n > tot_peak) tot_peak = tot + n;
      } else {
        CHECK_EQ(rc, -ENOMEM);
        refused++;
      }
    } else if (used[c]) {
      uint64_t n = 1 + ferry_rng_u64(&rng) % used[c];
      budget_release(b, BUDGET_HOST, c, n);
      used[c] -= n;
    }
    uint64_t t2 = 0;
    for (int k = 0; k < BUDGET_N_CATS; k++) {
      CHECK_EQ(budget_used(b, BUDGET_HOST, (enum budget_cat)k), used[k]);
      CHECK_EQ(budget_peak(b, BUDGET_HOST, (enum budget_cat)k), peak[k]);
      t2 += used[k];
    }
    CHECK(t2 <= lim);
    CHECK_EQ(budget_used_total(b, BUDGET_HOST), t2);
    CHECK_EQ(budget_left(b, BUDGET_HOST), lim - t2);
    CHECK_EQ(budget_peak_total(b, BUDGET_HOST), tot_peak);
  }
  CHECK(refused > 100);

  // The refusal message names tier, category, ask and what is left.
  for (int k = 0; k < BUDGET_N_CATS; k++)
    if (used[k]) budget_release(b, BUDGET_HOST, (enum budget_cat)k, used[k]);
  CHECK_EQ(budget_charge(b, BUDGET_HOST, BUDGET_DENSE, 600000), 0);
  CHECK_EQ(budget_charge(b, BUDGET_HOST, BUDGET_EXPERTS, 500000), -ENOMEM);
  const char *m = ferry_errmsg();
  CHECK(strstr(m, "host RAM") != NULL);
  CHECK(strstr(m, "expert slots") != NULL);
  CHECK(strstr(m, "500000 bytes") != NULL);
  CHECK(strstr(m, "390.62 KiB of 976.56 KiB is left") != NULL);
  CHECK(strstr(m, "dense weights") != NULL);
  CHECK(strstr(m, "--ram") != NULL);
  CHECK_EQ(budget_used(b, BUDGET_HOST, BUDGET_EXPERTS), 0); // unchanged after refusal
  CHECK_EQ(budget_charge(b, BUDGET_HOST, BUDGET_EXPERTS, 400000), 0);
  CHECK_EQ(budget_left(b, BUDGET_HOST), 0);

  // A tier with no memory refuses everything, clearly.
  CHECK_EQ(budget_charge(b, BUDGET_DEVICE, BUDGET_KV, 1), -ENOMEM);
  CHECK(strstr(ferry_errmsg(), "device VRAM") != NULL);
  CHECK(strstr(ferry_errmsg(), "KV/state") != NULL);
  // Overflowing sizes are refused, not wrapped.
  struct budget *u = NULL;
  CHECK_EQ(budget_create(&u, BUDGET_UNLIMITED, BUDGET_UNLIMITED), 0);
  CHECK_EQ(budget_charge(u, BUDGET_DEVICE, BUDGET_SCRATCH, UINT64_MAX - 5), 0);
  CHECK_EQ(budget_charge(u, BUDGET_DEVICE, BUDGET_SCRATCH, 10), -ENOMEM);
  CHECK_EQ(budget_left(u, BUDGET_DEVICE), BUDGET_UNLIMITED);
  budget_destroy(u);

  char buf[2048];
  int n = budget_format(b, buf, sizeof buf);
  CHECK(n > 0 && (size_t)n < sizeof buf);
  CHECK(strstr(buf, "host RAM") && strstr(buf, "expert slots") && strstr(buf, "dense weights"));
  char tiny[8];
  CHECK_EQ(budget_format(b, tiny, sizeof tiny), n); // truncates, reports the full length
  CHECK_EQ(strlen(tiny), 7);
  fprintf(stderr, "%s", buf);
  budget_destroy(b);
  budget_destroy(NULL);
  CHECK_DONE();
}
