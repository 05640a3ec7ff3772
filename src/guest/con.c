/* SPDX-License-Identifier: MIT */
/*
 * Console output and the guest's printf.
 *
 * Each vCPU formats into its own line buffer (vCPU-local, no lock) and hands
 * a complete line to the console device with two MMIO writes (buffer gpa,
 * then length). The device's BUF_GPA register is shared by all vCPUs, so
 * con_lock covers the pair; it also keeps lines whole. The device reads the
 * buffer by gpa, which is its virtual address only under kvm: it goes
 * through virt_to_phys() like every address handed to a device.
 */
#include "rt.h"

#define LINE_MAX 512

struct con_line {
	char buf[LINE_MAX];
	size_t len;
} __attribute__((aligned(64)));

static struct con_line lines[ABI_MAX_CPUS];	/* by vCPU, owner only */
static struct rt_spinlock con_lock;		/* the BUF_GPA/BUF_LEN pair */

static void emit(struct con_line *l)
{
	gpa_t con = rt_console_gpa();

	if (l->len && !gpa_is_null(con)) {
		rt_spin_lock(&con_lock);
		mmio_write64(gpa_add(con, ABI_CON_BUF_GPA), gpa_val(virt_to_phys(l->buf)));
		mmio_write32(gpa_add(con, ABI_CON_BUF_LEN), (uint32_t)l->len);
		rt_spin_unlock(&con_lock);
	}
	l->len = 0;
}

static void con_putc(struct con_line *l, char c)
{
	l->buf[l->len++] = c;
	if (c == '\n' || l->len == LINE_MAX)
		emit(l);
}

void con_write(const char *s, size_t len)
{
	struct con_line *l = &lines[rt_cpu()];
	size_t i;

	for (i = 0; i < len; i++)
		con_putc(l, s[i]);
}

void con_flush(void)
{
	emit(&lines[rt_cpu()]);
}

/* Where formatted characters go: a bounded buffer or the console line. */
struct out {
	char *buf;		/* NULL: console */
	size_t size;
	size_t len;		/* characters produced, even past size */
	struct con_line *line;
};

static void put(struct out *o, char c)
{
	if (!o->buf)
		con_putc(o->line, c);
	else if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void put_padded(struct out *o, const char *s, size_t n, unsigned width,
		       bool left, char pad)
{
	size_t i;

	if (!left)
		for (i = n; i < width; i++)
			put(o, pad);
	for (i = 0; i < n; i++)
		put(o, s[i]);
	if (left)
		for (i = n; i < width; i++)
			put(o, ' ');
}

static void put_num(struct out *o, uint64_t v, bool neg, unsigned base, bool upper,
		    unsigned width, bool left, bool zero, const char *prefix)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char tmp[24];
	size_t n = 0;
	size_t plen = prefix ? strlen(prefix) : 0;
	size_t lead = plen + (neg ? 1 : 0);
	size_t i;

	do {
		tmp[n++] = digits[v % base];
		v /= base;
	} while (v);
	/* Zero padding goes between the sign/prefix and the digits. */
	if (!left && !zero)
		for (i = n + lead; i < width; i++)
			put(o, ' ');
	if (neg)
		put(o, '-');
	for (i = 0; i < plen; i++)
		put(o, prefix[i]);
	if (!left && zero)
		for (i = n + lead; i < width; i++)
			put(o, '0');
	while (n)
		put(o, tmp[--n]);
	if (left)
		for (i = n + lead; i < width; i++)
			put(o, ' ');
}

static void format(struct out *o, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		bool left = false, zero = false, neg = false;
		unsigned width = 0, lng = 0;
		size_t prec = SIZE_MAX;
		uint64_t u;
		int64_t s;

		if (*fmt != '%') {
			put(o, *fmt);
			continue;
		}
		fmt++;
		for (;; fmt++) {
			if (*fmt == '-')
				left = true;
			else if (*fmt == '0')
				zero = true;
			else
				break;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (unsigned)(*fmt++ - '0');
		/* Precision: only meaningful (and only honoured) for %s. */
		if (*fmt == '.') {
			fmt++;
			if (*fmt == '*') {
				int p = va_arg(ap, int);

				prec = p < 0 ? SIZE_MAX : (size_t)p;
				fmt++;
			} else {
				prec = 0;
				while (*fmt >= '0' && *fmt <= '9')
					prec = prec * 10 + (size_t)(*fmt++ - '0');
			}
		}
		for (;; fmt++) {
			if (*fmt == 'l')
				lng++;
			else if (*fmt == 'z')
				lng = 2;
			else
				break;
		}
		switch (*fmt) {
		case 'd':
		case 'i':
			s = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			neg = s < 0;
			u = neg ? -(uint64_t)s : (uint64_t)s;
			put_num(o, u, neg, 10, false, width, left, zero, NULL);
			break;
		case 'u':
		case 'x':
		case 'X':
			u = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
			put_num(o, u, false, *fmt == 'u' ? 10 : 16, *fmt == 'X', width, left,
				zero, NULL);
			break;
		case 'p':
			/* The pointer as the guest sees it (virtual), not a gpa. */
			u = (uint64_t)(uintptr_t)va_arg(ap, void *);
			put_num(o, u, false, 16, false, width, left, zero, "0x");
			break;
		case 'c': {
			char c = (char)va_arg(ap, int);

			put_padded(o, &c, 1, width, left, ' ');
			break;
		}
		case 's': {
			const char *str = va_arg(ap, const char *);

			if (!str)
				str = "(null)";
			put_padded(o, str, strnlen(str, prec), width, left, ' ');
			break;
		}
		case '%':
			put(o, '%');
			break;
		case '\0':
			return;
		default:
			/* Unknown conversion: show it rather than guess at va_arg. */
			put(o, '%');
			put(o, *fmt);
			break;
		}
	}
}

int rt_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { .buf = buf, .size = size };

	format(&o, fmt, ap);
	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return (int)o.len;
}

int rt_snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = rt_vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

void rt_vprintf(const char *fmt, va_list ap)
{
	struct out o = { .line = &lines[rt_cpu()] };

	format(&o, fmt, ap);
}

void rt_printf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	rt_vprintf(fmt, ap);
	va_end(ap);
}
