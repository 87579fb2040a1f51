// engine/model_info.h: the `ferry info` report.
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/gguf.h"

// Prints architecture, hyperparameters, tensors per type, dense vs routed-expert bytes and
// one expert's bytes per layer. ram/vram (0 = unset) add the placement plan; base is what
// a session charges for the process itself (session_baseline_bytes, measured by the caller
// before the file was parsed), included in the plan as a run would.
int model_info_print(const struct gguf_file *f, FILE *out, uint64_t ram, uint64_t vram, bool json,
                     uint64_t base);

// Bytes of routed experts (tensors named *_exps) and of everything else.
void model_info_split_bytes(const struct gguf_file *f, uint64_t *dense, uint64_t *experts);
