/* SPDX-License-Identifier: MIT */
/*
 * Page-level reclaim primitives of the memory manager: the only code that
 * drops, write-protects or remaps guest pages in the host. Other modules
 * (balloon, dedup, swap) ask through these calls and never call madvise or
 * mmap on guest RAM themselves; every transition goes through the page-state
 * map (mem/pagestate.h).
 *
 * Pages a guest still uses are dropped "protect first, compare second":
 * the page is write-protected through userfaultfd, its content checked, then
 * dropped or released, so a guest write racing with reclaim is never lost.
 */
#ifndef KVMEM_MEM_RECLAIM_H
#define KVMEM_MEM_RECLAIM_H

#include <stdint.h>

#include "mem/gm.h"
#include "mem/pagestate.h"

struct ovc;

/*
 * Drop whole pages the guest has given up (balloon inflate: PS_BALLOONED; free
 * page reporting: PS_REPORTED). gpa and len must be page aligned and in RAM
 * (-EINVAL/-EFAULT). A later guest access is served a zero page. Returns the
 * number of pages whose host memory was dropped.
 */
int64_t mem_discard(struct gm *gm, gpa_t gpa, uint64_t len, enum ps_state why);
/* Balloon deflate: the pages are the guest's again (they read as zeros). */
int mem_undiscard(struct gm *gm, gpa_t gpa, uint64_t len);

/*
 * Zero-page reclaim over page indexes [first, first + count): every private
 * page that holds only zeros is dropped (PS_ZERO). Returns pages dropped, stops
 * after `max_pages` drops.
 */
int64_t mem_reclaim_zero(struct gm *gm, uint64_t first, uint64_t count, uint64_t max_pages);

/* Write-protect / release one page (mechanisms that copy or compare a page). */
int mem_page_protect(struct gm *gm, uint64_t idx);
int mem_page_unprotect(struct gm *gm, uint64_t idx);
/* Wake vCPUs held on page idx (after its state changed). */
void mem_page_wake(struct gm *gm, uint64_t idx);
/* Drop page idx's host memory, whatever maps it now (anonymous or a store frame). */
int mem_page_drop(struct gm *gm, uint64_t idx);
/*
 * Map page idx copy-on-write onto a frame of a store memfd (dedup): the
 * guest reads the frame, and its first write gets a private copy from the
 * kernel, without an exit.
 */
int mem_page_map_frame(struct gm *gm, uint64_t idx, int fd, uint64_t off);

/* Register zero-page reclaim with the policy (cost 0). */
int reclaim_register_zero(struct ovc *ovc);

#endif
