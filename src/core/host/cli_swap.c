/* SPDX-License-Identifier: MIT */
/*
 * `kvmem swap --vm NAME --to SIZE [--socket P]`: swap a VM of a running host
 * out to its host swap file until the VM's resident memory is at most SIZE.
 * A client of the control socket's "swap" verb, as `kvmem balloon` is of
 * "balloon"; CLI process only.
 */
#include "core/host/cli_swap.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "core/host/cli.h"
#include "core/host/control.h"
#include "core/size.h"

#define USAGE_HINT "see kvmem swap --help"

static int usage(const char *what, const char *arg)
{
	return cli_usage_error("swap", USAGE_HINT, what, arg);
}

static void help(void)
{
	printf("usage: kvmem swap --vm NAME --to SIZE [--socket PATH]\n"
	       "\n"
	       "Swap a VM of a running kvmem host out to the host's swap file (kvmem run --swap,\n"
	       "or \"swap\" in the host config) until it holds at most SIZE of host memory.\n"
	       "Pages it touches again are read back; zero and shared pages are left alone.\n"
	       "The host's swap-out worker does it; this waits up to 5 s for it, and a swap-out\n"
	       "still going then goes on in the background.\n"
	       "  -n, --vm NAME       the VM (as kvmem stat lists it)\n"
	       "  -t, --to SIZE       resident memory to swap down to (e.g. 64M)\n"
	       "  -s, --socket PATH   control socket (default %s)\n",
	       KVMEM_DEFAULT_SOCKET);
}

int cli_swap_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "vm", required_argument, NULL, 'n' },
		{ "to", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = KVMEM_DEFAULT_SOCKET, *vm = NULL;
	uint64_t to = 0;
	bool have_to = false;
	json_t *req, *reply = NULL;
	char b1[32], b2[32], err[160];
	int c, ret;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":s:n:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			path = optarg;
			break;
		case 'n':
			vm = optarg;
			break;
		case 't':
			/* At most 2^63 - 1: the verb takes a JSON integer, which holds no more. */
			if (size_text("--to", optarg, SIZE_MAX_BYTES, &to, err, sizeof(err)))
				return usage("%s", err);
			have_to = true;
			break;
		case 'h':
			help();
			return 0;
		default:
			return cli_bad_option("swap", USAGE_HINT, c, argv);
		}
	}
	if (optind < argc)
		return usage("%s: unexpected argument", argv[optind]);
	if (!vm)
		return usage("%s", "--vm is required");
	if (!have_to)
		return usage("%s", "--to SIZE is required");
	req = json_pack("{s:s, s:s, s:I}", "verb", "swap", "vm", vm, "to", (json_int_t)to);
	/* One line for every failure, the server's words escaped. */
	ret = cli_request("swap", path, req, CONTROL_CLIENT_TIMEOUT_MS, &reply);
	json_decref(req);
	if (ret)
		return ret;
	printf("%s: swapped out %s, resident %s%s\n", vm,
	       size_format((uint64_t)json_integer_value(json_object_get(reply, "swapped_bytes")),
			   b1, sizeof(b1)),
	       size_format((uint64_t)json_integer_value(json_object_get(reply, "resident_bytes")),
			   b2, sizeof(b2)),
	       json_is_true(json_object_get(reply, "running"))
		       ? " (still swapping out: kvmem stat shows it going down)"
	       : json_is_false(json_object_get(reply, "reached"))
		       ? " (above the size asked: nothing more could be swapped now)" : "");
	json_decref(reply);
	return 0;
}
