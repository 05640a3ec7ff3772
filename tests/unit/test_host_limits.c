/* SPDX-License-Identifier: MIT */
/*
 * How many VMs one process holds, without a guest: the tables on the way
 * from the config to running VMs grow with them (the userfaultfd service and
 * the policy took 256 at most, the reservation table 4096), so the one limit
 * left is the address space of the arena guest RAM is reserved in; a config
 * beyond it is refused by host_create before anything is created, with one
 * line naming the limit.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "core/host/host.h"
#include "mem/memmap.h"
#include "mem/overcommit.h"
#include "mem/uffd.h"

#define VM_RAM (8ULL << 20)
/* The smallest VM takes a 4 GiB span and two 1 GiB guard gaps of the arena. */
#define SMALL_VMS_IN_ARENA ((MEM_ARENA_END - MEM_ARENA_START) / (6ULL << 30))
/*
 * More than the 256 the policy and the userfaultfd service held. The arena
 * of a ThreadSanitizer build holds only some 70 such VMs (mem/memmap.h):
 * there the fixture takes half of them, and the same tests check the same
 * tables and the arena's own limit with fewer.
 */
#define MANY (SMALL_VMS_IN_ARENA > 600 ? 300 : SMALL_VMS_IN_ARENA / 2)

static int saved_stderr = -1, capture_fd = -1;

static void capture_start(void)
{
	capture_fd = memfd_create("stderr", MFD_CLOEXEC);
	assert_true(capture_fd >= 0);
	saved_stderr = dup(STDERR_FILENO);
	assert_true(saved_stderr >= 0);
	assert_int_equal(dup2(capture_fd, STDERR_FILENO), STDERR_FILENO);
}

static char *capture_end(void)
{
	off_t len = lseek(capture_fd, 0, SEEK_END);
	char *s = calloc(1, (size_t)len + 1);

	assert_int_equal(dup2(saved_stderr, STDERR_FILENO), STDERR_FILENO);
	close(saved_stderr);
	assert_non_null(s);
	assert_int_equal(pread(capture_fd, s, (size_t)len, 0), len);
	close(capture_fd);
	return s;
}

static unsigned int count(const char *s, char c)
{
	unsigned int n = 0;

	for (; *s; s++)
		n += *s == c;
	return n;
}

static struct gm *gms[MANY];

static int setup_gms(void **state)
{
	struct rlimit rl;

	(void)state;
	/* One userfaultfd per VM, as a host has. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	for (unsigned int i = 0; i < MANY; i++)
		if (mem_create_anon(VM_RAM, &gms[i]))
			return -1;
	return 0;
}

static int teardown_gms(void **state)
{
	(void)state;
	for (unsigned int i = 0; i < MANY; i++)
		mem_destroy(gms[i]);
	return 0;
}

static void test_the_arena_alone_limits_how_many_vms_a_process_reserves(void **state)
{
	struct gm **all = kv_calloc(SMALL_VMS_IN_ARENA + 1, sizeof(*all));
	uint64_t n = 0;
	int ret = 0;

	(void)state;
	assert_non_null(all);
	/* The fixture's VMs hold part of the arena already: fill the rest. */
	while (n <= SMALL_VMS_IN_ARENA && !(ret = mem_create_anon(VM_RAM, &all[n])))
		n++;
	assert_int_equal(ret, -ENOMEM);
	/* Filled from the process's origin to the end, then from the start: one may not fit. */
	assert_true(n + MANY == SMALL_VMS_IN_ARENA || n + MANY == SMALL_VMS_IN_ARENA - 1);
	while (n)
		mem_destroy(all[--n]);
	kv_free(all);
}

static void test_the_policy_takes_more_than_256_vms(void **state)
{
	struct ovc_vm *vms[MANY];
	struct ovc_stats st;
	struct ovc *ovc;

	(void)state;
	assert_int_equal(ovc_create(MANY * VM_RAM, 0.05, &ovc), 0);
	for (unsigned int i = 0; i < MANY; i++) {
		char name[16];

		snprintf(name, sizeof(name), "v%u", i);
		assert_int_equal(ovc_add_vm(ovc, gms[i], name, VM_RAM, 0, 1000, &vms[i]), 0);
	}
	assert_int_equal(ovc_start(ovc), 0);
	for (int tries = 0; tries < 2000; tries++) {
		ovc_get_stats(ovc, &st);
		if (st.passes >= 2)
			break;
		nanosleep(&(struct timespec){ .tv_nsec = 5000000 }, NULL);
	}
	assert_true(st.passes >= 2);
	assert_int_equal(st.configured_bytes, MANY * VM_RAM);
	/* A budget of every VM's mem: each is entitled to (almost all of) its own. */
	for (unsigned int i = 0; i < MANY; i++) {
		struct ovc_vm_stats vs;

		assert_int_equal(ovc_get_vm_stats(ovc, vms[i], &vs), 0);
		assert_true(vs.entitlement_bytes > VM_RAM - VM_RAM / 100);
		assert_true(vs.entitlement_bytes <= VM_RAM);
	}
	for (unsigned int i = 0; i < MANY; i++)
		ovc_remove_vm(ovc, vms[i]);
	ovc_destroy(ovc);
}

static void test_the_userfaultfd_service_takes_more_than_256_vms(void **state)
{
	struct uffd_service *svc;
	unsigned int added = 0;

	(void)state;
	assert_int_equal(uffd_service_create(&svc), 0);
	for (unsigned int i = 0; i < MANY; i++) {
		int ret = mem_enable_uffd(gms[i]);

		if (ret) {
			uffd_service_destroy(svc);
			skip(); /* no userfaultfd here: nothing to serve */
		}
		assert_int_equal(uffd_service_add(svc, gms[i]), 0);
		added++;
	}
	assert_int_equal(added, MANY);
	for (unsigned int i = 0; i < MANY; i++)
		uffd_service_remove(svc, gms[i]);
	uffd_service_destroy(svc);
}

static void test_host_refuses_vms_beyond_the_arena_naming_the_limit(void **state)
{
	/*
	 * 170 GiB each: 150 of them need about 26 TiB, more than the arena
	 * (25 TiB; 444 GiB under TSan).
	 */
	struct host_vm_config vms[150];
	struct host_config cfg = { .budget_bytes = 1ULL << 30, .vms = vms, .nr_vms = 150,
				   .policy_interval_s = 1.0, .accel = ACCEL_THREAD };
	struct host *h = NULL;
	char limit[64];
	char *out;
	int ret;

	(void)state;
	for (unsigned int i = 0; i < 150; i++) {
		char *name = malloc(16);

		assert_non_null(name);
		snprintf(name, 16, "h%u", i);
		vms[i] = (struct host_vm_config){ .name = name, .mem_bytes = 170ULL << 30,
						  .shares = 1000, .cpus = 1,
						  .guest = (char *)"/nonexistent", .accel = ACCEL_THREAD };
	}
	capture_start();
	ret = host_create(&cfg, &h);
	out = capture_end();
	if (!ret)
		host_destroy(h);
	assert_int_equal(ret, -E2BIG);
	snprintf(limit, sizeof(limit), "%llu GiB of address space",
		 (unsigned long long)(MEM_ARENA_BYTES >> 30));
	if (count(out, '\n') != 1 || !strstr(out, "150 VMs") || !strstr(out, limit))
		fail_msg("not one line naming the limit:\n%s", out);
	free(out);
	for (unsigned int i = 0; i < 150; i++)
		free(vms[i].name);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_the_arena_alone_limits_how_many_vms_a_process_reserves),
		cmocka_unit_test(test_the_policy_takes_more_than_256_vms),
		cmocka_unit_test(test_the_userfaultfd_service_takes_more_than_256_vms),
		cmocka_unit_test(test_host_refuses_vms_beyond_the_arena_naming_the_limit),
	};

	return cmocka_run_group_tests(tests, setup_gms, teardown_gms);
}
