/* SPDX-License-Identifier: MIT */
/*
 * One virtual machine: its guest RAM, vCPU threads, MMIO bus and the kvmem
 * devices (console, system control), booted with the kvmem guest or another
 * static ELF, its instructions run by an accelerator (core/accel/accel.h). Lifecycle: vm_create -> vm_start -> (vm_pause /
 * vm_resume)* -> vm_request_stop -> vm_wait -> vm_destroy. vm_request_stop,
 * vm_pause, vm_resume and the getters are safe from any thread.
 */
#ifndef KVMEM_CORE_VM_H
#define KVMEM_CORE_VM_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/accel/accel.h"
#include "core/log.h"
#include "mem/gm.h"

struct vm;

/* Exit statuses besides the guest's own power-off code. */
#define VM_STATUS_VMM_ERROR 1	/* a KVM call (or the accelerator) failed */
#define VM_STATUS_STOPPED 0	/* stopped by the host (signal, control socket) */
#define VM_STATUS_GUEST_CRASH 3	/* exception, triple fault or emulation failure */

struct vm_params {
	const char *name;	 /* shown in logs, console prefix, stats */
	enum accel_kind accel;	 /* resolved: ACCEL_KVM or ACCEL_THREAD */
	uint64_t mem_bytes;	 /* guest RAM, page multiple */
	unsigned int ncpus;	 /* 1..ABI_MAX_CPUS */
	const char *guest_path;	 /* static ELF64 to boot, or NULL with kernel_path */
	const char *kernel_path; /* a Linux bzImage to boot instead (core/linux_boot.h), or NULL */
	/*
	 * The machine a Linux kernel expects (the accelerator's platform, the
	 * UART and PC ports) rather than the kvmem guest's. Implied by
	 * kernel_path; without one, a Linux guest that continues from
	 * elsewhere, which must be given its state (vm_load_vcpu) before
	 * vm_start: there is nothing to boot.
	 */
	bool linux_machine;
	const char *initrd_path; /* its initrd, or NULL */
	const char *cmdline;	 /* guest command line */
	int console_fd;		 /* console lines go here (e.g. stdout) */
	bool console_prefix;	 /* start every line with "[name] " */
	const char *console_log; /* also append the console to this file, or NULL */
	/* Host address of guest-physical 0 (vm_ram_base of the VM it continues), or 0: any. */
	uint64_t ram_base;
	/* A file the guest reads as its content corpus (mem/corpus.h), or NULL. */
	const char *corpus;
};

enum vm_state {
	VM_CREATED,
	VM_RUNNING,
	VM_PAUSED,
	VM_STOPPED,
};

/*
 * Create the VM and load its guest; nothing runs yet. Errors: -EINVAL for bad
 * parameters, -E2BIG for more RAM than the guest layout maps, -ENOMEM when the
 * host cannot reserve it, -ENOENT/-ENOEXEC for the guest image, -ENOTSUP for
 * a Linux kernel on an accelerator that cannot boot one (accel_linux_check),
 * or the errno of a failed accelerator call. Logs the reason.
 */
MUST_CHECK int vm_create(const struct vm_params *p, struct vm **out);
/*
 * Put a device on the VM's MMIO bus and in the guest's device table; only
 * between vm_create and vm_start. The window (LAYOUT_MMIO_SLOT_SIZE bytes)
 * and, for virtio, a GSI are chosen here and returned. -ENOSPC when full.
 */
struct bus_ops;
MUST_CHECK int vm_add_device(struct vm *vm, uint32_t type, const struct bus_ops *ops,
			     void *opaque, gpa_t *gpa, uint32_t *gsi);
/* Write the boot state (image, tables, boot params, registers), start one thread per vCPU. */
MUST_CHECK int vm_start(struct vm *vm);
/* Ask the VM to stop with `status` (first request wins); returns at once. */
void vm_request_stop(struct vm *vm, int status);
/*
 * Park every vCPU outside guest code; returns when all are parked (0), or
 * -EINVAL unless running. A vCPU parks only between runs of guest code, so
 * one held in the VMM (a device's host call that blocks) could keep a pause
 * waiting forever: after timeout_ms the pause is withdrawn and -ETIMEDOUT
 * returned. A withdrawn pause leaves the VM as it was before the call:
 * running, every vCPU that had parked released, none left parked later
 * (unless another caller's pause of the same VM is still waiting: it goes
 * on to its own deadline). The VM is never left half paused: its state is
 * "paused" only when every vCPU has parked.
 */
#define VM_PAUSE_TIMEOUT_MS 2000
MUST_CHECK int vm_pause_timeout(struct vm *vm, unsigned int timeout_ms);
/* vm_pause_timeout with VM_PAUSE_TIMEOUT_MS. */
MUST_CHECK int vm_pause(struct vm *vm);
MUST_CHECK int vm_resume(struct vm *vm);
/* Join the vCPU threads; returns the exit status. */
int vm_wait(struct vm *vm);
void vm_destroy(struct vm *vm);

/* Called once, from the thread that stops the VM, when it has stopped. */
void vm_set_stop_notify(struct vm *vm, void (*fn)(void *arg, struct vm *vm), void *arg);

struct gm *vm_gm(struct vm *vm);
/*
 * Is `gpa` inside the VM's content corpus? A store there is the guest's
 * error (the corpus is read-only), which the crash report names.
 */
bool vm_in_corpus(struct vm *vm, gpa_t gpa);
/* The console's output figures (core/dev/console.c). */
struct console_stats {
	uint64_t queued_lines;	/* handed to the writer */
	uint64_t written_lines;	/* written out by it */
	uint64_t dropped_lines;	/* did not fit while the output was slow or stalled */
	uint64_t dropped_bytes;
	uint64_t log_lost_lines;	/* written out, but the log file did not take them */
};
void vm_console_stats(struct vm *vm, struct console_stats *out);

/*
 * Host address of the VM's guest-physical 0 (core/accel and mem/memmap.h):
 * fixed for its life; a VM under thread can only be resumed at the same base.
 */
uint64_t vm_ram_base(const struct vm *vm);
/* The accelerator the VM runs on ("kvm", "thread"). */
const char *vm_accel_name(const struct vm *vm);
/*
 * Have a guest write of `len` bytes at addr only signal eventfd `fd` (no exit
 * to the VMM), or stop that (assign false); raise interrupt line gsi when
 * `fd` is written. -ENOTSUP where the accelerator has no such path (thread;
 * kvm without an in-kernel irqchip): the device then sees the exit, and
 * polls for interrupts.
 */
int vm_ioeventfd(struct vm *vm, gpa_t addr, unsigned int len, int fd, bool assign);
int vm_irqfd(struct vm *vm, uint32_t gsi, int fd, bool assign);
/*
 * Drive interrupt line gsi high or low (a device that models its line, as
 * a UART does); any thread. -ENOTSUP where the accelerator has no
 * interrupt controllers (thread; kvm without an in-kernel irqchip).
 */
int vm_irq_line(struct vm *vm, uint32_t gsi, bool level);
/*
 * Dirty tracking, for migration and dirty-rate measurements: the guest's
 * writes (the accelerator's log) and the VMM's (mem/gm.h), together.
 *   vm_dirty_start: from a clean slate. -EBUSY when tracking already,
 *   -ENOTSUP where the accelerator cannot log guest writes (thread, for now).
 *   vm_dirty_collect: OR the pages written since the start or the last
 *   collect into bitmap (one bit per page of RAM, page-index order, see
 *   mem_dirty_vmm_collect) and start over; *vmm_pages: how many of those
 *   the VMM wrote (they may also be the guest's). -EINVAL unless tracking.
 *   vm_dirty_stop: ends it (nothing when not tracking).
 * For one user at a time (the caller serializes).
 */
MUST_CHECK int vm_dirty_start(struct vm *vm);
MUST_CHECK int vm_dirty_collect(struct vm *vm, uint64_t *bitmap, uint64_t *vmm_pages);
void vm_dirty_stop(struct vm *vm);
/*
 * Migration and snapshots: the machine state besides RAM and devices.
 *   vm_save_vcpu: vCPU i's state (the accelerator's versioned blob, at most
 *   ACCEL_CPU_STATE_MAX bytes) into buf; its length, or -errno. The VM must
 *   be paused.
 *   vm_load_vcpu: give vCPU i of a VM that has not started a state saved
 *   by vm_save_vcpu elsewhere (untrusted: -EINVAL when malformed). Once
 *   every vCPU has one, vm_start resumes from them instead of booting. A
 *   paused VM takes one too (a rollback): it resumes from it.
 *   vm_save_clock / vm_load_clock: the guest's time (its TSC and the system
 *   control device's clock) as it reads it now, and the same time given to
 *   a VM that continues it: its clocks go on from there instead of jumping
 *   to this host's. Save paused; load before vm_start, or paused. A Linux
 *   guest reads its TSC as KVM keeps it (it travels with the vCPU's MSRs)
 *   and kvm-clock (with the machine): only the VMM's clock is set for it.
 * -ENOTSUP where the accelerator cannot do it; vm_load_clock: -ERANGE when
 * this host's TSC runs at another rate (the guest's clock would too).
 */
struct vm_clock {
	uint64_t guest_tsc;	/* what guest code reads as the TSC */
	uint64_t tsc_khz;	/* at this rate (0: the guest does not use it) */
	uint64_t vmm_ns;	/* what the system control device tells as time */
};
MUST_CHECK int vm_save_vcpu(struct vm *vm, unsigned int i, void *buf, size_t cap);
MUST_CHECK int vm_load_vcpu(struct vm *vm, unsigned int i, const void *buf, size_t len);
/*
 * The machine's state besides its vCPUs (accel.h machine_save): its length
 * in buf (0: nothing to move), or -errno; paused. Load before vm_start or
 * paused (untrusted: -EINVAL when malformed).
 */
MUST_CHECK int vm_save_machine(struct vm *vm, void *buf, size_t cap);
MUST_CHECK int vm_load_machine(struct vm *vm, const void *buf, size_t len);
MUST_CHECK int vm_save_clock(struct vm *vm, struct vm_clock *out);
MUST_CHECK int vm_load_clock(struct vm *vm, const struct vm_clock *c);
/*
 * A Linux machine's own devices (the UART, the PC ports) for migration and
 * snapshots, beside the host's: vm_save_platform adds theirs to devices
 * ("uart", "pc"; nothing for a kvmem guest's machine): 0 or -ENOMEM.
 * Paused. vm_load_platform takes them from devices, which another host
 * wrote (untrusted): a Linux machine needs both, any other machine none;
 * 0, or -EINVAL with why. Before vm_start, or paused.
 */
MUST_CHECK int vm_save_platform(struct vm *vm, json_t *devices);
MUST_CHECK int vm_load_platform(struct vm *vm, json_t *devices, char *why, size_t whylen);
/*
 * The VM starts again from a saved state (a restore, a rollback): one more
 * generation in its boot parameters (abi_boot_params.generation), which its
 * memory holds already. The guest takes what it must not repeat afresh.
 * 0 (*out the new generation, may be NULL), or mem_write's -errno. A Linux
 * guest has no boot parameters of kvmem's (nor yet a device to read a
 * generation from): nothing is written in its memory, and *out is 0.
 */
int vm_new_generation(struct vm *vm, uint64_t *out);
/* A clone's identity in its boot parameters (abi_boot_params.identity; not a Linux guest's). */
int vm_set_identity(struct vm *vm, uint64_t identity);
/* The VM is a Linux machine (vm_params.linux_machine, or booted from a kernel). */
bool vm_is_linux(const struct vm *vm);
/* The VM's vCPU count. */
unsigned int vm_ncpus(const struct vm *vm);
const char *vm_name(const struct vm *vm);
enum vm_state vm_get_state(struct vm *vm);
const char *vm_state_name(enum vm_state s);
/* Exit status once stopped (meaningful after vm_wait). */
int vm_exit_status(struct vm *vm);

#endif
