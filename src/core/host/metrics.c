/* SPDX-License-Identifier: MIT */
/*
 * The OpenMetrics text exposition of the stats (see metrics.h). Made from
 * the stats JSON, not from the mechanisms, so it follows the stable schema:
 * a field added there needs a line in a table here, nothing else. A figure
 * the reply lacks (a mechanism the host does not run) is left out; a family
 * with no sample at all is left out whole.
 */
#include "core/host/metrics.h"

#include "core/alloc.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kind { GAUGE, COUNTER };

/* One family whose samples are figures of one object (the host's, a VM's, ...). */
struct family {
	const char *name;	/* without kvmem_ and (counters) _total */
	enum kind kind;
	const char *unit;	/* "bytes", "seconds" or NULL */
	const char *path;	/* the figure: a key, or "object.key" */
	double scale;		/* the figure times this (0: 1) */
	const char *help;
};

static const struct family host_families[] = {
	{ "host_budget_bytes", GAUGE, "bytes", "budget_bytes", 0, "Memory budget of the host" },
	{ "host_used_bytes", GAUGE, "bytes", "used_bytes", 0,
	  "Memory the kernel says the host uses (memory cgroup or PSS)" },
	{ "host_configured_bytes", GAUGE, "bytes", "configured_bytes", 0,
	  "Sum of the VMs' configured memory" },
	{ "host_resident_bytes", GAUGE, "bytes", "resident_bytes", 0,
	  "Guest memory in host memory, each shared frame counted once" },
	{ "host_saved_bytes", GAUGE, "bytes", "saved_bytes", 0,
	  "Configured guest memory that costs the host nothing (configured less resident)" },
	{ "host_shared_frames", GAUGE, NULL, "shared_frames", 0,
	  "Distinct shared frames the VMs map (a page each)" },
	{ "host_hard_limit_bytes", GAUGE, "bytes", "hard_limit_bytes", 0,
	  "Hard memory limit of the host" },
	{ "host_over_budget", GAUGE, NULL, "over_budget", 0,
	  "1 when the host uses more than its budget" },
	{ "host_policy_passes", COUNTER, NULL, "policy_passes", 0, "Passes of the memory policy" },
	{ "vmm_cpu_seconds", COUNTER, "seconds", "vmm_cpu_ms", 1e-3,
	  "CPU time of the VMM process" },
	{ "vmm_heap_bytes", GAUGE, "bytes", "vmm_heap_bytes", 0, "The VMM's own heap metadata" },
	{ "dedup_pages_shared", GAUGE, NULL, "dedup.pages_shared", 0,
	  "Frames of kvmem's page sharing in use" },
	{ "dedup_pages_sharing", GAUGE, NULL, "dedup.pages_sharing", 0,
	  "Guest pages mapped onto frames, beyond one per frame" },
	{ "dedup_full_scans", COUNTER, NULL, "dedup.full_scans", 0,
	  "Completed scans over every VM" },
	{ "dedup_pages_scanned", COUNTER, NULL, "dedup.pages_scanned", 0, "Pages hashed" },
	{ "dedup_merges", COUNTER, NULL, "dedup.merges", 0, "Guest pages mapped onto a frame" },
	{ "dedup_cow_breaks", COUNTER, NULL, "dedup.cow_breaks", 0,
	  "Shared pages a guest wrote (copy-on-write)" },
	{ "dedup_store_bytes", GAUGE, "bytes", "dedup.store_bytes", 0,
	  "Memory the frame store holds" },
	{ "dedup_kernel_cost_bytes", GAUGE, "bytes", "dedup.kernel_cost_bytes", 0,
	  "Kernel memory the mappings of sharing cost" },
	{ "dedup_cpu_seconds", COUNTER, "seconds", "dedup.cpu_seconds", 0,
	  "CPU time of the sharing scanner" },
	{ "swap_file_bytes", GAUGE, "bytes", "swap.file_bytes", 0, "Size of the swap file" },
	{ "swap_used_bytes", GAUGE, "bytes", "swap.used_bytes", 0, "Swap file space in use" },
	{ "swap_outs", COUNTER, NULL, "swap.swap_outs", 0, "Pages written to swap" },
	{ "swap_ins", COUNTER, NULL, "swap.swap_ins", 0, "Pages read back from swap" },
	{ "swap_write_errors", COUNTER, NULL, "swap.write_errors", 0, "Failed swap writes" },
	{ "swap_read_errors", COUNTER, NULL, "swap.read_errors", 0, "Failed swap reads" },
	{ "swap_pool_used_bytes", GAUGE, "bytes", "swap.pool.used_bytes", 0,
	  "Memory the compressed pool holds" },
};

static const struct family vm_families[] = {
	{ "vm_mem_bytes", GAUGE, "bytes", "mem_bytes", 0, "Configured memory of the VM" },
	{ "vm_min_bytes", GAUGE, "bytes", "min_bytes", 0, "Memory reserved for the VM" },
	{ "vm_resident_bytes", GAUGE, "bytes", "resident_bytes", 0,
	  "The VM's own pages in memory, its parts of shared frames and of the compressed pool" },
	{ "vm_shared_frames", GAUGE, NULL, "shared_frames", 0,
	  "Distinct shared frames the VM maps" },
	{ "vm_entitlement_bytes", GAUGE, "bytes", "entitlement_bytes", 0,
	  "The VM's share of the budget" },
	{ "vm_active_ratio", GAUGE, NULL, "active_fraction", 0,
	  "Sampled share of the VM's pages written per interval" },
	{ "vm_throttles", COUNTER, NULL, "throttles", 0,
	  "Times the policy paused the VM to hold the hard limit" },
	{ "vm_balloon_target_bytes", GAUGE, "bytes", "balloon.target_bytes", 0,
	  "Memory the balloon target leaves the guest" },
	{ "vm_balloon_actual_bytes", GAUGE, "bytes", "balloon.actual_bytes", 0,
	  "Memory the guest has with its balloon as it is" },
	{ "vm_swapped_bytes", GAUGE, "bytes", "swap.swapped_bytes", 0,
	  "The VM's memory in host swap" },
	{ "vm_swap_faults", COUNTER, NULL, "swap.faults", 0, "Touches of swapped pages served" },
};

/* Labelled families: one sample per key of an object, the key as a label. */
struct labelled {
	const char *name;
	const char *object;	/* object whose members are the samples */
	const char *label;	/* the label naming the member */
	double scale;		/* 0: 1; pages: 4096 */
	bool counter;
	const char *help;
};

static const struct labelled host_labelled[] = {
	{ "host_saved_by_bytes", "saved_by", "source", 0, false,
	  "Guest memory that costs the host nothing, by what saves it" },
	{ "host_resident_by_bytes", "resident_by", "kind", 0, false,
	  "Resident guest memory by kind: private, shared frames, compressed" },
	{ "host_reclaimed_bytes", "reclaimed_bytes", "mechanism", 0, true,
	  "Memory each reclaim mechanism freed" },
};

/* One sample per sharing group (host.sharing_groups), the group as a label. */
static const struct family group_families[] = {
	{ "group_vms", GAUGE, NULL, "vms", 0, "VMs in the sharing group" },
	{ "group_resident_bytes", GAUGE, "bytes", "resident_bytes", 0,
	  "Resident memory of the group's VMs" },
	{ "group_shared_within_bytes", GAUGE, "bytes", "shared_within_bytes", 0,
	  "Memory the group's VMs save by sharing pages inside themselves" },
	{ "group_shared_across_bytes", GAUGE, "bytes", "shared_across_bytes", 0,
	  "Memory the group's VMs save by sharing pages with each other" },
};

static const struct labelled vm_labelled[] = {
	{ "vm_saved_by_bytes", "saved_by", "source", 0, false,
	  "The VM's memory that costs the host nothing, by what saves it" },
	{ "vm_resident_by_bytes", "resident_by", "kind", 0, false,
	  "The VM's resident memory by kind: private, shared frames, compressed" },
	{ "vm_pages_bytes", "pages", "state", 4096, false, "The VM's guest pages by state" },
};

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* The figure at path ("key" or "a.key" or "a.b.key") of o, or NULL. */
static json_t *figure(json_t *o, const char *path)
{
	char key[64];
	const char *dot;

	while ((dot = strchr(path, '.'))) {
		snprintf(key, sizeof(key), "%.*s", (int)(dot - path), path);
		o = json_object_get(o, key);
		path = dot + 1;
	}
	o = json_object_get(o, path);
	return json_is_number(o) || json_is_boolean(o) ? o : NULL;
}

static double value_of(json_t *v, double scale)
{
	double x = json_is_boolean(v) ? (json_is_true(v) ? 1 : 0) : json_number_value(v);

	return scale ? x * scale : x;
}

/* A label value, escaped as the text format wants (backslash, quote, newline). */
static void label_value(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fprintf(f, "\\%c", *s);
		else if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

static void header(FILE *f, const char *name, bool counter, const char *unit, const char *help)
{
	fprintf(f, "# TYPE kvmem_%s %s\n", name, counter ? "counter" : "gauge");
	if (unit)
		fprintf(f, "# UNIT kvmem_%s %s\n", name, unit);
	fprintf(f, "# HELP kvmem_%s %s.\n", name, help);
}

/* The owner of objects: a VM or a group (its label and each object's name), or the host. */
struct owner {
	const char *label;	/* "vm", "group", or NULL: the host */
	const char *const *names;
};

static void sample(FILE *f, const char *name, bool counter, const char *olabel, const char *oname,
		   const char *label, const char *lvalue, double x)
{
	fprintf(f, "kvmem_%s%s", name, counter ? "_total" : "");
	if (olabel || label) {
		fputc('{', f);
		if (olabel) {
			fprintf(f, "%s=\"", olabel);
			label_value(f, oname);
			fputc('"', f);
		}
		if (label) {
			fprintf(f, "%s%s=\"", olabel ? "," : "", label);
			label_value(f, lvalue);
			fputc('"', f);
		}
		fputc('}', f);
	}
	fprintf(f, " %.17g\n", x);
}

/* objs[0..n): the host object (n 1, no owner label), the VM or the group objects. */
static void families(FILE *f, const struct family *fam, size_t nr, json_t **objs, size_t n,
		     struct owner who)
{
	for (size_t i = 0; i < nr; i++) {
		bool any = false;

		for (size_t o = 0; o < n; o++) {
			json_t *v = figure(objs[o], fam[i].path);

			if (!v)
				continue;
			if (!any)
				header(f, fam[i].name, fam[i].kind == COUNTER, fam[i].unit, fam[i].help);
			any = true;
			sample(f, fam[i].name, fam[i].kind == COUNTER, who.label,
			       who.label ? who.names[o] : NULL, NULL, NULL, value_of(v, fam[i].scale));
		}
	}
}

static void labelled(FILE *f, const struct labelled *fam, size_t nr, json_t **objs, size_t n,
		     struct owner who)
{
	for (size_t i = 0; i < nr; i++) {
		bool any = false;

		for (size_t o = 0; o < n; o++) {
			json_t *obj = json_object_get(objs[o], fam[i].object), *v;
			const char *key;

			json_object_foreach(obj, key, v) {
				if (!json_is_number(v))
					continue;
				if (!any)
					header(f, fam[i].name, fam[i].counter, "bytes", fam[i].help);
				any = true;
				sample(f, fam[i].name, fam[i].counter, who.label,
				       who.label ? who.names[o] : NULL, fam[i].label, key,
				       value_of(v, fam[i].scale));
			}
		}
	}
}

char *host_metrics_text(json_t *stats)
{
	json_t *host = json_object_get(stats, "host"), *vms = json_object_get(stats, "vms");
	json_t *groups = json_object_get(host, "sharing_groups"), *g;
	size_t n = 0, ng = 0, len = 0, nr_vms = json_array_size(vms), cap;
	json_t **objs, **gobjs;
	const char **names, **gnames, *key;
	char *text = NULL;
	FILE *f = NULL;

	cap = (nr_vms > json_object_size(groups) ? nr_vms : json_object_size(groups)) + 1;
	objs = kv_calloc(cap, sizeof(*objs));
	gobjs = kv_calloc(cap, sizeof(*gobjs));
	names = kv_calloc(cap, sizeof(*names));
	gnames = kv_calloc(cap, sizeof(*gnames));
	if (!objs || !gobjs || !names || !gnames)
		goto out;
	/* Only VMs with a name: it is their label. */
	for (size_t i = 0; i < nr_vms; i++) {
		json_t *name = json_object_get(json_array_get(vms, i), "name");

		if (json_is_string(name)) {
			names[n] = json_string_value(name);
			objs[n++] = json_array_get(vms, i);
		}
	}
	json_object_foreach(groups, key, g) {
		gnames[ng] = key;
		gobjs[ng++] = g;
	}
	f = open_memstream(&text, &len);
	if (!f)
		goto out;
	families(f, host_families, ARRAY_SIZE(host_families), &host, 1, (struct owner){ 0 });
	labelled(f, host_labelled, ARRAY_SIZE(host_labelled), &host, 1, (struct owner){ 0 });
	families(f, group_families, ARRAY_SIZE(group_families), gobjs, ng,
		 (struct owner){ "group", gnames });
	if (n) {
		header(f, "vm_info", false, NULL, "The VM's state and accelerator (always 1)");
		for (size_t i = 0; i < n; i++) {
			json_t *st = json_object_get(objs[i], "state"), *ac = json_object_get(objs[i], "accel");

			fputs("kvmem_vm_info{vm=\"", f);
			label_value(f, json_string_value(json_object_get(objs[i], "name")));
			fputs("\",state=\"", f);
			label_value(f, json_is_string(st) ? json_string_value(st) : "");
			fputs("\",accel=\"", f);
			label_value(f, json_is_string(ac) ? json_string_value(ac) : "");
			fputs("\"} 1\n", f);
		}
	}
	families(f, vm_families, ARRAY_SIZE(vm_families), objs, n, (struct owner){ "vm", names });
	labelled(f, vm_labelled, ARRAY_SIZE(vm_labelled), objs, n, (struct owner){ "vm", names });
	fputs("# EOF\n", f);
out:
	kv_free(objs);
	kv_free(gobjs);
	kv_free(names);
	kv_free(gnames);
	if (f && fclose(f)) {
		free(text);
		return NULL;
	}
	return f ? text : NULL;
}
