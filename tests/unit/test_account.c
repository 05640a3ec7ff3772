/* SPDX-License-Identifier: MIT */
/*
 * The memory ledger on real anonymous guest memory: every page in exactly
 * one place, resident plus the savings adding up to what is configured per
 * VM and per host, shared frames split among their VMs by the stated rule
 * (1/m of a frame's page to each of the m VMs mapping it, further pages of
 * one VM on one frame saved inside it), the host counting each frame once,
 * and a page a mechanism dropped that the guest wrote since counted (and
 * marked) as the VM's own again. Frames are named by a hook standing for
 * the dedup store, as the engine's is.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "mem/account.h"
#include "mem/gm.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/pagestate.h"

#define RAM (4ULL << 20)
#define NR_VMS 3
#define PAGE MEM_PAGE_SIZE
#define K1 100	/* a frame of VM 0 (three pages) and VM 1 (one) */
#define K2 200	/* a frame of all three VMs, one page each */

static struct gm *gms[NR_VMS];

/* Which frame each shared page maps: (VM, page) -> key. */
static const struct {
	unsigned int vm;
	uint64_t idx, key;
} frames[] = {
	{ 0, 20, K1 }, { 0, 21, K1 }, { 0, 22, K1 }, { 1, 20, K1 },
	{ 0, 23, K2 }, { 1, 21, K2 }, { 2, 20, K2 },
};

static int keys_of(void *arg, struct gm *gm, const uint64_t *idx, size_t n, uint64_t *keys)
{
	(void)arg;
	for (size_t i = 0; i < n; i++) {
		keys[i] = UINT64_MAX;
		for (size_t f = 0; f < sizeof(frames) / sizeof(frames[0]); f++)
			if (gms[frames[f].vm] == gm && frames[f].idx == idx[i])
				keys[i] = frames[f].key;
	}
	return 0;
}

static void fill(struct gm *gm, uint64_t idx, int byte)
{
	uint8_t page[PAGE];

	memset(page, byte, sizeof(page));
	assert_int_equal(mem_write(gm, mem_index_gpa(gm, idx), page, sizeof(page)), 0);
}

static void swapped(struct gm *gm, uint64_t idx, uint64_t slot)
{
	pagestate_set(gm->ps, idx, PS_SWAPPED);
	gm->swap_slot[idx] = slot;
}

static int setup(void **state)
{
	(void)state;
	for (unsigned int v = 0; v < NR_VMS; v++)
		if (mem_create_anon(RAM, &gms[v]))
			return -1;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	for (unsigned int v = 0; v < NR_VMS; v++)
		mem_destroy(gms[v]);
	return 0;
}

static uint64_t sum(const struct mem_usage *u)
{
	uint64_t s = u->resident_bytes;

	for (int i = 0; i < MEM_NR_SAVED; i++)
		s += u->saved_bytes[i];
	return s;
}

static void test_every_page_in_one_place(void **state)
{
	struct mem_usage vm[NR_VMS], host;
	struct mem_ledger *l;
	uint64_t nr = RAM / PAGE;

	(void)state;
	assert_int_equal(mem_ledger_create(&l), 0);
	mem_ledger_set_frames(l, keys_of, NULL);
	for (unsigned int v = 0; v < NR_VMS; v++)
		assert_int_equal(mem_ledger_add(l, gms[v]), 0);

	/* VM 0: ten pages of its own; one each dropped as zero, ballooned, reported. */
	for (uint64_t i = 0; i < 10; i++)
		fill(gms[0], i, (int)i + 1);
	pagestate_set(gms[0]->ps, 10, PS_ZERO);
	pagestate_set(gms[0]->ps, 11, PS_BALLOONED);
	pagestate_set(gms[0]->ps, 12, PS_REPORTED);
	/* A page dropped as zero and written since: its own again. */
	fill(gms[0], 13, 0x5a);
	pagestate_set(gms[0]->ps, 13, PS_ZERO);
	/* VM 1: pages in the swap file, the compressed pool and its snapshot file. */
	swapped(gms[1], 30, 7);
	swapped(gms[1], 31, (1ULL << 63) | 1000);	/* a pool entry of 1000 bytes: 1 KiB */
	swapped(gms[1], 32, MEM_SLOT_IMAGE | 32);
	/* The shared pages: holes of pages the state says are on frames. */
	for (size_t f = 0; f < sizeof(frames) / sizeof(frames[0]); f++)
		pagestate_set(gms[frames[f].vm]->ps, frames[f].idx, PS_SHARED);

	assert_int_equal(mem_ledger_read(l, 0, gms, NR_VMS, vm, &host), 0);
	for (unsigned int v = 0; v < NR_VMS; v++) {
		assert_int_equal(vm[v].configured_bytes, RAM);
		assert_int_equal(sum(&vm[v]), RAM);
		assert_int_equal(vm[v].resident_bytes, vm[v].private_bytes + vm[v].shared_bytes +
						       vm[v].compressed_bytes);
	}
	assert_int_equal(host.configured_bytes, NR_VMS * RAM);
	assert_int_equal(sum(&host), NR_VMS * RAM);

	/* VM 0: 11 pages its own, on K1 (3 pages) and K2 (1): 1/2 + 1/3 of a page charged. */
	assert_int_equal(vm[0].private_bytes, 11 * PAGE);
	assert_int_equal(pagestate_get(gms[0]->ps, 13), PS_ANON);
	assert_int_equal(vm[0].saved_bytes[MEM_SAVED_ZERO], PAGE);
	assert_int_equal(vm[0].saved_bytes[MEM_SAVED_BALLOON], PAGE);
	assert_int_equal(vm[0].saved_bytes[MEM_SAVED_REPORTED], PAGE);
	assert_int_equal(vm[0].frames, 2);
	assert_int_equal(vm[0].shared_bytes, PAGE / 2 + PAGE / 3);	/* 3413.3 rounded */
	assert_int_equal(vm[0].saved_bytes[MEM_SAVED_SHARED_WITHIN], 2 * PAGE);
	assert_int_equal(vm[0].saved_bytes[MEM_SAVED_SHARED_ACROSS], 2 * PAGE - (PAGE / 2 + PAGE / 3));
	assert_int_equal(vm[0].saved_bytes[MEM_SAVED_UNTOUCHED], (nr - 11 - 3 - 4) * PAGE);

	/* VM 1: a page on K1 and one on K2; swapped, pooled and not restored pages. */
	assert_int_equal(vm[1].private_bytes, 0);
	assert_int_equal(vm[1].shared_bytes, PAGE / 2 + PAGE / 3);
	assert_int_equal(vm[1].saved_bytes[MEM_SAVED_SHARED_WITHIN], 0);
	assert_int_equal(vm[1].saved_bytes[MEM_SAVED_SWAPPED], PAGE);
	assert_int_equal(vm[1].compressed_bytes, 1024);
	assert_int_equal(vm[1].saved_bytes[MEM_SAVED_COMPRESSED], PAGE - 1024);
	assert_int_equal(vm[1].saved_bytes[MEM_SAVED_NOT_RESTORED], PAGE);

	/* VM 2: a third of K2. */
	assert_int_equal(vm[2].shared_bytes, PAGE / 3);
	assert_int_equal(vm[2].saved_bytes[MEM_SAVED_SHARED_ACROSS], PAGE - PAGE / 3);

	/* The host: each frame once; K1 saves 2 pages inside VM 0 and 1 across, K2 2 across. */
	assert_int_equal(host.frames, 2);
	assert_int_equal(host.shared_bytes, 2 * PAGE);
	assert_int_equal(host.private_bytes, 11 * PAGE);
	assert_int_equal(host.compressed_bytes, 1024);
	assert_int_equal(host.saved_bytes[MEM_SAVED_SHARED_WITHIN], 2 * PAGE);
	assert_int_equal(host.saved_bytes[MEM_SAVED_SHARED_ACROSS], 3 * PAGE);

	/* A VM leaves: K2 is now split between two, K1 stays VM 0's with VM 1. */
	mem_ledger_remove(l, gms[2]);
	assert_int_equal(mem_ledger_read(l, 0, gms, NR_VMS, vm, &host), 0);
	assert_int_equal(vm[2].configured_bytes, 0);
	assert_int_equal(vm[0].shared_bytes, PAGE);
	assert_int_equal(host.configured_bytes, 2 * RAM);
	assert_int_equal(sum(&host), 2 * RAM);
	assert_int_equal(host.saved_bytes[MEM_SAVED_SHARED_ACROSS], 2 * PAGE);

	/* Without names for the store's frames, its pages count as the VMs' own. */
	mem_ledger_set_frames(l, NULL, NULL);
	assert_int_equal(mem_ledger_read(l, 0, gms, 2, vm, &host), 0);
	assert_int_equal(host.frames, 0);
	assert_int_equal(vm[0].private_bytes, (11 + 4) * PAGE);
	assert_int_equal(sum(&host), 2 * RAM);
	mem_ledger_destroy(l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_every_page_in_one_place, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
