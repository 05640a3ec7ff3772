/* SPDX-License-Identifier: MIT */
/*
 * The kvmem console device (guest/abi.h, ABI_CON_*): guest bytes are cut
 * into lines and written to the host's output, each with the VM's name in
 * front when several VMs share that output. A line is written with one
 * write(2) so lines of different VMs never mix. Called on vCPU threads;
 * con->lock serialises them.
 */
#define LOG_TAG "console"
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/vm_internal.h"

#define CON_LINE_MAX 1024

struct console {
	struct vm *vm;
	int fd;			/* host output, not owned */
	int log_fd;		/* owned, or -1 */
	bool log_failing;	/* the last write to log_fd failed (lock) */
	char prefix[80];	/* "[name] " or "" */
	pthread_mutex_t lock;	/* guards everything below */
	gpa_t buf_gpa;
	size_t len;
	char line[CON_LINE_MAX];
};

int console_create(struct vm *vm, int fd, bool prefix, const char *log_path, struct console **out)
{
	struct console *con = kv_zalloc(sizeof(*con));

	if (!con)
		return -ENOMEM;
	con->vm = vm;
	con->fd = fd;
	con->log_fd = -1;
	if (prefix)
		snprintf(con->prefix, sizeof(con->prefix), "[%s] ", vm->name);
	if (log_path) {
		con->log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (con->log_fd < 0) {
			int err = -errno;

			log_err("%s: console log %s: %m", vm->name, log_path);
			kv_free(con);
			return err;
		}
	}
	pthread_mutex_init(&con->lock, NULL);
	*out = con;
	return 0;
}

void console_destroy(struct console *con)
{
	if (con->len) {
		con->line[con->len++] = '\n';
		/* flush a last unterminated line */
		struct iovec iov[2] = { { con->prefix, strlen(con->prefix) },
					{ con->line, con->len } };
		if (con->fd >= 0 && writev(con->fd, iov, 2) < 0)
			log_debug("console write: %m");
	}
	if (con->log_fd >= 0)
		close(con->log_fd);
	pthread_mutex_destroy(&con->lock);
	kv_free(con);
}

static void emit_line(struct console *con)
{
	struct iovec iov[2] = { { con->prefix, strlen(con->prefix) }, { con->line, con->len } };

	/* A full pipe or closed terminal must not stop the guest: drop the line. */
	if (con->fd >= 0 && writev(con->fd, iov, 2) < 0)
		log_debug("console write: %m");
	/* A full disk loses log lines, never the guest: say so when it starts and ends. */
	if (con->log_fd >= 0) {
		ssize_t put = write(con->log_fd, con->line, con->len);
		bool ok = put == (ssize_t)con->len;

		/* Rate-limited too: a disk at the edge of full may flip at every line. */
		if (!ok && !con->log_failing)
			log_warn_ratelimited("%s: console log: %s: lines are lost until writes "
					     "succeed again",
					     con->vm->name, put < 0 ? strerror(errno) : "short write");
		else if (ok && con->log_failing)
			log_debug("%s: console log: writing again", con->vm->name);
		con->log_failing = !ok;
	}
	con->len = 0;
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
		if (val > sizeof(buf) || gm_read(con->vm->gm, con->buf_gpa, buf, (size_t)val)) {
			log_warn_ratelimited("%s: console buffer gpa 0x%llx len %llu rejected",
					     con->vm->name, (unsigned long long)con->buf_gpa,
					     (unsigned long long)val);
			break;
		}
		put_bytes(con, buf, (size_t)val);
		break;
	default:
		log_warn_ratelimited("%s: console write to unknown register 0x%llx",
				     con->vm->name, (unsigned long long)off);
	}
	pthread_mutex_unlock(&con->lock);
}

const struct bus_ops console_ops = {
	.write = console_write,
};
