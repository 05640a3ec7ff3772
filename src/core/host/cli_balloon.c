/* SPDX-License-Identifier: MIT */
/*
 * `kvmem balloon --vm NAME (--target SIZE | --auto) [--socket P]`: set a VM's
 * balloon target by hand (the memory the guest keeps, as QEMU's balloon
 * command) or hand it back to the host's policy. A client of the control
 * socket's "balloon" verb; CLI process only.
 */
#include "core/host/cli_balloon.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "core/host/cli.h"
#include "core/host/control.h"
#include "core/size.h"

#define USAGE_HINT "see kvmem balloon --help"

static int usage(const char *what, const char *arg)
{
	return cli_usage_error("balloon", USAGE_HINT, what, arg);
}

static void help(void)
{
	printf("usage: kvmem balloon --vm NAME (--target SIZE | --auto) [--socket PATH]\n"
	       "\n"
	       "Set a VM's balloon target on a running kvmem host, through its control socket.\n"
	       "  -n, --vm NAME       the VM (as kvmem stat lists it)\n"
	       "  -t, --target SIZE   memory the guest keeps (e.g. 512M); the driver inflates\n"
	       "                      or deflates to it, and the policy leaves it alone\n"
	       "  -a, --auto          hand the balloon back to the host's policy\n"
	       "  -s, --socket PATH   control socket (default %s)\n",
	       KVMEM_DEFAULT_SOCKET);
}

int cli_balloon_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "vm", required_argument, NULL, 'n' },
		{ "target", required_argument, NULL, 't' },
		{ "auto", no_argument, NULL, 'a' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = KVMEM_DEFAULT_SOCKET, *vm = NULL;
	uint64_t target = 0;
	bool have_target = false, autom = false;
	json_t *req, *reply = NULL;
	char buf[32], err[160];
	int c, ret;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":s:n:t:ah", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			path = optarg;
			break;
		case 'n':
			vm = optarg;
			break;
		case 't':
			/* At most 2^63 - 1: the verb takes a JSON integer, which holds no more. */
			if (size_text("--target", optarg, SIZE_MAX_BYTES, &target, err, sizeof(err)))
				return usage("%s", err);
			have_target = true;
			break;
		case 'a':
			autom = true;
			break;
		case 'h':
			help();
			return 0;
		default:
			return cli_bad_option("balloon", USAGE_HINT, c, argv);
		}
	}
	if (optind < argc)
		return usage("%s: unexpected argument", argv[optind]);
	if (!vm)
		return usage("%s", "--vm is required");
	if (have_target == autom)
		return usage("%s", "give either --target SIZE or --auto");
	req = autom ? json_pack("{s:s, s:s, s:b}", "verb", "balloon", "vm", vm, "auto", 1)
		    : json_pack("{s:s, s:s, s:I}", "verb", "balloon", "vm", vm, "target",
				(json_int_t)target);
	/* One line for every failure, the server's words escaped. */
	ret = cli_request("balloon", path, req, CONTROL_CLIENT_TIMEOUT_MS, &reply);
	json_decref(req);
	if (ret)
		return ret;
	if (autom)
		printf("%s: balloon handed back to the policy\n", vm);
	else
		printf("%s: balloon target %s\n", vm,
		       size_format((uint64_t)json_integer_value(json_object_get(reply, "target_bytes")),
				   buf, sizeof(buf)));
	json_decref(reply);
	return 0;
}
