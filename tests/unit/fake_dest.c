/* SPDX-License-Identifier: MIT */
/* A test's destination for a migration or a restore (fake_dest.h). */
#include "fake_dest.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "balloon/balloon.h"
#include "core/accel/accel.h"
#include "core/virtio/virtio_mmio.h"
#include "core/vm.h"

static int reserve(void *arg, json_t *desc, struct vm **out, char *why, size_t whylen)
{
	struct fake_dest *d = arg;
	json_int_t cpus = 1;
	struct vm_params p = {
		.name = "fake-dest",
		.accel = ACCEL_THREAD,
		.mem_bytes = d->ram,
		.guest_path = "/dev/null",
		.console_fd = d->console_fd,
	};
	int ret;

	/* The peer says how many vCPUs; the rest of the description is config.c's to read. */
	json_unpack(desc, "{s?I}", "cpus", &cpus);
	if (cpus < 1 || cpus > d->max_cpus) {
		snprintf(why, whylen, "cpus: from 1 to %u", d->max_cpus);
		return -EINVAL;
	}
	p.ncpus = (unsigned int)cpus;
	ret = vm_create(&p, &d->vm);
	if (ret) {
		snprintf(why, whylen, "vm_create: %s", strerror(-ret));
		return ret;
	}
	ret = balloon_create_on_gm(vm_gm(d->vm), NULL, NULL, &d->balloon);
	if (ret) {
		snprintf(why, whylen, "balloon_create_on_gm: %s", strerror(-ret));
		vm_destroy(d->vm);
		d->vm = NULL;
		return ret;
	}
	*out = d->vm;
	return 0;
}

/* As the host gives an arriving VM its devices' state (host_vm_load_devices). */
static int load_devices(void *arg, json_t *devices, char *why, size_t whylen)
{
	struct fake_dest *d = arg;
	json_t *b = json_object_get(devices, "balloon");

	if (!json_is_object(b)) {
		snprintf(why, whylen, "no balloon state");
		return -EINVAL;
	}
	return virtio_dev_load(balloon_virtio_dev(d->balloon), b, why, whylen);
}

static int activate(void *arg)
{
	(void)arg;
	return 0;
}

static void discard(void *arg)
{
	((struct fake_dest *)arg)->discarded = true;
}

/* The job's last progress call comes once it is finished: wake fake_dest_finish. */
static void progress(void *arg)
{
	struct fake_dest *d = arg;

	pthread_mutex_lock(&d->lock);
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
}

const struct mig_dest_ops fake_dest_ops = {
	.reserve = reserve,
	.load_devices = load_devices,
	.activate = activate,
	.discard = discard,
	.progress = progress,
};

void fake_dest_init(struct fake_dest *d, uint64_t ram, unsigned int max_cpus, int console_fd)
{
	memset(d, 0, sizeof(*d));
	d->ram = ram;
	d->max_cpus = max_cpus;
	d->console_fd = console_fd;
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->cond, NULL);
}

void fake_dest_finish(struct fake_dest *d, struct mig_progress *out)
{
	pthread_mutex_lock(&d->lock);
	while (!mig_job_finished(d->job))
		pthread_cond_wait(&d->cond, &d->lock);
	pthread_mutex_unlock(&d->lock);
	mig_job_progress(d->job, out);
	mig_job_free(d->job);
	d->job = NULL;
}

void fake_dest_release(struct fake_dest *d)
{
	if (d->vm) {
		balloon_destroy(d->balloon);
		vm_destroy(d->vm);
	}
	d->vm = NULL;
	d->balloon = NULL;
	pthread_cond_destroy(&d->cond);
	pthread_mutex_destroy(&d->lock);
}
