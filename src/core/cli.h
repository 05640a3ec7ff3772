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

#endif
