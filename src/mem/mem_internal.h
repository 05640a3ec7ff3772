/* SPDX-License-Identifier: MIT */
/* Private to src/mem: the layout of a VM's guest memory. */
#ifndef KVMEM_MEM_INTERNAL_H
#define KVMEM_MEM_INTERNAL_H

#include "mem/gm.h"

#define GM_MAX_REGIONS 2

struct gm_region {
	gpa_t gpa;	/* first guest-physical byte */
	uint64_t len;	/* bytes, page multiple */
	uint8_t *hva;	/* host mapping, fixed for the VM's life */
	uint64_t first_pfn_index; /* index of this region's first page in per-page arrays */
};

struct gm {
	unsigned int nr_regions;	/* immutable after create */
	struct gm_region regions[GM_MAX_REGIONS];
	uint64_t ram_bytes;		/* sum of region lengths */
};

/* Region holding gpa, or NULL. */
const struct gm_region *gm_find_region(const struct gm *gm, gpa_t gpa);

#endif
