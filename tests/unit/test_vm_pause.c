/* SPDX-License-Identifier: MIT */
/*
 * vm_pause's deadline, on a VM object with no accelerator and no guest: the
 * vCPUs are test threads that park when asked (vm_vcpu_park_if_paused, as
 * the vCPU loop does between runs of guest code), or a count of vCPUs that
 * never come (one held in the VMM by a host call that blocks). A pause that
 * cannot complete returns -ETIMEDOUT at its deadline and leaves the VM
 * running, with every vCPU that had parked released and none parking later.
 */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/host/control.h"
#include "core/vm.h"
#include "core/vm_internal.h"

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* A running VM with `held` vCPUs that never reach the park point. */
static struct vm *fake_vm(unsigned int held)
{
	struct vm *vm = calloc(1, sizeof(*vm));

	assert_non_null(vm);
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	vm->state = VM_RUNNING;
	vm->running = held; /* ncpus 0: nothing to kick */
	return vm;
}

/* ---- cooperative vCPUs ---------------------------------------------------------------- */

struct vcpu_sim {
	struct vm *vm;
	pthread_t thread;
	bool quit;		/* atomic */
	unsigned long rounds;	/* atomic: times around the loop, parked ones excluded */
};

static void *vcpu_sim_thread(void *arg)
{
	struct vcpu_sim *v = arg;

	while (!__atomic_load_n(&v->quit, __ATOMIC_SEQ_CST)) {
		vm_vcpu_park_if_paused(v->vm);
		__atomic_add_fetch(&v->rounds, 1, __ATOMIC_SEQ_CST);
		usleep(200);
	}
	return NULL;
}

static void vcpu_sim_start(struct vcpu_sim *v, struct vm *vm)
{
	memset(v, 0, sizeof(*v));
	v->vm = vm;
	pthread_mutex_lock(&vm->lock);
	vm->running++;
	pthread_mutex_unlock(&vm->lock);
	assert_int_equal(pthread_create(&v->thread, NULL, vcpu_sim_thread, v), 0);
}

static void vcpu_sim_stop(struct vcpu_sim *v)
{
	__atomic_store_n(&v->quit, true, __ATOMIC_SEQ_CST);
	/* Parked ones wake for a stop, as the vCPU loop does. */
	pthread_mutex_lock(&v->vm->lock);
	v->vm->stop_requested = true;
	pthread_cond_broadcast(&v->vm->cond);
	pthread_mutex_unlock(&v->vm->lock);
	pthread_join(v->thread, NULL);
}

/* Does the simulated vCPU go around its loop (not parked) within 1 s? */
static bool vcpu_sim_runs(struct vcpu_sim *v)
{
	unsigned long r = __atomic_load_n(&v->rounds, __ATOMIC_SEQ_CST);

	for (int i = 0; i < 1000; i++) {
		if (__atomic_load_n(&v->rounds, __ATOMIC_SEQ_CST) > r + 2)
			return true;
		usleep(1000);
	}
	return false;
}

static unsigned int parked(struct vm *vm)
{
	unsigned int n;

	pthread_mutex_lock(&vm->lock);
	n = vm->parked;
	pthread_mutex_unlock(&vm->lock);
	return n;
}

/* ---- vm_pause on a thread, with a watchdog ------------------------------------------- */

struct pause_call {
	struct vm *vm;
	unsigned int timeout_ms;	/* 0: vm_pause, with its default deadline */
	int ret;
	long took_ms;
	sem_t done;
	pthread_t thread;
};

static void *pause_thread(void *arg)
{
	struct pause_call *p = arg;
	long t0 = now_ms();

	p->ret = p->timeout_ms ? vm_pause_timeout(p->vm, p->timeout_ms) : vm_pause(p->vm);
	p->took_ms = now_ms() - t0;
	sem_post(&p->done);
	return NULL;
}

static void pause_start(struct pause_call *p, struct vm *vm, unsigned int timeout_ms)
{
	memset(p, 0, sizeof(*p));
	p->vm = vm;
	p->timeout_ms = timeout_ms;
	sem_init(&p->done, 0, 0);
	assert_int_equal(pthread_create(&p->thread, NULL, pause_thread, p), 0);
}

/* Wait for the call to return; a pause with no bound would never: fail instead of hanging. */
static int pause_finish(struct pause_call *p)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 6;
	if (sem_timedwait(&p->done, &until))
		fail_msg("vm_pause has not returned after 6 s (deadline %u ms)",
			 p->timeout_ms ? p->timeout_ms : VM_PAUSE_TIMEOUT_MS);
	pthread_join(p->thread, NULL);
	return p->ret;
}

/* ---- tests ------------------------------------------------------------------------------ */

/* Every vCPU parks: paused at once, running again after vm_resume. */
static void test_pause_and_resume(void **state)
{
	struct vm *vm = fake_vm(0);
	struct vcpu_sim v[2];
	struct pause_call p;

	(void)state;
	vcpu_sim_start(&v[0], vm);
	vcpu_sim_start(&v[1], vm);
	pause_start(&p, vm, 2000);
	assert_int_equal(pause_finish(&p), 0);
	assert_true(p.took_ms < 1000);
	assert_int_equal(vm_get_state(vm), VM_PAUSED);
	assert_int_equal(parked(vm), 2);
	assert_int_equal(vm_pause_timeout(vm, 100), -EINVAL); /* already paused */
	assert_int_equal(vm_resume(vm), 0);
	assert_int_equal(vm_get_state(vm), VM_RUNNING);
	assert_true(vcpu_sim_runs(&v[0]));
	assert_true(vcpu_sim_runs(&v[1]));
	vcpu_sim_stop(&v[0]);
	vcpu_sim_stop(&v[1]);
	free(vm);
}

/*
 * One vCPU held in the VMM never parks: -ETIMEDOUT at the deadline, the VM
 * still running, the vCPU that had parked released, and the held one,
 * when it comes back, runs on instead of parking.
 */
static void test_pause_times_out(void **state)
{
	struct vm *vm = fake_vm(1);
	struct vcpu_sim v;
	struct pause_call p;

	(void)state;
	vcpu_sim_start(&v, vm);
	pause_start(&p, vm, 200);
	assert_int_equal(pause_finish(&p), -ETIMEDOUT);
	assert_true(p.took_ms >= 190 && p.took_ms < 2000);
	assert_int_equal(vm_get_state(vm), VM_RUNNING);
	assert_false(__atomic_load_n(&vm->pause_requested, __ATOMIC_SEQ_CST));
	assert_true(vcpu_sim_runs(&v));
	assert_int_equal(parked(vm), 0);
	vm_vcpu_park_if_paused(vm); /* the held vCPU back: returns at once */
	assert_int_equal(parked(vm), 0);
	assert_int_equal(vm_resume(vm), -EINVAL); /* nothing to resume */
	/* And a later pause works once every vCPU can park. */
	pthread_mutex_lock(&vm->lock);
	vm->running--;
	pthread_mutex_unlock(&vm->lock);
	pause_start(&p, vm, 2000);
	assert_int_equal(pause_finish(&p), 0);
	assert_int_equal(vm_get_state(vm), VM_PAUSED);
	assert_int_equal(vm_resume(vm), 0);
	vcpu_sim_stop(&v);
	free(vm);
}

/*
 * Two callers pausing the same VM: the first to give up does not withdraw
 * the pause the other still waits for; when the held vCPU parks, the other
 * call completes it.
 */
static void test_two_pausers(void **state)
{
	struct vm *vm = fake_vm(1);
	struct pause_call short_one, long_one;
	struct vcpu_sim late;

	(void)state;
	pause_start(&long_one, vm, 3000);
	usleep(20 * 1000);
	pause_start(&short_one, vm, 100);
	assert_int_equal(pause_finish(&short_one), -ETIMEDOUT);
	assert_true(__atomic_load_n(&vm->pause_requested, __ATOMIC_SEQ_CST));
	assert_int_equal(vm_get_state(vm), VM_RUNNING);
	/* The held vCPU comes back (as a new parking thread) and parks. */
	pthread_mutex_lock(&vm->lock);
	vm->running--;
	pthread_mutex_unlock(&vm->lock);
	vcpu_sim_start(&late, vm);
	assert_int_equal(pause_finish(&long_one), 0);
	assert_int_equal(vm_get_state(vm), VM_PAUSED);
	assert_int_equal(vm_resume(vm), 0);
	assert_true(vcpu_sim_runs(&late));
	vcpu_sim_stop(&late);
	free(vm);
}

/* The default bound of vm_pause, the one the pause verb gets. */
static void test_default_deadline(void **state)
{
	struct vm *vm = fake_vm(1);
	struct pause_call p;

	(void)state;
	/* Below the control socket's verb deadline: the client gets pause's own error. */
	assert_true(VM_PAUSE_TIMEOUT_MS + 500 <= CONTROL_VERB_TIMEOUT_MS);
	pause_start(&p, vm, 0);
	assert_int_equal(pause_finish(&p), -ETIMEDOUT);
	assert_true(p.took_ms >= VM_PAUSE_TIMEOUT_MS - 10);
	assert_int_equal(vm_get_state(vm), VM_RUNNING);
	free(vm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pause_and_resume),
		cmocka_unit_test(test_pause_times_out),
		cmocka_unit_test(test_two_pausers),
		cmocka_unit_test(test_default_deadline),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
