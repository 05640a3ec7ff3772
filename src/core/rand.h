/* SPDX-License-Identifier: MIT */
/*
 * A small fast PRNG for sampling and victim choice (splitmix64): not for
 * anything an adversary could exploit by predicting it.
 */
#ifndef KVMEM_CORE_RAND_H
#define KVMEM_CORE_RAND_H

#include <stdint.h>

static inline uint64_t kv_rand(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

#endif
