/* SPDX-License-Identifier: MIT */
/*
 * Workload engine. vCPU 0 parses kvmem.wl=, allocates every page up front
 * (palloc, lowest first) and then drives phases through smp_run(); each vCPU
 * owns a contiguous chunk of slots and is the only one to touch those pages
 * and their metadata, so the phases need no locks.
 *
 * Keys (comma-separated k=v, integers decimal or 0x-hex):
 *   size=MiB|max   pages to fill (max: all free memory but a small reserve)
 *   dup=%          pages identical across guests sharing seed= (default 0)
 *   zero=%         zero pages (default 0); the rest are unique to id=
 *   corpus=%       pages copied from the VM's content corpus (a read-only
 *                  file the VMM maps outside RAM: kvmem run --corpus), in
 *                  corpus page order, wrapping around when the guest has
 *                  more such pages than the corpus (default 0)
 *   corpus_order=seq|shuffle   seq (default): the n-th corpus page of the
 *                  guest is the corpus's n-th page; shuffle: a permutation of
 *                  them keyed by id=, so guests of one corpus hold the same
 *                  contents at different addresses, as page caches do
 *   dupset=N       the dup pages cycle through N contents, so each content
 *                  comes again every N dup pages: sharing inside the guest
 *                  as well as across guests (default 0: every dup page
 *                  differs from the others of its guest)
 *   id=N           this guest's identity for unique pages (default 0)
 *   seed=N         seed shared by all guests (default WL_DEFAULT_SEED)
 *   rate=MiB/s     rewrite hot pages at this rate after the fill (default 0)
 *   read=MiB/s     read (check) hot pages at this rate (default 0)
 *   churn=MiB/s    move hot pages at this rate: allocate a new page, write
 *                  the slot's next version there, free the old page (default 0)
 *   hot=%          share of each vCPU's pages that rewrites, reads and churn
 *                  use (default 100)
 *   cold=MiB/s     read (check) pages outside the hot share at this rate: the
 *                  rare touches of cold memory a real working set has
 *                  (default 0)
 *   verify=s       full verification every s seconds; 0 = only after the fill
 *   busy=s,idle=s  after the fill, alternate: s seconds of the rates above
 *                  (and verifications), then s seconds touching no page at
 *                  all, printing "kvmem-wl: idle" and "kvmem-wl: busy" as
 *                  each begins: a guest whose working set comes and goes
 *                  (both needed; default: always busy)
 *   time=s         run s seconds after the fill, verify once more, then then=;
 *                  without it, a workload with rate/read/churn/verify runs
 *                  until the VMM stops it
 *   cow=%          after the fill and its verification, rewrite this share of
 *                  the dup pages once (next version; which ones depends on
 *                  id=, all of them at 100), then verify: writes into pages
 *                  the host may share (default 0)
 *   cowwait=s      sleep s seconds before those writes, after printing
 *                  "kvmem-wl: cow in s s" (default 0): time for the host to
 *                  merge (a test pauses the VM meanwhile)
 *   report=s       every s seconds of the run after the fill, print
 *                  "kvmem-wl: progress T ms ops N": the hot rewrites, reads
 *                  and moves and the cold reads done in the first T ms of it
 *                  (a benchmark's throughput over a window; default 0: off)
 *   hold=s         before then=, print "kvmem-wl: hold s s" and sleep s
 *                  seconds without touching a page: time for the host to
 *                  swap the filled pages out before then=free frees them
 *                  (default 0)
 *   then=poweroff|sleep|free   at the end (default poweroff): power off with
 *                  0 (or 1 after a failed verification); idle; or give every
 *                  filled page back to palloc and idle
 *   grow=MiB       after the fill, use memory the guest gets back: whenever
 *                  free memory rises this much above its lowest point since
 *                  the last fill (the balloon deflated), extend the fill by
 *                  the difference, print "kvmem-wl: grew N to M" (MiB) and
 *                  verify everything; checked every 100 ms until time= ends
 *                  (without time=, forever) (default 0: off)
 *   wait=balloon   before allocating, wait until the balloon holds pages and
 *                  stopped inflating (a host set a target first): the fill
 *                  then needs memory the balloon has, which deflate-on-OOM
 *                  gives back
 *
 * Out of memory: when palloc cannot give the fill (or a churn move) enough
 * pages, the engine asks palloc_reclaim() (the balloon's deflate-on-OOM)
 * before it gives up. size=max takes only what is free and never reclaims.
 *
 * Page classes: slot i's class depends on i % 100 only, spread evenly over
 * the 100 positions, so any 100 consecutive slots hold the exact mix and
 * every class spans all of the filled memory. A dup page's content index is
 * its ordinal among dup pages, so guests of different sizes or mixes still
 * share their common dup prefix; a corpus page's is its ordinal among
 * corpus pages, turned into a page of the corpus by corpus_order=. A
 * rewrite bumps the slot's version and keeps its class; a corpus page
 * rewritten is the guest's own from then on (a unique page's content for
 * the slot and version): memory that held a file and was reused.
 */
#include "balloon_drv.h"
#include "palloc.h"
#include "rt.h"
#include "smp.h"
#include "wl.h"
#include "wlgen.h"

#define WL_DEFAULT_SEED 0x6b766d656d2d776cULL	/* "kvmem-wl" */
#define WL_RESERVE_PAGES 256		/* left free by size=max */
#define WL_CREDIT_MAX_NS (100 * RT_NS_PER_MS)	/* catch-up cap after a pause */
#define WL_MIN_SLEEP_NS (2 * RT_NS_PER_MS)	/* batch pages: <= 500 sleep exits/s */
#define WL_BATCH_PAGES 64		/* per kind and turn: rates stay fair when saturated */
#define NEVER UINT64_MAX
#define WL_POLL_PAGES 64		/* rt_poll() this often in page loops */
#define WL_GROW_CHECK_NS (100 * RT_NS_PER_MS)
#define WL_RECLAIM_TRIES 16		/* palloc_reclaim() rounds before giving up */

enum wl_then { THEN_POWEROFF, THEN_SLEEP, THEN_FREE };

static const char *const then_names[] = { "poweroff", "sleep", "free" };
static const char *const class_names[] = { "unique", "dup", "zero", "corpus" };

/* Beside wlgen's classes: a page of the corpus (version 0), or the guest's own (later). */
#define WL_CORPUS 3

/* Written by vCPU 0 before the first job; read-only afterwards. */
static struct wl_cfg {
	uint64_t pages;
	bool size_max;
	uint64_t dup;
	uint64_t dupset;
	uint64_t zero;
	uint64_t corpus;
	bool corpus_shuffle;
	uint64_t id;
	uint64_t seed;
	uint64_t rate;
	uint64_t read;
	uint64_t churn;
	uint64_t hot;
	uint64_t cold;
	uint64_t verify_s;
	uint64_t busy_s;
	uint64_t idle_s;
	uint64_t time_s;
	bool has_time;
	uint64_t cow;
	uint64_t cowwait_s;
	uint64_t hold_s;
	uint64_t report_s;
	uint64_t grow_pages;
	bool wait_balloon;
	enum wl_then then;
} cfg;

static uint8_t class_tab[100];		/* class of slot position i % 100 */
static uint8_t dup_before[100];		/* dup positions before i % 100 */
static uint8_t corpus_before[100];	/* corpus positions before i % 100 */

/* The corpus: its pages, and the permutation a*n+b mod pages of corpus_order=shuffle. */
static const uint8_t *corpus_base;
static uint64_t corpus_pages;
static uint64_t corpus_mul = 1, corpus_add;

/* Slot metadata: one run of palloc pages, gfns then versions, room for cap_slots. */
static uint64_t nslots;
static uint64_t cap_slots;		/* nslots, or all of RAM with grow= */
static uint64_t low_free;		/* grow=: fewest free pages seen since the last fill */
static uint64_t identity_seen;		/* the copy's identity the pages were filled for */
static bool grow_short;			/* grow=: the last fill got less than came back */
static uint32_t *slot_gfn;		/* vCPU 0 at allocation, then the slot's owner */
static uint32_t *slot_ver;		/* slot's owner vCPU only */
static gpa_t meta_gpa;
static uint64_t meta_pages;

/* Per-vCPU state: written by its vCPU during a job, by vCPU 0 between jobs. */
struct wl_cpu {
	uint64_t lo, hi;	/* slots [lo, hi) */
	uint64_t hot_hi;	/* hot slots are [lo, hot_hi) */
	uint64_t checked;	/* pages found good by the last verify */
	uint64_t bad;		/* bad pages seen since the last report */
	uint64_t bad_slot;	/* lowest bad slot, and what was found there */
	uint32_t bad_gfn;	/* where it was then (churn moves slots) */
	uint32_t bad_ver;
	int bad_off;
	uint64_t bad_word;
	uint64_t rewrites;
	uint64_t reads;
	uint64_t cold_reads;
	uint64_t moves;
	uint64_t cow_writes;
	uint64_t move_fails;	/* no free page to move to */
	uint64_t rng;
	uint64_t generation;	/* the VM's generation its rng was last seeded for */
} __attribute__((aligned(64)));

static struct wl_cpu cpus[ABI_MAX_CPUS];

static bool failed;		/* some verification failed (vCPU 0) */

static unsigned slot_class(uint64_t i)
{
	return class_tab[i % 100];
}

/* The corpus page slot i (a corpus slot) holds at version 0. Below 2^17 pages: no overflow. */
static uint64_t corpus_page(uint64_t i)
{
	uint64_t n = (i / 100 * cfg.corpus + corpus_before[i % 100]) % corpus_pages;

	return (n * corpus_mul + corpus_add) % corpus_pages;
}

/* The key of slot i's content: its dup content, its corpus page, or the slot itself. */
static uint64_t slot_index(uint64_t i)
{
	uint64_t n;

	switch (slot_class(i)) {
	case WLGEN_DUP:
		n = i / 100 * cfg.dup + dup_before[i % 100];
		return cfg.dupset ? n % cfg.dupset : n;
	case WL_CORPUS:
		return slot_ver[i] ? i : corpus_page(i);
	default:
		return i;
	}
}

/* What wlgen makes of slot i: a corpus page rewritten is a unique one. */
static enum wlgen_class gen_class(uint64_t i)
{
	return slot_class(i) == WL_CORPUS ? WLGEN_UNIQUE : (enum wlgen_class)slot_class(i);
}

static bool from_corpus(uint64_t i)
{
	return slot_class(i) == WL_CORPUS && !slot_ver[i];
}

static void *slot_page(uint64_t i)
{
	return phys_to_virt(gfn_to_gpa(slot_gfn[i]));
}

static const uint64_t *corpus_words(uint64_t page)
{
	return (const uint64_t *)(corpus_base + page * RT_PAGE_SIZE);
}

static void fill_slot(uint64_t i)
{
	if (from_corpus(i))
		memcpy(slot_page(i), corpus_words(slot_index(i)), RT_PAGE_SIZE);
	else
		wlgen_fill(slot_page(i), gen_class(i), cfg.seed, cfg.id, slot_index(i), slot_ver[i]);
}

/* Byte offset of the first word of page that differs from corpus page n, or -1. */
static int corpus_check(const uint64_t *page, uint64_t n)
{
	const uint64_t *want = corpus_words(n);

	for (unsigned w = 0; w < RT_PAGE_SIZE / 8; w++)
		if (page[w] != want[w])
			return (int)(w * 8);
	return -1;
}

/* The word slot i should hold at byte offset off (diagnostics). */
static uint64_t expected_word(uint64_t i, uint32_t ver, int off)
{
	if (slot_class(i) == WL_CORPUS)
		return ver ? wlgen_word(WLGEN_UNIQUE, cfg.seed, cfg.id, i, ver, (unsigned)off)
			   : corpus_words(corpus_page(i))[off / 8];
	return wlgen_word(gen_class(i), cfg.seed, cfg.id, slot_index(i), ver, (unsigned)off);
}

static bool check_slot(struct wl_cpu *c, uint64_t i)
{
	const uint64_t *page = slot_page(i);
	int off = from_corpus(i) ? corpus_check(page, slot_index(i))
				 : wlgen_check(page, gen_class(i), cfg.seed, cfg.id, slot_index(i),
					       slot_ver[i]);

	if (off < 0)
		return true;
	if (!c->bad || i < c->bad_slot) {
		c->bad_slot = i;
		c->bad_gfn = slot_gfn[i];
		c->bad_ver = slot_ver[i];
		c->bad_off = off;
		c->bad_word = page[off / 8];
	}
	c->bad++;
	return false;
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* --- jobs, one share per vCPU --- */

/* Fill this vCPU's slots from *@arg on (0, or where a grow= extension starts). */
static void job_fill(unsigned cpu, void *arg)
{
	struct wl_cpu *c = &cpus[cpu];
	uint64_t i;

	for (i = MAX(c->lo, *(const uint64_t *)arg); i < c->hi; i++) {
		if (i % WL_POLL_PAGES == 0)
			rt_poll();
		slot_ver[i] = 0;
		fill_slot(i);
	}
}

/*
 * Refill this vCPU's pages whose content depends on the id (the unique
 * ones, and corpus pages that became the guest's own), from version 0.
 */
static void job_refill_own(unsigned cpu, void *arg)
{
	struct wl_cpu *c = &cpus[cpu];
	uint64_t *filled = arg;

	for (uint64_t i = c->lo; i < c->hi; i++) {
		if (i % WL_POLL_PAGES == 0)
			rt_poll();
		if (slot_class(i) != WLGEN_UNIQUE && !(slot_class(i) == WL_CORPUS && slot_ver[i]))
			continue;
		slot_ver[i] = 0;
		fill_slot(i);
		__atomic_add_fetch(filled, 1, __ATOMIC_RELAXED);
	}
}

/*
 * A clone of a snapshot: the VMM gave this copy an identity of its own, so
 * its pages become its own: the id is the snapshot's plus the identity, and
 * the pages that depend on it are refilled. Dup and zero pages, alike in
 * every guest, stay as they are (and stay shared). vCPU 0, between jobs.
 */
static void take_identity(void)
{
	uint64_t ident = rt_identity(), filled = 0, t0;

	if (ident == identity_seen)
		return;
	t0 = rt_now_ns();
	cfg.id += ident - identity_seen;
	identity_seen = ident;
	smp_run(job_refill_own, &filled);
	rt_printf("kvmem-wl: identity %lu: id %lu, refilled %lu MiB in %lu ms\n", ident, cfg.id,
		  rt_mib(filled), (rt_now_ns() - t0) / RT_NS_PER_MS);
}

/* Is dup slot i one of the cow= share this guest rewrites? Differs by id. */
static bool cow_picks(uint64_t i)
{
	uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ULL ^ (cfg.id + 1) * 0xbf58476d1ce4e5b9ULL;

	x ^= x >> 31;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 29;
	return x % 100 < cfg.cow;
}

static void job_cow(unsigned cpu, void *arg __unused)
{
	struct wl_cpu *c = &cpus[cpu];
	uint64_t i;

	for (i = c->lo; i < c->hi; i++) {
		if (i % WL_POLL_PAGES == 0)
			rt_poll();
		if (slot_class(i) != WLGEN_DUP || !cow_picks(i))
			continue;
		slot_ver[i]++;
		fill_slot(i);
		c->cow_writes++;
	}
}

static void job_verify(unsigned cpu, void *arg __unused)
{
	struct wl_cpu *c = &cpus[cpu];
	uint64_t i;

	c->checked = 0;
	for (i = c->lo; i < c->hi; i++) {
		if (i % WL_POLL_PAGES == 0)
			rt_poll();
		c->checked += check_slot(c, i);
	}
}

static void rewrite(struct wl_cpu *c, uint64_t nhot)
{
	uint64_t i = c->lo + xorshift(&c->rng) % nhot;

	/* Read before write: catches a page that went bad since its last check. */
	check_slot(c, i);
	slot_ver[i]++;
	fill_slot(i);
	c->rewrites++;
}

static void read_one(struct wl_cpu *c, uint64_t nhot)
{
	check_slot(c, c->lo + xorshift(&c->rng) % nhot);
	c->reads++;
}

static void read_cold(struct wl_cpu *c, uint64_t ncold)
{
	check_slot(c, c->hot_hi + xorshift(&c->rng) % ncold);
	c->cold_reads++;
}

/*
 * Move slot i to a new page. The new page is taken before the old one is
 * given back, so the content really changes address (palloc hands out the
 * lowest free page, which would otherwise be the one just freed).
 */
static void move_one(struct wl_cpu *c, uint64_t nhot)
{
	uint64_t i = c->lo + xorshift(&c->rng) % nhot;
	gpa_t page = palloc_alloc();
	uint32_t old = slot_gfn[i];

	if (gpa_is_null(page) && palloc_reclaim(1))
		page = palloc_alloc();
	if (gpa_is_null(page)) {
		c->move_fails++;
		return;
	}
	check_slot(c, i);
	slot_gfn[i] = (uint32_t)gpa_to_gfn(page);
	slot_ver[i]++;
	fill_slot(i);
	palloc_free(gfn_to_gpa(old));
	c->moves++;
}

/* ns between two pages for one vCPU's share of @mib_s MiB/s; 0 = off. */
static uint64_t page_cost_ns(uint64_t mib_s)
{
	uint64_t pps = mib_s * RT_PAGES_PER_MIB;

	if (!pps)
		return 0;
	return MAX(RT_NS_PER_SEC * rt_ncpus() / pps, 1);
}

/*
 * A token bucket: @credit gains the time elapsed (capped, so a VM that was
 * paused does not burst) and pays @cost per page. Returns the pages due this
 * turn, at most WL_BATCH_PAGES: a kind asked for more than the vCPU can do
 * (a flat-out rate) would otherwise take turns of its whole capped credit,
 * and the credit of the other kinds, capped too, would be lost meanwhile.
 */
static uint64_t bucket_take(uint64_t *credit, uint64_t elapsed, uint64_t cost)
{
	uint64_t n;

	if (!cost)
		return 0;
	*credit = MIN(*credit + elapsed, WL_CREDIT_MAX_NS);
	n = MIN(*credit / cost, WL_BATCH_PAGES);
	*credit -= n * cost;
	return n;
}

/* ns until the bucket has a page due (0: due now); NEVER for a kind that is off. */
static uint64_t bucket_wait(uint64_t credit, uint64_t cost)
{
	if (!cost)
		return NEVER;
	return credit >= cost ? 0 : cost - credit;
}

static void job_run(unsigned cpu, void *arg)
{
	uint64_t deadline = *(const uint64_t *)arg;
	struct wl_cpu *c = &cpus[cpu];
	uint64_t nhot = c->hot_hi - c->lo, ncold = c->hi - c->hot_hi;
	uint64_t w_cost = nhot ? page_cost_ns(cfg.rate) : 0;
	uint64_t r_cost = nhot ? page_cost_ns(cfg.read) : 0;
	uint64_t m_cost = nhot ? page_cost_ns(cfg.churn) : 0;
	uint64_t c_cost = ncold ? page_cost_ns(cfg.cold) : 0;
	uint64_t w_credit = 0, r_credit = 0, m_credit = 0, c_credit = 0;
	uint64_t last = rt_now_ns(), now;

	while ((now = rt_now_ns()) < deadline) {
		uint64_t elapsed = now - last;
		uint64_t n, wait = deadline - now;

		last = now;
		/* Started again from a saved state: the pages it picks next are not the past's. */
		if (rt_generation() != c->generation) {
			c->generation = rt_generation();
			c->rng ^= rt_now_ns() * 0x9e3779b97f4a7c15ULL;
			c->rng = c->rng ? c->rng : 1;
		}
		for (n = bucket_take(&w_credit, elapsed, w_cost); n; n--)
			rewrite(c, nhot);
		for (n = bucket_take(&r_credit, elapsed, r_cost); n; n--)
			read_one(c, nhot);
		for (n = bucket_take(&m_credit, elapsed, m_cost); n; n--)
			move_one(c, nhot);
		for (n = bucket_take(&c_credit, elapsed, c_cost); n; n--)
			read_cold(c, ncold);
		/* Sleep until the next page is due; never spin for the rate. */
		wait = MIN(wait, bucket_wait(w_credit, w_cost));
		wait = MIN(wait, bucket_wait(r_credit, r_cost));
		wait = MIN(wait, bucket_wait(m_credit, m_cost));
		wait = MIN(wait, bucket_wait(c_credit, c_cost));
		now = rt_now_ns();
		if (now >= deadline)
			break;
		if (wait)
			rt_sleep_ns(MIN(MAX(wait, WL_MIN_SLEEP_NS), deadline - now));
	}
}

/* --- vCPU 0: phases --- */

/* Full verification on all vCPUs; prints the verify line. Returns true if all good. */
static bool verify_all(void)
{
	uint64_t ok = 0, bad = 0, rewrites = 0, reads = 0, moves = 0, move_fails = 0, cold = 0;
	struct wl_cpu *first = NULL;
	unsigned i;

	smp_run(job_verify, NULL);
	for (i = 0; i < rt_ncpus(); i++) {
		struct wl_cpu *c = &cpus[i];

		ok += c->checked;
		bad += c->bad;
		rewrites += c->rewrites;
		reads += c->reads;
		cold += c->cold_reads;
		moves += c->moves;
		move_fails += c->move_fails;
		if (c->bad && (!first || c->bad_slot < first->bad_slot))
			first = c;
	}
	if (rewrites || reads || moves || move_fails || cold)
		rt_printf("kvmem-wl: rewrites %lu reads %lu moves %lu (%lu without a free page) "
			  "cold reads %lu\n", rewrites, reads, moves, move_fails, cold);
	if (!first) {
		rt_printf("kvmem-wl: verify ok %lu\n", ok);
		return true;
	}
	rt_printf("kvmem-wl: verify FAIL 0x%x\n", first->bad_gfn);
	rt_printf("kvmem-wl: %lu bad pages; first: slot %lu class %s index %lu version %u "
		  "offset %d expected 0x%016lx found 0x%016lx\n",
		  bad, first->bad_slot, class_names[slot_class(first->bad_slot)],
		  slot_index(first->bad_slot),
		  first->bad_ver, first->bad_off,
		  expected_word(first->bad_slot, first->bad_ver, first->bad_off),
		  first->bad_word);
	for (i = 0; i < rt_ncpus(); i++)
		cpus[i].bad = 0;
	failed = true;
	if (cfg.then == THEN_POWEROFF)
		rt_poweroff(RT_EXIT_VERIFY_FAIL);
	return false;
}

static __noreturn void usage(const char *what, struct rt_str s)
{
	rt_printf("kvmem-wl: bad kvmem.wl: %s '%.*s'\n", what, (int)s.len, s.p);
	rt_poweroff(RT_EXIT_USAGE);
}

static uint64_t num(struct rt_str key, struct rt_str val, uint64_t max)
{
	uint64_t v;

	if (str_to_u64(val, &v) || v > max)
		usage("value out of range for", key);
	return v;
}

static void parse(struct rt_str spec)
{
	struct rt_str key, val;
	bool has_size = false;
	size_t pos = 0;

	cfg.seed = WL_DEFAULT_SEED;
	cfg.hot = 100;
	cfg.then = THEN_POWEROFF;
	while (kv_next(spec, &pos, &key, &val)) {
		if (str_eq(key, "size")) {
			has_size = true;
			if (str_eq(val, "max"))
				cfg.size_max = true;
			else
				cfg.pages = num(key, val, (uint64_t)UINT32_MAX / RT_PAGES_PER_MIB) *
					    RT_PAGES_PER_MIB;
		} else if (str_eq(key, "dup")) {
			cfg.dup = num(key, val, 100);
		} else if (str_eq(key, "dupset")) {
			cfg.dupset = num(key, val, UINT64_MAX);
		} else if (str_eq(key, "zero")) {
			cfg.zero = num(key, val, 100);
		} else if (str_eq(key, "corpus")) {
			cfg.corpus = num(key, val, 100);
		} else if (str_eq(key, "corpus_order")) {
			if (str_eq(val, "shuffle"))
				cfg.corpus_shuffle = true;
			else if (!str_eq(val, "seq"))
				usage("corpus_order= must be seq or shuffle, not", val);
		} else if (str_eq(key, "id")) {
			cfg.id = num(key, val, UINT64_MAX);
		} else if (str_eq(key, "seed")) {
			cfg.seed = num(key, val, UINT64_MAX);
		} else if (str_eq(key, "rate")) {
			cfg.rate = num(key, val, 1 << 20);
		} else if (str_eq(key, "read")) {
			cfg.read = num(key, val, 1 << 20);
		} else if (str_eq(key, "churn")) {
			cfg.churn = num(key, val, 1 << 20);
		} else if (str_eq(key, "hot")) {
			cfg.hot = num(key, val, 100);
		} else if (str_eq(key, "cold")) {
			cfg.cold = num(key, val, 1 << 20);
		} else if (str_eq(key, "verify")) {
			cfg.verify_s = num(key, val, 1 << 30);
		} else if (str_eq(key, "busy")) {
			cfg.busy_s = num(key, val, 1 << 30);
		} else if (str_eq(key, "idle")) {
			cfg.idle_s = num(key, val, 1 << 30);
		} else if (str_eq(key, "time")) {
			cfg.time_s = num(key, val, 1 << 30);
			cfg.has_time = true;
		} else if (str_eq(key, "cow")) {
			cfg.cow = num(key, val, 100);
		} else if (str_eq(key, "cowwait")) {
			cfg.cowwait_s = num(key, val, 1 << 30);
		} else if (str_eq(key, "hold")) {
			cfg.hold_s = num(key, val, 1 << 30);
		} else if (str_eq(key, "report")) {
			cfg.report_s = num(key, val, 1 << 30);
		} else if (str_eq(key, "grow")) {
			cfg.grow_pages = num(key, val, (uint64_t)UINT32_MAX / RT_PAGES_PER_MIB) *
					 RT_PAGES_PER_MIB;
		} else if (str_eq(key, "wait")) {
			if (!str_eq(val, "balloon"))
				usage("wait= must be balloon, not", val);
			cfg.wait_balloon = true;
		} else if (str_eq(key, "then")) {
			unsigned t;

			for (t = 0; t < ARRAY_SIZE(then_names); t++)
				if (str_eq(val, then_names[t]))
					break;
			if (t == ARRAY_SIZE(then_names))
				usage("then= must be poweroff, sleep or free, not", val);
			cfg.then = (enum wl_then)t;
		} else {
			usage("unknown key", key);
		}
	}
	if (!has_size)
		usage("missing size= in", spec);
	if (cfg.dup + cfg.zero + cfg.corpus > 100)
		usage("dup + zero + corpus exceed 100 in", spec);
	if (!cfg.hot)
		usage("hot= must be 1..100 in", spec);
	if (!cfg.busy_s != !cfg.idle_s)
		usage("busy= and idle= go together, both above 0, in", spec);
}

/*
 * Spread each class evenly over the 100 positions (Bresenham): dup first,
 * zero among the rest, corpus among what is left.
 */
static void build_class_table(void)
{
	uint64_t nd = 100 - cfg.dup, nz = nd - cfg.zero, r = 0, ncorpus = 0;
	unsigned p;

	for (p = 0; p < 100; p++) {
		uint64_t before = p * cfg.dup / 100;
		uint64_t q = p - before;	/* position among the non-dup ones */

		dup_before[p] = (uint8_t)before;
		corpus_before[p] = (uint8_t)ncorpus;
		if ((p + 1) * cfg.dup / 100 > before) {
			class_tab[p] = WLGEN_DUP;
		} else if (nd && (q + 1) * cfg.zero / nd > q * cfg.zero / nd) {
			class_tab[p] = WLGEN_ZERO;
		} else {
			/* r: position among those neither dup nor zero. */
			bool corpus = (r + 1) * cfg.corpus / nz > r * cfg.corpus / nz;

			class_tab[p] = corpus ? WL_CORPUS : WLGEN_UNIQUE;
			ncorpus += corpus;
			r++;
		}
	}
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;

		a = b;
		b = t;
	}
	return a;
}

/*
 * The corpus the VMM mapped, and corpus_order=shuffle's permutation: a
 * multiplier prime to the page count and an offset, both from the id, taken
 * once (a clone's new identity keeps its pages where they are).
 */
static void take_corpus(void)
{
	uint64_t k, bytes;
	gpa_t base;

	if (!cfg.corpus)
		return;
	if (!rt_corpus(&base, &bytes)) {
		rt_printf("kvmem-wl: bad kvmem.wl: corpus= without a corpus (kvmem run --corpus "
			  "FILE)\n");
		rt_poweroff(RT_EXIT_USAGE);
	}
	corpus_base = phys_to_virt(base);
	corpus_pages = DIV_ROUND_UP(bytes, RT_PAGE_SIZE);
	if (!cfg.corpus_shuffle || corpus_pages < 2)
		return;
	k = (cfg.id + 1) * 0x9e3779b97f4a7c15ULL;
	k ^= k >> 29;
	corpus_mul = k % corpus_pages | 1;
	while (gcd(corpus_mul, corpus_pages) != 1)
		corpus_mul++;
	corpus_add = (k >> 17) % corpus_pages;
}

static __noreturn void out_of_memory(uint64_t need)
{
	rt_printf("kvmem-wl: out of memory: need %lu pages (%lu MiB), %lu free (%lu MiB)\n",
		  need, rt_mib(need), palloc_free_pages(), rt_mib(palloc_free_pages()));
	rt_poweroff(RT_EXIT_NOMEM);
}

/*
 * Up to @n pages into @gfns; when palloc runs short, ask its reclaimer
 * (deflate-on-OOM) for the rest, a few rounds, before settling for less.
 */
static uint64_t alloc_gfns(uint32_t *gfns, uint64_t n)
{
	uint64_t got = palloc_alloc_gfns(gfns, n);
	unsigned tries;

	for (tries = 0; got < n && tries < WL_RECLAIM_TRIES; tries++) {
		uint64_t freed = palloc_reclaim(n - got);
		uint64_t more = palloc_alloc_gfns(gfns + got, n - got);

		got += more;
		if (!freed && !more)
			break;
	}
	return got;
}

static gpa_t alloc_run(uint64_t npages)
{
	gpa_t run = palloc_alloc_run(npages, 1);
	unsigned tries;

	for (tries = 0; gpa_is_null(run) && tries < WL_RECLAIM_TRIES; tries++) {
		uint64_t freed = palloc_reclaim(npages);

		run = palloc_alloc_run(npages, 1);
		if (gpa_is_null(run) && !freed)
			break;
	}
	return run;
}

/* Metadata and every page, before any page is written. */
static void allocate(void)
{
	uint64_t nfree = palloc_free_pages();
	uint64_t got;

	if (cfg.size_max) {
		uint64_t avail = nfree > WL_RESERVE_PAGES ? nfree - WL_RESERVE_PAGES : 0;

		/* 8 bytes of metadata per slot: 512 slots per metadata page. */
		if (cfg.grow_pages) {
			uint64_t meta = DIV_ROUND_UP(palloc_total_pages() * 8, RT_PAGE_SIZE);

			cfg.pages = avail > meta ? avail - meta : 0;
		} else {
			cfg.pages = avail * 512 / 513;
		}
		cfg.pages = MIN(cfg.pages, (uint64_t)UINT32_MAX);
	}
	nslots = cfg.pages;
	/* grow= may later fill all of RAM: metadata for that, touched only as used. */
	cap_slots = cfg.grow_pages ? MAX(nslots, MIN(palloc_total_pages(), (uint64_t)UINT32_MAX))
				   : nslots;
	if (!cap_slots)
		return;
	meta_pages = DIV_ROUND_UP(cap_slots * 2 * sizeof(uint32_t), RT_PAGE_SIZE);
	meta_gpa = cfg.size_max ? palloc_alloc_run(meta_pages, 1) : alloc_run(meta_pages);
	if (gpa_is_null(meta_gpa))
		out_of_memory(nslots + meta_pages);
	slot_gfn = phys_to_virt(meta_gpa);
	slot_ver = slot_gfn + cap_slots;
	if (cfg.size_max) {
		/* Free memory only, never the balloon's: settle for what there is. */
		nslots = palloc_alloc_gfns(slot_gfn, nslots);
		return;
	}
	got = alloc_gfns(slot_gfn, nslots);
	if (got < nslots) {
		palloc_free_gfns(slot_gfn, got);
		palloc_free_run(meta_gpa, meta_pages);
		out_of_memory(nslots + meta_pages);
	}
}

static void split_work(void)
{
	unsigned n = rt_ncpus(), i;

	for (i = 0; i < n; i++) {
		struct wl_cpu *c = &cpus[i];

		c->lo = nslots * i / n;
		c->hi = nslots * (i + 1) / n;
		c->hot_hi = c->lo + DIV_ROUND_UP((c->hi - c->lo) * cfg.hot, 100);
		c->rng = WL_DEFAULT_SEED ^ (cfg.id << 8) ^ i;
		c->rng = c->rng ? c->rng : 1;
	}
}

static void print_config(void)
{
	rt_printf("kvmem-wl: size %lu MiB (%lu pages) dup %lu%% zero %lu%% unique %lu%% id %lu "
		  "seed 0x%lx\n",
		  rt_mib(nslots), nslots, cfg.dup, cfg.zero, 100 - cfg.dup - cfg.zero - cfg.corpus,
		  cfg.id, cfg.seed);
	if (cfg.corpus)
		rt_printf("kvmem-wl: corpus %lu%% of pages from a corpus of %lu pages, %s\n",
			  cfg.corpus, corpus_pages, cfg.corpus_shuffle ? "shuffled" : "in order");
	rt_printf("kvmem-wl: rate %lu MiB/s read %lu MiB/s churn %lu MiB/s hot %lu%% "
		  "cold %lu MiB/s verify %lu s time %lu s then %s\n",
		  cfg.rate, cfg.read, cfg.churn, cfg.hot, cfg.cold, cfg.verify_s,
		  cfg.has_time ? cfg.time_s : 0, then_names[cfg.then]);
}

/*
 * grow=: fill the memory the guest got back since the last fill (free pages
 * above their low-water mark), then verify all of it. vCPU 0, between jobs.
 * The mark stays where it was: pages freed while we fill (the balloon goes
 * on deflating) count as returned at the next check.
 */
static void grow(void)
{
	/* Free page reports in flight are still free memory: they must not look returned. */
	uint64_t nfree = palloc_avail_pages();
	uint64_t from = nslots, n, got;

	low_free = MIN(low_free, nfree);
	if (nfree < low_free + (grow_short ? 1 : cfg.grow_pages))
		return;
	n = MIN(nfree - low_free, cap_slots - nslots);
	got = n ? palloc_alloc_gfns(slot_gfn + nslots, n) : 0;
	/*
	 * Short: part of what came back is out in a free page report. It is ours
	 * once the report returns, however little of it is left: take it then.
	 */
	grow_short = got < n;
	if (!got)
		return;
	nslots += got;
	split_work();
	smp_run(job_fill, &from);
	rt_printf("kvmem-wl: grew %lu to %lu\n", rt_mib(got), rt_mib(nslots));
	verify_all();
}

/* report=: the operations done so far (between jobs: every vCPU's counters are still). */
static void report(uint64_t start)
{
	uint64_t ops = 0;

	for (unsigned i = 0; i < rt_ncpus(); i++)
		ops += cpus[i].rewrites + cpus[i].reads + cpus[i].moves + cpus[i].cold_reads;
	rt_printf("kvmem-wl: progress %lu ms ops %lu\n", (rt_now_ns() - start) / RT_NS_PER_MS, ops);
}

/* After the fill: rewrite/read/churn/verify/grow until time= is up (or forever). */
static void run(uint64_t start)
{
	uint64_t end = cfg.has_time ? start + cfg.time_s * RT_NS_PER_SEC : NEVER;
	uint64_t verify_ns = cfg.verify_s * RT_NS_PER_SEC;
	uint64_t report_ns = cfg.report_s * RT_NS_PER_SEC;
	uint64_t next_verify = verify_ns ? rt_now_ns() + verify_ns : NEVER;
	uint64_t next_grow = cfg.grow_pages ? rt_now_ns() + WL_GROW_CHECK_NS : NEVER;
	uint64_t next_report = report_ns ? start + report_ns : NEVER;
	uint64_t next_phase = cfg.busy_s ? rt_now_ns() + cfg.busy_s * RT_NS_PER_SEC : NEVER;
	bool active = cfg.rate || cfg.read || cfg.churn || cfg.cold, idle = false;

	low_free = palloc_avail_pages();
	if (!cfg.has_time && !active && !verify_ns && !cfg.grow_pages)
		return;
	for (;;) {
		uint64_t deadline = MIN(MIN(MIN(end, next_verify), MIN(next_grow, next_report)),
					next_phase);
		uint64_t now = rt_now_ns();

		if (active && !idle)
			smp_run(job_run, &deadline);
		else if (deadline > now)
			rt_sleep_ns(deadline - now);
		take_identity();
		now = rt_now_ns();
		if (now >= end)
			break;
		if (now >= next_grow) {
			grow();
			next_grow = rt_now_ns() + WL_GROW_CHECK_NS;
		}
		if (now >= next_phase) {
			idle = !idle;
			next_phase = now + (idle ? cfg.idle_s : cfg.busy_s) * RT_NS_PER_SEC;
			rt_printf("kvmem-wl: %s\n", idle ? "idle" : "busy");
		}
		if (now >= next_report) {
			report(start);
			next_report = MAX(next_report + report_ns, rt_now_ns());
		}
		/* Idle touches nothing: a verification due then waits for the busy phase. */
		if (now >= next_verify && !idle) {
			verify_all();
			next_verify = MAX(next_verify + verify_ns, rt_now_ns());
		} else if (now >= next_verify) {
			next_verify = next_phase;
		}
	}
	verify_all();
}

/* cow=: write into the dup pages (after cowwait=), then verify. */
static void cow_phase(void)
{
	uint64_t n = 0;
	unsigned i;

	rt_printf("kvmem-wl: cow in %lu s\n", cfg.cowwait_s);
	if (cfg.cowwait_s)
		rt_sleep_ns(cfg.cowwait_s * RT_NS_PER_SEC);
	smp_run(job_cow, NULL);
	for (i = 0; i < rt_ncpus(); i++)
		n += cpus[i].cow_writes;
	rt_printf("kvmem-wl: cow wrote %lu\n", n);
	verify_all();
}

/* wait=balloon: until the balloon holds pages and stopped growing. */
static void wait_for_balloon(void)
{
	if (!balloon_is_running()) {
		rt_printf("kvmem-wl: bad kvmem.wl: wait=balloon without a balloon driver\n");
		rt_poweroff(RT_EXIT_USAGE);
	}
	rt_printf("kvmem-wl: waiting for the balloon\n");
	while (!balloon_is_settled())
		rt_sleep_ns(10 * RT_NS_PER_MS);
	rt_printf("kvmem-wl: balloon holds %lu MiB, %lu MiB free\n", rt_mib(balloon_pages()),
		  rt_mib(palloc_free_pages()));
}

void wl_main(struct rt_str spec)
{
	uint64_t t0, t1, from = 0;
	unsigned i;

	parse(spec);
	identity_seen = rt_identity();
	build_class_table();
	take_corpus();
	if (cfg.wait_balloon)
		wait_for_balloon();
	t0 = rt_now_ns();
	allocate();
	split_work();
	print_config();
	smp_run(job_fill, &from);
	t1 = rt_now_ns();
	rt_printf("kvmem-wl: filled %lu in %lu ms\n", rt_mib(nslots), (t1 - t0) / RT_NS_PER_MS);
	if (rt_ncpus() > 1)
		for (i = 0; i < rt_ncpus(); i++)
			rt_printf("kvmem-wl: cpu %u pages %lu\n", i, cpus[i].hi - cpus[i].lo);
	verify_all();
	if (cfg.cow)
		cow_phase();
	run(t1);
	rt_printf("kvmem-wl: done\n");
	if (cfg.hold_s) {
		rt_printf("kvmem-wl: hold %lu s\n", cfg.hold_s);
		rt_sleep_ns(cfg.hold_s * RT_NS_PER_SEC);
	}
	switch (cfg.then) {
	case THEN_POWEROFF:
		rt_poweroff(failed ? RT_EXIT_VERIFY_FAIL : RT_EXIT_OK);
	case THEN_FREE:
		palloc_free_gfns(slot_gfn, nslots);
		if (meta_pages)
			palloc_free_run(meta_gpa, meta_pages);
		rt_printf("kvmem-wl: freed %lu\n", rt_mib(nslots));
		/* fall through */
	case THEN_SLEEP:
		break;
	}
	rt_idle_forever();
}
