/* SPDX-License-Identifier: MIT */
/*
 * Fault injection: named points where a build with -Dfault_injection=true
 * can be made to fail a system call or an allocation on purpose, so that
 * tests show each failure ends with nothing lost. In every other build a
 * point is the constant 0 and this header is all there is (no code, no
 * data; the point's name is still checked by the compiler).
 *
 * A point is hit each time its code runs. It is armed from the environment
 * at start (KVMEM_FAULTS, read by main) or later by the `faults` control
 * verb, with one spec per point, comma-separated:
 *
 *	point[:errno][@nth][*count]
 *
 * errno is a name (ENOMEM) or a number (the point's default when left out);
 * nth is the first hit to fail, counted from 1 from the moment the point is
 * armed (default 1); count is how many hits fail from there on (default 1;
 * "all": every one; 0 disarms the point). So "alloc.dedup:ENOMEM@3*2"
 * fails the third and fourth allocations of the dedup engine after arming.
 *
 * Hits and injections are counted per point (atomics: any thread may hit a
 * point while another arms it; a hit meeting a re-arm half done sees the old
 * or the new setting). Each injection is logged once at debug level.
 */
#ifndef KVMEM_CORE_FAULT_H
#define KVMEM_CORE_FAULT_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Every point: its id, its name, the errno it fails with by default, and
 * what it fails. The name is what specs and `kvmem --fault-points` use.
 */
#define FAULT_POINTS(X)                                                                         \
	X(ALLOC_DEDUP, "alloc.dedup", ENOMEM,                                                   \
	  "an allocation of the dedup engine (src/dedup): scanner, index, store, stats")        \
	X(ALLOC_POLICY, "alloc.policy", ENOMEM,                                                 \
	  "an allocation of the policy and what it reads (mem/overcommit, account, access, "    \
	  "damon, reclaim)")                                                                    \
	X(ALLOC_BALLOON, "alloc.balloon", ENOMEM,                                               \
	  "an allocation of the balloon device and its virtio transport")                       \
	X(ALLOC_MEM, "alloc.mem", ENOMEM,                                                       \
	  "an allocation of the rest of src/mem: transactions, swap, userfaultfd service")      \
	X(UFFD_WRITEPROTECT, "uffd.writeprotect", EAGAIN,                                      \
	  "UFFDIO_WRITEPROTECT (protect or lift) fails, nothing done")                          \
	X(UFFD_WRITEPROTECT_PARTIAL, "uffd.writeprotect.partial", ENOMEM,                      \
	  "UFFDIO_WRITEPROTECT does the first half of its range, then fails")                   \
	X(UFFD_COPY, "uffd.copy", ENOMEM, "UFFDIO_COPY fails, nothing copied")                  \
	X(UFFD_COPY_PARTIAL, "uffd.copy.partial", EAGAIN,                                      \
	  "UFFDIO_COPY copies the first half of its range and stops (EAGAIN with the count, "  \
	  "as the kernel does); a one-page copy copies nothing and fails")                     \
	X(UFFD_ZEROPAGE, "uffd.zeropage", ENOMEM, "UFFDIO_ZEROPAGE fails, nothing mapped")      \
	X(UFFD_REGISTER, "uffd.register", ENOMEM,                                              \
	  "UFFDIO_REGISTER of guest RAM after a remap or to change its modes fails")            \
	X(DEDUP_WINDOW_MMAP, "dedup.window.mmap", ENOMEM,                                      \
	  "the mapping a dedup window is rebuilt in cannot be made")                            \
	X(DEDUP_WINDOW_MREMAP, "dedup.window.mremap", ENOMEM,                                  \
	  "the rebuilt dedup window cannot be moved over the old one")                          \
	X(DEDUP_FRAME_MMAP, "dedup.frame.mmap", ENOMEM,                                        \
	  "a page merged on its own cannot be mapped onto its frame")                           \
	X(CONSOLE_LOG_WRITE, "console.log.write", ENOSPC,                                      \
	  "a write to a VM's console log file fails (a full disk)")                             \
	X(SWAP_FILE_READ, "swap.file.read", EIO,                                               \
	  "a read of the swap file fails: io_uring, the thread engine or a direct pread")       \
	X(SWAP_FILE_WRITE, "swap.file.write", EIO,                                             \
	  "a write of the swap file fails: io_uring or the thread engine")                      \
	X(MIGRATE_SEND, "migrate.send", ECONNRESET,                                            \
	  "a send on a migration socket fails (the peer reset the connection)")                 \
	X(MIGRATE_RECV, "migrate.recv", ECONNRESET,                                            \
	  "a receive on a migration socket fails (the peer reset the connection)")              \
	X(DAMON_WRITE, "damon.write", EBUSY,                                                   \
	  "a write to DAMON's sysfs fails (EBUSY: another user's command held it throughout)")

enum fault_point {
#define FAULT_ENUM(id, name, err, what) FAULT_##id,
	FAULT_POINTS(FAULT_ENUM)
#undef FAULT_ENUM
	FAULT_NR_POINTS
};

/* A point's figures and setting (fault_get). */
struct fault_info {
	const char *name;
	const char *what;
	int default_err;	/* positive errno */
	uint64_t hits;		/* since the process started */
	uint64_t injected;	/* failures injected, since the process started */
	bool armed;		/* more hits will fail */
	int err;		/* what an armed point fails with (positive errno) */
	uint64_t first;		/* hit number of the first failure */
	uint64_t last;		/* ... of the last (UINT64_MAX: every hit from first on) */
};

/*
 * Which allocation point a call from source file `file` (its __FILE__) is,
 * by the module the file is in; FAULT_NR_POINTS: none (such allocations are
 * never failed). Folded to a constant by the compiler where file is a
 * literal and optimisation is on.
 */
static inline enum fault_point fault_alloc_point(const char *file)
{
	if (__builtin_strstr(file, "src/dedup/"))
		return FAULT_ALLOC_DEDUP;
	if (__builtin_strstr(file, "src/balloon/") || __builtin_strstr(file, "src/core/virtio/"))
		return FAULT_ALLOC_BALLOON;
	if (__builtin_strstr(file, "src/mem/overcommit.c") ||
	    __builtin_strstr(file, "src/mem/account.c") ||
	    __builtin_strstr(file, "src/mem/access.c") ||
	    __builtin_strstr(file, "src/mem/damon.c") || __builtin_strstr(file, "src/mem/reclaim.c"))
		return FAULT_ALLOC_POLICY;
	if (__builtin_strstr(file, "src/mem/"))
		return FAULT_ALLOC_MEM;
	return FAULT_NR_POINTS;
}

#ifdef KVMEM_FAULT_INJECTION

/*
 * Point `id` is hit: 0 to go on, or the negative errno to fail with. A
 * name that is no point is a compile error.
 */
#define FAULT_POINT(id) fault_hit(FAULT_##id)
int fault_hit(enum fault_point p);

static inline bool fault_enabled(void)
{
	return true;
}

/*
 * Arm the points a spec names (the grammar above), leaving the others as
 * they are; NULL or "" arms nothing. 0, or -EINVAL with *why (len bytes)
 * saying what is wrong, nothing armed. Thread-safe.
 */
int fault_configure(const char *spec, char *why, size_t len);
/* Disarm every point (the counts stay). */
void fault_clear(void);
/* Point p's figures and setting; p < FAULT_NR_POINTS. */
void fault_get(enum fault_point p, struct fault_info *out);

#else /* !KVMEM_FAULT_INJECTION */

/* Nothing: a constant the compiler drops, and the name still checked. */
#define FAULT_POINT(id) ((void)FAULT_##id, 0)

static inline bool fault_enabled(void)
{
	return false;
}

/* A spec given to a build without fault injection: -ENOTSUP, so main can say it is ignored. */
static inline int fault_configure(const char *spec, char *why, size_t len)
{
	(void)why;
	(void)len;
	return spec && *spec ? -ENOTSUP : 0;
}

static inline void fault_clear(void)
{
}

static inline void fault_get(enum fault_point p, struct fault_info *out)
{
	(void)p;
	*out = (struct fault_info){ 0 };
}

#endif /* KVMEM_FAULT_INJECTION */

#endif
