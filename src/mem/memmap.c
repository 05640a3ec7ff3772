/* SPDX-License-Identifier: MIT */
/*
 * Guest RAM reservation. RAM is host virtual memory that is mapped
 * MAP_NORESERVE so an overcommitted host only pays for what guests touch; it
 * is never malloc'd.
 */
#define LOG_TAG "memmap"
#include "mem/memmap.h"
#include "mem/pagemap.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/layout.h"
#include "core/log.h"
#include <string.h>
#include "mem/lazy.h"
#include "mem/mem_internal.h"
#include "mem/pagestate.h"

/*
 * Reservations of the VMs of this process, so placement can step over them
 * without asking the kernel (and so a freed slot is found again: a VM's base
 * must be predictable, since under the thread accelerator its guest's stacks
 * and data hold host addresses and it can only resume at the same base).
 * Sorted by address, so one walk finds the first gap. The smallest
 * reservation is a 4 GiB span and two guard gaps: the arena runs out before
 * this table does, so the number of VMs is limited by address space alone.
 */
#define MAX_RESERVATIONS (MEM_ARENA_BYTES / (LAYOUT_HIGH_RAM_BASE + 2 * MEM_GUARD) + 1)

static struct {
	pthread_mutex_t lock;
	unsigned int nr;
	/*
	 * away: unmapped, but the VM lives on at this address elsewhere (it
	 * moved, or went into a file): no new VM goes there, the VM itself may
	 * come back (mem_keep_place).
	 */
	struct { uint64_t start, end; bool away; } r[MAX_RESERVATIONS];
} arena = { .lock = PTHREAD_MUTEX_INITIALIZER };

uint64_t mem_phys_top(uint64_t ram_bytes)
{
	uint64_t top = LAYOUT_HIGH_RAM_BASE;

	if (ram_bytes > LAYOUT_LOW_RAM_MAX)
		top += ram_bytes - LAYOUT_LOW_RAM_MAX;
	return (top + MEM_GUARD - 1) & ~(MEM_GUARD - 1);
}

uint64_t mem_reserve_bytes(uint64_t ram_bytes)
{
	return mem_phys_top(ram_bytes) + 2 * MEM_GUARD;
}

/*
 * First address at or after `at` where `len` bytes overlap no reservation of
 * ours. The reservations are sorted and disjoint: one stepped over never
 * overlaps the later address, so a single walk is enough.
 */
static uint64_t skip_reserved(uint64_t at, uint64_t len)
{
	for (unsigned int i = 0; i < arena.nr; i++)
		if (at < arena.r[i].end && arena.r[i].start < at + len)
			at = arena.r[i].end;
	return at;
}

/* Does [at, at + len) overlap a reservation whose VM is here? */
static bool overlaps_here(uint64_t at, uint64_t len)
{
	for (unsigned int i = 0; i < arena.nr; i++)
		if (!arena.r[i].away && at < arena.r[i].end && arena.r[i].start < at + len)
			return true;
	return false;
}

static void drop_entry(unsigned int i)
{
	arena.nr--;
	for (; i < arena.nr; i++)
		arena.r[i] = arena.r[i + 1];
}

/* A VM that came back to its old place: the places kept for it there go. */
static void drop_away(uint64_t at, uint64_t len)
{
	for (unsigned int i = arena.nr; i-- > 0;)
		if (arena.r[i].away && at < arena.r[i].end && arena.r[i].start < at + len)
			drop_entry(i);
}

/* Record [start, start + len) in address order. */
static void add_reserved(uint64_t start, uint64_t len)
{
	unsigned int i = arena.nr;

	while (i > 0 && arena.r[i - 1].start > start) {
		arena.r[i] = arena.r[i - 1];
		i--;
	}
	arena.r[i].start = start;
	arena.r[i].end = start + len;
	arena.r[i].away = false;
	arena.nr++;
}

/*
 * Where this process's first fit starts: a guard-aligned place in the first
 * half of the arena, drawn once. A thread VM resumes only at its old base,
 * so a VM moves between two hosts of one machine only when the destination
 * holds nothing there: hosts that all started at the arena's start would hand
 * out the same bases. Drawn among the guard-sized places of the arena's first
 * half (some 800 000), the VMs of two hosts meet only when their origins
 * fall within the span of a few VMs of each other.
 */
static uint64_t arena_origin(void)
{
	static uint64_t origin;
	uint64_t r = 0;

	if (!origin) {
		if (getrandom(&r, sizeof(r), 0) != sizeof(r))
			r = (uint64_t)getpid() * 0x9e3779b97f4a7c15ULL;
		origin = MEM_ARENA_START + r % (MEM_ARENA_BYTES / MEM_GUARD / 2) * MEM_GUARD;
	}
	return origin;
}

/*
 * Reserve the VM's whole guest-physical span plus a guard gap on each side,
 * PROT_NONE: the first free place from the process's origin on (then from
 * the arena's start), in creation order. Another mapping in the way
 * (MAP_FIXED_NOREPLACE says EEXIST) moves us on a guard's length at a time.
 */
static int reserve(uint64_t len, uint64_t want, uint64_t *out)
{
	uint64_t at, origin;
	bool wrapped = false;
	int ret = -ENOMEM;

	pthread_mutex_lock(&arena.lock);
	origin = arena_origin();
	at = want ? want : origin;
	while (arena.nr < MAX_RESERVATIONS) {
		void *p;

		if (want && overlaps_here(at, len)) {
			ret = -EADDRINUSE;
			break;
		}
		/* A VM asking for its place may take what was kept for it (mem_keep_place). */
		if (!want)
			at = skip_reserved(at, len);
		if (!want && !wrapped && at + len > MEM_ARENA_END) {
			/* Past the end: the places before the origin are free too. */
			at = MEM_ARENA_START;
			wrapped = true;
			continue;
		}
		if (at + len > MEM_ARENA_END || (wrapped && at >= origin))
			break;
		p = mmap((void *)(uintptr_t)at, len, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
		if (p == (void *)(uintptr_t)at) {
			if (want)
				drop_away(at, len);
			add_reserved(at, len);
			*out = at;
			ret = 0;
			break;
		}
		if (p != MAP_FAILED) {
			/* A kernel without MAP_FIXED_NOREPLACE treats it as a hint. */
			munmap(p, len);
		} else if (errno != EEXIST) {
			ret = -errno;
			break;
		}
		if (want) {
			ret = -EADDRINUSE;
			break;
		}
		at += MEM_GUARD;
	}
	pthread_mutex_unlock(&arena.lock);
	return ret;
}

static void unreserve(uint64_t start, uint64_t len, bool keep)
{
	munmap((void *)(uintptr_t)start, len);
	pthread_mutex_lock(&arena.lock);
	for (unsigned int i = 0; i < arena.nr; i++) {
		if (arena.r[i].start != start)
			continue;
		if (keep)
			arena.r[i].away = true;
		else
			drop_entry(i);
		break;
	}
	pthread_mutex_unlock(&arena.lock);
}

void mem_keep_place(struct gm *gm)
{
	gm->keep_place = true;
}

static int map_region(struct gm *gm, struct mem_ram_region *r, gpa_t gpa, uint64_t len,
		      uint64_t first_index)
{
	uint8_t *want = gm->phys_base + gpa;
	void *p = mmap(want, len, gm->prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
		       -1, 0);

	if (p == MAP_FAILED)
		return -ENOMEM;
	/* Guest pages are reclaimed one 4 KiB page at a time; THP would defeat that. */
	madvise(p, len, MADV_NOHUGEPAGE);
	r->gpa = gpa;
	r->len = len;
	r->hva = p;
	r->first_pfn_index = first_index;
	return 0;
}

int mem_create(uint64_t ram_bytes, bool exec, struct gm **out)
{
	return mem_create_at(ram_bytes, exec, 0, out);
}

int mem_create_at(uint64_t ram_bytes, bool exec, uint64_t phys_base, struct gm **out)
{
	uint64_t low, base = 0, want = phys_base ? phys_base - MEM_GUARD : 0;
	struct gm *gm;
	int ret;

	if (ram_bytes == 0 || ram_bytes % LAYOUT_PAGE_SIZE)
		return -EINVAL;
	if (phys_base && (phys_base % MEM_GUARD || phys_base < MEM_ARENA_START + MEM_GUARD ||
			  phys_base > MEM_ARENA_END))
		return -EINVAL;
	if (ram_bytes < LAYOUT_RESERVED_END + LAYOUT_PAGE_SIZE)
		return -EINVAL;
	if (ram_bytes > LAYOUT_MAX_RAM)
		return -E2BIG;
	gm = kv_zalloc(sizeof(*gm));
	if (!gm)
		return -ENOMEM;
	gm->uffd = -1;
	gm->prot = PROT_READ | PROT_WRITE | (exec ? PROT_EXEC : 0);
	gm->phys_top = mem_phys_top(ram_bytes);
	ret = pagestate_create(ram_bytes / LAYOUT_PAGE_SIZE, &gm->ps);
	if (ret)
		goto out_free;
	gm->framemap = kv_calloc((ram_bytes / LAYOUT_PAGE_SIZE + 63) / 64, sizeof(uint64_t));
	gm->vmm_dirty = kv_calloc((ram_bytes / LAYOUT_PAGE_SIZE + 63) / 64, sizeof(uint64_t));
	gm->guest_dirty = kv_calloc((ram_bytes / LAYOUT_PAGE_SIZE + 63) / 64, sizeof(uint64_t));
	gm->wp_reason = kv_calloc(ram_bytes / LAYOUT_PAGE_SIZE, 1);
	gm->chunk_mode = kv_calloc(ram_bytes / LAYOUT_PAGE_SIZE / MEM_CHUNK_PAGES + 1, 1);
	gm->chunk_age = kv_calloc(ram_bytes / LAYOUT_PAGE_SIZE / MEM_CHUNK_PAGES + 1,
				  sizeof(uint16_t));
	gm->chunk_hits = kv_calloc(ram_bytes / LAYOUT_PAGE_SIZE / MEM_CHUNK_PAGES + 1, 1);
	/* Zeroed pages the kernel hands out on first write: no memory until a page swaps. */
	gm->swap_slot = kv_calloc(ram_bytes / LAYOUT_PAGE_SIZE, sizeof(uint64_t));
	if (!gm->framemap || !gm->vmm_dirty || !gm->guest_dirty || !gm->wp_reason ||
	    !gm->chunk_mode || !gm->chunk_age || !gm->chunk_hits || !gm->swap_slot) {
		ret = -ENOMEM;
		goto out_free;
	}
	gm->reserve_len = mem_reserve_bytes(ram_bytes);
	ret = reserve(gm->reserve_len, want, &base);
	if (ret)
		goto out_free;
	gm->reserve_start = base;
	gm->phys_base = (uint8_t *)(uintptr_t)(base + MEM_GUARD);
	low = layout_low_ram_bytes(ram_bytes);
	ret = map_region(gm, &gm->regions[0], 0, low, 0);
	if (ret)
		goto out_unreserve;
	gm->nr_regions = 1;
	if (ram_bytes > low) {
		ret = map_region(gm, &gm->regions[1], LAYOUT_HIGH_RAM_BASE, ram_bytes - low,
				 low / LAYOUT_PAGE_SIZE);
		if (ret)
			goto out_unreserve;
		gm->nr_regions = 2;
	}
	gm->ram_bytes = ram_bytes;
	*out = gm;
	return 0;

out_unreserve:
	unreserve(gm->reserve_start, gm->reserve_len, false);
out_free:
	kv_free(gm->framemap);
	kv_free(gm->vmm_dirty);
	kv_free(gm->guest_dirty);
	kv_free(gm->wp_reason);
	kv_free(gm->chunk_mode);
	kv_free(gm->chunk_age);
	kv_free(gm->chunk_hits);
	kv_free(gm->swap_slot);
	pagestate_destroy(gm->ps);
	kv_free(gm);
	return ret;
}

int mem_create_anon(uint64_t bytes, struct gm **out)
{
	return mem_create(bytes, false, out);
}

uint8_t *mem_phys_base(const struct gm *gm)
{
	return gm->phys_base;
}

uint64_t mem_span(const struct gm *gm)
{
	return gm->phys_top;
}

void mem_destroy(struct gm *gm)
{
	if (!gm)
		return;
	/* Its prefetcher first: it copies into the regions. */
	mem_lazy_detach(gm);
	/* The regions, remapped windows and frames all lie inside the reservation. */
	if (gm->reserve_len)
		unreserve(gm->reserve_start, gm->reserve_len, gm->keep_place);
	if (gm->uffd >= 0)
		close(gm->uffd);
	pagestate_destroy(gm->ps);
	kv_free(gm->framemap);
	kv_free(gm->vmm_dirty);
	kv_free(gm->guest_dirty);
	kv_free(gm->wp_reason);
	kv_free(gm->chunk_mode);
	kv_free(gm->chunk_age);
	kv_free(gm->chunk_hits);
	kv_free(gm->swap_slot);
	kv_free(gm->corpus_path);
	kv_free(gm);
}

int mem_uffd_register(struct gm *gm, void *hva, uint64_t len, uint64_t mode)
{
	struct uffdio_register reg = {
		.range = { .start = (uint64_t)(uintptr_t)hva, .len = len },
		.mode = mode,
	};

	if (gm->uffd < 0)
		return -ENOSYS;
	if (ioctl(gm->uffd, UFFDIO_REGISTER, &reg) < 0)
		return -errno;
	return 0;
}

/* Only guest bytes are read here: racy by design (mem/hva.h). */
KV_NO_TSAN bool mem_hva_is_zero(const void *hva)
{
	const uint64_t *w = hva;

	for (size_t i = 0; i < MEM_PAGE_SIZE / 8; i += 8)
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] |
		    w[i + 7])
			return false;
	return true;
}

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13) /* Linux 6.4; Debian 12's headers are 6.1 */
#endif

/*
 * A userfaultfd with write-protect faults, and where the kernel has it
 * (Linux 6.4), write protection of holes: a protected hole takes a marker,
 * and a write to it waits like a write to a protected page, so a transaction
 * holds the holes of a window without registering it for MISSING faults.
 * A feature the kernel lacks fails UFFDIO_API, which works once per fd.
 */
static int open_uffd(bool *wp_unpopulated)
{
	static const uint64_t want[] = {
		UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_UNPOPULATED,
		UFFD_FEATURE_PAGEFAULT_FLAG_WP,
	};
	int ret = -ENOSYS;

	for (unsigned int i = 0; i < 2; i++) {
		struct uffdio_api api = { .api = UFFD_API, .features = want[i] };
		int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

		if (fd < 0)
			return -errno;
		if (ioctl(fd, UFFDIO_API, &api) == 0) {
			*wp_unpopulated = want[i] & UFFD_FEATURE_WP_UNPOPULATED;
			return fd;
		}
		ret = -errno;
		close(fd);
	}
	return ret;
}

int mem_enable_uffd(struct gm *gm)
{
	int fd = open_uffd(&gm->wp_unpopulated), ret;

	if (fd < 0)
		return fd;
	gm->uffd = fd;
	for (unsigned int i = 0; i < gm->nr_regions; i++) {
		ret = mem_uffd_register(gm, gm->regions[i].hva, gm->regions[i].len,
					UFFDIO_REGISTER_MODE_WP);
		if (ret) {
			log_err("userfaultfd register of %llu bytes: %s",
				(unsigned long long)gm->regions[i].len, strerror(-ret));
			close(fd);
			gm->uffd = -1;
			return ret;
		}
	}
	return 0;
}

int mem_set_mergeable(struct gm *gm)
{
	for (unsigned int i = 0; i < gm->nr_regions; i++)
		if (madvise(gm->regions[i].hva, gm->regions[i].len, MADV_MERGEABLE) < 0)
			return -errno;
	return 0;
}

struct pagestate *mem_pagestate(struct gm *gm)
{
	return gm->ps;
}

/* The region holding page index idx (indexes run over RAM only, holes excluded). */
static const struct mem_ram_region *index_region(const struct gm *gm, uint64_t idx)
{
	if (gm->nr_regions > 1 && idx >= gm->regions[1].first_pfn_index)
		return &gm->regions[1];
	return &gm->regions[0];
}

uint8_t *mem_page_hva(const struct gm *gm, uint64_t idx)
{
	const struct mem_ram_region *r = index_region(gm, idx);

	return r->hva + ((idx - r->first_pfn_index) << LAYOUT_PAGE_SHIFT);
}

int64_t mem_page_index(const struct gm *gm, gpa_t gpa)
{
	const struct mem_ram_region *r = mem_find_region(gm, gpa);

	if (!r)
		return -1;
	return (int64_t)(r->first_pfn_index + ((gpa - r->gpa) >> LAYOUT_PAGE_SHIFT));
}

gpa_t mem_index_gpa(const struct gm *gm, uint64_t index)
{
	const struct mem_ram_region *r = index_region(gm, index);

	return r->gpa + ((index - r->first_pfn_index) << LAYOUT_PAGE_SHIFT);
}

uint64_t mem_nr_pages(const struct gm *gm)
{
	return gm->ram_bytes >> LAYOUT_PAGE_SHIFT;
}

bool mem_catch_up(struct gm *gm, uint64_t idx, enum ps_state st)
{
	uint64_t e;
	bool own;

	if (pagestate_cas(gm->ps, idx, st, PS_BUSY))
		return false;
	own = mem_pagemap(gm, idx, 1, &e) == 1 && mem_pm_resident(e) && !mem_pm_file(e);
	pagestate_set(gm->ps, idx, own ? PS_ANON : st);
	return own;
}

uint64_t mem_resident(struct gm *gm)
{
	uint64_t buf[512], total = 0;
	uint8_t before[512];

	for (unsigned int r = 0; r < gm->nr_regions; r++) {
		uint64_t idx = gm->regions[r].first_pfn_index;
		uint64_t end = idx + gm->regions[r].len / LAYOUT_PAGE_SIZE;

		while (idx < end) {
			uint64_t n = end - idx < 512 ? end - idx : 512;
			int64_t got;

			/*
			 * States first, pagemap second: a page dropped after its state
			 * was read still shows in the pagemap read; moving it back
			 * from the state read before would undo the drop's state.
			 */
			for (uint64_t i = 0; i < n; i++)
				before[i] = (uint8_t)pagestate_get(gm->ps, idx + i);
			got = mem_pagemap(gm, idx, n, buf);
			if (got <= 0)
				return total;
			for (int64_t i = 0; i < got; i++) {
				enum ps_state st = (enum ps_state)before[i];

				if (!mem_pm_resident(buf[i]))
					continue;
				total++;
				if (st == PS_ZERO || st == PS_REPORTED || st == PS_BALLOONED)
					mem_catch_up(gm, idx + (uint64_t)i, st);
			}
			idx += (uint64_t)got;
		}
	}
	return total;
}
