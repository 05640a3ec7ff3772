/* SPDX-License-Identifier: MIT */
/*
 * Private to src/core: the VM and vCPU objects shared by vm.c, vcpu.c, the
 * accelerators and the kvmem devices.
 */
#ifndef KVMEM_CORE_VM_INTERNAL_H
#define KVMEM_CORE_VM_INTERNAL_H

#include <pthread.h>

#include "core/accel/accel.h"
#include "core/bus.h"
#include "core/log.h"
#include "core/vm.h"
#include "guest/abi.h"

struct console;
struct uart;
struct pc;

struct vm {
	char *name;			/* immutable */
	enum accel_kind accel_kind;	/* resolved (never AUTO), immutable */
	const struct accel_ops *accel;	/* immutable */
	void *accel_vm;			/* the accelerator's own state */
	struct gm *gm;			/* guest RAM, layout immutable */
	unsigned int ncpus;		/* immutable */
	uint64_t mem_bytes;		/* immutable */
	struct vcpu *vcpus[ABI_MAX_CPUS]; /* immutable after create */
	struct bus bus;			/* filled before start */
	struct bus pio_bus;		/* I/O ports (a Linux guest's platform); likewise */
	struct abi_device devs[ABI_MAX_DEVICES]; /* the guest's device table */
	unsigned int nr_devs;
	unsigned int nr_virtio;
	char *guest_path;		/* until boot; NULL for a Linux kernel */
	bool linux_machine;		/* a PC for Linux (vm_params), immutable */
	char *kernel_path;		/* a Linux kernel's image to boot, or NULL */
	char *initrd_path;		/* its initrd, or NULL */
	char *cmdline;			/* until boot */
	struct console *console;
	struct uart *uart;		/* a Linux guest's serial port, or NULL */
	struct pc *pc;			/* a Linux guest's other PC ports, or NULL */
	struct log_limit log_limit;	/* the VM's warnings: its own rate limits */

	pthread_mutex_t lock;		/* guards everything below */
	pthread_cond_t cond;		/* state changes, parked counts */
	enum vm_state state;
	bool stop_requested;		/* also read lock-free by vCPUs (atomic) */
	bool pause_requested;		/* also read lock-free by vCPUs (atomic) */
	unsigned int parked;		/* vCPUs parked for a pause */
	unsigned int pausers;		/* vm_pause calls waiting for the vCPUs to park */
	unsigned int pauses;		/* pauses completed: tells a waiting caller that another's did */
	unsigned int running;		/* vCPU threads not yet exited */
	int exit_status;
	void (*stop_notify)(void *arg, struct vm *vm);
	void *stop_arg;
	bool dirty_tracking;		/* vm_dirty_start's, until vm_dirty_stop (atomic) */
	/* Set before start, read by the vCPUs after: no lock. */
	uint64_t restored_cpus;		/* bit per vCPU given a state by vm_load_vcpu */
	int64_t tsc_offset;		/* added to the accelerator's TSC (guest/abi.h) */
	int64_t clock_offset_ns;	/* added to the system control device's clock */
};

struct vcpu {
	struct vm *vm;		/* owner, immutable */
	unsigned int index;	/* immutable */
	void *accel_vcpu;	/* the accelerator's own state */
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;	/* guards woken, started, exited */
	pthread_cond_t cond;
	bool woken;		/* a kick arrived while (or before) sleeping */
	bool exited;		/* the thread is past its last use of itself: no more signals */
};

/* vCPU side of pause/stop: called by the vCPU loop between runs of guest code. */
bool vm_vcpu_should_exit(struct vm *vm);
void vm_vcpu_park_if_paused(struct vm *vm);
void vm_vcpu_exited(struct vm *vm);

/* Devices (console.c, sysctl.c). */
int console_create(struct vm *vm, int fd, bool prefix, const char *log_path, struct console **out);
void console_destroy(struct console *con);
void console_get_stats(struct console *con, struct console_stats *out);
/*
 * Guest bytes for the console from another device (a UART): cut into lines
 * and queued like the console device's own, never blocking (a line that
 * does not fit the ring is dropped and counted). Any thread.
 */
void console_put(struct console *con, const void *p, size_t n);
extern const struct bus_ops console_ops;
/*
 * A Linux guest's platform on the port bus (core/layout.h LAYOUT_LINUX_*):
 * the 8250 UART whose output is the VM's console (uart.c), and the
 * keyboard controller's reset, the POST and CMOS ports and ACPI's PM
 * registers (pc.c). 0, -ENOMEM, or bus_register's -errno.
 */
int uart_create(struct vm *vm, uint16_t port, uint32_t gsi, struct uart **out);
void uart_destroy(struct uart *u);
int pc_create(struct vm *vm, struct pc **out);
void pc_destroy(struct pc *pc);
/*
 * Their registers for migration and snapshots (the PM timer as the count
 * it reads now), as JSON (new reference, NULL without memory); and loaded
 * from another host's, untrusted: every field there, of its type and
 * within what the guest's writes could leave, else -EINVAL with why and
 * nothing changed. uart_load drives the interrupt line to the level the
 * registers give. Before vm_start, or paused.
 */
json_t *uart_save(struct uart *u);
/*
 * One register of such a state: the integer st holds at key, from 0 to max,
 * else -EINVAL with why naming "dev.key" (st not an object: missing).
 */
int dev_state_reg(json_t *st, const char *dev, const char *key, uint32_t max, uint32_t *out,
		  char *why, size_t whylen);
int uart_load(struct uart *u, json_t *st, char *why, size_t whylen);
json_t *pc_save(struct pc *pc);
int pc_load(struct pc *pc, json_t *st, char *why, size_t whylen);
extern const struct bus_ops sysctl_ops;

#endif
