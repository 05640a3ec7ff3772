/* SPDX-License-Identifier: MIT */
/*
 * The userfaultfd service: one thread per host that answers the
 * write-protect faults of every VM's guest RAM. Guest RAM is registered in
 * WP mode only (MISSING mode would send every first touch through here: 60 us
 * instead of 4.4 us a page, measured), so three things reach this thread:
 * a guest write to a page a reclaim mechanism holds (PS_BUSY: left for that
 * mechanism, which wakes the writer when done: "protect first, compare
 * second", as KSM does), a write to a page the policy protected to
 * sample the guest's working set (released at once and counted), and an
 * access to a hole registered for MISSING faults: in a window that dedup is
 * remapping (mem_range_hold: left for dedup like any PS_BUSY page), or a zero
 * page of a window on a kernel where memmap cannot tell the shared zero page
 * (mem_window_map), which gets a page of zeros of the VM's own.
 */
#ifndef KVMEM_MEM_UFFD_H
#define KVMEM_MEM_UFFD_H

#include <stdint.h>

#include "mem/gm.h"

struct uffd_service;

int uffd_service_create(struct uffd_service **out);
void uffd_service_destroy(struct uffd_service *svc);
/* Start serving gm's faults (gm must have been given a userfaultfd by memmap). */
int uffd_service_add(struct uffd_service *svc, struct gm *gm);
/* Stop serving gm; call before destroying gm. */
void uffd_service_remove(struct uffd_service *svc, struct gm *gm);

struct uffd_stats {
	uint64_t wp_faults;	/* writes that hit a protected page */
	uint64_t sample_hits;	/* of which on a page protected for sampling */
	uint64_t missing_faults; /* accesses to a hole registered for MISSING faults */
	uint64_t zero_fills;	/* of which to a window's zero page, given a page of zeros */
	uint64_t errors;	/* faults outside guest RAM */
};
void uffd_service_stats(const struct uffd_service *svc, struct uffd_stats *out);

#endif
