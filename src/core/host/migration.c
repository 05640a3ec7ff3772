/* SPDX-License-Identifier: MIT */
/*
 * The host's side of live migration (migrate/migrate.h does the protocol):
 * the verbs that send a VM away (migrate, migrate_cancel, migrate_set), the
 * listener that takes VMs in (cfg.incoming), and what either needs of the
 * host: pausing a VM and its devices for stop-and-copy, its devices' state,
 * a new VM made from a description, and a VM released once it has left.
 *
 * Addresses are unix:PATH or tcp:HOST:PORT (tcp::PORT: loopback). Only a
 * host running as root starts or accepts a migration (its control socket
 * and listener are then root's): a migration hands guest memory to the
 * peer, or takes it from one. A UNIX peer is checked by its uid (root, or
 * this process's user); over TCP an address proves nothing, so both hosts
 * hold a secret (--migration-secret) and prove it to each other before a
 * page moves (migrate/migrate.h). The stream is not encrypted: a network
 * that others can read sees guest memory.
 */
#define LOG_TAG "migration"
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "balloon/balloon.h"
#include "dedup/dedup.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/host/control.h"
#include "core/host/host_internal.h"
#include "core/layout.h"
#include "core/sandbox.h"
#include "core/size.h"
#include "core/thread.h"
#include "core/virtio/virtio_mmio.h"
#include "core/vm.h"
#include "migrate/migrate.h"
#include "mem/corpus.h"
#include "mem/overcommit.h"

#define CONNECT_TIMEOUT_MS 5000

/* One VM coming in: over a connection, or out of a file (a restore). */
struct arrival {
	struct host *h;
	struct host_vm *hv;		/* once reserved */
	struct mig_job *job;
	char *name;			/* a restore's new name for it, or NULL */
	char *file;			/* a restore's file, or NULL */
	uint64_t id;			/* a restore's, for its verb to follow it by */
	struct dedup_image *img;	/* a clone's: the snapshot's pages as shared frames */
	bool seen;			/* its verb read how it ended (arrivals_lock) */
};

struct incoming {
	struct host *h;
	int lfd;
	int stop_efd;
	pthread_t thread;
	bool tcp;
	char addr[160];
};

/* --- addresses --- */

/*
 * A socket for `addr` (unix:PATH or tcp:HOST:PORT), bound and listening
 * (listen) or connected within CONNECT_TIMEOUT_MS. The fd or -errno, why
 * set on failure.
 */
static int open_addr(const char *addr, bool listen_, bool *tcp, char *why, size_t whylen)
{
	int fd, ret;

	if (!strncmp(addr, "unix:", 5)) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		const char *path = addr + 5;

		*tcp = false;
		if (!*path || strlen(path) >= sizeof(sa.sun_path)) {
			snprintf(why, whylen, "%s: not a UNIX socket path", addr);
			return -EINVAL;
		}
		memcpy(sa.sun_path, path, strlen(path) + 1);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -errno;
		if (listen_) {
			struct stat st;

			/*
			 * A stale socket of an earlier host goes (one killed before it
			 * could unlink it); one a host listens on stays, as does anything
			 * else at the path: taking it over would send that host's VMs here.
			 */
			if (!lstat(path, &st) && S_ISSOCK(st.st_mode)) {
				ret = control_socket_in_use(&sa);
				if (ret) {
					snprintf(why, whylen, "%s: %s", addr,
						 ret > 0 ? "another host takes VMs in there"
							 : "cannot tell whether a host listens there");
					close(fd);
					return ret > 0 ? -EADDRINUSE : ret;
				}
				unlink(path);
			}
			ret = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || chmod(path, 0600) ||
			      listen(fd, 8);
		} else {
			ret = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
		}
		if (ret) {
			ret = -errno;
			snprintf(why, whylen, "%s: %s", addr, strerror(-ret));
			close(fd);
			return ret;
		}
		return fd;
	}
	if (!strncmp(addr, "tcp:", 4)) {
		char host[128];
		const char *port = strrchr(addr + 4, ':');
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
					  .ai_flags = listen_ ? AI_PASSIVE : 0 }, *ai;
		size_t hl;

		*tcp = true;
		if (!port || !port[1] || (hl = (size_t)(port - (addr + 4))) >= sizeof(host)) {
			snprintf(why, whylen, "%s: not tcp:HOST:PORT", addr);
			return -EINVAL;
		}
		memcpy(host, addr + 4, hl);
		host[hl] = '\0';
		/* No host: loopback, never every interface by default. */
		if (!hl)
			snprintf(host, sizeof(host), "127.0.0.1");
		/* [::1]:4444 */
		if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
			memmove(host, host + 1, hl - 2);
			host[hl - 2] = '\0';
		}
		ret = getaddrinfo(host, port + 1, &hints, &ai);
		if (ret) {
			snprintf(why, whylen, "%s: %s", addr, gai_strerror(ret));
			return -EINVAL;
		}
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			ret = -errno;
		} else if (listen_) {
			int one = 1;

			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
			ret = bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 8) ? -errno : 0;
		} else {
			struct timeval tv = { .tv_sec = CONNECT_TIMEOUT_MS / 1000 };

			/* A connect that hangs (a host that drops packets) ends at the timeout. */
			setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
			ret = connect(fd, ai->ai_addr, ai->ai_addrlen) ? -errno : 0;
			tv.tv_sec = 0;
			setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		}
		freeaddrinfo(ai);
		if (ret) {
			snprintf(why, whylen, "%s: %s", addr,
				 ret == -EINPROGRESS ? "no answer" : strerror(-ret));
			if (fd >= 0)
				close(fd);
			return ret;
		}
		return fd;
	}
	snprintf(why, whylen, "%s: an address is unix:PATH or tcp:HOST:PORT", addr);
	return -EINVAL;
}

/* --- the shared secret --- */

/* cfg.migration_secret's content, once. 0 or -errno (logged). */
static int load_secret(struct host *h)
{
	if (!h->cfg.migration_secret || h->secret)
		return 0;
	return host_load_key("migration_secret", h->cfg.migration_secret, &h->secret,
			     &h->secret_len);
}

/* --- the source's side --- */

static struct virtio_dev *balloon_vdev(struct host_vm *hv)
{
	return hv->balloon ? balloon_virtio_dev(hv->balloon) : NULL;
}

static int src_stop(void *arg)
{
	struct host_vm *hv = arg;
	struct host *h = hv->host;
	int ret = 0;

	pthread_mutex_lock(&h->pause_lock);
	/* Paused by a user or the policy already: it stays so, and is ours too. */
	if (vm_get_state(hv->vm) != VM_PAUSED)
		ret = vm_pause(hv->vm);
	if (!ret)
		hv->mig_paused = true;
	pthread_mutex_unlock(&h->pause_lock);
	/* The devices write guest memory too (used rings, stats): they stand still from now on. */
	if (!ret && balloon_vdev(hv))
		virtio_dev_stop(balloon_vdev(hv));
	return ret;
}

static void src_restart(void *arg)
{
	struct host_vm *hv = arg;
	struct host *h = hv->host;

	if (balloon_vdev(hv) && virtio_dev_start(balloon_vdev(hv)))
		log_err("%s: the balloon's worker did not restart: the balloon no longer works",
			hv->cfg.name);
	pthread_mutex_lock(&h->pause_lock);
	hv->mig_paused = false;
	if (!hv->user_paused && !hv->policy_paused && vm_resume(hv->vm))
		log_warn("%s: could not resume after the failed migration", hv->cfg.name);
	pthread_mutex_unlock(&h->pause_lock);
}

/*
 * Auto-converge's holds: short pauses the policy and a user see as a
 * running VM; one paused by either meanwhile is left alone.
 */
static int src_hold(void *arg, bool on)
{
	struct host_vm *hv = arg;
	struct host *h = hv->host;
	int ret = -EBUSY;

	pthread_mutex_lock(&h->pause_lock);
	if (on && !hv->mig_paused && vm_get_state(hv->vm) == VM_RUNNING) {
		ret = vm_pause_timeout(hv->vm, 100);
		hv->mig_paused = !ret;
	} else if (!on && hv->mig_paused) {
		hv->mig_paused = false;
		ret = hv->user_paused || hv->policy_paused ? 0 : vm_resume(hv->vm);
	}
	pthread_mutex_unlock(&h->pause_lock);
	return ret;
}

static json_t *src_save_devices(void *arg)
{
	struct host_vm *hv = arg;
	json_t *o = json_object();

	if (!o)
		return NULL;
	if ((balloon_vdev(hv) &&
	     json_object_set_new(o, "balloon", virtio_dev_save(balloon_vdev(hv)))) ||
	    vm_save_platform(hv->vm, o)) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static void src_given_up(void *arg)
{
	struct host_vm *hv = arg;
	struct host *h = hv->host;

	log_info("%s: %s", hv->cfg.name, hv->saved ? "saved: it lives on in its file"
						  : "migrated: it runs at the destination now");
	/*
	 * The host's linger starts first (the VM's stop may end the host's main
	 * loop), then the VM stops, then it is gone (the main thread frees a
	 * gone VM at once).
	 */
	pthread_mutex_lock(&h->lock);
	h->mig_gone_ns = kv_clock_ns(CLOCK_MONOTONIC);
	pthread_mutex_unlock(&h->lock);
	vm_request_stop(hv->vm, VM_STATUS_STOPPED);
	pthread_mutex_lock(&h->lock);
	hv->gone = true;
	pthread_mutex_unlock(&h->lock);
	host_wake(h);
}

/* Long enough for a client polling the stats a few times a second. */
#define LINGER_MS 3000

int host_migration_linger_ms(struct host *h)
{
	uint64_t since, now = kv_clock_ns(CLOCK_MONOTONIC);

	pthread_mutex_lock(&h->lock);
	since = h->mig_gone_ns;
	pthread_mutex_unlock(&h->lock);
	if (!since || now - since >= LINGER_MS * 1000000ULL)
		return 0;
	return (int)((LINGER_MS * 1000000ULL - (now - since)) / 1000000ULL) + 1;
}

const struct mig_source_ops host_source_ops = {
	.stop = src_stop,
	.restart = src_restart,
	.hold = src_hold,
	.save_devices = src_save_devices,
	.given_up = src_given_up,
};

json_t *host_vm_describe(struct host *h, struct host_vm *hv)
{
	struct ovc_vm_stats vs = { 0 };
	struct mem_corpus corpus;
	json_t *d;

	ovc_get_vm_stats(h->ovc, hv->ovc, &vs);
	d = json_pack("{s:s, s:I, s:I, s:i, s:i, s:s, s:I, s:s, s:s, s:I}", "name", hv->cfg.name,
		      "mem_bytes", (json_int_t)hv->cfg.mem_bytes, "min_bytes",
		      (json_int_t)hv->cfg.min_bytes, "shares", (int)hv->cfg.shares, "cpus",
		      (int)hv->cfg.cpus, "accel", vm_accel_name(hv->vm), "ram_base",
		      (json_int_t)vm_ram_base(hv->vm), "append", hv->cfg.append ? hv->cfg.append : "",
		      "guest", hv->cfg.guest ? hv->cfg.guest : "", "resident_bytes",
		      (json_int_t)vs.resident_bytes);
	/* The destination builds the same machine: a Linux guest's state is of a PC's. */
	if (d && vm_is_linux(hv->vm))
		json_object_set_new(d, "linux", json_true());
	if (d && hv->cfg.swap_max_set)
		json_object_set_new(d, "swap_max", json_integer((json_int_t)hv->cfg.swap_max_bytes));
	if (d) {
		char group[HOST_GROUP_MAX + 1];

		host_vm_group(h, hv, group, sizeof(group), NULL);
		json_object_set_new(d, "sharing_group", json_string(group));
	}
	if (d && mem_corpus_get(vm_gm(hv->vm), &corpus)) {
		const char *slash = strrchr(corpus.path, '/');
		char hash[17];

		/* By name: where it lands, the host finds it in its own corpus_dir. */
		snprintf(hash, sizeof(hash), "%016" PRIx64, corpus.hash);
		json_object_set_new(d, "corpus", json_pack("{s:s, s:I, s:s}", "name",
							   slash ? slash + 1 : corpus.path, "bytes",
							   (json_int_t)corpus.bytes, "xxh3", hash));
	}
	return d;
}

int host_vm_begin_job(struct host *h, struct host_vm *hv)
{
	int ret = 0;

	pthread_mutex_lock(&h->lock);
	if (hv->removing || hv->job_starting || (hv->mig && !mig_job_finished(hv->mig)))
		ret = -EBUSY;
	else
		hv->job_starting = true;
	pthread_mutex_unlock(&h->lock);
	return ret;
}

void host_vm_abandon_job(struct host *h, struct host_vm *hv)
{
	pthread_mutex_lock(&h->lock);
	hv->job_starting = false;
	pthread_mutex_unlock(&h->lock);
}

void host_vm_set_job(struct host *h, struct host_vm *hv, struct mig_job *job)
{
	struct mig_job *old;
	bool owned;

	pthread_mutex_lock(&h->lock);
	old = hv->mig;
	owned = hv->mig_owned;
	hv->mig = job;
	hv->mig_owned = true;
	hv->job_starting = false;
	pthread_mutex_unlock(&h->lock);
	/*
	 * Finished (host_vm_migrating said so): nobody reads it any more. The
	 * job that brought the VM here (an arrival, a restore) is its
	 * arrival's until the arrival ends, which then leaves it to the VM.
	 */
	if (old && owned)
		mig_job_free(old);
}

bool host_vm_migrating(struct host *h, struct host_vm *hv)
{
	bool busy;

	pthread_mutex_lock(&h->lock);
	busy = hv->mig && !mig_job_finished(hv->mig);
	pthread_mutex_unlock(&h->lock);
	return busy;
}

static int migrate_verb(void *arg, json_t *req, json_t *reply)
{
	struct host *h = arg;
	struct mig_params p = { 0 };
	const char *name, *to;
	struct host_vm *hv;
	struct mig_job *job;
	uint64_t downtime, mib, rounds;
	char why[256];
	bool tcp;
	json_t *desc;
	int fd, ret;

	if ((ret = control_req_string(req, "vm", reply, &name)) ||
	    (ret = control_req_string(req, "to", reply, &to)) ||
	    (ret = control_req_count(req, "downtime_ms", reply, 60000, &downtime)) ||
	    (ret = control_req_count(req, "bandwidth_mib_s", reply, 1 << 20, &mib)) ||
	    (ret = control_req_count(req, "max_rounds", reply, 1000, &rounds)))
		return ret;
	if (geteuid() != 0)
		return control_reply_error(reply, EPERM, "only a host running as root sends VMs "
					   "away: a migration hands its memory to another process");
	if (!strncmp(to, "tcp:", 4) && !h->secret)
		return control_reply_error(reply, EPERM, "over TCP the hosts prove who they are "
					   "with a secret both hold: start both with "
					   "--migration-secret FILE");
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
	fd = open_addr(to, false, &tcp, why, sizeof(why));
	if (fd < 0) {
		host_vm_abandon_job(h, hv);
		return control_reply_error(reply, -fd, "cannot reach the destination: %s", why);
	}
	p.secret = h->secret;
	p.secret_len = h->secret_len;
	desc = host_vm_describe(h, hv);
	p.downtime_ms = (uint32_t)downtime;
	p.bandwidth = mib << 20;
	p.max_rounds = (uint32_t)rounds;
	p.checksum = json_is_true(json_object_get(req, "checksum"));
	/* The destination takes its digest when the source does. */
	if (desc && p.checksum)
		json_object_set_new(desc, "checksum", json_true());
	ret = desc ? mig_source_start(hv->vm, fd, desc, &p, &host_source_ops, hv, to, &job) : -ENOMEM;
	json_decref(desc);
	if (ret) {
		close(fd);
		host_vm_abandon_job(h, hv);
		return control_reply_error(reply, -ret, "cannot start the migration: %s",
					   strerror(-ret));
	}
	host_vm_set_job(h, hv, job);
	log_info("%s: migrating to %s", name, to);
	json_object_set_new(reply, "migration", host_vm_migration_json(hv));
	return 0;
}

static int migrate_cancel_verb(void *arg, json_t *req, json_t *reply)
{
	struct host *h = arg;
	struct host_vm *hv;
	const char *name;
	int ret;

	if ((ret = control_req_string(req, "vm", reply, &name)))
		return ret;
	hv = host_find_vm(h, name);
	if (!hv || !host_vm_migrating(h, hv))
		return control_reply_error(reply, ENOENT, "%s is not migrating", name);
	pthread_mutex_lock(&h->lock);
	mig_job_cancel(hv->mig);
	pthread_mutex_unlock(&h->lock);
	return 0;
}

static int migrate_set_verb(void *arg, json_t *req, json_t *reply)
{
	struct host *h = arg;
	struct host_vm *hv;
	const char *name;
	uint64_t downtime, mib;
	int ret;

	if ((ret = control_req_string(req, "vm", reply, &name)) ||
	    (ret = control_req_count(req, "downtime_ms", reply, 60000, &downtime)) ||
	    (ret = control_req_count(req, "bandwidth_mib_s", reply, 1 << 20, &mib)))
		return ret;
	hv = host_find_vm(h, name);
	if (!hv || !host_vm_migrating(h, hv))
		return control_reply_error(reply, ENOENT, "%s is not migrating", name);
	pthread_mutex_lock(&h->lock);
	mig_job_set(hv->mig, (uint32_t)downtime,
		    json_object_get(req, "bandwidth_mib_s") ? mib << 20 : UINT64_MAX);
	pthread_mutex_unlock(&h->lock);
	json_object_set_new(reply, "migration", host_vm_migration_json(hv));
	return 0;
}

int host_migration_register(struct host *h)
{
	int ret = load_secret(h);

	if (!ret)
		ret = control_register_verb(h->control, "migrate", migrate_verb, h);
	if (!ret)
		ret = control_register_verb(h->control, "migrate_cancel", migrate_cancel_verb, h);
	if (!ret)
		ret = control_register_verb(h->control, "migrate_set", migrate_set_verb, h);
	return ret;
}

json_t *host_vm_migration_json(struct host_vm *hv)
{
	struct mig_progress p;

	pthread_mutex_lock(&hv->host->lock);
	if (!hv->mig) {
		pthread_mutex_unlock(&hv->host->lock);
		return json_null();
	}
	mig_job_progress(hv->mig, &p);
	pthread_mutex_unlock(&hv->host->lock);
	return host_job_json(&p);
}

void host_migration_refused_json(struct host *h, json_t *arr)
{
	pthread_mutex_lock(&h->arrivals_lock);
	for (unsigned int i = 0; i < h->nr_arrivals; i++) {
		struct arrival *a = h->arrivals[i];
		struct mig_progress p;

		/* One that reserved a VM is shown with it. */
		if (a->hv)
			continue;
		mig_job_progress(a->job, &p);
		json_array_append_new(arr, host_job_json(&p));
	}
	pthread_mutex_unlock(&h->arrivals_lock);
}

json_t *host_job_json(const struct mig_progress *pp)
{
	static const char *const kinds[MIG_PAGE_KINDS] = {
		[MIG_PAGE_ZERO] = "zero",   [MIG_PAGE_BALLOONED] = "ballooned",
		[MIG_PAGE_DATA] = "data",   [MIG_PAGE_FRAME] = "shared",
		[MIG_PAGE_FRAME_REF] = "shared_refs",
	};
	const struct mig_progress p = *pp;
	json_t *pages, *o;

	pages = json_object();
	for (unsigned int k = 1; k < MIG_PAGE_KINDS; k++)
		json_object_set_new(pages, kinds[k], json_integer((json_int_t)p.pages[k]));
	o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:I, s:I, s:I, s:i, s:o, s:I, s:f, s:f, s:I, s:I, s:I, s:i, s:I}",
		      "vm", p.vm, "kind", mig_kind_name(p.kind), "direction", p.source ? "out" : "in",
		      "peer", p.peer, "stage", mig_stage_name(p.stage), "round", (int)p.round,
		      "ram_pages", (json_int_t)p.ram_pages, "dirty_pages", (json_int_t)p.dirty_pages,
		      "dirtied_pages", (json_int_t)p.dirtied_pages, "throttle_pct", (int)p.throttle_pct,
		      "pages", pages, "bytes", (json_int_t)p.bytes, "rate_mib_s", p.rate_mib_s,
		      "dirty_mib_s", p.dirty_mib_s, "expected_downtime_ms",
		      (json_int_t)p.expected_downtime_ms, "downtime_ms", (json_int_t)p.downtime_ms,
		      "total_ms", (json_int_t)p.total_ms, "downtime_limit_ms",
		      (int)p.downtime_limit_ms, "bandwidth_bytes_s", (json_int_t)p.bandwidth);
	if (o && p.error[0])
		json_object_set_new(o, "error", json_string(p.error));
	if (o && p.checksum[0])
		json_object_set_new(o, "checksum", json_string(p.checksum));
	return o ? o : json_null();
}

/* --- the destination's side --- */

/*
 * An incoming VM's corpus ({"name", "bytes", "xxh3"}): the file of that name
 * in this host's corpus_dir (or the one the restore named), with the same
 * content. 0 and c->corpus set, or -errno with why.
 */
static int parse_corpus(struct host *h, json_t *o, struct host_vm_config *c, char *why,
			size_t whylen)
{
	const char *name, *hex;
	json_int_t bytes;
	uint64_t hash;
	char *end;
	int ret;

	if (json_unpack(o, "{s:s, s:I, s:s}", "name", &name, "bytes", &bytes, "xxh3", &hex) ||
	    bytes <= 0 || strlen(hex) != 16) {
		snprintf(why, whylen, "the VM's corpus is described wrongly");
		return -EINVAL;
	}
	hash = strtoull(hex, &end, 16);
	if (*end) {
		snprintf(why, whylen, "the VM's corpus is described wrongly");
		return -EINVAL;
	}
	if (h->cfg.restore_corpus) {
		c->corpus = kv_strdup(h->cfg.restore_corpus);
		ret = c->corpus ? 0 : -ENOMEM;
	} else {
		ret = host_corpus_path(h, name, &c->corpus, why, whylen);
	}
	if (!ret)
		ret = mem_corpus_check(c->corpus, (uint64_t)bytes, hash, why, whylen);
	return ret;
}

/* Check an incoming VM's description as any other input from outside. */
static int parse_desc(struct host *h, json_t *d, struct host_vm_config *c, char *why,
		      size_t whylen)
{
	const char *name = NULL, *accel = NULL, *append = "", *guest = "";
	json_int_t mem, min = 0, base = 0, resident = 0, swap_max = -1;
	int cpus, shares = 1000, linux_machine = 0;
	enum accel_kind want, have;
	char awhy[256];

	if (json_unpack(d, "{s:s, s:I, s?I, s?i, s:i, s:s, s?I, s?s, s?s, s?I, s?I, s?b}", "name",
			&name, "mem_bytes", &mem, "min_bytes", &min, "shares", &shares, "cpus",
			&cpus, "accel", &accel, "ram_base", &base, "append", &append, "guest", &guest,
			"resident_bytes", &resident, "swap_max", &swap_max, "linux",
			&linux_machine)) {
		snprintf(why, whylen, "the VM's description is malformed");
		return -EINVAL;
	}
	if (!*name || strlen(name) > 63 || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"
						    "OPQRSTUVWXYZ0123456789._-") != strlen(name)) {
		snprintf(why, whylen, "the VM's name is not a name kvmem uses");
		return -EINVAL;
	}
	if (mem <= 0 || (uint64_t)mem % LAYOUT_PAGE_SIZE || (uint64_t)mem < 4 * LAYOUT_RESERVED_END ||
	    (uint64_t)mem > LAYOUT_MAX_RAM || min < 0 || min > mem || cpus < 1 ||
	    cpus > ABI_MAX_CPUS || shares < 1 || shares > 1000000 || base < 0 ||
	    strlen(append) >= ABI_MAX_CMDLINE || strlen(guest) > 4096) {
		snprintf(why, whylen, "the VM's description is out of range");
		return -EINVAL;
	}
	if (accel_parse(accel, &want) || want == ACCEL_AUTO ||
	    accel_resolve(want, &have, awhy, sizeof(awhy)) || have != want) {
		snprintf(why, whylen, "it runs on the %s accelerator, which this host does not have",
			 accel);
		return -ENODEV;
	}
	/* Refused as a kernel in the config would be, in the same words. */
	if (linux_machine && accel_linux_check(want, awhy, sizeof(awhy))) {
		snprintf(why, whylen, "it is a Linux guest: %s", awhy);
		return -ENODEV;
	}
	*c = (struct host_vm_config){
		.mem_bytes = (uint64_t)mem,
		.min_bytes = (uint64_t)min,
		.shares = (uint32_t)shares,
		.cpus = (uint32_t)cpus,
		.accel = want,
		/* A thread guest's pointers are host addresses: it lives only at its old base. */
		.ram_base = want == ACCEL_THREAD ? (uint64_t)base : 0,
		.swap_max_set = swap_max >= 0,
		.swap_max_bytes = swap_max >= 0 ? (uint64_t)swap_max : 0,
		.linux_machine = linux_machine,
	};
	c->name = kv_strdup(name);
	c->append = kv_strdup(append);
	c->guest = kv_strdup(*guest ? guest : "migrated");
	if (!c->name || !c->append || !c->guest) {
		host_vm_config_free(c);
		return -ENOMEM;
	}
	if (json_object_get(d, "corpus")) {
		int ret = parse_corpus(h, json_object_get(d, "corpus"), c, why, whylen);

		if (ret) {
			host_vm_config_free(c);
			return ret;
		}
	}
	/* Checked as any group a VM asks for (host_add_vm): here only that it is text. */
	if (json_object_get(d, "sharing_group")) {
		const char *g = json_string_value(json_object_get(d, "sharing_group"));

		if (!g) {
			host_vm_config_free(c);
			snprintf(why, whylen, "the VM's sharing group is described wrongly");
			return -EINVAL;
		}
		c->sharing_group = kv_strdup(g);
		if (!c->sharing_group) {
			host_vm_config_free(c);
			return -ENOMEM;
		}
	}
	return 0;
}

/* The reservation (host_add_vm); its resident size at the source is said in the log. */
static int dst_reserve(void *arg, json_t *desc, struct vm **vm, char *why, size_t whylen)
{
	struct arrival *a = arg;
	struct host *h = a->h;
	struct host_vm_config c;
	struct host_vm *hv;
	int ret;

	/* A restore may give the VM another name (a copy of one that runs here, say). */
	if (a->name)
		json_object_set_new(desc, "name", json_string(a->name));
	ret = parse_desc(h, desc, &c, why, whylen);
	if (ret)
		return ret;
	ret = host_add_vm(h, &c, &(struct host_vm_origin){ .incoming = true, .job = a->job,
							   .file = a->file, .clone = a->img != NULL },
			  &hv, why, whylen);
	if (ret)
		return ret;
	/* The stats read it under arrivals_lock (host_migration_refused_json). */
	pthread_mutex_lock(&h->arrivals_lock);
	a->hv = hv;
	pthread_mutex_unlock(&h->arrivals_lock);
	*vm = hv->vm;
	log_info("%s: %s (%" PRIu64 " MiB, %" PRIu64 " MiB resident at the source)",
		 hv->cfg.name, a->file ? "restoring" : "arriving", hv->cfg.mem_bytes >> 20,
		 (uint64_t)json_integer_value(json_object_get(desc, "resident_bytes")) >> 20);
	return 0;
}

int host_vm_load_devices(struct host_vm *hv, json_t *devices, char *why, size_t whylen)
{
	json_t *b = json_object_get(devices, "balloon");
	int ret;

	if (balloon_vdev(hv)) {
		if (!json_is_object(b)) {
			snprintf(why, whylen, "no balloon state");
			return -EINVAL;
		}
		ret = virtio_dev_load(balloon_vdev(hv), b, why, whylen);
		if (ret)
			return ret;
	}
	return vm_load_platform(hv->vm, devices, why, whylen);
}

static int dst_load_memory(void *arg, struct gm *gm, char *why, size_t whylen)
{
	struct arrival *a = arg;
	uint64_t mapped;
	int ret;

	if (!a->img || !a->h->dedup) {
		snprintf(why, whylen, "no shared image");
		return -EINVAL;
	}
	ret = dedup_image_map(a->h->dedup, a->img, gm, &mapped);
	if (ret)
		snprintf(why, whylen, "mapping them as shared frames: %s", strerror(-ret));
	return ret;
}

static int dst_load_devices(void *arg, json_t *devices, char *why, size_t whylen)
{
	struct arrival *a = arg;

	return host_vm_load_devices(a->hv, devices, why, whylen);
}

static int dst_activate(void *arg)
{
	struct arrival *a = arg;
	struct host *h = a->h;
	int ret;

	pthread_mutex_lock(&h->lock);
	a->hv->incoming = false;
	pthread_mutex_unlock(&h->lock);
	ret = vm_start(a->hv->vm);
	if (ret) {
		pthread_mutex_lock(&h->lock);
		a->hv->gone = true;
		pthread_mutex_unlock(&h->lock);
		host_wake(h);
		return ret;
	}
	log_info("%s: %s: running here", a->hv->cfg.name, a->file ? "restored" : "migrated in");
	return 0;
}

static void dst_discard(void *arg)
{
	struct arrival *a = arg;

	pthread_mutex_lock(&a->h->lock);
	a->hv->gone = true;
	pthread_mutex_unlock(&a->h->lock);
	host_wake(a->h);
}

/*
 * Wait for an arrival's job to end, then forget it. Its VM (if it reserved
 * one, which it may have done up to its end) that still shows the job as
 * its last migration takes it over, to free with its next job or its
 * entry; else the job goes now. a->hv may be vacant by now, or hold
 * another VM: its mig is then NULL or another job.
 */
static void arrival_free(struct host *h, struct arrival *a)
{
	bool handed_over;

	while (!mig_job_finished(a->job))
		nanosleep(&(struct timespec){ .tv_nsec = 10000000 }, NULL);
	pthread_mutex_lock(&h->lock);
	handed_over = a->hv && a->hv->mig == a->job;
	if (handed_over)
		a->hv->mig_owned = true;
	pthread_mutex_unlock(&h->lock);
	if (!handed_over)
		mig_job_free(a->job);
	kv_free(a->name);
	kv_free(a->file);
	kv_free(a);
}

/*
 * Arrivals that ended go, so that they cannot use up the room for
 * arrivals: those without a VM (refused, failed before reserving, a peer
 * that never proved the secret) and those that brought one, whose VM keeps
 * the job to show; a restore's once its verb has read how it ended.
 * arrivals_lock held.
 */
static void reap_arrivals(struct host *h)
{
	unsigned int kept = 0;

	for (unsigned int i = 0; i < h->nr_arrivals; i++) {
		struct arrival *a = h->arrivals[i];

		/* A restore's outcome goes once its verb has read it. */
		if (mig_job_finished(a->job) && (!a->file || a->seen))
			arrival_free(h, a);
		else
			h->arrivals[kept++] = a;
	}
	h->nr_arrivals = kept;
}

static const struct mig_dest_ops dest_ops = {
	.reserve = dst_reserve,
	.load_memory = dst_load_memory,
	.load_devices = dst_load_devices,
	.activate = dst_activate,
	.discard = dst_discard,
};

/*
 * A peer on a UNIX socket is trusted as a control client is (and proves the
 * secret too when the host has one); a TCP peer only by the secret, in the
 * handshake (the listener does not run over TCP without one).
 */
static bool peer_trusted(int fd, bool tcp, char *peer, size_t len)
{
	struct ucred cred;
	socklen_t cl = sizeof(cred);

	if (tcp) {
		struct sockaddr_storage sa;
		socklen_t sl = sizeof(sa);
		char host[64] = "?", port[16] = "?";

		if (!getpeername(fd, (struct sockaddr *)&sa, &sl))
			getnameinfo((struct sockaddr *)&sa, sl, host, sizeof(host), port,
				    sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV);
		snprintf(peer, len, "tcp:%s:%s", host, port);
		return true;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) || cl != sizeof(cred))
		return false;
	snprintf(peer, len, "pid %d", (int)cred.pid);
	return control_uid_trusted(cred.uid);
}

static void *incoming_thread(void *arg)
{
	struct incoming *in = arg;

	sandbox_enter(SANDBOX_MIGRATION);
	for (;;) {
		struct pollfd pfd[2] = { { in->lfd, POLLIN, 0 }, { in->stop_efd, POLLIN, 0 } };
		struct mig_params p = { 0 };
		struct arrival *a;
		char peer[64];
		int fd, ret;

		if (poll(pfd, 2, -1) < 0)
			continue;
		if (pfd[1].revents)
			break;
		fd = accept4(in->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		if (!peer_trusted(fd, in->tcp, peer, sizeof(peer))) {
			log_warn_ratelimited("incoming migration from %s refused: not a trusted peer",
					     peer);
			close(fd);
			continue;
		}
		a = kv_zalloc(sizeof(*a));
		pthread_mutex_lock(&in->h->arrivals_lock);
		reap_arrivals(in->h);
		if (!a || in->h->nr_arrivals == in->h->max_arrivals) {
			pthread_mutex_unlock(&in->h->arrivals_lock);
			log_warn_ratelimited("incoming migration from %s refused: no room", peer);
			kv_free(a);
			close(fd);
			continue;
		}
		a->h = in->h;
		p.secret = in->h->secret;
		p.secret_len = in->h->secret_len;
		/* The job is the arrival's before its thread can reserve (which records it). */
		ret = mig_dest_start(fd, &p, &dest_ops, a, peer, &a->job);
		if (ret) {
			pthread_mutex_unlock(&in->h->arrivals_lock);
			log_warn("incoming migration from %s: %s", peer, strerror(-ret));
			kv_free(a);
			close(fd);
			continue;
		}
		in->h->arrivals[in->h->nr_arrivals++] = a;
		pthread_mutex_unlock(&in->h->arrivals_lock);
	}
	return NULL;
}

int host_migration_listen(struct host *h)
{
	struct incoming *in;
	char why[256];
	int ret;

	if (!h->cfg.incoming)
		return 0;
	if (geteuid() != 0) {
		log_err("incoming %s: only a host running as root accepts VMs", h->cfg.incoming);
		return -EPERM;
	}
	ret = load_secret(h);
	if (ret)
		return ret;
	if (!strncmp(h->cfg.incoming, "tcp:", 4) && !h->secret) {
		log_err("incoming %s: over TCP the peers prove who they are with a secret both "
			"hold: give this host --migration-secret FILE (and the source the same)",
			h->cfg.incoming);
		return -EPERM;
	}
	in = kv_zalloc(sizeof(*in));
	if (!in)
		return -ENOMEM;
	in->h = h;
	snprintf(in->addr, sizeof(in->addr), "%s", h->cfg.incoming);
	in->stop_efd = eventfd(0, EFD_CLOEXEC);
	in->lfd = open_addr(h->cfg.incoming, true, &in->tcp, why, sizeof(why));
	if (in->lfd < 0 || in->stop_efd < 0) {
		ret = in->lfd < 0 ? in->lfd : -errno;
		log_err("incoming: %s", in->lfd < 0 ? why : strerror(-ret));
		goto fail;
	}
	ret = thread_spawn(&in->thread, "mig-listen", incoming_thread, in);
	if (ret)
		goto fail;
	h->incoming = in;
	log_info("accepting VMs at %s", in->addr);
	return 0;
fail:
	if (in->lfd >= 0)
		close(in->lfd);
	if (in->stop_efd >= 0)
		close(in->stop_efd);
	kv_free(in);
	return ret;
}

void host_migration_stop(struct host *h)
{
	struct incoming *in = h->incoming;
	uint64_t one = 1;

	/* Outgoing: each gives up, and its VM runs on here. */
	for (unsigned int i = 0; i < host_nr_vms(h); i++) {
		struct host_vm *hv = &h->vms[i];

		if (host_vm_vacant(h, i))
			continue;
		pthread_mutex_lock(&h->lock);
		if (hv->mig && !mig_job_finished(hv->mig))
			mig_job_cancel(hv->mig);
		pthread_mutex_unlock(&h->lock);
	}
	if (in) {
		/* Verbs (the stats) read it with the VM list held. */
		pthread_rwlock_wrlock(&h->vms_lock);
		h->incoming = NULL;
		pthread_rwlock_unlock(&h->vms_lock);
		if (write(in->stop_efd, &one, sizeof(one)) < 0)
			log_debug("eventfd: %m");
		pthread_join(in->thread, NULL);
		close(in->lfd);
		close(in->stop_efd);
		if (!strncmp(in->addr, "unix:", 5))
			unlink(in->addr + 5);
		kv_free(in);
	}
	/* Incoming and restoring: each discards its VM (the main loop or the host's end releases it). */
	pthread_mutex_lock(&h->arrivals_lock);
	h->arrivals_closed = true;
	for (unsigned int i = 0; i < h->nr_arrivals; i++)
		mig_job_cancel(h->arrivals[i]->job);
	for (unsigned int i = 0; i < h->nr_arrivals; i++)
		arrival_free(h, h->arrivals[i]);
	h->nr_arrivals = 0;
	pthread_mutex_unlock(&h->arrivals_lock);
}

int host_restore_start(struct host *h, const char *path, const char *name,
		       const struct mig_params *params, struct dedup_image *img, uint64_t *id,
		       char *why, size_t whylen)
{
	static uint64_t next_id;
	struct mig_params p = *params;
	struct arrival *a = kv_zalloc(sizeof(*a));
	int ret;

	if (!a || !(a->file = kv_strdup(path)) || (name && !(a->name = kv_strdup(name)))) {
		if (a)
			kv_free(a->file);
		kv_free(a);
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	a->h = h;
	a->img = img;
	pthread_mutex_lock(&h->arrivals_lock);
	reap_arrivals(h);
	if (h->nr_arrivals == h->max_arrivals || h->arrivals_closed) {
		ret = h->arrivals_closed ? -ECANCELED : -EAGAIN;
		pthread_mutex_unlock(&h->arrivals_lock);
		kv_free(a->file);
		kv_free(a->name);
		kv_free(a);
		if (ret == -ECANCELED)
			snprintf(why, whylen, "the host is stopping");
		else
			snprintf(why, whylen, "%u VMs are arriving already", h->max_arrivals);
		return ret;
	}
	/* The job is the arrival's before its thread can reserve (which records it). */
	ret = mig_restore_start(path, &p, &dest_ops, a, &a->job, why, whylen);
	if (ret) {
		pthread_mutex_unlock(&h->arrivals_lock);
		kv_free(a->file);
		kv_free(a->name);
		kv_free(a);
		return ret;
	}
	a->id = ++next_id;
	*id = a->id;
	h->arrivals[h->nr_arrivals++] = a;
	pthread_mutex_unlock(&h->arrivals_lock);
	return 0;
}

int host_restore_progress(struct host *h, uint64_t id, struct mig_progress *out)
{
	int ret = -ENOENT;

	pthread_mutex_lock(&h->arrivals_lock);
	for (unsigned int i = 0; i < h->nr_arrivals; i++) {
		if (h->arrivals[i]->id == id) {
			mig_job_progress(h->arrivals[i]->job, out);
			ret = mig_job_finished(h->arrivals[i]->job) ? 1 : 0;
			h->arrivals[i]->seen = ret == 1;
			break;
		}
	}
	pthread_mutex_unlock(&h->arrivals_lock);
	return ret;
}

void host_restore_forget(struct host *h, uint64_t id)
{
	pthread_mutex_lock(&h->arrivals_lock);
	for (unsigned int i = 0; i < h->nr_arrivals; i++)
		if (h->arrivals[i]->id == id)
			h->arrivals[i]->seen = true;
	pthread_mutex_unlock(&h->arrivals_lock);
}

/*
 * To be released now: gone, or being removed and stopped (h->lock). A VM being
 * removed never gets a job (host_vm_begin_job refuses it), and one with a job
 * is never removed; the job check stays for a job that began before.
 */
static bool releasable(struct host_vm *hv)
{
	return !hv->released &&
	       (hv->gone || (hv->removing && hv->stopped && !hv->job_starting &&
			     !(hv->mig && mig_job_is_source(hv->mig) && !mig_job_finished(hv->mig))));
}

/*
 * vms_lock's write side held (no walk of the verbs runs): empty the entry
 * of a VM released here whose job, if it had one, has ended (one at work
 * may still call on the entry), keeping that job's figures in the history.
 * A job still an arrival's is the arrival's to free; one the VM owned goes
 * with it. False when its job is still at work.
 */
static bool vacate(struct host *h, unsigned int i)
{
	struct host_vm *hv = &h->vms[i];
	struct mig_job *job;
	bool owned;

	pthread_mutex_lock(&h->lock);
	job = hv->mig;
	owned = hv->mig_owned;
	if (job && !mig_job_finished(job)) {
		pthread_mutex_unlock(&h->lock);
		return false;
	}
	if (job) {
		unsigned int at = (h->history_first + h->nr_history) % HOST_HISTORY_MAX;

		mig_job_progress(job, &h->history[at]);
		if (h->nr_history < HOST_HISTORY_MAX)
			h->nr_history++;
		else
			h->history_first = (h->history_first + 1) % HOST_HISTORY_MAX;
	}
	memset(hv, 0, sizeof(*hv));
	hv->released = true;
	__atomic_store_n(&h->vacant[i], true, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&h->lock);
	if (job && owned)
		mig_job_free(job);
	return true;
}

bool host_release_gone(struct host *h)
{
	bool waiting = false;

	for (unsigned int i = 0; i < host_nr_vms(h); i++) {
		struct host_vm *hv = &h->vms[i];
		bool gone, left;

		if (host_vm_vacant(h, i))
			continue;
		pthread_mutex_lock(&h->lock);
		gone = releasable(hv);
		left = hv->released;
		/* One whose job still runs: not worth the write side yet. */
		if (left && hv->mig && !mig_job_finished(hv->mig)) {
			left = false;
			waiting = true;
		}
		pthread_mutex_unlock(&h->lock);
		if (!gone && !left)
			continue;
		pthread_rwlock_wrlock(&h->vms_lock);
		/* Again: a verb may have started a job while this waited for the verbs to end. */
		pthread_mutex_lock(&h->lock);
		gone = releasable(hv);
		pthread_mutex_unlock(&h->lock);
		if (gone) {
			host_release_vm(h, hv);
			pthread_mutex_lock(&h->lock);
			hv->stopped = true;
			pthread_mutex_unlock(&h->lock);
		}
		/* Released now (or before): empty its entry once its job has ended. */
		if (hv->released && !vacate(h, i))
			waiting = true;
		pthread_rwlock_unlock(&h->vms_lock);
	}
	return waiting;
}

void host_migration_history_json(struct host *h, json_t *arr)
{
	pthread_mutex_lock(&h->lock);
	for (unsigned int k = 0; k < h->nr_history; k++)
		json_array_append_new(arr, host_job_json(
			&h->history[(h->history_first + k) % HOST_HISTORY_MAX]));
	pthread_mutex_unlock(&h->lock);
}
