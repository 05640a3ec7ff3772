/* SPDX-License-Identifier: MIT */
/*
 * A restore's pages (migrate/snapshot.c, load_pages): a snapshot file whose
 * data pages lie sparse in the windows the restore reads them by (one
 * at the start and one far into a window, one alone, the last page of a
 * window, a window with none) goes into a fresh VM (fake_dest.h), each
 * data page with its content, ballooned and absent pages zero. The file
 * holds no vCPU or device state, so the job fails once the pages are in,
 * and the VM (which the discard keeps) is read then.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/vm.h"
#include "fake_dest.h"
#include "mem/gm.h"
#include "mem/memmap.h"
#include "migrate/migrate.h"
#include "migrate/snapfile.h"
#include "migrate/stream.h"

#define PAGE MIG_PAGE_SIZE
#define NR_PAGES 1024		/* a 4 MiB VM: four of load_pages' 256-page windows */

/* Page i's content when it is a data page. */
static void content(uint8_t *p, uint64_t i)
{
	for (size_t k = 0; k < PAGE; k++)
		p[k] = (uint8_t)(i * 7 + k % 251 + 1);
}

static uint8_t kind_of(uint64_t i)
{
	switch (i) {
	case 5:		/* window 0: first and last data pages far apart */
	case 200:
	case 300:	/* window 1: one alone */
	case 767:	/* window 2: its last page */
		return SNAP_PAGE_DATA;
	case 400:
	case 401:
		return SNAP_PAGE_BALLOONED;
	default:	/* and window 3: no data at all */
		return SNAP_PAGE_ZERO;
	}
}

static void test_restore_sparse_data_pages(void **state)
{
	static uint8_t data[NR_PAGES * PAGE];
	char dir[] = "/tmp/kvmem-test-restore-XXXXXX", path[64], why[192] = "";
	uint8_t kinds[NR_PAGES], got[PAGE], want[PAGE];
	uint64_t end[2] = { 0, 0 };
	struct mig_params params = { 0 };
	struct mig_progress prog;
	struct snap_writer *w;
	struct fake_dest d;
	struct gm *gm;
	int null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);

	(void)state;
	assert_true(null_fd >= 0);
	fake_dest_init(&d, NR_PAGES * PAGE, 1, null_fd);
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/vm.snap", dir);
	for (uint64_t i = 0; i < NR_PAGES; i++) {
		kinds[i] = kind_of(i);
		if (kinds[i] == SNAP_PAGE_DATA)
			content(data + i * PAGE, i);
	}
	assert_int_equal(snapw_create(path, NR_PAGES, 0, &w, why, sizeof(why)), 0);
	assert_int_equal(snapw_pages(w, 0, NR_PAGES, kinds, data, why, sizeof(why)), 0);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_VM, "{\"cpus\":1}", 10), 0);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_END, end, sizeof(end)), 0);
	assert_int_equal(snapw_finish(w, why, sizeof(why)), 0);

	assert_int_equal(mig_restore_start(path, &params, &fake_dest_ops, &d, &d.job, why,
					   sizeof(why)), 0);
	fake_dest_finish(&d, &prog);
	/* Past the pages: the state is what it lacks. */
	assert_int_equal(prog.stage, MIG_STAGE_FAILED);
	assert_non_null(strstr(prog.error, "lacks a vCPU's or the devices' state"));
	assert_true(d.discarded);
	assert_non_null(d.vm);
	gm = vm_gm(d.vm);
	for (uint64_t i = 0; i < NR_PAGES; i++) {
		memset(want, 0, sizeof(want));
		if (kinds[i] == SNAP_PAGE_DATA)
			content(want, i);
		assert_int_equal(mem_read(gm, mem_index_gpa(gm, i), got, PAGE), 0);
		if (memcmp(got, want, PAGE))
			fail_msg("page %llu: not what the file holds", (unsigned long long)i);
	}
	fake_dest_release(&d);
	close(null_fd);
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_restore_sparse_data_pages),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
