/* SPDX-License-Identifier: MIT */
/* Logging sink: one line per message on stderr, written with one write(2). */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level cur_level = LOG_INFO;
static unsigned long nr_errors;

void log_set_level(enum log_level level)
{
	__atomic_store_n(&cur_level, level, __ATOMIC_RELAXED);
}

enum log_level log_get_level(void)
{
	return __atomic_load_n(&cur_level, __ATOMIC_RELAXED);
}

unsigned long log_error_count(void)
{
	return __atomic_load_n(&nr_errors, __ATOMIC_RELAXED);
}

void log_msg(enum log_level level, const char *tag, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };
	char buf[1024];
	va_list ap;
	int n;

	if (level == LOG_ERR)
		__atomic_fetch_add(&nr_errors, 1, __ATOMIC_RELAXED);
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

/*
 * The state packs the second and the count into one word so that a
 * compare-and-swap moves both: concurrent callers (vCPU threads, device
 * workers) can neither let more than the burst through in one second nor
 * reset a count another thread just started.
 */
bool log_ratelimit_at(uint64_t *state, uint32_t now_s)
{
	uint64_t old = __atomic_load_n(state, __ATOMIC_RELAXED), new;

	do {
		uint32_t window = (uint32_t)(old >> 32), count = (uint32_t)old;

		if (now_s > window)
			new = (uint64_t)now_s << 32 | 1;
		else if (count >= LOG_RATELIMIT_BURST)
			return false;
		else
			new = old + 1;
	} while (!__atomic_compare_exchange_n(state, &old, new, true, __ATOMIC_RELAXED,
					      __ATOMIC_RELAXED));
	return true;
}

bool log_ratelimit(uint64_t *state)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return log_ratelimit_at(state, (uint32_t)ts.tv_sec);
}

bool log_ratelimit_vm(struct log_limit *limit, uint64_t *site)
{
	for (unsigned int i = 0; i < LOG_LIMIT_SITES; i++) {
		const void *cur = __atomic_load_n(&limit->slot[i].site, __ATOMIC_ACQUIRE);

		/*
		 * Slots are claimed in order and never given back, so a free one
		 * means the site has none yet: claim it (or find who did).
		 */
		if (!cur && __atomic_compare_exchange_n(&limit->slot[i].site, &cur, site, false,
							__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			cur = site;
		if (cur == site)
			return log_ratelimit(&limit->slot[i].state);
	}
	/* More call sites than slots: degrade to the site's host-wide limit. */
	return log_ratelimit(site);
}
