/* SPDX-License-Identifier: MIT */
/*
 * The guest's first C code, at CPL3 on every vCPU (entry.S gets us here).
 * vCPU 0 initialises the runtime and the page allocator, handles
 * kvmem.debug= and runs the workload; the other vCPUs become workers.
 *
 * Command line:
 *   kvmem.wl=...        the workload (wl.c); without it the guest idles
 *   kvmem.balloon...    the virtio-balloon driver (balloon_drv.h), on by default
 *   kvmem.debug=fault   store to an unmapped address (#PF)
 *   kvmem.debug=ud      execute ud2 (#UD)
 *   kvmem.debug=gp      execute hlt at CPL3 (#GP)
 *   kvmem.debug=exitN   power off at once with status N
 */
#include "balloon_drv.h"
#include "palloc.h"
#include "rt.h"
#include "smp.h"
#include "wl.h"

/* entry.S hard-codes these (abi.h is not assembler-safe); keep them in step. */
_Static_assert(ABI_SEL_USER_DS == 0x1b, "entry.S user data selector");
_Static_assert(ABI_SEL_USER_CS == 0x23, "entry.S user code selector");

/* Unmapped in the VMM's identity map: guest RAM and MMIO are far below 8 TiB. */
#define DEBUG_FAULT_ADDR 0x7fffffff000ULL

void guest_main(uint64_t cpu, const struct abi_boot_params *bp, uint64_t stack_top);

static void debug(const char *cmdline)
{
	struct rt_str v;
	uint64_t status;

	if (!cmdline_get(cmdline, "kvmem.debug", &v))
		return;
	rt_printf("kvmem guest: debug %.*s\n", (int)v.len, v.p);
	con_flush();
	if (str_eq(v, "fault")) {
		*(volatile uint64_t *)DEBUG_FAULT_ADDR = 0x6b766d656dULL;
	} else if (str_eq(v, "ud")) {
		__asm__ __volatile__("ud2");
	} else if (str_eq(v, "gp")) {
		__asm__ __volatile__("hlt");
	} else if (v.len > 4 && !memcmp(v.p, "exit", 4)) {
		struct rt_str n = { v.p + 4, v.len - 4 };

		if (!str_to_u64(n, &status) && status <= UINT32_MAX)
			rt_poweroff((uint32_t)status);
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

void guest_main(uint64_t cpu, const struct abi_boot_params *bp, uint64_t stack_top)
{
	if (cpu >= ABI_MAX_CPUS)
		__builtin_trap();
	rt_cpu_register((unsigned)cpu, stack_top);
	if (cpu == 0) {
		if (rt_init(bp))
			/* No trusted console to say why: let the VMM report a #UD. */
			__builtin_trap();
		boot_cpu0(bp);
	}
	/* vCPU 0 needs microseconds for rt_init(); nothing to sleep through yet. */
	while (!rt_is_ready())
		cpu_relax();
	smp_worker((unsigned)cpu);
}
