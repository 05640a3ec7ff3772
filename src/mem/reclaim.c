/* SPDX-License-Identifier: MIT */
/*
 * Page-level reclaim primitives (see reclaim.h). Runs on the policy,
 * balloon-worker and dedup threads; the page-state CAS decides which of them
 * owns a page, PS_BUSY marks the owner's window.
 *
 * Dropping a page: MADV_DONTNEED on an anonymous VMA leaves a hole the
 * kernel fills with zeros on the next access. On a VMA that maps a store frame
 * (MAP_PRIVATE of the dedup memfd), MADV_DONTNEED would re-expose the frame,
 * so such pages get fresh anonymous memory mapped over them, registered with
 * userfaultfd again (a new mapping is not registered by the kernel).
 */
#define LOG_TAG "reclaim"
#include "mem/reclaim.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "core/log.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/overcommit.h"

/* [idx, idx + n) lies in one region (host addresses contiguous). */
static bool window_ok(const struct gm *gm, uint64_t idx, uint64_t n)
{
	return n && idx + n <= memmap_nr_pages(gm) && idx + n > idx &&
	       gm_page_hva(gm, idx + n - 1) - gm_page_hva(gm, idx) ==
		       (ptrdiff_t)((n - 1) * GM_PAGE_SIZE);
}

int mem_range_protect(struct gm *gm, uint64_t idx, uint64_t n, bool on)
{
	if (!window_ok(gm, idx, n))
		return -EINVAL;
	return gm_uffd_protect(gm, gm_page_hva(gm, idx), n * GM_PAGE_SIZE, on);
}

void mem_range_wake(struct gm *gm, uint64_t idx, uint64_t n)
{
	if (window_ok(gm, idx, n))
		gm_uffd_wake(gm, gm_page_hva(gm, idx), n * GM_PAGE_SIZE);
}

int mem_range_track(struct gm *gm, uint64_t idx, uint64_t n)
{
	if (!window_ok(gm, idx, n))
		return -EINVAL;
	if (gm->uffd < 0)
		return -ENOSYS;
	return gm_uffd_register(gm, gm_page_hva(gm, idx), n * GM_PAGE_SIZE);
}

int mem_page_protect(struct gm *gm, uint64_t idx)
{
	return mem_range_protect(gm, idx, 1, true);
}

int mem_page_unprotect(struct gm *gm, uint64_t idx)
{
	return mem_range_protect(gm, idx, 1, false);
}

void mem_page_wake(struct gm *gm, uint64_t idx)
{
	mem_range_wake(gm, idx, 1);
}

int mem_page_track(struct gm *gm, uint64_t idx)
{
	return mem_range_track(gm, idx, 1);
}

bool mem_page_in_store_mapping(const struct gm *gm, uint64_t idx)
{
	return idx < memmap_nr_pages(gm) && gm_frame_mapped(gm, idx);
}

/* Register [hva, hva + len) with gm's userfaultfd in the given UFFDIO_REGISTER_MODE_*. */
static int uffd_register_mode(struct gm *gm, void *hva, uint64_t len, uint64_t mode)
{
	struct uffdio_register reg = {
		.range = { (uint64_t)(uintptr_t)hva, len },
		.mode = mode,
	};

	return ioctl(gm->uffd, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
}

/*
 * How a window's mapping of the store is registered. Where memmap cannot
 * recognise the kernel's zero page, the window's zero pages are holes of the
 * store (fill_run), and MISSING faults keep a touch of one from making a page
 * in the store: the uffd service gives the VM a page of zeros of its own
 * instead (mem/uffd.h).
 */
static uint64_t store_mode(void)
{
	return UFFDIO_REGISTER_MODE_WP |
	       (memmap_zero_page_known() ? 0 : UFFDIO_REGISTER_MODE_MISSING);
}

int mem_range_hold(struct gm *gm, uint64_t idx, uint64_t n)
{
	if (!window_ok(gm, idx, n))
		return -EINVAL;
	if (gm->uffd < 0)
		return -ENOSYS;
	return uffd_register_mode(gm, gm_page_hva(gm, idx), n * GM_PAGE_SIZE,
				  UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
}

int mem_range_unhold(struct gm *gm, uint64_t idx, uint64_t n)
{
	int ret = 0;

	if (!window_ok(gm, idx, n))
		return -EINVAL;
	if (gm->uffd < 0)
		return -ENOSYS;
	/* Run by run of anonymous memory and of mappings of the store. */
	for (uint64_t i = 0, j; i < n; i = j) {
		bool store = gm_frame_mapped(gm, idx + i);
		uint8_t *hva = gm_page_hva(gm, idx + i);
		struct uffdio_range r;
		int err;

		for (j = i + 1; j < n && gm_frame_mapped(gm, idx + j) == store; j++)
			;
		r = (struct uffdio_range){ (uint64_t)(uintptr_t)hva, (j - i) * GM_PAGE_SIZE };
		if (store && (store_mode() & UFFDIO_REGISTER_MODE_MISSING)) {
			/* Registered so anyway (mem_window_map): released, and woken by that. */
			err = gm_uffd_protect(gm, hva, r.len, false);
		} else if (ioctl(gm->uffd, UFFDIO_UNREGISTER, &r) < 0) {
			err = -errno;
		} else {
			/*
			 * A registration never loses a mode by registering again with
			 * fewer: dropping it also released write protection and woke
			 * every waiter (they retry against an unregistered run, which
			 * holds nothing); then it is registered as all RAM is.
			 */
			err = gm_uffd_register(gm, hva, r.len);
		}
		if (err && !ret)
			ret = err;
	}
	return ret;
}

/* Fresh anonymous memory over [idx, idx+n), back under userfaultfd. */
static int remap_anon(struct gm *gm, uint64_t idx, uint64_t n)
{
	void *hva = gm_page_hva(gm, idx);
	void *p = mmap(hva, n * GM_PAGE_SIZE, gm->prot,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);

	if (p == MAP_FAILED)
		return -errno;
	madvise(hva, n * GM_PAGE_SIZE, MADV_NOHUGEPAGE);
	for (uint64_t i = 0; i < n; i++)
		gm_set_frame_mapped(gm, idx + i, false);
	return gm->uffd >= 0 ? gm_uffd_register(gm, hva, n * GM_PAGE_SIZE) : 0;
}

/*
 * Map the kernel's zero page into the holes of [hva, hva + len), registered
 * with gm's userfaultfd (write-protect mode is enough): one ioctl for the
 * run, waking no one (the caller wakes once the page states are right). A
 * page populated meanwhile (EEXIST: the guest touched a dropped page) keeps
 * what it has. 0 or -errno.
 */
static int map_zero_pages(const struct gm *gm, uint8_t *hva, uint64_t len)
{
	for (uint64_t off = 0; off < len;) {
		struct uffdio_zeropage z = {
			.range = { (uint64_t)(uintptr_t)(hva + off), len - off },
			.mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE,
		};

		if (ioctl(gm->uffd, UFFDIO_ZEROPAGE, &z) == 0)
			return 0;
		if (errno == EAGAIN && z.zeropage > 0)
			off += (uint64_t)z.zeropage; /* stopped part way: the kernel says how far */
		else if (errno == EEXIST)
			off += GM_PAGE_SIZE; /* the page at off, populated since it was dropped */
		else
			return -errno;
	}
	return 0;
}

/*
 * Pages [idx, idx + n) were just dropped and must read as zeros. Where a read
 * of a hole allocates a page (memmap_zero_page_on_read false: pvm_no_zero_page)
 * but UFFDIO_ZEROPAGE maps the kernel's zero page (memmap_zero_page_known),
 * map it now, so that a later guest read costs nothing and a write copies on
 * write, as a read of a dropped page does on any other kernel. Without it, a
 * guest that reads its zero pages again gets them all back as pages of its
 * own, and reclaim drops them again, forever. Best effort: a page it misses
 * still reads zeros.
 */
static void map_zero_dropped(struct gm *gm, uint64_t idx, uint64_t n)
{
	int ret;

	if (gm->uffd < 0 || memmap_zero_page_on_read() || !memmap_zero_page_known())
		return;
	ret = map_zero_pages(gm, gm_page_hva(gm, idx), n * GM_PAGE_SIZE);
	if (ret)
		log_warn_ratelimited("mapping the zero page into %llu dropped pages: %s",
				     (unsigned long long)n, strerror(-ret));
}

/* Drop [idx, idx+n) whatever maps it; n pages lie in one region. */
static int drop_run(struct gm *gm, uint64_t idx, uint64_t n)
{
	bool any_frame = false;

	for (uint64_t i = 0; i < n && !any_frame; i++)
		any_frame = gm_frame_mapped(gm, idx + i);
	if (any_frame)
		return remap_anon(gm, idx, n);
	if (madvise(gm_page_hva(gm, idx), n * GM_PAGE_SIZE, MADV_DONTNEED) < 0)
		return -errno;
	return 0;
}

int mem_page_drop_zero(struct gm *gm, uint64_t idx)
{
	int ret = drop_run(gm, idx, 1);

	if (!ret)
		map_zero_dropped(gm, idx, 1);
	return ret;
}

int mem_page_map_frame(struct gm *gm, uint64_t idx, int fd, uint64_t off)
{
	void *hva = gm_page_hva(gm, idx);
	void *p = mmap(hva, GM_PAGE_SIZE, gm->prot, MAP_PRIVATE | MAP_FIXED, fd,
		       (off_t)off);

	if (p == MAP_FAILED)
		return -errno;
	gm_set_frame_mapped(gm, idx, true);
	return 0;
}

/* The source of MEM_WIN_ZEROED pages. */
static const uint8_t zeros[GM_PAGE_SIZE] __attribute__((aligned(GM_PAGE_SIZE)));

/*
 * Fill pages [i, i + n) of the scratch mapping s (uffd-registered), all of
 * one kind, from the old window: one ioctl per run rather than per page.
 */
static int fill_run(const struct gm *gm, uint8_t *s, const uint8_t *old, uint64_t i, uint64_t n,
		    enum mem_win_kind kind)
{
	uint64_t off = i * GM_PAGE_SIZE, end = (i + n) * GM_PAGE_SIZE;

	if (kind == MEM_WIN_FRAME)
		return 0; /* the frame: read from the store on the first access */
	/*
	 * A zero page maps the kernel's zero page (UFFDIO_ZEROPAGE, which does so
	 * also where read faults never do, under pvm_no_zero_page). Where memmap
	 * cannot recognise that page (memmap_zero_page_known), each such entry
	 * would count as a resident page, and residency drives the host's budget
	 * and the page states (memmap_resident); where the kernel forbids the zero
	 * page, UFFDIO_ZEROPAGE allocates a page. So there the zero page is left a
	 * hole of the store (a reserved, never written offset): it costs nothing
	 * until the guest touches it, and then, through a MISSING fault
	 * (store_mode), a page of zeros of the VM's own, what a first touch of
	 * anonymous memory costs on such a kernel, never a page of the store.
	 */
	if (kind == MEM_WIN_ZERO && !memmap_zero_page_known())
		return 0;
	if (kind == MEM_WIN_ZERO)
		return map_zero_pages(gm, s + off, end - off);
	while (off < end) {
		/* A private page of zeros is copied from one page of zeros, a page at a time. */
		uint64_t len = kind == MEM_WIN_ZEROED ? GM_PAGE_SIZE : end - off;
		struct uffdio_copy c = {
			.dst = (uint64_t)(uintptr_t)(s + off),
			.src = (uint64_t)(uintptr_t)(kind == MEM_WIN_KEEP ? old + off : zeros),
			.len = len,
		};

		if (ioctl(gm->uffd, UFFDIO_COPY, &c) == 0) {
			off += len;
			continue;
		}
		/* Interrupted part way (EAGAIN): the kernel says how far it got. */
		if (errno != EAGAIN || c.copy <= 0)
			return -errno;
		off += (uint64_t)c.copy;
	}
	return 0;
}

/*
 * Why this order: the window cannot be remapped in place (MAP_FIXED over it
 * would drop the content of the pages that keep theirs, and a fault between
 * the remap and refilling them would read store holes, which allocate store
 * pages). So the new mapping is prepared elsewhere: a private mapping of the
 * store (the only holes of the store it can read are the reserved offsets of
 * zero pages: every other page is a frame or private before it is visible),
 * registered with the VM's userfaultfd so UFFDIO_COPY (a private anonymous
 * copy) and UFFDIO_ZEROPAGE can fill it, then mremap moves it over the window
 * atomically. mremap drops the moved mapping's userfaultfd registration (the
 * VM's uffd has no UFFD_FEATURE_EVENT_REMAP) and unmaps the old window, with
 * the MISSING registration that held its holes (mem_range_hold): the window
 * is registered again (store_mode).
 */
int mem_window_map(struct gm *gm, uint64_t idx, uint64_t n, int fd, uint64_t off,
		   const uint8_t *kind)
{
	uint8_t *old, *s;
	void *p;
	int ret;

	if (!window_ok(gm, idx, n) || off % GM_PAGE_SIZE)
		return -EINVAL;
	if (gm->uffd < 0)
		return -ENOSYS;
	old = gm_page_hva(gm, idx);
	s = mmap(NULL, n * GM_PAGE_SIZE, gm->prot, MAP_PRIVATE, fd, (off_t)off);
	if (s == MAP_FAILED)
		return -errno;
	madvise(s, n * GM_PAGE_SIZE, MADV_NOHUGEPAGE);
	ret = gm_uffd_register(gm, s, n * GM_PAGE_SIZE);
	for (uint64_t i = 0, j; i < n && !ret; i = j) {
		for (j = i + 1; j < n && kind[j] == kind[i]; j++)
			;
		ret = fill_run(gm, s, old, i, j - i, (enum mem_win_kind)kind[i]);
	}
	if (ret)
		goto out_unmap;
	p = mremap(s, n * GM_PAGE_SIZE, n * GM_PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, old);
	if (p == MAP_FAILED) {
		ret = -errno;
		goto out_unmap;
	}
	for (uint64_t i = 0; i < n; i++)
		gm_set_frame_mapped(gm, idx + i, true);
	/*
	 * Protectable again; a failure only means later merges here must re-track
	 * (and, without MISSING faults, that a touched zero page would read the
	 * store and make a page there).
	 */
	uffd_register_mode(gm, old, n * GM_PAGE_SIZE, store_mode());
	return 0;

out_unmap:
	munmap(s, n * GM_PAGE_SIZE);
	return ret;
}

/* Pages mem_discard claims and drops at a time (their old states live on the stack). */
#define DISCARD_RUN 512

static int check_aligned_range(const struct gm *gm, gpa_t gpa, uint64_t len)
{
	if (gpa % GM_PAGE_SIZE || len % GM_PAGE_SIZE || len == 0)
		return -EINVAL;
	if (!gm_range_ok(gm, gpa, len))
		return -EFAULT;
	return 0;
}

int64_t mem_discard(struct gm *gm, gpa_t gpa, uint64_t len, enum ps_state why)
{
	int64_t dropped = 0;
	int ret = check_aligned_range(gm, gpa, len);

	if (ret)
		return ret;
	if (why != PS_BALLOONED && why != PS_REPORTED)
		return -EINVAL;
	while (len) {
		int64_t first = memmap_page_index(gm, gpa);
		uint8_t was[DISCARD_RUN];
		uint64_t n = 0;

		/*
		 * Claim a run of pages that no other mechanism holds (PS_BUSY keeps
		 * the uffd service, the policy's residency walk and other
		 * mechanisms off them), drop the run, then give each its new state.
		 * A guest access in between gets a zero page: it gave these pages
		 * up.
		 */
		while (len && n < DISCARD_RUN && memmap_index_gpa(gm, (uint64_t)first + n) == gpa) {
			uint64_t idx = (uint64_t)first + n;
			enum ps_state st = pagestate_get(gm->ps, idx);

			if (st == PS_BUSY || pagestate_cas(gm->ps, idx, st, PS_BUSY))
				break;
			was[n] = (uint8_t)st;
			n++;
			gpa += GM_PAGE_SIZE;
			len -= GM_PAGE_SIZE;
		}
		if (n) {
			/* If the drop fails, every page keeps the state it had. */
			ret = drop_run(gm, (uint64_t)first, n);
			for (uint64_t i = 0; i < n; i++) {
				if (!ret && !pagestate_is_dropped((enum ps_state)was[i]))
					dropped++;
				pagestate_set(gm->ps, (uint64_t)first + i,
					      ret ? (enum ps_state)was[i] : why);
			}
			/* One wake for the run: a wake per page cost more than the drop. */
			mem_range_wake(gm, (uint64_t)first, n);
			if (ret)
				return ret;
		} else {
			gpa += GM_PAGE_SIZE; /* busy page: its owner drops or keeps it */
			len -= GM_PAGE_SIZE;
		}
	}
	return dropped;
}

int mem_undiscard(struct gm *gm, gpa_t gpa, uint64_t len)
{
	int ret = check_aligned_range(gm, gpa, len);

	if (ret)
		return ret;
	for (; len; gpa += GM_PAGE_SIZE, len -= GM_PAGE_SIZE) {
		uint64_t idx = (uint64_t)memmap_page_index(gm, gpa);

		if (pagestate_cas(gm->ps, idx, PS_BALLOONED, PS_ANON))
			pagestate_cas(gm->ps, idx, PS_REPORTED, PS_ANON);
	}
	return 0;
}

/*
 * Drop the zero pages of [first, first + n), PS_BUSY and write-protected by
 * the caller, and hand every page back: PS_ZERO if dropped, else PS_ANON and
 * unprotected (a guest write made it non-zero, or the drop failed). Runs of
 * pages that are still zero go in one madvise each (and, where reads do not
 * map the zero page, one UFFDIO_ZEROPAGE: map_zero_dropped). Dropping clears
 * the protection with the page; the zero page is mapped unprotected. Returns
 * pages dropped.
 */
static uint64_t drop_zero_run(struct gm *gm, uint64_t first, uint64_t n)
{
	uint64_t dropped = 0;

	for (uint64_t i = 0; i < n;) {
		bool zero = gm_page_is_zero(gm_page_hva(gm, first + i));
		uint64_t j = i + 1;

		while (j < n && gm_page_is_zero(gm_page_hva(gm, first + j)) == zero)
			j++;
		if (zero && drop_run(gm, first + i, j - i) == 0) {
			map_zero_dropped(gm, first + i, j - i);
			for (uint64_t k = i; k < j; k++)
				pagestate_set(gm->ps, first + k, PS_ZERO);
			dropped += j - i;
		} else {
			mem_range_protect(gm, first + i, j - i, false);
			for (uint64_t k = i; k < j; k++)
				pagestate_set(gm->ps, first + k, PS_ANON);
		}
		i = j;
	}
	return dropped;
}

int64_t mem_reclaim_zero(struct gm *gm, uint64_t first, uint64_t count, uint64_t max_pages)
{
	uint64_t end = first + count, nr = memmap_nr_pages(gm), pm[512];
	int64_t dropped = 0;

	if (end > nr)
		end = nr;
	for (uint64_t base = first; base < end && (uint64_t)dropped < max_pages;) {
		uint64_t n = end - base < 512 ? end - base : 512;
		int64_t got;

		/* Stay within one region: pagemap reads follow host addresses. */
		if (memmap_index_gpa(gm, base + n - 1) - memmap_index_gpa(gm, base) !=
		    (n - 1) * GM_PAGE_SIZE)
			n = 1;
		got = memmap_pagemap(gm, base, n, pm);
		if (got <= 0)
			return dropped ? dropped : got;
		for (int64_t i = 0; i < got && (uint64_t)dropped < max_pages;) {
			uint64_t run = 0, left = max_pages - (uint64_t)dropped;

			/*
			 * Claim the run of zero pages from i on. Only resident anonymous
			 * pages are read (reading a hole would fault it in), and only
			 * PS_ANON ones claimed: any other state belongs to someone else.
			 */
			while (i + (int64_t)run < got && run < left) {
				uint64_t idx = base + (uint64_t)i + run;

				if (!memmap_pm_resident(pm[i + (int64_t)run]) ||
				    memmap_pm_file(pm[i + (int64_t)run]) ||
				    pagestate_get(gm->ps, idx) != PS_ANON || gm_frame_mapped(gm, idx) ||
				    !gm_page_is_zero(gm_page_hva(gm, idx)) ||
				    pagestate_cas(gm->ps, idx, PS_ANON, PS_BUSY))
					break;
				/*
				 * Mapped onto a frame by dedup since the look above: not ours.
				 * A writer the uffd service saw while we held it waits for us.
				 */
				if (gm_frame_mapped(gm, idx)) {
					pagestate_set(gm->ps, idx, PS_ANON);
					mem_page_wake(gm, idx);
					break;
				}
				run++;
			}
			if (!run) {
				i++;
				continue;
			}
			/*
			 * Protect first, compare second: a write from now on waits for
			 * us, and the compare in drop_zero_run is final.
			 */
			if (mem_range_protect(gm, base + (uint64_t)i, run, true)) {
				/* It may have protected a part before it failed. */
				mem_range_protect(gm, base + (uint64_t)i, run, false);
				for (uint64_t k = 0; k < run; k++)
					pagestate_set(gm->ps, base + (uint64_t)i + k, PS_ANON);
			} else {
				dropped += (int64_t)drop_zero_run(gm, base + (uint64_t)i, run);
			}
			/* Writers held by the protection retry against the new states. */
			mem_range_wake(gm, base + (uint64_t)i, run);
			i += (int64_t)run;
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
	int64_t n = mem_reclaim_zero(gm, 0, memmap_nr_pages(gm),
				     (bytes + GM_PAGE_SIZE - 1) / GM_PAGE_SIZE);
	return n < 0 ? n : n * (int64_t)GM_PAGE_SIZE;
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
