// io/reader.h: an io_uring reader over one file, opened with O_DIRECT so expert reads
// never grow the page cache. It reads arbitrary (offset, length) ranges by reading their
// 4096-aligned superset into caller-owned, 4096-aligned memory and telling the caller
// where the wanted bytes start. Reads are queued, submitted in one batch and completed
// one by one or all together. Where O_DIRECT is refused (tmpfs, some filesystems) it
// falls back to buffered pread + posix_fadvise(DONTNEED), once announced with log_warn
// and reported in the stats (`direct` false).
//
// Ownership: io/ never allocates payloads. The caller owns the destination memory and
// the struct io_req records (typically embedded in its cache slots) and keeps both alive
// until the request is done (io_read_wait / io_reader_wait_all).
// Threads: one reader is used by one thread at a time (the engine's main thread).
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IO_ALIGN 4096u // O_DIRECT offset/length/address alignment used everywhere

// Bytes of the aligned span that holds [off, off+len): what a destination must hold.
static inline uint64_t io_span_bytes(uint64_t off, uint64_t len) {
  uint64_t a = off - off % IO_ALIGN;
  uint64_t b = (off + len + IO_ALIGN - 1) / IO_ALIGN * IO_ALIGN;
  return b - a;
}
// Upper bound of io_span_bytes(off, len) over every offset: size buffers with this
// when the offset is not known yet.
static inline uint64_t io_span_max(uint64_t len) {
  return (len + IO_ALIGN - 1) / IO_ALIGN * IO_ALIGN + IO_ALIGN;
}

struct io_reader;

struct io_reader_opts {
  uint32_t queue_depth; // submission ring entries; 0 -> 64
  bool force_buffered;  // skip O_DIRECT (tests, benchmarks of the fallback)
};

// One read. The caller fills the "in" fields (or uses io_req_init), queues it, and reads
// the "out" fields once it is done. Do not touch the private fields.
// QUEUED and INFLIGHT both mean outstanding (QUEUED: waiting for the synchronous path;
// INFLIGHT: in the ring, or being read); only DONE requests may be reused or freed.
enum io_req_state { IO_REQ_IDLE = 0, IO_REQ_QUEUED, IO_REQ_INFLIGHT, IO_REQ_DONE };
struct io_req {
  // in
  void *dst;         // 4096-aligned; receives io_span_bytes(off, len) bytes
  int buf_index;     // registered buffer containing the whole span, or -1 (plain read)
  uint64_t off, len; // the wanted file range (any alignment), len > 0
  // out (valid when state == IO_REQ_DONE)
  uint64_t data_off; // byte `off` of the file is at (char *)dst + data_off (= off % 4096)
  int err;           // 0, or a negative errno (message from io_read_wait)
  enum io_req_state state;
  // private
  uint64_t span_off, span_len, need, done, attempt_at;
  uint32_t retries, stalls;
  bool eof, attempt_direct;
  struct io_req *next;
};

static inline void io_req_init(struct io_req *q, void *dst, int buf_index, uint64_t off,
                               uint64_t len) {
  *q = (struct io_req){.dst = dst, .buf_index = buf_index, .off = off, .len = len};
}

struct io_stats {
  uint64_t bytes_read; // bytes transferred from the file (aligned spans, incl. padding)
  uint64_t reads;      // requests completed successfully
  uint64_t retries;    // resubmissions after short reads or EAGAIN/EINTR
  uint64_t errors;     // requests that failed
  double read_s;       // wall time spent blocked waiting for reads
  bool direct;         // O_DIRECT in use (false after the buffered fallback)
  bool registered;     // destination buffers registered with the ring (fixed reads)
};

// Opens `path` for reading. opts may be NULL. Blocks briefly (open + ring setup).
// Fails with a message naming the file: -ENOENT/-EACCES etc. from open, or the ring's
// error (-ENOSYS/-EPERM where io_uring is unavailable or disabled).
int io_reader_open(struct io_reader **out, const char *path, const struct io_reader_opts *opts);
// Waits for every outstanding read, then closes. NULL-safe.
void io_reader_close(struct io_reader *r);

const char *io_reader_path(const struct io_reader *r);
uint64_t io_reader_file_size(const struct io_reader *r);
void io_reader_stats(const struct io_reader *r, struct io_stats *out);

// Registers the caller's destination buffers once (io_uring_register_buffers), so reads
// into them are fixed reads that skip per-read page pinning. Each base and length must
// be 4096-aligned; the memory stays the caller's and must outlive the reader or a later
// io_reader_unregister. Only one set at a time; call with no reads outstanding.
// If the kernel refuses (RLIMIT_MEMLOCK for non-root users), it warns once and returns
// 0: reads then ignore buf_index and run as plain reads (stats.registered false).
// Returns -EINVAL on bad arguments, -EBUSY if a set is already registered.
int io_reader_register(struct io_reader *r, const struct iovec *bufs, uint32_t n);
void io_reader_unregister(struct io_reader *r);

// Queues one read (does not submit unless the ring is full). Validates the request:
// -EINVAL for a misaligned dst, zero length, a range past the end of the file, or a span
// outside buf_index's registered buffer; -EBUSY if q is already queued or in flight.
int io_read_queue(struct io_reader *r, struct io_req *q);
// Submits everything queued in one io_uring_submit. Never blocks on the reads. In the
// buffered fallback the reads happen here, synchronously. Returns the count submitted
// or a negative error.
int io_reader_submit(struct io_reader *r);
// Blocks (io_uring_wait_cqe, no busy-wait) until q is done, reaping other completions on
// the way. Submits pending reads first. Returns 0, or q->err with a message naming the
// file, offset, length and errno. Short reads and EAGAIN/EINTR are retried inside; an
// error fails only this request and the reader stays usable. Calling it again on a done
// request returns the same result.
int io_read_wait(struct io_reader *r, struct io_req *q);
// Blocks until no read is outstanding. Returns 0 or the error of the first failed
// request it completed (with its message); check each request's err for the others.
int io_reader_wait_all(struct io_reader *r);
// Reaps completions that are already available without blocking. Returns how many
// requests finished.
int io_reader_poll(struct io_reader *r);
// Queue + submit + wait.
int io_read_sync(struct io_reader *r, struct io_req *q);

// ---- fault injection (tests only; process-wide, not thread-safe) ----
// Like SQLite's I/O error tests: every read attempt (an io_uring completion or a pread in
// the fallback) passes through a filter, and an armed fault rewrites the nth attempt
// counted from the io_fault_set call (nth = 1 is the next attempt).
enum io_fault_kind {
  IO_FAULT_ERRNO = 1,   // the attempt fails with -arg (EIO, EAGAIN, EINVAL, ...)
  IO_FAULT_SHORT,       // the attempt returns only arg bytes (res/2 if arg <= 0); the
                        // bytes past it are scribbled so a missing retry shows up
  IO_FAULT_DELAY,       // the attempt's completion is delayed by arg microseconds
  IO_FAULT_OPEN_DIRECT, // the next O_DIRECT open fails with EINVAL (nth ignored)
  IO_FAULT_REGISTER,    // the next buffer registration fails with ENOMEM (nth ignored)
};
// Arms one fault (up to 16 at a time); each fires once.
void io_fault_set(enum io_fault_kind kind, uint64_t nth, int64_t arg);
// Disarms every fault and resets the attempt counter.
void io_fault_clear(void);
// Read attempts seen since the last io_fault_clear.
uint64_t io_fault_attempts(void);

#ifdef __cplusplus
}
#endif
