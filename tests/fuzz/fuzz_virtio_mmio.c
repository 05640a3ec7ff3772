/* SPDX-License-Identifier: MIT */
/*
 * The virtio-mmio transport (core/virtio/virtio_mmio.c) as a guest driver
 * sees it: register reads and writes of any width at any offset of the
 * device's window, ring memory it fills, the device's worker polled between
 * them; and the transport's migration state, from this device (saved and
 * loaded back) and as a migration peer sends it (any JSON). The device is a
 * sink with two queues that hands every chain back at once, so the
 * transport's rules (status, features, queue set-up, DEVICE_NEEDS_RESET)
 * are what is exercised. A fresh device for every input, and guest memory
 * all zero again (fz_guest_reset: the rings may be put anywhere in it).
 *
 * Input: operations until it ends, each an opcode byte and its operands
 * (see the switch below).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/virtio/virtio_mmio.h"
#include "fuzz.h"
#include "mem/gm.h"

#define RAM (4ULL << 20)
#define WINDOW 0x10000ULL
#define WINDOW_LEN 0x10000ULL
#define MAX_OPS 512
#define CONFIG_LEN 8

struct sink {
	struct virtio_dev *vdev;
	unsigned int chains;		/* handed back */
	uint8_t cfg[CONFIG_LEN];
};

static struct gm *gm;
static struct virtq_chain chain;

static void sink_config_read(void *opaque, uint32_t off, void *data, unsigned int len)
{
	struct sink *s = opaque;

	FZ_CHECK(off + len <= CONFIG_LEN);
	memcpy(data, s->cfg + off, len);
}

static void sink_config_write(void *opaque, uint32_t off, const void *data, unsigned int len)
{
	struct sink *s = opaque;

	FZ_CHECK(off + len <= CONFIG_LEN);
	memcpy(s->cfg + off, data, len);
}

static int sink_features_ok(void *opaque, uint64_t features)
{
	(void)opaque;
	FZ_CHECK(features & (1ULL << VIRTIO_F_VERSION_1));
	return 2;
}

static void sink_queue_notify(void *opaque, unsigned int q)
{
	struct sink *s = opaque;

	FZ_CHECK(q < 2);
	for (unsigned int n = 0; n < 64; n++) {
		if (virtio_dev_pop(s->vdev, q, &chain))
			return;
		if (virtio_dev_push(s->vdev, q, chain.head, (uint32_t)chain.in_bytes))
			return;
		s->chains++;
	}
}

static const struct virtio_dev_ops sink_ops = {
	.config_read = sink_config_read,
	.config_write = sink_config_write,
	.features_ok = sink_features_ok,
	.queue_notify = sink_queue_notify,
};

void fz_init(void)
{
	gm = fz_guest_memory(RAM);
}

static unsigned int width(uint8_t sel)
{
	static const unsigned int w[] = { 4, 1, 2, 8 };

	return w[sel % 4];
}



int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct virtio_dev_params p = {
		.name = "fuzz",
		.device_id = 42,
		.features = 1ULL << 3,
		.nr_queues = 2,
		.queue_max = 256,
		.config_len = CONFIG_LEN,
		.ops = &sink_ops,
	};
	struct fz f = fz_of(data, size);
	struct sink s = { 0 };
	struct virtio_dev_stats st;
	unsigned int trips = 0;	/* round trips in a row, just before this operation */

	fz_guest_reset(gm);
	p.opaque = &s;
	if (virtio_dev_create(gm, &p, &s.vdev))
		fz_fail(__FILE__, __LINE__, "virtio_dev_create");
	for (unsigned int op = 0; op < MAX_OPS && f.left; op++) {
		uint8_t code = fz_u8(&f);

		trips = code % 8 == 5 ? trips + 1 : 0;
		switch (code % 8) {
		case 0: { /* register write: u16 offset, width, u64 value */
			uint64_t off = fz_u16(&f) & 0xfff, v;
			unsigned int len = width(code >> 3);

			v = fz_u64(&f);
			virtio_mmio_bus_ops.write(s.vdev, NULL, off, &v, len);
			break;
		}
		case 1: { /* register read */
			uint64_t off = fz_u16(&f) & 0xfff, v = 0;

			virtio_mmio_bus_ops.read(s.vdev, NULL, off, &v, width(code >> 3));
			if (off == VIRTIO_MMIO_MAGIC_VALUE && width(code >> 3) == 4)
				FZ_CHECK(v == VIRTIO_MMIO_MAGIC);
			break;
		}
		case 2: /* ring memory */
			fz_guest_write(&f, gm, WINDOW, WINDOW_LEN);
			break;
		case 3: /* the worker's turn (and its timer, bit 3) */
			virtio_dev_poll(s.vdev, code & 0x8);
			break;
		case 4:
			virtio_dev_config_changed(s.vdev);
			break;
		case 5:
			if (fz_round_trip_due(trips))
				fz_vdev_round_trip(s.vdev);
			break;
		case 6: { /* a peer's transport state: u16 n, n bytes of JSON */
			size_t n;
			const uint8_t *t = fz_bytes(&f, fz_u16(&f), &n);

			fz_vdev_load_foreign(s.vdev, t, n);
			break;
		}
		case 7:
			virtio_dev_get_stats(s.vdev, &st);
			FZ_CHECK(!(st.status & VIRTIO_STATUS_DRIVER_OK) ||
				 (st.status & VIRTIO_STATUS_FEATURES_OK) ||
				 (st.status & VIRTIO_STATUS_NEEDS_RESET));
			break;
		}
	}
	if (getenv("KVMEM_FUZZ_VERBOSE")) {
		virtio_dev_get_stats(s.vdev, &st);
		fprintf(stderr, "fuzz_virtio_mmio: status 0x%x chains %u interrupts %llu "
			"needs_reset %llu bad_accesses %llu\n", st.status, s.chains,
			(unsigned long long)st.interrupts, (unsigned long long)st.needs_reset,
			(unsigned long long)st.bad_accesses);
	}
	virtio_dev_destroy(s.vdev);
	return 0;
}
