/* SPDX-License-Identifier: MIT */
/*
 * Every fixed guest-physical address the VMM uses. Guest RAM starts at 0;
 * the range [LAYOUT_LOW_RAM_MAX, 4 GiB) is the MMIO hole (device windows,
 * and a VM's read-only content corpus at its top), and RAM beyond
 * LAYOUT_LOW_RAM_MAX continues at 4 GiB. Everything below ABI_IMAGE_BASE
 * belongs to the VMM (descriptor tables, stacks, page tables); the guest's
 * allocator never sees it.
 */
#ifndef KVMEM_CORE_LAYOUT_H
#define KVMEM_CORE_LAYOUT_H

#include <stdint.h>

#include "guest/abi.h"

#define LAYOUT_PAGE_SIZE 4096ULL
#define LAYOUT_PAGE_SHIFT 12

#define LAYOUT_GDT 0x1000ULL		/* GDT: null, 4 segments, one TSS per vCPU */
#define LAYOUT_IDT 0x2000ULL		/* 256 gates */
#define LAYOUT_IDT_STUBS 0x3000ULL	/* CPL0 exception stubs (machine code) */
#define LAYOUT_BOOT_PARAMS 0x4000ULL	/* struct abi_boot_params, 3 pages */
#define LAYOUT_TSS 0x8000ULL		/* 128 bytes per vCPU */
#define LAYOUT_KSTACKS 0x10000ULL	/* 4 KiB CPL0 stack per vCPU (exceptions only) */
#define LAYOUT_KSTACK_SIZE 0x1000ULL
#define LAYOUT_PGTABLE 0x50000ULL	/* PML4, PDPT, then one PD per GiB */
#define LAYOUT_PGTABLE_END 0x100000ULL
#define LAYOUT_USTACKS 0x100000ULL	/* CPL3 stack per vCPU */
#define LAYOUT_USTACK_SIZE 0x4000ULL
#define LAYOUT_RESERVED_END ABI_IMAGE_BASE

#define LAYOUT_LOW_RAM_MAX 0xC0000000ULL
#define LAYOUT_HIGH_RAM_BASE 0x100000000ULL

/* RAM below the hole for a VM of `ram_bytes`; the rest lies from LAYOUT_HIGH_RAM_BASE. */
static inline uint64_t layout_low_ram_bytes(uint64_t ram_bytes)
{
	return ram_bytes < LAYOUT_LOW_RAM_MAX ? ram_bytes : LAYOUT_LOW_RAM_MAX;
}

/* MMIO devices: one 4 KiB window each from LAYOUT_MMIO_BASE. */
#define LAYOUT_MMIO_BASE 0xD0000000ULL
#define LAYOUT_MMIO_SLOT_SIZE 0x1000ULL
#define LAYOUT_MMIO_CONSOLE (LAYOUT_MMIO_BASE + 0x0000)
#define LAYOUT_MMIO_SYSCTL (LAYOUT_MMIO_BASE + 0x1000)
#define LAYOUT_MMIO_VIRTIO (LAYOUT_MMIO_BASE + 0x10000) /* virtio-mmio slot i at +i*4K */
#define LAYOUT_VIRTIO_IRQ_BASE 5

/*
 * A VM's content corpus (mem/corpus.h): a read-only file mapped at the top
 * of the MMIO hole, clear of the device windows, up to 4 GiB.
 */
#define LAYOUT_CORPUS_BASE 0xE0000000ULL
#define LAYOUT_CORPUS_MAX_BYTES (LAYOUT_HIGH_RAM_BASE - LAYOUT_CORPUS_BASE) /* 512 MiB */

/*
 * A Linux guest (core/linux_boot.h) has the same RAM, hole and devices and
 * its own first megabyte: what the 64-bit boot protocol needs before the
 * kernel has tables of its own. The kernel copies the zero page and the
 * command line and replaces the GDT and page tables before it allocates
 * any memory, so these pages stay usable RAM in its e820 map, as on a PC
 * whose loader put them there; the tables the kernel keeps reading (MP,
 * ACPI) are reserved. [0xA0000, 1 MiB) is the legacy
 * hole: RAM to kvmem, absent from the guest's map. The protected-mode
 * kernel goes at its preferred address (16 MiB on Debian), the initrd as
 * high below the hole as the kernel allows.
 */
#define LAYOUT_LINUX_GDT 0x1000ULL		/* boot GDT: __BOOT_CS, __BOOT_DS, a TSS */
#define LAYOUT_LINUX_TSS 0x1800ULL		/* the TSS TR points at (104 bytes, zero) */
#define LAYOUT_LINUX_ZERO_PAGE 0x7000ULL	/* struct boot_params, one page */
#define LAYOUT_LINUX_STACK_TOP 0x9000ULL	/* a boot stack (the kernel soon has its own) */
#define LAYOUT_LINUX_PGTABLE 0x9000ULL	/* PML4, PDPT, four PDs: the first 4 GiB identity mapped */
#define LAYOUT_LINUX_PGTABLE_END 0xF000ULL
#define LAYOUT_LINUX_CMDLINE 0x20000ULL	/* the command line and its NUL */
#define LAYOUT_LINUX_CMDLINE_MAX 0x10000ULL
/*
 * Reserved in e820, where firmware would put its tables (core/linux_tables.h):
 * what the kernel reads for its whole life. The MP floating pointer lies in
 * the last KiB of base memory, one of the places a kernel looks for it;
 * ACPI's root pointer is in the zero page.
 */
#define LAYOUT_LINUX_TABLES 0x9E000ULL
#define LAYOUT_LINUX_ACPI 0x9E000ULL		/* RSDP, XSDT, FADT, MADT, FACS, DSDT */
#define LAYOUT_LINUX_ACPI_END 0x9F000ULL
#define LAYOUT_LINUX_MPTABLE 0x9F000ULL	/* the MP configuration table */
#define LAYOUT_LINUX_MPFP 0x9FC00ULL		/* the MP floating pointer (16 bytes) */
#define LAYOUT_LINUX_TABLES_END 0xA0000ULL
#define LAYOUT_LINUX_HIGH_MEM 0x100000ULL	/* RAM again above the legacy hole */

/*
 * A Linux guest's platform: a PC's ports where Linux looks for them
 * (core/dev/uart.c, core/dev/pc.c), described by the tables. The PIC, the
 * PIT and the IOAPIC and local APICs are KVM's, at their usual places;
 * interrupt line (GSI) n is ISA IRQ n, IOAPIC pin n. The ACPI registers
 * are kvmem's choice (the FADT says where): an event block (status and
 * enable, 2 bytes each), a control register whose sleep type
 * LAYOUT_LINUX_S5_TYP with SLP_EN powers off, and a 32-bit PM timer.
 */
#define LAYOUT_LINUX_COM1 0x3F8		/* 8250 UART, 8 ports */
#define LAYOUT_LINUX_COM1_GSI 4
#define LAYOUT_LINUX_I8042_DATA 0x60
#define LAYOUT_LINUX_I8042_CMD 0x64		/* 0xFE: pulse the reset line (reboot) */
#define LAYOUT_LINUX_CMOS 0x70		/* index, then data */
#define LAYOUT_LINUX_POST 0x80		/* POST codes, and I/O delays */
#define LAYOUT_LINUX_PM1_EVT 0x600
#define LAYOUT_LINUX_PM1_CNT 0x604
#define LAYOUT_LINUX_PM_TMR 0x608
#define LAYOUT_LINUX_SCI_GSI 9
#define LAYOUT_LINUX_S5_TYP 5
#define LAYOUT_IOAPIC 0xFEC00000ULL
#define LAYOUT_LAPIC 0xFEE00000ULL
/*
 * Guest-physical pages KVM on Intel keeps for itself (the identity map and
 * real-mode TSS its VMX code needs): in the hole, clear of RAM, devices,
 * the APICs, and of a Linux guest's corpus window, which ends below the
 * IOAPIC.
 */
#define LAYOUT_LINUX_KVM_IDENTITY 0xFEFFC000ULL
#define LAYOUT_LINUX_KVM_TSS 0xFEFFD000ULL	/* 3 pages */

/* PDs fit between LAYOUT_PGTABLE + 2 pages and LAYOUT_PGTABLE_END. */
#define LAYOUT_MAX_GIB ((LAYOUT_PGTABLE_END - LAYOUT_PGTABLE) / LAYOUT_PAGE_SIZE - 2)
#define LAYOUT_MAX_RAM (LAYOUT_MAX_GIB * (1ULL << 30) - (LAYOUT_HIGH_RAM_BASE - LAYOUT_LOW_RAM_MAX))

#endif
