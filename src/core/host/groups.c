/* SPDX-License-Identifier: MIT */
/*
 * Sharing groups: a VM shares pages only with the VMs of its group (zero
 * pages aside), because a page two VMs share lets one time the other's
 * accesses to it (FLUSH+RELOAD across VMs, why inter-VM page sharing is off
 * by default elsewhere). Every VM is in one group, "default" unless its
 * config, the "sharing_group" verb or the VM it continues says otherwise.
 * The page sharing engine keeps the groups apart (dedup_set_group); so do
 * clones (their snapshot's group), fingerprints (a sketch of one group
 * never matches another's) and the savings the stats attribute, which count
 * only sharing that happened. Host KSM cannot keep groups apart: a host
 * with "dedup": "ksm" takes VMs of the default group only.
 */
#define LOG_TAG "host"
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/host/control.h"
#include "core/host/host_internal.h"
#include "core/log.h"
#include "core/vm.h"
#include "dedup/dedup.h"
#include "mem/account.h"

int host_group_check(const char *name, bool ksm, char *why, size_t whylen)
{
	size_t n = strlen(name);

	if (!n || n > HOST_GROUP_MAX ||
	    strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != n) {
		snprintf(why, whylen, "sharing_group \"%.64s\": 1-%d letters, digits, '.', '_' or '-'",
			 name, HOST_GROUP_MAX);
		return -EINVAL;
	}
	if (ksm && strcmp(name, HOST_GROUP_DEFAULT)) {
		snprintf(why, whylen, "sharing_group \"%s\": host KSM (dedup ksm) merges across any "
			 "groups: only the default group can be kept", name);
		return -ENOTSUP;
	}
	return 0;
}

uint64_t host_group_salt(const char *name)
{
	return dedup_group_salt(strcmp(name, HOST_GROUP_DEFAULT) ? name : "");
}

int host_vm_join_group(struct host *h, struct host_vm *hv, const char *name, uint64_t *unshared)
{
	uint64_t salt = host_group_salt(name);
	int ret = 0;

	if (unshared)
		*unshared = 0;
	/* The engine first: once the name says the new group, no page is the old group's. */
	if (h->dedup)
		ret = dedup_set_group(h->dedup, vm_gm(hv->vm), salt, unshared);
	if (ret)
		return ret;
	pthread_mutex_lock(&h->lock);
	snprintf(hv->group, sizeof(hv->group), "%s", name);
	hv->group_salt = salt;
	pthread_mutex_unlock(&h->lock);
	return 0;
}

const char *host_vm_config_group(const struct host_vm *hv)
{
	return hv->cfg.sharing_group ? hv->cfg.sharing_group : HOST_GROUP_DEFAULT;
}

void host_vm_group(struct host *h, struct host_vm *hv, char *name, size_t len, uint64_t *salt)
{
	pthread_mutex_lock(&h->lock);
	snprintf(name, len, "%s", hv->group);
	if (salt)
		*salt = hv->group_salt;
	pthread_mutex_unlock(&h->lock);
}

void host_groups_add(json_t *groups, const char *group, const struct mem_usage *u)
{
	json_t *g = json_object_get(groups, group);

	if (!g) {
		g = json_pack("{s:I, s:I, s:I, s:I}", "vms", (json_int_t)0, "resident_bytes",
			      (json_int_t)0, "shared_within_bytes", (json_int_t)0,
			      "shared_across_bytes", (json_int_t)0);
		json_object_set_new(groups, group, g);
	}
#define ADD(key, v) \
	json_object_set_new(g, key, json_integer(json_integer_value(json_object_get(g, key)) + \
						 (json_int_t)(v)))
	ADD("vms", 1);
	if (u) {
		ADD("resident_bytes", u->resident_bytes);
		ADD("shared_within_bytes", u->saved_bytes[MEM_SAVED_SHARED_WITHIN]);
		ADD("shared_across_bytes", u->saved_bytes[MEM_SAVED_SHARED_ACROSS]);
	}
#undef ADD
}

/*
 * {"verb":"sharing_group","vm":NAME[,"group":G]}: the VM's group, moved to
 * G first when given. Its shared pages leave their frames (unshared_pages).
 */
static int group_verb(void *arg, json_t *req, json_t *reply)
{
	struct host *h = arg;
	struct host_vm *hv;
	const char *name, *group = NULL;
	uint64_t unshared = 0;
	char why[200], now[HOST_GROUP_MAX + 1];
	int ret;

	if ((ret = control_req_string(req, "vm", reply, &name)))
		return ret;
	if (json_object_get(req, "group") &&
	    (ret = control_req_string(req, "group", reply, &group)))
		return ret;
	if (group && (ret = host_group_check(group, h->cfg.dedup == HOST_DEDUP_KSM, why,
					     sizeof(why))))
		return control_reply_error(reply, -ret, "%s", why);
	hv = host_find_vm(h, name);
	if (!hv)
		return control_reply_error(reply, ENOENT, "vm \"%.64s\": no such VM", name);
	if (group && (ret = host_vm_join_group(h, hv, group, &unshared)))
		return control_reply_error(reply, -ret, "vm \"%.64s\": %s", name, strerror(-ret));
	host_vm_group(h, hv, now, sizeof(now), NULL);
	if (group)
		log_info("%s: sharing group %s (%llu shared pages made its own)", hv->cfg.name, now,
			 (unsigned long long)unshared);
	json_object_set_new(reply, "vm", json_string(hv->cfg.name));
	json_object_set_new(reply, "sharing_group", json_string(now));
	json_object_set_new(reply, "unshared_pages", json_integer((json_int_t)unshared));
	return 0;
}

int host_groups_register(struct host *h)
{
	return control_register_verb(h->control, "sharing_group", group_verb, h);
}
