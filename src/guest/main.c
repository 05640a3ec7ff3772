/* SPDX-License-Identifier: MIT */
/*
 * The guest's first C code, at CPL3 on every vCPU (entry.S gets us here).
 * vCPU 0 initialises the runtime and the page allocator, handles
 * kvmem.debug= and runs the workload; the other vCPUs become workers.
 *
 * Command line:
 *   kvmem.wl=...        the workload (wl.c); without it the guest idles
 *   kvmem.balloon...    the virtio-balloon driver (balloon_drv.h), on by default
 *   kvmem.debug=fault   store to the first gpa past everything (#PF)
 *   kvmem.debug=ud      execute ud2 (#UD)
 *   kvmem.debug=gp      execute hlt at CPL3 (#GP)
 *   kvmem.debug=pio     port I/O at CPL3 (#GP: there is no I/O bitmap; never an exit)
 *   kvmem.debug=syscall execute syscall (a crash under both accelerators)
 *   kvmem.debug=corpus  store into the VM's read-only corpus (a crash under both)
 *   kvmem.debug=spinN   spin N seconds without any exit to the VMM, then
 *                       print "kvmem guest: spin done" and power off with 0
 *   kvmem.debug=exitN   power off at once with status N
 *   kvmem.debug=printN  print N lines of 100 characters, then boot on as usual
 *                       (output volume for the console's tests)
 */
#include "balloon_drv.h"
#include "palloc.h"
#include "rt.h"
#include "smp.h"
#include "wl.h"

/* entry.S hard-codes these (abi.h is not assembler-safe); keep them in step. */
_Static_assert(ABI_SEL_USER_DS == 0x1b, "entry.S user data selector");
_Static_assert(ABI_SEL_USER_CS == 0x23, "entry.S user code selector");
_Static_assert(ABI_ENTRY_USER == 0x1, "entry.S user-level entry flag");

/*
 * kvmem.debug=spinN without a TSC rate: iterations of spin()'s counting loop
 * taken as one second. Only roughly so (a cycle each, at 3 GHz): the tests
 * that use it need a guest that stays busy for a while, not a clock.
 */
#define SPIN_ITERS_PER_SEC 3000000000ULL

/*
 * No such system call (far above the last, without the x32 bit): should the
 * VMM fail to catch it, the host kernel answers -ENOSYS and nothing happens.
 */
#define DEBUG_SYSCALL_NR 0xfffffULL

void guest_main(uint64_t cpu, const struct abi_boot_params *bp, uint64_t stack_top,
		uint64_t phys_offset, uint64_t flags);

/*
 * kvmem.debug=spinN: stay busy for @secs without a single exit to the VMM
 * (no MMIO, no sleep), so a test can pause, resume or stop a guest that
 * would never stop on its own. rt_now_ns() reads only the TSC when its rate
 * is known; without it, it would read the VMM's clock over MMIO.
 */
static void spin(uint64_t secs)
{
	uint64_t i, n;

	if (rt_boot_params()->tsc_khz) {
		uint64_t end = rt_now_ns() + secs * RT_NS_PER_SEC;

		while (rt_now_ns() < end)
			;
		return;
	}
	n = secs * SPIN_ITERS_PER_SEC;
	for (i = 0; i < n; i++)
		__asm__ __volatile__("" : "+r"(i));
}

/* The digits after @prefix in @v, as a number; false if @v is not prefix + number. */
static bool debug_num(struct rt_str v, const char *prefix, uint64_t max, uint64_t *out)
{
	size_t len = strlen(prefix);
	struct rt_str n;

	if (v.len <= len || memcmp(v.p, prefix, len))
		return false;
	n.p = v.p + len;
	n.len = v.len - len;
	return !str_to_u64(n, out) && *out <= max;
}

static void debug(const char *cmdline)
{
	struct rt_str v;
	uint64_t status;

	if (!cmdline_get(cmdline, "kvmem.debug", &v))
		return;
	rt_printf("kvmem guest: debug %.*s\n", (int)v.len, v.p);
	con_flush();
	if (str_eq(v, "fault")) {
		/*
		 * Under kvm outside the VMM's page tables; under thread in the
		 * guard gap after the VM's reservation. 0 would be the VMM's own
		 * low memory, mapped: rather not stop than scribble there.
		 */
		gpa_t top = rt_phys_top();

		if (!gpa_is_null(top))
			*(volatile uint64_t *)phys_to_virt(top) = 0x6b766d656dULL;
	} else if (str_eq(v, "corpus")) {
		const struct abi_boot_params *bp = rt_boot_params();

		if (bp->corpus_bytes)
			*(volatile uint64_t *)phys_to_virt(gpa(bp->corpus_gpa + 8)) = 0x6b766d656dULL;
	} else if (str_eq(v, "ud")) {
		__asm__ __volatile__("ud2");
	} else if (str_eq(v, "gp")) {
		__asm__ __volatile__("hlt");
	} else if (str_eq(v, "pio")) {
		__asm__ __volatile__("outb %%al, $0x80" : : "a"(0) : "memory");
	} else if (str_eq(v, "syscall")) {
		uint64_t nr = DEBUG_SYSCALL_NR;

		__asm__ __volatile__("syscall" : "+a"(nr) : : "rcx", "r11", "memory");
	} else if (debug_num(v, "spin", UINT32_MAX, &status)) {
		spin(status);
		rt_printf("kvmem guest: spin done\n");
		rt_poweroff(RT_EXIT_OK);
	} else if (debug_num(v, "exit", UINT32_MAX, &status)) {
		rt_poweroff((uint32_t)status);
	} else if (debug_num(v, "print", UINT32_MAX, &status)) {
		for (uint64_t i = 0; i < status; i++)
			rt_printf("kvmem guest: line %08lu %s\n", i,
				  "...............................................................");
		return;
	}
	rt_printf("kvmem guest: kvmem.debug=%.*s did not stop the guest\n", (int)v.len, v.p);
	rt_poweroff(RT_EXIT_USAGE);
}

static __noreturn void boot_cpu0(const struct abi_boot_params *bp)
{
	const char *cmdline = bp->cmdline;
	struct rt_str wl;
	int ret;

	rt_printf("kvmem guest: %u cpus, %lu MiB, cmdline \"%.*s\"\n", rt_ncpus(),
		  bp->ram_bytes >> 20, (int)strnlen(cmdline, ABI_MAX_CMDLINE), cmdline);
	debug(cmdline);
	ret = palloc_init(bp);
	if (ret) {
		rt_printf("kvmem guest: no usable memory for the page allocator (%d)\n", ret);
		rt_poweroff(RT_EXIT_BAD_BOOT);
	}
	rt_printf("kvmem guest: palloc %lu MiB free of %lu MiB, bitmap %lu KiB\n",
		  palloc_free_pages() >> 8, palloc_total_pages() >> 8, palloc_meta_pages() * 4);
	/* Before the workload: the balloon services itself from then on (rt_poll). */
	ret = balloon_init(bp);
	if (ret && ret != -ENOENT)
		rt_printf("kvmem guest: no balloon (%d)\n", ret);
	if (cmdline_get(cmdline, "kvmem.wl", &wl))
		wl_main(wl);
	rt_printf("kvmem guest: no workload, idle\n");
	rt_idle_forever();
}

/*
 * From entry.S, at user level on every vCPU, with the entry registers as
 * the VMM set them (abi.h); @bp and @stack_top are virtual.
 */
void guest_main(uint64_t cpu, const struct abi_boot_params *bp, uint64_t stack_top,
		uint64_t phys_offset, uint64_t flags __unused)
{
	if (cpu >= ABI_MAX_CPUS)
		__builtin_trap();
	rt_cpu_register((unsigned)cpu, stack_top);
	if (cpu == 0) {
		/* Before anything converts an address. */
		rt_set_phys_offset(phys_offset);
		if (rt_init(bp))
			/* No trusted console to say why: let the VMM report a #UD. */
			__builtin_trap();
		boot_cpu0(bp);
	}
	/* vCPU 0 needs microseconds for rt_init(); nothing to sleep through yet. */
	while (!rt_is_ready())
		cpu_relax();
	/* One offset per VM: a vCPU that was told another would corrupt memory. */
	if (phys_offset != rt_phys_offset)
		__builtin_trap();
	smp_worker((unsigned)cpu);
}
