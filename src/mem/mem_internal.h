/* SPDX-License-Identifier: MIT */
/* Private to src/mem: the layout of a VM's guest memory. */
#ifndef KVMEM_MEM_INTERNAL_H
#define KVMEM_MEM_INTERNAL_H

#include <stdbool.h>

#include "mem/gm.h"
#include "mem/hva.h"
#include "mem/pagestate.h"

#define MEM_MAX_REGIONS 2

struct mem_ram_region {
	gpa_t gpa;	/* first guest-physical byte */
	uint64_t len;	/* bytes, page multiple */
	uint8_t *hva;	/* host mapping, fixed for the VM's life */
	uint64_t first_pfn_index; /* index of this region's first page in per-page arrays */
};

struct pagestate;

/*
 * How a VM's swapped pages are served (mem/swap.c sets them at attach): the
 * dispatcher starts reading a page back through `submit`, and the store
 * hands the completion to mem_swap_in_done on the userfaultfd service
 * thread, which copies it in; `read` reads synchronously (the compressed
 * pool, a VMM read, or when no asynchronous read can be started). Every
 * path that ends a page's PS_SWAPPED state gives its slot back.
 */
/* Most pages one swap-in reads: the touched one and the swapped pages after it. */
#define MEM_SWAP_READAHEAD 16
#define MEM_SWAP_RA_STREAMS 4	/* in-order touchers followed at once (vCPUs, devices) */

struct mem_swap_hooks {
	int (*read)(void *arg, uint64_t slot, uint64_t n, void *buf); /* n pages: 0 or -errno */
	/*
	 * Start reading n pages from slot for a fault on gm's page idx (host
	 * address page), at t0 (ns): 0 when under way; -EAGAIN: read it
	 * synchronously instead (a pool page, no I/O queue, a full queue).
	 */
	int (*submit)(void *arg, struct gm *gm, uint64_t idx, uint64_t slot, uint64_t n,
		      void *page, uint64_t t0);
	void (*release)(void *arg, uint64_t slot, bool was_read);
	void (*fatal)(void *swap_vm, const char *why);	/* the VM must stop */
};

struct gm {
	unsigned int nr_regions;	/* immutable after create */
	struct mem_ram_region regions[MEM_MAX_REGIONS];
	uint64_t ram_bytes;		/* sum of region lengths */
	struct pagestate *ps;		/* page-state map, immutable pointer */
	int uffd;			/* userfaultfd over all regions, or -1 */
	uint64_t *framemap;		/* bit per page: its VMA maps a store frame (atomic) */
	uint64_t *vmm_dirty;		/* bit per page: the VMM wrote it (gm.c, atomic words) */
	bool vmm_dirty_on;		/* mark the VMM's writes (atomic) */
	uint64_t *guest_dirty;		/* bit per page: written while tracked (txn.c, atomic) */
	bool guest_track_on;		/* guest writes are tracked (txn.c; atomic) */
	uint8_t *wp_reason;		/* per page: MEM_WP_* reasons for write protection (atomic) */
	uint8_t *chunk_mode;		/* per MEM_CHUNK_PAGES chunk: MEM_CHUNK_* (txn.c) */
	uint16_t *chunk_age;		/* per chunk: intervals since last seen used (access.c, atomic) */
	uint8_t *chunk_hits;		/* per chunk: how often lately (access.c, atomic) */
	bool wp_unpopulated;		/* the userfaultfd write-protects holes (markers) */
	uint64_t sample_hits;		/* writes to pages protected for sampling (atomic) */
	const struct mem_swap_hooks *swap; /* NULL: no swap (set before swapping, cleared after) */
	void *swap_arg;			/* the store (its hooks' arg) */
	void *swap_vm;			/* the store's state of this VM (the fatal hook's arg) */
	/*
	 * Per page: its slot while PS_SWAPPED (allocated with gm). Written by
	 * the page's owner only, with relaxed atomic stores: the ledger, the
	 * read-ahead and lazy restore look at slots of pages they do not own
	 * (relaxed loads, checked again once they own the page).
	 */
	uint64_t *swap_slot;
	/*
	 * A lazy restore's image (mem/lazy.h): pages not fetched yet are
	 * PS_SWAPPED with a slot of MEM_SLOT_IMAGE | their index, served by
	 * these hooks as host swap's slots are by gm->swap's.
	 */
	const struct mem_swap_hooks *image; /* NULL: none (set before the VM runs) */
	void *image_arg;
	struct mem_lazy *lazy;		/* its prefetcher and figures (lazy.c) */
	struct {			/* this VM's swap figures (atomic) */
		uint64_t outs, faults, readahead;
		uint64_t hist[16];	/* MEM_SWAP_HIST: fault service time, log2 us */
	} swapc;
	struct {			/* read-ahead streams (txn.c; relaxed atomics: a hint) */
		uint64_t next;		/* page after the last run read back */
		uint64_t win;		/* pages the next in-order touch reads */
		uint64_t used;		/* swap_ra_clock when it last matched or began */
	} swap_ra[MEM_SWAP_RA_STREAMS];
	uint64_t swap_ra_clock;		/* counts swap-ins (atomic) */
	int prot;			/* of every mapping of guest pages (PROT_EXEC under thread) */
	uint8_t *phys_base;		/* host address of guest-physical 0 */
	uint64_t phys_top;		/* end of the guest-physical span */
	uint64_t reserve_start;		/* the VM's reservation, guard gaps included */
	uint64_t reserve_len;
	bool keep_place;		/* mem_keep_place: its place stays taken after destroy */
	/* The content corpus (corpus.c): set before the VM runs, then immutable. */
	char *corpus_path;		/* NULL: none */
	uint64_t corpus_bytes, corpus_hash;
};

/*
 * Page idx, in state st (ZERO, BALLOONED, REPORTED: dropped), was seen in
 * memory: the guest wrote it since, and the kernel filled the hole without
 * a fault kvmem sees. Make it the VM's own page again (PS_ANON), so the
 * mechanisms can take it again. The page is claimed first and its pagemap
 * entry read again while it is held: one dropped anew since the caller
 * looked (the same state again, and no longer in memory) keeps its state.
 * True when it became the VM's own.
 */
bool mem_catch_up(struct gm *gm, uint64_t idx, enum ps_state st);

/*
 * Why a page is write-protected besides a transaction's claim (PS_BUSY).
 * Only whoever owns the page (PS_BUSY) adds a reason, so an owner that
 * decided to lift a protection for lack of reasons is never overtaken by a
 * reason it did not see; anyone may withdraw one (MEM_WP_LINGER).
 */
#define MEM_WP_SAMPLE 0x1	/* working-set sampling: released at the first write */
/*
 * Dirty tracking: the page is clean since tracking started or its last
 * collect. Its first write records it (gm->guest_dirty) and withdraws the
 * reason; the collect arms it again. Unlike a sample it survives a change of
 * backing: the content is the same, only what holds it changed.
 */
#define MEM_WP_TRACK 0x2
#define MEM_WP_REASONS (MEM_WP_SAMPLE | MEM_WP_TRACK)
/*
 * Not a reason: a reason was withdrawn while someone held the page, so its
 * protection may outlive it until the next write fault or claim lifts it.
 * Such a fault is expected, not a stray protection.
 */
#define MEM_WP_LINGER 0x80
/* Not a reason either: the guest wrote the page while it was sampled (the sampler reads it). */
#define MEM_WP_WRITTEN 0x40

/*
 * A slot with this bit is a page of the VM's snapshot image, not of host
 * swap (whose slots are file slots, or pool handles with bit 63).
 */
#define MEM_SLOT_IMAGE (1ULL << 62)

/* Registration modes are kept per chunk of this many pages (2 MiB). */
#define MEM_CHUNK_PAGES 512ULL
#define MEM_CHUNK_MISSING 0x1	/* registered for MISSING faults too */

/* /proc/self/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst). */
#define PM_PRESENT (1ULL << 63)
#define PM_SWAP (1ULL << 62)
#define PM_FILE (1ULL << 61)
#define PM_UFFD_WP (1ULL << 57)
#define PM_MMAP_EXCLUSIVE (1ULL << 56)
#define PM_PFN_MASK ((1ULL << 55) - 1)
#define PM_SWAP_TYPE 0x1fULL	/* low 5 bits of a swapped entry: the swap type */

/* Host address of page index idx. */
uint8_t *mem_page_hva(const struct gm *gm, uint64_t idx);
/* Register [hva, hva+len) with gm's userfaultfd in the UFFDIO_REGISTER_MODE_* mode. */
int mem_uffd_register(struct gm *gm, void *hva, uint64_t len, uint64_t mode);
/* [idx, idx + n) is non-empty and lies in one region (host addresses contiguous). */
bool mem_run_ok(const struct gm *gm, uint64_t idx, uint64_t n);
/*
 * A write fault (wp) or MISSING fault on page idx of gm at host address
 * page, dispatched by the page's state (txn.c). Returns what it was, for
 * the userfaultfd service's counters.
 */
enum mem_fault {
	MEM_FAULT_OWNER,	/* a transaction holds the page: it wakes the access */
	MEM_FAULT_SAMPLE,	/* the first write to a sampled page: counted, released */
	MEM_FAULT_TRACK,	/* the first write to a tracked page: recorded, released */
	MEM_FAULT_STRAY,	/* protected for no reason: released, counted */
	MEM_FAULT_STALE,	/* resolved already (by the time it was read): woken */
	MEM_FAULT_ZERO_FILL,	/* a window's zero page touched: a page of zeros of its own */
	MEM_FAULT_ZERO_PAGE,	/* a hole of a MISSING chunk: the zero page */
	MEM_FAULT_SWAP_IN,	/* a swapped page: read back and copied in */
	MEM_FAULT_SWAP_PENDING,	/* a swapped page being read: its completion wakes the access */
	MEM_FAULT_UNSERVED,	/* a swapped page that cannot be read back: its VM stops */
};
enum mem_fault mem_fault(struct gm *gm, uint64_t idx, void *page, bool wp);
/*
 * The read a `submit` hook started for the fault on page idx ended with
 * ret (0, or -errno): copy its n pages in from buf and wake the access, or
 * stop the VM (the fault dispatcher's second half, txn.c).
 */
enum mem_fault mem_swap_in_done(struct gm *gm, uint64_t idx, uint64_t n, void *page,
				const void *buf, int ret, uint64_t t0);
/*
 * Read [gpa, gpa + len) of RAM (checked by the caller) without swapping in:
 * a swapped page's content is read from its slot (txn.c). 0, or -EIO.
 */
int mem_read_swapped(const struct gm *gm, gpa_t gpa, void *buf, size_t len);

/*
 * Fetch the image's pages of [idx, idx + n) (n <= MEM_SWAP_READAHEAD, one
 * region) that are still its own (PS_SWAPPED with their image slot), from
 * idx on until the first that is not: read, copied in, the VM's own. The
 * pages fetched (0: idx is not the image's), or -errno (the image could not
 * give them: its fatal hook was told). txn.c.
 */
int64_t mem_image_fetch(struct gm *gm, uint64_t idx, uint64_t n);
/* Pages of a lazy restore's image not fetched yet (0: none). lazy.c. */
uint64_t mem_lazy_left(const struct gm *gm);

/* Whether page idx's VMA maps a store frame (framemap bit). */
static inline bool mem_frame_mapped(const struct gm *gm, uint64_t idx)
{
	return __atomic_load_n(&gm->framemap[idx / 64], __ATOMIC_ACQUIRE) & (1ULL << (idx % 64));
}

static inline void mem_set_frame_mapped(struct gm *gm, uint64_t idx, bool on)
{
	if (on)
		__atomic_fetch_or(&gm->framemap[idx / 64], 1ULL << (idx % 64), __ATOMIC_RELEASE);
	else
		__atomic_fetch_and(&gm->framemap[idx / 64], ~(1ULL << (idx % 64)), __ATOMIC_RELEASE);
}

/*
 * The guest used page idx after all (a swapped page touched): its chunk is
 * young, and one use hotter (mem/access.h).
 */
static inline void mem_chunk_touched(struct gm *gm, uint64_t idx)
{
	uint64_t c = idx / MEM_CHUNK_PAGES;
	uint8_t h = __atomic_load_n(&gm->chunk_hits[c], __ATOMIC_RELAXED);

	__atomic_store_n(&gm->chunk_age[c], 0, __ATOMIC_RELAXED);
	while (h < UINT8_MAX && !__atomic_compare_exchange_n(&gm->chunk_hits[c], &h, h + 1, false,
							     __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

/* Region holding gpa, or NULL. */
const struct mem_ram_region *mem_find_region(const struct gm *gm, gpa_t gpa);

#endif
