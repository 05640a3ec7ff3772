/* SPDX-License-Identifier: MIT */
/*
 * Reading a VM's pages out for migration (mem/export.c): each page as what
 * it is, never a hole faulted in to find out, and a page's state never
 * trusted over what the pagemap shows (a dropped page the guest wrote again
 * has content).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/layout.h"
#include "mem/export.h"
#include "mem/gm.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/pagestate.h"

#define RAM (16ULL << 20)
#define BASE (4ULL << 20) /* above the layout's reserved low pages */

static uint8_t data[MEM_EXPORT_MAX * MEM_PAGE_SIZE];

static void test_export_says_what_each_page_is(void **state)
{
	struct mem_export_page k[8];
	uint8_t page[MEM_PAGE_SIZE];
	struct gm *gm;
	uint64_t first, pm;

	(void)state;
	assert_int_equal(mem_create_anon(RAM, &gm), 0);
	first = (uint64_t)mem_page_index(gm, BASE);
	/* 0: never touched; 1: content; 2: written zeros; 3: ballooned; 4: dropped as zero, written again */
	memset(page, 0x5a, sizeof(page));
	assert_int_equal(mem_write(gm, BASE + MEM_PAGE_SIZE, page, sizeof(page)), 0);
	assert_int_equal(mem_zero_fill(gm, BASE + 2 * MEM_PAGE_SIZE, MEM_PAGE_SIZE), 0);
	pagestate_set(mem_pagestate(gm), first + 3, PS_BALLOONED);
	pagestate_set(mem_pagestate(gm), first + 4, PS_ZERO);
	memset(page, 0x77, sizeof(page));
	assert_int_equal(mem_write(gm, BASE + 4 * MEM_PAGE_SIZE, page, sizeof(page)), 0);

	assert_int_equal(mem_export_pages(gm, first, 5, NULL, k, data), 0);
	assert_int_equal(k[0].kind, MEM_EXPORT_ZERO);
	assert_int_equal(k[1].kind, MEM_EXPORT_DATA);
	assert_int_equal(data[MEM_PAGE_SIZE + 100], 0x5a);
	assert_int_equal(k[2].kind, MEM_EXPORT_ZERO);
	assert_int_equal(k[3].kind, MEM_EXPORT_BALLOONED);
	/* Its state says zero; the guest wrote it since: its content travels. */
	assert_int_equal(k[4].kind, MEM_EXPORT_DATA);
	assert_int_equal(data[4 * MEM_PAGE_SIZE + 7], 0x77);
	/* Finding out did not fault the untouched page in. */
	assert_int_equal(mem_pagemap(gm, first, 1, &pm), 1);
	assert_false(mem_pm_resident(pm));
	mem_destroy(gm);
}

static void test_export_reads_only_the_pages_asked_for(void **state)
{
	struct mem_export_page k[MEM_EXPORT_MAX];
	uint64_t mask[MEM_EXPORT_MAX / 64] = { 0 };
	uint8_t page[MEM_PAGE_SIZE];
	struct gm *gm;
	uint64_t first;

	(void)state;
	assert_int_equal(mem_create_anon(RAM, &gm), 0);
	first = (uint64_t)mem_page_index(gm, BASE);
	memset(page, 1, sizeof(page));
	for (unsigned int i = 0; i < MEM_EXPORT_MAX; i += 7)
		assert_int_equal(mem_write(gm, BASE + i * MEM_PAGE_SIZE, page, sizeof(page)), 0);
	mask[0] = 1ULL << 7 | 1ULL << 8;
	mask[3] = 1ULL << 63;
	assert_int_equal(mem_export_pages(gm, first, MEM_EXPORT_MAX, mask, k, data), 0);
	for (unsigned int i = 0; i < MEM_EXPORT_MAX; i++) {
		uint8_t want = i == 7 ? MEM_EXPORT_DATA : (i == 8 || i == 255) ? MEM_EXPORT_ZERO : 0;

		if (k[i].kind != want)
			fail_msg("page %u: kind %u, want %u", i, k[i].kind, want);
	}
	/* Bad ranges are refused. */
	assert_int_equal(mem_export_pages(gm, first, 0, NULL, k, data), -EINVAL);
	assert_int_equal(mem_export_pages(gm, mem_nr_pages(gm) - 1, 2, NULL, k, data), -EINVAL);
	mem_destroy(gm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_export_says_what_each_page_is),
		cmocka_unit_test(test_export_reads_only_the_pages_asked_for),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
