// numa/topo.h: the machine's topology as ferry sees it (hwloc): packages, NUMA nodes,
// physical cores, PUs and caches, loaded once per process and shared by the thread pool.
// Also the per-worker affinity query the pool tests use. All functions are thread-safe.
#pragma once
#include <sched.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_pool;

// Writes a one-paragraph summary ("1 package, 1 NUMA node, 2 physical cores, 2 PUs;
// L2 2 x 1.00 MiB, L3 1 x 32.0 MiB") into buf (always NUL-terminated when n > 0,
// truncated if short). Loads the topology on first use. Returns 0 or a negative code
// (message set) when hwloc cannot load the topology.
int numa_topo_describe(char *buf, size_t n);

// Number of physical cores hwloc sees in this process's allowed cpuset (>= 1; 1 when the
// topology cannot be loaded). This is the pool's default worker count.
int numa_topo_physical_cores(void);

// The CPU set worker `tid` of pool p was pinned to (tid 0 = the thread that created the
// pool). Returns 0 and fills *out, -ENOENT if that worker is not pinned (binding failed or
// the topology is unavailable), -EINVAL for a bad tid or NULL pool.
int ferry_pool_worker_cpus(const struct ferry_pool *p, int tid, cpu_set_t *out);

#ifdef __cplusplus
}
#endif
