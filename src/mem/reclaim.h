/* SPDX-License-Identifier: MIT */
/*
 * Reclaim that needs no decision beyond the page itself: pages the guest
 * gave up (balloon, free page reporting) and pages that hold only zeros.
 * Both go through the page-range transaction (mem/txn.h): a page another
 * mechanism holds is waited for or left alone, never taken from under it,
 * and a guest write racing with reclaim is never lost.
 */
#ifndef KVMEM_MEM_RECLAIM_H
#define KVMEM_MEM_RECLAIM_H

#include <stdbool.h>
#include <stdint.h>

#include "mem/gm.h"
#include "mem/pagestate.h"

struct ovc;

/*
 * Drop whole pages the guest has given up (balloon inflate: PS_BALLOONED; free
 * page reporting: PS_REPORTED). gpa and len must be page aligned and in RAM
 * (-EINVAL/-EFAULT). A later guest access is served a zero page. A page that
 * another mechanism holds is waited for (its transaction is short); one
 * still held after two seconds ends the call with -EBUSY, the pages before
 * it dropped. Returns the number of pages whose host memory was dropped.
 */
int64_t mem_discard(struct gm *gm, gpa_t gpa, uint64_t len, enum ps_state why);
/* Balloon deflate: the pages are the guest's again (they read as zeros). */
int mem_undiscard(struct gm *gm, gpa_t gpa, uint64_t len);

/*
 * Zero-page reclaim over page indexes [first, first + count): every private
 * page that holds only zeros is dropped (PS_ZERO). Returns pages dropped, stops
 * after `max_pages` drops.
 *
 * A dropped page reads the kernel's zero page, whatever the kernel: where a
 * read of a hole would allocate a page instead (pvm_no_zero_page, see
 * mem_zero_page_on_read), the run is given the zero page through
 * UFFDIO_ZEROPAGE as it is dropped, so a guest that reads its zero pages
 * again keeps them free.
 */
int64_t mem_reclaim_zero(struct gm *gm, uint64_t first, uint64_t count, uint64_t max_pages);

/*
 * True when page idx lies in a mapping of the store (a page or a window
 * mapped onto frames, mem/txn.h) rather than anonymous memory: an
 * unpopulated page there would read the store, not zeros.
 */
bool mem_page_in_store_mapping(const struct gm *gm, uint64_t idx);

/* Register zero-page reclaim with the policy (cost 0). */
int reclaim_register_zero(struct ovc *ovc);

#endif
