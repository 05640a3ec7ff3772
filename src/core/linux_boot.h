/* SPDX-License-Identifier: MIT */
/*
 * Booting an unmodified x86-64 Linux kernel (a bzImage) by the 64-bit boot
 * protocol (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): no
 * real-mode setup code and no firmware run. The VMM puts the protected-mode
 * kernel, the initrd, the command line and the zero page (struct
 * boot_params, with an e820 map of kvmem's guest RAM around its MMIO hole)
 * into guest RAM, writes a GDT and identity page tables, and starts vCPU 0
 * in long mode at the kernel's 64-bit entry.
 *
 * Three steps, each usable on its own:
 *   linux_image_open   read and check the setup header: every field the VMM
 *                      reads is range-checked here, once (the image is a
 *                      user's file); a bad one is -ENOEXEC naming the field
 *   linux_boot_plan    decide where everything goes, as data: the writes into
 *                      guest RAM and vCPU 0's registers, accelerator-neutral
 *   linux_boot_apply   make the writes (gm API); an accelerator loads the registers
 * linux_boot_check runs the first two for a config check, before a VM exists.
 * The layout of the first megabyte is core/layout.h's LAYOUT_LINUX_*.
 *
 * The plan also holds the tables that describe the machine to the kernel
 * (core/linux_tables.h: the MP table, ACPI with the virtio-mmio devices).
 * Not here: the PVH entry of an uncompressed vmlinux (a bzImage is what
 * distributions ship), and the devices behind those tables (core/dev,
 * the accelerator's interrupt controllers).
 *
 * Context: any thread; no global state.
 */
#ifndef KVMEM_CORE_LINUX_BOOT_H
#define KVMEM_CORE_LINUX_BOOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/layout.h"
#include "core/linux_tables.h"
#include "mem/gm.h"

/* The oldest boot protocol taken: 2.12 has xloadflags, which say if there is a 64-bit entry. */
#define LINUX_PROTOCOL_MIN 0x020c
/* The setup header: from 0x1f1 in the image (and the zero page) to 0x202 + the jump's offset. */
#define LINUX_SETUP_HEADER 0x1f1
#define LINUX_SETUP_HEADER_MAX (0x290 - LINUX_SETUP_HEADER)
/* An image's first bytes that hold its setup header: the boot sector and one setup sector. */
#define LINUX_IMAGE_HEAD 1024

/* What the VMM takes from a bzImage, every field checked. */
struct linux_image {
	int fd;			/* the open image (linux_image_open), or -1 */
	uint64_t file_bytes;
	uint16_t protocol;	/* boot protocol version, 0x020f for 2.15 */
	uint64_t kernel_offset;	/* file offset of the protected-mode kernel: after the setup code */
	uint64_t kernel_bytes;	/* its size (syssize) */
	uint64_t load_gpa;	/* where it is loaded and runs: pref_address (aligned) */
	uint64_t init_size;	/* bytes from load_gpa it uses until it reads its memory map */
	uint32_t cmdline_max;	/* its longest command line, without the NUL (cmdline_size) */
	uint64_t initrd_max;	/* the highest byte an initrd may occupy (initrd_addr_max) */
	uint16_t xloadflags;
	uint8_t header[LINUX_SETUP_HEADER_MAX]; /* the setup header as read, for the zero page */
	unsigned int header_len;
	char version[80];	/* the kernel's version string, "" when it has none in range */
};

/*
 * Check the setup header in `head` (the image's first head_len bytes, at
 * most LINUX_IMAGE_HEAD are looked at) of an image of file_bytes, and fill
 * img (fd -1, no version). 0, or -ENOEXEC with the field and the problem in
 * why: truncated, boot_flag, "HdrS", protocol older than 2.12, setup
 * header length, syssize, payload, loadflags LOADED_HIGH, xloadflags
 * XLF_KERNEL_64, kernel_alignment, pref_address, init_size.
 */
int linux_image_parse(const uint8_t *head, size_t head_len, uint64_t file_bytes,
		      struct linux_image *img, char *why, size_t whylen);
/*
 * Open and check the image at path (linux_image_parse), keeping it open for
 * the kernel's copy. 0; -errno of open (why: "kernel PATH: reason"); -ENOEXEC
 * (why: "PATH: not a bootable x86-64 Linux kernel: <field and problem>").
 */
int linux_image_open(const char *path, struct linux_image *img, char *why, size_t whylen);
void linux_image_close(struct linux_image *img);

/* The machine a kernel boots into: what its e820 map and its MP and ACPI tables describe. */
struct linux_machine {
	uint64_t ram_bytes;	/* below the hole up to LAYOUT_LOW_RAM_MAX, the rest from 4 GiB */
	uint64_t corpus_bytes;	/* the read-only corpus window at LAYOUT_CORPUS_BASE (0: none) */
	struct linux_platform platform;	/* vCPUs and virtio-mmio devices */
};
/* The RAM and corpus of gm; the platform is left zero, for the caller to fill. */
void linux_machine_of(const struct gm *gm, struct linux_machine *m);

/* e820 types (the zero page's, as firmware reports them). */
#define LINUX_E820_RAM 1
#define LINUX_E820_RESERVED 2

/* One write into guest RAM. */
struct linux_write {
	const char *what;	/* "kernel", "initrd", "zero page", ...: for logs and tests */
	gpa_t gpa;
	uint64_t len;
	bool from_file;
	const void *data;	/* !from_file: len bytes, the plan's */
	int fd;			/* from_file: len bytes of fd from offset (the plan's) */
	uint64_t offset;
};

/* A segment register, visible and hidden parts, as the CPU holds it after a load. */
struct linux_segment {
	uint16_t selector;
	uint64_t base;
	uint32_t limit;		/* in bytes (granularity applied) */
	uint8_t type;		/* the descriptor's 4-bit type */
	uint8_t dpl;
	bool s;			/* code or data (not system) */
	bool present;
	bool l;			/* 64-bit code */
	bool db;
	bool g;
};

/*
 * vCPU 0 at the kernel's 64-bit entry: long mode, paging on the identity
 * tables, CS __BOOT_CS and DS/ES/FS/GS/SS __BOOT_DS from the boot GDT,
 * interrupts off, rsi the zero page; every other register 0. No IDT: the
 * kernel loads its own before it enables interrupts.
 */
struct linux_cpu_state {
	uint64_t rip;
	uint64_t rsi;
	uint64_t rsp;
	uint64_t rflags;
	uint64_t cr0;
	uint64_t cr3;
	uint64_t cr4;
	uint64_t efer;
	uint64_t gdt_base;
	uint16_t gdt_limit;
	uint64_t idt_base;
	uint16_t idt_limit;
	struct linux_segment cs;
	struct linux_segment ds;	/* also es, fs, gs, ss */
	struct linux_segment tr;	/* a valid TR: VMX refuses to enter without one */
};

#define LINUX_BOOT_MAX_WRITES 8
/* A Linux guest's corpus window ends below the IOAPIC (KVM's, at its fixed address). */
#define LINUX_CORPUS_MAX_BYTES (LAYOUT_IOAPIC - LAYOUT_CORPUS_BASE)

/*
 * Everything a boot writes and loads. The writes never overlap; every one
 * lies in RAM below LAYOUT_LOW_RAM_MAX, inside the identity map. Other vCPUs
 * than 0 get no state: they wait for INIT and SIPI from vCPU 0, as on a PC.
 */
struct linux_boot_plan {
	struct linux_write writes[LINUX_BOOT_MAX_WRITES];
	unsigned int nr_writes;
	struct linux_cpu_state bsp;
	gpa_t kernel_gpa;	/* the protected-mode kernel */
	gpa_t kernel_end;	/* kernel_gpa + init_size, page aligned: the kernel's at first */
	gpa_t initrd_gpa;	/* 0 without one */
	uint64_t initrd_bytes;
	gpa_t cmdline_gpa;
	gpa_t zero_page_gpa;
	unsigned int nr_e820;	/* entries in the zero page's map */
	gpa_t acpi_rsdp;	/* ACPI's root pointer, in the zero page */
	/* What the writes hold (owned). */
	int kernel_fd;
	int initrd_fd;
	char *cmdline;
	uint8_t zero_page[4096];
	uint8_t gdt_page[4096];
	uint8_t pgtables[LAYOUT_LINUX_PGTABLE_END - LAYOUT_LINUX_PGTABLE];
	uint8_t tables[LINUX_TABLES_BYTES];	/* MP and ACPI, at LAYOUT_LINUX_TABLES */
};

/*
 * Plan the boot of img (open) with the initrd at initrd_path (NULL: none)
 * and cmdline on machine m: 0 and *out (linux_boot_plan_free), or -errno
 * with why: -E2BIG the kernel (pref_address + init_size) or the initrd does
 * not fit the RAM below the MMIO hole (the initrd goes as high as
 * initrd_addr_max allows, above the kernel), the command line is longer
 * than cmdline_size or LAYOUT_LINUX_CMDLINE_MAX, the corpus window is
 * larger than LINUX_CORPUS_MAX_BYTES; -EINVAL for a platform outside
 * linux_tables.h's limits; -ENOENT/-EACCES/-EINVAL for an initrd that is
 * not a readable non-empty file; -ENOMEM.
 */
int linux_boot_plan(const struct linux_image *img, const char *initrd_path, const char *cmdline,
		    const struct linux_machine *m, struct linux_boot_plan **out, char *why,
		    size_t whylen);
void linux_boot_plan_free(struct linux_boot_plan *plan);
/* Make the plan's writes into gm: 0, or the first failing write's -errno (gm API). */
int linux_boot_apply(struct gm *gm, const struct linux_boot_plan *plan);

/*
 * Everything checkable before the VM exists: the image, and the plan for
 * ram_bytes of RAM (no corpus, one vCPU, no devices) with this initrd and
 * command line. 0, or the
 * -errno of linux_image_open or linux_boot_plan with why.
 */
int linux_boot_check(const char *kernel, const char *initrd, const char *cmdline,
		     uint64_t ram_bytes, char *why, size_t whylen);

#endif
