/* SPDX-License-Identifier: MIT */
/*
 * The control socket's request handling (core/host/control.c) as a client
 * reaches it: the input is what the client sends, whole, on one end of a
 * socketpair served by control_serve_fd (as tests/unit/test_control.c
 * does): line framing, the JSON, the request envelope, the verb table, and
 * every verb's own checking of its fields. The host is a real one with no
 * VMs, made as `kvmem host` makes one with a control socket, so every verb
 * kvmem registers is there (the host's, balloon, migration, snapshots,
 * fingerprints); a verb that needs a VM finds none, and "start" cannot
 * make one (the host has no guest image to give it). Its socket file is
 * removed as soon as it exists: nothing connects to it.
 *
 * Checked: every reply is one line holding a JSON object with "ok", and
 * the server closes once the client has said all it had to say.
 */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/host/control.h"
#include "core/host/host.h"
#include "core/host/host_internal.h"
#include "fuzz.h"

#define BUDGET (1ULL << 30)

static struct host_config cfg;
static struct host *host;
static char *reply_buf;
static size_t reply_cap;

void fz_init(void)
{
	static char path[64];
	char dir[] = "/tmp/kvmem-fuzz-control-XXXXXX";

	if (!mkdtemp(dir))
		fz_fail(__FILE__, __LINE__, "mkdtemp");
	snprintf(path, sizeof(path), "%s/sock", dir);
	cfg.budget_bytes = BUDGET;
	cfg.policy_interval_s = 1.0;
	cfg.console_prefix = true;
	cfg.accel = ACCEL_THREAD;
	cfg.socket = path;
	if (host_create(&cfg, &host))
		fz_fail(__FILE__, __LINE__, "host_create");
	/* The control socket keeps its listening descriptor; the file is not needed. */
	unlink(path);
	rmdir(dir);
}

/* Each reply line: a JSON object saying whether the request succeeded. */
static void check_replies(const char *buf, size_t len)
{
	const char *p = buf, *end = buf + len;

	FZ_CHECK(len == 0 || buf[len - 1] == '\n');
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		json_t *r = json_loadb(p, (size_t)(nl - p), 0, NULL);

		FZ_CHECK(json_is_object(r) && json_is_boolean(json_object_get(r, "ok")));
		if (json_is_false(json_object_get(r, "ok")))
			FZ_CHECK(json_is_string(json_object_get(r, "error")) &&
				 json_is_string(json_object_get(r, "code")));
		json_decref(r);
		p = nl + 1;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t sent = 0, len = 0;
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		fz_fail(__FILE__, __LINE__, "socketpair");
	/*
	 * All of it before the server looks: it reads what is there, so the
	 * same input is cut into the same reads. What the socket does not take
	 * at once is left out (libFuzzer's inputs are far smaller).
	 */
	while (sent < size) {
		ssize_t n = send(sv[1], data + sent, size - sent, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n <= 0)
			break;
		sent += (size_t)n;
	}
	shutdown(sv[1], SHUT_WR);
	if (control_serve_fd(host->control, sv[0]))
		fz_fail(__FILE__, __LINE__, "control_serve_fd");
	for (;;) {
		ssize_t n;

		if (reply_cap - len < 4096) {
			reply_cap = reply_cap ? 2 * reply_cap : 65536;
			reply_buf = realloc(reply_buf, reply_cap);
			FZ_CHECK(reply_buf != NULL);
		}
		n = recv(sv[1], reply_buf + len, reply_cap - len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		FZ_CHECK(n >= 0);
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(sv[1]);
	check_replies(reply_buf, len);
	/* A "budget" request changed the host: the next input starts from the same one. */
	FZ_CHECK(host_set_budget(host, BUDGET) == 0);
	return 0;
}
