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
