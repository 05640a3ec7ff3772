/* SPDX-License-Identifier: MIT */
/*
 * The migration stream as a destination reads it from a source it does not
 * trust (migrate/stream.c and the receiving side of migrate/migrate.c:
 * mig_dest_start's loop over VM, ROUND, PAGES, VCPU, DEVICE, END and COMMIT
 * records, into a VM), and a snapshot file as a restore reads it
 * (migrate/snapfile.c's reader and migrate/snapshot.c's restore: header,
 * page table, pages, the state records). The destination is the real one
 * on a thread of its own, reading one end of a socketpair, with the
 * source writing the other end from a thread kept for the whole run; a
 * restore reads its file on a thread of its own.
 * The VM either reserves is a fresh thread-accelerator VM with a balloon
 * for the device state, never started (tests/unit/fake_dest.c).
 *
 * Input: u8 mode, then the rest. Bit 2 clear, a live stream: bit 0, the
 * rest is the stream byte for byte (preamble, headers and checks as they
 * come: the framing's own checks); else records for the writer to send
 * with valid framing (stream.c's own writer: checks and numbers right, so
 * the fuzzer gets past them to the decoders), each an opcode byte and its
 * operands (put_ops), and bit 1 gives the stream a snapshot's preamble.
 * Bit 2 set, a snapshot file: bit 0, the rest is the file; else
 * snapfile.c's writer makes one of the VM's size (bit 3: of a u16 count
 * of pages first, modulo twice the VM's) from the same operations, pages
 * going to the file's page section. Checked: the job ends DONE, or FAILED
 * with a reason (a file refused before any job, with a reason), and guest
 * memory outside RAM is never written (a write there faults).
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/accel/thread_state.h"
#include "core/vm.h"
#include "fake_dest.h"
#include "fuzz.h"
#include "migrate/migrate.h"
#include "migrate/snapfile.h"
#include "migrate/stream.h"

/* Room for the guest image at ABI_IMAGE_BASE (2 MiB); small, for a snapshot's table to hash. */
#define RAM (4ULL << 20)
#define MAX_CPUS 4
#define MAX_RUN 32		/* pages of one compact PAGES record */

static int null_fd;
static struct fz_file raw_snapshot;
static char snapshot_dir[64], snapshot_path[80];
static uint8_t page[MIG_PAGE_SIZE * (MAX_RUN + 1)];
static uint8_t unit[MAX_RUN * (8 + 32 + MIG_PAGE_SIZE)];

/*
 * The source: one thread for the whole run, handed each live input's
 * writer in turn (a thread started and ended per input cost as much as
 * the rest of a short input).
 */
static struct {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct writer *w;	/* the input's, until it is sent and the socket shut */
} source = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

static void *source_main(void *arg);

static void remove_snapshot_dir(void)
{
	unlink(snapshot_path);
	rmdir(snapshot_dir);
}

void fz_init(void)
{
	null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (null_fd < 0)
		fz_fail(__FILE__, __LINE__, "/dev/null");
	fz_file_init(&raw_snapshot, "fuzz-snapshot");
	/* Snapshots the writer makes: in memory where /dev/shm is (fsync is free there). */
	snprintf(snapshot_dir, sizeof(snapshot_dir), "%s/kvmem-fuzz-stream-XXXXXX",
		 access("/dev/shm", W_OK) ? "/tmp" : "/dev/shm");
	if (!mkdtemp(snapshot_dir))
		fz_fail(__FILE__, __LINE__, "mkdtemp");
	snprintf(snapshot_path, sizeof(snapshot_path), "%s/vm.snap", snapshot_dir);
	atexit(remove_snapshot_dir);
	if (pthread_create(&source.thread, NULL, source_main, NULL))
		fz_fail(__FILE__, __LINE__, "pthread_create");
}

/* A compact PAGES record: u32 gfn, u8 count, u8 kind, per page its unit in short. */
static int put_pages(struct mig_stream *s, struct fz *f, uint8_t code)
{
	uint64_t gfn = fz_u32(f);
	uint32_t count = fz_u8(f) % MAX_RUN + 1, kind = fz_u8(f) % (MIG_PAGE_KINDS + 1);
	size_t unit_len = mig_page_unit(kind), len = 0;
	struct iovec iov;

	for (uint32_t i = 0; i < count && unit_len; i++) {
		uint8_t *u = unit + len;

		switch (kind) {
		case MIG_PAGE_DATA:
			memset(u, fz_u8(f), MIG_PAGE_SIZE);
			break;
		case MIG_PAGE_FRAME:
			mig_le64enc(u, fz_u64(f));
			memset(u + 40, fz_u8(f), MIG_PAGE_SIZE);
			mig_sha256(u + 40, MIG_PAGE_SIZE, u + 8);
			/* Bit 4: a hash that does not match the content. */
			if (code & 0x10)
				u[8] ^= 1;
			break;
		case MIG_PAGE_FRAME_REF:
			mig_le64enc(u, fz_u64(f));
			break;
		case MIG_PAGE_SCATTER:
			mig_le64enc(u, fz_u32(f));
			memset(u + 8, fz_u8(f), MIG_PAGE_SIZE);
			break;
		}
		len += unit_len;
	}
	/* Bit 5: a scatter run at a frame of its own (the writer refuses it: sent raw). */
	if (kind == MIG_PAGE_SCATTER && !(code & 0x20))
		gfn = 0;
	iov = (struct iovec){ unit, len };
	if (!mig_put_pages(s, gfn, count, kind, &iov, 1))
		return 0;
	/* What the writer refuses, a hostile source sends anyway. */
	mig_le64enc(page, gfn);
	mig_le32enc(page + 8, count);
	mig_le32enc(page + 12, kind);
	memcpy(page + 16, unit, len < sizeof(page) - 16 ? len : sizeof(page) - 16);
	return mig_put_buf(s, MIG_REC_PAGES, page, 16 + (len < sizeof(page) - 16 ? len : sizeof(page) - 16));
}

/* A VCPU record: u8 index, u32 rip and u32 rsp above the VM's base, u8 flags. */
static int put_vcpu(struct mig_stream *s, struct fz *f, uint64_t base)
{
	uint8_t buf[4 + sizeof(struct thread_state)];
	struct thread_state b = { .magic = THREAD_STATE_MAGIC, .version = THREAD_STATE_VERSION,
				  .mxcsr = 0x1f80, .fcw = 0x37f };
	uint8_t idx = fz_u8(f), fl;

	b.rip = base + fz_u32(f);
	b.gpr[R_SP] = base + fz_u32(f);
	fl = fz_u8(f);
	/* Flags: a wrong version, a reserved MXCSR bit, mmio_read out of range, padding. */
	if (fl & 1)
		b.version = fz_u32(f);
	if (fl & 2)
		b.mxcsr = fz_u32(f);
	if (fl & 4)
		b.mmio_read = fz_u8(f);
	if (fl & 8)
		b.pad = fz_u8(f);
	mig_le32enc(buf, idx % (MAX_CPUS + 2));
	memcpy(buf + 4, &b, sizeof(b));
	return mig_put_buf(s, MIG_REC_VCPU, buf, sizeof(buf));
}

/*
 * A snapshot's pages: u16 first page, u8 count - 1, u8 kind (enum
 * snap_page_kind; SNAP_PAGE_KINDS: not given), per data page a fill byte.
 */
static void put_file_pages(struct snap_writer *w, struct fz *f)
{
	uint64_t idx = fz_u16(f);
	uint32_t n = fz_u8(f) % MAX_RUN + 1;
	uint8_t kind[MAX_RUN], k = fz_u8(f) % (SNAP_PAGE_KINDS + 1);
	char why[160];

	memset(kind, k, n);
	for (uint32_t i = 0; i < n; i++)
		memset(page + (size_t)i * MIG_PAGE_SIZE, k == SNAP_PAGE_DATA ? fz_u8(f) : 0,
		       MIG_PAGE_SIZE);
	/* Pages beyond the VM are the writer's to refuse (a caller's mistake, not a file's). */
	if (snapw_pages(w, idx, n, kind, page, why, sizeof(why)))
		return;
}

/*
 * Records until the input ends, each an opcode byte and its operands; a
 * snapshot's (file not NULL) get its pages instead of PAGES records.
 */
static int put_ops(struct mig_stream *s, struct fz *f0, uint64_t base, struct snap_writer *file)
{
	struct fz f = *f0;
	int ret = 0;

	while (f.left && !ret) {
		uint8_t code = fz_u8(&f);

		switch (code % 4) {
		case 0: { /* any record: u8 type, u16 n, n bytes of payload */
			uint8_t type = fz_u8(&f);
			size_t n;
			const uint8_t *p = fz_bytes(&f, fz_u16(&f), &n);

			ret = mig_put_buf(s, type, p, n);
			/* The writer refuses unknown types and oversized payloads: skip those. */
			if (ret == -EINVAL || ret == -EMSGSIZE)
				ret = 0;
			break;
		}
		case 1:
			if (file)
				put_file_pages(file, &f);
			else
				ret = put_pages(s, &f, code);
			break;
		case 2:
			ret = put_vcpu(s, &f, base);
			break;
		case 3: { /* ROUND (u32 round, u32 stage), or END (bit 2) */
			uint32_t v[2] = { fz_u32(&f), fz_u32(&f) };

			if (code & 4)
				ret = mig_put_buf(s, MIG_REC_END, (uint64_t[2]){ v[0], v[1] }, 16);
			else
				ret = mig_put_buf(s, MIG_REC_ROUND, v, sizeof(v));
			break;
		}
		}
	}
	return ret;
}

struct writer {
	int fd;
	const uint8_t *data;
	size_t size;
	uint64_t base;		/* the VM's host address of guest-physical 0 */
};

/* Mode bit 1: a snapshot file's state records where a live stream is due. */
static void put_records(struct writer *w, uint8_t mode)
{
	struct fz f = fz_of(w->data, w->size);
	struct mig_stream *s;

	if (mig_stream_open(w->fd, true, mode & 2 ? MIG_F_FILE : 0, -1, &s))
		return;
	put_ops(s, &f, w->base, NULL);
	mig_stream_close(s);
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;

	if (w->size && (w->data[0] & 1)) {
		for (size_t sent = 1; sent < w->size;) {
			ssize_t n = send(w->fd, w->data + sent, w->size - sent, MSG_NOSIGNAL);

			if (n <= 0)
				break;
			sent += (size_t)n;
		}
	} else if (w->size) {
		struct writer rest = *w;

		rest.data++;
		rest.size--;
		put_records(&rest, w->data[0]);
	}
	shutdown(w->fd, SHUT_WR);
	return NULL;
}

static void *source_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&source.lock);
	for (;;) {
		while (!source.w)
			pthread_cond_wait(&source.cond, &source.lock);
		pthread_mutex_unlock(&source.lock);
		writer_main(source.w);
		pthread_mutex_lock(&source.lock);
		source.w = NULL;
		pthread_cond_broadcast(&source.cond);
	}
	return NULL;
}

/* Hand w to the source (NULL: wait until it is done with the last one). */
static void source_send(struct writer *w)
{
	pthread_mutex_lock(&source.lock);
	while (source.w)
		pthread_cond_wait(&source.cond, &source.lock);
	source.w = w;
	pthread_cond_broadcast(&source.cond);
	pthread_mutex_unlock(&source.lock);
}

/*
 * Where a VM's guest-physical 0 is: the same for every input, since VMs
 * are placed first fit and each is gone before the next (mem/memmap.h).
 */
static uint64_t vm_base(void)
{
	static uint64_t base;

	if (!base) {
		struct fake_dest d;
		struct vm *vm;
		char why[128];

		fake_dest_init(&d, RAM, MAX_CPUS, null_fd);
		if (fake_dest_ops.reserve(&d, NULL, &vm, why, sizeof(why)))
			fz_fail(__FILE__, __LINE__, why);
		base = vm_ram_base(vm);
		fake_dest_release(&d);
	}
	return base;
}

/*
 * The snapshot file a restore reads: the input itself (raw), or one the
 * writer makes (snapfile.c's own, header, table and hashes right) of the
 * VM's size, or (mode bit 3) of a u16 count of pages up to twice that. 0,
 * or -1 when there is no file to restore from.
 */
static int make_snapshot(const uint8_t *data, size_t size, uint64_t base)
{
	struct fz f = fz_of(data + 1, size - 1);
	uint64_t pages = RAM / MIG_PAGE_SIZE;
	struct snap_writer *w;
	char why[160];

	if (data[0] & 1) {
		fz_file_set(&raw_snapshot, data + 1, size - 1);
		return 0;
	}
	/*
	 * Up to twice the VM's: smaller and larger files are refused alike,
	 * and a count in the tens of thousands only made the tables to write,
	 * hash and read back (megabytes) the cost of the input.
	 */
	if (data[0] & 8)
		pages = fz_u16(&f) % (2 * RAM / MIG_PAGE_SIZE + 1);
	if (snapw_create(snapshot_path, pages, 0, &w, why, sizeof(why)))
		return -1;
	put_ops(snapw_state(w), &f, base, w);
	return snapw_finish(w, why, sizeof(why)) ? -1 : 0;
}

/* Mode bit 2: a restore from a snapshot file. */
static int start_restore(const uint8_t *data, size_t size, struct fake_dest *d)
{
	struct mig_params params = { 0 };
	char why[192];
	int ret;

	if (make_snapshot(data, size, vm_base()))
		return -1;
	/* Refused at once when the file is not a snapshot: no job then. */
	ret = mig_restore_start(data[0] & 1 ? raw_snapshot.path : snapshot_path, &params,
				&fake_dest_ops, d, &d->job, why, sizeof(why));
	FZ_CHECK(ret == 0 || why[0]);
	unlink(snapshot_path);
	return ret ? -1 : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mig_params params = { 0 };
	struct writer w = { .data = data, .size = size, .base = vm_base() };
	struct fake_dest d;
	struct mig_progress prog;
	bool live = !size || !(data[0] & 4);
	int sv[2];

	fake_dest_init(&d, RAM, MAX_CPUS, null_fd);
	if (live) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
			fz_fail(__FILE__, __LINE__, "socketpair");
		w.fd = sv[1];
		source_send(&w);
		/* d.job is set before the job's thread runs, its callbacks may use it. */
		if (mig_dest_start(sv[0], &params, &fake_dest_ops, &d, "fuzz", &d.job))
			fz_fail(__FILE__, __LINE__, "mig_dest_start");
	} else if (start_restore(data, size, &d)) {
		fake_dest_release(&d);
		return 0;
	}
	fake_dest_finish(&d, &prog);
	if (live) {
		source_send(NULL);
		close(sv[1]);
	}
	if (getenv("KVMEM_FUZZ_VERBOSE"))
		fprintf(stderr, "fuzz_stream: %s%s%s\n", mig_stage_name(prog.stage),
			prog.error[0] ? ": " : "", prog.error);
	FZ_CHECK(prog.stage == MIG_STAGE_DONE || (prog.stage == MIG_STAGE_FAILED && prog.error[0]));
	fake_dest_release(&d);
	return 0;
}
