// base/files.h: reading a user's input file with a size cap, and output files that appear
// whole or not at all.
//
// Outputs (--json reports, synth models) are written under a fresh temporary name in the
// target's own directory, "<path>.<pid>-<n>.tmp", created with O_EXCL so nothing that
// exists is ever clobbered, then renamed over the target once complete. A target that
// exists and is not a regular file (a device node, FIFO, socket, directory or symlink) is
// refused before anything is written, and again just before the rename. While a
// temporary file exists its name is registered; ferry_outfile_cleanup_on_signals (called
// by main) installs SIGINT/SIGTERM/SIGHUP handlers that remove the registered files and
// then let the signal end the process as it would have.
//
// One thread opens and commits a given outfile; registration is safe from any thread.
// Every function returns 0 or a negative errno-style code with the message set.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Reads all of path ("-" = standard input) into a NUL-terminated buffer the caller frees.
// Fails with "<what> '<path>': ..." when it cannot be opened or read, or is larger than
// max_bytes (checked while reading, so /dev/zero or an endless pipe costs at most
// max_bytes of memory). what names the input in messages ("prompt file").
int ferry_read_file(const char *path, uint64_t max_bytes, const char *what, char **out,
                    size_t *len);

struct ferry_outfile {
  char *path; // the target
  char *tmp;  // the temporary file while open
  int fd;     // -1 when closed
  int slot;   // signal-cleanup registration, -1 if none
};

// Checks that path can be written: it does not exist or is a regular file, and a file can
// be created in its directory (a probe file is created and removed). what names the
// output in messages ("--json file"). Used to validate outputs before a long run.
int ferry_outfile_check(const char *path, const char *what);
// Creates the temporary file for path (after the same target check) with open flags
// O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | extra_flags, mode 0644. If extra_flags holds
// O_DIRECT and the filesystem refuses it, retries without (see direct).
int ferry_outfile_open(struct ferry_outfile *o, const char *path, int extra_flags, const char *what,
                       bool *direct);
// fdatasyncs and closes the temporary file (unless the caller closed it and set fd to -1)
// and renames it over the target; on failure the temporary file is removed.
int ferry_outfile_commit(struct ferry_outfile *o, const char *what);
// Closes (if open) and removes the temporary file; keeps the current error message.
// Safe on a zeroed or already committed outfile.
void ferry_outfile_discard(struct ferry_outfile *o);

// Installs the SIGINT/SIGTERM/SIGHUP handlers that remove registered temporary files.
void ferry_outfile_cleanup_on_signals(void);

#ifdef __cplusplus
}
#endif
