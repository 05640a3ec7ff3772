/* SPDX-License-Identifier: MIT */
/*
 * The console device without a guest: bytes written to its register come
 * out as whole prefixed lines, control characters escaped; a reader that
 * never reads neither blocks the writer of the register (the vCPU) nor the
 * console's destruction, and what did not fit is counted; a reader that went
 * away (EPIPE) is survived.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/vm_internal.h"

/* A VM as far as the console looks at one: its name and its RAM. */
static struct vm fake_vm = { .name = (char *)"vm7" };

static void put_line(struct console *con, const char *s)
{
	for (; *s; s++) {
		uint8_t c = (uint8_t)*s;

		console_ops.write(con, NULL, ABI_CON_PUTC, &c, 1);
	}
}

static int setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	return mem_create_anon(16 << 20, &fake_vm.gm);
}

static int teardown(void **state)
{
	(void)state;
	mem_destroy(fake_vm.gm);
	return 0;
}

static void test_console_lines_come_out_whole_prefixed_and_escaped(void **state)
{
	struct console *con;
	char out[256] = { 0 };
	int p[2];
	ssize_t got = 0, n;

	(void)state;
	assert_int_equal(pipe(p), 0);
	assert_int_equal(console_create(&fake_vm, p[1], true, NULL, &con), 0);
	put_line(con, "hello\x1b[2J\n");
	put_line(con, "unterminated");
	console_destroy(con); /* flushes the last line, writer drained */
	close(p[1]);
	while ((n = read(p[0], out + got, sizeof(out) - 1 - (size_t)got)) > 0)
		got += n;
	close(p[0]);
	assert_string_equal(out, "[vm7] hello\\x1b[2J\n[vm7] unterminated\n");
}

static void test_console_a_reader_that_never_reads_blocks_nothing(void **state)
{
	char line[128];
	struct console_stats st;
	struct console *con;
	int p[2];

	(void)state;
	assert_int_equal(pipe(p), 0);
	assert_int_equal(console_create(&fake_vm, p[1], false, NULL, &con), 0);
	/* Far more than the pipe (64 KiB) and the console's ring hold: every call returns. */
	memset(line, 'x', sizeof(line) - 2);
	line[sizeof(line) - 2] = '\n';
	line[sizeof(line) - 1] = '\0';
	for (int i = 0; i < 20000; i++)
		put_line(con, line);
	console_get_stats(con, &st);
	assert_true(st.dropped_lines > 0);
	assert_int_equal(st.dropped_bytes, st.dropped_lines * (sizeof(line) - 1));
	assert_int_equal(st.queued_lines + st.dropped_lines, 20000);
	assert_true(st.written_lines < st.queued_lines);
	/* The writer is stuck in a write nobody will take: destroy still returns. */
	console_destroy(con);
	close(p[0]);
	close(p[1]);
}

static void test_console_survives_a_reader_that_went_away(void **state)
{
	struct console_stats st;
	struct console *con;
	int p[2];

	(void)state;
	assert_int_equal(pipe(p), 0);
	close(p[0]);
	assert_int_equal(console_create(&fake_vm, p[1], false, NULL, &con), 0);
	for (int i = 0; i < 100; i++)
		put_line(con, "to nobody\n");
	console_get_stats(con, &st);
	assert_int_equal(st.queued_lines + st.dropped_lines, 100);
	console_destroy(con);
	close(p[1]);
}

static void test_console_log_is_never_opened_through_a_link(void **state)
{
	char dir[] = "/tmp/kvmem-test-con-XXXXXX", link[64], target[64];
	struct console *con;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(link, sizeof(link), "%s/log", dir);
	snprintf(target, sizeof(target), "%s/elsewhere", dir);
	assert_int_equal(symlink(target, link), 0);
	assert_int_equal(console_create(&fake_vm, -1, false, link, &con), -ELOOP);
	assert_int_equal(access(target, F_OK), -1);
	unlink(link);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_console_lines_come_out_whole_prefixed_and_escaped),
		cmocka_unit_test(test_console_a_reader_that_never_reads_blocks_nothing),
		cmocka_unit_test(test_console_survives_a_reader_that_went_away),
		cmocka_unit_test(test_console_log_is_never_opened_through_a_link),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
