/* SPDX-License-Identifier: MIT */
/*
 * The Linux boot loader (core/linux_boot.c) against a real kernel, with no
 * VM: Debian's bzImage (linux-image-amd64; KVMEM_TEST_KERNEL names another)
 * is checked, planned and written into anonymous guest memory, and the zero
 * page, e820 map, GDT, page tables, entry registers and the MP and ACPI
 * tables are read back at the specifications' offsets (written out here
 * again, independently of the loader's structures). Bad images are the real one with one field broken.
 * Without a kernel image the whole test skips (77), saying why.
 */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/layout.h"
#include "core/linux_boot.h"
#include "mem/gm.h"

#define MIB (1ULL << 20)

static char kernel[4096];		/* the real image */
static uint8_t head[LINUX_IMAGE_HEAD];	/* its first bytes */
static uint64_t kernel_bytes;		/* its size */
static char dir[64];			/* scratch files */

static uint16_t h16(const uint8_t *b, size_t off)
{
	uint16_t v;

	memcpy(&v, b + off, sizeof(v));
	return v;
}

static uint32_t h32(const uint8_t *b, size_t off)
{
	uint32_t v;

	memcpy(&v, b + off, sizeof(v));
	return v;
}

static uint64_t h64(const uint8_t *b, size_t off)
{
	uint64_t v;

	memcpy(&v, b + off, sizeof(v));
	return v;
}

/* The image under test: $KVMEM_TEST_KERNEL, else the newest /boot/vmlinuz-*. */
static bool find_kernel(void)
{
	const char *env = getenv("KVMEM_TEST_KERNEL");
	glob_t g;
	bool found = false;

	if (env && *env) {
		snprintf(kernel, sizeof(kernel), "%s", env);
		return access(kernel, R_OK) == 0;
	}
	if (glob("/boot/vmlinuz-*", 0, NULL, &g) == 0) {
		for (size_t i = g.gl_pathc; i-- > 0 && !found;) {
			if (access(g.gl_pathv[i], R_OK) == 0) {
				snprintf(kernel, sizeof(kernel), "%s", g.gl_pathv[i]);
				found = true;
			}
		}
		globfree(&g);
	}
	return found;
}

static void path_in_dir(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", dir, name);
}

static void write_file(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	fclose(f);
}

/* A file of `bytes` whose every 8 bytes hold their own offset (sparse when asked). */
static void make_initrd(const char *path, uint64_t bytes, bool sparse)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	assert_true(fd >= 0);
	if (sparse) {
		assert_int_equal(ftruncate(fd, (off_t)bytes), 0);
	} else {
		uint64_t buf[512];

		for (uint64_t off = 0; off < bytes; off += sizeof(buf)) {
			size_t n = bytes - off < sizeof(buf) ? (size_t)(bytes - off) : sizeof(buf);

			for (unsigned int i = 0; i < 512; i++)
				buf[i] = off + i * 8;
			assert_int_equal(write(fd, buf, n), (ssize_t)n);
		}
	}
	close(fd);
}

static int setup(void **state)
{
	int fd;

	(void)state;
	fd = open(kernel, O_RDONLY);
	if (fd < 0 || pread(fd, head, sizeof(head), 0) != (ssize_t)sizeof(head))
		return -1;
	kernel_bytes = (uint64_t)lseek(fd, 0, SEEK_END);
	close(fd);
	snprintf(dir, sizeof(dir), "/tmp/kvmem-test-linux-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	static const char *const names[] = { "bad", "initrd", "big-initrd" };
	char path[128];

	(void)state;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		path_in_dir(path, sizeof(path), names[i]);
		unlink(path);
	}
	rmdir(dir);
	return 0;
}

/* What the image's own bytes say, read here without the loader. */
static uint64_t setup_bytes(void)
{
	return ((uint64_t)(head[0x1f1] ? head[0x1f1] : 4) + 1) * 512;
}

static void test_linux_image_debian_kernel_passes_every_check(void **state)
{
	struct linux_image img;
	char why[512] = "";
	const char *base = strrchr(kernel, '/');

	(void)state;
	assert_int_equal(linux_image_open(kernel, &img, why, sizeof(why)), 0);
	assert_true(img.fd >= 0);
	assert_true(img.protocol >= 0x020c);
	assert_int_equal(img.protocol, h16(head, 0x206));
	assert_int_equal(img.kernel_offset, setup_bytes());
	assert_int_equal(img.kernel_bytes, (uint64_t)h32(head, 0x1f4) * 16);
	assert_true(img.kernel_offset + img.kernel_bytes <= kernel_bytes);
	assert_int_equal(img.load_gpa, h64(head, 0x258));
	assert_true(img.load_gpa >= MIB);
	assert_int_equal(img.init_size, h32(head, 0x260));
	assert_int_equal(img.cmdline_max, h32(head, 0x238));
	assert_int_equal(img.initrd_max, h32(head, 0x22c));
	assert_true(img.xloadflags & 1); /* XLF_KERNEL_64 */
	assert_int_equal(img.header_len, 0x202 + head[0x201] - 0x1f1);
	assert_memory_equal(img.header, head + 0x1f1, img.header_len);
	/* Debian's file is vmlinuz-<release>, and its version string starts with the release. */
	if (base && !strncmp(base, "/vmlinuz-", 9) && !getenv("KVMEM_TEST_KERNEL"))
		assert_int_equal(strncmp(img.version, base + 9, strlen(base + 9)), 0);
	linux_image_close(&img);
	assert_int_equal(img.fd, -1);
}

/* A copy of the real head with one change, refused by the parser with `says` in the reason. */
static void refused(const uint8_t *h, uint64_t file_bytes, const char *says)
{
	struct linux_image img;
	char why[512] = "";
	int ret = linux_image_parse(h, LINUX_IMAGE_HEAD, file_bytes, &img, why, sizeof(why));

	if (ret != -ENOEXEC || !strstr(why, says))
		fail_msg("expected -ENOEXEC naming \"%s\", got %d: %s", says, ret, why);
}

static void put16(uint8_t *b, size_t off, uint16_t v)
{
	memcpy(b + off, &v, sizeof(v));
}

static void put32(uint8_t *b, size_t off, uint32_t v)
{
	memcpy(b + off, &v, sizeof(v));
}

static void put64(uint8_t *b, size_t off, uint64_t v)
{
	memcpy(b + off, &v, sizeof(v));
}

static void test_linux_image_broken_fields_are_refused_by_name(void **state)
{
	uint8_t h[LINUX_IMAGE_HEAD];
	struct linux_image img;
	char why[512];

	(void)state;
	/* The real head passes the parser alone too. */
	assert_int_equal(linux_image_parse(head, sizeof(head), kernel_bytes, &img, why,
					   sizeof(why)), 0);

	/* Truncated: no setup header, no setup code, or less kernel than syssize says. */
	refused(head, 600, "truncated");
	refused(head, setup_bytes(), "setup_sects");
	refused(head, setup_bytes() + 4096, "syssize");

	memcpy(h, head, sizeof(h));
	put16(h, 0x1fe, 0x55aa);
	refused(h, kernel_bytes, "boot_flag");

	memcpy(h, head, sizeof(h));
	memcpy(h + 0x202, "HdrZ", 4);
	refused(h, kernel_bytes, "HdrS");

	memcpy(h, head, sizeof(h));
	put16(h, 0x206, 0x0206);
	refused(h, kernel_bytes, "older than 2.12");

	memcpy(h, head, sizeof(h));
	put16(h, 0x236, h16(head, 0x236) & ~1);
	refused(h, kernel_bytes, "XLF_KERNEL_64");

	memcpy(h, head, sizeof(h));
	h[0x211] &= (uint8_t)~1;
	refused(h, kernel_bytes, "LOADED_HIGH");

	/* A header too short to hold init_size, or too long for the zero page. */
	memcpy(h, head, sizeof(h));
	h[0x201] = 0x20;
	refused(h, kernel_bytes, "setup header ends");
	memcpy(h, head, sizeof(h));
	h[0x201] = 0x90;
	refused(h, kernel_bytes, "setup header ends");

	memcpy(h, head, sizeof(h));
	put32(h, 0x248, h32(head, 0x1f4) * 16);
	refused(h, kernel_bytes, "payload_offset");

	memcpy(h, head, sizeof(h));
	h[0x234] = 1;
	put32(h, 0x230, 0x300000);
	refused(h, kernel_bytes, "kernel_alignment");

	memcpy(h, head, sizeof(h));
	put64(h, 0x258, 0x80000);
	refused(h, kernel_bytes, "pref_address");
	memcpy(h, head, sizeof(h));
	h[0x234] = 1;
	put64(h, 0x258, h64(head, 0x258) + 0x1000);
	refused(h, kernel_bytes, "not aligned to kernel_alignment");

	memcpy(h, head, sizeof(h));
	put32(h, 0x260, 4096);
	refused(h, kernel_bytes, "init_size");
}

static void test_linux_image_open_names_the_file(void **state)
{
	struct linux_image img;
	char bad[128], why[512] = "";
	uint8_t h[LINUX_IMAGE_HEAD];

	(void)state;
	path_in_dir(bad, sizeof(bad), "bad");
	memcpy(h, head, sizeof(h));
	put16(h, 0x1fe, 0);
	write_file(bad, h, sizeof(h));
	assert_int_equal(linux_image_open(bad, &img, why, sizeof(why)), -ENOEXEC);
	assert_int_equal(strncmp(why, bad, strlen(bad)), 0);
	assert_non_null(strstr(why, "not a bootable x86-64 Linux kernel: boot_flag"));
	assert_int_equal(img.fd, -1);
	/* The real head alone: the kernel after it is missing. */
	write_file(bad, head, sizeof(head));
	assert_int_equal(linux_image_open(bad, &img, why, sizeof(why)), -ENOEXEC);
	assert_non_null(strstr(why, "truncated"));
	assert_int_equal(linux_image_open(dir, &img, why, sizeof(why)), -ENOEXEC);
	assert_non_null(strstr(why, "not a regular file"));
	assert_int_equal(linux_image_open("/nonexistent/vmlinuz", &img, why, sizeof(why)),
			 -ENOENT);
	assert_non_null(strstr(why, "/nonexistent/vmlinuz"));
}

/* The zero page's e820 entry i. */
static void e820_at(const uint8_t *zp, unsigned int i, uint64_t *addr, uint64_t *size,
		    uint32_t *type)
{
	*addr = h64(zp, 0x2d0 + 20 * i);
	*size = h64(zp, 0x2d0 + 20 * i + 8);
	*type = h32(zp, 0x2d0 + 20 * i + 16);
}

static void expect_e820(const uint8_t *zp, unsigned int i, uint64_t addr, uint64_t size,
			uint32_t type)
{
	uint64_t a, s;
	uint32_t t;

	e820_at(zp, i, &a, &s, &t);
	if (a != addr || s != size || t != type)
		fail_msg("e820[%u] is 0x%llx+0x%llx type %u, expected 0x%llx+0x%llx type %u", i,
			 (unsigned long long)a, (unsigned long long)s, t,
			 (unsigned long long)addr, (unsigned long long)size, type);
}

/* Walk 4-level tables in guest memory from cr3 like the MMU: the physical address of va, or -1. */
static uint64_t translate(struct gm *gm, uint64_t cr3, uint64_t va)
{
	uint64_t e = 0, table = cr3 & ~0xfffULL;

	for (int level = 3; level >= 0; level--) {
		uint64_t idx = (va >> (12 + 9 * level)) & 511;

		assert_int_equal(mem_read_le64(gm, table + idx * 8, &e), 0);
		if (!(e & 1))
			return ~0ULL;
		if (level == 1 && (e & 0x80))
			return (e & ~0x1fffffULL & ((1ULL << 52) - 1)) | (va & 0x1fffff);
		table = e & ~0xfffULL & ((1ULL << 52) - 1);
	}
	return table | (va & 0xfff);
}

static bool same_as_file(struct gm *gm, uint64_t gpa, const char *path, uint64_t off, size_t len)
{
	uint8_t *a = malloc(len), *b = malloc(len);
	int fd = open(path, O_RDONLY);
	bool same;

	assert_non_null(a);
	assert_non_null(b);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, a, len, (off_t)off), (ssize_t)len);
	close(fd);
	assert_int_equal(mem_read(gm, gpa, b, len), 0);
	same = !memcmp(a, b, len);
	free(a);
	free(b);
	return same;
}

/*
 * The whole boot of Debian's kernel with an initrd into 512 MiB: every
 * write where the protocol says, the zero page's fields at their offsets,
 * and the e820 map the same RAM as the guest memory object's regions.
 */
static void test_linux_boot_writes_kernel_initrd_and_zero_page(void **state)
{
	const char *cmdline = "console=ttyS0 reboot=k panic=1";
	struct linux_boot_plan *plan;
	struct linux_machine m;
	struct linux_image img;
	uint8_t zp[4096];
	char initrd[128], why[512] = "", got[64];
	uint64_t initrd_bytes = 3 * MIB + 123, low, len;
	gpa_t gpa;
	struct gm *gm;

	(void)state;
	path_in_dir(initrd, sizeof(initrd), "initrd");
	make_initrd(initrd, initrd_bytes, false);
	assert_int_equal(mem_create_anon(512 * MIB, &gm), 0);
	linux_machine_of(gm, &m);
	assert_int_equal(m.ram_bytes, 512 * MIB);
	assert_int_equal(m.corpus_bytes, 0);
	assert_int_equal(m.platform.ncpus, 0);
	m.platform.ncpus = 1;
	assert_int_equal(linux_image_open(kernel, &img, why, sizeof(why)), 0);
	assert_int_equal(linux_boot_plan(&img, initrd, cmdline, &m, &plan, why, sizeof(why)), 0);
	assert_int_equal(linux_boot_apply(gm, plan), 0);

	/* The kernel at pref_address, its file bytes after the setup code. */
	assert_int_equal(plan->kernel_gpa, h64(head, 0x258));
	assert_true(same_as_file(gm, plan->kernel_gpa, kernel, setup_bytes(), 1 << 20));
	len = (uint64_t)h32(head, 0x1f4) * 16;
	assert_true(same_as_file(gm, plan->kernel_gpa + len - 4096, kernel,
				 setup_bytes() + len - 4096, 4096));
	assert_int_equal(plan->kernel_end % 4096, 0);
	assert_true(plan->kernel_end >= plan->kernel_gpa + h32(head, 0x260));

	/* The initrd: page aligned, above the kernel, as high as initrd_addr_max and RAM allow. */
	low = 512 * MIB;
	if ((uint64_t)h32(head, 0x22c) + 1 < low)
		low = (uint64_t)h32(head, 0x22c) + 1;
	assert_int_equal(plan->initrd_gpa, (low - initrd_bytes) & ~4095ULL);
	assert_true(plan->initrd_gpa >= plan->kernel_end);
	assert_int_equal(plan->initrd_bytes, initrd_bytes);
	assert_true(same_as_file(gm, plan->initrd_gpa, initrd, 0, (size_t)initrd_bytes));

	/* The zero page, at the offsets of Documentation/arch/x86/zero-page.rst. */
	assert_int_equal(mem_read(gm, plan->zero_page_gpa, zp, sizeof(zp)), 0);
	assert_int_equal(plan->zero_page_gpa, LAYOUT_LINUX_ZERO_PAGE);
	assert_int_equal(h16(zp, 0x1fe), 0xaa55);
	assert_int_equal(h32(zp, 0x202), 0x53726448);
	assert_int_equal(h16(zp, 0x206), h16(head, 0x206));
	assert_int_equal(zp[0x210], 0xff);			/* type_of_loader */
	assert_int_equal(zp[0x211], head[0x211] | 0x80);	/* loadflags: + CAN_USE_HEAP */
	assert_int_equal(zp[0x211] & 1, 1);			/* LOADED_HIGH */
	assert_int_equal(h16(zp, 0x1fa), 0xffff);		/* vid_mode: normal */
	assert_int_equal(h16(zp, 0x224), 0xe000 - 0x200);	/* heap_end_ptr */
	assert_int_equal(h32(zp, 0x214), plan->kernel_gpa);	/* code32_start */
	assert_int_equal(h32(zp, 0x218), plan->initrd_gpa);	/* ramdisk_image */
	assert_int_equal(h32(zp, 0x21c), initrd_bytes);		/* ramdisk_size */
	assert_int_equal(h32(zp, 0xc0), 0);			/* ext_ramdisk_image */
	assert_int_equal(h32(zp, 0x228), LAYOUT_LINUX_CMDLINE); /* cmd_line_ptr */
	assert_int_equal(h32(zp, 0xc8), 0);			/* ext_cmd_line_ptr */
	assert_int_equal(h32(zp, 0x238), h32(head, 0x238));	/* cmdline_size, as read */
	assert_int_equal(h64(zp, 0x250), 0);			/* no setup_data */
	assert_int_equal(zp[0x1ef], 0);				/* sentinel: a clean zero page */
	/* Fields the loader does not write are the image's. */
	assert_memory_equal(zp + 0x22c, head + 0x22c, 0x23c - 0x22c);
	assert_memory_equal(zp + 0x258, head + 0x258, 0x202 + head[0x201] - 0x258);
	assert_int_equal(mem_read(gm, LAYOUT_LINUX_CMDLINE, got, strlen(cmdline) + 1), 0);
	assert_string_equal(got, cmdline);

	/* ACPI's root pointer (acpi_rsdp_addr), where the tables start. */
	assert_int_equal(h64(zp, 0x070), LAYOUT_LINUX_ACPI);

	/* e820: RAM to the tables, the tables reserved, RAM from 1 MiB to the end of region 0. */
	assert_int_equal(zp[0x1e8], 3);
	assert_int_equal(plan->nr_e820, 3);
	assert_int_equal(mem_nr_regions(gm), 1);
	mem_region(gm, 0, &gpa, &len);
	expect_e820(zp, 0, 0, 0x9e000, 1);
	expect_e820(zp, 1, 0x9e000, 0x2000, 2);
	expect_e820(zp, 2, 0x100000, gpa + len - 0x100000, 1);

	linux_boot_plan_free(plan);
	linux_image_close(&img);
	mem_destroy(gm);
}

/* Decode the descriptor of s's selector in the guest's GDT: it says what s holds. */
static void expect_descriptor(struct gm *gm, const struct linux_cpu_state *c,
			      const struct linux_segment *s)
{
	uint64_t d = 0;
	uint64_t base;
	uint32_t limit;

	assert_true(s->selector + 8u <= c->gdt_limit + 1u);
	assert_int_equal(mem_read_le64(gm, c->gdt_base + s->selector, &d), 0);
	base = ((d >> 16) & 0xffffff) | (((d >> 56) & 0xff) << 24);
	limit = (uint32_t)((d & 0xffff) | (((d >> 48) & 0xf) << 16));
	if ((d >> 55) & 1)
		limit = (limit << 12) | 0xfff;
	assert_int_equal(base, s->base & 0xffffffff);
	assert_int_equal(limit, s->limit);
	assert_int_equal((d >> 40) & 0xf, s->type);
	assert_int_equal((d >> 44) & 1, s->s);
	assert_int_equal((d >> 45) & 3, s->dpl);
	assert_int_equal((d >> 47) & 1, s->present);
	assert_int_equal((d >> 53) & 1, s->l);
	assert_int_equal((d >> 54) & 1, s->db);
	assert_int_equal((d >> 55) & 1, s->g);
}

/* vCPU 0's state is the 64-bit protocol's, and what it needs is mapped identity. */
static void test_linux_boot_enters_64bit_with_boot_segments_and_identity_map(void **state)
{
	struct linux_boot_plan *plan;
	struct linux_machine m = { .ram_bytes = 1024 * MIB, .platform.ncpus = 2 };
	struct linux_image img;
	const struct linux_cpu_state *c;
	char initrd[128], why[512];
	struct gm *gm;
	uint64_t probe[8];

	(void)state;
	path_in_dir(initrd, sizeof(initrd), "initrd");
	make_initrd(initrd, 1 * MIB, false);
	assert_int_equal(mem_create_anon(m.ram_bytes, &gm), 0);
	assert_int_equal(linux_image_open(kernel, &img, why, sizeof(why)), 0);
	assert_int_equal(linux_boot_plan(&img, initrd, "", &m, &plan, why, sizeof(why)), 0);
	assert_int_equal(linux_boot_apply(gm, plan), 0);
	c = &plan->bsp;
	assert_int_equal(c->rip, plan->kernel_gpa + 0x200);	/* the 64-bit entry */
	assert_int_equal(c->rsi, plan->zero_page_gpa);
	assert_int_equal(c->rflags & 0x200, 0);		/* interrupts off */
	assert_int_equal(c->rflags & 2, 2);
	assert_int_equal(c->cr0 & 0x80000001, 0x80000001);	/* PG, PE */
	assert_int_equal(c->cr4 & 0x20, 0x20);			/* PAE */
	assert_int_equal(c->efer & 0x500, 0x500);		/* LME, LMA */
	assert_int_equal(c->cs.selector, 0x10);			/* __BOOT_CS */
	assert_int_equal(c->ds.selector, 0x18);			/* __BOOT_DS */
	assert_true(c->cs.l && !c->cs.db && c->cs.present && c->cs.s && (c->cs.type & 0xa) == 0xa);
	assert_true(!c->ds.l && c->ds.present && c->ds.s && (c->ds.type & 0xa) == 0x2);
	assert_int_equal(c->cs.base, 0);
	assert_int_equal(c->ds.limit, 0xffffffff);		/* 4G flat */
	expect_descriptor(gm, c, &c->cs);
	expect_descriptor(gm, c, &c->ds);
	expect_descriptor(gm, c, &c->tr);
	assert_int_equal(c->tr.type, 0xb);			/* busy 64-bit TSS */

	/* Identity: kernel, its init_size, zero page, command line, initrd, the rest of RAM. */
	probe[0] = c->rip;
	probe[1] = plan->kernel_end - 1;
	probe[2] = plan->zero_page_gpa;
	probe[3] = plan->cmdline_gpa;
	probe[4] = plan->initrd_gpa;
	probe[5] = plan->initrd_gpa + plan->initrd_bytes - 1;
	probe[6] = m.ram_bytes - 1;
	probe[7] = c->rsp - 8;
	for (unsigned int i = 0; i < 8; i++)
		assert_int_equal(translate(gm, c->cr3, probe[i]), probe[i]);

	/* The writes never overlap and all lie in RAM below the hole. */
	for (unsigned int i = 0; i < plan->nr_writes; i++) {
		const struct linux_write *w = &plan->writes[i];

		assert_true(w->gpa + w->len <= LAYOUT_LOW_RAM_MAX);
		assert_true(mem_range_ok(gm, w->gpa, w->len));
		for (unsigned int j = i + 1; j < plan->nr_writes; j++)
			assert_true(w->gpa + w->len <= plan->writes[j].gpa ||
				    plan->writes[j].gpa + plan->writes[j].len <= w->gpa);
	}
	linux_boot_plan_free(plan);
	linux_image_close(&img);
	mem_destroy(gm);
}

/* RAM above 4 GiB and a corpus: the map follows the guest memory's regions around the hole. */
static void test_linux_e820_around_the_mmio_hole(void **state)
{
	struct linux_boot_plan *plan;
	struct linux_machine m = { .ram_bytes = 4096 * MIB, .corpus_bytes = 64 * MIB,
				   .platform.ncpus = 1 };
	struct linux_image img;
	char why[512];
	struct gm *gm;
	gpa_t gpa0, gpa1;
	uint64_t len0, len1;

	(void)state;
	assert_int_equal(mem_create_anon(m.ram_bytes, &gm), 0);
	assert_int_equal(mem_nr_regions(gm), 2);
	mem_region(gm, 0, &gpa0, &len0);
	mem_region(gm, 1, &gpa1, &len1);
	assert_int_equal(linux_image_open(kernel, &img, why, sizeof(why)), 0);
	assert_int_equal(linux_boot_plan(&img, NULL, "quiet", &m, &plan, why, sizeof(why)), 0);
	assert_int_equal(plan->nr_e820, 5);
	assert_int_equal(plan->zero_page[0x1e8], 5);
	expect_e820(plan->zero_page, 0, 0, 0x9e000, 1);
	expect_e820(plan->zero_page, 1, 0x9e000, 0x2000, 2);
	expect_e820(plan->zero_page, 2, 0x100000, gpa0 + len0 - 0x100000, 1);
	expect_e820(plan->zero_page, 3, LAYOUT_CORPUS_BASE, 64 * MIB, 2);
	expect_e820(plan->zero_page, 4, gpa1, len1, 1);
	/* No initrd: none in the zero page. */
	assert_int_equal(plan->initrd_gpa, 0);
	assert_int_equal(h32(plan->zero_page, 0x218), 0);
	assert_int_equal(h32(plan->zero_page, 0x21c), 0);
	linux_boot_plan_free(plan);
	linux_image_close(&img);
	mem_destroy(gm);
}

/* The bytes of [p, p+len) sum to 0 (MP and ACPI checksums). */
static bool sums_to_zero(const uint8_t *p, size_t len)
{
	uint8_t sum = 0;

	for (size_t i = 0; i < len; i++)
		sum = (uint8_t)(sum + p[i]);
	return sum == 0;
}

/* The first occurrence of needle in hay, or NULL. */
static const uint8_t *find(const uint8_t *hay, size_t len, const void *needle, size_t n)
{
	for (size_t i = 0; i + n <= len; i++)
		if (!memcmp(hay + i, needle, n))
			return hay + i;
	return NULL;
}

/*
 * The tables of a 4-vCPU guest with two virtio devices, read back from
 * guest memory at the specifications' offsets: the MP floating pointer
 * where Linux scans for it and its table (processors, the IOAPIC, ISA
 * interrupts on their own pins but the cascade), and ACPI from the zero
 * page's root pointer through the XSDT to a MADT that says the same of the
 * CPUs and the IOAPIC, a FADT with kvmem's PM ports and a DSDT that names
 * each virtio-mmio device with its window and interrupt.
 */
static void test_linux_tables_describe_cpus_interrupts_and_virtio(void **state)
{
	struct linux_machine m = { .ram_bytes = 512 * MIB, .platform.ncpus = 4,
				   .platform.nr_virtio = 2 };
	struct linux_boot_plan *plan;
	struct linux_image img;
	uint8_t t[LAYOUT_LINUX_TABLES_END - LAYOUT_LINUX_TABLES], fp[16];
	const uint8_t *mpc, *e, *rsdp, *xsdt, *madt, *fadt, *dsdt;
	unsigned int cpus = 0, bsp = 0, ioapics = 0, pins = 0, lints = 0, isa = 0;
	uint64_t pin_mask = 0;
	char why[512];
	struct gm *gm;

	(void)state;
	m.platform.virtio[0] = (struct linux_virtio){ LAYOUT_MMIO_VIRTIO, 0x1000, 5 };
	m.platform.virtio[1] = (struct linux_virtio){ LAYOUT_MMIO_VIRTIO + 0x1000, 0x1000, 6 };
	assert_int_equal(mem_create_anon(m.ram_bytes, &gm), 0);
	assert_int_equal(linux_image_open(kernel, &img, why, sizeof(why)), 0);
	assert_int_equal(linux_boot_plan(&img, NULL, "", &m, &plan, why, sizeof(why)), 0);
	assert_int_equal(linux_boot_apply(gm, plan), 0);
	assert_int_equal(mem_read(gm, LAYOUT_LINUX_TABLES, t, sizeof(t)), 0);
#define AT(gpa) (t + ((gpa) - LAYOUT_LINUX_TABLES))

	/* MP: the floating pointer in the last KiB of base memory, 16-byte aligned. */
	assert_int_equal(LAYOUT_LINUX_MPFP % 16, 0);
	assert_true(LAYOUT_LINUX_MPFP >= 639 * 1024 && LAYOUT_LINUX_MPFP + 16 <= 640 * 1024);
	memcpy(fp, AT(LAYOUT_LINUX_MPFP), 16);
	assert_memory_equal(fp, "_MP_", 4);
	assert_true(sums_to_zero(fp, 16));
	assert_int_equal(fp[8], 1);		/* length, 16-byte units */
	assert_int_equal(fp[9], 4);		/* spec 1.4 */
	assert_int_equal(fp[11], 0);		/* a configuration table follows */
	assert_int_equal(h32(fp, 4), LAYOUT_LINUX_MPTABLE);
	mpc = AT(h32(fp, 4));
	assert_memory_equal(mpc, "PCMP", 4);
	assert_true(h16(mpc, 4) <= LAYOUT_LINUX_MPFP - LAYOUT_LINUX_MPTABLE);
	assert_true(sums_to_zero(mpc, h16(mpc, 4)));
	assert_int_equal(h32(mpc, 36), 0xfee00000);	/* the local APICs */
	e = mpc + 44;
	for (unsigned int i = 0; i < h16(mpc, 34); i++) {
		switch (e[0]) {
		case 0:		/* processor: APIC id i, enabled, vCPU 0 the BSP */
			assert_int_equal(e[1], cpus);
			assert_true(e[3] & 1);
			bsp += (e[3] & 2) ? 1 + e[1] * 100 : 0;
			cpus++;
			e += 20;
			continue;
		case 1:		/* bus 0 is ISA */
			assert_int_equal(e[1], 0);
			assert_memory_equal(e + 2, "ISA   ", 6);
			isa++;
			break;
		case 2:		/* the IOAPIC, after the CPUs' APIC ids */
			assert_int_equal(e[1], 4);
			assert_int_equal(e[3] & 1, 1);
			assert_int_equal(h32(e, 4), 0xfec00000);
			ioapics++;
			break;
		case 3:		/* ISA IRQ n on pin n, bus defaults (edge, high) */
			assert_int_equal(e[1], 0);
			assert_int_equal(h16(e, 2), 0);
			assert_int_equal(e[4], 0);
			assert_int_equal(e[5], e[7]);
			assert_int_equal(e[6], 4);
			pin_mask |= 1ULL << e[7];
			pins++;
			break;
		case 4:		/* LINT0 ExtINT, LINT1 NMI, on every CPU */
			assert_int_equal(e[1], e[7] == 0 ? 3 : 1);
			assert_int_equal(e[6], 0xff);
			lints++;
			break;
		default:
			fail_msg("MP entry type %u", e[0]);
		}
		e += 8;
	}
	assert_int_equal(e - mpc, h16(mpc, 4));
	assert_int_equal(cpus, 4);
	assert_int_equal(bsp, 1);
	assert_int_equal(isa, 1);
	assert_int_equal(ioapics, 1);
	assert_int_equal(pins, 23);
	assert_int_equal(pin_mask, 0xffffffULL & ~4ULL);	/* every pin but the cascade's */
	assert_int_equal(lints, 2);

	/* ACPI: the root pointer the zero page names, revision 2, both checksums. */
	assert_int_equal(h64(plan->zero_page, 0x070), LAYOUT_LINUX_ACPI);
	rsdp = AT(LAYOUT_LINUX_ACPI);
	assert_memory_equal(rsdp, "RSD PTR ", 8);
	assert_true(sums_to_zero(rsdp, 20));
	assert_int_equal(rsdp[15], 2);
	assert_int_equal(h32(rsdp, 20), 36);
	assert_true(sums_to_zero(rsdp, 36));
	xsdt = AT(h64(rsdp, 24));
	assert_memory_equal(xsdt, "XSDT", 4);
	assert_int_equal(h32(xsdt, 4), 36 + 2 * 8);		/* the FADT and the MADT */
	assert_true(sums_to_zero(xsdt, h32(xsdt, 4)));
	/* MADT: the local APICs (enabled, APIC id = UID), the IOAPIC from GSI 0, NMI on LINT1. */
	madt = AT(h64(xsdt, 44));
	assert_memory_equal(madt, "APIC", 4);
	assert_true(sums_to_zero(madt, h32(madt, 4)));
	assert_int_equal(h32(madt, 36), 0xfee00000);
	assert_int_equal(h32(madt, 40) & 1, 1);			/* PCAT_COMPAT: the 8259s */
	cpus = ioapics = lints = 0;
	for (e = madt + 44; e < madt + h32(madt, 4); e += e[1]) {
		assert_true(e[1] >= 2);
		if (e[0] == 0) {
			assert_int_equal(e[1], 8);
			assert_int_equal(e[2], cpus);
			assert_int_equal(e[3], cpus);
			assert_int_equal(h32(e, 4) & 1, 1);
			cpus++;
		} else if (e[0] == 1) {
			assert_int_equal(e[1], 12);
			assert_int_equal(e[2], 4);
			assert_int_equal(h32(e, 4), 0xfec00000);
			assert_int_equal(h32(e, 8), 0);
			ioapics++;
		} else if (e[0] == 4) {
			assert_int_equal(e[2], 0xff);
			assert_int_equal(e[5], 1);
			lints++;
		} else {
			fail_msg("MADT entry type %u", e[0]);
		}
	}
	assert_true(e == madt + h32(madt, 4));
	assert_int_equal(cpus, 4);
	assert_int_equal(ioapics, 1);
	assert_int_equal(lints, 1);
	fadt = AT(h64(xsdt, 36));
	assert_memory_equal(fadt, "FACP", 4);
	assert_int_equal(h32(fadt, 4), 276);
	assert_int_equal(fadt[8], 6);
	assert_true(sums_to_zero(fadt, 276));
	assert_int_equal(h16(fadt, 46), LAYOUT_LINUX_SCI_GSI);
	assert_int_equal(h32(fadt, 48), 0);			/* no SMI_CMD: ACPI mode only */
	assert_int_equal(h32(fadt, 56), LAYOUT_LINUX_PM1_EVT);
	assert_int_equal(h32(fadt, 64), LAYOUT_LINUX_PM1_CNT);
	assert_int_equal(h32(fadt, 76), LAYOUT_LINUX_PM_TMR);
	assert_int_equal(fadt[88], 4);
	assert_int_equal(fadt[89], 2);
	assert_int_equal(fadt[91], 4);
	assert_int_equal(h16(fadt, 109) & 0x2, 0);		/* no 8042 to probe */
	assert_int_equal(h16(fadt, 109) & 0x20, 0x20);		/* no CMOS RTC */
	assert_int_equal(h32(fadt, 112) & (1u << 20), 0);	/* not hardware-reduced */
	assert_int_equal(h32(fadt, 112) & (1u << 8), 1u << 8);	/* 32-bit PM timer */
	assert_int_equal(h64(fadt, 140), h32(fadt, 40));	/* X_DSDT = DSDT */
	assert_int_equal(fadt[172], 1);				/* X_PM1a_CNT: system I/O */
	assert_int_equal(h64(fadt, 176), LAYOUT_LINUX_PM1_CNT);
	assert_int_equal(h32(fadt, 36) % 64, 0);		/* FACS, 64-byte aligned */
	assert_memory_equal(AT(h32(fadt, 36)), "FACS", 4);
	assert_int_equal(h32(AT(h32(fadt, 36)), 4), 64);
	dsdt = AT(h32(fadt, 40));
	assert_memory_equal(dsdt, "DSDT", 4);
	assert_true(dsdt + h32(dsdt, 4) <= AT(LAYOUT_LINUX_ACPI_END));
	assert_true(sums_to_zero(dsdt, h32(dsdt, 4)));
	/* The AML: \_SB with a device per virtio window, and \_S5 with kvmem's sleep type. */
	{
		const uint8_t *aml = dsdt + 36, *hid, *v;
		size_t n = h32(dsdt, 4) - 36;
		uint8_t mem32[12] = { 0x86, 9, 0, 1 }, irq[9] = { 0x89, 6, 0, 3, 1 };
		static const uint8_t s5[] = { 0x08, '\\', '_', 'S', '5', '_', 0x12, 7, 4, 0x0a,
					      LAYOUT_LINUX_S5_TYP, 0, 0, 0 };

		assert_int_equal(aml[0], 0x10);				/* Scope */
		assert_non_null(find(aml, n, "\\_SB_", 5));
		assert_non_null(find(aml, n, s5, sizeof(s5)));
		for (unsigned int i = 0; i < 2; i++) {
			uint32_t base = (uint32_t)m.platform.virtio[i].gpa, len = 0x1000;
			uint32_t gsi = m.platform.virtio[i].gsi;
			char name[5];

			snprintf(name, sizeof(name), "V%03u", i);
			v = find(aml, n, name, 4);
			assert_non_null(v);
			/* DeviceOp, then a PkgLength of one or two bytes, then the name. */
			assert_non_null(find(v - 4, 3, "\x5b\x82", 2));
			hid = find(v, n - (size_t)(v - aml), "\x0dLNRO0005", 10);
			assert_non_null(hid);
			memcpy(mem32 + 4, &base, 4);
			memcpy(mem32 + 8, &len, 4);
			memcpy(irq + 5, &gsi, 4);
			assert_non_null(find(hid, n - (size_t)(hid - aml), mem32, sizeof(mem32)));
			assert_non_null(find(hid, n - (size_t)(hid - aml), irq, sizeof(irq)));
		}
		assert_null(find(aml, n, "V002", 4));
	}
#undef AT
	linux_boot_plan_free(plan);
	linux_image_close(&img);
	mem_destroy(gm);
}

static void machine_refused(const struct linux_machine *m, const char *initrd,
			    const char *cmdline, int err, const char *says)
{
	struct linux_boot_plan *plan = NULL;
	struct linux_image img;
	char why[512] = "";
	int ret;

	assert_int_equal(linux_image_open(kernel, &img, why, sizeof(why)), 0);
	ret = linux_boot_plan(&img, initrd, cmdline, m, &plan, why, sizeof(why));
	linux_image_close(&img);
	if (ret != err || !strstr(why, says))
		fail_msg("expected %d naming \"%s\", got %d: %s", err, says, ret, why);
	assert_null(plan);
}

static void plan_refused(uint64_t ram, const char *initrd, const char *cmdline, int err,
			 const char *says)
{
	struct linux_machine m = { .ram_bytes = ram, .platform.ncpus = 1 };

	machine_refused(&m, initrd, cmdline, err, says);
}

static void test_linux_boot_refuses_what_does_not_fit(void **state)
{
	char initrd[128], big[128], why[512];
	uint32_t cmdline_size = h32(head, 0x238);
	char *line = malloc(cmdline_size + 2);

	(void)state;
	assert_non_null(line);
	path_in_dir(initrd, sizeof(initrd), "initrd");
	make_initrd(initrd, 1 * MIB, false);
	path_in_dir(big, sizeof(big), "big-initrd");
	make_initrd(big, 600 * MIB, true);

	/* The kernel itself: pref_address + init_size beyond 64 MiB of RAM. */
	plan_refused(64 * MIB, NULL, "", -E2BIG, "init_size");
	/* An initrd larger than the RAM left above the kernel. */
	plan_refused(512 * MIB, big, "", -E2BIG, "initrd");
	/* An initrd that is no file to read. */
	plan_refused(512 * MIB, "/nonexistent/initrd", "", -ENOENT, "/nonexistent/initrd");
	plan_refused(512 * MIB, dir, "", -EINVAL, "not a regular file");

	/* The command line: cmdline_size characters pass, one more is refused. */
	memset(line, 'a', cmdline_size + 1);
	line[cmdline_size] = '\0';
	assert_int_equal(linux_boot_check(kernel, initrd, line, 512 * MIB, why, sizeof(why)), 0);
	line[cmdline_size] = 'a';
	line[cmdline_size + 1] = '\0';
	plan_refused(512 * MIB, initrd, line, -E2BIG, "cmdline_size");
	free(line);

	/* A corpus that reaches the IOAPIC; a machine the tables cannot describe. */
	struct linux_machine m = { .ram_bytes = 512 * MIB, .corpus_bytes = 512 * MIB,
				   .platform.ncpus = 1 };

	machine_refused(&m, NULL, "", -E2BIG, "IOAPIC");
	m.corpus_bytes = 492 * MIB;
	m.platform.ncpus = 0;
	machine_refused(&m, NULL, "", -EINVAL, "vCPUs");
	m.platform.ncpus = 65;
	machine_refused(&m, NULL, "", -EINVAL, "vCPUs");

	/* The check a config runs: image, RAM and initrd in one call. */
	assert_int_equal(linux_boot_check(kernel, big, "", 2048 * MIB, why, sizeof(why)), 0);
	assert_int_equal(linux_boot_check(kernel, NULL, NULL, 64 * MIB, why, sizeof(why)), -E2BIG);
	assert_int_equal(linux_boot_check(dir, NULL, NULL, 512 * MIB, why, sizeof(why)), -ENOEXEC);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_linux_image_debian_kernel_passes_every_check),
		cmocka_unit_test(test_linux_image_broken_fields_are_refused_by_name),
		cmocka_unit_test(test_linux_image_open_names_the_file),
		cmocka_unit_test(test_linux_boot_writes_kernel_initrd_and_zero_page),
		cmocka_unit_test(test_linux_boot_enters_64bit_with_boot_segments_and_identity_map),
		cmocka_unit_test(test_linux_e820_around_the_mmio_hole),
		cmocka_unit_test(test_linux_tables_describe_cpus_interrupts_and_virtio),
		cmocka_unit_test(test_linux_boot_refuses_what_does_not_fit),
	};

	if (!find_kernel()) {
		printf("SKIP: no readable kernel image: install Debian's linux-image-amd64 "
		       "(/boot/vmlinuz-*) or set KVMEM_TEST_KERNEL\n");
		return 77;
	}
	printf("kernel image: %s\n", kernel);
	return cmocka_run_group_tests(tests, setup, teardown);
}
