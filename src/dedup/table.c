/* SPDX-License-Identifier: MIT */
/*
 * The sharing index: two liburcu lock-free hash tables (cds_lfht, memb
 * flavour) keyed by the 64-bit page hash, as ksm.c keeps two trees.
 *
 * - stable: one entry per store frame. Frames are write-protected by
 *   construction (guests map them MAP_PRIVATE and the kernel copies on
 *   write), so an entry is always searchable. Two different contents with
 *   one hash are two entries: the byte compare at merge time tells them apart.
 * - unstable: pages seen this pass whose hash did not change since their
 *   previous visit (KSM's stability rule), one per hash. Their content may
 *   change at any time, which is why a hit is only a candidate and the table
 *   is emptied after every full pass.
 *
 * Only the scanner (engine lock held) adds or removes; lookups may come from
 * any RCU-registered thread. Removed unstable nodes are freed after a grace
 * period; frames belong to the engine, which frees them the same way.
 */
#include "dedup/dedup_internal.h"

#include <errno.h>

#include "core/alloc.h"

static int match_frame(struct cds_lfht_node *node, const void *key)
{
	return caa_container_of(node, struct dedup_frame, node)->hash == *(const uint64_t *)key;
}

static int match_unode(struct cds_lfht_node *node, const void *key)
{
	return caa_container_of(node, struct dedup_unode, node)->hash == *(const uint64_t *)key;
}

int dedup_index_init(struct dedup_index *ix)
{
	ix->nr_stable = ix->nr_unstable = 0;
	ix->stable = cds_lfht_new_flavor(1024, 1024, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING,
					 &urcu_memb_flavor, NULL);
	ix->unstable = cds_lfht_new_flavor(1024, 1024, 0,
					   CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING,
					   &urcu_memb_flavor, NULL);
	if (!ix->stable || !ix->unstable) {
		if (ix->stable)
			cds_lfht_destroy(ix->stable, NULL);
		if (ix->unstable)
			cds_lfht_destroy(ix->unstable, NULL);
		ix->stable = ix->unstable = NULL;
		return -ENOMEM;
	}
	return 0;
}

static void free_unode(struct rcu_head *head)
{
	kv_free(caa_container_of(head, struct dedup_unode, rcu));
}

void dedup_index_fini(struct dedup_index *ix)
{
	struct cds_lfht_iter it;
	struct cds_lfht_node *node;

	if (!ix->stable)
		return;
	dedup_index_unstable_clear(ix, NULL);
	urcu_memb_read_lock();
	cds_lfht_for_each(ix->stable, &it, node)
		cds_lfht_del(ix->stable, node);
	urcu_memb_read_unlock();
	/* Not inside a read-side section, and not on a call_rcu worker (rculfhash.h). */
	cds_lfht_destroy(ix->stable, NULL);
	cds_lfht_destroy(ix->unstable, NULL);
	ix->stable = ix->unstable = NULL;
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

struct dedup_unode *dedup_index_unstable_find(struct dedup_index *ix, uint64_t hash)
{
	struct cds_lfht_iter it;
	struct cds_lfht_node *node;

	cds_lfht_lookup(ix->unstable, (unsigned long)hash, match_unode, &hash, &it);
	node = cds_lfht_iter_get_node(&it);
	return node ? caa_container_of(node, struct dedup_unode, node) : NULL;
}

void dedup_index_stable_add(struct dedup_index *ix, struct dedup_frame *fr)
{
	cds_lfht_node_init(&fr->node);
	urcu_memb_read_lock();
	cds_lfht_add(ix->stable, (unsigned long)fr->hash, &fr->node);
	urcu_memb_read_unlock();
	ix->nr_stable++;
}

void dedup_index_stable_del(struct dedup_index *ix, struct dedup_frame *fr)
{
	int ret;

	urcu_memb_read_lock();
	ret = cds_lfht_del(ix->stable, &fr->node);
	urcu_memb_read_unlock();
	if (!ret)
		ix->nr_stable--;
}

struct dedup_unode *dedup_index_unstable_add(struct dedup_index *ix, struct dedup_unode *un)
{
	struct cds_lfht_node *got;

	cds_lfht_node_init(&un->node);
	urcu_memb_read_lock();
	got = cds_lfht_add_unique(ix->unstable, (unsigned long)un->hash, match_unode, &un->hash,
				  &un->node);
	urcu_memb_read_unlock();
	if (got != &un->node)
		return caa_container_of(got, struct dedup_unode, node);
	ix->nr_unstable++;
	return un;
}

void dedup_index_unstable_del(struct dedup_index *ix, struct dedup_unode *un)
{
	int ret;

	urcu_memb_read_lock();
	ret = cds_lfht_del(ix->unstable, &un->node);
	urcu_memb_read_unlock();
	if (ret)
		return; /* already removed: whoever removed it frees it */
	ix->nr_unstable--;
	urcu_memb_call_rcu(&un->rcu, free_unode);
}

void dedup_index_unstable_clear(struct dedup_index *ix, const struct dedup_vm *only)
{
	struct cds_lfht_iter it;
	struct cds_lfht_node *node;

	urcu_memb_read_lock();
	cds_lfht_for_each(ix->unstable, &it, node) {
		struct dedup_unode *un = caa_container_of(node, struct dedup_unode, node);

		if (only && un->vm != only)
			continue;
		if (!cds_lfht_del(ix->unstable, node)) {
			ix->nr_unstable--;
			urcu_memb_call_rcu(&un->rcu, free_unode);
		}
	}
	urcu_memb_read_unlock();
}
