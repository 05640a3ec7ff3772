/* SPDX-License-Identifier: MIT */
/*
 * Seccomp filters per thread kind (sandbox.h). Firecracker's approach: an
 * allow list per kind of thread, installed once the thread is set up, and a
 * forbidden call ends the process with a line that names the thread kind and
 * the call.
 *
 * How the filters stack: sandbox_init gives every thread the host filter
 * (TSYNC: the union of every list below plus what only the host's own
 * threads do), so a thread that never calls sandbox_enter is still held to
 * it. sandbox_enter adds the kind's filter on top; the kernel runs both and
 * the stricter answer wins, so a thread gets exactly its kind's list. A
 * filter is inherited by the threads its thread creates, so threads are
 * created by one creator thread under the host filter alone
 * (core/thread.c), never by a thread with a narrower one.
 *
 * Threads that libraries start: liburcu's call_rcu worker is started here,
 * under the host filter, and narrowed to its kind by a callback that runs
 * on it (a later call_rcu finds it there and starts none). liburcu's hash
 * table spreads a large resize over helper threads it starts from the
 * resizing thread, which keep that thread's filters (the kinds that resize
 * the sharing index may create threads: thread_create_calls). Nothing else
 * starts threads: jemalloc's background threads are off, io_uring's workers
 * are the kernel's (what they do for a ring is not filtered: host swap's
 * ring is restricted to reads and writes, mem/swapio.c). LeakSanitizer's
 * tracer at exit is cloned by the main thread and keeps the host filter,
 * which sanitizer builds widen for it (sanitizer_calls).
 *
 * Built with Debian's libseccomp, not hand-written BPF: it checks the
 * architecture of every call (an i386 `int 0x80` or an x32 call reaches
 * other system calls under the same numbers: they are refused, not matched
 * against x86-64 numbers), and the rules below stay readable lists of names
 * with the few argument checks spelled out. Every filter is compiled once,
 * here, to BPF in memory: a thread installs its own with one system call,
 * without allocating, and the names of system calls for the report are
 * looked up here too, not in the signal handler (libseccomp's lookup
 * allocates).
 *
 * Syscall User Dispatch and seccomp on a thread-accelerator vCPU: the kernel
 * checks the dispatch range first, so a system call made by guest code (in
 * the arena) is a SIGSYS with si_code SYS_USER_DISPATCH before any filter
 * sees it, a guest crash as before; calls from the VMM's code on that thread
 * (device emulation, the signal handlers) go through the vCPU filter, and a
 * forbidden one is a SIGSYS with si_code SYS_SECCOMP, which the thread
 * accelerator's SIGSYS handler hands to sandbox_violation.
 */
#define LOG_TAG "seccomp"
#include "core/sandbox.h"

#include <errno.h>
#include <jansson.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <seccomp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/accel/accel.h"
#include "core/alloc.h"
#include "core/rcu.h"
#include "core/thread.h"
#include "core/tsan.h"

#ifndef SYS_SECCOMP
#define SYS_SECCOMP 1
#endif
#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#endif

/* --- the lists --- */

enum rule_how {
	ANY,		/* the call, whatever its arguments */
	ARG_EQ,		/* only with argument `arg` equal to `val` */
	ARG_CLEAR,	/* only with the bits `val` clear in argument `arg` */
	ARG_SET,	/* only with the bits `val` set in argument `arg` */
	OWN_PID,	/* only with argument `arg` equal to this process's id */
	IOCTL_REQ,	/* ioctl with request `val` */
	KVM_VCPU,	/* ioctl with a request a vCPU thread makes (accel_kvm_vcpu_ioctls) */
	KVM_ALL,	/* ioctl with any request the kvm accelerator makes */
	FAIL_ENOSYS,	/* not allowed, but answered ENOSYS rather than trapped */
};

struct rule {
	int nr;
	enum rule_how how;
	unsigned int arg;
	uint64_t val;
};

#define CALL(name) { SCMP_SYS(name), ANY, 0, 0 }
#define CALL_IF(name, a, v) { SCMP_SYS(name), ARG_EQ, a, (uint64_t)(v) }
#define CALL_WITHOUT(name, a, bits) { SCMP_SYS(name), ARG_CLEAR, a, (uint64_t)(bits) }
#define CALL_WITH(name, a, bits) { SCMP_SYS(name), ARG_SET, a, (uint64_t)(bits) }
#define CALL_OWN_PID(name, a) { SCMP_SYS(name), OWN_PID, a, 0 }
#define IOCTL(req) { SCMP_SYS(ioctl), IOCTL_REQ, 1, (uint64_t)(req) }
#define IOCTLS_KVM_VCPU { SCMP_SYS(ioctl), KVM_VCPU, 1, 0 }
#define IOCTLS_KVM { SCMP_SYS(ioctl), KVM_ALL, 1, 0 }
#define CALL_ENOSYS(name) { SCMP_SYS(name), FAIL_ENOSYS, 0, 0 }

/*
 * Every thread: its end, locks and condition variables, log lines (one
 * write each, the violation report too), the return from signal handlers,
 * glibc's thread exit (it blocks signals and gives the dead thread's stack
 * back with madvise), the allocator (jemalloc maps, purges and unmaps;
 * nothing executable; it falls back on brk when a mapping is refused, as at
 * vm.max_map_count, where a failed allocation is an error to report, not a
 * violation that ends the host), clocks the vDSO does not serve (thread CPU
 * time) and sleeps, glibc's qsort (it asks for the machine's memory: sysinfo), and
 * kicks of threads of this process only (pthread_kill: tgkill). And a
 * crash's own end: a fault in VMM code goes on to its default action (the
 * thread accelerator's handlers pass it on with signal(SIG_DFL) and raise,
 * as abort does), which must end in the crash, not in a report of
 * rt_sigaction.
 */
static const struct rule base_calls[] = {
	CALL(exit),
	CALL(exit_group),
	CALL(futex),
	CALL(write),
	CALL(rt_sigreturn),
	CALL(rt_sigprocmask),
	CALL(rt_sigaction),
	CALL(restart_syscall),
	CALL(madvise),
	CALL(munmap),
	CALL_WITHOUT(mmap, 2, PROT_EXEC),
	CALL(brk),
	CALL(clock_gettime),
	CALL(clock_nanosleep),
	CALL(nanosleep),
	CALL(sched_yield),
	CALL(getpid),
	CALL(gettid),
	CALL(sysinfo),
	CALL_OWN_PID(tgkill, 0),
};

/*
 * Taking pages from a running guest and giving them back (mem/txn.c and
 * the mechanisms on it): userfaultfd's ioctls, the pagemap (an fd opened
 * once, by whichever thread needs it first) and /proc/self/maps, anonymous
 * memory mapped over pages (executable: thread-accelerator RAM is), windows
 * moved in with mremap, the sharing store's frames written, punched and
 * grown; a swapped or lazily restored page read from its file or pool, or
 * through io_uring; the VMs the fault service stops when a page is lost.
 */
static const struct rule guest_mem_calls[] = {
	IOCTL(UFFDIO_COPY),
	IOCTL(UFFDIO_ZEROPAGE),
	IOCTL(UFFDIO_WAKE),
	IOCTL(UFFDIO_WRITEPROTECT),
	IOCTL(UFFDIO_REGISTER),
	IOCTL(UFFDIO_UNREGISTER),
	CALL(mmap),
	CALL(mprotect),
	CALL(mremap),
	CALL(fallocate),
	CALL(ftruncate),
	CALL(read),
	CALL(pread64),
	CALL(pwrite64),
	CALL(openat),
	CALL(close),
	CALL(newfstatat),
	CALL(fstat),
	CALL(lseek),
	CALL(io_uring_enter),
};

/*
 * Creating threads: the host's creator, and liburcu's hash table, whose
 * resize (the sharing index grows and shrinks with the frames) spreads its
 * work over helper threads it creates from the resizing thread, under that
 * thread's filters. glibc's pthread_create tries clone3 first and falls
 * back to clone on ENOSYS: clone3 passes its flags in memory, where a
 * filter cannot see them, clone in a register, so only threads, never a
 * process, are allowed. A new thread's first calls are glibc's (its robust
 * list, its rseq area).
 */
static const struct rule thread_create_calls[] = {
	CALL_WITH(clone, 0, CLONE_THREAD),
	CALL_ENOSYS(clone3),
	CALL(set_robust_list),
	CALL(rseq),
	CALL(mprotect),
};

/*
 * A vCPU, either accelerator: device emulation on its MMIO exits (eventfd
 * kicks of device workers and of the host, the balloon's stats timer, the
 * console's line read from guest memory: a swapped page of it is read from
 * its slot and its fault woken), sleeping through the paravirtual hlt,
 * stopping and kicking its VM's other vCPUs.
 */
static const struct rule vcpu_calls[] = {
	CALL(timerfd_settime),
	CALL(pread64),
	IOCTL(UFFDIO_WAKE),
};

/* KVM_RUN, and a reported exception's registers. */
static const struct rule vcpu_kvm_calls[] = {
	IOCTLS_KVM_VCPU,
};

/* Guest code runs here: its signal stack and Syscall User Dispatch, undone as the thread ends. */
static const struct rule vcpu_thread_calls[] = {
	CALL(sigaltstack),
	CALL_IF(prctl, 0, PR_SET_SYSCALL_USER_DISPATCH),
};

/* The userfaultfd service: one epoll set for every VM's faults and swap completions. */
static const struct rule uffd_calls[] = {
	CALL(epoll_wait),
	CALL(epoll_pwait),
};

/*
 * The policy: it measures (smaps_rollup, the cgroup, DAMON's files, the
 * VMM's CPU time) and runs every mechanism: zero reclaim, sharing windows,
 * balloon targets, swap-out; it waits for grace periods (liburcu's memb
 * flavour uses membarrier).
 */
static const struct rule policy_calls[] = {
	CALL(getrusage),
	CALL(membarrier),
	CALL(poll),
};

/* The hard limit's watch: the cgroup's usage, read again and again; it pauses VMs. */
static const struct rule policy_watch_calls[] = {
	CALL(openat),
	CALL(read),
	CALL(close),
	CALL(newfstatat),
	CALL(fstat),
};

/* The scanner: the store's frames, windows, the maps; grace periods. */
static const struct rule dedup_calls[] = {
	CALL(membarrier),
	CALL(poll),
	CALL(getrusage),
};

/* A virtio device worker: its kick eventfd and timer, then the device's requests. */
static const struct rule device_calls[] = {
	CALL(poll),
	CALL(ppoll),
};

/* The console writer: the host's output (maybe a terminal) and the VM's log file. */
static const struct rule console_calls[] = {
	CALL(writev),
};

/*
 * The control socket's loop: clients accepted, checked by their peer
 * credentials, read and answered; each request handed to a thread the
 * creator makes.
 */
static const struct rule control_calls[] = {
	CALL(epoll_wait),
	CALL(epoll_pwait),
	CALL(epoll_ctl),
	CALL(accept4),
	CALL(getsockopt),
	CALL(recvfrom),
	CALL(sendto),
	CALL(read),
	CALL(close),
	CALL(shutdown),
	CALL(geteuid),
};

/* The thread I/O engine of host swap (where io_uring is refused). */
static const struct rule swap_io_calls[] = {
	CALL(pread64),
	CALL(pwrite64),
};

static const struct rule swap_out_calls[] = {
	CALL(getrusage),
};

/*
 * Migration and snapshot jobs, both ways, the listener that takes arriving
 * VMs in, and clones: the peer's socket (connected by the verb), the
 * snapshot file (made unnamed, synced, linked and renamed), the VM made on
 * this side (its memory, its devices' fds, its signal handlers, under kvm
 * every KVM ioctl), the handshake's nonces, OpenSSL's first use (it reads
 * its configuration).
 */
static const struct rule migration_calls[] = {
	CALL(writev),
	CALL(accept4),
	CALL(getsockopt),
	CALL(getpeername),
	CALL(recvfrom),
	CALL(sendto),
	CALL(recvmsg),
	CALL(sendmsg),
	CALL(poll),
	CALL(ppoll),
	CALL(shutdown),
	CALL(getrandom),
	CALL(fsync),
	CALL(fdatasync),
	CALL(linkat),
	CALL(rename),
	CALL(renameat2),
	CALL(unlink),
	CALL(unlinkat),
	CALL(fstatfs),
	CALL(fcntl),
	CALL(memfd_create),
	CALL(userfaultfd),
	IOCTL(UFFDIO_API),
	CALL(eventfd2),
	CALL(timerfd_create),
	CALL(timerfd_settime),
	CALL(epoll_ctl),
	CALL(mprotect),
	CALL_IF(prctl, 0, PR_SET_SYSCALL_USER_DISPATCH),
	CALL(membarrier),
	CALL(getrusage),
	IOCTLS_KVM,
};

/* liburcu's call_rcu worker: waits (futex, a 10 ms poll), grace periods, the callbacks (frees). */
static const struct rule rcu_calls[] = {
	CALL(membarrier),
	CALL(poll),
};

/*
 * Only the host's own threads, besides every kind's calls: main (host setup
 * and teardown: the control socket, the cgroup, DAMON, host swap's file and
 * its io_uring, /dev/kvm; signals through a signalfd; releasing VMs), the
 * thread creator (a new thread's filter, its name), control verbs (VMs
 * started, migrations and saves begun: the connection to the peer), the
 * sharing index's RCU helper.
 */
static const struct rule host_calls[] = {
	CALL_IF(seccomp, 0, SECCOMP_SET_MODE_FILTER), /* each thread narrows its own */
	CALL_IF(prctl, 0, PR_SET_NAME), /* the call_rcu worker's name */
	CALL_IF(kill, 1, 0), /* is the host that left a memory cgroup alive? (asks only) */
	CALL(socket),
	CALL(bind),
	CALL(listen),
	CALL(connect),
	CALL(getsockname),
	CALL(setsockopt),
	CALL(signalfd4),
	CALL(epoll_create1),
	CALL(open),
	CALL(access),
	CALL(faccessat),
	CALL(faccessat2),
	CALL(readlink),
	CALL(statfs),
	CALL(getdents64),
	CALL(mkdir),
	CALL(mkdirat),
	CALL(rmdir),
	CALL(chmod),
	CALL(fchmod),
	CALL(fchmodat),
	CALL(fchown),
	CALL(fchownat),
	CALL(flock),
	CALL(dup),
	CALL(dup3),
	CALL(io_uring_setup),
	CALL(io_uring_register),
	CALL(geteuid),
	CALL(getuid),
	CALL(getgid),
	CALL(getegid),
	CALL(prlimit64),
	CALL(sched_getaffinity),
	CALL(uname),
};

#ifdef KVMEM_SANITIZE
/*
 * Sanitizer builds: the runtimes' own calls, on any thread (a report reads
 * the maps and the binary to symbolize, ASan gives each thread a signal
 * stack and takes it back at its end) and at exit (LeakSanitizer stops the
 * world with a ptrace'ing tracer it clones, not a thread).
 */
static const struct rule sanitizer_calls[] = {
	CALL(open),
	CALL(openat),
	CALL(read),
	CALL(pread64),
	CALL(close),
	CALL(newfstatat),
	CALL(fstat),
	CALL(lseek),
	CALL(readlink),
	CALL(mmap),
	CALL(mprotect),
	CALL(sigaltstack),
	CALL(rt_sigaction),
	CALL(prctl),
	CALL(prlimit64),
	CALL(getrlimit),
	CALL(uname),
	CALL(getdents),
	CALL(getdents64),
	CALL(sched_getaffinity),
	CALL(clone),
	CALL(ptrace),
	CALL(wait4),
	CALL(kill),
	CALL(tgkill),
	CALL(getppid),
};
#endif

struct rule_set {
	const struct rule *r;
	size_t n;
};

#define SET(a) { a, ARRAY_SIZE(a) }

struct kind {
	const char *name;		/* in the report and in KVMEM_SECCOMP_SELFTEST */
	struct rule_set sets[4];	/* after base_calls; { NULL, 0 } ends it */
};

static const struct kind kinds[SANDBOX_NR_KINDS] = {
	[SANDBOX_HOST] = { "host", { SET(host_calls), SET(thread_create_calls) } },
	[SANDBOX_VCPU_KVM] = { "vcpu-kvm", { SET(vcpu_calls), SET(vcpu_kvm_calls) } },
	[SANDBOX_VCPU_THREAD] = { "vcpu-thread", { SET(vcpu_calls), SET(vcpu_thread_calls) } },
	[SANDBOX_UFFD] = { "uffd", { SET(guest_mem_calls), SET(uffd_calls) } },
	[SANDBOX_POLICY] = { "policy", { SET(guest_mem_calls), SET(policy_calls),
					 SET(thread_create_calls) } },
	[SANDBOX_POLICY_WATCH] = { "policy-watch", { SET(policy_watch_calls) } },
	[SANDBOX_DEDUP] = { "dedup", { SET(guest_mem_calls), SET(dedup_calls),
				       SET(thread_create_calls) } },
	[SANDBOX_DEVICE] = { "device", { SET(guest_mem_calls), SET(device_calls) } },
	[SANDBOX_CONSOLE] = { "console", { SET(console_calls) } },
	[SANDBOX_CONTROL] = { "control", { SET(control_calls) } },
	[SANDBOX_SWAP_OUT] = { "swap-out", { SET(guest_mem_calls), SET(swap_out_calls) } },
	[SANDBOX_SWAP_IO] = { "swap-io", { SET(swap_io_calls) } },
	[SANDBOX_PREFETCH] = { "prefetch", { SET(guest_mem_calls) } },
	[SANDBOX_MIGRATION] = { "migration", { SET(guest_mem_calls), SET(migration_calls),
					       SET(thread_create_calls) } },
	[SANDBOX_MIG_THROTTLE] = { "migrate-throttle", { { NULL, 0 } } },
	[SANDBOX_RCU] = { "rcu", { SET(rcu_calls) } },
};

/* --- building --- */

/* Past the highest x86-64 system call number; names above it are not kept. */
#define NR_NAMED 512
#define NAME_LEN 24

static struct {
	bool on;
	struct sock_fprog prog[SANDBOX_NR_KINDS];	/* compiled once, never freed */
	char names[NR_NAMED][NAME_LEN];			/* "" where unknown */
	pid_t pid;
	int selftest;					/* a kind, or -1 */
} sb = { .selftest = -1 };

/* This thread's kind, for the report (initial-exec TLS: readable in a signal handler). */
static __thread int cur_kind __attribute__((tls_model("initial-exec")));

static int add_one(scmp_filter_ctx ctx, int nr, unsigned int nargs, struct scmp_arg_cmp cmp)
{
	int ret = nargs ? seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, cmp)
			: seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);

	/* The same call in two sets of a kind, or under a looser rule: one is enough. */
	return ret == -EEXIST ? 0 : ret;
}

/* The kernel reads a request's low 32 bits only: so does the rule. */
static int add_ioctl(scmp_filter_ctx ctx, uint64_t req)
{
	return add_one(ctx, SCMP_SYS(ioctl), 1,
		       SCMP_CMP64(1, SCMP_CMP_MASKED_EQ, 0xffffffffULL, req & 0xffffffffULL));
}

static int add_ioctls(scmp_filter_ctx ctx, const unsigned long *req, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int ret = add_ioctl(ctx, req[i]);

		if (ret)
			return ret;
	}
	return 0;
}

static int add_rule(scmp_filter_ctx ctx, const struct rule *r)
{
	switch (r->how) {
	case ANY:
		return add_one(ctx, r->nr, 0, SCMP_CMP64(0, SCMP_CMP_EQ, 0, 0));
	case ARG_EQ:
		return add_one(ctx, r->nr, 1, SCMP_CMP64(r->arg, SCMP_CMP_EQ, r->val, 0));
	case ARG_CLEAR:
		return add_one(ctx, r->nr, 1, SCMP_CMP64(r->arg, SCMP_CMP_MASKED_EQ, r->val, 0));
	case ARG_SET:
		return add_one(ctx, r->nr, 1,
			       SCMP_CMP64(r->arg, SCMP_CMP_MASKED_EQ, r->val, r->val));
	case OWN_PID:
		return add_one(ctx, r->nr, 1,
			       SCMP_CMP64(r->arg, SCMP_CMP_EQ, (uint64_t)sb.pid, 0));
	case IOCTL_REQ:
		return add_ioctl(ctx, r->val);
	case KVM_VCPU:
		return add_ioctls(ctx, accel_kvm_vcpu_ioctls, accel_kvm_nr_vcpu_ioctls);
	case KVM_ALL:
		return add_ioctls(ctx, accel_kvm_ioctls, accel_kvm_nr_ioctls);
	case FAIL_ENOSYS: {
		int ret = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), r->nr, 0);

		return ret == -EEXIST ? 0 : ret;
	}
	}
	return -EINVAL;
}

static int add_set(scmp_filter_ctx ctx, const struct rule *r, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int ret = add_rule(ctx, &r[i]);

		if (ret)
			return ret;
	}
	return 0;
}

/* Every call kind k may make: the base, its sets, the sanitizers'. */
static int add_kind(scmp_filter_ctx ctx, enum sandbox_kind k)
{
	int ret = add_set(ctx, base_calls, ARRAY_SIZE(base_calls));

	for (size_t i = 0; !ret && i < ARRAY_SIZE(kinds[k].sets) && kinds[k].sets[i].r; i++)
		ret = add_set(ctx, kinds[k].sets[i].r, kinds[k].sets[i].n);
#ifdef KVMEM_SANITIZE
	if (!ret)
		ret = add_set(ctx, sanitizer_calls, ARRAY_SIZE(sanitizer_calls));
#endif
	return ret;
}

/* The host's: every kind's calls (each thread has both filters), and its own. */
static int add_host(scmp_filter_ctx ctx)
{
	for (int k = 0; k < SANDBOX_NR_KINDS; k++) {
		int ret = add_kind(ctx, (enum sandbox_kind)k);

		if (ret)
			return ret;
	}
	return 0;
}

/* Compile a filter context to BPF in memory (libseccomp 2.5 exports to an fd only). */
static int export_bpf(scmp_filter_ctx ctx, struct sock_fprog *out)
{
	int fd = memfd_create("kvmem-seccomp", MFD_CLOEXEC);
	struct sock_filter *insns;
	off_t len;
	int ret;

	if (fd < 0)
		return -errno;
	ret = seccomp_export_bpf(ctx, fd);
	if (ret)
		goto out_close;
	len = lseek(fd, 0, SEEK_END);
	if (len <= 0 || len % (off_t)sizeof(*insns) || len / (off_t)sizeof(*insns) > BPF_MAXINSNS) {
		ret = -E2BIG;
		goto out_close;
	}
	insns = kv_zalloc((size_t)len);
	if (!insns) {
		ret = -ENOMEM;
		goto out_close;
	}
	if (pread(fd, insns, (size_t)len, 0) != len) {
		ret = -EIO;
		kv_free(insns);
		goto out_close;
	}
	out->len = (unsigned short)(len / (off_t)sizeof(*insns));
	out->filter = insns;
out_close:
	close(fd);
	return ret;
}

static int build(enum sandbox_kind k)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_TRAP);
	int ret;

	if (!ctx)
		return -ENOMEM;
	/*
	 * A call of another ABI (i386's int 0x80, x32) is trapped like any
	 * forbidden call, not killed silently; binary search over the calls,
	 * not a chain of compares (the host filter lists about 150).
	 */
	ret = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_TRAP);
	if (!ret)
		ret = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
	if (!ret)
		ret = k == SANDBOX_HOST ? add_host(ctx) : add_kind(ctx, k);
	if (!ret)
		ret = export_bpf(ctx, &sb.prog[k]);
	seccomp_release(ctx);
	return ret;
}

static void name_calls(void)
{
	for (int nr = 0; nr < NR_NAMED; nr++) {
		char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);

		if (name) {
			snprintf(sb.names[nr], NAME_LEN, "%s", name);
			free(name); /* libseccomp's, from its allocator */
		}
	}
}

static int install(enum sandbox_kind k, unsigned int flags)
{
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &sb.prog[k]))
		return -errno;
	cur_kind = (int)k;
	return 0;
}

/* --- the report --- */

/* Async-signal-safe formatting into a fixed buffer. */
struct line {
	char buf[256];
	size_t n;
};

static void put_str(struct line *l, const char *s)
{
	while (*s && l->n < sizeof(l->buf) - 1)
		l->buf[l->n++] = *s++;
}

static void put_num(struct line *l, uint64_t v, unsigned int base)
{
	char tmp[24];
	int i = 0;

	do {
		tmp[i++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (base == 16)
		put_str(l, "0x");
	while (i > 0 && l->n < sizeof(l->buf) - 1)
		l->buf[l->n++] = tmp[--i];
}

bool sandbox_is_violation(const siginfo_t *si)
{
	return si->si_signo == SIGSYS && si->si_code == SYS_SECCOMP;
}

/* Set by the first violation: the one that reports and ends the process. */
static int violated;

_Noreturn void sandbox_violation(const siginfo_t *si)
{
	int k = cur_kind;
	int nr = si->si_syscall;
	struct line l = { .n = 0 };

	/*
	 * Threads of one kind run the same code and can make the same
	 * forbidden call at once: one line says it, and the others wait for
	 * its _exit rather than racing it to the end with lines of their own.
	 */
	if (__atomic_exchange_n(&violated, 1, __ATOMIC_ACQ_REL))
		for (;;)
			nanosleep(&(struct timespec){ .tv_sec = 1 }, NULL);

	put_str(&l, "kvmem: error: seccomp: kind ");
	put_str(&l, k >= 0 && k < SANDBOX_NR_KINDS ? kinds[k].name : "?");
	put_str(&l, ": forbidden system call ");
	if (si->si_arch != AUDIT_ARCH_X86_64) {
		put_str(&l, "number ");
		put_num(&l, (uint64_t)(unsigned int)nr, 10);
		put_str(&l, " of another ABI (audit arch ");
		put_num(&l, si->si_arch, 16);
		put_str(&l, ")");
	} else {
		put_str(&l, nr >= 0 && nr < NR_NAMED && sb.names[nr][0] ? sb.names[nr] : "?");
		put_str(&l, " (");
		put_num(&l, (uint64_t)(unsigned int)nr, 10);
		put_str(&l, ")");
	}
	put_str(&l, " at ");
	put_num(&l, (uint64_t)(uintptr_t)si->si_call_addr, 16);
	put_str(&l, ": ending the process\n");
	if (write(STDERR_FILENO, l.buf, l.n) < 0) {
		/* Nothing left to tell it with. */
	}
	/*
	 * The one place outside main.c that ends the process: nothing can be
	 * unwound from inside a handler of a call the thread was not allowed
	 * to make, and exit's handlers would run on a compromised process.
	 */
	_exit(SANDBOX_EXIT_STATUS);
}

static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (sandbox_is_violation(si))
		sandbox_violation(si);
	/* Someone sent SIGSYS: what it would have done without us. */
	signal(sig, SIG_DFL);
	raise(sig);
}

/* --- self-test (not in release builds) --- */

#ifndef NDEBUG
/* A harmless call that nothing in kvmem or its runtimes makes and no list allows (checked). */
#define SELFTEST_CALL SCMP_SYS(getpgrp)

static void selftest(enum sandbox_kind k)
{
	if (sb.selftest != (int)k)
		return;
	log_info("self-test: kind %s makes a forbidden system call (getpgrp)%s",
		 kinds[k].name, sb.on ? "" : "; filters are off, so it is allowed");
	syscall(SYS_getpgrp);
}

static bool in_set(const struct rule *r, size_t n, int nr)
{
	for (size_t i = 0; i < n; i++)
		if (r[i].nr == nr)
			return true;
	return false;
}

static int selftest_setup(void)
{
	const char *want = getenv("KVMEM_SECCOMP_SELFTEST");
	bool allowed = in_set(base_calls, ARRAY_SIZE(base_calls), SELFTEST_CALL);

#ifdef KVMEM_SANITIZE
	allowed |= in_set(sanitizer_calls, ARRAY_SIZE(sanitizer_calls), SELFTEST_CALL);
#endif
	for (int k = 0; k < SANDBOX_NR_KINDS; k++)
		for (size_t i = 0; i < ARRAY_SIZE(kinds[k].sets); i++)
			allowed |= kinds[k].sets[i].r &&
				   in_set(kinds[k].sets[i].r, kinds[k].sets[i].n, SELFTEST_CALL);
	if (allowed) {
		log_err("the self-test's system call is allowed by a filter");
		return -EINVAL;
	}
	if (!want || !*want)
		return 0;
	for (int k = 0; k < SANDBOX_NR_KINDS; k++)
		if (!strcmp(want, kinds[k].name)) {
			sb.selftest = k;
			return 0;
		}
	log_err("KVMEM_SECCOMP_SELFTEST=%s: not a thread kind", want);
	return -EINVAL;
}
#else
static void selftest(enum sandbox_kind k)
{
	(void)k;
}

static int selftest_setup(void)
{
	return 0;
}
#endif

/* --- the public calls --- */

static int rcu_err = -EINPROGRESS;

/* Runs on liburcu's call_rcu worker: the one way to run code there. */
static void rcu_enter(struct kv_rcu_head *head)
{
	(void)head;
	/* liburcu leaves it unnamed: ps and the tests tell it by this. */
	pthread_setname_np(pthread_self(), "call_rcu");
	rcu_err = install(SANDBOX_RCU, 0);
	if (!rcu_err)
		selftest(SANDBOX_RCU);
}

/*
 * Start liburcu's default call_rcu worker now (the first call_rcu would,
 * from whichever thread made it, under that thread's filter) and narrow it.
 * Waits for the callback: the barrier runs only after it ran.
 */
static int start_rcu_worker(void)
{
	static struct kv_rcu_head head;

	/* Both need a registered thread; the main thread is one only for this. */
	urcu_memb_register_thread();
	kv_rcu_call(&head, rcu_enter);
	kv_rcu_barrier();
	urcu_memb_unregister_thread();
	return rcu_err;
}

#ifdef KV_TSAN
#define UNDER_TSAN true
#else
#define UNDER_TSAN false
#endif

int sandbox_init(bool on)
{
	struct sigaction sa;
	int ret;

	ret = selftest_setup();
	if (ret)
		return ret;
	/* ThreadSanitizer's runtime has a thread and calls of its own that no list covers. */
	if (!on || UNDER_TSAN) {
		log_warn("seccomp filters are off: %s", on ? "not supported under ThreadSanitizer"
			 : "asked for (--no-seccomp, or \"seccomp\": false)");
		selftest(SANDBOX_HOST);
		return 0;
	}
	sb.pid = getpid();
	name_calls();
	for (int k = 0; k < SANDBOX_NR_KINDS; k++) {
		ret = build((enum sandbox_kind)k);
		if (ret) {
			log_err("building the %s filter: %s", kinds[k].name, strerror(-ret));
			return ret;
		}
		log_debug("%s filter: %u BPF instructions", kinds[k].name, sb.prog[k].len);
	}
	/* Libraries that set up on first use do it now, under no filter: jansson's hash seed. */
	json_object_seed(0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigsys;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSYS, &sa, NULL)) {
		ret = -errno;
		log_err("the SIGSYS handler: %s", strerror(-ret));
		return ret;
	}
	/* Unprivileged filters need it; kvmem executes nothing, which is all it forbids. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) {
		ret = -errno;
		log_err("PR_SET_NO_NEW_PRIVS: %s", strerror(-ret));
		return ret;
	}
	ret = install(SANDBOX_HOST, SECCOMP_FILTER_FLAG_TSYNC);
	if (ret) {
		log_err("installing the host filter: %s (--no-seccomp runs without filters)",
			strerror(-ret));
		return ret;
	}
	sb.on = true;
	ret = thread_creator_start();
	if (ret) {
		log_err("the thread creator: %s", strerror(-ret));
		return ret;
	}
	ret = start_rcu_worker();
	if (ret) {
		log_err("the call_rcu worker's filter: %s", strerror(-ret));
		return ret;
	}
	selftest(SANDBOX_HOST);
	return 0;
}

void sandbox_enter(enum sandbox_kind kind)
{
	if (sb.on && kind != SANDBOX_HOST) {
		int ret = install(kind, 0);

		if (ret)
			log_err("a %s thread runs under the host filter only: %s", kinds[kind].name,
				strerror(-ret));
	}
	selftest(kind);
}
