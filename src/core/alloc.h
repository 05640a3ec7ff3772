/* SPDX-License-Identifier: MIT */
/*
 * Heap for the VMM's own metadata. jemalloc is the process allocator in
 * normal builds (linked, so malloc is jemalloc); sanitizer builds use the
 * sanitizer's allocator instead. Guest RAM never comes from here.
 * Returns NULL on exhaustion, never aborts.
 *
 * In a build with fault injection (core/fault.h) every call is also a hit
 * of the allocation point of the caller's module (alloc.dedup, alloc.policy,
 * alloc.balloon, alloc.mem: the file it is called from decides), and an
 * armed point makes it return NULL as exhaustion would.
 */
#ifndef KVMEM_CORE_ALLOC_H
#define KVMEM_CORE_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/fault.h"

void *kv_zalloc(size_t size) __attribute__((malloc, alloc_size(1)));
void *kv_calloc(size_t n, size_t size) __attribute__((malloc, alloc_size(1, 2)));
void *kv_realloc(void *p, size_t size);
char *kv_strdup(const char *s);
void kv_free(void *p);

#ifdef KVMEM_FAULT_INJECTION
/* The calls above, as hits of point p first (FAULT_NR_POINTS: none). */
void *kv_zalloc_at(size_t size, enum fault_point p) __attribute__((malloc, alloc_size(1)));
void *kv_calloc_at(size_t n, size_t size, enum fault_point p)
	__attribute__((malloc, alloc_size(1, 2)));
void *kv_realloc_at(void *p, size_t size, enum fault_point fp);
char *kv_strdup_at(const char *s, enum fault_point p);
#define kv_zalloc(size) kv_zalloc_at(size, fault_alloc_point(__FILE__))
#define kv_calloc(n, size) kv_calloc_at(n, size, fault_alloc_point(__FILE__))
#define kv_realloc(p, size) kv_realloc_at(p, size, fault_alloc_point(__FILE__))
#define kv_strdup(s) kv_strdup_at(s, fault_alloc_point(__FILE__))
#endif

/* Bytes the allocator holds for the VMM (jemalloc stats.allocated), or 0. */
uint64_t kv_alloc_bytes(void);
/*
 * Whether the allocator keeps transparent huge pages off the VMM's heap
 * (jemalloc's thp:never, set in alloc.c); false under libc's, which leaves
 * them to the host's THP mode.
 */
bool kv_alloc_thp_off(void);
/* Name of the allocator in use, for stats and benches. */
const char *kv_alloc_name(void);

#endif
