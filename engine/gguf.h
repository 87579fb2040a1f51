// engine/gguf.h: GGUF v3 reader. Parses the header, metadata and tensor infos with pread
// (the file is never mmapped), validating every count, length and offset against the file
// size before use. Tensor data is read on demand by the caller (gguf_pread or its own I/O).
// A struct gguf_file is immutable after gguf_open and may be read from any thread.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum gguf_vtype {
  GGUF_U8 = 0,
  GGUF_I8 = 1,
  GGUF_U16 = 2,
  GGUF_I16 = 3,
  GGUF_U32 = 4,
  GGUF_I32 = 5,
  GGUF_F32 = 6,
  GGUF_BOOL = 7,
  GGUF_STRING = 8,
  GGUF_ARRAY = 9,
  GGUF_U64 = 10,
  GGUF_I64 = 11,
  GGUF_F64 = 12,
  GGUF_VTYPE_COUNT = 13,
};

struct gguf_str {
  uint64_t len;
  char *data; // NUL-terminated copy (may contain embedded NULs; use len)
};

struct gguf_kv {
  char *key;
  uint32_t type;     // enum gguf_vtype
  uint64_t file_off; // where the pair starts in the file
  union {
    uint64_t u64; // any unsigned integer or bool
    int64_t i64;  // any signed integer
    double f64;   // F32/F64
  } v;
  struct gguf_str str; // GGUF_STRING
  uint32_t arr_type;   // GGUF_ARRAY: element type
  uint64_t arr_n;      //   element count
  void *arr;           //   numeric: packed little-endian elements; strings: struct gguf_str[]
                       //   nested arrays: not stored (arr = NULL), skipped
};

struct gguf_tensor {
  char *name;
  uint32_t n_dims;
  uint64_t ne[4];      // ne[0] innermost; missing dims are 1
  uint32_t type;       // enum ferry_type (validated: known to ferry)
  uint64_t offset;     // relative to the data section
  uint64_t abs_offset; // absolute file offset
  uint64_t nbytes;     // total bytes
  uint64_t nb1, nb2;   // row and matrix strides in bytes
};

struct gguf_file;

// Opens and parses path. On failure returns a negative code with a message of the form
// "path: what is wrong (at offset N)". Never allocates more than the file could justify.
int gguf_open(struct gguf_file **out, const char *path);
void gguf_close(struct gguf_file *f); // NULL-safe

const char *gguf_path(const struct gguf_file *f);
int gguf_fd(const struct gguf_file *f);
uint64_t gguf_file_size(const struct gguf_file *f);
uint32_t gguf_version(const struct gguf_file *f);
uint64_t gguf_alignment(const struct gguf_file *f);
uint64_t gguf_data_offset(const struct gguf_file *f);

int64_t gguf_n_kv(const struct gguf_file *f);
const struct gguf_kv *gguf_kv_at(const struct gguf_file *f, int64_t i);
const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key);

// Typed getters: 0 on success, -ENOENT if the key is absent, -EINVAL (message set) if the
// value has an incompatible type or does not fit. Integers accept any integer width.
int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *out);
int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out);
int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out);
const char *gguf_get_str(const struct gguf_file *f, const char *key); // NULL if absent/not string
// Array accessor: NULL if absent or not an array of elem_type.
const struct gguf_kv *gguf_get_arr(const struct gguf_file *f, const char *key, uint32_t elem_type);

int64_t gguf_n_tensors(const struct gguf_file *f);
const struct gguf_tensor *gguf_tensor_at(const struct gguf_file *f, int64_t i);
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name);

// Reads len bytes at absolute offset off (pread loop). 0 or a negative code with message.
int gguf_pread(const struct gguf_file *f, void *buf, uint64_t len, uint64_t off);

const char *gguf_vtype_name(uint32_t t);
// Bytes of one scalar value of type t; 0 for STRING, ARRAY and unknown types.
uint64_t gguf_vtype_size(uint32_t t);

#ifdef __cplusplus
}
#endif
