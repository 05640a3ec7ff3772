/* SPDX-License-Identifier: MIT */
#ifndef KVMEM_CORE_CLI_MIGRATE_H
#define KVMEM_CORE_CLI_MIGRATE_H

/* `kvmem migrate ...`; returns the process exit status. */
int cli_migrate_main(int argc, char **argv);

#endif
