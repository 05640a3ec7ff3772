/* SPDX-License-Identifier: MIT */
/* Human sizes ("512M", "2G", "4096K", "1T"; a bare number is MiB, as QEMU's -m). */
#ifndef KVMEM_CORE_SIZE_H
#define KVMEM_CORE_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* 0 or -EINVAL (not a size), -ERANGE (overflows 64 bits). */
int size_parse(const char *s, uint64_t *out);
/* "1.5 GiB"-style rendering into buf. */
const char *size_format(uint64_t bytes, char *buf, size_t len);

#endif
