/* SPDX-License-Identifier: MIT */
/*
 * `kvmem migrate --vm NAME --to ADDR`: move a VM of a running host to
 * another host, live, and follow it to the end: a progress line while it
 * runs (stage, round, dirty pages, MiB sent, rate, expected downtime, as
 * `virsh domjobinfo` shows them), a summary at the end. A client of the
 * control socket's "migrate" verb; the progress comes from "stats".
 */
#include "core/host/cli_migrate.h"

#include <getopt.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/host/cli.h"
#include "core/host/control.h"

#define USAGE_HINT "see kvmem migrate --help"
#define POLL_MS 250

static int usage(const char *what, const char *arg)
{
	return cli_usage_error("migrate", USAGE_HINT, what, arg);
}

static void help(void)
{
	printf("usage: kvmem migrate --vm NAME --to ADDR [--downtime MS] [--bandwidth MIB_S]\n"
	       "                     [--max-rounds N] [--socket PATH]\n"
	       "\n"
	       "Move a running VM to another kvmem host (started with --incoming ADDR) while its\n"
	       "guest keeps running: pre-copy rounds, then a pause of about the downtime limit\n"
	       "for the last pages and the machine state. If anything fails before the end the\n"
	       "VM runs on where it was. Post-copy is not offered.\n"
	       "  -n, --vm NAME        the VM (as kvmem stat lists it)\n"
	       "  -t, --to ADDR        the destination: unix:PATH or tcp:HOST:PORT (the hosts\n"
	       "                       then share a secret: kvmem host --migration-secret)\n"
	       "  -d, --downtime MS    the longest pause allowed for the last pages (default 300)\n"
	       "  -b, --bandwidth N    MiB/s the migration may use (default: as fast as it goes)\n"
	       "  -r, --max-rounds N   pre-copy rounds at most (default 30)\n"
	       "  -s, --socket PATH    the source host's control socket (default %s)\n",
	       KVMEM_DEFAULT_SOCKET);
}

static bool of_kind(json_t *m, const char *kind)
{
	return !strcmp(json_string_value(json_object_get(m, "kind")) ?: "", kind);
}

/* This VM's job of that kind in a stats reply: the live VM's, else the last that left. */
static json_t *find_job(json_t *stats, const char *vm, const char *kind)
{
	json_t *v, *found = NULL;
	size_t i;

	json_array_foreach(json_object_get(stats, "vms"), i, v)
		if (!strcmp(json_string_value(json_object_get(v, "name")) ?: "", vm) &&
		    json_is_object(json_object_get(v, "migration")) &&
		    of_kind(json_object_get(v, "migration"), kind))
			found = json_object_get(v, "migration");
	if (found)
		return found;
	json_array_foreach(json_object_get(stats, "migrated"), i, v)
		if (!strcmp(json_string_value(json_object_get(v, "vm")) ?: "", vm) && of_kind(v, kind))
			found = v;
	return found;
}

static double num(json_t *o, const char *key)
{
	return json_number_value(json_object_get(o, key));
}

static void progress_line(json_t *m, bool tty)
{
	char esc[64];

	printf("%s%-13s round %-3.0f dirty %8.0f pages  sent %8.1f MiB  %7.1f MiB/s  "
	       "expected downtime %4.0f ms%s",
	       tty ? "\r" : "",
	       cli_escape(json_string_value(json_object_get(m, "stage")) ?: "?", esc, sizeof(esc)),
	       num(m, "round"), num(m, "dirty_pages"), num(m, "bytes") / 1048576.0,
	       num(m, "rate_mib_s"), num(m, "expected_downtime_ms"), tty ? "" : "\n");
	fflush(stdout);
}

static void summary(const char *vm, json_t *m)
{
	json_t *p = json_object_get(m, "pages");
	bool restore = of_kind(m, "restore");
	char esc[256];

	printf("%s: %s in %.0f ms, downtime %.0f ms, %.1f MiB %s in %.0f rounds "
	       "(pages: %.0f data, %.0f zero, %.0f ballooned, %.0f shared + %.0f references)\n",
	       vm, cli_escape(json_string_value(json_object_get(m, "stage")) ?: "?", esc, 32),
	       num(m, "total_ms"), num(m, "downtime_ms"), num(m, "bytes") / 1048576.0,
	       restore ? "read" : of_kind(m, "migration") ? "sent" : "written", num(m, "round"),
	       num(p, "data"), num(p, "zero"), num(p, "ballooned"), num(p, "shared"),
	       num(p, "shared_refs"));
	if (json_is_string(json_object_get(m, "error")))
		printf("%s: the %s failed: %s; %s\n", vm,
		       cli_escape(json_string_value(json_object_get(m, "kind")) ?: "?", esc, 32),
		       cli_escape(json_string_value(json_object_get(m, "error")), esc + 32,
				  sizeof(esc) - 32),
		       restore ? "nothing of it was kept" : "the VM runs on here");
}

int cli_follow_job(const char *cmd, const char *path, const char *vm, const char *kind)
{
	bool tty = isatty(STDOUT_FILENO);
	char last[32] = "";
	double last_round = -1;
	json_t *reply;
	int ret;

	for (;;) {
		struct timespec d = { 0, POLL_MS * 1000000L };
		const char *stage;
		json_t *m;

		ret = cli_poll_stats(cmd, path, &reply);
		if (ret)
			return ret;
		m = find_job(reply, vm, kind);
		stage = m ? json_string_value(json_object_get(m, "stage")) : NULL;
		if (!stage) {
			json_decref(reply);
			fprintf(stderr, "kvmem %s: %s: the host no longer shows the %s\n", cmd, vm, kind);
			return 1;
		}
		if (!strcmp(stage, "done") || !strcmp(stage, "failed") ||
		    !strcmp(stage, "cancelled")) {
			if (tty)
				printf("\n");
			summary(vm, m);
			ret = strcmp(stage, "done") ? 1 : 0;
			json_decref(reply);
			return ret;
		}
		/* Without a terminal, a line per change of stage or round, not per poll. */
		if (tty || strcmp(last, stage) || num(m, "round") != last_round) {
			progress_line(m, tty);
			snprintf(last, sizeof(last), "%s", stage);
			last_round = num(m, "round");
		}
		json_decref(reply);
		nanosleep(&d, NULL);
	}
}

int cli_migrate_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "vm", required_argument, NULL, 'n' },
		{ "to", required_argument, NULL, 't' },
		{ "downtime", required_argument, NULL, 'd' },
		{ "bandwidth", required_argument, NULL, 'b' },
		{ "max-rounds", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = KVMEM_DEFAULT_SOCKET, *vm = NULL, *to = NULL;
	long downtime = 0, bw = 0, rounds = 0;
	json_t *req, *reply = NULL;
	int c, ret;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":s:n:t:d:b:r:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			path = optarg;
			break;
		case 'n':
			vm = optarg;
			break;
		case 't':
			to = optarg;
			break;
		case 'd':
			if ((downtime = cli_num_arg(optarg, 60000)) < 1)
				return usage("--downtime %s: milliseconds from 1 to 60000", optarg);
			break;
		case 'b':
			if ((bw = cli_num_arg(optarg, 1 << 20)) < 1)
				return usage("--bandwidth %s: MiB/s from 1 to 1048576", optarg);
			break;
		case 'r':
			if ((rounds = cli_num_arg(optarg, 1000)) < 1)
				return usage("--max-rounds %s: from 1 to 1000", optarg);
			break;
		case 'h':
			help();
			return 0;
		default:
			return cli_bad_option("migrate", USAGE_HINT, c, argv);
		}
	}
	if (optind < argc)
		return usage("%s: unexpected argument", argv[optind]);
	if (!vm)
		return usage("%s", "--vm is required");
	if (!to)
		return usage("%s", "--to ADDR is required");
	req = json_pack("{s:s, s:s, s:s}", "verb", "migrate", "vm", vm, "to", to);
	if (downtime)
		json_object_set_new(req, "downtime_ms", json_integer(downtime));
	if (bw)
		json_object_set_new(req, "bandwidth_mib_s", json_integer(bw));
	if (rounds)
		json_object_set_new(req, "max_rounds", json_integer(rounds));
	ret = cli_request("migrate", path, req, CONTROL_CLIENT_TIMEOUT_MS, &reply);
	json_decref(req);
	if (ret)
		return ret;
	json_decref(reply);
	return cli_follow_job("migrate", path, vm, "migration");
}
