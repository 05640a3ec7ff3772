/* SPDX-License-Identifier: MIT */
/*
 * The contract between the VMM and the kvmem guest: the boot-parameters page,
 * the guest-physical layout both sides agree on, and the register maps of the
 * kvmem-specific MMIO devices (console, system control). Included by the
 * freestanding guest and by the VMM, so it may use only <stdint.h> types.
 *
 * Guest-physical and guest-virtual addresses differ by a constant, the phys
 * offset: 0 under the kvm accelerator (guest RAM identity mapped by the VMM's
 * page tables), the host address of guest-physical 0 under the thread
 * accelerator (the guest runs as host threads on the VMM's mapping of its
 * RAM). Everything the guest hands a device (buffer addresses, queue rings,
 * page frame numbers) is guest-physical; everything it dereferences is
 * virtual. The image is position-independent and linked at ABI_IMAGE_BASE:
 * the VMM loads it at guest-physical ABI_IMAGE_BASE and applies its
 * R_X86_64_RELATIVE relocations with the phys offset.
 *
 * Entry: the VMM starts every vCPU at the ELF entry point (plus the phys
 * offset) in 64-bit mode with
 *   rdi = vCPU index,
 *   rsi = virtual address of struct abi_boot_params,
 *   rdx = virtual address of the top of this vCPU's CPL3 stack,
 *   rcx = the phys offset (virtual minus guest-physical),
 *   r8  = ABI_ENTRY_* flags.
 * Without ABI_ENTRY_USER the vCPU is at CPL0 (kvm) with guest RAM identity
 * mapped and user-accessible, and the guest drops to CPL3 itself; with it
 * the vCPU already runs at user level (thread) and only switches stacks.
 * The offset comes in a register because it cannot be read from a structure
 * that is found through it.
 *
 * Under thread the guest runs on a host thread: it must not touch %fs or
 * %gs (the host's thread-local storage, which the VMM's entry and exit paths
 * use) and must not make system calls (each is a guest crash).
 */
#ifndef KVMEM_GUEST_ABI_H
#define KVMEM_GUEST_ABI_H

#include <stdint.h>

#define ABI_BOOT_MAGIC 0x544f4f424d454d4bULL /* "KMEMBOOT" */
#define ABI_VERSION 3

/* Entry flags (r8). */
#define ABI_ENTRY_USER 0x1	/* already at user level: no CPL0 drop */

/*
 * MMIO under the thread accelerator. When abi_boot_params.mmio_call is not 0
 * a load or store to a device register cannot exit to the VMM (the guest is
 * a host thread), so the guest calls the VMM instead, with the SysV x86-64
 * calling convention:
 *   uint64_t mmio_call(uint64_t gpa, uint64_t value, uint64_t op);
 * op = access size in bytes (1, 2, 4 or 8) | ABI_MMIO_WRITE for a store.
 * Returns the value read (zero-extended), 0 for a store. Caller-saved
 * registers are clobbered as for any call; any stack alignment is fine (the
 * VMM switches to a stack of its own). With mmio_call 0 (kvm) the guest uses
 * plain loads and stores at the register's virtual address.
 */
#define ABI_MMIO_WRITE 0x100

#define ABI_PAGE_SIZE 4096ULL

/* GDT selectors set up by the VMM (user selectors carry RPL 3). */
#define ABI_SEL_KERNEL_CS 0x08
#define ABI_SEL_KERNEL_DS 0x10
#define ABI_SEL_USER_DS 0x1b
#define ABI_SEL_USER_CS 0x23
#define ABI_SEL_TSS0 0x28 /* vCPU i uses ABI_SEL_TSS0 + 16 * i */

/* Where the guest image is linked; everything below it belongs to the VMM. */
#define ABI_IMAGE_BASE 0x200000ULL

#define ABI_MAX_CMDLINE 2048
#define ABI_MAX_RANGES 8
#define ABI_MAX_DEVICES 16
#define ABI_MAX_CPUS 64

/* A usable range of guest RAM: page aligned, free for the guest's allocator. */
struct abi_mem_range {
	uint64_t gpa;
	uint64_t len;
};

enum abi_dev_type {
	ABI_DEV_CONSOLE = 1,
	ABI_DEV_SYSCTL = 2,
	ABI_DEV_VIRTIO_MMIO = 3,
};

struct abi_device {
	uint32_t type;	 /* enum abi_dev_type */
	uint32_t irq;	 /* GSI the VMM raises (virtio); 0 if none */
	uint64_t gpa;	 /* base of the register window */
	uint64_t len;	 /* size of the register window */
};

struct abi_boot_params {
	uint64_t magic;		/* ABI_BOOT_MAGIC */
	uint32_t version;	/* ABI_VERSION */
	uint32_t ncpus;		/* vCPUs started, each entering at the ELF entry */
	uint64_t tsc_khz;	/* from KVM_GET_TSC_KHZ; rdtsc works at CPL3 */
	uint64_t ram_bytes;	/* guest RAM configured, in bytes */
	uint64_t image_end;	/* first gpa after the loaded image (page aligned) */
	uint64_t phys_offset;	/* virtual minus guest-physical (also in rcx at entry) */
	uint64_t mmio_call;	/* virtual address of the VMM's MMIO entry, or 0 */
	uint64_t phys_top;	/* nothing (RAM, device, mapping) at or above this gpa */
	/*
	 * Added to every TSC reading, read afresh each time: the VMM changes it
	 * when the guest moves to another host (live migration) so that its
	 * time goes on from where it stopped instead of jumping to the new
	 * host's TSC. The guest never writes it.
	 */
	int64_t tsc_offset;
	uint32_t nr_ranges;
	uint32_t nr_devices;
	struct abi_mem_range ranges[ABI_MAX_RANGES];
	struct abi_device devices[ABI_MAX_DEVICES];
	char cmdline[ABI_MAX_CMDLINE]; /* NUL terminated */
	/*
	 * The VM's generation (the idea of VM Generation ID): 0 at boot, one
	 * more each time the VMM starts it again from a saved state (a restore,
	 * a rollback): the guest is then a copy of a past, and whatever it must
	 * not repeat (its random numbers) it takes afresh. The guest never
	 * writes it; it looks at it at every sleep.
	 */
	uint64_t generation;
	/*
	 * Who this copy is: 0 for a VM booted or restored, a number of its own
	 * for each clone of one snapshot (set with its first generation). A
	 * workload whose content must differ between copies (its id) takes it.
	 */
	uint64_t identity;
	/*
	 * The VM's content corpus: a file the VMM maps read-only at corpus_gpa
	 * (in the MMIO hole, outside RAM), corpus_bytes long; the rest of its
	 * last page reads as zeros. 0 bytes: none. A store into it ends the VM.
	 */
	uint64_t corpus_gpa;
	uint64_t corpus_bytes;
};

/*
 * Console device: a guest writes a byte to CON_PUTC, or hands a whole buffer
 * with CON_BUF_GPA then CON_BUF_LEN (the length write emits it: one exit per
 * line instead of one per byte).
 */
#define ABI_CON_PUTC 0x00	/* 8..32-bit write: low byte is output */
#define ABI_CON_BUF_GPA 0x08	/* 64-bit write */
#define ABI_CON_BUF_LEN 0x10	/* 32-bit write: emit [BUF_GPA, BUF_GPA + len) */
#define ABI_CON_MAX_BUF 4096

/* System-control device. */
#define ABI_SYS_POWEROFF 0x00	/* 32-bit write: power off, VMM exits with this status */
#define ABI_SYS_SLEEP_NS 0x08	/* 64-bit write: this vCPU sleeps up to N ns (paravirtual hlt) */
#define ABI_SYS_EXCEPTION 0x10	/* written by the VMM's CPL0 exception stubs only */
#define ABI_SYS_TIME_NS 0x18	/* 64-bit read: host CLOCK_MONOTONIC in ns */
#define ABI_SYS_REPORT 0x20	/* 64-bit write: a guest-defined value the VMM records (tests) */

#endif
