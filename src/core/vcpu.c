/* SPDX-License-Identifier: MIT */
/*
 * The vCPU thread: KVM_RUN loop and exit dispatch. Lock order: vm->lock,
 * then vcpu->lock (vcpu_kick takes only vcpu->lock).
 *
 * Kicks use KVM's immediate_exit: the kicker sets its request in the VM,
 * then immediate_exit = 1, then sends SIGUSR1. The loop clears
 * immediate_exit before it looks at requests, so a kick that lands between
 * that look and KVM_RUN makes KVM_RUN return at once.
 */
#define LOG_TAG "vcpu"
#include "core/vcpu.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/boot.h"
#include "core/log.h"
#include "core/thread.h"
#include "core/vm_internal.h"

#define VCPU_MAX_SLEEP_NS 1000000000ULL

struct vcpu {
	struct vm *vm;		/* owner, immutable */
	unsigned int index;	/* immutable */
	int fd;			/* KVM vCPU fd */
	struct kvm_run *run;	/* shared with KVM; immediate_exit written by kickers */
	size_t run_size;
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;	/* guards woken */
	pthread_cond_t cond;
	bool woken;		/* a kick arrived while (or before) sleeping */
	bool exited;		/* the thread is past its last use of itself: no more signals */
};

static void kick_handler(int sig)
{
	(void)sig; /* its only job is to interrupt KVM_RUN */
}

static pthread_once_t kick_once = PTHREAD_ONCE_INIT;

static void install_kick_handler(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler;
	/* KVM_RUN still returns EINTR (it is never restarted); other calls go on. */
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
}

static int setup_cpuid(struct vcpu *vcpu)
{
	int kvm = vm_kvm_system_fd();
	struct kvm_cpuid2 *cpuid;
	int nent = 128, ret;

	for (;;) {
		cpuid = kv_zalloc(sizeof(*cpuid) + nent * sizeof(struct kvm_cpuid_entry2));
		if (!cpuid)
			return -ENOMEM;
		cpuid->nent = nent;
		if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) == 0)
			break;
		ret = -errno;
		kv_free(cpuid);
		if (ret != -E2BIG)
			return ret;
		nent *= 2;
	}
	ret = ioctl(vcpu->fd, KVM_SET_CPUID2, cpuid) < 0 ? -errno : 0;
	kv_free(cpuid);
	return ret;
}

int vcpu_create(struct vm *vm, unsigned int index, struct vcpu **out)
{
	struct vcpu *vcpu;
	int mmap_size, ret;

	pthread_once(&kick_once, install_kick_handler);
	vcpu = kv_zalloc(sizeof(*vcpu));
	if (!vcpu)
		return -ENOMEM;
	vcpu->vm = vm;
	vcpu->index = index;
	pthread_mutex_init(&vcpu->lock, NULL);
	{
		pthread_condattr_t ca;

		/* vcpu_sleep computes CLOCK_MONOTONIC deadlines. */
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&vcpu->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	vcpu->fd = ioctl(vm->fd, KVM_CREATE_VCPU, index);
	if (vcpu->fd < 0) {
		ret = -errno;
		log_err("KVM_CREATE_VCPU %u: %m", index);
		goto out_free;
	}
	mmap_size = ioctl(vm_kvm_system_fd(), KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size < (int)sizeof(struct kvm_run)) {
		ret = -EIO;
		goto out_close;
	}
	vcpu->run_size = (size_t)mmap_size;
	vcpu->run = mmap(NULL, vcpu->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, 0);
	if (vcpu->run == MAP_FAILED) {
		ret = -errno;
		goto out_close;
	}
	ret = setup_cpuid(vcpu);
	if (ret) {
		log_err("KVM_SET_CPUID2 on vcpu %u: %s", index, strerror(-ret));
		goto out_unmap;
	}
	*out = vcpu;
	return 0;

out_unmap:
	munmap(vcpu->run, vcpu->run_size);
out_close:
	close(vcpu->fd);
out_free:
	kv_free(vcpu);
	return ret;
}

void vcpu_kick(struct vcpu *vcpu)
{
	pthread_mutex_lock(&vcpu->lock);
	vcpu->woken = true;
	pthread_cond_signal(&vcpu->cond);
	__atomic_store_n(&vcpu->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	/*
	 * Under the lock: the thread marks itself exited under it before it
	 * returns, so we never signal a thread that may already be joined.
	 */
	if (vcpu->started && !vcpu->exited)
		pthread_kill(vcpu->thread, SIGUSR1);
	pthread_mutex_unlock(&vcpu->lock);
}

void vcpu_sleep(struct vcpu *vcpu, uint64_t ns)
{
	struct timespec dl;

	if (ns > VCPU_MAX_SLEEP_NS)
		ns = VCPU_MAX_SLEEP_NS;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += (time_t)(ns / 1000000000ULL);
	dl.tv_nsec += (long)(ns % 1000000000ULL);
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&vcpu->lock);
	while (!vcpu->woken) {
		if (pthread_cond_timedwait(&vcpu->cond, &vcpu->lock, &dl) == ETIMEDOUT)
			break;
	}
	vcpu->woken = false;
	pthread_mutex_unlock(&vcpu->lock);
}

void vcpu_report_exception(struct vcpu *vcpu)
{
	struct boot_exc_frame f;
	struct kvm_regs regs;
	struct kvm_sregs sregs;

	if (ioctl(vcpu->fd, KVM_GET_REGS, &regs) < 0 || ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) < 0) {
		log_err("%s: vcpu %u: guest exception, registers unreadable: %m", vcpu->vm->name,
			vcpu->index);
	} else if (gm_read(vcpu->vm->gm, regs.rsp, &f, sizeof(f))) {
		log_err("%s: vcpu %u: guest exception, frame at rsp 0x%llx unreadable",
			vcpu->vm->name, vcpu->index, (unsigned long long)regs.rsp);
	} else {
		unsigned int v = (unsigned int)f.vector;

		log_err("%s: vcpu %u: guest exception %s (vector %u) at rip 0x%" PRIx64
			" error 0x%" PRIx64 " address 0x%llx rsp 0x%" PRIx64 " cpl %u",
			vcpu->vm->name, vcpu->index, boot_exception_name(v), v, f.rip,
			f.error_code, (unsigned long long)sregs.cr2, f.rsp,
			(unsigned int)(f.cs & 3));
	}
	vm_request_stop(vcpu->vm, VM_STATUS_GUEST_CRASH);
}

/* Returns false when the VM must stop. */
static bool handle_exit(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	struct vm *vm = vcpu->vm;

	switch (run->exit_reason) {
	case KVM_EXIT_MMIO:
		bus_dispatch(&vm->bus, vcpu, run->mmio.phys_addr, run->mmio.data,
			     run->mmio.len, run->mmio.is_write);
		return true;
	case KVM_EXIT_IO:
		/* Only emulated CPL0 code gets here; kvmem has no port devices. */
		log_warn_ratelimited("%s: vcpu %u: port I/O to 0x%x ignored", vm->name,
				     vcpu->index, run->io.port);
		if (run->io.direction == KVM_EXIT_IO_IN)
			memset((uint8_t *)run + run->io.data_offset, 0xff,
			       (size_t)run->io.size * run->io.count);
		return true;
	case KVM_EXIT_SHUTDOWN:
		log_err("%s: vcpu %u: guest triple fault (shutdown)", vm->name, vcpu->index);
		break;
	case KVM_EXIT_HLT:
		log_err("%s: vcpu %u: guest halted at CPL0", vm->name, vcpu->index);
		break;
	case KVM_EXIT_INTERNAL_ERROR:
		log_err("%s: vcpu %u: KVM internal error, suberror %u", vm->name, vcpu->index,
			run->internal.suberror);
		break;
	case KVM_EXIT_FAIL_ENTRY:
		log_err("%s: vcpu %u: VM entry failed, reason 0x%llx", vm->name, vcpu->index,
			(unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		break;
	default:
		log_err("%s: vcpu %u: unexpected exit reason %u", vm->name, vcpu->index,
			run->exit_reason);
		break;
	}
	vm_request_stop(vm, VM_STATUS_GUEST_CRASH);
	return false;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *vcpu = arg;
	struct vm *vm = vcpu->vm;

	for (;;) {
		__atomic_store_n(&vcpu->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
		if (vm_vcpu_should_exit(vm))
			break;
		vm_vcpu_park_if_paused(vm);
		if (vm_vcpu_should_exit(vm))
			break;
		if (ioctl(vcpu->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			log_err("%s: vcpu %u: KVM_RUN: %m", vm->name, vcpu->index);
			vm_request_stop(vm, VM_STATUS_VMM_ERROR);
			break;
		}
		if (!handle_exit(vcpu))
			break;
	}
	pthread_mutex_lock(&vcpu->lock);
	vcpu->exited = true;
	pthread_mutex_unlock(&vcpu->lock);
	vm_vcpu_exited(vm);
	return NULL;
}

int vcpu_start(struct vcpu *vcpu)
{
	char name[16];
	int ret;

	snprintf(name, sizeof(name), "vcpu%u", vcpu->index);
	pthread_mutex_lock(&vcpu->lock);
	ret = thread_spawn(&vcpu->thread, name, vcpu_thread, vcpu);
	if (!ret)
		vcpu->started = true;
	pthread_mutex_unlock(&vcpu->lock);
	return ret;
}

void vcpu_join(struct vcpu *vcpu)
{
	bool started;

	pthread_mutex_lock(&vcpu->lock);
	started = vcpu->started;
	pthread_mutex_unlock(&vcpu->lock);
	if (started) {
		pthread_join(vcpu->thread, NULL);
		pthread_mutex_lock(&vcpu->lock);
		vcpu->started = false;
		pthread_mutex_unlock(&vcpu->lock);
	}
}

void vcpu_destroy(struct vcpu *vcpu)
{
	if (!vcpu)
		return;
	vcpu_join(vcpu);
	munmap(vcpu->run, vcpu->run_size);
	close(vcpu->fd);
	pthread_mutex_destroy(&vcpu->lock);
	pthread_cond_destroy(&vcpu->cond);
	kv_free(vcpu);
}

unsigned int vcpu_index(const struct vcpu *vcpu)
{
	return vcpu->index;
}

int vcpu_fd(const struct vcpu *vcpu)
{
	return vcpu->fd;
}

