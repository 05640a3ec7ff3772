/* SPDX-License-Identifier: MIT */
/*
 * Creation of a VM's guest RAM: anonymous private memory (MAP_NORESERVE),
 * split around the MMIO hole (see core/layout.h), and its registration with
 * KVM as memslots. The regions never move or resize after creation.
 */
#ifndef KVMEM_MEM_MEMMAP_H
#define KVMEM_MEM_MEMMAP_H

#include "mem/gm.h"

/*
 * Reserve `ram_bytes` of guest RAM (page multiple, > 0). -EINVAL for a size
 * of 0 or not page aligned, -E2BIG above what the guest layout can map,
 * -ENOMEM when the host cannot reserve the address space.
 */
int memmap_create(uint64_t ram_bytes, struct gm **out);

/* Register every region as a KVM memslot, slots first_slot.. ; flags are KVM_MEM_*. */
int memmap_register_kvm(struct gm *gm, int vm_fd, uint32_t first_slot, uint32_t flags);

/* Page index (0..gm_nr_pages-1) of a RAM gpa, or -1 when gpa is outside RAM. */
int64_t memmap_page_index(const struct gm *gm, gpa_t gpa);
/* Guest-physical address of page index i. */
gpa_t memmap_index_gpa(const struct gm *gm, uint64_t index);
/* Number of RAM pages: page indexes run over RAM only, holes excluded. */
uint64_t memmap_nr_pages(const struct gm *gm);

#endif
