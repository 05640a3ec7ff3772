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

/* PDs fit between LAYOUT_PGTABLE + 2 pages and LAYOUT_PGTABLE_END. */
#define LAYOUT_MAX_GIB ((LAYOUT_PGTABLE_END - LAYOUT_PGTABLE) / LAYOUT_PAGE_SIZE - 2)
#define LAYOUT_MAX_RAM (LAYOUT_MAX_GIB * (1ULL << 30) - (LAYOUT_HIGH_RAM_BASE - LAYOUT_LOW_RAM_MAX))

#endif
