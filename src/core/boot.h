/* SPDX-License-Identifier: MIT */
/*
 * Everything the VMM writes into a fresh guest before its first instruction:
 * the static ELF64 image, 64-bit page tables (guest RAM and the MMIO hole
 * identity mapped, user accessible, 2 MiB pages), a GDT with kernel and user
 * segments and one TSS per vCPU, an IDT whose CPL0 stubs report any
 * exception over MMIO, and the boot-parameters page (guest/abi.h). Also the
 * initial register state of each vCPU. Runs on the main thread before any
 * vCPU starts; writes through the gm API only.
 */
#ifndef KVMEM_CORE_BOOT_H
#define KVMEM_CORE_BOOT_H

#include <linux/kvm.h>
#include <stdint.h>

#include "guest/abi.h"
#include "mem/gm.h"

struct boot_image {
	gpa_t entry;	 /* ELF entry point (CPL0) */
	gpa_t image_end; /* first page after every PT_LOAD segment */
};

/*
 * Load a static ELF64 x86-64 executable whose PT_LOAD segments lie in low RAM
 * at or above ABI_IMAGE_BASE. -ENOENT/-EACCES from open, -ENOEXEC for a file
 * that is not such an ELF (with a reason logged), -EFAULT for segments that do
 * not fit guest RAM.
 */
int boot_load_elf(struct gm *gm, const char *path, struct boot_image *out);

/* Write page tables, GDT, TSSs, IDT and exception stubs for `ncpus` vCPUs. */
int boot_build_tables(struct gm *gm, unsigned int ncpus);

/* Fill the boot-parameters page; `devs` are the MMIO devices the guest may use. */
int boot_write_params(struct gm *gm, const struct boot_image *img, unsigned int ncpus,
		      uint64_t tsc_khz, const char *cmdline,
		      const struct abi_device *devs, unsigned int nr_devs);

/* Initial special and general registers of vCPU `cpu` (64-bit mode, CPL0). */
void boot_vcpu_sregs(struct kvm_sregs *s, unsigned int cpu);
void boot_vcpu_regs(struct kvm_regs *r, unsigned int cpu, gpa_t entry);

/*
 * The exception frame the CPL0 stubs leave on the stack, as the VMM reads it
 * back when the guest writes ABI_SYS_EXCEPTION (rsp from KVM_GET_REGS).
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
