/* SPDX-License-Identifier: MIT */
#include "core/cli.h"

#include <stdio.h>
#include <unistd.h>

int cli_usage_error(const char *cmd, const char *hint, const char *fmt, const char *arg)
{
	fprintf(stderr, "kvmem%s%s: ", cmd ? " " : "", cmd ? cmd : "");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, " (%s)\n", hint);
	return CLI_EXIT_USAGE;
}

int cli_bad_option(const char *cmd, const char *hint, int c, char **argv)
{
	return cli_usage_error(cmd, hint, c == ':' ? "%s: missing value" : "%s: unknown option",
			       argv[optind - 1]);
}
