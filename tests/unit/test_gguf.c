// tests/unit/test_gguf.c: the GGUF reader on a valid file built byte by byte, then on
// generated malformed variants (truncation inside every section, bad magic/version,
// huge counts and lengths, unknown types, bad dims, misaligned, out-of-file, overlapping
// and duplicate tensors, random byte flips). Every malformed file must fail with a
// message naming the file and the problem — never crash or allocate absurdly (ASan run).
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "engine/gguf.h"
#include "kernels/types.h"
#include "tests/check.h"

struct buf {
  uint8_t *p;
  size_t n, cap;
};

static void put(struct buf *b, const void *d, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2 + 64;
    b->p = realloc(b->p, b->cap);
  }
  memcpy(b->p + b->n, d, n);
  b->n += n;
}
static void u32(struct buf *b, uint32_t v) { put(b, &v, 4); }
static void u64(struct buf *b, uint64_t v) { put(b, &v, 8); }
static void str(struct buf *b, const char *s) {
  u64(b, strlen(s));
  put(b, s, strlen(s));
}

// Offsets of interesting places in the valid file, for the mutations.
struct layout {
  size_t kv_count_at, tensor_count_at, first_key_at, str_len_at, arr_len_at, arr_type_at, vtype_at;
  size_t tinfo_at[3], dims_at[3], ndims_at[3], ttype_at[3], toff_at[3], data_at, align_kv_val_at,
      bool_at;
};

// Three tensors: "a" f32 {8, 4}, "b" q8_0 {64, 2}, "c" q4_K {256, 1}.
static struct buf make_valid(struct layout *L) {
  struct buf b = {0};
  u32(&b, 0x46554747u);
  u32(&b, 3);
  L->tensor_count_at = b.n;
  u64(&b, 3);
  L->kv_count_at = b.n;
  u64(&b, 7);
  L->first_key_at = b.n;
  str(&b, "general.architecture");
  L->vtype_at = b.n;
  u32(&b, GGUF_STRING);
  L->str_len_at = b.n;
  str(&b, "qwen3moe");
  str(&b, "general.alignment");
  u32(&b, GGUF_U32);
  L->align_kv_val_at = b.n;
  u32(&b, 32);
  str(&b, "test.f32");
  u32(&b, GGUF_F32);
  float f = 1.5f;
  put(&b, &f, 4);
  str(&b, "test.i8");
  u32(&b, GGUF_I8);
  int8_t i8 = -5;
  put(&b, &i8, 1);
  str(&b, "test.bool");
  u32(&b, GGUF_BOOL);
  L->bool_at = b.n;
  uint8_t t = 1;
  put(&b, &t, 1);
  str(&b, "test.strings");
  u32(&b, GGUF_ARRAY);
  L->arr_type_at = b.n;
  u32(&b, GGUF_STRING);
  L->arr_len_at = b.n;
  u64(&b, 3);
  str(&b, "alpha");
  str(&b, "");
  str(&b, "γάμμα");
  str(&b, "test.nested");
  u32(&b, GGUF_ARRAY);
  u32(&b, GGUF_ARRAY);
  u64(&b, 2);
  for (int i = 0; i < 2; i++) {
    u32(&b, GGUF_U16);
    u64(&b, 2);
    uint16_t v[2] = {(uint16_t)i, 7};
    put(&b, v, 4);
  }
  const char *names[3] = {"a", "b", "c"};
  uint64_t ne[3][2] = {{8, 4}, {64, 2}, {256, 1}};
  uint32_t types[3] = {FT_F32, FT_Q8_0, FT_Q4_K};
  uint64_t sizes[3] = {8 * 4 * 4, 2 * 2 * 34, 144};
  uint64_t off = 0;
  for (int i = 0; i < 3; i++) {
    L->tinfo_at[i] = b.n;
    str(&b, names[i]);
    L->ndims_at[i] = b.n;
    u32(&b, 2);
    L->dims_at[i] = b.n;
    u64(&b, ne[i][0]);
    u64(&b, ne[i][1]);
    L->ttype_at[i] = b.n;
    u32(&b, types[i]);
    L->toff_at[i] = b.n;
    u64(&b, off);
    off = ferry_align_up(off + sizes[i], 32);
  }
  while (b.n % 32) put(&b, "", 1);
  L->data_at = b.n;
  struct ferry_rng r;
  ferry_rng_seed(&r, 7);
  for (uint64_t i = 0; i < off; i++) {
    uint8_t x = (uint8_t)ferry_rng_u64(&r);
    put(&b, &x, 1);
  }
  return b;
}

static const char *g_dir;

static int write_file(const char *name, const uint8_t *p, size_t n, char *path, size_t pn) {
  snprintf(path, pn, "%s/%s.gguf", g_dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  fwrite(p, 1, n, f);
  fclose(f);
  return 0;
}

static int n_cases;

// Writes the variant, expects gguf_open to fail with a message containing `want`.
static void expect_fail(const char *name, const uint8_t *p, size_t n, const char *want) {
  char path[512];
  CHECK(write_file(name, p, n, path, sizeof path) == 0);
  struct gguf_file *f = NULL;
  ferry_clear_error();
  int rc = gguf_open(&f, path);
  n_cases++;
  if (rc >= 0) {
    fprintf(stderr, "case %s: opened a malformed file\n", name);
    CHECK(rc < 0);
    gguf_close(f);
    return;
  }
  // `want` may list alternatives separated by '|'
  const char *msg = ferry_errmsg();
  bool found = false;
  char alts[256];
  snprintf(alts, sizeof alts, "%s", want);
  for (char *save = NULL, *tok = strtok_r(alts, "|", &save); tok; tok = strtok_r(NULL, "|", &save))
    found |= strstr(msg, tok) != NULL;
  if (!strstr(msg, path) || !found) {
    fprintf(stderr, "case %s: message '%s' lacks '%s'\n", name, msg, want);
    CHECK(0);
  }
}

static void patch_u32(struct buf *b, size_t at, uint32_t v) { memcpy(b->p + at, &v, 4); }
static void patch_u64(struct buf *b, size_t at, uint64_t v) { memcpy(b->p + at, &v, 8); }

static struct buf copy(const struct buf *b) {
  struct buf c = {malloc(b->n), b->n, b->n};
  memcpy(c.p, b->p, b->n);
  return c;
}

int main(void) {
  char dir[] = "/tmp/ferry_gguf_XXXXXX";
  g_dir = mkdtemp(dir);
  if (!g_dir) SKIP("cannot create a temp dir");
  struct layout L;
  struct buf v = make_valid(&L);

  // ---- the valid file reads back exactly
  char path[512];
  CHECK(write_file("valid", v.p, v.n, path, sizeof path) == 0);
  struct gguf_file *f = NULL;
  CHECK_EQ(gguf_open(&f, path), 0);
  if (f) {
    CHECK_EQ(gguf_version(f), 3);
    CHECK_EQ(gguf_n_kv(f), 7);
    CHECK_EQ(gguf_n_tensors(f), 3);
    CHECK_EQ(gguf_alignment(f), 32);
    CHECK_EQ(gguf_data_offset(f), L.data_at);
    CHECK(gguf_get_str(f, "general.architecture") &&
          !strcmp(gguf_get_str(f, "general.architecture"), "qwen3moe"));
    float fv = 0;
    CHECK_EQ(gguf_get_f32(f, "test.f32", &fv), 0);
    CHECK_NEAR(fv, 1.5, 0);
    uint32_t u = 0;
    CHECK_EQ(gguf_get_u32(f, "general.alignment", &u), 0);
    CHECK_EQ(u, 32);
    CHECK_EQ(gguf_get_u32(f, "test.i8", &u), -EINVAL); // negative
    CHECK_EQ(gguf_get_u32(f, "no.such.key", &u), -ENOENT);
    bool bv = false;
    CHECK_EQ(gguf_get_bool(f, "test.bool", &bv), 0);
    CHECK(bv);
    const struct gguf_kv *a = gguf_get_arr(f, "test.strings", GGUF_STRING);
    CHECK(a != NULL);
    if (a) {
      const struct gguf_str *s = a->arr;
      CHECK_EQ(a->arr_n, 3);
      CHECK(!strcmp(s[0].data, "alpha") && s[1].len == 0 && !strcmp(s[2].data, "γάμμα"));
    }
    const struct gguf_kv *nested = gguf_find_kv(f, "test.nested");
    CHECK(nested && nested->type == GGUF_ARRAY && nested->arr_type == GGUF_ARRAY &&
          nested->arr_n == 2);
    const struct gguf_tensor *tb = gguf_find_tensor(f, "b"), *tc = gguf_find_tensor(f, "c");
    CHECK(tb && tc && !gguf_find_tensor(f, "d"));
    if (tb && tc) {
      CHECK_EQ(tb->type, FT_Q8_0);
      CHECK_EQ(tb->ne[0], 64);
      CHECK_EQ(tb->ne[1], 2);
      CHECK_EQ(tb->nb1, 68);
      CHECK_EQ(tb->nbytes, 136);
      CHECK_EQ(tc->abs_offset, L.data_at + 128 + 160);
      uint8_t got[144];
      CHECK_EQ(gguf_pread(f, got, 144, tc->abs_offset), 0);
      CHECK(!memcmp(got, v.p + tc->abs_offset, 144));
      CHECK(gguf_pread(f, got, 144, v.n - 10) < 0);
    }
    gguf_close(f);
  }

  // ---- truncation inside every section
  size_t cuts[][2] = {{2, 0},
                      {6, 0},
                      {L.tensor_count_at + 3, 0},
                      {L.kv_count_at + 5, 0},
                      {L.first_key_at + 4, 0},
                      {L.first_key_at + 12, 0},
                      {L.vtype_at + 2, 0},
                      {L.str_len_at + 10, 0},
                      {L.arr_len_at + 4, 0},
                      {L.arr_len_at + 14, 0},
                      {L.tinfo_at[1] + 3, 0},
                      {L.dims_at[1] + 5, 0},
                      {L.ttype_at[2] + 2, 0},
                      {L.toff_at[2] + 4, 0},
                      {L.data_at + 20, 1},
                      {L.data_at + 288 + 100, 1}};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    char nm[32];
    snprintf(nm, sizeof nm, "trunc%zu", i);
    expect_fail(nm, v.p, cuts[i][0],
                cuts[i][1] ? "past the end of the file" : "truncated|larger than the file allows");
  }

  struct buf c;
  // ---- header
  c = copy(&v), c.p[0] = 'X', expect_fail("magic", c.p, c.n, "bad magic"), free(c.p);
  c = copy(&v), patch_u32(&c, 4, 2),
  expect_fail("version2", c.p, c.n, "unsupported GGUF version 2"), free(c.p);
  c = copy(&v), patch_u64(&c, L.tensor_count_at, 1ull << 40),
  expect_fail("huge_tensors", c.p, c.n, "count"), free(c.p);
  c = copy(&v), patch_u64(&c, L.kv_count_at, UINT64_MAX), expect_fail("huge_kv", c.p, c.n, "count"),
  free(c.p);
  // ---- metadata
  c = copy(&v), patch_u64(&c, L.first_key_at, 1ull << 62),
  expect_fail("huge_key", c.p, c.n, "string length"), free(c.p);
  c = copy(&v), patch_u64(&c, L.str_len_at, 1ull << 50),
  expect_fail("huge_str", c.p, c.n, "string length"), free(c.p);
  c = copy(&v), patch_u64(&c, L.arr_len_at, 1ull << 60),
  expect_fail("huge_arr", c.p, c.n, "array length"), free(c.p);
  c = copy(&v), patch_u32(&c, L.vtype_at, 13),
  expect_fail("vtype", c.p, c.n, "unknown value type 13"), free(c.p);
  c = copy(&v), patch_u32(&c, L.arr_type_at, 99),
  expect_fail("arrtype", c.p, c.n, "unknown array element type"), free(c.p);
  c = copy(&v), patch_u32(&c, L.align_kv_val_at, 24),
  expect_fail("align", c.p, c.n, "power of two"), free(c.p);
  c = copy(&v), c.p[L.bool_at] = 2, expect_fail("bool", c.p, c.n, "bool"), free(c.p);
  // ---- tensor infos
  c = copy(&v), patch_u32(&c, L.ttype_at[0], 99),
  expect_fail("ttype", c.p, c.n, "unsupported type 99"), free(c.p);
  c = copy(&v), patch_u32(&c, L.ttype_at[0], 20),
  expect_fail("ttype_iq", c.p, c.n, "unsupported type 20"), free(c.p);
  c = copy(&v), patch_u32(&c, L.ndims_at[0], 0),
  expect_fail("ndims0", c.p, c.n, "dimensions (1..4"), free(c.p);
  c = copy(&v), patch_u32(&c, L.ndims_at[0], 7),
  expect_fail("ndims7", c.p, c.n, "dimensions (1..4"), free(c.p);
  c = copy(&v), patch_u64(&c, L.dims_at[0], 0), expect_fail("dim0", c.p, c.n, "invalid dimensions"),
  free(c.p);
  c = copy(&v), patch_u64(&c, L.dims_at[0], 1ull << 40),
  patch_u64(&c, L.dims_at[0] + 8, 1ull << 40),
  expect_fail("dimoverflow", c.p, c.n, "invalid dimensions"), free(c.p);
  c = copy(&v), patch_u64(&c, L.dims_at[2], 100),
  expect_fail("blocksize", c.p, c.n, "not a multiple"), free(c.p);
  c = copy(&v), patch_u64(&c, L.toff_at[1], 136),
  expect_fail("misaligned", c.p, c.n, "not a multiple of the alignment"), free(c.p);
  c = copy(&v), patch_u64(&c, L.toff_at[2], 1 << 20),
  expect_fail("outside", c.p, c.n, "past the end of the file"), free(c.p);
  c = copy(&v), patch_u64(&c, L.toff_at[2], 128), expect_fail("overlap", c.p, c.n, "overlap"),
  free(c.p);
  c = copy(&v), c.p[L.tinfo_at[1] + 8] = 'a',
  expect_fail("dupname", c.p, c.n, "duplicate tensor name 'a'"), free(c.p);

  // ---- random byte flips in the header: must open or fail cleanly, never crash
  struct ferry_rng r;
  ferry_rng_seed(&r, 12345);
  int opened = 0, failed = 0;
  for (int i = 0; i < 400; i++) {
    c = copy(&v);
    int flips = 1 + (int)(ferry_rng_u64(&r) % 4);
    for (int k = 0; k < flips; k++)
      c.p[ferry_rng_u64(&r) % L.data_at] ^= (uint8_t)(1u << (ferry_rng_u64(&r) % 8));
    CHECK(write_file("flip", c.p, c.n, path, sizeof path) == 0);
    f = NULL;
    ferry_clear_error();
    if (gguf_open(&f, path) == 0) {
      opened++;
      gguf_close(f);
    } else {
      failed++;
      CHECK(strstr(ferry_errmsg(), path) != NULL);
    }
    free(c.p);
  }
  fprintf(stderr, "%d malformed cases; random flips: %d opened, %d rejected\n", n_cases, opened,
          failed);
  CHECK(n_cases >= 20);
  CHECK(failed > 100);
  free(v.p);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", g_dir);
  CHECK_DONE();
}
