/* SPDX-License-Identifier: MIT */
/*
 * Fault injection's own rules (core/fault.h), in a -Dfault_injection=true
 * build: the spec grammar and what it refuses (arming nothing then), which
 * hits fail, and that concurrent hits fail exactly as many times as armed.
 * Points are hit directly here; the tests of each mechanism hit them
 * through the code.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/fault.h"

static struct fault_info info(enum fault_point p)
{
	struct fault_info fi;

	fault_get(p, &fi);
	return fi;
}

static int configure(const char *spec)
{
	char why[192];

	return fault_configure(spec, why, sizeof(why));
}

static void test_fault_spec_fails_the_hits_it_names(void **state)
{
	uint64_t inj;

	(void)state;
	fault_clear();
	inj = info(FAULT_ALLOC_DEDUP).injected;
	assert_int_equal(configure("alloc.dedup:ENOMEM@3*2"), 0);
	assert_true(info(FAULT_ALLOC_DEDUP).armed);
	assert_int_equal(fault_hit(FAULT_ALLOC_DEDUP), 0);
	assert_int_equal(fault_hit(FAULT_ALLOC_DEDUP), 0);
	assert_int_equal(fault_hit(FAULT_ALLOC_DEDUP), -ENOMEM);
	assert_int_equal(fault_hit(FAULT_ALLOC_DEDUP), -ENOMEM);
	assert_int_equal(fault_hit(FAULT_ALLOC_DEDUP), 0);
	assert_false(info(FAULT_ALLOC_DEDUP).armed);
	assert_int_equal(info(FAULT_ALLOC_DEDUP).injected, inj + 2);
	/* Defaults: the point's own errno, the next hit, once. */
	assert_int_equal(configure("swap.file.read"), 0);
	assert_int_equal(fault_hit(FAULT_SWAP_FILE_READ), -EIO);
	assert_int_equal(fault_hit(FAULT_SWAP_FILE_READ), 0);
	/* A number for the errno, parts in any order, several specs at once. */
	assert_int_equal(configure("uffd.copy*2:12,migrate.send@2"), 0);
	assert_int_equal(fault_hit(FAULT_UFFD_COPY), -12);
	assert_int_equal(fault_hit(FAULT_UFFD_COPY), -12);
	assert_int_equal(fault_hit(FAULT_UFFD_COPY), 0);
	assert_int_equal(fault_hit(FAULT_MIGRATE_SEND), 0);
	assert_int_equal(fault_hit(FAULT_MIGRATE_SEND), -ECONNRESET);
}

static void test_fault_all_until_disarmed(void **state)
{
	(void)state;
	fault_clear();
	assert_int_equal(configure("uffd.register*all"), 0);
	for (int i = 0; i < 100; i++)
		assert_int_equal(fault_hit(FAULT_UFFD_REGISTER), -ENOMEM);
	assert_true(info(FAULT_UFFD_REGISTER).armed);
	assert_int_equal(info(FAULT_UFFD_REGISTER).last, UINT64_MAX);
	/* *0 disarms one point; clear disarms them all. */
	assert_int_equal(configure("uffd.register*0"), 0);
	assert_int_equal(fault_hit(FAULT_UFFD_REGISTER), 0);
	assert_false(info(FAULT_UFFD_REGISTER).armed);
	assert_int_equal(configure("uffd.register*all,uffd.zeropage*all"), 0);
	fault_clear();
	assert_int_equal(fault_hit(FAULT_UFFD_REGISTER), 0);
	assert_int_equal(fault_hit(FAULT_UFFD_ZEROPAGE), 0);
}

static void test_fault_bad_spec_arms_nothing(void **state)
{
	static const char *const bad[] = {
		"nosuch", "alloc.dedup:EBOGUS", "alloc.dedup:0", "alloc.dedup@0",
		"alloc.dedup@x", "alloc.dedup*", "alloc.dedup*-1", "alloc.dedup:",
		"alloc.dedup@99999999999999999999", "alloc", "alloc.dedup.x",
	};
	char why[192];

	(void)state;
	fault_clear();
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why[0] = '\0';
		assert_int_equal(fault_configure(bad[i], why, sizeof(why)), -EINVAL);
		assert_true(why[0] != '\0');
	}
	/* One bad spec among good ones: none is armed. */
	assert_int_equal(configure("uffd.copy*all,nosuch"), -EINVAL);
	assert_false(info(FAULT_UFFD_COPY).armed);
	/* Nothing at all, and empty parts, are no error. */
	assert_int_equal(configure(NULL), 0);
	assert_int_equal(configure(""), 0);
	assert_int_equal(configure(",,"), 0);
}

#define THREADS 4
#define HITS 20000

static void *hitter(void *arg)
{
	uint64_t *failed = arg;

	for (int i = 0; i < HITS; i++)
		*failed += fault_hit(FAULT_CONSOLE_LOG_WRITE) != 0;
	return NULL;
}

/* Threads hitting one point at once: exactly as many failures as armed. */
static void test_fault_concurrent_hits_fail_exactly_count(void **state)
{
	pthread_t th[THREADS];
	uint64_t failed[THREADS] = { 0 }, sum = 0, inj;

	(void)state;
	fault_clear();
	inj = info(FAULT_CONSOLE_LOG_WRITE).injected;
	assert_int_equal(configure("console.log.write@100*1000"), 0);
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, hitter, &failed[i]), 0);
	for (int i = 0; i < THREADS; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		sum += failed[i];
	}
	assert_int_equal(sum, 1000);
	assert_int_equal(info(FAULT_CONSOLE_LOG_WRITE).injected, inj + 1000);
	fault_clear();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fault_spec_fails_the_hits_it_names),
		cmocka_unit_test(test_fault_all_until_disarmed),
		cmocka_unit_test(test_fault_bad_spec_arms_nothing),
		cmocka_unit_test(test_fault_concurrent_hits_fail_exactly_count),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
