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
	struct gm *gms[MAX_VMS];
	unsigned int nr_gms;
	struct heat *next[MAX_VMS]; /* per VM: the chunks' heat being built by an update */
	pthread_mutex_t lock;	/* st, read by the stats while the policy thread updates */
	struct mem_damon_stats st;
};

/* Write text to kdamond d's file `rel` (relative to its directory); DAMON answers EBUSY while busy. */
static int kd_write(int kdamond, const char *rel, const char *text)
{
	char path[256];
	int fd, ret = 0;

	snprintf(path, sizeof(path), ADMIN "/%d/%s", kdamond, rel);
	for (int tries = 0; tries < 12; tries++) {
		fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		ret = write(fd, text, strlen(text)) < 0 ? -errno : 0;
		close(fd);
		if (ret != -EBUSY)
			return ret;
		/* Another user's command holds DAMON's lock: back off 10 ms, 20 ms, ... */
		nanosleep(&(struct timespec){ .tv_nsec = 10000000L << (tries < 6 ? tries : 6) }, NULL);
	}
	return ret;
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
	ssize_t n;
	int fd;

	if (kdamond >= 0)
		snprintf(path, sizeof(path), ADMIN "/%d/%s", kdamond, rel);
	else
		snprintf(path, sizeof(path), "%s", rel);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	return 0;
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
 * host holds. The slot's lock stays held while we use it. -1 when none.
 */
static int claim(bool created, int *lock_fd)
{
	uint64_t nr = 0;

	if (read_u64(-1, ADMIN "/nr_kdamonds", &nr))
		return -1;
	for (uint64_t i = 0; i < nr; i++) {
		char path[96], state[16];
		uint64_t contexts = 1;
		bool ours;
		int fd;

		if (read_text((int)i, "state", state, sizeof(state)) || strncmp(state, "off", 3))
			continue;
		snprintf(path, sizeof(path), LOCK_DIR "/damon-%" PRIu64 ".lock", i);
		ours = access(path, F_OK) == 0;
		fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd < 0)
			continue;
		if (flock(fd, LOCK_EX | LOCK_NB)) {
			close(fd);
			continue;
		}
		read_u64((int)i, "contexts/nr_contexts", &contexts);
		if (!created && !ours && contexts) {
			/* A stopped kdamond someone else set up: theirs. */
			flock(fd, LOCK_UN);
			close(fd);
			unlink(path);
			continue;
		}
		*lock_fd = fd;
		return (int)i;
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
	k = claim(created, &slot_lock);
	if (k < 0) {
		close(lock);
		*why = "every kdamond belongs to another DAMON user (and nr_kdamonds can only be "
		       "rebuilt while none runs)";
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

/* Give the kdamond the RAM of every VM as its target regions, and start or update it. */
static int apply_regions(struct mem_damon *d)
{
	struct range r[MAX_VMS * MEM_MAX_REGIONS];
	unsigned int n = 0;
	uint64_t total = 0, min;
	char rel[96];
	int ret;

	if (!d->nr_gms) {
		if (d->on) {
			kd_write(d->kdamond, "state", "off");
			d->on = false;
		}
		return 0;
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
	if (ret)
		mem_damon_remove(d, gm);
	return ret;
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
		if (read_u64(d->kdamond, rel, &start))
			break;
		snprintf(rel, sizeof(rel), "%s/%" PRIu64 "/end", base, regions);
		ret = read_u64(d->kdamond, rel, &end);
		snprintf(rel, sizeof(rel), "%s/%" PRIu64 "/nr_accesses", base, regions);
		ret = ret ? ret : read_u64(d->kdamond, rel, &nr_acc);
		snprintf(rel, sizeof(rel), "%s/%" PRIu64 "/age", base, regions);
		ret = ret ? ret : read_u64(d->kdamond, rel, &age);
		if (ret)
			break;
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
