/* SPDX-License-Identifier: MIT */
/*
 * The kvmem balloon driver's answers (guest/balloon_drv.h) in a Linux
 * guest, where Linux's own virtio_balloon drives the device out of the
 * workload's sight. What the workload needs for wait=balloon is read from
 * the kernel: the driver is running when a virtio device is bound to it,
 * and the balloon's pages are the kernel's balloon_inflate less its
 * balloon_deflate events (/proc/vmstat). The target is the driver's own
 * business, so "settled" is the balloon holding pages that stopped
 * changing for a while: Linux inflates a page frame array at a time, each
 * waiting for the device, and under nested emulation one takes a second
 * or two.
 */
#include <dirent.h>
#include <stdio.h>
#include <string.h>

#include "guest/balloon_drv.h"
#include "guest/rt.h"

#define BALLOON_DRIVER_DIR "/sys/bus/virtio/drivers/virtio_balloon"
#define SETTLE_NS (10 * RT_NS_PER_SEC)

bool balloon_is_running(void)
{
	DIR *d = opendir(BALLOON_DRIVER_DIR);
	struct dirent *e;
	bool bound = false;

	if (!d)
		return false;
	while (!bound && (e = readdir(d)))
		bound = strncmp(e->d_name, "virtio", 6) == 0;
	closedir(d);
	return bound;
}

/* A /proc/vmstat counter, 0 when the kernel has none (no CONFIG_MEMORY_BALLOON). */
static uint64_t vmstat(const char *name)
{
	FILE *f = fopen("/proc/vmstat", "r");
	unsigned long long v, found = 0;
	char key[64];

	if (!f)
		return 0;
	while (fscanf(f, "%63s %llu", key, &v) == 2)
		if (strcmp(key, name) == 0) {
			found = v;
			break;
		}
	fclose(f);
	return found;
}

uint64_t balloon_pages(void)
{
	uint64_t in = vmstat("balloon_inflate"), out = vmstat("balloon_deflate");

	return in > out ? in - out : 0;
}

bool balloon_is_settled(void)
{
	static uint64_t last_pages, since_ns;
	uint64_t pages = balloon_pages(), now = rt_now_ns();

	if (pages != last_pages || !since_ns) {
		last_pages = pages;
		since_ns = now;
		return false;
	}
	return pages && now - since_ns >= SETTLE_NS;
}
