// kernels/cuda/runtime.cu: device discovery, the context (cuBLAS handle + the scratch of
// cuda_reserve), device/pinned memory, asynchronous copies, streams, events and graphs. Thin wrappers: their job
// is to turn CUDA errors into ferry errors that name the failing call.
#include "kernels/cuda/common.cuh"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include <stdio.h>

extern "C" int cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError(); // no driver / no device: clear the sticky error, report 0
    return 0;
  }
  return n;
}

struct cuda_blas_api g_blas;

#ifndef FERRY_CUBLAS_DIR
#define FERRY_CUBLAS_DIR ""
#endif

int cuda_blas_load(void) {
  static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  static int state; // 0 not tried, 1 loaded, -1 failed
  static char err[512];
  pthread_mutex_lock(&mu);
  if (!state) {
    // next to the CUDA toolkit ferry was built with, then wherever the loader finds it
    const char *cands[] = {FERRY_CUBLAS_DIR "/libcublas.so." FERRY_CUBLAS_MAJOR,
                           "libcublas.so." FERRY_CUBLAS_MAJOR, "libcublas.so"};
    void *h = NULL;
    for (size_t i = 0; i < sizeof cands / sizeof cands[0] && !h; i++)
      if (cands[i][0] != '/' || FERRY_CUBLAS_DIR[0]) h = dlopen(cands[i], RTLD_NOW | RTLD_LOCAL);
    state = -1;
    if (!h) {
      snprintf(err, sizeof err, "cuda: cannot load libcublas.so.%s (%s)", FERRY_CUBLAS_MAJOR,
               dlerror());
    } else {
      struct {
        void **fn;
        const char *name;
      } syms[] = {{(void **)&g_blas.create, "cublasCreate_v2"},
                  {(void **)&g_blas.destroy, "cublasDestroy_v2"},
                  {(void **)&g_blas.set_stream, "cublasSetStream_v2"},
                  {(void **)&g_blas.set_workspace, "cublasSetWorkspace_v2"},
                  {(void **)&g_blas.set_math_mode, "cublasSetMathMode"},
                  {(void **)&g_blas.sgemm, "cublasSgemm_v2"},
                  {(void **)&g_blas.gemm_ex, "cublasGemmEx"}};
      state = 1;
      for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++)
        if (!(*syms[i].fn = dlsym(h, syms[i].name))) {
          snprintf(err, sizeof err, "cuda: libcublas has no %s", syms[i].name);
          state = -1;
        }
    }
  }
  const int ok = state == 1;
  pthread_mutex_unlock(&mu);
  return ok ? 0 : ferry_fail(-ENODEV, "%s", err);
}

extern "C" int cuda_ctx_create(struct cuda_ctx **out, int device) {
  *out = NULL;
  if (int rc = cuda_blas_load()) return rc;
  const int n = cuda_device_count();
  if (n <= 0) return ferry_fail(-ENODEV, "cuda: no CUDA device present");
  if (device < 0 || device >= n)
    return ferry_fail(-ENODEV, "cuda: device %d out of range (%d present)", device, n);
  CUDA_CHECK(cudaSetDevice(device));
  struct cuda_ctx *ctx = (struct cuda_ctx *)calloc(1, sizeof(*ctx));
  if (!ctx) return ferry_fail(-ENOMEM, "cuda: out of host memory");
  ctx->device = device;
  if (cublasCreate(&ctx->blas) != CUBLAS_STATUS_SUCCESS) {
    free(ctx);
    return ferry_fail(-EIO, "cuda: cublasCreate failed on device %d", device);
  }
  // Default math: cublasSgemm stays F32 (no TF32), GemmEx with F16 inputs and
  // CUBLAS_COMPUTE_32F may use tensor cores with F32 accumulation.
  cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH);
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) {
    snprintf(ctx->desc, sizeof ctx->desc, "%.120s (sm_%d%d, %.1f GiB)", prop.name, prop.major,
             prop.minor, (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    ctx->n_sm = prop.multiProcessorCount;
  } else {
    (void)cudaGetLastError();
    snprintf(ctx->desc, sizeof ctx->desc, "CUDA device %d", device);
    ctx->n_sm = 1;
  }
  *out = ctx;
  return 0;
}

static void scratch_free(struct cuda_scratch *sc) {
  if (sc->base) cudaFree(sc->base);
  if (sc->h_base) cudaFreeHost(sc->h_base);
  free(sc->h_cnt);
  free(sc->h_groups);
  memset(sc, 0, sizeof *sc);
}

extern "C" void cuda_ctx_destroy(struct cuda_ctx *ctx) {
  if (!ctx) return;
  cudaDeviceSynchronize();
  scratch_free(&ctx->sc);
  cublasDestroy(ctx->blas);
  free(ctx);
}

extern "C" void cuda_ctx_describe(const struct cuda_ctx *ctx, char *buf, size_t n) {
  snprintf(buf, n, "%s", ctx ? ctx->desc : "no CUDA context");
}

// ---- scratch ----

static int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// Lays out the workspaces for lim. With base / h_base NULL it only counts (sc may be
// NULL). Returns the device bytes; *host_bytes gets the pinned host bytes.
static uint64_t scratch_layout(const struct ferry_limits *l, struct cuda_scratch *sc, uint8_t *base,
                               uint8_t *h_base, uint64_t *host_bytes) {
  struct cuda_scratch dummy;
  if (!sc) sc = &dummy;
  uint64_t off = 0, hoff = 0;
#define TAKE(ptr, type, nbytes)                                 \
  do {                                                          \
    const uint64_t b_ = ((uint64_t)(nbytes) + 255) / 256 * 256; \
    (ptr) = base ? (type)(void *)(base + off) : (type)NULL;     \
    off += b_;                                                  \
  } while (0)
#define HTAKE(ptr, nbytes)                                                 \
  do {                                                                     \
    const uint64_t b_ = ((uint64_t)(nbytes) + 63) / 64 * 64;               \
    (ptr) = h_base ? (int32_t *)(void *)(h_base + hoff) : (int32_t *)NULL; \
    hoff += b_;                                                            \
  } while (0)
  const int64_t B = imax(l->max_tok, 1);
  const bool gemm = B >= GEMM_MIN_ROWS;
  const bool moe = l->moe_k > 0 && l->moe_n_expert > 0 && l->moe_d > 0 && l->moe_ff > 0;
  const int64_t pairs = moe ? B * l->moe_k : 0;
  sc->pairs = pairs;
  sc->blas_ws_bytes = sc->wtile_bytes = sc->xconv_bytes = 0;
  sc->blas_ws = sc->wtile = sc->xconv = NULL;
  if (gemm) {
    sc->blas_ws_bytes = (size_t)32 << 20; // cuBLAS's recommendation for Hopper
    TAKE(sc->blas_ws, void *, sc->blas_ws_bytes);
    sc->wtile_bytes = (size_t)imax((int64_t)64 << 20, moe ? 2 * l->moe_ff * l->moe_d * 4 : 0);
    TAKE(sc->wtile, void *, sc->wtile_bytes);
    // matmul: max_tok rows of max_in; matmul_grouped: max_tok * moe_k rows of the expert
    // widths (moe_d, moe_ff)
    sc->xconv_bytes =
        (size_t)(imax(B * l->max_in, B * imax(l->moe_k, 1) * imax(l->moe_d, l->moe_ff)) * 4);
    TAKE(sc->xconv, void *, sc->xconv_bytes);
  }
  sc->moe_xg = sc->moe_hc = NULL;
  sc->moe_gu = sc->moe_h = NULL;
  sc->moe_rows = sc->h_ids = sc->h_rows = sc->h_map = NULL;
  if (moe) {
    TAKE(sc->moe_h, float *, pairs * l->moe_ff * 4);
    TAKE(sc->moe_gu, float *, pairs * 2 * l->moe_ff * 4);
    TAKE(sc->moe_rows, int32_t *, pairs * 4);
    if (gemm) {
      TAKE(sc->moe_xg, void *, pairs * l->moe_d * 4);
      TAKE(sc->moe_hc, void *, pairs * l->moe_ff * 4);
    }
    HTAKE(sc->h_ids, pairs * 4);
    HTAKE(sc->h_rows, pairs * 4);
    HTAKE(sc->h_map, pairs * 4);
  }
  sc->att_part = NULL;
  sc->att_splits = 0;
  if (l->n_ctx > 0 && l->n_head > 0 && l->head_dim > 0) {
    int64_t sp = (l->n_ctx + 127) / 128;
    sc->att_splits = (int)(sp < 1 ? 1 : sp > ATT_MAX_SPLITS ? ATT_MAX_SPLITS : sp);
    TAKE(sc->att_part, float *, l->n_head * sc->att_splits * (l->head_dim + 2) * 4);
  }
#undef TAKE
#undef HTAKE
  if (host_bytes) *host_bytes = hoff;
  return off;
}

extern "C" uint64_t cuda_scratch_bytes(const struct ferry_limits *lim) {
  return scratch_layout(lim, NULL, NULL, NULL, NULL);
}

extern "C" uint64_t cuda_reserved_bytes(const struct cuda_ctx *ctx) { return ctx->sc.bytes; }

// Field-by-field maximum of two limits (weight types united).
static struct ferry_limits limits_max(const struct ferry_limits *a, const struct ferry_limits *b) {
  struct ferry_limits m = *a;
#define MX(f) m.f = a->f > b->f ? a->f : b->f
  MX(n_threads);
  MX(max_tok);
  MX(max_in);
  MX(n_ctx);
  MX(n_head);
  MX(n_kv_head);
  MX(head_dim);
  MX(moe_d);
  MX(moe_ff);
  MX(moe_k);
  MX(moe_n_expert);
  MX(dn_hk);
  MX(dn_hv);
  MX(dn_dk);
  MX(dn_dv);
#undef MX
  m.weight_types = a->weight_types | b->weight_types;
  return m;
}

// Whether every field of b is within a (the scratch for a serves b).
static bool limits_covered(const struct ferry_limits *a, const struct ferry_limits *b) {
  return b->max_tok <= a->max_tok && b->max_in <= a->max_in && b->n_ctx <= a->n_ctx &&
         b->n_head <= a->n_head && b->n_kv_head <= a->n_kv_head && b->head_dim <= a->head_dim &&
         b->moe_d <= a->moe_d && b->moe_ff <= a->moe_ff && b->moe_k <= a->moe_k &&
         b->moe_n_expert <= a->moe_n_expert && b->dn_hk <= a->dn_hk && b->dn_hv <= a->dn_hv &&
         b->dn_dk <= a->dn_dk && b->dn_dv <= a->dn_dv && !(b->weight_types & ~a->weight_types);
}

extern "C" int cuda_reserve(struct cuda_ctx *ctx, const struct ferry_limits *lim) {
  if (ctx->sc.reserved && limits_covered(&ctx->sc.lim, lim)) return 0;
  const struct ferry_limits want = ctx->sc.reserved ? limits_max(&ctx->sc.lim, lim) : *lim;
  uint64_t hbytes = 0;
  const uint64_t bytes = scratch_layout(&want, NULL, NULL, NULL, &hbytes);
  CUDA_CHECK(cudaDeviceSynchronize()); // no op may still use the old scratch
  ctx->blas_set = false;
  // cublasSetStream puts cuBLAS back on its own workspace pool: it must not keep the one
  // freed below
  if (ctx->sc.blas_ws) CUBLAS_CHECK(cublasSetStream(ctx->blas, NULL));
  scratch_free(&ctx->sc);
  struct cuda_scratch sc;
  memset(&sc, 0, sizeof sc);
  void *d = NULL, *h = NULL;
  if (bytes) {
    cudaError_t e = cudaMalloc(&d, bytes);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      char b[32];
      ferry_format_size(bytes, b, sizeof b);
      return ferry_fail(-ENOMEM, "cuda reserve: cannot allocate %s of scratch: %s", b,
                        cudaGetErrorString(e));
    }
  }
  if (hbytes) {
    cudaError_t e = cudaHostAlloc(&h, hbytes, cudaHostAllocPortable);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      cudaFree(d);
      return ferry_fail(-ENOMEM, "cuda reserve: cannot pin %llu bytes: %s",
                        (unsigned long long)hbytes, cudaGetErrorString(e));
    }
  }
  scratch_layout(&want, &sc, (uint8_t *)d, (uint8_t *)h, NULL);
  sc.base = d;
  sc.h_base = h;
  sc.bytes = bytes;
  sc.lim = want;
  sc.reserved = true;
  if (sc.pairs > 0) {
    const int64_t E = want.moe_n_expert;
    sc.h_cnt = (int32_t *)calloc((size_t)(2 * (E + 1)), sizeof(int32_t));
    sc.h_groups = (struct ferry_moe_group *)calloc((size_t)E, sizeof(struct ferry_moe_group));
    if (!sc.h_cnt || !sc.h_groups) {
      ctx->sc = sc;
      scratch_free(&ctx->sc);
      return ferry_fail(-ENOMEM, "cuda reserve: out of host memory");
    }
    sc.h_off = sc.h_cnt + (E + 1);
  }
  ctx->sc = sc;
  ctx->blas_set = false; // cuda_gemm sets stream and workspace before the next product
  return 0;
}

// ---- graphs ----

extern "C" int cuda_graph_begin(void *stream) {
  if (!stream) return ferry_fail(-EINVAL, "cuda graph_begin: capture needs a non-NULL stream");
  CUDA_CHECK(cudaStreamBeginCapture((cudaStream_t)stream, cudaStreamCaptureModeThreadLocal));
  return 0;
}

extern "C" int cuda_graph_end(void *stream, void **out) {
  *out = NULL;
  if (!stream) return ferry_fail(-EINVAL, "cuda graph_end: no stream");
  cudaGraph_t g = NULL;
  CUDA_CHECK(cudaStreamEndCapture((cudaStream_t)stream, &g));
  cudaGraphExec_t ex = NULL;
  const cudaError_t e = cudaGraphInstantiate(&ex, g, 0);
  cudaGraphDestroy(g);
  CUDA_CHECK(e);
  *out = (void *)ex;
  return 0;
}

extern "C" int cuda_graph_launch(void *graph_exec, void *stream) {
  if (!graph_exec) return ferry_fail(-EINVAL, "cuda graph_launch: no graph");
  CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)graph_exec, (cudaStream_t)stream));
  return 0;
}

extern "C" void cuda_graph_destroy(void *graph_exec) {
  if (graph_exec) cudaGraphExecDestroy((cudaGraphExec_t)graph_exec);
}

extern "C" int cuda_stream_capturing(void *stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing((cudaStream_t)stream, &st));
  return st != cudaStreamCaptureStatusNone;
}

// ---- memory ----

extern "C" int cuda_malloc(void **d_out, size_t bytes) {
  *d_out = NULL;
  cudaError_t e = cudaMalloc(d_out, bytes ? bytes : 1);
  if (e != cudaSuccess) {
    (void)cudaGetLastError(); // not sticky: keep it from resurfacing at the next launch
    *d_out = NULL;
    char sz[32];
    ferry_format_size(bytes, sz, sizeof sz);
    return ferry_fail(e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO, "cudaMalloc(%s): %s", sz,
                      cudaGetErrorString(e));
  }
  return 0;
}

extern "C" void cuda_free(void *d) {
  if (d) cudaFree(d);
}

extern "C" int cuda_host_alloc(void **p_out, size_t bytes) {
  *p_out = NULL;
  cudaError_t e = cudaHostAlloc(p_out, bytes ? bytes : 1, cudaHostAllocPortable);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    *p_out = NULL;
    return ferry_fail(-ENOMEM, "cudaHostAlloc(%zu bytes): %s", bytes, cudaGetErrorString(e));
  }
  return 0;
}

extern "C" void cuda_host_free(void *p) {
  if (p) cudaFreeHost(p);
}

extern "C" int cuda_host_register(void *p, size_t bytes) {
  CUDA_CHECK(cudaHostRegister(p, bytes, cudaHostRegisterPortable));
  return 0;
}

extern "C" int cuda_host_unregister(void *p) {
  CUDA_CHECK(cudaHostUnregister(p));
  return 0;
}

extern "C" int cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
  CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
  return 0;
}

extern "C" int cuda_memcpy_h2d(void *d_dst, const void *h_src, size_t bytes, void *stream) {
  CUDA_CHECK(cudaMemcpyAsync(d_dst, h_src, bytes, cudaMemcpyHostToDevice, (cudaStream_t)stream));
  return 0;
}

extern "C" int cuda_memcpy_d2h(void *h_dst, const void *d_src, size_t bytes, void *stream) {
  CUDA_CHECK(cudaMemcpyAsync(h_dst, d_src, bytes, cudaMemcpyDeviceToHost, (cudaStream_t)stream));
  return 0;
}

extern "C" int cuda_memcpy_d2d(void *d_dst, const void *d_src, size_t bytes, void *stream) {
  CUDA_CHECK(cudaMemcpyAsync(d_dst, d_src, bytes, cudaMemcpyDeviceToDevice, (cudaStream_t)stream));
  return 0;
}

extern "C" int cuda_memset0(void *d_dst, size_t bytes, void *stream) {
  CUDA_CHECK(cudaMemsetAsync(d_dst, 0, bytes, (cudaStream_t)stream));
  return 0;
}

// ---- streams and events ----

extern "C" int cuda_stream_create(void **out) {
  cudaStream_t s = NULL;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  *out = (void *)s;
  return 0;
}

extern "C" void cuda_stream_destroy(void *stream) {
  if (stream) cudaStreamDestroy((cudaStream_t)stream);
}

extern "C" int cuda_stream_sync(void *stream) {
  CUDA_CHECK(cudaStreamSynchronize((cudaStream_t)stream));
  return 0;
}

extern "C" int cuda_event_create(void **out) {
  cudaEvent_t ev = NULL;
  CUDA_CHECK(cudaEventCreate(&ev));
  *out = (void *)ev;
  return 0;
}

extern "C" void cuda_event_destroy(void *ev) {
  if (ev) cudaEventDestroy((cudaEvent_t)ev);
}

extern "C" int cuda_event_record(void *ev, void *stream) {
  CUDA_CHECK(cudaEventRecord((cudaEvent_t)ev, (cudaStream_t)stream));
  return 0;
}

extern "C" int cuda_stream_wait_event(void *stream, void *ev) {
  CUDA_CHECK(cudaStreamWaitEvent((cudaStream_t)stream, (cudaEvent_t)ev, 0));
  return 0;
}

extern "C" int cuda_event_sync(void *ev) {
  CUDA_CHECK(cudaEventSynchronize((cudaEvent_t)ev));
  return 0;
}

extern "C" float cuda_event_elapsed_ms(void *start, void *end) {
  float ms = -1.0f;
  if (cudaEventElapsedTime(&ms, (cudaEvent_t)start, (cudaEvent_t)end) != cudaSuccess) {
    (void)cudaGetLastError();
    return -1.0f;
  }
  return ms;
}
