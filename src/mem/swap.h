/* SPDX-License-Identifier: MIT */
/*
 * Host swap, the store: kvmem's own swap file, one per host, that guest
 * pages are paged out to (double paging: the guest does not know) and read
 * back from when the guest touches them.
 *
 * The file is created with O_TMPFILE where the filesystem allows it (a crash
 * leaves nothing behind; else created 0600 and unlinked at once),
 * preallocated with fallocate, and written and read with O_DIRECT through
 * aligned buffers: written through the page cache, a swap file only moves
 * the memory (and a memory cgroup charges that page cache to kvmem). A
 * tmpfs path is refused: it is memory.
 *
 * Swap-out runs on a worker of the store's own (or the caller's thread,
 * mem_swap_out) and takes pages through the page-range transaction
 * (mem/txn.h): claimed and write-protected, written, and only once the
 * write completed
 * committed as swapped (their chunk registered for MISSING faults, the page
 * dropped). A page is never both dropped and unwritten: a write that fails
 * (ENOSPC, EIO, a short write) keeps every page of its run resident, is
 * counted and said once. Swap-in is the fault dispatcher's: a MISSING fault
 * on a swapped page starts reading its slot, and the read's completion
 * copies it in before the access is woken (the userfaultfd service serves
 * other faults meanwhile); a VMM read through the access API (mem_read)
 * reads a swapped page's slot without swapping it in; a page the guest
 * gives up while swapped (balloon, free page
 * reporting) loses its slot unread. A read that fails stops that VM alone,
 * with the reason: the VM is stopped before the access is answered (with
 * zeros, so no VMM thread waits forever on a VM that will not run again).
 *
 * Slots are allocated in runs: the pages of one swap-out run get
 * neighbouring slots, so neighbours are read back together. Pages that
 * compress well stay in memory in a compressed pool instead, where one is
 * set up (mem_swap_set_pool).
 */
#ifndef KVMEM_MEM_SWAP_H
#define KVMEM_MEM_SWAP_H

#include <stdbool.h>
#include <stdint.h>

#include "mem/gm.h"

struct mem_swap;

#define MEM_SWAP_DEFAULT_BYTES (4ULL << 30)

/*
 * Open a swap file of `bytes` (page multiple, > 0) in directory or file
 * path `path`: a directory gets an unnamed file in it; a file path is
 * created (never an existing file overwritten) and unlinked at once.
 * allow_tmpfs: tests that want ENOSPC from a small tmpfs. 0, or -errno with
 * *why set to a sentence for the user (-EINVAL: tmpfs, -EEXIST, -ENOSPC
 * from the preallocation...).
 */
int mem_swap_open(const char *path, uint64_t bytes, bool allow_tmpfs, struct mem_swap **out,
		  const char **why);
/*
 * Keep pages that compress to at most half a page (LZ4) in a compressed
 * pool of `bytes` in memory, before the file: a touch then costs a
 * decompression, not a read. Its memory in use counts like guest memory
 * (mem_swap_stats). Set once: 0, -EBUSY (set already), -EINVAL, -ENOMEM.
 */
int mem_swap_set_pool(struct mem_swap *sw, uint64_t bytes);
/*
 * The I/O engine (set before mem_swap_serve): io_uring where the kernel
 * allows it, else a pool of pread/pwrite threads (auto, the default);
 * uring fails where io_uring cannot be set up. 0, -EBUSY (served already),
 * -errno.
 */
enum mem_swap_io {
	MEM_SWAP_IO_AUTO,
	MEM_SWAP_IO_URING,
	MEM_SWAP_IO_THREADS,
};
int mem_swap_set_io(struct mem_swap *sw, enum mem_swap_io io);
/* The engine running: "io_uring" or "threads". */
const char *mem_swap_engine(const struct mem_swap *sw);
/*
 * Serve swap-ins asynchronously from svc's loop: a fault's read is started
 * and the service goes on, its completion comes back through an eventfd
 * the service watches. Without it, a fault is read while the service waits.
 * Close sw before destroying svc.
 */
struct uffd_service;
int mem_swap_serve(struct mem_swap *sw, struct uffd_service *svc);
/* Close the file (every VM detached first). */
void mem_swap_close(struct mem_swap *sw);

/*
 * Called when one of gm's swapped pages cannot be read back: the VM must
 * stop, its vCPUs kicked before this returns (the access is answered right
 * after, with zeros the guest must never run on), with `why` as the reason
 * (valid for the call only: copy it). Runs on the userfaultfd service
 * thread: it must not wait for that thread.
 */
typedef void (*mem_swap_fatal_fn)(void *arg, const char *why);

/*
 * Let gm's pages be swapped to sw and served back from it (before any
 * mem_swap_out on gm); `name` is what the log calls it (the VM's name).
 * Detach before destroying gm: its slots are freed.
 */
int mem_swap_attach(struct mem_swap *sw, struct gm *gm, const char *name, mem_swap_fatal_fn fatal,
		    void *arg);
void mem_swap_detach(struct mem_swap *sw, struct gm *gm);

/*
 * Swap out up to max_pages resident private pages of gm on the calling
 * thread, from page index *cursor on (wrapping once around RAM), in runs of
 * up to a transaction's worth; *cursor is left where it stopped. Zero pages
 * are left to zero reclaim and shared pages to dedup. Returns pages swapped
 * out, or -errno when none could be (-ENOSPC: the file is full; -EIO: a
 * write failed; the pages stay resident).
 */
int64_t mem_swap_out(struct mem_swap *sw, struct gm *gm, uint64_t *cursor, uint64_t max_pages);

/*
 * Have the swap-out worker swap gm down to resident_pages resident pages
 * (one target per VM: a new one replaces the last), taking its victims
 * as mem_swap_set_victims says. The worker ends the
 * target when it is reached, or when a step swaps nothing (nothing more
 * can go now) or fails.
 */
int mem_swap_target(struct mem_swap *sw, struct gm *gm, uint64_t resident_pages);
struct mem_swap_progress {
	bool active;		/* the worker is still on it */
	bool reached;
	int error;		/* -errno of the step that ended it (0: none) */
	uint64_t swapped_pages;	/* swapped out towards it */
	uint64_t resident_pages; /* measured after the worker's last step */
};
/*
 * Wait until gm's target ended or CLOCK_MONOTONIC reaches deadline_ns: 0,
 * or -ETIMEDOUT (still active); *out either way.
 */
int mem_swap_wait(struct mem_swap *sw, struct gm *gm, uint64_t deadline_ns,
		  struct mem_swap_progress *out);

/*
 * Which pages the worker takes: the coldest chunks first, by the access
 * information of mem/access.h (the default), or random runs of pages, as
 * ESX 2002 did (a baseline to compare with).
 */
enum mem_swap_victims {
	MEM_SWAP_VICTIMS_COLDEST,
	MEM_SWAP_VICTIMS_RANDOM,
};
void mem_swap_set_victims(struct mem_swap *sw, enum mem_swap_victims victims);
/*
 * Hand the victims to the kernel's swap (MADV_PAGEOUT) instead of writing
 * them to the file: kvmem's choice on the kernel's I/O path, for
 * comparison (bench/hotset); it needs a kernel swap device, and the pages
 * come back through the kernel's own faults, not counted here.
 */
void mem_swap_set_kernel_store(struct mem_swap *sw, bool on);
/* "coldest" or "random": the victims sw's worker takes. */
const char *mem_swap_victims_name(const struct mem_swap *sw);

/*
 * At most max_pages of gm's pages in swap (UINT64_MAX: no limit; 0: never
 * swapped, a latency-sensitive VM): targets stop at it.
 */
int mem_swap_set_limit(struct mem_swap *sw, struct gm *gm, uint64_t max_pages);
uint64_t mem_swap_limit(struct mem_swap *sw, const struct gm *gm);

/*
 * Register swap as the policy's last reclaim mechanism (cost 4: after zero
 * pages, sharing and the balloon; the compressed pool is its first stage):
 * a VM over its share is given a swap-out target.
 */
struct ovc;
int mem_swap_register_reclaim(struct mem_swap *sw, struct ovc *ovc);

struct mem_swap_stats {
	uint64_t file_bytes;	/* size of the swap file */
	uint64_t used_bytes;	/* slots in use */
	uint64_t swap_outs;	/* pages written out and dropped */
	uint64_t swap_ins;	/* pages read back on a guest or VMM touch */
	uint64_t discarded;	/* slots freed unread: the guest gave the page up */
	uint64_t write_errors;	/* runs kept resident because their write failed */
	uint64_t read_errors;	/* pages that could not be read back (their VM stopped) */
	uint64_t full;		/* swap-outs refused: no slots */
	uint64_t pool_bytes;	/* the compressed pool's size (0: none) */
	uint64_t pool_used_bytes; /* its memory in use (counts like guest memory) */
	uint64_t pool_pages;	/* pages kept in it */
	uint64_t pool_compressed_bytes; /* their compressed size */
};
void mem_swap_stats(struct mem_swap *sw, struct mem_swap_stats *out);
/* Pages of gm in its swap slots now. */
uint64_t mem_swap_vm_pages(const struct gm *gm);

#define MEM_SWAP_HIST 16	/* fault service times: bucket i is [2^i, 2^(i+1)) us, 0 below 2 us */

struct mem_swap_vm_stats {
	uint64_t swapped_pages;	/* in swap slots now */
	uint64_t swap_outs;	/* pages written out and dropped */
	uint64_t faults;	/* touches of swapped pages served */
	uint64_t readahead;	/* pages read back with a touched one, not touched themselves */
	uint64_t fault_p50_us;	/* median service time of those faults (upper bound of its bucket) */
	uint64_t fault_p99_us;
	uint64_t fault_hist[MEM_SWAP_HIST];
};
/*
 * Memory a swapped page's slot holds: its entry's size in the compressed
 * pool, or 0 for a slot of the swap file.
 */
uint64_t mem_swap_slot_memory(uint64_t slot);
/* gm's swap figures (all zero for a VM that never swapped). */
void mem_swap_vm_stats(const struct gm *gm, struct mem_swap_vm_stats *out);

#endif
