/* SPDX-License-Identifier: MIT */
/*
 * The page-range transaction: the one protocol by which a mechanism (zero
 * reclaim, dedup, the balloon, swap) takes pages from a running guest. The
 * mechanism decides which pages and what becomes of them; this module does
 * everything between:
 *
 *   claim    compare-and-swap each page's state to PS_BUSY (remembering the
 *            old one: a page another mechanism holds is not taken),
 *            write-protect the run (holes too, where asked) and read its
 *            pagemap entries, which are final from then on for the
 *            populated pages: a guest write now waits for the transaction
 *            ("protect first, compare second", as KSM does);
 *   inspect  the caller hashes, compares or copies the pages
 *            (mem/pagecontent.h);
 *   commit   each page as kept, private, dropped as zero, mapped to a store
 *            frame, ballooned, reported or swapped (mem_txn_set), and
 *   end      apply them run by run (mem_txn_end, or mem_txn_end_window for a
 *            window remapped whole), write the new states, restore the write
 *            protection each page still needs for other reasons, and wake the
 *            held writers once for the whole run.
 *
 * A commit that fails leaves its page as it was claimed (state, content,
 * mapping), so every page's state matches its mapping whatever happens part
 * way: never a frame reference for a mapping that was not made, never a page
 * marked dropped that still holds memory.
 *
 * Write protection has reasons: a transaction's claim (PS_BUSY), working-set
 * sampling (mem_sample_protect) and dirty tracking (mem_dirty_guest_track in
 * mem/gm.h). Ending one never lifts another: a transaction that ends on a
 * sampled or tracked page leaves it protected, and a sample released while a
 * transaction holds the page is lifted by that transaction's end; a write
 * to a page both sampled and tracked counts for both. Only a page's owner
 * adds a reason (tracking owns each page it arms for a moment, as sampling
 * does). A commit that changes a page's backing consumes its sample (the
 * sampled page is gone) but keeps its tracking (its content is the same)
 * and arms the new backing; as the change took the old protection first,
 * it then looks for a write that landed unseen in between (a page of the
 * VM's own with other bytes than it left) and records it. Pages given to the
 * balloon or reported free are recorded: the destination must drop them.
 *
 * Registration has modes per 2 MiB chunk of guest RAM: write-protect always,
 * MISSING too where pages that must be given back on touch live (swapped
 * pages, and the holes of a window being rebuilt where the kernel cannot
 * write-protect holes). Every path here that replaces a mapping registers
 * the new one with its chunks' modes.
 *
 * One thread per transaction; transactions on different pages run in
 * parallel (the CAS decides). The struct is large (a run of up to
 * MEM_TXN_MAX pages): keep it static or thread-local, not on a small stack.
 */
#ifndef KVMEM_MEM_TXN_H
#define KVMEM_MEM_TXN_H

#include <stdbool.h>
#include <stdint.h>

#include "mem/gm.h"
#include "mem/pagestate.h"

#define MEM_TXN_MAX 512	/* pages of one transaction: a 2 MiB window */

/* What a claimed page becomes (mem_txn_set). */
enum mem_commit {
	MEM_KEEP,	/* as it was claimed: state, content, mapping */
	MEM_PRIVATE,	/* keeps its content as the VM's own page (PS_ANON) */
	MEM_ZERO,	/* held only zeros: dropped, reads the zero page (PS_ZERO) */
	MEM_FRAME,	/* maps the store page at arg, copy-on-write (PS_SHARED) */
	MEM_BALLOONED,	/* given to the balloon: dropped (PS_BALLOONED) */
	MEM_REPORTED,	/* reported free by the guest: dropped (PS_REPORTED) */
	MEM_SWAPPED,	/* written to swap slot arg: dropped, read back on touch (PS_SWAPPED) */
	MEM_NR_COMMITS,
};

/* The states a claim may take a page from: a set of MEM_FROM(PS_x). */
#define MEM_FROM(s) (1u << (s))

enum mem_txn_flags {
	/* All the pages or none: -EBUSY when one is in another state. */
	MEM_TXN_WHOLE = 1u << 0,
	/*
	 * Hold the holes (unpopulated pages) too: a guest write to a hole is
	 * not held by write protection on a kernel without
	 * UFFD_FEATURE_WP_UNPOPULATED and would land in the old mapping of a
	 * window being rebuilt. There the run is registered for MISSING faults
	 * until the end (and its chunks keep their own modes after). A page
	 * held as a hole must not be read by the caller: the read would wait
	 * for the caller itself.
	 */
	MEM_TXN_HOLES = 1u << 1,
	/*
	 * No write protection: pages the guest gave up (balloon, reporting),
	 * dropped whatever they hold.
	 */
	MEM_TXN_NOPROTECT = 1u << 2,
	/* The caller does not look at t->pm (a single page it compares): no pagemap read. */
	MEM_TXN_NOPAGEMAP = 1u << 3,
};

struct mem_txn {
	struct gm *gm;
	uint64_t idx;			/* first page index */
	uint32_t n;			/* pages claimed, one region */
	uint32_t flags;			/* enum mem_txn_flags */
	bool held;			/* holes held by a MISSING registration */
	int err;			/* after the end: the first failed commit's -errno, or 0 */
	uint8_t old[MEM_TXN_MAX];	/* enum ps_state each page was claimed from */
	uint8_t commit[MEM_TXN_MAX];	/* enum mem_commit; after the end: what took effect */
	uint64_t arg[MEM_TXN_MAX];	/* MEM_FRAME: byte offset in the store; MEM_SWAPPED: slot */
	uint64_t pm[MEM_TXN_MAX];	/* pagemap entries read once protected */
};

/*
 * Claim pages [idx, idx + n) of gm (n <= MEM_TXN_MAX, one RAM region) from
 * the states in `from`, a run from idx on that stops at the first page in
 * another state or taken by someone else. Returns the pages claimed (0:
 * none, nothing held), or -errno with nothing held: -EINVAL for a bad
 * range, -EBUSY (MEM_TXN_WHOLE) when not all could be claimed, or the error
 * of the write protection.
 */
int64_t mem_txn_claim(struct mem_txn *t, struct gm *gm, uint64_t idx, uint64_t n,
		      unsigned int from, unsigned int flags);
/* Page i of the transaction becomes `c` at its end (arg: see enum mem_commit). */
static inline void mem_txn_set(struct mem_txn *t, uint32_t i, enum mem_commit c, uint64_t arg)
{
	t->commit[i] = (uint8_t)c;
	t->arg[i] = arg;
}
/*
 * Apply every page's commit, page run by page run (fd: the store for
 * MEM_FRAME pages, else -1), release the run and wake its writers once.
 * Returns the pages whose commit took effect; t->commit[i] says which
 * (MEM_KEEP where one failed: the page is as it was claimed), t->err why.
 */
int64_t mem_txn_end(struct mem_txn *t, int fd);

/* How each page of a window reads after mem_txn_end_window. */
enum mem_win_kind {
	MEM_WIN_KEEP,	/* its content, as a private page */
	MEM_WIN_FRAME,	/* the store page at off + i pages (copy-on-write) */
	MEM_WIN_ZERO,	/* zeros without a page of its own (copy-on-write) */
	MEM_WIN_ZEROED,	/* a private page of zeros (not read from the window: it may be a hole) */
};

/*
 * End a transaction that claimed a whole window (MEM_TXN_WHOLE, and
 * MEM_TXN_HOLES if it has holes) by replacing its mapping in one step with a
 * private mapping of the store fd from byte offset off, page i read as
 * kind[i] says, and setting each page's state from its commit (MEM_FRAME
 * pages must be MEM_WIN_FRAME at off + i pages, compared with their store
 * page by the caller; a MEM_WIN_ZERO page's store offset must stay a hole
 * of zeros that is never punched). The new mapping is built aside, filled
 * (private copies, zero pages) and moved over the window with one mremap,
 * so a guest access sees the old window or the new one, never a hole.
 *
 * A MEM_WIN_ZERO page maps the kernel's zero page where memmap recognises it
 * (mem_zero_page_known); elsewhere it is left a hole of the new mapping,
 * which is registered for MISSING faults, so a touch gets a page of zeros of
 * the VM's own from the uffd service, never a page of the store.
 *
 * 0, or -errno with every page given back as it was claimed (the transaction
 * is over either way).
 */
int mem_txn_end_window(struct mem_txn *t, int fd, uint64_t off, const uint8_t *kind);

/*
 * A page of a mapping of the store (PS_SHARED) that the guest wrote: the
 * kernel gave it a private copy, so it is the VM's own again (PS_ANON) and
 * is tracked by userfaultfd again. 0, or -EBUSY when it is not PS_SHARED
 * now (someone else's page).
 */
int mem_page_unshared(struct gm *gm, uint64_t idx);
/*
 * Make page idx, which maps a store frame (PS_SHARED), the VM's own copy the
 * way a guest write would: the kernel's copy-on-write (MADV_POPULATE_WRITE),
 * content unchanged, safe against the guest writing it meanwhile. The page
 * stays PS_SHARED until mem_page_unshared, as after a guest write. A page a
 * mechanism holds write-protected is waited for like a guest write. 0, or
 * -errno (-EBUSY: not PS_SHARED now).
 */
int mem_page_break_share(struct gm *gm, uint64_t idx);

/*
 * Working-set sampling: write-protect PS_ANON page idx with the sampling
 * reason; the uffd service counts and releases it at the guest's first
 * write (gm's sample hits, mem_sample_hits). 0, -EBUSY (another state or
 * mechanism), -errno.
 */
int mem_sample_protect(struct gm *gm, uint64_t idx);
/*
 * Withdraw the sampling reason of page idx (its protection goes when no
 * other reason holds it). True when the guest wrote the page since
 * mem_sample_protect (and its backing did not change since).
 */
bool mem_sample_release(struct gm *gm, uint64_t idx);
/* Writes that hit sampled pages since the last call. */
uint64_t mem_sample_hits(struct gm *gm);

/*
 * Chunk registration modes: MISSING faults on or off for the 2 MiB chunks
 * that cover pages [idx, idx + n). Turning MISSING off re-registers the
 * chunks (the kernel keeps a registration's modes when asked for fewer) and
 * write-protects again the pages whose reasons still need it. 0 or -errno;
 * -EBUSY for off while guest writes are tracked (re-registering lets held
 * writes through unprotected).
 */
int mem_chunks_set_missing(struct gm *gm, uint64_t idx, uint64_t n, bool on);
/* True when page idx's chunk is registered for MISSING faults. */
bool mem_page_missing(const struct gm *gm, uint64_t idx);

/*
 * Fill pages [idx, idx + n) (one region, n <= MEM_TXN_MAX) of a VM whose
 * guest does not run (a migration's destination, a paused VM rolled back)
 * with the content at data. A hole gets its page installed with the content
 * at once (UFFDIO_COPY: no fault, no page cleared first, which is what a
 * first write costs); a page populated already is written in place through
 * the access API (mem_write). Each page is the VM's own after (PS_ANON: one
 * dropped before has content now). 0, -EINVAL, or mem_write's -errno.
 */
int mem_fill_pages(struct gm *gm, uint64_t idx, uint64_t n, const void *data);

/* Host-wide costs of the protocol (every VM's), for the stats. */
struct mem_txn_stats {
	uint64_t claims;	 /* transactions that claimed a page */
	uint64_t pages;		 /* pages claimed */
	uint64_t commits[MEM_NR_COMMITS]; /* pages by what took effect */
	uint64_t failed;	 /* commits that failed, the page kept */
	uint64_t registrations;	 /* UFFDIO_REGISTER/UNREGISTER calls: a VMA split each, mmap_lock held for write */
	uint64_t remaps;	 /* mmap/mremap over guest RAM: mmap_lock held for write */
	uint64_t stray_faults;	 /* writes to a page protected for no reason: released, counted */
	uint64_t protects;	 /* UFFDIO_WRITEPROTECT calls, protecting or lifting */
	uint64_t uffd_errors;	 /* userfaultfd calls that failed where they should not have */
	uint64_t claim_errors;	 /* claims undone: the run could not be protected or read */
	uint64_t fault_retries;	 /* faults left to fault again: their page could not be put in */
};
void mem_txn_stats(struct mem_txn_stats *out);

/*
 * Debug check: each page's state against what its mapping shows (pagemap
 * and which mapping backs it). A page whose state changed during the look,
 * or that a transaction holds, is skipped. With the guest paused, any
 * mismatch is a bug of the accounting.
 */
struct mem_check {
	uint64_t checked;	/* pages compared */
	uint64_t mismatches;	/* pages whose state the mapping contradicts */
	uint64_t first_bad;	/* page index of the first mismatch */
	uint8_t first_state;	/* its state */
	uint64_t first_pm;	/* its pagemap entry */
};
int mem_check_states(struct gm *gm, struct mem_check *out);

#endif
