/* SPDX-License-Identifier: MIT */
/*
 * The control socket (see control.h; protocol in README.md).
 *
 * One event-loop thread ("control") owns the listening socket and every
 * client: an epoll set (level-triggered) over the listening fd, a stop
 * eventfd and the non-blocking clients. Each ready client gets one read per
 * round, so no client can hold the loop. A client's input is cut into lines
 * (at most CONTROL_MAX_LINE bytes); each line is one request, answered by one
 * reply line appended to the client's output buffer and sent as the socket
 * takes it. A client gets at most LINES_PER_ROUND requests served per round;
 * the rest wait (the loop polls without sleeping while any client has some,
 * and does not read from that client meanwhile). A client is dropped when
 * its unread replies pass CONTROL_MAX_OUTPUT, refused when
 * CONTROL_MAX_CLIENTS are connected or its
 * peer uid is not 0. A too-long line is answered with an error, after which
 * the client's input is discarded (up to DISCARD_MAX) until it closes, so
 * the client can still read why.
 *
 * Locks: verb_lock guards the verb table and is held while a handler runs,
 * so control_unregister_verb returns only when its handler is not running.
 * Everything else is control-thread only.
 */
#define LOG_TAG "control"
#include "core/host/control.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/host/host.h"
#include "core/size.h"
#include "core/thread.h"

#define IN_CHUNK 4096
#define DISCARD_MAX (64ULL << 20)	/* input thrown away after a too-long line */
#define ACCEPTS_PER_ROUND 16
#define LINES_PER_ROUND 32		/* requests served per client per loop round */
#define VERB_NAME_MAX 32
#define REPLY_MAX (64ULL << 20)		/* longest reply control_request accepts */

struct client {
	int fd;
	char *in;		/* unparsed input; in_len < CONTROL_MAX_LINE between reads */
	size_t in_len;
	size_t in_cap;
	char *out;		/* replies not yet sent: out[out_off, out_len) */
	size_t out_off;
	size_t out_len;
	size_t out_cap;
	bool rd_eof;		/* the peer will send nothing more */
	bool backlog;		/* complete lines left unserved: not reading until served */
	bool discarding;	/* after a too-long line: no more requests, drop input */
	bool wr_shut;		/* shutdown(SHUT_WR) done after the last reply */
	uint64_t discarded;
	uint32_t events;	/* epoll mask registered now */
};

struct verb {
	char name[VERB_NAME_MAX];
	control_verb_fn fn;
	void *arg;
};

struct control {
	struct host *host;
	char *path;
	dev_t dev;		/* identity of the socket file we bound, to unlink only ours */
	ino_t ino;
	int lfd;
	int stop_efd;
	int epfd;
	pthread_t thread;
	bool started;
	bool accept_paused;	/* out of fds: listening fd not polled until a client goes */
	pthread_mutex_t verb_lock;
	struct verb verbs[CONTROL_MAX_VERBS]; /* verb_lock */
	unsigned int nr_verbs;	/* verb_lock */
	struct client *clients[CONTROL_MAX_CLIENTS]; /* control thread only */
	unsigned int nr_clients;
};

/* ---- errors and JSON helpers ---------------------------------------------------------- */

const char *control_errname(int err)
{
	static __thread char buf[16];
	const char *name;

	if (err < 0)
		err = -err;
	name = strerrorname_np(err);
	if (name)
		return name;
	snprintf(buf, sizeof(buf), "E%d", err);
	return buf;
}

/* json_string that never fails on bytes from a hostile peer: non-UTF-8 becomes '?'. */
static json_t *safe_string(const char *s)
{
	json_t *j = json_string(s);
	char *copy;

	if (j)
		return j;
	copy = kv_strdup(s);
	if (!copy)
		return json_string("(unprintable)");
	for (char *p = copy; *p; p++)
		if ((unsigned char)*p >= 0x80 || (unsigned char)*p < 0x20)
			*p = '?';
	j = json_string(copy);
	kv_free(copy);
	return j;
}

int control_reply_error(json_t *reply, int err, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_object_set_new(reply, "error", safe_string(msg));
	return err < 0 ? err : -err;
}

int control_req_string(json_t *req, const char *key, json_t *reply, const char **out)
{
	json_t *v = json_object_get(req, key);

	if (!v)
		return control_reply_error(reply, EINVAL, "%s: missing", key);
	if (!json_is_string(v))
		return control_reply_error(reply, EINVAL, "%s: must be a string", key);
	*out = json_string_value(v);
	return 0;
}

int control_req_size(json_t *req, const char *key, json_t *reply, uint64_t *out)
{
	char err[200];

	/* The same reading as the config's and the CLI's, a JSON number being bytes here. */
	if (size_json(key, json_object_get(req, key), SIZE_JSON_BYTES, SIZE_MAX_BYTES, out, err,
		      sizeof(err)))
		return control_reply_error(reply, EINVAL, "%s", err);
	return 0;
}

/* ---- the verb table -------------------------------------------------------------------- */

static struct verb *find_verb(struct control *c, const char *name)
{
	for (unsigned int i = 0; i < c->nr_verbs; i++)
		if (!strcmp(c->verbs[i].name, name))
			return &c->verbs[i];
	return NULL;
}

int control_register_verb(struct control *c, const char *verb, control_verb_fn fn, void *arg)
{
	int ret = 0;

	if (!verb || !*verb || strlen(verb) >= VERB_NAME_MAX || !fn)
		return -EINVAL;
	pthread_mutex_lock(&c->verb_lock);
	if (find_verb(c, verb)) {
		ret = -EEXIST;
	} else if (c->nr_verbs == CONTROL_MAX_VERBS) {
		ret = -ENOSPC;
	} else {
		struct verb *v = &c->verbs[c->nr_verbs++];

		snprintf(v->name, sizeof(v->name), "%s", verb);
		v->fn = fn;
		v->arg = arg;
	}
	pthread_mutex_unlock(&c->verb_lock);
	return ret;
}

int control_unregister_verb(struct control *c, const char *verb)
{
	struct verb *v;
	int ret = -ENOENT;

	pthread_mutex_lock(&c->verb_lock);
	v = find_verb(c, verb);
	if (v) {
		*v = c->verbs[--c->nr_verbs];
		ret = 0;
	}
	pthread_mutex_unlock(&c->verb_lock);
	return ret;
}

/* ---- the host's verbs ------------------------------------------------------------------ */

/* Merge a host_*_json object into the reply. */
static int merge(json_t *reply, json_t *payload)
{
	int ret;

	if (!payload)
		return control_reply_error(reply, ENOMEM, "out of memory");
	ret = json_object_update(reply, payload);
	json_decref(payload);
	return ret ? -ENOMEM : 0;
}

static int verb_list(void *arg, json_t *req, json_t *reply)
{
	(void)req;
	return merge(reply, host_list_json(arg));
}

static int verb_stats(void *arg, json_t *req, json_t *reply)
{
	(void)req;
	return merge(reply, host_stats_json(arg));
}

static int vm_verb(json_t *req, json_t *reply, const char *what, int (*fn)(struct host *,
									  const char *),
		   struct host *h)
{
	const char *name;
	int ret = control_req_string(req, "vm", reply, &name);

	if (ret)
		return ret;
	ret = fn(h, name);
	if (ret == -ENOENT)
		return control_reply_error(reply, ret, "vm \"%.64s\": no such VM", name);
	if (ret == -EINVAL)
		return control_reply_error(reply, ret, "vm \"%.64s\": cannot %s it in its state",
					   name, what);
	if (ret)
		return control_reply_error(reply, ret, "vm \"%.64s\": %s: %s", name, what,
					   strerror(-ret));
	json_object_set_new(reply, "vm", safe_string(name));
	return 0;
}

static int verb_pause(void *arg, json_t *req, json_t *reply)
{
	return vm_verb(req, reply, "pause", host_vm_pause, arg);
}

static int verb_resume(void *arg, json_t *req, json_t *reply)
{
	return vm_verb(req, reply, "resume", host_vm_resume, arg);
}

static int verb_stop(void *arg, json_t *req, json_t *reply)
{
	return vm_verb(req, reply, "stop", host_vm_stop, arg);
}

static int verb_budget(void *arg, json_t *req, json_t *reply)
{
	uint64_t bytes;
	int ret = control_req_size(req, "bytes", reply, &bytes);

	if (ret)
		return ret;
	if (bytes == 0 || bytes > (uint64_t)INT64_MAX)
		return control_reply_error(reply, EINVAL, "bytes: must be above 0 and below 2^63");
	host_set_budget(arg, bytes);
	json_object_set_new(reply, "budget_bytes", json_integer((json_int_t)bytes));
	return 0;
}

static int verb_reclaim(void *arg, json_t *req, json_t *reply)
{
	(void)req;
	(void)reply;
	host_reclaim_now(arg);
	return 0;
}

/* Called with verb_lock held (as every handler is). */
static int verb_verbs(void *arg, json_t *req, json_t *reply)
{
	struct control *c = arg;
	json_t *names = json_array();

	(void)req;
	for (unsigned int i = 0; i < c->nr_verbs; i++)
		json_array_append_new(names, json_string(c->verbs[i].name));
	json_object_set_new(reply, "verbs", names);
	return 0;
}

static int register_host_verbs(struct control *c)
{
	static const struct {
		const char *name;
		control_verb_fn fn;
	} tab[] = {
		{ "list", verb_list },	   { "stats", verb_stats },	{ "pause", verb_pause },
		{ "resume", verb_resume }, { "stop", verb_stop },	{ "budget", verb_budget },
		{ "reclaim", verb_reclaim },
	};
	int ret;

	for (size_t i = 0; i < ARRAY_SIZE(tab); i++) {
		ret = control_register_verb(c, tab[i].name, tab[i].fn, c->host);
		if (ret)
			return ret;
	}
	return control_register_verb(c, "verbs", verb_verbs, c);
}

/* ---- one request ----------------------------------------------------------------------- */

/* Build the reply to one request line (never NULL unless out of memory). */
static json_t *serve_line(struct control *c, const char *line, size_t len)
{
	json_error_t jerr;
	json_t *req, *reply, *id = NULL, *verb;
	struct verb *v;
	int ret;

	reply = json_pack("{s:b}", "ok", true);
	if (!reply)
		return NULL;
	req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!req) {
		ret = control_reply_error(reply, EINVAL, "bad JSON at column %d: %s", jerr.column,
					  jerr.text);
		goto out_error;
	}
	if (!json_is_object(req)) {
		ret = control_reply_error(reply, EINVAL, "a request must be a JSON object");
		goto out_error;
	}
	id = json_object_get(req, "id");
	if (id)
		json_object_set(reply, "id", id);
	verb = json_object_get(req, "verb");
	if (!json_is_string(verb)) {
		ret = control_reply_error(reply, EINVAL, "verb: %s",
					  verb ? "must be a string" : "missing");
		goto out_error;
	}
	pthread_mutex_lock(&c->verb_lock);
	v = find_verb(c, json_string_value(verb));
	if (!v) {
		pthread_mutex_unlock(&c->verb_lock);
		ret = control_reply_error(reply, ENOSYS,
					  "unknown verb \"%.64s\" (\"verbs\" lists them)",
					  json_string_value(verb));
		goto out_error;
	}
	ret = v->fn(v->arg, req, reply);
	pthread_mutex_unlock(&c->verb_lock);
	if (ret)
		goto out_error;
	json_decref(req);
	return reply;

out_error: {
	/* A fresh object: a failing handler may have left half a payload behind. */
	json_t *msg = json_object_get(reply, "error");
	json_t *err = json_pack("{s:b}", "ok", false);

	if (err) {
		if (id)
			json_object_set(err, "id", id);
		json_object_set_new(err, "error", json_is_string(msg) ? json_copy(msg)
								       : json_string(strerror(-ret)));
		json_object_set_new(err, "code", json_string(control_errname(ret)));
	}
	json_decref(reply);
	json_decref(req);
	return err;
}
}

/* ---- clients --------------------------------------------------------------------------- */

static void set_events(struct control *c, struct client *cl)
{
	struct epoll_event ev = { .data.ptr = cl };

	if (!cl->rd_eof && !cl->backlog)
		ev.events |= EPOLLIN;
	if (cl->out_len > cl->out_off)
		ev.events |= EPOLLOUT;
	if (ev.events == cl->events)
		return;
	cl->events = ev.events;
	if (epoll_ctl(c->epfd, EPOLL_CTL_MOD, cl->fd, &ev))
		log_warn_ratelimited("epoll_ctl: %m");
}

static void close_client(struct control *c, struct client *cl)
{
	for (unsigned int i = 0; i < c->nr_clients; i++) {
		if (c->clients[i] != cl)
			continue;
		c->clients[i] = c->clients[--c->nr_clients];
		break;
	}
	epoll_ctl(c->epfd, EPOLL_CTL_DEL, cl->fd, NULL);
	close(cl->fd);
	kv_free(cl->in);
	kv_free(cl->out);
	kv_free(cl);
	if (c->accept_paused) {
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &c->lfd };

		if (!epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->lfd, &ev))
			c->accept_paused = false;
	}
}

/* Queue one reply line; false when the client must be dropped (unread output too large). */
static bool queue_reply(struct client *cl, json_t *reply)
{
	char *s = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
	size_t n;

	if (!s)
		s = strdup("{\"ok\":false,\"error\":\"out of memory\",\"code\":\"ENOMEM\"}");
	if (!s)
		return false;
	n = strlen(s) + 1;
	if (cl->out_off) {
		memmove(cl->out, cl->out + cl->out_off, cl->out_len - cl->out_off);
		cl->out_len -= cl->out_off;
		cl->out_off = 0;
	}
	/* One reply of any size is fine; replies piling up unread are not. */
	if (cl->out_len && cl->out_len + n > CONTROL_MAX_OUTPUT) {
		free(s);
		log_warn_ratelimited("client dropped: more than %d bytes of replies unread",
				     CONTROL_MAX_OUTPUT);
		return false;
	}
	if (cl->out_len + n > cl->out_cap) {
		size_t cap = cl->out_cap ? cl->out_cap : 4096;
		char *p;

		while (cap < cl->out_len + n)
			cap *= 2;
		p = kv_realloc(cl->out, cap);
		if (!p) {
			free(s);
			return false;
		}
		cl->out = p;
		cl->out_cap = cap;
	}
	memcpy(cl->out + cl->out_len, s, n - 1);
	cl->out[cl->out_len + n - 1] = '\n';
	cl->out_len += n;
	free(s);
	return true;
}

static bool queue_error(struct client *cl, int err, const char *msg)
{
	json_t *r = json_pack("{s:b, s:s, s:s}", "ok", false, "error", msg, "code",
			      control_errname(err));
	bool ok = queue_reply(cl, r);

	json_decref(r);
	return ok;
}

/* Send what the socket takes; false when the peer is gone. */
static bool flush_out(struct client *cl)
{
	while (cl->out_off < cl->out_len) {
		ssize_t n = send(cl->fd, cl->out + cl->out_off, cl->out_len - cl->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK;
		}
		cl->out_off += (size_t)n;
	}
	cl->out_off = cl->out_len = 0;
	/* After a too-long line: the error is out, tell the peer we are done. */
	if (cl->discarding && !cl->wr_shut) {
		shutdown(cl->fd, SHUT_WR);
		cl->wr_shut = true;
	}
	return true;
}

/* Serve up to LINES_PER_ROUND complete lines of input; false to drop the client. */
static bool serve_lines(struct control *c, struct client *cl)
{
	size_t start = 0;
	unsigned int served = 0;
	char *nl;

	while (!cl->discarding && served < LINES_PER_ROUND &&
	       (nl = memchr(cl->in + start, '\n', cl->in_len - start)) != NULL) {
		size_t len = (size_t)(nl - (cl->in + start));
		const char *line = cl->in + start;
		bool blank = true;
		json_t *reply;
		bool ok;

		start += len + 1;
		if (len && line[len - 1] == '\r')
			len--;
		for (size_t i = 0; i < len && blank; i++)
			blank = line[i] == ' ' || line[i] == '\t';
		if (blank)
			continue;
		served++;
		reply = serve_line(c, line, len);
		ok = queue_reply(cl, reply);
		json_decref(reply);
		if (!ok)
			return false;
	}
	if (cl->discarding) {
		cl->in_len = 0;
		return true;
	}
	memmove(cl->in, cl->in + start, cl->in_len - start);
	cl->in_len -= start;
	cl->backlog = memchr(cl->in, '\n', cl->in_len) != NULL;
	if (!cl->backlog && cl->in_len >= CONTROL_MAX_LINE) {
		char msg[96];

		snprintf(msg, sizeof(msg), "request line longer than %d bytes", CONTROL_MAX_LINE);
		log_warn_ratelimited("client sent a line longer than %d bytes: closing it",
				     CONTROL_MAX_LINE);
		cl->discarding = true;
		cl->discarded = cl->in_len;
		cl->in_len = 0;
		return queue_error(cl, E2BIG, msg);
	}
	return true;
}

/* One read (fairness: one per client per round); false to drop the client. */
static bool read_client(struct control *c, struct client *cl)
{
	char sink[IN_CHUNK * 4];
	char *dst = sink;
	size_t room = sizeof(sink);
	ssize_t n;

	if (!cl->discarding) {
		if (cl->in_cap - cl->in_len < IN_CHUNK && cl->in_cap < CONTROL_MAX_LINE) {
			size_t cap = cl->in_cap ? cl->in_cap * 2 : IN_CHUNK;
			char *p;

			if (cap > CONTROL_MAX_LINE)
				cap = CONTROL_MAX_LINE;
			p = kv_realloc(cl->in, cap);
			if (!p)
				return false;
			cl->in = p;
			cl->in_cap = cap;
		}
		dst = cl->in + cl->in_len;
		room = cl->in_cap - cl->in_len;
	}
	n = recv(cl->fd, dst, room, MSG_DONTWAIT);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
	if (n == 0) {
		/* A request cut off by the close is dropped: nobody is there to answer. */
		cl->rd_eof = true;
		cl->in_len = 0;
		return true;
	}
	if (cl->discarding) {
		cl->discarded += (uint64_t)n;
		return cl->discarded <= DISCARD_MAX;
	}
	cl->in_len += (size_t)n;
	return serve_lines(c, cl);
}

static void client_event(struct control *c, struct client *cl, uint32_t events)
{
	if (events & EPOLLERR)
		goto out_drop;
	if (cl->backlog) {
		if (!serve_lines(c, cl))
			goto out_drop;
	} else if ((events & (EPOLLIN | EPOLLHUP)) && !cl->rd_eof && !read_client(c, cl)) {
		goto out_drop;
	}
	if (!flush_out(cl))
		goto out_drop;
	/* Done: the peer sent its last request and has every reply, or it is gone. */
	if (cl->rd_eof && cl->out_off == cl->out_len)
		goto out_drop;
	if ((events & EPOLLHUP) && cl->out_off < cl->out_len)
		goto out_drop;
	set_events(c, cl);
	return;

out_drop:
	close_client(c, cl);
}

/* Tell a refused peer why (best effort, it may not read) and close it. */
static void refuse(int fd, int err, const char *msg)
{
	char line[192];
	int n = snprintf(line, sizeof(line), "{\"ok\":false,\"error\":\"%s\",\"code\":\"%s\"}\n",
			 msg, control_errname(err));

	if (send(fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		log_debug("refused client: send: %m");
	close(fd);
}

static void accept_clients(struct control *c)
{
	for (int i = 0; i < ACCEPTS_PER_ROUND; i++) {
		struct epoll_event ev = { .events = EPOLLIN };
		struct ucred cred;
		socklen_t len = sizeof(cred);
		struct client *cl;
		int fd = accept4(c->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				/* Level-triggered: stop polling until a client closes. */
				log_warn_ratelimited("accept: %m: not accepting for now");
				ev.data.ptr = &c->lfd;
				ev.events = 0;
				if (!epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->lfd, &ev))
					c->accept_paused = true;
			} else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
				   errno != ECONNABORTED) {
				log_warn_ratelimited("accept: %m");
			}
			return;
		}
		/* The file mode keeps others out; check the peer anyway (a chmod, an fd passed on). */
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) || cred.uid != 0) {
			log_warn_ratelimited("refused a client with uid %d: root only",
					     len == sizeof(cred) ? (int)cred.uid : -1);
			refuse(fd, EPERM, "permission denied: the control socket serves root only");
			continue;
		}
		if (c->nr_clients == CONTROL_MAX_CLIENTS) {
			log_warn_ratelimited("refused a client: %d clients connected",
					     CONTROL_MAX_CLIENTS);
			refuse(fd, EBUSY, "too many clients");
			continue;
		}
		cl = kv_zalloc(sizeof(*cl));
		if (!cl) {
			refuse(fd, ENOMEM, "out of memory");
			continue;
		}
		cl->fd = fd;
		cl->events = EPOLLIN;
		ev.data.ptr = cl;
		if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev)) {
			log_warn_ratelimited("epoll_ctl: %m");
			kv_free(cl);
			close(fd);
			continue;
		}
		c->clients[c->nr_clients++] = cl;
	}
}

static void *control_thread(void *arg)
{
	struct control *c = arg;
	struct epoll_event evs[32];

	for (;;) {
		bool backlog = false;
		int n;

		for (unsigned int i = 0; i < c->nr_clients && !backlog; i++)
			backlog = c->clients[i]->backlog;
		n = epoll_wait(c->epfd, evs, ARRAY_SIZE(evs),
			       backlog ? 0 : c->accept_paused ? 1000 : -1);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_err("epoll_wait: %m: control socket stops");
			break;
		}
		if (n == 0 && c->accept_paused) {
			struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &c->lfd };

			if (!epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->lfd, &ev))
				c->accept_paused = false;
		}
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;

			if (p == &c->stop_efd)
				goto out;
			if (p == &c->lfd)
				accept_clients(c);
			else
				client_event(c, p, evs[i].events);
		}
		/* Clients with requests left over: the next batch (backwards: closing swaps). */
		for (unsigned int i = c->nr_clients; i-- > 0;)
			if (c->clients[i]->backlog)
				client_event(c, c->clients[i], 0);
	}
out:
	/* Last chance for replies already computed (a "stop" of the last VM, say). */
	while (c->nr_clients) {
		struct client *cl = c->clients[0];

		flush_out(cl);
		close_client(c, cl);
	}
	return NULL;
}

/* ---- binding --------------------------------------------------------------------------- */

/* Is someone accepting on the socket at addr? 1 yes, 0 no (stale), -errno can't tell. */
static int socket_in_use(const struct sockaddr_un *addr)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int ret;

	if (fd < 0)
		return -errno;
	ret = connect(fd, (const struct sockaddr *)addr, sizeof(*addr));
	if (!ret || errno == EAGAIN || errno == EINPROGRESS)
		ret = 1; /* connected, or a listener with a full backlog */
	else if (errno == ECONNREFUSED)
		ret = 0;
	else
		ret = -errno;
	close(fd);
	return ret;
}

static int bind_socket(struct control *c, const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, ret;

	if (!*path || strlen(path) >= sizeof(addr.sun_path)) {
		log_err("%s: a socket path must have 1 to %zu bytes", path,
			sizeof(addr.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(addr.sun_path, path, strlen(path));
	if (!lstat(path, &st)) {
		if (!S_ISSOCK(st.st_mode)) {
			log_err("%s: exists and is not a socket: not replacing it", path);
			return -EEXIST;
		}
		ret = socket_in_use(&addr);
		if (ret == 1) {
			log_err("%s: another kvmem host is listening there (choose another --socket)",
				path);
			return -EADDRINUSE;
		}
		if (ret < 0) {
			log_err("%s: cannot tell whether the socket is in use: %s", path,
				strerror(-ret));
			return ret;
		}
		log_info("%s: replacing a stale socket nobody listens on", path);
		if (unlink(path) && errno != ENOENT) {
			ret = -errno;
			log_err("%s: cannot remove the stale socket: %m", path);
			return ret;
		}
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* Linux creates the socket file with the socket inode's mode: 0600 from the start. */
	if (fchmod(fd, 0600))
		log_debug("fchmod socket: %m");
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		ret = -errno;
		if (ret == -EADDRINUSE)
			log_err("%s: address in use (another host started at the same time?)",
				path);
		else
			log_err("%s: bind: %m", path);
		goto out_close;
	}
	if (chmod(path, 0600) || chown(path, 0, 0) || stat(path, &st)) {
		ret = -errno;
		log_err("%s: cannot make the socket root-only (mode 0600, owner root): %m", path);
		goto out_unlink;
	}
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	if (listen(fd, 64)) {
		ret = -errno;
		log_err("%s: listen: %m", path);
		goto out_unlink;
	}
	c->lfd = fd;
	return 0;

out_unlink:
	unlink(path);
out_close:
	close(fd);
	return ret;
}

/* Unlink the socket file unless another host has replaced it since. */
static void unlink_ours(struct control *c)
{
	struct stat st;

	if (!lstat(c->path, &st) && st.st_dev == c->dev && st.st_ino == c->ino)
		unlink(c->path);
}

int control_create(struct host *h, const char *path, struct control **out)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct control *c;
	int ret;

	c = kv_zalloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->host = h;
	c->lfd = c->stop_efd = c->epfd = -1;
	pthread_mutex_init(&c->verb_lock, NULL);
	c->path = kv_strdup(path);
	if (!c->path) {
		ret = -ENOMEM;
		goto out_free;
	}
	ret = register_host_verbs(c);
	if (ret)
		goto out_free;
	c->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (c->stop_efd < 0 || c->epfd < 0) {
		ret = -errno;
		goto out_free;
	}
	ret = bind_socket(c, path);
	if (ret)
		goto out_free;
	ev.data.ptr = &c->lfd;
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->lfd, &ev)) {
		ret = -errno;
		goto out_unlink;
	}
	ev.data.ptr = &c->stop_efd;
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->stop_efd, &ev)) {
		ret = -errno;
		goto out_unlink;
	}
	ret = thread_spawn(&c->thread, "control", control_thread, c);
	if (ret)
		goto out_unlink;
	c->started = true;
	log_debug("listening on %s", path);
	*out = c;
	return 0;

out_unlink:
	unlink_ours(c);
out_free:
	if (ret != -EADDRINUSE && ret != -EEXIST && ret != -ENAMETOOLONG)
		log_err("control socket %s: %s", path, strerror(-ret));
	if (c->lfd >= 0)
		close(c->lfd);
	if (c->epfd >= 0)
		close(c->epfd);
	if (c->stop_efd >= 0)
		close(c->stop_efd);
	pthread_mutex_destroy(&c->verb_lock);
	kv_free(c->path);
	kv_free(c);
	return ret;
}

void control_destroy(struct control *c)
{
	uint64_t one = 1;

	if (!c)
		return;
	if (c->started) {
		if (write(c->stop_efd, &one, sizeof(one)) < 0)
			log_warn("control: cannot stop the thread: %m");
		pthread_join(c->thread, NULL);
	}
	close(c->lfd);
	unlink_ours(c);
	close(c->epfd);
	close(c->stop_efd);
	pthread_mutex_destroy(&c->verb_lock);
	kv_free(c->path);
	kv_free(c);
}

/* ---- client side ----------------------------------------------------------------------- */

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Wait for `events` on fd until the deadline: 0, or -ETIMEDOUT / -errno. */
static int wait_fd(int fd, short events, long deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		long left = deadline - now_ms();
		int n;

		if (left <= 0)
			return -ETIMEDOUT;
		n = poll(&p, 1, (int)(left > 1000000 ? 1000000 : left));
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

int control_request(const char *path, json_t *request, json_t **reply, int timeout_ms)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 5000);
	char *req = NULL, *buf = NULL, *nl = NULL;
	size_t len = 0, cap = 0, sent = 0, reqlen;
	json_error_t jerr;
	int fd, ret;

	*reply = NULL;
	if (!*path || strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	memcpy(addr.sun_path, path, strlen(path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		/* EAGAIN: the listener's backlog is full; wait for it to accept. */
		if (errno != EAGAIN && errno != EINPROGRESS) {
			ret = -errno;
			goto out_close;
		}
		ret = wait_fd(fd, POLLOUT, deadline);
		if (ret)
			goto out_close;
	}
	req = json_dumps(request, JSON_COMPACT);
	if (!req) {
		ret = -ENOMEM;
		goto out_close;
	}
	reqlen = strlen(req);
	req[reqlen++] = '\n'; /* overwrites the NUL: req is used with its length only */
	while (sent < reqlen) {
		ssize_t n = send(fd, req + sent, reqlen - sent, MSG_NOSIGNAL);

		if (n >= 0) {
			sent += (size_t)n;
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			ret = wait_fd(fd, POLLOUT, deadline);
			if (ret)
				goto out_free;
		} else if (errno != EINTR) {
			/* A peer that refused us may have said why: read it below. */
			if (errno == EPIPE || errno == ECONNRESET)
				break;
			ret = -errno;
			goto out_free;
		}
	}
	while (!nl) {
		ssize_t n;

		if (cap - len < 4096) {
			char *p;

			cap = cap ? cap * 2 : 8192;
			if (cap > REPLY_MAX) {
				ret = -EPROTO;
				goto out_free;
			}
			p = realloc(buf, cap);
			if (!p) {
				ret = -ENOMEM;
				goto out_free;
			}
			buf = p;
		}
		n = recv(fd, buf + len, cap - len, 0);
		if (n > 0) {
			nl = memchr(buf + len, '\n', (size_t)n);
			len += (size_t)n;
		} else if (n == 0) {
			ret = -ECONNRESET;
			goto out_free;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			ret = wait_fd(fd, POLLIN, deadline);
			if (ret)
				goto out_free;
		} else if (errno != EINTR) {
			ret = -errno;
			goto out_free;
		}
	}
	*reply = json_loadb(buf, (size_t)(nl - buf), 0, &jerr);
	if (!*reply || !json_is_object(*reply)) {
		json_decref(*reply);
		*reply = NULL;
		ret = -EPROTO;
		goto out_free;
	}
	ret = 0;
out_free:
	free(buf);
	free(req);
out_close:
	close(fd);
	return ret;
}
