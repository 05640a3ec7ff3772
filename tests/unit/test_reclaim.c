/* SPDX-License-Identifier: MIT */
/*
 * Zero-page reclaim on anonymous guest memory under a real userfaultfd: runs
 * of zero pages are dropped, everything else keeps its content and is left
 * unprotected, the page states say which is which, and max_pages holds.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "mem/gm.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/pagestate.h"
#include "mem/reclaim.h"

#define RAM (8ULL << 20)
#define BASE 0x400000ULL /* first page of the test area, well inside RAM */
#define N 64
#define PM_UFFD_WP (1ULL << 57)

/* Zero (1) or not (0), page by page: runs of every length, at both ends. */
static const char pattern[N + 1] =
	"1101001110000111100000111111000000011111111000000001011111111111";

struct fix {
	struct gm *gm;
	uint64_t first; /* page index of BASE */
};

static int setup(void **state)
{
	static struct fix f;
	uint8_t page[4096];

	if (gm_create_anon(RAM, &f.gm) || memmap_enable_uffd(f.gm))
		return -1;
	f.first = (uint64_t)memmap_page_index(f.gm, BASE);
	/* Every page resident: zero pages written with zeros, others with their number. */
	for (unsigned int i = 0; i < N; i++) {
		memset(page, pattern[i] == '1' ? 0 : (int)(i + 1), sizeof(page));
		if (gm_write(f.gm, BASE + 4096ULL * i, page, sizeof(page)))
			return -1;
	}
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;

	gm_destroy(f->gm);
	return 0;
}

static unsigned int zeros_in(unsigned int n)
{
	unsigned int z = 0;

	for (unsigned int i = 0; i < n; i++)
		z += pattern[i] == '1';
	return z;
}

static void assert_page(struct fix *f, unsigned int i, bool dropped)
{
	struct pagestate *ps = memmap_pagestate(f->gm);
	uint8_t page[4096], want[4096];
	uint64_t pm;

	assert_int_equal(memmap_pagemap(f->gm, f->first + i, 1, &pm), 1);
	/* Never left write-protected: a guest write would wait forever. */
	assert_false(pm & PM_UFFD_WP);
	if (dropped) {
		assert_int_equal(pagestate_get(ps, f->first + i), PS_ZERO);
		assert_false(memmap_pm_resident(pm));
	} else {
		assert_int_equal(pagestate_get(ps, f->first + i), PS_ANON);
		assert_true(memmap_pm_resident(pm));
	}
	memset(want, pattern[i] == '1' ? 0 : (int)(i + 1), sizeof(want));
	assert_int_equal(gm_read(f->gm, BASE + 4096ULL * i, page, sizeof(page)), 0);
	assert_memory_equal(page, want, sizeof(page));
}

static void test_reclaim_zero_drops_runs_of_zero_pages_only(void **state)
{
	struct fix *f = *state;

	assert_int_equal(mem_reclaim_zero(f->gm, f->first, N, UINT64_MAX), zeros_in(N));
	for (unsigned int i = 0; i < N; i++)
		assert_page(f, i, pattern[i] == '1');
	/* Nothing left to drop. */
	assert_int_equal(mem_reclaim_zero(f->gm, f->first, N, UINT64_MAX), 0);
}

static void test_reclaim_zero_stops_at_max_pages(void **state)
{
	struct fix *f = *state;
	unsigned int k = 0;

	/* Stop in the middle of the run of 11 zero pages at the end. */
	while (zeros_in(k) < zeros_in(N) - 5)
		k++;
	assert_int_equal(mem_reclaim_zero(f->gm, f->first, N, zeros_in(N) - 5), zeros_in(N) - 5);
	for (unsigned int i = 0; i < N; i++)
		assert_page(f, i, pattern[i] == '1' && i < k);
}

static void test_reclaim_zero_leaves_pages_it_does_not_own(void **state)
{
	struct fix *f = *state;
	struct pagestate *ps = memmap_pagestate(f->gm);

	/* Page 1 is zero but another mechanism holds it. */
	assert_int_equal(pagestate_cas(ps, f->first + 1, PS_ANON, PS_BUSY), 0);
	assert_int_equal(mem_reclaim_zero(f->gm, f->first, N, UINT64_MAX), zeros_in(N) - 1);
	assert_int_equal(pagestate_get(ps, f->first + 1), PS_BUSY);
	pagestate_set(ps, f->first + 1, PS_ANON);
	assert_page(f, 1, false);
	assert_page(f, 0, true);
}

/*
 * A zero page in a mapping userfaultfd does not know (as after a failed
 * re-register): write-protecting its run fails part way, and what the call
 * did protect before it failed must not stay protected.
 */
static void test_reclaim_zero_protect_failure_leaves_nothing_protected(void **state)
{
	struct fix *f = *state;
	/* Inside the run of zero pages 35..42: 35..40 get protected before the call fails. */
	unsigned int hole = 41;
	uint8_t *hva = gm_page_hva(f->gm, f->first + hole);
	uint64_t pm;

	assert_int_equal(pattern[hole], '1');
	assert_true(mmap(hva, 4096, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == hva);
	memset(hva, 0, 4096); /* resident, zero: a candidate like its neighbours */
	mem_reclaim_zero(f->gm, f->first, N, UINT64_MAX);
	for (unsigned int i = 0; i < N; i++) {
		assert_int_equal(memmap_pagemap(f->gm, f->first + i, 1, &pm), 1);
		assert_false(pm & PM_UFFD_WP);
		assert_int_not_equal(pagestate_get(memmap_pagestate(f->gm), f->first + i), PS_BUSY);
	}
	/* The pages of that run keep their memory; the other runs are dropped. */
	assert_int_equal(pagestate_get(memmap_pagestate(f->gm), f->first + hole - 1), PS_ANON);
	assert_int_equal(pagestate_get(memmap_pagestate(f->gm), f->first + 0), PS_ZERO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_reclaim_zero_drops_runs_of_zero_pages_only,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_reclaim_zero_stops_at_max_pages, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_reclaim_zero_leaves_pages_it_does_not_own,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_reclaim_zero_protect_failure_leaves_nothing_protected, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
