// numa/topo_internal.h: private to numa/: the shared, lazily loaded hwloc topology.
#pragma once
#include <hwloc.h>

// The process-wide topology (loaded once, never freed), or NULL if hwloc failed (the
// error message is set on that first failure). Read-only use after load is thread-safe.
hwloc_topology_t numa_topo_get(void);
