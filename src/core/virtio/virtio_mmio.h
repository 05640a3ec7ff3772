/* SPDX-License-Identifier: MIT */
/*
 * The virtio-mmio transport (virtio 1.2 §4.2.2, version 2 register layout,
 * modern devices only) and the generic device object every kvmem virtio
 * device (the balloon first) is built on: feature negotiation, device
 * status, queue set-up, interrupt status, the config window at 0x100, and
 * one worker thread per device that does all queue processing.
 *
 * A device supplies a struct virtio_dev_ops; the transport calls it:
 *   - config_read/config_write, features_ok, driver_ok: on the vCPU thread
 *     that took the MMIO exit;
 *   - queue_notify and timer: on the device's worker thread;
 *   - reset: on whichever thread resets (a vCPU, or the owner at destroy);
 * always with the device lock held, so callbacks never race each other or
 * a reset. A QueueNotify write only wakes the worker (an eventfd, which KVM
 * writes itself when an ioeventfd is attached): a vCPU never does queue work.
 *
 * Interrupts: InterruptStatus bits are set as the spec says and, when the VM
 * has an in-kernel irqchip (kvm accelerator), the device's GSI is pulsed through a KVM irqfd.
 * Without one (the kvmem guest polls its used rings) interrupts are only
 * visible in InterruptStatus.
 *
 * A driver that breaks a ring or protocol rule puts the device into
 * DEVICE_NEEDS_RESET (status bit 0x40) with a config-change interrupt, a
 * rate-limited log line with the reason, and a counter; all queue work stops
 * until the driver resets the device. The VMM never fails the VM for it.
 *
 * Lock order: virtio_dev lock, then any lock of the device implementation.
 */
#ifndef KVMEM_CORE_VIRTIO_MMIO_H
#define KVMEM_CORE_VIRTIO_MMIO_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/bus.h"
#include "core/log.h"
#include "core/virtio/virtq.h"
#include "mem/gm.h"

/* Register offsets, virtio 1.2 §4.2.2 table "MMIO Device Register Layout". */
#define VIRTIO_MMIO_MAGIC_VALUE 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_SHM_SEL 0x0ac
#define VIRTIO_MMIO_SHM_LEN_LOW 0x0b0
#define VIRTIO_MMIO_SHM_LEN_HIGH 0x0b4
#define VIRTIO_MMIO_SHM_BASE_LOW 0x0b8
#define VIRTIO_MMIO_SHM_BASE_HIGH 0x0bc
#define VIRTIO_MMIO_QUEUE_RESET 0x0c0
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC 0x74726976 /* "virt" */
#define VIRTIO_MMIO_VENDOR 0x4d454d4b /* "KMEM" */

/* Device status bits, virtio 1.2 §2.1. */
#define VIRTIO_STATUS_ACKNOWLEDGE 0x01
#define VIRTIO_STATUS_DRIVER 0x02
#define VIRTIO_STATUS_DRIVER_OK 0x04
#define VIRTIO_STATUS_FEATURES_OK 0x08
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

/* InterruptStatus bits, virtio 1.2 §4.2.2. */
#define VIRTIO_MMIO_INT_VRING 0x1
#define VIRTIO_MMIO_INT_CONFIG 0x2

#define VIRTIO_MAX_QUEUES 8

struct virtio_dev;

struct virtio_dev_ops {
	/*
	 * Read or write `len` (1, 2, 4 or 8) bytes at `off` of the device's
	 * config space; off + len <= config_len is guaranteed. vCPU thread.
	 */
	void (*config_read)(void *opaque, uint32_t off, void *data, unsigned int len);
	void (*config_write)(void *opaque, uint32_t off, const void *data, unsigned int len);
	/*
	 * The driver set FEATURES_OK with `features` (a subset of the offer
	 * that includes VIRTIO_F_VERSION_1). Return how many queues exist
	 * with these features (1..nr_queues), or a negative errno to refuse
	 * them (FEATURES_OK then stays clear). vCPU thread.
	 */
	int (*features_ok)(void *opaque, uint64_t features);
	/* DRIVER_OK was just set. vCPU thread. Optional. */
	void (*driver_ok)(void *opaque);
	/*
	 * Queue `q` may have new buffers: pop them with virtio_dev_pop and
	 * return them with virtio_dev_push. Do a bounded amount of work per
	 * call (the device lock is held): the worker calls again while buffers
	 * remain, dropping the lock in between.
	 * Worker thread, only while the device runs (DRIVER_OK, not failed).
	 */
	void (*queue_notify)(void *opaque, unsigned int q);
	/*
	 * The driver disabled queue q (QueueReady 0; it may set the queue up
	 * again with other rings): forget the buffers held from it. vCPU
	 * thread. Optional.
	 */
	void (*queue_stop)(void *opaque, unsigned int q);
	/* The period set with virtio_dev_set_timer elapsed. Worker thread. Optional. */
	void (*timer)(void *opaque);
	/*
	 * Forget everything tied to the driver (held buffers, queue roles):
	 * the driver wrote 0 to Status, or the device is being destroyed.
	 */
	void (*reset)(void *opaque);
	/*
	 * Migration: the device's own state as JSON (new reference), and that
	 * state from another host given to a device whose transport state was
	 * just loaded (queues set up, features accepted). The state is
	 * untrusted: load returns -EINVAL with the reason in why for anything
	 * malformed. Device lock held, worker stopped. Optional (stateless).
	 */
	json_t *(*save)(void *opaque);
	int (*load)(void *opaque, json_t *state, char *why, size_t whylen);
};

struct virtio_dev_params {
	const char *name;	/* for logs and the worker thread ("vio-<name>") */
	uint32_t device_id;	/* virtio 1.2 §5: 5 = balloon */
	uint64_t features;	/* device-type feature bits offered (bits 0..23) */
	unsigned int nr_queues;	/* most queues the device may have, 1..VIRTIO_MAX_QUEUES */
	uint16_t queue_max;	/* QueueNumMax of every queue: power of 2, <= VIRTQ_MAX_SIZE */
	uint32_t config_len;	/* bytes of config space at 0x100 */
	const struct virtio_dev_ops *ops;
	void *opaque;		/* passed to every op */
};

/* Counters; read with virtio_dev_get_stats. */
struct virtio_dev_stats {
	uint64_t notifies;	/* QueueNotify writes seen by the VMM (not via ioeventfd) */
	uint64_t interrupts;	/* interrupts raised (used buffer or config change) */
	uint64_t needs_reset;	/* times the device entered DEVICE_NEEDS_RESET */
	uint64_t resets;	/* device resets by the driver */
	uint64_t bad_accesses;	/* register accesses of the wrong width or offset */
	uint32_t status;	/* current device status */
	uint64_t features;	/* negotiated features (valid with FEATURES_OK) */
	bool irqfd;		/* interrupts reach the guest through a KVM irqfd */
	bool ioeventfd;		/* QueueNotify is a KVM ioeventfd */
};

/* Handlers for vm_add_device(vm, ABI_DEV_VIRTIO_MMIO, &virtio_mmio_bus_ops, vdev, ...). */
extern const struct bus_ops virtio_mmio_bus_ops;

/*
 * Create a device over guest RAM `gm` (borrowed; must outlive the device).
 * The worker is not running yet: see virtio_dev_start. -EINVAL for bad
 * params, -ENOMEM, or the errno of eventfd/timerfd.
 */
MUST_CHECK int virtio_dev_create(struct gm *gm, const struct virtio_dev_params *p,
				 struct virtio_dev **out);
/*
 * Stop the worker, detach from KVM, reset the device (ops->reset) and free
 * it. Call only when no vCPU can reach the device any more (the VM stopped),
 * and before guest RAM goes away.
 */
void virtio_dev_destroy(struct virtio_dev *vdev);

/*
 * Connect the device to its VM once vm_add_device gave it `base` and `gsi`:
 * an ioeventfd on QueueNotify (so a notify costs no exit to the VMM) and an
 * irqfd on `gsi`, where the VM's accelerator has them (vm_ioeventfd,
 * vm_irqfd). Both are optional, so this cannot fail: without one the device
 * works without it (a debug log line; virtio_dev_get_stats tells which).
 * Before the VM starts; at most once.
 */
struct vm;
void virtio_dev_attach(struct virtio_dev *vdev, struct vm *vm, gpa_t base, uint32_t gsi);

/* Start the worker thread (thread_spawn). Before the VM starts. */
MUST_CHECK int virtio_dev_start(struct virtio_dev *vdev);
/* Stop and join the worker; idempotent. */
void virtio_dev_stop(struct virtio_dev *vdev);

/*
 * Do once, on the calling thread, what the worker does when woken: the
 * timer op if `timer`, then every ready queue with buffers. For unit tests
 * and single-threaded use; never while the worker runs.
 */
void virtio_dev_poll(struct virtio_dev *vdev, bool timer);

/*
 * Periodic worker timer: ops->timer every `period_ns` (0 stops it). Any
 * thread, including from an op.
 */
int virtio_dev_set_timer(struct virtio_dev *vdev, uint64_t period_ns);

/*
 * The device's configuration changed (a new balloon target): bump
 * ConfigGeneration and, once DRIVER_OK is set, raise a config-change
 * interrupt. Any thread that does not hold the device lock (not from an op).
 */
void virtio_dev_config_changed(struct virtio_dev *vdev);

/* --- For device implementations, inside ops (device lock held). --- */

/* Negotiated features (0 before FEATURES_OK). */
uint64_t virtio_dev_features(const struct virtio_dev *vdev);
/* True when queue `q` is ready and the device is running (DRIVER_OK, not failed). */
bool virtio_dev_queue_ready(const struct virtio_dev *vdev, unsigned int q);
/*
 * Pop the next chain of queue `q`: 0, -EAGAIN when empty; any other error
 * means the driver broke the queue and the device is now in
 * DEVICE_NEEDS_RESET (stop processing and return).
 */
MUST_CHECK int virtio_dev_pop(struct virtio_dev *vdev, unsigned int q, struct virtq_chain *chain);
/* Return a chain to the driver and raise a used-buffer interrupt if it wants one. */
MUST_CHECK int virtio_dev_push(struct virtio_dev *vdev, unsigned int q, uint16_t head,
			       uint32_t len);
/*
 * The driver gave the device something it cannot use (a buffer of the wrong
 * direction or a malformed payload): enter DEVICE_NEEDS_RESET with `why`.
 */
void virtio_dev_fail(struct virtio_dev *vdev, const char *why);
/* The name given at create time. */
const char *virtio_dev_name(const struct virtio_dev *vdev);

/*
 * Migration. virtio_dev_save: the transport's state (status, features,
 * each queue's rings and indexes) and the device's (ops->save), as JSON
 * (new reference, NULL without memory); the worker must be stopped
 * (virtio_dev_stop), so nothing moves while the VM's last pages are sent.
 * virtio_dev_load: that state from another host, into a device that has not
 * started, checked as a driver's register writes are (features offered,
 * queue sizes, rings inside RAM): 0, or -EINVAL with the reason in why,
 * the device then reset.
 */
json_t *virtio_dev_save(struct virtio_dev *vdev);
int virtio_dev_load(struct virtio_dev *vdev, json_t *state, char *why, size_t whylen);

/* Snapshot of the counters and state; any thread. */
void virtio_dev_get_stats(struct virtio_dev *vdev, struct virtio_dev_stats *out);

#endif
