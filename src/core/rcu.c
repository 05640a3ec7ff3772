/* SPDX-License-Identifier: MIT */
/*
 * RCU with its ordering told to ThreadSanitizer (core/rcu.h). Any
 * registered thread; no locks of ours.
 */
#include "core/rcu.h"

/* The grace-period token: only its address matters. */
static char grace;

void kv_rcu_read_lock(void)
{
	urcu_memb_read_lock();
}

void kv_rcu_read_unlock(void)
{
	kv_tsan_release(&grace);
	urcu_memb_read_unlock();
}

static void trampoline(struct rcu_head *head)
{
	struct kv_rcu_head *h = caa_container_of(head, struct kv_rcu_head, head);

	kv_tsan_acquire(&grace);
	h->fn(h);
}

void kv_rcu_call(struct kv_rcu_head *h, void (*fn)(struct kv_rcu_head *h))
{
	h->fn = fn;
	kv_tsan_release(&grace);
	urcu_memb_call_rcu(&h->head, trampoline);
}

void kv_rcu_barrier(void)
{
	urcu_memb_barrier();
	kv_tsan_acquire(&grace);
}

/*
 * ThreadSanitizer reads its suppressions from here (it looks this function
 * up at start) in every TSan-built program that links RCU, so tests and
 * the kvmem binary need no options for them. Only liburcu's internals that
 * nothing here can annotate, each with its reason:
 *
 *   urcu_memb_barrier: allocates a completion and one work item per
 *   call_rcu thread, which those threads free once they reach it; they are
 *   handed over through liburcu's wait-free queue and futexes, which TSan
 *   does not see (the free is reported against the calloc).
 */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
	return "race:urcu_memb_barrier\n";
}
