/* SPDX-License-Identifier: MIT */
/* Page-state transitions: CAS ownership and the per-state counts. */
#include <pthread.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "mem/pagestate.h"

static void test_pagestate_starts_anon_and_counts_follow_transitions(void **state)
{
	struct pagestate *ps;
	uint64_t c[PS_NR];

	(void)state;
	assert_int_equal(pagestate_create(100, &ps), 0);
	pagestate_counts(ps, c);
	assert_int_equal(c[PS_ANON], 100);
	assert_int_equal(pagestate_cas(ps, 7, PS_ANON, PS_BUSY), 0);
	assert_int_equal(pagestate_set(ps, 7, PS_SHARED), PS_BUSY);
	assert_int_equal(pagestate_cas(ps, 8, PS_ANON, PS_ZERO), 0);
	pagestate_counts(ps, c);
	assert_int_equal(c[PS_ANON], 98);
	assert_int_equal(c[PS_SHARED], 1);
	assert_int_equal(c[PS_ZERO], 1);
	assert_int_equal(c[PS_BUSY], 0);
	assert_int_equal(pagestate_get(ps, 7), PS_SHARED);
	pagestate_destroy(ps);
}

static void test_pagestate_cas_from_the_wrong_state_is_busy(void **state)
{
	struct pagestate *ps;

	(void)state;
	assert_int_equal(pagestate_create(4, &ps), 0);
	assert_int_equal(pagestate_cas(ps, 1, PS_ANON, PS_BUSY), 0);
	/* A second mechanism racing for the same page loses. */
	assert_int_equal(pagestate_cas(ps, 1, PS_ANON, PS_BUSY), -EBUSY);
	assert_int_equal(pagestate_cas(ps, 1, PS_SHARED, PS_ANON), -EBUSY);
	assert_true(pagestate_is_dropped(PS_BALLOONED));
	assert_false(pagestate_is_dropped(PS_SHARED));
	pagestate_destroy(ps);
}

struct race {
	struct pagestate *ps;
	int wins;
};

static void *claimer(void *arg)
{
	struct race *r = arg;

	for (uint64_t i = 0; i < pagestate_nr_pages(r->ps); i++)
		if (pagestate_cas(r->ps, i, PS_ANON, PS_BUSY) == 0)
			r->wins++;
	return NULL;
}

static void test_pagestate_exactly_one_of_racing_claimers_wins_each_page(void **state)
{
	struct race r[4];
	pthread_t t[4];
	struct pagestate *ps;
	uint64_t c[PS_NR];
	int total = 0;

	(void)state;
	assert_int_equal(pagestate_create(100000, &ps), 0);
	for (int i = 0; i < 4; i++) {
		r[i] = (struct race){ ps, 0 };
		pthread_create(&t[i], NULL, claimer, &r[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		total += r[i].wins;
	}
	assert_int_equal(total, 100000);
	pagestate_counts(ps, c);
	assert_int_equal(c[PS_BUSY], 100000);
	assert_int_equal(c[PS_ANON], 0);
	pagestate_destroy(ps);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pagestate_starts_anon_and_counts_follow_transitions),
		cmocka_unit_test(test_pagestate_cas_from_the_wrong_state_is_busy),
		cmocka_unit_test(test_pagestate_exactly_one_of_racing_claimers_wins_each_page),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
