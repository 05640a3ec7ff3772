/* SPDX-License-Identifier: MIT */
/*
 * The RCU calls kvmem makes (liburcu, memb flavour: core/thread.h registers
 * every VMM thread), with what they order told to ThreadSanitizer.
 *
 * liburcu and cds_lfht are built without TSan: their barriers, grace
 * periods (membarrier and futexes) and call_rcu queue are invisible to it.
 * Without annotations it sees an object published by one thread and read
 * by another with nothing ordering the two, and an object freed on the
 * call_rcu thread with nothing ordering the free after the accesses of the
 * remover and of the readers. So:
 *
 *  - Grace periods: the end of every read-side section, and every
 *    kv_rcu_call, releases one token; a callback (before it runs) and
 *    kv_rcu_barrier (before it returns) acquire it. What any thread did
 *    before a grace period thus happens before what runs after it, which is
 *    RCU's promise (slightly more: a section that ended after the grace
 *    period began is ordered too; it can no longer hold the object).
 *  - Publication: kv_rcu_publish(obj) before obj is made reachable
 *    (cds_lfht_add) releases at obj's address; kv_rcu_found(obj) acquires
 *    there where a reader first looks at an object it found (the lookup's
 *    match function): the pair rcu_assign_pointer and rcu_dereference make
 *    inside cds_lfht.
 *
 * The internals of liburcu that no annotation reaches (its own allocations,
 * freed by its own threads) are suppressed by name in rcu.c, each with its
 * reason. In other builds every annotation is empty.
 */
#ifndef KVMEM_CORE_RCU_H
#define KVMEM_CORE_RCU_H

#include <urcu/urcu-memb.h>

#include "core/tsan.h"

/* An rcu_head that remembers its callback, so that the callback is entered annotated. */
struct kv_rcu_head {
	struct rcu_head head;			/* liburcu's */
	void (*fn)(struct kv_rcu_head *h);	/* run after a grace period */
};

/* A read-side section: a registered thread, never across blocking calls. */
void kv_rcu_read_lock(void);
void kv_rcu_read_unlock(void);
/*
 * fn(h) after a grace period, on liburcu's call_rcu thread (h's object
 * must stay allocated until then). Any registered thread, outside or inside
 * a read-side section.
 */
void kv_rcu_call(struct kv_rcu_head *h, void (*fn)(struct kv_rcu_head *h));
/*
 * Wait until every callback queued before has run. A registered thread,
 * outside any read-side section, never on the call_rcu thread. May sleep.
 */
void kv_rcu_barrier(void);

/* obj is about to become reachable by RCU readers: what was written to it comes first. */
static inline void kv_rcu_publish(const void *obj)
{
	kv_tsan_release(obj);
}

/* A reader found obj through an RCU structure: before its first look at obj. */
static inline void kv_rcu_found(const void *obj)
{
	kv_tsan_acquire(obj);
}

#endif
