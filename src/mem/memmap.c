/* SPDX-License-Identifier: MIT */
/*
 * Guest RAM reservation and memslot registration. RAM is host virtual memory
 * that is mapped MAP_NORESERVE so an overcommitted host only pays for what
 * guests touch; it is never malloc'd.
 */
#define LOG_TAG "memmap"
#include "mem/memmap.h"

#include <errno.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "core/alloc.h"
#include "core/layout.h"
#include "core/log.h"
#include "mem/mem_internal.h"

static int map_region(struct gm_region *r, gpa_t gpa, uint64_t len, uint64_t first_index)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return -ENOMEM;
	/* Guest pages are reclaimed one 4 KiB page at a time; THP would defeat that. */
	madvise(p, len, MADV_NOHUGEPAGE);
	r->gpa = gpa;
	r->len = len;
	r->hva = p;
	r->first_pfn_index = first_index;
	return 0;
}

int memmap_create(uint64_t ram_bytes, struct gm **out)
{
	struct gm *gm;
	uint64_t low;
	int ret;

	if (ram_bytes == 0 || ram_bytes % LAYOUT_PAGE_SIZE)
		return -EINVAL;
	if (ram_bytes < LAYOUT_RESERVED_END + LAYOUT_PAGE_SIZE)
		return -EINVAL;
	if (ram_bytes > LAYOUT_MAX_RAM)
		return -E2BIG;
	gm = kv_zalloc(sizeof(*gm));
	if (!gm)
		return -ENOMEM;
	low = ram_bytes < LAYOUT_LOW_RAM_MAX ? ram_bytes : LAYOUT_LOW_RAM_MAX;
	ret = map_region(&gm->regions[0], 0, low, 0);
	if (ret)
		goto out_free;
	gm->nr_regions = 1;
	if (ram_bytes > low) {
		ret = map_region(&gm->regions[1], LAYOUT_HIGH_RAM_BASE, ram_bytes - low,
				 low / LAYOUT_PAGE_SIZE);
		if (ret)
			goto out_unmap;
		gm->nr_regions = 2;
	}
	gm->ram_bytes = ram_bytes;
	*out = gm;
	return 0;

out_unmap:
	munmap(gm->regions[0].hva, gm->regions[0].len);
out_free:
	kv_free(gm);
	return ret;
}

int gm_create_anon(uint64_t bytes, struct gm **out)
{
	return memmap_create(bytes, out);
}

void gm_destroy(struct gm *gm)
{
	if (!gm)
		return;
	for (unsigned int i = 0; i < gm->nr_regions; i++)
		munmap(gm->regions[i].hva, gm->regions[i].len);
	kv_free(gm);
}

int memmap_register_kvm(struct gm *gm, int vm_fd, uint32_t first_slot, uint32_t flags)
{
	for (unsigned int i = 0; i < gm->nr_regions; i++) {
		struct kvm_userspace_memory_region mr = {
			.slot = first_slot + i,
			.flags = flags,
			.guest_phys_addr = gm->regions[i].gpa,
			.memory_size = gm->regions[i].len,
			.userspace_addr = (uint64_t)(uintptr_t)gm->regions[i].hva,
		};

		if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &mr) < 0) {
			int err = errno;

			log_err("memslot %u (gpa 0x%llx, %llu bytes): %m", mr.slot,
				(unsigned long long)mr.guest_phys_addr,
				(unsigned long long)mr.memory_size);
			return -err;
		}
	}
	return 0;
}

int64_t memmap_page_index(const struct gm *gm, gpa_t gpa)
{
	const struct gm_region *r = gm_find_region(gm, gpa);

	if (!r)
		return -1;
	return (int64_t)(r->first_pfn_index + ((gpa - r->gpa) >> LAYOUT_PAGE_SHIFT));
}

gpa_t memmap_index_gpa(const struct gm *gm, uint64_t index)
{
	const struct gm_region *r = &gm->regions[0];

	if (gm->nr_regions > 1 && index >= gm->regions[1].first_pfn_index)
		r = &gm->regions[1];
	return r->gpa + ((index - r->first_pfn_index) << LAYOUT_PAGE_SHIFT);
}

uint64_t memmap_nr_pages(const struct gm *gm)
{
	return gm->ram_bytes >> LAYOUT_PAGE_SHIFT;
}
