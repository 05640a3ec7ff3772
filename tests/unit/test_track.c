/* SPDX-License-Identifier: MIT */
/*
 * Tracking of guest writes by write protection (mem_dirty_guest_*, the
 * thread accelerator's dirty log) on anonymous guest memory under a real
 * userfaultfd and the real fault service: writes are seen whatever backs
 * the page (its own page, a hole, the zero page, a dedup frame, swap); a
 * collect arms what it reports again; sampling and tracking share a page;
 * changes of backing (zero reclaim, frames, a window rebuilt, swap) neither
 * lose nor add a write, while the balloon's drops are recorded; a write
 * held by a transaction is recorded; stopping lifts every protection; all
 * of 1 GiB is armed in a handful of calls; and a migrator that copies what
 * each collect reports ends with the guest's memory while writers race
 * reclaim and window rebuilds. Skipped where the kernel cannot
 * write-protect holes (UFFD_FEATURE_WP_UNPOPULATED). Every test runs twice:
 * on this kernel as it is, then as on a kernel whose zero page memmap cannot
 * recognise (mem_forget_zero_page), where a window's zero pages are holes of
 * the store.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "fake_guest.h"
#include "mem/gm.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/pagestate.h"
#include "mem/reclaim.h"
#include "mem/swap.h"
#include "mem/txn.h"
#include "mem/uffd.h"

#define RAM (16ULL << 20)
#define BASE 0x400000ULL  /* pages the tests write, well inside RAM */
#define WIN 0x800000ULL	  /* a 2 MiB window the tests remap */
#define WIN_PAGES 512
#define PAGE 4096
#define OFF 100		  /* where writes land in a page */
#define WORDS (RAM / PAGE / 64)

struct fix {
	struct gm *gm;
	struct pagestate *ps;
	struct uffd_service *svc;
	struct mem_swap *sw;	/* the swap tests only */
	int store;		/* a memfd: frame 0 holds 0xab, the rest holes */
	uint64_t first;		/* page index of BASE */
	uint64_t win;		/* page index of WIN */
	bool skip;		/* no userfaultfd that write-protects holes */
	const char *fatal;	/* the swap's fatal hook was called */
	uint64_t bm[WORDS];	/* the last collect */
};

static struct mem_txn t;

static void on_fatal(void *arg, const char *why)
{
	struct fix *f = arg;

	(void)why;
	__atomic_store_n(&f->fatal, "fatal", __ATOMIC_RELEASE);
}

static int open_fix(struct fix *f, bool swap)
{
	uint8_t page[PAGE];
	const char *why;

	memset(f, 0, sizeof(*f));
	f->store = -1;
	if (mem_create_anon(RAM, &f->gm))
		return -1;
	f->ps = mem_pagestate(f->gm);
	f->first = (uint64_t)mem_page_index(f->gm, BASE);
	f->win = (uint64_t)mem_page_index(f->gm, WIN);
	if (mem_enable_uffd(f->gm) || !f->gm->wp_unpopulated) {
		f->skip = true;
		return 0;
	}
	if (uffd_service_create(&f->svc) || uffd_service_add(f->svc, f->gm))
		return -1;
	f->store = memfd_create("test-store", MFD_CLOEXEC);
	if (f->store < 0 || ftruncate(f->store, 2 * WIN_PAGES * PAGE))
		return -1;
	memset(page, 0xab, sizeof(page));
	if (pwrite(f->store, page, PAGE, 0) != PAGE)
		return -1;
	/* The build directory: a disk filesystem (tmpfs is refused). */
	if (swap && (mem_swap_open(".", 1ULL << 20, false, &f->sw, &why) ||
		     mem_swap_serve(f->sw, f->svc) ||
		     mem_swap_attach(f->sw, f->gm, "test", on_fatal, f)))
		return -1;
	return 0;
}

static int setup(void **state)
{
	static struct fix f;

	*state = &f;
	return open_fix(&f, false);
}

static int setup_swap(void **state)
{
	static struct fix f;

	*state = &f;
	return open_fix(&f, true);
}

static int teardown(void **state)
{
	struct fix *f = *state;

	if (f->svc)
		uffd_service_remove(f->svc, f->gm);
	if (f->sw) {
		mem_swap_detach(f->sw, f->gm);
		mem_swap_close(f->sw);
	}
	uffd_service_destroy(f->svc);
	mem_destroy(f->gm);
	if (f->store >= 0)
		close(f->store);
	return 0;
}

static uint8_t *hva(struct fix *f, uint64_t idx)
{
	return mem_page_hva(f->gm, idx);
}

/* Fill page idx through the VMM's access API (before tracking: not a guest write). */
static void fill(struct fix *f, uint64_t idx, int byte)
{
	uint8_t page[PAGE];

	memset(page, byte, sizeof(page));
	assert_int_equal(mem_write(f->gm, mem_index_gpa(f->gm, idx), page, sizeof(page)), 0);
}

/* A guest's write and read: straight at the page, as a thread vCPU does. */
static void gwrite(struct fix *f, uint64_t idx, uint8_t val)
{
	fake_guest_store8(hva(f, idx) + OFF, val);
}

static uint8_t gread(struct fix *f, uint64_t idx)
{
	return fake_guest_load8(hva(f, idx) + OFF);
}

static uint64_t pm_of(struct fix *f, uint64_t idx)
{
	uint64_t pm = 0;

	assert_int_equal(mem_pagemap(f->gm, idx, 1, &pm), 1);
	return pm;
}

static bool protected(struct fix *f, uint64_t idx)
{
	return pm_of(f, idx) & PM_UFFD_WP;
}

static uint64_t collect(struct fix *f)
{
	memset(f->bm, 0, sizeof(f->bm));
	return mem_dirty_guest_collect(f->gm, f->bm);
}

static bool reported(const struct fix *f, uint64_t idx)
{
	return f->bm[idx / 64] & (1ULL << (idx % 64));
}

static struct uffd_stats ustats(struct fix *f)
{
	struct uffd_stats s;

	uffd_service_stats(f->svc, &s);
	return s;
}

static struct mem_txn_stats tstats(void)
{
	struct mem_txn_stats s;

	mem_txn_stats(&s);
	return s;
}

/*
 * The service counts a fault after it woke the access: wait (with a
 * deadline) for the count rather than look once.
 */
static void wait_track_hits(struct fix *f, uint64_t want)
{
	for (int ms = 0; ms < 5000 && ustats(f).track_hits < want; ms++)
		usleep(1000);
	assert_int_equal(ustats(f).track_hits, want);
}

static void start(struct fix *f)
{
	if (f->skip)
		skip();
	assert_int_equal(mem_dirty_guest_track(f->gm, true), 0);
}

/* Page idx holds `byte` everywhere but at OFF, which holds `at_off`. */
static void assert_page_is(struct fix *f, uint64_t idx, int byte, int at_off)
{
	uint8_t want[PAGE];

	memset(want, byte, sizeof(want));
	want[OFF] = (uint8_t)at_off;
	assert_memory_equal(hva(f, idx), want, sizeof(want));
}

/* Map page idx (holding 0xab) onto frame 0 of the store, a mapping of its own. */
static void map_frame0(struct fix *f, uint64_t idx)
{
	assert_int_equal(mem_txn_claim(&t, f->gm, idx, 1, MEM_FROM(PS_ANON), 0), 1);
	mem_txn_set(&t, 0, MEM_FRAME, 0);
	assert_int_equal(mem_txn_end(&t, f->store), 1);
	assert_int_equal(pagestate_get(f->ps, idx), PS_SHARED);
}

static void test_track_sees_writes_to_every_kind_of_page(void **state)
{
	struct fix *f = *state;
	uint64_t own = f->first, hole = f->first + 1, zero = f->first + 2, shared = f->first + 3;
	uint64_t clean = f->first + 4;
	uint8_t frame;

	if (f->skip)
		skip();
	fill(f, own, 0x11);
	fill(f, zero, 0);
	assert_int_equal(mem_reclaim_zero(f->gm, zero, 1, 1), 1);
	assert_int_equal(pagestate_get(f->ps, zero), PS_ZERO);
	fill(f, shared, 0xab);
	map_frame0(f, shared);
	fill(f, clean, 0x22);
	start(f);
	/* Protected whatever backs them: a page, a marker on a hole, the zero page, a frame. */
	for (uint64_t i = own; i <= clean; i++)
		assert_true(protected(f, i));
	assert_int_equal(collect(f), 0);
	gwrite(f, own, 0x71);
	gwrite(f, hole, 0x72);
	gwrite(f, zero, 0x73);
	gwrite(f, shared, 0x74);
	assert_int_equal(collect(f), 4);
	for (uint64_t i = own; i < clean; i++)
		assert_true(reported(f, i));
	assert_false(reported(f, clean));
	wait_track_hits(f, 4);
	assert_page_is(f, own, 0x11, 0x71);
	assert_page_is(f, hole, 0, 0x72);
	assert_page_is(f, zero, 0, 0x73);
	/* The write was recorded, then the kernel copied the frame: the store is untouched. */
	assert_page_is(f, shared, 0xab, 0x74);
	assert_int_equal(pread(f->store, &frame, 1, OFF), 1);
	assert_int_equal(frame, 0xab);
	assert_int_equal(mem_dirty_guest_track(f->gm, false), 0);
}

static void test_track_collect_arms_what_it_reports(void **state)
{
	struct fix *f = *state;
	uint64_t a = f->first + 10, b = f->first + 11, run = f->first + 100, before;

	if (f->skip)
		skip();
	fill(f, a, 1);
	fill(f, b, 2);
	start(f);
	gwrite(f, a, 5);
	assert_false(protected(f, a));
	assert_int_equal(collect(f), 1);
	assert_true(reported(f, a));
	assert_true(protected(f, a));
	assert_int_equal(collect(f), 0);
	/* Written again after the collect: in the next one. */
	gwrite(f, a, 6);
	assert_int_equal(collect(f), 1);
	assert_true(reported(f, a));
	assert_false(reported(f, b));
	assert_page_is(f, a, 1, 6);
	/* A run of written pages, and pages written here and there, armed in a few calls. */
	for (uint64_t i = 0; i < 256; i++)
		gwrite(f, run + i, 9);
	for (uint64_t i = 300; i < 500; i += 7)
		gwrite(f, run + i, 9);
	before = tstats().protects;
	assert_int_equal(collect(f), 256 + 29);
	assert_true(tstats().protects - before <= 4);
	for (uint64_t i = 0; i < 500; i++)
		assert_true(protected(f, run + i));
	assert_int_equal(mem_dirty_guest_track(f->gm, false), 0);
}

/* Ending one reason never lifts the other; one write counts for both. */
static void test_track_sampled_page_counts_for_both(void **state)
{
	struct fix *f = *state;
	uint64_t p = f->first + 20, q = f->first + 21;

	if (f->skip)
		skip();
	fill(f, p, 3);
	fill(f, q, 4);
	(void)mem_sample_hits(f->gm);
	assert_int_equal(mem_sample_protect(f->gm, p), 0);
	start(f);
	gwrite(f, p, 0x61);
	assert_int_equal(mem_sample_hits(f->gm), 1);
	assert_int_equal(collect(f), 1);
	assert_true(reported(f, p));
	assert_true(mem_sample_release(f->gm, p));
	/* The sample is over; tracking (armed again by the collect) still holds the page. */
	assert_true(protected(f, p));

	/* Sampled while tracked, then tracking stops: the sample still holds it. */
	assert_int_equal(mem_sample_protect(f->gm, q), 0);
	assert_int_equal(mem_dirty_guest_track(f->gm, false), 0);
	assert_true(protected(f, q));
	assert_false(protected(f, p));
	gwrite(f, q, 0x62);
	assert_int_equal(mem_sample_hits(f->gm), 1);
	assert_false(protected(f, q));
}

/*
 * Zero reclaim changes what backs a page, not what it holds: neither a
 * record nor a lost one. The balloon's and reporting's drops are recorded:
 * the destination must drop those pages too.
 */
static void test_track_balloon_records_and_reclaim_does_not(void **state)
{
	struct fix *f = *state;
	uint64_t ballooned = f->first + 30, reported_free = f->first + 31;
	uint64_t clean = f->first + 32, written = f->first + 33;

	if (f->skip)
		skip();
	fill(f, ballooned, 0x5a);
	fill(f, reported_free, 0x5b);
	fill(f, clean, 0);
	fill(f, written, 0);
	start(f);
	assert_int_equal(mem_discard(f->gm, mem_index_gpa(f->gm, ballooned), PAGE, PS_BALLOONED),
			 1);
	assert_int_equal(mem_discard(f->gm, mem_index_gpa(f->gm, reported_free), PAGE, PS_REPORTED),
			 1);
	gwrite(f, written, 0); /* a write that leaves the page zero is a write all the same */
	assert_int_equal(mem_reclaim_zero(f->gm, clean, 2, 2), 2);
	assert_int_equal(pagestate_get(f->ps, clean), PS_ZERO);
	assert_int_equal(pagestate_get(f->ps, written), PS_ZERO);
	assert_int_equal(collect(f), 3);
	assert_true(reported(f, ballooned));
	assert_true(reported(f, reported_free));
	assert_true(reported(f, written));
	assert_false(reported(f, clean));
	/* Still tracked on its new backing. */
	assert_true(protected(f, clean));
	gwrite(f, clean, 0x21);
	assert_int_equal(collect(f), 1);
	assert_true(reported(f, clean));
	assert_page_is(f, clean, 0, 0x21);
	assert_int_equal(mem_dirty_guest_track(f->gm, false), 0);
}

/*
 * Dedup's remaps: a page mapped onto a frame, and a window rebuilt whole
 * (a frame, kept pages, zero pages, holes). Clean pages stay clean and are
 * armed on their new backing; a page written before stays recorded.
 */
static void test_track_follows_dedup_remaps(void **state)
{
	struct fix *f = *state;
	uint64_t p = f->first + 40, w = f->win;
	uint8_t kind[WIN_PAGES];

	if (f->skip)
		skip();
	fill(f, p, 0xab);
	fill(f, w, 0xab);	/* becomes a frame */
	fill(f, w + 1, 0x33);	/* kept */
	fill(f, w + 2, 0);	/* dropped as zero */
	fill(f, w + 4, 0x44);	/* kept, written before the rebuild */
	start(f);
	map_frame0(f, p);
	assert_true(protected(f, p));
	assert_int_equal(collect(f), 0);
	gwrite(f, p, 0x51);
	assert_int_equal(collect(f), 1);
	assert_true(reported(f, p));
	assert_page_is(f, p, 0xab, 0x51);

	gwrite(f, w + 4, 0x99);
	assert_int_equal(mem_txn_claim(&t, f->gm, w, WIN_PAGES, MEM_FROM(PS_ANON),
				       MEM_TXN_WHOLE | MEM_TXN_HOLES),
			 WIN_PAGES);
	memset(kind, MEM_WIN_ZERO, sizeof(kind));
	kind[0] = MEM_WIN_FRAME;
	mem_txn_set(&t, 0, MEM_FRAME, 0);
	kind[1] = MEM_WIN_KEEP;
	mem_txn_set(&t, 1, MEM_PRIVATE, 0);
	mem_txn_set(&t, 2, MEM_ZERO, 0);
	kind[4] = MEM_WIN_KEEP;
	mem_txn_set(&t, 4, MEM_PRIVATE, 0);
	assert_int_equal(mem_txn_end_window(&t, f->store, 0, kind), 0);
	assert_int_equal(pagestate_get(f->ps, w), PS_SHARED);
	assert_int_equal(collect(f), 1);
	assert_true(reported(f, w + 4));
	for (uint64_t i = 0; i < 8; i++)
		assert_true(protected(f, w + i));
	for (uint64_t i = 0; i < 4; i++)
		gwrite(f, w + i, (uint8_t)(0x80 + i));
	assert_int_equal(collect(f), 4);
	for (uint64_t i = 0; i < 4; i++)
		assert_true(reported(f, w + i));
	assert_page_is(f, w, 0xab, 0x80);
	assert_page_is(f, w + 1, 0x33, 0x81);
	assert_page_is(f, w + 2, 0, 0x82);
	assert_page_is(f, w + 3, 0, 0x83);
	assert_page_is(f, w + 4, 0x44, 0x99);
	assert_int_equal(mem_dirty_guest_track(f->gm, false), 0);
}

/*
 * Swapped pages: swapping out is no write, reading back is no write and
 * brings the page back protected; a write to a swapped page is seen, and a
 * written page swapped out stays recorded.
 */
static void test_track_swapped_pages(void **state)
{
	struct fix *f = *state;
	uint64_t cursor = f->first;

	if (f->skip)
		skip();
	for (uint64_t i = 0; i < 8; i++)
		fill(f, f->first + i, (int)i + 1);
	start(f);
	assert_int_equal(mem_swap_out(f->sw, f->gm, &cursor, 8), 8);
	for (uint64_t i = 0; i < 8; i++)
		assert_int_equal(pagestate_get(f->ps, f->first + i), PS_SWAPPED);
	assert_int_equal(collect(f), 0);
	/* A touch out of order reads the page alone: read back, protected, not written. */
	assert_int_equal(gread(f, f->first), 1);
	assert_int_equal(pagestate_get(f->ps, f->first), PS_ANON);
	assert_true(protected(f, f->first));
	assert_int_equal(collect(f), 0);
	gwrite(f, f->first, 0x31);
	gwrite(f, f->first + 5, 0x35);
	assert_int_equal(collect(f), 2);
	assert_true(reported(f, f->first));
	assert_true(reported(f, f->first + 5));
	assert_page_is(f, f->first + 5, 6, 0x35);
	/* Written, swapped out before the next collect: still recorded. */
	gwrite(f, f->first + 5, 0x36);
	cursor = f->first + 5;
	assert_int_equal(mem_swap_out(f->sw, f->gm, &cursor, 1), 1);
	assert_int_equal(pagestate_get(f->ps, f->first + 5), PS_SWAPPED);
	assert_int_equal(collect(f), 1);
	assert_true(reported(f, f->first + 5));
	assert_int_equal(gread(f, f->first + 5), 0x36);
	assert_int_equal(collect(f), 0);
	assert_null(f->fatal);
	assert_int_equal(mem_dirty_guest_track(f->gm, false), 0);
}

/*
 * A hole of a chunk registered for MISSING faults, tracked: a read gets
 * zeros without a record (and without looping: UFFDIO_ZEROPAGE refuses the
 * marker that protects the hole), a write is recorded. MISSING stays while
 * tracking: dropping it would let held writes through unseen.
 */
static void test_track_hole_of_a_missing_chunk(void **state)
{
	struct fix *f = *state;
	uint64_t h = f->win + 100;

	if (f->skip)
		skip();
	assert_int_equal(mem_chunks_set_missing(f->gm, f->win, WIN_PAGES, true), 0);
	start(f);
	assert_int_equal(gread(f, h), 0);
	assert_true(protected(f, h));
	assert_int_equal(collect(f), 0);
	gwrite(f, h, 0x41);
	assert_int_equal(collect(f), 1);
	assert_true(reported(f, h));
	assert_int_equal(mem_chunks_set_missing(f->gm, f->win, WIN_PAGES, false), -EBUSY);
	assert_int_equal(mem_dirty_guest_track(f->gm, false), 0);
	assert_int_equal(mem_chunks_set_missing(f->gm, f->win, WIN_PAGES, false), 0);
}

struct writer {
	struct fix *f;
	uint64_t idx;
	uint8_t val;
	pthread_t th;
};

static void *write_page(void *arg)
{
	struct writer *w = arg;

	gwrite(w->f, w->idx, w->val);
	return NULL;
}

/* Start a write of val at page idx and wait until it faulted (held by the owner). */
static void start_held_write(struct fix *f, struct writer *w, uint64_t idx, uint8_t val)
{
	uint64_t before = ustats(f).wp_faults;

	*w = (struct writer){ f, idx, val, 0 };
	assert_int_equal(pthread_create(&w->th, NULL, write_page, w), 0);
	while (ustats(f).wp_faults == before)
		usleep(1000);
}

/* The owner wakes a held write after arming the page again: it faults again, and is recorded. */
static void test_track_write_held_by_a_transaction_is_recorded(void **state)
{
	struct fix *f = *state;
	uint64_t kept = f->first + 50, zeroed = f->first + 51;
	struct writer w;

	if (f->skip)
		skip();
	fill(f, kept, 7);
	fill(f, zeroed, 0);
	start(f);
	assert_int_equal(mem_txn_claim(&t, f->gm, kept, 1, MEM_FROM(PS_ANON), 0), 1);
	start_held_write(f, &w, kept, 0x17);
	assert_int_equal(mem_txn_end(&t, -1), 0);
	assert_int_equal(pthread_join(w.th, NULL), 0);
	assert_int_equal(mem_txn_claim(&t, f->gm, zeroed, 1, MEM_FROM(PS_ANON), 0), 1);
	start_held_write(f, &w, zeroed, 0x18);
	mem_txn_set(&t, 0, MEM_ZERO, 0);
	assert_int_equal(mem_txn_end(&t, -1), 1);
	assert_int_equal(pthread_join(w.th, NULL), 0);
	assert_int_equal(collect(f), 2);
	assert_true(reported(f, kept));
	assert_true(reported(f, zeroed));
	assert_page_is(f, kept, 7, 0x17);
	assert_page_is(f, zeroed, 0, 0x18);
	assert_int_equal(mem_dirty_guest_track(f->gm, false), 0);
}

/*
 * Stopping lifts every protection tracking put on, and none of another
 * reason; also past a frame mapped (unregistered: the page was written, so
 * nothing armed it) while tracked.
 */
static void test_track_stop_lifts_every_protection(void **state)
{
	struct fix *f = *state;
	uint64_t own = f->first + 60, hole = f->first + 61, zero = f->first + 62;
	uint64_t shared = f->first + 63, sampled = f->first + 64, late = f->first + 65;
	uint64_t faults, stray = tstats().stray_faults;

	if (f->skip)
		skip();
	fill(f, own, 1);
	fill(f, zero, 0);
	assert_int_equal(mem_reclaim_zero(f->gm, zero, 1, 1), 1);
	fill(f, shared, 0xab);
	map_frame0(f, shared);
	fill(f, sampled, 2);
	fill(f, late, 0xab);
	start(f);
	gwrite(f, late, 0xab);
	wait_track_hits(f, 1);
	map_frame0(f, late);
	(void)mem_sample_hits(f->gm);
	assert_int_equal(mem_sample_protect(f->gm, sampled), 0);
	assert_int_equal(mem_dirty_guest_track(f->gm, false), 0);
	for (uint64_t i = 0; i < mem_nr_pages(f->gm); i++)
		if (i != sampled)
			assert_false(protected(f, i));
	assert_true(protected(f, sampled));
	faults = ustats(f).wp_faults;
	gwrite(f, own, 0x21);
	gwrite(f, hole, 0x22);
	gwrite(f, zero, 0x23);
	gwrite(f, shared, 0x24);
	assert_int_equal(ustats(f).wp_faults, faults);
	gwrite(f, sampled, 0x25);
	assert_int_equal(mem_sample_hits(f->gm), 1);
	assert_int_equal(tstats().stray_faults, stray);
	assert_int_equal(ustats(f).track_hits, 1);
	/* What was recorded before the stop is still there; a collect now arms nothing. */
	assert_int_equal(collect(f), 1);
	assert_true(reported(f, late));
	assert_false(protected(f, late));
	assert_false(protected(f, own));
}

/* All of a 1 GiB VM is armed (and disarmed) in a handful of calls, holes included. */
static void test_track_arms_1gib_in_a_handful_of_calls(void **state)
{
	struct gm *gm;
	uint64_t before, nr, pm = 0;

	(void)state;
	assert_int_equal(mem_create_anon(1ULL << 30, &gm), 0);
	if (mem_enable_uffd(gm) || !gm->wp_unpopulated) {
		mem_destroy(gm);
		skip();
	}
	nr = mem_nr_pages(gm);
	before = tstats().protects;
	assert_int_equal(mem_dirty_guest_track(gm, true), 0);
	assert_true(tstats().protects - before <= 16);
	for (uint64_t i = 0; i < nr; i += nr / 8 - 1) {
		assert_int_equal(mem_pagemap(gm, i, 1, &pm), 1);
		assert_true(pm & PM_UFFD_WP);
	}
	before = tstats().protects;
	assert_int_equal(mem_dirty_guest_track(gm, false), 0);
	assert_true(tstats().protects - before <= 16);
	assert_int_equal(mem_pagemap(gm, nr - 1, 1, &pm), 1);
	assert_false(pm & PM_UFFD_WP);
	mem_destroy(gm);
}

static void test_track_refused_without_userfaultfd(void **state)
{
	struct gm *gm;

	(void)state;
	assert_int_equal(mem_create_anon(RAM, &gm), 0);
	assert_int_equal(mem_dirty_guest_track(gm, true), -ENOTSUP);
	mem_destroy(gm);
}

/* --- a migrator's view, with writers racing every change of backing --- */

/*
 * Delay injection (linked with --wrap): a pause right after a drop
 * (MADV_DONTNEED) and after a window's mremap, where the backing changed
 * and the re-arm has not come yet. A writer arriving then writes without a
 * fault; only the look after the re-arm can find its write.
 */
static volatile unsigned int backing_delay_us;

int __real_madvise(void *addr, size_t len, int advice);
int __wrap_madvise(void *addr, size_t len, int advice);
int __wrap_madvise(void *addr, size_t len, int advice)
{
	int ret = __real_madvise(addr, len, advice);

	if (advice == MADV_DONTNEED && backing_delay_us)
		usleep(backing_delay_us);
	return ret;
}

void *__real_mremap(void *old, size_t old_len, size_t new_len, int flags, ...);
void *__wrap_mremap(void *old, size_t old_len, size_t new_len, int flags, ...);
void *__wrap_mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *to = NULL;
	void *ret;
	va_list ap;

	va_start(ap, flags);
	if (flags & MREMAP_FIXED)
		to = va_arg(ap, void *);
	va_end(ap);
	ret = __real_mremap(old, old_len, new_len, flags, to);
	if (backing_delay_us)
		usleep(backing_delay_us);
	return ret;
}

#define RACE_PAGES 8	/* pages of the zero-reclaim race, from BASE */
#define RACE_WIN 4	/* pages of the window the writers write, from WIN + 1 */

struct racer {
	struct fix *f;
	uint64_t idx;
	uint32_t writes;	/* how many before it stops */
	uint32_t seed;
	bool done;		/* atomic */
	pthread_t th;
};

/*
 * Writes zero and non-zero bytes in turn, so reclaim keeps dropping the
 * page as zero, with pauses of varying length so that writes also arrive
 * while a change of backing is under way (not only wait for its end), and
 * stops after a number of writes: its last write, the one a loss would
 * show, lands anywhere among the changes.
 */
static void *race_writes(void *arg)
{
	struct racer *r = arg;

	for (uint32_t v = 1; v <= r->writes; v++) {
		r->seed = r->seed * 1103515245u + 12345u;
		gwrite(r->f, r->idx, v % 2 ? (uint8_t)(r->seed >> 16 | 1) : 0);
		usleep(20 + (r->seed >> 8) % 200);
	}
	__atomic_store_n(&r->done, true, __ATOMIC_RELEASE);
	return NULL;
}

/* What the destination holds: the pages it was sent. */
static uint8_t dest[RACE_PAGES + RACE_WIN][PAGE];

static uint64_t race_page(const struct fix *f, unsigned int i)
{
	return i < RACE_PAGES ? f->first + i : f->win + 1 + (i - RACE_PAGES);
}

/* Collect and send what it reports (read after the collect, as a migrator does). */
static void race_round(struct fix *f)
{
	collect(f);
	for (unsigned int i = 0; i < RACE_PAGES + RACE_WIN; i++)
		if (reported(f, race_page(f, i)))
			memcpy(dest[i], hva(f, race_page(f, i)), PAGE);
}

static void rebuild_window(struct fix *f)
{
	uint8_t kind[WIN_PAGES];

	if (mem_txn_claim(&t, f->gm, f->win, WIN_PAGES, MEM_FROM(PS_ANON) | MEM_FROM(PS_SHARED),
			  MEM_TXN_WHOLE | MEM_TXN_HOLES) != WIN_PAGES)
		return;
	memset(kind, MEM_WIN_ZERO, sizeof(kind));
	kind[0] = MEM_WIN_FRAME;
	mem_txn_set(&t, 0, MEM_FRAME, 0);
	for (unsigned int i = 1; i <= RACE_WIN; i++) {
		kind[i] = MEM_WIN_KEEP;
		mem_txn_set(&t, i, MEM_PRIVATE, 0);
	}
	assert_int_equal(mem_txn_end_window(&t, f->store, 0, kind), 0);
}

static void test_track_migrator_copy_matches_under_races(void **state)
{
	struct fix *f = *state;
	struct racer r[RACE_PAGES + RACE_WIN];

	if (f->skip)
		skip();
	fill(f, f->win, 0xab);
	for (unsigned int i = 0; i < RACE_PAGES + RACE_WIN; i++)
		fill(f, race_page(f, i), 0);
	start(f);
	/* The first pass sends everything. */
	for (unsigned int i = 0; i < RACE_PAGES + RACE_WIN; i++)
		memcpy(dest[i], hva(f, race_page(f, i)), PAGE);
	backing_delay_us = 300;
	for (uint32_t phase = 0; phase < 24; phase++) {
		unsigned int round = 0;
		bool busy = true;

		for (unsigned int i = 0; i < RACE_PAGES + RACE_WIN; i++) {
			r[i] = (struct racer){ f, race_page(f, i), 4 + (phase * 7 + i * 5) % 29,
					       phase * 131 + i, false, 0 };
			assert_int_equal(pthread_create(&r[i].th, NULL, race_writes, &r[i]), 0);
		}
		/* Reclaim and rebuild until the writers are done, and twice more after. */
		for (unsigned int quiet = 0; quiet < 2; round++) {
			mem_reclaim_zero(f->gm, f->first, RACE_PAGES, RACE_PAGES);
			rebuild_window(f);
			if (round % 3 == 0)
				race_round(f);
			quiet += !busy;
			busy = false;
			for (unsigned int i = 0; i < RACE_PAGES + RACE_WIN; i++)
				busy |= !__atomic_load_n(&r[i].done, __ATOMIC_ACQUIRE);
		}
		for (unsigned int i = 0; i < RACE_PAGES + RACE_WIN; i++)
			assert_int_equal(pthread_join(r[i].th, NULL), 0);
		/* A pass with the guest quiet: the destination must hold what the source does. */
		race_round(f);
		for (unsigned int i = 0; i < RACE_PAGES + RACE_WIN; i++)
			assert_memory_equal(dest[i], hva(f, race_page(f, i)), PAGE);
	}
	backing_delay_us = 0;
	assert_int_equal(mem_dirty_guest_track(f->gm, false), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_track_sees_writes_to_every_kind_of_page, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_track_collect_arms_what_it_reports, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_track_sampled_page_counts_for_both, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_track_balloon_records_and_reclaim_does_not,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_track_follows_dedup_remaps, setup, teardown),
		cmocka_unit_test_setup_teardown(test_track_swapped_pages, setup_swap, teardown),
		cmocka_unit_test_setup_teardown(test_track_hole_of_a_missing_chunk, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_track_write_held_by_a_transaction_is_recorded,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_track_stop_lifts_every_protection, setup,
						teardown),
		cmocka_unit_test(test_track_arms_1gib_in_a_handful_of_calls),
		cmocka_unit_test(test_track_refused_without_userfaultfd),
		cmocka_unit_test_setup_teardown(test_track_migrator_copy_matches_under_races, setup,
						teardown),
	};

	int ret = cmocka_run_group_tests_name("this kernel", tests, NULL, NULL);

	mem_forget_zero_page();
	ret |= cmocka_run_group_tests_name("no zero page memmap recognises", tests, NULL, NULL);
	return ret;
}
