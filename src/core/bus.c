/* SPDX-License-Identifier: MIT */
#define LOG_TAG "bus"
#include "core/bus.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/vm_internal.h"

int bus_init_ports(struct bus *bus)
{
	bus->ports_logged = kv_calloc(BUS_NR_PORTS / 64, sizeof(uint64_t));
	return bus->ports_logged ? 0 : -ENOMEM;
}

void bus_fini(struct bus *bus)
{
	kv_free(bus->ports_logged);
	bus->ports_logged = NULL;
}

int bus_register(struct bus *bus, gpa_t base, uint64_t len, const struct bus_ops *ops,
		 void *opaque)
{
	if (len == 0 || base + len < base || (bus->ports_logged && base + len > BUS_NR_PORTS))
		return -EINVAL;
	for (unsigned int i = 0; i < bus->nr; i++) {
		const struct bus_dev *d = &bus->devs[i];

		if (base < d->base + d->len && d->base < base + len)
			return -EBUSY;
	}
	if (bus->nr == BUS_MAX_DEVICES)
		return -ENOSPC;
	bus->devs[bus->nr] = (struct bus_dev){ base, len, ops, opaque };
	bus->nr++;
	return 0;
}

void bus_dispatch(struct bus *bus, struct vcpu *vcpu, gpa_t addr, void *data, unsigned int len,
		  bool is_write)
{
	for (unsigned int i = 0; i < bus->nr; i++) {
		const struct bus_dev *d = &bus->devs[i];

		if (addr < d->base || addr - d->base >= d->len)
			continue;
		if (len > d->len - (addr - d->base))
			break; /* straddles the window's end */
		if (is_write) {
			if (d->ops->write)
				d->ops->write(d->opaque, vcpu, addr - d->base, data, len);
		} else if (d->ops->read) {
			d->ops->read(d->opaque, vcpu, addr - d->base, data, len);
		} else {
			memset(data, 0, len);
		}
		return;
	}
	__atomic_fetch_add(&bus->unclaimed, 1, __ATOMIC_RELAXED);
	if (!is_write)
		memset(data, 0xff, len);
	if (bus->ports_logged) {
		uint64_t bit = 1ULL << (addr % 64);

		if (addr < BUS_NR_PORTS && log_get_level() >= LOG_DEBUG &&
		    !(__atomic_fetch_or(&bus->ports_logged[addr / 64], bit, __ATOMIC_RELAXED) & bit))
			log_debug("%s: vcpu %u: port 0x%" PRIx64 " has no device (%s of %u bytes): "
				  "reads all ones, writes ignored", vcpu->vm->name, vcpu->index,
				  addr, is_write ? "write" : "read", len);
		return;
	}
	log_warn_ratelimited_vm(&vcpu->vm->log_limit,
				"%s: vcpu %u: guest %s of %u bytes at gpa 0x%" PRIx64
				" hits no device",
				vcpu->vm->name, vcpu->index, is_write ? "write" : "read", len, addr);
}

uint64_t bus_data_get(const void *data, unsigned int len)
{
	uint64_t v = 0;

	memcpy(&v, data, len < sizeof(v) ? len : sizeof(v));
	return v;
}

void bus_data_put(void *data, unsigned int len, uint64_t val)
{
	memcpy(data, &val, len < sizeof(val) ? len : sizeof(val));
}
