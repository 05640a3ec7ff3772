/* SPDX-License-Identifier: MIT */
/*
 * A VM's buses: the MMIO bus maps a guest-physical window to a device's
 * read/write handlers, the port-I/O bus a range of x86 I/O ports (only a
 * Linux guest has port devices: the kvmem guest runs at CPL3, where port
 * I/O faults). Devices are registered before any vCPU runs and never
 * removed while vCPUs run, so dispatch (on vCPU threads) needs no lock.
 */
#ifndef KVMEM_CORE_BUS_H
#define KVMEM_CORE_BUS_H

#include <stdbool.h>
#include <stdint.h>

#include "mem/gm.h"

struct vcpu;

struct bus_ops {
	/* `off` is relative to the window; len is 1, 2, 4 or 8. Reads fill data. */
	void (*read)(void *opaque, struct vcpu *vcpu, uint64_t off, void *data, unsigned int len);
	void (*write)(void *opaque, struct vcpu *vcpu, uint64_t off, const void *data,
		      unsigned int len);
};

#define BUS_MAX_DEVICES 32

struct bus_dev {
	gpa_t base;
	uint64_t len;
	const struct bus_ops *ops;
	void *opaque;
};

#define BUS_NR_PORTS 65536

struct bus {
	unsigned int nr;	/* written before vCPUs start, read-only after */
	struct bus_dev devs[BUS_MAX_DEVICES];
	uint64_t unclaimed;	/* accesses that hit no device (atomic) */
	/*
	 * A port bus (bus_init_ports): a bit per port already logged as having
	 * no device (atomic), so the ports a kernel probes show once each in
	 * the debug log. NULL: an MMIO bus.
	 */
	uint64_t *ports_logged;
};

/*
 * Make bus a port-I/O bus (addresses are port numbers, below BUS_NR_PORTS):
 * 0 or -ENOMEM. bus_fini frees what it took (a no-op on an MMIO bus).
 */
int bus_init_ports(struct bus *bus);
void bus_fini(struct bus *bus);

/* -EBUSY when the window overlaps another device, -ENOSPC when full. */
int bus_register(struct bus *bus, gpa_t base, uint64_t len, const struct bus_ops *ops,
		 void *opaque);

/*
 * Route one MMIO or port access. An access that hits no device reads as
 * all ones and is otherwise ignored (a bus error on real hardware, an ISA
 * bus floating high), counted in `unclaimed`: rate-limited as a warning on
 * the MMIO bus, once per port in the debug log on a port bus (a kernel
 * probes ports for hardware that is not there as a matter of course).
 */
void bus_dispatch(struct bus *bus, struct vcpu *vcpu, gpa_t addr, void *data, unsigned int len,
		  bool is_write);

/* Little helpers for device register handlers. */
uint64_t bus_data_get(const void *data, unsigned int len);
void bus_data_put(void *data, unsigned int len, uint64_t val);

#endif
