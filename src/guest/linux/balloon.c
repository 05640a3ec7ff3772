/* SPDX-License-Identifier: MIT */
/*
 * The kvmem balloon driver's answers (guest/balloon_drv.h) in a Linux
 * guest: there is no kvmem driver here. Linux's own virtio_balloon drives
 * the device, out of the workload's sight, so wait=balloon is refused as in
 * a kvmem guest without a driver.
 */
#include "guest/balloon_drv.h"

bool balloon_is_running(void)
{
	return false;
}

uint64_t balloon_pages(void)
{
	return 0;
}

bool balloon_is_settled(void)
{
	return true;
}
