/* SPDX-License-Identifier: MIT */
/*
 * virtio-mmio transport, version 2 (virtio 1.2 §4.2.2), and the device
 * worker thread.
 *
 * Register accesses arrive on vCPU threads through the MMIO bus and run
 * under vdev->lock. The worker sleeps in poll() on two fds: the kick
 * eventfd (written by a QueueNotify exit, or by KVM itself through an
 * ioeventfd under the kvm accelerator) and the timer fd; when woken it takes vdev->lock and lets the
 * device process every ready queue that has buffers. Holding the lock
 * across queue work is what makes a reset (Status = 0 on a vCPU) wait for
 * the chain in flight, so the device never writes a used ring the driver
 * has already taken back. Work is cut into rounds of at most one queue's
 * worth of chains per queue, with the lock dropped between rounds.
 *
 * Locks: vdev->lock only; device ops may take their own locks after it.
 */
#define LOG_TAG "virtio"
#include "core/virtio/virtio_mmio.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/sandbox.h"
#include "core/thread.h"
#include "core/vm.h"

/* Transport features every device offers on top of its own (virtio 1.2 §6). */
#define TRANSPORT_FEATURES                                                       \
	((1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_F_INDIRECT_DESC) |       \
	 (1ULL << VIRTIO_F_EVENT_IDX))

/*
 * The status bits virtio 1.2 §2.1 defines, the only ones a status keeps:
 * a state with others is refused by virtio_dev_load, so a driver that set
 * them would make its VM's state one no destination or restore accepts.
 */
#define STATUS_DEFINED                                                         \
	(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_DRIVER_OK | \
	 VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)

/* Rounds of queue work per wake-up before the worker yields and re-kicks itself. */
#define MAX_ROUNDS 16

struct vqueue {
	uint16_t num;		/* QueueNum as written */
	bool ready;		/* QueueReady */
	uint64_t desc;		/* QueueDesc{Low,High} */
	uint64_t driver;	/* QueueDriver{Low,High}: the avail ring */
	uint64_t device;	/* QueueDevice{Low,High}: the used ring */
	struct virtq vq;	/* valid while ready */
};

struct virtio_dev {
	struct gm *gm;			/* borrowed, immutable */
	char name[32];			/* immutable */
	uint32_t device_id;		/* immutable */
	uint64_t offered;		/* device + transport features, immutable */
	unsigned int nr_queues;		/* immutable */
	uint16_t queue_max;		/* immutable */
	uint32_t config_len;		/* immutable */
	const struct virtio_dev_ops *ops; /* immutable */
	void *opaque;			/* immutable */

	int kick_fd;			/* eventfd: queue work pending */
	int timer_fd;			/* timerfd: ops->timer */
	int irq_fd;			/* eventfd bound to an irqfd, or -1; set before start */
	struct vm *vm;			/* VM the ioeventfd/irqfd live in, or NULL */
	gpa_t base;			/* MMIO window, for the ioeventfd */
	uint32_t gsi;
	bool ioeventfd;			/* set before start */
	pthread_t worker;
	bool worker_started;		/* owner thread only */
	struct log_limit log_limit;	/* its guest's warnings: this device's own limits */
	bool stop;			/* atomic: worker must exit */

	pthread_mutex_t lock;		/* guards everything below */
	uint32_t status;
	uint32_t dev_feat_sel;
	uint32_t drv_feat_sel;
	uint32_t queue_sel;
	uint64_t driver_features;	/* as written, before FEATURES_OK */
	uint64_t features;		/* negotiated, valid with FEATURES_OK */
	unsigned int active_queues;	/* queues that exist with `features` */
	uint32_t int_status;
	uint32_t config_gen;
	struct vqueue q[VIRTIO_MAX_QUEUES];
	struct virtio_dev_stats stats;
};

static bool running(const struct virtio_dev *vdev)
{
	return (vdev->status & VIRTIO_STATUS_DRIVER_OK) &&
	       !(vdev->status & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED));
}

static void kick(struct virtio_dev *vdev)
{
	uint64_t one = 1;

	/* Only fails when the counter would overflow: the worker is already due. */
	if (write(vdev->kick_fd, &one, sizeof(one)) < 0)
		return;
}

/* Lock held. */
static void raise_irq(struct virtio_dev *vdev, uint32_t bits)
{
	uint64_t one = 1;

	vdev->int_status |= bits;
	vdev->stats.interrupts++;
	if (vdev->irq_fd >= 0 && write(vdev->irq_fd, &one, sizeof(one)) < 0)
		log_debug("%s: irqfd write: %m", vdev->name);
}

void virtio_dev_fail(struct virtio_dev *vdev, const char *why)
{
	if (vdev->status & VIRTIO_STATUS_NEEDS_RESET)
		return;
	vdev->status |= VIRTIO_STATUS_NEEDS_RESET;
	vdev->stats.needs_reset++;
	log_warn_ratelimited_vm(&vdev->log_limit, "%s: device needs reset: %s", vdev->name, why);
	/* virtio 1.2 §2.1.2: with DRIVER_OK set, tell the driver. */
	if (vdev->status & VIRTIO_STATUS_DRIVER_OK)
		raise_irq(vdev, VIRTIO_MMIO_INT_CONFIG);
}

__attribute__((format(printf, 2, 3)))
static void failf(struct virtio_dev *vdev, const char *fmt, ...)
{
	char why[224];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	virtio_dev_fail(vdev, why);
}

/* Lock held: the driver wrote 0 to Status (or the device is going away). */
static void reset(struct virtio_dev *vdev)
{
	vdev->status = 0;
	vdev->dev_feat_sel = 0;
	vdev->drv_feat_sel = 0;
	vdev->queue_sel = 0;
	vdev->driver_features = 0;
	vdev->features = 0;
	vdev->active_queues = 0;
	vdev->int_status = 0;
	memset(vdev->q, 0, sizeof(vdev->q));
	if (vdev->ops->reset)
		vdev->ops->reset(vdev->opaque);
}

/* Queue `q` exists: before FEATURES_OK every possible queue is shown. */
static bool queue_exists(const struct virtio_dev *vdev, uint32_t q)
{
	if (vdev->status & VIRTIO_STATUS_FEATURES_OK)
		return q < vdev->active_queues;
	return q < vdev->nr_queues;
}

static struct vqueue *sel_queue(struct virtio_dev *vdev)
{
	return queue_exists(vdev, vdev->queue_sel) ? &vdev->q[vdev->queue_sel] : NULL;
}

/* Lock held: the driver set FEATURES_OK. False refuses (the bit stays clear). */
static bool accept_features(struct virtio_dev *vdev)
{
	uint64_t f = vdev->driver_features;
	int n;

	if (f & ~vdev->offered) {
		log_warn_ratelimited_vm(&vdev->log_limit,
					"%s: driver accepted features 0x%" PRIx64 " never offered",
					vdev->name, f & ~vdev->offered);
		return false;
	}
	/* Modern only: a legacy driver cannot run this transport version. */
	if (!(f & (1ULL << VIRTIO_F_VERSION_1))) {
		log_warn_ratelimited_vm(&vdev->log_limit,
					"%s: driver did not accept VIRTIO_F_VERSION_1", vdev->name);
		return false;
	}
	n = vdev->ops->features_ok ? vdev->ops->features_ok(vdev->opaque, f)
				   : (int)vdev->nr_queues;
	if (n < 0)
		return false;
	if (n == 0 || (unsigned int)n > vdev->nr_queues)
		n = (int)vdev->nr_queues;
	vdev->features = f;
	vdev->active_queues = (unsigned int)n;
	return true;
}

static void write_status(struct virtio_dev *vdev, uint32_t val)
{
	uint32_t old = vdev->status;
	uint32_t set;

	val &= 0xff;
	if (val == 0) {
		reset(vdev);
		vdev->stats.resets++;
		return;
	}
	val &= STATUS_DEFINED;
	/* NEEDS_RESET belongs to the device: sticky until reset, never set by the driver. */
	val = (val & ~VIRTIO_STATUS_NEEDS_RESET) | (old & VIRTIO_STATUS_NEEDS_RESET);
	if (old & ~val) {
		/* virtio 1.2 §2.1.1: the driver never clears a status bit but by reset. */
		log_warn_ratelimited_vm(&vdev->log_limit,
					"%s: driver cleared status bits 0x%x without a reset",
					vdev->name, old & ~val);
		vdev->stats.bad_accesses++;
		return;
	}
	set = val & ~old;
	if ((set & VIRTIO_STATUS_FEATURES_OK) && !accept_features(vdev))
		val &= ~VIRTIO_STATUS_FEATURES_OK;
	if ((set & VIRTIO_STATUS_DRIVER_OK) && !(val & VIRTIO_STATUS_FEATURES_OK)) {
		vdev->status = val & ~VIRTIO_STATUS_DRIVER_OK;
		virtio_dev_fail(vdev, "DRIVER_OK set without FEATURES_OK");
		return;
	}
	vdev->status = val;
	if ((set & VIRTIO_STATUS_DRIVER_OK) && running(vdev)) {
		if (vdev->ops->driver_ok)
			vdev->ops->driver_ok(vdev->opaque);
		/* Buffers made available before DRIVER_OK are processed now. */
		kick(vdev);
	}
}

static void write_queue_ready(struct virtio_dev *vdev, uint32_t val)
{
	struct vqueue *q = sel_queue(vdev);
	unsigned int qi = vdev->queue_sel;

	if (!q) {
		log_warn_ratelimited_vm(&vdev->log_limit, "%s: QueueReady for missing queue %u",
					vdev->name, qi);
		vdev->stats.bad_accesses++;
		return;
	}
	if (!val) {
		if (q->ready && vdev->ops->queue_stop)
			vdev->ops->queue_stop(vdev->opaque, qi);
		q->ready = false;
		return;
	}
	if (q->ready)
		return;
	if (!(vdev->status & VIRTIO_STATUS_FEATURES_OK)) {
		failf(vdev, "queue %u enabled before FEATURES_OK", qi);
		return;
	}
	if (q->num > vdev->queue_max) {
		failf(vdev, "queue %u: size %u above QueueNumMax %u", qi, q->num, vdev->queue_max);
		return;
	}
	if (virtq_init(&q->vq, vdev->gm, q->num, q->desc, q->driver, q->device,
		       vdev->features)) {
		failf(vdev, "queue %u: %s", qi, virtq_error(&q->vq));
		return;
	}
	q->ready = true;
}

/* Set half of QueueDesc, QueueDriver or QueueDevice, only while the queue is off. */
static void write_queue_addr(struct virtio_dev *vdev, uint64_t off, uint32_t val)
{
	struct vqueue *q = sel_queue(vdev);
	uint64_t *addr;

	if (!q || q->ready) {
		/* virtio 1.2 §4.2.2.3: only while QueueReady is 0. */
		vdev->stats.bad_accesses++;
		return;
	}
	addr = off < VIRTIO_MMIO_QUEUE_DRIVER_LOW   ? &q->desc
	       : off < VIRTIO_MMIO_QUEUE_DEVICE_LOW ? &q->driver
						    : &q->device;
	if (off % 8)
		*addr = (*addr & 0xffffffffULL) | ((uint64_t)val << 32);
	else
		*addr = (*addr & ~0xffffffffULL) | val;
}

static uint32_t reg_read(struct virtio_dev *vdev, uint64_t off)
{
	struct vqueue *q;

	switch (off) {
	case VIRTIO_MMIO_MAGIC_VALUE:
		return VIRTIO_MMIO_MAGIC;
	case VIRTIO_MMIO_VERSION:
		return 2;
	case VIRTIO_MMIO_DEVICE_ID:
		return vdev->device_id;
	case VIRTIO_MMIO_VENDOR_ID:
		return VIRTIO_MMIO_VENDOR;
	case VIRTIO_MMIO_DEVICE_FEATURES:
		if (vdev->dev_feat_sel > 1)
			return 0;
		return (uint32_t)(vdev->offered >> (32 * vdev->dev_feat_sel));
	case VIRTIO_MMIO_QUEUE_NUM_MAX:
		return sel_queue(vdev) ? vdev->queue_max : 0;
	case VIRTIO_MMIO_QUEUE_NUM:
		q = sel_queue(vdev);
		return q ? q->num : 0;
	case VIRTIO_MMIO_QUEUE_READY:
		q = sel_queue(vdev);
		return q ? q->ready : 0;
	case VIRTIO_MMIO_INTERRUPT_STATUS:
		return vdev->int_status;
	case VIRTIO_MMIO_STATUS:
		return vdev->status;
	case VIRTIO_MMIO_QUEUE_DESC_LOW:
	case VIRTIO_MMIO_QUEUE_DESC_HIGH:
	case VIRTIO_MMIO_QUEUE_DRIVER_LOW:
	case VIRTIO_MMIO_QUEUE_DRIVER_HIGH:
	case VIRTIO_MMIO_QUEUE_DEVICE_LOW:
	case VIRTIO_MMIO_QUEUE_DEVICE_HIGH: {
		uint64_t v;

		q = sel_queue(vdev);
		if (!q)
			return 0;
		v = off < VIRTIO_MMIO_QUEUE_DRIVER_LOW   ? q->desc
		    : off < VIRTIO_MMIO_QUEUE_DEVICE_LOW ? q->driver
							 : q->device;
		return (uint32_t)(off % 8 ? v >> 32 : v);
	}
	case VIRTIO_MMIO_SHM_LEN_LOW:
	case VIRTIO_MMIO_SHM_LEN_HIGH:
	case VIRTIO_MMIO_SHM_BASE_LOW:
	case VIRTIO_MMIO_SHM_BASE_HIGH:
		/* virtio 1.2 §4.2.2: all ones = no such shared memory region. */
		return 0xffffffff;
	case VIRTIO_MMIO_CONFIG_GENERATION:
		return vdev->config_gen;
	default:
		/* Write-only and reserved registers read as 0. */
		return 0;
	}
}

static void reg_write(struct virtio_dev *vdev, uint64_t off, uint32_t val)
{
	struct vqueue *q;

	switch (off) {
	case VIRTIO_MMIO_DEVICE_FEATURES_SEL:
		vdev->dev_feat_sel = val;
		return;
	case VIRTIO_MMIO_DRIVER_FEATURES:
		if (vdev->status & VIRTIO_STATUS_FEATURES_OK) {
			vdev->stats.bad_accesses++;
			return;
		}
		if (vdev->drv_feat_sel == 0)
			vdev->driver_features = (vdev->driver_features & ~0xffffffffULL) | val;
		else if (vdev->drv_feat_sel == 1)
			vdev->driver_features = (vdev->driver_features & 0xffffffffULL) |
						((uint64_t)val << 32);
		else if (val)
			/* Bits above 63 are never offered: refuse them at FEATURES_OK. */
			vdev->driver_features |= 1ULL << 63;
		return;
	case VIRTIO_MMIO_DRIVER_FEATURES_SEL:
		vdev->drv_feat_sel = val;
		return;
	case VIRTIO_MMIO_QUEUE_SEL:
		vdev->queue_sel = val;
		return;
	case VIRTIO_MMIO_QUEUE_NUM:
		q = sel_queue(vdev);
		if (!q || q->ready) {
			vdev->stats.bad_accesses++;
			return;
		}
		/* Validated when the queue is enabled. */
		q->num = val > 0xffff ? 0 : (uint16_t)val;
		return;
	case VIRTIO_MMIO_QUEUE_READY:
		write_queue_ready(vdev, val);
		return;
	case VIRTIO_MMIO_QUEUE_NOTIFY:
		vdev->stats.notifies++;
		/* The worker looks at every ready queue: which one is only a hint. */
		kick(vdev);
		return;
	case VIRTIO_MMIO_INTERRUPT_ACK:
		vdev->int_status &= ~val;
		return;
	case VIRTIO_MMIO_STATUS:
		write_status(vdev, val);
		return;
	case VIRTIO_MMIO_QUEUE_DESC_LOW:
	case VIRTIO_MMIO_QUEUE_DESC_HIGH:
	case VIRTIO_MMIO_QUEUE_DRIVER_LOW:
	case VIRTIO_MMIO_QUEUE_DRIVER_HIGH:
	case VIRTIO_MMIO_QUEUE_DEVICE_LOW:
	case VIRTIO_MMIO_QUEUE_DEVICE_HIGH:
		write_queue_addr(vdev, off, val);
		return;
	case VIRTIO_MMIO_SHM_SEL:
	case VIRTIO_MMIO_QUEUE_RESET:
		/* No shared memory regions; VIRTIO_F_RING_RESET is not offered. */
		return;
	default:
		vdev->stats.bad_accesses++;
		log_warn_ratelimited_vm(&vdev->log_limit,
					"%s: write to read-only or reserved register 0x%" PRIx64,
					vdev->name, off);
		return;
	}
}

static void mmio_read(void *opaque, struct vcpu *vcpu, uint64_t off, void *data, unsigned int len)
{
	struct virtio_dev *vdev = opaque;

	(void)vcpu;
	pthread_mutex_lock(&vdev->lock);
	if (off >= VIRTIO_MMIO_CONFIG) {
		uint64_t c = off - VIRTIO_MMIO_CONFIG;

		if (c + len <= vdev->config_len && vdev->ops->config_read)
			vdev->ops->config_read(vdev->opaque, (uint32_t)c, data, len);
		else
			memset(data, 0, len);
	} else if (len != 4 || off % 4) {
		/* virtio 1.2 §4.2.2.2: registers are 32-bit, aligned. */
		vdev->stats.bad_accesses++;
		memset(data, 0, len);
	} else {
		bus_data_put(data, len, reg_read(vdev, off));
	}
	pthread_mutex_unlock(&vdev->lock);
}

static void mmio_write(void *opaque, struct vcpu *vcpu, uint64_t off, const void *data,
		       unsigned int len)
{
	struct virtio_dev *vdev = opaque;

	(void)vcpu;
	pthread_mutex_lock(&vdev->lock);
	if (off >= VIRTIO_MMIO_CONFIG) {
		uint64_t c = off - VIRTIO_MMIO_CONFIG;

		if (c + len <= vdev->config_len && vdev->ops->config_write)
			vdev->ops->config_write(vdev->opaque, (uint32_t)c, data, len);
		else
			vdev->stats.bad_accesses++;
	} else if (len != 4 || off % 4) {
		vdev->stats.bad_accesses++;
		log_warn_ratelimited_vm(&vdev->log_limit,
					"%s: %u-byte register write at 0x%" PRIx64 " ignored",
					vdev->name, len, off);
	} else {
		reg_write(vdev, off, (uint32_t)bus_data_get(data, len));
	}
	pthread_mutex_unlock(&vdev->lock);
}

const struct bus_ops virtio_mmio_bus_ops = {
	.read = mmio_read,
	.write = mmio_write,
};

/*
 * One wake-up's worth of work. Each round offers every ready queue with
 * buffers to the device once; the lock is dropped between rounds so vCPUs
 * (and a reset) get in, and after MAX_ROUNDS the worker re-kicks itself
 * instead of spinning on a driver that keeps the queues full.
 */
static void process(struct virtio_dev *vdev, bool timer)
{
	pthread_mutex_lock(&vdev->lock);
	if (timer && running(vdev) && vdev->ops->timer)
		vdev->ops->timer(vdev->opaque);
	for (unsigned int round = 0;; round++) {
		bool again = false;

		for (unsigned int i = 0; i < vdev->active_queues && running(vdev); i++) {
			struct vqueue *q = &vdev->q[i];

			if (!q->ready || !virtq_has_avail(&q->vq))
				continue;
			vdev->ops->queue_notify(vdev->opaque, i);
			if (q->ready && virtq_has_avail(&q->vq))
				again = true;
		}
		if (!again || !running(vdev))
			break;
		if (round + 1 == MAX_ROUNDS) {
			kick(vdev);
			break;
		}
		pthread_mutex_unlock(&vdev->lock);
		pthread_mutex_lock(&vdev->lock);
	}
	pthread_mutex_unlock(&vdev->lock);
}

void virtio_dev_poll(struct virtio_dev *vdev, bool timer)
{
	uint64_t v;

	/* Drain so a later worker does not run for stale kicks. */
	if (read(vdev->kick_fd, &v, sizeof(v)) < 0)
		v = 0;
	process(vdev, timer);
}

static void *worker(void *arg)
{
	struct virtio_dev *vdev = arg;
	struct pollfd pfd[2] = {
		{ .fd = vdev->kick_fd, .events = POLLIN },
		{ .fd = vdev->timer_fd, .events = POLLIN },
	};

	sandbox_enter(SANDBOX_DEVICE);
	while (!__atomic_load_n(&vdev->stop, __ATOMIC_ACQUIRE)) {
		uint64_t v;
		bool timer = false;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_err("%s: worker poll: %m", vdev->name);
			break;
		}
		if ((pfd[0].revents & POLLIN) && read(vdev->kick_fd, &v, sizeof(v)) < 0)
			v = 0; /* EAGAIN: someone else drained it */
		if ((pfd[1].revents & POLLIN) && read(vdev->timer_fd, &v, sizeof(v)) == sizeof(v))
			timer = true;
		if (__atomic_load_n(&vdev->stop, __ATOMIC_ACQUIRE))
			break;
		process(vdev, timer);
	}
	return NULL;
}

int virtio_dev_create(struct gm *gm, const struct virtio_dev_params *p, struct virtio_dev **out)
{
	struct virtio_dev *vdev;
	int ret;

	if (!gm || !p->ops || !p->ops->queue_notify || p->nr_queues == 0 ||
	    p->nr_queues > VIRTIO_MAX_QUEUES || p->queue_max == 0 ||
	    p->queue_max > VIRTQ_MAX_SIZE || (p->queue_max & (p->queue_max - 1)) ||
	    (p->features & ~0xffffffULL) || p->config_len > 0x1000 - VIRTIO_MMIO_CONFIG)
		return -EINVAL;
	vdev = kv_zalloc(sizeof(*vdev));
	if (!vdev)
		return -ENOMEM;
	vdev->gm = gm;
	snprintf(vdev->name, sizeof(vdev->name), "%s", p->name ? p->name : "virtio");
	vdev->device_id = p->device_id;
	vdev->offered = p->features | TRANSPORT_FEATURES;
	vdev->nr_queues = p->nr_queues;
	vdev->queue_max = p->queue_max;
	vdev->config_len = p->config_len;
	vdev->ops = p->ops;
	vdev->opaque = p->opaque;
	vdev->irq_fd = -1;
	vdev->vm = NULL;
	vdev->timer_fd = -1;
	vdev->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (vdev->kick_fd < 0) {
		ret = -errno;
		goto out_free;
	}
	vdev->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (vdev->timer_fd < 0) {
		ret = -errno;
		goto out_close_kick;
	}
	pthread_mutex_init(&vdev->lock, NULL);
	*out = vdev;
	return 0;

out_close_kick:
	close(vdev->kick_fd);
out_free:
	kv_free(vdev);
	return ret;
}

void virtio_dev_attach(struct virtio_dev *vdev, struct vm *vm, gpa_t base, uint32_t gsi)
{
	int fd, ret;

	vdev->vm = vm;
	vdev->base = base;
	vdev->gsi = gsi;
	ret = vm_ioeventfd(vm, base + VIRTIO_MMIO_QUEUE_NOTIFY, 4, vdev->kick_fd, true);
	if (ret == 0)
		vdev->ioeventfd = true;
	else
		log_debug("%s: no ioeventfd (%s): QueueNotify exits to the VMM", vdev->name,
			  strerror(-ret));
	fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (fd < 0) {
		log_warn("%s: eventfd for the irqfd: %m: interrupts are not delivered", vdev->name);
		return;
	}
	ret = vm_irqfd(vm, gsi, fd, true);
	if (ret == 0) {
		vdev->irq_fd = fd;
	} else {
		/* The kvmem guest polls; only a Linux driver would miss them. */
		log_debug("%s: no irqfd on gsi %u (%s): interrupts are not delivered", vdev->name,
			  gsi, strerror(-ret));
		close(fd);
	}
}

static void detach(struct virtio_dev *vdev)
{
	int ret;

	if (!vdev->vm)
		return;
	if (vdev->ioeventfd) {
		ret = vm_ioeventfd(vdev->vm, vdev->base + VIRTIO_MMIO_QUEUE_NOTIFY, 4, vdev->kick_fd,
				   false);
		if (ret)
			log_debug("%s: ioeventfd deassign: %s", vdev->name, strerror(-ret));
		vdev->ioeventfd = false;
	}
	if (vdev->irq_fd >= 0) {
		ret = vm_irqfd(vdev->vm, vdev->gsi, vdev->irq_fd, false);
		if (ret)
			log_debug("%s: irqfd deassign: %s", vdev->name, strerror(-ret));
		close(vdev->irq_fd);
		vdev->irq_fd = -1;
	}
	vdev->vm = NULL;
}

int virtio_dev_start(struct virtio_dev *vdev)
{
	char tname[16];
	int ret;

	if (vdev->worker_started)
		return 0;
	snprintf(tname, sizeof(tname), "vio-%.11s", vdev->name);
	__atomic_store_n(&vdev->stop, false, __ATOMIC_RELEASE);
	ret = thread_spawn(&vdev->worker, tname, worker, vdev);
	if (ret)
		return ret;
	vdev->worker_started = true;
	return 0;
}

void virtio_dev_stop(struct virtio_dev *vdev)
{
	if (!vdev->worker_started)
		return;
	__atomic_store_n(&vdev->stop, true, __ATOMIC_RELEASE);
	kick(vdev);
	pthread_join(vdev->worker, NULL);
	vdev->worker_started = false;
}

void virtio_dev_destroy(struct virtio_dev *vdev)
{
	if (!vdev)
		return;
	virtio_dev_stop(vdev);
	detach(vdev);
	pthread_mutex_lock(&vdev->lock);
	reset(vdev);
	pthread_mutex_unlock(&vdev->lock);
	pthread_mutex_destroy(&vdev->lock);
	close(vdev->timer_fd);
	close(vdev->kick_fd);
	kv_free(vdev);
}

int virtio_dev_set_timer(struct virtio_dev *vdev, uint64_t period_ns)
{
	struct itimerspec its = { 0 };

	its.it_interval.tv_sec = (time_t)(period_ns / 1000000000ULL);
	its.it_interval.tv_nsec = (long)(period_ns % 1000000000ULL);
	its.it_value = its.it_interval;
	return timerfd_settime(vdev->timer_fd, 0, &its, NULL) < 0 ? -errno : 0;
}

void virtio_dev_config_changed(struct virtio_dev *vdev)
{
	pthread_mutex_lock(&vdev->lock);
	vdev->config_gen++;
	if (running(vdev))
		raise_irq(vdev, VIRTIO_MMIO_INT_CONFIG);
	pthread_mutex_unlock(&vdev->lock);
}

uint64_t virtio_dev_features(const struct virtio_dev *vdev)
{
	return (vdev->status & VIRTIO_STATUS_FEATURES_OK) ? vdev->features : 0;
}

bool virtio_dev_queue_ready(const struct virtio_dev *vdev, unsigned int q)
{
	return running(vdev) && q < vdev->active_queues && vdev->q[q].ready;
}

int virtio_dev_pop(struct virtio_dev *vdev, unsigned int q, struct virtq_chain *chain)
{
	int ret;

	if (!virtio_dev_queue_ready(vdev, q))
		return -EAGAIN;
	ret = virtq_pop(&vdev->q[q].vq, chain);
	if (ret && ret != -EAGAIN)
		failf(vdev, "queue %u: %s", q, virtq_error(&vdev->q[q].vq));
	return ret;
}

int virtio_dev_push(struct virtio_dev *vdev, unsigned int q, uint16_t head, uint32_t len)
{
	struct virtq *vq;
	int ret;

	if (!virtio_dev_queue_ready(vdev, q))
		return -EIO;
	vq = &vdev->q[q].vq;
	ret = virtq_push(vq, head, len);
	if (ret == -EINVAL) {
		log_err("%s: queue %u: the device returned head %u, not in the ring", vdev->name, q,
			head);
		return ret;
	}
	if (ret) {
		failf(vdev, "queue %u: %s", q, virtq_error(vq));
		return ret;
	}
	if (virtq_should_interrupt(vq))
		raise_irq(vdev, VIRTIO_MMIO_INT_VRING);
	return 0;
}

const char *virtio_dev_name(const struct virtio_dev *vdev)
{
	return vdev->name;
}

void virtio_dev_get_stats(struct virtio_dev *vdev, struct virtio_dev_stats *out)
{
	pthread_mutex_lock(&vdev->lock);
	*out = vdev->stats;
	out->status = vdev->status;
	out->features = virtio_dev_features(vdev);
	out->irqfd = vdev->irq_fd >= 0;
	out->ioeventfd = vdev->ioeventfd;
	pthread_mutex_unlock(&vdev->lock);
}

/* --- migration --- */

json_t *virtio_dev_save(struct virtio_dev *vdev)
{
	json_t *queues = json_array(), *st, *dev = NULL;

	pthread_mutex_lock(&vdev->lock);
	for (unsigned int i = 0; i < vdev->nr_queues && queues; i++) {
		const struct vqueue *q = &vdev->q[i];

		json_array_append_new(
			queues,
			json_pack("{s:i, s:b, s:I, s:I, s:I, s:i, s:i, s:i, s:b}", "num", q->num,
				  "ready", q->ready, "desc", (json_int_t)q->desc, "driver",
				  (json_int_t)q->driver, "device", (json_int_t)q->device,
				  "last_avail", q->ready ? q->vq.last_avail : 0, "used_idx",
				  q->ready ? q->vq.used_idx : 0, "signalled_used",
				  q->ready ? q->vq.signalled_used : 0, "signalled_valid",
				  q->ready && q->vq.signalled_valid));
	}
	if (vdev->ops->save)
		dev = vdev->ops->save(vdev->opaque);
	/*
	 * The 32-bit registers go whole, not as an int (the driver may write
	 * any selector, and a negative one would be refused): a guest must not
	 * be able to make its VM's state one that no destination takes.
	 */
	st = json_pack("{s:i, s:I, s:I, s:I, s:I, s:I, s:i, s:I, s:o*, s:o*}", "status",
		       (int)vdev->status, "dev_feat_sel", (json_int_t)vdev->dev_feat_sel,
		       "drv_feat_sel", (json_int_t)vdev->drv_feat_sel, "queue_sel",
		       (json_int_t)vdev->queue_sel, "driver_features",
		       (json_int_t)vdev->driver_features, "features", (json_int_t)vdev->features,
		       "int_status", (int)vdev->int_status, "config_gen",
		       (json_int_t)vdev->config_gen, "queues", queues, "device", dev);
	pthread_mutex_unlock(&vdev->lock);
	return st;
}

#define LOAD_FAIL(...)                                    \
	do {                                              \
		snprintf(why, whylen, __VA_ARGS__);       \
		ret = -EINVAL;                            \
		goto out;                                 \
	} while (0)

/* A JSON integer in [0, max], or false. */
static bool get_u64(json_t *o, const char *key, uint64_t max, uint64_t *out)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    (uint64_t)json_integer_value(v) > max)
		return false;
	*out = (uint64_t)json_integer_value(v);
	return true;
}

/*
 * A 64-bit register as virtio_dev_save wrote it: JSON integers are signed,
 * so one with bit 63 set (a queue address, or the driver's features with
 * the bit that marks a feature above 63) comes as a negative number.
 */
static bool get_bits64(json_t *o, const char *key, uint64_t *out)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_integer(v))
		return false;
	*out = (uint64_t)json_integer_value(v);
	return true;
}

int virtio_dev_load(struct virtio_dev *vdev, json_t *state, char *why, size_t whylen)
{
	uint64_t status, dsel, qsel, fsel, drv, feat, ints, gen;
	json_t *queues = json_object_get(state, "queues"), *dev = json_object_get(state, "device");
	int ret = 0;

	pthread_mutex_lock(&vdev->lock);
	reset(vdev);
	/* Whatever a driver can write is taken; what it means is checked as its write is. */
	if (!get_u64(state, "status", STATUS_DEFINED, &status) ||
	    !get_u64(state, "dev_feat_sel", UINT32_MAX, &dsel) ||
	    !get_u64(state, "drv_feat_sel", UINT32_MAX, &fsel) ||
	    !get_u64(state, "queue_sel", UINT32_MAX, &qsel) ||
	    !get_bits64(state, "driver_features", &drv) ||
	    !get_u64(state, "features", UINT64_MAX >> 1, &feat) ||
	    !get_u64(state, "int_status", VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG, &ints) ||
	    !get_u64(state, "config_gen", UINT32_MAX, &gen) || !json_is_array(queues) ||
	    json_array_size(queues) != vdev->nr_queues)
		LOAD_FAIL("%s: transport state malformed", vdev->name);
	vdev->dev_feat_sel = (uint32_t)dsel;
	vdev->drv_feat_sel = (uint32_t)fsel;
	vdev->queue_sel = (uint32_t)qsel;
	vdev->driver_features = drv;
	vdev->int_status = (uint32_t)ints;
	vdev->config_gen = (uint32_t)gen;
	/* The features are accepted again, by the same rules as the driver's write. */
	if (status & VIRTIO_STATUS_FEATURES_OK) {
		if (drv != feat || !accept_features(vdev))
			LOAD_FAIL("%s: features 0x%" PRIx64 " not offered here", vdev->name, feat);
	} else if (feat) {
		LOAD_FAIL("%s: features without FEATURES_OK", vdev->name);
	}
	vdev->status = (uint32_t)status;
	for (unsigned int i = 0; i < vdev->nr_queues; i++) {
		json_t *jq = json_array_get(queues, i);
		struct vqueue *q = &vdev->q[i];
		uint64_t num, desc, driver, device, last, used, sig;
		json_t *ready = json_object_get(jq, "ready");
		json_t *sigv = json_object_get(jq, "signalled_valid");

		if (!get_u64(jq, "num", UINT16_MAX, &num) || !get_bits64(jq, "desc", &desc) ||
		    !get_bits64(jq, "driver", &driver) || !get_bits64(jq, "device", &device) ||
		    !get_u64(jq, "last_avail", UINT16_MAX, &last) ||
		    !get_u64(jq, "used_idx", UINT16_MAX, &used) ||
		    !get_u64(jq, "signalled_used", UINT16_MAX, &sig) || !json_is_boolean(ready) ||
		    !json_is_boolean(sigv))
			LOAD_FAIL("%s: queue %u state malformed", vdev->name, i);
		q->num = (uint16_t)num;
		q->desc = desc;
		q->driver = driver;
		q->device = device;
		if (!json_is_true(ready))
			continue;
		if (!(status & VIRTIO_STATUS_FEATURES_OK) || i >= vdev->active_queues)
			LOAD_FAIL("%s: queue %u ready without its features", vdev->name, i);
		if (q->num > vdev->queue_max)
			LOAD_FAIL("%s: queue %u: size %u above QueueNumMax %u", vdev->name, i, q->num,
				  vdev->queue_max);
		if (virtq_init(&q->vq, vdev->gm, q->num, desc, driver, device, vdev->features))
			LOAD_FAIL("%s: queue %u: %s", vdev->name, i, virtq_error(&q->vq));
		q->vq.last_avail = (uint16_t)last;
		q->vq.used_idx = (uint16_t)used;
		q->vq.signalled_used = (uint16_t)sig;
		q->vq.signalled_valid = json_is_true(sigv);
		q->ready = true;
	}
	if (vdev->ops->load && (ret = vdev->ops->load(vdev->opaque, dev, why, whylen)))
		goto out;
	if (running(vdev) && vdev->ops->driver_ok)
		vdev->ops->driver_ok(vdev->opaque);
out:
	if (ret)
		reset(vdev);
	pthread_mutex_unlock(&vdev->lock);
	/* Buffers the driver made available while the VM moved are seen once the worker runs. */
	if (!ret)
		kick(vdev);
	return ret;
}
