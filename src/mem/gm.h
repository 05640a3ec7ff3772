/* SPDX-License-Identifier: MIT */
/*
 * The guest-memory access API: the only way device emulation, migration and
 * the dedup scanner touch guest memory. Every access names a guest-physical
 * range that is checked against the RAM regions; a range that leaves RAM or
 * wraps is an error for that request, never a host crash. No host pointer
 * leaves this API except through mem_slice_get (mem/, virtq, migrate only).
 *
 * The region layout of a VM is fixed at creation, so lookups need no lock;
 * the pages behind it change (dedup, balloon, swap), which is why no pointer
 * is kept across calls.
 */
#ifndef KVMEM_MEM_GM_H
#define KVMEM_MEM_GM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint64_t gpa_t;

struct gm;

#define MEM_PAGE_SIZE 4096ULL
#define MEM_PAGE_SHIFT 12

/* Anonymous guest memory of `bytes` laid out like a VM's, without KVM (tests). */
int mem_create_anon(uint64_t bytes, struct gm **out);
void mem_destroy(struct gm *gm);

/* True when [gpa, gpa + len) lies entirely in guest RAM (len 0: gpa in RAM). */
bool mem_range_ok(const struct gm *gm, gpa_t gpa, uint64_t len);

/*
 * Copy between guest RAM and a host buffer, across region boundaries.
 * All or nothing: 0, -EFAULT if any byte is outside RAM, -EOVERFLOW if the
 * range wraps.
 */
int mem_read(const struct gm *gm, gpa_t gpa, void *buf, size_t len);
int mem_write(struct gm *gm, gpa_t gpa, const void *buf, size_t len);

/* Little-endian field helpers for virtio and boot structures. */
int mem_read_le16(const struct gm *gm, gpa_t gpa, uint16_t *val);
int mem_read_le32(const struct gm *gm, gpa_t gpa, uint32_t *val);
int mem_read_le64(const struct gm *gm, gpa_t gpa, uint64_t *val);
int mem_write_le16(struct gm *gm, gpa_t gpa, uint16_t val);
int mem_write_le32(struct gm *gm, gpa_t gpa, uint32_t val);
int mem_write_le64(struct gm *gm, gpa_t gpa, uint64_t val);

/*
 * A 16-bit store with release ordering (a virtqueue's index the guest reads
 * without a lock): what mem_write_le16 does, ordered after every earlier
 * write to guest memory.
 */
int mem_store_le16_release(struct gm *gm, gpa_t gpa, uint16_t val);

/* Write `len` zero bytes at gpa (all or nothing, like mem_write). */
int mem_zero_fill(struct gm *gm, gpa_t gpa, size_t len);

/* Copy `len` bytes from fd at `off` into guest RAM (boot loader). */
int mem_copy_from_fd(struct gm *gm, gpa_t gpa, int fd, uint64_t off, size_t len);

/*
 * A bounds-checked window onto guest RAM: [hva, hva + len) backs
 * [gpa, gpa + len), len may be shorter than asked (region end): callers loop.
 * Valid only until the caller returns; never stored. -EFAULT outside RAM.
 */
struct mem_slice {
	void *hva;
	size_t len;
};
int mem_slice_get(const struct gm *gm, gpa_t gpa, size_t len, struct mem_slice *out);

/*
 * The VMM's own writes to guest memory, for migration: while on, every
 * write through this API (mem_write and its helpers, mem_zero_fill,
 * mem_copy_from_fd, mem_store_le16_release) marks the pages it touched.
 * Guest writes are the accelerator's to track (KVM's dirty log, or the
 * memory manager's write protection). Bitmaps have one bit per page of RAM
 * (mem_ram_bytes() / MEM_PAGE_SIZE) in page-index order: region 0's pages,
 * then region 1's (mem_region()).
 *   mem_dirty_vmm_track: start (clearing what was marked) or stop marking.
 *   mem_dirty_vmm_collect: OR the pages marked since the last collect (or
 *   the start) into out and clear them; returns how many were marked. A
 *   page is marked after its write landed, so a write racing with a
 *   collect is in this one (and its content read after it is new) or in
 *   the next one.
 */
void mem_dirty_vmm_track(struct gm *gm, bool on);
/* 64-bit words of such a bitmap. */
uint64_t mem_bitmap_words(const struct gm *gm);
uint64_t mem_dirty_vmm_collect(struct gm *gm, uint64_t *out);

/*
 * The guest's writes where the memory manager must see them itself (the
 * thread accelerator: the guest writes RAM from host threads, and there is
 * no KVM dirty log). Every page is write-protected for tracking (a reason
 * of its own, mem/txn.h) whatever backs it: a page of the VM's own, a hole,
 * the zero page, a dedup frame, swap. A page's first write records it and
 * lifts the protection; a collect protects again the pages it reports.
 * Moving a page to another backing (zero reclaim, dedup, swap) neither
 * loses nor adds a record; a page given to the balloon or reported free is
 * recorded: the destination must drop it too. Bitmaps as above.
 *   mem_dirty_guest_track: start with every page clean, or stop (every
 *   protection held for tracking lifted; a page a mechanism holds at that
 *   moment loses it at that mechanism's end, or at its next write). 0;
 *   -ENOTSUP without a userfaultfd that write-protects holes
 *   (UFFD_FEATURE_WP_UNPOPULATED, Linux 6.4): a write to a hole would not
 *   fault; -EBUSY when a page stayed held by another mechanism for seconds,
 *   or the write protection's -errno (tracking is off then).
 *   mem_dirty_guest_collect: OR the pages written since the start or the
 *   last collect into out, and protect them again; returns how many. A
 *   write racing with a collect is in this one (it landed before the
 *   collect returned: read the pages after) or in the next one.
 * One caller at a time (the migration thread); both may sleep.
 */
int mem_dirty_guest_track(struct gm *gm, bool on);
uint64_t mem_dirty_guest_collect(struct gm *gm, uint64_t *out);

/* Number of RAM regions and their guest-physical extents. */
unsigned int mem_nr_regions(const struct gm *gm);
void mem_region(const struct gm *gm, unsigned int i, gpa_t *gpa, uint64_t *len);
/* Total RAM bytes and the number of 4 KiB frames from gpa 0 to the end of RAM. */
uint64_t mem_ram_bytes(const struct gm *gm);

/*
 * For an error message about what a guest page held: what backs the page of
 * gpa now (its state, the sharing frame, host swap's slot, its chunk's fault
 * mode, write protection and the kernel's pagemap entry), as one phrase
 * written to buf. Only a description: each part is read without owning the
 * page, so a mechanism at work on it may change it at the same moment.
 */
void mem_page_describe(const struct gm *gm, gpa_t gpa, char *buf, size_t len);

#endif
