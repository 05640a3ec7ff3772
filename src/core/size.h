/* SPDX-License-Identifier: MIT */
/*
 * Sizes, intervals and the other numbers a user gives kvmem: on the command
 * line, in the host config and in control requests. Every one of them is read
 * through these functions, so the three accept the same forms and refuse the
 * same mistakes (64-bit overflow, negative values, fractions of a byte,
 * NaN and infinities, values out of the caller's range) with the field named.
 *
 * The unit convention, the same everywhere:
 *  - Text is a whole number and a unit: B, K, M, G, T, P, E, powers of 1024
 *    ("512M", "512MiB", "512mb" alike). Without a unit it is MiB, as QEMU's -m
 *    reads it: text is what people type.
 *  - A JSON number given for a size is a byte count, as every "*_bytes"
 *    figure kvmem reports: a program can send back what it read.
 *  - The host config takes text only. A bare number there used to mean MiB
 *    while the control socket read bytes; reading it as bytes now would change
 *    what an existing config means without a word, so it is refused with the
 *    text to write instead ("512M").
 *  - No size is above SIZE_MAX_BYTES (2^63 - 1, what a JSON integer holds),
 *    so every size kvmem accepts can be sent back and forth as JSON.
 *
 * Errors are written to err as "<field> <value as given>: <problem>" (or
 * "<field>: <problem>" when there is no value to show) and returned as
 * -EINVAL, or -ERANGE for a value that is well formed but out of range.
 */
#ifndef KVMEM_CORE_SIZE_H
#define KVMEM_CORE_SIZE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIZE_MAX_BYTES ((uint64_t)INT64_MAX)

/* Text to bytes, no message: 0, -EINVAL (not a size), -ERANGE (above SIZE_MAX_BYTES). */
int size_parse(const char *s, uint64_t *out);
/* "1.5 GiB"-style rendering into buf. */
const char *size_format(uint64_t bytes, char *buf, size_t len);

/* A size given as text (a command-line flag), at most max bytes. */
int size_text(const char *field, const char *s, uint64_t max, uint64_t *out, char *err,
	      size_t errlen);

/* What a JSON number given for a size means (see the convention above). */
enum size_json_numbers {
	SIZE_JSON_BYTES,	/* a byte count: control requests */
	SIZE_JSON_TEXT_ONLY,	/* refused, saying what to write: the host config */
};

/* A size given as JSON (a string, or a number as nums says), at most max bytes. NULL: missing. */
int size_json(const char *field, const json_t *v, enum size_json_numbers nums, uint64_t max,
	      uint64_t *out, char *err, size_t errlen);

/* A JSON integer from min to max (counts, rates); a real, even 2.0, is refused. */
int size_json_integer(const char *field, const json_t *v, int64_t min, int64_t max, int64_t *out,
		      char *err, size_t errlen);

/*
 * A finite JSON number from min to max (percentages, seconds). what names
 * the unit in the message ("seconds"), or NULL for a plain number.
 */
int size_json_number(const char *field, const json_t *v, double min, double max,
		     const char *what, double *out, char *err, size_t errlen);

/*
 * An interval in seconds (a JSON number) as whole milliseconds, at most
 * max_s. With zero_never, 0 means "never" and is allowed. A positive value
 * below 1 ms is refused rather than rounded to 0, which would read as never
 * (or as "no wait at all"); above that it is rounded to the nearest ms.
 */
int size_json_seconds_ms(const char *field, const json_t *v, double max_s, bool zero_never,
			 uint32_t *out_ms, char *err, size_t errlen);

#endif
