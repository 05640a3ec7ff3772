/* SPDX-License-Identifier: MIT */
/*
 * virtio-balloon driver (virtio 1.2 §5.5) for the kvmem guest, polled.
 *
 * Overview. The balloon is a stack of page frame numbers (pfns[0, top)), in
 * palloc memory sized for all of RAM (4 bytes a page, touched only as far as
 * it grows). A request is a slice of that stack handed to the device as is:
 *   - inflate: palloc_alloc_gfns() straight into pfns[top, top + n), one
 *     device-readable buffer, top += n on the ack;
 *   - deflate: the buffer pfns[top - n, top); on the ack (MUST_TELL_HOST:
 *     never touch a page before it) the pages go back to palloc, top -= n.
 * One inflate or deflate is in flight at a time, so the slices never
 * overlap. Free page reporting claims up to REPORT_BATCH whole free 4 MiB
 * chunks (palloc_claim_unreported), hands them over as device-writable
 * buffers, and gives them back marked "reported" on the ack. The stats
 * queue always holds one buffer, refilled each time the device returns it.
 *
 * Scheduling: service() runs from the runtime's poll hook on any vCPU, under
 * bl.lock taken with a trylock; it never waits for the device longer than
 * WORK_BUDGET_NS (unfinished requests are reaped by a later run). The
 * deflate-on-OOM path takes the lock unconditionally and may wait up to
 * ACK_WAIT_NS per request: the allocation that called it needs the pages.
 *
 * Device failure: when Status shows NEEDS_RESET the driver resets the
 * device, sets it up again and re-announces the pages it still holds as one
 * or more inflate requests (the device forgot them; the host still has them
 * dropped), so the balloon survives a reset without touching a page.
 *
 * Locks: bl.lock, then palloc's lock or the console lock (never the other
 * way round: palloc's reclaimer is called without palloc's lock).
 */
#include "balloon_drv.h"

#include "palloc.h"
#include "rt.h"
#include "virtio.h"

#define BALLOON_DEVICE_ID 5

/* Feature bits, virtio 1.2 §5.5.3. */
#define F_MUST_TELL_HOST 0
#define F_STATS_VQ 1
#define F_DEFLATE_ON_OOM 2
#define F_PAGE_REPORTING 5
#define BIT(n) (1ULL << (n))

/* Config space, §5.5.4: le32 num_pages, le32 actual. */
#define CFG_NUM_PAGES 0
#define CFG_ACTUAL 4

#define Q_INFLATE 0
#define Q_DEFLATE 1
#define Q_STATS 2
#define Q_REPORT 3
#define NR_QUEUES 4

#define CHUNK_PFNS 8192			/* PFNs per inflate/deflate request: 32 MiB */
#define FREE_RESERVE 512		/* free pages inflation never takes (2 MiB) */
#define OOM_MIN_PAGES 256		/* deflate-on-OOM at least this much (Linux's 1 MiB) */
#define OOM_HOLDOFF_NS RT_NS_PER_SEC	/* no re-inflation this long after an OOM deflate */
#define REPORT_BATCH 16			/* chunks per report request: 64 MiB */
/*
 * Look for newly freed chunks this often (kvmem.balloon.report_ms). Linux
 * waits 2 s so memory freed and soon reused is not dropped and refaulted;
 * the kvmem default is shorter because an overcommitted host wants freed
 * memory back quickly, and a refault here costs ~4 us a page.
 */
#define REPORT_PERIOD_DEFAULT_MS 200
#define REPORT_EAGER_PAGES (32 * RT_PAGES_PER_MIB) /* freed since the last look: report now */

#define POLL_IDLE_NS (20 * RT_NS_PER_MS)	/* nothing to do: one ISR read per period */
#define POLL_BUSY_NS (1 * RT_NS_PER_MS)		/* requests in flight or work left */
#define WORK_BUDGET_NS (20 * RT_NS_PER_MS)	/* longest one service run waits */
#define STATUS_CHECK_NS RT_NS_PER_SEC		/* read Status even without a config irq */
#define RESTART_RETRY_NS RT_NS_PER_SEC		/* a failed restart is retried this often */
#define ACK_WAIT_NS (5 * RT_NS_PER_SEC)		/* synchronous waits (OOM, re-announce) */
#define HOSTILE_WAIT_NS (2 * RT_NS_PER_SEC)	/* how long a hostile case may take */
#define STALL_PRINT_NS (10 * RT_NS_PER_SEC)	/* a policy may move the target every second */

/* Statistics, §5.5.6.3 and later additions: packed { le16 tag; le64 val; }. */
#define STAT_SIZE 10
#define NR_STATS 16
#define S_SWAP_IN 0
#define S_SWAP_OUT 1
#define S_MAJFLT 2
#define S_MINFLT 3
#define S_MEMFREE 4
#define S_MEMTOT 5
#define S_AVAIL 6
#define S_CACHES 7
#define S_HTLB_PGALLOC 8
#define S_HTLB_PGFAIL 9
#define S_OOM_KILL 10
#define S_ALLOC_STALL 11

enum hostile {
	H_NONE,
	H_LOOP,
	H_LONG,
	H_OOB,
	H_WRAP,
	H_DIR,
	H_INDIRECT_OOB,
	H_INDIRECT_NESTED,
	H_AVAIL_JUMP,
	H_BADLEN,
	H_HUGE,
	H_ALL,
};

static const char *const hostile_names[] = {
	[H_NONE] = "none",
	[H_LOOP] = "loop",
	[H_LONG] = "long",
	[H_OOB] = "oob",
	[H_WRAP] = "wrap",
	[H_DIR] = "dir",
	[H_INDIRECT_OOB] = "indirect-oob",
	[H_INDIRECT_NESTED] = "indirect-nested",
	[H_AVAIL_JUMP] = "avail-jump",
	[H_BADLEN] = "badlen",
	[H_HUGE] = "huge",
	[H_ALL] = "all",
};

/* Everything below is guarded by bl.lock unless it says otherwise. */
static struct balloon {
	struct rt_spinlock lock;
	bool running;			/* DRIVER_OK set by us, no reset pending (atomic reads) */
	bool want_stats;		/* kvmem.balloon.stats (immutable after init) */
	bool want_report;		/* kvmem.balloon.report (immutable after init) */
	bool want_inflate;		/* kvmem.balloon.inflate (immutable after init) */
	uint64_t report_period_ns;	/* kvmem.balloon.report_ms (immutable after init) */
	uint64_t report_floor;		/* unreported free pages left at the last look */
	struct vio_dev dev;
	struct vio_queue q[NR_QUEUES];	/* by role (Q_*), whatever their device index */
	bool has_stats;			/* negotiated STATS_VQ */
	bool has_report;		/* negotiated PAGE_REPORTING */
	bool has_oom;			/* negotiated DEFLATE_ON_OOM */
	uint64_t printed_features;	/* last "features" line, to print changes only */

	uint32_t *pfns;			/* the balloon stack, cap entries */
	uint64_t cap;
	uint64_t top;			/* pages the device acknowledged (atomic reads) */
	uint32_t infl_n;		/* inflate in flight: pfns[top, top + infl_n) */
	uint32_t defl_n;		/* deflate in flight: pfns[top - defl_n, top) */
	gpa_t rep_gpa[REPORT_BATCH];	/* chunks in the report in flight */
	unsigned rep_n;
	bool stats_out;			/* the device holds our stats buffer */

	uint32_t target;		/* num_pages as last read (atomic reads) */
	uint32_t printed_target;	/* target of the last "target ... actual" line */
	bool stalled;			/* inflation found no free memory (atomic reads) */
	bool stall_printed;		/* said so for this target */
	uint64_t stall_print_ns;	/* when, to say it at most every STALL_PRINT_NS */
	uint64_t next_status_ns;
	uint64_t next_report_ns;
	uint64_t restart_ns;		/* when a failed start may be tried again */
	uint64_t oom_until_ns;		/* no inflation before this */
	uint64_t burst_pages;		/* reported since the last "reported" line */

	enum hostile live;		/* kvmem.balloon.hostile.live: next case, or H_NONE */
	bool live_all;			/* ... and the ones after it */
	bool live_sent;			/* that case is with the device */
	uint64_t live_deadline_ns;	/* it counts as survived after this */
	gpa_t scratch;			/* 2 pages the hostile requests point into */
} bl;

static uint8_t stats_buf[NR_STATS * STAT_SIZE] __attribute__((aligned(64)));

/* --- device set-up --- */

/* Reset, negotiate, set the queues up and set DRIVER_OK. Lock held. */
static int start_device(bool hostile)
{
	struct vio_dev *d = &bl.dev;
	uint64_t offered, want;
	unsigned next = 2;
	int ret;

	bl.running = false;
	ret = vio_begin(d);
	if (ret)
		return ret;
	offered = vio_device_features(d);
	if (!(offered & BIT(VIO_F_VERSION_1))) {
		rt_printf("kvmem-balloon: device offers no VIRTIO_F_VERSION_1 (0x%lx)\n", offered);
		ret = -EINVAL;
		goto out_failed;
	}
	want = BIT(F_MUST_TELL_HOST) | BIT(F_DEFLATE_ON_OOM) | BIT(VIO_F_VERSION_1);
	if (bl.want_stats)
		want |= BIT(F_STATS_VQ);
	if (bl.want_report)
		want |= BIT(F_PAGE_REPORTING);
	/* The indirect hostile cases need the feature, or they fail for another reason. */
	if (hostile)
		want |= BIT(VIO_F_INDIRECT_DESC);
	want &= offered;
	if (vio_set_features(d, want)) {
		rt_printf("kvmem-balloon: device refused features 0x%lx\n", want);
		ret = -EINVAL;
		goto out_failed;
	}
	if (want != bl.printed_features) {
		rt_printf("kvmem-balloon: features 0x%lx\n", want);
		bl.printed_features = want;
	}
	bl.has_stats = want & BIT(F_STATS_VQ);
	bl.has_report = want & BIT(F_PAGE_REPORTING);
	bl.has_oom = want & BIT(F_DEFLATE_ON_OOM);
	/* Queues are numbered over those that exist, as Linux's virtio_mmio does. */
	ret = vio_queue_setup(d, &bl.q[Q_INFLATE], 0, VIO_QUEUE_MAX);
	if (!ret)
		ret = vio_queue_setup(d, &bl.q[Q_DEFLATE], 1, VIO_QUEUE_MAX);
	if (!ret && bl.has_stats)
		ret = vio_queue_setup(d, &bl.q[Q_STATS], next++, VIO_QUEUE_MAX);
	if (!ret && bl.has_report)
		ret = vio_queue_setup(d, &bl.q[Q_REPORT], next++, VIO_QUEUE_MAX);
	if (ret) {
		rt_printf("kvmem-balloon: queue set-up failed (%d)\n", ret);
		goto out_failed;
	}
	bl.infl_n = 0;
	bl.defl_n = 0;
	bl.rep_n = 0;
	bl.stats_out = false;
	return 0;

out_failed:
	/* §3.1.1: tell the device we gave up on it. */
	vio_fail(d);
	return ret;
}

/* --- statistics --- */

static void put_stat(unsigned i, uint16_t tag, uint64_t val)
{
	uint8_t *p = &stats_buf[i * STAT_SIZE];

	/* Packed and little-endian (x86): byte copies, no alignment assumed. */
	memcpy(p, &tag, sizeof(tag));
	memcpy(p + 2, &val, sizeof(val));
}

static void fill_stats(void)
{
	uint64_t free_b = palloc_free_pages() * RT_PAGE_SIZE;
	uint64_t avail_b = palloc_avail_pages() * RT_PAGE_SIZE;
	uint64_t total = palloc_total_pages();
	uint64_t held = READ_ONCE(bl.top);
	unsigned t;

	for (t = 0; t < NR_STATS; t++)
		put_stat(t, (uint16_t)t, 0);
	/* The guest has no swap, page cache, huge pages or page scanning: those stay 0. */
	put_stat(S_MEMFREE, S_MEMFREE, free_b);
	put_stat(S_MEMTOT, S_MEMTOT, (total > held ? total - held : 0) * RT_PAGE_SIZE);
	/* Free, and what a report in flight holds; nothing else is reclaimable. */
	put_stat(S_AVAIL, S_AVAIL, avail_b);
	put_stat(S_ALLOC_STALL, S_ALLOC_STALL, palloc_stalls());
}

/* Hand the device a fresh stats buffer. Lock held, device running. */
static void queue_stats(void)
{
	struct vio_buf b = { virt_to_phys(stats_buf), sizeof(stats_buf), false };

	if (!bl.has_stats || bl.stats_out)
		return;
	fill_stats();
	if (vio_add(&bl.q[Q_STATS], &b, 1, 0))
		return;
	bl.stats_out = true;
	vio_kick(&bl.q[Q_STATS]);
}

/* --- requests --- */

static void write_actual(void)
{
	vio_config_write32(&bl.dev, CFG_ACTUAL, (uint32_t)bl.top);
}

static bool in_flight(void)
{
	return bl.infl_n || bl.defl_n || bl.rep_n;
}

static int submit_pfns(unsigned qi, uint64_t first, uint32_t n)
{
	struct vio_buf b = { virt_to_phys(&bl.pfns[first]), n * 4, false };
	int ret = vio_add(&bl.q[qi], &b, 1, first);

	if (!ret)
		vio_kick(&bl.q[qi]);
	return ret;
}

/* Take finished requests off the used rings. Lock held. */
static void reap(void)
{
	uint64_t tok;
	unsigned i;

	while (vio_get_used(&bl.q[Q_INFLATE], &tok, NULL)) {
		if (!bl.infl_n)
			continue;
		WRITE_ONCE(bl.top, bl.top + bl.infl_n);
		bl.infl_n = 0;
		write_actual();
	}
	while (vio_get_used(&bl.q[Q_DEFLATE], &tok, NULL)) {
		if (!bl.defl_n)
			continue;
		/*
		 * Acknowledged: only now may the pages be used again (MUST_TELL_HOST).
		 * The host dropped them when they were inflated: no need to report them.
		 */
		palloc_free_gfns_clean(&bl.pfns[bl.top - bl.defl_n], bl.defl_n);
		WRITE_ONCE(bl.top, bl.top - bl.defl_n);
		bl.defl_n = 0;
		write_actual();
	}
	if (bl.has_report) {
		while (vio_get_used(&bl.q[Q_REPORT], &tok, NULL)) {
			for (i = 0; i < bl.rep_n; i++)
				palloc_free_reported(bl.rep_gpa[i], true);
			bl.burst_pages += bl.rep_n * PALLOC_CHUNK_PAGES;
			bl.rep_n = 0;
		}
	}
	if (bl.has_stats) {
		/* The device returns the buffer to ask for fresh numbers (§5.5.6.3). */
		while (vio_get_used(&bl.q[Q_STATS], &tok, NULL))
			bl.stats_out = false;
		queue_stats();
	}
}

/* Start the next inflate or deflate toward the target. Lock held. */
static void adjust(uint64_t now)
{
	uint64_t target = bl.target, free, n;

	if (bl.infl_n || bl.defl_n)
		return;
	if (target < bl.top) {
		n = MIN(bl.top - target, (uint64_t)CHUNK_PFNS);
		/*
		 * More to come: start the slice at a chunk boundary if one is near,
		 * so whole chunks come back in one piece and palloc can mark them
		 * clean (palloc_free_gfns_clean) instead of reporting them again.
		 */
		if (n == CHUNK_PFNS) {
			uint64_t k;

			for (k = 0; k < PALLOC_CHUNK_PAGES; k++) {
				if (bl.pfns[bl.top - n + k] % PALLOC_CHUNK_PAGES == 0) {
					n -= k;
					break;
				}
			}
		}
		if (!submit_pfns(Q_DEFLATE, bl.top - n, (uint32_t)n))
			bl.defl_n = (uint32_t)n;
		return;
	}
	if (target == bl.top) {
		WRITE_ONCE(bl.stalled, false);
		return;
	}
	/* kvmem.balloon.inflate=off: a driver that never gives what it is asked for. */
	if (now < bl.oom_until_ns || !bl.want_inflate)
		return;
	free = palloc_free_pages();
	n = MIN(MIN(target - bl.top, (uint64_t)CHUNK_PFNS), bl.cap - bl.top);
	n = MIN(n, free > FREE_RESERVE ? free - FREE_RESERVE : 0);
	if (n)
		n = palloc_alloc_gfns(&bl.pfns[bl.top], n);
	if (!n) {
		WRITE_ONCE(bl.stalled, true);
		if (!bl.stall_printed && (!bl.stall_print_ns || now >= bl.stall_print_ns +
							 STALL_PRINT_NS)) {
			rt_printf("kvmem-balloon: target %lu MiB actual %lu MiB: "
				  "no free memory to inflate\n", rt_mib(target), rt_mib(bl.top));
			bl.stall_printed = true;
			bl.stall_print_ns = now;
		}
		return;
	}
	WRITE_ONCE(bl.stalled, false);
	if (submit_pfns(Q_INFLATE, bl.top, (uint32_t)n)) {
		palloc_free_gfns(&bl.pfns[bl.top], n);
		return;
	}
	bl.infl_n = (uint32_t)n;
}

/* Free pages not marked reported (partial chunks included). */
static uint64_t unreported_free(void)
{
	uint64_t free = palloc_free_pages(), rep = palloc_reported_pages();

	return free > rep ? free - rep : 0;
}

/*
 * Time to look for chunks to report: every report period, or at once when
 * a lot of memory was freed since the last look (a guest that just freed
 * a GiB should not keep the host waiting for the period).
 */
static bool report_due(uint64_t now)
{
	return now >= bl.next_report_ns || unreported_free() >= bl.report_floor + REPORT_EAGER_PAGES;
}

/* Report the next batch of free chunks, if it is time. Lock held. */
static void report(uint64_t now)
{
	struct vio_buf b[REPORT_BATCH];
	unsigned i, n;

	if (!bl.has_report || bl.rep_n || !report_due(now))
		return;
	n = (unsigned)palloc_claim_unreported(bl.rep_gpa, REPORT_BATCH);
	if (!n) {
		bl.next_report_ns = now + bl.report_period_ns;
		/* What is left is in partial chunks: only more than this wakes us early. */
		bl.report_floor = unreported_free();
		if (bl.burst_pages) {
			rt_printf("kvmem-balloon: reported %lu MiB\n", rt_mib(bl.burst_pages));
			bl.burst_pages = 0;
		}
		return;
	}
	for (i = 0; i < n; i++) {
		b[i].gpa = bl.rep_gpa[i];
		b[i].len = (uint32_t)(PALLOC_CHUNK_PAGES * RT_PAGE_SIZE);
		/* Linux hands reports over as device-writable buffers. */
		b[i].write = true;
	}
	if (vio_add(&bl.q[Q_REPORT], b, n, 0)) {
		for (i = 0; i < n; i++)
			palloc_free_reported(bl.rep_gpa[i], false);
		return;
	}
	bl.rep_n = n;
	vio_kick(&bl.q[Q_REPORT]);
}

static void print_progress(void)
{
	if (bl.infl_n || bl.defl_n || bl.top != bl.target)
		return;
	if (bl.target == bl.printed_target)
		return;
	rt_printf("kvmem-balloon: target %lu MiB actual %lu MiB\n", rt_mib(bl.target),
		  rt_mib(bl.top));
	bl.printed_target = bl.target;
}

/*
 * The device forgot everything: give back what was being reported, keep
 * what was being inflated or deflated in the balloon, and re-announce the
 * whole balloon. Lock held.
 */
static int restart(uint64_t now)
{
	uint64_t done = 0;
	unsigned i;
	int ret;

	for (i = 0; i < bl.rep_n; i++)
		palloc_free_reported(bl.rep_gpa[i], false);
	bl.rep_n = 0;
	/* An inflate in flight may or may not have been done: it is re-announced below. */
	WRITE_ONCE(bl.top, bl.top + bl.infl_n);
	bl.infl_n = 0;
	bl.defl_n = 0;
	ret = start_device(bl.live != H_NONE);
	if (ret) {
		bl.restart_ns = now + RESTART_RETRY_NS;
		return ret;
	}
	vio_driver_ok(&bl.dev);
	while (done < bl.top) {
		uint32_t n = (uint32_t)MIN(bl.top - done, (uint64_t)CHUNK_PFNS);
		struct rt_backoff bo = RT_BACKOFF_INIT;
		uint64_t end = rt_now_ns() + ACK_WAIT_NS;
		bool acked;

		if (submit_pfns(Q_INFLATE, done, n))
			break;
		while (!(acked = vio_get_used(&bl.q[Q_INFLATE], NULL, NULL)) && rt_now_ns() < end)
			rt_backoff(&bo);
		if (!acked) {
			bl.restart_ns = now + RESTART_RETRY_NS;
			return -EBUSY;
		}
		done += n;
	}
	write_actual();
	WRITE_ONCE(bl.target, vio_config_read32(&bl.dev, CFG_NUM_PAGES));
	bl.next_status_ns = rt_now_ns() + STATUS_CHECK_NS;
	WRITE_ONCE(bl.running, true);
	queue_stats();
	return 0;
}

/* Status says the device needs a reset (or is gone): start it again. Lock held. */
static void check_status(uint64_t now)
{
	uint32_t st = vio_status(&bl.dev);

	bl.next_status_ns = now + STATUS_CHECK_NS;
	if (!(st & (VIO_S_NEEDS_RESET | VIO_S_FAILED)) && (st & VIO_S_DRIVER_OK))
		return;
	rt_printf("kvmem-balloon: device needs reset, reinitialising\n");
	WRITE_ONCE(bl.running, false);
	restart(now);
}

static void read_target(void)
{
	uint32_t t = vio_config_read32(&bl.dev, CFG_NUM_PAGES);

	if (t != bl.target) {
		bl.stall_printed = false;
		WRITE_ONCE(bl.stalled, false);
	}
	WRITE_ONCE(bl.target, t);
}

static void hostile_submit(enum hostile h, gpa_t scratch);

/*
 * kvmem.balloon.hostile.live: once the balloon holds its target, submit a
 * malformed request on the live inflate queue; when the device gives up on
 * it (or after HOSTILE_WAIT_NS), recover as from any device failure. Returns
 * true while this owns the device. Lock held, device running.
 */
static bool hostile_live(uint64_t now)
{
	bool reset;

	if (!bl.live_sent) {
		if (in_flight() || !bl.top || bl.top != bl.target)
			return false;
		hostile_submit(bl.live, bl.scratch);
		bl.live_sent = true;
		bl.live_deadline_ns = now + HOSTILE_WAIT_NS;
		return true;
	}
	reset = vio_status(&bl.dev) & VIO_S_NEEDS_RESET;
	if (!reset && now < bl.live_deadline_ns)
		return true;
	rt_printf("kvmem-balloon: hostile %s -> %s\n", hostile_names[bl.live],
		  reset ? "needs-reset" : "survived");
	bl.live_sent = false;
	bl.live = bl.live_all && bl.live + 1 < H_ALL ? bl.live + 1 : H_NONE;
	/* Even a device that survived holds a queue we scribbled on: start over. */
	rt_printf(reset ? "kvmem-balloon: device needs reset, reinitialising\n"
			: "kvmem-balloon: reinitialising after a hostile request\n");
	WRITE_ONCE(bl.running, false);
	restart(now);
	return true;
}

/*
 * One service run: notice config changes and device failures, reap, and
 * push the balloon and the reports along for at most WORK_BUDGET_NS.
 * Returns ns until the next run is wanted. Lock held.
 */
static uint64_t service(uint64_t now)
{
	uint64_t deadline = now + WORK_BUDGET_NS;
	struct rt_backoff bo = RT_BACKOFF_INIT_MAX(200 * RT_NS_PER_US);
	uint32_t isr;

	if (!bl.running) {
		if (now < bl.restart_ns)
			return POLL_IDLE_NS;
		restart(now);
		if (!bl.running)
			return POLL_IDLE_NS;
	}
	/* A hostile request out: only its outcome matters until the device is reset. */
	if (bl.live_sent && hostile_live(now))
		return POLL_BUSY_NS;
	/* One MMIO read while idle; a config interrupt means a new target or a failure. */
	isr = vio_ack_interrupts(&bl.dev);
	if ((isr & VIO_INT_CONFIG) || now >= bl.next_status_ns) {
		check_status(now);
		if (!bl.running)
			return POLL_IDLE_NS;
		read_target();
	}
	if (bl.live != H_NONE && hostile_live(now))
		return POLL_BUSY_NS;
	for (;;) {
		reap();
		now = rt_now_ns();
		adjust(now);
		report(now);
		print_progress();
		if (!in_flight() || now >= deadline)
			break;
		rt_backoff(&bo);
	}
	if (in_flight() || (bl.top != bl.target && !bl.stalled) ||
	    (bl.has_report && report_due(now)))
		return POLL_BUSY_NS;
	return POLL_IDLE_NS;
}

static uint64_t poll_fn(uint64_t now)
{
	uint64_t next;

	/* Busy on another vCPU, or reentered from our own waits. */
	if (!rt_spin_trylock(&bl.lock))
		return POLL_BUSY_NS;
	next = service(now);
	rt_spin_unlock(&bl.lock);
	return next;
}

/* --- deflate-on-OOM --- */

/* Wait (bounded) until nothing is in flight; false if the device did not answer. */
static bool drain(void)
{
	struct rt_backoff bo = RT_BACKOFF_INIT_MAX(RT_NS_PER_MS);
	uint64_t end = rt_now_ns() + ACK_WAIT_NS;

	for (;;) {
		reap();
		if (!in_flight())
			return true;
		if (rt_now_ns() >= end)
			return false;
		rt_backoff(&bo);
	}
}

/*
 * palloc's reclaimer: an allocation needs @pages more. Reports in flight
 * are let finish (their chunks come back free), then, with DEFLATE_ON_OOM,
 * at least OOM_MIN_PAGES are deflated (virtio 1.2 §5.5.6.1: the driver may
 * take pages back from the balloon while num_pages asks for more).
 */
static uint64_t oom_reclaim(uint64_t pages)
{
	struct rt_backoff bo = RT_BACKOFF_INIT;
	uint64_t want = MAX(pages, (uint64_t)OOM_MIN_PAGES), freed = 0;

	/* Not rt_spin_lock: the holder may be waiting for the device for a while. */
	while (!rt_spin_trylock(&bl.lock))
		rt_backoff(&bo);
	if (!bl.running) {
		uint64_t now = rt_now_ns();

		bl.restart_ns = now;
		restart(now);
	}
	if (bl.running && drain() && bl.has_oom) {
		while (freed < want && bl.top) {
			uint64_t n = MIN(MIN(want - freed, bl.top), (uint64_t)CHUNK_PFNS);

			if (submit_pfns(Q_DEFLATE, bl.top - n, (uint32_t)n))
				break;
			bl.defl_n = (uint32_t)n;
			if (!drain())
				break;
			freed += n;
		}
		bl.oom_until_ns = rt_now_ns() + OOM_HOLDOFF_NS;
		if (freed)
			rt_printf("kvmem-balloon: deflate-on-oom %lu pages\n", freed);
	}
	rt_spin_unlock(&bl.lock);
	return freed;
}

/* --- the hostile driver --- */

/*
 * Far above any RAM and MMIO kvmem gives a guest. These bad addresses are
 * raw gpas on purpose; only the hostile driver's own buffers (in scratch)
 * are converted, so each case fails for the one reason it is named after.
 */
#define HOSTILE_OOB_GPA (1ULL << 46)
#define HOSTILE_WRAP_GPA 0xfffffffffffff000ULL
#define HOSTILE_TABLE_OFF 2048	/* an indirect table in scratch's first page */
#define HOSTILE_NESTED_OFF (HOSTILE_TABLE_OFF + 256)

/* Submit one malformed request of kind @h on the inflate queue. Lock held. */
static void hostile_submit(enum hostile h, gpa_t scratch)
{
	struct vio_queue *q = &bl.q[Q_INFLATE];
	gpa_t pfnbuf = scratch;		/* one le32 PFN: the scratch's own second page */
	struct vio_desc *table = phys_to_virt(gpa_add(scratch, HOSTILE_TABLE_OFF));
	uint16_t i;

	*(uint32_t *)phys_to_virt(pfnbuf) = (uint32_t)gpa_to_gfn(gpa_add(scratch, RT_PAGE_SIZE));
	switch (h) {
	case H_LOOP:
		vio_raw_desc(q, 0, pfnbuf, 4, VIO_DESC_F_NEXT, 0);
		break;
	case H_LONG:
		/* Every descriptor of the queue in one ring: longer than the queue. */
		for (i = 0; i < q->size; i++)
			vio_raw_desc(q, i, pfnbuf, 4, VIO_DESC_F_NEXT, (uint16_t)((i + 1) % q->size));
		break;
	case H_OOB:
		vio_raw_desc(q, 0, gpa(HOSTILE_OOB_GPA), 4096, 0, 0);
		break;
	case H_WRAP:
		vio_raw_desc(q, 0, gpa(HOSTILE_WRAP_GPA), 0x2000, 0, 0);
		break;
	case H_DIR:
		vio_raw_desc(q, 0, pfnbuf, 4, VIO_DESC_F_WRITE, 0);
		break;
	case H_INDIRECT_OOB:
		vio_raw_desc(q, 0, gpa(HOSTILE_OOB_GPA), 4 * sizeof(struct vio_desc),
			     VIO_DESC_F_INDIRECT, 0);
		break;
	case H_INDIRECT_NESTED:
		table[0].addr = gpa_val(gpa_add(scratch, HOSTILE_NESTED_OFF));
		table[0].len = sizeof(struct vio_desc);
		table[0].flags = VIO_DESC_F_INDIRECT;
		table[0].next = 0;
		vio_raw_desc(q, 0, virt_to_phys(table), sizeof(struct vio_desc), VIO_DESC_F_INDIRECT,
			     0);
		break;
	case H_AVAIL_JUMP:
		vio_raw_desc(q, 0, pfnbuf, 4, 0, 0);
		vio_raw_publish(q, 0, (uint16_t)(q->size + 1));
		vio_kick(q);
		return;
	case H_BADLEN:
		vio_raw_desc(q, 0, pfnbuf, 6, 0, 0);
		break;
	case H_HUGE:
		/* In RAM and well formed, but 32768 PFNs: far more than any driver sends at once. */
		vio_raw_desc(q, 0, pfnbuf, 32768 * 4, 0, 0);
		break;
	case H_NONE:
	case H_ALL:
		return;
	}
	vio_raw_publish(q, 0, 1);
	vio_kick(q);
}

static void hostile_case(enum hostile h, gpa_t scratch)
{
	struct rt_backoff bo = RT_BACKOFF_INIT_MAX(RT_NS_PER_MS);
	uint64_t end;
	bool reset = false;

	if (start_device(true)) {
		rt_printf("kvmem-balloon: hostile %s -> device did not start\n", hostile_names[h]);
		return;
	}
	vio_driver_ok(&bl.dev);
	hostile_submit(h, scratch);
	end = rt_now_ns() + HOSTILE_WAIT_NS;
	while (rt_now_ns() < end) {
		if (vio_status(&bl.dev) & VIO_S_NEEDS_RESET) {
			reset = true;
			break;
		}
		rt_backoff(&bo);
	}
	rt_printf("kvmem-balloon: hostile %s -> %s\n", hostile_names[h],
		  reset ? "needs-reset" : "survived");
	vio_reset(&bl.dev);
}

static void hostile_run(enum hostile h)
{
	unsigned c;

	for (c = H_LOOP; c < H_ALL; c++)
		if (h == H_ALL || h == (enum hostile)c)
			hostile_case((enum hostile)c, bl.scratch);
}

/* --- public --- */

static bool flag_off(const char *cmdline, const char *key)
{
	struct rt_str v;

	if (!cmdline_get(cmdline, key, &v) || str_eq(v, "on"))
		return false;
	if (str_eq(v, "off"))
		return true;
	rt_printf("kvmem-balloon: bad %s=%.*s: on or off\n", key, (int)v.len, v.p);
	rt_poweroff(RT_EXIT_USAGE);
}

static enum hostile parse_hostile(const char *cmdline, const char *key)
{
	struct rt_str v;
	unsigned h;

	if (!cmdline_get(cmdline, key, &v))
		return H_NONE;
	for (h = H_LOOP; h < ARRAY_SIZE(hostile_names); h++)
		if (str_eq(v, hostile_names[h]))
			return (enum hostile)h;
	rt_printf("kvmem-balloon: bad %s=%.*s: loop, long, oob, wrap, dir, indirect-oob, "
		  "indirect-nested, avail-jump, badlen or all\n", key, (int)v.len, v.p);
	rt_poweroff(RT_EXIT_USAGE);
}

int balloon_init(const struct abi_boot_params *bp)
{
	const char *cmdline = bp->cmdline;
	enum hostile h;
	uint64_t pages;
	gpa_t pfns;
	int ret;

	if (flag_off(cmdline, "kvmem.balloon"))
		return -ENOENT;
	bl.want_report = !flag_off(cmdline, "kvmem.balloon.report");
	bl.want_inflate = !flag_off(cmdline, "kvmem.balloon.inflate");
	bl.report_period_ns = REPORT_PERIOD_DEFAULT_MS * RT_NS_PER_MS;
	{
		struct rt_str v;
		uint64_t ms;

		if (cmdline_get(cmdline, "kvmem.balloon.report_ms", &v)) {
			if (str_to_u64(v, &ms) || ms == 0 || ms > 3600000) {
				rt_printf("kvmem-balloon: bad kvmem.balloon.report_ms=%.*s: 1 to "
					  "3600000\n", (int)v.len, v.p);
				rt_poweroff(RT_EXIT_USAGE);
			}
			bl.report_period_ns = ms * RT_NS_PER_MS;
		}
	}
	bl.want_stats = !flag_off(cmdline, "kvmem.balloon.stats");
	h = parse_hostile(cmdline, "kvmem.balloon.hostile");
	bl.live = parse_hostile(cmdline, "kvmem.balloon.hostile.live");
	if (bl.live == H_ALL) {
		bl.live = H_LOOP;
		bl.live_all = true;
	}
	bl.dev.base = vio_find(bp, BALLOON_DEVICE_ID, 0);
	bl.dev.device_id = BALLOON_DEVICE_ID;
	if (gpa_is_null(bl.dev.base))
		return -ENOENT;
	bl.cap = MIN(palloc_total_pages(), (uint64_t)UINT32_MAX);
	pages = DIV_ROUND_UP(bl.cap * sizeof(uint32_t), RT_PAGE_SIZE);
	pfns = palloc_alloc_run(pages, 1);
	if (gpa_is_null(pfns)) {
		rt_printf("kvmem-balloon: no memory for the page list\n");
		return -ENOMEM;
	}
	bl.pfns = phys_to_virt(pfns);
	if (h != H_NONE || bl.live != H_NONE) {
		/* Kept for good: a hostile request the device took may still point here. */
		bl.scratch = palloc_alloc_run(2, 1);
		if (gpa_is_null(bl.scratch)) {
			rt_printf("kvmem-balloon: no memory for the hostile driver\n");
			h = bl.live = H_NONE;
		}
	}
	rt_spin_lock(&bl.lock);
	if (h != H_NONE)
		hostile_run(h);
	ret = restart(rt_now_ns());
	rt_spin_unlock(&bl.lock);
	if (ret) {
		rt_printf("kvmem-balloon: device did not start (%d)\n", ret);
		palloc_free_run(pfns, pages);
		return ret;
	}
	palloc_set_reclaim(oom_reclaim);
	rt_set_poll(poll_fn);
	return 0;
}

bool balloon_is_running(void)
{
	return READ_ONCE(bl.running);
}

uint64_t balloon_pages(void)
{
	return READ_ONCE(bl.top);
}

bool balloon_is_settled(void)
{
	uint64_t top = READ_ONCE(bl.top);

	return READ_ONCE(bl.running) && top &&
	       (top >= READ_ONCE(bl.target) || READ_ONCE(bl.stalled));
}
