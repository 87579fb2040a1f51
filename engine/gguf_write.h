// engine/gguf_write.h: streaming GGUF v3 writer. The caller declares all metadata and all
// tensor infos first (kept in memory: a few MB at most, the tokenizer arrays being the
// largest), then streams each tensor's bytes in the declared order. Memory is bounded by
// the metadata plus two 32 MiB I/O buffers (O_DIRECT where possible, written by a background
// thread while the caller fills the other); tensor data passes through and is never
// held whole. The file is written under a new temporary name beside <path> and renamed to
// <path> by gguf_writer_finish, so a failed, abandoned or interrupted (SIGINT/SIGTERM) write
// never leaves a plausible-looking file; a <path> that exists and is not a regular file is
// refused (base/files.h).
//
// One thread uses a writer at a time. Every function returns 0 or a negative errno-style
// code with the message set; after a failure the writer only accepts destroy.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "engine/gguf.h"

#ifdef __cplusplus
extern "C" {
#endif

struct gguf_writer;

// Creates the temporary file for <path>. alignment 0 means the GGUF default 32; any other value
// must be a power of two and is recorded as general.alignment (u32) automatically.
int gguf_writer_create(struct gguf_writer **out, const char *path, uint32_t alignment);
// Closes the writer; unless gguf_writer_finish succeeded, removes the temporary file.
// NULL-safe.
void gguf_writer_destroy(struct gguf_writer *w);

// ---- metadata (only before gguf_writer_begin_data; keys must be unique) -------------
// Scalar of any non-array type; v points to the value in its on-disk width (bool: one
// byte 0/1; GGUF_STRING: a NUL-terminated char*, i.e. v is `const char *`).
int gguf_writer_add_scalar(struct gguf_writer *w, const char *key, enum gguf_vtype type,
                           const void *v);
int gguf_writer_add_u8(struct gguf_writer *w, const char *key, uint8_t v);
int gguf_writer_add_i8(struct gguf_writer *w, const char *key, int8_t v);
int gguf_writer_add_u16(struct gguf_writer *w, const char *key, uint16_t v);
int gguf_writer_add_i16(struct gguf_writer *w, const char *key, int16_t v);
int gguf_writer_add_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_add_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_writer_add_u64(struct gguf_writer *w, const char *key, uint64_t v);
int gguf_writer_add_i64(struct gguf_writer *w, const char *key, int64_t v);
int gguf_writer_add_f32(struct gguf_writer *w, const char *key, float v);
int gguf_writer_add_f64(struct gguf_writer *w, const char *key, double v);
int gguf_writer_add_bool(struct gguf_writer *w, const char *key, bool v);
int gguf_writer_add_str(struct gguf_writer *w, const char *key, const char *s);
// String of explicit length (may contain NUL bytes).
int gguf_writer_add_strn(struct gguf_writer *w, const char *key, const char *s, uint64_t len);
// Array of n numeric/bool elements of elem_type, packed little-endian in data (bool: one
// byte each). Not for strings or nested arrays.
int gguf_writer_add_array(struct gguf_writer *w, const char *key, enum gguf_vtype elem_type,
                          const void *data, uint64_t n);
// Array of n strings; lens may be NULL (then strlen of each).
int gguf_writer_add_str_array(struct gguf_writer *w, const char *key, const char *const *strs,
                              const uint64_t *lens, uint64_t n);
// Copies one pair as the reader parsed it (any type; nested arrays, which the reader does
// not keep, fail with -ENOTSUP).
int gguf_writer_copy_kv(struct gguf_writer *w, const struct gguf_kv *kv);

// ---- tensor infos (only before gguf_writer_begin_data) -------------------------------
// Declares the next tensor: n_dims in 1..4, ne[0] a multiple of the type's block size,
// type an enum ferry_type known to ferry. Offsets are assigned back to back, aligned.
int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, uint32_t n_dims,
                           const uint64_t *ne, uint32_t type);
int64_t gguf_writer_n_tensors(const struct gguf_writer *w);
// Byte size of declared tensor i (0 if out of range).
uint64_t gguf_writer_tensor_nbytes(const struct gguf_writer *w, int64_t i);

// ---- data ------------------------------------------------------------------------------
// Writes the header, metadata, tensor infos and the padding up to the data section.
// Blocks on write(). After it, no metadata or tensors may be added.
int gguf_writer_begin_data(struct gguf_writer *w);
// Appends len bytes to the current tensor (the first declared tensor whose bytes are not
// all written). len must not exceed what the current tensor still needs: a tensor's
// bytes never spill into the next one. When a tensor completes, its alignment padding is
// written and the next tensor becomes current. Copies into the writer's buffers; blocks only
// when both buffers are waiting for the disk.
int gguf_writer_write(struct gguf_writer *w, const void *data, uint64_t len);
// Index of the current tensor (== n_tensors once all are written).
int64_t gguf_writer_current(const struct gguf_writer *w);
// Checks that every tensor was written in full, flushes, fdatasyncs, closes and renames
// the temporary file to the final path.
int gguf_writer_finish(struct gguf_writer *w);
// Total bytes written to the file so far.
uint64_t gguf_writer_bytes_written(const struct gguf_writer *w);

#ifdef __cplusplus
}
#endif
