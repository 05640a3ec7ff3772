/* SPDX-License-Identifier: MIT */
/* Pre-copy live migration (migrate/migrate.h): the source's and the destination's side. */
#define LOG_TAG "migrate"
#include "migrate/migrate.h"
#include "migrate/migrate_internal.h"

#include <ctype.h>
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/sandbox.h"
#include "core/thread.h"
#include "core/vm.h"
#include "mem/export.h"
#include "mem/gm.h"
#include "mem/memmap.h"
#include "mem/reclaim.h"
#include "mem/txn.h"

#define HASH_LEN 32

const char *mig_stage_name(enum mig_stage s)
{
	switch (s) {
	case MIG_STAGE_RESERVATION:
		return "reservation";
	case MIG_STAGE_PRECOPY:
		return "pre-copy";
	case MIG_STAGE_STOP_COPY:
		return "stop-and-copy";
	case MIG_STAGE_COMMIT:
		return "commitment";
	case MIG_STAGE_ACTIVATION:
		return "activation";
	case MIG_STAGE_DONE:
		return "done";
	case MIG_STAGE_FAILED:
		return "failed";
	case MIG_STAGE_CANCELLED:
		return "cancelled";
	case MIG_STAGE_LOAD:
		return "loading";
	}
	return "unknown";
}

const char *mig_kind_name(enum mig_kind k)
{
	switch (k) {
	case MIG_KIND_MIGRATION:
		return "migration";
	case MIG_KIND_SAVE:
		return "save";
	case MIG_KIND_SNAPSHOT:
		return "snapshot";
	case MIG_KIND_RESTORE:
		return "restore";
	}
	return "unknown";
}

/* --- progress --- */

/* Bytes the job moved: written to its peer or file, or read from its image. */
static uint64_t job_bytes(struct mig_job *j)
{
	if (j->file)
		return snapw_bytes(j->file);
	if (j->kind == MIG_KIND_RESTORE)
		return __atomic_load_n(&j->bytes_read, __ATOMIC_RELAXED);
	return mig_stream_bytes(j->source ? j->out : j->in);
}

void mig_notify(struct mig_job *j)
{
	void (*fn)(void *) = j->source ? j->sops->progress : j->dops->progress;

	if (fn)
		fn(j->arg);
}

/*
 * A failure is final: a lazily restored VM can fail on a page it touches
 * before its job has said "done", and that job must not then say "done".
 */
void mig_set_stage(struct mig_job *j, enum mig_stage s)
{
	pthread_mutex_lock(&j->lock);
	if (j->prog.stage != MIG_STAGE_FAILED)
		j->prog.stage = s;
	pthread_mutex_unlock(&j->lock);
	mig_notify(j);
}

/* The first reason a migration fails is the one it keeps. */
__attribute__((format(printf, 2, 3)))
int mig_failf(struct mig_job *j, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&j->lock);
	if (!j->prog.error[0]) {
		va_start(ap, fmt);
		vsnprintf(j->prog.error, sizeof(j->prog.error), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&j->lock);
	return -EPROTO;
}

void mig_count_pages(struct mig_job *j, uint32_t kind, uint64_t n)
{
	pthread_mutex_lock(&j->lock);
	j->prog.pages[kind] += n;
	j->prog.bytes = job_bytes(j);
	pthread_mutex_unlock(&j->lock);
}

void mig_job_progress(struct mig_job *j, struct mig_progress *out)
{
	pthread_mutex_lock(&j->lock);
	*out = j->prog;
	pthread_mutex_unlock(&j->lock);
}

void mig_job_cancel(struct mig_job *j)
{
	__atomic_store_n(&j->cancel, true, __ATOMIC_RELEASE);
	/* A record in flight ends now: a blocked read or write fails at once (not once closed). */
	pthread_mutex_lock(&j->lock);
	if (j->fd >= 0)
		shutdown(j->fd, SHUT_RDWR);
	pthread_mutex_unlock(&j->lock);
}

void mig_job_set(struct mig_job *j, uint32_t downtime_ms, uint64_t bandwidth)
{
	pthread_mutex_lock(&j->lock);
	if (downtime_ms)
		j->downtime_ms = j->prog.downtime_limit_ms = downtime_ms;
	if (bandwidth != UINT64_MAX) {
		j->bandwidth = j->prog.bandwidth = bandwidth;
		if (j->out)
			mig_stream_set_rate(j->out, bandwidth);
	}
	pthread_mutex_unlock(&j->lock);
}

void mig_job_fail(struct mig_job *j, const char *why)
{
	pthread_mutex_lock(&j->lock);
	j->prog.stage = MIG_STAGE_FAILED;
	snprintf(j->prog.error, sizeof(j->prog.error), "%s", why);
	pthread_mutex_unlock(&j->lock);
}

bool mig_job_is_source(const struct mig_job *j)
{
	return j->source;
}

bool mig_job_finished(struct mig_job *j)
{
	return __atomic_load_n(&j->finished, __ATOMIC_ACQUIRE);
}

void mig_job_drop(struct mig_job *j)
{
	snapr_close(j->image);
	json_decref(j->desc);
	pthread_mutex_destroy(&j->lock);
	kv_free(j);
}

void mig_job_free(struct mig_job *j)
{
	if (!j)
		return;
	pthread_join(j->thread, NULL);
	mig_job_drop(j);
}

bool mig_cancelled(struct mig_job *j)
{
	return __atomic_load_n(&j->cancel, __ATOMIC_ACQUIRE);
}

/* --- records both sides use --- */

int mig_put_json(struct mig_stream *s, uint32_t type, const json_t *o)
{
	char *text = json_dumps(o, JSON_COMPACT);
	int ret;

	if (!text)
		return -ENOMEM;
	ret = mig_put_buf(s, type, text, strlen(text));
	free(text);
	return ret;
}

/* A record's payload as a JSON object, or NULL. */
json_t *mig_rec_json(const struct mig_rec *r)
{
	json_t *o = json_loadb((const char *)r->data, r->len, JSON_REJECT_DUPLICATES, NULL);

	if (o && !json_is_object(o)) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* Tell the peer why (best effort: the stream may be what failed). */
static void put_error(struct mig_job *j, struct mig_stream *s)
{
	char why[sizeof(j->prog.error)];

	pthread_mutex_lock(&j->lock);
	memcpy(why, j->prog.error, sizeof(why));
	pthread_mutex_unlock(&j->lock);
	if (s)
		mig_put_buf(s, MIG_REC_ERROR, why, strlen(why));
}

/* Read the next record; a peer's ERROR record or a stream failure becomes the job's reason. */
static int get_rec(struct mig_job *j, struct mig_stream *s, struct mig_rec *r)
{
	int ret = mig_get(s, r);

	if (ret) {
		if (mig_cancelled(j))
			return mig_failf(j, "cancelled");
		return mig_failf(j, "reading from %s: %s", j->prog.peer,
			     ret == -ENODATA ? "the peer closed the connection" : mig_stream_error(s));
	}
	if (r->type == MIG_REC_ERROR)
		return mig_failf(j, "the %s gave up: %.*s", j->source ? "destination" : "source",
			     (int)(r->len < 180 ? r->len : 180), (const char *)r->data);
	return 0;
}

static int put_check(struct mig_job *j, struct mig_stream *s, int ret)
{
	if (!ret)
		return 0;
	if (mig_cancelled(j))
		return mig_failf(j, "cancelled");
	return mig_failf(j, "writing to %s: %s", j->prog.peer, mig_stream_error(s));
}

/* --- the handshake --- */

#define NONCE_LEN 32

/* HMAC-SHA256(secret, role || first || second). */
static void prove(const struct mig_job *j, const char *role, const uint8_t *first,
		  const uint8_t *second, uint8_t out[HASH_LEN])
{
	uint8_t msg[32 + 2 * NONCE_LEN];
	unsigned int n = HASH_LEN;
	size_t rl = strnlen(role, 32);

	memcpy(msg, role, rl);
	memcpy(msg + rl, first, NONCE_LEN);
	memcpy(msg + rl + NONCE_LEN, second, NONCE_LEN);
	if (!HMAC(EVP_sha256(), j->params.secret, (int)j->params.secret_len, msg,
		  rl + 2 * NONCE_LEN, out, &n))
		memset(out, 0, HASH_LEN);
}

/* The next record, which must be an AUTH one of exactly len bytes. */
static int get_auth(struct mig_job *j, struct mig_rec *r, uint32_t len)
{
	int ret = get_rec(j, j->in, r);

	if (ret)
		return ret;
	if (r->type != MIG_REC_AUTH || r->len != len)
		return mig_failf(j, "the %s did not answer the handshake (a %s record): does it hold "
			     "the migration secret?", j->source ? "destination" : "source",
			     mig_rec_name(r->type));
	return 0;
}

/*
 * destination -> source: its nonce; source -> destination: its nonce and
 * its proof over both; destination -> source: its proof over both, the
 * other way round (a proof cannot be replayed as the other side's).
 */
static int handshake(struct mig_job *j)
{
	uint8_t mine[NONCE_LEN], theirs[NONCE_LEN], proof[HASH_LEN], msg[NONCE_LEN + HASH_LEN];
	struct mig_rec r;
	int ret;

	if (!j->params.secret)
		return 0;
	if (getrandom(mine, sizeof(mine), 0) != sizeof(mine))
		return mig_failf(j, "no random numbers: %s", strerror(errno));
	if (!j->source) {
		ret = put_check(j, j->out, mig_put_buf(j->out, MIG_REC_AUTH, mine, NONCE_LEN));
		if (!ret)
			ret = get_auth(j, &r, NONCE_LEN + HASH_LEN);
		if (ret)
			return ret;
		memcpy(theirs, r.data, NONCE_LEN);
		prove(j, "kvmem-source", mine, theirs, proof);
		if (CRYPTO_memcmp(proof, r.data + NONCE_LEN, HASH_LEN))
			return mig_failf(j, "the source does not hold the migration secret");
		prove(j, "kvmem-destination", theirs, mine, proof);
		return put_check(j, j->out, mig_put_buf(j->out, MIG_REC_AUTH, proof, HASH_LEN));
	}
	ret = get_auth(j, &r, NONCE_LEN);
	if (ret)
		return ret;
	memcpy(theirs, r.data, NONCE_LEN);
	memcpy(msg, mine, NONCE_LEN);
	prove(j, "kvmem-source", theirs, mine, msg + NONCE_LEN);
	ret = put_check(j, j->out, mig_put_buf(j->out, MIG_REC_AUTH, msg, sizeof(msg)));
	if (!ret)
		ret = get_auth(j, &r, HASH_LEN);
	if (ret)
		return ret;
	prove(j, "kvmem-destination", mine, theirs, proof);
	if (CRYPTO_memcmp(proof, r.data, HASH_LEN))
		return mig_failf(j, "the destination does not hold the migration secret");
	return 0;
}

/* --- a set of 64-bit ids (shared frames sent, or received and where) --- */

struct idmap {
	uint64_t *key;		/* 0: empty (ids are never 0) */
	uint64_t *val;
	uint64_t cap, n;
};

static uint64_t *idmap_slot(struct idmap *m, uint64_t key)
{
	uint64_t i = (key * 0x9e3779b97f4a7c15ULL) & (m->cap - 1);

	while (m->key[i] && m->key[i] != key)
		i = (i + 1) & (m->cap - 1);
	return &m->key[i];
}

static bool idmap_get(struct idmap *m, uint64_t key, uint64_t *val)
{
	uint64_t *k;

	if (!m->cap)
		return false;
	k = idmap_slot(m, key);
	if (!*k)
		return false;
	if (val)
		*val = m->val[k - m->key];
	return true;
}

static int idmap_put(struct idmap *m, uint64_t key, uint64_t val)
{
	uint64_t *k;

	if ((m->n + 1) * 2 > m->cap) {
		struct idmap big = { .cap = m->cap ? m->cap * 2 : 1024 };

		big.key = kv_calloc(big.cap, sizeof(uint64_t));
		big.val = kv_calloc(big.cap, sizeof(uint64_t));
		if (!big.key || !big.val) {
			kv_free(big.key);
			kv_free(big.val);
			return -ENOMEM;
		}
		for (uint64_t i = 0; i < m->cap; i++)
			if (m->key[i])
				idmap_put(&big, m->key[i], m->val[i]);
		kv_free(m->key);
		kv_free(m->val);
		*m = big;
	}
	k = idmap_slot(m, key);
	if (!*k)
		m->n++;
	*k = key;
	m->val[k - m->key] = val;
	return 0;
}

static void idmap_free(struct idmap *m)
{
	kv_free(m->key);
	kv_free(m->val);
	memset(m, 0, sizeof(*m));
}

/*
 * Every page of the VM in order, as the guest reads it (a ballooned page as
 * zeros: its content is nobody's), into prog.checksum. The VM stands still.
 */
int mig_checksum_memory(struct mig_job *j, struct gm *gm)
{
	struct mem_export_page kinds[MEM_EXPORT_MAX];
	uint8_t *buf = kv_zalloc(MEM_EXPORT_MAX * MEM_PAGE_SIZE);
	static const uint8_t zero[MEM_PAGE_SIZE];
	XXH3_state_t *st = XXH3_createState();
	uint64_t nr = mem_nr_pages(gm);
	XXH128_hash_t h;
	int ret = 0;

	if (!buf || !st) {
		ret = -ENOMEM;
		goto out;
	}
	XXH3_128bits_reset(st);
	for (uint64_t idx = 0; idx < nr && !ret; idx += MEM_EXPORT_MAX) {
		uint32_t n = nr - idx < MEM_EXPORT_MAX ? (uint32_t)(nr - idx) : MEM_EXPORT_MAX;

		ret = mem_export_pages(gm, idx, n, NULL, kinds, buf);
		for (uint32_t i = 0; i < n && !ret; i++)
			XXH3_128bits_update(st, kinds[i].kind == MEM_EXPORT_DATA ||
						       kinds[i].kind == MEM_EXPORT_FRAME
					      ? buf + (uint64_t)i * MEM_PAGE_SIZE : zero,
					    MEM_PAGE_SIZE);
	}
	h = XXH3_128bits_digest(st);
	pthread_mutex_lock(&j->lock);
	snprintf(j->prog.checksum, sizeof(j->prog.checksum), "%016llx%016llx",
		 (unsigned long long)h.high64, (unsigned long long)h.low64);
	pthread_mutex_unlock(&j->lock);
out:
	XXH3_freeState(st);
	kv_free(buf);
	return ret;
}

/* --- the source --- */

struct sender {
	struct mig_job *j;
	struct gm *gm;
	struct idmap frames;		/* frames whose content went already */
	uint8_t *data;			/* MEM_EXPORT_MAX pages read */
	uint8_t *unit;			/* MIG_PAGES_MAX FRAME units being gathered */
	uint8_t *scatter;		/* MIG_PAGES_MAX SCATTER units being gathered */
	uint32_t nr_scatter;
	struct mem_export_page kinds[MEM_EXPORT_MAX];
	/* Shared frames, named by their content: an id per SHA-256 sent. */
	uint8_t (*frame_hash)[HASH_LEN];	/* by id - 1 */
	uint64_t nr_frames, cap_frames;
	uint8_t hash[MEM_EXPORT_MAX][HASH_LEN];	/* this window's shared pages' */
	uint64_t frame_id[MEM_EXPORT_MAX];	/* ... and the ids they go by */
};

/*
 * Runs of data pages shorter than this travel scattered, many to a record:
 * a round's dirty pages are mostly single pages here and there, and one
 * record each (and its system calls) was most of the downtime.
 */
#define SCATTER_RUN 8

static uint64_t gfn_of(struct gm *gm, uint64_t idx)
{
	return mem_index_gpa(gm, idx) >> MEM_PAGE_SHIFT;
}

/* Pages [i, e) of the batch at idx, all of one stream kind, as one PAGES record. */
static int send_run(struct sender *s, uint64_t idx, uint32_t i, uint32_t e, uint32_t kind)
{
	struct mig_job *j = s->j;
	struct iovec iov;
	uint32_t n = e - i;
	int ret;

	iov.iov_len = (size_t)n * mig_page_unit(kind);
	switch (kind) {
	case MIG_PAGE_DATA:
		iov.iov_base = s->data + (uint64_t)i * MEM_PAGE_SIZE;
		break;
	case MIG_PAGE_FRAME:
	case MIG_PAGE_FRAME_REF:
		iov.iov_base = s->unit;
		break;
	default:
		iov.iov_base = NULL;
	}
	ret = mig_put_pages(j->out, gfn_of(s->gm, idx + i), n, kind, &iov, iov.iov_len ? 1 : 0);
	if (ret)
		return put_check(j, j->out, ret);
	mig_count_pages(j, kind, n);
	return 0;
}

/* The 64 bits of a hash a frame is looked up by (never 0: the map's empty key). */
static uint64_t hash_key(const uint8_t *h)
{
	return mig_le64dec(h) | 1;
}

/*
 * The stream kind of page i of the window. A shared page is named by what
 * was read of it, not by the frame that backs it (the guest may write it
 * between the look and the read, and a frame's page is reused by another
 * content once freed): its content's first time here is a FRAME with a new
 * id, later ones reference that id. Two contents whose hashes agree in the
 * 64 bits looked up by travel the second as plain data.
 */
static uint32_t stream_kind(struct sender *s, uint32_t i)
{
	uint64_t id;

	switch (s->kinds[i].kind) {
	case MEM_EXPORT_ZERO:
		return MIG_PAGE_ZERO;
	case MEM_EXPORT_BALLOONED:
		return MIG_PAGE_BALLOONED;
	case MEM_EXPORT_FRAME:
		mig_sha256(s->data + (uint64_t)i * MEM_PAGE_SIZE, MEM_PAGE_SIZE, s->hash[i]);
		if (idmap_get(&s->frames, hash_key(s->hash[i]), &id)) {
			if (memcmp(s->frame_hash[id - 1], s->hash[i], HASH_LEN))
				return MIG_PAGE_DATA;
			s->frame_id[i] = id;
			return MIG_PAGE_FRAME_REF;
		}
		if (s->nr_frames == s->cap_frames) {
			uint64_t cap = s->cap_frames ? 2 * s->cap_frames : 1024;
			void *p = kv_realloc(s->frame_hash, cap * HASH_LEN);

			if (!p)
				return MIG_PAGE_DATA;
			s->frame_hash = p;
			s->cap_frames = cap;
		}
		id = ++s->nr_frames;
		memcpy(s->frame_hash[id - 1], s->hash[i], HASH_LEN);
		if (idmap_put(&s->frames, hash_key(s->hash[i]), id)) {
			s->nr_frames--;
			return MIG_PAGE_DATA;
		}
		s->frame_id[i] = id;
		return MIG_PAGE_FRAME;
	default:
		return MIG_PAGE_DATA;
	}
}

static int flush_scatter(struct sender *s)
{
	struct iovec iov = { s->scatter, (size_t)s->nr_scatter * mig_page_unit(MIG_PAGE_SCATTER) };
	int ret;

	if (!s->nr_scatter)
		return 0;
	ret = mig_put_pages(s->j->out, 0, s->nr_scatter, MIG_PAGE_SCATTER, &iov, 1);
	if (ret)
		return put_check(s->j, s->j->out, ret);
	mig_count_pages(s->j, MIG_PAGE_DATA, s->nr_scatter);
	s->nr_scatter = 0;
	return 0;
}

static int scatter_page(struct sender *s, uint64_t idx, const uint8_t *page)
{
	uint8_t *u = s->scatter + (size_t)s->nr_scatter * mig_page_unit(MIG_PAGE_SCATTER);

	mig_le64enc(u, gfn_of(s->gm, idx));
	memcpy(u + 8, page, MEM_PAGE_SIZE);
	return ++s->nr_scatter == MIG_PAGES_MAX ? flush_scatter(s) : 0;
}

/*
 * Pages [start, e) of the window at idx: one stream kind, contiguous guest
 * frames. Short runs of data go scattered; the rest as a PAGES record.
 */
static int send_piece(struct sender *s, uint64_t idx, uint32_t start, uint32_t e, uint32_t kind)
{
	if (kind == MIG_PAGE_DATA && e - start < SCATTER_RUN) {
		for (uint32_t i = start; i < e; i++) {
			int ret = scatter_page(s, idx + i, s->data + (uint64_t)i * MEM_PAGE_SIZE);

			if (ret)
				return ret;
		}
		return 0;
	}
	return send_run(s, idx, start, e, kind);
}

/*
 * Send the pages of the window [idx, idx + n) whose bit is set in mask (bit
 * i for page idx + i): read with one pagemap call, cut into runs of one kind
 * over contiguous guest frames.
 */
static int send_window(struct sender *s, uint64_t idx, uint32_t n, const uint64_t *mask)
{
	uint32_t start = 0, kind = 0, units = 0;
	bool open = false;
	int ret = mem_export_pages(s->gm, idx, n, mask, s->kinds, s->data);

	if (ret)
		return mig_failf(s->j, "reading guest pages at index %" PRIu64 ": %s", idx,
			     strerror(-ret));
	for (uint32_t i = 0; i <= n; i++) {
		bool in = i < n && s->kinds[i].kind;
		uint32_t k = in ? stream_kind(s, i) : 0;
		uint8_t *u;

		/* A frame's first use and its references are different runs: the first goes first. */
		if (open && (!in || k != kind || gfn_of(s->gm, idx + i) != gfn_of(s->gm, idx + i - 1) + 1)) {
			if ((ret = send_piece(s, idx, start, i, kind)))
				return ret;
			open = false;
		}
		if (!in)
			continue;
		if (!open) {
			start = i;
			kind = k;
			units = 0;
			open = true;
		}
		if (k == MIG_PAGE_FRAME) {
			u = s->unit + (size_t)units * mig_page_unit(k);
			mig_le64enc(u, s->frame_id[i]);
			memcpy(u + 8, s->hash[i], HASH_LEN);
			memcpy(u + 8 + HASH_LEN, s->data + (uint64_t)i * MEM_PAGE_SIZE, MEM_PAGE_SIZE);
			units++;
		} else if (k == MIG_PAGE_FRAME_REF) {
			mig_le64enc(s->unit + (size_t)units * 8, s->frame_id[i]);
			units++;
		}
	}
	return 0;
}

/*
 * A save's window: each page asked for into the file at its place, a shared
 * page as its content (a file is one VM's: nothing to share it with), a page
 * without content as a hole.
 */
static int file_window(struct sender *s, uint64_t idx, uint32_t n, const uint64_t *mask)
{
	static const uint8_t snap_kind[] = {
		[MEM_EXPORT_ZERO] = SNAP_PAGE_ZERO, [MEM_EXPORT_BALLOONED] = SNAP_PAGE_BALLOONED,
		[MEM_EXPORT_DATA] = SNAP_PAGE_DATA, [MEM_EXPORT_FRAME] = SNAP_PAGE_DATA,
	};
	static const uint32_t counted_as[] = {
		[SNAP_PAGE_ZERO] = MIG_PAGE_ZERO, [SNAP_PAGE_DATA] = MIG_PAGE_DATA,
		[SNAP_PAGE_BALLOONED] = MIG_PAGE_BALLOONED,
	};
	uint64_t per_kind[SNAP_PAGE_KINDS] = { 0 };
	uint8_t kind[MEM_EXPORT_MAX];
	char why[160];
	int ret = mem_export_pages(s->gm, idx, n, mask, s->kinds, s->data);

	if (ret)
		return mig_failf(s->j, "reading guest pages at index %" PRIu64 ": %s", idx,
				 strerror(-ret));
	for (uint32_t i = 0; i < n; i++) {
		kind[i] = s->kinds[i].kind ? snap_kind[s->kinds[i].kind] : SNAP_PAGE_KINDS;
		if (kind[i] < SNAP_PAGE_KINDS)
			per_kind[kind[i]]++;
	}
	ret = snapw_pages(s->j->file, idx, n, kind, s->data, why, sizeof(why));
	if (ret)
		return mig_failf(s->j, "%s: %s", s->j->prog.peer, why);
	for (unsigned int k = 0; k < SNAP_PAGE_KINDS; k++)
		if (per_kind[k])
			mig_count_pages(s->j, counted_as[k], per_kind[k]);
	return 0;
}

/* Send every page whose bit is set in set (mem_bitmap_words words, page-index order). */
static int send_set(struct sender *s, const uint64_t *set)
{
	uint64_t nr = mem_nr_pages(s->gm);

	for (uint64_t w = 0; w < nr; w += MEM_EXPORT_MAX) {
		uint32_t n = nr - w < MEM_EXPORT_MAX ? (uint32_t)(nr - w) : MEM_EXPORT_MAX;
		uint64_t mask[MEM_EXPORT_MAX / 64] = { 0 }, any = 0;
		int ret;

		/* Windows start at multiples of 64 pages: the set's words are the mask's. */
		for (uint32_t k = 0; k < (n + 63) / 64; k++)
			any |= mask[k] = set[w / 64 + k];
		if (!any)
			continue;
		if (mig_cancelled(s->j))
			return mig_failf(s->j, "cancelled");
		ret = s->j->file ? file_window(s, w, n, mask) : send_window(s, w, n, mask);
		if (ret)
			return ret;
	}
	return s->j->file ? 0 : flush_scatter(s);
}

uint64_t mig_popcount(const uint64_t *set, uint64_t words)
{
	uint64_t n = 0;

	for (uint64_t i = 0; i < words; i++)
		n += (uint64_t)__builtin_popcountll(set[i]);
	return n;
}

static int send_round_header(struct mig_job *j, unsigned int round, enum mig_stage stage)
{
	uint8_t b[8];

	/* A file holds each page once, at its place: rounds are not its business. */
	if (j->file)
		return 0;
	mig_le32enc(b, round);
	mig_le32enc(b + 4, (uint32_t)stage);
	return put_check(j, j->out, mig_put_buf(j->out, MIG_REC_ROUND, b, sizeof(b)));
}

static int reserve_remote(struct mig_job *j)
{
	struct mig_rec r;
	json_t *o;
	int ret, ok = 0;
	const char *why = "no reason given";

	ret = put_check(j, j->out, mig_put_json(j->out, MIG_REC_VM, j->desc));
	if (ret)
		return ret;
	ret = get_rec(j, j->in, &r);
	if (ret)
		return ret;
	if (r.type == MIG_REC_AUTH)
		return mig_failf(j, "the destination asks for the migration secret, which this host "
			     "was not given");
	if (r.type != MIG_REC_RESERVE || !(o = mig_rec_json(&r)))
		return mig_failf(j, "the destination answered the reservation with a %s record",
			     mig_rec_name(r.type));
	if (json_unpack(o, "{s:b, s?s}", "accepted", &ok, "reason", &why))
		ok = 0;
	if (!ok)
		mig_failf(j, "the destination refused the VM: %s", why);
	json_decref(o);
	return ok ? 0 : -EPROTO;
}

/* The state as JSON strings: JSON integers are signed, a TSC need not be. */
static json_t *u64_string(uint64_t v)
{
	char s[24];

	snprintf(s, sizeof(s), "%" PRIu64, v);
	return json_string(s);
}

/* Each vCPU's state (a VCPU record each), then the clock, machine and devices (one DEVICE). */
static int send_state(struct mig_job *j)
{
	uint8_t *buf = kv_zalloc(4 + ACCEL_CPU_STATE_MAX);
	json_t *st = NULL, *devs = NULL;
	struct vm_clock clk;
	char *hex = NULL;
	int ret = 0, n;

	if (!buf)
		return mig_failf(j, "out of memory");
	for (unsigned int i = 0; i < vm_ncpus(j->vm) && !ret; i++) {
		n = vm_save_vcpu(j->vm, i, buf + 4, ACCEL_CPU_STATE_MAX);
		if (n < 0) {
			ret = mig_failf(j, "vCPU %u state: %s", i, strerror(-n));
			goto out;
		}
		mig_le32enc(buf, i);
		ret = put_check(j, j->out, mig_put_buf(j->out, MIG_REC_VCPU, buf, 4 + (size_t)n));
	}
	if (ret)
		goto out;
	ret = vm_save_clock(j->vm, &clk);
	if (ret) {
		ret = mig_failf(j, "the guest's clock: %s", strerror(-ret));
		goto out;
	}
	n = vm_save_machine(j->vm, buf, ACCEL_CPU_STATE_MAX);
	if (n < 0) {
		ret = mig_failf(j, "the machine's state: %s", strerror(-n));
		goto out;
	}
	hex = kv_zalloc(2 * (size_t)n + 1);
	devs = j->sops->save_devices(j->arg);
	if (!hex || !devs) {
		ret = mig_failf(j, "the devices' state could not be saved");
		goto out;
	}
	for (int i = 0; i < n; i++)
		snprintf(hex + 2 * i, 3, "%02x", buf[i]);
	st = json_pack("{s:{s:o, s:o, s:o}, s:O, s:s}", "clock", "guest_tsc",
		       u64_string(clk.guest_tsc), "tsc_khz", u64_string(clk.tsc_khz), "vmm_ns",
		       u64_string(clk.vmm_ns), "devices", devs, "machine", hex);
	ret = st ? put_check(j, j->out, mig_put_json(j->out, MIG_REC_DEVICE, st))
		 : mig_failf(j, "out of memory");
out:
	json_decref(st);
	json_decref(devs);
	kv_free(hex);
	kv_free(buf);
	return ret;
}

/*
 * Hold the vCPUs for throttle_pct of every period. A hold that cannot be
 * had (the VM paused by someone else meanwhile) is skipped: it only slows
 * the guest down, it is not needed for correctness.
 */
static void *throttle_thread(void *arg)
{
	struct mig_job *j = arg;

	sandbox_enter(SANDBOX_MIG_THROTTLE);
	while (!__atomic_load_n(&j->throttle_stop, __ATOMIC_ACQUIRE)) {
		unsigned int pct = __atomic_load_n(&j->throttle_pct, __ATOMIC_RELAXED);
		uint64_t held = (uint64_t)MIG_THROTTLE_PERIOD_MS * 1000000ULL * pct / 100;
		struct timespec on = { 0, (long)held };
		struct timespec off = { 0, (long)(MIG_THROTTLE_PERIOD_MS * 1000000ULL - held) };

		if (!j->sops->hold(j->arg, true)) {
			nanosleep(&on, NULL);
			j->sops->hold(j->arg, false);
		}
		nanosleep(&off, NULL);
	}
	return NULL;
}

static void throttle_set(struct mig_job *j, unsigned int pct)
{
	__atomic_store_n(&j->throttle_pct, pct, __ATOMIC_RELAXED);
	pthread_mutex_lock(&j->lock);
	j->prog.throttle_pct = pct;
	pthread_mutex_unlock(&j->lock);
	if (pct && !j->throttling && j->sops->hold) {
		__atomic_store_n(&j->throttle_stop, false, __ATOMIC_RELEASE);
		j->throttling = !thread_spawn(&j->throttler, "migrate-thr", throttle_thread, j);
	} else if (!pct && j->throttling) {
		__atomic_store_n(&j->throttle_stop, true, __ATOMIC_RELEASE);
		pthread_join(j->throttler, NULL);
		j->throttling = false;
	}
}

/*
 * Rounds stop when the rest fits the downtime limit at the measured rate,
 * at the round limit, or when they stop paying: three rounds in a row that
 * did not shrink the dirty set by a tenth (the guest dirties as fast as the
 * link carries; only the pause ends that).
 */
static int precopy(struct mig_job *j, struct sender *s, uint64_t *set, uint64_t words,
		   unsigned int *round)
{
	uint64_t nr = mem_nr_pages(s->gm), prev = UINT64_MAX, vmm;
	unsigned int stalled = 0, max_rounds = j->params.max_rounds;
	int ret;

	for (uint64_t i = 0; i < words; i++)
		set[i] = ~0ULL;
	if (nr % 64)
		set[words - 1] = (1ULL << (nr % 64)) - 1;
	for (*round = 1;; (*round)++) {
		uint64_t t0 = kv_clock_ns(CLOCK_MONOTONIC), b0 = job_bytes(j), dirty;
		double secs, rate, drate;
		uint32_t limit;

		pthread_mutex_lock(&j->lock);
		j->prog.round = *round;
		j->prog.dirty_pages = mig_popcount(set, words);
		pthread_mutex_unlock(&j->lock);
		mig_notify(j);
		ret = send_round_header(j, *round, MIG_STAGE_PRECOPY);
		if (!ret)
			ret = send_set(s, set);
		if (ret)
			return ret;
		memset(set, 0, words * 8);
		ret = vm_dirty_collect(j->vm, set, &vmm);
		if (ret)
			return mig_failf(j, "collecting dirty pages: %s", strerror(-ret));
		dirty = mig_popcount(set, words);
		secs = (double)(kv_clock_ns(CLOCK_MONOTONIC) - t0) / 1e9;
		if (secs < 1e-6)
			secs = 1e-6;
		rate = (double)(job_bytes(j) - b0) / secs;
		drate = (double)(dirty * MEM_PAGE_SIZE) / secs;
		pthread_mutex_lock(&j->lock);
		limit = j->downtime_ms;
		j->prog.rate_mib_s = rate / (1 << 20);
		j->prog.dirty_mib_s = drate / (1 << 20);
		j->prog.dirty_pages = dirty;
		j->prog.expected_downtime_ms =
			rate > 0 ? (uint64_t)((double)(dirty * MEM_PAGE_SIZE) / rate * 1000) : 0;
		pthread_mutex_unlock(&j->lock);
		j->prog.dirtied_pages += dirty;
		stalled = dirty * 10 > prev * 9 ? stalled + 1 : 0;
		prev = dirty;
		if (j->prog.expected_downtime_ms <= limit || *round >= max_rounds ||
		    (stalled >= 3 && j->throttle_pct >= MIG_THROTTLE_MAX))
			return 0;
		/* The guest outruns the link: hold it back, harder each round it still does. */
		if (*round >= 2 && drate > rate / 2)
			throttle_set(j, j->throttle_pct ? (j->throttle_pct + MIG_THROTTLE_STEP >
							   MIG_THROTTLE_MAX ? MIG_THROTTLE_MAX
									    : j->throttle_pct +
										      MIG_THROTTLE_STEP)
							: MIG_THROTTLE_FIRST);
	}
}

/*
 * A save's end, its state written: a snapshot's VM runs on at once (its
 * pause ends here), then the file is made durable and named; a saved VM is
 * given up only once its file is, and runs on here when that fails. Tracking
 * is stopped either way; 0, or the failure (the VM still paused for a save).
 */
static int file_end(struct mig_job *j, struct sender *s, uint64_t t_stop)
{
	struct snap_writer *w = j->file;
	char why[192];
	int ret;

	vm_dirty_stop(j->vm);
	if (j->params.checksum && mig_checksum_memory(j, s->gm))
		log_warn("%s: the memory checksum could not be taken", vm_name(j->vm));
	pthread_mutex_lock(&j->lock);
	j->out = NULL;
	if (j->kind == MIG_KIND_SNAPSHOT)
		j->prog.downtime_ms = (kv_clock_ns(CLOCK_MONOTONIC) - t_stop) / 1000000;
	pthread_mutex_unlock(&j->lock);
	if (j->kind == MIG_KIND_SNAPSHOT)
		j->sops->restart(j->arg);
	mig_set_stage(j, MIG_STAGE_COMMIT);
	pthread_mutex_lock(&j->lock);
	j->prog.bytes = snapw_bytes(w);
	pthread_mutex_unlock(&j->lock);
	j->file = NULL;
	ret = snapw_finish(w, why, sizeof(why));
	if (ret)
		return mig_failf(j, "%s", why);
	if (j->kind == MIG_KIND_SAVE) {
		pthread_mutex_lock(&j->lock);
		j->prog.downtime_ms = (kv_clock_ns(CLOCK_MONOTONIC) - t_stop) / 1000000;
		pthread_mutex_unlock(&j->lock);
		j->sops->given_up(j->arg);
	}
	return 0;
}

static int source_run(struct mig_job *j)
{
	struct sender s = { .j = j, .gm = vm_gm(j->vm) };
	uint64_t words = mem_bitmap_words(s.gm), t_stop, vmm, last_dirty;
	uint64_t *set = kv_calloc(words, sizeof(uint64_t));
	bool stopped = false, tracking = false;
	struct mig_rec r;
	unsigned int round = 0;
	uint8_t end[16];
	int ret;

	s.data = kv_zalloc(MEM_EXPORT_MAX * MEM_PAGE_SIZE);
	s.unit = kv_zalloc(MIG_PAGES_MAX * mig_page_unit(MIG_PAGE_FRAME));
	s.scatter = kv_zalloc(MIG_PAGES_MAX * mig_page_unit(MIG_PAGE_SCATTER));
	if (!set || !s.data || !s.unit || !s.scatter) {
		ret = mig_failf(j, "out of memory");
		goto out;
	}
	mig_set_stage(j, MIG_STAGE_RESERVATION);
	if (j->file) {
		/* The file was made (and its room checked) when asked: it starts with the VM. */
		pthread_mutex_lock(&j->lock);
		j->out = snapw_state(j->file);
		pthread_mutex_unlock(&j->lock);
		ret = put_check(j, j->out, mig_put_json(j->out, MIG_REC_VM, j->desc));
	} else {
		ret = mig_stream_open(j->fd, true, 0, j->params.timeout_ms, &j->out);
		if (!ret)
			ret = mig_stream_open(j->fd, false, 0, j->params.timeout_ms, &j->in);
		if (ret) {
			ret = mig_failf(j, "the stream: %s", strerror(-ret));
			goto out;
		}
		mig_stream_set_rate(j->out, j->bandwidth);
		ret = handshake(j);
		if (!ret)
			ret = reserve_remote(j);
	}
	if (ret)
		goto out;
	ret = vm_dirty_start(j->vm);
	if (ret) {
		ret = mig_failf(j, ret == -ENOTSUP ? "the %s accelerator cannot track the guest's writes "
					      "on this kernel" : "dirty tracking on %s: %s",
			    vm_accel_name(j->vm), strerror(-ret));
		goto out;
	}
	tracking = true;
	mig_set_stage(j, MIG_STAGE_PRECOPY);
	ret = precopy(j, &s, set, words, &round);
	if (ret)
		goto out;
	throttle_set(j, 0);
	mig_set_stage(j, MIG_STAGE_STOP_COPY);
	last_dirty = mig_popcount(set, words);
	t_stop = kv_clock_ns(CLOCK_MONOTONIC);
	ret = j->sops->stop(j->arg);
	if (ret) {
		ret = mig_failf(j, "pausing the VM: %s", strerror(-ret));
		goto out;
	}
	stopped = true;
	log_debug("%s: stop-and-copy: paused after %" PRIu64 " us", vm_name(j->vm),
		  (kv_clock_ns(CLOCK_MONOTONIC) - t_stop) / 1000);
	/* The last writes: the guest's and the devices', now that both stand still. */
	ret = vm_dirty_collect(j->vm, set, &vmm);
	if (ret) {
		ret = mig_failf(j, "collecting dirty pages: %s", strerror(-ret));
		goto out;
	}
	pthread_mutex_lock(&j->lock);
	j->prog.round = ++round;
	j->prog.dirty_pages = mig_popcount(set, words);
	/* What the pause added to the last round's set (counted there already). */
	j->prog.dirtied_pages += j->prog.dirty_pages - last_dirty;
	pthread_mutex_unlock(&j->lock);
	ret = send_round_header(j, round, MIG_STAGE_STOP_COPY);
	if (!ret)
		ret = send_set(&s, set);
	if (!ret)
		ret = send_state(j);
	if (ret)
		goto out;
	log_debug("%s: stop-and-copy: %" PRIu64 " pages and the state sent after %" PRIu64 " us",
		  vm_name(j->vm), last_dirty, (kv_clock_ns(CLOCK_MONOTONIC) - t_stop) / 1000);
	mig_le64enc(end, mem_nr_pages(s.gm));
	mig_le64enc(end + 8, mig_stream_bytes(j->out));
	ret = put_check(j, j->out, mig_put_buf(j->out, MIG_REC_END, end, sizeof(end)));
	if (ret)
		goto out;
	if (j->file) {
		ret = file_end(j, &s, t_stop);
		stopped = ret && j->kind == MIG_KIND_SAVE;
		tracking = false;
		goto out;
	}
	mig_set_stage(j, MIG_STAGE_COMMIT);
	ret = get_rec(j, j->in, &r);
	if (ret)
		goto out;
	if (r.type != MIG_REC_COMMIT) {
		ret = mig_failf(j, "the destination answered the end with a %s record",
			    mig_rec_name(r.type));
		goto out;
	}
	log_debug("%s: stop-and-copy: the destination ready after %" PRIu64 " us", vm_name(j->vm),
		  (kv_clock_ns(CLOCK_MONOTONIC) - t_stop) / 1000);
	if (mig_cancelled(j)) {
		ret = mig_failf(j, "cancelled");
		goto out;
	}
	/*
	 * The point of no return: once this record is all in the kernel's
	 * hands the destination may run the VM, so this side must not. If it
	 * is not (a write error), the destination cannot have read it whole
	 * and will not: the VM runs on here.
	 */
	ret = mig_put_buf(j->out, MIG_REC_COMMIT, "{}", 2);
	if (ret) {
		ret = put_check(j, j->out, ret);
		goto out;
	}
	pthread_mutex_lock(&j->lock);
	j->prog.downtime_ms = (kv_clock_ns(CLOCK_MONOTONIC) - t_stop) / 1000000;
	j->prog.bytes = mig_stream_bytes(j->out);
	pthread_mutex_unlock(&j->lock);
	vm_dirty_stop(j->vm);
	tracking = false;
	/* Still stopped and whole: the destination has its copy already. */
	if (j->params.checksum && mig_checksum_memory(j, s.gm))
		log_warn("%s: the memory checksum could not be taken", vm_name(j->vm));
	j->sops->given_up(j->arg);
	ret = 0;
out:
	throttle_set(j, 0);
	if (ret) {
		if (!j->file)
			put_error(j, j->out);
		if (tracking)
			vm_dirty_stop(j->vm);
		if (stopped)
			j->sops->restart(j->arg);
	}
	if (j->file) {
		/* The writer's stream, closed with it. */
		pthread_mutex_lock(&j->lock);
		j->out = NULL;
		pthread_mutex_unlock(&j->lock);
		snapw_abort(j->file);
		j->file = NULL;
	}
	idmap_free(&s.frames);
	kv_free(s.frame_hash);
	kv_free(s.data);
	kv_free(s.unit);
	kv_free(s.scatter);
	kv_free(set);
	return ret;
}

void mig_job_finish(struct mig_job *j, int ret, uint64_t t0)
{
	struct mig_stream *out, *in;
	int fd;

	/* Taken away under the lock: migrate_set and a cancel look for them there. */
	pthread_mutex_lock(&j->lock);
	if (j->prog.stage != MIG_STAGE_FAILED)	/* a lazily restored VM may have failed already */
		j->prog.stage = !ret ? MIG_STAGE_DONE
			      : mig_cancelled(j) ? MIG_STAGE_CANCELLED : MIG_STAGE_FAILED;
	j->prog.total_ms = (kv_clock_ns(CLOCK_MONOTONIC) - t0) / 1000000;
	if (j->out || j->in)
		j->prog.bytes = mig_stream_bytes(j->source ? j->out : j->in);
	out = j->out;
	in = j->in;
	fd = j->fd;
	j->out = j->in = NULL;
	j->fd = -1;
	pthread_mutex_unlock(&j->lock);
	mig_stream_close(out);
	mig_stream_close(in);
	if (fd >= 0)
		close(fd);
	__atomic_store_n(&j->finished, true, __ATOMIC_RELEASE);
	mig_notify(j);
}

static void *mig_source_thread(void *arg)
{
	struct mig_job *j = arg;
	uint64_t t0 = kv_clock_ns(CLOCK_MONOTONIC);
	int ret;

	sandbox_enter(SANDBOX_MIGRATION);
	ret = source_run(j);

	if (ret)
		log_warn("%s: %s to %s failed: %s; it runs on here", vm_name(j->vm),
			 mig_kind_name(j->kind), j->prog.peer, j->prog.error);
	mig_job_finish(j, ret, t0);
	return NULL;
}

struct mig_job *mig_job_new(bool source, int fd, const struct mig_params *p, void *arg,
			       const char *peer)
{
	struct mig_job *j = kv_zalloc(sizeof(*j));

	if (!j)
		return NULL;
	j->source = source;
	j->fd = fd;
	j->arg = arg;
	j->params = *p;
	if (!j->params.downtime_ms)
		j->params.downtime_ms = MIG_DOWNTIME_MS_DEFAULT;
	if (!j->params.max_rounds)
		j->params.max_rounds = MIG_MAX_ROUNDS_DEFAULT;
	if (!j->params.timeout_ms)
		j->params.timeout_ms = MIG_TIMEOUT_MS_DEFAULT;
	j->downtime_ms = j->params.downtime_ms;
	j->bandwidth = j->params.bandwidth;
	pthread_mutex_init(&j->lock, NULL);
	j->prog.source = source;
	j->prog.downtime_limit_ms = j->downtime_ms;
	j->prog.bandwidth = j->bandwidth;
	snprintf(j->prog.peer, sizeof(j->prog.peer), "%s", peer ? peer : "the peer");
	return j;
}

int mig_source_spawn(struct mig_job *j, struct vm *vm, const json_t *desc,
		     const struct mig_source_ops *ops, const char *thread_name)
{
	int ret;

	j->vm = vm;
	j->sops = ops;
	j->desc = json_deep_copy(desc);
	j->prog.ram_pages = mem_nr_pages(vm_gm(vm));
	j->prog.stage = MIG_STAGE_RESERVATION;
	snprintf(j->prog.vm, sizeof(j->prog.vm), "%s", vm_name(vm));
	ret = j->desc ? thread_spawn(&j->thread, thread_name, mig_source_thread, j) : -ENOMEM;
	if (ret) {
		snapw_abort(j->file);
		mig_job_drop(j);
	}
	return ret;
}

int mig_source_start(struct vm *vm, int fd, const json_t *desc, const struct mig_params *p,
		     const struct mig_source_ops *ops, void *arg, const char *peer,
		     struct mig_job **out)
{
	struct mig_job *j = mig_job_new(true, fd, p, arg, peer);
	int ret;

	if (!j)
		return -ENOMEM;
	ret = mig_source_spawn(j, vm, desc, ops, "migrate-out");
	if (!ret)
		*out = j;
	return ret;
}

/* --- the destination --- */

struct receiver {
	struct mig_job *j;
	struct gm *gm;
	uint64_t *written;		/* bit per page: holds content sent earlier */
	/*
	 * Shared frames' content as it arrived, by id: a reference copies from
	 * here, never from a guest page (the guest may have written that since).
	 * At most one per page of RAM.
	 */
	struct idmap frames;		/* id -> index into frame_data */
	uint8_t *frame_data;
	uint64_t nr_frames, cap_frames;
};

/* Keep a frame's content under id: 0, or -EPROTO (an id twice, or more frames than pages). */
static int keep_frame(struct receiver *rv, uint64_t id, const uint8_t *content)
{
	if (!id || idmap_get(&rv->frames, id, NULL) || rv->nr_frames == mem_nr_pages(rv->gm))
		return -EPROTO;
	/* Doubling from 16 pages: a stream with a few shared pages holds no megabyte for them. */
	if (rv->nr_frames == rv->cap_frames) {
		uint64_t cap = rv->cap_frames ? 2 * rv->cap_frames : 16;
		void *p = kv_realloc(rv->frame_data, cap * MEM_PAGE_SIZE);

		if (!p)
			return -ENOMEM;
		rv->frame_data = p;
		rv->cap_frames = cap;
	}
	memcpy(rv->frame_data + rv->nr_frames * MEM_PAGE_SIZE, content, MEM_PAGE_SIZE);
	if (idmap_put(&rv->frames, id, rv->nr_frames))
		return -ENOMEM;
	rv->nr_frames++;
	return 0;
}

static void bit_set(uint64_t *b, uint64_t i, bool on)
{
	if (on)
		b[i / 64] |= 1ULL << (i % 64);
	else
		b[i / 64] &= ~(1ULL << (i % 64));
}

/*
 * Content for pages [idx, idx + n): a page that never had any is installed
 * whole (writing into fresh memory would fault and clear it first); one sent
 * before is written over in place (installing it would fail and cost a
 * system call to learn so).
 */
static int fill(struct receiver *rv, uint64_t idx, uint32_t n, const uint8_t *data)
{
	if (!(rv->written[idx / 64] >> (idx % 64) & 1))
		return mem_fill_pages(rv->gm, idx, n, data);
	return mem_write(rv->gm, mem_index_gpa(rv->gm, idx), data, (size_t)n * MEM_PAGE_SIZE);
}

/* Pages anywhere, each with its frame: each checked to lie in RAM on its own. */
static int apply_scatter(struct receiver *rv, const struct mig_rec *r, const struct mig_pages *p)
{
	for (uint32_t i = 0; i < p->count; i++) {
		const uint8_t *u = p->data + (size_t)i * mig_page_unit(MIG_PAGE_SCATTER);
		uint64_t gfn = mig_le64dec(u);
		int64_t idx;
		int ret;

		if (gfn >= 1ULL << (64 - MEM_PAGE_SHIFT) ||
		    !mem_range_ok(rv->gm, gfn << MEM_PAGE_SHIFT, MEM_PAGE_SIZE) ||
		    (idx = mem_page_index(rv->gm, gfn << MEM_PAGE_SHIFT)) < 0)
			return mig_failf(rv->j, "record %" PRIu64 ": a page at frame 0x%" PRIx64
				     " outside the VM's RAM", r->seq, gfn);
		ret = fill(rv, (uint64_t)idx, 1, u + 8);
		if (ret)
			return mig_failf(rv->j, "writing the guest page at frame 0x%" PRIx64 ": %s", gfn,
				     strerror(-ret));
		bit_set(rv->written, (uint64_t)idx, true);
	}
	mig_count_pages(rv->j, MIG_PAGE_DATA, p->count);
	return 0;
}

static int apply_pages(struct receiver *rv, const struct mig_rec *r)
{
	struct mig_job *j = rv->j;
	struct mig_pages p;
	gpa_t gpa;
	int64_t first;
	int ret = 0;

	if (mig_pages_decode(r, &p))
		return mig_failf(j, "record %" PRIu64 ": a malformed pages record", r->seq);
	if (p.kind == MIG_PAGE_SCATTER)
		return apply_scatter(rv, r, &p);
	/* Every page of the run in RAM, one region: a hostile stream writes nowhere else. */
	if (p.gfn >= (1ULL << (64 - MEM_PAGE_SHIFT)) - p.count ||
	    !mem_range_ok(rv->gm, p.gfn << MEM_PAGE_SHIFT, (uint64_t)p.count << MEM_PAGE_SHIFT) ||
	    (first = mem_page_index(rv->gm, p.gfn << MEM_PAGE_SHIFT)) < 0 ||
	    mem_index_gpa(rv->gm, (uint64_t)first + p.count - 1) !=
		    (p.gfn + p.count - 1) << MEM_PAGE_SHIFT)
		return mig_failf(j, "record %" PRIu64 ": pages at frame 0x%" PRIx64 " (%u) outside the "
			     "VM's RAM", r->seq, p.gfn, p.count);
	gpa = p.gfn << MEM_PAGE_SHIFT;
	switch (p.kind) {
	case MIG_PAGE_BALLOONED: {
		int64_t got = mem_discard(rv->gm, gpa, (uint64_t)p.count * MEM_PAGE_SIZE,
					  PS_BALLOONED);

		if (got < 0)
			return mig_failf(j, "ballooned pages at 0x%" PRIx64 ": %s", gpa,
				     strerror((int)-got));
		for (uint32_t i = 0; i < p.count; i++)
			bit_set(rv->written, (uint64_t)first + i, false);
		break;
	}
	case MIG_PAGE_ZERO:
		/* A fresh VM's pages are zero; only one sent earlier in content needs clearing. */
		for (uint32_t i = 0; i < p.count && !ret; i++) {
			uint64_t idx = (uint64_t)first + i;

			if (rv->written[idx / 64] >> (idx % 64) & 1)
				ret = mem_zero_fill(rv->gm, gpa + (uint64_t)i * MEM_PAGE_SIZE,
						    MEM_PAGE_SIZE);
		}
		break;
	case MIG_PAGE_DATA:
		ret = fill(rv, (uint64_t)first, p.count, p.data);
		for (uint32_t i = 0; i < p.count && !ret; i++)
			bit_set(rv->written, (uint64_t)first + i, true);
		break;
	case MIG_PAGE_FRAME:
		for (uint32_t i = 0; i < p.count && !ret; i++) {
			const uint8_t *u = p.data + (size_t)i * mig_page_unit(p.kind);
			uint8_t h[HASH_LEN];

			mig_sha256(u + 8 + HASH_LEN, MEM_PAGE_SIZE, h);
			if (memcmp(h, u + 8, HASH_LEN))
				return mig_failf(j, "record %" PRIu64 ": a shared page whose content does "
					     "not match its hash", r->seq);
			if (keep_frame(rv, mig_le64dec(u), u + 8 + HASH_LEN))
				return mig_failf(j, "record %" PRIu64 ": a shared page's id used twice, or "
					     "more shared pages than the VM has", r->seq);
			ret = fill(rv, (uint64_t)first + i, 1, u + 8 + HASH_LEN);
			bit_set(rv->written, (uint64_t)first + i, true);
		}
		break;
	case MIG_PAGE_FRAME_REF:
		for (uint32_t i = 0; i < p.count && !ret; i++) {
			uint64_t at;

			if (!idmap_get(&rv->frames, mig_le64dec(p.data + (size_t)i * 8), &at))
				return mig_failf(j, "record %" PRIu64 ": a reference to a shared page "
					     "never sent", r->seq);
			ret = fill(rv, (uint64_t)first + i, 1, rv->frame_data + at * MEM_PAGE_SIZE);
			bit_set(rv->written, (uint64_t)first + i, true);
		}
		break;
	}
	if (ret)
		return mig_failf(j, "writing guest pages at 0x%" PRIx64 ": %s", gpa, strerror(-ret));
	mig_count_pages(j, p.kind, p.count);
	return 0;
}

static bool json_u64_string(json_t *o, const char *key, uint64_t *out)
{
	const char *s = json_string_value(json_object_get(o, key));
	char *end;

	if (!s || !*s || strlen(s) > 20)
		return false;
	errno = 0;
	*out = strtoull(s, &end, 10);
	return !*end && !errno;
}

/* The machine's state, hex in the DEVICE record; refused whole when malformed. */
static int load_machine(struct mig_job *j, const char *hex)
{
	size_t n = hex ? strlen(hex) : 1;
	uint8_t *buf;
	int ret;

	if (n % 2 || n / 2 > ACCEL_CPU_STATE_MAX)
		return mig_failf(j, "malformed machine state");
	buf = kv_zalloc(n / 2 + 1);
	if (!buf)
		return mig_failf(j, "out of memory");
	for (size_t i = 0; i < n / 2; i++) {
		unsigned int b;

		if (!isxdigit((unsigned char)hex[2 * i]) || !isxdigit((unsigned char)hex[2 * i + 1]) ||
		    sscanf(hex + 2 * i, "%2x", &b) != 1) {
			kv_free(buf);
			return mig_failf(j, "malformed machine state");
		}
		buf[i] = (uint8_t)b;
	}
	ret = vm_load_machine(j->vm, buf, n / 2);
	kv_free(buf);
	return ret ? mig_failf(j, "the machine's state: %s", ret == -EINVAL ? "refused"
							   : strerror(-ret)) : 0;
}

/*
 * The destination's digest, taken once: when the last pages are in and
 * before any state is applied, the memory as the source stopped it. KVM
 * writes into guest memory as a vCPU's state is set (the kvmclock wall
 * clock, the moment a Linux guest's MSR for it is), and this host's clock
 * offset and devices do after.
 */
static void dest_checksum(struct mig_job *j)
{
	/* Only this thread writes it: read without the lock. */
	if (j->params.checksum && !j->prog.checksum[0] && mig_checksum_memory(j, vm_gm(j->vm)))
		log_warn("%s: the memory checksum could not be taken", vm_name(j->vm));
}

int mig_apply_state(struct mig_job *j, const struct mig_rec *r)
{
	json_t *o = mig_rec_json(r), *clock = json_object_get(o, "clock");
	struct vm_clock clk;
	char why[192] = "";
	int ret;

	if (!o || !json_u64_string(clock, "guest_tsc", &clk.guest_tsc) ||
	    !json_u64_string(clock, "tsc_khz", &clk.tsc_khz) ||
	    !json_u64_string(clock, "vmm_ns", &clk.vmm_ns) ||
	    !json_is_object(json_object_get(o, "devices"))) {
		json_decref(o);
		return mig_failf(j, "record %" PRIu64 ": malformed device state", r->seq);
	}
	dest_checksum(j);
	ret = load_machine(j, json_string_value(json_object_get(o, "machine")));
	if (ret) {
		json_decref(o);
		return ret;
	}
	ret = vm_load_clock(j->vm, &clk);
	if (ret) {
		json_decref(o);
		return mig_failf(j, "the guest's clock: %s", ret == -ERANGE ? "this host's TSC runs at "
			     "another rate" : strerror(-ret));
	}
	/* From a file (a restore, a rollback): a copy of a past, not the VM going on. */
	if (j->kind == MIG_KIND_RESTORE && ((ret = vm_new_generation(j->vm, NULL)) ||
					    (j->params.identity &&
					     (ret = vm_set_identity(j->vm, j->params.identity))))) {
		json_decref(o);
		return mig_failf(j, "the VM's generation: %s", strerror(-ret));
	}
	ret = j->dops->load_devices(j->arg, json_object_get(o, "devices"), why, sizeof(why));
	json_decref(o);
	if (ret)
		return mig_failf(j, "device state: %s", why[0] ? why : strerror(-ret));
	return 0;
}

int mig_apply_vcpu(struct mig_job *j, const struct mig_rec *r, uint64_t *seen)
{
	struct mig_cur c = mig_cur_of(r);
	uint32_t i = mig_cur_u32(&c);
	int ret;

	if (c.bad || i >= vm_ncpus(j->vm) || (*seen >> i & 1))
		return mig_failf(j, "record %" PRIu64 ": vCPU state for vCPU %u (of %u, or twice)",
			     r->seq, i, vm_ncpus(j->vm));
	dest_checksum(j);
	ret = vm_load_vcpu(j->vm, i, c.p, c.left);
	if (ret)
		return mig_failf(j, "vCPU %u state: %s", i, ret == -EINVAL ? "refused" : strerror(-ret));
	*seen |= 1ULL << i;
	return 0;
}

static int dest_run(struct mig_job *j)
{
	struct receiver rv = { .j = j };
	uint64_t cpus = 0;
	bool state = false, reserved = false;
	char why[192] = "";
	struct mig_rec r;
	json_t *desc;
	int ret;

	ret = mig_stream_open(j->fd, false, 0, j->params.timeout_ms, &j->in);
	if (!ret)
		ret = mig_stream_open(j->fd, true, 0, j->params.timeout_ms, &j->out);
	if (ret)
		return mig_failf(j, "the stream: %s", strerror(-ret));
	mig_set_stage(j, MIG_STAGE_RESERVATION);
	ret = handshake(j);
	if (!ret)
		ret = get_rec(j, j->in, &r);
	if (ret)
		return ret;
	if (r.type == MIG_REC_AUTH)
		return mig_failf(j, "the source offers a handshake this host has no secret for");
	if (r.type != MIG_REC_VM || !(desc = mig_rec_json(&r)))
		return mig_failf(j, "the stream does not start with a VM description");
	j->params.checksum = json_is_true(json_object_get(desc, "checksum"));
	ret = j->dops->reserve(j->arg, desc, &j->vm, why, sizeof(why));
	json_decref(desc);
	if (ret) {
		json_t *no = json_pack("{s:b, s:s}", "accepted", 0, "reason",
				       why[0] ? why : strerror(-ret));

		mig_failf(j, "refused: %s", why[0] ? why : strerror(-ret));
		mig_put_json(j->out, MIG_REC_RESERVE, no);
		json_decref(no);
		return -EPROTO;
	}
	reserved = true;
	rv.gm = vm_gm(j->vm);
	pthread_mutex_lock(&j->lock);
	j->prog.ram_pages = mem_nr_pages(rv.gm);
	snprintf(j->prog.vm, sizeof(j->prog.vm), "%s", vm_name(j->vm));
	pthread_mutex_unlock(&j->lock);
	rv.written = kv_calloc(mem_bitmap_words(rv.gm), sizeof(uint64_t));
	if (!rv.written) {
		ret = mig_failf(j, "out of memory");
		goto out;
	}
	{
		json_t *yes = json_pack("{s:b}", "accepted", 1);

		ret = put_check(j, j->out, mig_put_json(j->out, MIG_REC_RESERVE, yes));
		json_decref(yes);
		if (ret)
			goto out;
	}
	mig_set_stage(j, MIG_STAGE_PRECOPY);
	for (;;) {
		ret = get_rec(j, j->in, &r);
		if (ret)
			goto out;
		switch (r.type) {
		case MIG_REC_ROUND: {
			struct mig_cur c = mig_cur_of(&r);
			uint32_t round = mig_cur_u32(&c), stage = mig_cur_u32(&c);

			if (!mig_cur_done(&c) ||
			    (stage != MIG_STAGE_PRECOPY && stage != MIG_STAGE_STOP_COPY)) {
				ret = mig_failf(j, "record %" PRIu64 ": a malformed round", r.seq);
				goto out;
			}
			pthread_mutex_lock(&j->lock);
			j->prog.round = round;
			j->prog.stage = stage;
			pthread_mutex_unlock(&j->lock);
			mig_notify(j);
			continue;
		}
		case MIG_REC_PAGES:
			ret = apply_pages(&rv, &r);
			break;
		case MIG_REC_VCPU:
			ret = mig_apply_vcpu(j, &r, &cpus);
			break;
		case MIG_REC_DEVICE:
			ret = state ? mig_failf(j, "record %" PRIu64 ": device state twice", r.seq)
				    : mig_apply_state(j, &r);
			state = true;
			break;
		case MIG_REC_END:
			if (!state || cpus != (vm_ncpus(j->vm) == 64 ? ~0ULL
								       : (1ULL << vm_ncpus(j->vm)) - 1)) {
				ret = mig_failf(j, "the source ended before sending every vCPU's and "
					    "device's state");
				goto out;
			}
			goto commit;
		default:
			ret = mig_failf(j, "record %" PRIu64 ": a %s record in the middle of the pages",
				    r.seq, mig_rec_name(r.type));
			break;
		}
		if (ret)
			goto out;
	}
commit:
	mig_set_stage(j, MIG_STAGE_COMMIT);
	ret = put_check(j, j->out, mig_put_buf(j->out, MIG_REC_COMMIT, "{}", 2));
	if (ret)
		goto out;
	/* Only the source's own commitment lets the VM run here: never in two places. */
	ret = get_rec(j, j->in, &r);
	if (ret)
		goto out;
	if (r.type != MIG_REC_COMMIT) {
		ret = mig_failf(j, "the source answered the commitment with a %s record",
			    mig_rec_name(r.type));
		goto out;
	}
	mig_set_stage(j, MIG_STAGE_ACTIVATION);
	ret = j->dops->activate(j->arg);
	if (ret)
		ret = mig_failf(j, "starting the VM: %s (it is lost: the source gave it up)",
			    strerror(-ret));
	reserved = false; /* the host's now, running or stopped */
out:
	if (ret && reserved)
		j->dops->discard(j->arg);
	idmap_free(&rv.frames);
	kv_free(rv.frame_data);
	kv_free(rv.written);
	return ret;
}

static void *dest_thread(void *arg)
{
	struct mig_job *j = arg;
	uint64_t t0 = kv_clock_ns(CLOCK_MONOTONIC);
	int ret;

	sandbox_enter(SANDBOX_MIGRATION);
	ret = dest_run(j);

	if (ret) {
		/* The source hears why (a refused handshake too), if it still listens. */
		put_error(j, j->out);
		log_warn("incoming migration from %s failed: %s", j->prog.peer, j->prog.error);
	}
	mig_job_finish(j, ret, t0);
	return NULL;
}

int mig_dest_start(int fd, const struct mig_params *p, const struct mig_dest_ops *ops, void *arg,
		   const char *peer, struct mig_job **out)
{
	struct mig_job *j = mig_job_new(false, fd, p, arg, peer);
	int ret;

	if (!j)
		return -ENOMEM;
	j->dops = ops;
	j->prog.stage = MIG_STAGE_RESERVATION;
	/* Before the thread runs: its callbacks may look for the job through the caller. */
	*out = j;
	ret = thread_spawn(&j->thread, "migrate-in", dest_thread, j);
	if (ret) {
		*out = NULL;
		mig_job_drop(j);
		return ret;
	}
	return 0;
}
