/* SPDX-License-Identifier: MIT */
/*
 * Page sharing without KVM: the index, the frame store's placement, and the
 * engine on anonymous guest memory (mem_create_anon with a userfaultfd, served
 * by a uffd service as a host's VMs are), where host writes through mem_write
 * stand in for guest writes (a write to a shared page is the kernel's
 * copy-on-write either way). Scanning is driven
 * by hand (dedup_scan_pass), so every step is deterministic.
 *
 * Every test runs twice: on this kernel as it is, then as on a kernel whose
 * zero page memmap cannot recognise (mem_forget_zero_page), where a
 * window's zero pages are holes of the store.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <urcu/urcu-memb.h>

#include "dedup/dedup.h"
#include "dedup/dedup_internal.h"
#include "mem/gm.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/pagecontent.h"
#include "mem/pagestate.h"
#include "mem/reclaim.h"
#include "mem/txn.h"
#include "mem/uffd.h"

#define PAGE MEM_PAGE_SIZE
#define RAM (8ULL << 20)
#define BASE 0x400000ULL	/* a gpa well inside RAM */

/* --- the index --- */

static void test_dedup_index_stable_keeps_duplicates_apart(void **state)
{
	struct dedup_index ix;
	struct dedup_frame a = { .hash = 42, .slot = 1 }, b = { .hash = 42, .slot = 2 };
	struct dedup_frame c = { .hash = 7, .slot = 3 };
	struct cds_lfht_iter it;
	struct dedup_frame *fr;
	unsigned int seen = 0;

	(void)state;
	assert_int_equal(dedup_index_init(&ix), 0);
	dedup_index_stable_add(&ix, &a);
	dedup_index_stable_add(&ix, &b);
	dedup_index_stable_add(&ix, &c);
	assert_int_equal(ix.nr_stable, 3);
	urcu_memb_read_lock();
	for (fr = dedup_index_stable_first(&ix, 42, &it); fr;
	     fr = dedup_index_stable_next(&ix, 42, &it))
		seen |= 1u << fr->slot;
	assert_null(dedup_index_stable_first(&ix, 43, &it));
	urcu_memb_read_unlock();
	assert_int_equal(seen, (1u << 1) | (1u << 2));
	dedup_index_stable_del(&ix, &a);
	urcu_memb_read_lock();
	fr = dedup_index_stable_first(&ix, 42, &it);
	assert_ptr_equal(fr, &b);
	assert_null(dedup_index_stable_next(&ix, 42, &it));
	urcu_memb_read_unlock();
	dedup_index_fini(&ix);
}

/* The table follows its frame count, and every frame stays findable across resizes. */
static void test_dedup_index_stable_fits_its_frames(void **state)
{
	enum { N = 5000 };
	struct dedup_frame *fr = calloc(N, sizeof(*fr));
	struct dedup_index ix;
	struct cds_lfht_iter it;

	(void)state;
	assert_non_null(fr);
	assert_int_equal(dedup_index_init(&ix), 0);
	for (unsigned int i = 0; i < N; i++) {
		fr[i].hash = 0x9e3779b97f4a7c15ULL * (i + 1);
		fr[i].slot = i;
		dedup_index_stable_add(&ix, &fr[i]);
		dedup_index_stable_fit(&ix);
	}
	assert_int_equal(ix.stable_buckets, 8192);
	for (unsigned int i = 100; i < N; i++)
		dedup_index_stable_del(&ix, &fr[i]);
	dedup_index_stable_fit(&ix);
	assert_int_equal(ix.stable_buckets, 1024);
	urcu_memb_read_lock();
	for (unsigned int i = 0; i < N; i++) {
		struct dedup_frame *got = dedup_index_stable_first(&ix, fr[i].hash, &it);

		if (i < 100)
			assert_ptr_equal(got, &fr[i]);
		else
			assert_null(got);
	}
	urcu_memb_read_unlock();
	dedup_index_fini(&ix);
	free(fr);
}

static void test_dedup_index_unstable_holds_one_page_per_hash(void **state)
{
	struct dedup_index ix;
	struct dedup_uent *e;
	bool added;

	(void)state;
	assert_int_equal(dedup_index_init(&ix), 0);
	e = dedup_index_unstable_add(&ix, 5, 1, 10, &added);
	assert_true(added);
	/* The second page with that hash finds the first instead of entering. */
	e = dedup_index_unstable_add(&ix, 5, 2, 11, &added);
	assert_false(added);
	assert_int_equal(e->vm_id, 1);
	assert_int_equal(e->idx, 10);
	dedup_index_unstable_add(&ix, 6, 2, 12, &added);
	assert_true(added);
	/* A hash of 0 is a hash like any other. */
	dedup_index_unstable_add(&ix, 0, 2, 13, &added);
	assert_true(added);
	assert_non_null(dedup_index_unstable_find(&ix, 0));
	assert_int_equal(ix.nr_unstable, 3);
	/* Removing one VM's entries leaves the others. */
	dedup_index_unstable_clear(&ix, 2);
	assert_int_equal(ix.nr_unstable, 1);
	assert_null(dedup_index_unstable_find(&ix, 6));
	e = dedup_index_unstable_find(&ix, 5);
	assert_non_null(e);
	dedup_index_unstable_del(&ix, e);
	assert_null(dedup_index_unstable_find(&ix, 5));
	dedup_index_unstable_clear(&ix, DEDUP_NO_VM);
	assert_int_equal(ix.nr_unstable, 0);
	dedup_index_fini(&ix);
}

static void test_dedup_index_unstable_grows_and_finds_everything(void **state)
{
	struct dedup_index ix;
	bool added;

	(void)state;
	assert_int_equal(dedup_index_init(&ix), 0);
	for (uint64_t i = 0; i < 100000; i++) {
		uint64_t h = i * 0x9e3779b97f4a7c15ULL;

		assert_non_null(dedup_index_unstable_add(&ix, h, 0, (uint32_t)i, &added));
		assert_true(added);
		/* Remove every third: tombstones must not hide later entries. */
		if (i % 3 == 0)
			dedup_index_unstable_del(&ix, dedup_index_unstable_find(&ix, h));
	}
	for (uint64_t i = 0; i < 100000; i++) {
		struct dedup_uent *e = dedup_index_unstable_find(&ix, i * 0x9e3779b97f4a7c15ULL);

		if (i % 3 == 0) {
			assert_null(e);
		} else {
			assert_non_null(e);
			assert_int_equal(e->idx, i);
		}
	}
	assert_true(ix.ucap * 3 >= ix.uused * 4);
	dedup_index_fini(&ix);
}

/* --- the frame store --- */

static void test_dedup_store_places_runs_and_punches_holes(void **state)
{
	struct dedup_store st;
	uint32_t s1, s2, s3;
	struct stat sb;
	char page[PAGE];

	(void)state;
	assert_int_equal(dedup_store_init(&st), 0);
	assert_int_equal(dedup_store_take_fresh(&st, 7, &s1), 0);
	assert_int_equal(s1 % DEDUP_EXT_PAGES, 7);
	/* The slot next to it is free and can be asked for by a neighbour. */
	assert_true(dedup_store_take(&st, s1 + 1));
	assert_false(dedup_store_take(&st, s1 + 1));
	assert_false(dedup_store_take(&st, (uint64_t)st.nr_ext * DEDUP_EXT_PAGES));
	/* A second fresh frame gets a new extent: the first stays for its window. */
	assert_int_equal(dedup_store_take_fresh(&st, 7, &s2), 0);
	assert_int_not_equal(s2 / DEDUP_EXT_PAGES, s1 / DEDUP_EXT_PAGES);
	assert_int_equal(st.frames, 3);
	memset(page, 0x5a, sizeof(page));
	assert_int_equal(pwrite(st.fd, page, PAGE, (off_t)dedup_store_off(s1)), (ssize_t)PAGE);
	assert_int_equal(fstat(st.fd, &sb), 0);
	assert_int_equal(dedup_store_bytes(&st), PAGE);
	dedup_store_release(&st, s1);
	assert_int_equal(dedup_store_bytes(&st), 0);
	/* An extent is reused only once every slot of it is free. */
	dedup_store_release(&st, s2);
	assert_int_equal(dedup_store_take_fresh(&st, 3, &s3), 0);
	assert_int_equal(s3 / DEDUP_EXT_PAGES, s2 / DEDUP_EXT_PAGES);
	dedup_store_release(&st, s1 + 1);
	dedup_store_release(&st, s3);
	assert_int_equal(st.frames, 0);
	dedup_store_fini(&st);
}

/* --- the engine on anonymous guest memory --- */

struct fixture {
	struct dedup *d;
	struct uffd_service *svc;
	struct gm *gm[3];
};

static const struct dedup_config cfg_on = {
	.enabled = true, .pages_per_sec = 1 << 20, .cpu_percent = 100, .windows = true,
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (!f || dedup_create(&cfg_on, &f->d) || uffd_service_create(&f->svc))
		return -1;
	for (int i = 0; i < 3; i++) {
		char name[8] = "vm0";

		name[2] = (char)('0' + i);
		if (mem_create_anon(RAM, &f->gm[i]) || mem_enable_uffd(f->gm[i]) ||
		    uffd_service_add(f->svc, f->gm[i]) || dedup_add_vm(f->d, f->gm[i], name, 0))
			return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	for (int i = 0; i < 3; i++) {
		dedup_remove_vm(f->d, f->gm[i]);
		uffd_service_remove(f->svc, f->gm[i]);
		mem_destroy(f->gm[i]);
	}
	uffd_service_destroy(f->svc);
	dedup_destroy(f->d);
	free(f);
	return 0;
}

/* The content fill() writes for seed. */
static void gen(uint64_t *w, uint64_t seed)
{
	for (size_t i = 0; i < PAGE / 8; i++) {
		seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
		w[i] = seed ^ (seed >> 29);
	}
}

static void fill(struct gm *gm, gpa_t gpa, uint64_t seed)
{
	uint64_t w[PAGE / 8];

	gen(w, seed);
	assert_int_equal(mem_write(gm, gpa, w, sizeof(w)), 0);
}

static bool page_is(struct gm *gm, gpa_t gpa, uint64_t seed)
{
	uint8_t want[PAGE], got[PAGE];
	struct gm *tmp;

	assert_int_equal(mem_create_anon(RAM, &tmp), 0);
	fill(tmp, BASE, seed);
	assert_int_equal(mem_read(tmp, BASE, want, PAGE), 0);
	mem_destroy(tmp);
	assert_int_equal(mem_read(gm, gpa, got, PAGE), 0);
	return !memcmp(want, got, PAGE);
}

static enum ps_state state_of(struct gm *gm, gpa_t gpa)
{
	return pagestate_get(mem_pagestate(gm), (uint64_t)mem_page_index(gm, gpa));
}

static struct dedup_stats stats(struct dedup *d)
{
	struct dedup_stats s;

	dedup_get_stats(d, &s);
	return s;
}

static void test_dedup_merges_only_after_two_equal_visits(void **state)
{
	struct fixture *f = *state;

	fill(f->gm[0], BASE, 1);
	fill(f->gm[1], BASE + 5 * PAGE, 1);
	dedup_scan_pass(f->d);
	/* First visit: hashes remembered, nothing merged yet. */
	assert_int_equal(state_of(f->gm[0], BASE), PS_ANON);
	assert_int_equal(stats(f->d).merges, 0);
	dedup_scan_pass(f->d);
	assert_int_equal(state_of(f->gm[0], BASE), PS_SHARED);
	assert_int_equal(state_of(f->gm[1], BASE + 5 * PAGE), PS_SHARED);
	assert_int_equal(stats(f->d).pages_shared, 1);
	assert_int_equal(stats(f->d).pages_sharing, 1);
	assert_int_equal(stats(f->d).saved_bytes, PAGE);
	assert_int_equal(stats(f->d).store_bytes, PAGE);
	assert_true(page_is(f->gm[0], BASE, 1));
	assert_true(page_is(f->gm[1], BASE + 5 * PAGE, 1));
	/* A third copy joins the frame as soon as it is stable. */
	fill(f->gm[2], BASE, 1);
	dedup_scan_pass(f->d);
	dedup_scan_pass(f->d);
	assert_int_equal(state_of(f->gm[2], BASE), PS_SHARED);
	assert_int_equal(stats(f->d).pages_shared, 1);
	assert_int_equal(stats(f->d).pages_sharing, 2);
}

static void test_dedup_page_changing_between_visits_is_not_merged(void **state)
{
	struct fixture *f = *state;

	fill(f->gm[0], BASE, 2);
	fill(f->gm[1], BASE, 3);
	dedup_scan_pass(f->d);
	/* Between the two visits vm1's page becomes equal to vm0's: it changed. */
	fill(f->gm[1], BASE, 2);
	dedup_scan_pass(f->d);
	assert_int_equal(state_of(f->gm[0], BASE), PS_ANON);
	assert_int_equal(state_of(f->gm[1], BASE), PS_ANON);
	assert_int_equal(stats(f->d).merges, 0);
	assert_true(stats(f->d).pages_volatile >= 1);
	assert_true(stats(f->d).pages_unshared >= 1);
	/* Unchanged since: the next visit merges. */
	dedup_scan_pass(f->d);
	assert_int_equal(state_of(f->gm[0], BASE), PS_SHARED);
	assert_int_equal(state_of(f->gm[1], BASE), PS_SHARED);
	assert_true(page_is(f->gm[1], BASE, 2));
}

static void test_dedup_cow_breaks_release_and_free_the_frame(void **state)
{
	struct fixture *f = *state;
	struct dedup_stats s;

	for (int i = 0; i < 3; i++)
		fill(f->gm[i], BASE, 4);
	dedup_scan_pass(f->d);
	dedup_scan_pass(f->d);
	s = stats(f->d);
	assert_int_equal(s.pages_shared, 1);
	assert_int_equal(s.pages_sharing, 2);
	/* vm0 writes its copy: the kernel copies on write, the others keep the frame. */
	fill(f->gm[0], BASE, 5);
	assert_true(page_is(f->gm[1], BASE, 4));
	dedup_scan_pass(f->d);
	s = stats(f->d);
	assert_int_equal(state_of(f->gm[0], BASE), PS_ANON);
	assert_int_equal(s.cow_breaks, 1);
	assert_int_equal(s.pages_shared, 1);
	assert_int_equal(s.pages_sharing, 1);
	assert_true(page_is(f->gm[0], BASE, 5));
	assert_true(page_is(f->gm[2], BASE, 4));
	/* Every sharer writes: the frame is freed and its page punched out. */
	fill(f->gm[1], BASE, 6);
	fill(f->gm[2], BASE, 7);
	dedup_scan_pass(f->d);
	s = stats(f->d);
	assert_int_equal(s.cow_breaks, 3);
	assert_int_equal(s.frames_freed, 1);
	assert_int_equal(s.pages_shared, 0);
	assert_int_equal(s.store_bytes, 0);
	assert_true(page_is(f->gm[0], BASE, 5));
	assert_true(page_is(f->gm[1], BASE, 6));
	assert_true(page_is(f->gm[2], BASE, 7));
}

static void test_dedup_remerges_pages_after_a_cow_break(void **state)
{
	struct fixture *f = *state;

	fill(f->gm[0], BASE, 8);
	fill(f->gm[1], BASE, 8);
	dedup_scan_pass(f->d);
	dedup_scan_pass(f->d);
	fill(f->gm[0], BASE, 9);
	fill(f->gm[1], BASE, 9);
	/* Notice the breaks, then two visits with the new content merge it again. */
	dedup_scan_pass(f->d);
	dedup_scan_pass(f->d);
	dedup_scan_pass(f->d);
	assert_int_equal(state_of(f->gm[0], BASE), PS_SHARED);
	assert_int_equal(state_of(f->gm[1], BASE), PS_SHARED);
	assert_int_equal(stats(f->d).frames_freed, 1);
	assert_int_equal(stats(f->d).pages_shared, 1);
	assert_int_equal(stats(f->d).errors, 0);
	assert_true(page_is(f->gm[0], BASE, 9));
}

static void test_dedup_drops_stable_zero_pages_and_never_reads_holes(void **state)
{
	struct fixture *f = *state;
	uint8_t zero[PAGE] = { 0 }, buf[PAGE];
	uint64_t pm;
	int64_t idx = mem_page_index(f->gm[0], BASE);

	assert_int_equal(mem_write(f->gm[0], BASE, zero, PAGE), 0);
	dedup_scan_pass(f->d);
	dedup_scan_pass(f->d);
	assert_int_equal(state_of(f->gm[0], BASE), PS_ZERO);
	assert_int_equal(stats(f->d).zero_pages, 1);
	assert_int_equal(mem_pagemap(f->gm[0], (uint64_t)idx, 1, &pm), 1);
	assert_false(mem_pm_resident(pm));
	/* A page never touched stays a hole after the scanner went by. */
	idx = mem_page_index(f->gm[1], BASE + 100 * PAGE);
	assert_int_equal(mem_pagemap(f->gm[1], (uint64_t)idx, 1, &pm), 1);
	assert_false(mem_pm_resident(pm));
	/*
	 * Read again, the dropped page costs nothing and stays a zero page where
	 * memmap recognises the kernel's zero page, also where a read of a hole
	 * would allocate a page (the drop mapped the zero page there).
	 */
	assert_int_equal(mem_read(f->gm[0], BASE, buf, PAGE), 0);
	assert_memory_equal(buf, zero, PAGE);
	idx = mem_page_index(f->gm[0], BASE);
	assert_int_equal(mem_pagemap(f->gm[0], (uint64_t)idx, 1, &pm), 1);
	assert_int_equal(mem_pm_resident(pm), !mem_zero_page_known());
	assert_int_equal(mem_resident(f->gm[0]), !mem_zero_page_known());
	assert_int_equal(state_of(f->gm[0], BASE), mem_zero_page_known() ? PS_ZERO : PS_ANON);
}

static void test_dedup_leaves_busy_pages_and_releases_pages_taken_over(void **state)
{
	struct fixture *f = *state;
	struct pagestate *ps = mem_pagestate(f->gm[2]);
	uint64_t idx = (uint64_t)mem_page_index(f->gm[2], BASE + PAGE);
	struct dedup_stats s;

	for (int i = 0; i < 3; i++) {
		fill(f->gm[i], BASE, 10);
		fill(f->gm[i], BASE + PAGE, 11);
	}
	/* Another mechanism holds vm2's second page: the scanner must not touch it. */
	assert_int_equal(pagestate_cas(ps, idx, PS_ANON, PS_BUSY), 0);
	dedup_scan_pass(f->d);
	dedup_scan_pass(f->d);
	assert_int_equal(pagestate_get(ps, idx), PS_BUSY);
	assert_int_equal(state_of(f->gm[2], BASE), PS_SHARED);
	assert_int_equal(stats(f->d).pages_sharing, 3);
	pagestate_set(ps, idx, PS_ANON);
	/* The balloon takes vm2's shared page: its frame reference is released. */
	assert_int_equal(mem_discard(f->gm[2], BASE, PAGE, PS_BALLOONED), 1);
	dedup_scan_pass(f->d);
	s = stats(f->d);
	assert_int_equal(s.released, 1);
	assert_int_equal(s.pages_sharing, 2);
	assert_int_equal(s.pages_shared, 2);
	assert_true(page_is(f->gm[0], BASE, 10));
}

static void test_dedup_neighbouring_pages_map_contiguous_frames(void **state)
{
	struct fixture *f = *state;
	struct dedup_config c = cfg_on;
	int64_t vmas;

	/* Page by page (a window would take this run whole; see the window test). */
	c.windows = false;
	assert_int_equal(dedup_configure(f->d, &c), 0);
	/* Two identical guests with 16 identical consecutive pages. */
	for (int p = 0; p < 16; p++) {
		fill(f->gm[0], BASE + (uint64_t)p * PAGE, 100 + (uint64_t)p);
		fill(f->gm[1], BASE + (uint64_t)p * PAGE, 100 + (uint64_t)p);
	}
	dedup_scan_pass(f->d);
	dedup_scan_pass(f->d);
	assert_int_equal(stats(f->d).pages_shared, 16);
	/* Each guest's run is one mapping: RAM was one VMA, now three (before, run, after). */
	vmas = mem_ram_vmas(&f->gm[0], 1, NULL);
	assert_int_equal(vmas, 3);
	vmas = mem_ram_vmas(&f->gm[1], 1, NULL);
	assert_int_equal(vmas, 3);
}

/* Fill a whole window (512 pages at BASE, window aligned) like identical guests do. */
static void fill_window(struct gm *gm, uint64_t id)
{
	uint8_t zero[PAGE] = { 0 };

	for (uint64_t i = 0; i < DEDUP_EXT_PAGES; i++) {
		gpa_t gpa = BASE + i * PAGE;

		if (i % 2 == 1)
			fill(gm, gpa, 1000 + i);		/* identical in every guest */
		else if (i % 4 == 2)
			assert_int_equal(mem_write(gm, gpa, zero, PAGE), 0);
		else
			fill(gm, gpa, id * 100000 + i);	/* unique */
	}
}

static bool window_is(struct gm *gm, uint64_t id)
{
	for (uint64_t i = 0; i < DEDUP_EXT_PAGES; i++) {
		gpa_t gpa = BASE + i * PAGE;
		uint8_t buf[PAGE];

		if (i % 4 == 2) {
			assert_int_equal(mem_read(gm, gpa, buf, PAGE), 0);
			for (size_t b = 0; b < PAGE; b++)
				if (buf[b])
					return false;
		} else if (!page_is(gm, gpa, i % 2 == 1 ? 1000 + i : id * 100000 + i)) {
			return false;
		}
	}
	return true;
}

static void test_dedup_window_of_identical_guests_is_one_mapping(void **state)
{
	struct fixture *f = *state;
	struct dedup_stats s;

	assert_int_equal(mem_page_index(f->gm[0], BASE) % DEDUP_EXT_PAGES, 0);
	for (int i = 0; i < 3; i++)
		fill_window(f->gm[i], (uint64_t)i + 1);
	for (int pass = 0; pass < 3; pass++)
		dedup_scan_pass(f->d);
	s = stats(f->d);
	/* 256 identical pages shared by 3 guests, 128 zero pages each. */
	assert_int_equal(s.pages_shared, 256);
	assert_int_equal(s.pages_sharing, 512);
	assert_int_equal(s.zero_pages, 3 * 128);
	assert_true(s.windows >= 3);
	assert_int_equal(s.window_aborts, 0);
	assert_int_equal(s.store_bytes, 256 * PAGE);
	for (int i = 0; i < 3; i++) {
		/*
		 * Only the unique pages are the guest's own memory: the frames are read
		 * on first access, and zero pages have no page of their own (the
		 * kernel's zero page, or a hole where memmap cannot tell that page).
		 */
		assert_int_equal(mem_resident(f->gm[i]), 128);
		/* RAM was one mapping; now the window is one more, splitting it: three. */
		assert_int_equal(mem_ram_vmas(&f->gm[i], 1, NULL), 3);
		assert_int_equal(state_of(f->gm[i], BASE + PAGE), PS_SHARED);
		assert_int_equal(state_of(f->gm[i], BASE + 2 * PAGE), PS_ZERO);
		assert_int_equal(state_of(f->gm[i], BASE), PS_ANON);
		assert_true(window_is(f->gm[i], (uint64_t)i + 1));
		/*
		 * window_is read every page: the 256 frames are mapped now, and the
		 * zero pages are still free with the zero page; without, a page of
		 * zeros each, given by the uffd service.
		 */
		assert_int_equal(mem_resident(f->gm[i]),
				 128 + 256 + (mem_zero_page_known() ? 0 : 128));
	}
	/* Writes: a shared page and a zero page of vm0 are copied on write; the others keep theirs. */
	fill(f->gm[0], BASE + PAGE, 77);
	fill(f->gm[0], BASE + 2 * PAGE, 78);
	dedup_scan_pass(f->d);
	s = stats(f->d);
	assert_int_equal(s.cow_breaks, 1);
	assert_int_equal(s.pages_sharing, 511);
	assert_true(page_is(f->gm[0], BASE + PAGE, 77));
	assert_true(page_is(f->gm[0], BASE + 2 * PAGE, 78));
	assert_true(window_is(f->gm[1], 2));
	assert_true(window_is(f->gm[2], 3));
	assert_int_equal(s.errors, 0);
}

static void test_dedup_window_with_untouched_pages_gives_them_no_memory(void **state)
{
	struct fixture *f = *state;
	uint8_t buf[PAGE], zero[PAGE] = { 0 };
	gpa_t hole = BASE + 100 * PAGE;
	uint64_t pm, store;

	/* 32 identical pages, 32 unique ones, 448 untouched. */
	for (int i = 0; i < 2; i++)
		for (uint64_t p = 0; p < 64; p++)
			fill(f->gm[i], BASE + p * PAGE, p < 32 ? 500 + p : (uint64_t)i * 1000 + p);
	for (int pass = 0; pass < 3; pass++)
		dedup_scan_pass(f->d);
	assert_int_equal(stats(f->d).pages_shared, 32);
	assert_int_equal(stats(f->d).pages_sharing, 32);
	assert_true(stats(f->d).windows >= 2);
	store = stats(f->d).store_bytes;
	assert_int_equal(store, 32 * PAGE);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(mem_ram_vmas(&f->gm[i], 1, NULL), 3);
		/*
		 * The window held its untouched pages as holes while it was rebuilt
		 * (they were not populated to be held) and they still cost nothing; its
		 * frames are read on first access: only the unique pages are resident.
		 */
		assert_int_equal(mem_resident(f->gm[i]), 32);
		assert_int_equal(state_of(f->gm[i], hole), PS_ANON);
		assert_int_equal(mem_pagemap(f->gm[i], (uint64_t)mem_page_index(f->gm[i], hole),
						1, &pm), 1);
		/*
		 * The kernel's zero page where memmap recognises it (whether or not
		 * reads map it); elsewhere a hole of the store, since a zero page
		 * memmap cannot tell would count as resident.
		 */
		if (mem_zero_page_known())
			assert_true(mem_pm_is_zero_page(pm));
		else
			assert_true(mem_pm_is_hole(pm));
		assert_int_equal(mem_read(f->gm[i], hole, buf, PAGE), 0);
		assert_memory_equal(buf, zero, PAGE);
	}
	/*
	 * Reading it cost nothing with the zero page; without, each VM a page of
	 * zeros of its own, as a first touch of its memory costs there. Never a
	 * page of the store: the store holds frames only.
	 */
	for (int i = 0; i < 2; i++)
		assert_int_equal(mem_resident(f->gm[i]), 32 + !mem_zero_page_known());
	assert_int_equal(stats(f->d).store_bytes, store);
	/* Writing it gives vm0 a page of its own; vm1's stays zero. */
	fill(f->gm[0], hole, 9);
	assert_true(page_is(f->gm[0], hole, 9));
	assert_int_equal(mem_read(f->gm[1], hole, buf, PAGE), 0);
	assert_memory_equal(buf, zero, PAGE);
	assert_true(page_is(f->gm[1], BASE + 31 * PAGE, 531));
	/*
	 * The unique pages become identical: each window is rebuilt whole again,
	 * the page vm1 read still a zero page of its window, not a page to merge
	 * one by one (which would split the window into more mappings).
	 */
	for (int i = 0; i < 2; i++)
		for (uint64_t p = 32; p < 64; p++)
			fill(f->gm[i], BASE + p * PAGE, 500 + p);
	for (int pass = 0; pass < 3; pass++)
		dedup_scan_pass(f->d);
	assert_int_equal(stats(f->d).pages_shared, 64);
	for (int i = 0; i < 2; i++)
		assert_int_equal(mem_ram_vmas(&f->gm[i], 1, NULL), 3);
	assert_true(page_is(f->gm[0], hole, 9));
	assert_int_equal(mem_read(f->gm[1], hole, buf, PAGE), 0);
	assert_memory_equal(buf, zero, PAGE);
	assert_true(page_is(f->gm[1], BASE + 63 * PAGE, 563));
	assert_int_equal(stats(f->d).window_aborts, 0);
	assert_int_equal(stats(f->d).errors, 0);
}

/*
 * A page entered in the unstable index, then given to the balloon and taken
 * back (a hole again, the VM's own: PS_ANON) before its twin is visited in
 * the same pass, in a chunk that takes MISSING faults (host swap has been
 * there). The twin's merge claims the stale entry's page, which protects
 * its hole; reading it then waited in the fault service for its owner, the
 * scanner itself, forever, with d->lock held: the policy's share mechanism,
 * the stats and VM removal all hung behind it. A claimed hole is not
 * compared, copied or checked for zeros: the claim gives it back.
 */
static void test_dedup_never_reads_a_hole_it_holds(void **state)
{
	struct fixture *f = *state;
	struct gm *gm = f->gm[0];
	gpa_t p = BASE, q = BASE + DEDUP_EXT_PAGES * PAGE;
	uint64_t pi = (uint64_t)mem_page_index(gm, p);
	uint8_t buf[PAGE], zero[PAGE] = { 0 };
	struct dedup_stats s;

	assert_int_equal(pi % DEDUP_EXT_PAGES, 0);
	fill(gm, p, 42);
	fill(gm, q, 42);
	assert_int_equal(mem_chunks_set_missing(gm, pi, 1, true), 0);
	dedup_scan_pass(f->d);
	/* The next pass as far as p's window: p is stable, alone, entered unstable. */
	assert_true(dedup_scan(f->d, pi + DEDUP_EXT_PAGES) > 0);
	assert_int_equal(stats(f->d).merges, 0);
	/* Inflated and deflated: a hole of the VM's own, in a MISSING chunk. */
	assert_true(mem_discard(gm, p, PAGE, PS_BALLOONED) >= 0);
	assert_int_equal(mem_undiscard(gm, p, PAGE), 0);
	assert_int_equal(state_of(gm, p), PS_ANON);
	/* q's window: q's merge with the stale entry must not wait for itself. */
	alarm(30);
	assert_true(dedup_scan(f->d, DEDUP_EXT_PAGES) > 0);
	alarm(0);
	s = stats(f->d);
	assert_int_equal(s.merges, 0);
	assert_int_equal(s.errors, 0);
	assert_int_equal(state_of(gm, p), PS_ANON);
	assert_int_equal(state_of(gm, q), PS_ANON);
	assert_int_equal(mem_read(gm, p, buf, PAGE), 0);
	assert_memory_equal(buf, zero, PAGE);
	assert_true(page_is(gm, q, 42));
}

static void test_dedup_configure_validates(void **state)
{
	struct fixture *f = *state;
	struct dedup_config c = cfg_on;

	c.cpu_percent = 0;
	assert_int_equal(dedup_configure(f->d, &c), -EINVAL);
	c.cpu_percent = 101;
	assert_int_equal(dedup_configure(f->d, &c), -EINVAL);
	c = cfg_on;
	c.pages_per_sec = 0;
	assert_int_equal(dedup_configure(f->d, &c), -EINVAL);
	c = cfg_on;
	c.enabled = false;
	assert_int_equal(dedup_configure(f->d, &c), 0);
	dedup_get_config(f->d, &c);
	assert_false(c.enabled);
}

/* --- snapshot images mapped into clones --- */

/*
 * The image the tests map, over the fixture's 4 windows: window 0 has
 * content on two pages of three (page 4 is given as content but holds
 * zeros), window 1 is described with no content at all, window 2 has 100
 * pages of content (given in two calls), window 3 is never described.
 */
#define IMG_PAGES (RAM / PAGE)
#define IMG_FRAMES (341 - 1 + 100)

static uint64_t img_seed(uint64_t p)
{
	uint64_t w = p / DEDUP_EXT_PAGES, i = p % DEDUP_EXT_PAGES;

	if (w == 0 && i % 3 != 0 && i != 4)
		return 2000 + p;
	if (w == 2 && i < 100)
		return 9000 + p;
	return 0; /* reads zeros */
}

static void img_add(struct dedup *d, struct dedup_image *img, uint64_t idx, uint32_t n)
{
	uint8_t *data = calloc(n, PAGE), *has = calloc(n, 1);

	assert_non_null(data);
	assert_non_null(has);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t seed = img_seed(idx + i);

		has[i] = seed || idx + i == 4;
		if (seed)
			gen((uint64_t *)(void *)(data + (uint64_t)i * PAGE), seed);
	}
	assert_int_equal(dedup_image_add(d, img, idx, n, has, data), 0);
	free(data);
	free(has);
}

static struct dedup_image *img_build(struct dedup *d)
{
	struct dedup_image *img;

	assert_int_equal(dedup_image_create(d, IMG_PAGES, 0, &img), 0);
	img_add(d, img, 0, DEDUP_EXT_PAGES);
	img_add(d, img, DEDUP_EXT_PAGES, DEDUP_EXT_PAGES);
	img_add(d, img, 2 * DEDUP_EXT_PAGES, 64);
	img_add(d, img, 2 * DEDUP_EXT_PAGES + 64, DEDUP_EXT_PAGES - 64);
	return img;
}

/* Page p of gm reads what the image holds there. */
static bool img_page_is(struct gm *gm, uint64_t p)
{
	uint64_t want[PAGE / 8] = { 0 }, got[PAGE / 8];

	if (img_seed(p))
		gen(want, img_seed(p));
	assert_int_equal(mem_read(gm, mem_index_gpa(gm, p), got, PAGE), 0);
	return !memcmp(want, got, PAGE);
}

static struct dedup_vm *vm_of(struct dedup *d, struct gm *gm)
{
	for (unsigned int i = 0; i < d->nr_vms; i++)
		if (d->vms[i]->gm == gm)
			return d->vms[i];
	return NULL;
}

/* References to the frame page p of gm maps. */
static uint32_t refs_of(struct dedup *d, struct gm *gm, uint64_t p)
{
	uint32_t slot = vm_of(d, gm)->frame[p];

	assert_int_not_equal(slot, DEDUP_NO_FRAME);
	return d->store.by_slot[slot]->refs;
}

static void assert_states_agree(struct gm *gm)
{
	struct mem_check c;

	assert_int_equal(mem_check_states(gm, &c), 0);
	assert_int_equal(c.mismatches, 0);
}

static void test_dedup_image_maps_clones_shared_from_birth(void **state)
{
	struct fixture *f = *state;
	struct dedup_image *img = img_build(f->d);
	uint64_t mapped;
	struct dedup_stats s;

	/* Held once, as frames: no VM maps them yet. */
	s = stats(f->d);
	assert_int_equal(s.pages_shared, IMG_FRAMES);
	assert_int_equal(s.pages_sharing, 0);
	assert_int_equal(s.store_bytes, IMG_FRAMES * PAGE);
	/* Described, never again; and a window at a time. */
	img_add(f->d, img, 3 * DEDUP_EXT_PAGES, 8);
	{
		uint8_t has[2] = { 1, 1 }, data[2 * PAGE];

		memset(data, 1, sizeof(data));
		assert_int_equal(dedup_image_add(f->d, img, 1, 2, has, data), -EEXIST);
		assert_int_equal(dedup_image_add(f->d, img, DEDUP_EXT_PAGES - 1, 2, has, data),
				 -EINVAL);
	}
	for (int i = 0; i < 2; i++) {
		assert_int_equal(dedup_image_map(f->d, img, f->gm[i], &mapped), 0);
		assert_int_equal(mapped, IMG_FRAMES);
	}
	s = stats(f->d);
	assert_int_equal(s.pages_shared, IMG_FRAMES);
	assert_int_equal(s.pages_sharing, IMG_FRAMES);
	assert_int_equal(s.store_bytes, IMG_FRAMES * PAGE);
	assert_int_equal(s.windows, 4);
	assert_int_equal(s.merges, 2 * IMG_FRAMES);
	/* Sealed once mapped: its windows are complete. */
	{
		uint8_t has = 1, data[PAGE];

		memset(data, 1, sizeof(data));
		assert_int_equal(dedup_image_add(f->d, img, 3 * DEDUP_EXT_PAGES + 100, 1, &has, data),
				 -EBUSY);
	}
	for (int i = 0; i < 2; i++) {
		struct gm *gm = f->gm[i];

		/* Nothing read yet: no memory of their own, frames read on first access. */
		assert_int_equal(mem_resident(gm), 0);
		/*
		 * A mapping per window, not per page: the two windows with content,
		 * and the anonymous RAM around them (windows 1 and 3).
		 */
		assert_int_equal(mem_ram_vmas(&gm, 1, NULL), 4);
		assert_int_equal(vm_of(f->d, gm)->mapped, IMG_FRAMES);
		for (uint64_t p = 0; p < IMG_PAGES; p++) {
			enum ps_state st = pagestate_get(mem_pagestate(gm), p);

			assert_int_equal(st, img_seed(p) ? PS_SHARED : PS_ANON);
		}
		assert_states_agree(gm);
	}
	for (int i = 0; i < 2; i++)
		for (uint64_t p = 0; p < IMG_PAGES; p++)
			assert_true(img_page_is(f->gm[i], p));
	/* Reading every page cost the store nothing: one copy of each frame, zero pages none. */
	s = stats(f->d);
	assert_int_equal(s.store_bytes, IMG_FRAMES * PAGE);
	assert_int_equal(refs_of(f->d, f->gm[0], 1), 3);
	/*
	 * To the scanner the clones look merged already: their shared pages stay
	 * as they are. (It may still drop as zero the pages the reads above gave
	 * memory of their own, where a read of a hole allocates one: window by
	 * window, so RAM stays a mapping per window.)
	 */
	dedup_scan_pass(f->d);
	dedup_scan_pass(f->d);
	s = stats(f->d);
	assert_int_equal(s.pages_shared, IMG_FRAMES);
	assert_int_equal(s.pages_sharing, IMG_FRAMES);
	assert_int_equal(s.merges, 2 * IMG_FRAMES);
	assert_int_equal(s.cow_breaks, 0);
	assert_int_equal(s.window_aborts, 0);
	assert_int_equal(s.errors, 0);
	assert_int_equal(refs_of(f->d, f->gm[0], 1), 3);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(mem_ram_vmas(&f->gm[i], 1, NULL), 4);
		for (uint64_t p = 0; p < IMG_PAGES; p++) {
			if (img_seed(p))
				assert_int_equal(pagestate_get(mem_pagestate(f->gm[i]), p), PS_SHARED);
			assert_true(img_page_is(f->gm[i], p));
		}
		assert_states_agree(f->gm[i]);
	}
	dedup_image_free(f->d, img);
}

static void test_dedup_image_clone_write_is_a_cow_break(void **state)
{
	struct fixture *f = *state;
	struct dedup_image *img = img_build(f->d);
	uint64_t mapped, zero[PAGE / 8] = { 0 }, buf[PAGE / 8];
	const uint64_t shared = 1, zpage = 3;	/* window 0: content, and a zero page */
	struct dedup_stats s;

	for (int i = 0; i < 2; i++)
		assert_int_equal(dedup_image_map(f->d, img, f->gm[i], &mapped), 0);
	assert_int_equal(refs_of(f->d, f->gm[0], shared), 3);
	fill(f->gm[0], mem_index_gpa(f->gm[0], shared), 77);
	fill(f->gm[0], mem_index_gpa(f->gm[0], zpage), 78);
	assert_true(page_is(f->gm[0], mem_index_gpa(f->gm[0], shared), 77));
	assert_true(page_is(f->gm[0], mem_index_gpa(f->gm[0], zpage), 78));
	/* The other clone still reads the image. */
	assert_true(img_page_is(f->gm[1], shared));
	assert_int_equal(mem_read(f->gm[1], mem_index_gpa(f->gm[1], zpage), buf, PAGE), 0);
	assert_memory_equal(buf, zero, PAGE);
	dedup_scan_pass(f->d);
	s = stats(f->d);
	assert_int_equal(s.cow_breaks, 1);
	assert_int_equal(s.pages_sharing, IMG_FRAMES - 1);
	assert_int_equal(s.errors, 0);
	assert_int_equal(pagestate_get(mem_pagestate(f->gm[0]), shared), PS_ANON);
	assert_int_equal(vm_of(f->d, f->gm[0])->frame[shared], DEDUP_NO_FRAME);
	assert_int_equal(pagestate_get(mem_pagestate(f->gm[1]), shared), PS_SHARED);
	assert_int_equal(refs_of(f->d, f->gm[1], shared), 2);
	assert_true(page_is(f->gm[0], mem_index_gpa(f->gm[0], shared), 77));
	assert_true(page_is(f->gm[0], mem_index_gpa(f->gm[0], zpage), 78));
	assert_true(img_page_is(f->gm[1], shared));
	for (int i = 0; i < 2; i++)
		assert_states_agree(f->gm[i]);
	dedup_image_free(f->d, img);
}

static void test_dedup_image_frames_live_while_mapped(void **state)
{
	struct fixture *f = *state;
	struct dedup_image *img = img_build(f->d);
	uint64_t mapped;
	struct dedup_stats s;

	/* An image never mapped gives its frames back at once. */
	dedup_image_free(f->d, img);
	s = stats(f->d);
	assert_int_equal(s.pages_shared, 0);
	assert_int_equal(s.store_bytes, 0);
	img = img_build(f->d);
	for (int i = 0; i < 2; i++)
		assert_int_equal(dedup_image_map(f->d, img, f->gm[i], &mapped), 0);
	dedup_image_free(f->d, img);
	/* The clones hold the frames now. */
	s = stats(f->d);
	assert_int_equal(s.pages_shared, IMG_FRAMES);
	assert_int_equal(s.store_bytes, IMG_FRAMES * PAGE);
	assert_int_equal(refs_of(f->d, f->gm[0], 1), 2);
	for (uint64_t p = 0; p < IMG_PAGES; p++)
		assert_true(img_page_is(f->gm[1], p));
	dedup_remove_vm(f->d, f->gm[0]);
	s = stats(f->d);
	assert_int_equal(s.pages_shared, IMG_FRAMES);
	assert_int_equal(refs_of(f->d, f->gm[1], 1), 1);
	assert_true(img_page_is(f->gm[1], 1));
	dedup_remove_vm(f->d, f->gm[1]);
	s = stats(f->d);
	assert_int_equal(s.pages_shared, 0);
	assert_int_equal(s.store_bytes, 0);
	assert_int_equal(s.frames_freed, 2 * IMG_FRAMES);
	assert_int_equal(s.errors, 0);
}

/* Nothing of gm's maps a frame, every page but `except` is fresh and gm is one mapping. */
static void assert_untouched(struct dedup *d, struct gm *gm, uint64_t except)
{
	uint64_t pm[DEDUP_EXT_PAGES];

	assert_int_equal(vm_of(d, gm)->mapped, 0);
	for (uint64_t p = 0; p < IMG_PAGES; p += DEDUP_EXT_PAGES) {
		assert_int_equal(mem_pagemap(gm, p, DEDUP_EXT_PAGES, pm), DEDUP_EXT_PAGES);
		for (uint64_t i = 0; i < DEDUP_EXT_PAGES; i++) {
			enum ps_state st = pagestate_get(mem_pagestate(gm), p + i);

			assert_int_equal(vm_of(d, gm)->frame[p + i], DEDUP_NO_FRAME);
			if (p + i == except)
				continue;
			assert_true(st == PS_ANON || st == PS_ZERO);
			assert_true(mem_pm_is_hole(pm[i]) || mem_pm_is_zero_page(pm[i]));
		}
	}
}

static void test_dedup_image_refuses_a_vm_not_fresh(void **state)
{
	struct fixture *f = *state;
	struct dedup_image *img = img_build(f->d);
	const uint64_t in_empty = DEDUP_EXT_PAGES + 7, in_content = 2 * DEDUP_EXT_PAGES + 300;
	const uint64_t busy = 2 * DEDUP_EXT_PAGES + 5;
	struct pagestate *ps = mem_pagestate(f->gm[2]);
	struct mem_txn_stats t0, t1;
	uint64_t mapped = 1;
	struct dedup_stats s;

	/* A page with content of its own, in a window the image leaves empty, or in one it maps. */
	fill(f->gm[0], mem_index_gpa(f->gm[0], in_empty), 31);
	fill(f->gm[1], mem_index_gpa(f->gm[1], in_content), 32);
	assert_int_equal(dedup_image_map(f->d, img, f->gm[0], &mapped), -EBUSY);
	assert_int_equal(mapped, 0);
	assert_int_equal(dedup_image_map(f->d, img, f->gm[1], &mapped), -EBUSY);
	/* As they were: the page kept, nothing else touched, RAM still one mapping. */
	assert_true(page_is(f->gm[0], mem_index_gpa(f->gm[0], in_empty), 31));
	assert_true(page_is(f->gm[1], mem_index_gpa(f->gm[1], in_content), 32));
	for (int i = 0; i < 2; i++) {
		assert_untouched(f->d, f->gm[i], i ? in_content : in_empty);
		assert_int_equal(mem_ram_vmas(&f->gm[i], 1, NULL), 1);
		assert_int_equal(mem_resident(f->gm[i]), 1);
		assert_states_agree(f->gm[i]);
	}
	/*
	 * A page another mechanism holds, in the second window the image maps:
	 * the first window is mapped by then, and dropped again.
	 */
	assert_int_equal(pagestate_cas(ps, busy, PS_ANON, PS_BUSY), 0);
	mem_txn_stats(&t0);
	assert_int_equal(dedup_image_map(f->d, img, f->gm[2], &mapped), -EBUSY);
	mem_txn_stats(&t1);
	assert_int_equal(mapped, 0);
	/* Window 0 was mapped (its frames) and then dropped whole. */
	assert_int_equal(t1.commits[MEM_FRAME] - t0.commits[MEM_FRAME], 340);
	assert_int_equal(t1.commits[MEM_ZERO] - t0.commits[MEM_ZERO], DEDUP_EXT_PAGES);
	assert_int_equal(pagestate_get(ps, busy), PS_BUSY);
	assert_untouched(f->d, f->gm[2], busy);
	assert_int_equal(mem_resident(f->gm[2]), 0);
	s = stats(f->d);
	assert_int_equal(s.pages_sharing, 0);
	assert_int_equal(s.pages_shared, IMG_FRAMES);
	assert_int_equal(s.windows, 0);
	assert_int_equal(s.errors, 0);
	assert_states_agree(f->gm[2]);
	/* Let go, it maps: the undone window's pages count as fresh (dropped as zero). */
	pagestate_set(ps, busy, PS_ANON);
	assert_int_equal(dedup_image_map(f->d, img, f->gm[2], &mapped), 0);
	assert_int_equal(mapped, IMG_FRAMES);
	/* The image's reference and this clone's: the undo gave its references back. */
	assert_int_equal(refs_of(f->d, f->gm[2], 1), 2);
	assert_int_equal(mem_ram_vmas(&f->gm[2], 1, NULL), 4);
	for (uint64_t p = 0; p < IMG_PAGES; p++)
		assert_true(img_page_is(f->gm[2], p));
	assert_states_agree(f->gm[2]);
	assert_int_equal(stats(f->d).errors, 0);
	dedup_image_free(f->d, img);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dedup_index_stable_keeps_duplicates_apart),
		cmocka_unit_test(test_dedup_index_stable_fits_its_frames),
		cmocka_unit_test(test_dedup_index_unstable_holds_one_page_per_hash),
		cmocka_unit_test(test_dedup_index_unstable_grows_and_finds_everything),
		cmocka_unit_test(test_dedup_store_places_runs_and_punches_holes),
		cmocka_unit_test_setup_teardown(test_dedup_merges_only_after_two_equal_visits,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_dedup_page_changing_between_visits_is_not_merged,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_dedup_cow_breaks_release_and_free_the_frame,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_dedup_remerges_pages_after_a_cow_break, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_dedup_drops_stable_zero_pages_and_never_reads_holes,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_dedup_leaves_busy_pages_and_releases_pages_taken_over, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dedup_neighbouring_pages_map_contiguous_frames,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_dedup_window_of_identical_guests_is_one_mapping,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_dedup_window_with_untouched_pages_gives_them_no_memory, setup,
			teardown),
		cmocka_unit_test_setup_teardown(test_dedup_never_reads_a_hole_it_holds, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_dedup_configure_validates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dedup_image_maps_clones_shared_from_birth, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_dedup_image_clone_write_is_a_cow_break, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_dedup_image_frames_live_while_mapped, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_dedup_image_refuses_a_vm_not_fresh, setup,
						teardown),
	};
	int ret;

	urcu_memb_register_thread();
	ret = cmocka_run_group_tests_name("this kernel", tests, NULL, NULL);
	mem_forget_zero_page();
	ret |= cmocka_run_group_tests_name("no zero page memmap recognises", tests, NULL, NULL);
	urcu_memb_unregister_thread();
	return ret;
}
