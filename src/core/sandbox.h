/* SPDX-License-Identifier: MIT */
/*
 * Least privilege: seccomp filters per thread kind (docs/ARCHITECTURE.md,
 * "Seccomp filters"). sandbox_init gives the whole process the host filter
 * (every system call the VMM makes anywhere); then each thread narrows it to
 * its kind's list with sandbox_enter once it is set up. A forbidden call is
 * trapped (SIGSYS, si_code SYS_SECCOMP): one line on stderr names the thread
 * kind and the call, and the process ends with SANDBOX_EXIT_STATUS.
 *
 * Only `kvmem run` and `kvmem host` turn filters on; unit tests and the CLI
 * clients run without them.
 */
#ifndef KVMEM_CORE_SANDBOX_H
#define KVMEM_CORE_SANDBOX_H

#include <signal.h>
#include <stdbool.h>

#include "core/log.h"

/* The exit status after a forbidden system call: 128 + SIGSYS, as a shell shows a SIGSYS death. */
#define SANDBOX_EXIT_STATUS 159

enum sandbox_kind {
	SANDBOX_HOST,		/* the process-wide filter: main, creator, verbs, jobs */
	SANDBOX_VCPU_KVM,	/* a vCPU under kvm: KVM_RUN and device emulation */
	SANDBOX_VCPU_THREAD,	/* a vCPU under thread: guest code, device emulation */
	SANDBOX_UFFD,		/* the userfaultfd service */
	SANDBOX_POLICY,		/* the memory policy and the mechanisms it runs */
	SANDBOX_POLICY_WATCH,	/* the policy's hard-limit watch */
	SANDBOX_DEDUP,		/* the page sharing scanner */
	SANDBOX_DEVICE,		/* a virtio device worker */
	SANDBOX_CONSOLE,	/* a VM's console writer */
	SANDBOX_CONTROL,	/* the control socket's event loop */
	SANDBOX_SWAP_OUT,	/* host swap's swap-out worker */
	SANDBOX_SWAP_IO,	/* host swap's pread/pwrite workers */
	SANDBOX_PREFETCH,	/* a lazily restored VM's prefetcher */
	SANDBOX_MIGRATION,	/* migration and snapshot jobs, both ways; clones */
	SANDBOX_MIG_THROTTLE,	/* a migration's vCPU throttle */
	SANDBOX_RCU,		/* liburcu's call_rcu worker */
	SANDBOX_NR_KINDS
};

/*
 * Turn filters on for this process (on) or say that they are off. Builds
 * every kind's filter, installs the SIGSYS handler, gives every thread the
 * host filter, starts the thread creator (core/thread.h) and liburcu's
 * call_rcu worker under its own filter. 0 or -errno, logged. Main thread,
 * once, before any VMM thread exists.
 */
MUST_CHECK int sandbox_init(bool on);

/*
 * Narrow the calling thread's filter to `kind`'s list, once the thread is
 * set up; a no-op when filters are off. A thread whose filter cannot be
 * installed (the kernel out of memory) goes on under the host filter, with
 * an error logged. Any thread, once.
 */
void sandbox_enter(enum sandbox_kind kind);

/* A SIGSYS that a filter raised, not Syscall User Dispatch. Async-signal-safe. */
bool sandbox_is_violation(const siginfo_t *si);

/*
 * Report the forbidden system call of si (a SIGSYS with si_code
 * SYS_SECCOMP) on stderr, naming the calling thread's kind, and end the
 * process with SANDBOX_EXIT_STATUS. For the SIGSYS handlers (ours, and the
 * thread accelerator's, which owns SIGSYS on its vCPUs). Async-signal-safe.
 */
_Noreturn void sandbox_violation(const siginfo_t *si);

#endif
