/* SPDX-License-Identifier: MIT */
/*
 * Private to src/core/host: the host and its VMs as host.c and the
 * migration side of the host (migration.c) share them.
 *
 * The VM array has room for the configured VMs and HOST_INCOMING_MAX more
 * (started by a verb, migrated in, restored) at a time. It never moves. An
 * entry is filled before nr_vms counts it (release; readers load it with
 * acquire), and a VM that leaves (migrated away, saved, removed, or an
 * incoming one discarded) keeps its entry until its job has ended: its
 * resources are released by the main thread under the write side of
 * vms_lock, which every control verb holds for reading. Then the main
 * thread, under that write side too, makes the entry vacant, keeping how
 * the VM left (its last job's figures) in the host's history. A vacant
 * entry takes the next VM in once every entry has been used; it is filled
 * while still vacant, and published by clearing its vacancy (release).
 * Every walk of the array skips vacant entries (host_vm_vacant, acquire)
 * before it reads anything else of them.
 */
#ifndef KVMEM_CORE_HOST_INTERNAL_H
#define KVMEM_CORE_HOST_INTERNAL_H

#include <pthread.h>

#include "core/host/host.h"
#include "migrate/migrate.h"

#define HOST_INCOMING_MAX 64
/* How the last VMs that left went (their last migration or save), for the stats. */
#define HOST_HISTORY_MAX 16
#define HOST_GROUP_MAX 63		/* characters of a sharing group's name */
#define HOST_GROUP_DEFAULT "default"

struct mig_job;
struct mig_params;
struct mig_progress;
struct mig_source_ops;
struct incoming;
struct arrival;
struct dedup_image;
struct mem_ledger;
struct clone_job;

struct host_vm {
	struct host *host;
	struct host_vm_config cfg;	/* borrowed from the host's config copy */
	struct vm *vm;
	struct ovc_vm *ovc;
	struct balloon *balloon;	/* its virtio-balloon device */
	bool stopped;			/* h->lock */
	/* Who paused it (h->pause_lock): the policy, to hold the hard limit, and/or a user. */
	bool policy_paused, user_paused;
	int status;			/* h->lock, valid once stopped */
	/* Host swap: attached once its userfaultfd serves it, detached before it goes. */
	bool swap_attached;
	bool swap_failed;		/* a swapped page could not be read back: the VM stops */
	bool swap_error_set;		/* swap_error written (release/acquire) */
	char swap_error[192];		/* the reason, written once */
	/* Migration (migration.c). */
	bool mig_paused;		/* h->pause_lock: stopped for stop-and-copy */
	bool incoming;			/* being received: not started (h->lock) */
	bool gone;			/* migrated away, saved or discarded: to be released (h->lock) */
	bool saved;			/* gone into a file (kvmem save --stop) (h->lock) */
	char *restored_from;		/* the snapshot file it was restored from, or NULL */
	bool clone;			/* ... as a clone: its pages shared frames of that file's */
	bool removing;			/* release it once stopped (the remove verb) (h->lock) */
	bool job_starting;		/* a verb is starting a migration or save of it (h->lock) */
	bool released;			/* its resources are gone (main thread, vms_lock) */
	/* Its sharing group (groups.c): name and its salt (h->lock). */
	char group[HOST_GROUP_MAX + 1];
	uint64_t group_salt;
	bool owns_cfg;			/* cfg's strings are its own (an incoming VM's) */
	/*
	 * Its last migration, either way (h->lock): one away is the VM's to
	 * free, the one that brought it here its arrival's until that arrival
	 * ends and hands it over (migration.c): mig_owned says which.
	 */
	struct mig_job *mig;
	bool mig_owned;
};

struct host {
	struct host_config cfg;		/* borrowed; outlives the host */
	pthread_mutex_t lock;		/* guards the stopped flags, nr_running */
	bool closing;			/* lock: stopping every VM: none is taken in any more */
	pthread_mutex_t pause_lock;	/* pauses and resumes, by hand or by the policy */
	struct host_vm *vms;		/* never moves: cap_vms entries */
	bool *vacant;			/* per entry: vacant (release/acquire; see above) */
	unsigned int cap_vms;
	unsigned int nr_vms;		/* entries ever used (release/acquire; written under lock) */
	unsigned int max_arrivals;	/* arrivals at a time: HOST_INCOMING_MAX, or fewer */
	/* lock: the last jobs of VMs whose entries went vacant, oldest first from history_first */
	struct mig_progress history[HOST_HISTORY_MAX];
	unsigned int nr_history, history_first;
	pthread_rwlock_t vms_lock;	/* read: a verb runs; write: a VM is released */
	unsigned int nr_running;
	int stop_efd;			/* bumped when a VM stops */
	struct uffd_service *uffd;
	struct ovc *ovc;
	struct control *control;
	struct dedup *dedup;		/* kvmem's page sharing (--dedup on), or NULL */
	struct mem_ledger *ledger;	/* where every guest page is, what saves what */
	struct mem_swap *swap;		/* the host's swap file, or NULL */
	struct incoming *incoming;	/* the listener for VMs migrating here, or NULL */
	uint8_t *secret;		/* cfg.migration_secret's content, or NULL */
	size_t secret_len;
	uint8_t *fp_key;		/* cfg.fingerprint_key's content, or NULL: unkeyed */
	size_t fp_key_len;
	uint64_t mig_gone_ns;		/* when a VM last migrated away (h->lock) */
	/* VMs coming in: over the listener, or restored (migration.c). */
	pthread_mutex_t arrivals_lock;
	struct arrival *arrivals[HOST_INCOMING_MAX];
	unsigned int nr_arrivals;
	bool arrivals_closed;		/* arrivals_lock: the host stops: no more come */
	/* Clone requests, each on a thread of its own (snapshot.c). */
	pthread_mutex_t clones_lock;
	struct clone_job *clones;	/* clones_lock: newest first */
	bool clones_closed;		/* clones_lock: the host stops: no more start */
};

/* Entries used so far (acquire: they are complete, or vacant). */
static inline unsigned int host_nr_vms(const struct host *h)
{
	return __atomic_load_n(&h->nr_vms, __ATOMIC_ACQUIRE);
}

/* Entry i holds nothing: skip it, reading nothing else of it (acquire). */
static inline bool host_vm_vacant(const struct host *h, unsigned int i)
{
	return __atomic_load_n(&h->vacant[i], __ATOMIC_ACQUIRE);
}

/* Create hv's VM and its devices from hv->cfg (nothing runs). host.c. */
int host_create_vm(struct host *h, struct host_vm *hv);
/* Where a VM taken in after the start comes from (host_add_vm). */
struct host_vm_origin {
	bool incoming;			/* arriving (migration, restore): started by its job */
	struct mig_job *job;		/* that job, or NULL */
	const char *file;		/* the snapshot file it is restored from, or NULL */
	bool clone;			/* ... as a clone */
};

/*
 * Take a VM in after the start: its config c (its strings are handed over,
 * freed by the host on failure too), checked against what this host
 * promised already (a unique name, room in the VM array, and the sum of
 * every VM's min, the part the policy never reclaims, within the budget:
 * above its min a VM takes what overcommit gives it, which is what this
 * host is for), then created, not started. 0 and *out, or -errno with why.
 */
int host_add_vm(struct host *h, struct host_vm_config *c, const struct host_vm_origin *o,
		struct host_vm **out, char *why, size_t whylen);

/* The VM of that name that runs here (not arriving, not gone), or NULL. */
struct host_vm *host_find_vm(struct host *h, const char *name);
/* "running", "paused", "incoming", "migrated"... for the list and the stats. */
const char *host_vm_state(struct host_vm *hv);
/* Wake the main loop (a VM stopped, or one is to be released). */
void host_wake(struct host *h);

/*
 * Stop hv's VM and free everything it holds (its entry stays, released);
 * nothing may use it any more: the main thread, under vms_lock's write
 * side, or at the host's end. host.c.
 */
void host_release_vm(struct host *h, struct host_vm *hv);

/* migration.c */
int host_migration_register(struct host *h);	/* the verbs, with the control socket */
int host_migration_listen(struct host *h);	/* accept VMs at cfg.incoming, if set */
void host_migration_stop(struct host *h);	/* no more VMs in or out; idempotent */
json_t *host_vm_migration_json(struct host_vm *hv);	/* null: never migrated */
/* How long the host should still serve after a VM migrated away (ms, 0: no more). */
int host_migration_linger_ms(struct host *h);
/* Append the incoming migrations that never got as far as a VM (refused, failed early). */
void host_migration_refused_json(struct host *h, json_t *arr);
/*
 * A key file's content (what: the config field, for the log): a regular
 * file of 16 to 4096 bytes only its owner (this host's user) may read or
 * write. 0 and *out (kv_alloc'd), or -errno (logged).
 */
int host_load_key(const char *what, const char *path, uint8_t **out, size_t *len);
/*
 * Sharing groups (groups.c). host_group_check: is `name` a group name a VM
 * may take on this host (ksm: host KSM, which keeps only the default
 * group)? 0, -EINVAL or -ENOTSUP with why. host_vm_join_group: put hv in
 * group `name` (checked), its shared pages leaving their frames (*unshared,
 * may be NULL); 0 or -errno. host_vm_group: its group's name and salt now.
 * host_groups_add: count a VM of `group` with the ledger's figures u (may
 * be NULL) into the stats' object of groups.
 */
struct mem_usage;
int host_group_check(const char *name, bool ksm, char *why, size_t whylen);
/* The page sharing engine's salt of group `name` (dedup_group_salt). */
uint64_t host_group_salt(const char *name);
int host_vm_join_group(struct host *h, struct host_vm *hv, const char *name, uint64_t *unshared);
/* The group its config names (the default one when none). */
const char *host_vm_config_group(const struct host_vm *hv);
void host_vm_group(struct host *h, struct host_vm *hv, char *name, size_t len, uint64_t *salt);
void host_groups_add(json_t *groups, const char *group, const struct mem_usage *u);
int host_groups_register(struct host *h);
/* The "faults" verb where fault injection is built in (faults.c); 0 without. */
int host_faults_register(struct host *h);
/* The "fingerprint" verb, after loading cfg.fingerprint_key (fingerprint.c). */
int host_fingerprint_register(struct host *h);
/* Every clone request's progress, for the stats (snapshot.c). */
json_t *host_clones_json(struct host *h);
/* Start no more clone requests and wait for those at work (after host_migration_stop). */
void host_clones_stop(struct host *h);
/*
 * The main thread: release every VM that left (migrated away, saved,
 * removed, or discarded), and make the entries of those whose jobs ended
 * vacant. True while an entry still waits for its job to end.
 */
bool host_release_gone(struct host *h);
/* Append how the VMs whose entries went vacant left (the history) to arr. */
void host_migration_history_json(struct host *h, json_t *arr);
/* What a VM's owner does for a job that sends it away (to a host or a file). */
extern const struct mig_source_ops host_source_ops;
/*
 * The corpus file `name` (a plain file name) in the host's corpus_dir, for
 * a VM from outside the config: 0 and *out (kv_alloc'd), or -EPERM when the
 * host has no corpus_dir, -EINVAL for a name that is not a plain file name,
 * with the reason in why.
 */
int host_corpus_path(struct host *h, const char *name, char **out, char *why, size_t whylen);
/* A VM's description, for a reservation or a snapshot file (new reference, NULL: no memory). */
json_t *host_vm_describe(struct host *h, struct host_vm *hv);
/* Give hv's devices (stopped) the state a save took (untrusted): 0, or -EINVAL with why. */
int host_vm_load_devices(struct host_vm *hv, json_t *devices, char *why, size_t whylen);
/*
 * A verb starting a job of hv (a migration or a save) claims it first: 0, or
 * -EBUSY when another job runs or starts, or the VM is being removed. The
 * claim ends with host_vm_set_job (the job started) or host_vm_abandon_job.
 * So a VM is never removed under a job that is starting, nor gets one while
 * it is being removed.
 */
int host_vm_begin_job(struct host *h, struct host_vm *hv);
void host_vm_abandon_job(struct host *h, struct host_vm *hv);
/* hv's job is job now (one that has not started sending it away); frees the last one it sent. */
void host_vm_set_job(struct host *h, struct host_vm *hv, struct mig_job *job);
/* hv has a job sending it away or bringing it in that has not ended. */
bool host_vm_migrating(struct host *h, struct host_vm *hv);
/*
 * Restore the VM in the snapshot file at path here (name: a new name for
 * it, or NULL), on a job of its own: 0 with *id to follow it by, or -errno
 * with why set (the file refused, say). A clone (params->identity) maps img,
 * the file's pages as frames of the host's sharing, which must outlive the
 * job.
 */
int host_restore_start(struct host *h, const char *path, const char *name,
		       const struct mig_params *params, struct dedup_image *img, uint64_t *id,
		       char *why, size_t whylen);
/* Restore id's progress: 1 when it ended, 0 while it runs, -ENOENT when gone. */
int host_restore_progress(struct host *h, uint64_t id, struct mig_progress *out);
/*
 * Nobody follows restore id any more (its verb answered before it ended):
 * it goes once it ends, its VM showing how, rather than wait to be read.
 */
void host_restore_forget(struct host *h, uint64_t id);
/* A job's progress as the stats show it (new reference). */
json_t *host_job_json(const struct mig_progress *p);

/* snapshot.c */
int host_snapshot_register(struct host *h);	/* the verbs, with the control socket */
/*
 * Restore the VM of the snapshot file at path (name: a new name, or NULL)
 * and wait until it runs: 0, -ENOEXEC when the file is refused, or -errno;
 * the reason logged.
 */
int host_restore(struct host *h, const char *path, const char *name);

#endif
