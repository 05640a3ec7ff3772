/* SPDX-License-Identifier: MIT */
#include "mem/pagestate.h"

#include <errno.h>

#include "core/alloc.h"

struct pagestate {
	uint64_t nr;		/* immutable */
	uint64_t counts[PS_NR];	/* atomic */
	uint8_t state[];	/* atomic, one per page */
};

int pagestate_create(uint64_t nr_pages, struct pagestate **out)
{
	struct pagestate *ps = kv_zalloc(sizeof(*ps) + nr_pages);

	if (!ps)
		return -ENOMEM;
	ps->nr = nr_pages;
	ps->counts[PS_ANON] = nr_pages;
	*out = ps;
	return 0;
}

void pagestate_destroy(struct pagestate *ps)
{
	kv_free(ps);
}

uint64_t pagestate_nr_pages(const struct pagestate *ps)
{
	return ps->nr;
}

enum ps_state pagestate_get(const struct pagestate *ps, uint64_t idx)
{
	return (enum ps_state)__atomic_load_n(&ps->state[idx], __ATOMIC_ACQUIRE);
}

static void account(struct pagestate *ps, enum ps_state from, enum ps_state to)
{
	__atomic_fetch_sub(&ps->counts[from], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&ps->counts[to], 1, __ATOMIC_RELAXED);
}

int pagestate_cas(struct pagestate *ps, uint64_t idx, enum ps_state from, enum ps_state to)
{
	uint8_t expected = (uint8_t)from;

	if (!__atomic_compare_exchange_n(&ps->state[idx], &expected, (uint8_t)to, false,
					 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return -EBUSY;
	if (from != to)
		account(ps, from, to);
	return 0;
}

enum ps_state pagestate_set(struct pagestate *ps, uint64_t idx, enum ps_state to)
{
	enum ps_state old = (enum ps_state)__atomic_exchange_n(&ps->state[idx], (uint8_t)to,
							       __ATOMIC_ACQ_REL);

	if (old != to)
		account(ps, old, to);
	return old;
}

void pagestate_counts(const struct pagestate *ps, uint64_t counts[PS_NR])
{
	for (int i = 0; i < PS_NR; i++)
		counts[i] = __atomic_load_n(&ps->counts[i], __ATOMIC_RELAXED);
}

const char *pagestate_name(enum ps_state s)
{
	static const char *const names[PS_NR] = {
		[PS_ANON] = "anon",		[PS_ZERO] = "zero",	      [PS_SHARED] = "shared",
		[PS_BALLOONED] = "ballooned", [PS_REPORTED] = "reported",
		[PS_SWAPPED] = "swapped",     [PS_BUSY] = "busy",
	};

	return s < PS_NR ? names[s] : "invalid";
}

bool pagestate_is_dropped(enum ps_state s)
{
	return s == PS_ZERO || s == PS_BALLOONED || s == PS_REPORTED ||
	       s == PS_SWAPPED;
}
