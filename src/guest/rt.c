/* SPDX-License-Identifier: MIT */
/*
 * Guest runtime core: boot parameters, device discovery, vCPU identity,
 * time, sleep, power off, spinlocks, backoff and the vCPU barrier.
 *
 * rt_init() runs on vCPU 0 while the other vCPUs wait for rt_is_ready();
 * after that the state here is read-only except the stack table, whose
 * slot i only vCPU i writes (before anyone reads it for i).
 */
#include "rt.h"

uint64_t rt_phys_offset;
rt_mmio_fn *rt_mmio_call;

static const struct abi_boot_params *boot;
/* The generation the guest last saw (in its memory: a saved state has the one it was saved in). */
static uint64_t generation_seen;
static gpa_t con_gpa;		/* console registers, GPA_NULL if none */
static gpa_t sys_gpa;		/* system-control registers, GPA_NULL if none */
static gpa_t phys_top;		/* nothing at or above it (boot params) */
static uint64_t tsc_khz;	/* 0: use the VMM clock instead of the TSC */
static uint64_t tsc_base;	/* TSC at rt_init() */
static uint64_t clock_base;	/* ABI_SYS_TIME_NS at rt_init(), without a TSC rate */
static unsigned ncpus;
static uint32_t ready;		/* set (release) when rt_init() is done */

/* Each vCPU's 16 KiB CPL3 stack, by vCPU index; 0 = not registered. */
#define STACK_SIZE (16 * 1024)
static uint64_t stack_top[ABI_MAX_CPUS];

gpa_t rt_console_gpa(void)
{
	return con_gpa;
}

gpa_t rt_phys_top(void)
{
	return phys_top;
}

void rt_set_phys_offset(uint64_t offset)
{
	rt_phys_offset = offset;
}

/* The TSC as this guest counts it: the VMM's offset moves it across hosts. */
static uint64_t guest_tsc(void)
{
	return rdtsc() + (boot ? (uint64_t)*(const volatile int64_t *)&boot->tsc_offset : 0);
}

int rt_init(const struct abi_boot_params *bp)
{
	uint32_t i;

	if (bp->magic != ABI_BOOT_MAGIC || bp->version != ABI_VERSION)
		return -EINVAL;
	/* Two copies of one value: a VMM that disagrees with itself is not trusted. */
	if (bp->phys_offset != rt_phys_offset)
		return -EINVAL;
	boot = bp;
	/* A virtual address by the contract: callable as is. Before the first MMIO below. */
	rt_mmio_call = (rt_mmio_fn *)(uintptr_t)bp->mmio_call;
	phys_top = gpa(bp->phys_top);
	ncpus = bp->ncpus ? bp->ncpus : 1;
	if (ncpus > ABI_MAX_CPUS)
		ncpus = ABI_MAX_CPUS;
	for (i = 0; i < bp->nr_devices && i < ABI_MAX_DEVICES; i++) {
		const struct abi_device *d = &bp->devices[i];

		/* First of each kind wins; a later duplicate is ignored. */
		if (d->type == ABI_DEV_CONSOLE && gpa_is_null(con_gpa))
			con_gpa = gpa(d->gpa);
		else if (d->type == ABI_DEV_SYSCTL && gpa_is_null(sys_gpa))
			sys_gpa = gpa(d->gpa);
	}
	tsc_khz = bp->tsc_khz;
	tsc_base = guest_tsc();
	if (!tsc_khz && !gpa_is_null(sys_gpa))
		clock_base = mmio_read64(gpa_add(sys_gpa, ABI_SYS_TIME_NS));
	store_release(&ready, 1);
	return 0;
}

bool rt_is_ready(void)
{
	return load_acquire(&ready);
}

const struct abi_boot_params *rt_boot_params(void)
{
	return boot;
}

bool rt_corpus(gpa_t *base, uint64_t *bytes)
{
	if (!boot->corpus_bytes)
		return false;
	*base = gpa(boot->corpus_gpa);
	*bytes = boot->corpus_bytes;
	return true;
}

unsigned rt_ncpus(void)
{
	return ncpus;
}

void rt_cpu_register(unsigned cpu, uint64_t top)
{
	if (cpu < ABI_MAX_CPUS)
		store_release(&stack_top[cpu], top);
}

unsigned rt_cpu(void)
{
	/* Virtual, as the registered tops are: no gpa involved. */
	uint64_t sp = (uint64_t)(uintptr_t)__builtin_frame_address(0);
	unsigned i;

	for (i = 0; i < ABI_MAX_CPUS; i++) {
		uint64_t top = load_acquire(&stack_top[i]);

		if (top && sp < top && sp >= top - STACK_SIZE)
			return i;
	}
	return 0;
}

uint64_t rt_now_ns(void)
{
	uint64_t t;

	if (!tsc_khz) {
		if (gpa_is_null(sys_gpa))
			return 0;
		return mmio_read64(gpa_add(sys_gpa, ABI_SYS_TIME_NS)) - clock_base;
	}
	/* Split so nothing overflows 64 bits: the remainder is < tsc_khz. */
	t = guest_tsc() - tsc_base;
	return t / tsc_khz * RT_NS_PER_MS + t % tsc_khz * RT_NS_PER_MS / tsc_khz;
}

/* One SLEEP_NS request at most this long, so a long sleep re-reads the clock. */
#define SLEEP_SLICE_NS RT_NS_PER_SEC
/* Shortest slice a due poll function cuts a sleep down to. */
#define POLL_MIN_SLICE_NS (50 * RT_NS_PER_US)

static rt_poll_fn *poll_fn;	/* set by vCPU 0 before the workload; read-only after */
static uint64_t poll_due;	/* rt_now_ns() when poll_fn wants to run (relaxed) */

void rt_set_poll(rt_poll_fn *fn)
{
	WRITE_ONCE(poll_due, 0);
	__atomic_store_n(&poll_fn, fn, __ATOMIC_RELEASE);
}

void rt_poll(void)
{
	rt_poll_fn *fn = __atomic_load_n(&poll_fn, __ATOMIC_ACQUIRE);
	uint64_t now, next;

	if (!fn)
		return;
	now = rt_now_ns();
	if (now < READ_ONCE(poll_due))
		return;
	/* Claim this period first: other vCPUs arriving meanwhile skip at once. */
	WRITE_ONCE(poll_due, now + POLL_MIN_SLICE_NS);
	next = fn(now);
	now = rt_now_ns();
	WRITE_ONCE(poll_due, next > UINT64_MAX - now ? UINT64_MAX : now + next);
}

/* How long a sleep may last before the poll function is due (UINT64_MAX: no limit). */
static uint64_t poll_slice(uint64_t now)
{
	uint64_t due;

	if (!__atomic_load_n(&poll_fn, __ATOMIC_ACQUIRE))
		return UINT64_MAX;
	due = READ_ONCE(poll_due);
	return due > now ? MAX(due - now, POLL_MIN_SLICE_NS) : POLL_MIN_SLICE_NS;
}

uint64_t rt_identity(void)
{
	return boot ? *(const volatile uint64_t *)&boot->identity : 0;
}

uint64_t rt_generation(void)
{
	return boot ? *(const volatile uint64_t *)&boot->generation : 0;
}

/* Started again from a saved state: said once, by the first vCPU to see it. */
static void check_generation(void)
{
	uint64_t g = rt_generation(), seen = READ_ONCE(generation_seen);

	if (g != seen && __atomic_compare_exchange_n(&generation_seen, &seen, g, false,
						     __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		rt_printf("kvmem guest: resumed from a saved state (generation %lu)\n", g);
}

void rt_sleep_ns(uint64_t ns)
{
	uint64_t now = rt_now_ns();
	uint64_t end = ns > UINT64_MAX - now ? UINT64_MAX : now + ns;

	if (gpa_is_null(sys_gpa)) {
		/* No device to sleep through: the best we can do. */
		while (rt_now_ns() < end) {
			rt_poll();
			cpu_relax();
		}
		return;
	}
	/* The VMM may wake us early ("up to N ns"): sleep again for the rest. */
	while (now < end) {
		check_generation();
		rt_poll();
		now = rt_now_ns();
		if (now >= end)
			break;
		mmio_write64(gpa_add(sys_gpa, ABI_SYS_SLEEP_NS),
			     MIN(MIN(end - now, SLEEP_SLICE_NS), poll_slice(now)));
		now = rt_now_ns();
	}
}

void rt_poweroff(uint32_t status)
{
	con_flush();
	if (!gpa_is_null(sys_gpa))
		mmio_write32(gpa_add(sys_gpa, ABI_SYS_POWEROFF), status);
	/* Without a system-control device (or if the VMM went on), a #UD ends the VM. */
	for (;;)
		__asm__ __volatile__("ud2");
}

void rt_idle_forever(void)
{
	con_flush();
	for (;;)
		rt_sleep_ns(RT_NS_PER_SEC);
}

void rt_report(uint64_t value)
{
	if (!gpa_is_null(sys_gpa))
		mmio_write64(gpa_add(sys_gpa, ABI_SYS_REPORT), value);
}

void rt_spin_lock(struct rt_spinlock *l)
{
	for (;;) {
		if (!__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
			return;
		while (READ_ONCE(l->locked))
			cpu_relax();
	}
}

bool rt_spin_trylock(struct rt_spinlock *l)
{
	return !READ_ONCE(l->locked) && !__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE);
}

void rt_spin_unlock(struct rt_spinlock *l)
{
	__atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}

#define BACKOFF_SPINS 256
#define BACKOFF_MIN_NS (100 * RT_NS_PER_US)
#define BACKOFF_MAX_NS (2 * RT_NS_PER_MS)

void rt_backoff(struct rt_backoff *b)
{
	if (b->spins < BACKOFF_SPINS) {
		b->spins++;
		cpu_relax();
		return;
	}
	if (b->sleep_ns < BACKOFF_MIN_NS)
		b->sleep_ns = BACKOFF_MIN_NS;
	rt_sleep_ns(b->sleep_ns);
	b->sleep_ns = MIN(b->sleep_ns * 2, b->max_ns ? b->max_ns : BACKOFF_MAX_NS);
}

void rt_barrier_init(struct rt_barrier *b, uint32_t count)
{
	b->count = count;
	b->waiting = 0;
	b->sense = 0;
}

void rt_barrier_wait(struct rt_barrier *b)
{
	uint32_t sense = load_acquire(&b->sense);
	struct rt_backoff bo = RT_BACKOFF_INIT;

	if (atomic_add(&b->waiting, 1) == b->count) {
		/* Last to arrive: reset for the next round, then release everyone. */
		WRITE_ONCE(b->waiting, 0);
		store_release(&b->sense, sense ^ 1);
		return;
	}
	while (load_acquire(&b->sense) == sense)
		rt_backoff(&bo);
}
