/* SPDX-License-Identifier: MIT */
/*
 * The migration stream as a destination reads it from a source it does not
 * trust (migrate/stream.c and the receiving side of migrate/migrate.c:
 * mig_dest_start's loop over VM, ROUND, PAGES, VCPU, DEVICE, END and COMMIT
 * records, into a VM). The destination is the real one on a thread of its
 * own, reading one end of a socketpair; a writer thread plays the source.
 * The VM it reserves is a fresh thread-accelerator VM (never started: the
 * activation only says "running"), with a balloon for the device state.
 *
 * Input: u8 mode. Mode bit 0: the rest is the stream, byte for byte
 * (preamble, headers and checks as they come: the framing's own checks).
 * Otherwise the rest is records for the writer to send with valid framing
 * (stream.c's own writer: checks and numbers right, so the fuzzer gets past
 * them to the decoders), each an opcode byte and its operands (see
 * put_records). Checked: the job ends DONE, or FAILED with a reason, and
 * the guest memory outside RAM is never written (a write there faults).
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

#include "balloon/balloon.h"
#include "core/accel/accel.h"
#include "core/accel/thread_state.h"
#include "core/virtio/virtio_mmio.h"
#include "core/vm.h"
#include "fuzz.h"
#include "migrate/migrate.h"
#include "migrate/stream.h"

#define RAM (8ULL << 20)
#define MAX_CPUS 4
#define MAX_RUN 32		/* pages of one compact PAGES record */

struct dest {
	struct mig_job *job;
	struct vm *vm;
	struct balloon *balloon;
	bool discarded;
	pthread_mutex_t lock;
	pthread_cond_t cond;
};

static int null_fd;
static uint8_t page[MIG_PAGE_SIZE * (MAX_RUN + 1)];
static uint8_t unit[MAX_RUN * (8 + 32 + MIG_PAGE_SIZE)];

static int d_reserve(void *arg, json_t *desc, struct vm **out, char *why, size_t whylen)
{
	struct dest *d = arg;
	json_int_t cpus = 1;
	struct vm_params p = {
		.name = "fuzz",
		.accel = ACCEL_THREAD,
		.mem_bytes = RAM,
		.guest_path = "/dev/null",
		.console_fd = null_fd,
	};
	int ret;

	/* The peer says how many vCPUs; the rest of the description is config.c's to read. */
	json_unpack(desc, "{s?I}", "cpus", &cpus);
	if (cpus < 1 || cpus > MAX_CPUS) {
		snprintf(why, whylen, "cpus: from 1 to %d", MAX_CPUS);
		return -EINVAL;
	}
	p.ncpus = (unsigned int)cpus;
	ret = vm_create(&p, &d->vm);
	if (ret) {
		snprintf(why, whylen, "vm_create: %s", strerror(-ret));
		return ret;
	}
	if (balloon_create_on_gm(vm_gm(d->vm), NULL, NULL, &d->balloon))
		fz_fail(__FILE__, __LINE__, "balloon_create_on_gm");
	*out = d->vm;
	return 0;
}

/* As the host gives an arriving VM its devices' state (host_vm_load_devices). */
static int d_load_devices(void *arg, json_t *devices, char *why, size_t whylen)
{
	struct dest *d = arg;
	json_t *b = json_object_get(devices, "balloon");

	if (!json_is_object(b)) {
		snprintf(why, whylen, "no balloon state");
		return -EINVAL;
	}
	return virtio_dev_load(balloon_virtio_dev(d->balloon), b, why, whylen);
}

/* Never started: a stream's vCPU state must not run in the fuzzer's process. */
static int d_activate(void *arg)
{
	(void)arg;
	return 0;
}

static void d_discard(void *arg)
{
	((struct dest *)arg)->discarded = true;
}

/* The job's last progress call comes once it is finished: wake the fuzzer's thread. */
static void d_progress(void *arg)
{
	struct dest *d = arg;

	pthread_mutex_lock(&d->lock);
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
}

static const struct mig_dest_ops dest_ops = {
	.reserve = d_reserve,
	.load_devices = d_load_devices,
	.activate = d_activate,
	.discard = d_discard,
	.progress = d_progress,
};

void fz_init(void)
{
	null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (null_fd < 0)
		fz_fail(__FILE__, __LINE__, "/dev/null");
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
	int ret = 0;

	if (mig_stream_open(w->fd, true, mode & 2 ? MIG_F_FILE : 0, -1, &s))
		return;
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
			ret = put_pages(s, &f, code);
			break;
		case 2:
			ret = put_vcpu(s, &f, w->base);
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

/*
 * Where a VM's guest-physical 0 is: the same for every input, since VMs
 * are placed first fit and each is gone before the next (mem/memmap.h).
 */
static uint64_t vm_base(void)
{
	static uint64_t base;

	if (!base) {
		struct dest d = { 0 };
		struct vm *vm;
		char why[128];

		if (d_reserve(&d, NULL, &vm, why, sizeof(why)))
			fz_fail(__FILE__, __LINE__, why);
		base = vm_ram_base(vm);
		balloon_destroy(d.balloon);
		vm_destroy(vm);
	}
	return base;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mig_params params = { 0 };
	struct writer w = { .data = data, .size = size, .base = vm_base() };
	struct dest d = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
	struct mig_progress prog;
	pthread_t writer;
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		fz_fail(__FILE__, __LINE__, "socketpair");
	w.fd = sv[1];
	if (pthread_create(&writer, NULL, writer_main, &w))
		fz_fail(__FILE__, __LINE__, "pthread_create");
	/* d.job is set before the job's thread runs (mig_dest_start), its callbacks may use it. */
	if (mig_dest_start(sv[0], &params, &dest_ops, &d, "fuzz", &d.job))
		fz_fail(__FILE__, __LINE__, "mig_dest_start");
	pthread_mutex_lock(&d.lock);
	while (!mig_job_finished(d.job))
		pthread_cond_wait(&d.cond, &d.lock);
	pthread_mutex_unlock(&d.lock);
	mig_job_progress(d.job, &prog);
	mig_job_free(d.job);
	pthread_join(writer, NULL);
	close(sv[1]);
	if (getenv("KVMEM_FUZZ_VERBOSE"))
		fprintf(stderr, "fuzz_stream: %s%s%s\n", mig_stage_name(prog.stage),
			prog.error[0] ? ": " : "", prog.error);
	FZ_CHECK(prog.stage == MIG_STAGE_DONE || (prog.stage == MIG_STAGE_FAILED && prog.error[0]));
	if (d.vm) {
		balloon_destroy(d.balloon);
		vm_destroy(d.vm);
	}
	return 0;
}
