/* SPDX-License-Identifier: MIT */
/*
 * Private to src/migrate: the job that migrate.c (to and from another
 * host) and snapshot.c (to and from a file) both run, and the steps they
 * share.
 */
#ifndef KVMEM_MIGRATE_INTERNAL_H
#define KVMEM_MIGRATE_INTERNAL_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "migrate/migrate.h"
#include "migrate/snapfile.h"

struct gm;

struct mig_job {
	bool source;			/* sends a VM away (to a host or a file) */
	enum mig_kind kind;
	pthread_t throttler;		/* auto-converge's, once started */
	bool throttling;		/* throttler runs (job thread only) */
	unsigned int throttle_pct;	/* atomic: share of each period the vCPUs are held */
	bool throttle_stop;		/* atomic */
	int fd;				/* the connection (-1 for a file) */
	struct snap_writer *file;	/* a save's or snapshot's file, until finished */
	struct snap_reader *image;	/* a restore's file */
	struct vm *vm;
	json_t *desc;
	struct mig_params params;
	const struct mig_source_ops *sops;
	const struct mig_dest_ops *dops;
	void *arg;
	pthread_t thread;
	bool cancel;			/* atomic */
	bool finished;			/* atomic */
	struct mig_stream *out, *in;

	pthread_mutex_t lock;		/* guards prog and the settings below */
	struct mig_progress prog;
	uint32_t downtime_ms;
	uint64_t bandwidth;
	uint64_t bytes_read;		/* a restore's, from its file */
};

struct mig_job *mig_job_new(bool source, int fd, const struct mig_params *p, void *arg,
			    const char *peer);
/* Free a job whose thread never ran. */
void mig_job_drop(struct mig_job *j);
/* The job's end: its stage, its totals, its streams and fd closed. */
void mig_job_finish(struct mig_job *j, int ret, uint64_t t0);
void mig_notify(struct mig_job *j);
void mig_set_stage(struct mig_job *j, enum mig_stage s);
/* The first reason a job fails is the one it keeps; returns -EPROTO. */
__attribute__((format(printf, 2, 3)))
int mig_failf(struct mig_job *j, const char *fmt, ...);
void mig_count_pages(struct mig_job *j, uint32_t kind, uint64_t n);
bool mig_cancelled(struct mig_job *j);
uint64_t mig_popcount(const uint64_t *set, uint64_t words);

int mig_put_json(struct mig_stream *s, uint32_t type, const json_t *o);
/* A record's payload as a JSON object, or NULL. */
json_t *mig_rec_json(const struct mig_rec *r);
/* Digest every page of gm (the VM stands still) into the progress's checksum. */
int mig_checksum_memory(struct mig_job *j, struct gm *gm);

/*
 * Start j (new) sending vm away on a thread of its own: to a host (j->fd)
 * or into a file (j->file). On failure j is freed (its file too).
 */
int mig_source_spawn(struct mig_job *j, struct vm *vm, const json_t *desc,
		     const struct mig_source_ops *ops, const char *thread_name);

/* Apply a VCPU record (seen: the vCPUs had so far) or the DEVICE record to j->vm. */
int mig_apply_vcpu(struct mig_job *j, const struct mig_rec *r, uint64_t *seen);
int mig_apply_state(struct mig_job *j, const struct mig_rec *r);

#endif
