/* SPDX-License-Identifier: MIT */
/*
 * Guest set-up done by the VMM (see boot.h). The guest never runs a
 * real-mode or 32-bit step: the vCPUs start in long mode at CPL0 on the
 * guest's entry, which drops to CPL3 at once, because CPL0 code is emulated
 * on kvm-pvm hosts (~0.2 M instructions/s) and CPL3 code runs natively.
 */
#define LOG_TAG "boot"
#include "core/boot.h"

#include <assert.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/layout.h"
#include "core/log.h"

static_assert(sizeof(struct abi_boot_params) <= LAYOUT_TSS - LAYOUT_BOOT_PARAMS,
	      "boot params overflow their pages");
static_assert(ABI_SEL_TSS0 + 16 * ABI_MAX_CPUS <= LAYOUT_PAGE_SIZE, "GDT overflows its page");
static_assert(LAYOUT_KSTACKS + ABI_MAX_CPUS * LAYOUT_KSTACK_SIZE <= LAYOUT_PGTABLE,
	      "kernel stacks overlap page tables");
static_assert(LAYOUT_USTACKS + ABI_MAX_CPUS * LAYOUT_USTACK_SIZE <= LAYOUT_RESERVED_END,
	      "user stacks overlap the image");

#define PTE_P 0x1ULL
#define PTE_RW 0x2ULL
#define PTE_US 0x4ULL
#define PTE_PS 0x80ULL

#define TSS_SIZE 104
#define TSS_STRIDE 128
#define STUB_STRIDE 16
#define STUB_COMMON (LAYOUT_IDT_STUBS + 32 * STUB_STRIDE)

#define CR0_PE 0x1ULL
#define CR0_MP 0x2ULL
#define CR0_ET 0x10ULL
#define CR0_NE 0x20ULL
#define CR0_WP 0x10000ULL
#define CR0_PG 0x80000000ULL
#define CR4_PAE 0x20ULL
#define CR4_OSFXSR 0x200ULL
#define CR4_OSXMMEXCPT 0x400ULL
#define EFER_LME 0x100ULL
#define EFER_LMA 0x400ULL

uint64_t boot_mapped_top(uint64_t ram_bytes)
{
	uint64_t top = LAYOUT_HIGH_RAM_BASE;

	if (ram_bytes > LAYOUT_LOW_RAM_MAX)
		top += ram_bytes - LAYOUT_LOW_RAM_MAX;
	return (top + (1ULL << 30) - 1) & ~((1ULL << 30) - 1);
}

/*
 * Identity map [0, top) with 2 MiB pages: RAM, the MMIO hole (CPL3 stores
 * there must exit as MMIO, not fault) and nothing else. Every level carries
 * the user bit because all guest code that matters runs at CPL3.
 */
static int build_page_tables(struct gm *gm)
{
	uint64_t top = boot_mapped_top(gm_ram_bytes(gm));
	uint64_t ngib = top >> 30;
	uint64_t pd[512];
	int ret;

	if (ngib > LAYOUT_MAX_GIB)
		return -E2BIG;
	ret = gm_write_le64(gm, LAYOUT_PGTABLE, (LAYOUT_PGTABLE + 0x1000) | PTE_P | PTE_RW | PTE_US);
	for (uint64_t g = 0; g < ngib && !ret; g++) {
		gpa_t pd_gpa = LAYOUT_PGTABLE + 0x2000 + g * 0x1000;

		for (int i = 0; i < 512; i++)
			pd[i] = ((g << 30) + ((uint64_t)i << 21)) | PTE_P | PTE_RW | PTE_US | PTE_PS;
		ret = gm_write(gm, pd_gpa, pd, sizeof(pd));
		if (!ret)
			ret = gm_write_le64(gm, LAYOUT_PGTABLE + 0x1000 + g * 8,
					    pd_gpa | PTE_P | PTE_RW | PTE_US);
	}
	return ret;
}

static uint64_t seg_desc(uint8_t access, uint8_t flags)
{
	/* base 0, limit 0xfffff; flags nibble is G|DB|L|AVL. */
	return 0xffffULL | ((uint64_t)access << 40) | (0xfULL << 48) | ((uint64_t)flags << 52);
}

static int build_gdt_tss(struct gm *gm, unsigned int ncpus)
{
	uint64_t gdt[ABI_SEL_TSS0 / 8 + 2 * ABI_MAX_CPUS] = { 0 };
	int ret;

	gdt[ABI_SEL_KERNEL_CS / 8] = seg_desc(0x9a, 0xa); /* P DPL0 code, G L */
	gdt[ABI_SEL_KERNEL_DS / 8] = seg_desc(0x92, 0xc); /* P DPL0 data, G DB */
	gdt[ABI_SEL_USER_DS / 8] = seg_desc(0xf2, 0xc);	  /* P DPL3 data */
	gdt[ABI_SEL_USER_CS / 8] = seg_desc(0xfa, 0xa);	  /* P DPL3 code, L */
	for (unsigned int i = 0; i < ncpus; i++) {
		uint64_t base = LAYOUT_TSS + (uint64_t)i * TSS_STRIDE;
		uint8_t tss[TSS_SIZE] = { 0 };
		uint64_t rsp0 = LAYOUT_KSTACKS + (uint64_t)(i + 1) * LAYOUT_KSTACK_SIZE;
		uint16_t iomap = TSS_SIZE; /* no I/O bitmap: all port I/O faults */
		unsigned int idx = ABI_SEL_TSS0 / 8 + 2 * i;

		/* 64-bit TSS descriptor: available TSS (type 9), present. */
		gdt[idx] = (TSS_SIZE - 1) | ((base & 0xffffff) << 16) | (0x89ULL << 40) |
			   (((base >> 24) & 0xff) << 56);
		gdt[idx + 1] = base >> 32;
		memcpy(tss + 4, &rsp0, sizeof(rsp0));
		memcpy(tss + 102, &iomap, sizeof(iomap));
		ret = gm_write(gm, base, tss, sizeof(tss));
		if (ret)
			return ret;
	}
	return gm_write(gm, LAYOUT_GDT, gdt, ABI_SEL_TSS0 + 16 * ncpus);
}

static bool vector_has_error_code(unsigned int v)
{
	return v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30;
}

/*
 * Each of vectors 0-31 gets a stub that pushes a uniform frame (error code,
 * vector) and jumps to a common tail that stores to ABI_SYS_EXCEPTION. The
 * VMM then reads the frame from the stack itself, so the stubs stay a few
 * emulated instructions long. Vectors above 31 are not raised at CPL3
 * (no interrupts are injected; `int n` from CPL3 hits a DPL0 gate: #GP).
 */
static int build_idt(struct gm *gm)
{
	uint8_t stubs[32 * STUB_STRIDE + 32];
	uint8_t idt[256 * 16];
	uint8_t *c;
	uint64_t mmio = LAYOUT_MMIO_SYSCTL + ABI_SYS_EXCEPTION;
	int ret;

	memset(stubs, 0xcc, sizeof(stubs));
	memset(idt, 0, sizeof(idt));
	for (unsigned int v = 0; v < 32; v++) {
		uint64_t at = LAYOUT_IDT_STUBS + v * STUB_STRIDE;
		uint8_t *s = stubs + v * STUB_STRIDE;
		uint8_t *g = idt + v * 16;
		int32_t rel;

		if (!vector_has_error_code(v)) {
			*s++ = 0x6a; /* push $0 */
			*s++ = 0x00;
		}
		*s++ = 0x6a; /* push $v */
		*s++ = (uint8_t)v;
		*s++ = 0xe9; /* jmp rel32 to the common tail */
		rel = (int32_t)((int64_t)STUB_COMMON - (int64_t)(at + (uint64_t)(s - (stubs + v * STUB_STRIDE)) + 4));
		memcpy(s, &rel, 4);

		/* 64-bit interrupt gate, DPL0, kernel CS, IST 0. */
		g[0] = at & 0xff;
		g[1] = (at >> 8) & 0xff;
		g[2] = ABI_SEL_KERNEL_CS;
		g[3] = 0;
		g[4] = 0;
		g[5] = 0x8e;
		g[6] = (at >> 16) & 0xff;
		g[7] = (at >> 24) & 0xff;
		memset(g + 8, 0, 8); /* offset 63:32 is 0: stubs live below 4 GiB */
	}
	c = stubs + 32 * STUB_STRIDE;
	*c++ = 0x48; /* movabs $mmio, %rdi */
	*c++ = 0xbf;
	memcpy(c, &mmio, 8);
	c += 8;
	*c++ = 0x89; /* mov %eax, (%rdi): the report; the VMM stops the vCPU */
	*c++ = 0x07;
	*c++ = 0xf4; /* hlt; jmp hlt: never resumed */
	*c++ = 0xeb;
	*c++ = 0xfd;
	ret = gm_write(gm, LAYOUT_IDT_STUBS, stubs, sizeof(stubs));
	if (!ret)
		ret = gm_write(gm, LAYOUT_IDT, idt, sizeof(idt));
	return ret;
}

int boot_build_tables(struct gm *gm, unsigned int ncpus)
{
	int ret;

	if (ncpus == 0 || ncpus > ABI_MAX_CPUS)
		return -EINVAL;
	ret = build_page_tables(gm);
	if (!ret)
		ret = build_gdt_tss(gm, ncpus);
	if (!ret)
		ret = build_idt(gm);
	return ret;
}

static int load_fail(const char *path, const char *why)
{
	log_err("%s: not a kvmem guest image: %s", path, why);
	return -ENOEXEC;
}

int boot_load_elf(struct gm *gm, const char *path, struct boot_image *out)
{
	Elf64_Ehdr eh;
	struct stat st;
	gpa_t end = ABI_IMAGE_BASE;
	bool entry_ok = false;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		ret = load_fail(path, "not a regular file");
		goto out_close;
	}
	if (pread(fd, &eh, sizeof(eh), 0) != (ssize_t)sizeof(eh) ||
	    memcmp(eh.e_ident, ELFMAG, SELFMAG) || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh.e_ident[EI_DATA] != ELFDATA2LSB) {
		ret = load_fail(path, "no ELF64 little-endian header");
		goto out_close;
	}
	if (eh.e_machine != EM_X86_64 || eh.e_type != ET_EXEC) {
		ret = load_fail(path, "not an x86-64 static executable");
		goto out_close;
	}
	if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > 64 ||
	    eh.e_phoff > (uint64_t)st.st_size ||
	    (uint64_t)st.st_size - eh.e_phoff < (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr)) {
		ret = load_fail(path, "bad program header table");
		goto out_close;
	}
	for (unsigned int i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;

		if (pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + i * sizeof(ph))) != sizeof(ph)) {
			ret = load_fail(path, "short read of a program header");
			goto out_close;
		}
		if (ph.p_type == PT_INTERP || ph.p_type == PT_DYNAMIC) {
			ret = load_fail(path, "dynamically linked");
			goto out_close;
		}
		if (ph.p_type != PT_LOAD || ph.p_memsz == 0)
			continue;
		if (ph.p_filesz > ph.p_memsz || ph.p_offset > (uint64_t)st.st_size ||
		    (uint64_t)st.st_size - ph.p_offset < ph.p_filesz) {
			ret = load_fail(path, "segment outside the file");
			goto out_close;
		}
		if (ph.p_paddr < ABI_IMAGE_BASE || ph.p_paddr + ph.p_memsz < ph.p_paddr ||
		    ph.p_paddr + ph.p_memsz > LAYOUT_LOW_RAM_MAX ||
		    !gm_range_ok(gm, ph.p_paddr, ph.p_memsz)) {
			log_err("%s: segment at gpa 0x%llx (+%llu bytes) does not fit guest RAM",
				path, (unsigned long long)ph.p_paddr,
				(unsigned long long)ph.p_memsz);
			ret = -EFAULT;
			goto out_close;
		}
		/* Fresh guest RAM is zero: bss needs no write (and stays untouched). */
		ret = gm_copy_from_fd(gm, ph.p_paddr, fd, ph.p_offset, ph.p_filesz);
		if (ret)
			goto out_close;
		if (eh.e_entry >= ph.p_paddr && eh.e_entry < ph.p_paddr + ph.p_memsz &&
		    (ph.p_flags & PF_X))
			entry_ok = true;
		if (ph.p_paddr + ph.p_memsz > end)
			end = ph.p_paddr + ph.p_memsz;
	}
	if (!entry_ok) {
		ret = load_fail(path, "entry point not in an executable segment");
		goto out_close;
	}
	out->entry = eh.e_entry;
	out->image_end = (end + LAYOUT_PAGE_SIZE - 1) & ~(LAYOUT_PAGE_SIZE - 1);
	ret = 0;
out_close:
	close(fd);
	return ret;
}

int boot_write_params(struct gm *gm, const struct boot_image *img, unsigned int ncpus,
		      uint64_t tsc_khz, const char *cmdline,
		      const struct abi_device *devs, unsigned int nr_devs)
{
	static struct abi_boot_params bp; /* 2.5 KiB: kept off the stack */
	unsigned int n = 0;

	if (strlen(cmdline) >= ABI_MAX_CMDLINE || nr_devs > ABI_MAX_DEVICES)
		return -E2BIG;
	memset(&bp, 0, sizeof(bp));
	bp.magic = ABI_BOOT_MAGIC;
	bp.version = ABI_VERSION;
	bp.ncpus = ncpus;
	bp.tsc_khz = tsc_khz;
	bp.ram_bytes = gm_ram_bytes(gm);
	bp.image_end = img->image_end;
	for (unsigned int i = 0; i < gm_nr_regions(gm); i++) {
		gpa_t gpa;
		uint64_t len;

		gm_region(gm, i, &gpa, &len);
		if (gpa < img->image_end) {
			if (gpa + len <= img->image_end)
				continue;
			len -= img->image_end - gpa;
			gpa = img->image_end;
		}
		bp.ranges[n].gpa = gpa;
		bp.ranges[n].len = len;
		n++;
	}
	bp.nr_ranges = n;
	memcpy(bp.devices, devs, nr_devs * sizeof(*devs));
	bp.nr_devices = nr_devs;
	memcpy(bp.cmdline, cmdline, strlen(cmdline) + 1);
	return gm_write(gm, LAYOUT_BOOT_PARAMS, &bp, sizeof(bp));
}

static void set_seg(struct kvm_segment *s, uint16_t sel, uint8_t type, uint8_t dpl, bool code)
{
	memset(s, 0, sizeof(*s));
	s->selector = sel;
	s->base = 0;
	s->limit = 0xffffffff;
	s->type = type;
	s->present = 1;
	s->dpl = dpl;
	s->s = 1;
	s->g = 1;
	s->l = code;
	s->db = !code;
}

void boot_vcpu_sregs(struct kvm_sregs *s, unsigned int cpu)
{
	set_seg(&s->cs, ABI_SEL_KERNEL_CS, 0xb, 0, true);
	set_seg(&s->ds, ABI_SEL_KERNEL_DS, 0x3, 0, false);
	s->es = s->fs = s->gs = s->ss = s->ds;

	memset(&s->tr, 0, sizeof(s->tr));
	s->tr.selector = (uint16_t)(ABI_SEL_TSS0 + 16 * cpu);
	s->tr.base = LAYOUT_TSS + (uint64_t)cpu * TSS_STRIDE;
	s->tr.limit = TSS_SIZE - 1;
	s->tr.type = 0xb; /* busy 64-bit TSS, as after ltr */
	s->tr.present = 1;

	memset(&s->ldt, 0, sizeof(s->ldt));
	s->ldt.type = 0x2;
	s->ldt.present = 1;
	s->ldt.unusable = 1;

	s->gdt.base = LAYOUT_GDT;
	s->gdt.limit = ABI_SEL_TSS0 + 16 * ABI_MAX_CPUS - 1;
	s->idt.base = LAYOUT_IDT;
	s->idt.limit = 256 * 16 - 1;

	s->cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
	s->cr3 = LAYOUT_PGTABLE;
	s->cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
	s->efer = EFER_LME | EFER_LMA;
}

void boot_vcpu_regs(struct kvm_regs *r, unsigned int cpu, gpa_t entry)
{
	memset(r, 0, sizeof(*r));
	r->rip = entry;
	r->rsp = LAYOUT_KSTACKS + (uint64_t)(cpu + 1) * LAYOUT_KSTACK_SIZE;
	r->rdi = cpu;
	r->rsi = LAYOUT_BOOT_PARAMS;
	r->rdx = LAYOUT_USTACKS + (uint64_t)(cpu + 1) * LAYOUT_USTACK_SIZE;
	r->rflags = 0x2;
}

const char *boot_exception_name(unsigned int vector)
{
	static const char *const names[32] = {
		[0] = "#DE divide error",	[1] = "#DB debug",
		[2] = "NMI",			[3] = "#BP breakpoint",
		[4] = "#OF overflow",		[5] = "#BR bound range",
		[6] = "#UD invalid opcode",	[7] = "#NM device not available",
		[8] = "#DF double fault",	[10] = "#TS invalid TSS",
		[11] = "#NP segment not present", [12] = "#SS stack fault",
		[13] = "#GP general protection", [14] = "#PF page fault",
		[16] = "#MF x87 error",		[17] = "#AC alignment check",
		[18] = "#MC machine check",	[19] = "#XM SIMD exception",
		[20] = "#VE virtualization",	[21] = "#CP control protection",
	};

	if (vector < 32 && names[vector])
		return names[vector];
	return "reserved vector";
}
