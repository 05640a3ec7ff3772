/* SPDX-License-Identifier: MIT */
/*
 * The dedup engine and its scanner thread (see dedup.h).
 *
 * Overview (after ksm.c's "DOC: Overview"). The scanner walks the pages of
 * every VM in index order, DEDUP_BATCH_PAGES at a time, reading their
 * pagemap entries first so holes are never touched (reading one would fault
 * memory in). For each page, by state:
 *
 *  - PS_SHARED with a frame: if the pagemap shows a private page the guest
 *    wrote it and the kernel copied it on write: the page is PS_ANON again
 *    and its frame reference is dropped (a frame with no reference left is
 *    punched out of the store).
 *  - a frame reference but another state: another mechanism (balloon, swap)
 *    took the page over; the reference is dropped.
 *  - PS_ANON and resident: hash it. If the hash differs from the one of the
 *    previous visit the page is volatile: remember the hash, go on
 *    (stability rule). A stable zero page is dropped (PS_ZERO). Otherwise
 *    look the hash up among the frames (stable table): on a match the page
 *    is merged onto that frame. Else among the pages seen this pass
 *    (unstable table): on a match both pages are merged onto a new frame;
 *    without one the page is entered there.
 *
 * Every merge is "protect first, compare second", through a page-range
 * transaction of the memory manager (mem/txn.h): the page is claimed (the
 * loser of a race with another mechanism backs off) and write-protected (a
 * guest write now waits), compared byte for byte with the frame or the
 * other page, and only then committed as mapped onto the frame (the private
 * copy goes with the old mapping) or kept. The transaction's end sets the
 * page's final state before it wakes the waiting writers, so they retry
 * against it. After a full pass the unstable table is emptied.
 *
 * Windows. Mapping a frame page by page makes every isolated shared page a
 * host mapping of its own (two VMAs, ~500 bytes of kernel memory, ~10 us of
 * mmap work each: at 4 GiB of interleaved guests that is a million VMAs and
 * 10% of the saving). So a batch is a window of DEDUP_EXT_PAGES aligned
 * guest pages, and when a window has enough merges to make, it is visited
 * whole, claimed whole, write-protected with one call, compared page by page
 * and remapped in one step onto the store extent whose position i holds page
 * i's frame (mem_txn_end_window): frames where they match, private copies where
 * they do not, no page of their own for zero and untouched pages. Frames for
 * pages that only matched an unstable page are created at those positions,
 * so identical guests, which lay out identical pages alike, converge on one
 * extent per window. Windows that do not qualify (a page in another
 * mechanism's state, shared pages at other positions, few merges) are merged
 * page by page.
 *
 * Threads: the scanner thread (or a test calling dedup_scan) runs batches
 * with d->lock held; add/remove/configure/stats take the same lock. Index
 * lookups are RCU read-side sections; frames are freed with call_rcu. One
 * lock: d->lock.
 */
#define LOG_TAG "dedup"
#include "dedup/dedup_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/sandbox.h"
#include "core/thread.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/reclaim.h"
#include "mem/txn.h"

static bool config_ok(const struct dedup_config *cfg)
{
	/* Written so that a NaN budget fails: every comparison with NaN is false. */
	return cfg->pages_per_sec >= 1 && cfg->pages_per_sec <= DEDUP_MAX_PAGES_PER_SEC &&
	       cfg->cpu_percent >= DEDUP_MIN_CPU_PERCENT && cfg->cpu_percent <= 100;
}

/* --- running code on an RCU-registered thread --- */

struct on_thread {
	void (*fn)(void *);
	void *arg;
};

static void *on_thread_main(void *p)
{
	struct on_thread *o = p;

	o->fn(o->arg);
	return NULL;
}

/*
 * The host's main thread is not an RCU reader; the few engine calls it makes
 * that touch the index run on a short-lived registered thread instead.
 */
void dedup_run_registered(void (*fn)(void *), void *arg)
{
	struct on_thread o = { fn, arg };
	pthread_t t;

	if (thread_spawn(&t, "dedup-rcu", on_thread_main, &o) == 0) {
		pthread_join(t, NULL);
		return;
	}
	log_err("cannot start a thread for RCU work: running it unregistered");
	fn(arg);
}

/* --- frames --- */

static void free_frame(struct kv_rcu_head *head)
{
	kv_free(caa_container_of(head, struct dedup_frame, rcu));
}

/* Drop one reference to the frame in slot; the last one frees it. */
void dedup_frame_put(struct dedup *d, uint32_t slot)
{
	struct dedup_frame *fr = d->store.by_slot[slot];

	if (!fr || !fr->refs) {
		d->st.errors++;
		log_warn_ratelimited("frame reference to free slot %u", slot);
		return;
	}
	if (--fr->refs)
		return;
	dedup_index_stable_del(&d->ix, fr);
	dedup_store_release(&d->store, slot);
	d->st.frames_freed++;
	kv_rcu_call(&fr->rcu, free_frame);
}

/* Forget that v's page idx maps a frame. */
void dedup_unref_page(struct dedup *d, struct dedup_vm *v, uint64_t idx)
{
	uint32_t slot = v->frame[idx];

	v->frame[idx] = DEDUP_NO_FRAME;
	v->mapped--;
	dedup_frame_put(d, slot);
}

/* --- claiming pages --- */

/*
 * Transactions of the scanner (mem/txn.h): one per page of a pair merge,
 * the first also for windows. Thread-local: dedup_scan_vm runs on the
 * policy thread while the scanner thread runs batches (both under d->lock,
 * but a transaction is large and lives across calls within a merge).
 */
static __thread struct mem_txn tx[2];

/*
 * Claim page idx of v (PS_ANON, with a page behind it) into t,
 * write-protected. 0, -EBUSY (not ours, or a hole now), -errno.
 */
static int claim(struct dedup *d, struct mem_txn *t, struct dedup_vm *v, uint64_t idx)
{
	int64_t ret = mem_txn_claim(t, v->gm, idx, 1, MEM_FROM(PS_ANON), 0);

	/*
	 * Every caller reads the page it claimed (compare, copy, zero check).
	 * A page hashed earlier may be a hole by now, the VM's own again (the
	 * balloon took it and gave it back: the unstable index still names
	 * it); in a chunk that takes MISSING faults, reading the hole this
	 * claim holds waits for its owner, this thread, forever, with d->lock
	 * held. So the pagemap entry read once protected decides: a hole
	 * (or a marker on one) is given back unread.
	 */
	if (ret == 1 && mem_pm_is_hole(t->pm[0])) {
		mem_txn_end(t, -1);
		return -EBUSY;
	}
	if (ret == 1)
		return 0;
	if (ret < 0)
		d->st.errors++;
	return ret < 0 ? (int)ret : -EBUSY;
}

/*
 * End the claim of page idx of v in t, mapped onto fr if `fr` (it equals
 * fr), else given back unchanged. 0 when mapped; -EIO when the mapping
 * failed (the page is given back).
 */
static int end_claim(struct dedup *d, struct mem_txn *t, struct dedup_vm *v, uint64_t idx,
		     struct dedup_frame *fr)
{
	if (fr)
		mem_txn_set(t, 0, MEM_FRAME, dedup_store_off(fr->slot));
	mem_txn_end(t, d->store.fd);
	if (!fr)
		return 0;
	if (t->commit[0] != MEM_FRAME) {
		d->st.errors++;
		if (t->err == -ENOMEM)
			d->map_recount = true;
		return -EIO;
	}
	/*
	 * The page's mapping of the frame is not under userfaultfd; it need not
	 * be while it maps the frame (nothing write-protects a shared page), and
	 * a later claim registers it, which saves a syscall and VMA work per merge.
	 */
	fr->refs++;
	v->frame[idx] = fr->slot;
	v->mapped++;
	d->st.merges++;
	d->maps_added += 2; /* at most: the run, and the rest of the mapping it split */
	return 0;
}

/* --- placing a new frame --- */

/*
 * A slot for a new frame holding the content of (u, ui) and (v, vi): next to
 * the frame of a neighbouring page of either, at the same distance, so the
 * two mappings can merge into one VMA; else at ui's position in the extent
 * mirroring ui's window; else in a fresh extent.
 */
static int place_frame(struct dedup *d, struct dedup_vm *u, uint64_t ui, struct dedup_vm *v,
		       uint64_t vi, uint32_t *slot)
{
	struct dedup_vm *w[2] = { u, v };
	uint64_t wi[2] = { ui, vi };
	uint64_t win = ui / DEDUP_EXT_PAGES;
	uint32_t ext;
	int ret;

	for (int k = 1; k <= DEDUP_NEAR; k++)
		for (int s = 0; s < 2; s++)
			for (int dir = -1; dir <= 1; dir += 2) {
				int64_t n = (int64_t)wi[s] + dir * k;
				int64_t want;

				if (n < 0 || (uint64_t)n >= w[s]->nr_pages ||
				    w[s]->frame[n] == DEDUP_NO_FRAME)
					continue;
				want = (int64_t)w[s]->frame[n] - dir * k;
				if (want >= 0 && dedup_store_take(&d->store, (uint64_t)want)) {
					*slot = (uint32_t)want;
					return 0;
				}
			}
	ext = u->win_ext[win];
	if (ext != DEDUP_NO_FRAME &&
	    dedup_store_take(&d->store, (uint64_t)ext * DEDUP_EXT_PAGES + ui % DEDUP_EXT_PAGES)) {
		*slot = ext * DEDUP_EXT_PAGES + (uint32_t)(ui % DEDUP_EXT_PAGES);
		return 0;
	}
	ret = dedup_store_take_fresh(&d->store, (uint32_t)(ui % DEDUP_EXT_PAGES), slot);
	if (!ret)
		u->win_ext[win] = *slot / DEDUP_EXT_PAGES;
	return ret;
}

/* --- merging --- */

/* Merge v's page idx onto an existing frame with its hash. 0 merged, -ENOENT, -errno. */
static int merge_stable(struct dedup *d, struct dedup_vm *v, uint64_t idx, uint64_t hash)
{
	struct dedup_frame *cand[8], *match = NULL;
	struct cds_lfht_iter it;
	unsigned int n = 0;
	int ret;

	kv_rcu_read_lock();
	for (struct dedup_frame *fr = dedup_index_stable_first(&d->ix, hash, &it);
	     fr && n < ARRAY_SIZE(cand); fr = dedup_index_stable_next(&d->ix, hash, &it))
		cand[n++] = fr;
	kv_rcu_read_unlock();
	/* Frames are freed only by this thread under d->lock: cand stays valid. */
	if (!n)
		return -ENOENT;
	ret = claim(d, &tx[0], v, idx);
	if (ret) {
		d->st.merge_races++;
		return ret;
	}
	for (unsigned int i = 0; i < n && !match; i++) {
		int eq = mem_page_equal_buf(v->gm, idx, dedup_store_page(&d->store, cand[i]->slot));

		if (eq == 1)
			match = cand[i];
		else if (eq < 0)
			d->st.errors++;
	}
	/* Same hash, other content: the page changed since it was hashed (or a collision). */
	if (!match)
		d->st.merge_races++;
	ret = end_claim(d, &tx[0], v, idx, match);
	return match ? ret : -ENOENT;
}

/*
 * A new frame in slot (taken by the caller) holding a copy of page idx of gm,
 * which the caller has write-protected, so the copy is final. NULL on
 * failure, with the slot released and the error counted.
 */
static struct dedup_frame *new_frame(struct dedup *d, struct gm *gm, uint64_t idx, uint32_t slot,
				     uint64_t hash)
{
	struct dedup_frame *fr = kv_zalloc(sizeof(*fr));
	int ret = fr ? mem_page_copy_to_fd(gm, idx, d->store.fd, dedup_store_off(slot)) : -ENOMEM;

	if (ret) {
		d->st.errors++;
		log_warn_ratelimited("copying a page into the store: %s", strerror(-ret));
		dedup_store_release(&d->store, slot);
		kv_free(fr);
		return NULL;
	}
	fr->hash = hash;
	fr->slot = slot;
	d->store.by_slot[slot] = fr;
	return fr;
}

/*
 * Merge v's page idx with page ui of u, the unstable entry with the same hash,
 * onto a new frame. 0 merged; -ESTALE when u's page is no longer a candidate
 * (busy, changed).
 */
static int merge_pair(struct dedup *d, struct dedup_vm *u, uint64_t ui, struct dedup_vm *v,
		      uint64_t idx, uint64_t hash)
{
	struct dedup_frame *fr = NULL;
	uint32_t slot;
	int ret;

	if (u == v && ui == idx)
		return -ESTALE;
	if (claim(d, &tx[0], u, ui)) {
		d->st.merge_races++;
		return -ESTALE;
	}
	ret = claim(d, &tx[1], v, idx);
	if (ret) {
		end_claim(d, &tx[0], u, ui, NULL);
		d->st.merge_races++;
		return ret;
	}
	if (mem_page_equal(u->gm, ui, v->gm, idx) != 1) {
		d->st.merge_races++;
		ret = -ESTALE;
	} else {
		ret = place_frame(d, u, ui, v, idx, &slot);
		if (ret)
			d->st.errors++; /* the store could not grow */
		/* u's page is write-protected: its content is final. */
		if (!ret) {
			fr = new_frame(d, u->gm, ui, slot, hash);
			ret = fr ? 0 : -EIO;
		}
	}
	/* Each page is mapped or given back; refs counts the mapped ones. */
	end_claim(d, &tx[0], u, ui, fr);
	end_claim(d, &tx[1], v, idx, fr);
	if (ret)
		return ret;
	if (!fr->refs) {
		dedup_store_release(&d->store, slot);
		kv_free(fr);
		return -EIO;
	}
	dedup_index_stable_add(&d->ix, fr);
	return 0;
}

/* Drop a stable zero page: no frame needed, it reads zeros (MEM_ZERO). */
static void drop_zero(struct dedup *d, struct dedup_vm *v, uint64_t idx)
{
	if (claim(d, &tx[0], v, idx)) {
		d->st.merge_races++;
		return;
	}
	if (mem_page_is_zero(v->gm, idx))
		mem_txn_set(&tx[0], 0, MEM_ZERO, 0);
	mem_txn_end(&tx[0], -1);
	if (tx[0].commit[0] != MEM_ZERO) {
		d->st.merge_races++;
		return;
	}
	v->sum[idx] = 0;
	d->st.zero_pages++;
}

/* A page whose hash was the same at its previous visit: merge it, or remember it. */
static void stable_page(struct dedup *d, struct dedup_vm *v, uint64_t idx, uint64_t hash)
{
	struct dedup_uent *e;
	bool added;

	if (hash == d->hasher.zero_hash) {
		drop_zero(d, v, idx);
		return;
	}
	if (d->map_full) {
		d->st.map_refused++;
		return;
	}
	if (merge_stable(d, v, idx, hash) != -ENOENT)
		return;
	e = dedup_index_unstable_add(&d->ix, hash, v->id, (uint32_t)idx, &added);
	if (!e) {
		d->st.errors++; /* no memory to grow the table: the page is seen next pass */
		return;
	}
	if (added)
		return; /* the first page seen with this content in this pass */
	if (merge_pair(d, d->vm_by_id[e->vm_id], e->idx, v, idx, hash) == 0) {
		dedup_index_unstable_del(&d->ix, e);
		return;
	}
	/* That page is gone or changed: this one takes its place. */
	if (pagestate_get(v->ps, idx) == PS_ANON) {
		e->vm_id = v->id;
		e->idx = (uint32_t)idx;
	}
}

/*
 * True when page idx of v, whose pagemap entry is pm, reads zeros without a
 * page of its own: the kernel's zero page where memmap recognises it, else
 * the store offset of a window's zero page. Such a kernel (one that forbids
 * the zero page, or a pagemap hiding PFNs: mem_zero_page_known) leaves a
 * window's zero pages holes of the store (mem_txn_end_window), so there a page in
 * a mapping of the store that maps no frame is a zero page of a window (every
 * other such page is private: kept, or copied on write). It reads its
 * reserved offset: a hole, or a store page a read made there while the
 * window was not registered for MISSING faults (still zeros: the store is
 * written only at frames). Either way it costs the guest nothing and a window
 * keeps it so.
 */
static bool window_zero(const struct dedup_vm *v, uint64_t idx, uint64_t pm)
{
	if (mem_zero_page_known())
		return mem_pm_is_zero_page(pm);
	return v->frame[idx] == DEDUP_NO_FRAME && mem_page_in_store_mapping(v->gm, idx) &&
	       (mem_pm_is_hole(pm) || mem_pm_file(pm));
}

/* What a visit found, for the caller to act on (per page, or for a window). */
enum prep {
	PREP_NONE,	/* nothing to do now; the page cannot take part in a window */
	PREP_SHARED,	/* maps its frame (v->frame[idx]) */
	PREP_ZEROPTE,	/* reads zeros with no page of its own: the zero page, or a window's
			 * reserved store offset (a zero page of the window, see window_zero) */
	PREP_HOLE,	/* unpopulated anonymous memory (never touched, or dropped as zero) */
	PREP_KEEP,	/* a populated private page not (yet) worth merging */
	PREP_STABLE,	/* a private page whose hash did not change since its last visit */
};

/*
 * Visit page idx of v whose pagemap entry is pm: notice copy-on-write breaks
 * and pages other mechanisms took, hash private pages and apply the stability
 * rule. *hash is set for PREP_STABLE.
 */
static enum prep prepare(struct dedup *d, struct dedup_vm *v, uint64_t idx, uint64_t pm,
			 uint64_t *hash)
{
	enum ps_state st = pagestate_get(v->ps, idx);

	if (v->frame[idx] != DEDUP_NO_FRAME) {
		if (st == PS_SHARED) {
			if (!mem_pm_is_private(pm))
				return PREP_SHARED; /* reads the frame (or not faulted in since) */
			if (mem_page_unshared(v->gm, idx))
				return PREP_NONE;
			dedup_unref_page(d, v, idx);
			d->st.cow_breaks++;
			v->sum[idx] = 0;
			return PREP_KEEP;
		}
		if (st == PS_BUSY)
			return PREP_NONE; /* another mechanism is working on it: later */
		/* Balloon, swap or reporting took the page and replaced its mapping. */
		dedup_unref_page(d, v, idx);
		d->st.released++;
	}
	if ((st == PS_ZERO || st == PS_ANON) && window_zero(v, idx, pm)) {
		v->sum[idx] = 0;
		return PREP_ZEROPTE;
	}
	if ((st == PS_ZERO || st == PS_ANON) && mem_pm_is_hole(pm)) {
		v->sum[idx] = 0;
		return PREP_HOLE;
	}
	if (st != PS_ANON || !mem_pm_resident(pm) || mem_pm_file(pm)) {
		v->sum[idx] = 0;
		return PREP_NONE;
	}
	mem_page_hash(v->gm, idx, d->hasher.fn, d->hasher.secret, hash);
	/* The group's own index keys; zero pages are dropped alike in every group. */
	if (*hash != d->hasher.zero_hash)
		*hash ^= v->salt;
	d->st.pages_scanned++;
	/* 32 bits of the last hash tell a changed page (as ksm.c's oldchecksum). */
	if ((uint32_t)*hash != v->sum[idx]) {
		if (v->sum[idx])
			d->pass_volatile++;
		else
			d->pass_new++;
		v->sum[idx] = (uint32_t)*hash;
		return PREP_KEEP;
	}
	return PREP_STABLE;
}

/* Visit page idx of v whose pagemap entry is pm, merging page by page. */
static void visit(struct dedup *d, struct dedup_vm *v, uint64_t idx, uint64_t pm)
{
	uint64_t hash;

	if (prepare(d, v, idx, pm, &hash) == PREP_STABLE)
		stable_page(d, v, idx, hash);
}

/* --- windows --- */

/*
 * Identical guests lay out identical pages alike, so a window of
 * DEDUP_EXT_PAGES guest pages can be remapped as a whole onto one store
 * extent whose position i holds the frame for the window's page i: one
 * mapping for the window instead of two per isolated shared page (about
 * 500 bytes of kernel memory per shared page), and a fraction of the cost of
 * a mapping call per page (mem_txn_end_window). Pages that are not shared keep
 * their content (private copies) or become zero pages; the store positions of
 * zero pages are reserved so no frame, and no hole punch, ever lands on them.
 *
 * A window qualifies when every page is in a state the scanner may take
 * (private, shared at the window's extent, zero, or untouched), and when it
 * brings at least DEDUP_WINDOW_MIN new merges or zero drops. Otherwise its
 * pages are merged one by one. A window with untouched pages is claimed with
 * its holes held (MEM_TXN_HOLES) while it is rebuilt, and they stay
 * untouched in the new mapping: populating them would cost a page each on a kernel that does
 * not map its zero page on a read. Zero pages and untouched pages cost no
 * memory in the new mapping on any kernel (mem_txn_end_window), so they weigh
 * nothing in the decision.
 */
struct wpage {
	uint8_t prep;		/* enum prep */
	uint8_t what;		/* enum wwhat */
	uint8_t kind;		/* enum mem_win_kind, decided once protected */
	uint64_t hash;		/* PREP_STABLE */
	struct dedup_frame *fr;	/* W_FRAME: the frame at the window's position */
};

enum wwhat {
	W_KEEP,		/* stays private */
	W_FRAME,	/* merges onto the frame at its position */
	W_PAIR,		/* an unstable page matches: a new frame at its position */
	W_ZERO,		/* a stable zero page */
	W_SHARED,	/* already maps the frame at its position */
	W_ZEROPTE,	/* already reads zeros without a page of its own */
	W_HOLE,		/* untouched: held as a hole while the window is rebuilt */
};

/*
 * Remap the window claimed in t onto extent ext: decide each page now that
 * it is protected, and end t with the window's new mapping. 0, or -errno
 * with every page given back (t is over either way).
 */
static int window_convert(struct dedup *d, struct dedup_vm *v, struct mem_txn *t, struct wpage *w,
			  uint32_t ext)
{
	struct dedup_frame *fresh[DEDUP_EXT_PAGES];
	uint8_t kind[DEDUP_EXT_PAGES] = { 0 };
	uint64_t idx = t->idx, base = (uint64_t)ext * DEDUP_EXT_PAGES;
	unsigned int n = t->n, nfresh = 0;
	int ret;

	/*
	 * Every page must be held: populated ones are (write protection), and so
	 * are the untouched ones of a window claimed with its holes. Those, and
	 * zero pages without a page of their own, are never read here: the read
	 * could wait for this thread.
	 */
	for (unsigned int i = 0; i < n; i++)
		if (!mem_pm_is_populated(t->pm[i]) && w[i].what != W_HOLE &&
		    w[i].what != W_ZEROPTE) {
			mem_txn_end(t, -1);
			return -EAGAIN;
		}
	for (unsigned int i = 0; i < n; i++) {
		uint64_t slot = base + i, pm = t->pm[i];
		struct wpage *p = &w[i];

		p->kind = MEM_WIN_KEEP;
		switch (p->what) {
		case W_SHARED:
			/* Written since the visit: a private copy now (a copy-on-write break). */
			p->kind = mem_pm_is_private(pm) ? MEM_WIN_KEEP : MEM_WIN_FRAME;
			break;
		case W_ZEROPTE:
		case W_HOLE:
			/* Written since the visit: a private page, kept. */
			if (!window_zero(v, idx + i, pm) && !mem_pm_is_hole(pm))
				break;
			/*
			 * Still zeros without a page: so in the new mapping too, at a
			 * reserved slot. Where this window's slot holds a frame, a
			 * private page of zeros (what a first touch would have cost).
			 */
			p->kind = dedup_store_reserve_zero(&d->store, slot) ? MEM_WIN_ZERO
									    : MEM_WIN_ZEROED;
			break;
		case W_ZERO:
			if (mem_page_is_zero(v->gm, idx + i) && dedup_store_reserve_zero(&d->store, slot))
				p->kind = MEM_WIN_ZERO;
			break;
		case W_FRAME:
			/* Protect first, compare second. */
			if (mem_page_equal_buf(v->gm, idx + i, dedup_store_page(&d->store, p->fr->slot)) == 1)
				p->kind = MEM_WIN_FRAME;
			else
				d->st.merge_races++;
			break;
		case W_PAIR: {
			struct dedup_frame *fr;

			/* The page is protected: a copy of it is its frame. */
			if (!dedup_store_take(&d->store, slot))
				break;
			fr = new_frame(d, v->gm, idx + i, (uint32_t)slot, p->hash);
			if (!fr)
				break;
			p->fr = fr;
			fresh[nfresh++] = fr;
			p->kind = MEM_WIN_FRAME;
			break;
		}
		default:
			break;
		}
		kind[i] = p->kind;
		/* What each page's state becomes: untouched and zero pages stay what they were. */
		if (p->kind == MEM_WIN_FRAME)
			mem_txn_set(t, i, MEM_FRAME, dedup_store_off((uint32_t)slot));
		else if (p->kind == MEM_WIN_ZERO && p->what == W_ZERO)
			mem_txn_set(t, i, MEM_ZERO, 0);
		else if (p->kind == MEM_WIN_KEEP || p->kind == MEM_WIN_ZEROED)
			mem_txn_set(t, i, MEM_PRIVATE, 0); /* a page of its own */
		else
			mem_txn_set(t, i, MEM_KEEP, 0);
	}
	ret = mem_txn_end_window(t, d->store.fd, dedup_store_off((uint32_t)base), kind);
	if (ret == -ENOMEM)
		d->map_recount = true;
	if (ret) {
		for (unsigned int i = 0; i < nfresh; i++) {
			dedup_store_release(&d->store, fresh[i]->slot);
			kv_free(fresh[i]);
		}
		return ret;
	}
	for (unsigned int i = 0; i < nfresh; i++)
		dedup_index_stable_add(&d->ix, fresh[i]);
	for (unsigned int i = 0; i < n; i++) {
		struct wpage *p = &w[i];
		uint64_t j = idx + i;

		if (p->kind == MEM_WIN_FRAME && p->what != W_SHARED) {
			p->fr->refs++;
			v->frame[j] = p->fr->slot;
			v->mapped++;
			d->st.merges++;
		} else if (p->kind == MEM_WIN_ZERO && p->what == W_ZERO) {
			d->st.zero_pages++;
			v->sum[j] = 0;
		} else if (p->kind == MEM_WIN_KEEP && p->what == W_SHARED) {
			/* A private copy of a shared page written since. */
			dedup_unref_page(d, v, j);
			d->st.cow_breaks++;
		}
	}
	v->win_ext[idx / DEDUP_EXT_PAGES] = ext;
	d->st.windows++;
	d->maps_added += 2;
	return 0;
}

/*
 * One window of v (idx aligned, DEDUP_EXT_PAGES pages, one region): visit
 * every page, then remap it whole if it qualifies, else merge page by page.
 */
static void window_batch(struct dedup *d, struct dedup_vm *v, uint64_t idx, const uint64_t *pm)
{
	static __thread struct wpage w[DEDUP_EXT_PAGES];
	const unsigned int n = DEDUP_EXT_PAGES;
	uint32_t ext = DEDUP_NO_FRAME;
	unsigned int gain = 0, holes = 0;
	bool whole = d->cfg.windows;

	for (unsigned int i = 0; i < n; i++) {
		w[i].prep = (uint8_t)prepare(d, v, idx + i, pm[i], &w[i].hash);
		w[i].what = W_KEEP;
		w[i].fr = NULL;
		if (w[i].prep == PREP_NONE)
			whole = false;
	}
	/* The window's extent: the one its shared pages or its matching frames are in. */
	for (unsigned int i = 0; i < n && whole; i++) {
		struct wpage *p = &w[i];

		if (p->prep == PREP_SHARED) {
			uint32_t e = v->frame[idx + i] / DEDUP_EXT_PAGES;

			if (v->frame[idx + i] % DEDUP_EXT_PAGES != i ||
			    (ext != DEDUP_NO_FRAME && e != ext))
				whole = false; /* shared one by one, elsewhere: leave it be */
			ext = e;
			p->what = W_SHARED;
		} else if (p->prep == PREP_ZEROPTE) {
			p->what = W_ZEROPTE;
		} else if (p->prep == PREP_HOLE) {
			p->what = W_HOLE;
			holes++;
		} else if (p->prep == PREP_STABLE && p->hash == d->hasher.zero_hash) {
			p->what = W_ZERO;
			gain++;
		}
	}
	for (unsigned int i = 0; i < n && whole; i++) {
		struct wpage *p = &w[i];
		struct dedup_frame *fr;
		struct cds_lfht_iter it;

		if (p->prep != PREP_STABLE || p->what == W_ZERO)
			continue;
		/* One walk of the hash's frames: the first may set the extent, then find ours. */
		kv_rcu_read_lock();
		fr = dedup_index_stable_first(&d->ix, p->hash, &it);
		if (fr && ext == DEDUP_NO_FRAME && fr->slot % DEDUP_EXT_PAGES == i)
			ext = fr->slot / DEDUP_EXT_PAGES;
		for (; fr && ext != DEDUP_NO_FRAME; fr = dedup_index_stable_next(&d->ix, p->hash, &it))
			if (fr->slot == (uint64_t)ext * DEDUP_EXT_PAGES + i) {
				p->fr = fr;
				break;
			}
		kv_rcu_read_unlock();
		if (p->fr) {
			p->what = W_FRAME;
			gain++;
		}
	}
	/* Pages another VM showed this pass: new frames, placed to mirror that VM's window. */
	for (unsigned int i = 0; i < n && whole; i++) {
		struct wpage *p = &w[i];
		struct dedup_uent *e;

		if (p->prep != PREP_STABLE || p->what != W_KEEP)
			continue;
		e = dedup_index_unstable_find(&d->ix, p->hash);
		/*
		 * Its own entry (the policy's scan of this VM entered it earlier in
		 * this pass) is no partner: a frame for it would be shared by no one.
		 */
		if (!e || (e->vm_id == v->id && e->idx == idx + i))
			continue;
		if (ext == DEDUP_NO_FRAME && e->idx % DEDUP_EXT_PAGES == i &&
		    d->vm_by_id[e->vm_id]->win_ext[e->idx / DEDUP_EXT_PAGES] != DEDUP_NO_FRAME)
			ext = d->vm_by_id[e->vm_id]->win_ext[e->idx / DEDUP_EXT_PAGES];
		p->what = W_PAIR;
		gain++;
	}
	if (whole && gain >= DEDUP_WINDOW_MIN && ext == DEDUP_NO_FRAME) {
		ext = v->win_ext[idx / DEDUP_EXT_PAGES];
		if (ext == DEDUP_NO_FRAME && dedup_store_new_extent(&d->store, &ext)) {
			d->st.errors++; /* the store could not grow: page by page for now */
			whole = false;
		}
	}
	if (whole && gain >= DEDUP_WINDOW_MIN) {
		struct mem_txn *t = &tx[0];
		int64_t got;

		/* Own every page, holes held too: a racing mechanism wins or loses cleanly. */
		got = mem_txn_claim(t, v->gm, idx, n,
				    MEM_FROM(PS_ANON) | MEM_FROM(PS_SHARED) | MEM_FROM(PS_ZERO),
				    MEM_TXN_WHOLE | (holes ? MEM_TXN_HOLES : 0));
		if (got == -EBUSY) {
			d->st.merge_races++;
		} else if (got < 0) {
			d->st.errors++;
		} else if (window_convert(d, v, t, w, ext)) {
			d->st.window_aborts++;
		} else {
			/* Pages that found partners: the partners match the new frames next time. */
			for (unsigned int i = 0; i < n; i++)
				if (w[i].what == W_PAIR && w[i].kind == MEM_WIN_FRAME) {
					struct dedup_uent *e = dedup_index_unstable_find(&d->ix, w[i].hash);

					if (e)
						dedup_index_unstable_del(&d->ix, e);
				}
			for (unsigned int i = 0; i < n; i++)
				if (w[i].prep == PREP_STABLE && w[i].kind == MEM_WIN_KEEP) {
					bool added;

					if (!dedup_index_unstable_add(&d->ix, w[i].hash, v->id,
								      (uint32_t)(idx + i), &added))
						d->st.errors++;
				}
			return;
		}
	}
	for (unsigned int i = 0; i < n; i++)
		if (w[i].prep == PREP_STABLE)
			stable_page(d, v, idx + i, w[i].hash);
}

/* End of a pass over every VM: KSM rebuilds its unstable tree here. */
static void end_pass(struct dedup *d)
{
	uint64_t changes = d->st.merges + d->st.zero_pages + d->st.cow_breaks + d->st.released;
	bool idle = changes == d->changes_at_pass && !d->pass_volatile && !d->pass_new;

	d->st.full_scans++;
	d->st.pages_volatile = d->pass_volatile;
	d->st.pages_unshared = d->ix.nr_unstable;
	/*
	 * A pass that changed nothing and saw nothing change: slow down, halving
	 * the rate per idle pass down to 1/2^DEDUP_IDLE_SHIFT_MAX (ksm.c has
	 * smart_scan and its advisor for the same); any change restores it.
	 */
	if (!idle)
		d->idle_shift = 0;
	else if (d->idle_shift < DEDUP_IDLE_SHIFT_MAX)
		d->idle_shift++;
	d->changes_at_pass = changes;
	d->pass_volatile = 0;
	d->pass_new = 0;
	dedup_index_unstable_clear(&d->ix, DEDUP_NO_VM);
	/* Count again when merges changed the mappings, or to see a raised limit. */
	if ((d->maps_added != d->maps_at_count || d->map_full) &&
	    kv_clock_ns(CLOCK_MONOTONIC) - d->pass_vmas_ns >= DEDUP_VMA_COUNT_NS)
		dedup_count_vmas(d);
}

/*
 * Before a batch of merges, the scanner's or the policy's: whether its
 * mappings fit under vm.max_map_count (raising it if needed). The count is
 * an estimate between readings of the mappings: more than merges splits
 * them (userfaultfd registrations of chunks and windows). When the kernel
 * refused a mapping for want of room, read them again now, which raises the
 * limit, rather than at the pass's end; not more often than every
 * DEDUP_VMA_RECOUNT_NS, since ENOMEM may also mean the host is out of
 * memory, and every merge fails then. d->lock held.
 */
static void map_check(struct dedup *d)
{
	if (d->map_recount &&
	    kv_clock_ns(CLOCK_MONOTONIC) - d->pass_vmas_ns >= DEDUP_VMA_RECOUNT_NS) {
		d->map_recount = false;
		dedup_count_vmas(d);
	}
	/* A batch may add two mappings per merged page, and pairs merge two pages. */
	d->map_full = !dedup_map_room(d, 4 * DEDUP_BATCH_PAGES);
}

/*
 * One batch: up to `max` pages of the VM under the cursor, within one region
 * (pagemap follows host addresses). Returns pages visited. d->lock held.
 */
static uint64_t batch(struct dedup *d, uint64_t max)
{
	static __thread uint64_t pm[DEDUP_BATCH_PAGES];
	struct dedup_vm *v;
	uint64_t idx, n;
	int64_t got;

	if (!d->nr_vms)
		return 0;
	if (d->cur_vm >= d->nr_vms) {
		d->cur_vm = 0;
		d->cur_idx = 0;
	}
	map_check(d);
	v = d->vms[d->cur_vm];
	idx = d->cur_idx;
	n = v->nr_pages - idx;
	if (n > max)
		n = max;
	if (n > DEDUP_BATCH_PAGES)
		n = DEDUP_BATCH_PAGES;
	/* Stay within one region: a gpa jump means the next page is in the other. */
	while (n > 1 && mem_index_gpa(v->gm, idx + n - 1) - mem_index_gpa(v->gm, idx) !=
				(n - 1) * MEM_PAGE_SIZE)
		n /= 2;
	got = n ? mem_pagemap(v->gm, idx, n, pm) : 0;
	if (got <= 0) {
		if (got < 0)
			d->st.errors++;
		got = (int64_t)n; /* skip the range rather than spin on it */
		for (uint64_t i = 0; i < n; i++)
			pm[i] = 0;
	}
	if (got == DEDUP_EXT_PAGES && idx % DEDUP_EXT_PAGES == 0)
		window_batch(d, v, idx, pm);
	else
		for (int64_t i = 0; i < got; i++)
			visit(d, v, idx + (uint64_t)i, pm[i]);
	dedup_index_stable_fit(&d->ix);
	d->cur_idx = idx + (uint64_t)got;
	if (d->cur_idx >= v->nr_pages) {
		d->cur_idx = 0;
		if (++d->cur_vm >= d->nr_vms) {
			d->cur_vm = 0;
			end_pass(d);
		}
	}
	return (uint64_t)got;
}

int64_t dedup_scan(struct dedup *d, uint64_t max_pages)
{
	uint64_t done = 0;

	pthread_mutex_lock(&d->lock);
	while (done < max_pages && d->nr_vms) {
		uint64_t n = batch(d, max_pages - done);

		if (!n)
			break;
		done += n;
	}
	pthread_mutex_unlock(&d->lock);
	return (int64_t)done;
}

int64_t dedup_scan_pass(struct dedup *d)
{
	uint64_t done = 0, scans;

	pthread_mutex_lock(&d->lock);
	scans = d->st.full_scans;
	while (d->nr_vms && d->st.full_scans == scans)
		done += batch(d, DEDUP_BATCH_PAGES);
	pthread_mutex_unlock(&d->lock);
	return (int64_t)done;
}

int64_t dedup_scan_vm(struct dedup *d, struct gm *gm)
{
	static __thread uint64_t pm[DEDUP_BATCH_PAGES];
	uint64_t done = 0;

	/* d->lock is taken per batch so the scanner and the stats are not held up. */
	for (unsigned int r = 0; r < mem_nr_regions(gm); r++) {
		gpa_t gpa;
		uint64_t len, idx, end;

		mem_region(gm, r, &gpa, &len);
		idx = (uint64_t)mem_page_index(gm, gpa);
		end = idx + len / MEM_PAGE_SIZE;
		while (idx < end) {
			uint64_t n = end - idx < DEDUP_BATCH_PAGES ? end - idx : DEDUP_BATCH_PAGES;
			struct dedup_vm *v = NULL;
			int64_t got;

			pthread_mutex_lock(&d->lock);
			for (unsigned int i = 0; i < d->nr_vms; i++)
				if (d->vms[i]->gm == gm)
					v = d->vms[i];
			if (v)
				map_check(d);
			got = v ? mem_pagemap(gm, idx, n, pm) : -ENOENT;
			for (int64_t i = 0; i < got; i++)
				visit(d, v, idx + (uint64_t)i, pm[i]);
			/* The policy merges with the scanner off too: the table must follow. */
			dedup_index_stable_fit(&d->ix);
			pthread_mutex_unlock(&d->lock);
			if (got <= 0)
				return done ? (int64_t)done : got;
			idx += (uint64_t)got;
			done += (uint64_t)got;
		}
	}
	return (int64_t)done;
}

/* --- the scanner thread --- */

double dedup_pace_owed(const struct dedup_config *cfg, unsigned int idle_shift, uint64_t pages,
		       uint64_t cpu_ns)
{
	uint64_t rate = idle_shift < 64 ? cfg->pages_per_sec >> idle_shift : 0;
	double share = cfg->cpu_percent / 100.0, owed, cpu;

	/* No budget at all (0, negative or NaN): owe the most, never divide by it. */
	if (!(share > 0))
		return DEDUP_PACE_MAX_S;
	owed = (double)pages / (double)(rate ?: 1);
	cpu = (double)cpu_ns / 1e9 / share;
	if (cpu > owed)
		owed = cpu;
	/* A tiny budget makes the quotient huge or infinite: bound it. */
	return owed <= DEDUP_PACE_MAX_S ? owed : DEDUP_PACE_MAX_S;
}

/*
 * Batches, paced so that neither the page rate nor the CPU budget is
 * exceeded: after each batch the thread owes the longer of (pages / rate)
 * and (its CPU time / budget) in wall time, and sleeps off the debt once it
 * exceeds a couple of milliseconds (ksm.c sleeps between fixed batches; a
 * debt keeps the average exact without sleeping after every batch). The
 * debt stays within DEDUP_PACE_MAX_S, so the deadline below never overflows,
 * and a new rate or budget forgives what was owed under the old one.
 */
static void *scanner(void *arg)
{
	struct dedup *d = arg;
	double debt = 0;
	uint64_t t_rate = kv_clock_ns(CLOCK_MONOTONIC), pages_rate = 0;
	struct dedup_config last;

	sandbox_enter(SANDBOX_DEDUP);
	pthread_mutex_lock(&d->lock);
	last = d->cfg;
	while (!d->stop) {
		struct dedup_config cfg = d->cfg;
		unsigned int idle_shift = d->idle_shift;
		uint64_t t0, t1, c0, c1, n;

		if (!cfg.enabled || !d->nr_vms) {
			pthread_cond_wait(&d->wake, &d->lock);
			debt = 0;
			continue;
		}
		if (cfg.pages_per_sec != last.pages_per_sec || cfg.cpu_percent != last.cpu_percent)
			debt = debt > 0 ? 0 : debt;
		last = cfg;
		pthread_mutex_unlock(&d->lock);
		t0 = kv_clock_ns(CLOCK_MONOTONIC);
		c0 = kv_clock_ns(CLOCK_THREAD_CPUTIME_ID);
		n = (uint64_t)dedup_scan(d, DEDUP_BATCH_PAGES);
		t1 = kv_clock_ns(CLOCK_MONOTONIC);
		c1 = kv_clock_ns(CLOCK_THREAD_CPUTIME_ID);
		debt += dedup_pace_owed(&cfg, idle_shift, n, c1 - c0) - (double)(t1 - t0) / 1e9;
		if (debt < -0.05)
			debt = -0.05; /* no bursts after a slow stretch */
		if (debt > DEDUP_PACE_MAX_S)
			debt = DEDUP_PACE_MAX_S;
		pages_rate += n;
		pthread_mutex_lock(&d->lock);
		d->cpu_seconds = (double)c1 / 1e9;
		if (t1 - t_rate >= 1000000000ULL) {
			d->rate = (double)pages_rate * 1e9 / (double)(t1 - t_rate);
			t_rate = t1;
			pages_rate = 0;
		}
		if (debt > 0.002 && !d->stop) {
			struct timespec until;
			uint64_t s0 = kv_clock_ns(CLOCK_MONOTONIC), end;

			clock_gettime(CLOCK_REALTIME, &until);
			end = (uint64_t)until.tv_sec * 1000000000ULL + (uint64_t)until.tv_nsec +
			      (uint64_t)(debt * 1e9);
			until.tv_sec = (time_t)(end / 1000000000ULL);
			until.tv_nsec = (long)(end % 1000000000ULL);
			pthread_cond_timedwait(&d->wake, &d->lock, &until);
			debt -= (double)(kv_clock_ns(CLOCK_MONOTONIC) - s0) / 1e9;
		}
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

/* --- engine lifecycle --- */

int dedup_create(const struct dedup_config *cfg, struct dedup **out)
{
	struct dedup *d;
	uint64_t seed = 0;
	int ret;

	if (!config_ok(cfg))
		return -EINVAL;
	d = kv_zalloc(sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->cfg = *cfg;
	d->store.fd = -1;
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->wake, NULL);
	if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
		seed = kv_clock_ns(CLOCK_MONOTONIC) ^ (uint64_t)getpid() << 32;
	dedup_hasher_init(&d->hasher, seed);
	ret = dedup_store_init(&d->store);
	if (ret) {
		log_err("frame store memfd: %s", strerror(-ret));
		goto out_free;
	}
	ret = dedup_index_init(&d->ix);
	if (ret)
		goto out_store;
	d->st.vma_bytes = DEDUP_VMA_BYTES;
	dedup_map_room(d, 0); /* learn vm.max_map_count */
	log_info("page sharing: XXH3-64 (%s), %llu pages/s, %.0f%% CPU", d->hasher.isa,
		 (unsigned long long)cfg->pages_per_sec, cfg->cpu_percent);
	*out = d;
	return 0;

out_store:
	dedup_store_fini(&d->store);
out_free:
	pthread_cond_destroy(&d->wake);
	pthread_mutex_destroy(&d->lock);
	kv_free(d);
	return ret;
}

int dedup_start(struct dedup *d)
{
	int ret = thread_spawn(&d->thread, "dedup", scanner, d);

	if (ret)
		return ret;
	d->running = true;
	return 0;
}

static void destroy_index(void *arg)
{
	struct dedup *d = arg;

	dedup_index_fini(&d->ix);
	/* Every frame freed with call_rcu is gone before the engine is. */
	kv_rcu_barrier();
}

void dedup_destroy(struct dedup *d)
{
	if (!d)
		return;
	if (d->running) {
		pthread_mutex_lock(&d->lock);
		d->stop = true;
		pthread_cond_broadcast(&d->wake);
		pthread_mutex_unlock(&d->lock);
		pthread_join(d->thread, NULL);
	}
	/* VMs still here (an unwinding host): forget their references with them. */
	for (unsigned int i = 0; i < d->nr_vms; i++) {
		kv_free(d->vms[i]->sum);
		kv_free(d->vms[i]->frame);
		kv_free(d->vms[i]->win_ext);
		kv_free(d->vms[i]->name);
		kv_free(d->vms[i]);
	}
	kv_free(d->vms);
	kv_free(d->vm_by_id);
	dedup_run_registered(destroy_index, d);
	/* Frames left in the store (VMs never removed) go with it. */
	if (d->store.by_slot)
		for (uint64_t s = 0; s < (uint64_t)d->store.nr_ext * DEDUP_EXT_PAGES; s++)
			if (d->store.by_slot[s] != DEDUP_ZERO_RESERVED)
				kv_free(d->store.by_slot[s]);
	dedup_store_fini(&d->store);
	pthread_cond_destroy(&d->wake);
	pthread_mutex_destroy(&d->lock);
	kv_free(d);
}

int dedup_add_vm(struct dedup *d, struct gm *gm, const char *name, uint64_t salt)
{
	struct dedup_vm *v = kv_zalloc(sizeof(*v));
	uint64_t n = mem_nr_pages(gm), wins = n / DEDUP_EXT_PAGES + 1;
	struct dedup_vm **vms;

	if (!v)
		return -ENOMEM;
	if (n > UINT32_MAX) {
		kv_free(v);
		return -E2BIG; /* page indexes are 32-bit in the index: 16 TiB */
	}
	v->gm = gm;
	v->ps = mem_pagestate(gm);
	v->nr_pages = n;
	v->salt = salt;
	v->name = kv_strdup(name ? name : "vm");
	v->sum = kv_calloc(n, sizeof(*v->sum));
	v->frame = kv_calloc(n, sizeof(*v->frame));
	v->win_ext = kv_calloc(wins, sizeof(*v->win_ext));
	if (!v->name || !v->sum || !v->frame || !v->win_ext)
		goto out_free;
	memset(v->frame, 0xff, n * sizeof(*v->frame));
	memset(v->win_ext, 0xff, wins * sizeof(*v->win_ext));
	pthread_mutex_lock(&d->lock);
	vms = kv_realloc(d->vms, (d->nr_vms + 1) * sizeof(*vms));
	if (!vms) {
		pthread_mutex_unlock(&d->lock);
		goto out_free;
	}
	d->vms = vms;
	vms = kv_realloc(d->vm_by_id, (d->nr_ids + 1) * sizeof(*vms));
	if (!vms) {
		pthread_mutex_unlock(&d->lock);
		goto out_free;
	}
	d->vm_by_id = vms;
	v->id = d->nr_ids++;
	d->vm_by_id[v->id] = v;
	d->vms[d->nr_vms++] = v;
	pthread_cond_broadcast(&d->wake);
	pthread_mutex_unlock(&d->lock);
	return 0;

out_free:
	kv_free(v->sum);
	kv_free(v->frame);
	kv_free(v->win_ext);
	kv_free(v->name);
	kv_free(v);
	return -ENOMEM;
}

struct remove_args {
	struct dedup *d;
	struct dedup_vm *v;
};

static void remove_locked(void *arg)
{
	struct remove_args *a = arg;
	struct dedup *d = a->d;
	struct dedup_vm *v = a->v;

	dedup_index_unstable_clear(&d->ix, v->id);
	d->vm_by_id[v->id] = NULL;
	/* Its memory is about to be unmapped: its frame references go with it. */
	for (uint64_t i = 0; i < v->nr_pages; i++)
		if (v->frame[i] != DEDUP_NO_FRAME)
			dedup_unref_page(d, v, i);
	dedup_index_stable_fit(&d->ix);
}

uint64_t dedup_group_salt(const char *name)
{
	/* Never 0 but for the default group: a named group keys apart from it. */
	return *name ? XXH3_64bits(name, strlen(name)) | 1 : 0;
}

struct group_args {
	struct dedup *d;
	struct dedup_vm *v;
	uint64_t salt;
	uint64_t unshared;
};

/*
 * Leave every frame: pages of the old group's frames would stay paired with
 * the old group's VMs (the frames are found by the old salt), and a page of
 * two groups is the side channel groups are there to close.
 */
static void set_group_locked(void *arg)
{
	struct group_args *a = arg;
	struct dedup *d = a->d;
	struct dedup_vm *v = a->v;

	v->salt = a->salt;
	dedup_index_unstable_clear(&d->ix, v->id);
	for (uint64_t i = 0; i < v->nr_pages; i++) {
		if (v->frame[i] == DEDUP_NO_FRAME)
			continue;
		/*
		 * Not on its frame any more (balloon, swap), or written since:
		 * the scanner's next visit releases it as it always does.
		 */
		if (mem_page_break_share(v->gm, i) || mem_page_unshared(v->gm, i))
			continue;
		dedup_unref_page(d, v, i);
		v->sum[i] = 0;
		a->unshared++;
	}
	d->st.group_unshares += a->unshared;
	dedup_index_stable_fit(&d->ix);
}

int dedup_set_group(struct dedup *d, struct gm *gm, uint64_t salt, uint64_t *unshared)
{
	struct group_args a = { .d = d, .salt = salt };

	pthread_mutex_lock(&d->lock);
	a.v = dedup_find_vm(d, gm);
	if (a.v && a.v->salt != salt)
		dedup_run_registered(set_group_locked, &a);
	pthread_mutex_unlock(&d->lock);
	if (unshared)
		*unshared = a.unshared;
	return a.v ? 0 : -ENOENT;
}

struct dedup_vm *dedup_find_vm(struct dedup *d, struct gm *gm)
{
	for (unsigned int i = 0; i < d->nr_vms; i++)
		if (d->vms[i]->gm == gm)
			return d->vms[i];
	return NULL;
}

void dedup_remove_vm(struct dedup *d, struct gm *gm)
{
	struct remove_args a = { d, NULL };
	unsigned int i;

	pthread_mutex_lock(&d->lock);
	for (i = 0; i < d->nr_vms; i++)
		if (d->vms[i]->gm == gm)
			break;
	if (i == d->nr_vms) {
		pthread_mutex_unlock(&d->lock);
		return;
	}
	a.v = d->vms[i];
	dedup_run_registered(remove_locked, &a);
	memmove(&d->vms[i], &d->vms[i + 1], (d->nr_vms - i - 1) * sizeof(*d->vms));
	d->nr_vms--;
	if (d->cur_vm > i) {
		d->cur_vm--;
	} else if (d->cur_vm == i) {
		d->cur_idx = 0;
	}
	pthread_mutex_unlock(&d->lock);
	kv_free(a.v->sum);
	kv_free(a.v->frame);
	kv_free(a.v->win_ext);
	kv_free(a.v->name);
	kv_free(a.v);
}

int dedup_configure(struct dedup *d, const struct dedup_config *cfg)
{
	if (!config_ok(cfg))
		return -EINVAL;
	pthread_mutex_lock(&d->lock);
	d->cfg = *cfg;
	pthread_cond_broadcast(&d->wake);
	pthread_mutex_unlock(&d->lock);
	return 0;
}

void dedup_get_config(struct dedup *d, struct dedup_config *out)
{
	pthread_mutex_lock(&d->lock);
	*out = d->cfg;
	pthread_mutex_unlock(&d->lock);
}
