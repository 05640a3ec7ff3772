/* SPDX-License-Identifier: MIT */
/*
 * What the Linux runtime (rt.c here, guest/rt.h's functions over libc)
 * needs done before the workload engine calls it.
 */
#ifndef KVMEM_GUEST_LINUX_RT_LINUX_H
#define KVMEM_GUEST_LINUX_RT_LINUX_H

/* Start the clock rt_now_ns() counts from and count the CPUs. Once, first thing. */
void rt_linux_init(void);

#endif
