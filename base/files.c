// base/files.c: capped input reads and atomic output files (see files.h).
#include "base/files.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"

int ferry_read_file(const char *path, uint64_t max_bytes, const char *what, char **out,
                    size_t *len) {
  *out = NULL, *len = 0;
  bool std_in = !strcmp(path, "-");
  int fd = std_in ? 0 : open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ferry_fail(-errno, "cannot open %s '%s': %s", what, path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap + 1);
  int rc = buf ? 0 : ferry_fail(-ENOMEM, "out of memory reading %s '%s'", what, path);
  while (!rc) {
    if (n == cap) {
      if (cap >= max_bytes) {
        char lim[32];
        ferry_format_size(max_bytes, lim, sizeof lim);
        rc = ferry_fail(-EFBIG, "%s '%s' is larger than %s", what, path, lim);
        break;
      }
      size_t ncap = cap * 2 > max_bytes ? (size_t)max_bytes : cap * 2;
      char *nb = realloc(buf, ncap + 1);
      if (!nb) {
        rc = ferry_fail(-ENOMEM, "out of memory reading %s '%s'", what, path);
        break;
      }
      buf = nb, cap = ncap;
    }
    ssize_t r = read(fd, buf + n, cap - n);
    if (r < 0) {
      if (errno == EINTR) continue;
      rc = ferry_fail(-errno, "cannot read %s '%s': %s", what, path, strerror(errno));
    } else if (r == 0) {
      break;
    } else {
      n += (size_t)r;
    }
  }
  if (!std_in) close(fd);
  if (rc) {
    free(buf);
    return rc;
  }
  buf[n] = 0;
  *out = buf, *len = n;
  return 0;
}

// ---- signal cleanup registry ------------------------------------------------------------
#define OUT_SLOTS    8
#define OUT_PATH_MAX 4096
static char g_tmp[OUT_SLOTS][OUT_PATH_MAX];
static atomic_int g_used[OUT_SLOTS]; // 0 free, 1 being filled, 2 registered

static int registry_add(const char *tmp) {
  if (strlen(tmp) >= OUT_PATH_MAX) return -1;
  for (int i = 0; i < OUT_SLOTS; i++) {
    int want = 0;
    if (atomic_compare_exchange_strong(&g_used[i], &want, 1)) {
      memcpy(g_tmp[i], tmp, strlen(tmp) + 1);
      atomic_store(&g_used[i], 2);
      return i;
    }
  }
  return -1; // more than OUT_SLOTS outputs at once: written, just not cleaned on a signal
}

static void registry_remove(int slot) {
  if (slot >= 0) atomic_store(&g_used[slot], 0);
}

static void on_signal(int sig) {
  for (int i = 0; i < OUT_SLOTS; i++)
    if (atomic_load(&g_used[i]) == 2) unlink(g_tmp[i]); // async-signal-safe
  signal(sig, SIG_DFL);
  raise(sig);
}

void ferry_outfile_cleanup_on_signals(void) {
  static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
    struct sigaction sa = {0}, old;
    // a signal the caller chose to ignore (nohup, a shell's background job) stays ignored
    if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(sigs[i], &sa, NULL);
  }
}

// ---- outputs --------------------------------------------------------------------------
static int check_target(const char *path, const char *what) {
  struct stat st;
  if (lstat(path, &st) != 0) {
    if (errno == ENOENT) return 0;
    return ferry_fail(-errno, "cannot write %s '%s': %s", what, path, strerror(errno));
  }
  if (S_ISREG(st.st_mode)) return 0;
  const char *kind = S_ISDIR(st.st_mode)    ? "a directory"
                     : S_ISLNK(st.st_mode)  ? "a symbolic link"
                     : S_ISCHR(st.st_mode)  ? "a character device"
                     : S_ISBLK(st.st_mode)  ? "a block device"
                     : S_ISFIFO(st.st_mode) ? "a FIFO"
                                            : "not a regular file";
  return ferry_fail(-EEXIST,
                    "refusing to write %s '%s': it exists and is %s (give the path of a new or "
                    "regular file)",
                    what, path, kind);
}

static int make_tmp(struct ferry_outfile *o, const char *path, int flags, const char *what) {
  static atomic_uint counter;
  size_t n = strlen(path) + 48;
  for (int attempt = 0; attempt < 100; attempt++) {
    free(o->tmp);
    o->tmp = malloc(n);
    if (!o->tmp) return ferry_fail(-ENOMEM, "out of memory");
    snprintf(o->tmp, n, "%s.%ld-%u.tmp", path, (long)getpid(), atomic_fetch_add(&counter, 1));
    o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | flags, 0644);
    if (o->fd >= 0) return 0;
    if (errno != EEXIST) break;
  }
  int e = errno;
  // Some filesystems create the file before refusing O_DIRECT; the name is ours alone.
  if (flags & O_DIRECT) unlink(o->tmp);
  free(o->tmp);
  o->tmp = NULL;
  return ferry_fail(-e, "cannot write %s '%s': %s", what, path, strerror(e));
}

int ferry_outfile_check(const char *path, const char *what) {
  if (!path || !*path) return ferry_fail(-EINVAL, "empty path for the %s", what);
  int rc = check_target(path, what);
  if (rc) return rc;
  struct ferry_outfile o = {.fd = -1, .slot = -1};
  if ((rc = make_tmp(&o, path, 0, what))) return rc;
  close(o.fd);
  unlink(o.tmp);
  free(o.tmp);
  return 0;
}

int ferry_outfile_open(struct ferry_outfile *o, const char *path, int extra_flags, const char *what,
                       bool *direct) {
  memset(o, 0, sizeof *o);
  o->fd = -1, o->slot = -1;
  if (direct) *direct = false;
  if (!path || !*path) return ferry_fail(-EINVAL, "empty path for the %s", what);
  int rc = check_target(path, what);
  if (rc) return rc;
  o->path = strdup(path);
  if (!o->path) return ferry_fail(-ENOMEM, "out of memory");
  rc = make_tmp(o, path, extra_flags, what);
  if (rc == -EINVAL && (extra_flags & O_DIRECT)) // e.g. tmpfs: buffered instead
    rc = make_tmp(o, path, extra_flags & ~O_DIRECT, what);
  else if (!rc && direct)
    *direct = (extra_flags & O_DIRECT) != 0;
  if (rc) {
    free(o->path);
    o->path = NULL;
    return rc;
  }
  o->slot = registry_add(o->tmp);
  return 0;
}

int ferry_outfile_commit(struct ferry_outfile *o, const char *what) {
  if (!o->tmp) return ferry_fail(-EINVAL, "%s: nothing to commit", what);
  int rc = 0;
  if (o->fd >= 0) { // the caller may have closed it (through stdio) already
    if (fdatasync(o->fd) != 0 && errno != EINVAL && errno != EROFS)
      rc = ferry_fail(-errno, "cannot write %s '%s': %s", what, o->path, strerror(errno));
    if (close(o->fd) != 0 && !rc)
      rc = ferry_fail(-errno, "cannot write %s '%s': %s", what, o->path, strerror(errno));
    o->fd = -1;
  }
  if (!rc) rc = check_target(o->path, what); // it may have been replaced since the open
  if (!rc && rename(o->tmp, o->path) != 0)
    rc = ferry_fail(-errno, "cannot rename %s to '%s': %s", o->tmp, o->path, strerror(errno));
  if (rc) {
    ferry_outfile_discard(o);
    return rc;
  }
  registry_remove(o->slot);
  free(o->tmp), free(o->path);
  o->tmp = o->path = NULL;
  o->slot = -1;
  return 0;
}

void ferry_outfile_discard(struct ferry_outfile *o) {
  if (!o->tmp) return;
  if (o->fd >= 0) close(o->fd);
  unlink(o->tmp);
  registry_remove(o->slot);
  free(o->tmp), free(o->path);
  o->tmp = o->path = NULL;
  o->fd = -1, o->slot = -1;
}
