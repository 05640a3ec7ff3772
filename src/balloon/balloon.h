/* SPDX-License-Identifier: MIT */
/*
 * The virtio-balloon device (virtio 1.2 §5.5, device ID 5) on the
 * virtio-mmio transport. It executes a target that someone else chooses
 * (the control socket by hand, or the memory policy): the guest gives pages
 * to the balloon (inflate), takes them back (deflate), reports free pages
 * (free page reporting), and sends memory statistics (stats queue), and the
 * device drops the pages from the host at once through balloon_mem_ops.
 *
 * Features offered: VIRTIO_F_VERSION_1 (plus the transport's
 * INDIRECT_DESC and EVENT_IDX), MUST_TELL_HOST, STATS_VQ, DEFLATE_ON_OOM,
 * PAGE_REPORTING. Queues are numbered as Linux's virtio_mmio driver does:
 * consecutively over the queues that exist with the negotiated features
 * (inflateq 0, deflateq 1, then statsq if STATS_VQ, then reporting_vq if
 * PAGE_REPORTING; FREE_PAGE_HINT is never offered). So with both features
 * reporting_vq is queue 3, and queue 2 without STATS_VQ.
 *
 * Threads: guest requests are processed on the device's worker thread; the
 * public functions below may be called from any thread. balloon_destroy only
 * once no vCPU runs. Lock order: the transport's device lock, then
 * balloon->lock (which guards the counters and the config fields).
 */
#ifndef KVMEM_BALLOON_BALLOON_H
#define KVMEM_BALLOON_BALLOON_H

#include <assert.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "balloon/balloon_mem.h"
#include "core/log.h"
#include "mem/gm.h"

struct vm;
struct virtio_dev;
struct balloon;

#define BALLOON_DEVICE_ID 5

/* Feature bits, virtio 1.2 §5.5.3. */
#define VIRTIO_BALLOON_F_MUST_TELL_HOST 0
#define VIRTIO_BALLOON_F_STATS_VQ 1
#define VIRTIO_BALLOON_F_DEFLATE_ON_OOM 2
#define VIRTIO_BALLOON_F_FREE_PAGE_HINT 3
#define VIRTIO_BALLOON_F_PAGE_POISON 4
#define VIRTIO_BALLOON_F_PAGE_REPORTING 5

/* Inflate/deflate PFNs are 32-bit numbers of 4 KiB frames, whatever the guest page size. */
#define BALLOON_PFN_SHIFT 12
#define BALLOON_PAGE_SIZE (1ULL << BALLOON_PFN_SHIFT)

/* QueueNumMax of every balloon queue (Linux needs >= 32 on reporting_vq). */
#define BALLOON_QUEUE_SIZE 256

/* Config space, virtio 1.2 §5.5.4 (little-endian). */
struct virtio_balloon_config {
	uint32_t num_pages;		/* device: pages the balloon should hold */
	uint32_t actual;		/* driver: pages the balloon holds */
	uint32_t free_page_hint_cmd_id;	/* FREE_PAGE_HINT only: always 0 here */
	uint32_t poison_val;		/* PAGE_POISON only: always 0 here */
};
static_assert(sizeof(struct virtio_balloon_config) == 16, "virtio 1.2 §5.5.4 layout");
#define BALLOON_CFG_NUM_PAGES 0
#define BALLOON_CFG_ACTUAL 4

/*
 * Statistics tags, virtio 1.2 §5.5.6.3 (0-9) and the later spec/Linux
 * additions (10-15). One stat is a packed { le16 tag; le64 val; }.
 */
enum balloon_stat_tag {
	BALLOON_S_SWAP_IN = 0,		/* bytes */
	BALLOON_S_SWAP_OUT = 1,		/* bytes */
	BALLOON_S_MAJFLT = 2,		/* count */
	BALLOON_S_MINFLT = 3,		/* count */
	BALLOON_S_MEMFREE = 4,		/* bytes */
	BALLOON_S_MEMTOT = 5,		/* bytes */
	BALLOON_S_AVAIL = 6,		/* bytes */
	BALLOON_S_CACHES = 7,		/* bytes */
	BALLOON_S_HTLB_PGALLOC = 8,	/* count */
	BALLOON_S_HTLB_PGFAIL = 9,	/* count */
	BALLOON_S_OOM_KILL = 10,	/* count */
	BALLOON_S_ALLOC_STALL = 11,	/* count */
	BALLOON_S_ASYNC_SCAN = 12,	/* bytes */
	BALLOON_S_DIRECT_SCAN = 13,	/* bytes */
	BALLOON_S_ASYNC_RECLAIM = 14,	/* bytes */
	BALLOON_S_DIRECT_RECLAIM = 15,	/* bytes */
	BALLOON_S_NR = 16,
};
#define BALLOON_STAT_SIZE 10

/* The latest statistics the guest sent. */
struct balloon_guest_stats {
	uint32_t valid;			/* bit (1 << tag): the last buffer carried that tag */
	uint64_t val[BALLOON_S_NR];	/* as sent: bytes for amounts, counts for events */
	uint64_t updated_ns;		/* CLOCK_MONOTONIC of the last buffer, 0 = never */
	uint64_t updates;		/* stats buffers received */
};

struct balloon_stats {
	/* Guest memory view (RAM minus the balloon), as QEMU's "actual". */
	uint64_t target_bytes;		/* what the guest should keep: RAM - num_pages */
	uint64_t actual_bytes;		/* what it keeps per the driver: RAM - actual */
	/* Balloon view (the virtio config fields in bytes). */
	uint64_t balloon_target_bytes;	/* num_pages * 4 KiB */
	uint64_t balloon_actual_bytes;	/* actual * 4 KiB, written by the driver */
	uint64_t ram_bytes;		/* guest RAM */
	/* Counters since create. */
	uint64_t inflates;		/* inflate requests (chains) completed */
	uint64_t deflates;		/* deflate requests completed */
	uint64_t inflated_pages;	/* PFNs dropped by inflates */
	uint64_t deflated_pages;	/* PFNs returned by deflates */
	uint64_t oom_deflated_pages;	/* deflated while the target asked for more (deflate-on-OOM) */
	uint64_t reports;		/* free page reporting requests completed */
	uint64_t reported_ranges;	/* ranges dropped by reporting */
	uint64_t reported_bytes;	/* bytes dropped by reporting */
	uint64_t bad_descs;		/* requests refused (the device then needs a reset) */
	uint64_t bad_pfns;		/* PFNs outside guest RAM, skipped */
	uint64_t discard_errors;	/* balloon_mem_ops calls that failed */
	uint64_t needs_reset;		/* times the device entered DEVICE_NEEDS_RESET */
	uint64_t stats_requests;	/* stats buffers handed back to ask for fresh ones */
	uint64_t features;		/* negotiated (0 before FEATURES_OK) */
	uint32_t status;		/* virtio device status */
	bool driver_ok;			/* the driver runs the device (DRIVER_OK, no reset pending) */
	struct balloon_guest_stats guest;
};

/* Optional settings; a zeroed struct (or NULL) means the defaults. */
struct balloon_params {
	const char *name;		/* logs, thread name; default "<vm>-balloon" */
	uint32_t stats_interval_ms;	/* ask for fresh stats this often; 0: the default */
	uint64_t features_off;		/* VIRTIO_BALLOON_F_* bits (as 1 << bit) not to offer */
};
#define BALLOON_DEFAULT_STATS_INTERVAL_MS 1000

/*
 * Create a balloon for `vm` (between vm_create and vm_start): the device,
 * its place on the MMIO bus and in the guest's device table
 * (vm_add_device), its KVM ioeventfd/irqfd when available, and its worker
 * thread. `mem` is copied; NULL means the memory manager itself
 * (mem_discard with PS_BALLOONED / PS_REPORTED, mem_undiscard on the VM's
 * gm). The target starts at all of RAM (empty balloon). -EINVAL (bad
 * params, VM already started), -ENOMEM, -ENOSPC (no device slot), or a
 * thread/eventfd errno; on failure nothing is left on the VM.
 */
MUST_CHECK int balloon_create(struct vm *vm, const struct balloon_params *p,
			      const struct balloon_mem_ops *mem, struct balloon **out);
/*
 * The same device over bare guest memory, not on any bus and without a
 * worker: for unit tests, which drive it through balloon_virtio_dev().
 */
MUST_CHECK int balloon_create_on_gm(struct gm *gm, const struct balloon_params *p,
				    const struct balloon_mem_ops *mem, struct balloon **out);
/*
 * Stop the worker and free the device. Only once no vCPU runs (after
 * vm_wait), and before the VM's userfaultfd service stops and before
 * vm_destroy: the worker may be inside a guest-memory access that faults.
 */
void balloon_destroy(struct balloon *b);

/*
 * Ask the guest to keep `target_bytes` of its RAM (QEMU's "balloon SIZE"):
 * the balloon should hold RAM - target (rounded up to 4 KiB; empty when the
 * target is at least RAM). Raises a config-change interrupt once the driver
 * runs. 0, or -ERANGE for a balloon above 2^32 pages.
 */
MUST_CHECK int balloon_set_target(struct balloon *b, uint64_t target_bytes);
/* Change how often fresh guest stats are requested (0: no more requests). */
MUST_CHECK int balloon_set_stats_interval(struct balloon *b, uint32_t interval_ms);
void balloon_get_stats(struct balloon *b, struct balloon_stats *out);

/*
 * The VM's "balloon" object for the control socket and `kvmem stat --json`:
 * target_bytes, actual_bytes, balloon_target_bytes, balloon_actual_bytes,
 * driver_ok, needs_reset, features, "guest" (the stats the guest sent, by
 * balloon_stat_name) and "counters". A new reference, or NULL on ENOMEM.
 */
json_t *balloon_stats_json(const struct balloon_stats *st);

/* Stable lower-case names for JSON and `kvmem stat` ("free_bytes", "major_faults", ...). */
const char *balloon_stat_name(unsigned int tag);
/* True when the stat is an amount of memory in bytes (false: an event count). */
bool balloon_stat_is_bytes(unsigned int tag);

/* The transport device behind the balloon (unit tests drive its registers). */
struct virtio_dev *balloon_virtio_dev(struct balloon *b);

#endif
