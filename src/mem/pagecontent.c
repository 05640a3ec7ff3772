/* SPDX-License-Identifier: MIT */
/*
 * Page content for the dedup scanner (see pagecontent.h). Runs on the
 * scanner thread (and tests); stateless apart from a per-thread bounce
 * buffer for compares against the frame store.
 */
#define LOG_TAG "pagecontent"
#include "mem/pagecontent.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/alloc.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"

#define PM_PRESENT (1ULL << 63)
#define PM_SWAP (1ULL << 62)
#define PM_FILE (1ULL << 61)
#define PM_SWAP_TYPE 0x1fULL	/* low 5 bits of a swapped entry: the swap type */

static bool idx_ok(const struct gm *gm, uint64_t idx)
{
	return idx < memmap_nr_pages(gm);
}

int mem_page_hash(const struct gm *gm, uint64_t idx, mem_page_hash_fn fn, const void *key,
		  uint64_t *hash)
{
	if (!idx_ok(gm, idx))
		return -EINVAL;
	*hash = fn(gm_page_hva(gm, idx), key);
	return 0;
}

bool mem_page_is_zero(const struct gm *gm, uint64_t idx)
{
	const uint64_t *w;

	if (!idx_ok(gm, idx))
		return false;
	w = (const uint64_t *)gm_page_hva(gm, idx);
	for (size_t i = 0; i < GM_PAGE_SIZE / 8; i += 8)
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] |
		    w[i + 7])
			return false;
	return true;
}

int mem_page_equal(const struct gm *a, uint64_t ia, const struct gm *b, uint64_t ib)
{
	if (!idx_ok(a, ia) || !idx_ok(b, ib))
		return -EINVAL;
	return memcmp(gm_page_hva(a, ia), gm_page_hva(b, ib), GM_PAGE_SIZE) == 0;
}

int mem_page_equal_fd(const struct gm *gm, uint64_t idx, int fd, uint64_t off)
{
	static __thread uint8_t buf[GM_PAGE_SIZE] __attribute__((aligned(64)));
	ssize_t got;

	if (!idx_ok(gm, idx))
		return -EINVAL;
	got = pread(fd, buf, sizeof(buf), (off_t)off);
	if (got < 0)
		return -errno;
	if (got != (ssize_t)sizeof(buf))
		return -EIO;
	return memcmp(gm_page_hva(gm, idx), buf, GM_PAGE_SIZE) == 0;
}

int mem_page_equal_buf(const struct gm *gm, uint64_t idx, const void *buf)
{
	if (!idx_ok(gm, idx))
		return -EINVAL;
	return memcmp(gm_page_hva(gm, idx), buf, GM_PAGE_SIZE) == 0;
}

/* [idx, idx + n) lies in one region (host addresses contiguous). */
static bool window_ok(const struct gm *gm, uint64_t idx, uint64_t n)
{
	return n && idx + n <= memmap_nr_pages(gm) && idx + n > idx &&
	       gm_page_hva(gm, idx + n - 1) - gm_page_hva(gm, idx) ==
		       (ptrdiff_t)((n - 1) * GM_PAGE_SIZE);
}

int mem_range_protect(struct gm *gm, uint64_t idx, uint64_t n, bool on)
{
	struct uffdio_writeprotect w = {
		.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	if (!window_ok(gm, idx, n))
		return -EINVAL;
	if (gm->uffd < 0)
		return -ENOSYS;
	w.range.start = (uint64_t)(uintptr_t)gm_page_hva(gm, idx);
	w.range.len = n * GM_PAGE_SIZE;
	return ioctl(gm->uffd, UFFDIO_WRITEPROTECT, &w) < 0 ? -errno : 0;
}

int mem_range_populate(struct gm *gm, uint64_t idx, uint64_t n)
{
	if (!window_ok(gm, idx, n))
		return -EINVAL;
	if (madvise(gm_page_hva(gm, idx), n * GM_PAGE_SIZE, MADV_POPULATE_READ) < 0)
		return -errno;
	return 0;
}

void mem_range_wake(struct gm *gm, uint64_t idx, uint64_t n)
{
	struct uffdio_range r;

	if (!window_ok(gm, idx, n) || gm->uffd < 0)
		return;
	r.start = (uint64_t)(uintptr_t)gm_page_hva(gm, idx);
	r.len = n * GM_PAGE_SIZE;
	ioctl(gm->uffd, UFFDIO_WAKE, &r);
}

/* Fill page i of the scratch mapping s (uffd-registered) from the old window. */
static int fill_one(const struct gm *gm, uint8_t *s, const uint8_t *old, uint64_t i,
		    enum mem_win_kind kind)
{
	int ret;

	if (kind == MEM_WIN_KEEP) {
		struct uffdio_copy c = {
			.dst = (uint64_t)(uintptr_t)(s + i * GM_PAGE_SIZE),
			.src = (uint64_t)(uintptr_t)(old + i * GM_PAGE_SIZE),
			.len = GM_PAGE_SIZE,
		};

		ret = ioctl(gm->uffd, UFFDIO_COPY, &c);
	} else if (kind == MEM_WIN_ZERO) {
		struct uffdio_zeropage z = {
			.range = { (uint64_t)(uintptr_t)(s + i * GM_PAGE_SIZE), GM_PAGE_SIZE },
		};

		ret = ioctl(gm->uffd, UFFDIO_ZEROPAGE, &z);
	} else {
		return 0; /* the frame: read from the store on the first access */
	}
	return ret < 0 ? -errno : 0;
}

/*
 * Why this order: the window cannot be remapped in place (MAP_FIXED over it
 * would drop the content of the pages that keep theirs, and a fault between
 * the remap and refilling them would read store holes, which allocate store
 * pages). So the new mapping is prepared elsewhere: a private mapping of the
 * store (holes are never read: every page is frame, private or zero before
 * it is visible), registered with the VM's userfaultfd so UFFDIO_COPY (a
 * private anonymous copy) and UFFDIO_ZEROPAGE can fill it, then mremap moves
 * it over the window atomically. mremap drops the userfaultfd registration
 * (the VM's uffd has no UFFD_FEATURE_EVENT_REMAP), so it is renewed.
 */
int mem_window_map(struct gm *gm, uint64_t idx, uint64_t n, int fd, uint64_t off,
		   const uint8_t *kind)
{
	uint8_t *old, *s;
	void *p;
	int ret;

	if (!window_ok(gm, idx, n) || off % GM_PAGE_SIZE)
		return -EINVAL;
	if (gm->uffd < 0)
		return -ENOSYS;
	old = gm_page_hva(gm, idx);
	s = mmap(NULL, n * GM_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, (off_t)off);
	if (s == MAP_FAILED)
		return -errno;
	madvise(s, n * GM_PAGE_SIZE, MADV_NOHUGEPAGE);
	ret = gm_uffd_register(gm, s, n * GM_PAGE_SIZE);
	for (uint64_t i = 0; i < n && !ret; i++)
		ret = fill_one(gm, s, old, i, (enum mem_win_kind)kind[i]);
	if (ret)
		goto out_unmap;
	p = mremap(s, n * GM_PAGE_SIZE, n * GM_PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, old);
	if (p == MAP_FAILED) {
		ret = -errno;
		goto out_unmap;
	}
	for (uint64_t i = 0; i < n; i++)
		__atomic_fetch_or(&gm->framemap[(idx + i) / 64], 1ULL << ((idx + i) % 64),
				  __ATOMIC_RELEASE);
	/* Protectable again; a failure only means later merges here must re-track. */
	gm_uffd_register(gm, old, n * GM_PAGE_SIZE);
	return 0;

out_unmap:
	munmap(s, n * GM_PAGE_SIZE);
	return ret;
}

int mem_page_copy_to_fd(const struct gm *gm, uint64_t idx, int fd, uint64_t off)
{
	ssize_t put;

	if (!idx_ok(gm, idx) || off % GM_PAGE_SIZE)
		return -EINVAL;
	put = pwrite(fd, gm_page_hva(gm, idx), GM_PAGE_SIZE, (off_t)off);
	if (put < 0)
		return -errno;
	return put == (ssize_t)GM_PAGE_SIZE ? 0 : -EIO;
}

int mem_page_track(struct gm *gm, uint64_t idx)
{
	if (!idx_ok(gm, idx))
		return -EINVAL;
	if (gm->uffd < 0)
		return -ENOSYS;
	return gm_uffd_register(gm, gm_page_hva(gm, idx), GM_PAGE_SIZE);
}

/*
 * A pte marker (what write-protecting an unpopulated pte of a file mapping
 * leaves: the page is not mapped, writes are held) reads as a swap entry of
 * the last swap type (SWP_PTE_MARKER, 31), with PM_UFFD_WP: it is not a page.
 */
static bool pm_is_marker(uint64_t e)
{
	return !(e & PM_PRESENT) && (e & PM_SWAP) && (e & PM_SWAP_TYPE) == PM_SWAP_TYPE;
}

bool mem_page_in_store_mapping(const struct gm *gm, uint64_t idx)
{
	return idx_ok(gm, idx) &&
	       (__atomic_load_n(&gm->framemap[idx / 64], __ATOMIC_ACQUIRE) & (1ULL << (idx % 64)));
}

int mem_range_track(struct gm *gm, uint64_t idx, uint64_t n)
{
	if (!window_ok(gm, idx, n))
		return -EINVAL;
	if (gm->uffd < 0)
		return -ENOSYS;
	return gm_uffd_register(gm, gm_page_hva(gm, idx), n * GM_PAGE_SIZE);
}

bool mem_pm_is_private(uint64_t e)
{
	return (e & (PM_PRESENT | PM_SWAP)) && !(e & PM_FILE) && !pm_is_marker(e);
}

bool mem_pm_is_zero_page(uint64_t e)
{
	return (e & PM_PRESENT) && !(e & PM_FILE) && !memmap_pm_resident(e);
}

bool mem_pm_is_populated(uint64_t e)
{
	/* A marker counts: it holds writes like a protected page would. */
	return e & (PM_PRESENT | PM_SWAP);
}

static uint64_t parse_hex(const char **p, const char *end)
{
	uint64_t v = 0;

	for (; *p < end; (*p)++) {
		char c = **p;

		if (c >= '0' && c <= '9')
			v = v << 4 | (uint64_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = v << 4 | (uint64_t)(c - 'a' + 10);
		else
			break;
	}
	return v;
}

static bool overlaps_ram(struct gm *const *gms, unsigned int nr, uint64_t start, uint64_t end)
{
	for (unsigned int i = 0; i < nr; i++)
		for (unsigned int r = 0; r < gms[i]->nr_regions; r++) {
			uint64_t lo = (uint64_t)(uintptr_t)gms[i]->regions[r].hva;
			uint64_t hi = lo + gms[i]->regions[r].len;

			if (start < hi && end > lo)
				return true;
		}
	return false;
}

int64_t mem_ram_vmas(struct gm *const *gms, unsigned int nr, uint64_t *all)
{
	size_t cap = 1 << 16, have = 0;
	char *buf = kv_zalloc(cap);
	int64_t count = 0;
	uint64_t total = 0;
	int fd;

	if (!buf)
		return -ENOMEM;
	fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		kv_free(buf);
		return -errno;
	}
	for (;;) {
		ssize_t got = read(fd, buf + have, cap - have);
		const char *p = buf, *end, *nl;

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			count = -errno;
			break;
		}
		if (got == 0)
			break;
		end = buf + have + got;
		/* Every complete line: "start-end perms ..." in hex. */
		while ((nl = memchr(p, '\n', (size_t)(end - p)))) {
			uint64_t start = parse_hex(&p, nl), stop;

			total++;
			if (p < nl && *p == '-') {
				p++;
				stop = parse_hex(&p, nl);
				if (overlaps_ram(gms, nr, start, stop))
					count++;
			}
			p = nl + 1;
		}
		have = (size_t)(end - p);
		memmove(buf, p, have); /* maps lines are far shorter than buf */
	}
	close(fd);
	kv_free(buf);
	if (all)
		*all = total;
	return count;
}
