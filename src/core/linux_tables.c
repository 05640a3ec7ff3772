/* SPDX-License-Identifier: MIT */
/*
 * The MP and ACPI tables of a Linux guest (see linux_tables.h). The
 * structures are the specifications' layouts, every size a static assert;
 * the region they go to is laid out in core/layout.h:
 *
 *   LAYOUT_LINUX_ACPI      RSDP, XSDT, FADT, MADT, FACS (64-byte aligned), DSDT
 *   LAYOUT_LINUX_MPTABLE   MP configuration table
 *   LAYOUT_LINUX_MPFP      MP floating pointer, pointing at it
 *
 * x86 is little-endian, and so is this VMM's host: fields are stored as is.
 */
#include "core/linux_tables.h"

#include <assert.h>
#include <stddef.h>
#include <string.h>

#include "guest/abi.h"

/* --- MP table: Intel MultiProcessor Specification 1.4, chapter 4 --- */

struct mpf {			/* the floating pointer */
	char signature[4];	/* "_MP_" */
	uint32_t physptr;	/* the configuration table */
	uint8_t length;		/* in 16-byte units: 1 */
	uint8_t specrev;	/* 4: version 1.4 */
	uint8_t checksum;	/* the 16 bytes sum to 0 */
	uint8_t feature[5];	/* 0: a configuration table exists, no IMCR (virtual wire) */
} __attribute__((packed));

struct mpc_header {
	char signature[4];	/* "PCMP" */
	uint16_t length;	/* the base table, header included */
	uint8_t spec;		/* 4 */
	uint8_t checksum;
	char oem[8];
	char product[12];
	uint32_t oemptr;
	uint16_t oemsize;
	uint16_t count;		/* entries */
	uint32_t lapic;		/* the local APICs' address */
	uint16_t ext_length;
	uint8_t ext_checksum;
	uint8_t reserved;
} __attribute__((packed));

struct mpc_cpu {
	uint8_t type;		/* 0 */
	uint8_t apicid;
	uint8_t apicver;
	uint8_t flags;		/* enabled, bootstrap processor */
	uint32_t signature;	/* CPUID family/model/stepping */
	uint32_t features;	/* CPUID.1:EDX */
	uint32_t reserved[2];
} __attribute__((packed));

struct mpc_bus {
	uint8_t type;		/* 1 */
	uint8_t busid;
	char bustype[6];
} __attribute__((packed));

struct mpc_ioapic {
	uint8_t type;		/* 2 */
	uint8_t apicid;
	uint8_t apicver;
	uint8_t flags;		/* enabled */
	uint32_t address;
} __attribute__((packed));

struct mpc_intsrc {		/* type 3: an I/O interrupt; type 4: a local interrupt */
	uint8_t type;
	uint8_t irqtype;	/* INT, NMI, SMI, ExtINT */
	uint16_t irqflag;	/* polarity and trigger; 0: as the bus has them (ISA: edge, high) */
	uint8_t srcbus;
	uint8_t srcbusirq;
	uint8_t dstapic;	/* an IOAPIC id, or for type 4 a local APIC id (0xff: all) */
	uint8_t dstirq;		/* IOAPIC pin, or LINT0/LINT1 */
} __attribute__((packed));

static_assert(sizeof(struct mpf) == 16, "MP floating pointer");
static_assert(sizeof(struct mpc_header) == 44, "MP configuration table header");
static_assert(sizeof(struct mpc_cpu) == 20, "MP processor entry");
static_assert(sizeof(struct mpc_bus) == 8 && sizeof(struct mpc_ioapic) == 8 &&
	      sizeof(struct mpc_intsrc) == 8, "MP 8-byte entries");

#define MP_CPU 0
#define MP_BUS 1
#define MP_IOAPIC 2
#define MP_INTSRC 3
#define MP_LINTSRC 4
#define MP_CPU_ENABLED 0x1
#define MP_CPU_BSP 0x2
#define MP_IRQ_INT 0
#define MP_IRQ_NMI 1
#define MP_IRQ_EXTINT 3
#define MP_ISA_BUS 0
/* The local APIC version KVM's in-kernel APIC reports (an integrated APIC). */
#define MP_APIC_VERSION 0x14
/* KVM's IOAPIC: version 0x11, 24 pins. */
#define MP_IOAPIC_VERSION 0x11
#define MP_IOAPIC_PINS 24
/* A family 6 CPU with an FPU and an APIC: what Linux reads, it only prints. */
#define MP_CPU_SIGNATURE 0x600
#define MP_CPU_FEATURES 0x201

/* The MP table's worst case fits before the floating pointer. */
static_assert(sizeof(struct mpc_header) + ABI_MAX_CPUS * sizeof(struct mpc_cpu) +
	      sizeof(struct mpc_bus) + sizeof(struct mpc_ioapic) +
	      (MP_IOAPIC_PINS + 2) * sizeof(struct mpc_intsrc) <=
	      LAYOUT_LINUX_MPFP - LAYOUT_LINUX_MPTABLE, "MP table room");
static_assert(LAYOUT_LINUX_TABLES <= LAYOUT_LINUX_ACPI &&
	      LAYOUT_LINUX_ACPI_END <= LAYOUT_LINUX_MPTABLE &&
	      LAYOUT_LINUX_MPFP + sizeof(struct mpf) <= LAYOUT_LINUX_TABLES_END &&
	      LAYOUT_LINUX_MPFP >= 639 * 1024, "the tables region, in order");

static uint8_t checksum(const void *p, size_t len)
{
	uint8_t sum = 0;

	for (size_t i = 0; i < len; i++)
		sum = (uint8_t)(sum + ((const uint8_t *)p)[i]);
	return (uint8_t)-sum;
}

/* Append len bytes at *pos of a region of cap bytes (the callers' sizes are asserted). */
static void put(uint8_t *buf, size_t *pos, size_t cap, const void *p, size_t len)
{
	assert(*pos + len <= cap);
	memcpy(buf + *pos, p, len);
	*pos += len;
}

static void build_mp(const struct linux_platform *p, uint8_t *table, uint8_t *fp)
{
	size_t cap = LAYOUT_LINUX_MPFP - LAYOUT_LINUX_MPTABLE;
	struct mpc_header h = { .signature = "PCMP", .spec = 4, .oem = "KVMEM   ",
				.product = "KVMEM LINUX ", .lapic = (uint32_t)LAYOUT_LAPIC };
	uint8_t ioapic_id = (uint8_t)p->ncpus; /* after the local APICs' */
	size_t pos = sizeof(h);
	struct mpf f = { .signature = "_MP_", .physptr = (uint32_t)LAYOUT_LINUX_MPTABLE,
			 .length = 1, .specrev = 4 };

	for (unsigned int i = 0; i < p->ncpus; i++) {
		struct mpc_cpu c = { .type = MP_CPU, .apicid = (uint8_t)i,
				     .apicver = MP_APIC_VERSION,
				     .flags = MP_CPU_ENABLED | (i == 0 ? MP_CPU_BSP : 0),
				     .signature = MP_CPU_SIGNATURE, .features = MP_CPU_FEATURES };

		put(table, &pos, cap, &c, sizeof(c));
		h.count++;
	}
	struct mpc_bus bus = { .type = MP_BUS, .busid = MP_ISA_BUS, .bustype = "ISA   " };
	struct mpc_ioapic io = { .type = MP_IOAPIC, .apicid = ioapic_id,
				 .apicver = MP_IOAPIC_VERSION, .flags = 1,
				 .address = (uint32_t)LAYOUT_IOAPIC };

	put(table, &pos, cap, &bus, sizeof(bus));
	put(table, &pos, cap, &io, sizeof(io));
	h.count += 2;
	/*
	 * Every pin but 2 is the ISA interrupt of its number, edge triggered
	 * and active high, as KVM's default routing delivers GSI n to pin n
	 * (and to the 8259 below 16). IRQ 2 is the 8259s' cascade: no device
	 * may have it. Pins past 15 carry virtio interrupts as ISA IRQs 16+,
	 * which Linux maps one to one as well.
	 */
	for (unsigned int pin = 0; pin < MP_IOAPIC_PINS; pin++) {
		struct mpc_intsrc is = { .type = MP_INTSRC, .irqtype = MP_IRQ_INT,
					 .srcbus = MP_ISA_BUS, .srcbusirq = (uint8_t)pin,
					 .dstapic = ioapic_id, .dstirq = (uint8_t)pin };

		if (pin == 2)
			continue;
		put(table, &pos, cap, &is, sizeof(is));
		h.count++;
	}
	/* The 8259 on every CPU's LINT0 (virtual wire), NMIs on LINT1. */
	struct mpc_intsrc lint0 = { .type = MP_LINTSRC, .irqtype = MP_IRQ_EXTINT,
				    .srcbus = MP_ISA_BUS, .dstapic = 0xff, .dstirq = 0 };
	struct mpc_intsrc lint1 = { .type = MP_LINTSRC, .irqtype = MP_IRQ_NMI,
				    .srcbus = MP_ISA_BUS, .dstapic = 0xff, .dstirq = 1 };

	put(table, &pos, cap, &lint0, sizeof(lint0));
	put(table, &pos, cap, &lint1, sizeof(lint1));
	h.count += 2;
	h.length = (uint16_t)pos;
	memcpy(table, &h, sizeof(h));
	table[offsetof(struct mpc_header, checksum)] = checksum(table, pos);
	f.checksum = checksum(&f, sizeof(f));
	memcpy(fp, &f, sizeof(f));
}

/* --- ACPI: ACPI 6.x, chapter 5 --- */

#define ACPI_OEM_ID "KVMEM "
#define ACPI_OEM_TABLE "KVMEMLNX"

struct acpi_rsdp {
	char signature[8];	/* "RSD PTR " */
	uint8_t checksum;	/* of the first 20 bytes (ACPI 1.0's structure) */
	char oem_id[6];
	uint8_t revision;	/* 2: has the XSDT */
	uint32_t rsdt;		/* 0: no RSDT, the XSDT is the root */
	uint32_t length;
	uint64_t xsdt;
	uint8_t ext_checksum;	/* of all 36 bytes */
	uint8_t reserved[3];
} __attribute__((packed));

struct acpi_header {
	char signature[4];
	uint32_t length;
	uint8_t revision;
	uint8_t checksum;	/* of the whole table */
	char oem_id[6];
	char oem_table_id[8];
	uint32_t oem_revision;
	char creator_id[4];
	uint32_t creator_revision;
} __attribute__((packed));

struct acpi_gas {		/* Generic Address Structure */
	uint8_t space;		/* 1: system I/O */
	uint8_t bit_width;
	uint8_t bit_offset;
	uint8_t access_size;	/* 0: as bit_width says */
	uint64_t address;
} __attribute__((packed));

struct acpi_fadt {
	struct acpi_header h;
	uint32_t facs;
	uint32_t dsdt;
	uint8_t reserved0;
	uint8_t pm_profile;
	uint16_t sci_int;
	uint32_t smi_cmd;	/* 0: always in ACPI mode, nothing to switch */
	uint8_t acpi_enable, acpi_disable, s4bios_req, pstate_cnt;
	uint32_t pm1a_evt_blk, pm1b_evt_blk, pm1a_cnt_blk, pm1b_cnt_blk;
	uint32_t pm2_cnt_blk, pm_tmr_blk, gpe0_blk, gpe1_blk;
	uint8_t pm1_evt_len, pm1_cnt_len, pm2_cnt_len, pm_tmr_len;
	uint8_t gpe0_blk_len, gpe1_blk_len, gpe1_base, cst_cnt;
	uint16_t p_lvl2_lat, p_lvl3_lat;
	uint16_t flush_size, flush_stride;
	uint8_t duty_offset, duty_width, day_alrm, mon_alrm, century;
	uint16_t iapc_boot_arch;
	uint8_t reserved1;
	uint32_t flags;
	struct acpi_gas reset_reg;
	uint8_t reset_value;
	uint16_t arm_boot_arch;
	uint8_t minor_version;
	uint64_t x_facs;
	uint64_t x_dsdt;
	struct acpi_gas x_pm1a_evt_blk, x_pm1b_evt_blk, x_pm1a_cnt_blk, x_pm1b_cnt_blk;
	struct acpi_gas x_pm2_cnt_blk, x_pm_tmr_blk, x_gpe0_blk, x_gpe1_blk;
	struct acpi_gas sleep_control, sleep_status;
	uint64_t hypervisor_id;
} __attribute__((packed));

struct acpi_facs {
	char signature[4];	/* "FACS" */
	uint32_t length;	/* 64 */
	uint32_t hardware_signature;
	uint32_t waking_vector;
	uint32_t global_lock;
	uint32_t flags;
	uint64_t x_waking_vector;
	uint8_t version;	/* 2 */
	uint8_t reserved[3];
	uint32_t ospm_flags;
	uint8_t reserved2[24];
} __attribute__((packed));

struct madt_header {
	struct acpi_header h;
	uint32_t lapic;		/* the local APICs' address */
	uint32_t flags;		/* PCAT_COMPAT: the 8259s are there too */
} __attribute__((packed));

struct madt_lapic {		/* Processor Local APIC */
	uint8_t type;		/* 0 */
	uint8_t length;		/* 8 */
	uint8_t uid;		/* ACPI processor UID */
	uint8_t apic_id;
	uint32_t flags;		/* enabled */
} __attribute__((packed));

struct madt_ioapic {
	uint8_t type;		/* 1 */
	uint8_t length;		/* 12 */
	uint8_t id;
	uint8_t reserved;
	uint32_t address;
	uint32_t gsi_base;	/* its pin 0's GSI */
} __attribute__((packed));

struct madt_lapic_nmi {
	uint8_t type;		/* 4 */
	uint8_t length;		/* 6 */
	uint8_t uid;		/* 0xff: every processor */
	uint16_t flags;		/* 0: as the bus has it */
	uint8_t lint;
} __attribute__((packed));

static_assert(sizeof(struct acpi_rsdp) == 36, "RSDP");
static_assert(sizeof(struct acpi_header) == 36, "SDT header");
static_assert(sizeof(struct acpi_gas) == 12, "GAS");
static_assert(offsetof(struct acpi_fadt, iapc_boot_arch) == 109, "FADT IAPC_BOOT_ARCH");
static_assert(offsetof(struct acpi_fadt, flags) == 112, "FADT flags");
static_assert(offsetof(struct acpi_fadt, x_dsdt) == 140, "FADT X_DSDT");
static_assert(offsetof(struct acpi_fadt, sleep_control) == 244, "FADT SLEEP_CONTROL_REG");
static_assert(sizeof(struct acpi_fadt) == 276, "FADT, revision 6");
static_assert(sizeof(struct acpi_facs) == 64, "FACS");
static_assert(sizeof(struct madt_header) == 44 && sizeof(struct madt_lapic) == 8 &&
	      sizeof(struct madt_ioapic) == 12 && sizeof(struct madt_lapic_nmi) == 6, "MADT");

#define MADT_PCAT_COMPAT 1
#define MADT_LAPIC_ENABLED 1
#define MADT_BYTES(ncpus)                                                               \
	(sizeof(struct madt_header) + (ncpus) * sizeof(struct madt_lapic) +             \
	 sizeof(struct madt_ioapic) + sizeof(struct madt_lapic_nmi))

#define ACPI_SPACE_IO 1
/* IAPC_BOOT_ARCH: no VGA, no MSI, no CMOS RTC; and no 8042, so Linux does not probe one. */
#define ACPI_BOOT_NO_VGA 0x0004
#define ACPI_BOOT_NO_MSI 0x0008
#define ACPI_BOOT_NO_CMOS_RTC 0x0020
/* Flags: WBINVD works; power and sleep buttons are not fixed features; a 32-bit PM timer. */
#define ACPI_FADT_WBINVD 0x00000001
#define ACPI_FADT_PWR_BUTTON 0x00000010
#define ACPI_FADT_SLP_BUTTON 0x00000020
#define ACPI_FADT_TMR_VAL_EXT 0x00000100

static void acpi_header(struct acpi_header *h, const char *sig, uint32_t len, uint8_t rev)
{
	memcpy(h->signature, sig, 4);
	h->length = len;
	h->revision = rev;
	memcpy(h->oem_id, ACPI_OEM_ID, 6);
	memcpy(h->oem_table_id, ACPI_OEM_TABLE, 8);
	h->oem_revision = 1;
	memcpy(h->creator_id, "KVMM", 4);
	h->creator_revision = 1;
}

static struct acpi_gas io_gas(uint16_t port, uint8_t bytes)
{
	return (struct acpi_gas){ .space = ACPI_SPACE_IO, .bit_width = (uint8_t)(8 * bytes),
				  .address = port };
}

/*
 * AML (ACPI 6.x, chapter 20), just what the DSDT needs: a bounded byte
 * buffer and the few encodings of named objects, strings, integers,
 * packages and buffers.
 */
struct aml {
	uint8_t *p;
	size_t len, cap;
};

static void aml_bytes(struct aml *a, const void *p, size_t n)
{
	assert(a->len + n <= a->cap);
	memcpy(a->p + a->len, p, n);
	a->len += n;
}

static void aml_byte(struct aml *a, uint8_t b)
{
	aml_bytes(a, &b, 1);
}

/*
 * PkgLength counts itself: one byte up to 63 in all, else a lead byte with
 * the count of bytes that follow and the low nibble, then 8 bits each.
 */
static size_t pkglen_bytes(size_t body)
{
	if (body + 1 <= 0x3f)
		return 1;
	if (body + 2 <= 0xfff)
		return 2;
	assert(body + 3 <= 0xfffff);
	return 3;
}

static void aml_pkglen(struct aml *a, size_t body)
{
	size_t n = pkglen_bytes(body);
	size_t len = body + n;

	if (n == 1) {
		aml_byte(a, (uint8_t)len);
		return;
	}
	aml_byte(a, (uint8_t)(((n - 1) << 6) | (len & 0xf)));
	for (size_t i = 1; i < n; i++)
		aml_byte(a, (uint8_t)(len >> (4 + 8 * (i - 1))));
}

#define AML_ZERO 0x00
#define AML_ONE 0x01
#define AML_NAME 0x08
#define AML_BYTE 0x0a
#define AML_DWORD 0x0c
#define AML_STRING 0x0d
#define AML_SCOPE 0x10
#define AML_BUFFER 0x11
#define AML_PACKAGE 0x12
#define AML_EXT 0x5b
#define AML_DEVICE 0x82

static void aml_integer(struct aml *a, uint32_t v)
{
	if (v <= 1) {
		aml_byte(a, v ? AML_ONE : AML_ZERO);
	} else if (v <= 0xff) {
		aml_byte(a, AML_BYTE);
		aml_byte(a, (uint8_t)v);
	} else {
		aml_byte(a, AML_DWORD);
		aml_bytes(a, &v, 4);
	}
}

/* Name(seg, ...): seg is a 4-character name segment, or "\\" and one for the root. */
static void aml_name(struct aml *a, const char *seg)
{
	aml_byte(a, AML_NAME);
	aml_bytes(a, seg, strlen(seg));
}

static void aml_string(struct aml *a, const char *s)
{
	aml_byte(a, AML_STRING);
	aml_bytes(a, s, strlen(s) + 1);
}

/*
 * One virtio-mmio device: "LNRO0005" (the id Linux's virtio_mmio driver
 * matches), its window and its edge-triggered, active-high interrupt, DMA
 * cache-coherent.
 *   Device (Vnnn) { Name (_HID, "LNRO0005") Name (_UID, n) Name (_CCA, One)
 *     Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite, gpa, len)
 *       Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi } }) }
 */
static void aml_virtio(struct aml *a, unsigned int i, const struct linux_virtio *v)
{
	static const char hex[] = "0123456789ABCDEF";
	char seg[5] = { 'V', hex[(i >> 8) & 15], hex[(i >> 4) & 15], hex[i & 15], 0 };
	uint8_t crs[23];
	uint32_t base = (uint32_t)v->gpa, len = (uint32_t)v->len, gsi = v->gsi;
	uint8_t body[128];
	struct aml b = { .p = body, .cap = sizeof(body) };

	/* Memory32Fixed: large item 0x86, 9 bytes: read-write, base, length. */
	crs[0] = 0x86;
	crs[1] = 9;
	crs[2] = 0;
	crs[3] = 1;
	memcpy(&crs[4], &base, 4);
	memcpy(&crs[8], &len, 4);
	/* Extended Interrupt: large item 0x89, 6 bytes: consumer | edge, one interrupt. */
	crs[12] = 0x89;
	crs[13] = 6;
	crs[14] = 0;
	crs[15] = 0x03;
	crs[16] = 1;
	memcpy(&crs[17], &gsi, 4);
	/* End tag, checksum 0 (none). */
	crs[21] = 0x79;
	crs[22] = 0;

	aml_bytes(&b, seg, 4);
	aml_name(&b, "_HID");
	aml_string(&b, "LNRO0005");
	aml_name(&b, "_UID");
	aml_integer(&b, i);
	aml_name(&b, "_CCA");
	aml_integer(&b, 1);
	aml_name(&b, "_CRS");
	aml_byte(&b, AML_BUFFER);
	aml_pkglen(&b, 2 + sizeof(crs));
	aml_integer(&b, sizeof(crs));
	aml_bytes(&b, crs, sizeof(crs));

	aml_byte(a, AML_EXT);
	aml_byte(a, AML_DEVICE);
	aml_pkglen(a, b.len);
	aml_bytes(a, body, b.len);
}

/*
 * The DSDT's definition block: Scope (\_SB) with the virtio devices, and
 * Name (\_S5, Package () { LAYOUT_LINUX_S5_TYP, 0, 0, 0 }), the sleep type
 * Linux writes to PM1a's control register to power off.
 */
static size_t build_dsdt_aml(const struct linux_platform *p, uint8_t *out, size_t cap)
{
	uint8_t sb[LINUX_MAX_VIRTIO * 96];
	struct aml s = { .p = sb, .cap = sizeof(sb) };
	struct aml a = { .p = out, .cap = cap };

	for (unsigned int i = 0; i < p->nr_virtio; i++)
		aml_virtio(&s, i, &p->virtio[i]);
	aml_byte(&a, AML_SCOPE);
	aml_pkglen(&a, 5 + s.len);
	aml_bytes(&a, "\\_SB_", 5);
	aml_bytes(&a, sb, s.len);

	aml_name(&a, "\\_S5_");
	aml_byte(&a, AML_PACKAGE);
	aml_pkglen(&a, 1 + 2 + 3);
	aml_byte(&a, 4);
	aml_integer(&a, LAYOUT_LINUX_S5_TYP);
	aml_integer(&a, 0);
	aml_integer(&a, 0);
	aml_integer(&a, 0);
	return a.len;
}

/*
 * The MADT at out: what the MP table says, for a kernel with ACPI, which
 * takes its CPUs and interrupt controllers from here and, without one,
 * drops the MP table too and runs on one CPU with the 8259 alone. No
 * interrupt source overrides: ISA IRQ n is GSI n, as KVM routes it.
 */
static size_t build_madt(const struct linux_platform *p, uint8_t *out)
{
	struct madt_header h = { .lapic = (uint32_t)LAYOUT_LAPIC, .flags = MADT_PCAT_COMPAT };
	struct madt_ioapic io = { .type = 1, .length = sizeof(io), .id = (uint8_t)p->ncpus,
				  .address = (uint32_t)LAYOUT_IOAPIC };
	struct madt_lapic_nmi nmi = { .type = 4, .length = sizeof(nmi), .uid = 0xff, .lint = 1 };
	size_t len = sizeof(h);

	for (unsigned int i = 0; i < p->ncpus; i++) {
		struct madt_lapic l = { .type = 0, .length = sizeof(l), .uid = (uint8_t)i,
					.apic_id = (uint8_t)i, .flags = MADT_LAPIC_ENABLED };

		memcpy(out + len, &l, sizeof(l));
		len += sizeof(l);
	}
	memcpy(out + len, &io, sizeof(io));
	len += sizeof(io);
	memcpy(out + len, &nmi, sizeof(nmi));
	len += sizeof(nmi);
	acpi_header(&h.h, "APIC", (uint32_t)len, 4);
	memcpy(out, &h, sizeof(h));
	out[offsetof(struct acpi_header, checksum)] = checksum(out, len);
	return len;
}

/* 16- and 64-byte alignment inside the ACPI area. */
static size_t align(size_t v, size_t a)
{
	return (v + a - 1) & ~(a - 1);
}

/* The ACPI tables' worst case (the DSDT's devices at most 96 bytes each) fits their area. */
static_assert(48 + 64 + 288 + MADT_BYTES(ABI_MAX_CPUS) + 16 + 64 + 63 + 36 + 8 +
	      LINUX_MAX_VIRTIO * 96 + 16 <= LAYOUT_LINUX_ACPI_END - LAYOUT_LINUX_ACPI, "ACPI room");

static gpa_t build_acpi(const struct linux_platform *p, uint8_t *acpi)
{
	size_t cap = LAYOUT_LINUX_ACPI_END - LAYOUT_LINUX_ACPI;
	size_t rsdp_at = 0;
	size_t xsdt_at = align(rsdp_at + sizeof(struct acpi_rsdp), 16);
	size_t fadt_at = align(xsdt_at + sizeof(struct acpi_header) + 2 * 8, 16);
	size_t madt_at = align(fadt_at + sizeof(struct acpi_fadt), 16);
	size_t facs_at = align(madt_at + MADT_BYTES(p->ncpus), 64);
	size_t dsdt_at = align(facs_at + sizeof(struct acpi_facs), 16);
	struct acpi_rsdp rsdp = { .signature = "RSD PTR ", .revision = 2,
				  .length = sizeof(rsdp), .xsdt = LAYOUT_LINUX_ACPI + xsdt_at };
	struct acpi_header xsdt;
	uint64_t xsdt_entries[2] = { LAYOUT_LINUX_ACPI + fadt_at, LAYOUT_LINUX_ACPI + madt_at };
	struct acpi_fadt fadt;
	struct acpi_facs facs = { .signature = "FACS", .length = sizeof(facs), .version = 2 };
	struct acpi_header dsdt;
	size_t aml_len;

	/* The DSDT's code first: its length goes in its header. */
	assert(dsdt_at + sizeof(dsdt) <= cap);
	aml_len = build_dsdt_aml(p, acpi + dsdt_at + sizeof(dsdt), cap - dsdt_at - sizeof(dsdt));
	memset(&dsdt, 0, sizeof(dsdt));
	acpi_header(&dsdt, "DSDT", (uint32_t)(sizeof(dsdt) + aml_len), 2);
	memcpy(acpi + dsdt_at, &dsdt, sizeof(dsdt));
	acpi[dsdt_at + offsetof(struct acpi_header, checksum)] =
		checksum(acpi + dsdt_at, sizeof(dsdt) + aml_len);

	memcpy(acpi + facs_at, &facs, sizeof(facs));
	build_madt(p, acpi + madt_at);

	memset(&fadt, 0, sizeof(fadt));
	acpi_header(&fadt.h, "FACP", sizeof(fadt), 6);
	fadt.facs = (uint32_t)(LAYOUT_LINUX_ACPI + facs_at);
	fadt.x_facs = fadt.facs;
	fadt.dsdt = (uint32_t)(LAYOUT_LINUX_ACPI + dsdt_at);
	fadt.x_dsdt = fadt.dsdt;
	fadt.sci_int = LAYOUT_LINUX_SCI_GSI;
	fadt.pm1a_evt_blk = LAYOUT_LINUX_PM1_EVT;
	fadt.pm1_evt_len = 4;
	fadt.x_pm1a_evt_blk = io_gas(LAYOUT_LINUX_PM1_EVT, 4);
	fadt.pm1a_cnt_blk = LAYOUT_LINUX_PM1_CNT;
	fadt.pm1_cnt_len = 2;
	fadt.x_pm1a_cnt_blk = io_gas(LAYOUT_LINUX_PM1_CNT, 2);
	fadt.pm_tmr_blk = LAYOUT_LINUX_PM_TMR;
	fadt.pm_tmr_len = 4;
	fadt.x_pm_tmr_blk = io_gas(LAYOUT_LINUX_PM_TMR, 4);
	/* No C2 or C3 states (latencies past the limits mean "not supported"). */
	fadt.p_lvl2_lat = 101;
	fadt.p_lvl3_lat = 1001;
	fadt.iapc_boot_arch = ACPI_BOOT_NO_VGA | ACPI_BOOT_NO_MSI | ACPI_BOOT_NO_CMOS_RTC;
	fadt.flags = ACPI_FADT_WBINVD | ACPI_FADT_PWR_BUTTON | ACPI_FADT_SLP_BUTTON |
		     ACPI_FADT_TMR_VAL_EXT;
	memcpy(acpi + fadt_at, &fadt, sizeof(fadt));
	acpi[fadt_at + offsetof(struct acpi_header, checksum)] = checksum(acpi + fadt_at,
									 sizeof(fadt));

	memset(&xsdt, 0, sizeof(xsdt));
	acpi_header(&xsdt, "XSDT", sizeof(xsdt) + sizeof(xsdt_entries), 1);
	memcpy(acpi + xsdt_at, &xsdt, sizeof(xsdt));
	memcpy(acpi + xsdt_at + sizeof(xsdt), xsdt_entries, sizeof(xsdt_entries));
	acpi[xsdt_at + offsetof(struct acpi_header, checksum)] =
		checksum(acpi + xsdt_at, sizeof(xsdt) + sizeof(xsdt_entries));

	memcpy(rsdp.oem_id, ACPI_OEM_ID, 6);
	rsdp.checksum = checksum(&rsdp, 20);
	rsdp.ext_checksum = checksum(&rsdp, sizeof(rsdp));
	memcpy(acpi + rsdp_at, &rsdp, sizeof(rsdp));
	return LAYOUT_LINUX_ACPI + rsdp_at;
}

gpa_t linux_tables_build(const struct linux_platform *p, uint8_t *buf)
{
	assert(p->ncpus >= 1 && p->ncpus <= ABI_MAX_CPUS && p->nr_virtio <= LINUX_MAX_VIRTIO);
	memset(buf, 0, LINUX_TABLES_BYTES);
	build_mp(p, buf + (LAYOUT_LINUX_MPTABLE - LAYOUT_LINUX_TABLES),
		 buf + (LAYOUT_LINUX_MPFP - LAYOUT_LINUX_TABLES));
	return build_acpi(p, buf + (LAYOUT_LINUX_ACPI - LAYOUT_LINUX_TABLES));
}
