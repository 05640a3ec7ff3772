/* SPDX-License-Identifier: MIT */
/*
 * A VM's content corpus: a file the guest reads as read-only memory outside
 * its RAM, at LAYOUT_CORPUS_BASE (core/layout.h), where a workload finds the
 * contents it fills its pages with (the same shared libraries as another
 * guest, say). The file is mapped, not copied: its pages are the host's page
 * cache, one copy for every VM that maps the same file, and they are never
 * guest RAM, so they cost no guest memory and are never scanned, shared,
 * ballooned, swapped or migrated. Only what the guest copies into its RAM is
 * guest memory, and that is what the memory mechanisms see.
 *
 * The mapping is PROT_READ: a guest store into it faults under the thread
 * accelerator, and the kvm accelerator registers it as a read-only memslot,
 * so a store exits to the VMM instead of reaching the file.
 */
#ifndef KVMEM_MEM_CORPUS_H
#define KVMEM_MEM_CORPUS_H

#include <stddef.h>

#include "mem/gm.h"

struct mem_corpus {
	const char *path;	/* as given; owned by gm */
	uint64_t bytes;		/* the file's size */
	uint64_t hash;		/* XXH3-64 of its content: the same corpus on another host */
	gpa_t gpa;		/* where the guest finds it */
	uint64_t map_bytes;	/* bytes mapped: the size rounded up to a page */
};

/*
 * Map the regular file at `path` (1 byte to LAYOUT_CORPUS_MAX_BYTES) as gm's
 * corpus; before the VM runs, once. 0, or -errno with the reason in `why`
 * (-EINVAL not a regular file, -EFBIG too large, -ENODATA empty, -EEXIST a
 * corpus already, or open's and mmap's errors).
 */
int mem_corpus_map(struct gm *gm, const char *path, char *why, size_t whylen);
/*
 * Is the file at `path` the corpus a VM had elsewhere (`bytes` long, with
 * `hash`)? A VM that moves between hosts must find the same content. 0, or
 * -ESTALE when it differs, or the errors of mem_corpus_map; the reason in
 * `why`.
 */
int mem_corpus_check(const char *path, uint64_t bytes, uint64_t hash, char *why, size_t whylen);
/* gm's corpus into *out: true, or false when it has none. */
bool mem_corpus_get(const struct gm *gm, struct mem_corpus *out);

#endif
