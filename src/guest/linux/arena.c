/* SPDX-License-Identifier: MIT */
/*
 * The workload's RAM: an anonymous mapping, aligned to palloc's 4 MiB
 * chunks so that a chunk the engine frees is whole blocks of the kernel's
 * too (what its free page reporting hands the host), with transparent huge
 * pages off: a huge page would have the kernel zero 2 MiB at the first
 * write, backing pages the engine never allocated, and a freed 4 KiB page
 * could not leave on its own.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "guest/linux/arena.h"
#include "guest/palloc.h"
#include "guest/rt.h"

/* Left to Linux and everything else it runs: a sixteenth of what is available, at least this. */
#define ARENA_MIN_RESERVE (16ULL << 20)
#define ARENA_ALIGN (PALLOC_CHUNK_PAGES * RT_PAGE_SIZE)

static void *base;

uint64_t arena_default_bytes(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	unsigned long long kib;
	uint64_t avail, reserve;
	char info[8192];
	const char *at;
	size_t n;

	if (!f)
		return 0;
	n = fread(info, 1, sizeof(info) - 1, f);
	fclose(f);
	info[n] = '\0';
	at = strstr(info, "MemAvailable:");
	if (!at || sscanf(at, "MemAvailable: %llu kB", &kib) != 1)
		return 0;
	avail = (uint64_t)kib << 10;
	reserve = MAX(avail / 16, ARENA_MIN_RESERVE);
	return avail > reserve ? (avail - reserve) & ~(RT_PAGE_SIZE - 1) : 0;
}

int arena_init(uint64_t bytes)
{
	/* Static: the boot parameters are a few KiB, and palloc reads only the ranges. */
	static struct abi_boot_params bp;
	uint64_t len = bytes + ARENA_ALIGN, head, tail;
	uint8_t *p;

	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		 -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	head = -(uintptr_t)p & (ARENA_ALIGN - 1);
	tail = len - head - bytes;
	if (head)
		munmap(p, head);
	if (tail)
		munmap(p + head + bytes, tail);
	base = p + head;
	/* A kernel without transparent huge pages refuses the advice: nothing to turn off. */
	madvise(base, bytes, MADV_NOHUGEPAGE);
	rt_phys_offset = (uint64_t)(uintptr_t)base - ARENA_GPA;
	bp.nr_ranges = 1;
	bp.ranges[0].gpa = ARENA_GPA;
	bp.ranges[0].len = bytes;
	return palloc_init(&bp);
}

void *arena_base(void)
{
	return base;
}

void arena_release_free(void)
{
	gpa_t at = GPA_NULL;
	uint64_t n;

	while (palloc_next_free_run(&at, &n, 1)) {
		madvise(phys_to_virt(at), n * RT_PAGE_SIZE, MADV_DONTNEED);
		at = gpa_add(at, n * RT_PAGE_SIZE);
	}
}
