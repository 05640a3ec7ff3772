/* SPDX-License-Identifier: MIT */
/*
 * Reference for bench_boot: fill `MiB` of fresh anonymous memory with memset
 * in this process, first touch included (as the guest's fill is), and print
 * the throughput. Usage: memset_ref MiB
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv)
{
	size_t len = (size_t)(argc > 1 ? atol(argv[1]) : 256) << 20;
	struct timespec a, b;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	double s;

	if (p == MAP_FAILED)
		return 1;
	madvise(p, len, MADV_NOHUGEPAGE); /* guest RAM is 4 KiB pages too */
	clock_gettime(CLOCK_MONOTONIC, &a);
	memset(p, 0x5a, len);
	clock_gettime(CLOCK_MONOTONIC, &b);
	s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
	printf("%.3f\n", (double)len / s / 1e9);
	return 0;
}
