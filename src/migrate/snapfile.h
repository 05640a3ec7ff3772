/* SPDX-License-Identifier: MIT */
/*
 * The snapshot file: one VM, whole, in a file of its own. Its memory is a
 * page-addressable section, so that a restore finds any page without
 * reading anything else (lazy restore serves a first touch from it, and a
 * rollback reloads only the pages whose hash differs); its state (the VM's
 * description, every vCPU, the clock, machine and devices) is the
 * migration stream's records (migrate/stream.h), as a migration sends them.
 *
 * Layout (all little-endian, every section page-aligned):
 *
 *   header    one page: magic "KVMEMSNP", version, the sections' places,
 *             the SHA-256 of the page table, an XXH3-64 of the header;
 *   table     the page table: a kind byte per page (zero, data, ballooned),
 *             then a SHA-256 per page (of its content; zeros for the others);
 *   data      page i of the VM's RAM (page-index order, mem/memmap.h) at
 *             data + i pages; a page without content is a hole, so the file
 *             takes the disk of the VM's data, and reads as the guest would;
 *   state     a migration stream (MIG_F_FILE) of VM, VCPU, DEVICE and END
 *             records.
 *
 * A file is written under no name (O_TMPFILE where the filesystem has it,
 * else a hidden temporary name), made durable (fsync), and only then given
 * its name (rename over any old one): a crash mid-save leaves the old file
 * or none, never one that looks whole. A reader believes nothing before it
 * is checked: the header's check, the version, every section inside the
 * file, the table against its hash, every state record (checksummed and
 * numbered, ending with END); a data page is checked against its hash when
 * it is read.
 */
#ifndef KVMEM_MIGRATE_SNAPFILE_H
#define KVMEM_MIGRATE_SNAPFILE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migrate/stream.h"

#define SNAP_MAGIC "KVMEMSNP"
#define SNAP_VERSION 1
#define SNAP_HASH_LEN 32

/* The kind byte of a page in the table. */
enum snap_page_kind {
	SNAP_PAGE_ZERO = 0,	/* reads as zeros: a hole */
	SNAP_PAGE_DATA = 1,	/* content in the data section, checked by its hash */
	SNAP_PAGE_BALLOONED = 2, /* the guest's balloon holds it: a hole, given back to the balloon */
	SNAP_PAGE_KINDS
};

/* --- writing --- */

struct snap_writer;

/*
 * Start a file for a VM of nr_pages pages, to be named path once finished.
 * need_bytes: what the data will take at least (the VM's resident memory),
 * refused at once (-ENOSPC) when the filesystem has not that much free. 0 or
 * -errno, why set.
 */
int snapw_create(const char *path, uint64_t nr_pages, uint64_t need_bytes,
		 struct snap_writer **out, char *why, size_t whylen);
/*
 * Pages [idx, idx + n): kind[i] (enum snap_page_kind, or SNAP_PAGE_KINDS for
 * a page not given) and, for data, its content at data + i pages. A page
 * given again replaces what was written of it (a hole again when it has no
 * content now). 0 or -errno, why set.
 */
int snapw_pages(struct snap_writer *w, uint64_t idx, uint32_t n, const uint8_t *kind,
		const uint8_t *data, char *why, size_t whylen);
/* The state section's stream: its records follow one another from the section's start. */
struct mig_stream *snapw_state(struct snap_writer *w);
/* Bytes written so far (data and state). */
uint64_t snapw_bytes(const struct snap_writer *w);
/*
 * Write the table and the header, make the file durable and give it its
 * name (replacing any file of that name). The writer is freed either way;
 * on failure nothing is left. 0 or -errno, why set.
 */
int snapw_finish(struct snap_writer *w, char *why, size_t whylen);
/* Give up: nothing is left on disk (NULL: nothing to do). */
void snapw_abort(struct snap_writer *w);

/* --- reading --- */

struct snap_reader;

/*
 * Open and check a snapshot file: refused (-EINVAL, -EPROTO for another
 * version, -EBADMSG for corrupt content, or -errno) with a reason naming
 * what is wrong. The state records are read and checked here, whole.
 */
int snapr_open(const char *path, struct snap_reader **out, char *why, size_t whylen);
void snapr_close(struct snap_reader *r);
uint64_t snapr_nr_pages(const struct snap_reader *r);
/* Page idx's kind (enum snap_page_kind) and hash (SNAP_HASH_LEN bytes). */
uint8_t snapr_kind(const struct snap_reader *r, uint64_t idx);
const uint8_t *snapr_hash(const struct snap_reader *r, uint64_t idx);
/* Pages with content in the file. */
uint64_t snapr_data_pages(const struct snap_reader *r);
/*
 * Read pages [idx, idx + n) into buf (n pages): data pages checked against
 * their hashes, the others zeros. 0, -EBADMSG (a page does not match its
 * hash: the file is corrupt; *bad its index), or -errno.
 */
int snapr_read(struct snap_reader *r, uint64_t idx, uint32_t n, uint8_t *buf, uint64_t *bad);
/* The file (for mapping its data section) and where page 0's content is. */
int snapr_fd(const struct snap_reader *r);
uint64_t snapr_data_off(const struct snap_reader *r);
/* The state records, in order: VM first, END last (payloads valid until snapr_close). */
unsigned int snapr_nr_recs(const struct snap_reader *r);
const struct mig_rec *snapr_rec(const struct snap_reader *r, unsigned int i);
/* The VM's description (its VM record, a JSON object; new reference), or NULL when malformed. */
json_t *snapr_desc(const struct snap_reader *r);
/* The file's path as opened. */
const char *snapr_path(const struct snap_reader *r);

#endif
