/* SPDX-License-Identifier: MIT */
/*
 * The host (see host.h). The main thread runs host_run: it waits on a
 * signalfd and on an eventfd that each VM's last vCPU thread bumps when the VM
 * stops. Lock order: h->lock, then a VM's own lock (taken inside vm_*).
 */
#define LOG_TAG "host"
#include "core/host/host.h"
#include "core/host/host_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "balloon/balloon.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/host/control.h"
#include "core/layout.h"
#include "core/size.h"
#include "core/vm.h"
#include "dedup/dedup.h"
#include "mem/account.h"
#include "mem/corpus.h"
#include "mem/lazy.h"
#include "mem/memmap.h"
#include "mem/overcommit.h"
#include "mem/reclaim.h"
#include "mem/damon.h"
#include "mem/memcg.h"
#include "mem/swap.h"
#include "mem/txn.h"
#include "mem/uffd.h"
#include "migrate/migrate.h"

uint64_t host_default_budget(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	unsigned long long kb = 0;
	char line[128];

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	fclose(f);
	return (uint64_t)kb * 1024;
}

static void on_vm_stopped(void *arg, struct vm *vm)
{
	struct host_vm *hv = arg;
	struct host *h = hv->host;
	struct mem_lazy_stats ls;
	uint64_t one = 1;

	/* Restored lazily and a page of it could not be had: it can never run again, it goes. */
	mem_lazy_get_stats(vm_gm(vm), &ls);
	pthread_mutex_lock(&h->lock);
	hv->stopped = true;
	hv->status = vm_exit_status(vm);
	if (ls.failed) {
		hv->gone = true;
		if (hv->mig)
			mig_job_fail(hv->mig, ls.error);
	}
	pthread_mutex_unlock(&h->lock);
	if (write(h->stop_efd, &one, sizeof(one)) < 0)
		log_debug("eventfd: %m");
}

static int balloon_verb(void *arg, json_t *req, json_t *reply);

/*
 * One of the VM's swapped pages cannot be read back (mem/swap.h): its guest
 * would wait for that page forever, so the VM stops, alone, as a VMM
 * failure (status 1), the reason logged and kept for its stats. Runs on the
 * userfaultfd service thread, so it must not wait for that thread: it does
 * not, since vm_request_stop only marks the stop and kicks the vCPUs (a
 * signal, which also takes a vCPU out of a fault it waits in), holding
 * the VM's and the vCPUs' locks only for that, and nothing holds those
 * while it waits for the service. The host's main loop sees the VM stop as
 * it sees a guest crash.
 */
static void on_swap_fatal(void *arg, const char *why)
{
	struct host_vm *hv = arg;

	if (!__atomic_exchange_n(&hv->swap_failed, true, __ATOMIC_ACQ_REL)) {
		snprintf(hv->swap_error, sizeof(hv->swap_error), "%s", why ? why : "read error");
		__atomic_store_n(&hv->swap_error_set, true, __ATOMIC_RELEASE);
		log_err("%s: swap: %s: stopping the VM (its memory cannot be served)",
			hv->cfg.name, hv->swap_error);
	}
	vm_request_stop(hv->vm, VM_STATUS_VMM_ERROR);
}

/* The policy drives each VM's balloon through these (mem/overcommit.h). */
static int balloon_get(void *arg, struct ovc_balloon_state *out)
{
	struct host_vm *hv = arg;
	struct balloon_stats st;

	balloon_get_stats(hv->balloon, &st);
	out->target_bytes = st.target_bytes;
	out->actual_bytes = st.actual_bytes;
	out->available_valid = st.guest.valid & (1u << BALLOON_S_AVAIL);
	out->available_bytes = out->available_valid ? st.guest.val[BALLOON_S_AVAIL] : 0;
	out->ready = st.features != 0;
	return 0;
}

static int balloon_target(void *arg, uint64_t target_bytes)
{
	struct host_vm *hv = arg;

	return balloon_set_target(hv->balloon, target_bytes);
}

static const struct ovc_balloon_ops host_balloon_ops = {
	.get = balloon_get,
	.set_target = balloon_target,
};

/*
 * The policy pauses a VM to hold the hard limit. A VM paused by hand, or
 * stopping, is not its to pause; one paused by hand meanwhile stays paused
 * when the policy lets it go.
 */
static int throttle_pause(void *arg)
{
	struct host_vm *hv = arg;
	int ret = -EINVAL;

	pthread_mutex_lock(&hv->host->pause_lock);
	if (!hv->user_paused && !hv->mig_paused && vm_get_state(hv->vm) == VM_RUNNING) {
		ret = vm_pause_timeout(hv->vm, 500);
		if (!ret && vm_get_state(hv->vm) != VM_PAUSED)
			ret = -EINVAL; /* it stopped instead */
		hv->policy_paused = !ret;
	}
	pthread_mutex_unlock(&hv->host->pause_lock);
	return ret;
}

static int throttle_resume(void *arg)
{
	struct host_vm *hv = arg;
	int ret = 0;

	pthread_mutex_lock(&hv->host->pause_lock);
	hv->policy_paused = false;
	if (!hv->user_paused && !hv->mig_paused)
		ret = vm_resume(hv->vm);
	pthread_mutex_unlock(&hv->host->pause_lock);
	return ret;
}

static const struct ovc_throttle_ops host_throttle_ops = {
	.pause = throttle_pause,
	.resume = throttle_resume,
};

int host_create_vm(struct host *h, struct host_vm *hv)
{
	struct vm_params p = {
		.name = hv->cfg.name,
		.accel = hv->cfg.accel,
		.mem_bytes = hv->cfg.mem_bytes,
		.ncpus = hv->cfg.cpus,
		.guest_path = hv->cfg.guest,
		.kernel_path = hv->cfg.kernel,
		.linux_machine = hv->cfg.linux_machine,
		.initrd_path = hv->cfg.initrd,
		.cmdline = hv->cfg.append ? hv->cfg.append : "",
		.console_fd = STDOUT_FILENO,
		.console_prefix = h->cfg.console_prefix,
		.console_log = hv->cfg.console_log,
		.ram_base = hv->cfg.ram_base,
		.corpus = hv->cfg.corpus,
	};
	struct gm *gm;
	int ret;

	ret = vm_create(&p, &hv->vm);
	if (ret)
		return ret;
	gm = vm_gm(hv->vm);
	ret = mem_enable_uffd(gm);
	if (ret) {
		log_err("%s: userfaultfd: %s (kvmem needs it to serve dropped pages)",
			hv->cfg.name, strerror(-ret));
		return ret;
	}
	ret = uffd_service_add(h->uffd, gm);
	if (ret)
		return ret;
	if (h->swap) {
		/* Its faults are served from now on, and nothing has run yet. */
		ret = mem_swap_attach(h->swap, gm, hv->cfg.name, on_swap_fatal, hv);
		if (!ret && hv->cfg.swap_max_set)
			ret = mem_swap_set_limit(h->swap, gm, hv->cfg.swap_max_bytes / MEM_PAGE_SIZE);
		if (ret) {
			log_err("%s: host swap: %s", hv->cfg.name, strerror(-ret));
			return ret;
		}
		hv->swap_attached = true;
	}
	ret = balloon_create(hv->vm, NULL, NULL, &hv->balloon);
	if (!ret && h->cfg.balloon_stats_set)
		ret = balloon_set_stats_interval(hv->balloon, h->cfg.balloon_stats_ms);
	if (ret) {
		log_err("%s: balloon device: %s", hv->cfg.name, strerror(-ret));
		return ret;
	}
	if (h->cfg.dedup == HOST_DEDUP_KSM) {
		/* KSM merges in userfaultfd-registered memory too (measured): keep uffd. */
		ret = mem_set_mergeable(gm);
		if (ret)
			log_warn("%s: MADV_MERGEABLE: %s (is KSM built in?)", hv->cfg.name,
				 strerror(-ret));
	}
	/* Not counted in nr_vms yet: no other thread sees it (the creator may hold h->lock). */
	snprintf(hv->group, sizeof(hv->group), "%s", host_vm_config_group(hv));
	hv->group_salt = host_group_salt(hv->group);
	if (h->dedup) {
		ret = dedup_add_vm(h->dedup, gm, hv->cfg.name, hv->group_salt);
		if (ret)
			return ret;
	}
	ret = mem_ledger_add(h->ledger, gm);
	if (ret)
		return ret;
	ret = ovc_add_vm(h->ovc, gm, hv->cfg.name, hv->cfg.mem_bytes, hv->cfg.min_bytes,
			 hv->cfg.shares, &hv->ovc);
	if (ret)
		return ret;
	ovc_vm_set_balloon(h->ovc, hv->ovc, &host_balloon_ops, hv);
	ovc_vm_set_throttle(h->ovc, hv->ovc, &host_throttle_ops, hv);
	vm_set_stop_notify(hv->vm, on_vm_stopped, hv);
	return 0;
}

/* How soon the main thread looks again at a VM that left while its job ends. */
#define RELEASE_RETRY_MS 50

#define KEY_MIN 16
#define KEY_MAX 4096

int host_load_key(const char *what, const char *path, uint8_t **out, size_t *len)
{
	struct stat st;
	uint8_t *buf;
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 || fstat(fd, &st)) {
		int err = errno;

		log_err("%s %s: %s", what, path, strerror(err));
		if (fd >= 0)
			close(fd);
		return -err;
	}
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077) || st.st_uid != geteuid() ||
	    st.st_size < KEY_MIN || st.st_size > KEY_MAX) {
		log_err("%s %s: must be a file of %d to %d bytes that only its owner (this host's "
			"user) can read or write (mode 0600)", what, path, KEY_MIN, KEY_MAX);
		close(fd);
		return -EINVAL;
	}
	buf = kv_zalloc((size_t)st.st_size);
	n = buf ? read(fd, buf, (size_t)st.st_size) : -1;
	close(fd);
	if (n != st.st_size) {
		log_err("%s %s: cannot read it", what, path);
		kv_free(buf);
		return -EIO;
	}
	*out = buf;
	*len = (size_t)n;
	return 0;
}

int host_add_vm(struct host *h, struct host_vm_config *c, const struct host_vm_origin *o,
		struct host_vm **out, char *why, size_t whylen)
{
	struct ovc_stats hs;
	struct host_vm *hv = NULL;
	uint64_t sum_min = 0;
	bool fresh;
	int ret;

	ret = host_group_check(c->sharing_group ? c->sharing_group : HOST_GROUP_DEFAULT,
			       h->cfg.dedup == HOST_DEDUP_KSM, why, whylen);
	if (ret) {
		host_vm_config_free(c);
		return ret;
	}
	/* The VM list held: no VM is released (and its name freed) while names are compared. */
	pthread_rwlock_rdlock(&h->vms_lock);
	ovc_get_stats(h->ovc, &hs);
	for (unsigned int i = 0; i < host_nr_vms(h); i++)
		if (!host_vm_vacant(h, i) && !h->vms[i].released && !h->vms[i].gone)
			sum_min += h->vms[i].cfg.min_bytes;
	if (sum_min + c->min_bytes > hs.budget_bytes) {
		snprintf(why, whylen, "its min of %" PRIu64 " MiB does not fit: this host's budget is "
			 "%" PRIu64 " MiB and its VMs' mins take %" PRIu64 " MiB", c->min_bytes >> 20,
			 hs.budget_bytes >> 20, sum_min >> 20);
		ret = -ENOSPC;
		goto fail;
	}
	pthread_mutex_lock(&h->lock);
	if (h->closing) {
		pthread_mutex_unlock(&h->lock);
		snprintf(why, whylen, "the host is stopping");
		ret = -ECANCELED;
		goto fail;
	}
	/* Arriving ones count too: two sources must not bring two VMs of one name. */
	for (unsigned int i = 0; i < h->nr_vms; i++) {
		if (!host_vm_vacant(h, i) && !h->vms[i].released && !h->vms[i].gone &&
		    !strcmp(h->vms[i].cfg.name, c->name)) {
			pthread_mutex_unlock(&h->lock);
			snprintf(why, whylen, "a VM named %s runs here already", c->name);
			ret = -EEXIST;
			goto fail;
		}
	}
	/* An entry never used, else a vacant one (the main thread emptied it). */
	fresh = h->nr_vms < h->cap_vms;
	if (fresh) {
		hv = &h->vms[h->nr_vms];
		memset(hv, 0, sizeof(*hv));
	} else {
		unsigned int leaving = 0;

		for (unsigned int i = 0; i < h->cap_vms && !hv; i++) {
			if (host_vm_vacant(h, i))
				hv = &h->vms[i];
			else
				leaving += h->vms[i].released || h->vms[i].gone || h->vms[i].removing;
		}
		if (!hv) {
			pthread_mutex_unlock(&h->lock);
			snprintf(why, whylen, "this host has room for %u VMs at a time, and has that "
				 "many%s", h->cap_vms, leaving ? " (some are leaving: try again in a "
				 "moment)" : "");
			ret = leaving ? -EAGAIN : -ENOSPC;
			goto fail;
		}
		/* Emptied by the main thread, zero but for this: no walk reads it yet. */
		hv->released = false;
	}
	hv->host = h;
	hv->cfg = *c;
	hv->owns_cfg = true;
	hv->incoming = o->incoming;
	hv->mig = o->job;
	hv->restored_from = o->file ? kv_strdup(o->file) : NULL;
	hv->clone = o->clone;
	ret = host_create_vm(h, hv);
	if (ret) {
		hv->mig = NULL;
		host_release_vm(h, hv);
		memset(hv, 0, sizeof(*hv));
		/* A vacant entry stays vacant: released, as the walks that get past vacancy see it. */
		hv->released = !fresh;
		pthread_mutex_unlock(&h->lock);
		pthread_rwlock_unlock(&h->vms_lock);
		snprintf(why, whylen, "%s", ret == -EADDRINUSE
			 ? "its RAM's place in this host's address space is taken (a thread VM "
			   "resumes only there: does the VM it came from run here?)" : strerror(-ret));
		return ret;
	}
	if (fresh)
		__atomic_store_n(&h->nr_vms, h->nr_vms + 1, __ATOMIC_RELEASE);
	else
		__atomic_store_n(&h->vacant[hv - h->vms], false, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&h->lock);
	pthread_rwlock_unlock(&h->vms_lock);
	*out = hv;
	return 0;
fail:
	pthread_rwlock_unlock(&h->vms_lock);
	host_vm_config_free(c);
	return ret;
}

/*
 * What one process can run, checked before anything is created, so that a
 * config over it fails naming the limit rather than halfway through with
 * whatever ran out first. The tables on the way (the userfaultfd service,
 * the policy, page sharing) grow with the VMs; the arena every VM's guest
 * RAM is reserved in does not (mem/memmap.h).
 */
static int check_limits(const struct host_config *cfg)
{
	uint64_t need = 0;

	for (unsigned int i = 0; i < cfg->nr_vms && need <= MEM_ARENA_BYTES; i++)
		need += mem_reserve_bytes(cfg->vms[i].mem_bytes);
	if (need <= MEM_ARENA_BYTES)
		return 0;
	log_err("vms: %u VMs need more than the %llu GiB of address space one kvmem process has "
		"for the guest RAM of all its VMs (a VM takes its RAM and the MMIO hole, 4 GiB at "
		"least, and 2 GiB of guard gaps: at most %llu VMs of up to 3 GiB): run them in "
		"several hosts",
		cfg->nr_vms, (unsigned long long)(MEM_ARENA_BYTES >> 30),
		(unsigned long long)(MEM_ARENA_BYTES / mem_reserve_bytes(LAYOUT_LOW_RAM_MAX)));
	return -E2BIG;
}

/* A verb runs with the VM list held: no VM it looks at is released under it. */
static void vms_read_lock(void *arg)
{
	struct host *h = arg;

	pthread_rwlock_rdlock(&h->vms_lock);
}

static void vms_read_unlock(void *arg)
{
	struct host *h = arg;

	pthread_rwlock_unlock(&h->vms_lock);
}

int host_create(const struct host_config *cfg, struct host **out)
{
	/* Every failure is named on one line: here, unless the step that failed did. */
	unsigned long errors = log_error_count();
	const char *what = "the host";
	char vm_what[96];
	struct host *h;
	int ret;

	ret = check_limits(cfg);
	if (ret)
		return ret;
	h = kv_zalloc(sizeof(*h));
	if (!h) {
		log_err("the host: %s", strerror(ENOMEM));
		return -ENOMEM;
	}
	h->cfg = *cfg;
	h->stop_efd = -1;
	pthread_mutex_init(&h->lock, NULL);
	pthread_mutex_init(&h->pause_lock, NULL);
	h->cap_vms = cfg->max_vms ? cfg->max_vms : cfg->nr_vms + HOST_INCOMING_MAX;
	h->max_arrivals = h->cap_vms < HOST_INCOMING_MAX ? h->cap_vms : HOST_INCOMING_MAX;
	pthread_rwlock_init(&h->vms_lock, NULL);
	pthread_mutex_init(&h->arrivals_lock, NULL);
	pthread_mutex_init(&h->clones_lock, NULL);
	h->vms = kv_calloc(h->cap_vms ? h->cap_vms : 1, sizeof(*h->vms));
	h->vacant = kv_calloc(h->cap_vms ? h->cap_vms : 1, sizeof(*h->vacant));
	if (!h->vms || !h->vacant) {
		ret = -ENOMEM;
		goto out_destroy;
	}
	if (cfg->hard_limit_bytes) {
		const char *why = NULL;

		/* First: the VMs' memory and the threads serving them are charged to it from birth. */
		what = "the hard limit";
		ret = mem_memcg_enter(cfg->hard_limit_bytes, &why);
		if (ret) {
			log_err("hard_limit: %s: %s", why, strerror(-ret));
			goto out_destroy;
		}
	}
	what = "eventfd";
	h->stop_efd = eventfd(0, EFD_CLOEXEC);
	if (h->stop_efd < 0) {
		ret = -errno;
		goto out_destroy;
	}
	what = "the userfaultfd service";
	ret = uffd_service_create(&h->uffd);
	if (ret)
		goto out_destroy;
	what = "the memory policy";
	ret = ovc_create(cfg->budget_bytes, cfg->policy_interval_s, &h->ovc);
	if (ret)
		goto out_destroy;
	ovc_set_hard_limit(h->ovc, cfg->hard_limit_bytes);
	ret = mem_ledger_create(&h->ledger);
	if (ret)
		goto out_destroy;
	ovc_set_ledger(h->ovc, h->ledger);
	what = "the reclaim mechanisms";
	ret = reclaim_register_zero(h->ovc);
	if (!ret)
		ret = ovc_register_balloon(h->ovc);
	if (ret)
		goto out_destroy;
	if (cfg->swap.path) {
		const char *why = NULL;

		ret = mem_swap_open(cfg->swap.path, cfg->swap.bytes, cfg->swap.allow_tmpfs,
				    &h->swap, &why);
		if (ret) {
			char size[32];

			log_err("swap %s (%s): %s", cfg->swap.path,
				size_format(cfg->swap.bytes, size, sizeof(size)),
				why ? why : strerror(-ret));
			/* The file cannot be made where and as asked: the user's to change. */
			ret = -EBADFD;
			goto out_destroy;
		}
		if (cfg->swap.pool_bytes) {
			ret = mem_swap_set_pool(h->swap, cfg->swap.pool_bytes);
			if (ret) {
				char size[32];

				log_err("swap pool of %s: %s", size_format(cfg->swap.pool_bytes, size,
									    sizeof(size)),
					strerror(-ret));
				ret = -EBADFD;
				goto out_destroy;
			}
		}
		mem_swap_set_victims(h->swap, cfg->swap.victims);
		mem_swap_set_kernel_store(h->swap, cfg->swap.kernel_store);
		/*
		 * MADV_PAGEOUT writes a page out but leaves it in the kernel's
		 * swap cache, unmapped, until reclaim wants memory: the budget no
		 * longer sees it, the machine still holds it. Only a memory
		 * cgroup limit (which charges the swap cache) makes the kernel
		 * give it back at the budget's pace.
		 */
		if (cfg->swap.kernel_store && !cfg->hard_limit_bytes)
			log_warn("swap: store \"kernel\" without a hard_limit: the pages the kernel "
				 "writes out stay in its swap cache, in memory, until the machine runs "
				 "short; set hard_limit to make them count");
		ret = mem_swap_set_io(h->swap, cfg->swap.io);
		if (ret) {
			log_err("swap I/O engine %s: %s",
				cfg->swap.io == MEM_SWAP_IO_URING ? "io_uring" : "threads",
				ret == -EPERM ? "refused by the kernel (kernel.io_uring_disabled?)"
					      : strerror(-ret));
			ret = -EBADFD;
			goto out_destroy;
		}
		ret = mem_swap_serve(h->swap, h->uffd);
		if (ret) {
			log_err("swap: serving faults asynchronously: %s", strerror(-ret));
			goto out_destroy;
		}
		ret = mem_swap_register_reclaim(h->swap, h->ovc);
		if (ret)
			goto out_destroy;
	}
	what = "page sharing";
	if (cfg->dedup == HOST_DEDUP_ON) {
		struct dedup_config dc = {
			.enabled = true,
			.pages_per_sec = DEDUP_DEFAULT_PAGES_PER_SEC,
			.cpu_percent = DEDUP_DEFAULT_CPU_PERCENT,
			.windows = true,
		};

		ret = dedup_create(&dc, &h->dedup);
		if (ret)
			goto out_destroy;
		ret = dedup_register_mechanism(h->dedup, h->ovc);
		if (ret)
			goto out_destroy;
		mem_ledger_set_frames(h->ledger, dedup_frame_keys, h->dedup);
	}
	for (unsigned int i = 0; i < cfg->nr_vms; i++) {
		struct host_vm *hv = &h->vms[i];

		hv->host = h;
		hv->cfg = cfg->vms[i];
		__atomic_store_n(&h->nr_vms, h->nr_vms + 1, __ATOMIC_RELEASE);
		snprintf(vm_what, sizeof(vm_what), "%s: cannot create the VM", hv->cfg.name);
		what = vm_what;
		ret = host_create_vm(h, hv);
		if (ret)
			goto out_destroy;
	}
	what = "the control socket";
	if (cfg->socket) {
		ret = control_create(h, cfg->socket,
				     cfg->socket_group_set ? &cfg->socket_gid : NULL,
				     &h->control);
		if (ret == -EADDRINUSE && cfg->socket_optional) {
			/* The default socket belongs to another host: run without one. */
			log_warn("running without a control socket (use --socket PATH for one)");
			ret = 0;
		} else if (!ret) {
			control_set_guard(h->control, vms_read_lock, vms_read_unlock, h);
			ret = control_register_verb(h->control, "balloon", balloon_verb, h);
			if (!ret)
				ret = host_migration_register(h);
			if (!ret)
				ret = host_snapshot_register(h);
			if (!ret)
				ret = host_fingerprint_register(h);
			if (!ret)
				ret = host_groups_register(h);
			if (!ret)
				ret = host_faults_register(h);
		}
		if (ret)
			goto out_destroy;
	}
	if (h->control) {
		if (h->dedup) {
			ret = dedup_register_verbs(h->dedup, h->control);
			if (ret)
				goto out_destroy;
		}
	}
	*out = h;
	return 0;

out_destroy:
	if (log_error_count() == errors)
		log_err("%s: %s", what, strerror(-ret));
	host_destroy(h);
	return ret;
}

/*
 * Where the policy's access information comes from, said once the VMs run
 * (a host that fails to start says only why): DAMON where it can be had,
 * else write-protect sampling. 0, or -errno when DAMON was demanded.
 */
static int setup_access(struct host *h)
{
	struct mem_damon *damon;
	const char *why = NULL;
	int ret;

	if (h->cfg.access == HOST_ACCESS_SAMPLING)
		return 0;
	ret = mem_damon_open(&damon, &why);
	if (!ret && (ret = ovc_use_damon(h->ovc, damon)))
		mem_damon_close(damon);
	if (!ret) {
		log_info("access information: DAMON (its regions, from the accessed bits)");
	} else if (h->cfg.access == HOST_ACCESS_DAMON) {
		log_err("access information: DAMON: %s", why ? why : strerror(-ret));
		return ret;
	} else {
		log_info("access information: write-protect sampling (DAMON: %s)",
			 why ? why : strerror(-ret));
	}
	return 0;
}

static void stop_all(struct host *h)
{
	/* First: a VM taken in from now on is refused, one started meanwhile stops itself. */
	pthread_mutex_lock(&h->lock);
	h->closing = true;
	pthread_mutex_unlock(&h->lock);
	for (unsigned int i = 0; i < host_nr_vms(h); i++)
		if (!host_vm_vacant(h, i) && !h->vms[i].released)
			vm_request_stop(h->vms[i].vm, VM_STATUS_STOPPED);
}

/* Every VM stopped or gone; one still arriving is neither. */
static bool all_stopped(struct host *h)
{
	bool all = true;

	pthread_mutex_lock(&h->lock);
	for (unsigned int i = 0; i < host_nr_vms(h); i++)
		all &= host_vm_vacant(h, i) || h->vms[i].stopped || h->vms[i].released;
	pthread_mutex_unlock(&h->lock);
	return all;
}

void host_wake(struct host *h)
{
	uint64_t one = 1;

	if (write(h->stop_efd, &one, sizeof(one)) < 0)
		log_debug("eventfd: %m");
}

int host_run(struct host *h)
{
	const char *failed = NULL;
	bool stopping = false;
	sigset_t set;
	int sfd, ret, err = 0, status = 0;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sfd = signalfd(-1, &set, SFD_CLOEXEC);
	if (sfd < 0) {
		/* Without it SIGINT/SIGTERM (blocked) could never stop the VMs: start none. */
		log_err("signalfd: %m: cannot wait for SIGINT and SIGTERM, so no VM is started");
		return EXIT_FAILURE;
	}
	ret = ovc_start(h->ovc);
	if (ret)
		log_err("the memory policy thread: %s", strerror(-ret));
	if (!ret && h->dedup) {
		ret = dedup_start(h->dedup);
		if (ret)
			log_err("the page sharing scanner: %s", strerror(-ret));
	}
	for (unsigned int i = 0; i < host_nr_vms(h) && !ret; i++) {
		unsigned long errors = log_error_count();

		ret = vm_start(h->vms[i].vm);
		/* One line per failure: a bad image, for one, was named already. */
		if (ret && log_error_count() == errors)
			log_err("%s: cannot start: %s", h->vms[i].cfg.name, strerror(-ret));
	}
	if (!ret && h->cfg.restore)
		ret = host_restore(h, h->cfg.restore, NULL);
	if (!ret)
		ret = setup_access(h);
	if (!ret)
		ret = host_migration_listen(h);
	if (ret) {
		stop_all(h);
		close(sfd);
		return ret == -ENOEXEC ? 2 : 1;
	}
	/*
	 * A host that accepts VMs runs until told to stop, with or without VMs;
	 * one whose last VM just migrated away stays a moment, so that whoever
	 * follows the migration (kvmem migrate) reads how it ended.
	 */
	for (bool waiting = false;;) {
		struct pollfd pfd[2] = { { h->stop_efd, POLLIN, 0 }, { sfd, POLLIN, 0 } };
		int linger = 0;
		uint64_t n;

		if (failed)
			break;
		if (all_stopped(h) && (!h->incoming || stopping)) {
			linger = stopping ? 0 : host_migration_linger_ms(h);
			if (!linger)
				break;
		}
		/* A VM that left waits for its job to end before its entry is free: look again soon. */
		if (waiting && (!linger || linger > RELEASE_RETRY_MS))
			linger = RELEASE_RETRY_MS;
		if (poll(pfd, 2, linger ? linger : -1) < 0) {
			if (errno != EINTR) {
				failed = "poll";
				err = errno;
			}
			continue;
		}
		if (pfd[0].revents && read(h->stop_efd, &n, sizeof(n)) < 0 && errno != EINTR) {
			failed = "reading the VM stop eventfd";
			err = errno;
			continue;
		}
		if (pfd[1].revents) {
			struct signalfd_siginfo si;

			if (read(sfd, &si, sizeof(si)) == sizeof(si))
				log_info("signal %u: stopping every VM", si.ssi_signo);
			stopping = true;
			host_migration_stop(h);
			stop_all(h);
		}
		waiting = host_release_gone(h);
	}
	if (failed) {
		/*
		 * This loop is what stops the VMs on a signal: without it nothing
		 * would, and the waits below would never end. Stop them now.
		 */
		log_err("%s: %s: the host cannot wait for its VMs any more: stopping every VM",
			failed, strerror(err));
		stop_all(h);
	}
	close(sfd);
	host_migration_stop(h);
	/*
	 * Every VM had stopped, or was told to: one a verb started since (the
	 * control socket still serves) is told too, and none comes after.
	 */
	stop_all(h);
	for (unsigned int i = 0; i < host_nr_vms(h); i++) {
		int s;

		if (host_vm_vacant(h, i) || h->vms[i].released)
			continue;
		s = vm_wait(h->vms[i].vm);
		if (host_nr_vms(h) == 1 || (s && !status))
			status = s;
	}
	return failed ? EXIT_FAILURE : status;
}

void host_release_vm(struct host *h, struct host_vm *hv)
{
	/*
	 * Set before a VM is handed over to be released, never cleared; read
	 * without h->lock, which a failed take-in holds around this call.
	 */
	bool gone = __atomic_load_n(&hv->gone, __ATOMIC_ACQUIRE);

	if (hv->released)
		return;
	if (hv->vm) {
		vm_request_stop(hv->vm, VM_STATUS_STOPPED);
		vm_wait(hv->vm);
		if (hv->ovc)
			ovc_remove_vm(h->ovc, hv->ovc);
		/* Its worker may be in a guest access that the uffd service serves. */
		if (hv->balloon)
			balloon_destroy(hv->balloon);
		if (h->dedup)
			dedup_remove_vm(h->dedup, vm_gm(hv->vm));
		if (h->ledger)
			mem_ledger_remove(h->ledger, vm_gm(hv->vm));
		if (h->uffd)
			uffd_service_remove(h->uffd, vm_gm(hv->vm));
		/* Nothing faults on its pages any more: its slots can go. */
		if (hv->swap_attached)
			mem_swap_detach(h->swap, vm_gm(hv->vm));
		/* Left alive (moved, saved, or it came and runs on at its source). */
		if (gone && hv->cfg.accel == ACCEL_THREAD)
			mem_keep_place(vm_gm(hv->vm));
		vm_destroy(hv->vm);
	}
	hv->vm = NULL;
	hv->ovc = NULL;
	hv->balloon = NULL;
	hv->swap_attached = false;
	if (hv->owns_cfg) {
		host_vm_config_free(&hv->cfg);
		hv->owns_cfg = false;
	}
	kv_free(hv->restored_from);
	hv->restored_from = NULL;
	hv->released = true;
}

void host_destroy(struct host *h)
{
	if (!h)
		return;
	if (h->control)
		control_destroy(h->control);
	host_migration_stop(h);
	host_clones_stop(h);
	/* What is left are migrations out, cancelled: each has given its VM back. */
	for (unsigned int i = 0; i < host_nr_vms(h); i++) {
		mig_job_free(h->vms[i].mig);
		h->vms[i].mig = NULL;
		host_release_vm(h, &h->vms[i]);
	}
	if (h->swap)
		mem_swap_close(h->swap);
	if (h->ovc)
		ovc_destroy(h->ovc);
	/* It names the store's frames: before the store goes. */
	mem_ledger_destroy(h->ledger);
	dedup_destroy(h->dedup);
	if (h->uffd)
		uffd_service_destroy(h->uffd);
	if (h->stop_efd >= 0)
		close(h->stop_efd);
	mem_memcg_leave();
	pthread_mutex_destroy(&h->lock);
	pthread_mutex_destroy(&h->pause_lock);
	pthread_rwlock_destroy(&h->vms_lock);
	pthread_mutex_destroy(&h->arrivals_lock);
	pthread_mutex_destroy(&h->clones_lock);
	if (h->secret)
		explicit_bzero(h->secret, h->secret_len);
	kv_free(h->secret);
	if (h->fp_key)
		explicit_bzero(h->fp_key, h->fp_key_len);
	kv_free(h->fp_key);
	kv_free(h->vms);
	kv_free(h->vacant);
	kv_free(h);
}

struct host_vm *host_find_vm(struct host *h, const char *name)
{
	for (unsigned int i = 0; i < host_nr_vms(h); i++) {
		struct host_vm *hv = &h->vms[i];
		bool here;

		if (host_vm_vacant(h, i))
			continue;
		pthread_mutex_lock(&h->lock);
		here = !hv->released && !hv->gone && !hv->incoming && !hv->removing;
		pthread_mutex_unlock(&h->lock);
		if (here && !strcmp(hv->cfg.name, name))
			return hv;
	}
	return NULL;
}

int host_vm_pause(struct host *h, const char *name)
{
	struct host_vm *hv = host_find_vm(h, name);
	int ret = 0;

	if (!hv)
		return -ENOENT;
	pthread_mutex_lock(&h->pause_lock);
	/* Paused by the policy or a migration already: it stays paused for the user after. */
	if (!hv->policy_paused && !hv->mig_paused)
		ret = vm_pause(hv->vm);
	if (!ret)
		hv->user_paused = true;
	pthread_mutex_unlock(&h->pause_lock);
	return ret;
}

int host_vm_resume(struct host *h, const char *name)
{
	struct host_vm *hv = host_find_vm(h, name);
	int ret = -EBUSY;

	if (!hv)
		return -ENOENT;
	pthread_mutex_lock(&h->pause_lock);
	/* The policy or a migration holds it paused: it resumes when that is done. */
	if (hv->policy_paused || hv->mig_paused)
		hv->user_paused = false;
	else if (!(ret = vm_resume(hv->vm)))
		hv->user_paused = false;
	pthread_mutex_unlock(&h->pause_lock);
	return ret;
}

/* The VM's corpus in the stats: the file and its size (it is page cache, not guest memory). */
static json_t *corpus_json(const struct gm *gm)
{
	struct mem_corpus c;

	if (!mem_corpus_get(gm, &c))
		return json_null();
	return json_pack("{s:s, s:I}", "path", c.path, "bytes", (json_int_t)c.bytes);
}

int host_corpus_path(struct host *h, const char *name, char **out, char *why, size_t whylen)
{
	size_t n;

	if (!h->cfg.corpus_dir) {
		snprintf(why, whylen, "corpus %s: this host takes corpora only from its corpus_dir, "
			 "and has none (kvmem run --restore: give the file with --corpus)", name);
		return -EPERM;
	}
	if (!*name || strlen(name) > 255 || strchr(name, '/') || !strcmp(name, ".") ||
	    !strcmp(name, "..")) {
		snprintf(why, whylen, "corpus: \"%.64s\" is not a file name in the host's corpus_dir",
			 name);
		return -EINVAL;
	}
	n = strlen(h->cfg.corpus_dir) + strlen(name) + 2;
	*out = kv_zalloc(n);
	if (!*out)
		return -ENOMEM;
	snprintf(*out, n, "%s/%s", h->cfg.corpus_dir, name);
	return 0;
}

int host_start_vm(struct host *h, json_t *obj, char *why, size_t whylen)
{
	static const char *const files[] = { "guest", "console_log", "kernel", "initrd" };
	struct host_vm_config c = { 0 };
	struct host_vm *hv;
	bool closing;
	char err[256];
	int ret;

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		if (json_object_get(obj, files[i])) {
			snprintf(why, whylen, "vm.%s: not over the control socket (put the VM in the "
				 "host's config)", files[i]);
			return -EINVAL;
		}
	}
	ret = host_config_parse_vm(obj, "vm.", &c, h->cfg.default_guest, why, whylen);
	if (!ret && c.corpus) {
		char *name = c.corpus;

		ret = host_corpus_path(h, name, &c.corpus, why, whylen);
		kv_free(name);
		if (ret)
			c.corpus = NULL;
	}
	if (!ret)
		ret = host_config_check_vm(&c, "vm.", why, whylen);
	if (!ret && c.accel == ACCEL_AUTO) {
		c.accel = h->cfg.accel;
	} else if (!ret && accel_resolve(c.accel, &c.accel, err, sizeof(err))) {
		snprintf(why, whylen, "vm.accel: %s", err);
		ret = -ENODEV;
	}
	if (ret) {
		host_vm_config_free(&c);
		return ret;
	}
	ret = host_add_vm(h, &c, &(struct host_vm_origin){ .incoming = false }, &hv, why, whylen);
	if (ret)
		return ret;
	ret = vm_start(hv->vm);
	pthread_mutex_lock(&h->lock);
	closing = h->closing;
	pthread_mutex_unlock(&h->lock);
	/* The host began to stop its VMs after this one was taken in: it stops too. */
	if (!ret && closing)
		vm_request_stop(hv->vm, VM_STATUS_STOPPED);
	if (ret) {
		snprintf(why, whylen, "cannot start it: %s", strerror(-ret));
		pthread_mutex_lock(&h->lock);
		hv->gone = true;
		pthread_mutex_unlock(&h->lock);
		host_wake(h);
		return ret;
	}
	log_info("%s: started (%" PRIu64 " MiB, %s)", hv->cfg.name, hv->cfg.mem_bytes >> 20,
		 vm_accel_name(hv->vm));
	return 0;
}

int host_vm_remove(struct host *h, const char *name)
{
	struct host_vm *hv = host_find_vm(h, name);

	if (!hv)
		return -ENOENT;
	pthread_mutex_lock(&h->lock);
	if (hv->job_starting || (hv->mig && !mig_job_finished(hv->mig))) {
		pthread_mutex_unlock(&h->lock);
		return -EBUSY;
	}
	hv->removing = true;
	pthread_mutex_unlock(&h->lock);
	vm_request_stop(hv->vm, VM_STATUS_STOPPED);
	/* Stopped already: nothing else would wake the main loop to release it. */
	host_wake(h);
	log_info("%s: removed", hv->cfg.name);
	return 0;
}

int host_vm_stop(struct host *h, const char *name)
{
	struct host_vm *hv = host_find_vm(h, name);

	if (!hv)
		return -ENOENT;
	vm_request_stop(hv->vm, VM_STATUS_STOPPED);
	return 0;
}

int host_vm_memcheck(struct host *h, const char *name, json_t **out)
{
	struct host_vm *hv = host_find_vm(h, name);
	struct mem_check mc;
	struct gm *gm;
	char pm[24];
	json_t *o;
	int ret;

	if (!hv)
		return -ENOENT;
	gm = vm_gm(hv->vm);
	/* Pages the guest touched again since a drop are its own again, not a mismatch. */
	mem_resident(gm);
	ret = mem_check_states(gm, &mc);
	if (ret)
		return ret;
	o = json_pack("{s:I, s:I}", "checked", (json_int_t)mc.checked, "mismatches",
		      (json_int_t)mc.mismatches);
	if (!o)
		return -ENOMEM;
	if (mc.mismatches) {
		snprintf(pm, sizeof(pm), "0x%016" PRIx64, mc.first_pm);
		json_object_set_new(o, "first_bad", json_integer((json_int_t)mc.first_bad));
		json_object_set_new(o, "first_state",
				    json_string(pagestate_name((enum ps_state)mc.first_state)));
		json_object_set_new(o, "first_pm", json_string(pm));
		log_warn("%s: memcheck: %" PRIu64 " of %" PRIu64 " pages contradict their state; "
			 "first: page %" PRIu64 " %s, pagemap %s", hv->cfg.name, mc.mismatches,
			 mc.checked, mc.first_bad, pagestate_name((enum ps_state)mc.first_state), pm);
	}
	*out = o;
	return 0;
}

/* Why a swap-out stopped with ret (-errno), having swapped `done` pages before. */
static void swap_error(struct host *h, int ret, uint64_t done, uint64_t resident, char *why,
		       size_t len)
{
	struct mem_swap_stats st;
	char b1[32], b2[32], b3[32], b4[32];

	mem_swap_stats(h->swap, &st);
	size_format(done * MEM_PAGE_SIZE, b1, sizeof(b1));
	size_format(resident, b2, sizeof(b2));
	if (ret == -ENOSPC)
		snprintf(why, len, "the swap file is full (%s of %s in use): %s swapped out before "
			 "it filled, the rest stays resident (%s)", size_format(st.used_bytes, b3,
										sizeof(b3)),
			 size_format(st.file_bytes, b4, sizeof(b4)), b1, b2);
	else if (ret == -EIO)
		snprintf(why, len, "a write to the swap file failed: its pages stay resident (%s "
			 "swapped out before; resident %s)", b1, b2);
	else
		snprintf(why, len, "swap-out failed: %s (%s swapped out before; resident %s)",
			 strerror(-ret), b1, b2);
}

/* The sentence for a swap request to a host without swap. */
static int no_swap(char *why, size_t len)
{
	snprintf(why, len, "this host has no swap (kvmem run --swap PATH[,SIZE], or \"swap\" in the "
		 "host config)");
	return -ENODEV;
}

int host_vm_swap_limit(struct host *h, const char *name, bool limited, uint64_t max_bytes,
		       char *why, size_t len)
{
	struct host_vm *hv = host_find_vm(h, name);

	why[0] = '\0';
	if (!hv)
		return -ENOENT;
	if (!h->swap)
		return no_swap(why, len);
	return mem_swap_set_limit(h->swap, vm_gm(hv->vm),
				  limited ? max_bytes / MEM_PAGE_SIZE : UINT64_MAX);
}

int host_vm_swap(struct host *h, const char *name, uint64_t to, json_t **out, char *why,
		 size_t len)
{
	uint64_t deadline = kv_clock_ns(CLOCK_MONOTONIC) + HOST_SWAP_VERB_MS * 1000000ULL;
	struct host_vm *hv = host_find_vm(h, name);
	struct mem_swap_progress p;
	struct gm *gm;
	int ret;

	why[0] = '\0';
	if (!hv)
		return -ENOENT;
	if (!h->swap)
		return no_swap(why, len);
	gm = vm_gm(hv->vm);
	/* The swap-out worker does it; the verb waits for it, up to its deadline. */
	ret = mem_swap_target(h->swap, gm, to / MEM_PAGE_SIZE);
	if (!ret)
		ret = mem_swap_wait(h->swap, gm, deadline, &p);
	if (ret && ret != -ETIMEDOUT) {
		snprintf(why, len, "swap-out could not be started: %s", strerror(-ret));
		return ret;
	}
	if (p.error) {
		swap_error(h, p.error, p.swapped_pages, p.resident_pages * MEM_PAGE_SIZE, why, len);
		return p.error;
	}
	*out = json_pack("{s:I, s:I, s:b, s:b}", "swapped_bytes",
			 (json_int_t)(p.swapped_pages * MEM_PAGE_SIZE), "resident_bytes",
			 (json_int_t)(p.resident_pages * MEM_PAGE_SIZE), "reached", p.reached,
			 "running", p.active);
	return *out ? 0 : -ENOMEM;
}

int host_vm_dirty_rate(struct host *h, const char *name, unsigned int ms, json_t **out,
		       char *why, size_t len)
{
	struct host_vm *hv = host_find_vm(h, name);
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	uint64_t words, *map, vmm = 0, dirty = 0;
	int ret;

	why[0] = '\0';
	if (!hv)
		return -ENOENT;
	words = mem_bitmap_words(vm_gm(hv->vm));
	map = kv_calloc(words, sizeof(*map));
	if (!map)
		return -ENOMEM;
	ret = vm_dirty_start(hv->vm);
	if (ret == -ENOTSUP)
		snprintf(why, len, "the %s accelerator cannot log guest writes here (under thread: "
			 "a userfaultfd without UFFD_FEATURE_WP_UNPOPULATED, before Linux 6.4)",
			 vm_accel_name(hv->vm));
	else if (ret == -EBUSY)
		snprintf(why, len, "its writes are being tracked already (a migration or "
			 "another measurement)");
	if (ret) {
		kv_free(map);
		return ret;
	}
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
	ret = vm_dirty_collect(hv->vm, map, &vmm);
	vm_dirty_stop(hv->vm);
	for (uint64_t w = 0; w < words; w++)
		dirty += (uint64_t)__builtin_popcountll(map[w]);
	kv_free(map);
	if (ret) {
		snprintf(why, len, "reading the dirty log: %s", strerror(-ret));
		return ret;
	}
	*out = json_pack("{s:I, s:I, s:I, s:f}", "ms", (json_int_t)ms, "dirty_pages",
			 (json_int_t)dirty, "vmm_pages", (json_int_t)vmm, "dirty_mib_s",
			 (double)dirty * MEM_PAGE_SIZE / (1 << 20) / (ms / 1000.0));
	return *out ? 0 : -ENOMEM;
}

/*
 * {"verb":"balloon","vm":NAME,"target":SIZE}: a target by hand (the policy
 * leaves that VM's balloon alone from then on); {"vm":NAME,"auto":true}
 * hands it back to the policy.
 */
static int balloon_verb(void *arg, json_t *req, json_t *reply)
{
	struct host *h = arg;
	struct host_vm *hv;
	const char *name;
	uint64_t target, applied;
	int ret;

	ret = control_req_string(req, "vm", reply, &name);
	if (ret)
		return ret;
	hv = host_find_vm(h, name);
	if (!hv)
		return control_reply_error(reply, ENOENT, "vm: no VM named \"%s\"", name);
	if (json_is_true(json_object_get(req, "auto"))) {
		ovc_vm_balloon_auto(h->ovc, hv->ovc);
		json_object_set_new(reply, "vm", json_string(name));
		json_object_set_new(reply, "mode", json_string("auto"));
		return 0;
	}
	ret = control_req_size(req, "target", reply, &target);
	if (ret)
		return ret;
	ret = ovc_vm_balloon_manual(h->ovc, hv->ovc, target, &applied);
	if (ret)
		return control_reply_error(reply, -ret, "balloon: %s", strerror(-ret));
	json_object_set_new(reply, "vm", json_string(name));
	json_object_set_new(reply, "target_bytes", json_integer((json_int_t)applied));
	return 0;
}

int host_set_budget(struct host *h, uint64_t bytes)
{
	if (h->cfg.hard_limit_bytes && bytes + HOST_HARD_LIMIT_GAP > h->cfg.hard_limit_bytes)
		return -ERANGE;
	ovc_set_budget(h->ovc, bytes);
	ovc_kick(h->ovc);
	return 0;
}

void host_reclaim_now(struct host *h)
{
	ovc_kick(h->ovc);
}

const char *host_vm_state(struct host_vm *hv)
{
	bool incoming, gone, saved;

	pthread_mutex_lock(&hv->host->lock);
	incoming = hv->incoming;
	gone = hv->gone;
	saved = hv->saved;
	pthread_mutex_unlock(&hv->host->lock);
	if (gone)
		return saved ? "saved" : "migrated";
	if (incoming)
		return hv->restored_from ? "restoring" : "incoming";
	return vm_state_name(vm_get_state(hv->vm));
}

json_t *host_list_json(struct host *h)
{
	json_t *arr = json_array();

	for (unsigned int i = 0; i < host_nr_vms(h); i++) {
		struct host_vm *hv = &h->vms[i];

		if (host_vm_vacant(h, i) || hv->released)
			continue;
		json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:I, s:i}", "name", hv->cfg.name,
						     "state", host_vm_state(hv),
						     "accel", vm_accel_name(hv->vm),
						     "mem_bytes", (json_int_t)hv->cfg.mem_bytes,
						     "cpus", (int)hv->cfg.cpus));
	}
	return json_pack("{s:o}", "vms", arr);
}

/*
 * The page states as the stats show them: they add up to the VM's pages in
 * every sample. The counters move one transition at a time (one down, then
 * one up) while mechanisms work, and a page a mechanism holds for a moment
 * (busy) is still the VM's own: anon is what the other states leave.
 */
static json_t *pages_json(const uint64_t pages[PS_NR], uint64_t nr_pages)
{
	json_t *o = json_object();
	uint64_t others = 0;

	for (int s = 0; s < PS_NR; s++)
		if (s != PS_BUSY && s != PS_ANON)
			others += pages[s];
	for (int s = 0; s < PS_NR; s++) {
		uint64_t n = s != PS_ANON ? pages[s] : nr_pages > others ? nr_pages - others : 0;

		if (s != PS_BUSY)
			json_object_set_new(o, pagestate_name((enum ps_state)s),
					    json_integer((json_int_t)n));
	}
	return o;
}

/* The txn object's names for enum mem_commit (what a page taken by a mechanism became). */
static const char *const commit_names[MEM_NR_COMMITS] = {
	[MEM_KEEP] = "keep",	       [MEM_PRIVATE] = "private",     [MEM_ZERO] = "zero",
	[MEM_FRAME] = "frame",	       [MEM_BALLOONED] = "ballooned", [MEM_REPORTED] = "reported",
	[MEM_SWAPPED] = "swapped",
};
_Static_assert(MEM_NR_COMMITS == 7, "name every enum mem_commit in commit_names (txn.commits)");

/* The host's swap file and what went through it, null without swap. */
static json_t *swap_stats_json(struct host *h)
{
	struct mem_swap_stats st;

	if (!h->swap)
		return json_null();
	mem_swap_stats(h->swap, &st);
	return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:s,"
			 " s:{s:I, s:I, s:I, s:I}}",
			 "file_bytes", (json_int_t)st.file_bytes,
			 "used_bytes", (json_int_t)st.used_bytes,
			 "swap_outs", (json_int_t)st.swap_outs,
			 "swap_ins", (json_int_t)st.swap_ins,
			 "discarded", (json_int_t)st.discarded,
			 "write_errors", (json_int_t)st.write_errors,
			 "read_errors", (json_int_t)st.read_errors,
			 "full", (json_int_t)st.full,
			 "engine", mem_swap_engine(h->swap),
			 "victims", mem_swap_victims_name(h->swap),
			 "pool",
			 "size_bytes", (json_int_t)st.pool_bytes,
			 "used_bytes", (json_int_t)st.pool_used_bytes,
			 "pages", (json_int_t)st.pool_pages,
			 "compressed_bytes", (json_int_t)st.pool_compressed_bytes);
}

/* DAMON's kdamond, when it is the access source: its CPU time is the monitoring's cost. */
static json_t *damon_json(const struct ovc_stats *hs)
{
	if (!hs->damon_on)
		return json_null();
	return json_pack("{s:i, s:i, s:I, s:I, s:I}", "kdamond", hs->damon.kdamond,
			 "pid", hs->damon.pid, "cpu_ms", (json_int_t)(hs->damon.cpu_ns / 1000000),
			 "regions", (json_int_t)hs->damon.regions,
			 "updates", (json_int_t)hs->damon.updates);
}

/* The VMM process's own CPU time, next to the kdamond's. */
static uint64_t vmm_cpu_ms(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru))
		return 0;
	return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
	       (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

/* A lazy restore's progress: the pages still in the file, and when the last came in. */
static json_t *lazy_json(struct gm *gm)
{
	struct mem_lazy_stats ls;

	mem_lazy_get_stats(gm, &ls);
	if (!ls.lazy)
		return json_null();
	return json_pack("{s:I, s:I, s:I, s:I, s:o, s:b}", "lazy_pages", (json_int_t)ls.pages,
			 "pages_left", (json_int_t)ls.left, "prefetched",
			 (json_int_t)ls.prefetched, "faulted",
			 (json_int_t)(ls.pages - ls.left - ls.prefetched),
			 "resident_ms", ls.resident_ms ? json_integer((json_int_t)ls.resident_ms)
						       : json_null(),
			 "failed", ls.failed);
}

/*
 * Where memory is (mem/account.h): "saved_by" each source, what the
 * resident part is made of, and the distinct shared frames it maps;
 * saved_by sums to configured less resident.
 */
static void usage_json(json_t *o, const struct mem_usage *u)
{
	json_t *by = json_object();

	for (int s = 0; s < MEM_NR_SAVED; s++)
		json_object_set_new(by, mem_saving_names[s], json_integer((json_int_t)u->saved_bytes[s]));
	json_object_set_new(o, "resident_bytes", json_integer((json_int_t)u->resident_bytes));
	json_object_set_new(o, "resident_by",
			    json_pack("{s:I, s:I, s:I}",
				      "private", (json_int_t)u->private_bytes,
				      "shared", (json_int_t)u->shared_bytes,
				      "compressed", (json_int_t)u->compressed_bytes));
	json_object_set_new(o, "shared_frames", json_integer((json_int_t)u->frames));
	json_object_set_new(o, "saved_by", by);
}

/*
 * The ledger's figures for each of the first *n entries (u[i] for
 * h->vms[i]) and the host's, and which entries held a VM it read (*read,
 * the entry's memory, or NULL): an entry filled since (a vacant one taken)
 * has no figures in this reading. NULL when out of memory.
 */
static struct mem_usage *ledger_read(struct host *h, unsigned int *nr, struct mem_usage *host,
				     struct gm ***read)
{
	unsigned int n = *nr = host_nr_vms(h);
	struct mem_usage *u = kv_calloc(n ? n : 1, sizeof(*u));
	struct gm **gms = kv_calloc(n ? n : 1, sizeof(*gms));

	if (u && gms) {
		for (unsigned int i = 0; i < n; i++)
			gms[i] = host_vm_vacant(h, i) || h->vms[i].released || !h->vms[i].vm
					 ? NULL : vm_gm(h->vms[i].vm);
		mem_ledger_read(h->ledger, MEM_LEDGER_MAX_AGE_NS, gms, n, u, host);
	} else {
		kv_free(u);
		kv_free(gms);
		u = NULL;
		gms = NULL;
	}
	*read = gms;
	return u;
}

json_t *host_stats_json(struct host *h)
{
	struct mem_txn_stats ts;
	struct uffd_stats us;
	json_t *commits = json_object();
	struct ovc_stats hs;
	json_t *vms = json_array(), *migrations = json_array(), *groups = json_object();
	json_t *reclaimed = json_object();
	json_t *dedup, *swap, *out;
	struct mem_usage hu = { 0 }, *vu;
	unsigned int nr_vu;
	struct gm **read;

	ovc_get_stats(h->ovc, &hs);
	vu = ledger_read(h, &nr_vu, &hu, &read);
	host_migration_history_json(h, migrations);
	host_migration_refused_json(h, migrations);
	/* The VMs of the ledger's reading: one taken in since is in the next reply. */
	for (unsigned int i = 0; i < (vu ? nr_vu : host_nr_vms(h)); i++) {
		struct host_vm *hv = &h->vms[i];
		struct balloon_stats bs;
		struct ovc_vm_stats vs;
		json_t *vo;

		if (host_vm_vacant(h, i))
			continue;
		/* A VM that left is shown by how it left, and nothing else. */
		if (hv->released) {
			if (hv->mig)
				json_array_append_new(migrations, host_vm_migration_json(hv));
			continue;
		}
		/* Taken in after the ledger's reading (into a vacant entry): the next reply has it. */
		if (vu && !read[i])
			continue;

		/*
		 * The device first: the policy publishes a target's reason before it
		 * hands the device the target, so a target read here has its reason
		 * in what is read next.
		 */
		if (hv->balloon)
			balloon_get_stats(hv->balloon, &bs);
		if (ovc_get_vm_stats(h->ovc, hv->ovc, &vs))
			continue;
		vo = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:i, s:I, s:f, s:o, s:s}",
			       "name", hv->cfg.name,
			       "state", host_vm_state(hv),
			       "accel", vm_accel_name(hv->vm),
			       "ram_base", (json_int_t)vm_ram_base(hv->vm),
			       "mem_bytes", (json_int_t)vs.mem_bytes,
			       "min_bytes", (json_int_t)vs.min_bytes,
			       "resident_bytes", (json_int_t)vs.resident_bytes,
			       "shares", (int)vs.shares,
			       "entitlement_bytes", (json_int_t)vs.entitlement_bytes,
			       "active_fraction", vs.active_fraction,
			       "pages", pages_json(vs.pages, vs.mem_bytes / MEM_PAGE_SIZE),
			       "last_action", vs.last_action);
		json_object_set_new(vo, "throttled", json_boolean(vs.throttled));
		json_object_set_new(vo, "throttles", json_integer((json_int_t)vs.throttles));
		json_object_set_new(vo, "linux", json_boolean(vm_is_linux(hv->vm)));
		{
			struct console_stats cs;

			vm_console_stats(hv->vm, &cs);
			json_object_set_new(vo, "console",
					    json_pack("{s:I, s:I, s:I, s:I, s:I}",
						      "queued_lines", (json_int_t)cs.queued_lines,
						      "written_lines", (json_int_t)cs.written_lines,
						      "dropped_lines", (json_int_t)cs.dropped_lines,
						      "dropped_bytes", (json_int_t)cs.dropped_bytes,
						      "log_lost_lines", (json_int_t)cs.log_lost_lines));
		}
		if (hv->balloon) {
			json_t *bo = balloon_stats_json(&bs);

			json_object_set_new(bo, "policy_target_bytes",
					    json_integer((json_int_t)vs.balloon_target_bytes));
			json_object_set_new(bo, "reason", json_string(vs.balloon_reason));
			json_object_set_new(vo, "balloon", bo);
		}
		if (h->swap) {
			struct mem_swap_vm_stats ss;
			json_t *so, *hist = json_array();

			mem_swap_vm_stats(vm_gm(hv->vm), &ss);
			for (int b = 0; b < MEM_SWAP_HIST; b++)
				json_array_append_new(hist, json_integer((json_int_t)ss.fault_hist[b]));
			uint64_t max = mem_swap_limit(h->swap, vm_gm(hv->vm));

			so = json_pack("{s:I, s:o, s:I, s:I, s:I, s:I, s:I, s:o}",
				       "swapped_bytes",
				       (json_int_t)(ss.swapped_pages * MEM_PAGE_SIZE),
				       "max_bytes", max == UINT64_MAX ? json_null()
						    : json_integer((json_int_t)(max * MEM_PAGE_SIZE)),
				       "swap_outs", (json_int_t)ss.swap_outs,
				       "faults", (json_int_t)ss.faults,
				       "readahead", (json_int_t)ss.readahead,
				       "fault_p50_us", (json_int_t)ss.fault_p50_us,
				       "fault_p99_us", (json_int_t)ss.fault_p99_us,
				       "fault_hist", hist);

			/* Why the VM stopped, when a page could not be read back. */
			if (__atomic_load_n(&hv->swap_error_set, __ATOMIC_ACQUIRE))
				json_object_set_new(so, "error", json_string(hv->swap_error));
			json_object_set_new(vo, "swap", so);
		}
		if (hv->mig)
			json_object_set_new(vo, "migration", host_vm_migration_json(hv));
		json_object_set_new(vo, "restored_from", hv->restored_from
				    ? json_string(hv->restored_from) : json_null());
		json_object_set_new(vo, "clone_of", hv->clone && hv->restored_from
				    ? json_string(hv->restored_from) : json_null());
		json_object_set_new(vo, "restore", lazy_json(vm_gm(hv->vm)));
		json_object_set_new(vo, "corpus", corpus_json(vm_gm(hv->vm)));
		{
			char group[HOST_GROUP_MAX + 1];

			host_vm_group(h, hv, group, sizeof(group), NULL);
			json_object_set_new(vo, "sharing_group", json_string(group));
			host_groups_add(groups, group, vu ? &vu[i] : NULL);
		}
		if (vu)
			usage_json(vo, &vu[i]);
		json_array_append_new(vms, vo);
	}
	for (unsigned int m = 0; m < hs.nr_mechanisms; m++)
		json_object_set_new(reclaimed, hs.mechanism_names[m],
				    json_integer((json_int_t)hs.reclaimed_bytes[m]));
	if (h->dedup) {
		dedup = dedup_stats_json(h->dedup);
	} else if (h->cfg.dedup == HOST_DEDUP_KSM) {
		dedup = dedup_ksm_stats_json();
	} else {
		dedup = json_pack("{s:s}", "mode", "off");
	}
	swap = swap_stats_json(h);
	uffd_service_stats(h->uffd, &us);
	mem_txn_stats(&ts);
	for (int c = 0; c < MEM_NR_COMMITS; c++)
		json_object_set_new(commits, commit_names[c], json_integer((json_int_t)ts.commits[c]));
	out = json_pack("{s:{s:I, s:I, s:I, s:I, s:s, s:o, s:s, s:o, s:I, s:b, s:I, s:o, s:o, s:o, s:I, s:s,"
			 " s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I},"
			 " s:{s:I, s:I, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I}}, s:o, s:o}",
			 "host",
			 "budget_bytes", (json_int_t)hs.budget_bytes,
			 "used_bytes", (json_int_t)hs.used_bytes,
			 "saved_bytes", (json_int_t)(hu.configured_bytes - hu.resident_bytes),
			 "configured_bytes", (json_int_t)(vu ? hu.configured_bytes : hs.configured_bytes),
			 "used_source", hs.used_source,
			 "hard_limit_bytes", h->cfg.hard_limit_bytes ? json_integer(
				 (json_int_t)h->cfg.hard_limit_bytes) : json_null(),
			 "access_source", hs.access_source,
			 "damon", damon_json(&hs),
			 "vmm_cpu_ms", (json_int_t)vmm_cpu_ms(),
			 "over_budget", hs.over_budget,
			 "policy_passes", (json_int_t)hs.passes,
			 "reclaimed_bytes", reclaimed,
			 "dedup", dedup,
			 "swap", swap,
			 "vmm_heap_bytes", (json_int_t)kv_alloc_bytes(),
			 "allocator", kv_alloc_name(),
			 "uffd", "wp_faults", (json_int_t)us.wp_faults,
			 "sample_hits", (json_int_t)us.sample_hits, "stray", (json_int_t)us.stray,
			 "missing_faults", (json_int_t)us.missing_faults,
			 "zero_fills", (json_int_t)us.zero_fills,
			 "zero_pages", (json_int_t)us.zero_pages, "errors", (json_int_t)us.errors,
			 "txn", "claims", (json_int_t)ts.claims, "pages", (json_int_t)ts.pages,
			 "commits", commits, "failed", (json_int_t)ts.failed,
			 "registrations", (json_int_t)ts.registrations,
			 "remaps", (json_int_t)ts.remaps, "stray_faults", (json_int_t)ts.stray_faults,
			 "uffd_errors", (json_int_t)ts.uffd_errors,
			 "claim_errors", (json_int_t)ts.claim_errors,
			 "fault_retries", (json_int_t)ts.fault_retries,
			 "vms", vms, "migrated", migrations);
	if (out)
		json_object_set_new(out, "clones", host_clones_json(h));
	if (out) {
		usage_json(json_object_get(out, "host"), &hu);
		json_object_set_new(json_object_get(out, "host"), "sharing_groups", groups);
	} else {
		json_decref(groups);
	}
	kv_free(vu);
	kv_free(read);
	return out;
}
