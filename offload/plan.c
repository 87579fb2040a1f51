// offload/plan.c: the placement plan (see plan.h).
#include "offload/plan.h"

#include <errno.h>
#include <string.h>

#include "base/base.h"

const char *plan_mode_name(enum plan_mode m) {
  return m == PLAN_FULL ? "full" : m == PLAN_STREAM ? "stream" : "auto";
}

struct sizes {
  char s[8][32];
};
static const char *sz(struct sizes *z, int i, uint64_t v) {
  ferry_format_size(v, z->s[i], sizeof z->s[i]);
  return z->s[i];
}

static int fail_full(const struct plan_need *n, const struct plan_req *r, uint64_t fb,
                     uint64_t fh) {
  struct sizes z;
  if (r->device && fb > r->vram)
    return ferry_fail(-ENOMEM,
                      "full mode needs %s of VRAM (weights %s, KV/state %s, scratch %s) but "
                      "the VRAM budget is %s; use --mode stream or raise --vram to at least %llu",
                      sz(&z, 0, fb), sz(&z, 1, n->dense + n->experts), sz(&z, 2, n->state),
                      sz(&z, 3, n->scratch), sz(&z, 4, r->vram), (unsigned long long)fb);
  const uint64_t need = r->device ? fh : fb + fh;
  return ferry_fail(-ENOMEM,
                    "full mode needs %s of RAM (%s%s, KV/state %s, scratch %s) but the RAM "
                    "budget is %s; use --mode stream or raise --ram to at least %llu",
                    sz(&z, 0, need), r->device ? "host buffers " : "weights ",
                    sz(&z, 1, r->device ? fh : n->dense + n->experts),
                    sz(&z, 2, r->device ? 0 : n->state), sz(&z, 3, r->device ? 0 : n->scratch + fh),
                    sz(&z, 4, r->ram), (unsigned long long)need);
}

static int fail_stream(const struct plan_need *n, const struct plan_req *r, uint64_t sb,
                       uint64_t sh) {
  struct sizes z;
  if (r->device && sb > r->vram)
    return ferry_fail(-ENOMEM,
                      "VRAM budget %s is too small: the dense weights (%s), KV/state (%s) and "
                      "scratch (%s) must fit in VRAM; use --vram %llu (%s) or more, or "
                      "--backend cpu",
                      sz(&z, 0, r->vram), sz(&z, 1, n->s_dense), sz(&z, 2, n->s_state),
                      sz(&z, 3, n->s_scratch), (unsigned long long)sb, sz(&z, 4, sb));
  const uint64_t need = (r->device ? 0 : sb) + sh;
  return ferry_fail(-ENOMEM,
                    "RAM budget %s is too small for stream mode: %s need %s and the smallest "
                    "expert cache %s; use --ram %llu (%s) or more",
                    sz(&z, 0, r->ram),
                    r->device ? "host buffers" : "dense weights, KV/state and scratch",
                    sz(&z, 1, need - n->min_cache), sz(&z, 2, n->min_cache),
                    (unsigned long long)need, sz(&z, 3, need));
}

int plan_make(const struct plan_need *n, const struct plan_req *r, struct plan *out) {
  memset(out, 0, sizeof *out);
  out->device = r->device;
  out->ram = r->ram;
  out->vram = r->device ? r->vram : 0;
  const uint64_t fb = n->dense + n->experts + n->state + n->scratch, fh = n->host;
  const uint64_t sb = n->s_dense + n->s_state + n->s_scratch, sh = n->s_host + n->min_cache;
  out->full_backend = fb, out->full_host = fh;
  out->stream_backend = sb, out->stream_host = n->s_host;
  const bool full_fits = r->device ? fb <= r->vram && fh <= r->ram : fb + fh <= r->ram;
  const bool stream_fits = r->device ? sb <= r->vram && sh <= r->ram : sb + sh <= r->ram;
  enum plan_mode mode = r->mode;
  if (mode == PLAN_AUTO) mode = full_fits || !stream_fits ? PLAN_FULL : PLAN_STREAM;
  if (r->mode == PLAN_AUTO && !full_fits && !stream_fits) return fail_stream(n, r, sb, sh);
  if (mode == PLAN_FULL && !full_fits) return fail_full(n, r, fb, fh);
  if (mode == PLAN_STREAM && !stream_fits) return fail_stream(n, r, sb, sh);
  out->mode = mode;
  const enum budget_tier tb = r->device ? BUDGET_DEVICE : BUDGET_HOST;
  uint64_t *cb = out->charge[tb], *ch = out->charge[BUDGET_HOST];
  if (mode == PLAN_FULL) {
    cb[BUDGET_DENSE] = n->dense;
    cb[BUDGET_EXPERTS] = n->experts;
    cb[BUDGET_KV] = n->state;
    cb[BUDGET_SCRATCH] = n->scratch;
    ch[BUDGET_SCRATCH] += n->host;
  } else {
    cb[BUDGET_DENSE] = n->s_dense;
    cb[BUDGET_KV] = n->s_state;
    cb[BUDGET_SCRATCH] = n->s_scratch;
    ch[BUDGET_SCRATCH] += n->s_host;
    uint64_t used = 0;
    for (int c = 0; c < BUDGET_N_CATS; c++) used += ch[c];
    const uint64_t left = r->ram - used;
    out->host_cache = left < n->all_experts ? left : n->all_experts;
    if (r->device) { // what VRAM has left after the dense part becomes the VRAM tier
      const uint64_t vleft = r->vram - sb;
      out->vram_cache = vleft < n->dev_all_experts ? vleft : n->dev_all_experts;
      if (out->vram_cache < n->dev_min_cache) out->vram_cache = 0;
      if (!out->vram_cache && r->vram_tier_needed) {
        struct sizes z;
        return ferry_fail(-ENOMEM,
                          "VRAM budget %s leaves no room for the VRAM expert tier that computing "
                          "every expert on the GPU needs (dense part %s, tier at least %s); use "
                          "--vram %llu or more, or --expert-compute auto",
                          sz(&z, 0, r->vram), sz(&z, 1, sb), sz(&z, 2, n->dev_min_cache),
                          (unsigned long long)(sb + n->dev_min_cache));
      }
    }
  }
  return 0;
}

void plan_print(const struct plan *p, const struct plan_need *n, FILE *o) {
  struct sizes z;
  const char *where = p->device ? "VRAM" : "RAM";
  if (p->device)
    fprintf(
        o,
        "  full       needs %s of VRAM (weights %s, KV/state %s, scratch %s) + %s of RAM -> %s\n",
        sz(&z, 0, p->full_backend), sz(&z, 1, n->dense + n->experts), sz(&z, 2, n->state),
        sz(&z, 3, n->scratch), sz(&z, 4, p->full_host),
        p->full_backend <= p->vram && p->full_host <= p->ram ? "fits" : "does not fit");
  else
    fprintf(o, "  full       needs %s: weights %s + KV/state %s + scratch %s -> %s\n",
            sz(&z, 0, p->full_backend + p->full_host), sz(&z, 1, n->dense + n->experts),
            sz(&z, 2, n->state), sz(&z, 3, n->scratch + p->full_host),
            p->full_backend + p->full_host <= p->ram ? "fits" : "does not fit");
  const uint64_t min_ram = (p->device ? 0 : p->stream_backend) + p->stream_host + n->min_cache;
  fprintf(o, "  stream     in %s: dense weights %s + KV/state %s + scratch %s = %s", where,
          sz(&z, 0, n->s_dense), sz(&z, 1, n->s_state), sz(&z, 2, n->s_scratch),
          sz(&z, 3, p->stream_backend));
  if (p->device) fprintf(o, " (minimum --vram %llu)", (unsigned long long)p->stream_backend);
  fprintf(o, "; minimum --ram %s (%llu)\n", sz(&z, 4, min_ram), (unsigned long long)min_ram);
  if (p->mode == PLAN_STREAM || p->host_cache) {
    uint64_t vslots = n->dev_slot_bytes ? p->vram_cache / n->dev_slot_bytes : 0;
    if (vslots > n->n_expert) vslots = n->n_expert;
    if (p->device)
      fprintf(o,
              "  stream     expert tier (VRAM) %s: about %llu of %u experts per layer (%.1f%%)\n",
              sz(&z, 0, p->vram_cache), (unsigned long long)vslots, n->n_expert,
              n->n_expert ? 100.0 * (double)vslots / n->n_expert : 0.0);
    uint64_t slots = n->expert_slot_bytes ? p->host_cache / n->expert_slot_bytes : 0;
    if (slots > n->n_expert) slots = n->n_expert;
    fprintf(
        o, "  stream     expert cache (host RAM) %s: about %llu of %u experts per layer (%.1f%%)\n",
        sz(&z, 0, p->host_cache), (unsigned long long)slots, n->n_expert,
        n->n_expert ? 100.0 * (double)slots / n->n_expert : 0.0);
    if (p->device) {
      const uint64_t both = vslots + slots < n->n_expert ? vslots + slots : n->n_expert;
      fprintf(o, "  stream     together about %llu of %u experts per layer (%.1f%%) in memory\n",
              (unsigned long long)both, n->n_expert,
              n->n_expert ? 100.0 * (double)both / n->n_expert : 0.0);
    }
  }
  if (p->mode != PLAN_AUTO) fprintf(o, "  mode       %s\n", plan_mode_name(p->mode));
}
