/* SPDX-License-Identifier: MIT */
/*
 * Snapshot images as frames of the store, mapped into clones (dedup.h).
 *
 * Clones of one snapshot start with identical memory, laid out alike. So
 * rather than restoring each clone's pages as its own and letting the
 * scanner find them equal (two visits each, a copy per clone until then), the
 * engine holds the image's pages once, as frames, and maps them into every
 * fresh clone copy-on-write. Each window of DEDUP_EXT_PAGES pages of the
 * image gets an extent of the store of its own, its page i at position i, so
 * a clone's window is one mapping of that extent (mem_txn_end_window), as the
 * scanner's window merge leaves identical guests, and the clone's pages are
 * then exactly what that merge would have made of them: PS_SHARED pages with
 * a frame reference each (dedup_vm.frame, .mapped, .win_ext), zero pages at
 * reserved positions of the extent. The scanner takes it from there: a guest
 * write is a copy-on-write break it notices and releases, and a frame lives
 * while the image or a clone references it.
 *
 * Frames enter the stable index when the image is first mapped (or freed),
 * not as they are added: while an image is filled, a window merge of another
 * VM that matched one of its frames would adopt that window's extent and
 * take its free positions, where the image's later pages must go. From the
 * first mapping on the image is sealed: its windows are complete.
 *
 * Locking: everything of the store, the index and a VM's bookkeeping is
 * changed with d->lock held, as the scanner's batches do; the image itself
 * is its caller's (one at a time). Mapping takes the lock per window, so the
 * scanner is not held up for the whole VM: it may visit a clone half mapped,
 * and what it finds there (shared pages at their window's positions, zero
 * pages of the window, holes) it leaves alone.
 */
#define LOG_TAG "dedup"
#include "dedup/dedup_internal.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/log.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/txn.h"

_Static_assert(DEDUP_IMAGE_WINDOW == DEDUP_EXT_PAGES, "an image window is a store extent");

#define WIN_WORDS (DEDUP_EXT_PAGES / 64)

/* One window of the image. */
struct image_win {
	uint32_t ext;			/* its extent, or DEDUP_NO_FRAME: no content */
	uint32_t nr;			/* pages with content (frames) */
	uint64_t has[WIN_WORDS];	/* bit per page: a frame at ext * EXT + i */
};

struct dedup_image {
	uint64_t nr_pages;
	uint64_t nr_wins;
	uint64_t frames;		/* pages with content, all windows */
	uint64_t salt;			/* its frames' sharing group (dedup_group_salt) */
	bool sealed;			/* frames in the index; no more content */
	struct image_win *win;
};

static bool win_has(const struct image_win *w, uint64_t i)
{
	return w->has[i / 64] & (1ULL << (i % 64));
}

/* The caller's buffer may have any alignment: compared, not read as words. */
static bool page_is_zero(const uint8_t *p)
{
	static const uint8_t zero[MEM_PAGE_SIZE];

	return !memcmp(p, zero, MEM_PAGE_SIZE);
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

int dedup_image_create(struct dedup *d, uint64_t nr_pages, uint64_t salt,
		       struct dedup_image **out)
{
	struct dedup_image *img;

	(void)d;
	if (!nr_pages)
		return -EINVAL;
	if (nr_pages > UINT32_MAX)
		return -E2BIG; /* the VMs' page indexes are 32-bit in the index (dedup_add_vm) */
	img = kv_zalloc(sizeof(*img));
	if (!img)
		return -ENOMEM;
	img->nr_pages = nr_pages;
	img->salt = salt;
	img->nr_wins = (nr_pages + DEDUP_EXT_PAGES - 1) / DEDUP_EXT_PAGES;
	img->win = kv_calloc(img->nr_wins, sizeof(*img->win));
	if (!img->win) {
		kv_free(img);
		return -ENOMEM;
	}
	for (uint64_t w = 0; w < img->nr_wins; w++)
		img->win[w].ext = DEDUP_NO_FRAME;
	*out = img;
	return 0;
}

/* Write one page at slot's offset of the store. 0 or -errno. */
static int store_write(const struct dedup_store *st, uint32_t slot, const uint8_t *page)
{
	uint64_t done = 0;

	while (done < MEM_PAGE_SIZE) {
		ssize_t r = pwrite(st->fd, page + done, MEM_PAGE_SIZE - done,
				   (off_t)(dedup_store_off(slot) + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		done += (uint64_t)r;
	}
	return 0;
}

/*
 * A frame at position pos of extent ext holding page (the image's
 * reference): not in the index yet (see the top). NULL with -errno in *err,
 * the slot free again. d->lock held.
 */
static struct dedup_frame *image_frame(struct dedup *d, uint32_t ext, uint32_t pos,
				       const uint8_t *page, uint64_t hash, int *err)
{
	uint32_t slot = ext * DEDUP_EXT_PAGES + pos;
	struct dedup_frame *fr;

	/* The extent is the image's alone until it is sealed: the slot is free. */
	if (!dedup_store_take(&d->store, slot)) {
		*err = -EEXIST;
		return NULL;
	}
	fr = kv_zalloc(sizeof(*fr));
	*err = fr ? store_write(&d->store, slot, page) : -ENOMEM;
	if (*err) {
		dedup_store_release(&d->store, slot);
		kv_free(fr);
		return NULL;
	}
	fr->hash = hash;
	fr->slot = slot;
	fr->refs = 1;
	d->store.by_slot[slot] = fr;
	return fr;
}

int dedup_image_add(struct dedup *d, struct dedup_image *img, uint64_t idx, uint32_t n,
		    const uint8_t *has, const uint8_t *data)
{
	uint64_t wi = idx / DEDUP_EXT_PAGES;
	uint32_t pos0 = (uint32_t)(idx % DEDUP_EXT_PAGES), added[DEDUP_EXT_PAGES];
	struct image_win *w;
	unsigned int nadded = 0;
	bool new_ext = false;
	int ret = 0;

	if (!n)
		return 0;
	if (!has || !data || n > DEDUP_EXT_PAGES || idx >= img->nr_pages ||
	    n > img->nr_pages - idx || (idx + n - 1) / DEDUP_EXT_PAGES != wi)
		return -EINVAL;
	if (img->sealed)
		return -EBUSY;
	w = &img->win[wi];
	for (uint32_t i = 0; i < n; i++)
		if (win_has(w, pos0 + i))
			return -EEXIST;
	pthread_mutex_lock(&d->lock);
	for (uint32_t i = 0; i < n && !ret; i++) {
		const uint8_t *page = data + (uint64_t)i * MEM_PAGE_SIZE;
		uint64_t hash;

		if (!has[i])
			continue;
		hash = d->hasher.fn(page, d->hasher.secret);
		/* Zeros need no frame: the clone's window maps them at a reserved position. */
		if (hash == d->hasher.zero_hash && page_is_zero(page))
			continue;
		/* Keyed as the scanner keys the pages of a VM of its group. */
		if (hash != d->hasher.zero_hash)
			hash ^= img->salt;
		if (w->ext == DEDUP_NO_FRAME) {
			ret = dedup_store_new_extent(&d->store, &w->ext);
			if (ret) {
				w->ext = DEDUP_NO_FRAME;
				break;
			}
			new_ext = true;
		}
		if (image_frame(d, w->ext, pos0 + i, page, hash, &ret))
			added[nadded++] = pos0 + i;
	}
	if (ret) {
		/* All or nothing: the frames of this call go again, unpublished. */
		for (unsigned int k = 0; k < nadded; k++) {
			uint32_t slot = w->ext * DEDUP_EXT_PAGES + added[k];

			kv_free(d->store.by_slot[slot]);
			dedup_store_release(&d->store, slot);
		}
		if (new_ext)
			w->ext = DEDUP_NO_FRAME;
	} else {
		for (unsigned int k = 0; k < nadded; k++)
			w->has[added[k] / 64] |= 1ULL << (added[k] % 64);
		w->nr += nadded;
		img->frames += nadded;
	}
	pthread_mutex_unlock(&d->lock);
	return ret;
}

struct image_args {
	struct dedup *d;
	struct dedup_image *img;
	struct dedup_vm *v;
	struct mem_txn *t;
	uint64_t nwin;		/* undo: windows [0, nwin) of the image were mapped into v */
};

/* Publish the image's frames in the stable index. d->lock held, RCU-registered. */
static void seal_locked(void *arg)
{
	struct image_args *a = arg;
	struct dedup *d = a->d;
	struct dedup_image *img = a->img;

	for (uint64_t wi = 0; wi < img->nr_wins; wi++) {
		const struct image_win *w = &img->win[wi];

		for (uint32_t i = 0; w->nr && i < DEDUP_EXT_PAGES; i++)
			if (win_has(w, i))
				dedup_index_stable_add(&d->ix,
						       d->store.by_slot[w->ext * DEDUP_EXT_PAGES + i]);
	}
	dedup_index_stable_fit(&d->ix);
	img->sealed = true;
}

/*
 * A page of a fresh VM: nothing of its own behind it. The kernel's zero page
 * counts (a page dropped as zero, or a window mapped and dropped again, gets
 * it where reads would allocate); where memmap cannot tell that page it is
 * a page like any other.
 */
static bool pm_fresh(uint64_t pm)
{
	return mem_pm_is_hole(pm) || mem_pm_is_zero_page(pm);
}

/* Pages [idx, idx + n) of gm lie in one region (host addresses contiguous). */
static bool one_region(struct gm *gm, uint64_t idx, uint64_t n)
{
	return mem_index_gpa(gm, idx + n - 1) - mem_index_gpa(gm, idx) == (n - 1) * MEM_PAGE_SIZE;
}

/*
 * Before anything is mapped: every page of [0, end) of v reads zeros with
 * nothing of its own and maps no frame, so that a refusal leaves gm exactly
 * as it was. Pages of windows the image maps may be held by another
 * mechanism for a moment: their claim decides. d->lock held.
 */
static int check_fresh(struct dedup_vm *v, const struct dedup_image *img, uint64_t end)
{
	uint64_t pm[DEDUP_EXT_PAGES];

	for (uint64_t idx = 0; idx < end; idx += DEDUP_EXT_PAGES) {
		uint64_t n = min_u64(DEDUP_EXT_PAGES, end - idx);
		bool claimed = img->win[idx / DEDUP_EXT_PAGES].nr;

		if (!one_region(v->gm, idx, n))
			return -EINVAL; /* a window across regions cannot be one mapping */
		if (mem_pagemap(v->gm, idx, n, pm) != (int64_t)n)
			return -EIO;
		for (uint64_t i = 0; i < n; i++) {
			enum ps_state st = pagestate_get(v->ps, idx + i);

			if (v->frame[idx + i] != DEDUP_NO_FRAME || !pm_fresh(pm[i]) ||
			    (st != PS_ANON && st != PS_ZERO && !(claimed && st == PS_BUSY)))
				return -EBUSY;
		}
	}
	return 0;
}

/* Pages of v's window wi: the VM's, not the image's (its last window may be short). */
static uint64_t win_pages(const struct dedup_vm *v, uint64_t wi)
{
	return min_u64(DEDUP_EXT_PAGES, v->nr_pages - wi * DEDUP_EXT_PAGES);
}

/*
 * Map window wi of the image into v: claim it whole (holes held), check that
 * it is still untouched, and end the claim with one mapping of the window's
 * extent. Pages with content map their frames; the others read zeros at a
 * reserved position of the extent (a private page of zeros where another
 * VM's window put a frame there since). Pages mapped onto frames are added
 * to *mapped. 0 or -errno with the window as it was. d->lock held.
 */
static int map_window(struct dedup *d, const struct image_win *w, uint64_t wi,
		      struct dedup_vm *v, struct mem_txn *t, uint64_t *mapped)
{
	uint64_t idx = wi * DEDUP_EXT_PAGES, n = win_pages(v, wi);
	uint64_t base = (uint64_t)w->ext * DEDUP_EXT_PAGES;
	uint8_t kind[DEDUP_EXT_PAGES];
	int64_t got;
	int ret;

	got = mem_txn_claim(t, v->gm, idx, n, MEM_FROM(PS_ANON) | MEM_FROM(PS_ZERO),
			    MEM_TXN_WHOLE | MEM_TXN_HOLES);
	if (got < 0)
		return (int)got;
	/*
	 * Final now (the run is protected, its holes held): a page with
	 * something of its own would lose it. Pages that are holes have no
	 * content to compare with their frames: the frames are what they read.
	 */
	for (uint64_t i = 0; i < n; i++)
		if (!pm_fresh(t->pm[i]) || v->frame[idx + i] != DEDUP_NO_FRAME) {
			mem_txn_end(t, -1);
			return -EBUSY;
		}
	for (uint64_t i = 0; i < n; i++) {
		uint64_t slot = base + i;

		if (win_has(w, i)) {
			kind[i] = MEM_WIN_FRAME;
			mem_txn_set(t, (uint32_t)i, MEM_FRAME, dedup_store_off((uint32_t)slot));
		} else if (dedup_store_reserve_zero(&d->store, slot)) {
			/* Untouched before, untouched after: the state it had. */
			kind[i] = MEM_WIN_ZERO;
			mem_txn_set(t, (uint32_t)i, MEM_KEEP, 0);
		} else {
			kind[i] = MEM_WIN_ZEROED;
			mem_txn_set(t, (uint32_t)i, MEM_PRIVATE, 0);
		}
	}
	ret = mem_txn_end_window(t, d->store.fd, dedup_store_off((uint32_t)base), kind);
	if (ret == -ENOMEM)
		d->map_recount = true;
	if (ret) {
		d->st.window_aborts++;
		return ret;
	}
	for (uint64_t i = 0; i < n; i++) {
		struct dedup_frame *fr;

		if (kind[i] != MEM_WIN_FRAME)
			continue;
		fr = d->store.by_slot[base + i];
		fr->refs++;
		v->frame[idx + i] = (uint32_t)(base + i);
		v->sum[idx + i] = 0;
		v->mapped++;
	}
	*mapped += w->nr;
	v->win_ext[wi] = w->ext;
	d->maps_added += 2; /* the window, and the rest of the mapping it split */
	return 0;
}

/*
 * Drop window wi of v again, mapped by map_window: claimed whole and dropped
 * as zero (fresh anonymous memory over it, PS_ZERO), frame references
 * released. The image still references every frame, so none dies here. 0,
 * or -errno with what could not be dropped still mapped and counted.
 */
static int unmap_window(struct dedup *d, struct dedup_vm *v, uint64_t wi, struct mem_txn *t)
{
	uint64_t idx = wi * DEDUP_EXT_PAGES, n = win_pages(v, wi);
	int64_t got;
	int ret = 0;

	got = mem_txn_claim(t, v->gm, idx, n,
			    MEM_FROM(PS_SHARED) | MEM_FROM(PS_ANON) | MEM_FROM(PS_ZERO),
			    MEM_TXN_WHOLE | MEM_TXN_HOLES);
	if (got < 0)
		return (int)got;
	for (uint64_t i = 0; i < n; i++)
		mem_txn_set(t, (uint32_t)i, MEM_ZERO, 0);
	mem_txn_end(t, -1);
	for (uint64_t i = 0; i < n; i++) {
		if (t->commit[i] != MEM_ZERO) {
			ret = -EIO;
			continue;
		}
		if (v->frame[idx + i] != DEDUP_NO_FRAME)
			dedup_unref_page(d, v, idx + i);
	}
	if (!ret)
		v->win_ext[wi] = DEDUP_NO_FRAME;
	return ret;
}

/* Undo windows [0, a->nwin) of the image in a->v. d->lock held, RCU-registered. */
static void undo_locked(void *arg)
{
	struct image_args *a = arg;

	for (uint64_t wi = 0; wi < a->nwin; wi++) {
		int ret;

		if (!a->img->win[wi].nr)
			continue;
		ret = unmap_window(a->d, a->v, wi, a->t);
		if (ret) {
			a->d->st.errors++;
			log_warn("%s: a window of a snapshot image at page %llu stays mapped: %s",
				 a->v->name, (unsigned long long)(wi * DEDUP_EXT_PAGES),
				 strerror(-ret));
		}
	}
}

int dedup_image_map(struct dedup *d, struct dedup_image *img, struct gm *gm, uint64_t *mapped)
{
	struct image_args a = { .d = d, .img = img };
	uint64_t wins = 0, done = 0, end;
	int ret = 0;

	*mapped = 0;
	for (uint64_t wi = 0; wi < img->nr_wins; wi++)
		wins += img->win[wi].nr != 0;
	pthread_mutex_lock(&d->lock);
	a.v = dedup_find_vm(d, gm);
	if (!a.v) {
		ret = -ENOENT;
	} else if (img->nr_pages > a.v->nr_pages) {
		ret = -EINVAL;
	} else if (a.v->salt != img->salt) {
		ret = -EXDEV;
	} else if (!dedup_map_room(d, 2 * wins)) {
		ret = -ENOSPC;
	} else {
		/* Whole windows of the image's range: a window with content is mapped whole. */
		end = min_u64(a.v->nr_pages, img->nr_wins * DEDUP_EXT_PAGES);
		ret = check_fresh(a.v, img, end);
	}
	if (!ret && !img->sealed)
		dedup_run_registered(seal_locked, &a);
	pthread_mutex_unlock(&d->lock);
	if (ret)
		return ret;
	/* Large (a window's run): not on the stack. */
	a.t = kv_zalloc(sizeof(*a.t));
	if (!a.t)
		return -ENOMEM;
	for (a.nwin = 0; a.nwin < img->nr_wins && !ret; a.nwin++) {
		if (!img->win[a.nwin].nr)
			continue;
		pthread_mutex_lock(&d->lock);
		ret = map_window(d, &img->win[a.nwin], a.nwin, a.v, a.t, &done);
		pthread_mutex_unlock(&d->lock);
	}
	if (ret) {
		/* a.nwin is one past the window that failed, which is as it was. */
		a.nwin--;
		pthread_mutex_lock(&d->lock);
		dedup_run_registered(undo_locked, &a);
		pthread_mutex_unlock(&d->lock);
		kv_free(a.t);
		return ret;
	}
	pthread_mutex_lock(&d->lock);
	d->st.windows += wins;
	d->st.merges += done;
	pthread_mutex_unlock(&d->lock);
	kv_free(a.t);
	*mapped = done;
	return 0;
}

/* Drop the image's references. d->lock held, RCU-registered. */
static void free_locked(void *arg)
{
	struct image_args *a = arg;
	struct dedup *d = a->d;
	struct dedup_image *img = a->img;

	for (uint64_t wi = 0; wi < img->nr_wins; wi++) {
		const struct image_win *w = &img->win[wi];

		for (uint32_t i = 0; w->nr && i < DEDUP_EXT_PAGES; i++) {
			uint32_t slot = w->ext * DEDUP_EXT_PAGES + i;

			if (!win_has(w, i))
				continue;
			if (img->sealed) {
				dedup_frame_put(d, slot);
			} else {
				/* Never published nor mapped: the image's reference is the only one. */
				kv_free(d->store.by_slot[slot]);
				dedup_store_release(&d->store, slot);
				d->st.frames_freed++;
			}
		}
	}
	dedup_index_stable_fit(&d->ix);
}

void dedup_image_free(struct dedup *d, struct dedup_image *img)
{
	struct image_args a = { .d = d, .img = img };

	if (!img)
		return;
	pthread_mutex_lock(&d->lock);
	if (img->frames)
		dedup_run_registered(free_locked, &a);
	pthread_mutex_unlock(&d->lock);
	kv_free(img->win);
	kv_free(img);
}
