/* SPDX-License-Identifier: MIT */
/*
 * The vCPU thread: the run loop and exit dispatch, the same for every
 * accelerator. Lock order: vm->lock, then vcpu->lock (vcpu_kick takes only
 * vcpu->lock).
 *
 * Kicks: the kicker sets its request in the VM, then arms the accelerator's
 * kick (KVM's immediate_exit, or the thread accelerator's equivalent), then
 * sends the kick signal. The loop disarms the kick before it looks at requests, so a
 * kick that lands between that look and entering the guest makes the entry
 * return at once.
 */
#define LOG_TAG "vcpu"
#include "core/vcpu.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/boot.h"
#include "core/log.h"
#include "core/sandbox.h"
#include "core/thread.h"
#include "core/vm_internal.h"

#define VCPU_MAX_SLEEP_NS 1000000000ULL

static pthread_once_t kick_once = PTHREAD_ONCE_INIT;

static void install_kick_handler(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = accel_kick_handler;
	/*
	 * KVM_RUN still returns EINTR (it is never restarted); other calls go
	 * on. SA_ONSTACK: under the thread accelerator the interrupted stack is
	 * the guest's own, small and possibly write-protected.
	 */
	sa.sa_flags = SA_RESTART | SA_SIGINFO | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	sigaction(ACCEL_KICK_SIGNAL, &sa, NULL);
}

int vcpu_create(struct vm *vm, unsigned int index, struct vcpu **out)
{
	struct vcpu *vcpu;
	pthread_condattr_t ca;
	int ret;

	pthread_once(&kick_once, install_kick_handler);
	vcpu = kv_zalloc(sizeof(*vcpu));
	if (!vcpu)
		return -ENOMEM;
	vcpu->vm = vm;
	vcpu->index = index;
	pthread_mutex_init(&vcpu->lock, NULL);
	/* vcpu_sleep computes CLOCK_MONOTONIC deadlines. */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&vcpu->cond, &ca);
	pthread_condattr_destroy(&ca);
	ret = vm->accel->vcpu_init(vcpu);
	if (ret) {
		pthread_mutex_destroy(&vcpu->lock);
		pthread_cond_destroy(&vcpu->cond);
		kv_free(vcpu);
		return ret;
	}
	*out = vcpu;
	return 0;
}

void vcpu_kick(struct vcpu *vcpu)
{
	pthread_mutex_lock(&vcpu->lock);
	vcpu->woken = true;
	pthread_cond_signal(&vcpu->cond);
	vcpu->vm->accel->set_kick(vcpu, true);
	/*
	 * Under the lock: the thread marks itself exited under it before it
	 * returns, so we never signal a thread that may already be joined.
	 */
	if (vcpu->started && !vcpu->exited)
		pthread_kill(vcpu->thread, ACCEL_KICK_SIGNAL);
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

/* Log a guest exception the way every accelerator reports it, and stop the VM. */
static void guest_crash(struct vcpu *vcpu, const struct accel_exception *e)
{
	const char *name = vcpu->vm->name;

	if (e->syscall)
		log_err("%s: vcpu %u: guest system call %ld at rip 0x%" PRIx64 "%s: a guest may "
			"not make host system calls", name, vcpu->index, e->syscall_nr, e->rip,
			e->rip_outside ? " (host address)" : "");
	else
		log_err("%s: vcpu %u: guest exception %s (vector %u) at rip 0x%" PRIx64 "%s"
			" error 0x%" PRIx64 " address 0x%" PRIx64 "%s rsp 0x%" PRIx64 " cpl %u",
			name, vcpu->index, boot_exception_name(e->vector), e->vector, e->rip,
			e->rip_outside ? " (host address)" : "", e->error_code, e->address,
			e->address_outside ? " (host address, outside the guest)"
			: e->vector == 14 && vm_in_corpus(vcpu->vm, e->address)
			? " (in its read-only corpus)" : "", e->rsp, e->cpl);
	vm_request_stop(vcpu->vm, VM_STATUS_GUEST_CRASH);
}

void vcpu_report_exception(struct vcpu *vcpu)
{
	struct accel_exception e;

	if (!vcpu->vm->accel->vcpu_exception) {
		/* Only the kvm accelerator's CPL0 stubs write it: the guest did, by hand. */
		log_err("%s: vcpu %u: the guest wrote the exception register", vcpu->vm->name,
			vcpu->index);
		vm_request_stop(vcpu->vm, VM_STATUS_GUEST_CRASH);
		return;
	}
	if (vcpu->vm->accel->vcpu_exception(vcpu, &e)) {
		vm_request_stop(vcpu->vm, VM_STATUS_GUEST_CRASH);
		return;
	}
	guest_crash(vcpu, &e);
}

/* Returns false when the VM must stop. */
static bool handle_exit(struct vcpu *vcpu, struct accel_exit *exit)
{
	switch (exit->reason) {
	case ACCEL_EXIT_NONE:
		return true;
	case ACCEL_EXIT_MMIO:
		bus_dispatch(&vcpu->vm->bus, vcpu, exit->mmio.addr, exit->mmio.data,
			     exit->mmio.len, exit->mmio.is_write);
		return true;
	case ACCEL_EXIT_PIO:
		/* A string instruction moves count items through the same port, one by one. */
		for (unsigned int i = 0; i < exit->pio.count; i++)
			bus_dispatch(&vcpu->vm->pio_bus, vcpu, exit->pio.port,
				     (uint8_t *)exit->pio.data + (size_t)i * exit->pio.size,
				     exit->pio.size, exit->pio.is_write);
		return true;
	case ACCEL_EXIT_EXCEPTION:
		guest_crash(vcpu, &exit->exc);
		return false;
	case ACCEL_EXIT_CRASH:
		break;
	}
	vm_request_stop(vcpu->vm, VM_STATUS_GUEST_CRASH);
	return false;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *vcpu = arg;
	struct vm *vm = vcpu->vm;
	struct accel_exit exit;

	sandbox_enter(vm->accel->vcpu_sandbox);
	for (;;) {
		int ret;

		vm->accel->set_kick(vcpu, false);
		if (vm_vcpu_should_exit(vm))
			break;
		/* A paused vCPU's state may be saved (migration): none of it half done. */
		if (vm->accel->vcpu_settle && __atomic_load_n(&vm->pause_requested, __ATOMIC_SEQ_CST))
			vm->accel->vcpu_settle(vcpu);
		vm_vcpu_park_if_paused(vm);
		if (vm_vcpu_should_exit(vm))
			break;
		ret = vm->accel->vcpu_run(vcpu, &exit);
		if (ret == -EINTR)
			continue;
		if (ret) {
			vm_request_stop(vm, VM_STATUS_VMM_ERROR);
			break;
		}
		if (!handle_exit(vcpu, &exit))
			break;
	}
	if (vm->accel->vcpu_thread_exit)
		vm->accel->vcpu_thread_exit(vcpu);
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
	vcpu->vm->accel->vcpu_destroy(vcpu);
	pthread_mutex_destroy(&vcpu->lock);
	pthread_cond_destroy(&vcpu->cond);
	kv_free(vcpu);
}

unsigned int vcpu_index(const struct vcpu *vcpu)
{
	return vcpu->index;
}

