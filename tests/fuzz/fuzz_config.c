/* SPDX-License-Identifier: MIT */
/*
 * The host config (`kvmem host --config FILE`, core/host/config.c): the
 * input is the file, loaded by host_config_load from a memory file, then
 * checked as the host checks it before creating anything. A refusal must
 * name a problem, an accepted config must hold what config.c promises.
 * Accelerators are not resolved: that asks the machine (/dev/kvm), not the
 * file.
 */
#include <jansson.h>
#include <string.h>

#include "core/host/host.h"
#include "core/layout.h"
#include "fuzz.h"
#include "guest/abi.h"

static struct fz_file file;

void fz_init(void)
{
	fz_file_init(&file, "fuzz-config");
}

static void check_vm(const struct host_vm_config *vm)
{
	FZ_CHECK(vm->name && *vm->name && strlen(vm->name) <= 63);
	/* A VM boots either a kvmem guest ELF or a Linux kernel, never both or neither. */
	FZ_CHECK((vm->guest != NULL) != (vm->kernel != NULL));
	FZ_CHECK(vm->shares >= 1 && vm->shares <= 1000000);
	FZ_CHECK(vm->cpus >= 1 && vm->cpus <= ABI_MAX_CPUS);
	FZ_CHECK(!vm->append || strlen(vm->append) < ABI_MAX_CMDLINE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct host_config cfg;
	char err[512];
	int ret;

	fz_file_set(&file, data, size);
	memset(&cfg, 0, sizeof(cfg));
	/* Readable, as host_config_check wants of a guest; nothing ever runs it. */
	cfg.default_guest = "/dev/null";
	err[0] = '\0';
	ret = host_config_load(file.path, &cfg, err, sizeof(err));
	if (ret) {
		FZ_CHECK(err[0] != '\0');
	} else {
		for (unsigned int i = 0; i < cfg.nr_vms; i++)
			check_vm(&cfg.vms[i]);
		FZ_CHECK(!cfg.swap.path || (cfg.swap.bytes && cfg.swap.bytes % 4096 == 0));
		err[0] = '\0';
		if (host_config_check(&cfg, err, sizeof(err)))
			FZ_CHECK(err[0] != '\0');
	}
	host_config_free(&cfg);
	return 0;
}
