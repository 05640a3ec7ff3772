/* SPDX-License-Identifier: MIT */
#include "core/size.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>

enum text_fault {
	TEXT_OK,
	TEXT_NOT_SIZE,
	TEXT_NEGATIVE,
	TEXT_FRACTION,
	TEXT_TOO_BIG,
};

/*
 * Digits and a unit, by hand rather than strtoull: strtoull takes leading
 * blanks and a sign ("-1" is 2^64 - 1 to it) and says nothing about which
 * of several mistakes it saw.
 */
static enum text_fault parse_text(const char *s, uint64_t max, uint64_t *out)
{
	const char *p = s;
	unsigned int shift = 20; /* no unit: MiB */
	bool big = false, frac = false;
	uint64_t v = 0;

	if (!p)
		return TEXT_NOT_SIZE;
	if (*p == '-')
		return isdigit((unsigned char)p[1]) ? TEXT_NEGATIVE : TEXT_NOT_SIZE;
	if (!isdigit((unsigned char)*p))
		return TEXT_NOT_SIZE;
	for (; isdigit((unsigned char)*p); p++) {
		unsigned int d = (unsigned int)(*p - '0');

		if (v > (UINT64_MAX - d) / 10)
			big = true;
		else
			v = v * 10 + d;
	}
	if (*p == '.' && isdigit((unsigned char)p[1])) {
		frac = true;
		for (p++; isdigit((unsigned char)*p); p++)
			;
	}
	switch (toupper((unsigned char)*p)) {
	case '\0':
		break;
	case 'B':
		shift = 0;
		p++;
		break;
	case 'K':
		shift = 10;
		break;
	case 'M':
		shift = 20;
		break;
	case 'G':
		shift = 30;
		break;
	case 'T':
		shift = 40;
		break;
	case 'P':
		shift = 50;
		break;
	case 'E':
		shift = 60;
		break;
	default:
		return TEXT_NOT_SIZE;
	}
	if (*p && shift) {
		p++;
		if (*p == 'i' || *p == 'I')
			p++;
		if (*p == 'b' || *p == 'B')
			p++;
	}
	if (*p)
		return TEXT_NOT_SIZE;
	if (frac)
		return TEXT_FRACTION;
	/* v << shift <= max exactly when v <= max >> shift: the shifted-out bits are 0. */
	if (big || v > (max >> shift))
		return TEXT_TOO_BIG;
	*out = v << shift;
	return TEXT_OK;
}

int size_parse(const char *s, uint64_t *out)
{
	switch (parse_text(s, SIZE_MAX_BYTES, out)) {
	case TEXT_OK:
		return 0;
	case TEXT_TOO_BIG:
		return -ERANGE;
	default:
		return -EINVAL;
	}
}

const char *size_format(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double v = (double)bytes;
	unsigned int u = 0;

	while (v >= 1024.0 && u < 6) {
		v /= 1024.0;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)bytes);
	else
		snprintf(buf, len, "%.1f %s", v, units[u]);
	return buf;
}

static int say(int ret, char *err, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int say(int ret, char *err, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (err && len) {
		va_start(ap, fmt);
		vsnprintf(err, len, fmt, ap);
		va_end(ap);
	}
	return ret;
}

static int too_big(const char *field, const char *shown, uint64_t max, char *err, size_t len)
{
	char buf[32];

	/* size_format rounds 2^63 - 1 to "8.0 EiB", which 2^63 itself would seem not to pass. */
	if (max == SIZE_MAX_BYTES)
		return say(-ERANGE, err, len,
			   "%s %s: more than the largest size, %" PRIu64 " bytes (2^63 - 1)", field,
			   shown, max);
	return say(-ERANGE, err, len, "%s %s: more than %s (%" PRIu64 " bytes)", field, shown,
		   size_format(max, buf, sizeof(buf)), max);
}

/* shown: the value as the user wrote it (quoted when it came as a JSON string). */
static int text_size(const char *field, const char *s, const char *shown, bool json,
		     uint64_t max, uint64_t *out, char *err, size_t len)
{
	switch (parse_text(s, max, out)) {
	case TEXT_OK:
		return 0;
	case TEXT_NEGATIVE:
		return say(-EINVAL, err, len, "%s %s: a negative size", field, shown);
	case TEXT_FRACTION:
		return say(-EINVAL, err, len,
			   json ? "%s %s: not a whole number: use a smaller unit (\"1536M\", not \"1.5G\")"
				: "%s %s: not a whole number: use a smaller unit (1536M, not 1.5G)",
			   field, shown);
	case TEXT_TOO_BIG:
		return too_big(field, shown, max, err, len);
	default:
		return say(-EINVAL, err, len,
			   json ? "%s %s: not a size like \"512M\" or \"2G\""
				: "%s %s: not a size like 512M or 2G",
			   field, shown);
	}
}

int size_text(const char *field, const char *s, uint64_t max, uint64_t *out, char *err,
	      size_t errlen)
{
	char shown[48];

	snprintf(shown, sizeof(shown), "%.40s", s ? s : "");
	return text_size(field, s, shown, false, max, out, err, errlen);
}

int size_json(const char *field, const json_t *v, enum size_json_numbers nums, uint64_t max,
	      uint64_t *out, char *err, size_t errlen)
{
	char shown[64];

	if (!v)
		return say(-EINVAL, err, errlen, "%s: missing", field);
	if (json_is_string(v)) {
		snprintf(shown, sizeof(shown), "\"%.40s\"", json_string_value(v));
		return text_size(field, json_string_value(v), shown, true, max, out, err, errlen);
	}
	if (json_is_integer(v)) {
		json_int_t i = json_integer_value(v);

		snprintf(shown, sizeof(shown), "%lld", (long long)i);
		if (nums == SIZE_JSON_TEXT_ONLY) {
			/* Say what the old reading (MiB) was, in the form that keeps it. */
			if (i >= 0 && (uint64_t)i <= (max >> 20))
				return say(-EINVAL, err, errlen,
					   "%s %s: give the unit: write \"%sM\" for %s MiB (what a "
					   "bare number meant here; the control socket reads it as "
					   "bytes)",
					   field, shown, shown, shown);
			return say(-EINVAL, err, errlen,
				   "%s %s: give the size as a string with its unit, like \"512M\"",
				   field, shown);
		}
		if (i < 0)
			return say(-EINVAL, err, errlen, "%s %s: a negative size", field, shown);
		if ((uint64_t)i > max)
			return too_big(field, shown, max, err, errlen);
		*out = (uint64_t)i;
		return 0;
	}
	if (json_is_real(v)) {
		double r = json_real_value(v);

		snprintf(shown, sizeof(shown), "%g", r);
		if (nums == SIZE_JSON_TEXT_ONLY)
			return say(-EINVAL, err, errlen,
				   "%s %s: give the size as a string with its unit, like \"512M\"",
				   field, shown);
		if (!isfinite(r))
			return say(-EINVAL, err, errlen, "%s %s: not a finite number", field, shown);
		if (r < 0)
			return say(-EINVAL, err, errlen, "%s %s: a negative size", field, shown);
		/* Below 2^63 the conversion is defined; a fraction does not survive it. */
		if (r >= 0x1p63)
			return too_big(field, shown, max, err, errlen);
		if ((double)(uint64_t)r != r)
			return say(-EINVAL, err, errlen, "%s %s: not a whole number of bytes", field,
				   shown);
		if ((uint64_t)r > max)
			return too_big(field, shown, max, err, errlen);
		*out = (uint64_t)r;
		return 0;
	}
	return say(-EINVAL, err, errlen,
		   nums == SIZE_JSON_BYTES ? "%s: must be a byte count or a size like \"512M\""
					   : "%s: must be a size like \"512M\" or \"2G\"",
		   field);
}

int size_json_integer(const char *field, const json_t *v, int64_t min, int64_t max, int64_t *out,
		      char *err, size_t errlen)
{
	if (!v)
		return say(-EINVAL, err, errlen, "%s: missing", field);
	if (!json_is_integer(v))
		return say(-EINVAL, err, errlen, "%s: must be an integer from %" PRId64 " to %" PRId64,
			   field, min, max);
	if (json_integer_value(v) < min || json_integer_value(v) > max)
		return say(-ERANGE, err, errlen,
			   "%s %lld: must be an integer from %" PRId64 " to %" PRId64, field,
			   (long long)json_integer_value(v), min, max);
	*out = json_integer_value(v);
	return 0;
}

int size_json_number(const char *field, const json_t *v, double min, double max,
		     const char *what, double *out, char *err, size_t errlen)
{
	const char *unit = what ? what : "a number";
	double r;

	if (!v)
		return say(-EINVAL, err, errlen, "%s: missing", field);
	if (!json_is_number(v))
		return say(-EINVAL, err, errlen, "%s: must be %s from %g to %g", field, unit, min,
			   max);
	r = json_number_value(v);
	/* Written so that NaN fails too: every comparison with it is false. */
	if (!(isfinite(r) && r >= min && r <= max))
		return say(-ERANGE, err, errlen, "%s %g: must be %s from %g to %g", field, r, unit,
			   min, max);
	*out = r;
	return 0;
}

int size_json_seconds_ms(const char *field, const json_t *v, double max_s, bool zero_never,
			 uint32_t *out_ms, char *err, size_t errlen)
{
	double r;

	if (!v)
		return say(-EINVAL, err, errlen, "%s: missing", field);
	r = json_is_number(v) ? json_number_value(v) : NAN;
	if (zero_never && r == 0) {
		*out_ms = 0;
		return 0;
	}
	/* The caller's maximum must fit: clamp it rather than overflow below. */
	if (max_s > (double)UINT32_MAX / 1000)
		max_s = (double)UINT32_MAX / 1000;
	if (!(isfinite(r) && r * 1000 >= 1 && r <= max_s)) {
		const char *never = zero_never ? "0 (never) or " : "";

		if (!json_is_number(v))
			return say(-EINVAL, err, errlen, "%s: must be %sseconds from 0.001 to %g",
				   field, never, max_s);
		return say(-ERANGE, err, errlen, "%s %g: must be %sseconds from 0.001 to %g", field,
			   r, never, max_s);
	}
	*out_ms = (uint32_t)(r * 1000 + 0.5); /* the nearest ms; r * 1000 fits, checked above */
	return 0;
}
