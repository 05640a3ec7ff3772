/* SPDX-License-Identifier: MIT */
/* DAMON through its sysfs interface (see damon.h). */
#define LOG_TAG "damon"
#include "mem/damon.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/fault.h"
#include "core/log.h"
#include "mem/access.h"
#include "mem/mem_internal.h"

#define ADMIN "/sys/kernel/mm/damon/admin/kdamonds"
/*
 * Where kvmem hosts keep their DAMON lock files: a directory of root's
 * alone, so that no other user can hold the lock or make a kdamond look
 * like one a kvmem host left.
 */
#define LOCK_DIR "/run/kvmem"
/* Another kvmem host holds the lock only while it claims a kdamond: wait this long at most. */
#define LOCK_TRIES 100
#define LOCK_WAIT_NS 50000000L
/* Created where there are none, so that a second host on the machine finds one stopped. */
#define CREATE_KDAMONDS 4
#define MAX_VMS 64
/*
 * Every 10 ms one page per region is checked; regions are judged every
 * 200 ms. DAMON's defaults (5 ms, 100 ms) cost twice the CPU for a ranking
 * the policy reads once a second.
 */
#define SAMPLE_US 10000
#define AGGR_US 200000

/* A chunk's heat as one update builds it from the regions over it. */
struct heat {
	uint16_t age;
	uint8_t hits;
};

struct mem_damon {
	int kdamond;
	int slot_lock;		/* flock held on LOCK_DIR/damon-<kdamond>.lock */
	bool on;
	bool stale;		/* the VMs' regions changed and the kdamond has not taken them yet */
	struct gm *gms[MAX_VMS];
	unsigned int nr_gms;
	struct heat *next[MAX_VMS]; /* per VM: the chunks' heat being built by an update */
	pthread_mutex_t lock;	/* st, read by the stats while the policy thread updates */
	struct mem_damon_stats st;
};

/*
 * Write text to a DAMON sysfs file, or (text NULL) read it into buf, len
 * bytes with its NUL. DAMON answers EBUSY to either while another user's
 * command holds its lock (one at a time, machine-wide; a kdamond holds it
 * while it lays out tried regions): back off 10 ms, 20 ms, ... 640 ms, about
 * 4.5 s in all.
 */
static int sysfs_io(const char *path, const char *text, char *buf, size_t len)
{
	int ret = 0;

	for (int tries = 0; tries < 12; tries++) {
		int fd = open(path, (text ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
		ssize_t n;

		if (fd < 0)
			return -errno;
		n = text ? write(fd, text, strlen(text)) : read(fd, buf, len - 1);
		ret = n < 0 ? -errno : 0;
		close(fd);
		if (!text && n >= 0)
			buf[n] = 0;
		if (ret != -EBUSY)
			return ret;
		nanosleep(&(struct timespec){ .tv_nsec = 10000000L << (tries < 6 ? tries : 6) }, NULL);
	}
	return ret;
}

/* Write text to kdamond's file `rel` (relative to its directory). */
static int kd_write(int kdamond, const char *rel, const char *text)
{
	char path[256];
	int ret;

	if ((ret = FAULT_POINT(DAMON_WRITE)))
		return ret;
	snprintf(path, sizeof(path), ADMIN "/%d/%s", kdamond, rel);
	return sysfs_io(path, text, NULL, 0);
}

static int kd_writef(int kdamond, const char *rel, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int kd_writef(int kdamond, const char *rel, const char *fmt, ...)
{
	char text[64];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	return kd_write(kdamond, rel, text);
}

/* Read a sysfs file (a path, or relative to kdamond's directory when kdamond >= 0). */
static int read_text(int kdamond, const char *rel, char *buf, size_t len)
{
	char path[256];

	if (kdamond >= 0)
		snprintf(path, sizeof(path), ADMIN "/%d/%s", kdamond, rel);
	else
		snprintf(path, sizeof(path), "%s", rel);
	return sysfs_io(path, NULL, buf, len);
}

static int read_u64(int kdamond, const char *rel, uint64_t *out)
{
	char buf[32];
	int ret = read_text(kdamond, rel, buf, sizeof(buf));

	if (!ret)
		*out = strtoull(buf, NULL, 10);
	return ret;
}

/* Whether this kernel's DAMON offers fvaddr (its file lists one operations set per line). */
static bool has_fvaddr(int kdamond)
{
	char buf[128];

	if (read_text(kdamond, "contexts/0/avail_operations", buf, sizeof(buf)))
		return false;
	for (char *save, *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
		if (!strcmp(l, "fvaddr"))
			return true;
	return false;
}

/*
 * Claim a stopped kdamond for this host: one no one configured (no
 * context), or one a kvmem host left (its lock file exists) that no live
 * host holds. The slot's lock stays held while we use it. -1 when none,
 * with why each one was passed over.
 */
static int claim(bool created, int *lock_fd, char *why, size_t why_len)
{
	uint64_t nr = 0;
	size_t at;

	if (read_u64(-1, ADMIN "/nr_kdamonds", &nr))
		return -1;
	at = (size_t)snprintf(why, why_len, "no kdamond of the %" PRIu64 " is free:", nr);
	for (uint64_t i = 0; i < nr; i++) {
		char path[96], state[16], unreadable[64];
		const char *taken;
		uint64_t contexts = 1;
		int fd, err = read_text((int)i, "state", state, sizeof(state));
		bool ours;

		snprintf(path, sizeof(path), LOCK_DIR "/damon-%" PRIu64 ".lock", i);
		ours = access(path, F_OK) == 0;
		if (err) {
			snprintf(unreadable, sizeof(unreadable), "its state unreadable (%s)",
				 strerror(-err));
			taken = unreadable;
		} else if (strncmp(state, "off", 3)) {
			taken = "running";
		} else if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0) {
			taken = "its lock file cannot be opened";
		} else if (flock(fd, LOCK_EX | LOCK_NB)) {
			close(fd);
			taken = "another kvmem host's";
		} else {
			read_u64((int)i, "contexts/nr_contexts", &contexts);
			if (created || ours || !contexts) {
				*lock_fd = fd;
				return (int)i;
			}
			/* A stopped kdamond someone else set up: theirs. */
			flock(fd, LOCK_UN);
			close(fd);
			unlink(path);
			taken = "another DAMON user's";
		}
		if (at < why_len)
			at += (size_t)snprintf(why + at, why_len - at, "%s %" PRIu64 " %s%s",
					       i ? ";" : "", i, taken,
					       ours ? " (a kvmem host's lock file)" : "");
	}
	return -1;
}

/* Set up claimed kdamond k: fvaddr on this process, one stat scheme that matches everything. */
static int configure(int k, const char **why)
{
	int ret;

	ret = kd_write(k, "contexts/nr_contexts", "1");
	if (ret) {
		*why = "cannot set up a DAMON context";
		return ret;
	}
	if (!has_fvaddr(k)) {
		*why = "this kernel's DAMON has no virtual-address operations (CONFIG_DAMON_VADDR)";
		kd_write(k, "contexts/nr_contexts", "0");
		return -EOPNOTSUPP;
	}
	static const char *const files[][2] = {
		{ "contexts/0/operations", "fvaddr" },
		{ "contexts/0/monitoring_attrs/nr_regions/min", "10" },
		{ "contexts/0/monitoring_attrs/nr_regions/max", "1000" },
		{ "contexts/0/targets/nr_targets", "1" },
		{ "contexts/0/schemes/nr_schemes", "1" },
		{ "contexts/0/schemes/0/action", "stat" },
		/* The defaults (min = max = 0) match no region at all. */
		{ "contexts/0/schemes/0/access_pattern/sz/min", "0" },
		{ "contexts/0/schemes/0/access_pattern/sz/max", "18446744073709551615" },
		{ "contexts/0/schemes/0/access_pattern/nr_accesses/min", "0" },
		{ "contexts/0/schemes/0/access_pattern/nr_accesses/max", "4294967295" },
		{ "contexts/0/schemes/0/access_pattern/age/min", "0" },
		{ "contexts/0/schemes/0/access_pattern/age/max", "4294967295" },
	};
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]) && !ret; i++)
		ret = kd_write(k, files[i][0], files[i][1]);
	if (!ret)
		ret = kd_writef(k, "contexts/0/monitoring_attrs/intervals/sample_us", "%d", SAMPLE_US);
	if (!ret)
		ret = kd_writef(k, "contexts/0/monitoring_attrs/intervals/aggr_us", "%d", AGGR_US);
	if (!ret)
		ret = kd_writef(k, "contexts/0/targets/0/pid_target", "%d", (int)getpid());
	if (ret)
		*why = "cannot configure the DAMON context";
	return ret;
}

/*
 * The lock kvmem hosts take to claim or create kdamonds, one at a time, in
 * a directory only this user can write: fd, or -errno with *why.
 */
static int global_lock(const char **why)
{
	struct stat st;
	int fd, tries = 0;

	if (mkdir(LOCK_DIR, 0700) && errno != EEXIST) {
		*why = "cannot make " LOCK_DIR " for its lock files";
		return -errno;
	}
	if (lstat(LOCK_DIR, &st) || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
	    (st.st_mode & 022)) {
		*why = LOCK_DIR " is not a directory of this user's alone";
		return -EPERM;
	}
	fd = open(LOCK_DIR "/damon.lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		*why = "cannot open " LOCK_DIR "/damon.lock";
		return -errno;
	}
	while (flock(fd, LOCK_EX | LOCK_NB)) {
		if (errno != EWOULDBLOCK || ++tries == LOCK_TRIES) {
			close(fd);
			*why = "another kvmem host holds " LOCK_DIR "/damon.lock";
			return -EBUSY;
		}
		nanosleep(&(struct timespec){ .tv_nsec = LOCK_WAIT_NS }, NULL);
	}
	return fd;
}

int mem_damon_open(struct mem_damon **out, const char **why)
{
	/* Each kdamond's reason when none can be had (nr_kdamonds is rebuilt only while none runs). */
	static _Thread_local char claim_why[320];

	struct mem_damon *d;
	bool created = false;
	uint64_t nr = 0;
	int lock, k, slot_lock = -1, ret;

	if (read_u64(-1, ADMIN "/nr_kdamonds", &nr)) {
		*why = errno == EACCES ? "DAMON's sysfs needs root" : "this kernel has no DAMON sysfs";
		return -ENOENT;
	}
	lock = global_lock(why);
	if (lock < 0)
		return lock;
	/* Read again under the lock: another host may have made them meanwhile. */
	if (read_u64(-1, ADMIN "/nr_kdamonds", &nr))
		nr = 1; /* unreadable now: never rebuild */
	if (nr == 0) {
		char text[8];
		int fd = open(ADMIN "/nr_kdamonds", O_WRONLY | O_CLOEXEC);

		snprintf(text, sizeof(text), "%d", CREATE_KDAMONDS);
		created = fd >= 0 && write(fd, text, strlen(text)) > 0;
		if (fd >= 0)
			close(fd);
	}
	k = claim(created, &slot_lock, claim_why, sizeof(claim_why));
	if (k < 0) {
		close(lock);
		*why = claim_why;
		return -EBUSY;
	}
	ret = configure(k, why);
	close(lock);
	if (ret) {
		close(slot_lock);
		return ret;
	}
	d = kv_zalloc(sizeof(*d));
	if (!d) {
		close(slot_lock);
		return -ENOMEM;
	}
	pthread_mutex_init(&d->lock, NULL);
	d->kdamond = k;
	d->slot_lock = slot_lock;
	d->st.kdamond = k;
	d->st.pid = -1;
	*out = d;
	return 0;
}

void mem_damon_close(struct mem_damon *d)
{
	char path[96];

	if (!d)
		return;
	if (d->on)
		kd_write(d->kdamond, "state", "off");
	/*
	 * Unconfigured, it is free for anyone: its lock file goes, so that a
	 * later kvmem host never takes it for one of ours once another user set
	 * it up. (A host that crashed leaves its file: its kdamond stopped with
	 * it, still configured, and the next kvmem host takes it back.)
	 */
	if (!kd_write(d->kdamond, "contexts/nr_contexts", "0")) {
		const char *why;
		/* Under the claim lock: no host may be opening the file as it goes. */
		int lock = global_lock(&why);

		if (lock >= 0) {
			snprintf(path, sizeof(path), LOCK_DIR "/damon-%d.lock", d->kdamond);
			unlink(path);
			close(d->slot_lock);
			d->slot_lock = lock;
		}
	}
	for (unsigned int i = 0; i < d->nr_gms; i++)
		kv_free(d->next[i]);
	close(d->slot_lock);
	pthread_mutex_destroy(&d->lock);
	kv_free(d);
}

struct range {
	uint64_t start, end;
};

static int by_start(const void *a, const void *b)
{
	const struct range *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/*
 * Give the kdamond the RAM of every VM as its target regions, and start or
 * update it. -EBUSY when DAMON stayed busy with another user's command (it
 * takes one command at a time, machine-wide): the regions are stale, and
 * the next update gives them again.
 */
static int apply_regions(struct mem_damon *d)
{
	struct range r[MAX_VMS * MEM_MAX_REGIONS];
	unsigned int n = 0;
	uint64_t total = 0, min;
	char rel[96];
	int ret;

	if (!d->nr_gms) {
		ret = d->on ? kd_write(d->kdamond, "state", "off") : 0;
		d->on &= ret != 0;
		d->stale = ret != 0;
		return ret;
	}
	for (unsigned int i = 0; i < d->nr_gms; i++)
		for (unsigned int j = 0; j < d->gms[i]->nr_regions; j++) {
			const struct mem_ram_region *reg = &d->gms[i]->regions[j];

			r[n++] = (struct range){ (uint64_t)(uintptr_t)reg->hva,
						 (uint64_t)(uintptr_t)reg->hva + reg->len };
			total += reg->len;
		}
	qsort(r, n, sizeof(r[0]), by_start);
	ret = kd_writef(d->kdamond, "contexts/0/targets/0/regions/nr_regions", "%u", n);
	for (unsigned int i = 0; i < n && !ret; i++) {
		snprintf(rel, sizeof(rel), "contexts/0/targets/0/regions/%u/start", i);
		ret = kd_writef(d->kdamond, rel, "%" PRIu64, r[i].start);
		snprintf(rel, sizeof(rel), "contexts/0/targets/0/regions/%u/end", i);
		if (!ret)
			ret = kd_writef(d->kdamond, rel, "%" PRIu64, r[i].end);
	}
	/* At least a region per 32 MiB: min_nr_regions caps how large a region may grow. */
	min = total / (32ULL << 20);
	min = min < 10 ? 10 : min > 500 ? 500 : min;
	if (!ret)
		ret = kd_writef(d->kdamond, "contexts/0/monitoring_attrs/nr_regions/min", "%" PRIu64,
				min);
	if (!ret)
		ret = kd_writef(d->kdamond, "contexts/0/monitoring_attrs/nr_regions/max", "%" PRIu64,
				min * 4 > 1000 ? min * 4 : 1000);
	if (!ret)
		ret = kd_write(d->kdamond, "state", d->on ? "commit" : "on");
	d->stale = ret != 0;
	if (!ret && !d->on) {
		uint64_t pid = 0;

		d->on = true;
		if (!read_u64(d->kdamond, "pid", &pid)) {
			pthread_mutex_lock(&d->lock);
			d->st.pid = (int)pid;
			pthread_mutex_unlock(&d->lock);
		}
	}
	return ret;
}

int mem_damon_add(struct mem_damon *d, struct gm *gm)
{
	int ret;

	if (d->nr_gms == MAX_VMS)
		return -ENOSPC;
	d->next[d->nr_gms] = kv_calloc(mem_access_chunks(gm), sizeof(struct heat));
	if (!d->next[d->nr_gms])
		return -ENOMEM;
	d->gms[d->nr_gms++] = gm;
	ret = apply_regions(d);
	if (ret && ret != -EBUSY)
		mem_damon_remove(d, gm);
	return ret == -EBUSY ? 0 : ret;
}

void mem_damon_remove(struct mem_damon *d, struct gm *gm)
{
	for (unsigned int i = 0; i < d->nr_gms; i++) {
		if (d->gms[i] != gm)
			continue;
		kv_free(d->next[i]);
		d->gms[i] = d->gms[d->nr_gms - 1];
		d->next[i] = d->next[d->nr_gms - 1];
		d->nr_gms--;
		apply_regions(d);
		return;
	}
}

/*
 * Fold one tried region into the heat being built: the youngest and the
 * busiest region over a chunk win.
 */
static void fold(struct mem_damon *d, uint64_t start, uint64_t end, uint16_t age, uint8_t hits)
{
	for (unsigned int i = 0; i < d->nr_gms; i++) {
		const struct gm *gm = d->gms[i];

		for (unsigned int j = 0; j < gm->nr_regions; j++) {
			const struct mem_ram_region *reg = &gm->regions[j];
			uint64_t lo = (uint64_t)(uintptr_t)reg->hva, hi = lo + reg->len;

			if (end <= lo || start >= hi)
				continue;
			lo = start > lo ? start : lo;
			hi = end < hi ? end : hi;
			for (uint64_t c = (reg->first_pfn_index + (lo - (uint64_t)(uintptr_t)reg->hva) /
							       MEM_PAGE_SIZE) / MEM_CHUNK_PAGES,
				      last = (reg->first_pfn_index +
					      (hi - 1 - (uint64_t)(uintptr_t)reg->hva) / MEM_PAGE_SIZE) /
					     MEM_CHUNK_PAGES;
			     c <= last; c++) {
				if (age < d->next[i][c].age)
					d->next[i][c].age = age;
				if (hits > d->next[i][c].hits)
					d->next[i][c].hits = hits;
			}
		}
	}
}

int64_t mem_damon_update(struct mem_damon *d)
{
	int64_t accessed = 0;
	uint64_t regions = 0;
	char rel[96];
	int ret;

	if (d->stale && (ret = apply_regions(d)))
		return ret;
	if (!d->on)
		return 0;
	ret = kd_write(d->kdamond, "state", "update_schemes_tried_regions");
	if (ret)
		return ret;
	for (unsigned int i = 0; i < d->nr_gms; i++)
		for (uint64_t c = 0; c < mem_access_chunks(d->gms[i]); c++)
			d->next[i][c] = (struct heat){ .age = MEM_ACCESS_AGE_MAX };
	for (;; regions++) {
		uint64_t start, end, nr_acc, age;
		const char *base = "contexts/0/schemes/0/tried_regions";

		snprintf(rel, sizeof(rel), "%s/%" PRIu64 "/start", base, regions);
		ret = read_u64(d->kdamond, rel, &start);
		snprintf(rel, sizeof(rel), "%s/%" PRIu64 "/end", base, regions);
		ret = ret ? ret : read_u64(d->kdamond, rel, &end);
		snprintf(rel, sizeof(rel), "%s/%" PRIu64 "/nr_accesses", base, regions);
		ret = ret ? ret : read_u64(d->kdamond, rel, &nr_acc);
		snprintf(rel, sizeof(rel), "%s/%" PRIu64 "/age", base, regions);
		ret = ret ? ret : read_u64(d->kdamond, rel, &age);
		if (ret == -EBUSY)
			return ret; /* nothing of this update is used */
		if (ret)
			break; /* past the last region */
		if (nr_acc)
			accessed += (int64_t)(end - start);
		/*
		 * Idle: as old as it has been idle, in seconds (the policy's
		 * intervals); used: young, as often as the samples found it used.
		 */
		age = nr_acc ? 0 : age * AGGR_US / 1000000;
		fold(d, start, end, (uint16_t)(age < MEM_ACCESS_AGE_MAX ? age : MEM_ACCESS_AGE_MAX),
		     (uint8_t)(nr_acc < UINT8_MAX ? nr_acc : UINT8_MAX));
	}
	for (unsigned int i = 0; i < d->nr_gms; i++)
		for (uint64_t c = 0; c < mem_access_chunks(d->gms[i]); c++)
			mem_access_seen(d->gms[i], c, d->next[i][c].hits, d->next[i][c].age);
	pthread_mutex_lock(&d->lock);
	d->st.regions = regions;
	d->st.updates++;
	pthread_mutex_unlock(&d->lock);
	return accessed;
}

void mem_damon_stats(struct mem_damon *d, struct mem_damon_stats *out)
{
	char path[64], buf[96];

	pthread_mutex_lock(&d->lock);
	*out = d->st;
	pthread_mutex_unlock(&d->lock);
	if (out->pid <= 0)
		return;
	/* schedstat's first field: nanoseconds on a CPU. */
	snprintf(path, sizeof(path), "/proc/%d/schedstat", out->pid);
	if (!read_text(-1, path, buf, sizeof(buf)))
		out->cpu_ns = strtoull(buf, NULL, 10);
}
