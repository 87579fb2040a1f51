// kernels/cuda/runtime.cu: device discovery, the context (cuBLAS handle + matmul scratch),
// device/pinned memory, asynchronous copies, streams and events. Thin wrappers: their job
// is to turn CUDA errors into ferry errors that name the failing call.
#include "kernels/cuda/common.cuh"

#include <stdio.h>

extern "C" int cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError(); // no driver / no device: clear the sticky error, report 0
    return 0;
  }
  return n;
}

extern "C" int cuda_ctx_create(struct cuda_ctx **out, int device) {
  *out = NULL;
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
  // Tensor-core math with F32 accumulation is what GemmEx with COMPUTE_32F asks for.
  cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH);
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) == cudaSuccess)
    snprintf(ctx->desc, sizeof ctx->desc, "%.120s (sm_%d%d, %.1f GiB)", prop.name, prop.major,
             prop.minor, (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
  else
    snprintf(ctx->desc, sizeof ctx->desc, "CUDA device %d", device);
  *out = ctx;
  return 0;
}

extern "C" void cuda_ctx_destroy(struct cuda_ctx *ctx) {
  if (!ctx) return;
  cudaDeviceSynchronize();
  for (int i = 0; i < CUDA_SCRATCH_COUNT; i++) cudaFree(ctx->d_scratch[i]);
  cublasDestroy(ctx->blas);
  free(ctx);
}

extern "C" void cuda_ctx_describe(const struct cuda_ctx *ctx, char *buf, size_t n) {
  snprintf(buf, n, "%s", ctx ? ctx->desc : "no CUDA context");
}

int cuda_ctx_scratch(struct cuda_ctx *ctx, enum cuda_scratch which, size_t bytes, void *stream,
                     void **out) {
  if (ctx->scratch_bytes[which] < bytes) {
    CUDA_CHECK(cudaStreamSynchronize((cudaStream_t)stream));
    cudaFree(ctx->d_scratch[which]);
    ctx->d_scratch[which] = NULL;
    ctx->scratch_bytes[which] = 0;
    // Round up so that slowly growing requests do not reallocate every call.
    const size_t want = (bytes + (size_t)(4u << 20) - 1) / (4u << 20) * (4u << 20);
    CUDA_CHECK(cudaMalloc(&ctx->d_scratch[which], want));
    ctx->scratch_bytes[which] = want;
  }
  *out = ctx->d_scratch[which];
  return 0;
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
