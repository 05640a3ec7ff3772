/* SPDX-License-Identifier: MIT */
/*
 * The tables firmware would leave a Linux guest, which the VMM writes
 * instead (there is no firmware): they describe the platform the kernel
 * cannot probe. Both kinds:
 *
 *   ACPI       (ACPI 6.x) RSDP, XSDT, FADT, FACS, MADT, DSDT: the only way
 *              left to announce virtio-mmio devices to a stock distribution
 *              kernel (Debian's has no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES,
 *              so `virtio_mmio.device=` on its command line does nothing,
 *              and there is no device tree on x86): one "LNRO0005" device
 *              each in the DSDT, with its window and interrupt. The MADT
 *              names the vCPUs' local APICs and the IOAPIC (a kernel with
 *              ACPI ignores an MP table, and without a MADT runs on one CPU
 *              and the 8259). Linux's ordinary power-off: \_S5 and the PM1a
 *              control register. A full (not hardware-reduced) FADT,
 *              because a hardware-reduced one makes Linux drop the 8259 and
 *              the PIT and with them the ISA interrupts the UART needs.
 *   MP table   (Intel MultiProcessor Specification 1.4) the same CPUs and
 *              IOAPIC, how the ISA interrupts reach its pins (IRQ n is pin
 *              n, as KVM routes them), the 8259 on LINT0: for a kernel
 *              without ACPI, or booted with acpi=off.
 *
 * Only data: core/linux_boot.c puts them in its plan, at LAYOUT_LINUX_TABLES.
 */
#ifndef KVMEM_CORE_LINUX_TABLES_H
#define KVMEM_CORE_LINUX_TABLES_H

#include <stdint.h>

#include "core/layout.h"
#include "mem/gm.h"

#define LINUX_TABLES_BYTES (LAYOUT_LINUX_TABLES_END - LAYOUT_LINUX_TABLES)
/* Virtio-mmio devices the DSDT can hold (one per virtio slot of the VM). */
#define LINUX_MAX_VIRTIO 16

/* A virtio-mmio device: its register window and interrupt line. */
struct linux_virtio {
	gpa_t gpa;
	uint64_t len;
	uint32_t gsi;
};

/* What the tables describe. */
struct linux_platform {
	unsigned int ncpus;	/* 1..ABI_MAX_CPUS: local APIC ids 0..ncpus-1, vCPU 0 boots */
	unsigned int nr_virtio;
	struct linux_virtio virtio[LINUX_MAX_VIRTIO];
};

/*
 * Write the tables for p into buf (LINUX_TABLES_BYTES, which the guest sees
 * at LAYOUT_LINUX_TABLES) and return the guest-physical address of the
 * ACPI root pointer (for the zero page). p must be within the limits above.
 */
gpa_t linux_tables_build(const struct linux_platform *p, uint8_t *buf);

#endif
