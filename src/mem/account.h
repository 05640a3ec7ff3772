/* SPDX-License-Identifier: MIT */
/*
 * Where guest memory is and what each mechanism saves: every page of every
 * VM in exactly one place, so that per VM and per host
 *
 *     configured = resident + sum of saved_bytes[source]
 *     resident   = private + shared + compressed
 *
 * holds exactly, at every reading.
 *
 * Resident memory does not move when a VM merely reads a shared page: a
 * page mapped onto a shared frame (the dedup store's, or a page the
 * kernel's KSM merged) is never the VM's own, whether its page table maps it
 * yet or not. Each frame costs one page, counted once at host level and
 * split among the VMs that map it by this rule: the frame's page is charged
 * in equal parts to the m VMs mapping it (1/m each: `shared`); the other
 * VMs' parts are what sharing across VMs saves it ((m-1)/m:
 * `shared_across`); each further page of the same VM on the same frame is
 * what sharing inside the VM saves (`shared_within`). Summed over the VMs
 * this is the host's: one page per frame resident, k - m pages saved within
 * and m - 1 across for a frame with k mappings from m VMs. The host's
 * figures are counted exactly; a VM's 1/m parts are rounded to bytes.
 *
 * The ledger walks every VM's page states and /proc/self/pagemap at once
 * (sharing across VMs needs all of them), at most once per the age its
 * readers accept; it has a lock and a VM list of its own, so the policy
 * (which reads it during a pass) and the stats never wait on each other's
 * locks. Frames of the dedup store are named by its slots, through a hook
 * the engine sets (mem_ledger_set_frames); KSM's by their PFN.
 */
#ifndef KVMEM_MEM_ACCOUNT_H
#define KVMEM_MEM_ACCOUNT_H

#include <stddef.h>
#include <stdint.h>

#include "core/log.h"
#include "mem/gm.h"

/* Where a page that costs the host no page of memory is. */
enum mem_saving {
	MEM_SAVED_UNTOUCHED,	 /* never written: a hole, or the kernel's zero page */
	MEM_SAVED_ZERO,		 /* held zeros and was dropped */
	MEM_SAVED_SHARED_WITHIN, /* a further page of this VM on a frame it maps already */
	MEM_SAVED_SHARED_ACROSS, /* the other VMs' parts of the frames it shares with them */
	MEM_SAVED_BALLOON,	 /* given to the balloon */
	MEM_SAVED_REPORTED,	 /* reported free by the guest */
	MEM_SAVED_COMPRESSED,	 /* in the compressed pool: a page less what it takes there */
	MEM_SAVED_SWAPPED,	 /* in a swap file (kvmem's, or the kernel's) */
	MEM_SAVED_NOT_RESTORED,	 /* still in its snapshot file (a lazy restore) */
	MEM_NR_SAVED,
};

/* The JSON names of enum mem_saving. */
extern const char *const mem_saving_names[MEM_NR_SAVED];

struct mem_usage {
	uint64_t configured_bytes;
	uint64_t resident_bytes;   /* private + shared + compressed */
	uint64_t private_bytes;	   /* its own pages in memory */
	uint64_t shared_bytes;	   /* its parts of the frames it maps (host: the frames) */
	uint64_t compressed_bytes; /* what its pages in the compressed pool take there */
	uint64_t saved_bytes[MEM_NR_SAVED];
	uint64_t frames;	   /* distinct frames it maps */
};

/*
 * The dedup store's frame of each of gm's pages idx[0..n): keys[i] is its
 * slot, or UINT64_MAX when the page is not mapped onto a frame now. 0 or
 * -errno (the pages then count as private).
 */
typedef int (*mem_frame_keys_fn)(void *arg, struct gm *gm, const uint64_t *idx, size_t n,
				 uint64_t *keys);

struct mem_ledger;

/*
 * How old figures its readers (the policy, the stats) accept: a walk costs
 * ~10 ms per GiB of guest RAM, too much for every request of a client
 * polling fast.
 */
#define MEM_LEDGER_MAX_AGE_NS 200000000ULL

MUST_CHECK int mem_ledger_create(struct mem_ledger **out);
void mem_ledger_destroy(struct mem_ledger *l);
/* Name the dedup store's frames (before the VMs come; NULL: no store). */
void mem_ledger_set_frames(struct mem_ledger *l, mem_frame_keys_fn fn, void *arg);
/* Account gm from now on, until mem_ledger_remove (before gm goes). 0 or -ENOMEM. */
MUST_CHECK int mem_ledger_add(struct mem_ledger *l, struct gm *gm);
void mem_ledger_remove(struct mem_ledger *l, struct gm *gm);

/*
 * Figures no older than max_age_ns (walking every VM when they are): for
 * each of gms[0..n) in vm[i] (zero for a gm the ledger does not hold), and
 * the host's in *host (NULL: not wanted); all from one walk. 0 or -errno
 * (the last figures then, if any).
 */
int mem_ledger_read(struct mem_ledger *l, uint64_t max_age_ns, struct gm *const *gms,
		    unsigned int n, struct mem_usage *vm, struct mem_usage *host);
/* One VM's resident bytes, as mem_ledger_read: the policy's measure. */
uint64_t mem_ledger_resident(struct mem_ledger *l, uint64_t max_age_ns, struct gm *gm);

#endif
