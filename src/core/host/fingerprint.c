/* SPDX-License-Identifier: MIT */
/*
 * The "fingerprint" verb: a VM's content sketch (dedup.h), from which the
 * sharing between it and any other VM, here or on another host of the
 * cluster, can be estimated without moving anything. The hashes are keyed
 * by the cluster's key (the config's "fingerprint_key"), so sketches of
 * hosts that share it compare, and are worth nothing to whoever lacks it.
 * A sketch is still a side channel on a VM's contents: like every verb it
 * is root's alone, and its hashes are its sharing group's (groups.c), so
 * it says nothing of a VM of another group that it could be matched with.
 */
#define LOG_TAG "host"
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/host/control.h"
#include "core/host/host_internal.h"
#include "core/log.h"
#include "core/vm.h"
#include "dedup/dedup.h"

/* The hashes as one hex string, 16 digits each (k of 1024: 16 KiB). */
static json_t *hex_hashes(const struct dedup_sketch *s)
{
	char *buf = kv_zalloc((size_t)s->n * 16 + 1);
	json_t *j;

	if (!buf)
		return NULL;
	for (unsigned int i = 0; i < s->n; i++)
		snprintf(buf + (size_t)i * 16, 17, "%016" PRIx64, s->hashes[i]);
	j = json_string(buf);
	kv_free(buf);
	return j;
}

/* {"verb":"fingerprint","vm":NAME[,"k":N]}: the sketch of VM NAME's contents. */
static int fingerprint_verb(void *arg, json_t *req, json_t *reply)
{
	struct host *h = arg;
	char group[HOST_GROUP_MAX + 1];
	struct dedup_sketch s;
	struct host_vm *hv;
	uint64_t salt;
	const char *name;
	uint64_t k = DEDUP_SKETCH_K, t0;
	json_t *hashes;
	int ret;

	if ((ret = control_req_string(req, "vm", reply, &name)))
		return ret;
	if (json_object_get(req, "k") &&
	    (ret = control_req_count(req, "k", reply, DEDUP_SKETCH_MAX, &k)))
		return ret;
	if (!k)
		return control_reply_error(reply, EINVAL, "k: from 1 to %d", DEDUP_SKETCH_MAX);
	hv = host_find_vm(h, name);
	if (!hv)
		return control_reply_error(reply, ENOENT, "vm \"%.64s\": no such VM", name);
	host_vm_group(h, hv, group, sizeof(group), &salt);
	t0 = kv_clock_ns(CLOCK_MONOTONIC);
	ret = dedup_sketch_vm(vm_gm(hv->vm), h->fp_key, h->fp_key_len, salt, (unsigned int)k, &s);
	if (ret)
		return control_reply_error(reply, -ret, "vm \"%.64s\": %s", name, strerror(-ret));
	hashes = hex_hashes(&s);
	if (!hashes) {
		dedup_sketch_free(&s);
		return -ENOMEM;
	}
	json_object_set_new(reply, "fingerprint",
			    json_pack("{s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:o}", "vm",
				      hv->cfg.name, "sharing_group", group,
				      "keyed", h->fp_key != NULL, "k", (json_int_t)s.k,
				      "n", (json_int_t)s.n, "pages", (json_int_t)s.pages,
				      "distinct", (json_int_t)s.distinct, "ms",
				      (json_int_t)((kv_clock_ns(CLOCK_MONOTONIC) - t0) / 1000000),
				      "hashes", hashes));
	dedup_sketch_free(&s);
	return 0;
}

int host_fingerprint_register(struct host *h)
{
	int ret = 0;

	if (h->cfg.fingerprint_key && !h->fp_key)
		ret = host_load_key("fingerprint_key", h->cfg.fingerprint_key, &h->fp_key,
				    &h->fp_key_len);
	if (!ret)
		ret = control_register_verb(h->control, "fingerprint", fingerprint_verb, h);
	return ret;
}
