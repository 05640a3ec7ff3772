/* SPDX-License-Identifier: MIT */
/*
 * The few PC ports a Linux guest needs an answer from besides the UART and
 * what KVM emulates itself (PIC, PIT, speaker port, IOAPIC, local APICs);
 * their numbers are core/layout.h's LAYOUT_LINUX_*:
 *
 *   i8042   the keyboard controller, for its reset line only: command 0xFE
 *           on its command port is how Linux reboots a PC without ACPI's
 *           reset register (its default fallback, and `reboot=k`). A
 *           reboot ends the VM: kvmem does not restart guests (Firecracker
 *           does the same). The status reads 0: nothing to read, room to
 *           write, so the kernel's wait before the command ends at once.
 *   POST    port 0x80: diagnostic codes, and the kernel's I/O delay.
 *   CMOS    the RTC's index and data ports: every register reads 0, so a
 *           poll of "update in progress" ends. The FADT says there is no
 *           RTC; the wall clock is kvm-clock's.
 *   ACPI    the PM1a event block (status and enable), the PM1a control
 *           register (sleep type LAYOUT_LINUX_S5_TYP with SLP_EN is the
 *           power-off Linux makes through \_S5, which ends the VM with
 *           status 0) and the PM timer (3.579545 MHz, 32 bits).
 *
 * Runs on vCPU threads; `lock` guards the registers. Migration and
 * snapshots move them (pc_save, pc_load), and the PM timer as the count the
 * guest last could read: it goes on from there on any host.
 */
#define LOG_TAG "pc"
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/layout.h"
#include "core/vm_internal.h"

#define I8042_CMD_RESET 0xfe

#define PM1_STS 0		/* from LAYOUT_LINUX_PM1_EVT */
#define PM1_EN 2
#define PM1_STS_WAK 0x8000	/* write 1 to clear, as every status bit */
#define PM1_CNT_SCI_EN 0x0001	/* ACPI mode: always on (no SMI_CMD to switch) */
#define PM1_CNT_SLP_TYP_SHIFT 10
#define PM1_CNT_SLP_TYP_MASK 0x1c00
#define PM1_CNT_SLP_EN 0x2000
#define PM_TMR_HZ 3579545ULL

struct pc {
	struct vm *vm;
	pthread_mutex_t lock;	/* guards everything below */
	uint8_t cmos_index;
	uint16_t pm1_sts, pm1_en, pm1_cnt;
	/* Added to this host's count (atomic: read lock-free), so a moved VM's timer goes on. */
	uint32_t tmr_offset;
};

static void i8042_write(void *opaque, struct vcpu *vcpu, uint64_t off, const void *data,
			unsigned int len)
{
	struct pc *pc = opaque;

	(void)vcpu;
	(void)off;
	if ((uint8_t)bus_data_get(data, len) != I8042_CMD_RESET)
		return;
	log_info("%s: the guest reset the machine (keyboard controller): the VM ends", pc->vm->name);
	vm_request_stop(pc->vm, VM_STATUS_STOPPED);
}

/* Status and data read 0: nothing waiting, the input buffer empty. */
static void read_zero(void *opaque, struct vcpu *vcpu, uint64_t off, void *data, unsigned int len)
{
	(void)opaque;
	(void)vcpu;
	(void)off;
	bus_data_put(data, len, 0);
}

static void ignore_write(void *opaque, struct vcpu *vcpu, uint64_t off, const void *data,
			 unsigned int len)
{
	(void)opaque;
	(void)vcpu;
	(void)off;
	(void)data;
	(void)len;
}

static const struct bus_ops i8042_data_ops = { .read = read_zero, .write = ignore_write };
static const struct bus_ops i8042_cmd_ops = { .read = read_zero, .write = i8042_write };
static const struct bus_ops post_ops = { .read = read_zero, .write = ignore_write };

static void cmos_write(void *opaque, struct vcpu *vcpu, uint64_t off, const void *data,
		       unsigned int len)
{
	struct pc *pc = opaque;

	(void)vcpu;
	if (off == 0) {
		pthread_mutex_lock(&pc->lock);
		/* Bit 7 masks NMIs on a PC: not the RTC's, and no NMI source here. */
		pc->cmos_index = (uint8_t)bus_data_get(data, len) & 0x7f;
		pthread_mutex_unlock(&pc->lock);
	}
}

static const struct bus_ops cmos_ops = { .read = read_zero, .write = cmos_write };

static uint16_t get16(const void *data, unsigned int len, uint64_t off, uint64_t reg,
		      uint16_t old)
{
	/* A byte access to either half of a 16-bit register. */
	uint64_t v = bus_data_get(data, len);

	if (len == 1)
		return off == reg ? (uint16_t)((old & 0xff00) | (v & 0xff))
				  : (uint16_t)((old & 0x00ff) | (v & 0xff) << 8);
	return (uint16_t)v;
}

static void pm_evt_read(void *opaque, struct vcpu *vcpu, uint64_t off, void *data,
			unsigned int len)
{
	struct pc *pc = opaque;
	uint32_t v;

	(void)vcpu;
	pthread_mutex_lock(&pc->lock);
	v = (uint32_t)pc->pm1_sts | (uint32_t)pc->pm1_en << 16;
	pthread_mutex_unlock(&pc->lock);
	bus_data_put(data, len, v >> (8 * off));
}

static void pm_evt_write(void *opaque, struct vcpu *vcpu, uint64_t off, const void *data,
			 unsigned int len)
{
	struct pc *pc = opaque;

	(void)vcpu;
	pthread_mutex_lock(&pc->lock);
	if (off < PM1_EN) {
		/* Status bits are cleared by writing 1 to them (ACPI, "PM1 Status Registers"). */
		pc->pm1_sts &= (uint16_t)~get16(data, len, off, PM1_STS, 0);
		if (len == 4)
			pc->pm1_en = (uint16_t)(bus_data_get(data, len) >> 16);
	} else {
		pc->pm1_en = get16(data, len, off, PM1_EN, pc->pm1_en);
	}
	pthread_mutex_unlock(&pc->lock);
}

static const struct bus_ops pm_evt_ops = { .read = pm_evt_read, .write = pm_evt_write };

static void pm_cnt_read(void *opaque, struct vcpu *vcpu, uint64_t off, void *data,
			unsigned int len)
{
	struct pc *pc = opaque;
	uint16_t v;

	(void)vcpu;
	pthread_mutex_lock(&pc->lock);
	v = pc->pm1_cnt | PM1_CNT_SCI_EN;
	pthread_mutex_unlock(&pc->lock);
	bus_data_put(data, len, (uint64_t)v >> (8 * off));
}

static void pm_cnt_write(void *opaque, struct vcpu *vcpu, uint64_t off, const void *data,
			 unsigned int len)
{
	struct pc *pc = opaque;
	uint16_t v;

	(void)vcpu;
	pthread_mutex_lock(&pc->lock);
	v = get16(data, len, off, 0, pc->pm1_cnt);
	/* SLP_EN is write-only: the write that sets it enters the sleep state. */
	pc->pm1_cnt = v & (uint16_t)~PM1_CNT_SLP_EN;
	pthread_mutex_unlock(&pc->lock);
	if (!(v & PM1_CNT_SLP_EN))
		return;
	if (((v & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT) != LAYOUT_LINUX_S5_TYP) {
		/* Only \_S5 is in the tables: another type is the guest's own invention. */
		log_warn_ratelimited_vm(&pc->vm->log_limit, "%s: the guest asked for sleep type %u, "
					"which kvmem does not have: ignored", pc->vm->name,
					(v & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT);
		return;
	}
	log_info("%s: the guest powered off (ACPI S5): the VM ends", pc->vm->name);
	vm_request_stop(pc->vm, VM_STATUS_STOPPED);
}

static const struct bus_ops pm_cnt_ops = { .read = pm_cnt_read, .write = pm_cnt_write };

/*
 * The PM timer counts at 3.579545 MHz from any origin: this host's boot,
 * moved by the offset a VM that came from elsewhere brought.
 */
static uint32_t host_ticks(void)
{
	uint64_t ns = kv_clock_ns(CLOCK_MONOTONIC);

	return (uint32_t)((ns / 1000000000ULL) * PM_TMR_HZ +
			  (ns % 1000000000ULL) * PM_TMR_HZ / 1000000000ULL);
}

static uint32_t pm_tmr(struct pc *pc)
{
	return host_ticks() + __atomic_load_n(&pc->tmr_offset, __ATOMIC_RELAXED);
}

static void pm_tmr_read(void *opaque, struct vcpu *vcpu, uint64_t off, void *data,
			unsigned int len)
{
	(void)vcpu;
	bus_data_put(data, len, pm_tmr(opaque) >> (8 * off));
}

static const struct bus_ops pm_tmr_ops = { .read = pm_tmr_read, .write = ignore_write };

int pc_create(struct vm *vm, struct pc **out)
{
	static const struct {
		uint16_t port;
		uint16_t len;
		const struct bus_ops *ops;
	} ports[] = {
		{ LAYOUT_LINUX_I8042_DATA, 1, &i8042_data_ops },
		{ LAYOUT_LINUX_I8042_CMD, 1, &i8042_cmd_ops },
		{ LAYOUT_LINUX_CMOS, 2, &cmos_ops },
		{ LAYOUT_LINUX_POST, 1, &post_ops },
		{ LAYOUT_LINUX_PM1_EVT, 4, &pm_evt_ops },
		{ LAYOUT_LINUX_PM1_CNT, 2, &pm_cnt_ops },
		{ LAYOUT_LINUX_PM_TMR, 4, &pm_tmr_ops },
	};
	struct pc *pc = kv_zalloc(sizeof(*pc));

	if (!pc)
		return -ENOMEM;
	pc->vm = vm;
	pthread_mutex_init(&pc->lock, NULL);
	for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
		int ret = bus_register(&vm->pio_bus, ports[i].port, ports[i].len, ports[i].ops, pc);

		if (ret) {
			pc_destroy(pc);
			return ret;
		}
	}
	*out = pc;
	return 0;
}

json_t *pc_save(struct pc *pc)
{
	json_t *st;

	pthread_mutex_lock(&pc->lock);
	st = json_pack("{s:i, s:i, s:i, s:i, s:I}", "cmos_index", pc->cmos_index, "pm1_sts",
		       pc->pm1_sts, "pm1_en", pc->pm1_en, "pm1_cnt", pc->pm1_cnt, "pm_tmr",
		       (json_int_t)pm_tmr(pc));
	pthread_mutex_unlock(&pc->lock);
	return st;
}

int pc_load(struct pc *pc, json_t *st, char *why, size_t whylen)
{
	uint32_t index, sts, en, cnt, tmr;

	/*
	 * Checked whole first (a refused state leaves the ports as they were):
	 * each register as wide as it is, the CMOS index without bit 7 (the NMI
	 * mask, never kept).
	 */
	if (dev_state_reg(st, "pc", "cmos_index", 0x7f, &index, why, whylen) ||
	    dev_state_reg(st, "pc", "pm1_sts", UINT16_MAX, &sts, why, whylen) ||
	    dev_state_reg(st, "pc", "pm1_en", UINT16_MAX, &en, why, whylen) ||
	    dev_state_reg(st, "pc", "pm1_cnt", UINT16_MAX, &cnt, why, whylen) ||
	    dev_state_reg(st, "pc", "pm_tmr", UINT32_MAX, &tmr, why, whylen))
		return -EINVAL;
	/* SLP_EN is never held: the write that sets it is the sleep, taken at the source. */
	if (cnt & PM1_CNT_SLP_EN) {
		snprintf(why, whylen, "pc.pm1_cnt %u: holds SLP_EN, which the register never keeps",
			 cnt);
		return -EINVAL;
	}
	pthread_mutex_lock(&pc->lock);
	pc->cmos_index = (uint8_t)index;
	pc->pm1_sts = (uint16_t)sts;
	pc->pm1_en = (uint16_t)en;
	pc->pm1_cnt = (uint16_t)cnt;
	/* Unsigned and 32 bits wide, as the register: the count goes on from tmr here. */
	__atomic_store_n(&pc->tmr_offset, tmr - host_ticks(), __ATOMIC_RELAXED);
	pthread_mutex_unlock(&pc->lock);
	return 0;
}

void pc_destroy(struct pc *pc)
{
	if (!pc)
		return;
	pthread_mutex_destroy(&pc->lock);
	kv_free(pc);
}
