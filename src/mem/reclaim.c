/* SPDX-License-Identifier: MIT */
/*
 * Reclaim that needs no decision beyond the page itself (see reclaim.h):
 * pages the guest gave up, and pages that hold only zeros. Both take their
 * pages through the page-range transaction (mem/txn.h), as every mechanism
 * does.
 */
#define LOG_TAG "reclaim"
#include "mem/reclaim.h"

#include <errno.h>
#include <time.h>

#include "core/log.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/overcommit.h"
#include "mem/txn.h"

bool mem_page_in_store_mapping(const struct gm *gm, uint64_t idx)
{
	return idx < mem_nr_pages(gm) && mem_frame_mapped(gm, idx);
}

/*
 * How long mem_discard waits for pages another mechanism holds: a
 * transaction holds its pages for microseconds, a window's for a few
 * milliseconds; a page still held after this is left out (and said).
 */
#define DISCARD_WAIT_NS 2000000000ULL
#define DISCARD_POLL_NS 50000L

static int check_aligned_range(const struct gm *gm, gpa_t gpa, uint64_t len)
{
	if (gpa % MEM_PAGE_SIZE || len % MEM_PAGE_SIZE || len == 0)
		return -EINVAL;
	if (!mem_range_ok(gm, gpa, len))
		return -EFAULT;
	return 0;
}

/*
 * The pages from gpa on, of the len bytes there, that one transaction can
 * take: within one region, at most MEM_TXN_MAX. Their first index in *first.
 */
static uint64_t gpa_run(const struct gm *gm, gpa_t gpa, uint64_t len, uint64_t *first)
{
	uint64_t n = 1;

	*first = (uint64_t)mem_page_index(gm, gpa);
	while (n < len / MEM_PAGE_SIZE && n < MEM_TXN_MAX &&
	       mem_index_gpa(gm, *first + n) == gpa + n * MEM_PAGE_SIZE)
		n++;
	return n;
}

/* Every state but PS_BUSY: the guest gave these pages up, whatever backs them. */
#define DISCARD_FROM ((1u << PS_NR) - 1 - MEM_FROM(PS_BUSY))

int64_t mem_discard(struct gm *gm, gpa_t gpa, uint64_t len, enum ps_state why)
{
	static __thread struct mem_txn t;
	enum mem_commit c = why == PS_BALLOONED ? MEM_BALLOONED : MEM_REPORTED;
	uint64_t waited = 0;
	int64_t dropped = 0;
	int ret = check_aligned_range(gm, gpa, len);

	if (ret)
		return ret;
	if (why != PS_BALLOONED && why != PS_REPORTED)
		return -EINVAL;
	while (len) {
		uint64_t first, n = gpa_run(gm, gpa, len, &first);
		int64_t got = mem_txn_claim(&t, gm, first, n, DISCARD_FROM, MEM_TXN_NOPROTECT);

		if (got < 0)
			return got;
		if (got == 0) {
			/*
			 * Another mechanism holds the first page: it commits or keeps it
			 * in a moment, and then it is ours to drop. A page counted as
			 * ballooned must be dropped, never skipped.
			 */
			struct timespec ts = { 0, DISCARD_POLL_NS };

			if (waited >= DISCARD_WAIT_NS) {
				log_warn_ratelimited("page %llu held for over %llu ms: not discarded",
						     (unsigned long long)first,
						     DISCARD_WAIT_NS / 1000000ULL);
				return -EBUSY;
			}
			nanosleep(&ts, NULL);
			waited += DISCARD_POLL_NS;
			continue;
		}
		for (int64_t i = 0; i < got; i++)
			mem_txn_set(&t, (uint32_t)i, c, 0);
		/* A drop that fails keeps every page as it was: say so, count nothing. */
		if (mem_txn_end(&t, -1) != got)
			return -EIO;
		for (int64_t i = 0; i < got; i++)
			if (!pagestate_is_dropped((enum ps_state)t.old[i]))
				dropped++;
		gpa += (uint64_t)got * MEM_PAGE_SIZE;
		len -= (uint64_t)got * MEM_PAGE_SIZE;
	}
	return dropped;
}

int mem_undiscard(struct gm *gm, gpa_t gpa, uint64_t len)
{
	static __thread struct mem_txn t;
	int ret = check_aligned_range(gm, gpa, len);

	if (ret)
		return ret;
	while (len) {
		uint64_t first, n = gpa_run(gm, gpa, len, &first);
		int64_t got;

		/* Only ballooned and reported pages: any other state is someone's (or the guest's). */
		got = mem_txn_claim(&t, gm, first, n, MEM_FROM(PS_BALLOONED) | MEM_FROM(PS_REPORTED),
				    MEM_TXN_NOPROTECT);
		if (got < 0)
			return (int)got;
		if (got == 0)
			got = 1; /* not in the balloon: left as it is */
		for (int64_t i = 0; i < (int64_t)t.n; i++)
			mem_txn_set(&t, (uint32_t)i, MEM_PRIVATE, 0);
		mem_txn_end(&t, -1);
		gpa += (uint64_t)got * MEM_PAGE_SIZE;
		len -= (uint64_t)got * MEM_PAGE_SIZE;
	}
	return 0;
}

int64_t mem_reclaim_zero(struct gm *gm, uint64_t first, uint64_t count, uint64_t max_pages)
{
	static __thread struct mem_txn t;
	uint64_t end = first + count, nr = mem_nr_pages(gm), pm[512];
	int64_t dropped = 0;

	if (end > nr || end < first)
		end = nr;
	for (uint64_t base = first; base < end && (uint64_t)dropped < max_pages;) {
		uint64_t n = end - base < 512 ? end - base : 512;
		int64_t got;

		/* Stay within one region: pagemap reads follow host addresses. */
		if (!mem_run_ok(gm, base, n))
			n = 1;
		got = mem_pagemap(gm, base, n, pm);
		if (got <= 0)
			return dropped ? dropped : got;
		for (int64_t i = 0; i < got && (uint64_t)dropped < max_pages;) {
			uint64_t run = 0, left = max_pages - (uint64_t)dropped;
			int64_t claimed;

			/*
			 * The run of candidates from i on: resident private pages of the
			 * VM's own memory that read as zeros now. Only resident pages are
			 * read (reading a hole would fault it in).
			 */
			while (i + (int64_t)run < got && run < left) {
				uint64_t idx = base + (uint64_t)i + run;

				if (!mem_pm_resident(pm[i + (int64_t)run]) ||
				    mem_pm_file(pm[i + (int64_t)run]) ||
				    pagestate_get(gm->ps, idx) != PS_ANON || mem_frame_mapped(gm, idx) ||
				    !mem_hva_is_zero(mem_page_hva(gm, idx)))
					break;
				run++;
			}
			if (!run) {
				i++;
				continue;
			}
			claimed = mem_txn_claim(&t, gm, base + (uint64_t)i, run, MEM_FROM(PS_ANON), 0);
			if (claimed <= 0) {
				i += claimed < 0 ? (int64_t)run : 1;
				continue;
			}
			/*
			 * Protected now, so the compare is final. A page mapped onto a
			 * frame since the look is dedup's work, not a zero page here.
			 */
			for (uint32_t k = 0; k < (uint32_t)claimed; k++)
				if (!mem_frame_mapped(gm, t.idx + k) && mem_pm_resident(t.pm[k]) &&
				    !mem_pm_file(t.pm[k]) && mem_hva_is_zero(mem_page_hva(gm, t.idx + k)))
					mem_txn_set(&t, k, MEM_ZERO, 0);
			dropped += mem_txn_end(&t, -1);
			i += claimed;
		}
		base += (uint64_t)got;
	}
	return dropped;
}

static int64_t zero_reclaim(void *arg, struct ovc_vm *vm, uint64_t bytes, uint64_t floor_bytes)
{
	struct gm *gm = ovc_vm_gm(vm);

	/* Zero pages carry no data: reclaiming them ignores the floor. */
	(void)arg;
	(void)floor_bytes;
	int64_t n = mem_reclaim_zero(gm, 0, mem_nr_pages(gm),
				     (bytes + MEM_PAGE_SIZE - 1) / MEM_PAGE_SIZE);
	return n < 0 ? n : n * (int64_t)MEM_PAGE_SIZE;
}

int reclaim_register_zero(struct ovc *ovc)
{
	static const struct ovc_mechanism zero = {
		.name = "zero",
		.cost = 0,
		.reclaim = zero_reclaim,
	};

	return ovc_register_mechanism(ovc, &zero);
}
