/* SPDX-License-Identifier: MIT */
/* A clock read in nanoseconds, for every module that times or paces its work. */
#ifndef KVMEM_CORE_CLOCK_H
#define KVMEM_CORE_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t kv_clock_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

#endif
