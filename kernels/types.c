// kernels/types.c: the type table.
#include "kernels/types.h"

#include <strings.h>

static const struct ferry_type_info k_types[FT_COUNT] = {
    [FT_F32] = {"f32", 1, 4, true},       [FT_F16] = {"f16", 1, 2, true},
    [FT_Q4_0] = {"q4_0", 32, 18, true},   [FT_Q8_0] = {"q8_0", 32, 34, true},
    [FT_Q2_K] = {"q2_K", 256, 84, true},  [FT_Q3_K] = {"q3_K", 256, 110, true},
    [FT_Q4_K] = {"q4_K", 256, 144, true}, [FT_Q5_K] = {"q5_K", 256, 176, true},
    [FT_Q6_K] = {"q6_K", 256, 210, true}, [FT_Q8_K] = {"q8_K", 256, 292, false},
    [FT_BF16] = {"bf16", 1, 2, true},
};

const struct ferry_type_info *ferry_type_info(uint32_t type) {
  if (type >= FT_COUNT || !k_types[type].name) return NULL;
  return &k_types[type];
}

int ferry_type_from_name(const char *s) {
  for (int i = 0; i < FT_COUNT; i++)
    if (k_types[i].name && !strcasecmp(k_types[i].name, s)) return i;
  return -1;
}
