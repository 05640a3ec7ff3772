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
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

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
	const char *fatal;	/* why, once given */
};

static void on_fatal(void *arg, const char *why)
{
	struct fix *f = arg;

	snprintf(f->why, sizeof(f->why), "%s", why);
	__atomic_store_n(&f->fatal, f->why, __ATOMIC_RELEASE);
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

	memset(f, 0, sizeof(*f));
	if (mem_create_anon(RAM, &f->gm) || mem_enable_uffd(f->gm) ||
	    uffd_service_create(&f->svc) || uffd_service_add(f->svc, f->gm))
		return -1;
	f->ps = mem_pagestate(f->gm);
	f->first = (uint64_t)mem_page_index(f->gm, BASE);
	/* The build directory: a disk filesystem (tmpfs is refused). */
	if (mem_swap_open(".", swap_bytes, false, &f->sw, &why))
		return -1;
	if (mem_swap_attach(f->sw, f->gm, on_fatal, f))
		return -1;
	for (unsigned int i = 0; i < N; i++) {
		memset(page, byte_of(i), sizeof(page));
		if (mem_write(f->gm, BASE + (uint64_t)i * PAGE, page, sizeof(page)))
			return -1;
	}
	return 0;
}

static int setup(void **state)
{
	static struct fix f;

	*state = &f;
	return open_fix(&f, 1ULL << 20);
}

static int teardown(void **state)
{
	struct fix *f = *state;

	uffd_service_remove(f->svc, f->gm);
	uffd_service_destroy(f->svc);
	mem_swap_detach(f->sw, f->gm);
	mem_swap_close(f->sw);
	mem_destroy(f->gm);
	return 0;
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

static void assert_content(struct fix *f, unsigned int i, int byte)
{
	uint8_t page[PAGE], want[PAGE];

	memset(want, byte, sizeof(want));
	assert_int_equal(mem_read(f->gm, BASE + (uint64_t)i * PAGE, page, sizeof(page)), 0);
	assert_memory_equal(page, want, sizeof(page));
}

static void test_swap_out_and_back_on_touch(void **state)
{
	struct fix *f = *state;
	unsigned int written = 0;

	for (unsigned int i = 0; i < N; i++)
		written += byte_of(i) != 0;
	assert_int_equal(mem_swap_out(f->sw, f->gm, f->first, N), written);
	for (unsigned int i = 0; i < N; i++) {
		/* Gone from memory: written out, or (zero pages) dropped as zero. */
		assert_false(mem_pm_resident(pm_of(f, f->first + i)));
		assert_int_equal(pagestate_get(f->ps, f->first + i),
				 byte_of(i) ? PS_SWAPPED : PS_ZERO);
	}
	assert_int_equal(mem_swap_vm_pages(f->gm), written);
	assert_int_equal(sstats(f).used_bytes, written * PAGE);
	/*
	 * A touch reads the page back with the swapped pages after it whose slots
	 * follow (pages 0-6; page 7 was a zero page, dropped, not written).
	 */
	assert_content(f, 0, byte_of(0));
	assert_int_equal(sstats(f).swap_ins, 7);
	assert_true(mem_pm_resident(pm_of(f, f->first + 6)));
	assert_false(mem_pm_resident(pm_of(f, f->first + 8)));
	/* Read back on touch, every byte right, each slot given back. */
	for (unsigned int i = 0; i < N; i++)
		assert_content(f, i, byte_of(i));
	assert_int_equal(sstats(f).swap_ins, written);
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
	assert_null(f->fatal);
}

struct writer {
	struct gm *gm;
	volatile int stop;
	uint64_t writes;
};

/* Writes a counter into page 0 over and over while swap-outs run: the last one must stick. */
static void *writer(void *arg)
{
	struct writer *w = arg;
	uint64_t v = 0;

	while (!w->stop) {
		v++;
		assert_int_equal(mem_write(w->gm, BASE, &v, sizeof(v)), 0);
	}
	w->writes = v;
	return NULL;
}

static void test_swap_out_keeps_a_racing_write(void **state)
{
	struct fix *f = *state;
	struct writer w = { f->gm, 0, 0 };
	uint64_t got = 0;
	pthread_t th;

	assert_int_equal(pthread_create(&th, NULL, writer, &w), 0);
	for (unsigned int round = 0; round < 200; round++)
		assert_true(mem_swap_out(f->sw, f->gm, f->first, 1) >= 0);
	w.stop = 1;
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(mem_read(f->gm, BASE, &got, sizeof(got)), 0);
	assert_int_equal(got, w.writes);
	assert_null(f->fatal);
}

/* Given to the balloon while swapped: the slot is freed unread, the page reads zeros. */
static void test_swap_ballooned_page_loses_its_slot_unread(void **state)
{
	struct fix *f = *state;
	uint8_t page[PAGE], zero[PAGE] = { 0 };

	assert_int_equal(mem_swap_out(f->sw, f->gm, f->first, 4), 4);
	assert_int_equal(mem_discard(f->gm, BASE, 2 * PAGE, PS_BALLOONED), 0);
	assert_int_equal(sstats(f).discarded, 2);
	assert_int_equal(sstats(f).used_bytes, 2 * PAGE);
	assert_int_equal(pagestate_get(f->ps, f->first), PS_BALLOONED);
	assert_int_equal(mem_read(f->gm, BASE, page, sizeof(page)), 0);
	assert_memory_equal(page, zero, sizeof(page));
	/* Page 2 reads back with page 3, its neighbour in the next slot (read-ahead). */
	assert_content(f, 2, byte_of(2));
	assert_int_equal(sstats(f).swap_ins, 2);
	assert_true(mem_pm_resident(pm_of(f, f->first + 3)));
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
	assert_int_equal(mem_swap_out(f->sw, f->gm, f->first, 1000), N - 8 - 1);
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
	assert_int_equal(mem_swap_out(f->sw, f->gm, f->first, N), written);
	assert_int_equal(sstats(f).used_bytes, 4 * PAGE);
	assert_int_equal(sstats(f).pool_pages, written - 4);
	/* A page of one byte value compresses to ~20 bytes: sixteen to a chunk. */
	assert_int_equal(sstats(f).pool_used_bytes, (written - 4 + 15) / 16 * PAGE);
	for (unsigned int i = 4; i < N; i++)
		assert_false(mem_pm_resident(pm_of(f, f->first + i)));
	for (unsigned int i = 4; i < N; i++)
		assert_content(f, i, byte_of(i));
	assert_int_equal(mem_read(f->gm, BASE, page, PAGE), 0);
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
	assert_int_equal(mem_swap_out(f->sw, f->gm, f->first, N), 16);
	assert_int_equal(mem_swap_out(f->sw, f->gm, f->first, N), -ENOSPC);
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

static void *touch(void *arg)
{
	struct toucher *t = arg;

	assert_int_equal(mem_read(t->gm, BASE, &t->byte, 1), 0);
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
	assert_true(mem_swap_out(f->sw, f->gm, f->first, N) < 0);
	assert_int_equal(dup2(saved, fd), fd);
	assert_true(sstats(f).write_errors >= 1);
	assert_int_equal(sstats(f).used_bytes, 0);
	assert_int_equal(mem_swap_vm_pages(f->gm), 0);
	for (unsigned int i = 0; i < N; i++) {
		assert_int_not_equal(pagestate_get(f->ps, f->first + i), PS_SWAPPED);
		assert_content(f, i, byte_of(i));
	}
	/* The file works again: so does swapping. */
	assert_true(mem_swap_out(f->sw, f->gm, f->first, N) > 0);
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
	assert_int_equal(mem_swap_out(f->sw, f->gm, f->first, 1), 1);
	saved = dup(fd);
	bad = open("/dev/null", O_WRONLY | O_CLOEXEC);
	assert_true(saved >= 0 && bad >= 0);
	assert_int_equal(dup2(bad, fd), fd);
	assert_int_equal(pthread_create(&th, NULL, touch, &t), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_non_null(f->fatal);
	assert_non_null(strstr(f->fatal, "cannot be read back from swap"));
	assert_int_equal(sstats(f).read_errors, 1);
	assert_int_equal(t.byte, 0);
	assert_int_equal(sstats(f).used_bytes, 0);
	assert_int_equal(dup2(saved, fd), fd);
	close(saved);
	close(bad);
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
	};

	return cmocka_run_group_tests_name("host swap store", tests, NULL, NULL);
}
