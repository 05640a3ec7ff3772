/* SPDX-License-Identifier: MIT */
/*
 * The thread accelerator: the guest's code runs on the vCPU's own host
 * thread, directly on the guest-RAM mapping of src/mem (one reservation per
 * VM, executable, at host address phys_base + gpa), so every memory
 * mechanism (userfaultfd write-protect, zero reclaim, dedup frames and
 * windows, balloon discards, pagemap accounting) sees the same accesses it
 * sees under KVM. It gives no isolation: the guest shares the VMM's address
 * space. It is for the kvmem guest, which it runs unchanged but for an offset
 * (guest/abi.h).
 *
 * Entering and leaving guest code (thread_entry.S) mirrors KVM_RUN: the
 * guest's general registers, flags, MXCSR and x87 control word live in this
 * thread's thread_tls between runs; vector and x87 data registers are not
 * kept across exits (the kvmem guest uses general registers only).
 *
 * How the guest leaves:
 *   - MMIO: it calls accel_thread_mmio (boot params' mmio_call) instead of
 *     touching a device register; that is an MMIO exit, dispatched on the
 *     bus by the vCPU loop like KVM's, and the next run returns the result.
 *   - Kicks: the kick signal (vcpu.c) lands in guest code while the kick is armed:
 *     the handler saves the guest's registers from the signal context and
 *     rewrites the context so the signal returns onto the host stack, as if
 *     accel_thread_enter had returned -EINTR. A kick that lands in VMM code
 *     (which may hold the console lock, a VM lock or the allocator's) does
 *     nothing there: the armed kick is seen before the guest is entered
 *     again, and a kick in the restartable entry sequence rewinds it.
 *   - Faults: SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGTRAP raised while this
 *     thread runs guest code become the guest-crash report KVM gives (vector
 *     from the trap number, error code, faulting address converted to
 *     guest-physical). The same signals anywhere else are a VMM crash: they
 *     go to the handler installed before ours (the sanitizers'), or kill the
 *     process as they would have.
 *   - System calls: the guest may not make any. Syscall User Dispatch
 *     (PR_SET_SYSCALL_USER_DISPATCH) turns every system call made from below
 *     MEM_ARENA_END into SIGSYS, which is a guest crash. All host code
 *     (the executable, libraries, vDSO, signal restorer) lies above it (see
 *     mem/memmap.h), so the host's own system calls are never dispatched and
 *     no selector has to be flipped around calls or in signal handlers.
 *     They go through the vCPU's seccomp filter instead (core/sandbox.h);
 *     the kernel dispatches before it filters, so a guest's call never
 *     reaches the filter, and a SIGSYS with si_code SYS_SECCOMP (a VMM call
 *     on this thread the filter refuses) is never the guest's.
 *
 * Every handler runs on a per-vCPU sigaltstack, never on the guest's small
 * stack in guest RAM (which may be write-protected by reclaim).
 */
#define LOG_TAG "thread"
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "core/accel/accel.h"
#include "core/accel/thread_state.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/sandbox.h"
#include "core/vm_internal.h"
#include "mem/memmap.h"

#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#endif
#ifndef PR_SYS_DISPATCH_OFF
#define PR_SYS_DISPATCH_OFF 0
#define PR_SYS_DISPATCH_ON 1
#endif
#ifndef SYS_USER_DISPATCH
#define SYS_USER_DISPATCH 2
#endif

/* Everything from MEM_ARENA_END up may make system calls. */
#define DISPATCH_ALLOWED_LEN (0x00ff000000000000ULL - MEM_ARENA_END)

#define ALTSTACK_SIZE (256 * 1024)	/* the sanitizers' reports run on it too */

#define EXIT_KICKED 0
#define EXIT_MMIO 1
#define EXIT_SIGNAL 2

/* Flags host code must not run with: trap, direction, alignment check. */
#define RFLAGS_TF 0x100ULL
#define RFLAGS_DF 0x400ULL
#define RFLAGS_AC 0x40000ULL
#define RFLAGS_KEPT 0x40cd5ULL	/* CF PF AF ZF SF DF OF AC */
#define RFLAGS_FIXED 0x202ULL	/* reserved bit 1, IF */

#define MXCSR_DEFAULT 0x1f80
#define FCW_DEFAULT 0x37f

/*
 * One vCPU thread's guest context. thread_entry.S reads and writes the
 * first part at fixed offsets (checked below).
 */
struct thread_tls {
	uint64_t gpr[16];
	uint64_t rip;
	uint64_t rflags;
	uint64_t host_sp;		/* host stack of the running accel_thread_enter */
	uint32_t *kick;			/* the vCPU's kick flag (other threads arm it) */
	uint32_t in_guest;		/* this thread runs guest code now */
	uint32_t guest_mxcsr;
	uint32_t host_mxcsr;
	uint16_t guest_fcw;
	uint16_t host_fcw;
	uint64_t mmio_gpa;		/* the last MMIO call's arguments */
	uint64_t mmio_val;
	uint64_t mmio_op;
	/* C only from here. */
	struct thread_vcpu *cpu;	/* NULL on threads that run no thread-accelerator guest */
	struct accel_exception exc;	/* why a signal left the guest */
};

_Static_assert(offsetof(struct thread_tls, rip) == 128, "thread_entry.S T_RIP");
_Static_assert(offsetof(struct thread_tls, rflags) == 136, "thread_entry.S T_RFLAGS");
_Static_assert(offsetof(struct thread_tls, host_sp) == 144, "thread_entry.S T_HOST_SP");
_Static_assert(offsetof(struct thread_tls, kick) == 152, "thread_entry.S T_KICK");
_Static_assert(offsetof(struct thread_tls, in_guest) == 160, "thread_entry.S T_IN_GUEST");
_Static_assert(offsetof(struct thread_tls, guest_mxcsr) == 164, "thread_entry.S T_GUEST_MXCSR");
_Static_assert(offsetof(struct thread_tls, host_mxcsr) == 168, "thread_entry.S T_HOST_MXCSR");
_Static_assert(offsetof(struct thread_tls, guest_fcw) == 172, "thread_entry.S T_GUEST_FCW");
_Static_assert(offsetof(struct thread_tls, host_fcw) == 174, "thread_entry.S T_HOST_FCW");
_Static_assert(offsetof(struct thread_tls, mmio_gpa) == 176, "thread_entry.S T_MMIO_GPA");
_Static_assert(offsetof(struct thread_tls, mmio_op) == 192, "thread_entry.S T_MMIO_OP");

/* Local-exec: thread_entry.S addresses it as %fs:accel_thread_tls@tpoff. */
__thread struct thread_tls accel_thread_tls __attribute__((tls_model("local-exec")));

long accel_thread_enter(void);
uint64_t accel_thread_mmio(uint64_t gpa, uint64_t value, uint64_t op);
void accel_thread_host_return(void);
/* The C halves of the signal handlers, entered from thread_entry.S with AC clear. */
void accel_thread_kick_landed(int sig, siginfo_t *si, void *ucv);
void accel_thread_fault(int sig, siginfo_t *si, void *ucv);
void accel_thread_fault_entry(int sig, siginfo_t *si, void *ucv);
extern const char accel_thread_resume_start[], accel_thread_resume_end[];

struct thread_vm {
	uint8_t *phys_base;	/* host address of guest-physical 0 */
	uint64_t span;		/* guest-physical span: RAM, the MMIO hole */
};

struct thread_vcpu {
	struct vcpu *vcpu;
	uint32_t kick;			/* armed by set_kick (any thread) */
	struct accel_entry entry;	/* where the first run starts */
	bool restored;			/* start from `restore`, not from entry */
	struct thread_state restore;
	struct thread_tls *tls;		/* the vCPU thread's, once started (read while parked) */
	bool started;			/* this thread's context is set up (vCPU thread only) */
	bool mmio_read;			/* the last exit was an MMIO read: its result goes to rax */
	uint8_t mmio_data[8];
	void *altstack;			/* ALTSTACK_SIZE, with a guard page below */
	stack_t old_altstack;		/* what the thread had (the sanitizers' own) */
};

static struct thread_vm *tvm_of(const struct vm *vm)
{
	return vm->accel_vm;
}

static struct thread_vcpu *tcpu_of(const struct vcpu *vcpu)
{
	return vcpu->accel_vcpu;
}

/* --- signals --- */

static const int fault_signals[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS };
static struct sigaction old_actions[NSIG];

/*
 * Not the guest's: hand the signal to whoever had it before us, or let it
 * do what it would have done without us. A fault raised by an instruction
 * repeats when we return; a trap or a signal sent by someone does not, so
 * it is raised again.
 */
static void chain(int sig, siginfo_t *si, void *uc)
{
	const struct sigaction *old = &old_actions[sig];

	if ((old->sa_flags & SA_SIGINFO) && old->sa_sigaction) {
		old->sa_sigaction(sig, si, uc);
		return;
	}
	if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
		old->sa_handler(sig);
		return;
	}
	signal(sig, SIG_DFL);
	if (si->si_code <= 0 || sig == SIGTRAP || sig == SIGSYS)
		raise(sig);
}

static const int greg_of[16] = {
	[R_AX] = REG_RAX, [R_CX] = REG_RCX, [R_DX] = REG_RDX, [R_BX] = REG_RBX,
	[R_SP] = REG_RSP, [R_BP] = REG_RBP, [R_SI] = REG_RSI, [R_DI] = REG_RDI,
	[R_8] = REG_R8,	  [R_9] = REG_R9,   [R_10] = REG_R10, [R_11] = REG_R11,
	[R_12] = REG_R12, [R_13] = REG_R13, [R_14] = REG_R14, [R_15] = REG_R15,
};

/*
 * Save the guest's state from the signal context and make the signal return
 * to accel_thread_host_return on the host stack, with `why` for
 * accel_thread_enter to return. Async-signal-safe: stores only.
 */
static void leave_guest(ucontext_t *uc, long why)
{
	struct thread_tls *t = &accel_thread_tls;
	greg_t *g = uc->uc_mcontext.gregs;

	for (int i = 0; i < 16; i++)
		t->gpr[i] = (uint64_t)g[greg_of[i]];
	t->rip = (uint64_t)g[REG_RIP];
	t->rflags = ((uint64_t)g[REG_EFL] & RFLAGS_KEPT) | RFLAGS_FIXED;
	if (uc->uc_mcontext.fpregs) {
		t->guest_mxcsr = uc->uc_mcontext.fpregs->mxcsr;
		t->guest_fcw = uc->uc_mcontext.fpregs->cwd;
	}
	t->in_guest = 0;
	g[REG_RSP] = (greg_t)t->host_sp;
	g[REG_RIP] = (greg_t)(uintptr_t)accel_thread_host_return;
	g[REG_RAX] = why;
	g[REG_EFL] &= ~(greg_t)(RFLAGS_TF | RFLAGS_DF | RFLAGS_AC);
}

/*
 * A host address as the guest sees it: guest-physical from the VM's base to
 * the end of the guard gap after its span (a store past everything the guest
 * has lands there, and KVM would report that gpa too).
 */
static uint64_t to_guest(const struct thread_vm *tv, uint64_t addr, bool *outside)
{
	uint64_t base = (uint64_t)(uintptr_t)tv->phys_base;

	*outside = addr < base || addr - base >= tv->span + MEM_GUARD;
	return *outside ? addr : addr - base;
}

static bool in_resume_sequence(uint64_t rip)
{
	return rip >= (uintptr_t)accel_thread_resume_start &&
	       rip < (uintptr_t)accel_thread_resume_end;
}

void accel_thread_kick_landed(int sig, siginfo_t *si, void *ucv)
{
	struct thread_tls *t = &accel_thread_tls;
	ucontext_t *uc = ucv;
	greg_t *g = uc->uc_mcontext.gregs;

	(void)sig;
	(void)si;
	if (!t->cpu)
		return; /* a kvm vCPU: the signal's only job was to interrupt KVM_RUN */
	if (in_resume_sequence((uint64_t)g[REG_RIP])) {
		/* Between the kick check and the guest: check again. */
		g[REG_RIP] = (greg_t)(uintptr_t)accel_thread_resume_start;
		g[REG_RSP] = (greg_t)t->host_sp;
		t->in_guest = 0;
		return;
	}
	if (t->in_guest && __atomic_load_n(t->kick, __ATOMIC_SEQ_CST))
		leave_guest(uc, EXIT_KICKED);
}

/* True when the signal interrupted a handler running on this vCPU's signal stack. */
static bool on_altstack(const struct thread_tls *t, const greg_t *g)
{
	uint64_t sp = (uint64_t)g[REG_RSP], base = (uint64_t)(uintptr_t)t->cpu->altstack;

	return sp >= base && sp - base <= ALTSTACK_SIZE;
}

void accel_thread_fault(int sig, siginfo_t *si, void *ucv)
{
	struct thread_tls *t = &accel_thread_tls;
	ucontext_t *uc = ucv;
	greg_t *g = uc->uc_mcontext.gregs;
	const struct thread_vm *tv;
	struct accel_exception *e = &t->exc;

	/* A filter's SIGSYS is never the guest's: its calls are dispatched before filters run. */
	if (sandbox_is_violation(si))
		sandbox_violation(si);
	/*
	 * Only what the kernel raised for guest code is the guest's: never a
	 * fault of the kick handler, which runs with in_guest still set until it
	 * leaves the guest (guest code never runs on the signal stack).
	 */
	if (!t->cpu || !t->in_guest || si->si_code <= 0 || on_altstack(t, g)) {
		chain(sig, si, ucv);
		return;
	}
	tv = tvm_of(t->cpu->vcpu->vm);
	memset(e, 0, sizeof(*e));
	e->cpl = 3;
	e->rip = to_guest(tv, (uint64_t)g[REG_RIP], &e->rip_outside);
	e->rsp = to_guest(tv, (uint64_t)g[REG_RSP], &(bool){ false });
	if (sig == SIGSYS && si->si_code == SYS_USER_DISPATCH) {
		e->syscall = true;
		e->syscall_nr = si->si_syscall;
	} else {
		e->vector = (unsigned int)g[REG_TRAPNO];
		e->error_code = (uint64_t)g[REG_ERR];
		/* cr2 as KVM would report it: only a page fault (or a bus error) has one. */
		if (e->vector == 14 || sig == SIGBUS)
			e->address = to_guest(tv, (uint64_t)(uintptr_t)si->si_addr,
					      &e->address_outside);
	}
	leave_guest(uc, EXIT_SIGNAL);
}

static pthread_once_t signals_once = PTHREAD_ONCE_INIT;

static void install_fault_handlers(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = accel_thread_fault_entry;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	/*
	 * A kick must not land in the handler while it still reads as the
	 * guest's (in_guest): it would take the handler's own context for the
	 * guest's. Held until the handler has left the guest, it finds none.
	 */
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, ACCEL_KICK_SIGNAL);
	for (size_t i = 0; i < ARRAY_SIZE(fault_signals); i++)
		sigaction(fault_signals[i], &sa, &old_actions[fault_signals[i]]);
}

/* --- availability and the TSC --- */

static bool above_arena(uint64_t addr)
{
	return addr >= MEM_ARENA_END;
}

int accel_thread_check(char *why, size_t whylen)
{
	uint64_t stack = (uint64_t)(uintptr_t)&why;
	uint64_t vdso = getauxval(AT_SYSINFO_EHDR);
	uint64_t code = (uint64_t)(uintptr_t)accel_thread_enter;
	uint64_t libc = (uint64_t)(uintptr_t)clock_gettime;

	if (prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_OFF, 0, 0, 0) < 0) {
		snprintf(why, whylen, "the kernel has no Syscall User Dispatch (%s), which keeps "
			 "guest system calls from reaching the host", strerror(errno));
		return -ENODEV;
	}
	if (!above_arena(code) || !above_arena(libc) || !above_arena(stack) ||
	    (vdso && !above_arena(vdso))) {
		snprintf(why, whylen, "host code or stacks lie below 0x%llx (code 0x%llx, libc "
			 "0x%llx, stack 0x%llx), where guest code runs",
			 (unsigned long long)MEM_ARENA_END, (unsigned long long)code,
			 (unsigned long long)libc, (unsigned long long)stack);
		return -ENODEV;
	}
	return 0;
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static uint64_t tsc_khz;
static pthread_once_t tsc_once = PTHREAD_ONCE_INIT;

/*
 * CLOCK_MONOTONIC_RAW and the TSC read at one moment: the clock read is
 * bracketed by two TSC reads, and of a few tries the tightest bracket is
 * kept (a thread preempted inside one would skew the pair).
 */
static void clock_and_tsc(uint64_t *ns, uint64_t *tsc)
{
	uint64_t best = UINT64_MAX;

	for (int i = 0; i < 5; i++) {
		uint64_t a = rdtsc(), t = kv_clock_ns(CLOCK_MONOTONIC_RAW), b = rdtsc();

		if (b - a < best) {
			best = b - a;
			*ns = t;
			*tsc = a + (b - a) / 2;
		}
	}
}

/*
 * The guest reads the host's TSC directly and paces itself with it: its
 * rate against CLOCK_MONOTONIC_RAW over 20 ms, each end the tightest of a
 * few brackets, is good to about 10^-4 even on a busy host (a migrated
 * guest continues only where the rate agrees). Once per process (the first
 * VM pays for it).
 */
static void calibrate_tsc(void)
{
	struct timespec d = { 0, 20 * 1000 * 1000 };
	uint64_t t0, c0, t1, c1;

	clock_and_tsc(&t0, &c0);
	nanosleep(&d, NULL);
	clock_and_tsc(&t1, &c1);
	if (t1 > t0 && c1 > c0)
		tsc_khz = (c1 - c0) * 1000000ULL / (t1 - t0);
}

/*
 * The guest's MMIO entry is at the same address in every kvmem process: a
 * page just above the arena holding one instruction, an indirect jump to
 * accel_thread_mmio (wherever this process's executable was loaded). A
 * guest that moves to another process (migration) calls the entry it
 * knows, and a vCPU kicked out on that instruction resumes there. One
 * instruction, no register: nothing of one process is carried to another.
 */
#define MMIO_ENTRY MEM_ARENA_END

static int mmio_entry_err;
static pthread_once_t mmio_entry_once = PTHREAD_ONCE_INIT;

static void map_mmio_entry(void)
{
	static const uint8_t jmp_rip[6] = { 0xff, 0x25, 0, 0, 0, 0 }; /* jmp *0(%rip) */
	uint64_t target = (uint64_t)(uintptr_t)accel_thread_mmio;
	uint8_t *p = mmap((void *)(uintptr_t)MMIO_ENTRY, 4096, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

	if (p != (void *)(uintptr_t)MMIO_ENTRY) {
		mmio_entry_err = p == MAP_FAILED ? errno : EEXIST;
		if (p != MAP_FAILED)
			munmap(p, 4096);
		return;
	}
	memcpy(p, jmp_rip, sizeof(jmp_rip));
	memcpy(p + sizeof(jmp_rip), &target, sizeof(target));
	if (mprotect(p, 4096, PROT_READ | PROT_EXEC))
		mmio_entry_err = errno;
}

static bool in_mmio_entry(uint64_t rip)
{
	return rip >= MMIO_ENTRY && rip < MMIO_ENTRY + 4096;
}

/* --- the ops --- */

static int thread_vm_init(struct vm *vm)
{
	char why[256];
	struct thread_vm *tv;

	if (accel_thread_check(why, sizeof(why))) {
		log_err("%s: the thread accelerator cannot run here: %s", vm->name, why);
		return -ENODEV;
	}
	pthread_once(&signals_once, install_fault_handlers);
	pthread_once(&mmio_entry_once, map_mmio_entry);
	if (mmio_entry_err) {
		log_err("%s: the thread accelerator's MMIO entry cannot be mapped at 0x%llx: %s",
			vm->name, (unsigned long long)MMIO_ENTRY, strerror(mmio_entry_err));
		return -mmio_entry_err;
	}
	/* Now, not at boot: the VM must not sit in "created" calibrating once the host answers. */
	pthread_once(&tsc_once, calibrate_tsc);
	tv = kv_zalloc(sizeof(*tv));
	if (!tv)
		return -ENOMEM;
	tv->phys_base = mem_phys_base(vm->gm);
	tv->span = mem_span(vm->gm);
	vm->accel_vm = tv;
	return 0;
}

static void thread_vm_destroy(struct vm *vm)
{
	kv_free(vm->accel_vm);
	vm->accel_vm = NULL;
}

static int thread_vm_boot(struct vm *vm)
{
	(void)vm; /* no descriptor tables: the guest starts at user level and faults as signals */
	return 0;
}

static uint64_t thread_phys_offset(const struct vm *vm)
{
	return (uint64_t)(uintptr_t)tvm_of(vm)->phys_base;
}

static uint64_t thread_mmio_call(const struct vm *vm)
{
	(void)vm;
	return MMIO_ENTRY;
}

static uint64_t thread_tsc_khz(struct vm *vm)
{
	(void)vm;
	pthread_once(&tsc_once, calibrate_tsc);
	return tsc_khz;
}

static int thread_vcpu_init(struct vcpu *vcpu)
{
	struct thread_vcpu *c = kv_zalloc(sizeof(*c));
	uint8_t *p;

	if (!c)
		return -ENOMEM;
	p = mmap(NULL, ALTSTACK_SIZE + 4096, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		kv_free(c);
		return -ENOMEM;
	}
	mprotect(p, 4096, PROT_NONE); /* a handler that overflows faults instead of scribbling */
	c->altstack = p + 4096;
	c->vcpu = vcpu;
	vcpu->accel_vcpu = c;
	return 0;
}

static void thread_vcpu_destroy(struct vcpu *vcpu)
{
	struct thread_vcpu *c = tcpu_of(vcpu);

	if (!c)
		return;
	munmap((uint8_t *)c->altstack - 4096, ALTSTACK_SIZE + 4096);
	kv_free(c);
	vcpu->accel_vcpu = NULL;
}

static int thread_vcpu_boot(struct vcpu *vcpu, const struct accel_entry *e)
{
	tcpu_of(vcpu)->entry = *e;
	return 0;
}

/* The state a vCPU starts in from its boot entry (guest/abi.h, "Entry"). */
static struct thread_state entry_state(const struct thread_vcpu *c)
{
	struct thread_state st = { .magic = THREAD_STATE_MAGIC, .version = THREAD_STATE_VERSION };

	st.gpr[R_DI] = c->entry.rdi;
	st.gpr[R_SI] = c->entry.rsi;
	st.gpr[R_DX] = c->entry.rdx;
	st.gpr[R_CX] = c->entry.rcx;
	st.gpr[R_8] = c->entry.r8;
	st.gpr[R_SP] = c->entry.rdx;
	st.rip = c->entry.rip;
	st.rflags = RFLAGS_FIXED;
	st.mxcsr = MXCSR_DEFAULT;
	st.fcw = FCW_DEFAULT;
	return st;
}

/* The registers c's thread resumes the guest with (its own thread's, or a parked one's). */
static void set_state(struct thread_vcpu *c, struct thread_tls *t, const struct thread_state *st)
{
	memcpy(t->gpr, st->gpr, sizeof(t->gpr));
	t->rip = st->rip;
	t->rflags = st->rflags;
	t->guest_mxcsr = st->mxcsr;
	t->guest_fcw = st->fcw;
	c->mmio_read = st->mmio_read;
	memcpy(c->mmio_data, st->mmio_data, sizeof(c->mmio_data));
}

/* First run on the vCPU's thread: its signal stack, system-call trap and guest context. */
static int start_on_this_thread(struct thread_vcpu *c)
{
	struct thread_tls *t = &accel_thread_tls;
	struct thread_state first;
	stack_t ss = { .ss_sp = c->altstack, .ss_size = ALTSTACK_SIZE };

	if (sigaltstack(&ss, &c->old_altstack) < 0)
		return -errno;
	if (prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, MEM_ARENA_END,
		  DISPATCH_ALLOWED_LEN, 0) < 0) {
		int ret = -errno;

		log_err("%s: vcpu %u: Syscall User Dispatch: %m", c->vcpu->vm->name,
			c->vcpu->index);
		sigaltstack(&c->old_altstack, NULL);
		return ret;
	}
	first = c->restored ? c->restore : entry_state(c);
	memset(t, 0, sizeof(*t));
	set_state(c, t, &first);
	t->kick = &c->kick;
	t->cpu = c;
	__atomic_store_n(&c->tls, t, __ATOMIC_RELEASE);
	c->started = true;
	return 0;
}

/*
 * Parked means between runs, its registers in its thread's thread_tls; a
 * vCPU that never ran is still at its entry (or at the state it was given).
 */
static int thread_vcpu_save(struct vcpu *vcpu, void *buf, size_t cap)
{
	struct thread_vcpu *c = tcpu_of(vcpu);
	struct thread_tls *t = __atomic_load_n(&c->tls, __ATOMIC_ACQUIRE);
	struct thread_state st;

	if (cap < sizeof(st))
		return -ENOSPC;
	if (!t) {
		st = c->restored ? c->restore : entry_state(c);
	} else {
		memset(&st, 0, sizeof(st));
		st.magic = THREAD_STATE_MAGIC;
		st.version = THREAD_STATE_VERSION;
		memcpy(st.gpr, t->gpr, sizeof(st.gpr));
		st.rip = t->rip;
		st.rflags = t->rflags;
		st.mxcsr = t->guest_mxcsr;
		st.fcw = t->guest_fcw;
		st.mmio_read = c->mmio_read;
		memcpy(st.mmio_data, c->mmio_data, sizeof(st.mmio_data));
	}
	memcpy(buf, &st, sizeof(st));
	return (int)sizeof(st);
}

static int thread_vcpu_load(struct vcpu *vcpu, const void *buf, size_t len)
{
	struct thread_vcpu *c = tcpu_of(vcpu);
	const struct thread_vm *tv = tvm_of(vcpu->vm);
	uint64_t base = (uint64_t)(uintptr_t)tv->phys_base;
	struct thread_tls *t = __atomic_load_n(&c->tls, __ATOMIC_ACQUIRE);
	struct thread_state st;

	if (len != sizeof(st) || (c->started && !t))
		return -EINVAL;
	memcpy(&st, buf, sizeof(st));
	if (st.magic != THREAD_STATE_MAGIC || st.version != THREAD_STATE_VERSION)
		return -EINVAL;
	/* Guest code and its stack live in its span (or it was entering MMIO); the rest is the VMM's. */
	if (((st.rip < base || st.rip - base >= tv->span) && !in_mmio_entry(st.rip)) ||
	    st.gpr[R_SP] < base ||
	    st.gpr[R_SP] - base > tv->span)
		return -EINVAL;
	/* ldmxcsr faults on a reserved bit: in the VMM's entry path, not the guest's. */
	if (st.mxcsr > 0xffff || st.mmio_read > 1 || st.pad)
		return -EINVAL;
	st.rflags = (st.rflags & RFLAGS_KEPT) | RFLAGS_FIXED;
	if (t) {
		/* Parked (the VM paused): it resumes from its thread's registers, as saved. */
		set_state(c, t, &st);
		return 0;
	}
	c->restore = st;
	c->restored = true;
	return 0;
}

static uint64_t thread_guest_tsc(struct vm *vm)
{
	(void)vm;
	return rdtsc(); /* guest code reads the host's own */
}

static int thread_vcpu_run(struct vcpu *vcpu, struct accel_exit *exit)
{
	struct thread_vcpu *c = tcpu_of(vcpu);
	struct thread_tls *t = &accel_thread_tls;
	unsigned int len;
	long why;

	if (!c->started) {
		int ret = start_on_this_thread(c);

		if (ret)
			return ret;
	}
	if (c->mmio_read) {
		uint64_t v = 0;

		memcpy(&v, c->mmio_data, sizeof(c->mmio_data));
		t->gpr[R_AX] = v;
		c->mmio_read = false;
	}
	why = accel_thread_enter();
	switch (why) {
	case EXIT_KICKED:
		return -EINTR;
	case EXIT_MMIO:
		len = (unsigned int)(t->mmio_op & 0xff);
		if ((t->mmio_op & ~(uint64_t)(0xff | ABI_MMIO_WRITE)) ||
		    (len != 1 && len != 2 && len != 4 && len != 8)) {
			log_err("%s: vcpu %u: MMIO call with a bad operation 0x%llx at gpa 0x%llx",
				vcpu->vm->name, vcpu->index, (unsigned long long)t->mmio_op,
				(unsigned long long)t->mmio_gpa);
			exit->reason = ACCEL_EXIT_CRASH;
			return 0;
		}
		exit->reason = ACCEL_EXIT_MMIO;
		exit->mmio.addr = t->mmio_gpa;
		exit->mmio.len = len;
		exit->mmio.is_write = t->mmio_op & ABI_MMIO_WRITE;
		exit->mmio.data = c->mmio_data;
		memset(c->mmio_data, 0, sizeof(c->mmio_data));
		if (exit->mmio.is_write)
			memcpy(c->mmio_data, &t->mmio_val, len);
		else
			c->mmio_read = true;
		/* A store's call returns 0. */
		t->gpr[R_AX] = 0;
		return 0;
	case EXIT_SIGNAL:
		exit->reason = ACCEL_EXIT_EXCEPTION;
		exit->exc = t->exc;
		return 0;
	default:
		log_err("%s: vcpu %u: guest left with %ld", vcpu->vm->name, vcpu->index, why);
		return -EIO;
	}
}

static void thread_set_kick(struct vcpu *vcpu, bool on)
{
	__atomic_store_n(&tcpu_of(vcpu)->kick, on ? 1 : 0, __ATOMIC_SEQ_CST);
}

static void thread_vcpu_thread_exit(struct vcpu *vcpu)
{
	struct thread_vcpu *c = tcpu_of(vcpu);

	if (!c->started)
		return;
	prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_OFF, 0, 0, 0);
	/* The sanitizers free the thread's own signal stack at its exit: give it back first. */
	sigaltstack(&c->old_altstack, NULL);
	accel_thread_tls.cpu = NULL;
	/* Its registers go with the thread: a save from now on has nothing to read. */
	__atomic_store_n(&c->tls, NULL, __ATOMIC_RELEASE);
	c->started = false;
}

/*
 * The guest writes its RAM from host threads: the memory manager sees each
 * first write through write protection (mem/gm.h, mem_dirty_guest_*).
 */
static int thread_dirty_log(struct vm *vm, bool on)
{
	return mem_dirty_guest_track(vm->gm, on);
}

static int thread_dirty_collect(struct vm *vm, uint64_t *bitmap)
{
	mem_dirty_guest_collect(vm->gm, bitmap);
	return 0;
}

static int thread_ioeventfd(struct vm *vm, gpa_t addr, unsigned int len, int fd, bool assign)
{
	(void)vm, (void)addr, (void)len, (void)fd, (void)assign;
	return -ENOTSUP; /* every register access is a call into the VMM anyway */
}

static int thread_irqfd(struct vm *vm, uint32_t gsi, int fd, bool assign)
{
	(void)vm, (void)gsi, (void)fd, (void)assign;
	return -ENOTSUP; /* the guest takes no interrupts */
}

const struct accel_ops accel_thread_ops = {
	.name = "thread",
	.exec_ram = true,
	.vcpu_sandbox = SANDBOX_VCPU_THREAD,
	.vm_init = thread_vm_init,
	.vm_destroy = thread_vm_destroy,
	.vm_boot = thread_vm_boot,
	.phys_offset = thread_phys_offset,
	.mmio_call = thread_mmio_call,
	.tsc_khz = thread_tsc_khz,
	.vcpu_init = thread_vcpu_init,
	.vcpu_destroy = thread_vcpu_destroy,
	.vcpu_boot = thread_vcpu_boot,
	.vcpu_run = thread_vcpu_run,
	.set_kick = thread_set_kick,
	.vcpu_thread_exit = thread_vcpu_thread_exit,
	.ioeventfd = thread_ioeventfd,
	.irqfd = thread_irqfd,
	.dirty_log = thread_dirty_log,
	.dirty_collect = thread_dirty_collect,
	.vcpu_save = thread_vcpu_save,
	.vcpu_load = thread_vcpu_load,
	.guest_tsc = thread_guest_tsc,
};
