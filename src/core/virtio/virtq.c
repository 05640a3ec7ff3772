/* SPDX-License-Identifier: MIT */
/*
 * Split virtqueue parsing (virtio 1.2 §2.7) over the guest-memory API.
 *
 * The driver owns the descriptor table and the avail ring and may change
 * them at any time, so a chain is read exactly once: each descriptor is
 * copied out, checked, and its buffer recorded in the caller's chain; the
 * device then works from that snapshot, never from the rings again.
 *
 * Ring indexes are shared with driver vCPUs running concurrently, so they
 * are read and written with single 16-bit atomic accesses (a torn avail
 * index would look like an index that jumped ahead, and break a correct
 * driver's queue). Their loads are the one place this file takes a host
 * view of guest RAM (mem_slice_get, which mem/gm.h reserves for mem/, virtq
 * and migration); their stores go through mem_store_le16_release, which
 * marks the page for migration like every other write (mem_write copies).
 */
#define LOG_TAG "virtq"
#include "core/virtio/virtq.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/tsan.h"

/* struct virtq_desc, virtio 1.2 §2.7.5 (little-endian; x86 hosts only). */
struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};
static_assert(sizeof(struct vring_desc) == 16, "virtq_desc is 16 bytes");

/* Offsets inside the driver area (avail) and the device area (used). */
#define AVAIL_FLAGS 0
#define AVAIL_IDX 2
#define AVAIL_RING 4
#define USED_FLAGS 0
#define USED_IDX 2
#define USED_RING 4
#define USED_ELEM_SIZE 8

static gpa_t used_event_gpa(const struct virtq *vq)
{
	return vq->avail + AVAIL_RING + 2ULL * vq->size;
}

static gpa_t avail_event_gpa(const struct virtq *vq)
{
	return vq->used + USED_RING + (uint64_t)USED_ELEM_SIZE * vq->size;
}

/*
 * Single-copy-atomic 16-bit accesses to a ring field. The field's gpa is
 * 2-byte aligned (checked in virtq_init) and regions are page aligned, so
 * the slice is never split and the host address is aligned.
 */
static int load16(const struct gm *gm, gpa_t gpa, uint16_t *val)
{
	struct mem_slice s;

	if (mem_slice_get(gm, gpa, sizeof(*val), &s) || s.len < sizeof(*val))
		return -EFAULT;
	*val = __atomic_load_n((const uint16_t *)s.hva, __ATOMIC_ACQUIRE);
	return 0;
}

/* Through the access API, so that migration sees the page written. */
static int store16(struct gm *gm, gpa_t gpa, uint16_t val)
{
	return mem_store_le16_release(gm, gpa, val);
}

__attribute__((format(printf, 3, 4)))
static int broke(struct virtq *vq, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(vq->err, sizeof(vq->err), fmt, ap);
	va_end(ap);
	vq->broken = true;
	return err;
}

int virtq_init(struct virtq *vq, struct gm *gm, uint16_t size, gpa_t desc, gpa_t avail,
	       gpa_t used, uint64_t features)
{
	uint64_t extra;

	memset(vq, 0, sizeof(*vq));
	vq->gm = gm;
	vq->size = size;
	vq->desc = desc;
	vq->avail = avail;
	vq->used = used;
	vq->indirect = features & (1ULL << VIRTIO_F_INDIRECT_DESC);
	vq->event_idx = features & (1ULL << VIRTIO_F_EVENT_IDX);
	/* virtio 1.2 §2.7: split queue sizes are powers of 2. */
	if (size == 0 || size > VIRTQ_MAX_SIZE || (size & (size - 1)))
		return broke(vq, -EINVAL, "queue size %u is not a power of 2 in 1..%u", size,
			     VIRTQ_MAX_SIZE);
	/* virtio 1.2 §2.7, table "Virtqueue Part Alignment". */
	if (desc % 16 || avail % 2 || used % 4)
		return broke(vq, -EINVAL,
			     "ring not aligned: desc 0x%" PRIx64 " avail 0x%" PRIx64
			     " used 0x%" PRIx64,
			     desc, avail, used);
	/* used_event / avail_event trail the rings only with VIRTIO_F_EVENT_IDX. */
	extra = vq->event_idx ? 2 : 0;
	if (!mem_range_ok(gm, desc, 16ULL * size))
		return broke(vq, -EINVAL, "descriptor table at gpa 0x%" PRIx64 " outside RAM",
			     desc);
	if (!mem_range_ok(gm, avail, AVAIL_RING + 2ULL * size + extra))
		return broke(vq, -EINVAL, "driver area at gpa 0x%" PRIx64 " outside RAM", avail);
	if (!mem_range_ok(gm, used, USED_RING + (uint64_t)USED_ELEM_SIZE * size + extra))
		return broke(vq, -EINVAL, "device area at gpa 0x%" PRIx64 " outside RAM", used);
	return 0;
}

/* Record one buffer of the chain being walked. */
static int add_buf(struct virtq *vq, struct virtq_chain *c, const struct vring_desc *d)
{
	bool write = d->flags & VIRTQ_DESC_F_WRITE;

	if (c->nr == VIRTQ_CHAIN_MAX)
		return broke(vq, -EINVAL, "chain at head %u has more than %u buffers", c->head,
			     VIRTQ_CHAIN_MAX);
	/* virtio 1.2 §2.7.4.2: writable buffers follow all readable ones. */
	if (!write && c->nr > c->nr_out)
		return broke(vq, -EINVAL,
			     "chain at head %u: device-readable buffer after a writable one",
			     c->head);
	/* A zero-length buffer names no memory, so its address is not checked. */
	if (d->len && !mem_range_ok(vq->gm, d->addr, d->len))
		return broke(vq, -EFAULT,
			     "chain at head %u: buffer gpa 0x%" PRIx64 " len %u outside RAM",
			     c->head, d->addr, d->len);
	c->buf[c->nr].gpa = d->addr;
	c->buf[c->nr].len = d->len;
	c->buf[c->nr].write = write;
	c->nr++;
	if (write) {
		c->in_bytes += d->len;
	} else {
		c->nr_out++;
		c->out_bytes += d->len;
	}
	return 0;
}

/*
 * Walk the indirect table `ind` points to (virtio 1.2 §2.7.5.3). Its own
 * `next` fields index the table; a walk longer than the table is a loop.
 */
static int walk_indirect(struct virtq *vq, struct virtq_chain *c, const struct vring_desc *ind)
{
	unsigned int n, seen = 0;
	uint16_t j = 0;
	int ret;

	if (!vq->indirect)
		return broke(vq, -EINVAL,
			     "chain at head %u: indirect descriptor without VIRTIO_F_INDIRECT_DESC",
			     c->head);
	if (ind->flags & VIRTQ_DESC_F_NEXT)
		return broke(vq, -EINVAL, "chain at head %u: indirect descriptor with NEXT set",
			     c->head);
	if (ind->len == 0 || ind->len % sizeof(struct vring_desc))
		return broke(vq, -EINVAL,
			     "chain at head %u: indirect table length %u is not a non-zero "
			     "multiple of 16",
			     c->head, ind->len);
	n = ind->len / sizeof(struct vring_desc);
	if (n > VIRTQ_CHAIN_MAX)
		return broke(vq, -EINVAL,
			     "chain at head %u: indirect table of %u descriptors (max %u)",
			     c->head, n, VIRTQ_CHAIN_MAX);
	if (!mem_range_ok(vq->gm, ind->addr, ind->len))
		return broke(vq, -EFAULT,
			     "chain at head %u: indirect table gpa 0x%" PRIx64 " len %u outside RAM",
			     c->head, ind->addr, ind->len);
	for (;;) {
		struct vring_desc d;

		if (++seen > n)
			return broke(vq, -EINVAL, "chain at head %u: indirect table loops",
				     c->head);
		if (mem_read(vq->gm, ind->addr + (uint64_t)j * sizeof(d), &d, sizeof(d)))
			return broke(vq, -EFAULT, "chain at head %u: indirect table unreadable",
				     c->head);
		if (d.flags & VIRTQ_DESC_F_INDIRECT)
			return broke(vq, -EINVAL, "chain at head %u: nested indirect table",
				     c->head);
		ret = add_buf(vq, c, &d);
		if (ret)
			return ret;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			return 0;
		if (d.next >= n)
			return broke(vq, -EINVAL,
				     "chain at head %u: indirect next %u beyond the table (%u)",
				     c->head, d.next, n);
		j = d.next;
	}
}

/*
 * Walk the chain from `head`: zero or more direct descriptors, the last of
 * which may point to an indirect table. More than `size` direct descriptors
 * means a loop or a chain longer than the queue (virtio 1.2 §2.7.5.2).
 */
static int walk(struct virtq *vq, uint16_t head, struct virtq_chain *c)
{
	unsigned int seen = 0;
	uint16_t i = head;

	c->head = head;
	c->nr = 0;
	c->nr_out = 0;
	c->out_bytes = 0;
	c->in_bytes = 0;
	for (;;) {
		struct vring_desc d;
		int ret;

		if (++seen > vq->size)
			return broke(vq, -EINVAL,
				     "chain at head %u loops or is longer than the queue (%u)", head,
				     vq->size);
		if (mem_read(vq->gm, vq->desc + (uint64_t)i * sizeof(d), &d, sizeof(d)))
			return broke(vq, -EFAULT, "descriptor %u unreadable", i);
		if (d.flags & VIRTQ_DESC_F_INDIRECT)
			return walk_indirect(vq, c, &d);
		ret = add_buf(vq, c, &d);
		if (ret)
			return ret;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			return 0;
		if (d.next >= vq->size)
			return broke(vq, -EINVAL, "chain at head %u: next %u beyond the queue (%u)",
				     head, d.next, vq->size);
		i = d.next;
	}
}

/* Buffers the driver published and we have not taken; -EINVAL if it ran ahead. */
static int pending(struct virtq *vq, uint16_t *n)
{
	uint16_t idx;

	if (load16(vq->gm, vq->avail + AVAIL_IDX, &idx))
		return broke(vq, -EFAULT, "avail index unreadable");
	*n = (uint16_t)(idx - vq->last_avail);
	if (*n > vq->size) {
		/*
		 * A buggy or hostile driver, or guest memory that lost the
		 * driver's write: what backs the ring's page tells them apart.
		 */
		char backing[256];

		mem_page_describe(vq->gm, vq->avail + AVAIL_IDX, backing, sizeof(backing));
		return broke(vq, -EINVAL,
			     "avail index %u is %u ahead of the device (queue size %u); %s", idx,
			     *n, vq->size, backing);
	}
	return 0;
}

int virtq_pop(struct virtq *vq, struct virtq_chain *chain)
{
	uint16_t n, head;
	int ret;

	if (vq->broken)
		return -EIO;
	ret = pending(vq, &n);
	if (ret)
		return ret;
	if (n == 0) {
		if (!vq->event_idx)
			return -EAGAIN;
		/*
		 * Ask for a notification when the next buffer arrives, then look
		 * again: the driver may have published one after our first look
		 * but before it could see the new avail_event (virtio 1.2 §2.7.10).
		 */
		if (store16(vq->gm, avail_event_gpa(vq), vq->last_avail))
			return broke(vq, -EFAULT, "avail_event unwritable");
		kv_fence_seq_cst();
		ret = pending(vq, &n);
		if (ret)
			return ret;
		if (n == 0)
			return -EAGAIN;
	}
	/* The acquire load of avail->idx orders this read after the driver's write. */
	if (mem_read_le16(vq->gm, vq->avail + AVAIL_RING + 2ULL * (vq->last_avail % vq->size),
			 &head))
		return broke(vq, -EFAULT, "avail ring unreadable");
	if (head >= vq->size)
		return broke(vq, -EINVAL, "avail ring names head %u beyond the queue (%u)", head,
			     vq->size);
	ret = walk(vq, head, chain);
	if (ret)
		return ret;
	vq->last_avail++;
	return 0;
}

int virtq_push(struct virtq *vq, uint16_t head, uint32_t len)
{
	uint32_t elem[2] = { head, len }; /* struct virtq_used_elem: le32 id, le32 len */
	gpa_t slot;

	if (vq->broken || !vq->size)
		return -EIO;
	/* A device bug, never the driver's: a head that is not one of this ring's. */
	if (head >= vq->size)
		return -EINVAL;
	slot = vq->used + USED_RING + (uint64_t)USED_ELEM_SIZE * (vq->used_idx % vq->size);
	if (mem_write(vq->gm, slot, elem, sizeof(elem)))
		return broke(vq, -EFAULT, "used ring unwritable");
	vq->used_idx++;
	/* Release: the element is visible before the index that publishes it. */
	if (store16(vq->gm, vq->used + USED_IDX, vq->used_idx))
		return broke(vq, -EFAULT, "used index unwritable");
	return 0;
}

bool virtq_should_interrupt(struct virtq *vq)
{
	uint16_t old, flags, event;
	bool valid;

	if (vq->broken)
		return false;
	/* Our used->idx store must be visible before we read the driver's wishes. */
	kv_fence_seq_cst();
	if (!vq->event_idx) {
		if (load16(vq->gm, vq->avail + AVAIL_FLAGS, &flags))
			return true;
		return !(flags & VIRTQ_AVAIL_F_NO_INTERRUPT);
	}
	old = vq->signalled_used;
	valid = vq->signalled_valid;
	vq->signalled_used = vq->used_idx;
	vq->signalled_valid = true;
	if (!valid)
		return true;
	if (load16(vq->gm, used_event_gpa(vq), &event))
		return true;
	/* vring_need_event: did used_idx just move past used_event? */
	return (uint16_t)(vq->used_idx - event - 1) < (uint16_t)(vq->used_idx - old);
}

bool virtq_has_avail(struct virtq *vq)
{
	uint16_t idx;

	if (vq->broken || load16(vq->gm, vq->avail + AVAIL_IDX, &idx))
		return false;
	return idx != vq->last_avail;
}

bool virtq_is_broken(const struct virtq *vq)
{
	return vq->broken;
}

const char *virtq_error(const struct virtq *vq)
{
	return vq->broken ? vq->err : "";
}
