/* SPDX-License-Identifier: MIT */
#ifndef KVMEM_CORE_CLI_BALLOON_H
#define KVMEM_CORE_CLI_BALLOON_H

/* `kvmem balloon ...`; returns the process exit status. */
int cli_balloon_main(int argc, char **argv);

#endif
