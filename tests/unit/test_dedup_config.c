/* SPDX-License-Identifier: MIT */
/*
 * The scanner's tunables without a guest or a scanner thread: the ranges
 * dedup_create/dedup_configure accept, the "dedup" verb's request fields
 * (each error names its field), and the pacing arithmetic, which must stay
 * finite and bounded for any configuration, checked or not.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "dedup/dedup.h"
#include "dedup/dedup_internal.h"

static const struct dedup_config cfg_ok = {
	.enabled = true,
	.pages_per_sec = DEDUP_DEFAULT_PAGES_PER_SEC,
	.cpu_percent = DEDUP_DEFAULT_CPU_PERCENT,
	.windows = true,
};

static int create(const struct dedup_config *cfg)
{
	struct dedup *d = NULL;
	int ret = dedup_create(cfg, &d);

	if (!ret)
		dedup_destroy(d);
	return ret;
}

/* A budget of 1e-300 % passed and overflowed the scanner's sleep computation. */
static void test_dedup_config_a_vanishing_cpu_budget_is_refused(void **state)
{
	struct dedup_config c = cfg_ok;
	struct dedup *d;

	(void)state;
	c.cpu_percent = 1e-300;
	assert_int_equal(create(&c), -EINVAL);
	c.cpu_percent = DEDUP_MIN_CPU_PERCENT / 2;
	assert_int_equal(create(&c), -EINVAL);
	c.cpu_percent = NAN;
	assert_int_equal(create(&c), -EINVAL);
	c.cpu_percent = INFINITY;
	assert_int_equal(create(&c), -EINVAL);

	assert_int_equal(dedup_create(&cfg_ok, &d), 0);
	c = cfg_ok;
	c.cpu_percent = 1e-300;
	assert_int_equal(dedup_configure(d, &c), -EINVAL);
	c.cpu_percent = 100.5;
	assert_int_equal(dedup_configure(d, &c), -EINVAL);
	c.cpu_percent = DEDUP_MIN_CPU_PERCENT;
	assert_int_equal(dedup_configure(d, &c), 0);
	c.cpu_percent = 100;
	assert_int_equal(dedup_configure(d, &c), 0);
	dedup_get_config(d, &c);
	assert_true(c.cpu_percent == 100);
	dedup_destroy(d);
}

static void test_dedup_config_the_page_rate_has_a_range(void **state)
{
	struct dedup_config c = cfg_ok;
	struct dedup *d;

	(void)state;
	c.pages_per_sec = 1ULL << 62;
	assert_int_equal(create(&c), -EINVAL);
	assert_int_equal(dedup_create(&cfg_ok, &d), 0);
	c.pages_per_sec = 0;
	assert_int_equal(dedup_configure(d, &c), -EINVAL);
	c.pages_per_sec = DEDUP_MAX_PAGES_PER_SEC + 1;
	assert_int_equal(dedup_configure(d, &c), -EINVAL);
	c.pages_per_sec = DEDUP_MAX_PAGES_PER_SEC;
	assert_int_equal(dedup_configure(d, &c), 0);
	c.pages_per_sec = 1;
	assert_int_equal(dedup_configure(d, &c), 0);
	dedup_destroy(d);
}

/* Apply a request to cfg_ok: the return value, the new config, the message. */
static int apply(const char *req_text, struct dedup_config *c, char *err, size_t len)
{
	json_error_t jerr;
	json_t *req = json_loads(req_text, 0, &jerr);
	int ret;

	if (!req)
		fail_msg("%s: %s", req_text, jerr.text);
	*c = cfg_ok;
	err[0] = '\0';
	ret = dedup_config_from_json(req, c, err, len);
	json_decref(req);
	return ret;
}

static void test_dedup_config_every_verb_field_error_names_it(void **state)
{
	static const struct {
		const char *req;
		const char *says;
	} bad[] = {
		{ "{\"enabled\":1}", "enabled: " },
		{ "{\"enabled\":\"yes\"}", "enabled: " },
		{ "{\"windows\":\"on\"}", "windows: " },
		{ "{\"pages_per_sec\":0}", "pages_per_sec 0: must be an integer from 1 to 4294967296" },
		{ "{\"pages_per_sec\":-1}", "pages_per_sec -1: " },
		{ "{\"pages_per_sec\":4294967297}", "pages_per_sec 4294967297: " },
		{ "{\"pages_per_sec\":9223372036854775807}", "pages_per_sec 9223372036854775807: " },
		{ "{\"pages_per_sec\":1.5}", "pages_per_sec: must be an integer" },
		{ "{\"pages_per_sec\":\"100\"}", "pages_per_sec: must be an integer" },
		{ "{\"cpu_percent\":1e-300}", "cpu_percent 1e-300: must be a number from 0.1 to 100" },
		{ "{\"cpu_percent\":0}", "cpu_percent 0: " },
		{ "{\"cpu_percent\":-5}", "cpu_percent -5: " },
		{ "{\"cpu_percent\":100.01}", "cpu_percent 100.01: " },
		{ "{\"cpu_percent\":1e308}", "cpu_percent 1e+308: " },
		{ "{\"cpu_percent\":\"50\"}", "cpu_percent: must be a number" },
		{ "{\"cpu_percent\":null}", "cpu_percent: must be a number" },
		/* The first bad field is named, whatever good ones come with it. */
		{ "{\"enabled\":true, \"cpu_percent\":1e-300}", "cpu_percent 1e-300: " },
	};
	struct dedup_config c;
	char err[200];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int ret = apply(bad[i].req, &c, err, sizeof(err));

		if (ret != -EINVAL || strncmp(err, bad[i].says, strlen(bad[i].says)))
			fail_msg("%s: got %d \"%s\", want -EINVAL \"%s...\"", bad[i].req, ret, err,
				 bad[i].says);
	}
}

static void test_dedup_config_a_good_request_changes_only_what_it_names(void **state)
{
	struct dedup_config c;
	char err[200];

	(void)state;
	assert_int_equal(apply("{\"verb\":\"dedup\"}", &c, err, sizeof(err)), 0);
	assert_true(c.enabled == cfg_ok.enabled && c.windows == cfg_ok.windows &&
		    c.pages_per_sec == cfg_ok.pages_per_sec && c.cpu_percent == cfg_ok.cpu_percent);
	assert_int_equal(apply("{\"cpu_percent\":0.1, \"pages_per_sec\":4294967296}", &c, err,
			       sizeof(err)),
			 1);
	assert_true(c.cpu_percent == 0.1);
	assert_int_equal(c.pages_per_sec, DEDUP_MAX_PAGES_PER_SEC);
	assert_true(c.enabled && c.windows);
	assert_int_equal(apply("{\"cpu_percent\":100, \"pages_per_sec\":1, \"enabled\":\"off\", "
			       "\"windows\":false}",
			       &c, err, sizeof(err)),
			 1);
	assert_true(c.cpu_percent == 100);
	assert_int_equal(c.pages_per_sec, 1);
	assert_false(c.enabled);
	assert_false(c.windows);
}

static void expect_bounded(const struct dedup_config *c, unsigned int shift, uint64_t pages,
			   uint64_t cpu_ns)
{
	double owed = dedup_pace_owed(c, shift, pages, cpu_ns);

	if (!(owed >= 0 && owed <= DEDUP_PACE_MAX_S))
		fail_msg("pages_per_sec %llu cpu_percent %g shift %u pages %llu cpu %llu ns: owes %g",
			 (unsigned long long)c->pages_per_sec, c->cpu_percent, shift,
			 (unsigned long long)pages, (unsigned long long)cpu_ns, owed);
}

/* Whatever got past validation (or did not go through it), the pacing stays in range. */
static void test_dedup_config_pacing_is_bounded_for_any_config(void **state)
{
	static const double pcts[] = { 1e-300, 0, -1, NAN, INFINITY, -INFINITY,
				       DEDUP_MIN_CPU_PERCENT, 20, 100, 1e300 };
	static const uint64_t rates[] = { 0, 1, 16, DEDUP_MAX_PAGES_PER_SEC, UINT64_MAX };
	static const uint64_t cpus[] = { 0, 1, 1000000, 60000000000ULL, UINT64_MAX };
	struct dedup_config c = cfg_ok;

	(void)state;
	for (size_t p = 0; p < sizeof(pcts) / sizeof(pcts[0]); p++)
		for (size_t r = 0; r < sizeof(rates) / sizeof(rates[0]); r++)
			for (size_t t = 0; t < sizeof(cpus) / sizeof(cpus[0]); t++)
				for (unsigned int shift = 0; shift <= 70; shift += 35) {
					c.cpu_percent = pcts[p];
					c.pages_per_sec = rates[r];
					expect_bounded(&c, shift, DEDUP_BATCH_PAGES, cpus[t]);
					expect_bounded(&c, shift, 0, cpus[t]);
				}
}

/* Within range the pacing is the longer of pages / rate and CPU time / budget. */
static void test_dedup_config_pacing_owes_the_longer_of_rate_and_budget(void **state)
{
	struct dedup_config c = cfg_ok;

	(void)state;
	c.pages_per_sec = 1024;
	c.cpu_percent = 50;
	/* 512 pages at 1024/s: 0.5 s; 1 ms of CPU at 50%: 2 ms. */
	assert_true(fabs(dedup_pace_owed(&c, 0, 512, 1000000) - 0.5) < 1e-9);
	/* Idle: the rate is 1024 >> 2 = 256 pages/s. */
	assert_true(fabs(dedup_pace_owed(&c, 2, 512, 1000000) - 2.0) < 1e-9);
	/* 400 ms of CPU at 50%: 0.8 s, longer than the rate's 0.5 s. */
	assert_true(fabs(dedup_pace_owed(&c, 0, 512, 400000000) - 0.8) < 1e-9);
	/* The slowest checked settings: one batch at 1 page/s, slowed 16 times. */
	c.pages_per_sec = 1;
	c.cpu_percent = DEDUP_MIN_CPU_PERCENT;
	assert_true(dedup_pace_owed(&c, DEDUP_IDLE_SHIFT_MAX, DEDUP_BATCH_PAGES, 1000000) ==
		    DEDUP_BATCH_PAGES);
	assert_true(DEDUP_BATCH_PAGES < DEDUP_PACE_MAX_S);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dedup_config_a_vanishing_cpu_budget_is_refused),
		cmocka_unit_test(test_dedup_config_the_page_rate_has_a_range),
		cmocka_unit_test(test_dedup_config_every_verb_field_error_names_it),
		cmocka_unit_test(test_dedup_config_a_good_request_changes_only_what_it_names),
		cmocka_unit_test(test_dedup_config_pacing_is_bounded_for_any_config),
		cmocka_unit_test(test_dedup_config_pacing_owes_the_longer_of_rate_and_budget),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
