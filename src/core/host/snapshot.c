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

#include "core/clock.h"
#include "core/host/control.h"
#include "core/host/host_internal.h"
#include "core/log.h"
#include "core/vm.h"
#include "migrate/migrate.h"

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
	if (host_vm_migrating(h, hv))
		return control_reply_error(reply, EBUSY, "%s is migrating or being saved already",
					   name);
	if (vm_get_state(hv->vm) != VM_RUNNING && vm_get_state(hv->vm) != VM_PAUSED)
		return control_reply_error(reply, EINVAL, "%s is not running", name);
	p.downtime_ms = (uint32_t)downtime;
	p.checksum = json_is_true(json_object_get(req, "checksum"));
	desc = host_vm_describe(h, hv);
	if (!desc)
		return control_reply_error(reply, ENOMEM, "out of memory");
	ret = mig_save_start(hv->vm, to, desc, stop, &p, stop ? save_ops() : &host_source_ops, hv,
			     &job, why, sizeof(why));
	json_decref(desc);
	if (ret)
		return control_reply_error(reply, -ret, "cannot save %s: %s", name, why);
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
	ret = host_restore_start(h, file, name, &p, &id, why, sizeof(why));
	if (ret)
		return control_reply_error(reply, -ret, "cannot restore: %s", why);
	ret = restore_wait(h, id, RESTORE_WAIT_MS, &prog);
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

int host_restore(struct host *h, const char *path, const char *name)
{
	struct mig_params params = { .lazy = true };
	struct mig_progress p;
	char why[256];
	uint64_t id;
	int ret;

	ret = host_restore_start(h, path, name, &params, &id, why, sizeof(why));
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
	return ret;
}
