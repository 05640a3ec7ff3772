/* SPDX-License-Identifier: MIT */
/*
 * Deterministic page contents for the workload engine. Pure C with no
 * dependencies: built into the freestanding guest and into host unit tests
 * (and usable by host tools that want to predict guest pages).
 *
 * A page's content is a function of its class and a key:
 *   WLGEN_DUP:    (seed, index, version)      - identical in every guest
 *                                               that shares the seed
 *   WLGEN_UNIQUE: (seed, id, index, version)  - differs per guest id
 *   WLGEN_ZERO:   all zero bytes
 * Each non-zero page is a splitmix64 stream seeded from its key, so pages
 * with neighbouring indices or versions share no 8-byte word in practice.
 */
#ifndef KVMEM_GUEST_WLGEN_H
#define KVMEM_GUEST_WLGEN_H

#include <stdint.h>

#define WLGEN_PAGE_SIZE 4096
#define WLGEN_PAGE_WORDS (WLGEN_PAGE_SIZE / 8)

enum wlgen_class {
	WLGEN_UNIQUE = 0,
	WLGEN_DUP = 1,
	WLGEN_ZERO = 2,
};

/*
 * wlgen_fill - write the 4 KiB page at @page (8-byte aligned) for the given
 * class and key. @id is ignored for WLGEN_DUP; everything but the class for
 * WLGEN_ZERO.
 */
void wlgen_fill(void *page, enum wlgen_class cls, uint64_t seed, uint64_t id,
		uint64_t index, uint32_t version);

/*
 * wlgen_check - compare the page at @page with what wlgen_fill() writes for
 * the same arguments. Returns -1 if it matches, else the byte offset of the
 * first 8-byte word that differs.
 */
int wlgen_check(const void *page, enum wlgen_class cls, uint64_t seed, uint64_t id,
		uint64_t index, uint32_t version);

/* The expected 8-byte word at byte offset @off (a multiple of 8), for diagnostics. */
uint64_t wlgen_word(enum wlgen_class cls, uint64_t seed, uint64_t id, uint64_t index,
		    uint32_t version, unsigned off);

#endif
