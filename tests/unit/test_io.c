// test_io: the io_uring reader against a file of random bytes: many random unaligned
// spans through the ring (registered and plain buffers), the buffered fallback (forced,
// on first-read EINVAL, and on tmpfs), and every injected fault (EIO, short read, EAGAIN,
// delay) on both the ring and the pread path. Skips (77) where io_uring is unavailable.
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/magic.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "base/base.h"
#include "io/reader.h"
#include "tests/check.h"

#define NBUF   32
#define MAXLEN (300 * 1024)

static uint8_t *g_data; // the file's bytes
static uint64_t g_size;
static struct ferry_rng g_rng;

static int write_file(const char *path, uint64_t size) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return -1;
  ssize_t n = write(fd, g_data, size);
  close(fd);
  return n == (ssize_t)size ? 0 : -1;
}

// A directory on a real (non-tmpfs) filesystem for the O_DIRECT file.
static const char *disk_dir(void) {
  static const char *cands[3];
  cands[0] = getenv("FERRY_BUILD");
  cands[1] = "/var/tmp";
  cands[2] = ".";
  for (int i = 0; i < 3; i++) {
    struct statfs sf;
    if (cands[i] && statfs(cands[i], &sf) == 0 && sf.f_type != TMPFS_MAGIC &&
        access(cands[i], W_OK) == 0)
      return cands[i];
  }
  return NULL;
}

static void rand_span(uint64_t *off, uint64_t *len) {
  uint64_t r = ferry_rng_u64(&g_rng);
  *len = 1 + ferry_rng_u64(&g_rng) % MAXLEN;
  if (r % 8 == 0)
    *off = g_size - *len; // touches the (unaligned) end of the file
  else
    *off = ferry_rng_u64(&g_rng) % (g_size - *len + 1);
}

static bool span_ok(const struct io_req *q) {
  return q->err == 0 && memcmp((uint8_t *)q->dst + q->data_off, g_data + q->off, q->len) == 0;
}

// Reads `rounds` batches of random spans (batch size random 1..NBUF) and compares bytes.
// Half the batches are waited request by request in reverse order, half with wait_all.
static void random_batches(struct io_reader *r, uint8_t *slab, uint64_t slot, bool use_index,
                           int rounds) {
  struct io_req q[NBUF];
  for (int round = 0; round < rounds; round++) {
    int n = 1 + (int)(ferry_rng_u64(&g_rng) % NBUF);
    for (int i = 0; i < n; i++) {
      uint64_t off, len;
      rand_span(&off, &len);
      io_req_init(&q[i], slab + i * slot, use_index ? i : -1, off, len);
      CHECK_EQ(io_read_queue(r, &q[i]), 0);
    }
    CHECK(io_reader_submit(r) >= 0);
    if (round % 3 == 2) {      // poll without blocking until every read is done
      int done = 0, spins = 0; // (the pread path finishes them inside submit)
      for (int i = 0; i < n; i++) done += q[i].state == IO_REQ_DONE;
      while (done < n && spins++ < 100000) {
        done += io_reader_poll(r);
        if (done < n) usleep(10);
      }
      CHECK_EQ(done, n);
      for (int i = 0; i < n; i++) CHECK_EQ(q[i].state, IO_REQ_DONE);
    } else if (round % 2) {
      for (int i = n - 1; i >= 0; i--) CHECK_EQ(io_read_wait(r, &q[i]), 0);
    } else {
      CHECK_EQ(io_reader_wait_all(r), 0);
    }
    for (int i = 0; i < n; i++) {
      CHECK_EQ(q[i].state, IO_REQ_DONE);
      CHECK_EQ(q[i].data_off, q[i].off % IO_ALIGN);
      CHECK(span_ok(&q[i]));
    }
  }
}

static struct io_reader *open_reader(const char *path, bool buffered) {
  struct io_reader *r = NULL;
  struct io_reader_opts o = {.queue_depth = 16, .force_buffered = buffered};
  int rc = io_reader_open(&r, path, &o);
  if (rc) fprintf(stderr, "open failed: %s\n", ferry_errmsg());
  FERRY_ASSERT(rc == 0);
  return r;
}

// Each fault kind on the reader's current path: the faulted read fails or recovers, its
// neighbours in the same batch are unaffected, and the reader stays usable.
static void fault_suite(struct io_reader *r, uint8_t *slab, uint64_t slot, const char *path) {
  struct io_req q[4];
  struct io_stats st0, st1;
  io_reader_stats(r, &st0);

  // EIO on the second read of a batch of four.
  io_fault_clear();
  io_fault_set(IO_FAULT_ERRNO, 2, EIO);
  uint64_t offs[4];
  for (int i = 0; i < 4; i++) {
    uint64_t off, len;
    rand_span(&off, &len);
    offs[i] = off;
    io_req_init(&q[i], slab + i * slot, i, off, len);
    CHECK_EQ(io_read_queue(r, &q[i]), 0);
  }
  CHECK(io_reader_submit(r) >= 0);
  int failed = -1;
  for (int i = 0; i < 4; i++) {
    int rc = io_read_wait(r, &q[i]);
    if (rc) {
      CHECK_EQ(rc, -EIO);
      CHECK_EQ(failed, -1);
      failed = i;
      char want[64];
      snprintf(want, sizeof want, "offset %llu", (unsigned long long)offs[i]);
      const char *msg = ferry_errmsg();
      CHECK(strstr(msg, want) != NULL);
      CHECK(strstr(msg, "errno 5") != NULL);
      CHECK(strstr(msg, path) != NULL);
      snprintf(want, sizeof want, "length %llu", (unsigned long long)q[i].len);
      CHECK(strstr(msg, want) != NULL);
      // Waiting again reports the same failure.
      CHECK_EQ(io_read_wait(r, &q[i]), -EIO);
    } else {
      CHECK(span_ok(&q[i]));
    }
  }
  CHECK(failed >= 0);
  io_reader_stats(r, &st1);
  CHECK_EQ(st1.errors, st0.errors + 1);

  // wait_all reports an EIO too, with its message.
  io_fault_clear();
  io_fault_set(IO_FAULT_ERRNO, 1, EIO);
  io_req_init(&q[0], slab, 0, 4097, 10000);
  CHECK_EQ(io_read_queue(r, &q[0]), 0);
  CHECK_EQ(io_reader_wait_all(r), -EIO);
  CHECK(strstr(ferry_errmsg(), "offset 4097") != NULL);

  // Short read: recovered, bytes equal, one retry. Scribbling makes a lost tail visible.
  for (int arg = 0; arg <= 1; arg++) {
    io_fault_clear();
    io_fault_set(IO_FAULT_SHORT, 1, arg ? 777 : 0);
    io_req_init(&q[0], slab, 0, 12345, 200000);
    io_reader_stats(r, &st0);
    CHECK_EQ(io_read_sync(r, &q[0]), 0);
    CHECK(span_ok(&q[0]));
    io_reader_stats(r, &st1);
    CHECK(st1.retries > st0.retries);
    CHECK_EQ(io_fault_attempts(), 2);
  }

  // EAGAIN twice in a row: retried, recovered.
  io_fault_clear();
  io_fault_set(IO_FAULT_ERRNO, 1, EAGAIN);
  io_fault_set(IO_FAULT_ERRNO, 2, EAGAIN);
  io_req_init(&q[0], slab, 0, 999, 70000);
  CHECK_EQ(io_read_sync(r, &q[0]), 0);
  CHECK(span_ok(&q[0]));
  CHECK_EQ(io_fault_attempts(), 3);

  // A delayed completion still completes correctly.
  io_fault_clear();
  io_fault_set(IO_FAULT_DELAY, 1, 20000);
  io_req_init(&q[0], slab, 0, 5, 5000);
  double t0 = ferry_now_s();
  CHECK_EQ(io_read_sync(r, &q[0]), 0);
  CHECK(ferry_now_s() - t0 >= 0.019);
  CHECK(span_ok(&q[0]));
  io_fault_clear();

  // Still usable after all of it.
  random_batches(r, slab, slot, true, 4);
}

int main(void) {
  struct io_uring probe;
  int prc = io_uring_queue_init(4, &probe, 0);
  if (prc == -ENOSYS || prc == -EPERM) SKIP("io_uring unavailable (%s)", strerror(-prc));
  if (prc == 0) io_uring_queue_exit(&probe);
  const char *dir = disk_dir();
  if (!dir) SKIP("no writable non-tmpfs directory for the O_DIRECT test file");

  ferry_rng_seed(&g_rng, 1234);
  g_size = 8 * 1024 * 1024 + 1234; // not a multiple of 4096: spans cross the end
  g_data = malloc(g_size);
  for (uint64_t i = 0; i < g_size; i++) g_data[i] = (uint8_t)ferry_rng_u64(&g_rng);
  char path[4096];
  snprintf(path, sizeof path, "%s/ferry_test_io_%d.bin", dir, (int)getpid());
  FERRY_ASSERT(write_file(path, g_size) == 0);

  uint64_t slot = io_span_max(MAXLEN);
  CHECK(slot >= io_span_bytes(4095, MAXLEN));
  CHECK_EQ(io_span_bytes(4095, 2), 8192);
  CHECK_EQ(io_span_bytes(4096, 4096), 4096);
  uint8_t *slab = ferry_alloc_aligned(IO_ALIGN, NBUF * slot);
  FERRY_ASSERT(slab);
  struct iovec iov[NBUF];
  for (int i = 0; i < NBUF; i++) iov[i] = (struct iovec){slab + i * slot, slot};

  // 1. The ring with O_DIRECT, registered buffers, then plain buffers.
  struct io_reader *r = open_reader(path, false);
  struct io_stats st;
  io_reader_stats(r, &st);
  // Some filesystems (not tmpfs) still refuse O_DIRECT; the checks that need it then
  // run on the fallback and only the direct-specific assertions are left out.
  const bool direct_fs = st.direct;
  if (!direct_fs)
    fprintf(stderr, "note: O_DIRECT refused in %s; direct-only checks skipped\n", dir);
  CHECK_EQ(io_reader_file_size(r), g_size);
  CHECK_EQ(io_reader_register(r, iov, NBUF), 0);
  CHECK_EQ(io_reader_register(r, iov, NBUF), -EBUSY);
  io_reader_stats(r, &st);
  CHECK(st.registered);
  random_batches(r, slab, slot, true, 40);
  random_batches(r, slab, slot, false, 10);
  io_reader_stats(r, &st);
  CHECK(st.reads > 100);
  CHECK(st.bytes_read > 0 && st.errors == 0);
  CHECK(st.direct == direct_fs);

  // Bad requests: one clear error each, nothing queued.
  struct io_req q;
  io_req_init(&q, slab + 512, -1, 0, 100);
  CHECK_EQ(io_read_queue(r, &q), -EINVAL);
  CHECK(strstr(ferry_errmsg(), "aligned") != NULL);
  io_req_init(&q, slab, -1, g_size - 10, 11);
  CHECK_EQ(io_read_queue(r, &q), -EINVAL);
  CHECK(strstr(ferry_errmsg(), "outside the file") != NULL);
  io_req_init(&q, slab, 0, 100, slot); // span larger than buffer 0
  CHECK_EQ(io_read_queue(r, &q), -EINVAL);
  io_req_init(&q, slab, 0, 0, 0);
  CHECK_EQ(io_read_queue(r, &q), -EINVAL);
  io_req_init(&q, slab, 99, 0, 10);
  CHECK_EQ(io_read_queue(r, &q), -EINVAL);
  CHECK_EQ(io_reader_wait_all(r), 0);

  fault_suite(r, slab, slot, path);
  io_reader_close(r);

  // 2. Registration refused (RLIMIT_MEMLOCK): plain reads, same bytes.
  r = open_reader(path, false);
  io_fault_set(IO_FAULT_REGISTER, 1, 0);
  CHECK_EQ(io_reader_register(r, iov, NBUF), 0);
  io_reader_stats(r, &st);
  CHECK(!st.registered);
  random_batches(r, slab, slot, true, 8);
  io_reader_close(r);
  io_fault_clear();

  // 3. O_DIRECT refused at open (as on some filesystems): buffered fallback.
  io_fault_set(IO_FAULT_OPEN_DIRECT, 1, 0);
  r = open_reader(path, false);
  io_reader_stats(r, &st);
  CHECK(!st.direct);
  CHECK_EQ(io_reader_register(r, iov, NBUF), 0);
  random_batches(r, slab, slot, true, 8);
  io_reader_close(r);
  io_fault_clear();

  // 4. O_DIRECT refused on the first read (EINVAL from the ring): switch to buffered,
  // re-run that read and every other of its batch, announce it in the stats.
  if (direct_fs) {
    r = open_reader(path, false);
    CHECK_EQ(io_reader_register(r, iov, NBUF), 0);
    io_fault_set(IO_FAULT_ERRNO, 1, EINVAL);
    io_fault_set(IO_FAULT_ERRNO, 2, EINVAL);
    {
      struct io_req b[4];
      for (int i = 0; i < 4; i++) {
        uint64_t off, len;
        rand_span(&off, &len);
        io_req_init(&b[i], slab + i * slot, i, off, len);
        CHECK_EQ(io_read_queue(r, &b[i]), 0);
      }
      CHECK_EQ(io_reader_wait_all(r), 0);
      for (int i = 0; i < 4; i++) CHECK(span_ok(&b[i]));
    }
    random_batches(r, slab, slot, true, 6);
    io_reader_stats(r, &st);
    CHECK(!st.direct);
    CHECK_EQ(st.errors, 0);
    io_fault_clear();
    io_reader_close(r);
  }
  // After a successful read, EINVAL is an error, not a reason to fall back.
  r = open_reader(path, false);
  CHECK_EQ(io_reader_register(r, iov, NBUF), 0);
  random_batches(r, slab, slot, true, 1);
  io_fault_set(IO_FAULT_ERRNO, 1, EINVAL);
  io_req_init(&q, slab, 0, 4000, 4000);
  CHECK_EQ(io_read_sync(r, &q), -EINVAL);
  CHECK(strstr(ferry_errmsg(), "errno 22") != NULL);
  io_reader_stats(r, &st);
  CHECK(st.direct == direct_fs);
  io_reader_close(r);
  io_fault_clear();

  // 5. Forced buffered path: data and every fault through pread.
  r = open_reader(path, true);
  io_reader_stats(r, &st);
  CHECK(!st.direct);
  CHECK_EQ(io_reader_register(r, iov, NBUF), 0);
  random_batches(r, slab, slot, true, 10);
  fault_suite(r, slab, slot, path);
  io_reader_close(r);

  // 6. The file shrinks under the reader: a clear end-of-file error on both paths, and a
  // request cannot be queued twice.
  for (int buffered = 0; buffered <= 1; buffered++) {
    char tpath[4200];
    snprintf(tpath, sizeof tpath, "%s.trunc", path);
    FERRY_ASSERT(write_file(tpath, g_size) == 0);
    r = open_reader(tpath, buffered);
    CHECK_EQ(io_reader_wait_all(r), 0);
    FERRY_ASSERT(truncate(tpath, 1 << 20) == 0);
    io_req_init(&q, slab, -1, (1 << 20) - 100, 50000);
    CHECK_EQ(io_read_queue(r, &q), 0);
    CHECK_EQ(io_read_queue(r, &q), -EBUSY);
    CHECK_EQ(io_read_wait(r, &q), -EIO);
    CHECK(strstr(ferry_errmsg(), "end of the file") != NULL);
    // The end now falls inside the aligned span, at an unaligned place.
    FERRY_ASSERT(truncate(tpath, (1 << 20) + 50) == 0);
    io_req_init(&q, slab, -1, (1 << 20) - 10, 70000);
    CHECK_EQ(io_read_sync(r, &q), -EIO);
    CHECK(strstr(ferry_errmsg(), "end of the file") != NULL);
    io_req_init(&q, slab, -1, 1000, 5000); // the part still there reads fine
    CHECK_EQ(io_read_sync(r, &q), 0);
    CHECK(span_ok(&q));
    io_reader_close(r);
    unlink(tpath);
  }

  // 7. A missing file: one clear error.
  struct io_reader *bad = NULL;
  CHECK_EQ(io_reader_open(&bad, "/nonexistent/ferry.gguf", NULL), -ENOENT);
  CHECK(strstr(ferry_errmsg(), "/nonexistent/ferry.gguf") != NULL);
  CHECK(bad == NULL);
  io_reader_close(NULL);
  unlink(path);

  // 8. tmpfs (/dev/shm): whatever O_DIRECT does there (refused before Linux 6.6), the
  // bytes must be right and the stats must say which path ran.
  struct statfs sf;
  if (statfs("/dev/shm", &sf) == 0 && sf.f_type == TMPFS_MAGIC && access("/dev/shm", W_OK) == 0) {
    snprintf(path, sizeof path, "/dev/shm/ferry_test_io_%d.bin", (int)getpid());
    FERRY_ASSERT(write_file(path, g_size) == 0);
    r = open_reader(path, false);
    CHECK_EQ(io_reader_register(r, iov, NBUF), 0);
    random_batches(r, slab, slot, true, 10);
    io_reader_stats(r, &st);
    fprintf(stderr, "tmpfs: direct=%d\n", st.direct);
    io_reader_close(r);
    unlink(path);
  } else {
    fprintf(stderr, "note: no tmpfs at /dev/shm, tmpfs part skipped\n");
  }

  ferry_free_aligned(slab);
  free(g_data);
  CHECK_DONE();
}
