/* SPDX-License-Identifier: MIT */
/*
 * Host swap's store on anonymous guest memory, a real swap file and the real
 * fault service: pages swapped out leave memory and read back right on a
 * touch, with their neighbours in the next slots (their slots freed); zero and shared pages are not written; a write
 * racing a swap-out lands; a page the guest gives up while swapped loses its
 * slot unread; a full file keeps every page resident; a tmpfs path is
 * refused; a read that fails stops the VM (the fatal hook), never a page of
 * zeros.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/fault.h"
#include "fake_guest.h"
#include "mem/gm.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/pagestate.h"
#include "mem/reclaim.h"
#include "mem/swap.h"
#include "mem/txn.h"
#include "mem/uffd.h"

#define RAM (16ULL << 20)
#define BASE 0x400000ULL
#define N 64
#define PAGE 4096

struct fix {
	struct gm *gm;
	struct pagestate *ps;
	struct uffd_service *svc;
	struct mem_swap *sw;
	uint64_t first;
	char why[256];		/* the last reason the fatal hook was given */
	const char *fatal;	/* why, once given (atomic: fatal_of) */
	enum mem_swap_io io;	/* the I/O engine the fixture runs on */
};

static void on_fatal(void *arg, const char *why)
{
	struct fix *f = arg;

	snprintf(f->why, sizeof(f->why), "%s", why);
	__atomic_store_n(&f->fatal, f->why, __ATOMIC_RELEASE);
}

/*
 * The reason the fatal hook was given, or NULL. The hook runs on the
 * userfaultfd service thread, woken by a guest access through the kernel:
 * only this acquire orders what it wrote before the test's reads.
 */
static const char *fatal_of(struct fix *f)
{
	return __atomic_load_n(&f->fatal, __ATOMIC_ACQUIRE);
}

/* Page i holds i + 1 in every byte, but for the zero pages (every 8th). */
static int byte_of(unsigned int i)
{
	return i % 8 == 7 ? 0 : (int)(i + 1);
}

static int open_fix(struct fix *f, uint64_t swap_bytes)
{
	const char *why;
	uint8_t page[PAGE];

	enum mem_swap_io io = f->io;

	memset(f, 0, sizeof(*f));
	f->io = io;
	if (mem_create_anon(RAM, &f->gm) || mem_enable_uffd(f->gm) ||
	    uffd_service_create(&f->svc) || uffd_service_add(f->svc, f->gm))
		return -1;
	f->ps = mem_pagestate(f->gm);
	f->first = (uint64_t)mem_page_index(f->gm, BASE);
	/* The build directory: a disk filesystem (tmpfs is refused). */
	if (mem_swap_open(".", swap_bytes, false, &f->sw, &why) ||
	    mem_swap_set_io(f->sw, f->io) || mem_swap_serve(f->sw, f->svc))
		return -1;
	if (mem_swap_attach(f->sw, f->gm, "test", on_fatal, f))
		return -1;
	for (unsigned int i = 0; i < N; i++) {
		memset(page, byte_of(i), sizeof(page));
		if (mem_write(f->gm, BASE + (uint64_t)i * PAGE, page, sizeof(page)))
			return -1;
	}
	return 0;
}

static int setup_on(void **state, enum mem_swap_io io)
{
	static struct fix f;

	*state = &f;
	f.io = io;
	return open_fix(&f, 1ULL << 20);
}

/* io_uring where the kernel allows it (else its fallback): what a host runs. */
static int setup(void **state)
{
	return setup_on(state, MEM_SWAP_IO_AUTO);
}

/* The pread/pwrite thread pool, the engine where io_uring is refused. */
static int setup_threads(void **state)
{
	return setup_on(state, MEM_SWAP_IO_THREADS);
}

static int teardown(void **state)
{
	struct fix *f = *state;

	uffd_service_remove(f->svc, f->gm);
	mem_swap_detach(f->sw, f->gm);
	mem_swap_close(f->sw);
	uffd_service_destroy(f->svc);
	mem_destroy(f->gm);
	return 0;
}

/* Swap out up to n pages from page index first on (the caller's thread). */
static int64_t swap_out(struct fix *f, uint64_t first, uint64_t n)
{
	return mem_swap_out(f->sw, f->gm, &first, n);
}

static uint64_t pm_of(struct fix *f, uint64_t idx)
{
	uint64_t pm = 0;

	assert_int_equal(mem_pagemap(f->gm, idx, 1, &pm), 1);
	return pm;
}

static struct mem_swap_stats sstats(struct fix *f)
{
	struct mem_swap_stats s;

	mem_swap_stats(f->sw, &s);
	return s;
}

/* Touch page i as the guest would (its host mapping): it must hold `byte` throughout. */
static void assert_content(struct fix *f, unsigned int i, int byte)
{
	uint8_t page[PAGE], want[PAGE];
	struct mem_slice sl;

	memset(want, byte, sizeof(want));
	assert_int_equal(mem_slice_get(f->gm, BASE + (uint64_t)i * PAGE, PAGE, &sl), 0);
	assert_int_equal(sl.len, PAGE);
	memcpy(page, sl.hva, sizeof(page));
	assert_memory_equal(page, want, sizeof(page));
}

/*
 * Swap-ins counted reach n. The touched page's access can go on as soon as
 * the page is copied in (the kernel looks again before it sleeps), before
 * the service has counted it and the pages read ahead with it: wait for the
 * count (a deadline only so that a bug fails instead of hanging).
 */
static void swap_ins_reach(struct fix *f, uint64_t n)
{
	for (int i = 0; i < 5000 && sstats(f).swap_ins < n; i++)
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
	assert_int_equal(sstats(f).swap_ins, n);
}

static void test_swap_out_and_back_on_touch(void **state)
{
	struct fix *f = *state;
	unsigned int written = 0;

	for (unsigned int i = 0; i < N; i++)
		written += byte_of(i) != 0;
	assert_int_equal(swap_out(f, f->first, N), written);
	for (unsigned int i = 0; i < N; i++) {
		/* Gone from memory: written out, or (zero pages) dropped as zero. */
		assert_false(mem_pm_resident(pm_of(f, f->first + i)));
		assert_int_equal(pagestate_get(f->ps, f->first + i),
				 byte_of(i) ? PS_SWAPPED : PS_ZERO);
	}
	assert_int_equal(mem_swap_vm_pages(f->gm), written);
	assert_int_equal(sstats(f).used_bytes, written * PAGE);
	/*
	 * A touch out of order reads the page alone; each touch where the last
	 * read ended doubles the read-ahead: the swapped pages after it whose
	 * slots follow (pages 1-2, then 3-6: page 7 was a zero page, dropped,
	 * not written, and ends the run).
	 */
	assert_content(f, 0, byte_of(0));
	swap_ins_reach(f, 1);
	assert_false(mem_pm_resident(pm_of(f, f->first + 1)));
	assert_content(f, 1, byte_of(1));
	swap_ins_reach(f, 3);
	assert_true(mem_pm_resident(pm_of(f, f->first + 2)));
	assert_false(mem_pm_resident(pm_of(f, f->first + 3)));
	assert_content(f, 3, byte_of(3));
	swap_ins_reach(f, 7);
	assert_true(mem_pm_resident(pm_of(f, f->first + 6)));
	assert_false(mem_pm_resident(pm_of(f, f->first + 8)));
	/* Read back on touch, every byte right, each slot given back. */
	for (unsigned int i = 0; i < N; i++)
		assert_content(f, i, byte_of(i));
	swap_ins_reach(f, written);
	assert_int_equal(sstats(f).used_bytes, 0);
	{
		struct mem_swap_vm_stats vs;
		uint64_t in_hist = 0;

		mem_swap_vm_stats(f->gm, &vs);
		assert_int_equal(vs.swap_outs, written);
		assert_int_equal(vs.faults + vs.readahead, written);
		assert_true(vs.readahead > 0);
		for (unsigned int i = 0; i < MEM_SWAP_HIST; i++)
			in_hist += vs.fault_hist[i];
		assert_int_equal(in_hist, vs.faults);
		assert_true(vs.fault_p50_us > 0 && vs.fault_p50_us <= vs.fault_p99_us);
	}
	assert_int_equal(mem_swap_vm_pages(f->gm), 0);
	assert_int_equal(pagestate_get(f->ps, f->first), PS_ANON);
	assert_null(fatal_of(f));
}

struct writer {
	struct gm *gm;
	bool stop;	/* atomic */
	uint64_t writes;
};

/* Writes a counter into page 0 over and over while swap-outs run: the last one must stick. */
static void *writer(void *arg)
{
	struct writer *w = arg;
	uint64_t v = 0;

	while (!__atomic_load_n(&w->stop, __ATOMIC_RELAXED)) {
		v++;
		assert_int_equal(mem_write(w->gm, BASE, &v, sizeof(v)), 0);
	}
	w->writes = v;
	return NULL;
}

static void test_swap_out_keeps_a_racing_write(void **state)
{
	struct fix *f = *state;
	struct writer w = { f->gm, false, 0 };
	uint64_t got = 0;
	pthread_t th;

	assert_int_equal(pthread_create(&th, NULL, writer, &w), 0);
	for (unsigned int round = 0; round < 200; round++)
		assert_true(swap_out(f, f->first, 1) >= 0);
	__atomic_store_n(&w.stop, true, __ATOMIC_RELAXED);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(mem_read(f->gm, BASE, &got, sizeof(got)), 0);
	assert_int_equal(got, w.writes);
	assert_null(fatal_of(f));
}

/* Given to the balloon while swapped: the slot is freed unread, the page reads zeros. */
static void test_swap_ballooned_page_loses_its_slot_unread(void **state)
{
	struct fix *f = *state;
	uint8_t page[PAGE], zero[PAGE] = { 0 };

	assert_int_equal(swap_out(f, f->first, 4), 4);
	assert_int_equal(mem_discard(f->gm, BASE, 2 * PAGE, PS_BALLOONED), 0);
	assert_int_equal(sstats(f).discarded, 2);
	assert_int_equal(sstats(f).used_bytes, 2 * PAGE);
	assert_int_equal(pagestate_get(f->ps, f->first), PS_BALLOONED);
	assert_int_equal(mem_read(f->gm, BASE, page, sizeof(page)), 0);
	assert_memory_equal(page, zero, sizeof(page));
	/* Pages 2 and 3 are read back on touch; the ballooned pages' slots never were. */
	assert_content(f, 2, byte_of(2));
	assert_content(f, 3, byte_of(3));
	assert_int_equal(sstats(f).swap_ins, 2);
	assert_int_equal(sstats(f).used_bytes, 0);
}

/* Zero pages are dropped, shared pages are dedup's: neither is written. */
static void test_swap_skips_shared_and_writes_no_zero_page(void **state)
{
	static struct mem_txn t;
	struct fix *f = *state;
	int store = memfd_create("test-store", MFD_CLOEXEC);
	uint8_t page[PAGE];

	assert_true(store >= 0);
	memset(page, byte_of(1), sizeof(page));
	assert_int_equal(pwrite(store, page, PAGE, 0), PAGE);
	assert_int_equal(mem_txn_claim(&t, f->gm, f->first + 1, 1, MEM_FROM(PS_ANON), 0), 1);
	mem_txn_set(&t, 0, MEM_FRAME, 0);
	assert_int_equal(mem_txn_end(&t, store), 1);
	/* Every page of the test area but the shared one and the 8 zero pages. */
	assert_int_equal(swap_out(f, f->first, 1000), N - 8 - 1);
	assert_int_equal(pagestate_get(f->ps, f->first + 1), PS_SHARED);
	assert_int_equal(pagestate_get(f->ps, f->first + 7), PS_ZERO);
	assert_int_equal(sstats(f).used_bytes, (N - 8 - 1) * PAGE);
	assert_content(f, 1, byte_of(1));
	close(store);
}

/*
 * With a compressed pool, pages that compress to half a page or less stay in
 * memory, compressed, and never reach the file; pages that do not compress
 * go to the file. Both read back right, and the pool gives its memory back
 * as it empties.
 */
static void test_swap_pool_keeps_compressible_pages(void **state)
{
	struct fix *f = *state;
	uint8_t page[PAGE];
	unsigned int written = 0;
	uint64_t x = 12345;

	assert_int_equal(mem_swap_set_pool(f->sw, 64 * PAGE), 0);
	/* Pages 0..3 made incompressible. */
	for (unsigned int i = 0; i < 4; i++) {
		for (unsigned int k = 0; k < PAGE; k++) {
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
			page[k] = (uint8_t)(x >> 56);
		}
		assert_int_equal(mem_write(f->gm, BASE + (uint64_t)i * PAGE, page, PAGE), 0);
	}
	for (unsigned int i = 0; i < N; i++)
		written += byte_of(i) != 0;
	assert_int_equal(swap_out(f, f->first, N), written);
	assert_int_equal(sstats(f).used_bytes, 4 * PAGE);
	assert_int_equal(sstats(f).pool_pages, written - 4);
	/* A page of one byte value compresses to ~20 bytes: sixteen to a chunk. */
	assert_int_equal(sstats(f).pool_used_bytes, (written - 4 + 15) / 16 * PAGE);
	for (unsigned int i = 4; i < N; i++)
		assert_false(mem_pm_resident(pm_of(f, f->first + i)));
	for (unsigned int i = 4; i < N; i++)
		assert_content(f, i, byte_of(i));
	{
		struct mem_slice sl;

		/* Touches of pages 0..3 in order read them back from the file. */
		assert_int_equal(mem_slice_get(f->gm, BASE, 4 * PAGE, &sl), 0);
		for (unsigned int i = 0; i < 4; i++)
			memcpy(page, sl.hva + i * PAGE, PAGE);
	}
	assert_int_equal(sstats(f).pool_pages, 0);
	assert_int_equal(sstats(f).pool_used_bytes, 0);
	assert_int_equal(sstats(f).used_bytes, 0);
	assert_int_equal(sstats(f).read_errors, 0);
}

/* A file of 16 pages takes 16: the rest stay resident, nothing lost, and it says full. */
static void test_swap_full_file_keeps_pages_resident(void **state)
{
	struct fix *f = *state;

	teardown(state);
	assert_int_equal(open_fix(f, 16 * PAGE), 0);
	assert_int_equal(swap_out(f, f->first, N), 16);
	assert_int_equal(swap_out(f, f->first, N), -ENOSPC);
	assert_true(sstats(f).full >= 1);
	for (unsigned int i = 0; i < N; i++)
		assert_content(f, i, byte_of(i));
	assert_int_equal(sstats(f).write_errors, 0);
}

/* A swap file on tmpfs is memory: refused with a reason. */
static void test_swap_refuses_tmpfs(void **state)
{
	struct mem_swap *sw;
	const char *why = NULL;

	(void)state;
	if (access("/dev/shm", W_OK))
		skip();
	assert_int_equal(mem_swap_open("/dev/shm", 1ULL << 20, false, &sw, &why), -EINVAL);
	assert_non_null(strstr(why, "tmpfs"));
}

/* The descriptor of the (unlinked) swap file this process opened in the build directory. */
static int swap_fd(void)
{
	char cwd[4096], link[64], target[4200];

	assert_non_null(getcwd(cwd, sizeof(cwd)));
	for (int fd = 3; fd < 1024; fd++) {
		ssize_t n;

		snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
		n = readlink(link, target, sizeof(target) - 1);
		if (n <= 0)
			continue;
		target[n] = 0;
		if (!strncmp(target, cwd, strlen(cwd)) && strstr(target, "(deleted)"))
			return fd;
	}
	return -1;
}

struct toucher {
	struct gm *gm;
	uint8_t byte;
};

/* A guest access (through the host mapping), on a thread of its own. */
static void *touch(void *arg)
{
	struct toucher *t = arg;
	struct mem_slice sl;

	if (mem_slice_get(t->gm, BASE, 1, &sl) == 0)
		t->byte = fake_guest_load8(sl.hva);
	return NULL;
}

/* A write to the file fails (EIO, a dead disk: here a descriptor it cannot write): nothing is lost. */
static void test_swap_write_error_keeps_pages_resident(void **state)
{
	struct fix *f = *state;
	int fd = swap_fd(), saved, bad;

	assert_true(fd >= 0);
	saved = dup(fd);
	bad = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(saved >= 0 && bad >= 0);
	assert_int_equal(dup2(bad, fd), fd);
	assert_true(swap_out(f, f->first, N) < 0);
	assert_int_equal(dup2(saved, fd), fd);
	assert_true(sstats(f).write_errors >= 1);
	assert_int_equal(sstats(f).used_bytes, 0);
	assert_int_equal(mem_swap_vm_pages(f->gm), 0);
	for (unsigned int i = 0; i < N; i++) {
		assert_int_not_equal(pagestate_get(f->ps, f->first + i), PS_SWAPPED);
		assert_content(f, i, byte_of(i));
	}
	/* The file works again: so does swapping. */
	assert_true(swap_out(f, f->first, N) > 0);
	close(saved);
	close(bad);
}

/*
 * The file cannot be read under a swapped page: the VM is stopped through
 * the fatal hook with the reason before the access is answered (then with
 * zeros, so that no thread waits forever on a VM that will not run again).
 */
static void test_swap_read_error_stops_the_vm(void **state)
{
	struct fix *f = *state;
	struct toucher t = { f->gm, 0xee };
	int fd = swap_fd(), saved, bad;
	pthread_t th;

	assert_true(fd >= 0);
	assert_int_equal(swap_out(f, f->first, 1), 1);
	saved = dup(fd);
	bad = open("/dev/null", O_WRONLY | O_CLOEXEC);
	assert_true(saved >= 0 && bad >= 0);
	assert_int_equal(dup2(bad, fd), fd);
	/* A VMM read of it fails, for that read only: nothing is decided on it. */
	assert_true(mem_read(f->gm, BASE, &t.byte, 1) < 0);
	assert_int_equal(pagestate_get(f->ps, f->first), PS_SWAPPED);
	assert_null(fatal_of(f));
	assert_int_equal(pthread_create(&th, NULL, touch, &t), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_non_null(fatal_of(f));
	assert_non_null(strstr(fatal_of(f), "cannot be read back from swap"));
	/* The VMM's read and the touch's. */
	assert_int_equal(sstats(f).read_errors, 2);
	assert_int_equal(t.byte, 0);
	assert_int_equal(sstats(f).used_bytes, 0);
	assert_int_equal(dup2(saved, fd), fd);
	close(saved);
	close(bad);
}

/* Arm a fault injection spec (core/fault.h) for one test. */
static void arm(const char *spec)
{
	char why[192];

	assert_int_equal(fault_configure(spec, why, sizeof(why)), 0);
}

/*
 * A swapped page read back whose copy into place fails for want of memory
 * is not a page that cannot be read: it stays swapped, the access faults
 * again and gets it, and the VM is not stopped (it used to be, its slot
 * freed). Needs fault injection (-Dfault_injection=true).
 */
static void test_swap_failed_copy_is_retried(void **state)
{
	struct fix *f = *state;
	struct toucher t = { f->gm, 0xee };
	struct mem_txn_stats t0, t1;
	pthread_t th;

	if (!fault_enabled()) {
		skip();
		return;
	}
	assert_int_equal(swap_out(f, f->first, 1), 1);
	mem_txn_stats(&t0);
	arm("uffd.copy:ENOMEM*3");
	assert_int_equal(pthread_create(&th, NULL, touch, &t), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	fault_clear();
	mem_txn_stats(&t1);
	assert_null(f->fatal);
	assert_int_equal(t.byte, byte_of(0));
	assert_true(t1.fault_retries > t0.fault_retries);
	assert_int_equal(sstats(f).read_errors, 0);
	assert_int_equal(pagestate_get(f->ps, f->first), PS_ANON);
	assert_int_equal(sstats(f).used_bytes, 0);
}

/*
 * A chunk whose MISSING registration failed is not left saying it has the
 * mode: the swap-out that needed it keeps its pages, and the next one
 * registers the chunk before it drops any (it used to trust the mode and
 * drop pages a touch then read as zeros). Needs fault injection.
 */
static void test_swap_failed_registration_keeps_pages(void **state)
{
	struct fix *f = *state;

	if (!fault_enabled()) {
		skip();
		return;
	}
	/* The first run's commit fails; the runs after it register the chunk themselves. */
	arm("uffd.register*1");
	assert_true(swap_out(f, f->first, N) >= 0);
	fault_clear();
	assert_true(swap_out(f, f->first, N) >= 0);
	assert_true(mem_swap_vm_pages(f->gm) > 0);
	assert_true(mem_page_missing(f->gm, f->first));
	for (unsigned int i = 0; i < N; i++)
		assert_content(f, i, byte_of(i));
}

/* The access API reads a swapped page from its slot: the page stays swapped, nothing is read in. */
static void test_swap_vmm_read_leaves_page_swapped(void **state)
{
	struct fix *f = *state;
	uint8_t page[PAGE], want[PAGE];

	assert_int_equal(swap_out(f, f->first, 2), 2);
	memset(want, byte_of(1), sizeof(want));
	/* Across the page boundary too. */
	assert_int_equal(mem_read(f->gm, BASE + PAGE / 2, page, PAGE), 0);
	assert_memory_equal(page + PAGE / 2, want, PAGE / 2);
	memset(want, byte_of(0), sizeof(want));
	assert_memory_equal(page, want, PAGE / 2);
	assert_int_equal(pagestate_get(f->ps, f->first), PS_SWAPPED);
	assert_int_equal(pagestate_get(f->ps, f->first + 1), PS_SWAPPED);
	assert_false(mem_pm_resident(pm_of(f, f->first)));
	assert_int_equal(sstats(f).swap_ins, 0);
	/* And a touch still reads it back. */
	assert_content(f, 1, byte_of(1));
	assert_int_equal(sstats(f).swap_ins, 1);
	assert_null(fatal_of(f));
}

struct toucher_n {
	struct fix *f;
	unsigned int first, step;
	int bad;
};

static void *touch_pages(void *arg)
{
	struct toucher_n *t = arg;

	for (unsigned int i = t->first; i < N; i += t->step) {
		struct mem_slice sl;
		const uint8_t *p;

		if (mem_slice_get(t->f->gm, BASE + (uint64_t)i * PAGE, PAGE, &sl))
			return NULL;
		p = sl.hva;
		for (unsigned int k = 0; k < PAGE; k++)
			t->bad += p[k] != byte_of(i);
	}
	return NULL;
}

/*
 * Eight threads touch swapped pages at once: the service has several reads
 * in flight (it does not wait for one before taking the next fault), and
 * each access gets its own page back.
 */
static void test_swap_concurrent_touches(void **state)
{
	struct fix *f = *state;
	struct toucher_n t[8];
	pthread_t th[8];

	assert_true(swap_out(f, f->first, N) > 0);
	for (unsigned int i = 0; i < 8; i++) {
		t[i] = (struct toucher_n){ f, i, 8, 0 };
		assert_int_equal(pthread_create(&th[i], NULL, touch_pages, &t[i]), 0);
	}
	for (unsigned int i = 0; i < 8; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(t[i].bad, 0);
	}
	assert_int_equal(mem_swap_vm_pages(f->gm), 0);
	assert_int_equal(sstats(f).used_bytes, 0);
	assert_null(fatal_of(f));
}

/* The swap-out worker takes a VM down to a target and says so; the engine is named. */
static void test_swap_worker_reaches_target(void **state)
{
	struct fix *f = *state;
	struct mem_swap_progress p;
	uint64_t resident = mem_resident(f->gm);

	assert_true(resident >= N - N / 8);
	assert_int_equal(mem_swap_target(f->sw, f->gm, resident - 16), 0);
	assert_int_equal(mem_swap_wait(f->sw, f->gm, UINT64_MAX / 2, &p), 0);
	assert_false(p.active);
	assert_true(p.reached);
	assert_int_equal(p.error, 0);
	assert_true(p.swapped_pages >= 1 && p.swapped_pages <= 16);
	assert_true(p.resident_pages <= resident - 16);
	assert_true(mem_swap_vm_pages(f->gm) >= 1);
	/* Below what can go (zero pages stay as they are): it ends, not reached. */
	assert_int_equal(mem_swap_target(f->sw, f->gm, 0), 0);
	assert_int_equal(mem_swap_wait(f->sw, f->gm, UINT64_MAX / 2, &p), 0);
	assert_false(p.active);
	assert_int_equal(p.error, 0);
	for (unsigned int i = 0; i < N; i++)
		assert_content(f, i, byte_of(i));
	assert_string_equal(mem_swap_engine(f->sw),
			    f->io == MEM_SWAP_IO_THREADS ? "threads" : mem_swap_engine(f->sw));
	assert_true(!strcmp(mem_swap_engine(f->sw), "io_uring") ||
		    !strcmp(mem_swap_engine(f->sw), "threads"));
}

/* A VM's swap limit bounds what the worker takes; a limit of 0 keeps it out of swap. */
static void test_swap_limit_bounds_targets(void **state)
{
	struct fix *f = *state;
	struct mem_swap_progress p;

	assert_int_equal(mem_swap_limit(f->sw, f->gm), UINT64_MAX);
	assert_int_equal(mem_swap_set_limit(f->sw, f->gm, 0), 0);
	assert_int_equal(mem_swap_target(f->sw, f->gm, 0), 0);
	assert_int_equal(mem_swap_wait(f->sw, f->gm, UINT64_MAX / 2, &p), 0);
	assert_false(p.reached);
	assert_int_equal(p.swapped_pages, 0);
	assert_int_equal(mem_swap_vm_pages(f->gm), 0);
	assert_int_equal(mem_swap_set_limit(f->sw, f->gm, 8), 0);
	assert_int_equal(mem_swap_limit(f->sw, f->gm), 8);
	assert_int_equal(mem_swap_target(f->sw, f->gm, 0), 0);
	assert_int_equal(mem_swap_wait(f->sw, f->gm, UINT64_MAX / 2, &p), 0);
	assert_false(p.active);
	assert_true(mem_swap_vm_pages(f->gm) >= 1 && mem_swap_vm_pages(f->gm) <= 8);
	for (unsigned int i = 0; i < N; i++)
		assert_content(f, i, byte_of(i));
	assert_null(fatal_of(f));
}

/*
 * Where the kernel refuses io_uring (kernel.io_uring_disabled, a seccomp
 * filter: here a filter on the thread that opens the store, inherited by
 * the threads it starts), the store runs on threads and says so, and pages
 * go out and come back; an explicit io_uring is refused with the kernel's
 * error. Returns 0, or the step that failed.
 */
static void *refused_io_uring(void *arg)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof(filter) / sizeof(filter[0]), filter };
	struct fix *f = arg;
	struct mem_swap *sw;
	const char *why;

	f->io = MEM_SWAP_IO_AUTO;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
		return "seccomp";
	if (open_fix(f, 1ULL << 20))
		return "open";
	if (strcmp(mem_swap_engine(f->sw), "threads"))
		return "engine";
	if (swap_out(f, f->first, N) <= 0 || mem_swap_vm_pages(f->gm) == 0)
		return "swap-out";
	for (unsigned int i = 0; i < N; i++) {
		struct mem_slice sl;

		if (mem_slice_get(f->gm, BASE + (uint64_t)i * PAGE, PAGE, &sl) ||
		    fake_guest_load8((uint8_t *)sl.hva + PAGE - 1) != byte_of(i))
			return "content";
	}
	if (mem_swap_vm_pages(f->gm) != 0)
		return "swap-in";
	if (mem_swap_open(".", 1ULL << 20, false, &sw, &why))
		return "second open";
	if (mem_swap_set_io(sw, MEM_SWAP_IO_URING) != -EPERM)
		return "explicit io_uring";
	mem_swap_close(sw);
	return NULL;
}

static void test_swap_falls_back_to_threads(void **state)
{
	struct fix f;
	pthread_t th;
	void *failed;

	(void)state;
	memset(&f, 0, sizeof(f));
	assert_int_equal(pthread_create(&th, NULL, refused_io_uring, &f), 0);
	assert_int_equal(pthread_join(th, &failed), 0);
	assert_null(failed);
	teardown(&(void *){ &f });
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_swap_out_and_back_on_touch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_swap_out_keeps_a_racing_write, setup, teardown),
		cmocka_unit_test_setup_teardown(test_swap_ballooned_page_loses_its_slot_unread, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_swap_skips_shared_and_writes_no_zero_page, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_swap_pool_keeps_compressible_pages, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_swap_full_file_keeps_pages_resident, setup,
						teardown),
		cmocka_unit_test(test_swap_refuses_tmpfs),
		cmocka_unit_test_setup_teardown(test_swap_write_error_keeps_pages_resident, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_swap_read_error_stops_the_vm, setup, teardown),
		cmocka_unit_test_setup_teardown(test_swap_failed_copy_is_retried, setup, teardown),
		cmocka_unit_test_setup_teardown(test_swap_failed_registration_keeps_pages, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_swap_vmm_read_leaves_page_swapped, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_swap_concurrent_touches, setup, teardown),
		cmocka_unit_test_setup_teardown(test_swap_worker_reaches_target, setup, teardown),
		cmocka_unit_test_setup_teardown(test_swap_limit_bounds_targets, setup, teardown),
		/* The same on the thread engine. */
		cmocka_unit_test_setup_teardown(test_swap_out_and_back_on_touch, setup_threads,
						teardown),
		cmocka_unit_test_setup_teardown(test_swap_concurrent_touches, setup_threads,
						teardown),
		cmocka_unit_test_setup_teardown(test_swap_worker_reaches_target, setup_threads,
						teardown),
		cmocka_unit_test_setup_teardown(test_swap_write_error_keeps_pages_resident,
						setup_threads, teardown),
		cmocka_unit_test_setup_teardown(test_swap_read_error_stops_the_vm, setup_threads,
						teardown),
		cmocka_unit_test(test_swap_falls_back_to_threads),
	};

	return cmocka_run_group_tests_name("host swap store", tests, NULL, NULL);
}
