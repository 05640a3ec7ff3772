/* SPDX-License-Identifier: MIT */
/*
 * The page-range transaction (see txn.h): claims, write protection and its
 * reasons, registration modes, the commits that change a page's backing,
 * and the dispatch of userfaultfd faults by page state. The only code that
 * calls a userfaultfd primitive on guest RAM or moves a page's state.
 *
 * Changing a page's backing: MADV_DONTNEED on anonymous memory leaves a hole
 * that reads zeros. On a mapping of the store (MAP_PRIVATE of the dedup
 * memfd) it would re-expose the store page, so such runs get fresh anonymous
 * memory mapped over them instead, registered again (the kernel does not
 * register a new mapping). A single page mapped onto a frame gets a mapping
 * of its own, left unregistered while it maps the frame: nothing protects a
 * shared page, and a later claim registers it when it needs to (the write
 * protection of an unregistered range fails with ENOENT).
 *
 * Dirty tracking (mem_dirty_guest_*) is a reason of write protection like
 * sampling, kept across every change of backing. A change of backing takes
 * the old protection with the old page before the re-arm protects the new
 * one, and a guest write in between does not fault: every such path looks
 * afterwards for what a write would have left (catch_unseen_write), or holds
 * the page another way meanwhile (a swapped page's MISSING registration).
 */
#define LOG_TAG "txn"
#include "mem/txn.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/fault.h"
#include "core/log.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/pagecontent.h"

static struct mem_txn_stats stats; /* atomic */

static void count(uint64_t *c, uint64_t n)
{
	__atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

/* The reasons page idx is write-protected for, besides a claim. */
static uint8_t reasons(const struct gm *gm, uint64_t idx)
{
	return __atomic_load_n(&gm->wp_reason[idx], __ATOMIC_ACQUIRE) & MEM_WP_REASONS;
}

/* The source of MEM_WIN_ZEROED pages and of pages of zeros given on a touch. */
static const uint8_t zeros[MEM_PAGE_SIZE] __attribute__((aligned(MEM_PAGE_SIZE)));

static bool tracking(const struct gm *gm)
{
	return __atomic_load_n(&gm->guest_track_on, __ATOMIC_ACQUIRE);
}

/* Page idx was written while tracked, or changed in a way the destination must be told of. */
static void mark_written(struct gm *gm, uint64_t idx)
{
	__atomic_fetch_or(&gm->guest_dirty[idx / 64], 1ULL << (idx % 64), __ATOMIC_RELEASE);
}

/* Page idx's protection was lifted: nothing withdrawn lingers on it. */
static void lifted(struct gm *gm, uint64_t idx)
{
	__atomic_fetch_and(&gm->wp_reason[idx], (uint8_t)~MEM_WP_LINGER, __ATOMIC_ACQ_REL);
}

/*
 * Withdraw reason `why` from page idx; its protection lingers until lifted.
 * False when the page did not have it.
 */
static bool withdraw(struct gm *gm, uint64_t idx, uint8_t why)
{
	uint8_t old = __atomic_load_n(&gm->wp_reason[idx], __ATOMIC_ACQUIRE);

	do {
		if (!(old & why))
			return false;
	} while (!__atomic_compare_exchange_n(&gm->wp_reason[idx], &old,
					      (uint8_t)((old & ~why) | MEM_WP_LINGER), false,
					      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
	return true;
}

bool mem_run_ok(const struct gm *gm, uint64_t idx, uint64_t n)
{
	return n && idx + n <= mem_nr_pages(gm) && idx + n > idx &&
	       mem_page_hva(gm, idx + n - 1) - mem_page_hva(gm, idx) ==
		       (ptrdiff_t)((n - 1) * MEM_PAGE_SIZE);
}

/* --- userfaultfd primitives, on runs of pages --- */

/*
 * A userfaultfd call on guest RAM returned ret (progress: it did part of
 * its range first). Counted when it failed for a reason the callers do not
 * expect: not ENOENT (a range a remap left unregistered: registered and
 * retried), not EEXIST (a page populated meanwhile), not a stop part way.
 */
static int uffd_result(int ret, bool progress)
{
	if (ret && ret != -ENOENT && ret != -EEXIST && !(ret == -EAGAIN && progress))
		count(&stats.uffd_errors, 1);
	return ret;
}

/* Register [hva, hva + len) with gm's userfaultfd after a remap or for new modes. */
static int register_range(struct gm *gm, void *hva, uint64_t len, uint64_t mode)
{
	int inject = FAULT_POINT(UFFD_REGISTER);

	count(&stats.registrations, 1);
	return uffd_result(inject ?: mem_uffd_register(gm, hva, len, mode), false);
}

static int run_register(struct gm *gm, uint64_t idx, uint64_t n, uint64_t mode)
{
	return register_range(gm, mem_page_hva(gm, idx), n * MEM_PAGE_SIZE, mode);
}

static int run_unregister(struct gm *gm, uint64_t idx, uint64_t n)
{
	struct uffdio_range r = { (uint64_t)(uintptr_t)mem_page_hva(gm, idx), n * MEM_PAGE_SIZE };

	count(&stats.registrations, 1);
	return ioctl(gm->uffd, UFFDIO_UNREGISTER, &r) < 0 ? -errno : 0;
}

/* Write-protect or release a run; never wakes (the transaction wakes once). */
static int run_protect(struct gm *gm, uint64_t idx, uint64_t n, bool on)
{
	struct uffdio_writeprotect w = {
		.range = { (uint64_t)(uintptr_t)mem_page_hva(gm, idx), n * MEM_PAGE_SIZE },
		.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
	};
	int inject;

	if (gm->uffd < 0)
		return -ENOSYS;
	count(&stats.protects, 1);
	inject = FAULT_POINT(UFFD_WRITEPROTECT);
	if (inject)
		return uffd_result(inject, false);
	inject = FAULT_POINT(UFFD_WRITEPROTECT_PARTIAL);
	if (inject) {
		/* How the kernel fails part way: a prefix of the run done, then the error. */
		w.range.len = n / 2 * MEM_PAGE_SIZE;
		if (w.range.len)
			ioctl(gm->uffd, UFFDIO_WRITEPROTECT, &w);
		return uffd_result(inject, false);
	}
	return uffd_result(ioctl(gm->uffd, UFFDIO_WRITEPROTECT, &w) < 0 ? -errno : 0, false);
}

/*
 * UFFDIO_COPY as c says: 0, or -errno with c->copy as the kernel leaves it
 * (bytes copied before it stopped with -EAGAIN, else the -errno).
 */
static int uffd_copy(const struct gm *gm, struct uffdio_copy *c)
{
	int inject = FAULT_POINT(UFFD_COPY);

	if (!inject && (inject = FAULT_POINT(UFFD_COPY_PARTIAL))) {
		/* The kernel's partial copy: a prefix copied, then EAGAIN with its length. */
		struct uffdio_copy half = *c;

		half.len = c->len / 2 / MEM_PAGE_SIZE * MEM_PAGE_SIZE;
		if (half.len && ioctl(gm->uffd, UFFDIO_COPY, &half) == 0) {
			c->copy = (int64_t)half.len;
			return -EAGAIN;
		}
	}
	if (inject) {
		c->copy = inject;
		return uffd_result(inject, false);
	}
	return uffd_result(ioctl(gm->uffd, UFFDIO_COPY, c) < 0 ? -errno : 0, c->copy > 0);
}

/* UFFDIO_ZEROPAGE as z says: 0, or -errno with z->zeropage as the kernel leaves it. */
static int uffd_zeropage(const struct gm *gm, struct uffdio_zeropage *z)
{
	int inject = FAULT_POINT(UFFD_ZEROPAGE);

	if (inject) {
		z->zeropage = inject;
		return uffd_result(inject, false);
	}
	return uffd_result(ioctl(gm->uffd, UFFDIO_ZEROPAGE, z) < 0 ? -errno : 0, z->zeropage > 0);
}

/*
 * What serves a swapped page's slot: the image of a lazy restore
 * (MEM_SLOT_IMAGE) or host swap. *arg: the hooks' argument; *vm: their
 * fatal hook's. The hooks are published with a release after their
 * arguments (mem_lazy_attach, mem_swap_attach): they are loaded first, so
 * that the arguments read after them are the ones published with them.
 */
static const struct mem_swap_hooks *slot_hooks(const struct gm *gm, uint64_t slot, void **arg,
					       void **vm)
{
	const struct mem_swap_hooks *h;

	if (slot & MEM_SLOT_IMAGE) {
		h = __atomic_load_n(&gm->image, __ATOMIC_ACQUIRE);
		*arg = *vm = gm->image_arg;
		return h;
	}
	h = __atomic_load_n(&gm->swap, __ATOMIC_ACQUIRE);
	*arg = gm->swap_arg;
	*vm = gm->swap_vm;
	return h;
}

static void run_wake(const struct gm *gm, uint64_t idx, uint64_t n)
{
	struct uffdio_range r = { (uint64_t)(uintptr_t)mem_page_hva(gm, idx), n * MEM_PAGE_SIZE };

	if (gm->uffd >= 0)
		ioctl(gm->uffd, UFFDIO_WAKE, &r);
}

/* --- registration modes --- */

static bool chunk_missing(const struct gm *gm, uint64_t idx)
{
	return __atomic_load_n(&gm->chunk_mode[idx / MEM_CHUNK_PAGES], __ATOMIC_ACQUIRE) &
	       MEM_CHUNK_MISSING;
}

bool mem_page_missing(const struct gm *gm, uint64_t idx)
{
	return idx < mem_nr_pages(gm) && chunk_missing(gm, idx);
}

/*
 * The modes page idx's mapping needs: write protection always; MISSING
 * faults where its chunk wants them, and on a mapping of the store where
 * memmap cannot recognise the kernel's zero page (a window's zero pages are
 * holes of the store there, and a touch must get a page of zeros of the
 * VM's own, not a page of the store: mem_fault).
 */
static uint64_t page_mode(const struct gm *gm, uint64_t idx)
{
	bool missing = chunk_missing(gm, idx) ||
		       (mem_frame_mapped(gm, idx) && !mem_zero_page_known());

	return UFFDIO_REGISTER_MODE_WP | (missing ? UFFDIO_REGISTER_MODE_MISSING : 0);
}

/* Register [idx, idx + n) (one region) with each page's modes, a call per run of equal modes. */
static int run_track(struct gm *gm, uint64_t idx, uint64_t n)
{
	int ret = 0;

	if (gm->uffd < 0)
		return -ENOSYS;
	for (uint64_t i = 0, j; i < n; i = j) {
		uint64_t mode = page_mode(gm, idx + i);
		int err;

		for (j = i + 1; j < n && page_mode(gm, idx + j) == mode; j++)
			;
		err = run_register(gm, idx + i, j - i, mode);
		if (err && !ret)
			ret = err;
	}
	return ret;
}

/*
 * Write-protect [idx, idx + n) (owned, one region), registering it first
 * where a mapping made since is not (a page mapped onto a frame). A sample
 * that cannot be armed is only a sample lost; a tracked page left
 * unprotected would take writes unseen, so it counts as written instead and
 * loses its reason (the next collect tries again). 0 or -errno.
 */
static int arm(struct gm *gm, uint64_t idx, uint64_t n)
{
	int ret = run_protect(gm, idx, n, true);

	if (ret == -ENOENT && !run_track(gm, idx, n))
		ret = run_protect(gm, idx, n, true);
	if (ret)
		for (uint64_t i = 0; i < n; i++)
			if (reasons(gm, idx + i) & MEM_WP_TRACK) {
				mark_written(gm, idx + i);
				withdraw(gm, idx + i, MEM_WP_TRACK);
			}
	return ret;
}

/*
 * Write-protect the pages of [idx, idx + n) (owned, one region) that have a
 * reason to be, a call per run, after their backing changed or a
 * registration dropped the protection. 0, or the first -errno (see arm).
 */
static int run_rearm(struct gm *gm, uint64_t idx, uint64_t n)
{
	int ret = 0;

	for (uint64_t i = 0, j; i < n; i = j) {
		bool reason = reasons(gm, idx + i);
		int err;

		for (j = i + 1; j < n && !!reasons(gm, idx + j) == reason; j++)
			;
		err = reason ? arm(gm, idx + i, j - i) : 0;
		if (err && !ret)
			ret = err;
	}
	return ret;
}

/*
 * Lift the protection of the pages of [idx, idx + n) (owned, one region)
 * that have no reason left. A run that reaches a mapping not registered (a
 * page mapped onto a frame since) is lifted only up to it (ENOENT): it is
 * registered, which keeps every protection, and lifted again.
 */
static void run_lift(struct gm *gm, uint64_t idx, uint64_t n)
{
	for (uint64_t i = 0, j; i < n; i = j) {
		bool reason = reasons(gm, idx + i);

		for (j = i + 1; j < n && !!reasons(gm, idx + j) == reason; j++)
			;
		if (reason)
			continue;
		if (run_protect(gm, idx + i, j - i, false) == -ENOENT &&
		    !run_track(gm, idx + i, j - i))
			run_protect(gm, idx + i, j - i, false);
		for (uint64_t k = i; k < j; k++)
			lifted(gm, idx + k);
	}
}

/*
 * Bring [idx, idx + n) (claimed, one region) back to the modes of its pages
 * after a MISSING registration held it. The kernel keeps a registration's
 * modes when asked for fewer, so a run that must lose MISSING is
 * unregistered and registered again, which also drops its write
 * protection: what its pages still need is armed again.
 */
static int run_restore_modes(struct gm *gm, uint64_t idx, uint64_t n)
{
	int ret = 0;

	for (uint64_t i = 0, j; i < n; i = j) {
		bool missing = page_mode(gm, idx + i) & UFFDIO_REGISTER_MODE_MISSING;
		int err;

		for (j = i + 1; j < n && !!(page_mode(gm, idx + j) & UFFDIO_REGISTER_MODE_MISSING) ==
						 missing; j++)
			;
		if (missing) {
			err = run_protect(gm, idx + i, j - i, false);
		} else {
			err = run_unregister(gm, idx + i, j - i);
			if (!err)
				err = run_track(gm, idx + i, j - i);
		}
		if (err && !ret)
			ret = err;
		run_rearm(gm, idx + i, j - i);
	}
	return ret;
}

/* --- claiming --- */

/* Give pages [from, to) of t back: the states they were claimed from. */
static void restore_states(struct mem_txn *t, uint32_t from, uint32_t to)
{
	for (uint32_t i = from; i < to; i++)
		pagestate_set(t->gm->ps, t->idx + i, (enum ps_state)t->old[i]);
}

/* Protect the claimed run; a part of it may map the store unregistered (see above). */
static int protect_claimed(struct mem_txn *t)
{
	struct gm *gm = t->gm;
	int ret;

	if ((t->flags & MEM_TXN_HOLES) && !gm->wp_unpopulated) {
		t->held = true; /* even a failed registration may have held a part */
		ret = run_register(gm, t->idx, t->n,
				   UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
		if (ret)
			return ret;
	}
	ret = run_protect(gm, t->idx, t->n, true);
	if (ret == -ENOENT && !run_track(gm, t->idx, t->n))
		ret = run_protect(gm, t->idx, t->n, true);
	return ret;
}

/* Lift the claim's own protection, keeping what other reasons need. */
static void unprotect_claimed(struct mem_txn *t, uint32_t from, uint32_t to)
{
	if (!(t->flags & MEM_TXN_NOPROTECT) && to > from)
		run_lift(t->gm, t->idx + from, to - from);
}

/* Give every page back as claimed and wake its writers: the transaction is over. */
static void abort_all(struct mem_txn *t)
{
	if (t->held)
		run_restore_modes(t->gm, t->idx, t->n);
	else
		unprotect_claimed(t, 0, t->n);
	restore_states(t, 0, t->n);
	run_wake(t->gm, t->idx, t->n);
	t->n = 0;
}

int64_t mem_txn_claim(struct mem_txn *t, struct gm *gm, uint64_t idx, uint64_t n,
		      unsigned int from, unsigned int flags)
{
	uint32_t i;
	int ret;

	if (n > MEM_TXN_MAX || !mem_run_ok(gm, idx, n) || (from & MEM_FROM(PS_BUSY)))
		return -EINVAL;
	t->gm = gm;
	t->idx = idx;
	t->flags = flags;
	t->held = false;
	for (i = 0; i < n; i++) {
		enum ps_state st = pagestate_get(gm->ps, idx + i);

		if (!(from & MEM_FROM(st)) || pagestate_cas(gm->ps, idx + i, st, PS_BUSY))
			break;
		t->old[i] = (uint8_t)st;
		t->commit[i] = MEM_KEEP;
		t->arg[i] = 0;
	}
	t->n = i;
	if (!i || (i < n && (flags & MEM_TXN_WHOLE))) {
		/* A writer that faulted on a page while we held it waits for us. */
		restore_states(t, 0, i);
		if (i)
			run_wake(gm, idx, i);
		t->n = 0;
		return i || (flags & MEM_TXN_WHOLE) ? -EBUSY : 0;
	}
	count(&stats.claims, 1);
	count(&stats.pages, i);
	if (!(flags & MEM_TXN_NOPROTECT)) {
		if (gm->uffd < 0) {
			ret = -ENOSYS;
			goto out_abort;
		}
		ret = protect_claimed(t);
		if (ret)
			goto out_abort;
		/* Read once protected: final for every populated page. */
		if (!(flags & MEM_TXN_NOPAGEMAP) && mem_pagemap(gm, idx, i, t->pm) != (int64_t)i) {
			ret = -EIO;
			goto out_abort;
		}
	}
	return i;

out_abort:
	count(&stats.claim_errors, 1);
	abort_all(t);
	return ret;
}

/* --- commits --- */

/* Fresh anonymous memory over [idx, idx + n), registered again. */
static int remap_anon(struct gm *gm, uint64_t idx, uint64_t n)
{
	void *hva = mem_page_hva(gm, idx);
	void *p = mem_hva_mmap(hva, n * MEM_PAGE_SIZE, gm->prot,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
	int ret;

	count(&stats.remaps, 1);
	if (p == MAP_FAILED)
		return -errno;
	madvise(hva, n * MEM_PAGE_SIZE, MADV_NOHUGEPAGE);
	for (uint64_t i = 0; i < n; i++)
		mem_set_frame_mapped(gm, idx + i, false);
	/*
	 * The pages are holes of new memory now: whatever the registration, no
	 * write is lost; one that fails only leaves them unprotectable until a
	 * claim registers them.
	 */
	ret = gm->uffd >= 0 ? run_track(gm, idx, n) : 0;
	if (ret)
		log_warn_ratelimited("registering %llu remapped pages: %s", (unsigned long long)n,
				     strerror(-ret));
	return 0;
}

/*
 * Map the kernel's zero page into the holes of [hva, hva + len), registered
 * with gm's userfaultfd: one ioctl for the run, waking no one. A page
 * populated meanwhile (EEXIST) keeps what it has. 0 or -errno.
 */
static int map_zero_pages(const struct gm *gm, uint8_t *hva, uint64_t len)
{
	for (uint64_t off = 0; off < len;) {
		struct uffdio_zeropage z = {
			.range = { (uint64_t)(uintptr_t)(hva + off), len - off },
			.mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE,
		};

		int ret = uffd_zeropage(gm, &z);

		if (!ret)
			return 0;
		if (ret == -EAGAIN && z.zeropage > 0)
			off += (uint64_t)z.zeropage; /* stopped part way: the kernel says how far */
		else if (ret == -EEXIST)
			off += MEM_PAGE_SIZE; /* the page at off, populated since it was dropped */
		else
			return ret;
	}
	return 0;
}

/*
 * Pages [idx, idx + n) were just dropped and must read as zeros. Where a
 * read of a hole allocates a page (mem_zero_page_on_read false:
 * pvm_no_zero_page) but UFFDIO_ZEROPAGE maps the kernel's zero page
 * (mem_zero_page_known), map it now, so that a later guest read costs
 * nothing, as a read of a dropped page does on any other kernel. Without it,
 * a guest that reads its zero pages again gets them all back as pages of its
 * own, and reclaim drops them again, forever. Best effort.
 */
static void map_zero_dropped(struct gm *gm, uint64_t idx, uint64_t n)
{
	int ret;

	if (gm->uffd < 0 || mem_zero_page_on_read() || !mem_zero_page_known())
		return;
	ret = map_zero_pages(gm, mem_page_hva(gm, idx), n * MEM_PAGE_SIZE);
	if (ret)
		log_warn_ratelimited("mapping the zero page into %llu dropped pages: %s",
				     (unsigned long long)n, strerror(-ret));
}

/* Drop [idx, idx + n) whatever maps it (one region). */
static int drop_run(struct gm *gm, uint64_t idx, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		if (mem_frame_mapped(gm, idx + i))
			return remap_anon(gm, idx, n);
	if (madvise(mem_page_hva(gm, idx), n * MEM_PAGE_SIZE, MADV_DONTNEED) < 0)
		return -errno;
	return 0;
}

static int map_frame(struct gm *gm, uint64_t idx, int fd, uint64_t off)
{
	int inject = FAULT_POINT(DEDUP_FRAME_MMAP);
	void *p = inject ? MAP_FAILED
			 : mem_hva_mmap(mem_page_hva(gm, idx), MEM_PAGE_SIZE, gm->prot,
					MAP_PRIVATE | MAP_FIXED, fd, (off_t)off);

	count(&stats.remaps, 1);
	if (p == MAP_FAILED)
		return inject ?: -errno;
	mem_set_frame_mapped(gm, idx, true);
	return 0;
}

/* MISSING faults on the chunks of [idx, idx + n), added where missing. */
static int chunks_missing(struct gm *gm, uint64_t idx, uint64_t n)
{
	for (uint64_t c = idx / MEM_CHUNK_PAGES; c <= (idx + n - 1) / MEM_CHUNK_PAGES; c++)
		if (!chunk_missing(gm, c * MEM_CHUNK_PAGES)) {
			int ret = mem_chunks_set_missing(gm, c * MEM_CHUNK_PAGES, 1, true);

			if (ret)
				return ret;
		}
	return 0;
}

static const enum ps_state commit_state[MEM_NR_COMMITS] = {
	[MEM_PRIVATE] = PS_ANON,	 [MEM_ZERO] = PS_ZERO,	       [MEM_FRAME] = PS_SHARED,
	[MEM_BALLOONED] = PS_BALLOONED, [MEM_REPORTED] = PS_REPORTED,	 [MEM_SWAPPED] = PS_SWAPPED,
};

/*
 * A commit that changes the backing of page idx: its sample is gone with its
 * old page (what was sampled was that page's use). Tracking stays: the
 * content did not change, so a clean page is still clean on its new backing,
 * and the re-arm protects that.
 */
static void backing_changed(struct gm *gm, uint64_t idx)
{
	__atomic_fetch_and(&gm->wp_reason[idx],
			   (uint8_t)~(MEM_WP_SAMPLE | MEM_WP_LINGER | MEM_WP_WRITTEN), __ATOMIC_ACQ_REL);
}

/*
 * Page idx, tracked and owned, changed backing and was re-armed (its
 * pagemap entry read after: pm). Until the re-arm nothing protected it (the
 * change took the protection with the old page), so a guest write in between
 * did not fault; it left a page of the VM's own where the commit left the
 * zero page, a hole or a frame of the store, and (want: what the commit left
 * there; NULL: a frame, whose copy on write is itself the proof) bytes other
 * than those. Such a page is recorded. A read may also have given the page
 * one of its own (a kernel that allocates on a read of a hole): its bytes
 * are the ones the commit left, so it is not recorded.
 */
static void catch_unseen_write(struct gm *gm, uint64_t idx, uint64_t pm, const uint8_t *want)
{
	if (!(reasons(gm, idx) & MEM_WP_TRACK) || !mem_pm_resident(pm) || mem_pm_file(pm))
		return;
	if (!want || mem_hva_cmp(mem_page_hva(gm, idx), want, MEM_PAGE_SIZE))
		mark_written(gm, idx);
}

/*
 * The pagemap entries of [idx, idx + n) (one region) for catch_unseen_write.
 * Where they cannot be read, every tracked page is recorded (its bytes are
 * not read: a hole held in a MISSING chunk would wait for us) and false.
 */
static bool pagemap_or_record(struct gm *gm, uint64_t idx, uint64_t n, uint64_t *pm)
{
	if (mem_pagemap(gm, idx, n, pm) == (int64_t)n)
		return true;
	for (uint64_t i = 0; i < n; i++)
		if (reasons(gm, idx + i) & MEM_WP_TRACK)
			mark_written(gm, idx + i);
	return false;
}

/* True when one of [idx, idx + n) is tracked (and clean). */
static bool any_tracked(const struct gm *gm, uint64_t idx, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		if (reasons(gm, idx + i) & MEM_WP_TRACK)
			return true;
	return false;
}

/* Apply commit c to pages [i, j) of t; 0, or -errno with the pages as claimed. */
static int apply_run(struct mem_txn *t, uint32_t i, uint32_t j, enum mem_commit c, int fd)
{
	struct gm *gm = t->gm;
	int ret = 0;

	switch (c) {
	case MEM_ZERO:
		ret = drop_run(gm, t->idx + i, j - i);
		if (!ret)
			map_zero_dropped(gm, t->idx + i, j - i);
		break;
	case MEM_BALLOONED:
	case MEM_REPORTED:
		ret = drop_run(gm, t->idx + i, j - i);
		break;
	case MEM_SWAPPED:
		/*
		 * A touch must come to us before the page is dropped: a hole
		 * outside a MISSING chunk reads zeros, and the content is in swap.
		 */
		if (!gm->swap || !gm->swap_slot)
			return -ENODEV;
		ret = chunks_missing(gm, t->idx + i, j - i);
		if (!ret)
			ret = drop_run(gm, t->idx + i, j - i);
		if (!ret)
			for (uint32_t k = i; k < j; k++)
				__atomic_store_n(&gm->swap_slot[t->idx + k], t->arg[k],
						 __ATOMIC_RELAXED);
		break;
	case MEM_FRAME:
		/* A mapping per page (windows go whole: mem_txn_end_window). */
		return fd < 0 ? -EBADF : map_frame(gm, t->idx + i, fd, t->arg[i]);
	default:
		return 0;
	}
	return ret;
}

int64_t mem_txn_end(struct mem_txn *t, int fd)
{
	struct gm *gm = t->gm;
	int64_t done = 0;

	t->err = 0;
	if (!t->n)
		return 0;
	for (uint32_t i = 0, j; i < t->n; i = j) {
		enum mem_commit c = (enum mem_commit)t->commit[i];
		int ret;

		for (j = i + 1; j < t->n && t->commit[j] == c && c != MEM_FRAME; j++)
			;
		ret = c < MEM_NR_COMMITS ? apply_run(t, i, j, c, fd) : -EINVAL;
		if (ret) {
			if (!t->err)
				t->err = ret;
			count(&stats.failed, j - i);
			log_warn_ratelimited("committing %u pages at %llu: %s", j - i,
					     (unsigned long long)(t->idx + i), strerror(-ret));
			for (uint32_t k = i; k < j; k++)
				t->commit[k] = MEM_KEEP;
			c = MEM_KEEP;
		}
		count(&stats.commits[c], j - i);
		if (c == MEM_KEEP || c == MEM_PRIVATE) {
			/* The same page, the same mapping: lift the claim, keep the other reasons. */
			if (!t->held)
				unprotect_claimed(t, i, j);
			continue;
		}
		/* Dropping or remapping took the protection with the old page. */
		for (uint32_t k = i; k < j; k++)
			backing_changed(gm, t->idx + k);
		run_rearm(gm, t->idx + i, j - i);
		done += j - i;
		if ((c == MEM_BALLOONED || c == MEM_REPORTED) && tracking(gm)) {
			/* Not the guest's write, but the destination must drop the pages too. */
			for (uint32_t k = i; k < j; k++)
				mark_written(gm, t->idx + k);
		} else if ((c == MEM_ZERO || c == MEM_FRAME) &&
			   any_tracked(gm, t->idx + i, j - i)) {
			/*
			 * A swapped page needs no look: its chunk takes MISSING faults
			 * before the drop, so every access waits for our wake.
			 */
			uint64_t pm[MEM_TXN_MAX];

			if (pagemap_or_record(gm, t->idx + i, j - i, pm))
				for (uint32_t k = i; k < j; k++)
					catch_unseen_write(gm, t->idx + k, pm[k - i],
							   c == MEM_ZERO ? zeros : NULL);
		}
	}
	/* Only now may the holes go: every commit that needed them held is in. */
	if (t->held)
		run_restore_modes(gm, t->idx, t->n);
	for (uint32_t i = 0; i < t->n; i++) {
		enum mem_commit c = (enum mem_commit)t->commit[i];
		/*
		 * Read while the page is still ours: once its new state is out,
		 * it may be taken back, written and swapped to another slot.
		 */
		uint64_t slot = gm->swap_slot[t->idx + i];

		pagestate_set(gm->ps, t->idx + i,
			      c == MEM_KEEP ? (enum ps_state)t->old[i] : commit_state[c]);
		/* Given up while swapped (balloon, reporting): its slot goes unread. */
		if (t->old[i] == PS_SWAPPED && c != MEM_KEEP && c != MEM_SWAPPED) {
			void *arg, *vm;
			const struct mem_swap_hooks *sw = slot_hooks(gm, slot, &arg, &vm);

			if (sw)
				sw->release(arg, slot, false);
		}
	}
	/* Writers held by the protection retry against the new states: one wake for the run. */
	run_wake(gm, t->idx, t->n);
	t->n = 0;
	return done;
}

/* --- windows --- */

/*
 * Fill pages [i, i + n) of the scratch mapping s (uffd-registered), all of
 * one kind, from the old window: one ioctl per run rather than per page.
 */
static int fill_run(const struct gm *gm, uint8_t *s, const uint8_t *old, uint64_t i, uint64_t n,
		    enum mem_win_kind kind)
{
	uint64_t off = i * MEM_PAGE_SIZE, end = (i + n) * MEM_PAGE_SIZE;

	if (kind == MEM_WIN_FRAME)
		return 0; /* the frame: read from the store on the first access */
	/*
	 * A zero page maps the kernel's zero page (UFFDIO_ZEROPAGE, which does so
	 * also where read faults never do, under pvm_no_zero_page). Where memmap
	 * cannot recognise that page (mem_zero_page_known), each such entry
	 * would count as a resident page, and residency drives the host's budget
	 * and the page states; where the kernel forbids the zero page,
	 * UFFDIO_ZEROPAGE allocates a page. So there the zero page is left a hole
	 * of the store (a reserved, never written offset): it costs nothing until
	 * the guest touches it, and then, through a MISSING fault (page_mode), a
	 * page of zeros of the VM's own, never a page of the store.
	 */
	if (kind == MEM_WIN_ZERO && !mem_zero_page_known())
		return 0;
	if (kind == MEM_WIN_ZERO)
		return map_zero_pages(gm, s + off, end - off);
	while (off < end) {
		/* A private page of zeros is copied from one page of zeros, a page at a time. */
		uint64_t len = kind == MEM_WIN_ZEROED ? MEM_PAGE_SIZE : end - off;
		struct uffdio_copy c = {
			.dst = (uint64_t)(uintptr_t)(s + off),
			.src = (uint64_t)(uintptr_t)(kind == MEM_WIN_KEEP ? old + off : zeros),
			.len = len,
		};

		int ret = uffd_copy(gm, &c);

		if (!ret) {
			off += len;
			continue;
		}
		/* Interrupted part way (EAGAIN): the kernel says how far it got. */
		if (ret != -EAGAIN || c.copy <= 0)
			return ret;
		off += (uint64_t)c.copy;
	}
	return 0;
}

/* Each page's commit agrees with how its window reads. */
static bool window_commits_ok(const struct mem_txn *t, const uint8_t *kind)
{
	for (uint32_t i = 0; i < t->n; i++) {
		bool frame = t->commit[i] == MEM_FRAME;

		if (frame != (kind[i] == MEM_WIN_FRAME) || t->commit[i] == MEM_BALLOONED ||
		    t->commit[i] == MEM_REPORTED || t->commit[i] == MEM_SWAPPED ||
		    t->commit[i] >= MEM_NR_COMMITS)
			return false;
	}
	return true;
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
 * any MISSING registration that held its holes: the window is registered
 * again with its pages' modes.
 */
int mem_txn_end_window(struct mem_txn *t, int fd, uint64_t off, const uint8_t *kind)
{
	struct gm *gm = t->gm;
	uint64_t idx = t->idx, n = t->n;
	bool tracked[MEM_TXN_MAX] = { false };
	uint8_t *old, *s, *saved = NULL;
	uint64_t nsaved = 0;
	void *p;
	int ret;

	if (!n || off % MEM_PAGE_SIZE || !window_commits_ok(t, kind)) {
		ret = -EINVAL;
		goto out_abort;
	}
	old = mem_page_hva(gm, idx);
	/*
	 * mremap takes the protection of the pages it moves (the registration
	 * goes), so between the move and the re-arm a guest write to a kept page
	 * does not fault. Only its bytes can tell: those of a tracked kept page
	 * are kept aside (final: the claim protects them) to compare after.
	 */
	for (uint64_t i = 0; i < n; i++) {
		tracked[i] = reasons(gm, idx + i) & MEM_WP_TRACK;
		nsaved += tracked[i] && kind[i] == MEM_WIN_KEEP;
	}
	if (nsaved) {
		saved = kv_calloc(nsaved, MEM_PAGE_SIZE);
		if (!saved) {
			ret = -ENOMEM;
			goto out_abort;
		}
		for (uint64_t i = 0, k = 0; i < n; i++)
			if (tracked[i] && kind[i] == MEM_WIN_KEEP)
				mem_hva_copy_out(saved + k++ * MEM_PAGE_SIZE,
						 old + i * MEM_PAGE_SIZE, MEM_PAGE_SIZE);
	}
	ret = FAULT_POINT(DEDUP_WINDOW_MMAP);
	s = ret ? MAP_FAILED
		: mem_hva_mmap(NULL, n * MEM_PAGE_SIZE, gm->prot, MAP_PRIVATE, fd, (off_t)off);
	if (s == MAP_FAILED) {
		ret = ret ?: -errno;
		goto out_abort;
	}
	madvise(s, n * MEM_PAGE_SIZE, MADV_NOHUGEPAGE);
	ret = register_range(gm, s, n * MEM_PAGE_SIZE, UFFDIO_REGISTER_MODE_WP);
	for (uint64_t i = 0, j; i < n && !ret; i = j) {
		for (j = i + 1; j < n && kind[j] == kind[i]; j++)
			;
		ret = fill_run(gm, s, old, i, j - i, (enum mem_win_kind)kind[i]);
	}
	if (ret)
		goto out_unmap;
	ret = FAULT_POINT(DEDUP_WINDOW_MREMAP);
	p = ret ? MAP_FAILED
		: mremap(s, n * MEM_PAGE_SIZE, n * MEM_PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, old);
	count(&stats.remaps, 1);
	if (p == MAP_FAILED) {
		ret = ret ?: -errno;
		goto out_unmap;
	}
	for (uint64_t i = 0; i < n; i++) {
		mem_set_frame_mapped(gm, idx + i, true);
		backing_changed(gm, idx + i);
	}
	/*
	 * Protectable again; a failure only means later claims here register it
	 * (and, without MISSING faults, that a touched zero page would read the
	 * store and make a page there).
	 */
	ret = run_track(gm, idx, n);
	if (ret)
		log_warn_ratelimited("registering a remapped window: %s", strerror(-ret));
	run_rearm(gm, idx, n);
	if (any_tracked(gm, idx, n)) {
		uint64_t pm[MEM_TXN_MAX];

		if (pagemap_or_record(gm, idx, n, pm))
			for (uint64_t i = 0, k = 0; i < n; i++) {
				const uint8_t *want = zeros;

				if (!tracked[i])
					continue;
				if (kind[i] == MEM_WIN_KEEP)
					want = saved + k++ * MEM_PAGE_SIZE;
				else if (kind[i] == MEM_WIN_FRAME)
					want = NULL;
				catch_unseen_write(gm, idx + i, pm[i], want);
			}
	}
	kv_free(saved);
	for (uint32_t i = 0; i < n; i++) {
		enum mem_commit c = (enum mem_commit)t->commit[i];

		count(&stats.commits[c], 1);
		pagestate_set(gm->ps, idx + i,
			      c == MEM_KEEP ? (enum ps_state)t->old[i] : commit_state[c]);
	}
	run_wake(gm, idx, n);
	t->n = 0;
	return 0;

out_unmap:
	munmap(s, n * MEM_PAGE_SIZE);
out_abort:
	kv_free(saved);
	count(&stats.failed, n);
	abort_all(t);
	return ret;
}

/* --- single-page state changes --- */

int mem_page_unshared(struct gm *gm, uint64_t idx)
{
	if (idx >= mem_nr_pages(gm))
		return -EINVAL;
	return pagestate_cas(gm->ps, idx, PS_SHARED, PS_ANON);
}

int mem_page_break_share(struct gm *gm, uint64_t idx)
{
	uint8_t *hva;

	if (idx >= mem_nr_pages(gm))
		return -EINVAL;
	if (pagestate_get(gm->ps, idx) != PS_SHARED)
		return -EBUSY;
	hva = mem_phys_base(gm) + mem_index_gpa(gm, idx);
	/* A write fault without a write: no guest store can be lost to it. */
	return madvise(hva, MEM_PAGE_SIZE, MADV_POPULATE_WRITE) ? -errno : 0;
}

int mem_sample_protect(struct gm *gm, uint64_t idx)
{
	int ret;

	if (idx >= mem_nr_pages(gm))
		return -EINVAL;
	if (pagestate_cas(gm->ps, idx, PS_ANON, PS_BUSY))
		return -EBUSY;
	__atomic_fetch_and(&gm->wp_reason[idx], (uint8_t)~MEM_WP_WRITTEN, __ATOMIC_ACQ_REL);
	__atomic_fetch_or(&gm->wp_reason[idx], MEM_WP_SAMPLE, __ATOMIC_ACQ_REL);
	ret = run_protect(gm, idx, 1, true);
	if (ret == -ENOENT && !run_track(gm, idx, 1))
		ret = run_protect(gm, idx, 1, true);
	if (ret)
		__atomic_fetch_and(&gm->wp_reason[idx], (uint8_t)~MEM_WP_SAMPLE, __ATOMIC_ACQ_REL);
	pagestate_set(gm->ps, idx, PS_ANON);
	/* A write that faulted while we held the page was left to us: it faults again now. */
	run_wake(gm, idx, 1);
	return ret;
}

bool mem_sample_release(struct gm *gm, uint64_t idx)
{
	enum ps_state st;

	if (idx >= mem_nr_pages(gm))
		return false;
	if (!withdraw(gm, idx, MEM_WP_SAMPLE))
		return __atomic_fetch_and(&gm->wp_reason[idx], (uint8_t)~MEM_WP_WRITTEN,
					  __ATOMIC_ACQ_REL) & MEM_WP_WRITTEN;
	/*
	 * A page someone holds keeps its protection for now (it lingers): the
	 * holder's end lifts it if no reason is left by then, else the next
	 * write fault does, as an expected fault, not a stray one.
	 */
	st = pagestate_get(gm->ps, idx);
	if (st == PS_BUSY || pagestate_cas(gm->ps, idx, st, PS_BUSY))
		return false;
	if (!reasons(gm, idx)) {
		run_protect(gm, idx, 1, false);
		lifted(gm, idx);
	}
	pagestate_set(gm->ps, idx, st);
	run_wake(gm, idx, 1);
	return false;
}

uint64_t mem_sample_hits(struct gm *gm)
{
	return __atomic_exchange_n(&gm->sample_hits, 0, __ATOMIC_RELAXED);
}

/* --- dirty tracking --- */

/*
 * Pages are armed and disarmed for tracking while owned (PS_BUSY), as any
 * reason is added, so that no mechanism's decision to lift a protection is
 * overtaken by a reason it did not see. They are owned a run at a time, up to
 * HOLD_MAX pages of one region, and protected or lifted with one call per
 * run: all of a 1 GiB VM in 8 calls, where a call per page would cost
 * seconds. A guest write meeting the run meanwhile waits for one such call.
 */
#define HOLD_MAX 32768ULL	/* 128 MiB */
#define HOLD_SMALL 64		/* where HOLD_MAX bytes cannot be had */
#define TRACK_WAIT_NS 5000000000ULL	/* start: how long a page another holds is waited for */
#define TRACK_POLL_NS 50000L
#define COLLECT_GAP 64		/* clean pages a collect's run spans between written ones */

struct hold {
	struct gm *gm;
	bool arm;		/* at release: protect what has reasons, else lift what has none */
	uint64_t idx;		/* first page of the run */
	uint64_t n;		/* pages held */
	uint64_t cap;		/* room in old */
	uint8_t *old;		/* enum ps_state each page was taken from */
	uint8_t small[HOLD_SMALL];
	int err;		/* the first error of a protection */
};

static void hold_init(struct hold *h, struct gm *gm, bool arm)
{
	h->gm = gm;
	h->arm = arm;
	h->n = 0;
	h->err = 0;
	h->old = kv_calloc(HOLD_MAX, 1);
	h->cap = h->old ? HOLD_MAX : HOLD_SMALL;
	if (!h->old)
		h->old = h->small;
}

/* Protect or lift the run, give its pages back and wake whoever waited on them. */
static void hold_release(struct hold *h)
{
	struct gm *gm = h->gm;
	int ret = 0;

	if (!h->n)
		return;
	if (h->arm)
		ret = run_rearm(gm, h->idx, h->n);
	else
		run_lift(gm, h->idx, h->n);
	if (ret && !h->err)
		h->err = ret;
	for (uint64_t i = 0; i < h->n; i++)
		pagestate_set(gm->ps, h->idx + i, (enum ps_state)h->old[i]);
	run_wake(gm, h->idx, h->n);
	h->n = 0;
}

static void hold_fini(struct hold *h)
{
	hold_release(h);
	if (h->old != h->small)
		kv_free(h->old);
}

/*
 * Own page idx (any state but PS_BUSY) at the end of h's run, releasing the
 * run first where idx does not extend it. False when someone else owns it.
 */
static bool hold_take(struct hold *h, uint64_t idx)
{
	struct gm *gm = h->gm;
	enum ps_state st;

	if (h->n && (h->n == h->cap || idx != h->idx + h->n || !mem_run_ok(gm, h->idx, h->n + 1)))
		hold_release(h);
	do {
		st = pagestate_get(gm->ps, idx);
		if (st == PS_BUSY)
			return false;
	} while (pagestate_cas(gm->ps, idx, st, PS_BUSY));
	if (!h->n)
		h->idx = idx;
	h->old[h->n++] = (uint8_t)st;
	return true;
}

/*
 * Clean tracked pages from the end of h's run up to idx join it when they
 * are few: protected already, they stay so, and one call spans the written
 * pages on both sides.
 */
static void hold_bridge(struct hold *h, uint64_t idx)
{
	for (uint64_t g = h->idx + h->n; h->n && g < idx && idx - g <= COLLECT_GAP; g++)
		if (!(reasons(h->gm, g) & MEM_WP_TRACK) || !hold_take(h, g))
			return;
}

/* Stop: every page loses the reason, and its protection where no other reason holds. */
static void track_stop(struct gm *gm)
{
	uint64_t nr = mem_nr_pages(gm);
	struct hold h;

	__atomic_store_n(&gm->guest_track_on, false, __ATOMIC_RELEASE);
	hold_init(&h, gm, false);
	for (uint64_t idx = 0; idx < nr; idx++) {
		if (hold_take(&h, idx)) {
			__atomic_fetch_and(&gm->wp_reason[idx], (uint8_t)~MEM_WP_TRACK,
					   __ATOMIC_ACQ_REL);
			continue;
		}
		/*
		 * Its holder lifts the protection at its end if no reason is left by
		 * then; if it decided already, the protection lingers until the next
		 * write, which is then expected, not a stray one.
		 */
		withdraw(gm, idx, MEM_WP_TRACK);
	}
	hold_fini(&h);
}

/*
 * Start: every page clean and protected. A page another mechanism holds is
 * waited for, holding nothing meanwhile (the balloon waits for pages too:
 * two waiters each holding what the other wants would stall both).
 */
static int track_start(struct gm *gm)
{
	uint64_t nr = mem_nr_pages(gm), words = mem_bitmap_words(gm);
	struct hold h;
	int ret = 0;

	for (uint64_t w = 0; w < words; w++)
		__atomic_store_n(&gm->guest_dirty[w], 0, __ATOMIC_RELAXED);
	/* On first: a balloon commit from here on is recorded. */
	__atomic_store_n(&gm->guest_track_on, true, __ATOMIC_RELEASE);
	hold_init(&h, gm, true);
	for (uint64_t idx = 0; idx < nr && !ret; idx++) {
		uint64_t waited = 0;

		while (!hold_take(&h, idx)) {
			struct timespec ts = { 0, TRACK_POLL_NS };

			hold_release(&h);
			if (waited >= TRACK_WAIT_NS) {
				log_warn_ratelimited("page %llu held for over %llu ms: not tracked",
						     (unsigned long long)idx,
						     TRACK_WAIT_NS / 1000000ULL);
				ret = -EBUSY;
				break;
			}
			nanosleep(&ts, NULL);
			waited += TRACK_POLL_NS;
		}
		if (!ret)
			__atomic_fetch_or(&gm->wp_reason[idx], MEM_WP_TRACK, __ATOMIC_ACQ_REL);
	}
	hold_fini(&h);
	if (!ret)
		ret = h.err;
	if (ret)
		track_stop(gm);
	return ret;
}

int mem_dirty_guest_track(struct gm *gm, bool on)
{
	/* Without markers on holes a write to a hole would not fault. */
	if (gm->uffd < 0 || !gm->wp_unpopulated)
		return -ENOTSUP;
	if (on)
		return track_start(gm);
	track_stop(gm);
	return 0;
}

/*
 * Clear first, protect second. A write between the two does not fault, but
 * it has landed before the collect returns, so the caller, which reads the
 * page after, sends it; a write after the protection faults and sets the
 * bit again, for the next collect. The other order loses writes: one that
 * faults after the protection and before the clear has its bit cleared
 * here while the write itself is still held, and lands only after the
 * caller has read the page. A written page someone else owns cannot be
 * armed now: it is reported, and its bit set again so that the next
 * collect reports it too (it may be written meanwhile, unseen).
 */
uint64_t mem_dirty_guest_collect(struct gm *gm, uint64_t *out)
{
	uint64_t words = mem_bitmap_words(gm), marked = 0;
	bool rearm = tracking(gm);
	struct hold h = { 0 };

	if (rearm)
		hold_init(&h, gm, true);
	for (uint64_t w = 0; w < words; w++) {
		uint64_t v = __atomic_exchange_n(&gm->guest_dirty[w], 0, __ATOMIC_ACQ_REL);

		if (!v)
			continue;
		out[w] |= v;
		marked += (uint64_t)__builtin_popcountll(v);
		for (; rearm && v; v &= v - 1) {
			uint64_t idx = w * 64 + (uint64_t)__builtin_ctzll(v);

			hold_bridge(&h, idx);
			if (!hold_take(&h, idx)) {
				mark_written(gm, idx);
				continue;
			}
			__atomic_fetch_or(&gm->wp_reason[idx], MEM_WP_TRACK, __ATOMIC_ACQ_REL);
		}
	}
	if (rearm)
		hold_fini(&h);
	return marked;
}

int mem_chunks_set_missing(struct gm *gm, uint64_t idx, uint64_t n, bool on)
{
	uint64_t first, last;
	int ret = 0;

	if (!n || idx + n > mem_nr_pages(gm) || idx + n < idx)
		return -EINVAL;
	if (gm->uffd < 0)
		return -ENOSYS;
	/*
	 * Dropping MISSING unregisters the chunk, which lifts every protection
	 * in it and lets the writers it held through before the re-arm: unseen
	 * writes to tracked pages. The mode costs only speed: it stays.
	 */
	if (!on && tracking(gm))
		return -EBUSY;
	first = idx / MEM_CHUNK_PAGES;
	last = (idx + n - 1) / MEM_CHUNK_PAGES;
	for (uint64_t c = first; c <= last && !ret; c++) {
		uint64_t start = c * MEM_CHUNK_PAGES, len = MEM_CHUNK_PAGES;
		static __thread struct mem_txn t;

		if (start + len > mem_nr_pages(gm))
			len = mem_nr_pages(gm) - start;
		if (on) {
			/* Adding a mode keeps every page's protection: no claim needed. */
			uint8_t was = __atomic_fetch_or(&gm->chunk_mode[c], MEM_CHUNK_MISSING,
							__ATOMIC_ACQ_REL);

			ret = run_track(gm, start, len);
			/*
			 * Not registered: the chunk must not say it is, or the next
			 * swap-out there, seeing the mode, would drop pages that a touch
			 * then reads as zeros instead of faulting. A part registered
			 * already costs only faults on holes, which read zeros anyway.
			 */
			if (ret && !(was & MEM_CHUNK_MISSING))
				__atomic_fetch_and(&gm->chunk_mode[c], (uint8_t)~MEM_CHUNK_MISSING,
						   __ATOMIC_ACQ_REL);
			continue;
		}
		/*
		 * Dropping it drops the protections too (run_restore_modes): own
		 * the chunk so that no transaction relies on them meanwhile.
		 */
		ret = (int)mem_txn_claim(&t, gm, start, len, (1u << PS_NR) - 1 - MEM_FROM(PS_BUSY),
					 MEM_TXN_WHOLE | MEM_TXN_NOPROTECT);
		if (ret < 0)
			break;
		/* A swapped page's touch must still come here: its chunk keeps the mode. */
		for (uint64_t i = 0; i < len && ret >= 0; i++)
			if (t.old[i] == PS_SWAPPED)
				ret = -EBUSY;
		if (ret < 0) {
			mem_txn_end(&t, -1);
			break;
		}
		__atomic_fetch_and(&gm->chunk_mode[c], (uint8_t)~MEM_CHUNK_MISSING, __ATOMIC_ACQ_REL);
		ret = run_restore_modes(gm, start, len);
		mem_txn_end(&t, -1);
	}
	return ret < 0 ? ret : 0;
}

/* --- fault dispatch --- */

/* Own page idx whatever its state, unless a transaction does: that state, or PS_BUSY. */
static enum ps_state take(struct gm *gm, uint64_t idx)
{
	for (;;) {
		enum ps_state st = pagestate_get(gm->ps, idx);

		if (st == PS_BUSY || !pagestate_cas(gm->ps, idx, st, PS_BUSY))
			return st;
	}
}

/*
 * A write to a protected page. One a transaction holds is left to it (it
 * wakes the writer at its end, having armed again what the page's reasons
 * need: a tracked page's write faults again and is recorded then).
 * Otherwise the page is owned here for a moment, so no transaction starts
 * relying on the protection lifted: a sampled page counts a hit and a
 * tracked one is recorded, each losing that reason; a page whose protection
 * no reason explains (a stray one) is released and counted, never just
 * woken: the write would fault again at once, forever. A fault whose page
 * is no longer protected when it is read was resolved meanwhile. On a page
 * that maps a store frame the write is recorded before the protection goes,
 * and the kernel copies the page on write when it retries.
 */
static enum mem_fault fault_wp(struct gm *gm, uint64_t idx, void *page)
{
	enum ps_state st = take(gm, idx);
	enum mem_fault what = MEM_FAULT_STALE;
	uint64_t pm = 0;
	uint8_t old;

	if (st == PS_BUSY)
		return MEM_FAULT_OWNER;
	/*
	 * A sample's hit is marked in the same step that ends it: its sampler
	 * never misses it. A tracked page is recorded before its reason goes
	 * (no one else can arm it again while we own it), so a tracked page
	 * without the reason is always one the next collect reports.
	 */
	old = __atomic_load_n(&gm->wp_reason[idx], __ATOMIC_ACQUIRE);
	if (old & MEM_WP_TRACK)
		mark_written(gm, idx);
	while (!__atomic_compare_exchange_n(
		&gm->wp_reason[idx], &old,
		(uint8_t)((old & ~(MEM_WP_SAMPLE | MEM_WP_TRACK | MEM_WP_LINGER)) |
			  (old & MEM_WP_SAMPLE ? MEM_WP_WRITTEN : 0)),
		false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		;
	if (old & MEM_WP_SAMPLE) {
		__atomic_fetch_add(&gm->sample_hits, 1, __ATOMIC_RELAXED);
		what = MEM_FAULT_SAMPLE;
	} else if (old & MEM_WP_TRACK) {
		what = MEM_FAULT_TRACK;
	} else if (!(old & MEM_WP_LINGER) && mem_pagemap(gm, idx, 1, &pm) == 1 &&
		   (pm & PM_UFFD_WP)) {
		count(&stats.stray_faults, 1);
		log_warn_ratelimited("page %llu was write-protected for no reason: released",
				     (unsigned long long)idx);
		what = MEM_FAULT_STRAY;
	}
	if (!reasons(gm, idx))
		run_protect(gm, idx, 1, false);
	pagestate_set(gm->ps, idx, st);
	run_wake(gm, idx, 1);
	(void)page;
	return what;
}

/*
 * How many pages a touch of page idx reads back, and which stream it
 * follows (the caller records where its run ends). Read-ahead pays only for
 * a guest going through its memory in order (a scan, a verification): under
 * random touches of cold memory each page read beside the touched one is
 * one more page over the budget, and makes reclaim swap out one more,
 * likely hot, page. So, as the kernel's swap read-ahead does, the window
 * starts at one page and doubles with each touch that lands where the
 * stream's last run ended (or just past it: the pages between may be
 * resident), and a touch out of every stream's order starts a new stream in
 * place of the one followed least lately. A few streams, for vCPUs scanning
 * side by side.
 */
static uint64_t swap_ra_window(struct gm *gm, uint64_t idx, unsigned int *stream)
{
	uint64_t now = __atomic_add_fetch(&gm->swap_ra_clock, 1, __ATOMIC_RELAXED);
	uint64_t oldest = UINT64_MAX;
	unsigned int v = 0;

	for (unsigned int i = 0; i < MEM_SWAP_RA_STREAMS; i++) {
		uint64_t next = __atomic_load_n(&gm->swap_ra[i].next, __ATOMIC_RELAXED);
		uint64_t win = __atomic_load_n(&gm->swap_ra[i].win, __ATOMIC_RELAXED);
		uint64_t used = __atomic_load_n(&gm->swap_ra[i].used, __ATOMIC_RELAXED);

		if (win && idx >= next && idx < next + MEM_SWAP_READAHEAD) {
			win = win * 2 < MEM_SWAP_READAHEAD ? win * 2 : MEM_SWAP_READAHEAD;
			__atomic_store_n(&gm->swap_ra[i].win, win, __ATOMIC_RELAXED);
			__atomic_store_n(&gm->swap_ra[i].used, now, __ATOMIC_RELAXED);
			*stream = i;
			return win;
		}
		if (used < oldest) {
			oldest = used;
			v = i;
		}
	}
	/* A new stream takes the place of the one followed least lately. */
	__atomic_store_n(&gm->swap_ra[v].win, 1, __ATOMIC_RELAXED);
	__atomic_store_n(&gm->swap_ra[v].used, now, __ATOMIC_RELAXED);
	*stream = v;
	return 1;
}

/*
 * A touch of a swapped page (we own it: PS_BUSY): read it back with the
 * swapped pages after it whose slots follow its slot, as many as the
 * read-ahead window allows (a swap-out run keeps neighbours together: one
 * read serves a sequential touch ahead). From the file the read is started
 * and the service goes on with other faults; its completion comes back
 * through mem_swap_in_done. From the pool (or where no read can be started)
 * it is read here.
 */
static enum mem_fault swap_in(struct gm *gm, uint64_t idx, void *page)
{
	static __thread uint8_t buf[MEM_SWAP_READAHEAD * MEM_PAGE_SIZE]
		__attribute__((aligned(MEM_PAGE_SIZE)));
	uint64_t slot = gm->swap_slot[idx], n = 1;
	void *arg, *vm;
	const struct mem_swap_hooks *sw = slot_hooks(gm, slot, &arg, &vm);
	uint64_t t0 = kv_clock_ns(CLOCK_MONOTONIC);
	unsigned int stream;
	uint64_t win = swap_ra_window(gm, idx, &stream);
	int ret;

	/* Used after all, read or written: the chunk is young (mem/access.h). */
	mem_chunk_touched(gm, idx);
	/* Read-ahead: swapped neighbours in the next slots, owned here like the page. */
	for (; sw && n < win && mem_run_ok(gm, idx, n + 1); n++) {
		if (pagestate_get(gm->ps, idx + n) != PS_SWAPPED ||
		    __atomic_load_n(&gm->swap_slot[idx + n], __ATOMIC_RELAXED) != slot + n ||
		    pagestate_cas(gm->ps, idx + n, PS_SWAPPED, PS_BUSY))
			break;
		/*
		 * Ours now, its slot fixed; but between the look and the claim
		 * it may have been swapped in and out again, to another slot.
		 */
		if (__atomic_load_n(&gm->swap_slot[idx + n], __ATOMIC_RELAXED) != slot + n) {
			pagestate_set(gm->ps, idx + n, PS_SWAPPED);
			run_wake(gm, idx + n, 1);
			break;
		}
	}
	__atomic_store_n(&gm->swap_ra[stream].next, idx + n, __ATOMIC_RELAXED);
	if (sw && sw->submit(arg, gm, idx, slot, n, page, t0) == 0)
		return MEM_FAULT_SWAP_PENDING;
	ret = sw ? sw->read(arg, slot, n, buf) : -ENODEV;
	return mem_swap_in_done(gm, idx, n, page, buf, ret, t0);
}

/*
 * UFFDIO_COPY one page, waking no one, write-protected from the start with
 * wp (a protection added after would leave a moment for an unseen write):
 * 0 or -errno.
 */
static int copy_page(const struct gm *gm, uint8_t *dst, const uint8_t *src, bool wp)
{
	struct uffdio_copy c = {
		.dst = (uint64_t)(uintptr_t)dst,
		.src = (uint64_t)(uintptr_t)src,
		.len = MEM_PAGE_SIZE,
		.mode = UFFDIO_COPY_MODE_DONTWAKE | (wp ? UFFDIO_COPY_MODE_WP : 0),
	};
	int tries = 0, ret;

	/* EAGAIN: the address space was changing (a remap elsewhere): try again. */
	while ((ret = uffd_copy(gm, &c))) {
		if (ret != -EAGAIN || ++tries == 16)
			return ret;
	}
	return 0;
}

/*
 * Give the hole at page (page idx, owned) zeros: the zero page, but a page
 * of zeros of its own, copied in write-protected, where the page has a
 * reason to be protected. UFFDIO_ZEROPAGE neither fills the marker that
 * protects a hole (EEXIST: the access would fault again forever) nor
 * protects what it maps (a write between it and a protection after would go
 * unseen). A marker left by a withdrawn reason is filled over too,
 * unprotected. 0 (the zero page), 1 (a page of its own: PS_ANON) or -errno.
 */
static int fill_zero(struct gm *gm, uint64_t idx, uint8_t *page)
{
	uint8_t r = __atomic_load_n(&gm->wp_reason[idx], __ATOMIC_ACQUIRE);
	int ret;

	if (!(r & (MEM_WP_REASONS | MEM_WP_LINGER)))
		return map_zero_pages(gm, page, MEM_PAGE_SIZE);
	ret = copy_page(gm, page, zeros, r & MEM_WP_REASONS);
	if (ret)
		return ret;
	if (!(r & MEM_WP_REASONS))
		lifted(gm, idx);
	return 1;
}

/*
 * Copy pages [0, n) of buf into the holes at page, waking no one, each
 * write-protected with wp; ok[i] says which landed. One ioctl for the run;
 * where it stops short (a remap split the run between mappings: ENOENT; a
 * page populated already: EEXIST) the rest go one at a time. refill0: page
 * 0 is a touched swapped page, which populated while it was held can only
 * hold the wrong content: it is dropped and copied. Returns 0, or page 0's
 * -errno when it could not be copied.
 */
static int copy_pages(const struct gm *gm, uint8_t *page, const uint8_t *buf, uint64_t n,
		      bool *ok, bool wp, bool refill0)
{
	uint64_t done = 0;
	int ret = 0;

	while (done < n * MEM_PAGE_SIZE) {
		struct uffdio_copy c = {
			.dst = (uint64_t)(uintptr_t)page + done,
			.src = (uint64_t)(uintptr_t)buf + done,
			.len = n * MEM_PAGE_SIZE - done,
			.mode = UFFDIO_COPY_MODE_DONTWAKE | (wp ? UFFDIO_COPY_MODE_WP : 0),
		};

		int err = uffd_copy(gm, &c);

		if (!err)
			done = n * MEM_PAGE_SIZE;
		else if (err == -EAGAIN && c.copy > 0)
			done += (uint64_t)c.copy; /* interrupted part way: the kernel says how far */
		else
			break;
	}
	for (uint64_t i = 0; i < n; i++) {
		int err = 0;

		if (i >= done / MEM_PAGE_SIZE) {
			err = copy_page(gm, page + i * MEM_PAGE_SIZE, buf + i * MEM_PAGE_SIZE, wp);
			if (err == -EEXIST && i == 0 && refill0 &&
			    madvise(page, MEM_PAGE_SIZE, MADV_DONTNEED) == 0)
				err = copy_page(gm, page, buf, wp);
		}
		ok[i] = !err;
		if (i == 0)
			ret = err;
	}
	return ret;
}

int mem_fill_pages(struct gm *gm, uint64_t idx, uint64_t n, const void *data)
{
	static __thread struct mem_txn t;
	const uint8_t *src = data;
	bool ok[MEM_TXN_MAX];

	if (n > MEM_TXN_MAX || !mem_run_ok(gm, idx, n))
		return -EINVAL;
	/*
	 * Owned while filled, so that no mechanism (the destination's own
	 * policy may reclaim received pages) works on them meanwhile; a page
	 * one holds, or a swapped one, is written through its mapping, which
	 * waits for it or swaps it in first.
	 */
	while (n) {
		int64_t got = mem_txn_claim(&t, gm, idx, n,
					    MEM_FROM(PS_ANON) | MEM_FROM(PS_ZERO) |
						    MEM_FROM(PS_BALLOONED) | MEM_FROM(PS_REPORTED),
					    MEM_TXN_NOPROTECT | MEM_TXN_NOPAGEMAP);
		uint8_t *page = mem_page_hva(gm, idx);
		int ret = 0;

		if (got <= 0) {
			ret = mem_write(gm, mem_index_gpa(gm, idx), src, MEM_PAGE_SIZE);
			got = 1;
		} else {
			bool wp = false;

			memset(ok, 0, sizeof(ok));
			/*
			 * A page with a reason to be protected is installed protected
			 * (sampling must see the guest's next write); the others of
			 * the run are lifted after. One already populated is not
			 * touched here: it is written below.
			 */
			for (int64_t i = 0; i < got; i++)
				wp |= reasons(gm, idx + (uint64_t)i) != 0;
			if (gm->uffd >= 0)
				copy_pages(gm, page, src, (uint64_t)got, ok, wp, false);
			/* A page dropped earlier (ballooned, say) is the VM's own again. */
			for (int64_t i = 0; i < got; i++) {
				if (ok[i] && wp && !reasons(gm, idx + (uint64_t)i))
					run_lift(gm, idx + (uint64_t)i, 1);
				mem_txn_set(&t, (uint32_t)i, MEM_PRIVATE, 0);
			}
			mem_txn_end(&t, -1);
			/*
			 * Populated already (content sent before, or a zero page):
			 * written in place once released, through the access API: a
			 * page protected for a reason faults, and the fault must not
			 * wait for this thread's own claim.
			 */
			for (int64_t i = 0; i < got && !ret; i++)
				if (!ok[i])
					ret = mem_write(gm, mem_index_gpa(gm, idx + (uint64_t)i),
							src + i * MEM_PAGE_SIZE, MEM_PAGE_SIZE);
		}
		if (ret)
			return ret;
		idx += (uint64_t)got;
		n -= (uint64_t)got;
		src += (uint64_t)got * MEM_PAGE_SIZE;
	}
	return 0;
}

/* Why page idx, swapped to slot, could not be had (read result ret), for the VM's log. */
static void why_unreadable(char *why, size_t len, uint64_t idx, uint64_t slot, int ret)
{
	snprintf(why, len, "guest page %llu cannot be read back from %s: %s",
		 (unsigned long long)idx, slot & MEM_SLOT_IMAGE ? "its snapshot file" : "swap",
		 ret == -EBADMSG ? "its content does not match its hash (the file is corrupt)"
				 : strerror(-ret));
}

/*
 * Copy pages [idx, idx + n) (owned, read into buf with result ret) into
 * their holes at page and give their slots back: each the VM's own again.
 * Pages that could not be copied stay swapped (holes): a later touch
 * retries. Page 0 stays owned by the caller unless it was copied. Returns
 * page 0's result (ret, or the copy's), *copied the pages copied.
 */
static int copy_back(struct gm *gm, uint64_t idx, uint64_t n, void *page, const void *buf,
		     int ret, uint64_t *copied)
{
	uint64_t slot = gm->swap_slot[idx];
	void *arg, *vm;
	const struct mem_swap_hooks *sw = slot_hooks(gm, slot, &arg, &vm);
	bool ok[MEM_SWAP_READAHEAD] = { false };
	bool wp = false;

	*copied = 0;
	/*
	 * A tracked page comes back protected: reading it back is no write of
	 * the guest's, and its next write must fault. It is copied in protected
	 * (protecting it after would leave a moment for an unseen write), the
	 * whole run so where one page needs it, and the others lifted after. No
	 * reason can appear meanwhile: only an owner adds one, and we own them.
	 */
	for (uint64_t i = 0; i < n; i++)
		wp |= reasons(gm, idx + i) != 0;
	if (!ret)
		ret = copy_pages(gm, page, buf, n, ok, wp, true);
	for (uint64_t i = 0; i < n; i++) {
		if (!ok[i]) {
			if (i)
				pagestate_set(gm->ps, idx + i, PS_SWAPPED);
			continue;
		}
		if (wp)
			run_lift(gm, idx + i, 1);
		pagestate_set(gm->ps, idx + i, PS_ANON);
		sw->release(arg, slot + i, true);
		(*copied)++;
	}
	return ret;
}

/*
 * Copy the pages read back in and give their slots back before the access
 * is woken, so it never meets the hole again. Where the page could not be
 * read, the VM stops.
 */
enum mem_fault mem_swap_in_done(struct gm *gm, uint64_t idx, uint64_t n, void *page,
				const void *buf, int ret, uint64_t t0)
{
	uint64_t slot = gm->swap_slot[idx], copied, us;
	void *arg, *vm;
	const struct mem_swap_hooks *sw = slot_hooks(gm, slot, &arg, &vm);
	unsigned int bucket = 0;
	bool was_read = !ret;

	ret = copy_back(gm, idx, n, page, buf, ret, &copied);
	if (ret == -ENOENT || (was_read && (ret == -ENOMEM || ret == -EAGAIN))) {
		/*
		 * Read, but not put in: the touched page's mapping is not
		 * registered at this instant (ENOENT: replaced, not registered
		 * again yet), or the kernel had no page to copy it into or its
		 * address space kept changing. The content is still in its slot,
		 * so the page stays swapped and the woken access faults again and
		 * reads it anew: a page that could not be copied is not a page
		 * that cannot be read, and the VM must not stop for it.
		 */
		count(&stats.fault_retries, 1);
		log_warn_ratelimited("copying swapped page %llu in: %s: retried on the next touch",
				     (unsigned long long)idx,
				     ret == -ENOENT ? "its mapping is being replaced" : strerror(-ret));
		pagestate_set(gm->ps, idx, PS_SWAPPED);
		run_wake(gm, idx, n);
		return MEM_FAULT_STALE;
	}
	if (ret) {
		char why[192];

		/*
		 * The VM stops first (its vCPUs are kicked, and a kicked vCPU
		 * leaves before its guest runs again), then the access gets the
		 * zero page, so that no thread of the VMM (a device worker) waits
		 * forever on a VM that will never run: the content is lost, and
		 * the VM is stopped for it, never served zeros silently.
		 */
		why_unreadable(why, sizeof(why), idx, slot, ret);
		if (sw)
			sw->fatal(vm, why);
		ret = fill_zero(gm, idx, page);
		if (tracking(gm))
			mark_written(gm, idx); /* its content is zeros now */
		if (sw)
			sw->release(arg, slot, false);
		pagestate_set(gm->ps, idx, ret == 1 ? PS_ANON : PS_ZERO);
		run_wake(gm, idx, n);
		return MEM_FAULT_UNSERVED;
	}
	/*
	 * From the fault read to the wake: what the guest waited, but for the
	 * service's queue. Counted before the wake, so that whoever the wake
	 * lets go sees its fault in the figures.
	 */
	for (us = (kv_clock_ns(CLOCK_MONOTONIC) - t0) / 1000; us > 1 && bucket < 15; us >>= 1)
		bucket++;
	count(&gm->swapc.faults, 1);
	count(&gm->swapc.readahead, copied - 1);
	count(&gm->swapc.hist[bucket], 1);
	run_wake(gm, idx, n);
	return MEM_FAULT_SWAP_IN;
}

int64_t mem_image_fetch(struct gm *gm, uint64_t idx, uint64_t n)
{
	static __thread uint8_t buf[MEM_SWAP_READAHEAD * MEM_PAGE_SIZE]
		__attribute__((aligned(MEM_PAGE_SIZE)));
	const struct mem_swap_hooks *img = __atomic_load_n(&gm->image, __ATOMIC_ACQUIRE);
	uint64_t got = 0, copied;
	char why[192];
	int ret, read_err;

	if (!img || n > MEM_SWAP_READAHEAD || !mem_run_ok(gm, idx, n))
		return -EINVAL;
	/* The image's pages of the run from idx on, owned; a touch of one waits for the wake. */
	for (; got < n; got++) {
		uint64_t i = idx + got;

		if (pagestate_get(gm->ps, i) != PS_SWAPPED ||
		    __atomic_load_n(&gm->swap_slot[i], __ATOMIC_RELAXED) != (MEM_SLOT_IMAGE | i) ||
		    pagestate_cas(gm->ps, i, PS_SWAPPED, PS_BUSY))
			break;
		/* Fetched and swapped out again between the look and the claim: host swap's now. */
		if (__atomic_load_n(&gm->swap_slot[i], __ATOMIC_RELAXED) != (MEM_SLOT_IMAGE | i)) {
			pagestate_set(gm->ps, i, PS_SWAPPED);
			run_wake(gm, i, 1);
			break;
		}
	}
	if (!got)
		return 0;
	ret = img->read(gm->image_arg, MEM_SLOT_IMAGE | idx, got, buf);
	read_err = ret;
	ret = copy_back(gm, idx, got, mem_page_hva(gm, idx), buf, ret, &copied);
	if (ret) {
		/*
		 * Not copied: swapped still, and a touch fetches it (or stops the
		 * VM) itself. Only a page that could not be read stops it here: one
		 * read but not put in (no memory for it, a mapping being replaced)
		 * is still in the file.
		 */
		pagestate_set(gm->ps, idx, PS_SWAPPED);
		if (!copied && read_err && ret != -ENOENT && ret != -EEXIST) {
			why_unreadable(why, sizeof(why), idx, MEM_SLOT_IMAGE | idx, ret);
			img->fatal(gm->image_arg, why);
		}
	}
	run_wake(gm, idx, got);
	return ret && !copied ? ret : (int64_t)copied;
}

int mem_read_swapped(const struct gm *gm, gpa_t gpa, void *buf, size_t len)
{
	static __thread uint8_t page[MEM_PAGE_SIZE] __attribute__((aligned(MEM_PAGE_SIZE)));
	uint8_t *dst = buf;

	while (len) {
		const struct mem_ram_region *r = mem_find_region(gm, gpa);
		uint64_t off = gpa % MEM_PAGE_SIZE, n = MEM_PAGE_SIZE - off;
		uint64_t idx = r->first_pfn_index + ((gpa - r->gpa) >> MEM_PAGE_SHIFT);
		const uint8_t *src = r->hva + (gpa - r->gpa);

		if (n > len)
			n = len;
		/*
		 * Held while its slot is read, so that it cannot be swapped in
		 * (and the slot reused) meanwhile; a guest access that faults on
		 * it then waits for the wake below, and swaps it in after.
		 */
		if (pagestate_get(gm->ps, idx) == PS_SWAPPED &&
		    !pagestate_cas(gm->ps, idx, PS_SWAPPED, PS_BUSY)) {
			uint64_t slot = gm->swap_slot[idx];
			void *arg, *vm;
			const struct mem_swap_hooks *sw = slot_hooks(gm, slot, &arg, &vm);
			int ret = sw ? sw->read(arg, slot, 1, page) : -ENODEV;

			pagestate_set(gm->ps, idx, PS_SWAPPED);
			run_wake(gm, idx, 1);
			if (ret)
				return ret;
			memcpy(dst, page + off, n);
		} else {
			mem_hva_copy_out(dst, src, n);
		}
		dst += n;
		gpa += n;
		len -= n;
	}
	return 0;
}

/*
 * An access to a hole of a range registered for MISSING faults. A page a
 * transaction holds (the holes of a window being rebuilt) is left to it.
 * A hole in a mapping of the store is a zero page of a window on a kernel
 * where memmap cannot tell the zero page (page_mode): it gets a page of
 * zeros of the VM's own (PS_ANON), never a page of the store. A hole of
 * anonymous memory in a MISSING chunk that is not swapped reads zeros:
 * never touched, dropped as zero, ballooned or reported, it gets the zero
 * page. Each is resolved before the access is woken, so a woken access
 * never faults again on the same hole.
 */
static enum mem_fault fault_missing(struct gm *gm, uint64_t idx, void *page)
{
	enum ps_state st = take(gm, idx);
	enum mem_fault what = MEM_FAULT_STALE;
	int ret = 0;

	if (st == PS_BUSY)
		return MEM_FAULT_OWNER;
	if (st == PS_SWAPPED)
		return swap_in(gm, idx, page);
	/* A page with a reason to be protected is filled protected (copy_page, fill_zero). */
	if (mem_frame_mapped(gm, idx) && st != PS_SHARED) {
		ret = copy_page(gm, page, zeros, reasons(gm, idx) != 0);
		if (!ret) {
			st = PS_ANON;
			what = MEM_FAULT_ZERO_FILL;
		}
	} else if (!mem_frame_mapped(gm, idx)) {
		ret = fill_zero(gm, idx, page);
		if (ret >= 0)
			what = MEM_FAULT_ZERO_PAGE;
		if (ret == 1)
			st = PS_ANON;
	}
	/* Not filled (no memory for a page): the hole stays, and the access faults again. */
	if (ret < 0 && ret != -EEXIST)
		count(&stats.fault_retries, 1);
	run_rearm(gm, idx, 1);
	pagestate_set(gm->ps, idx, st);
	run_wake(gm, idx, 1);
	return what;
}

enum mem_fault mem_fault(struct gm *gm, uint64_t idx, void *page, bool wp)
{
	return wp ? fault_wp(gm, idx, page) : fault_missing(gm, idx, page);
}

/* --- stats and checks --- */

void mem_txn_stats(struct mem_txn_stats *out)
{
	uint64_t *src = (uint64_t *)&stats, *dst = (uint64_t *)out;

	for (size_t i = 0; i < sizeof(stats) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

/* True when a page in state st whose mapping shows pm (and maps the store or not) is consistent. */
static bool state_agrees(enum ps_state st, uint64_t pm, bool store)
{
	bool resident = mem_pm_resident(pm);
	/*
	 * Where memmap cannot tell the zero page, a window's zero page reads its
	 * reserved store offset, which a read may have made a page of zeros.
	 */
	bool file = mem_pm_file(pm) && (mem_zero_page_known() || !store);

	switch (st) {
	case PS_SHARED:
		/* Reads its frame: a mapping of the store (written since: a private copy). */
		return store;
	case PS_ZERO:
	case PS_BALLOONED:
	case PS_REPORTED:
	case PS_SWAPPED:
		/* Dropped: no page of its own, and never a frame of the store. */
		return !(resident && !mem_pm_file(pm)) && !file;
	case PS_ANON:
		/* Its own page or none, never a store frame it reads for no reason. */
		return !file;
	default:
		return true;
	}
}

int mem_check_states(struct gm *gm, struct mem_check *out)
{
	uint64_t pm[512];
	uint8_t before[512];

	memset(out, 0, sizeof(*out));
	for (unsigned int r = 0; r < gm->nr_regions; r++) {
		uint64_t idx = gm->regions[r].first_pfn_index;
		uint64_t end = idx + gm->regions[r].len / MEM_PAGE_SIZE;

		while (idx < end) {
			uint64_t n = end - idx < 512 ? end - idx : 512;

			for (uint64_t i = 0; i < n; i++)
				before[i] = (uint8_t)pagestate_get(gm->ps, idx + i);
			if (mem_pagemap(gm, idx, n, pm) != (int64_t)n)
				return -EIO;
			for (uint64_t i = 0; i < n; i++) {
				enum ps_state st = (enum ps_state)before[i];

				/* Held, or changed during the look: nothing to compare. */
				if (st == PS_BUSY || pagestate_get(gm->ps, idx + i) != st)
					continue;
				out->checked++;
				if (state_agrees(st, pm[i], mem_frame_mapped(gm, idx + i)))
					continue;
				if (!out->mismatches++) {
					out->first_bad = idx + i;
					out->first_state = (uint8_t)st;
					out->first_pm = pm[i];
				}
			}
			idx += n;
		}
	}
	return 0;
}
