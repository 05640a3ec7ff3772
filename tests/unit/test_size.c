/* SPDX-License-Identifier: MIT */
/*
 * Sizes and intervals as kvmem reads them (core/size.h): text with units,
 * JSON numbers, and their edges: 64-bit overflow, 2^63, negative values,
 * fractions, huge exponents, NaN-free ranges and intervals that would round
 * to "never". Every error names the field and the value.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/size.h"

#define MIB (1ULL << 20)

static void expect_text(const char *s, uint64_t want)
{
	uint64_t out = 0;

	if (size_parse(s, &out))
		fail_msg("\"%s\" should read as %llu bytes", s, (unsigned long long)want);
	assert_int_equal(out, want);
}

static void expect_text_error(const char *s, int err)
{
	uint64_t out = 12345;
	int ret = size_parse(s, &out);

	if (ret != err)
		fail_msg("\"%s\": got %d, want %d", s ? s : "(null)", ret, err);
	assert_int_equal(out, 12345); /* untouched */
}

/* err holds "field value: problem" with every needle in it. */
static void expect_says(const char *err, const char *a, const char *b)
{
	if (!strstr(err, a) || (b && !strstr(err, b)))
		fail_msg("\"%s\" should mention \"%s\"%s%s", err, a, b ? " and " : "", b ? b : "");
}

static void test_size_text_units(void **state)
{
	(void)state;
	expect_text("0", 0);
	expect_text("512", 512 * MIB); /* a bare number is MiB, as QEMU's -m */
	expect_text("1B", 1);
	expect_text("4096b", 4096);
	expect_text("1K", 1024);
	expect_text("1k", 1024);
	expect_text("1KiB", 1024);
	expect_text("1kb", 1024);
	expect_text("1Mi", MIB);
	expect_text("2G", 2ULL << 30);
	expect_text("2GiB", 2ULL << 30);
	expect_text("1T", 1ULL << 40);
	expect_text("1P", 1ULL << 50);
	expect_text("7E", 7ULL << 60);
	expect_text("007M", 7 * MIB);
}

static void test_size_text_refuses_what_is_not_a_size(void **state)
{
	static const char *const bad[] = {
		"", "M", "5x", " 5M", "5M ", "5 M", "+5", "0x10", "5MiBB", "5iB", "5Bi", "5BB",
		"1e3", "5.", "5.M", ".5M", "five", "5MB\n", "-", "--5",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_text_error(bad[i], -EINVAL);
	expect_text_error(NULL, -EINVAL);
}

/* The reproduced overflow: 2^44 MiB is 2^64 bytes, and used to wrap to 0. */
static void test_size_text_overflow_is_refused_not_wrapped(void **state)
{
	(void)state;
	expect_text_error("17592186044416", -ERANGE);	/* 2^44 MiB = 2^64 */
	expect_text_error("17592186044424", -ERANGE);	/* 2^64 + 8 MiB: wrapped to 8 MiB */
	expect_text_error("18446744073709551616B", -ERANGE); /* 2^64 */
	expect_text_error("18446744073709551615B", -ERANGE); /* 2^64 - 1 */
	expect_text_error("99999999999999999999999999999G", -ERANGE);
	expect_text_error("16384P", -ERANGE);
	expect_text_error("16E", -ERANGE);
}

/* A JSON integer holds at most 2^63 - 1: no size may be larger, or it is sent negative. */
static void test_size_text_2_to_the_63_is_refused(void **state)
{
	(void)state;
	expect_text_error("8388608T", -ERANGE);
	expect_text_error("8E", -ERANGE);
	expect_text_error("8796093022208", -ERANGE);	/* MiB: 2^63 */
	expect_text_error("9223372036854775808B", -ERANGE);
	expect_text("9223372036854775807B", (uint64_t)INT64_MAX);
	expect_text("8388607T", 8388607ULL << 40);
	expect_text("8796093022207", 8796093022207ULL << 20);
}

static void test_size_text_names_the_field_and_the_problem(void **state)
{
	char err[200];
	uint64_t out;

	(void)state;
	assert_int_equal(size_text("--mem", "banana", SIZE_MAX_BYTES, &out, err, sizeof(err)),
			 -EINVAL);
	expect_says(err, "--mem banana: ", "not a size");
	assert_int_equal(size_text("--target", "-5M", SIZE_MAX_BYTES, &out, err, sizeof(err)),
			 -EINVAL);
	expect_says(err, "--target -5M: ", "negative");
	assert_int_equal(size_text("--mem", "1.5G", SIZE_MAX_BYTES, &out, err, sizeof(err)),
			 -EINVAL);
	expect_says(err, "--mem 1.5G: ", "whole number");
	assert_int_equal(size_text("--target", "8E", SIZE_MAX_BYTES, &out, err, sizeof(err)),
			 -ERANGE);
	expect_says(err, "--target 8E: ", "more than");
	expect_says(err, "9223372036854775807 bytes", NULL);
	/* The caller's maximum, inclusive. */
	assert_int_equal(size_text("x", "1G", 1ULL << 30, &out, err, sizeof(err)), 0);
	assert_int_equal(out, 1ULL << 30);
	assert_int_equal(size_text("x", "1025M", 1ULL << 30, &out, err, sizeof(err)), -ERANGE);
	expect_says(err, "x 1025M: more than 1.0 GiB", NULL);
	/* A long value is cut, the message still ends with the problem. */
	assert_int_equal(size_text("x", "123456789012345678901234567890123456789012345678901234567890",
				   SIZE_MAX_BYTES, &out, err, sizeof(err)),
			 -ERANGE);
	expect_says(err, "more than", NULL);
}

static json_t *parse(const char *text)
{
	json_error_t jerr;
	json_t *v = json_loads(text, JSON_DECODE_ANY, &jerr);

	if (!v)
		fail_msg("%s: %s", text, jerr.text);
	return v;
}

static int from_json(const char *text, enum size_json_numbers nums, uint64_t max, uint64_t *out,
		     char *err, size_t len)
{
	json_t *v = parse(text);
	int ret = size_json("f", v, nums, max, out, err, len);

	json_decref(v);
	return ret;
}

static void test_size_json_integers_are_bytes_in_requests(void **state)
{
	char err[200];
	uint64_t out;

	(void)state;
	assert_int_equal(from_json("4096", SIZE_JSON_BYTES, SIZE_MAX_BYTES, &out, err, sizeof(err)),
			 0);
	assert_int_equal(out, 4096);
	assert_int_equal(from_json("9223372036854775807", SIZE_JSON_BYTES, SIZE_MAX_BYTES, &out, err,
				   sizeof(err)),
			 0);
	assert_int_equal(out, (uint64_t)INT64_MAX);
	assert_int_equal(from_json("\"512M\"", SIZE_JSON_BYTES, SIZE_MAX_BYTES, &out, err,
				   sizeof(err)),
			 0);
	assert_int_equal(out, 512 * MIB);
	/* An integral real is a byte count too; a fraction of a byte is not. */
	assert_int_equal(from_json("4096.0", SIZE_JSON_BYTES, SIZE_MAX_BYTES, &out, err,
				   sizeof(err)),
			 0);
	assert_int_equal(out, 4096);
	assert_int_equal(from_json("1e9", SIZE_JSON_BYTES, SIZE_MAX_BYTES, &out, err, sizeof(err)),
			 0);
	assert_int_equal(out, 1000000000);
	assert_int_equal(from_json("1.5", SIZE_JSON_BYTES, SIZE_MAX_BYTES, &out, err, sizeof(err)),
			 -EINVAL);
	expect_says(err, "f 1.5: ", "whole number");
	assert_int_equal(from_json("-5", SIZE_JSON_BYTES, SIZE_MAX_BYTES, &out, err, sizeof(err)),
			 -EINVAL);
	expect_says(err, "f -5: ", "negative");
	assert_int_equal(from_json("-0.5", SIZE_JSON_BYTES, SIZE_MAX_BYTES, &out, err, sizeof(err)),
			 -EINVAL);
	expect_says(err, "negative", NULL);
	assert_int_equal(from_json("\"-5M\"", SIZE_JSON_BYTES, SIZE_MAX_BYTES, &out, err,
				   sizeof(err)),
			 -EINVAL);
	expect_says(err, "f \"-5M\": ", "negative");
	assert_int_equal(from_json("4097", SIZE_JSON_BYTES, 4096, &out, err, sizeof(err)), -ERANGE);
	expect_says(err, "f 4097: more than", NULL);
}

/* Huge exponents: 2^63 and beyond as reals, never converted out of range. */
static void test_size_json_huge_reals_are_refused(void **state)
{
	static const char *const big[] = { "9223372036854775808.0", "9.3e18", "1e19", "1e300",
					   "1.7976931348623157e308" };
	char err[200];
	uint64_t out = 7;

	(void)state;
	for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
		assert_int_equal(from_json(big[i], SIZE_JSON_BYTES, SIZE_MAX_BYTES, &out, err,
					   sizeof(err)),
				 -ERANGE);
		expect_says(err, "more than", NULL);
	}
	assert_int_equal(out, 7);
	/* Past a double's range the JSON itself is refused (jansson: "real number overflow"). */
	assert_null(json_loads("1e400", JSON_DECODE_ANY, NULL));
}

static void test_size_json_refuses_what_is_not_a_size(void **state)
{
	static const char *const bad[] = { "true", "null", "[1]", "{}", "\"lots\"", "\"\"" };
	char err[200];
	uint64_t out;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(from_json(bad[i], SIZE_JSON_BYTES, SIZE_MAX_BYTES, &out, err,
					   sizeof(err)),
				 -EINVAL);
		expect_says(err, "f", "size");
	}
	assert_int_equal(size_json("f", NULL, SIZE_JSON_BYTES, SIZE_MAX_BYTES, &out, err,
				   sizeof(err)),
			 -EINVAL);
	expect_says(err, "f: missing", NULL);
}

/* In the config a bare number used to be MiB: refused, saying what to write instead. */
static void test_size_json_bare_numbers_in_the_config_say_what_to_write(void **state)
{
	char err[200];
	uint64_t out = 7;

	(void)state;
	assert_int_equal(from_json("512", SIZE_JSON_TEXT_ONLY, SIZE_MAX_BYTES, &out, err,
				   sizeof(err)),
			 -EINVAL);
	expect_says(err, "f 512: ", "write \"512M\"");
	assert_int_equal(from_json("17592186044416", SIZE_JSON_TEXT_ONLY, SIZE_MAX_BYTES, &out, err,
				   sizeof(err)),
			 -EINVAL);
	expect_says(err, "f 17592186044416: ", "string with its unit");
	assert_int_equal(from_json("0.5", SIZE_JSON_TEXT_ONLY, SIZE_MAX_BYTES, &out, err,
				   sizeof(err)),
			 -EINVAL);
	expect_says(err, "f 0.5: ", "string with its unit");
	assert_int_equal(out, 7);
	assert_int_equal(from_json("\"512M\"", SIZE_JSON_TEXT_ONLY, SIZE_MAX_BYTES, &out, err,
				   sizeof(err)),
			 0);
	assert_int_equal(out, 512 * MIB);
	assert_int_equal(from_json("\"17592186044416\"", SIZE_JSON_TEXT_ONLY, SIZE_MAX_BYTES, &out,
				   err, sizeof(err)),
			 -ERANGE);
	expect_says(err, "f \"17592186044416\": ", "more than");
}

static void test_size_json_integer_ranges(void **state)
{
	char err[200];
	int64_t out = 0;
	json_t *v;

	(void)state;
	v = parse("1");
	assert_int_equal(size_json_integer("n", v, 1, 10, &out, err, sizeof(err)), 0);
	assert_int_equal(out, 1);
	json_decref(v);
	v = parse("11");
	assert_int_equal(size_json_integer("n", v, 1, 10, &out, err, sizeof(err)), -ERANGE);
	expect_says(err, "n 11: ", "from 1 to 10");
	json_decref(v);
	v = parse("-9223372036854775808");
	assert_int_equal(size_json_integer("n", v, 1, 10, &out, err, sizeof(err)), -ERANGE);
	json_decref(v);
	v = parse("2.0");
	assert_int_equal(size_json_integer("n", v, 1, 10, &out, err, sizeof(err)), -EINVAL);
	expect_says(err, "n: must be an integer", NULL);
	json_decref(v);
}

static void test_size_json_number_ranges(void **state)
{
	static const struct {
		const char *json;
		int ret;
	} cases[] = {
		{ "0.1", 0 }, { "100", 0 }, { "50.5", 0 }, { "1e-300", -ERANGE }, { "0", -ERANGE },
		{ "-1", -ERANGE }, { "100.0001", -ERANGE }, { "1e308", -ERANGE },
		{ "\"50\"", -EINVAL }, { "null", -EINVAL },
	};
	char err[200];
	double out;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		json_t *v = parse(cases[i].json);
		int ret = size_json_number("pct", v, 0.1, 100, NULL, &out, err, sizeof(err));

		json_decref(v);
		if (ret != cases[i].ret)
			fail_msg("%s: got %d, want %d", cases[i].json, ret, cases[i].ret);
		if (ret)
			expect_says(err, "pct", "from 0.1 to 100");
	}
	assert_int_equal(size_json_number("t", NULL, 1, 2, "seconds", &out, err, sizeof(err)),
			 -EINVAL);
	expect_says(err, "t: missing", NULL);
}

static void test_size_seconds_never_round_to_never(void **state)
{
	static const struct {
		const char *json;
		bool zero_never;
		int ret;
		uint32_t ms;
	} cases[] = {
		{ "0", true, 0, 0 },	    { "0.0", true, 0, 0 },
		{ "0", false, -ERANGE, 0 }, { "0.0009", true, -ERANGE, 0 }, /* was 0: never */
		{ "1e-300", true, -ERANGE, 0 }, { "0.001", true, 0, 1 },
		{ "0.0015", true, 0, 2 },   { "0.0014", true, 0, 1 },
		{ "1", true, 0, 1000 },	    { "2.5", true, 0, 2500 },
		{ "3600", true, 0, 3600000 }, { "3600.001", true, -ERANGE, 0 },
		{ "-1", true, -ERANGE, 0 }, { "1e300", true, -ERANGE, 0 },
		{ "\"1\"", true, -EINVAL, 0 }, { "true", true, -EINVAL, 0 },
	};
	char err[200];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		json_t *v = parse(cases[i].json);
		uint32_t ms = 777;
		int ret = size_json_seconds_ms("iv", v, 3600, cases[i].zero_never, &ms, err,
					       sizeof(err));

		json_decref(v);
		if (ret != cases[i].ret)
			fail_msg("%s: got %d, want %d", cases[i].json, ret, cases[i].ret);
		if (ret)
			expect_says(err, "iv", "seconds from 0.001 to 3600");
		else
			assert_int_equal(ms, cases[i].ms);
	}
}

/* A maximum larger than milliseconds in 32 bits can say is clamped, never wrapped. */
static void test_size_seconds_clamp_a_maximum_past_32_bits(void **state)
{
	char err[200];
	uint32_t ms = 0;
	json_t *v = parse("1e10");

	(void)state;
	assert_int_equal(size_json_seconds_ms("iv", v, 1e12, false, &ms, err, sizeof(err)),
			 -ERANGE);
	json_decref(v);
	v = parse("4294967");
	assert_int_equal(size_json_seconds_ms("iv", v, 1e12, false, &ms, err, sizeof(err)), 0);
	assert_int_equal(ms, 4294967000u);
	json_decref(v);
}

static void test_size_format(void **state)
{
	char buf[32];

	(void)state;
	assert_string_equal(size_format(0, buf, sizeof(buf)), "0 B");
	assert_string_equal(size_format(1536, buf, sizeof(buf)), "1.5 KiB");
	assert_string_equal(size_format(512 * MIB, buf, sizeof(buf)), "512.0 MiB");
	assert_string_equal(size_format(3ULL << 50, buf, sizeof(buf)), "3.0 PiB");
	assert_string_equal(size_format((uint64_t)INT64_MAX, buf, sizeof(buf)), "8.0 EiB");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_size_text_units),
		cmocka_unit_test(test_size_text_refuses_what_is_not_a_size),
		cmocka_unit_test(test_size_text_overflow_is_refused_not_wrapped),
		cmocka_unit_test(test_size_text_2_to_the_63_is_refused),
		cmocka_unit_test(test_size_text_names_the_field_and_the_problem),
		cmocka_unit_test(test_size_json_integers_are_bytes_in_requests),
		cmocka_unit_test(test_size_json_huge_reals_are_refused),
		cmocka_unit_test(test_size_json_refuses_what_is_not_a_size),
		cmocka_unit_test(test_size_json_bare_numbers_in_the_config_say_what_to_write),
		cmocka_unit_test(test_size_json_integer_ranges),
		cmocka_unit_test(test_size_json_number_ranges),
		cmocka_unit_test(test_size_seconds_never_round_to_never),
		cmocka_unit_test(test_size_seconds_clamp_a_maximum_past_32_bits),
		cmocka_unit_test(test_size_format),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
