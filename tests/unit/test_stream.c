// SPDX-License-Identifier: MIT
/*
 * The migration stream: records written and read back whole, and every way
 * a broken or hostile stream can be wrong refused with its reason.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "migrate/stream.h"

#define PAGE MIG_PAGE_SIZE

static uint8_t page_a[PAGE], page_b[PAGE];

/* A stream in a memory file: a VM record, a round, two data pages, a zero run, the end. */
static int write_sample(uint32_t flags)
{
	int fd = memfd_create("test-stream", MFD_CLOEXEC);
	struct mig_stream *s;
	struct iovec pages[2] = { { page_a, PAGE }, { page_b, PAGE } };
	uint32_t round[2] = { 1, 2 };
	uint64_t end[2] = { 7, 12345 };

	assert_true(fd >= 0);
	memset(page_a, 0xa5, PAGE);
	memset(page_b, 0x5a, PAGE);
	assert_int_equal(mig_stream_open(fd, true, flags, -1, &s), 0);
	assert_int_equal(mig_put_buf(s, MIG_REC_VM, "{\"name\":\"a\"}", 12), 0);
	assert_int_equal(mig_put_buf(s, MIG_REC_ROUND, round, sizeof(round)), 0);
	assert_int_equal(mig_put_pages(s, 100, 2, MIG_PAGE_DATA, pages, 2), 0);
	assert_int_equal(mig_put_pages(s, 200, 5, MIG_PAGE_ZERO, NULL, 0), 0);
	assert_int_equal(mig_put_buf(s, MIG_REC_END, end, sizeof(end)), 0);
	assert_int_equal(mig_stream_bytes(s), (uint64_t)lseek(fd, 0, SEEK_CUR));
	mig_stream_close(s);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	return fd;
}

static struct mig_stream *reader(int fd, uint32_t flags)
{
	struct mig_stream *s;

	assert_int_equal(mig_stream_open(fd, false, flags, -1, &s), 0);
	return s;
}

/* Offset of record i's header in the sample stream. */
static off_t rec_at(int fd, int i)
{
	off_t at = MIG_PREAMBLE_SIZE;

	for (; i > 0; i--) {
		uint32_t len;

		assert_int_equal(pread(fd, &len, 4, at + 4), 4);
		at += MIG_HDR_SIZE + len;
	}
	return at;
}

static void poke(int fd, off_t at, const void *p, size_t n)
{
	assert_int_equal(pwrite(fd, p, n, at), (ssize_t)n);
}

static void flip(int fd, off_t at)
{
	uint8_t b;

	assert_int_equal(pread(fd, &b, 1, at), 1);
	b ^= 0x10;
	poke(fd, at, &b, 1);
}

/* Read records until one fails; returns its error, and how many came before. */
static int read_until_error(int fd, uint32_t flags, int *good, char *why, size_t whylen)
{
	struct mig_stream *s;
	struct mig_rec r;
	int ret;

	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	s = reader(fd, flags);
	*good = 0;
	while ((ret = mig_get(s, &r)) == 0)
		(*good)++;
	snprintf(why, whylen, "%s", mig_stream_error(s));
	/* Failed for good: the next read says the same, never a record out of step. */
	assert_int_equal(mig_get(s, &r), ret);
	mig_stream_close(s);
	return ret;
}

static void test_stream_round_trip(void **state)
{
	int fd = write_sample(0);
	struct mig_stream *s = reader(fd, 0);
	struct mig_rec r;
	struct mig_pages p;
	struct mig_cur c;

	(void)state;
	assert_int_equal(mig_get(s, &r), 0);
	assert_int_equal(r.type, MIG_REC_VM);
	assert_int_equal(r.seq, 0);
	assert_memory_equal(r.data, "{\"name\":\"a\"}", 12);
	assert_int_equal(mig_get(s, &r), 0);
	assert_int_equal(r.type, MIG_REC_ROUND);
	c = mig_cur_of(&r);
	assert_int_equal(mig_cur_u32(&c), 1);
	assert_int_equal(mig_cur_u32(&c), 2);
	assert_true(mig_cur_done(&c));
	assert_int_equal(mig_get(s, &r), 0);
	assert_int_equal(mig_pages_decode(&r, &p), 0);
	assert_int_equal(p.gfn, 100);
	assert_int_equal(p.count, 2);
	assert_int_equal(p.kind, MIG_PAGE_DATA);
	assert_memory_equal(p.data, page_a, PAGE);
	assert_memory_equal(p.data + PAGE, page_b, PAGE);
	assert_int_equal(mig_get(s, &r), 0);
	assert_int_equal(mig_pages_decode(&r, &p), 0);
	assert_int_equal(p.gfn, 200);
	assert_int_equal(p.count, 5);
	assert_int_equal(p.kind, MIG_PAGE_ZERO);
	assert_int_equal(mig_get(s, &r), 0);
	assert_int_equal(r.type, MIG_REC_END);
	c = mig_cur_of(&r);
	assert_int_equal(mig_cur_u64(&c), 7);
	assert_int_equal(mig_cur_u64(&c), 12345);
	assert_true(mig_cur_done(&c));
	/* A clean end between records. */
	assert_int_equal(mig_get(s, &r), -ENODATA);
	assert_int_equal(mig_stream_bytes(s), (uint64_t)lseek(fd, 0, SEEK_END));
	mig_stream_close(s);
	close(fd);
}

/*
 * The reader's buffer grows with the records: a small one, the largest
 * there is (MIG_PAGES_MAX data pages), a small one again, each read whole;
 * and an empty payload comes with a pointer (the readers memcpy it).
 */
static void test_stream_largest_record_after_small_ones(void **state)
{
	static uint8_t big[MIG_PAGES_MAX * PAGE];
	int fd = memfd_create("test-stream", MFD_CLOEXEC);
	struct iovec iov = { big, sizeof(big) };
	struct mig_stream *s;
	struct mig_rec r;
	struct mig_pages p;

	(void)state;
	assert_true(fd >= 0);
	for (size_t i = 0; i < MIG_PAGES_MAX; i++)
		memset(big + i * PAGE, (int)i, PAGE);
	assert_int_equal(mig_stream_open(fd, true, 0, -1, &s), 0);
	assert_int_equal(mig_put_buf(s, MIG_REC_COMMIT, "", 0), 0);
	assert_int_equal(mig_put_buf(s, MIG_REC_VM, "{\"name\":\"a\"}", 12), 0);
	assert_int_equal(mig_put_pages(s, 0, MIG_PAGES_MAX, MIG_PAGE_DATA, &iov, 1), 0);
	assert_int_equal(mig_put_buf(s, MIG_REC_VM, "{\"name\":\"b\"}", 12), 0);
	mig_stream_close(s);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	s = reader(fd, 0);
	assert_int_equal(mig_get(s, &r), 0);
	assert_int_equal(r.type, MIG_REC_COMMIT);
	assert_int_equal(r.len, 0);
	assert_non_null(r.data);
	assert_int_equal(mig_get(s, &r), 0);
	assert_memory_equal(r.data, "{\"name\":\"a\"}", 12);
	assert_int_equal(mig_get(s, &r), 0);
	assert_int_equal(mig_pages_decode(&r, &p), 0);
	assert_int_equal(p.count, MIG_PAGES_MAX);
	assert_memory_equal(p.data, big, sizeof(big));
	assert_int_equal(mig_get(s, &r), 0);
	assert_memory_equal(r.data, "{\"name\":\"b\"}", 12);
	assert_int_equal(mig_get(s, &r), -ENODATA);
	mig_stream_close(s);
	close(fd);
}

struct corruption {
	const char *what;
	int rec;		/* record whose header (or payload) is hit; -1: the preamble */
	int off;		/* offset in it (the header's, then the payload's) */
	int flip;		/* flip a bit there, or: */
	uint32_t value;		/* write this u32 there */
	bool reseal;		/* then make the header check right again (a hostile peer) */
	int err;
	int good;		/* records read before the refusal */
	const char *why;	/* in the reason */
};

static void reseal(int fd, off_t hdr)
{
	uint8_t h[MIG_HDR_SIZE];
	uint64_t check;

	assert_int_equal(pread(fd, h, sizeof(h), hdr), sizeof(h));
	check = XXH3_64bits(h, 24);
	poke(fd, hdr + 24, &check, 8);
}

static void test_stream_refuses_each_corruption(void **state)
{
	static const struct corruption cases[] = {
		{ "magic", -1, 0, 1, 0, false, -EPROTO, 0, "not a kvmem migration stream" },
		{ "version", -1, 8, 0, 2, false, -EPROTO, 0, "version 2" },
		{ "unknown flags", -1, 12, 0, 0x100, false, -EPROTO, 0, "flags 0x100" },
		/* Any header bit: refused before the length is believed. */
		{ "type", 1, 0, 1, 0, false, -EBADMSG, 1, "record 1: header checksum" },
		{ "length", 2, 4, 0, 16, false, -EBADMSG, 2, "header checksum" },
		{ "sequence", 3, 8, 1, 0, false, -EBADMSG, 3, "header checksum" },
		{ "check", 2, 16, 1, 0, false, -EBADMSG, 2, "header checksum" },
		{ "header check", 2, 24, 1, 0, false, -EBADMSG, 2, "header checksum" },
		/* A peer that seals what it sends: every field is still checked. */
		{ "unknown type", 1, 0, 0, 99, true, -EPROTO, 1, "unknown type 99" },
		{ "type zero", 1, 0, 0, 0, true, -EPROTO, 1, "unknown type 0" },
		{ "length over its type's limit", 1, 4, 0, 9, true, -EMSGSIZE, 1, "at most 8" },
		{ "length beyond any record", 2, 4, 0, 0xffffffffu, true, -EMSGSIZE, 2, "(pages)" },
		{ "length shorter", 2, 4, 0, 16, true, -EBADMSG, 2, "(pages): checksum" },
		{ "length zero", 2, 4, 0, 0, true, -EBADMSG, 2, "(pages): checksum" },
		{ "sequence", 3, 8, 1, 0, true, -EPROTO, 3, "lost or replayed" },
		{ "first sequence", 0, 8, 1, 0, true, -EPROTO, 0, "lost or replayed" },
		{ "check", 2, 16, 1, 0, true, -EBADMSG, 2, "record 2 (pages): checksum mismatch" },
		{ "type changed to another valid one", 4, 0, 0, MIG_REC_COMMIT, true, -EBADMSG, 4,
		  "(commit): checksum" },
		/* The payload. */
		{ "payload", 2, MIG_HDR_SIZE + 16 + 777, 1, 0, false, -EBADMSG, 2, "checksum" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct corruption *k = &cases[i];
		int fd = write_sample(0), good;
		off_t hdr = k->rec < 0 ? 0 : rec_at(fd, k->rec);
		char why[200];

		if (k->flip)
			flip(fd, hdr + k->off);
		else
			poke(fd, hdr + k->off, &k->value, 4);
		if (k->reseal)
			reseal(fd, hdr);
		print_message("%s%s\n", k->what, k->reseal ? " (sealed)" : "");
		assert_int_equal(read_until_error(fd, 0, &good, why, sizeof(why)), k->err);
		assert_int_equal(good, k->good);
		assert_non_null(strstr(why, k->why));
		close(fd);
	}
}

/* Whole records of a good stream, repeated or reordered. */
static void test_stream_refuses_replay_and_reorder(void **state)
{
	int src = write_sample(0);
	static const int orders[][4] = { { 0, 1, 1, 2 }, { 0, 2, 1, 3 } };
	static const int goods[] = { 2, 1 };

	(void)state;
	for (size_t o = 0; o < 2; o++) {
		int fd = memfd_create("test-stream", MFD_CLOEXEC), good;
		uint8_t buf[MIG_PREAMBLE_SIZE + MIG_HDR_SIZE + 16 + 2 * PAGE];
		off_t at = 0;
		char why[200];

		assert_int_equal(pread(src, buf, MIG_PREAMBLE_SIZE, 0), MIG_PREAMBLE_SIZE);
		poke(fd, 0, buf, MIG_PREAMBLE_SIZE);
		at = MIG_PREAMBLE_SIZE;
		for (int i = 0; i < 4; i++) {
			off_t from = rec_at(src, orders[o][i]);
			size_t len = (size_t)(rec_at(src, orders[o][i] + 1) - from);

			assert_int_equal(pread(src, buf, len, from), (ssize_t)len);
			poke(fd, at, buf, len);
			at += (off_t)len;
		}
		assert_int_equal(read_until_error(fd, 0, &good, why, sizeof(why)), -EPROTO);
		assert_int_equal(good, goods[o]);
		assert_non_null(strstr(why, "lost or replayed"));
		close(fd);
	}
	close(src);
}

static void test_stream_refuses_truncation(void **state)
{
	int fd = write_sample(0), good;
	char why[200];

	(void)state;
	/* Cut inside the pages record's payload, then inside a header, then at a boundary. */
	assert_int_equal(ftruncate(fd, rec_at(fd, 2) + MIG_HDR_SIZE + 100), 0);
	assert_int_equal(read_until_error(fd, 0, &good, why, sizeof(why)), -EPIPE);
	assert_int_equal(good, 2);
	assert_int_equal(ftruncate(fd, rec_at(fd, 2) + 10), 0);
	assert_int_equal(read_until_error(fd, 0, &good, why, sizeof(why)), -EPIPE);
	assert_int_equal(good, 2);
	assert_int_equal(ftruncate(fd, rec_at(fd, 2)), 0);
	assert_int_equal(read_until_error(fd, 0, &good, why, sizeof(why)), -ENODATA);
	assert_int_equal(good, 2);
	assert_int_equal(ftruncate(fd, 7), 0);
	assert_int_equal(read_until_error(fd, 0, &good, why, sizeof(why)), -EPIPE);
	assert_int_equal(ftruncate(fd, 0), 0);
	assert_int_equal(read_until_error(fd, 0, &good, why, sizeof(why)), -EPROTO);
	assert_non_null(strstr(why, "empty"));
	close(fd);
}

/* A snapshot file is not a migration stream, nor the other way round. */
static void test_stream_form_must_match(void **state)
{
	int fd = write_sample(MIG_F_FILE), good;
	char why[200];

	(void)state;
	assert_int_equal(read_until_error(fd, 0, &good, why, sizeof(why)), -EPROTO);
	assert_non_null(strstr(why, "a snapshot file where a live migration stream"));
	assert_int_equal(read_until_error(fd, MIG_F_FILE, &good, why, sizeof(why)), -ENODATA);
	assert_int_equal(good, 5);
	close(fd);
}

/* Every way a PAGES payload can disagree with itself. */
static void test_stream_pages_decode_checks_lengths(void **state)
{
	uint8_t buf[16 + 2 * PAGE] = { 0 };
	struct mig_rec r = { .type = MIG_REC_PAGES, .data = buf };
	struct mig_pages p;
	uint64_t gfn;
	uint32_t count, kind;

	(void)state;
#define SET(g, c, k)                                  \
	do {                                          \
		gfn = (g), count = (c), kind = (k);   \
		memcpy(buf, &gfn, 8);                 \
		memcpy(buf + 8, &count, 4);           \
		memcpy(buf + 12, &kind, 4);           \
	} while (0)
	SET(5, 2, MIG_PAGE_DATA);
	r.len = 16 + 2 * PAGE;
	assert_int_equal(mig_pages_decode(&r, &p), 0);
	r.len = 16 + 2 * PAGE - 1;	/* a byte short */
	assert_int_equal(mig_pages_decode(&r, &p), -EBADMSG);
	SET(5, 1, MIG_PAGE_DATA);	/* a page too many */
	r.len = 16 + 2 * PAGE;
	assert_int_equal(mig_pages_decode(&r, &p), -EBADMSG);
	SET(5, 0, MIG_PAGE_ZERO);
	r.len = 16;
	assert_int_equal(mig_pages_decode(&r, &p), -EBADMSG);
	SET(5, MIG_PAGES_MAX + 1, MIG_PAGE_ZERO);
	assert_int_equal(mig_pages_decode(&r, &p), -EBADMSG);
	SET(5, MIG_PAGES_MAX, MIG_PAGE_ZERO);
	assert_int_equal(mig_pages_decode(&r, &p), 0);
	SET(5, 3, MIG_PAGE_KINDS);
	assert_int_equal(mig_pages_decode(&r, &p), -EBADMSG);
	SET(5, 3, 0);
	assert_int_equal(mig_pages_decode(&r, &p), -EBADMSG);
	SET(UINT64_MAX - 1, 3, MIG_PAGE_ZERO);	/* the run would wrap */
	assert_int_equal(mig_pages_decode(&r, &p), -EBADMSG);
	SET(5, 2, MIG_PAGE_FRAME_REF);
	r.len = 16 + 16;
	assert_int_equal(mig_pages_decode(&r, &p), 0);
	r.len = 12;			/* not even the run's header */
	assert_int_equal(mig_pages_decode(&r, &p), -EBADMSG);
	r.type = MIG_REC_VCPU;
	r.len = 16 + 16;
	assert_int_equal(mig_pages_decode(&r, &p), -EBADMSG);
#undef SET
}

/* The writer keeps to each type's limit and the stream stays usable after a refusal. */
static void test_stream_writer_refuses_oversized_record(void **state)
{
	int fd = memfd_create("test-stream", MFD_CLOEXEC);
	struct mig_stream *s;
	uint8_t big[16] = { 0 };
	struct mig_rec r;

	(void)state;
	struct iovec two[2] = { { big, 8 }, { big, SIZE_MAX - 4 } };
	static uint8_t frames[MIG_PAGES_MAX * (8 + 32 + PAGE)];
	struct iovec fr = { frames, sizeof(frames) };
	struct mig_pages p;

	assert_int_equal(mig_stream_open(fd, true, 0, -1, &s), 0);
	assert_int_equal(mig_put_buf(s, MIG_REC_ROUND, big, sizeof(big)), -EMSGSIZE);
	/* Pieces whose lengths would wrap a sum. */
	assert_int_equal(mig_put(s, MIG_REC_ROUND, two, 2), -EMSGSIZE);
	assert_int_equal(mig_put_buf(s, MIG_REC_TYPES, big, 1), -EINVAL);
	/* A pages record must be what it says: count, kind, run, bytes. */
	assert_int_equal(mig_put_pages(s, 1, 1, MIG_PAGE_DATA, &fr, 1), -EINVAL);
	assert_int_equal(mig_put_pages(s, 1, 0, MIG_PAGE_ZERO, NULL, 0), -EINVAL);
	assert_int_equal(mig_put_pages(s, 1, MIG_PAGES_MAX + 1, MIG_PAGE_ZERO, NULL, 0), -EINVAL);
	assert_int_equal(mig_put_pages(s, 1, 1, MIG_PAGE_KINDS, NULL, 0), -EINVAL);
	assert_int_equal(mig_put_pages(s, UINT64_MAX, 2, MIG_PAGE_ZERO, NULL, 0), -EINVAL);
	assert_int_equal(mig_stream_bytes(s), MIG_PREAMBLE_SIZE);
	assert_int_equal(mig_get(s, &r), -EBADF);
	/* Still usable: the largest record there is, then a small one. */
	assert_int_equal(mig_put_pages(s, 7, MIG_PAGES_MAX, MIG_PAGE_FRAME, &fr, 1), 0);
	assert_int_equal(mig_put_buf(s, MIG_REC_ROUND, big, 8), 0);
	mig_stream_close(s);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	s = reader(fd, 0);
	assert_int_equal(mig_put_buf(s, MIG_REC_ROUND, big, 8), -EBADF);
	assert_int_equal(mig_get(s, &r), 0);
	assert_int_equal(mig_pages_decode(&r, &p), 0);
	assert_int_equal(p.count, MIG_PAGES_MAX);
	assert_int_equal(p.kind, MIG_PAGE_FRAME);
	assert_int_equal(mig_get(s, &r), 0);
	assert_int_equal(r.type, MIG_REC_ROUND);
	assert_int_equal(r.seq, 1);
	mig_stream_close(s);
	close(fd);
}

/* A decoder reading past the payload gets zeros and a bad cursor, never memory beyond it. */
static void test_stream_cursor_stays_inside(void **state)
{
	uint8_t four[4] = { 1, 2, 3, 4 };
	struct mig_rec r = { .type = MIG_REC_ROUND, .len = 4, .data = four };
	struct mig_cur c = mig_cur_of(&r);

	(void)state;
	assert_int_equal(mig_cur_u64(&c), 0);
	assert_true(c.bad);
	assert_false(mig_cur_done(&c));
	c = mig_cur_of(&r);
	assert_null(mig_cur_bytes(&c, SIZE_MAX));
	assert_int_equal(mig_cur_u32(&c), 0);
	assert_false(mig_cur_done(&c));
	c = mig_cur_of(&r);
	assert_int_equal(mig_cur_u32(&c), 0x04030201);
	assert_true(mig_cur_done(&c));
}

/* A peer that goes quiet is a timeout; one that goes away is an error, never SIGPIPE. */
static void test_stream_peer_silent_or_gone(void **state)
{
	int sv[2];
	struct mig_stream *s, *w;
	struct mig_rec r;
	uint8_t junk[64 * 1024] = { 0 };
	int ret = 0;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(mig_stream_open(sv[0], false, 0, 50, &s), 0);
	assert_int_equal(mig_get(s, &r), -ETIMEDOUT);
	assert_non_null(strstr(mig_stream_error(s), "50 ms"));
	mig_stream_close(s);
	close(sv[0]);
	/* The reader's end is closed: the writer's first or a later write fails. */
	if (mig_stream_open(sv[1], true, 0, 1000, &w) == 0) {
		for (int i = 0; i < 64 && !ret; i++)
			ret = mig_put_buf(w, MIG_REC_DEVICE, junk, sizeof(junk));
		assert_int_equal(ret, -EPIPE);
		mig_stream_close(w);
	}
	close(sv[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stream_round_trip),
		cmocka_unit_test(test_stream_largest_record_after_small_ones),
		cmocka_unit_test(test_stream_refuses_each_corruption),
		cmocka_unit_test(test_stream_refuses_replay_and_reorder),
		cmocka_unit_test(test_stream_refuses_truncation),
		cmocka_unit_test(test_stream_form_must_match),
		cmocka_unit_test(test_stream_pages_decode_checks_lengths),
		cmocka_unit_test(test_stream_writer_refuses_oversized_record),
		cmocka_unit_test(test_stream_cursor_stays_inside),
		cmocka_unit_test(test_stream_peer_silent_or_gone),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
