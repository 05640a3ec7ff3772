/* SPDX-License-Identifier: MIT */
/*
 * Budget and reclaim policy (see overcommit.h). One policy thread per host.
 * Lock order: ovc->lock only; mechanisms are called without it held, on
 * the policy thread, with a reference to the VM list kept stable by
 * ovc->vm_lock (VMs are added and removed only while no pass runs).
 */
#define LOG_TAG "policy"
#include "mem/overcommit.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/sandbox.h"
#include "core/thread.h"
#include "mem/access.h"
#include "mem/damon.h"
#include "mem/memcg.h"
#include "mem/account.h"
#include "mem/mem_internal.h"
#include "mem/txn.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/reclaim.h"

struct ovc_vm {
	struct gm *gm;			/* borrowed */
	struct mem_access *access;	/* its sampler, policy thread only */
	double written;			/* share of its samples written last interval, or -1 */
	char name[64];
	uint64_t mem_bytes, min_bytes;
	uint32_t shares;
	struct ovc_vm_stats stats;	/* ovc->lock */
	uint64_t resident_ns;		/* when stats.resident_bytes was measured (atomic) */
	const struct ovc_balloon_ops *balloon; /* set before start, or NULL */
	void *balloon_arg;
	bool balloon_manual;		/* ovc->lock: a target set by hand holds */
	uint64_t inflate_ns;		/* policy thread: when the policy last lowered its target */
	uint64_t progress_ns;		/* policy thread: when its balloon last grew */
	const struct ovc_throttle_ops *throttle; /* set before start, or NULL */
	void *throttle_arg;
	bool throttled;			/* throttle_lock: paused by the policy (stats copy under lock) */
	bool above;			/* throttle_lock: above its entitlement at the last pass */
	int64_t excess;			/* vm_lock: resident less entitlement, this pass's */
	uint64_t last_actual;		/* policy thread: the balloon's actual then */
};

struct ovc {
	pthread_mutex_t vm_lock;	/* held across a pass and by add/remove */
	pthread_mutex_t lock;		/* stats, budget, kick */
	pthread_cond_t cond;
	struct ovc_vm **vms;		/* vm_lock: as many as the host has */
	struct ovc_vm **order;		/* vm_lock: a pass's reclaim order, room for cap_vms */
	unsigned int nr_vms, cap_vms;	/* vm_lock */
	struct ovc_mechanism mech[OVC_MAX_MECHANISMS]; /* sorted by cost, fixed after start */
	unsigned int nr_mech;
	bool ranking;			/* a mechanism takes the coldest chunks: keep them ranked */
	struct ovc_stats stats;		/* lock */
	double interval_s;
	bool kicked, stopping, started;	/* lock */
	pthread_t thread;
	char cgroup_usage[256];		/* memory.usage_in_bytes of our cgroup, or "" */
	struct mem_damon *damon;	/* vm_lock: the chunk ages' source, or NULL (sampling) */
	bool damon_saw;			/* vm_lock: its last update saw accesses */
	struct mem_ledger *ledger;	/* set before start, or NULL: mem_resident */
	uint64_t hard_limit;		/* lock: VMs are paused before usage reaches it (0: never) */
	uint64_t throttle_log_ns;	/* throttle_lock: when the last "still paused" line was said */
	/*
	 * The watch thread: reads usage every WATCH_NS where that is cheap,
	 * kicks an early pass, and throttles. It takes throttle_lock, never
	 * vm_lock (held across whole passes); add and remove take both, so the
	 * VM list is stable under either.
	 */
	pthread_mutex_t throttle_lock;
	pthread_t watch;
	bool watching;
	unsigned int damon_blind;	/* vm_lock: passes in a row it saw nothing the samples saw */
	unsigned int damon_busy;	/* vm_lock: passes in a row DAMON was busy with others */
};

/*
 * DAMON saw no access at all while the write samples saw writes this many
 * passes in a row: its accessed bits do not reflect the guest's accesses
 * (an MMU that does not pass them on), and sampling takes over.
 */
#define DAMON_BLIND_PASSES 5
/*
 * DAMON's sysfs takes one command at a time, machine-wide: with other
 * hosts' kdamonds busy, a pass may find it taken and read nothing (the
 * write samples still run). This many passes in a row, and sampling takes
 * over for good.
 */
#define DAMON_BUSY_PASSES 60

static uint64_t read_u64_file(const char *path, bool *ok)
{
	char buf[64];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	*ok = false;
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	*ok = true;
	return strtoull(buf, NULL, 10);
}

/*
 * The usage file of this process's memory cgroup, if not the root group:
 * cgroup v1's memory controller, else v2's group (where it has the memory
 * controller).
 */
static void find_cgroup(struct ovc *ovc)
{
	char dir[200];
	bool v2, root;

	ovc->cgroup_usage[0] = '\0';
	if (mem_memcg_current(dir, sizeof(dir), &v2, &root) || root)
		return;
	snprintf(ovc->cgroup_usage, sizeof(ovc->cgroup_usage), "%s/%s", dir,
		 v2 ? "memory.current" : "memory.usage_in_bytes");
	if (v2 && access(ovc->cgroup_usage, R_OK))
		ovc->cgroup_usage[0] = '\0';
}

/* The process's proportional set size: shared store frames counted once. */
static uint64_t smaps_pss(void)
{
	FILE *f = fopen("/proc/self/smaps_rollup", "re");
	char line[256];
	unsigned long long kb = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Pss: %llu kB", &kb) == 1)
			break;
	fclose(f);
	return (uint64_t)kb * 1024;
}

/*
 * The cgroup's usage is the kernel's own figure for what kvmem costs the host
 * only when the group holds nothing but this process: a group shared with
 * other programs (a login session, a build) would charge their memory to the
 * guests.
 */
static bool cgroup_is_ours(const char *usage_path)
{
	char procs[300], line[32];
	const char *slash = strrchr(usage_path, '/');
	bool ours = true;
	FILE *f;

	if (!slash)
		return false;
	snprintf(procs, sizeof(procs), "%.*s/cgroup.procs", (int)(slash - usage_path), usage_path);
	f = fopen(procs, "re");
	if (!f)
		return false;
	while (ours && fgets(line, sizeof(line), f))
		ours = atol(line) == (long)getpid();
	fclose(f);
	return ours;
}

static uint64_t host_used(struct ovc *ovc, const char **source)
{
	bool ok = false;
	uint64_t v = 0;

	if (ovc->cgroup_usage[0] && cgroup_is_ours(ovc->cgroup_usage))
		v = read_u64_file(ovc->cgroup_usage, &ok);
	if (ok) {
		*source = "cgroup";
		return v;
	}
	*source = "smaps_rollup";
	return smaps_pss();
}

#define RESIDENT_MAX_AGE_NS 200000000ULL

/*
 * Measure a VM's resident memory now (the walk runs without ovc->lock): the
 * ledger's figure no older than its readers accept, so one walk serves a
 * whole pass and the stats.
 */
static void refresh_resident(struct ovc *ovc, struct ovc_vm *v)
{
	uint64_t bytes = ovc->ledger ? mem_ledger_resident(ovc->ledger, MEM_LEDGER_MAX_AGE_NS, v->gm)
				     : mem_resident(v->gm) * MEM_PAGE_SIZE;

	pthread_mutex_lock(&ovc->lock);
	v->stats.resident_bytes = bytes;
	pthread_mutex_unlock(&ovc->lock);
	__atomic_store_n(&v->resident_ns, kv_clock_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
}

/*
 * Working-set sampling (ESX 2002, section 5.2, for writes), which also ages
 * the VM's chunks for the victim choice (mem/access.h): the share of
 * samples written in one interval estimates the active fraction, smoothed
 * so one quiet interval does not make a busy VM look idle. Reads are not
 * seen: userfaultfd and the KVM dirty log only report writes.
 */
static void sample_active(struct ovc_vm *v, double f)
{
	if (f >= 0)
		v->stats.active_fraction = 0.5 * v->stats.active_fraction + 0.5 * f;
}

void ovc_entitle(struct ovc_claim *vms, unsigned int n, uint64_t budget)
{
	double k = 1.0 / (1.0 - OVC_IDLE_TAX);
	uint64_t rest = budget;

	for (unsigned int i = 0; i < n; i++) {
		vms[i].capped = vms[i].min_bytes >= vms[i].mem_bytes;
		vms[i].entitlement_bytes = vms[i].min_bytes;
		rest = rest > vms[i].min_bytes ? rest - vms[i].min_bytes : 0;
	}
	/* Each round caps at least one VM or gives all of the rest away. */
	for (unsigned int round = 0; round < n && rest; round++) {
		double wsum = 0;
		uint64_t given = 0;

		for (unsigned int i = 0; i < n; i++) {
			double f = vms[i].active_fraction;

			if (!vms[i].capped)
				wsum += vms[i].shares / (f + k * (1.0 - f));
		}
		if (wsum <= 0)
			break;
		for (unsigned int i = 0; i < n; i++) {
			struct ovc_claim *v = &vms[i];
			double f = v->active_fraction;
			uint64_t share, room;

			if (v->capped)
				continue;
			share = (uint64_t)((double)rest * (v->shares / (f + k * (1.0 - f))) / wsum);
			room = v->mem_bytes - v->entitlement_bytes;
			if (share >= room) {
				share = room;
				v->capped = true;
			}
			v->entitlement_bytes += share;
			given += share;
		}
		rest = rest > given ? rest - given : 0;
	}
}

/* The pass's entitlements into every VM's stats (ovc->vm_lock held). */
static void compute_entitlements(struct ovc *ovc, uint64_t budget)
{
	unsigned int n = ovc->nr_vms;
	struct ovc_claim *c = kv_calloc(n ? n : 1, sizeof(*c));

	if (!c)
		return; /* the last pass's entitlements stand */
	for (unsigned int i = 0; i < n; i++) {
		struct ovc_vm *v = ovc->vms[i];

		c[i] = (struct ovc_claim){ .mem_bytes = v->mem_bytes, .min_bytes = v->min_bytes,
					   .shares = v->shares,
					   .active_fraction = v->stats.active_fraction };
	}
	ovc_entitle(c, n, budget);
	for (unsigned int i = 0; i < n; i++)
		ovc->vms[i]->stats.entitlement_bytes = c[i].entitlement_bytes;
	kv_free(c);
}

/* Keep this much of a guest's reported available memory when ballooning it. */
#define BALLOON_RESERVE (16ULL << 20)

static void set_reason(struct ovc *ovc, struct ovc_vm *v, uint64_t target, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void set_reason(struct ovc *ovc, struct ovc_vm *v, uint64_t target, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&ovc->lock);
	v->stats.balloon_target_bytes = target;
	va_start(ap, fmt);
	vsnprintf(v->stats.balloon_reason, sizeof(v->stats.balloon_reason), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&ovc->lock);
}

/*
 * Hand the device the target whose reason set_reason already published (a
 * sample never shows a target without the decision behind it). If the device
 * refuses, the stats go back to the target it still has.
 */
static int set_target(struct ovc *ovc, struct ovc_vm *v, uint64_t target)
{
	struct ovc_balloon_state st;
	int ret = v->balloon->set_target(v->balloon_arg, target);

	if (ret && v->balloon->get(v->balloon_arg, &st) == 0)
		set_reason(ovc, v, st.target_bytes, "the device refused a target of %" PRIu64
			   " MiB (%s)", target >> 20, strerror(-ret));
	return ret;
}

static bool balloon_auto(struct ovc *ovc, struct ovc_vm *v, struct ovc_balloon_state *st)
{
	bool manual;

	if (!v->balloon)
		return false;
	pthread_mutex_lock(&ovc->lock);
	manual = v->balloon_manual;
	pthread_mutex_unlock(&ovc->lock);
	return !manual && v->balloon->get(v->balloon_arg, st) == 0 && st->ready;
}

/* What the guest still has to put in its balloon to reach its target. */
static uint64_t inflight_bytes(const struct ovc_balloon_state *st)
{
	return st->actual_bytes > st->target_bytes ? st->actual_bytes - st->target_bytes : 0;
}

/*
 * Whether an inflation that has not finished should stop counting: asked
 * for too long ago, or the guest stopped putting pages in its balloon (it
 * has nothing left to give: its memory is full of its own data).
 */
static bool balloon_overdue(struct ovc_vm *v, const struct ovc_balloon_state *st, uint64_t now)
{
	if (st->actual_bytes < v->last_actual || v->progress_ns < v->inflate_ns)
		v->progress_ns = now;
	v->last_actual = st->actual_bytes;
	return now - v->inflate_ns > OVC_BALLOON_DEADLINE_S * 1000000000ULL ||
	       now - v->progress_ns > OVC_BALLOON_STALL_S * 1000000000ULL;
}

/*
 * An inflation still in flight is pending, so one pass's request is not
 * asked for again while the guest works on it, but only while the guest
 * makes progress (OVC_BALLOON_STALL_S) and for OVC_BALLOON_DEADLINE_S at
 * most: a guest that does not inflate (no driver at work, a hostile one, a
 * guest whose memory is all in use) must not hold back the mechanisms
 * after it.
 */
static uint64_t balloon_pending(void *arg, struct ovc_vm *v)
{
	struct ovc *ovc = arg;
	struct ovc_balloon_state st;
	uint64_t inflight;

	if (!balloon_auto(ovc, v, &st))
		return 0;
	inflight = inflight_bytes(&st);
	if (!inflight || !balloon_overdue(v, &st, kv_clock_ns(CLOCK_MONOTONIC)))
		return inflight;
	set_reason(ovc, v, st.target_bytes,
		   "the guest has not reached its target (%" PRIu64 " MiB short, none of it for "
		   "%u s): not counted as reclaimed", inflight >> 20, OVC_BALLOON_STALL_S);
	return 0;
}

/*
 * The balloon as a reclaim mechanism: lower the VM's target by what is still
 * needed, never below max(min, floor) and never taking more than the guest
 * says it has available (less a reserve and what it is giving already), so
 * an idle guest gives its idle memory and a busy one is not squeezed into
 * its own swap. A guest overdue with its last inflation is asked for no more.
 */
static int64_t balloon_reclaim(void *arg, struct ovc_vm *v, uint64_t bytes, uint64_t floor)
{
	struct ovc *ovc = arg;
	struct ovc_balloon_state st;
	uint64_t inflight, room, take, target, now = kv_clock_ns(CLOCK_MONOTONIC);

	if (!balloon_auto(ovc, v, &st))
		return 0;
	inflight = inflight_bytes(&st);
	if (inflight && balloon_overdue(v, &st, now))
		return 0;
	if (floor < v->min_bytes)
		floor = v->min_bytes;
	room = st.target_bytes > floor ? st.target_bytes - floor : 0;
	if (st.available_valid) {
		uint64_t avail = st.available_bytes > inflight + BALLOON_RESERVE ?
					 st.available_bytes - inflight - BALLOON_RESERVE : 0;

		if (room > avail)
			room = avail;
	}
	take = (bytes < room ? bytes : room) & ~(MEM_PAGE_SIZE - 1);
	if (!take)
		return 0;
	target = st.target_bytes - take;
	set_reason(ovc, v, target,
		   "inflate: host over budget, guest had %" PRIu64 " MiB available, min %" PRIu64
		   " MiB", st.available_bytes >> 20, v->min_bytes >> 20);
	if (set_target(ovc, v, target))
		return 0;
	if (!inflight)
		v->inflate_ns = now;
	return (int64_t)take;
}

/* Pressure is gone: hand memory back, up to the VM's mem. */
static int64_t balloon_relax(void *arg, struct ovc_vm *v, uint64_t bytes)
{
	struct ovc *ovc = arg;
	struct ovc_balloon_state st;
	uint64_t give, target;

	if (!balloon_auto(ovc, v, &st) || st.target_bytes >= v->mem_bytes)
		return 0;
	give = v->mem_bytes - st.target_bytes;
	if (give > bytes)
		give = bytes & ~(MEM_PAGE_SIZE - 1);
	if (!give)
		return 0;
	target = st.target_bytes + give;
	set_reason(ovc, v, target, "deflate: host back under budget");
	if (set_target(ovc, v, target))
		return 0;
	return (int64_t)give;
}

int ovc_register_balloon(struct ovc *ovc)
{
	struct ovc_mechanism m = {
		.name = "balloon",
		.cost = 2,
		.reclaim = balloon_reclaim,
		.relax = balloon_relax,
		.pending = balloon_pending,
		.arg = ovc,
	};

	return ovc_register_mechanism(ovc, &m);
}

void ovc_vm_set_balloon(struct ovc *ovc, struct ovc_vm *vm, const struct ovc_balloon_ops *ops,
			void *arg)
{
	pthread_mutex_lock(&ovc->vm_lock);
	vm->balloon = ops;
	vm->balloon_arg = arg;
	pthread_mutex_lock(&ovc->lock);
	vm->stats.has_balloon = ops != NULL;
	vm->stats.balloon_target_bytes = vm->mem_bytes;
	snprintf(vm->stats.balloon_reason, sizeof(vm->stats.balloon_reason), "none");
	pthread_mutex_unlock(&ovc->lock);
	pthread_mutex_unlock(&ovc->vm_lock);
}

int ovc_vm_balloon_manual(struct ovc *ovc, struct ovc_vm *vm, uint64_t target_bytes,
			  uint64_t *applied)
{
	int ret;

	if (!vm->balloon)
		return -ENODEV;
	if (target_bytes < vm->min_bytes)
		target_bytes = vm->min_bytes;
	if (target_bytes > vm->mem_bytes)
		target_bytes = vm->mem_bytes;
	target_bytes &= ~(MEM_PAGE_SIZE - 1);
	pthread_mutex_lock(&ovc->lock);
	vm->balloon_manual = true;
	pthread_mutex_unlock(&ovc->lock);
	set_reason(ovc, vm, target_bytes, "set by hand (policy paused for this VM)");
	ret = set_target(ovc, vm, target_bytes);
	if (ret)
		return ret;
	*applied = target_bytes;
	return 0;
}

void ovc_vm_balloon_auto(struct ovc *ovc, struct ovc_vm *vm)
{
	pthread_mutex_lock(&ovc->lock);
	vm->balloon_manual = false;
	snprintf(vm->stats.balloon_reason, sizeof(vm->stats.balloon_reason),
		 "policy (released from a manual target)");
	pthread_mutex_unlock(&ovc->lock);
}

/* vm_lock: stop using DAMON (the stats say sampling from now on). */
static void damon_drop(struct ovc *ovc)
{
	mem_damon_close(ovc->damon);
	ovc->damon = NULL;
	pthread_mutex_lock(&ovc->lock);
	ovc->stats.access_source = "sampling";
	ovc->stats.damon_on = false;
	pthread_mutex_unlock(&ovc->lock);
}

/* vm_lock: the chunk ages from DAMON's regions; an error gives up on it. */
static void damon_update(struct ovc *ovc)
{
	struct mem_damon_stats st;
	int64_t seen;

	if (!ovc->damon)
		return;
	seen = mem_damon_update(ovc->damon);
	if (seen == -EBUSY && ++ovc->damon_busy < DAMON_BUSY_PASSES) {
		ovc->damon_saw = true; /* no news is not blindness */
		return;
	}
	ovc->damon_busy = 0;
	if (seen < 0) {
		if (seen == -EBUSY)
			log_warn("DAMON: busy with other users' commands %u passes in a row: "
				 "write-protect sampling from now on", DAMON_BUSY_PASSES);
		else
			log_warn("DAMON: reading its regions: %s: write-protect sampling from now on",
				 strerror((int)-seen));
		damon_drop(ovc);
		return;
	}
	ovc->damon_saw = seen > 0;
	mem_damon_stats(ovc->damon, &st);
	pthread_mutex_lock(&ovc->lock);
	ovc->stats.damon = st;
	pthread_mutex_unlock(&ovc->lock);
}

/* vm_lock: after sampling: DAMON saw nothing while the samples saw writes, again? */
static void damon_judge(struct ovc *ovc)
{
	bool written = false;

	if (!ovc->damon)
		return;
	for (unsigned int i = 0; i < ovc->nr_vms; i++)
		written |= ovc->vms[i]->written > 0;
	ovc->damon_blind = written && !ovc->damon_saw ? ovc->damon_blind + 1 : 0;
	if (ovc->damon_blind >= DAMON_BLIND_PASSES) {
		log_warn("DAMON saw no access in %u passes while the guests wrote: blind here (its "
			 "accessed bits miss the guests' accesses): write-protect sampling from now on",
			 DAMON_BLIND_PASSES);
		damon_drop(ovc);
	}
}

int ovc_use_damon(struct ovc *ovc, struct mem_damon *d)
{
	int ret = 0;

	pthread_mutex_lock(&ovc->vm_lock);
	if (ovc->damon)
		ret = -EBUSY;
	for (unsigned int i = 0; i < ovc->nr_vms && !ret; i++)
		ret = mem_damon_add(d, ovc->vms[i]->gm);
	if (ret) {
		pthread_mutex_unlock(&ovc->vm_lock);
		return ret;
	}
	ovc->damon = d;
	pthread_mutex_lock(&ovc->lock);
	ovc->stats.access_source = "damon";
	ovc->stats.damon_on = true;
	mem_damon_stats(d, &ovc->stats.damon);
	pthread_mutex_unlock(&ovc->lock);
	pthread_mutex_unlock(&ovc->vm_lock);
	return 0;
}

static int by_excess(const void *a, const void *b)
{
	const struct ovc_vm *x = *(struct ovc_vm *const *)a, *y = *(struct ovc_vm *const *)b;

	return x->excess < y->excess ? 1 : x->excess > y->excess ? -1 : 0;
}

/*
 * The hard limit: usage half way from the budget to the limit pauses the VMs above their entitlement (every VM if none is), so
 * that guests allocating faster than reclaim frees stop before the kernel
 * enforces the limit (a memory cgroup's, by killing kvmem); they resume
 * once usage is back a quarter of the way. A stall, not a kill: reclaim
 * goes on while they wait. throttle_lock held.
 */
static void throttle(struct ovc *ovc, uint64_t used, uint64_t budget, uint64_t limit)
{
	uint64_t hi = 0, lo = UINT64_MAX, now = kv_clock_ns(CLOCK_MONOTONIC);
	unsigned int paused = 0, above = 0;

	/* No limit to hold (any more), or usage unknown: nothing may stay paused. */
	if (limit > budget && used) {
		hi = budget + (limit - budget) / 2;
		lo = budget + (limit - budget) / 4;
	}
	for (unsigned int i = 0; i < ovc->nr_vms; i++) {
		struct ovc_vm *v = ovc->vms[i];

		paused += v->throttled;
		above += v->throttle && v->above;
	}
	if (hi && used >= hi) {
		for (unsigned int i = 0; i < ovc->nr_vms; i++) {
			struct ovc_vm *v = ovc->vms[i];

			if (v->throttled || !v->throttle || (above && !v->above))
				continue;
			/* A VM paused by hand or stopping is not ours to pause or resume. */
			if (v->throttle->pause(v->throttle_arg))
				continue;
			v->throttled = true;
			pthread_mutex_lock(&ovc->lock);
			v->stats.throttled = true;
			v->stats.throttles++;
			pthread_mutex_unlock(&ovc->lock);
			log_warn("%s: paused: the host uses %" PRIu64 " MiB, its hard limit is %" PRIu64
				 " MiB and reclaim has not kept up", v->name, used >> 20, limit >> 20);
			ovc->throttle_log_ns = now;
		}
		if (paused && now - ovc->throttle_log_ns > 10 * 1000000000ULL) {
			log_warn("%u VM(s) still paused: the host uses %" PRIu64 " MiB of its %" PRIu64
				 " MiB hard limit and reclaim makes no room", paused, used >> 20,
				 limit >> 20);
			ovc->throttle_log_ns = now;
		}
	} else if (used <= lo && paused) {
		for (unsigned int i = 0; i < ovc->nr_vms; i++) {
			struct ovc_vm *v = ovc->vms[i];

			if (!v->throttled)
				continue;
			v->throttle->resume(v->throttle_arg);
			v->throttled = false;
			pthread_mutex_lock(&ovc->lock);
			v->stats.throttled = false;
			pthread_mutex_unlock(&ovc->lock);
			log_info("%s: resumed: the host is at %" PRIu64 " MiB", v->name, used >> 20);
		}
	}
}

void ovc_vm_set_throttle(struct ovc *ovc, struct ovc_vm *vm, const struct ovc_throttle_ops *ops,
			 void *arg)
{
	pthread_mutex_lock(&ovc->vm_lock);
	pthread_mutex_lock(&ovc->throttle_lock);
	vm->throttle = ops;
	vm->throttle_arg = arg;
	pthread_mutex_unlock(&ovc->throttle_lock);
	pthread_mutex_unlock(&ovc->vm_lock);
}

void ovc_set_ledger(struct ovc *ovc, struct mem_ledger *ledger)
{
	ovc->ledger = ledger;
}

void ovc_set_hard_limit(struct ovc *ovc, uint64_t limit_bytes)
{
	pthread_mutex_lock(&ovc->lock);
	ovc->hard_limit = limit_bytes;
	pthread_mutex_unlock(&ovc->lock);
}

/*
 * One pass: measure, entitle, reclaim the excess over budget. `interval`:
 * a pass of the regular interval, which also samples access information
 * (ages count intervals); an early one only answers the usage.
 */
static void policy_pass(struct ovc *ovc, bool interval)
{
	struct ovc_vm **order = ovc->order;
	const char *source;
	uint64_t used, budget, need;
	unsigned int n;

	pthread_mutex_lock(&ovc->vm_lock);
	n = ovc->nr_vms;
	used = host_used(ovc, &source);
	if (interval)
		damon_update(ovc);
	for (unsigned int i = 0; i < n; i++) {
		refresh_resident(ovc, ovc->vms[i]);
		/*
		 * Hundreds of system calls per GiB: not under the lock the stats
		 * readers take. Per-chunk samples only where something ranks the
		 * chunks (each one costs the guest TLB flushes), with DAMON too:
		 * it adds the reads they cannot see, they the writes it misses.
		 */
		ovc->vms[i]->written = interval ? mem_access_sample(ovc->vms[i]->access,
								    !ovc->ranking)
						: -1.0;
	}
	if (interval)
		damon_judge(ovc);
	pthread_mutex_lock(&ovc->lock);
	budget = ovc->stats.budget_bytes;
	for (unsigned int i = 0; i < n; i++) {
		struct ovc_vm *v = ovc->vms[i];

		pagestate_counts(v->gm->ps, v->stats.pages);
		sample_active(v, v->written);
		order[i] = v;
	}
	compute_entitlements(ovc, budget);
	for (unsigned int i = 0; i < n; i++)
		log_debug("%s: resident %" PRIu64 " MiB, entitled %" PRIu64 " MiB, active %.2f",
			  ovc->vms[i]->name, ovc->vms[i]->stats.resident_bytes >> 20,
			  ovc->vms[i]->stats.entitlement_bytes >> 20,
			  ovc->vms[i]->stats.active_fraction);
	ovc->stats.used_bytes = used;
	ovc->stats.used_source = source;
	ovc->stats.over_budget = used > budget;
	ovc->stats.passes++;
	/* The sort's keys, fixed for the pass (a stats reader refreshes resident meanwhile). */
	for (unsigned int i = 0; i < n; i++)
		ovc->vms[i]->excess = (int64_t)ovc->vms[i]->stats.resident_bytes -
				      (int64_t)ovc->vms[i]->stats.entitlement_bytes;
	pthread_mutex_unlock(&ovc->lock);
	pthread_mutex_lock(&ovc->throttle_lock);
	for (unsigned int i = 0; i < n; i++)
		ovc->vms[i]->above = ovc->vms[i]->excess > 0;
	pthread_mutex_unlock(&ovc->throttle_lock);

	/*
	 * Over budget, reclaim down to a low watermark 2% below it, so one pass
	 * is not followed by a trickle of tiny ones as usage creeps back
	 * (thresholds with a gap, as ESX's high/low states).
	 */
	need = used > budget ? used - (budget - budget / 50) : 0;
	/* What earlier passes asked for and is still being freed is not asked for again. */
	for (unsigned int m = 0; m < ovc->nr_mech && need; m++) {
		if (!ovc->mech[m].pending)
			continue;
		for (unsigned int i = 0; i < n && need; i++) {
			uint64_t p = ovc->mech[m].pending(ovc->mech[m].arg, ovc->vms[i]);

			need = p >= need ? 0 : need - p;
		}
	}
	/* A host waiting for VMs to arrive has none (and no array to sort). */
	if (n)
		qsort(order, n, sizeof(order[0]), by_excess);
	for (unsigned int m = 0; m < ovc->nr_mech && need; m++) {
		for (unsigned int i = 0; i < n && need; i++) {
			struct ovc_vm *v = order[i];
			char prev[sizeof(v->stats.last_action)];
			int64_t got;

			/*
			 * The decision is in the stats before the mechanism moves a
			 * page: a sample taken while it works shows its effects only
			 * next to the action that causes them.
			 */
			pthread_mutex_lock(&ovc->lock);
			memcpy(prev, v->stats.last_action, sizeof(prev));
			snprintf(v->stats.last_action, sizeof(v->stats.last_action),
				 "%s reclaiming (used %" PRIu64 " MiB > budget %" PRIu64 " MiB)",
				 ovc->mech[m].name, used >> 20, budget >> 20);
			pthread_mutex_unlock(&ovc->lock);
			got = ovc->mech[m].reclaim(ovc->mech[m].arg, v, need, v->min_bytes);
			pthread_mutex_lock(&ovc->lock);
			if (got <= 0) {
				memcpy(v->stats.last_action, prev, sizeof(prev));
				pthread_mutex_unlock(&ovc->lock);
				continue;
			}
			need = (uint64_t)got >= need ? 0 : need - (uint64_t)got;
			v->stats.reclaimed_bytes[m] += (uint64_t)got;
			ovc->stats.reclaimed_bytes[m] += (uint64_t)got;
			snprintf(v->stats.last_action, sizeof(v->stats.last_action),
				 "%s reclaimed %" PRIu64 " KiB (used %" PRIu64 " MiB > budget %" PRIu64
				 " MiB)", ovc->mech[m].name, (uint64_t)got / 1024, used >> 20,
				 budget >> 20);
			pthread_mutex_unlock(&ovc->lock);
			log_debug("%s: %s", v->name, v->stats.last_action);
		}
	}
	/*
	 * Well under budget again: mechanisms that hold memory back from guests
	 * (the balloon) return it, the most deprived VMs first. The hysteresis
	 * keeps a pass that just reclaimed from undoing itself at once.
	 */
	if (used + budget / 20 < budget) {
		uint64_t headroom = budget - budget / 20 - used;

		for (unsigned int i = 0; i < n / 2; i++) {
			struct ovc_vm *t = order[i];

			order[i] = order[n - 1 - i];
			order[n - 1 - i] = t;
		}
		for (unsigned int m = ovc->nr_mech; m-- > 0 && headroom;) {
			if (!ovc->mech[m].relax)
				continue;
			for (unsigned int i = 0; i < n && headroom; i++) {
				int64_t got = ovc->mech[m].relax(ovc->mech[m].arg, order[i], headroom);

				if (got > 0)
					headroom = (uint64_t)got >= headroom ? 0 : headroom - (uint64_t)got;
			}
		}
	}
	pthread_mutex_unlock(&ovc->vm_lock);
}

/*
 * Between passes, where the host's usage is one cheap read (a memory cgroup
 * of kvmem's alone), a thread of its own reads it this often, has a pass
 * run as soon as it is over the budget (at most every FAST_GAP_NS), and
 * holds the hard limit: a guest allocating at hundreds of MiB/s must not
 * wait for the interval, nor for a pass that takes a while.
 */
#define WATCH_NS 50000000ULL
#define FAST_GAP_NS 200000000ULL

/* The host's usage from its memory cgroup (0 where that is not kvmem's alone). */
static uint64_t watch_used(struct ovc *ovc)
{
	bool ok = false;
	uint64_t used;

	if (!cgroup_is_ours(ovc->cgroup_usage))
		return 0;
	used = read_u64_file(ovc->cgroup_usage, &ok);
	return ok ? used : 0;
}

/* Wait on ovc->cond (ovc->lock held) until CLOCK_MONOTONIC reaches ns, a kick or a stop. */
static void wait_until_ns(struct ovc *ovc, uint64_t ns, bool *flag)
{
	struct timespec dl = { .tv_sec = (time_t)(ns / 1000000000ULL),
			       .tv_nsec = (long)(ns % 1000000000ULL) };

	while (!(flag && *flag) && !ovc->stopping)
		if (pthread_cond_timedwait(&ovc->cond, &ovc->lock, &dl) == ETIMEDOUT)
			break;
}

static void *watch_thread(void *arg)
{
	struct ovc *ovc = arg;
	uint64_t last = 0;

	sandbox_enter(SANDBOX_POLICY_WATCH);
	pthread_mutex_lock(&ovc->lock);
	while (!ovc->stopping) {
		uint64_t now, used, budget = ovc->stats.budget_bytes, limit = ovc->hard_limit;

		pthread_mutex_unlock(&ovc->lock);
		used = watch_used(ovc);
		pthread_mutex_lock(&ovc->throttle_lock);
		throttle(ovc, used, budget, limit);
		pthread_mutex_unlock(&ovc->throttle_lock);
		pthread_mutex_lock(&ovc->lock);
		now = kv_clock_ns(CLOCK_MONOTONIC);
		if (used > budget && now - last >= FAST_GAP_NS) {
			ovc->kicked = true;
			pthread_cond_broadcast(&ovc->cond);
			last = now;
		}
		wait_until_ns(ovc, now + WATCH_NS, NULL);
	}
	pthread_mutex_unlock(&ovc->lock);
	return NULL;
}

static void *policy_thread(void *arg)
{
	struct ovc *ovc = arg;
	uint64_t interval_ns = (uint64_t)(ovc->interval_s * 1e9);
	uint64_t next = kv_clock_ns(CLOCK_MONOTONIC) + interval_ns;

	sandbox_enter(SANDBOX_POLICY);
	pthread_mutex_lock(&ovc->lock);
	while (!ovc->stopping) {
		uint64_t now;
		bool interval;

		wait_until_ns(ovc, next, &ovc->kicked);
		if (ovc->stopping)
			break;
		now = kv_clock_ns(CLOCK_MONOTONIC);
		interval = now >= next;
		ovc->kicked = false;
		pthread_mutex_unlock(&ovc->lock);
		policy_pass(ovc, interval);
		pthread_mutex_lock(&ovc->lock);
		/*
		 * A pass longer than the interval (hundreds of VMs) is followed by
		 * a pause all the same: back to back, the policy would hold the VM
		 * list's lock against every VM being added or removed.
		 */
		if (interval) {
			uint64_t end = kv_clock_ns(CLOCK_MONOTONIC);

			next = now + interval_ns > end + interval_ns / 4 ? now + interval_ns
									   : end + interval_ns / 4;
		}
	}
	pthread_mutex_unlock(&ovc->lock);
	return NULL;
}

int ovc_create(uint64_t budget_bytes, double interval_s, struct ovc **out)
{
	struct ovc *ovc = kv_zalloc(sizeof(*ovc));

	if (!ovc)
		return -ENOMEM;
	pthread_mutex_init(&ovc->vm_lock, NULL);
	pthread_mutex_init(&ovc->throttle_lock, NULL);
	pthread_mutex_init(&ovc->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&ovc->cond, &ca);
	pthread_condattr_destroy(&ca);
	ovc->stats.budget_bytes = budget_bytes;
	ovc->stats.used_source = "smaps_rollup";
	ovc->stats.access_source = "sampling";
	ovc->interval_s = interval_s > 0.01 ? interval_s : 1.0;
	find_cgroup(ovc);
	*out = ovc;
	return 0;
}

void ovc_destroy(struct ovc *ovc)
{
	if (!ovc)
		return;
	pthread_mutex_lock(&ovc->lock);
	ovc->stopping = true;
	pthread_cond_broadcast(&ovc->cond);
	pthread_mutex_unlock(&ovc->lock);
	if (ovc->started)
		pthread_join(ovc->thread, NULL);
	if (ovc->watching)
		pthread_join(ovc->watch, NULL);
	mem_damon_close(ovc->damon);
	pthread_mutex_destroy(&ovc->throttle_lock);
	pthread_mutex_destroy(&ovc->vm_lock);
	pthread_mutex_destroy(&ovc->lock);
	pthread_cond_destroy(&ovc->cond);
	kv_free(ovc->vms);
	kv_free(ovc->order);
	kv_free(ovc);
}

int ovc_start(struct ovc *ovc)
{
	int ret = thread_spawn(&ovc->thread, "policy", policy_thread, ovc);

	if (ret)
		return ret;
	ovc->started = true;
	if (ovc->cgroup_usage[0]) {
		ret = thread_spawn(&ovc->watch, "policy-watch", watch_thread, ovc);
		ovc->watching = !ret;
	}
	return ret;
}

int ovc_add_vm(struct ovc *ovc, struct gm *gm, const char *name, uint64_t mem_bytes,
	       uint64_t min_bytes, uint32_t shares, struct ovc_vm **out)
{
	struct ovc_vm *v;

	v = kv_zalloc(sizeof(*v));
	if (!v)
		return -ENOMEM;
	v->gm = gm;
	snprintf(v->name, sizeof(v->name), "%s", name);
	v->mem_bytes = mem_bytes;
	v->min_bytes = min_bytes;
	v->shares = shares ? shares : 1;
	v->stats.mem_bytes = mem_bytes;
	v->stats.min_bytes = min_bytes;
	v->stats.shares = v->shares;
	if (mem_access_create(gm, &v->access)) {
		kv_free(v);
		return -ENOMEM;
	}
	snprintf(v->stats.last_action, sizeof(v->stats.last_action), "none");
	pthread_mutex_lock(&ovc->vm_lock);
	if (ovc->nr_vms == ovc->cap_vms) {
		unsigned int cap = ovc->cap_vms ? 2 * ovc->cap_vms : 16;
		struct ovc_vm **vms, **order;

		/* The watch thread reads the list under throttle_lock alone. */
		pthread_mutex_lock(&ovc->throttle_lock);
		vms = kv_realloc(ovc->vms, cap * sizeof(*vms));
		if (vms)
			ovc->vms = vms;
		order = vms ? kv_realloc(ovc->order, cap * sizeof(*order)) : NULL;
		pthread_mutex_unlock(&ovc->throttle_lock);
		if (!order) {
			pthread_mutex_unlock(&ovc->vm_lock);
			mem_access_destroy(v->access);
			kv_free(v);
			return -ENOMEM;
		}
		ovc->order = order;
		ovc->cap_vms = cap;
	}
	if (ovc->damon) {
		int err = mem_damon_add(ovc->damon, gm);

		if (err) {
			log_warn("DAMON: monitoring %s: %s: write-protect sampling from now on", name,
				 strerror(-err));
			damon_drop(ovc);
		}
	}
	pthread_mutex_lock(&ovc->throttle_lock);
	ovc->vms[ovc->nr_vms++] = v;
	pthread_mutex_unlock(&ovc->throttle_lock);
	pthread_mutex_lock(&ovc->lock);
	ovc->stats.configured_bytes += mem_bytes;
	pthread_mutex_unlock(&ovc->lock);
	pthread_mutex_unlock(&ovc->vm_lock);
	*out = v;
	return 0;
}

void ovc_remove_vm(struct ovc *ovc, struct ovc_vm *vm)
{
	pthread_mutex_lock(&ovc->vm_lock);
	for (unsigned int i = 0; i < ovc->nr_vms; i++) {
		if (ovc->vms[i] != vm)
			continue;
		pthread_mutex_lock(&ovc->throttle_lock);
		ovc->vms[i] = ovc->vms[--ovc->nr_vms];
		pthread_mutex_unlock(&ovc->throttle_lock);
		if (ovc->damon)
			mem_damon_remove(ovc->damon, vm->gm);
		pthread_mutex_lock(&ovc->lock);
		ovc->stats.configured_bytes -= vm->mem_bytes;
		pthread_mutex_unlock(&ovc->lock);
		break;
	}
	pthread_mutex_unlock(&ovc->vm_lock);
	mem_access_destroy(vm->access);
	kv_free(vm);
}

struct gm *ovc_vm_gm(struct ovc_vm *vm)
{
	return vm->gm;
}

int ovc_register_mechanism(struct ovc *ovc, const struct ovc_mechanism *m)
{
	unsigned int i;

	if (ovc->started)
		return -EBUSY;
	if (ovc->nr_mech == OVC_MAX_MECHANISMS)
		return -ENOSPC;
	for (i = ovc->nr_mech; i > 0 && ovc->mech[i - 1].cost > m->cost; i--)
		ovc->mech[i] = ovc->mech[i - 1];
	ovc->mech[i] = *m;
	ovc->nr_mech++;
	ovc->ranking |= m->ranks_chunks;
	ovc->stats.nr_mechanisms = ovc->nr_mech;
	for (unsigned int j = 0; j < ovc->nr_mech; j++)
		ovc->stats.mechanism_names[j] = ovc->mech[j].name;
	return 0;
}

void ovc_kick(struct ovc *ovc)
{
	pthread_mutex_lock(&ovc->lock);
	ovc->kicked = true;
	pthread_cond_broadcast(&ovc->cond);
	pthread_mutex_unlock(&ovc->lock);
}

void ovc_set_budget(struct ovc *ovc, uint64_t budget_bytes)
{
	pthread_mutex_lock(&ovc->lock);
	ovc->stats.budget_bytes = budget_bytes;
	pthread_cond_broadcast(&ovc->cond);
	pthread_mutex_unlock(&ovc->lock);
}

void ovc_get_stats(struct ovc *ovc, struct ovc_stats *out)
{
	pthread_mutex_lock(&ovc->lock);
	*out = ovc->stats;
	pthread_mutex_unlock(&ovc->lock);
}

int ovc_get_vm_stats(struct ovc *ovc, struct ovc_vm *vm, struct ovc_vm_stats *out)
{
	uint64_t pages[PS_NR];

	if (!vm)
		return -ENOENT;
	/*
	 * The page states first: a mechanism's action is in the stats before
	 * it moves a page, so states read here come with their action below.
	 */
	pagestate_counts(vm->gm->ps, pages);
	pthread_mutex_lock(&ovc->lock);
	*out = vm->stats;
	pthread_mutex_unlock(&ovc->lock);
	memcpy(out->pages, pages, sizeof(pages));
	/*
	 * Residency changes between passes: refresh it when the pass's figure
	 * is older than RESIDENT_MAX_AGE_NS (a pagemap walk costs ~10 ms per
	 * GiB, too much for every request of a client polling fast).
	 */
	if (kv_clock_ns(CLOCK_MONOTONIC) - __atomic_load_n(&vm->resident_ns, __ATOMIC_RELAXED) > RESIDENT_MAX_AGE_NS)
		refresh_resident(ovc, vm);
	pthread_mutex_lock(&ovc->lock);
	out->resident_bytes = vm->stats.resident_bytes;
	pthread_mutex_unlock(&ovc->lock);
	return 0;
}
