/* SPDX-License-Identifier: MIT */
/*
 * `kvmem stat`: asks the control socket for "stats" and prints it, like
 * esxtop's memory view or `virsh dommemstat`: a host summary, one row per VM
 * and a TOTAL row, sizes with binary units.
 *
 * The columns come from the JSON, not from a fixed list, so the mechanisms
 * that land later only add fields to the stats reply:
 *   - the fixed columns (NAME STATE ACCEL MEM RESIDENT ENTITLED);
 *   - one column per key of a VM's "pages" object (known states first, in
 *     the order of the page-state map, then any new state), as bytes;
 *   - one column per unknown top-level VM key ending in "_bytes";
 *   - one column per size field ("_bytes") of any other object-valued VM
 *     key, e.g. "balloon": {"target_bytes": N} gives BALLOON_TARGET; counters,
 *     reasons and alternative views of the same figure are left to --json.
 * A column appears only when some VM has the field; a VM without it shows
 * "-". Host-level fields beyond the known ones print as extra summary lines.
 * Runs in the CLI process only (no VMM threads): printing to stdout is its job.
 * Every string of the reply, keys included, is the server's and goes
 * through cli_escape before it reaches the terminal.
 */
#define LOG_TAG "stat"
#include "core/host/statcli.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/host/cli.h"
#include "core/host/control.h"
#include "core/size.h"

#define PAGE_BYTES 4096ULL
#define MAX_COLS 64
#define CELL 64
#define KEY_TEXT 128		/* a server's key or name, escaped, on a line of its own */

enum col_kind {
	COL_TEXT,	/* a string, left-aligned */
	COL_BYTES,	/* an integer of bytes */
	COL_PAGES,	/* an integer of 4 KiB pages, printed as bytes */
	COL_NUM,	/* any other number */
};

struct col {
	char head[48];
	enum col_kind kind;
	const char *obj;	/* NULL: a top-level VM key; else the object holding key */
	const char *key;	/* borrowed from the reply */
	bool total;		/* summed in the TOTAL row */
};

struct table {
	struct col cols[MAX_COLS];
	unsigned int nr_cols;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvmem stat [--socket PATH] [--json | --format FMT] [--watch SECS]\n"
		"\n"
		"Memory statistics of a running kvmem host, from its control socket.\n"
		"  -s, --socket PATH   control socket (default %s)\n"
		"  -j, --json          print the stats as JSON (the stable schema in README.md)\n"
		"  -f, --format FMT    table (default), json, or openmetrics (the Prometheus\n"
		"                      text exposition of the \"metrics\" verb)\n"
		"  -w, --watch SECS    refresh every SECS seconds until interrupted\n",
		KVMEM_DEFAULT_SOCKET);
}

#define USAGE_HINT "see kvmem stat --help"

static int usage_error(const char *fmt, const char *arg)
{
	return cli_usage_error("stat", USAGE_HINT, fmt, arg);
}

enum format { FMT_TABLE, FMT_JSON, FMT_OPENMETRICS };

/* Ask for `verb`: 0 and the reply's payload, or 1 after one line on stderr. */
static int fetch(const char *path, const char *verb, json_t **out)
{
	json_t *req = json_pack("{s:s}", "verb", verb);
	json_t *reply = NULL;
	int ret;

	if (!req) {
		fprintf(stderr, "kvmem stat: out of memory\n");
		return 1;
	}
	ret = cli_request("stat", path, req, CONTROL_CLIENT_TIMEOUT_MS, &reply);
	json_decref(req);
	if (ret)
		return ret;
	if (strcmp(verb, "stats") ? !json_is_string(json_object_get(reply, "text"))
				  : !json_is_object(json_object_get(reply, "host")) ||
				    !json_is_array(json_object_get(reply, "vms"))) {
		fprintf(stderr, "kvmem stat: %s: bad reply (%s)\n", path,
			strcmp(verb, "stats") ? "no \"text\"" : "no \"host\" object or \"vms\" array");
		json_decref(reply);
		return 1;
	}
	json_object_del(reply, "ok");
	json_object_del(reply, "id");
	*out = reply;
	return 0;
}

/* ---- cells ----------------------------------------------------------------------------- */

static uint64_t int_of(json_t *v)
{
	if (json_is_integer(v) && json_integer_value(v) > 0)
		return (uint64_t)json_integer_value(v);
	if (json_is_real(v) && json_real_value(v) > 0)
		return (uint64_t)json_real_value(v);
	return 0;
}

static const char *fmt_bytes(uint64_t bytes, char *buf, size_t len)
{
	return size_format(bytes, buf, len);
}

static json_t *col_value(const struct col *c, json_t *vm)
{
	json_t *holder = c->obj ? json_object_get(vm, c->obj) : vm;

	return json_is_object(holder) ? json_object_get(holder, c->key) : NULL;
}

static void format_cell(const struct col *c, json_t *v, char *buf)
{
	if (!v || json_is_null(v)) {
		snprintf(buf, CELL, "-");
		return;
	}
	switch (c->kind) {
	case COL_TEXT:
		if (json_is_string(v))
			cli_escape(json_string_value(v), buf, CELL);
		else if (json_is_boolean(v))
			snprintf(buf, CELL, "%s", json_is_true(v) ? "yes" : "no");
		else
			snprintf(buf, CELL, "?");
		break;
	case COL_BYTES:
		fmt_bytes(int_of(v), buf, CELL);
		break;
	case COL_PAGES:
		fmt_bytes(int_of(v) * PAGE_BYTES, buf, CELL);
		break;
	case COL_NUM:
		if (json_is_integer(v))
			snprintf(buf, CELL, "%lld", (long long)json_integer_value(v));
		else if (json_is_real(v))
			snprintf(buf, CELL, "%.2f", json_real_value(v));
		else
			snprintf(buf, CELL, "?");
		break;
	}
}

/* ---- columns --------------------------------------------------------------------------- */

static bool has_col(const struct table *t, const char *obj, const char *key)
{
	for (unsigned int i = 0; i < t->nr_cols; i++) {
		const struct col *c = &t->cols[i];

		if (!strcmp(c->key, key) && ((!c->obj && !obj) || (c->obj && obj &&
								      !strcmp(c->obj, obj))))
			return true;
	}
	return false;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);

	return a >= b && !strcmp(s + a - b, suffix);
}

/* Header from a JSON key: upper case, without a "_bytes" suffix, "obj_" in front. */
static void make_head(char *head, size_t len, const char *obj, const char *key)
{
	size_t n = 0;

	if (obj)
		for (const char *p = obj; *p && n + 2 < len; p++)
			head[n++] = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
	if (obj && n + 1 < len)
		head[n++] = '_';
	for (const char *p = key; *p && n + 1 < len; p++) {
		if (!strcmp(p, "_bytes"))
			break;
		head[n++] = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
	}
	head[n] = '\0';
}

static void add_col(struct table *t, const char *head, enum col_kind kind, const char *obj,
		    const char *key, bool total)
{
	struct col *c;

	if (t->nr_cols == MAX_COLS || has_col(t, obj, key))
		return;
	c = &t->cols[t->nr_cols++];
	if (head) {
		snprintf(c->head, sizeof(c->head), "%s", head);
	} else { /* a page state is named alone; other objects prefix their fields */
		char raw[sizeof(c->head)];

		/* The keys are the server's: escaped like its values. */
		make_head(raw, sizeof(raw), obj && strcmp(obj, "pages") ? obj : NULL, key);
		cli_escape(raw, c->head, sizeof(c->head));
	}
	c->kind = kind;
	c->obj = obj;
	c->key = key;
	c->total = total;
}

/* Top-level VM keys the fixed columns or nobody shows. */
static bool is_known_vm_key(const char *key)
{
	static const char *const known[] = { "name", "state", "accel", "ram_base", "mem_bytes",
					     "min_bytes", "resident_bytes", "shares",
					     "entitlement_bytes", "active_fraction", "pages",
					     "last_action" };

	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (!strcmp(key, known[i]))
			return true;
	return false;
}

static void build_columns(struct table *t, json_t *vms)
{
	/* Page states in the page-state map's order, with the table's short names. */
	static const struct {
		const char *key, *head;
	} states[] = {
		{ "anon", "ANON" },	  { "zero", "ZERO" },	      { "shared", "SHARED" },
		{ "ballooned", "BALLOON" }, { "reported", "REPORTED" }, { "swapped", "SWAP" },
	};
	size_t i;
	json_t *vm;

	add_col(t, "NAME", COL_TEXT, NULL, "name", false);
	add_col(t, "STATE", COL_TEXT, NULL, "state", false);
	add_col(t, "ACCEL", COL_TEXT, NULL, "accel", false);
	add_col(t, "MEM", COL_BYTES, NULL, "mem_bytes", true);
	add_col(t, "RESIDENT", COL_BYTES, NULL, "resident_bytes", true);
	add_col(t, "ENTITLED", COL_BYTES, NULL, "entitlement_bytes", true);
	for (size_t s = 0; s < sizeof(states) / sizeof(states[0]); s++)
		json_array_foreach(vms, i, vm)
			if (json_object_get(json_object_get(vm, "pages"), states[s].key)) {
				add_col(t, states[s].head, COL_PAGES, "pages", states[s].key, true);
				break;
			}
	json_array_foreach(vms, i, vm) {
		json_t *pages = json_object_get(vm, "pages"), *v;
		const char *key;

		json_object_foreach(pages, key, v)
			if (json_is_number(v))
				add_col(t, NULL, COL_PAGES, "pages", key, true);
	}
	json_array_foreach(vms, i, vm) {
		const char *key;
		json_t *v;

		json_object_foreach(vm, key, v) {
			const char *sub;
			json_t *sv;

			if (is_known_vm_key(key))
				continue;
			if (json_is_integer(v) && ends_with(key, "_bytes"))
				add_col(t, NULL, COL_BYTES, NULL, key, true);
			if (!json_is_object(v))
				continue;
			/*
			 * A mechanism's object carries counters and reasons that only
			 * --json can show well; the table takes its sizes, minus
			 * fields that repeat the object's name (another view of the
			 * same figure) and cumulative counters. swap.swapped_bytes
			 * is the SWAP column of the page states again.
			 */
			json_object_foreach(v, sub, sv) {
				size_t kl = strlen(key);

				if (!json_is_integer(sv) || !ends_with(sub, "_bytes") ||
				    (!strncmp(sub, key, kl) && sub[kl] == '_') ||
				    !strcmp(sub, "ram_bytes") || !strcmp(sub, "reported_bytes") ||
				    !strcmp(sub, "policy_target_bytes") ||
				    (!strcmp(key, "swap") && !strcmp(sub, "swapped_bytes") &&
				     has_col(t, "pages", "swapped")))
					continue;
				add_col(t, NULL, COL_BYTES, key, sub, true);
			}
		}
	}
}

/* ---- printing -------------------------------------------------------------------------- */

/* One member of a host object: "name value"; a nested object "name {k v ...}". */
static void print_member(const char *key, json_t *v, FILE *f, int depth)
{
	struct col c = { .kind = COL_NUM, .key = key };
	char k[KEY_TEXT], b[CELL];
	const char *sub;
	json_t *sv;

	fprintf(f, "%s ", cli_escape(key, k, sizeof(k)));
	if (json_is_object(v) && depth < 2) {
		bool first = true;

		fprintf(f, "{");
		json_object_foreach(v, sub, sv) {
			if (!first)
				fprintf(f, " ");
			first = false;
			print_member(sub, sv, f, depth + 1);
		}
		fprintf(f, "}");
		return;
	}
	if (json_is_integer(v) && ends_with(key, "_bytes"))
		c.kind = COL_BYTES;
	else if (!json_is_number(v))
		c.kind = COL_TEXT;
	format_cell(&c, v, b);
	fprintf(f, "%s", b);
}

/*
 * Where guest memory is: what is resident and of what, then each source of
 * saving that saves something, largest first (their sum is configured less
 * resident).
 */
static void print_saved_by(json_t *host, FILE *f)
{
	json_t *by = json_object_get(host, "saved_by"), *res = json_object_get(host, "resident_by");
	const char *key, *done[32];
	char b1[CELL], b2[CELL], b3[CELL], k[KEY_TEXT];
	size_t nr_done = 0;
	json_t *v;

	if (json_is_object(res))
		fprintf(f, "      resident %s: private %s  shared %s (%lld frames)  compressed %s\n",
			fmt_bytes(int_of(json_object_get(host, "resident_bytes")), b1, sizeof(b1)),
			fmt_bytes(int_of(json_object_get(res, "private")), b2, sizeof(b2)),
			fmt_bytes(int_of(json_object_get(res, "shared")), b3, sizeof(b3)),
			(long long)int_of(json_object_get(host, "shared_frames")),
			fmt_bytes(int_of(json_object_get(res, "compressed")), k, sizeof(k)));
	if (!json_is_object(by))
		return;
	fprintf(f, "      saved by:");
	for (;;) {
		const char *best = NULL;
		uint64_t most = 0;

		json_object_foreach(by, key, v) {
			bool seen = false;

			for (size_t i = 0; i < nr_done; i++)
				seen |= done[i] == key;
			if (!seen && int_of(v) > most) {
				most = int_of(v);
				best = key;
			}
		}
		if (!best || nr_done == sizeof(done) / sizeof(done[0]))
			break;
		done[nr_done++] = best;
		fprintf(f, "  %s %s", cli_escape(best, k, sizeof(k)), fmt_bytes(most, b1, sizeof(b1)));
	}
	fprintf(f, "%s\n", nr_done ? "" : "  nothing");
}

static void print_host(json_t *host, FILE *f)
{
	static const char *const known[] = { "budget_bytes", "used_bytes", "saved_bytes",
					     "configured_bytes", "used_source", "over_budget",
					     "policy_passes", "reclaimed_bytes", "resident_bytes",
					     "resident_by", "saved_by", "shared_frames" };
	uint64_t budget = int_of(json_object_get(host, "budget_bytes"));
	uint64_t configured = int_of(json_object_get(host, "configured_bytes"));
	json_t *src = json_object_get(host, "used_source");
	json_t *reclaimed = json_object_get(host, "reclaimed_bytes");
	char b1[CELL], b2[CELL], b3[CELL], b4[CELL], k[KEY_TEXT];
	const char *key;
	json_t *v;

	fprintf(f, "HOST  budget %s  used %s%s%s%s  saved %s  configured %s",
		fmt_bytes(budget, b1, sizeof(b1)),
		fmt_bytes(int_of(json_object_get(host, "used_bytes")), b2, sizeof(b2)),
		json_is_string(src) ? " (" : "",
		json_is_string(src) ? cli_escape(json_string_value(src), k, sizeof(k)) : "",
		json_is_string(src) ? ")" : "",
		fmt_bytes(int_of(json_object_get(host, "saved_bytes")), b3, sizeof(b3)),
		fmt_bytes(configured, b4, sizeof(b4)));
	if (budget)
		fprintf(f, "  overcommit %.2fx", (double)configured / (double)budget);
	if (json_is_boolean(json_object_get(host, "over_budget")))
		fprintf(f, "  over budget: %s",
			json_is_true(json_object_get(host, "over_budget")) ? "YES" : "no");
	fprintf(f, "\n");
	print_saved_by(host, f);
	if (json_is_object(reclaimed) && json_object_size(reclaimed)) {
		fprintf(f, "      reclaimed:");
		json_object_foreach(reclaimed, key, v)
			fprintf(f, "  %s %s", cli_escape(key, k, sizeof(k)),
				fmt_bytes(int_of(v), b1, sizeof(b1)));
		if (json_is_integer(json_object_get(host, "policy_passes")))
			fprintf(f, "  (policy passes %lld)",
				(long long)json_integer_value(json_object_get(host,
									      "policy_passes")));
		fprintf(f, "\n");
	}
	/* Whatever later modules add to the host object: one line each. */
	json_object_foreach(host, key, v) {
		bool skip = false;
		const char *sub;
		json_t *sv;

		for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
			skip |= !strcmp(key, known[i]);
		/* A mechanism the host does not run (swap: null): nothing to show. */
		if (skip || json_is_null(v))
			continue;
		if (json_is_object(v)) {
			fprintf(f, "      %s:", cli_escape(key, k, sizeof(k)));
			json_object_foreach(v, sub, sv) {
				fprintf(f, "  ");
				print_member(sub, sv, f, 1);
			}
			fprintf(f, "\n");
		} else {
			struct col c = { .kind = json_is_number(v) ? COL_NUM : COL_TEXT, .key = key };

			if (json_is_integer(v) && ends_with(key, "_bytes"))
				c.kind = COL_BYTES;
			format_cell(&c, v, b1);
			fprintf(f, "      %s %s\n", cli_escape(key, k, sizeof(k)), b1);
		}
	}
}

static void print_table(json_t *stats, FILE *f)
{
	json_t *vms = json_object_get(stats, "vms"), *vm;
	size_t nvms = json_array_size(vms), rows = nvms + 2, i;
	struct table t = { .nr_cols = 0 };
	unsigned int width[MAX_COLS] = { 0 };
	uint64_t totals[MAX_COLS] = { 0 };
	char (*cell)[MAX_COLS][CELL];

	print_host(json_object_get(stats, "host"), f);
	fprintf(f, "\n");
	build_columns(&t, vms);
	cell = calloc(rows, sizeof(*cell));
	if (!cell)
		return;
	for (unsigned int c = 0; c < t.nr_cols; c++)
		snprintf(cell[0][c], CELL, "%s", t.cols[c].head);
	json_array_foreach(vms, i, vm) {
		for (unsigned int c = 0; c < t.nr_cols; c++) {
			json_t *v = col_value(&t.cols[c], vm);

			format_cell(&t.cols[c], v, cell[i + 1][c]);
			if (t.cols[c].total)
				totals[c] += int_of(v) * (t.cols[c].kind == COL_PAGES ? PAGE_BYTES : 1);
		}
	}
	for (unsigned int c = 0; c < t.nr_cols; c++) {
		if (c == 0)
			snprintf(cell[rows - 1][c], CELL, "TOTAL");
		else if (t.cols[c].total)
			fmt_bytes(totals[c], cell[rows - 1][c], CELL);
		else
			cell[rows - 1][c][0] = '\0';
	}
	for (size_t r = 0; r < rows; r++)
		for (unsigned int c = 0; c < t.nr_cols; c++)
			if (strlen(cell[r][c]) > width[c])
				width[c] = (unsigned int)strlen(cell[r][c]);
	for (size_t r = 0; r < rows; r++) {
		char line[MAX_COLS * (CELL + 2) + 2];
		size_t n = 0;

		for (unsigned int c = 0; c < t.nr_cols; c++) {
			bool left = t.cols[c].kind == COL_TEXT;

			n += (size_t)snprintf(line + n, sizeof(line) - n, "%s%*s", c ? "  " : "",
					      left ? -(int)width[c] : (int)width[c], cell[r][c]);
		}
		while (n && line[n - 1] == ' ')
			n--;
		fprintf(f, "%.*s\n", (int)n, line);
	}
	/* The policy's last decision per VM, when it made one. */
	json_array_foreach(vms, i, vm) {
		json_t *a = json_object_get(vm, "last_action");
		char name[KEY_TEXT], what[512];

		if (json_is_string(a) && strcmp(json_string_value(a), "none"))
			fprintf(f, "%s: %s\n",
				cli_escape(json_string_value(json_object_get(vm, "name")) ?: "?", name,
					   sizeof(name)),
				cli_escape(json_string_value(a), what, sizeof(what)));
	}
	free(cell);
}

/*
 * The exposition line by line, each through cli_escape like everything a
 * server sends: a well-formed one has nothing to escape.
 */
static void print_metrics(const char *text, FILE *f)
{
	char line[1024], out[4 * sizeof(line)];

	while (*text) {
		size_t n = strcspn(text, "\n");

		snprintf(line, sizeof(line), "%.*s", (int)(n < sizeof(line) ? n : sizeof(line) - 1),
			 text);
		fprintf(f, "%s\n", cli_escape(line, out, sizeof(out)));
		text += n + (text[n] == '\n');
	}
}

/* Print one snapshot; 0, or 1 after an error line. */
static int show(const char *path, enum format fmt, bool watching, bool tty, double every)
{
	json_t *stats;
	int ret = fetch(path, fmt == FMT_OPENMETRICS ? "metrics" : "stats", &stats);

	if (ret)
		return ret;
	if (fmt == FMT_OPENMETRICS) {
		print_metrics(json_string_value(json_object_get(stats, "text")), stdout);
	} else if (fmt == FMT_JSON) {
		/*
		 * Watching: JSON Lines, one compact document per refresh. ASCII
		 * only: jansson escapes C0 controls, and this escapes the C1
		 * range and the rest a terminal could act on.
		 */
		json_dumpf(stats, stdout,
			   (watching ? JSON_COMPACT : JSON_INDENT(2)) | JSON_ENSURE_ASCII);
		fputc('\n', stdout);
	} else {
		if (watching && tty) {
			char when[32];
			time_t now = time(NULL);

			strftime(when, sizeof(when), "%H:%M:%S", localtime(&now));
			fputs("\033[H\033[2J", stdout);
			fprintf(stdout, "kvmem stat  %s  every %gs  %s\n\n", path, every, when);
		}
		print_table(stats, stdout);
	}
	json_decref(stats);
	if (fflush(stdout) || ferror(stdout))
		return errno == EPIPE ? 0 : 1;
	return 0;
}

/* Sleep `secs` unless SIGINT/SIGTERM comes first (they are blocked: see main). */
static bool sleep_or_signal(const sigset_t *set, double secs)
{
	struct timespec ts = { .tv_sec = (time_t)secs,
			       .tv_nsec = (long)((secs - (double)(time_t)secs) * 1e9) };

	for (;;) {
		int sig = sigtimedwait(set, NULL, &ts);

		if (sig > 0)
			return false;
		if (errno == EAGAIN)
			return true;
		if (errno != EINTR)
			return false;
	}
}

int statcli_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "format", required_argument, NULL, 'f' },
		{ "watch", required_argument, NULL, 'w' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = KVMEM_DEFAULT_SOCKET;
	enum format fmt = FMT_TABLE;
	bool tty;
	double every = 0;
	sigset_t set;
	int c, ret;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":s:jf:w:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (!*optarg)
				return usage_error("--socket %s: an empty path", optarg);
			path = optarg;
			break;
		case 'j':
			fmt = FMT_JSON;
			break;
		case 'f':
			if (!strcmp(optarg, "table"))
				fmt = FMT_TABLE;
			else if (!strcmp(optarg, "json"))
				fmt = FMT_JSON;
			else if (!strcmp(optarg, "openmetrics"))
				fmt = FMT_OPENMETRICS;
			else
				return usage_error("--format %s: not table, json or openmetrics", optarg);
			break;
		case 'w': {
			char *end;

			errno = 0;
			every = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(every >= 0.1 && every <= 86400))
				return usage_error("--watch %s: not a number of seconds from 0.1 to 86400",
						   optarg);
			break;
		}
		case 'h':
			usage(stdout);
			return 0;
		default:
			return cli_bad_option("stat", USAGE_HINT, c, argv);
		}
	}
	if (optind < argc)
		return usage_error("%s: unexpected argument", argv[optind]);

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	tty = isatty(STDOUT_FILENO);
	if (!every)
		return show(path, fmt, false, tty, 0);
	for (bool first = true;; first = false) {
		/* Not a tty: successive tables, separated by a blank line. */
		if (!first && !tty && fmt == FMT_TABLE)
			fputc('\n', stdout);
		ret = show(path, fmt, true, tty, every);
		if (ret)
			return ret;
		if (!sleep_or_signal(&set, every))
			return 0;
	}
}
