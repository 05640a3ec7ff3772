/* SPDX-License-Identifier: MIT */
/*
 * Page content for the dedup scanner: hash, compare and copy whole guest
 * pages, and the few facts about their host mappings it needs. The scanner
 * never holds a host pointer: each call resolves the page here (mem/ owns
 * hva) and lends it, read-only, for the length of the call.
 *
 * Reading a page that is not resident faults memory in: callers check the
 * pagemap entry first (mem/pagemap.h). A page being compared for a merge
 * must be claimed first (mem_txn_claim in mem/txn.h, which write-protects
 * it): only then is the compare final ("protect first, compare second").
 *
 * All calls may run on any thread and take no lock.
 */
#ifndef KVMEM_MEM_PAGECONTENT_H
#define KVMEM_MEM_PAGECONTENT_H

#include <stdbool.h>
#include <stdint.h>

#include "mem/gm.h"

/* A page hash function: `page` is MEM_PAGE_SIZE bytes, valid for the call only. */
typedef uint64_t (*mem_page_hash_fn)(const void *page, const void *key);

/* Hash page idx with fn(page, key) into *hash. 0, or -EINVAL for idx outside RAM. */
int mem_page_hash(const struct gm *gm, uint64_t idx, mem_page_hash_fn fn, const void *key,
		  uint64_t *hash);
/* True when page idx holds only zero bytes (false for idx outside RAM). */
bool mem_page_is_zero(const struct gm *gm, uint64_t idx);
/* 1 when page ia of a and page ib of b are byte-for-byte equal, 0 when not, -EINVAL. */
int mem_page_equal(const struct gm *a, uint64_t ia, const struct gm *b, uint64_t ib);
/* Write page idx to fd at byte offset off (page aligned). 0 or -errno. */
int mem_page_copy_to_fd(const struct gm *gm, uint64_t idx, int fd, uint64_t off);

/* 1 when page idx equals the MEM_PAGE_SIZE bytes at buf, 0 when not, -EINVAL. */
int mem_page_equal_buf(const struct gm *gm, uint64_t idx, const void *buf);

/*
 * Number of host VMAs (mappings) that overlap the RAM of the nr VMs in gms,
 * read from /proc/self/maps (costs about 0.5 us per mapping of the process);
 * *all (if not NULL) gets the process's total. Without page sharing each
 * RAM region is one VMA. -errno on failure.
 */
int64_t mem_ram_vmas(struct gm *const *gms, unsigned int nr, uint64_t *all);

#endif
