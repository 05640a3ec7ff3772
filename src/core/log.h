/* SPDX-License-Identifier: MIT */
/*
 * Logging: every message of the VMM goes through here (stderr), tagged by
 * the file's LOG_TAG. Anything a guest can trigger is logged with
 * log_warn_ratelimited so a hostile guest cannot flood the host's log.
 */
#ifndef KVMEM_CORE_LOG_H
#define KVMEM_CORE_LOG_H

#include <stdbool.h>

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

#ifndef LOG_TAG
#define LOG_TAG "kvmem"
#endif

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
void log_msg(enum log_level level, const char *tag, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* True at most `burst` times per second for this call site's state. */
bool log_ratelimit(long *window_start, int *count);

#define log_err(...) log_msg(LOG_ERR, LOG_TAG, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, LOG_TAG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, LOG_TAG, __VA_ARGS__)
#define log_debug(...)                                                  \
	do {                                                            \
		if (log_get_level() >= LOG_DEBUG)                       \
			log_msg(LOG_DEBUG, LOG_TAG, __VA_ARGS__);       \
	} while (0)

#define log_warn_ratelimited(...)                                       \
	do {                                                            \
		static long rl_window_;                                 \
		static int rl_count_;                                   \
		if (log_ratelimit(&rl_window_, &rl_count_))             \
			log_msg(LOG_WARN, LOG_TAG, __VA_ARGS__);        \
	} while (0)

#define MUST_CHECK __attribute__((warn_unused_result))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
