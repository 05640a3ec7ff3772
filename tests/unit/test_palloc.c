/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the guest's page allocator (src/guest/palloc.c), built
 * with host flags against a mapping at a fixed low address that plays guest
 * RAM (palloc keeps its bitmap in the RAM it manages and its gfns are 32-bit,
 * so the "guest-physical" addresses are the mapping's own). Covers the free
 * page reporting bookkeeping the balloon driver relies on: chunks free since
 * boot start out reported, any allocation clears the mark, a claimed chunk
 * is isolated (counted available, not free) until given back, and deflated
 * pages come back clean.
 *
 * palloc has static state initialised once, so the tests run in order on
 * one allocator.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "guest/palloc.h"
#include "guest/rt.h"

#define CHUNK PALLOC_CHUNK_PAGES
#define NCHUNKS 16ULL
#define RAM_PAGES (NCHUNKS * CHUNK)		/* 64 MiB */
#define RAM_BYTES (RAM_PAGES * RT_PAGE_SIZE)

static uint64_t ram;		/* gpa == host address of the fake RAM */
static uint64_t gfn0;		/* its first gfn, chunk aligned */
static unsigned printed;	/* rt_printf calls: palloc complains that way */

/* --- the runtime palloc needs, for a single-threaded host test --- */

void rt_spin_lock(struct rt_spinlock *l)
{
	assert_int_equal(l->locked, 0);
	l->locked = 1;
}

void rt_spin_unlock(struct rt_spinlock *l)
{
	l->locked = 0;
}

void rt_printf(const char *fmt, ...)
{
	va_list ap;

	printed++;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
}

/* --- set-up --- */

static int map_ram(void **state)
{
	static const uint64_t tries[] = { 0x40000000ULL, 0x50000000ULL, 0x60000000ULL };
	static struct abi_boot_params bp;

	(void)state;
	for (unsigned int i = 0; i < sizeof(tries) / sizeof(tries[0]) && !ram; i++) {
		void *p = mmap((void *)tries[i], RAM_BYTES, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

		if (p == (void *)tries[i])
			ram = tries[i];
		else if (p != MAP_FAILED)
			munmap(p, RAM_BYTES);
	}
	if (!ram)
		return -1;
	gfn0 = ram >> RT_PAGE_SHIFT;
	bp.nr_ranges = 1;
	bp.ranges[0].gpa = ram;
	bp.ranges[0].len = RAM_BYTES;
	return palloc_init(&bp);
}

static int unmap_ram(void **state)
{
	(void)state;
	return munmap((void *)ram, RAM_BYTES);
}

static uint64_t chunk_gpa(uint64_t c)
{
	return ram + c * CHUNK * RT_PAGE_SIZE;
}

/* --- tests, in order --- */

static void test_palloc_boot_memory_starts_reported(void **state)
{
	uint64_t gpas[NCHUNKS];

	(void)state;
	assert_int_equal(palloc_total_pages(), RAM_PAGES);
	assert_int_equal(palloc_meta_pages(), 1);
	assert_int_equal(palloc_free_pages(), RAM_PAGES - 1);
	/* Chunk 0 holds the bitmap page: every other chunk was never touched. */
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 1) * CHUNK);
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 0);
	assert_int_equal(palloc_avail_pages(), palloc_free_pages());
}

static void test_palloc_allocation_clears_reported_marks(void **state)
{
	static uint32_t gfns[2 * CHUNK];
	uint64_t gpas[NCHUNKS];

	(void)state;
	/* The rest of chunk 0, all of chunk 1, one page of chunk 2: lowest first. */
	assert_int_equal(palloc_alloc_gfns(gfns, 2 * CHUNK), 2 * CHUNK);
	assert_int_equal(gfns[0], gfn0 + 1);
	assert_int_equal(gfns[2 * CHUNK - 1], gfn0 + 2 * CHUNK);
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 3) * CHUNK);
	palloc_free_gfns(gfns, 2 * CHUNK);
	assert_int_equal(palloc_free_pages(), RAM_PAGES - 1);
	/* Freed is not reported: chunks 1 and 2 are reportable, chunk 0 is not whole. */
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 2);
	assert_int_equal(gpas[0], chunk_gpa(1));
	assert_int_equal(gpas[1], chunk_gpa(2));
	assert_int_equal(palloc_free_pages(), RAM_PAGES - 1 - 2 * CHUNK);
	/* Isolated for the report: not free, still available. */
	assert_int_equal(palloc_avail_pages(), RAM_PAGES - 1);
	/* Nothing else to report while those are out. */
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 0);
	palloc_free_reported(chunk_gpa(1), true);
	palloc_free_reported(chunk_gpa(2), true);
	assert_int_equal(palloc_free_pages(), RAM_PAGES - 1);
	assert_int_equal(palloc_avail_pages(), RAM_PAGES - 1);
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 1) * CHUNK);
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 0);
}

static void test_palloc_failed_report_leaves_chunk_reportable(void **state)
{
	uint64_t gpa, gpas[NCHUNKS];

	(void)state;
	gpa = palloc_alloc_run(CHUNK, CHUNK);
	assert_int_equal(gpa, chunk_gpa(1));
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 2) * CHUNK);
	palloc_free_run(gpa, CHUNK);
	assert_int_equal(palloc_claim_unreported(gpas, 1), 1);
	assert_int_equal(gpas[0], chunk_gpa(1));
	palloc_free_reported(gpas[0], false);
	assert_int_equal(palloc_avail_pages(), palloc_free_pages());
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 1);
	palloc_free_reported(gpas[0], true);
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 1) * CHUNK);
}

static void test_palloc_claim_takes_only_wholly_free_chunks(void **state)
{
	uint64_t gpas[NCHUNKS], gpa;

	(void)state;
	/* One page in chunk 3 keeps it from being reported. */
	gpa = palloc_alloc_run(CHUNK, CHUNK);
	assert_int_equal(gpa, chunk_gpa(1));
	assert_int_equal(palloc_alloc_run(CHUNK, CHUNK), chunk_gpa(2));
	assert_int_equal(palloc_alloc_run(CHUNK, CHUNK), chunk_gpa(3));
	palloc_free_run(chunk_gpa(1), CHUNK);
	palloc_free_run(chunk_gpa(2), CHUNK);
	palloc_free_run(chunk_gpa(3) + RT_PAGE_SIZE, CHUNK - 1);
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 2);
	assert_int_equal(gpas[0], chunk_gpa(1));
	assert_int_equal(gpas[1], chunk_gpa(2));
	palloc_free_reported(gpas[0], true);
	palloc_free_reported(gpas[1], true);
	palloc_free_run(chunk_gpa(3), 1);
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 1);
	assert_int_equal(gpas[0], chunk_gpa(3));
	palloc_free_reported(gpas[0], true);
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 1) * CHUNK);
}

static void test_palloc_deflated_pages_come_back_clean(void **state)
{
	static uint32_t gfns[3 * CHUNK];
	uint64_t gpas[NCHUNKS];
	size_t n;

	(void)state;
	/* Chunk 0's free pages, chunks 1 and 2, one page of chunk 3. */
	n = palloc_alloc_gfns(gfns, 3 * CHUNK);
	assert_int_equal(n, 3 * CHUNK);
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 4) * CHUNK);
	/* Given back in two slices, split at a chunk boundary (as the balloon does). */
	palloc_free_gfns_clean(gfns, CHUNK - 1 + CHUNK);
	palloc_free_gfns_clean(gfns + 2 * CHUNK - 1, CHUNK + 1);
	assert_int_equal(palloc_free_pages(), RAM_PAGES - 1);
	/*
	 * Chunks 1 and 2 came back whole: nothing to report. Chunk 3 lost its
	 * mark when its first page was allocated and got only that page back, so
	 * it is reported (its other pages may have been used meanwhile, for all
	 * palloc knows); chunk 0 is not whole.
	 */
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 2) * CHUNK);
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 1);
	assert_int_equal(gpas[0], chunk_gpa(3));
	palloc_free_reported(gpas[0], true);
}

static void test_palloc_clean_free_of_a_partial_chunk_is_reported_later(void **state)
{
	static uint32_t gfns[2 * CHUNK];
	uint64_t gpas[NCHUNKS];

	(void)state;
	assert_int_equal(palloc_alloc_gfns(gfns, 2 * CHUNK), 2 * CHUNK);
	/* The slice boundary falls mid chunk 1: neither slice holds all of it. */
	palloc_free_gfns_clean(gfns, CHUNK + 100);
	palloc_free_gfns_clean(gfns + CHUNK + 100, CHUNK - 100);
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 3) * CHUNK);
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 2);
	assert_int_equal(gpas[0], chunk_gpa(1));
	assert_int_equal(gpas[1], chunk_gpa(2));
	palloc_free_reported(gpas[0], true);
	palloc_free_reported(gpas[1], true);
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 1) * CHUNK);
}

static uint64_t reclaim_asked;

static uint64_t fake_reclaim(uint64_t pages)
{
	reclaim_asked = pages;
	return 5;
}

static void test_palloc_reclaim_calls_the_registered_reclaimer(void **state)
{
	uint64_t stalls = palloc_stalls();

	(void)state;
	assert_int_equal(palloc_reclaim(7), 0);
	palloc_set_reclaim(fake_reclaim);
	assert_int_equal(palloc_reclaim(7), 5);
	assert_int_equal(reclaim_asked, 7);
	palloc_set_reclaim(NULL);
	assert_int_equal(palloc_stalls(), stalls + 2);
}

static void test_palloc_bad_reported_free_is_refused(void **state)
{
	unsigned int before = printed;
	uint64_t free = palloc_free_pages();

	(void)state;
	/* Not chunk aligned, and a chunk that is free already (double free). */
	palloc_free_reported(chunk_gpa(4) + RT_PAGE_SIZE, true);
	palloc_free_reported(chunk_gpa(4), true);
	assert_int_equal(printed, before + 2);
	assert_int_equal(palloc_free_pages(), free);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_palloc_boot_memory_starts_reported),
		cmocka_unit_test(test_palloc_allocation_clears_reported_marks),
		cmocka_unit_test(test_palloc_failed_report_leaves_chunk_reportable),
		cmocka_unit_test(test_palloc_claim_takes_only_wholly_free_chunks),
		cmocka_unit_test(test_palloc_deflated_pages_come_back_clean),
		cmocka_unit_test(test_palloc_clean_free_of_a_partial_chunk_is_reported_later),
		cmocka_unit_test(test_palloc_reclaim_calls_the_registered_reclaimer),
		cmocka_unit_test(test_palloc_bad_reported_free_is_refused),
	};

	return cmocka_run_group_tests(tests, map_ram, unmap_ram);
}
