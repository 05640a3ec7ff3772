/* SPDX-License-Identifier: MIT */
/*
 * What backs guest pages, read from /proc/self/pagemap, and the kernel's
 * shared zero page: the one place src/mem and the dedup scanner learn
 * whether a page is resident, private, a store frame, the zero page or a
 * hole. Entries are a snapshot: only for a page a transaction holds
 * (mem/txn.h) is one final.
 */
#ifndef KVMEM_MEM_PAGEMAP_H
#define KVMEM_MEM_PAGEMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "mem/gm.h"

/*
 * Read /proc/self/pagemap entries of pages [idx, idx + n) (n <= 4096, within
 * one region). Returns entries read or -errno.
 */
int64_t mem_pagemap(const struct gm *gm, uint64_t idx, uint64_t n, uint64_t *entries);
/*
 * The kernel's shared zero page, two facts about it:
 *
 * mem_zero_page_known: src/mem recognises it in pagemap entries (learned
 * from a read fault, else from UFFDIO_ZEROPAGE), so pages that map it never
 * count as resident, and src/mem can give a page that must read as zeros
 * the zero page (UFFDIO_ZEROPAGE) at no cost in memory. False where neither
 * shows one page for every zero page: a kernel that forbids the zero page
 * to the process (mm_forbids_zeropage), or a pagemap that hides PFNs (a
 * process without CAP_SYS_ADMIN). Every present page then counts as resident.
 *
 * mem_zero_page_on_read: a read of a hole of anonymous memory maps it, so
 * a dropped page costs nothing until the guest writes it (KVM hosts). False
 * on kernels booted with pvm_no_zero_page, where such a read allocates a
 * page although UFFDIO_ZEROPAGE still maps the zero page (known, not on
 * read): src/mem then maps it into what it drops (mem/reclaim.h).
 */
bool mem_zero_page_known(void);
bool mem_zero_page_on_read(void);
/*
 * Tests only: from now on behave as on a kernel whose zero page src/mem cannot
 * recognise (mem_zero_page_known false), whatever this one does.
 */
void mem_forget_zero_page(void);
/* True when a pagemap entry shows host memory (present, and not the shared zero page). */
bool mem_pm_resident(uint64_t entry);
/* True when the entry maps a file or shared page (a dedup store frame). */
bool mem_pm_file(uint64_t entry);
/*
 * True when a pagemap entry shows a private (anonymous) page: present or
 * swapped out, and not a file/shared page (markers are not pages). For a page mapped onto a store
 * frame it means the guest wrote it and the kernel copied it on write.
 */
bool mem_pm_is_private(uint64_t entry);
/*
 * True when a pagemap entry maps the kernel's zero page (a hole read, or
 * UFFDIO_ZEROPAGE). Always false where memmap cannot recognise the zero page
 * (mem_zero_page_known): such entries then count as resident.
 */
bool mem_pm_is_zero_page(uint64_t entry);
/*
 * True when a pagemap entry is populated: present (any page, the zero page
 * too), swapped, or a write-protect marker on an unpopulated pte (which holds
 * writes as a protected page does). An unpopulated pte without a marker
 * holds nothing: a write to it would not wait.
 */
bool mem_pm_is_populated(uint64_t entry);
/* True when the kernel swapped the page out (a swap entry that is not a marker). */
bool mem_pm_is_swapped(uint64_t entry);
/*
 * True when a present page is mapped once only. A private page that is not
 * is one KSM merged (kvmem never forks with guest memory mapped).
 */
bool mem_pm_exclusive(uint64_t entry);
/*
 * True when no page is behind a pagemap entry: unpopulated, or a write-protect
 * marker left on an unpopulated pte. In anonymous memory such a page reads as
 * zeros; in a mapping of the store it reads the store page at its offset.
 */
bool mem_pm_is_hole(uint64_t entry);

#endif
