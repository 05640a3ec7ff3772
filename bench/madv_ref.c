/* SPDX-License-Identifier: MIT */
/*
 * Floor for bench_balloon: drop `MiB` of touched anonymous memory with one
 * MADV_DONTNEED in this process (4 KiB pages, as guest RAM) and print the
 * seconds it took. Usage: madv_ref MiB
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv)
{
	size_t len = (size_t)(argc > 1 ? atol(argv[1]) : 1024) << 20;
	struct timespec a, b;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return 1;
	madvise(p, len, MADV_NOHUGEPAGE);
	memset(p, 0x5a, len);
	clock_gettime(CLOCK_MONOTONIC, &a);
	if (madvise(p, len, MADV_DONTNEED))
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.6f\n", (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
	return 0;
}
