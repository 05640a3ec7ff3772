/* SPDX-License-Identifier: MIT */
/* Shared by the command-line entry points (src/main.c and the CLI clients). */
#ifndef KVMEM_CORE_CLI_H
#define KVMEM_CORE_CLI_H

#include <jansson.h>
#include <stddef.h>

#define CLI_EXIT_USAGE 2

/*
 * Print one usage-error line, "kvmem[ CMD]: <fmt with arg> (HINT)", on stderr
 * and return CLI_EXIT_USAGE. cmd may be NULL.
 */
int cli_usage_error(const char *cmd, const char *hint, const char *fmt, const char *arg);
/*
 * The usage error for what getopt_long returns when the command has no case
 * for it: ':' (an option without its value) or '?' (an unknown option).
 */
int cli_bad_option(const char *cmd, const char *hint, int c, char **argv);

/* A whole number from 0 to max written in decimal, or -1. */
long cli_num_arg(const char *s, long max);

/*
 * A string from somewhere else (the control socket's server) made safe to
 * print on a terminal, into buf (len bytes, always terminated, cut at a
 * whole character or escape): control characters (C0, DEL and the C1 range
 * U+0080-U+009F, which terminals take as escape sequences too), invisible
 * format characters that reorder or hide text (bidirectional controls,
 * zero widths, U+2028/U+2029) and bytes that are not UTF-8 are written as
 * \n, \t, \r, \xNN or \uNNNN, and a backslash as two. Returns buf.
 */
const char *cli_escape(const char *s, char *buf, size_t len);

/*
 * The control-socket round trip every CLI client shares: send `request` to
 * the socket at `path` (control_request: the server's uid is checked there),
 * and return 0 with the reply of a request that succeeded ({"ok": true},
 * a new reference in *reply), or 1 after one line on stderr, "kvmem CMD:
 * PATH: <why>", for every failure: no socket, nobody listening, a server
 * that is not root, no reply in time, a reply that is not JSON, or the
 * server's refusal (its message and code escaped).
 */
int cli_request(const char *cmd, const char *path, json_t *request, int timeout_ms,
		json_t **reply);
/*
 * The stats, for a command that follows a job (a migration, a save, clones):
 * as cli_request, except that a host too busy to answer within its verb
 * deadline (the ETIMEDOUT refusal) is asked again, once a second, up to
 * CLI_BUSY_RETRIES times: the job goes on meanwhile, and a busy host is no
 * reason to give up following it.
 */
#define CLI_BUSY_RETRIES 30
int cli_poll_stats(const char *cmd, const char *path, json_t **reply);

#endif
