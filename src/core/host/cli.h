/* SPDX-License-Identifier: MIT */
/* Shared by the command-line entry points (src/main.c and the CLI clients). */
#ifndef KVMEM_CORE_CLI_H
#define KVMEM_CORE_CLI_H

#define CLI_EXIT_USAGE 2

/*
 * Print one usage-error line, "kvmem[ CMD]: <fmt with arg> (HINT)", on stderr
 * and return CLI_EXIT_USAGE. cmd may be NULL.
 */
int cli_usage_error(const char *cmd, const char *hint, const char *fmt, const char *arg);
/*
 * The usage error for what getopt_long returns when the command has no case
 * for it: ':' (an option without its value) or '?' (an unknown option).
 */
int cli_bad_option(const char *cmd, const char *hint, int c, char **argv);

#endif
