/* SPDX-License-Identifier: MIT */
/*
 * Guest accesses for the threads that stand in for vCPUs in unit tests. A
 * guest writes and reads its memory at any moment, ordered with the VMM by
 * nothing but userfaultfd (a write to a page a transaction holds waits in
 * the kernel until the page is let go), which ThreadSanitizer cannot see.
 * So these are relaxed atomics, as are the tests' own looks at bytes such a
 * thread may be writing: TSan reports no race between atomics, and the
 * VMM's side of the race is annotated already (mem/hva.h). A relaxed atomic
 * byte is a plain load or store in the machine code, as a guest's is.
 */
#ifndef KVMEM_TESTS_FAKE_GUEST_H
#define KVMEM_TESTS_FAKE_GUEST_H

#include <stdint.h>

static inline void fake_guest_store8(void *p, uint8_t val)
{
	__atomic_store_n((uint8_t *)p, val, __ATOMIC_RELAXED);
}

static inline uint8_t fake_guest_load8(const void *p)
{
	return __atomic_load_n((const uint8_t *)p, __ATOMIC_RELAXED);
}

#endif
