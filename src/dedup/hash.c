/* SPDX-License-Identifier: MIT */
/*
 * Page hashing: XXH3-64 with a secret derived from a random per-host seed
 * (guests choose page contents, and unseeded XXH3 does not defend against
 * crafted collisions; xxhash.h). The hash only finds candidates: every merge
 * compares the pages byte for byte. This file is the SSE2 baseline every
 * x86-64 CPU runs; hash_avx2.c is used when the CPU has AVX2.
 */
#define XXH_INLINE_ALL
#define XXH_STATIC_LINKING_ONLY
#define XXH_VECTOR 1 /* XXH_SSE2 */
#include <xxhash.h>

#include "dedup/dedup_internal.h"

#include <string.h>

uint64_t dedup_hash_page_sse2(const void *page, const void *secret)
{
	return XXH3_64bits_withSecret(page, MEM_PAGE_SIZE, secret, DEDUP_SECRET_SIZE);
}

static void pick_isa(struct dedup_hasher *h)
{
	static const uint8_t zero[MEM_PAGE_SIZE];

	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2")) {
		h->fn = dedup_hash_page_avx2;
		h->isa = "avx2";
	} else {
		h->fn = dedup_hash_page_sse2;
		h->isa = "sse2";
	}
	h->zero_hash = h->fn(zero, h->secret);
}

void dedup_hasher_init(struct dedup_hasher *h, uint64_t seed)
{
	XXH3_generateSecret_fromSeed(h->secret, seed);
	pick_isa(h);
}

void dedup_hasher_init_key(struct dedup_hasher *h, const void *key, size_t len)
{
	/* XXH3 wants some key material: an empty key is the default secret's seed 0. */
	if (len)
		XXH3_generateSecret(h->secret, DEDUP_SECRET_SIZE, key, len);
	else
		XXH3_generateSecret_fromSeed(h->secret, 0);
	pick_isa(h);
}
