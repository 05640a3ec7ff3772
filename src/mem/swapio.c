/* SPDX-License-Identifier: MIT */
/*
 * Host swap's I/O engine (see swapio.h): io_uring, or a pool of pread/pwrite
 * threads where the kernel refuses io_uring.
 */
#define LOG_TAG "swapio"
#include "mem/swapio.h"

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/fault.h"
#include "core/log.h"
#include "core/sandbox.h"
#include "core/thread.h"

/* The thread engine: two workers, so that a read is not queued behind a slow write. */
#define SWAPIO_THREADS_N 2

struct tio {
	bool write;
	int fd;
	void *buf;
	size_t len;
	uint64_t off;
	void *tag;
	int64_t res;
};

/* A ring of request indices, depth long. */
struct iq {
	unsigned int *at;
	unsigned int head, n;
};

struct swapio {
	enum swapio_engine engine;
	int efd;
	unsigned int depth;
	unsigned int inflight;		/* the user's: submitted, not reaped */
	struct io_uring ring;		/* SWAPIO_URING */
	/*
	 * SWAPIO_URING with fault injection: completions of I/Os failed at
	 * submit (swap.file.read, swap.file.write), reaped before the ring's.
	 */
	struct swapio_done *made;	/* depth of them */
	unsigned int nr_made;
	/* SWAPIO_THREADS */
	pthread_mutex_t lock;
	pthread_cond_t work, done_cv;
	struct tio *reqs;		/* depth of them */
	struct iq free, todo, done;	/* lock */
	pthread_t th[SWAPIO_THREADS_N];
	unsigned int nr_th;
	bool stop;			/* lock */
};

static void iq_push(struct iq *q, unsigned int depth, unsigned int v)
{
	q->at[(q->head + q->n++) % depth] = v;
}

static unsigned int iq_pop(struct iq *q, unsigned int depth)
{
	unsigned int v = q->at[q->head];

	q->head = (q->head + 1) % depth;
	q->n--;
	return v;
}

static void signal_efd(int efd)
{
	uint64_t one = 1;

	/* Only fails when the counter would overflow: it is readable then anyway. */
	if (write(efd, &one, sizeof(one)) != sizeof(one))
		return;
}

static void clear_efd(int efd)
{
	uint64_t v;

	if (read(efd, &v, sizeof(v)) != sizeof(v))
		return; /* nothing was signalled (non-blocking) */
}

static void *worker(void *arg)
{
	struct swapio *io = arg;

	sandbox_enter(SANDBOX_SWAP_IO);
	pthread_mutex_lock(&io->lock);
	for (;;) {
		struct tio *r;
		unsigned int i;
		ssize_t got;
		int inject;

		while (!io->stop && !io->todo.n)
			pthread_cond_wait(&io->work, &io->lock);
		if (!io->todo.n)
			break; /* stopping, and nothing left to do */
		i = iq_pop(&io->todo, io->depth);
		r = &io->reqs[i];
		pthread_mutex_unlock(&io->lock);
		inject = r->write ? FAULT_POINT(SWAP_FILE_WRITE) : FAULT_POINT(SWAP_FILE_READ);
		do
			got = inject	 ? (errno = -inject, -1)
			      : r->write ? pwrite(r->fd, r->buf, r->len, (off_t)r->off)
					 : pread(r->fd, r->buf, r->len, (off_t)r->off);
		while (got < 0 && errno == EINTR);
		r->res = got < 0 ? -errno : got;
		pthread_mutex_lock(&io->lock);
		iq_push(&io->done, io->depth, i);
		pthread_cond_broadcast(&io->done_cv);
		signal_efd(io->efd);
	}
	pthread_mutex_unlock(&io->lock);
	return NULL;
}

static int open_threads(struct swapio *io)
{
	unsigned int d = io->depth;

	io->reqs = kv_calloc(d, sizeof(*io->reqs));
	io->free.at = kv_calloc(d, sizeof(unsigned int));
	io->todo.at = kv_calloc(d, sizeof(unsigned int));
	io->done.at = kv_calloc(d, sizeof(unsigned int));
	if (!io->reqs || !io->free.at || !io->todo.at || !io->done.at)
		return -ENOMEM;
	for (unsigned int i = 0; i < d; i++)
		iq_push(&io->free, d, i);
	pthread_mutex_init(&io->lock, NULL);
	pthread_cond_init(&io->work, NULL);
	pthread_cond_init(&io->done_cv, NULL);
	io->engine = SWAPIO_THREADS;
	for (; io->nr_th < SWAPIO_THREADS_N; io->nr_th++) {
		int ret = thread_spawn(&io->th[io->nr_th], "swapio", worker, io);

		if (ret)
			return ret;
	}
	return 0;
}

static void free_io(struct swapio *io)
{
	if (io->engine == SWAPIO_THREADS) {
		pthread_mutex_lock(&io->lock);
		io->stop = true;
		pthread_cond_broadcast(&io->work);
		pthread_mutex_unlock(&io->lock);
		for (unsigned int i = 0; i < io->nr_th; i++)
			pthread_join(io->th[i], NULL);
		pthread_mutex_destroy(&io->lock);
		pthread_cond_destroy(&io->work);
		pthread_cond_destroy(&io->done_cv);
	}
	kv_free(io->reqs);
	kv_free(io->free.at);
	kv_free(io->todo.at);
	kv_free(io->done.at);
	kv_free(io->made);
	if (io->efd >= 0)
		close(io->efd);
	kv_free(io);
}

/*
 * A ring that only reads and writes. What io_uring does for a ring is not
 * seen by seccomp filters (core/sandbox.c): a thread allowed to enter it
 * could otherwise have it open files or sockets. Restrictions can be set
 * only while the ring is disabled; the eventfd is registered before it is
 * enabled, and nothing is registered after. (Debian's liburing 2.3 declares
 * io_uring_register_restrictions and io_uring_enable_rings but does not
 * export them: the system call, then.)
 */
static int ring_register(struct io_uring *ring, unsigned int op, void *arg, unsigned int nr)
{
	return syscall(__NR_io_uring_register, ring->ring_fd, op, arg, nr) < 0 ? -errno : 0;
}

static int open_uring(struct swapio *io)
{
	struct io_uring_restriction only[] = {
		{ .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_READ },
		{ .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_WRITE },
	};
	int ret = io_uring_queue_init(io->depth, &io->ring, IORING_SETUP_R_DISABLED);

	if (ret)
		return ret;
	ret = ring_register(&io->ring, IORING_REGISTER_RESTRICTIONS, only, ARRAY_SIZE(only));
	if (!ret)
		ret = io_uring_register_eventfd(&io->ring, io->efd);
	if (!ret)
		ret = ring_register(&io->ring, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
	if (ret)
		io_uring_queue_exit(&io->ring);
	return ret;
}

int swapio_open(enum swapio_engine want, unsigned int depth, struct swapio **out)
{
	struct swapio *io;
	int ret = -EINVAL;

	if (!depth || depth > 4096)
		return -EINVAL;
	io = kv_zalloc(sizeof(*io));
	if (!io)
		return -ENOMEM;
	io->depth = depth;
	io->engine = SWAPIO_AUTO; /* nothing to tear down yet */
	io->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (io->efd < 0) {
		ret = -errno;
		goto fail;
	}
	if (want != SWAPIO_THREADS) {
		ret = open_uring(io);
		if (!ret && fault_enabled() && !(io->made = kv_calloc(depth, sizeof(*io->made)))) {
			io_uring_queue_exit(&io->ring);
			ret = -ENOMEM;
		}
		if (!ret) {
			io->engine = SWAPIO_URING;
			*out = io;
			return 0;
		}
		if (want == SWAPIO_URING)
			goto fail;
	}
	ret = open_threads(io);
	if (ret)
		goto fail;
	*out = io;
	return 0;

fail:
	free_io(io);
	return ret;
}

void swapio_close(struct swapio *io)
{
	struct swapio_done d[16];

	if (!io)
		return;
	/* The buffers in flight are the caller's: it must not free them before they land. */
	while (io->inflight)
		swapio_reap(io, d, 16, true);
	if (io->engine == SWAPIO_URING)
		io_uring_queue_exit(&io->ring);
	free_io(io);
}

enum swapio_engine swapio_engine(const struct swapio *io)
{
	return io->engine;
}

const char *swapio_engine_name(enum swapio_engine e)
{
	switch (e) {
	case SWAPIO_URING:
		return "io_uring";
	case SWAPIO_THREADS:
		return "threads";
	default:
		return "auto";
	}
}

int swapio_eventfd(const struct swapio *io)
{
	return io->efd;
}

unsigned int swapio_inflight(const struct swapio *io)
{
	return io->inflight;
}

/*
 * Hand the queued entries to the kernel: true when none is left queued.
 * Where it refuses, the eventfd is signalled, so that the user's loop
 * comes back to reap (and so to try again) even with nothing completing.
 */
static bool flush_uring(struct swapio *io)
{
	int ret;

	if (!io_uring_sq_ready(&io->ring))
		return true;
	do
		ret = io_uring_submit(&io->ring);
	while (ret == -EINTR);
	if (ret >= 0 && !io_uring_sq_ready(&io->ring))
		return true;
	signal_efd(io->efd);
	return false;
}

int swapio_submit(struct swapio *io, bool write, int fd, void *buf, size_t len, uint64_t off,
		  void *tag)
{
	if (io->inflight >= io->depth)
		return -EBUSY;
	if (io->engine == SWAPIO_URING) {
		int inject = write ? FAULT_POINT(SWAP_FILE_WRITE) : FAULT_POINT(SWAP_FILE_READ);
		struct io_uring_sqe *sqe;

		if (inject) {
			/* Failed without reaching the file; its completion comes at the next reap. */
			io->made[io->nr_made++] = (struct swapio_done){ tag, inject };
			io->inflight++;
			signal_efd(io->efd);
			return 0;
		}
		sqe = io_uring_get_sqe(&io->ring);

		if (!sqe)
			return -EBUSY; /* depth entries queued, not all submitted yet */
		if (write)
			io_uring_prep_write(sqe, fd, buf, (unsigned int)len, off);
		else
			io_uring_prep_read(sqe, fd, buf, (unsigned int)len, off);
		io_uring_sqe_set_data(sqe, tag);
		/*
		 * Queued now whatever the kernel says: an entry cannot be taken
		 * back. It is in flight from here, and one the kernel refuses
		 * (-EAGAIN, -ENOMEM) goes with the next submission or reap.
		 */
		io->inflight++;
		flush_uring(io);
		return 0;
	} else {
		struct tio *r;
		unsigned int i;

		pthread_mutex_lock(&io->lock);
		i = iq_pop(&io->free, io->depth);
		r = &io->reqs[i];
		*r = (struct tio){ write, fd, buf, len, off, tag, 0 };
		iq_push(&io->todo, io->depth, i);
		pthread_cond_signal(&io->work);
		pthread_mutex_unlock(&io->lock);
	}
	io->inflight++;
	return 0;
}

static unsigned int reap_uring(struct swapio *io, struct swapio_done *out, unsigned int max,
			       bool wait)
{
	unsigned int n = 0;
	struct io_uring_cqe *cqe;

	/* Failed at submit: nothing to wait for. */
	while (n < max && io->nr_made) {
		out[n++] = io->made[--io->nr_made];
		io->inflight--;
	}
	/* Entries the kernel refused before: a waiter waits for them to go first. */
	while (!flush_uring(io) && wait && !n && !io_uring_cq_ready(&io->ring))
		usleep(1000);

	while (n < max) {
		int ret = io_uring_peek_cqe(&io->ring, &cqe);

		if (ret == -EAGAIN && wait && !n && io->inflight)
			ret = io_uring_wait_cqe(&io->ring, &cqe);
		if (ret == -EINTR)
			continue;
		if (ret)
			break;
		out[n].tag = io_uring_cqe_get_data(cqe);
		out[n].res = cqe->res;
		io_uring_cqe_seen(&io->ring, cqe);
		io->inflight--;
		n++;
	}
	/* Left for the next call: the eventfd was cleared for them. */
	if (io_uring_cq_ready(&io->ring) || io->nr_made)
		signal_efd(io->efd);
	return n;
}

static unsigned int reap_threads(struct swapio *io, struct swapio_done *out, unsigned int max,
				 bool wait)
{
	unsigned int n = 0;

	pthread_mutex_lock(&io->lock);
	while (wait && !io->done.n && io->inflight)
		pthread_cond_wait(&io->done_cv, &io->lock);
	while (n < max && io->done.n) {
		unsigned int i = iq_pop(&io->done, io->depth);

		out[n].tag = io->reqs[i].tag;
		out[n].res = io->reqs[i].res;
		iq_push(&io->free, io->depth, i);
		io->inflight--;
		n++;
	}
	if (io->done.n)
		signal_efd(io->efd);
	pthread_mutex_unlock(&io->lock);
	return n;
}

unsigned int swapio_reap(struct swapio *io, struct swapio_done *out, unsigned int max, bool wait)
{
	clear_efd(io->efd);
	return io->engine == SWAPIO_URING ? reap_uring(io, out, max, wait)
					  : reap_threads(io, out, max, wait);
}
