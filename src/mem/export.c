/* SPDX-License-Identifier: MIT */
/* Reading a VM's pages out (mem/export.h). */
#include "mem/export.h"

#include <errno.h>
#include <string.h>

#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/pagecontent.h"
#include "mem/pagemap.h"
#include "mem/pagestate.h"

static bool all_zero(const uint8_t *p)
{
	static const uint8_t zero[MEM_PAGE_SIZE];

	return !memcmp(p, zero, MEM_PAGE_SIZE);
}

int mem_export_pages(struct gm *gm, uint64_t idx, uint32_t n, const uint64_t *mask,
		     struct mem_export_page *out, uint8_t *data)
{
	uint64_t pm[MEM_EXPORT_MAX];
	uint8_t before[MEM_EXPORT_MAX];

	if (!n || n > MEM_EXPORT_MAX || idx >= mem_nr_pages(gm) || n > mem_nr_pages(gm) - idx)
		return -EINVAL;
	/*
	 * Each page's state before its pagemap entry is read, and again after:
	 * a hole is a zero page only if the page was its own throughout. A
	 * page swapped in between (a guest read, no write to track) would
	 * otherwise pair a stale hole with a fresh state and travel as zeros.
	 */
	for (uint32_t i = 0; i < n; i++)
		before[i] = (uint8_t)pagestate_get(gm->ps, idx + i);
	/* One pagemap read per run that is contiguous in the host (regions split runs). */
	for (uint32_t done = 0; done < n;) {
		uint32_t len = n - done;
		int64_t got;

		while (len > 1 && !mem_run_ok(gm, idx + done, len))
			len /= 2;
		got = mem_pagemap(gm, idx + done, len, pm + done);
		if (got <= 0)
			return got < 0 ? (int)got : -EIO;
		done += (uint32_t)got;
	}
	for (uint32_t i = 0; i < n; i++) {
		enum ps_state st = pagestate_get(gm->ps, idx + i);
		uint8_t *page = data + (uint64_t)i * MEM_PAGE_SIZE;
		int ret;

		out[i].kind = 0;
		if (mask && !(mask[i / 64] >> (i % 64) & 1))
			continue;
		/*
		 * A dropped page's state says what it was given up as, not what
		 * the guest did since: one written again has a page of its own
		 * (the kernel filled the hole; the state catches up later), and
		 * its content is what travels.
		 */
		bool empty = mem_pm_is_hole(pm[i]) || mem_pm_is_zero_page(pm[i]);
		bool steady = before[i] == st;

		switch (st) {
		case PS_BALLOONED:
			if (steady && empty) {
				out[i].kind = MEM_EXPORT_BALLOONED;
				continue;
			}
			break;
		case PS_ZERO:
		case PS_REPORTED:
		case PS_ANON:
			/* Dropped, never touched, or dropped by the kernel: zeros (a read would fault one in). */
			if (steady && empty) {
				out[i].kind = MEM_EXPORT_ZERO;
				continue;
			}
			break;
		default:
			break; /* shared, swapped, or held by a mechanism for a moment: read it */
		}
		ret = mem_read(gm, mem_index_gpa(gm, idx + i), page, MEM_PAGE_SIZE);
		if (ret)
			return ret;
		if (all_zero(page)) {
			out[i].kind = MEM_EXPORT_ZERO;
		} else if (st == PS_SHARED && mem_pm_file(pm[i])) {
			/* Shared: the caller names it by its content (what was read is what counts). */
			out[i].kind = MEM_EXPORT_FRAME;
		} else {
			out[i].kind = MEM_EXPORT_DATA;
		}
	}
	return 0;
}
