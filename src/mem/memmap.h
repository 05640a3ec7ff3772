/* SPDX-License-Identifier: MIT */
/*
 * Creation of a VM's guest RAM: anonymous private memory (MAP_NORESERVE),
 * split around the MMIO hole (see core/layout.h). The regions never move or
 * resize after creation.
 *
 * Each VM's guest-physical space is one contiguous reservation of host
 * address space: guest-physical X lives at host address phys_base + X, the
 * MMIO hole and everything up to the top of the span stay PROT_NONE, and a
 * PROT_NONE guard gap of MEM_GUARD lies on each side. Under the thread
 * accelerator the guest runs on this mapping itself, so a guest that runs off
 * its RAM faults instead of writing into a neighbour, and a constant offset
 * turns its guest-physical addresses into pointers.
 *
 * Reservations come from a fixed arena, first fit in creation order from an
 * origin each process draws once (so hosts on one machine hand out different
 * bases, and a thread VM can move between them). The arena lies above the AddressSanitizer shadow
 * (which ends below 0x100080000000) and below every address the kernel gives
 * the executable, the libraries and the stacks (ASLR puts them from
 * 0x550000000000 up; even the legacy mmap layout starts at a third of the
 * address space, 0x2aaaaaaab000). The thread accelerator relies on the last
 * part: all host code lies above MEM_ARENA_END, guest code below it.
 */
#ifndef KVMEM_MEM_MEMMAP_H
#define KVMEM_MEM_MEMMAP_H

#include <stdbool.h>

#include "core/tsan.h"
#include "mem/gm.h"

#ifdef KV_TSAN
/*
 * ThreadSanitizer gives applications only a few ranges of the address space
 * (its shadow and metadata take the rest, ours included); the lowest holds
 * nothing but the odd MAP_32BIT mapping below 4 GiB with a PIE executable,
 * and host code still lies above the arena's end.
 */
#define MEM_ARENA_START 0x001000000000ULL
#define MEM_ARENA_END 0x007f00000000ULL
#else
#define MEM_ARENA_START 0x110000000000ULL
#define MEM_ARENA_END 0x2a0000000000ULL
#endif
#define MEM_GUARD (1ULL << 30)
/* All the VMs of one process share this much host address space. */
#define MEM_ARENA_BYTES (MEM_ARENA_END - MEM_ARENA_START)

/*
 * Reserve `ram_bytes` of guest RAM (page multiple, > 0), executable by host
 * threads when `exec` (the thread accelerator runs guest code in it). -EINVAL
 * for a size of 0 or not page aligned, -E2BIG above what the guest layout can
 * map, -ENOMEM when the host cannot reserve the address space.
 */
int mem_create(uint64_t ram_bytes, bool exec, struct gm **out);
/*
 * mem_create with guest-physical 0 at host address phys_base exactly (a
 * migrated or restored VM that can only run at the base it had): -EINVAL
 * for a base the arena cannot hold, -EADDRINUSE when that place is taken.
 */
int mem_create_at(uint64_t ram_bytes, bool exec, uint64_t phys_base, struct gm **out);
/*
 * Top of the guest-physical span for `ram_bytes` of RAM: RAM, the MMIO hole
 * and nothing else lie below it; 1 GiB aligned.
 */
uint64_t mem_phys_top(uint64_t ram_bytes);
/*
 * Address space a VM with `ram_bytes` of RAM takes of the arena: its span
 * and both guard gaps. The VMs of a process fit when these add up to at
 * most MEM_ARENA_BYTES.
 */
uint64_t mem_reserve_bytes(uint64_t ram_bytes);
/*
 * The VM lives on elsewhere at its address (it moved to another host, or
 * into a file that may be restored): when gm is destroyed its place in the
 * arena stays taken for new VMs, and only a VM that asks for that very
 * place (mem_create_at with its base: the VM coming back) gets it. Under
 * the thread accelerator a guest resumes only at its own address: a new VM
 * there would keep it from coming back, and a host that hands its place out
 * again would give a VM that moved elsewhere a twin address.
 */
void mem_keep_place(struct gm *gm);
/* Host address of guest-physical 0 (fixed for the VM's life). */
uint8_t *mem_phys_base(const struct gm *gm);
/* Size of the guest-physical span, mem_phys_top of its RAM. */
uint64_t mem_span(const struct gm *gm);
/*
 * Give gm a userfaultfd with all RAM registered in write-protect mode, so
 * reclaim can hold guest writes to a page while it works on it (mem/uffd.h).
 * -ENOSYS/-EPERM when userfaultfd is unavailable.
 */
int mem_enable_uffd(struct gm *gm);
/*
 * Mark all of gm's RAM MADV_MERGEABLE so the host kernel's ksmd may merge
 * its pages (`--dedup ksm`). 0, or -errno (-EINVAL: kernel without KSM).
 */
int mem_set_mergeable(struct gm *gm);
/* The VM's page-state map. */
struct pagestate *mem_pagestate(struct gm *gm);

/* Page index (0..mem_nr_pages-1) of a RAM gpa, or -1 when gpa is outside RAM. */
int64_t mem_page_index(const struct gm *gm, gpa_t gpa);
/* Guest-physical address of page index i. */
gpa_t mem_index_gpa(const struct gm *gm, uint64_t index);
/* Number of RAM pages: page indexes run over RAM only, holes excluded. */
uint64_t mem_nr_pages(const struct gm *gm);

/*
 * Count resident pages of gm, and move pages the guest touched again after
 * they were dropped (zero, reported, ballooned) back to PS_ANON.
 */
uint64_t mem_resident(struct gm *gm);

#endif
