/* SPDX-License-Identifier: MIT */
/*
 * Thread spawning for every VMM thread: names it, blocks the signals the
 * main thread handles (SIGINT, SIGTERM, SIGPIPE) and registers it with RCU
 * (memb flavour) for its lifetime, so any thread may enter a read section.
 */
#ifndef KVMEM_CORE_THREAD_H
#define KVMEM_CORE_THREAD_H

#include <pthread.h>

/*
 * Start fn(arg) on a new thread named `name`. 0 or -errno. Any thread; once
 * thread_creator_start has run, the creator thread makes it (the caller
 * waits for that), so the new thread inherits the creator's seccomp filter,
 * not the caller's.
 */
int thread_spawn(pthread_t *tid, const char *name, void *(*fn)(void *), void *arg);

/*
 * From now on every thread_spawn is served by one creator thread, started
 * here by the calling thread (it inherits that thread's seccomp filter, and
 * its signal mask with the host's signals blocked, and passes both on) and
 * alive until the process ends. 0 or -errno. Main thread, before any thread
 * narrows its filter (core/sandbox.c).
 */
int thread_creator_start(void);

#endif
