// engine/json.c: the JSON writer.
#include "engine/json.h"

#include "base/base.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

void jw_init(struct jw *w, FILE *f) {
  w->f = f;
  w->depth = 0;
  w->first[0] = true;
  w->after_key = false;
}

static void sep(struct jw *w) {
  if (w->after_key) {
    w->after_key = false;
    return;
  }
  if (!w->first[w->depth]) fputc(',', w->f);
  w->first[w->depth] = false;
}

static void open_(struct jw *w, char c) {
  sep(w);
  fputc(c, w->f);
  if (w->depth < 31) w->depth++;
  w->first[w->depth] = true;
}
void jw_obj(struct jw *w) { open_(w, '{'); }
void jw_arr(struct jw *w) { open_(w, '['); }
void jw_obj_end(struct jw *w) {
  w->depth--;
  fputc('}', w->f);
}
void jw_arr_end(struct jw *w) {
  w->depth--;
  fputc(']', w->f);
}

// JSON strings must be Unicode: bytes that are not valid UTF-8 (a model can emit any
// byte sequence) are written as U+FFFD, one per byte.
static void raw_str(FILE *f, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  fputc('"', f);
  for (size_t i = 0; i < n;) {
    unsigned char c = u[i];
    size_t len = ferry_utf8_seq(u + i, n - i);
    if (len == 0) {
      fputs("\\ufffd", f);
      i++;
      continue;
    }
    if (len > 1) {
      fwrite(u + i, 1, len, f);
      i += len;
      continue;
    }
    switch (c) {
      case '"': fputs("\\\"", f); break;
      case '\\': fputs("\\\\", f); break;
      case '\n': fputs("\\n", f); break;
      case '\r': fputs("\\r", f); break;
      case '\t': fputs("\\t", f); break;
      default:
        if (c < 0x20 || c == 0x7f)
          fprintf(f, "\\u%04x", c);
        else
          fputc(c, f);
    }
    i++;
  }
  fputc('"', f);
}

void jw_key(struct jw *w, const char *k) {
  sep(w);
  raw_str(w->f, k, strlen(k));
  fputc(':', w->f);
  w->after_key = true;
}
void jw_strn(struct jw *w, const char *s, size_t n) {
  sep(w);
  raw_str(w->f, s, n);
}
void jw_str(struct jw *w, const char *s) {
  if (!s) {
    jw_null(w);
    return;
  }
  jw_strn(w, s, strlen(s));
}
void jw_int(struct jw *w, int64_t v) {
  sep(w);
  fprintf(w->f, "%lld", (long long)v);
}
void jw_uint(struct jw *w, uint64_t v) {
  sep(w);
  fprintf(w->f, "%llu", (unsigned long long)v);
}
void jw_num(struct jw *w, double v) {
  sep(w);
  if (isfinite(v))
    fprintf(w->f, "%.9g", v);
  else
    fputs("null", w->f);
}
void jw_bool(struct jw *w, bool v) {
  sep(w);
  fputs(v ? "true" : "false", w->f);
}
void jw_null(struct jw *w) {
  sep(w);
  fputs("null", w->f);
}

int jw_open(struct jw *w, const char *path) {
  int rc = ferry_outfile_open(&w->out, path, 0, "--json file", NULL);
  if (rc) return rc;
  FILE *f = fdopen(w->out.fd, "w");
  if (!f) {
    rc = ferry_fail(-errno, "cannot write --json file '%s': %s", path, strerror(errno));
    ferry_outfile_discard(&w->out);
    return rc;
  }
  jw_init(w, f);
  return 0;
}

int jw_close(struct jw *w, const char *path) {
  fputc('\n', w->f);
  bool bad = fflush(w->f) != 0 || ferror(w->f);
  int err = bad ? errno : 0;
  if (!bad && fdatasync(fileno(w->f)) != 0 && errno != EINVAL && errno != EROFS)
    bad = true, err = errno;
  if (fclose(w->f) != 0 && !bad) bad = true, err = errno;
  w->f = NULL;
  w->out.fd = -1; // closed with the FILE
  if (bad) {
    int rc = ferry_fail(err ? -err : -EIO, "cannot write --json file '%s': %s", path,
                        err ? strerror(err) : "write error");
    ferry_outfile_discard(&w->out);
    return rc;
  }
  return ferry_outfile_commit(&w->out, "--json file");
}

void jw_abort(struct jw *w) {
  if (w->f) fclose(w->f);
  w->f = NULL;
  w->out.fd = -1;
  ferry_outfile_discard(&w->out);
}

void jw_top(struct jw *w, const int32_t *ids, const double *logprobs, int k) {
  jw_arr(w);
  for (int j = 0; j < k; j++) {
    jw_obj(w);
    jw_key(w, "id"), jw_int(w, ids[j]);
    jw_key(w, "logprob"), jw_num(w, logprobs[j]);
    jw_obj_end(w);
  }
  jw_arr_end(w);
}
