/* SPDX-License-Identifier: MIT */
/*
 * The builders of the guest's boot state, run against anonymous guest memory
 * (no KVM): page tables, GDT/TSS, IDT and its exception stubs, the
 * boot-parameters page, and the ELF loader's refusals.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/boot.h"
#include "core/layout.h"
#include "mem/gm.h"

static uint64_t rd64(struct gm *gm, gpa_t gpa)
{
	uint64_t v = 0;

	assert_int_equal(gm_read_le64(gm, gpa, &v), 0);
	return v;
}

/* Walk the guest's 4-level tables like the MMU: returns the PDE for gpa or 0. */
static uint64_t walk(struct gm *gm, gpa_t va)
{
	uint64_t pml4e = rd64(gm, LAYOUT_PGTABLE + ((va >> 39) & 511) * 8);
	uint64_t pdpte, pde;

	if (!(pml4e & 1))
		return 0;
	pdpte = rd64(gm, (pml4e & ~0xfffULL) + ((va >> 30) & 511) * 8);
	if (!(pdpte & 1))
		return 0;
	pde = rd64(gm, (pdpte & ~0xfffULL) + ((va >> 21) & 511) * 8);
	return pde;
}

static void test_boot_page_tables_identity_map_ram_and_mmio_for_user(void **state)
{
	struct gm *gm;

	(void)state;
	assert_int_equal(gm_create_anon(64 << 20, &gm), 0);
	assert_int_equal(boot_build_tables(gm, 2), 0);
	for (gpa_t va = 0; va < (64ULL << 20); va += 2ULL << 20) {
		uint64_t pde = walk(gm, va);

		assert_int_equal(pde & ~0xfffULL, va);	 /* identity */
		assert_int_equal(pde & 0x87, 0x87);	 /* present, writable, user, 2 MiB */
	}
	/* The MMIO window must be mapped too, or device stores would #PF. */
	assert_int_equal(walk(gm, LAYOUT_MMIO_SYSCTL) & ~0x1fffffULL,
			 LAYOUT_MMIO_SYSCTL & ~0x1fffffULL);
	/* Nothing above 4 GiB for a small guest. */
	assert_int_equal(walk(gm, 5ULL << 30), 0);
	gm_destroy(gm);
}

static void test_boot_page_tables_cover_ram_above_the_hole(void **state)
{
	struct gm *gm;
	uint64_t ram = 4ULL << 30;
	gpa_t last = LAYOUT_HIGH_RAM_BASE + (ram - LAYOUT_LOW_RAM_MAX) - (2ULL << 20);

	(void)state;
	assert_int_equal(gm_create_anon(ram, &gm), 0);
	assert_int_equal(gm_nr_regions(gm), 2);
	assert_int_equal(boot_build_tables(gm, 1), 0);
	assert_int_equal(walk(gm, last) & ~0xfffULL, last);
	assert_int_equal(boot_mapped_top(ram), 5ULL << 30);
	gm_destroy(gm);
}

static void test_boot_gdt_has_user_segments_and_one_tss_per_cpu(void **state)
{
	struct gm *gm;
	unsigned int ncpus = 3;

	(void)state;
	assert_int_equal(gm_create_anon(16 << 20, &gm), 0);
	assert_int_equal(boot_build_tables(gm, ncpus), 0);
	/* Access bytes: DPL3 code (0xfa) and data (0xf2); L bit on code. */
	assert_int_equal((rd64(gm, LAYOUT_GDT + (ABI_SEL_USER_CS & ~3)) >> 40) & 0xff, 0xfa);
	assert_int_equal((rd64(gm, LAYOUT_GDT + (ABI_SEL_USER_CS & ~3)) >> 53) & 1, 1);
	assert_int_equal((rd64(gm, LAYOUT_GDT + (ABI_SEL_USER_DS & ~3)) >> 40) & 0xff, 0xf2);
	assert_int_equal((rd64(gm, LAYOUT_GDT + ABI_SEL_KERNEL_CS) >> 40) & 0xff, 0x9a);
	for (unsigned int i = 0; i < ncpus; i++) {
		uint64_t lo = rd64(gm, LAYOUT_GDT + ABI_SEL_TSS0 + 16 * i);
		uint64_t base = ((lo >> 16) & 0xffffff) | (((lo >> 56) & 0xff) << 24);
		uint64_t rsp0 = 0;

		assert_int_equal((lo >> 40) & 0xff, 0x89); /* present 64-bit TSS */
		assert_int_equal(gm_read(gm, base + 4, &rsp0, 8), 0);
		/* Each vCPU takes exceptions on its own CPL0 stack. */
		assert_int_equal(rsp0, LAYOUT_KSTACKS + (i + 1) * LAYOUT_KSTACK_SIZE);
	}
	gm_destroy(gm);
}

static void test_boot_idt_gates_point_at_stubs_that_report_over_mmio(void **state)
{
	struct gm *gm;
	uint8_t gate[16], stub[16], tail[16];
	uint64_t mmio = 0;

	(void)state;
	assert_int_equal(gm_create_anon(16 << 20, &gm), 0);
	assert_int_equal(boot_build_tables(gm, 1), 0);
	for (unsigned int v = 0; v < 32; v++) {
		gpa_t target;

		assert_int_equal(gm_read(gm, LAYOUT_IDT + v * 16, gate, 16), 0);
		target = gate[0] | (gate[1] << 8) | ((uint64_t)gate[6] << 16) |
			 ((uint64_t)gate[7] << 24);
		assert_int_equal(gate[5], 0x8e); /* present interrupt gate, DPL0 */
		assert_int_equal(gate[2], ABI_SEL_KERNEL_CS);
		assert_int_equal(gm_read(gm, target, stub, sizeof(stub)), 0);
		/* #PF (14) pushes its own error code; #UD (6) gets a pushed 0. */
		if (v == 14)
			assert_true(stub[0] == 0x6a && stub[1] == 14);
		if (v == 6)
			assert_true(stub[0] == 0x6a && stub[1] == 0 && stub[2] == 0x6a && stub[3] == 6);
	}
	/* The common tail stores to the system-control exception register. */
	assert_int_equal(gm_read(gm, LAYOUT_IDT_STUBS + 32 * 16, tail, sizeof(tail)), 0);
	assert_true(tail[0] == 0x48 && tail[1] == 0xbf);
	memcpy(&mmio, tail + 2, 8);
	assert_int_equal(mmio, LAYOUT_MMIO_SYSCTL + ABI_SYS_EXCEPTION);
	gm_destroy(gm);
}

static void test_boot_params_list_ram_above_the_image_and_the_devices(void **state)
{
	struct abi_boot_params bp;
	struct boot_image img = { .entry = ABI_IMAGE_BASE, .image_end = ABI_IMAGE_BASE + 0x5000 };
	struct abi_device dev = { ABI_DEV_CONSOLE, 0, LAYOUT_MMIO_CONSOLE, 4096 };
	struct gm *gm;

	(void)state;
	assert_int_equal(gm_create_anon(4ULL << 30, &gm), 0);
	assert_int_equal(boot_write_params(gm, &img, 2, 2500000, "kvmem.wl=size=1", &dev, 1), 0);
	assert_int_equal(gm_read(gm, LAYOUT_BOOT_PARAMS, &bp, sizeof(bp)), 0);
	assert_int_equal(bp.magic, ABI_BOOT_MAGIC);
	assert_int_equal(bp.ncpus, 2);
	assert_int_equal(bp.tsc_khz, 2500000);
	assert_int_equal(bp.nr_ranges, 2);
	assert_int_equal(bp.ranges[0].gpa, img.image_end);
	assert_int_equal(bp.ranges[0].len, LAYOUT_LOW_RAM_MAX - img.image_end);
	assert_int_equal(bp.ranges[1].gpa, LAYOUT_HIGH_RAM_BASE);
	assert_int_equal(bp.ranges[1].len, (4ULL << 30) - LAYOUT_LOW_RAM_MAX);
	assert_int_equal(bp.nr_devices, 1);
	assert_int_equal(bp.devices[0].gpa, LAYOUT_MMIO_CONSOLE);
	assert_string_equal(bp.cmdline, "kvmem.wl=size=1");
	gm_destroy(gm);
}

static void test_boot_params_reject_an_oversized_command_line(void **state)
{
	struct boot_image img = { ABI_IMAGE_BASE, ABI_IMAGE_BASE + 0x1000 };
	char *big = malloc(ABI_MAX_CMDLINE + 1);
	struct gm *gm;

	(void)state;
	memset(big, 'x', ABI_MAX_CMDLINE);
	big[ABI_MAX_CMDLINE] = '\0';
	assert_int_equal(gm_create_anon(16 << 20, &gm), 0);
	assert_int_equal(boot_write_params(gm, &img, 1, 1, big, NULL, 0), -E2BIG);
	free(big);
	gm_destroy(gm);
}

static void write_file(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	fclose(f);
}

static void test_boot_elf_loader_refuses_what_is_not_a_static_x86_64_image(void **state)
{
	char path[] = "/tmp/kvmem-test-elf-XXXXXX";
	struct boot_image img;
	struct gm *gm;
	int fd = mkstemp(path);
	unsigned char hdr[64] = { 0x7f, 'E', 'L', 'F', 2, 1, 1 };

	(void)state;
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(gm_create_anon(16 << 20, &gm), 0);
	write_file(path, "#!/bin/sh\n", 10);
	assert_int_equal(boot_load_elf(gm, path, &img), -ENOEXEC);
	/* ELF64 header with e_type 0 and no program headers. */
	write_file(path, hdr, sizeof(hdr));
	assert_int_equal(boot_load_elf(gm, path, &img), -ENOEXEC);
	assert_int_equal(boot_load_elf(gm, "/nonexistent", &img), -ENOENT);
	unlink(path);
	gm_destroy(gm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_boot_page_tables_identity_map_ram_and_mmio_for_user),
		cmocka_unit_test(test_boot_page_tables_cover_ram_above_the_hole),
		cmocka_unit_test(test_boot_gdt_has_user_segments_and_one_tss_per_cpu),
		cmocka_unit_test(test_boot_idt_gates_point_at_stubs_that_report_over_mmio),
		cmocka_unit_test(test_boot_params_list_ram_above_the_image_and_the_devices),
		cmocka_unit_test(test_boot_params_reject_an_oversized_command_line),
		cmocka_unit_test(test_boot_elf_loader_refuses_what_is_not_a_static_x86_64_image),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
