/* SPDX-License-Identifier: MIT */
/*
 * Logging: every message of the VMM goes through here (stderr), tagged by
 * the file's LOG_TAG. Anything a guest can trigger is rate-limited so a
 * hostile guest cannot flood the host's log, and limited per VM
 * (log_warn_ratelimited_vm) so that it cannot silence the same warning for
 * the other VMs either. log_warn_ratelimited keeps one limit per call site
 * for the whole host: for messages about the host, not about one VM.
 */
#ifndef KVMEM_CORE_LOG_H
#define KVMEM_CORE_LOG_H

#include <stdbool.h>
#include <stdint.h>

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

#ifndef LOG_TAG
#define LOG_TAG "kvmem"
#endif

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
void log_msg(enum log_level level, const char *tag, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/*
 * Errors logged so far. A caller that must name a failure compares it with
 * the count before the call that failed: unchanged, nothing below named it.
 */
unsigned long log_error_count(void);

/* Messages a limit lets through per second, per VM and call site. */
#define LOG_RATELIMIT_BURST 10
/* Call sites one VM's limit tells apart; more share their host-wide limit. */
#define LOG_LIMIT_SITES 16

/*
 * The rate limits of one VM: one per call site, claimed by the first message
 * of that site. Embed one, zeroed, in the object of the VM the messages are
 * about (the VM, a device of it); it needs no setup nor teardown. Safe from
 * any number of threads at once (vCPUs, device workers), lock-free.
 */
struct log_limit {
	struct {
		const void *site;	/* the call site's key; NULL: free */
		uint64_t state;		/* second << 32 | messages in it */
	} slot[LOG_LIMIT_SITES];
};

/*
 * True at most LOG_RATELIMIT_BURST times per second of `now_s` for this
 * limit state (zeroed at first). A caller late with an older second counts
 * against the newer one.
 */
bool log_ratelimit_at(uint64_t *state, uint32_t now_s);
/* log_ratelimit_at now (CLOCK_MONOTONIC_COARSE seconds). */
bool log_ratelimit(uint64_t *state);
/*
 * log_ratelimit for the call site `site` (its host-wide state) within the VM
 * limit `limit`: the site's slot there, or `site` itself when all are taken.
 */
bool log_ratelimit_vm(struct log_limit *limit, uint64_t *site);

#define log_err(...) log_msg(LOG_ERR, LOG_TAG, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, LOG_TAG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, LOG_TAG, __VA_ARGS__)
#define log_debug(...)                                                  \
	do {                                                            \
		if (log_get_level() >= LOG_DEBUG)                       \
			log_msg(LOG_DEBUG, LOG_TAG, __VA_ARGS__);       \
	} while (0)

/* A warning about the host: one limit for this call site. */
#define log_warn_ratelimited(...)                                       \
	do {                                                            \
		static uint64_t rl_state_;                              \
		if (log_ratelimit(&rl_state_))                          \
			log_msg(LOG_WARN, LOG_TAG, __VA_ARGS__);        \
	} while (0)

/*
 * A warning about one VM (anything its guest can trigger): limited per VM
 * and call site in `limit` (struct log_limit *), so a guest that floods it
 * leaves every other VM its own budget for the same message. The static is
 * the call site's key, and its limit when `limit` has no slot left.
 */
#define log_warn_ratelimited_vm(limit, ...)                             \
	do {                                                            \
		static uint64_t rl_site_;                               \
		if (log_ratelimit_vm((limit), &rl_site_))               \
			log_msg(LOG_WARN, LOG_TAG, __VA_ARGS__);        \
	} while (0)

#define MUST_CHECK __attribute__((warn_unused_result))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
