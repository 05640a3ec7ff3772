/* SPDX-License-Identifier: MIT */
/*
 * What every libFuzzer target of tests/fuzz shares: the entry points
 * libFuzzer calls, a reader that takes fields from the front of the input
 * (running out gives zeros, so every input is a valid one), and an input
 * put where code that only reads files can read it (a memory file: nothing
 * is written to any disk).
 */
#ifndef KVMEM_TESTS_FUZZ_H
#define KVMEM_TESTS_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/*
 * What a target sets up once, before its first input: fuzz.c's
 * LLVMFuzzerInitialize calls it after fz_setup.
 */
void fz_init(void);

struct fz {
	const uint8_t *p;
	size_t left;
};

static inline struct fz fz_of(const uint8_t *data, size_t size)
{
	return (struct fz){ data, size };
}

uint8_t fz_u8(struct fz *f);
uint16_t fz_u16(struct fz *f);
uint32_t fz_u32(struct fz *f);
uint64_t fz_u64(struct fz *f);
/* Up to n bytes in place (fewer at the end); *got says how many. */
const uint8_t *fz_bytes(struct fz *f, size_t n, size_t *got);

/*
 * A memory file (memfd) holding exactly data, reused from one input to the
 * next: its path (/proc/self/fd/N) for code that opens files by name.
 */
struct fz_file {
	int fd;
	char path[32];
};
void fz_file_init(struct fz_file *f, const char *name);
void fz_file_set(struct fz_file *f, const void *data, size_t size);

/*
 * Before fz_init (LLVMFuzzerInitialize). Logs: errors only, or everything with
 * KVMEM_FUZZ_VERBOSE set (libFuzzer's -close_fd_mask=2 hides them): a
 * fuzzer feeds the code malformed input all day long. Threads: smaller
 * stacks than the 8 MiB default, since AddressSanitizer clears the shadow
 * of a thread's whole stack at its start and end, which made a thread cost
 * a millisecond (the targets that start threads for every input).
 */
void fz_setup(void);

/*
 * AddressSanitizer's defaults for every target (ASAN_OPTIONS still
 * overrides them): a use-after-free quarantine of 64 MiB, not 256. Freed
 * memory waits in the quarantine before it is used again, so with 256 MiB
 * nearly every allocation lands on memory untouched for hundreds of inputs:
 * page faults, and on the kvm-pvm machines a TLB shootdown to the other CPU
 * with each, a third of the time of the allocation-heavy targets (the
 * control socket's JSON). 64 MiB still holds the frees of dozens of inputs.
 */
const char *__asan_default_options(void);

/*
 * Anonymous guest memory for the whole run, all zero, and a driver's write
 * into [base, base + len) from the input: u16 offset, u8 n, n bytes (cut
 * at the end of the range).
 *
 * fz_guest_reset, at the start of every input, makes it all zero again:
 * every page written since the last reset is cleared, whoever wrote it
 * (the input's driver or the device: a used ring may be anywhere in RAM),
 * so that nothing one input left behind is read by the next. It finds them
 * with the VMM-write tracking of mem/gm.h (every write through the access
 * API marks its pages), so it costs the pages written, not the RAM. With
 * KVMEM_FUZZ_CHECK_RESET set it reads the whole of RAM afterwards and
 * fails unless every byte is zero (a write that bypassed the tracking).
 */
struct gm;
struct gm *fz_guest_memory(uint64_t bytes);
void fz_guest_reset(struct gm *gm);
void fz_guest_write(struct fz *f, struct gm *gm, uint64_t base, uint64_t len);

/*
 * A virtio device's migration state (virtio_dev_save/load), for the
 * targets that drive one: saved, loaded back and saved again gives the
 * same state; and a peer's state (any JSON text) is taken or refused with
 * a reason, never anything else.
 */
struct virtio_dev;
void fz_vdev_round_trip(struct virtio_dev *vdev);
/*
 * Whether the round trip asked for when `trips` of them (this one
 * included) came in a row, with no other operation between them, is worth
 * making: the second checks that a state loaded loads again the same, a
 * third would only check the state the second did. Inputs mutated into
 * long runs of the one-byte round trip cost milliseconds each otherwise.
 */
static inline bool fz_round_trip_due(unsigned int trips)
{
	return trips <= 2;
}
void fz_vdev_load_foreign(struct virtio_dev *vdev, const uint8_t *text, size_t len);

/* The invariant a target checks failed: a crash libFuzzer reports with the input. */
#define FZ_CHECK(cond)                                                       \
	do {                                                                 \
		if (!(cond))                                                 \
			fz_fail(__FILE__, __LINE__, #cond);                  \
	} while (0)
__attribute__((noreturn)) void fz_fail(const char *file, int line, const char *what);

#endif
