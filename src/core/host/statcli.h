/* SPDX-License-Identifier: MIT */
/*
 * `kvmem stat [--socket P] [--json] [--watch SECS]`: the statistics CLI, a
 * client of the control socket's "stats" verb. Prints a table (host line,
 * one row per VM, a TOTAL row) or the reply's JSON payload.
 */
#ifndef KVMEM_CORE_STATCLI_H
#define KVMEM_CORE_STATCLI_H

/* argv[0] is "stat". Returns the exit status: 0, 1 (error), 2 (usage). */
int statcli_main(int argc, char **argv);

#endif
