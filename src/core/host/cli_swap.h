/* SPDX-License-Identifier: MIT */
#ifndef KVMEM_CORE_CLI_SWAP_H
#define KVMEM_CORE_CLI_SWAP_H

/* `kvmem swap ...`; returns the process exit status. */
int cli_swap_main(int argc, char **argv);

#endif
