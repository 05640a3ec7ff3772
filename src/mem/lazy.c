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

int mem_lazy_attach(struct gm *gm, const uint64_t *have, const struct mem_image_ops *ops,
		    void *arg)
{
	uint64_t nr = mem_nr_pages(gm);
	struct mem_lazy *l;
	int ret = 0;

	if (gm->lazy)
		return -EBUSY;
	if (gm->uffd < 0)
		return -ENOSYS;
	l = kv_zalloc(sizeof(*l));
	if (!l)
		return -ENOMEM;
	*l = (struct mem_lazy){
		.gm = gm, .ops = ops, .arg = arg,
		.hooks = { .read = hook_read, .submit = hook_submit, .release = hook_release,
			   .fatal = hook_fatal },
	};
	/*
	 * Fresh and not running: the pages are holes the VM's own. A mechanism
	 * may hold one for a moment (the scanner visits a new VM at once): it
	 * is waited for, never overwritten.
	 */
	for (uint64_t i = 0; i < nr; i++) {
		if (!(have[i / 64] >> (i % 64) & 1))
			continue;
		gm->swap_slot[i] = MEM_SLOT_IMAGE | i;
		while (pagestate_cas(gm->ps, i, PS_ANON, PS_SWAPPED)) {
			if (pagestate_get(gm->ps, i) != PS_BUSY) {
				kv_free(l);
				return -EBUSY; /* not fresh: some page holds something already */
			}
			sched_yield();
		}
		l->pages++;
	}
	l->left = l->pages;
	gm->image_arg = l;
	__atomic_store_n(&gm->image, &l->hooks, __ATOMIC_RELEASE);
	gm->lazy = l;
	/* A touch must come to us: the chunks holding image pages fault MISSING. */
	for (uint64_t c = 0; c * MEM_CHUNK_PAGES < nr && !ret; c++) {
		uint64_t start = c * MEM_CHUNK_PAGES, len = MEM_CHUNK_PAGES, any = 0;

		if (start + len > nr)
			len = nr - start;
		for (uint64_t i = start; i < start + len && !any; i++)
			any = have[i / 64] >> (i % 64) & 1;
		if (any)
			ret = mem_chunks_set_missing(gm, start, len, true);
	}
	l->t0 = kv_clock_ns(CLOCK_MONOTONIC);
	if (!l->pages)
		l->resident_ns = 1;
	return ret;
}

/*
 * Every page of the image in order, a read-ahead's worth at a time; a
 * chunk left with none of the image's pages (nor host swap's) stops
 * faulting MISSING: a first touch of its holes is the kernel's again.
 */
static void *prefetch_thread(void *arg)
{
	struct mem_lazy *l = arg;
	struct gm *gm = l->gm;
	uint64_t nr = mem_nr_pages(gm);

	for (uint64_t c = 0; c * MEM_CHUNK_PAGES < nr; c++) {
		uint64_t start = c * MEM_CHUNK_PAGES, end = start + MEM_CHUNK_PAGES, had = 0;

		if (end > nr)
			end = nr;
		for (uint64_t i = start; i < end; i++) {
			int64_t got;

			if (__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE) ||
			    __atomic_load_n(&l->failed, __ATOMIC_ACQUIRE))
				return NULL;
			if (pagestate_get(gm->ps, i) != PS_SWAPPED ||
			    __atomic_load_n(&gm->swap_slot[i], __ATOMIC_RELAXED) != (MEM_SLOT_IMAGE | i))
				continue;
			had = 1;
			got = mem_image_fetch(gm, i, (end - i < MEM_SWAP_READAHEAD &&
						      mem_run_ok(gm, i, end - i))
							 ? end - i : MEM_SWAP_READAHEAD);
			if (got > 0) {
				__atomic_add_fetch(&l->prefetched, (uint64_t)got, __ATOMIC_RELAXED);
				i += (uint64_t)got - 1;
			}
		}
		/* Busy (a transaction, or tracking for a migration): the mode costs only speed. */
		if (had)
			mem_chunks_set_missing(gm, start, end - start, false);
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
