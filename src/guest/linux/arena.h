/* SPDX-License-Identifier: MIT */
/*
 * The workload's RAM in a Linux program: one anonymous mapping handed to
 * palloc as the single RAM range of a kvmem guest, at a guest-physical
 * address of its own (ARENA_GPA). rt_phys_offset is the mapping's address
 * minus that gpa, so the engine's gpas, gfns and phys_to_virt() work as in
 * a guest whose RAM does not sit at its physical address (as under the
 * thread accelerator).
 *
 * A page the engine never allocates is never touched, by palloc or by
 * Linux: the mapping takes no memory until the engine writes it.
 */
#ifndef KVMEM_GUEST_LINUX_ARENA_H
#define KVMEM_GUEST_LINUX_ARENA_H

#include <stdint.h>

/* 4 GiB: chunk aligned, and 16 TiB of gfns above it still fit in 32 bits. */
#define ARENA_GPA (1ULL << 32)

/*
 * What Linux has available for the workload (MemAvailable of /proc/meminfo
 * less a reserve for everything else), in bytes, page aligned; 0 when
 * /proc/meminfo does not say.
 */
uint64_t arena_default_bytes(void);

/*
 * arena_init - map @bytes (a page multiple) and start palloc on it. Once,
 * before the engine. Returns 0, -errno from mmap, or palloc_init()'s error.
 */
int arena_init(uint64_t bytes);

/* Where the mapping starts (for messages, and tests that reach into it). */
void *arena_base(void);

/*
 * arena_release_free - give every page palloc holds free back to Linux
 * (MADV_DONTNEED): pages the engine freed (then=free) leave the program,
 * and a guest kernel's free page reporting can then return them to the
 * host. Only while nothing allocates: palloc's view of what is free is a
 * snapshot, and a page allocated meanwhile would lose its content.
 */
void arena_release_free(void);

#endif
