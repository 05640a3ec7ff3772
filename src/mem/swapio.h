/* SPDX-License-Identifier: MIT */
/*
 * Host swap's I/O engine (private to src/mem): reads and writes of the swap
 * file submitted without waiting, their completions announced on an
 * eventfd, so that the userfaultfd service can serve other faults while a
 * swapped page is read, and poll for it in its own event loop.
 *
 * io_uring (Debian's liburing) where the kernel allows it; where it does not
 * (kernel.io_uring_disabled, a seccomp filter, an old kernel) a small pool
 * of threads doing pread/pwrite, with the same interface. The stats name the
 * engine that runs.
 *
 * One queue has one user at a time: submit and reap are not thread-safe
 * against each other (the userfaultfd service has one queue, the swap-out
 * worker another).
 */
#ifndef KVMEM_MEM_SWAPIO_H
#define KVMEM_MEM_SWAPIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum swapio_engine {
	SWAPIO_AUTO,	/* io_uring, else threads */
	SWAPIO_URING,
	SWAPIO_THREADS,
};

struct swapio;

/*
 * A queue of at most `depth` I/Os in flight. SWAPIO_URING fails where
 * io_uring cannot be set up (-EPERM, -ENOSYS...); SWAPIO_AUTO falls back.
 */
int swapio_open(enum swapio_engine want, unsigned int depth, struct swapio **out);
/* Waits for the I/Os in flight (their completions are dropped). */
void swapio_close(struct swapio *io);
enum swapio_engine swapio_engine(const struct swapio *io);
const char *swapio_engine_name(enum swapio_engine e);

/* Readable (a counter) whenever completions wait to be reaped. */
int swapio_eventfd(const struct swapio *io);

/*
 * Start reading (write false) or writing `len` bytes at `off` of fd from/to
 * buf (aligned for O_DIRECT by the caller); `tag` comes back with its
 * completion. 0, -EBUSY (depth I/Os in flight: reap first), -errno.
 */
int swapio_submit(struct swapio *io, bool write, int fd, void *buf, size_t len, uint64_t off,
		  void *tag);

struct swapio_done {
	void *tag;
	int64_t res;	/* bytes moved (short: the caller's to judge), or -errno */
};
/*
 * Up to max completions into out; wait: block until at least one (when any
 * is in flight). Returns how many.
 */
unsigned int swapio_reap(struct swapio *io, struct swapio_done *out, unsigned int max, bool wait);
/* I/Os submitted and not reaped yet. */
unsigned int swapio_inflight(const struct swapio *io);

#endif
