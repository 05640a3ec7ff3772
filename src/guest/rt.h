/* SPDX-License-Identifier: MIT */
/*
 * The kvmem guest runtime: what a freestanding CPL3 program needs and libc
 * would otherwise give it. Boot parameters and devices (rt.c), the console
 * and printf (con.c), <string.h>'s functions (libc.c), string slices and
 * command-line parsing (str.c), time, sleep, power off, spinlocks and
 * atomics (this header and rt.c).
 *
 * Everything runs at CPL3 on every vCPU. There are no interrupts, so nothing
 * here is reentrant with respect to itself on one vCPU; across vCPUs shared
 * state is guarded by the locks named in each comment.
 *
 * The guest must not spin for long: vCPUs of several guests share host CPUs.
 * Anything that waits longer than a few microseconds goes through
 * rt_sleep_ns() (the paravirtual hlt) or rt_backoff().
 */
#ifndef KVMEM_GUEST_RT_H
#define KVMEM_GUEST_RT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "abi.h"
#include "gpa.h"

#define RT_PAGE_SIZE 4096UL
#define RT_PAGE_SHIFT GPA_PAGE_SHIFT
#define RT_PAGES_PER_MIB 256UL
#define RT_NS_PER_SEC 1000000000UL
#define RT_NS_PER_MS 1000000UL
#define RT_NS_PER_US 1000UL

/* Error numbers for 0 / -errno returns; values match Linux for readability. */
#define ENOENT 2
#define ENOMEM 12
#define EBUSY 16
#define EINVAL 22
#define ENOSPC 28
#define ERANGE 34

/* Power-off statuses the guest uses; the VMM exits with them. */
#define RT_EXIT_OK 0
#define RT_EXIT_VERIFY_FAIL 1	/* a page did not hold what the workload wrote */
#define RT_EXIT_USAGE 2		/* bad kvmem.wl= / kvmem.debug= value */
#define RT_EXIT_NOMEM 3		/* the workload asked for more memory than is free */
#define RT_EXIT_BAD_BOOT 4	/* boot parameters unusable (no RAM range, ...) */

#define __noreturn __attribute__((noreturn))
#define __printf(a, b) __attribute__((format(printf, a, b)))
#define __unused __attribute__((unused))

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))

#define barrier() __asm__ __volatile__("" ::: "memory")
#define READ_ONCE(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define WRITE_ONCE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define atomic_add(p, v) __atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST)
#define atomic_fetch_add(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)

/* Whole MiB in a count of pages, for messages. */
static inline uint64_t rt_mib(uint64_t pages)
{
	return pages / RT_PAGES_PER_MIB;
}

static inline void cpu_relax(void)
{
	__asm__ __volatile__("pause" ::: "memory");
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/*
 * MMIO. Under kvm a register is a plain mov at its virtual address (== its
 * gpa), with the address in a register so KVM's instruction emulator sees
 * the simplest possible access when it decodes the exit. Under thread a
 * load or store cannot exit (the vCPU is a host thread), so the accessors
 * call the VMM's MMIO entry instead (abi.h, ABI_MMIO_WRITE).
 *
 * Either way an access orders against normal memory accesses as a "memory"
 * clobber does: the console hands the VMM a buffer it must see filled, and
 * virtio rings are read by the device right after a notify.
 */
typedef uint64_t rt_mmio_fn(uint64_t gpa, uint64_t value, uint64_t op);

/* The VMM's MMIO entry (boot params mmio_call), NULL under kvm. Set by rt_init(). */
extern rt_mmio_fn *rt_mmio_call;

static inline uint64_t mmio_via_vmm(gpa_t reg, uint64_t v, uint64_t op)
{
	uint64_t r;

	/*
	 * A call is a compiler barrier only for memory the compiler believes
	 * escaped; a buffer handed over as a gpa (an integer) may not count.
	 */
	barrier();
	r = rt_mmio_call(gpa_val(reg), v, op);
	barrier();
	return r;
}

static inline void mmio_write32(gpa_t reg, uint32_t v)
{
	if (rt_mmio_call) {
		mmio_via_vmm(reg, v, 4 | ABI_MMIO_WRITE);
		return;
	}
	__asm__ __volatile__("movl %0, (%1)" : : "r"(v), "r"(phys_to_virt(reg)) : "memory");
}

static inline uint32_t mmio_read32(gpa_t reg)
{
	uint32_t v;

	if (rt_mmio_call)
		return (uint32_t)mmio_via_vmm(reg, 0, 4);
	__asm__ __volatile__("movl (%1), %0" : "=r"(v) : "r"(phys_to_virt(reg)) : "memory");
	return v;
}

static inline void mmio_write64(gpa_t reg, uint64_t v)
{
	if (rt_mmio_call) {
		mmio_via_vmm(reg, v, 8 | ABI_MMIO_WRITE);
		return;
	}
	__asm__ __volatile__("movq %0, (%1)" : : "r"(v), "r"(phys_to_virt(reg)) : "memory");
}

static inline uint64_t mmio_read64(gpa_t reg)
{
	uint64_t v;

	if (rt_mmio_call)
		return mmio_via_vmm(reg, 0, 8);
	__asm__ __volatile__("movq (%1), %0" : "=r"(v) : "r"(phys_to_virt(reg)) : "memory");
	return v;
}

/* --- boot parameters and vCPUs (rt.c) --- */

/*
 * rt_set_phys_offset - record the phys offset the VMM passed at entry (rcx).
 * vCPU 0, first thing: every phys_to_virt()/virt_to_phys() depends on it.
 */
void rt_set_phys_offset(uint64_t offset);

/*
 * rt_init - validate the boot parameters and find the devices.
 * Call once, on vCPU 0, after rt_set_phys_offset() and before anything else
 * in this header except rt_cpu_register(). @bp is virtual. Returns 0 or
 * -EINVAL (bad magic or version, or a phys offset that disagrees with the
 * entry register's).
 */
int rt_init(const struct abi_boot_params *bp);

/* The boot parameters (virtual), valid after rt_init(). Read-only. */
const struct abi_boot_params *rt_boot_params(void);

/*
 * The VM's content corpus (boot params corpus_gpa, corpus_bytes): true with
 * its gpa and length, false when the VM has none. The workload engine asks
 * this rather than reading the boot parameters, which a runtime under
 * another kernel (src/guest/linux) does not have.
 */
bool rt_corpus(gpa_t *base, uint64_t *bytes);

/* Number of vCPUs started, valid after rt_init(). */
unsigned rt_ncpus(void);

/*
 * rt_cpu_register - record which stack belongs to vCPU @cpu, so rt_cpu() can
 * tell vCPUs apart (there is no per-CPU segment we could use at CPL3, and
 * under thread %fs is the host thread's). @stack_top is virtual. Each vCPU
 * calls it first thing, on its own stack.
 */
void rt_cpu_register(unsigned cpu, uint64_t stack_top);

/* Index of the calling vCPU, found from the stack pointer; 0 if unknown. */
unsigned rt_cpu(void);

/* True once vCPU 0 finished rt_init(); secondaries wait for it. */
bool rt_is_ready(void);

/* Base of the console register window, GPA_NULL if there is none (for con.c). */
gpa_t rt_console_gpa(void);

/* The first gpa past all RAM, devices and mappings (boot params phys_top). */
gpa_t rt_phys_top(void);

/* --- time, sleep, power (rt.c) --- */

/* Nanoseconds since rt_init(), from the TSC (or the VMM clock without tsc_khz). */
uint64_t rt_now_ns(void);
/*
 * The VM's generation (abi_boot_params.generation): it changes when the VMM
 * starts the VM again from a saved state. A sleep that sees it change first
 * says so on the console.
 */
uint64_t rt_generation(void);
/* Which copy of a snapshot this VM is (abi_boot_params.identity): 0 unless a clone. */
uint64_t rt_identity(void);

/*
 * rt_sleep_ns - give the host CPU away for about @ns through ABI_SYS_SLEEP_NS.
 * Returns once at least @ns passed. The guest's only way to idle.
 */
void rt_sleep_ns(uint64_t ns);

/* Flush the console and power the VM off with @status. */
__noreturn void rt_poweroff(uint32_t status);

/* Stay idle forever, sleeping in long slices. */
__noreturn void rt_idle_forever(void);

/* Record a value with the VMM (ABI_SYS_REPORT), for tests. */
void rt_report(uint64_t value);

/*
 * Background work without interrupts. The guest has one poll function (the
 * balloon driver's service routine) that must run every few milliseconds
 * whatever the workload does; it runs on whichever vCPU next reaches a
 * service point:
 *   - rt_sleep_ns(), before each slice it sleeps; slices are cut short so the
 *     poll function is never late by more than its own interval (idle loops,
 *     the rate limiter, smp job waits and backoffs all sleep through here);
 *   - rt_poll(), which long CPU-bound loops (the workload's fill and verify)
 *     call every few pages; it costs a TSC read while nothing is due.
 * The function returns how many ns may pass before it wants to run again,
 * and must protect itself against running on two vCPUs at once (trylock)
 * and against reentry from the sleeps it makes itself.
 */
typedef uint64_t rt_poll_fn(uint64_t now_ns);

/* Install @fn (NULL removes it). vCPU 0, before the workload starts. */
void rt_set_poll(rt_poll_fn *fn);

/* Run the poll function if it is due. Any vCPU, any time no lock is held. */
void rt_poll(void);

/* --- locks and waiting (rt.c) --- */

struct rt_spinlock {
	uint32_t locked;
};

/* Spins with pause: hold it only for short, bounded work (a few MMIO exits at most). */
void rt_spin_lock(struct rt_spinlock *l);
void rt_spin_unlock(struct rt_spinlock *l);
/* Take @l if it is free; true if taken. Never waits. */
bool rt_spin_trylock(struct rt_spinlock *l);

/*
 * Polling with backoff: the first few calls spin, later calls sleep through
 * the VMM, from 100 us growing to max_ns, so a waiting vCPU costs the host
 * little while the wait is long and reacts quickly while it is short.
 */
struct rt_backoff {
	uint32_t spins;
	uint64_t sleep_ns;	/* next sleep */
	uint64_t max_ns;	/* cap on one sleep; 0 = 2 ms */
};

#define RT_BACKOFF_INIT { 0, 0, 0 }
#define RT_BACKOFF_INIT_MAX(ns) { 0, 0, (ns) }

void rt_backoff(struct rt_backoff *b);

/*
 * Sense-reversing barrier for the vCPUs. rt_barrier_init() before any vCPU
 * uses it; @count vCPUs must call rt_barrier_wait() per round.
 */
struct rt_barrier {
	uint32_t count;		/* participants, fixed */
	uint32_t waiting;	/* arrived this round (atomic) */
	uint32_t sense;		/* flips when a round completes (atomic) */
};

void rt_barrier_init(struct rt_barrier *b, uint32_t count);
void rt_barrier_wait(struct rt_barrier *b);

/* --- console (con.c) --- */

/*
 * Console output is buffered per vCPU and handed to the VMM a line at a
 * time (one MMIO exit per line); a console lock keeps lines from different
 * vCPUs whole. Lines longer than the buffer are emitted in pieces.
 */
void con_write(const char *s, size_t len);
void con_flush(void);
__printf(1, 2) void rt_printf(const char *fmt, ...);
void rt_vprintf(const char *fmt, va_list ap);

/*
 * Supports %d %i %u %x %X %c %s %p %% with the l, ll and z modifiers, a
 * field width, '0' padding, '-' left alignment and a precision for %s
 * (%.*s prints a slice). Always NUL terminates
 * when @size > 0; returns the length it would have written.
 */
__printf(3, 4) int rt_snprintf(char *buf, size_t size, const char *fmt, ...);
int rt_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* --- <string.h> (libc.c) --- */

/* The usual freestanding set; GCC may also emit calls to the first four. */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* --- string slices and the command line (str.c) --- */

/* A non-NUL-terminated slice of a string (command-line values are slices). */
struct rt_str {
	const char *p;
	size_t len;
};

/* True if @s is exactly the NUL-terminated @lit. */
bool str_eq(struct rt_str s, const char *lit);

/* Parse all of @s as a decimal or 0x-hex u64. Returns 0 or -EINVAL/-ERANGE. */
int str_to_u64(struct rt_str s, uint64_t *out);

/*
 * cmdline_get - find the space-separated token "@key=value" in @cmdline.
 * The last occurrence wins (like Linux early params appended by a wrapper).
 * Returns true and the value slice, or false if there is no such token.
 */
bool cmdline_get(const char *cmdline, const char *key, struct rt_str *val);

/*
 * kv_next - iterate the comma-separated "k=v" list in @list. @pos starts at
 * 0. Returns false at the end; an item without '=' has an empty value.
 */
bool kv_next(struct rt_str list, size_t *pos, struct rt_str *key, struct rt_str *val);

#endif
