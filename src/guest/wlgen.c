/* SPDX-License-Identifier: MIT */
/*
 * Page generator: a splitmix64 stream per page. The key is built by folding
 * each input through the splitmix64 finaliser, with a distinct constant per
 * class so a dup page and a unique page never share a key. Words are
 * independent of each other (word j = mix(key + (j + 1) * gamma)), so fill
 * and check are a tight loop the CPU can pipeline: ~1 ns per 8 bytes.
 */
#include "wlgen.h"

#define GAMMA 0x9e3779b97f4a7c15ULL
#define TAG_DUP 0x6475702d70616765ULL		/* "dup-page" */
#define TAG_UNIQUE 0x756e697175652d70ULL	/* "unique-p" */

static inline uint64_t mix(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t page_key(enum wlgen_class cls, uint64_t seed, uint64_t id, uint64_t index,
			 uint32_t version)
{
	uint64_t k;

	if (cls == WLGEN_DUP) {
		k = mix(seed ^ TAG_DUP);
	} else {
		k = mix(seed ^ TAG_UNIQUE);
		k = mix(k ^ id);
	}
	k = mix((k + GAMMA) ^ index);
	return mix((k + GAMMA) ^ version);
}

void wlgen_fill(void *page, enum wlgen_class cls, uint64_t seed, uint64_t id,
		uint64_t index, uint32_t version)
{
	uint64_t *p = page;
	uint64_t s;
	unsigned i;

	if (cls == WLGEN_ZERO) {
		for (i = 0; i < WLGEN_PAGE_WORDS; i++)
			p[i] = 0;
		return;
	}
	s = page_key(cls, seed, id, index, version);
	for (i = 0; i < WLGEN_PAGE_WORDS; i++) {
		s += GAMMA;
		p[i] = mix(s);
	}
}

int wlgen_check(const void *page, enum wlgen_class cls, uint64_t seed, uint64_t id,
		uint64_t index, uint32_t version)
{
	const uint64_t *p = page;
	uint64_t s;
	unsigned i;

	if (cls == WLGEN_ZERO) {
		for (i = 0; i < WLGEN_PAGE_WORDS; i++)
			if (p[i])
				return (int)(i * 8);
		return -1;
	}
	s = page_key(cls, seed, id, index, version);
	for (i = 0; i < WLGEN_PAGE_WORDS; i++) {
		s += GAMMA;
		if (p[i] != mix(s))
			return (int)(i * 8);
	}
	return -1;
}

uint64_t wlgen_word(enum wlgen_class cls, uint64_t seed, uint64_t id, uint64_t index,
		    uint32_t version, unsigned off)
{
	if (cls == WLGEN_ZERO)
		return 0;
	return mix(page_key(cls, seed, id, index, version) + GAMMA * (off / 8 + 1));
}
