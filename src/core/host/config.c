/* SPDX-License-Identifier: MIT */
/*
 * The host's JSON configuration (`kvmem host --config FILE`), parsed with
 * jansson. Every error names the field and the problem. Schema:
 *
 *   { "budget": "8G", "socket": "/run/kvmem.sock", "socket_group": "monitor",
 *     "console_prefix": true,
 *     "dedup": "off" | "on" | "ksm", "accel": "auto" | "kvm" | "thread",
 *     "policy_interval": 1.0, "balloon_stats_interval": 1.0,
 *     "access": "auto" | "damon" | "sampling", "hard_limit": "9G",
 *     "swap": { "path": "/var/lib/kvmem", "size": "4G", "pool": "256M" },
 *     "vms": [ { "name": "a", "mem": "1G", "min": "256M", "shares": 1000,
 *                "cpus": 1, "guest": "path", "append": "kvmem.wl=...",
 *                "console_log": "a.log", "accel": "thread",
 *                "swap_max": "512M", "corpus": "libs.corpus" },
 *              { "name": "l", "mem": "1G", "kernel": "/boot/vmlinuz",
 *                "initrd": "/boot/initrd.img", "cmdline": "console=ttyS0" } ],
 *     "corpus_dir": "/var/lib/kvmem/corpora", "seccomp": true, "max_vms": 64 }
 *
 * Sizes are text with a unit (a bare JSON number is refused: core/size.h);
 * intervals are seconds.
 */
#define LOG_TAG "config"
#include <errno.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/host/host_internal.h"
#include "core/layout.h"
#include "core/linux_boot.h"
#include "core/size.h"
#include "mem/gm.h"
#include "mem/swap.h"

static int fail(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, len, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* A size: text with its unit (core/size.h says why a bare number is refused here). */
static int get_size(json_t *obj, const char *key, const char *where, uint64_t *out, char *err,
		    size_t len)
{
	json_t *v = json_object_get(obj, key);
	char field[64];

	if (!v)
		return 1; /* absent */
	snprintf(field, sizeof(field), "%s%s", where, key);
	return size_json(field, v, SIZE_JSON_TEXT_ONLY, SIZE_MAX_BYTES, out, err, len) ? -EINVAL : 0;
}

/* An integer field from min to max; 1 when absent. */
static int get_int(json_t *obj, const char *key, const char *where, int64_t min, int64_t max,
		   int64_t *out, char *err, size_t len)
{
	json_t *v = json_object_get(obj, key);
	char field[64];

	if (!v)
		return 1;
	snprintf(field, sizeof(field), "%s%s", where, key);
	return size_json_integer(field, v, min, max, out, err, len) ? -EINVAL : 0;
}

static int get_string(json_t *obj, const char *key, const char *where, char **out, char *err,
		      size_t len)
{
	json_t *v = json_object_get(obj, key);

	if (!v)
		return 1;
	if (!json_is_string(v))
		return fail(err, len, "%s%s: must be a string", where, key);
	*out = kv_strdup(json_string_value(v));
	return *out ? 0 : -ENOMEM;
}

/*
 * "socket_group": the group whose members may read stats on the control
 * socket. A group name, or a gid: a JSON integer, or a string of digits
 * that names no group (chown's reading). A name must exist: a misspelt
 * one is an error here, not a socket that nobody it was meant for can use.
 * A gid needs no name (a group known only by number, as in a container);
 * (gid_t)-1 is not one, it means "no change" to chown.
 */
static int get_socket_group(json_t *root, struct host_config *cfg, char *err, size_t len)
{
	json_t *v = json_object_get(root, "socket_group");
	struct group gr, *found = NULL;
	size_t cap = 4096;
	const char *name, *p;
	char *buf = NULL;
	int ret;

	if (!v)
		return 0;
	if (json_is_integer(v)) {
		if (json_integer_value(v) < 0 || json_integer_value(v) >= (json_int_t)(gid_t)-1)
			return fail(err, len, "socket_group: a gid from 0 to %u",
				    (unsigned int)(gid_t)-2);
		cfg->socket_gid = (gid_t)json_integer_value(v);
		cfg->socket_group_set = true;
		return 0;
	}
	if (!json_is_string(v) || !*json_string_value(v))
		return fail(err, len, "socket_group: must be a group name or a gid");
	name = json_string_value(v);
	/* The entry's strings go in buf: a group with many members needs a large one. */
	for (;;) {
		char *nbuf = kv_realloc(buf, cap);

		if (!nbuf) {
			kv_free(buf);
			return -ENOMEM;
		}
		buf = nbuf;
		ret = getgrnam_r(name, &gr, buf, cap, &found);
		if (ret != ERANGE || cap >= (1u << 24))
			break;
		cap *= 2;
	}
	kv_free(buf);
	if (found) {
		cfg->socket_gid = gr.gr_gid; /* in gr itself, not in buf */
		cfg->socket_group_set = true;
		return 0;
	}
	/* Not found is 0 with no entry, or one of these, depending on the NSS module. */
	if (ret && ret != ENOENT && ret != ESRCH && ret != EBADF && ret != EPERM)
		return fail(err, len, "socket_group: cannot look up group \"%.64s\": %s", name,
			    strerror(ret));
	for (p = name; *p >= '0' && *p <= '9'; p++)
		;
	if (!*p && p - name <= 10) {
		unsigned long gid = strtoul(name, NULL, 10);

		if (gid < (gid_t)-1) {
			cfg->socket_gid = (gid_t)gid;
			cfg->socket_group_set = true;
			return 0;
		}
	}
	return fail(err, len, "socket_group: no such group \"%.64s\"", name);
}

/* true or false; 1 when absent (*out left as it was). */
static int get_bool(json_t *obj, const char *key, const char *where, bool *out, char *err,
		    size_t len)
{
	json_t *v = json_object_get(obj, key);

	if (!v)
		return 1;
	if (!json_is_boolean(v))
		return fail(err, len, "%s%s: must be true or false", where, key);
	*out = json_is_true(v);
	return 0;
}

static int get_accel(json_t *o, const char *where, enum accel_kind *out, char *err, size_t len)
{
	json_t *v = json_object_get(o, "accel");

	if (v && (!json_is_string(v) || accel_parse(json_string_value(v), out)))
		return fail(err, len, "%saccel: must be \"auto\", \"kvm\" or \"thread\"", where);
	return 0;
}

/*
 * What a VM boots: a guest ELF ("guest", default the kvmem guest, and its
 * "append") or a Linux kernel ("kernel", "initrd", "cmdline"), never a mix.
 */
static int parse_image(json_t *o, const char *where, struct host_vm_config *vm,
		       const char *default_guest, char *err, size_t len)
{
	int ret;

	ret = get_string(o, "kernel", where, &vm->kernel, err, len);
	if (ret < 0)
		return ret;
	if (vm->kernel) {
		if (json_object_get(o, "guest"))
			return fail(err, len, "%sguest: a VM boots a guest image or a Linux "
				    "kernel, not both", where);
		if (json_object_get(o, "append"))
			return fail(err, len, "%sappend: a Linux kernel's command line is "
				    "\"cmdline\"", where);
		ret = get_string(o, "initrd", where, &vm->initrd, err, len);
		if (ret < 0)
			return ret;
		/* Its length is the kernel's to say (cmdline_size): checked with the image. */
		ret = get_string(o, "cmdline", where, &vm->append, err, len);
		return ret < 0 ? ret : 0;
	}
	if (json_object_get(o, "initrd") || json_object_get(o, "cmdline"))
		return fail(err, len, "%s%s: only for a Linux kernel (\"kernel\")", where,
			    json_object_get(o, "initrd") ? "initrd" : "cmdline");
	ret = get_string(o, "guest", where, &vm->guest, err, len);
	if (ret == 1)
		vm->guest = kv_strdup(default_guest);
	else if (ret)
		return ret;
	else
		vm->guest_explicit = true;
	ret = get_string(o, "append", where, &vm->append, err, len);
	if (ret < 0)
		return ret;
	if (vm->append && strlen(vm->append) >= ABI_MAX_CMDLINE)
		return fail(err, len, "%sappend: longer than %d bytes", where, ABI_MAX_CMDLINE - 1);
	return 0;
}

int host_config_parse_vm(json_t *o, const char *where, struct host_vm_config *vm,
			 const char *default_guest, char *err, size_t len)
{
	static const char *const known[] = { "name", "mem", "min", "shares", "cpus",
					     "guest", "append", "console_log", "accel",
					     "swap_max", "corpus", "sharing_group", "kernel",
					     "initrd", "cmdline" };
	const char *key;
	int64_t n;
	json_t *v;
	int ret;

	/* where is a prefix ("vms[2]."): the object itself is named without its dot. */
	if (!json_is_object(o))
		return fail(err, len, "%.*s: must be an object",
			    (int)strlen(where) - (*where && where[strlen(where) - 1] == '.'), where);
	json_object_foreach(o, key, v) {
		bool ok = false;

		for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
			ok |= !strcmp(key, known[k]);
		if (!ok)
			return fail(err, len, "%s%s: unknown field", where, key);
	}
	ret = get_string(o, "name", where, &vm->name, err, len);
	if (ret == 1)
		return fail(err, len, "%sname: missing", where);
	if (ret)
		return ret;
	if (!*vm->name || strlen(vm->name) > 63 || strpbrk(vm->name, " \t\n/\"\\"))
		return fail(err, len, "%sname: must be 1-63 characters without spaces, quotes or '/'",
			    where);
	ret = get_size(o, "mem", where, &vm->mem_bytes, err, len);
	if (ret == 1)
		return fail(err, len, "%smem: missing", where);
	if (ret)
		return ret;
	ret = get_size(o, "min", where, &vm->min_bytes, err, len);
	if (ret < 0)
		return ret;
	/* Most of its memory host swap may hold ("0B": never swapped); default no limit. */
	ret = get_size(o, "swap_max", where, &vm->swap_max_bytes, err, len);
	if (ret < 0)
		return ret;
	vm->swap_max_set = ret == 0;
	ret = get_int(o, "shares", where, 1, 1000000, &n, err, len);
	if (ret < 0)
		return ret;
	vm->shares = ret ? 1000 : (uint32_t)n;
	ret = get_int(o, "cpus", where, 1, ABI_MAX_CPUS, &n, err, len);
	if (ret < 0)
		return ret;
	vm->cpus = ret ? 1 : (uint32_t)n;
	ret = parse_image(o, where, vm, default_guest, err, len);
	if (ret)
		return ret;
	ret = get_accel(o, where, &vm->accel, err, len);
	if (ret)
		return ret;
	ret = get_string(o, "console_log", where, &vm->console_log, err, len);
	if (ret < 0)
		return ret;
	ret = get_string(o, "corpus", where, &vm->corpus, err, len);
	if (ret < 0)
		return ret;
	ret = get_string(o, "sharing_group", where, &vm->sharing_group, err, len);
	return ret < 0 ? ret : 0;
}

/*
 * Field `key` of o, if there, one of names[0..n): its index in *out. 0, 1
 * when absent, or -EINVAL with `what` in the error.
 */
static int get_choice(json_t *o, const char *key, const char *const *names, size_t n,
		      unsigned int *out, const char *what, char *err, size_t len)
{
	json_t *v = json_object_get(o, key);
	const char *s = v ? json_string_value(v) : NULL;

	if (!v)
		return 1;
	for (size_t k = 0; s && k < n; k++) {
		if (!strcmp(s, names[k])) {
			*out = (unsigned int)k;
			return 0;
		}
	}
	return fail(err, len, "%s", what);
}

/*
 * "swap": {"path": PATH, "size": "4G", "pool": "256M", "io": "auto",
 * "victims": "coldest", "allow_tmpfs": false}: the host's swap file
 * (mem/swap.h). path is a directory (an unnamed file in it) or a file that
 * does not exist yet; size defaults to MEM_SWAP_DEFAULT_BYTES; pool, a
 * compressed pool in memory before the file, defaults to none; io, the I/O
 * engine: "auto" (io_uring where the kernel allows it, else threads),
 * "io_uring" or "threads"; victims: "coldest" (chunks by access
 * information) or "random" (a baseline); store: "file" (kvmem's own), or
 * "kernel" (the victims paged out by the kernel into its swap, for
 * comparison); allow_tmpfs is for tests (a small tmpfs gives a file that
 * fills).
 */
static int parse_swap(json_t *o, struct host_swap_config *sw, char *err, size_t len)
{
	static const char *const known[] = { "path", "size", "pool", "io", "victims",
					     "store", "allow_tmpfs" };
	static const char *const stores[] = { "file", "kernel" };
	static const char *const engines[] = {
		[MEM_SWAP_IO_AUTO] = "auto",
		[MEM_SWAP_IO_URING] = "io_uring",
		[MEM_SWAP_IO_THREADS] = "threads",
	};
	static const char *const victims[] = {
		[MEM_SWAP_VICTIMS_COLDEST] = "coldest",
		[MEM_SWAP_VICTIMS_RANDOM] = "random",
	};
	unsigned int choice;
	const char *key;
	json_t *v;
	int ret;

	if (!json_is_object(o))
		return fail(err, len, "swap: must be an object like {\"path\": \"/var/lib/kvmem\", "
			    "\"size\": \"4G\"}");
	json_object_foreach(o, key, v) {
		bool ok = false;

		for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
			ok |= !strcmp(key, known[k]);
		if (!ok)
			return fail(err, len, "swap.%s: unknown field", key);
	}
	ret = get_string(o, "path", "swap.", &sw->path, err, len);
	if (ret == 1)
		return fail(err, len, "swap.path: missing (a directory on a disk, or a new file)");
	if (ret)
		return ret;
	if (!*sw->path)
		return fail(err, len, "swap.path: must not be empty");
	sw->bytes = MEM_SWAP_DEFAULT_BYTES;
	ret = get_size(o, "size", "swap.", &sw->bytes, err, len);
	if (ret < 0)
		return ret;
	if (sw->bytes == 0 || sw->bytes % MEM_PAGE_SIZE)
		return fail(err, len, "swap.size: must be a multiple of 4K above 0");
	ret = get_size(o, "pool", "swap.", &sw->pool_bytes, err, len);
	if (ret < 0)
		return ret;
	if (ret == 0 && (sw->pool_bytes == 0 || sw->pool_bytes % MEM_PAGE_SIZE))
		return fail(err, len, "swap.pool: must be a multiple of 4K above 0 (leave it out "
			    "for no pool)");
	v = json_object_get(o, "allow_tmpfs");
	if (v && !json_is_boolean(v))
		return fail(err, len, "swap.allow_tmpfs: must be true or false");
	sw->allow_tmpfs = json_is_true(v);
	ret = get_choice(o, "io", engines, sizeof(engines) / sizeof(engines[0]), &choice,
			 "swap.io: must be \"auto\", \"io_uring\" or \"threads\"", err, len);
	if (ret < 0)
		return ret;
	if (!ret)
		sw->io = (enum mem_swap_io)choice;
	ret = get_choice(o, "victims", victims, sizeof(victims) / sizeof(victims[0]), &choice,
			 "swap.victims: must be \"coldest\" or \"random\"", err, len);
	if (ret < 0)
		return ret;
	if (!ret)
		sw->victims = (enum mem_swap_victims)choice;
	ret = get_choice(o, "store", stores, 2, &choice,
			 "swap.store: must be \"file\" or \"kernel\"", err, len);
	if (ret < 0)
		return ret;
	sw->kernel_store = !ret && choice == 1;
	return 0;
}

int host_config_check_vm(const struct host_vm_config *vm, const char *where, char *err, size_t len)
{
	char why[512];

	if (vm->mem_bytes % LAYOUT_PAGE_SIZE || vm->mem_bytes < 4 * LAYOUT_RESERVED_END)
		return fail(err, len, "%smem: must be a multiple of 4K and at least 8M", where);
	if (vm->mem_bytes > LAYOUT_MAX_RAM)
		return fail(err, len, "%smem: more than a guest can map", where);
	if (vm->min_bytes > vm->mem_bytes)
		return fail(err, len, "%smin: larger than mem", where);
	if (vm->kernel) {
		int n = (int)strlen(where) - (*where && where[strlen(where) - 1] == '.');

		/* A bad image, or one this VM cannot boot: refused before the host starts. */
		if (linux_boot_check(vm->kernel, vm->initrd, vm->append ? vm->append : "",
				     vm->mem_bytes, why, sizeof(why)))
			return fail(err, len, "%.*s: %s", n, where, why);
	} else if (!vm->guest || access(vm->guest, R_OK)) {
		return fail(err, len, "%sguest: %s: no such readable file", where,
			    vm->guest ? vm->guest : "(none)");
	}
	if (vm->corpus && access(vm->corpus, R_OK))
		return fail(err, len, "%scorpus: %s: no such readable file", where, vm->corpus);
	if (vm->sharing_group && host_group_check(vm->sharing_group, false, why, sizeof(why)))
		return fail(err, len, "%s%s", where, why);
	return 0;
}

int host_config_check(const struct host_config *cfg, char *err, size_t len)
{
	uint64_t sum_min = 0;

	if (cfg->nr_vms == 0 && !cfg->incoming && !cfg->restore)
		return fail(err, len, "vms: at least one VM is needed (or \"incoming\", to take "
			    "VMs in)");
	for (unsigned int i = 0; i < cfg->nr_vms; i++) {
		const struct host_vm_config *vm = &cfg->vms[i];
		char where[48];
		int ret;

		for (unsigned int j = 0; j < i; j++)
			if (!strcmp(cfg->vms[j].name, vm->name))
				return fail(err, len, "vms[%u].name: \"%s\" is used twice", i, vm->name);
		snprintf(where, sizeof(where), "vms[%u].", i);
		ret = host_config_check_vm(vm, where, err, len);
		if (ret)
			return ret;
		if (vm->sharing_group && cfg->dedup == HOST_DEDUP_KSM &&
		    host_group_check(vm->sharing_group, true, err, len))
			return fail(err, len, "vms[%u].sharing_group: host KSM (dedup ksm) merges "
				    "across any groups: only the default group can be kept", i);
		sum_min += vm->min_bytes;
	}
	if (cfg->budget_bytes && sum_min > cfg->budget_bytes)
		return fail(err, len,
			    "vms: the reservations (min) add up to %llu MiB, more than the budget of "
			    "%llu MiB: cannot guarantee them",
			    (unsigned long long)(sum_min >> 20),
			    (unsigned long long)(cfg->budget_bytes >> 20));
	return 0;
}

/*
 * "max_vms": how many VMs the host holds at a time (running, arriving,
 * leaving), those of its config included; each costs a little memory and
 * its share of address space (host_create checks the config's).
 */
static int get_max_vms(json_t *root, struct host_config *cfg, char *err, size_t len)
{
	int64_t n;
	int ret = get_int(root, "max_vms", "", 1, HOST_MAX_VMS, &n, err, len);

	if (ret)
		return ret < 0 ? ret : 0;
	if ((uint64_t)n < cfg->nr_vms)
		return fail(err, len, "max_vms: %lld is fewer than the %u VMs of the config",
			    (long long)n, cfg->nr_vms);
	cfg->max_vms = (unsigned int)n;
	return 0;
}

int host_config_load(const char *path, struct host_config *cfg, char *err, size_t len)
{
	static const char *const known[] = { "budget", "socket", "socket_group",
					     "console_prefix", "dedup", "accel", "policy_interval",
					     "balloon_stats_interval", "access", "hard_limit",
					     "swap", "incoming", "migration_secret",
					     "fingerprint_key", "corpus_dir", "seccomp", "max_vms",
					     "vms" };
	static const char *const access[] = {
		[HOST_ACCESS_AUTO] = "auto",
		[HOST_ACCESS_DAMON] = "damon",
		[HOST_ACCESS_SAMPLING] = "sampling",
	};
	unsigned int choice;
	bool seccomp = true;
	json_error_t jerr;
	json_t *root, *vms, *v;
	const char *key;
	int ret = 0;

	root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fail(err, len, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
	if (!json_is_object(root)) {
		ret = fail(err, len, "%s: the top level must be an object", path);
		goto out;
	}
	json_object_foreach(root, key, v) {
		bool ok = false;

		for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
			ok |= !strcmp(key, known[k]);
		if (!ok) {
			ret = fail(err, len, "%s: unknown field", key);
			goto out;
		}
	}
	ret = get_size(root, "budget", "", &cfg->budget_bytes, err, len);
	if (ret < 0)
		goto out;
	/* 0 is how the host spells "MemAvailable": that is leaving budget out, not "0". */
	if (ret == 0 && cfg->budget_bytes == 0) {
		ret = fail(err, len, "budget: must be above 0 (leave it out to use MemAvailable)");
		goto out;
	}
	ret = get_size(root, "hard_limit", "", &cfg->hard_limit_bytes, err, len);
	if (ret < 0)
		goto out;
	if (ret == 0 && (cfg->hard_limit_bytes < 2 * HOST_HARD_LIMIT_GAP ||
			 (cfg->budget_bytes &&
			  cfg->hard_limit_bytes < cfg->budget_bytes + HOST_HARD_LIMIT_GAP))) {
		ret = fail(err, len, "hard_limit: must be at least the budget plus 32M (and 64M): "
			   "the budget plus the tolerance the policy keeps");
		goto out;
	}
	ret = get_string(root, "socket", "", &cfg->socket, err, len);
	if (ret < 0)
		goto out;
	ret = get_socket_group(root, cfg, err, len);
	if (ret < 0)
		goto out;
	cfg->console_prefix = true;
	ret = get_bool(root, "console_prefix", "", &cfg->console_prefix, err, len);
	if (ret < 0)
		goto out;
	ret = get_bool(root, "seccomp", "", &seccomp, err, len);
	if (ret < 0)
		goto out;
	cfg->seccomp_off = !seccomp;
	v = json_object_get(root, "dedup");
	if (v) {
		const char *s = json_is_string(v) ? json_string_value(v) : "";

		if (!strcmp(s, "off"))
			cfg->dedup = HOST_DEDUP_OFF;
		else if (!strcmp(s, "on"))
			cfg->dedup = HOST_DEDUP_ON;
		else if (!strcmp(s, "ksm"))
			cfg->dedup = HOST_DEDUP_KSM;
		else {
			ret = fail(err, len, "dedup: must be \"off\", \"on\" or \"ksm\"");
			goto out;
		}
	}
	ret = get_accel(root, "", &cfg->accel, err, len);
	if (ret)
		goto out;
	v = json_object_get(root, "policy_interval");
	if (v && size_json_number("policy_interval", v, 0.05, 3600, "seconds",
				  &cfg->policy_interval_s, err, len)) {
		ret = -EINVAL;
		goto out;
	}
	v = json_object_get(root, "balloon_stats_interval");
	if (v) {
		if (size_json_seconds_ms("balloon_stats_interval", v, 3600, true,
					 &cfg->balloon_stats_ms, err, len)) {
			ret = -EINVAL;
			goto out;
		}
		cfg->balloon_stats_set = true;
	}
	ret = get_choice(root, "access", access, sizeof(access) / sizeof(access[0]), &choice,
			 "access: must be \"auto\", \"damon\" or \"sampling\"", err, len);
	if (ret < 0)
		goto out;
	if (!ret)
		cfg->access = (enum host_access)choice;
	v = json_object_get(root, "swap");
	if (v) {
		ret = parse_swap(v, &cfg->swap, err, len);
		if (ret)
			goto out;
	}
	ret = get_string(root, "incoming", "", &cfg->incoming, err, len);
	if (ret < 0)
		goto out;
	ret = get_string(root, "fingerprint_key", "", &cfg->fingerprint_key, err, len);
	if (ret < 0)
		goto out;
	ret = get_string(root, "corpus_dir", "", &cfg->corpus_dir, err, len);
	if (ret < 0)
		goto out;
	ret = get_string(root, "migration_secret", "", &cfg->migration_secret, err, len);
	if (ret < 0)
		goto out;
	vms = json_object_get(root, "vms");
	/* A host that takes VMs in may start without any. */
	if (cfg->incoming && (!vms || (json_is_array(vms) && json_array_size(vms) == 0))) {
		ret = 0;
		goto out;
	}
	if (!json_is_array(vms) || json_array_size(vms) == 0) {
		ret = fail(err, len, "vms: must be a non-empty array of VM objects");
		goto out;
	}
	cfg->vms = kv_calloc(json_array_size(vms), sizeof(*cfg->vms));
	if (!cfg->vms) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < json_array_size(vms); i++) {
		char where[48];

		snprintf(where, sizeof(where), "vms[%zu].", i);
		cfg->nr_vms++;
		ret = host_config_parse_vm(json_array_get(vms, i), where, &cfg->vms[i],
					   cfg->default_guest, err, len);
		if (ret)
			goto out;
	}
	ret = 0;
out:
	if (!ret)
		ret = get_max_vms(root, cfg, err, len);
	json_decref(root);
	return ret;
}

/* True when path names the built-in guest (the same file as default_guest). */
static bool is_builtin_guest(const char *path, const char *default_guest)
{
	char *a = realpath(path, NULL), *b = default_guest ? realpath(default_guest, NULL) : NULL;
	bool same = a && b && !strcmp(a, b);

	free(a);
	free(b);
	return same;
}

/* Every VM boots a Linux kernel on whatever accelerator the host has (kvmem run --kernel). */
static bool kernels_only(const struct host_config *cfg)
{
	if (!cfg->nr_vms || cfg->incoming || cfg->restore)
		return false;
	for (unsigned int i = 0; i < cfg->nr_vms; i++)
		if (!cfg->vms[i].kernel || cfg->vms[i].accel != ACCEL_AUTO)
			return false;
	return true;
}

int host_config_resolve_accel(struct host_config *cfg, char *err, size_t len)
{
	char why[512];
	enum accel_kind asked = cfg->accel;

	/*
	 * auto means kvm for a Linux kernel, which thread cannot run: said
	 * here as that, rather than as a notice that thread was taken.
	 */
	if (asked == ACCEL_AUTO && kernels_only(cfg)) {
		if (accel_resolve(ACCEL_KVM, &cfg->accel, why, sizeof(why))) {
			fail(err, len, "%s: a Linux kernel needs hardware-virtualized KVM, and %s",
			     cfg->vms[0].kernel, why);
			return -ENODEV;
		}
	} else if (accel_resolve(cfg->accel, &cfg->accel, why, sizeof(why))) {
		fail(err, len, "%s", why);
		return -ENODEV;
	}
	for (unsigned int i = 0; i < cfg->nr_vms; i++) {
		struct host_vm_config *vm = &cfg->vms[i];
		enum accel_kind vm_asked = vm->accel == ACCEL_AUTO ? asked : vm->accel;

		if (vm->kernel && vm_asked == ACCEL_AUTO) {
			if (accel_resolve(ACCEL_KVM, &vm->accel, why, sizeof(why)))
				return fail(err, len, "%s: a Linux kernel needs "
					    "hardware-virtualized KVM, and %s", vm->kernel, why);
		} else if (vm->accel == ACCEL_AUTO) {
			vm->accel = cfg->accel;
		} else if (accel_resolve(vm->accel, &vm->accel, why, sizeof(why))) {
			return fail(err, len, "vms[%u].accel: %s", i, why);
		}
		/* Refused in one line now, rather than by the VM once the host runs. */
		if (vm->kernel && accel_linux_check(vm->accel, why, sizeof(why)))
			return fail(err, len, "%s: %s", vm->kernel, why);
		if (vm->accel == ACCEL_THREAD && vm_asked != ACCEL_THREAD && vm->guest_explicit &&
		    !is_builtin_guest(vm->guest, cfg->default_guest))
			return fail(err, len,
				    "%s: not the built-in kvmem guest: on the thread accelerator it "
				    "would run inside the VMM's address space; ask for that by name "
				    "(--accel thread, or \"accel\": \"thread\")", vm->guest);
	}
	return 0;
}

void host_vm_config_free(struct host_vm_config *vm)
{
	kv_free(vm->name);
	kv_free(vm->guest);
	kv_free(vm->kernel);
	kv_free(vm->initrd);
	kv_free(vm->append);
	kv_free(vm->console_log);
	kv_free(vm->corpus);
	kv_free(vm->sharing_group);
	memset(vm, 0, sizeof(*vm));
}

void host_config_free(struct host_config *cfg)
{
	for (unsigned int i = 0; i < cfg->nr_vms; i++)
		host_vm_config_free(&cfg->vms[i]);
	kv_free(cfg->vms);
	kv_free(cfg->socket);
	kv_free(cfg->incoming);
	kv_free(cfg->migration_secret);
	kv_free(cfg->fingerprint_key);
	kv_free(cfg->corpus_dir);
	kv_free(cfg->swap.path);
	memset(cfg, 0, sizeof(*cfg));
}
