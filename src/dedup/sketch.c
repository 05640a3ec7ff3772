/* SPDX-License-Identifier: MIT */
/*
 * Content fingerprints (dedup.h): the k smallest distinct hashes of a VM's
 * page contents, a bottom-k sketch. Two sketches estimate how many contents
 * two VMs have in common (the pages sharing would save if they met on one
 * host) without moving anything: of the k smallest hashes of both sets
 * together, the share found in both estimates their Jaccard similarity, and
 * the k-th smallest the size of the union. The hash is keyed by a key the
 * hosts of a cluster share, not by a host's scanner seed, so sketches taken
 * on different hosts compare; without the key a hash says nothing of the
 * content behind it.
 */
#define LOG_TAG "dedup"
#include "dedup/dedup_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/pagestate.h"

#define SKETCH_BATCH 512

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

int dedup_sketch_vm(struct gm *gm, const void *key, size_t key_len, uint64_t salt, unsigned int k,
		    struct dedup_sketch *out)
{
	uint64_t nr = mem_nr_pages(gm), n = 0, pm[SKETCH_BATCH];
	struct pagestate *ps = mem_pagestate(gm);
	struct dedup_hasher hs;
	uint64_t *all;

	memset(out, 0, sizeof(*out));
	if (!k || k > DEDUP_SKETCH_MAX)
		return -EINVAL;
	all = kv_calloc(nr ? nr : 1, sizeof(*all));
	if (!all)
		return -ENOMEM;
	dedup_hasher_init_key(&hs, key, key_len);
	for (unsigned int r = 0; r < mem_nr_regions(gm); r++) {
		uint64_t len, idx, end;
		gpa_t gpa;

		mem_region(gm, r, &gpa, &len);
		idx = (uint64_t)mem_page_index(gm, gpa);
		end = idx + len / MEM_PAGE_SIZE;
		while (idx < end) {
			uint64_t cnt = end - idx < SKETCH_BATCH ? end - idx : SKETCH_BATCH;
			int64_t got = mem_pagemap(gm, idx, cnt, pm);

			if (got <= 0) {
				kv_free(all);
				return got < 0 ? (int)got : -EIO;
			}
			for (int64_t i = 0; i < got; i++) {
				enum ps_state st = pagestate_get(ps, idx + (uint64_t)i);
				uint64_t h;

				/*
				 * What is in memory only: a page on a frame (its content
				 * is the frame's; a hole of the store's mapping, as a
				 * window merge leaves every page, reads it without
				 * costing anything), or the VM's own page that the
				 * pagemap shows in memory. Reading anything else would
				 * bring it in (a swap-in, a fault on a hole); so would a
				 * page a mechanism holds (PS_BUSY: a swap-out may drop it
				 * under the read), which is left out. A page dropped
				 * after the pagemap read faults in as zeros, which the
				 * zero check leaves out.
				 */
				bool in = st == PS_SHARED || (st == PS_ANON && mem_pm_resident(pm[i]));

				if (!in || mem_page_hash(gm, idx + (uint64_t)i, hs.fn, hs.secret, &h) ||
				    h == hs.zero_hash)
					continue;
				all[n++] = h ^ salt;
			}
			idx += (uint64_t)got;
		}
	}
	qsort(all, n, sizeof(*all), cmp_u64);
	out->pages = n;
	/* Every content counted; the k smallest kept, moved to the front. */
	for (uint64_t i = 0; i < n; i++) {
		if (i && all[i] == all[i - 1])
			continue;
		if (out->n < k)
			all[out->n++] = all[i];
		out->distinct++;
	}
	out->k = k;
	out->hashes = kv_realloc(all, (out->n ? out->n : 1) * sizeof(*all)) ?: all;
	return 0;
}

void dedup_sketch_free(struct dedup_sketch *s)
{
	kv_free(s->hashes);
	memset(s, 0, sizeof(*s));
}
