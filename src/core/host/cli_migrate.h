/* SPDX-License-Identifier: MIT */
#ifndef KVMEM_CORE_CLI_MIGRATE_H
#define KVMEM_CORE_CLI_MIGRATE_H

/* `kvmem migrate ...`; returns the process exit status. */
int cli_migrate_main(int argc, char **argv);
/*
 * Follow VM vm's job of that kind ("migration", "save", "snapshot",
 * "restore") through the stats of the host at path until it ends: a progress
 * line while it runs, a summary at the end. Returns the exit status (0: done).
 */
int cli_follow_job(const char *cmd, const char *path, const char *vm, const char *kind);

#endif
