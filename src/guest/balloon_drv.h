/* SPDX-License-Identifier: MIT */
/*
 * The kvmem guest's virtio-balloon driver (virtio 1.2 §5.5), polled.
 *
 * It follows the device's target (config num_pages: pages the balloon should
 * hold) by inflating from free pages and deflating back, keeps one buffer of
 * memory statistics in the stats queue, reports free 4 MiB chunks of the
 * page allocator (free page reporting), and gives balloon pages back when the
 * allocator runs out (deflate-on-OOM, through palloc_reclaim()).
 *
 * Who runs it: the guest takes no interrupts and has no threads, so the
 * driver's service routine is the runtime's poll function (rt_set_poll):
 * whichever vCPU next sleeps (rt_sleep_ns: idle loops, the rate limiter,
 * job waits) or passes a workload service point (rt_poll in the fill and
 * verify loops) runs it, under a trylock, at most every few milliseconds.
 * Each run does a bounded amount of work (one MMIO read when idle), so a
 * target change is seen within ~20 ms whatever the workload does.
 *
 * Command line:
 *   kvmem.balloon=off            no balloon driver (the device stays unused)
 *   kvmem.balloon.report=off     no free page reporting
 *   kvmem.balloon.inflate=off    never inflate (a driver that ignores the
 *                                host's targets: tests of the host policy)
 *   kvmem.balloon.stats=off      no statistics queue
 *   kvmem.balloon.hostile=CASE   at boot, submit a malformed request of
 *                                kind CASE (loop, long, oob, wrap, dir,
 *                                indirect-oob, indirect-nested, avail-jump,
 *                                badlen, or all of them in turn), print
 *                                "kvmem-balloon: hostile CASE -> needs-reset"
 *                                or "-> survived", reset the device; then
 *                                run normally
 *   kvmem.balloon.hostile.live=CASE   the same on the running device, each
 *                                time the balloon holds a non-zero target:
 *                                exercises recovery with pages in the balloon
 *
 * Console lines: "kvmem-balloon: features 0x..." (negotiated),
 * "kvmem-balloon: target T MiB actual A MiB" when the balloon reaches a new
 * target (balloon sizes, as the config's num_pages and actual: the guest
 * keeps RAM minus these), "... no free memory to inflate" when it cannot,
 * "kvmem-balloon: deflate-on-oom N pages", "kvmem-balloon: reported N MiB"
 * after each burst of free page reports, "kvmem-balloon: device needs reset,
 * reinitialising".
 *
 * Policy details: inflation leaves FREE_RESERVE pages (2 MiB) free and
 * pauses for a second after a deflate-on-OOM, so the balloon and a workload
 * that needs memory do not take the same pages back and forth.
 */
#ifndef KVMEM_GUEST_BALLOON_DRV_H
#define KVMEM_GUEST_BALLOON_DRV_H

#include <stdbool.h>
#include <stdint.h>

#include "abi.h"

/*
 * balloon_init - find the balloon device, run the hostile cases if asked,
 * start the driver and install its poll function and palloc reclaimer.
 * vCPU 0, after palloc_init() and before the workload. Returns 0 when the
 * driver runs, -ENOENT when there is no device or kvmem.balloon=off, or
 * another -errno if the device could not be started (the guest goes on
 * without a balloon). A bad kvmem.balloon.* value powers off with
 * RT_EXIT_USAGE.
 */
int balloon_init(const struct abi_boot_params *bp);

/* True when the driver runs the device. Any vCPU. */
bool balloon_is_running(void);

/* Pages the balloon holds (acknowledged by the device). Any vCPU. */
uint64_t balloon_pages(void);

/*
 * True when the balloon holds pages and is not growing any more: it reached
 * the device's target, or there is no free memory left to take. Any vCPU.
 */
bool balloon_is_settled(void);

#endif
