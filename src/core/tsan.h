/* SPDX-License-Identifier: MIT */
/*
 * ThreadSanitizer annotations: what the VMM tells TSan that TSan cannot see
 * for itself, and nothing in any other build (every helper is an empty
 * inline function there).
 *
 * Two things need saying. Ordering that is made outside TSan's view: the
 * barriers and grace periods of liburcu and cds_lfht, which are built
 * without TSan (core/rcu.h says how they are annotated). And accesses that
 * are races by design: guest memory is shared with a guest that writes it at
 * any moment, and every VMM reads and copies it concurrently all the same
 * (mem/hva.h hides exactly those accesses; the VMM-side buffer of a copy
 * stays visible). Besides, a fence TSan would warn about (kv_fence_seq_cst).
 *
 * Any thread; no locks.
 */
#ifndef KVMEM_CORE_TSAN_H
#define KVMEM_CORE_TSAN_H

#include <stddef.h>

#if defined(__SANITIZE_THREAD__)
#define KV_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KV_TSAN 1
#endif
#endif

/*
 * On a function whose memory accesses are all races by design (guest
 * bytes): TSan does not instrument it. Harmless in other builds.
 */
#define KV_NO_TSAN __attribute__((no_sanitize("thread")))

#ifdef KV_TSAN
/*
 * The runtime's own entry points (libtsan; its header declares only the
 * first two). The sizes are declared as GCC's built-ins have them (the
 * runtime's unsigned long is the same register).
 */
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
void __tsan_read_range(void *addr, long size);
void __tsan_write_range(void *addr, long size);

/*
 * A release on addr happens before every later acquire on it: the pair
 * stands for a synchronisation TSan does not see.
 */
static inline void kv_tsan_release(const void *addr)
{
	__tsan_release((void *)addr);
}

static inline void kv_tsan_acquire(const void *addr)
{
	__tsan_acquire((void *)addr);
}

/*
 * Between begin and end this thread's memory accesses are neither checked
 * nor recorded (synchronisation still is). Not nested in itself here: the
 * regions are a call each.
 */
static inline void kv_tsan_ignore_begin(void)
{
	__tsan_ignore_thread_begin();
}

static inline void kv_tsan_ignore_end(void)
{
	__tsan_ignore_thread_end();
}

/* An access to [addr, addr + len) made where TSan did not look (inside an ignore). */
static inline void kv_tsan_read_range(const void *addr, size_t len)
{
	__tsan_read_range((void *)addr, (long)len);
}

static inline void kv_tsan_write_range(void *addr, size_t len)
{
	__tsan_write_range(addr, (long)len);
}

/*
 * A sequentially consistent fence. TSan does not model a standalone fence
 * (GCC warns, -Wtsan), and the fences kvmem has order its accesses to guest
 * memory against a guest TSan does not see anyway: under TSan the same
 * full barrier is written out (x86-64, as all of kvmem).
 */
static inline void kv_fence_seq_cst(void)
{
	__asm__ __volatile__("mfence" ::: "memory");
}
#else
static inline void kv_tsan_release(const void *addr)
{
	(void)addr;
}

static inline void kv_tsan_acquire(const void *addr)
{
	(void)addr;
}

static inline void kv_tsan_ignore_begin(void)
{
}

static inline void kv_tsan_ignore_end(void)
{
}

static inline void kv_tsan_read_range(const void *addr, size_t len)
{
	(void)addr;
	(void)len;
}

static inline void kv_tsan_write_range(void *addr, size_t len)
{
	(void)addr;
	(void)len;
}

static inline void kv_fence_seq_cst(void)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}
#endif

#endif
