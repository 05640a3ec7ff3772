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

#include "core/alloc.h"
#include "core/layout.h"
#include "core/log.h"
#include "mem/corpus.h"
#include "mem/memmap.h"

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

#define TSS_SIZE BOOT_TSS_SIZE
#define TSS_STRIDE 128
#define STUB_STRIDE 16
#define STUB_COMMON (LAYOUT_IDT_STUBS + 32 * STUB_STRIDE)

uint64_t boot_mapped_top(uint64_t ram_bytes)
{
	return mem_phys_top(ram_bytes);
}

uint64_t boot_tss_gpa(unsigned int cpu)
{
	return LAYOUT_TSS + (uint64_t)cpu * TSS_STRIDE;
}

/*
 * Identity map [0, top) with 2 MiB pages: RAM, the MMIO hole (CPL3 stores
 * there must exit as MMIO, not fault) and nothing else. Every level carries
 * the user bit because all guest code that matters runs at CPL3.
 */
static int build_page_tables(struct gm *gm)
{
	uint64_t top = boot_mapped_top(mem_ram_bytes(gm));
	uint64_t ngib = top >> 30;
	uint64_t pd[512];
	int ret;

	if (ngib > LAYOUT_MAX_GIB)
		return -E2BIG;
	ret = mem_write_le64(gm, LAYOUT_PGTABLE, (LAYOUT_PGTABLE + 0x1000) | PTE_P | PTE_RW | PTE_US);
	for (uint64_t g = 0; g < ngib && !ret; g++) {
		gpa_t pd_gpa = LAYOUT_PGTABLE + 0x2000 + g * 0x1000;

		for (int i = 0; i < 512; i++)
			pd[i] = ((g << 30) + ((uint64_t)i << 21)) | PTE_P | PTE_RW | PTE_US | PTE_PS;
		ret = mem_write(gm, pd_gpa, pd, sizeof(pd));
		if (!ret)
			ret = mem_write_le64(gm, LAYOUT_PGTABLE + 0x1000 + g * 8,
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
		uint64_t base = boot_tss_gpa(i);
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
		ret = mem_write(gm, base, tss, sizeof(tss));
		if (ret)
			return ret;
	}
	return mem_write(gm, LAYOUT_GDT, gdt, ABI_SEL_TSS0 + 16 * ncpus);
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
	ret = mem_write(gm, LAYOUT_IDT_STUBS, stubs, sizeof(stubs));
	if (!ret)
		ret = mem_write(gm, LAYOUT_IDT, idt, sizeof(idt));
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

/* What the loader keeps of an image's PT_LOAD and PT_DYNAMIC headers. */
struct elf_image {
	int fd;
	const char *path;
	uint64_t file_size;
	unsigned int nr_load;
	Elf64_Phdr load[BOOT_MAX_LOAD];
	bool have_dynamic;
	Elf64_Phdr dynamic;
};

/* File offset of the `len` bytes at virtual address va, if one segment's file part holds them. */
static bool va_to_offset(const struct elf_image *im, uint64_t va, uint64_t len, uint64_t *off)
{
	for (unsigned int i = 0; i < im->nr_load; i++) {
		const Elf64_Phdr *ph = &im->load[i];

		if (va >= ph->p_vaddr && va - ph->p_vaddr <= ph->p_filesz &&
		    len <= ph->p_filesz - (va - ph->p_vaddr)) {
			*off = ph->p_offset + (va - ph->p_vaddr);
			return true;
		}
	}
	return false;
}

/* True when [va, va + 8) lies in one writable loaded segment. */
static bool va_writable(const struct elf_image *im, uint64_t va)
{
	for (unsigned int i = 0; i < im->nr_load; i++) {
		const Elf64_Phdr *ph = &im->load[i];

		if ((ph->p_flags & PF_W) && va >= ph->p_vaddr && va - ph->p_vaddr <= ph->p_memsz &&
		    ph->p_memsz - (va - ph->p_vaddr) >= 8)
			return true;
	}
	return false;
}

/* What the loader takes from an image's dynamic section. */
struct elf_dynamic {
	uint64_t rela, relasz, relaent;
	bool pie;	/* DF_1_PIE: linked position-independent (a static-pie) */
};

/* Read PT_DYNAMIC, refusing anything that needs a dynamic linker. */
static int read_dynamic(const struct elf_image *im, struct elf_dynamic *dy)
{
	uint64_t n;

	memset(dy, 0, sizeof(*dy));
	dy->relaent = sizeof(Elf64_Rela);
	if (!im->have_dynamic)
		return 0;
	if (im->dynamic.p_filesz % sizeof(Elf64_Dyn) || im->dynamic.p_offset > im->file_size ||
	    im->file_size - im->dynamic.p_offset < im->dynamic.p_filesz)
		return load_fail(im->path, "bad dynamic section");
	n = im->dynamic.p_filesz / sizeof(Elf64_Dyn);
	for (uint64_t i = 0; i < n; i++) {
		Elf64_Dyn d;

		if (pread(im->fd, &d, sizeof(d), (off_t)(im->dynamic.p_offset + i * sizeof(d))) !=
		    sizeof(d))
			return load_fail(im->path, "short read of the dynamic section");
		switch (d.d_tag) {
		case DT_NULL:
			return 0;
		case DT_NEEDED:
			return load_fail(im->path, "needs shared libraries (DT_NEEDED)");
		case DT_TEXTREL:
			return load_fail(im->path, "relocates its code (DT_TEXTREL)");
		case DT_FLAGS:
			if (d.d_un.d_val & DF_TEXTREL)
				return load_fail(im->path, "relocates its code (DF_TEXTREL)");
			break;
		case DT_FLAGS_1:
			dy->pie = d.d_un.d_val & DF_1_PIE;
			break;
		case DT_REL:
		case DT_RELR:
		case DT_JMPREL:
			return load_fail(im->path, "relocation table other than RELA (REL, RELR or PLT)");
		case DT_RELA:
			dy->rela = d.d_un.d_ptr;
			break;
		case DT_RELASZ:
			dy->relasz = d.d_un.d_val;
			break;
		case DT_RELAENT:
			dy->relaent = d.d_un.d_val;
			break;
		default:
			break;
		}
	}
	return 0;
}

/*
 * Apply the relocations of a static-pie image loaded at its link addresses
 * (guest-physical == link address): only R_X86_64_RELATIVE, each to a
 * writable loaded place, with the phys offset as the load bias of the
 * guest's virtual addresses.
 */
static int relocate(struct gm *gm, const struct elf_image *im, const struct elf_dynamic *dy,
		    uint64_t phys_offset)
{
	uint64_t n, off;

	if (!dy->relasz)
		return 0;
	if (dy->relaent != sizeof(Elf64_Rela) || dy->relasz % dy->relaent)
		return load_fail(im->path, "bad relocation table size");
	n = dy->relasz / dy->relaent;
	if (!va_to_offset(im, dy->rela, dy->relasz, &off))
		return load_fail(im->path, "relocation table outside the loaded file");
	for (uint64_t i = 0; i < n; i++) {
		Elf64_Rela r;
		int ret;

		if (pread(im->fd, &r, sizeof(r), (off_t)(off + i * dy->relaent)) != sizeof(r))
			return load_fail(im->path, "short read of a relocation");
		if (ELF64_R_TYPE(r.r_info) != R_X86_64_RELATIVE) {
			log_err("%s: not a kvmem guest image: relocation type %u at 0x%llx (only "
				"R_X86_64_RELATIVE is supported)", im->path,
				(unsigned int)ELF64_R_TYPE(r.r_info), (unsigned long long)r.r_offset);
			return -ENOEXEC;
		}
		if (!va_writable(im, r.r_offset)) {
			log_err("%s: not a kvmem guest image: relocation at 0x%llx outside its "
				"writable segments", im->path, (unsigned long long)r.r_offset);
			return -ENOEXEC;
		}
		ret = mem_write_le64(gm, r.r_offset, (uint64_t)r.r_addend + phys_offset);
		if (ret)
			return ret;
	}
	return 0;
}

int boot_load_elf(struct gm *gm, const char *path, uint64_t phys_offset, struct boot_image *out)
{
	struct elf_image im = { .path = path };
	struct elf_dynamic dy;
	Elf64_Ehdr eh;
	struct stat st;
	gpa_t end = ABI_IMAGE_BASE;
	bool entry_ok = false;
	int ret;

	im.fd = open(path, O_RDONLY | O_CLOEXEC);
	if (im.fd < 0)
		return -errno;
	if (fstat(im.fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		ret = load_fail(path, "not a regular file");
		goto out_close;
	}
	im.file_size = (uint64_t)st.st_size;
	if (pread(im.fd, &eh, sizeof(eh), 0) != (ssize_t)sizeof(eh) ||
	    memcmp(eh.e_ident, ELFMAG, SELFMAG) || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh.e_ident[EI_DATA] != ELFDATA2LSB) {
		ret = load_fail(path, "no ELF64 little-endian header");
		goto out_close;
	}
	if (eh.e_machine != EM_X86_64 || (eh.e_type != ET_EXEC && eh.e_type != ET_DYN)) {
		ret = load_fail(path, "not an x86-64 static executable");
		goto out_close;
	}
	if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > 64 ||
	    eh.e_phoff > im.file_size ||
	    im.file_size - eh.e_phoff < (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr)) {
		ret = load_fail(path, "bad program header table");
		goto out_close;
	}
	for (unsigned int i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;

		if (pread(im.fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + i * sizeof(ph))) !=
		    sizeof(ph)) {
			ret = load_fail(path, "short read of a program header");
			goto out_close;
		}
		if (ph.p_type == PT_INTERP) {
			ret = load_fail(path, "dynamically linked (PT_INTERP)");
			goto out_close;
		}
		if (ph.p_type == PT_TLS) {
			ret = load_fail(path, "uses thread-local storage (PT_TLS)");
			goto out_close;
		}
		if (ph.p_type == PT_DYNAMIC) {
			if (im.have_dynamic) {
				ret = load_fail(path, "two dynamic sections");
				goto out_close;
			}
			im.dynamic = ph;
			im.have_dynamic = true;
			continue;
		}
		if (ph.p_type != PT_LOAD || ph.p_memsz == 0)
			continue;
		if (ph.p_filesz > ph.p_memsz || ph.p_offset > im.file_size ||
		    im.file_size - ph.p_offset < ph.p_filesz) {
			ret = load_fail(path, "segment outside the file");
			goto out_close;
		}
		/* Guest-physical == link address: a static-pie image is linked at ABI_IMAGE_BASE too. */
		if (ph.p_vaddr != ph.p_paddr) {
			ret = load_fail(path, "segment with a virtual address other than its physical");
			goto out_close;
		}
		if (im.nr_load == BOOT_MAX_LOAD) {
			ret = load_fail(path, "too many loadable segments");
			goto out_close;
		}
		if (ph.p_paddr < ABI_IMAGE_BASE || ph.p_paddr + ph.p_memsz < ph.p_paddr ||
		    ph.p_paddr + ph.p_memsz > LAYOUT_LOW_RAM_MAX ||
		    !mem_range_ok(gm, ph.p_paddr, ph.p_memsz)) {
			log_err("%s: segment at gpa 0x%llx (+%llu bytes) does not fit guest RAM",
				path, (unsigned long long)ph.p_paddr,
				(unsigned long long)ph.p_memsz);
			ret = -EFAULT;
			goto out_close;
		}
		im.load[im.nr_load++] = ph;
		/* Fresh guest RAM is zero: bss needs no write (and stays untouched). */
		ret = mem_copy_from_fd(gm, ph.p_paddr, im.fd, ph.p_offset, ph.p_filesz);
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
	ret = read_dynamic(&im, &dy);
	if (ret)
		goto out_close;
	/*
	 * GNU ld marks a static-pie linked at a fixed base (ours: ABI_IMAGE_BASE,
	 * so the kvm accelerator's offset is 0) ET_EXEC; DF_1_PIE is what says
	 * its code is position-independent and its relocations complete.
	 */
	if (eh.e_type == ET_EXEC && im.have_dynamic && !dy.pie) {
		ret = load_fail(path, "dynamically linked");
		goto out_close;
	}
	if (phys_offset && eh.e_type == ET_EXEC && !dy.pie) {
		ret = load_fail(path, "not position-independent: the thread accelerator runs it at "
				      "a host address, which needs a static-pie image");
		goto out_close;
	}
	ret = relocate(gm, &im, &dy, phys_offset);
	if (ret)
		goto out_close;
	out->entry = eh.e_entry;
	out->image_end = (end + LAYOUT_PAGE_SIZE - 1) & ~(LAYOUT_PAGE_SIZE - 1);
	ret = 0;
out_close:
	close(im.fd);
	return ret;
}

int boot_write_params(struct gm *gm, const struct boot_image *img, const struct boot_info *bi)
{
	struct abi_boot_params *bp;
	struct mem_corpus corpus;
	unsigned int n = 0;
	int ret;

	if (strlen(bi->cmdline) >= ABI_MAX_CMDLINE || bi->nr_devs > ABI_MAX_DEVICES)
		return -E2BIG;
	/* 2.5 KiB: kept off the stack (VMs boot on several threads at once in a host). */
	bp = kv_zalloc(sizeof(*bp));
	if (!bp)
		return -ENOMEM;
	bp->magic = ABI_BOOT_MAGIC;
	bp->version = ABI_VERSION;
	bp->ncpus = bi->ncpus;
	bp->tsc_khz = bi->tsc_khz;
	bp->ram_bytes = mem_ram_bytes(gm);
	bp->image_end = img->image_end;
	bp->phys_offset = bi->phys_offset;
	bp->mmio_call = bi->mmio_call;
	bp->phys_top = mem_phys_top(mem_ram_bytes(gm));
	if (mem_corpus_get(gm, &corpus)) {
		bp->corpus_gpa = corpus.gpa;
		bp->corpus_bytes = corpus.bytes;
	}
	for (unsigned int i = 0; i < mem_nr_regions(gm); i++) {
		gpa_t gpa;
		uint64_t len;

		mem_region(gm, i, &gpa, &len);
		if (gpa < img->image_end) {
			if (gpa + len <= img->image_end)
				continue;
			len -= img->image_end - gpa;
			gpa = img->image_end;
		}
		bp->ranges[n].gpa = gpa;
		bp->ranges[n].len = len;
		n++;
	}
	bp->nr_ranges = n;
	if (bi->nr_devs)
		memcpy(bp->devices, bi->devs, bi->nr_devs * sizeof(*bi->devs));
	bp->nr_devices = bi->nr_devs;
	memcpy(bp->cmdline, bi->cmdline, strlen(bi->cmdline) + 1);
	ret = mem_write(gm, LAYOUT_BOOT_PARAMS, bp, sizeof(*bp));
	kv_free(bp);
	return ret;
}

void boot_vcpu_entry(struct accel_entry *e, unsigned int cpu, const struct boot_image *img,
		     uint64_t phys_offset, bool user)
{
	memset(e, 0, sizeof(*e));
	e->rip = img->entry + phys_offset;
	e->rdi = cpu;
	e->rsi = LAYOUT_BOOT_PARAMS + phys_offset;
	e->rdx = LAYOUT_USTACKS + (uint64_t)(cpu + 1) * LAYOUT_USTACK_SIZE + phys_offset;
	e->rcx = phys_offset;
	e->r8 = user ? ABI_ENTRY_USER : 0;
	e->kstack = LAYOUT_KSTACKS + (uint64_t)(cpu + 1) * LAYOUT_KSTACK_SIZE;
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
