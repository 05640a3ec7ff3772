/* SPDX-License-Identifier: MIT */
/*
 * smp_run (guest/smp.h) over threads: the caller is CPU 0 and one thread
 * more per online CPU takes the others' shares, started at the first job
 * and kept. A job is posted under one mutex and waited for on condition
 * variables: threads the kernel schedules can block, where the kvmem
 * guest's vCPUs poll and sleep through the VMM. The mutex also orders each
 * share's writes before the caller reads them, as the guest's
 * release/acquire job board does.
 */
#include <pthread.h>
#include <stdint.h>

#include "guest/rt.h"
#include "guest/smp.h"

static pthread_mutex_t board = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t posted = PTHREAD_COND_INITIALIZER;
static pthread_cond_t finished = PTHREAD_COND_INITIALIZER;
/* Under board: */
static smp_fn *job_fn;
static void *job_arg;
static uint64_t job_gen;	/* bumped per job */
static unsigned job_left;	/* workers still running the current job */
static unsigned nworkers;	/* started; CPU 0 only */

static void *worker(void *arg)
{
	unsigned cpu = (unsigned)(uintptr_t)arg;
	uint64_t seen = 0;

	pthread_mutex_lock(&board);
	for (;;) {
		smp_fn *fn;
		void *fn_arg;

		while (job_gen == seen)
			pthread_cond_wait(&posted, &board);
		seen = job_gen;
		fn = job_fn;
		fn_arg = job_arg;
		pthread_mutex_unlock(&board);
		fn(cpu, fn_arg);
		pthread_mutex_lock(&board);
		if (!--job_left)
			pthread_cond_signal(&finished);
	}
	return NULL;
}

static void start_workers(void)
{
	for (unsigned cpu = 1; cpu < rt_ncpus(); cpu++) {
		pthread_t t;

		if (pthread_create(&t, NULL, worker, (void *)(uintptr_t)cpu)) {
			rt_printf("kvmem-linux-wl: no thread for cpu %u\n", cpu);
			rt_poweroff(RT_EXIT_BAD_BOOT);
		}
		nworkers++;
	}
}

void smp_run(smp_fn *fn, void *arg)
{
	if (!nworkers && rt_ncpus() > 1)
		start_workers();
	pthread_mutex_lock(&board);
	job_fn = fn;
	job_arg = arg;
	job_left = nworkers;
	job_gen++;
	pthread_cond_broadcast(&posted);
	pthread_mutex_unlock(&board);
	fn(0, arg);
	pthread_mutex_lock(&board);
	while (job_left)
		pthread_cond_wait(&finished, &board);
	pthread_mutex_unlock(&board);
}
