/* SPDX-License-Identifier: MIT */
/*
 * The migration stream: what a kvmem host sends another to move a VM, and
 * what a snapshot file holds (the same records). It is read the way guest
 * input is read: a peer may be broken or hostile, so every record is
 * length-checked against its type's limit and checksummed, records are
 * numbered (a dropped, repeated or reordered record is refused), and an
 * unknown record type ends the stream with a clear reason, never a guess.
 *
 * Layout: a preamble (the magic "KVMEMMIG", the format version, flags),
 * then records:
 *
 *   u32 type | u32 length | u64 sequence | u64 check | u64 header check | payload
 *
 * all little-endian. The header check is XXH3-64 of the 24 bytes before it,
 * verified before the length is believed (a corrupt length must not make
 * the reader wait for bytes that will never come); the check is XXH3-64 of
 * the payload, seeded with XXH3-64 of the first 16 header bytes. Both
 * detect corruption, not forgery: a peer proves who it is in the handshake
 * (a secret both hosts hold), not here.
 *
 * The stream works over anything a file descriptor can be: a TCP or UNIX
 * socket, a pipe, a file. A record's read or write takes at most the
 * stream's timeout (a peer that stops talking, or trickles, is an error, not
 * a hang), and writes keep to the stream's bandwidth limit, which may change
 * while it runs. Sockets are written without SIGPIPE; a process writing to a
 * pipe must block or ignore SIGPIPE itself (kvmem blocks it everywhere).
 */
#ifndef KVMEM_MIGRATE_STREAM_H
#define KVMEM_MIGRATE_STREAM_H

#include <endian.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#define MIG_MAGIC "KVMEMMIG"
#define MIG_VERSION 1
#define MIG_PAGE_SIZE 4096
#define MIG_HDR_SIZE 32
#define MIG_PREAMBLE_SIZE 16
/* Pages one PAGES record carries at most: 1 MiB of content a record. */
#define MIG_PAGES_MAX 256
#define MIG_REC_MAX (MIG_PAGES_MAX * (MIG_PAGE_SIZE + 8 + 32) + 64)
/* Bytes of a text payload (a VM description, a reason) at most. */
#define MIG_TEXT_MAX (64 * 1024)

/* Preamble flags. */
#define MIG_F_FILE 0x1		/* a snapshot file, not a live migration */

enum mig_rec_type {
	MIG_REC_VM = 1,		/* the VM's description (JSON): stage 1, the reservation asked */
	MIG_REC_RESERVE,	/* destination's answer (JSON: accepted, or why not) */
	MIG_REC_ROUND,		/* u32 round, u32 stage: what follows belongs to it */
	MIG_REC_PAGES,		/* a run of pages of one kind (struct mig_pages) */
	MIG_REC_VCPU,		/* u32 vCPU index, then the accelerator's state items */
	MIG_REC_DEVICE,		/* u32 device index, then the device's state */
	MIG_REC_END,		/* the source sent everything (u64 pages, u64 bytes) */
	MIG_REC_COMMIT,		/* destination: everything arrived and was applied */
	MIG_REC_ERROR,		/* either side: giving up, and why (text) */
	MIG_REC_AUTH,		/* handshake: a challenge or its answer */
	MIG_REC_TYPES		/* one past the last */
};

/* The kind of a PAGES record's pages. */
enum mig_page_kind {
	MIG_PAGE_ZERO = 1,	/* all zero: no content sent */
	MIG_PAGE_BALLOONED,	/* given to the balloon: no content, not resident */
	MIG_PAGE_DATA,		/* content: count pages of MIG_PAGE_SIZE */
	MIG_PAGE_FRAME,		/* a shared frame's first use: per page u64 id, 32-byte hash, content */
	MIG_PAGE_FRAME_REF,	/* a frame sent before in this stream: per page u64 id */
	MIG_PAGE_SCATTER,	/* content of pages anywhere (gfn 0): per page u64 gfn, content */
	MIG_PAGE_KINDS
};

/* A PAGES record, decoded: content points into the record's payload. */
struct mig_pages {
	uint64_t gfn;		/* first guest frame of the run */
	uint32_t count;		/* 1..MIG_PAGES_MAX */
	uint32_t kind;		/* enum mig_page_kind */
	const uint8_t *data;	/* the per-page part (by kind), count units of mig_page_unit() */
};

/* A record as read: payload valid until the next mig_get() on its stream. */
struct mig_rec {
	uint32_t type;
	uint32_t len;
	uint64_t seq;
	const uint8_t *data;
};

struct mig_stream;

/*
 * A stream over fd (not owned: the caller closes it). writing: this side
 * sends records (and writes the preamble at once); otherwise it reads them
 * (and reads and checks the preamble at the first mig_get). flags: the
 * preamble's (MIG_F_*), written or expected. timeout_ms: the longest one
 * record's read or write may take (-1: no limit, for files).
 */
int mig_stream_open(int fd, bool writing, uint32_t flags, int timeout_ms,
		    struct mig_stream **out);
void mig_stream_close(struct mig_stream *s);
/* Why the last call failed, for a log line or a reply ("" when none did). */
const char *mig_stream_error(const struct mig_stream *s);
/* Bytes moved so far, preamble and headers included (from any thread). */
uint64_t mig_stream_bytes(const struct mig_stream *s);
/* Pace writes to this many bytes per second (0: as fast as the fd takes them). */
void mig_stream_set_rate(struct mig_stream *s, uint64_t bytes_per_s);

/* Write one record, its payload gathered from iov. 0 or -errno. */
int mig_put(struct mig_stream *s, uint32_t type, const struct iovec *iov, int iovcnt);
/* mig_put of one buffer. */
int mig_put_buf(struct mig_stream *s, uint32_t type, const void *p, size_t len);
/*
 * Write a PAGES record: its run header encoded here, the per-page part
 * gathered from iov, which must be count units of mig_page_unit(kind)
 * (-EINVAL otherwise, nothing written: a source's mistake is caught where
 * it is made, not at the destination).
 */
int mig_put_pages(struct mig_stream *s, uint64_t gfn, uint32_t count, uint32_t kind,
		  const struct iovec *iov, int iovcnt);

/*
 * Read the next record. 0 with *r filled; -ENODATA at a clean end of the
 * stream between records; -EPROTO (bad preamble, version, type, sequence),
 * -EBADMSG (a check mismatch: header or payload), -EMSGSIZE (length over the type's limit),
 * -EPIPE (ended inside a record), -ETIMEDOUT, or another -errno of the fd.
 */
int mig_get(struct mig_stream *s, struct mig_rec *r);

/* Little-endian fields of records and files, at any alignment. */
static inline void mig_le32enc(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}

static inline void mig_le64enc(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static inline uint32_t mig_le32dec(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return le32toh(v);
}

static inline uint64_t mig_le64dec(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return le64toh(v);
}

/* SHA-256 of len bytes at p (a page's name, where guests choose the content). */
void mig_sha256(const void *p, size_t len, uint8_t out[32]);

/* The name of a record type, for messages ("record 12 (pages): ..."). */
const char *mig_rec_name(uint32_t type);
/* Bytes each page of a kind takes in a PAGES record (0 for markers); 0 for no kind. */
size_t mig_page_unit(uint32_t kind);
/* Decode a PAGES record's payload; -EBADMSG if it is not exactly one. */
int mig_pages_decode(const struct mig_rec *r, struct mig_pages *out);

/*
 * A cursor over a payload: reads past its end set bad (and return zeros)
 * instead of reading outside it, so a decoder checks once at the end.
 */
struct mig_cur {
	const uint8_t *p;
	size_t left;
	bool bad;
};

static inline struct mig_cur mig_cur_of(const struct mig_rec *r)
{
	return (struct mig_cur){ .p = r->data, .left = r->len, .bad = false };
}
uint32_t mig_cur_u32(struct mig_cur *c);
uint64_t mig_cur_u64(struct mig_cur *c);
/* n bytes in place, or NULL (and bad) when fewer are left. */
const uint8_t *mig_cur_bytes(struct mig_cur *c, size_t n);
/* Everything read, nothing left over, nothing read past the end. */
static inline bool mig_cur_done(const struct mig_cur *c)
{
	return !c->bad && c->left == 0;
}

#endif
