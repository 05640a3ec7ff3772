/* SPDX-License-Identifier: MIT */
/*
 * The guest's physical page allocator. It owns every usable RAM range the
 * VMM listed in the boot parameters and knows, page by page, which are free:
 * the knowledge ballooning and free page reporting are built on.
 *
 * Free pages are never written: the allocator keeps its state in a bitmap
 * carved from the front of the first range big enough for it, so a page the
 * guest never allocated stays untouched (and unbacked) on the host. Pages
 * handed out are not cleared either; their content is the caller's business.
 *
 * All functions are safe on any vCPU after palloc_init() (one spinlock; the
 * longest hold is one bitmap scan). Addresses are guest-physical (gpa_t) and
 * page frame numbers (integers): what devices and the balloon speak. A
 * caller that writes a page converts with phys_to_virt() (gpa.h); the
 * allocator itself touches only its bitmap.
 *
 * Free page reporting support (virtio-balloon VIRTIO_BALLOON_F_PAGE_REPORTING,
 * as Linux's mm/page_reporting.c): memory is reported in aligned chunks of
 * PALLOC_CHUNK_PAGES. A chunk is marked "reported" when the reporter gives
 * it back after the host dropped it, and loses the mark as soon as any of its
 * pages is allocated (Linux's PageReported), so only chunks that were used
 * since their last report are reported again. Chunks that were free since
 * boot start out marked: the host never backed them.
 *
 * Out of memory: callers that would fail for want of pages may call
 * palloc_reclaim() first, which asks the registered reclaimer (the balloon,
 * with deflate-on-OOM) to give pages back, then retry.
 */
#ifndef KVMEM_GUEST_PALLOC_H
#define KVMEM_GUEST_PALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "abi.h"
#include "gpa.h"

/*
 * palloc_init - take ownership of the usable ranges in @bp.
 * vCPU 0, once, before any other vCPU calls palloc. Returns 0, or -ENOMEM
 * if no range can hold the bitmap, -EINVAL if there are no ranges.
 */
int palloc_init(const struct abi_boot_params *bp);

/* One page: its gpa, or GPA_NULL if none is free. */
gpa_t palloc_alloc(void);

/* Give back one page from palloc_alloc*(). A bad or double free is reported and ignored. */
void palloc_free(gpa_t gpa);

/*
 * palloc_alloc_gfns - up to @n single pages, lowest addresses first, as page
 * frame numbers in @gfns (gpa >> 12; 32 bits cover 16 TiB, and virtio-balloon
 * PFNs are 32-bit too). Returns how many it got; fewer than @n means nothing
 * else is free.
 */
size_t palloc_alloc_gfns(uint32_t *gfns, size_t n);

/* Give back @n pages listed in @gfns. */
void palloc_free_gfns(const uint32_t *gfns, size_t n);

/*
 * palloc_free_gfns_clean - the same, for pages the host holds nothing for
 * (deflated balloon pages): every whole chunk among them, found as a run of
 * consecutive gfns in @gfns, comes back marked reported, so free page
 * reporting does not hand the host memory it already dropped.
 */
void palloc_free_gfns_clean(const uint32_t *gfns, size_t n);

/*
 * palloc_alloc_run - @npages physically contiguous pages whose first gfn is a
 * multiple of @align (pages; 0 or 1 for none). Returns the gpa, or GPA_NULL.
 */
gpa_t palloc_alloc_run(uint64_t npages, uint64_t align);

/* Give back a run from palloc_alloc_run() or palloc_claim(). */
void palloc_free_run(gpa_t gpa, uint64_t npages);

/*
 * palloc_claim - take the specific run [@gpa, @gpa + @npages pages), e.g. one
 * found by palloc_next_free_run() for free page reporting. Returns 0,
 * -EINVAL if it is not inside one range, -EBUSY if a page is not free.
 */
int palloc_claim(gpa_t gpa, uint64_t npages);

/*
 * palloc_next_free_run - walk free runs of at least @min_pages pages.
 * On entry *@gpa is where to start looking (GPA_NULL for the beginning); on
 * success *@gpa and *@npages describe the first such run at or after it and
 * true is returned. Continue from gpa_add(*@gpa, *@npages * 4096). A
 * snapshot: the run may be allocated by another vCPU right after;
 * palloc_claim() it to own it. Runs never span two boot ranges.
 */
bool palloc_next_free_run(gpa_t *gpa, uint64_t *npages, uint64_t min_pages);

/* The free page reporting unit: 1024 pages, 4 MiB, aligned to its size. */
#define PALLOC_CHUNK_PAGES 1024ULL

/*
 * palloc_claim_unreported - isolate up to @max whole free chunks that are
 * not marked reported, lowest first, writing their gpas to @gpas. Returns
 * how many it isolated. The caller owns them until palloc_free_reported().
 */
size_t palloc_claim_unreported(gpa_t *gpas, size_t max);

/*
 * Give back a chunk from palloc_claim_unreported(), marked reported if
 * @reported (the host dropped it), else as any free memory (the report
 * failed).
 */
void palloc_free_reported(gpa_t gpa, bool reported);

/* Pages in chunks currently marked reported (all of them free). */
uint64_t palloc_reported_pages(void);

/*
 * The out-of-memory hook: a reclaimer frees about @pages pages (it may free
 * more, or none) and returns how many it freed. It may sleep. It must not
 * call palloc_reclaim() itself.
 */
typedef uint64_t palloc_reclaim_fn(uint64_t pages);

/* Install the reclaimer (NULL removes it). vCPU 0, before the workload starts. */
void palloc_set_reclaim(palloc_reclaim_fn *fn);

/*
 * palloc_reclaim - an allocation of @pages pages fell short: ask the
 * reclaimer for them. Returns the pages it freed (0 without a reclaimer);
 * the caller retries its allocation either way, since the reclaimer may also
 * have waited for pages that were only briefly taken (a report in flight).
 * Any vCPU, no palloc or console lock held; may sleep.
 */
uint64_t palloc_reclaim(uint64_t pages);

/* Times palloc_reclaim() was called (allocation stalls). */
uint64_t palloc_stalls(void);

/*
 * Free pages plus those isolated for free page reporting (free again as
 * soon as the report is done), counted together under the lock: the memory
 * the guest has available, which does not dip while a report is in flight.
 */
uint64_t palloc_avail_pages(void);

/* Pages free right now / pages managed in total (including the bitmap). */
uint64_t palloc_free_pages(void);
uint64_t palloc_total_pages(void);

/* Pages used by the allocator's own bitmap. */
uint64_t palloc_meta_pages(void);

#endif
