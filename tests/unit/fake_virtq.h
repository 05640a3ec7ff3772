/* SPDX-License-Identifier: MIT */
/*
 * The driver side of a split virtqueue and of the virtio-mmio transport,
 * for unit tests: builds rings in a mem_create_anon guest, well-formed or
 * deliberately hostile, and drives a struct virtio_dev through its bus ops
 * the way a guest driver's MMIO accesses would (cf. vm-virtio mock.rs).
 */
#ifndef KVMEM_TESTS_FAKE_VIRTQ_H
#define KVMEM_TESTS_FAKE_VIRTQ_H

#include <stdbool.h>
#include <stdint.h>

#include "core/virtio/virtio_mmio.h"
#include "mem/gm.h"

struct fake_vq {
	struct gm *gm;
	uint16_t size;
	gpa_t desc;		/* descriptor table */
	gpa_t avail;		/* driver area */
	gpa_t used;		/* device area */
	uint16_t avail_idx;	/* the driver's avail->idx */
	uint16_t next_desc;	/* next descriptor fake_vq_add_chain uses (wraps) */
	uint16_t last_used;	/* used elements already taken by fake_vq_get_used */
};

struct fake_buf {
	gpa_t gpa;
	uint32_t len;
	bool write;		/* device-writable */
};

/* Lay out a queue of `size` at `base` (page aligned) and zero its rings. */
void fake_vq_init(struct fake_vq *fq, struct gm *gm, uint16_t size, gpa_t base);
/* Write descriptor i raw (any values, hostile ones included). */
void fake_vq_set_desc(struct fake_vq *fq, uint16_t i, uint64_t addr, uint32_t len,
		      uint16_t flags, uint16_t next);
/* Write a raw descriptor into an indirect table at `table`. */
void fake_vq_set_table_desc(struct fake_vq *fq, gpa_t table, uint16_t i, uint64_t addr,
			    uint32_t len, uint16_t flags, uint16_t next);
/* Put `head` in the next avail slot and bump avail->idx. */
void fake_vq_publish(struct fake_vq *fq, uint16_t head);
/* Overwrite avail->idx (hostile). */
void fake_vq_set_avail_idx(struct fake_vq *fq, uint16_t idx);
/* Build a chain of `n` buffers from the next free descriptors, publish it; returns its head. */
uint16_t fake_vq_add_chain(struct fake_vq *fq, const struct fake_buf *bufs, unsigned int n);
/* Same through an indirect table written at `table`. */
uint16_t fake_vq_add_indirect(struct fake_vq *fq, gpa_t table, const struct fake_buf *bufs,
			      unsigned int n);
/* Take the next used element: true with id/len, false when none. */
bool fake_vq_get_used(struct fake_vq *fq, uint32_t *id, uint32_t *len);
uint16_t fake_vq_used_idx(struct fake_vq *fq);
/* avail_event / used_event (VIRTIO_F_EVENT_IDX). */
uint16_t fake_vq_avail_event(struct fake_vq *fq);
void fake_vq_set_used_event(struct fake_vq *fq, uint16_t v);
void fake_vq_set_avail_flags(struct fake_vq *fq, uint16_t flags);

/* 32-bit register access through the bus ops, as a vCPU's MMIO exit. */
uint32_t fake_mmio_read(struct virtio_dev *vdev, uint64_t off);
void fake_mmio_write(struct virtio_dev *vdev, uint64_t off, uint32_t val);
uint64_t fake_mmio_device_features(struct virtio_dev *vdev);

/*
 * Driver initialisation, virtio 1.2 §3.1.1 up to FEATURES_OK: reset,
 * ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK. Returns true when the
 * device kept FEATURES_OK.
 */
bool fake_virtio_negotiate(struct virtio_dev *vdev, uint64_t features);
/* Program queue q from `fq` and set QueueReady. */
void fake_virtio_setup_queue(struct virtio_dev *vdev, unsigned int q, const struct fake_vq *fq);
/* Set DRIVER_OK. */
void fake_virtio_driver_ok(struct virtio_dev *vdev);
/* Write QueueNotify. */
void fake_virtio_notify(struct virtio_dev *vdev, unsigned int q);

#endif
