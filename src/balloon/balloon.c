/* SPDX-License-Identifier: MIT */
/*
 * virtio-balloon (virtio 1.2 §5.5) over the virtio-mmio transport.
 *
 * Every request is handled on the transport's worker thread, under the
 * transport's device lock, in the order the driver queued it:
 *   - inflate: the chain's readable buffers are arrays of le32 PFNs. The
 *     whole chain is checked first (direction, length a multiple of 4); then
 *     the PFNs are read in batches, sorted, compacted into runs, and each run
 *     is dropped with one mem->discard before the chain is returned, so a
 *     page is gone from the host by the time the driver sees the ack.
 *   - deflate: the same, with mem->undiscard.
 *   - reporting: each writable buffer is a free guest-physical range; whole
 *     pages inside it are dropped, then the chain is returned (the guest may
 *     reuse the range right after the ack, so never the other way round).
 *   - stats: the driver's buffer is parsed and kept; on each timer tick the
 *     device hands it back, which is the request for a fresh one.
 * A malformed request (wrong direction, bad length, or a broken ring found
 * by the transport) puts the device in DEVICE_NEEDS_RESET; a PFN outside RAM
 * is skipped and counted, since the rest of the request is still good.
 *
 * Lock order: transport device lock, then b->lock.
 */
#define LOG_TAG "balloon"
#include "balloon/balloon.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/virtio/virtio_mmio.h"
#include "core/vm.h"
#include "guest/abi.h"
#include "mem/pagestate.h"
#include "mem/reclaim.h"

/* PFNs read from guest memory per batch (4 KiB on the worker's stack). */
#define PFN_BATCH 1024
/*
 * Pages after which a queue_notify call takes no further request, so the
 * worker drops the device lock (which the policy thread, the control socket
 * and vCPUs need) however many requests the driver queued: 64 MiB, plus the
 * request that crossed it (at most 64 MiB of PFNs, or a 256 MiB report).
 */
#define WORK_PAGES 16384
/*
 * The largest request the device takes (virtio leaves it to the device); a
 * bigger one is a hostile driver that wants to hold the worker for hours (a
 * chain of 1024 buffers that all name the whole of RAM). Linux sends 256 PFNs
 * per inflate/deflate request and reports at most 32 ranges of 4 MiB; the
 * kvmem guest sends 8192 PFNs and reports 64 MiB.
 */
#define PFN_REQUEST_MAX_BYTES (4ULL * WORK_PAGES)
#define REPORT_REQUEST_MAX_BYTES (256ULL << 20)
/* Largest stats buffer parsed; further entries are ignored. */
#define STATS_MAX_BYTES (4 * BALLOON_S_NR * BALLOON_STAT_SIZE)

/* Spec queue roles (virtio 1.2 §5.5.2); transport indexes map onto them. */
enum role {
	ROLE_NONE,
	ROLE_INFLATE,
	ROLE_DEFLATE,
	ROLE_STATS,
	ROLE_REPORTING,
};

#define OFFERED_FEATURES                                                      \
	((1ULL << VIRTIO_BALLOON_F_MUST_TELL_HOST) |                         \
	 (1ULL << VIRTIO_BALLOON_F_STATS_VQ) |                               \
	 (1ULL << VIRTIO_BALLOON_F_DEFLATE_ON_OOM) |                         \
	 (1ULL << VIRTIO_BALLOON_F_PAGE_REPORTING))

struct balloon {
	struct gm *gm;			/* borrowed, immutable */
	struct virtio_dev *vdev;	/* owned, immutable */
	struct balloon_mem_ops mem;	/* immutable */
	uint64_t ram_bytes;		/* immutable */
	char name[32];			/* immutable */
	struct log_limit log_limit;	/* its guest's warnings: this device's own limits */

	/* Device lock (ops only): */
	enum role role[VIRTIO_MAX_QUEUES]; /* role of each transport queue */
	int stats_q;			/* transport index of statsq, or -1 */
	bool stats_held;		/* the device holds a stats buffer */
	uint16_t stats_head;		/* ... whose chain head is this */
	struct virtq_chain *chain;	/* scratch for the chain being handled */

	pthread_mutex_t lock;		/* guards everything below */
	uint32_t num_pages;		/* config: target balloon size */
	uint32_t actual;		/* config: balloon size per the driver */
	uint32_t stats_interval_ms;
	bool stats_running;		/* stats timer armed (STATS_VQ and DRIVER_OK) */
	struct balloon_stats st;	/* counters and guest stats */
};

/* A run of consecutive PFNs being gathered for one discard/undiscard. */
struct run {
	uint64_t start;
	uint64_t n;
};

static const char *const stat_names[BALLOON_S_NR] = {
	[BALLOON_S_SWAP_IN] = "swap_in_bytes",
	[BALLOON_S_SWAP_OUT] = "swap_out_bytes",
	[BALLOON_S_MAJFLT] = "major_faults",
	[BALLOON_S_MINFLT] = "minor_faults",
	[BALLOON_S_MEMFREE] = "free_bytes",
	[BALLOON_S_MEMTOT] = "total_bytes",
	[BALLOON_S_AVAIL] = "available_bytes",
	[BALLOON_S_CACHES] = "disk_caches_bytes",
	[BALLOON_S_HTLB_PGALLOC] = "hugetlb_allocations",
	[BALLOON_S_HTLB_PGFAIL] = "hugetlb_failures",
	[BALLOON_S_OOM_KILL] = "oom_kills",
	[BALLOON_S_ALLOC_STALL] = "alloc_stalls",
	[BALLOON_S_ASYNC_SCAN] = "async_scan_bytes",
	[BALLOON_S_DIRECT_SCAN] = "direct_scan_bytes",
	[BALLOON_S_ASYNC_RECLAIM] = "async_reclaim_bytes",
	[BALLOON_S_DIRECT_RECLAIM] = "direct_reclaim_bytes",
};

const char *balloon_stat_name(unsigned int tag)
{
	return tag < BALLOON_S_NR ? stat_names[tag] : "unknown";
}

bool balloon_stat_is_bytes(unsigned int tag)
{
	switch (tag) {
	case BALLOON_S_SWAP_IN:
	case BALLOON_S_SWAP_OUT:
	case BALLOON_S_MEMFREE:
	case BALLOON_S_MEMTOT:
	case BALLOON_S_AVAIL:
	case BALLOON_S_CACHES:
	case BALLOON_S_ASYNC_SCAN:
	case BALLOON_S_DIRECT_SCAN:
	case BALLOON_S_ASYNC_RECLAIM:
	case BALLOON_S_DIRECT_RECLAIM:
		return true;
	default:
		return false;
	}
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

#define COUNT(b, field, n)                        \
	do {                                      \
		pthread_mutex_lock(&(b)->lock);   \
		(b)->st.field += (n);             \
		pthread_mutex_unlock(&(b)->lock); \
	} while (0)

/* The driver handed us something unusable: refuse it and ask for a reset. */
static void bad_request(struct balloon *b, const char *why)
{
	COUNT(b, bad_descs, 1);
	virtio_dev_fail(b->vdev, why);
}

/* --- config space (vCPU thread, device lock) --- */

static void config_read(void *opaque, uint32_t off, void *data, unsigned int len)
{
	struct balloon *b = opaque;
	struct virtio_balloon_config cfg = { 0 };

	pthread_mutex_lock(&b->lock);
	cfg.num_pages = b->num_pages;
	cfg.actual = b->actual;
	pthread_mutex_unlock(&b->lock);
	memcpy(data, (const uint8_t *)&cfg + off, len);
}

static void config_write(void *opaque, uint32_t off, const void *data, unsigned int len)
{
	struct balloon *b = opaque;
	const uint8_t *src = data;
	uint32_t actual;

	/* Only `actual` is the driver's to write; poison_val needs PAGE_POISON. */
	pthread_mutex_lock(&b->lock);
	actual = b->actual;
	for (unsigned int i = 0; i < len; i++) {
		uint32_t at = off + i;

		if (at >= BALLOON_CFG_ACTUAL && at < BALLOON_CFG_ACTUAL + 4)
			((uint8_t *)&actual)[at - BALLOON_CFG_ACTUAL] = src[i];
	}
	b->actual = actual;
	pthread_mutex_unlock(&b->lock);
}

/* --- negotiation (vCPU thread, device lock) --- */

/*
 * Number the queues the way Linux's virtio_mmio find_vqs does: it skips the
 * queues whose feature is absent and gives the next existing queue the next
 * index, so the numbering follows the negotiated features.
 */
static int features_ok(void *opaque, uint64_t features)
{
	struct balloon *b = opaque;
	int n = 0;

	memset(b->role, 0, sizeof(b->role));
	b->stats_q = -1;
	b->role[n++] = ROLE_INFLATE;
	b->role[n++] = ROLE_DEFLATE;
	if (features & (1ULL << VIRTIO_BALLOON_F_STATS_VQ)) {
		b->stats_q = n;
		b->role[n++] = ROLE_STATS;
	}
	if (features & (1ULL << VIRTIO_BALLOON_F_PAGE_REPORTING))
		b->role[n++] = ROLE_REPORTING;
	return n;
}

static void driver_ok(void *opaque)
{
	struct balloon *b = opaque;
	uint32_t ms;

	if (b->stats_q < 0)
		return;
	pthread_mutex_lock(&b->lock);
	b->stats_running = true;
	ms = b->stats_interval_ms;
	pthread_mutex_unlock(&b->lock);
	if (virtio_dev_set_timer(b->vdev, (uint64_t)ms * 1000000ULL))
		log_warn("%s: cannot arm the stats timer: %m", b->name);
}

static void reset(void *opaque)
{
	struct balloon *b = opaque;

	memset(b->role, 0, sizeof(b->role));
	b->stats_q = -1;
	b->stats_held = false;
	pthread_mutex_lock(&b->lock);
	b->stats_running = false;
	/* A reset driver starts from an empty balloon (virtio 1.2 §5.5.6). */
	b->actual = 0;
	pthread_mutex_unlock(&b->lock);
	if (virtio_dev_set_timer(b->vdev, 0))
		log_debug("%s: cannot stop the stats timer: %m", b->name);
}

/* --- inflate / deflate (worker, device lock) --- */

static void run_flush(struct balloon *b, struct run *r, bool inflate)
{
	gpa_t gpa = r->start << BALLOON_PFN_SHIFT;
	uint64_t len = r->n << BALLOON_PFN_SHIFT;
	int ret;

	if (!r->n)
		return;
	ret = inflate ? b->mem.discard(b->mem.arg, gpa, len, BALLOON_DISCARD_INFLATE)
		      : b->mem.undiscard(b->mem.arg, gpa, len);
	if (ret < 0) {
		COUNT(b, discard_errors, 1);
		log_warn_ratelimited_vm(&b->log_limit,
					"%s: %s gpa 0x%" PRIx64 " len 0x%" PRIx64 ": %s", b->name,
					inflate ? "discard" : "undiscard", gpa, len, strerror(-ret));
	}
	r->n = 0;
}

/*
 * Add one PFN (batches arrive sorted) to the run, flushing on a gap. False
 * for a PFN the run already holds (a duplicate).
 */
static bool run_add(struct balloon *b, struct run *r, uint64_t pfn, bool inflate)
{
	if (r->n && pfn >= r->start && pfn < r->start + r->n)
		return false;
	if (r->n && pfn == r->start + r->n) {
		r->n++;
		return true;
	}
	run_flush(b, r, inflate);
	r->start = pfn;
	r->n = 1;
	return true;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a;
	uint32_t y = *(const uint32_t *)b;

	return (x > y) - (x < y);
}

static bool in_order(const uint32_t *v, uint32_t n)
{
	for (uint32_t i = 1; i < n; i++)
		if (v[i] < v[i - 1])
			return false;
	return true;
}

/* Drop (inflate) or give back (deflate) every valid PFN of a checked chain. */
static void do_pfns(struct balloon *b, const struct virtq_chain *c, bool inflate)
{
	uint32_t pfns[PFN_BATCH];
	struct run r = { 0, 0 };
	uint64_t good = 0, bad = 0;

	for (unsigned int i = 0; i < c->nr; i++) {
		const struct virtq_buf *buf = &c->buf[i];
		uint32_t total = buf->len / 4;

		for (uint32_t done = 0; done < total;) {
			uint32_t n = total - done < PFN_BATCH ? total - done : PFN_BATCH;
			uint64_t span;
			bool all_ram;

			/* In RAM: the transport checked the whole buffer. */
			if (mem_read(b->gm, buf->gpa + 4ULL * done, pfns, 4ULL * n)) {
				bad += n;
				done += n;
				continue;
			}
			/*
			 * Sorted batches compact into the fewest runs (and drop
			 * duplicates). The kvmem guest's come in order already
			 * (it takes free pages lowest first): one pass, no sort.
			 */
			if (!in_order(pfns, n))
				qsort(pfns, n, sizeof(pfns[0]), cmp_u32);
			/*
			 * Sorted: when the span from the first PFN to the last is all
			 * RAM, so is every PFN of the batch, and one range check does
			 * for all of them. A span over a hole or past the end of RAM
			 * is checked PFN by PFN.
			 */
			span = ((uint64_t)pfns[n - 1] - pfns[0] + 1) << BALLOON_PFN_SHIFT;
			all_ram = mem_range_ok(b->gm, (uint64_t)pfns[0] << BALLOON_PFN_SHIFT, span);
			for (uint32_t k = 0; k < n; k++) {
				uint64_t pfn = pfns[k];
				gpa_t gpa = pfn << BALLOON_PFN_SHIFT;

				if (!all_ram && !mem_range_ok(b->gm, gpa, BALLOON_PAGE_SIZE)) {
					bad++;
					continue;
				}
				if (run_add(b, &r, pfn, inflate))
					good++;
			}
			done += n;
		}
	}
	run_flush(b, &r, inflate);
	if (bad)
		log_warn_ratelimited_vm(&b->log_limit,
					"%s: %" PRIu64 " %s PFNs outside guest RAM skipped", b->name,
					bad, inflate ? "inflate" : "deflate");
	pthread_mutex_lock(&b->lock);
	if (inflate) {
		b->st.inflates++;
		b->st.inflated_pages += good;
	} else {
		b->st.deflates++;
		b->st.deflated_pages += good;
		/* The driver took pages back although the target wanted them: OOM. */
		if (b->num_pages >= b->actual)
			b->st.oom_deflated_pages += good;
	}
	b->st.bad_pfns += bad;
	pthread_mutex_unlock(&b->lock);
}

/*
 * Next request on queue q, every buffer in the direction the queue needs
 * (device-readable if readable, else device-writable), in b->chain. False
 * when the queue is empty, or broken (counted, the device then needs a reset).
 */
static bool next_request(struct balloon *b, unsigned int q, bool readable, const char *wrong_dir)
{
	struct virtq_chain *c = b->chain;
	int ret = virtio_dev_pop(b->vdev, q, c);

	if (ret == -EAGAIN)
		return false;
	if (ret) {
		COUNT(b, bad_descs, 1);
		return false;
	}
	if (readable ? c->nr_out != c->nr : c->nr_out != 0) {
		bad_request(b, wrong_dir);
		return false;
	}
	return true;
}

static void handle_pfns(struct balloon *b, unsigned int q, bool inflate)
{
	struct virtq_chain *c = b->chain;

	/* Bounded in requests too: empty ones cost no pages, and a driver can keep adding. */
	for (uint64_t n = 0, pages = 0; n < BALLOON_QUEUE_SIZE && pages < WORK_PAGES; n++) {
		/* virtio 1.2 §5.5.6: PFN arrays are driver-to-device buffers. */
		if (!next_request(b, q, true, inflate ? "inflateq buffer is device-writable"
						      : "deflateq buffer is device-writable"))
			return;
		if (c->out_bytes > PFN_REQUEST_MAX_BYTES) {
			bad_request(b, "PFN array longer than 16384 PFNs");
			return;
		}
		for (unsigned int i = 0; i < c->nr; i++) {
			if (c->buf[i].len % 4) {
				bad_request(b, "PFN array length is not a multiple of 4");
				return;
			}
		}
		do_pfns(b, c, inflate);
		pages += c->out_bytes / 4;
		if (virtio_dev_push(b->vdev, q, c->head, 0))
			return;
	}
}

/* --- free page reporting (worker, device lock) --- */

static void handle_reporting(struct balloon *b, unsigned int q)
{
	struct virtq_chain *c = b->chain;

	for (uint64_t n = 0, pages = 0; n < BALLOON_QUEUE_SIZE && pages < WORK_PAGES; n++) {
		uint64_t ranges = 0, bytes = 0;
		int ret;

		/* Linux adds report buffers as device-writable ("inbuf") scatterlists. */
		if (!next_request(b, q, false, "reporting_vq buffer is device-readable"))
			return;
		if (c->in_bytes > REPORT_REQUEST_MAX_BYTES) {
			bad_request(b, "free page report of more than 256 MiB");
			return;
		}
		pages += c->in_bytes / BALLOON_PAGE_SIZE;
		for (unsigned int i = 0; i < c->nr; i++) {
			const struct virtq_buf *buf = &c->buf[i];
			gpa_t start, end;

			/* Empty buffers are not range-checked: their address means nothing. */
			if (!buf->len)
				continue;
			/* Only whole 4 KiB pages: the rest of a partial page may be in use. */
			start = (buf->gpa + BALLOON_PAGE_SIZE - 1) & ~(BALLOON_PAGE_SIZE - 1);
			end = (buf->gpa + buf->len) & ~(BALLOON_PAGE_SIZE - 1);
			if (end <= start)
				continue;
			ret = b->mem.discard(b->mem.arg, start, end - start, BALLOON_DISCARD_REPORT);
			if (ret < 0) {
				COUNT(b, discard_errors, 1);
				log_warn_ratelimited_vm(&b->log_limit,
							"%s: discard reported gpa 0x%" PRIx64
							" len 0x%" PRIx64 ": %s",
							b->name, start, end - start, strerror(-ret));
				continue;
			}
			ranges++;
			bytes += end - start;
		}
		pthread_mutex_lock(&b->lock);
		b->st.reports++;
		b->st.reported_ranges += ranges;
		b->st.reported_bytes += bytes;
		pthread_mutex_unlock(&b->lock);
		if (virtio_dev_push(b->vdev, q, c->head, 0))
			return;
	}
}

/* --- statistics (worker, device lock) --- */

static void parse_stats(struct balloon *b, const struct virtq_chain *c)
{
	uint8_t raw[STATS_MAX_BYTES];
	size_t have = 0;
	uint32_t valid = 0;
	uint64_t val[BALLOON_S_NR] = { 0 };

	/* The entries may straddle buffers: gather the readable bytes first. */
	for (unsigned int i = 0; i < c->nr && have < sizeof(raw); i++) {
		size_t n = c->buf[i].len;

		if (n > sizeof(raw) - have)
			n = sizeof(raw) - have;
		if (mem_read(b->gm, c->buf[i].gpa, raw + have, n))
			break;
		have += n;
	}
	for (size_t off = 0; off + BALLOON_STAT_SIZE <= have; off += BALLOON_STAT_SIZE) {
		uint16_t tag;
		uint64_t v;

		memcpy(&tag, raw + off, sizeof(tag));
		memcpy(&v, raw + off + 2, sizeof(v));
		/* virtio 1.2 §5.5.6.3: ignore tags we do not know. */
		if (tag >= BALLOON_S_NR)
			continue;
		val[tag] = v;
		valid |= 1U << tag;
	}
	pthread_mutex_lock(&b->lock);
	memcpy(b->st.guest.val, val, sizeof(val));
	b->st.guest.valid = valid;
	b->st.guest.updated_ns = now_ns();
	b->st.guest.updates++;
	pthread_mutex_unlock(&b->lock);
}

static void handle_stats(struct balloon *b, unsigned int q)
{
	struct virtq_chain *c = b->chain;

	for (unsigned int n = 0; n < BALLOON_QUEUE_SIZE; n++) {
		if (!next_request(b, q, true, "statsq buffer is device-writable"))
			return;
		parse_stats(b, c);
		/*
		 * The driver keeps at most one buffer in the queue (virtio 1.2
		 * §5.5.6.3); if it queued another, hand the older one back.
		 */
		if (b->stats_held && virtio_dev_push(b->vdev, q, b->stats_head, 0))
			return;
		b->stats_held = true;
		b->stats_head = c->head;
	}
}

/* The driver disabled a queue: a stats buffer it held is not ours to return. */
static void queue_stop(void *opaque, unsigned int q)
{
	struct balloon *b = opaque;

	if (b->stats_q == (int)q)
		b->stats_held = false;
}

/* Timer tick: give the held stats buffer back, which asks for a fresh one. */
static void on_timer(void *opaque)
{
	struct balloon *b = opaque;

	if (!b->stats_held || b->stats_q < 0)
		return;
	b->stats_held = false;
	if (!virtio_dev_queue_ready(b->vdev, (unsigned int)b->stats_q))
		return;
	if (virtio_dev_push(b->vdev, (unsigned int)b->stats_q, b->stats_head, 0))
		return;
	COUNT(b, stats_requests, 1);
}

static void queue_notify(void *opaque, unsigned int q)
{
	struct balloon *b = opaque;

	switch (q < VIRTIO_MAX_QUEUES ? b->role[q] : ROLE_NONE) {
	case ROLE_INFLATE:
		handle_pfns(b, q, true);
		break;
	case ROLE_DEFLATE:
		handle_pfns(b, q, false);
		break;
	case ROLE_STATS:
		handle_stats(b, q);
		break;
	case ROLE_REPORTING:
		handle_reporting(b, q);
		break;
	case ROLE_NONE:
		break;
	}
}

/*
 * Migration: what the driver has seen and what the device holds. Roles come
 * back with the features; the counters are this host's.
 */
static json_t *balloon_save(void *opaque)
{
	struct balloon *b = opaque;
	json_t *vals = json_array(), *st;

	pthread_mutex_lock(&b->lock);
	/* As decimal strings: the guest's values are 64-bit unsigned, JSON integers signed. */
	for (unsigned int i = 0; i < BALLOON_S_NR && vals; i++) {
		char v[24];

		snprintf(v, sizeof(v), "%" PRIu64, b->st.guest.val[i]);
		json_array_append_new(vals, json_string(v));
	}
	st = json_pack("{s:I, s:I, s:b, s:i, s:I, s:o*}", "num_pages", (json_int_t)b->num_pages,
		       "actual", (json_int_t)b->actual, "stats_held", b->stats_held, "stats_head",
		       (int)b->stats_head, "stats_valid", (json_int_t)b->st.guest.valid,
		       "stats", vals);
	pthread_mutex_unlock(&b->lock);
	return st;
}

static int balloon_load(void *opaque, json_t *st, char *why, size_t whylen)
{
	struct balloon *b = opaque;
	json_t *vals = json_object_get(st, "stats");
	json_int_t num, actual, head, valid;
	int held;

	if (json_unpack(st, "{s:I, s:I, s:b, s:I, s:I}", "num_pages", &num, "actual", &actual,
			"stats_held", &held, "stats_head", &head, "stats_valid", &valid) ||
	    num < 0 || num > UINT32_MAX || actual < 0 || actual > UINT32_MAX || head < 0 ||
	    head > UINT16_MAX || valid < 0 || valid >= (1LL << BALLOON_S_NR) ||
	    !json_is_array(vals) || json_array_size(vals) != BALLOON_S_NR ||
	    (held && b->stats_q < 0)) {
		snprintf(why, whylen, "%s: balloon state malformed", b->name);
		return -EINVAL;
	}
	b->stats_held = held;
	b->stats_head = (uint16_t)head;
	pthread_mutex_lock(&b->lock);
	b->num_pages = (uint32_t)num;
	b->actual = (uint32_t)actual;
	b->st.guest.valid = (uint32_t)valid;
	for (unsigned int i = 0; i < BALLOON_S_NR; i++) {
		const char *v = json_string_value(json_array_get(vals, i));

		b->st.guest.val[i] = v ? strtoull(v, NULL, 10) : 0;
	}
	pthread_mutex_unlock(&b->lock);
	return 0;
}

static const struct virtio_dev_ops balloon_ops = {
	.config_read = config_read,
	.config_write = config_write,
	.features_ok = features_ok,
	.driver_ok = driver_ok,
	.queue_notify = queue_notify,
	.queue_stop = queue_stop,
	.timer = on_timer,
	.reset = reset,
	.save = balloon_save,
	.load = balloon_load,
};

/* --- the memory manager's hooks, for a balloon created without `mem` --- */

static int mm_discard(void *arg, gpa_t gpa, uint64_t len, enum balloon_discard_why why)
{
	int64_t ret = mem_discard(arg, gpa, len,
				  why == BALLOON_DISCARD_INFLATE ? PS_BALLOONED : PS_REPORTED);

	return ret < 0 ? (int)ret : 0;
}

static int mm_undiscard(void *arg, gpa_t gpa, uint64_t len)
{
	return mem_undiscard(arg, gpa, len);
}

/* --- public API --- */

int balloon_create_on_gm(struct gm *gm, const struct balloon_params *p,
			 const struct balloon_mem_ops *mem, struct balloon **out)
{
	struct virtio_dev_params vp = { 0 };
	struct balloon *b;
	int ret;

	struct balloon_mem_ops mm = { mm_discard, mm_undiscard, gm };

	if (!gm)
		return -EINVAL;
	if (!mem)
		mem = &mm;
	if (!mem->discard || !mem->undiscard)
		return -EINVAL;
	b = kv_zalloc(sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->chain = kv_zalloc(sizeof(*b->chain));
	if (!b->chain) {
		ret = -ENOMEM;
		goto out_free;
	}
	b->gm = gm;
	b->mem = *mem;
	b->ram_bytes = mem_ram_bytes(gm);
	b->stats_q = -1;
	b->stats_interval_ms = p && p->stats_interval_ms ? p->stats_interval_ms
						       : BALLOON_DEFAULT_STATS_INTERVAL_MS;
	snprintf(b->name, sizeof(b->name), "%s", p && p->name ? p->name : "balloon");
	pthread_mutex_init(&b->lock, NULL);
	vp.name = b->name;
	vp.device_id = BALLOON_DEVICE_ID;
	vp.features = OFFERED_FEATURES & ~(p ? p->features_off : 0);
	vp.nr_queues = 4;
	vp.queue_max = BALLOON_QUEUE_SIZE;
	vp.config_len = sizeof(struct virtio_balloon_config);
	vp.ops = &balloon_ops;
	vp.opaque = b;
	ret = virtio_dev_create(gm, &vp, &b->vdev);
	if (ret)
		goto out_destroy_lock;
	*out = b;
	return 0;

out_destroy_lock:
	pthread_mutex_destroy(&b->lock);
	kv_free(b->chain);
out_free:
	kv_free(b);
	return ret;
}

int balloon_create(struct vm *vm, const struct balloon_params *p,
		   const struct balloon_mem_ops *mem, struct balloon **out)
{
	struct balloon_params bp = { 0 };
	char name[32];
	struct balloon *b;
	uint32_t gsi;
	gpa_t gpa;
	int ret;

	if (p)
		bp = *p;
	/* Several VMs share one log: name the device after its VM. */
	if (!bp.name) {
		snprintf(name, sizeof(name), "%s-balloon", vm_name(vm));
		bp.name = name;
	}
	ret = balloon_create_on_gm(vm_gm(vm), &bp, mem, &b);
	if (ret)
		return ret;
	/* Start the worker first: past vm_add_device nothing may fail. */
	ret = virtio_dev_start(b->vdev);
	if (ret) {
		log_err("%s: cannot start the worker: %s", b->name, strerror(-ret));
		goto out_destroy;
	}
	ret = vm_add_device(vm, ABI_DEV_VIRTIO_MMIO, &virtio_mmio_bus_ops, b->vdev, &gpa, &gsi);
	if (ret) {
		log_err("%s: no device slot: %s", b->name, strerror(-ret));
		goto out_destroy;
	}
	virtio_dev_attach(b->vdev, vm, gpa, gsi);
	log_debug("%s: virtio-mmio at gpa 0x%" PRIx64 " gsi %u", b->name, gpa, gsi);
	*out = b;
	return 0;

out_destroy:
	balloon_destroy(b);
	return ret;
}

void balloon_destroy(struct balloon *b)
{
	if (!b)
		return;
	virtio_dev_destroy(b->vdev);
	pthread_mutex_destroy(&b->lock);
	kv_free(b->chain);
	kv_free(b);
}

int balloon_set_target(struct balloon *b, uint64_t target_bytes)
{
	uint64_t bytes = target_bytes >= b->ram_bytes ? 0 : b->ram_bytes - target_bytes;
	uint64_t pages = (bytes + BALLOON_PAGE_SIZE - 1) >> BALLOON_PFN_SHIFT;

	if (pages > UINT32_MAX)
		return -ERANGE;
	pthread_mutex_lock(&b->lock);
	b->num_pages = (uint32_t)pages;
	pthread_mutex_unlock(&b->lock);
	/* Not under b->lock: the transport lock comes first. */
	virtio_dev_config_changed(b->vdev);
	return 0;
}

int balloon_set_stats_interval(struct balloon *b, uint32_t interval_ms)
{
	bool armed;

	pthread_mutex_lock(&b->lock);
	b->stats_interval_ms = interval_ms;
	armed = b->stats_running;
	pthread_mutex_unlock(&b->lock);
	return armed ? virtio_dev_set_timer(b->vdev, (uint64_t)interval_ms * 1000000ULL) : 0;
}

static uint64_t sub0(uint64_t a, uint64_t b)
{
	return a > b ? a - b : 0;
}

void balloon_get_stats(struct balloon *b, struct balloon_stats *out)
{
	struct virtio_dev_stats vs;

	/* Transport first: its lock is taken before ours, never inside it. */
	virtio_dev_get_stats(b->vdev, &vs);
	pthread_mutex_lock(&b->lock);
	*out = b->st;
	out->ram_bytes = b->ram_bytes;
	out->balloon_target_bytes = (uint64_t)b->num_pages << BALLOON_PFN_SHIFT;
	out->balloon_actual_bytes = (uint64_t)b->actual << BALLOON_PFN_SHIFT;
	pthread_mutex_unlock(&b->lock);
	out->target_bytes = sub0(out->ram_bytes, out->balloon_target_bytes);
	out->actual_bytes = sub0(out->ram_bytes, out->balloon_actual_bytes);
	out->needs_reset = vs.needs_reset;
	out->features = vs.features;
	out->status = vs.status;
	out->driver_ok = (vs.status & VIRTIO_STATUS_DRIVER_OK) &&
			 !(vs.status & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED));
}

json_t *balloon_stats_json(const struct balloon_stats *st)
{
	json_t *o = json_object();
	json_t *guest = json_object();
	json_t *c = json_object();
	int err = 0;

	if (!o || !guest || !c)
		goto out_fail;
	err |= json_object_set_new(o, "target_bytes", json_integer((json_int_t)st->target_bytes));
	err |= json_object_set_new(o, "actual_bytes", json_integer((json_int_t)st->actual_bytes));
	err |= json_object_set_new(o, "balloon_target_bytes",
				   json_integer((json_int_t)st->balloon_target_bytes));
	err |= json_object_set_new(o, "balloon_actual_bytes",
				   json_integer((json_int_t)st->balloon_actual_bytes));
	err |= json_object_set_new(o, "driver_ok", json_boolean(st->driver_ok));
	err |= json_object_set_new(o, "needs_reset", json_boolean(st->status &
								  VIRTIO_STATUS_NEEDS_RESET));
	err |= json_object_set_new(o, "features", json_integer((json_int_t)st->features));
	for (unsigned int t = 0; t < BALLOON_S_NR; t++)
		if (st->guest.valid & (1U << t))
			err |= json_object_set_new(guest, balloon_stat_name(t),
						   json_integer((json_int_t)st->guest.val[t]));
	if (st->guest.updated_ns)
		err |= json_object_set_new(guest, "updates",
					   json_integer((json_int_t)st->guest.updates));
#define C(f) (err |= json_object_set_new(c, #f, json_integer((json_int_t)st->f)))
	C(inflates);
	C(deflates);
	C(inflated_pages);
	C(deflated_pages);
	C(oom_deflated_pages);
	C(reports);
	C(reported_ranges);
	C(reported_bytes);
	C(bad_descs);
	C(bad_pfns);
	C(discard_errors);
	C(needs_reset);
	C(stats_requests);
#undef C
	err |= json_object_set_new(o, "guest", guest);
	guest = NULL;
	err |= json_object_set_new(o, "counters", c);
	c = NULL;
	if (err)
		goto out_fail;
	return o;

out_fail:
	json_decref(c);
	json_decref(guest);
	json_decref(o);
	return NULL;
}

struct virtio_dev *balloon_virtio_dev(struct balloon *b)
{
	return b->vdev;
}
