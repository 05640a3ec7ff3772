/* SPDX-License-Identifier: MIT */
/*
 * Guest-physical addresses. The guest dereferences virtual addresses and
 * hands devices guest-physical ones; the two differ by the phys offset (0
 * under kvm, the host address of the VM's RAM under thread, abi.h). A gpa
 * is a struct, not an integer, so a pointer used as a gpa or a gpa
 * dereferenced without phys_to_virt() fails to compile instead of working
 * under kvm and corrupting memory under thread.
 *
 * Pure C: built into the freestanding guest and into host unit tests, which
 * define rt_phys_offset themselves.
 */
#ifndef KVMEM_GUEST_GPA_H
#define KVMEM_GUEST_GPA_H

#include <stdbool.h>
#include <stdint.h>

#define GPA_PAGE_SHIFT 12

typedef struct {
	uint64_t v;
} gpa_t;

/*
 * Virtual minus guest-physical. Set once by vCPU 0 from the entry register
 * before anything converts (rt_set_phys_offset()); every other vCPU reads it
 * only after rt_is_ready(), which orders it.
 */
extern uint64_t rt_phys_offset;

/* A gpa from a raw value: from a device table, a PFN, or a deliberately bad one. */
static inline gpa_t gpa(uint64_t v)
{
	return (gpa_t){ v };
}

/* The raw value, for a device register or a descriptor. */
static inline uint64_t gpa_val(gpa_t a)
{
	return a.v;
}

/* "No address": gpa 0 is below ABI_IMAGE_BASE, the VMM's, never the guest's. */
#define GPA_NULL ((gpa_t){ 0 })

static inline bool gpa_is_null(gpa_t a)
{
	return a.v == 0;
}

static inline gpa_t gpa_add(gpa_t a, uint64_t off)
{
	return gpa(a.v + off);
}

static inline gpa_t gfn_to_gpa(uint64_t gfn)
{
	return gpa(gfn << GPA_PAGE_SHIFT);
}

static inline uint64_t gpa_to_gfn(gpa_t a)
{
	return a.v >> GPA_PAGE_SHIFT;
}

static inline void *phys_to_virt(gpa_t a)
{
	return (void *)(uintptr_t)(a.v + rt_phys_offset);
}

static inline gpa_t virt_to_phys(const void *p)
{
	return gpa((uint64_t)(uintptr_t)p - rt_phys_offset);
}

#endif
