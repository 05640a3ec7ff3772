/* SPDX-License-Identifier: MIT */
/*
 * The log's rate limits without a guest: a burst per second and call site;
 * per VM (struct log_limit), so that one VM flooding a warning leaves every
 * other VM its own budget for it; call sites apart within a VM; exact under
 * threads that log at once (vCPUs, device workers); a VM with more call
 * sites than slots still logs; and the error count failures are named by.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/log.h"

/* --- stderr, captured --- */

static int saved_stderr = -1, capture_fd = -1;

static void capture_start(void)
{
	capture_fd = memfd_create("stderr", MFD_CLOEXEC);
	assert_true(capture_fd >= 0);
	saved_stderr = dup(STDERR_FILENO);
	assert_true(saved_stderr >= 0);
	assert_int_equal(dup2(capture_fd, STDERR_FILENO), STDERR_FILENO);
}

/* Stop capturing; the text (malloc'd) logged meanwhile. */
static char *capture_end(void)
{
	off_t len = lseek(capture_fd, 0, SEEK_END);
	char *s = calloc(1, (size_t)len + 1);

	assert_int_equal(dup2(saved_stderr, STDERR_FILENO), STDERR_FILENO);
	close(saved_stderr);
	assert_non_null(s);
	assert_int_equal(pread(capture_fd, s, (size_t)len, 0), len);
	close(capture_fd);
	return s;
}

static unsigned int count(const char *s, const char *needle)
{
	unsigned int n = 0;

	while ((s = strstr(s, needle))) {
		n++;
		s += strlen(needle);
	}
	return n;
}

/* --- one limit state --- */

static void test_log_burst_per_second_then_a_new_second(void **state)
{
	uint64_t st = 0;

	(void)state;
	for (int i = 0; i < LOG_RATELIMIT_BURST; i++)
		assert_true(log_ratelimit_at(&st, 100));
	for (int i = 0; i < 1000; i++)
		assert_false(log_ratelimit_at(&st, 100));
	assert_true(log_ratelimit_at(&st, 101));
	/* A caller late with the second before counts against the new one. */
	for (int i = 1; i < LOG_RATELIMIT_BURST; i++)
		assert_true(log_ratelimit_at(&st, 100));
	assert_false(log_ratelimit_at(&st, 100));
	assert_false(log_ratelimit_at(&st, 101));
	assert_true(log_ratelimit_at(&st, 102));
}

/* --- per VM --- */

static void test_log_one_vm_flooding_leaves_the_other_its_budget(void **state)
{
	static uint64_t site;
	struct log_limit a = { 0 }, b = { 0 };
	unsigned int passed_a = 0, passed_b = 0;

	(void)state;
	for (int i = 0; i < 100000; i++)
		passed_a += log_ratelimit_vm(&a, &site);
	/* A second may turn over while it floods: at most two bursts. */
	assert_true(passed_a >= LOG_RATELIMIT_BURST && passed_a <= 2 * LOG_RATELIMIT_BURST);
	for (int i = 0; i < LOG_RATELIMIT_BURST; i++)
		passed_b += log_ratelimit_vm(&b, &site);
	assert_int_equal(passed_b, LOG_RATELIMIT_BURST);
	/* The site's host-wide state is only the overflow's: untouched. */
	assert_int_equal(site, 0);
}

static void test_log_call_sites_of_one_vm_apart(void **state)
{
	static uint64_t site1, site2;
	struct log_limit a = { 0 };

	(void)state;
	for (int i = 0; i < 1000; i++)
		log_ratelimit_vm(&a, &site1);
	assert_true(log_ratelimit_vm(&a, &site2));
	assert_ptr_equal(a.slot[0].site, &site1);
	assert_ptr_equal(a.slot[1].site, &site2);
	assert_null(a.slot[2].site);
}

static void test_log_more_call_sites_than_slots_still_log(void **state)
{
	static uint64_t sites[LOG_LIMIT_SITES + 4];
	struct log_limit a = { 0 }, b = { 0 };

	(void)state;
	for (unsigned int s = 0; s < LOG_LIMIT_SITES + 4; s++)
		assert_true(log_ratelimit_vm(&a, &sites[s]));
	for (unsigned int s = 0; s < LOG_LIMIT_SITES; s++)
		assert_ptr_equal(a.slot[s].site, &sites[s]);
	/* The sites past the slots fall back to their own host-wide limit. */
	assert_int_not_equal(sites[LOG_LIMIT_SITES], 0);
	assert_true(log_ratelimit_vm(&b, &sites[LOG_LIMIT_SITES]));
	assert_ptr_equal(b.slot[0].site, &sites[LOG_LIMIT_SITES]);
}

/* --- threads --- */

#define THREADS 8
#define CALLS 20000

static uint64_t shared_state;
static struct log_limit shared_limit;
static uint64_t thread_sites[4];

static void *hammer_state(void *arg)
{
	unsigned long passed = 0;

	(void)arg;
	for (int i = 0; i < CALLS; i++)
		passed += log_ratelimit_at(&shared_state, 7);
	return (void *)passed;
}

static void *hammer_limit(void *arg)
{
	unsigned int t = (unsigned int)(uintptr_t)arg;

	for (int i = 0; i < CALLS; i++)
		log_ratelimit_vm(&shared_limit, &thread_sites[(t + (unsigned int)i) % 4]);
	return NULL;
}

static void test_log_threads_never_pass_more_than_the_burst(void **state)
{
	pthread_t th[THREADS];
	unsigned long total = 0;

	(void)state;
	for (uintptr_t t = 0; t < THREADS; t++)
		assert_int_equal(pthread_create(&th[t], NULL, hammer_state, NULL), 0);
	for (int t = 0; t < THREADS; t++) {
		void *passed;

		pthread_join(th[t], &passed);
		total += (unsigned long)passed;
	}
	assert_int_equal(total, LOG_RATELIMIT_BURST);
}

static void test_log_threads_claim_one_slot_per_call_site(void **state)
{
	pthread_t th[THREADS];
	unsigned int claimed = 0;

	(void)state;
	for (uintptr_t t = 0; t < THREADS; t++)
		assert_int_equal(pthread_create(&th[t], NULL, hammer_limit, (void *)t), 0);
	for (int t = 0; t < THREADS; t++)
		pthread_join(th[t], NULL);
	for (unsigned int s = 0; s < LOG_LIMIT_SITES; s++) {
		if (!shared_limit.slot[s].site)
			continue;
		claimed++;
		for (unsigned int o = 0; o < s; o++)
			assert_ptr_not_equal(shared_limit.slot[o].site, shared_limit.slot[s].site);
	}
	assert_int_equal(claimed, 4);
}

/* --- the macros --- */

/* One call site for every VM, as a device's handler is. */
static void warn_about(struct log_limit *limit, const char *vm)
{
	log_warn_ratelimited_vm(limit, "%s: hostile register write", vm);
}

static void test_log_warnings_of_a_quiet_vm_come_out_during_a_flood(void **state)
{
	struct log_limit hostile = { 0 }, quiet = { 0 };
	unsigned int n;
	char *out;

	(void)state;
	capture_start();
	for (int i = 0; i < 1000; i++)
		warn_about(&hostile, "hostile");
	warn_about(&quiet, "quiet");
	out = capture_end();
	n = count(out, "kvmem: warning: kvmem: hostile: hostile register write\n");
	assert_true(n >= LOG_RATELIMIT_BURST && n <= 2 * LOG_RATELIMIT_BURST);
	assert_int_equal(count(out, "kvmem: warning: kvmem: quiet: hostile register write\n"), 1);
	free(out);
}

static void test_log_error_count_counts_errors_only(void **state)
{
	unsigned long before = log_error_count();
	char *out;

	(void)state;
	capture_start();
	log_msg(LOG_WARN, "t", "a warning");
	log_msg(LOG_INFO, "t", "information");
	assert_int_equal(log_error_count(), before);
	log_msg(LOG_ERR, "t", "an error");
	out = capture_end();
	assert_int_equal(log_error_count(), before + 1);
	assert_int_equal(count(out, "kvmem: error: t: an error\n"), 1);
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_log_burst_per_second_then_a_new_second),
		cmocka_unit_test(test_log_one_vm_flooding_leaves_the_other_its_budget),
		cmocka_unit_test(test_log_call_sites_of_one_vm_apart),
		cmocka_unit_test(test_log_more_call_sites_than_slots_still_log),
		cmocka_unit_test(test_log_threads_never_pass_more_than_the_burst),
		cmocka_unit_test(test_log_threads_claim_one_slot_per_call_site),
		cmocka_unit_test(test_log_warnings_of_a_quiet_vm_come_out_during_a_flood),
		cmocka_unit_test(test_log_error_count_counts_errors_only),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
