/* SPDX-License-Identifier: MIT */
/*
 * What the balloon needs from the memory module, as hooks its owner may pass
 * to balloon_create: the balloon never drops host pages by itself (no system
 * calls on guest RAM here), it asks. Without hooks it calls mem_discard and
 * mem_undiscard (mem/reclaim.h), which also move the pages' state
 * (ballooned, reported, anonymous again); unit tests pass fakes that record
 * the calls.
 *
 * Both hooks run on the balloon's worker thread, may sleep, and are given
 * page-aligned, non-empty ranges that lie inside one RAM region.
 */
#ifndef KVMEM_BALLOON_BALLOON_MEM_H
#define KVMEM_BALLOON_BALLOON_MEM_H

#include <stdint.h>

#include "mem/gm.h"

enum balloon_discard_why {
	BALLOON_DISCARD_INFLATE,	/* the guest gave the pages to the balloon */
	BALLOON_DISCARD_REPORT,		/* free page reporting: free now, reusable after the ack */
};

struct balloon_mem_ops {
	/*
	 * Drop the host pages behind [gpa, gpa + len) before the guest is told
	 * the request is done (a reported page may be reused right after the
	 * ack). A later guest access must read zeros, not old data. >= 0 on
	 * success (e.g. pages dropped), or -errno (counted and logged by the
	 * balloon; the request still completes).
	 */
	int (*discard)(void *arg, gpa_t gpa, uint64_t len, enum balloon_discard_why why);
	/*
	 * The guest takes [gpa, gpa + len) back from the balloon (deflate). The
	 * pages stay dropped until touched; must not destroy content the guest
	 * may already have written. >= 0, or -errno.
	 */
	int (*undiscard)(void *arg, gpa_t gpa, uint64_t len);
	void *arg;	/* passed to both, e.g. the VM's struct gm */
};

#endif
