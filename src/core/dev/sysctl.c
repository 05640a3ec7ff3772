/* SPDX-License-Identifier: MIT */
/*
 * The kvmem system-control device (guest/abi.h, ABI_SYS_*): power off with
 * an exit code, the paravirtual hlt (a CPL3 guest cannot execute hlt, and a
 * spinning idle guest would burn a host core that other VMs need), exception
 * reports from the CPL0 stubs, and host time. Runs on vCPU threads.
 */
#define LOG_TAG "sysctl"

#include "core/clock.h"
#include "core/vcpu.h"
#include "core/vm_internal.h"

static void sysctl_write(void *opaque, struct vcpu *vcpu, uint64_t off, const void *data,
			 unsigned int len)
{
	struct vm *vm = opaque;
	uint64_t val = bus_data_get(data, len);

	switch (off) {
	case ABI_SYS_POWEROFF:
		log_debug("%s: guest powered off with status %u", vm->name, (unsigned int)(val & 0xff));
		vm_request_stop(vm, (int)(val & 0xff));
		break;
	case ABI_SYS_SLEEP_NS:
		vcpu_sleep(vcpu, val);
		break;
	case ABI_SYS_EXCEPTION:
		vcpu_report_exception(vcpu);
		break;
	case ABI_SYS_REPORT:
		/* Guest-triggered: only in the debug log, and rate-limited there too. */
		if (log_get_level() >= LOG_DEBUG)
			log_warn_ratelimited_vm(&vm->log_limit, "%s: vcpu %u reports 0x%llx",
						vm->name, vcpu_index(vcpu), (unsigned long long)val);
		break;
	default:
		log_warn_ratelimited_vm(&vm->log_limit,
					"%s: sysctl write to unknown register 0x%llx", vm->name,
					(unsigned long long)off);
	}
}

static void sysctl_read(void *opaque, struct vcpu *vcpu, uint64_t off, void *data,
			unsigned int len)
{
	struct vm *vm = opaque;

	(void)vcpu;
	if (off == ABI_SYS_TIME_NS) {
		/* Offset for a VM that came from another host: its clock goes on from there. */
		bus_data_put(data, len,
			     kv_clock_ns(CLOCK_MONOTONIC) + (uint64_t)vm->clock_offset_ns);
		return;
	}
	bus_data_put(data, len, 0);
}

const struct bus_ops sysctl_ops = {
	.read = sysctl_read,
	.write = sysctl_write,
};
