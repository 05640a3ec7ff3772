/* SPDX-License-Identifier: MIT */
/*
 * Writes the seed corpora of tests/fuzz/corpus/<target>/: a few small,
 * valid inputs per target (and a few refused ones), in each target's input
 * format. Built from kvmem's own writers where the format has checks only
 * they compute (stream records, device state), so a seed is what a real
 * peer or driver sends. The committed corpora are its output:
 *
 *   build-fuzz/tests/fuzz/make_corpus tests/fuzz/corpus
 */
#include <elf.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "balloon/balloon.h"
#include "core/virtio/virtio_mmio.h"
#include "core/virtio/virtq.h"
#include "fake_elf.h"
#include "fake_virtq.h"
#include "guest/abi.h"
#include "mem/gm.h"
#include "migrate/migrate.h"
#include "migrate/snapfile.h"
#include "migrate/stream.h"

/* --- a growing byte buffer --- */

struct buf {
	uint8_t b[64 * 1024];
	size_t n;
};

__attribute__((noreturn)) static void die(const char *what)
{
	fprintf(stderr, "make_corpus: %s\n", what);
	exit(1);
}

static void put(struct buf *b, const void *p, size_t n)
{
	if (n > sizeof(b->b) - b->n)
		die("seed too large");
	memcpy(b->b + b->n, p, n);
	b->n += n;
}

static void u8(struct buf *b, uint8_t v)
{
	put(b, &v, 1);
}

static void u16(struct buf *b, uint16_t v)
{
	put(b, &v, 2);
}

static void u32(struct buf *b, uint32_t v)
{
	put(b, &v, 4);
}

static void u64(struct buf *b, uint64_t v)
{
	put(b, &v, 8);
}

static void str(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

static char out_dir[512];

static void save(const char *target, const char *name, const void *p, size_t n)
{
	char path[1024];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", out_dir, target);
	if (mkdir(path, 0755) && errno != EEXIST)
		die(path);
	snprintf(path, sizeof(path), "%s/%s/%s", out_dir, target, name);
	f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f))
		die(path);
}

static void save_buf(const char *target, const char *name, const struct buf *b)
{
	save(target, name, b->b, b->n);
}

static void save_str(const char *target, const char *name, const char *s)
{
	save(target, name, s, strlen(s));
}

/* --- fuzz_size: a selector byte (limits), then the text --- */

static void size_seeds(void)
{
#define SEED(name, text) { name, text, sizeof(text) - 1 }
	static const struct {
		const char *name, *text;
		size_t len;
	} seeds[] = {
		SEED("mib", "\x00" "512M"),	SEED("gib", "\x01" "2GiB"),
		SEED("json", "\x02\"1536M\""),	SEED("frac", "\x00" "1.5G"),
		SEED("seconds", "\x08" "0.25"), SEED("max", "\x00" "9223372036854775807B"),
		SEED("negative", "\x03-1"),	SEED("real", "\x21" "4096.0"),
	};
#undef SEED

	for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++)
		save("fuzz_size", seeds[i].name, seeds[i].text, seeds[i].len);
}

/* --- fuzz_config: config files --- */

static void config_seeds(void)
{
	save_str("fuzz_config", "readme",
		 "{\n  \"budget\": \"2G\",\n  \"socket\": \"/tmp/kvmem.sock\",\n  \"dedup\": \"on\",\n"
		 "  \"accel\": \"auto\",\n  \"policy_interval\": 1.0,\n  \"vms\": [\n"
		 "    { \"name\": \"a\", \"mem\": \"1G\", \"min\": \"256M\", \"shares\": 1000, "
		 "\"cpus\": 1,\n      \"append\": \"kvmem.wl=size=512,dup=50,zero=25,then=sleep\" },\n"
		 "    { \"name\": \"b\", \"mem\": \"1G\", \"min\": \"256M\", \"shares\": 2000,\n"
		 "      \"append\": \"kvmem.wl=size=512,dup=50,zero=25,rate=8,verify=5\",\n"
		 "      \"console_log\": \"b.log\" }\n  ]\n}\n");
	save_str("fuzz_config", "every_field",
		 "{\"budget\":\"8G\",\"hard_limit\":\"9G\",\"console_prefix\":false,\"dedup\":\"ksm\","
		 "\"accel\":\"thread\",\"policy_interval\":0.5,\"balloon_stats_interval\":0,"
		 "\"access\":\"sampling\",\"swap\":{\"path\":\"/var/lib/kvmem\",\"size\":\"4G\","
		 "\"pool\":\"256M\",\"io\":\"threads\",\"victims\":\"random\",\"store\":\"kernel\","
		 "\"allow_tmpfs\":true},\"incoming\":\"tcp:0.0.0.0:7000\",\"migration_secret\":"
		 "\"/etc/kvmem/secret\",\"fingerprint_key\":\"/etc/kvmem/key\",\"corpus_dir\":"
		 "\"/var/lib/kvmem/corpora\",\"vms\":[{\"name\":\"c\",\"mem\":\"64M\",\"min\":\"0B\","
		 "\"cpus\":4,\"guest\":\"/dev/null\",\"accel\":\"kvm\",\"swap_max\":\"512M\","
		 "\"corpus\":\"libs.corpus\",\"console_log\":\"/dev/null\"}]}\n");
	save_str("fuzz_config", "incoming_only", "{\"incoming\":\"unix:/run/kvmem-in.sock\",\"vms\":[]}");
	save_str("fuzz_config", "bare_number", "{\"vms\":[{\"name\":\"a\",\"mem\":512}]}");
	/* A group by name (looked up) and by number (not). */
	save_str("fuzz_config", "socket_group",
		 "{\"socket_group\":\"root\",\"vms\":[{\"name\":\"a\",\"mem\":\"64M\"}]}");
	save_str("fuzz_config", "socket_gid", "{\"socket_group\":64123,\"vms\":[]}");
	save_str("fuzz_config", "overbooked",
		 "{\"budget\":\"1G\",\"vms\":[{\"name\":\"a\",\"mem\":\"1G\",\"min\":\"768M\"},"
		 "{\"name\":\"a\",\"mem\":\"1G\",\"min\":\"768M\"}]}");
	/* A Linux kernel instead of a guest ELF (no guest then): found by the long run. */
	save_str("fuzz_config", "linux_kernel",
		 "{\"vms\":[{\"name\":\"a\",\"mem\":\"1G\",\"kernel\":\"bzImage\","
		 "\"initrd\":\"initrd.img\",\"cmdline\":\"console=ttyS0\"}]}");
}

/* --- fuzz_control: what a client sends --- */

static void control_seeds(void)
{
	save_str("fuzz_control", "host_verbs",
		 "{\"verb\":\"verbs\",\"id\":1}\n{\"verb\":\"list\",\"id\":\"two\"}\n"
		 "{\"verb\":\"stats\"}\n{\"verb\":\"reclaim\"}\n");
	save_str("fuzz_control", "vm_verbs",
		 "{\"verb\":\"pause\",\"vm\":\"a\"}\n{\"verb\":\"resume\",\"vm\":\"a\"}\r\n\n \t\n"
		 "{\"verb\":\"stop\",\"vm\":\"a\"}\n{\"verb\":\"remove\",\"vm\":\"a\"}\n"
		 "{\"verb\":\"memcheck\",\"vm\":\"a\"}\n{\"verb\":\"dirty_rate\",\"vm\":\"a\",\"ms\":200}\n");
	save_str("fuzz_control", "sizes",
		 "{\"verb\":\"budget\",\"bytes\":\"512M\"}\n{\"verb\":\"budget\",\"bytes\":1073741824}\n"
		 "{\"verb\":\"swap\",\"vm\":\"a\",\"to\":\"1G\",\"max\":null}\n"
		 "{\"verb\":\"swap\",\"vm\":\"a\",\"max\":\"0B\"}\n"
		 "{\"verb\":\"balloon\",\"vm\":\"a\",\"target\":\"256M\"}\n"
		 "{\"verb\":\"balloon\",\"vm\":\"a\",\"auto\":true}\n");
	save_str("fuzz_control", "modules",
		 "{\"verb\":\"start\",\"vm\":{\"name\":\"n\",\"mem\":\"64M\",\"cpus\":1}}\n"
		 "{\"verb\":\"migrate\",\"vm\":\"a\",\"to\":\"unix:/nonexistent\",\"downtime_ms\":300}\n"
		 "{\"verb\":\"migrate_set\",\"vm\":\"a\",\"bandwidth_mib_s\":100}\n"
		 "{\"verb\":\"migrate_cancel\",\"vm\":\"a\"}\n"
		 "{\"verb\":\"save\",\"vm\":\"a\",\"to\":\"/nonexistent/a.snap\",\"stop\":true}\n"
		 "{\"verb\":\"rollback\",\"vm\":\"a\",\"file\":\"/nonexistent\"}\n"
		 "{\"verb\":\"clone\",\"file\":\"/nonexistent\",\"count\":2}\n"
		 "{\"verb\":\"fingerprint\",\"vm\":\"a\",\"k\":64}\n{\"verb\":\"metrics\"}\n");
	save_str("fuzz_control", "malformed",
		 "nonsense\n[1,2]\n{\"verb\":3}\n{\"id\":[1],\"verb\":\"nosuch\"}\n"
		 "{\"verb\":\"pause\"}\n{\"verb\":\"budget\",\"bytes\":-1}\n{\"verb\":\"list\"");
}

/* --- fuzz_elf: minimal kvmem guest images --- */

#define IMG_SIZE 0x400
#define IMG_DYN 0x100
#define IMG_RELA 0x180
#define IMG_DATA 0x300

/* One RWX PT_LOAD at ABI_IMAGE_BASE (bss after the file part), maybe a PT_DYNAMIC with RELA. */
static void elf_seed(const char *name, uint16_t type, bool dynamic)
{
	uint8_t b[IMG_SIZE] = { 0 };
	Elf64_Ehdr *eh = (Elf64_Ehdr *)b;
	Elf64_Phdr *ph = (Elf64_Phdr *)(b + sizeof(*eh));
	Elf64_Dyn *dyn = (Elf64_Dyn *)(b + IMG_DYN);
	Elf64_Rela *rela = (Elf64_Rela *)(b + IMG_RELA);

	fake_elf_header(eh, type, ABI_IMAGE_BASE + IMG_DATA, dynamic ? 2 : 1);
	ph[0] = (Elf64_Phdr){ .p_type = PT_LOAD, .p_flags = PF_R | PF_W | PF_X,
			      .p_vaddr = ABI_IMAGE_BASE, .p_paddr = ABI_IMAGE_BASE,
			      .p_filesz = IMG_SIZE, .p_memsz = 0x2000, .p_align = 4096 };
	if (dynamic) {
		ph[1] = (Elf64_Phdr){ .p_type = PT_DYNAMIC, .p_flags = PF_R | PF_W,
				      .p_offset = IMG_DYN, .p_vaddr = ABI_IMAGE_BASE + IMG_DYN,
				      .p_paddr = ABI_IMAGE_BASE + IMG_DYN,
				      .p_filesz = 5 * sizeof(*dyn), .p_memsz = 5 * sizeof(*dyn) };
		dyn[0] = (Elf64_Dyn){ .d_tag = DT_RELA, .d_un.d_ptr = ABI_IMAGE_BASE + IMG_RELA };
		dyn[1] = (Elf64_Dyn){ .d_tag = DT_RELASZ, .d_un.d_val = 2 * sizeof(*rela) };
		dyn[2] = (Elf64_Dyn){ .d_tag = DT_RELAENT, .d_un.d_val = sizeof(*rela) };
		dyn[3] = (Elf64_Dyn){ .d_tag = DT_FLAGS_1, .d_un.d_val = DF_1_PIE };
		dyn[4] = (Elf64_Dyn){ .d_tag = DT_NULL };
		for (unsigned int i = 0; i < 2; i++)
			rela[i] = (Elf64_Rela){ .r_offset = ABI_IMAGE_BASE + IMG_DATA + 8 * i,
						.r_info = ELF64_R_INFO(0, R_X86_64_RELATIVE),
						.r_addend = (Elf64_Sxword)(ABI_IMAGE_BASE + 0x10 * i) };
	}
	b[IMG_DATA + 0x40] = 0xf4; /* hlt */
	save("fuzz_elf", name, b, sizeof(b));
}

static void elf_seeds(void)
{
	elf_seed("static_pie", ET_DYN, true);
	elf_seed("static_pie_exec", ET_EXEC, true);
	elf_seed("static_exec", ET_EXEC, false);
}

/* --- fuzz_virtq: queue header, ring window image, operations --- */

#define VQ_DESC 0x000
#define VQ_AVAIL 0x100
#define VQ_USED 0x200
#define VQ_TABLE 0x400
#define VQ_BUFS 0x30000ULL	/* buffers live outside the window, in RAM */

static void desc_at(uint8_t *w, unsigned int off, uint64_t addr, uint32_t len, uint16_t flags,
		    uint16_t next)
{
	memcpy(w + off, &addr, 8);
	memcpy(w + off + 8, &len, 4);
	memcpy(w + off + 12, &flags, 2);
	memcpy(w + off + 14, &next, 2);
}

static void virtq_seed(const char *name, uint8_t flags, const uint8_t *win, uint16_t win_len,
		       const uint8_t *ops, size_t nops)
{
	struct buf b = { .n = 0 };

	u16(&b, 16);
	u8(&b, flags);
	u16(&b, VQ_DESC);
	u16(&b, VQ_AVAIL);
	u16(&b, VQ_USED);
	u16(&b, win_len);
	put(&b, win, win_len);
	put(&b, ops, nops);
	save_buf("fuzz_virtq", name, &b);
}

static void virtq_seeds(void)
{
	uint8_t w[0x500] = { 0 };
	/* pop, push (the head taken), interrupt?, pop, push, has_avail, pop (nothing left) */
	static const uint8_t ops[] = { 0, 1, 0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0, 0, 3, 0 };
	/* ... and the driver moves avail->idx ahead by 100 between pops */
	static const uint8_t hostile[] = { 0, 4, (VQ_AVAIL + 2) & 0xff, (VQ_AVAIL + 2) >> 8, 100, 0, 0, 0 };
	uint16_t v;

	/* Two chains: readable 64 + writable 128 bytes, then one writable buffer. */
	desc_at(w, VQ_DESC + 0, VQ_BUFS, 64, VIRTQ_DESC_F_NEXT, 1);
	desc_at(w, VQ_DESC + 16, VQ_BUFS + 0x1000, 128, VIRTQ_DESC_F_WRITE, 0);
	desc_at(w, VQ_DESC + 32, VQ_BUFS + 0x2000, 256, VIRTQ_DESC_F_WRITE, 0);
	v = 2;
	memcpy(w + VQ_AVAIL + 2, &v, 2);
	v = 2;
	memcpy(w + VQ_AVAIL + 6, &v, 2);
	virtq_seed("two_chains", 0, w, VQ_USED + 4 + 8 * 16 + 2, ops, sizeof(ops));
	virtq_seed("avail_runs_ahead", 0, w, VQ_USED + 4 + 8 * 16 + 2, hostile, sizeof(hostile));
	/* An indirect table of three (readable, writable, writable), with EVENT_IDX. */
	desc_at(w, VQ_DESC + 0, 0x10000 + VQ_TABLE, 48, VIRTQ_DESC_F_INDIRECT, 0);
	desc_at(w, VQ_TABLE + 0, VQ_BUFS, 32, VIRTQ_DESC_F_NEXT, 1);
	desc_at(w, VQ_TABLE + 16, VQ_BUFS + 0x100, 32, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
	desc_at(w, VQ_TABLE + 32, VQ_BUFS + 0x200, 32, VIRTQ_DESC_F_WRITE, 0);
	virtq_seed("indirect_event_idx", 0x3, w, sizeof(w), ops, sizeof(ops));
	/* A descriptor that names itself as next: a loop. */
	desc_at(w, VQ_DESC + 0, VQ_BUFS, 8, VIRTQ_DESC_F_NEXT, 0);
	virtq_seed("loop", 0, w, VQ_USED + 4 + 8 * 16 + 2, ops, 2);
}

/* --- fuzz_virtio_mmio and fuzz_balloon: a driver's register accesses --- */

#define MMIO_RING 0x10000ULL

static void reg_write(struct buf *b, uint16_t off, uint64_t v)
{
	u8(b, 0);	/* a 4-byte write */
	u16(b, off);
	u64(b, v);
}

static void reg_read(struct buf *b, uint16_t off)
{
	u8(b, 1);
	u16(b, off);
}

static void ring_mem(struct buf *b, uint16_t off, const void *p, uint8_t n)
{
	u8(b, 2);
	u16(b, off);
	u8(b, n);
	put(b, p, n);
}

/* Bring-up to DRIVER_OK with `features`, queues 0 and 1 of 16 at MMIO_RING + q * 0x1000. */
static void mmio_bring_up(struct buf *b, uint64_t features)
{
	reg_write(b, VIRTIO_MMIO_STATUS, 0);
	reg_write(b, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	reg_write(b, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	reg_write(b, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	reg_read(b, VIRTIO_MMIO_DEVICE_FEATURES);
	reg_write(b, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	reg_write(b, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)features);
	reg_write(b, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	reg_write(b, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(features >> 32));
	reg_write(b, VIRTIO_MMIO_STATUS, 0xb);
	for (uint16_t q = 0; q < 2; q++) {
		uint64_t base = MMIO_RING + q * 0x1000ULL;

		reg_write(b, VIRTIO_MMIO_QUEUE_SEL, q);
		reg_read(b, VIRTIO_MMIO_QUEUE_NUM_MAX);
		reg_write(b, VIRTIO_MMIO_QUEUE_NUM, 16);
		reg_write(b, VIRTIO_MMIO_QUEUE_DESC_LOW, base);
		reg_write(b, VIRTIO_MMIO_QUEUE_DRIVER_LOW, base + 0x100);
		reg_write(b, VIRTIO_MMIO_QUEUE_DEVICE_LOW, base + 0x200);
		reg_write(b, VIRTIO_MMIO_QUEUE_READY, 1);
	}
	reg_write(b, VIRTIO_MMIO_STATUS, 0xf);
}

/* A one-buffer chain on queue q (window offsets), published, notified, polled. */
static void mmio_chain(struct buf *b, unsigned int q, uint16_t flags)
{
	uint8_t d[16] = { 0 };
	uint64_t addr = 0x30000;
	uint32_t len = 64;
	uint16_t idx[2] = { 0, 1 };	/* ring[0] = 0, then avail->idx = 1 */

	memcpy(d, &addr, 8);
	memcpy(d + 8, &len, 4);
	memcpy(d + 12, &flags, 2);
	ring_mem(b, q * 0x1000, d, sizeof(d));
	ring_mem(b, q * 0x1000 + 0x104, idx, 2);
	ring_mem(b, q * 0x1000 + 0x102, idx + 1, 2);
	reg_write(b, VIRTIO_MMIO_QUEUE_NOTIFY, q);
	u8(b, 3);	/* poll */
}

/*
 * A balloon's transport and device state, as a migration sends it: fresh,
 * or (running) with every feature and queue up at fuzz_balloon's rings.
 */
static json_t *balloon_state(bool running)
{
	const uint64_t all = (1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_F_EVENT_IDX) | 0x27;
	struct balloon *bl = NULL;
	struct fake_vq fq;
	struct gm *gm;
	json_t *st;

	if (mem_create_anon(4ULL << 20, &gm) || balloon_create_on_gm(gm, NULL, NULL, &bl))
		die("a balloon");
	if (running) {
		if (!fake_virtio_negotiate(balloon_virtio_dev(bl), all))
			die("balloon features");
		for (unsigned int q = 0; q < 4; q++) {
			fake_vq_init(&fq, gm, 16, 0x10000 + 0x2000 * q);
			fake_virtio_setup_queue(balloon_virtio_dev(bl), q, &fq);
		}
		fake_virtio_driver_ok(balloon_virtio_dev(bl));
		if (balloon_set_target(bl, 3ULL << 20))
			die("balloon target");
	}
	st = virtio_dev_save(balloon_virtio_dev(bl));
	balloon_destroy(bl);
	mem_destroy(gm);
	return st;
}

static void mmio_seeds(void)
{
	const uint64_t f = (1ULL << VIRTIO_F_VERSION_1) | (1ULL << 3) |
			   (1ULL << VIRTIO_F_EVENT_IDX);
	const char *state;
	struct buf b = { .n = 0 };
	char *text;
	json_t *st;

	mmio_bring_up(&b, f);
	mmio_chain(&b, 0, 0);
	mmio_chain(&b, 1, VIRTQ_DESC_F_WRITE);
	reg_read(&b, VIRTIO_MMIO_INTERRUPT_STATUS);
	reg_write(&b, VIRTIO_MMIO_INTERRUPT_ACK, 1);
	u8(&b, 0 | 1 << 3);	/* a 1-byte config write */
	u16(&b, VIRTIO_MMIO_CONFIG + 2);
	u64(&b, 0x5a);
	reg_read(&b, VIRTIO_MMIO_CONFIG);
	u8(&b, 4);		/* config changed */
	u8(&b, 5);		/* save and load back */
	u8(&b, 7);		/* stats */
	save_buf("fuzz_virtio_mmio", "bring_up", &b);
	/* The same, then a driver that breaks the ring and resets. */
	b.n = 0;
	mmio_bring_up(&b, f);
	ring_mem(&b, 0x102, (uint16_t[]){ 300 }, 2);
	reg_write(&b, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	u8(&b, 3);
	reg_read(&b, VIRTIO_MMIO_STATUS);
	u8(&b, 5);
	mmio_bring_up(&b, f);
	save_buf("fuzz_virtio_mmio", "needs_reset", &b);
	/* A peer's transport state: a balloon's with its device part dropped. */
	b.n = 0;
	/* The sink has two queues, no device state, and offers feature 3, not the balloon's. */
	st = balloon_state(true);
	json_object_del(st, "device");
	json_array_remove(json_object_get(st, "queues"), 3);
	json_array_remove(json_object_get(st, "queues"), 2);
	json_object_set_new(st, "features", json_integer((json_int_t)(1ULL << VIRTIO_F_VERSION_1)));
	json_object_set_new(st, "driver_features",
			    json_integer((json_int_t)(1ULL << VIRTIO_F_VERSION_1)));
	text = json_dumps(st, JSON_COMPACT);
	state = text;
	u8(&b, 6);
	u16(&b, (uint16_t)strlen(state));
	str(&b, state);
	u8(&b, 5);
	save_buf("fuzz_virtio_mmio", "foreign_state", &b);
	free(text);
	json_decref(st);
}

/* fuzz_balloon's chain: u8 flags (1 writable, 2 raw gpa, 4 u32 length), offset, length. */
static void balloon_chain(struct buf *b, unsigned int q, uint8_t fl, uint16_t off, uint16_t len)
{
	u8(b, (uint8_t)(0 | q << 5));
	u8(b, 0);	/* one buffer */
	u8(b, fl);
	u16(b, off);
	u16(b, len);
}

static void balloon_notify(struct buf *b, unsigned int q, bool timer)
{
	u8(b, (uint8_t)(4 | (timer ? 0x10 : 0) | q << 5));
}

static void balloon_seeds(void)
{
	struct buf b = { .n = 0 };
	uint32_t pfns[16];
	uint8_t stats[3 * BALLOON_STAT_SIZE];
	char *text;
	json_t *st;

	for (unsigned int i = 0; i < 16; i++)
		pfns[i] = 0x300 + (i < 8 ? i : 20 - i);	/* two runs and a duplicate */
	/* Features: MUST_TELL_HOST, STATS_VQ, DEFLATE_ON_OOM, PAGE_REPORTING; no indirect. */
	u8(&b, 0x27);
	u8(&b, 0);
	u8(&b, 1);	/* the PFNs at DATA */
	u16(&b, 0);
	u8(&b, sizeof(pfns));
	put(&b, pfns, sizeof(pfns));
	balloon_chain(&b, 0, 0, 0, sizeof(pfns));
	balloon_notify(&b, 0, false);
	balloon_chain(&b, 1, 0, 0, 32);
	balloon_notify(&b, 1, false);
	u8(&b, 9);	/* stats */
	save_buf("fuzz_balloon", "inflate_deflate", &b);
	/* Reporting, statistics, a timer tick, the target, config, migration. */
	b.n = 0;
	u8(&b, 0x27);
	u8(&b, 1);
	balloon_chain(&b, 3, 1, 0x1000, 0x8000);
	balloon_notify(&b, 3, false);
	for (unsigned int i = 0; i < 3; i++) {
		uint16_t tag = (uint16_t)(i * 4);
		uint64_t v = 1000ULL * (i + 1);

		memcpy(stats + i * BALLOON_STAT_SIZE, &tag, 2);
		memcpy(stats + i * BALLOON_STAT_SIZE + 2, &v, 8);
	}
	u8(&b, 1);
	u16(&b, 0x200);
	u8(&b, sizeof(stats));
	put(&b, stats, sizeof(stats));
	balloon_chain(&b, 2, 0, 0x200, sizeof(stats));
	balloon_notify(&b, 2, true);
	u8(&b, 5);	/* target */
	u64(&b, 3ULL << 20);
	u8(&b, 6 | 0x10 | 2 << 5);	/* config: actual = 0x100 (a 4-byte write at 4) */
	u8(&b, 4);
	u32(&b, 0x100);
	u8(&b, 8);	/* save and load back */
	balloon_notify(&b, 2, true);
	u8(&b, 9);
	save_buf("fuzz_balloon", "report_stats", &b);
	/* Hostile: a writable inflate buffer; then reset, a loop in an indirect table. */
	b.n = 0;
	u8(&b, 0x03);
	u8(&b, 1);
	balloon_chain(&b, 0, 1, 0, 64);
	balloon_notify(&b, 0, false);
	u8(&b, 7);	/* reset and bring-up again */
	u8(&b, 0 | 0x10);	/* indirect chain of two on inflateq */
	u8(&b, 1);
	u8(&b, 0);
	u16(&b, 0);
	u16(&b, 8);
	u8(&b, 0);
	u16(&b, 8);
	u16(&b, 6);
	balloon_notify(&b, 0, false);
	u8(&b, 9);
	save_buf("fuzz_balloon", "hostile", &b);
	/* A peer's state for the device, as a fresh balloon saves it. */
	b.n = 0;
	u8(&b, 0x23);
	u8(&b, 0);
	st = balloon_state(true);
	text = json_dumps(st, JSON_COMPACT);
	u8(&b, 8 | 0x10);
	u16(&b, (uint16_t)strlen(text));
	str(&b, text);
	u8(&b, 8);
	save_buf("fuzz_balloon", "foreign_state", &b);
	free(text);
	json_decref(st);
}

/* --- fuzz_stream: a migration, as compact records and as a raw stream --- */

static void rec_raw(struct buf *b, uint8_t type, const char *payload)
{
	u8(b, 0);
	u8(b, type);
	u16(b, (uint16_t)strlen(payload));
	str(b, payload);
}

static void rec_pages(struct buf *b, uint32_t gfn, uint8_t count, uint8_t kind)
{
	u8(b, 1);
	u32(b, gfn);
	u8(b, count - 1);
	u8(b, kind);
	for (uint8_t i = 0; i < count; i++) {
		switch (kind) {
		case MIG_PAGE_DATA:
			u8(b, 0xa0 + i);
			break;
		case MIG_PAGE_FRAME:
			u64(b, 7 + i);
			u8(b, 0x70);
			break;
		case MIG_PAGE_FRAME_REF:
			u64(b, 7);
			break;
		case MIG_PAGE_SCATTER:
			u32(b, 0x3f0 + i);
			u8(b, 0x5c);
			break;
		}
	}
}

static char *device_record(void)
{
	json_t *st = json_pack("{s:{s:s, s:s, s:s}, s:s, s:{s:o}}", "clock", "guest_tsc",
			       "123456789", "tsc_khz", "0", "vmm_ns", "1000", "machine", "",
			       "devices", "balloon", balloon_state(false));
	char *text = json_dumps(st, JSON_COMPACT);

	json_decref(st);
	return text;
}

static void stream_records(struct buf *b, unsigned int cpus)
{
	char vm[96], *dev = device_record();

	u8(b, 0);	/* mode: records, a live migration */
	snprintf(vm, sizeof(vm), "{\"name\":\"a\",\"mem\":\"4M\",\"cpus\":%u%s}", cpus,
		 cpus > 1 ? ",\"checksum\":true" : "");
	rec_raw(b, MIG_REC_VM, vm);
	u8(b, 3);	/* ROUND 1, pre-copy */
	u32(b, 1);
	u32(b, MIG_STAGE_PRECOPY);
	/* Pages inside the target's 4 MiB VM (frames 0 to 0x3ff). */
	rec_pages(b, 0x300, 2, MIG_PAGE_DATA);
	rec_pages(b, 0x380, 4, MIG_PAGE_ZERO);
	rec_pages(b, 0x3c0, 1, MIG_PAGE_FRAME);
	rec_pages(b, 0x3c1, 2, MIG_PAGE_FRAME_REF);
	rec_pages(b, 0, 2, MIG_PAGE_SCATTER);
	rec_pages(b, 0x3e0, 2, MIG_PAGE_BALLOONED);
	rec_pages(b, 0x300, 1, MIG_PAGE_ZERO);
	u8(b, 3);	/* ROUND 2, stop-and-copy */
	u32(b, 2);
	u32(b, MIG_STAGE_STOP_COPY);
	for (unsigned int i = 0; i < cpus; i++) {
		u8(b, 2);	/* VCPU i: rip in the image, rsp below it */
		u8(b, (uint8_t)i);
		u32(b, ABI_IMAGE_BASE + 0x40);
		u32(b, ABI_IMAGE_BASE - 0x100 * i);
		u8(b, 0);
	}
	rec_raw(b, MIG_REC_DEVICE, dev);
	u8(b, 3 | 4);	/* END */
	u64(b, 12);
	rec_raw(b, MIG_REC_COMMIT, "{}");
	free(dev);
}

/* The same migration as the bytes on the wire, written by stream.c itself. */
static void stream_raw(struct buf *b)
{
	int fd = memfd_create("make-corpus", MFD_CLOEXEC);
	uint8_t end[16] = { 0 }, round[8];
	struct mig_stream *s;
	char *dev = device_record();
	off_t len;

	if (fd < 0 || mig_stream_open(fd, true, 0, -1, &s))
		die("stream");
	mig_le32enc(round, 1);
	mig_le32enc(round + 4, MIG_STAGE_STOP_COPY);
	if (mig_put_buf(s, MIG_REC_VM, "{\"name\":\"a\",\"cpus\":1}", 21) ||
	    mig_put_buf(s, MIG_REC_ROUND, round, 8) ||
	    mig_put_pages(s, 0x380, 8, MIG_PAGE_ZERO, NULL, 0) ||
	    mig_put_buf(s, MIG_REC_DEVICE, dev, strlen(dev)) ||
	    mig_put_buf(s, MIG_REC_END, end, 16) || mig_put_buf(s, MIG_REC_COMMIT, "{}", 2))
		die("stream records");
	mig_stream_close(s);
	len = lseek(fd, 0, SEEK_CUR);
	u8(b, 1);	/* mode: raw */
	if (len <= 0 || (size_t)len > sizeof(b->b) - b->n || pread(fd, b->b + b->n, (size_t)len, 0) != len)
		die("stream bytes");
	b->n += (size_t)len;
	close(fd);
	free(dev);
}

/* A snapshot the restore takes whole: its pages in the file, its state as records. */
static void stream_snapshot(struct buf *b)
{
	char *dev = device_record();

	u8(b, 4);	/* mode: a snapshot, written by snapfile.c */
	rec_raw(b, MIG_REC_VM, "{\"name\":\"s\",\"mem\":\"4M\",\"cpus\":1}");
	u8(b, 1);	/* pages 0x300..0x303: data */
	u16(b, 0x300);
	u8(b, 3);
	u8(b, SNAP_PAGE_DATA);
	for (uint8_t i = 0; i < 4; i++)
		u8(b, 0x30 + i);
	u8(b, 1);	/* pages 0x3e0..0x3e1: the balloon's */
	u16(b, 0x3e0);
	u8(b, 1);
	u8(b, SNAP_PAGE_BALLOONED);
	u8(b, 2);	/* VCPU 0 */
	u8(b, 0);
	u32(b, ABI_IMAGE_BASE + 0x40);
	u32(b, ABI_IMAGE_BASE);
	u8(b, 0);
	rec_raw(b, MIG_REC_DEVICE, dev);
	u8(b, 3 | 4);	/* END */
	u64(b, 4);
	free(dev);
}

static void stream_seeds(void)
{
	struct buf b = { .n = 0 };

	memset(b.b, 0, sizeof(b.b));
	stream_records(&b, 1);
	save_buf("fuzz_stream", "migration", &b);
	b.n = 0;
	stream_records(&b, 2);
	save_buf("fuzz_stream", "migration_2cpus", &b);
	b.n = 0;
	stream_raw(&b);
	save_buf("fuzz_stream", "raw", &b);
	b.n = 0;
	u8(&b, 1);
	str(&b, "KVMEMMIG");
	u32(&b, 2);
	u32(&b, 0);
	save_buf("fuzz_stream", "raw_version", &b);
	b.n = 0;
	stream_snapshot(&b);
	save_buf("fuzz_stream", "snapshot", &b);
	b.n = 0;
	u8(&b, 5);	/* a snapshot file's first bytes, raw */
	str(&b, "KVMEMSNP");
	u32(&b, 1);
	u32(&b, 0);
	save_buf("fuzz_stream", "snapshot_raw", &b);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR (tests/fuzz/corpus)\n", argv[0]);
		return 2;
	}
	snprintf(out_dir, sizeof(out_dir), "%s", argv[1]);
	if (mkdir(out_dir, 0755) && errno != EEXIST)
		die(out_dir);
	size_seeds();
	config_seeds();
	control_seeds();
	elf_seeds();
	virtq_seeds();
	mmio_seeds();
	balloon_seeds();
	stream_seeds();
	return 0;
}
