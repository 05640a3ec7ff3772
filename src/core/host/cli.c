/* SPDX-License-Identifier: MIT */
#include "core/host/cli.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/host/control.h"

int cli_usage_error(const char *cmd, const char *hint, const char *fmt, const char *arg)
{
	fprintf(stderr, "kvmem%s%s: ", cmd ? " " : "", cmd ? cmd : "");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, " (%s)\n", hint);
	return CLI_EXIT_USAGE;
}

int cli_bad_option(const char *cmd, const char *hint, int c, char **argv)
{
	/*
	 * An unknown short option has its letter in optopt (and inside a group,
	 * -jz, optind has not moved on); an unknown long one has optopt 0.
	 */
	char letter[3] = { '-', (char)optopt, 0 };
	const char *what = c == '?' && optopt ? letter : argv[optind - 1];

	return cli_usage_error(cmd, hint, c == ':' ? "%s: missing value" : "%s: unknown option",
			       what);
}

/* A code point terminals act on or that hides or reorders text. */
static bool unsafe_code_point(uint32_t cp)
{
	return (cp >= 0x80 && cp <= 0x9f) || (cp >= 0x200b && cp <= 0x200f) ||
	       (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2060 && cp <= 0x206f) || cp == 0xfeff;
}

/* Length of the valid UTF-8 sequence at s (2 to 4) and its code point, or 0. */
static size_t utf8_seq(const unsigned char *s, uint32_t *cp)
{
	size_t n;
	uint32_t v;

	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
		v = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		v = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		v = s[0] & 0x07;
	} else {
		return 0;
	}
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
			return 0;
		v = (v << 6) | (s[i] & 0x3f);
	}
	/* Overlong forms, UTF-16 surrogates and beyond U+10FFFF are not UTF-8. */
	if ((n == 3 && v < 0x800) || (n == 4 && v < 0x10000) || v > 0x10ffff ||
	    (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return n;
}

const char *cli_escape(const char *s, char *buf, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t o = 0;

	if (!len)
		return buf;
	while (*p) {
		char esc[12];
		const char *piece = esc;
		size_t n, adv = 1;
		uint32_t cp;

		if (*p == '\\') {
			piece = "\\\\";
		} else if (*p == '\n') {
			piece = "\\n";
		} else if (*p == '\t') {
			piece = "\\t";
		} else if (*p == '\r') {
			piece = "\\r";
		} else if (*p < 0x20 || *p == 0x7f) {
			snprintf(esc, sizeof(esc), "\\x%02x", *p);
		} else if (*p < 0x80) {
			esc[0] = (char)*p;
			esc[1] = '\0';
		} else if ((adv = utf8_seq(p, &cp)) == 0) {
			adv = 1;
			snprintf(esc, sizeof(esc), "\\x%02x", *p);
		} else if (unsafe_code_point(cp)) {
			snprintf(esc, sizeof(esc), "\\u%04x", (unsigned int)cp);
		} else {
			memcpy(esc, p, adv);
			esc[adv] = '\0';
		}
		n = strlen(piece);
		if (o + n >= len)
			break;
		memcpy(buf + o, piece, n);
		o += n;
		p += adv;
	}
	buf[o] = '\0';
	return buf;
}

/* The outcome of one request (ret, reply r): 0 and *reply, or 1 with the reason on stderr. */
static int judge(const char *cmd, const char *path, int ret, json_t *r, int timeout_ms,
		 json_t **reply)
{
	char e1[512], e2[64];
	uid_t uid = (uid_t)-1;

	*reply = NULL;
	if (ret == -EPERM) {
		/* Only to name who listens there: connect, check, close; nothing is sent. */
		int fd = control_connect(path, timeout_ms, &uid);

		if (fd >= 0) /* trusted now: whoever it was has gone */
			close(fd);
	}
	switch (ret) {
	case 0:
		break;
	case -ENOENT:
		fprintf(stderr, "kvmem %s: %s: no such socket (is a kvmem host running with "
				"--socket %s?)\n", cmd, path, path);
		return 1;
	case -ECONNREFUSED:
		fprintf(stderr, "kvmem %s: %s: connection refused (no kvmem host is listening "
				"there)\n", cmd, path);
		return 1;
	case -EACCES:
		/* The file's mode: 0600, or 0660 when the host names a socket_group. */
		fprintf(stderr, "kvmem %s: %s: permission denied (the control socket is root's; "
				"the host's socket_group, if it has one, may read stats)\n", cmd,
			path);
		return 1;
	case -EPERM:
		if (uid != (uid_t)-1 && !control_uid_trusted(uid))
			fprintf(stderr, "kvmem %s: %s: the process listening there runs as uid %u, "
					"not root: not talking to it\n", cmd, path, (unsigned int)uid);
		else
			fprintf(stderr, "kvmem %s: %s: the process listening there is not root: "
					"not talking to it\n", cmd, path);
		return 1;
	case -ETIMEDOUT:
		fprintf(stderr, "kvmem %s: %s: no reply within %d ms\n", cmd, path, timeout_ms);
		return 1;
	case -ECONNRESET:
		fprintf(stderr, "kvmem %s: %s: the host closed the connection without a "
				"reply\n", cmd, path);
		return 1;
	case -EPROTO:
		fprintf(stderr, "kvmem %s: %s: bad reply (not a JSON object)\n", cmd, path);
		return 1;
	default:
		fprintf(stderr, "kvmem %s: %s: %s\n", cmd, path, strerror(-ret));
		return 1;
	}
	if (!json_is_true(json_object_get(r, "ok"))) {
		json_t *e = json_object_get(r, "error"), *c = json_object_get(r, "code");

		fprintf(stderr, "kvmem %s: the host refused: %s (%s)\n", cmd,
			cli_escape(json_is_string(e) ? json_string_value(e) : "no message", e1,
				   sizeof(e1)),
			cli_escape(json_is_string(c) ? json_string_value(c) : "no code", e2,
				   sizeof(e2)));
		json_decref(r);
		return 1;
	}
	*reply = r;
	return 0;
}

int cli_request(const char *cmd, const char *path, json_t *request, int timeout_ms,
		json_t **reply)
{
	json_t *r = NULL;
	int ret = control_request(path, request, &r, timeout_ms);

	return judge(cmd, path, ret, r, timeout_ms, reply);
}

int cli_poll_stats(const char *cmd, const char *path, json_t **reply)
{
	json_t *req = json_pack("{s:s}", "verb", "stats"), *r = NULL;
	int ret = -ENOMEM;

	for (int tries = 0; req && tries <= CLI_BUSY_RETRIES; tries++) {
		struct timespec d = { 1, 0 };

		r = NULL;
		ret = control_request(path, req, &r, CONTROL_CLIENT_TIMEOUT_MS);
		if (ret || json_is_true(json_object_get(r, "ok")) ||
		    strcmp(json_string_value(json_object_get(r, "code")) ?: "", "ETIMEDOUT"))
			break;
		if (tries < CLI_BUSY_RETRIES) {
			json_decref(r);
			nanosleep(&d, NULL);
		}
	}
	json_decref(req);
	return judge(cmd, path, ret, r, CONTROL_CLIENT_TIMEOUT_MS, reply);
}

long cli_num_arg(const char *s, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	return *s && !*end && !errno && v >= 0 && v <= max ? v : -1;
}
