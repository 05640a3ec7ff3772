/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the guest's page allocator (src/guest/palloc.c) and the
 * address conversions it relies on (src/guest/gpa.h), built with host flags
 * against an anonymous mapping that plays guest RAM. The mapping sits at
 * whatever host address mmap gives; its guest-physical addresses are a
 * fixed RAM_GPA, as under the thread accelerator, so palloc only works if
 * it converts between the two (it keeps its bitmap in the RAM it manages).
 * Covers the free page reporting bookkeeping the balloon driver relies on:
 * chunks free since boot start out reported, any allocation clears the mark,
 * a claimed chunk is isolated (counted available, not free) until given
 * back, and deflated pages come back clean.
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
/*
 * The fake RAM's first gpa: chunk aligned, gfns within 32 bits, and not the
 * host address of anything, so a missed conversion faults or fails a check.
 */
#define RAM_GPA 0x300000000ULL

static uint8_t *ram;		/* host address of the fake RAM */
static uint64_t gfn0;		/* its first gfn, chunk aligned */
static unsigned printed;	/* rt_printf calls: palloc complains that way */

/* --- the runtime palloc needs, for a single-threaded host test --- */

uint64_t rt_phys_offset;

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
	static struct abi_boot_params bp;
	void *p;

	(void)state;
	p = mmap(NULL, RAM_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	ram = p;
	rt_phys_offset = (uint64_t)(uintptr_t)ram - RAM_GPA;
	gfn0 = RAM_GPA >> RT_PAGE_SHIFT;
	bp.nr_ranges = 1;
	bp.ranges[0].gpa = RAM_GPA;
	bp.ranges[0].len = RAM_BYTES;
	return palloc_init(&bp);
}

static int unmap_ram(void **state)
{
	(void)state;
	return munmap(ram, RAM_BYTES);
}

static gpa_t chunk_gpa(uint64_t c)
{
	return gpa(RAM_GPA + c * CHUNK * RT_PAGE_SIZE);
}

/* cmocka compares integers: a gpa's raw value. */
#define assert_gpa_equal(a, b) assert_int_equal(gpa_val(a), gpa_val(b))

/* --- tests, in order --- */

static void test_gpa_conversions(void **state)
{
	gpa_t g = gpa(RAM_GPA + 5 * RT_PAGE_SIZE + 123);

	(void)state;
	assert_ptr_equal(phys_to_virt(gpa(RAM_GPA)), ram);
	assert_ptr_equal(phys_to_virt(g), ram + 5 * RT_PAGE_SIZE + 123);
	assert_gpa_equal(virt_to_phys(ram + RAM_BYTES - 1), gpa(RAM_GPA + RAM_BYTES - 1));
	assert_gpa_equal(virt_to_phys(phys_to_virt(g)), g);
	assert_ptr_equal(phys_to_virt(virt_to_phys(ram + 4096)), ram + 4096);
	assert_int_equal(gpa_to_gfn(g), gfn0 + 5);
	assert_gpa_equal(gfn_to_gpa(gfn0 + 5), gpa(RAM_GPA + 5 * RT_PAGE_SIZE));
	assert_int_equal(gpa_to_gfn(gfn_to_gpa(0xfffffffULL)), 0xfffffffULL);
	assert_gpa_equal(gpa_add(gpa(RAM_GPA), 8), gpa(RAM_GPA + 8));
	assert_true(gpa_is_null(GPA_NULL));
	assert_false(gpa_is_null(gpa(RAM_GPA)));
}

static void test_palloc_boot_memory_starts_reported(void **state)
{
	gpa_t gpas[NCHUNKS];

	(void)state;
	assert_int_equal(palloc_total_pages(), RAM_PAGES);
	assert_int_equal(palloc_meta_pages(), 1);
	assert_int_equal(palloc_free_pages(), RAM_PAGES - 1);
	/* The bitmap went where RAM_GPA maps: page 0 taken by itself, the rest free. */
	assert_int_equal(((uint64_t *)ram)[0], ~1ULL);
	/* Chunk 0 holds the bitmap page: every other chunk was never touched. */
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 1) * CHUNK);
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 0);
	assert_int_equal(palloc_avail_pages(), palloc_free_pages());
}

static void test_palloc_allocation_clears_reported_marks(void **state)
{
	static uint32_t gfns[2 * CHUNK];
	gpa_t gpas[NCHUNKS];

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
	assert_gpa_equal(gpas[0], chunk_gpa(1));
	assert_gpa_equal(gpas[1], chunk_gpa(2));
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
	gpa_t gpa, gpas[NCHUNKS];

	(void)state;
	gpa = palloc_alloc_run(CHUNK, CHUNK);
	assert_gpa_equal(gpa, chunk_gpa(1));
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 2) * CHUNK);
	palloc_free_run(gpa, CHUNK);
	assert_int_equal(palloc_claim_unreported(gpas, 1), 1);
	assert_gpa_equal(gpas[0], chunk_gpa(1));
	palloc_free_reported(gpas[0], false);
	assert_int_equal(palloc_avail_pages(), palloc_free_pages());
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 1);
	palloc_free_reported(gpas[0], true);
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 1) * CHUNK);
}

static void test_palloc_claim_takes_only_wholly_free_chunks(void **state)
{
	gpa_t gpas[NCHUNKS], gpa;

	(void)state;
	/* One page in chunk 3 keeps it from being reported. */
	gpa = palloc_alloc_run(CHUNK, CHUNK);
	assert_gpa_equal(gpa, chunk_gpa(1));
	assert_gpa_equal(palloc_alloc_run(CHUNK, CHUNK), chunk_gpa(2));
	assert_gpa_equal(palloc_alloc_run(CHUNK, CHUNK), chunk_gpa(3));
	palloc_free_run(chunk_gpa(1), CHUNK);
	palloc_free_run(chunk_gpa(2), CHUNK);
	palloc_free_run(gpa_add(chunk_gpa(3), RT_PAGE_SIZE), CHUNK - 1);
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 2);
	assert_gpa_equal(gpas[0], chunk_gpa(1));
	assert_gpa_equal(gpas[1], chunk_gpa(2));
	palloc_free_reported(gpas[0], true);
	palloc_free_reported(gpas[1], true);
	palloc_free_run(chunk_gpa(3), 1);
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 1);
	assert_gpa_equal(gpas[0], chunk_gpa(3));
	palloc_free_reported(gpas[0], true);
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 1) * CHUNK);
}

static void test_palloc_deflated_pages_come_back_clean(void **state)
{
	static uint32_t gfns[3 * CHUNK];
	gpa_t gpas[NCHUNKS];
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
	assert_gpa_equal(gpas[0], chunk_gpa(3));
	palloc_free_reported(gpas[0], true);
}

static void test_palloc_clean_free_of_a_partial_chunk_is_reported_later(void **state)
{
	static uint32_t gfns[2 * CHUNK];
	gpa_t gpas[NCHUNKS];

	(void)state;
	assert_int_equal(palloc_alloc_gfns(gfns, 2 * CHUNK), 2 * CHUNK);
	/* The slice boundary falls mid chunk 1: neither slice holds all of it. */
	palloc_free_gfns_clean(gfns, CHUNK + 100);
	palloc_free_gfns_clean(gfns + CHUNK + 100, CHUNK - 100);
	assert_int_equal(palloc_reported_pages(), (NCHUNKS - 3) * CHUNK);
	assert_int_equal(palloc_claim_unreported(gpas, NCHUNKS), 2);
	assert_gpa_equal(gpas[0], chunk_gpa(1));
	assert_gpa_equal(gpas[1], chunk_gpa(2));
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
	palloc_free_reported(gpa_add(chunk_gpa(4), RT_PAGE_SIZE), true);
	palloc_free_reported(chunk_gpa(4), true);
	assert_int_equal(printed, before + 2);
	assert_int_equal(palloc_free_pages(), free);
}

static void test_palloc_page_is_reached_through_phys_to_virt(void **state)
{
	uint64_t free = palloc_free_pages();
	gpa_t page;

	(void)state;
	/* Lowest first: the page right after the bitmap. */
	page = palloc_alloc();
	assert_gpa_equal(page, gpa(RAM_GPA + RT_PAGE_SIZE));
	memset(phys_to_virt(page), 0x5a, RT_PAGE_SIZE);
	assert_int_equal(ram[RT_PAGE_SIZE], 0x5a);
	assert_int_equal(ram[2 * RT_PAGE_SIZE - 1], 0x5a);
	assert_int_equal(ram[2 * RT_PAGE_SIZE], 0);
	palloc_free(page);
	assert_int_equal(palloc_free_pages(), free);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_gpa_conversions),
		cmocka_unit_test(test_palloc_boot_memory_starts_reported),
		cmocka_unit_test(test_palloc_allocation_clears_reported_marks),
		cmocka_unit_test(test_palloc_failed_report_leaves_chunk_reportable),
		cmocka_unit_test(test_palloc_claim_takes_only_wholly_free_chunks),
		cmocka_unit_test(test_palloc_deflated_pages_come_back_clean),
		cmocka_unit_test(test_palloc_clean_free_of_a_partial_chunk_is_reported_later),
		cmocka_unit_test(test_palloc_reclaim_calls_the_registered_reclaimer),
		cmocka_unit_test(test_palloc_bad_reported_free_is_refused),
		cmocka_unit_test(test_palloc_page_is_reached_through_phys_to_virt),
	};

	return cmocka_run_group_tests(tests, map_ram, unmap_ram);
}
