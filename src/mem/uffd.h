/* SPDX-License-Identifier: MIT */
/*
 * The userfaultfd service: one thread per host that resolves the faults of
 * every VM's guest RAM. Guest RAM is registered in MISSING and WP modes, so
 * (1) a page the host dropped (zero, ballooned, reported, swapped) or never
 * touched faults here and is filled from the right source, and (2) a page a
 * reclaim mechanism write-protected holds a writer until the mechanism is
 * done ("protect first, compare second", as KSM does).
 */
#ifndef KVMEM_MEM_UFFD_H
#define KVMEM_MEM_UFFD_H

#include <stdint.h>

#include "mem/gm.h"

struct uffd_service;

/* A source for pages in PS_SWAPPED: fill `page` (4 KiB) for page index idx. */
typedef int (*uffd_swapin_fn)(void *arg, struct gm *gm, uint64_t idx, void *page);

int uffd_service_create(struct uffd_service **out);
void uffd_service_destroy(struct uffd_service *svc);
/* Start serving gm's faults (gm must have been given a userfaultfd by memmap). */
int uffd_service_add(struct uffd_service *svc, struct gm *gm);
/* Stop serving gm; call before destroying gm. */
void uffd_service_remove(struct uffd_service *svc, struct gm *gm);
void uffd_service_set_swapin(struct uffd_service *svc, uffd_swapin_fn fn, void *arg);

struct uffd_stats {
	uint64_t missing_faults;   /* resolved MISSING faults */
	uint64_t zero_fills;	   /* of which filled with zeros */
	uint64_t swap_ins;	   /* of which read from swap */
	uint64_t wp_faults;	   /* writers held on a write-protected page */
	uint64_t errors;
};
void uffd_service_stats(const struct uffd_service *svc, struct uffd_stats *out);

#endif
