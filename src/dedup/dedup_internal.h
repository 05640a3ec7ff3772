/* SPDX-License-Identifier: MIT */
/*
 * Private to src/dedup: the engine's structures, shared by its files.
 *
 *   hash.c   XXH3-64 of a page (AVX2 when the CPU has it), seeded per host
 *   table.c  the index: stable (frames) and unstable (pages seen this pass)
 *            cds_lfht tables keyed by the page hash
 *   store.c  the frame store: one memfd, slots allocated in extents that
 *            mirror guest page runs, holes punched when a frame dies
 *   scan.c   the engine: VM list, scanner thread, merge, zero drop and
 *            copy-on-write tracking
 *   stats.c  figures, JSON, the control verb, the policy mechanism, KSM mode
 *
 * Guards: "lock" is the engine mutex (struct dedup.lock); the scanner holds
 * it for a whole batch, so everything marked "lock" is also what a batch
 * may change. The index tables are RCU (memb): lookups run in a read-side
 * section, and a removed node is freed with call_rcu.
 */
#ifndef KVMEM_DEDUP_INTERNAL_H
#define KVMEM_DEDUP_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <urcu/urcu-memb.h>
#include <urcu/rculfhash.h>

#include "dedup/dedup.h"
#include "mem/pagecontent.h"
#include "mem/pagestate.h"

#define DEDUP_NO_FRAME UINT32_MAX
#define DEDUP_EXT_PAGES 512	   /* store slots per extent (2 MiB), mirrors 512 gfns */
#define DEDUP_NEAR 16		   /* neighbours looked at to place a new frame */
#define DEDUP_BATCH_PAGES 512	   /* pages per scanner batch (one pagemap read) */
#define DEDUP_SECRET_SIZE 192	   /* XXH3_SECRET_DEFAULT_SIZE */
#define DEDUP_VMA_BYTES 256	   /* kernel memory per mapping, see stats.c */
#define DEDUP_VMA_COUNT_NS 2000000000ULL /* count mappings at most every 2 s */

/* --- hash.c --- */

struct dedup_hasher {
	uint8_t secret[DEDUP_SECRET_SIZE] __attribute__((aligned(64)));
	mem_page_hash_fn fn;	/* XXH3-64 with `secret`, best ISA of this CPU */
	const char *isa;	/* "avx2" or "sse2" */
	uint64_t zero_hash;	/* hash of a zero page */
};

/* Secret from seed; picks the implementation. */
void dedup_hasher_init(struct dedup_hasher *h, uint64_t seed);
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
	struct rcu_head rcu;
};

/* An unstable entry: a page seen with this hash in the current pass. */
struct dedup_unode {
	struct cds_lfht_node node; /* in the unstable table (RCU) */
	uint64_t hash;		   /* immutable */
	struct dedup_vm *vm;	   /* immutable */
	uint64_t idx;		   /* page index in vm, immutable */
	struct rcu_head rcu;
};

struct dedup_index {
	struct cds_lfht *stable;   /* dedup_frame by hash (duplicates allowed) */
	struct cds_lfht *unstable; /* dedup_unode by hash (one per hash) */
	uint64_t nr_stable;	   /* lock */
	uint64_t nr_unstable;	   /* lock */
};

int dedup_index_init(struct dedup_index *ix);
/* Empties both tables (frames are not freed: the store owns them). */
void dedup_index_fini(struct dedup_index *ix);
/* Lookups: inside rcu_read_lock. first/next walk every frame with `hash`. */
struct dedup_frame *dedup_index_stable_first(struct dedup_index *ix, uint64_t hash,
					     struct cds_lfht_iter *it);
struct dedup_frame *dedup_index_stable_next(struct dedup_index *ix, uint64_t hash,
					    struct cds_lfht_iter *it);
struct dedup_unode *dedup_index_unstable_find(struct dedup_index *ix, uint64_t hash);
/* Updates: scanner (lock held), outside or inside a read-side section. */
void dedup_index_stable_add(struct dedup_index *ix, struct dedup_frame *fr);
void dedup_index_stable_del(struct dedup_index *ix, struct dedup_frame *fr);
/* Insert un unless the hash is present: returns un, or the entry already there. */
struct dedup_unode *dedup_index_unstable_add(struct dedup_index *ix, struct dedup_unode *un);
/* Remove and free (call_rcu) one entry / every entry / every entry of vm. */
void dedup_index_unstable_del(struct dedup_index *ix, struct dedup_unode *un);
void dedup_index_unstable_clear(struct dedup_index *ix, const struct dedup_vm *only);

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
	struct dedup_frame **by_slot; /* slot -> frame */
	uint64_t frames;	   /* slots in use */
	uint64_t punch_errors;
};

int dedup_store_init(struct dedup_store *st);
void dedup_store_fini(struct dedup_store *st);
/* Take `slot` if its extent exists and it is free. */
bool dedup_store_take(struct dedup_store *st, uint64_t slot);
/* Take position pos (< EXT) of an empty extent (reused or new). 0, -ENOSPC, -ENOMEM, -errno. */
int dedup_store_take_fresh(struct dedup_store *st, uint32_t pos, uint32_t *slot);
/* Free slot and punch its page out of the memfd. */
void dedup_store_release(struct dedup_store *st, uint32_t slot);
/* Bytes the memfd holds (allocated blocks). */
uint64_t dedup_store_bytes(const struct dedup_store *st);
uint64_t dedup_store_meta_bytes(const struct dedup_store *st);
static inline uint64_t dedup_store_off(uint32_t slot)
{
	return (uint64_t)slot * GM_PAGE_SIZE;
}

/* --- scan.c --- */

struct dedup_vm {
	struct gm *gm;		/* borrowed until dedup_remove_vm */
	struct pagestate *ps;	/* gm's page-state map */
	char *name;
	uint64_t nr_pages;
	uint32_t *sum;		/* low half of the hash at the last visit, 0 = none (lock) */
	uint32_t *frame;	/* slot of the frame the page maps, or DEDUP_NO_FRAME (lock) */
	uint32_t *win_ext;	/* per DEDUP_EXT_PAGES window: extent mirroring it (lock) */
	uint64_t mapped;	/* pages of this VM mapped onto frames (lock) */
};

struct dedup {
	pthread_mutex_t lock;	  /* batches, VM list, config, counters */
	pthread_cond_t wake;	  /* stop, config changes, VMs added */
	struct dedup_config cfg;  /* lock */
	struct dedup_vm **vms;	  /* lock */
	unsigned int nr_vms;	  /* lock */
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
	uint64_t pass_vmas_ns;	  /* when mappings were last counted (lock) */
	uint64_t merges_at_count; /* st.merges when they were (lock) */
	uint64_t all_vmas;	  /* the process's mappings then (lock) */
	uint64_t ram_regions;	  /* RAM regions of the VMs then (lock) */
	uint64_t max_map_count;	  /* the kernel's limit as we know it (lock) */
	bool map_full;		  /* max_map_count reached and not raisable (lock) */
	bool map_logged;	  /* ... and said so (lock) */
	double cpu_seconds;	  /* scanner thread CPU (lock) */
	double rate;		  /* recent pages/s (lock) */
};

/* Visit every page of gm's VM once now (policy thread). Pages visited or -ENOENT. */
int64_t dedup_scan_vm(struct dedup *d, struct gm *gm);

/* stats.c: mappings over guest RAM now, and the max_map_count headroom check. */
void dedup_count_vmas(struct dedup *d);
/* True when `more` new mappings fit under vm.max_map_count (raising it if needed). */
bool dedup_map_room(struct dedup *d, uint64_t more);

#endif
