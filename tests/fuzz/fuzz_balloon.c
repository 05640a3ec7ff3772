/* SPDX-License-Identifier: MIT */
/*
 * The virtio-balloon device (balloon/balloon.c) against a guest driver that
 * sends whatever requests it likes: inflate and deflate PFN arrays, free
 * page reports and statistics buffers of any shape, on any queue, with the
 * config space, targets, timer ticks, resets and the device's migration
 * state in between. The driver side is tests/unit/fake_virtq.c's; the
 * memory hooks are fakes that check what balloon_mem.h promises them
 * (page-aligned, non-empty ranges inside RAM). A fresh device per input.
 *
 * Input: u8 features to accept (balloon bits 0-5, as 1 << bit), u8 (bit 0:
 * VIRTIO_F_INDIRECT_DESC too), then operations until it ends, each an
 * opcode byte and its operands (see the loop below).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balloon/balloon.h"
#include "core/virtio/virtio_mmio.h"
#include "fake_virtq.h"
#include "fuzz.h"
#include "mem/gm.h"

#define RAM (4ULL << 20)
#define RINGS 0x10000ULL	/* queue q's rings at RINGS + q * RING_STRIDE */
#define RING_STRIDE 0x2000ULL
#define QSIZE 16
#define DATA 0x20000ULL		/* buffers the driver fills: DATA_LEN bytes */
#define DATA_LEN 0x10000ULL
#define MAX_OPS 256
#define MAX_BUFS 8

static struct gm *gm;

static int fake_discard(void *arg, gpa_t gpa, uint64_t len, enum balloon_discard_why why)
{
	(void)arg;
	FZ_CHECK(len && gpa % BALLOON_PAGE_SIZE == 0 && len % BALLOON_PAGE_SIZE == 0);
	FZ_CHECK(mem_range_ok(gm, gpa, len));
	FZ_CHECK(why == BALLOON_DISCARD_INFLATE || why == BALLOON_DISCARD_REPORT);
	return (int)(len / BALLOON_PAGE_SIZE);
}

static int fake_undiscard(void *arg, gpa_t gpa, uint64_t len)
{
	(void)arg;
	FZ_CHECK(len && gpa % BALLOON_PAGE_SIZE == 0 && len % BALLOON_PAGE_SIZE == 0);
	FZ_CHECK(mem_range_ok(gm, gpa, len));
	return 0;
}

void fz_init(void)
{
	gm = fz_guest_memory(RAM);
}

struct env {
	struct balloon *b;
	struct virtio_dev *vdev;
	struct fake_vq fq[4];
	uint64_t features;
};

/* The driver's bring-up (reset, features, the queues that exist, DRIVER_OK). */
static void bring_up(struct env *e)
{
	unsigned int nq = 2;

	for (unsigned int q = 0; q < 4; q++)
		fake_vq_init(&e->fq[q], gm, QSIZE, RINGS + q * RING_STRIDE);
	if (!fake_virtio_negotiate(e->vdev, e->features))
		return;
	nq += !!(e->features & (1ULL << VIRTIO_BALLOON_F_STATS_VQ));
	nq += !!(e->features & (1ULL << VIRTIO_BALLOON_F_PAGE_REPORTING));
	for (unsigned int q = 0; q < nq; q++)
		fake_virtio_setup_queue(e->vdev, q, &e->fq[q]);
	fake_virtio_driver_ok(e->vdev);
}

/* A chain of up to MAX_BUFS buffers: per buffer u8 flags, u16 offset or u32 gpa, u16 length. */
static void add_chain(struct env *e, struct fz *f, unsigned int q, bool indirect)
{
	struct fake_buf bufs[MAX_BUFS];
	unsigned int n = fz_u8(f) % MAX_BUFS + 1;

	for (unsigned int i = 0; i < n; i++) {
		uint8_t fl = fz_u8(f);

		bufs[i].gpa = fl & 2 ? fz_u32(f) : DATA + fz_u16(f);
		bufs[i].len = fl & 4 ? fz_u32(f) : fz_u16(f);
		bufs[i].write = fl & 1;
	}
	if (indirect)
		fake_vq_add_indirect(&e->fq[q], DATA + DATA_LEN - 16 * MAX_BUFS, bufs, n);
	else
		fake_vq_add_chain(&e->fq[q], bufs, n);
}



static void check_stats(struct env *e, bool last)
{
	struct balloon_stats st;
	json_t *j;

	balloon_get_stats(e->b, &st);
	if (last && getenv("KVMEM_FUZZ_VERBOSE"))
		fprintf(stderr, "fuzz_balloon: status 0x%x inflates %llu (%llu pages) deflates %llu "
			"(%llu) reports %llu (%llu bytes) stats %llu bad %llu needs_reset %llu\n",
			st.status, (unsigned long long)st.inflates,
			(unsigned long long)st.inflated_pages, (unsigned long long)st.deflates,
			(unsigned long long)st.deflated_pages, (unsigned long long)st.reports,
			(unsigned long long)st.reported_bytes, (unsigned long long)st.guest.updates,
			(unsigned long long)st.bad_descs, (unsigned long long)st.needs_reset);
	FZ_CHECK(st.ram_bytes == RAM);
	FZ_CHECK(st.inflated_pages <= st.inflates * 16384 + 16384);
	j = balloon_stats_json(&st);
	FZ_CHECK(j != NULL);
	json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct balloon_params p = { .name = "fuzz", .stats_interval_ms = 0 };
	struct balloon_mem_ops mem = { fake_discard, fake_undiscard, NULL };
	struct fz f = fz_of(data, size);
	struct env e = { 0 };
	unsigned int trips = 0;	/* round trips in a row, just before this operation */

	e.features = (1ULL << VIRTIO_F_VERSION_1) | (fz_u8(&f) & 0x3f);
	if (fz_u8(&f) & 1)
		e.features |= 1ULL << VIRTIO_F_INDIRECT_DESC;
	fz_guest_reset(gm);
	if (balloon_create_on_gm(gm, &p, &mem, &e.b))
		fz_fail(__FILE__, __LINE__, "balloon_create_on_gm");
	e.vdev = balloon_virtio_dev(e.b);
	bring_up(&e);
	for (unsigned int op = 0; op < MAX_OPS && f.left; op++) {
		/* Low nibble: the operation; bit 4: its variant; bits 5-6: a queue (or a width). */
		uint8_t code = fz_u8(&f);
		bool alt = code & 0x10;
		unsigned int q = (code >> 5) & 3;

		trips = (code & 0xf) == 8 && !alt ? trips + 1 : 0;
		switch (code & 0xf) {
		case 0: /* a request on queue q (direct, or alt: through an indirect table) */
			add_chain(&e, &f, q, alt);
			break;
		case 1: /* buffer content */
			fz_guest_write(&f, gm, DATA, DATA_LEN);
			break;
		case 2: /* a raw head published, or (alt) a raw avail index: hostile */
			if (alt)
				fake_vq_set_avail_idx(&e.fq[q], fz_u16(&f));
			else
				fake_vq_publish(&e.fq[q], fz_u16(&f));
			break;
		case 3: { /* a raw descriptor: u8 index, u64 addr, u32 len, u16 flags, u16 next */
			uint16_t i = fz_u8(&f) % QSIZE;
			uint64_t addr = fz_u64(&f);
			uint32_t len = fz_u32(&f);
			uint16_t fl = fz_u16(&f);

			fake_vq_set_desc(&e.fq[q], i, addr, len, fl, fz_u16(&f));
			break;
		}
		case 4: /* notify queue q, and the worker's turn (alt: with a timer tick) */
			fake_virtio_notify(e.vdev, q);
			virtio_dev_poll(e.vdev, alt);
			break;
		case 5: /* the host's target */
			if (balloon_set_target(e.b, fz_u64(&f)))
				break;
			break;
		case 6: { /* config space: u8 offset, u32 value; width 1 << q; alt: a write */
			uint64_t off = VIRTIO_MMIO_CONFIG + fz_u8(&f) % 24, v = fz_u32(&f);

			if (alt)
				virtio_mmio_bus_ops.write(e.vdev, NULL, off, &v, 1u << q);
			else
				virtio_mmio_bus_ops.read(e.vdev, NULL, off, &v, 1u << q);
			break;
		}
		case 7: /* the driver resets the device and starts again */
			fake_mmio_write(e.vdev, VIRTIO_MMIO_STATUS, 0);
			bring_up(&e);
			break;
		case 8: /* migration: saved and loaded back, or (alt) a peer's state */
			if (!alt) {
				if (fz_round_trip_due(trips))
					fz_vdev_round_trip(e.vdev);
			} else {
				size_t n;
				const uint8_t *t = fz_bytes(&f, fz_u16(&f), &n);

				fz_vdev_load_foreign(e.vdev, t, n);
			}
			break;
		case 9:
			check_stats(&e, false);
			break;
		default: /* the worker's turn without a notification */
			virtio_dev_poll(e.vdev, alt);
			break;
		}
	}
	check_stats(&e, true);
	balloon_destroy(e.b);
	return 0;
}
