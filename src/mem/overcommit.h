/* SPDX-License-Identifier: MIT */
/*
 * Host memory budget and reclaim policy (the reclaim/policy thread).
 *
 * Every interval the policy measures the host's real usage (the kernel's
 * view: the memory cgroup's usage when kvmem runs alone in one, else the
 * process's PSS from /proc/self/smaps_rollup), each VM's resident and active
 * memory, and computes each VM's entitlement from min, mem and shares with
 * an idle-memory tax (Waldspurger, "Memory Resource Management in VMware ESX
 * Server", OSDI 2002): idle pages cost a VM more shares than active ones, so
 * idle memory is reclaimed first. When usage exceeds the budget it asks the
 * reclaim mechanisms, cheapest first, for the difference, from the VMs that
 * hold the most above their entitlement; a VM is never reclaimed below min.
 *
 * Mechanisms (zero pages here; sharing, balloon, swap in their modules)
 * register with ovc_register_mechanism.
 */
#ifndef KVMEM_MEM_OVERCOMMIT_H
#define KVMEM_MEM_OVERCOMMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "mem/damon.h"
#include "mem/gm.h"
#include "mem/pagestate.h"

struct ovc;
struct mem_ledger;
struct ovc_vm;

#define OVC_MAX_MECHANISMS 8
#define OVC_IDLE_TAX 0.75 /* ESX default tax rate on idle memory */
/*
 * An inflation the guest has not finished this long after the policy asked
 * for it no longer counts as reclaimed (the mechanisms after the balloon
 * take the rest). Guests here inflate 1 GiB in 0.15 s.
 */
#define OVC_BALLOON_DEADLINE_S 10U
/* ... nor one whose balloon has not grown for this long (it has nothing left to give). */
#define OVC_BALLOON_STALL_S 2U

struct ovc_mechanism {
	const char *name;	/* "zero", "share", "balloon", "swap" */
	int cost;		/* lower runs first */
	/*
	 * Try to free about `bytes` of host memory from vm without going below
	 * `floor_bytes` of its resident memory; returns bytes freed (>= 0) or
	 * -errno. Called on the policy thread.
	 */
	int64_t (*reclaim)(void *arg, struct ovc_vm *vm, uint64_t bytes, uint64_t floor_bytes);
	/*
	 * Optional: pressure is gone; give back up to `bytes` of what this
	 * mechanism holds from vm (balloon deflate). Returns bytes given back.
	 */
	int64_t (*relax)(void *arg, struct ovc_vm *vm, uint64_t bytes);
	/*
	 * Optional, for mechanisms that work after reclaim returns (the
	 * balloon's guest, the swap-out worker): bytes asked of vm in earlier
	 * passes and still being freed. A pass takes them off what it needs
	 * before it asks anyone, so work under way is neither asked for again
	 * nor counted twice; reclaim then returns only what it newly asked for.
	 */
	uint64_t (*pending)(void *arg, struct ovc_vm *vm);
	void *arg;
	/*
	 * Takes each VM's coldest chunks first (swap): the policy keeps the
	 * per-chunk ranking (mem/access.h) only while such a mechanism is
	 * registered; without one, sampling measures the active fraction alone.
	 */
	bool ranks_chunks;
};

/*
 * A VM's balloon as the policy drives it: the policy chooses targets, the
 * balloon device executes them (balloon/ never chooses one). Sizes are guest
 * memory (RAM minus the balloon), as QEMU's "actual".
 */
struct ovc_balloon_state {
	uint64_t target_bytes;	  /* what the guest was asked to keep */
	uint64_t actual_bytes;	  /* what it keeps now, per its driver */
	uint64_t available_bytes; /* guest-reported available memory, if known */
	bool available_valid;
	bool ready;		  /* a driver is up (features negotiated) */
};

struct ovc_balloon_ops {
	int (*get)(void *arg, struct ovc_balloon_state *out);
	int (*set_target)(void *arg, uint64_t target_bytes);
};

struct ovc_vm_stats {
	uint64_t mem_bytes;
	uint64_t min_bytes;
	uint32_t shares;
	uint64_t resident_bytes;	/* its own pages and its parts of shared ones (mem/account.h) */
	uint64_t entitlement_bytes;
	double active_fraction;		/* sampled share of pages written per interval */
	uint64_t pages[PS_NR];		/* page-state counts */
	uint64_t reclaimed_bytes[OVC_MAX_MECHANISMS]; /* per mechanism, cumulative */
	char last_action[96];		/* last policy decision about this VM */
	bool has_balloon;
	uint64_t balloon_target_bytes;	/* the policy's target, or the manual one */
	char balloon_reason[96];	/* why the target is what it is */
	bool throttled;			/* paused by the policy to hold the hard limit */
	uint64_t throttles;		/* times it was */
};

struct ovc_stats {
	uint64_t budget_bytes;
	uint64_t used_bytes;		/* the kernel's view, see above */
	const char *used_source;	/* "cgroup" or "smaps_rollup" */
	const char *access_source;	/* where chunk ages come from: "damon" or "sampling" */
	bool damon_on;			/* DAMON is the source: its figures, as of the last pass */
	struct mem_damon_stats damon;
	uint64_t configured_bytes;	/* sum of the VMs' mem */
	uint64_t passes;
	unsigned int nr_mechanisms;
	const char *mechanism_names[OVC_MAX_MECHANISMS];
	uint64_t reclaimed_bytes[OVC_MAX_MECHANISMS];
	bool over_budget;
};

/* What the entitlement arithmetic needs of a VM, and what it gives it. */
struct ovc_claim {
	uint64_t mem_bytes;
	uint64_t min_bytes;
	uint32_t shares;
	double active_fraction;		/* 0..1 */
	uint64_t entitlement_bytes;	/* out */
	bool capped;			/* out: got all of its mem */
};

/*
 * Entitlements, ESX style: every VM first gets its min; the rest of the
 * budget is divided in proportion to shares adjusted by the idle-memory tax,
 * w = S / (f + k (1 - f)) with k = 1 / (1 - OVC_IDLE_TAX), so a VM whose
 * memory is idle earns less for it; a VM never gets more than its mem, and
 * what it cannot use flows to the others (water filling). Pure arithmetic:
 * the policy calls it once per pass.
 */
void ovc_entitle(struct ovc_claim *vms, unsigned int n, uint64_t budget);

int ovc_create(uint64_t budget_bytes, double interval_s, struct ovc **out);
/* Stops the thread if running; every VM must have been removed. */
void ovc_destroy(struct ovc *ovc);
int ovc_start(struct ovc *ovc);

/* Add a VM (its gm must live until ovc_remove_vm returns). */
int ovc_add_vm(struct ovc *ovc, struct gm *gm, const char *name, uint64_t mem_bytes,
	       uint64_t min_bytes, uint32_t shares, struct ovc_vm **out);
void ovc_remove_vm(struct ovc *ovc, struct ovc_vm *vm);
struct gm *ovc_vm_gm(struct ovc_vm *vm);

/* Give the policy this VM's balloon (ops and arg must outlive ovc_remove_vm). */
void ovc_vm_set_balloon(struct ovc *ovc, struct ovc_vm *vm, const struct ovc_balloon_ops *ops,
			void *arg);
/*
 * A target set by hand (control socket): the policy leaves this VM's balloon
 * alone until ovc_vm_balloon_auto. Clamped to [min, mem]; -ENODEV without a
 * balloon. Returns the target applied in *applied.
 */
int ovc_vm_balloon_manual(struct ovc *ovc, struct ovc_vm *vm, uint64_t target_bytes,
			  uint64_t *applied);
void ovc_vm_balloon_auto(struct ovc *ovc, struct ovc_vm *vm);
/*
 * How the policy pauses a VM to hold the host's hard limit (ops and arg
 * must outlive ovc_remove_vm): pause returns 0 when it paused the VM (not
 * when it was paused already or is stopping); resume undoes that.
 */
struct ovc_throttle_ops {
	int (*pause)(void *arg);
	int (*resume)(void *arg);
};
void ovc_vm_set_throttle(struct ovc *ovc, struct ovc_vm *vm, const struct ovc_throttle_ops *ops,
			 void *arg);
/*
 * The host's hard limit (mem/memcg.h): usage half way from the budget to it
 * pauses the VMs above their entitlement until reclaim brings it back a
 * quarter of the way (read by a watch thread every 50 ms, which needs the
 * usage of a memory cgroup of kvmem's alone). 0: never.
 */
void ovc_set_hard_limit(struct ovc *ovc, uint64_t limit_bytes);

/*
 * Measure each VM's resident memory with the host's ledger (mem/account.h:
 * a shared frame split among its VMs) rather than by its own mapped pages;
 * set before start.
 */
void ovc_set_ledger(struct ovc *ovc, struct mem_ledger *ledger);

/* Register the balloon as a reclaim mechanism (cost 2: after zero pages and sharing). */
int ovc_register_balloon(struct ovc *ovc);

/*
 * Take chunk ages from DAMON (mem/damon.h) instead of write-protect
 * sampling, for the VMs there are and those added later; the policy owns d
 * from now on, and gives it up (back to sampling, said in the log) if it
 * fails or turns out blind. 0, or -errno (-EBUSY: set already; d is the
 * caller's again).
 */
int ovc_use_damon(struct ovc *ovc, struct mem_damon *d);

/* Register before ovc_start. -ENOSPC when full. */
int ovc_register_mechanism(struct ovc *ovc, const struct ovc_mechanism *m);

/* Run one policy pass now (tests, the control socket's "reclaim" verb). */
void ovc_kick(struct ovc *ovc);
void ovc_set_budget(struct ovc *ovc, uint64_t budget_bytes);

void ovc_get_stats(struct ovc *ovc, struct ovc_stats *out);
int ovc_get_vm_stats(struct ovc *ovc, struct ovc_vm *vm, struct ovc_vm_stats *out);

#endif
