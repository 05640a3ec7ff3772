/* SPDX-License-Identifier: MIT */
/* Logging sink: one line per message on stderr, written with one write(2). */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RATELIMIT_BURST 10

static enum log_level cur_level = LOG_INFO;

void log_set_level(enum log_level level)
{
	__atomic_store_n(&cur_level, level, __ATOMIC_RELAXED);
}

enum log_level log_get_level(void)
{
	return __atomic_load_n(&cur_level, __ATOMIC_RELAXED);
}

void log_msg(enum log_level level, const char *tag, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };
	char buf[1024];
	va_list ap;
	int n;

	if (level > log_get_level())
		return;
	n = snprintf(buf, sizeof(buf), "kvmem: %s: %s: ", names[level], tag);
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	/* One write so lines from different threads never interleave. */
	if (write(STDERR_FILENO, buf, (size_t)n) < 0)
		return;
}

bool log_ratelimit(long *window_start, int *count)
{
	struct timespec ts;
	long now;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	now = ts.tv_sec;
	if (__atomic_load_n(window_start, __ATOMIC_RELAXED) != now) {
		__atomic_store_n(window_start, now, __ATOMIC_RELAXED);
		__atomic_store_n(count, 0, __ATOMIC_RELAXED);
	}
	return __atomic_fetch_add(count, 1, __ATOMIC_RELAXED) < RATELIMIT_BURST;
}
