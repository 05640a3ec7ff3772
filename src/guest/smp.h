/* SPDX-License-Identifier: MIT */
/*
 * One worker per vCPU. vCPU 0 runs the show and posts jobs; every other vCPU
 * sits in smp_worker(), polling for the next job (sleeping through the VMM
 * between polls), runs its share and reports back. The guest takes no
 * interrupts, so there is no other way to wake a vCPU.
 */
#ifndef KVMEM_GUEST_SMP_H
#define KVMEM_GUEST_SMP_H

/* A job's share for one vCPU: @cpu in [0, rt_ncpus()). */
typedef void smp_fn(unsigned cpu, void *arg);

/*
 * smp_run - run @fn(cpu, @arg) on every vCPU, vCPU 0 included, and return
 * when all are done. vCPU 0 only; jobs do not nest.
 */
void smp_run(smp_fn *fn, void *arg);

/* The loop of every vCPU but 0, after rt_is_ready(). Never returns. */
__attribute__((noreturn)) void smp_worker(unsigned cpu);

#endif
