/* SPDX-License-Identifier: MIT */
/*
 * The host config (core/host/config.c) without a guest: every error, one per
 * field, from small JSON files in a temporary directory. Each must name its
 * field; the sizes that used to overflow silently (a bare number shifted into
 * MiB) and the interval that truncated to "never" are refused.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/host/host.h"

#define MIB (1ULL << 20)

static char dir[64];
static char guest[96];

static int setup(void **state)
{
	FILE *f;

	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kvmem-test-config-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(guest, sizeof(guest), "%s/guest.elf", dir);
	f = fopen(guest, "w");
	if (!f)
		return -1;
	fputs("not really a guest: the config only checks that it is readable\n", f);
	fclose(f);
	return 0;
}

static int teardown(void **state)
{
	char path[128];

	(void)state;
	snprintf(path, sizeof(path), "%s/c.json", dir);
	unlink(path);
	unlink(guest);
	rmdir(dir);
	return 0;
}

/* Load text as a config file: the return value, cfg filled, err the message. */
static int load(const char *text, struct host_config *cfg, char *err, size_t len)
{
	char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/c.json", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	memset(cfg, 0, sizeof(*cfg));
	cfg->default_guest = guest;
	err[0] = '\0';
	return host_config_load(path, cfg, err, len);
}

/* The config is refused and the message starts with the field (and has `says` in it). */
static void refused(const char *text, const char *field, const char *says)
{
	struct host_config cfg;
	char err[512];
	int ret = load(text, &cfg, err, sizeof(err));

	host_config_free(&cfg);
	if (ret != -EINVAL)
		fail_msg("%s\nloaded (%d), but should be refused naming %s", text, ret, field);
	if (strncmp(err, field, strlen(field)) || (says && !strstr(err, says)))
		fail_msg("%s\nsaid \"%s\": want \"%s...%s\"", text, err, field, says ? says : "");
}

/* Loaded, then refused by host_config_check naming field. */
static void refused_by_check(const char *text, const char *field, const char *says)
{
	struct host_config cfg;
	char err[512];
	int ret = load(text, &cfg, err, sizeof(err));

	if (ret)
		fail_msg("%s\nrefused at load: %s", text, err);
	ret = host_config_check(&cfg, err, sizeof(err));
	host_config_free(&cfg);
	if (ret != -EINVAL)
		fail_msg("%s\npassed the check (%d), but should be refused naming %s", text, ret,
			 field);
	if (strncmp(err, field, strlen(field)) || (says && !strstr(err, says)))
		fail_msg("%s\nsaid \"%s\": want \"%s...%s\"", text, err, field, says ? says : "");
}

#define VM "{\"name\":\"a\",\"mem\":\"64M\"}"

static void test_config_a_good_config_loads_with_every_field(void **state)
{
	struct host_config cfg;
	char err[512], text[1024];

	(void)state;
	snprintf(text, sizeof(text),
		 "{\"budget\":\"2G\", \"socket\":\"/tmp/s\", \"console_prefix\":false, "
		 "\"seccomp\":false, "
		 "\"dedup\":\"on\", \"accel\":\"thread\", \"policy_interval\":0.5, "
		 "\"balloon_stats_interval\":0.25, \"access\":\"sampling\", \"hard_limit\":\"3G\", "
		 "\"swap\":{\"path\":\"/var/tmp\", \"victims\":\"random\", \"store\":\"kernel\"}, "
		 "\"vms\":[{\"name\":\"a\", \"mem\":\"1G\", "
		 "\"min\":\"256MiB\", \"shares\":2000, \"cpus\":2, \"guest\":\"%s\", "
		 "\"append\":\"x=1\", \"console_log\":\"a.log\", \"accel\":\"thread\", "
		 "\"swap_max\":\"0B\"}, {\"name\":\"b\", \"mem\":\"8M\"}]}",
		 guest);
	assert_int_equal(load(text, &cfg, err, sizeof(err)), 0);
	assert_int_equal(host_config_check(&cfg, err, sizeof(err)), 0);
	assert_int_equal(cfg.budget_bytes, 2048 * MIB);
	assert_string_equal(cfg.socket, "/tmp/s");
	assert_false(cfg.console_prefix);
	assert_true(cfg.seccomp_off);
	assert_int_equal(cfg.dedup, HOST_DEDUP_ON);
	assert_int_equal(cfg.accel, ACCEL_THREAD);
	assert_true(cfg.policy_interval_s == 0.5);
	assert_true(cfg.balloon_stats_set);
	assert_int_equal(cfg.balloon_stats_ms, 250);
	assert_int_equal(cfg.access, HOST_ACCESS_SAMPLING);
	assert_int_equal(cfg.hard_limit_bytes, 3072 * MIB);
	assert_int_equal(cfg.swap.victims, MEM_SWAP_VICTIMS_RANDOM);
	assert_true(cfg.swap.kernel_store);
	assert_int_equal(cfg.nr_vms, 2);
	assert_int_equal(cfg.vms[0].mem_bytes, 1024 * MIB);
	assert_int_equal(cfg.vms[0].min_bytes, 256 * MIB);
	assert_int_equal(cfg.vms[0].shares, 2000);
	assert_int_equal(cfg.vms[0].cpus, 2);
	assert_true(cfg.vms[0].guest_explicit);
	assert_string_equal(cfg.vms[0].append, "x=1");
	assert_string_equal(cfg.vms[0].console_log, "a.log");
	assert_true(cfg.vms[0].swap_max_set);
	assert_int_equal(cfg.vms[0].swap_max_bytes, 0);
	assert_false(cfg.vms[1].swap_max_set);
	assert_int_equal(cfg.vms[1].mem_bytes, 8 * MIB);
	assert_int_equal(cfg.vms[1].shares, 1000);
	assert_int_equal(cfg.vms[1].cpus, 1);
	assert_string_equal(cfg.vms[1].guest, guest);
	assert_false(cfg.vms[1].guest_explicit);
	host_config_free(&cfg);
	/* "balloon_stats_interval": 0 still means never. */
	assert_int_equal(load("{\"balloon_stats_interval\":0, \"vms\":[" VM "]}", &cfg, err,
			      sizeof(err)),
			 0);
	assert_true(cfg.balloon_stats_set);
	assert_int_equal(cfg.balloon_stats_ms, 0);
	host_config_free(&cfg);
}

/* The reproduced overflow: these loaded as budget 0 (MemAvailable), mem 8 MiB, min 0. */
static void test_config_sizes_that_overflow_are_refused_naming_the_field(void **state)
{
	(void)state;
	refused("{\"budget\":17592186044416, \"vms\":[{\"name\":\"a\",\"mem\":17592186044424,"
		"\"min\":17592186044416}]}",
		"budget", NULL);
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":17592186044424}]}", "vms[0].mem", NULL);
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"min\":17592186044416}]}", "vms[0].min",
		NULL);
	refused("{\"budget\":\"17592186044416\", \"vms\":[" VM "]}", "budget", "more than");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"17592186044424\"}]}", "vms[0].mem",
		"more than");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"min\":\"8E\"}]}", "vms[0].min",
		"more than");
	refused("{\"budget\":\"18446744073709551616B\", \"vms\":[" VM "]}", "budget", "more than");
}

/* A bare number meant MiB here and means bytes on the socket: refused, never reread. */
static void test_config_bare_numbers_are_refused_saying_what_to_write(void **state)
{
	(void)state;
	refused("{\"budget\":2048, \"vms\":[" VM "]}", "budget", "write \"2048M\"");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":512}]}", "vms[0].mem", "write \"512M\"");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"min\":16}]}", "vms[0].min",
		"write \"16M\"");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":1.5}]}", "vms[0].mem", "unit");
}

static void test_config_every_host_field_error_names_it(void **state)
{
	(void)state;
	refused("{\"vms\":[" VM "]", "", NULL); /* the path and the JSON error */
	refused("[1]", "", "top level must be an object");
	refused("{\"bugdet\":\"1G\", \"vms\":[" VM "]}", "bugdet", "unknown field");
	refused("{\"budget\":\"lots\", \"vms\":[" VM "]}", "budget", "not a size");
	refused("{\"budget\":\"-1G\", \"vms\":[" VM "]}", "budget", "negative");
	refused("{\"budget\":\"1.5G\", \"vms\":[" VM "]}", "budget", "whole number");
	refused("{\"budget\":\"0\", \"vms\":[" VM "]}", "budget", "above 0");
	refused("{\"budget\":true, \"vms\":[" VM "]}", "budget", "size");
	refused("{\"socket\":5, \"vms\":[" VM "]}", "socket", "string");
	refused("{\"console_prefix\":1, \"vms\":[" VM "]}", "console_prefix", "true or false");
	refused("{\"seccomp\":\"off\", \"vms\":[" VM "]}", "seccomp", "true or false");
	refused("{\"dedup\":\"yes\", \"vms\":[" VM "]}", "dedup", NULL);
	refused("{\"dedup\":true, \"vms\":[" VM "]}", "dedup", NULL);
	refused("{\"accel\":\"qemu\", \"vms\":[" VM "]}", "accel", NULL);
	refused("{\"policy_interval\":0.01, \"vms\":[" VM "]}", "policy_interval",
		"from 0.05 to 3600");
	refused("{\"policy_interval\":1e-300, \"vms\":[" VM "]}", "policy_interval", NULL);
	refused("{\"policy_interval\":3601, \"vms\":[" VM "]}", "policy_interval", NULL);
	refused("{\"policy_interval\":\"1\", \"vms\":[" VM "]}", "policy_interval", NULL);
	refused("{\"balloon_stats_interval\":-1, \"vms\":[" VM "]}", "balloon_stats_interval", NULL);
	refused("{\"balloon_stats_interval\":3601, \"vms\":[" VM "]}", "balloon_stats_interval",
		NULL);
	refused("{\"balloon_stats_interval\":\"1s\", \"vms\":[" VM "]}", "balloon_stats_interval",
		NULL);
	refused("{\"access\":\"kdamond\", \"vms\":[" VM "]}", "access", "\"damon\"");
	refused("{\"budget\":\"1G\", \"hard_limit\":\"512M\", \"vms\":[" VM "]}", "hard_limit",
		"at least the budget");
	refused("{\"budget\":\"1G\", \"hard_limit\":\"1G\", \"vms\":[" VM "]}", "hard_limit",
		"plus 32M");
	refused("{\"swap\":{\"path\":\"/x\", \"victims\":\"lru\"}, \"vms\":[" VM "]}",
		"swap.victims", "\"coldest\"");
	refused("{\"swap\":{\"path\":\"/x\", \"store\":\"zram\"}, \"vms\":[" VM "]}",
		"swap.store", "\"kernel\"");
	refused("{}", "vms", NULL);
	refused("{\"vms\":[]}", "vms", NULL);
	refused("{\"vms\":{}}", "vms", NULL);
}

/* A group by name or by number; a name nobody has is refused, not a socket nobody can use. */
static void test_config_socket_group_by_name_or_gid(void **state)
{
	struct host_config cfg;
	char err[512];

	(void)state;
	assert_int_equal(load("{\"vms\":[" VM "]}", &cfg, err, sizeof(err)), 0);
	assert_false(cfg.socket_group_set);
	host_config_free(&cfg);
	/* "root" is gid 0 on every system. */
	assert_int_equal(load("{\"socket_group\":\"root\", \"vms\":[" VM "]}", &cfg, err,
			      sizeof(err)), 0);
	assert_true(cfg.socket_group_set);
	assert_int_equal(cfg.socket_gid, 0);
	host_config_free(&cfg);
	assert_int_equal(load("{\"socket_group\":64123, \"vms\":[" VM "]}", &cfg, err,
			      sizeof(err)), 0);
	assert_true(cfg.socket_group_set);
	assert_int_equal(cfg.socket_gid, 64123);
	host_config_free(&cfg);
	/* Digits that name no group are a gid, as chown reads them. */
	assert_int_equal(load("{\"socket_group\":\"64123\", \"vms\":[" VM "]}", &cfg, err,
			      sizeof(err)), 0);
	assert_int_equal(cfg.socket_gid, 64123);
	host_config_free(&cfg);
	refused("{\"socket_group\":\"kvmem-no-such-group\", \"vms\":[" VM "]}", "socket_group",
		"no such group \"kvmem-no-such-group\"");
	refused("{\"socket_group\":\"\", \"vms\":[" VM "]}", "socket_group", "group name or a gid");
	refused("{\"socket_group\":true, \"vms\":[" VM "]}", "socket_group", "group name or a gid");
	refused("{\"socket_group\":-1, \"vms\":[" VM "]}", "socket_group", "a gid from 0");
	/* (gid_t)-1 is chown's "no change", not a group. */
	refused("{\"socket_group\":4294967295, \"vms\":[" VM "]}", "socket_group", "a gid from 0");
	refused("{\"socket_group\":\"4294967295\", \"vms\":[" VM "]}", "socket_group",
		"no such group");
	refused("{\"socket_group\":\"99999999999\", \"vms\":[" VM "]}", "socket_group",
		"no such group");
}

/* It truncated to 0 ms, which is "never": a positive interval must stay an interval. */
static void test_config_an_interval_below_1_ms_is_refused_not_never(void **state)
{
	(void)state;
	refused("{\"balloon_stats_interval\":0.0009, \"vms\":[" VM "]}", "balloon_stats_interval",
		"0 (never) or seconds from 0.001");
	refused("{\"balloon_stats_interval\":1e-300, \"vms\":[" VM "]}", "balloon_stats_interval",
		NULL);
}

static void test_config_every_vm_field_error_names_it(void **state)
{
	(void)state;
	refused("{\"vms\":[5]}", "vms[0]", "object");
	refused("{\"vms\":[" VM ", {\"name\":\"b\",\"mem\":\"8M\",\"mme\":1}]}", "vms[1].mme",
		"unknown field");
	refused("{\"vms\":[{\"mem\":\"64M\"}]}", "vms[0].name", "missing");
	refused("{\"vms\":[{\"name\":7,\"mem\":\"64M\"}]}", "vms[0].name", "string");
	refused("{\"vms\":[{\"name\":\"\",\"mem\":\"64M\"}]}", "vms[0].name", NULL);
	refused("{\"vms\":[{\"name\":\"a b\",\"mem\":\"64M\"}]}", "vms[0].name", NULL);
	refused("{\"vms\":[{\"name\":\"a/b\",\"mem\":\"64M\"}]}", "vms[0].name", NULL);
	refused("{\"vms\":[{\"name\":\"0123456789012345678901234567890123456789012345678901234567890"
		"123\",\"mem\":\"64M\"}]}",
		"vms[0].name", NULL);
	refused("{\"vms\":[{\"name\":\"a\"}]}", "vms[0].mem", "missing");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64Q\"}]}", "vms[0].mem", "not a size");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"-64M\"}]}", "vms[0].mem", "negative");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"min\":\"x\"}]}", "vms[0].min",
		"not a size");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"shares\":0}]}", "vms[0].shares",
		"from 1 to 1000000");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"shares\":1000001}]}", "vms[0].shares",
		NULL);
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"shares\":1.5}]}", "vms[0].shares",
		NULL);
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"cpus\":0}]}", "vms[0].cpus", NULL);
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"cpus\":65}]}", "vms[0].cpus", NULL);
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"cpus\":9223372036854775807}]}",
		"vms[0].cpus", NULL);
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"guest\":1}]}", "vms[0].guest",
		"string");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"accel\":\"x\"}]}", "vms[0].accel",
		NULL);
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"append\":[]}]}", "vms[0].append",
		"string");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"console_log\":false}]}",
		"vms[0].console_log", "string");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"swap_max\":512}]}",
		"vms[0].swap_max", "unit");
}

static void test_config_an_append_longer_than_the_guest_takes_is_refused(void **state)
{
	char text[4096 + 128], *p;

	(void)state;
	p = text + snprintf(text, sizeof(text), "{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\","
						"\"append\":\"");
	memset(p, 'x', 4096);
	strcpy(p + 4096, "\"}]}");
	refused(text, "vms[0].append", "longer than");
}

static void test_config_every_check_error_names_the_field(void **state)
{
	char text[512];

	(void)state;
	refused_by_check("{\"vms\":[" VM ", " VM "]}", "vms[1].name", "used twice");
	refused_by_check("{\"vms\":[{\"name\":\"a\",\"mem\":\"4M\"}]}", "vms[0].mem", "at least 8M");
	refused_by_check("{\"vms\":[{\"name\":\"a\",\"mem\":\"65537K\"}]}", "vms[0].mem",
			 "multiple of 4K");
	refused_by_check("{\"vms\":[{\"name\":\"a\",\"mem\":\"1E\"}]}", "vms[0].mem",
			 "more than a guest can map");
	refused_by_check("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"min\":\"65M\"}]}",
			 "vms[0].min", "larger than mem");
	refused_by_check("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"guest\":\"/nonexistent\"}]}",
			 "vms[0].guest", "no such readable file");
	snprintf(text, sizeof(text),
		 "{\"budget\":\"100M\", \"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"min\":\"64M\"},"
		 "{\"name\":\"b\",\"mem\":\"64M\",\"min\":\"40M\"}]}");
	refused_by_check(text, "vms", "more than the budget");
}

/*
 * A VM that boots a Linux kernel: "kernel", "initrd" and "cmdline" in their
 * fields (the command line where a guest's "append" goes), no guest image,
 * never mixed with a guest's fields; a file that is no kernel is refused by
 * the check with the reason the loader gives.
 */
static void test_config_a_linux_kernel_vm_is_parsed_and_its_image_checked(void **state)
{
	struct host_config cfg;
	char err[512], text[512];

	(void)state;
	assert_int_equal(load("{\"vms\":[{\"name\":\"l\",\"mem\":\"512M\",\"kernel\":\"/k\","
			      "\"initrd\":\"/i\",\"cmdline\":\"console=ttyS0\"}]}",
			      &cfg, err, sizeof(err)), 0);
	assert_string_equal(cfg.vms[0].kernel, "/k");
	assert_string_equal(cfg.vms[0].initrd, "/i");
	assert_string_equal(cfg.vms[0].append, "console=ttyS0");
	assert_null(cfg.vms[0].guest);
	assert_false(cfg.vms[0].guest_explicit);
	host_config_free(&cfg);

	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"kernel\":1}]}", "vms[0].kernel",
		"string");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"kernel\":\"/k\","
		"\"guest\":\"/g\"}]}", "vms[0].guest", "not both");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"kernel\":\"/k\","
		"\"append\":\"x\"}]}", "vms[0].append", "\"cmdline\"");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"initrd\":\"/i\"}]}",
		"vms[0].initrd", "only for a Linux kernel");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"cmdline\":\"x\"}]}",
		"vms[0].cmdline", "only for a Linux kernel");
	refused("{\"vms\":[{\"name\":\"a\",\"mem\":\"64M\",\"kernel\":\"/k\","
		"\"initrd\":false}]}", "vms[0].initrd", "string");

	/* The fake guest file is no kernel; a missing one is named. */
	snprintf(text, sizeof(text),
		 "{\"vms\":[{\"name\":\"a\",\"mem\":\"512M\",\"kernel\":\"%s\"}]}", guest);
	refused_by_check(text, "vms[0]: ", "not a bootable x86-64 Linux kernel");
	refused_by_check("{\"vms\":[{\"name\":\"a\",\"mem\":\"512M\","
			 "\"kernel\":\"/nonexistent/vmlinuz\"}]}", "vms[0]: ",
			 "kernel /nonexistent/vmlinuz: No such file");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_a_good_config_loads_with_every_field),
		cmocka_unit_test(test_config_sizes_that_overflow_are_refused_naming_the_field),
		cmocka_unit_test(test_config_bare_numbers_are_refused_saying_what_to_write),
		cmocka_unit_test(test_config_every_host_field_error_names_it),
		cmocka_unit_test(test_config_an_interval_below_1_ms_is_refused_not_never),
		cmocka_unit_test(test_config_socket_group_by_name_or_gid),
		cmocka_unit_test(test_config_every_vm_field_error_names_it),
		cmocka_unit_test(test_config_an_append_longer_than_the_guest_takes_is_refused),
		cmocka_unit_test(test_config_every_check_error_names_the_field),
		cmocka_unit_test(test_config_a_linux_kernel_vm_is_parsed_and_its_image_checked),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
