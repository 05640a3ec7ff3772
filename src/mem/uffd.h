/* SPDX-License-Identifier: MIT */
/*
 * The userfaultfd service: one thread per host that reads the faults of
 * every VM's guest RAM and hands each to the page-range transaction's
 * dispatcher (mem/txn.h), which acts by the page's state: a write to a page a
 * transaction holds waits for it, a write to a sampled page counts a hit, a
 * write to a tracked page is recorded for migration (mem_dirty_guest_*), a
 * write to a page protected for no reason is released and counted, and an
 * access to a hole of a range registered for MISSING faults is served
 * before it is woken. Guest RAM is registered for write-protect faults only
 * (MISSING mode would send every first touch through here: 60 us instead of
 * 4.4 us a page, measured), MISSING only where src/mem needs it.
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

/*
 * Call fn(arg) on the service thread whenever fd is readable (an eventfd
 * of I/O completions, such as host swap's reads), serialised with fault
 * dispatch: that is how a fault's second half runs in the same loop
 * without the service waiting for I/O. 0 or -errno.
 */
int uffd_service_watch(struct uffd_service *svc, int fd, void (*fn)(void *arg), void *arg);
/* Stop watching fd: once this returns, its fn is not running and never runs again. */
void uffd_service_unwatch(struct uffd_service *svc, int fd);

struct uffd_stats {
	uint64_t wp_faults;	/* writes that hit a protected page */
	uint64_t sample_hits;	/* of which on a page protected for sampling */
	uint64_t stray;		/* of which on a page protected for no reason (released) */
	uint64_t missing_faults; /* accesses to a hole registered for MISSING faults */
	uint64_t zero_fills;	/* of which to a window's zero page, given a page of zeros */
	uint64_t zero_pages;	/* of which to a hole of a MISSING chunk, given the zero page */
	uint64_t errors;	/* faults outside guest RAM */
	uint64_t track_hits;	/* write faults on a page protected for dirty tracking only */
};
void uffd_service_stats(const struct uffd_service *svc, struct uffd_stats *out);

#endif
