/* SPDX-License-Identifier: MIT */
/*
 * /proc/self/pagemap and the kernel's shared zero page (see pagemap.h).
 */
#define LOG_TAG "pagemap"
#include "mem/pagemap.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/layout.h"
#include "mem/mem_internal.h"

static int pagemap_fd = -1;
static uint64_t zero_pfn;	/* the shared zero page's PFN; 0: not recognised */
static bool zero_on_read;	/* a read fault of a hole maps it */
static pthread_once_t pagemap_once = PTHREAD_ONCE_INIT;

/*
 * The PFN that both of the two pages at p map, or 0 when they map different
 * pages (or none, or pagemap hides PFNs: a process without CAP_SYS_ADMIN
 * reads 0 for every PFN). Two pages of one fresh private mapping can only
 * share a PFN when it is the kernel's zero page.
 */
static uint64_t shared_pfn(const char *p)
{
	uint64_t e[2] = { 0, 0 };

	if (pread(pagemap_fd, e, sizeof(e), (off_t)((uintptr_t)p / 4096 * 8)) != sizeof(e) ||
	    !(e[0] & PM_PRESENT) || !(e[1] & PM_PRESENT) ||
	    (e[0] & PM_PFN_MASK) != (e[1] & PM_PFN_MASK))
		return 0;
	return e[0] & PM_PFN_MASK;
}

/* Two pages the kernel maps its zero page into through UFFDIO_ZEROPAGE, if it will. */
static uint64_t uffd_zero_pfn(char *p)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = {
		.range = { (uint64_t)(uintptr_t)p, 2 * 4096 },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	struct uffdio_zeropage z = { .range = reg.range };
	uint64_t pfn = 0;
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		return 0;
	if (ioctl(fd, UFFDIO_API, &api) == 0 && ioctl(fd, UFFDIO_REGISTER, &reg) == 0 &&
	    ioctl(fd, UFFDIO_ZEROPAGE, &z) == 0)
		pfn = shared_pfn(p);
	close(fd);
	return pfn;
}

/*
 * The kernel's shared zero page has one PFN: learn it so it never counts as
 * resident. Most kernels map it on a read of untouched anonymous memory: two
 * such reads give one PFN. Some never do (pvm_no_zero_page: a read allocates
 * a page) but still map it through UFFDIO_ZEROPAGE: two pages filled so give
 * it. Where neither does (a kernel that forbids the zero page to the process,
 * mm_forbids_zeropage; or PFNs hidden from us), there is no zero PFN to
 * learn: learning one anyway would single out a freed page that a guest may
 * get back later.
 */
static void open_pagemap(void)
{
	char *p;

	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap_fd < 0)
		return;
	p = mmap(NULL, 4 * 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return;
	(void)*(volatile char *)p;
	(void)*(volatile char *)(p + 4096);
	zero_pfn = shared_pfn(p);
	zero_on_read = zero_pfn != 0;
	if (!zero_pfn)
		zero_pfn = uffd_zero_pfn(p + 2 * 4096);
	munmap(p, 4 * 4096);
}

bool mem_zero_page_known(void)
{
	pthread_once(&pagemap_once, open_pagemap);
	return zero_pfn != 0;
}

bool mem_zero_page_on_read(void)
{
	pthread_once(&pagemap_once, open_pagemap);
	return zero_on_read;
}

void mem_forget_zero_page(void)
{
	pthread_once(&pagemap_once, open_pagemap);
	zero_pfn = 0;
	zero_on_read = false;
}

int64_t mem_pagemap(const struct gm *gm, uint64_t idx, uint64_t n, uint64_t *entries)
{
	ssize_t got;

	pthread_once(&pagemap_once, open_pagemap);
	if (pagemap_fd < 0)
		return -ENOSYS;
	got = pread(pagemap_fd, entries, n * 8,
		    (off_t)((uintptr_t)mem_page_hva(gm, idx) / LAYOUT_PAGE_SIZE * 8));
	if (got < 0)
		return -errno;
	return got / 8;
}

bool mem_pm_resident(uint64_t e)
{
	return (e & PM_PRESENT) && (!zero_pfn || (e & PM_PFN_MASK) != zero_pfn);
}

bool mem_pm_file(uint64_t e)
{
	return (e & PM_PRESENT) && (e & PM_FILE);
}

/*
 * A pte marker (what write-protecting an unpopulated pte of a file mapping
 * leaves: the page is not mapped, writes are held) reads as a swap entry of
 * the last swap type (SWP_PTE_MARKER, 31), with PM_UFFD_WP: it is not a page.
 */
static bool pm_is_marker(uint64_t e)
{
	return !(e & PM_PRESENT) && (e & PM_SWAP) && (e & PM_SWAP_TYPE) == PM_SWAP_TYPE;
}

bool mem_pm_is_private(uint64_t e)
{
	return (e & (PM_PRESENT | PM_SWAP)) && !(e & PM_FILE) && !pm_is_marker(e);
}

bool mem_pm_is_zero_page(uint64_t e)
{
	return (e & PM_PRESENT) && !(e & PM_FILE) && !mem_pm_resident(e);
}

bool mem_pm_is_populated(uint64_t e)
{
	/* A marker counts: it holds writes like a protected page would. */
	return e & (PM_PRESENT | PM_SWAP);
}

bool mem_pm_is_hole(uint64_t e)
{
	return !(e & PM_PRESENT) && (!(e & PM_SWAP) || pm_is_marker(e));
}


bool mem_pm_is_swapped(uint64_t e)
{
	return !(e & PM_PRESENT) && (e & PM_SWAP) && !pm_is_marker(e);
}

bool mem_pm_exclusive(uint64_t e)
{
	return e & PM_MMAP_EXCLUSIVE;
}
