/* SPDX-License-Identifier: MIT */
/*
 * Figures of the dedup engine, what sharing costs the kernel, the "dedup"
 * control verb, the "share" reclaim mechanism, and the figures of `--dedup
 * ksm` (the host kernel's own KSM).
 *
 * Kernel cost. Every run of shared guest pages is a host mapping (VMA) and
 * splits the VM's anonymous mapping around it. Measured on these machines,
 * mapping isolated pages onto a memfd grew slab memory by about 500 bytes a
 * page, i.e. per two VMAs: vm_area_struct (192 B objects), maple tree nodes
 * and anon_vma_chain entries. So each mapping over guest RAM beyond one per
 * region is charged DEDUP_VMA_BYTES (256). Page tables cost nothing extra:
 * a shared page replaces the private page's entry. The mappings are counted
 * from /proc/self/maps at the end of a pass (at most every 2 s: ~0.5 us per
 * mapping), and the engine's own tables are charged too.
 *
 * Runs on the scanner thread (counting, map room) with d->lock held, and on
 * the control and policy threads (which take d->lock).
 */
#define LOG_TAG "dedup"
#include "dedup/dedup_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/host/control.h"
#include "core/log.h"
#include "core/size.h"
#include "mem/memmap.h"
#include "mem/overcommit.h"

#define MAX_MAP_COUNT "/proc/sys/vm/max_map_count"
#define OTHER_VMAS 4096		/* headroom for the process's other mappings */

static int64_t read_i64_file(const char *path, bool *ok)
{
	FILE *f = fopen(path, "re");
	long long v = 0;

	*ok = f && fscanf(f, "%lld", &v) == 1;
	if (f)
		fclose(f);
	return v;
}

void dedup_count_vmas(struct dedup *d)
{
	struct gm *gms[64];
	struct gm **all = gms;
	uint64_t regions = 0, total = 0;
	int64_t n;

	if (d->nr_vms > ARRAY_SIZE(gms)) {
		all = kv_calloc(d->nr_vms, sizeof(*all));
		if (!all)
			return;
	}
	for (unsigned int i = 0; i < d->nr_vms; i++) {
		all[i] = d->vms[i]->gm;
		regions += mem_nr_regions(all[i]);
	}
	n = mem_ram_vmas(all, d->nr_vms, &total);
	if (all != gms)
		kv_free(all);
	d->pass_vmas_ns = kv_clock_ns(CLOCK_MONOTONIC);
	if (n < 0) {
		d->st.errors++;
		return;
	}
	d->st.ram_vmas = (uint64_t)n;
	d->all_vmas = total;
	d->ram_regions = regions;
	d->maps_at_count = d->maps_added;
	/* The limit may have been raised by hand since: look again. */
	d->max_map_count = 0;
	d->map_full = false;
	dedup_map_room(d, 0);
}

bool dedup_map_room(struct dedup *d, uint64_t more)
{
	uint64_t need, want;
	bool ok;
	FILE *f;

	if (!d->max_map_count) {
		d->max_map_count = (uint64_t)read_i64_file(MAX_MAP_COUNT, &ok);
		if (!ok || !d->max_map_count)
			d->max_map_count = 65530;
	}
	/* Each merge adds at most two mappings (the run and the split-off rest). */
	need = (d->all_vmas > OTHER_VMAS ? d->all_vmas : OTHER_VMAS) +
	       (d->maps_added - d->maps_at_count) + more;
	if (need + need / 8 < d->max_map_count)
		return true;
	if (d->map_full)
		return false; /* said so already; dedup_count_vmas looks again */
	want = d->max_map_count * 2 > need * 2 ? d->max_map_count * 2 : need * 2;
	if (want > INT32_MAX)
		want = INT32_MAX;
	f = fopen(MAX_MAP_COUNT, "we");
	ok = f && fprintf(f, "%llu\n", (unsigned long long)want) > 0;
	if (f && fclose(f))
		ok = false;
	if (ok) {
		log_info("raised vm.max_map_count from %llu to %llu: every shared run is a mapping",
			 (unsigned long long)d->max_map_count, (unsigned long long)want);
		d->max_map_count = want;
		return true;
	}
	d->map_full = true;
	if (!d->map_logged)
		log_err("vm.max_map_count (%llu) is nearly reached and cannot be raised (%m): page "
			"sharing stops merging; raise it as root (sysctl vm.max_map_count)",
			(unsigned long long)d->max_map_count);
	d->map_logged = true;
	return false;
}

/* d->lock held. */
static void fill_stats(struct dedup *d, struct dedup_stats *out)
{
	uint64_t mapped = 0, meta = 0;

	*out = d->st;
	for (unsigned int i = 0; i < d->nr_vms; i++) {
		const struct dedup_vm *v = d->vms[i];

		mapped += v->mapped;
		meta += sizeof(*v) + v->nr_pages * (sizeof(*v->sum) + sizeof(*v->frame)) +
			(v->nr_pages / DEDUP_EXT_PAGES + 1) * sizeof(*v->win_ext);
	}
	/* Between two counts add what merges may have added: never undercount. */
	out->ram_vmas = d->st.ram_vmas + (d->maps_added - d->maps_at_count);
	out->kernel_cost_bytes = out->ram_vmas > d->ram_regions ?
					 (out->ram_vmas - d->ram_regions) * DEDUP_VMA_BYTES : 0;
	out->pages_shared = d->store.frames;
	out->pages_sharing = mapped > d->store.frames ? mapped - d->store.frames : 0;
	out->store_bytes = dedup_store_bytes(&d->store);
	meta += d->store.frames * sizeof(struct dedup_frame) +
		d->ix.ucap * sizeof(struct dedup_uent) + dedup_store_meta_bytes(&d->store);
	out->metadata_bytes = meta;
	out->saved_bytes = out->pages_sharing * MEM_PAGE_SIZE;
	out->net_saved_bytes = (int64_t)out->saved_bytes - (int64_t)out->kernel_cost_bytes -
			       (int64_t)meta;
	out->scan_rate = d->rate;
	out->pages_per_sec_now = d->cfg.pages_per_sec >> d->idle_shift;
	out->cpu_seconds = d->cpu_seconds;
	out->vms = d->nr_vms;
	out->config = d->cfg;
}

void dedup_get_stats(struct dedup *d, struct dedup_stats *out)
{
	pthread_mutex_lock(&d->lock);
	fill_stats(d, out);
	pthread_mutex_unlock(&d->lock);
}

int dedup_frame_keys(void *arg, struct gm *gm, const uint64_t *idx, size_t n, uint64_t *keys)
{
	struct dedup *d = arg;
	struct dedup_vm *v;

	pthread_mutex_lock(&d->lock);
	v = dedup_find_vm(d, gm);
	for (size_t i = 0; v && i < n; i++)
		keys[i] = idx[i] < v->nr_pages && v->frame[idx[i]] != DEDUP_NO_FRAME
			  ? v->frame[idx[i]] : UINT64_MAX;
	pthread_mutex_unlock(&d->lock);
	return v ? 0 : -ENOENT;
}

json_t *dedup_stats_json(struct dedup *d)
{
	struct dedup_stats s;
	json_t *o;

	dedup_get_stats(d, &s);
	o = json_object();
#define U(name) json_object_set_new(o, #name, json_integer((json_int_t)s.name))
	json_object_set_new(o, "mode", json_string("on"));
	json_object_set_new(o, "enabled", json_boolean(s.config.enabled));
	json_object_set_new(o, "pages_per_sec", json_integer((json_int_t)s.config.pages_per_sec));
	json_object_set_new(o, "cpu_percent", json_real(s.config.cpu_percent));
	json_object_set_new(o, "windows_enabled", json_boolean(s.config.windows));
	json_object_set_new(o, "hash", json_string(d->hasher.isa));
	U(pages_shared);
	U(pages_sharing);
	U(pages_unshared);
	U(pages_volatile);
	U(full_scans);
	U(pages_scanned);
	U(zero_pages);
	U(cow_breaks);
	U(group_unshares);
	U(released);
	U(merges);
	U(merge_races);
	json_object_set_new(o, "frames", json_integer((json_int_t)s.pages_shared));
	U(frames_freed);
	U(windows);
	U(window_aborts);
	U(map_refused);
	U(errors);
	U(store_bytes);
	U(ram_vmas);
	U(vma_bytes);
	U(kernel_cost_bytes);
	U(metadata_bytes);
	U(saved_bytes);
	json_object_set_new(o, "net_saved_bytes", json_integer((json_int_t)s.net_saved_bytes));
	json_object_set_new(o, "scan_rate", json_real(s.scan_rate));
	U(pages_per_sec_now);
	json_object_set_new(o, "cpu_seconds", json_real(s.cpu_seconds));
	U(vms);
#undef U
	return o;
}

/* --- the "dedup" control verb --- */

static int refuse(char *err, size_t errlen, const char *msg)
{
	snprintf(err, errlen, "%s", msg);
	return -EINVAL;
}

int dedup_config_from_json(json_t *req, struct dedup_config *cfg, char *err, size_t errlen)
{
	bool change = false;
	int64_t rate;
	json_t *v;

	v = json_object_get(req, "enabled");
	if (v) {
		if (json_is_boolean(v))
			cfg->enabled = json_is_true(v);
		else if (json_is_string(v) && !strcmp(json_string_value(v), "on"))
			cfg->enabled = true;
		else if (json_is_string(v) && !strcmp(json_string_value(v), "off"))
			cfg->enabled = false;
		else
			return refuse(err, errlen, "enabled: must be true, false, \"on\" or \"off\"");
		change = true;
	}
	v = json_object_get(req, "pages_per_sec");
	if (v) {
		if (size_json_integer("pages_per_sec", v, 1, (int64_t)DEDUP_MAX_PAGES_PER_SEC, &rate,
				      err, errlen))
			return -EINVAL;
		cfg->pages_per_sec = (uint64_t)rate;
		change = true;
	}
	v = json_object_get(req, "windows");
	if (v) {
		if (!json_is_boolean(v))
			return refuse(err, errlen, "windows: must be true or false");
		cfg->windows = json_is_true(v);
		change = true;
	}
	v = json_object_get(req, "cpu_percent");
	if (v) {
		if (size_json_number("cpu_percent", v, DEDUP_MIN_CPU_PERCENT, 100, NULL,
				     &cfg->cpu_percent, err, errlen))
			return -EINVAL;
		change = true;
	}
	return change;
}

static int dedup_verb(void *arg, json_t *req, json_t *reply)
{
	struct dedup *d = arg;
	struct dedup_config cfg;
	char err[200];
	json_t *stats;
	int ret;

	dedup_get_config(d, &cfg);
	ret = dedup_config_from_json(req, &cfg, err, sizeof(err));
	if (ret < 0)
		return control_reply_error(reply, EINVAL, "%s", err);
	if (ret && dedup_configure(d, &cfg))
		return control_reply_error(reply, EINVAL, "invalid dedup configuration");
	stats = dedup_stats_json(d);
	json_object_set_new(reply, "dedup", stats);
	return 0;
}

int dedup_register_verbs(struct dedup *d, struct control *c)
{
	return control_register_verb(c, "dedup", dedup_verb, d);
}

/* --- the "share" reclaim mechanism --- */

/*
 * Under memory pressure the policy asks for bytes from one VM: scan that VM
 * once, now, on the policy thread. Only pages already seen once with the
 * same content can merge (stability rule), so this speeds the scanner up for
 * the VMs that need it rather than replacing it. Sharing takes nothing the
 * guest uses, so the floor does not apply.
 */
static int64_t share_reclaim(void *arg, struct ovc_vm *ovm, uint64_t bytes, uint64_t floor_bytes)
{
	struct dedup *d = arg;
	struct gm *gm = ovc_vm_gm(ovm);
	struct dedup_stats before, after;
	int64_t ret;

	(void)bytes;
	(void)floor_bytes;
	dedup_get_stats(d, &before);
	ret = dedup_scan_vm(d, gm);
	if (ret < 0)
		return ret;
	dedup_get_stats(d, &after);
	ret = ((int64_t)after.pages_sharing - (int64_t)before.pages_sharing +
	       (int64_t)after.zero_pages - (int64_t)before.zero_pages) *
	      (int64_t)MEM_PAGE_SIZE;
	return ret > 0 ? ret : 0;
}

int dedup_register_mechanism(struct dedup *d, struct ovc *ovc)
{
	static struct ovc_mechanism share = {
		.name = "share",
		.cost = 1,
		.reclaim = share_reclaim,
	};

	share.arg = d;
	return ovc_register_mechanism(ovc, &share);
}

/* --- `--dedup ksm`: the host kernel's figures --- */

#define KSM_DIR "/sys/kernel/mm/ksm/"

/* ksmd's CPU seconds (utime + stime of /proc/<pid>/stat), or -1. */
static double ksmd_cpu_seconds(void)
{
	static int pid;
	char path[300], buf[512];
	unsigned long ut = 0, st = 0;
	const char *p;
	FILE *f;

	if (!pid) {
		DIR *dir = opendir("/proc");
		struct dirent *e;

		while (dir && (e = readdir(dir))) {
			char comm[32] = "";

			if (!isdigit((unsigned char)e->d_name[0]))
				continue;
			snprintf(path, sizeof(path), "/proc/%s/comm", e->d_name);
			f = fopen(path, "re");
			if (!f)
				continue;
			if (fgets(comm, sizeof(comm), f) && !strcmp(comm, "ksmd\n"))
				pid = atoi(e->d_name);
			fclose(f);
			if (pid)
				break;
		}
		if (dir)
			closedir(dir);
		if (!pid)
			return -1;
	}
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f)) {
		fclose(f);
		return -1;
	}
	fclose(f);
	/* Fields after "(comm)": state is 3, utime 14, stime 15. */
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return -1;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

json_t *dedup_ksm_stats_json(void)
{
	static const char *const names[] = {
		"pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans",
		"ksm_zero_pages", "general_profit", "pages_to_scan", "sleep_millisecs", "run",
	};
	json_t *o = json_object();
	char path[128];

	json_object_set_new(o, "mode", json_string("ksm"));
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		bool ok;
		int64_t v;

		snprintf(path, sizeof(path), KSM_DIR "%s", names[i]);
		v = read_i64_file(path, &ok);
		if (ok)
			json_object_set_new(o, names[i], json_integer((json_int_t)v));
	}
	json_object_set_new(o, "ksmd_cpu_seconds", json_real(ksmd_cpu_seconds()));
	return o;
}
