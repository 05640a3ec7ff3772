/* SPDX-License-Identifier: MIT */
#include "core/cli.h"

#include <stdio.h>

int cli_usage_error(const char *cmd, const char *hint, const char *fmt, const char *arg)
{
	fprintf(stderr, "kvmem%s%s: ", cmd ? " " : "", cmd ? cmd : "");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, " (%s)\n", hint);
	return CLI_EXIT_USAGE;
}
