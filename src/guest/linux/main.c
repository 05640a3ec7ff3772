/* SPDX-License-Identifier: MIT */
/*
 * kvmem-linux-wl: the kvmem guest's workload engine (guest/wl.c, the same
 * sources) as a Linux program, so that Linux guests run the workloads
 * kvmem guests run and print the same kvmem-wl: lines.
 *
 *   kvmem-linux-wl [SPEC]
 *
 * SPEC is a kvmem.wl= value (its keys are in guest/wl.c); without one, the
 * kvmem.wl= of the kernel command line (/proc/cmdline: how a Linux guest's
 * init, tests/linux/init.c, runs it). It runs on any Linux machine as an
 * ordinary process too, which is how it is tested. The status is the
 * kvmem guest's power-off status: 0, 1 a verification failed, 2 a bad
 * SPEC (or none), 3 out of memory, 4 no memory to run in. then=sleep and
 * then=free never end: the program gives its free pages back to Linux and
 * waits to be killed, as the kvmem guest idles until its VM is stopped.
 *
 * Its own lines start "kvmem-linux-wl: ". The memory the workload fills is
 * what Linux has available (arena.c), so size=max means all of that. What
 * only a kvmem guest has is refused as where it is missing there: corpus=
 * (no corpus); wait=balloon waits on Linux's own balloon driver (balloon.c)
 * and is refused where none is bound; grow= never grows, since memory a
 * balloon gives back goes to Linux, not to the workload: Linux hands the
 * workload the balloon's pages through deflate-on-OOM, as it faults them in.
 */
#include <stdio.h>
#include <string.h>

#include "guest/linux/arena.h"
#include "guest/linux/rt_linux.h"
#include "guest/palloc.h"
#include "guest/rt.h"
#include "guest/wl.h"

/* Linux's COMMAND_LINE_SIZE on x86 is 2048; room for more. */
#define CMDLINE_BYTES 4096

/* kvmem.wl= of the kernel command line, into *spec (a slice of a static buffer). */
static bool spec_from_cmdline(struct rt_str *spec)
{
	static char cmdline[CMDLINE_BYTES];
	FILE *f = fopen("/proc/cmdline", "r");
	size_t n;

	if (!f)
		return false;
	n = fread(cmdline, 1, sizeof(cmdline) - 1, f);
	fclose(f);
	cmdline[n] = '\0';
	return cmdline_get(cmdline, "kvmem.wl", spec);
}

int main(int argc, char **argv)
{
	struct rt_str spec;
	uint64_t bytes;
	int ret;

	rt_linux_init();
	if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
		rt_printf("usage: kvmem-linux-wl [SPEC] (SPEC: a kvmem.wl= value; without it, "
			  "kvmem.wl= of /proc/cmdline)\n");
		rt_poweroff(RT_EXIT_USAGE);
	}
	if (argc == 2) {
		spec.p = argv[1];
		spec.len = strlen(argv[1]);
	} else if (!spec_from_cmdline(&spec)) {
		rt_printf("kvmem-linux-wl: no workload: no SPEC argument and no kvmem.wl= in "
			  "/proc/cmdline\n");
		rt_poweroff(RT_EXIT_USAGE);
	}
	bytes = arena_default_bytes();
	ret = bytes ? arena_init(bytes) : -ENOMEM;
	if (ret) {
		rt_printf("kvmem-linux-wl: no memory to run in (%lu MiB available: %d)\n",
			  bytes >> 20, ret);
		rt_poweroff(RT_EXIT_BAD_BOOT);
	}
	rt_printf("kvmem-linux-wl: %u cpus, %lu MiB at %p (gpa 0x%llx)\n", rt_ncpus(), bytes >> 20,
		  arena_base(), ARENA_GPA);
	rt_printf("kvmem-linux-wl: palloc %lu MiB free of %lu MiB, bitmap %lu KiB\n",
		  rt_mib(palloc_free_pages()), rt_mib(palloc_total_pages()),
		  palloc_meta_pages() * 4);
	wl_main(spec);
}
