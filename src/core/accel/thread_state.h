/* SPDX-License-Identifier: MIT */
/*
 * A thread-accelerator vCPU's state as it travels (the payload of a
 * migration stream's or snapshot's VCPU record after the vCPU index): the
 * registers the thread keeps between runs and an MMIO read whose result is
 * still to be delivered. Little-endian, fixed layout, no padding. A header
 * of its own so that whatever writes such records outside the accelerator
 * (tests/fuzz builds them) uses the layout thread.c reads, not a copy.
 */
#ifndef KVMEM_CORE_ACCEL_THREAD_STATE_H
#define KVMEM_CORE_ACCEL_THREAD_STATE_H

#include <stdint.h>

#define THREAD_STATE_MAGIC 0x44524854u /* "THRD" */
#define THREAD_STATE_VERSION 1

/* Register order of gpr[] (and of the thread's own registers): the x86 encoding's. */
enum { R_AX, R_CX, R_DX, R_BX, R_SP, R_BP, R_SI, R_DI, R_8, R_9, R_10, R_11, R_12, R_13,
       R_14, R_15 };

struct thread_state {
	uint32_t magic;
	uint32_t version;
	uint64_t gpr[16];
	uint64_t rip;
	uint64_t rflags;
	uint32_t mxcsr;
	uint16_t fcw;
	uint8_t mmio_read;
	uint8_t pad;
	uint8_t mmio_data[8];
};

_Static_assert(sizeof(struct thread_state) == 168, "thread_state has no padding");

#endif
