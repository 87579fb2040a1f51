// base: logging, error reporting, checked arithmetic and small helpers every module uses.
// Thread-safe: the error message is thread-local; logging is one fprintf per line.
#pragma once
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- logging (stderr; level from FERRY_LOG=error|warn|info|debug or ferry_log_set_level) ----
enum ferry_log_level { FERRY_LOG_ERROR = 0, FERRY_LOG_WARN, FERRY_LOG_INFO, FERRY_LOG_DEBUG };
void ferry_log_set_level(enum ferry_log_level lvl);
enum ferry_log_level ferry_log_get_level(void);
void ferry_log(enum ferry_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define log_error(...) ferry_log(FERRY_LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  ferry_log(FERRY_LOG_WARN, __VA_ARGS__)
#define log_info(...)  ferry_log(FERRY_LOG_INFO, __VA_ARGS__)
#define log_debug(...) ferry_log(FERRY_LOG_DEBUG, __VA_ARGS__)

// ---- errors ----
// Recoverable failures return a negative errno-style code and leave a one-line message
// (thread-local) that the caller may prefix with context and pass up; main() prints it.
int ferry_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Prepends "ctx: " to the current message; returns code unchanged.
int ferry_fail_ctx(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *ferry_errmsg(void);
void ferry_clear_error(void);

// Broken invariants abort with file:line, in every build type.
#define FERRY_ASSERT(c)                                  \
  do {                                                   \
    if (!(c)) ferry_assert_fail(__FILE__, __LINE__, #c); \
  } while (0)
#ifdef __cplusplus
[[noreturn]] void ferry_assert_fail(const char *file, int line, const char *expr);
#else
_Noreturn void ferry_assert_fail(const char *file, int line, const char *expr);
#endif

// ---- checked arithmetic (return 0 on success, -1 on overflow) ----
static inline int ferry_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
  return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}
static inline int ferry_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
  return __builtin_add_overflow(a, b, out) ? -1 : 0;
}
static inline uint64_t ferry_align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// ---- misc ----
double ferry_now_s(void); // monotonic seconds
// Parses "12G", "512M", "64k", "1.5G", "123" (bytes). Binary units (G = 2^30).
// Returns 0 on success, -EINVAL with a message on malformed input.
int ferry_parse_size(const char *s, uint64_t *out);
void ferry_format_size(uint64_t bytes, char *buf, size_t n); // "1.23 GiB"
uint64_t ferry_peak_rss_bytes(void);                         // VmHWM of this process
uint64_t ferry_rss_bytes(void);                              // VmRSS of this process
uint64_t ferry_mem_available_bytes(void); // min(MemAvailable, what the memory cgroup allows)
// Aligned allocation that never returns NULL silently: returns NULL and sets the error.
void *ferry_alloc_aligned(size_t align, size_t size);
void ferry_free_aligned(void *p);

// Splitmix/xoshiro-style deterministic RNG used by tests, synth and the sampler.
struct ferry_rng {
  uint64_t s[4];
};
void ferry_rng_seed(struct ferry_rng *r, uint64_t seed);
uint64_t ferry_rng_u64(struct ferry_rng *r);
float ferry_rng_uniform(struct ferry_rng *r); // [0,1)
float ferry_rng_normal(struct ferry_rng *r);  // N(0,1)

// UTF-8: length (1..4) of the valid sequence at s[0..n) (shortest form, no surrogates,
// <= U+10FFFF), or 0 if it is not one; and the offset of the first invalid byte (n if none).
size_t ferry_utf8_seq(const unsigned char *s, size_t n);
size_t ferry_utf8_invalid_at(const char *s, size_t n);

// f16 / bf16 conversions (IEEE round-to-nearest-even)
float ferry_f16_to_f32(uint16_t h);
uint16_t ferry_f32_to_f16(float f);
static inline float ferry_bf16_to_f32(uint16_t h) {
  union {
    uint32_t u;
    float f;
  } v = {.u = (uint32_t)h << 16};
  return v.f;
}
uint16_t ferry_f32_to_bf16(float f);

#ifdef __cplusplus
}
#endif
