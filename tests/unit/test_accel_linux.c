/* SPDX-License-Identifier: MIT */
/*
 * What the accelerator seam decides without running a guest: whether an
 * accelerator may boot an unmodified Linux kernel, and kvm-pvm told apart
 * from hardware-virtualized KVM by the CPUID leaves KVM reports (the
 * leaves are made up here; /dev/kvm is not needed).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/accel/accel.h"

/* A leaf whose ebx, ecx, edx spell sig (12 bytes). */
static struct accel_cpuid_leaf leaf(uint32_t function, uint32_t eax, const char *sig)
{
	struct accel_cpuid_leaf l = { .function = function, .eax = eax };

	memcpy(&l.ebx, sig, 4);
	memcpy(&l.ecx, sig + 4, 4);
	memcpy(&l.edx, sig + 8, 4);
	return l;
}

static void test_accel_cpuid_tells_kvm_pvm_from_hardware_kvm(void **state)
{
	struct accel_cpuid_leaf l[4];

	(void)state;
	/* Hardware KVM: its signature, features in 0x40000001, no vendor leaf. */
	l[0] = (struct accel_cpuid_leaf){ .function = 1, .ecx = 1u << 5 };
	l[1] = leaf(0x40000000, 0x40000001, "KVMKVMKVM\0\0\0");
	l[2] = (struct accel_cpuid_leaf){ .function = 0x40000001, .eax = 0x1234 };
	assert_false(accel_cpuid_is_pvm(l, 3));
	assert_false(accel_cpuid_is_pvm(l, 0));

	/* kvm-pvm: KVM's range reaches 0x40000002, whose ebx names PVM. */
	l[1].eax = 0x40000002;
	l[3] = (struct accel_cpuid_leaf){ .function = 0x40000002, .ebx = 0x004d5650 };
	assert_true(accel_cpuid_is_pvm(l, 4));
	/* ... but only after KVM's own signature, and only inside its announced range. */
	l[1].eax = 0x40000001;
	assert_false(accel_cpuid_is_pvm(l, 4));
	l[1] = leaf(0x40000000, 0x40000002, "Microsoft Hv");
	assert_false(accel_cpuid_is_pvm(l, 4));
	l[3].ebx = 0;
	l[1] = leaf(0x40000000, 0x40000002, "KVMKVMKVM\0\0\0");
	assert_false(accel_cpuid_is_pvm(l, 4));

	/* kvm-pvm with a range of its own. */
	l[3] = leaf(0x40000200, 0x40000201, "PVMPVMPVM\0\0\0");
	assert_true(accel_cpuid_is_pvm(l, 4));
	l[3] = leaf(0x40000200, 0x40000201, "PVMPVMPVX\0\0\0");
	assert_false(accel_cpuid_is_pvm(l, 4));
}

static void test_accel_thread_refuses_a_linux_kernel_saying_why(void **state)
{
	char why[256] = "";

	(void)state;
	assert_int_equal(accel_linux_check(ACCEL_THREAD, why, sizeof(why)), -ENOTSUP);
	assert_non_null(strstr(why, "thread accelerator cannot run an unmodified Linux kernel"));
	assert_int_equal(accel_linux_check(ACCEL_AUTO, why, sizeof(why)), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_accel_cpuid_tells_kvm_pvm_from_hardware_kvm),
		cmocka_unit_test(test_accel_thread_refuses_a_linux_kernel_saying_why),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
