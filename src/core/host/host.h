/* SPDX-License-Identifier: MIT */
/*
 * The host: one kvmem process running one or many VMs under one memory
 * budget (docs/ARCHITECTURE.md, "Processes, threads and locks"). Owns the
 * VMs, the userfaultfd service, the reclaim/policy thread and the control
 * socket. `kvmem run` is a host with one VM.
 */
#ifndef KVMEM_CORE_HOST_H
#define KVMEM_CORE_HOST_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/accel/accel.h"
#include "core/log.h"
#include "mem/swap.h"

struct host;

enum host_dedup_mode {
	HOST_DEDUP_OFF,
	HOST_DEDUP_ON,	/* kvmem's own scanner */
	HOST_DEDUP_KSM, /* MADV_MERGEABLE; the host kernel's ksmd merges */
};

/*
 * A hard limit is at least this far above the budget: the policy pauses
 * guests half way between the two, so with no room between them it could
 * not act before the kernel does.
 */
#define HOST_HARD_LIMIT_GAP (32ULL << 20)
/* The most VMs a host may be told to hold at a time ("max_vms"). */
#define HOST_MAX_VMS 4096

/* Where the policy's access information (mem/access.h) comes from. */
enum host_access {
	HOST_ACCESS_AUTO,	/* DAMON where the kernel offers it, else sampling */
	HOST_ACCESS_DAMON,	/* DAMON or the host does not start */
	HOST_ACCESS_SAMPLING,	/* write-protect sampling */
};

struct host_vm_config {
	char *name;
	uint64_t mem_bytes;	/* maximum RAM */
	uint64_t min_bytes;	/* reservation: never reclaimed below this */
	uint32_t shares;	/* proportional share of memory above min */
	uint32_t cpus;
	char *guest;		/* guest ELF path; NULL for a Linux kernel */
	bool guest_explicit;	/* named by the user, not the built-in kvmem guest */
	char *kernel;		/* a Linux bzImage to boot instead of a guest ELF, or NULL */
	bool linux_machine;	/* a Linux guest's machine without a kernel: an arrival's */
	char *initrd;		/* its initrd, or NULL */
	enum accel_kind accel;	/* AUTO: the host's */
	char *append;		/* guest or kernel command line (config: "append", "cmdline") */
	char *console_log;	/* also write the console here, or NULL */
	char *corpus;		/* the content corpus file (mem/corpus.h), or NULL */
	char *sharing_group;	/* the VM's sharing group, or NULL: the default one */
	bool swap_max_set;	/* host swap may hold at most swap_max_bytes of it (0: none) */
	uint64_t swap_max_bytes;
	uint64_t ram_base;	/* an incoming VM's guest-physical 0 in the host (0: any) */
};

/* Host swap (mem/swap.h): one swap file for every VM of the host. */
struct host_swap_config {
	char *path;		/* directory (an unnamed file in it) or new file; NULL: no swap */
	uint64_t bytes;		/* file size, a page multiple above 0 */
	uint64_t pool_bytes;	/* a compressed pool in memory before the file; 0: none */
	bool allow_tmpfs;	/* tests only: a tmpfs file, for a small file that fills */
	enum mem_swap_io io;	/* the I/O engine: auto (io_uring, else threads) */
	enum mem_swap_victims victims; /* which pages go: coldest chunks first, or random */
	bool kernel_store;	/* to the kernel's swap (MADV_PAGEOUT), not the file */
};

struct host_config {
	uint64_t budget_bytes;	/* 0: the host's MemAvailable at start */
	char *socket;		/* control socket path, or NULL for none */
	bool socket_optional;	/* the default path: run without it if another host has it */
	bool socket_group_set;	/* socket_gid's members may read stats on the socket */
	gid_t socket_gid;	/* the config's "socket_group", resolved */
	bool console_prefix;	/* "[name] " before every console line */
	bool seccomp_off;	/* no seccomp filters (--no-seccomp, "seccomp": false): debugging */
	/* VMs it holds at a time, its config's included ("max_vms"); 0: those and 64 more */
	unsigned int max_vms;
	enum host_dedup_mode dedup;
	enum host_access access;
	uint64_t hard_limit_bytes; /* a memory cgroup of its own limited to this (0: none) */
	enum accel_kind accel;	/* for VMs that name none; AUTO until resolved */
	double policy_interval_s; /* seconds between policy passes */
	uint32_t balloon_stats_ms; /* how often balloons ask for guest stats (0: never) */
	bool balloon_stats_set;	/* else the device's default (1 s) */
	const char *default_guest; /* guest for VMs that name none (not owned) */
	struct host_swap_config swap;
	struct host_vm_config *vms;
	unsigned int nr_vms;
	char *incoming;		/* accept VMs migrating here at this address (tcp:/unix:), or NULL */
	char *migration_secret;	/* a file holding the secret migrating hosts share, or NULL */
	char *fingerprint_key;	/* a file holding the key content fingerprints are hashed with */
	const char *restore;	/* restore the VM of this snapshot file at start (not owned), or NULL */
	const char *restore_corpus; /* that VM's corpus file (not owned), or NULL: by name */
	/*
	 * Where the corpora of VMs from outside the config are found, by name:
	 * started over the control socket, arriving, restored or cloned. NULL:
	 * such VMs cannot have one (a peer must not make this host map a file
	 * it names into a guest).
	 */
	char *corpus_dir;
};

/* Parse a JSON config file into cfg (zeroed, default_guest set); on error returns -EINVAL and writes "field: problem" to err. */
int host_config_load(const char *path, struct host_config *cfg, char *err, size_t errlen);
void host_config_free(struct host_config *cfg);
/*
 * One VM object of a config ("vms" entries, or the "start" verb's "vm"):
 * into vm (zeroed), its errors prefixed with where ("vms[2]."). 0 or
 * -EINVAL with "field: problem" in err (vm's strings then to be freed).
 */
int host_config_parse_vm(json_t *o, const char *where, struct host_vm_config *vm,
			 const char *default_guest, char *err, size_t errlen);
void host_vm_config_free(struct host_vm_config *vm);
/*
 * One VM's part of host_config_check (mem, min, guest; a kernel image, its
 * initrd and command line checked as its boot would: core/linux_boot.h),
 * errors prefixed with where.
 */
int host_config_check_vm(const struct host_vm_config *vm, const char *where, char *err,
			 size_t errlen);
/* Validation shared by the file and the command line (min <= mem, sum of min <= budget, ...). */
int host_config_check(const struct host_config *cfg, char *err, size_t errlen);

/*
 * Resolve every accelerator of cfg to one this machine has (accel_resolve):
 * the host's, then each VM's (AUTO: the host's). An image other than the
 * built-in kvmem guest runs under thread only when asked for by name: it
 * would share the VMM's address space. A Linux kernel runs only where
 * accel_linux_check allows (AUTO means kvm for it). -EINVAL/-ENODEV with
 * the problem in err.
 */
int host_config_resolve_accel(struct host_config *cfg, char *err, size_t errlen);

/* The default budget: the host's MemAvailable (/proc/meminfo) now. */
uint64_t host_default_budget(void);

/*
 * Create every VM (nothing runs), after opening the swap file when one is
 * configured. Logs and returns -errno on failure; -EBADFD: the swap file
 * cannot be made as configured (tmpfs, an existing file, no room, a
 * filesystem without O_DIRECT...), a usage error.
 */
MUST_CHECK int host_create(const struct host_config *cfg, struct host **out);
/*
 * Run until every VM has stopped or a SIGINT/SIGTERM stops them all.
 * Returns the exit status: a single VM's own status; for several VMs, 0 when
 * all of them exited 0, otherwise the first non-zero status.
 */
int host_run(struct host *h);
void host_destroy(struct host *h);

/* Control-socket verbs (core/host/control.c). Each returns a JSON reply (new ref). */
json_t *host_list_json(struct host *h);
json_t *host_stats_json(struct host *h);
/*
 * Start a VM described as in the config's "vms" (a JSON object) on the
 * running host: its accelerator resolved as the config's are, then taken in
 * (host_add_vm) and started. The object may not name files ("guest",
 * "console_log"): a control client does not choose what the VMM reads or
 * writes. 0, or -errno with why (-EINVAL a bad object, -EEXIST its name is
 * taken, -ENOSPC no room, or the creation's error).
 */
int host_start_vm(struct host *h, json_t *vm, char *why, size_t whylen);
/*
 * Stop VM `name` if it runs and give back everything it holds (its memory
 * first of all): it leaves the stats, and its name is free again. 0,
 * -ENOENT, or -EBUSY while a migration or save of it runs.
 */
int host_vm_remove(struct host *h, const char *name);
/* pause/resume/stop one VM by name: 0, -ENOENT, or -EINVAL (wrong state). */
int host_vm_pause(struct host *h, const char *name);
int host_vm_resume(struct host *h, const char *name);
int host_vm_stop(struct host *h, const char *name);
/*
 * Debug check of one VM's page states against its mappings (mem_check_states,
 * after mem_resident has moved pages the guest touched again back to
 * anon): 0 with *out the payload {"checked", "mismatches", and for a
 * mismatch "first_bad", "first_state", "first_pm"} (new ref), -ENOENT (no
 * such VM), -ENOMEM, or the check's -errno. Meaningful with the VM paused: a
 * running guest may touch a dropped page during the look.
 */
int host_vm_memcheck(struct host *h, const char *name, json_t **out);
/*
 * Have the swap-out worker swap VM `name` out until its resident memory is
 * at most `to` bytes, or nothing more can be swapped (its other pages are
 * zero, shared, or touched again as fast as they go), and wait for it up to
 * HOST_SWAP_VERB_MS (the worker goes on after). 0 with *out the payload
 * {"swapped_bytes" (towards this target), "resident_bytes", "reached",
 * "running" (the worker is still at it)} (new ref); else -errno with a
 * sentence in why: -ENOENT (no such VM), -ENODEV (no swap configured),
 * -ENOSPC (the swap file is full: the pages that did not fit stay
 * resident), -EIO (a write failed: those pages stay resident).
 */
#define HOST_SWAP_VERB_MS 5000
/*
 * Limit VM `name` to max_bytes in swap (limited false: no limit; 0: never
 * swapped): 0, or -errno with a sentence in why (-ENOENT, -ENODEV).
 */
int host_vm_swap_limit(struct host *h, const char *name, bool limited, uint64_t max_bytes,
		       char *why, size_t whylen);
int host_vm_swap(struct host *h, const char *name, uint64_t to, json_t **out, char *why,
		 size_t whylen);
/*
 * How fast VM `name` dirties its memory (QEMU's calc-dirty-rate): its
 * writes tracked for `ms` milliseconds (HOST_DIRTY_RATE_MS_MIN..MAX), the
 * pages written counted. *out: {"ms", "dirty_pages", "vmm_pages",
 * "dirty_mib_s"}. 0, or -errno with a sentence in why: -ENOENT, -ENOTSUP
 * (the accelerator cannot log guest writes), -EBUSY (tracked already).
 */
#define HOST_DIRTY_RATE_MS_MIN 100
#define HOST_DIRTY_RATE_MS_MAX 5000
int host_vm_dirty_rate(struct host *h, const char *name, unsigned int ms, json_t **out,
		       char *why, size_t whylen);
/* Set the host memory budget (bytes > 0) and run a policy pass against it now. */
/* 0, or -ERANGE: not HOST_HARD_LIMIT_GAP under the host's hard limit. */
int host_set_budget(struct host *h, uint64_t bytes);
/* Run a policy pass now (asynchronous: returns before the pass ends). */
void host_reclaim_now(struct host *h);

#endif
