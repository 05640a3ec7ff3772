/* SPDX-License-Identifier: MIT */
/*
 * The kvmem guest's runtime (guest/rt.h) for the workload engine as a
 * Linux program: what the engine calls, over libc and the kernel.
 *
 * Lines go to stdout with one write(2) each, so the lines of several
 * threads never mix and a console shows each whole. Time is
 * CLOCK_MONOTONIC, a sleep is the kernel's, and the vCPUs are the online
 * CPUs (smp.c runs a thread on each). Linux drives its own balloon, so
 * there is no poll function to run and nothing to reclaim memory from.
 * A kvmem VM's generation and identity come from its boot parameters,
 * which a Linux guest does not have: 0, as in a VM booted afresh.
 *
 * Powering off ends the program with the status: the init that ran it
 * (tests/linux/init.c) ends the VM with it. Run as the init itself, the
 * program may not exit (the kernel would panic), so it powers the machine
 * off and the status is lost. Idling forever first gives the engine's
 * free pages back to Linux (arena.c), as the kvmem guest's free page
 * reporting does for its host while it idles.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>

#include "guest/linux/arena.h"
#include "guest/linux/rt_linux.h"
#include "guest/rt.h"

#define LINE_BYTES 512

uint64_t rt_phys_offset;

static uint64_t clock_base;
static unsigned ncpus;

/* The calling thread's line so far: printf's pieces become one write. */
static __thread struct {
	char buf[LINE_BYTES];
	size_t len;
} line;

static uint64_t monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * RT_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

void rt_linux_init(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	clock_base = monotonic_ns();
	ncpus = n < 1 ? 1 : n > ABI_MAX_CPUS ? ABI_MAX_CPUS : (unsigned)n;
}

unsigned rt_ncpus(void)
{
	return ncpus;
}

static void flush_line(void)
{
	const char *p = line.buf;
	size_t left = line.len;

	while (left) {
		ssize_t n = write(STDOUT_FILENO, p, left);

		if (n < 0 && errno == EINTR)
			continue;
		/* Nobody to tell: the line is lost, as on a console nobody reads. */
		if (n <= 0)
			break;
		p += n;
		left -= (size_t)n;
	}
	line.len = 0;
}

void rt_printf(const char *fmt, ...)
{
	char buf[LINE_BYTES];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	for (size_t i = 0; i < MIN((size_t)n, sizeof(buf) - 1); i++) {
		line.buf[line.len++] = buf[i];
		if (buf[i] == '\n' || line.len == sizeof(line.buf))
			flush_line();
	}
}

uint64_t rt_now_ns(void)
{
	return monotonic_ns() - clock_base;
}

void rt_sleep_ns(uint64_t ns)
{
	uint64_t now = monotonic_ns();
	uint64_t end = ns > UINT64_MAX - now ? UINT64_MAX : now + ns;
	struct timespec until = {
		.tv_sec = (time_t)(end / RT_NS_PER_SEC),
		.tv_nsec = (long)(end % RT_NS_PER_SEC),
	};

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
		;
}

void rt_poll(void)
{
}

uint64_t rt_generation(void)
{
	return 0;
}

uint64_t rt_identity(void)
{
	return 0;
}

bool rt_corpus(gpa_t *base __unused, uint64_t *bytes __unused)
{
	return false;
}

void rt_poweroff(uint32_t status)
{
	flush_line();
	if (getpid() == 1) {
		sync();
		reboot(RB_POWER_OFF);
	}
	exit((int)status);
}

void rt_idle_forever(void)
{
	arena_release_free();
	rt_printf("kvmem-linux-wl: idle, free pages given back to Linux\n");
	flush_line();
	for (;;)
		pause();
}

/* A holder may be preempted (a thread, not a vCPU): yield to it rather than spin out the slice. */
void rt_spin_lock(struct rt_spinlock *l)
{
	while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
		sched_yield();
}

void rt_spin_unlock(struct rt_spinlock *l)
{
	__atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}
