// engine/gguf.c: GGUF v3 parser. The header region is read through a small buffered
// cursor over pread; every length is checked against the bytes that remain in the file
// before anything is allocated, so a malformed file costs at most its own size in memory.
#include "engine/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "kernels/types.h"

#define GGUF_MAGIC             0x46554747u
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS          4
#define GGUF_MAX_DEPTH         8 // nested arrays

struct gguf_file {
  char *path;
  int fd;
  uint64_t size;
  uint32_t version;
  uint64_t alignment;
  uint64_t data_offset;
  int64_t n_kv, n_tensors;
  struct gguf_kv *kv;
  struct gguf_tensor *tensors;
  int64_t *hash; // open addressing over tensor indices, size hash_cap
  uint64_t hash_cap;
};

// ---- buffered cursor ------------------------------------------------------------------
struct cursor {
  struct gguf_file *f;
  uint64_t pos; // file offset of the next byte
  uint8_t buf[1 << 16];
  uint64_t buf_off, buf_len;
};

static int cur_fail(struct cursor *c, const char *what) {
  return ferry_fail(-EINVAL, "%s: %s (at offset %llu)", c->f->path, what,
                    (unsigned long long)c->pos);
}

static int cur_read(struct cursor *c, void *dst, uint64_t n, const char *what) {
  if (n > c->f->size || c->pos > c->f->size - n) {
    char m[256];
    snprintf(m, sizeof m, "file is truncated: %s needs %llu bytes, %llu remain", what,
             (unsigned long long)n,
             (unsigned long long)(c->f->size - (c->pos < c->f->size ? c->pos : c->f->size)));
    return cur_fail(c, m);
  }
  uint8_t *d = dst;
  while (n) {
    if (c->pos >= c->buf_off && c->pos < c->buf_off + c->buf_len) {
      uint64_t k = c->buf_off + c->buf_len - c->pos;
      if (k > n) k = n;
      memcpy(d, c->buf + (c->pos - c->buf_off), k);
      d += k, n -= k, c->pos += k;
      continue;
    }
    ssize_t r = pread(c->f->fd, c->buf, sizeof c->buf, (off_t)c->pos);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ferry_fail(-errno, "%s: read error at offset %llu: %s", c->f->path,
                        (unsigned long long)c->pos, strerror(errno));
    }
    if (r == 0) return cur_fail(c, "unexpected end of file");
    c->buf_off = c->pos, c->buf_len = (uint64_t)r;
  }
  return 0;
}

static uint64_t remaining(const struct cursor *c) {
  return c->pos < c->f->size ? c->f->size - c->pos : 0;
}

static int cur_u32(struct cursor *c, uint32_t *v, const char *what) {
  return cur_read(c, v, 4, what);
}
static int cur_u64(struct cursor *c, uint64_t *v, const char *what) {
  return cur_read(c, v, 8, what);
}

static int cur_str(struct cursor *c, struct gguf_str *s, const char *what) {
  uint64_t len;
  int rc = cur_u64(c, &len, what);
  if (rc) return rc;
  if (len > remaining(c)) {
    char m[200];
    snprintf(m, sizeof m, "%s: string length %llu exceeds the %llu bytes left in the file", what,
             (unsigned long long)len, (unsigned long long)remaining(c));
    c->pos -= 8;
    return cur_fail(c, m);
  }
  s->len = len;
  s->data = malloc(len + 1);
  if (!s->data) return ferry_fail(-ENOMEM, "out of memory reading %s", what);
  rc = cur_read(c, s->data, len, what);
  if (rc) {
    free(s->data);
    s->data = NULL;
    return rc;
  }
  s->data[len] = 0;
  return 0;
}

uint64_t gguf_vtype_size(uint32_t t) {
  switch (t) {
    case GGUF_U8:
    case GGUF_I8:
    case GGUF_BOOL: return 1;
    case GGUF_U16:
    case GGUF_I16: return 2;
    case GGUF_U32:
    case GGUF_I32:
    case GGUF_F32: return 4;
    case GGUF_U64:
    case GGUF_I64:
    case GGUF_F64: return 8;
    default: return 0;
  }
}

static const char *const k_vtype_names[GGUF_VTYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
const char *gguf_vtype_name(uint32_t t) { return t < GGUF_VTYPE_COUNT ? k_vtype_names[t] : "?"; }

static void decode_scalar(struct gguf_kv *kv, uint32_t t, const uint8_t *p) {
  switch (t) {
    case GGUF_U8:
    case GGUF_BOOL: kv->v.u64 = p[0]; break;
    case GGUF_I8: kv->v.i64 = (int8_t)p[0]; break;
    case GGUF_U16: {
      uint16_t x;
      memcpy(&x, p, 2);
      kv->v.u64 = x;
    } break;
    case GGUF_I16: {
      int16_t x;
      memcpy(&x, p, 2);
      kv->v.i64 = x;
    } break;
    case GGUF_U32: {
      uint32_t x;
      memcpy(&x, p, 4);
      kv->v.u64 = x;
    } break;
    case GGUF_I32: {
      int32_t x;
      memcpy(&x, p, 4);
      kv->v.i64 = x;
    } break;
    case GGUF_F32: {
      float x;
      memcpy(&x, p, 4);
      kv->v.f64 = x;
    } break;
    case GGUF_U64: {
      uint64_t x;
      memcpy(&x, p, 8);
      kv->v.u64 = x;
    } break;
    case GGUF_I64: {
      int64_t x;
      memcpy(&x, p, 8);
      kv->v.i64 = x;
    } break;
    case GGUF_F64: {
      double x;
      memcpy(&x, p, 8);
      kv->v.f64 = x;
    } break;
  }
}

// Skips (or stores, when kv != NULL at depth 0) an array body.
static int read_array(struct cursor *c, struct gguf_kv *kv, int depth) {
  uint32_t et;
  uint64_t n;
  int rc;
  if (depth > GGUF_MAX_DEPTH) return cur_fail(c, "arrays nested too deeply");
  if ((rc = cur_u32(c, &et, "array element type"))) return rc;
  if (et >= GGUF_VTYPE_COUNT) {
    char m[64];
    snprintf(m, sizeof m, "unknown array element type %u", et);
    c->pos -= 4;
    return cur_fail(c, m);
  }
  if ((rc = cur_u64(c, &n, "array length"))) return rc;
  // Every element takes at least one byte (strings at least 8), so a count larger than the
  // rest of the file is malformed before anything is allocated.
  uint64_t min_el = et == GGUF_STRING ? 8 : et == GGUF_ARRAY ? 12 : gguf_vtype_size(et);
  if (n > remaining(c) / min_el) {
    char m[160];
    snprintf(m, sizeof m, "array length %llu is larger than the file allows",
             (unsigned long long)n);
    c->pos -= 8;
    return cur_fail(c, m);
  }
  if (kv) kv->arr_type = et, kv->arr_n = n;
  if (et == GGUF_STRING) {
    struct gguf_str *a = NULL;
    if (kv) {
      a = calloc(n ? n : 1, sizeof *a);
      if (!a)
        return ferry_fail(-ENOMEM, "out of memory for a string array of %llu",
                          (unsigned long long)n);
      kv->arr = a;
    }
    for (uint64_t i = 0; i < n; i++) {
      struct gguf_str s;
      if ((rc = cur_str(c, &s, "array string"))) return rc;
      if (a)
        a[i] = s;
      else
        free(s.data);
    }
  } else if (et == GGUF_ARRAY) {
    for (uint64_t i = 0; i < n; i++)
      if ((rc = read_array(c, NULL, depth + 1))) return rc;
  } else {
    uint64_t bytes = n * min_el;
    if (kv) {
      kv->arr = malloc(bytes ? bytes : 1);
      if (!kv->arr)
        return ferry_fail(-ENOMEM, "out of memory for an array of %llu bytes",
                          (unsigned long long)bytes);
      if ((rc = cur_read(c, kv->arr, bytes, "array data"))) return rc;
      if (et == GGUF_BOOL)
        for (uint64_t i = 0; i < n; i++)
          if (((uint8_t *)kv->arr)[i] > 1) return cur_fail(c, "bool array element is not 0 or 1");
    } else {
      if (bytes > remaining(c)) return cur_fail(c, "file is truncated inside an array");
      c->pos += bytes;
    }
  }
  return 0;
}

static int read_kv(struct cursor *c, struct gguf_kv *kv) {
  int rc;
  struct gguf_str key;
  kv->file_off = c->pos;
  if ((rc = cur_str(c, &key, "metadata key"))) return rc;
  kv->key = key.data;
  if (key.len == 0) return cur_fail(c, "empty metadata key");
  if ((rc = cur_u32(c, &kv->type, "metadata value type"))) return rc;
  if (kv->type >= GGUF_VTYPE_COUNT) {
    char m[300];
    snprintf(m, sizeof m, "metadata key '%.200s' has unknown value type %u", kv->key, kv->type);
    c->pos -= 4;
    return cur_fail(c, m);
  }
  if (kv->type == GGUF_STRING) return cur_str(c, &kv->str, "metadata string");
  if (kv->type == GGUF_ARRAY) return read_array(c, kv, 0);
  uint8_t b[8];
  uint64_t sz = gguf_vtype_size(kv->type);
  if ((rc = cur_read(c, b, sz, "metadata value"))) return rc;
  if (kv->type == GGUF_BOOL && b[0] > 1) return cur_fail(c, "bool value is not 0 or 1");
  decode_scalar(kv, kv->type, b);
  return 0;
}

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  while (*s) h = (h ^ (uint8_t)*s++) * 1099511628211ULL;
  return h;
}

static int read_tensor_info(struct cursor *c, struct gguf_tensor *t) {
  int rc;
  struct gguf_str name;
  uint64_t at = c->pos;
  if ((rc = cur_str(c, &name, "tensor name"))) return rc;
  t->name = name.data;
  if (name.len == 0 || strlen(name.data) != name.len)
    return cur_fail(c, "tensor name is empty or contains NUL");
  if ((rc = cur_u32(c, &t->n_dims, "tensor dimension count"))) return rc;
  if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS) {
    char m[300];
    snprintf(m, sizeof m, "tensor '%.200s' has %u dimensions (1..4 allowed)", t->name, t->n_dims);
    return cur_fail(c, m);
  }
  for (int i = 0; i < 4; i++) t->ne[i] = 1;
  for (uint32_t i = 0; i < t->n_dims; i++)
    if ((rc = cur_u64(c, &t->ne[i], "tensor dimension"))) return rc;
  if ((rc = cur_u32(c, &t->type, "tensor type"))) return rc;
  if ((rc = cur_u64(c, &t->offset, "tensor offset"))) return rc;
  char m[400];
  const struct ferry_type_info *ti = ferry_type_info(t->type);
  if (!ti || !ti->weight) {
    snprintf(m, sizeof m,
             "tensor '%.200s' has unsupported type %u (ferry reads f32, f16, bf16, q4_0, q8_0, "
             "q2_K..q6_K)",
             t->name, t->type);
    c->pos = at;
    return cur_fail(c, m);
  }
  uint64_t nel = 1;
  for (int i = 0; i < 4; i++) {
    if (t->ne[i] == 0 || ferry_mul_u64(nel, t->ne[i], &nel) || nel > (1ULL << 48)) {
      snprintf(m, sizeof m, "tensor '%.200s' has invalid dimensions (zero or overflowing)",
               t->name);
      c->pos = at;
      return cur_fail(c, m);
    }
  }
  if (t->ne[0] % ti->blck) {
    snprintf(m, sizeof m,
             "tensor '%.200s': row length %llu is not a multiple of the %s block size %u", t->name,
             (unsigned long long)t->ne[0], ti->name, ti->blck);
    c->pos = at;
    return cur_fail(c, m);
  }
  t->nb1 = ferry_row_bytes(ti, t->ne[0]);
  t->nb2 = t->nb1 * t->ne[1];
  t->nbytes = t->nb2 * t->ne[2] * t->ne[3]; // bounded by nel * 4 < 2^50
  return 0;
}

static void free_kv(struct gguf_kv *kv) {
  free(kv->key);
  free(kv->str.data);
  if (kv->type == GGUF_ARRAY && kv->arr_type == GGUF_STRING && kv->arr)
    for (uint64_t i = 0; i < kv->arr_n; i++) free(((struct gguf_str *)kv->arr)[i].data);
  free(kv->arr);
}

void gguf_close(struct gguf_file *f) {
  if (!f) return;
  for (int64_t i = 0; i < f->n_kv; i++) free_kv(&f->kv[i]);
  for (int64_t i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
  free(f->kv);
  free(f->tensors);
  free(f->hash);
  if (f->fd >= 0) close(f->fd);
  free(f->path);
  free(f);
}

int gguf_open(struct gguf_file **out, const char *path) {
  *out = NULL;
  struct gguf_file *f = calloc(1, sizeof *f);
  struct cursor *c = calloc(1, sizeof *c);
  int rc = 0;
  if (!f || !c) {
    free(f), free(c);
    return ferry_fail(-ENOMEM, "out of memory");
  }
  f->fd = -1;
  f->path = strdup(path);
  // O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; what is not a
  // regular file is refused right after. Reads of regular files ignore the flag.
  f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (f->fd < 0) {
    rc = ferry_fail(-errno, "%s: cannot open: %s", path, strerror(errno));
    goto fail;
  }
  struct stat st;
  if (fstat(f->fd, &st) || !S_ISREG(st.st_mode)) {
    rc = ferry_fail(-EINVAL, "%s: not a regular file", path);
    goto fail;
  }
  fcntl(f->fd, F_SETFL, fcntl(f->fd, F_GETFL) & ~O_NONBLOCK);
  f->size = (uint64_t)st.st_size;
  c->f = f;

  uint32_t magic;
  if ((rc = cur_u32(c, &magic, "magic"))) goto fail;
  if (magic != GGUF_MAGIC) {
    c->pos = 0;
    rc = cur_fail(c, "bad magic: not a GGUF file");
    goto fail;
  }
  if ((rc = cur_u32(c, &f->version, "version"))) goto fail;
  if (f->version != 3) {
    char m[96];
    snprintf(m, sizeof m, "unsupported GGUF version %u (ferry reads version 3)", f->version);
    c->pos = 4;
    rc = cur_fail(c, m);
    goto fail;
  }
  uint64_t n_tensors, n_kv;
  if ((rc = cur_u64(c, &n_tensors, "tensor count")) || (rc = cur_u64(c, &n_kv, "metadata count")))
    goto fail;
  // Each kv needs >= 8+1+4+1 bytes and each tensor info >= 8+1+4+8+4+8 bytes.
  if (n_kv > remaining(c) / 14 || n_tensors > remaining(c) / 33) {
    c->pos = 8;
    rc = cur_fail(c, "tensor or metadata count is larger than the file allows");
    goto fail;
  }
  f->kv = calloc(n_kv ? n_kv : 1, sizeof *f->kv);
  f->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *f->tensors);
  if (!f->kv || !f->tensors) {
    rc = ferry_fail(-ENOMEM, "out of memory");
    goto fail;
  }
  f->alignment = GGUF_DEFAULT_ALIGNMENT;
  for (uint64_t i = 0; i < n_kv; i++) {
    f->n_kv = (int64_t)i + 1;
    if ((rc = read_kv(c, &f->kv[i]))) goto fail;
    for (uint64_t j = 0; j < i; j++)
      if (!strcmp(f->kv[j].key, f->kv[i].key)) {
        char m[300];
        snprintf(m, sizeof m, "duplicate metadata key '%.200s'", f->kv[i].key);
        rc = cur_fail(c, m);
        goto fail;
      }
    if (!strcmp(f->kv[i].key, "general.alignment")) {
      const struct gguf_kv *kv = &f->kv[i];
      if (kv->type != GGUF_U32 || kv->v.u64 == 0 || (kv->v.u64 & (kv->v.u64 - 1))) {
        rc = cur_fail(c, "general.alignment must be a u32 power of two");
        goto fail;
      }
      f->alignment = kv->v.u64;
    }
  }
  f->hash_cap = 16;
  while (f->hash_cap < 2 * n_tensors) f->hash_cap *= 2;
  f->hash = malloc(f->hash_cap * sizeof *f->hash);
  if (!f->hash) {
    rc = ferry_fail(-ENOMEM, "out of memory");
    goto fail;
  }
  for (uint64_t i = 0; i < f->hash_cap; i++) f->hash[i] = -1;
  for (uint64_t i = 0; i < n_tensors; i++) {
    f->n_tensors = (int64_t)i + 1;
    struct gguf_tensor *t = &f->tensors[i];
    if ((rc = read_tensor_info(c, t))) goto fail;
    if (t->offset % f->alignment) {
      char m[300];
      snprintf(m, sizeof m, "tensor '%.200s' offset %llu is not a multiple of the alignment %llu",
               t->name, (unsigned long long)t->offset, (unsigned long long)f->alignment);
      rc = cur_fail(c, m);
      goto fail;
    }
    uint64_t h = hash_str(t->name) & (f->hash_cap - 1);
    while (f->hash[h] >= 0) {
      if (!strcmp(f->tensors[f->hash[h]].name, t->name)) {
        char m[300];
        snprintf(m, sizeof m, "duplicate tensor name '%.200s'", t->name);
        rc = cur_fail(c, m);
        goto fail;
      }
      h = (h + 1) & (f->hash_cap - 1);
    }
    f->hash[h] = (int64_t)i;
  }
  f->data_offset = ferry_align_up(c->pos, f->alignment);
  // Every tensor must lie inside the file, and no two may overlap.
  for (int64_t i = 0; i < f->n_tensors; i++) {
    struct gguf_tensor *t = &f->tensors[i];
    uint64_t end;
    if (ferry_add_u64(f->data_offset, t->offset, &t->abs_offset) ||
        ferry_add_u64(t->abs_offset, t->nbytes, &end) || end > f->size) {
      // the data-relative offset as stored: data_offset + offset may not fit in 64 bits
      rc = ferry_fail(-EINVAL,
                      "%s: tensor '%s' (%llu bytes at offset %llu of the data section, which "
                      "starts at %llu) extends past the end of the file (%llu bytes)",
                      path, t->name, (unsigned long long)t->nbytes, (unsigned long long)t->offset,
                      (unsigned long long)f->data_offset, (unsigned long long)f->size);
      goto fail;
    }
  }
  {
    // overlap check on tensors sorted by offset (insertion-free: index sort)
    int64_t n = f->n_tensors;
    int64_t *idx = malloc((n ? n : 1) * sizeof *idx);
    if (!idx) {
      rc = ferry_fail(-ENOMEM, "out of memory");
      goto fail;
    }
    for (int64_t i = 0; i < n; i++) idx[i] = i;
    // shell sort by offset: n is at most a few thousand
    for (int64_t gap = n / 2; gap > 0; gap /= 2)
      for (int64_t i = gap; i < n; i++)
        for (int64_t j = i; j >= gap && f->tensors[idx[j - gap]].offset > f->tensors[idx[j]].offset;
             j -= gap) {
          int64_t tmp = idx[j];
          idx[j] = idx[j - gap], idx[j - gap] = tmp;
        }
    for (int64_t i = 1; i < n; i++) {
      const struct gguf_tensor *a = &f->tensors[idx[i - 1]], *b = &f->tensors[idx[i]];
      if (a->offset + a->nbytes > b->offset) {
        rc = ferry_fail(-EINVAL, "%s: tensors '%s' and '%s' overlap (at offset %llu)", path,
                        a->name, b->name, (unsigned long long)b->abs_offset);
        free(idx);
        goto fail;
      }
    }
    free(idx);
  }
  free(c);
  *out = f;
  return 0;
fail:
  free(c);
  gguf_close(f);
  return rc;
}

const char *gguf_path(const struct gguf_file *f) { return f->path; }
int gguf_fd(const struct gguf_file *f) { return f->fd; }
uint64_t gguf_file_size(const struct gguf_file *f) { return f->size; }
uint32_t gguf_version(const struct gguf_file *f) { return f->version; }
uint64_t gguf_alignment(const struct gguf_file *f) { return f->alignment; }
uint64_t gguf_data_offset(const struct gguf_file *f) { return f->data_offset; }
int64_t gguf_n_kv(const struct gguf_file *f) { return f->n_kv; }
const struct gguf_kv *gguf_kv_at(const struct gguf_file *f, int64_t i) {
  return i >= 0 && i < f->n_kv ? &f->kv[i] : NULL;
}
const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key) {
  for (int64_t i = 0; i < f->n_kv; i++)
    if (!strcmp(f->kv[i].key, key)) return &f->kv[i];
  return NULL;
}

static bool is_int(uint32_t t) {
  return t == GGUF_U8 || t == GGUF_I8 || t == GGUF_U16 || t == GGUF_I16 || t == GGUF_U32 ||
         t == GGUF_I32 || t == GGUF_U64 || t == GGUF_I64;
}
static bool is_signed(uint32_t t) {
  return t == GGUF_I8 || t == GGUF_I16 || t == GGUF_I32 || t == GGUF_I64;
}

int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *out) {
  const struct gguf_kv *kv = gguf_find_kv(f, key);
  if (!kv) return -ENOENT;
  if (!is_int(kv->type))
    return ferry_fail(-EINVAL, "%s: metadata '%s' is %s, expected an integer", f->path, key,
                      gguf_vtype_name(kv->type));
  if (is_signed(kv->type) && kv->v.i64 < 0)
    return ferry_fail(-EINVAL, "%s: metadata '%s' is negative (%lld)", f->path, key,
                      (long long)kv->v.i64);
  *out = kv->v.u64;
  return 0;
}

int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out) {
  uint64_t v;
  int rc = gguf_get_u64(f, key, &v);
  if (rc) return rc;
  if (v > UINT32_MAX)
    return ferry_fail(-EINVAL, "%s: metadata '%s' = %llu is out of range", f->path, key,
                      (unsigned long long)v);
  *out = (uint32_t)v;
  return 0;
}

int gguf_get_f32(const struct gguf_file *f, const char *key, float *out) {
  const struct gguf_kv *kv = gguf_find_kv(f, key);
  if (!kv) return -ENOENT;
  if (kv->type == GGUF_F32 || kv->type == GGUF_F64)
    *out = (float)kv->v.f64;
  else if (is_int(kv->type))
    *out = is_signed(kv->type) ? (float)kv->v.i64 : (float)kv->v.u64;
  else
    return ferry_fail(-EINVAL, "%s: metadata '%s' is %s, expected a number", f->path, key,
                      gguf_vtype_name(kv->type));
  return 0;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out) {
  const struct gguf_kv *kv = gguf_find_kv(f, key);
  if (!kv) return -ENOENT;
  if (kv->type != GGUF_BOOL)
    return ferry_fail(-EINVAL, "%s: metadata '%s' is %s, expected bool", f->path, key,
                      gguf_vtype_name(kv->type));
  *out = kv->v.u64 != 0;
  return 0;
}

const char *gguf_get_str(const struct gguf_file *f, const char *key) {
  const struct gguf_kv *kv = gguf_find_kv(f, key);
  return kv && kv->type == GGUF_STRING ? kv->str.data : NULL;
}

const struct gguf_kv *gguf_get_arr(const struct gguf_file *f, const char *key, uint32_t elem_type) {
  const struct gguf_kv *kv = gguf_find_kv(f, key);
  return kv && kv->type == GGUF_ARRAY && kv->arr_type == elem_type && (kv->arr || kv->arr_n == 0)
             ? kv
             : NULL;
}

int64_t gguf_n_tensors(const struct gguf_file *f) { return f->n_tensors; }
const struct gguf_tensor *gguf_tensor_at(const struct gguf_file *f, int64_t i) {
  return i >= 0 && i < f->n_tensors ? &f->tensors[i] : NULL;
}
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name) {
  if (!f->hash) return NULL;
  uint64_t h = hash_str(name) & (f->hash_cap - 1);
  while (f->hash[h] >= 0) {
    if (!strcmp(f->tensors[f->hash[h]].name, name)) return &f->tensors[f->hash[h]];
    h = (h + 1) & (f->hash_cap - 1);
  }
  return NULL;
}

int gguf_pread(const struct gguf_file *f, void *buf, uint64_t len, uint64_t off) {
  uint8_t *p = buf;
  if (off > f->size || len > f->size - off)
    return ferry_fail(-EINVAL, "%s: read of %llu bytes at offset %llu is past the end of the file",
                      f->path, (unsigned long long)len, (unsigned long long)off);
  while (len) {
    size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
    ssize_t r = pread(f->fd, p, chunk, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ferry_fail(-errno, "%s: read error at offset %llu: %s", f->path,
                        (unsigned long long)off, strerror(errno));
    }
    if (r == 0)
      return ferry_fail(-EIO, "%s: unexpected end of file at offset %llu", f->path,
                        (unsigned long long)off);
    p += r, off += (uint64_t)r, len -= (uint64_t)r;
  }
  return 0;
}
