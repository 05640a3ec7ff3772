/* SPDX-License-Identifier: MIT */
/*
 * Heap for the VMM's own metadata. jemalloc is the process allocator in
 * normal builds (linked, so malloc is jemalloc); sanitizer builds use the
 * sanitizer's allocator instead. Guest RAM never comes from here.
 * Returns NULL on exhaustion, never aborts.
 */
#ifndef KVMEM_CORE_ALLOC_H
#define KVMEM_CORE_ALLOC_H

#include <stddef.h>
#include <stdint.h>

void *kv_zalloc(size_t size) __attribute__((malloc, alloc_size(1)));
void *kv_calloc(size_t n, size_t size) __attribute__((malloc, alloc_size(1, 2)));
void *kv_realloc(void *p, size_t size);
char *kv_strdup(const char *s);
void kv_free(void *p);

/* Bytes the allocator holds for the VMM (jemalloc stats.allocated), or 0. */
uint64_t kv_alloc_bytes(void);
/* Name of the allocator in use, for stats and benches. */
const char *kv_alloc_name(void);

#endif
