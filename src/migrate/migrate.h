/* SPDX-License-Identifier: MIT */
/*
 * Pre-copy live migration of one VM between kvmem hosts, in the stages of
 * Clark et al. (NSDI 2005), named so in the stream, the stats and the CLI:
 *
 *   0 pre-migration, 1 reservation   the source describes the VM; the
 *                                    destination creates it (not started)
 *                                    against its own budget, or refuses;
 *   2 iterative pre-copy             round 1 sends every page, each later
 *                                    round the pages written during the last;
 *   3 stop-and-copy                  when the rest fits the downtime limit
 *                                    (or rounds stop paying): the VM paused,
 *                                    its last pages, vCPU, clock and device
 *                                    state;
 *   4 commitment                     the destination has everything and
 *                                    says so; the source answers that it
 *                                    gives the VM up;
 *   5 activation                     the destination runs the VM.
 *
 * The source keeps the VM, running, after anything that goes wrong before
 * it has sent its commitment: a refusal, a stream error, a timeout, a
 * cancel, a destination that dies. Once that record has left (all of it
 * accepted by the kernel), the destination owns the VM: if the destination
 * dies before it has read it, the VM is lost on both sides, as with QEMU.
 * The destination activates only on that record, so the VM never runs in
 * two places.
 *
 * Pages travel as what they are (mem/export.h): zero and ballooned pages as
 * markers, a shared frame's content once per migration (then referenced,
 * with a SHA-256 of its content: the destination checks it), swapped pages
 * read from their slots. Both directions are migration streams
 * (migrate/stream.h) on one connection.
 */
#ifndef KVMEM_MIGRATE_MIGRATE_H
#define KVMEM_MIGRATE_MIGRATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migrate/stream.h"

struct gm;
struct vm;

enum mig_stage {
	MIG_STAGE_RESERVATION = 1,
	MIG_STAGE_PRECOPY,
	MIG_STAGE_STOP_COPY,
	MIG_STAGE_COMMIT,
	MIG_STAGE_ACTIVATION,
	MIG_STAGE_DONE,		/* the VM runs at the destination */
	MIG_STAGE_FAILED,	/* the source runs it (or, destination side: nothing kept) */
	MIG_STAGE_CANCELLED,	/* failed because asked */
	MIG_STAGE_LOAD,		/* a restore: the image's pages going into the VM */
};

/* What a job does: the stages above serve all of them (a save has no commitment). */
enum mig_kind {
	MIG_KIND_MIGRATION,	/* a VM to or from another host */
	MIG_KIND_SAVE,		/* a VM into a file, given up once the file is whole */
	MIG_KIND_SNAPSHOT,	/* a VM into a file, running on */
	MIG_KIND_RESTORE,	/* a VM out of a file */
};

const char *mig_kind_name(enum mig_kind k);

const char *mig_stage_name(enum mig_stage s);

/* Defaults: QEMU's downtime limit; rounds that stop paying end sooner. */
#define MIG_DOWNTIME_MS_DEFAULT 300
#define MIG_MAX_ROUNDS_DEFAULT 30
#define MIG_TIMEOUT_MS_DEFAULT 10000
/*
 * Auto-converge, as QEMU's: from the second round on, a guest that dirties
 * more than half of what the link carries has its vCPUs held for a share
 * of each period, raised by a step each round that still does not
 * converge, up to the most.
 */
#define MIG_THROTTLE_PERIOD_MS 20
#define MIG_THROTTLE_FIRST 20
#define MIG_THROTTLE_STEP 10
#define MIG_THROTTLE_MAX 95

struct mig_params {
	uint32_t downtime_ms;	/* the longest pause the rest may need (0: default) */
	uint64_t bandwidth;	/* bytes/s the stream may use (0: unlimited) */
	uint32_t max_rounds;	/* pre-copy rounds at most (0: default) */
	int timeout_ms;		/* one record's read or write at most (0: default) */
	/*
	 * Digest every guest page where the VM stops (source, at stop-and-copy,
	 * outside the downtime) and where it starts (destination, before
	 * activation): the progress's checksum, for tests to compare.
	 */
	bool checksum;
	/*
	 * A secret both hosts were given (NULL: none). With one, the stream
	 * starts with a mutual challenge: each side proves it holds the secret
	 * (HMAC-SHA256 over both sides' fresh nonces) before the source sends
	 * anything of the VM, so neither hands a VM to, nor takes one from,
	 * whoever merely reached its address. It authenticates the peers; it
	 * does not encrypt the stream.
	 */
	const uint8_t *secret;
	size_t secret_len;
	/*
	 * A restore: start the VM before its memory is in (mem/lazy.h), its
	 * pages fetched from the file on touch and by a prefetcher; otherwise
	 * every page is loaded first.
	 */
	bool lazy;
	/* A lazy restore without the prefetcher: pages come in only as touched (experiments, tests). */
	bool no_prefetch;
	/*
	 * A clone: the VM's memory comes from ops->load_memory (the host maps
	 * the snapshot's shared frames), and it is given this identity (not 0).
	 */
	uint64_t identity;
};

/* Where a migration is, for the stats and the progress line (a copy). */
struct mig_progress {
	enum mig_kind kind;
	enum mig_stage stage;
	bool source;			/* this side sends */
	unsigned int round;
	uint64_t ram_pages;		/* the VM's */
	uint64_t dirty_pages;		/* to send in this round */
	uint64_t dirtied_pages;		/* written during the rounds, all told (resent) */
	uint64_t pages[MIG_PAGE_KINDS];	/* sent (received) by kind */
	uint64_t bytes;			/* on the wire, headers included */
	double rate_mib_s;		/* the last round's */
	double dirty_mib_s;		/* the guest's, measured over the last round */
	unsigned int throttle_pct;	/* auto-converge: share of the time the vCPUs are held */
	uint64_t expected_downtime_ms;	/* the dirty set at the measured rate */
	uint64_t downtime_ms;		/* the VM paused (source: until the commitment left) */
	uint64_t total_ms;
	uint32_t downtime_limit_ms;
	uint64_t bandwidth;
	char vm[64];			/* its name (once the destination has reserved it) */
	char checksum[33];		/* mig_params.checksum: XXH3-128 of the memory, hex */
	char peer[256];			/* the peer's address, or the file */
	char error[224];
};

/* What the source needs from the VM's owner (the host). */
struct mig_source_ops {
	/* Stop-and-copy: pause the vCPUs and stop the device workers. 0 or -errno. */
	int (*stop)(void *arg);
	/* Undo stop: the migration failed, the VM runs on here. */
	void (*restart)(void *arg);
	/* The devices' state (new reference), the VM stopped. */
	json_t *(*save_devices)(void *arg);
	/* The commitment left: the VM is the destination's. Release it. */
	void (*given_up)(void *arg);
	/*
	 * Auto-converge: hold the vCPUs (on) or let them go (off) for a slice
	 * of time, the VM staying "running" for its owner. 0 or -errno.
	 */
	int (*hold)(void *arg, bool on);
	/* Progress changed (stage, round, end); may be NULL. Any lock of the owner's allowed. */
	void (*progress)(void *arg);
};

struct mig_job;

/*
 * Start migrating vm over fd (owned from now on, closed at the end) on a
 * thread of its own. desc: the VM's description for the reservation (the
 * host's config of it; borrowed, copied). 0 or -errno.
 */
int mig_source_start(struct vm *vm, int fd, const json_t *desc, const struct mig_params *p,
		     const struct mig_source_ops *ops, void *arg, const char *peer,
		     struct mig_job **out);
/* Ask a running migration to give up (the source keeps the VM); no wait. */
void mig_job_cancel(struct mig_job *j);
/* Change the downtime limit (0: unchanged) and the bandwidth (UINT64_MAX: unchanged) now. */
void mig_job_set(struct mig_job *j, uint32_t downtime_ms, uint64_t bandwidth);
void mig_job_progress(struct mig_job *j, struct mig_progress *out);
/* True for a job that sends a VM away, false for one that takes one in. */
bool mig_job_is_source(const struct mig_job *j);
/* True once the job's thread is done (DONE, FAILED or CANCELLED). */
bool mig_job_finished(struct mig_job *j);
/* A job that ended well failed after all (a lazily restored VM's page could not be had). */
void mig_job_fail(struct mig_job *j, const char *why);
/* Wait for the thread and free the job. */
void mig_job_free(struct mig_job *j);

/* What the destination needs from its host. */
struct mig_dest_ops {
	/*
	 * The reservation: create the VM desc describes, not started, or say
	 * why not (why, -errno). Its RAM must be fresh (all zero).
	 */
	int (*reserve)(void *arg, json_t *desc, struct vm **vm, char *why, size_t whylen);
	/*
	 * A clone's memory, the VM reserved and fresh: every page with content
	 * in the file in place (0), or -errno with why. Restores of clones only.
	 */
	int (*load_memory)(void *arg, struct gm *gm, char *why, size_t whylen);
	/* Give the VM its devices' state (untrusted): 0, or -EINVAL with why. */
	int (*load_devices)(void *arg, json_t *devices, char *why, size_t whylen);
	/* Activation: start the VM. 0 or -errno. */
	int (*activate)(void *arg);
	/* Remove the VM reserve made: nothing of it is kept. */
	void (*discard)(void *arg);
	void (*progress)(void *arg);
};

/*
 * Receive one VM over fd (owned, closed at the end) on a thread of its own,
 * until it runs here (DONE) or the migration failed (FAILED, the reason in
 * the progress's error, everything reserved discarded). The peer was
 * authenticated by the caller. 0 or -errno.
 */
int mig_dest_start(int fd, const struct mig_params *p, const struct mig_dest_ops *ops, void *arg,
		   const char *peer, struct mig_job **out);

/*
 * Save vm into a snapshot file (migrate/snapfile.h) at path, on a thread of
 * its own: pre-copy rounds into the file while the guest runs (a page
 * written again is written again in place), then stop-and-copy of the last
 * pages and the state. stop: the VM is given up (ops->given_up) once the
 * file is durable and named; otherwise (a snapshot) it runs on as soon as
 * its state is taken, and the pause is the downtime a migration to the
 * disk would have. A failure leaves no file and the VM running. The file is
 * created here: 0, or -errno with why set (nothing started).
 */
int mig_save_start(struct vm *vm, const char *path, const json_t *desc, bool stop,
		   const struct mig_params *p, const struct mig_source_ops *ops, void *arg,
		   struct mig_job **out, char *why, size_t whylen);

/*
 * Restore the VM a snapshot file holds, on a thread of its own: ops->reserve
 * with the file's description, the pages, the vCPUs, clock, machine and
 * devices, activation. The file is opened and checked here, whole (0, or
 * -errno with why set: nothing started); a page that does not match its
 * hash later fails the restore and discards the VM.
 */
int mig_restore_start(const char *path, const struct mig_params *p,
		      const struct mig_dest_ops *ops, void *arg, struct mig_job **out, char *why,
		      size_t whylen);

/* What a rollback did to the VM's pages. */
struct mig_rollback_result {
	uint64_t pages;		/* the VM's */
	uint64_t reloaded;	/* content read from the file: it differed */
	uint64_t zeroed;	/* zeros in the file, content in the VM */
	uint64_t ballooned;	/* the balloon's in the file, not in the VM */
	uint64_t unballooned;	/* the balloon's in the VM, not in the file */
	uint64_t same;		/* equal already (by content hash, or both without content) */
	uint64_t ms;
	/* Asked for: XXH3-128 of every page once reloaded, before the state is (as a restore's). */
	char checksum[33];
};

/*
 * Put vm (paused, its devices stopped, not migrating) back to the snapshot
 * file at path: each page whose content differs from the file's (by the
 * file's SHA-256 of it) reloaded, every vCPU's, the clock's, the machine's
 * and the devices' state (ops->load_devices) loaded. The file must be of a
 * VM of the same shape (pages, vCPUs, accelerator; under thread, the same
 * place in the address space). 0, or -errno with why set: refused before
 * anything changed (a file that does not fit, or is corrupt in its table or
 * state), or failed part way (a page of the file that does not match its
 * hash: the VM must not run on, its memory is half the file's).
 */
int mig_rollback(struct vm *vm, const char *path, bool checksum, const struct mig_dest_ops *ops,
		 void *arg, struct mig_rollback_result *out, bool *half, char *why, size_t whylen);

#endif
