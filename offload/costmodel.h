// offload/costmodel.h: where a routed expert that sits in host RAM is computed — on the
// CPU, from RAM, while the GPU works on the experts it has; or on the GPU after a copy
// over PCIe into a VRAM slot. The rates are calibrated at start-up on this machine
// (engine/stream.c) and the decision is greedy per expert: whichever side finishes the
// layer's work sooner takes it. --expert-compute cpu|gpu overrides it.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum expert_policy { EXPERT_AUTO = 0, EXPERT_CPU, EXPERT_GPU };
enum expert_side { SIDE_CPU = 0, SIDE_GPU = 1 };

struct cost_model {
  enum expert_policy policy;
  double h2d_gbps;     // pinned host -> device copy rate
  double cpu_gbps;     // CPU expert rate for one token (weight bytes per second)
  double cpu_tok_frac; // each further token costs this fraction of the one-token time
  double gpu_s;        // device time of one expert for one token (launches included)
  double gpu_tok_frac; // the same growth on the device
};

// Seconds the CPU / the GPU path (copy + compute; copy_bytes 0 when already in VRAM) need
// for an expert of `bytes` weight bytes applied to `cnt` tokens.
double cost_cpu_s(const struct cost_model *cm, uint64_t bytes, int cnt);
double cost_gpu_s(const struct cost_model *cm, uint64_t copy_bytes, int cnt);
// Picks the side for one expert given the work already queued on each (seconds), and
// adds its cost there. Fixed policies always pick their side.
enum expert_side cost_decide(const struct cost_model *cm, uint64_t bytes, int cnt, double *cpu_busy,
                             double *gpu_busy);

#ifdef __cplusplus
}
#endif
