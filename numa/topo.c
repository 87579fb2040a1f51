// numa/topo.c: loads the hwloc topology once per process and summarises it for
// `ferry info`. One shared topology keeps the pool's core numbering and the summary in
// agreement and avoids re-probing sysfs (milliseconds) for every pool.
#include "numa/topo.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>

#include "base/base.h"
#include "numa/topo_internal.h"

static pthread_once_t g_topo_once = PTHREAD_ONCE_INIT;
static hwloc_topology_t g_topo;
static int g_topo_ok;

static void topo_load_once(void) {
  hwloc_topology_t t;
  if (hwloc_topology_init(&t) != 0) return;
  // Caches are filtered out on some builds unless asked for; we report L2/L3.
  hwloc_topology_set_cache_types_filter(t, HWLOC_TYPE_FILTER_KEEP_ALL);
  if (hwloc_topology_load(t) != 0) {
    hwloc_topology_destroy(t);
    return;
  }
  g_topo = t;
  g_topo_ok = 1;
}

hwloc_topology_t numa_topo_get(void) {
  pthread_once(&g_topo_once, topo_load_once);
  if (!g_topo_ok) {
    ferry_fail(-ENODEV, "hwloc could not load the machine topology");
    return NULL;
  }
  return g_topo;
}

int numa_topo_physical_cores(void) {
  hwloc_topology_t t = numa_topo_get();
  if (!t) return 1;
  int n = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
  if (n <= 0) n = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
  return n > 0 ? n : 1;
}

// Appends "Lk N x SIZE" for one cache level, with the sizes of the first object (caches
// of one level are uniform on the machines we target).
static int topo_describe_cache(hwloc_topology_t t, hwloc_obj_type_t type, const char *name,
                               char *buf, size_t n) {
  int cnt = hwloc_get_nbobjs_by_type(t, type);
  if (cnt <= 0) return snprintf(buf, n, ", no %s", name);
  hwloc_obj_t o = hwloc_get_obj_by_type(t, type, 0);
  char sz[32];
  ferry_format_size(o && o->attr ? o->attr->cache.size : 0, sz, sizeof sz);
  return snprintf(buf, n, ", %s %d x %s", name, cnt, sz);
}

int numa_topo_describe(char *buf, size_t n) {
  if (!buf || n == 0) return ferry_fail(-EINVAL, "numa_topo_describe: empty buffer");
  buf[0] = 0;
  hwloc_topology_t t = numa_topo_get();
  if (!t) return -ENODEV;
  int pk = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PACKAGE);
  int nn = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);
  int co = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
  int pu = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
  size_t off = 0;
  int w = snprintf(buf, n, "%d package%s, %d NUMA node%s, %d physical core%s, %d PU%s (SMT %d)", pk,
                   pk == 1 ? "" : "s", nn, nn == 1 ? "" : "s", co, co == 1 ? "" : "s", pu,
                   pu == 1 ? "" : "s", co > 0 ? pu / co : 1);
  if (w > 0) off = (size_t)w < n ? (size_t)w : n - 1;
  w = topo_describe_cache(t, HWLOC_OBJ_L2CACHE, "L2", buf + off, n - off);
  if (w > 0) off += (size_t)w < n - off ? (size_t)w : n - off - 1;
  topo_describe_cache(t, HWLOC_OBJ_L3CACHE, "L3", buf + off, n - off);
  return 0;
}
