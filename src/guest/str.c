/* SPDX-License-Identifier: MIT */
/*
 * String and memory helpers, and command-line parsing. The mem* functions
 * use string instructions in inline assembly: written as C loops, GCC's
 * loop-idiom pass could turn them back into calls to themselves.
 */
#include "rt.h"

void *memset(void *dst, int c, size_t n)
{
	void *d = dst;

	__asm__ __volatile__("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	void *d = dst;

	__asm__ __volatile__("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;

	if (d <= s || d >= s + n)
		return memcpy(dst, src, n);
	/* Overlapping with dst above src: copy backwards. */
	d += n - 1;
	s += n - 1;
	__asm__ __volatile__("std; rep movsb; cld"
			     : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;
	size_t i;

	for (i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] < y[i] ? -1 : 1;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

size_t strnlen(const char *s, size_t max)
{
	size_t n = 0;

	while (n < max && s[n])
		n++;
	return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (a[i] != b[i])
			return (unsigned char)a[i] < (unsigned char)b[i] ? -1 : 1;
		if (!a[i])
			break;
	}
	return 0;
}

int strcmp(const char *a, const char *b)
{
	return strncmp(a, b, (size_t)-1);
}

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
