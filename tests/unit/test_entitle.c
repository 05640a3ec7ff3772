/* SPDX-License-Identifier: MIT */
/*
 * The policy's entitlement arithmetic with synthetic VMs (no guest, no
 * policy thread): mins first, the rest by shares and the idle-memory tax,
 * never above a VM's mem, what a capped VM cannot use flowing to the others.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "mem/overcommit.h"

#define MIB (1ULL << 20)

static struct ovc_claim vm(uint64_t mem_mib, uint64_t min_mib, uint32_t shares, double active)
{
	return (struct ovc_claim){ .mem_bytes = mem_mib * MIB, .min_bytes = min_mib * MIB,
				   .shares = shares, .active_fraction = active };
}

static uint64_t sum(const struct ovc_claim *v, unsigned int n)
{
	uint64_t s = 0;

	for (unsigned int i = 0; i < n; i++)
		s += v[i].entitlement_bytes;
	return s;
}

/* Within a page of the exact figure: the shares are divided in floating point. */
static void assert_about(uint64_t got, uint64_t want)
{
	assert_true(got + 4096 >= want && got <= want + 4096);
}

static void test_entitle_mins_come_first_even_over_budget(void **state)
{
	struct ovc_claim v[2] = { vm(1024, 300, 1000, 1), vm(1024, 500, 1000, 1) };

	(void)state;
	ovc_entitle(v, 2, 600 * MIB);
	assert_int_equal(v[0].entitlement_bytes, 300 * MIB);
	assert_int_equal(v[1].entitlement_bytes, 500 * MIB);
}

static void test_entitle_divides_the_rest_by_shares(void **state)
{
	struct ovc_claim v[3] = { vm(4096, 0, 1000, 1), vm(4096, 0, 2000, 1), vm(4096, 0, 1000, 1) };

	(void)state;
	ovc_entitle(v, 3, 1000 * MIB);
	assert_about(v[0].entitlement_bytes, 250 * MIB);
	assert_about(v[1].entitlement_bytes, 500 * MIB);
	assert_about(v[2].entitlement_bytes, 250 * MIB);
	assert_about(sum(v, 3), 1000 * MIB);
}

static void test_entitle_taxes_idle_memory(void **state)
{
	/* Tax 0.75: k = 4, an all-idle VM weighs S/4 against an all-active one's S. */
	struct ovc_claim v[2] = { vm(4096, 0, 1000, 1.0), vm(4096, 0, 1000, 0.0) };

	(void)state;
	ovc_entitle(v, 2, 1000 * MIB);
	assert_about(v[0].entitlement_bytes, 800 * MIB);
	assert_about(v[1].entitlement_bytes, 200 * MIB);
}

static void test_entitle_never_gives_more_than_mem_and_passes_the_rest_on(void **state)
{
	struct ovc_claim v[3] = { vm(100, 0, 1000, 1), vm(4096, 0, 1000, 1), vm(4096, 0, 2000, 1) };

	(void)state;
	ovc_entitle(v, 3, 1000 * MIB);
	assert_int_equal(v[0].entitlement_bytes, 100 * MIB);
	assert_true(v[0].capped);
	/* The 900 MiB left go 1:2 to the others. */
	assert_about(v[1].entitlement_bytes, 300 * MIB);
	assert_about(v[2].entitlement_bytes, 600 * MIB);
}

static void test_entitle_a_budget_above_every_mem_gives_each_its_mem(void **state)
{
	struct ovc_claim v[2] = { vm(512, 128, 1000, 0.2), vm(256, 256, 10, 0) };

	(void)state;
	ovc_entitle(v, 2, 8192 * MIB);
	assert_int_equal(v[0].entitlement_bytes, 512 * MIB);
	assert_int_equal(v[1].entitlement_bytes, 256 * MIB);
	assert_true(v[0].capped && v[1].capped);
}

static void test_entitle_no_vms(void **state)
{
	(void)state;
	ovc_entitle(NULL, 0, 1024 * MIB);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_entitle_mins_come_first_even_over_budget),
		cmocka_unit_test(test_entitle_divides_the_rest_by_shares),
		cmocka_unit_test(test_entitle_taxes_idle_memory),
		cmocka_unit_test(test_entitle_never_gives_more_than_mem_and_passes_the_rest_on),
		cmocka_unit_test(test_entitle_a_budget_above_every_mem_gives_each_its_mem),
		cmocka_unit_test(test_entitle_no_vms),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
