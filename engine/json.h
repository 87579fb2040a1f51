// engine/json.h: a minimal streaming JSON writer for --json outputs (comma and nesting
// bookkeeping, string escaping). Writes to a FILE the caller owns.
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "base/files.h"

struct jw {
  FILE *f;
  struct ferry_outfile out; // jw_open: the temporary file behind f
  int depth;
  bool first[32]; // no element written yet at this depth
  bool after_key;
};

void jw_init(struct jw *w, FILE *f);
// Opens a --json report for path (0, or -errno with the message set) and closes it with a
// final newline. The report is written to a temporary file beside path and renamed over it
// by jw_close only if every write succeeded, so path is never left truncated or half
// written; a path that exists and is not a regular file is refused (base/files.h).
// jw_abort drops an opened report.
int jw_open(struct jw *w, const char *path);
int jw_close(struct jw *w, const char *path);
void jw_abort(struct jw *w);
// [{"id", "logprob"} x k], the top-K list of --logprobs and ferry score.
void jw_top(struct jw *w, const int32_t *ids, const double *logprobs, int k);
void jw_obj(struct jw *w);     // {
void jw_obj_end(struct jw *w); // }
void jw_arr(struct jw *w);     // [
void jw_arr_end(struct jw *w); // ]
void jw_key(struct jw *w, const char *k);
void jw_str(struct jw *w, const char *s);
void jw_strn(struct jw *w, const char *s, size_t n);
void jw_int(struct jw *w, int64_t v);
void jw_uint(struct jw *w, uint64_t v);
void jw_num(struct jw *w, double v); // non-finite -> null
void jw_bool(struct jw *w, bool v);
void jw_null(struct jw *w);
