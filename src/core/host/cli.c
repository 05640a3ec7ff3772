/* SPDX-License-Identifier: MIT */
#include "core/host/cli.h"

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
	/*
	 * An unknown short option has its letter in optopt (and inside a group,
	 * -jz, optind has not moved on); an unknown long one has optopt 0.
	 */
	char letter[3] = { '-', (char)optopt, 0 };
	const char *what = c == '?' && optopt ? letter : argv[optind - 1];

	return cli_usage_error(cmd, hint, c == ':' ? "%s: missing value" : "%s: unknown option",
			       what);
}
