/* SPDX-License-Identifier: MIT */
/* Placeholder until the control socket lands. */
#include "core/control.h"

#include <errno.h>

int control_create(struct host *h, const char *path, struct control **out)
{
	(void)h;
	(void)path;
	(void)out;
	return -ENOSYS;
}

void control_destroy(struct control *c)
{
	(void)c;
}

int control_request(const char *path, json_t *request, json_t **reply, int timeout_ms)
{
	(void)path;
	(void)request;
	(void)reply;
	(void)timeout_ms;
	return -ENOSYS;
}
