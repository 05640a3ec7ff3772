/* SPDX-License-Identifier: MIT */
#include "core/thread.h"

#include <errno.h>
#include <signal.h>
#include <urcu/urcu-memb.h>

#include "core/alloc.h"

struct thread_start {
	void *(*fn)(void *);
	void *arg;
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

int thread_spawn(pthread_t *tid, const char *name, void *(*fn)(void *), void *arg)
{
	struct thread_start *st = kv_zalloc(sizeof(*st));
	sigset_t block, old;
	int ret;

	if (!st)
		return -ENOMEM;
	st->fn = fn;
	st->arg = arg;
	/* The new thread inherits this mask: host signals go to the main thread. */
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGPIPE);
	sigaddset(&block, SIGCHLD);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	ret = pthread_create(tid, NULL, trampoline, st);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret) {
		kv_free(st);
		return -ret;
	}
	pthread_setname_np(*tid, name);
	return 0;
}
