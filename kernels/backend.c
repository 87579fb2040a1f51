// kernels/backend.c: creating backends and describing them; the op tables themselves are
// in backend_cpu.c ("cpu", "ref") and backend_cuda.c ("cuda", only with FERRY_HAVE_CUDA).
#include "kernels/backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "kernels/backend_impl.h"
#include "numa/pool.h"
#include "numa/topo.h"
#ifdef FERRY_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

const struct ferry_backend_ops *ferry_backend_ops_of(enum ferry_backend_kind kind) {
  if (kind == FERRY_BACKEND_CPU) return &ferry_cpu_ops;
  if (kind == FERRY_BACKEND_SIM) return &ferry_sim_ops;
#ifdef FERRY_HAVE_CUDA
  if (kind == FERRY_BACKEND_CUDA) return &ferry_cuda_ops;
#endif
  return NULL;
}

bool ferry_backend_has_op(const struct ferry_backend_ops *ops, enum ferry_op op) {
  switch (op) {
#define FERRY_OP_HAS_(E, f) \
  case FERRY_OP_##E: return ops->f != NULL;
    FERRY_OP_LIST(FERRY_OP_HAS_)
#undef FERRY_OP_HAS_
    default: return false;
  }
}

const char *ferry_op_name(enum ferry_op op) {
  switch (op) {
#define FERRY_OP_NAME_(E, f) \
  case FERRY_OP_##E: return #f;
    FERRY_OP_LIST(FERRY_OP_NAME_)
#undef FERRY_OP_NAME_
    default: return NULL;
  }
}

int ferry_backend_cuda_devices(void) {
#ifdef FERRY_HAVE_CUDA
  return cuda_device_count();
#else
  return 0;
#endif
}

int ferry_backend_create(struct ferry_backend **out, const char *name, struct ferry_pool *pool,
                         int device) {
  *out = NULL;
  enum { CPU, REF, SIM, CUDA } want;
  if (!strcmp(name, "cpu"))
    want = CPU;
  else if (!strcmp(name, "ref"))
    want = REF;
  else if (!strcmp(name, "sim"))
    want = SIM;
  else if (!strcmp(name, "cuda"))
    want = CUDA;
  else if (!strcmp(name, "auto"))
    want = ferry_backend_cuda_devices() > 0 ? CUDA : CPU;
  else
    return ferry_fail(-EINVAL, "unknown backend '%s' (auto, cpu, cuda or sim)", name);

  struct ferry_backend *be = calloc(1, sizeof(*be));
  if (!be) return ferry_fail(-ENOMEM, "backend: out of memory");
  int rc;
  if (want != CUDA) {
    rc = cpu_backend_init(be, pool, want == REF ? CPU_REF : want == SIM ? CPU_SIM : CPU_FAST);
  } else {
#ifdef FERRY_HAVE_CUDA
    rc = cuda_backend_init(be, device);
#else
    rc = ferry_fail(-ENODEV,
                    "cuda backend: ferry was built without CUDA (-DFERRY_CUDA=OFF "
                    "or nvcc not found)");
#endif
  }
  if (rc) {
    free(be);
    return rc;
  }
  *out = be;
  return 0;
}

void ferry_backend_destroy(struct ferry_backend *be) {
  if (!be) return;
#ifdef FERRY_HAVE_CUDA
  if (be->kind == FERRY_BACKEND_CUDA) cuda_backend_fini(be);
#endif
  if (be->kind != FERRY_BACKEND_CUDA) cpu_backend_fini(be);
  free(be);
}

struct ferry_pool *ferry_backend_pool(const struct ferry_backend *be) {
  return be && be->kind != FERRY_BACKEND_CUDA ? cpu_backend_pool(be) : NULL;
}

uint64_t ferry_backend_scratch_bytes(enum ferry_backend_kind kind, const struct ferry_limits *lim) {
  if (kind == FERRY_BACKEND_CPU || kind == FERRY_BACKEND_SIM) {
    int workers = lim->n_threads > 0 ? lim->n_threads : numa_topo_physical_cores();
    return cpu_backend_scratch_bytes(lim, workers > 0 ? workers : 1);
  }
#ifdef FERRY_HAVE_CUDA
  if (kind == FERRY_BACKEND_CUDA) return cuda_backend_scratch_bytes(lim);
#endif
  return 0;
}

uint64_t ferry_backend_reserved(const struct ferry_backend *be) {
#ifdef FERRY_HAVE_CUDA
  if (be->kind == FERRY_BACKEND_CUDA) return cuda_backend_reserved(be);
#endif
  return cpu_backend_reserved(be);
}

void ferry_backend_describe(const struct ferry_backend *be, char *buf, size_t n) {
#ifdef FERRY_HAVE_CUDA
  if (be->kind == FERRY_BACKEND_CUDA) {
    cuda_backend_describe(be, buf, n);
    return;
  }
#endif
  if (be->kind == FERRY_BACKEND_SIM) {
    cpu_backend_describe_sim(be, buf, n);
    return;
  }
  struct ferry_pool *pool = cpu_backend_pool(be);
  snprintf(buf, n, "CPU (%d physical cores, %d worker%s)%s", numa_topo_physical_cores(),
           pool ? ferry_pool_size(pool) : 1, pool && ferry_pool_size(pool) == 1 ? "" : "s",
           !strcmp(be->name, "ref") ? ", scalar references" : "");
}
