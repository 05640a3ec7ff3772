/* SPDX-License-Identifier: MIT */
/*
 * The guest image loader (core/boot.c, boot_load_elf): the input is the
 * image file, loaded from a memory file into anonymous guest memory, at a
 * phys offset of 0 (kvm) and of a host address (thread), as a VM loads a
 * guest named in a config. An image taken must have its entry inside an
 * executable segment, and end on a page boundary inside RAM.
 */
#include <errno.h>

#include "core/boot.h"
#include "core/layout.h"
#include "fuzz.h"
#include "mem/gm.h"

#define RAM (16ULL << 20)

static struct gm *gm;
static struct fz_file file;

void fz_init(void)
{
	fz_file_init(&file, "fuzz-elf");
	gm = fz_guest_memory(RAM);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint64_t offsets[] = { 0, 0x123400000000ULL };
	struct boot_image img;

	fz_file_set(&file, data, size);
	for (unsigned int i = 0; i < 2; i++) {
		int ret = boot_load_elf(gm, file.path, offsets[i], &img);

		FZ_CHECK(ret == 0 || ret == -ENOEXEC || ret == -EFAULT);
		if (ret)
			continue;
		FZ_CHECK(img.entry >= ABI_IMAGE_BASE && img.entry < img.image_end);
		FZ_CHECK(img.image_end % LAYOUT_PAGE_SIZE == 0 && img.image_end <= RAM);
	}
	return 0;
}
