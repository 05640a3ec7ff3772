// SPDX-License-Identifier: MIT
#define LOG_TAG "migrate"
#include "migrate/stream.h"

#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <xxhash.h>

#include "core/clock.h"
#include "core/fault.h"

#define MIG_IOV_MAX 16		/* gathered pieces of one record, header included */
#define MIG_PACE_SLICE_NS 100000000ULL	/* a paced writer looks at its rate this often */

struct mig_stream {
	int fd;
	bool writing;
	bool is_socket;		/* send with MSG_NOSIGNAL: a gone peer is an error, not SIGPIPE */
	bool preamble_done;
	uint32_t flags;
	int timeout_ms;
	uint64_t seq;		/* the next record's number */
	uint64_t bytes;
	uint64_t rate;		/* bytes/s, 0: unpaced (atomic: set from another thread) */
	uint64_t pace_t0;	/* pacing since (ns), and bytes written since */
	uint64_t pace_bytes;
	uint64_t pace_rate;	/* the rate pace_t0 was set for */
	int err;		/* a failed read or write: the stream is out of step for good */
	XXH3_state_t *xxh;
	uint8_t *buf;		/* a read record's payload (NULL before the first) */
	size_t buf_len;		/* its size: as long as the longest payload read so far */
	char why[160];
};

static int write_all(struct mig_stream *s, struct iovec *iov, int iovcnt);

static const struct {
	const char *name;
	uint32_t max;		/* payload bytes at most */
} rec_types[MIG_REC_TYPES] = {
	[MIG_REC_VM] = { "vm", MIG_TEXT_MAX },
	[MIG_REC_RESERVE] = { "reserve", MIG_TEXT_MAX },
	[MIG_REC_ROUND] = { "round", 8 },
	[MIG_REC_PAGES] = { "pages", MIG_REC_MAX },
	[MIG_REC_VCPU] = { "vcpu", 256 * 1024 },
	[MIG_REC_DEVICE] = { "device", 64 * 1024 },
	[MIG_REC_END] = { "end", 16 },
	[MIG_REC_COMMIT] = { "commit", MIG_TEXT_MAX },
	[MIG_REC_ERROR] = { "error", 4096 },
	[MIG_REC_AUTH] = { "auth", 256 },
};

const char *mig_rec_name(uint32_t type)
{
	return type < MIG_REC_TYPES && rec_types[type].name ? rec_types[type].name : "unknown";
}

__attribute__((format(printf, 3, 4))) static int fail(struct mig_stream *s, int err,
						      const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(s->why, sizeof(s->why), fmt, ap);
	va_end(ap);
	return err;
}

int mig_stream_open(int fd, bool writing, uint32_t flags, int timeout_ms,
		    struct mig_stream **out)
{
	struct mig_stream *s = calloc(1, sizeof(*s));
	struct stat st;
	int ret;

	if (!s)
		return -ENOMEM;
	s->fd = fd;
	s->writing = writing;
	s->flags = flags;
	s->timeout_ms = timeout_ms;
	s->is_socket = fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
	s->xxh = XXH3_createState();
	if (!s->xxh) {
		mig_stream_close(s);
		return -ENOMEM;
	}
	if (writing) {
		uint8_t pre[MIG_PREAMBLE_SIZE];
		uint32_t v = htole32(MIG_VERSION), f = htole32(flags);
		struct iovec iov = { pre, sizeof(pre) };

		memcpy(pre, MIG_MAGIC, 8);
		memcpy(pre + 8, &v, 4);
		memcpy(pre + 12, &f, 4);
		ret = write_all(s, &iov, 1);
		if (ret) {
			mig_stream_close(s);
			return ret;
		}
	}
	*out = s;
	return 0;
}

void mig_stream_close(struct mig_stream *s)
{
	if (!s)
		return;
	XXH3_freeState(s->xxh);
	free(s->buf);
	free(s);
}

const char *mig_stream_error(const struct mig_stream *s)
{
	return s->why;
}

uint64_t mig_stream_bytes(const struct mig_stream *s)
{
	return __atomic_load_n(&s->bytes, __ATOMIC_RELAXED);
}

void mig_stream_set_rate(struct mig_stream *s, uint64_t bytes_per_s)
{
	__atomic_store_n(&s->rate, bytes_per_s, __ATOMIC_RELAXED);
}

/* When a record's read or write must be over (UINT64_MAX: never). */
static uint64_t deadline_of(const struct mig_stream *s)
{
	return s->timeout_ms < 0 ? UINT64_MAX
				 : kv_clock_ns(CLOCK_MONOTONIC) + (uint64_t)s->timeout_ms * 1000000ULL;
}

/* Wait until fd is ready for `events`, until the deadline at most. */
static int wait_fd(struct mig_stream *s, short events, uint64_t deadline)
{
	struct pollfd p = { .fd = s->fd, .events = events };
	int n;

	do {
		uint64_t now = kv_clock_ns(CLOCK_MONOTONIC);
		int ms = deadline == UINT64_MAX ? -1
			 : now >= deadline    ? 0
					      : (int)((deadline - now + 999999) / 1000000);

		n = poll(&p, 1, ms);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return fail(s, -errno, "waiting for the peer: %s", strerror(errno));
	if (n == 0)
		return fail(s, -ETIMEDOUT, "the peer %s one record in %d ms",
			    events == POLLIN ? "did not send" : "did not take", s->timeout_ms);
	return 0;
}

/*
 * Sleep as long as the bytes written since pacing began are ahead of the
 * rate. Sleeps in slices, so that a new rate takes effect within one.
 */
static void pace(struct mig_stream *s, size_t n)
{
	uint64_t rate = __atomic_load_n(&s->rate, __ATOMIC_RELAXED), now = kv_clock_ns(CLOCK_MONOTONIC);

	if (!rate) {
		s->pace_rate = 0;
		return;
	}
	/*
	 * A new rate, or a writer that fell behind its rate (it was idle, or
	 * the link was slower): pacing starts again from now, so that time
	 * not used is not spent later as a burst at full speed. Bytes still
	 * owed at the old rate are paid at the new one.
	 */
	if (rate != s->pace_rate ||
	    now > s->pace_t0 + (uint64_t)((double)s->pace_bytes * 1e9 / (double)rate)) {
		uint64_t owed = 0;

		if (rate != s->pace_rate && s->pace_rate) {
			double sent = (double)(now - s->pace_t0) * (double)s->pace_rate / 1e9;

			if ((double)s->pace_bytes > sent)
				owed = (uint64_t)((double)s->pace_bytes - sent);
		}
		s->pace_rate = rate;
		s->pace_t0 = now;
		s->pace_bytes = owed;
	}
	s->pace_bytes += n;
	for (;;) {
		uint64_t due = s->pace_t0 + (uint64_t)((double)s->pace_bytes * 1e9 / (double)rate);
		uint64_t ns;
		struct timespec ts;

		now = kv_clock_ns(CLOCK_MONOTONIC);
		if (now >= due)
			return;
		ns = due - now < MIG_PACE_SLICE_NS ? due - now : MIG_PACE_SLICE_NS;
		ts.tv_sec = (time_t)(ns / 1000000000ULL);
		ts.tv_nsec = (long)(ns % 1000000000ULL);
		nanosleep(&ts, NULL);
		if (__atomic_load_n(&s->rate, __ATOMIC_RELAXED) != rate)
			return;	/* the next write pays what is owed at the new rate */
	}
}

/* Write all of iov (modified: consumed as it goes). */
static int write_iov(struct mig_stream *s, struct iovec *iov, int iovcnt)
{
	uint64_t deadline = deadline_of(s);

	while (iovcnt) {
		ssize_t n;
		int ret = wait_fd(s, POLLOUT, deadline);

		if (ret)
			return ret;
		if (s->is_socket) {
			struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)iovcnt };
			int inject = FAULT_POINT(MIGRATE_SEND);

			n = inject ? (errno = -inject, -1) : sendmsg(s->fd, &m, MSG_NOSIGNAL);
		} else {
			n = writev(s->fd, iov, iovcnt);
		}
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return fail(s, -errno, "writing the stream: %s", strerror(errno));
		}
		if (n == 0)
			return fail(s, -EPIPE, "writing the stream: nothing written");
		__atomic_fetch_add(&s->bytes, (uint64_t)n, __ATOMIC_RELAXED);
		pace(s, (size_t)n);
		while (iovcnt && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt) {
			iov->iov_base = (uint8_t *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

/*
 * Read exactly len bytes. -ENODATA for an end of stream before the first
 * byte when at_boundary (a clean end), -EPIPE for one after it.
 */
static int read_bytes(struct mig_stream *s, void *p, size_t len, bool at_boundary)
{
	uint64_t deadline = deadline_of(s);
	size_t got = 0;

	while (got < len) {
		ssize_t n;
		int ret = wait_fd(s, POLLIN, deadline), inject;

		if (ret)
			return ret;
		inject = s->is_socket ? FAULT_POINT(MIGRATE_RECV) : 0;
		n = inject ? (errno = -inject, -1) : read(s->fd, (uint8_t *)p + got, len - got);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return fail(s, -errno, "reading the stream: %s", strerror(errno));
		}
		if (n == 0) {
			if (!got && at_boundary)
				return fail(s, -ENODATA, "the stream ended");
			return fail(s, -EPIPE, "the stream ended inside a record");
		}
		got += (size_t)n;
		__atomic_fetch_add(&s->bytes, (uint64_t)n, __ATOMIC_RELAXED);
	}
	return 0;
}

/* A stream that failed part way through a record stays failed: the next one would be junk. */
static int broken(struct mig_stream *s, int err)
{
	if (err && !s->err)
		s->err = err;
	return err;
}

static int write_all(struct mig_stream *s, struct iovec *iov, int iovcnt)
{
	return s->err ? s->err : broken(s, write_iov(s, iov, iovcnt));
}

static int read_all(struct mig_stream *s, void *p, size_t len, bool at_boundary)
{
	return s->err ? s->err : broken(s, read_bytes(s, p, len, at_boundary));
}

static uint64_t check_of(struct mig_stream *s, const uint8_t *hdr, const struct iovec *iov,
			 int iovcnt)
{
	XXH3_64bits_reset_withSeed(s->xxh, XXH3_64bits(hdr, 16));
	for (int i = 0; i < iovcnt; i++)
		XXH3_64bits_update(s->xxh, iov[i].iov_base, iov[i].iov_len);
	return XXH3_64bits_digest(s->xxh);
}

int mig_put(struct mig_stream *s, uint32_t type, const struct iovec *iov, int iovcnt)
{
	struct iovec all[MIG_IOV_MAX];
	uint8_t hdr[MIG_HDR_SIZE];
	uint64_t len = 0, v;
	uint32_t w;
	int n = 0, ret;

	if (!s->writing)
		return fail(s, -EBADF, "writing to a stream opened for reading");
	if (iovcnt < 0 || iovcnt > MIG_IOV_MAX - 1)
		return fail(s, -EINVAL, "a record gathered from %d pieces", iovcnt);
	if (type >= MIG_REC_TYPES || !rec_types[type].name)
		return fail(s, -EINVAL, "writing a record of unknown type %u", type);
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > rec_types[type].max - len)
			return fail(s, -EMSGSIZE, "a %s record of more than %u bytes",
				    mig_rec_name(type), rec_types[type].max);
		len += iov[i].iov_len;
	}
	w = htole32(type);
	memcpy(hdr, &w, 4);
	w = htole32((uint32_t)len);
	memcpy(hdr + 4, &w, 4);
	v = htole64(s->seq);
	memcpy(hdr + 8, &v, 8);
	v = htole64(check_of(s, hdr, iov, iovcnt));
	memcpy(hdr + 16, &v, 8);
	v = htole64(XXH3_64bits(hdr, 24));
	memcpy(hdr + 24, &v, 8);
	all[n++] = (struct iovec){ hdr, sizeof(hdr) };
	for (int i = 0; i < iovcnt; i++)
		if (iov[i].iov_len)
			all[n++] = iov[i];
	ret = write_all(s, all, n);
	if (!ret)
		s->seq++;
	return ret;
}

int mig_put_buf(struct mig_stream *s, uint32_t type, const void *p, size_t len)
{
	struct iovec iov = { (void *)p, len };

	return mig_put(s, type, &iov, 1);
}

int mig_put_pages(struct mig_stream *s, uint64_t gfn, uint32_t count, uint32_t kind,
		  const struct iovec *iov, int iovcnt)
{
	struct iovec all[MIG_IOV_MAX];
	uint8_t hdr[16];
	uint64_t g = htole64(gfn);
	uint32_t c = htole32(count), k = htole32(kind);

	size_t len = 0;

	if (iovcnt < 0 || iovcnt > MIG_IOV_MAX - 2)
		return fail(s, -EINVAL, "a pages record gathered from %d pieces", iovcnt);
	for (int i = 0; i < iovcnt; i++)
		len += iov[i].iov_len < MIG_REC_MAX ? iov[i].iov_len : MIG_REC_MAX;
	if (count == 0 || count > MIG_PAGES_MAX || kind == 0 || kind >= MIG_PAGE_KINDS ||
	    gfn > UINT64_MAX - count || len != count * mig_page_unit(kind) ||
	    (kind == MIG_PAGE_SCATTER && gfn))
		return fail(s, -EINVAL, "a pages record of %u pages of kind %u at %llu with %zu bytes",
			    count, kind, (unsigned long long)gfn, len);
	memcpy(hdr, &g, 8);
	memcpy(hdr + 8, &c, 4);
	memcpy(hdr + 12, &k, 4);
	all[0] = (struct iovec){ hdr, sizeof(hdr) };
	for (int i = 0; i < iovcnt; i++)
		all[i + 1] = iov[i];
	return mig_put(s, MIG_REC_PAGES, all, iovcnt + 1);
}

static int read_preamble(struct mig_stream *s)
{
	uint8_t pre[MIG_PREAMBLE_SIZE];
	uint32_t v, f;
	int ret = read_bytes(s, pre, sizeof(pre), true);

	if (ret == -ENODATA)
		return fail(s, -EPROTO, "the stream is empty");
	if (ret)
		return ret;
	if (memcmp(pre, MIG_MAGIC, 8))
		return fail(s, -EPROTO, "not a kvmem migration stream (no %s magic)", MIG_MAGIC);
	memcpy(&v, pre + 8, 4);
	memcpy(&f, pre + 12, 4);
	v = le32toh(v);
	f = le32toh(f);
	if (v != MIG_VERSION)
		return fail(s, -EPROTO, "stream format version %u; this kvmem reads version %u", v,
			    MIG_VERSION);
	if ((f & MIG_F_FILE) != (s->flags & MIG_F_FILE))
		return fail(s, -EPROTO, "a %s where a %s was expected",
			    f & MIG_F_FILE ? "snapshot file" : "live migration stream",
			    s->flags & MIG_F_FILE ? "snapshot file" : "live migration stream");
	if (f & ~(uint32_t)MIG_F_FILE)
		return fail(s, -EPROTO, "stream flags 0x%x this kvmem does not know", f);
	s->preamble_done = true;
	return 0;
}

int mig_get(struct mig_stream *s, struct mig_rec *r)
{
	uint8_t hdr[MIG_HDR_SIZE];
	uint32_t type, len;
	uint64_t seq, check, hcheck;
	struct iovec iov;
	int ret;

	if (s->writing)
		return fail(s, -EBADF, "reading from a stream opened for writing");
	if (s->err)
		return s->err;
	if (!s->preamble_done && (ret = broken(s, read_preamble(s))))
		return ret;
	ret = read_all(s, hdr, sizeof(hdr), true);
	if (ret)
		return ret;
	memcpy(&type, hdr, 4);
	memcpy(&len, hdr + 4, 4);
	memcpy(&seq, hdr + 8, 8);
	memcpy(&check, hdr + 16, 8);
	memcpy(&hcheck, hdr + 24, 8);
	type = le32toh(type);
	len = le32toh(len);
	seq = le64toh(seq);
	check = le64toh(check);
	/* Before the payload is read: a bad header must not make us read (or wait for) junk. */
	if (XXH3_64bits(hdr, 24) != le64toh(hcheck))
		return broken(s, fail(s, -EBADMSG, "record %llu: header checksum mismatch",
				      (unsigned long long)s->seq));
	if (seq != s->seq)
		return broken(s, fail(s, -EPROTO, "record %llu where record %llu was due (lost or replayed)",
			    (unsigned long long)seq, (unsigned long long)s->seq));
	if (type >= MIG_REC_TYPES || !rec_types[type].name)
		return broken(s, fail(s, -EPROTO, "record %llu: unknown type %u",
				      (unsigned long long)seq, type));
	if (len > rec_types[type].max)
		return broken(s, fail(s, -EMSGSIZE, "record %llu (%s): %u bytes, at most %u",
				      (unsigned long long)seq, mig_rec_name(type), len,
				      rec_types[type].max));
	/*
	 * The buffer grows to what the records need (doubling, up to
	 * MIG_REC_MAX): a migration's first run of pages takes it to a
	 * megabyte, a snapshot's state section or a refused stream never does.
	 */
	if (!s->buf || len > s->buf_len) {
		size_t want = s->buf_len * 2 > 4096 ? s->buf_len * 2 : 4096;
		uint8_t *p;

		if (want > MIG_REC_MAX)
			want = MIG_REC_MAX;
		if (want < len)
			want = len;
		p = realloc(s->buf, want);
		if (!p)
			return broken(s, fail(s, -ENOMEM, "record %llu (%s): no memory for %u "
					      "bytes", (unsigned long long)seq, mig_rec_name(type),
					      len));
		s->buf = p;
		s->buf_len = want;
	}
	ret = read_all(s, s->buf, len, false);
	if (ret)
		return ret;
	iov = (struct iovec){ s->buf, len };
	if (check_of(s, hdr, &iov, 1) != check)
		return broken(s, fail(s, -EBADMSG, "record %llu (%s): checksum mismatch",
				      (unsigned long long)seq, mig_rec_name(type)));
	s->seq++;
	*r = (struct mig_rec){ .type = type, .len = len, .seq = seq, .data = s->buf };
	return 0;
}

size_t mig_page_unit(uint32_t kind)
{
	switch (kind) {
	case MIG_PAGE_ZERO:
	case MIG_PAGE_BALLOONED:
		return 0;
	case MIG_PAGE_DATA:
		return MIG_PAGE_SIZE;
	case MIG_PAGE_FRAME:
		return 8 + 32 + MIG_PAGE_SIZE;
	case MIG_PAGE_FRAME_REF:
		return 8;
	case MIG_PAGE_SCATTER:
		return 8 + MIG_PAGE_SIZE;
	default:
		return 0;
	}
}

int mig_pages_decode(const struct mig_rec *r, struct mig_pages *out)
{
	struct mig_cur c = mig_cur_of(r);

	if (r->type != MIG_REC_PAGES)
		return -EBADMSG;
	out->gfn = mig_cur_u64(&c);
	out->count = mig_cur_u32(&c);
	out->kind = mig_cur_u32(&c);
	if (c.bad || out->count == 0 || out->count > MIG_PAGES_MAX || out->kind == 0 ||
	    out->kind >= MIG_PAGE_KINDS || out->gfn > UINT64_MAX - out->count ||
	    (out->kind == MIG_PAGE_SCATTER && out->gfn))
		return -EBADMSG;
	out->data = mig_cur_bytes(&c, mig_page_unit(out->kind) * out->count);
	return mig_cur_done(&c) ? 0 : -EBADMSG;
}

uint32_t mig_cur_u32(struct mig_cur *c)
{
	const uint8_t *p = mig_cur_bytes(c, 4);
	uint32_t v = 0;

	if (p)
		memcpy(&v, p, 4);
	return le32toh(v);
}

uint64_t mig_cur_u64(struct mig_cur *c)
{
	const uint8_t *p = mig_cur_bytes(c, 8);
	uint64_t v = 0;

	if (p)
		memcpy(&v, p, 8);
	return le64toh(v);
}

const uint8_t *mig_cur_bytes(struct mig_cur *c, size_t n)
{
	const uint8_t *p = c->p;

	if (c->bad || n > c->left) {
		c->bad = true;
		return NULL;
	}
	c->p += n;
	c->left -= n;
	return p;
}

void mig_sha256(const void *p, size_t len, uint8_t out[32])
{
	unsigned int n = 32;

	if (!EVP_Digest(p, len, out, &n, EVP_sha256(), NULL))
		memset(out, 0, 32);
}
