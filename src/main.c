/* SPDX-License-Identifier: MIT */
/*
 * kvmem command line. The only file that may exit() (but for the seccomp
 * violation handler, core/sandbox.c). Exit statuses: 0 success (or the
 * guest's own power-off status), 1 a VMM failure, 2 a usage error, 3 the
 * guest crashed, 159 (SANDBOX_EXIT_STATUS) a thread made a system call its
 * seccomp filter forbids.
 */
#define LOG_TAG "main"
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "core/layout.h"
#include "core/linux_boot.h"
#include "core/log.h"
#include "core/sandbox.h"
#include "core/size.h"
#include "core/host/cli.h"
#include "core/host/cli_balloon.h"
#include "core/alloc.h"
#include "core/fault.h"
#include "core/host/cli_migrate.h"
#include "core/host/cli_snapshot.h"
#include "core/host/cli_swap.h"
#include "core/host/cli_migrate.h"
#include "core/host/control.h"
#include "core/host/host.h"
#include "core/host/statcli.h"
#include "mem/gm.h"
#include "mem/swap.h"

#ifndef KVMEM_GUEST_DEFAULT
#define KVMEM_GUEST_DEFAULT "kvmem-guest.elf"
#endif

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvmem run (--mem SIZE [--cpus N] [--guest FILE] [--append CMDLINE] |\n"
		"                  --mem SIZE [--cpus N] --kernel IMAGE [--initrd FILE]\n"
		"                  [--cmdline STR] | --restore FILE) [--corpus FILE]\n"
		"                 [--budget SIZE] [--socket PATH] [--dedup on|off|ksm]\n"
		"                 [--accel auto|kvm|thread] [--swap PATH[,SIZE]] [--swap-pool SIZE]\n"
		"                 [--no-seccomp]\n"
		"       kvmem host --config FILE.json [--socket PATH] [--accel auto|kvm|thread]\n"
		"                  [--incoming unix:PATH|tcp:HOST:PORT] [--migration-secret FILE]\n"
		"                  [--no-seccomp]\n"
		"       kvmem migrate --vm NAME --to ADDR [--downtime MS] [--bandwidth MIB_S]\n"
		"                     [--socket PATH]\n"
		"       kvmem save --vm NAME --to FILE [--stop] [--socket PATH]\n"
		"       kvmem restore FILE [--name NAME] [--eager] [--socket PATH]\n"
		"       kvmem rollback --vm NAME --to FILE [--socket PATH]\n"
		"       kvmem clone FILE --count N [--prefix NAME] [--socket PATH]\n"
		"       kvmem stat [--socket PATH] [--json] [--watch SECS]\n"
		"       kvmem balloon --vm NAME (--target SIZE | --auto) [--socket PATH]\n"
		"       kvmem swap --vm NAME --to SIZE [--socket PATH]\n"
		"       kvmem --help | --version | --fault-points\n"
		"\n"
		"run     boot one VM in the foreground, its console on stdout\n"
		"  -m, --mem SIZE      guest RAM (e.g. 512M, 2G; a bare number is MiB)\n"
		"  -c, --cpus N        vCPUs (1-%d, default 1)\n"
		"  -g, --guest FILE    static ELF guest (default: the kvmem guest)\n"
		"  -a, --append STR    guest command line (e.g. \"kvmem.wl=size=256,then=poweroff\")\n"
		"  -K, --kernel IMAGE  boot an x86-64 Linux kernel (bzImage) instead of a guest:\n"
		"                      hardware-virtualized KVM only (not thread, not kvm-pvm)\n"
		"  -I, --initrd FILE   the kernel's initrd\n"
		"  -L, --cmdline STR   the kernel's command line\n"
		"  -b, --budget SIZE   host memory budget (default: MemAvailable at start)\n"
		"  -s, --socket PATH   control socket (for kvmem stat)\n"
		"  -d, --dedup MODE    page sharing: on (kvmem's scanner), off, ksm (host ksmd)\n"
		"  -A, --accel NAME    what runs the guest: kvm (/dev/kvm), thread (host threads,\n"
		"                      no isolation), auto (kvm when /dev/kvm opens; default)\n"
		"  -S, --swap PATH[,SIZE]\n"
		"                      host swap: a directory on a disk (the file is made in it,\n"
		"                      unnamed) or a new file; SIZE default 4G\n"
		"  -P, --swap-pool SIZE  a compressed pool in memory before the swap file\n"
		"  -r, --restore FILE  run the VM a snapshot file holds (kvmem save), from where\n"
		"                      it was saved, instead of booting one\n"
		"  -C, --corpus FILE   a file the guest reads as read-only memory outside its RAM,\n"
		"                      where its workload takes page contents (kvmem.wl=corpus=);\n"
		"                      with --restore, the saved VM's corpus (the same content)\n"
		"  -v, --verbose       debug logging\n"
		"      --no-seccomp    no seccomp filters (debugging: a forbidden system call\n"
		"                      otherwise ends kvmem with status 159)\n"
		"\n"
		"host    run the VMs of a JSON config under one memory budget (see README.md)\n"
		"          --incoming ADDR  accept VMs migrating here (then --config is optional):\n"
		"                      unix:PATH, or tcp:HOST:PORT (tcp::PORT is loopback only)\n"
		"          --migration-secret FILE  a secret the migrating hosts share (mode 0600),\n"
		"                      needed over TCP: both peers prove they hold it\n"
		"          --no-seccomp     as for run\n"
		"swap    swap a VM of a running host out to a resident size (see kvmem swap --help)\n"
		"migrate move a running VM to another host, live (see kvmem migrate --help)\n"
		"save    write a VM to a snapshot file, live or stopping it (see kvmem save --help)\n"
		"restore start the VM of a snapshot file in a running host\n"
		"rollback put a running VM back to a snapshot of it\n"
		"clone   start many VMs from one snapshot, their memory shared from birth (kvm)\n",
		ABI_MAX_CPUS);
}

#define USAGE_HINT "see kvmem --help"

/* Long options without a short one. */
#define OPT_NO_SECCOMP 0x100

static int usage_error(const char *fmt, const char *arg)
{
	return cli_usage_error(NULL, USAGE_HINT, fmt, arg);
}

static const char *default_guest(void)
{
	static char path[PATH_MAX];
	const char *env = getenv("KVMEM_GUEST");
	ssize_t n;
	char *slash;

	if (env && *env)
		return env;
	if (access(KVMEM_GUEST_DEFAULT, R_OK) == 0)
		return KVMEM_GUEST_DEFAULT;
	/* An installed or moved binary: look next to it. */
	n = readlink("/proc/self/exe", path, sizeof(path) - 32);
	if (n > 0) {
		path[n] = '\0';
		slash = strrchr(path, '/');
		if (slash) {
			strcpy(slash + 1, "kvmem-guest.elf");
			if (access(path, R_OK) == 0)
				return path;
		}
	}
	return KVMEM_GUEST_DEFAULT;
}

#define OPT_CONTINUE (-1)

/*
 * The options every subcommand shares (-v, -h) and getopt's errors.
 * Returns OPT_CONTINUE to go on parsing, else the exit status.
 */
static int common_option(int c, char **argv)
{
	switch (c) {
	case 'v':
		log_set_level(LOG_DEBUG);
		return OPT_CONTINUE;
	case 'h':
		usage(stdout);
		return 0;
	default:
		return cli_bad_option(NULL, USAGE_HINT, c, argv);
	}
}

static int parse_dedup(const char *s, enum host_dedup_mode *out)
{
	if (!strcmp(s, "off"))
		*out = HOST_DEDUP_OFF;
	else if (!strcmp(s, "on"))
		*out = HOST_DEDUP_ON;
	else if (!strcmp(s, "ksm"))
		*out = HOST_DEDUP_KSM;
	else
		return -EINVAL;
	return 0;
}

/*
 * --swap PATH[,SIZE]: the text after the last comma is the size (so a path
 * with a comma in it needs the size after it). 0, or a usage error's status.
 */
static int parse_swap_flag(const char *arg, struct host_swap_config *sw, char *path, size_t plen)
{
	const char *comma = strrchr(arg, ',');
	size_t n = comma ? (size_t)(comma - arg) : strlen(arg);
	char err[160];

	if (n == 0)
		return usage_error("--swap %s: no path (PATH[,SIZE])", arg);
	if (n >= plen)
		return usage_error("--swap %s: the path is too long", arg);
	memcpy(path, arg, n);
	path[n] = '\0';
	sw->path = path;
	sw->bytes = MEM_SWAP_DEFAULT_BYTES;
	if (comma) {
		if (size_text("--swap SIZE", comma + 1, SIZE_MAX_BYTES, &sw->bytes, err,
			      sizeof(err)))
			return usage_error("%s", err);
		if (sw->bytes == 0 || sw->bytes % MEM_PAGE_SIZE)
			return usage_error("--swap %s: the size must be a multiple of 4 KiB above 0",
					   arg);
	}
	return 0;
}

/*
 * Every VM holds several descriptors (its userfaultfd, its devices'
 * eventfds and timerfds, and under KVM its VM and vCPU fds), so the usual
 * soft limit of 1024 would stop a host at a few hundred VMs. Nothing here
 * uses select(), whose fd_set is what that soft limit protects: take the
 * hard limit.
 */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl))
			log_debug("setrlimit(RLIMIT_NOFILE): %m");
	}
}

/*
 * Create the host, run it to the end, map errors to exit statuses. Every
 * failure of host_create and host_run has been named on stderr already.
 */
static int run_host(struct host_config *cfg)
{
	char err[256];
	struct host *h;
	int ret;

	if (host_config_check(cfg, err, sizeof(err)))
		return usage_error("%s", err);
	if (host_config_resolve_accel(cfg, err, sizeof(err)))
		return usage_error("%s", err);
	/* Before the host starts any thread: each inherits the host filter. */
	if (sandbox_init(!cfg->seccomp_off))
		return EXIT_FAILURE;
	if (!cfg->socket) {
		/* Not owned: reset below so host_config_free never frees it. */
		cfg->socket = (char *)KVMEM_DEFAULT_SOCKET;
		cfg->socket_optional = true;
	}
	raise_fd_limit();
	ret = host_create(cfg, &h);
	if (ret) {
		/*
		 * More RAM or VMs than the host can map, a bad image, or a swap file
		 * that cannot be made where and as asked: a usage error.
		 */
		if (ret == -E2BIG || ret == -ENOMEM || ret == -ENOEXEC || ret == -EBADFD)
			ret = CLI_EXIT_USAGE;
		else
			ret = EXIT_FAILURE;
	} else {
		ret = host_run(h);
		host_destroy(h);
	}
	if (cfg->socket_optional)
		cfg->socket = NULL;
	return ret;
}

/*
 * run --kernel: the image, initrd and command line checked as the boot
 * would check them, so a bad one is one line and status 2 before anything
 * starts. 0, or the usage error's status.
 */
static int check_kernel(struct host_vm_config *vm, const char *cmdline)
{
	char why[512];

	if (vm->guest)
		return usage_error("%s", "--kernel and --guest: a VM boots a guest image or a "
				   "Linux kernel, not both");
	if (vm->append)
		return usage_error("%s", "--append is the kvmem guest's command line: a kernel's "
				   "is --cmdline");
	vm->append = (char *)cmdline;
	if (linux_boot_check(vm->kernel, vm->initrd, cmdline ? cmdline : "", vm->mem_bytes, why,
			     sizeof(why)))
		return usage_error("%s", why);
	return 0;
}

static int cmd_run(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mem", required_argument, NULL, 'm' },
		{ "cpus", required_argument, NULL, 'c' },
		{ "guest", required_argument, NULL, 'g' },
		{ "append", required_argument, NULL, 'a' },
		{ "socket", required_argument, NULL, 's' },
		{ "budget", required_argument, NULL, 'b' },
		{ "dedup", required_argument, NULL, 'd' },
		{ "accel", required_argument, NULL, 'A' },
		{ "swap", required_argument, NULL, 'S' },
		{ "swap-pool", required_argument, NULL, 'P' },
		{ "restore", required_argument, NULL, 'r' },
		{ "corpus", required_argument, NULL, 'C' },
		{ "kernel", required_argument, NULL, 'K' },
		{ "initrd", required_argument, NULL, 'I' },
		{ "cmdline", required_argument, NULL, 'L' },
		{ "no-seccomp", no_argument, NULL, OPT_NO_SECCOMP },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static char swap_path[PATH_MAX], restore_path[PATH_MAX];
	struct host_vm_config vm = { .name = "vm0", .cpus = 1, .shares = 1000 };
	struct host_config cfg = { .vms = &vm, .nr_vms = 1, .policy_interval_s = 1.0 };
	bool have_mem = false;
	const char *cmdline = NULL;
	char err[160];
	int c, ret;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":m:c:g:a:s:b:d:A:S:P:r:C:K:I:L:vh", opts, NULL)) !=
	       -1) {
		switch (c) {
		case 'm':
			if (size_text("--mem", optarg, SIZE_MAX_BYTES, &vm.mem_bytes, err,
				      sizeof(err)))
				return usage_error("%s", err);
			if (vm.mem_bytes == 0)
				return usage_error("--mem %s: not a memory size above 0", optarg);
			if (vm.mem_bytes % LAYOUT_PAGE_SIZE)
				return usage_error("--mem %s: not a multiple of 4 KiB", optarg);
			if (vm.mem_bytes < 4 * LAYOUT_RESERVED_END)
				return usage_error("--mem %s: below the 8 MiB minimum", optarg);
			if (vm.mem_bytes > LAYOUT_MAX_RAM)
				return usage_error("--mem %s: more than a guest can map", optarg);
			have_mem = true;
			break;
		case 'c': {
			char *end;
			long n = strtol(optarg, &end, 10);

			if (*end || n < 1 || n > ABI_MAX_CPUS)
				return usage_error("--cpus %s: not a vCPU count from 1 to 64", optarg);
			vm.cpus = (uint32_t)n;
			break;
		}
		case 'g':
			vm.guest = optarg;
			vm.guest_explicit = true;
			break;
		case 'a':
			vm.append = optarg;
			break;
		case 'K':
			vm.kernel = optarg;
			break;
		case 'I':
			vm.initrd = optarg;
			break;
		case 'L':
			cmdline = optarg;
			break;
		case 'C':
			if (access(optarg, R_OK))
				return usage_error("--corpus %s: no such readable file", optarg);
			vm.corpus = optarg;
			break;
		case 's':
			cfg.socket = optarg;
			break;
		case 'b':
			if (size_text("--budget", optarg, SIZE_MAX_BYTES, &cfg.budget_bytes, err,
				      sizeof(err)))
				return usage_error("%s", err);
			if (cfg.budget_bytes == 0)
				return usage_error("--budget %s: not a memory size above 0", optarg);
			break;
		case 'd':
			if (parse_dedup(optarg, &cfg.dedup))
				return usage_error("--dedup %s: must be on, off or ksm", optarg);
			break;
		case 'A':
			if (accel_parse(optarg, &cfg.accel))
				return usage_error("--accel %s: must be auto, kvm or thread", optarg);
			break;
		case 'S':
			ret = parse_swap_flag(optarg, &cfg.swap, swap_path, sizeof(swap_path));
			if (ret)
				return ret;
			break;
		case 'r':
			if (!realpath(optarg, restore_path))
				return usage_error("--restore %s: no such file", optarg);
			cfg.restore = restore_path;
			break;
		case OPT_NO_SECCOMP:
			cfg.seccomp_off = true;
			break;
		case 'P':
			if (size_text("--swap-pool", optarg, SIZE_MAX_BYTES, &cfg.swap.pool_bytes, err,
				      sizeof(err)))
				return usage_error("%s", err);
			if (cfg.swap.pool_bytes == 0 || cfg.swap.pool_bytes % MEM_PAGE_SIZE)
				return usage_error("--swap-pool %s: not a multiple of 4 KiB above 0",
						   optarg);
			break;
		default:
			ret = common_option(c, argv);
			if (ret != OPT_CONTINUE)
				return ret;
		}
	}
	if (optind < argc)
		return usage_error("%s: unexpected argument", argv[optind]);
	cfg.default_guest = default_guest();
	if (cfg.restore) {
		/* The VM is the file's: its memory, vCPUs and command line are set already. */
		if (have_mem || vm.guest || vm.append || vm.kernel || vm.initrd || cmdline)
			return usage_error("%s", "run --restore: --mem, the guest or kernel and its "
					   "command line come from the snapshot file");
		cfg.nr_vms = 0;
		cfg.restore_corpus = vm.corpus;
		if (!cfg.budget_bytes)
			cfg.budget_bytes = host_default_budget();
		return run_host(&cfg);
	}
	if (!have_mem)
		return usage_error("%s", "run: --mem is required");
	if (cfg.swap.pool_bytes && !cfg.swap.path)
		return usage_error("%s", "--swap-pool: needs --swap PATH (the pool is in front of "
				   "the swap file)");
	if (vm.kernel) {
		ret = check_kernel(&vm, cmdline);
		if (ret)
			return ret;
	} else {
		if (vm.initrd)
			return usage_error("%s", "--initrd: only with --kernel");
		if (cmdline)
			return usage_error("%s", "--cmdline: only with --kernel (the kvmem guest's "
					   "command line is --append)");
		if (!vm.guest)
			vm.guest = (char *)default_guest();
		if (access(vm.guest, R_OK) != 0)
			return usage_error("--guest %s: no such readable file", vm.guest);
		if (vm.append && strlen(vm.append) >= ABI_MAX_CMDLINE)
			return usage_error("--append: longer than %s bytes", "2047");
	}
	if (!cfg.budget_bytes)
		cfg.budget_bytes = host_default_budget();
	return run_host(&cfg);
}

static int cmd_host(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'f' },
		{ "socket", required_argument, NULL, 's' },
		{ "accel", required_argument, NULL, 'A' },
		{ "incoming", required_argument, NULL, 'i' },
		{ "migration-secret", required_argument, NULL, 'k' },
		{ "no-seccomp", no_argument, NULL, OPT_NO_SECCOMP },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct host_config cfg = { .policy_interval_s = 1.0 };
	const char *path = NULL, *sock = NULL, *incoming = NULL, *secret = NULL;
	enum accel_kind accel = ACCEL_AUTO;
	bool have_accel = false, no_seccomp = false;
	char err[512];
	int c, ret;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":f:s:A:i:k:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			path = optarg;
			break;
		case 'i':
			incoming = optarg;
			break;
		case 'k':
			secret = optarg;
			break;
		case OPT_NO_SECCOMP:
			no_seccomp = true;
			break;
		case 's':
			sock = optarg;
			break;
		case 'A':
			if (accel_parse(optarg, &accel))
				return usage_error("--accel %s: must be auto, kvm or thread", optarg);
			have_accel = true;
			break;
		default:
			ret = common_option(c, argv);
			if (ret != OPT_CONTINUE)
				return ret;
		}
	}
	if (optind < argc)
		return usage_error("%s: unexpected argument", argv[optind]);
	if (!path && !incoming)
		return usage_error("%s", "host: --config FILE is required (or --incoming ADDR)");
	cfg.default_guest = default_guest();
	/* Without a file, a host's defaults are the file's: VMs arriving share its console. */
	cfg.console_prefix = true;
	if (path && host_config_load(path, &cfg, err, sizeof(err))) {
		fprintf(stderr, "kvmem: %s: %s\n", path, err);
		host_config_free(&cfg);
		return CLI_EXIT_USAGE;
	}
	if (incoming) {
		kv_free(cfg.incoming);
		cfg.incoming = kv_strdup(incoming);
	}
	if (secret) {
		kv_free(cfg.migration_secret);
		cfg.migration_secret = kv_strdup(secret);
	}
	if (sock) {
		free(cfg.socket);
		cfg.socket = strdup(sock);
	}
	if (have_accel)
		cfg.accel = accel;
	if (no_seccomp)
		cfg.seccomp_off = true;
	if (!cfg.budget_bytes)
		cfg.budget_bytes = host_default_budget();
	/* A budget left to MemAvailable stays under a hard limit that is given. */
	if (cfg.hard_limit_bytes && cfg.budget_bytes + HOST_HARD_LIMIT_GAP > cfg.hard_limit_bytes)
		cfg.budget_bytes = cfg.hard_limit_bytes - HOST_HARD_LIMIT_GAP;
	ret = run_host(&cfg);
	host_config_free(&cfg);
	return ret;
}

/*
 * KVMEM_FAULTS (core/fault.h) is armed before any command runs. A bad spec
 * is a usage error; a build without fault injection says it ignores one.
 */
static int faults_from_env(void)
{
	char why[192];
	int ret = fault_configure(getenv("KVMEM_FAULTS"), why, sizeof(why));

	if (ret == -ENOTSUP)
		fprintf(stderr, "kvmem: warning: KVMEM_FAULTS is ignored: this kvmem is built "
				"without fault injection (-Dfault_injection=true)\n");
	else if (ret)
		return usage_error("KVMEM_FAULTS: %s", why);
	return OPT_CONTINUE;
}

/* Every fault injection point, one a line: name, default errno, what fails. */
static int print_fault_points(void)
{
	if (!fault_enabled()) {
		fprintf(stderr, "kvmem: built without fault injection (-Dfault_injection=true): "
				"no fault points\n");
		return 1;
	}
	for (unsigned int i = 0; i < FAULT_NR_POINTS; i++) {
		struct fault_info fi;

		fault_get((enum fault_point)i, &fi);
		printf("%-27s %-11s %s\n", fi.name, strerrorname_np(fi.default_err), fi.what);
	}
	return 0;
}

int main(int argc, char **argv)
{
	sigset_t set;
	int ret;

	/* Host signals are read from a signalfd; every thread inherits the block. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	if (argc < 2) {
		usage(stderr);
		return CLI_EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("kvmem %s\n", KVMEM_VERSION);
		return 0;
	}
	if (!strcmp(argv[1], "--fault-points"))
		return print_fault_points();
	ret = faults_from_env();
	if (ret != OPT_CONTINUE)
		return ret;
	if (!strcmp(argv[1], "run"))
		return cmd_run(argc - 1, argv + 1);
	if (!strcmp(argv[1], "host"))
		return cmd_host(argc - 1, argv + 1);
	if (!strcmp(argv[1], "balloon"))
		return cli_balloon_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "swap"))
		return cli_swap_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "migrate"))
		return cli_migrate_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "save"))
		return cli_save_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "restore"))
		return cli_restore_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "rollback"))
		return cli_rollback_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "clone"))
		return cli_clone_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "stat"))
		return statcli_main(argc - 1, argv + 1);
	return usage_error("%s: unknown command", argv[1]);
}
