/* SPDX-License-Identifier: MIT */
/*
 * VM lifecycle: guest RAM, the accelerator's machine and vCPUs, devices,
 * boot, and the state machine shared with the vCPU threads (see vm.h). Lock
 * order: vm->lock, then vcpu->lock.
 */
#define LOG_TAG "vm"
#include "core/vm.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/boot.h"
#include "core/clock.h"
#include "core/layout.h"
#include "core/linux_boot.h"
#include "core/size.h"
#include "core/vcpu.h"
#include "core/vm_internal.h"
#include "mem/corpus.h"
#include "mem/memmap.h"

int vm_add_device(struct vm *vm, uint32_t type, const struct bus_ops *ops, void *opaque,
		  gpa_t *gpa, uint32_t *gsi)
{
	struct abi_device *d;
	gpa_t base;
	int ret;

	if (vm->state != VM_CREATED)
		return -EINVAL;
	if (vm->nr_devs == ABI_MAX_DEVICES)
		return -ENOSPC;
	d = &vm->devs[vm->nr_devs];
	switch (type) {
	case ABI_DEV_CONSOLE:
		base = LAYOUT_MMIO_CONSOLE;
		break;
	case ABI_DEV_SYSCTL:
		base = LAYOUT_MMIO_SYSCTL;
		break;
	case ABI_DEV_VIRTIO_MMIO:
		base = LAYOUT_MMIO_VIRTIO + vm->nr_virtio * LAYOUT_MMIO_SLOT_SIZE;
		d->irq = LAYOUT_VIRTIO_IRQ_BASE + vm->nr_virtio;
		break;
	default:
		return -EINVAL;
	}
	ret = bus_register(&vm->bus, base, LAYOUT_MMIO_SLOT_SIZE, ops, opaque);
	if (ret)
		return ret;
	if (type == ABI_DEV_VIRTIO_MMIO)
		vm->nr_virtio++;
	d->type = type;
	d->gpa = base;
	d->len = LAYOUT_MMIO_SLOT_SIZE;
	vm->nr_devs++;
	if (gpa)
		*gpa = base;
	if (gsi)
		*gsi = d->irq;
	return 0;
}

bool vm_in_corpus(struct vm *vm, gpa_t gpa)
{
	struct mem_corpus c;

	return mem_corpus_get(vm->gm, &c) && gpa >= c.gpa && gpa - c.gpa < c.map_bytes;
}

/*
 * Stores into the corpus, where they exit (kvm: a read-only memslot, or
 * one kvm-pvm maps read-only): the guest's error, which ends it as a fault
 * there does under thread. Loads never exit; one that did reads nothing.
 */
static void corpus_write(void *opaque, struct vcpu *vcpu, uint64_t off, const void *data,
			 unsigned int len)
{
	struct vm *vm = opaque;

	(void)data;
	log_err("%s: vcpu %u: guest store of %u bytes into its read-only corpus at gpa 0x%llx",
		vm->name, vcpu_index(vcpu), len, (unsigned long long)(LAYOUT_CORPUS_BASE + off));
	vm_request_stop(vm, VM_STATUS_GUEST_CRASH);
}

static const struct bus_ops corpus_ops = {
	.write = corpus_write,
};

/* The corpus into the reservation and on the bus, before the accelerator registers memory. */
static int map_corpus(struct vm *vm, const char *path)
{
	struct mem_corpus c;
	char why[256];
	int ret;

	ret = mem_corpus_map(vm->gm, path, why, sizeof(why));
	if (ret) {
		log_err("%s: %s", vm->name, why);
		return ret;
	}
	mem_corpus_get(vm->gm, &c);
	return bus_register(&vm->bus, c.gpa, c.map_bytes, &corpus_ops, vm);
}

static_assert(ABI_MAX_DEVICES <= LINUX_MAX_VIRTIO, "the tables hold every virtio device");

/*
 * A Linux kernel: the image checked again (its file may have changed since
 * the config was checked), the boot plan written into guest RAM, and vCPU
 * 0's entry given to the accelerator, whose boot_linux makes the other
 * vCPUs wait for INIT and SIPI.
 */
static int boot_linux(struct vm *vm)
{
	struct linux_boot_plan *plan = NULL;
	struct linux_machine m;
	struct linux_image img;
	char why[512];
	int ret;

	if (!vm->kernel_path) {
		log_err("%s: a Linux machine without a kernel has nothing to boot: it continues "
			"from a saved state or not at all", vm->name);
		return -EINVAL;
	}
	ret = linux_image_open(vm->kernel_path, &img, why, sizeof(why));
	if (!ret) {
		linux_machine_of(vm->gm, &m);
		/* Its vCPUs and virtio devices, for the tables that announce them. */
		m.platform.ncpus = vm->ncpus;
		for (unsigned int i = 0; i < vm->nr_devs; i++) {
			const struct abi_device *d = &vm->devs[i];

			if (d->type != ABI_DEV_VIRTIO_MMIO)
				continue;
			m.platform.virtio[m.platform.nr_virtio++] =
				(struct linux_virtio){ .gpa = d->gpa, .len = d->len, .gsi = d->irq };
		}
		ret = linux_boot_plan(&img, vm->initrd_path, vm->cmdline, &m, &plan, why,
				      sizeof(why));
		linux_image_close(&img);
	}
	if (ret) {
		log_err("%s: %s", vm->name, why);
		return ret;
	}
	ret = linux_boot_apply(vm->gm, plan);
	if (ret)
		log_err("%s: writing the kernel's boot state: %s", vm->name, strerror(-ret));
	else
		ret = vm->accel->boot_linux(vm, &plan->bsp);
	linux_boot_plan_free(plan);
	return ret;
}

static int boot_guest(struct vm *vm)
{
	const struct accel_ops *a = vm->accel;
	uint64_t offset = a->phys_offset(vm);
	struct boot_image img;
	struct boot_info bi;
	int ret;

	if (vm->linux_machine)
		return boot_linux(vm);
	ret = boot_load_elf(vm->gm, vm->guest_path, offset, &img);
	if (ret) {
		if (ret != -ENOEXEC)
			log_err("cannot load guest %s: %s", vm->guest_path, strerror(-ret));
		return ret;
	}
	ret = a->vm_boot(vm);
	if (ret)
		return ret;
	bi = (struct boot_info){
		.ncpus = vm->ncpus,
		.tsc_khz = a->tsc_khz(vm),
		.cmdline = vm->cmdline,
		.devs = vm->devs,
		.nr_devs = vm->nr_devs,
		.phys_offset = offset,
		.mmio_call = a->mmio_call(vm),
	};
	ret = boot_write_params(vm->gm, &img, &bi);
	if (ret) {
		log_err("guest command line or device table too large");
		return ret;
	}
	for (unsigned int i = 0; i < vm->ncpus; i++) {
		struct accel_entry e;

		boot_vcpu_entry(&e, i, &img, offset, a->mmio_call(vm) != 0);
		ret = a->vcpu_boot(vm->vcpus[i], &e);
		if (ret)
			return ret;
	}
	return 0;
}

int vm_create(const struct vm_params *p, struct vm **out)
{
	const struct accel_ops *accel = accel_ops(p->accel);
	struct vm *vm;
	int ret;

	if (!p->name || !p->guest_path == !p->kernel_path || p->ncpus == 0 ||
	    p->ncpus > ABI_MAX_CPUS || !accel)
		return -EINVAL;
	/*
	 * The config and an arrival's description refuse this in one line
	 * (accel_linux_check); any other caller, here.
	 */
	if ((p->kernel_path || p->linux_machine) && !accel->boot_linux) {
		log_err("%s: the %s accelerator cannot run a Linux kernel", p->name, accel->name);
		return -ENOTSUP;
	}
	vm = kv_zalloc(sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->accel_kind = p->accel;
	vm->linux_machine = p->linux_machine || p->kernel_path;
	vm->accel = accel;
	vm->name = kv_strdup(p->name);
	vm->guest_path = p->guest_path ? kv_strdup(p->guest_path) : NULL;
	vm->kernel_path = p->kernel_path ? kv_strdup(p->kernel_path) : NULL;
	vm->initrd_path = p->initrd_path ? kv_strdup(p->initrd_path) : NULL;
	vm->cmdline = kv_strdup(p->cmdline ? p->cmdline : "");
	vm->ncpus = p->ncpus;
	vm->mem_bytes = p->mem_bytes;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	vm->state = VM_CREATED;
	if (!vm->name || !vm->cmdline || (p->guest_path && !vm->guest_path) ||
	    (p->kernel_path && !vm->kernel_path) || (p->initrd_path && !vm->initrd_path)) {
		ret = -ENOMEM;
		goto out_destroy;
	}
	ret = bus_init_ports(&vm->pio_bus);
	if (ret)
		goto out_destroy;
	ret = mem_create_at(p->mem_bytes, accel->exec_ram, p->ram_base, &vm->gm);
	if (ret) {
		log_err("%s: cannot reserve %llu bytes of guest RAM: %s", p->name,
			(unsigned long long)p->mem_bytes, strerror(-ret));
		goto out_destroy;
	}
	if (p->corpus) {
		ret = map_corpus(vm, p->corpus);
		if (ret)
			goto out_destroy;
	}
	ret = accel->vm_init(vm);
	if (ret)
		goto out_destroy;
	ret = console_create(vm, p->console_fd, p->console_prefix, p->console_log, &vm->console);
	if (ret)
		goto out_destroy;
	if (vm->linux_machine) {
		ret = uart_create(vm, LAYOUT_LINUX_COM1, LAYOUT_LINUX_COM1_GSI, &vm->uart);
		if (!ret)
			ret = pc_create(vm, &vm->pc);
		if (ret)
			goto out_destroy;
	}
	for (unsigned int i = 0; i < p->ncpus; i++) {
		ret = vcpu_create(vm, i, &vm->vcpus[i]);
		if (ret)
			goto out_destroy;
	}
	ret = vm_add_device(vm, ABI_DEV_CONSOLE, &console_ops, vm->console, NULL, NULL);
	if (!ret)
		ret = vm_add_device(vm, ABI_DEV_SYSCTL, &sysctl_ops, vm, NULL, NULL);
	if (ret)
		goto out_destroy;
	*out = vm;
	return 0;

out_destroy:
	vm_destroy(vm);
	return ret;
}

int vm_start(struct vm *vm)
{
	int ret = 0;

	if (vm->state != VM_CREATED)
		return -EINVAL;
	/* A VM continued from elsewhere has its memory and registers: nothing to boot. */
	if (vm->restored_cpus != (vm->ncpus == 64 ? ~0ULL : (1ULL << vm->ncpus) - 1))
		ret = vm->restored_cpus ? -EINVAL : boot_guest(vm);
	if (ret)
		return ret;
	pthread_mutex_lock(&vm->lock);
	vm->state = VM_RUNNING;
	for (unsigned int i = 0; i < vm->ncpus && !ret; i++) {
		ret = vcpu_start(vm->vcpus[i]);
		if (!ret)
			vm->running++;
	}
	pthread_mutex_unlock(&vm->lock);
	if (ret)
		vm_request_stop(vm, VM_STATUS_VMM_ERROR);
	return ret;
}

static void kick_all(struct vm *vm)
{
	for (unsigned int i = 0; i < vm->ncpus; i++)
		vcpu_kick(vm->vcpus[i]);
}

void vm_request_stop(struct vm *vm, int status)
{
	pthread_mutex_lock(&vm->lock);
	if (!vm->stop_requested) {
		vm->exit_status = status;
		__atomic_store_n(&vm->stop_requested, true, __ATOMIC_SEQ_CST);
	}
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	kick_all(vm);
}

bool vm_vcpu_should_exit(struct vm *vm)
{
	return __atomic_load_n(&vm->stop_requested, __ATOMIC_SEQ_CST);
}

void vm_vcpu_park_if_paused(struct vm *vm)
{
	if (!__atomic_load_n(&vm->pause_requested, __ATOMIC_SEQ_CST))
		return;
	pthread_mutex_lock(&vm->lock);
	vm->parked++;
	pthread_cond_broadcast(&vm->cond);
	while (vm->pause_requested && !vm->stop_requested)
		pthread_cond_wait(&vm->cond, &vm->lock);
	vm->parked--;
	pthread_mutex_unlock(&vm->lock);
}

void vm_vcpu_exited(struct vm *vm)
{
	void (*notify)(void *, struct vm *) = NULL;
	void *arg = NULL;

	pthread_mutex_lock(&vm->lock);
	vm->running--;
	/* The first vCPU out makes sure its siblings follow. */
	__atomic_store_n(&vm->stop_requested, true, __ATOMIC_SEQ_CST);
	if (vm->running == 0) {
		vm->state = VM_STOPPED;
		notify = vm->stop_notify;
		arg = vm->stop_arg;
	}
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	kick_all(vm);
	if (notify)
		notify(arg, vm);
}

int vm_pause_timeout(struct vm *vm, unsigned int timeout_ms)
{
	struct timespec deadline;
	bool timed_out = false;
	unsigned int gen;
	int ret = 0;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += timeout_ms / 1000;
	deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&vm->lock);
	if (vm->state != VM_RUNNING || vm->stop_requested) {
		pthread_mutex_unlock(&vm->lock);
		return -EINVAL;
	}
	/* A pause already under way: wait for it with our own deadline. */
	gen = vm->pauses;
	vm->pausers++;
	__atomic_store_n(&vm->pause_requested, true, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&vm->lock);
	kick_all(vm);
	pthread_mutex_lock(&vm->lock);
	for (;;) {
		if (vm->pauses != gen || vm->stop_requested)
			break;
		if (vm->parked >= vm->running) {
			vm->state = VM_PAUSED;
			vm->pauses++;
			break;
		}
		if (timed_out) {
			ret = -ETIMEDOUT;
			break;
		}
		if (pthread_cond_clockwait(&vm->cond, &vm->lock, CLOCK_MONOTONIC, &deadline) ==
		    ETIMEDOUT)
			timed_out = true;
	}
	/*
	 * The last caller to give up withdraws the request, so the vCPUs that
	 * parked run on and the one held in the VMM does not park later: the
	 * VM is running as before, not half paused. A vCPU checks
	 * pause_requested again each time it leaves guest code.
	 */
	if (--vm->pausers == 0 && vm->pauses == gen) {
		__atomic_store_n(&vm->pause_requested, false, __ATOMIC_SEQ_CST);
		pthread_cond_broadcast(&vm->cond);
	}
	pthread_mutex_unlock(&vm->lock);
	return ret;
}

int vm_pause(struct vm *vm)
{
	return vm_pause_timeout(vm, VM_PAUSE_TIMEOUT_MS);
}

int vm_resume(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	if (vm->state != VM_PAUSED) {
		pthread_mutex_unlock(&vm->lock);
		return -EINVAL;
	}
	__atomic_store_n(&vm->pause_requested, false, __ATOMIC_SEQ_CST);
	vm->state = VM_RUNNING;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

int vm_wait(struct vm *vm)
{
	for (unsigned int i = 0; i < vm->ncpus; i++)
		if (vm->vcpus[i])
			vcpu_join(vm->vcpus[i]);
	return vm_exit_status(vm);
}

void vm_destroy(struct vm *vm)
{
	if (!vm)
		return;
	if (vm->state != VM_CREATED) {
		vm_request_stop(vm, VM_STATUS_STOPPED);
		vm_wait(vm);
	}
	for (unsigned int i = 0; i < vm->ncpus; i++)
		vcpu_destroy(vm->vcpus[i]);
	uart_destroy(vm->uart);
	pc_destroy(vm->pc);
	if (vm->console)
		console_destroy(vm->console);
	vm->accel->vm_destroy(vm);
	mem_destroy(vm->gm);
	bus_fini(&vm->pio_bus);
	pthread_mutex_destroy(&vm->lock);
	pthread_cond_destroy(&vm->cond);
	kv_free(vm->name);
	kv_free(vm->guest_path);
	kv_free(vm->kernel_path);
	kv_free(vm->initrd_path);
	kv_free(vm->cmdline);
	kv_free(vm);
}

void vm_set_stop_notify(struct vm *vm, void (*fn)(void *arg, struct vm *vm), void *arg)
{
	pthread_mutex_lock(&vm->lock);
	vm->stop_notify = fn;
	vm->stop_arg = arg;
	pthread_mutex_unlock(&vm->lock);
}

struct gm *vm_gm(struct vm *vm)
{
	return vm->gm;
}

void vm_console_stats(struct vm *vm, struct console_stats *out)
{
	console_get_stats(vm->console, out);
}

uint64_t vm_ram_base(const struct vm *vm)
{
	return (uint64_t)(uintptr_t)mem_phys_base(vm->gm);
}

const char *vm_accel_name(const struct vm *vm)
{
	return vm->accel->name;
}

int vm_ioeventfd(struct vm *vm, gpa_t addr, unsigned int len, int fd, bool assign)
{
	return vm->accel->ioeventfd(vm, addr, len, fd, assign);
}

int vm_irqfd(struct vm *vm, uint32_t gsi, int fd, bool assign)
{
	return vm->accel->irqfd(vm, gsi, fd, assign);
}

int vm_irq_line(struct vm *vm, uint32_t gsi, bool level)
{
	return vm->accel->irq_line ? vm->accel->irq_line(vm, gsi, level) : -ENOTSUP;
}

int vm_dirty_start(struct vm *vm)
{
	bool idle = false;
	int ret;

	if (!vm->accel->dirty_log)
		return -ENOTSUP;
	if (!__atomic_compare_exchange_n(&vm->dirty_tracking, &idle, true, false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return -EBUSY;
	/* The VMM's marks first: none of its writes falls between the two starts unseen. */
	mem_dirty_vmm_track(vm->gm, true);
	ret = vm->accel->dirty_log(vm, true);
	if (ret)
		vm_dirty_stop(vm);
	return ret;
}

int vm_dirty_collect(struct vm *vm, uint64_t *bitmap, uint64_t *vmm_pages)
{
	if (!__atomic_load_n(&vm->dirty_tracking, __ATOMIC_ACQUIRE))
		return -EINVAL;
	*vmm_pages = mem_dirty_vmm_collect(vm->gm, bitmap);
	return vm->accel->dirty_collect(vm, bitmap);
}

void vm_dirty_stop(struct vm *vm)
{
	if (!__atomic_load_n(&vm->dirty_tracking, __ATOMIC_ACQUIRE))
		return;
	vm->accel->dirty_log(vm, false);
	mem_dirty_vmm_track(vm->gm, false);
	__atomic_store_n(&vm->dirty_tracking, false, __ATOMIC_RELEASE);
}

int vm_save_vcpu(struct vm *vm, unsigned int i, void *buf, size_t cap)
{
	if (!vm->accel->vcpu_save)
		return -ENOTSUP;
	if (i >= vm->ncpus || vm_get_state(vm) != VM_PAUSED)
		return -EINVAL;
	return vm->accel->vcpu_save(vm->vcpus[i], buf, cap);
}

int vm_load_vcpu(struct vm *vm, unsigned int i, const void *buf, size_t len)
{
	int ret;

	enum vm_state s = vm_get_state(vm);

	if (!vm->accel->vcpu_load)
		return -ENOTSUP;
	/* Paused: every vCPU parked, its state where the accelerator resumes it from. */
	if (i >= vm->ncpus || (s != VM_CREATED && s != VM_PAUSED) || len > ACCEL_CPU_STATE_MAX)
		return -EINVAL;
	ret = vm->accel->vcpu_load(vm->vcpus[i], buf, len);
	if (!ret && s == VM_CREATED)
		vm->restored_cpus |= 1ULL << i;
	return ret;
}

int vm_save_machine(struct vm *vm, void *buf, size_t cap)
{
	if (vm_get_state(vm) != VM_PAUSED)
		return -EINVAL;
	return vm->accel->machine_save ? vm->accel->machine_save(vm, buf, cap) : 0;
}

int vm_load_machine(struct vm *vm, const void *buf, size_t len)
{
	enum vm_state s = vm_get_state(vm);

	if (s != VM_CREATED && s != VM_PAUSED)
		return -EINVAL;
	if (!len)
		return 0;
	return vm->accel->machine_load ? vm->accel->machine_load(vm, buf, len) : -EINVAL;
}

int vm_save_clock(struct vm *vm, struct vm_clock *out)
{
	if (!vm->accel->guest_tsc)
		return -ENOTSUP;
	if (vm_get_state(vm) != VM_PAUSED)
		return -EINVAL;
	out->guest_tsc = vm->accel->guest_tsc(vm) + (uint64_t)vm->tsc_offset;
	out->tsc_khz = vm->accel->tsc_khz(vm);
	out->vmm_ns = kv_clock_ns(CLOCK_MONOTONIC) + (uint64_t)vm->clock_offset_ns;
	return 0;
}

int vm_load_clock(struct vm *vm, const struct vm_clock *c)
{
	enum vm_state s = vm_get_state(vm);
	uint64_t khz;

	if (!vm->accel->guest_tsc)
		return -ENOTSUP;
	if (s != VM_CREATED && s != VM_PAUSED)
		return -EINVAL;
	/*
	 * The guest turns ticks into time at the rate it booted with: on a TSC
	 * of another rate its clock would run fast or slow. Calibrations of one
	 * TSC agree to about 10^-4.
	 */
	khz = vm->accel->tsc_khz(vm);
	if (c->tsc_khz && (khz > c->tsc_khz ? khz - c->tsc_khz : c->tsc_khz - khz) > c->tsc_khz / 200)
		return -ERANGE;
	vm->tsc_offset = (int64_t)(c->guest_tsc - vm->accel->guest_tsc(vm));
	vm->clock_offset_ns = (int64_t)(c->vmm_ns - kv_clock_ns(CLOCK_MONOTONIC));
	/* A Linux guest's memory is its own: no boot parameters of kvmem's there to write. */
	if (vm->linux_machine)
		return 0;
	/* The guest reads its offset from the boot parameters, which came with its memory. */
	return mem_write(vm->gm, LAYOUT_BOOT_PARAMS + offsetof(struct abi_boot_params, tsc_offset),
			 &vm->tsc_offset, sizeof(vm->tsc_offset));
}

int vm_new_generation(struct vm *vm, uint64_t *out)
{
	gpa_t at = LAYOUT_BOOT_PARAMS + offsetof(struct abi_boot_params, generation);
	uint64_t g;
	int ret;

	if (vm->linux_machine) {
		if (out)
			*out = 0;
		return 0;
	}
	ret = mem_read(vm->gm, at, &g, sizeof(g));
	if (ret)
		return ret;
	g++;
	ret = mem_write(vm->gm, at, &g, sizeof(g));
	if (!ret && out)
		*out = g;
	return ret;
}

int vm_set_identity(struct vm *vm, uint64_t identity)
{
	/* Where a kvmem guest has its boot parameters, a Linux guest has its own pages. */
	if (vm->linux_machine)
		return 0;
	return mem_write(vm->gm, LAYOUT_BOOT_PARAMS + offsetof(struct abi_boot_params, identity),
			 &identity, sizeof(identity));
}

int vm_save_platform(struct vm *vm, json_t *devices)
{
	if (!vm->linux_machine)
		return 0;
	if (json_object_set_new(devices, "uart", uart_save(vm->uart)) ||
	    json_object_set_new(devices, "pc", pc_save(vm->pc)))
		return -ENOMEM;
	return 0;
}

int dev_state_reg(json_t *st, const char *dev, const char *key, uint32_t max, uint32_t *out,
		  char *why, size_t whylen)
{
	char field[32];
	int64_t v;

	snprintf(field, sizeof(field), "%s.%s", dev, key);
	if (size_json_integer(field, json_object_get(st, key), 0, max, &v, why, whylen))
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

int vm_load_platform(struct vm *vm, json_t *devices, char *why, size_t whylen)
{
	json_t *uart = json_object_get(devices, "uart"), *pc = json_object_get(devices, "pc");
	int ret;

	/* The description made this machine: state of another kind is of another VM. */
	if (!vm->linux_machine) {
		if (!uart && !pc)
			return 0;
		snprintf(why, whylen, "a Linux guest's UART and PC ports, for a VM that has none");
		return -EINVAL;
	}
	/*
	 * Each refuses before it changes anything; a UART loaded before the
	 * PC ports refused is of no matter: a VM whose state was refused does
	 * not run on it (an arrival is discarded, a rollback stops it).
	 */
	ret = uart_load(vm->uart, uart, why, whylen);
	if (!ret)
		ret = pc_load(vm->pc, pc, why, whylen);
	return ret;
}

bool vm_is_linux(const struct vm *vm)
{
	return vm->linux_machine;
}

unsigned int vm_ncpus(const struct vm *vm)
{
	return vm->ncpus;
}

const char *vm_name(const struct vm *vm)
{
	return vm->name;
}

enum vm_state vm_get_state(struct vm *vm)
{
	enum vm_state s;

	pthread_mutex_lock(&vm->lock);
	s = vm->state;
	pthread_mutex_unlock(&vm->lock);
	return s;
}

const char *vm_state_name(enum vm_state s)
{
	switch (s) {
	case VM_CREATED:
		return "created";
	case VM_RUNNING:
		return "running";
	case VM_PAUSED:
		return "paused";
	case VM_STOPPED:
		return "stopped";
	}
	return "unknown";
}

int vm_exit_status(struct vm *vm)
{
	int s;

	pthread_mutex_lock(&vm->lock);
	s = vm->exit_status;
	pthread_mutex_unlock(&vm->lock);
	return s;
}
