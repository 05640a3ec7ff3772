/* SPDX-License-Identifier: MIT */
/*
 * Thread spawning for every VMM thread: names it, blocks the signals the
 * main thread handles (SIGINT, SIGTERM, SIGPIPE) and registers it with RCU
 * (memb flavour) for its lifetime, so any thread may enter a read section.
 */
#ifndef KVMEM_CORE_THREAD_H
#define KVMEM_CORE_THREAD_H

#include <pthread.h>

int thread_spawn(pthread_t *tid, const char *name, void *(*fn)(void *), void *arg);

#endif
