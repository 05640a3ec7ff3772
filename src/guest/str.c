/* SPDX-License-Identifier: MIT */
/*
 * String slices and command-line parsing: what the workload engine and the
 * drivers read their settings with, in the kvmem guest and in a hosted build
 * alike (the <string.h> functions they use are libc.c's, or libc's).
 */
#include "rt.h"

bool str_eq(struct rt_str s, const char *lit)
{
	size_t n = strlen(lit);

	return s.len == n && !memcmp(s.p, lit, n);
}

int str_to_u64(struct rt_str s, uint64_t *out)
{
	unsigned base = 10;
	uint64_t v = 0;
	size_t i = 0;

	if (s.len > 2 && s.p[0] == '0' && (s.p[1] == 'x' || s.p[1] == 'X')) {
		base = 16;
		i = 2;
	}
	if (i == s.len)
		return -EINVAL;
	for (; i < s.len; i++) {
		char c = s.p[i];
		unsigned d;

		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = (unsigned)(c - 'A' + 10);
		else
			return -EINVAL;
		if (v > (UINT64_MAX - d) / base)
			return -ERANGE;
		v = v * base + d;
	}
	*out = v;
	return 0;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n';
}

bool cmdline_get(const char *cmdline, const char *key, struct rt_str *val)
{
	size_t klen = strlen(key);
	const char *p = cmdline;
	bool found = false;

	while (*p) {
		const char *tok;
		size_t len = 0;

		while (is_space(*p))
			p++;
		tok = p;
		while (p[len] && !is_space(p[len]))
			len++;
		p += len;
		if (len > klen && !memcmp(tok, key, klen) && tok[klen] == '=') {
			val->p = tok + klen + 1;
			val->len = len - klen - 1;
			found = true;
		}
	}
	return found;
}

bool kv_next(struct rt_str list, size_t *pos, struct rt_str *key, struct rt_str *val)
{
	size_t i = *pos, start, eq = SIZE_MAX;

	/* Empty items (",,") are skipped. */
	while (i < list.len && list.p[i] == ',')
		i++;
	if (i >= list.len)
		return false;
	start = i;
	while (i < list.len && list.p[i] != ',') {
		if (eq == SIZE_MAX && list.p[i] == '=')
			eq = i;
		i++;
	}
	*pos = i;
	if (eq != SIZE_MAX) {
		key->p = list.p + start;
		key->len = eq - start;
		val->p = list.p + eq + 1;
		val->len = i - eq - 1;
	} else {
		key->p = list.p + start;
		key->len = i - start;
		val->p = list.p + i;
		val->len = 0;
	}
	return true;
}
