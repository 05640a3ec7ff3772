/* SPDX-License-Identifier: MIT */
/*
 * The host's side of snapshots (migrate/migrate.h does the work): the
 * verbs that save a VM into a file (save: a snapshot that lets it run on,
 * or, with stop, a freeze that gives it up once the file is whole) and that
 * restore one from a file into this host (restore), and `kvmem run
 * --restore`'s start. Files are named by absolute paths: the host's working
 * directory is not the client's. Only root's control socket reaches these
 * verbs, and a snapshot holds guest memory: it is created 0600.
 */
#define LOG_TAG "snapshot"
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/host/control.h"
#include "core/host/host_internal.h"
#include "core/log.h"
#include "core/sandbox.h"
#include "core/thread.h"
#include "core/vm.h"
#include "dedup/dedup.h"
#include "mem/memmap.h"
#include "migrate/migrate.h"
#include "migrate/snapfile.h"

/* How long the restore verb waits for its VM to run before it answers "still restoring". */
#define RESTORE_WAIT_MS (CONTROL_VERB_TIMEOUT_MS - 2000)

static void saved(void *arg)
{
	struct host_vm *hv = arg;

	pthread_mutex_lock(&hv->host->lock);
	hv->saved = true;
	pthread_mutex_unlock(&hv->host->lock);
	host_source_ops.given_up(arg);
}

static const struct mig_source_ops *save_ops(void)
{
	static struct mig_source_ops ops;

	ops = host_source_ops;
	ops.given_up = saved;
	return &ops;
}

static int save_verb(void *arg, json_t *req, json_t *reply)
{
	struct host *h = arg;
	struct mig_params p = { 0 };
	const char *name, *to;
	struct mig_job *job;
	struct host_vm *hv;
	uint64_t downtime;
	bool stop;
	char why[256];
	json_t *desc;
	int ret;

	if ((ret = control_req_string(req, "vm", reply, &name)) ||
	    (ret = control_req_string(req, "to", reply, &to)) ||
	    (ret = control_req_count(req, "downtime_ms", reply, 60000, &downtime)))
		return ret;
	if (to[0] != '/')
		return control_reply_error(reply, EINVAL, "to: %s: an absolute path (the host's "
					   "working directory is not the client's)", to);
	stop = json_is_true(json_object_get(req, "stop"));
	hv = host_find_vm(h, name);
	if (!hv)
		return control_reply_error(reply, ENOENT, "no VM named \"%s\"", name);
	if (host_vm_begin_job(h, hv))
		return control_reply_error(reply, EBUSY, "%s is migrating, being saved or removed "
					   "already", name);
	if (vm_get_state(hv->vm) != VM_RUNNING && vm_get_state(hv->vm) != VM_PAUSED) {
		host_vm_abandon_job(h, hv);
		return control_reply_error(reply, EINVAL, "%s is not running", name);
	}
	p.downtime_ms = (uint32_t)downtime;
	p.checksum = json_is_true(json_object_get(req, "checksum"));
	desc = host_vm_describe(h, hv);
	if (!desc)
		snprintf(why, sizeof(why), "out of memory");
	ret = desc ? mig_save_start(hv->vm, to, desc, stop, &p, stop ? save_ops() : &host_source_ops,
				    hv, &job, why, sizeof(why)) : -ENOMEM;
	json_decref(desc);
	if (ret) {
		host_vm_abandon_job(h, hv);
		return control_reply_error(reply, -ret, "cannot save %s: %s", name, why);
	}
	host_vm_set_job(h, hv, job);
	log_info("%s: %s to %s", name, stop ? "saving" : "taking a snapshot", to);
	json_object_set_new(reply, "migration", host_vm_migration_json(hv));
	return 0;
}

/*
 * Wait for restore id to end, up to ms (0: for ever). 1 when it ended (its
 * progress in *p), 0 when still running, -ENOENT when no longer known.
 */
static int restore_wait(struct host *h, uint64_t id, int ms, struct mig_progress *p)
{
	uint64_t until = kv_clock_ns(CLOCK_MONOTONIC) + (uint64_t)ms * 1000000ULL;
	int ret;

	while (!(ret = host_restore_progress(h, id, p)) &&
	       (!ms || kv_clock_ns(CLOCK_MONOTONIC) < until))
		nanosleep(&(struct timespec){ .tv_nsec = 5000000 }, NULL);
	return ret;
}

static int restore_verb(void *arg, json_t *req, json_t *reply)
{
	struct host *h = arg;
	const char *file, *name = NULL;
	struct mig_params p = { 0 };
	struct mig_progress prog;
	char why[256];
	uint64_t id;
	int ret;

	if ((ret = control_req_string(req, "file", reply, &file)))
		return ret;
	if (json_object_get(req, "name") && (ret = control_req_string(req, "name", reply, &name)))
		return ret;
	if (file[0] != '/')
		return control_reply_error(reply, EINVAL, "file: %s: an absolute path (the host's "
					   "working directory is not the client's)", file);
	/* Lazy unless asked otherwise: the VM runs before its memory is in. */
	p.checksum = json_is_true(json_object_get(req, "checksum"));
	p.lazy = !json_is_false(json_object_get(req, "lazy"));
	p.no_prefetch = json_is_false(json_object_get(req, "prefetch"));
	ret = host_restore_start(h, file, name, &p, NULL, &id, why, sizeof(why));
	if (ret)
		return control_reply_error(reply, -ret, "cannot restore: %s", why);
	ret = restore_wait(h, id, RESTORE_WAIT_MS, &prog);
	if (ret == 0)
		host_restore_forget(h, id);
	if (ret < 0)
		return control_reply_error(reply, EIO, "the restore of %s is no longer known", file);
	if (ret == 1 && prog.stage != MIG_STAGE_DONE)
		return control_reply_error(reply, EINVAL, "%s", prog.error);
	json_object_set_new(reply, "migration", host_job_json(&prog));
	json_object_set_new(reply, "vm", json_string(prog.vm));
	return 0;
}

static int rollback_load_devices(void *arg, json_t *devices, char *why, size_t whylen)
{
	return host_vm_load_devices(arg, devices, why, whylen);
}

static const struct mig_dest_ops rollback_ops = {
	.load_devices = rollback_load_devices,
};

/*
 * The VM back to a snapshot: paused with its devices as for stop-and-copy,
 * the pages that differ reloaded, its state loaded, then it runs on (unless
 * a user or the policy holds it). One that fails part way has half its
 * memory from the file: it stops rather than run on that.
 */
static int rollback_verb(void *arg, json_t *req, json_t *reply)
{
	struct host *h = arg;
	struct mig_rollback_result res;
	const char *name, *file;
	struct host_vm *hv;
	char why[256] = "";
	bool half;
	int ret;

	if ((ret = control_req_string(req, "vm", reply, &name)) ||
	    (ret = control_req_string(req, "file", reply, &file)))
		return ret;
	if (file[0] != '/')
		return control_reply_error(reply, EINVAL, "file: %s: an absolute path (the host's "
					   "working directory is not the client's)", file);
	hv = host_find_vm(h, name);
	if (!hv)
		return control_reply_error(reply, ENOENT, "no VM named \"%s\"", name);
	if (host_vm_migrating(h, hv))
		return control_reply_error(reply, EBUSY, "%s is migrating or being saved", name);
	if (vm_get_state(hv->vm) != VM_RUNNING && vm_get_state(hv->vm) != VM_PAUSED)
		return control_reply_error(reply, EINVAL, "%s is not running", name);
	ret = host_source_ops.stop(hv);
	if (ret)
		return control_reply_error(reply, -ret, "cannot pause %s: %s", name, strerror(-ret));
	ret = mig_rollback(hv->vm, file, json_is_true(json_object_get(req, "checksum")),
			   &rollback_ops, hv, &res, &half, why, sizeof(why));
	if (ret && half) {
		log_err("%s: rollback to %s failed part way (%s): the VM stops", name, file, why);
		vm_request_stop(hv->vm, VM_STATUS_VMM_ERROR);
		return control_reply_error(reply, -ret, "%s; %s stopped: its memory is partly the "
					   "file's", why, name);
	}
	host_source_ops.restart(hv);
	if (ret)
		return control_reply_error(reply, -ret, "%s", why);
	log_info("%s: rolled back to %s in %" PRIu64 " ms: %" PRIu64 " of %" PRIu64 " pages "
		 "reloaded", name, file, res.ms, res.reloaded, res.pages);
	json_object_set_new(reply, "rollback",
			    json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "file", file,
				      "pages", (json_int_t)res.pages, "reloaded",
				      (json_int_t)res.reloaded, "zeroed", (json_int_t)res.zeroed,
				      "ballooned", (json_int_t)res.ballooned, "unballooned",
				      (json_int_t)res.unballooned, "same", (json_int_t)res.same,
				      "ms", (json_int_t)res.ms));
	if (res.checksum[0])
		json_object_set_new(json_object_get(reply, "rollback"), "checksum",
				    json_string(res.checksum));
	return 0;
}

/* Clones one request makes at most (each a VM of the host's HOST_INCOMING_MAX more). */
#define CLONES_MAX 16
#define CLONE_PREFIX_MAX 48

/*
 * The snapshot's pages as frames of the host's sharing, read once (each
 * checked against its hash): every clone maps them copy-on-write.
 */
static int clone_image(struct host *h, struct snap_reader *r, uint64_t salt,
		       struct dedup_image **out, char *why, size_t whylen)
{
	uint64_t nr = snapr_nr_pages(r);
	uint8_t *buf = kv_zalloc(DEDUP_IMAGE_WINDOW * MEM_PAGE_SIZE), has[DEDUP_IMAGE_WINDOW];
	struct dedup_image *img = NULL;
	int ret = buf ? dedup_image_create(h->dedup, nr, salt, &img) : -ENOMEM;

	for (uint64_t idx = 0; idx < nr && !ret; idx += DEDUP_IMAGE_WINDOW) {
		uint32_t n = nr - idx < DEDUP_IMAGE_WINDOW ? (uint32_t)(nr - idx) : DEDUP_IMAGE_WINDOW;
		bool any = false;

		for (uint32_t i = 0; i < n; i++)
			any |= has[i] = snapr_kind(r, idx + i) == SNAP_PAGE_DATA;
		if (!any)
			continue;
		ret = snapr_read(r, idx, n, buf, NULL);
		if (ret == -EBADMSG) {
			snprintf(why, whylen, "%s: a page does not match its hash: the file is corrupt",
				 snapr_path(r));
			break;
		}
		if (!ret)
			ret = dedup_image_add(h->dedup, img, idx, n, has, buf);
	}
	if (ret && !why[0])
		snprintf(why, whylen, "the snapshot's pages as shared frames: %s", strerror(-ret));
	if (ret && img)
		dedup_image_free(h->dedup, img);
	kv_free(buf);
	if (!ret)
		*out = img;
	return ret;
}

/*
 * A clone request at work, on a thread of its own: a request for many clones
 * of a large VM takes long (a second's reading and hashing per GiB here, and
 * each clone started after the one before), which no verb should hold the
 * VM list for. Its progress is in the stats ("clones").
 */
enum clone_stage { CLONE_IMAGE, CLONE_STARTING, CLONE_DONE, CLONE_FAILED };

static const char *const clone_stages[] = {
	[CLONE_IMAGE] = "image", [CLONE_STARTING] = "starting",
	[CLONE_DONE] = "done", [CLONE_FAILED] = "failed",
};

struct clone_job {
	struct clone_job *next;		/* h->clones, newest first */
	struct host *h;
	uint64_t id;
	char *file;
	char prefix[CLONE_PREFIX_MAX + 1];
	uint64_t count;
	uint64_t salt;			/* the snapshot's sharing group: the image's and the clones' */
	struct snap_reader *r;		/* the thread's until it ends */
	pthread_t thread;
	uint64_t t0;			/* when it was asked for (ns) */
	/* h->clones_lock: */
	enum clone_stage stage;
	uint64_t started;		/* clones running */
	uint64_t ms;			/* from the request to its end */
	char error[400];
};

static void clone_set(struct clone_job *j, enum clone_stage stage, uint64_t started,
		      const char *error)
{
	pthread_mutex_lock(&j->h->clones_lock);
	j->stage = stage;
	j->started = started;
	if (error)
		snprintf(j->error, sizeof(j->error), "%s", error);
	if (stage == CLONE_DONE || stage == CLONE_FAILED)
		j->ms = (kv_clock_ns(CLOCK_MONOTONIC) - j->t0) / 1000000;
	pthread_mutex_unlock(&j->h->clones_lock);
}

/*
 * Start the job's clones, PREFIX-1 to PREFIX-count, one at a time, each
 * running before the next; the ones started stay when a later one fails.
 */
static void *clone_thread(void *arg)
{
	struct clone_job *j = arg;
	struct host *h = j->h;
	struct dedup_image *img = NULL;
	char why[256] = "", err[400], name[64];
	uint64_t i;
	int ret;

	sandbox_enter(SANDBOX_MIGRATION);
	ret = clone_image(h, j->r, j->salt, &img, why, sizeof(why));
	if (ret) {
		snprintf(err, sizeof(err), "cannot clone: %s", why);
		clone_set(j, CLONE_FAILED, 0, err);
		goto out;
	}
	clone_set(j, CLONE_STARTING, 0, NULL);
	for (i = 1; i <= j->count; i++) {
		/* Identities are this host's: clones of two requests differ too. */
		static uint64_t identities;
		struct mig_params p = { .identity = __atomic_add_fetch(&identities, 1,
								       __ATOMIC_RELAXED) };
		struct mig_progress prog = { 0 };
		uint64_t id;

		snprintf(name, sizeof(name), "%s-%" PRIu64, j->prefix, i);
		ret = host_restore_start(h, j->file, name, &p, img, &id, why, sizeof(why));
		/* Waited for whole: the image must outlive every clone's mapping of it. */
		if (!ret)
			ret = restore_wait(h, id, 0, &prog) == 1 && prog.stage == MIG_STAGE_DONE
				      ? 0 : -EIO;
		if (ret) {
			snprintf(err, sizeof(err), "%s: %s (%" PRIu64 " started before it)", name,
				 ret == -EIO ? prog.error : why, i - 1);
			clone_set(j, CLONE_FAILED, i - 1, err);
			break;
		}
		clone_set(j, CLONE_STARTING, i, NULL);
	}
	dedup_image_free(h->dedup, img);
	if (!ret) {
		clone_set(j, CLONE_DONE, j->count, NULL);
		log_info("%s: %" PRIu64 " clones of %s", j->prefix, j->count, j->file);
	}
out:
	snapr_close(j->r);
	j->r = NULL;
	return NULL;
}

/* Ended requests the stats keep showing, newest first; older ones go. */
#define CLONES_KEPT 16

/* Unlink ended requests beyond the newest CLONES_KEPT (clones_lock): free_clones them. */
static struct clone_job *prune_clones(struct host *h)
{
	struct clone_job **pp = &h->clones, *gone = NULL;
	unsigned int ended = 0;

	while (*pp) {
		struct clone_job *j = *pp;

		if ((j->stage == CLONE_DONE || j->stage == CLONE_FAILED) && ++ended > CLONES_KEPT) {
			*pp = j->next;
			j->next = gone;
			gone = j;
		} else {
			pp = &j->next;
		}
	}
	return gone;
}

/* Join and free a list of requests (their threads have ended or are ending). */
static void free_clones(struct clone_job *list)
{
	while (list) {
		struct clone_job *j = list;

		list = j->next;
		pthread_join(j->thread, NULL);
		kv_free(j->file);
		kv_free(j);
	}
}

/*
 * Start count VMs from one snapshot, PREFIX-1 to PREFIX-count, each a clone:
 * its pages the snapshot's, as frames of the host's sharing (copy-on-write
 * from birth: count clones cost one copy until they write), and an identity
 * of its own in its boot parameters. What can be checked at once is; the
 * clones start on the job's thread, and the reply names the job.
 */
static int clone_verb(void *arg, json_t *req, json_t *reply)
{
	static uint64_t next_id;
	struct host *h = arg;
	const char *file, *prefix = NULL, *accel = "", *group = HOST_GROUP_DEFAULT;
	struct snap_reader *r = NULL;
	struct clone_job *j = NULL, *old;
	json_t *names, *desc = NULL;
	uint64_t count;
	char why[256] = "", name[64];
	int ret;

	if ((ret = control_req_string(req, "file", reply, &file)) ||
	    (ret = control_req_count(req, "count", reply, CLONES_MAX, &count)))
		return ret;
	if (json_object_get(req, "prefix") && (ret = control_req_string(req, "prefix", reply, &prefix)))
		return ret;
	if (file[0] != '/')
		return control_reply_error(reply, EINVAL, "file: %s: an absolute path (the host's "
					   "working directory is not the client's)", file);
	if (!count)
		return control_reply_error(reply, EINVAL, "count: from 1 to %d", CLONES_MAX);
	if (!h->dedup)
		return control_reply_error(reply, EOPNOTSUPP, "clones share the snapshot's pages "
					   "through kvmem's page sharing: run the host with dedup on");
	ret = snapr_open(file, &r, why, sizeof(why));
	if (ret)
		return control_reply_error(reply, -ret, "cannot clone: %s", why);
	desc = snapr_desc(r);
	json_unpack(desc, "{s?s, s?s}", "accel", &accel, "sharing_group", &group);
	if (strcmp(accel, "kvm")) {
		ret = control_reply_error(reply, EOPNOTSUPP, "clones are for the kvm accelerator: "
					  "under %s a guest holds host addresses and resumes only at "
					  "the place its RAM had, which one VM has at a time",
					  accel[0] ? accel : "its accelerator");
		goto out;
	}
	/* A clone's identity reaches the kvmem guest's boot parameters only (vm_set_identity). */
	if (json_is_true(json_object_get(desc, "linux")))
		log_info("%s: clones of a Linux guest run alike: it has no device to learn its "
			 "identity from", file);
	/* Each clone takes the group its snapshot's VM was in, and shares only there. */
	if ((ret = host_group_check(group, false, why, sizeof(why)))) {
		ret = control_reply_error(reply, -ret, "cannot clone: %s", why);
		goto out;
	}
	if (!prefix)
		prefix = json_string_value(json_object_get(desc, "name"));
	if (!prefix || strlen(prefix) > CLONE_PREFIX_MAX) {
		ret = control_reply_error(reply, EINVAL, "prefix: a name of at most %d characters",
					  CLONE_PREFIX_MAX);
		goto out;
	}
	j = kv_zalloc(sizeof(*j));
	if (!j || !(j->file = kv_strdup(file))) {
		ret = -ENOMEM;
		goto out;
	}
	j->h = h;
	j->r = r;
	j->count = count;
	j->salt = host_group_salt(group);
	j->t0 = kv_clock_ns(CLOCK_MONOTONIC);
	snprintf(j->prefix, sizeof(j->prefix), "%s", prefix);
	pthread_mutex_lock(&h->clones_lock);
	old = prune_clones(h);
	if (h->clones_closed) {
		pthread_mutex_unlock(&h->clones_lock);
		ret = control_reply_error(reply, ECANCELED, "the host is stopping");
		goto out;
	}
	j->id = ++next_id;
	ret = thread_spawn(&j->thread, "clone", clone_thread, j);
	if (!ret) {
		j->next = h->clones;
		h->clones = j;
	}
	pthread_mutex_unlock(&h->clones_lock);
	free_clones(old);
	if (ret)
		goto out;
	r = NULL;
	names = json_array();
	for (uint64_t i = 1; i <= count; i++) {
		snprintf(name, sizeof(name), "%s-%" PRIu64, j->prefix, i);
		json_array_append_new(names, json_string(name));
	}
	json_object_set_new(reply, "clone", json_pack("{s:I, s:s, s:I, s:o}", "id",
						       (json_int_t)j->id, "file", file, "count",
						       (json_int_t)count, "names", names));
	j = NULL;
out:
	if (j)
		kv_free(j->file);
	kv_free(j);
	json_decref(desc);
	snapr_close(r);
	return ret;
}

json_t *host_clones_json(struct host *h)
{
	json_t *arr = json_array();

	pthread_mutex_lock(&h->clones_lock);
	for (struct clone_job *j = h->clones; j; j = j->next)
		json_array_append_new(arr, json_pack("{s:I, s:s, s:s, s:I, s:I, s:s, s:I, s:s*}",
						     "id", (json_int_t)j->id, "file", j->file,
						     "prefix", j->prefix, "count", (json_int_t)j->count,
						     "started", (json_int_t)j->started,
						     "stage", clone_stages[j->stage],
						     "ms", (json_int_t)j->ms,
						     "error", j->error[0] ? j->error : NULL));
	pthread_mutex_unlock(&h->clones_lock);
	return arr;
}

void host_clones_stop(struct host *h)
{
	struct clone_job *list;

	pthread_mutex_lock(&h->clones_lock);
	h->clones_closed = true;
	list = h->clones;
	h->clones = NULL;
	pthread_mutex_unlock(&h->clones_lock);
	free_clones(list);
}

int host_restore(struct host *h, const char *path, const char *name)
{
	struct mig_params params = { .lazy = true };
	struct mig_progress p;
	char why[256];
	uint64_t id;
	int ret;

	ret = host_restore_start(h, path, name, &params, NULL, &id, why, sizeof(why));
	if (ret) {
		log_err("cannot restore: %s", why);
		return ret == -ENOMEM || ret == -EAGAIN ? ret : -ENOEXEC;
	}
	ret = restore_wait(h, id, 0, &p);
	if (ret == 1 && p.stage == MIG_STAGE_DONE) {
		log_info("%s: restored from %s in %" PRIu64 " ms", p.vm, path, p.total_ms);
		return 0;
	}
	log_err("cannot restore %s: %s", path, ret == 1 ? p.error : "the restore vanished");
	return -EINVAL;
}

int host_snapshot_register(struct host *h)
{
	int ret = control_register_verb(h->control, "save", save_verb, h);

	if (!ret)
		ret = control_register_verb(h->control, "restore", restore_verb, h);
	if (!ret)
		ret = control_register_verb(h->control, "rollback", rollback_verb, h);
	if (!ret)
		ret = control_register_verb(h->control, "clone", clone_verb, h);
	return ret;
}
