/* SPDX-License-Identifier: MIT */
/*
 * Split virtqueues, device side (virtio 1.2 §2.7), built only on the gm_*
 * API. Every ring index, ring entry and descriptor is copied out of guest
 * RAM and validated before use, and no host pointer outlives a call. A
 * driver that breaks a ring rule (a loop, a buffer outside RAM, an avail
 * index that runs ahead, a bad indirect table, ...) makes virtq_pop fail
 * with a reason in virtq_error(); the queue then stays broken and the
 * transport puts the device into DEVICE_NEEDS_RESET.
 *
 * Threading: a virtq has no lock. One thread at a time uses it: the
 * device's worker, under the transport's lock (see virtio_mmio.h).
 */
#ifndef KVMEM_CORE_VIRTQ_H
#define KVMEM_CORE_VIRTQ_H

#include <stdbool.h>
#include <stdint.h>

#include "core/log.h"
#include "mem/gm.h"

/* Largest queue we accept, and the most buffers one chain may carry. */
#define VIRTQ_MAX_SIZE 1024
#define VIRTQ_CHAIN_MAX 1024

/* Descriptor and ring flags (virtio 1.2 §2.7.5, §2.7.6, §2.7.8). */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY 1

/* Transport-level feature bits (virtio 1.2 §6) that this ring code implements. */
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32

/* One guest buffer of a chain; `write` means device-writable. */
struct virtq_buf {
	gpa_t gpa;
	uint32_t len;
	bool write;
};

/*
 * A popped chain: the device-readable buffers come first (nr_out of them),
 * then the device-writable ones. Every buffer of non-zero length lies
 * entirely in guest RAM. Large (VIRTQ_CHAIN_MAX entries): allocate it once
 * per device, not on the stack.
 */
struct virtq_chain {
	uint16_t head;		/* descriptor index to hand back with virtq_push */
	unsigned int nr;	/* buffers in buf[] */
	unsigned int nr_out;	/* device-readable buffers, buf[0 .. nr_out) */
	uint64_t out_bytes;	/* total length of the readable buffers */
	uint64_t in_bytes;	/* total length of the writable buffers */
	struct virtq_buf buf[VIRTQ_CHAIN_MAX];
};

struct virtq {
	struct gm *gm;		/* guest RAM, borrowed */
	uint16_t size;		/* QueueNum: a power of 2 */
	gpa_t desc;		/* descriptor table */
	gpa_t avail;		/* driver area */
	gpa_t used;		/* device area */
	bool indirect;		/* VIRTIO_F_INDIRECT_DESC negotiated */
	bool event_idx;		/* VIRTIO_F_EVENT_IDX negotiated */
	uint16_t last_avail;	/* next avail ring slot the device consumes */
	uint16_t used_idx;	/* the device's copy of used->idx */
	uint16_t signalled_used; /* used_idx at the last interrupt decision */
	bool signalled_valid;	/* signalled_used is meaningful */
	bool broken;		/* a ring rule was broken: stop using the queue */
	char err[448];		/* why it is broken */
};

/*
 * Validate a queue the driver just enabled (QueueReady = 1) and set `vq` up
 * to use it: size a power of 2 no larger than VIRTQ_MAX_SIZE, the three
 * areas aligned (16, 2, 4 bytes) and inside guest RAM. `features` are the
 * negotiated ones. 0, or -EINVAL with the reason in virtq_error() (the
 * queue is then broken).
 */
MUST_CHECK int virtq_init(struct virtq *vq, struct gm *gm, uint16_t size, gpa_t desc,
			  gpa_t avail, gpa_t used, uint64_t features);

/*
 * Take the next available chain. 0 with `chain` filled; -EAGAIN when the
 * driver has made nothing new available; -EINVAL (or -EFAULT) when the
 * driver broke the ring, with the reason in virtq_error(): the queue is then
 * broken and every later call fails with -EIO.
 */
MUST_CHECK int virtq_pop(struct virtq *vq, struct virtq_chain *chain);

/*
 * Return chain `head` to the driver with `len` bytes written to its
 * device-writable buffers. The used element is written before the used
 * index is published. 0, -EIO on a broken queue, or -EINVAL for a head
 * outside the ring (a device bug: the ring is left untouched).
 */
MUST_CHECK int virtq_push(struct virtq *vq, uint16_t head, uint32_t len);

/*
 * After one or more pushes: whether the driver wants a used-buffer
 * notification now (VIRTQ_AVAIL_F_NO_INTERRUPT, or used_event with
 * VIRTIO_F_EVENT_IDX, virtio 1.2 §2.7.7 and §2.7.10).
 */
bool virtq_should_interrupt(struct virtq *vq);

/* True when the driver made buffers available that virtq_pop has not taken. */
bool virtq_has_avail(struct virtq *vq);

bool virtq_is_broken(const struct virtq *vq);
/* The reason the queue broke, or "" while it is fine. */
const char *virtq_error(const struct virtq *vq);

#endif
