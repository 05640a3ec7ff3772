/* SPDX-License-Identifier: MIT */
/*
 * The frame store: one memfd per host holding every shared content once.
 * Guests map its pages MAP_PRIVATE (a MEM_FRAME commit, mem/txn.h), so the kernel
 * copies on their writes and the frames themselves never change.
 *
 * Every run of shared guest pages is a host mapping (VMA), and consecutive
 * guest pages merge into one VMA only when they map consecutive store pages.
 * So slots are handed out in extents of DEDUP_EXT_PAGES that mirror windows
 * of guest pages: the scanner asks for the slot next to a neighbour's frame
 * (dedup_store_take), or for the same position of a fresh extent
 * (dedup_store_take_fresh), so that identical guests, which lay out their
 * identical pages alike, map identical runs. Unused slots are holes in the
 * memfd and cost no memory; a dying frame's page is punched out
 * (FALLOC_FL_PUNCH_HOLE) and an extent whose slots are all free is reused.
 *
 * Scanner only (engine lock).
 */
#define LOG_TAG "dedup"
#include "dedup/dedup_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/log.h"

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

#define GROW_EXT 64		/* extents added to the memfd size at a time (128 MiB) */
#define MAP_BYTES DEDUP_STORE_VIEW_BYTES /* the read-only view: 1 TiB of store (TSan: less) */
#define MAX_EXT (UINT32_MAX / DEDUP_EXT_PAGES)

int dedup_store_init(struct dedup_store *st)
{
	memset(st, 0, sizeof(*st));
	/*
	 * Executable: under the thread accelerator guests run their code from
	 * store frames once identical code pages are merged, and a system with
	 * vm.memfd_noexec set would otherwise seal the store against it. Kernels
	 * before 6.3 know no MFD_EXEC (EINVAL) and make every memfd executable.
	 */
	st->fd = memfd_create("kvmem-dedup-store", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
	if (st->fd < 0 && errno == EINVAL)
		st->fd = memfd_create("kvmem-dedup-store", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (st->fd < 0)
		return -errno;
	/*
	 * A read-only view for byte compares (no copy per compare). Beyond the
	 * file size it is never touched: only slots in use are read.
	 */
	st->map = mmap(NULL, MAP_BYTES, PROT_READ, MAP_SHARED | MAP_NORESERVE, st->fd, 0);
	if (st->map == MAP_FAILED) {
		int ret = -errno;

		st->map = NULL;
		close(st->fd);
		st->fd = -1;
		return ret;
	}
	return 0;
}

void dedup_store_fini(struct dedup_store *st)
{
	if (st->map)
		munmap((void *)st->map, MAP_BYTES);
	st->map = NULL;
	if (st->fd >= 0)
		close(st->fd);
	st->fd = -1;
	kv_free(st->used);
	kv_free(st->ext_used);
	kv_free(st->free_ext);
	kv_free(st->on_free);
	kv_free(st->by_slot);
	st->used = NULL;
	st->ext_used = NULL;
	st->free_ext = NULL;
	st->on_free = NULL;
	st->by_slot = NULL;
}

static bool slot_used(const struct dedup_store *st, uint64_t slot)
{
	return st->used[slot / 64] & (1ULL << (slot % 64));
}

/* Slot in use (a frame, or a window's zero page) or free again. */
static void mark(struct dedup_store *st, uint64_t slot, bool on)
{
	uint32_t ext = (uint32_t)(slot / DEDUP_EXT_PAGES);

	if (on) {
		st->used[slot / 64] |= 1ULL << (slot % 64);
		st->ext_used[ext]++;
	} else {
		st->used[slot / 64] &= ~(1ULL << (slot % 64));
		st->ext_used[ext]--;
	}
}

bool dedup_store_take(struct dedup_store *st, uint64_t slot)
{
	if (slot >= (uint64_t)st->nr_ext * DEDUP_EXT_PAGES || slot_used(st, slot))
		return false;
	/* An empty extent may sit on the free stack: popping skips it once used. */
	mark(st, slot, true);
	st->frames++;
	return true;
}

/* One more extent: arrays, and the memfd size in steps of GROW_EXT. */
static int add_extent(struct dedup_store *st, uint32_t *ext)
{
	uint32_t n = st->nr_ext + 1;
	uint64_t slots = (uint64_t)n * DEDUP_EXT_PAGES;
	void *p;

	if (n > MAX_EXT || (uint64_t)n * DEDUP_EXT_PAGES * MEM_PAGE_SIZE > MAP_BYTES)
		return -ENOSPC;
	if (n > st->size_ext) {
		uint32_t size = st->size_ext + GROW_EXT;

		if (ftruncate(st->fd, (off_t)size * DEDUP_EXT_PAGES * (off_t)MEM_PAGE_SIZE) < 0)
			return -errno;
		st->size_ext = size;
	}
	p = kv_realloc(st->used, slots / 64 * sizeof(uint64_t));
	if (!p)
		return -ENOMEM;
	st->used = p;
	memset(st->used + (slots - DEDUP_EXT_PAGES) / 64, 0, DEDUP_EXT_PAGES / 8);
	p = kv_realloc(st->ext_used, n * sizeof(uint16_t));
	if (!p)
		return -ENOMEM;
	st->ext_used = p;
	st->ext_used[n - 1] = 0;
	p = kv_realloc(st->by_slot, slots * sizeof(*st->by_slot));
	if (!p)
		return -ENOMEM;
	st->by_slot = p;
	memset(st->by_slot + slots - DEDUP_EXT_PAGES, 0, DEDUP_EXT_PAGES * sizeof(*st->by_slot));
	p = kv_realloc(st->free_ext, n * sizeof(uint32_t));
	if (!p)
		return -ENOMEM;
	st->free_ext = p;
	p = kv_realloc(st->on_free, n);
	if (!p)
		return -ENOMEM;
	st->on_free = p;
	st->on_free[n - 1] = 0;
	st->nr_ext = n;
	*ext = n - 1;
	return 0;
}

int dedup_store_new_extent(struct dedup_store *st, uint32_t *ext)
{
	while (st->nr_free_ext) {
		*ext = st->free_ext[--st->nr_free_ext];
		st->on_free[*ext] = 0;
		if (st->ext_used[*ext] == 0)
			return 0;
	}
	return add_extent(st, ext);
}

bool dedup_store_reserve_zero(struct dedup_store *st, uint64_t slot)
{
	if (slot >= (uint64_t)st->nr_ext * DEDUP_EXT_PAGES)
		return false;
	if (slot_used(st, slot))
		return st->by_slot[slot] == DEDUP_ZERO_RESERVED;
	mark(st, slot, true);
	st->by_slot[slot] = DEDUP_ZERO_RESERVED;
	return true;
}

int dedup_store_take_fresh(struct dedup_store *st, uint32_t pos, uint32_t *slot)
{
	uint32_t ext = 0;
	int ret;

	if (pos >= DEDUP_EXT_PAGES)
		return -EINVAL;
	/* Stale entries of the free stack (taken through a neighbour since) are skipped. */
	ret = dedup_store_new_extent(st, &ext);
	if (ret)
		return ret;
	*slot = ext * DEDUP_EXT_PAGES + pos;
	mark(st, *slot, true);
	st->frames++;
	return 0;
}

void dedup_store_release(struct dedup_store *st, uint32_t slot)
{
	uint32_t ext = slot / DEDUP_EXT_PAGES;

	st->by_slot[slot] = NULL;
	st->frames--;
	/*
	 * A free slot is a hole: a window may reserve it for a zero page, and
	 * where the kernel's zero page is not used there, a guest touch must
	 * find a hole at that slot (a MISSING fault, mem_txn_end_window), not old
	 * content. A slot that keeps its old content stays taken, as no frame,
	 * for the store's life.
	 */
	if (fallocate(st->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)dedup_store_off(slot), (off_t)MEM_PAGE_SIZE) < 0) {
		st->punch_errors++;
		log_warn_ratelimited("punching frame %u out of the store: %m", slot);
		return;
	}
	mark(st, slot, false);
	if (st->ext_used[ext] == 0 && !st->on_free[ext]) {
		st->on_free[ext] = 1;
		st->free_ext[st->nr_free_ext++] = ext;
	}
}

uint64_t dedup_store_bytes(const struct dedup_store *st)
{
	struct stat sb;

	if (st->fd < 0 || fstat(st->fd, &sb) < 0)
		return 0;
	return (uint64_t)sb.st_blocks * 512;
}

uint64_t dedup_store_meta_bytes(const struct dedup_store *st)
{
	uint64_t slots = (uint64_t)st->nr_ext * DEDUP_EXT_PAGES;

	/* Tables, and the page tables of the read-only view (one page per extent). */
	return slots / 8 + slots * sizeof(*st->by_slot) +
	       (uint64_t)st->nr_ext * (sizeof(uint16_t) + sizeof(uint32_t) + 1 + MEM_PAGE_SIZE);
}
