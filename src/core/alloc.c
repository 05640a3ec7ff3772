/* SPDX-License-Identifier: MIT */
#include "core/alloc.h"

#include <stdlib.h>
#include <string.h>

#ifdef KVMEM_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

void *kv_zalloc(size_t size)
{
	return calloc(1, size);
}

void *kv_calloc(size_t n, size_t size)
{
	return calloc(n, size);
}

void *kv_realloc(void *p, size_t size)
{
	return realloc(p, size);
}

char *kv_strdup(const char *s)
{
	return s ? strdup(s) : NULL;
}

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

const char *kv_alloc_name(void)
{
#ifdef KVMEM_HAVE_JEMALLOC
	return "jemalloc";
#else
	return "libc";
#endif
}
