/* SPDX-License-Identifier: MIT */
/*
 * The job board. vCPU 0 writes the job, then publishes it by bumping
 * job_gen (release); workers see the new generation (acquire), run the job
 * and bump job_done. vCPU 0 rewrites the job only after every worker has
 * reported, so a worker never reads a half-written job.
 */
#include "rt.h"
#include "smp.h"

static smp_fn *job_fn;
static void *job_arg;
static uint32_t job_gen;	/* bumped per job by vCPU 0 */
static uint32_t job_done;	/* workers finished with the current job */

void smp_run(smp_fn *fn, void *arg)
{
	struct rt_backoff bo = RT_BACKOFF_INIT;
	uint32_t workers = rt_ncpus() - 1;

	job_fn = fn;
	job_arg = arg;
	WRITE_ONCE(job_done, 0);
	store_release(&job_gen, job_gen + 1);
	fn(0, arg);
	while (load_acquire(&job_done) != workers)
		rt_backoff(&bo);
}

void smp_worker(unsigned cpu)
{
	uint32_t seen = 0;

	for (;;) {
		/* Jobs come seconds apart at most; 10 ms of latency costs nothing. */
		struct rt_backoff bo = RT_BACKOFF_INIT_MAX(10 * RT_NS_PER_MS);
		uint32_t gen;

		while ((gen = load_acquire(&job_gen)) == seen)
			rt_backoff(&bo);
		seen = gen;
		job_fn(cpu, job_arg);
		/* Lines a job left unterminated go out before we report done. */
		con_flush();
		atomic_add(&job_done, 1);
	}
}
