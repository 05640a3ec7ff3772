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

#include <stdbool.h>
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
 *
 * A dropped page reads the kernel's zero page, whatever the kernel: where a
 * read of a hole would allocate a page instead (pvm_no_zero_page, see
 * memmap_zero_page_on_read), the run is given the zero page through
 * UFFDIO_ZEROPAGE as it is dropped, so a guest that reads its zero pages
 * again keeps them free.
 */
int64_t mem_reclaim_zero(struct gm *gm, uint64_t first, uint64_t count, uint64_t max_pages);

/* Write-protect / release one page (mechanisms that copy or compare a page). */
int mem_page_protect(struct gm *gm, uint64_t idx);
int mem_page_unprotect(struct gm *gm, uint64_t idx);
/* Wake vCPUs held on page idx (after its state changed). */
void mem_page_wake(struct gm *gm, uint64_t idx);
/*
 * Drop page idx, which the caller claimed, write-protected and found to hold
 * only zeros, whatever maps it now (anonymous memory or a store frame): it
 * reads the kernel's zero page from now on, as mem_reclaim_zero's pages do.
 */
int mem_page_drop_zero(struct gm *gm, uint64_t idx);
/*
 * Map page idx copy-on-write onto a frame of a store memfd (dedup): the
 * guest reads the frame, and its first write gets a private copy from the
 * kernel, without an exit.
 */
int mem_page_map_frame(struct gm *gm, uint64_t idx, int fd, uint64_t off);

/*
 * Windows: runs of n pages [idx, idx + n) within one RAM region, remapped as
 * a whole so that sharing costs one host mapping per window instead of one
 * per shared run (each mapping costs the kernel ~250 bytes and a merge ~10 us).
 *
 * mem_range_protect write-protects (on) or releases (off) a window with one
 * call (one TLB flush); mem_range_wake wakes writers held on any of its pages.
 */
int mem_range_protect(struct gm *gm, uint64_t idx, uint64_t n, bool on);
void mem_range_wake(struct gm *gm, uint64_t idx, uint64_t n);
/*
 * Hold the holes (unpopulated anonymous pages) of a window as well, until
 * mem_window_map replaces it or mem_range_unhold gives it back. Write
 * protection holds only populated pages: a guest write to a hole between the
 * caller's look and the remap would land in the old mapping and be lost. So
 * the window is registered for userfaultfd MISSING faults too, and an access
 * to one of its holes waits (the uffd service leaves faults on PS_BUSY pages
 * to their owner, who wakes them). This costs no memory, where populating the
 * holes to protect them would allocate a page for each on kernels that never
 * map the shared zero page on a read (and, on the others, fill page tables
 * with it). The registration splits the window's mapping off its neighbours
 * until then. The caller must not read a page of the window while it is a
 * hole: the read would wait for the caller itself. 0, or -errno with the
 * window possibly held in part (mem_range_unhold it).
 */
int mem_range_hold(struct gm *gm, uint64_t idx, uint64_t n);
/*
 * Give a window back from mem_range_hold: its anonymous memory registered for
 * write-protect faults only, as all guest RAM is (so its mapping merges with
 * its neighbours again), its mappings of the store as mem_window_map leaves
 * them, every page released from write protection, waiters woken. 0 or
 * -errno.
 */
int mem_range_unhold(struct gm *gm, uint64_t idx, uint64_t n);

enum mem_win_kind {
	MEM_WIN_KEEP,	/* keeps its content, as a private page */
	MEM_WIN_FRAME,	/* reads the store page at off + i pages (copy-on-write) */
	MEM_WIN_ZERO,	/* reads zeros without a page of its own (copy-on-write) */
	MEM_WIN_ZEROED,	/* a private page of zeros (not read from the window: it may be a hole) */
};

/*
 * Replace window [idx, idx + n) by one private mapping (MAP_PRIVATE) of fd
 * from byte offset off, page i as kind[i] says. The caller owns every page of
 * the window (PS_BUSY), has write-protected it (mem_range_protect) and checked
 * that every page is populated (present or swapped) or held as a hole
 * (mem_range_hold): a write to an unpopulated page is not held by write
 * protection and would be lost. It has compared each MEM_WIN_FRAME page with
 * its store page. The new mapping is built aside, filled (private copies, zero
 * pages), and moved over the window in one mremap, so a guest access sees the
 * old window or the new one, never a hole. The window is then under
 * userfaultfd tracking (held holes no more); its writers are left for the
 * caller to wake (after setting page states).
 *
 * A MEM_WIN_ZERO page maps the kernel's zero page (UFFDIO_ZEROPAGE) where
 * memmap recognises that page (memmap_zero_page_known), pvm_no_zero_page
 * kernels included. Elsewhere (a kernel that forbids the zero page, or a
 * pagemap that hides PFNs from kvmem) it is left a hole of
 * the new mapping, which is registered for MISSING faults as well: no memory
 * until the guest touches it, and then a page of zeros of the VM's own, which
 * the uffd service gives it (mem/uffd.h), not a page of the store. Either way
 * the store offset of a MEM_WIN_ZERO page must stay a hole of zeros that is
 * never punched (a punch removes zero-page entries): the caller keeps those
 * offsets out of use. 0, or -errno with the window unchanged.
 */
int mem_window_map(struct gm *gm, uint64_t idx, uint64_t n, int fd, uint64_t off,
		   const uint8_t *kind);

/*
 * Put page idx back under the VM's userfaultfd write-protect tracking after
 * its mapping was replaced (mem_page_map_frame maps a new VMA, which the
 * kernel does not register): without it the page could never be
 * write-protected again (re-merge after a copy-on-write break, zero drop,
 * swap-out). 0, or -errno (-ENOSYS without userfaultfd).
 */
int mem_page_track(struct gm *gm, uint64_t idx);
/* The same for the window [idx, idx + n) (one region), whatever its mappings. */
int mem_range_track(struct gm *gm, uint64_t idx, uint64_t n);
/*
 * True when page idx lies in a mapping of a store (mem_page_map_frame,
 * mem_window_map) rather than anonymous memory: an unpopulated page there
 * would read the store, not zeros.
 */
bool mem_page_in_store_mapping(const struct gm *gm, uint64_t idx);

/* Register zero-page reclaim with the policy (cost 0). */
int reclaim_register_zero(struct ovc *ovc);

#endif
