/* SPDX-License-Identifier: MIT */
/* The snapshot file (migrate/snapfile.h): writing it atomically, reading it checked. */
#define LOG_TAG "snapshot"
#include "migrate/snapfile.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/alloc.h"
#include "core/log.h"

#define PAGE MIG_PAGE_SIZE
#define HEADER_SIZE PAGE
#define HEADER_CHECKED 104	/* bytes the header's check covers */
/* A VM of more than this is not one kvmem makes: a larger count is a corrupt header. */
#define NR_PAGES_MAX (1ULL << 28)
/* The state records of a VM take far less (vCPUs of 64 KiB at most, a description, devices). */
#define STATE_MAX (32ULL << 20)
/* VM, a VCPU record for each of up to 64 vCPUs, DEVICE, END. */
#define RECS_MAX (64 + 3)

struct snap_writer {
	int fd;
	char *path;			/* its name once finished */
	char *tmpname;			/* its name meanwhile, when the filesystem has no O_TMPFILE */
	uint64_t nr_pages, table_off, data_off, state_off;
	uint8_t *kind;			/* per page */
	uint8_t (*hash)[SNAP_HASH_LEN];	/* per page */
	struct mig_stream *state;
	uint64_t data_bytes;
};

struct snap_reader {
	int fd;
	char *path;
	uint64_t nr_pages, data_off, data_pages;
	uint8_t *table;			/* kinds, then hashes */
	struct mig_rec recs[RECS_MAX];
	unsigned int nr_recs;
};

static uint64_t align_page(uint64_t v)
{
	return (v + PAGE - 1) & ~(uint64_t)(PAGE - 1);
}

__attribute__((format(printf, 4, 5)))
static int why_set(char *why, size_t whylen, int ret, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
	return ret;
}

/* pwrite all of it (a short write goes on; a full disk is an error). */
static int pwrite_all(int fd, const void *p, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ENOSPC;
		p = (const uint8_t *)p + n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static int pread_all(int fd, void *p, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EPIPE;
		p = (uint8_t *)p + n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* --- writing --- */

static char *dir_of(const char *path)
{
	char *copy = kv_strdup(path), *d;

	if (!copy)
		return NULL;
	d = kv_strdup(dirname(copy));
	kv_free(copy);
	return d;
}

/* A hidden name beside path that nothing has: ".NAME.XXXXXX". */
static char *temp_name(const char *path)
{
	const char *slash = strrchr(path, '/');
	size_t dl = slash ? (size_t)(slash - path + 1) : 0;
	size_t len = strlen(path) + 16;
	char *t = kv_zalloc(len);
	uint64_t r;

	if (!t)
		return NULL;
	if (getrandom(&r, sizeof(r), 0) != sizeof(r))
		r = (uint64_t)time(NULL) ^ (uint64_t)getpid();
	snprintf(t, len, "%.*s.%s.%06" PRIx64, (int)dl, path, path + dl, r & 0xffffff);
	return t;
}

int snapw_create(const char *path, uint64_t nr_pages, uint64_t need_bytes,
		 struct snap_writer **out, char *why, size_t whylen)
{
	struct snap_writer *w;
	struct statvfs sv;
	char *dir;
	int ret;

	if (!nr_pages || nr_pages > NR_PAGES_MAX)
		return why_set(why, whylen, -EINVAL, "a VM of %" PRIu64 " pages", nr_pages);
	w = kv_zalloc(sizeof(*w));
	dir = dir_of(path);
	if (!w || !dir) {
		kv_free(w);
		kv_free(dir);
		return why_set(why, whylen, -ENOMEM, "out of memory");
	}
	w->fd = -1;
	w->nr_pages = nr_pages;
	w->table_off = HEADER_SIZE;
	w->data_off = align_page(w->table_off + nr_pages * (1 + SNAP_HASH_LEN));
	w->state_off = w->data_off + nr_pages * PAGE;
	w->path = kv_strdup(path);
	w->kind = kv_calloc(nr_pages, 1);
	w->hash = kv_calloc(nr_pages, SNAP_HASH_LEN);
	if (!w->path || !w->kind || !w->hash) {
		ret = why_set(why, whylen, -ENOMEM, "out of memory");
		goto fail;
	}
	/* Under no name until it is whole: a crash leaves nothing that looks like a snapshot. */
	w->fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (w->fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
		w->tmpname = temp_name(path);
		if (!w->tmpname) {
			ret = why_set(why, whylen, -ENOMEM, "out of memory");
			goto fail;
		}
		w->fd = open(w->tmpname, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
	}
	if (w->fd < 0) {
		ret = -errno;
		why_set(why, whylen, ret, "cannot create a file in %s: %s", dir, strerror(-ret));
		kv_free(w->tmpname);
		w->tmpname = NULL;
		goto fail;
	}
	if (need_bytes > NR_PAGES_MAX * PAGE)
		need_bytes = NR_PAGES_MAX * PAGE;
	if (!fstatvfs(w->fd, &sv) &&
	    (uint64_t)sv.f_bavail * sv.f_frsize < need_bytes + w->data_off + (1ULL << 20)) {
		ret = why_set(why, whylen, -ENOSPC, "%s has %" PRIu64 " MiB free, the VM's memory "
			      "needs %" PRIu64 " MiB", dir,
			      (uint64_t)sv.f_bavail * sv.f_frsize >> 20,
			      (need_bytes + w->data_off) >> 20);
		goto fail;
	}
	/* Sparse: a page without content never takes a block. */
	if (ftruncate(w->fd, (off_t)w->state_off) ||
	    lseek(w->fd, (off_t)w->state_off, SEEK_SET) != (off_t)w->state_off) {
		ret = -errno;
		why_set(why, whylen, ret, "sizing the file: %s", strerror(-ret));
		goto fail;
	}
	ret = mig_stream_open(w->fd, true, MIG_F_FILE, -1, &w->state);
	if (ret) {
		why_set(why, whylen, ret, "writing the file: %s", strerror(-ret));
		goto fail;
	}
	kv_free(dir);
	*out = w;
	return 0;
fail:
	kv_free(dir);
	snapw_abort(w);
	return ret;
}

static int write_err(char *why, size_t whylen, int ret, const char *what)
{
	return why_set(why, whylen, ret, "writing %s: %s", what,
		       ret == -ENOSPC ? "the disk is full" : strerror(-ret));
}

/* Pages [i, e) of the batch read as zeros now: a hole where content was. */
static int punch(struct snap_writer *w, uint64_t idx, uint32_t i, uint32_t e)
{
	static const uint8_t zero[PAGE];
	uint64_t off = w->data_off + (idx + i) * PAGE;
	int ret = 0;

	if (!fallocate(w->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		       (off_t)(e - i) * PAGE))
		return 0;
	if (errno != EOPNOTSUPP)
		return -errno;
	for (uint32_t k = i; k < e && !ret; k++)
		ret = pwrite_all(w->fd, zero, PAGE, w->data_off + (idx + k) * PAGE);
	return ret;
}

int snapw_pages(struct snap_writer *w, uint64_t idx, uint32_t n, const uint8_t *kind,
		const uint8_t *data, char *why, size_t whylen)
{
	int ret;

	if (idx > w->nr_pages || n > w->nr_pages - idx)
		return why_set(why, whylen, -EINVAL, "pages beyond the VM's");
	for (uint32_t i = 0; i < n;) {
		uint32_t e = i + 1;
		uint8_t k = kind[i];

		if (k >= SNAP_PAGE_KINDS) {
			i++;
			continue;
		}
		/* A run of one kind; content runs are written with one call. */
		if (k == SNAP_PAGE_DATA) {
			while (e < n && kind[e] == SNAP_PAGE_DATA)
				e++;
			ret = pwrite_all(w->fd, data + (uint64_t)i * PAGE, (size_t)(e - i) * PAGE,
					 w->data_off + (idx + i) * PAGE);
			if (ret)
				return write_err(why, whylen, ret, "the guest's memory");
			for (uint32_t p = i; p < e; p++)
				mig_sha256(data + (uint64_t)p * PAGE, PAGE, w->hash[idx + p]);
			w->data_bytes += (uint64_t)(e - i) * PAGE;
		} else {
			bool had = false;

			while (e < n && kind[e] != SNAP_PAGE_DATA && kind[e] < SNAP_PAGE_KINDS)
				e++;
			for (uint32_t p = i; p < e; p++)
				had |= w->kind[idx + p] == SNAP_PAGE_DATA;
			if (had && (ret = punch(w, idx, i, e)))
				return write_err(why, whylen, ret, "the guest's memory");
			memset(w->hash[idx + i], 0, (size_t)(e - i) * SNAP_HASH_LEN);
		}
		memcpy(w->kind + idx + i, kind + i, e - i);
		i = e;
	}
	return 0;
}

struct mig_stream *snapw_state(struct snap_writer *w)
{
	return w->state;
}

uint64_t snapw_bytes(const struct snap_writer *w)
{
	return w->data_bytes + (w->state ? mig_stream_bytes(w->state) : 0);
}

/* SHA-256 of the table as written: the kinds, then the hashes. */
static void table_hash(const uint8_t *kind, const uint8_t *hash, uint64_t nr, uint8_t *out)
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	unsigned int len = SNAP_HASH_LEN;

	if (!c || !EVP_DigestInit_ex(c, EVP_sha256(), NULL) || !EVP_DigestUpdate(c, kind, nr) ||
	    !EVP_DigestUpdate(c, hash, nr * SNAP_HASH_LEN) || !EVP_DigestFinal_ex(c, out, &len))
		memset(out, 0, SNAP_HASH_LEN);
	EVP_MD_CTX_free(c);
}

/* Make the directory entry durable too: a rename is only as durable as its directory. */
static void sync_dir(const char *path)
{
	char *dir = dir_of(path);
	int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;

	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
	kv_free(dir);
}

/* Give the finished file its name: linked under a temporary one, then renamed over path. */
static int name_file(struct snap_writer *w)
{
	char proc[64];

	if (!w->tmpname) {
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", w->fd);
		for (int tries = 0; tries < 8; tries++) {
			w->tmpname = temp_name(w->path);
			if (!w->tmpname)
				return -ENOMEM;
			if (!linkat(AT_FDCWD, proc, AT_FDCWD, w->tmpname, AT_SYMLINK_FOLLOW))
				break;
			kv_free(w->tmpname);
			w->tmpname = NULL;
			if (errno != EEXIST)
				return -errno;
		}
		if (!w->tmpname)
			return -EEXIST;
	}
	if (rename(w->tmpname, w->path))
		return -errno;
	kv_free(w->tmpname);
	w->tmpname = NULL;
	sync_dir(w->path);
	return 0;
}

int snapw_finish(struct snap_writer *w, char *why, size_t whylen)
{
	uint8_t *hdr = kv_zalloc(HEADER_SIZE);
	uint64_t data_pages = 0, state_len;
	off_t end;
	int ret;

	if (!hdr) {
		snapw_abort(w);
		return why_set(why, whylen, -ENOMEM, "out of memory");
	}
	end = lseek(w->fd, 0, SEEK_CUR);
	mig_stream_close(w->state);
	w->state = NULL;
	state_len = (uint64_t)end - w->state_off;
	for (uint64_t i = 0; i < w->nr_pages; i++)
		data_pages += w->kind[i] == SNAP_PAGE_DATA;
	memcpy(hdr, SNAP_MAGIC, 8);
	mig_le32enc(hdr + 8, SNAP_VERSION);
	mig_le32enc(hdr + 12, 0);
	mig_le64enc(hdr + 16, w->nr_pages);
	mig_le64enc(hdr + 24, w->table_off);
	mig_le64enc(hdr + 32, w->data_off);
	mig_le64enc(hdr + 40, w->state_off);
	mig_le64enc(hdr + 48, state_len);
	mig_le64enc(hdr + 56, data_pages);
	mig_le64enc(hdr + 64, (uint64_t)time(NULL));
	table_hash(w->kind, (const uint8_t *)w->hash, w->nr_pages, hdr + 72);
	mig_le64enc(hdr + HEADER_CHECKED, XXH3_64bits(hdr, HEADER_CHECKED));
	ret = end < 0 ? -errno : pwrite_all(w->fd, w->kind, w->nr_pages, w->table_off);
	if (!ret)
		ret = pwrite_all(w->fd, w->hash, w->nr_pages * SNAP_HASH_LEN,
				 w->table_off + w->nr_pages);
	/* The header last and after the rest is durable: a whole header means a whole file. */
	if (!ret && fdatasync(w->fd))
		ret = -errno;
	if (!ret)
		ret = pwrite_all(w->fd, hdr, HEADER_SIZE, 0);
	if (!ret && fsync(w->fd))
		ret = -errno;
	kv_free(hdr);
	if (ret) {
		write_err(why, whylen, ret, "the file");
		snapw_abort(w);
		return ret;
	}
	ret = name_file(w);
	if (ret) {
		why_set(why, whylen, ret, "naming the file %s: %s", w->path, strerror(-ret));
		snapw_abort(w);
		return ret;
	}
	snapw_abort(w);
	return 0;
}

void snapw_abort(struct snap_writer *w)
{
	if (!w)
		return;
	mig_stream_close(w->state);
	if (w->fd >= 0)
		close(w->fd);
	if (w->tmpname)
		unlink(w->tmpname);
	kv_free(w->tmpname);
	kv_free(w->path);
	kv_free(w->kind);
	kv_free(w->hash);
	kv_free(w);
}

/* --- reading --- */

/* The state section, every record copied out and checked: VM first, END last, nothing after. */
static int read_state(struct snap_reader *r, uint64_t state_off, uint64_t state_len, char *why,
		      size_t whylen)
{
	struct mig_stream *s;
	int ret;

	if (lseek(r->fd, (off_t)state_off, SEEK_SET) != (off_t)state_off)
		return why_set(why, whylen, -errno, "%s: %s", r->path, strerror(errno));
	ret = mig_stream_open(r->fd, false, MIG_F_FILE, -1, &s);
	if (ret)
		return why_set(why, whylen, ret, "%s: %s", r->path, strerror(-ret));
	for (;;) {
		struct mig_rec rec;

		ret = mig_get(s, &rec);
		if (ret) {
			why_set(why, whylen, ret == -EPROTO ? -EBADMSG : ret, "%s: the state section: %s",
				r->path, ret == -ENODATA || ret == -EPIPE ? "cut short (a truncated file)"
									 : mig_stream_error(s));
			ret = ret == -EPROTO || ret == -ENODATA || ret == -EPIPE || ret == -EMSGSIZE
				      ? -EBADMSG : ret;
			break;
		}
		if (r->nr_recs == RECS_MAX || (r->nr_recs == 0) != (rec.type == MIG_REC_VM) ||
		    (rec.type != MIG_REC_VM && rec.type != MIG_REC_VCPU &&
		     rec.type != MIG_REC_DEVICE && rec.type != MIG_REC_END)) {
			ret = why_set(why, whylen, -EBADMSG, "%s: the state section holds a %s record "
				      "where it cannot be", r->path, mig_rec_name(rec.type));
			break;
		}
		r->recs[r->nr_recs] = rec;
		r->recs[r->nr_recs].data = kv_zalloc(rec.len ? rec.len : 1);
		if (!r->recs[r->nr_recs].data) {
			ret = why_set(why, whylen, -ENOMEM, "out of memory");
			break;
		}
		memcpy((uint8_t *)r->recs[r->nr_recs].data, rec.data, rec.len);
		r->nr_recs++;
		if (rec.type == MIG_REC_END) {
			if (mig_stream_bytes(s) != state_len)
				ret = why_set(why, whylen, -EBADMSG, "%s: the state section does not end "
					      "where the header says", r->path);
			break;
		}
	}
	mig_stream_close(s);
	return ret;
}

int snapr_open(const char *path, struct snap_reader **out, char *why, size_t whylen)
{
	uint8_t hdr[HEADER_SIZE] = { 0 }, sum[SNAP_HASH_LEN];
	uint64_t table_off, state_off, state_len, nr, data_pages = 0;
	struct snap_reader *r;
	struct stat st;
	uint32_t version;
	bool bad_tail = false;
	int ret;

	r = kv_zalloc(sizeof(*r));
	if (!r || !(r->path = kv_strdup(path))) {
		kv_free(r);
		return why_set(why, whylen, -ENOMEM, "out of memory");
	}
	/* Non-blocking: a FIFO at the path must be refused, not waited on for a writer. */
	r->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (r->fd < 0 || fstat(r->fd, &st)) {
		ret = why_set(why, whylen, -errno, "%s: %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = why_set(why, whylen, -EINVAL, "%s: not a regular file", path);
		goto fail;
	}
	fcntl(r->fd, F_SETFL, 0);
	ret = pread_all(r->fd, hdr, sizeof(hdr) < (size_t)st.st_size ? sizeof(hdr)
								     : (size_t)st.st_size, 0);
	if (ret || (uint64_t)st.st_size < 8 || memcmp(hdr, SNAP_MAGIC, 8)) {
		ret = why_set(why, whylen, -EINVAL, "%s: not a kvmem snapshot file", path);
		goto fail;
	}
	if ((uint64_t)st.st_size < HEADER_SIZE) {
		ret = why_set(why, whylen, -EBADMSG, "%s: cut short at %lld bytes (a truncated file)",
			      path, (long long)st.st_size);
		goto fail;
	}
	version = mig_le32dec(hdr + 8);
	if (version != SNAP_VERSION) {
		ret = why_set(why, whylen, -EPROTO, "%s: snapshot format version %u; this kvmem reads "
			      "version %u", path, version, SNAP_VERSION);
		goto fail;
	}
	/* The rest of the header page is unused: zeros, or the header is not one this wrote. */
	for (size_t i = HEADER_CHECKED + 8; i < HEADER_SIZE && !bad_tail; i++)
		bad_tail = hdr[i] != 0;
	if (mig_le64dec(hdr + HEADER_CHECKED) != XXH3_64bits(hdr, HEADER_CHECKED) || mig_le32dec(hdr + 12) ||
	    bad_tail) {
		ret = why_set(why, whylen, -EBADMSG, "%s: the header is corrupt (or was never "
			      "finished)", path);
		goto fail;
	}
	nr = mig_le64dec(hdr + 16);
	table_off = mig_le64dec(hdr + 24);
	r->data_off = mig_le64dec(hdr + 32);
	state_off = mig_le64dec(hdr + 40);
	state_len = mig_le64dec(hdr + 48);
	r->data_pages = mig_le64dec(hdr + 56);
	if (!nr || nr > NR_PAGES_MAX || table_off != HEADER_SIZE ||
	    r->data_off != align_page(table_off + nr * (1 + SNAP_HASH_LEN)) ||
	    state_off != r->data_off + nr * PAGE || state_len > STATE_MAX) {
		ret = why_set(why, whylen, -EBADMSG, "%s: the header's sections do not fit together",
			      path);
		goto fail;
	}
	if ((uint64_t)st.st_size != state_off + state_len) {
		ret = why_set(why, whylen, -EBADMSG, "%s: %lld bytes where the header says %" PRIu64
			      " (%s)", path, (long long)st.st_size, state_off + state_len,
			      (uint64_t)st.st_size < state_off + state_len ? "a truncated file"
									   : "bytes added");
		goto fail;
	}
	r->nr_pages = nr;
	r->table = kv_zalloc(nr * (1 + SNAP_HASH_LEN));
	if (!r->table) {
		ret = why_set(why, whylen, -ENOMEM, "out of memory");
		goto fail;
	}
	ret = pread_all(r->fd, r->table, nr * (1 + SNAP_HASH_LEN), table_off);
	if (ret) {
		why_set(why, whylen, ret, "%s: reading the page table: %s", path, strerror(-ret));
		goto fail;
	}
	table_hash(r->table, r->table + nr, nr, sum);
	if (memcmp(sum, hdr + 72, SNAP_HASH_LEN)) {
		ret = why_set(why, whylen, -EBADMSG, "%s: the page table is corrupt", path);
		goto fail;
	}
	for (uint64_t i = 0; i < nr; i++) {
		if (r->table[i] >= SNAP_PAGE_KINDS) {
			ret = why_set(why, whylen, -EBADMSG, "%s: page %" PRIu64 " of an unknown kind",
				      path, i);
			goto fail;
		}
		data_pages += r->table[i] == SNAP_PAGE_DATA;
	}
	if (data_pages != r->data_pages) {
		ret = why_set(why, whylen, -EBADMSG, "%s: the page table is corrupt", path);
		goto fail;
	}
	ret = read_state(r, state_off, state_len, why, whylen);
	if (ret)
		goto fail;
	*out = r;
	return 0;
fail:
	snapr_close(r);
	return ret;
}

void snapr_close(struct snap_reader *r)
{
	if (!r)
		return;
	for (unsigned int i = 0; i < r->nr_recs; i++)
		kv_free((void *)r->recs[i].data);
	if (r->fd >= 0)
		close(r->fd);
	kv_free(r->table);
	kv_free(r->path);
	kv_free(r);
}

uint64_t snapr_nr_pages(const struct snap_reader *r)
{
	return r->nr_pages;
}

uint8_t snapr_kind(const struct snap_reader *r, uint64_t idx)
{
	return r->table[idx];
}

const uint8_t *snapr_hash(const struct snap_reader *r, uint64_t idx)
{
	return r->table + r->nr_pages + idx * SNAP_HASH_LEN;
}

uint64_t snapr_data_pages(const struct snap_reader *r)
{
	return r->data_pages;
}

int snapr_read(struct snap_reader *r, uint64_t idx, uint32_t n, uint8_t *buf, uint64_t *bad)
{
	int ret;

	if (idx > r->nr_pages || n > r->nr_pages - idx)
		return -EINVAL;
	/* One read for the run: holes cost the kernel a clear, not a call each. */
	ret = pread_all(r->fd, buf, (size_t)n * PAGE, r->data_off + idx * PAGE);
	if (ret)
		return ret;
	for (uint32_t i = 0; i < n; i++) {
		uint8_t *p = buf + (uint64_t)i * PAGE, h[SNAP_HASH_LEN];

		if (snapr_kind(r, idx + i) != SNAP_PAGE_DATA) {
			memset(p, 0, PAGE);
			continue;
		}
		mig_sha256(p, PAGE, h);
		if (memcmp(h, snapr_hash(r, idx + i), SNAP_HASH_LEN)) {
			if (bad)
				*bad = idx + i;
			return -EBADMSG;
		}
	}
	return 0;
}

int snapr_fd(const struct snap_reader *r)
{
	return r->fd;
}

uint64_t snapr_data_off(const struct snap_reader *r)
{
	return r->data_off;
}

unsigned int snapr_nr_recs(const struct snap_reader *r)
{
	return r->nr_recs;
}

const struct mig_rec *snapr_rec(const struct snap_reader *r, unsigned int i)
{
	return &r->recs[i];
}

const char *snapr_path(const struct snap_reader *r)
{
	return r->path;
}

json_t *snapr_desc(const struct snap_reader *r)
{
	json_t *o = json_loadb((const char *)r->recs[0].data, r->recs[0].len,
			       JSON_REJECT_DUPLICATES, NULL);

	if (o && !json_is_object(o)) {
		json_decref(o);
		return NULL;
	}
	return o;
}
