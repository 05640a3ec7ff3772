/* SPDX-License-Identifier: MIT */
/*
 * Zero-page reclaim on anonymous guest memory under a real userfaultfd: runs
 * of zero pages are dropped, everything else keeps its content and is left
 * unprotected, the page states say which is which, and max_pages holds; a
 * dropped page read again costs nothing wherever memmap recognises the
 * kernel's zero page, also where a read of a hole allocates a page.
 * Windows: a write to an untouched page of a window being remapped waits,
 * without the page being populated, and lands in whichever mapping follows;
 * the uffd service serves those waits as it does for a VM.
 *
 * Every test runs twice: on this kernel as it is, then as on a kernel whose
 * zero page memmap cannot recognise (mem_forget_zero_page).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "fake_guest.h"
#include "mem/gm.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/pagecontent.h"
#include "mem/pagestate.h"
#include "mem/reclaim.h"
#include "mem/txn.h"
#include "mem/uffd.h"

#define RAM (8ULL << 20)
#define BASE 0x400000ULL /* first page of the test area, well inside RAM */
#define N 64

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

	if (mem_create_anon(RAM, &f.gm) || mem_enable_uffd(f.gm))
		return -1;
	f.first = (uint64_t)mem_page_index(f.gm, BASE);
	/* Every page resident: zero pages written with zeros, others with their number. */
	for (unsigned int i = 0; i < N; i++) {
		memset(page, pattern[i] == '1' ? 0 : (int)(i + 1), sizeof(page));
		if (mem_write(f.gm, BASE + 4096ULL * i, page, sizeof(page)))
			return -1;
	}
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;

	mem_destroy(f->gm);
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
	struct pagestate *ps = mem_pagestate(f->gm);
	uint8_t page[4096], want[4096];
	uint64_t pm;

	assert_int_equal(mem_pagemap(f->gm, f->first + i, 1, &pm), 1);
	/* Never left write-protected: a guest write would wait forever. */
	assert_false(pm & PM_UFFD_WP);
	if (dropped) {
		assert_int_equal(pagestate_get(ps, f->first + i), PS_ZERO);
		assert_false(mem_pm_resident(pm));
	} else {
		assert_int_equal(pagestate_get(ps, f->first + i), PS_ANON);
		assert_true(mem_pm_resident(pm));
	}
	memset(want, pattern[i] == '1' ? 0 : (int)(i + 1), sizeof(want));
	assert_int_equal(mem_read(f->gm, BASE + 4096ULL * i, page, sizeof(page)), 0);
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

/*
 * The guest reads its dropped pages again. They read zeros, and stay free
 * and PS_ZERO where memmap recognises the zero page: on a kernel whose reads
 * map it by themselves, and on one whose reads allocate a page
 * (pvm_no_zero_page), because the drop mapped it there. Elsewhere each read
 * costs a page, and reclaim finds them to drop again. A write then gives the
 * page a page of its own, without waiting.
 */
static void test_reclaim_zero_dropped_pages_read_again_cost_nothing(void **state)
{
	struct fix *f = *state;
	struct pagestate *ps = mem_pagestate(f->gm);
	bool known = mem_zero_page_known();
	uint8_t page[4096], got[4096], zero[4096] = { 0 };
	uint64_t pm;

	assert_int_equal(mem_reclaim_zero(f->gm, f->first, N, UINT64_MAX), zeros_in(N));
	for (unsigned int i = 0; i < N; i++) {
		if (pattern[i] != '1')
			continue;
		assert_int_equal(mem_pagemap(f->gm, f->first + i, 1, &pm), 1);
		assert_false(pm & PM_UFFD_WP);
		/* Mapped as it was dropped only where a read would not map it. */
		if (known && !mem_zero_page_on_read())
			assert_true(mem_pm_is_zero_page(pm));
		else
			assert_true(mem_pm_is_hole(pm));
		assert_int_equal(mem_read(f->gm, BASE + 4096ULL * i, page, sizeof(page)), 0);
		assert_memory_equal(page, zero, sizeof(page));
		assert_int_equal(mem_pagemap(f->gm, f->first + i, 1, &pm), 1);
		assert_int_equal(mem_pm_resident(pm), !known);
	}
	assert_int_equal(mem_resident(f->gm), known ? N - zeros_in(N) : N);
	assert_int_equal(pagestate_get(ps, f->first), known ? PS_ZERO : PS_ANON);
	assert_int_equal(mem_reclaim_zero(f->gm, f->first, N, UINT64_MAX), known ? 0 : zeros_in(N));
	/* A write to a dropped page (page 0) copies on write: its own page, nothing held. */
	memset(page, 0x5a, sizeof(page));
	assert_int_equal(mem_write(f->gm, BASE, page, sizeof(page)), 0);
	assert_int_equal(mem_pagemap(f->gm, f->first, 1, &pm), 1);
	assert_true(mem_pm_resident(pm));
	assert_int_equal(mem_read(f->gm, BASE, got, sizeof(got)), 0);
	assert_memory_equal(got, page, sizeof(page));
	assert_int_equal(mem_resident(f->gm), N - zeros_in(N) + 1);
	assert_int_equal(pagestate_get(ps, f->first), PS_ANON);
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
	struct pagestate *ps = mem_pagestate(f->gm);

	/* Page 1 is zero but another mechanism holds it. */
	assert_int_equal(pagestate_cas(ps, f->first + 1, PS_ANON, PS_BUSY), 0);
	assert_int_equal(mem_reclaim_zero(f->gm, f->first, N, UINT64_MAX), zeros_in(N) - 1);
	assert_int_equal(pagestate_get(ps, f->first + 1), PS_BUSY);
	pagestate_set(ps, f->first + 1, PS_ANON);
	assert_page(f, 1, false);
	assert_page(f, 0, true);
}

/*
 * A zero page in a mapping userfaultfd cannot take (a private mapping of a
 * regular file): write-protecting its run fails part way, and what the call
 * did protect before it failed must not stay protected.
 */
static void test_reclaim_zero_protect_failure_leaves_nothing_protected(void **state)
{
	struct fix *f = *state;
	/* Inside the run of zero pages 35..42: 35..40 get protected before the call fails. */
	unsigned int hole = 41;
	uint8_t *hva = mem_page_hva(f->gm, f->first + hole);
	uint64_t pm;

	assert_int_equal(pattern[hole], '1');
	int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_true(mmap(hva, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0) == hva);
	close(fd);
	memset(hva, 0, 4096); /* resident, zero, private: a candidate like its neighbours */
	mem_reclaim_zero(f->gm, f->first, N, UINT64_MAX);
	for (unsigned int i = 0; i < N; i++) {
		assert_int_equal(mem_pagemap(f->gm, f->first + i, 1, &pm), 1);
		assert_false(pm & PM_UFFD_WP);
		assert_int_not_equal(pagestate_get(mem_pagestate(f->gm), f->first + i), PS_BUSY);
	}
	/* The pages of that run keep their memory; the other runs are dropped. */
	assert_int_equal(pagestate_get(mem_pagestate(f->gm), f->first + hole - 1), PS_ANON);
	assert_int_equal(pagestate_get(mem_pagestate(f->gm), f->first + 0), PS_ZERO);
}

/* --- windows --- */

#define WIN 0x200000ULL	/* a window of 512 pages that setup leaves untouched */
#define WIN_PAGES 512

struct writer {
	uint8_t *p;
	uint8_t val;
};

static void *write_byte(void *arg)
{
	struct writer *w = arg;

	fake_guest_store8(w->p, w->val);
	return NULL;
}

static uint64_t pm_of(struct gm *gm, uint64_t idx)
{
	uint64_t pm = 0;

	assert_int_equal(mem_pagemap(gm, idx, 1, &pm), 1);
	return pm;
}

static struct uffd_stats uffd_stats_of(struct uffd_service *svc)
{
	struct uffd_stats s;

	uffd_service_stats(svc, &s);
	return s;
}

/* Start a write to page idx, and wait until the service has seen it wait. */
static void write_to_held_hole(struct uffd_service *svc, struct writer *w, pthread_t *t)
{
	struct uffd_stats s = uffd_stats_of(svc);
	uint64_t before = s.missing_faults + s.wp_faults;

	assert_int_equal(pthread_create(t, NULL, write_byte, w), 0);
	do {
		usleep(1000);
		s = uffd_stats_of(svc);
	} while (s.missing_faults + s.wp_faults == before);
}

/*
 * A window of one private page and untouched ones is claimed with its holes
 * held, as dedup does before a remap; a guest write to an untouched page
 * waits, the window is remapped (its untouched pages zero pages without
 * memory), and the write lands in the new mapping. The store never holds a
 * page for them, even once they are read.
 */
static void test_reclaim_window_hold_keeps_a_write_to_an_untouched_page(void **state)
{
	static struct mem_txn t;
	struct fix *f = *state;
	uint64_t first = (uint64_t)mem_page_index(f->gm, WIN);
	struct writer w = { mem_page_hva(f->gm, first + 5), 0x22 };
	uint8_t page[4096], zero[4096] = { 0 }, kind[WIN_PAGES];
	int64_t vmas = mem_ram_vmas(&f->gm, 1, NULL);
	int fd = memfd_create("test-store", MFD_CLOEXEC);
	struct uffd_service *svc;
	struct stat sb;
	pthread_t th;

	assert_int_equal(first % WIN_PAGES, 0);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, WIN_PAGES * 4096), 0);
	assert_int_equal(uffd_service_create(&svc), 0);
	assert_int_equal(uffd_service_add(svc, f->gm), 0);
	memset(page, 0x11, sizeof(page));
	assert_int_equal(mem_write(f->gm, WIN, page, sizeof(page)), 0);
	assert_int_equal(mem_txn_claim(&t, f->gm, first, WIN_PAGES, MEM_FROM(PS_ANON),
				       MEM_TXN_WHOLE | MEM_TXN_HOLES),
			 WIN_PAGES);
	assert_true(mem_pm_is_hole(t.pm[5]));
	write_to_held_hole(svc, &w, &th);
	/* Held, not applied. */
	assert_int_equal(fake_guest_load8(w.p), 0);
	memset(kind, MEM_WIN_ZERO, sizeof(kind));
	kind[0] = MEM_WIN_KEEP;
	mem_txn_set(&t, 0, MEM_PRIVATE, 0);
	assert_int_equal(mem_txn_end_window(&t, fd, 0, kind), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(*w.p, 0x22);
	assert_int_equal(mem_page_hva(f->gm, first)[0], 0x11);
	for (unsigned int i = 1; i < WIN_PAGES; i++) {
		if (i != 5)
			assert_false(mem_pm_resident(pm_of(f->gm, first + i)));
		assert_int_equal(pagestate_get(mem_pagestate(f->gm), first + i), PS_ANON);
	}
	/* One mapping more for the window, splitting RAM's. */
	assert_int_equal(mem_ram_vmas(&f->gm, 1, NULL), vmas + 2);
	/*
	 * Read, a zero page is the kernel's zero page where memmap knows it;
	 * elsewhere the VM's own page of zeros, from the uffd service, as a first
	 * touch of its memory costs there. Never a page of the store.
	 */
	assert_int_equal(mem_read(f->gm, WIN + 6 * 4096, page, sizeof(page)), 0);
	assert_memory_equal(page, zero, sizeof(page));
	assert_int_equal(mem_pm_resident(pm_of(f->gm, first + 6)), !mem_zero_page_known());
	assert_int_equal(fstat(fd, &sb), 0);
	assert_int_equal(sb.st_blocks, 0);
	assert_int_equal(uffd_stats_of(svc).errors, 0);
	uffd_service_remove(svc, f->gm);
	uffd_service_destroy(svc);
	close(fd);
}

/* Given back instead: the write lands in the old mapping, which merges back with RAM's. */
static void test_reclaim_window_unhold_releases_writes_and_registration(void **state)
{
	static struct mem_txn t;
	struct fix *f = *state;
	uint64_t first = (uint64_t)mem_page_index(f->gm, WIN);
	struct writer w = { mem_page_hva(f->gm, first + 7), 0x33 };
	int64_t vmas = mem_ram_vmas(&f->gm, 1, NULL);
	struct uffd_service *svc;
	pthread_t th;

	assert_int_equal(uffd_service_create(&svc), 0);
	assert_int_equal(uffd_service_add(svc, f->gm), 0);
	assert_int_equal(mem_txn_claim(&t, f->gm, first, WIN_PAGES, MEM_FROM(PS_ANON),
				       MEM_TXN_WHOLE | MEM_TXN_HOLES),
			 WIN_PAGES);
	write_to_held_hole(svc, &w, &th);
	assert_int_equal(mem_txn_end(&t, -1), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(*w.p, 0x33);
	assert_false(pm_of(f->gm, first + 7) & PM_UFFD_WP);
	assert_int_equal(mem_ram_vmas(&f->gm, 1, NULL), vmas);
	/* Still registered for write protection, as all RAM is; no longer for MISSING faults. */
	assert_int_equal(mem_txn_claim(&t, f->gm, first + 7, 1, MEM_FROM(PS_ANON), 0), 1);
	assert_true(pm_of(f->gm, first + 7) & PM_UFFD_WP);
	assert_int_equal(mem_txn_end(&t, -1), 0);
	assert_false(pm_of(f->gm, first + 7) & PM_UFFD_WP);
	assert_int_equal(mem_page_hva(f->gm, first + 8)[0], 0);
	assert_int_equal(uffd_stats_of(svc).zero_fills, 0);
	assert_int_equal(uffd_stats_of(svc).zero_pages, 0);
	uffd_service_remove(svc, f->gm);
	uffd_service_destroy(svc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_reclaim_zero_drops_runs_of_zero_pages_only,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_reclaim_zero_dropped_pages_read_again_cost_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reclaim_zero_stops_at_max_pages, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_reclaim_zero_leaves_pages_it_does_not_own,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_reclaim_zero_protect_failure_leaves_nothing_protected, setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_reclaim_window_hold_keeps_a_write_to_an_untouched_page, setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_reclaim_window_unhold_releases_writes_and_registration, setup, teardown),
	};

	int ret = cmocka_run_group_tests_name("this kernel", tests, NULL, NULL);

	mem_forget_zero_page();
	ret |= cmocka_run_group_tests_name("no zero page memmap recognises", tests, NULL, NULL);
	return ret;
}
