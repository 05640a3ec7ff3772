/* SPDX-License-Identifier: MIT */
/*
 * kvmem command line. The only file that may exit(). Exit statuses:
 * 0 success (or the guest's own power-off status), 1 a VMM failure,
 * 2 a usage error, 3 the guest crashed.
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
#include <sys/signalfd.h>
#include <unistd.h>

#include "core/layout.h"
#include "core/log.h"
#include "core/size.h"
#include "core/vm.h"

#define EXIT_USAGE 2

#ifndef KVMEM_GUEST_DEFAULT
#define KVMEM_GUEST_DEFAULT "kvmem-guest.elf"
#endif

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvmem run --mem SIZE [--cpus N] [--guest FILE] [--append CMDLINE]\n"
		"       kvmem --help | --version\n"
		"\n"
		"run     boot one VM in the foreground, its console on stdout\n"
		"  -m, --mem SIZE      guest RAM (e.g. 512M, 2G; a bare number is MiB)\n"
		"  -c, --cpus N        vCPUs (1-%d, default 1)\n"
		"  -g, --guest FILE    static ELF guest (default: the kvmem guest)\n"
		"  -a, --append STR    guest command line (e.g. \"kvmem.wl=size=256,then=poweroff\")\n"
		"  -v, --verbose       debug logging\n",
		ABI_MAX_CPUS);
}

static int usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "kvmem: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, " (see kvmem --help)\n");
	return EXIT_USAGE;
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

static struct vm *stop_target;
static int stop_efd = -1;

static void on_vm_stopped(void *arg, struct vm *vm)
{
	uint64_t one = 1;

	(void)arg;
	(void)vm;
	if (write(stop_efd, &one, sizeof(one)) < 0)
		log_debug("eventfd write: %m");
}

/* Wait until the VM stops on its own or a SIGINT/SIGTERM asks us to stop it. */
static int wait_vm(struct vm *vm)
{
	sigset_t set;
	int sfd;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sfd = signalfd(-1, &set, SFD_CLOEXEC);
	for (;;) {
		struct pollfd pfd[2] = { { stop_efd, POLLIN, 0 }, { sfd, POLLIN, 0 } };

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[0].revents)
			break;
		if (pfd[1].revents) {
			struct signalfd_siginfo si;

			if (read(sfd, &si, sizeof(si)) == sizeof(si))
				log_info("%s: signal %u: stopping the VM", vm_name(vm), si.ssi_signo);
			vm_request_stop(vm, VM_STATUS_STOPPED);
		}
	}
	close(sfd);
	return vm_wait(vm);
}

static int cmd_run(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mem", required_argument, NULL, 'm' },
		{ "cpus", required_argument, NULL, 'c' },
		{ "guest", required_argument, NULL, 'g' },
		{ "append", required_argument, NULL, 'a' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct vm_params p = { .name = "vm0", .ncpus = 1, .cmdline = "",
			       .console_fd = STDOUT_FILENO };
	bool have_mem = false;
	struct vm *vm;
	int c, ret;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":m:c:g:a:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			if (size_parse(optarg, &p.mem_bytes) || p.mem_bytes == 0)
				return usage_error("--mem %s: not a memory size above 0", optarg);
			if (p.mem_bytes % LAYOUT_PAGE_SIZE)
				return usage_error("--mem %s: not a multiple of 4 KiB", optarg);
			if (p.mem_bytes < 4 * LAYOUT_RESERVED_END)
				return usage_error("--mem %s: below the 8 MiB minimum", optarg);
			if (p.mem_bytes > LAYOUT_MAX_RAM)
				return usage_error("--mem %s: more than a guest can map", optarg);
			have_mem = true;
			break;
		case 'c': {
			char *end;
			long n = strtol(optarg, &end, 10);

			if (*end || n < 1 || n > ABI_MAX_CPUS)
				return usage_error("--cpus %s: not a vCPU count from 1 to 64", optarg);
			p.ncpus = (unsigned int)n;
			break;
		}
		case 'g':
			p.guest_path = optarg;
			break;
		case 'a':
			p.cmdline = optarg;
			break;
		case 'v':
			log_set_level(LOG_DEBUG);
			break;
		case 'h':
			usage(stdout);
			return 0;
		case ':':
			return usage_error("%s: missing value", argv[optind - 1]);
		default:
			return usage_error("%s: unknown option", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return usage_error("%s: unexpected argument", argv[optind]);
	if (!have_mem)
		return usage_error("%s", "run: --mem is required");
	if (!p.guest_path)
		p.guest_path = default_guest();
	if (access(p.guest_path, R_OK) != 0)
		return usage_error("--guest %s: no such readable file", p.guest_path);
	if (strlen(p.cmdline) >= ABI_MAX_CMDLINE)
		return usage_error("--append: longer than %s bytes", "2047");

	stop_efd = eventfd(0, EFD_CLOEXEC);
	ret = vm_create(&p, &vm);
	if (ret) {
		if (ret == -E2BIG || ret == -ENOMEM) {
			fprintf(stderr, "kvmem: --mem: the host cannot map %llu bytes of guest RAM\n",
				(unsigned long long)p.mem_bytes);
			return EXIT_USAGE;
		}
		if (ret == -ENOEXEC)
			return EXIT_USAGE;
		return EXIT_FAILURE;
	}
	stop_target = vm;
	vm_set_stop_notify(vm, on_vm_stopped, NULL);
	ret = vm_start(vm);
	if (ret) {
		vm_destroy(vm);
		return ret == -ENOEXEC ? EXIT_USAGE : EXIT_FAILURE;
	}
	ret = wait_vm(vm);
	vm_destroy(vm);
	return ret;
}

int main(int argc, char **argv)
{
	sigset_t set;

	/* Host signals are read from a signalfd; every thread inherits the block. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("kvmem %s\n", KVMEM_VERSION);
		return 0;
	}
	if (!strcmp(argv[1], "run"))
		return cmd_run(argc - 1, argv + 1);
	return usage_error("%s: unknown command", argv[1]);
}
