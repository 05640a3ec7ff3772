/* SPDX-License-Identifier: MIT */
/*
 * Sizes and intervals as users give them (core/size.c): on the command
 * line, in the host config and in control requests. The input's first byte
 * picks the limits, the rest is the text, read both as a size string and as
 * a JSON value. Besides the sanitizers, it checks what size.h promises: a
 * value accepted is within its limit and reads back the same when written
 * out in bytes, and text reads the same whether it came on the command line
 * or as a JSON string.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/size.h"
#include "fuzz.h"

static const uint64_t maxima[] = { SIZE_MAX_BYTES, UINT64_MAX, 1ULL << 30, 4095, 0, 1 };
static const int64_t int_limits[][2] = { { 0, 100 }, { 1, 1000000 }, { INT64_MIN, INT64_MAX },
					 { -5, 5 } };
static const double seconds[] = { 3600, 0.5, 1e12, 0 };

/* Nothing to set up: sizes are read from the input alone. */
void fz_init(void)
{
}

/* A size accepted must be within max and say the same in bytes. */
static void check_value(uint64_t v, uint64_t max)
{
	char text[32], shown[32];
	uint64_t again = 0;

	FZ_CHECK(v <= max);
	size_format(v, shown, sizeof(shown));
	FZ_CHECK(memchr(shown, '\0', sizeof(shown)) != NULL);
	if (v > SIZE_MAX_BYTES)
		return;
	snprintf(text, sizeof(text), "%" PRIu64 "B", v);
	FZ_CHECK(size_parse(text, &again) == 0 && again == v);
}

static void text_forms(const char *s, size_t len, uint64_t max)
{
	char err[256];
	uint64_t a = 0, b = 0;
	int ra, rb, rp;
	json_t *js;

	rp = size_parse(s, &a);
	FZ_CHECK(rp == 0 || rp == -EINVAL || rp == -ERANGE);
	if (!rp)
		check_value(a, SIZE_MAX_BYTES);
	ra = size_text("field", s, max, &a, err, sizeof(err));
	FZ_CHECK(ra == 0 || ra == -EINVAL || ra == -ERANGE);
	if (!ra)
		check_value(a, max);
	else
		FZ_CHECK(!strncmp(err, "field", 5));
	/* Only a string without a NUL is both a C string and the same JSON string. */
	if (strlen(s) != len)
		return;
	js = json_stringn_nocheck(s, len);
	FZ_CHECK(js != NULL);
	rb = size_json("field", js, SIZE_JSON_BYTES, max, &b, err, sizeof(err));
	FZ_CHECK(rb == ra && (ra || a == b));
	rb = size_json("field", js, SIZE_JSON_TEXT_ONLY, max, &b, err, sizeof(err));
	FZ_CHECK(rb == ra && (ra || a == b));
	json_decref(js);
}

static void json_forms(const char *s, size_t len, uint8_t sel)
{
	uint64_t max = maxima[sel % (sizeof(maxima) / sizeof(maxima[0]))];
	const int64_t *lim = int_limits[(sel >> 3) % 4];
	double max_s = seconds[(sel >> 5) % 4];
	json_t *v = json_loadb(s, len, JSON_DECODE_ANY, NULL);
	char err[256];
	uint64_t u = 0;
	int64_t i = 0;
	double d = 0;
	uint32_t ms = 0;

	if (!v)
		return;
	for (int nums = SIZE_JSON_BYTES; nums <= SIZE_JSON_TEXT_ONLY; nums++)
		if (!size_json("field", v, nums, max, &u, err, sizeof(err)))
			check_value(u, max);
	if (!size_json_integer("field", v, lim[0], lim[1], &i, err, sizeof(err)))
		FZ_CHECK(i >= lim[0] && i <= lim[1]);
	if (!size_json_number("field", v, -1, max_s, "seconds", &d, err, sizeof(err)))
		FZ_CHECK(isfinite(d) && d >= -1 && d <= max_s);
	for (int never = 0; never < 2; never++)
		if (!size_json_seconds_ms("field", v, max_s, never, &ms, err, sizeof(err)))
			FZ_CHECK(ms || never);
	json_decref(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s;
	uint8_t sel;

	if (!size)
		return 0;
	sel = data[0];
	s = malloc(size);
	if (!s)
		return 0;
	memcpy(s, data + 1, size - 1);
	s[size - 1] = '\0';
	text_forms(s, size - 1, maxima[sel % (sizeof(maxima) / sizeof(maxima[0]))]);
	json_forms(s, size - 1, sel);
	free(s);
	return 0;
}
