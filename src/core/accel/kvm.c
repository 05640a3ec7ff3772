/* SPDX-License-Identifier: MIT */
/*
 * The kvm accelerator: /dev/kvm. Guest RAM becomes memslots, vCPUs run in
 * KVM_RUN, device registers exit as KVM_EXIT_MMIO, and the vCPUs start in
 * long mode at CPL0 on tables the VMM wrote (core/boot.c), because CPL0 code
 * is emulated on kvm-pvm hosts (~0.2 M instructions/s) and CPL3 code runs
 * natively. The only file of kvmem that includes <linux/kvm.h>.
 *
 * A VM that boots a Linux kernel gets the machine a PC kernel expects
 * instead (linux_machine_init, kvm_boot_linux): the 8259s, IOAPIC and
 * PIT in the kernel, CPUID with an APIC id per vCPU and the hypervisor
 * leaves that give it kvm-clock, vCPU 0 at the kernel's 64-bit entry and
 * the others waiting for INIT and SIPI.
 *
 * Kicks use KVM's immediate_exit: the kicker sets its request in the VM,
 * then immediate_exit = 1, then sends the kick signal. The vCPU loop clears
 * immediate_exit before it looks at requests, so a kick that lands between
 * that look and KVM_RUN makes KVM_RUN return at once.
 */
#define LOG_TAG "kvm"
#include <assert.h>
#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/accel/accel.h"
#include "core/alloc.h"
#include "core/boot.h"
#include "core/layout.h"
#include "core/linux_boot.h"
#include "core/log.h"
#include "core/vm_internal.h"
#include "mem/corpus.h"
#include "mem/memmap.h"

/* Newer than the installed <linux/kvm.h> (Linux 6.1). */
#ifndef KVM_EXIT_MEMORY_FAULT
#define KVM_EXIT_MEMORY_FAULT 39
#endif

/* run->memory_fault, in the exit union where run->mmio starts (Linux 6.8+). */
struct kvm_memory_fault_exit {
	uint64_t flags;
	uint64_t gpa;
	uint64_t size;
};

_Static_assert(sizeof(((struct kvm_run *)0)->mmio) >= sizeof(struct kvm_memory_fault_exit),
	       "memory_fault lies within the exit union's mmio member");

struct kvm_vm {
	int fd;
	bool irqchip;	/* an in-kernel irqchip exists (irqfd works) */
};

struct kvm_vcpu {
	int fd;
	struct kvm_run *run;	/* shared with KVM; immediate_exit written by kickers */
	size_t run_size;
	bool unsettled;		/* the last exit was an access KVM completes on the next run */
};

static int kvm_sys_fd = -1;
static int kvm_sys_err;
static pthread_once_t kvm_once = PTHREAD_ONCE_INIT;

static void open_kvm(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	int version;

	if (fd < 0) {
		kvm_sys_err = -errno;
		return;
	}
	version = ioctl(fd, KVM_GET_API_VERSION, 0);
	if (version != KVM_API_VERSION) {
		close(fd);
		kvm_sys_err = -ENOTSUP;
		return;
	}
	kvm_sys_fd = fd;
}

int accel_kvm_system_fd(void)
{
	pthread_once(&kvm_once, open_kvm);
	return kvm_sys_fd >= 0 ? kvm_sys_fd : kvm_sys_err;
}

static struct kvm_vm *kvm_of(const struct vm *vm)
{
	return vm->accel_vm;
}

static struct kvm_vcpu *kvcpu_of(const struct vcpu *vcpu)
{
	return vcpu->accel_vcpu;
}

/* Memslot i is RAM region i; flags: KVM_MEM_LOG_DIRTY_PAGES or 0. */
static int register_ram(struct vm *vm, int fd, uint32_t flags)
{
	uint8_t *base = mem_phys_base(vm->gm);

	for (unsigned int i = 0; i < mem_nr_regions(vm->gm); i++) {
		struct kvm_userspace_memory_region mr = { .slot = i, .flags = flags };
		gpa_t gpa;
		uint64_t len;

		mem_region(vm->gm, i, &gpa, &len);
		mr.guest_phys_addr = gpa;
		mr.memory_size = len;
		mr.userspace_addr = (uint64_t)(uintptr_t)(base + gpa);
		if (ioctl(fd, KVM_SET_USER_MEMORY_REGION, &mr) < 0) {
			int err = errno;

			log_err("memslot %u (gpa 0x%llx, %llu bytes): %m", mr.slot,
				(unsigned long long)mr.guest_phys_addr,
				(unsigned long long)mr.memory_size);
			return -err;
		}
	}
	return 0;
}

/*
 * The content corpus (mem/corpus.h) in the slot after RAM's, never dirty
 * logged: read-only where KVM has such slots, so that a store exits as
 * MMIO; elsewhere (kvm-pvm may lack them) the host mapping's PROT_READ
 * refuses the store, which exits the same way there.
 */
static int register_corpus(struct vm *vm, int fd)
{
	struct kvm_userspace_memory_region mr = { .slot = mem_nr_regions(vm->gm) };
	struct mem_corpus c;

	if (!mem_corpus_get(vm->gm, &c))
		return 0;
	if (ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) > 0)
		mr.flags = KVM_MEM_READONLY;
	mr.guest_phys_addr = c.gpa;
	mr.memory_size = c.map_bytes;
	mr.userspace_addr = (uint64_t)(uintptr_t)(mem_phys_base(vm->gm) + c.gpa);
	if (ioctl(fd, KVM_SET_USER_MEMORY_REGION, &mr) < 0) {
		int err = errno;

		log_err("%s: corpus memslot (gpa 0x%llx, %llu bytes): %m", vm->name,
			(unsigned long long)mr.guest_phys_addr, (unsigned long long)mr.memory_size);
		return -err;
	}
	return 0;
}

/*
 * What a Linux kernel needs of the machine besides the in-kernel irqchip
 * (which it cannot do without: its interrupts, and the local APICs that
 * start the other vCPUs): the pages KVM on Intel keeps for the real-mode
 * code VMX cannot run (set before any vCPU exists; they cost nothing on
 * AMD), and the PIT, which Linux calibrates against and may use as its
 * first timer. Its speaker port (0x61) is KVM's too: the PIT's gate and
 * output are read there.
 */
static int linux_machine_init(struct vm *vm, struct kvm_vm *k)
{
	uint64_t identity = LAYOUT_LINUX_KVM_IDENTITY;
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };

	if (!k->irqchip) {
		log_err("%s: a Linux guest needs KVM's in-kernel irqchip, which this KVM refused",
			vm->name);
		return -ENOTSUP;
	}
	if (ioctl(k->fd, KVM_CHECK_EXTENSION, KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0 &&
	    ioctl(k->fd, KVM_SET_IDENTITY_MAP_ADDR, &identity) < 0) {
		int err = errno;

		log_err("%s: KVM_SET_IDENTITY_MAP_ADDR: %m", vm->name);
		return -err;
	}
	if (ioctl(k->fd, KVM_SET_TSS_ADDR, (unsigned long)LAYOUT_LINUX_KVM_TSS) < 0) {
		int err = errno;

		log_err("%s: KVM_SET_TSS_ADDR: %m", vm->name);
		return -err;
	}
	if (ioctl(k->fd, KVM_CREATE_PIT2, &pit) < 0) {
		int err = errno;

		log_err("%s: KVM_CREATE_PIT2: %m", vm->name);
		return -err;
	}
	return 0;
}

static int kvm_vm_init(struct vm *vm)
{
	int sys = accel_kvm_system_fd();
	struct kvm_vm *k;
	int ret;

	if (sys < 0) {
		log_err("cannot open /dev/kvm: %s", strerror(-sys));
		return sys;
	}
	k = kv_zalloc(sizeof(*k));
	if (!k)
		return -ENOMEM;
	/*
	 * Registering the VM's MMU notifier takes every lock of the address space and gives up
	 * with EINTR on any pending signal or task work, an io_uring completion included: the
	 * kernel expects the caller to try again.
	 */
	do
		k->fd = ioctl(sys, KVM_CREATE_VM, 0);
	while (k->fd < 0 && errno == EINTR);
	if (k->fd < 0) {
		ret = -errno;
		log_err("KVM_CREATE_VM: %m");
		kv_free(k);
		return ret;
	}
	vm->accel_vm = k;
	ret = register_ram(vm, k->fd, 0);
	if (!ret)
		ret = register_corpus(vm, k->fd);
	if (ret)
		return ret;
	/*
	 * An in-kernel irqchip lets virtio devices raise interrupts through
	 * irqfd (a Linux driver waits for them; the kvmem guest polls). It must
	 * exist before the vCPUs. Without one, devices fall back to no interrupts.
	 */
	if (ioctl(k->fd, KVM_CREATE_IRQCHIP, 0) == 0)
		k->irqchip = true;
	else
		log_debug("%s: no in-kernel irqchip: %m", vm->name);
	/* An arriving Linux guest needs the same machine as one that boots: its state is of it. */
	if (vm->linux_machine)
		return linux_machine_init(vm, k);
	return 0;
}

static void kvm_vm_destroy(struct vm *vm)
{
	struct kvm_vm *k = kvm_of(vm);

	if (!k)
		return;
	close(k->fd);
	kv_free(k);
	vm->accel_vm = NULL;
}

static int kvm_vm_boot(struct vm *vm)
{
	return boot_build_tables(vm->gm, vm->ncpus);
}

static uint64_t kvm_phys_offset(const struct vm *vm)
{
	(void)vm; /* the VMM's page tables map guest RAM identity */
	return 0;
}

static uint64_t kvm_mmio_call(const struct vm *vm)
{
	(void)vm; /* CPL3 loads and stores outside RAM exit as KVM_EXIT_MMIO */
	return 0;
}

static uint64_t kvm_tsc_khz(struct vm *vm)
{
	int khz = ioctl(kvcpu_of(vm->vcpus[0])->fd, KVM_GET_TSC_KHZ, 0);

	if (khz <= 0) {
		log_warn("%s: KVM_GET_TSC_KHZ: %m: the guest reads the VMM clock", vm->name);
		return 0;
	}
	return (uint64_t)khz;
}

/* KVM_GET_SUPPORTED_CPUID into *out (kv_free it): 0 or -errno. */
static int supported_cpuid(struct kvm_cpuid2 **out)
{
	int sys = accel_kvm_system_fd();
	struct kvm_cpuid2 *cpuid;
	int nent = 128, ret;

	if (sys < 0)
		return sys;
	for (;;) {
		cpuid = kv_zalloc(sizeof(*cpuid) + nent * sizeof(struct kvm_cpuid_entry2));
		if (!cpuid)
			return -ENOMEM;
		cpuid->nent = nent;
		if (ioctl(sys, KVM_GET_SUPPORTED_CPUID, cpuid) == 0)
			break;
		ret = -errno;
		kv_free(cpuid);
		if (ret != -E2BIG)
			return ret;
		nent *= 2;
	}
	*out = cpuid;
	return 0;
}

#define CPUID_1_ECX_TSC_DEADLINE (1u << 24)
#define CPUID_1_ECX_HYPERVISOR (1u << 31)

/*
 * What a Linux guest reads in CPUID besides what KVM supports: its own
 * APIC id (leaf 1 and the x2APIC topology leaves; KVM reports the host
 * CPU's, and the kernel checks them against its local APIC's), the
 * hypervisor bit, without which it never looks at KVM's leaves (kvm-clock,
 * paravirtual EOI and more are announced there), and the TSC deadline
 * timer KVM emulates when it says so, which spares the kernel calibrating
 * its local APIC timer.
 */
static void linux_cpuid(struct kvm_cpuid2 *cpuid, unsigned int apic_id)
{
	bool deadline = ioctl(accel_kvm_system_fd(), KVM_CHECK_EXTENSION,
			      KVM_CAP_TSC_DEADLINE_TIMER) > 0;

	for (unsigned int i = 0; i < cpuid->nent; i++) {
		struct kvm_cpuid_entry2 *e = &cpuid->entries[i];

		switch (e->function) {
		case 1:
			e->ebx = (e->ebx & 0x00ffffff) | apic_id << 24;
			e->ecx |= CPUID_1_ECX_HYPERVISOR | (deadline ? CPUID_1_ECX_TSC_DEADLINE : 0);
			break;
		case 0xb:
		case 0x1f:
			e->edx = apic_id;
			break;
		case 0x8000001e:
			e->eax = apic_id;
			break;
		}
	}
}

static int setup_cpuid(struct vcpu *vcpu, int vcpu_fd)
{
	struct kvm_cpuid2 *cpuid;
	int ret;

	ret = supported_cpuid(&cpuid);
	if (ret)
		return ret;
	if (vcpu->vm->linux_machine)
		linux_cpuid(cpuid, vcpu->index);
	ret = ioctl(vcpu_fd, KVM_SET_CPUID2, cpuid) < 0 ? -errno : 0;
	kv_free(cpuid);
	return ret;
}

/* CPUID.1:ECX.VMX[5] or CPUID.80000001h:ECX.SVM[2] of the CPU this VMM runs on. */
static bool cpu_has_vmx_or_svm(void)
{
	unsigned int a, b, c, d;

	if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 5)))
		return true;
	return __get_cpuid(0x80000001, &a, &b, &c, &d) && (c & (1u << 2));
}

int accel_kvm_is_pvm(char *why, size_t whylen)
{
	struct accel_cpuid_leaf *leaves;
	struct kvm_cpuid2 *cpuid;
	bool pvm;
	int ret;

	if (!cpu_has_vmx_or_svm()) {
		snprintf(why, whylen, "the CPU has neither VMX nor SVM");
		return 1;
	}
	ret = supported_cpuid(&cpuid);
	if (ret)
		return ret;
	leaves = kv_calloc(cpuid->nent ? cpuid->nent : 1, sizeof(*leaves));
	if (!leaves) {
		kv_free(cpuid);
		return -ENOMEM;
	}
	for (unsigned int i = 0; i < cpuid->nent; i++) {
		const struct kvm_cpuid_entry2 *e = &cpuid->entries[i];

		leaves[i] = (struct accel_cpuid_leaf){ .function = e->function, .eax = e->eax,
						       .ebx = e->ebx, .ecx = e->ecx,
						       .edx = e->edx };
	}
	pvm = accel_cpuid_is_pvm(leaves, cpuid->nent);
	if (pvm)
		snprintf(why, whylen, "its CPUID carries PVM's signature");
	kv_free(leaves);
	kv_free(cpuid);
	return pvm;
}

static int kvm_vcpu_init(struct vcpu *vcpu)
{
	struct kvm_vcpu *kc = kv_zalloc(sizeof(*kc));
	int mmap_size, ret;

	if (!kc)
		return -ENOMEM;
	kc->fd = ioctl(kvm_of(vcpu->vm)->fd, KVM_CREATE_VCPU, vcpu->index);
	if (kc->fd < 0) {
		ret = -errno;
		log_err("KVM_CREATE_VCPU %u: %m", vcpu->index);
		goto out_free;
	}
	mmap_size = ioctl(accel_kvm_system_fd(), KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size < (int)sizeof(struct kvm_run)) {
		ret = -EIO;
		goto out_close;
	}
	kc->run_size = (size_t)mmap_size;
	kc->run = mmap(NULL, kc->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, kc->fd, 0);
	if (kc->run == MAP_FAILED) {
		ret = -errno;
		goto out_close;
	}
	ret = setup_cpuid(vcpu, kc->fd);
	if (ret) {
		log_err("KVM_SET_CPUID2 on vcpu %u: %s", vcpu->index, strerror(-ret));
		goto out_unmap;
	}
	vcpu->accel_vcpu = kc;
	return 0;

out_unmap:
	munmap(kc->run, kc->run_size);
out_close:
	close(kc->fd);
out_free:
	kv_free(kc);
	return ret;
}

static void kvm_vcpu_destroy(struct vcpu *vcpu)
{
	struct kvm_vcpu *kc = kvcpu_of(vcpu);

	if (!kc)
		return;
	munmap(kc->run, kc->run_size);
	close(kc->fd);
	kv_free(kc);
	vcpu->accel_vcpu = NULL;
}

#define CR0_PE 0x1ULL
#define CR0_MP 0x2ULL
#define CR0_ET 0x10ULL
#define CR0_NE 0x20ULL
#define CR0_WP 0x10000ULL
#define CR0_PG 0x80000000ULL
#define CR4_PAE 0x20ULL
#define CR4_OSFXSR 0x200ULL
#define CR4_OSXMMEXCPT 0x400ULL
#define EFER_LME 0x100ULL
#define EFER_LMA 0x400ULL

static void set_seg(struct kvm_segment *s, uint16_t sel, uint8_t type, uint8_t dpl, bool code)
{
	memset(s, 0, sizeof(*s));
	s->selector = sel;
	s->base = 0;
	s->limit = 0xffffffff;
	s->type = type;
	s->present = 1;
	s->dpl = dpl;
	s->s = 1;
	s->g = 1;
	s->l = code;
	s->db = !code;
}

/* 64-bit mode at CPL0 on the tables boot_build_tables wrote. */
static void boot_sregs(struct kvm_sregs *s, unsigned int cpu)
{
	set_seg(&s->cs, ABI_SEL_KERNEL_CS, 0xb, 0, true);
	set_seg(&s->ds, ABI_SEL_KERNEL_DS, 0x3, 0, false);
	s->es = s->fs = s->gs = s->ss = s->ds;

	memset(&s->tr, 0, sizeof(s->tr));
	s->tr.selector = (uint16_t)(ABI_SEL_TSS0 + 16 * cpu);
	s->tr.base = boot_tss_gpa(cpu);
	s->tr.limit = BOOT_TSS_SIZE - 1;
	s->tr.type = 0xb; /* busy 64-bit TSS, as after ltr */
	s->tr.present = 1;

	memset(&s->ldt, 0, sizeof(s->ldt));
	s->ldt.type = 0x2;
	s->ldt.present = 1;
	s->ldt.unusable = 1;

	s->gdt.base = LAYOUT_GDT;
	s->gdt.limit = ABI_SEL_TSS0 + 16 * ABI_MAX_CPUS - 1;
	s->idt.base = LAYOUT_IDT;
	s->idt.limit = 256 * 16 - 1;

	s->cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
	s->cr3 = LAYOUT_PGTABLE;
	s->cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
	s->efer = EFER_LME | EFER_LMA;
}

static int kvm_vcpu_boot(struct vcpu *vcpu, const struct accel_entry *e)
{
	struct kvm_vcpu *kc = kvcpu_of(vcpu);
	struct kvm_sregs sregs;
	struct kvm_regs regs;

	if (ioctl(kc->fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	boot_sregs(&sregs, vcpu->index);
	memset(&regs, 0, sizeof(regs));
	regs.rip = e->rip;
	regs.rsp = e->kstack;
	regs.rdi = e->rdi;
	regs.rsi = e->rsi;
	regs.rdx = e->rdx;
	regs.rcx = e->rcx;
	regs.r8 = e->r8;
	regs.rflags = 0x2;
	/* With a local APIC, vCPUs above 0 would wait for an INIT/SIPI: start them all. */
	if (kvm_of(vcpu->vm)->irqchip) {
		struct kvm_mp_state mp = { .mp_state = KVM_MP_STATE_RUNNABLE };

		if (ioctl(kc->fd, KVM_SET_MP_STATE, &mp) < 0)
			return -errno;
	}
	if (ioctl(kc->fd, KVM_SET_SREGS, &sregs) < 0 || ioctl(kc->fd, KVM_SET_REGS, &regs) < 0) {
		int ret = -errno;

		log_err("setting up vcpu %u registers: %m", vcpu->index);
		return ret;
	}
	return 0;
}

static void linux_seg(struct kvm_segment *k, const struct linux_segment *s)
{
	*k = (struct kvm_segment){ .base = s->base, .limit = s->limit, .selector = s->selector,
				   .type = s->type, .present = s->present, .dpl = s->dpl,
				   .db = s->db, .s = s->s, .l = s->l, .g = s->g };
}

#define LAPIC_LVT0 0x350
#define LAPIC_LVT1 0x360
#define LAPIC_DM_NMI 0x400
#define LAPIC_DM_EXTINT 0x700

/*
 * Every local APIC as firmware leaves it: NMIs through LINT1, and on the
 * boot CPU the 8259 through LINT0 (virtual wire: what a kernel finds
 * before it sets up the IOAPIC); an application processor's LINT0 stays
 * masked, or it would take the 8259's interrupts too. Linux takes it from
 * there.
 */
static int linux_lapic(struct kvm_vcpu *kc, bool bsp)
{
	struct kvm_lapic_state la;
	uint32_t v;

	if (ioctl(kc->fd, KVM_GET_LAPIC, &la) < 0)
		return -errno;
	if (bsp) {
		v = LAPIC_DM_EXTINT;
		memcpy(&la.regs[LAPIC_LVT0], &v, sizeof(v));
	}
	v = LAPIC_DM_NMI;
	memcpy(&la.regs[LAPIC_LVT1], &v, sizeof(v));
	return ioctl(kc->fd, KVM_SET_LAPIC, &la) < 0 ? -errno : 0;
}

/*
 * vCPU 0 at the kernel's 64-bit entry in the state the loader planned;
 * the others wait for the INIT and SIPI the kernel sends them (KVM keeps
 * a vCPU in KVM_RUN until then), as a PC's application processors do.
 */
static int kvm_boot_linux(struct vm *vm, const struct linux_cpu_state *c)
{
	struct kvm_vcpu *kc = kvcpu_of(vm->vcpus[0]);
	struct kvm_sregs sregs;
	struct kvm_regs regs = { .rip = c->rip, .rsi = c->rsi, .rsp = c->rsp,
				 .rflags = c->rflags };

	for (unsigned int i = 0; i < vm->ncpus; i++) {
		struct kvm_vcpu *ki = kvcpu_of(vm->vcpus[i]);
		struct kvm_mp_state mp = { .mp_state = i ? KVM_MP_STATE_UNINITIALIZED
						       : KVM_MP_STATE_RUNNABLE };
		int ret = linux_lapic(ki, i == 0);

		if (!ret && ioctl(ki->fd, KVM_SET_MP_STATE, &mp) < 0)
			ret = -errno;
		if (ret) {
			log_err("%s: vcpu %u: local APIC or MP state: %s", vm->name, i,
				strerror(-ret));
			return ret;
		}
	}
	if (ioctl(kc->fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	linux_seg(&sregs.cs, &c->cs);
	linux_seg(&sregs.ds, &c->ds);
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	linux_seg(&sregs.tr, &c->tr);
	memset(&sregs.ldt, 0, sizeof(sregs.ldt));
	sregs.ldt.type = 0x2;
	sregs.ldt.present = 1;
	sregs.ldt.unusable = 1;
	sregs.gdt.base = c->gdt_base;
	sregs.gdt.limit = c->gdt_limit;
	sregs.idt.base = c->idt_base;
	sregs.idt.limit = c->idt_limit;
	sregs.cr0 = c->cr0;
	sregs.cr3 = c->cr3;
	sregs.cr4 = c->cr4;
	sregs.efer = c->efer;
	if (ioctl(kc->fd, KVM_SET_SREGS, &sregs) < 0 || ioctl(kc->fd, KVM_SET_REGS, &regs) < 0) {
		int ret = -errno;

		log_err("%s: vcpu 0: the kernel's entry registers: %m", vm->name);
		return ret;
	}
	return 0;
}

/*
 * An MMIO or port access is complete (a read's value in its register, the
 * instruction retired) only once KVM_RUN runs again: run with immediate_exit
 * set, which completes it and returns before the guest runs (KVM's API for
 * saving a vCPU's state).
 */
static void kvm_vcpu_settle(struct vcpu *vcpu)
{
	struct kvm_vcpu *kc = kvcpu_of(vcpu);

	if (!kc->unsettled)
		return;
	__atomic_store_n(&kc->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	if (ioctl(kc->fd, KVM_RUN, 0) == 0 || (errno != EINTR && errno != EAGAIN))
		log_warn_ratelimited("%s: vcpu %u: completing an access before a pause: %s",
				     vcpu->vm->name, vcpu->index, strerror(errno));
	kc->unsettled = false;
}

static void kvm_set_kick(struct vcpu *vcpu, bool on)
{
	__atomic_store_n(&kvcpu_of(vcpu)->run->immediate_exit, on ? 1 : 0, __ATOMIC_SEQ_CST);
}

static int kvm_vcpu_run(struct vcpu *vcpu, struct accel_exit *exit)
{
	struct kvm_vcpu *kc = kvcpu_of(vcpu);
	struct kvm_run *run = kc->run;
	const char *name = vcpu->vm->name;

	if (ioctl(kc->fd, KVM_RUN, 0) < 0) {
		int err = errno;

		if (err == EINTR || err == EAGAIN)
			return -EINTR;
		/*
		 * Hardware virtualization cannot map a guest access to the host
		 * memory behind it (kvm-pvm would exit as MMIO instead): a host
		 * mapping the VMM left read-only or gone, never the guest's doing.
		 * Newer kernels say where.
		 */
		if (err == EFAULT && run->exit_reason == KVM_EXIT_MEMORY_FAULT) {
			struct kvm_memory_fault_exit mf;

			memcpy(&mf, &run->mmio, sizeof(mf));
			log_err("%s: vcpu %u: KVM cannot map guest memory at gpa 0x%llx (+%llu "
				"bytes, flags 0x%llx) to the host", name, vcpu->index,
				(unsigned long long)mf.gpa, (unsigned long long)mf.size,
				(unsigned long long)mf.flags);
			return -EFAULT;
		}
		log_err("%s: vcpu %u: KVM_RUN: %s", name, vcpu->index, strerror(err));
		return -err;
	}
	exit->reason = ACCEL_EXIT_CRASH;
	kc->unsettled = run->exit_reason == KVM_EXIT_MMIO || run->exit_reason == KVM_EXIT_IO;
	switch (run->exit_reason) {
	case KVM_EXIT_MMIO:
		exit->reason = ACCEL_EXIT_MMIO;
		exit->mmio.addr = run->mmio.phys_addr;
		exit->mmio.data = run->mmio.data;
		exit->mmio.len = run->mmio.len;
		exit->mmio.is_write = run->mmio.is_write;
		break;
	case KVM_EXIT_IO:
		/* CPL0 code only (a Linux guest's): at CPL3 port I/O is a #GP. */
		exit->reason = ACCEL_EXIT_PIO;
		exit->pio.port = run->io.port;
		exit->pio.data = (uint8_t *)run + run->io.data_offset;
		exit->pio.size = run->io.size;
		exit->pio.count = run->io.count;
		exit->pio.is_write = run->io.direction == KVM_EXIT_IO_OUT;
		break;
	case KVM_EXIT_SHUTDOWN:
		log_err("%s: vcpu %u: guest triple fault (shutdown)", name, vcpu->index);
		break;
	case KVM_EXIT_HLT:
		log_err("%s: vcpu %u: guest halted at CPL0", name, vcpu->index);
		break;
	case KVM_EXIT_INTERNAL_ERROR:
		log_err("%s: vcpu %u: KVM internal error, suberror %u", name, vcpu->index,
			run->internal.suberror);
		break;
	case KVM_EXIT_FAIL_ENTRY:
		log_err("%s: vcpu %u: VM entry failed, reason 0x%llx", name, vcpu->index,
			(unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		break;
	default:
		log_err("%s: vcpu %u: unexpected exit reason %u", name, vcpu->index,
			run->exit_reason);
		break;
	}
	return 0;
}

/*
 * The CPL0 stubs (core/boot.c) left a struct boot_exc_frame on the vCPU's
 * CPL0 stack and wrote ABI_SYS_EXCEPTION: read it back.
 */
static int kvm_vcpu_exception(struct vcpu *vcpu, struct accel_exception *e)
{
	struct kvm_vcpu *kc = kvcpu_of(vcpu);
	struct boot_exc_frame f;
	struct kvm_sregs sregs;
	struct kvm_regs regs;

	if (ioctl(kc->fd, KVM_GET_REGS, &regs) < 0 || ioctl(kc->fd, KVM_GET_SREGS, &sregs) < 0) {
		log_err("%s: vcpu %u: guest exception, registers unreadable: %m", vcpu->vm->name,
			vcpu->index);
		return -EIO;
	}
	if (mem_read(vcpu->vm->gm, regs.rsp, &f, sizeof(f))) {
		log_err("%s: vcpu %u: guest exception, frame at rsp 0x%llx unreadable",
			vcpu->vm->name, vcpu->index, (unsigned long long)regs.rsp);
		return -EFAULT;
	}
	memset(e, 0, sizeof(*e));
	e->vector = (unsigned int)f.vector;
	e->error_code = f.error_code;
	e->rip = f.rip;
	e->address = sregs.cr2;
	e->rsp = f.rsp;
	e->cpl = (unsigned int)(f.cs & 3);
	return 0;
}

static int kvm_ioeventfd(struct vm *vm, gpa_t addr, unsigned int len, int fd, bool assign)
{
	struct kvm_ioeventfd io = {
		.addr = addr,
		.len = len,
		.fd = fd,
		.flags = assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN,
	};

	return ioctl(kvm_of(vm)->fd, KVM_IOEVENTFD, &io) < 0 ? -errno : 0;
}

static int kvm_irqfd(struct vm *vm, uint32_t gsi, int fd, bool assign)
{
	struct kvm_irqfd irqfd = {
		.fd = (uint32_t)fd,
		.gsi = gsi,
		.flags = assign ? 0 : KVM_IRQFD_FLAG_DEASSIGN,
	};

	/* KVM_IRQFD needs an in-kernel irqchip; the kvmem guest polls instead. */
	if (!kvm_of(vm)->irqchip)
		return -ENOTSUP;
	return ioctl(kvm_of(vm)->fd, KVM_IRQFD, &irqfd) < 0 ? -errno : 0;
}

static int kvm_irq_line(struct vm *vm, uint32_t gsi, bool level)
{
	struct kvm_irq_level irq = { .irq = gsi, .level = level };

	if (!kvm_of(vm)->irqchip)
		return -ENOTSUP;
	return ioctl(kvm_of(vm)->fd, KVM_IRQ_LINE, &irq) < 0 ? -errno : 0;
}

/*
 * KVM's dirty log: a memslot's flag, then one bitmap per slot fetched and
 * cleared in one call (KVM write-protects the pages again). Keyed by guest
 * frame, so the MMU notifier's zaps (dedup's remaps, reclaim's drops)
 * neither lose a write nor make one up: the write after the zap faults in
 * again and is logged.
 */
static int kvm_dirty_log(struct vm *vm, bool on)
{
	return register_ram(vm, kvm_of(vm)->fd, on ? KVM_MEM_LOG_DIRTY_PAGES : 0);
}

static int kvm_dirty_collect(struct vm *vm, uint64_t *bitmap)
{
	for (unsigned int i = 0; i < mem_nr_regions(vm->gm); i++) {
		gpa_t gpa;
		uint64_t len, pages, first, *slot;
		struct kvm_dirty_log d = { .slot = i };

		mem_region(vm->gm, i, &gpa, &len);
		pages = len / LAYOUT_PAGE_SIZE;
		first = (uint64_t)mem_page_index(vm->gm, gpa);
		slot = kv_calloc((pages + 63) / 64, sizeof(*slot));
		if (!slot)
			return -ENOMEM;
		d.dirty_bitmap = slot;
		if (ioctl(kvm_of(vm)->fd, KVM_GET_DIRTY_LOG, &d) < 0) {
			int err = -errno;

			kv_free(slot);
			return err;
		}
		for (uint64_t w = 0; w < (pages + 63) / 64; w++)
			for (uint64_t v = slot[w]; v; v &= v - 1) {
				uint64_t idx = first + w * 64 + (uint64_t)__builtin_ctzll(v);

				bitmap[idx / 64] |= 1ULL << (idx % 64);
			}
		kv_free(slot);
	}
	return 0;
}

/* --- vCPU state, for migration --- */

/*
 * A vCPU's state as it travels: a header, then items (u32 id, u32 length,
 * the structure KVM reads and writes), each of the exact size of this
 * kernel's structure. Everything KVM holds for a vCPU: the Linux-guest
 * work needs every one.
 */
#define KVM_STATE_MAGIC 0x4d56434bu /* "KCVM" */
#define KVM_STATE_VERSION 1

enum kvm_item {
	ITEM_REGS = 1,
	ITEM_SREGS,
	ITEM_XSAVE,
	ITEM_FPU,
	ITEM_XCRS,
	ITEM_MSRS,
	ITEM_LAPIC,
	ITEM_EVENTS,
	ITEM_DEBUGREGS,
	ITEM_MP_STATE,
	ITEM_MAX
};

/*
 * The MSRs a vCPU's software state lives in beyond sregs (EFER is there):
 * system-call entry, the kernel GS base, the TSC and its adjust and aux,
 * PAT, speculation control, the local APIC timer's TSC deadline (a Linux
 * guest's timer: after the TSC, which it counts against), and kvmclock
 * with the other paravirtual MSRs, async PF's interrupt vector before its
 * enable (enabling it queues a wake-up delivered at that vector). Those
 * this KVM does not offer are left out when saving; they are set in this
 * order.
 */
static const uint32_t saved_msrs[] = {
	0x00000174, 0x00000175, 0x00000176,		/* SYSENTER_CS/ESP/EIP */
	0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, /* STAR LSTAR CSTAR FMASK */
	0xc0000102, 0xc0000103,				/* KERNEL_GS_BASE, TSC_AUX */
	0x00000010, 0x0000003b,				/* TSC, TSC_ADJUST */
	0x00000277, 0x000001a0,				/* PAT, MISC_ENABLE */
	0x00000048, 0x000006e0,				/* SPEC_CTRL, TSC_DEADLINE */
	0x4b564d00, 0x4b564d01,				/* kvmclock system time, wall clock */
	0x4b564d06, 0x4b564d02,				/* async PF: vector, enable */
	0x4b564d03, 0x4b564d04, 0x4b564d05,		/* steal time, PV EOI, poll control */
};

#define MSR_IA32_TSC 0x10
#define MAX_MSRS (sizeof(saved_msrs) / sizeof(saved_msrs[0]))

/*
 * A struct kvm_msrs with room for MAX_MSRS entries, spelled out: a struct
 * ending in a flexible array may not be followed by more in another
 * (clang's -Wgnu-variable-sized-type-not-at-end).
 */
struct msr_list {
	uint32_t nmsrs;
	uint32_t pad;
	struct kvm_msr_entry e[MAX_MSRS];
};
static_assert(offsetof(struct msr_list, e) == offsetof(struct kvm_msrs, entries),
	      "msr_list is a struct kvm_msrs");

struct blob {
	uint8_t *p;
	size_t len, cap;
	bool full;
};

static void put_item(struct blob *b, uint32_t id, const void *data, uint32_t len)
{
	if (b->len + 8 + len > b->cap) {
		b->full = true;
		return;
	}
	memcpy(b->p + b->len, &id, 4);
	memcpy(b->p + b->len + 4, &len, 4);
	memcpy(b->p + b->len + 8, data, len);
	b->len += 8 + len;
}

/*
 * The next item of a blob at *off: 0 with its id, length and data, 1 at the
 * end, -EINVAL when what is left is not a whole item.
 */
static int next_item(const uint8_t *p, size_t len, size_t *off, uint32_t *id, uint32_t *n,
		     const uint8_t **data)
{
	if (*off == len)
		return 1;
	if (len - *off < 8)
		return -EINVAL;
	memcpy(id, p + *off, 4);
	memcpy(n, p + *off + 4, 4);
	*off += 8;
	if (*n > len - *off)
		return -EINVAL;
	*data = p + *off;
	*off += *n;
	return 0;
}

/* The header a blob starts with: its items start at *off. False when it is not magic's. */
static bool blob_header_ok(const uint8_t *p, size_t len, uint32_t magic, size_t *off)
{
	uint32_t hdr[2];

	if (len < sizeof(hdr))
		return false;
	memcpy(hdr, p, sizeof(hdr));
	*off = sizeof(hdr);
	return hdr[0] == magic && hdr[1] == KVM_STATE_VERSION;
}

/* Start a blob with magic's header (too small a buffer: full, as put_item says). */
static void put_header(struct blob *b, uint32_t magic)
{
	uint32_t hdr[2] = { magic, KVM_STATE_VERSION };

	if (b->cap < sizeof(hdr)) {
		b->full = true;
		return;
	}
	memcpy(b->p, hdr, sizeof(hdr));
	b->len = sizeof(hdr);
}

/* Read MSR index into *val on vCPU fd: 0 or -errno. */
static int get_msr(int fd, uint32_t index, uint64_t *val)
{
	struct msr_list m = { .nmsrs = 1, .e[0].index = index };

	if (ioctl(fd, KVM_GET_MSRS, &m) != 1)
		return -EIO;
	*val = m.e[0].data;
	return 0;
}

static int kvm_vcpu_save(struct vcpu *vcpu, void *buf, size_t cap)
{
	struct kvm_vcpu *kc = kvcpu_of(vcpu);
	struct blob b = { .p = buf, .cap = cap };
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_xsave *xs = kv_zalloc(sizeof(*xs));
	struct kvm_fpu fpu;
	struct kvm_xcrs xcrs;
	struct msr_list m = { 0 };
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events ev;
	struct kvm_debugregs dr;
	struct kvm_mp_state mp;
	int ret = 0;

	if (!xs)
		return -ENOMEM;
	put_header(&b, KVM_STATE_MAGIC);
	if (ioctl(kc->fd, KVM_GET_REGS, &regs) < 0 || ioctl(kc->fd, KVM_GET_SREGS, &sregs) < 0 ||
	    ioctl(kc->fd, KVM_GET_VCPU_EVENTS, &ev) < 0 || ioctl(kc->fd, KVM_GET_MP_STATE, &mp) < 0) {
		ret = -errno;
		goto out;
	}
	put_item(&b, ITEM_REGS, &regs, sizeof(regs));
	put_item(&b, ITEM_SREGS, &sregs, sizeof(sregs));
	/* XSAVE holds the x87 and SSE state and more; the FPU call is for CPUs without it. */
	if (ioctl(kc->fd, KVM_GET_XSAVE, xs) == 0) {
		put_item(&b, ITEM_XSAVE, xs, sizeof(*xs));
		if (ioctl(kc->fd, KVM_GET_XCRS, &xcrs) == 0)
			put_item(&b, ITEM_XCRS, &xcrs, sizeof(xcrs));
	} else if (ioctl(kc->fd, KVM_GET_FPU, &fpu) == 0) {
		put_item(&b, ITEM_FPU, &fpu, sizeof(fpu));
	} else {
		ret = -errno;
		goto out;
	}
	for (size_t i = 0; i < MAX_MSRS; i++) {
		uint64_t v;

		if (!get_msr(kc->fd, saved_msrs[i], &v)) {
			m.e[m.nmsrs].index = saved_msrs[i];
			m.e[m.nmsrs++].data = v;
		}
	}
	put_item(&b, ITEM_MSRS, &m,
		 (uint32_t)(offsetof(struct msr_list, e) + m.nmsrs * sizeof(m.e[0])));
	if (kvm_of(vcpu->vm)->irqchip) {
		if (ioctl(kc->fd, KVM_GET_LAPIC, &lapic) < 0) {
			ret = -errno;
			goto out;
		}
		put_item(&b, ITEM_LAPIC, &lapic, sizeof(lapic));
	}
	put_item(&b, ITEM_EVENTS, &ev, sizeof(ev));
	if (ioctl(kc->fd, KVM_GET_DEBUGREGS, &dr) == 0)
		put_item(&b, ITEM_DEBUGREGS, &dr, sizeof(dr));
	put_item(&b, ITEM_MP_STATE, &mp, sizeof(mp));
	ret = b.full ? -ENOSPC : (int)b.len;
out:
	kv_free(xs);
	return ret;
}

/* The size each item must have here: this kernel's structure. */
static uint32_t item_size(uint32_t id, const uint8_t *data, uint32_t len)
{
	switch (id) {
	case ITEM_REGS:
		return sizeof(struct kvm_regs);
	case ITEM_SREGS:
		return sizeof(struct kvm_sregs);
	case ITEM_XSAVE:
		return sizeof(struct kvm_xsave);
	case ITEM_FPU:
		return sizeof(struct kvm_fpu);
	case ITEM_XCRS:
		return sizeof(struct kvm_xcrs);
	case ITEM_MSRS: {
		struct kvm_msrs h;

		if (len < sizeof(h))
			return UINT32_MAX;
		memcpy(&h, data, sizeof(h));
		return h.nmsrs <= MAX_MSRS ? (uint32_t)(sizeof(h) + h.nmsrs * sizeof(struct kvm_msr_entry))
					   : UINT32_MAX;
	}
	case ITEM_LAPIC:
		return sizeof(struct kvm_lapic_state);
	case ITEM_EVENTS:
		return sizeof(struct kvm_vcpu_events);
	case ITEM_DEBUGREGS:
		return sizeof(struct kvm_debugregs);
	case ITEM_MP_STATE:
		return sizeof(struct kvm_mp_state);
	}
	return UINT32_MAX;
}

/* Only MSRs kvmem saves: the list is ours, not the peer's choice. */
static bool msrs_ok(const uint8_t *data, uint32_t len)
{
	struct msr_list m;

	memcpy(&m, data, len);
	for (uint32_t i = 0; i < m.nmsrs; i++) {
		bool known = false;

		for (size_t k = 0; k < MAX_MSRS; k++)
			known |= m.e[i].index == saved_msrs[k];
		if (!known)
			return false;
	}
	return true;
}

static const unsigned long set_ioctl[ITEM_MAX] = {
	[ITEM_REGS] = KVM_SET_REGS,	      [ITEM_SREGS] = KVM_SET_SREGS,
	[ITEM_XSAVE] = KVM_SET_XSAVE,	      [ITEM_FPU] = KVM_SET_FPU,
	[ITEM_XCRS] = KVM_SET_XCRS,	      [ITEM_MSRS] = KVM_SET_MSRS,
	[ITEM_LAPIC] = KVM_SET_LAPIC,	      [ITEM_EVENTS] = KVM_SET_VCPU_EVENTS,
	[ITEM_DEBUGREGS] = KVM_SET_DEBUGREGS, [ITEM_MP_STATE] = KVM_SET_MP_STATE,
};

/*
 * Checked whole before anything is set: every item known, once, of its
 * size here, inside the blob, and the ones a vCPU cannot run without
 * there. KVM checks the values themselves (segments, control registers)
 * as it does for any VMM; a guest state it takes runs inside this VM only.
 */
static int kvm_vcpu_load(struct vcpu *vcpu, const void *buf, size_t len)
{
	struct kvm_vcpu *kc = kvcpu_of(vcpu);
	const uint8_t *p = buf;
	const uint8_t *item[ITEM_MAX] = { NULL };
	uint32_t ilen[ITEM_MAX] = { 0 };
	/*
	 * Order matters: sregs (mode, and the APIC base) before regs, the local
	 * APIC before the MSRs (KVM takes a TSC deadline only in the timer mode
	 * the APIC's state sets, and drops it otherwise), MP state last.
	 */
	static const uint32_t order[] = { ITEM_SREGS, ITEM_REGS, ITEM_XSAVE, ITEM_FPU,
					  ITEM_XCRS, ITEM_LAPIC, ITEM_MSRS, ITEM_EVENTS,
					  ITEM_DEBUGREGS, ITEM_MP_STATE };
	size_t off;

	if (!blob_header_ok(p, len, KVM_STATE_MAGIC, &off))
		return -EINVAL;
	for (;;) {
		const uint8_t *data;
		uint32_t id, n;
		int r = next_item(p, len, &off, &id, &n, &data);

		if (r > 0)
			break;
		if (r || id == 0 || id >= ITEM_MAX || item[id] || item_size(id, data, n) != n)
			return -EINVAL;
		item[id] = data;
		ilen[id] = n;
	}
	if (!item[ITEM_REGS] || !item[ITEM_SREGS] || !item[ITEM_MP_STATE] ||
	    (!item[ITEM_XSAVE] && !item[ITEM_FPU]) ||
	    (item[ITEM_LAPIC] && !kvm_of(vcpu->vm)->irqchip) ||
	    (item[ITEM_MSRS] && !msrs_ok(item[ITEM_MSRS], ilen[ITEM_MSRS])))
		return -EINVAL;
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
		uint32_t id = order[i];
		/* Aligned copies: KVM's structures are read in place. */
		uint8_t *copy;
		int r;

		if (!item[id])
			continue;
		copy = kv_zalloc(ilen[id] + 16);
		if (!copy)
			return -ENOMEM;
		memcpy(copy, item[id], ilen[id]);
		r = ioctl(kc->fd, set_ioctl[id], copy);
		/* KVM_SET_MSRS returns how many it set: all or the state is refused. */
		if (id == ITEM_MSRS && r >= 0 && (uint32_t)r != ((struct kvm_msrs *)copy)->nmsrs)
			r = -1, errno = EINVAL;
		kv_free(copy);
		if (r < 0)
			return errno == EFAULT ? -EINVAL : -errno;
	}
	return 0;
}

/*
 * The machine: the in-kernel irqchip's two PICs and IOAPIC where it exists,
 * the PIT where one was made, and kvmclock's clock. Items as a vCPU's, ids
 * of their own.
 */
enum kvm_machine_item {
	MACHINE_PIC_MASTER = 1,
	MACHINE_PIC_SLAVE,
	MACHINE_IOAPIC,
	MACHINE_PIT,
	MACHINE_CLOCK,
	MACHINE_MAX
};

#define KVM_MACHINE_MAGIC 0x4d4d564bu /* "KVMM" */

static int kvm_machine_save(struct vm *vm, void *buf, size_t cap)
{
	struct kvm_vm *k = kvm_of(vm);
	struct blob b = { .p = buf, .cap = cap };
	struct kvm_clock_data clock = { 0 };
	struct kvm_pit_state2 pit;

	put_header(&b, KVM_MACHINE_MAGIC);
	if (k->irqchip) {
		for (uint32_t chip = 0; chip < 3; chip++) {
			struct kvm_irqchip ic = { .chip_id = chip };

			if (ioctl(k->fd, KVM_GET_IRQCHIP, &ic) < 0)
				return -errno;
			put_item(&b, MACHINE_PIC_MASTER + chip, &ic, sizeof(ic));
		}
	}
	if (ioctl(k->fd, KVM_GET_PIT2, &pit) == 0)
		put_item(&b, MACHINE_PIT, &pit, sizeof(pit));
	if (ioctl(k->fd, KVM_GET_CLOCK, &clock) == 0)
		put_item(&b, MACHINE_CLOCK, &clock, sizeof(clock));
	return b.full ? -ENOSPC : (int)b.len;
}

static int kvm_machine_load(struct vm *vm, const void *buf, size_t len)
{
	static const uint32_t size[MACHINE_MAX] = {
		[MACHINE_PIC_MASTER] = sizeof(struct kvm_irqchip),
		[MACHINE_PIC_SLAVE] = sizeof(struct kvm_irqchip),
		[MACHINE_IOAPIC] = sizeof(struct kvm_irqchip),
		[MACHINE_PIT] = sizeof(struct kvm_pit_state2),
		[MACHINE_CLOCK] = sizeof(struct kvm_clock_data),
	};
	struct kvm_vm *k = kvm_of(vm);
	const uint8_t *p = buf;
	size_t off;

	if (!blob_header_ok(p, len, KVM_MACHINE_MAGIC, &off))
		return -EINVAL;
	for (;;) {
		const uint8_t *data;
		uint32_t id, n;
		int r = next_item(p, len, &off, &id, &n, &data);

		if (r > 0)
			break;
		if (r || id == 0 || id >= MACHINE_MAX || n != size[id])
			return -EINVAL;
		if (id == MACHINE_CLOCK) {
			struct kvm_clock_data c;

			memcpy(&c, data, n);
			/* Only the clock: flags and the host-time fields are this host's. */
			c = (struct kvm_clock_data){ .clock = c.clock };
			r = ioctl(k->fd, KVM_SET_CLOCK, &c);
		} else if (id == MACHINE_PIT) {
			struct kvm_pit_state2 pit;

			memcpy(&pit, data, n);
			r = ioctl(k->fd, KVM_SET_PIT2, &pit);
		} else {
			struct kvm_irqchip ic;

			if (!k->irqchip)
				return -EINVAL;
			memcpy(&ic, data, n);
			/* The chip the item names, not the one the peer wrote in it. */
			if (ic.chip_id != id - MACHINE_PIC_MASTER)
				return -EINVAL;
			r = ioctl(k->fd, KVM_SET_IRQCHIP, &ic);
		}
		if (r < 0)
			return errno == EFAULT || errno == ENXIO ? -EINVAL : -errno;
	}
	return 0;
}

static uint64_t kvm_guest_tsc(struct vm *vm)
{
	uint64_t tsc = 0;

	if (get_msr(kvcpu_of(vm->vcpus[0])->fd, MSR_IA32_TSC, &tsc))
		log_warn("%s: reading the guest's TSC failed", vm->name);
	return tsc;
}

/*
 * What a vCPU's thread asks of KVM: run, settle, read a reported
 * exception's registers, and drive a Linux guest's UART interrupt line
 * from its port exits.
 */
const unsigned long accel_kvm_vcpu_ioctls[] = { KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS,
						KVM_IRQ_LINE };
const size_t accel_kvm_nr_vcpu_ioctls = ARRAY_SIZE(accel_kvm_vcpu_ioctls);

/* Every request above, whichever thread makes it (add a new one here too). */
const unsigned long accel_kvm_ioctls[] = {
	KVM_GET_API_VERSION, KVM_CHECK_EXTENSION, KVM_GET_VCPU_MMAP_SIZE,
	KVM_GET_SUPPORTED_CPUID, KVM_CREATE_VM, KVM_CREATE_IRQCHIP, KVM_CREATE_VCPU,
	KVM_SET_USER_MEMORY_REGION, KVM_IOEVENTFD, KVM_IRQFD, KVM_GET_DIRTY_LOG,
	KVM_GET_TSC_KHZ, KVM_SET_CPUID2, KVM_RUN,
	KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS, KVM_SET_SREGS,
	KVM_GET_MSRS, KVM_SET_MSRS, KVM_GET_VCPU_EVENTS, KVM_SET_VCPU_EVENTS,
	KVM_GET_MP_STATE, KVM_SET_MP_STATE, KVM_GET_XSAVE, KVM_SET_XSAVE,
	KVM_GET_XCRS, KVM_SET_XCRS, KVM_GET_FPU, KVM_SET_FPU,
	KVM_GET_LAPIC, KVM_SET_LAPIC, KVM_GET_DEBUGREGS, KVM_SET_DEBUGREGS,
	KVM_GET_IRQCHIP, KVM_SET_IRQCHIP, KVM_GET_PIT2, KVM_SET_PIT2,
	KVM_GET_CLOCK, KVM_SET_CLOCK,
	KVM_CREATE_PIT2, KVM_SET_TSS_ADDR, KVM_SET_IDENTITY_MAP_ADDR, KVM_IRQ_LINE,
};
const size_t accel_kvm_nr_ioctls = ARRAY_SIZE(accel_kvm_ioctls);

const struct accel_ops accel_kvm_ops = {
	.name = "kvm",
	.exec_ram = false,
	.vcpu_sandbox = SANDBOX_VCPU_KVM,
	.vm_init = kvm_vm_init,
	.vm_destroy = kvm_vm_destroy,
	.vm_boot = kvm_vm_boot,
	.phys_offset = kvm_phys_offset,
	.mmio_call = kvm_mmio_call,
	.tsc_khz = kvm_tsc_khz,
	.vcpu_init = kvm_vcpu_init,
	.vcpu_destroy = kvm_vcpu_destroy,
	.vcpu_boot = kvm_vcpu_boot,
	.vcpu_run = kvm_vcpu_run,
	.set_kick = kvm_set_kick,
	.vcpu_exception = kvm_vcpu_exception,
	.ioeventfd = kvm_ioeventfd,
	.irqfd = kvm_irqfd,
	.irq_line = kvm_irq_line,
	.dirty_log = kvm_dirty_log,
	.dirty_collect = kvm_dirty_collect,
	.vcpu_save = kvm_vcpu_save,
	.vcpu_load = kvm_vcpu_load,
	.guest_tsc = kvm_guest_tsc,
	.machine_save = kvm_machine_save,
	.machine_load = kvm_machine_load,
	.vcpu_settle = kvm_vcpu_settle,
	.boot_linux = kvm_boot_linux,
};
