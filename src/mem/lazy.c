/* SPDX-License-Identifier: MIT */
/* Lazy restore (mem/lazy.h): the image as a store of swapped pages, and its prefetcher. */
#define LOG_TAG "lazy"
#include "mem/lazy.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <time.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/sandbox.h"
#include "core/thread.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/pagestate.h"
#include "mem/txn.h"

struct mem_lazy {
	struct gm *gm;
	const struct mem_image_ops *ops;
	void *arg;
	struct mem_swap_hooks hooks;
	pthread_t thread;
	bool started;
	bool stop;			/* atomic */
	uint64_t pages;
	uint64_t left;			/* atomic */
	uint64_t prefetched;		/* atomic */
	uint64_t t0, resident_ns;	/* atomic */
	uint64_t *chunks;		/* bit per MEM_CHUNK_PAGES chunk: held image pages at the start */
	bool failed;			/* atomic */
	char error[160];		/* written once, before failed is set */
};

static int hook_read(void *arg, uint64_t slot, uint64_t n, void *buf)
{
	struct mem_lazy *l = arg;

	return l->ops->read(l->arg, slot & ~MEM_SLOT_IMAGE, n, buf);
}

/* The image is read where the fault is served: it is a file the page cache holds mostly. */
static int hook_submit(void *arg, struct gm *gm, uint64_t idx, uint64_t slot, uint64_t n,
		       void *page, uint64_t t0)
{
	(void)arg, (void)gm, (void)idx, (void)slot, (void)n, (void)page, (void)t0;
	return -EAGAIN;
}

static void hook_release(void *arg, uint64_t slot, bool was_read)
{
	struct mem_lazy *l = arg;

	(void)slot, (void)was_read;
	if (__atomic_sub_fetch(&l->left, 1, __ATOMIC_ACQ_REL) == 0)
		__atomic_store_n(&l->resident_ns, kv_clock_ns(CLOCK_MONOTONIC) - l->t0,
				 __ATOMIC_RELEASE);
}

static void hook_fatal(void *arg, const char *why)
{
	struct mem_lazy *l = arg;
	static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;
	bool first;

	pthread_mutex_lock(&once);
	first = !__atomic_load_n(&l->failed, __ATOMIC_ACQUIRE);
	if (first) {
		snprintf(l->error, sizeof(l->error), "%s", why);
		__atomic_store_n(&l->failed, true, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&once);
	if (first)
		l->ops->fatal(l->arg, why);
}

/* Page idx is the image's still: swapped to its image slot (or held for a moment with it). */
static bool image_page(struct gm *gm, uint64_t idx, bool *held)
{
	enum ps_state st = pagestate_get(gm->ps, idx);

	*held = st == PS_BUSY;
	return (st == PS_SWAPPED || st == PS_BUSY) &&
	       __atomic_load_n(&gm->swap_slot[idx], __ATOMIC_RELAXED) == (MEM_SLOT_IMAGE | idx);
}

/* Undo an attach that failed after turning n pages (every one of have below n) the image's. */
static void undo_attach(struct gm *gm, struct mem_lazy *l, const uint64_t *have, uint64_t n)
{
	__atomic_store_n(&gm->image, NULL, __ATOMIC_RELEASE);
	gm->image_arg = NULL;
	gm->lazy = NULL;
	for (uint64_t i = 0; i < n; i++) {
		if (!(have[i / 64] >> (i % 64) & 1))
			continue;
		pagestate_cas(gm->ps, i, PS_SWAPPED, PS_ANON);
		__atomic_store_n(&gm->swap_slot[i], 0, __ATOMIC_RELAXED);
	}
	kv_free(l->chunks);
	kv_free(l);
}

int mem_lazy_attach(struct gm *gm, const uint64_t *have, const struct mem_image_ops *ops,
		    void *arg)
{
	uint64_t nr = mem_nr_pages(gm), nchunks = (nr + MEM_CHUNK_PAGES - 1) / MEM_CHUNK_PAGES;
	struct mem_lazy *l;
	int ret = 0;

	if (gm->lazy)
		return -EBUSY;
	if (gm->uffd < 0)
		return -ENOSYS;
	l = kv_zalloc(sizeof(*l));
	if (!l || !(l->chunks = kv_calloc((nchunks + 63) / 64, sizeof(uint64_t)))) {
		kv_free(l);
		return -ENOMEM;
	}
	l->gm = gm;
	l->ops = ops;
	l->arg = arg;
	l->hooks = (struct mem_swap_hooks){ .read = hook_read, .submit = hook_submit,
					    .release = hook_release, .fatal = hook_fatal };
	/*
	 * Fresh and not running: the pages are holes the VM's own. A mechanism
	 * may hold one for a moment (the scanner visits a new VM at once): it
	 * is waited for, never overwritten.
	 */
	for (uint64_t i = 0; i < nr; i++) {
		if (!(have[i / 64] >> (i % 64) & 1))
			continue;
		__atomic_store_n(&gm->swap_slot[i], MEM_SLOT_IMAGE | i, __ATOMIC_RELAXED);
		while (pagestate_cas(gm->ps, i, PS_ANON, PS_SWAPPED)) {
			if (pagestate_get(gm->ps, i) != PS_BUSY) {
				/* Not fresh: some page holds something already. */
				__atomic_store_n(&gm->swap_slot[i], 0, __ATOMIC_RELAXED);
				undo_attach(gm, l, have, i);
				return -EBUSY;
			}
			sched_yield();
		}
		l->chunks[i / MEM_CHUNK_PAGES / 64] |= 1ULL << (i / MEM_CHUNK_PAGES % 64);
		l->pages++;
	}
	l->left = l->pages;
	gm->image_arg = l;
	__atomic_store_n(&gm->image, &l->hooks, __ATOMIC_RELEASE);
	gm->lazy = l;
	/* A touch must come to us: the chunks holding image pages fault MISSING. */
	for (uint64_t c = 0; c < nchunks && !ret; c++) {
		uint64_t start = c * MEM_CHUNK_PAGES;

		if (l->chunks[c / 64] >> (c % 64) & 1)
			ret = mem_chunks_set_missing(gm, start, nr - start < MEM_CHUNK_PAGES
							       ? nr - start : MEM_CHUNK_PAGES, true);
	}
	if (ret) {
		undo_attach(gm, l, have, nr);
		return ret;
	}
	l->t0 = kv_clock_ns(CLOCK_MONOTONIC);
	if (!l->pages)
		l->resident_ns = 1;
	return 0;
}

/*
 * Every page of a chunk of the image, a read-ahead's worth at a time, until
 * none is left: a page someone holds for a moment (a VMM read, a touch whose
 * copy must be retried, tracking being armed) is the image's again after,
 * and is fetched on a later pass. Returns false when told to stop.
 */
static bool fetch_chunk(struct mem_lazy *l, uint64_t start, uint64_t end)
{
	struct gm *gm = l->gm;

	for (;;) {
		uint64_t held_left = 0;

		for (uint64_t i = start; i < end; i++) {
			bool held;
			int64_t got;

			if (__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE) ||
			    __atomic_load_n(&l->failed, __ATOMIC_ACQUIRE))
				return false;
			if (!image_page(gm, i, &held))
				continue;
			got = held ? 0 : mem_image_fetch(gm, i, (end - i < MEM_SWAP_READAHEAD &&
								 mem_run_ok(gm, i, end - i))
									? end - i : MEM_SWAP_READAHEAD);
			if (got > 0) {
				__atomic_add_fetch(&l->prefetched, (uint64_t)got, __ATOMIC_RELAXED);
				i += (uint64_t)got - 1;
			} else {
				/* Held, or its mapping being replaced: again on the next pass. */
				held_left++;
			}
		}
		if (!held_left)
			return true;
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
	}
}

/*
 * The image's chunks in order; each, once none of its pages is the image's
 * (fetched by the prefetcher or by touches, or given to the balloon), stops
 * faulting MISSING: a first touch of its holes is the kernel's again. A chunk
 * a transaction holds just then is tried again; one holding a page of host
 * swap keeps the mode (it needs it).
 */
static void *prefetch_thread(void *arg)
{
	struct mem_lazy *l = arg;
	struct gm *gm = l->gm;
	uint64_t nr = mem_nr_pages(gm);

	sandbox_enter(SANDBOX_PREFETCH);
	for (uint64_t c = 0; c * MEM_CHUNK_PAGES < nr; c++) {
		uint64_t start = c * MEM_CHUNK_PAGES, end = start + MEM_CHUNK_PAGES;

		if (!(l->chunks[c / 64] >> (c % 64) & 1))
			continue;
		if (end > nr)
			end = nr;
		if (!fetch_chunk(l, start, end))
			return NULL;
		for (int tries = 0; tries < 3 &&
				    mem_chunks_set_missing(gm, start, end - start, false) == -EBUSY;
		     tries++)
			nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
	}
	return NULL;
}

int mem_lazy_start(struct gm *gm)
{
	struct mem_lazy *l = gm->lazy;
	int ret;

	if (!l || l->started)
		return l ? 0 : -EINVAL;
	ret = thread_spawn(&l->thread, "prefetch", prefetch_thread, l);
	l->started = !ret;
	return ret;
}

void mem_lazy_detach(struct gm *gm)
{
	struct mem_lazy *l = gm->lazy;

	if (!l)
		return;
	__atomic_store_n(&l->stop, true, __ATOMIC_RELEASE);
	if (l->started)
		pthread_join(l->thread, NULL);
	__atomic_store_n(&gm->image, NULL, __ATOMIC_RELEASE);
	gm->image_arg = NULL;
	gm->lazy = NULL;
	if (l->ops->close)
		l->ops->close(l->arg);
	kv_free(l->chunks);
	kv_free(l);
}

uint64_t mem_lazy_left(const struct gm *gm)
{
	return gm->lazy ? __atomic_load_n(&gm->lazy->left, __ATOMIC_ACQUIRE) : 0;
}

void mem_lazy_get_stats(const struct gm *gm, struct mem_lazy_stats *out)
{
	const struct mem_lazy *l = gm->lazy;

	*out = (struct mem_lazy_stats){ 0 };
	if (!l)
		return;
	out->lazy = true;
	out->pages = l->pages;
	out->left = __atomic_load_n(&l->left, __ATOMIC_ACQUIRE);
	out->prefetched = __atomic_load_n(&l->prefetched, __ATOMIC_RELAXED);
	out->resident_ms = __atomic_load_n(&l->resident_ns, __ATOMIC_ACQUIRE) / 1000000;
	out->failed = __atomic_load_n(&l->failed, __ATOMIC_ACQUIRE);
	if (out->failed)
		snprintf(out->error, sizeof(out->error), "%s", l->error);
}
