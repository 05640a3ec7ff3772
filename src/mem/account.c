/* SPDX-License-Identifier: MIT */
/*
 * The ledger: where every guest page is, and which mechanism saves what
 * (see account.h for the rule that splits a shared frame among its VMs).
 */
#define LOG_TAG "account"
#include "mem/account.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/pagestate.h"
#include "mem/swap.h"

const char *const mem_saving_names[MEM_NR_SAVED] = {
	[MEM_SAVED_UNTOUCHED] = "untouched",
	[MEM_SAVED_ZERO] = "zero",
	[MEM_SAVED_SHARED_WITHIN] = "shared_within",
	[MEM_SAVED_SHARED_ACROSS] = "shared_across",
	[MEM_SAVED_BALLOON] = "balloon",
	[MEM_SAVED_REPORTED] = "reported",
	[MEM_SAVED_COMPRESSED] = "compressed",
	[MEM_SAVED_SWAPPED] = "swapped",
	[MEM_SAVED_NOT_RESTORED] = "not_restored",
};

#define NO_KEY UINT64_MAX
/* KSM's frames are named by PFN, apart from the store's slots. */
#define KEY_PFN (1ULL << 62)
#define WALK_BATCH 512

/* Pages of one VM by where they are, from one walk. */
struct tally {
	uint64_t private_pages, pooled_pages, pool_bytes;
	uint64_t pages[MEM_NR_SAVED];	/* the sources counted by page (not shared, compressed) */
};

struct ledger_vm {
	struct gm *gm;
	struct mem_usage u;
	uint64_t *idx;		/* pages on a store frame (or about to be): the hook names them */
	uint64_t *keys;		/* frames of this VM's shared pages, one per page */
	size_t nr_idx, nr_keys, cap;
};

/* One frame while a walk's sharing is split. */
struct frame_ent {
	uint64_t key;		/* NO_KEY: empty */
	uint32_t k;		/* pages mapped onto it */
	uint32_t m;		/* VMs among them */
	uint32_t last;		/* last VM (index + 1) counted in m */
	uint32_t seen;		/* last VM (index + 1) charged its part */
};

struct mem_ledger {
	pthread_mutex_t lock;	/* everything below */
	struct ledger_vm *vms;
	unsigned int nr_vms, cap_vms;
	mem_frame_keys_fn frame_keys;
	void *frame_arg;
	struct mem_usage host;
	uint64_t at_ns;		/* when the figures were taken; 0: never */
	struct frame_ent *tab;	/* the split's table, kept between walks */
	uint64_t tab_cap;
};

int mem_ledger_create(struct mem_ledger **out)
{
	struct mem_ledger *l = kv_zalloc(sizeof(*l));

	if (!l)
		return -ENOMEM;
	pthread_mutex_init(&l->lock, NULL);
	*out = l;
	return 0;
}

void mem_ledger_destroy(struct mem_ledger *l)
{
	if (!l)
		return;
	for (unsigned int i = 0; i < l->nr_vms; i++) {
		kv_free(l->vms[i].idx);
		kv_free(l->vms[i].keys);
	}
	kv_free(l->vms);
	kv_free(l->tab);
	pthread_mutex_destroy(&l->lock);
	kv_free(l);
}

void mem_ledger_set_frames(struct mem_ledger *l, mem_frame_keys_fn fn, void *arg)
{
	pthread_mutex_lock(&l->lock);
	l->frame_keys = fn;
	l->frame_arg = arg;
	l->at_ns = 0;
	pthread_mutex_unlock(&l->lock);
}

int mem_ledger_add(struct mem_ledger *l, struct gm *gm)
{
	int ret = 0;

	pthread_mutex_lock(&l->lock);
	if (l->nr_vms == l->cap_vms) {
		unsigned int cap = l->cap_vms ? 2 * l->cap_vms : 8;
		struct ledger_vm *v = kv_realloc(l->vms, cap * sizeof(*v));

		if (!v) {
			ret = -ENOMEM;
			goto out;
		}
		l->vms = v;
		l->cap_vms = cap;
	}
	l->vms[l->nr_vms++] = (struct ledger_vm){ .gm = gm };
	l->at_ns = 0;
out:
	pthread_mutex_unlock(&l->lock);
	return ret;
}

void mem_ledger_remove(struct mem_ledger *l, struct gm *gm)
{
	pthread_mutex_lock(&l->lock);
	for (unsigned int i = 0; i < l->nr_vms; i++) {
		if (l->vms[i].gm != gm)
			continue;
		kv_free(l->vms[i].idx);
		kv_free(l->vms[i].keys);
		l->vms[i] = l->vms[--l->nr_vms];
		l->at_ns = 0;
		break;
	}
	pthread_mutex_unlock(&l->lock);
}

/* Room for one more page in v's lists. */
static int vm_reserve(struct ledger_vm *v)
{
	size_t cap = v->cap ? 2 * v->cap : 4096;
	uint64_t *idx, *keys;

	if (v->nr_idx + v->nr_keys < v->cap)
		return 0;
	idx = kv_realloc(v->idx, cap * sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	v->idx = idx;
	keys = kv_realloc(v->keys, cap * sizeof(*keys));
	if (!keys)
		return -ENOMEM;
	v->keys = keys;
	v->cap = cap;
	return 0;
}

/*
 * A page the state map says a mechanism dropped, which the pagemap shows in
 * memory: the guest wrote it since, with no fault kvmem sees (the kernel
 * fills a hole itself). It is the VM's own again, and its state says so
 * from now on, so the mechanisms can take it again.
 */
static bool caught_up(struct gm *gm, uint64_t idx, enum ps_state st, uint64_t e)
{
	return mem_pm_resident(e) && !mem_pm_file(e) && mem_catch_up(gm, idx, st);
}

/*
 * Where page idx is, from its state (read first) and its pagemap entry e:
 * a tally, or a page on a frame (v->idx for the store's, v->keys for KSM's).
 * A state read before the entry and moved since is counted where the entry
 * says the page is: a snapshot, exact in its sums.
 */
static int classify(struct ledger_vm *v, struct tally *t, uint64_t idx, enum ps_state st,
		    uint64_t e)
{
	int ret;

	switch (st) {
	case PS_ZERO:
	case PS_BALLOONED:
	case PS_REPORTED:
		if (caught_up(v->gm, idx, st, e))
			break;
		t->pages[st == PS_ZERO ? MEM_SAVED_ZERO : st == PS_BALLOONED ? MEM_SAVED_BALLOON
									     : MEM_SAVED_REPORTED]++;
		return 0;
	case PS_SWAPPED: {
		uint64_t slot = __atomic_load_n(&v->gm->swap_slot[idx], __ATOMIC_RELAXED);
		uint64_t cost = mem_swap_slot_memory(slot);

		/* Being brought in (the page is filled before its state moves). */
		if (mem_pm_resident(e))
			break;
		if (slot & MEM_SLOT_IMAGE) {
			t->pages[MEM_SAVED_NOT_RESTORED]++;
		} else if (cost) {
			t->pooled_pages++;
			t->pool_bytes += cost;
		} else {
			t->pages[MEM_SAVED_SWAPPED]++;
		}
		return 0;
	}
	default:
		/* Its own page, or one a mechanism holds for a moment: the entry says. */
		if (mem_pm_is_private(e)) {
			if (mem_pm_is_swapped(e))
				t->pages[MEM_SAVED_SWAPPED]++;
			else if (!mem_pm_resident(e))
				t->pages[MEM_SAVED_UNTOUCHED]++;
			else if (mem_pm_exclusive(e) || !(e & PM_PFN_MASK))
				break;
			else if ((ret = vm_reserve(v)))
				return ret;
			else
				v->keys[v->nr_keys++] = KEY_PFN | (e & PM_PFN_MASK);
			return 0;
		}
		/*
		 * Not private: a store page (mapped, or a hole of the store's
		 * mapping not read yet), or an untouched hole of its own.
		 */
		if (st != PS_SHARED && !mem_pm_file(e)) {
			t->pages[MEM_SAVED_UNTOUCHED]++;
			return 0;
		}
		ret = vm_reserve(v);
		if (!ret)
			v->idx[v->nr_idx++] = idx;
		return ret;
	}
	t->private_pages++;
	return 0;
}

/* Tally v's pages; its pages on frames are left in v->idx and v->keys. */
static int walk_vm(struct ledger_vm *v, struct tally *t)
{
	struct gm *gm = v->gm;
	uint64_t pm[WALK_BATCH];
	uint8_t st[WALK_BATCH];

	memset(t, 0, sizeof(*t));
	v->nr_idx = v->nr_keys = 0;
	for (unsigned int r = 0; r < gm->nr_regions; r++) {
		uint64_t idx = gm->regions[r].first_pfn_index;
		uint64_t end = idx + gm->regions[r].len / MEM_PAGE_SIZE;

		while (idx < end) {
			uint64_t n = end - idx < WALK_BATCH ? end - idx : WALK_BATCH;
			int64_t got;
			int ret;

			/* States first: see classify. */
			for (uint64_t i = 0; i < n; i++)
				st[i] = (uint8_t)pagestate_get(gm->ps, idx + i);
			got = mem_pagemap(gm, idx, n, pm);
			if (got <= 0)
				return got < 0 ? (int)got : -EIO;
			for (int64_t i = 0; i < got; i++) {
				ret = classify(v, t, idx + (uint64_t)i, (enum ps_state)st[i], pm[i]);
				if (ret)
					return ret;
			}
			idx += (uint64_t)got;
		}
	}
	return 0;
}

/*
 * Name the store frames of v's pages in v->idx and add them to v->keys; a
 * page no frame holds any more (unmerged since the walk, or the hook
 * failed) is its own.
 */
static void name_frames(struct mem_ledger *l, struct ledger_vm *v, struct tally *t)
{
	uint64_t *keys = v->keys + v->nr_keys;

	if (!v->nr_idx)
		return;
	if (!l->frame_keys || l->frame_keys(l->frame_arg, v->gm, v->idx, v->nr_idx, keys)) {
		t->private_pages += v->nr_idx;
		return;
	}
	for (size_t i = 0; i < v->nr_idx; i++) {
		if (keys[i] == NO_KEY)
			t->private_pages++;
		else
			v->keys[v->nr_keys++] = keys[i];
	}
}

static struct frame_ent *frame_find(struct mem_ledger *l, uint64_t key)
{
	uint64_t mask = l->tab_cap - 1;
	uint64_t h = (key * 0x9e3779b97f4a7c15ULL) >> 20;

	for (uint64_t i = h & mask;; i = (i + 1) & mask) {
		struct frame_ent *e = &l->tab[i];

		if (e->key == key)
			return e;
		if (e->key == NO_KEY) {
			e->key = key;
			return e;
		}
	}
}

/* A table at most half full for `keys` frames, emptied. */
static int frame_table(struct mem_ledger *l, size_t keys)
{
	uint64_t cap = 64;

	while (cap < 2 * (uint64_t)keys)
		cap *= 2;
	if (cap > l->tab_cap || cap * 8 < l->tab_cap) {
		struct frame_ent *t = kv_calloc(cap, sizeof(*t));

		if (!t)
			return -ENOMEM;
		kv_free(l->tab);
		l->tab = t;
		l->tab_cap = cap;
	}
	for (uint64_t i = 0; i < l->tab_cap; i++)
		l->tab[i] = (struct frame_ent){ .key = NO_KEY };
	return 0;
}

static void usage_from(struct mem_usage *u, const struct tally *t, uint64_t nr_pages)
{
	u->configured_bytes = nr_pages * MEM_PAGE_SIZE;
	u->private_bytes = t->private_pages * MEM_PAGE_SIZE;
	u->compressed_bytes = t->pool_bytes;
	for (int s = 0; s < MEM_NR_SAVED; s++)
		u->saved_bytes[s] = t->pages[s] * MEM_PAGE_SIZE;
	u->saved_bytes[MEM_SAVED_COMPRESSED] = t->pooled_pages * MEM_PAGE_SIZE - t->pool_bytes;
}

/* Split the frames among the VMs (account.h) and finish every figure. */
static int split(struct mem_ledger *l, struct tally *tallies)
{
	struct mem_usage *h = &l->host;
	struct tally ht = { 0 };
	uint64_t nr_pages = 0;
	size_t keys = 0;
	int ret;

	for (unsigned int i = 0; i < l->nr_vms; i++)
		keys += l->vms[i].nr_keys;
	ret = frame_table(l, keys);
	if (ret)
		return ret;
	for (unsigned int i = 0; i < l->nr_vms; i++) {
		struct ledger_vm *v = &l->vms[i];

		for (size_t j = 0; j < v->nr_keys; j++) {
			struct frame_ent *e = frame_find(l, v->keys[j]);

			e->k++;
			if (e->last != i + 1) {
				e->last = i + 1;
				e->m++;
			}
		}
	}
	for (unsigned int i = 0; i < l->nr_vms; i++) {
		struct ledger_vm *v = &l->vms[i];
		struct mem_usage *u = &v->u;
		double charge = 0;
		uint64_t frames = 0;

		for (size_t j = 0; j < v->nr_keys; j++) {
			struct frame_ent *e = frame_find(l, v->keys[j]);

			if (e->seen == i + 1)
				continue;
			e->seen = i + 1;
			frames++;
			charge += (double)MEM_PAGE_SIZE / e->m;
		}
		usage_from(u, &tallies[i], mem_nr_pages(v->gm));
		u->frames = frames;
		u->shared_bytes = (uint64_t)(charge + 0.5);
		if (u->shared_bytes > frames * MEM_PAGE_SIZE)
			u->shared_bytes = frames * MEM_PAGE_SIZE;
		u->saved_bytes[MEM_SAVED_SHARED_WITHIN] = (v->nr_keys - frames) * MEM_PAGE_SIZE;
		u->saved_bytes[MEM_SAVED_SHARED_ACROSS] = frames * MEM_PAGE_SIZE - u->shared_bytes;
		u->resident_bytes = u->private_bytes + u->shared_bytes + u->compressed_bytes;

		nr_pages += mem_nr_pages(v->gm);
		ht.private_pages += tallies[i].private_pages;
		ht.pooled_pages += tallies[i].pooled_pages;
		ht.pool_bytes += tallies[i].pool_bytes;
		for (int s = 0; s < MEM_NR_SAVED; s++)
			ht.pages[s] += tallies[i].pages[s];
	}
	/* The host's, exactly: a page per frame, and what its mappings save. */
	memset(h, 0, sizeof(*h));
	for (uint64_t i = 0; i < l->tab_cap; i++) {
		const struct frame_ent *e = &l->tab[i];

		if (e->key == NO_KEY)
			continue;
		h->frames++;
		ht.pages[MEM_SAVED_SHARED_WITHIN] += e->k - e->m;
		ht.pages[MEM_SAVED_SHARED_ACROSS] += e->m - 1;
	}
	usage_from(h, &ht, nr_pages);
	h->shared_bytes = h->frames * MEM_PAGE_SIZE;
	h->resident_bytes = h->private_bytes + h->shared_bytes + h->compressed_bytes;
	return 0;
}

/* Walk every VM and split their sharing (l->lock). */
static int refresh(struct mem_ledger *l)
{
	struct tally *t = kv_calloc(l->nr_vms ? l->nr_vms : 1, sizeof(*t));
	int ret = 0;

	if (!t)
		return -ENOMEM;
	for (unsigned int i = 0; i < l->nr_vms && !ret; i++)
		ret = walk_vm(&l->vms[i], &t[i]);
	/* One call per VM, after every walk: the store's lock is taken once per VM, briefly. */
	for (unsigned int i = 0; i < l->nr_vms && !ret; i++)
		name_frames(l, &l->vms[i], &t[i]);
	if (!ret)
		ret = split(l, t);
	if (!ret)
		l->at_ns = kv_clock_ns(CLOCK_MONOTONIC);
	else
		log_warn_ratelimited("the memory ledger could not be brought up to date: %s",
				     strerror(-ret));
	kv_free(t);
	return ret;
}

static int fresh(struct mem_ledger *l, uint64_t max_age_ns)
{
	uint64_t now = kv_clock_ns(CLOCK_MONOTONIC);

	if (l->at_ns && now - l->at_ns <= max_age_ns)
		return 0;
	return refresh(l);
}

int mem_ledger_read(struct mem_ledger *l, uint64_t max_age_ns, struct gm *const *gms,
		    unsigned int n, struct mem_usage *vm, struct mem_usage *host)
{
	int ret;

	pthread_mutex_lock(&l->lock);
	ret = fresh(l, max_age_ns);
	for (unsigned int i = 0; i < n; i++) {
		memset(&vm[i], 0, sizeof(vm[i]));
		for (unsigned int j = 0; j < l->nr_vms; j++)
			if (l->vms[j].gm == gms[i])
				vm[i] = l->vms[j].u;
	}
	if (host)
		*host = l->host;
	pthread_mutex_unlock(&l->lock);
	return ret;
}

uint64_t mem_ledger_resident(struct mem_ledger *l, uint64_t max_age_ns, struct gm *gm)
{
	struct mem_usage u;

	mem_ledger_read(l, max_age_ns, &gm, 1, &u, NULL);
	return u.resident_bytes;
}
