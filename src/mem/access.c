/* SPDX-License-Identifier: MIT */
/* Access information per chunk of guest RAM (see access.h). */
#include "mem/access.h"

#include <errno.h>
#include <stdlib.h>

#include "core/alloc.h"
#include "core/rand.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/pagestate.h"
#include "mem/txn.h"

/* With ages from elsewhere, only the active fraction is estimated: ESX's 100 random pages. */
#define ACTIVE_SAMPLES 100

struct mem_access {
	struct gm *gm;		/* borrowed */
	uint64_t *samples;	/* page indexes protected last interval */
	uint64_t nr_samples, cap;
	uint8_t *written;	/* per chunk, this judgement's scratch */
	uint64_t rng;
};

uint64_t mem_access_chunks(const struct gm *gm)
{
	return (mem_nr_pages(gm) + MEM_CHUNK_PAGES - 1) / MEM_CHUNK_PAGES;
}

uint16_t mem_access_age(const struct gm *gm, uint64_t chunk)
{
	return __atomic_load_n(&gm->chunk_age[chunk], __ATOMIC_RELAXED);
}

void mem_access_seen(struct gm *gm, uint64_t chunk, unsigned int uses, uint16_t idle)
{
	uint16_t age = __atomic_load_n(&gm->chunk_age[chunk], __ATOMIC_RELAXED);
	uint8_t h = __atomic_load_n(&gm->chunk_hits[chunk], __ATOMIC_RELAXED), want;

	if (uses)
		idle = 0;
	/* A younger age that a touch stored meanwhile stays. */
	while (idle < age && !__atomic_compare_exchange_n(&gm->chunk_age[chunk], &age, idle, false,
							  __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
	do {
		want = (uint8_t)(h + uses < UINT8_MAX ? h + uses : UINT8_MAX);
	} while (want != h && !__atomic_compare_exchange_n(&gm->chunk_hits[chunk], &h, want, false,
							   __ATOMIC_RELAXED, __ATOMIC_RELAXED));
}

/*
 * An interval's judgement of a chunk's use: half of what it had, and `add`
 * (touches meanwhile stay).
 */
static void decay_hits(struct gm *gm, uint64_t chunk, unsigned int add)
{
	uint8_t old = __atomic_load_n(&gm->chunk_hits[chunk], __ATOMIC_RELAXED), want;

	do {
		unsigned int v = old / 2 + add;

		want = (uint8_t)(v < UINT8_MAX ? v : UINT8_MAX);
	} while (!__atomic_compare_exchange_n(&gm->chunk_hits[chunk], &old, want, false,
					      __ATOMIC_RELAXED, __ATOMIC_RELAXED));
}

/* One interval older, unless a touch made it young meanwhile (that store wins). */
static void age_one(struct gm *gm, uint64_t chunk)
{
	uint16_t old = __atomic_load_n(&gm->chunk_age[chunk], __ATOMIC_RELAXED);

	while (old < MEM_ACCESS_AGE_MAX &&
	       !__atomic_compare_exchange_n(&gm->chunk_age[chunk], &old, (uint16_t)(old + 1), false,
					    __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

int mem_access_create(struct gm *gm, struct mem_access **out)
{
	struct mem_access *a = kv_zalloc(sizeof(*a));
	uint64_t chunks = mem_access_chunks(gm);

	if (!a)
		return -ENOMEM;
	a->gm = gm;
	a->cap = chunks * MEM_ACCESS_SAMPLES;
	if (a->cap < ACTIVE_SAMPLES)
		a->cap = ACTIVE_SAMPLES;
	a->samples = kv_calloc(a->cap, sizeof(*a->samples));
	a->written = kv_calloc(chunks, 1);
	if (!a->samples || !a->written) {
		mem_access_destroy(a);
		return -ENOMEM;
	}
	a->rng = (uint64_t)(uintptr_t)gm ^ 0x6a09e667f3bcc908ULL;
	*out = a;
	return 0;
}

void mem_access_destroy(struct mem_access *a)
{
	if (!a)
		return;
	for (uint64_t i = 0; i < a->nr_samples; i++)
		mem_sample_release(a->gm, a->samples[i]);
	kv_free(a->samples);
	kv_free(a->written);
	kv_free(a);
}

/* Protect page idx (pagemap entry pm) for sampling if it is a resident page of the VM's own. */
static bool try_sample_pm(struct mem_access *a, uint64_t idx, uint64_t pm)
{
	struct gm *gm = a->gm;

	/* Picked twice this interval: judged once (a second protect would forget a hit). */
	if (__atomic_load_n(&gm->wp_reason[idx], __ATOMIC_ACQUIRE) & MEM_WP_SAMPLE)
		return false;
	if (pagestate_get(gm->ps, idx) != PS_ANON || !mem_pm_resident(pm) || mem_pm_file(pm) ||
	    mem_sample_protect(gm, idx))
		return false;
	a->samples[a->nr_samples++] = idx;
	return true;
}

static bool try_sample(struct mem_access *a, uint64_t idx)
{
	uint64_t pm;

	if (pagestate_get(a->gm->ps, idx) != PS_ANON || mem_pagemap(a->gm, idx, 1, &pm) != 1)
		return false;
	return try_sample_pm(a, idx, pm);
}

/*
 * One sample from a random window of the VM's pages, read with one
 * pagemap call: a sparsely resident VM would otherwise spend a system
 * call on every page it does not have. One pick per window keeps the
 * samples spread.
 */
#define SAMPLE_WINDOW 16

static bool try_sample_window(struct mem_access *a, uint64_t nr)
{
	uint64_t pm[SAMPLE_WINDOW], start = kv_rand(&a->rng) % nr, off;
	uint64_t len = nr - start < SAMPLE_WINDOW ? nr - start : SAMPLE_WINDOW;
	int64_t got = mem_pagemap(a->gm, start, len, pm);

	if (got <= 0)
		return false;
	off = kv_rand(&a->rng) % (uint64_t)got;
	for (int64_t i = 0; i < got; i++, off = (off + 1) % (uint64_t)got)
		if (try_sample_pm(a, start + off, pm[off]))
			return true;
	return false;
}

double mem_access_sample(struct mem_access *a, bool age_only)
{
	struct gm *gm = a->gm;
	uint64_t nr = mem_nr_pages(gm), chunks = mem_access_chunks(gm), hits = 0;
	uint64_t judged = a->nr_samples;

	for (uint64_t c = 0; c < chunks; c++)
		a->written[c] = 0;
	for (uint64_t i = 0; i < a->nr_samples; i++) {
		if (mem_sample_release(gm, a->samples[i])) {
			hits++;
			a->written[a->samples[i] / MEM_CHUNK_PAGES]++;
		}
	}
	a->nr_samples = 0;
	if (age_only) {
		for (unsigned int tries = 0; tries < 2 * ACTIVE_SAMPLES &&
					     a->nr_samples < ACTIVE_SAMPLES; tries++)
			try_sample_window(a, nr);
		return judged ? (double)hits / (double)judged : -1.0;
	}
	for (uint64_t c = 0; c < chunks; c++) {
		uint64_t first = c * MEM_CHUNK_PAGES;
		uint64_t len = nr - first < MEM_CHUNK_PAGES ? nr - first : MEM_CHUNK_PAGES;
		unsigned int got = 0, want;

		if (a->written[c])
			__atomic_store_n(&gm->chunk_age[c], 0, __ATOMIC_RELAXED);
		else
			age_one(gm, c);
		/* A written sample counts as much as a few touches: it is one page of a few. */
		decay_hits(gm, c, 4u * a->written[c]);
		want = __atomic_load_n(&gm->chunk_hits[c], __ATOMIC_RELAXED) >= MEM_ACCESS_HOT_HITS
			       ? 1
			       : MEM_ACCESS_SAMPLES;
		for (unsigned int tries = 0; tries < 2 * want && got < want; tries++)
			got += try_sample(a, first + kv_rand(&a->rng) % len);
	}
	return judged ? (double)hits / (double)judged : -1.0;
}

struct ranked {
	uint16_t age;
	uint8_t hits;
	uint32_t chunk;
	uint64_t tie;	/* random: between equals, no order is better informed than chance */
};

static int colder_first(const void *x, const void *y)
{
	const struct ranked *a = x, *b = y;

	/*
	 * Used least often lately first, then the longest unused: recency
	 * alone ranks a chunk whose page was read once (a swap-in) with the
	 * hottest, and with 2 MiB chunks every chunk of a working set with
	 * rare cold touches is recent.
	 */
	if (a->hits != b->hits)
		return a->hits < b->hits ? -1 : 1;
	if (a->age != b->age)
		return a->age > b->age ? -1 : 1;
	return a->tie < b->tie ? -1 : a->tie > b->tie;
}

uint64_t mem_access_rank(const struct gm *gm, uint64_t seed, uint32_t *out, uint64_t max)
{
	uint64_t chunks = mem_access_chunks(gm), n = 0, rng = seed ^ 0x3c6ef372fe94f82bULL;
	struct ranked *r;

	if (!chunks || !max)
		return 0;
	r = kv_calloc(chunks, sizeof(*r));
	if (!r)
		return 0;
	for (uint64_t c = 0; c < chunks; c++)
		r[c] = (struct ranked){ .age = mem_access_age(gm, c),
					.hits = __atomic_load_n(&gm->chunk_hits[c], __ATOMIC_RELAXED),
					.chunk = (uint32_t)c, .tie = kv_rand(&rng) };
	qsort(r, chunks, sizeof(*r), colder_first);
	for (; n < chunks && n < max; n++)
		out[n] = r[n].chunk;
	kv_free(r);
	return n;
}
