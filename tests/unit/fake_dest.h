/* SPDX-License-Identifier: MIT */
/*
 * A destination for a migration or a restore in tests (struct
 * mig_dest_ops): it reserves what the host would, a fresh
 * thread-accelerator VM with a balloon for the devices' state, but never
 * starts it (the activation only says "running": a stream's vCPU state
 * must not run in the test's process), and keeps a VM it is told to
 * discard for the test to look at. Shared by the unit tests and the
 * fuzz_stream target.
 */
#ifndef KVMEM_TESTS_FAKE_DEST_H
#define KVMEM_TESTS_FAKE_DEST_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "migrate/migrate.h"

struct balloon;
struct vm;

struct fake_dest {
	uint64_t ram;			/* the VM's RAM */
	unsigned int max_cpus;		/* the most vCPUs a VM description may ask for */
	int console_fd;			/* the VM's console (not owned) */
	struct mig_job *job;		/* the caller's, set before the job's thread runs */
	struct vm *vm;			/* reserved, or NULL */
	struct balloon *balloon;	/* with the VM */
	bool discarded;
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* lock: the job made progress */
};

extern const struct mig_dest_ops fake_dest_ops;

void fake_dest_init(struct fake_dest *d, uint64_t ram, unsigned int max_cpus, int console_fd);
/* Wait for d->job to finish, its progress into *out, and free it. */
void fake_dest_finish(struct fake_dest *d, struct mig_progress *out);
/* Destroy what was reserved (discarded or not), and d's lock. */
void fake_dest_release(struct fake_dest *d);

#endif
