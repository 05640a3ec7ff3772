/* SPDX-License-Identifier: MIT */
/* Private to src/mem: the layout of a VM's guest memory. */
#ifndef KVMEM_MEM_INTERNAL_H
#define KVMEM_MEM_INTERNAL_H

#include <stdbool.h>

#include "mem/gm.h"

#define GM_MAX_REGIONS 2

struct gm_region {
	gpa_t gpa;	/* first guest-physical byte */
	uint64_t len;	/* bytes, page multiple */
	uint8_t *hva;	/* host mapping, fixed for the VM's life */
	uint64_t first_pfn_index; /* index of this region's first page in per-page arrays */
};

struct pagestate;

struct gm {
	unsigned int nr_regions;	/* immutable after create */
	struct gm_region regions[GM_MAX_REGIONS];
	uint64_t ram_bytes;		/* sum of region lengths */
	struct pagestate *ps;		/* page-state map, immutable pointer */
	int uffd;			/* userfaultfd over all regions, or -1 */
	uint64_t *framemap;		/* bit per page: its VMA maps a store frame (atomic) */
	uint64_t sample_hits;		/* writes to pages protected for sampling (atomic) */
	int prot;			/* of every mapping of guest pages (PROT_EXEC under thread) */
	uint8_t *phys_base;		/* host address of guest-physical 0 */
	uint64_t phys_top;		/* end of the guest-physical span */
	uint64_t reserve_start;		/* the VM's reservation, guard gaps included */
	uint64_t reserve_len;
};

/* Host address of page index idx. */
uint8_t *gm_page_hva(const struct gm *gm, uint64_t idx);
/* Register [hva, hva+len) with gm's userfaultfd in write-protect mode. */
int gm_uffd_register(struct gm *gm, void *hva, uint64_t len);
/* Write-protect (on) or release (off) [hva, hva+len): 0, -errno, -ENOSYS without uffd. */
int gm_uffd_protect(struct gm *gm, void *hva, uint64_t len, bool on);
/* Wake the writers held on [hva, hva+len). */
void gm_uffd_wake(struct gm *gm, void *hva, uint64_t len);
/* True when the GM_PAGE_SIZE bytes at page are all zero. */
bool gm_page_is_zero(const void *page);

/* Whether page idx's VMA maps a store frame (framemap bit). */
static inline bool gm_frame_mapped(const struct gm *gm, uint64_t idx)
{
	return __atomic_load_n(&gm->framemap[idx / 64], __ATOMIC_ACQUIRE) & (1ULL << (idx % 64));
}

static inline void gm_set_frame_mapped(struct gm *gm, uint64_t idx, bool on)
{
	if (on)
		__atomic_fetch_or(&gm->framemap[idx / 64], 1ULL << (idx % 64), __ATOMIC_RELEASE);
	else
		__atomic_fetch_and(&gm->framemap[idx / 64], ~(1ULL << (idx % 64)), __ATOMIC_RELEASE);
}

/*
 * Tests only: from now on behave as on a kernel whose zero page memmap cannot
 * recognise (memmap_zero_page_known false), whatever this one does.
 */
void memmap_forget_zero_page(void);

/* Region holding gpa, or NULL. */
const struct gm_region *gm_find_region(const struct gm *gm, gpa_t gpa);

#endif
