/* SPDX-License-Identifier: MIT */
/*
 * The virtio-mmio transport's register state machine and the split
 * virtqueue parser, against a fake driver (fake_virtq.c) in anonymous guest
 * memory. Every hostile ring must leave the device in DEVICE_NEEDS_RESET
 * with a config interrupt, hand the device no chain, and let a reset bring
 * the device back.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "core/virtio/virtio_mmio.h"
#include "core/virtio/virtq.h"
#include "fake_virtq.h"
#include "mem/gm.h"

#define RAM (16ULL << 20)
#define RING0 0x300000ULL
#define RING1 0x310000ULL
#define DATA 0x400000ULL
#define TABLE 0x500000ULL
#define QSIZE 16
#define SINK_ID 42
#define SINK_FEATURE (1ULL << 3)
#define VERSION_1 (1ULL << VIRTIO_F_VERSION_1)

/* A test device: takes every chain on its queues and returns it at once. */
struct sink {
	struct gm *gm;
	struct virtio_dev *vdev;
	struct fake_vq fq[2];
	unsigned int chains;		/* chains handed to the device */
	unsigned int resets;		/* ops->reset calls */
	unsigned int timers;		/* ops->timer calls */
	uint64_t features;		/* as given to features_ok */
	struct virtq_chain *last;	/* the last chain */
	uint8_t cfg[8];			/* config space */
};

static void sink_config_read(void *opaque, uint32_t off, void *data, unsigned int len)
{
	struct sink *s = opaque;

	memcpy(data, s->cfg + off, len);
}

static void sink_config_write(void *opaque, uint32_t off, const void *data, unsigned int len)
{
	struct sink *s = opaque;

	memcpy(s->cfg + off, data, len);
}

static int sink_features_ok(void *opaque, uint64_t features)
{
	struct sink *s = opaque;

	s->features = features;
	return 2;
}

static void sink_queue_notify(void *opaque, unsigned int q)
{
	struct sink *s = opaque;

	for (unsigned int n = 0; n < QSIZE; n++) {
		if (virtio_dev_pop(s->vdev, q, s->last))
			return;
		__atomic_fetch_add(&s->chains, 1, __ATOMIC_RELAXED);
		if (virtio_dev_push(s->vdev, q, s->last->head, (uint32_t)s->last->in_bytes))
			return;
	}
}

static void sink_timer(void *opaque)
{
	__atomic_fetch_add(&((struct sink *)opaque)->timers, 1, __ATOMIC_RELAXED);
}

static void sink_reset(void *opaque)
{
	((struct sink *)opaque)->resets++;
}

static const struct virtio_dev_ops sink_ops = {
	.config_read = sink_config_read,
	.config_write = sink_config_write,
	.features_ok = sink_features_ok,
	.queue_notify = sink_queue_notify,
	.timer = sink_timer,
	.reset = sink_reset,
};

static int setup(void **state)
{
	struct virtio_dev_params p = {
		.name = "sink",
		.device_id = SINK_ID,
		.features = SINK_FEATURE,
		.nr_queues = 2,
		.queue_max = 256,
		.config_len = 8,
		.ops = &sink_ops,
	};
	struct sink *s = kv_zalloc(sizeof(*s));

	if (!s)
		return -1;
	s->last = kv_zalloc(sizeof(*s->last));
	if (!s->last || mem_create_anon(RAM, &s->gm))
		return -1;
	p.opaque = s;
	if (virtio_dev_create(s->gm, &p, &s->vdev))
		return -1;
	fake_vq_init(&s->fq[0], s->gm, QSIZE, RING0);
	fake_vq_init(&s->fq[1], s->gm, QSIZE, RING1);
	*state = s;
	return 0;
}

static int teardown(void **state)
{
	struct sink *s = *state;

	virtio_dev_destroy(s->vdev);
	mem_destroy(s->gm);
	kv_free(s->last);
	kv_free(s);
	return 0;
}

static uint32_t status(struct sink *s)
{
	return fake_mmio_read(s->vdev, VIRTIO_MMIO_STATUS);
}

/* Negotiate `features`, enable queue 0 (and 1), set DRIVER_OK. */
static void bring_up(struct sink *s, uint64_t features)
{
	assert_true(fake_virtio_negotiate(s->vdev, features));
	fake_virtio_setup_queue(s->vdev, 0, &s->fq[0]);
	fake_virtio_setup_queue(s->vdev, 1, &s->fq[1]);
	fake_virtio_driver_ok(s->vdev);
	assert_int_equal(status(s) & VIRTIO_STATUS_NEEDS_RESET, 0);
}

static void assert_needs_reset(struct sink *s)
{
	struct virtio_dev_stats st;

	virtio_dev_get_stats(s->vdev, &st);
	assert_true(status(s) & VIRTIO_STATUS_NEEDS_RESET);
	assert_int_equal(st.needs_reset, 1);
}

/* After a hostile ring: needs reset, config interrupt, no chain, and a reset recovers. */
static void assert_refused_then_recovers(struct sink *s, uint64_t features)
{
	uint32_t id, len;
	struct fake_buf b = { DATA, 64, false };

	virtio_dev_poll(s->vdev, false);
	assert_needs_reset(s);
	assert_true(fake_mmio_read(s->vdev, VIRTIO_MMIO_INTERRUPT_STATUS) &
		    VIRTIO_MMIO_INT_CONFIG);
	assert_int_equal(s->chains, 0);
	assert_false(fake_vq_get_used(&s->fq[0], &id, &len));
	/* More notifications do nothing until the driver resets. */
	fake_virtio_notify(s->vdev, 0);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(s->chains, 0);
	/* Reset, fresh rings: the device works again. */
	fake_mmio_write(s->vdev, VIRTIO_MMIO_STATUS, 0);
	assert_int_equal(status(s), 0);
	fake_vq_init(&s->fq[0], s->gm, QSIZE, RING0);
	fake_vq_init(&s->fq[1], s->gm, QSIZE, RING1);
	bring_up(s, features);
	fake_vq_add_chain(&s->fq[0], &b, 1);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(s->chains, 1);
	assert_true(fake_vq_get_used(&s->fq[0], &id, &len));
}

/* --- registers --- */

static void test_mmio_identity_registers(void **state)
{
	struct sink *s = *state;

	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_MAGIC_VALUE), 0x74726976);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_VERSION), 2);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_DEVICE_ID), SINK_ID);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_VENDOR_ID), VIRTIO_MMIO_VENDOR);
	assert_int_equal(status(s), 0);
	/* No shared memory regions: length reads as all ones. */
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_SHM_LEN_LOW), 0xffffffff);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_SHM_LEN_HIGH), 0xffffffff);
}

static void test_mmio_offers_device_and_transport_features(void **state)
{
	struct sink *s = *state;
	uint64_t f = fake_mmio_device_features(s->vdev);

	assert_true(f & SINK_FEATURE);
	assert_true(f & VERSION_1);
	assert_true(f & (1ULL << VIRTIO_F_INDIRECT_DESC));
	assert_true(f & (1ULL << VIRTIO_F_EVENT_IDX));
	fake_mmio_write(s->vdev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_DEVICE_FEATURES), 0);
}

static void test_mmio_features_ok_refused_without_version_1(void **state)
{
	struct sink *s = *state;

	assert_false(fake_virtio_negotiate(s->vdev, SINK_FEATURE));
	assert_int_equal(s->features, 0);
}

static void test_mmio_features_ok_refused_for_unoffered_bit(void **state)
{
	struct sink *s = *state;

	assert_false(fake_virtio_negotiate(s->vdev, VERSION_1 | (1ULL << 5)));
	/* A bit above 63 (DriverFeaturesSel 2) is never offered either. */
	fake_mmio_write(s->vdev, VIRTIO_MMIO_STATUS, 0);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_STATUS,
			VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(VERSION_1 >> 32));
	fake_mmio_write(s->vdev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_DRIVER_FEATURES, 1);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_STATUS,
			VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
				VIRTIO_STATUS_FEATURES_OK);
	assert_int_equal(status(s) & VIRTIO_STATUS_FEATURES_OK, 0);
	assert_int_equal(s->features, 0);
}

static void test_mmio_features_ok_accepted_and_frozen(void **state)
{
	struct sink *s = *state;
	struct virtio_dev_stats st;

	assert_true(fake_virtio_negotiate(s->vdev, VERSION_1 | SINK_FEATURE));
	assert_int_equal(s->features, VERSION_1 | SINK_FEATURE);
	/* Feature writes after FEATURES_OK are ignored. */
	fake_mmio_write(s->vdev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_DRIVER_FEATURES, 0);
	virtio_dev_get_stats(s->vdev, &st);
	assert_int_equal(st.features, VERSION_1 | SINK_FEATURE);
}

static void test_mmio_reset_clears_state(void **state)
{
	struct sink *s = *state;
	unsigned int resets;

	bring_up(s, VERSION_1);
	virtio_dev_config_changed(s->vdev);
	assert_int_not_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
	resets = s->resets;
	fake_mmio_write(s->vdev, VIRTIO_MMIO_STATUS, 0);
	assert_int_equal(s->resets, resets + 1);
	assert_int_equal(status(s), 0);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_SEL, 0);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_QUEUE_READY), 0);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_QUEUE_NUM), 0);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_QUEUE_DESC_LOW), 0);
}

static void test_mmio_driver_cannot_clear_status_bits(void **state)
{
	struct sink *s = *state;

	bring_up(s, VERSION_1);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	assert_true(status(s) & VIRTIO_STATUS_DRIVER_OK);
	/* Nor set NEEDS_RESET itself. */
	fake_mmio_write(s->vdev, VIRTIO_MMIO_STATUS, status(s) | VIRTIO_STATUS_NEEDS_RESET);
	assert_int_equal(status(s) & VIRTIO_STATUS_NEEDS_RESET, 0);
}

static void test_mmio_driver_ok_without_features_ok_needs_reset(void **state)
{
	struct sink *s = *state;

	fake_mmio_write(s->vdev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_STATUS,
			VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
				VIRTIO_STATUS_DRIVER_OK);
	assert_int_equal(status(s) & VIRTIO_STATUS_DRIVER_OK, 0);
	assert_needs_reset(s);
}

static void test_mmio_bad_width_and_reserved_accesses_are_ignored(void **state)
{
	struct sink *s = *state;
	uint16_t v16 = 0xffff;
	uint64_t v64 = ~0ULL;
	struct virtio_dev_stats st;

	virtio_mmio_bus_ops.read(s->vdev, NULL, VIRTIO_MMIO_MAGIC_VALUE, &v16, 2);
	assert_int_equal(v16, 0);
	virtio_mmio_bus_ops.write(s->vdev, NULL, VIRTIO_MMIO_STATUS, &v64, 8);
	virtio_mmio_bus_ops.write(s->vdev, NULL, VIRTIO_MMIO_STATUS + 1, &v16, 2);
	assert_int_equal(status(s), 0);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_MAGIC_VALUE, 1);
	fake_mmio_write(s->vdev, 0x0f0, 1);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_MAGIC_VALUE), 0x74726976);
	/* Config space beyond config_len: reads zeros, writes dropped. */
	v64 = ~0ULL;
	virtio_mmio_bus_ops.read(s->vdev, NULL, VIRTIO_MMIO_CONFIG + 4, &v64, 8);
	assert_int_equal(v64, 0);
	virtio_dev_get_stats(s->vdev, &st);
	assert_true(st.bad_accesses >= 4);
}

static void test_mmio_queue_num_max_only_for_existing_queues(void **state)
{
	struct sink *s = *state;

	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_SEL, 1);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_SEL, 2);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_SEL, 0xffffffff);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
	/* Enabling a missing queue does nothing. */
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_READY, 1);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_QUEUE_READY), 0);
	assert_int_equal(status(s) & VIRTIO_STATUS_NEEDS_RESET, 0);
}

static void test_mmio_queue_registers_frozen_while_ready(void **state)
{
	struct sink *s = *state;

	bring_up(s, VERSION_1);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_SEL, 0);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x123000);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_NUM, 4);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_QUEUE_DESC_LOW), RING0);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_QUEUE_NUM), QSIZE);
}

static void test_mmio_config_space_and_generation(void **state)
{
	struct sink *s = *state;
	uint32_t gen;

	memcpy(s->cfg, "\x11\x22\x33\x44\x55\x66\x77\x88", 8);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_CONFIG), 0x44332211);
	{
		uint8_t b = 0;

		virtio_mmio_bus_ops.read(s->vdev, NULL, VIRTIO_MMIO_CONFIG + 5, &b, 1);
		assert_int_equal(b, 0x66);
	}
	fake_mmio_write(s->vdev, VIRTIO_MMIO_CONFIG + 4, 0xa1b2c3d4);
	assert_int_equal(s->cfg[4], 0xd4);
	gen = fake_mmio_read(s->vdev, VIRTIO_MMIO_CONFIG_GENERATION);
	/* Before DRIVER_OK: a new generation but no interrupt. */
	virtio_dev_config_changed(s->vdev);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_CONFIG_GENERATION), gen + 1);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
	bring_up(s, VERSION_1);
	virtio_dev_config_changed(s->vdev);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_INTERRUPT_STATUS),
			 VIRTIO_MMIO_INT_CONFIG);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

/* --- well-formed rings --- */

static void test_virtq_chain_round_trip(void **state)
{
	struct sink *s = *state;
	struct fake_buf b[3] = {
		{ DATA, 100, false },
		{ DATA + 0x1000, 200, false },
		{ DATA + 0x2000, 300, true },
	};
	uint32_t id, len;
	uint16_t head;

	bring_up(s, VERSION_1);
	head = fake_vq_add_chain(&s->fq[0], b, 3);
	fake_virtio_notify(s->vdev, 0);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(s->chains, 1);
	assert_int_equal(s->last->head, head);
	assert_int_equal(s->last->nr, 3);
	assert_int_equal(s->last->nr_out, 2);
	assert_int_equal(s->last->out_bytes, 300);
	assert_int_equal(s->last->in_bytes, 300);
	assert_int_equal(s->last->buf[1].gpa, DATA + 0x1000);
	assert_true(s->last->buf[2].write);
	assert_true(fake_vq_get_used(&s->fq[0], &id, &len));
	assert_int_equal(id, head);
	assert_int_equal(len, 300);
	assert_true(fake_mmio_read(s->vdev, VIRTIO_MMIO_INTERRUPT_STATUS) &
		    VIRTIO_MMIO_INT_VRING);
}

static void test_virtq_many_chains_wrap_the_ring(void **state)
{
	struct sink *s = *state;
	struct fake_buf b = { DATA, 8, true };
	uint32_t id, len;

	bring_up(s, VERSION_1);
	for (unsigned int round = 0; round < 5; round++) {
		for (unsigned int i = 0; i < QSIZE; i++)
			fake_vq_add_chain(&s->fq[0], &b, 1);
		virtio_dev_poll(s->vdev, false);
		for (unsigned int i = 0; i < QSIZE; i++)
			assert_true(fake_vq_get_used(&s->fq[0], &id, &len));
	}
	assert_int_equal(s->chains, 5 * QSIZE);
	assert_int_equal(status(s) & VIRTIO_STATUS_NEEDS_RESET, 0);
}

static void test_virtq_chain_of_exactly_queue_size_is_fine(void **state)
{
	struct sink *s = *state;
	struct fake_buf b[QSIZE];

	for (unsigned int i = 0; i < QSIZE; i++)
		b[i] = (struct fake_buf){ DATA + 64 * i, 64, false };
	bring_up(s, VERSION_1);
	fake_vq_add_chain(&s->fq[0], b, QSIZE);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(s->chains, 1);
	assert_int_equal(s->last->nr, QSIZE);
}

static void test_virtq_indirect_chain(void **state)
{
	struct sink *s = *state;
	struct fake_buf b[40];
	uint32_t id, len;

	/* An indirect table may be longer than the queue. */
	for (unsigned int i = 0; i < 40; i++)
		b[i] = (struct fake_buf){ DATA + 0x1000 * i, 0x1000, i >= 20 };
	bring_up(s, VERSION_1 | (1ULL << VIRTIO_F_INDIRECT_DESC));
	fake_vq_add_indirect(&s->fq[0], TABLE, b, 40);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(s->chains, 1);
	assert_int_equal(s->last->nr, 40);
	assert_int_equal(s->last->nr_out, 20);
	assert_true(fake_vq_get_used(&s->fq[0], &id, &len));
	assert_int_equal(len, 20 * 0x1000);
}

static void test_virtq_direct_then_indirect(void **state)
{
	struct sink *s = *state;
	struct fake_vq *fq = &s->fq[0];

	bring_up(s, VERSION_1 | (1ULL << VIRTIO_F_INDIRECT_DESC));
	/* virtio 1.2 §2.7.5.3.2: direct descriptors, then one indirect one. */
	fake_vq_set_table_desc(fq, TABLE, 0, DATA + 0x1000, 16, VIRTQ_DESC_F_WRITE, 0);
	fake_vq_set_desc(fq, 0, DATA, 16, VIRTQ_DESC_F_NEXT, 1);
	fake_vq_set_desc(fq, 1, TABLE, 16, VIRTQ_DESC_F_INDIRECT, 0);
	fake_vq_publish(fq, 0);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(s->chains, 1);
	assert_int_equal(s->last->nr, 2);
	assert_int_equal(s->last->nr_out, 1);
}

static void test_virtq_zero_length_buffer_is_not_range_checked(void **state)
{
	struct sink *s = *state;
	struct fake_buf b = { 0xfffffffffffff000ULL, 0, false };

	bring_up(s, VERSION_1);
	fake_vq_add_chain(&s->fq[0], &b, 1);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(s->chains, 1);
}

static void test_virtq_no_interrupt_flag_suppresses_interrupt(void **state)
{
	struct sink *s = *state;
	struct fake_buf b = { DATA, 8, true };

	bring_up(s, VERSION_1);
	fake_vq_set_avail_flags(&s->fq[0], VIRTQ_AVAIL_F_NO_INTERRUPT);
	fake_vq_add_chain(&s->fq[0], &b, 1);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(s->chains, 1);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

static void test_virtq_event_idx(void **state)
{
	struct sink *s = *state;
	struct fake_buf b = { DATA, 8, true };

	bring_up(s, VERSION_1 | (1ULL << VIRTIO_F_EVENT_IDX));
	/* The driver wants an interrupt only once used idx passes 2. */
	fake_vq_set_used_event(&s->fq[0], 2);
	fake_vq_add_chain(&s->fq[0], &b, 1);
	virtio_dev_poll(s->vdev, false);
	/* The first push always interrupts (nothing signalled yet). */
	fake_mmio_write(s->vdev, VIRTIO_MMIO_INTERRUPT_ACK, 3);
	fake_vq_add_chain(&s->fq[0], &b, 1);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
	fake_vq_add_chain(&s->fq[0], &b, 1);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_INTERRUPT_STATUS),
			 VIRTIO_MMIO_INT_VRING);
	/* The device asks to be notified for the next buffer it has not seen. */
	assert_int_equal(fake_vq_avail_event(&s->fq[0]), 3);
	assert_int_equal(s->chains, 3);
}

static void test_virtq_buffers_before_driver_ok_wait(void **state)
{
	struct sink *s = *state;
	struct fake_buf b = { DATA, 8, true };

	assert_true(fake_virtio_negotiate(s->vdev, VERSION_1));
	fake_virtio_setup_queue(s->vdev, 0, &s->fq[0]);
	fake_vq_add_chain(&s->fq[0], &b, 1);
	fake_virtio_notify(s->vdev, 0);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(s->chains, 0);
	fake_virtio_driver_ok(s->vdev);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(s->chains, 1);
}

/* --- hostile rings: each ends in needs-reset --- */

static void test_hostile_descriptor_self_loop(void **state)
{
	struct sink *s = *state;

	bring_up(s, VERSION_1);
	fake_vq_set_desc(&s->fq[0], 3, DATA, 8, VIRTQ_DESC_F_NEXT, 3);
	fake_vq_publish(&s->fq[0], 3);
	assert_refused_then_recovers(s, VERSION_1);
}

static void test_hostile_descriptor_cycle(void **state)
{
	struct sink *s = *state;

	bring_up(s, VERSION_1);
	/* 0 -> 1 -> 2 -> 0: a chain longer than the queue. */
	fake_vq_set_desc(&s->fq[0], 0, DATA, 8, VIRTQ_DESC_F_NEXT, 1);
	fake_vq_set_desc(&s->fq[0], 1, DATA, 8, VIRTQ_DESC_F_NEXT, 2);
	fake_vq_set_desc(&s->fq[0], 2, DATA, 8, VIRTQ_DESC_F_NEXT, 0);
	fake_vq_publish(&s->fq[0], 0);
	assert_refused_then_recovers(s, VERSION_1);
}

static void test_hostile_next_beyond_queue(void **state)
{
	struct sink *s = *state;

	bring_up(s, VERSION_1);
	fake_vq_set_desc(&s->fq[0], 0, DATA, 8, VIRTQ_DESC_F_NEXT, QSIZE);
	fake_vq_publish(&s->fq[0], 0);
	assert_refused_then_recovers(s, VERSION_1);
}

static void test_hostile_head_beyond_queue(void **state)
{
	struct sink *s = *state;

	bring_up(s, VERSION_1);
	fake_vq_publish(&s->fq[0], 0xffff);
	assert_refused_then_recovers(s, VERSION_1);
}

static void test_hostile_buffer_outside_ram(void **state)
{
	struct sink *s = *state;
	struct fake_buf b = { RAM + 0x1000, 8, false };

	bring_up(s, VERSION_1);
	fake_vq_add_chain(&s->fq[0], &b, 1);
	assert_refused_then_recovers(s, VERSION_1);
}

static void test_hostile_buffer_crossing_end_of_ram(void **state)
{
	struct sink *s = *state;
	struct fake_buf b = { RAM - 0x10, 0x20, true };

	bring_up(s, VERSION_1);
	fake_vq_add_chain(&s->fq[0], &b, 1);
	assert_refused_then_recovers(s, VERSION_1);
}

static void test_hostile_buffer_address_wraps(void **state)
{
	struct sink *s = *state;
	struct fake_buf b = { UINT64_MAX - 0xf, 0x100, false };

	bring_up(s, VERSION_1);
	fake_vq_add_chain(&s->fq[0], &b, 1);
	assert_refused_then_recovers(s, VERSION_1);
}

static void test_hostile_readable_after_writable(void **state)
{
	struct sink *s = *state;
	struct fake_buf b[2] = { { DATA, 8, true }, { DATA + 8, 8, false } };

	bring_up(s, VERSION_1);
	fake_vq_add_chain(&s->fq[0], b, 2);
	assert_refused_then_recovers(s, VERSION_1);
}

static void test_hostile_avail_index_jumps_ahead(void **state)
{
	struct sink *s = *state;

	bring_up(s, VERSION_1);
	fake_vq_set_avail_idx(&s->fq[0], QSIZE + 1);
	assert_refused_then_recovers(s, VERSION_1);
}

static void test_hostile_avail_index_goes_back(void **state)
{
	struct sink *s = *state;
	struct fake_buf b = { DATA, 8, true };
	uint32_t id, len;

	bring_up(s, VERSION_1);
	fake_vq_add_chain(&s->fq[0], &b, 1);
	virtio_dev_poll(s->vdev, false);
	assert_int_equal(s->chains, 1);
	assert_true(fake_vq_get_used(&s->fq[0], &id, &len));
	s->chains = 0;
	/* Going back by one looks like 65535 new buffers. */
	fake_vq_set_avail_idx(&s->fq[0], 0);
	assert_refused_then_recovers(s, VERSION_1);
}

/*
 * The reason a ring broke says what backs the page of the bad index, so a
 * driver that wrote it can be told from memory that lost the driver's write.
 */
static void test_hostile_avail_index_reason_names_the_backing(void **state)
{
	struct sink *s = *state;
	struct virtq vq = { 0 };
	struct virtq_chain *c = calloc(1, sizeof(*c));
	const char *why;

	assert_non_null(c);
	fake_vq_init(&s->fq[0], s->gm, QSIZE, RING0);
	assert_int_equal(virtq_init(&vq, s->gm, QSIZE, s->fq[0].desc, s->fq[0].avail,
				    s->fq[0].used, VERSION_1),
			 0);
	fake_vq_set_avail_idx(&s->fq[0], QSIZE + 1);
	assert_int_equal(virtq_pop(&vq, c), -EINVAL);
	why = virtq_error(&vq);
	assert_non_null(strstr(why, "is 17 ahead of the device"));
	assert_non_null(strstr(why, "; page "));
	assert_non_null(strstr(why, " is anon, chunk write-protect only"));
	assert_non_null(strstr(why, "(resident)"));
	free(c);
}

#define INDIRECT (VERSION_1 | (1ULL << VIRTIO_F_INDIRECT_DESC))

static void test_hostile_indirect_without_feature(void **state)
{
	struct sink *s = *state;
	struct fake_buf b = { DATA, 8, false };

	bring_up(s, VERSION_1);
	fake_vq_add_indirect(&s->fq[0], TABLE, &b, 1);
	assert_refused_then_recovers(s, VERSION_1);
}

static void test_hostile_indirect_table_outside_ram(void **state)
{
	struct sink *s = *state;

	bring_up(s, INDIRECT);
	fake_vq_set_desc(&s->fq[0], 0, RAM - 16, 32, VIRTQ_DESC_F_INDIRECT, 0);
	fake_vq_publish(&s->fq[0], 0);
	assert_refused_then_recovers(s, INDIRECT);
}

static void test_hostile_indirect_length_not_multiple_of_16(void **state)
{
	struct sink *s = *state;

	bring_up(s, INDIRECT);
	fake_vq_set_table_desc(&s->fq[0], TABLE, 0, DATA, 8, 0, 0);
	fake_vq_set_desc(&s->fq[0], 0, TABLE, 24, VIRTQ_DESC_F_INDIRECT, 0);
	fake_vq_publish(&s->fq[0], 0);
	assert_refused_then_recovers(s, INDIRECT);
}

static void test_hostile_indirect_length_zero(void **state)
{
	struct sink *s = *state;

	bring_up(s, INDIRECT);
	fake_vq_set_desc(&s->fq[0], 0, TABLE, 0, VIRTQ_DESC_F_INDIRECT, 0);
	fake_vq_publish(&s->fq[0], 0);
	assert_refused_then_recovers(s, INDIRECT);
}

static void test_hostile_indirect_too_long(void **state)
{
	struct sink *s = *state;

	bring_up(s, INDIRECT);
	fake_vq_set_desc(&s->fq[0], 0, TABLE, 16 * (VIRTQ_CHAIN_MAX + 1), VIRTQ_DESC_F_INDIRECT,
			 0);
	fake_vq_publish(&s->fq[0], 0);
	assert_refused_then_recovers(s, INDIRECT);
}

static void test_hostile_nested_indirect(void **state)
{
	struct sink *s = *state;

	bring_up(s, INDIRECT);
	fake_vq_set_table_desc(&s->fq[0], TABLE, 0, TABLE + 0x1000, 16, VIRTQ_DESC_F_INDIRECT, 0);
	fake_vq_set_table_desc(&s->fq[0], TABLE + 0x1000, 0, DATA, 8, 0, 0);
	fake_vq_set_desc(&s->fq[0], 0, TABLE, 16, VIRTQ_DESC_F_INDIRECT, 0);
	fake_vq_publish(&s->fq[0], 0);
	assert_refused_then_recovers(s, INDIRECT);
}

static void test_hostile_indirect_with_next(void **state)
{
	struct sink *s = *state;

	bring_up(s, INDIRECT);
	fake_vq_set_table_desc(&s->fq[0], TABLE, 0, DATA, 8, 0, 0);
	fake_vq_set_desc(&s->fq[0], 0, TABLE, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
	fake_vq_set_desc(&s->fq[0], 1, DATA, 8, 0, 0);
	fake_vq_publish(&s->fq[0], 0);
	assert_refused_then_recovers(s, INDIRECT);
}

static void test_hostile_indirect_loop(void **state)
{
	struct sink *s = *state;

	bring_up(s, INDIRECT);
	fake_vq_set_table_desc(&s->fq[0], TABLE, 0, DATA, 8, VIRTQ_DESC_F_NEXT, 1);
	fake_vq_set_table_desc(&s->fq[0], TABLE, 1, DATA, 8, VIRTQ_DESC_F_NEXT, 0);
	fake_vq_set_desc(&s->fq[0], 0, TABLE, 32, VIRTQ_DESC_F_INDIRECT, 0);
	fake_vq_publish(&s->fq[0], 0);
	assert_refused_then_recovers(s, INDIRECT);
}

static void test_hostile_indirect_next_beyond_table(void **state)
{
	struct sink *s = *state;

	bring_up(s, INDIRECT);
	fake_vq_set_table_desc(&s->fq[0], TABLE, 0, DATA, 8, VIRTQ_DESC_F_NEXT, 2);
	fake_vq_set_table_desc(&s->fq[0], TABLE, 1, DATA, 8, 0, 0);
	fake_vq_set_desc(&s->fq[0], 0, TABLE, 32, VIRTQ_DESC_F_INDIRECT, 0);
	fake_vq_publish(&s->fq[0], 0);
	assert_refused_then_recovers(s, INDIRECT);
}

static void test_hostile_indirect_buffer_outside_ram(void **state)
{
	struct sink *s = *state;
	struct fake_buf b[2] = { { DATA, 8, false }, { RAM + 0x100000, 8, true } };

	bring_up(s, INDIRECT);
	fake_vq_add_indirect(&s->fq[0], TABLE, b, 2);
	assert_refused_then_recovers(s, INDIRECT);
}

/* --- hostile queue set-up --- */

/* Program queue 0 with these values and enable it; expect needs-reset. */
static void setup_queue_raw(struct sink *s, uint32_t num, uint64_t desc, uint64_t avail,
			    uint64_t used)
{
	assert_true(fake_virtio_negotiate(s->vdev, VERSION_1));
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_SEL, 0);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_NUM, num);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)avail);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(avail >> 32));
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)used);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(used >> 32));
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_READY, 1);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_QUEUE_READY), 0);
	assert_needs_reset(s);
}

static void test_hostile_queue_size_not_power_of_2(void **state)
{
	struct sink *s = *state;

	setup_queue_raw(s, 12, s->fq[0].desc, s->fq[0].avail, s->fq[0].used);
}

static void test_hostile_queue_size_zero(void **state)
{
	struct sink *s = *state;

	setup_queue_raw(s, 0, s->fq[0].desc, s->fq[0].avail, s->fq[0].used);
}

static void test_hostile_queue_size_above_max(void **state)
{
	struct sink *s = *state;

	setup_queue_raw(s, 512, s->fq[0].desc, s->fq[0].avail, s->fq[0].used);
}

static void test_hostile_desc_table_misaligned(void **state)
{
	struct sink *s = *state;

	setup_queue_raw(s, QSIZE, RING0 + 8, s->fq[0].avail, s->fq[0].used);
}

static void test_hostile_avail_ring_misaligned(void **state)
{
	struct sink *s = *state;

	setup_queue_raw(s, QSIZE, RING0, s->fq[0].avail + 1, s->fq[0].used);
}

static void test_hostile_used_ring_misaligned(void **state)
{
	struct sink *s = *state;

	setup_queue_raw(s, QSIZE, RING0, s->fq[0].avail, s->fq[0].used + 2);
}

static void test_hostile_rings_outside_ram(void **state)
{
	struct sink *s = *state;

	setup_queue_raw(s, QSIZE, RAM - 16 * 8, s->fq[0].avail, s->fq[0].used);
}

static void test_hostile_used_ring_in_mmio_hole(void **state)
{
	struct sink *s = *state;

	setup_queue_raw(s, QSIZE, RING0, s->fq[0].avail, 0xd0000000ULL);
}

static void test_hostile_queue_enabled_before_features_ok(void **state)
{
	struct sink *s = *state;

	fake_mmio_write(s->vdev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_SEL, 0);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_NUM, QSIZE);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_READY, 1);
	assert_needs_reset(s);
}

/* --- migration state --- */

/* Saved, loaded back into the same device and saved again: the same state. */
static void assert_state_survives(struct sink *s)
{
	json_t *a = virtio_dev_save(s->vdev), *b;
	char why[256] = "";

	assert_non_null(a);
	assert_int_equal(virtio_dev_load(s->vdev, a, why, sizeof(why)), 0);
	b = virtio_dev_save(s->vdev);
	assert_true(json_equal(a, b));
	json_decref(a);
	json_decref(b);
}

/*
 * Whatever a driver writes, its VM can still move: reserved status bits
 * (now not kept), selectors above 1 (or 2^31), features with bit 63, a
 * queue address with bit 63 and a queue size above QueueNumMax (on a queue
 * not enabled) were saved in a form that virtio_dev_load refused, so a
 * guest could make its VM impossible to migrate or snapshot (found by
 * tests/fuzz/fuzz_virtio_mmio).
 */
static void test_mmio_state_survives_any_register_value(void **state)
{
	struct sink *s = *state;
	char why[256] = "";
	json_t *st;

	fake_mmio_write(s->vdev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | 0x30);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_STATUS), VIRTIO_STATUS_ACKNOWLEDGE);
	assert_state_survives(s);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_DRIVER_FEATURES, 0x80000000);
	assert_state_survives(s);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 5);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0xffffffff);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_SEL, 1);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_NUM, 1000);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x80000000);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, 0xffffffff);
	fake_mmio_write(s->vdev, VIRTIO_MMIO_QUEUE_SEL, 0x80000000);
	assert_state_survives(s);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_DEVICE_FEATURES), 0);
	/* A generation above 2^31 (a VM that moved before) moves on. */
	st = virtio_dev_save(s->vdev);
	json_object_set_new(st, "config_gen", json_integer(0x80000001LL));
	assert_int_equal(virtio_dev_load(s->vdev, st, why, sizeof(why)), 0);
	json_decref(st);
	assert_int_equal(fake_mmio_read(s->vdev, VIRTIO_MMIO_CONFIG_GENERATION), 0x80000001);
	assert_state_survives(s);
}

/* What a driver could not enable, a peer cannot either: a ready queue above QueueNumMax. */
static void test_mmio_state_with_queue_above_max_refused(void **state)
{
	struct sink *s = *state;
	char why[256] = "";
	json_t *st;

	bring_up(s, VERSION_1);
	st = virtio_dev_save(s->vdev);
	json_object_set_new(json_array_get(json_object_get(st, "queues"), 0), "num",
			    json_integer(512));
	assert_int_equal(virtio_dev_load(s->vdev, st, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "QueueNumMax"));
	json_decref(st);
}

/* --- the worker thread --- */

static void test_worker_thread_serves_notifications_and_timer(void **state)
{
	struct sink *s = *state;
	struct fake_buf b = { DATA, 8, true };
	struct timespec ts = { 0, 1000000 };
	uint32_t id, len;
	int i;

	bring_up(s, VERSION_1);
	assert_int_equal(virtio_dev_start(s->vdev), 0);
	assert_int_equal(virtio_dev_set_timer(s->vdev, 2000000), 0);
	fake_vq_add_chain(&s->fq[1], &b, 1);
	fake_virtio_notify(s->vdev, 1);
	for (i = 0; i < 5000 && !fake_vq_get_used(&s->fq[1], &id, &len); i++)
		nanosleep(&ts, NULL);
	assert_true(i < 5000);
	for (i = 0; i < 5000 && __atomic_load_n(&s->timers, __ATOMIC_RELAXED) == 0; i++)
		nanosleep(&ts, NULL);
	assert_true(i < 5000);
	assert_int_equal(virtio_dev_set_timer(s->vdev, 0), 0);
	virtio_dev_stop(s->vdev);
	virtio_dev_stop(s->vdev);
	assert_int_equal(s->chains, 1);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_mmio_identity_registers),
		T(test_mmio_offers_device_and_transport_features),
		T(test_mmio_features_ok_refused_without_version_1),
		T(test_mmio_features_ok_refused_for_unoffered_bit),
		T(test_mmio_features_ok_accepted_and_frozen),
		T(test_mmio_reset_clears_state),
		T(test_mmio_driver_cannot_clear_status_bits),
		T(test_mmio_driver_ok_without_features_ok_needs_reset),
		T(test_mmio_bad_width_and_reserved_accesses_are_ignored),
		T(test_mmio_queue_num_max_only_for_existing_queues),
		T(test_mmio_queue_registers_frozen_while_ready),
		T(test_mmio_config_space_and_generation),
		T(test_virtq_chain_round_trip),
		T(test_virtq_many_chains_wrap_the_ring),
		T(test_virtq_chain_of_exactly_queue_size_is_fine),
		T(test_virtq_indirect_chain),
		T(test_virtq_direct_then_indirect),
		T(test_virtq_zero_length_buffer_is_not_range_checked),
		T(test_virtq_no_interrupt_flag_suppresses_interrupt),
		T(test_virtq_event_idx),
		T(test_virtq_buffers_before_driver_ok_wait),
		T(test_hostile_descriptor_self_loop),
		T(test_hostile_descriptor_cycle),
		T(test_hostile_next_beyond_queue),
		T(test_hostile_head_beyond_queue),
		T(test_hostile_buffer_outside_ram),
		T(test_hostile_buffer_crossing_end_of_ram),
		T(test_hostile_buffer_address_wraps),
		T(test_hostile_readable_after_writable),
		T(test_hostile_avail_index_jumps_ahead),
		T(test_hostile_avail_index_goes_back),
		T(test_hostile_avail_index_reason_names_the_backing),
		T(test_hostile_indirect_without_feature),
		T(test_hostile_indirect_table_outside_ram),
		T(test_hostile_indirect_length_not_multiple_of_16),
		T(test_hostile_indirect_length_zero),
		T(test_hostile_indirect_too_long),
		T(test_hostile_nested_indirect),
		T(test_hostile_indirect_with_next),
		T(test_hostile_indirect_loop),
		T(test_hostile_indirect_next_beyond_table),
		T(test_hostile_indirect_buffer_outside_ram),
		T(test_hostile_queue_size_not_power_of_2),
		T(test_hostile_queue_size_zero),
		T(test_hostile_queue_size_above_max),
		T(test_hostile_desc_table_misaligned),
		T(test_hostile_avail_ring_misaligned),
		T(test_hostile_used_ring_misaligned),
		T(test_hostile_rings_outside_ram),
		T(test_hostile_used_ring_in_mmio_hole),
		T(test_hostile_queue_enabled_before_features_ok),
		T(test_mmio_state_survives_any_register_value),
		T(test_mmio_state_with_queue_above_max_refused),
		T(test_worker_thread_serves_notifications_and_timer),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
