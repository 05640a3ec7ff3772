/* SPDX-License-Identifier: MIT */
#include "core/alloc.h"

#include <stdlib.h>
#include <string.h>

#ifdef KVMEM_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>

/*
 * jemalloc's options, which it reads from this symbol at its start: no
 * transparent huge pages on the VMM's heap. Where the host's THP mode is
 * "always" (Debian's kernels), the first touch of each arena otherwise
 * faulted in 2 MiB: 14 MiB of a kvmem process's 22 MiB were huge pages of
 * mostly untouched metadata (a Linux guest of 512 MiB in the nested VM).
 * Guest RAM is not the heap's and keeps its own advice (mem/memmap.c).
 */
const char *malloc_conf = "thp:never";
#endif

/* In parentheses: in a fault injection build the names are also macros (alloc.h). */
void *(kv_zalloc)(size_t size)
{
	return calloc(1, size);
}

void *(kv_calloc)(size_t n, size_t size)
{
	return calloc(n, size);
}

void *(kv_realloc)(void *p, size_t size)
{
	return realloc(p, size);
}

char *(kv_strdup)(const char *s)
{
	return s ? strdup(s) : NULL;
}

#ifdef KVMEM_FAULT_INJECTION
/* A hit of point p, where the caller's module has one: true to fail the call. */
static bool fail(enum fault_point p)
{
	return p < FAULT_NR_POINTS && fault_hit(p);
}

void *kv_zalloc_at(size_t size, enum fault_point p)
{
	return fail(p) ? NULL : (kv_zalloc)(size);
}

void *kv_calloc_at(size_t n, size_t size, enum fault_point p)
{
	return fail(p) ? NULL : (kv_calloc)(n, size);
}

void *kv_realloc_at(void *p, size_t size, enum fault_point fp)
{
	return fail(fp) ? NULL : (kv_realloc)(p, size);
}

char *kv_strdup_at(const char *s, enum fault_point p)
{
	/* NULL is no allocation, so no hit: the caller cannot tell it from a failure. */
	return s && fail(p) ? NULL : (kv_strdup)(s);
}
#endif

void kv_free(void *p)
{
	free(p);
}

uint64_t kv_alloc_bytes(void)
{
#ifdef KVMEM_HAVE_JEMALLOC
	uint64_t epoch = 1;
	size_t allocated = 0;
	size_t sz = sizeof(epoch);

	/* jemalloc caches its stats; bumping the epoch refreshes them. */
	mallctl("epoch", &epoch, &sz, &epoch, sz);
	sz = sizeof(allocated);
	if (mallctl("stats.allocated", &allocated, &sz, NULL, 0) != 0)
		return 0;
	return allocated;
#else
	return 0;
#endif
}

bool kv_alloc_thp_off(void)
{
#ifdef KVMEM_HAVE_JEMALLOC
	const char *thp = NULL;
	size_t sz = sizeof(thp);

	return mallctl("opt.thp", &thp, &sz, NULL, 0) == 0 && thp && !strcmp(thp, "never");
#else
	return false;
#endif
}

const char *kv_alloc_name(void)
{
#ifdef KVMEM_HAVE_JEMALLOC
	return "jemalloc";
#else
	return "libc";
#endif
}
