/* SPDX-License-Identifier: MIT */
/*
 * Guest-memory access API: bounds-checked copies over the fixed region
 * table. A range is resolved one region at a time, so an access that
 * crosses from low RAM into the MMIO hole fails as a whole before any byte
 * is copied.
 */
#include "mem/gm.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/pagestate.h"

const struct mem_ram_region *mem_find_region(const struct gm *gm, gpa_t gpa)
{
	for (unsigned int i = 0; i < gm->nr_regions; i++) {
		const struct mem_ram_region *r = &gm->regions[i];

		if (gpa >= r->gpa && gpa - r->gpa < r->len)
			return r;
	}
	return NULL;
}

/* 0 when every byte of [gpa, gpa+len) is RAM; -EOVERFLOW on wrap, -EFAULT otherwise. */
static int check_range(const struct gm *gm, gpa_t gpa, uint64_t len)
{
	if (len && gpa + len < gpa)
		return -EOVERFLOW;
	do {
		const struct mem_ram_region *r = mem_find_region(gm, gpa);
		uint64_t avail;

		if (!r)
			return -EFAULT;
		avail = r->len - (gpa - r->gpa);
		if (avail >= len)
			return 0;
		gpa += avail;
		len -= avail;
	} while (len);
	return 0;
}

/*
 * Mark the pages of [gpa, gpa+len) (checked already) as written by the VMM,
 * after the write: a collector that sees the mark reads the new content.
 */
static void mark_dirty(struct gm *gm, gpa_t gpa, uint64_t len)
{
	/* Page indexes run on across regions, so a range's pages lie between its ends'. */
	if (!len || !__atomic_load_n(&gm->vmm_dirty_on, __ATOMIC_ACQUIRE))
		return;
	for (uint64_t i = (uint64_t)mem_page_index(gm, gpa);
	     i <= (uint64_t)mem_page_index(gm, gpa + len - 1); i++)
		__atomic_fetch_or(&gm->vmm_dirty[i / 64], 1ULL << (i % 64), __ATOMIC_RELEASE);
}

uint64_t mem_bitmap_words(const struct gm *gm)
{
	return (mem_ram_bytes(gm) / MEM_PAGE_SIZE + 63) / 64;
}

void mem_dirty_vmm_track(struct gm *gm, bool on)
{
	uint64_t words = mem_bitmap_words(gm);

	if (on)
		for (uint64_t w = 0; w < words; w++)
			__atomic_store_n(&gm->vmm_dirty[w], 0, __ATOMIC_RELAXED);
	__atomic_store_n(&gm->vmm_dirty_on, on, __ATOMIC_RELEASE);
}

uint64_t mem_dirty_vmm_collect(struct gm *gm, uint64_t *out)
{
	uint64_t words = mem_bitmap_words(gm), marked = 0;

	for (uint64_t w = 0; w < words; w++) {
		uint64_t v = __atomic_exchange_n(&gm->vmm_dirty[w], 0, __ATOMIC_ACQ_REL);

		out[w] |= v;
		marked += (uint64_t)__builtin_popcountll(v);
	}
	return marked;
}

bool mem_range_ok(const struct gm *gm, gpa_t gpa, uint64_t len)
{
	return check_range(gm, gpa, len) == 0;
}

int mem_slice_get(const struct gm *gm, gpa_t gpa, size_t len, struct mem_slice *out)
{
	const struct mem_ram_region *r = mem_find_region(gm, gpa);
	uint64_t avail;

	if (!r)
		return -EFAULT;
	avail = r->len - (gpa - r->gpa);
	out->hva = r->hva + (gpa - r->gpa);
	out->len = len < avail ? len : avail;
	return 0;
}

/* Run `fn` over each host chunk of a range already known to be valid. */
#define FOR_EACH_CHUNK(gm, gpa, len, hva, n, body)                           \
	do {                                                                 \
		gpa_t g_ = (gpa);                                            \
		size_t left_ = (len);                                        \
		while (left_) {                                              \
			const struct mem_ram_region *r_ = mem_find_region(gm, g_); \
			uint64_t avail_ = r_->len - (g_ - r_->gpa);          \
			size_t n = left_ < avail_ ? left_ : (size_t)avail_;  \
			uint8_t *hva = r_->hva + (g_ - r_->gpa);             \
			body;                                                \
			g_ += n;                                             \
			left_ -= n;                                          \
		}                                                            \
	} while (0)

int mem_read(const struct gm *gm, gpa_t gpa, void *buf, size_t len)
{
	uint8_t *dst = buf;
	int ret = check_range(gm, gpa, len);

	if (ret)
		return ret;
	/* A swapped page is read from its slot, not swapped in for a VMM's look. */
	if (__atomic_load_n(&gm->swap, __ATOMIC_ACQUIRE) ||
	    __atomic_load_n(&gm->image, __ATOMIC_ACQUIRE))
		return mem_read_swapped(gm, gpa, buf, len);
	FOR_EACH_CHUNK(gm, gpa, len, hva, n, {
		mem_hva_copy_out(dst, hva, n);
		dst += n;
	});
	return 0;
}

int mem_write(struct gm *gm, gpa_t gpa, const void *buf, size_t len)
{
	const uint8_t *src = buf;
	int ret = check_range(gm, gpa, len);

	if (ret)
		return ret;
	FOR_EACH_CHUNK(gm, gpa, len, hva, n, {
		mem_hva_copy_in(hva, src, n);
		src += n;
	});
	mark_dirty(gm, gpa, len);
	return 0;
}

int mem_store_le16_release(struct gm *gm, gpa_t gpa, uint16_t val)
{
	const struct mem_ram_region *r = mem_find_region(gm, gpa);

	/* One aligned store, or the guest could see half of it. */
	if (!r || gpa % sizeof(val) || r->len - (gpa - r->gpa) < sizeof(val))
		return -EFAULT;
	__atomic_store_n((uint16_t *)(r->hva + (gpa - r->gpa)), val, __ATOMIC_RELEASE);
	mark_dirty(gm, gpa, sizeof(val));
	return 0;
}

int mem_zero_fill(struct gm *gm, gpa_t gpa, size_t len)
{
	int ret = check_range(gm, gpa, len);

	if (ret)
		return ret;
	FOR_EACH_CHUNK(gm, gpa, len, hva, n, mem_hva_fill(hva, 0, n));
	mark_dirty(gm, gpa, len);
	return 0;
}

int mem_copy_from_fd(struct gm *gm, gpa_t gpa, int fd, uint64_t off, size_t len)
{
	int ret = check_range(gm, gpa, len);

	if (ret)
		return ret;
	FOR_EACH_CHUNK(gm, gpa, len, hva, n, {
		size_t done = 0;

		while (done < n) {
			ssize_t got;

			mem_hva_racy_begin();
			got = pread(fd, hva + done, n - done, (off_t)off);
			mem_hva_racy_end();

			if (got < 0 && errno == EINTR)
				continue;
			if (got <= 0) {
				/* 0: the file is shorter than its headers claim. */
				ret = got < 0 ? -errno : -EIO;
				goto out;
			}
			done += (size_t)got;
			off += (uint64_t)got;
		}
	});
out:
	/* What was copied before a failure was written all the same. */
	mark_dirty(gm, gpa, len);
	return ret;
}

/* x86 is little-endian: the helpers exist so callers state the wire format. */
#define MEM_LE_ACCESSORS(bits)                                                  \
	int mem_read_le##bits(const struct gm *gm, gpa_t gpa, uint##bits##_t *val) \
	{                                                                      \
		return mem_read(gm, gpa, val, sizeof(*val));                    \
	}                                                                      \
	int mem_write_le##bits(struct gm *gm, gpa_t gpa, uint##bits##_t val)    \
	{                                                                      \
		return mem_write(gm, gpa, &val, sizeof(val));                   \
	}
MEM_LE_ACCESSORS(16)
MEM_LE_ACCESSORS(32)
MEM_LE_ACCESSORS(64)

unsigned int mem_nr_regions(const struct gm *gm)
{
	return gm->nr_regions;
}

void mem_region(const struct gm *gm, unsigned int i, gpa_t *gpa, uint64_t *len)
{
	*gpa = gm->regions[i].gpa;
	*len = gm->regions[i].len;
}

uint64_t mem_ram_bytes(const struct gm *gm)
{
	return gm->ram_bytes;
}

void mem_page_describe(const struct gm *gm, gpa_t gpa, char *buf, size_t len)
{
	int64_t idx = mem_page_index(gm, gpa);
	uint64_t pm = 0, slot;
	enum ps_state st;
	uint8_t wp;
	int n;

	if (idx < 0) {
		snprintf(buf, len, "gpa 0x%" PRIx64 " is outside RAM", gpa);
		return;
	}
	st = pagestate_get(gm->ps, (uint64_t)idx);
	slot = __atomic_load_n(&gm->swap_slot[idx], __ATOMIC_RELAXED);
	wp = __atomic_load_n(&gm->wp_reason[idx], __ATOMIC_RELAXED);
	n = snprintf(buf, len, "page %" PRId64 " is %s%s, chunk %s, write protection 0x%02x",
		     idx, pagestate_name(st),
		     mem_frame_mapped(gm, (uint64_t)idx) ? " on a sharing frame" : "",
		     gm->chunk_mode[(uint64_t)idx / MEM_CHUNK_PAGES] & MEM_CHUNK_MISSING ?
			     "taking MISSING faults" : "write-protect only",
		     wp);
	if (n < 0 || (size_t)n >= len)
		return;
	if (st == PS_SWAPPED)
		n += snprintf(buf + n, len - (size_t)n, ", slot 0x%" PRIx64, slot);
	if ((size_t)n < len && mem_pagemap(gm, (uint64_t)idx, 1, &pm) == 1)
		snprintf(buf + n, len - (size_t)n, ", pagemap 0x%016" PRIx64 " (%s)", pm,
			 mem_pm_is_swapped(pm)	   ? "in the kernel's swap"
			 : mem_pm_is_zero_page(pm) ? "the zero page"
			 : mem_pm_resident(pm)	   ? "resident"
						   : "no page: a hole or a write-protect marker");
}
