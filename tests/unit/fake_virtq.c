/* SPDX-License-Identifier: MIT */
/* Driver-side virtqueue builder and virtio-mmio driver for unit tests. */
#include "fake_virtq.h"

#include <assert.h>
#include <string.h>

/* Test-only: a failed access to the fake guest is a bug in the test itself. */
static void must(int ret)
{
	assert(ret == 0);
	(void)ret;
}

/*
 * Ring indexes are shared with the device's worker thread: access them the
 * way a real driver does (single atomic 16-bit accesses, release on publish,
 * acquire on reading the device's index).
 */
static uint16_t *idx_ptr(struct fake_vq *fq, gpa_t gpa)
{
	struct mem_slice sl;

	must(mem_slice_get(fq->gm, gpa, 2, &sl));
	assert(sl.len == 2);
	return sl.hva;
}

void fake_vq_init(struct fake_vq *fq, struct gm *gm, uint16_t size, gpa_t base)
{
	memset(fq, 0, sizeof(*fq));
	fq->gm = gm;
	fq->size = size;
	fq->desc = base;
	fq->avail = base + 16ULL * size;
	/* used after avail (+ used_event), 4-aligned; keep it on its own page. */
	fq->used = (fq->avail + 6 + 2ULL * size + 4095) & ~4095ULL;
	must(mem_zero_fill(gm, fq->desc, 16ULL * size));
	must(mem_zero_fill(gm, fq->avail, 6 + 2ULL * size));
	must(mem_zero_fill(gm, fq->used, 6 + 8ULL * size));
}

void fake_vq_set_desc(struct fake_vq *fq, uint16_t i, uint64_t addr, uint32_t len,
		      uint16_t flags, uint16_t next)
{
	fake_vq_set_table_desc(fq, fq->desc, i, addr, len, flags, next);
}

void fake_vq_set_table_desc(struct fake_vq *fq, gpa_t table, uint16_t i, uint64_t addr,
			    uint32_t len, uint16_t flags, uint16_t next)
{
	gpa_t d = table + 16ULL * i;

	must(mem_write_le64(fq->gm, d, addr));
	must(mem_write_le32(fq->gm, d + 8, len));
	must(mem_write_le16(fq->gm, d + 12, flags));
	must(mem_write_le16(fq->gm, d + 14, next));
}

void fake_vq_publish(struct fake_vq *fq, uint16_t head)
{
	must(mem_write_le16(fq->gm, fq->avail + 4 + 2ULL * (fq->avail_idx % fq->size), head));
	fq->avail_idx++;
	__atomic_store_n(idx_ptr(fq, fq->avail + 2), fq->avail_idx, __ATOMIC_RELEASE);
}

void fake_vq_set_avail_idx(struct fake_vq *fq, uint16_t idx)
{
	fq->avail_idx = idx;
	__atomic_store_n(idx_ptr(fq, fq->avail + 2), idx, __ATOMIC_RELEASE);
}

static uint16_t flags_of(const struct fake_buf *b, bool more)
{
	return (uint16_t)((b->write ? VIRTQ_DESC_F_WRITE : 0) | (more ? VIRTQ_DESC_F_NEXT : 0));
}

uint16_t fake_vq_add_chain(struct fake_vq *fq, const struct fake_buf *bufs, unsigned int n)
{
	uint16_t head = fq->next_desc;

	for (unsigned int i = 0; i < n; i++) {
		uint16_t d = fq->next_desc;

		fq->next_desc = (uint16_t)((fq->next_desc + 1) % fq->size);
		fake_vq_set_desc(fq, d, bufs[i].gpa, bufs[i].len, flags_of(&bufs[i], i + 1 < n),
				 fq->next_desc);
	}
	fake_vq_publish(fq, head);
	return head;
}

uint16_t fake_vq_add_indirect(struct fake_vq *fq, gpa_t table, const struct fake_buf *bufs,
			      unsigned int n)
{
	uint16_t head = fq->next_desc;

	for (unsigned int i = 0; i < n; i++)
		fake_vq_set_table_desc(fq, table, (uint16_t)i, bufs[i].gpa, bufs[i].len,
				       flags_of(&bufs[i], i + 1 < n), (uint16_t)(i + 1));
	fq->next_desc = (uint16_t)((fq->next_desc + 1) % fq->size);
	fake_vq_set_desc(fq, head, table, 16 * n, VIRTQ_DESC_F_INDIRECT, 0);
	fake_vq_publish(fq, head);
	return head;
}

uint16_t fake_vq_used_idx(struct fake_vq *fq)
{
	return __atomic_load_n(idx_ptr(fq, fq->used + 2), __ATOMIC_ACQUIRE);
}

bool fake_vq_get_used(struct fake_vq *fq, uint32_t *id, uint32_t *len)
{
	gpa_t e;

	if (fake_vq_used_idx(fq) == fq->last_used)
		return false;
	e = fq->used + 4 + 8ULL * (fq->last_used % fq->size);
	must(mem_read_le32(fq->gm, e, id));
	must(mem_read_le32(fq->gm, e + 4, len));
	fq->last_used++;
	return true;
}

uint16_t fake_vq_avail_event(struct fake_vq *fq)
{
	uint16_t v;

	must(mem_read_le16(fq->gm, fq->used + 4 + 8ULL * fq->size, &v));
	return v;
}

void fake_vq_set_used_event(struct fake_vq *fq, uint16_t v)
{
	must(mem_write_le16(fq->gm, fq->avail + 4 + 2ULL * fq->size, v));
}

void fake_vq_set_avail_flags(struct fake_vq *fq, uint16_t flags)
{
	must(mem_write_le16(fq->gm, fq->avail, flags));
}

uint32_t fake_mmio_read(struct virtio_dev *vdev, uint64_t off)
{
	uint32_t v = 0xdeadbeef;

	virtio_mmio_bus_ops.read(vdev, NULL, off, &v, 4);
	return v;
}

void fake_mmio_write(struct virtio_dev *vdev, uint64_t off, uint32_t val)
{
	virtio_mmio_bus_ops.write(vdev, NULL, off, &val, 4);
}

uint64_t fake_mmio_device_features(struct virtio_dev *vdev)
{
	uint64_t f;

	fake_mmio_write(vdev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	f = fake_mmio_read(vdev, VIRTIO_MMIO_DEVICE_FEATURES);
	fake_mmio_write(vdev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	f |= (uint64_t)fake_mmio_read(vdev, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	return f;
}

bool fake_virtio_negotiate(struct virtio_dev *vdev, uint64_t features)
{
	fake_mmio_write(vdev, VIRTIO_MMIO_STATUS, 0);
	fake_mmio_write(vdev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	fake_mmio_write(vdev, VIRTIO_MMIO_STATUS,
			VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	fake_mmio_write(vdev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	fake_mmio_write(vdev, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)features);
	fake_mmio_write(vdev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	fake_mmio_write(vdev, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(features >> 32));
	fake_mmio_write(vdev, VIRTIO_MMIO_STATUS,
			VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
				VIRTIO_STATUS_FEATURES_OK);
	return fake_mmio_read(vdev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK;
}

void fake_virtio_setup_queue(struct virtio_dev *vdev, unsigned int q, const struct fake_vq *fq)
{
	fake_mmio_write(vdev, VIRTIO_MMIO_QUEUE_SEL, q);
	fake_mmio_write(vdev, VIRTIO_MMIO_QUEUE_NUM, fq->size);
	fake_mmio_write(vdev, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)fq->desc);
	fake_mmio_write(vdev, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(fq->desc >> 32));
	fake_mmio_write(vdev, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)fq->avail);
	fake_mmio_write(vdev, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(fq->avail >> 32));
	fake_mmio_write(vdev, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)fq->used);
	fake_mmio_write(vdev, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(fq->used >> 32));
	fake_mmio_write(vdev, VIRTIO_MMIO_QUEUE_READY, 1);
}

void fake_virtio_driver_ok(struct virtio_dev *vdev)
{
	uint32_t s = fake_mmio_read(vdev, VIRTIO_MMIO_STATUS);

	fake_mmio_write(vdev, VIRTIO_MMIO_STATUS, s | VIRTIO_STATUS_DRIVER_OK);
}

void fake_virtio_notify(struct virtio_dev *vdev, unsigned int q)
{
	fake_mmio_write(vdev, VIRTIO_MMIO_QUEUE_NOTIFY, q);
}
