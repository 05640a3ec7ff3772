/* SPDX-License-Identifier: MIT */
/*
 * The kvmem console device (guest/abi.h, ABI_CON_*): guest bytes are cut
 * into lines and written to the host's output, each with the VM's name in
 * front when several VMs share that output. A line is written with one
 * write(2) so lines of different VMs never mix.
 *
 * Nobody reading the output (`kvmem run | less`, a stalled log collector)
 * must never stop the guest: vCPU threads only append whole lines to a
 * bounded per-VM ring under con->lock, and a writer thread of the console's
 * own does the writes, which may block. A line that does not fit the ring is
 * dropped and counted (the stats show it). The output descriptor is the one
 * the process inherited and is never made non-blocking: that would change the
 * open file description the shell or terminal shares with us. When the VM is
 * destroyed the writer gets a moment to drain the ring; a write that still
 * does not return is interrupted (CON_ABANDON_SIGNAL, a handler without
 * SA_RESTART) until the writer sees it is abandoned. Not pthread_cancel: the
 * sanitizers misreport the stack of a cancelled thread at its exit.
 */
#define LOG_TAG "console"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/fault.h"
#include "core/sandbox.h"
#include "core/thread.h"
#include "core/vm_internal.h"

#define CON_LINE_MAX 1024
#define CON_RING_SIZE (64 * 1024)	/* of lines waiting for the writer */
#define CON_DRAIN_NS 2000000000LL	/* what destroy gives the writer to drain */
#define CON_ABANDON_SIGNAL SIGUSR2	/* interrupts a writer stuck in a write */

struct console {
	struct vm *vm;
	int fd;			/* host output, not owned */
	int log_fd;		/* owned, or -1 */
	bool log_failing;	/* the last write to log_fd failed (writer only) */
	bool out_failed;	/* the output is gone (EPIPE...): lines go to the log only */
	char prefix[80];	/* "[name] " or "" */
	pthread_t writer;
	bool writer_started;
	pthread_mutex_t lock;	/* guards everything below */
	pthread_cond_t cond;	/* the ring has lines, or closing */
	gpa_t buf_gpa;
	size_t len;
	char line[CON_LINE_MAX];
	/* Lines for the writer: records of a 2-byte length and the bytes. */
	char ring[CON_RING_SIZE];
	uint64_t head, tail;	/* bytes ever written / read; ring index is modulo */
	bool closing;
	bool abandoned;		/* also read by the writer without the lock (atomic) */
	struct console_stats st;
};

static void ring_put(struct console *con, const void *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		con->ring[(con->head + i) % CON_RING_SIZE] = ((const char *)p)[i];
	con->head += n;
}

static void ring_get(struct console *con, void *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		((char *)p)[i] = con->ring[(con->tail + i) % CON_RING_SIZE];
	con->tail += n;
}

/* Queue the assembled line for the writer, or drop it when the ring is full. Lock held. */
static void emit_line(struct console *con)
{
	uint16_t n = (uint16_t)con->len;

	if (CON_RING_SIZE - (con->head - con->tail) < sizeof(n) + n) {
		con->st.dropped_lines++;
		con->st.dropped_bytes += n;
	} else {
		ring_put(con, &n, sizeof(n));
		ring_put(con, con->line, n);
		con->st.queued_lines++;
		pthread_cond_signal(&con->cond);
	}
	con->len = 0;
}

/*
 * Write one line to the output and the log file. Writer thread, no lock
 * held. False when the log file did not take the line.
 */
static bool write_line(struct console *con, const char *line, size_t len)
{
	struct iovec iov[2] = { { con->prefix, strlen(con->prefix) }, { (void *)line, len } };

	if (con->fd >= 0 && !con->out_failed && writev(con->fd, iov, 2) < 0 && errno != EAGAIN &&
	    (errno != EINTR || __atomic_load_n(&con->abandoned, __ATOMIC_ACQUIRE))) {
		/* The reader is gone (EPIPE) or the output closed: keep the guest going. */
		log_debug("%s: console output: %m: later lines go to the log only", con->vm->name);
		con->out_failed = true;
	}
	/* A full disk loses log lines, never the guest: say so when it starts and ends. */
	if (con->log_fd >= 0) {
		int inject = FAULT_POINT(CONSOLE_LOG_WRITE);
		ssize_t put = inject ? (errno = -inject, -1) : write(con->log_fd, line, len);
		bool ok = put == (ssize_t)len;

		/* Rate-limited too: a disk at the edge of full may flip at every line. */
		if (!ok && !con->log_failing)
			log_warn_ratelimited_vm(&con->vm->log_limit,
						"%s: console log: %s: lines are lost until writes "
						"succeed again", con->vm->name,
						put < 0 ? strerror(errno) : "short write");
		else if (ok && con->log_failing)
			log_debug("%s: console log: writing again", con->vm->name);
		con->log_failing = !ok;
		return ok;
	}
	return true;
}

static void *writer_main(void *arg)
{
	struct console *con = arg;
	char line[CON_LINE_MAX];

	sandbox_enter(SANDBOX_CONSOLE);
	pthread_mutex_lock(&con->lock);
	for (;;) {
		uint16_t n;
		bool logged;

		while (con->head == con->tail && !con->closing)
			pthread_cond_wait(&con->cond, &con->lock);
		if (con->head == con->tail || con->abandoned)
			break;
		ring_get(con, &n, sizeof(n));
		ring_get(con, line, n);
		pthread_mutex_unlock(&con->lock);
		logged = write_line(con, line, n);
		pthread_mutex_lock(&con->lock);
		con->st.written_lines++;
		con->st.log_lost_lines += !logged;
	}
	pthread_mutex_unlock(&con->lock);
	return NULL;
}

int console_create(struct vm *vm, int fd, bool prefix, const char *log_path, struct console **out)
{
	struct console *con = kv_zalloc(sizeof(*con));
	char name[16];
	int ret;

	if (!con)
		return -ENOMEM;
	con->vm = vm;
	con->fd = fd;
	con->log_fd = -1;
	if (prefix)
		snprintf(con->prefix, sizeof(con->prefix), "[%s] ", vm->name);
	if (log_path) {
		/* Never through a link someone planted: kvmem runs as root. */
		con->log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW,
				   0644);
		if (con->log_fd < 0) {
			ret = -errno;
			log_err("%s: console log %s: %m", vm->name, log_path);
			kv_free(con);
			return ret;
		}
	}
	pthread_mutex_init(&con->lock, NULL);
	pthread_cond_init(&con->cond, NULL);
	snprintf(name, sizeof(name), "con-%.11s", vm->name);
	ret = thread_spawn(&con->writer, name, writer_main, con);
	if (ret) {
		log_err("%s: console writer thread: %s", vm->name, strerror(-ret));
		if (con->log_fd >= 0)
			close(con->log_fd);
		pthread_cond_destroy(&con->cond);
		pthread_mutex_destroy(&con->lock);
		kv_free(con);
		return ret;
	}
	con->writer_started = true;
	*out = con;
	return 0;
}

static void abandon_handler(int sig)
{
	(void)sig; /* its only job is to make the writer's write return EINTR */
}

static pthread_once_t abandon_once = PTHREAD_ONCE_INIT;

static void install_abandon_handler(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = abandon_handler;
	sigemptyset(&sa.sa_mask);
	/* No SA_RESTART: the interrupted write must return. */
	sigaction(CON_ABANDON_SIGNAL, &sa, NULL);
}

/*
 * Flush the last unterminated line, let the writer drain what is queued,
 * and take it down. A writer still stuck in a write after CON_DRAIN_NS is
 * interrupted until it leaves (the lines it had left are dropped and
 * counted): a reader that went away must not keep the host from stopping.
 * The signal is sent again and again because it may land just before the
 * writer enters the write that would block.
 */
void console_destroy(struct console *con)
{
	struct timespec dl;

	pthread_mutex_lock(&con->lock);
	if (con->len) {
		con->line[con->len++] = '\n';
		emit_line(con);
	}
	con->closing = true;
	pthread_cond_signal(&con->cond);
	pthread_mutex_unlock(&con->lock);
	if (con->writer_started) {
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += (time_t)(CON_DRAIN_NS / 1000000000LL);
		if (pthread_timedjoin_np(con->writer, NULL, &dl) != 0) {
			pthread_once(&abandon_once, install_abandon_handler);
			__atomic_store_n(&con->abandoned, true, __ATOMIC_RELEASE);
			do {
				pthread_kill(con->writer, CON_ABANDON_SIGNAL);
				clock_gettime(CLOCK_REALTIME, &dl);
				dl.tv_nsec += 10 * 1000 * 1000;
				if (dl.tv_nsec >= 1000000000L) {
					dl.tv_sec++;
					dl.tv_nsec -= 1000000000L;
				}
			} while (pthread_timedjoin_np(con->writer, NULL, &dl) != 0);
			log_warn("%s: console output blocked: %llu queued lines dropped at stop",
				 con->vm->name,
				 (unsigned long long)(con->st.queued_lines - con->st.written_lines));
		}
	}
	if (con->log_fd >= 0)
		close(con->log_fd);
	pthread_cond_destroy(&con->cond);
	pthread_mutex_destroy(&con->lock);
	kv_free(con);
}

void console_get_stats(struct console *con, struct console_stats *out)
{
	pthread_mutex_lock(&con->lock);
	*out = con->st;
	pthread_mutex_unlock(&con->lock);
}

/*
 * Guest bytes reach the operator's terminal: control characters (escape
 * sequences could rewrite the screen or forge host log lines) are shown as
 * \xNN instead. Tabs and newlines pass.
 */
static void put_char(struct console *con, unsigned char c)
{
	static const char hex[] = "0123456789abcdef";

	if (c == '\r' || c == '\0')
		return;
	if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
		char esc[4] = { '\\', 'x', hex[c >> 4], hex[c & 15] };

		for (int i = 0; i < 4; i++)
			put_char(con, (unsigned char)esc[i]);
		return;
	}
	con->line[con->len++] = (char)c;
	if (c == '\n' || con->len == CON_LINE_MAX - 1) {
		if (c != '\n')
			con->line[con->len++] = '\n';
		emit_line(con);
	}
}

static void put_bytes(struct console *con, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		put_char(con, (unsigned char)p[i]);
}

void console_put(struct console *con, const void *p, size_t n)
{
	pthread_mutex_lock(&con->lock);
	put_bytes(con, p, n);
	pthread_mutex_unlock(&con->lock);
}

static void console_write(void *opaque, struct vcpu *vcpu, uint64_t off, const void *data,
			  unsigned int len)
{
	struct console *con = opaque;
	uint64_t val = bus_data_get(data, len);
	char buf[ABI_CON_MAX_BUF];

	(void)vcpu;
	pthread_mutex_lock(&con->lock);
	switch (off) {
	case ABI_CON_PUTC: {
		char c = (char)val;

		put_bytes(con, &c, 1);
		break;
	}
	case ABI_CON_BUF_GPA:
		con->buf_gpa = val;
		break;
	case ABI_CON_BUF_LEN:
		if (val > sizeof(buf) || mem_read(con->vm->gm, con->buf_gpa, buf, (size_t)val)) {
			log_warn_ratelimited_vm(&con->vm->log_limit,
						"%s: console buffer gpa 0x%llx len %llu rejected",
						con->vm->name, (unsigned long long)con->buf_gpa,
						(unsigned long long)val);
			break;
		}
		put_bytes(con, buf, (size_t)val);
		break;
	default:
		log_warn_ratelimited_vm(&con->vm->log_limit,
					"%s: console write to unknown register 0x%llx",
					con->vm->name, (unsigned long long)off);
	}
	pthread_mutex_unlock(&con->lock);
}

const struct bus_ops console_ops = {
	.write = console_write,
};
