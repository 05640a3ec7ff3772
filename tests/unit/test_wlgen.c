/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the guest's page generator (src/guest/wlgen.c): the
 * properties the workload engine and the dedup tests rely on.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "guest/wlgen.h"

#define SEED 0x1234abcdULL

struct pages {
	uint64_t a[WLGEN_PAGE_WORDS];
	uint64_t b[WLGEN_PAGE_WORDS];
};

static int setup(void **state)
{
	*state = calloc(1, sizeof(struct pages));
	return *state ? 0 : -1;
}

static int teardown(void **state)
{
	free(*state);
	return 0;
}

/* Number of 8-byte words two pages have in common at the same offset. */
static unsigned same_words(const uint64_t *a, const uint64_t *b)
{
	unsigned i, n = 0;

	for (i = 0; i < WLGEN_PAGE_WORDS; i++)
		n += a[i] == b[i];
	return n;
}

static void test_wlgen_same_key_same_page(void **state)
{
	struct pages *p = *state;
	enum wlgen_class cls;

	for (cls = WLGEN_UNIQUE; cls <= WLGEN_ZERO; cls++) {
		memset(p->a, 0xaa, sizeof(p->a));
		memset(p->b, 0x55, sizeof(p->b));
		wlgen_fill(p->a, cls, SEED, 7, 1000, 3);
		wlgen_fill(p->b, cls, SEED, 7, 1000, 3);
		assert_memory_equal(p->a, p->b, WLGEN_PAGE_SIZE);
	}
}

static void test_wlgen_neighbours_differ(void **state)
{
	struct pages *p = *state;
	enum wlgen_class cls;
	uint64_t i;

	for (cls = WLGEN_UNIQUE; cls <= WLGEN_DUP; cls++) {
		for (i = 0; i < 64; i++) {
			wlgen_fill(p->a, cls, SEED, 0, i, 0);
			wlgen_fill(p->b, cls, SEED, 0, i + 1, 0);
			assert_int_equal(same_words(p->a, p->b), 0);
		}
	}
}

static void test_wlgen_versions_differ(void **state)
{
	struct pages *p = *state;

	wlgen_fill(p->a, WLGEN_DUP, SEED, 0, 42, 0);
	wlgen_fill(p->b, WLGEN_DUP, SEED, 0, 42, 1);
	assert_int_equal(same_words(p->a, p->b), 0);
	wlgen_fill(p->a, WLGEN_UNIQUE, SEED, 0, 42, 1);
	wlgen_fill(p->b, WLGEN_UNIQUE, SEED, 0, 42, 2);
	assert_int_equal(same_words(p->a, p->b), 0);
}

static void test_wlgen_dup_identical_across_ids(void **state)
{
	struct pages *p = *state;

	wlgen_fill(p->a, WLGEN_DUP, SEED, 1, 99, 5);
	wlgen_fill(p->b, WLGEN_DUP, SEED, 2, 99, 5);
	assert_memory_equal(p->a, p->b, WLGEN_PAGE_SIZE);
	/* ...but not across seeds. */
	wlgen_fill(p->b, WLGEN_DUP, SEED + 1, 1, 99, 5);
	assert_int_equal(same_words(p->a, p->b), 0);
}

static void test_wlgen_unique_differs_across_ids(void **state)
{
	struct pages *p = *state;

	wlgen_fill(p->a, WLGEN_UNIQUE, SEED, 1, 99, 0);
	wlgen_fill(p->b, WLGEN_UNIQUE, SEED, 2, 99, 0);
	assert_int_equal(same_words(p->a, p->b), 0);
}

static void test_wlgen_unique_differs_from_dup(void **state)
{
	struct pages *p = *state;

	wlgen_fill(p->a, WLGEN_UNIQUE, SEED, 0, 5, 0);
	wlgen_fill(p->b, WLGEN_DUP, SEED, 0, 5, 0);
	assert_int_equal(same_words(p->a, p->b), 0);
}

static void test_wlgen_zero_is_zero(void **state)
{
	struct pages *p = *state;
	static const uint64_t zero[WLGEN_PAGE_WORDS];

	memset(p->a, 0xff, sizeof(p->a));
	wlgen_fill(p->a, WLGEN_ZERO, SEED, 3, 17, 9);
	assert_memory_equal(p->a, zero, WLGEN_PAGE_SIZE);
	assert_int_equal(wlgen_check(p->a, WLGEN_ZERO, 0, 0, 0, 0), -1);
}

static void test_wlgen_content_not_zero(void **state)
{
	struct pages *p = *state;

	/* Even with all-zero inputs, no more than a stray zero word. */
	memset(p->b, 0, sizeof(p->b));
	wlgen_fill(p->a, WLGEN_UNIQUE, 0, 0, 0, 0);
	assert_true(same_words(p->a, p->b) < 2);
	wlgen_fill(p->a, WLGEN_DUP, 0, 0, 0, 0);
	assert_true(same_words(p->a, p->b) < 2);
}

static void test_wlgen_check_accepts_own_page(void **state)
{
	struct pages *p = *state;
	enum wlgen_class cls;

	for (cls = WLGEN_UNIQUE; cls <= WLGEN_ZERO; cls++) {
		wlgen_fill(p->a, cls, SEED, 4, 123456, 7);
		assert_int_equal(wlgen_check(p->a, cls, SEED, 4, 123456, 7), -1);
	}
}

static void test_wlgen_check_detects_flipped_byte(void **state)
{
	struct pages *p = *state;
	enum wlgen_class cls;
	unsigned off;

	for (cls = WLGEN_UNIQUE; cls <= WLGEN_ZERO; cls++) {
		for (off = 0; off < WLGEN_PAGE_SIZE; off += 509) {
			unsigned char *bytes = (unsigned char *)p->a;

			wlgen_fill(p->a, cls, SEED, 4, 77, 1);
			bytes[off] ^= 0x01;
			assert_int_equal(wlgen_check(p->a, cls, SEED, 4, 77, 1), off & ~7u);
		}
		/* Last byte of the page. */
		wlgen_fill(p->a, cls, SEED, 4, 77, 1);
		((unsigned char *)p->a)[WLGEN_PAGE_SIZE - 1] ^= 0x80;
		assert_int_equal(wlgen_check(p->a, cls, SEED, 4, 77, 1), WLGEN_PAGE_SIZE - 8);
	}
}

static void test_wlgen_check_detects_wrong_key(void **state)
{
	struct pages *p = *state;

	wlgen_fill(p->a, WLGEN_UNIQUE, SEED, 4, 77, 1);
	assert_int_equal(wlgen_check(p->a, WLGEN_UNIQUE, SEED, 4, 77, 2), 0);
	assert_int_equal(wlgen_check(p->a, WLGEN_UNIQUE, SEED, 5, 77, 1), 0);
	assert_int_equal(wlgen_check(p->a, WLGEN_UNIQUE, SEED, 4, 78, 1), 0);
	assert_int_equal(wlgen_check(p->a, WLGEN_DUP, SEED, 4, 77, 1), 0);
	assert_int_equal(wlgen_check(p->a, WLGEN_ZERO, SEED, 4, 77, 1), 0);
}

static void test_wlgen_word_matches_fill(void **state)
{
	struct pages *p = *state;
	unsigned off;

	wlgen_fill(p->a, WLGEN_DUP, SEED, 0, 31, 2);
	for (off = 0; off < WLGEN_PAGE_SIZE; off += 8)
		assert_true(wlgen_word(WLGEN_DUP, SEED, 0, 31, 2, off) == p->a[off / 8]);
	assert_true(wlgen_word(WLGEN_ZERO, SEED, 0, 31, 2, 8) == 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_wlgen_same_key_same_page),
		cmocka_unit_test(test_wlgen_neighbours_differ),
		cmocka_unit_test(test_wlgen_versions_differ),
		cmocka_unit_test(test_wlgen_dup_identical_across_ids),
		cmocka_unit_test(test_wlgen_unique_differs_across_ids),
		cmocka_unit_test(test_wlgen_unique_differs_from_dup),
		cmocka_unit_test(test_wlgen_zero_is_zero),
		cmocka_unit_test(test_wlgen_content_not_zero),
		cmocka_unit_test(test_wlgen_check_accepts_own_page),
		cmocka_unit_test(test_wlgen_check_detects_flipped_byte),
		cmocka_unit_test(test_wlgen_check_detects_wrong_key),
		cmocka_unit_test(test_wlgen_word_matches_fill),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
