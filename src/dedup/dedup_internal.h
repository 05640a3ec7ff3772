/* SPDX-License-Identifier: MIT */
/*
 * Private to src/dedup: the engine's structures, shared by its files.
 *
 *   hash.c   XXH3-64 of a page (AVX2 when the CPU has it), seeded per host
 *   table.c  the index keyed by the page hash: stable (frames, a cds_lfht)
 *            and unstable (pages seen this pass, scanner-private)
 *   store.c  the frame store: one memfd, slots allocated in extents that
 *            mirror 2 MiB windows of guest pages, holes punched when a
 *            frame dies, zero positions of remapped windows reserved
 *   scan.c   the engine: VM list, scanner thread, merge (windows whole or
 *            page by page), zero drop and copy-on-write tracking
 *   stats.c  figures, JSON, the control verb, the policy mechanism, KSM mode
 *   image.c  a snapshot image's pages held as frames and mapped whole
 *            windows at a time into fresh VMs (clones shared from birth)
 *   sketch.c content fingerprints: bottom-k sketches of a VM's page
 *            hashes, keyed per cluster (no engine needed)
 *
 * Guards: "lock" is the engine mutex (struct dedup.lock); the scanner holds
 * it for a whole batch, so everything marked "lock" is also what a batch
 * may change. The stable table is RCU (memb): lookups run in a read-side
 * section, and a removed frame is freed with call_rcu.
 */
#ifndef KVMEM_DEDUP_INTERNAL_H
#define KVMEM_DEDUP_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <urcu/rculfhash.h>

#include "core/rcu.h"
#include "core/tsan.h"
#include "dedup/dedup.h"
#include "mem/pagecontent.h"
#include "mem/pagestate.h"

#define DEDUP_NO_FRAME UINT32_MAX
#define DEDUP_EXT_PAGES 512	   /* store slots per extent (2 MiB), mirrors 512 gfns */
#define DEDUP_NEAR 16		   /* neighbours looked at to place a new frame */
#define DEDUP_BATCH_PAGES 512	   /* pages per scanner batch (one pagemap read): a window */
#define DEDUP_WINDOW_MIN 16	   /* new merges that make a window worth remapping whole */
#define DEDUP_IDLE_SHIFT_MAX 4	   /* idle passes slow the scan rate down to 1/16 */
#define DEDUP_SECRET_SIZE 192	   /* XXH3_SECRET_DEFAULT_SIZE */
#define DEDUP_VMA_BYTES 256	   /* kernel memory per mapping, see stats.c */
#define DEDUP_VMA_COUNT_NS 2000000000ULL /* count mappings at most every 2 s */
#define DEDUP_VMA_RECOUNT_NS 100000000ULL /* ... or 100 ms after a mapping failed */
#define DEDUP_PACE_MAX_S 1024.0	   /* most the scanner owes: above a batch at 1 page/s */
#ifdef KV_TSAN
/*
 * The store's read-only view (its largest size). ThreadSanitizer leaves the
 * kernel 1.5 TiB at the top of the address space for mappings it places, and
 * a randomised mmap base can leave less than 1 TiB of that free below it: a
 * 1 TiB view would fail there with ENOMEM now and then.
 */
#define DEDUP_STORE_VIEW_BYTES (64ULL << 30)
#else
#define DEDUP_STORE_VIEW_BYTES (1ULL << 40)
#endif

/* --- hash.c --- */

struct dedup_hasher {
	uint8_t secret[DEDUP_SECRET_SIZE] __attribute__((aligned(64)));
	mem_page_hash_fn fn;	/* XXH3-64 with `secret`, best ISA of this CPU */
	const char *isa;	/* "avx2" or "sse2" */
	uint64_t zero_hash;	/* hash of a zero page */
};

/* Secret from seed; picks the implementation. */
void dedup_hasher_init(struct dedup_hasher *h, uint64_t seed);
/* Secret from key material of any length (a key the hosts of a cluster share). */
void dedup_hasher_init_key(struct dedup_hasher *h, const void *key, size_t len);
/* Per-ISA page hashes (hash_avx2.c is built with -mavx2). */
uint64_t dedup_hash_page_sse2(const void *page, const void *secret);
uint64_t dedup_hash_page_avx2(const void *page, const void *secret);

/* --- table.c --- */

struct dedup_vm;

/* A store frame: one shared content. Scanner-owned; freed with call_rcu. */
struct dedup_frame {
	struct cds_lfht_node node; /* in the stable table (RCU) */
	uint64_t hash;		   /* content hash, immutable */
	uint32_t slot;		   /* page index in the store memfd, immutable */
	uint32_t refs;		   /* guest pages mapped onto it (lock) */
	struct kv_rcu_head rcu;	   /* freed through it */
};

/*
 * An unstable entry: a page seen with this hash in the current pass. The
 * unstable index is the scanner's alone (d->lock) and emptied every pass, so
 * it is a plain open-addressing table (linear probing) rather than a cds_lfht:
 * filling a cds_lfht with hundreds of thousands of entries per pass outran
 * its background resize here (lookups of 2-5 us on long chains, 40% of the
 * scanner's time), and it costs a malloc and a call_rcu per entry.
 */
struct dedup_uent {
	uint64_t hash;		/* 0: empty slot (a hash of 0 is stored as 1) */
	uint32_t vm_id;		/* dedup_vm.id, or DEDUP_NO_VM: removed */
	uint32_t idx;		/* page index in that VM */
};

#define DEDUP_NO_VM UINT32_MAX

struct dedup_index {
	struct cds_lfht *stable;   /* dedup_frame by hash (duplicates allowed), RCU */
	uint64_t nr_stable;	   /* lock */
	uint64_t stable_buckets;   /* the size dedup_index_stable_fit last set (lock) */
	struct dedup_uent *unstable; /* ucap slots (lock) */
	uint64_t ucap;		   /* power of two, or 0 (lock) */
	uint64_t uused;		   /* live entries and removed ones (lock) */
	uint64_t nr_unstable;	   /* live entries (lock) */
};

int dedup_index_init(struct dedup_index *ix);
/* Empties both tables (frames are not freed: the store owns them). */
void dedup_index_fini(struct dedup_index *ix);
/* Stable lookups: inside rcu_read_lock. first/next walk every frame with `hash`. */
/* Resize the stable table to its frame count (outside any read-side section). */
void dedup_index_stable_fit(struct dedup_index *ix);
struct dedup_frame *dedup_index_stable_first(struct dedup_index *ix, uint64_t hash,
					     struct cds_lfht_iter *it);
struct dedup_frame *dedup_index_stable_next(struct dedup_index *ix, uint64_t hash,
					    struct cds_lfht_iter *it);
/* Stable updates: scanner (lock held), outside a read-side section. */
void dedup_index_stable_add(struct dedup_index *ix, struct dedup_frame *fr);
void dedup_index_stable_del(struct dedup_index *ix, struct dedup_frame *fr);
/*
 * Unstable index (lock held, no RCU). find: the live entry with `hash` or
 * NULL. add: enter (hash, vm_id, idx) unless `hash` is there; returns the
 * entry with that hash (*added tells which), or NULL without memory. An
 * entry pointer is valid until the next add.
 */
struct dedup_uent *dedup_index_unstable_find(struct dedup_index *ix, uint64_t hash);
struct dedup_uent *dedup_index_unstable_add(struct dedup_index *ix, uint64_t hash,
					    uint32_t vm_id, uint32_t idx, bool *added);
void dedup_index_unstable_del(struct dedup_index *ix, struct dedup_uent *e);
/* Remove every entry, or those of one VM (vm_id != DEDUP_NO_VM). */
void dedup_index_unstable_clear(struct dedup_index *ix, uint32_t vm_id);

/* --- store.c --- */

struct dedup_store {
	int fd;			   /* the memfd holding every frame */
	uint32_t nr_ext;	   /* extents created (slots 0 .. nr_ext * EXT - 1) */
	uint32_t size_ext;	   /* extents covered by the memfd size */
	uint64_t *used;		   /* bit per slot */
	uint16_t *ext_used;	   /* slots in use per extent */
	uint32_t *free_ext;	   /* stack of empty extents (may hold stale entries) */
	uint32_t nr_free_ext;
	uint8_t *on_free;	   /* extent is on free_ext */
	struct dedup_frame **by_slot; /* slot -> frame, or DEDUP_ZERO_RESERVED */
	const uint8_t *map;	   /* read-only view of the whole store (compares) */
	uint64_t frames;	   /* slots holding frames (zero reservations are not frames) */
	uint64_t punch_errors;
};

int dedup_store_init(struct dedup_store *st);
void dedup_store_fini(struct dedup_store *st);
/*
 * A window's zero page at this slot reads the kernel's zero page, or, where
 * memmap cannot tell that page (mem_txn_end_window), the slot itself, a hole:
 * never a frame, never written, never punched.
 */
#define DEDUP_ZERO_RESERVED ((struct dedup_frame *)1)

/* Take `slot` if its extent exists and it is free. */
bool dedup_store_take(struct dedup_store *st, uint64_t slot);
/* Take position pos (< EXT) of an empty extent (reused or new). 0, -ENOSPC, -ENOMEM, -errno. */
int dedup_store_take_fresh(struct dedup_store *st, uint32_t pos, uint32_t *slot);
/* An empty extent for a window, without taking a slot. 0 or -errno. */
int dedup_store_new_extent(struct dedup_store *st, uint32_t *ext);
/* Reserve slot for a window's zero page: true if it is (now) reserved, false if a frame. */
bool dedup_store_reserve_zero(struct dedup_store *st, uint64_t slot);
/* The store page of slot, read-only (valid while the slot is in use). */
static inline const void *dedup_store_page(const struct dedup_store *st, uint32_t slot)
{
	return st->map + (uint64_t)slot * MEM_PAGE_SIZE;
}
/* Free slot and punch its page out of the memfd. */
void dedup_store_release(struct dedup_store *st, uint32_t slot);
/* Bytes the memfd holds (allocated blocks). */
uint64_t dedup_store_bytes(const struct dedup_store *st);
uint64_t dedup_store_meta_bytes(const struct dedup_store *st);
static inline uint64_t dedup_store_off(uint32_t slot)
{
	return (uint64_t)slot * MEM_PAGE_SIZE;
}

/* --- scan.c --- */

struct dedup_vm {
	uint32_t id;		/* index in dedup.vm_by_id, never reused */
	struct gm *gm;		/* borrowed until dedup_remove_vm */
	struct pagestate *ps;	/* gm's page-state map */
	char *name;
	uint64_t nr_pages;
	uint32_t *sum;		/* low half of the hash at the last visit, 0 = none (lock) */
	uint32_t *frame;	/* slot of the frame the page maps, or DEDUP_NO_FRAME (lock) */
	uint32_t *win_ext;	/* per DEDUP_EXT_PAGES window: extent mirroring it (lock) */
	uint64_t mapped;	/* pages of this VM mapped onto frames (lock) */
	uint64_t salt;		/* its sharing group's (dedup_group_salt; lock) */
};

struct dedup {
	pthread_mutex_t lock;	  /* batches, VM list, config, counters */
	pthread_cond_t wake;	  /* stop, config changes, VMs added */
	struct dedup_config cfg;  /* lock */
	struct dedup_vm **vms;	  /* lock */
	unsigned int nr_vms;	  /* lock */
	struct dedup_vm **vm_by_id; /* by dedup_vm.id, NULL once removed (lock) */
	uint32_t nr_ids;	  /* ids handed out (lock) */
	unsigned int cur_vm;	  /* scan cursor: VM (lock) */
	uint64_t cur_idx;	  /* scan cursor: page (lock) */
	struct dedup_hasher hasher; /* immutable after create */
	struct dedup_index ix;
	struct dedup_store store; /* lock */
	pthread_t thread;
	bool running;		  /* thread started (main thread) */
	bool stop;		  /* lock */
	struct dedup_stats st;	  /* counters (lock); derived fields filled on read */
	uint64_t pass_volatile;	  /* pages that changed, this pass (lock) */
	uint64_t pass_new;	  /* pages hashed for the first time, this pass (lock) */
	uint64_t changes_at_pass; /* merges, drops, breaks, releases at the last pass end (lock) */
	unsigned int idle_shift;  /* rate divided by 2^idle_shift after idle passes (lock) */
	uint64_t pass_vmas_ns;	  /* when mappings were last counted (lock) */
	uint64_t maps_added;	  /* mappings merges may have added, an upper bound (lock) */
	uint64_t maps_at_count;	  /* maps_added when they were counted (lock) */
	uint64_t all_vmas;	  /* the process's mappings then (lock) */
	uint64_t ram_regions;	  /* RAM regions of the VMs then (lock) */
	uint64_t max_map_count;	  /* the kernel's limit as we know it (lock) */
	bool map_full;		  /* max_map_count reached and not raisable (lock) */
	bool map_logged;	  /* ... and said so (lock) */
	bool map_recount;	  /* a mapping failed for want of room: count before the next batch */
	double cpu_seconds;	  /* scanner thread CPU (lock) */
	double rate;		  /* recent pages/s (lock) */
};

/*
 * Frame references (lock held, on an RCU-registered thread: the last
 * reference removes the frame from the stable index and frees it with
 * call_rcu). dedup_frame_put drops one reference to the frame in slot;
 * dedup_unref_page forgets that v's page idx maps its frame and drops that
 * page's reference.
 */
void dedup_frame_put(struct dedup *d, uint32_t slot);
void dedup_unref_page(struct dedup *d, struct dedup_vm *v, uint64_t idx);
/*
 * Run fn(arg) on a short-lived RCU-registered thread and wait for it: the
 * host's main thread is no RCU reader, and index updates need one.
 */
void dedup_run_registered(void (*fn)(void *), void *arg);

/* The VM of gm, or NULL (lock). */
struct dedup_vm *dedup_find_vm(struct dedup *d, struct gm *gm);
/* Visit every page of gm's VM once now (policy thread). Pages visited or -ENOENT. */
int64_t dedup_scan_vm(struct dedup *d, struct gm *gm);
/*
 * Seconds of wall time a batch of `pages` that took `cpu_ns` of CPU owes
 * under cfg (the longer of pages / rate and CPU time / budget): finite and at
 * most DEDUP_PACE_MAX_S for any cfg, checked or not.
 */
double dedup_pace_owed(const struct dedup_config *cfg, unsigned int idle_shift, uint64_t pages,
		       uint64_t cpu_ns);

/* stats.c: mappings over guest RAM now, and the max_map_count headroom check. */
void dedup_count_vmas(struct dedup *d);
/* True when `more` new mappings fit under vm.max_map_count (raising it if needed). */
bool dedup_map_room(struct dedup *d, uint64_t more);

#endif
