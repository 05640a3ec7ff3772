/* SPDX-License-Identifier: MIT */
/*
 * The content corpus of a VM (corpus.h): one read-only shared mapping of a
 * file inside the VM's reservation, where the MMIO hole leaves room.
 */
#define LOG_TAG "mem"
#include "mem/corpus.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/alloc.h"
#include "core/layout.h"
#include "mem/mem_internal.h"

static int refuse(int err, char *why, size_t whylen, const char *path, const char *what)
{
	snprintf(why, whylen, "corpus %s: %s", path, what);
	return err;
}

/* Open `path` as a corpus: a regular file of 1 byte to LAYOUT_CORPUS_MAX_BYTES. fd, or -errno. */
static int open_corpus(const char *path, uint64_t *bytes, char *why, size_t whylen)
{
	struct stat st;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		ret = -errno;
		return refuse(ret, why, whylen, path, strerror(-ret));
	}
	if (fstat(fd, &st))
		ret = refuse(-errno, why, whylen, path, strerror(errno));
	else if (!S_ISREG(st.st_mode))
		ret = refuse(-EINVAL, why, whylen, path, "not a regular file");
	else if (st.st_size == 0)
		ret = refuse(-ENODATA, why, whylen, path, "empty");
	else if ((uint64_t)st.st_size > LAYOUT_CORPUS_MAX_BYTES)
		ret = refuse(-EFBIG, why, whylen, path, "larger than the 512 MiB a guest can see");
	else
		ret = 0;
	if (ret) {
		close(fd);
		return ret;
	}
	*bytes = (uint64_t)st.st_size;
	return fd;
}

static uint64_t page_round(uint64_t bytes)
{
	return (bytes + LAYOUT_PAGE_SIZE - 1) & ~(LAYOUT_PAGE_SIZE - 1);
}

int mem_corpus_map(struct gm *gm, const char *path, char *why, size_t whylen)
{
	uint64_t bytes;
	void *want, *p;
	int fd, ret;

	if (gm->corpus_path)
		return refuse(-EEXIST, why, whylen, path, "the VM has a corpus already");
	fd = open_corpus(path, &bytes, why, whylen);
	if (fd < 0)
		return fd;
	/* Within the reservation (the span always reaches 4 GiB), over its PROT_NONE. */
	want = gm->phys_base + LAYOUT_CORPUS_BASE;
	p = mmap(want, page_round(bytes), PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
	ret = p == MAP_FAILED ? refuse(-errno, why, whylen, path, strerror(errno)) : 0;
	close(fd);
	if (ret)
		return ret;
	gm->corpus_path = kv_strdup(path);
	if (!gm->corpus_path) {
		/* Back to the reservation's PROT_NONE: the hole must stay a hole. */
		mmap(want, page_round(bytes), PROT_NONE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
		return refuse(-ENOMEM, why, whylen, path, strerror(ENOMEM));
	}
	gm->corpus_bytes = bytes;
	gm->corpus_hash = XXH3_64bits(p, bytes);
	return 0;
}

int mem_corpus_check(const char *path, uint64_t bytes, uint64_t hash, char *why, size_t whylen)
{
	uint64_t have;
	void *p;
	int fd, ret = 0;

	fd = open_corpus(path, &have, why, whylen);
	if (fd < 0)
		return fd;
	p = have == bytes ? mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
	if (have != bytes)
		ret = refuse(-ESTALE, why, whylen, path, "its size differs from the VM's corpus");
	else if (p == MAP_FAILED)
		ret = refuse(-errno, why, whylen, path, strerror(errno));
	else if (XXH3_64bits(p, bytes) != hash)
		ret = refuse(-ESTALE, why, whylen, path, "its content differs from the VM's corpus");
	if (p != MAP_FAILED)
		munmap(p, bytes);
	close(fd);
	return ret;
}

bool mem_corpus_get(const struct gm *gm, struct mem_corpus *out)
{
	if (!gm->corpus_path)
		return false;
	*out = (struct mem_corpus){
		.path = gm->corpus_path,
		.bytes = gm->corpus_bytes,
		.hash = gm->corpus_hash,
		.gpa = LAYOUT_CORPUS_BASE,
		.map_bytes = page_round(gm->corpus_bytes),
	};
	return true;
}
