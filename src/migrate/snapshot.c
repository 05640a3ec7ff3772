/* SPDX-License-Identifier: MIT */
/*
 * Save, snapshot and restore (migrate/migrate.h): a migration whose other
 * end is a file (migrate/snapfile.h). Saving runs the source's side of a
 * migration with the file in place of the peer; restoring reads the file's
 * description, pages and state the way a destination reads a stream.
 */
#define LOG_TAG "snapshot"
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/sandbox.h"
#include "core/thread.h"
#include "core/vm.h"
#include "mem/export.h"
#include "mem/gm.h"
#include "mem/lazy.h"
#include "mem/memmap.h"
#include "mem/reclaim.h"
#include "mem/txn.h"
#include "migrate/migrate.h"
#include "migrate/migrate_internal.h"
#include "migrate/snapfile.h"

/* Pages read from the file at a time: one call, one transaction at most. */
#define LOAD_PAGES 256

int mig_save_start(struct vm *vm, const char *path, const json_t *desc, bool stop,
		   const struct mig_params *p, const struct mig_source_ops *ops, void *arg,
		   struct mig_job **out, char *why, size_t whylen)
{
	json_int_t resident = json_integer_value(json_object_get(desc, "resident_bytes"));
	struct mig_job *j = mig_job_new(true, -1, p, arg, path);
	int ret;

	if (!j) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	j->kind = j->prog.kind = stop ? MIG_KIND_SAVE : MIG_KIND_SNAPSHOT;
	ret = snapw_create(path, mem_nr_pages(vm_gm(vm)), resident > 0 ? (uint64_t)resident : 0,
			   &j->file, why, whylen);
	if (ret) {
		mig_job_drop(j);
		return ret;
	}
	ret = mig_source_spawn(j, vm, desc, ops, "snapshot-out");
	if (ret) {
		snprintf(why, whylen, "%s", strerror(-ret));
		return ret;
	}
	*out = j;
	return 0;
}

/* Pages [i, e) of the window at idx are one run in guest-physical memory. */
static bool one_run(struct gm *gm, uint64_t idx, uint32_t i, uint32_t e)
{
	return mem_index_gpa(gm, idx + e - 1) - mem_index_gpa(gm, idx + i) ==
	       (uint64_t)(e - 1 - i) * MEM_PAGE_SIZE;
}

/* Every page of the image into the fresh VM: content installed whole, ballooned ones dropped. */
static int load_pages(struct mig_job *j, struct gm *gm)
{
	struct snap_reader *r = j->image;
	uint64_t nr = snapr_nr_pages(r);
	uint8_t *buf = kv_zalloc(LOAD_PAGES * MEM_PAGE_SIZE);
	int ret = 0;

	if (!buf)
		return mig_failf(j, "out of memory");
	for (uint64_t idx = 0; idx < nr && !ret; idx += LOAD_PAGES) {
		uint32_t n = nr - idx < LOAD_PAGES ? (uint32_t)(nr - idx) : LOAD_PAGES;
		uint32_t lo = n, hi = 0;
		uint64_t bad = 0;

		if (mig_cancelled(j)) {
			ret = mig_failf(j, "cancelled");
			break;
		}
		for (uint32_t i = 0; i < n; i++) {
			if (snapr_kind(r, idx + i) != SNAP_PAGE_DATA)
				continue;
			lo = lo < n ? lo : i;
			hi = i;
		}
		/* From the first data page to the last: the holes around them need no read. */
		if (lo < n) {
			uint8_t *at = buf + (uint64_t)lo * MEM_PAGE_SIZE;

			ret = snapr_read(r, idx + lo, hi - lo + 1, at, &bad);
			if (ret) {
				ret = mig_failf(j, "%s: %s", snapr_path(r), ret == -EBADMSG
						? "a page does not match its hash: the file is corrupt"
						: strerror(-ret));
				break;
			}
			__atomic_add_fetch(&j->bytes_read, (uint64_t)(hi - lo + 1) * MEM_PAGE_SIZE,
					   __ATOMIC_RELAXED);
		}
		for (uint32_t i = 0, e; i < n && !ret; i = e) {
			uint8_t k = snapr_kind(r, idx + i);

			for (e = i + 1; e < n && snapr_kind(r, idx + e) == k && one_run(gm, idx, i, e + 1);)
				e++;
			if (k == SNAP_PAGE_DATA) {
				ret = mem_fill_pages(gm, idx + i, e - i, buf + (uint64_t)i * MEM_PAGE_SIZE);
			} else if (k == SNAP_PAGE_BALLOONED) {
				int64_t got = mem_discard(gm, mem_index_gpa(gm, idx + i),
							  (uint64_t)(e - i) * MEM_PAGE_SIZE, PS_BALLOONED);

				ret = got < 0 ? (int)got : 0;
			}
			if (ret)
				ret = mig_failf(j, "loading guest pages at index %" PRIu64 ": %s", idx + i,
						strerror(-ret));
			else
				mig_count_pages(j, k == SNAP_PAGE_DATA ? MIG_PAGE_DATA
					       : k == SNAP_PAGE_BALLOONED ? MIG_PAGE_BALLOONED
									 : MIG_PAGE_ZERO, e - i);
		}
	}
	kv_free(buf);
	return ret;
}

/* A lazily restored VM's image: the file, read where a page is needed, until the VM's end. */
struct lazy_image {
	struct snap_reader *r;
	struct vm *vm;
};

static int image_read(void *arg, uint64_t idx, uint64_t n, void *buf)
{
	struct lazy_image *li = arg;

	return snapr_read(li->r, idx, (uint32_t)n, buf, NULL);
}

static void image_fatal(void *arg, const char *why)
{
	struct lazy_image *li = arg;

	log_err("%s: %s (%s): the VM stops", vm_name(li->vm), why, snapr_path(li->r));
	vm_request_stop(li->vm, VM_STATUS_VMM_ERROR);
}

static void image_close(void *arg)
{
	struct lazy_image *li = arg;

	snapr_close(li->r);
	kv_free(li);
}

static const struct mem_image_ops image_ops = {
	.read = image_read,
	.fatal = image_fatal,
	.close = image_close,
};

/*
 * The pages of the file without content in the VM as they were: the
 * ballooned ones given back to the balloon (zero pages are fresh holes
 * already); have (may be NULL): a bit set for each page with content. The
 * pages of each kind are counted. 0, or the failure (said).
 */
static int place_markers(struct mig_job *j, struct snap_reader *r, struct gm *gm, uint64_t *have)
{
	uint64_t nr = snapr_nr_pages(r), data = 0, ballooned = 0;
	int ret = 0;

	for (uint64_t i = 0, e; i < nr && !ret; i = e) {
		uint8_t k = snapr_kind(r, i);

		for (e = i + 1; e < nr && snapr_kind(r, e) == k && e - i < LOAD_PAGES &&
				one_run(gm, i, 0, (uint32_t)(e - i + 1));)
			e++;
		if (k == SNAP_PAGE_DATA) {
			for (uint64_t p = i; p < e && have; p++)
				have[p / 64] |= 1ULL << (p % 64);
			data += e - i;
		} else if (k == SNAP_PAGE_BALLOONED) {
			int64_t got = mem_discard(gm, mem_index_gpa(gm, i), (e - i) * MEM_PAGE_SIZE,
						  PS_BALLOONED);

			ret = got < 0 ? (int)got : 0;
			ballooned += e - i;
		}
	}
	if (ret)
		return mig_failf(j, "ballooned pages: %s", strerror(-ret));
	mig_count_pages(j, MIG_PAGE_DATA, data);
	mig_count_pages(j, MIG_PAGE_BALLOONED, ballooned);
	mig_count_pages(j, MIG_PAGE_ZERO, nr - data - ballooned);
	return 0;
}

/*
 * A lazy restore's pages: the ones with content left in the image
 * (mem/lazy.h), which the VM owns from now on (j->image is NULL after).
 */
static int attach_image(struct mig_job *j, struct gm *gm)
{
	struct snap_reader *r = j->image;
	uint64_t *have = kv_calloc(mem_bitmap_words(gm), sizeof(uint64_t));
	struct lazy_image *li = kv_zalloc(sizeof(*li));
	int ret = have && li ? place_markers(j, r, gm, have) : mig_failf(j, "out of memory");

	if (ret) {
		kv_free(have);
		kv_free(li);
		return ret;
	}
	li->r = r;
	li->vm = j->vm;
	ret = mem_lazy_attach(gm, have, &image_ops, li);
	kv_free(have);
	if (ret) {
		kv_free(li);
		return mig_failf(j, "serving the VM's memory from its file: %s", strerror(-ret));
	}
	/* The VM's now: closed when it goes (the state records stay readable until then). */
	j->image = NULL;
	return 0;
}

/* A clone's pages: the snapshot's shared frames, mapped by the host; the rest as in the file. */
static int map_clone(struct mig_job *j, struct gm *gm)
{
	char why[160] = "";
	int ret = j->dops->load_memory ? j->dops->load_memory(j->arg, gm, why, sizeof(why))
				       : -ENOTSUP;

	if (ret)
		return mig_failf(j, "the snapshot's pages: %s", why[0] ? why : strerror(-ret));
	return place_markers(j, j->image, gm, NULL);
}

/* The vCPU and device records after the pages; END once every one of them came. */
static int load_state(struct mig_job *j, struct snap_reader *r)
{
	uint64_t cpus = 0, all = vm_ncpus(j->vm) == 64 ? ~0ULL : (1ULL << vm_ncpus(j->vm)) - 1;
	bool state = false;
	int ret = 0;

	for (unsigned int i = 1; i < snapr_nr_recs(r) && !ret; i++) {
		const struct mig_rec *rec = snapr_rec(r, i);

		switch (rec->type) {
		case MIG_REC_VCPU:
			ret = mig_apply_vcpu(j, rec, &cpus);
			break;
		case MIG_REC_DEVICE:
			ret = state ? mig_failf(j, "device state twice") : mig_apply_state(j, rec);
			state = true;
			break;
		case MIG_REC_END:
			if (!state || cpus != all)
				ret = mig_failf(j, "%s: the file lacks a vCPU's or the devices' state",
						snapr_path(r));
			return ret;
		default:
			ret = mig_failf(j, "a %s record in the state", mig_rec_name(rec->type));
		}
	}
	return ret ? ret : mig_failf(j, "%s: the state has no end", snapr_path(r));
}

static int restore_run(struct mig_job *j)
{
	struct snap_reader *r = j->image;
	json_t *desc = snapr_desc(r);
	bool reserved = false;
	char why[192] = "";
	int ret;

	mig_set_stage(j, MIG_STAGE_RESERVATION);
	if (!desc)
		return mig_failf(j, "%s: the VM's description is malformed", snapr_path(j->image));
	ret = j->dops->reserve(j->arg, desc, &j->vm, why, sizeof(why));
	json_decref(desc);
	if (ret)
		return mig_failf(j, "refused: %s", why[0] ? why : strerror(-ret));
	reserved = true;
	pthread_mutex_lock(&j->lock);
	j->prog.ram_pages = mem_nr_pages(vm_gm(j->vm));
	snprintf(j->prog.vm, sizeof(j->prog.vm), "%s", vm_name(j->vm));
	pthread_mutex_unlock(&j->lock);
	if (mem_nr_pages(vm_gm(j->vm)) != snapr_nr_pages(j->image)) {
		ret = mig_failf(j, "%s: the VM's description and its memory disagree on its size",
				snapr_path(j->image));
		goto out;
	}
	mig_set_stage(j, MIG_STAGE_LOAD);
	ret = j->params.identity ? map_clone(j, vm_gm(j->vm))
	      : j->params.lazy	 ? attach_image(j, vm_gm(j->vm))
				 : load_pages(j, vm_gm(j->vm));
	if (!ret)
		ret = load_state(j, r);
	if (ret)
		goto out;
	mig_set_stage(j, MIG_STAGE_ACTIVATION);
	ret = j->dops->activate(j->arg);
	if (ret)
		ret = mig_failf(j, "starting the VM: %s", strerror(-ret));
	reserved = false; /* the host's now, running or stopped */
	/* Running: the rest of its memory comes in behind it. */
	if (!ret && j->params.lazy && !j->params.identity && !j->params.no_prefetch &&
	    mem_lazy_start(vm_gm(j->vm)))
		log_warn("%s: no prefetcher: its pages come in as it touches them",
			 vm_name(j->vm));
out:
	if (ret && reserved)
		j->dops->discard(j->arg);
	return ret;
}

static void *restore_thread(void *arg)
{
	struct mig_job *j = arg;
	uint64_t t0 = kv_clock_ns(CLOCK_MONOTONIC);
	int ret;

	sandbox_enter(SANDBOX_MIGRATION);
	ret = restore_run(j);

	if (ret)
		log_warn("restoring %s failed: %s", j->prog.peer, j->prog.error);
	mig_job_finish(j, ret, t0);
	return NULL;
}

int mig_restore_start(const char *path, const struct mig_params *p,
		      const struct mig_dest_ops *ops, void *arg, struct mig_job **out, char *why,
		      size_t whylen)
{
	struct mig_job *j = mig_job_new(false, -1, p, arg, path);
	int ret;

	if (!j) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	j->kind = j->prog.kind = MIG_KIND_RESTORE;
	j->dops = ops;
	j->prog.stage = MIG_STAGE_RESERVATION;
	ret = snapr_open(path, &j->image, why, whylen);
	if (ret) {
		mig_job_drop(j);
		return ret;
	}
	/* Before the thread runs: its callbacks may look for the job through the caller. */
	*out = j;
	ret = thread_spawn(&j->thread, "snapshot-in", restore_thread, j);
	if (ret) {
		*out = NULL;
		mig_job_drop(j);
		snprintf(why, whylen, "%s", strerror(-ret));
		return ret;
	}
	return 0;
}

/* --- rollback --- */

/*
 * The file is of a VM of vm's shape: its pages, vCPUs, accelerator, machine
 * (a Linux guest's or the kvmem guest's) and (thread) place.
 */
static int fits(struct vm *vm, struct snap_reader *r, char *why, size_t whylen)
{
	json_t *d = snapr_desc(r);
	json_int_t mem = 0, base = 0;
	const char *accel = "";
	int cpus = 0, lnx = 0, ret = 0;

	if (!d || json_unpack(d, "{s:I, s:i, s:s, s?I, s?b}", "mem_bytes", &mem, "cpus", &cpus,
			      "accel", &accel, "ram_base", &base, "linux", &lnx)) {
		snprintf(why, whylen, "%s: the VM's description is malformed", snapr_path(r));
		ret = -EINVAL;
	} else if (snapr_nr_pages(r) != mem_nr_pages(vm_gm(vm)) || (unsigned int)cpus != vm_ncpus(vm) ||
		   strcmp(accel, vm_accel_name(vm))) {
		snprintf(why, whylen, "%s is of another VM: %lld MiB, %d vCPUs, %s (this one: %llu "
			 "MiB, %u vCPUs, %s)", snapr_path(r), (long long)(mem >> 20), cpus, accel,
			 (unsigned long long)(mem_ram_bytes(vm_gm(vm)) >> 20), vm_ncpus(vm),
			 vm_accel_name(vm));
		ret = -EINVAL;
	} else if (!lnx != !vm_is_linux(vm)) {
		snprintf(why, whylen, "%s is of a %s guest, and this VM is a %s guest", snapr_path(r),
			 lnx ? "Linux" : "kvmem", vm_is_linux(vm) ? "Linux" : "kvmem");
		ret = -EINVAL;
	} else if (!strcmp(accel, "thread") && (uint64_t)base != vm_ram_base(vm)) {
		snprintf(why, whylen, "%s is of another thread VM (its guest holds host addresses of "
			 "another place)", snapr_path(r));
		ret = -EINVAL;
	}
	json_decref(d);
	return ret;
}

enum rb_act { RB_SAME, RB_LOAD, RB_ZERO, RB_BALLOON, RB_UNBALLOON };

/* What page i of the window must become: the file's kind against what the VM holds. */
static enum rb_act rb_decide(struct snap_reader *r, uint64_t idx, uint8_t cur,
			     const uint8_t *content)
{
	uint8_t h[SNAP_HASH_LEN];
	bool data = cur == MEM_EXPORT_DATA || cur == MEM_EXPORT_FRAME;

	switch (snapr_kind(r, idx)) {
	case SNAP_PAGE_ZERO:
		return data ? RB_ZERO : cur == MEM_EXPORT_BALLOONED ? RB_UNBALLOON : RB_SAME;
	case SNAP_PAGE_BALLOONED:
		return cur == MEM_EXPORT_BALLOONED ? RB_SAME : RB_BALLOON;
	default:
		if (!data)
			return RB_LOAD;
		mig_sha256(content, MEM_PAGE_SIZE, h);
		return memcmp(h, snapr_hash(r, idx), SNAP_HASH_LEN) ? RB_LOAD : RB_SAME;
	}
}

static int rb_apply(struct gm *gm, uint64_t idx, uint64_t n, enum rb_act a, const uint8_t *data)
{
	gpa_t gpa = mem_index_gpa(gm, idx);
	int64_t got;

	switch (a) {
	case RB_LOAD:
	case RB_ZERO:
		return mem_fill_pages(gm, idx, n, data);
	case RB_BALLOON:
		got = mem_discard(gm, gpa, n * MEM_PAGE_SIZE, PS_BALLOONED);
		return got < 0 ? (int)got : 0;
	case RB_UNBALLOON:
		return mem_undiscard(gm, gpa, n * MEM_PAGE_SIZE);
	default:
		return 0;
	}
}

/* Every page that differs from the file's, window by window; *changed once one did. */
static int rollback_pages(struct snap_reader *r, struct gm *gm, struct mig_rollback_result *res,
			  bool *changed, char *why, size_t whylen)
{
	struct mem_export_page kinds[MEM_EXPORT_MAX];
	uint8_t *cur = kv_zalloc(MEM_EXPORT_MAX * MEM_PAGE_SIZE);
	uint8_t *file = kv_zalloc(MEM_EXPORT_MAX * MEM_PAGE_SIZE);
	uint8_t *zero = kv_zalloc(MEM_EXPORT_MAX * MEM_PAGE_SIZE);
	uint64_t nr = mem_nr_pages(gm), *count[] = {
		[RB_SAME] = &res->same, [RB_LOAD] = &res->reloaded, [RB_ZERO] = &res->zeroed,
		[RB_BALLOON] = &res->ballooned, [RB_UNBALLOON] = &res->unballooned,
	};
	uint8_t act[MEM_EXPORT_MAX];
	int ret = cur && file && zero ? 0 : -ENOMEM;

	if (ret)
		snprintf(why, whylen, "out of memory");
	for (uint64_t idx = 0; idx < nr && !ret; idx += MEM_EXPORT_MAX) {
		uint32_t n = nr - idx < MEM_EXPORT_MAX ? (uint32_t)(nr - idx) : MEM_EXPORT_MAX;
		bool load = false;
		uint64_t bad = 0;

		ret = mem_export_pages(gm, idx, n, NULL, kinds, cur);
		if (ret) {
			snprintf(why, whylen, "reading the VM's pages: %s", strerror(-ret));
			break;
		}
		for (uint32_t i = 0; i < n; i++) {
			act[i] = (uint8_t)rb_decide(r, idx + i, kinds[i].kind,
						    cur + (uint64_t)i * MEM_PAGE_SIZE);
			load |= act[i] == RB_LOAD;
		}
		if (load && (ret = snapr_read(r, idx, n, file, &bad))) {
			snprintf(why, whylen, "%s: %s", snapr_path(r), ret == -EBADMSG
				 ? "a page does not match its hash: the file is corrupt" : strerror(-ret));
			break;
		}
		for (uint32_t i = 0, e; i < n && !ret; i = e) {
			for (e = i + 1; e < n && act[e] == act[i] && one_run(gm, idx, i, e + 1);)
				e++;
			*count[act[i]] += e - i;
			if (act[i] == RB_SAME)
				continue;
			*changed = true;
			ret = rb_apply(gm, idx + i, e - i, (enum rb_act)act[i],
				       (act[i] == RB_LOAD ? file : zero) + (uint64_t)i * MEM_PAGE_SIZE);
			if (ret)
				snprintf(why, whylen, "writing the VM's pages: %s", strerror(-ret));
		}
	}
	kv_free(cur);
	kv_free(file);
	kv_free(zero);
	return ret;
}

int mig_rollback(struct vm *vm, const char *path, bool checksum, const struct mig_dest_ops *ops,
		 void *arg, struct mig_rollback_result *out, bool *half, char *why, size_t whylen)
{
	struct mig_params p = { .checksum = checksum };
	uint64_t t0 = kv_clock_ns(CLOCK_MONOTONIC);
	struct snap_reader *r = NULL;
	struct mig_job *j;
	int ret;

	*half = false;
	memset(out, 0, sizeof(*out));
	out->pages = mem_nr_pages(vm_gm(vm));
	ret = snapr_open(path, &r, why, whylen);
	if (!ret)
		ret = fits(vm, r, why, whylen);
	if (ret) {
		snapr_close(r);
		return ret;
	}
	ret = rollback_pages(r, vm_gm(vm), out, half, why, whylen);
	if (!ret) {
		/* The state records are the restore's: a job of the VM's carries their errors. */
		j = mig_job_new(false, -1, &p, arg, path);
		if (!j) {
			snprintf(why, whylen, "out of memory");
			ret = -ENOMEM;
		} else {
			j->kind = MIG_KIND_RESTORE;
			j->vm = vm;
			j->dops = ops;
			ret = load_state(j, r);
			*half = true;
			if (ret)
				snprintf(why, whylen, "%s", j->prog.error);
			memcpy(out->checksum, j->prog.checksum, sizeof(out->checksum));
			mig_job_drop(j);
		}
	}
	out->ms = (kv_clock_ns(CLOCK_MONOTONIC) - t0) / 1000000;
	snapr_close(r);
	return ret;
}
