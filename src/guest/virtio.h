/* SPDX-License-Identifier: MIT */
/*
 * The guest's virtio core: a polled driver for modern virtio-mmio devices
 * (virtio 1.2 §4.2.2, register layout version 2) with split virtqueues
 * (§2.7). The kvmem guest takes no interrupts, so drivers poll the used
 * rings; the driver sets VIRTQ_AVAIL_F_NO_INTERRUPT so the device does not
 * bother raising any.
 *
 * Registers are accessed with 32-bit accesses only (§4.2.2.2). Ring memory
 * comes from palloc, is allocated on the first set-up of a queue and kept
 * across device resets (a reset driver sets the same queue up again). The
 * device sees rings and buffers by gpa, the driver writes them through
 * their virtual addresses.
 *
 * Locking: none here. One device, with its queues, is used by one vCPU at a
 * time; the driver on top serialises (the balloon driver's lock).
 */
#ifndef KVMEM_GUEST_VIRTIO_H
#define KVMEM_GUEST_VIRTIO_H

#include <stdbool.h>
#include <stdint.h>

#include "abi.h"
#include "gpa.h"

/* Register offsets, virtio 1.2 §4.2.2 "MMIO Device Register Layout". */
#define VIO_MAGIC_VALUE 0x000
#define VIO_VERSION 0x004
#define VIO_DEVICE_ID 0x008
#define VIO_DEVICE_FEATURES 0x010
#define VIO_DEVICE_FEATURES_SEL 0x014
#define VIO_DRIVER_FEATURES 0x020
#define VIO_DRIVER_FEATURES_SEL 0x024
#define VIO_QUEUE_SEL 0x030
#define VIO_QUEUE_NUM_MAX 0x034
#define VIO_QUEUE_NUM 0x038
#define VIO_QUEUE_READY 0x044
#define VIO_QUEUE_NOTIFY 0x050
#define VIO_INTERRUPT_STATUS 0x060
#define VIO_INTERRUPT_ACK 0x064
#define VIO_STATUS 0x070
#define VIO_QUEUE_DESC_LOW 0x080
#define VIO_QUEUE_DESC_HIGH 0x084
#define VIO_QUEUE_DRIVER_LOW 0x090
#define VIO_QUEUE_DRIVER_HIGH 0x094
#define VIO_QUEUE_DEVICE_LOW 0x0a0
#define VIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIO_CONFIG_GENERATION 0x0fc
#define VIO_CONFIG 0x100

#define VIO_MAGIC 0x74726976	/* "virt" */

/* Device status bits, virtio 1.2 §2.1. */
#define VIO_S_ACKNOWLEDGE 0x01
#define VIO_S_DRIVER 0x02
#define VIO_S_DRIVER_OK 0x04
#define VIO_S_FEATURES_OK 0x08
#define VIO_S_NEEDS_RESET 0x40
#define VIO_S_FAILED 0x80

/* InterruptStatus bits. */
#define VIO_INT_VRING 0x1
#define VIO_INT_CONFIG 0x2

/* Transport feature bits, virtio 1.2 §6. */
#define VIO_F_INDIRECT_DESC 28
#define VIO_F_EVENT_IDX 29
#define VIO_F_VERSION_1 32

/* Descriptor flags, §2.7.5. */
#define VIO_DESC_F_NEXT 1
#define VIO_DESC_F_WRITE 2
#define VIO_DESC_F_INDIRECT 4

/* The largest queue this driver sets up (QueueNum is min(this, QueueNumMax)). */
#define VIO_QUEUE_MAX 256

/* Split-ring layouts, §2.7.5 - §2.7.8 (little-endian; x86 guest). */
struct vio_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vio_used_elem {
	uint32_t id;
	uint32_t len;
};

struct vio_dev {
	gpa_t base;		/* register window */
	uint32_t device_id;
	uint64_t features;	/* negotiated; valid after vio_set_features() */
};

struct vio_queue {
	struct vio_dev *dev;
	uint16_t index;		/* QueueSel value */
	uint16_t size;		/* QueueNum in use; 0 = not set up */
	gpa_t mem;		/* ring memory from palloc (2 pages), kept across resets */
	struct vio_desc *desc;	/* descriptor table: page 0 of mem (virtual, as avail, used) */
	uint16_t *avail;	/* flags, idx, ring[size]: page 1 of mem */
	uint16_t *used;		/* flags, idx, then elems: page 1 + 1 KiB */
	uint16_t free_head;	/* first free descriptor (a list through .next) */
	uint16_t num_free;
	uint16_t avail_idx;	/* our copy of avail->idx */
	uint16_t last_used;	/* next used->ring slot to read */
	uint64_t token[VIO_QUEUE_MAX];	/* by chain head: the caller's cookie */
	uint16_t chain_len[VIO_QUEUE_MAX]; /* by chain head: descriptors it holds */
};

/* One buffer of a chain; @write means device-writable. */
struct vio_buf {
	gpa_t gpa;
	uint32_t len;
	bool write;
};

/*
 * vio_find - the @nth (0-based) virtio-mmio device in @bp whose registers
 * say magic, version 2 and @device_id. Returns its base, or GPA_NULL.
 */
gpa_t vio_find(const struct abi_boot_params *bp, uint32_t device_id, unsigned nth);

/*
 * vio_begin - reset the device at @d->base and acknowledge it (status 0,
 * then ACKNOWLEDGE, then DRIVER; §3.1.1). Returns 0, or -ENOENT if the
 * registers do not show a version 2 device of @d->device_id.
 */
int vio_begin(struct vio_dev *d);

/* Write 0 to Status and wait until it reads back 0 (§4.2.3.1). */
void vio_reset(struct vio_dev *d);

/* The 64 feature bits the device offers. */
uint64_t vio_device_features(struct vio_dev *d);

/*
 * vio_set_features - write @features, set FEATURES_OK and read it back
 * (§3.1.1 steps 4-6). 0 with d->features set, or -EINVAL if refused.
 */
int vio_set_features(struct vio_dev *d, uint64_t features);

/*
 * vio_queue_setup - set queue @index up with up to @max_size entries
 * (QueueNum = the largest power of 2 <= both it and QueueNumMax), rings
 * zeroed, and enable it. Returns 0, -ENOENT if the queue does not exist
 * (QueueNumMax 0), -EBUSY if it is still enabled (no reset), -ENOMEM if no
 * ring memory could be had.
 */
int vio_queue_setup(struct vio_dev *d, struct vio_queue *q, unsigned index, unsigned max_size);

/* Set DRIVER_OK (§3.1.1 step 8). */
void vio_driver_ok(struct vio_dev *d);

/* Set FAILED: the driver gave up on the device (§3.1.1). */
void vio_fail(struct vio_dev *d);

uint32_t vio_status(struct vio_dev *d);

/* InterruptStatus, then acknowledge whatever it showed. */
uint32_t vio_ack_interrupts(struct vio_dev *d);

/* Device config space, 32-bit little-endian fields at @off from 0x100. */
uint32_t vio_config_read32(struct vio_dev *d, uint32_t off);
void vio_config_write32(struct vio_dev *d, uint32_t off, uint32_t v);

/*
 * vio_add - make the chain @bufs[0..n) available (readable buffers first,
 * then writable ones, §2.7.4.2), remembered under @token. The avail index is
 * published with release semantics; nothing is notified until vio_kick().
 * Returns 0, -EINVAL (n == 0 or out of order), -ENOSPC (not enough free
 * descriptors: reap used buffers first).
 */
int vio_add(struct vio_queue *q, const struct vio_buf *bufs, unsigned n, uint64_t token);

/* Notify the device of new buffers unless it asked not to be (§2.7.10). */
void vio_kick(struct vio_queue *q);

/*
 * vio_get_used - take the next used chain: true with its token (and the
 * bytes the device wrote in @len, if not NULL) and its descriptors freed;
 * false when there is none. The used index is read with acquire semantics
 * before the element (§2.7.8). A used element naming no chain of ours is
 * ignored (the caller sees the device's status go bad soon enough).
 */
bool vio_get_used(struct vio_queue *q, uint64_t *token, uint32_t *len);

/*
 * Raw access, for the hostile driver only (kvmem.balloon.hostile=): write
 * descriptor @i as given, and publish @head in the next avail slot with the
 * avail index moved by @advance (1 normally; more to make it jump). @addr
 * may be any value, in RAM or not: the device is meant to check it.
 */
void vio_raw_desc(struct vio_queue *q, uint16_t i, gpa_t addr, uint32_t len, uint16_t flags,
		  uint16_t next);
void vio_raw_publish(struct vio_queue *q, uint16_t head, uint16_t advance);

#endif
