/* SPDX-License-Identifier: MIT */
/*
 * Lazy restore: a VM that starts before its memory is in. Its pages with
 * content start where a swapped page is, in a store that can give them back
 * on touch: here the VM's snapshot image (PS_SWAPPED, each with its image
 * slot, its chunk registered for MISSING faults). A guest touch is a fault
 * served as a swap-in is (with its read-ahead), and a prefetcher thread
 * fetches the rest in order meanwhile, each page through the same
 * ownership (the page state's compare-and-swap), so a touch and the
 * prefetch never both copy a page, and a page the guest has written since
 * is never fetched again. A page the guest gives up (balloon, reporting)
 * before it was fetched is never read. Every drop path already knows a
 * swapped page, so none needs to know about images.
 *
 * Chosen over mapping the image MAP_PRIVATE: the mapping would make every
 * page a file page, which each drop path (zero reclaim, the balloon, swap)
 * would have to remap first, as it does a shared frame; served through
 * userfaultfd the pages are private memory from their first touch, and
 * nothing else changes. A first touch costs a fault (~60 us here); the
 * prefetcher is what makes that rare.
 */
#ifndef KVMEM_MEM_LAZY_H
#define KVMEM_MEM_LAZY_H

#include <stdbool.h>
#include <stdint.h>

#include "mem/gm.h"

/* Where the pages come from: the owner's (a snapshot file's reader). */
struct mem_image_ops {
	/* Pages [idx, idx + n) into buf, checked: 0, or -errno (-EBADMSG: corrupt). */
	int (*read)(void *arg, uint64_t idx, uint64_t n, void *buf);
	/* A page cannot be had: the VM must stop (why: the reason, for its log). */
	void (*fatal)(void *arg, const char *why);
	/* The image is no longer read (the VM is gone); may be NULL. */
	void (*close)(void *arg);
};

/*
 * Before the VM runs (its RAM fresh): the pages whose bit is set in `have`
 * (mem_bitmap_words words) are the image's until fetched; ops and arg stay
 * the VM's until mem_lazy_detach. 0, -EBUSY (an image already, or a page
 * not fresh), -ENOSYS (no userfaultfd), -ENOMEM.
 */
int mem_lazy_attach(struct gm *gm, const uint64_t *have, const struct mem_image_ops *ops,
		    void *arg);
/* Start the prefetcher (the VM runs now). 0 or -errno. */
int mem_lazy_start(struct gm *gm);
/* Stop the prefetcher and let the image go (ops->close); at the VM's end. Idempotent. */
void mem_lazy_detach(struct gm *gm);

struct mem_lazy_stats {
	bool lazy;		/* the VM was restored lazily */
	uint64_t pages;		/* the image's pages at the start */
	uint64_t left;		/* still the image's */
	uint64_t prefetched;	/* fetched by the prefetcher (the rest by touches) */
	uint64_t resident_ms;	/* from the start to the last page fetched (0: not yet) */
	bool failed;		/* a page could not be had */
	char error[160];	/* why, when failed */
};
void mem_lazy_get_stats(const struct gm *gm, struct mem_lazy_stats *out);

#endif
