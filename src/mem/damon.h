/* SPDX-License-Identifier: MIT */
/*
 * DAMON, the kernel's data access monitor, as the source of chunk ages
 * (mem/access.h): one kdamond per host, monitoring this process with the
 * fvaddr operations (fixed target regions: each VM's RAM, nothing else of
 * the VMM), read through a DAMOS "stat" scheme's tried regions.
 *
 * DAMON's sysfs is machine-wide and has no ownership: writing nr_kdamonds
 * rebuilds every kdamond (and fails while any runs). So a host only ever
 * takes a stopped kdamond that no one configured, or one a kvmem host left
 * (claimed with a lock file in /run/kvmem, root's alone), and creates
 * kdamonds only where there are none;
 * another user's kdamond, running or not, is never touched. Where none can
 * be had (no DAMON, no fvaddr, no root, every kdamond someone else's) it is
 * unavailable, with the reason.
 */
#ifndef KVMEM_MEM_DAMON_H
#define KVMEM_MEM_DAMON_H

#include <stdint.h>

#include "mem/gm.h"

struct mem_damon;

/* 0, or -errno with *why a sentence for the log (DAMON is then not used). */
int mem_damon_open(struct mem_damon **out, const char **why);
/* Stops the kdamond and gives it up. */
void mem_damon_close(struct mem_damon *d);

/*
 * Monitor gm's RAM (until mem_damon_remove) and give it ages at each
 * update. DAMON busy with another user's command is no error: the next
 * update that finds it free hands the kdamond its regions.
 */
int mem_damon_add(struct mem_damon *d, struct gm *gm);
void mem_damon_remove(struct mem_damon *d, struct gm *gm);

/*
 * Read the kdamond's regions and add what they say to every monitored VM's
 * chunks (mem_access_seen: a chunk under a region accessed in the last
 * aggregation is used, as often as the region's count; under an idle one,
 * idle as long as the region). Blocks for about one aggregation interval.
 * Returns the bytes seen accessed, or -errno: -EBUSY when DAMON stayed busy
 * with another user's command (one at a time, machine-wide), this update
 * then reading nothing and the next one trying again.
 */
int64_t mem_damon_update(struct mem_damon *d);

struct mem_damon_stats {
	int kdamond;		/* its index under /sys/kernel/mm/damon/admin/kdamonds */
	int pid;		/* its kernel thread */
	uint64_t cpu_ns;	/* that thread's CPU time */
	uint64_t regions;	/* regions at the last update */
	uint64_t updates;
};
void mem_damon_stats(struct mem_damon *d, struct mem_damon_stats *out);

#endif
