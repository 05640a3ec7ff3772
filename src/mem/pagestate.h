/* SPDX-License-Identifier: MIT */
/*
 * The page-state map: one state byte per guest RAM page of a VM, the single
 * source of truth for "what backs this gfn" (docs/ARCHITECTURE.md, "Guest
 * memory").
 * The array is sized at VM creation and never moves, so readers on any
 * thread use plain atomic loads (no RCU needed); every change is a
 * compare-and-swap from an expected state, so two reclaim mechanisms racing
 * for one page cannot both win (the loser gets -EBUSY). Per-state counts are
 * kept with every transition.
 *
 * PS_ANON does not say whether the page is resident: first touches are
 * handled by the kernel without telling kvmem (a userfaultfd MISSING fault on
 * every first touch costs 60 us instead of 4.4 us here), so residency comes
 * from /proc/self/pagemap (mem_resident).
 */
#ifndef KVMEM_MEM_PAGESTATE_H
#define KVMEM_MEM_PAGESTATE_H

#include <stdbool.h>
#include <stdint.h>

enum ps_state {
	PS_ANON = 0,	  /* the VM's own anonymous page: resident or never touched */
	PS_ZERO,	  /* held only zeros: dropped, served as a zero page */
	PS_SHARED,	  /* mapped onto a frame of the dedup store */
	PS_BALLOONED,	  /* given to the balloon: dropped */
	PS_REPORTED,	  /* reported free by the guest: dropped */
	PS_SWAPPED,	  /* in the host swap file: dropped */
	PS_BUSY,	  /* a mechanism owns it for a moment (write-protected) */
	PS_NR,
};

struct pagestate;

int pagestate_create(uint64_t nr_pages, struct pagestate **out);
void pagestate_destroy(struct pagestate *ps);

uint64_t pagestate_nr_pages(const struct pagestate *ps);
enum ps_state pagestate_get(const struct pagestate *ps, uint64_t idx);
/* Move idx from `from` to `to`: 0, or -EBUSY when it is not in `from` now. */
int pagestate_cas(struct pagestate *ps, uint64_t idx, enum ps_state from, enum ps_state to);
/* Unconditional move (owner of a PS_BUSY page finishing its work); returns the old state. */
enum ps_state pagestate_set(struct pagestate *ps, uint64_t idx, enum ps_state to);
/* Pages in each state now (a racy but consistent-enough snapshot for stats). */
void pagestate_counts(const struct pagestate *ps, uint64_t counts[PS_NR]);
const char *pagestate_name(enum ps_state s);
/* True for states with no host memory behind them. */
bool pagestate_is_dropped(enum ps_state s);

#endif
