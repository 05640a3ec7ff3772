/* SPDX-License-Identifier: MIT */
/*
 * Fault injection (see fault.h): the points' counters and settings, the
 * spec parser. Built only with -Dfault_injection=true.
 *
 * A point fails the hits numbered first..last (its hit counter is never
 * reset; arming sets first from the counter at that moment). Every field is
 * an atomic, so a hit needs no lock: it takes its number with one
 * fetch-and-add, so exactly last - first + 1 hits fail however many
 * threads hit at once.
 */
#define LOG_TAG "fault"
#include "core/fault.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

static const struct {
	const char *name;
	int err;
	const char *what;
} points[FAULT_NR_POINTS] = {
#define FAULT_ROW(id, name, err, what) [FAULT_##id] = { name, err, what },
	FAULT_POINTS(FAULT_ROW)
#undef FAULT_ROW
};

struct point_state {
	uint64_t hits;		/* atomic */
	uint64_t injected;	/* atomic */
	uint64_t first;		/* atomic: 0 disarmed */
	uint64_t last;		/* atomic */
	int err;		/* atomic, positive */
};

static struct point_state state[FAULT_NR_POINTS];

int fault_hit(enum fault_point p)
{
	struct point_state *s;
	uint64_t h, first, n;
	int err;

	if ((unsigned int)p >= FAULT_NR_POINTS)
		return 0;
	s = &state[p];
	h = __atomic_add_fetch(&s->hits, 1, __ATOMIC_RELAXED);
	first = __atomic_load_n(&s->first, __ATOMIC_ACQUIRE);
	if (!first || h < first || h > __atomic_load_n(&s->last, __ATOMIC_RELAXED))
		return 0;
	err = __atomic_load_n(&s->err, __ATOMIC_RELAXED);
	n = __atomic_add_fetch(&s->injected, 1, __ATOMIC_RELAXED);
	log_debug("%s: injecting %s (hit %" PRIu64 ", injection %" PRIu64 ")", points[p].name,
		  strerrorname_np(err) ?: "an error", h, n);
	return -err;
}

static void arm(enum fault_point p, int err, uint64_t nth, uint64_t count)
{
	struct point_state *s = &state[p];
	uint64_t base;

	/* Disarmed while its setting changes: a hit meanwhile fails nothing. */
	__atomic_store_n(&s->first, 0, __ATOMIC_RELEASE);
	if (!count)
		return;
	base = __atomic_load_n(&s->hits, __ATOMIC_RELAXED);
	__atomic_store_n(&s->err, err, __ATOMIC_RELAXED);
	__atomic_store_n(&s->last, count == UINT64_MAX ? UINT64_MAX : base + nth + count - 1,
			 __ATOMIC_RELAXED);
	__atomic_store_n(&s->first, base + nth, __ATOMIC_RELEASE);
}

static int lookup(const char *name, size_t len)
{
	for (unsigned int i = 0; i < FAULT_NR_POINTS; i++)
		if (strlen(points[i].name) == len && !strncmp(points[i].name, name, len))
			return (int)i;
	return -ENOENT;
}

/* An errno by name (ENOMEM) or number: the positive value, or 0. */
static int parse_errno(const char *s, size_t len)
{
	char buf[32];
	char *end;
	long v;

	if (!len || len >= sizeof(buf))
		return 0;
	memcpy(buf, s, len);
	buf[len] = '\0';
	if (isdigit((unsigned char)buf[0])) {
		v = strtol(buf, &end, 10);
		return *end || v <= 0 || v >= 4096 ? 0 : (int)v;
	}
	for (int e = 1; e < 4096; e++) {
		const char *n = strerrorname_np(e);

		if (n && !strcmp(n, buf))
			return e;
	}
	return 0;
}

/* A whole number of s[0..len) (no sign, no overflow): true and *out. */
static bool parse_count(const char *s, size_t len, uint64_t *out)
{
	uint64_t v = 0;

	if (!len)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (!isdigit((unsigned char)s[i]) || v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return true;
}

struct spec {
	enum fault_point p;
	int err;
	uint64_t nth, count;
};

/* One spec, s[0..len): point[:errno][@nth][*count], the parts after the name in any order. */
static int parse_one(const char *s, size_t len, struct spec *out, char *why, size_t whylen)
{
	size_t n = strcspn(s, ":@*");
	int p;

	if (n > len)
		n = len;
	p = lookup(s, n);
	if (p < 0) {
		snprintf(why, whylen, "%.*s: no such fault point (kvmem --fault-points lists them)",
			 (int)n, s);
		return -EINVAL;
	}
	*out = (struct spec){ (enum fault_point)p, points[p].err, 1, 1 };
	while (n < len) {
		char sigil = s[n];
		size_t start = ++n, plen;

		while (n < len && !strchr(":@*", s[n]))
			n++;
		plen = n - start;
		if (sigil == ':') {
			out->err = parse_errno(s + start, plen);
			if (!out->err)
				goto bad;
		} else if (sigil == '@') {
			if (!parse_count(s + start, plen, &out->nth) || !out->nth ||
			    out->nth > UINT64_MAX / 4)
				goto bad;
		} else if (plen == 3 && !strncmp(s + start, "all", 3)) {
			out->count = UINT64_MAX;
		} else if (!parse_count(s + start, plen, &out->count) ||
			   out->count > UINT64_MAX / 4) {
			goto bad;
		}
		continue;
bad:
		snprintf(why, whylen, "%.*s: bad %s \"%.*s\" (point[:errno][@nth][*count])",
			 (int)len, s, sigil == ':' ? "errno" : sigil == '@' ? "nth" : "count",
			 (int)plen, s + start);
		return -EINVAL;
	}
	return 0;
}

int fault_configure(const char *spec, char *why, size_t len)
{
	struct spec specs[FAULT_NR_POINTS * 2];
	unsigned int nr = 0;
	const char *s = spec;

	if (!spec)
		return 0;
	/* All parsed before any is armed: a bad spec arms nothing. */
	while (*s) {
		size_t n = strcspn(s, ",");

		if (n) {
			int ret;

			if (nr == sizeof(specs) / sizeof(specs[0])) {
				snprintf(why, len, "too many specs (at most %zu)",
					 sizeof(specs) / sizeof(specs[0]));
				return -EINVAL;
			}
			ret = parse_one(s, n, &specs[nr], why, len);
			if (ret)
				return ret;
			nr++;
		}
		s += n + (s[n] == ',');
	}
	for (unsigned int i = 0; i < nr; i++) {
		const struct spec *sp = &specs[i];

		arm(sp->p, sp->err, sp->nth, sp->count);
		if (!sp->count)
			log_info("%s: disarmed", points[sp->p].name);
		else if (sp->count == UINT64_MAX)
			log_info("%s: armed: %s from hit %" PRIu64 " on", points[sp->p].name,
				 strerrorname_np(sp->err) ?: "?", sp->nth);
		else
			log_info("%s: armed: %s at %" PRIu64 " hit(s) from hit %" PRIu64,
				 points[sp->p].name, strerrorname_np(sp->err) ?: "?", sp->count,
				 sp->nth);
	}
	return 0;
}

void fault_clear(void)
{
	for (unsigned int i = 0; i < FAULT_NR_POINTS; i++)
		arm((enum fault_point)i, 0, 1, 0);
}

void fault_get(enum fault_point p, struct fault_info *out)
{
	const struct point_state *s = &state[p];
	uint64_t first = __atomic_load_n(&s->first, __ATOMIC_ACQUIRE);
	uint64_t last = __atomic_load_n(&s->last, __ATOMIC_RELAXED);
	uint64_t hits = __atomic_load_n(&s->hits, __ATOMIC_RELAXED);

	*out = (struct fault_info){
		.name = points[p].name,
		.what = points[p].what,
		.default_err = points[p].err,
		.hits = hits,
		.injected = __atomic_load_n(&s->injected, __ATOMIC_RELAXED),
		.armed = first && hits < last,
		.err = first ? __atomic_load_n(&s->err, __ATOMIC_RELAXED) : 0,
		.first = first,
		.last = first ? last : 0,
	};
}
