/* SPDX-License-Identifier: MIT */
/*
 * Page content for the dedup scanner: hash, compare and copy whole guest
 * pages, and the few facts about their host mappings it needs. The scanner
 * never holds a host pointer: each call resolves the page here (mem/ owns
 * hva) and lends it, read-only, for the length of the call.
 *
 * Reading a page that is not resident faults memory in: callers check the
 * pagemap entry first (memmap_pagemap, memmap_pm_resident). A page being
 * compared for a merge must be write-protected first (mem_page_protect):
 * only then is the compare final ("protect first, compare second").
 *
 * All calls may run on any thread and take no lock.
 */
#ifndef KVMEM_MEM_PAGECONTENT_H
#define KVMEM_MEM_PAGECONTENT_H

#include <stdbool.h>
#include <stdint.h>

#include "mem/gm.h"

/* A page hash function: `page` is GM_PAGE_SIZE bytes, valid for the call only. */
typedef uint64_t (*mem_page_hash_fn)(const void *page, const void *key);

/* Hash page idx with fn(page, key) into *hash. 0, or -EINVAL for idx outside RAM. */
int mem_page_hash(const struct gm *gm, uint64_t idx, mem_page_hash_fn fn, const void *key,
		  uint64_t *hash);
/* True when page idx holds only zero bytes (false for idx outside RAM). */
bool mem_page_is_zero(const struct gm *gm, uint64_t idx);
/* 1 when page ia of a and page ib of b are byte-for-byte equal, 0 when not, -EINVAL. */
int mem_page_equal(const struct gm *a, uint64_t ia, const struct gm *b, uint64_t ib);
/* 1 when page idx equals the page at byte offset off of fd, 0 when not, -errno. */
int mem_page_equal_fd(const struct gm *gm, uint64_t idx, int fd, uint64_t off);
/* Write page idx to fd at byte offset off (page aligned). 0 or -errno. */
int mem_page_copy_to_fd(const struct gm *gm, uint64_t idx, int fd, uint64_t off);

/* 1 when page idx equals the GM_PAGE_SIZE bytes at buf, 0 when not, -EINVAL. */
int mem_page_equal_buf(const struct gm *gm, uint64_t idx, const void *buf);

/*
 * Windows: runs of n pages [idx, idx + n) within one RAM region, remapped as
 * a whole so that sharing costs one host mapping per window instead of one
 * per shared run (each mapping costs the kernel ~250 bytes and a merge ~10 us).
 *
 * mem_range_protect write-protects (on) or releases (off) a window with one
 * call (one TLB flush); mem_range_wake wakes writers held on any of its pages.
 */
int mem_range_protect(struct gm *gm, uint64_t idx, uint64_t n, bool on);
/*
 * Populate the unpopulated pages of a window for reading (MADV_POPULATE_READ):
 * a hole of anonymous memory then maps the zero page (no memory), so that
 * write protection holds it too. 0 or -errno.
 */
int mem_range_populate(struct gm *gm, uint64_t idx, uint64_t n);
void mem_range_wake(struct gm *gm, uint64_t idx, uint64_t n);

enum mem_win_kind {
	MEM_WIN_KEEP,	/* keeps its content, as a private page */
	MEM_WIN_FRAME,	/* reads the store page at off + i pages (copy-on-write) */
	MEM_WIN_ZERO,	/* reads the zero page (copy-on-write) */
};

/*
 * Replace window [idx, idx + n) by one private mapping (MAP_PRIVATE) of fd
 * from byte offset off, page i as kind[i] says. The caller owns every page of
 * the window (PS_BUSY), has write-protected it (mem_range_protect) and checked
 * that every page is populated (present or swapped: a write to an unpopulated
 * page is not held by write protection and would be lost), and compared each
 * MEM_WIN_FRAME page with its store page. The new mapping is built aside,
 * filled (private copies, zero pages), and moved over the window in one
 * mremap, so a guest access sees the old window or the new one, never a hole.
 * The window is then under userfaultfd write-protect tracking again; its
 * writers are left for the caller to wake (after setting page states).
 * A MEM_WIN_ZERO page's zero-page entry is removed by a hole punched at its
 * store offset: the caller keeps those offsets out of use. 0, or -errno with
 * the window unchanged.
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

/*
 * True when a pagemap entry shows a private (anonymous) page: present or
 * swapped out, and not a file/shared page. For a page mapped onto a store
 * frame it means the guest wrote it and the kernel copied it on write.
 */
bool mem_pm_is_private(uint64_t entry);
/* True when a pagemap entry maps the kernel's zero page (a hole read, or UFFDIO_ZEROPAGE). */
bool mem_pm_is_zero_page(uint64_t entry);
/*
 * True when a pagemap entry is populated: present (any page, the zero page
 * too), swapped, or a write-protect marker on an unpopulated file pte (which
 * holds writes as a protected page does). An unpopulated anonymous pte
 * cannot be write-protected: a write to it would not wait.
 */
bool mem_pm_is_populated(uint64_t entry);

/*
 * Number of host VMAs (mappings) that overlap the RAM of the nr VMs in gms,
 * read from /proc/self/maps (costs about 0.5 us per mapping of the process);
 * *all (if not NULL) gets the process's total. Without page sharing each
 * RAM region is one VMA. -errno on failure.
 */
int64_t mem_ram_vmas(struct gm *const *gms, unsigned int nr, uint64_t *all);

#endif
