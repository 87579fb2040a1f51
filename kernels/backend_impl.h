// kernels/backend_impl.h: private glue between kernels/backend.c (creation, introspection)
// and the per-kind op tables (backend_cpu.c: "cpu" and "ref"; backend_cuda.c: "cuda").
// Not included outside kernels/.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

extern const struct ferry_backend_ops ferry_cpu_ops, ferry_ref_ops, ferry_sim_ops;
enum cpu_flavour { CPU_FAST, CPU_REF, CPU_SIM };
// Fills be (name, kind, ops, impl) for "cpu", "ref" or "sim". pool is borrowed.
int cpu_backend_init(struct ferry_backend *be, struct ferry_pool *pool, enum cpu_flavour fl);
void cpu_backend_describe_sim(const struct ferry_backend *be, char *buf, size_t n);
void cpu_backend_fini(struct ferry_backend *be);
uint64_t cpu_backend_scratch_bytes(const struct ferry_limits *lim, int n_workers);
uint64_t cpu_backend_reserved(const struct ferry_backend *be);
struct ferry_pool *cpu_backend_pool(const struct ferry_backend *be);

#ifdef FERRY_HAVE_CUDA
extern const struct ferry_backend_ops ferry_cuda_ops;
int cuda_backend_init(struct ferry_backend *be, int device);
void cuda_backend_fini(struct ferry_backend *be);
uint64_t cuda_backend_scratch_bytes(const struct ferry_limits *lim);
uint64_t cuda_backend_reserved(const struct ferry_backend *be);
void cuda_backend_describe(const struct ferry_backend *be, char *buf, size_t n);
#endif
