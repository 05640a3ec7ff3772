/* SPDX-License-Identifier: MIT */
/*
 * The split virtqueue walker (core/virtio/virtq.c) against a driver that
 * writes whatever it likes into its rings. Input:
 *
 *   u16 queue size, u8 flags, then the three ring addresses: u16 offsets
 *   into the ring window (flag 0x4: raw u64 guest-physical addresses
 *   instead, to reach the range checks), u16 n and n bytes of the window's
 *   content (descriptors, avail ring, used ring, indirect tables), then
 *   operations until the input ends: pop, push, should_interrupt,
 *   has_avail, and driver writes between them (a new avail index, a
 *   descriptor changed under the device).
 *
 * Flags: 0x1 VIRTIO_F_INDIRECT_DESC, 0x2 VIRTIO_F_EVENT_IDX. Checked: every
 * chain popped is what virtq.h promises (buffers inside RAM, readable ones
 * first, lengths added up), and a broken queue stays broken.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/virtio/virtq.h"
#include "fuzz.h"
#include "mem/gm.h"

#define RAM (4ULL << 20)
#define WINDOW 0x10000ULL
#define WINDOW_LEN 0x10000ULL
#define MAX_OPS 512

static struct gm *gm;
static struct virtq_chain chain;

void fz_init(void)
{
	gm = fz_guest_memory(RAM);
}

static gpa_t ring_addr(struct fz *f, bool raw)
{
	return raw ? fz_u64(f) : WINDOW + fz_u16(f);
}

static void check_chain(const struct virtq *vq, const struct virtq_chain *c)
{
	uint64_t out = 0, in = 0;

	FZ_CHECK(c->head < vq->size);
	FZ_CHECK(c->nr <= VIRTQ_CHAIN_MAX && c->nr_out <= c->nr);
	for (unsigned int i = 0; i < c->nr; i++) {
		const struct virtq_buf *b = &c->buf[i];

		FZ_CHECK(b->write == (i >= c->nr_out));
		FZ_CHECK(!b->len || mem_range_ok(gm, b->gpa, b->len));
		if (b->write)
			in += b->len;
		else
			out += b->len;
	}
	FZ_CHECK(out == c->out_bytes && in == c->in_bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f = fz_of(data, size);
	uint16_t qsize = fz_u16(&f);
	uint8_t flags = fz_u8(&f);
	uint64_t features = 0;
	gpa_t desc, avail, used;
	const uint8_t *img;
	struct virtq vq;
	size_t n;
	uint16_t last_head = 0;
	unsigned int popped = 0;

	if (flags & 0x1)
		features |= 1ULL << VIRTIO_F_INDIRECT_DESC;
	if (flags & 0x2)
		features |= 1ULL << VIRTIO_F_EVENT_IDX;
	desc = ring_addr(&f, flags & 0x4);
	avail = ring_addr(&f, flags & 0x4);
	used = ring_addr(&f, flags & 0x4);
	/* RAM zero but the window as the driver left it, the same for every run of this input. */
	fz_guest_reset(gm);
	img = fz_bytes(&f, fz_u16(&f), &n);
	if (n && mem_write(gm, WINDOW, img, n))
		fz_fail(__FILE__, __LINE__, "mem_write");
	if (virtq_init(&vq, gm, qsize, desc, avail, used, features)) {
		FZ_CHECK(virtq_is_broken(&vq) && *virtq_error(&vq));
		return 0;
	}
	for (unsigned int op = 0; op < MAX_OPS && f.left; op++) {
		int ret;

		switch (fz_u8(&f) % 6) {
		case 0:
			ret = virtq_pop(&vq, &chain);
			if (!ret) {
				check_chain(&vq, &chain);
				last_head = chain.head;
				popped++;
			} else if (ret == -EIO) {
				FZ_CHECK(virtq_is_broken(&vq));
			} else if (ret != -EAGAIN) {
				FZ_CHECK(virtq_is_broken(&vq) && *virtq_error(&vq));
				FZ_CHECK(virtq_pop(&vq, &chain) == -EIO);
			}
			break;
		case 1: {
			/* The device hands back what it took, or (bit 0) any head. */
			uint8_t how = fz_u8(&f);
			uint16_t head = how & 1 ? fz_u16(&f) : last_head;

			ret = virtq_push(&vq, head, fz_u32(&f));
			FZ_CHECK(ret == 0 || ret == -EIO || ret == -EINVAL || ret == -EFAULT);
			FZ_CHECK(ret != -EINVAL || head >= vq.size);
			break;
		}
		case 2:
			(void)virtq_should_interrupt(&vq);
			break;
		case 3:
			if (virtq_has_avail(&vq))
				FZ_CHECK(!virtq_is_broken(&vq));
			break;
		case 4: {
			/* The driver writes a ring field (an index, a flag, a ring entry). */
			uint16_t off = fz_u16(&f), v = fz_u16(&f);

			if (mem_write_le16(gm, WINDOW + (off & ~1u), v))
				fz_fail(__FILE__, __LINE__, "mem_write_le16");
			break;
		}
		case 5: {
			/* ... or a whole descriptor, 16 bytes at a 16-byte slot of the window. */
			uint16_t slot = fz_u16(&f);
			const uint8_t *d = fz_bytes(&f, 16, &n);

			if (n && mem_write(gm, WINDOW + (slot & 0xfff0u), d, n))
				fz_fail(__FILE__, __LINE__, "mem_write");
			break;
		}
		}
	}
	if (getenv("KVMEM_FUZZ_VERBOSE"))
		fprintf(stderr, "fuzz_virtq: %u chains popped; %s\n", popped,
			virtq_is_broken(&vq) ? virtq_error(&vq) : "not broken");
	return 0;
}
