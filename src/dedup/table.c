/* SPDX-License-Identifier: MIT */
/*
 * The sharing index, keyed by the 64-bit page hash, in two parts as ksm.c
 * keeps two trees:
 *
 * - stable: one entry per store frame, in a liburcu lock-free hash table
 *   (cds_lfht, memb flavour). Frames never change (guests map them
 *   MAP_PRIVATE and the kernel copies on write), so an entry is always
 *   searchable, by any RCU-registered thread. Two different contents with one
 *   hash are two entries: the byte compare at merge time tells them apart.
 *   Only the scanner (engine lock held) adds or removes; a removed frame is
 *   freed by the engine after a grace period.
 * - unstable: pages seen this pass whose hash did not change since their
 *   previous visit (KSM's stability rule), one per hash. Their content may
 *   change at any time, so a hit is only a candidate, and the table is
 *   emptied after every full pass. Scanner-only: an open-addressing table
 *   with linear probing and tombstones (see dedup_internal.h for why).
 */
#include "dedup/dedup_internal.h"

#include <errno.h>
#include <string.h>

#include "core/alloc.h"

#define UNSTABLE_MIN_SLOTS 1024
#define STABLE_MIN_BUCKETS 1024

/* Every node a lookup looks at comes through here first. */
static int match_frame(struct cds_lfht_node *node, const void *key)
{
	const struct dedup_frame *fr = caa_container_of(node, struct dedup_frame, node);

	kv_rcu_found(fr);
	return fr->hash == *(const uint64_t *)key;
}

int dedup_index_init(struct dedup_index *ix)
{
	memset(ix, 0, sizeof(*ix));
	/* Sized by dedup_index_stable_fit, not by cds_lfht itself: see there. */
	ix->stable = cds_lfht_new_flavor(STABLE_MIN_BUCKETS, STABLE_MIN_BUCKETS, 0, 0,
					 &urcu_memb_flavor, NULL);
	ix->stable_buckets = STABLE_MIN_BUCKETS;
	return ix->stable ? 0 : -ENOMEM;
}

void dedup_index_fini(struct dedup_index *ix)
{
	struct cds_lfht_iter it;
	struct cds_lfht_node *node;

	kv_free(ix->unstable);
	ix->unstable = NULL;
	ix->ucap = ix->uused = ix->nr_unstable = 0;
	if (!ix->stable)
		return;
	kv_rcu_read_lock();
	cds_lfht_for_each(ix->stable, &it, node)
		cds_lfht_del(ix->stable, node);
	kv_rcu_read_unlock();
	/* Not inside a read-side section, and not on a call_rcu worker (rculfhash.h). */
	cds_lfht_destroy(ix->stable, NULL);
	ix->stable = NULL;
}

struct dedup_frame *dedup_index_stable_first(struct dedup_index *ix, uint64_t hash,
					     struct cds_lfht_iter *it)
{
	struct cds_lfht_node *node;

	cds_lfht_lookup(ix->stable, (unsigned long)hash, match_frame, &hash, it);
	node = cds_lfht_iter_get_node(it);
	return node ? caa_container_of(node, struct dedup_frame, node) : NULL;
}

struct dedup_frame *dedup_index_stable_next(struct dedup_index *ix, uint64_t hash,
					    struct cds_lfht_iter *it)
{
	struct cds_lfht_node *node;

	cds_lfht_next_duplicate(ix->stable, match_frame, &hash, it);
	node = cds_lfht_iter_get_node(it);
	return node ? caa_container_of(node, struct dedup_frame, node) : NULL;
}

void dedup_index_stable_add(struct dedup_index *ix, struct dedup_frame *fr)
{
	cds_lfht_node_init(&fr->node);
	kv_rcu_publish(fr);
	kv_rcu_read_lock();
	cds_lfht_add(ix->stable, (unsigned long)fr->hash, &fr->node);
	kv_rcu_read_unlock();
	ix->nr_stable++;
}

void dedup_index_stable_del(struct dedup_index *ix, struct dedup_frame *fr)
{
	int ret;

	kv_rcu_read_lock();
	ret = cds_lfht_del(ix->stable, &fr->node);
	kv_rcu_read_unlock();
	if (!ret)
		ix->nr_stable--;
}

/*
 * About one frame per bucket. cds_lfht's own resizing (CDS_LFHT_AUTO_RESIZE)
 * grows a table only once its chains average 8 nodes, and a lookup that
 * misses, the common case, walks a whole chain: with 10^5 frames and more,
 * perf on bench/dedup showed lookups costing more than hashing the page.
 * Doubles as soon as frames outnumber buckets; shrinks to fit when they fall
 * below an eighth. cds_lfht_resize waits for grace periods: never call this
 * inside a read-side section.
 */
void dedup_index_stable_fit(struct dedup_index *ix)
{
	uint64_t want = ix->stable_buckets;

	if (ix->nr_stable > want) {
		while (want < ix->nr_stable)
			want <<= 1;
	} else if (want > STABLE_MIN_BUCKETS && ix->nr_stable < want / 8) {
		want = STABLE_MIN_BUCKETS;
		while (want < ix->nr_stable)
			want <<= 1;
	}
	if (want == ix->stable_buckets)
		return;
	cds_lfht_resize(ix->stable, (unsigned long)want);
	ix->stable_buckets = want;
}

/* --- the unstable table --- */

static uint64_t ukey(uint64_t hash)
{
	return hash ? hash : 1;
}

/* The slot holding key, or the first empty slot of its probe sequence. */
static struct dedup_uent *probe(const struct dedup_index *ix, uint64_t key)
{
	uint64_t mask = ix->ucap - 1;

	for (uint64_t i = key & mask;; i = (i + 1) & mask) {
		struct dedup_uent *e = &ix->unstable[i];

		if (e->hash == key || !e->hash)
			return e;
	}
}

/* Rebuild with `cap` slots, dropping removed entries. 0 or -ENOMEM. */
static int rehash(struct dedup_index *ix, uint64_t cap)
{
	struct dedup_uent *old = ix->unstable;
	uint64_t old_cap = ix->ucap;

	ix->unstable = kv_calloc(cap, sizeof(*ix->unstable));
	if (!ix->unstable) {
		ix->unstable = old;
		return -ENOMEM;
	}
	ix->ucap = cap;
	ix->uused = 0;
	for (uint64_t i = 0; i < old_cap; i++)
		if (old[i].hash && old[i].vm_id != DEDUP_NO_VM) {
			*probe(ix, old[i].hash) = old[i];
			ix->uused++;
		}
	kv_free(old);
	return 0;
}

struct dedup_uent *dedup_index_unstable_find(struct dedup_index *ix, uint64_t hash)
{
	struct dedup_uent *e;

	if (!ix->ucap)
		return NULL;
	e = probe(ix, ukey(hash));
	return e->hash && e->vm_id != DEDUP_NO_VM ? e : NULL;
}

struct dedup_uent *dedup_index_unstable_add(struct dedup_index *ix, uint64_t hash,
					    uint32_t vm_id, uint32_t idx, bool *added)
{
	uint64_t key = ukey(hash);
	struct dedup_uent *e;

	*added = false;
	/* At most 3/4 full, removed entries included: probes stay short. */
	if ((ix->uused + 1) * 4 > ix->ucap * 3) {
		uint64_t cap = UNSTABLE_MIN_SLOTS;

		while (cap * 3 < (ix->nr_unstable + 1) * 8)
			cap *= 2;
		if (rehash(ix, cap))
			return NULL;
	}
	e = probe(ix, key);
	if (e->hash) {
		if (e->vm_id != DEDUP_NO_VM)
			return e;
		/* A removed entry with this hash: take its slot again. */
		ix->uused--;
	}
	e->hash = key;
	e->vm_id = vm_id;
	e->idx = idx;
	ix->uused++;
	ix->nr_unstable++;
	*added = true;
	return e;
}

void dedup_index_unstable_del(struct dedup_index *ix, struct dedup_uent *e)
{
	/* A tombstone: probes for other keys must still walk past it. */
	e->vm_id = DEDUP_NO_VM;
	ix->nr_unstable--;
}

void dedup_index_unstable_clear(struct dedup_index *ix, uint32_t vm_id)
{
	if (!ix->ucap)
		return;
	if (vm_id != DEDUP_NO_VM) {
		for (uint64_t i = 0; i < ix->ucap; i++)
			if (ix->unstable[i].hash && ix->unstable[i].vm_id == vm_id)
				dedup_index_unstable_del(ix, &ix->unstable[i]);
		return;
	}
	/* Shrink a table far larger than this pass needed; else just wipe it. */
	if (ix->ucap > UNSTABLE_MIN_SLOTS && ix->nr_unstable * 8 < ix->ucap) {
		kv_free(ix->unstable);
		ix->unstable = NULL;
		ix->ucap = 0;
	} else {
		memset(ix->unstable, 0, ix->ucap * sizeof(*ix->unstable));
	}
	ix->uused = ix->nr_unstable = 0;
}
