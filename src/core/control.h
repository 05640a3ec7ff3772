/* SPDX-License-Identifier: MIT */
/*
 * The control socket: a UNIX stream socket (mode 0600, root only) speaking
 * newline-delimited JSON, one request object per line, one reply per request
 * (protocol in README.md). Served by its own event-loop thread; every CLI
 * verb (`kvmem stat`, `kvmem balloon`, ...) is a client of it.
 */
#ifndef KVMEM_CORE_CONTROL_H
#define KVMEM_CORE_CONTROL_H

#include <jansson.h>

struct host;
struct control;

/* Bind `path` (an existing socket file is replaced only if nobody listens on it). */
int control_create(struct host *h, const char *path, struct control **out);
void control_destroy(struct control *c);

/*
 * Client side for the CLI: connect, send one request, read one reply line.
 * Returns 0 and a new reference in *reply, or -errno (connection) / -EPROTO
 * (a reply that is not JSON).
 */
int control_request(const char *path, json_t *request, json_t **reply, int timeout_ms);

#endif
