/* SPDX-License-Identifier: MIT */
/*
 * The accelerator seam: what runs guest instructions, behind one small ops
 * table (QEMU's -accel idea). Two implementations:
 *   kvm     the host's /dev/kvm: guest RAM registered as memslots, vCPUs run
 *           in KVM_RUN, device registers exit as KVM_EXIT_MMIO;
 *   thread  the guest's code runs as ordinary threads of this process,
 *           directly on the guest-RAM mapping the memory manager manages;
 *           device registers are reached by a call into the VMM. For machines
 *           without /dev/kvm. It gives no isolation: the guest shares the
 *           VMM's address space. It is for the kvmem guest.
 *
 * Everything else (guest RAM and every memory mechanism, the MMIO bus and
 * devices, boot parameters, pause/stop, statistics) is shared and never
 * learns which accelerator runs. Private to src/core: vm.c and vcpu.c call
 * it; devices reach it only through vm.h (ioeventfd, irqfd).
 *
 * Threads: vm_* ops run on the thread that creates or destroys the VM;
 * vcpu_run and vcpu_thread_exit on the vCPU's own thread; set_kick from any
 * thread (it must be async-signal-safe and lock-free).
 */
#ifndef KVMEM_CORE_ACCEL_ACCEL_H
#define KVMEM_CORE_ACCEL_ACCEL_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/sandbox.h"
#include "mem/gm.h"

struct vm;
struct vcpu;
struct linux_cpu_state;

enum accel_kind {
	ACCEL_AUTO = 0,	/* kvm when /dev/kvm opens, else thread */
	ACCEL_KVM,
	ACCEL_THREAD,
};

/* "auto", "kvm", "thread"; -EINVAL for anything else. */
int accel_parse(const char *s, enum accel_kind *out);
const char *accel_name(enum accel_kind kind);

/*
 * Resolve `want` to an accelerator this machine has. AUTO takes kvm when
 * /dev/kvm opens, else thread, and says why once on stderr (log notice).
 * Errors: -ENODEV with a reason in `why` (kvm asked for and /dev/kvm not
 * usable; thread unusable here).
 */
int accel_resolve(enum accel_kind want, enum accel_kind *out, char *why, size_t whylen);

/* A guest exception (or forbidden system call) that ends the VM. */
struct accel_exception {
	unsigned int vector;	/* x86 exception vector */
	uint64_t error_code;
	uint64_t rip;		/* guest-physical (kvm: guest-virtual, identity mapped) */
	uint64_t address;	/* faulting address (#PF), guest-physical */
	uint64_t rsp;
	unsigned int cpl;
	bool rip_outside;	/* rip is a host address outside the guest's span */
	bool address_outside;	/* address is a host address outside the guest's span */
	bool syscall;		/* not an exception: the guest made a host system call (thread) */
	long syscall_nr;	/* which one */
};

enum accel_exit_reason {
	ACCEL_EXIT_NONE,	/* handled inside the accelerator: run again */
	ACCEL_EXIT_MMIO,	/* a device register access: dispatch on the bus, run again */
	ACCEL_EXIT_PIO,		/* port I/O (kvm, CPL0 code): dispatch on the port bus, run again */
	ACCEL_EXIT_EXCEPTION,	/* the guest faulted: report it and stop the VM */
	ACCEL_EXIT_CRASH,	/* the guest cannot go on; the accelerator logged why */
};

struct accel_exit {
	enum accel_exit_reason reason;
	union {
		struct {
			gpa_t addr;
			void *data;	/* len bytes; a read's result goes here */
			unsigned int len;
			bool is_write;
		} mmio;
		struct {
			uint16_t port;
			void *data;		/* count items of size bytes; reads fill it */
			unsigned int size;	/* 1, 2 or 4 */
			unsigned int count;	/* more than 1 for a string instruction (rep ins/outs) */
			bool is_write;
		} pio;
		struct accel_exception exc;
	};
};

/* Where and how a vCPU starts (see guest/abi.h, "Entry"). */
struct accel_entry {
	uint64_t rip;
	uint64_t rdi, rsi, rdx, rcx, r8;
	uint64_t kstack;	/* top of the vCPU's CPL0 stack (kvm) */
};

struct accel_ops {
	const char *name;
	bool exec_ram;		/* guest RAM must be executable by host threads */
	enum sandbox_kind vcpu_sandbox;	/* the seccomp filter of its vCPU threads */
	/* Create the machine for vm (after its RAM, before its vCPUs). */
	int (*vm_init)(struct vm *vm);
	void (*vm_destroy)(struct vm *vm);
	/* Tables the machine needs in guest RAM before any vCPU runs (kvm: page tables, GDT, IDT). */
	int (*vm_boot)(struct vm *vm);
	/* Virtual minus guest-physical addresses for the guest (guest/abi.h). */
	uint64_t (*phys_offset)(const struct vm *vm);
	/* The guest's MMIO entry (guest/abi.h mmio_call), or 0: plain loads and stores exit. */
	uint64_t (*mmio_call)(const struct vm *vm);
	/* TSC frequency the guest may use, in kHz; 0: none (the guest reads the VMM clock). */
	uint64_t (*tsc_khz)(struct vm *vm);

	int (*vcpu_init)(struct vcpu *vcpu);
	void (*vcpu_destroy)(struct vcpu *vcpu);
	int (*vcpu_boot)(struct vcpu *vcpu, const struct accel_entry *e);
	/*
	 * Run guest code until something needs the VMM. 0 with *exit filled,
	 * -EINTR when a kick (set_kick) was pending or arrived, else -errno
	 * (the VM stops with a VMM error).
	 */
	int (*vcpu_run)(struct vcpu *vcpu, struct accel_exit *exit);
	/*
	 * Arm (on) or clear the vCPU's kick: armed, vcpu_run returns -EINTR
	 * before entering the guest, and a kick signal that lands in guest code
	 * leaves it. KVM's immediate_exit, and its equivalent.
	 */
	void (*set_kick)(struct vcpu *vcpu, bool on);
	/* On the vCPU thread, after its last vcpu_run. May be NULL. */
	void (*vcpu_thread_exit)(struct vcpu *vcpu);
	/* The exception the guest's CPL0 stubs reported (kvm). May be NULL. */
	int (*vcpu_exception)(struct vcpu *vcpu, struct accel_exception *e);

	/* Attach (assign) or detach an eventfd written on a 4-byte register write; -ENOTSUP. */
	int (*ioeventfd)(struct vm *vm, gpa_t addr, unsigned int len, int fd, bool assign);
	/* Attach or detach an eventfd that raises interrupt line gsi; -ENOTSUP. */
	int (*irqfd)(struct vm *vm, uint32_t gsi, int fd, bool assign);
	/*
	 * Drive interrupt line gsi to `level` (a device that models its line,
	 * as a UART does): 0, or -ENOTSUP without interrupt controllers. From
	 * any thread. May be NULL.
	 */
	int (*irq_line)(struct vm *vm, uint32_t gsi, bool level);
	/*
	 * The guest's writes to its RAM, for migration (NULL: this accelerator
	 * cannot log them). dirty_log starts logging from a clean slate (on) or
	 * stops it; dirty_collect ORs the pages written since the start or the
	 * last collect into bitmap (one bit per page, page-index order: see
	 * mem_dirty_vmm_collect) and starts over. On the thread that measures.
	 */
	int (*dirty_log)(struct vm *vm, bool on);
	int (*dirty_collect)(struct vm *vm, uint64_t *bitmap);
	/*
	 * Migration and snapshots. vcpu_save: the state of a vCPU that is
	 * parked (or never ran) as a versioned blob of the accelerator's own,
	 * at most ACCEL_CPU_STATE_MAX bytes; its length, or -errno. vcpu_load:
	 * make a blob from another host the vCPU's state before its first run,
	 * in place of its boot entry; the blob is untrusted (-EINVAL for one
	 * that is malformed or would take the vCPU outside its VM). guest_tsc:
	 * the TSC guest code reads now (its VM's vCPUs parked).
	 */
	int (*vcpu_save)(struct vcpu *vcpu, void *buf, size_t cap);
	int (*vcpu_load)(struct vcpu *vcpu, const void *buf, size_t len);
	uint64_t (*guest_tsc)(struct vm *vm);
	/*
	 * The machine's own state besides its vCPUs (kvm: the in-kernel
	 * irqchip's PICs and IOAPIC, the PIT, kvmclock's clock), as the vCPU
	 * blobs: its length (0: nothing to move), or -errno. NULL: nothing.
	 */
	int (*machine_save)(struct vm *vm, void *buf, size_t cap);
	int (*machine_load)(struct vm *vm, const void *buf, size_t len);
	/*
	 * Finish what the last exit left half done (kvm: an MMIO or port
	 * access completes on the next KVM_RUN), so that the vCPU's state is
	 * whole before it parks for a pause whose state may be saved. On the
	 * vCPU's thread. May be NULL.
	 */
	void (*vcpu_settle)(struct vcpu *vcpu);
	/*
	 * Start an unmodified Linux kernel (core/linux_boot.h) whose boot
	 * writes are in guest RAM already: vCPU 0 enters with `bsp`, the others
	 * wait for INIT and SIPI; the platform the kernel expects (port I/O,
	 * interrupt controllers, timer, its tables) is the accelerator's to
	 * provide. On the creating thread, before any vCPU runs. NULL: this
	 * accelerator cannot (accel_linux_check says why).
	 */
	int (*boot_linux)(struct vm *vm, const struct linux_cpu_state *bsp);
};

#define ACCEL_CPU_STATE_MAX (64 * 1024)

extern const struct accel_ops accel_kvm_ops;
extern const struct accel_ops accel_thread_ops;

const struct accel_ops *accel_ops(enum accel_kind kind);

/* The signal that kicks a vCPU thread out of guest code (vcpu_kick). */
#define ACCEL_KICK_SIGNAL SIGUSR1

/*
 * The handler of ACCEL_KICK_SIGNAL on every vCPU thread, whatever runs it:
 * under kvm its only job is to interrupt KVM_RUN; under thread it may land
 * in guest code, which then has to leave (thread.c). SA_SIGINFO | SA_ONSTACK.
 */
void accel_kick_handler(int sig, siginfo_t *si, void *ucontext);

/*
 * Can the thread accelerator run here? 0, or -ENODEV with the reason in `why`
 * (no Syscall User Dispatch in the kernel, or host code where guest code
 * would run).
 */
int accel_thread_check(char *why, size_t whylen);

/* The host's /dev/kvm, opened once per process: the fd, or negative errno. */
int accel_kvm_system_fd(void);

/*
 * Can a VM on accelerator `kind` (resolved) boot an unmodified Linux
 * kernel? 0, or -errno with the reason in why: -ENOTSUP where it never
 * can (thread: guest code runs at user level on host threads; kvm-pvm:
 * guest CPL0 code is emulated), -ENOSYS where it could but kvmem does not
 * do it yet (no boot_linux op). Asks /dev/kvm (once) under kvm.
 */
int accel_linux_check(enum accel_kind kind, char *why, size_t whylen);

/*
 * Is this KVM kvm-pvm rather than VMX or SVM? accel_kvm_is_pvm: 1, 0, or
 * -errno of /dev/kvm, with what gave it away in why. It is kvm-pvm when the
 * CPU has neither VMX nor SVM (then no /dev/kvm is hardware-virtualized),
 * or when KVM_GET_SUPPORTED_CPUID carries PVM's signature (accel_cpuid_is_pvm
 * on those leaves: leaf 0x40000002's ebx "PVM" after KVM's own signature, or
 * "PVMPVMPVM" at leaf 0x40000200).
 */
struct accel_cpuid_leaf {
	uint32_t function;
	uint32_t eax, ebx, ecx, edx;
};
bool accel_cpuid_is_pvm(const struct accel_cpuid_leaf *leaves, size_t n);
int accel_kvm_is_pvm(char *why, size_t whylen);

/*
 * The ioctl requests kvm.c makes, for the seccomp filters (core/sandbox.c):
 * on a vCPU's own thread, and all of them (anywhere: VM creation, state
 * saved and loaded by migration, the dirty log). Kept next to the calls.
 */
extern const unsigned long accel_kvm_vcpu_ioctls[];
extern const size_t accel_kvm_nr_vcpu_ioctls;
extern const unsigned long accel_kvm_ioctls[];
extern const size_t accel_kvm_nr_ioctls;

#endif
