/* SPDX-License-Identifier: MIT */
/*
 * Thread spawning (thread.h). Once thread_creator_start has run, threads are
 * created by one creator thread rather than by whoever asks: a seccomp
 * filter is inherited by every thread its thread creates and can only be
 * narrowed, so a thread created by, say, the control thread would be held to
 * the control thread's filter on top of its own. The creator holds the
 * process-wide filter only (core/sandbox.h), which every thread has anyway.
 * Lock order: creator.lock alone (the creator never takes another lock).
 */
#include "core/thread.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <urcu/urcu-memb.h>

#include "core/alloc.h"

struct thread_start {
	void *(*fn)(void *);
	void *arg;
};

/* One thread_spawn handed to the creator; lives on the asking thread's stack. */
struct spawn_req {
	pthread_t *tid;
	const char *name;
	struct thread_start *st;
	int ret;			/* the creator's, set before done */
	bool done;			/* creator.lock */
	struct spawn_req *next;		/* creator.lock */
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t work;		/* a request was queued */
	pthread_cond_t done;		/* a request was answered */
	struct spawn_req *queue;	/* lock */
	bool running;			/* lock; never cleared: the creator never ends */
} creator = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.work = PTHREAD_COND_INITIALIZER,
	.done = PTHREAD_COND_INITIALIZER,
};

static void *trampoline(void *p)
{
	struct thread_start st = *(struct thread_start *)p;
	void *ret;

	kv_free(p);
	urcu_memb_register_thread();
	ret = st.fn(st.arg);
	urcu_memb_unregister_thread();
	return ret;
}

/* pthread_create with the host's signals blocked in the new thread, then its name. */
static int create(pthread_t *tid, const char *name, void *(*fn)(void *), void *arg)
{
	sigset_t block, old;
	int ret;

	/* The new thread inherits this mask: host signals go to the main thread. */
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGPIPE);
	sigaddset(&block, SIGCHLD);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	ret = pthread_create(tid, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret)
		return -ret;
	pthread_setname_np(*tid, name);
	return 0;
}

static void *creator_main(void *unused)
{
	(void)unused;
	pthread_mutex_lock(&creator.lock);
	for (;;) {
		struct spawn_req *r;

		while (!creator.queue)
			pthread_cond_wait(&creator.work, &creator.lock);
		r = creator.queue;
		creator.queue = r->next;
		pthread_mutex_unlock(&creator.lock);
		r->ret = create(r->tid, r->name, trampoline, r->st);
		pthread_mutex_lock(&creator.lock);
		r->done = true;
		pthread_cond_broadcast(&creator.done);
	}
	return NULL;
}

int thread_creator_start(void)
{
	pthread_t tid;
	int ret;

	pthread_mutex_lock(&creator.lock);
	ret = creator.running ? 0 : create(&tid, "thread-creator", creator_main, NULL);
	if (!ret && !creator.running) {
		pthread_detach(tid);
		creator.running = true;
	}
	pthread_mutex_unlock(&creator.lock);
	return ret;
}

int thread_spawn(pthread_t *tid, const char *name, void *(*fn)(void *), void *arg)
{
	struct thread_start *st = kv_zalloc(sizeof(*st));
	struct spawn_req r = { .tid = tid, .name = name };
	int ret;

	if (!st)
		return -ENOMEM;
	st->fn = fn;
	st->arg = arg;
	r.st = st;
	pthread_mutex_lock(&creator.lock);
	if (!creator.running) {
		pthread_mutex_unlock(&creator.lock);
		ret = create(tid, name, trampoline, st);
	} else {
		struct spawn_req **tail = &creator.queue;

		while (*tail)
			tail = &(*tail)->next;
		*tail = &r;
		pthread_cond_signal(&creator.work);
		while (!r.done)
			pthread_cond_wait(&creator.done, &creator.lock);
		pthread_mutex_unlock(&creator.lock);
		ret = r.ret;
	}
	if (ret)
		kv_free(st);
	return ret;
}
