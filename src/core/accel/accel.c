/* SPDX-License-Identifier: MIT */
/* Choosing an accelerator (see accel.h). */
#define LOG_TAG "accel"
#include "core/accel/accel.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"

int accel_parse(const char *s, enum accel_kind *out)
{
	if (!strcmp(s, "auto"))
		*out = ACCEL_AUTO;
	else if (!strcmp(s, "kvm"))
		*out = ACCEL_KVM;
	else if (!strcmp(s, "thread"))
		*out = ACCEL_THREAD;
	else
		return -EINVAL;
	return 0;
}

const char *accel_name(enum accel_kind kind)
{
	switch (kind) {
	case ACCEL_AUTO:
		return "auto";
	case ACCEL_KVM:
		return "kvm";
	case ACCEL_THREAD:
		return "thread";
	}
	return "unknown";
}

const struct accel_ops *accel_ops(enum accel_kind kind)
{
	switch (kind) {
	case ACCEL_KVM:
		return &accel_kvm_ops;
	case ACCEL_THREAD:
		return &accel_thread_ops;
	case ACCEL_AUTO:
		break;
	}
	return NULL;
}

int accel_resolve(enum accel_kind want, enum accel_kind *out, char *why, size_t whylen)
{
	static bool noticed;
	char thread_why[192];
	int kvm;

	if (want == ACCEL_THREAD) {
		if (accel_thread_check(thread_why, sizeof(thread_why))) {
			snprintf(why, whylen, "the thread accelerator cannot run here: %s", thread_why);
			return -ENODEV;
		}
		*out = ACCEL_THREAD;
		return 0;
	}
	kvm = accel_kvm_system_fd();
	if (kvm >= 0) {
		*out = ACCEL_KVM;
		return 0;
	}
	if (want == ACCEL_KVM) {
		snprintf(why, whylen, "the kvm accelerator needs /dev/kvm: %s", strerror(-kvm));
		return -ENODEV;
	}
	if (accel_thread_check(thread_why, sizeof(thread_why))) {
		snprintf(why, whylen, "no accelerator: /dev/kvm: %s; thread: %s", strerror(-kvm),
			 thread_why);
		return -ENODEV;
	}
	if (!noticed) {
		log_info("/dev/kvm: %s: guests run on the thread accelerator (no isolation "
			 "between guest and VMM)", strerror(-kvm));
		noticed = true;
	}
	*out = ACCEL_THREAD;
	return 0;
}

static const struct accel_cpuid_leaf *find_leaf(const struct accel_cpuid_leaf *l, size_t n,
						uint32_t function)
{
	for (size_t i = 0; i < n; i++)
		if (l[i].function == function)
			return &l[i];
	return NULL;
}

/* A 12-byte hypervisor signature in ebx, ecx, edx. */
static bool signature_is(const struct accel_cpuid_leaf *l, const char sig[12])
{
	uint32_t r[3] = { l->ebx, l->ecx, l->edx };

	return !memcmp(r, sig, 12);
}

bool accel_cpuid_is_pvm(const struct accel_cpuid_leaf *leaves, size_t n)
{
	const struct accel_cpuid_leaf *kvm = find_leaf(leaves, n, 0x40000000);
	const struct accel_cpuid_leaf *vendor = find_leaf(leaves, n, 0x40000002);
	const struct accel_cpuid_leaf *pvm = find_leaf(leaves, n, 0x40000200);

	/* KVM's leaves name their vendor in 0x40000002 (ebx "PVM\0") when there is one. */
	if (kvm && signature_is(kvm, "KVMKVMKVM\0\0\0") && kvm->eax >= 0x40000002 && vendor &&
	    vendor->ebx == 0x004d5650)
		return true;
	/* PVM's own range of leaves. */
	return pvm && signature_is(pvm, "PVMPVMPVM\0\0\0");
}

int accel_linux_check(enum accel_kind kind, char *why, size_t whylen)
{
	char pvm_why[160];
	int ret;

	switch (kind) {
	case ACCEL_THREAD:
		snprintf(why, whylen, "the thread accelerator cannot run an unmodified Linux "
			 "kernel (it runs guest code at user level on host threads): it needs "
			 "hardware-virtualized KVM");
		return -ENOTSUP;
	case ACCEL_KVM:
		ret = accel_kvm_is_pvm(pvm_why, sizeof(pvm_why));
		if (ret < 0) {
			snprintf(why, whylen, "/dev/kvm: %s", strerror(-ret));
			return ret;
		}
		if (ret) {
			snprintf(why, whylen, "this KVM is kvm-pvm (%s), which cannot run an "
				 "unmodified Linux kernel: its CPL0 code is emulated", pvm_why);
			return -ENOTSUP;
		}
		if (!accel_kvm_ops.boot_linux) {
			snprintf(why, whylen, "booting a Linux kernel on hardware-virtualized KVM "
				 "is not wired yet: the image and its boot plan are checked, the "
				 "platform the kernel needs (port I/O, interrupt controllers, a "
				 "UART) comes next");
			return -ENOSYS;
		}
		return 0;
	case ACCEL_AUTO:
		break;
	}
	snprintf(why, whylen, "no accelerator chosen");
	return -EINVAL;
}
