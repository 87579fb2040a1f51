// io/reader.c: the io_uring reader (see reader.h). Two paths share one completion
// handler: the ring path (O_DIRECT fd, reads prepared as SQEs, results from CQEs) and
// the synchronous path (pread), used when O_DIRECT is refused (buffered fallback, with
// posix_fadvise(DONTNEED) so the page cache does not grow) or when io_uring itself is
// unavailable (seccomp'd containers). Every attempt's result passes through the fault
// filter first, so tests drive both paths through the same error handling.
#include "io/reader.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"

#define IO_MAX_RETRIES 64           // EAGAIN/EINTR/no-progress retries per request
#define IO_MAX_ATTEMPT (1ull << 30) // bytes per attempt (kernel caps one read near 2 GiB)

struct io_reader {
  char *path;
  int fd;        // O_DIRECT fd on the ring path; the buffered fd after the fallback
  bool uring_ok; // ring initialised
  bool use_ring; // reads go through the ring (uring_ok && direct)
  bool direct;
  bool any_ok; // a read has succeeded: later EINVALs are errors, not "no O_DIRECT"
  struct io_uring ring;
  uint32_t cq_entries;
  uint32_t inflight; // requests with an SQE prepared or submitted and no final CQE
  struct io_req *pend_head, *pend_tail; // synchronous path queue
  struct io_req *first_failed;          // first request that failed since wait_all began
  struct iovec *bufs;
  uint32_t n_bufs;
  uint64_t file_size;
  struct io_stats st;
};

// ---- fault injection ----
struct io_fault {
  enum io_fault_kind kind;
  uint64_t at; // attempt number that fires
  int64_t arg;
  bool armed;
};
static struct io_fault g_faults[16];
static uint64_t g_attempts;

void io_fault_set(enum io_fault_kind kind, uint64_t nth, int64_t arg) {
  for (int i = 0; i < 16; i++) {
    if (g_faults[i].armed) continue;
    g_faults[i] = (struct io_fault){kind, g_attempts + (nth ? nth : 1), arg, true};
    return;
  }
  FERRY_ASSERT(!"io_fault_set: more than 16 faults armed");
}

void io_fault_clear(void) {
  memset(g_faults, 0, sizeof g_faults);
  g_attempts = 0;
}

uint64_t io_fault_attempts(void) { return g_attempts; }

// One-shot faults that are not tied to a read attempt (open, registration).
static bool fault_take(enum io_fault_kind kind) {
  for (int i = 0; i < 16; i++) {
    if (g_faults[i].armed && g_faults[i].kind == kind) {
      g_faults[i].armed = false;
      return true;
    }
  }
  return false;
}

// Rewrites one attempt's result. buf is where this attempt's bytes landed.
static int fault_filter(int res, void *buf) {
  uint64_t n = ++g_attempts;
  for (int i = 0; i < 16; i++) {
    struct io_fault *f = &g_faults[i];
    if (!f->armed || f->at != n) continue;
    if (f->kind != IO_FAULT_ERRNO && f->kind != IO_FAULT_SHORT && f->kind != IO_FAULT_DELAY)
      continue;
    f->armed = false;
    if (f->kind == IO_FAULT_ERRNO) {
      res = -(int)f->arg;
    } else if (f->kind == IO_FAULT_SHORT) {
      if (res > 1) {
        int keep = (f->arg > 0 && f->arg < res) ? (int)f->arg : res / 2;
        memset((char *)buf + keep, 0xA5, (size_t)(res - keep));
        res = keep;
      }
    } else {
      usleep((useconds_t)f->arg);
    }
  }
  return res;
}

// ---- open / close ----
int io_reader_open(struct io_reader **out, const char *path, const struct io_reader_opts *opts) {
  *out = NULL;
  struct io_reader_opts o = opts ? *opts : (struct io_reader_opts){0};
  if (!o.queue_depth) o.queue_depth = 64;
  struct io_reader *r = calloc(1, sizeof *r);
  if (!r) return ferry_fail(-ENOMEM, "out of memory");
  r->fd = -1;
  r->path = strdup(path);
  if (!r->path) {
    free(r);
    return ferry_fail(-ENOMEM, "out of memory");
  }
  int rc;
  if (!o.force_buffered) {
    if (fault_take(IO_FAULT_OPEN_DIRECT)) {
      errno = EINVAL;
      r->fd = -1;
    } else {
      r->fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    }
    if (r->fd >= 0) {
      r->direct = true;
    } else if (errno != EINVAL) {
      rc = -errno;
      ferry_fail(rc, "cannot open %s: %s", path, strerror(errno));
      goto fail;
    }
  }
  if (r->fd < 0) {
    r->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0) {
      rc = -errno;
      ferry_fail(rc, "cannot open %s: %s", path, strerror(errno));
      goto fail;
    }
    if (!o.force_buffered)
      log_warn(
          "%s: O_DIRECT refused by the filesystem; using buffered reads (page cache "
          "is dropped after each read)",
          path);
  }
  struct stat sb;
  if (fstat(r->fd, &sb) != 0) {
    rc = -errno;
    ferry_fail(rc, "cannot stat %s: %s", path, strerror(errno));
    goto fail;
  }
  r->file_size = (uint64_t)sb.st_size;

  struct io_uring_params p = {0};
  rc = io_uring_queue_init_params(o.queue_depth, &r->ring, &p);
  if (rc < 0) {
    // Containers often block io_uring; synchronous O_DIRECT preads still avoid the page
    // cache, so keep going but say so.
    log_warn("%s: io_uring unavailable (%s); reads fall back to synchronous pread", path,
             strerror(-rc));
  } else {
    r->uring_ok = true;
    r->cq_entries = p.cq_entries;
  }
  r->use_ring = r->uring_ok && r->direct;
  r->st.direct = r->direct;
  *out = r;
  return 0;
fail:
  if (r->fd >= 0) close(r->fd);
  free(r->path);
  free(r);
  return rc;
}

void io_reader_close(struct io_reader *r) {
  if (!r) return;
  // Closing runs on error paths too: keep the message that explains the failure.
  char saved[1024];
  snprintf(saved, sizeof saved, "%s", ferry_errmsg());
  io_reader_wait_all(r);
  ferry_fail(0, "%s", saved);
  io_reader_unregister(r);
  if (r->uring_ok) io_uring_queue_exit(&r->ring);
  if (r->fd >= 0) close(r->fd);
  free(r->bufs);
  free(r->path);
  free(r);
}

const char *io_reader_path(const struct io_reader *r) { return r->path; }
uint64_t io_reader_file_size(const struct io_reader *r) { return r->file_size; }
void io_reader_stats(const struct io_reader *r, struct io_stats *out) { *out = r->st; }

// ---- buffers ----
int io_reader_register(struct io_reader *r, const struct iovec *bufs, uint32_t n) {
  if (r->bufs) return ferry_fail(-EBUSY, "io: buffers already registered for %s", r->path);
  if (r->inflight || r->pend_head)
    return ferry_fail(-EBUSY, "io: cannot register buffers with reads outstanding");
  if (!n) return ferry_fail(-EINVAL, "io: no buffers to register");
  for (uint32_t i = 0; i < n; i++) {
    if ((uintptr_t)bufs[i].iov_base % IO_ALIGN || bufs[i].iov_len % IO_ALIGN || !bufs[i].iov_len)
      return ferry_fail(-EINVAL, "io: buffer %u (%p, %zu bytes) is not 4096-aligned", i,
                        bufs[i].iov_base, bufs[i].iov_len);
  }
  r->bufs = malloc(n * sizeof *bufs);
  if (!r->bufs) return ferry_fail(-ENOMEM, "out of memory");
  memcpy(r->bufs, bufs, n * sizeof *bufs);
  r->n_bufs = n;
  r->st.registered = false;
  if (!r->use_ring) return 0; // preads gain nothing from pinned registration
  int rc = fault_take(IO_FAULT_REGISTER) ? -ENOMEM : io_uring_register_buffers(&r->ring, bufs, n);
  if (rc < 0) {
    log_warn(
        "%s: io_uring_register_buffers refused (%s); using plain reads (raise "
        "RLIMIT_MEMLOCK, ulimit -l, for fixed buffers)",
        r->path, strerror(-rc));
    return 0;
  }
  r->st.registered = true;
  return 0;
}

void io_reader_unregister(struct io_reader *r) {
  if (!r || !r->bufs) return;
  FERRY_ASSERT(!r->inflight && !r->pend_head);
  if (r->st.registered) io_uring_unregister_buffers(&r->ring);
  r->st.registered = false;
  free(r->bufs);
  r->bufs = NULL;
  r->n_bufs = 0;
}

// ---- completion handling (both paths) ----
enum act { ACT_DONE, ACT_RETRY, ACT_FALLBACK };

static void finish(struct io_reader *r, struct io_req *q, int err) {
  q->err = err;
  q->state = IO_REQ_DONE;
  if (err) {
    r->st.errors++;
    if (!r->first_failed) r->first_failed = q;
  } else {
    r->st.reads++;
  }
}

// Decides what an attempt's result means for q. res is bytes or -errno.
static enum act handle_result(struct io_reader *r, struct io_req *q, int res) {
  if (res > 0) {
    r->st.bytes_read += (uint64_t)res;
    r->any_ok = true;
    q->done += (uint64_t)res;
    if (q->done >= q->need) {
      finish(r, q, 0);
      return ACT_DONE;
    }
    r->st.retries++;
    // O_DIRECT continues from an aligned position; the bytes before it are kept.
    if (r->direct) q->done -= q->done % IO_ALIGN;
    // No aligned progress twice in a row: an unaligned end of file inside the span.
    if (q->done <= q->attempt_at && ++q->stalls >= 2) {
      q->eof = true;
      finish(r, q, -EIO);
      return ACT_DONE;
    }
    if (++q->retries > IO_MAX_RETRIES * 16) {
      finish(r, q, -EIO);
      return ACT_DONE;
    }
    return ACT_RETRY;
  }
  if (res == 0) { // end of file before the wanted bytes (file truncated under us)
    q->eof = true;
    finish(r, q, -EIO);
    return ACT_DONE;
  }
  if (res == -EAGAIN || res == -EINTR) {
    r->st.retries++;
    if (++q->retries > IO_MAX_RETRIES) {
      finish(r, q, res);
      return ACT_DONE;
    }
    return ACT_RETRY;
  }
  // EINVAL on an O_DIRECT attempt before any read succeeded: the filesystem refuses
  // O_DIRECT (requests are validated for alignment before they are queued).
  if (res == -EINVAL && q->attempt_direct && !r->any_ok) return ACT_FALLBACK;
  finish(r, q, res);
  return ACT_DONE;
}

static void pend_push(struct io_reader *r, struct io_req *q) {
  q->next = NULL;
  q->state = IO_REQ_QUEUED;
  if (r->pend_tail)
    r->pend_tail->next = q;
  else
    r->pend_head = q;
  r->pend_tail = q;
}

// O_DIRECT was refused on the first read: reopen buffered, route everything to pread.
static int switch_to_buffered(struct io_reader *r) {
  if (!r->direct) return 0;
  int fd = open(r->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return ferry_fail(-errno, "cannot reopen %s without O_DIRECT: %s", r->path, strerror(errno));
  log_warn(
      "%s: O_DIRECT reads refused (EINVAL); using buffered reads (page cache is "
      "dropped after each read)",
      r->path);
  // Reads already in the ring hold their own reference to the O_DIRECT file, so the
  // buffered file can take over the same descriptor number at once.
  if (dup3(fd, r->fd, O_CLOEXEC) < 0) {
    int e = errno;
    close(fd);
    return ferry_fail(-e, "cannot reopen %s: %s", r->path, strerror(e));
  }
  close(fd);
  r->direct = false;
  r->use_ring = false;
  r->st.direct = false;
  return 0;
}

// Runs the synchronous queue to completion.
static void run_pending(struct io_reader *r) {
  while (r->pend_head) {
    struct io_req *q = r->pend_head;
    r->pend_head = q->next;
    if (!r->pend_head) r->pend_tail = NULL;
    q->next = NULL;
    q->state = IO_REQ_INFLIGHT;
    for (;;) {
      uint64_t want = q->span_len - q->done;
      if (want > IO_MAX_ATTEMPT) want = IO_MAX_ATTEMPT;
      char *buf = (char *)q->dst + q->done;
      q->attempt_direct = r->direct;
      q->attempt_at = q->done;
      double t0 = ferry_now_s();
      ssize_t n = pread(r->fd, buf, want, (off_t)(q->span_off + q->done));
      int res = n < 0 ? -errno : (int)n;
      r->st.read_s += ferry_now_s() - t0;
      res = fault_filter(res, buf);
      enum act a = handle_result(r, q, res);
      if (a == ACT_DONE) break;
      if (a == ACT_FALLBACK && switch_to_buffered(r) < 0) {
        finish(r, q, -EINVAL);
        break;
      }
    }
    if (!r->direct)
      posix_fadvise(r->fd, (off_t)q->span_off, (off_t)q->span_len, POSIX_FADV_DONTNEED);
  }
}

static int ring_submit(struct io_reader *r);
static int ring_reap(struct io_reader *r, bool block, int *finished);

// Prepares the SQE for q's next attempt (from q->done on).
static int ring_prep(struct io_reader *r, struct io_req *q) {
  // Keep completions within the CQ ring so none has to wait in the overflow list.
  while (r->inflight >= r->cq_entries) {
    int rc = ring_reap(r, true, NULL);
    if (rc < 0) return rc;
  }
  struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
  if (!sqe) {
    int rc = ring_submit(r);
    if (rc < 0) return rc;
    sqe = io_uring_get_sqe(&r->ring);
    FERRY_ASSERT(sqe);
  }
  uint64_t want = q->span_len - q->done;
  if (want > IO_MAX_ATTEMPT) want = IO_MAX_ATTEMPT;
  char *buf = (char *)q->dst + q->done;
  uint64_t off = q->span_off + q->done;
  if (r->st.registered && q->buf_index >= 0)
    io_uring_prep_read_fixed(sqe, r->fd, buf, (unsigned)want, off, q->buf_index);
  else
    io_uring_prep_read(sqe, r->fd, buf, (unsigned)want, off);
  io_uring_sqe_set_data(sqe, q);
  q->attempt_direct = r->direct;
  q->attempt_at = q->done;
  q->state = IO_REQ_INFLIGHT;
  r->inflight++;
  return 0;
}

static int ring_submit(struct io_reader *r) {
  int total = 0;
  while (io_uring_sq_ready(&r->ring)) {
    int rc = io_uring_submit(&r->ring);
    if (rc == -EINTR) continue;
    if (rc == -EAGAIN || rc == -EBUSY) { // kernel out of resources: make room, retry
      if (r->inflight > io_uring_sq_ready(&r->ring)) {
        rc = ring_reap(r, true, NULL);
        if (rc < 0) return rc;
        continue;
      }
      usleep(100);
      continue;
    }
    if (rc < 0) return ferry_fail(rc, "io_uring_submit on %s: %s", r->path, strerror(-rc));
    total += rc;
  }
  return total;
}

// Takes one completion (waiting for it if block) and acts on it.
static int ring_reap(struct io_reader *r, bool block, int *finished) {
  struct io_uring_cqe *cqe = NULL;
  int rc;
  if (block) {
    if (io_uring_sq_ready(&r->ring)) {
      rc = ring_submit(r);
      if (rc < 0) return rc;
    }
    double t0 = ferry_now_s();
    do rc = io_uring_wait_cqe(&r->ring, &cqe);
    while (rc == -EINTR);
    r->st.read_s += ferry_now_s() - t0;
  } else {
    rc = io_uring_peek_cqe(&r->ring, &cqe);
    if (rc == -EAGAIN) return 0;
  }
  if (rc < 0) return ferry_fail(rc, "io_uring_wait_cqe on %s: %s", r->path, strerror(-rc));
  struct io_req *q = io_uring_cqe_get_data(cqe);
  int res = cqe->res;
  io_uring_cqe_seen(&r->ring, cqe);
  FERRY_ASSERT(q && r->inflight > 0);
  r->inflight--;
  res = fault_filter(res, (char *)q->dst + q->done);
  enum act a = handle_result(r, q, res);
  if (a == ACT_RETRY) {
    if (r->use_ring) {
      rc = ring_prep(r, q);
      if (rc < 0) {
        finish(r, q, rc);
        return rc;
      }
    } else {
      pend_push(r, q);
    }
  } else if (a == ACT_FALLBACK) {
    rc = switch_to_buffered(r);
    if (rc < 0)
      finish(r, q, -EINVAL);
    else
      pend_push(r, q);
  }
  if (q->state == IO_REQ_DONE && finished) (*finished)++;
  return 1;
}

// ---- public read API ----
int io_read_queue(struct io_reader *r, struct io_req *q) {
  if (q->state == IO_REQ_QUEUED || q->state == IO_REQ_INFLIGHT)
    return ferry_fail(-EBUSY, "io: request for %s offset %llu is already outstanding", r->path,
                      (unsigned long long)q->off);
  uint64_t end;
  if (!q->len || ferry_add_u64(q->off, q->len, &end) || end > r->file_size)
    return ferry_fail(-EINVAL,
                      "io: read of %s at offset %llu length %llu is outside the file "
                      "(%llu bytes)",
                      r->path, (unsigned long long)q->off, (unsigned long long)q->len,
                      (unsigned long long)r->file_size);
  if (!q->dst || (uintptr_t)q->dst % IO_ALIGN)
    return ferry_fail(-EINVAL, "io: destination %p is not 4096-aligned", q->dst);
  q->span_off = q->off - q->off % IO_ALIGN;
  q->span_len = io_span_bytes(q->off, q->len);
  q->need = end - q->span_off;
  q->data_off = q->off - q->span_off;
  if (q->buf_index >= 0) {
    if (!r->bufs || (uint32_t)q->buf_index >= r->n_bufs)
      return ferry_fail(-EINVAL, "io: buffer index %d is not registered", q->buf_index);
    const struct iovec *b = &r->bufs[q->buf_index];
    uintptr_t lo = (uintptr_t)b->iov_base, d = (uintptr_t)q->dst;
    if (d < lo || d + q->span_len > lo + b->iov_len)
      return ferry_fail(-EINVAL, "io: span of %llu bytes at %p is outside registered buffer %d",
                        (unsigned long long)q->span_len, q->dst, q->buf_index);
  }
  q->err = 0;
  q->done = 0;
  q->retries = q->stalls = 0;
  q->eof = false;
  q->next = NULL;
  if (!r->use_ring) {
    pend_push(r, q);
    return 0;
  }
  return ring_prep(r, q);
}

int io_reader_submit(struct io_reader *r) {
  int n = 0;
  if (r->uring_ok && io_uring_sq_ready(&r->ring)) {
    n = ring_submit(r);
    if (n < 0) return n;
  }
  if (r->pend_head) {
    for (struct io_req *q = r->pend_head; q; q = q->next) n++;
    run_pending(r);
  }
  return n;
}

static int report(struct io_reader *r, const struct io_req *q) {
  if (!q->err) return 0;
  if (q->eof)
    return ferry_fail(q->err,
                      "read of %s at offset %llu length %llu hit the end of the file "
                      "(%llu bytes) after %llu bytes",
                      r->path, (unsigned long long)q->off, (unsigned long long)q->len,
                      (unsigned long long)r->file_size, (unsigned long long)q->done);
  return ferry_fail(q->err, "read of %s at offset %llu length %llu failed: %s (errno %d)", r->path,
                    (unsigned long long)q->off, (unsigned long long)q->len, strerror(-q->err),
                    -q->err);
}

// One step towards progress: wait for a ring completion, else drain the synchronous
// queue. The ring goes first so that, after a switch to the buffered fallback, every
// O_DIRECT read still in the ring has landed (and been re-queued) before preads start.
static int step(struct io_reader *r, int *finished) {
  if (!r->inflight) {
    FERRY_ASSERT(r->pend_head);
    run_pending(r);
    return 0;
  }
  int rc = ring_reap(r, true, finished);
  return rc < 0 ? rc : 0;
}

int io_read_wait(struct io_reader *r, struct io_req *q) {
  if (q->state == IO_REQ_IDLE)
    return ferry_fail(-EINVAL, "io: waiting for a read that was never queued");
  while (q->state != IO_REQ_DONE) {
    int rc = step(r, NULL);
    if (rc < 0) return rc;
  }
  return report(r, q);
}

int io_reader_wait_all(struct io_reader *r) {
  int ring_err = 0;
  r->first_failed = NULL;
  while (r->pend_head || r->inflight) {
    int rc = step(r, NULL);
    if (rc < 0) { // the ring itself failed; requests keep their own state
      ring_err = rc;
      break;
    }
  }
  if (r->first_failed) {
    struct io_req *q = r->first_failed;
    r->first_failed = NULL;
    return report(r, q);
  }
  return ring_err;
}

int io_reader_poll(struct io_reader *r) {
  int finished = 0;
  if (r->pend_head) {
    for (struct io_req *q = r->pend_head; q; q = q->next) finished++;
    run_pending(r);
  }
  if (r->uring_ok) {
    if (io_uring_sq_ready(&r->ring) && ring_submit(r) < 0) return finished;
    while (r->inflight && ring_reap(r, false, &finished) > 0) {}
  }
  return finished;
}

int io_read_sync(struct io_reader *r, struct io_req *q) {
  int rc = io_read_queue(r, q);
  if (rc < 0) return rc;
  return io_read_wait(r, q);
}
