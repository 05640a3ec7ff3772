/* SPDX-License-Identifier: MIT */
/*
 * Page content for the dedup scanner (see pagecontent.h). Runs on the
 * scanner thread (and tests); stateless.
 */
#define LOG_TAG "pagecontent"
#include "mem/pagecontent.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "mem/mem_internal.h"
#include "mem/memmap.h"

static bool idx_ok(const struct gm *gm, uint64_t idx)
{
	return idx < mem_nr_pages(gm);
}

int mem_page_hash(const struct gm *gm, uint64_t idx, mem_page_hash_fn fn, const void *key,
		  uint64_t *hash)
{
	if (!idx_ok(gm, idx))
		return -EINVAL;
	/* The key is the VMM's and immutable: only the page is racy. */
	mem_hva_racy_begin();
	*hash = fn(mem_page_hva(gm, idx), key);
	mem_hva_racy_end();
	return 0;
}

bool mem_page_is_zero(const struct gm *gm, uint64_t idx)
{
	return idx_ok(gm, idx) && mem_hva_is_zero(mem_page_hva(gm, idx));
}

int mem_page_equal(const struct gm *a, uint64_t ia, const struct gm *b, uint64_t ib)
{
	if (!idx_ok(a, ia) || !idx_ok(b, ib))
		return -EINVAL;
	return mem_hva_cmp_hva(mem_page_hva(a, ia), mem_page_hva(b, ib), MEM_PAGE_SIZE) == 0;
}

int mem_page_equal_buf(const struct gm *gm, uint64_t idx, const void *buf)
{
	if (!idx_ok(gm, idx))
		return -EINVAL;
	return mem_hva_cmp(mem_page_hva(gm, idx), buf, MEM_PAGE_SIZE) == 0;
}

int mem_page_copy_to_fd(const struct gm *gm, uint64_t idx, int fd, uint64_t off)
{
	ssize_t put;

	if (!idx_ok(gm, idx) || off % MEM_PAGE_SIZE)
		return -EINVAL;
	mem_hva_racy_begin();
	put = pwrite(fd, mem_page_hva(gm, idx), MEM_PAGE_SIZE, (off_t)off);
	mem_hva_racy_end();
	if (put < 0)
		return -errno;
	return put == (ssize_t)MEM_PAGE_SIZE ? 0 : -EIO;
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
