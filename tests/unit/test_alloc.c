/* SPDX-License-Identifier: MIT */
/*
 * The VMM's heap keeps transparent huge pages off (core/alloc.c): with
 * jemalloc, its option says "never" and a block of the heap, written all
 * through, has no huge page behind it; where the host would give one
 * (THP "always" or "madvise"), its mapping carries MADV_NOHUGEPAGE ("nh"
 * in smaps). Builds with the sanitizers' allocator skip.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"

#define BLOCK (8u << 20)

/* The host's THP mode, the bracketed word of the sysfs file, or "" without one. */
static void thp_mode(char *mode, size_t len)
{
	char line[128] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
	char *open, *close;

	mode[0] = '\0';
	if (!f)
		return;
	if (fgets(line, sizeof(line), f) && (open = strchr(line, '[')) &&
	    (close = strchr(open, ']')) && (size_t)(close - open) < len) {
		memcpy(mode, open + 1, (size_t)(close - open - 1));
		mode[close - open - 1] = '\0';
	}
	fclose(f);
}

/* The AnonHugePages and VmFlags of the mapping that holds p, from /proc/self/smaps. */
static bool mapping_of(const void *p, long *huge_kb, char *flags, size_t len)
{
	uintptr_t a = (uintptr_t)p;
	char line[512];
	bool in = false, found = false;
	FILE *f = fopen("/proc/self/smaps", "r");

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;

		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
			in = a >= lo && a < hi;
			continue;
		}
		if (!in)
			continue;
		if (!strncmp(line, "AnonHugePages:", 14))
			*huge_kb = strtol(line + 14, NULL, 10);
		if (!strncmp(line, "VmFlags:", 8)) {
			snprintf(flags, len, "%s", line + 8);
			found = true;
			break;
		}
	}
	fclose(f);
	return found;
}

static void test_alloc_heap_has_no_huge_pages(void **state)
{
	char mode[32], flags[512] = "";
	long huge_kb = -1;
	uint8_t *p;

	(void)state;
	if (strcmp(kv_alloc_name(), "jemalloc"))
		skip(); /* the sanitizers' allocator: the host's THP mode decides */
	assert_true(kv_alloc_thp_off());
	p = kv_zalloc(BLOCK);
	assert_non_null(p);
	memset(p, 0x5a, BLOCK);
	assert_true(mapping_of(p + BLOCK / 2, &huge_kb, flags, sizeof(flags)));
	assert_int_equal(huge_kb, 0);
	thp_mode(mode, sizeof(mode));
	if (!strcmp(mode, "always") || !strcmp(mode, "madvise"))
		assert_non_null(strstr(flags, " nh"));
	kv_free(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_alloc_heap_has_no_huge_pages),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
