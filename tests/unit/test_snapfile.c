/* SPDX-License-Identifier: MIT */
/*
 * The snapshot file (migrate/snapfile.c): pages of every kind and state
 * records written and read back whole, pages given again replacing what was
 * written (a hole again when they have no content now), the file named only
 * once finished (nothing left by an abort), and every way a file can be
 * wrong refused with its error.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "migrate/snapfile.h"
#include "migrate/stream.h"

#define PAGE MIG_PAGE_SIZE
#define NOT_GIVEN SNAP_PAGE_KINDS

static char tmp_root[] = "/tmp/kvmem-test-snapfile-XXXXXX";

/* --- helpers --- */

/* A test's own directory under the group's. */
static void make_dir(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", tmp_root, name);
	assert_int_equal(mkdir(out, 0700), 0);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	return remove(p);
}

static int group_setup(void **state)
{
	(void)state;
	return mkdtemp(tmp_root) ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	return nftw(tmp_root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Page i's content in version v: distinct for every (i, v), never all zero. */
static void fill_page(uint8_t *p, uint64_t i, unsigned int v)
{
	uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ULL ^ ((uint64_t)v + 1) * 0xc2b2ae3d27d4eb4fULL;

	for (size_t k = 0; k < PAGE; k += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + k, &x, 8);
	}
	memcpy(p, &i, sizeof(i));
	p[8] = (uint8_t)v;
	p[9] = 0x5a;
}

/* The directory's names (but . and ..), sorted, joined by '/'. */
static char *list_dir(const char *dir)
{
	struct dirent **ents;
	int n = scandir(dir, &ents, NULL, alphasort);
	size_t len = 1, at = 0;
	char *s;

	assert_true(n >= 0);
	for (int i = 0; i < n; i++)
		len += strlen(ents[i]->d_name) + 1;
	s = calloc(1, len);
	assert_non_null(s);
	for (int i = 0; i < n; i++) {
		if (strcmp(ents[i]->d_name, ".") && strcmp(ents[i]->d_name, ".."))
			at += (size_t)sprintf(s + at, "%s/", ents[i]->d_name);
		free(ents[i]);
	}
	free(ents);
	return s;
}

static bool dir_has(const char *dir, const char *name)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	bool found = false;

	assert_non_null(d);
	while ((e = readdir(d)))
		found |= !strcmp(e->d_name, name);
	closedir(d);
	return found;
}

static bool path_exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

/*
 * Whether this filesystem shows a punched page as a hole (SEEK_DATA skips
 * it): only then is the snapshot's sparseness asserted, not just its zeros.
 */
static bool punch_shows_holes(const char *dir)
{
	char path[600];
	uint8_t buf[3 * PAGE];
	off_t d;
	int fd;

	snprintf(path, sizeof(path), "%s/probe", dir);
	fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	unlink(path);
	memset(buf, 0xaa, sizeof(buf));
	assert_int_equal(pwrite(fd, buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
	if (fsync(fd) || fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, PAGE, PAGE)) {
		close(fd);
		return false;
	}
	d = lseek(fd, PAGE, SEEK_DATA);
	close(fd);
	return d == 2 * PAGE;
}

/* A JSON object's text, for a VM record. */
static char *vm_json(const char *name, uint64_t nr_pages)
{
	json_t *o = json_pack("{s:s, s:I, s:b}", "name", name, "pages", (json_int_t)nr_pages,
			      "stopped", 1);
	char *s;

	assert_non_null(o);
	s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(o);
	assert_non_null(s);
	return s;
}

/* --- 1. round trip --- */

#define RT_PAGES 1000

struct model {
	uint8_t kind[RT_PAGES];
	unsigned int ver[RT_PAGES];	/* content version of a data page */
	bool punched[RT_PAGES];		/* had content once, none now */
	uint64_t written;		/* data pages written, rewrites included */
};

/* One snapw_pages call of kinds k[0..n), data pages given content version v; mirrored in m. */
static void give(struct snap_writer *w, struct model *m, uint64_t idx, uint32_t n,
		 const uint8_t *k, unsigned int v)
{
	uint8_t *data = malloc((size_t)n * PAGE);
	char why[256] = "";

	assert_non_null(data);
	/* What is not data carries junk: the writer must not take it for content. */
	memset(data, 0xee, (size_t)n * PAGE);
	for (uint32_t i = 0; i < n; i++) {
		if (k[i] == SNAP_PAGE_DATA)
			fill_page(data + (size_t)i * PAGE, idx + i, v);
	}
	assert_int_equal(snapw_pages(w, idx, n, k, data, why, sizeof(why)), 0);
	free(data);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t p = idx + i;

		if (k[i] == NOT_GIVEN)
			continue;
		if (k[i] == SNAP_PAGE_DATA) {
			m->ver[p] = v;
			m->punched[p] = false;
			m->written++;
		} else if (m->kind[p] == SNAP_PAGE_DATA) {
			m->punched[p] = true;
		}
		m->kind[p] = k[i];
	}
}

static void test_snapfile_round_trip(void **state)
{
	static struct model m;
	static uint8_t kinds[RT_PAGES], buf[RT_PAGES * PAGE], page[PAGE];
	static const uint8_t zero_page[PAGE], zero_hash[SNAP_HASH_LEN];
	char dir[512], path[600], why[256] = "";
	uint8_t vcpu0[4 + 1000], vcpu1[4 + 3000], dev[4 + 200], end[16], h[SNAP_HASH_LEN];
	struct { const void *p; size_t len; uint32_t type; } recs[5];
	struct snap_writer *w = NULL;
	struct snap_reader *r = NULL;
	struct mig_stream *s;
	uint64_t data_pages = 0, bytes, bad = 12345;
	char *vm = vm_json("round-trip", RT_PAGES);
	bool holes;
	struct stat st;
	json_t *desc;
	int fd;

	(void)state;
	memset(&m, 0, sizeof(m));
	make_dir(dir, sizeof(dir), "roundtrip");
	holes = punch_shows_holes(dir);
	if (!holes)
		print_message("%s shows no punched holes: only zeros are checked, not sparseness\n",
			      dir);
	snprintf(path, sizeof(path), "%s/vm.snap", dir);
	assert_int_equal(snapw_create(path, RT_PAGES, 0, &w, why, sizeof(why)), 0);
	assert_non_null(w);

	/* Pages 0..299: every kind, interleaved. */
	for (uint32_t i = 0; i < 300; i++)
		kinds[i] = (uint8_t[]){ SNAP_PAGE_ZERO, SNAP_PAGE_BALLOONED, NOT_GIVEN,
					SNAP_PAGE_DATA, SNAP_PAGE_DATA }[i % 5];
	kinds[0] = SNAP_PAGE_DATA;
	give(w, &m, 0, 300, kinds, 0);
	/* One page alone. */
	kinds[0] = SNAP_PAGE_DATA;
	give(w, &m, 300, 1, kinds, 0);
	/* 301..999: long runs of each kind, a page never given among them, the last page data. */
	for (uint32_t i = 0; i < 699; i++) {
		uint64_t p = 301 + i;

		kinds[i] = p < 400 ? SNAP_PAGE_DATA : p < 450 ? SNAP_PAGE_ZERO
			 : p < 480 ? SNAP_PAGE_BALLOONED : p < 500 ? NOT_GIVEN
			 : p < 800 ? (p % 3 ? SNAP_PAGE_DATA : SNAP_PAGE_ZERO)
			 : p < 900 ? SNAP_PAGE_DATA : (p % 7 == 0 ? NOT_GIVEN : SNAP_PAGE_DATA);
	}
	kinds[698] = SNAP_PAGE_DATA;
	give(w, &m, 301, 699, kinds, 0);
	assert_int_equal(snapw_bytes(w), m.written * PAGE + MIG_PREAMBLE_SIZE);

	/*
	 * Given again (version 1): in 100..299 data pages get new content, turn
	 * zero or ballooned; zero pages get content; the rest is not given.
	 */
	for (uint32_t i = 0; i < 200; i++) {
		uint64_t p = 100 + i;

		if (m.kind[p] == SNAP_PAGE_DATA)
			kinds[i] = (uint8_t[]){ SNAP_PAGE_DATA, SNAP_PAGE_ZERO, SNAP_PAGE_BALLOONED,
						NOT_GIVEN }[p % 4];
		else if (m.kind[p] == SNAP_PAGE_ZERO && p % 2)
			kinds[i] = SNAP_PAGE_DATA;
		else
			kinds[i] = NOT_GIVEN;
	}
	give(w, &m, 100, 200, kinds, 1);
	/* A whole run of data (320..369) turned into a hole at once, then a part of it back. */
	memset(kinds, SNAP_PAGE_ZERO, 50);
	give(w, &m, 320, 50, kinds, 0);
	memset(kinds, SNAP_PAGE_DATA, 10);
	give(w, &m, 340, 10, kinds, 2);
	/* A page given three times: data, zero, data again. */
	kinds[0] = SNAP_PAGE_ZERO;
	give(w, &m, 999, 1, kinds, 0);
	kinds[0] = SNAP_PAGE_DATA;
	give(w, &m, 999, 1, kinds, 3);
	/* Pages beyond the VM's are refused, and change nothing. */
	why[0] = 0;
	assert_int_equal(snapw_pages(w, RT_PAGES - 1, 2, kinds, page, why, sizeof(why)), -EINVAL);
	assert_true(why[0]);
	assert_int_equal(snapw_pages(w, RT_PAGES + 1, 0, kinds, page, why, sizeof(why)), -EINVAL);
	bytes = snapw_bytes(w);
	assert_int_equal(bytes, m.written * PAGE + MIG_PREAMBLE_SIZE);

	/* The state: VM (JSON), two vCPUs, a device, the end. */
	memset(vcpu0, 0x11, sizeof(vcpu0));
	memset(vcpu1, 0x22, sizeof(vcpu1));
	memset(dev, 0x33, sizeof(dev));
	for (uint32_t i = 0; i < 2; i++)
		memcpy(i ? vcpu1 : vcpu0, &i, 4);
	memset(dev, 0, 4);
	memcpy(end, &m.written, 8);
	memcpy(end + 8, &bytes, 8);
	recs[0].type = MIG_REC_VM, recs[0].p = vm, recs[0].len = strlen(vm);
	recs[1].type = MIG_REC_VCPU, recs[1].p = vcpu0, recs[1].len = sizeof(vcpu0);
	recs[2].type = MIG_REC_VCPU, recs[2].p = vcpu1, recs[2].len = sizeof(vcpu1);
	recs[3].type = MIG_REC_DEVICE, recs[3].p = dev, recs[3].len = sizeof(dev);
	recs[4].type = MIG_REC_END, recs[4].p = end, recs[4].len = sizeof(end);
	s = snapw_state(w);
	assert_non_null(s);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(mig_put_buf(s, recs[i].type, recs[i].p, recs[i].len), 0);
		bytes += MIG_HDR_SIZE + recs[i].len;
		assert_int_equal(snapw_bytes(w), bytes);
	}
	assert_false(path_exists(path));
	assert_int_equal(snapw_finish(w, why, sizeof(why)), 0);
	assert_true(path_exists(path));

	/* Read back. */
	why[0] = 0;
	assert_int_equal(snapr_open(path, &r, why, sizeof(why)), 0);
	assert_non_null(r);
	assert_string_equal(snapr_path(r), path);
	assert_int_equal(snapr_nr_pages(r), RT_PAGES);
	assert_int_equal(snapr_data_off(r) % PAGE, 0);
	assert_true(snapr_data_off(r) >= PAGE + (uint64_t)RT_PAGES * (1 + SNAP_HASH_LEN));
	for (uint64_t i = 0; i < RT_PAGES; i++) {
		data_pages += m.kind[i] == SNAP_PAGE_DATA;
		assert_int_equal(snapr_kind(r, i), m.kind[i]);
		if (m.kind[i] == SNAP_PAGE_DATA) {
			fill_page(page, i, m.ver[i]);
			mig_sha256(page, PAGE, h);
			assert_memory_equal(snapr_hash(r, i), h, SNAP_HASH_LEN);
		} else {
			assert_memory_equal(snapr_hash(r, i), zero_hash, SNAP_HASH_LEN);
		}
	}
	/* The model has every kind, content rewritten, and content turned into holes. */
	assert_true(data_pages > 300 && data_pages < 800);
	assert_int_equal(m.kind[2], SNAP_PAGE_ZERO);	/* never given */
	assert_int_equal(m.kind[1], SNAP_PAGE_BALLOONED);
	assert_int_equal(m.ver[999], 3);
	{
		unsigned int punched = 0, balloon = 0, rewritten = 0;

		for (uint64_t i = 0; i < RT_PAGES; i++) {
			punched += m.punched[i];
			balloon += m.kind[i] == SNAP_PAGE_BALLOONED;
			rewritten += m.kind[i] == SNAP_PAGE_DATA && m.ver[i] > 0;
		}
		assert_true(punched >= 50 && balloon > 0 && rewritten > 10);
		assert_true(m.punched[320] && m.punched[369] && !m.punched[340]);
	}
	assert_int_equal(snapr_data_pages(r), data_pages);

	/* All pages in one read, then in odd pieces. */
	memset(buf, 0xcc, sizeof(buf));
	assert_int_equal(snapr_read(r, 0, RT_PAGES, buf, &bad), 0);
	for (uint64_t i = 0; i < RT_PAGES; i++) {
		if (m.kind[i] == SNAP_PAGE_DATA) {
			fill_page(page, i, m.ver[i]);
			assert_memory_equal(buf + i * PAGE, page, PAGE);
		} else {
			assert_memory_equal(buf + i * PAGE, zero_page, PAGE);
		}
	}
	for (uint64_t i = 0; i < RT_PAGES; i += 7) {
		uint32_t n = RT_PAGES - i < 7 ? (uint32_t)(RT_PAGES - i) : 7;

		memset(buf, 0xcc, (size_t)n * PAGE);
		assert_int_equal(snapr_read(r, i, n, buf, NULL), 0);
		for (uint32_t k = 0; k < n; k++) {
			if (m.kind[i + k] == SNAP_PAGE_DATA)
				fill_page(page, i + k, m.ver[i + k]);
			else
				memset(page, 0, PAGE);
			assert_memory_equal(buf + (size_t)k * PAGE, page, PAGE);
		}
	}
	assert_int_equal(snapr_read(r, RT_PAGES - 1, 2, buf, NULL), -EINVAL);
	assert_int_equal(snapr_read(r, RT_PAGES, 0, buf, NULL), 0);

	/* The file itself: page i's content at data + i pages (for mapping); no content, a hole. */
	fd = snapr_fd(r);
	assert_true(fd >= 0);
	for (uint64_t i = 0; i < RT_PAGES; i++) {
		off_t off = (off_t)(snapr_data_off(r) + i * PAGE);

		assert_int_equal(pread(fd, buf, PAGE, off), PAGE);
		if (m.kind[i] == SNAP_PAGE_DATA) {
			fill_page(page, i, m.ver[i]);
			assert_memory_equal(buf, page, PAGE);
			continue;
		}
		/* Zeros in the file, punched pages too (whatever the filesystem). */
		assert_memory_equal(buf, zero_page, PAGE);
		if (holes) {
			off_t d = lseek(fd, off, SEEK_DATA);

			if (d == off)
				fail_msg("page %llu (%s) has blocks in the file", (unsigned long long)i,
					 m.punched[i] ? "punched" : "never written");
		}
	}
	if (holes) {
		assert_int_equal(fstat(fd, &st), 0);
		assert_true((uint64_t)st.st_blocks * 512 <
			    snapr_data_off(r) + (data_pages + 64) * PAGE);
	}

	/* The records, in order, as written. */
	assert_int_equal(snapr_nr_recs(r), 5);
	for (unsigned int i = 0; i < 5; i++) {
		const struct mig_rec *rec = snapr_rec(r, i);

		assert_non_null(rec);
		assert_int_equal(rec->type, recs[i].type);
		assert_int_equal(rec->seq, i);
		assert_int_equal(rec->len, recs[i].len);
		assert_memory_equal(rec->data, recs[i].p, recs[i].len);
	}
	desc = json_loadb((const char *)snapr_rec(r, 0)->data, snapr_rec(r, 0)->len, 0, NULL);
	assert_non_null(desc);
	assert_true(json_is_object(desc));
	assert_string_equal(json_string_value(json_object_get(desc, "name")), "round-trip");
	json_decref(desc);
	snapr_close(r);
	snapr_close(NULL);
	free(vm);
}

/* --- a small snapshot, for the other tests --- */

#define SMALL_PAGES 8

/* Pages: 0 data, 1 zero, 2 data, 3 ballooned, 4 data, 5 never given, 6 zero, 7 data. */
static const uint8_t small_kinds[SMALL_PAGES] = {
	SNAP_PAGE_DATA, SNAP_PAGE_ZERO, SNAP_PAGE_DATA, SNAP_PAGE_BALLOONED,
	SNAP_PAGE_DATA, NOT_GIVEN, SNAP_PAGE_ZERO, SNAP_PAGE_DATA,
};

/* A writer for path with the small VM's pages (content version v) and, if recs, its records. */
static struct snap_writer *small_writer(const char *path, unsigned int v, bool recs)
{
	static uint8_t data[SMALL_PAGES * PAGE];
	struct snap_writer *w = NULL;
	char why[256] = "", name[32];
	uint64_t end[2] = { 4, 4 * PAGE };
	uint8_t vcpu[64];

	for (uint64_t i = 0; i < SMALL_PAGES; i++)
		fill_page(data + i * PAGE, i, v);
	assert_int_equal(snapw_create(path, SMALL_PAGES, 0, &w, why, sizeof(why)), 0);
	assert_int_equal(snapw_pages(w, 0, SMALL_PAGES, small_kinds, data, why, sizeof(why)), 0);
	if (recs) {
		char *vm;

		snprintf(name, sizeof(name), "small-%u", v);
		vm = vm_json(name, SMALL_PAGES);
		memset(vcpu, (int)v, sizeof(vcpu));
		assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_VM, vm, strlen(vm)), 0);
		assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_VCPU, vcpu, sizeof(vcpu)), 0);
		assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_DEVICE, vcpu, 8), 0);
		assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_END, end, sizeof(end)), 0);
		free(vm);
	}
	return w;
}

static void write_small(const char *path, unsigned int v)
{
	char why[256] = "";

	assert_int_equal(snapw_finish(small_writer(path, v, true), why, sizeof(why)), 0);
}

/* r is the small VM, content version v. */
static void check_small(struct snap_reader *r, unsigned int v)
{
	static uint8_t buf[SMALL_PAGES * PAGE], page[PAGE];
	char name[32];
	json_t *desc;

	assert_int_equal(snapr_nr_pages(r), SMALL_PAGES);
	assert_int_equal(snapr_data_pages(r), 4);
	assert_int_equal(snapr_read(r, 0, SMALL_PAGES, buf, NULL), 0);
	for (uint64_t i = 0; i < SMALL_PAGES; i++) {
		if (small_kinds[i] == SNAP_PAGE_DATA)
			fill_page(page, i, v);
		else
			memset(page, 0, PAGE);
		assert_int_equal(snapr_kind(r, i), small_kinds[i] == NOT_GIVEN ? SNAP_PAGE_ZERO
										: small_kinds[i]);
		assert_memory_equal(buf + i * PAGE, page, PAGE);
	}
	assert_int_equal(snapr_nr_recs(r), 4);
	snprintf(name, sizeof(name), "small-%u", v);
	desc = json_loadb((const char *)snapr_rec(r, 0)->data, snapr_rec(r, 0)->len, 0, NULL);
	assert_non_null(desc);
	assert_string_equal(json_string_value(json_object_get(desc, "name")), name);
	json_decref(desc);
	assert_int_equal(snapr_rec(r, 3)->type, MIG_REC_END);
}

/* --- 2. atomicity --- */

static void test_snapfile_named_only_when_finished(void **state)
{
	char dir[512], path[600], other[600], why[256] = "";
	struct snap_writer *w;
	struct snap_reader *r = NULL, *old = NULL;
	char *before, *now;
	int fd;

	(void)state;
	make_dir(dir, sizeof(dir), "atomic");
	snprintf(path, sizeof(path), "%s/vm.snap", dir);
	/* Something else in the directory, which must stay as it is. */
	snprintf(other, sizeof(other), "%s/other", dir);
	fd = open(other, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "keep", 4), 4);
	close(fd);
	before = list_dir(dir);

	/* Given up at once, and after pages and records: nothing is left. */
	assert_int_equal(snapw_create(path, SMALL_PAGES, 0, &w, why, sizeof(why)), 0);
	assert_false(path_exists(path));
	snapw_abort(w);
	now = list_dir(dir);
	assert_string_equal(now, before);
	free(now);
	w = small_writer(path, 0, true);
	assert_false(path_exists(path));
	assert_false(dir_has(dir, "vm.snap"));
	snapw_abort(w);
	now = list_dir(dir);
	assert_string_equal(now, before);
	free(now);
	snapw_abort(NULL);

	/* Finished: its name, and nothing else beside it. */
	w = small_writer(path, 1, true);
	assert_false(path_exists(path));
	assert_false(dir_has(dir, "vm.snap"));
	assert_int_equal(snapw_finish(w, why, sizeof(why)), 0);
	assert_true(path_exists(path));
	now = list_dir(dir);
	assert_string_equal(now, "other/vm.snap/");
	free(now);
	assert_int_equal(snapr_open(path, &old, why, sizeof(why)), 0);
	check_small(old, 1);

	/* A new one for the same name: the old file stays whole until the new one is finished. */
	w = small_writer(path, 2, true);
	assert_int_equal(snapr_open(path, &r, why, sizeof(why)), 0);
	check_small(r, 1);
	snapr_close(r);
	/* ... and given up: the old file, unchanged. */
	snapw_abort(w);
	assert_int_equal(snapr_open(path, &r, why, sizeof(why)), 0);
	check_small(r, 1);
	snapr_close(r);
	now = list_dir(dir);
	assert_string_equal(now, "other/vm.snap/");
	free(now);

	/* Finished this time: it replaces the old one, which a reader holding it still reads. */
	w = small_writer(path, 3, true);
	assert_int_equal(snapw_finish(w, why, sizeof(why)), 0);
	assert_int_equal(snapr_open(path, &r, why, sizeof(why)), 0);
	check_small(r, 3);
	snapr_close(r);
	check_small(old, 1);
	snapr_close(old);
	now = list_dir(dir);
	assert_string_equal(now, "other/vm.snap/");
	free(now);
	free(before);
}

/* --- 3. refusals --- */

static uint8_t *read_whole(const char *path, size_t *len)
{
	struct stat st;
	uint8_t *p;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	*len = (size_t)st.st_size;
	p = malloc(*len + 1);
	assert_non_null(p);
	assert_int_equal(pread(fd, p, *len, 0), (ssize_t)*len);
	close(fd);
	return p;
}

static void write_whole(const char *path, const void *p, size_t len)
{
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, len), (ssize_t)len);
	close(fd);
}

static uint64_t le64_at(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* snapr_open of path: its error (never a reader), with a reason. */
static int open_fails(const char *path)
{
	struct snap_reader *r = NULL;
	char why[256] = "";
	int ret = snapr_open(path, &r, why, sizeof(why));

	if (ret == 0) {
		snapr_close(r);
		fail_msg("%s: opened", path);
	}
	assert_true(ret < 0);
	if (!why[0])
		fail_msg("%s: refused (%d) without a reason", path, ret);
	return ret;
}

/* The good file at path with the byte at off flipped (or of len bytes, when len is given). */
static void variant(const char *path, const uint8_t *good, size_t good_len, size_t len, long off)
{
	uint8_t *p = malloc(len + 1);

	assert_non_null(p);
	memset(p, 0x77, len + 1);
	memcpy(p, good, len < good_len ? len : good_len);
	if (off >= 0)
		p[off] ^= 0x10;
	write_whole(path, p, len);
	free(p);
}

static void test_snapfile_refuses_each_corruption(void **state)
{
	static uint8_t buf[SMALL_PAGES * PAGE];
	char dir[512], good_path[600], path[600], why[256] = "";
	uint8_t *good;
	size_t len;
	uint64_t nr, data_off, state_off, state_len, bad = 12345;
	struct snap_reader *r = NULL;
	int ret;

	(void)state;
	make_dir(dir, sizeof(dir), "refuse");
	snprintf(good_path, sizeof(good_path), "%s/good.snap", dir);
	snprintf(path, sizeof(path), "%s/bad.snap", dir);
	write_small(good_path, 0);
	good = read_whole(good_path, &len);
	nr = le64_at(good + 16);
	data_off = le64_at(good + 32);
	state_off = le64_at(good + 40);
	state_len = le64_at(good + 48);
	assert_int_equal(nr, SMALL_PAGES);
	assert_int_equal(state_off, data_off + SMALL_PAGES * PAGE);
	assert_int_equal(len, state_off + state_len);
	assert_memory_equal(good, SNAP_MAGIC, 8);

	/* The copy as written opens. */
	variant(path, good, len, len, -1);
	assert_int_equal(snapr_open(path, &r, why, sizeof(why)), 0);
	check_small(r, 0);
	snapr_close(r);

	/* Not a snapshot at all; its magic wrong. */
	write_whole(path, "{\"not\":\"a snapshot\"}\n", 21);
	assert_int_equal(open_fails(path), -EINVAL);
	variant(path, good, len, len, 3);
	assert_int_equal(open_fails(path), -EINVAL);
	/* Empty, a directory, nothing there. */
	write_whole(path, "", 0);
	assert_int_equal(open_fails(path), -EINVAL);
	assert_int_equal(open_fails(dir), -EINVAL);
	snprintf(path, sizeof(path), "%s/missing.snap", dir);
	assert_int_equal(open_fails(path), -ENOENT);
	snprintf(path, sizeof(path), "%s/bad.snap", dir);

	/* Cut short (by one byte, to the header, inside it) or one byte added. */
	variant(path, good, len, len - 1, -1);
	assert_int_equal(open_fails(path), -EBADMSG);
	variant(path, good, len, len + 1, -1);
	assert_int_equal(open_fails(path), -EBADMSG);
	variant(path, good, len, PAGE, -1);
	assert_int_equal(open_fails(path), -EBADMSG);
	variant(path, good, len, 100, -1);
	assert_int_equal(open_fails(path), -EBADMSG);
	variant(path, good, len, state_off, -1);
	assert_int_equal(open_fails(path), -EBADMSG);

	/* Another version. */
	variant(path, good, len, len, 8);
	assert_int_equal(open_fails(path), -EPROTO);

	/* The header: reserved word, page count, each section's place, the time, the table's hash, the check. */
	{
		static const long offs[] = { 12, 16, 24, 32, 40, 48, 56, 64, 72, 103, 104, 111,
					     112, 2000, 4095 };

		for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
			variant(path, good, len, len, offs[i]);
			ret = open_fails(path);
			if (ret != -EBADMSG)
				fail_msg("header byte %ld flipped: %d, not -EBADMSG", offs[i], ret);
		}
	}

	/* A FIFO at the path: refused, not waited on for a writer. */
	unlink(path);
	assert_int_equal(mkfifo(path, 0600), 0);
	assert_int_equal(open_fails(path), -EINVAL);
	unlink(path);

	/* The page table: a kind, a hash. */
	variant(path, good, len, len, PAGE + 1);
	assert_int_equal(open_fails(path), -EBADMSG);
	variant(path, good, len, len, PAGE + 2);
	assert_int_equal(open_fails(path), -EBADMSG);
	variant(path, good, len, len, (long)(PAGE + SMALL_PAGES + 3 * SNAP_HASH_LEN + 7));
	assert_int_equal(open_fails(path), -EBADMSG);

	/* The state section: its preamble, a record's header, a payload, the end record. */
	{
		const long offs[] = {
			(long)state_off,				/* preamble magic */
			(long)state_off + 12,				/* preamble flags */
			(long)state_off + MIG_PREAMBLE_SIZE + 1,	/* VM record's type */
			(long)state_off + MIG_PREAMBLE_SIZE + 4,	/* its length */
			(long)state_off + MIG_PREAMBLE_SIZE + 8,	/* its number */
			(long)state_off + MIG_PREAMBLE_SIZE + MIG_HDR_SIZE + 2, /* its payload */
			(long)len - 16 - MIG_HDR_SIZE,			/* END's header */
			(long)len - 1,					/* END's payload */
		};

		for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
			variant(path, good, len, len, offs[i]);
			ret = open_fails(path);
			/* Corrupt content, whatever the stream's own error (-EPROTO included). */
			if (ret != -EBADMSG)
				fail_msg("state byte %ld flipped: %d, not -EBADMSG", offs[i], ret);
		}
	}

	/* A data page: the file opens, that page is refused when read, the others read. */
	variant(path, good, len, len, (long)(data_off + 4 * PAGE + 100));
	assert_int_equal(snapr_open(path, &r, why, sizeof(why)), 0);
	assert_int_equal(snapr_read(r, 0, 4, buf, &bad), 0);
	assert_int_equal(bad, 12345);
	assert_int_equal(snapr_read(r, 5, 3, buf, &bad), 0);
	assert_int_equal(snapr_read(r, 4, 1, buf, &bad), -EBADMSG);
	assert_int_equal(bad, 4);
	bad = 12345;
	assert_int_equal(snapr_read(r, 0, SMALL_PAGES, buf, &bad), -EBADMSG);
	assert_int_equal(bad, 4);
	assert_int_equal(snapr_read(r, 4, 1, buf, NULL), -EBADMSG);
	snapr_close(r);

	/* Bytes where a page without content has none: it still reads as zeros. */
	{
		static const uint8_t zero_page[PAGE];
		uint8_t *p = malloc(len);

		assert_non_null(p);
		memcpy(p, good, len);
		p[data_off + 1 * PAGE + 9] = 0xab;	/* zero */
		p[data_off + 3 * PAGE] = 0xcd;		/* ballooned */
		p[data_off + 5 * PAGE + PAGE - 1] = 1;	/* never given */
		write_whole(path, p, len);
		free(p);
		assert_int_equal(snapr_open(path, &r, why, sizeof(why)), 0);
		memset(buf, 0xcc, sizeof(buf));
		assert_int_equal(snapr_read(r, 0, SMALL_PAGES, buf, NULL), 0);
		assert_memory_equal(buf + 1 * PAGE, zero_page, PAGE);
		assert_memory_equal(buf + 3 * PAGE, zero_page, PAGE);
		assert_memory_equal(buf + 5 * PAGE, zero_page, PAGE);
		check_small(r, 0);
		snapr_close(r);
	}
	free(good);
}

/* A finished file whose state records are not VM first and END last is refused. */
static void test_snapfile_refuses_state_out_of_form(void **state)
{
	char dir[512], path[600], why[256] = "";
	uint64_t end[2] = { 0, 0 };
	uint32_t round[2] = { 1, 1 };
	struct snap_writer *w;

	(void)state;
	make_dir(dir, sizeof(dir), "form");
	snprintf(path, sizeof(path), "%s/vm.snap", dir);
	/* No records at all. */
	w = small_writer(path, 0, false);
	assert_int_equal(snapw_finish(w, why, sizeof(why)), 0);
	assert_int_equal(open_fails(path), -EBADMSG);
	/* No END. */
	w = small_writer(path, 0, false);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_VM, "{}", 2), 0);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_VCPU, end, 8), 0);
	assert_int_equal(snapw_finish(w, why, sizeof(why)), 0);
	assert_int_equal(open_fails(path), -EBADMSG);
	/* A vCPU before the VM. */
	w = small_writer(path, 0, false);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_VCPU, end, 8), 0);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_VM, "{}", 2), 0);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_END, end, 16), 0);
	assert_int_equal(snapw_finish(w, why, sizeof(why)), 0);
	assert_int_equal(open_fails(path), -EBADMSG);
	/* A second VM. */
	w = small_writer(path, 0, false);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_VM, "{}", 2), 0);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_VM, "{}", 2), 0);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_END, end, 16), 0);
	assert_int_equal(snapw_finish(w, why, sizeof(why)), 0);
	assert_int_equal(open_fails(path), -EBADMSG);
	/* A record a snapshot does not hold. */
	w = small_writer(path, 0, false);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_VM, "{}", 2), 0);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_ROUND, round, 8), 0);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_END, end, 16), 0);
	assert_int_equal(snapw_finish(w, why, sizeof(why)), 0);
	assert_int_equal(open_fails(path), -EBADMSG);
	/* Something after END. */
	w = small_writer(path, 0, false);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_VM, "{}", 2), 0);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_END, end, 16), 0);
	assert_int_equal(mig_put_buf(snapw_state(w), MIG_REC_DEVICE, end, 8), 0);
	assert_int_equal(snapw_finish(w, why, sizeof(why)), 0);
	assert_int_equal(open_fails(path), -EBADMSG);
}

/* --- 4. the writer's refusals --- */

static void test_snapfile_create_refuses(void **state)
{
	char dir[512], path[600], why[256];
	struct snap_writer *w = NULL;
	char *before, *now;

	(void)state;
	make_dir(dir, sizeof(dir), "create");
	before = list_dir(dir);
	snprintf(path, sizeof(path), "%s/vm.snap", dir);

	why[0] = 0;
	assert_int_equal(snapw_create(path, 0, 0, &w, why, sizeof(why)), -EINVAL);
	assert_true(why[0]);
	assert_null(w);

	snprintf(path, sizeof(path), "%s/no-such-dir/vm.snap", dir);
	why[0] = 0;
	assert_int_equal(snapw_create(path, SMALL_PAGES, 0, &w, why, sizeof(why)), -ENOENT);
	assert_true(why[0]);
	assert_null(w);

	/* More than the filesystem has free. */
	snprintf(path, sizeof(path), "%s/vm.snap", dir);
	why[0] = 0;
	assert_int_equal(snapw_create(path, SMALL_PAGES, 1ULL << 62, &w, why, sizeof(why)),
			 -ENOSPC);
	assert_true(why[0]);
	assert_null(w);

	now = list_dir(dir);
	assert_string_equal(now, before);
	free(now);
	free(before);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_snapfile_round_trip),
		cmocka_unit_test(test_snapfile_named_only_when_finished),
		cmocka_unit_test(test_snapfile_refuses_each_corruption),
		cmocka_unit_test(test_snapfile_refuses_state_out_of_form),
		cmocka_unit_test(test_snapfile_create_refuses),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
