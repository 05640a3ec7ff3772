/* SPDX-License-Identifier: MIT */
/*
 * Host swap, the store (see swap.h): the file, its slots, swap-out through
 * the page-range transaction, and the hooks the fault dispatcher reads
 * swapped pages back through (mem/txn.c).
 *
 * I/O goes through the swap I/O engine (mem/swapio.h: io_uring, else a
 * pool of pread/pwrite threads). Swap-in: the userfaultfd service starts a
 * fault's read and goes on serving; the read's completion wakes the service
 * through an eventfd in its loop, and the fault's second half copies the
 * pages in (txn.c). Swap-out: a worker of its own swaps VMs down to the
 * targets it is given, one write in flight, committed when it lands.
 */
#define LOG_TAG "swap"
#include "mem/swap.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <lz4.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/fault.h"
#include "core/log.h"
#include "core/sandbox.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"
#include "mem/overcommit.h"
#include "mem/pagemap.h"
#include "mem/pagestate.h"
#include "mem/swapio.h"
#include "mem/txn.h"
#include "mem/uffd.h"
#include "core/clock.h"
#include "core/rand.h"
#include "core/thread.h"
#include "mem/access.h"

/*
 * The compressed pool (ESX's memory compression, Linux's zswap): pages that
 * LZ4 compresses to at most half a page stay in memory, compressed, in an
 * arena of its own (mmap'd, never the allocator's: a freed chunk goes back
 * to the kernel at once). The arena is cut into 4 KiB chunks, each holding
 * compressed pages of one size class (2^k * 256 bytes: 16 of 256 bytes ...
 * 2 of 2048); a chunk whose last page leaves is dropped. A pool handle is a
 * slot with POOL_BIT set: chunk, index in it, compressed length.
 */
#define POOL_BIT (1ULL << 63)
#define POOL_CLASSES 4			/* 256, 512, 1024, 2048 bytes */
#define POOL_MIN_SHIFT 8
#define POOL_MAX_BYTES (MEM_PAGE_SIZE / 2) /* what does not fit goes to the file */

struct pool {
	uint8_t *arena;		/* chunks * MEM_PAGE_SIZE, MAP_NORESERVE */
	uint64_t chunks;
	uint8_t *cls;		/* per chunk: 0 free, else size class + 1 */
	uint16_t *free_bits;	/* per chunk: its free entries */
	uint64_t cursor[POOL_CLASSES]; /* where the last entry of a class was found */
	uint64_t in_use;	/* chunks holding entries (their memory counts) */
	uint64_t pages;		/* pages stored */
	uint64_t bytes;		/* their compressed bytes */
};

/* A swap-in's read in flight (the userfaultfd service's, through fault_io). */
struct swap_req {
	struct swap_req *next;	/* on the free list or the list in flight */
	struct gm *gm;		/* NULL once its VM detached: the completion only frees it */
	uint64_t idx, slot, n, t0;
	void *page;		/* host address of the faulting page */
	uint8_t *buf;		/* MEM_SWAP_READAHEAD pages, aligned for O_DIRECT */
};

/* An attached VM: its fatal hook, and the swap-out target the worker works towards. */
struct swap_vm {
	struct gm *gm;
	char name[64];		/* what the log calls it */
	struct log_limit limit;	/* its own warnings' rate limits */
	mem_swap_fatal_fn fatal;
	void *arg;
	uint64_t cursor;	/* vm_lock: the page index the next swap-out starts at */
	uint64_t target;	/* vm_lock: resident pages wanted; NO_TARGET: none */
	bool busy;		/* vm_lock: the worker is swapping it out (cursor is its) */
	uint64_t max_pages;	/* vm_lock: most pages it may have in swap (0: never swapped) */
	uint64_t rng;		/* the worker's: random victims */
	struct mem_swap_progress progress; /* vm_lock: towards the last target */
};

#define NO_TARGET UINT64_MAX

struct mem_swap {
	int fd;
	uint64_t nr_slots;
	pthread_mutex_t lock;	 /* the slot map and the cursor */
	uint64_t *used;		 /* lock: bit per slot */
	uint64_t nr_used;	 /* changed under lock, read atomically */
	uint64_t cursor;	 /* lock: where the next run is looked for */
	pthread_mutex_t out_lock; /* one swap-out at a time: it owns buf and out_io */
	uint8_t *buf;		 /* out_lock: MEM_TXN_MAX pages, aligned for O_DIRECT */
	struct swapio *out_io;	 /* out_lock: swap-out's writes */
	struct pool pool;	 /* lock */
	struct mem_swap_stats st; /* atomic counters (file_bytes, used_bytes derived) */
	/* Swap-in: reads started by the service thread, completed in its loop. */
	struct uffd_service *svc; /* NULL: not served, reads are synchronous */
	struct swapio *fault_io; /* the service thread's alone */
	pthread_mutex_t fault_lock; /* the requests, against detach */
	struct swap_req *reqs_free, *reqs_busy; /* fault_lock */
	/* The swap-out worker and the VMs it works for. */
	pthread_mutex_t vm_lock;
	pthread_cond_t work_cv, done_cv; /* vm_lock: a target set; a step done */
	struct swap_vm **vms;	 /* vm_lock */
	unsigned int nr_vms, cap_vms, next_vm; /* vm_lock */
	bool stop;		 /* vm_lock */
	enum mem_swap_victims victims; /* atomic */
	bool kernel_store;	 /* victims handed to the kernel's swap (MADV_PAGEOUT) */
	pthread_t worker;
	bool worker_on;
};

#define SWAP_OUT_DEPTH 4	/* swap-out has one write in flight; room to grow */
#define SWAP_FAULT_DEPTH 256	/* faults waiting at once, beyond which reads are synchronous */

static void *worker_main(void *arg);

static void count(uint64_t *c, uint64_t n)
{
	__atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

/* --- the file --- */

/*
 * Give the file its size. Preallocated, so a swap-out does not find the
 * disk full. A filesystem without fallocate (9p says EOPNOTSUPP or EINVAL;
 * some network filesystems) gets a sparse file: a write that then finds no
 * room is a write error like any other, and keeps its pages. -errno with
 * *sizing set on failure.
 */
static int size_file(int fd, uint64_t bytes, bool *sizing)
{
	int ret = fallocate(fd, 0, 0, (off_t)bytes) ? -errno : 0;

	if (ret && ret != -ENOSPC && ret != -EFBIG) {
		ret = ftruncate(fd, (off_t)bytes) ? -errno : 0;
		if (!ret)
			log_warn("the swap file's filesystem cannot preallocate it: it is sparse, and "
				 "a swap-out may find the disk full");
	}
	*sizing = ret != 0;
	return ret;
}

/*
 * Create `name` for us alone, size it, then unlink it: sized before the
 * unlink, because some filesystems (9p) resize a file by its name.
 */
static int create_sized(const char *name, int flags, uint64_t bytes, bool *sizing)
{
	int fd = open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW | flags, 0600);
	int ret;

	if (fd < 0)
		return -errno;
	ret = size_file(fd, bytes, sizing);
	unlink(name);
	if (ret) {
		close(fd);
		return ret;
	}
	return fd;
}

/* A file in directory dir that nobody else can open: unnamed where the filesystem allows. */
static int open_in_dir(const char *dir, int flags, uint64_t bytes, bool *sizing)
{
	char name[4096];
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC | flags, 0600), ret;

	if (fd >= 0) {
		ret = size_file(fd, bytes, sizing);
		if (ret) {
			close(fd);
			return ret;
		}
		return fd;
	}
	if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
		return -errno;
	for (unsigned int i = 0; i < 100; i++) {
		snprintf(name, sizeof(name), "%s/kvmem-swap-%d-%u", dir, (int)getpid(), i);
		fd = create_sized(name, flags, bytes, sizing);
		if (fd != -EEXIST)
			return fd;
	}
	return -EEXIST;
}

/* A file path: ours alone, never an existing file overwritten, gone at exit. */
static int open_file(const char *path, int flags, uint64_t bytes, bool *sizing)
{
	struct stat sb;

	*sizing = false;
	if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
		return open_in_dir(path, flags, bytes, sizing);
	return create_sized(path, flags, bytes, sizing);
}

int mem_swap_open(const char *path, uint64_t bytes, bool allow_tmpfs, struct mem_swap **out,
		  const char **why)
{
	struct mem_swap *sw;
	struct statfs fs;
	char dir[4096];
	struct stat sb;
	bool sizing = false;
	int fd, ret;

	*why = NULL;
	if (!bytes || bytes % MEM_PAGE_SIZE) {
		*why = "the swap size must be a positive multiple of 4 KiB";
		return -EINVAL;
	}
	/* The filesystem the file will live on: path itself if a directory, else its parent. */
	snprintf(dir, sizeof(dir), "%s", path);
	if (stat(dir, &sb) || !S_ISDIR(sb.st_mode)) {
		char *slash = strrchr(dir, '/');

		if (!slash)
			snprintf(dir, sizeof(dir), ".");
		else if (slash == dir)
			dir[1] = 0;
		else
			*slash = 0;
	}
	if (statfs(dir, &fs)) {
		*why = "the swap file's directory cannot be read";
		return -errno;
	}
	if (fs.f_type == TMPFS_MAGIC && !allow_tmpfs) {
		*why = "the swap file is on tmpfs, which is memory: put it on a disk";
		return -EINVAL;
	}
	fd = open_file(path, O_DIRECT, bytes, &sizing);
	/* A filesystem without O_DIRECT (tmpfs before 6.6): only where tmpfs was allowed. */
	if (fd == -EINVAL && !sizing && allow_tmpfs)
		fd = open_file(path, 0, bytes, &sizing);
	if (fd < 0) {
		if (sizing)
			*why = fd == -ENOSPC ? "no room for the swap file on its filesystem"
					     : "the swap file cannot be given its size";
		else
			*why = fd == -EINVAL ? "the swap file's filesystem cannot do O_DIRECT"
					     : "the swap file cannot be created";
		return fd;
	}
	sw = kv_zalloc(sizeof(*sw));
	if (!sw)
		goto out_nomem;
	sw->fd = fd;
	sw->nr_slots = bytes / MEM_PAGE_SIZE;
	sw->used = kv_calloc((sw->nr_slots + 63) / 64, sizeof(uint64_t));
	if (!sw->used || posix_memalign((void **)&sw->buf, MEM_PAGE_SIZE, MEM_TXN_MAX * MEM_PAGE_SIZE)) {
		kv_free(sw->used);
		kv_free(sw);
		goto out_nomem;
	}
	pthread_mutex_init(&sw->lock, NULL);
	pthread_mutex_init(&sw->out_lock, NULL);
	pthread_mutex_init(&sw->fault_lock, NULL);
	pthread_mutex_init(&sw->vm_lock, NULL);
	pthread_cond_init(&sw->work_cv, NULL);
	pthread_cond_init(&sw->done_cv, NULL);
	sw->st.file_bytes = bytes;
	ret = swapio_open(SWAPIO_AUTO, SWAP_OUT_DEPTH, &sw->out_io);
	if (!ret) {
		ret = thread_spawn(&sw->worker, "swap-out", worker_main, sw);
		sw->worker_on = !ret;
	}
	if (ret) {
		*why = "the swap I/O engine cannot be started";
		mem_swap_close(sw);
		return ret;
	}
	log_info("host swap: %llu MiB%s", (unsigned long long)(bytes >> 20),
		 fs.f_type == TMPFS_MAGIC ? " on tmpfs (tests only)" : "");
	*out = sw;
	return 0;

out_nomem:
	close(fd);
	*why = "out of memory for the swap file's slot map";
	return -ENOMEM;
}

int mem_swap_set_io(struct mem_swap *sw, enum mem_swap_io io)
{
	static const enum swapio_engine want[] = {
		[MEM_SWAP_IO_AUTO] = SWAPIO_AUTO,
		[MEM_SWAP_IO_URING] = SWAPIO_URING,
		[MEM_SWAP_IO_THREADS] = SWAPIO_THREADS,
	};
	struct swapio *io_new;
	int ret;

	if ((unsigned int)io >= sizeof(want) / sizeof(want[0]))
		return -EINVAL;
	if (sw->svc)
		return -EBUSY; /* reads are under way through the engine chosen */
	ret = swapio_open(want[io], SWAP_OUT_DEPTH, &io_new);
	if (ret)
		return ret;
	pthread_mutex_lock(&sw->out_lock);
	swapio_close(sw->out_io);
	sw->out_io = io_new;
	pthread_mutex_unlock(&sw->out_lock);
	return 0;
}

const char *mem_swap_engine(const struct mem_swap *sw)
{
	return swapio_engine_name(swapio_engine(sw->out_io));
}

/* Runs on the service thread when fault reads completed. */
static void fault_reap(void *arg);

static void free_reqs(struct swap_req *r)
{
	while (r) {
		struct swap_req *next = r->next;

		free(r->buf);
		kv_free(r);
		r = next;
	}
}

int mem_swap_serve(struct mem_swap *sw, struct uffd_service *svc)
{
	int ret;

	if (sw->svc)
		return -EBUSY;
	/* The engine swap-out runs on: one engine per host, which the stats name. */
	ret = swapio_open(swapio_engine(sw->out_io), SWAP_FAULT_DEPTH, &sw->fault_io);
	if (ret)
		return ret;
	ret = uffd_service_watch(svc, swapio_eventfd(sw->fault_io), fault_reap, sw);
	if (ret) {
		swapio_close(sw->fault_io);
		sw->fault_io = NULL;
		return ret;
	}
	sw->svc = svc;
	log_info("host swap: I/O through %s", mem_swap_engine(sw));
	return 0;
}

void mem_swap_close(struct mem_swap *sw)
{
	if (!sw)
		return;
	if (sw->worker_on) {
		pthread_mutex_lock(&sw->vm_lock);
		sw->stop = true;
		pthread_cond_broadcast(&sw->work_cv);
		pthread_mutex_unlock(&sw->vm_lock);
		pthread_join(sw->worker, NULL);
	}
	if (sw->svc)
		uffd_service_unwatch(sw->svc, swapio_eventfd(sw->fault_io));
	/* Reads still in flight land in their buffers before these go. */
	swapio_close(sw->fault_io);
	free_reqs(sw->reqs_busy);
	free_reqs(sw->reqs_free);
	swapio_close(sw->out_io);
	kv_free(sw->vms);
	pthread_mutex_destroy(&sw->fault_lock);
	pthread_mutex_destroy(&sw->vm_lock);
	pthread_cond_destroy(&sw->work_cv);
	pthread_cond_destroy(&sw->done_cv);
	close(sw->fd);
	if (sw->pool.arena)
		munmap(sw->pool.arena, sw->pool.chunks * MEM_PAGE_SIZE);
	kv_free(sw->pool.cls);
	kv_free(sw->pool.free_bits);
	free(sw->buf);
	kv_free(sw->used);
	pthread_mutex_destroy(&sw->lock);
	pthread_mutex_destroy(&sw->out_lock);
	kv_free(sw);
}

/* --- slots --- */

static bool slot_used(const struct mem_swap *sw, uint64_t s)
{
	return sw->used[s / 64] & (1ULL << (s % 64));
}

static void slot_mark(struct mem_swap *sw, uint64_t s, bool on)
{
	if (on)
		sw->used[s / 64] |= 1ULL << (s % 64);
	else
		sw->used[s / 64] &= ~(1ULL << (s % 64));
}

/* A free cluster (64 slots, one word of the map) from word w on, wrapping once: its word, or -1. */
static int64_t free_cluster(const struct mem_swap *sw, uint64_t w)
{
	uint64_t words = sw->nr_slots / 64; /* whole words only: a partial last one is never free */

	for (uint64_t seen = 0; seen < words; seen++, w = w + 1 < words ? w + 1 : 0)
		if (!sw->used[w])
			return (int64_t)w;
	return -1;
}

/* The slots [s, s + n) are all free (and in the file). */
static bool slots_free_at(const struct mem_swap *sw, uint64_t s, uint64_t n)
{
	if (s + n > sw->nr_slots)
		return false;
	for (uint64_t i = 0; i < n; i++)
		if (slot_used(sw, s + i))
			return false;
	return true;
}

/*
 * Up to `want` neighbouring free slots (their number, 0: the file is full;
 * the first in *start), so that a run written together stays together
 * however fragmented the file became (a read-back of its neighbours is then
 * one read): right after the last run where its cluster of 64 has room,
 * else from a free cluster, else the first free slots from the cursor on
 * (next fit).
 */
static uint64_t slots_alloc(struct mem_swap *sw, uint64_t want, uint64_t *start)
{
	uint64_t got = 0, from, room;
	int64_t w;

	pthread_mutex_lock(&sw->lock);
	from = sw->cursor;
	room = 64 - from % 64;
	if (want > 1 && !slots_free_at(sw, from, want < room ? want : room)) {
		w = free_cluster(sw, from / 64);
		if (w >= 0)
			from = (uint64_t)w * 64;
	}
	for (uint64_t seen = 0, s = from; seen < sw->nr_slots && !got; seen++) {
		if (!slot_used(sw, s)) {
			*start = s;
			while (got < want && s + got < sw->nr_slots && !slot_used(sw, s + got)) {
				slot_mark(sw, s + got, true);
				got++;
			}
		}
		s = s + 1 < sw->nr_slots ? s + 1 : 0;
	}
	if (got) {
		__atomic_fetch_add(&sw->nr_used, got, __ATOMIC_RELAXED);
		sw->cursor = *start + got < sw->nr_slots ? *start + got : 0;
	}
	pthread_mutex_unlock(&sw->lock);
	return got;
}

static void slots_free(struct mem_swap *sw, uint64_t start, uint64_t n)
{
	pthread_mutex_lock(&sw->lock);
	for (uint64_t s = start; s < start + n; s++)
		if (s < sw->nr_slots && slot_used(sw, s)) {
			slot_mark(sw, s, false);
			__atomic_fetch_sub(&sw->nr_used, 1, __ATOMIC_RELAXED);
		}
	pthread_mutex_unlock(&sw->lock);
}

/* --- the compressed pool (sw->lock) --- */

static unsigned int pool_class(uint64_t len)
{
	unsigned int c = 0;

	while ((1ULL << (POOL_MIN_SHIFT + c)) < len)
		c++;
	return c;
}

static uint16_t class_mask(unsigned int c)
{
	unsigned int n = (unsigned int)(MEM_PAGE_SIZE >> (POOL_MIN_SHIFT + c));

	return (uint16_t)(n >= 16 ? 0xffff : (1u << n) - 1);
}

/* Room for `len` compressed bytes: its handle, or 0 when the pool is full (or absent). */
static uint64_t pool_alloc(struct pool *p, uint64_t len)
{
	unsigned int c = pool_class(len);

	for (uint64_t seen = 0, ch = p->cursor[c]; seen < p->chunks; seen++) {
		if (p->cls[ch] == c + 1 && p->free_bits[ch]) {
			unsigned int e = (unsigned int)__builtin_ctz(p->free_bits[ch]);

			p->free_bits[ch] &= (uint16_t)~(1u << e);
			p->cursor[c] = ch;
			p->pages++;
			p->bytes += len;
			return POOL_BIT | ch << 16 | (uint64_t)e << 12 | len;
		}
		ch = ch + 1 < p->chunks ? ch + 1 : 0;
	}
	for (uint64_t ch = 0; ch < p->chunks; ch++)
		if (!p->cls[ch]) {
			p->cls[ch] = (uint8_t)(c + 1);
			p->free_bits[ch] = class_mask(c);
			p->in_use++;
			p->cursor[c] = ch;
			return pool_alloc(p, len);
		}
	return 0;
}

uint64_t mem_swap_slot_memory(uint64_t slot)
{
	return slot & POOL_BIT ? 1ULL << (POOL_MIN_SHIFT + pool_class(slot & 0xfff)) : 0;
}

static uint8_t *pool_entry(const struct pool *p, uint64_t h)
{
	uint64_t ch = (h & ~POOL_BIT) >> 16, e = (h >> 12) & 0xf;

	return p->arena + ch * MEM_PAGE_SIZE + (e << (POOL_MIN_SHIFT + p->cls[ch] - 1));
}

static void pool_free(struct pool *p, uint64_t h)
{
	uint64_t ch = (h & ~POOL_BIT) >> 16, e = (h >> 12) & 0xf;

	if (ch >= p->chunks || !p->cls[ch])
		return;
	p->free_bits[ch] |= (uint16_t)(1u << e);
	p->pages--;
	p->bytes -= h & 0xfff;
	if (p->free_bits[ch] == class_mask(p->cls[ch] - 1u)) {
		/* Empty: its memory goes back to the kernel now. */
		p->cls[ch] = 0;
		p->in_use--;
		madvise(p->arena + ch * MEM_PAGE_SIZE, MEM_PAGE_SIZE, MADV_DONTNEED);
	}
}

int mem_swap_set_pool(struct mem_swap *sw, uint64_t bytes)
{
	struct pool *p = &sw->pool;
	uint64_t chunks = bytes / MEM_PAGE_SIZE;
	void *arena;

	if (p->arena)
		return -EBUSY;
	if (!chunks || chunks > (1ULL << 40))
		return -EINVAL;
	arena = mmap(NULL, chunks * MEM_PAGE_SIZE, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (arena == MAP_FAILED)
		return -errno;
	madvise(arena, chunks * MEM_PAGE_SIZE, MADV_NOHUGEPAGE);
	p->cls = kv_calloc(chunks, 1);
	p->free_bits = kv_calloc(chunks, sizeof(uint16_t));
	if (!p->cls || !p->free_bits) {
		kv_free(p->cls);
		kv_free(p->free_bits);
		munmap(arena, chunks * MEM_PAGE_SIZE);
		return -ENOMEM;
	}
	pthread_mutex_lock(&sw->lock);
	p->chunks = chunks;
	p->arena = arena;
	pthread_mutex_unlock(&sw->lock);
	log_info("host swap: a compressed pool of %llu MiB", (unsigned long long)(bytes >> 20));
	return 0;
}

/*
 * Keep page `page` compressed in the pool if it compresses to at most half
 * a page and there is room: its handle, else 0 (it goes to the file).
 */
static uint64_t pool_put(struct mem_swap *sw, const void *page)
{
	char out[POOL_MAX_BYTES];
	int len;
	uint64_t h;

	if (!sw->pool.arena)
		return 0;
	len = LZ4_compress_default(page, out, (int)MEM_PAGE_SIZE, (int)sizeof(out));
	if (len <= 0)
		return 0;
	pthread_mutex_lock(&sw->lock);
	h = pool_alloc(&sw->pool, (uint64_t)len);
	if (h)
		memcpy(pool_entry(&sw->pool, h), out, (size_t)len);
	pthread_mutex_unlock(&sw->lock);
	return h;
}

/* Give a slot or a pool entry back. */
static void slot_put(struct mem_swap *sw, uint64_t handle)
{
	if (handle & POOL_BIT) {
		pthread_mutex_lock(&sw->lock);
		pool_free(&sw->pool, handle);
		pthread_mutex_unlock(&sw->lock);
	} else {
		slots_free(sw, handle, 1);
	}
}

/* --- the hooks the dispatcher serves swapped pages through --- */

static int hook_read(void *arg, uint64_t slot, uint64_t n, void *buf)
{
	struct mem_swap *sw = arg;
	ssize_t got;
	int inject;

	if (slot & POOL_BIT) {
		int len;

		/* One page: its neighbours' entries are never at the next handle. */
		pthread_mutex_lock(&sw->lock);
		len = n == 1 ? LZ4_decompress_safe((const char *)pool_entry(&sw->pool, slot), buf,
						   (int)(slot & 0xfff), (int)MEM_PAGE_SIZE)
			     : -1;
		pthread_mutex_unlock(&sw->lock);
		if (len != (int)MEM_PAGE_SIZE) {
			count(&sw->st.read_errors, 1);
			return -EIO;
		}
		return 0;
	}
	if (slot >= sw->nr_slots || n > sw->nr_slots - slot)
		return -EINVAL;
	inject = FAULT_POINT(SWAP_FILE_READ);
	do
		got = inject ? (errno = -inject, -1)
			     : pread(sw->fd, buf, n * MEM_PAGE_SIZE, (off_t)(slot * MEM_PAGE_SIZE));
	while (got < 0 && errno == EINTR);
	if (got != (ssize_t)(n * MEM_PAGE_SIZE)) {
		count(&sw->st.read_errors, 1);
		return got < 0 ? -errno : -EIO;
	}
	return 0;
}

static void hook_release(void *arg, uint64_t slot, bool was_read)
{
	struct mem_swap *sw = arg;

	/* The slot first: whoever sees the count sees the slot given back. */
	slot_put(sw, slot);
	count(was_read ? &sw->st.swap_ins : &sw->st.discarded, 1);
}

static int hook_submit(void *arg, struct gm *gm, uint64_t idx, uint64_t slot, uint64_t n,
		       void *page, uint64_t t0)
{
	struct mem_swap *sw = arg;
	struct swap_req *r;

	/* A pool page is a decompression, not I/O; a bad slot is the read's to refuse. */
	if (!sw->fault_io || (slot & POOL_BIT) || slot >= sw->nr_slots ||
	    n > sw->nr_slots - slot)
		return -EAGAIN;
	pthread_mutex_lock(&sw->fault_lock);
	r = sw->reqs_free;
	if (r) {
		sw->reqs_free = r->next;
	} else {
		/* As many as faults wait at once: bounded by the threads that touch guest memory. */
		r = kv_zalloc(sizeof(*r));
		if (r && posix_memalign((void **)&r->buf, MEM_PAGE_SIZE,
					MEM_SWAP_READAHEAD * MEM_PAGE_SIZE)) {
			kv_free(r);
			r = NULL;
		}
	}
	if (r) {
		*r = (struct swap_req){ NULL, gm, idx, slot, n, t0, page, r->buf };
		if (swapio_submit(sw->fault_io, false, sw->fd, r->buf, n * MEM_PAGE_SIZE,
				  slot * MEM_PAGE_SIZE, r)) {
			r->next = sw->reqs_free;
			sw->reqs_free = r;
			r = NULL;
		} else {
			r->next = sw->reqs_busy;
			sw->reqs_busy = r;
		}
	}
	pthread_mutex_unlock(&sw->fault_lock);
	return r ? 0 : -EAGAIN;
}

/* Take r off the list in flight (fault_lock). */
static void req_unlink(struct mem_swap *sw, struct swap_req *r)
{
	for (struct swap_req **p = &sw->reqs_busy; *p; p = &(*p)->next) {
		if (*p == r) {
			*p = r->next;
			return;
		}
	}
}

static void fault_reap(void *arg)
{
	struct mem_swap *sw = arg;
	struct swapio_done d[32];
	unsigned int got;

	while ((got = swapio_reap(sw->fault_io, d, 32, false))) {
		pthread_mutex_lock(&sw->fault_lock);
		for (unsigned int i = 0; i < got; i++) {
			struct swap_req *r = d[i].tag;
			int ret = d[i].res == (int64_t)(r->n * MEM_PAGE_SIZE) ? 0
				  : d[i].res < 0			     ? (int)d[i].res
									     : -EIO;

			req_unlink(sw, r);
			if (ret)
				count(&sw->st.read_errors, 1);
			if (r->gm)
				mem_swap_in_done(r->gm, r->idx, r->n, r->page, r->buf, ret, r->t0);
			r->next = sw->reqs_free;
			sw->reqs_free = r;
		}
		pthread_mutex_unlock(&sw->fault_lock);
	}
}

static void hook_fatal(void *swap_vm, const char *why)
{
	struct swap_vm *v = swap_vm;

	/* The owner says it with the VM's name; without one, say it here. */
	if (v->fatal)
		v->fatal(v->arg, why);
	else
		log_err("%s", why);
}

static const struct mem_swap_hooks hooks = {
	.read = hook_read,
	.submit = hook_submit,
	.release = hook_release,
	.fatal = hook_fatal,
};

int mem_swap_attach(struct mem_swap *sw, struct gm *gm, const char *name, mem_swap_fatal_fn fatal,
		    void *arg)
{
	struct swap_vm *v;
	int ret = 0;

	if (gm->swap)
		return -EBUSY;
	if (gm->uffd < 0)
		return -ENOSYS; /* a swapped page is served through userfaultfd */
	v = kv_zalloc(sizeof(*v));
	pthread_mutex_lock(&sw->vm_lock);
	if (v && sw->nr_vms == sw->cap_vms) {
		unsigned int cap = sw->cap_vms ? 2 * sw->cap_vms : 8;
		struct swap_vm **p = kv_realloc(sw->vms, cap * sizeof(*p));

		if (p) {
			sw->vms = p;
			sw->cap_vms = cap;
		}
	}
	if (!v || sw->nr_vms == sw->cap_vms) {
		ret = -ENOMEM;
	} else {
		/* Whole before the worker can see it. */
		*v = (struct swap_vm){ .gm = gm, .fatal = fatal, .arg = arg, .target = NO_TARGET,
				       .max_pages = UINT64_MAX,
				       .rng = (uint64_t)(uintptr_t)gm ^ 0xbb67ae8584caa73bULL };
		snprintf(v->name, sizeof(v->name), "%s", name ? name : "guest memory");
		sw->vms[sw->nr_vms++] = v;
	}
	pthread_mutex_unlock(&sw->vm_lock);
	if (ret) {
		kv_free(v);
		return ret;
	}
	gm->swap_arg = sw;
	gm->swap_vm = v;
	__atomic_store_n(&gm->swap, &hooks, __ATOMIC_RELEASE);
	return 0;
}

void mem_swap_detach(struct mem_swap *sw, struct gm *gm)
{
	struct swap_vm *v = gm->swap_vm;

	if (!sw || gm->swap_arg != sw)
		return;
	/*
	 * Its target is dropped (a VM going away is not written out first),
	 * and the worker lets go of it (it may be in a step of it).
	 */
	pthread_mutex_lock(&sw->vm_lock);
	v->target = NO_TARGET;
	v->progress.active = false;
	pthread_cond_broadcast(&sw->done_cv);
	while (v->busy)
		pthread_cond_wait(&sw->done_cv, &sw->vm_lock);
	for (unsigned int i = 0; i < sw->nr_vms; i++) {
		if (sw->vms[i] == v) {
			sw->vms[i] = sw->vms[--sw->nr_vms];
			break;
		}
	}
	pthread_mutex_unlock(&sw->vm_lock);
	/*
	 * Reads still in flight for it (a fault whose access went away, a
	 * signal) complete into nothing: their slots go now.
	 */
	pthread_mutex_lock(&sw->fault_lock);
	for (struct swap_req *r = sw->reqs_busy; r; r = r->next) {
		if (r->gm != gm)
			continue;
		slots_free(sw, r->slot, r->n);
		count(&sw->st.discarded, r->n);
		r->gm = NULL;
	}
	pthread_mutex_unlock(&sw->fault_lock);
	/* The VM is gone (its faults no longer served): its slots with it (not its image's). */
	for (uint64_t i = 0; i < mem_nr_pages(gm); i++)
		if (pagestate_get(gm->ps, i) == PS_SWAPPED && !(gm->swap_slot[i] & MEM_SLOT_IMAGE)) {
			slot_put(sw, gm->swap_slot[i]);
			count(&sw->st.discarded, 1);
		}
	__atomic_store_n(&gm->swap, NULL, __ATOMIC_RELEASE);
	kv_free(v);
	gm->swap_arg = NULL;
	gm->swap_vm = NULL;
}

/* --- swap-out --- */

/*
 * Page idx, whose pagemap entry is pm, can be swapped: a resident page of
 * the VM's own (not the zero page, not a store frame) in plain anonymous
 * memory. Not a private copy inside a mapping of the store (a dedup
 * window): dropping it there means mapping fresh memory over it, and until
 * that is registered again a touch would get zeros from the kernel instead
 * of a fault that reads the page back.
 */
static bool swappable(const struct gm *gm, uint64_t idx, uint64_t pm)
{
	return mem_pm_resident(pm) && !mem_pm_file(pm) && !mem_frame_mapped(gm, idx);
}

/*
 * Write sw->buf's first n pages to slots start.. through the engine, and
 * wait for the write to land (the worker's wait, not the service's): the
 * bytes written, or -errno.
 */
static int64_t write_slots(struct mem_swap *sw, uint64_t start, uint64_t n)
{
	struct swapio_done d;
	int ret;

	ret = swapio_submit(sw->out_io, true, sw->fd, sw->buf, n * MEM_PAGE_SIZE,
			    start * MEM_PAGE_SIZE, sw->buf);
	if (ret)
		return ret;
	while (!swapio_reap(sw->out_io, &d, 1, true))
		;
	/* The only write in flight: anything else would judge these pages by another's. */
	return d.tag == sw->buf ? d.res : -EIO;
}

/*
 * Write the swappable pages of the claimed run t and commit them as
 * swapped; zero pages are dropped as zero instead (nothing to write).
 * Returns pages swapped, or -errno with every page kept (the caller ends t).
 */
static int64_t write_run(struct mem_swap *sw, struct mem_txn *t)
{
	struct swap_vm *v = t->gm->swap_vm;
	uint32_t i = 0;
	int64_t done = 0, pooled = 0;

	while (i < t->n) {
		uint64_t start, got;
		uint32_t k = 0, pages[MEM_TXN_MAX];
		int64_t put;

		/* The next batch of pages to write, as many as one run of slots takes. */
		for (; i < t->n; i++) {
			const void *hva = mem_page_hva(t->gm, t->idx + i);

			/* Decided in an earlier batch (pooled, or a zero page). */
			if (t->commit[i] != MEM_KEEP)
				continue;

			if (!swappable(t->gm, t->idx + i, t->pm[i]))
				continue;
			uint64_t h;

			if (mem_hva_is_zero(hva)) {
				mem_txn_set(t, i, MEM_ZERO, 0);
				continue;
			}
			/* Protected: what is compressed is final. */
			h = pool_put(sw, hva);
			if (h) {
				mem_txn_set(t, i, MEM_SWAPPED, h);
				pooled++;
				continue;
			}
			mem_hva_copy_out(sw->buf + (uint64_t)k * MEM_PAGE_SIZE, hva, MEM_PAGE_SIZE);
			pages[k++] = i;
		}
		if (!k)
			break;
		got = slots_alloc(sw, k, &start);
		if (!got) {
			count(&sw->st.full, 1);
			log_warn_ratelimited_vm(&v->limit, "%s: the swap file is full: %u pages stay in "
						"memory", v->name, k);
			return done + pooled ? done + pooled : -ENOSPC;
		}
		put = write_slots(sw, start, got);
		if (put != (int64_t)(got * MEM_PAGE_SIZE)) {
			int err = put < 0 ? (int)put : -EIO;

			slots_free(sw, start, got);
			count(&sw->st.write_errors, 1);
			log_warn_ratelimited_vm(&v->limit, "%s: writing %llu pages to swap: %s: they "
						"stay in memory", v->name, (unsigned long long)got,
						strerror(-err));
			return done + pooled ? done + pooled : err;
		}
		/* Written: only now may the pages go. */
		for (uint64_t j = 0; j < got; j++)
			mem_txn_set(t, pages[j], MEM_SWAPPED, start + j);
		done += (int64_t)got;
		/* Pages the slots did not take: the next batch, from the first of them. */
		if (got < k)
			i = pages[got];
	}
	return done + pooled;
}

/*
 * out_lock: swap out up to *left pages of [*at, end) (one pass over it),
 * taking *left down by what went; *at is left where it stopped. Returns
 * pages swapped out, or -errno when a step failed having swapped nothing
 * (its pages stay).
 */
static int64_t swap_range(struct mem_swap *sw, struct gm *gm, uint64_t *at, uint64_t end,
			  uint64_t *left)
{
	static __thread struct mem_txn t;
	uint64_t pm[MEM_TXN_MAX], idx = *at;
	int64_t swapped = 0;

	while (idx < end && *left) {
		uint64_t n, run = 0, skip;
		int64_t got, claimed;

		/*
		 * Only the VM's own pages can go: pages swapped, shared, zero or
		 * ballooned are passed over by their state, without the pagemap
		 * read (the coldest chunks are the ones swapped out already, and
		 * a step that reads their pagemap again and again to find the
		 * few pages left costs more CPU than the swap-out itself).
		 */
		while (idx < end && pagestate_get(gm->ps, idx) != PS_ANON)
			idx++;
		if (idx == end)
			break;
		n = end - idx < MEM_TXN_MAX ? end - idx : MEM_TXN_MAX;
		if (n > *left)
			n = *left;
		while (n > 1 && !mem_run_ok(gm, idx, n))
			n /= 2; /* a region boundary */
		got = mem_pagemap(gm, idx, n, pm);
		if (got <= 0) {
			*at = idx;
			return swapped ? swapped : got ? got : -EIO;
		}
		/* Skip to the first candidate; claim the run of candidates from there. */
		skip = 0;
		while (skip < (uint64_t)got && (!swappable(gm, idx + skip, pm[skip]) ||
						pagestate_get(gm->ps, idx + skip) != PS_ANON))
			skip++;
		while (skip + run < (uint64_t)got && swappable(gm, idx + skip + run, pm[skip + run]) &&
		       pagestate_get(gm->ps, idx + skip + run) == PS_ANON)
			run++;
		if (run && sw->kernel_store) {
			/*
			 * The same victims on the kernel's I/O path: it writes them to its
			 * own swap and reads them back on its own faults; they stay the
			 * VM's own pages here (PS_ANON), not resident.
			 */
			if (!madvise(mem_page_hva(gm, idx + skip), run * MEM_PAGE_SIZE, MADV_PAGEOUT)) {
				swapped += (int64_t)run;
				count(&sw->st.swap_outs, run);
				*left = run < *left ? *left - run : 0;
			}
			skip += run;
		} else if (run) {
			claimed = mem_txn_claim(&t, gm, idx + skip, run, MEM_FROM(PS_ANON), 0);
			if (claimed > 0) {
				int64_t w = write_run(sw, &t), took = 0;
				uint8_t want[MEM_TXN_MAX];

				memcpy(want, t.commit, (size_t)claimed);
				mem_txn_end(&t, -1);
				/* A page whose drop failed stays in memory: its slot goes back. */
				for (int64_t i = 0; i < claimed; i++) {
					if (want[i] != MEM_SWAPPED)
						continue;
					if (t.commit[i] == MEM_SWAPPED)
						took++;
					else
						slot_put(sw, t.arg[i]);
				}
				swapped += took;
				count(&sw->st.swap_outs, (uint64_t)took);
				__atomic_fetch_add(&gm->swapc.outs, (uint64_t)took, __ATOMIC_RELAXED);
				*left = (uint64_t)took < *left ? *left - (uint64_t)took : 0;
				skip += (uint64_t)claimed;
				if (w < 0) {
					*at = idx + skip;
					return swapped ? swapped : w;
				}
			} else {
				skip += 1;
			}
		} else {
			skip = (uint64_t)got;
		}
		idx += skip;
	}
	*at = idx;
	return swapped;
}

int64_t mem_swap_out(struct mem_swap *sw, struct gm *gm, uint64_t *cursor, uint64_t max_pages)
{
	uint64_t nr = mem_nr_pages(gm), left = max_pages, idx = *cursor;
	int64_t swapped = 0, got = 0;

	if (gm->swap_arg != sw)
		return -EINVAL;
	if (idx >= nr)
		idx = 0;
	pthread_mutex_lock(&sw->out_lock);
	/* Once around RAM from the cursor: [idx, nr), then [0, idx). */
	for (int half = 0; half < 2 && left && got >= 0; half++) {
		uint64_t at = half ? 0 : idx;

		got = swap_range(sw, gm, &at, half ? idx : nr, &left);
		if (got > 0)
			swapped += got;
		*cursor = at < nr ? at : 0;
	}
	pthread_mutex_unlock(&sw->out_lock);
	return swapped ? swapped : got;
}

/* --- the swap-out worker --- */

/*
 * Random victims take runs of this many pages: ESX's random pages, but
 * written and read back a run at a time like the others.
 */
#define RANDOM_RUN_PAGES MEM_SWAP_READAHEAD

/*
 * Swap out up to `want` pages of v's, the coldest chunks first (ties from
 * its cursor on), or from random runs. Returns pages swapped, or -errno
 * when nothing could go.
 */
static int64_t swap_victims(struct mem_swap *sw, struct swap_vm *v, uint64_t *cursor,
			    uint64_t want, enum mem_swap_victims victims)
{
	struct gm *gm = v->gm;
	uint64_t nr = mem_nr_pages(gm), left = want, chunks = mem_access_chunks(gm), n;
	int64_t swapped = 0, got = 0;
	uint32_t *order;

	if (victims == MEM_SWAP_VICTIMS_RANDOM) {
		uint64_t runs = (nr + RANDOM_RUN_PAGES - 1) / RANDOM_RUN_PAGES;

		pthread_mutex_lock(&sw->out_lock);
		/* Twice the runs in tries: enough to find what is left once most are gone. */
		for (uint64_t tries = 0; tries < 2 * runs && left && got >= 0; tries++) {
			uint64_t at = (kv_rand(&v->rng) % runs) * RANDOM_RUN_PAGES;
			uint64_t end = nr - at < RANDOM_RUN_PAGES ? nr : at + RANDOM_RUN_PAGES;

			got = swap_range(sw, gm, &at, end, &left);
			if (got > 0)
				swapped += got;
		}
		pthread_mutex_unlock(&sw->out_lock);
		/* The few runs left with candidates may be ones the dice missed: in turn, then. */
		if (!swapped && got >= 0)
			return mem_swap_out(sw, gm, cursor, want);
		return swapped ? swapped : got;
	}
	order = kv_calloc(chunks, sizeof(*order));
	n = order ? mem_access_rank(gm, kv_rand(&v->rng), order, chunks) : 0;
	if (!n) {
		kv_free(order);
		return mem_swap_out(sw, gm, cursor, want); /* no memory for a ranking: in turn */
	}
	pthread_mutex_lock(&sw->out_lock);
	for (uint64_t i = 0; i < n && left && got >= 0; i++) {
		uint64_t at = (uint64_t)order[i] * MEM_CHUNK_PAGES;
		uint64_t end = nr - at < MEM_CHUNK_PAGES ? nr : at + MEM_CHUNK_PAGES;

		got = swap_range(sw, gm, &at, end, &left);
		if (got > 0)
			swapped += got;
		*cursor = at < nr ? at : 0;
	}
	pthread_mutex_unlock(&sw->out_lock);
	kv_free(order);
	return swapped ? swapped : got;
}

/*
 * Pages asked of one mem_swap_out call by the worker: 64 MiB, so that a new
 * target, a detach or a stop is looked at between calls on a slow disk.
 */
#define WORKER_CALL_PAGES 16384ULL

/* vm_lock: the next VM with a target the worker is not in yet, round robin. */
static struct swap_vm *next_target(struct mem_swap *sw)
{
	for (unsigned int k = 0; k < sw->nr_vms; k++) {
		struct swap_vm *v = sw->vms[(sw->next_vm + k) % sw->nr_vms];

		if (v->target != NO_TARGET && !v->busy) {
			sw->next_vm = (sw->next_vm + k + 1) % sw->nr_vms;
			return v;
		}
	}
	return NULL;
}

/*
 * Swap each VM with a target down to it, one step at a time: measure,
 * swap out the difference, measure again (the guest takes pages back
 * meanwhile). The cursor moves on by what was taken, so the next step
 * starts where this one left off instead of taking back the pages just
 * read in. A target ends reached, or at the first step that swaps nothing
 * (nothing more can go now) or fails (the error is kept).
 */
static void *worker_main(void *arg)
{
	struct mem_swap *sw = arg;

	sandbox_enter(SANDBOX_SWAP_OUT);
	pthread_mutex_lock(&sw->vm_lock);
	while (!sw->stop) {
		struct swap_vm *v = next_target(sw);
		uint64_t target, cursor, resident, max;
		int64_t n = 0;

		if (!v) {
			pthread_cond_wait(&sw->work_cv, &sw->vm_lock);
			continue;
		}
		v->busy = true;
		target = v->target;
		cursor = v->cursor;
		max = v->max_pages;
		pthread_mutex_unlock(&sw->vm_lock);
		resident = mem_resident(v->gm);
		if (resident > target) {
			uint64_t need = resident - target, in = mem_swap_vm_pages(v->gm);

			/* Never past its limit: what is left of it bounds the step. */
			need = in >= max ? 0 : need < max - in ? need : max - in;

			if (need)
				n = swap_victims(sw, v, &cursor,
						 need < WORKER_CALL_PAGES ? need : WORKER_CALL_PAGES,
						 __atomic_load_n(&sw->victims, __ATOMIC_RELAXED));
			/*
			 * Measured again at the next step, not here: a walk of the
			 * whole pagemap per step doubled the worker's cost, and the
			 * pages the guest took back meanwhile show at the next one.
			 */
			if (n > 0)
				resident = (uint64_t)n < resident ? resident - (uint64_t)n : 0;
		}
		pthread_mutex_lock(&sw->vm_lock);
		v->busy = false;
		v->cursor = cursor;
		v->progress.resident_pages = resident;
		if (n > 0)
			v->progress.swapped_pages += (uint64_t)n;
		/* A target set meanwhile is the next one's: this step still counts. */
		if (v->target == target && (resident <= target || n <= 0)) {
			v->progress.active = false;
			v->progress.reached = resident <= target;
			v->progress.error = n < 0 ? (int)n : 0;
			v->target = NO_TARGET;
		}
		pthread_cond_broadcast(&sw->done_cv);
	}
	pthread_mutex_unlock(&sw->vm_lock);
	return NULL;
}

int mem_swap_target(struct mem_swap *sw, struct gm *gm, uint64_t resident_pages)
{
	struct swap_vm *v = gm->swap_vm;

	if (gm->swap_arg != sw)
		return -EINVAL;
	pthread_mutex_lock(&sw->vm_lock);
	v->target = resident_pages;
	v->progress = (struct mem_swap_progress){ .active = true };
	pthread_cond_broadcast(&sw->work_cv);
	pthread_mutex_unlock(&sw->vm_lock);
	return 0;
}

int mem_swap_wait(struct mem_swap *sw, struct gm *gm, uint64_t deadline_ns,
		  struct mem_swap_progress *out)
{
	struct swap_vm *v = gm->swap_vm;
	struct timespec dl = { .tv_sec = (time_t)(deadline_ns / 1000000000ULL),
			       .tv_nsec = (long)(deadline_ns % 1000000000ULL) };
	int ret = 0;

	if (gm->swap_arg != sw)
		return -EINVAL;
	pthread_mutex_lock(&sw->vm_lock);
	while (v->progress.active && !ret)
		ret = pthread_cond_clockwait(&sw->done_cv, &sw->vm_lock, CLOCK_MONOTONIC, &dl);
	*out = v->progress;
	pthread_mutex_unlock(&sw->vm_lock);
	return ret == ETIMEDOUT ? -ETIMEDOUT : 0;
}

void mem_swap_set_victims(struct mem_swap *sw, enum mem_swap_victims victims)
{
	__atomic_store_n(&sw->victims, victims, __ATOMIC_RELAXED);
}

void mem_swap_set_kernel_store(struct mem_swap *sw, bool on)
{
	pthread_mutex_lock(&sw->out_lock);
	sw->kernel_store = on;
	pthread_mutex_unlock(&sw->out_lock);
}

const char *mem_swap_victims_name(const struct mem_swap *sw)
{
	return __atomic_load_n(&sw->victims, __ATOMIC_RELAXED) == MEM_SWAP_VICTIMS_RANDOM
		       ? "random"
		       : "coldest";
}

int mem_swap_set_limit(struct mem_swap *sw, struct gm *gm, uint64_t max_pages)
{
	struct swap_vm *v = gm->swap_vm;

	if (gm->swap_arg != sw)
		return -EINVAL;
	pthread_mutex_lock(&sw->vm_lock);
	v->max_pages = max_pages;
	pthread_mutex_unlock(&sw->vm_lock);
	return 0;
}

uint64_t mem_swap_limit(struct mem_swap *sw, const struct gm *gm)
{
	const struct swap_vm *v = gm->swap_vm;
	uint64_t max;

	if (gm->swap_arg != sw)
		return 0;
	pthread_mutex_lock(&sw->vm_lock);
	max = v->max_pages;
	pthread_mutex_unlock(&sw->vm_lock);
	return max;
}

/* The target the worker is still working towards for gm (NO_TARGET: none). */
static uint64_t active_target(struct mem_swap *sw, const struct gm *gm)
{
	const struct swap_vm *v = gm->swap_vm;
	uint64_t t;

	pthread_mutex_lock(&sw->vm_lock);
	t = v->progress.active ? v->target : NO_TARGET;
	pthread_mutex_unlock(&sw->vm_lock);
	return t;
}

/* What the worker has yet to swap out of the VM towards its target. */
static uint64_t swap_pending(void *arg, struct ovc_vm *vm)
{
	struct mem_swap *sw = arg;
	struct gm *gm = ovc_vm_gm(vm);
	uint64_t t, resident;

	if (gm->swap_arg != sw || (t = active_target(sw, gm)) == NO_TARGET)
		return 0;
	resident = mem_resident(gm);
	return resident > t ? (resident - t) * MEM_PAGE_SIZE : 0;
}

/*
 * Swap as the policy's last mechanism: lower the VM's swap-out target by
 * `bytes` (from the target under way, else from its resident memory), not
 * below floor, not past its swap limit. The worker does it while the policy
 * goes on: what is left of it is pending for the next pass, which measures
 * what really went.
 */
static int64_t swap_reclaim(void *arg, struct ovc_vm *vm, uint64_t bytes, uint64_t floor)
{
	struct mem_swap *sw = arg;
	struct gm *gm = ovc_vm_gm(vm);
	uint64_t resident, base, take, in, max, out, fl = floor / MEM_PAGE_SIZE;

	if (gm->swap_arg != sw)
		return 0;
	max = mem_swap_limit(sw, gm);
	in = mem_swap_vm_pages(gm);
	resident = mem_resident(gm);
	base = active_target(sw, gm);
	if (base > resident)
		base = resident;
	out = in + (resident - base); /* in swap once the target under way is reached */
	take = (bytes + MEM_PAGE_SIZE - 1) / MEM_PAGE_SIZE;
	if (take > (base > fl ? base - fl : 0))
		take = base > fl ? base - fl : 0;
	if (take > (out < max ? max - out : 0))
		take = out < max ? max - out : 0;
	if (!take || mem_swap_target(sw, gm, base - take))
		return 0;
	return (int64_t)(take * MEM_PAGE_SIZE);
}

int mem_swap_register_reclaim(struct mem_swap *sw, struct ovc *ovc)
{
	struct ovc_mechanism m = {
		.name = "swap",
		.cost = 4,
		.reclaim = swap_reclaim,
		.pending = swap_pending,
		.arg = sw,
		.ranks_chunks = true,
	};

	return ovc_register_mechanism(ovc, &m);
}

void mem_swap_stats(struct mem_swap *sw, struct mem_swap_stats *out)
{
	const uint64_t *src = (const uint64_t *)&sw->st;
	uint64_t *dst = (uint64_t *)out;

	for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
	out->used_bytes = __atomic_load_n(&sw->nr_used, __ATOMIC_RELAXED) * MEM_PAGE_SIZE;
	pthread_mutex_lock(&sw->lock);
	out->pool_bytes = sw->pool.chunks * MEM_PAGE_SIZE;
	out->pool_used_bytes = sw->pool.in_use * MEM_PAGE_SIZE;
	out->pool_pages = sw->pool.pages;
	out->pool_compressed_bytes = sw->pool.bytes;
	pthread_mutex_unlock(&sw->lock);
}

uint64_t mem_swap_vm_pages(const struct gm *gm)
{
	uint64_t counts[PS_NR], left;

	pagestate_counts(gm->ps, counts);
	/* A lazily restored page not fetched yet is swapped too, but to its image. */
	left = mem_lazy_left(gm);
	return counts[PS_SWAPPED] > left ? counts[PS_SWAPPED] - left : 0;
}

_Static_assert(sizeof(((struct gm *)0)->swapc.hist) == MEM_SWAP_HIST * sizeof(uint64_t),
	       "a VM's histogram has MEM_SWAP_HIST buckets");

/* The upper bound, in us, of the bucket holding the q-th quantile (q in percent) of hist. */
static uint64_t quantile_us(const uint64_t *hist, uint64_t total, unsigned int q)
{
	uint64_t seen = 0, want = (total * q + 99) / 100;

	for (unsigned int i = 0; i < MEM_SWAP_HIST; i++) {
		seen += hist[i];
		if (seen >= want && seen)
			return 2ULL << i;
	}
	return 0;
}

void mem_swap_vm_stats(const struct gm *gm, struct mem_swap_vm_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->swapped_pages = mem_swap_vm_pages(gm);
	out->swap_outs = __atomic_load_n(&gm->swapc.outs, __ATOMIC_RELAXED);
	out->faults = __atomic_load_n(&gm->swapc.faults, __ATOMIC_RELAXED);
	out->readahead = __atomic_load_n(&gm->swapc.readahead, __ATOMIC_RELAXED);
	for (unsigned int i = 0; i < MEM_SWAP_HIST; i++)
		out->fault_hist[i] = __atomic_load_n(&gm->swapc.hist[i], __ATOMIC_RELAXED);
	if (out->faults) {
		out->fault_p50_us = quantile_us(out->fault_hist, out->faults, 50);
		out->fault_p99_us = quantile_us(out->fault_hist, out->faults, 99);
	}
}
