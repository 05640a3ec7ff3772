/* SPDX-License-Identifier: MIT */
/*
 * Content-based page sharing done by the VMM (docs/ARCHITECTURE.md, "Page
 * sharing"): one engine per host scans the private pages of all its VMs,
 * merges pages with identical content onto frames of a frame store (a memfd
 * mapped MAP_PRIVATE, so a guest write is the kernel's copy-on-write, with no
 * exit), drops zero pages, and notices copy-on-write breaks to release
 * frames. Identical guests' windows of 2 MiB are remapped whole onto one
 * store extent, so sharing costs the kernel one mapping per window rather
 * than one per shared page. The scan rate halves after each pass that found
 * nothing to do (down to 1/16), and any change restores it.
 *
 * Threads: dedup_create/destroy, add/remove_vm run on the host's main thread;
 * the scanner thread does all scanning and merging; dedup_configure and the
 * getters may be called from any thread (control socket, stats). The engine
 * lock serialises them against the scanner's batches.
 */
#ifndef KVMEM_DEDUP_DEDUP_H
#define KVMEM_DEDUP_DEDUP_H

#include <jansson.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/log.h"
#include "mem/gm.h"

struct dedup;
struct control;
struct ovc;

#define DEDUP_DEFAULT_PAGES_PER_SEC 524288 /* 2 GiB/s of guest memory (1/16 of it when idle) */
#define DEDUP_DEFAULT_CPU_PERCENT 20.0	   /* of one core */
/*
 * The ranges dedup_configure accepts. Below a tenth of a percent the scanner
 * would sleep a thousand times its CPU time after every batch: "enabled":
 * false is the way to stop it. 2^32 pages/s (16 TiB/s) is no limit at all.
 */
#define DEDUP_MIN_CPU_PERCENT 0.1
#define DEDUP_MAX_PAGES_PER_SEC (1ULL << 32)

/* Scanner tunables: all may change while it runs (dedup_configure). */
struct dedup_config {
	bool enabled;		/* the scanner runs */
	uint64_t pages_per_sec;	/* scan rate limit (pages visited per second), 1 to 2^32 */
	double cpu_percent;	/* CPU budget of the scanner thread, 0.1 to 100 (% of one core) */
	bool windows;		/* remap whole 2 MiB windows when they qualify (else page by page) */
};

/* Figures; names follow /sys/kernel/mm/ksm where the meaning is the same. */
struct dedup_stats {
	uint64_t pages_shared;	 /* frames in use (distinct shared contents) */
	uint64_t pages_sharing;	 /* guest pages mapped onto frames, beyond one per frame */
	uint64_t pages_unshared; /* stable pages no other page matched (last pass) */
	uint64_t pages_volatile; /* pages whose content changed since the previous visit (last pass) */
	uint64_t full_scans;	 /* completed passes over every VM */
	uint64_t pages_scanned;	 /* page visits that hashed a page, cumulative */
	uint64_t zero_pages;	 /* pages dropped as zero by the scanner, cumulative */
	uint64_t cow_breaks;	 /* shared pages the guest wrote (kernel copy-on-write), cumulative */
	uint64_t group_unshares; /* shared pages made private by a change of sharing group, cumulative */
	uint64_t released;	 /* shared pages another mechanism took over (balloon, swap) */
	uint64_t merges;	 /* guest pages mapped onto a frame, cumulative */
	uint64_t merge_races;	 /* merges abandoned: busy page or content changed under protection */
	uint64_t frames_freed;	 /* frames whose last sharer left (hole punched), cumulative */
	uint64_t windows;	 /* 2 MiB windows remapped whole onto a store extent, cumulative */
	uint64_t window_aborts;	 /* window remaps given up (a page was unpopulated or a call failed) */
	uint64_t map_refused;	 /* merges refused: vm.max_map_count could not be raised */
	uint64_t errors;	 /* failed host calls (protect, map, copy) and allocations */
	uint64_t store_bytes;	 /* memory the frame store holds now */
	uint64_t ram_vmas;	 /* host mappings over guest RAM: last count + 2 per merge since */
	uint64_t vma_bytes;	 /* kernel memory per mapping (vm_area_struct and friends) */
	uint64_t kernel_cost_bytes; /* mappings sharing added (ram_vmas - regions) * vma_bytes */
	uint64_t metadata_bytes; /* the engine's own per-page and per-frame tables */
	uint64_t saved_bytes;	 /* pages_sharing * page size (gross) */
	int64_t net_saved_bytes; /* saved - kernel cost - metadata */
	double scan_rate;	 /* pages visited per second, recent */
	uint64_t pages_per_sec_now; /* rate limit now: pages_per_sec, slowed down while idle */
	double cpu_seconds;	 /* scanner thread CPU time */
	uint64_t vms;		 /* VMs scanned */
	struct dedup_config config;
};

/* Create the engine (frame store, index, random hash seed); no thread yet. */
MUST_CHECK int dedup_create(const struct dedup_config *cfg, struct dedup **out);
/* Stops the scanner; every VM must have been removed. */
void dedup_destroy(struct dedup *d);
/* Start the scanner thread. */
MUST_CHECK int dedup_start(struct dedup *d);

/*
 * Scan gm's RAM from now on, as a VM of the sharing group of `salt`
 * (dedup_group_salt). gm must stay valid until dedup_remove_vm returns and
 * have a userfaultfd (mem_enable_uffd): merges write-protect pages.
 */
MUST_CHECK int dedup_add_vm(struct dedup *d, struct gm *gm, const char *name, uint64_t salt);
/* Stop scanning gm and drop its frame references (before its memory is unmapped). */
void dedup_remove_vm(struct dedup *d, struct gm *gm);

/*
 * Sharing groups: pages are shared only between VMs of one group (zero
 * pages are dropped in every group alike), because a page two VMs share is
 * a side channel between them (FLUSH+RELOAD). A group is known by its
 * salt: every content hash of a VM is taken with its group's salt, so the
 * index never pairs the pages of two groups, and a sketch of one group
 * never matches another's. The salt comes from the group's name, the same
 * on every host ("" is the default group, salt 0).
 */
uint64_t dedup_group_salt(const char *name);
/*
 * Put gm (added to d) in the group of `salt`. Its pages on frames leave
 * them (a private copy each, as if the guest wrote them: the frames were
 * its old group's, or are found only by its old group), counted in
 * *unshared. 0, or -ENOENT when gm is not d's. Any thread; d->lock inside.
 */
int dedup_set_group(struct dedup *d, struct gm *gm, uint64_t salt, uint64_t *unshared);

/* Change tunables (validated: -EINVAL). Takes effect before the next batch. */
int dedup_configure(struct dedup *d, const struct dedup_config *cfg);
void dedup_get_config(struct dedup *d, struct dedup_config *out);
void dedup_get_stats(struct dedup *d, struct dedup_stats *out);
/* The stats as a JSON object (new reference). */
json_t *dedup_stats_json(struct dedup *d);
/*
 * The store's frame of each of gm's pages idx[0..n): keys[i] is its slot,
 * or UINT64_MAX when the page is not on a frame now (the memory ledger's
 * mem_frame_keys_fn, arg d). 0, or -ENOENT when gm is not d's.
 */
int dedup_frame_keys(void *d, struct gm *gm, const uint64_t *idx, size_t n, uint64_t *keys);

/*
 * The "dedup" control verb: without arguments it returns the stats; with
 * any of "enabled" (bool, or "on"/"off"), "pages_per_sec", "cpu_percent",
 * "windows" (bool) it reconfigures first.
 */
MUST_CHECK int dedup_register_verbs(struct dedup *d, struct control *c);
/*
 * The verb's request applied to cfg (the current configuration): 1 when it
 * changes something, 0 when it names no tunable, or -EINVAL with
 * "<field> <value>: <problem>" in err (cfg then half changed: drop it).
 */
int dedup_config_from_json(json_t *req, struct dedup_config *cfg, char *err, size_t errlen);
/* Register "share" with the reclaim policy: under pressure, scan that VM now. */
MUST_CHECK int dedup_register_mechanism(struct dedup *d, struct ovc *ovc);

/*
 * Synchronous scanning for tests and the policy: visit up to max_pages pages
 * on the calling thread (RCU-registered), continuing the scanner's cursor.
 * Returns pages visited, or -errno. dedup_scan_pass runs to the end of the
 * current pass (and completes it).
 */
int64_t dedup_scan(struct dedup *d, uint64_t max_pages);
int64_t dedup_scan_pass(struct dedup *d);

/*
 * Snapshot images held by the engine, for clones: many VMs started from one
 * snapshot whose memory is shared from birth. An image's pages with content
 * become frames of the frame store, each at its position in an extent of its
 * own window (2 MiB), so a fresh VM maps a window of the image with one
 * mapping, copy-on-write, exactly as the scanner's window merge leaves
 * identical guests. The frames are in the stable index (other VMs' identical
 * pages merge onto them later) and counted as frames in the stats; a window
 * mapped counts in `windows`, a page mapped in `merges`.
 *
 * Any thread; d->lock is taken inside. One caller at a time per image, and
 * not while gm is being removed (dedup_remove_vm). Every image is freed
 * before dedup_destroy.
 */
struct dedup_image;

/* Pages of one window of an image (2 MiB): dedup_image_add takes at most one, aligned. */
#define DEDUP_IMAGE_WINDOW 512

/*
 * An image of nr_pages pages (page-index space of the VMs it is mapped
 * into), whose frames belong to the sharing group of `salt`. 0 or -errno.
 */
MUST_CHECK int dedup_image_create(struct dedup *d, uint64_t nr_pages, uint64_t salt,
				  struct dedup_image **out);
/*
 * Content of pages [idx, idx + n) of the image (n <= one window, not
 * crossing one): has[i] says whether page idx+i has content (else it reads
 * zeros), data holds n pages. Each page with content becomes a frame (the
 * image holds a reference), placed at its position in its window's extent;
 * a page of zeros is no content (it costs nothing, as the scanner drops
 * such pages). Each page is described once (-EEXIST for a page that has
 * content already), and only before the image is first mapped (-EBUSY
 * after: its frames are in the index then, and other VMs' windows may use
 * its extents' free positions). All or nothing: 0, or -errno with the image
 * as it was.
 */
MUST_CHECK int dedup_image_add(struct dedup *d, struct dedup_image *img, uint64_t idx, uint32_t n,
			       const uint8_t *has, const uint8_t *data);
/*
 * Map every page of the image with content onto its frame in gm, which must
 * be a VM added to d (dedup_add_vm), fresh (its pages untouched holes, or
 * pages dropped as zero) and not running: each window with content is
 * claimed whole (holes held) and ended with one mapping of its extent;
 * pages without content read zeros without memory (a reserved zero slot, as
 * a window merge does). The VM's pages are then PS_SHARED with d's
 * bookkeeping as if the scanner had merged them, so a guest write is a
 * copy-on-write break the scanner notices and releases. *mapped: pages
 * mapped onto frames. 0 or -errno, then nothing of gm is mapped: -EBUSY
 * when a page of the image's range is not fresh (gm then as it was) or is
 * held by another mechanism (windows mapped already are dropped again: they
 * read zeros, PS_ZERO); -ENOENT when gm is not d's; -EINVAL when the image
 * is larger than gm; -ENOSPC when vm.max_map_count leaves no room for a
 * mapping per window; -EXDEV when gm is in another sharing group than the
 * image.
 */
MUST_CHECK int dedup_image_map(struct dedup *d, struct dedup_image *img, struct gm *gm,
			       uint64_t *mapped);
/* Drop the image's own references; frames no VM maps any more are freed. */
void dedup_image_free(struct dedup *d, struct dedup_image *img);

/*
 * Content fingerprints: a bounded sketch of a VM's page contents, the k
 * smallest distinct hashes of the pages it holds in memory (zero pages and
 * pages not in memory left out), keyed by `key` (a key the hosts of a
 * cluster share, so their sketches compare; independent of any engine and
 * of the dedup mode). Two sketches estimate the contents two VMs share:
 * their Jaccard similarity from the k smallest of both together, the union's
 * size from its k-th smallest (README, "Fingerprints"). About 0.3 us a page
 * of hashing plus the pagemap walk; any thread, no lock.
 */
#define DEDUP_SKETCH_K 1024	/* default k */
#define DEDUP_SKETCH_MAX 65536

struct dedup_sketch {
	unsigned int k;		/* asked for */
	unsigned int n;		/* held: min(k, distinct) */
	uint64_t *hashes;	/* n, ascending */
	uint64_t pages;		/* pages hashed */
	uint64_t distinct;	/* distinct contents among them (exact) */
};

/*
 * 0 and *out (free it with dedup_sketch_free), -EINVAL (k 0 or above the
 * max), -errno. The hashes are taken with the salt of gm's sharing group
 * (dedup_group_salt): sketches of VMs that cannot share never match.
 */
MUST_CHECK int dedup_sketch_vm(struct gm *gm, const void *key, size_t key_len, uint64_t salt,
			       unsigned int k, struct dedup_sketch *out);
void dedup_sketch_free(struct dedup_sketch *s);

/*
 * `--dedup ksm`: the host kernel's counters (/sys/kernel/mm/ksm, system-wide)
 * and ksmd's CPU seconds, as the JSON object host stats show in that mode.
 */
json_t *dedup_ksm_stats_json(void);

#endif
