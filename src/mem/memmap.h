/* SPDX-License-Identifier: MIT */
/*
 * Creation of a VM's guest RAM: anonymous private memory (MAP_NORESERVE),
 * split around the MMIO hole (see core/layout.h), and its registration with
 * KVM as memslots. The regions never move or resize after creation.
 */
#ifndef KVMEM_MEM_MEMMAP_H
#define KVMEM_MEM_MEMMAP_H

#include <stdbool.h>

#include "mem/gm.h"

/*
 * Reserve `ram_bytes` of guest RAM (page multiple, > 0). -EINVAL for a size
 * of 0 or not page aligned, -E2BIG above what the guest layout can map,
 * -ENOMEM when the host cannot reserve the address space.
 */
int memmap_create(uint64_t ram_bytes, struct gm **out);
/*
 * Give gm a userfaultfd with all RAM registered in write-protect mode, so
 * reclaim can hold guest writes to a page while it works on it (mem/uffd.h).
 * -ENOSYS/-EPERM when userfaultfd is unavailable.
 */
int memmap_enable_uffd(struct gm *gm);
/*
 * Mark all of gm's RAM MADV_MERGEABLE so the host kernel's ksmd may merge
 * its pages (`--dedup ksm`). 0, or -errno (-EINVAL: kernel without KSM).
 */
int memmap_set_mergeable(struct gm *gm);
/* The VM's page-state map. */
struct pagestate *memmap_pagestate(struct gm *gm);

/* Register every region as a KVM memslot, slots first_slot.. ; flags are KVM_MEM_*. */
int memmap_register_kvm(struct gm *gm, int vm_fd, uint32_t first_slot, uint32_t flags);

/* Page index (0..gm_nr_pages-1) of a RAM gpa, or -1 when gpa is outside RAM. */
int64_t memmap_page_index(const struct gm *gm, gpa_t gpa);
/* Guest-physical address of page index i. */
gpa_t memmap_index_gpa(const struct gm *gm, uint64_t index);
/* Number of RAM pages: page indexes run over RAM only, holes excluded. */
uint64_t memmap_nr_pages(const struct gm *gm);

/*
 * Read /proc/self/pagemap entries of pages [idx, idx + n) (n <= 4096, within
 * one region). Returns entries read or -errno.
 */
int64_t memmap_pagemap(const struct gm *gm, uint64_t idx, uint64_t n, uint64_t *entries);
/*
 * True when this kernel maps its shared zero page on a read of untouched
 * anonymous memory; false where every such read allocates a page.
 */
bool memmap_kernel_zero_page(void);
/* True when a pagemap entry shows host memory (present, and not the shared zero page). */
bool memmap_pm_resident(uint64_t entry);
/* True when the entry maps a file or shared page (a dedup store frame). */
bool memmap_pm_file(uint64_t entry);
/*
 * Count resident pages of gm, and move pages the guest touched again after
 * they were dropped (zero, reported, ballooned) back to PS_ANON.
 */
uint64_t memmap_resident(struct gm *gm);

#endif
