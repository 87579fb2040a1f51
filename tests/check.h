// tests/check.h: a tiny check header for ferry's test binaries. Exit codes: 0 pass,
// 1 fail, 77 skip (ctest SKIP_RETURN_CODE).
#pragma once
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int g_check_failures;
#define CHECK(c)                                                            \
  do {                                                                      \
    if (!(c)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); \
      g_check_failures++;                                                   \
    }                                                                       \
  } while (0)
#define CHECK_EQ(a, b)                                                                          \
  do {                                                                                          \
    long long _a = (long long)(a), _b = (long long)(b);                                         \
    if (_a != _b) {                                                                             \
      fprintf(stderr, "%s:%d: CHECK_EQ failed: %s = %lld, %s = %lld\n", __FILE__, __LINE__, #a, \
              _a, #b, _b);                                                                      \
      g_check_failures++;                                                                       \
    }                                                                                           \
  } while (0)
#define CHECK_NEAR(a, b, tol)                                                                 \
  do {                                                                                        \
    double _a = (double)(a), _b = (double)(b), _t = (double)(tol);                            \
    if (!(fabs(_a - _b) <= _t)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s = %.9g, %s = %.9g, tol %.3g\n", __FILE__, \
              __LINE__, #a, _a, #b, _b, _t);                                                  \
      g_check_failures++;                                                                     \
    }                                                                                         \
  } while (0)
#define SKIP(...)                          \
  do {                                     \
    fprintf(stderr, "SKIP: " __VA_ARGS__); \
    fprintf(stderr, "\n");                 \
    exit(77);                              \
  } while (0)
#define CHECK_DONE()                                             \
  do {                                                           \
    if (g_check_failures) {                                      \
      fprintf(stderr, "%d check(s) failed\n", g_check_failures); \
      return 1;                                                  \
    }                                                            \
    return 0;                                                    \
  } while (0)
