/* SPDX-License-Identifier: MIT */
/*
 * Reading a VM's pages out of the memory manager, for migration and
 * snapshots: each page as what it is (zero, ballooned, the VM's own data, a
 * shared frame) without costing the host memory to find out. A page that
 * is not there (never touched, dropped as zero, reported free) is not
 * faulted in to be read: it is zero; a swapped page is read from its slot,
 * not swapped in; a shared frame is named (its host page frame) so that its
 * content travels once however many guest pages map it.
 *
 * Any thread, no lock; the guest may run. A page the guest writes while it
 * is read may come out with the old content or the new: the caller tracks
 * writes (vm_dirty_*) and reads the page again.
 */
#ifndef KVMEM_MEM_EXPORT_H
#define KVMEM_MEM_EXPORT_H

#include <stdint.h>

#include "mem/gm.h"

enum mem_export_kind {
	MEM_EXPORT_ZERO = 1,	/* reads as zeros: nothing to carry */
	MEM_EXPORT_BALLOONED,	/* given to the balloon: the guest does not use it */
	MEM_EXPORT_DATA,	/* the VM's own content */
	MEM_EXPORT_FRAME,	/* content of a frame shared with other pages */
};

struct mem_export_page {
	uint8_t kind;		/* enum mem_export_kind */
};

/*
 * Pages [idx, idx + n) (page indexes, n <= MEM_EXPORT_MAX) whose bit is set
 * in mask (bit i for page idx + i; NULL: all): out[i] says what page idx + i
 * is (0 for a page not asked for) and, for DATA and FRAME, its content is at
 * data + i pages (other pages' slots are left as they were). One pagemap
 * read for the whole range: scattered pages cost no call each. 0, or -errno
 * (-EINVAL for a range outside RAM; a swapped page whose slot cannot be read).
 */
#define MEM_EXPORT_MAX 256
int mem_export_pages(struct gm *gm, uint64_t idx, uint32_t n, const uint64_t *mask,
		     struct mem_export_page *out, uint8_t *data);

#endif
