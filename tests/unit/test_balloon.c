/* SPDX-License-Identifier: MIT */
/*
 * The virtio-balloon device against a fake driver and fake memory hooks:
 * feature offer and queue numbering, inflate/deflate compaction, free page
 * reporting, statistics, targets, and the malformed requests that must put
 * the device in needs-reset. One test runs the real memory manager hooks.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "balloon/balloon.h"
#include "core/alloc.h"
#include "core/layout.h"
#include "core/virtio/virtio_mmio.h"
#include "fake_virtq.h"
#include "mem/gm.h"
#include "mem/memmap.h"
#include "mem/pagestate.h"

#define RAM (16ULL << 20)
#define RING(q) (0x300000ULL + 0x10000ULL * (q))
#define DATA 0x400000ULL
#define QSIZE 64
#define VERSION_1 (1ULL << VIRTIO_F_VERSION_1)
#define F(bit) (1ULL << (bit))
#define ALL_FEATURES                                                                     \
	(VERSION_1 | F(VIRTIO_BALLOON_F_MUST_TELL_HOST) | F(VIRTIO_BALLOON_F_STATS_VQ) |  \
	 F(VIRTIO_BALLOON_F_DEFLATE_ON_OOM) | F(VIRTIO_BALLOON_F_PAGE_REPORTING))

/* Queue indexes with all features negotiated. */
enum { QI = 0, QD = 1, QS = 2, QR = 3 };

struct call {
	bool undiscard;
	enum balloon_discard_why why;
	gpa_t gpa;
	uint64_t len;
	uint16_t used_idx;	/* the queue's used->idx when the hook ran */
};

struct env {
	struct gm *gm;
	struct balloon *b;
	struct virtio_dev *vdev;
	struct fake_vq fq[4];
	struct fake_vq *watch;	/* queue whose used idx the hooks record */
	struct call calls[64];
	unsigned int nr_calls;
	int fail;		/* next hook result */
};

static void record(struct env *e, bool undiscard, enum balloon_discard_why why, gpa_t gpa,
		   uint64_t len)
{
	struct call *c;

	assert_true(e->nr_calls < 64);
	c = &e->calls[e->nr_calls++];
	c->undiscard = undiscard;
	c->why = why;
	c->gpa = gpa;
	c->len = len;
	c->used_idx = e->watch ? fake_vq_used_idx(e->watch) : 0;
}

static int fake_discard(void *arg, gpa_t gpa, uint64_t len, enum balloon_discard_why why)
{
	struct env *e = arg;

	record(e, false, why, gpa, len);
	return e->fail ? e->fail : (int)(len / 4096);
}

static int fake_undiscard(void *arg, gpa_t gpa, uint64_t len)
{
	struct env *e = arg;

	record(e, true, BALLOON_DISCARD_INFLATE, gpa, len);
	return e->fail;
}

/* `real`: no hooks, so the balloon uses the memory manager (mem_discard). */
static int make_env(void **state, bool real, uint64_t ram)
{
	struct balloon_params p = { .name = "balloon", .stats_interval_ms = 0 };
	struct env *e = kv_zalloc(sizeof(*e));
	struct balloon_mem_ops mem = { fake_discard, fake_undiscard, e };

	if (!e || mem_create_anon(ram, &e->gm))
		return -1;
	if (balloon_create_on_gm(e->gm, &p, real ? NULL : &mem, &e->b))
		return -1;
	e->vdev = balloon_virtio_dev(e->b);
	for (unsigned int q = 0; q < 4; q++)
		fake_vq_init(&e->fq[q], e->gm, QSIZE, RING(q));
	*state = e;
	return 0;
}

static int setup(void **state)
{
	return make_env(state, false, RAM);
}

static int setup_real_mem(void **state)
{
	return make_env(state, true, RAM);
}

/* RAM on both sides of the MMIO hole: below LAYOUT_LOW_RAM_MAX and from 4 GiB. */
static int setup_two_regions(void **state)
{
	return make_env(state, false, LAYOUT_LOW_RAM_MAX + RAM);
}

static int teardown(void **state)
{
	struct env *e = *state;

	balloon_destroy(e->b);
	mem_destroy(e->gm);
	kv_free(e);
	return 0;
}

static uint32_t status(struct env *e)
{
	return fake_mmio_read(e->vdev, VIRTIO_MMIO_STATUS);
}

static unsigned int bring_up(struct env *e, uint64_t features)
{
	unsigned int nq = 2;

	if (features & F(VIRTIO_BALLOON_F_STATS_VQ))
		nq++;
	if (features & F(VIRTIO_BALLOON_F_PAGE_REPORTING))
		nq++;
	assert_true(fake_virtio_negotiate(e->vdev, features));
	for (unsigned int q = 0; q < nq; q++)
		fake_virtio_setup_queue(e->vdev, q, &e->fq[q]);
	return nq;
}

static struct balloon_stats stats(struct env *e)
{
	struct balloon_stats st;

	balloon_get_stats(e->b, &st);
	return st;
}

/* Write `n` le32 PFNs at gpa. */
static void put_pfns(struct env *e, gpa_t gpa, const uint32_t *pfns, unsigned int n)
{
	assert_int_equal(mem_write(e->gm, gpa, pfns, 4ULL * n), 0);
}

static void run(struct env *e)
{
	virtio_dev_poll(e->vdev, false);
}

static void assert_needs_reset(struct env *e)
{
	struct balloon_stats st = stats(e);

	assert_true(status(e) & VIRTIO_STATUS_NEEDS_RESET);
	assert_int_equal(st.needs_reset, 1);
	assert_int_equal(st.bad_descs, 1);
	assert_false(st.driver_ok);
}

/* --- offer, numbering, config --- */

static void test_balloon_offers_features_and_device_id(void **state)
{
	struct env *e = *state;
	uint64_t f = fake_mmio_device_features(e->vdev);

	assert_int_equal(fake_mmio_read(e->vdev, VIRTIO_MMIO_DEVICE_ID), 5);
	assert_int_equal(f & ALL_FEATURES, ALL_FEATURES);
	assert_int_equal(f & F(VIRTIO_BALLOON_F_FREE_PAGE_HINT), 0);
	assert_int_equal(f & F(VIRTIO_BALLOON_F_PAGE_POISON), 0);
}

static uint32_t num_max(struct env *e, unsigned int q)
{
	fake_mmio_write(e->vdev, VIRTIO_MMIO_QUEUE_SEL, q);
	return fake_mmio_read(e->vdev, VIRTIO_MMIO_QUEUE_NUM_MAX);
}

static void test_balloon_queue_numbering_follows_negotiated_features(void **state)
{
	struct env *e = *state;

	/* All: inflate 0, deflate 1, stats 2, reporting 3. */
	assert_true(fake_virtio_negotiate(e->vdev, ALL_FEATURES));
	assert_int_equal(num_max(e, 3), BALLOON_QUEUE_SIZE);
	assert_int_equal(num_max(e, 4), 0);
	/* No stats: reporting moves to 2, like Linux's virtio_mmio find_vqs. */
	assert_true(fake_virtio_negotiate(e->vdev, VERSION_1 | F(VIRTIO_BALLOON_F_PAGE_REPORTING)));
	assert_int_equal(num_max(e, 2), BALLOON_QUEUE_SIZE);
	assert_int_equal(num_max(e, 3), 0);
	/* Neither: two queues. */
	assert_true(fake_virtio_negotiate(e->vdev, VERSION_1));
	assert_int_equal(num_max(e, 1), BALLOON_QUEUE_SIZE);
	assert_int_equal(num_max(e, 2), 0);
}

static void test_balloon_reporting_on_queue_2_without_stats(void **state)
{
	struct env *e = *state;
	struct fake_buf b = { 0x600000, 0x200000, true };

	bring_up(e, VERSION_1 | F(VIRTIO_BALLOON_F_PAGE_REPORTING));
	fake_virtio_driver_ok(e->vdev);
	fake_vq_add_chain(&e->fq[2], &b, 1);
	run(e);
	assert_int_equal(e->nr_calls, 1);
	assert_int_equal(e->calls[0].why, BALLOON_DISCARD_REPORT);
	assert_int_equal(stats(e).reports, 1);
}

static void test_balloon_target_sets_num_pages_and_interrupts(void **state)
{
	struct env *e = *state;
	struct balloon_stats st;
	uint32_t gen;

	/* Before DRIVER_OK: config changes, no interrupt. */
	assert_int_equal(balloon_set_target(e->b, RAM - 100 * 4096), 0);
	assert_int_equal(fake_mmio_read(e->vdev, VIRTIO_MMIO_CONFIG + BALLOON_CFG_NUM_PAGES), 100);
	assert_int_equal(fake_mmio_read(e->vdev, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	gen = fake_mmio_read(e->vdev, VIRTIO_MMIO_CONFIG_GENERATION);
	/* A target that is not a page multiple rounds the balloon up. */
	assert_int_equal(balloon_set_target(e->b, RAM / 2 - 1), 0);
	assert_int_equal(fake_mmio_read(e->vdev, VIRTIO_MMIO_CONFIG + BALLOON_CFG_NUM_PAGES),
			 RAM / 2 / 4096 + 1);
	assert_int_equal(fake_mmio_read(e->vdev, VIRTIO_MMIO_CONFIG_GENERATION), gen + 1);
	assert_true(fake_mmio_read(e->vdev, VIRTIO_MMIO_INTERRUPT_STATUS) &
		    VIRTIO_MMIO_INT_CONFIG);
	/* The driver reports what it holds. */
	fake_mmio_write(e->vdev, VIRTIO_MMIO_CONFIG + BALLOON_CFG_ACTUAL, 1000);
	st = stats(e);
	assert_int_equal(st.balloon_actual_bytes, 1000 * 4096);
	assert_int_equal(st.actual_bytes, RAM - 1000 * 4096);
	assert_int_equal(st.target_bytes, RAM / 2 - 4096);
	assert_int_equal(st.ram_bytes, RAM);
	assert_true(st.driver_ok);
	/* num_pages is the device's: driver writes do not change it. */
	fake_mmio_write(e->vdev, VIRTIO_MMIO_CONFIG + BALLOON_CFG_NUM_PAGES, 7);
	assert_int_equal(fake_mmio_read(e->vdev, VIRTIO_MMIO_CONFIG + BALLOON_CFG_NUM_PAGES),
			 RAM / 2 / 4096 + 1);
	/* A target of all RAM (or more) empties the balloon. */
	assert_int_equal(balloon_set_target(e->b, RAM * 2), 0);
	assert_int_equal(fake_mmio_read(e->vdev, VIRTIO_MMIO_CONFIG + BALLOON_CFG_NUM_PAGES), 0);
}

static void test_balloon_actual_byte_writes_merge(void **state)
{
	struct env *e = *state;
	uint8_t b = 0x12;

	virtio_mmio_bus_ops.write(e->vdev, NULL, VIRTIO_MMIO_CONFIG + BALLOON_CFG_ACTUAL + 1, &b,
				  1);
	assert_int_equal(fake_mmio_read(e->vdev, VIRTIO_MMIO_CONFIG + BALLOON_CFG_ACTUAL), 0x1200);
}

/* --- inflate / deflate --- */

/*
 * One inflate request of PFNs, from the driver's bring-up to the device's
 * turn; returns its head.
 */
static uint16_t inflate(struct env *e, const uint32_t *pfns, unsigned int n)
{
	struct fake_buf b = { DATA, 4 * n, false };
	uint16_t head;

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	put_pfns(e, DATA, pfns, n);
	e->watch = &e->fq[QI];
	head = fake_vq_add_chain(&e->fq[QI], &b, 1);
	fake_virtio_notify(e->vdev, QI);
	run(e);
	return head;
}

/* The discards made, in order: n runs of pages[i] pages from pfn[i]. */
static void assert_discards(struct env *e, const uint32_t *pfn, const uint32_t *pages,
			    unsigned int n)
{
	assert_int_equal(e->nr_calls, n);
	for (unsigned int i = 0; i < n; i++) {
		assert_int_equal(e->calls[i].gpa, (uint64_t)pfn[i] * 4096);
		assert_int_equal(e->calls[i].len, (uint64_t)pages[i] * 4096);
	}
}

static void test_balloon_inflate_compacts_pfns_into_ranges(void **state)
{
	struct env *e = *state;
	uint32_t pfns[] = { 0x502, 0x500, 0x600, 0x501, 0x501, 0x503, 0x700, 0x701 };
	uint32_t id, len;
	struct balloon_stats st;
	uint16_t head = inflate(e, pfns, 8);

	assert_discards(e, (uint32_t[]){ 0x500, 0x600, 0x700 }, (uint32_t[]){ 4, 1, 2 }, 3);
	for (unsigned int i = 0; i < 3; i++) {
		assert_false(e->calls[i].undiscard);
		assert_int_equal(e->calls[i].why, BALLOON_DISCARD_INFLATE);
		/* Dropped before the driver could see the ack. */
		assert_int_equal(e->calls[i].used_idx, 0);
	}
	assert_true(fake_vq_get_used(&e->fq[QI], &id, &len));
	assert_int_equal(id, head);
	assert_int_equal(len, 0);
	st = stats(e);
	assert_int_equal(st.inflates, 1);
	assert_int_equal(st.inflated_pages, 7);
	assert_int_equal(st.bad_pfns, 0);
	assert_false(status(e) & VIRTIO_STATUS_NEEDS_RESET);
}

/* PFNs already in order (no sort) compact the same, their duplicates dropped too. */
static void test_balloon_inflate_pfns_in_order_with_duplicates(void **state)
{
	struct env *e = *state;
	uint32_t pfns[] = { 0x500, 0x500, 0x501, 0x502, 0x502, 0x600, 0x600 };

	inflate(e, pfns, 7);
	assert_discards(e, (uint32_t[]){ 0x500, 0x600 }, (uint32_t[]){ 3, 1 }, 2);
	assert_int_equal(stats(e).inflated_pages, 4);
}

static void test_balloon_inflate_many_pfns_over_several_buffers(void **state)
{
	struct env *e = *state;
	static uint32_t pfns[3000];
	struct fake_buf b[2] = { { DATA, 2000 * 4, false }, { DATA + 0x2000, 1000 * 4, false } };

	/* 3000 consecutive PFNs split over two buffers and PFN batches: one range. */
	for (unsigned int i = 0; i < 3000; i++)
		pfns[i] = 0x100 + i;
	put_pfns(e, DATA, pfns, 2000);
	put_pfns(e, DATA + 0x2000, pfns + 2000, 1000);
	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	fake_vq_add_chain(&e->fq[QI], b, 2);
	run(e);
	assert_int_equal(e->nr_calls, 1);
	assert_int_equal(e->calls[0].gpa, 0x100000);
	assert_int_equal(e->calls[0].len, 3000 * 4096);
	assert_int_equal(stats(e).inflated_pages, 3000);
}

static void test_balloon_inflate_skips_pfns_outside_ram(void **state)
{
	struct env *e = *state;
	/* 0x1000 is the end of RAM; 0xd0000 is the MMIO hole. */
	uint32_t pfns[] = { 0x900, 0x1000, 0xd0000, 0xffffffff, 0x901 };
	struct fake_buf b = { DATA, sizeof(pfns), false };
	uint32_t id, len;
	struct balloon_stats st;

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	put_pfns(e, DATA, pfns, 5);
	fake_vq_add_chain(&e->fq[QI], &b, 1);
	run(e);
	assert_int_equal(e->nr_calls, 1);
	assert_int_equal(e->calls[0].gpa, 0x900000);
	assert_int_equal(e->calls[0].len, 2 * 4096);
	st = stats(e);
	assert_int_equal(st.bad_pfns, 3);
	assert_int_equal(st.inflated_pages, 2);
	/* The request still completes; the device keeps running. */
	assert_true(fake_vq_get_used(&e->fq[QI], &id, &len));
	assert_false(status(e) & VIRTIO_STATUS_NEEDS_RESET);
}

/*
 * A batch whose PFNs lie on both sides of the MMIO hole: the span from the
 * first to the last is not all RAM, so each PFN is checked on its own, and
 * only the one in the hole is skipped.
 */
static void test_balloon_inflate_batch_across_the_hole_skips_only_the_hole(void **state)
{
	struct env *e = *state;
	uint32_t low_end = LAYOUT_LOW_RAM_MAX / 4096, high = LAYOUT_HIGH_RAM_BASE / 4096;
	uint32_t pfns[] = { low_end - 1, low_end, high, high + 1 };
	struct balloon_stats st;

	inflate(e, pfns, 4);
	assert_discards(e, (uint32_t[]){ low_end - 1, high }, (uint32_t[]){ 1, 2 }, 2);
	st = stats(e);
	assert_int_equal(st.bad_pfns, 1);
	assert_int_equal(st.inflated_pages, 3);
}

static void test_balloon_inflate_length_not_multiple_of_4_needs_reset(void **state)
{
	struct env *e = *state;
	uint32_t pfns[] = { 0x900, 0x901 };
	struct fake_buf b = { DATA, 6, false };
	uint32_t id, len;

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	put_pfns(e, DATA, pfns, 2);
	fake_vq_add_chain(&e->fq[QI], &b, 1);
	run(e);
	assert_int_equal(e->nr_calls, 0);
	assert_false(fake_vq_get_used(&e->fq[QI], &id, &len));
	assert_needs_reset(e);
	assert_true(fake_mmio_read(e->vdev, VIRTIO_MMIO_INTERRUPT_STATUS) &
		    VIRTIO_MMIO_INT_CONFIG);
}

static void test_balloon_inflate_writable_buffer_needs_reset(void **state)
{
	struct env *e = *state;
	uint32_t pfn = 0x900;
	struct fake_buf b = { DATA, 4, true };

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	put_pfns(e, DATA, &pfn, 1);
	fake_vq_add_chain(&e->fq[QI], &b, 1);
	run(e);
	assert_int_equal(e->nr_calls, 0);
	assert_needs_reset(e);
}

static void test_balloon_deflate_writable_buffer_needs_reset(void **state)
{
	struct env *e = *state;
	struct fake_buf b[2] = { { DATA, 4, false }, { DATA + 4, 4, true } };

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	fake_vq_add_chain(&e->fq[QD], b, 2);
	run(e);
	assert_int_equal(e->nr_calls, 0);
	assert_needs_reset(e);
}

static void test_balloon_hostile_ring_on_inflateq_needs_reset(void **state)
{
	struct env *e = *state;

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	fake_vq_set_desc(&e->fq[QI], 0, DATA, 4, VIRTQ_DESC_F_NEXT, 0);
	fake_vq_publish(&e->fq[QI], 0);
	run(e);
	assert_int_equal(e->nr_calls, 0);
	assert_needs_reset(e);
	/* Nothing else is served until the driver resets. */
	{
		struct fake_buf b = { 0x600000, 0x1000, true };

		fake_vq_add_chain(&e->fq[QR], &b, 1);
		run(e);
		assert_int_equal(e->nr_calls, 0);
	}
}

static void test_balloon_inflate_request_above_the_limit_needs_reset(void **state)
{
	struct env *e = *state;
	/* In RAM and well formed, but one PFN more than a request may carry. */
	struct fake_buf b = { DATA, 4 * 16384 + 4, false };

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	fake_vq_add_chain(&e->fq[QI], &b, 1);
	run(e);
	assert_int_equal(e->nr_calls, 0);
	assert_needs_reset(e);
}

static void test_balloon_deflate_undiscards_and_tells_oom_apart(void **state)
{
	struct env *e = *state;
	uint32_t pfns[] = { 0xa00, 0xa01, 0xa05 };
	struct fake_buf b = { DATA, sizeof(pfns), false };
	struct balloon_stats st;

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	put_pfns(e, DATA, pfns, 3);
	/* The host asked for 10 pages and the driver holds 10: a host-requested deflate
	 * needs a lower target, so this one is the guest's own (deflate-on-OOM). */
	assert_int_equal(balloon_set_target(e->b, RAM - 10 * 4096), 0);
	fake_mmio_write(e->vdev, VIRTIO_MMIO_CONFIG + BALLOON_CFG_ACTUAL, 10);
	e->watch = &e->fq[QD];
	fake_vq_add_chain(&e->fq[QD], &b, 1);
	run(e);
	assert_int_equal(e->nr_calls, 2);
	assert_true(e->calls[0].undiscard);
	assert_int_equal(e->calls[0].gpa, 0xa00000);
	assert_int_equal(e->calls[0].len, 2 * 4096);
	assert_int_equal(e->calls[0].used_idx, 0);
	assert_int_equal(e->calls[1].gpa, 0xa05000);
	st = stats(e);
	assert_int_equal(st.deflates, 1);
	assert_int_equal(st.deflated_pages, 3);
	assert_int_equal(st.oom_deflated_pages, 3);
	/* Now the host lowers the target: an ordinary deflate. */
	assert_int_equal(balloon_set_target(e->b, RAM), 0);
	fake_vq_add_chain(&e->fq[QD], &b, 1);
	run(e);
	st = stats(e);
	assert_int_equal(st.deflates, 2);
	assert_int_equal(st.deflated_pages, 6);
	assert_int_equal(st.oom_deflated_pages, 3);
}

static void test_balloon_discard_failure_is_counted_and_request_completes(void **state)
{
	struct env *e = *state;
	uint32_t pfn = 0x900;
	struct fake_buf b = { DATA, 4, false };
	uint32_t id, len;

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	put_pfns(e, DATA, &pfn, 1);
	e->fail = -EBUSY;
	fake_vq_add_chain(&e->fq[QI], &b, 1);
	run(e);
	assert_int_equal(stats(e).discard_errors, 1);
	assert_true(fake_vq_get_used(&e->fq[QI], &id, &len));
	assert_false(status(e) & VIRTIO_STATUS_NEEDS_RESET);
}

/* --- free page reporting --- */

static void test_balloon_reporting_drops_whole_pages_before_ack(void **state)
{
	struct env *e = *state;
	struct fake_buf b[3] = {
		{ 0x600000, 0x200000, true },	/* a 2 MiB block */
		{ 0x800100, 0x3000, true },	/* unaligned: only 0x801000-0x803000 */
		{ 0x900100, 0x100, true },	/* no whole page at all */
	};
	uint32_t id, len;
	struct balloon_stats st;

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	e->watch = &e->fq[QR];
	fake_vq_add_chain(&e->fq[QR], b, 3);
	run(e);
	assert_int_equal(e->nr_calls, 2);
	assert_int_equal(e->calls[0].why, BALLOON_DISCARD_REPORT);
	assert_int_equal(e->calls[0].gpa, 0x600000);
	assert_int_equal(e->calls[0].len, 0x200000);
	assert_int_equal(e->calls[1].gpa, 0x801000);
	assert_int_equal(e->calls[1].len, 0x2000);
	assert_int_equal(e->calls[0].used_idx, 0);
	assert_int_equal(e->calls[1].used_idx, 0);
	assert_true(fake_vq_get_used(&e->fq[QR], &id, &len));
	st = stats(e);
	assert_int_equal(st.reports, 1);
	assert_int_equal(st.reported_ranges, 2);
	assert_int_equal(st.reported_bytes, 0x202000);
}

static void test_balloon_reporting_readable_buffer_needs_reset(void **state)
{
	struct env *e = *state;
	struct fake_buf b = { 0x600000, 0x200000, false };

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	fake_vq_add_chain(&e->fq[QR], &b, 1);
	run(e);
	assert_int_equal(e->nr_calls, 0);
	assert_needs_reset(e);
}

static void test_balloon_reporting_above_the_limit_needs_reset(void **state)
{
	struct env *e = *state;
	struct fake_buf b[20];

	/* 20 buffers that all name the same 14 MiB: 280 MiB in one report. */
	for (unsigned int i = 0; i < 20; i++)
		b[i] = (struct fake_buf){ 0x100000, 14 << 20, true };
	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	fake_vq_add_chain(&e->fq[QR], b, 20);
	run(e);
	assert_int_equal(e->nr_calls, 0);
	assert_needs_reset(e);
}

static void test_balloon_reporting_ignores_empty_buffers(void **state)
{
	struct env *e = *state;
	/* An empty buffer's address is never checked: it must not become a range. */
	struct fake_buf b[2] = {
		{ 0xfffffffffffff001ULL, 0, true },
		{ 0x600000, 0x1000, true },
	};
	uint32_t id, len;

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	fake_vq_add_chain(&e->fq[QR], b, 2);
	run(e);
	assert_int_equal(e->nr_calls, 1);
	assert_int_equal(e->calls[0].gpa, 0x600000);
	assert_int_equal(e->calls[0].len, 0x1000);
	assert_true(fake_vq_get_used(&e->fq[QR], &id, &len));
	assert_false(status(e) & VIRTIO_STATUS_NEEDS_RESET);
}

static void test_balloon_reporting_range_outside_ram_needs_reset(void **state)
{
	struct env *e = *state;
	struct fake_buf b = { RAM - 0x1000, 0x200000, true };

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	fake_vq_add_chain(&e->fq[QR], &b, 1);
	run(e);
	assert_int_equal(e->nr_calls, 0);
	assert_needs_reset(e);
}

/* --- statistics --- */

static void put_stat(struct env *e, gpa_t gpa, uint16_t tag, uint64_t val)
{
	assert_int_equal(mem_write_le16(e->gm, gpa, tag), 0);
	assert_int_equal(mem_write_le64(e->gm, gpa + 2, val), 0);
}

static void test_balloon_stats_are_parsed_and_requested_again(void **state)
{
	struct env *e = *state;
	struct fake_buf b = { DATA, 5 * BALLOON_STAT_SIZE, false };
	struct balloon_stats st;
	uint32_t id, len;
	uint16_t head;

	bring_up(e, ALL_FEATURES);
	put_stat(e, DATA + 0, BALLOON_S_MEMFREE, 100 << 20);
	put_stat(e, DATA + 10, BALLOON_S_MEMTOT, 1000 << 20);
	put_stat(e, DATA + 20, 99, 12345); /* unknown: ignored */
	put_stat(e, DATA + 30, BALLOON_S_AVAIL, 200 << 20);
	put_stat(e, DATA + 40, BALLOON_S_MAJFLT, 7);
	/* virtio 1.2 §5.5.5: the first buffer goes in before DRIVER_OK. */
	head = fake_vq_add_chain(&e->fq[QS], &b, 1);
	fake_virtio_driver_ok(e->vdev);
	run(e);
	st = stats(e);
	assert_int_equal(st.guest.updates, 1);
	assert_int_equal(st.guest.valid, (1U << BALLOON_S_MEMFREE) | (1U << BALLOON_S_MEMTOT) |
						 (1U << BALLOON_S_AVAIL) | (1U << BALLOON_S_MAJFLT));
	assert_int_equal(st.guest.val[BALLOON_S_MEMFREE], 100 << 20);
	assert_int_equal(st.guest.val[BALLOON_S_MEMTOT], 1000 << 20);
	assert_int_equal(st.guest.val[BALLOON_S_AVAIL], 200 << 20);
	assert_int_equal(st.guest.val[BALLOON_S_MAJFLT], 7);
	assert_true(st.guest.updated_ns > 0);
	/* The device holds the buffer until its timer asks for fresh stats. */
	assert_false(fake_vq_get_used(&e->fq[QS], &id, &len));
	virtio_dev_poll(e->vdev, true);
	assert_true(fake_vq_get_used(&e->fq[QS], &id, &len));
	assert_int_equal(id, head);
	assert_int_equal(stats(e).stats_requests, 1);
	/* Nothing held: another tick does nothing. */
	virtio_dev_poll(e->vdev, true);
	assert_int_equal(stats(e).stats_requests, 1);
	/* The driver refills, with the entries split across two buffers. */
	put_stat(e, DATA + 0x1000, BALLOON_S_MEMFREE, 50 << 20);
	put_stat(e, DATA + 0x100a, BALLOON_S_SWAP_IN, 4096);
	{
		struct fake_buf two[2] = { { DATA + 0x1000, 13, false },
					   { DATA + 0x100d, 7, false } };

		fake_vq_add_chain(&e->fq[QS], two, 2);
	}
	run(e);
	st = stats(e);
	assert_int_equal(st.guest.updates, 2);
	assert_int_equal(st.guest.valid, (1U << BALLOON_S_MEMFREE) | (1U << BALLOON_S_SWAP_IN));
	assert_int_equal(st.guest.val[BALLOON_S_MEMFREE], 50 << 20);
	assert_int_equal(st.guest.val[BALLOON_S_SWAP_IN], 4096);
}

static void test_balloon_second_stats_buffer_returns_the_first(void **state)
{
	struct env *e = *state;
	struct fake_buf b = { DATA, BALLOON_STAT_SIZE, false };
	uint32_t id, len;
	uint16_t first;

	bring_up(e, ALL_FEATURES);
	put_stat(e, DATA, BALLOON_S_MEMFREE, 1);
	fake_virtio_driver_ok(e->vdev);
	first = fake_vq_add_chain(&e->fq[QS], &b, 1);
	run(e);
	fake_vq_add_chain(&e->fq[QS], &b, 1);
	run(e);
	assert_true(fake_vq_get_used(&e->fq[QS], &id, &len));
	assert_int_equal(id, first);
	assert_false(status(e) & VIRTIO_STATUS_NEEDS_RESET);
}

static void test_balloon_stats_writable_buffer_needs_reset(void **state)
{
	struct env *e = *state;
	struct fake_buf b = { DATA, BALLOON_STAT_SIZE, true };

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	fake_vq_add_chain(&e->fq[QS], &b, 1);
	run(e);
	assert_needs_reset(e);
	assert_int_equal(stats(e).guest.updates, 0);
}

static void test_balloon_reset_forgets_the_held_stats_buffer(void **state)
{
	struct env *e = *state;
	struct fake_buf b = { DATA, BALLOON_STAT_SIZE, false };
	struct balloon_stats st;

	bring_up(e, ALL_FEATURES);
	put_stat(e, DATA, BALLOON_S_MEMFREE, 1);
	fake_virtio_driver_ok(e->vdev);
	fake_mmio_write(e->vdev, VIRTIO_MMIO_CONFIG + BALLOON_CFG_ACTUAL, 5);
	fake_vq_add_chain(&e->fq[QS], &b, 1);
	run(e);
	fake_mmio_write(e->vdev, VIRTIO_MMIO_STATUS, 0);
	virtio_dev_poll(e->vdev, true);
	st = stats(e);
	assert_int_equal(st.stats_requests, 0);
	/* A new driver starts from an empty balloon; the last stats stay visible. */
	assert_int_equal(st.balloon_actual_bytes, 0);
	assert_int_equal(st.guest.updates, 1);
}

static void test_balloon_disabled_stats_queue_forgets_its_buffer(void **state)
{
	struct env *e = *state;
	struct fake_buf b = { DATA, BALLOON_STAT_SIZE, false };
	struct fake_vq small;
	uint32_t id, len;

	bring_up(e, ALL_FEATURES);
	put_stat(e, DATA, BALLOON_S_MEMFREE, 1);
	fake_virtio_driver_ok(e->vdev);
	fake_vq_add_chain(&e->fq[QS], &b, 1);
	run(e);
	/* The driver stops the stats queue and sets it up again, smaller, elsewhere. */
	fake_mmio_write(e->vdev, VIRTIO_MMIO_QUEUE_SEL, QS);
	fake_mmio_write(e->vdev, VIRTIO_MMIO_QUEUE_READY, 0);
	fake_vq_init(&small, e->gm, 8, RING(QS) + 0x8000);
	fake_virtio_setup_queue(e->vdev, QS, &small);
	/* The held buffer belonged to the old ring: the tick must not return it. */
	virtio_dev_poll(e->vdev, true);
	assert_false(fake_vq_get_used(&small, &id, &len));
	assert_int_equal(stats(e).stats_requests, 0);
	assert_false(status(e) & VIRTIO_STATUS_NEEDS_RESET);
	/* A buffer on the new ring is held and returned as usual. */
	fake_vq_add_chain(&small, &b, 1);
	run(e);
	virtio_dev_poll(e->vdev, true);
	assert_true(fake_vq_get_used(&small, &id, &len));
	assert_int_equal(stats(e).stats_requests, 1);
}

static void test_balloon_stats_names_and_json(void **state)
{
	struct env *e = *state;
	struct balloon_stats st;
	json_t *o;

	(void)e;
	assert_string_equal(balloon_stat_name(BALLOON_S_MEMTOT), "total_bytes");
	assert_string_equal(balloon_stat_name(BALLOON_S_MEMFREE), "free_bytes");
	assert_string_equal(balloon_stat_name(BALLOON_S_AVAIL), "available_bytes");
	assert_string_equal(balloon_stat_name(BALLOON_S_MAJFLT), "major_faults");
	assert_string_equal(balloon_stat_name(BALLOON_S_NR), "unknown");
	for (unsigned int t = 0; t < BALLOON_S_NR; t++)
		assert_int_equal(balloon_stat_is_bytes(t),
				 strstr(balloon_stat_name(t), "_bytes") != NULL);
	memset(&st, 0, sizeof(st));
	st.target_bytes = 512 << 20;
	st.guest.valid = 1U << BALLOON_S_MEMTOT;
	st.guest.val[BALLOON_S_MEMTOT] = 1 << 30;
	st.guest.updated_ns = 1;
	st.inflates = 3;
	o = balloon_stats_json(&st);
	assert_non_null(o);
	assert_int_equal(json_integer_value(json_object_get(o, "target_bytes")), 512 << 20);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "guest"),
							    "total_bytes")),
			 1 << 30);
	assert_null(json_object_get(json_object_get(o, "guest"), "free_bytes"));
	assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "counters"),
							    "inflates")),
			 3);
	json_decref(o);
}

/* --- the worker thread and the real memory manager --- */

static void test_balloon_worker_inflates_through_the_memory_manager(void **state)
{
	struct env *e = *state;
	struct pagestate *ps = mem_pagestate(e->gm);
	uint32_t pfns[] = { 0xb00, 0xb01 };
	struct fake_buf b = { DATA, sizeof(pfns), false };
	struct timespec ts = { 0, 1000000 };
	uint8_t page[64];
	uint32_t id, len;
	int i;

	/* Guest data in the pages it is about to give away. */
	memset(page, 0x5a, sizeof(page));
	assert_int_equal(mem_write(e->gm, 0xb00000, page, sizeof(page)), 0);
	assert_int_equal(mem_write(e->gm, 0xb01000, page, sizeof(page)), 0);
	put_pfns(e, DATA, pfns, 2);
	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	assert_int_equal(virtio_dev_start(e->vdev), 0);
	fake_vq_add_chain(&e->fq[QI], &b, 1);
	fake_virtio_notify(e->vdev, QI);
	for (i = 0; i < 5000 && !fake_vq_get_used(&e->fq[QI], &id, &len); i++)
		nanosleep(&ts, NULL);
	assert_true(i < 5000);
	virtio_dev_stop(e->vdev);
	/* Dropped from the host: reads as zeros, page state ballooned. */
	assert_int_equal(mem_read(e->gm, 0xb00000, page, sizeof(page)), 0);
	for (unsigned int k = 0; k < sizeof(page); k++)
		assert_int_equal(page[k], 0);
	assert_int_equal(pagestate_get(ps, 0xb00), PS_BALLOONED);
	assert_int_equal(pagestate_get(ps, 0xb01), PS_BALLOONED);
	assert_int_equal(pagestate_get(ps, 0xb02), PS_ANON);
	/* Deflate (synchronously now): the pages are the guest's again. */
	fake_vq_add_chain(&e->fq[QD], &b, 1);
	run(e);
	assert_int_equal(pagestate_get(ps, 0xb00), PS_ANON);
	assert_int_equal(pagestate_get(ps, 0xb01), PS_ANON);
	/* Reporting marks its range reported. */
	{
		struct fake_buf r = { 0xc00000, 0x4000, true };

		fake_vq_add_chain(&e->fq[QR], &r, 1);
		run(e);
		assert_int_equal(pagestate_get(ps, 0xc03), PS_REPORTED);
	}
	assert_int_equal(stats(e).discard_errors, 0);
}

/* --- migration: the state saved, and loaded into another device --- */

/* A second balloon over the same guest RAM: the destination's, the rings already in RAM. */
static struct balloon *twin(struct env *e)
{
	struct balloon_params p = { .name = "twin", .stats_interval_ms = 0 };
	struct balloon_mem_ops mem = { fake_discard, fake_undiscard, e };
	struct balloon *b;

	assert_int_equal(balloon_create_on_gm(e->gm, &p, &mem, &b), 0);
	return b;
}

static void test_balloon_state_moves_with_its_held_stats_buffer(void **state)
{
	struct env *e = *state;
	struct fake_buf sb = { DATA, BALLOON_STAT_SIZE, false };
	uint32_t pfn = (uint32_t)(DATA >> 12) + 16, id, len;
	struct fake_buf ib = { DATA + 0x2000, 4, false };
	struct virtio_dev *v2;
	struct balloon *b2;
	char why[192] = "";
	uint16_t head;
	json_t *st;

	bring_up(e, ALL_FEATURES);
	head = fake_vq_add_chain(&e->fq[QS], &sb, 1);
	fake_virtio_driver_ok(e->vdev);
	run(e);
	assert_int_equal(balloon_set_target(e->b, RAM - (8ULL << 20)), 0);
	st = virtio_dev_save(e->vdev);
	assert_non_null(st);
	b2 = twin(e);
	v2 = balloon_virtio_dev(b2);
	assert_int_equal(virtio_dev_load(v2, st, why, sizeof(why)), 0);
	json_decref(st);
	/* The driver sees the same device: status, target, features. */
	assert_int_equal(fake_mmio_read(v2, VIRTIO_MMIO_STATUS), status(e));
	{
		struct balloon_stats a, b;

		balloon_get_stats(e->b, &a);
		balloon_get_stats(b2, &b);
		assert_int_equal(b.balloon_target_bytes, a.balloon_target_bytes);
		assert_int_equal(b.features, a.features);
		assert_true(b.driver_ok);
	}
	/* The stats buffer the source held comes back from the destination, once. */
	virtio_dev_poll(v2, true);
	assert_true(fake_vq_get_used(&e->fq[QS], &id, &len));
	assert_int_equal(id, head);
	/* Its queues go on where the source's stopped: an inflate completes there. */
	put_pfns(e, DATA + 0x2000, &pfn, 1);
	head = fake_vq_add_chain(&e->fq[0], &ib, 1);
	virtio_dev_poll(v2, false);
	assert_true(fake_vq_get_used(&e->fq[0], &id, &len));
	assert_int_equal(id, head);
	balloon_destroy(b2);
}

/* Each corruption of a good state is refused with a reason, the device left reset. */
static void test_balloon_hostile_states_are_refused(void **state)
{
	struct env *e = *state;
	static const char *const bad[] = {
		"{\"queues\":[]}",						/* too few queues */
		"status:255",							/* bits that do not exist */
		"features:1",							/* never offered */
		"num:4096",							/* above QueueNumMax */
		"desc:1099511627776",						/* a ring outside RAM */
		"device:null",							/* the balloon's part missing */
		"last_avail:-1",
	};
	json_t *good;

	bring_up(e, ALL_FEATURES);
	fake_virtio_driver_ok(e->vdev);
	good = virtio_dev_save(e->vdev);
	assert_non_null(good);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct balloon *b2 = twin(e);
		struct virtio_dev *v2 = balloon_virtio_dev(b2);
		json_t *st = json_deep_copy(good), *q0 = json_array_get(json_object_get(st, "queues"), 0);
		char key[32], why[192] = "";
		const char *colon = strchr(bad[i], ':');

		if (bad[i][0] == '{') {
			json_decref(st);
			st = json_loads(bad[i], 0, NULL);
		} else {
			json_t *target = st, *v;

			snprintf(key, sizeof(key), "%.*s", (int)(colon - bad[i]), bad[i]);
			if (!strcmp(key, "num") || !strcmp(key, "desc") || !strcmp(key, "last_avail"))
				target = q0;
			v = json_loads(colon + 1, JSON_DECODE_ANY, NULL);
			json_object_set_new(target, key, v);
		}
		assert_int_equal(virtio_dev_load(v2, st, why, sizeof(why)), -EINVAL);
		if (!why[0])
			fail_msg("case %zu refused without a reason", i);
		assert_int_equal(fake_mmio_read(v2, VIRTIO_MMIO_STATUS), 0);
		json_decref(st);
		balloon_destroy(b2);
	}
	json_decref(good);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_balloon_offers_features_and_device_id),
		T(test_balloon_queue_numbering_follows_negotiated_features),
		T(test_balloon_reporting_on_queue_2_without_stats),
		T(test_balloon_target_sets_num_pages_and_interrupts),
		T(test_balloon_actual_byte_writes_merge),
		T(test_balloon_inflate_compacts_pfns_into_ranges),
		T(test_balloon_inflate_pfns_in_order_with_duplicates),
		T(test_balloon_inflate_many_pfns_over_several_buffers),
		T(test_balloon_inflate_skips_pfns_outside_ram),
		cmocka_unit_test_setup_teardown(
			test_balloon_inflate_batch_across_the_hole_skips_only_the_hole,
			setup_two_regions, teardown),
		T(test_balloon_inflate_length_not_multiple_of_4_needs_reset),
		T(test_balloon_inflate_writable_buffer_needs_reset),
		T(test_balloon_deflate_writable_buffer_needs_reset),
		T(test_balloon_hostile_ring_on_inflateq_needs_reset),
		T(test_balloon_inflate_request_above_the_limit_needs_reset),
		T(test_balloon_deflate_undiscards_and_tells_oom_apart),
		T(test_balloon_discard_failure_is_counted_and_request_completes),
		T(test_balloon_reporting_drops_whole_pages_before_ack),
		T(test_balloon_reporting_readable_buffer_needs_reset),
		T(test_balloon_reporting_range_outside_ram_needs_reset),
		T(test_balloon_reporting_above_the_limit_needs_reset),
		T(test_balloon_reporting_ignores_empty_buffers),
		T(test_balloon_stats_are_parsed_and_requested_again),
		T(test_balloon_second_stats_buffer_returns_the_first),
		T(test_balloon_stats_writable_buffer_needs_reset),
		T(test_balloon_reset_forgets_the_held_stats_buffer),
		T(test_balloon_disabled_stats_queue_forgets_its_buffer),
		T(test_balloon_stats_names_and_json),
		T(test_balloon_state_moves_with_its_held_stats_buffer),
		T(test_balloon_hostile_states_are_refused),
		cmocka_unit_test_setup_teardown(test_balloon_worker_inflates_through_the_memory_manager,
						setup_real_mem, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
