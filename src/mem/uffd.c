/* SPDX-License-Identifier: MIT */
/*
 * userfaultfd service thread (see uffd.h). One epoll set over every VM's
 * userfaultfd. This thread never touches guest memory itself, so it can never
 * fault on a page it is supposed to serve.
 */
#define LOG_TAG "uffd"
#include "mem/uffd.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/sandbox.h"
#include "core/thread.h"
#include "mem/memmap.h"
#include "mem/mem_internal.h"
#include "mem/pagestate.h"

/* A descriptor whose readiness runs fn on the service thread (uffd_service_watch). */
struct uffd_watch {
	int fd;
	void (*fn)(void *arg);
	void *arg;
};

#define UFFD_MAX_WATCHES 4

struct uffd_service {
	int epfd;
	int stop_efd;
	pthread_t thread;
	pthread_mutex_t lock;	 /* serialises add/remove against the thread's dispatch */
	struct gm **served;	 /* lock: VMs being served (as many as the host has) */
	unsigned int nr_served;	 /* lock */
	unsigned int cap_served; /* lock: room in served */
	struct uffd_watch *watches[UFFD_MAX_WATCHES]; /* lock */
	struct uffd_stats stats; /* atomic */
};

static void resolve(struct uffd_service *svc, struct gm *gm, const struct uffd_msg *msg)
{
	uint64_t addr = msg->arg.pagefault.address & ~(MEM_PAGE_SIZE - 1);
	const struct mem_ram_region *r = NULL;
	uint64_t idx;
	bool wp;

	for (unsigned int i = 0; i < gm->nr_regions; i++) {
		uint64_t hva = (uint64_t)(uintptr_t)gm->regions[i].hva;

		if (addr >= hva && addr - hva < gm->regions[i].len)
			r = &gm->regions[i];
	}
	if (!r) {
		/* Not ours to resolve: let the access retry rather than hang. */
		struct uffdio_range wake = { addr, MEM_PAGE_SIZE };

		__atomic_fetch_add(&svc->stats.errors, 1, __ATOMIC_RELAXED);
		ioctl(gm->uffd, UFFDIO_WAKE, &wake);
		return;
	}
	idx = r->first_pfn_index + ((addr - (uint64_t)(uintptr_t)r->hva) >> MEM_PAGE_SHIFT);
	wp = msg->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP;
	__atomic_fetch_add(wp ? &svc->stats.wp_faults : &svc->stats.missing_faults, 1,
			   __ATOMIC_RELAXED);
	switch (mem_fault(gm, idx, (void *)(uintptr_t)addr, wp)) {
	case MEM_FAULT_SAMPLE:
		__atomic_fetch_add(&svc->stats.sample_hits, 1, __ATOMIC_RELAXED);
		break;
	case MEM_FAULT_TRACK:
		__atomic_fetch_add(&svc->stats.track_hits, 1, __ATOMIC_RELAXED);
		break;
	case MEM_FAULT_STRAY:
		__atomic_fetch_add(&svc->stats.stray, 1, __ATOMIC_RELAXED);
		break;
	case MEM_FAULT_ZERO_FILL:
		__atomic_fetch_add(&svc->stats.zero_fills, 1, __ATOMIC_RELAXED);
		break;
	case MEM_FAULT_ZERO_PAGE:
		__atomic_fetch_add(&svc->stats.zero_pages, 1, __ATOMIC_RELAXED);
		break;
	case MEM_FAULT_UNSERVED:
		/* Said once already, with the VM's name, by whoever stopped the VM for it. */
		__atomic_fetch_add(&svc->stats.errors, 1, __ATOMIC_RELAXED);
		break;
	default:
		break;
	}
}

static void drain(struct uffd_service *svc, struct gm *gm)
{
	struct uffd_msg msgs[64];

	for (;;) {
		ssize_t n = read(gm->uffd, msgs, sizeof(msgs));

		if (n <= 0)
			return;
		for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++)
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				resolve(svc, gm, &msgs[i]);
	}
}

/* Under svc->lock: the watch at p, if p is one still watched. */
static struct uffd_watch *watch_of(const struct uffd_service *svc, const void *p)
{
	for (unsigned int i = 0; i < UFFD_MAX_WATCHES; i++)
		if (svc->watches[i] && svc->watches[i] == p)
			return svc->watches[i];
	return NULL;
}

/* Under svc->lock: gm was not removed since epoll_wait returned its event. */
static bool is_served(const struct uffd_service *svc, const struct gm *gm)
{
	for (unsigned int i = 0; i < svc->nr_served; i++)
		if (svc->served[i] == gm)
			return true;
	return false;
}

static void *service_thread(void *arg)
{
	struct uffd_service *svc = arg;
	struct epoll_event evs[16];
	struct uffd_watch *w;

	sandbox_enter(SANDBOX_UFFD);
	for (;;) {
		int n = epoll_wait(svc->epfd, evs, 16, -1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			/* Faults would go unserved and their vCPUs hang: say why. */
			log_err("epoll_wait: %m: no more guest page faults are served");
			break;
		}
		for (int i = 0; i < n; i++) {
			if (!evs[i].data.ptr)
				return NULL; /* the stop eventfd */
			pthread_mutex_lock(&svc->lock);
			w = watch_of(svc, evs[i].data.ptr);
			if (w)
				w->fn(w->arg);
			else if (is_served(svc, evs[i].data.ptr))
				drain(svc, evs[i].data.ptr);
			pthread_mutex_unlock(&svc->lock);
		}
	}
	return NULL;
}

int uffd_service_create(struct uffd_service **out)
{
	struct uffd_service *svc = kv_zalloc(sizeof(*svc));
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	int ret;

	if (!svc)
		return -ENOMEM;
	pthread_mutex_init(&svc->lock, NULL);
	svc->epfd = epoll_create1(EPOLL_CLOEXEC);
	svc->stop_efd = eventfd(0, EFD_CLOEXEC);
	if (svc->epfd < 0 || svc->stop_efd < 0 ||
	    epoll_ctl(svc->epfd, EPOLL_CTL_ADD, svc->stop_efd, &ev) < 0) {
		ret = -errno;
		goto out_close;
	}
	ret = thread_spawn(&svc->thread, "uffd", service_thread, svc);
	if (ret)
		goto out_close;
	*out = svc;
	return 0;

out_close:
	if (svc->epfd >= 0)
		close(svc->epfd);
	if (svc->stop_efd >= 0)
		close(svc->stop_efd);
	kv_free(svc);
	return ret;
}

void uffd_service_destroy(struct uffd_service *svc)
{
	uint64_t one = 1;

	if (!svc)
		return;
	if (write(svc->stop_efd, &one, sizeof(one)) == sizeof(one))
		pthread_join(svc->thread, NULL);
	close(svc->epfd);
	close(svc->stop_efd);
	pthread_mutex_destroy(&svc->lock);
	kv_free(svc->served);
	for (unsigned int i = 0; i < UFFD_MAX_WATCHES; i++)
		kv_free(svc->watches[i]);
	kv_free(svc);
}

int uffd_service_add(struct uffd_service *svc, struct gm *gm)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = gm };
	int ret = 0;

	if (gm->uffd < 0)
		return -EINVAL;
	pthread_mutex_lock(&svc->lock);
	if (svc->nr_served == svc->cap_served) {
		unsigned int cap = svc->cap_served ? 2 * svc->cap_served : 16;
		struct gm **p = kv_realloc(svc->served, cap * sizeof(*p));

		if (!p) {
			ret = -ENOMEM;
			goto out;
		}
		svc->served = p;
		svc->cap_served = cap;
	}
	if (epoll_ctl(svc->epfd, EPOLL_CTL_ADD, gm->uffd, &ev) < 0)
		ret = -errno;
	else
		svc->served[svc->nr_served++] = gm;
out:
	pthread_mutex_unlock(&svc->lock);
	return ret;
}

void uffd_service_remove(struct uffd_service *svc, struct gm *gm)
{
	if (gm->uffd < 0)
		return;
	/*
	 * Under the lock, and the thread checks membership under it before
	 * touching a gm from an epoll batch: once we return, it never will.
	 */
	pthread_mutex_lock(&svc->lock);
	epoll_ctl(svc->epfd, EPOLL_CTL_DEL, gm->uffd, NULL);
	for (unsigned int i = 0; i < svc->nr_served; i++) {
		if (svc->served[i] == gm) {
			svc->served[i] = svc->served[--svc->nr_served];
			break;
		}
	}
	pthread_mutex_unlock(&svc->lock);
}

int uffd_service_watch(struct uffd_service *svc, int fd, void (*fn)(void *arg), void *arg)
{
	struct uffd_watch *w = kv_zalloc(sizeof(*w));
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = w };
	int ret = -ENOSPC;

	if (!w)
		return -ENOMEM;
	*w = (struct uffd_watch){ fd, fn, arg };
	pthread_mutex_lock(&svc->lock);
	for (unsigned int i = 0; i < UFFD_MAX_WATCHES; i++) {
		if (svc->watches[i])
			continue;
		ret = epoll_ctl(svc->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
		if (!ret)
			svc->watches[i] = w;
		break;
	}
	pthread_mutex_unlock(&svc->lock);
	if (ret)
		kv_free(w);
	return ret;
}

void uffd_service_unwatch(struct uffd_service *svc, int fd)
{
	pthread_mutex_lock(&svc->lock);
	for (unsigned int i = 0; i < UFFD_MAX_WATCHES; i++) {
		if (svc->watches[i] && svc->watches[i]->fd == fd) {
			epoll_ctl(svc->epfd, EPOLL_CTL_DEL, fd, NULL);
			kv_free(svc->watches[i]);
			svc->watches[i] = NULL;
		}
	}
	pthread_mutex_unlock(&svc->lock);
}

void uffd_service_stats(const struct uffd_service *svc, struct uffd_stats *out)
{
	out->wp_faults = __atomic_load_n(&svc->stats.wp_faults, __ATOMIC_RELAXED);
	out->sample_hits = __atomic_load_n(&svc->stats.sample_hits, __ATOMIC_RELAXED);
	out->track_hits = __atomic_load_n(&svc->stats.track_hits, __ATOMIC_RELAXED);
	out->missing_faults = __atomic_load_n(&svc->stats.missing_faults, __ATOMIC_RELAXED);
	out->zero_fills = __atomic_load_n(&svc->stats.zero_fills, __ATOMIC_RELAXED);
	out->zero_pages = __atomic_load_n(&svc->stats.zero_pages, __ATOMIC_RELAXED);
	out->stray = __atomic_load_n(&svc->stats.stray, __ATOMIC_RELAXED);
	out->errors = __atomic_load_n(&svc->stats.errors, __ATOMIC_RELAXED);
}
