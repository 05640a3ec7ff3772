/* SPDX-License-Identifier: MIT */
/*
 * The control socket (see control.h; protocol in README.md).
 *
 * One event-loop thread ("control") owns the listening socket and every
 * client: an epoll set (level-triggered) over the listening fd, a stop
 * eventfd, a "done" eventfd and the non-blocking clients. Each ready client
 * gets one read per round, so no client can hold the loop. A client's input
 * is cut into lines (at most CONTROL_MAX_LINE bytes); each line is one
 * request, answered by one reply line appended to the client's output
 * buffer and sent as the socket takes it. A client gets at most
 * LINES_PER_ROUND requests served per round; the rest wait (the loop polls
 * without sleeping while any client has some, and does not read from that
 * client meanwhile). A client is dropped when its unread replies pass
 * CONTROL_MAX_OUTPUT, refused when CONTROL_MAX_CLIENTS are connected or its
 * peer is not let in (control_peer_access); a client let in for its group
 * is read-only: a verb outside read_only_verbs gets an EPERM reply and the
 * connection goes on. A too-long line is answered with an error, after
 * which the client's input is discarded (up to DISCARD_MAX) until it closes,
 * so the client can still read why.
 *
 * Handlers never run on the loop: a request that names a verb becomes a job
 * run by a job thread (a verb's handler may wait on a VM, and one slow VM
 * must not stall the socket for everyone else). Job threads are kept: one
 * that finished its job takes the next queued one, or waits for one up to
 * WORKER_IDLE_MS before it ends, and a new one is started only when no
 * thread is idle, so a request costs no thread creation unless requests
 * run side by side (each job still has a thread to itself). Its client has
 * that one request in flight and nothing more of its input is served until
 * the reply is queued, so replies stay in request order. The job's thread
 * hands the finished job back through the done list and eventfd. When a
 * job is not done by its deadline the loop answers ETIMEDOUT itself and
 * abandons the job: the thread throws its result away, and does not start
 * a handler that has not started by then (a request answered "timed out"
 * must not take effect later when it can still be prevented). Requests of a
 * verb registered by a module take turns (the verb's busy flag); the host's
 * own verbs are safe to run side by side.
 *
 * Locks: `lock` guards the verb table, each verb's busy flag and users,
 * the jobs' shared fields, the job queue and the job threads' counts, the
 * done list, the adopted fds and nr_workers; it is never held while a
 * handler runs. Everything else is control-thread only.
 */
#define LOG_TAG "control"
#include "core/host/control.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/host/host.h"
#include "core/host/metrics.h"
#include "core/size.h"
#include "core/thread.h"
#include "core/vm.h"

#define IN_CHUNK 4096
#define DISCARD_MAX (64ULL << 20)	/* input thrown away after a too-long line */
#define ACCEPTS_PER_ROUND 16
#define LINES_PER_ROUND 32		/* requests served per client per loop round */
#define VERB_NAME_MAX 32
#define REPLY_MAX (64ULL << 20)		/* longest reply control_request accepts */
/*
 * Jobs at once: one per client in flight, plus abandoned ones still
 * finishing. Past this, requests get EAGAIN rather than threads.
 */
#define MAX_WORKERS (2 * CONTROL_MAX_CLIENTS)
/* How long an idle job thread waits for the next job before it ends. */
#define WORKER_IDLE_MS 10000

struct job;

struct client {
	int fd;
	char *in;		/* unparsed input; in_len < CONTROL_MAX_LINE between reads */
	size_t in_len;
	size_t in_cap;
	char *out;		/* replies not yet sent: out[out_off, out_len) */
	size_t out_off;
	size_t out_len;
	size_t out_cap;
	struct job *job;	/* the request in flight, or NULL */
	bool rd_eof;		/* the peer will send nothing more */
	bool backlog;		/* complete lines left unserved: not reading until served */
	bool discarding;	/* after a too-long line: no more requests, drop input */
	bool wr_shut;		/* shutdown(SHUT_WR) done after the last reply */
	bool read_only;		/* let in by the socket's group: read_only_verbs only */
	uint64_t discarded;
	uint32_t events;	/* epoll mask registered now */
};

/* Allocated on its own: a running job points at it while the table changes. */
struct verb {
	char name[VERB_NAME_MAX];
	control_verb_fn fn;
	void *arg;
	bool concurrent;	/* immutable: its handlers may run side by side */
	bool busy;		/* lock: a handler of this verb runs (not concurrent) */
	unsigned int users;	/* lock: jobs holding it; unregistering waits for 0 */
};

struct job {
	struct control *c;
	struct verb *verb;	/* a user of it until done */
	json_t *req;		/* owned */
	json_t *reply;		/* owned: {"ok": true[, "id"]} for the handler to fill */
	long deadline_ms;	/* CLOCK_MONOTONIC, now_ms() */
	struct client *cl;	/* control thread: the client waiting, until abandoned */
	int ret;		/* lock: the handler's result, once done */
	bool started;		/* lock: the handler was called */
	bool done;		/* lock: the thread is finished with it */
	bool expired;		/* lock: answered ETIMEDOUT: its handler must not start now */
	bool abandoned;		/* lock: the loop no longer wants it (whoever sees done frees) */
	struct job *next;	/* lock: c->queue, then c->done */
};

struct control {
	struct host *host;
	char *path;		/* NULL: no socket file */
	dev_t dev;		/* identity of the socket file we bound, to unlink only ours */
	ino_t ino;
	int lfd;
	bool has_group;		/* immutable: the socket's group members may read */
	gid_t group;		/* immutable: that group, when has_group */
	int stop_efd;
	int done_efd;		/* a job finished, or an fd was adopted */
	int epfd;
	pthread_t thread;
	bool started;
	bool accept_paused;	/* out of fds: listening fd not polled until a client goes */
	unsigned int timeout_ms; /* the verb deadline; set before clients come */
	void (*guard_enter)(void *arg); /* around every handler (control_set_guard) */
	void (*guard_leave)(void *arg);
	void *guard_arg;
	pthread_mutex_t lock;
	pthread_cond_t cond;	/* lock: a verb's turn, users, nr_workers or nr_threads */
	struct verb *verbs[CONTROL_MAX_VERBS]; /* lock */
	unsigned int nr_verbs;	/* lock */
	struct job *done;	/* lock: finished jobs for the loop */
	pthread_cond_t work;	/* lock: a job was queued, or threads_stop was set */
	struct job *queue;	/* lock: jobs no job thread has taken yet, oldest first */
	unsigned int nr_queued;	/* lock: their number */
	unsigned int nr_threads; /* lock: job threads alive */
	unsigned int nr_busy;	/* lock: of which running a job (the others take the next) */
	bool threads_stop;	/* lock: idle job threads end (control_destroy) */
	int adopted[CONTROL_MAX_CLIENTS]; /* lock: fds from control_serve_fd */
	unsigned int nr_adopted; /* lock */
	unsigned int nr_workers; /* lock: jobs queued or running */
	struct client *clients[CONTROL_MAX_CLIENTS]; /* control thread only */
	unsigned int nr_clients;
};

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

bool control_uid_trusted(uid_t uid)
{
	return uid == 0 || uid == geteuid();
}

enum control_access control_peer_access(uid_t uid, gid_t gid, const gid_t *groups,
					size_t nr_groups, const gid_t *group)
{
	if (control_uid_trusted(uid))
		return CONTROL_FULL;
	if (!group)
		return CONTROL_DENIED;
	if (gid == *group)
		return CONTROL_READ_ONLY;
	for (size_t i = 0; i < nr_groups; i++)
		if (groups[i] == *group)
			return CONTROL_READ_ONLY;
	return CONTROL_DENIED;
}

/*
 * The verbs a socket-group member may call: each only reads what the
 * stats already publish to anyone who may read them. Every verb not named
 * here is root's, a verb a module registers later included: a new verb
 * stays closed to the group until someone decides it belongs here. Left
 * out on purpose although they change nothing or little:
 *   fingerprint   a sketch of a VM's page contents: a side channel on
 *                 what the guest holds, not a figure about its memory;
 *   memcheck      walks every page of a VM and moves pages the guest
 *                 touched back to anon: costs the host and changes state;
 *   dirty_rate    write-protects the VM's memory for its window: slows
 *                 the guest, and makes a migration started meanwhile wait;
 *   dedup, sharing_group  read or change by the same verb (fields decide);
 *                 what they read is in the stats.
 * The rest (pause, resume, stop, start, remove, budget, reclaim, swap,
 * balloon, migrate*, save, restore, rollback, clone) act on the host or a VM.
 */
static const char *const read_only_verbs[] = {
	"list",		/* names, states, sizes: a part of the stats */
	"stats",	/* what the group is for */
	"metrics",	/* the stats as OpenMetrics, for a scraper run as that user */
	"verbs",	/* the verbs' names, to know what to ask: nothing about a guest */
};

bool control_verb_is_read_only(const char *verb)
{
	for (size_t i = 0; i < ARRAY_SIZE(read_only_verbs); i++)
		if (!strcmp(verb, read_only_verbs[i]))
			return true;
	return false;
}

/* "list, stats, ...": the table, for the refusal a read-only client reads. */
static const char *read_only_names(char *buf, size_t len)
{
	size_t o = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < ARRAY_SIZE(read_only_verbs) && o < len; i++)
		o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? ", " : "", read_only_verbs[i]);
	return buf;
}

/* ---- errors and JSON helpers ---------------------------------------------------------- */

const char *control_errname(int err)
{
	static __thread char buf[16];
	const char *name;

	if (err < 0)
		err = -err;
	name = strerrorname_np(err);
	if (name)
		return name;
	snprintf(buf, sizeof(buf), "E%d", err);
	return buf;
}

/* json_string that never fails on bytes from a hostile peer: non-UTF-8 becomes '?'. */
static json_t *safe_string(const char *s)
{
	json_t *j = json_string(s);
	char *copy;

	if (j)
		return j;
	copy = kv_strdup(s);
	if (!copy)
		return json_string("(unprintable)");
	for (char *p = copy; *p; p++)
		if ((unsigned char)*p >= 0x80 || (unsigned char)*p < 0x20)
			*p = '?';
	j = json_string(copy);
	kv_free(copy);
	return j;
}

int control_reply_error(json_t *reply, int err, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_object_set_new(reply, "error", safe_string(msg));
	return err < 0 ? err : -err;
}

int control_req_string(json_t *req, const char *key, json_t *reply, const char **out)
{
	json_t *v = json_object_get(req, key);

	if (!v)
		return control_reply_error(reply, EINVAL, "%s: missing", key);
	if (!json_is_string(v))
		return control_reply_error(reply, EINVAL, "%s: must be a string", key);
	*out = json_string_value(v);
	return 0;
}

int control_req_size(json_t *req, const char *key, json_t *reply, uint64_t *out)
{
	char err[200];

	/* The same reading as the config's and the CLI's, a JSON number being bytes here. */
	if (size_json(key, json_object_get(req, key), SIZE_JSON_BYTES, SIZE_MAX_BYTES, out, err,
		      sizeof(err)))
		return control_reply_error(reply, EINVAL, "%s", err);
	return 0;
}

int control_req_count(json_t *req, const char *key, json_t *reply, uint64_t max, uint64_t *out)
{
	json_t *v = json_object_get(req, key);

	*out = 0;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    (uint64_t)json_integer_value(v) > max)
		return control_reply_error(reply, EINVAL, "%s: a whole number from 0 to %" PRIu64,
					   key, max);
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

/* ---- the verb table -------------------------------------------------------------------- */

/* Lock held. */
static struct verb *find_verb(struct control *c, const char *name)
{
	for (unsigned int i = 0; i < c->nr_verbs; i++)
		if (!strcmp(c->verbs[i]->name, name))
			return c->verbs[i];
	return NULL;
}

static int add_verb(struct control *c, const char *verb, control_verb_fn fn, void *arg,
		    bool concurrent)
{
	struct verb *v;
	int ret = 0;

	if (!verb || !*verb || strlen(verb) >= VERB_NAME_MAX || !fn)
		return -EINVAL;
	v = kv_zalloc(sizeof(*v));
	if (!v)
		return -ENOMEM;
	snprintf(v->name, sizeof(v->name), "%s", verb);
	v->fn = fn;
	v->arg = arg;
	v->concurrent = concurrent;
	pthread_mutex_lock(&c->lock);
	if (find_verb(c, verb))
		ret = -EEXIST;
	else if (c->nr_verbs == CONTROL_MAX_VERBS)
		ret = -ENOSPC;
	else
		c->verbs[c->nr_verbs++] = v;
	pthread_mutex_unlock(&c->lock);
	if (ret)
		kv_free(v);
	return ret;
}

int control_register_verb(struct control *c, const char *verb, control_verb_fn fn, void *arg)
{
	/* A module's handler was written for one call at a time: its requests take turns. */
	return add_verb(c, verb, fn, arg, false);
}

int control_unregister_verb(struct control *c, const char *verb)
{
	struct verb *v;

	pthread_mutex_lock(&c->lock);
	v = find_verb(c, verb);
	if (!v) {
		pthread_mutex_unlock(&c->lock);
		return -ENOENT;
	}
	for (unsigned int i = 0; i < c->nr_verbs; i++)
		if (c->verbs[i] == v)
			c->verbs[i] = c->verbs[--c->nr_verbs];
	/* Out of the table, so no new job takes it; wait for those that hold it. */
	while (v->users)
		pthread_cond_wait(&c->cond, &c->lock);
	pthread_mutex_unlock(&c->lock);
	kv_free(v);
	return 0;
}

/* ---- the host's verbs ------------------------------------------------------------------ */

/* Merge a host_*_json object into the reply. */
static int merge(json_t *reply, json_t *payload)
{
	int ret;

	if (!payload)
		return control_reply_error(reply, ENOMEM, "out of memory");
	ret = json_object_update(reply, payload);
	json_decref(payload);
	return ret ? -ENOMEM : 0;
}

static int verb_list(void *arg, json_t *req, json_t *reply)
{
	(void)req;
	return merge(reply, host_list_json(arg));
}

static int verb_stats(void *arg, json_t *req, json_t *reply)
{
	(void)req;
	return merge(reply, host_stats_json(arg));
}

/* {"verb":"start","vm":{...}}: a new VM on the running host, as a config's "vms" entry. */
static int verb_start(void *arg, json_t *req, json_t *reply)
{
	json_t *vm = json_object_get(req, "vm");
	char why[256];
	int ret;

	if (!json_is_object(vm))
		return control_reply_error(reply, -EINVAL, "vm: an object, as in the config's \"vms\"");
	ret = host_start_vm(arg, vm, why, sizeof(why));
	if (ret)
		return control_reply_error(reply, ret, "%s", why);
	json_object_set_new(reply, "vm", safe_string(json_string_value(json_object_get(vm, "name"))));
	return 0;
}

/* The stats as an OpenMetrics text exposition, for scrapers. */
static int verb_metrics(void *arg, json_t *req, json_t *reply)
{
	json_t *st = host_stats_json(arg);
	char *text = st ? host_metrics_text(st) : NULL;
	int ret = text ? 0 : -ENOMEM;

	(void)req;
	json_decref(st);
	if (!ret)
		ret = merge(reply, json_pack("{s:s, s:s}", "format", "openmetrics", "text", text));
	free(text);
	return ret;
}

/* The error reply of a per-VM verb that failed with ret (-errno). */
static int vm_verb_error(json_t *reply, const char *name, const char *what, int ret)
{
	if (ret == -ENOENT)
		return control_reply_error(reply, ret, "vm \"%.64s\": no such VM", name);
	if (ret == -EINVAL)
		return control_reply_error(reply, ret, "vm \"%.64s\": cannot %s it in its state",
					   name, what);
	if (ret == -ETIMEDOUT) /* vm_pause's deadline: the pause was withdrawn */
		return control_reply_error(reply, ret,
					   "vm \"%.64s\": not paused: a vCPU did not stop within %d ms "
					   "(held in the VMM); the VM runs on", name,
					   VM_PAUSE_TIMEOUT_MS);
	if (ret == -EBUSY)
		return control_reply_error(reply, ret, "vm \"%.64s\": cannot %s it while a migration "
					   "or a save of it runs", name, what);
	return control_reply_error(reply, ret, "vm \"%.64s\": %s: %s", name, what,
				   strerror(-ret));
}

/* As vm_verb_error, but with the host's own sentence for it when it gave one. */
static int vm_verb_why(json_t *reply, const char *name, const char *what, int ret,
		       const char *why)
{
	if (why[0])
		return control_reply_error(reply, ret, "vm \"%.64s\": %s: %s", name, what, why);
	return vm_verb_error(reply, name, what, ret);
}

static int vm_verb(json_t *req, json_t *reply, const char *what, int (*fn)(struct host *,
									  const char *),
		   struct host *h)
{
	const char *name;
	int ret = control_req_string(req, "vm", reply, &name);

	if (ret)
		return ret;
	ret = fn(h, name);
	if (ret)
		return vm_verb_error(reply, name, what, ret);
	json_object_set_new(reply, "vm", safe_string(name));
	return 0;
}

static int verb_pause(void *arg, json_t *req, json_t *reply)
{
	return vm_verb(req, reply, "pause", host_vm_pause, arg);
}

static int verb_resume(void *arg, json_t *req, json_t *reply)
{
	return vm_verb(req, reply, "resume", host_vm_resume, arg);
}

static int verb_stop(void *arg, json_t *req, json_t *reply)
{
	return vm_verb(req, reply, "stop", host_vm_stop, arg);
}

static int verb_remove(void *arg, json_t *req, json_t *reply)
{
	return vm_verb(req, reply, "remove", host_vm_remove, arg);
}

/* {"verb":"memcheck","vm":NAME}: the VM's page states against its mappings (debug). */
static int verb_memcheck(void *arg, json_t *req, json_t *reply)
{
	const char *name;
	json_t *payload = NULL;
	int ret = control_req_string(req, "vm", reply, &name);

	if (ret)
		return ret;
	ret = host_vm_memcheck(arg, name, &payload);
	if (ret)
		return vm_verb_error(reply, name, "check", ret);
	json_object_set_new(reply, "vm", safe_string(name));
	return merge(reply, payload);
}

/*
 * {"verb":"dirty_rate","vm":NAME,"ms":N}: how fast the VM writes its
 * memory, measured over N ms (default 1000; HOST_DIRTY_RATE_MS_MIN..MAX,
 * within the verb deadline).
 */
static int verb_dirty_rate(void *arg, json_t *req, json_t *reply)
{
	const char *name;
	json_t *payload = NULL, *ms = json_object_get(req, "ms");
	json_int_t n = 1000;
	char why[256];
	int ret = control_req_string(req, "vm", reply, &name);

	if (ret)
		return ret;
	if (ms) {
		n = json_is_integer(ms) ? json_integer_value(ms) : -1;
		if (n < HOST_DIRTY_RATE_MS_MIN || n > HOST_DIRTY_RATE_MS_MAX)
			return control_reply_error(reply, -EINVAL, "\"ms\" must be an integer from "
						   "%d to %d", HOST_DIRTY_RATE_MS_MIN,
						   HOST_DIRTY_RATE_MS_MAX);
	}
	ret = host_vm_dirty_rate(arg, name, (unsigned int)n, &payload, why, sizeof(why));
	if (ret)
		return vm_verb_why(reply, name, "dirty rate", ret, why);
	json_object_set_new(reply, "vm", safe_string(name));
	return merge(reply, payload);
}

/*
 * {"verb":"swap","vm":NAME,"to":SIZE}: swap the VM out to its host's swap
 * file until its resident memory is at most SIZE (host_vm_swap).
 * {"verb":"swap","vm":NAME,"max":SIZE|null}: at most SIZE of it in swap
 * from now on ("0B": never swapped; null: no limit), with or without "to".
 */
static int verb_swap(void *arg, json_t *req, json_t *reply)
{
	const char *name;
	json_t *payload = NULL, *max = json_object_get(req, "max");
	char why[256];
	uint64_t to, max_bytes = 0;
	int ret = control_req_string(req, "vm", reply, &name);

	if (ret)
		return ret;
	if (max) {
		if (!json_is_null(max)) {
			ret = control_req_size(req, "max", reply, &max_bytes);
			if (ret)
				return ret;
		}
		ret = host_vm_swap_limit(arg, name, !json_is_null(max), max_bytes, why,
					 sizeof(why));
		if (ret)
			return vm_verb_why(reply, name, "swap", ret, why);
		if (!json_object_get(req, "to")) {
			json_object_set_new(reply, "vm", safe_string(name));
			json_object_set_new(reply, "max_bytes", json_is_null(max) ? json_null()
						: json_integer((json_int_t)max_bytes));
			return 0;
		}
	}
	ret = control_req_size(req, "to", reply, &to);
	if (ret)
		return ret;
	ret = host_vm_swap(arg, name, to, &payload, why, sizeof(why));
	if (ret)
		return vm_verb_why(reply, name, "swap", ret, why);
	json_object_set_new(reply, "vm", safe_string(name));
	return merge(reply, payload);
}

static int verb_budget(void *arg, json_t *req, json_t *reply)
{
	uint64_t bytes;
	int ret = control_req_size(req, "bytes", reply, &bytes);

	if (ret)
		return ret;
	if (bytes == 0 || bytes > (uint64_t)INT64_MAX)
		return control_reply_error(reply, EINVAL, "bytes: must be above 0 and below 2^63");
	if (host_set_budget(arg, bytes))
		return control_reply_error(reply, ERANGE, "bytes: not 32M under the host's "
					   "hard_limit");
	json_object_set_new(reply, "budget_bytes", json_integer((json_int_t)bytes));
	return 0;
}

static int verb_reclaim(void *arg, json_t *req, json_t *reply)
{
	(void)req;
	(void)reply;
	host_reclaim_now(arg);
	return 0;
}

static int verb_verbs(void *arg, json_t *req, json_t *reply)
{
	struct control *c = arg;
	json_t *names = json_array();

	(void)req;
	pthread_mutex_lock(&c->lock);
	for (unsigned int i = 0; i < c->nr_verbs; i++)
		json_array_append_new(names, json_string(c->verbs[i]->name));
	pthread_mutex_unlock(&c->lock);
	json_object_set_new(reply, "verbs", names);
	return 0;
}

static int register_host_verbs(struct control *c)
{
	static const struct {
		const char *name;
		control_verb_fn fn;
	} tab[] = {
		{ "list", verb_list },	   { "stats", verb_stats },	{ "pause", verb_pause },
		{ "resume", verb_resume }, { "stop", verb_stop },	{ "budget", verb_budget },
		{ "reclaim", verb_reclaim }, { "memcheck", verb_memcheck }, { "swap", verb_swap },
		{ "dirty_rate", verb_dirty_rate }, { "metrics", verb_metrics },
		{ "start", verb_start },   { "remove", verb_remove },
	};
	int ret;

	/* Side by side: each calls host and VM functions that take their own locks. */
	for (size_t i = 0; i < ARRAY_SIZE(tab); i++) {
		ret = add_verb(c, tab[i].name, tab[i].fn, c->host, true);
		if (ret)
			return ret;
	}
	return add_verb(c, "verbs", verb_verbs, c, true);
}

/* ---- one request ----------------------------------------------------------------------- */

/* The failure reply: a fresh object (a failing handler may have left half a payload behind). */
static json_t *error_reply(json_t *reply, json_t *id, int ret)
{
	json_t *msg = reply ? json_object_get(reply, "error") : NULL;
	json_t *err = json_pack("{s:b}", "ok", false);

	if (err) {
		if (id)
			json_object_set(err, "id", id);
		json_object_set_new(err, "error", json_is_string(msg) ? json_copy(msg)
								       : json_string(strerror(-ret)));
		json_object_set_new(err, "code", json_string(control_errname(ret)));
	}
	return err;
}

static void free_job(struct job *j)
{
	json_decref(j->req);
	json_decref(j->reply);
	kv_free(j);
}

/* The error of a request that never got its verb's turn before its deadline. */
#define NOT_RUN_FMT "%s: not run: an earlier %s request still had its turn after %u ms"

/* On a job thread: wait for the verb's turn, run the handler, hand the job back. */
static void run_job(struct job *j)
{
	struct control *c = j->c;
	struct verb *v = j->verb;
	struct timespec deadline = { .tv_sec = j->deadline_ms / 1000,
				     .tv_nsec = (j->deadline_ms % 1000) * 1000000L };
	uint64_t one = 1;
	int ret = -ETIMEDOUT;
	bool drop;

	pthread_mutex_lock(&c->lock);
	while (!v->concurrent && v->busy && !j->expired &&
	       pthread_cond_clockwait(&c->cond, &c->lock, CLOCK_MONOTONIC, &deadline) != ETIMEDOUT)
		;
	/* Past the deadline unstarted: its client was told, so it must not happen now. */
	if (!j->expired && (v->concurrent || !v->busy)) {
		v->busy = !v->concurrent;
		j->started = true;
		pthread_mutex_unlock(&c->lock);
		if (c->guard_enter)
			c->guard_enter(c->guard_arg);
		ret = v->fn(v->arg, j->req, j->reply);
		if (c->guard_leave)
			c->guard_leave(c->guard_arg);
		pthread_mutex_lock(&c->lock);
		if (!v->concurrent)
			v->busy = false;
	}
	if (!j->started)
		control_reply_error(j->reply, ret, NOT_RUN_FMT, v->name, v->name, c->timeout_ms);
	v->users--;
	j->ret = ret;
	j->done = true;
	drop = j->abandoned;
	if (!drop) {
		j->next = c->done;
		c->done = j;
		if (write(c->done_efd, &one, sizeof(one)) < 0)
			log_debug("eventfd: %m");
	} else if (j->expired && j->started) {
		log_warn_ratelimited("verb \"%s\" answered after its %u ms deadline (%s): "
				     "its client was told it timed out", v->name, c->timeout_ms,
				     ret ? strerror(-ret) : "ok");
	}
	c->nr_workers--;
	/* Free for the next job from now: the reply may bring it before this thread waits. */
	c->nr_busy--;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	if (drop)
		free_job(j);
}

/*
 * A job thread: the queued jobs one after another, then a wait for the
 * next, until WORKER_IDLE_MS go by without one (or control_destroy).
 */
static void *job_thread(void *arg)
{
	struct control *c = arg;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		struct job *j = c->queue;
		long until;

		if (j) {
			c->queue = j->next;
			c->nr_queued--;
			c->nr_busy++;
			j->next = NULL;
			pthread_mutex_unlock(&c->lock);
			run_job(j);
			pthread_mutex_lock(&c->lock);
			continue;
		}
		if (c->threads_stop)
			break;
		until = now_ms() + WORKER_IDLE_MS;
		while (!c->queue && !c->threads_stop && now_ms() < until) {
			struct timespec ts = { .tv_sec = until / 1000,
					       .tv_nsec = (until % 1000) * 1000000L };

			pthread_cond_clockwait(&c->work, &c->lock, CLOCK_MONOTONIC, &ts);
		}
		if (!c->queue)
			break;
	}
	/* Last touch of c: control_destroy waits for nr_threads to reach 0. */
	c->nr_threads--;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

/*
 * Lock held: queue j for a job thread, one not running a job if there is
 * one to spare for it, else a new one. Fails (j not queued) only when no
 * thread would take it.
 */
static int queue_job(struct control *c, struct job *j)
{
	struct job **tail = &c->queue;
	pthread_t tid;
	int ret;

	while (*tail)
		tail = &(*tail)->next;
	*tail = j;
	c->nr_queued++;
	if (c->nr_threads - c->nr_busy >= c->nr_queued) {
		pthread_cond_signal(&c->work);
		return 0;
	}
	/* Under the lock: no thread can take j before it is known whether one was started. */
	ret = thread_spawn(&tid, "control-verb", job_thread, c);
	if (ret) {
		*tail = NULL;
		c->nr_queued--;
		return ret;
	}
	pthread_detach(tid);
	c->nr_threads++;
	return 0;
}

/*
 * One request line: either the reply to queue now (a bad request, or NULL
 * for out of memory), or NULL with cl->job set: its handler runs on a job
 * thread and the reply comes through finish_jobs.
 */
static json_t *serve_line(struct control *c, struct client *cl, const char *line, size_t len)
{
	json_error_t jerr;
	json_t *req, *reply, *id = NULL, *verb, *err;
	struct verb *v;
	struct job *j;
	bool room = false, allowed;
	int ret;

	reply = json_pack("{s:b}", "ok", true);
	if (!reply)
		return NULL;
	req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!req) {
		ret = control_reply_error(reply, EINVAL, "bad JSON at column %d: %s", jerr.column,
					  jerr.text);
		goto out_error;
	}
	if (!json_is_object(req)) {
		ret = control_reply_error(reply, EINVAL, "a request must be a JSON object");
		goto out_error;
	}
	id = json_object_get(req, "id");
	if (id)
		json_object_set(reply, "id", id);
	verb = json_object_get(req, "verb");
	if (!json_is_string(verb)) {
		ret = control_reply_error(reply, EINVAL, "verb: %s",
					  verb ? "must be a string" : "missing");
		goto out_error;
	}
	j = kv_zalloc(sizeof(*j));
	if (!j) {
		ret = control_reply_error(reply, ENOMEM, "out of memory");
		goto out_error;
	}
	/* A read-only client is refused before its request takes a worker or the verb. */
	allowed = !cl->read_only || control_verb_is_read_only(json_string_value(verb));
	pthread_mutex_lock(&c->lock);
	v = find_verb(c, json_string_value(verb));
	if (v && allowed && c->nr_workers < MAX_WORKERS) {
		v->users++;
		c->nr_workers++;
		room = true;
	}
	pthread_mutex_unlock(&c->lock);
	if (!v) {
		kv_free(j);
		ret = control_reply_error(reply, ENOSYS,
					  "unknown verb \"%.64s\" (\"verbs\" lists them)",
					  json_string_value(verb));
		goto out_error;
	}
	if (!allowed) {
		char names[96];

		kv_free(j);
		ret = control_reply_error(reply, EPERM, "\"%.64s\" is root-only; this connection "
					  "is read-only (socket_group): %s",
					  json_string_value(verb),
					  read_only_names(names, sizeof(names)));
		goto out_error;
	}
	if (!room) {
		kv_free(j);
		ret = control_reply_error(reply, EAGAIN,
					  "%d requests are still running: try again later",
					  MAX_WORKERS);
		goto out_error;
	}
	j->c = c;
	j->verb = v;
	j->req = req;
	j->reply = reply;
	j->cl = cl;
	j->deadline_ms = now_ms() + (long)c->timeout_ms;
	pthread_mutex_lock(&c->lock);
	ret = queue_job(c, j);
	if (ret) {
		v->users--;
		c->nr_workers--;
		pthread_cond_broadcast(&c->cond);
		pthread_mutex_unlock(&c->lock);
		kv_free(j);
		log_warn_ratelimited("cannot start a thread for a request: %s", strerror(-ret));
		ret = control_reply_error(reply, ret, "cannot start the request: %s",
					  strerror(-ret));
		goto out_error;
	}
	pthread_mutex_unlock(&c->lock);
	cl->job = j;
	return NULL;

out_error:
	err = error_reply(reply, id, ret);
	json_decref(reply);
	json_decref(req);
	return err;
}

/* ---- clients --------------------------------------------------------------------------- */

static void set_events(struct control *c, struct client *cl)
{
	struct epoll_event ev = { .data.ptr = cl };

	if (!cl->rd_eof && !cl->backlog && !cl->job)
		ev.events |= EPOLLIN;
	if (cl->out_len > cl->out_off)
		ev.events |= EPOLLOUT;
	if (ev.events == cl->events)
		return;
	cl->events = ev.events;
	if (epoll_ctl(c->epfd, EPOLL_CTL_MOD, cl->fd, &ev))
		log_warn_ratelimited("epoll_ctl: %m");
}

static void close_client(struct control *c, struct client *cl)
{
	int fd = cl->fd;

	for (unsigned int i = 0; i < c->nr_clients; i++) {
		if (c->clients[i] != cl)
			continue;
		c->clients[i] = c->clients[--c->nr_clients];
		break;
	}
	if (cl->job) {
		/* Its handler may still be running: the job's thread frees it (or finish_jobs). */
		pthread_mutex_lock(&c->lock);
		cl->job->abandoned = true;
		cl->job->cl = NULL;
		pthread_mutex_unlock(&c->lock);
	}
	epoll_ctl(c->epfd, EPOLL_CTL_DEL, fd, NULL);
	/*
	 * Freed before the socket is closed: a peer that sees its connection
	 * end finds nothing of it left in the server (a leak check right after,
	 * libFuzzer's count of the mallocs and frees around an input).
	 */
	kv_free(cl->in);
	kv_free(cl->out);
	kv_free(cl);
	close(fd);
	if (c->accept_paused) {
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &c->lfd };

		if (!epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->lfd, &ev))
			c->accept_paused = false;
	}
}

/* Queue one reply line; false when the client must be dropped (unread output too large). */
static bool queue_reply(struct client *cl, json_t *reply)
{
	char *s = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
	size_t n;

	if (!s)
		s = strdup("{\"ok\":false,\"error\":\"out of memory\",\"code\":\"ENOMEM\"}");
	if (!s)
		return false;
	n = strlen(s) + 1;
	if (cl->out_off) {
		memmove(cl->out, cl->out + cl->out_off, cl->out_len - cl->out_off);
		cl->out_len -= cl->out_off;
		cl->out_off = 0;
	}
	/* One reply of any size is fine; replies piling up unread are not. */
	if (cl->out_len && cl->out_len + n > CONTROL_MAX_OUTPUT) {
		free(s);
		log_warn_ratelimited("client dropped: more than %d bytes of replies unread",
				     CONTROL_MAX_OUTPUT);
		return false;
	}
	if (cl->out_len + n > cl->out_cap) {
		size_t cap = cl->out_cap ? cl->out_cap : 4096;
		char *p;

		while (cap < cl->out_len + n)
			cap *= 2;
		p = kv_realloc(cl->out, cap);
		if (!p) {
			free(s);
			return false;
		}
		cl->out = p;
		cl->out_cap = cap;
	}
	memcpy(cl->out + cl->out_len, s, n - 1);
	cl->out[cl->out_len + n - 1] = '\n';
	cl->out_len += n;
	free(s);
	return true;
}

static bool queue_error(struct client *cl, int err, const char *msg)
{
	json_t *r = json_pack("{s:b, s:s, s:s}", "ok", false, "error", msg, "code",
			      control_errname(err));
	bool ok = queue_reply(cl, r);

	json_decref(r);
	return ok;
}

/* Send what the socket takes; false when the peer is gone. */
static bool flush_out(struct client *cl)
{
	while (cl->out_off < cl->out_len) {
		ssize_t n = send(cl->fd, cl->out + cl->out_off, cl->out_len - cl->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK;
		}
		cl->out_off += (size_t)n;
	}
	cl->out_off = cl->out_len = 0;
	/* After a too-long line: the error is out, tell the peer we are done. */
	if (cl->discarding && !cl->wr_shut) {
		shutdown(cl->fd, SHUT_WR);
		cl->wr_shut = true;
	}
	return true;
}

/*
 * Serve up to LINES_PER_ROUND complete lines of input, stopping at a request
 * that goes to a handler (the next waits for its reply); false to drop the
 * client.
 */
static bool serve_lines(struct control *c, struct client *cl)
{
	size_t start = 0;
	unsigned int served = 0;
	char *nl;

	while (!cl->discarding && !cl->job && served < LINES_PER_ROUND &&
	       (nl = memchr(cl->in + start, '\n', cl->in_len - start)) != NULL) {
		size_t len = (size_t)(nl - (cl->in + start));
		const char *line = cl->in + start;
		bool blank = true;
		json_t *reply;
		bool ok;

		start += len + 1;
		if (len && line[len - 1] == '\r')
			len--;
		for (size_t i = 0; i < len && blank; i++)
			blank = line[i] == ' ' || line[i] == '\t';
		if (blank)
			continue;
		served++;
		reply = serve_line(c, cl, line, len);
		if (cl->job)
			break;
		ok = queue_reply(cl, reply);
		json_decref(reply);
		if (!ok)
			return false;
	}
	if (cl->discarding) {
		cl->in_len = 0;
		return true;
	}
	memmove(cl->in, cl->in + start, cl->in_len - start);
	cl->in_len -= start;
	cl->backlog = memchr(cl->in, '\n', cl->in_len) != NULL;
	if (cl->job) {
		/* A full buffer is looked at once the reply in flight is out: replies stay in order. */
		cl->backlog |= cl->in_len >= CONTROL_MAX_LINE;
		return true;
	}
	if (!cl->backlog && cl->in_len >= CONTROL_MAX_LINE) {
		char msg[96];

		snprintf(msg, sizeof(msg), "request line longer than %d bytes", CONTROL_MAX_LINE);
		log_warn_ratelimited("client sent a line longer than %d bytes: closing it",
				     CONTROL_MAX_LINE);
		cl->discarding = true;
		cl->discarded = cl->in_len;
		cl->in_len = 0;
		return queue_error(cl, E2BIG, msg);
	}
	return true;
}

/* One read (fairness: one per client per round); false to drop the client. */
static bool read_client(struct control *c, struct client *cl)
{
	char sink[IN_CHUNK * 4];
	char *dst = sink;
	size_t room = sizeof(sink);
	ssize_t n;

	if (!cl->discarding) {
		if (cl->in_cap - cl->in_len < IN_CHUNK && cl->in_cap < CONTROL_MAX_LINE) {
			size_t cap = cl->in_cap ? cl->in_cap * 2 : IN_CHUNK;
			char *p;

			if (cap > CONTROL_MAX_LINE)
				cap = CONTROL_MAX_LINE;
			p = kv_realloc(cl->in, cap);
			if (!p)
				return false;
			cl->in = p;
			cl->in_cap = cap;
		}
		dst = cl->in + cl->in_len;
		room = cl->in_cap - cl->in_len;
	}
	n = recv(cl->fd, dst, room, MSG_DONTWAIT);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
	if (n == 0) {
		/* A request cut off by the close is dropped: nobody is there to answer. */
		cl->rd_eof = true;
		cl->in_len = 0;
		return true;
	}
	if (cl->discarding) {
		cl->discarded += (uint64_t)n;
		return cl->discarded <= DISCARD_MAX;
	}
	cl->in_len += (size_t)n;
	return serve_lines(c, cl);
}

static void client_event(struct control *c, struct client *cl, uint32_t events)
{
	if (events & EPOLLERR)
		goto out_drop;
	if (cl->job) {
		/* Waiting for a handler: only output moves; a peer gone entirely is dropped. */
		if (events & EPOLLHUP)
			goto out_drop;
	} else if (cl->backlog) {
		if (!serve_lines(c, cl))
			goto out_drop;
	} else if ((events & (EPOLLIN | EPOLLHUP)) && !cl->rd_eof && !read_client(c, cl)) {
		goto out_drop;
	}
	if (!flush_out(cl))
		goto out_drop;
	/* Done: the peer sent its last request and has every reply, or it is gone. */
	if (cl->rd_eof && !cl->job && cl->out_off == cl->out_len)
		goto out_drop;
	if ((events & EPOLLHUP) && cl->out_off < cl->out_len)
		goto out_drop;
	set_events(c, cl);
	return;

out_drop:
	close_client(c, cl);
}

/* Queue a finished job's reply and go on with its client's input. */
static void deliver(struct control *c, struct job *j)
{
	struct client *cl = j->cl;
	json_t *reply;
	bool ok;

	cl->job = NULL;
	reply = j->ret ? error_reply(j->reply, json_object_get(j->req, "id"), j->ret)
		       : json_incref(j->reply);
	ok = queue_reply(cl, reply);
	json_decref(reply);
	free_job(j);
	if (!ok)
		close_client(c, cl);
	else
		client_event(c, cl, 0);
}

static void add_client(struct control *c, int fd, bool read_only);

/* The done eventfd: finished jobs, and fds handed over by control_serve_fd. */
static void finish_jobs(struct control *c)
{
	int fds[CONTROL_MAX_CLIENTS];
	unsigned int nr_fds;
	struct job *list;
	uint64_t n;

	if (read(c->done_efd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		log_debug("eventfd: %m");
	pthread_mutex_lock(&c->lock);
	list = c->done;
	c->done = NULL;
	nr_fds = c->nr_adopted;
	memcpy(fds, c->adopted, nr_fds * sizeof(fds[0]));
	c->nr_adopted = 0;
	pthread_mutex_unlock(&c->lock);
	for (unsigned int i = 0; i < nr_fds; i++)
		add_client(c, fds[i], false); /* control_serve_fd: vouched for */
	while (list) {
		struct job *j = list;

		list = j->next;
		/* Abandoned while done: its client closed before this round. */
		if (j->abandoned)
			free_job(j);
		else
			deliver(c, j);
	}
}

/* Answer ETIMEDOUT for every request past its deadline, and serve its client on. */
static void expire_jobs(struct control *c, long now)
{
	for (unsigned int i = c->nr_clients; i-- > 0;) {
		struct client *cl = c->clients[i];
		struct job *j = cl->job;
		char name[VERB_NAME_MAX], msg[192];
		unsigned int waited;
		json_t *id, *err;
		bool started, ok;

		if (!j || now < j->deadline_ms)
			continue;
		pthread_mutex_lock(&c->lock);
		if (j->done) {
			/* Finished just now: the done list has it, with its real reply. */
			pthread_mutex_unlock(&c->lock);
			continue;
		}
		/* From here the job's thread owns the job and frees it. */
		id = json_deep_copy(json_object_get(j->req, "id"));
		j->expired = true;
		j->abandoned = true;
		j->cl = NULL;
		started = j->started;
		snprintf(name, sizeof(name), "%s", j->verb->name);
		waited = c->timeout_ms;
		pthread_cond_broadcast(&c->cond);
		pthread_mutex_unlock(&c->lock);
		cl->job = NULL;
		if (started)
			snprintf(msg, sizeof(msg),
				 "%s: no answer within %u ms: it may still take effect", name,
				 waited);
		else
			snprintf(msg, sizeof(msg), NOT_RUN_FMT, name, name, waited);
		log_warn_ratelimited("verb \"%s\": no answer within %u ms%s", name, waited,
				     started ? "" : " (never started)");
		err = json_pack("{s:b, s:s, s:s}", "ok", false, "error", msg, "code",
				control_errname(ETIMEDOUT));
		if (err && id)
			json_object_set(err, "id", id);
		json_decref(id);
		ok = queue_reply(cl, err);
		json_decref(err);
		if (!ok)
			close_client(c, cl);
		else
			client_event(c, cl, 0);
	}
}

/* Tell a refused peer why (best effort, it may not read) and close it. */
static void refuse(int fd, int err, const char *msg)
{
	char line[192];
	int n = snprintf(line, sizeof(line), "{\"ok\":false,\"error\":\"%s\",\"code\":\"%s\"}\n",
			 msg, control_errname(err));

	if (send(fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		log_debug("refused client: send: %m");
	close(fd);
}

/* Take a connected fd as a client (or refuse it: too many). */
static void add_client(struct control *c, int fd, bool read_only)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct client *cl;

	if (c->nr_clients == CONTROL_MAX_CLIENTS) {
		log_warn_ratelimited("refused a client: %d clients connected", CONTROL_MAX_CLIENTS);
		refuse(fd, EBUSY, "too many clients");
		return;
	}
	cl = kv_zalloc(sizeof(*cl));
	if (!cl) {
		refuse(fd, ENOMEM, "out of memory");
		return;
	}
	cl->fd = fd;
	cl->read_only = read_only;
	cl->events = EPOLLIN;
	ev.data.ptr = cl;
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev)) {
		log_warn_ratelimited("epoll_ctl: %m");
		kv_free(cl);
		close(fd);
		return;
	}
	c->clients[c->nr_clients++] = cl;
}

/*
 * What the peer on fd may do (control_peer_access), from the credentials
 * the kernel recorded when it connected: SO_PEERCRED for its uid and gid,
 * SO_PEERGROUPS for its supplementary groups. Both are that snapshot, so
 * they say who connected, and a peer cannot change them afterwards.
 * /proc/<pid>/status was the other way to learn the groups, and a worse
 * one: read after the fact, it shows the groups the process has now, and
 * the pid may by then be another process (the peer exited, the pid was
 * reused), so it could let in whoever got the pid. A kernel without
 * SO_PEERGROUPS (before 4.13) counts the primary gid only: a member by a
 * supplementary group is refused there, never let in on a guess.
 */
static enum control_access peer_access(struct control *c, int fd, struct ucred *cred)
{
	gid_t small[64], *groups = small;
	socklen_t len = sizeof(*cred);
	enum control_access access;
	size_t nr = 0;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, &len) || len != sizeof(*cred)) {
		cred->uid = (uid_t)-1;
		return CONTROL_DENIED;
	}
	if (!c->has_group || control_uid_trusted(cred->uid))
		return control_peer_access(cred->uid, cred->gid, NULL, 0,
					   c->has_group ? &c->group : NULL);
	len = sizeof(small);
	if (!getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, small, &len)) {
		nr = len / sizeof(gid_t);
	} else if (errno == ERANGE) {
		/* len is what they need now (up to NGROUPS_MAX gids); they cannot change. */
		groups = kv_calloc(len / sizeof(gid_t) + 1, sizeof(gid_t));
		if (groups && !getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len))
			nr = len / sizeof(gid_t);
	} else {
		/* ENOPROTOOPT (before Linux 4.13), ENODATA: the primary gid alone decides. */
		log_debug("SO_PEERGROUPS: %m: the peer's primary group only");
	}
	access = control_peer_access(cred->uid, cred->gid, groups, nr, &c->group);
	if (groups != small)
		kv_free(groups);
	return access;
}

static void accept_clients(struct control *c)
{
	for (int i = 0; i < ACCEPTS_PER_ROUND; i++) {
		enum control_access access;
		struct epoll_event ev;
		struct ucred cred;
		int fd = accept4(c->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				/* Level-triggered: stop polling until a client closes. */
				log_warn_ratelimited("accept: %m: not accepting for now");
				ev.data.ptr = &c->lfd;
				ev.events = 0;
				if (!epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->lfd, &ev))
					c->accept_paused = true;
			} else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
				   errno != ECONNABORTED) {
				log_warn_ratelimited("accept: %m");
			}
			return;
		}
		/* The file mode keeps others out; check the peer anyway (a chmod, an fd passed on). */
		access = peer_access(c, fd, &cred);
		if (access == CONTROL_DENIED) {
			log_warn_ratelimited("refused a client with uid %d: %s", (int)cred.uid,
					     c->has_group ? "neither root nor in the socket's group"
							  : "root only");
			refuse(fd, EPERM, c->has_group
				   ? "permission denied: the control socket serves root, and its "
				     "group read-only"
				   : "permission denied: the control socket serves root only");
			continue;
		}
		add_client(c, fd, access == CONTROL_READ_ONLY);
	}
}

int control_serve_fd(struct control *c, int fd)
{
	uint64_t one = 1;
	int flags = fcntl(fd, F_GETFL);
	int ret = 0;

	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK)) {
		ret = -errno;
		close(fd);
		return ret;
	}
	pthread_mutex_lock(&c->lock);
	if (c->nr_adopted == CONTROL_MAX_CLIENTS) {
		ret = -EBUSY;
	} else {
		c->adopted[c->nr_adopted++] = fd;
		if (write(c->done_efd, &one, sizeof(one)) < 0)
			log_debug("eventfd: %m");
	}
	pthread_mutex_unlock(&c->lock);
	if (ret)
		close(fd);
	return ret;
}

void control_set_verb_timeout(struct control *c, unsigned int ms)
{
	c->timeout_ms = ms;
}

/* How long epoll may sleep: until the next deadline of a request in flight. */
static int loop_timeout(struct control *c, long now)
{
	long next = -1;

	for (unsigned int i = 0; i < c->nr_clients; i++) {
		struct client *cl = c->clients[i];

		if (cl->job) {
			if (next < 0 || cl->job->deadline_ms < next)
				next = cl->job->deadline_ms;
		} else if (cl->backlog) {
			return 0;
		}
	}
	if (next >= 0) {
		next = next > now ? next - now : 0;
		if (c->accept_paused && next > 1000)
			next = 1000;
		return (int)(next > 1000000 ? 1000000 : next);
	}
	return c->accept_paused ? 1000 : -1;
}

static void *control_thread(void *arg)
{
	struct control *c = arg;
	struct epoll_event evs[32];

	sandbox_enter(SANDBOX_CONTROL);
	for (;;) {
		bool done = false;
		int n = epoll_wait(c->epfd, evs, ARRAY_SIZE(evs), loop_timeout(c, now_ms()));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_err("epoll_wait: %m: control socket stops");
			break;
		}
		if (n == 0 && c->accept_paused) {
			struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &c->lfd };

			if (!epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->lfd, &ev))
				c->accept_paused = false;
		}
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;

			if (p == &c->stop_efd)
				goto out;
			if (p == &c->lfd)
				accept_clients(c);
			else if (p == &c->done_efd)
				done = true; /* after the events: it may close a client listed here */
			else
				client_event(c, p, evs[i].events);
		}
		if (done)
			finish_jobs(c);
		expire_jobs(c, now_ms());
		/* Clients with requests left over: the next batch (backwards: closing swaps). */
		for (unsigned int i = c->nr_clients; i-- > 0;)
			if (c->clients[i]->backlog && !c->clients[i]->job)
				client_event(c, c->clients[i], 0);
	}
out:
	/*
	 * Last replies: a request in flight gets until its deadline to finish
	 * (a "stop" of the last VM is what ends the host, before its job has
	 * handed the reply back).
	 */
	pthread_mutex_lock(&c->lock);
	for (;;) {
		struct timespec ts;
		long until = 0;

		for (unsigned int i = 0; i < c->nr_clients; i++) {
			struct job *j = c->clients[i]->job;

			if (j && !j->done && j->deadline_ms > until)
				until = j->deadline_ms;
		}
		if (!until || now_ms() >= until)
			break;
		ts.tv_sec = until / 1000;
		ts.tv_nsec = (until % 1000) * 1000000L;
		pthread_cond_clockwait(&c->cond, &c->lock, CLOCK_MONOTONIC, &ts);
	}
	for (struct job *j = c->done, *next; j; j = next) {
		next = j->next;
		if (!j->abandoned) {
			json_t *reply = j->ret ? error_reply(j->reply, json_object_get(j->req, "id"),
							     j->ret)
					       : json_incref(j->reply);

			j->cl->job = NULL;
			queue_reply(j->cl, reply);
			json_decref(reply);
		}
		free_job(j);
	}
	c->done = NULL;
	pthread_mutex_unlock(&c->lock);
	while (c->nr_clients) {
		struct client *cl = c->clients[0];

		flush_out(cl);
		close_client(c, cl);
	}
	return NULL;
}

/* ---- binding --------------------------------------------------------------------------- */

int control_socket_in_use(const struct sockaddr_un *addr)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int ret;

	if (fd < 0)
		return -errno;
	ret = connect(fd, (const struct sockaddr *)addr, sizeof(*addr));
	if (!ret || errno == EAGAIN || errno == EINPROGRESS)
		ret = 1; /* connected, or a listener with a full backlog */
	else if (errno == ECONNREFUSED)
		ret = 0;
	else
		ret = -errno;
	close(fd);
	return ret;
}

/*
 * A directory only we can enter, next to the socket: `name` in dfd, opened
 * as *out. Checked after the mkdir, since a stranger who can write in dfd
 * could have put something else under that name meanwhile.
 */
static int make_private_dir(int dfd, char *name, size_t len, int *out)
{
	for (unsigned int tries = 0; tries < 16; tries++) {
		struct stat st;
		uint32_t r;
		int fd, ret;

		if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r))
			r = (uint32_t)now_ms() ^ ((uint32_t)getpid() << 12) ^ tries;
		snprintf(name, len, ".kvmem-sock.%08x", r);
		if (mkdirat(dfd, name, 0700)) {
			if (errno == EEXIST)
				continue;
			return -errno;
		}
		fd = openat(dfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0 && !fstat(fd, &st) && st.st_uid == geteuid() && !(st.st_mode & 0077)) {
			*out = fd;
			return 0;
		}
		ret = fd < 0 ? -errno : -EPERM;
		if (fd >= 0)
			close(fd);
		return ret;
	}
	return -EEXIST;
}

/* Move tfd/s to dfd/base, never over anything already there (-EEXIST). */
static int move_into_place(int tfd, int dfd, const char *base)
{
	if (!renameat2(tfd, "s", dfd, base, RENAME_NOREPLACE))
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -errno;
	/* A filesystem without RENAME_NOREPLACE: a new hard link never replaces either. */
	if (linkat(tfd, "s", dfd, base, 0))
		return -errno;
	unlinkat(tfd, "s", 0);
	return 0;
}

/*
 * Bind the socket where nobody else can reach it, make it mode 0600 and
 * root's there (0660 and root:group with a socket group), then move it to
 * `path`. Binding at `path` itself and fixing mode and owner afterwards
 * would follow whatever a user who can write in that directory put there
 * in between (chmod and chown follow symlinks, and a socket's fchmod does
 * not reach the file bind makes); the file would also be reachable with
 * the umask's mode for a moment, and a group member could connect before
 * the owner was set.
 */
static int bind_socket(struct control *c, const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX }, taddr = { .sun_family = AF_UNIX };
	char dir[sizeof(addr.sun_path)], tmp[32];
	int fd = -1, dfd = -1, tfd = -1, ret;
	const char *base = strrchr(path, '/');
	bool bound = false;
	struct stat st;

	if (!*path || strlen(path) >= sizeof(addr.sun_path)) {
		log_err("%s: a socket path must have 1 to %zu bytes", path,
			sizeof(addr.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(addr.sun_path, path, strlen(path));
	if (base) {
		size_t n = (size_t)(base - path);

		snprintf(dir, sizeof(dir), "%.*s", (int)n, n ? path : "/");
		base++;
	} else {
		snprintf(dir, sizeof(dir), ".");
		base = path;
	}
	if (!*base || !strcmp(base, ".") || !strcmp(base, "..")) {
		log_err("%s: a socket path must end with a file name", path);
		return -EINVAL;
	}
	if (!lstat(path, &st)) {
		if (!S_ISSOCK(st.st_mode)) {
			log_err("%s: exists and is not a socket: not replacing it", path);
			return -EEXIST;
		}
		ret = control_socket_in_use(&addr);
		if (ret == 1) {
			log_err("%s: another kvmem host is listening there (choose another --socket)",
				path);
			return -EADDRINUSE;
		}
		if (ret < 0) {
			log_err("%s: cannot tell whether the socket is in use: %s", path,
				strerror(-ret));
			return ret;
		}
		log_info("%s: replacing a stale socket nobody listens on", path);
		if (unlink(path) && errno != ENOENT) {
			ret = -errno;
			log_err("%s: cannot remove the stale socket: %m", path);
			return ret;
		}
	}
	dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		ret = -errno;
		log_err("%s: cannot open the socket's directory %s: %m", path, dir);
		return ret;
	}
	ret = make_private_dir(dfd, tmp, sizeof(tmp), &tfd);
	if (ret) {
		log_err("%s: cannot make a private directory in %s: %s", path, dir, strerror(-ret));
		goto out;
	}
	/* Through the directory's descriptor: short whatever the path's length. */
	snprintf(taddr.sun_path, sizeof(taddr.sun_path), "/proc/self/fd/%d/s", tfd);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		ret = -errno;
		log_err("%s: socket: %m", path);
		goto out;
	}
	if (bind(fd, (struct sockaddr *)&taddr, sizeof(taddr))) {
		ret = -errno;
		log_err("%s: bind: %m", path);
		goto out;
	}
	bound = true;
	/*
	 * Only we can enter the directory: by name here is safe from planted
	 * links. Owner before mode, so the group's bits are never on for
	 * another group. A user who is not root keeps its own socket, and may
	 * give it a group it is in (chown's rule).
	 */
	if (fchownat(tfd, "s", geteuid() == 0 ? 0 : (uid_t)-1,
		     c->has_group ? c->group : geteuid() == 0 ? 0 : (gid_t)-1,
		     AT_SYMLINK_NOFOLLOW) ||
	    fchmodat(tfd, "s", c->has_group ? 0660 : 0600, 0) ||
	    fstatat(tfd, "s", &st, AT_SYMLINK_NOFOLLOW)) {
		ret = -errno;
		if (c->has_group)
			log_err("%s: cannot give the socket to group %u (mode 0660, owner "
				"root): %m", path, (unsigned int)c->group);
		else
			log_err("%s: cannot make the socket root-only (mode 0600, owner root): %m",
				path);
		goto out;
	}
	if (listen(fd, 64)) {
		ret = -errno;
		log_err("%s: listen: %m", path);
		goto out;
	}
	ret = move_into_place(tfd, dfd, base);
	if (ret == -EEXIST) {
		log_err("%s: address in use (another host started at the same time?)", path);
		ret = -EADDRINUSE;
		goto out;
	}
	if (ret) {
		log_err("%s: cannot put the socket in place: %s", path, strerror(-ret));
		goto out;
	}
	bound = false;
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	c->lfd = fd;
	fd = -1;
out:
	if (bound)
		unlinkat(tfd, "s", 0);
	if (tfd >= 0) {
		unlinkat(dfd, tmp, AT_REMOVEDIR);
		close(tfd);
	}
	close(dfd);
	if (fd >= 0)
		close(fd);
	return ret;
}

/* Unlink the socket file unless another host has replaced it since. */
static void unlink_ours(struct control *c)
{
	struct stat st;

	if (c->path && !lstat(c->path, &st) && st.st_dev == c->dev && st.st_ino == c->ino)
		unlink(c->path);
}

int control_create(struct host *h, const char *path, const gid_t *group, struct control **out)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct control *c;
	bool named = false;
	int ret;

	c = kv_zalloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->host = h;
	c->has_group = group != NULL;
	c->group = group ? *group : 0;
	c->lfd = c->stop_efd = c->done_efd = c->epfd = -1;
	c->timeout_ms = CONTROL_VERB_TIMEOUT_MS;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	pthread_cond_init(&c->work, NULL);
	if (path) {
		c->path = kv_strdup(path);
		if (!c->path) {
			ret = -ENOMEM;
			goto out_free;
		}
	}
	ret = register_host_verbs(c);
	if (ret)
		goto out_free;
	/*
	 * The socket first: its directory descriptors are closed again before
	 * the loop's are opened, so creating the socket needs no descriptor
	 * more than the control socket keeps.
	 */
	if (path) {
		ret = bind_socket(c, path);
		if (ret) {
			named = true; /* bind_socket said why, on one line */
			goto out_free;
		}
	}
	c->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->done_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (c->stop_efd < 0 || c->done_efd < 0 || c->epfd < 0) {
		ret = -errno;
		goto out_unlink;
	}
	if (path) {
		ev.data.ptr = &c->lfd;
		if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->lfd, &ev)) {
			ret = -errno;
			goto out_unlink;
		}
	}
	ev.data.ptr = &c->stop_efd;
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->stop_efd, &ev)) {
		ret = -errno;
		goto out_unlink;
	}
	ev.data.ptr = &c->done_efd;
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->done_efd, &ev)) {
		ret = -errno;
		goto out_unlink;
	}
	ret = thread_spawn(&c->thread, "control", control_thread, c);
	if (ret)
		goto out_unlink;
	c->started = true;
	if (path && c->has_group)
		log_info("listening on %s; group %u may read stats (read-only verbs)", path,
			 (unsigned int)c->group);
	else if (path)
		log_debug("listening on %s", path);
	*out = c;
	return 0;

out_unlink:
	unlink_ours(c);
out_free:
	if (!named)
		log_err("control socket %s: %s", path ? path : "(none)", strerror(-ret));
	if (c->lfd >= 0)
		close(c->lfd);
	if (c->epfd >= 0)
		close(c->epfd);
	if (c->stop_efd >= 0)
		close(c->stop_efd);
	if (c->done_efd >= 0)
		close(c->done_efd);
	for (unsigned int i = 0; i < c->nr_verbs; i++)
		kv_free(c->verbs[i]);
	pthread_cond_destroy(&c->work);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->lock);
	kv_free(c->path);
	kv_free(c);
	return ret;
}

void control_destroy(struct control *c)
{
	uint64_t one = 1;

	if (!c)
		return;
	if (c->started) {
		if (write(c->stop_efd, &one, sizeof(one)) < 0)
			log_warn("control: cannot stop the thread: %m");
		pthread_join(c->thread, NULL);
	}
	/* Every client is gone, every job abandoned: wait for the handlers still running. */
	pthread_mutex_lock(&c->lock);
	while (c->nr_workers)
		pthread_cond_wait(&c->cond, &c->lock);
	/* Then for the job threads, all idle now. */
	c->threads_stop = true;
	pthread_cond_broadcast(&c->work);
	while (c->nr_threads)
		pthread_cond_wait(&c->cond, &c->lock);
	for (struct job *j = c->done, *next; j; j = next) {
		next = j->next;
		free_job(j);
	}
	c->done = NULL;
	for (unsigned int i = 0; i < c->nr_adopted; i++)
		close(c->adopted[i]);
	pthread_mutex_unlock(&c->lock);
	if (c->lfd >= 0)
		close(c->lfd);
	unlink_ours(c);
	close(c->epfd);
	close(c->stop_efd);
	close(c->done_efd);
	for (unsigned int i = 0; i < c->nr_verbs; i++)
		kv_free(c->verbs[i]);
	pthread_cond_destroy(&c->work);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->lock);
	kv_free(c->path);
	kv_free(c);
}

/* ---- client side ----------------------------------------------------------------------- */

/* Wait for `events` on fd until the deadline: 0, or -ETIMEDOUT / -errno. */
static int wait_fd(int fd, short events, long deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		long left = deadline - now_ms();
		int n;

		if (left <= 0)
			return -ETIMEDOUT;
		n = poll(&p, 1, (int)(left > 1000000 ? 1000000 : left));
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

static int connect_deadline(const char *path, long deadline, uid_t *peer_uid)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int fd, ret;

	if (!*path || strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	memcpy(addr.sun_path, path, strlen(path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	while (connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			ret = -errno;
			goto out_close;
		}
		/* The listener's backlog is full: nothing is pending on our side, ask again. */
		if (now_ms() >= deadline) {
			ret = -ETIMEDOUT;
			goto out_close;
		}
		poll(NULL, 0, 10);
	}
	/*
	 * Whoever listens is who bound the socket file (its credentials are
	 * the listener's at listen()). Anyone who can write in the socket's
	 * directory, /tmp say, can listen there: a root client must not hand
	 * requests to them nor print what they answer.
	 */
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len)) {
		ret = -errno;
		goto out_close;
	}
	if (peer_uid)
		*peer_uid = cred.uid;
	if (!control_uid_trusted(cred.uid)) {
		ret = -EPERM;
		goto out_close;
	}
	return fd;

out_close:
	close(fd);
	return ret;
}

int control_connect(const char *path, int timeout_ms, uid_t *peer_uid)
{
	return connect_deadline(path, now_ms() + (timeout_ms > 0 ? timeout_ms : CONTROL_CLIENT_TIMEOUT_MS), peer_uid);
}

int control_request(const char *path, json_t *request, json_t **reply, int timeout_ms)
{
	long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : CONTROL_CLIENT_TIMEOUT_MS);
	char *req = NULL, *buf = NULL, *nl = NULL;
	size_t len = 0, cap = 0, sent = 0, reqlen;
	json_error_t jerr;
	int fd, ret;

	*reply = NULL;
	fd = connect_deadline(path, deadline, NULL);
	if (fd < 0)
		return fd;
	req = json_dumps(request, JSON_COMPACT);
	if (!req) {
		ret = -ENOMEM;
		goto out_close;
	}
	reqlen = strlen(req);
	req[reqlen++] = '\n'; /* overwrites the NUL: req is used with its length only */
	while (sent < reqlen) {
		ssize_t n = send(fd, req + sent, reqlen - sent, MSG_NOSIGNAL);

		if (n >= 0) {
			sent += (size_t)n;
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			ret = wait_fd(fd, POLLOUT, deadline);
			if (ret)
				goto out_free;
		} else if (errno != EINTR) {
			/* A peer that refused us may have said why: read it below. */
			if (errno == EPIPE || errno == ECONNRESET)
				break;
			ret = -errno;
			goto out_free;
		}
	}
	while (!nl) {
		ssize_t n;

		if (cap - len < 4096) {
			char *p;

			cap = cap ? cap * 2 : 8192;
			if (cap > REPLY_MAX) {
				ret = -EPROTO;
				goto out_free;
			}
			p = realloc(buf, cap);
			if (!p) {
				ret = -ENOMEM;
				goto out_free;
			}
			buf = p;
		}
		n = recv(fd, buf + len, cap - len, 0);
		if (n > 0) {
			nl = memchr(buf + len, '\n', (size_t)n);
			len += (size_t)n;
		} else if (n == 0) {
			ret = -ECONNRESET;
			goto out_free;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			ret = wait_fd(fd, POLLIN, deadline);
			if (ret)
				goto out_free;
		} else if (errno != EINTR) {
			ret = -errno;
			goto out_free;
		}
	}
	*reply = json_loadb(buf, (size_t)(nl - buf), 0, &jerr);
	if (!*reply || !json_is_object(*reply)) {
		json_decref(*reply);
		*reply = NULL;
		ret = -EPROTO;
		goto out_free;
	}
	ret = 0;
out_free:
	free(buf);
	free(req);
out_close:
	close(fd);
	return ret;
}

void control_set_guard(struct control *c, void (*enter)(void *arg), void (*leave)(void *arg),
		       void *arg)
{
	c->guard_enter = enter;
	c->guard_leave = leave;
	c->guard_arg = arg;
}
