// engine/gguf_write.c: streaming GGUF v3 writer (see gguf_write.h). Metadata pairs are
// serialized into one growing byte buffer as they are added; tensor infos are kept as
// structs until begin_data serializes the header in one go. All output is copied into two
// 32 MiB page-aligned buffers that one background thread writes with pwrite, so the caller
// fills one buffer while the other goes to disk; the writer never holds a tensor. The file
// is opened with O_DIRECT when the filesystem allows it: buffered writes of multi-GB files
// are throttled by page-cache writeback to a fraction of what the device does (and evict
// the page cache the engine wants). The last partial buffer is padded to 4 KiB and the
// file truncated back to its real length.
#include "engine/gguf_write.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "base/files.h"
#include "kernels/types.h"

#define GW_MAGIC        0x46554747u
#define GW_VERSION      3u
#define GW_BUF_BYTES    ((size_t)32 << 20) // virtual disks want large requests
#define GW_DIRECT_ALIGN 4096

struct gw_tensor {
  char *name;
  uint32_t n_dims;
  uint64_t ne[4];
  uint32_t type;
  uint64_t offset; // relative to the data section
  uint64_t nbytes;
};

enum gw_state { GW_DECLARE, GW_DATA, GW_DONE, GW_FAILED };

struct gguf_writer {
  char *path;
  struct ferry_outfile out; // the temporary file, renamed over path by finish
  int fd;                   // out.fd while open
  uint32_t alignment;
  enum gw_state state;
  // serialized kv pairs
  uint8_t *meta;
  size_t meta_len, meta_cap;
  uint64_t n_kv;
  char **keys; // for the uniqueness check
  size_t keys_cap;
  // tensors
  struct gw_tensor *t;
  int64_t n_t, t_cap;
  uint64_t data_size; // next free (aligned) offset in the data section
  // streaming
  int64_t cur;
  uint64_t cur_done;
  uint64_t written; // bytes handed to the file (including buffered)
  bool direct;      // fd has O_DIRECT
  uint8_t *bufs[2]; // page-aligned; the caller fills bufs[fill]
  int fill;
  size_t buf_len;
  uint64_t file_off; // where bufs[fill] goes
  // background I/O: one job in flight at most; `job` stays set until its write is done,
  // so the other buffer is free whenever `job` is NULL.
  pthread_t io_th;
  bool io_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  const uint8_t *job;
  size_t job_len;
  uint64_t job_off;
  bool stop;
  int io_err;    // errno of the first failed pwrite (0: none)
  double wait_s; // time the caller spent waiting for the disk (reported at debug level)
};

static int gw_failed(struct gguf_writer *w, int code) {
  w->state = GW_FAILED;
  return code;
}

// ---- metadata serialization ----------------------------------------------------------
static int gw_meta_reserve(struct gguf_writer *w, size_t extra) {
  if (w->meta_len + extra <= w->meta_cap) return 0;
  size_t cap = w->meta_cap ? w->meta_cap : 4096;
  while (cap < w->meta_len + extra) cap *= 2;
  uint8_t *m = realloc(w->meta, cap);
  if (!m) return gw_failed(w, ferry_fail(-ENOMEM, "gguf writer: out of memory for metadata"));
  w->meta = m, w->meta_cap = cap;
  return 0;
}

static int gw_put(struct gguf_writer *w, const void *p, size_t n) {
  int rc = gw_meta_reserve(w, n);
  if (rc) return rc;
  memcpy(w->meta + w->meta_len, p, n);
  w->meta_len += n;
  return 0;
}
static int gw_put_u32(struct gguf_writer *w, uint32_t v) { return gw_put(w, &v, 4); }
static int gw_put_u64(struct gguf_writer *w, uint64_t v) { return gw_put(w, &v, 8); }
static int gw_put_str(struct gguf_writer *w, const char *s, uint64_t len) {
  int rc = gw_put_u64(w, len);
  return rc ? rc : gw_put(w, s, (size_t)len);
}

// Checks state and key, records the key and writes "key, type". The caller then writes
// the payload; a failure there poisons the writer (state FAILED), so no half pair is
// ever followed by another.
static int gw_begin_kv(struct gguf_writer *w, const char *key, uint32_t type) {
  if (w->state != GW_DECLARE)
    return ferry_fail(-EINVAL, "gguf writer: metadata '%s' added after the data started",
                      key ? key : "");
  if (!key || !*key) return ferry_fail(-EINVAL, "gguf writer: empty metadata key");
  for (uint64_t i = 0; i < w->n_kv; i++)
    if (!strcmp(w->keys[i], key))
      return ferry_fail(-EEXIST, "gguf writer: duplicate metadata key '%s'", key);
  if (w->n_kv == w->keys_cap) {
    size_t cap = w->keys_cap ? w->keys_cap * 2 : 64;
    char **k = realloc(w->keys, cap * sizeof *k);
    if (!k) return gw_failed(w, ferry_fail(-ENOMEM, "gguf writer: out of memory"));
    w->keys = k, w->keys_cap = cap;
  }
  char *dup = strdup(key);
  if (!dup) return gw_failed(w, ferry_fail(-ENOMEM, "gguf writer: out of memory"));
  w->keys[w->n_kv++] = dup;
  int rc = gw_put_str(w, key, strlen(key));
  if (!rc) rc = gw_put_u32(w, type);
  return rc;
}

int gguf_writer_add_scalar(struct gguf_writer *w, const char *key, enum gguf_vtype type,
                           const void *v) {
  if (type == GGUF_STRING) return gguf_writer_add_str(w, key, (const char *)v);
  size_t sz = (size_t)gguf_vtype_size(type);
  if (!sz)
    return ferry_fail(-EINVAL, "gguf writer: '%s': %s is not a scalar type", key,
                      gguf_vtype_name(type));
  int rc = gw_begin_kv(w, key, type);
  return rc ? rc : gw_put(w, v, sz);
}

#define GW_SCALAR_FN(name, ctype, vt)                                           \
  int gguf_writer_add_##name(struct gguf_writer *w, const char *key, ctype v) { \
    return gguf_writer_add_scalar(w, key, vt, &v);                              \
  }
GW_SCALAR_FN(u8, uint8_t, GGUF_U8)
GW_SCALAR_FN(i8, int8_t, GGUF_I8)
GW_SCALAR_FN(u16, uint16_t, GGUF_U16)
GW_SCALAR_FN(i16, int16_t, GGUF_I16)
GW_SCALAR_FN(u32, uint32_t, GGUF_U32)
GW_SCALAR_FN(i32, int32_t, GGUF_I32)
GW_SCALAR_FN(u64, uint64_t, GGUF_U64)
GW_SCALAR_FN(i64, int64_t, GGUF_I64)
GW_SCALAR_FN(f32, float, GGUF_F32)
GW_SCALAR_FN(f64, double, GGUF_F64)

int gguf_writer_add_bool(struct gguf_writer *w, const char *key, bool v) {
  uint8_t b = v ? 1 : 0;
  return gguf_writer_add_scalar(w, key, GGUF_BOOL, &b);
}

int gguf_writer_add_strn(struct gguf_writer *w, const char *key, const char *s, uint64_t len) {
  if (!s && len) return ferry_fail(-EINVAL, "gguf writer: '%s': NULL string", key ? key : "");
  int rc = gw_begin_kv(w, key, GGUF_STRING);
  return rc ? rc : gw_put_str(w, s ? s : "", len);
}

int gguf_writer_add_str(struct gguf_writer *w, const char *key, const char *s) {
  if (!s) return ferry_fail(-EINVAL, "gguf writer: '%s': NULL string", key ? key : "");
  return gguf_writer_add_strn(w, key, s, strlen(s));
}

int gguf_writer_add_array(struct gguf_writer *w, const char *key, enum gguf_vtype elem_type,
                          const void *data, uint64_t n) {
  size_t sz = (size_t)gguf_vtype_size(elem_type);
  if (!sz)
    return ferry_fail(-EINVAL, "gguf writer: '%s': arrays of %s need their own function",
                      key ? key : "", gguf_vtype_name(elem_type));
  uint64_t bytes;
  if (ferry_mul_u64(n, sz, &bytes) || bytes > ((uint64_t)1 << 40) || (n && !data))
    return ferry_fail(-EINVAL, "gguf writer: '%s': bad array (%llu elements)", key ? key : "",
                      (unsigned long long)n);
  int rc = gw_begin_kv(w, key, GGUF_ARRAY);
  if (!rc) rc = gw_put_u32(w, elem_type);
  if (!rc) rc = gw_put_u64(w, n);
  if (!rc) rc = gw_put(w, data, (size_t)bytes);
  return rc;
}

int gguf_writer_add_str_array(struct gguf_writer *w, const char *key, const char *const *strs,
                              const uint64_t *lens, uint64_t n) {
  if (n && !strs)
    return ferry_fail(-EINVAL, "gguf writer: '%s': NULL string array", key ? key : "");
  for (uint64_t i = 0; i < n; i++)
    if (!strs[i])
      return ferry_fail(-EINVAL, "gguf writer: '%s': string %llu is NULL", key ? key : "",
                        (unsigned long long)i);
  int rc = gw_begin_kv(w, key, GGUF_ARRAY);
  if (!rc) rc = gw_put_u32(w, GGUF_STRING);
  if (!rc) rc = gw_put_u64(w, n);
  for (uint64_t i = 0; !rc && i < n; i++)
    rc = gw_put_str(w, strs[i], lens ? lens[i] : strlen(strs[i]));
  return rc;
}

int gguf_writer_copy_kv(struct gguf_writer *w, const struct gguf_kv *kv) {
  if (!kv) return ferry_fail(-EINVAL, "gguf writer: NULL pair");
  if (kv->type == GGUF_STRING) return gguf_writer_add_strn(w, kv->key, kv->str.data, kv->str.len);
  if (kv->type != GGUF_ARRAY) {
    // The reader widened the value; narrow it back to the stored width (little-endian).
    uint8_t tmp[8];
    size_t sz = (size_t)gguf_vtype_size(kv->type);
    if (!sz) return ferry_fail(-EINVAL, "gguf writer: '%s': unknown type %u", kv->key, kv->type);
    if (kv->type == GGUF_F32) {
      float f = (float)kv->v.f64;
      memcpy(tmp, &f, 4);
    } else if (kv->type == GGUF_F64) {
      memcpy(tmp, &kv->v.f64, 8);
    } else {
      memcpy(tmp, &kv->v.u64, sz); // low bytes of a little-endian u64/i64
    }
    return gguf_writer_add_scalar(w, kv->key, kv->type, tmp);
  }
  if (kv->arr_type == GGUF_STRING) {
    const struct gguf_str *s = kv->arr;
    if (kv->arr_n && !s) return ferry_fail(-EINVAL, "gguf writer: '%s': array not loaded", kv->key);
    int rc = gw_begin_kv(w, kv->key, GGUF_ARRAY);
    if (!rc) rc = gw_put_u32(w, GGUF_STRING);
    if (!rc) rc = gw_put_u64(w, kv->arr_n);
    for (uint64_t i = 0; !rc && i < kv->arr_n; i++) rc = gw_put_str(w, s[i].data, s[i].len);
    return rc;
  }
  if (kv->arr_type == GGUF_ARRAY || (!kv->arr && kv->arr_n))
    return ferry_fail(-ENOTSUP, "gguf writer: '%s': nested arrays cannot be copied", kv->key);
  return gguf_writer_add_array(w, kv->key, kv->arr_type, kv->arr, kv->arr_n);
}

// ---- tensors -------------------------------------------------------------------------
int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, uint32_t n_dims,
                           const uint64_t *ne, uint32_t type) {
  if (w->state != GW_DECLARE)
    return ferry_fail(-EINVAL, "gguf writer: tensor '%s' added after the data started",
                      name ? name : "");
  if (!name || !*name || strlen(name) >= 64)
    return ferry_fail(-EINVAL, "gguf writer: tensor name '%s' is empty or longer than 63 bytes",
                      name ? name : "");
  if (n_dims < 1 || n_dims > 4)
    return ferry_fail(-EINVAL, "gguf writer: '%s': %u dims (1..4)", name, n_dims);
  const struct ferry_type_info *ti = ferry_type_info(type);
  if (!ti || !ti->weight)
    return ferry_fail(-EINVAL, "gguf writer: '%s': unsupported type %u", name, type);
  for (int64_t i = 0; i < w->n_t; i++)
    if (!strcmp(w->t[i].name, name))
      return ferry_fail(-EEXIST, "gguf writer: duplicate tensor '%s'", name);
  uint64_t n_el = 1;
  for (uint32_t d = 0; d < n_dims; d++)
    if (ne[d] == 0 || ferry_mul_u64(n_el, ne[d], &n_el))
      return ferry_fail(-EINVAL, "gguf writer: '%s': bad dimension ne[%u]", name, d);
  if (ne[0] % ti->blck)
    return ferry_fail(-EINVAL,
                      "gguf writer: '%s': ne[0] = %llu is not a multiple of the %s block (%u)",
                      name, (unsigned long long)ne[0], ti->name, ti->blck);
  uint64_t nbytes;
  if (ferry_mul_u64(n_el / ti->blck, ti->size, &nbytes) || nbytes > ((uint64_t)1 << 50))
    return ferry_fail(-EINVAL, "gguf writer: '%s': tensor too large", name);
  if (w->n_t == w->t_cap) {
    int64_t cap = w->t_cap ? w->t_cap * 2 : 256;
    struct gw_tensor *t = realloc(w->t, (size_t)cap * sizeof *t);
    if (!t) return gw_failed(w, ferry_fail(-ENOMEM, "gguf writer: out of memory"));
    w->t = t, w->t_cap = cap;
  }
  struct gw_tensor *t = &w->t[w->n_t];
  memset(t, 0, sizeof *t);
  t->name = strdup(name);
  if (!t->name) return gw_failed(w, ferry_fail(-ENOMEM, "gguf writer: out of memory"));
  t->n_dims = n_dims;
  for (int d = 0; d < 4; d++) t->ne[d] = d < (int)n_dims ? ne[d] : 1;
  t->type = type;
  t->offset = w->data_size;
  t->nbytes = nbytes;
  w->data_size = ferry_align_up(t->offset + nbytes, w->alignment);
  w->n_t++;
  return 0;
}

int64_t gguf_writer_n_tensors(const struct gguf_writer *w) { return w->n_t; }
uint64_t gguf_writer_tensor_nbytes(const struct gguf_writer *w, int64_t i) {
  return i >= 0 && i < w->n_t ? w->t[i].nbytes : 0;
}
int64_t gguf_writer_current(const struct gguf_writer *w) { return w->cur; }
uint64_t gguf_writer_bytes_written(const struct gguf_writer *w) { return w->written; }

// ---- file output ---------------------------------------------------------------------
static void *gw_io_main(void *arg) {
  struct gguf_writer *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->job && !w->stop) pthread_cond_wait(&w->cv, &w->mu);
    if (!w->job) break; // stop, nothing pending
    const uint8_t *b = w->job;
    size_t n = w->job_len;
    uint64_t off = w->job_off;
    int err = w->io_err;
    pthread_mutex_unlock(&w->mu);
    while (n && !err) {
      ssize_t r = pwrite(w->fd, b, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n, (off_t)off);
      if (r < 0) {
        if (errno == EINTR) continue;
        // Some filesystems accept O_DIRECT at open and refuse it at write: go buffered.
        if (errno == EINVAL && (fcntl(w->fd, F_GETFL) & O_DIRECT) &&
            fcntl(w->fd, F_SETFL, fcntl(w->fd, F_GETFL) & ~O_DIRECT) == 0)
          continue;
        err = errno;
      } else if (r == 0) {
        err = EIO;
      } else {
        b += r, n -= (size_t)r, off += (uint64_t)r;
      }
    }
    pthread_mutex_lock(&w->mu);
    if (err && !w->io_err) w->io_err = err;
    w->job = NULL;
    pthread_cond_broadcast(&w->cv);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

// Waits until no write is in flight; returns the I/O error, if any, as a failure.
static int gw_io_wait(struct gguf_writer *w) {
  pthread_mutex_lock(&w->mu);
  if (w->job) {
    double t0 = ferry_now_s();
    while (w->job) pthread_cond_wait(&w->cv, &w->mu);
    w->wait_s += ferry_now_s() - t0;
  }
  int err = w->io_err;
  pthread_mutex_unlock(&w->mu);
  if (err) return gw_failed(w, ferry_fail(-err, "%s: write failed: %s", w->out.tmp, strerror(err)));
  return 0;
}

// Hands bufs[fill] (len bytes, padded by the caller when direct) to the I/O thread and
// switches to the other buffer, whose previous write gw_io_wait has seen complete.
static int gw_submit(struct gguf_writer *w, size_t len) {
  int rc = gw_io_wait(w);
  if (rc) return rc;
  pthread_mutex_lock(&w->mu);
  w->job = w->bufs[w->fill];
  w->job_len = len;
  w->job_off = w->file_off;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  w->file_off += len;
  w->fill ^= 1;
  w->buf_len = 0;
  return 0;
}

static int gw_out(struct gguf_writer *w, const void *p, size_t n) {
  const uint8_t *b = p;
  w->written += n;
  while (n) {
    size_t k = GW_BUF_BYTES - w->buf_len;
    if (k > n) k = n;
    memcpy(w->bufs[w->fill] + w->buf_len, b, k);
    w->buf_len += k, b += k, n -= k;
    if (w->buf_len == GW_BUF_BYTES) {
      int rc = gw_submit(w, GW_BUF_BYTES);
      if (rc) return rc;
    }
  }
  return 0;
}

static int gw_out_zeros(struct gguf_writer *w, uint64_t n) {
  static const uint8_t zeros[256];
  while (n) {
    size_t k = n > sizeof zeros ? sizeof zeros : (size_t)n;
    int rc = gw_out(w, zeros, k);
    if (rc) return rc;
    n -= k;
  }
  return 0;
}

// Writes what is buffered and waits for all writes; with O_DIRECT the tail is padded to
// the block size and the file truncated to its real length afterwards.
static int gw_drain(struct gguf_writer *w) {
  if (w->buf_len) {
    size_t len = w->buf_len;
    if (w->direct) {
      size_t padded = (size_t)ferry_align_up(len, GW_DIRECT_ALIGN);
      memset(w->bufs[w->fill] + len, 0, padded - len);
      len = padded;
    }
    int rc = gw_submit(w, len);
    if (rc) return rc;
  }
  int rc = gw_io_wait(w);
  if (rc) return rc;
  if (w->direct && ftruncate(w->fd, (off_t)w->written) != 0)
    return gw_failed(w, ferry_fail(-errno, "%s: ftruncate: %s", w->out.tmp, strerror(errno)));
  return 0;
}

int gguf_writer_create(struct gguf_writer **out, const char *path, uint32_t alignment) {
  *out = NULL;
  if (!path || !*path) return ferry_fail(-EINVAL, "gguf writer: empty output path");
  if (alignment == 0) alignment = 32;
  if (alignment & (alignment - 1))
    return ferry_fail(-EINVAL, "gguf writer: alignment %u is not a power of two", alignment);
  struct gguf_writer *w = calloc(1, sizeof *w);
  if (!w) return ferry_fail(-ENOMEM, "gguf writer: out of memory");
  w->fd = -1;
  w->alignment = alignment;
  w->path = strdup(path);
  w->bufs[0] = ferry_alloc_aligned(GW_DIRECT_ALIGN, GW_BUF_BYTES);
  w->bufs[1] = ferry_alloc_aligned(GW_DIRECT_ALIGN, GW_BUF_BYTES);
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  if (!w->path || !w->bufs[0] || !w->bufs[1]) {
    gguf_writer_destroy(w);
    return ferry_fail(-ENOMEM, "gguf writer: out of memory");
  }
  // O_DIRECT where the filesystem supports it (tmpfs may not); FERRY_NO_DIRECT=1 forces
  // buffered writes. The temporary name is new (never an existing file) and removed on
  // failure or SIGINT/SIGTERM (base/files.h).
  const char *nd = getenv("FERRY_NO_DIRECT");
  int rc = ferry_outfile_open(&w->out, path, nd && *nd && strcmp(nd, "0") ? 0 : O_DIRECT,
                              "output file", &w->direct);
  if (rc) {
    gguf_writer_destroy(w);
    return rc;
  }
  w->fd = w->out.fd;
  int prc = pthread_create(&w->io_th, NULL, gw_io_main, w);
  if (prc) {
    gguf_writer_destroy(w);
    return ferry_fail(-prc, "gguf writer: cannot start the I/O thread: %s", strerror(prc));
  }
  w->io_started = true;
  if (alignment != 32) {
    rc = gguf_writer_add_u32(w, "general.alignment", alignment);
    if (rc) {
      gguf_writer_destroy(w);
      return rc;
    }
  }
  *out = w;
  return 0;
}

void gguf_writer_destroy(struct gguf_writer *w) {
  if (!w) return;
  if (w->io_started) {
    pthread_mutex_lock(&w->mu);
    w->stop = true; // the thread finishes a write in flight, then exits
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->io_th, NULL);
  }
  pthread_mutex_destroy(&w->mu); // initialized before any path that reaches destroy
  pthread_cond_destroy(&w->cv);
  ferry_outfile_discard(&w->out); // no-op after a successful finish
  for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
  for (int64_t i = 0; i < w->n_t; i++) free(w->t[i].name);
  free(w->keys);
  free(w->t);
  free(w->meta);
  ferry_free_aligned(w->bufs[0]);
  ferry_free_aligned(w->bufs[1]);
  free(w->path);
  free(w);
}

// Skips tensors of zero remaining bytes (none exist: every declared tensor has >= 1 block).
static int gw_advance(struct gguf_writer *w) {
  while (w->cur < w->n_t && w->cur_done == w->t[w->cur].nbytes) {
    const struct gw_tensor *t = &w->t[w->cur];
    int rc = gw_out_zeros(w, ferry_align_up(t->nbytes, w->alignment) - t->nbytes);
    if (rc) return rc;
    w->cur++;
    w->cur_done = 0;
  }
  return 0;
}

int gguf_writer_begin_data(struct gguf_writer *w) {
  if (w->state != GW_DECLARE)
    return ferry_fail(-EINVAL, "gguf writer: begin_data called twice or after a failure");
  // Header: magic, version, counts, then the kv bytes, then the tensor infos.
  uint8_t hdr[24];
  uint32_t magic = GW_MAGIC, ver = GW_VERSION;
  uint64_t nt = (uint64_t)w->n_t, nkv = w->n_kv;
  memcpy(hdr, &magic, 4);
  memcpy(hdr + 4, &ver, 4);
  memcpy(hdr + 8, &nt, 8);
  memcpy(hdr + 16, &nkv, 8);
  int rc = gw_out(w, hdr, sizeof hdr);
  if (!rc) rc = gw_out(w, w->meta, w->meta_len);
  for (int64_t i = 0; !rc && i < w->n_t; i++) {
    const struct gw_tensor *t = &w->t[i];
    uint64_t len = strlen(t->name);
    rc = gw_out(w, &len, 8);
    if (!rc) rc = gw_out(w, t->name, len);
    if (!rc) rc = gw_out(w, &t->n_dims, 4);
    if (!rc) rc = gw_out(w, t->ne, 8 * (size_t)t->n_dims);
    if (!rc) rc = gw_out(w, &t->type, 4);
    if (!rc) rc = gw_out(w, &t->offset, 8);
  }
  if (!rc) rc = gw_out_zeros(w, ferry_align_up(w->written, w->alignment) - w->written);
  if (rc) return gw_failed(w, rc);
  free(w->meta); // no longer needed: keep the writer's footprint to the data buffer
  w->meta = NULL;
  w->meta_len = w->meta_cap = 0;
  w->state = GW_DATA;
  w->cur = 0;
  w->cur_done = 0;
  return 0;
}

int gguf_writer_write(struct gguf_writer *w, const void *data, uint64_t len) {
  if (w->state != GW_DATA)
    return ferry_fail(-EINVAL,
                      "gguf writer: tensor data written before begin_data or after finish/failure");
  if (w->cur >= w->n_t)
    return gw_failed(w,
                     ferry_fail(-EINVAL, "gguf writer: more data than the declared tensors hold"));
  const struct gw_tensor *t = &w->t[w->cur];
  if (len > t->nbytes - w->cur_done)
    return gw_failed(
        w, ferry_fail(-EINVAL, "gguf writer: '%s': %llu bytes written past its size %llu", t->name,
                      (unsigned long long)(w->cur_done + len), (unsigned long long)t->nbytes));
  int rc = gw_out(w, data, (size_t)len);
  if (rc) return rc;
  w->cur_done += len;
  return gw_advance(w);
}

int gguf_writer_finish(struct gguf_writer *w) {
  if (w->state != GW_DATA)
    return ferry_fail(-EINVAL, "gguf writer: finish without begin_data (or after a failure)");
  if (w->cur < w->n_t)
    return gw_failed(
        w, ferry_fail(-EINVAL, "gguf writer: tensor '%s' has %llu of %llu bytes", w->t[w->cur].name,
                      (unsigned long long)w->cur_done, (unsigned long long)w->t[w->cur].nbytes));
  int rc = gw_drain(w);
  if (rc) return rc;
  log_debug("gguf writer: %s: %llu bytes, %s, caller waited %.2f s for the disk", w->path,
            (unsigned long long)w->written, w->direct ? "O_DIRECT" : "buffered", w->wait_s);
  rc = ferry_outfile_commit(&w->out, "output file"); // fdatasync, close, rename
  w->fd = -1;
  if (rc) return gw_failed(w, rc);
  w->state = GW_DONE;
  return 0;
}
