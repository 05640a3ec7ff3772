/* SPDX-License-Identifier: MIT */
/*
 * The CLI clients of the control socket against fake servers: what a server
 * says reaches the terminal escaped (cli_escape, `kvmem stat`'s table, its
 * --json and its error lines), and a server whose uid is neither root nor
 * ours is refused before a byte is sent to it (control_connect, under
 * control_request, which every CLI client uses).
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/host/cli.h"
#include "core/host/control.h"
#include "core/host/statcli.h"

static char dir[64];
static char sock_path[96]; /* fits sun_path */

static int setup_dir(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kvmem-test-statcli.XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(sock_path, sizeof(sock_path), "%s/k.sock", dir);
	return 0;
}

static int teardown_dir(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* ---- cli_escape ------------------------------------------------------------------------- */

static void test_escape(void **state)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
		{ "plain text 0-9", "plain text 0-9" },
		{ "a\x1b[31mred\x1b[0m", "a\\x1b[31mred\\x1b[0m" },
		{ "\x1b]0;title\x07", "\\x1b]0;title\\x07" },
		{ "\b\x7f\x01", "\\x08\\x7f\\x01" },
		{ "tab\tnl\ncr\r", "tab\\tnl\\ncr\\r" },
		{ "back\\slash", "back\\\\slash" },
		{ "\xc2\x9b" "2J", "\\u009b2J" },		/* C1 CSI as UTF-8 */
		{ "\x9b" "2J", "\\x9b2J" },			/* a raw 8-bit CSI: not UTF-8 */
		{ "abc\xe2\x80\xae" "fed", "abc\\u202efed" },	/* right-to-left override */
		{ "\xe2\x80\x8b\xef\xbb\xbf", "\\u200b\\ufeff" }, /* zero widths */
		{ "caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x99\x82", "caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x99\x82" },
		{ "\xc0\xaf", "\\xc0\\xaf" },			/* overlong '/' */
		{ "\xed\xa0\x80", "\\xed\\xa0\\x80" },		/* a UTF-16 surrogate */
		{ "\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80" },	/* past U+10FFFF */
		{ "cut\xe2\x80", "cut\\xe2\\x80" },		/* a sequence cut short */
	};
	char buf[128];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		assert_string_equal(cli_escape(cases[i].in, buf, sizeof(buf)), cases[i].out);
}

/* Cut short at a whole escape or character, never in the middle of one. */
static void test_escape_truncates_whole(void **state)
{
	char buf[6];

	(void)state;
	assert_string_equal(cli_escape("ab\x1b", buf, sizeof(buf)), "ab");
	assert_string_equal(cli_escape("abc\xe6\x97\xa5", buf, sizeof(buf)), "abc");
	assert_string_equal(cli_escape("abcd\xe6\x97\xa5", buf, 5), "abcd");
	assert_string_equal(cli_escape("x", buf, 1), "");
}

/* ---- a fake server in this process (our own uid: trusted) ------------------------------ */

struct fake {
	int lfd;
	const char *reply;	/* sent, with a newline, to every request */
	int conns;		/* connections to serve */
	pthread_t thread;
};

static void *fake_thread(void *arg)
{
	struct fake *f = arg;

	for (int i = 0; i < f->conns; i++) {
		struct pollfd p = { .fd = f->lfd, .events = POLLIN };
		char buf[4096];
		int fd;

		if (poll(&p, 1, 5000) <= 0)
			break;
		fd = accept(f->lfd, NULL, NULL);
		if (fd < 0)
			break;
		if (recv(fd, buf, sizeof(buf), 0) > 0) {
			if (send(fd, f->reply, strlen(f->reply), MSG_NOSIGNAL) < 0 ||
			    send(fd, "\n", 1, MSG_NOSIGNAL) < 0)
				break;
		}
		close(fd);
	}
	return NULL;
}

static void fake_start(struct fake *f, const char *reply, int conns)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };

	f->reply = reply;
	f->conns = conns;
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", sock_path);
	unlink(sock_path);
	f->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(f->lfd >= 0);
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	assert_int_equal(listen(f->lfd, 8), 0);
	assert_int_equal(pthread_create(&f->thread, NULL, fake_thread, f), 0);
}

static void fake_stop(struct fake *f)
{
	pthread_join(f->thread, NULL);
	close(f->lfd);
}

/* Run `kvmem stat ARGS...` with stdout and stderr into *out and *err (malloc'ed). */
static int run_stat(char **out, char **err, ...)
{
	char *argv[8] = { "stat" };
	int argc = 1, fds[2], saved[2], ret;
	FILE *files[2];
	va_list ap;

	va_start(ap, err);
	while (argc < 7 && (argv[argc] = va_arg(ap, char *)) != NULL)
		argc++;
	va_end(ap);
	argv[argc] = NULL;
	fflush(stdout);
	fflush(stderr);
	for (int i = 0; i < 2; i++) {
		files[i] = tmpfile();
		assert_non_null(files[i]);
		fds[i] = fileno(files[i]);
		saved[i] = dup(i + 1);
		dup2(fds[i], i + 1);
	}
	ret = statcli_main(argc, argv);
	fflush(stdout);
	fflush(stderr);
	for (int i = 0; i < 2; i++) {
		char **dst = i ? err : out;
		long n;

		dup2(saved[i], i + 1);
		close(saved[i]);
		n = lseek(fds[i], 0, SEEK_END);
		*dst = calloc(1, (size_t)n + 1);
		assert_non_null(*dst);
		assert_int_equal(pread(fds[i], *dst, (size_t)n, 0), n);
		fclose(files[i]);
	}
	return ret;
}

/* Nothing a terminal would act on: no C0 but newlines, no DEL, no C1, no bidi override. */
static void assert_terminal_safe(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p < 0x20 && *p != '\n')
			fail_msg("control byte 0x%02x in output: %s", *p, s);
		if (*p == 0x7f)
			fail_msg("DEL in output");
		if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
			fail_msg("a C1 control in output");
		if (p[0] == 0xe2 && p[1] == 0x80 && p[2] == 0xae)
			fail_msg("a right-to-left override in output");
		if (*p >= 0x80 && *p < 0xc2)
			fail_msg("a byte that starts no UTF-8 character: 0x%02x", *p);
	}
}

/* A stats reply whose every string a hostile server could choose carries something nasty. */
static const char hostile_stats[] =
	"{\"ok\":true,\"host\":{\"budget_bytes\":1073741824,\"used_bytes\":1,"
	"\"used_source\":\"cg\\u001b]0;pwned\\u0007\",\"configured_bytes\":2,"
	"\"reclaimed_bytes\":{\"z\\u001b[2J\":4096},\"policy_passes\":1,"
	"\"k\\u001b[1m\":\"v\\u009b31m\",\"obj\\u001b\":{\"s\\u001b\":\"\\u202eabc\"}},"
	"\"vms\":[{\"name\":\"vm\\u001b[2J\",\"state\":\"run\\u009b1m\",\"accel\":\"\\u202ethread\","
	"\"mem_bytes\":4096,\"resident_bytes\":0,\"entitlement_bytes\":0,"
	"\"pages\":{\"anon\":1,\"ev\\u001bil\":2},\"x\\u0007_bytes\":5,"
	"\"bal\\u001b\":{\"t\\u001b_bytes\":7},"
	"\"last_action\":\"shrink\\u001b]52;c;Zm9v\\u0007\"}]}";

static void test_stat_table_escaped(void **state)
{
	struct fake f;
	char *out, *err;

	(void)state;
	fake_start(&f, hostile_stats, 1);
	assert_int_equal(run_stat(&out, &err, "--socket", sock_path, NULL), 0);
	fake_stop(&f);
	assert_terminal_safe(out);
	assert_terminal_safe(err);
	/* Shown, escaped: nothing is dropped silently. */
	assert_non_null(strstr(out, "vm\\x1b[2J"));
	assert_non_null(strstr(out, "run\\u009b1m"));
	assert_non_null(strstr(out, "cg\\x1b]0;pwned\\x07"));
	assert_non_null(strstr(out, "shrink\\x1b]52;c;Zm9v\\x07"));
	free(out);
	free(err);
}

static void test_stat_json_escaped(void **state)
{
	struct fake f;
	char *out, *err;
	json_t *j;

	(void)state;
	fake_start(&f, hostile_stats, 1);
	assert_int_equal(run_stat(&out, &err, "--socket", sock_path, "--json", NULL), 0);
	fake_stop(&f);
	assert_terminal_safe(out);
	for (const unsigned char *p = (const unsigned char *)out; *p; p++)
		assert_true(*p < 0x80);
	/* Still the server's JSON, every string intact once decoded. */
	j = json_loads(out, 0, NULL);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(
				    json_array_get(json_object_get(j, "vms"), 0), "name")),
			    "vm\x1b[2J");
	json_decref(j);
	free(out);
	free(err);
}

static void test_stat_refusal_escaped(void **state)
{
	struct fake f;
	char *out, *err;

	(void)state;
	fake_start(&f, "{\"ok\":false,\"error\":\"no\\u001b]0;pwned\\u0007\",\"code\":\"E\\u001bX\"}",
		   1);
	assert_int_equal(run_stat(&out, &err, "--socket", sock_path, NULL), 1);
	fake_stop(&f);
	assert_terminal_safe(err);
	assert_non_null(strstr(err, "no\\x1b]0;pwned\\x07 (E\\x1bX)"));
	assert_string_equal(out, "");
	free(out);
	free(err);
}

/* ---- a server with another uid ---------------------------------------------------------- */

/*
 * A child that drops to uid 65534 and listens at sock_path (in a directory
 * anyone may write to, as /tmp) until told to stop, then reports how many
 * bytes its clients sent it.
 */
static pid_t stranger_start(int *stop_w, int *result_r)
{
	int ready[2], stop[2], result[2];
	pid_t pid;
	char c;

	assert_int_equal(chmod(dir, 0777), 0);
	assert_int_equal(pipe(ready), 0);
	assert_int_equal(pipe(stop), 0);
	assert_int_equal(pipe(result), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct sockaddr_un addr = { .sun_family = AF_UNIX };
		long total = 0;
		int lfd;

		close(ready[0]);
		close(stop[1]);
		close(result[0]);
		if (setgroups(0, NULL) || setgid(65534) || setuid(65534))
			_exit(2);
		snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", sock_path);
		lfd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) || listen(lfd, 8))
			_exit(3);
		if (write(ready[1], "r", 1) != 1)
			_exit(4);
		for (;;) {
			struct pollfd p[2] = { { .fd = lfd, .events = POLLIN },
					       { .fd = stop[0], .events = POLLIN } };
			char buf[4096];
			ssize_t n;
			int fd;

			if (poll(p, 2, 10000) <= 0 || p[1].revents)
				break;
			fd = accept(lfd, NULL, NULL);
			if (fd < 0)
				continue;
			/* Read what the client sends, and answer as a host would. */
			p[0].fd = fd;
			while (poll(p, 1, 300) > 0 && (n = recv(fd, buf, sizeof(buf), 0)) > 0) {
				total += n;
				if (send(fd, "{\"ok\":true,\"host\":{},\"vms\":[]}\n", 31,
					 MSG_NOSIGNAL) < 0)
					break;
			}
			close(fd);
		}
		if (write(result[1], &total, sizeof(total)) != sizeof(total))
			_exit(5);
		_exit(0);
	}
	close(ready[1]);
	close(stop[0]);
	close(result[1]);
	assert_int_equal(read(ready[0], &c, 1), 1);
	close(ready[0]);
	*stop_w = stop[1];
	*result_r = result[0];
	return pid;
}

static long stranger_stop(pid_t pid, int stop_w, int result_r)
{
	long total = -1;
	int status;

	close(stop_w);
	assert_int_equal(read(result_r, &total, sizeof(total)), sizeof(total));
	close(result_r);
	waitpid(pid, &status, 0);
	return total;
}

static void test_refuses_a_stranger(void **state)
{
	json_t *req = json_pack("{s:s}", "verb", "stats"), *reply = NULL;
	int stop_w, result_r, fd;
	char *out, *err;
	uid_t uid = 0;
	pid_t pid;

	(void)state;
	if (geteuid() != 0)
		skip(); /* another uid to listen needs root */
	pid = stranger_start(&stop_w, &result_r);
	fd = control_connect(sock_path, 2000, &uid);
	assert_int_equal(fd, -EPERM);
	assert_int_equal(uid, 65534);
	assert_int_equal(control_request(sock_path, req, &reply, 2000), -EPERM);
	assert_null(reply);
	assert_int_equal(run_stat(&out, &err, "--socket", sock_path, NULL), 1);
	assert_non_null(strstr(err, "uid 65534"));
	assert_string_equal(out, "");
	/* Not one byte of a request went to it. */
	assert_int_equal(stranger_stop(pid, stop_w, result_r), 0);
	json_decref(req);
	free(out);
	free(err);
}

/* Our own uid (root, when root runs the tests) is trusted: the same exchange works. */
static void test_trusts_root_or_self(void **state)
{
	json_t *req = json_pack("{s:s}", "verb", "stats"), *reply = NULL;
	struct fake f;
	uid_t uid = 12345;
	int fd;

	(void)state;
	fake_start(&f, "{\"ok\":true,\"host\":{},\"vms\":[]}", 2);
	fd = control_connect(sock_path, 2000, &uid);
	assert_true(fd >= 0);
	assert_int_equal(uid, geteuid());
	close(fd);
	assert_int_equal(control_request(sock_path, req, &reply, 2000), 0);
	assert_true(json_is_true(json_object_get(reply, "ok")));
	fake_stop(&f);
	json_decref(reply);
	json_decref(req);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_escape),
		cmocka_unit_test(test_escape_truncates_whole),
		cmocka_unit_test_setup_teardown(test_stat_table_escaped, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_stat_json_escaped, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_stat_refusal_escaped, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_refuses_a_stranger, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_trusts_root_or_self, setup_dir, teardown_dir),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
