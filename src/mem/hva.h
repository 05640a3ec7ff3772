/* SPDX-License-Identifier: MIT */
/*
 * Private to src/mem: the VMM's accesses to guest bytes through host
 * addresses (hva). Guest memory is shared with the guest's vCPUs, which
 * write it at any moment, ordered with the VMM by nothing ThreadSanitizer
 * can see: by nothing at all where the VMM only looks (the dedup scanner
 * hashes pages the guest may be writing, and only content that stayed the
 * same across visits counts), or by userfaultfd write protection where it
 * holds a page (a guest write waits in the kernel until the transaction
 * lets the page go, mem/txn.h). So TSan would report every read, compare,
 * hash or copy of guest bytes as a data race with the guest, and in unit
 * tests with the threads that stand in for vCPUs.
 *
 * Every such access goes through these helpers. Under TSan they make the
 * guest side of it invisible (core/tsan.h) and nothing else: the VMM
 * buffer a copy fills or a compare reads is still checked, so a real race
 * on it is still reported. In every other build they are plain memcpy,
 * memset and memcmp. A system call or a library that reads or writes guest
 * bytes itself (pread, pwrite, a hash) runs between mem_hva_racy_begin and
 * mem_hva_racy_end. The cost: two VMM threads writing the same guest
 * bytes without a lock would not be reported either (devices write guest
 * memory under their device lock). A virtqueue's indexes are atomic
 * loads and stores (virtq.c), which TSan understands: no helper there.
 *
 * Any thread; no locks. The caller has checked the range.
 */
#ifndef KVMEM_MEM_HVA_H
#define KVMEM_MEM_HVA_H

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>

#include "core/tsan.h"

/* Guest bytes at hva into the VMM's dst. */
static inline void mem_hva_copy_out(void *dst, const void *hva, size_t n)
{
	kv_tsan_ignore_begin();
	memcpy(dst, hva, n);
	kv_tsan_ignore_end();
	kv_tsan_write_range(dst, n);
}

/* The VMM's src into guest bytes at hva. */
static inline void mem_hva_copy_in(void *hva, const void *src, size_t n)
{
	kv_tsan_read_range(src, n);
	kv_tsan_ignore_begin();
	memcpy(hva, src, n);
	kv_tsan_ignore_end();
}

static inline void mem_hva_fill(void *hva, int c, size_t n)
{
	kv_tsan_ignore_begin();
	memset(hva, c, n);
	kv_tsan_ignore_end();
}

/* memcmp of guest bytes at hva with the VMM's buf. */
static inline int mem_hva_cmp(const void *hva, const void *buf, size_t n)
{
	int ret;

	kv_tsan_read_range(buf, n);
	kv_tsan_ignore_begin();
	ret = memcmp(hva, buf, n);
	kv_tsan_ignore_end();
	return ret;
}

/* memcmp of two ranges of guest bytes (the same VM's or two VMs'). */
static inline int mem_hva_cmp_hva(const void *a, const void *b, size_t n)
{
	int ret;

	kv_tsan_ignore_begin();
	ret = memcmp(a, b, n);
	kv_tsan_ignore_end();
	return ret;
}

/* Around a call that reads or writes guest bytes by itself (not nested). */
static inline void mem_hva_racy_begin(void)
{
	kv_tsan_ignore_begin();
}

static inline void mem_hva_racy_end(void)
{
	kv_tsan_ignore_end();
}

/*
 * mmap over guest RAM (MAP_FIXED), or of memory that is moved there after
 * (mremap, which TSan does not see). TSan counts a new mapping as a write
 * of all of it by the mapping thread, and a page remapped under a running
 * guest is no such write (what the guest reads there is the transaction's
 * to keep): inside an ignore region it forgets the range's history instead.
 */
static inline void *mem_hva_mmap(void *hva, size_t len, int prot, int flags, int fd, off_t off)
{
	void *p;
	int err;

	kv_tsan_ignore_begin();
	p = mmap(hva, len, prot, flags, fd, off);
	err = errno; /* mmap's, for the caller */
	kv_tsan_ignore_end();
	errno = err;
	return p;
}

/* True when the MEM_PAGE_SIZE bytes of guest memory at hva are all zero. */
bool mem_hva_is_zero(const void *hva);

#endif
