/* SPDX-License-Identifier: MIT */
/*
 * The guest-memory access API: bounds, wrap-around, region boundaries; and
 * what memmap knows of the kernel's zero page against what the kernel does.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/layout.h"
#include "mem/gm.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"

static void test_gm_copies_round_trip_inside_ram(void **state)
{
	struct gm *gm;
	char out[64], in[64];

	(void)state;
	assert_int_equal(mem_create_anon(16 << 20, &gm), 0);
	memset(out, 0xa5, sizeof(out));
	assert_int_equal(mem_write(gm, 0x300000, out, sizeof(out)), 0);
	assert_int_equal(mem_read(gm, 0x300000, in, sizeof(in)), 0);
	assert_memory_equal(in, out, sizeof(out));
	assert_int_equal(mem_write_le32(gm, 0x400000, 0xdeadbeef), 0);
	{
		uint32_t v;

		assert_int_equal(mem_read_le32(gm, 0x400000, &v), 0);
		assert_int_equal(v, 0xdeadbeef);
	}
	mem_destroy(gm);
}

static void test_gm_rejects_ranges_leaving_ram_without_copying(void **state)
{
	struct gm *gm;
	char buf[8192];
	uint64_t end = 16 << 20;

	(void)state;
	assert_int_equal(mem_create_anon(end, &gm), 0);
	memset(buf, 0x5a, sizeof(buf));
	/* Straddles the end of RAM: nothing may be written. */
	assert_int_equal(mem_write(gm, end - 4096, buf, sizeof(buf)), -EFAULT);
	assert_int_equal(mem_read(gm, end - 4096, buf, 4096), 0);
	for (int i = 0; i < 4096; i++)
		assert_int_equal(buf[i], 0);
	assert_int_equal(mem_read(gm, end, buf, 1), -EFAULT);
	assert_int_equal(mem_read(gm, UINT64_MAX - 2, buf, 16), -EOVERFLOW);
	assert_false(mem_range_ok(gm, LAYOUT_MMIO_BASE, 4));
	assert_true(mem_range_ok(gm, 0, end));
	assert_false(mem_range_ok(gm, 0, end + 1));
	mem_destroy(gm);
}

static void test_gm_ranges_across_the_mmio_hole_fail_but_each_side_works(void **state)
{
	struct gm *gm;
	uint64_t v = 42;

	(void)state;
	assert_int_equal(mem_create_anon(4ULL << 30, &gm), 0);
	assert_int_equal(mem_write(gm, LAYOUT_LOW_RAM_MAX - 4, &v, 8), -EFAULT);
	assert_int_equal(mem_write(gm, LAYOUT_LOW_RAM_MAX - 8, &v, 8), 0);
	assert_int_equal(mem_write(gm, LAYOUT_HIGH_RAM_BASE, &v, 8), 0);
	assert_int_equal(mem_page_index(gm, LAYOUT_HIGH_RAM_BASE),
			 (int64_t)(LAYOUT_LOW_RAM_MAX / LAYOUT_PAGE_SIZE));
	assert_int_equal(mem_index_gpa(gm, LAYOUT_LOW_RAM_MAX / LAYOUT_PAGE_SIZE),
			 LAYOUT_HIGH_RAM_BASE);
	assert_int_equal(mem_page_index(gm, LAYOUT_MMIO_BASE), -1);
	assert_int_equal(mem_nr_pages(gm), (4ULL << 30) / LAYOUT_PAGE_SIZE);
	mem_destroy(gm);
}

static bool bit(const uint64_t *map, uint64_t i)
{
	return map[i / 64] >> (i % 64) & 1;
}

/*
 * The VMM's writes are marked for migration while tracking is on: every
 * page a write touched (across the MMIO hole too), each collected once,
 * nothing before the start or after the stop.
 */
static void test_gm_vmm_writes_are_marked_dirty(void **state)
{
	uint64_t low = LAYOUT_LOW_RAM_MAX / LAYOUT_PAGE_SIZE, v = 7;
	uint64_t words = ((4ULL << 30) / LAYOUT_PAGE_SIZE + 63) / 64;
	uint64_t *map = calloc(words, sizeof(*map));
	uint8_t buf[2 * LAYOUT_PAGE_SIZE] = { 1 };
	struct gm *gm;
	int fd = memfd_create("test-gm", MFD_CLOEXEC);

	(void)state;
	assert_non_null(map);
	assert_true(fd >= 0 && write(fd, buf, sizeof(buf)) == (ssize_t)sizeof(buf));
	assert_int_equal(mem_create_anon(4ULL << 30, &gm), 0);
	assert_int_equal(mem_write(gm, 0x10000, &v, 8), 0);	/* before the start: not marked */
	mem_dirty_vmm_track(gm, true);
	assert_int_equal(mem_dirty_vmm_collect(gm, map), 0);
	/* A write across a page boundary marks both pages. */
	assert_int_equal(mem_write(gm, 0x20000 - 4, &v, 8), 0);
	assert_int_equal(mem_write_le32(gm, 0x30000, 1), 0);
	assert_int_equal(mem_zero_fill(gm, 0x40000, 3 * LAYOUT_PAGE_SIZE), 0);
	assert_int_equal(mem_copy_from_fd(gm, 0x50000, fd, 0, sizeof(buf)), 0);
	assert_int_equal(mem_store_le16_release(gm, 0x60002, 9), 0);
	assert_int_equal(mem_store_le16_release(gm, 0x60001, 9), -EFAULT);	/* unaligned */
	/* Both sides of the MMIO hole: the high side's pages follow the low side's. */
	assert_int_equal(mem_write(gm, LAYOUT_LOW_RAM_MAX - 8, &v, 8), 0);
	assert_int_equal(mem_write(gm, LAYOUT_HIGH_RAM_BASE, &v, 8), 0);
	/* A write refused as a whole marks nothing. */
	assert_int_equal(mem_write(gm, LAYOUT_LOW_RAM_MAX - 4, &v, 8), -EFAULT);
	assert_int_equal(mem_dirty_vmm_collect(gm, map), 2 + 1 + 3 + 2 + 1 + 2);
	assert_false(bit(map, 0x10));
	assert_true(bit(map, 0x1f) && bit(map, 0x20));
	assert_true(bit(map, 0x30));
	assert_true(bit(map, 0x40) && bit(map, 0x41) && bit(map, 0x42) && !bit(map, 0x43));
	assert_true(bit(map, 0x50) && bit(map, 0x51));
	assert_true(bit(map, 0x60));
	assert_true(bit(map, low - 1) && bit(map, low) && !bit(map, low + 1));
	/* Collected once: the next collect starts empty. */
	assert_int_equal(mem_dirty_vmm_collect(gm, map), 0);
	mem_dirty_vmm_track(gm, false);
	assert_int_equal(mem_write(gm, 0x70000, &v, 8), 0);
	assert_int_equal(mem_dirty_vmm_collect(gm, map), 0);
	/* A new start forgets what was marked before it. */
	mem_dirty_vmm_track(gm, true);
	assert_int_equal(mem_write(gm, 0x80000, &v, 8), 0);
	mem_dirty_vmm_track(gm, true);
	assert_int_equal(mem_dirty_vmm_collect(gm, map), 0);
	mem_destroy(gm);
	close(fd);
	free(map);
}

static void test_gm_create_refuses_bad_sizes(void **state)
{
	struct gm *gm;

	(void)state;
	assert_int_equal(mem_create_anon(0, &gm), -EINVAL);
	assert_int_equal(mem_create_anon((16 << 20) + 1, &gm), -EINVAL);
	assert_int_equal(mem_create_anon(LAYOUT_MAX_RAM + LAYOUT_PAGE_SIZE, &gm), -E2BIG);
}

/*
 * A read of untouched guest RAM costs no memory exactly where memmap says
 * reads map the zero page (a KVM host's kernel), and a page where it says
 * they do not (pvm_no_zero_page). Reads that map it make it recognisable.
 */
static void test_gm_zero_page_facts_match_the_kernel(void **state)
{
	struct gm *gm;
	uint8_t buf[64];
	uint64_t pm;
	int64_t idx;

	(void)state;
	assert_int_equal(mem_create_anon(8ULL << 20, &gm), 0);
	idx = mem_page_index(gm, 0x400000);
	assert_int_equal(mem_read(gm, 0x400000, buf, sizeof(buf)), 0);
	assert_int_equal(mem_pagemap(gm, (uint64_t)idx, 1, &pm), 1);
	assert_int_equal(mem_pm_resident(pm), !mem_zero_page_on_read());
	assert_int_equal(mem_resident(gm), !mem_zero_page_on_read());
	if (mem_zero_page_on_read())
		assert_true(mem_zero_page_known());
	mem_destroy(gm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_gm_copies_round_trip_inside_ram),
		cmocka_unit_test(test_gm_rejects_ranges_leaving_ram_without_copying),
		cmocka_unit_test(test_gm_ranges_across_the_mmio_hole_fail_but_each_side_works),
		cmocka_unit_test(test_gm_vmm_writes_are_marked_dirty),
		cmocka_unit_test(test_gm_create_refuses_bad_sizes),
		cmocka_unit_test(test_gm_zero_page_facts_match_the_kernel),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
