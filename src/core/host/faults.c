/* SPDX-License-Identifier: MIT */
/*
 * The "faults" verb of a build with fault injection (core/fault.h): arm
 * and disarm injection points while the host runs, and read what each
 * point was hit and failed. Arming at run time is what lets a test fail a
 * path at the moment it chooses (after the guests filled their memory),
 * not at a hit number it would have to guess from start-up.
 */
#define LOG_TAG "host"
#include <string.h>

#include "core/fault.h"
#include "core/host/control.h"
#include "core/host/host_internal.h"

static json_t *errno_json(int err)
{
	const char *name = err ? strerrorname_np(err) : NULL;

	return name ? json_string(name) : json_null();
}

/*
 * {"verb":"faults"[,"clear":true][,"set":SPEC]}: clear disarms every point
 * first, set arms what SPEC names (KVMEM_FAULTS's grammar). The reply lists
 * every point: name, errno (default), hits, injected, armed, and for an
 * armed point its errno and the hit numbers it fails (last null: all).
 */
static int faults_verb(void *arg, json_t *req, json_t *reply)
{
	const char *spec = NULL;
	json_t *clear = json_object_get(req, "clear"), *list;
	char why[192];
	int ret;

	(void)arg;
	if (clear && !json_is_boolean(clear))
		return control_reply_error(reply, EINVAL, "clear: must be true or false");
	if (json_object_get(req, "set") && (ret = control_req_string(req, "set", reply, &spec)))
		return ret;
	if (json_is_true(clear))
		fault_clear();
	if (spec && (ret = fault_configure(spec, why, sizeof(why))))
		return control_reply_error(reply, -ret, "set: %s", why);
	list = json_array();
	for (unsigned int i = 0; i < FAULT_NR_POINTS; i++) {
		struct fault_info fi;

		fault_get((enum fault_point)i, &fi);
		json_array_append_new(
			list, json_pack("{s:s, s:o, s:I, s:I, s:b, s:o, s:I, s:o}", "name", fi.name,
					"default", errno_json(fi.default_err), "hits",
					(json_int_t)fi.hits, "injected", (json_int_t)fi.injected,
					"armed", fi.armed, "errno", errno_json(fi.err), "first",
					(json_int_t)fi.first, "last",
					fi.last == UINT64_MAX ? json_null()
							      : json_integer((json_int_t)fi.last)));
	}
	json_object_set_new(reply, "points", list);
	return 0;
}

int host_faults_register(struct host *h)
{
	if (!fault_enabled())
		return 0;
	return control_register_verb(h->control, "faults", faults_verb, h);
}
