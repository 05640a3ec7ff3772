/* SPDX-License-Identifier: MIT */
/*
 * The workload engine, driven by kvmem.wl= on the guest command line:
 * comma-separated k=v (see wl.c for the keys). It fills memory with an exact
 * mix of page classes (wlgen.h), optionally rewrites and reads a hot set at
 * a set rate, verifies every page it owns, and ends as then= says.
 */
#ifndef KVMEM_GUEST_WL_H
#define KVMEM_GUEST_WL_H

#include "rt.h"

/*
 * wl_main - parse @spec (the kvmem.wl= value) and run the workload on all
 * vCPUs. vCPU 0 only, after palloc_init(). Never returns: it powers off or
 * idles. A bad spec prints why and powers off with RT_EXIT_USAGE.
 */
__noreturn void wl_main(struct rt_str spec);

#endif
