/* SPDX-License-Identifier: MIT */
/*
 * The builders of the guest's boot state, run against anonymous guest memory
 * (no KVM): page tables, GDT/TSS, IDT and its exception stubs, the
 * boot-parameters page, where vCPUs enter, and the ELF loader: its refusals
 * and the relocation of a static-pie image.
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
#include <elf.h>

#include "core/boot.h"
#include "core/layout.h"
#include "fake_elf.h"
#include "mem/gm.h"
#include "mem/memmap.h"

static uint64_t rd64(struct gm *gm, gpa_t gpa)
{
	uint64_t v = 0;

	assert_int_equal(mem_read_le64(gm, gpa, &v), 0);
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
	assert_int_equal(mem_create_anon(64 << 20, &gm), 0);
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
	mem_destroy(gm);
}

static void test_boot_page_tables_cover_ram_above_the_hole(void **state)
{
	struct gm *gm;
	uint64_t ram = 4ULL << 30;
	gpa_t last = LAYOUT_HIGH_RAM_BASE + (ram - LAYOUT_LOW_RAM_MAX) - (2ULL << 20);

	(void)state;
	assert_int_equal(mem_create_anon(ram, &gm), 0);
	assert_int_equal(mem_nr_regions(gm), 2);
	assert_int_equal(boot_build_tables(gm, 1), 0);
	assert_int_equal(walk(gm, last) & ~0xfffULL, last);
	assert_int_equal(boot_mapped_top(ram), 5ULL << 30);
	mem_destroy(gm);
}

static void test_boot_gdt_has_user_segments_and_one_tss_per_cpu(void **state)
{
	struct gm *gm;
	unsigned int ncpus = 3;

	(void)state;
	assert_int_equal(mem_create_anon(16 << 20, &gm), 0);
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
		assert_int_equal(mem_read(gm, base + 4, &rsp0, 8), 0);
		/* Each vCPU takes exceptions on its own CPL0 stack. */
		assert_int_equal(rsp0, LAYOUT_KSTACKS + (i + 1) * LAYOUT_KSTACK_SIZE);
	}
	mem_destroy(gm);
}

static void test_boot_idt_gates_point_at_stubs_that_report_over_mmio(void **state)
{
	struct gm *gm;
	uint8_t gate[16], stub[16], tail[16];
	uint64_t mmio = 0;

	(void)state;
	assert_int_equal(mem_create_anon(16 << 20, &gm), 0);
	assert_int_equal(boot_build_tables(gm, 1), 0);
	for (unsigned int v = 0; v < 32; v++) {
		gpa_t target;

		assert_int_equal(mem_read(gm, LAYOUT_IDT + v * 16, gate, 16), 0);
		target = gate[0] | (gate[1] << 8) | ((uint64_t)gate[6] << 16) |
			 ((uint64_t)gate[7] << 24);
		assert_int_equal(gate[5], 0x8e); /* present interrupt gate, DPL0 */
		assert_int_equal(gate[2], ABI_SEL_KERNEL_CS);
		assert_int_equal(mem_read(gm, target, stub, sizeof(stub)), 0);
		/* #PF (14) pushes its own error code; #UD (6) gets a pushed 0. */
		if (v == 14)
			assert_true(stub[0] == 0x6a && stub[1] == 14);
		if (v == 6)
			assert_true(stub[0] == 0x6a && stub[1] == 0 && stub[2] == 0x6a && stub[3] == 6);
	}
	/* The common tail stores to the system-control exception register. */
	assert_int_equal(mem_read(gm, LAYOUT_IDT_STUBS + 32 * 16, tail, sizeof(tail)), 0);
	assert_true(tail[0] == 0x48 && tail[1] == 0xbf);
	memcpy(&mmio, tail + 2, 8);
	assert_int_equal(mmio, LAYOUT_MMIO_SYSCTL + ABI_SYS_EXCEPTION);
	mem_destroy(gm);
}

static void test_boot_params_list_ram_above_the_image_and_the_devices(void **state)
{
	struct abi_boot_params bp;
	struct boot_image img = { .entry = ABI_IMAGE_BASE, .image_end = ABI_IMAGE_BASE + 0x5000 };
	struct abi_device dev = { ABI_DEV_CONSOLE, 0, LAYOUT_MMIO_CONSOLE, 4096 };
	struct gm *gm;
	struct boot_info bi = {
		.ncpus = 2, .tsc_khz = 2500000, .cmdline = "kvmem.wl=size=1", .devs = &dev,
		.nr_devs = 1, .phys_offset = 0x123000000000ULL, .mmio_call = 0x5555000ULL,
	};

	(void)state;
	assert_int_equal(mem_create_anon(4ULL << 30, &gm), 0);
	assert_int_equal(boot_write_params(gm, &img, &bi), 0);
	assert_int_equal(mem_read(gm, LAYOUT_BOOT_PARAMS, &bp, sizeof(bp)), 0);
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
	assert_int_equal(bp.version, ABI_VERSION);
	assert_int_equal(bp.phys_offset, bi.phys_offset);
	assert_int_equal(bp.mmio_call, bi.mmio_call);
	/* Above RAM (which ends at 5 GiB here): nothing at all. */
	assert_int_equal(bp.phys_top, 5ULL << 30);
	mem_destroy(gm);
}

static void test_boot_params_reject_an_oversized_command_line(void **state)
{
	struct boot_image img = { ABI_IMAGE_BASE, ABI_IMAGE_BASE + 0x1000 };
	char *big = malloc(ABI_MAX_CMDLINE + 1);
	struct boot_info bi = { .ncpus = 1, .tsc_khz = 1, .cmdline = big };
	struct gm *gm;

	(void)state;
	memset(big, 'x', ABI_MAX_CMDLINE);
	big[ABI_MAX_CMDLINE] = '\0';
	assert_int_equal(mem_create_anon(16 << 20, &gm), 0);
	assert_int_equal(boot_write_params(gm, &img, &bi), -E2BIG);
	free(big);
	mem_destroy(gm);
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
	assert_int_equal(mem_create_anon(16 << 20, &gm), 0);
	write_file(path, "#!/bin/sh\n", 10);
	assert_int_equal(boot_load_elf(gm, path, 0, &img), -ENOEXEC);
	/* ELF64 header with e_type 0 and no program headers. */
	write_file(path, hdr, sizeof(hdr));
	assert_int_equal(boot_load_elf(gm, path, 0, &img), -ENOEXEC);
	assert_int_equal(boot_load_elf(gm, "/nonexistent", 0, &img), -ENOENT);
	unlink(path);
	mem_destroy(gm);
}

/*
 * A minimal static-pie image: one RWX PT_LOAD at ABI_IMAGE_BASE holding the
 * headers, a dynamic section (DF_1_PIE) and its RELA table, then a data area
 * the relocations write to; and a PT_DYNAMIC. Relocation i targets
 * data + 8 * i with addend ABI_IMAGE_BASE + 0x100 * i.
 */
#define PIE_NRELA 3
#define PIE_DYN_OFF 0x200
#define PIE_RELA_OFF 0x300
#define PIE_DATA_OFF 0x400
#define PIE_SIZE 0x1000

struct pie {
	uint8_t b[PIE_SIZE];
};

static Elf64_Rela *pie_rela(struct pie *p, unsigned int i)
{
	return (Elf64_Rela *)(p->b + PIE_RELA_OFF) + i;
}

static void pie_build(struct pie *p)
{
	Elf64_Ehdr *eh = (Elf64_Ehdr *)p->b;
	Elf64_Phdr *ph = (Elf64_Phdr *)(p->b + sizeof(*eh));
	Elf64_Dyn *dyn = (Elf64_Dyn *)(p->b + PIE_DYN_OFF);

	memset(p, 0, sizeof(*p));
	fake_elf_header(eh, ET_DYN, ABI_IMAGE_BASE + PIE_DATA_OFF, 2);
	ph[0] = (Elf64_Phdr){ .p_type = PT_LOAD, .p_flags = PF_R | PF_W | PF_X, .p_offset = 0,
			      .p_vaddr = ABI_IMAGE_BASE, .p_paddr = ABI_IMAGE_BASE,
			      .p_filesz = PIE_SIZE, .p_memsz = PIE_SIZE, .p_align = 4096 };
	ph[1] = (Elf64_Phdr){ .p_type = PT_DYNAMIC, .p_flags = PF_R | PF_W,
			      .p_offset = PIE_DYN_OFF, .p_vaddr = ABI_IMAGE_BASE + PIE_DYN_OFF,
			      .p_paddr = ABI_IMAGE_BASE + PIE_DYN_OFF,
			      .p_filesz = 5 * sizeof(*dyn), .p_memsz = 5 * sizeof(*dyn) };
	dyn[0] = (Elf64_Dyn){ .d_tag = DT_RELA, .d_un.d_ptr = ABI_IMAGE_BASE + PIE_RELA_OFF };
	dyn[1] = (Elf64_Dyn){ .d_tag = DT_RELASZ, .d_un.d_val = PIE_NRELA * sizeof(Elf64_Rela) };
	dyn[2] = (Elf64_Dyn){ .d_tag = DT_RELAENT, .d_un.d_val = sizeof(Elf64_Rela) };
	dyn[3] = (Elf64_Dyn){ .d_tag = DT_FLAGS_1, .d_un.d_val = DF_1_PIE };
	dyn[4] = (Elf64_Dyn){ .d_tag = DT_NULL };
	for (unsigned int i = 0; i < PIE_NRELA; i++)
		*pie_rela(p, i) = (Elf64_Rela){
			.r_offset = ABI_IMAGE_BASE + PIE_DATA_OFF + 8 * i,
			.r_info = ELF64_R_INFO(0, R_X86_64_RELATIVE),
			.r_addend = (Elf64_Sxword)(ABI_IMAGE_BASE + 0x100 * i),
		};
}

/* Load p from a file with phys_offset; returns boot_load_elf's result. */
static int pie_load(struct gm *gm, const struct pie *p, uint64_t phys_offset)
{
	char path[] = "/tmp/kvmem-test-pie-XXXXXX";
	struct boot_image img;
	int fd = mkstemp(path), ret;

	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, sizeof(*p)), sizeof(*p));
	close(fd);
	ret = boot_load_elf(gm, path, phys_offset, &img);
	unlink(path);
	if (!ret)
		assert_int_equal(img.entry, ABI_IMAGE_BASE + PIE_DATA_OFF);
	return ret;
}

static void test_boot_elf_loader_relocates_a_static_pie_by_the_phys_offset(void **state)
{
	const uint64_t offset = 0x123400000000ULL;
	struct pie p;
	struct gm *gm;

	(void)state;
	pie_build(&p);
	assert_int_equal(mem_create_anon(16 << 20, &gm), 0);
	assert_int_equal(pie_load(gm, &p, offset), 0);
	for (unsigned int i = 0; i < PIE_NRELA; i++)
		assert_int_equal(rd64(gm, ABI_IMAGE_BASE + PIE_DATA_OFF + 8 * i),
				 offset + ABI_IMAGE_BASE + 0x100 * i);
	/* Under kvm the offset is 0: every pointer is its link address. */
	assert_int_equal(pie_load(gm, &p, 0), 0);
	assert_int_equal(rd64(gm, ABI_IMAGE_BASE + PIE_DATA_OFF + 8), ABI_IMAGE_BASE + 0x100);
	/* GNU ld's static-pie at a fixed base is ET_EXEC: DF_1_PIE is what counts. */
	((Elf64_Ehdr *)p.b)->e_type = ET_EXEC;
	assert_int_equal(pie_load(gm, &p, offset), 0);
	assert_int_equal(rd64(gm, ABI_IMAGE_BASE + PIE_DATA_OFF + 16), offset + ABI_IMAGE_BASE + 0x200);
	mem_destroy(gm);
}

static void test_boot_elf_loader_refuses_what_needs_a_dynamic_linker(void **state)
{
	Elf64_Dyn *dyn;
	struct pie p;
	struct gm *gm;

	(void)state;
	assert_int_equal(mem_create_anon(16 << 20, &gm), 0);
	/* Any relocation type but R_X86_64_RELATIVE. */
	pie_build(&p);
	pie_rela(&p, 1)->r_info = ELF64_R_INFO(1, R_X86_64_64);
	assert_int_equal(pie_load(gm, &p, 0x1000000000ULL), -ENOEXEC);
	pie_build(&p);
	pie_rela(&p, 2)->r_info = ELF64_R_INFO(0, R_X86_64_NONE);
	assert_int_equal(pie_load(gm, &p, 0), -ENOEXEC);
	/* A relocation outside the image, and one at its very end (8 bytes do not fit). */
	pie_build(&p);
	pie_rela(&p, 0)->r_offset = ABI_IMAGE_BASE + (16 << 20);
	assert_int_equal(pie_load(gm, &p, 0), -ENOEXEC);
	pie_build(&p);
	pie_rela(&p, 0)->r_offset = ABI_IMAGE_BASE + PIE_SIZE - 4;
	assert_int_equal(pie_load(gm, &p, 0), -ENOEXEC);
	/* A relocation table that claims to run past the file. */
	pie_build(&p);
	dyn = (Elf64_Dyn *)(p.b + PIE_DYN_OFF);
	dyn[1].d_un.d_val = 1000 * sizeof(Elf64_Rela);
	assert_int_equal(pie_load(gm, &p, 0), -ENOEXEC);
	/* Shared libraries, text relocations. */
	pie_build(&p);
	dyn = (Elf64_Dyn *)(p.b + PIE_DYN_OFF);
	dyn[2] = (Elf64_Dyn){ .d_tag = DT_NEEDED, .d_un.d_val = 1 };
	assert_int_equal(pie_load(gm, &p, 0), -ENOEXEC);
	pie_build(&p);
	dyn = (Elf64_Dyn *)(p.b + PIE_DYN_OFF);
	dyn[2] = (Elf64_Dyn){ .d_tag = DT_TEXTREL };
	assert_int_equal(pie_load(gm, &p, 0), -ENOEXEC);
	/* Thread-local storage. */
	pie_build(&p);
	((Elf64_Phdr *)(p.b + sizeof(Elf64_Ehdr)))[1].p_type = PT_TLS;
	assert_int_equal(pie_load(gm, &p, 0), -ENOEXEC);
	/* An executable with a dynamic section that does not say PIE needs a dynamic linker. */
	pie_build(&p);
	((Elf64_Ehdr *)p.b)->e_type = ET_EXEC;
	((Elf64_Dyn *)(p.b + PIE_DYN_OFF))[3].d_tag = DT_NULL;
	assert_int_equal(pie_load(gm, &p, 0), -ENOEXEC);
	/* A fixed-address executable cannot run at a host address. */
	pie_build(&p);
	((Elf64_Ehdr *)p.b)->e_type = ET_EXEC;
	((Elf64_Ehdr *)p.b)->e_phnum = 1;
	assert_int_equal(pie_load(gm, &p, 0x1000000000ULL), -ENOEXEC);
	assert_int_equal(pie_load(gm, &p, 0), 0);
	mem_destroy(gm);
}

static void test_boot_vcpu_entry_converts_every_address_by_the_phys_offset(void **state)
{
	const uint64_t offset = 0x110040000000ULL;
	struct boot_image img = { .entry = ABI_IMAGE_BASE + 0x40, .image_end = ABI_IMAGE_BASE };
	struct accel_entry e;

	(void)state;
	boot_vcpu_entry(&e, 1, &img, offset, true);
	assert_int_equal(e.rip, offset + ABI_IMAGE_BASE + 0x40);
	assert_int_equal(e.rdi, 1);
	assert_int_equal(e.rsi, offset + LAYOUT_BOOT_PARAMS);
	assert_int_equal(e.rdx, offset + LAYOUT_USTACKS + 2 * LAYOUT_USTACK_SIZE);
	assert_int_equal(e.rcx, offset);
	assert_int_equal(e.r8, ABI_ENTRY_USER);
	boot_vcpu_entry(&e, 0, &img, 0, false);
	assert_int_equal(e.rip, ABI_IMAGE_BASE + 0x40);
	assert_int_equal(e.rsi, LAYOUT_BOOT_PARAMS);
	assert_int_equal(e.rcx, 0);
	assert_int_equal(e.r8, 0);
	assert_int_equal(e.kstack, LAYOUT_KSTACKS + LAYOUT_KSTACK_SIZE);
}

static void test_boot_guest_ram_is_one_reservation_with_guard_gaps(void **state)
{
	struct gm *a, *b;
	uint8_t *pa, *pb;

	(void)state;
	assert_int_equal(mem_create_anon(64 << 20, &a), 0);
	assert_int_equal(mem_create_anon(5ULL << 30, &b), 0);
	pa = mem_phys_base(a);
	pb = mem_phys_base(b);
	assert_true((uint64_t)(uintptr_t)pa >= MEM_ARENA_START + MEM_GUARD);
	assert_int_equal(mem_span(a), 4ULL << 30);
	assert_int_equal(mem_span(b), 6ULL << 30);
	/* b comes after a's span and both guards. */
	assert_true(pb >= pa + mem_span(a) + 2 * MEM_GUARD);
	/* gpa X is at phys_base + X, in both regions. */
	assert_int_equal(mem_write_le64(b, LAYOUT_HIGH_RAM_BASE + 8, 0x1234), 0);
	assert_int_equal(*(uint64_t *)(pb + LAYOUT_HIGH_RAM_BASE + 8), 0x1234);
	mem_destroy(a);
	mem_destroy(b);
	/* Placement is first fit in creation order: the same again gives the same base. */
	assert_int_equal(mem_create_anon(64 << 20, &a), 0);
	assert_ptr_equal(mem_phys_base(a), pa);
	mem_destroy(a);
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
		cmocka_unit_test(test_boot_elf_loader_relocates_a_static_pie_by_the_phys_offset),
		cmocka_unit_test(test_boot_elf_loader_refuses_what_needs_a_dynamic_linker),
		cmocka_unit_test(test_boot_vcpu_entry_converts_every_address_by_the_phys_offset),
		cmocka_unit_test(test_boot_guest_ram_is_one_reservation_with_guard_gaps),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
