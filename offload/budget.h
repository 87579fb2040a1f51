// offload/budget.h: the bytes ferry may use per tier (host RAM from --ram, device VRAM
// from --vram) and what uses them, by category. Every long-lived allocation (weights,
// expert slots, KV/state, scratch, io buffers) is charged here before it is made, so a
// plan that does not fit fails with one clear message instead of an OOM kill, and
// `ferry info` / `--stats` can print current and peak use per category.
// Thread-safe (one mutex); charges are rare (start-up, context growth), never per token.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum budget_tier { BUDGET_HOST = 0, BUDGET_DEVICE, BUDGET_N_TIERS };
enum budget_cat {
  BUDGET_DENSE = 0, // resident non-expert weights
  BUDGET_EXPERTS,   // expert cache slots
  BUDGET_KV,        // KV cache and recurrent (DeltaNet) state
  BUDGET_SCRATCH,   // activations, workspaces
  BUDGET_IOBUF,     // staging buffers for reads that are not expert slots
  BUDGET_N_CATS
};
#define BUDGET_UNLIMITED UINT64_MAX

struct budget;

// limits[tier] in bytes; BUDGET_UNLIMITED for no limit, 0 for a tier that does not exist
// (no GPU): every charge to it fails. Returns 0 or -ENOMEM.
int budget_create(struct budget **out, uint64_t host_limit, uint64_t device_limit);
void budget_destroy(struct budget *b); // NULL-safe

// Charges bytes to (tier, cat). Returns 0, or -ENOMEM with a message naming the tier,
// the category, the bytes asked for, what is left and what uses the tier, and leaves
// the budget unchanged.
int budget_charge(struct budget *b, enum budget_tier t, enum budget_cat c, uint64_t bytes);
// Returns bytes charged earlier. Releasing more than is charged is a bug (asserts).
void budget_release(struct budget *b, enum budget_tier t, enum budget_cat c, uint64_t bytes);

uint64_t budget_limit(const struct budget *b, enum budget_tier t);
uint64_t budget_used(const struct budget *b, enum budget_tier t, enum budget_cat c);
uint64_t budget_peak(const struct budget *b, enum budget_tier t, enum budget_cat c);
uint64_t budget_used_total(const struct budget *b, enum budget_tier t);
uint64_t budget_peak_total(const struct budget *b, enum budget_tier t); // peak of the sum
uint64_t budget_left(const struct budget *b, enum budget_tier t);       // UNLIMITED if unlimited

const char *budget_tier_name(enum budget_tier t); // "host RAM", "device VRAM"
const char *budget_cat_name(enum budget_cat c);   // "dense weights", "expert slots", ...

// Writes a multi-line table (one line per tier and category with used, peak, and the
// tier's limit) into buf, always NUL-terminated. Returns the length it needed (like
// snprintf).
int budget_format(const struct budget *b, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
