/* SPDX-License-Identifier: MIT */
/*
 * bench/swap: host swap's store against its floors, measured in the same
 * run on the same filesystem.
 *
 *   swap-out   MiB of unique guest pages written out by mem_swap_out
 *              (claim, copy, O_DIRECT write, commit, drop), next to
 *              sequential O_DIRECT writes of as many bytes to a file there;
 *   fault      the time a touch of a swapped page waits (the uffd service
 *              reads its slot and copies it in), touched in random order
 *              (read-ahead rarely helps) and in order (it does), next to
 *              two floors: a userfaultfd MISSING round trip answered with
 *              UFFDIO_COPY of a page already in memory, and a 4 KiB
 *              O_DIRECT pread at a random offset of that file;
 *   pool       the same for pages kept compressed in memory (LZ4), next to
 *              the userfaultfd round trip alone;
 *   parallel   four threads touching random swapped pages at once, next to
 *              one: the service keeps several reads in flight instead of
 *              waiting for each (faults per second, and their ratio);
 *   VMM read   a read of a swapped page through the access API, which reads
 *              its slot without swapping it in, next to the pread floor.
 *
 * Usage: bench_swap [DIR] [MiB] [auto|io_uring|threads]
 *        (DIR on a disk, default "."; MiB default 256; the I/O engine)
 * Prints one JSON line per metric: name, unit, value, and the floor where
 * there is one. Needs root for nothing; needs DIR to allow O_DIRECT.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "mem/gm.h"
#include "mem/memmap.h"
#include "mem/pagemap.h"
#include "mem/swap.h"
#include "mem/uffd.h"

#define PAGE 4096ULL
#define SAMPLES 2000

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* p-th percentile of n samples (sorts them), in microseconds. */
static double pct_us(uint64_t *ns, unsigned int n, unsigned int p)
{
	qsort(ns, n, sizeof(*ns), cmp_u64);
	return (double)ns[(uint64_t)(n - 1) * p / 100] / 1000.0;
}

static void metric(const char *name, const char *unit, double value, const char *floor_name,
		   double floor)
{
	printf("{\"name\": \"swap.%s\", \"unit\": \"%s\", \"value\": %.3f", name, unit, value);
	if (floor_name)
		printf(", \"floor\": \"%s\", \"floor_value\": %.3f, \"ratio\": %.2f", floor_name,
		       floor, floor > 0 ? value / floor : 0.0);
	printf("}\n");
}

/* --- floor: a userfaultfd round trip answered with a copy from memory --- */

struct copy_floor {
	int uffd;
	uint8_t *src;
	volatile int stop;
};

static void *copy_handler(void *arg)
{
	struct copy_floor *c = arg;
	struct pollfd p = { c->uffd, POLLIN, 0 };

	while (!c->stop) {
		struct uffd_msg m;
		struct uffdio_copy cp;

		if (poll(&p, 1, 100) <= 0 || read(c->uffd, &m, sizeof(m)) != sizeof(m))
			continue;
		cp = (struct uffdio_copy){ .dst = m.arg.pagefault.address & ~(PAGE - 1),
					   .src = (uint64_t)(uintptr_t)c->src,
					   .len = PAGE };
		ioctl(c->uffd, UFFDIO_COPY, &cp);
	}
	return NULL;
}

static double uffd_floor_p50(uint64_t pages)
{
	struct copy_floor c = { 0 };
	struct uffdio_api api = { .api = UFFD_API };
	uint8_t *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	struct uffdio_register reg = { .range = { (uint64_t)(uintptr_t)p, pages * PAGE },
				       .mode = UFFDIO_REGISTER_MODE_MISSING };
	static uint64_t ns[SAMPLES];
	pthread_t th;
	double p50;

	c.uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	c.src = aligned_alloc(PAGE, PAGE);
	if (p == MAP_FAILED || c.uffd < 0 || !c.src || ioctl(c.uffd, UFFDIO_API, &api) ||
	    ioctl(c.uffd, UFFDIO_REGISTER, &reg))
		return -1;
	memset(c.src, 0x5a, PAGE);
	pthread_create(&th, NULL, copy_handler, &c);
	for (unsigned int i = 0; i < SAMPLES; i++) {
		uint64_t t0 = now_ns();

		(void)*(volatile uint8_t *)(p + (next_rand() % pages) * PAGE);
		ns[i] = now_ns() - t0;
	}
	c.stop = 1;
	pthread_join(th, NULL);
	p50 = pct_us(ns, SAMPLES, 50);
	munmap(p, pages * PAGE);
	close(c.uffd);
	free(c.src);
	return p50;
}

/* --- floors on the file: sequential O_DIRECT writes, random 4 KiB O_DIRECT reads --- */

static int scratch_file(const char *dir)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_DIRECT | O_CLOEXEC, 0600);

	if (fd < 0) {
		char name[4096];

		snprintf(name, sizeof(name), "%s/bench-swap-%d", dir, (int)getpid());
		fd = open(name, O_CREAT | O_EXCL | O_RDWR | O_DIRECT | O_CLOEXEC, 0600);
		if (fd >= 0)
			unlink(name);
	}
	return fd;
}

/* The first word of a page of the file phase (0 allowed, as it was) and of the pool phase. */
static bool file_page_ok(uint64_t page, uint64_t v)
{
	return v == page * (PAGE / 8) + 1 || !v;
}

static bool pool_page_ok(uint64_t page, uint64_t v)
{
	return v == page + 1;
}

/* The first word of bench page `page`, read as the guest would: through its mapping. */
static uint64_t touch(struct gm *gm, uint64_t page)
{
	struct mem_slice sl;

	if (mem_slice_get(gm, (1 << 20) + page * PAGE, sizeof(uint64_t), &sl))
		return UINT64_MAX;
	return *(volatile uint64_t *)sl.hva;
}

/* A random bench page (of [0, pages)) still swapped: read-ahead brought some back already. */
static uint64_t swapped_page(struct gm *gm, uint64_t first, uint64_t pages, uint64_t *rs)
{
	uint64_t page, pm = 0;

	do {
		*rs ^= *rs << 13;
		*rs ^= *rs >> 7;
		*rs ^= *rs << 17;
		page = *rs % pages;
	} while (mem_pagemap(gm, first + page, 1, &pm) == 1 && mem_pm_resident(pm));
	return page;
}

/*
 * SAMPLES touches of random pages still swapped, each timed into ns, its
 * first word checked with ok. 0, or 1 with the page said when one read
 * back wrong.
 */
static int random_faults(struct gm *gm, uint64_t first, uint64_t pages,
			 bool (*ok)(uint64_t page, uint64_t v), uint64_t *ns)
{
	for (unsigned int i = 0; i < SAMPLES; i++) {
		uint64_t page = swapped_page(gm, first, pages, &rng), v, t0;

		t0 = now_ns();
		v = touch(gm, page);
		ns[i] = now_ns() - t0;
		if (!ok(page, v)) {
			fprintf(stderr, "bench_swap: page %llu read back wrong\n",
				(unsigned long long)page);
			return 1;
		}
	}
	return 0;
}

struct toucher {
	struct gm *gm;
	uint64_t first, pages, seed;
	unsigned int n;
	int bad;
};

static void *touch_random(void *arg)
{
	struct toucher *t = arg;

	for (unsigned int i = 0; i < t->n; i++) {
		uint64_t page = swapped_page(t->gm, t->first, t->pages, &t->seed);

		t->bad += !file_page_ok(page, touch(t->gm, page));
	}
	return NULL;
}

/*
 * Random touches of swapped pages from `threads` threads at once, SAMPLES
 * in all: faults per second (negative when a page read back wrong).
 */
static double faults_per_s(struct gm *gm, uint64_t first, uint64_t pages, unsigned int threads)
{
	struct toucher t[8];
	pthread_t th[8];
	uint64_t t0 = now_ns();
	int bad = 0;

	for (unsigned int i = 0; i < threads; i++) {
		t[i] = (struct toucher){ gm, first, pages, next_rand() | 1, SAMPLES / threads, 0 };
		pthread_create(&th[i], NULL, touch_random, &t[i]);
	}
	for (unsigned int i = 0; i < threads; i++) {
		pthread_join(th[i], NULL);
		bad += t[i].bad;
	}
	return bad ? -1 : (double)SAMPLES / ((double)(now_ns() - t0) / 1e9);
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : ".";
	uint64_t mib = argc > 2 ? strtoull(argv[2], NULL, 10) : 256;
	const char *engine = argc > 3 ? argv[3] : "auto";
	uint64_t pages = mib << 20 >> 12, ram = (mib + 64) << 20, first, t0, t1;
	static uint64_t ns[SAMPLES];
	struct mem_swap_vm_stats vs0, vs1;
	struct uffd_service *svc;
	struct mem_swap *sw;
	struct gm *gm;
	const char *why;
	uint8_t *buf = aligned_alloc(PAGE, 2 << 20);
	double out_s, write_s, fault_p50, fault_p99, seq_us, uffd_p50, pread_p50;
	int fd;

	if (!buf || mem_create_anon(ram, &gm) || mem_enable_uffd(gm) ||
	    uffd_service_create(&svc) || uffd_service_add(svc, gm)) {
		fprintf(stderr, "bench_swap: cannot set up guest memory with userfaultfd\n");
		return 1;
	}
	if (mem_swap_open(dir, (mib + 16) << 20, false, &sw, &why)) {
		fprintf(stderr, "bench_swap: swap file in %s: %s\n", dir, why);
		return 1;
	}
	if (mem_swap_set_io(sw, !strcmp(engine, "io_uring") ? MEM_SWAP_IO_URING
				: !strcmp(engine, "threads") ? MEM_SWAP_IO_THREADS
							      : MEM_SWAP_IO_AUTO) ||
	    mem_swap_serve(sw, svc) || mem_swap_attach(sw, gm, "bench", NULL, NULL)) {
		fprintf(stderr, "bench_swap: the swap store with engine %s cannot be set up\n", engine);
		return 1;
	}
	printf("{\"name\": \"swap.engine\", \"value\": \"%s\"}\n", mem_swap_engine(sw));
	first = (uint64_t)mem_page_index(gm, 1 << 20);
	/* Unique pages: every 8 bytes their own number. */
	for (uint64_t i = 0; i < pages; i++) {
		uint64_t *w = (uint64_t *)buf;

		for (unsigned int k = 0; k < PAGE / 8; k++)
			w[k] = i * (PAGE / 8) + k + 1;
		mem_write(gm, (1 << 20) + i * PAGE, buf, PAGE);
	}

	/* Swap-out, against sequential O_DIRECT writes of as many bytes. */
	t0 = now_ns();
	if (mem_swap_out(sw, gm, &(uint64_t){ first }, pages) != (int64_t)pages) {
		fprintf(stderr, "bench_swap: swap-out stopped short\n");
		return 1;
	}
	out_s = (double)(now_ns() - t0) / 1e9;
	fd = scratch_file(dir);
	if (fd < 0 || fallocate(fd, 0, 0, (off_t)(mib << 20))) {
		fprintf(stderr, "bench_swap: scratch file in %s: %m\n", dir);
		return 1;
	}
	t0 = now_ns();
	for (uint64_t off = 0; off < mib << 20; off += 2 << 20)
		if (pwrite(fd, buf, 2 << 20, (off_t)off) != 2 << 20)
			return 1;
	write_s = (double)(now_ns() - t0) / 1e9;
	metric("swap_out_mib_s", "MiB/s", (double)mib / out_s, "o_direct_write_mib_s",
	       (double)mib / write_s);

	/* Faults in random order: each touch waits for its read (read-ahead rarely helps). */
	if (random_faults(gm, first, pages, file_page_ok, ns))
		return 1;
	fault_p99 = pct_us(ns, SAMPLES, 99);
	fault_p50 = pct_us(ns, SAMPLES, 50);

	/* Random 4 KiB O_DIRECT reads of the scratch file: the I/O floor. */
	for (unsigned int i = 0; i < SAMPLES; i++) {
		t0 = now_ns();
		if (pread(fd, buf, PAGE, (off_t)((next_rand() % pages) * PAGE)) != (ssize_t)PAGE)
			return 1;
		ns[i] = now_ns() - t0;
	}
	pread_p50 = pct_us(ns, SAMPLES, 50);
	uffd_p50 = uffd_floor_p50(pages);
	metric("fault_random_p50_us", "us", fault_p50, "uffd_copy_plus_pread_p50_us",
	       uffd_p50 + pread_p50);
	metric("fault_random_p99_us", "us", fault_p99, NULL, 0);
	metric("floor_uffd_copy_p50_us", "us", uffd_p50, NULL, 0);
	metric("floor_o_direct_pread_4k_p50_us", "us", pread_p50, NULL, 0);

	/* A VMM read through the access API: the slot is read, the page stays swapped. */
	for (unsigned int i = 0; i < SAMPLES; i++) {
		uint64_t page = swapped_page(gm, first, pages, &rng), v = 0;

		t0 = now_ns();
		if (mem_read(gm, (1 << 20) + page * PAGE, &v, sizeof(v)) || !file_page_ok(page, v))
			return 1;
		ns[i] = now_ns() - t0;
	}
	metric("vmm_read_swapped_p50_us", "us", pct_us(ns, SAMPLES, 50), "o_direct_pread_4k_p50_us",
	       pread_p50);

	/* Faults from four threads at once against one: reads in flight together. */
	{
		double one, four;

		if (mem_swap_out(sw, gm, &(uint64_t){ first }, pages) < 0)
			return 1;
		one = faults_per_s(gm, first, pages, 1);
		four = faults_per_s(gm, first, pages, 4);

		if (one < 0 || four < 0) {
			fprintf(stderr, "bench_swap: a page read back wrong under parallel faults\n");
			return 1;
		}
		metric("faults_per_s_4_threads", "1/s", four, "faults_per_s_1_thread", one);
	}

	/*
	 * In order: read-ahead brings the next pages with each read. All of it
	 * back first and out again in order, so that it is written as one run.
	 */
	for (uint64_t i = 0; i < pages; i++)
		touch(gm, i);
	if (mem_swap_out(sw, gm, &(uint64_t){ first }, pages) < 0)
		return 1;
	mem_swap_vm_stats(gm, &vs0);
	t0 = now_ns();
	for (uint64_t i = 0; i < pages; i++)
		touch(gm, i);
	t1 = now_ns();
	mem_swap_vm_stats(gm, &vs1);
	metric("sequential_pages_per_fault", "pages",
	       (double)(vs1.faults + vs1.readahead - vs0.faults - vs0.readahead) /
		       (double)(vs1.faults - vs0.faults ? vs1.faults - vs0.faults : 1),
	       NULL, 0);
	seq_us = (double)(t1 - t0) / 1000.0 / (double)pages;
	metric("touch_sequential_us_per_page", "us", seq_us, "uffd_copy_plus_pread_p50_us",
	       uffd_p50 + pread_p50);
	/*
	 * The compressed pool: pages that compress well (a record repeated, the
	 * page's number in it) are kept in memory compressed; a touch costs a
	 * decompression and the same userfaultfd round trip.
	 */
	if (mem_swap_set_pool(sw, mib << 20) == 0) {
		for (uint64_t i = 0; i < pages; i++) {
			uint64_t *w = (uint64_t *)buf;

			for (unsigned int k = 0; k < PAGE / 8; k++)
				w[k] = k % 8 ? 0x0101010101010101ULL * (k % 8) : i + 1;
			mem_write(gm, (1 << 20) + i * PAGE, buf, PAGE);
		}
		t0 = now_ns();
		if (mem_swap_out(sw, gm, &(uint64_t){ first }, pages) != (int64_t)pages)
			return 1;
		out_s = (double)(now_ns() - t0) / 1e9;
		metric("pool_swap_out_mib_s", "MiB/s", (double)mib / out_s, NULL, 0);
		if (random_faults(gm, first, pages, pool_page_ok, ns))
			return 1;
		fault_p99 = pct_us(ns, SAMPLES, 99);
		fault_p50 = pct_us(ns, SAMPLES, 50);
		metric("pool_fault_random_p50_us", "us", fault_p50, "uffd_copy_p50_us", uffd_p50);
		metric("pool_fault_random_p99_us", "us", fault_p99, NULL, 0);
	}
	close(fd);
	uffd_service_remove(svc, gm);
	mem_swap_detach(sw, gm);
	mem_swap_close(sw);
	uffd_service_destroy(svc);
	mem_destroy(gm);
	free(buf);
	return 0;
}
