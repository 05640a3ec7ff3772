/* SPDX-License-Identifier: MIT */
/*
 * The control socket without a host: its line framing through one end of a
 * socketpair (control_serve_fd), the verb deadline (a handler that blocks
 * gets its client an ETIMEDOUT reply while other clients are served), a
 * client freed before its socket is closed, how the socket file is made
 * (mode, owner, and nothing planted at the path between bind and chmod is
 * ever followed), and a socket group: who is let in, and that its members
 * get the read-only verbs only (as root, clients that are other users are
 * made by forking).
 *
 * Test verbs: "ping" echoes "n", "big" answers ~2 KiB, "block" waits until
 * the test releases it (or 10 s), "self" echoes "n" and notes which thread
 * it ran on. The host's own verbs are registered too but never called:
 * there is no host.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/host/control.h"

/*
 * The verb deadline of the tests about it; the others get a deadline no
 * loaded machine reaches, so that a worker slow to start never fails them.
 * The deadline tests check order and state (a reply while the handler still
 * blocks), not how long things took, beyond "not before the deadline".
 */
#define TIMEOUT_MS 2000
#define PATIENT_MS 600000

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* ---- test verbs ------------------------------------------------------------------------ */

static pthread_mutex_t block_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t block_cond = PTHREAD_COND_INITIALIZER;
static bool block_released;
static int block_calls;		/* block_lock */
static bool block_running;	/* block_lock: a handler is in verb_block */
static pid_t block_thread;	/* block_lock: the last one's thread (gettid: not reused soon) */
static pid_t self_threads[16];	/* block_lock: the threads verb_self ran on */
static unsigned int self_calls;	/* block_lock */

static int verb_ping(void *arg, json_t *req, json_t *reply)
{
	(void)arg;
	json_object_set(reply, "n", json_object_get(req, "n") ?: json_null());
	return 0;
}

static int verb_big(void *arg, json_t *req, json_t *reply)
{
	char pad[2048];

	(void)arg;
	(void)req;
	memset(pad, 'b', sizeof(pad) - 1);
	pad[sizeof(pad) - 1] = '\0';
	json_object_set_new(reply, "pad", json_string(pad));
	return 0;
}

/* A handler whose wait has no bound of its own (what the deadline is for). */
static int verb_block(void *arg, json_t *req, json_t *reply)
{
	struct timespec until;

	(void)arg;
	(void)req;
	(void)reply;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += PATIENT_MS / 1000;
	pthread_mutex_lock(&block_lock);
	block_calls++;
	block_running = true;
	block_thread = gettid();
	while (!block_released)
		if (pthread_cond_timedwait(&block_cond, &block_lock, &until) == ETIMEDOUT)
			break;
	block_running = false;
	pthread_mutex_unlock(&block_lock);
	return 0;
}

static int verb_self(void *arg, json_t *req, json_t *reply)
{
	pthread_mutex_lock(&block_lock);
	if (self_calls < ARRAY_SIZE(self_threads))
		self_threads[self_calls++] = gettid();
	pthread_mutex_unlock(&block_lock);
	return verb_ping(arg, req, reply);
}

static void release_block(void)
{
	pthread_mutex_lock(&block_lock);
	block_released = true;
	pthread_cond_broadcast(&block_cond);
	pthread_mutex_unlock(&block_lock);
}

/* Whether a handler is still blocked (so a reply came before it returned). */
static bool blocked(void)
{
	bool b;

	pthread_mutex_lock(&block_lock);
	b = block_running;
	pthread_mutex_unlock(&block_lock);
	return b;
}

static int setup_with(void **state, int deadline_ms)
{
	struct control *c;

	block_released = false;
	block_calls = 0;
	self_calls = 0;
	if (control_create(NULL, NULL, NULL, &c))
		return -1;
	control_set_verb_timeout(c, deadline_ms);
	if (control_register_verb(c, "ping", verb_ping, NULL) ||
	    control_register_verb(c, "big", verb_big, NULL) ||
	    control_register_verb(c, "block", verb_block, NULL) ||
	    control_register_verb(c, "self", verb_self, NULL))
		return -1;
	*state = c;
	return 0;
}

static int setup(void **state)
{
	return setup_with(state, PATIENT_MS);
}

static int setup_deadline(void **state)
{
	return setup_with(state, TIMEOUT_MS);
}

static int teardown(void **state)
{
	release_block();
	control_destroy(*state);
	return 0;
}

/* ---- a client: one end of a socketpair ------------------------------------------------ */

struct conn {
	int fd;
	char buf[256 * 1024];
	size_t len;
	bool eof;
};

static struct conn *connect_pair(struct control *c)
{
	struct conn *k = calloc(1, sizeof(*k));
	int sv[2];

	assert_non_null(k);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(control_serve_fd(c, sv[0]), 0);
	k->fd = sv[1];
	return k;
}

static void conn_close(struct conn *k)
{
	close(k->fd);
	free(k);
}

static void send_all(struct conn *k, const void *data, size_t len)
{
	const char *p = data;

	while (len) {
		ssize_t n = send(k->fd, p, len, MSG_NOSIGNAL);

		assert_true(n > 0);
		p += n;
		len -= (size_t)n;
	}
}

static void send_str(struct conn *k, const char *s)
{
	send_all(k, s, strlen(s));
}

/*
 * The next reply line within ms (parsed; NULL on EOF or timeout: k->eof
 * says which).
 */
static json_t *read_reply(struct conn *k, int ms)
{
	long deadline = now_ms() + ms;

	for (;;) {
		char *nl = memchr(k->buf, '\n', k->len);
		struct pollfd p = { .fd = k->fd, .events = POLLIN };
		long left;
		ssize_t n;

		if (nl) {
			json_error_t err;
			json_t *j = json_loadb(k->buf, (size_t)(nl - k->buf), 0, &err);

			k->len -= (size_t)(nl + 1 - k->buf);
			memmove(k->buf, nl + 1, k->len);
			assert_non_null(j);
			return j;
		}
		if (k->eof)
			return NULL;
		left = deadline - now_ms();
		if (left <= 0 || poll(&p, 1, (int)left) <= 0)
			return NULL;
		assert_true(k->len < sizeof(k->buf));
		n = recv(k->fd, k->buf + k->len, sizeof(k->buf) - k->len, 0);
		if (n <= 0)
			k->eof = true;
		else
			k->len += (size_t)n;
	}
}

static void expect_ok(json_t *r, json_int_t n)
{
	assert_non_null(r);
	assert_true(json_is_true(json_object_get(r, "ok")));
	assert_int_equal(json_integer_value(json_object_get(r, "n")), n);
	json_decref(r);
}

static void expect_error(json_t *r, const char *code)
{
	assert_non_null(r);
	assert_true(json_is_false(json_object_get(r, "ok")));
	assert_string_equal(json_string_value(json_object_get(r, "code")), code);
	assert_true(json_is_string(json_object_get(r, "error")));
	json_decref(r);
}

/* ---- framing ---------------------------------------------------------------------------- */

/* A request arriving in pieces is served once its newline is in. */
static void test_partial_line(void **state)
{
	struct conn *k = connect_pair(*state);
	const char *req = "{\"verb\":\"ping\",\"n\":7}\n";

	for (const char *p = req; *p; p++) {
		send_all(k, p, 1);
		if (p[1])
			assert_null(read_reply(k, 5)); /* nothing before the newline */
	}
	expect_ok(read_reply(k, PATIENT_MS), 7);
	conn_close(k);
}

/* \r\n ends a line as \n does; blank lines get no reply at all. */
static void test_crlf_and_blank_lines(void **state)
{
	struct conn *k = connect_pair(*state);

	send_str(k, "\n \t\n\r\n{\"verb\":\"ping\",\"n\":1}\r\n\n{\"verb\":\"ping\",\"n\":2}\n");
	expect_ok(read_reply(k, PATIENT_MS), 1);
	expect_ok(read_reply(k, PATIENT_MS), 2);
	shutdown(k->fd, SHUT_WR);
	assert_null(read_reply(k, 2000));
	assert_true(k->eof); /* and no third reply: the server closed */
	conn_close(k);
}

/* Many requests in one write: one reply each, in order, bad ones included. */
static void test_many_requests_in_one_write(void **state)
{
	struct conn *k = connect_pair(*state);
	size_t cap = 600 * 40, len = 0;
	char *all = malloc(cap);

	assert_non_null(all);
	for (int i = 0; i < 600; i++)
		len += (size_t)snprintf(all + len, cap - len,
					i % 100 == 50 ? "nonsense %d\n" : "{\"verb\":\"ping\",\"n\":%d}\n",
					i);
	send_all(k, all, len);
	for (int i = 0; i < 600; i++) {
		json_t *r = read_reply(k, PATIENT_MS);

		if (i % 100 == 50)
			expect_error(r, "EINVAL");
		else
			expect_ok(r, i);
	}
	free(all);
	conn_close(k);
}

/* A line of exactly CONTROL_MAX_LINE bytes, its newline included, is a request. */
static void test_longest_line(void **state)
{
	struct conn *k = connect_pair(*state);
	const char *head = "{\"verb\":\"ping\",\"n\":3,\"pad\":\"";
	char *line = malloc(CONTROL_MAX_LINE);
	size_t hl = strlen(head);

	assert_non_null(line);
	memcpy(line, head, hl);
	memset(line + hl, 'p', CONTROL_MAX_LINE - hl - 3);
	memcpy(line + CONTROL_MAX_LINE - 3, "\"}\n", 3);
	send_all(k, line, CONTROL_MAX_LINE);
	expect_ok(read_reply(k, PATIENT_MS), 3);
	free(line);
	conn_close(k);
}

/*
 * One byte more is E2BIG, after the replies to the requests before it; then
 * the server reads no more requests from that client and closes it.
 */
static void test_too_long_line(void **state)
{
	struct conn *k = connect_pair(*state);
	size_t n = CONTROL_MAX_LINE + 1;
	char *junk = malloc(n);

	assert_non_null(junk);
	memset(junk, 'x', n);
	send_str(k, "{\"verb\":\"ping\",\"n\":1}\n{\"verb\":\"block\"}\n");
	send_all(k, junk, n);
	/* The block answers (ETIMEDOUT) before the too-long line is judged: replies stay in order. */
	expect_ok(read_reply(k, PATIENT_MS), 1);
	expect_error(read_reply(k, PATIENT_MS), "ETIMEDOUT");
	expect_error(read_reply(k, PATIENT_MS), "E2BIG");
	send_str(k, "\n{\"verb\":\"ping\",\"n\":2}\n");
	assert_null(read_reply(k, 2000));
	assert_true(k->eof);
	free(junk);
	conn_close(k);
}

/* A client that sends and never reads is dropped; the others go on. */
static void test_client_that_never_reads(void **state)
{
	struct conn *k = connect_pair(*state), *other;
	const char *req = "{\"verb\":\"big\"}\n";
	long deadline = now_ms() + 30000;
	size_t sent = 0;
	bool dropped = false;

	while (!dropped && now_ms() < deadline && sent < (64u << 20)) {
		struct pollfd p = { .fd = k->fd, .events = POLLOUT };
		ssize_t n;

		if (poll(&p, 1, 100) <= 0)
			continue;
		n = send(k->fd, req, strlen(req), MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
			dropped = true;
		else if (n > 0)
			sent += (size_t)n;
	}
	assert_true(dropped);
	/* It had more than CONTROL_MAX_OUTPUT of replies to read, and never all of them. */
	assert_true(sent / strlen(req) * 2048 > CONTROL_MAX_OUTPUT);
	other = connect_pair(*state);
	send_str(other, "{\"verb\":\"ping\",\"n\":9}\n");
	expect_ok(read_reply(other, PATIENT_MS), 9);
	conn_close(other);
	conn_close(k);
}

/* Ids of any JSON type come back; errors for bad requests keep them too. */
static void test_ids_and_errors(void **state)
{
	struct conn *k = connect_pair(*state);
	json_t *r, *want = json_loads("[1,{\"a\":2}]", 0, NULL);

	send_str(k, "{\"verb\":\"ping\",\"n\":1,\"id\":[1,{\"a\":2}]}\n"
		    "{\"verb\":\"nosuch\",\"id\":\"x\"}\n"
		    "{\"verb\":7,\"id\":3}\n"
		    "[1]\n");
	r = read_reply(k, PATIENT_MS);
	assert_true(json_equal(json_object_get(r, "id"), want));
	json_decref(want);
	expect_ok(r, 1);
	r = read_reply(k, PATIENT_MS);
	assert_string_equal(json_string_value(json_object_get(r, "id")), "x");
	expect_error(r, "ENOSYS");
	r = read_reply(k, PATIENT_MS);
	assert_int_equal(json_integer_value(json_object_get(r, "id")), 3);
	expect_error(r, "EINVAL");
	expect_error(read_reply(k, PATIENT_MS), "EINVAL");
	conn_close(k);
}

/* ---- the verb deadline ------------------------------------------------------------------ */

/*
 * A handler that blocks: its client gets ETIMEDOUT at the deadline, and
 * meanwhile the other clients are served. The same client is served on
 * after its error; a second request of the blocked verb is not run at all.
 */
static void test_blocked_handler(void **state)
{
	struct control *c = *state;
	struct conn *a = connect_pair(c), *b = connect_pair(c);
	long t0 = now_ms(), t;
	json_t *r;

	send_str(a, "{\"verb\":\"block\",\"id\":\"a\"}\n");
	/* Served while a's handler blocks (b's pings do not wait behind it). */
	for (int i = 0; i < 5; i++) {
		char req[64];

		snprintf(req, sizeof(req), "{\"verb\":\"ping\",\"n\":%d}\n", i);
		send_str(b, req);
		expect_ok(read_reply(b, PATIENT_MS), i);
	}
	r = read_reply(a, PATIENT_MS);
	t = now_ms() - t0;
	assert_non_null(r);
	assert_string_equal(json_string_value(json_object_get(r, "id")), "a");
	assert_non_null(strstr(json_string_value(json_object_get(r, "error")), "may still"));
	expect_error(r, "ETIMEDOUT");
	/* At the deadline, not before it, and while the handler still blocks. */
	assert_true(t >= TIMEOUT_MS - 20);
	assert_true(blocked());

	/* a goes on: a ping at once, a second block that never gets its turn. */
	send_str(a, "{\"verb\":\"ping\",\"n\":5}\n{\"verb\":\"block\"}\n{\"verb\":\"ping\",\"n\":6}\n");
	expect_ok(read_reply(a, PATIENT_MS), 5);
	r = read_reply(a, PATIENT_MS);
	assert_non_null(strstr(json_string_value(json_object_get(r, "error")), "not run"));
	expect_error(r, "ETIMEDOUT");
	expect_ok(read_reply(a, PATIENT_MS), 6);
	pthread_mutex_lock(&block_lock);
	assert_int_equal(block_calls, 1);
	pthread_mutex_unlock(&block_lock);

	/* Released: the first handler's late result is thrown away, nothing more comes. */
	release_block();
	assert_null(read_reply(a, 200));
	send_str(a, "{\"verb\":\"ping\",\"n\":7}\n");
	expect_ok(read_reply(a, PATIENT_MS), 7); /* a late reply would come first and fail this */
	conn_close(a);
	conn_close(b);
}

/*
 * Job threads are kept: requests one after another are all handled by one
 * thread (finished with a job, it takes the next), a request while that
 * one's handler blocks gets a thread of its own, and control_destroy ends
 * the idle threads rather than wait for their idle time (10 s) to run out.
 */
static void test_job_threads_kept(void **state)
{
	struct control *c = *state;
	struct conn *a = connect_pair(c), *b = connect_pair(c);
	pid_t tids[ARRAY_SIZE(self_threads)], block_tid;
	unsigned int n;
	char req[64];
	json_t *r;
	long t0;

	for (unsigned int i = 0; i < 10; i++) {
		snprintf(req, sizeof(req), "{\"verb\":\"self\",\"n\":%u}\n", i);
		send_str(a, req);
		expect_ok(read_reply(a, PATIENT_MS), i);
	}
	/* Read under the lock, checked outside it: a failed check leaves the test at once. */
	pthread_mutex_lock(&block_lock);
	n = self_calls;
	memcpy(tids, self_threads, sizeof(tids));
	pthread_mutex_unlock(&block_lock);
	assert_int_equal(n, 10);
	for (unsigned int i = 1; i < n; i++)
		assert_int_equal(tids[i], tids[0]);

	send_str(a, "{\"verb\":\"block\"}\n");
	while (!blocked())
		usleep(1000);
	send_str(b, "{\"verb\":\"self\",\"n\":11}\n");
	expect_ok(read_reply(b, PATIENT_MS), 11);
	pthread_mutex_lock(&block_lock);
	block_tid = block_thread;
	memcpy(tids, self_threads, sizeof(tids));
	pthread_mutex_unlock(&block_lock);
	assert_int_equal(block_tid, tids[0]);
	assert_int_not_equal(tids[10], block_tid);
	release_block();
	r = read_reply(a, PATIENT_MS);
	assert_non_null(r);
	assert_true(json_is_true(json_object_get(r, "ok")));
	json_decref(r);
	conn_close(a);
	conn_close(b);

	t0 = now_ms();
	control_destroy(c);
	*state = NULL;
	assert_true(now_ms() - t0 < 5000);
}

/* Clients blocked on one verb do not add up: every one is answered at its own deadline. */
static void test_many_blocked_clients(void **state)
{
	struct control *c = *state;
	struct conn *k[8];

	for (int i = 0; i < 8; i++) {
		k[i] = connect_pair(c);
		send_str(k[i], "{\"verb\":\"block\"}\n");
	}
	for (int i = 0; i < 8; i++) {
		expect_error(read_reply(k[i], PATIENT_MS), "ETIMEDOUT");
		/* Not one after the other: every one while the first handler still blocks. */
		assert_true(blocked());
		conn_close(k[i]);
	}
}

/* A client that goes away while its handler runs: the server goes on, nothing leaks. */
static void test_client_gone_while_blocked(void **state)
{
	struct control *c = *state;
	struct conn *a = connect_pair(c), *b;

	send_str(a, "{\"verb\":\"block\"}\n");
	usleep(50 * 1000);
	conn_close(a);
	b = connect_pair(c);
	send_str(b, "{\"verb\":\"ping\",\"n\":1}\n");
	expect_ok(read_reply(b, PATIENT_MS), 1);
	conn_close(b);
	/* teardown releases the handler and control_destroy waits for it */
}

/*
 * A client's end, watched from the control thread: the kv_free calls that
 * thread makes after it closed the socket of watch_fd and before it waits
 * for events again.
 */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int fd;			/* lock: the server's end of the watched client, or -1 */
	pthread_t closer;	/* lock: the thread that closed it, once closed */
	bool closed;		/* lock */
	bool waited;		/* lock: the closer waited for events since */
	unsigned int frees;	/* lock: its kv_free calls in between */
} watch = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, -1 };
/*
 * Set only while that test runs: the wrappers take no lock otherwise, so a
 * child forked by another test (connect_as) never calls close() into a lock
 * a thread of its parent held at the fork.
 */
static atomic_bool watching;

int __real_close(int fd);
int __wrap_close(int fd);
int __wrap_close(int fd)
{
	if (!atomic_load(&watching))
		return __real_close(fd);
	pthread_mutex_lock(&watch.lock);
	if (fd >= 0 && fd == watch.fd && !watch.closed) {
		watch.closer = pthread_self();
		watch.closed = true;
	}
	pthread_mutex_unlock(&watch.lock);
	return __real_close(fd);
}

void __real_kv_free(void *p);
void __wrap_kv_free(void *p);
void __wrap_kv_free(void *p)
{
	if (!atomic_load(&watching)) {
		__real_kv_free(p);
		return;
	}
	pthread_mutex_lock(&watch.lock);
	if (watch.closed && !watch.waited && pthread_equal(pthread_self(), watch.closer))
		watch.frees++;
	pthread_mutex_unlock(&watch.lock);
	__real_kv_free(p);
}

int __real_epoll_wait(int epfd, struct epoll_event *evs, int max, int ms);
int __wrap_epoll_wait(int epfd, struct epoll_event *evs, int max, int ms);
int __wrap_epoll_wait(int epfd, struct epoll_event *evs, int max, int ms)
{
	if (!atomic_load(&watching))
		return __real_epoll_wait(epfd, evs, max, ms);
	pthread_mutex_lock(&watch.lock);
	if (watch.closed && !watch.waited && pthread_equal(pthread_self(), watch.closer)) {
		watch.waited = true;
		pthread_cond_broadcast(&watch.cond);
	}
	pthread_mutex_unlock(&watch.lock);
	return __real_epoll_wait(epfd, evs, max, ms);
}

/*
 * What the server held for a client is freed before the client's socket is
 * closed: a peer that has seen its connection end finds nothing of it left
 * to free (libFuzzer counts the mallocs and frees of each input: a client
 * freed after its peer saw the end made one input in three look like a
 * leak, and run again).
 */
static void test_client_freed_before_its_socket_closes(void **state)
{
	struct conn k = { 0 };
	struct timespec until;
	unsigned int frees;
	bool waited;
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pthread_mutex_lock(&watch.lock);
	watch.fd = sv[0];
	watch.closed = watch.waited = false;
	watch.frees = 0;
	pthread_mutex_unlock(&watch.lock);
	atomic_store(&watching, true);
	assert_int_equal(control_serve_fd(*state, sv[0]), 0);
	k.fd = sv[1];
	send_str(&k, "{\"verb\":\"ping\",\"n\":1}\nnonsense\n");
	shutdown(k.fd, SHUT_WR);
	expect_ok(read_reply(&k, PATIENT_MS), 1);
	expect_error(read_reply(&k, PATIENT_MS), "EINVAL");
	assert_null(read_reply(&k, PATIENT_MS));
	assert_true(k.eof);
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += PATIENT_MS / 1000;
	pthread_mutex_lock(&watch.lock);
	while (!watch.waited && pthread_cond_timedwait(&watch.cond, &watch.lock, &until) == 0)
		;
	waited = watch.waited;
	frees = watch.frees;
	watch.fd = -1;
	pthread_mutex_unlock(&watch.lock);
	atomic_store(&watching, false);
	close(k.fd);
	assert_true(waited);
	assert_int_equal(frees, 0);
}

/* ---- the socket file -------------------------------------------------------------------- */

static char dir[64];
static char sock_path[96]; /* fits sun_path */
static char victim[128];
static bool attack;

/*
 * bind as called by control.c, then what someone who can write in the
 * socket's directory can do before the server's next call: move whatever
 * is at the socket's path aside and put a symlink to a file of theirs there.
 */
int __real_bind(int fd, const struct sockaddr *addr, socklen_t len);
int __wrap_bind(int fd, const struct sockaddr *addr, socklen_t len);
int __wrap_bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	int ret = __real_bind(fd, addr, len);
	char aside[160];

	if (!ret && attack) {
		snprintf(aside, sizeof(aside), "%s.aside", sock_path);
		rename(sock_path, aside);
		if (symlink(victim, sock_path))
			fail_msg("symlink: %s", strerror(errno));
	}
	return ret;
}

static int setup_dir(void **state)
{
	snprintf(dir, sizeof(dir), "/tmp/kvmem-test-control.XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(sock_path, sizeof(sock_path), "%s/k.sock", dir);
	snprintf(victim, sizeof(victim), "%s/victim", dir);
	attack = false;
	*state = NULL;
	return 0;
}

static int teardown_dir(void **state)
{
	char cmd[128];

	(void)state;
	attack = false;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static unsigned int count_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	unsigned int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	closedir(d);
	return n;
}

/*
 * The socket file control_create makes, even with umask 0: 0600 and root's
 * (ours when not root), or 0660 and the group's with a group; nothing left
 * behind in its directory; and we are served every verb on it ("stop"
 * runs, and fails only for want of its field).
 */
static void socket_file(const gid_t *group)
{
	mode_t old = umask(0);
	struct control *c;
	struct stat st;
	json_t *req = json_pack("{s:s}", "verb", "stop"), *reply = NULL;
	int ret;

	ret = control_create(NULL, sock_path, group, &c);
	umask(old);
	assert_int_equal(ret, 0);
	assert_int_equal(lstat(sock_path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 07777, group ? 0660 : 0600);
	assert_int_equal(st.st_uid, geteuid() == 0 ? 0 : geteuid());
	if (group)
		assert_int_equal(st.st_gid, *group);
	assert_int_equal(count_entries(dir), 1);
	assert_int_equal(control_request(sock_path, req, &reply, 5000), 0);
	assert_string_equal(json_string_value(json_object_get(reply, "code")), "EINVAL");
	json_decref(reply);
	json_decref(req);
	control_destroy(c);
	assert_int_not_equal(lstat(sock_path, &st), 0);
	assert_int_equal(count_entries(dir), 0);
}

static void test_socket_file(void **state)
{
	(void)state;
	socket_file(NULL);
}

/* A symlink planted at the path right after bind is never followed: the file it names is untouched. */
static void symlink_planted_after_bind(const gid_t *group)
{
	struct control *c = NULL;
	struct stat before, after;
	int fd, ret;

	fd = open(victim, O_CREAT | O_WRONLY | O_EXCL, 0644);
	assert_true(fd >= 0);
	assert_int_equal(fchmod(fd, 0644), 0);
	close(fd);
	assert_int_equal(stat(victim, &before), 0);
	attack = true;
	ret = control_create(NULL, sock_path, group, &c);
	attack = false;
	assert_int_equal(stat(victim, &after), 0);
	assert_int_equal(after.st_mode, before.st_mode);
	assert_int_equal(after.st_uid, before.st_uid);
	assert_int_equal(after.st_gid, before.st_gid);
	/* Refused: the path was taken between the check and the move into place. */
	assert_int_equal(ret, -EADDRINUSE);
	if (!ret)
		control_destroy(c);
}

static void test_symlink_planted_after_bind(void **state)
{
	(void)state;
	symlink_planted_after_bind(NULL);
}

/* With a group, the chown that gives the socket to it must not reach the victim either. */
static void test_symlink_planted_after_bind_with_group(void **state)
{
	gid_t group = getegid();

	(void)state;
	symlink_planted_after_bind(&group);
}

/* A path as long as sun_path allows still works (the private directory adds nothing to it). */
static void test_longest_path(void **state)
{
	struct sockaddr_un addr;
	char path[sizeof(addr.sun_path)];
	struct control *c;
	size_t n;

	(void)state;
	n = (size_t)snprintf(path, sizeof(path), "%s/", dir);
	memset(path + n, 's', sizeof(path) - 1 - n);
	path[sizeof(path) - 1] = '\0';
	assert_int_equal(control_create(NULL, path, NULL, &c), 0);
	assert_int_equal(count_entries(dir), 1);
	control_destroy(c);
	assert_int_equal(count_entries(dir), 0);
}

static void test_uid_trusted(void **state)
{
	(void)state;
	assert_true(control_uid_trusted(0));
	assert_true(control_uid_trusted(geteuid()));
	assert_false(control_uid_trusted(geteuid() == 65534 ? 65533 : 65534));
}

/* ---- a socket group ------------------------------------------------------------------- */

/* Users and groups no one has (numbers need no names): the clients forked below. */
#define OTHER_UID 64124
#define GROUP 64123
#define NOT_GROUP 64125

static void test_peer_access(void **state)
{
	gid_t group = GROUP, groups[] = { 10, GROUP, 20 };

	(void)state;
	/* Root and our own uid get everything, group or not. */
	assert_int_equal(control_peer_access(0, NOT_GROUP, NULL, 0, NULL), CONTROL_FULL);
	assert_int_equal(control_peer_access(0, NOT_GROUP, NULL, 0, &group), CONTROL_FULL);
	assert_int_equal(control_peer_access(geteuid(), NOT_GROUP, NULL, 0, &group), CONTROL_FULL);
	/* Anyone else: nothing without a group, even in a group that would match. */
	assert_int_equal(control_peer_access(OTHER_UID, GROUP, groups, 3, NULL), CONTROL_DENIED);
	/* With one: read-only by the primary gid or any supplementary group, else nothing. */
	assert_int_equal(control_peer_access(OTHER_UID, GROUP, NULL, 0, &group), CONTROL_READ_ONLY);
	assert_int_equal(control_peer_access(OTHER_UID, NOT_GROUP, groups, 3, &group),
			 CONTROL_READ_ONLY);
	assert_int_equal(control_peer_access(OTHER_UID, NOT_GROUP, groups, 1, &group),
			 CONTROL_DENIED);
	assert_int_equal(control_peer_access(OTHER_UID, NOT_GROUP, NULL, 0, &group),
			 CONTROL_DENIED);
}

static void test_read_only_verbs(void **state)
{
	static const char *const yes[] = { "list", "stats", "metrics", "verbs" };
	static const char *const no[] = {
		"pause", "resume", "stop", "start", "remove", "budget", "reclaim", "swap",
		"balloon", "memcheck", "dirty_rate", "fingerprint", "dedup", "sharing_group",
		"migrate", "migrate_cancel", "migrate_set", "save", "restore", "rollback", "clone",
		/* near misses: the table is matched exactly */
		"", "Stats", "stats ", "stat", "statsx", "verbs\n",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		if (!control_verb_is_read_only(yes[i]))
			fail_msg("\"%s\" should be read-only", yes[i]);
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		if (control_verb_is_read_only(no[i]))
			fail_msg("\"%s\" should be root's", no[i]);
}

static void test_socket_file_with_group(void **state)
{
	/* As root any gid will do; a user can give its socket only a group it is in. */
	gid_t group = geteuid() == 0 ? GROUP : getegid();

	(void)state;
	socket_file(&group);
}

/*
 * Connect to sock_path as OTHER_UID with primary group gid and
 * supplementary groups groups[0..n), in a child (the peer's credentials
 * are taken at connect), and hand the connection back. Returns the
 * connected fd, or -errno of the child's connect.
 */
static int connect_as(gid_t gid, const gid_t *groups, size_t n)
{
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	char byte = 0;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			      .msg_controllen = sizeof(cbuf) };
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct cmsghdr *cm;
	int sv[2], status, fd = -1;
	pid_t pid;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	memcpy(addr.sun_path, sock_path, strlen(sock_path));
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* System calls only: the parent has threads, the child has one. */
		int s;

		close(sv[0]);
		if (setgroups(n, groups) || setgid(gid) || setuid(OTHER_UID))
			_exit(100);
		s = socket(AF_UNIX, SOCK_STREAM, 0);
		if (s < 0)
			_exit(101);
		if (connect(s, (struct sockaddr *)&addr, sizeof(addr)))
			_exit(errno);
		cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &s, sizeof(int));
		_exit(sendmsg(sv[1], &msg, 0) == 1 ? 0 : 102);
	}
	close(sv[1]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_true(WEXITSTATUS(status) < 100);
	if (WEXITSTATUS(status) == 0) {
		assert_int_equal(recvmsg(sv[0], &msg, 0), 1);
		cm = CMSG_FIRSTHDR(&msg);
		assert_non_null(cm);
		memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	}
	close(sv[0]);
	return WEXITSTATUS(status) ? -WEXITSTATUS(status) : fd;
}

static struct conn *conn_of(int fd)
{
	struct conn *k = calloc(1, sizeof(*k));

	assert_non_null(k);
	assert_true(fd >= 0);
	k->fd = fd;
	return k;
}

/* The refusal a read-only client gets: EPERM, naming the verb and why. */
static void expect_root_only(json_t *r, const char *verb)
{
	const char *msg = json_string_value(json_object_get(r, "error"));
	char want[64];

	assert_non_null(msg);
	snprintf(want, sizeof(want), "\"%s\" is root-only", verb);
	assert_non_null(strstr(msg, want));
	assert_non_null(strstr(msg, "read-only (socket_group)"));
	expect_error(r, "EPERM");
}

static void expect_verbs(json_t *r)
{
	assert_non_null(r);
	assert_true(json_is_true(json_object_get(r, "ok")));
	assert_true(json_is_array(json_object_get(r, "verbs")));
	json_decref(r);
}

/*
 * Other users: a member by its gid or by a supplementary group is served
 * the read-only verbs, and a root verb is refused without ending the
 * connection; a non-member cannot connect through the mode, and one let
 * through by a chmod is refused by its credentials.
 */
static void test_group_clients(void **state)
{
	gid_t group = GROUP, supp[] = { NOT_GROUP + 1, GROUP };
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct control *c;
	struct conn *k;

	(void)state;
	memcpy(addr.sun_path, sock_path, strlen(sock_path));
	if (geteuid() != 0)
		skip(); /* making clients of other users needs root */
	/* The socket's directory is private to root: others must reach the socket. */
	assert_int_equal(chmod(dir, 0755), 0);
	assert_int_equal(control_create(NULL, sock_path, &group, &c), 0);
	assert_int_equal(control_register_verb(c, "ping", verb_ping, NULL), 0);

	k = conn_of(connect_as(GROUP, NULL, 0));
	send_str(k, "{\"verb\":\"verbs\"}\n{\"verb\":\"ping\",\"n\":1}\n"
		    "{\"verb\":\"stop\",\"vm\":\"a\"}\n{\"verb\":\"nosuch\"}\n"
		    "{\"verb\":\"verbs\"}\n");
	expect_verbs(read_reply(k, PATIENT_MS));
	expect_root_only(read_reply(k, PATIENT_MS), "ping");
	expect_root_only(read_reply(k, PATIENT_MS), "stop");
	expect_error(read_reply(k, PATIENT_MS), "ENOSYS");
	expect_verbs(read_reply(k, PATIENT_MS)); /* the connection went on */
	conn_close(k);

	/* By a supplementary group only (SO_PEERGROUPS). */
	k = conn_of(connect_as(NOT_GROUP, supp, 2));
	send_str(k, "{\"verb\":\"verbs\"}\n{\"verb\":\"ping\",\"n\":2}\n");
	expect_verbs(read_reply(k, PATIENT_MS));
	expect_root_only(read_reply(k, PATIENT_MS), "ping");
	conn_close(k);

	/* Not a member: the file's mode refuses the connect... */
	assert_int_equal(connect_as(NOT_GROUP, supp, 1), -EACCES);
	/* ... and past the mode (someone made the file 0666), the credentials do. */
	assert_int_equal(chmod(sock_path, 0666), 0);
	k = conn_of(connect_as(NOT_GROUP, supp, 1));
	expect_error(read_reply(k, PATIENT_MS), "EPERM");
	assert_null(read_reply(k, 5000));
	assert_true(k->eof);
	conn_close(k);

	/* Root, on the same socket, is served every verb. */
	k = conn_of(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
	assert_int_equal(connect(k->fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	send_str(k, "{\"verb\":\"ping\",\"n\":3}\n");
	expect_ok(read_reply(k, PATIENT_MS), 3);
	conn_close(k);
	control_destroy(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_partial_line, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crlf_and_blank_lines, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_requests_in_one_write, setup, teardown),
		cmocka_unit_test_setup_teardown(test_longest_line, setup, teardown),
		cmocka_unit_test_setup_teardown(test_too_long_line, setup_deadline, teardown),
		cmocka_unit_test_setup_teardown(test_client_that_never_reads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ids_and_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_blocked_handler, setup_deadline, teardown),
		cmocka_unit_test_setup_teardown(test_job_threads_kept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_blocked_clients, setup_deadline, teardown),
		cmocka_unit_test_setup_teardown(test_client_gone_while_blocked, setup_deadline, teardown),
		cmocka_unit_test_setup_teardown(test_client_freed_before_its_socket_closes, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_socket_file, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_symlink_planted_after_bind, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_longest_path, setup_dir, teardown_dir),
		cmocka_unit_test(test_uid_trusted),
		cmocka_unit_test(test_peer_access),
		cmocka_unit_test(test_read_only_verbs),
		cmocka_unit_test_setup_teardown(test_socket_file_with_group, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_symlink_planted_after_bind_with_group,
						setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_group_clients, setup_dir, teardown_dir),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
