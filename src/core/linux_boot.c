/* SPDX-License-Identifier: MIT */
/*
 * The bzImage loader and the 64-bit boot state of a Linux guest (see
 * linux_boot.h). The structures below are the boot protocol's own layouts
 * (Documentation/arch/x86/boot.rst and zero-page.rst): only the fields the
 * VMM reads or writes are named, each offset checked at compile time. x86
 * is little-endian, and so is this VMM's host: fields are used as read.
 */
#define LOG_TAG "linux"
#include "core/linux_boot.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/layout.h"
#include "mem/corpus.h"

/* The setup header, at LINUX_SETUP_HEADER in the image and in the zero page. */
struct setup_header {
	uint8_t setup_sects;
	uint16_t root_flags;
	uint32_t syssize;
	uint16_t ram_size;
	uint16_t vid_mode;
	uint16_t root_dev;
	uint16_t boot_flag;
	uint16_t jump;
	uint32_t header;
	uint16_t version;
	uint32_t realmode_swtch;
	uint16_t start_sys_seg;
	uint16_t kernel_version;
	uint8_t type_of_loader;
	uint8_t loadflags;
	uint16_t setup_move_size;
	uint32_t code32_start;
	uint32_t ramdisk_image;
	uint32_t ramdisk_size;
	uint32_t bootsect_kludge;
	uint16_t heap_end_ptr;
	uint8_t ext_loader_ver;
	uint8_t ext_loader_type;
	uint32_t cmd_line_ptr;
	uint32_t initrd_addr_max;
	uint32_t kernel_alignment;
	uint8_t relocatable_kernel;
	uint8_t min_alignment;
	uint16_t xloadflags;
	uint32_t cmdline_size;
	uint32_t hardware_subarch;
	uint64_t hardware_subarch_data;
	uint32_t payload_offset;
	uint32_t payload_length;
	uint64_t setup_data;
	uint64_t pref_address;
	uint32_t init_size;
} __attribute__((packed));

#define AT(type, field, off) \
	static_assert(offsetof(struct type, field) + LINUX_SETUP_HEADER == (off), #field)
AT(setup_header, syssize, 0x1f4);
AT(setup_header, vid_mode, 0x1fa);
AT(setup_header, boot_flag, 0x1fe);
AT(setup_header, jump, 0x200);
AT(setup_header, header, 0x202);
AT(setup_header, version, 0x206);
AT(setup_header, kernel_version, 0x20e);
AT(setup_header, type_of_loader, 0x210);
AT(setup_header, loadflags, 0x211);
AT(setup_header, code32_start, 0x214);
AT(setup_header, ramdisk_image, 0x218);
AT(setup_header, ramdisk_size, 0x21c);
AT(setup_header, heap_end_ptr, 0x224);
AT(setup_header, cmd_line_ptr, 0x228);
AT(setup_header, initrd_addr_max, 0x22c);
AT(setup_header, kernel_alignment, 0x230);
AT(setup_header, relocatable_kernel, 0x234);
AT(setup_header, xloadflags, 0x236);
AT(setup_header, cmdline_size, 0x238);
AT(setup_header, hardware_subarch, 0x23c);
AT(setup_header, payload_offset, 0x248);
AT(setup_header, payload_length, 0x24c);
AT(setup_header, setup_data, 0x250);
AT(setup_header, pref_address, 0x258);
AT(setup_header, init_size, 0x260);
#undef AT

/* The header must reach init_size, the last field read. */
#define HEADER_END_MIN (LINUX_SETUP_HEADER + sizeof(struct setup_header))

struct e820_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
} __attribute__((packed));

#define E820_MAX 128

/* The zero page (struct boot_params). */
struct zero_page {
	uint8_t pad0[0x070];
	uint64_t acpi_rsdp_addr;
	uint8_t pad1[0x0c0 - 0x078];
	uint32_t ext_ramdisk_image;
	uint32_t ext_ramdisk_size;
	uint32_t ext_cmd_line_ptr;
	uint8_t pad2[0x1e8 - 0x0cc];
	uint8_t e820_entries;
	uint8_t pad3[LINUX_SETUP_HEADER - 0x1e9];
	struct setup_header hdr;
	uint8_t pad4[0x2d0 - LINUX_SETUP_HEADER - sizeof(struct setup_header)];
	struct e820_entry e820_table[E820_MAX];
	uint8_t pad5[0x1000 - 0x2d0 - E820_MAX * sizeof(struct e820_entry)];
} __attribute__((packed));

static_assert(sizeof(struct e820_entry) == 20, "e820 entry");
static_assert(offsetof(struct zero_page, acpi_rsdp_addr) == 0x070, "acpi_rsdp_addr");
static_assert(offsetof(struct zero_page, ext_ramdisk_image) == 0x0c0, "ext_ramdisk_image");
static_assert(offsetof(struct zero_page, ext_cmd_line_ptr) == 0x0c8, "ext_cmd_line_ptr");
static_assert(offsetof(struct zero_page, e820_entries) == 0x1e8, "e820_entries");
static_assert(offsetof(struct zero_page, hdr) == LINUX_SETUP_HEADER, "hdr");
static_assert(offsetof(struct zero_page, e820_table) == 0x2d0, "e820_table");
static_assert(sizeof(struct zero_page) == 4096, "the zero page is one page");
static_assert(sizeof(((struct linux_boot_plan *)0)->zero_page) == sizeof(struct zero_page),
	      "plan's zero page");

#define BOOT_FLAG 0xaa55
#define HDRS 0x53726448 /* "HdrS" */
#define LOADED_HIGH 0x01
#define CAN_USE_HEAP 0x80
#define XLF_KERNEL_64 0x0001
#define LOADER_UNDEFINED 0xff	/* type_of_loader: no assigned id */
#define VID_MODE_NORMAL 0xffff
/* The sample configuration's end of the setup stack and heap (boot.rst), less 0x200. */
#define HEAP_END_PTR (0xe000 - 0x200)
#define ENTRY_64 0x200		/* the 64-bit entry, from the protected-mode kernel's start */

/* Selectors the 64-bit protocol names (__BOOT_CS, __BOOT_DS), and a TSS for TR. */
#define BOOT_CS 0x10
#define BOOT_DS 0x18
#define BOOT_TSS 0x20
#define GDT_BYTES (BOOT_TSS + 16)
#define TSS_BYTES 104

#define PTE_P 0x1ULL
#define PTE_RW 0x2ULL
#define PTE_PS 0x80ULL
#define IDENTITY_GIB 4

#define CR0_PE 0x1ULL
#define CR0_ET 0x10ULL
#define CR0_NE 0x20ULL
#define CR0_PG 0x80000000ULL
#define CR4_PAE 0x20ULL
#define EFER_LME 0x100ULL
#define EFER_LMA 0x400ULL
#define RFLAGS_FIXED 0x2ULL	/* bit 1 is always set; IF is clear */

static_assert(LAYOUT_LINUX_PGTABLE_END - LAYOUT_LINUX_PGTABLE == (2 + IDENTITY_GIB) * 4096,
	      "PML4, PDPT and a PD per identity-mapped GiB");
static_assert(LAYOUT_LOW_RAM_MAX <= (uint64_t)IDENTITY_GIB << 30,
	      "everything a boot writes lies in the identity map");
static_assert(LAYOUT_LINUX_TSS + TSS_BYTES <= LAYOUT_LINUX_GDT + 4096 &&
	      LAYOUT_LINUX_GDT + GDT_BYTES <= LAYOUT_LINUX_TSS, "GDT and TSS share one page");
static_assert(LAYOUT_LINUX_GDT + 4096 <= LAYOUT_LINUX_ZERO_PAGE &&
	      LAYOUT_LINUX_ZERO_PAGE + 4096 < LAYOUT_LINUX_STACK_TOP &&
	      LAYOUT_LINUX_STACK_TOP <= LAYOUT_LINUX_PGTABLE &&
	      LAYOUT_LINUX_PGTABLE_END <= LAYOUT_LINUX_CMDLINE &&
	      LAYOUT_LINUX_CMDLINE + LAYOUT_LINUX_CMDLINE_MAX <= LAYOUT_LINUX_TABLES &&
	      LAYOUT_LINUX_TABLES_END <= LAYOUT_LINUX_HIGH_MEM, "the first megabyte, in order");

static int say(char *why, size_t len, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Write one reason into why and return err. */
static int say(char *why, size_t len, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
	return err;
}

static bool is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

int linux_image_parse(const uint8_t *head, size_t head_len, uint64_t file_bytes,
		      struct linux_image *img, char *why, size_t whylen)
{
	struct setup_header h;
	uint64_t setup_sects, setup_bytes, rest, syssize, align, load;
	unsigned int hdr_end;

	memset(img, 0, sizeof(*img));
	img->fd = -1;
	if (file_bytes < LINUX_IMAGE_HEAD || head_len < LINUX_IMAGE_HEAD)
		return say(why, whylen, -ENOEXEC, "truncated: %" PRIu64 " bytes, less than the "
			   "%d of a boot sector and its setup header", file_bytes,
			   LINUX_IMAGE_HEAD);
	memcpy(&h, head + LINUX_SETUP_HEADER, sizeof(h));
	if (h.boot_flag != BOOT_FLAG)
		return say(why, whylen, -ENOEXEC, "boot_flag (0x1fe) is 0x%04x, not 0xaa55",
			   h.boot_flag);
	if (h.header != HDRS)
		return say(why, whylen, -ENOEXEC, "no \"HdrS\" signature at 0x202 (header): "
			   "older than boot protocol 2.00, or not a kernel");
	img->protocol = h.version;
	if (h.version < LINUX_PROTOCOL_MIN)
		return say(why, whylen, -ENOEXEC, "boot protocol %u.%02u (version 0x%04x) is "
			   "older than 2.12, the first to say whether it has a 64-bit entry",
			   h.version >> 8, h.version & 0xff, h.version);
	/* The jump over the header is its length: what the zero page must hold. */
	hdr_end = 0x202 + head[0x201];
	if (head[0x200] != 0xeb || hdr_end < HEADER_END_MIN ||
	    hdr_end > LINUX_SETUP_HEADER + LINUX_SETUP_HEADER_MAX)
		return say(why, whylen, -ENOEXEC, "setup header ends at 0x%x (jump at 0x200 is "
			   "0x%04x): outside 0x%zx-0x%x", hdr_end, h.jump, HEADER_END_MIN,
			   LINUX_SETUP_HEADER + LINUX_SETUP_HEADER_MAX);
	img->header_len = hdr_end - LINUX_SETUP_HEADER;
	memcpy(img->header, head + LINUX_SETUP_HEADER, img->header_len);

	/* The real-mode part (boot sector and setup code) is skipped; the kernel follows it. */
	setup_sects = h.setup_sects ? h.setup_sects : 4;
	setup_bytes = (setup_sects + 1) * 512;
	if (file_bytes <= setup_bytes)
		return say(why, whylen, -ENOEXEC, "truncated: setup_sects (0x1f1) says %" PRIu64
			   " bytes of setup code, the file has %" PRIu64 " in all", setup_bytes,
			   file_bytes);
	rest = file_bytes - setup_bytes;
	syssize = (uint64_t)h.syssize * 16;
	if (syssize == 0 || syssize > rest)
		return say(why, whylen, -ENOEXEC, "truncated: syssize (0x1f4) says %" PRIu64
			   " bytes of kernel after the setup code, the file has %" PRIu64, syssize,
			   rest);
	/* The compressed kernel the decompressor unpacks: one outside the kernel is broken. */
	if (h.payload_length == 0 || h.payload_offset > syssize ||
	    h.payload_length > syssize - h.payload_offset)
		return say(why, whylen, -ENOEXEC, "payload_offset/payload_length (0x248) 0x%x+0x%x "
			   "lie outside the %" PRIu64 " bytes of kernel", h.payload_offset,
			   h.payload_length, syssize);
	if (!(h.loadflags & LOADED_HIGH))
		return say(why, whylen, -ENOEXEC, "loadflags (0x211) 0x%02x lack LOADED_HIGH: a "
			   "zImage, which loads below 1 MiB", h.loadflags);
	if (!(h.xloadflags & XLF_KERNEL_64))
		return say(why, whylen, -ENOEXEC, "xloadflags (0x236) 0x%04x lack XLF_KERNEL_64: "
			   "no 64-bit entry (a 32-bit kernel?)", h.xloadflags);

	/*
	 * Load where the kernel runs: a relocatable kernel loaded lower runs
	 * from pref_address (its LOAD_PHYSICAL_ADDR) all the same, and a fixed
	 * one runs there. Then init_size, which counts from where it runs,
	 * counts from where it was loaded.
	 */
	align = h.kernel_alignment;
	if (h.relocatable_kernel && (!is_pow2(align) || align < 4096 || align > (1U << 30)))
		return say(why, whylen, -ENOEXEC, "kernel_alignment (0x230) 0x%" PRIx64 " is not "
			   "a power of two from 4 KiB to 1 GiB", align);
	load = h.pref_address;
	if (load < LAYOUT_LINUX_HIGH_MEM || load >= LAYOUT_LOW_RAM_MAX)
		return say(why, whylen, -ENOEXEC, "pref_address (0x258) 0x%" PRIx64 " is not "
			   "between 1 MiB and 0x%llx", load, LAYOUT_LOW_RAM_MAX);
	if (h.relocatable_kernel && (load & (align - 1)))
		return say(why, whylen, -ENOEXEC, "pref_address (0x258) 0x%" PRIx64 " is not "
			   "aligned to kernel_alignment 0x%" PRIx64, load, align);
	if (h.init_size < syssize)
		return say(why, whylen, -ENOEXEC, "init_size (0x260) %u is smaller than the "
			   "%" PRIu64 " bytes of kernel it starts from", h.init_size, syssize);

	img->kernel_offset = setup_bytes;
	img->kernel_bytes = syssize;
	img->load_gpa = load;
	img->init_size = h.init_size;
	img->cmdline_max = h.cmdline_size;
	img->initrd_max = h.initrd_addr_max;
	img->xloadflags = h.xloadflags;
	img->file_bytes = file_bytes;
	return 0;
}

static int read_all(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (uint8_t *)buf + done, len - done, (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		done += (size_t)n;
	}
	return 0;
}

/*
 * The version string kernel_version points to (less 0x200) in the setup
 * code, for logs. Only shown, never relied on: one out of range is left out
 * rather than refused.
 */
static void read_version(struct linux_image *img, uint16_t ptr)
{
	uint64_t off = (uint64_t)ptr + 0x200;
	size_t n = sizeof(img->version) - 1;

	img->version[0] = '\0';
	if (!ptr || off >= img->kernel_offset)
		return;
	if (n > img->kernel_offset - off)
		n = (size_t)(img->kernel_offset - off);
	if (read_all(img->fd, img->version, n, off)) {
		img->version[0] = '\0';
		return;
	}
	img->version[n] = '\0';
	for (size_t i = 0; img->version[i]; i++) {
		if (img->version[i] < 0x20 || img->version[i] > 0x7e) {
			img->version[i] = '\0';
			break;
		}
	}
}

int linux_image_open(const char *path, struct linux_image *img, char *why, size_t whylen)
{
	uint8_t head[LINUX_IMAGE_HEAD];
	struct setup_header h;
	struct stat st;
	size_t n;
	int fd, ret;

	memset(img, 0, sizeof(*img));
	img->fd = -1;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return say(why, whylen, -errno, "kernel %s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		ret = say(why, whylen, -ENOEXEC, "%s: not a bootable x86-64 Linux kernel: not a "
			  "regular file", path);
		goto out_close;
	}
	n = (uint64_t)st.st_size < sizeof(head) ? (size_t)st.st_size : sizeof(head);
	ret = read_all(fd, head, n, 0);
	if (ret) {
		say(why, whylen, ret, "kernel %s: %s", path, strerror(-ret));
		goto out_close;
	}
	ret = linux_image_parse(head, n, (uint64_t)st.st_size, img, why, whylen);
	if (ret) {
		char reason[256];

		snprintf(reason, sizeof(reason), "%s", why);
		say(why, whylen, ret, "%s: not a bootable x86-64 Linux kernel: %s", path, reason);
		goto out_close;
	}
	img->fd = fd;
	memcpy(&h, img->header, sizeof(h));
	read_version(img, h.kernel_version);
	return 0;

out_close:
	close(fd);
	img->fd = -1;
	return ret;
}

void linux_image_close(struct linux_image *img)
{
	if (img->fd >= 0)
		close(img->fd);
	img->fd = -1;
}

void linux_machine_of(const struct gm *gm, struct linux_machine *m)
{
	struct mem_corpus c;

	memset(m, 0, sizeof(*m));
	m->ram_bytes = mem_ram_bytes(gm);
	m->corpus_bytes = mem_corpus_get(gm, &c) ? c.map_bytes : 0;
}

/*
 * The guest's memory map: RAM below the tables, the tables reserved (the
 * guest reads them for its whole life), RAM from 1 MiB to the hole, the
 * corpus window reserved (not RAM, and no place for the guest to put a
 * device), RAM above 4 GiB. The rest of the hole (the device windows) is
 * left out, as firmware leaves out a PC's PCI hole.
 */
static void e820_add(struct zero_page *zp, uint64_t addr, uint64_t size, uint32_t type)
{
	assert(zp->e820_entries < E820_MAX);
	zp->e820_table[zp->e820_entries++] = (struct e820_entry){ addr, size, type };
}

static unsigned int build_e820(struct zero_page *zp, const struct linux_machine *m)
{
	uint64_t low = layout_low_ram_bytes(m->ram_bytes);

	assert(low > LAYOUT_LINUX_HIGH_MEM); /* the kernel, above 1 MiB, fits below it */
	assert(m->corpus_bytes <= LAYOUT_CORPUS_MAX_BYTES);
	zp->e820_entries = 0;
	e820_add(zp, 0, LAYOUT_LINUX_TABLES, LINUX_E820_RAM);
	e820_add(zp, LAYOUT_LINUX_TABLES, LAYOUT_LINUX_TABLES_END - LAYOUT_LINUX_TABLES,
		 LINUX_E820_RESERVED);
	e820_add(zp, LAYOUT_LINUX_HIGH_MEM, low - LAYOUT_LINUX_HIGH_MEM, LINUX_E820_RAM);
	if (m->corpus_bytes)
		e820_add(zp, LAYOUT_CORPUS_BASE, m->corpus_bytes, LINUX_E820_RESERVED);
	if (m->ram_bytes > low)
		e820_add(zp, LAYOUT_HIGH_RAM_BASE, m->ram_bytes - low, LINUX_E820_RAM);
	return zp->e820_entries;
}

static void build_zero_page(struct linux_boot_plan *p, const struct linux_image *img,
			    const struct linux_machine *m)
{
	struct zero_page *zp = (struct zero_page *)p->zero_page;

	memset(zp, 0, sizeof(*zp));
	/* The header as the image has it, then what a loader writes (boot.rst, "Details"). */
	memcpy(p->zero_page + LINUX_SETUP_HEADER, img->header, img->header_len);
	zp->hdr.type_of_loader = LOADER_UNDEFINED;
	zp->hdr.vid_mode = VID_MODE_NORMAL;
	/*
	 * The real-mode setup code does not run in a 64-bit boot; its heap is
	 * declared all the same, as the protocol asks of every loader.
	 */
	zp->hdr.heap_end_ptr = HEAP_END_PTR;
	zp->hdr.loadflags |= CAN_USE_HEAP;
	zp->hdr.code32_start = (uint32_t)p->kernel_gpa;
	zp->hdr.cmd_line_ptr = (uint32_t)p->cmdline_gpa;
	zp->ext_cmd_line_ptr = (uint32_t)(p->cmdline_gpa >> 32);
	zp->hdr.ramdisk_image = (uint32_t)p->initrd_gpa;
	zp->ext_ramdisk_image = (uint32_t)(p->initrd_gpa >> 32);
	zp->hdr.ramdisk_size = (uint32_t)p->initrd_bytes;
	zp->ext_ramdisk_size = (uint32_t)(p->initrd_bytes >> 32);
	/* Where ACPI's tables start: no firmware to search the BIOS area for them. */
	zp->acpi_rsdp_addr = p->acpi_rsdp;
	/* A PC, with no setup_data list: whatever the image holds there is not ours to pass on. */
	zp->hdr.hardware_subarch = 0;
	zp->hdr.hardware_subarch_data = 0;
	zp->hdr.setup_data = 0;
	p->nr_e820 = build_e820(zp, m);
}

/* An 8-byte segment descriptor: base, limit (20 bits), access byte, flags nibble (G, D/B, L). */
static uint64_t seg_desc(uint64_t base, uint32_t limit, uint8_t access, uint8_t flags)
{
	return (limit & 0xffffULL) | ((base & 0xffffffULL) << 16) | ((uint64_t)access << 40) |
	       ((uint64_t)((limit >> 16) & 0xf) << 48) | ((uint64_t)(flags & 0xf) << 52) |
	       (((base >> 24) & 0xffULL) << 56);
}

static uint8_t seg_access(const struct linux_segment *s)
{
	return (uint8_t)((s->present ? 0x80 : 0) | (s->dpl & 3) << 5 | (s->s ? 0x10 : 0) |
			 (s->type & 0xf));
}

static uint64_t seg_to_desc(const struct linux_segment *s)
{
	uint32_t limit = s->g ? s->limit >> 12 : s->limit;

	return seg_desc(s->base, limit, seg_access(s),
			(uint8_t)((s->g ? 8 : 0) | (s->db ? 4 : 0) | (s->l ? 2 : 0)));
}

/*
 * The GDT with __BOOT_CS (64-bit code), __BOOT_DS (flat data) and a 64-bit
 * TSS, and the registers loaded from it, so they say the same thing.
 */
static void build_gdt(struct linux_boot_plan *p)
{
	struct linux_cpu_state *c = &p->bsp;
	uint64_t gdt[GDT_BYTES / 8] = { 0 };

	c->cs = (struct linux_segment){ .selector = BOOT_CS, .limit = 0xffffffff, .type = 0xb,
					.s = true, .present = true, .l = true, .g = true };
	c->ds = (struct linux_segment){ .selector = BOOT_DS, .limit = 0xffffffff, .type = 0x3,
					.s = true, .present = true, .db = true, .g = true };
	/* Busy 64-bit TSS, as after ltr. */
	c->tr = (struct linux_segment){ .selector = BOOT_TSS, .base = LAYOUT_LINUX_TSS,
					.limit = TSS_BYTES - 1, .type = 0xb, .present = true };
	gdt[BOOT_CS / 8] = seg_to_desc(&c->cs);
	gdt[BOOT_DS / 8] = seg_to_desc(&c->ds);
	gdt[BOOT_TSS / 8] = seg_to_desc(&c->tr);
	gdt[BOOT_TSS / 8 + 1] = LAYOUT_LINUX_TSS >> 32;
	memset(p->gdt_page, 0, sizeof(p->gdt_page));
	memcpy(p->gdt_page, gdt, sizeof(gdt));
	c->gdt_base = LAYOUT_LINUX_GDT;
	c->gdt_limit = GDT_BYTES - 1;
	c->idt_base = 0;
	c->idt_limit = 0;
}

/* The first IDENTITY_GIB GiB identity mapped with 2 MiB pages: PML4, PDPT, then one PD per GiB. */
static void build_page_tables(struct linux_boot_plan *p)
{
	uint64_t *pml4 = (uint64_t *)p->pgtables, *pdpt = pml4 + 512;

	memset(p->pgtables, 0, sizeof(p->pgtables));
	pml4[0] = (LAYOUT_LINUX_PGTABLE + 0x1000) | PTE_P | PTE_RW;
	for (uint64_t g = 0; g < IDENTITY_GIB; g++) {
		uint64_t *pd = pml4 + 512 * (2 + g);

		pdpt[g] = (LAYOUT_LINUX_PGTABLE + (2 + g) * 0x1000) | PTE_P | PTE_RW;
		for (uint64_t i = 0; i < 512; i++)
			pd[i] = ((g << 30) | (i << 21)) | PTE_P | PTE_RW | PTE_PS;
	}
}

static void build_cpu(struct linux_boot_plan *p)
{
	struct linux_cpu_state *c = &p->bsp;

	c->rip = p->kernel_gpa + ENTRY_64;
	c->rsi = p->zero_page_gpa;
	c->rsp = LAYOUT_LINUX_STACK_TOP;
	c->rflags = RFLAGS_FIXED;
	c->cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
	c->cr3 = LAYOUT_LINUX_PGTABLE;
	c->cr4 = CR4_PAE;
	c->efer = EFER_LME | EFER_LMA;
}

static void add_data(struct linux_boot_plan *p, const char *what, gpa_t gpa, const void *data,
		     uint64_t len)
{
	assert(p->nr_writes < LINUX_BOOT_MAX_WRITES);
	p->writes[p->nr_writes++] = (struct linux_write){ .what = what, .gpa = gpa, .len = len,
							  .data = data, .fd = -1 };
}

static void add_file(struct linux_boot_plan *p, const char *what, gpa_t gpa, int fd, uint64_t off,
		     uint64_t len)
{
	assert(p->nr_writes < LINUX_BOOT_MAX_WRITES);
	p->writes[p->nr_writes++] = (struct linux_write){ .what = what, .gpa = gpa, .len = len,
							  .from_file = true, .fd = fd,
							  .offset = off };
}

/*
 * Our invariant, not the image's: no two writes overlap (the kernel lies
 * above 1 MiB, the initrd above the kernel). Only assert() calls it.
 */
static __attribute__((unused)) bool writes_apart(const struct linux_boot_plan *p)
{
	for (unsigned int i = 0; i < p->nr_writes; i++)
		for (unsigned int j = i + 1; j < p->nr_writes; j++)
			if (p->writes[i].gpa < p->writes[j].gpa + p->writes[j].len &&
			    p->writes[j].gpa < p->writes[i].gpa + p->writes[i].len)
				return false;
	return true;
}

/*
 * Put the initrd as high as the kernel lets it be (initrd_addr_max is its
 * last byte) below the MMIO hole, page aligned, above the kernel's
 * init_size: where a loader puts it, so the kernel's early allocations
 * below it do not have to move it.
 */
static int place_initrd(struct linux_boot_plan *p, const struct linux_image *img,
			const char *path, uint64_t low, char *why, size_t whylen)
{
	uint64_t top = img->initrd_max + 1 < low ? img->initrd_max + 1 : low;
	struct stat st;
	uint64_t size;

	p->initrd_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (p->initrd_fd < 0)
		return say(why, whylen, -errno, "initrd %s: %s", path, strerror(errno));
	if (fstat(p->initrd_fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
		return say(why, whylen, -EINVAL, "initrd %s: not a regular file with content",
			   path);
	size = (uint64_t)st.st_size;
	if (size > top || ((top - size) & ~(LAYOUT_PAGE_SIZE - 1)) < p->kernel_end)
		return say(why, whylen, -E2BIG, "initrd %s (%" PRIu64 " MiB) does not fit "
			   "between the kernel's end at 0x%" PRIx64 " and 0x%" PRIx64 " (the "
			   "lower of initrd_addr_max + 1, 0x%" PRIx64 ", and the end of RAM below "
			   "the MMIO hole, 0x%" PRIx64 ")", path, (size + (1 << 20) - 1) >> 20,
			   p->kernel_end, top, img->initrd_max + 1, low);
	p->initrd_gpa = (top - size) & ~(LAYOUT_PAGE_SIZE - 1);
	p->initrd_bytes = size;
	return 0;
}

int linux_boot_plan(const struct linux_image *img, const char *initrd_path, const char *cmdline,
		    const struct linux_machine *m, struct linux_boot_plan **out, char *why,
		    size_t whylen)
{
	uint64_t low = layout_low_ram_bytes(m->ram_bytes);
	size_t cmdlen = strlen(cmdline);
	struct linux_boot_plan *p;
	int ret;

	if (img->fd < 0)
		return say(why, whylen, -EBADF, "the kernel image is not open");
	if (cmdlen > img->cmdline_max)
		return say(why, whylen, -E2BIG, "the command line of %zu bytes is longer than the "
			   "kernel takes (cmdline_size %u)", cmdlen, img->cmdline_max);
	if (cmdlen >= LAYOUT_LINUX_CMDLINE_MAX)
		return say(why, whylen, -E2BIG, "the command line of %zu bytes is longer than "
			   "kvmem's %llu", cmdlen, LAYOUT_LINUX_CMDLINE_MAX - 1);
	if (m->corpus_bytes > LINUX_CORPUS_MAX_BYTES)
		return say(why, whylen, -E2BIG, "a corpus window of %" PRIu64 " MiB reaches the "
			   "IOAPIC at 0x%llx: a Linux guest's corpus is at most %llu MiB",
			   m->corpus_bytes >> 20, LAYOUT_IOAPIC, LINUX_CORPUS_MAX_BYTES >> 20);
	if (m->platform.ncpus < 1 || m->platform.ncpus > ABI_MAX_CPUS ||
	    m->platform.nr_virtio > LINUX_MAX_VIRTIO)
		return say(why, whylen, -EINVAL, "%u vCPUs and %u virtio devices: the tables hold "
			   "1 to %d vCPUs and up to %d devices", m->platform.ncpus,
			   m->platform.nr_virtio, ABI_MAX_CPUS, LINUX_MAX_VIRTIO);
	/* load_gpa < LAYOUT_LOW_RAM_MAX and init_size < 4 GiB: no overflow. */
	if (align_up(img->load_gpa + img->init_size, LAYOUT_PAGE_SIZE) > low)
		return say(why, whylen, -E2BIG, "the kernel needs RAM up to 0x%" PRIx64
			   " (pref_address 0x%" PRIx64 " + init_size %" PRIu64 " MiB) and this "
			   "VM's RAM below the MMIO hole ends at 0x%" PRIx64 ": give it at least "
			   "%" PRIu64 " MiB", img->load_gpa + img->init_size, img->load_gpa,
			   img->init_size >> 20, low,
			   align_up(img->load_gpa + img->init_size, 1 << 20) >> 20);
	p = kv_zalloc(sizeof(*p));
	if (!p)
		return say(why, whylen, -ENOMEM, "%s", strerror(ENOMEM));
	p->initrd_fd = -1;
	p->kernel_fd = fcntl(img->fd, F_DUPFD_CLOEXEC, 0);
	if (p->kernel_fd < 0) {
		ret = say(why, whylen, -errno, "the kernel image: %s", strerror(errno));
		goto out_free;
	}
	p->kernel_gpa = img->load_gpa;
	p->kernel_end = align_up(img->load_gpa + img->init_size, LAYOUT_PAGE_SIZE);
	if (initrd_path) {
		ret = place_initrd(p, img, initrd_path, low, why, whylen);
		if (ret)
			goto out_free;
	}
	p->cmdline = kv_strdup(cmdline);
	if (!p->cmdline) {
		ret = say(why, whylen, -ENOMEM, "%s", strerror(ENOMEM));
		goto out_free;
	}
	p->cmdline_gpa = LAYOUT_LINUX_CMDLINE;
	p->zero_page_gpa = LAYOUT_LINUX_ZERO_PAGE;
	p->acpi_rsdp = linux_tables_build(&m->platform, p->tables);
	build_zero_page(p, img, m);
	build_gdt(p);
	build_page_tables(p);
	build_cpu(p);

	add_data(p, "gdt", LAYOUT_LINUX_GDT, p->gdt_page, sizeof(p->gdt_page));
	add_data(p, "zero page", p->zero_page_gpa, p->zero_page, sizeof(p->zero_page));
	add_data(p, "page tables", LAYOUT_LINUX_PGTABLE, p->pgtables, sizeof(p->pgtables));
	add_data(p, "command line", p->cmdline_gpa, p->cmdline, cmdlen + 1);
	add_data(p, "mp and acpi tables", LAYOUT_LINUX_TABLES, p->tables, sizeof(p->tables));
	add_file(p, "kernel", p->kernel_gpa, p->kernel_fd, img->kernel_offset, img->kernel_bytes);
	if (p->initrd_bytes)
		add_file(p, "initrd", p->initrd_gpa, p->initrd_fd, 0, p->initrd_bytes);
	assert(writes_apart(p));
	*out = p;
	return 0;

out_free:
	linux_boot_plan_free(p);
	return ret;
}

void linux_boot_plan_free(struct linux_boot_plan *p)
{
	if (!p)
		return;
	if (p->kernel_fd >= 0)
		close(p->kernel_fd);
	if (p->initrd_fd >= 0)
		close(p->initrd_fd);
	kv_free(p->cmdline);
	kv_free(p);
}

int linux_boot_apply(struct gm *gm, const struct linux_boot_plan *p)
{
	for (unsigned int i = 0; i < p->nr_writes; i++) {
		const struct linux_write *w = &p->writes[i];
		int ret;

		if (w->from_file)
			ret = mem_copy_from_fd(gm, w->gpa, w->fd, w->offset, (size_t)w->len);
		else
			ret = mem_write(gm, w->gpa, w->data, (size_t)w->len);
		if (ret)
			return ret;
	}
	return 0;
}

int linux_boot_check(const char *kernel, const char *initrd, const char *cmdline,
		     uint64_t ram_bytes, char *why, size_t whylen)
{
	struct linux_machine m = { .ram_bytes = ram_bytes, .platform.ncpus = 1 };
	struct linux_boot_plan *plan;
	struct linux_image img;
	int ret;

	ret = linux_image_open(kernel, &img, why, whylen);
	if (ret)
		return ret;
	ret = linux_boot_plan(&img, initrd, cmdline ? cmdline : "", &m, &plan, why, whylen);
	if (!ret)
		linux_boot_plan_free(plan);
	linux_image_close(&img);
	return ret;
}
