// offload/costmodel.c: see costmodel.h.
#include "offload/costmodel.h"

double cost_cpu_s(const struct cost_model *cm, uint64_t bytes, int cnt) {
  const double one = cm->cpu_gbps > 0 ? (double)bytes / (cm->cpu_gbps * 1e9) : 1e9;
  return one * (1.0 + cm->cpu_tok_frac * (cnt > 1 ? cnt - 1 : 0));
}

double cost_gpu_s(const struct cost_model *cm, uint64_t copy_bytes, int cnt) {
  const double copy = cm->h2d_gbps > 0 ? (double)copy_bytes / (cm->h2d_gbps * 1e9) : 0;
  return copy + cm->gpu_s * (1.0 + cm->gpu_tok_frac * (cnt > 1 ? cnt - 1 : 0));
}

enum expert_side cost_decide(const struct cost_model *cm, uint64_t bytes, int cnt, double *cpu_busy,
                             double *gpu_busy) {
  const double c = cost_cpu_s(cm, bytes, cnt), g = cost_gpu_s(cm, bytes, cnt);
  enum expert_side side;
  if (cm->policy == EXPERT_CPU)
    side = SIDE_CPU;
  else if (cm->policy == EXPERT_GPU)
    side = SIDE_GPU;
  else
    side = *cpu_busy + c <= *gpu_busy + g ? SIDE_CPU : SIDE_GPU;
  if (side == SIDE_CPU)
    *cpu_busy += c;
  else
    *gpu_busy += g;
  return side;
}
