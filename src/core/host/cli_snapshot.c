/* SPDX-License-Identifier: MIT */
/*
 * `kvmem save`, `kvmem restore`, `kvmem rollback` and `kvmem clone`: a VM
 * of a running host into a snapshot file and back, clients of the control
 * socket's verbs of those names; save and restore follow their job through
 * the stats as `kvmem migrate` does.
 */
#include "core/host/cli_snapshot.h"

#include <getopt.h>
#include <limits.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/host/cli.h"
#include "core/host/cli_migrate.h"
#include "core/host/control.h"

/*
 * path made absolute for the host, whose working directory is not ours: the
 * directory resolved (it must exist), the name kept (the file may not yet).
 */
static int absolute(const char *path, char *out, size_t len)
{
	char dir[PATH_MAX], base[PATH_MAX], real[PATH_MAX];

	if (strlen(path) >= sizeof(dir))
		return -1;
	snprintf(dir, sizeof(dir), "%s", path);
	snprintf(base, sizeof(base), "%s", path);
	if (!realpath(dirname(dir), real))
		return -1;
	return snprintf(out, len, "%s/%s", strcmp(real, "/") ? real : "", basename(base)) <
			       (int)len ? 0 : -1;
}

static void save_help(void)
{
	printf("usage: kvmem save --vm NAME --to FILE [--stop] [--downtime MS] [--socket PATH]\n"
	       "\n"
	       "Write a running VM's complete state (memory, vCPUs, devices, its description)\n"
	       "to a snapshot file, which kvmem restore or kvmem run --restore starts again.\n"
	       "Without --stop the VM runs on (a snapshot): its pages are copied while it runs,\n"
	       "then it pauses about the downtime limit for the last ones. With --stop it is\n"
	       "saved and gone from the host once the file is safely on disk (freeze). The file\n"
	       "appears whole or not at all; if anything fails the VM runs on.\n"
	       "  -n, --vm NAME        the VM (as kvmem stat lists it)\n"
	       "  -t, --to FILE        the snapshot file (replaced if it exists)\n"
	       "  -S, --stop           stop the VM once saved\n"
	       "  -d, --downtime MS    the longest pause allowed for the last pages (default 300)\n"
	       "  -s, --socket PATH    the host's control socket (default %s)\n",
	       KVMEM_DEFAULT_SOCKET);
}

int cli_save_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "vm", required_argument, NULL, 'n' },
		{ "to", required_argument, NULL, 't' },
		{ "stop", no_argument, NULL, 'S' },
		{ "downtime", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = KVMEM_DEFAULT_SOCKET, *vm = NULL, *to = NULL;
	char file[PATH_MAX];
	bool stop = false;
	long downtime = 0;
	json_t *req, *reply;
	int c, ret;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":s:n:t:Sd:h", opts, NULL)) != -1) {
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
		case 'S':
			stop = true;
			break;
		case 'd':
			if ((downtime = cli_num_arg(optarg, 60000)) < 1)
				return cli_usage_error("save", "see kvmem save --help",
						       "--downtime %s: milliseconds from 1 to 60000",
						       optarg);
			break;
		case 'h':
			save_help();
			return 0;
		default:
			return cli_bad_option("save", "see kvmem save --help", c, argv);
		}
	}
	if (optind < argc)
		return cli_usage_error("save", "see kvmem save --help", "%s: unexpected argument",
				       argv[optind]);
	if (!vm || !to)
		return cli_usage_error("save", "see kvmem save --help", "%s",
				       "--vm NAME and --to FILE are required");
	if (absolute(to, file, sizeof(file)))
		return cli_usage_error("save", "see kvmem save --help",
				       "--to %s: its directory does not exist", to);
	req = json_pack("{s:s, s:s, s:s, s:b}", "verb", "save", "vm", vm, "to", file, "stop",
			stop);
	if (downtime)
		json_object_set_new(req, "downtime_ms", json_integer(downtime));
	ret = cli_request("save", path, req, CONTROL_CLIENT_TIMEOUT_MS, &reply);
	json_decref(req);
	if (ret)
		return ret;
	json_decref(reply);
	return cli_follow_job("save", path, vm, stop ? "save" : "snapshot");
}

static void restore_help(void)
{
	printf("usage: kvmem restore FILE [--name NAME] [--eager] [--socket PATH]\n"
	       "\n"
	       "Start the VM a snapshot file holds (kvmem save) in a running host, from where it\n"
	       "was saved. It runs at once: its memory comes from the file as the guest touches\n"
	       "it, and in the background until all of it is in (kvmem stat shows how far).\n"
	       "A file that is not whole, of another format version or corrupt is\n"
	       "refused, and nothing of it is left running. A VM of the thread accelerator\n"
	       "resumes only at its original place in the host's address space: not in the\n"
	       "host where the VM it was saved from still runs.\n"
	       "  -n, --name NAME      the VM's name here (default: the one it was saved with)\n"
	       "  -e, --eager          load all of its memory before it runs\n"
	       "  -s, --socket PATH    the host's control socket (default %s)\n",
	       KVMEM_DEFAULT_SOCKET);
}

int cli_restore_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "name", required_argument, NULL, 'n' },
		{ "eager", no_argument, NULL, 'e' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = KVMEM_DEFAULT_SOCKET, *name = NULL;
	char file[PATH_MAX], vm[128];
	bool eager = false;
	json_t *req, *reply;
	int c, ret;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":s:n:eh", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			path = optarg;
			break;
		case 'n':
			name = optarg;
			break;
		case 'e':
			eager = true;
			break;
		case 'h':
			restore_help();
			return 0;
		default:
			return cli_bad_option("restore", "see kvmem restore --help", c, argv);
		}
	}
	if (optind != argc - 1)
		return cli_usage_error("restore", "see kvmem restore --help", "%s",
				       "one snapshot FILE is required");
	if (!realpath(argv[optind], file))
		return cli_usage_error("restore", "see kvmem restore --help",
				       "%s: no such file", argv[optind]);
	req = json_pack("{s:s, s:s, s:b}", "verb", "restore", "file", file, "lazy", !eager);
	if (name)
		json_object_set_new(req, "name", json_string(name));
	ret = cli_request("restore", path, req, CONTROL_CLIENT_TIMEOUT_MS, &reply);
	json_decref(req);
	if (ret)
		return ret;
	snprintf(vm, sizeof(vm), "%s", json_string_value(json_object_get(reply, "vm")) ?: "");
	json_decref(reply);
	return cli_follow_job("restore", path, vm, "restore");
}

static void rollback_help(void)
{
	printf("usage: kvmem rollback --vm NAME --to FILE [--socket PATH]\n"
	       "\n"
	       "Put a running VM back to a snapshot of it (kvmem save): its memory, vCPUs and\n"
	       "devices as they were, reloading only the pages whose content differs from the\n"
	       "file's (each page's hash is in the file). It pauses for that long, then runs on\n"
	       "from the snapshot. A file of another VM is refused, and nothing changes.\n"
	       "  -n, --vm NAME        the VM (as kvmem stat lists it)\n"
	       "  -t, --to FILE        the snapshot file\n"
	       "  -s, --socket PATH    the host's control socket (default %s)\n",
	       KVMEM_DEFAULT_SOCKET);
}

int cli_rollback_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "vm", required_argument, NULL, 'n' },
		{ "to", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = KVMEM_DEFAULT_SOCKET, *vm = NULL, *to = NULL;
	char file[PATH_MAX], esc[128];
	json_t *req, *reply, *rb;
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
			to = optarg;
			break;
		case 'h':
			rollback_help();
			return 0;
		default:
			return cli_bad_option("rollback", "see kvmem rollback --help", c, argv);
		}
	}
	if (optind < argc)
		return cli_usage_error("rollback", "see kvmem rollback --help",
				       "%s: unexpected argument", argv[optind]);
	if (!vm || !to)
		return cli_usage_error("rollback", "see kvmem rollback --help", "%s",
				       "--vm NAME and --to FILE are required");
	if (!realpath(to, file))
		return cli_usage_error("rollback", "see kvmem rollback --help", "--to %s: no such file",
				       to);
	req = json_pack("{s:s, s:s, s:s}", "verb", "rollback", "vm", vm, "file", file);
	ret = cli_request("rollback", path, req, CONTROL_CLIENT_TIMEOUT_MS, &reply);
	json_decref(req);
	if (ret)
		return ret;
	rb = json_object_get(reply, "rollback");
	printf("%s: rolled back in %lld ms: %lld of %lld pages reloaded, %lld zeroed, %lld to the "
	       "balloon, %lld from it, %lld the same\n", cli_escape(vm, esc, sizeof(esc)),
	       (long long)json_integer_value(json_object_get(rb, "ms")),
	       (long long)json_integer_value(json_object_get(rb, "reloaded")),
	       (long long)json_integer_value(json_object_get(rb, "pages")),
	       (long long)json_integer_value(json_object_get(rb, "zeroed")),
	       (long long)json_integer_value(json_object_get(rb, "ballooned")),
	       (long long)json_integer_value(json_object_get(rb, "unballooned")),
	       (long long)json_integer_value(json_object_get(rb, "same")));
	json_decref(reply);
	return 0;
}

static void clone_help(void)
{
	printf("usage: kvmem clone FILE --count N [--prefix NAME] [--socket PATH]\n"
	       "\n"
	       "Start N VMs from one snapshot (kvmem save), named PREFIX-1 to PREFIX-N. Their\n"
	       "memory is the snapshot's, shared copy-on-write from birth through kvmem's page\n"
	       "sharing (the host runs with dedup on): N clones cost one copy until they write.\n"
	       "Each gets an identity of its own (the kvmem guest's workload refills its pages\n"
	       "under an id of its own). For the kvm accelerator: a thread guest resumes only at\n"
	       "its original place in the address space.\n"
	       "  -c, --count N        clones, 1 to 16\n"
	       "  -p, --prefix NAME    their names' prefix (default: the snapshot VM's name)\n"
	       "  -s, --socket PATH    the host's control socket (default %s)\n",
	       KVMEM_DEFAULT_SOCKET);
}

/* The clone request id in the stats of the host at path, or NULL (*stats holds it). */
static json_t *find_clones(const char *path, json_int_t id, json_t **stats)
{
	json_t *c;
	size_t i;

	if (cli_poll_stats("clone", path, stats))
		return NULL;
	json_array_foreach(json_object_get(*stats, "clones"), i, c)
		if (json_integer_value(json_object_get(c, "id")) == id)
			return c;
	return NULL;
}

/*
 * Follow clone request id until it ends: a line per clone started, then
 * the summary. The exit status: 0 when every clone runs.
 */
static int follow_clones(const char *path, json_int_t id)
{
	json_int_t shown = -1;
	char stage[16] = "";

	for (;;) {
		json_t *stats, *c = find_clones(path, id, &stats);
		const char *st = c ? json_string_value(json_object_get(c, "stage")) : NULL;
		json_int_t started = json_integer_value(json_object_get(c, "started"));
		char esc[512];

		if (!st) {
			fprintf(stderr, "kvmem clone: the host no longer shows the clone request\n");
			json_decref(stats);
			return 1;
		}
		if (started != shown || strcmp(stage, st)) {
			printf("kvmem clone: %s, %lld of %lld running\n", st, (long long)started,
			       (long long)json_integer_value(json_object_get(c, "count")));
			fflush(stdout);
			shown = started;
			snprintf(stage, sizeof(stage), "%s", st);
		}
		if (!strcmp(st, "done") || !strcmp(st, "failed")) {
			int ret = strcmp(st, "done") ? 1 : 0;

			if (ret)
				fprintf(stderr, "kvmem clone: %s\n",
					cli_escape(json_string_value(json_object_get(c, "error")) ?: "?",
						   esc, sizeof(esc)));
			else
				printf("%lld clones in %lld ms\n", (long long)started,
				       (long long)json_integer_value(json_object_get(c, "ms")));
			json_decref(stats);
			return ret;
		}
		json_decref(stats);
		nanosleep(&(struct timespec){ .tv_nsec = 200000000 }, NULL);
	}
}

int cli_clone_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "count", required_argument, NULL, 'c' },
		{ "prefix", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = KVMEM_DEFAULT_SOCKET, *prefix = NULL;
	char file[PATH_MAX], esc[128];
	json_t *req, *reply, *job, *v;
	long count = 0;
	size_t i;
	int c, ret;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":s:c:p:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			path = optarg;
			break;
		case 'c':
			if ((count = cli_num_arg(optarg, 16)) < 1)
				return cli_usage_error("clone", "see kvmem clone --help",
						       "--count %s: from 1 to 16", optarg);
			break;
		case 'p':
			prefix = optarg;
			break;
		case 'h':
			clone_help();
			return 0;
		default:
			return cli_bad_option("clone", "see kvmem clone --help", c, argv);
		}
	}
	if (optind != argc - 1 || !count)
		return cli_usage_error("clone", "see kvmem clone --help", "%s",
				       "one snapshot FILE and --count N are required");
	if (!realpath(argv[optind], file))
		return cli_usage_error("clone", "see kvmem clone --help", "%s: no such file",
				       argv[optind]);
	req = json_pack("{s:s, s:s, s:I}", "verb", "clone", "file", file, "count",
			(json_int_t)count);
	if (prefix)
		json_object_set_new(req, "prefix", json_string(prefix));
	ret = cli_request("clone", path, req, CONTROL_CLIENT_TIMEOUT_MS, &reply);
	json_decref(req);
	if (ret)
		return ret;
	job = json_object_get(reply, "clone");
	ret = json_is_integer(json_object_get(job, "id"))
	      ? follow_clones(path, json_integer_value(json_object_get(job, "id"))) : 1;
	if (ret == 0)
		json_array_foreach(json_object_get(job, "names"), i, v)
			printf("%s\n", cli_escape(json_string_value(v) ?: "?", esc, sizeof(esc)));
	json_decref(reply);
	return ret;
}
