/* SPDX-License-Identifier: MIT */
/*
 * Everything the VMM writes into a fresh guest before its first instruction:
 * the static ELF64 image, 64-bit page tables (guest RAM and the MMIO hole
 * identity mapped, user accessible, 2 MiB pages), a GDT with kernel and user
 * segments and one TSS per vCPU, an IDT whose CPL0 stubs report any
 * exception over MMIO, and the boot-parameters page (guest/abi.h). Also
 * where each vCPU enters. The tables serve the kvm accelerator (the thread
 * accelerator's vCPUs start at user level and take no exceptions through an
 * IDT); the image, its relocations and the boot parameters serve both. Runs
 * before any vCPU starts; writes through the gm API only.
 */
#ifndef KVMEM_CORE_BOOT_H
#define KVMEM_CORE_BOOT_H

#include <stdbool.h>
#include <stdint.h>

#include "core/accel/accel.h"
#include "guest/abi.h"
#include "mem/gm.h"

#define BOOT_MAX_LOAD 8		/* PT_LOAD segments an image may have */
#define BOOT_TSS_SIZE 104

struct boot_image {
	gpa_t entry;	 /* ELF entry point (CPL0) */
	gpa_t image_end; /* first page after every PT_LOAD segment */
};

/*
 * Load a static ELF64 x86-64 image whose PT_LOAD segments lie in low RAM at
 * or above ABI_IMAGE_BASE, at guest-physical == link address: a static
 * executable (only with phys_offset 0), or a static-pie (ET_DYN, or ET_EXEC
 * whose DT_FLAGS_1 says DF_1_PIE) whose R_X86_64_RELATIVE relocations are
 * applied with phys_offset (the guest's virtual minus physical addresses). PT_INTERP,
 * PT_TLS, DT_NEEDED, DT_TEXTREL, any other relocation type and any
 * relocation outside the image's writable segments are refused.
 * -ENOENT/-EACCES from open, -ENOEXEC for a file that is not such an ELF
 * (with a reason logged), -EFAULT for segments that do not fit guest RAM.
 */
int boot_load_elf(struct gm *gm, const char *path, uint64_t phys_offset, struct boot_image *out);

/* Write page tables, GDT, TSSs, IDT and exception stubs for `ncpus` vCPUs. */
int boot_build_tables(struct gm *gm, unsigned int ncpus);

/* What the boot-parameters page tells the guest besides its RAM. */
struct boot_info {
	unsigned int ncpus;
	uint64_t tsc_khz;		/* 0: the guest reads the VMM clock */
	const char *cmdline;
	const struct abi_device *devs;	/* the MMIO devices the guest may use */
	unsigned int nr_devs;
	uint64_t phys_offset;		/* guest virtual minus physical */
	uint64_t mmio_call;		/* the VMM's MMIO entry, or 0 */
};

/* Fill the boot-parameters page. -E2BIG for a command line or device table too large. */
int boot_write_params(struct gm *gm, const struct boot_image *img, const struct boot_info *bi);

/*
 * Where vCPU `cpu` enters the image (guest/abi.h, "Entry"): at CPL0 with a
 * CPL0 stack (kvm), or already at user level (`user`, thread).
 */
void boot_vcpu_entry(struct accel_entry *e, unsigned int cpu, const struct boot_image *img,
		     uint64_t phys_offset, bool user);

/* Guest-physical address of vCPU `cpu`'s TSS. */
uint64_t boot_tss_gpa(unsigned int cpu);

/*
 * The exception frame the CPL0 stubs leave on the stack, as the VMM reads it
 * back when the guest writes ABI_SYS_EXCEPTION (rsp from the vCPU's registers).
 */
struct boot_exc_frame {
	uint64_t vector;
	uint64_t error_code;
	uint64_t rip;
	uint64_t cs;
	uint64_t rflags;
	uint64_t rsp;
	uint64_t ss;
};
const char *boot_exception_name(unsigned int vector);

/* Top of the page-table area actually used for `ram_bytes` (tests). */
uint64_t boot_mapped_top(uint64_t ram_bytes);

#endif
