/* SPDX-License-Identifier: MIT */
/*
 * The control socket: a UNIX stream socket (mode 0600, root only) speaking
 * newline-delimited JSON, one request object per line, one reply per request
 * (protocol in README.md). Served by its own event-loop thread; every CLI
 * verb (`kvmem stat`, `kvmem balloon`, ...) is a client of it. With a group
 * (the config's "socket_group") the socket is mode 0660 and that group's
 * members may connect too, for the read-only verbs only
 * (control_verb_is_read_only): a monitoring user reads stats, root controls.
 *
 * Verbs are a table of (name, handler, arg). control_create registers the
 * host's own verbs (list, stats, pause, resume, stop, budget, reclaim,
 * memcheck, swap, verbs); other modules add theirs with control_register_verb, so
 * this file never needs to know them. A handler runs on a thread of its own, never on the
 * event loop: a slow one delays its own client only, and when it has not
 * answered within the verb deadline its client gets an ETIMEDOUT error and
 * is served on.
 */
#ifndef KVMEM_CORE_CONTROL_H
#define KVMEM_CORE_CONTROL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/log.h"

/* Where `kvmem run`/`host` listen and `kvmem stat` connects without --socket. */
#define KVMEM_DEFAULT_SOCKET "/run/kvmem.sock"

#define CONTROL_MAX_LINE (64 * 1024)	 /* longest request line, '\n' included */
#define CONTROL_MAX_CLIENTS 64		 /* connections served at once */
#define CONTROL_MAX_OUTPUT (1024 * 1024) /* unread reply bytes before a client is dropped */
#define CONTROL_MAX_VERBS 64
/*
 * How long a request may wait for its handler (for a free turn of its verb,
 * then for the handler itself) before its client gets an ETIMEDOUT error.
 * Generous: it bounds a handler that cannot finish, it is no latency goal,
 * and a slow machine (the nested SVM VM emulates every instruction) takes
 * seconds where a fast one takes milliseconds for a dedup verb that waits
 * for the scanner's batch. Below the CLI clients' CONTROL_CLIENT_TIMEOUT_MS,
 * so they see the error rather than time out.
 */
#define CONTROL_VERB_TIMEOUT_MS 10000
#define CONTROL_CLIENT_TIMEOUT_MS 15000

struct host;
struct control;
struct sockaddr_un;

/*
 * A verb handler. `req` is the request object (borrowed; "verb" and "id"
 * already checked). On success add the payload fields to `reply` (an object
 * that already holds "ok": true) and return 0. On failure return -errno;
 * the reply becomes {"ok": false, "error": <message>, "code": "<ENAME>"} with
 * the message set by control_reply_error, or strerror when none was set.
 *
 * Runs on a thread of its own with no lock of the control socket held.
 * Handlers of different verbs run at the same time; one registered with
 * control_register_verb never runs beside itself (requests of that verb
 * take turns), so it needs no lock against its own other calls. A handler
 * must bound every wait below CONTROL_VERB_TIMEOUT_MS and fail with
 * -ETIMEDOUT itself, leaving things in a state it can name: past the
 * deadline its client has been told ETIMEDOUT ("it may still take
 * effect"), whatever the handler does later is not reported, and a request
 * of the same verb that did not get its turn by then is not run at all.
 */
typedef int (*control_verb_fn)(void *arg, json_t *req, json_t *reply);

/*
 * Bind `path` and start the control thread. An existing socket file is
 * replaced only if nobody listens on it (-EADDRINUSE if someone does,
 * -EEXIST if the path is not a socket). The socket file appears at `path`
 * already mode 0600 and owned by root (by the running user when that is not
 * root): it is made in a private directory and moved into place, so nothing
 * planted at `path` is ever followed. With a group (non-NULL `group`) it
 * appears mode 0660 with that group instead, and the group's members are
 * served the read-only verbs (control_peer_access). Logs the reason on
 * failure. With a NULL path there is no socket file: clients come from
 * control_serve_fd.
 */
MUST_CHECK int control_create(struct host *h, const char *path, const gid_t *group,
			      struct control **out);
/*
 * Stop the thread, close every client, wait for the handlers still running
 * (each bounded, see control_verb_fn), unlink the socket (if still ours).
 */
void control_destroy(struct control *c);
/*
 * Serve `fd`, a connected stream socket, as one more client; the control
 * socket owns it from now on (closes it even on failure). Its peer is not
 * checked: the caller vouches for it (tests serve one end of a socketpair).
 */
int control_serve_fd(struct control *c, int fd);
/*
 * Call enter before and leave after every handler (the host holds its VM
 * list for reading meanwhile). Before clients come.
 */
void control_set_guard(struct control *c, void (*enter)(void *arg), void (*leave)(void *arg),
		       void *arg);
/* The verb deadline (CONTROL_VERB_TIMEOUT_MS unless set; tests shorten it). */
void control_set_verb_timeout(struct control *c, unsigned int ms);

/*
 * Is someone accepting on the UNIX socket at addr? 1 yes (connected, or a
 * listener with a full backlog), 0 no (a stale file: connect is refused),
 * -errno when it cannot tell. For whoever replaces a socket file a host
 * killed before it could unlink it: only a stale one may go.
 */
int control_socket_in_use(const struct sockaddr_un *addr);

/*
 * Whom the socket trusts, on both ends: root, or the user this process runs
 * as (a host run by a user serves that user; `kvmem stat` run by a user
 * talks to that user's host). A client's server with any other uid is
 * refused, whatever the client's groups: a monitoring user's `kvmem stat`
 * talks to root's host, never to whoever else listens at the path. A
 * server's clients with any other uid are refused too, unless the socket
 * has a group they are in (control_peer_access): then they may only read.
 */
bool control_uid_trusted(uid_t uid);

/* What a client of the socket may do. */
enum control_access {
	CONTROL_DENIED,		/* refused when it connects */
	CONTROL_READ_ONLY,	/* a member of the socket's group: read-only verbs only */
	CONTROL_FULL,		/* a trusted uid (control_uid_trusted): every verb */
};

/*
 * Whom a server lets in, from the peer's credentials as the kernel recorded
 * them at connect: its uid, primary gid and supplementary groups (nr_groups
 * of them). A trusted uid gets every verb; with a socket group (non-NULL
 * `group`), a peer that has that group as its gid or among its groups gets
 * the read-only verbs; anyone else is refused. Pure: no system call.
 */
enum control_access control_peer_access(uid_t uid, gid_t gid, const gid_t *groups,
					size_t nr_groups, const gid_t *group);
/*
 * Whether a read-only client (CONTROL_READ_ONLY) may call `verb`: only the
 * verbs named in control.c's table, each there for a reason given beside it;
 * every other verb, a module's new one included, is refused to it.
 */
bool control_verb_is_read_only(const char *verb);

/*
 * Add a verb; the name is copied, `arg` is borrowed and must outlive the
 * control socket (or the verb's removal). May be called at any time.
 * Returns 0, -EEXIST (name taken), -ENOSPC (table full), -EINVAL.
 */
MUST_CHECK int control_register_verb(struct control *c, const char *verb, control_verb_fn fn,
				     void *arg);
/* Remove a verb (0 or -ENOENT); once it returns, the handler is not running. */
int control_unregister_verb(struct control *c, const char *verb);

/* Handler helpers: set the error message of a failing reply; returns -err. */
int control_reply_error(json_t *reply, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/*
 * Required request fields, for handlers: a string, or a size as core/size.h
 * reads one in a request (a JSON number of bytes, or a string like "512M";
 * below 2^63). Return 0, or -EINVAL with the reply's error message naming
 * the field and the value.
 */
int control_req_string(json_t *req, const char *key, json_t *reply, const char **out);
int control_req_size(json_t *req, const char *key, json_t *reply, uint64_t *out);
/* An optional whole number from 0 to max: 0 when absent or null; -EINVAL (reply set) otherwise. */
int control_req_count(json_t *req, const char *key, json_t *reply, uint64_t max, uint64_t *out);
/* "EINVAL" for -EINVAL/EINVAL, "E<n>" for unnamed values. */
const char *control_errname(int err);

/*
 * Client side for the CLI: connect to the socket at `path` within timeout_ms
 * and check who listens there (its uid, from SO_PEERCRED, must be trusted:
 * control_uid_trusted). Returns a blocking-free connected descriptor, or
 * -errno: -ENOENT, -ECONNREFUSED, -EACCES, -ETIMEDOUT, ... for the
 * connection, -EPERM when the listener's uid is not trusted (*peer_uid says
 * which, when peer_uid is not NULL; nothing was sent to it).
 */
int control_connect(const char *path, int timeout_ms, uid_t *peer_uid);
/*
 * Connect (control_connect: every CLI client checks its server there), send
 * one request, read one reply line. Returns 0 and a new reference in *reply
 * (which may be an {"ok": false} reply), or -errno: control_connect's,
 * -ETIMEDOUT when no full reply came within timeout_ms, -ECONNRESET when the
 * server closed first, -EPROTO for a reply that is not a JSON object. The
 * reply's strings are the server's: escape them before printing them
 * (cli_escape).
 */
int control_request(const char *path, json_t *request, json_t **reply, int timeout_ms);

#endif
