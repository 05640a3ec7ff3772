/* SPDX-License-Identifier: MIT */
/*
 * The page-range transaction on anonymous guest memory under a real
 * userfaultfd and the real fault service: every commit kind with a guest
 * write racing it (the write waits, then lands on the new backing), commits
 * that fail part way (the page stays as it was claimed), write-protection
 * reasons (a claim ending on a sampled page, a sample ending under a claim),
 * a write to a page protected for no reason (released and counted, where it
 * used to fault forever), registration modes kept across every remap path,
 * a balloon drop that meets a page another mechanism holds (it waits, and
 * the page ends ballooned), and the state/pagemap check.
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
#include <sys/ioctl.h>
#include <sys/mman.h>
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

#define RAM (16ULL << 20)
#define BASE 0x400000ULL  /* pages the tests write, well inside RAM */
#define WIN 0x800000ULL	  /* a 2 MiB window the tests remap */
#define WIN_PAGES 512
#define PAGE 4096
#define OFF 100		  /* where racing writers write */

struct fix {
	struct gm *gm;
	struct pagestate *ps;
	struct uffd_service *svc;
	int store;	  /* a memfd: frame 0 holds 0xab, the rest holes */
	uint64_t first;	  /* page index of BASE */
	uint64_t win;	  /* page index of WIN */
};

static struct mem_txn t;

static int setup(void **state)
{
	static struct fix f;
	uint8_t page[PAGE];

	memset(&f, 0, sizeof(f));
	if (mem_create_anon(RAM, &f.gm) || mem_enable_uffd(f.gm) ||
	    uffd_service_create(&f.svc) || uffd_service_add(f.svc, f.gm))
		return -1;
	f.ps = mem_pagestate(f.gm);
	f.first = (uint64_t)mem_page_index(f.gm, BASE);
	f.win = (uint64_t)mem_page_index(f.gm, WIN);
	f.store = memfd_create("test-store", MFD_CLOEXEC);
	if (f.store < 0 || ftruncate(f.store, 2 * WIN_PAGES * PAGE))
		return -1;
	memset(page, 0xab, sizeof(page));
	if (pwrite(f.store, page, PAGE, 0) != PAGE)
		return -1;
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;

	uffd_service_remove(f->svc, f->gm);
	uffd_service_destroy(f->svc);
	mem_destroy(f->gm);
	close(f->store);
	return 0;
}

static uint8_t *hva(struct fix *f, uint64_t idx)
{
	return mem_page_hva(f->gm, idx);
}

static void fill(struct fix *f, uint64_t idx, int byte)
{
	uint8_t page[PAGE];

	memset(page, byte, sizeof(page));
	assert_int_equal(mem_write(f->gm, mem_index_gpa(f->gm, idx), page, sizeof(page)), 0);
}

static uint64_t pm_of(struct fix *f, uint64_t idx)
{
	uint64_t pm = 0;

	assert_int_equal(mem_pagemap(f->gm, idx, 1, &pm), 1);
	return pm;
}

static uint64_t faults(struct fix *f)
{
	struct uffd_stats s;

	uffd_service_stats(f->svc, &s);
	return s.wp_faults + s.missing_faults;
}

static struct uffd_stats ustats(struct fix *f)
{
	struct uffd_stats s;

	uffd_service_stats(f->svc, &s);
	return s;
}

/*
 * The service counts a fault once it has resolved it, and resolving it
 * wakes the access: the count may come a moment after the access returns.
 * Poll for it (a bound no machine reaches; a count that never comes fails).
 */
#define assert_ustat(f, field, want)                                            \
	do {                                                                    \
		for (int n_ = 0; ustats(f).field != (want) && n_ < 600000; n_++) \
			usleep(100);                                            \
		assert_int_equal(ustats(f).field, (want));                      \
	} while (0)

static struct mem_txn_stats tstats(void)
{
	struct mem_txn_stats s;

	mem_txn_stats(&s);
	return s;
}

struct writer {
	uint8_t *p;
	uint8_t val;
	pthread_t th;
};

static void *write_byte(void *arg)
{
	struct writer *w = arg;

	fake_guest_store8(w->p, w->val);
	return NULL;
}

/* Start a guest-like write of val at page idx + OFF; with `held`, wait until it faulted. */
static void start_write(struct fix *f, struct writer *w, uint64_t idx, uint8_t val, bool held)
{
	uint64_t before = faults(f);

	w->p = hva(f, idx) + OFF;
	w->val = val;
	assert_int_equal(pthread_create(&w->th, NULL, write_byte, w), 0);
	while (held && faults(f) == before)
		usleep(1000);
}

static void assert_page_is(struct fix *f, uint64_t idx, int byte, int at_off)
{
	uint8_t want[PAGE], got[PAGE];

	memset(want, byte, sizeof(want));
	want[OFF] = (uint8_t)at_off;
	assert_int_equal(mem_read(f->gm, mem_index_gpa(f->gm, idx), got, sizeof(got)), 0);
	assert_memory_equal(got, want, sizeof(got));
}

/* --- commits, each with a write racing it --- */

struct commit_case {
	enum mem_commit c;
	int before;	/* the page's bytes before */
	int after;	/* its bytes after, but for the racing write */
	enum ps_state state; /* its state at the end */
};

static void check_commit(struct fix *f, uint64_t idx, const struct commit_case *k)
{
	struct writer w;

	fill(f, idx, k->before);
	assert_int_equal(mem_txn_claim(&t, f->gm, idx, 1, MEM_FROM(PS_ANON), 0), 1);
	assert_true(t.pm[0] & PM_UFFD_WP);
	start_write(f, &w, idx, 0x77, true);
	/* Held: not applied while the transaction runs. */
	assert_int_equal(fake_guest_load8(hva(f, idx) + OFF), k->before);
	mem_txn_set(&t, 0, k->c, 0);
	assert_int_equal(mem_txn_end(&t, f->store), k->c == MEM_KEEP || k->c == MEM_PRIVATE ? 0 : 1);
	assert_int_equal(pthread_join(w.th, NULL), 0);
	/* The write landed on the new backing. */
	assert_page_is(f, idx, k->after, 0x77);
	assert_int_equal(pagestate_get(f->ps, idx), k->state);
	assert_false(pm_of(f, idx) & PM_UFFD_WP);
}

static void test_txn_every_commit_keeps_a_racing_write(void **state)
{
	static const struct commit_case cases[] = {
		{ MEM_KEEP, 0x5a, 0x5a, PS_ANON },
		{ MEM_PRIVATE, 0x5a, 0x5a, PS_ANON },
		{ MEM_ZERO, 0, 0, PS_ZERO },
		{ MEM_FRAME, 0x5a, 0xab, PS_SHARED }, /* store frame 0: 0xab */
		{ MEM_BALLOONED, 0x5a, 0, PS_BALLOONED },
		{ MEM_REPORTED, 0x5a, 0, PS_REPORTED },
	};
	struct fix *f = *state;

	for (unsigned int i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_commit(f, f->first + i, &cases[i]);
	/* A dropped page the guest wrote again is its own again, once residency is read. */
	mem_resident(f->gm);
	assert_int_equal(pagestate_get(f->ps, f->first + 2), PS_ANON);
	assert_int_equal(pagestate_get(f->ps, f->first + 4), PS_ANON);
}

/* --- failures part way --- */

static void test_txn_failed_commit_keeps_the_page_as_claimed(void **state)
{
	struct fix *f = *state;
	uint64_t idx = f->first + 10, failed = tstats().failed;
	uint8_t kind[WIN_PAGES];

	fill(f, idx, 0x42);
	/* A frame commit without a store: the mapping cannot be made. */
	assert_int_equal(mem_txn_claim(&t, f->gm, idx, 1, MEM_FROM(PS_ANON), 0), 1);
	mem_txn_set(&t, 0, MEM_FRAME, 0);
	assert_int_equal(mem_txn_end(&t, -1), 0);
	assert_int_equal(t.commit[0], MEM_KEEP);
	assert_int_equal(tstats().failed, failed + 1);
	assert_page_is(f, idx, 0x42, 0x42);
	assert_int_equal(pagestate_get(f->ps, idx), PS_ANON);
	assert_false(pm_of(f, idx) & PM_UFFD_WP);
	assert_false(mem_page_in_store_mapping(f->gm, idx));

	/* A window whose commits contradict its kinds: given back whole, nothing remapped. */
	fill(f, f->win, 0x43);
	assert_int_equal(mem_txn_claim(&t, f->gm, f->win, WIN_PAGES, MEM_FROM(PS_ANON),
				       MEM_TXN_WHOLE | MEM_TXN_HOLES),
			 WIN_PAGES);
	memset(kind, MEM_WIN_ZERO, sizeof(kind));
	kind[0] = MEM_WIN_FRAME; /* but page 0 commits MEM_KEEP */
	assert_int_equal(mem_txn_end_window(&t, f->store, 0, kind), -EINVAL);
	assert_page_is(f, f->win, 0x43, 0x43);
	for (unsigned int i = 0; i < WIN_PAGES; i++) {
		assert_int_equal(pagestate_get(f->ps, f->win + i), PS_ANON);
		assert_false(mem_page_in_store_mapping(f->gm, f->win + i));
		assert_false(pm_of(f, f->win + i) & PM_UFFD_WP);
	}
	/* A claim of a page another mechanism holds takes nothing. */
	assert_int_equal(pagestate_cas(f->ps, idx, PS_ANON, PS_BUSY), 0);
	assert_int_equal(mem_txn_claim(&t, f->gm, idx - 1, 2, MEM_FROM(PS_ANON), MEM_TXN_WHOLE),
			 -EBUSY);
	assert_int_equal(pagestate_get(f->ps, idx - 1), PS_ANON);
	pagestate_set(f->ps, idx, PS_ANON);
}

/* --- reasons --- */

static void test_txn_claim_ending_on_a_sampled_page_keeps_the_sample(void **state)
{
	struct fix *f = *state;
	uint64_t idx = f->first + 20;
	struct writer w;

	fill(f, idx, 1);
	(void)mem_sample_hits(f->gm);
	assert_int_equal(mem_sample_protect(f->gm, idx), 0);
	assert_int_equal(mem_txn_claim(&t, f->gm, idx, 1, MEM_FROM(PS_ANON), 0), 1);
	assert_int_equal(mem_txn_end(&t, -1), 0);
	/* The claim is over; the sampling reason still holds the page. */
	assert_true(pm_of(f, idx) & PM_UFFD_WP);
	start_write(f, &w, idx, 0x66, false);
	assert_int_equal(pthread_join(w.th, NULL), 0);
	assert_int_equal(mem_sample_hits(f->gm), 1);
	assert_false(pm_of(f, idx) & PM_UFFD_WP);
	assert_page_is(f, idx, 1, 0x66);
}

static void test_txn_sample_ending_under_a_claim_keeps_the_claim(void **state)
{
	struct fix *f = *state;
	uint64_t idx = f->first + 21;
	struct writer w;

	fill(f, idx, 2);
	(void)mem_sample_hits(f->gm);
	assert_int_equal(mem_sample_protect(f->gm, idx), 0);
	assert_int_equal(mem_txn_claim(&t, f->gm, idx, 1, MEM_FROM(PS_ANON), 0), 1);
	mem_sample_release(f->gm, idx);
	/* The claim relies on the protection: it stays until the claim ends. */
	assert_true(pm_of(f, idx) & PM_UFFD_WP);
	start_write(f, &w, idx, 0x55, true);
	assert_int_equal(fake_guest_load8(hva(f, idx) + OFF), 2);
	assert_int_equal(mem_txn_end(&t, -1), 0);
	assert_int_equal(pthread_join(w.th, NULL), 0);
	assert_false(pm_of(f, idx) & PM_UFFD_WP);
	assert_page_is(f, idx, 2, 0x55);
	assert_int_equal(mem_sample_hits(f->gm), 0);
}

/*
 * A sample withdrawn while a holder that had already decided to keep the
 * protection (the sample was there when it looked) still holds the page: the
 * protection outlives its reason. The next write is expected, not a stray
 * protection: released, counted as neither a hit nor a stray.
 */
static void test_txn_withdrawn_sample_lingers_without_a_stray(void **state)
{
	struct fix *f = *state;
	uint64_t idx = f->first + 22, stray = tstats().stray_faults;
	struct writer w;

	fill(f, idx, 4);
	(void)mem_sample_hits(f->gm);
	assert_int_equal(mem_sample_protect(f->gm, idx), 0);
	/* The holder: it owns the page, and ends later without lifting the protection. */
	assert_int_equal(pagestate_cas(f->ps, idx, PS_ANON, PS_BUSY), 0);
	mem_sample_release(f->gm, idx);
	pagestate_set(f->ps, idx, PS_ANON);
	assert_true(pm_of(f, idx) & PM_UFFD_WP);
	start_write(f, &w, idx, 0x56, false);
	assert_int_equal(pthread_join(w.th, NULL), 0);
	assert_page_is(f, idx, 4, 0x56);
	assert_false(pm_of(f, idx) & PM_UFFD_WP);
	assert_int_equal(tstats().stray_faults, stray);
	assert_int_equal(mem_sample_hits(f->gm), 0);
}

/* --- protection for no reason --- */

static void protect_raw(struct fix *f, uint64_t idx)
{
	struct uffdio_writeprotect wp = {
		.range = { (uint64_t)(uintptr_t)hva(f, idx), PAGE },
		.mode = UFFDIO_WRITEPROTECT_MODE_WP,
	};

	assert_int_equal(ioctl(f->gm->uffd, UFFDIO_WRITEPROTECT, &wp), 0);
	assert_true(pm_of(f, idx) & PM_UFFD_WP);
}

/*
 * A page write-protected with no reason recorded, in a state other than
 * PS_ANON (a zero page) and as a private page: the write completes, and the
 * release is counted. The service used to only wake such a write, which
 * faulted again at once, forever.
 */
static void test_txn_stray_protection_is_released_not_spun_on(void **state)
{
	struct fix *f = *state;
	uint64_t zero = f->first + 30, anon = f->first + 31;
	uint64_t stray = tstats().stray_faults;
	struct writer w;

	fill(f, zero, 0);
	fill(f, anon, 3);
	assert_int_equal(mem_reclaim_zero(f->gm, zero, 1, 1), 1);
	assert_int_equal(pagestate_get(f->ps, zero), PS_ZERO);
	/* Make it a mapped zero page (where holes cannot be protected) before protecting it. */
	assert_int_equal(hva(f, zero)[0], 0);
	protect_raw(f, zero);
	start_write(f, &w, zero, 0x44, false);
	assert_int_equal(pthread_join(w.th, NULL), 0);
	assert_page_is(f, zero, 0, 0x44);
	protect_raw(f, anon);
	start_write(f, &w, anon, 0x45, false);
	assert_int_equal(pthread_join(w.th, NULL), 0);
	assert_page_is(f, anon, 3, 0x45);
	assert_int_equal(tstats().stray_faults, stray + 2);
	assert_ustat(f, stray, 2);
	assert_false(pm_of(f, zero) & PM_UFFD_WP);
	assert_false(pm_of(f, anon) & PM_UFFD_WP);
}

/* --- registration modes --- */

/* The VmFlags of the mapping holding addr, from /proc/self/smaps. */
static void vm_flags(const void *addr, char *out, size_t len)
{
	FILE *fp = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;

	assert_non_null(fp);
	out[0] = 0;
	while (fgets(line, sizeof(line), fp)) {
		unsigned long lo, hi;

		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = (uintptr_t)addr >= lo && (uintptr_t)addr < hi;
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			snprintf(out, len, "%s", line + 8);
			break;
		}
	}
	fclose(fp);
}

static bool has_flag(const void *addr, const char *flag)
{
	char flags[512], want[8];

	vm_flags(addr, flags, sizeof(flags));
	snprintf(want, sizeof(want), " %s", flag);
	return strstr(flags, want) != NULL;
}

/*
 * MISSING faults on a chunk survive every path that replaces a mapping in
 * it: a drop of a page mapped onto a frame (fresh anonymous memory) and a
 * window remapped whole. A hole there is served (the zero page) before the
 * access is woken. Turning MISSING off keeps the protections pages need.
 */
static void test_txn_missing_mode_survives_every_remap(void **state)
{
	struct fix *f = *state;
	uint64_t p = f->win + 3, hole = f->win + 100, sampled = f->win + 7;
	uint8_t kind[WIN_PAGES], buf[PAGE];
	uint64_t zero_pages = ustats(f).zero_pages;

	assert_int_equal(mem_chunks_set_missing(f->gm, f->win, WIN_PAGES, true), 0);
	assert_true(mem_page_missing(f->gm, p));
	assert_true(has_flag(hva(f, p), "um"));
	/* A hole of the chunk, read: a MISSING fault, served with the zero page. */
	assert_int_equal(mem_read(f->gm, WIN + 100 * PAGE, buf, PAGE), 0);
	assert_int_equal(buf[0], 0);
	assert_ustat(f, zero_pages, zero_pages + 1);
	assert_false(mem_pm_resident(pm_of(f, hole)));

	/* A page mapped onto a frame, then dropped: fresh memory, registered as its chunk. */
	fill(f, p, 0xab);
	assert_int_equal(mem_txn_claim(&t, f->gm, p, 1, MEM_FROM(PS_ANON), 0), 1);
	mem_txn_set(&t, 0, MEM_FRAME, 0);
	assert_int_equal(mem_txn_end(&t, f->store), 1);
	assert_true(mem_page_in_store_mapping(f->gm, p));
	assert_int_equal(mem_txn_claim(&t, f->gm, p, 1, MEM_FROM(PS_SHARED), 0), 1);
	mem_txn_set(&t, 0, MEM_BALLOONED, 0);
	assert_int_equal(mem_txn_end(&t, -1), 1);
	assert_false(mem_page_in_store_mapping(f->gm, p));
	assert_true(has_flag(hva(f, p), "um"));
	assert_true(has_flag(hva(f, p), "uw"));

	/* The window remapped whole: its new mapping is registered for MISSING too. */
	assert_int_equal(mem_txn_claim(&t, f->gm, f->win, WIN_PAGES,
				       MEM_FROM(PS_ANON) | MEM_FROM(PS_BALLOONED),
				       MEM_TXN_WHOLE | MEM_TXN_HOLES),
			 WIN_PAGES);
	memset(kind, MEM_WIN_ZERO, sizeof(kind));
	assert_int_equal(mem_txn_end_window(&t, f->store, WIN_PAGES * PAGE, kind), 0);
	assert_true(has_flag(hva(f, f->win), "um"));
	assert_true(has_flag(hva(f, f->win), "uw"));

	/* Off again: write protection stays, and so does what a page's reasons need. */
	fill(f, sampled, 9);
	assert_int_equal(mem_sample_protect(f->gm, sampled), 0);
	assert_int_equal(mem_chunks_set_missing(f->gm, f->win, WIN_PAGES, false), 0);
	assert_false(mem_page_missing(f->gm, p));
	assert_false(has_flag(hva(f, sampled), "um"));
	assert_true(has_flag(hva(f, sampled), "uw"));
	assert_true(pm_of(f, sampled) & PM_UFFD_WP);
	mem_sample_release(f->gm, sampled);
	assert_false(pm_of(f, sampled) & PM_UFFD_WP);
}

/* --- the balloon meets a page another mechanism holds --- */

struct discard_args {
	struct gm *gm;
	gpa_t gpa;
	int64_t ret;
};

static void *discard_thread(void *arg)
{
	struct discard_args *a = arg;

	a->ret = mem_discard(a->gm, a->gpa, 3 * PAGE, PS_BALLOONED);
	return NULL;
}

/*
 * A page the guest gave to the balloon while another mechanism holds it is
 * dropped once that mechanism is done, never skipped: a skipped page stayed
 * the VM's own page while the guest counted it ballooned.
 */
static void test_txn_balloon_waits_for_a_held_page(void **state)
{
	struct fix *f = *state;
	uint64_t idx = f->first + 41;
	struct discard_args a = { f->gm, mem_index_gpa(f->gm, idx - 1), 0 };
	pthread_t th;

	for (int i = -1; i <= 1; i++)
		fill(f, idx + (uint64_t)i, 7);
	assert_int_equal(mem_txn_claim(&t, f->gm, idx, 1, MEM_FROM(PS_ANON), 0), 1);
	assert_int_equal(pthread_create(&th, NULL, discard_thread, &a), 0);
	usleep(20000); /* let it reach the held page (the outcome is the same if it did not) */
	assert_int_equal(mem_txn_end(&t, -1), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(a.ret, 3);
	for (int i = -1; i <= 1; i++) {
		assert_int_equal(pagestate_get(f->ps, idx + (uint64_t)i), PS_BALLOONED);
		assert_false(mem_pm_resident(pm_of(f, idx + (uint64_t)i)));
	}
}

/* --- the state/pagemap check --- */

static void test_txn_check_agrees_and_finds_a_lie(void **state)
{
	struct fix *f = *state;
	struct mem_check c;
	uint8_t kind[WIN_PAGES];

	for (unsigned int i = 0; i < 8; i++)
		fill(f, f->first + 50 + i, i % 2 ? 0 : 0x31);
	assert_int_equal(mem_reclaim_zero(f->gm, f->first + 50, 8, 8), 4);
	assert_int_equal(mem_discard(f->gm, BASE + 60 * PAGE, 2 * PAGE, PS_REPORTED), 2);
	fill(f, f->win, 0xab);
	assert_int_equal(mem_txn_claim(&t, f->gm, f->win, WIN_PAGES, MEM_FROM(PS_ANON),
				       MEM_TXN_WHOLE | MEM_TXN_HOLES),
			 WIN_PAGES);
	memset(kind, MEM_WIN_ZERO, sizeof(kind));
	kind[0] = MEM_WIN_FRAME;
	mem_txn_set(&t, 0, MEM_FRAME, 0);
	assert_int_equal(mem_txn_end_window(&t, f->store, 0, kind), 0);
	assert_int_equal(mem_check_states(f->gm, &c), 0);
	assert_int_equal(c.checked, mem_nr_pages(f->gm));
	assert_int_equal(c.mismatches, 0);
	/* A resident page that claims to be dropped. */
	pagestate_set(f->ps, f->first + 50, PS_ZERO);
	assert_int_equal(mem_check_states(f->gm, &c), 0);
	assert_int_equal(c.mismatches, 1);
	assert_int_equal(c.first_bad, f->first + 50);
	assert_int_equal(c.first_state, PS_ZERO);
	pagestate_set(f->ps, f->first + 50, PS_ANON);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_txn_every_commit_keeps_a_racing_write, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_txn_failed_commit_keeps_the_page_as_claimed,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_txn_claim_ending_on_a_sampled_page_keeps_the_sample, setup, teardown),
		cmocka_unit_test_setup_teardown(test_txn_sample_ending_under_a_claim_keeps_the_claim,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_txn_withdrawn_sample_lingers_without_a_stray,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_txn_stray_protection_is_released_not_spun_on,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_txn_missing_mode_survives_every_remap, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_txn_balloon_waits_for_a_held_page, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_txn_check_agrees_and_finds_a_lie, setup,
						teardown),
	};

	return cmocka_run_group_tests_name("page-range transaction", tests, NULL, NULL);
}
