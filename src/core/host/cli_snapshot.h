/* SPDX-License-Identifier: MIT */
#ifndef KVMEM_CORE_CLI_SNAPSHOT_H
#define KVMEM_CORE_CLI_SNAPSHOT_H

/* `kvmem save|restore|rollback ...`; each returns the process exit status. */
int cli_save_main(int argc, char **argv);
int cli_restore_main(int argc, char **argv);
int cli_rollback_main(int argc, char **argv);
int cli_clone_main(int argc, char **argv);

#endif
