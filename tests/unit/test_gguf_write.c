// tests/unit/test_gguf_write.c: what the streaming GGUF writer produces reads back through
// engine/gguf.h unchanged: every value type, string and numeric arrays, copied pairs,
// tensor infos, offsets and alignment padding, and the tensor bytes (random, streamed in
// uneven chunks). Misuse (duplicate keys, bad shapes, too many bytes, unfinished tensors)
// fails cleanly and leaves no output file.
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../check.h"
#include "base/base.h"
#include "engine/gguf.h"
#include "engine/gguf_write.h"
#include "kernels/types.h"

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

struct tdesc {
  const char *name;
  uint32_t n_dims;
  uint64_t ne[4];
  uint32_t type;
};

static const struct tdesc k_tensors[] = {
    {"token_embd.weight", 2, {64, 37}, FT_Q8_0},
    {"blk.0.attn_norm.weight", 1, {63}, FT_F32}, // 252 bytes: not a multiple of 32
    {"blk.0.ffn_gate_exps.weight", 3, {256, 5, 3}, FT_Q4_K},
    {"blk.0.ffn_down_exps.weight", 3, {256, 3, 2}, FT_Q6_K},
    {"blk.0.ffn_gate_inp_shexp.weight", 1, {7}, FT_BF16},
    {"blk.0.big.weight", 2, {1024, 3000}, FT_F32}, // 12 MB: bypasses the write buffer
    {"output.weight", 2, {32, 1}, FT_F16},
};
#define NT (int)(sizeof k_tensors / sizeof k_tensors[0])

static uint8_t *tensor_bytes(int i, uint64_t n) {
  struct ferry_rng r;
  ferry_rng_seed(&r, 1000 + i);
  uint8_t *b = malloc(n);
  for (uint64_t k = 0; k < n; k++) b[k] = (uint8_t)(ferry_rng_u64(&r) >> 13);
  return b;
}

static int write_file(const char *path, uint32_t align) {
  struct gguf_writer *w;
  int rc = gguf_writer_create(&w, path, align);
  if (rc) return rc;
  CHECK_EQ(gguf_writer_add_str(w, "general.architecture", "qwen3moe"), 0);
  CHECK_EQ(gguf_writer_add_u8(w, "t.u8", 200), 0);
  CHECK_EQ(gguf_writer_add_i8(w, "t.i8", -100), 0);
  CHECK_EQ(gguf_writer_add_u16(w, "t.u16", 65000), 0);
  CHECK_EQ(gguf_writer_add_i16(w, "t.i16", -32000), 0);
  CHECK_EQ(gguf_writer_add_u32(w, "t.u32", 4000000000u), 0);
  CHECK_EQ(gguf_writer_add_i32(w, "t.i32", -2000000000), 0);
  CHECK_EQ(gguf_writer_add_u64(w, "t.u64", 0xfedcba9876543210ull), 0);
  CHECK_EQ(gguf_writer_add_i64(w, "t.i64", -1234567890123ll), 0);
  CHECK_EQ(gguf_writer_add_f32(w, "t.f32", 1e-6f), 0);
  CHECK_EQ(gguf_writer_add_f64(w, "t.f64", 3.141592653589793), 0);
  CHECK_EQ(gguf_writer_add_bool(w, "t.bool", true), 0);
  CHECK_EQ(gguf_writer_add_strn(w, "t.nul", "a\0b", 3), 0);
  CHECK_EQ(gguf_writer_add_str(w, "t.empty", ""), 0);
  const char *strs[] = {"Ġ Ġ", "", "<|im_end|>", "hello"};
  CHECK_EQ(gguf_writer_add_str_array(w, "t.strs", strs, NULL, 4), 0);
  CHECK_EQ(gguf_writer_add_str_array(w, "t.nostrs", NULL, NULL, 0), 0);
  int32_t i32s[5] = {1, -2, 3, -4, 2147483647};
  CHECK_EQ(gguf_writer_add_array(w, "t.i32s", GGUF_I32, i32s, 5), 0);
  uint8_t bools[4] = {1, 1, 1, 0};
  CHECK_EQ(gguf_writer_add_array(w, "t.bools", GGUF_BOOL, bools, 4), 0);
  float f32s[3] = {0.5f, -1.25f, 1e30f};
  CHECK_EQ(gguf_writer_add_array(w, "t.f32s", GGUF_F32, f32s, 3), 0);
  double f64s[2] = {1e-300, -2.5};
  CHECK_EQ(gguf_writer_add_array(w, "t.f64s", GGUF_F64, f64s, 2), 0);
  uint64_t u64s[2] = {1, 0xffffffffffffffffull};
  CHECK_EQ(gguf_writer_add_array(w, "t.u64s", GGUF_U64, u64s, 2), 0);
  // Misuse at declare time: rejected without poisoning the writer.
  CHECK(gguf_writer_add_u32(w, "t.u32", 1) < 0);
  CHECK(gguf_writer_add_array(w, "t.bad", GGUF_STRING, strs, 1) < 0);
  uint64_t bad_ne[2] = {100, 2};
  CHECK(gguf_writer_add_tensor(w, "bad.q4k", 2, bad_ne, FT_Q4_K) < 0);
  CHECK(gguf_writer_add_tensor(w, "bad.dims", 0, bad_ne, FT_F32) < 0);
  ferry_clear_error();

  for (int i = 0; i < NT; i++)
    CHECK_EQ(gguf_writer_add_tensor(w, k_tensors[i].name, k_tensors[i].n_dims, k_tensors[i].ne,
                                    k_tensors[i].type),
             0);
  CHECK(gguf_writer_add_tensor(w, k_tensors[0].name, 1, k_tensors[0].ne, FT_F32) < 0); // duplicate
  ferry_clear_error();
  CHECK_EQ(gguf_writer_n_tensors(w), NT);
  CHECK_EQ(gguf_writer_begin_data(w), 0);
  CHECK(gguf_writer_add_u32(w, "t.late", 1) < 0);
  ferry_clear_error();
  for (int i = 0; i < NT; i++) {
    uint64_t n = gguf_writer_tensor_nbytes(w, i);
    uint8_t *b = tensor_bytes(i, n);
    // uneven chunk sizes: 1, 7, 1000, 5 MiB, ...
    uint64_t off = 0, step[] = {1, 7, 1000, 5u << 20, 33};
    for (int s = 0; off < n; s = (s + 1) % 5) {
      uint64_t k = step[s] < n - off ? step[s] : n - off;
      CHECK_EQ(gguf_writer_current(w), i);
      CHECK_EQ(gguf_writer_write(w, b + off, k), 0);
      off += k;
    }
    free(b);
  }
  CHECK_EQ(gguf_writer_current(w), NT);
  CHECK_EQ(gguf_writer_finish(w), 0);
  gguf_writer_destroy(w);
  return 0;
}

static void check_file(const char *path, uint32_t align) {
  struct gguf_file *f = NULL;
  int rc = gguf_open(&f, path);
  CHECK_EQ(rc, 0);
  if (rc) {
    fprintf(stderr, "%s\n", ferry_errmsg());
    return;
  }
  CHECK_EQ(gguf_version(f), 3);
  CHECK_EQ(gguf_alignment(f), align ? align : 32);
  CHECK_EQ(gguf_data_offset(f) % (align ? align : 32), 0);
  CHECK_EQ(gguf_n_kv(f), 21 + (align && align != 32 ? 1 : 0));
  CHECK(!strcmp(gguf_get_str(f, "general.architecture"), "qwen3moe"));
  const struct gguf_kv *kv;
  kv = gguf_find_kv(f, "t.u8");
  CHECK(kv && kv->type == GGUF_U8 && kv->v.u64 == 200);
  kv = gguf_find_kv(f, "t.i8");
  CHECK(kv && kv->type == GGUF_I8 && kv->v.i64 == -100);
  kv = gguf_find_kv(f, "t.u16");
  CHECK(kv && kv->type == GGUF_U16 && kv->v.u64 == 65000);
  kv = gguf_find_kv(f, "t.i16");
  CHECK(kv && kv->type == GGUF_I16 && kv->v.i64 == -32000);
  kv = gguf_find_kv(f, "t.u32");
  CHECK(kv && kv->type == GGUF_U32 && kv->v.u64 == 4000000000u);
  kv = gguf_find_kv(f, "t.i32");
  CHECK(kv && kv->type == GGUF_I32 && kv->v.i64 == -2000000000);
  kv = gguf_find_kv(f, "t.u64");
  CHECK(kv && kv->type == GGUF_U64 && kv->v.u64 == 0xfedcba9876543210ull);
  kv = gguf_find_kv(f, "t.i64");
  CHECK(kv && kv->type == GGUF_I64 && kv->v.i64 == -1234567890123ll);
  kv = gguf_find_kv(f, "t.f32");
  CHECK(kv && kv->type == GGUF_F32 && (float)kv->v.f64 == 1e-6f);
  kv = gguf_find_kv(f, "t.f64");
  CHECK(kv && kv->type == GGUF_F64 && kv->v.f64 == 3.141592653589793);
  bool b = false;
  CHECK_EQ(gguf_get_bool(f, "t.bool", &b), 0);
  CHECK(b);
  kv = gguf_find_kv(f, "t.nul");
  CHECK(kv && kv->str.len == 3 && !memcmp(kv->str.data, "a\0b", 3));
  kv = gguf_find_kv(f, "t.empty");
  CHECK(kv && kv->type == GGUF_STRING && kv->str.len == 0);
  kv = gguf_get_arr(f, "t.strs", GGUF_STRING);
  CHECK(kv && kv->arr_n == 4);
  if (kv && kv->arr_n == 4) {
    const struct gguf_str *s = kv->arr;
    CHECK(!strcmp(s[0].data, "Ġ Ġ") && s[1].len == 0 && !strcmp(s[2].data, "<|im_end|>") &&
          !strcmp(s[3].data, "hello"));
  }
  kv = gguf_get_arr(f, "t.nostrs", GGUF_STRING);
  CHECK(kv && kv->arr_n == 0);
  kv = gguf_get_arr(f, "t.i32s", GGUF_I32);
  CHECK(kv && kv->arr_n == 5 && ((int32_t *)kv->arr)[1] == -2 &&
        ((int32_t *)kv->arr)[4] == 2147483647);
  kv = gguf_get_arr(f, "t.bools", GGUF_BOOL);
  CHECK(kv && kv->arr_n == 4 && ((uint8_t *)kv->arr)[0] == 1 && ((uint8_t *)kv->arr)[3] == 0);
  kv = gguf_get_arr(f, "t.f32s", GGUF_F32);
  CHECK(kv && kv->arr_n == 3 && ((float *)kv->arr)[1] == -1.25f && ((float *)kv->arr)[2] == 1e30f);
  kv = gguf_get_arr(f, "t.f64s", GGUF_F64);
  CHECK(kv && kv->arr_n == 2 && ((double *)kv->arr)[0] == 1e-300);
  kv = gguf_get_arr(f, "t.u64s", GGUF_U64);
  CHECK(kv && kv->arr_n == 2 && ((uint64_t *)kv->arr)[1] == 0xffffffffffffffffull);

  CHECK_EQ(gguf_n_tensors(f), NT);
  uint64_t a = align ? align : 32, expect_off = 0;
  for (int i = 0; i < NT && i < gguf_n_tensors(f); i++) {
    const struct gguf_tensor *t = gguf_tensor_at(f, i);
    const struct tdesc *d = &k_tensors[i];
    CHECK(!strcmp(t->name, d->name));
    CHECK_EQ(t->n_dims, d->n_dims);
    CHECK_EQ(t->type, d->type);
    for (uint32_t k = 0; k < d->n_dims; k++) CHECK_EQ(t->ne[k], d->ne[k]);
    CHECK_EQ(t->offset, expect_off);
    CHECK_EQ(t->offset % a, 0);
    CHECK_EQ(t->abs_offset, gguf_data_offset(f) + t->offset);
    expect_off = ferry_align_up(t->offset + t->nbytes, a);
    uint8_t *want = tensor_bytes(i, t->nbytes), *got = malloc(t->nbytes);
    CHECK_EQ(gguf_pread(f, got, t->nbytes, t->abs_offset), 0);
    CHECK(!memcmp(want, got, t->nbytes));
    free(want);
    free(got);
  }
  CHECK_EQ(gguf_file_size(f), gguf_data_offset(f) + expect_off);
  gguf_close(f);
}

// Copies every pair of src into a fresh file and compares the two readers' views.
static void check_copy(const char *src, const char *dst) {
  struct gguf_file *f = NULL, *g = NULL;
  CHECK_EQ(gguf_open(&f, src), 0);
  if (!f) return;
  struct gguf_writer *w;
  CHECK_EQ(gguf_writer_create(&w, dst, 0), 0);
  for (int64_t i = 0; i < gguf_n_kv(f); i++) {
    const struct gguf_kv *kv = gguf_kv_at(f, i);
    if (!strcmp(kv->key, "general.alignment")) continue; // the writer adds it itself
    CHECK_EQ(gguf_writer_copy_kv(w, kv), 0);
  }
  uint64_t ne[1] = {32};
  float x[32];
  for (int i = 0; i < 32; i++) x[i] = (float)i - 3.5f;
  CHECK_EQ(gguf_writer_add_tensor(w, "x", 1, ne, FT_F32), 0);
  CHECK_EQ(gguf_writer_begin_data(w), 0);
  CHECK_EQ(gguf_writer_write(w, x, sizeof x), 0);
  CHECK_EQ(gguf_writer_finish(w), 0);
  gguf_writer_destroy(w);
  CHECK_EQ(gguf_open(&g, dst), 0);
  if (g) {
    CHECK_EQ(gguf_n_kv(g), gguf_n_kv(f) - (gguf_find_kv(f, "general.alignment") ? 1 : 0));
    for (int64_t i = 0; i < gguf_n_kv(f); i++) {
      const struct gguf_kv *a = gguf_kv_at(f, i), *b = gguf_find_kv(g, a->key);
      if (!strcmp(a->key, "general.alignment")) continue;
      CHECK(b && b->type == a->type);
      if (!b || b->type != a->type) continue;
      if (a->type == GGUF_STRING)
        CHECK(a->str.len == b->str.len && !memcmp(a->str.data, b->str.data, a->str.len));
      else if (a->type == GGUF_ARRAY) {
        CHECK(a->arr_type == b->arr_type && a->arr_n == b->arr_n);
        if (a->arr_type == GGUF_STRING && a->arr_n == b->arr_n) {
          const struct gguf_str *sa = a->arr, *sb = b->arr;
          int same = 1;
          for (uint64_t k = 0; k < a->arr_n; k++)
            same &= sa[k].len == sb[k].len && !memcmp(sa[k].data, sb[k].data, sa[k].len);
          CHECK(same);
        }
      } else
        CHECK(a->v.u64 == b->v.u64);
    }
    gguf_close(g);
  }
  gguf_close(f);
}

static int count_files(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  if (d) closedir(d);
  return n;
}

static int write_tiny(const char *path) {
  struct gguf_writer *w;
  uint64_t ne[2] = {32, 1};
  static char zero[128];
  int rc = gguf_writer_create(&w, path, 0);
  if (rc) return rc;
  if (!(rc = gguf_writer_add_tensor(w, "a", 2, ne, FT_F32)) && !(rc = gguf_writer_begin_data(w)) &&
      !(rc = gguf_writer_write(w, zero, sizeof zero)))
    rc = gguf_writer_finish(w);
  gguf_writer_destroy(w);
  return rc;
}

// The output rules of base/files.h, through the writer: a target that is a FIFO, a
// directory or a symbolic link is refused and left as it was; an existing regular file is
// replaced whole; "<target>.tmp" (the temporary name of earlier versions) is never touched.
static void check_outputs(const char *dir) {
  char fifo[300], sub[300], link[300], reg[300], tmp[310];
  snprintf(fifo, sizeof fifo, "%s/fifo.gguf", dir);
  snprintf(sub, sizeof sub, "%s/dir.gguf", dir);
  snprintf(link, sizeof link, "%s/link.gguf", dir);
  snprintf(reg, sizeof reg, "%s/reg.gguf", dir);
  snprintf(tmp, sizeof tmp, "%s.tmp", reg);
  CHECK_EQ(mkfifo(fifo, 0644), 0);
  CHECK_EQ(mkdir(sub, 0755), 0);
  CHECK_EQ(symlink(reg, link), 0);
  FILE *f = fopen(tmp, "w");
  CHECK(f != NULL);
  if (f) fputs("someone else's file", f), fclose(f);
  const char *bad[] = {fifo, sub, link};
  for (int i = 0; i < 3; i++) {
    CHECK(write_tiny(bad[i]) == -EEXIST);
    CHECK(strstr(ferry_errmsg(), "refusing to write") != NULL);
    ferry_clear_error();
  }
  struct stat st;
  CHECK(stat(fifo, &st) == 0 && S_ISFIFO(st.st_mode));
  CHECK(stat(sub, &st) == 0 && S_ISDIR(st.st_mode));
  CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode));
  f = fopen(reg, "w");
  CHECK(f != NULL);
  if (f) fputs("old", f), fclose(f);
  CHECK_EQ(write_tiny(reg), 0);
  CHECK(stat(reg, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 100);
  char buf[32] = {0};
  f = fopen(tmp, "r");
  CHECK(f && fgets(buf, sizeof buf, f) && !strcmp(buf, "someone else's file"));
  if (f) fclose(f);
  CHECK_EQ(count_files(dir), 7); // the five above, tmp, and a/b from main
  unlink(fifo), rmdir(sub), unlink(link), unlink(reg), unlink(tmp);
}

int main(void) {
  char dir[] = "/tmp/ferry_gw_XXXXXX";
  if (!mkdtemp(dir)) SKIP("no temp dir");
  char p1[256], p2[256], p3[256], p4[256];
  snprintf(p1, sizeof p1, "%s/a.gguf", dir);
  snprintf(p2, sizeof p2, "%s/b.gguf", dir);
  snprintf(p3, sizeof p3, "%s/c.gguf", dir);
  snprintf(p4, sizeof p4, "%s/d.gguf", dir);

  CHECK_EQ(write_file(p1, 0), 0);
  check_file(p1, 0);
  setenv("FERRY_NO_DIRECT", "1", 1); // the buffered path too
  CHECK_EQ(write_file(p2, 64), 0);
  check_file(p2, 64);
  unsetenv("FERRY_NO_DIRECT");
  CHECK(gguf_writer_create(&(struct gguf_writer *){0}, p3, 48) < 0); // not a power of two
  ferry_clear_error();

  // Misuse while streaming: too many bytes poisons; unfinished tensors fail finish; no
  // output file remains either way.
  struct gguf_writer *w;
  uint64_t ne[2] = {32, 2};
  CHECK_EQ(gguf_writer_create(&w, p3, 0), 0);
  CHECK_EQ(gguf_writer_add_tensor(w, "a", 2, ne, FT_F32), 0);
  CHECK(gguf_writer_write(w, "x", 1) < 0); // before begin_data
  CHECK_EQ(gguf_writer_begin_data(w), 0);
  static char zero[1024];
  CHECK(gguf_writer_write(w, zero, 257) < 0);
  CHECK(gguf_writer_finish(w) < 0);
  gguf_writer_destroy(w);
  CHECK(!file_exists(p3));
  CHECK_EQ(gguf_writer_create(&w, p3, 0), 0);
  CHECK_EQ(gguf_writer_add_tensor(w, "a", 2, ne, FT_F32), 0);
  CHECK_EQ(gguf_writer_begin_data(w), 0);
  CHECK_EQ(gguf_writer_write(w, zero, 100), 0);
  CHECK(gguf_writer_finish(w) < 0);
  gguf_writer_destroy(w);
  CHECK(!file_exists(p3));
  CHECK_EQ(count_files(dir), 2); // a.gguf and b.gguf: no temporary file is left
  ferry_clear_error();

  check_outputs(dir);

  // Copy a real fixture's metadata (tokenizer arrays included).
  const char *fx = getenv("FERRY_FIXTURES");
  char src[512];
  snprintf(src, sizeof src, "%s/models/pub-qwen3next-tiny-F32.gguf",
           fx ? fx : FERRY_SOURCE_FIXTURES);
  CHECK(file_exists(src));
  if (file_exists(src)) check_copy(src, p4);

  unlink(p1), unlink(p2), unlink(p3), unlink(p4);
  CHECK_EQ(count_files(dir), 0);
  rmdir(dir);
  CHECK_DONE();
}
