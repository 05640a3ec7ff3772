/* SPDX-License-Identifier: MIT */
#include "fuzz.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/log.h"
#include "core/virtio/virtio_mmio.h"
#include "mem/gm.h"
#include "mem/memmap.h"

#define FZ_THREAD_STACK (512 * 1024)

const uint8_t *fz_bytes(struct fz *f, size_t n, size_t *got)
{
	const uint8_t *p = f->p;

	if (n > f->left)
		n = f->left;
	f->p += n;
	f->left -= n;
	*got = n;
	return p;
}

/* Little-endian, zero-padded at the end of the input. */
static uint64_t take(struct fz *f, size_t n)
{
	uint64_t v = 0;
	size_t got;
	const uint8_t *p = fz_bytes(f, n, &got);

	for (size_t i = 0; i < got; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

uint8_t fz_u8(struct fz *f)
{
	return (uint8_t)take(f, 1);
}

uint16_t fz_u16(struct fz *f)
{
	return (uint16_t)take(f, 2);
}

uint32_t fz_u32(struct fz *f)
{
	return (uint32_t)take(f, 4);
}

uint64_t fz_u64(struct fz *f)
{
	return take(f, 8);
}

void fz_file_init(struct fz_file *f, const char *name)
{
	f->fd = memfd_create(name, MFD_CLOEXEC);
	if (f->fd < 0) {
		perror("memfd_create");
		abort();
	}
	snprintf(f->path, sizeof(f->path), "/proc/self/fd/%d", f->fd);
}

void fz_file_set(struct fz_file *f, const void *data, size_t size)
{
	if (ftruncate(f->fd, 0) || (size && pwrite(f->fd, data, size, 0) != (ssize_t)size)) {
		perror("memfd");
		abort();
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_setup();
	fz_init();
	return 0;
}

void fz_setup(void)
{
	pthread_attr_t attr;

	log_set_level(getenv("KVMEM_FUZZ_VERBOSE") ? LOG_DEBUG : LOG_ERR);
	if (pthread_attr_init(&attr) || pthread_attr_setstacksize(&attr, FZ_THREAD_STACK) ||
	    pthread_setattr_default_np(&attr))
		fz_fail(__FILE__, __LINE__, "default thread stack size");
	pthread_attr_destroy(&attr);
}

const char *__asan_default_options(void)
{
	return "quarantine_size_mb=64";
}

void fz_fail(const char *file, int line, const char *what)
{
	fprintf(stderr, "%s:%d: invariant failed: %s\n", file, line, what);
	abort();
}

struct gm *fz_guest_memory(uint64_t bytes)
{
	struct gm *gm;

	if (mem_create_anon(bytes, &gm))
		fz_fail(__FILE__, __LINE__, "mem_create_anon");
	/* Every write from now on marks its pages, for fz_guest_reset. */
	mem_dirty_vmm_track(gm, true);
	return gm;
}

/* KVMEM_FUZZ_CHECK_RESET: the whole of RAM is zero. */
static void check_all_zero(struct gm *gm)
{
	static uint8_t buf[65536], zero[sizeof(buf)];

	for (unsigned int r = 0; r < mem_nr_regions(gm); r++) {
		gpa_t gpa;
		uint64_t len;

		mem_region(gm, r, &gpa, &len);
		for (uint64_t at = 0; at < len; at += sizeof(buf)) {
			size_t n = len - at < sizeof(buf) ? (size_t)(len - at) : sizeof(buf);

			FZ_CHECK(mem_read(gm, gpa + at, buf, n) == 0);
			if (!memcmp(buf, zero, n))
				continue;
			fprintf(stderr, "guest memory written in [0x%llx, 0x%llx) after a reset\n",
				(unsigned long long)(gpa + at),
				(unsigned long long)(gpa + at + n));
			fz_fail(__FILE__, __LINE__, "fz_guest_reset left guest memory written");
		}
	}
}

void fz_guest_reset(struct gm *gm)
{
	static uint64_t *bits;
	static uint64_t cap;
	static int check = -1;
	uint64_t words = mem_bitmap_words(gm);

	if (words > cap) {
		bits = realloc(bits, words * sizeof(*bits));
		FZ_CHECK(bits != NULL);
		cap = words;
	}
	memset(bits, 0, words * sizeof(*bits));
	if (mem_dirty_vmm_collect(gm, bits)) {
		for (uint64_t w = 0; w < words; w++) {
			for (uint64_t m = bits[w]; m; m &= m - 1) {
				uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(m);

				if (mem_zero_fill(gm, mem_index_gpa(gm, i), MEM_PAGE_SIZE))
					fz_fail(__FILE__, __LINE__, "mem_zero_fill");
			}
		}
		/* The zeroing marked them again: clean now, they are not the next input's. */
		mem_dirty_vmm_collect(gm, bits);
	}
	if (check < 0)
		check = getenv("KVMEM_FUZZ_CHECK_RESET") != NULL;
	if (check)
		check_all_zero(gm);
}

void fz_guest_write(struct fz *f, struct gm *gm, uint64_t base, uint64_t len)
{
	uint16_t off = fz_u16(f);
	size_t n;
	const uint8_t *b = fz_bytes(f, fz_u8(f), &n);

	if (off >= len)
		return;
	if (n > len - off)
		n = len - off;
	if (n && mem_write(gm, base + off, b, n))
		fz_fail(__FILE__, __LINE__, "mem_write");
}

void fz_vdev_round_trip(struct virtio_dev *vdev)
{
	json_t *a = virtio_dev_save(vdev), *b;
	char why[256] = "";

	FZ_CHECK(a != NULL);
	if (virtio_dev_load(vdev, a, why, sizeof(why))) {
		char *text = json_dumps(a, JSON_COMPACT);

		fprintf(stderr, "the state saved is refused (%s): %s\n", why, text ? text : "?");
		fz_fail(__FILE__, __LINE__, "virtio_dev_load(virtio_dev_save())");
	}
	b = virtio_dev_save(vdev);
	FZ_CHECK(b != NULL && json_equal(a, b));
	json_decref(a);
	json_decref(b);
}

void fz_vdev_load_foreign(struct virtio_dev *vdev, const uint8_t *text, size_t len)
{
	json_t *st = json_loadb((const char *)text, len, 0, NULL);
	char why[256] = "";
	int ret;

	if (!st)
		return;
	ret = virtio_dev_load(vdev, st, why, sizeof(why));
	FZ_CHECK(ret == 0 || (ret == -EINVAL && why[0]));
	json_decref(st);
}
