/* SPDX-License-Identifier: MIT */
/*
 * Polled virtio-mmio driver core (virtio 1.2 §3.1 device initialisation,
 * §4.2 the MMIO transport, §2.7 split virtqueues).
 *
 * Memory ordering (x86 is TSO, so only the compiler and the store->load
 * case need care; the device is a host thread on another CPU):
 *   - publishing: descriptors and the avail ring slot are plain stores, the
 *     avail index a release store, so the device never sees the index
 *     before what it covers (§2.7.13.3);
 *   - notifying: a full fence between publishing the index and reading
 *     used->flags, or we could miss a change of mind (§2.7.13.4);
 *   - reaping: used->idx is an acquire load, the element read after it
 *     (§2.7.8); our descriptor table is ours again only after that.
 */
#include "virtio.h"

#include "palloc.h"
#include "rt.h"

#define AVAIL_F_NO_INTERRUPT 1
#define USED_F_NO_NOTIFY 1
#define USED_OFFSET 1024	/* used ring inside the ring memory's second page */

/* How long a reset may take to read back 0 before we carry on regardless. */
#define RESET_WAIT_NS (100 * RT_NS_PER_MS)

static uint32_t rd(struct vio_dev *d, uint32_t off)
{
	return mmio_read32(gpa_add(d->base, off));
}

static void wr(struct vio_dev *d, uint32_t off, uint32_t v)
{
	mmio_write32(gpa_add(d->base, off), v);
}

/* A 64-bit address as the LOW/HIGH register pair at @off_lo, @off_lo + 4. */
static void wr_gpa(struct vio_dev *d, uint32_t off_lo, gpa_t a)
{
	wr(d, off_lo, (uint32_t)gpa_val(a));
	wr(d, off_lo + 4, (uint32_t)(gpa_val(a) >> 32));
}

static bool looks_like(gpa_t base, uint32_t device_id)
{
	return mmio_read32(gpa_add(base, VIO_MAGIC_VALUE)) == VIO_MAGIC &&
	       mmio_read32(gpa_add(base, VIO_VERSION)) == 2 &&
	       mmio_read32(gpa_add(base, VIO_DEVICE_ID)) == device_id;
}

gpa_t vio_find(const struct abi_boot_params *bp, uint32_t device_id, unsigned nth)
{
	uint32_t i;

	for (i = 0; i < bp->nr_devices && i < ABI_MAX_DEVICES; i++) {
		const struct abi_device *dev = &bp->devices[i];

		if (dev->type != ABI_DEV_VIRTIO_MMIO || dev->len < VIO_CONFIG)
			continue;
		if (!looks_like(gpa(dev->gpa), device_id))
			continue;
		if (nth-- == 0)
			return gpa(dev->gpa);
	}
	return GPA_NULL;
}

void vio_reset(struct vio_dev *d)
{
	struct rt_backoff bo = RT_BACKOFF_INIT;
	uint64_t end = rt_now_ns() + RESET_WAIT_NS;

	wr(d, VIO_STATUS, 0);
	while (rd(d, VIO_STATUS) && rt_now_ns() < end)
		rt_backoff(&bo);
	d->features = 0;
}

int vio_begin(struct vio_dev *d)
{
	if (!looks_like(d->base, d->device_id))
		return -ENOENT;
	vio_reset(d);
	wr(d, VIO_STATUS, VIO_S_ACKNOWLEDGE);
	wr(d, VIO_STATUS, VIO_S_ACKNOWLEDGE | VIO_S_DRIVER);
	return 0;
}

uint64_t vio_device_features(struct vio_dev *d)
{
	uint64_t lo, hi;

	wr(d, VIO_DEVICE_FEATURES_SEL, 0);
	lo = rd(d, VIO_DEVICE_FEATURES);
	wr(d, VIO_DEVICE_FEATURES_SEL, 1);
	hi = rd(d, VIO_DEVICE_FEATURES);
	return hi << 32 | lo;
}

int vio_set_features(struct vio_dev *d, uint64_t features)
{
	uint32_t st;

	wr(d, VIO_DRIVER_FEATURES_SEL, 0);
	wr(d, VIO_DRIVER_FEATURES, (uint32_t)features);
	wr(d, VIO_DRIVER_FEATURES_SEL, 1);
	wr(d, VIO_DRIVER_FEATURES, (uint32_t)(features >> 32));
	st = rd(d, VIO_STATUS);
	wr(d, VIO_STATUS, st | VIO_S_FEATURES_OK);
	if (!(rd(d, VIO_STATUS) & VIO_S_FEATURES_OK))
		return -EINVAL;
	d->features = features;
	return 0;
}

static uint16_t *used_idx(struct vio_queue *q)
{
	return &q->used[1];
}

static struct vio_used_elem *used_ring(struct vio_queue *q)
{
	return (struct vio_used_elem *)&q->used[2];
}

int vio_queue_setup(struct vio_dev *d, struct vio_queue *q, unsigned index, unsigned max_size)
{
	uint32_t max;
	uint16_t size = 1;
	uint16_t i;

	wr(d, VIO_QUEUE_SEL, index);
	/* §4.2.3.2: a queue still enabled means the reset did not happen. */
	if (rd(d, VIO_QUEUE_READY))
		return -EBUSY;
	max = rd(d, VIO_QUEUE_NUM_MAX);
	if (!max)
		return -ENOENT;
	max = MIN(MIN(max, max_size), VIO_QUEUE_MAX);
	while ((uint32_t)size * 2 <= max)
		size *= 2;
	if (gpa_is_null(q->mem)) {
		q->mem = palloc_alloc_run(2, 1);
		if (gpa_is_null(q->mem))
			return -ENOMEM;
	}
	q->dev = d;
	q->index = (uint16_t)index;
	q->size = size;
	q->desc = phys_to_virt(q->mem);
	q->avail = phys_to_virt(gpa_add(q->mem, RT_PAGE_SIZE));
	q->used = phys_to_virt(gpa_add(q->mem, RT_PAGE_SIZE + USED_OFFSET));
	memset(q->desc, 0, 2 * RT_PAGE_SIZE);
	for (i = 0; i < size; i++) {
		q->desc[i].next = (uint16_t)(i + 1);
		q->chain_len[i] = 0;
	}
	q->free_head = 0;
	q->num_free = size;
	q->avail_idx = 0;
	q->last_used = 0;
	/* We poll: the device need not raise used-buffer interrupts (§2.7.7). */
	q->avail[0] = AVAIL_F_NO_INTERRUPT;

	wr(d, VIO_QUEUE_NUM, size);
	wr_gpa(d, VIO_QUEUE_DESC_LOW, virt_to_phys(q->desc));
	wr_gpa(d, VIO_QUEUE_DRIVER_LOW, virt_to_phys(q->avail));
	wr_gpa(d, VIO_QUEUE_DEVICE_LOW, virt_to_phys(q->used));
	/* The rings are zeroed before the device may look at them. */
	barrier();
	wr(d, VIO_QUEUE_READY, 1);
	return 0;
}

void vio_driver_ok(struct vio_dev *d)
{
	wr(d, VIO_STATUS, rd(d, VIO_STATUS) | VIO_S_DRIVER_OK);
}

void vio_fail(struct vio_dev *d)
{
	wr(d, VIO_STATUS, rd(d, VIO_STATUS) | VIO_S_FAILED);
}

uint32_t vio_status(struct vio_dev *d)
{
	return rd(d, VIO_STATUS);
}

uint32_t vio_ack_interrupts(struct vio_dev *d)
{
	uint32_t isr = rd(d, VIO_INTERRUPT_STATUS);

	if (isr)
		wr(d, VIO_INTERRUPT_ACK, isr);
	return isr;
}

uint32_t vio_config_read32(struct vio_dev *d, uint32_t off)
{
	return rd(d, VIO_CONFIG + off);
}

void vio_config_write32(struct vio_dev *d, uint32_t off, uint32_t v)
{
	wr(d, VIO_CONFIG + off, v);
}

static void publish(struct vio_queue *q, uint16_t head, uint16_t advance)
{
	q->avail[2 + q->avail_idx % q->size] = head;
	q->avail_idx = (uint16_t)(q->avail_idx + advance);
	/* Release: the slot and the descriptors are visible before the index. */
	store_release(&q->avail[1], q->avail_idx);
}

int vio_add(struct vio_queue *q, const struct vio_buf *bufs, unsigned n, uint64_t token)
{
	uint16_t head, i;
	unsigned k;

	if (!n || !q->size)
		return -EINVAL;
	for (k = 1; k < n; k++)
		if (bufs[k - 1].write && !bufs[k].write)
			return -EINVAL;
	if (n > q->num_free)
		return -ENOSPC;
	head = i = q->free_head;
	for (k = 0; k < n; k++) {
		struct vio_desc *dsc = &q->desc[i];

		dsc->addr = gpa_val(bufs[k].gpa);
		dsc->len = bufs[k].len;
		dsc->flags = (uint16_t)((bufs[k].write ? VIO_DESC_F_WRITE : 0) |
					(k + 1 < n ? VIO_DESC_F_NEXT : 0));
		i = dsc->next;
	}
	/* The chain keeps its .next links; the free list continues after it. */
	q->free_head = i;
	q->num_free = (uint16_t)(q->num_free - n);
	q->token[head] = token;
	q->chain_len[head] = (uint16_t)n;
	publish(q, head, 1);
	return 0;
}

void vio_kick(struct vio_queue *q)
{
	/* The index store must be visible before we read the device's wish. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!(__atomic_load_n(&q->used[0], __ATOMIC_RELAXED) & USED_F_NO_NOTIFY))
		wr(q->dev, VIO_QUEUE_NOTIFY, q->index);
}

bool vio_get_used(struct vio_queue *q, uint64_t *token, uint32_t *len)
{
	while (q->size && load_acquire(used_idx(q)) != q->last_used) {
		struct vio_used_elem e = used_ring(q)[q->last_used % q->size];
		uint16_t head, i, n, k;

		q->last_used++;
		if (e.id >= q->size || !q->chain_len[e.id])
			continue;
		head = (uint16_t)e.id;
		n = q->chain_len[head];
		/* Back on the free list: walk to the chain's tail, link it to the old head. */
		for (i = head, k = 1; k < n; k++)
			i = q->desc[i].next;
		q->desc[i].next = q->free_head;
		q->free_head = head;
		q->num_free = (uint16_t)(q->num_free + n);
		q->chain_len[head] = 0;
		if (token)
			*token = q->token[head];
		if (len)
			*len = e.len;
		return true;
	}
	return false;
}

void vio_raw_desc(struct vio_queue *q, uint16_t i, gpa_t addr, uint32_t len, uint16_t flags,
		  uint16_t next)
{
	struct vio_desc *dsc = &q->desc[i % q->size];

	dsc->addr = gpa_val(addr);
	dsc->len = len;
	dsc->flags = flags;
	dsc->next = next;
}

void vio_raw_publish(struct vio_queue *q, uint16_t head, uint16_t advance)
{
	publish(q, head, advance);
}
