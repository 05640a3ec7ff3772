/* SPDX-License-Identifier: MIT */
/*
 * A Linux guest's PC ports without a guest, driven through the port bus as
 * a vCPU's exits would: the 8250 UART through the probes Linux's 8250
 * driver makes (IER, loopback, FIFO, EFR, scratch) and the THR-empty
 * interrupt it relies on (raised when enabled, cleared by reading IIR,
 * a fresh edge after every byte), its bytes as console lines; the ports
 * that end the VM (the keyboard controller's reset, ACPI S5), and the
 * PM timer's rate. Their state as it migrates: saved and loaded into a
 * second machine's devices whole (the line driven again, the PM timer going
 * on from its count), and every malformed or out-of-range state refused
 * with its field named and the devices left as they were.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/layout.h"
#include "core/vm_internal.h"

/* The interrupt line as the UART drives it: every level change, in order. */
static char line_log[256];
static size_t line_len;

static int fake_irq_line(struct vm *vm, uint32_t gsi, bool level)
{
	(void)vm;
	assert_int_equal(gsi, LAYOUT_LINUX_COM1_GSI);
	if (line_len < sizeof(line_log) - 1)
		line_log[line_len++] = level ? '1' : '0';
	return 0;
}

static const struct accel_ops fake_accel = { .name = "fake", .irq_line = fake_irq_line };
static struct vm vm = { .name = (char *)"lnx", .accel = &fake_accel, .linux_machine = true };
static struct vcpu vcpu = { .vm = &vm };
/* The machine a migration of vm lands in: its own ports, loaded with vm's state. */
static struct vm dst = { .name = (char *)"dst", .accel = &fake_accel, .linux_machine = true };
static struct vcpu dst_vcpu = { .vm = &dst };
static int out[2];	/* the console's output: a pipe */

static uint8_t in8(uint16_t port)
{
	uint8_t v = 0x5a;

	bus_dispatch(&vm.pio_bus, &vcpu, port, &v, 1, false);
	return v;
}

static void out8(uint16_t port, uint8_t v)
{
	bus_dispatch(&vm.pio_bus, &vcpu, port, &v, 1, true);
}

#define COM1(reg) (LAYOUT_LINUX_COM1 + (reg))

static int setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	pthread_mutex_init(&vm.lock, NULL);
	pthread_cond_init(&vm.cond, NULL);
	if (mem_create_anon(16 << 20, &vm.gm) || bus_init_ports(&vm.pio_bus) || pipe(out) ||
	    console_create(&vm, out[1], false, NULL, &vm.console) ||
	    uart_create(&vm, LAYOUT_LINUX_COM1, LAYOUT_LINUX_COM1_GSI, &vm.uart) ||
	    pc_create(&vm, &vm.pc))
		return -1;
	pthread_mutex_init(&dst.lock, NULL);
	pthread_cond_init(&dst.cond, NULL);
	if (bus_init_ports(&dst.pio_bus) ||
	    uart_create(&dst, LAYOUT_LINUX_COM1, LAYOUT_LINUX_COM1_GSI, &dst.uart) ||
	    pc_create(&dst, &dst.pc))
		return -1;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	uart_destroy(vm.uart);
	pc_destroy(vm.pc);
	console_destroy(vm.console);
	close(out[1]);
	close(out[0]);
	bus_fini(&vm.pio_bus);
	mem_destroy(vm.gm);
	uart_destroy(dst.uart);
	pc_destroy(dst.pc);
	bus_fini(&dst.pio_bus);
	return 0;
}

/* What Linux's autoconfig reads to decide there is a 16550A (serial8250 "autoconfig"). */
static void test_uart_passes_linux_8250_probes_as_a_16550a(void **state)
{
	(void)state;
	/* IER: only the four enables stick, and they do. */
	out8(COM1(1), 0);
	assert_int_equal(in8(COM1(1)), 0);
	out8(COM1(1), 0xff);
	assert_int_equal(in8(COM1(1)), 0x0f);
	out8(COM1(1), 0);
	/* Loopback: the modem outputs come back as inputs (RTS|OUT2 -> CTS|DCD). */
	out8(COM1(4), 0x10 | 0x0a);
	assert_int_equal(in8(COM1(6)) & 0xf0, 0x90);
	out8(COM1(4), 0);
	/* Not in loopback a modem is there: DCD, DSR, CTS. */
	assert_int_equal(in8(COM1(6)) & 0xf0, 0xb0);
	/* FIFOs enabled: IIR's top bits say 16550A, and no interrupt is pending. */
	out8(COM1(2), 0x01);
	assert_int_equal(in8(COM1(2)), 0xc1);
	/* No EFR: with LCR 0xBF the register reads as IIR, never 0. */
	out8(COM1(3), 0xbf);
	assert_int_not_equal(in8(COM1(2)), 0);
	out8(COM1(3), 0);
	/* Scratch and LSR: the transmitter is always empty, nothing received. */
	out8(COM1(7), 0xa5);
	assert_int_equal(in8(COM1(7)), 0xa5);
	assert_int_equal(in8(COM1(5)), 0x60);
	/* The divisor latch holds its bytes and does not transmit. */
	out8(COM1(3), 0x80);
	out8(COM1(0), 0x01);
	out8(COM1(1), 0x00);
	assert_int_equal(in8(COM1(0)), 0x01);
	assert_int_equal(in8(COM1(1)), 0x00);
	out8(COM1(3), 0x03);
	assert_int_equal(in8(COM1(1)), 0);	/* IER again */
}

/* THRE: pending when enabled, cleared by the IIR read that names it, re-raised per byte. */
static void test_uart_thre_interrupt_as_the_driver_expects(void **state)
{
	char got[64] = { 0 };
	ssize_t n;

	(void)state;
	line_len = 0;
	out8(COM1(1), 0x02);			/* ETBEI: THR is empty, so pending */
	assert_int_equal(in8(COM1(2)) & 0x0f, 0x02);
	assert_int_equal(in8(COM1(2)) & 0x0f, 0x01);	/* the read cleared it */
	out8(COM1(1), 0);
	out8(COM1(1), 0x02);			/* re-enabled: pending again (THRE test) */
	assert_int_equal(in8(COM1(2)) & 0x0f, 0x02);
	out8(COM1(0), 'h');			/* a byte: drop and raise, a new edge */
	out8(COM1(0), 'i');
	out8(COM1(1), 0);			/* the driver stops transmitting */
	line_log[line_len] = '\0';
	assert_string_equal(line_log, "10" "10" "1" "01" "0");
	/* Loopback keeps bytes to itself; the rest reach the console as a line. */
	out8(COM1(4), 0x10);
	out8(COM1(0), 'X');
	out8(COM1(4), 0);
	out8(COM1(0), '\n');
	for (size_t i = 0; i < 200 && !strchr(got, '\n'); i++) {
		n = read(out[0], got, sizeof(got) - 1);
		if (n <= 0)
			usleep(10000);
	}
	assert_string_equal(got, "hi\n");
}

/* Ports that need an answer: the keyboard controller reads idle, CMOS reads 0, POST is quiet. */
static void test_pc_ports_answer_what_linux_polls(void **state)
{
	(void)state;
	assert_int_equal(in8(LAYOUT_LINUX_I8042_CMD) & 0x03, 0);	/* nothing in, room to write */
	out8(LAYOUT_LINUX_CMOS, 0x8a);
	assert_int_equal(in8(LAYOUT_LINUX_CMOS + 1), 0);	/* RTC register A: no update running */
	out8(LAYOUT_LINUX_POST, 0x55);
	assert_int_equal(vm.pio_bus.unclaimed, 0);
	assert_int_equal(in8(0x2f8 + 1), 0xff);			/* COM2: nothing there */
	assert_int_equal(vm.pio_bus.unclaimed, 1);
	/* PM1: status bits clear by writing 1, SCI_EN always reads set, the enables stick. */
	uint16_t v = 0x0120;
	bus_dispatch(&vm.pio_bus, &vcpu, LAYOUT_LINUX_PM1_EVT + 2, &v, 2, true);
	v = 0;
	bus_dispatch(&vm.pio_bus, &vcpu, LAYOUT_LINUX_PM1_EVT + 2, &v, 2, false);
	assert_int_equal(v, 0x0120);
	bus_dispatch(&vm.pio_bus, &vcpu, LAYOUT_LINUX_PM1_CNT, &v, 2, false);
	assert_int_equal(v & 1, 1);
	/* A sleep type kvmem does not have is ignored. */
	v = 3 << 10 | 1 << 13;
	bus_dispatch(&vm.pio_bus, &vcpu, LAYOUT_LINUX_PM1_CNT, &v, 2, true);
	assert_false(vm.stop_requested);
	assert_int_equal(vm.pio_bus.unclaimed, 1);
}

/* The PM timer runs at 3.579545 MHz: at least that many ticks per second slept. */
static void test_pc_pm_timer_counts_at_its_rate(void **state)
{
	uint32_t a, b;
	struct timespec t = { 0, 20 * 1000 * 1000 };

	(void)state;
	bus_dispatch(&vm.pio_bus, &vcpu, LAYOUT_LINUX_PM_TMR, &a, 4, false);
	nanosleep(&t, NULL);
	bus_dispatch(&vm.pio_bus, &vcpu, LAYOUT_LINUX_PM_TMR, &b, 4, false);
	assert_true(b - a >= 3579545 / 50);
	assert_true(b - a < 3579545 * 10);	/* not a clock of another rate */
}

/* The guest's power-off (S5 in PM1a_CNT with SLP_EN) and reset (0xFE to the i8042) end it. */
static void test_pc_power_off_and_reset_stop_the_vm(void **state)
{
	uint16_t v = LAYOUT_LINUX_S5_TYP << 10 | 1 << 13;

	(void)state;
	vm.exit_status = 42;
	bus_dispatch(&vm.pio_bus, &vcpu, LAYOUT_LINUX_PM1_CNT, &v, 2, true);
	assert_true(vm.stop_requested);
	assert_int_equal(vm.exit_status, VM_STATUS_STOPPED);
	vm.stop_requested = false;
	vm.exit_status = 42;
	out8(LAYOUT_LINUX_I8042_CMD, 0xaa);	/* another command: nothing */
	assert_false(vm.stop_requested);
	out8(LAYOUT_LINUX_I8042_CMD, 0xfe);
	assert_true(vm.stop_requested);
	assert_int_equal(vm.exit_status, VM_STATUS_STOPPED);
}

static uint8_t dst_in8(uint16_t port)
{
	uint8_t v = 0x5a;

	bus_dispatch(&dst.pio_bus, &dst_vcpu, port, &v, 1, false);
	return v;
}

static uint32_t pm_tmr_of(struct vm *m, struct vcpu *c)
{
	uint32_t v = 0;

	bus_dispatch(&m->pio_bus, c, LAYOUT_LINUX_PM_TMR, &v, 4, false);
	return v;
}

/* The devices' state as vm_save_platform gives it (the caller decrefs). */
static json_t *platform_of(struct vm *m)
{
	json_t *o = json_object();

	assert_non_null(o);
	assert_int_equal(vm_save_platform(m, o), 0);
	return o;
}

/* The state without the PM timer, which moves between two looks. */
static json_t *registers_of(struct vm *m)
{
	json_t *o = platform_of(m);

	json_object_del(json_object_get(o, "pc"), "pm_tmr");
	return o;
}

/*
 * Every register a guest can set, set to something other than reset's,
 * saved, loaded into the other machine's devices: they read the same, save
 * the same, the line is driven to the level they give, and the PM timer
 * goes on from the count saved rather than from this host's.
 */
static void test_platform_state_moves_whole(void **state)
{
	json_t *saved, *a, *b;
	uint16_t v;
	uint32_t t0, t1;
	char why[160] = "";

	(void)state;
	out8(COM1(3), 0x80);			/* DLAB: the divisor */
	out8(COM1(0), 0x0c);
	out8(COM1(1), 0x01);
	out8(COM1(3), 0x1b);			/* 8 bits, even parity */
	out8(COM1(4), 0x0b);			/* DTR RTS OUT2 */
	out8(COM1(7), 0x77);
	out8(COM1(2), 0x01);			/* FIFOs */
	out8(COM1(1), 0x02);			/* ETBEI: THR empty pending */
	out8(LAYOUT_LINUX_CMOS, 0x0b);
	v = 0x0121;
	bus_dispatch(&vm.pio_bus, &vcpu, LAYOUT_LINUX_PM1_EVT + 2, &v, 2, true);
	v = 0x0001 | 5 << 10;			/* SCI_EN and a sleep type, without SLP_EN */
	bus_dispatch(&vm.pio_bus, &vcpu, LAYOUT_LINUX_PM1_CNT, &v, 2, true);
	/* The PM timer far from this host's count, close to its wrap. */
	saved = platform_of(&vm);
	json_object_set_new(json_object_get(saved, "pc"), "pm_tmr", json_integer(0xfffffff0));
	assert_int_equal(vm_load_platform(&vm, saved, why, sizeof(why)), 0);
	json_decref(saved);

	saved = platform_of(&vm);
	line_len = 0;
	assert_int_equal(vm_load_platform(&dst, saved, why, sizeof(why)), 0);
	line_log[line_len] = '\0';
	/* THR empty, enabled: the new host's line is driven high. */
	assert_string_equal(line_log, "1");
	a = registers_of(&vm);
	b = registers_of(&dst);
	assert_true(json_equal(a, b));
	json_decref(a);
	json_decref(b);
	assert_int_equal(dst_in8(COM1(1)), 0x02);
	assert_int_equal(dst_in8(COM1(2)), 0xc2);	/* FIFOs, THR empty pending */
	assert_int_equal(dst_in8(COM1(3)), 0x1b);
	assert_int_equal(dst_in8(COM1(4)), 0x0b);
	assert_int_equal(dst_in8(COM1(7)), 0x77);
	v = 0;
	bus_dispatch(&dst.pio_bus, &dst_vcpu, LAYOUT_LINUX_PM1_EVT + 2, &v, 2, false);
	assert_int_equal(v, 0x0121);
	/* Continuous: from the count saved (across its wrap), not from this host's. */
	t0 = (uint32_t)json_integer_value(json_object_get(json_object_get(saved, "pc"), "pm_tmr"));
	t1 = pm_tmr_of(&dst, &dst_vcpu);
	assert_true(t1 - t0 < 3579545 / 2);
	json_decref(saved);
	/* Back to what the other tests' guest had. */
	out8(COM1(1), 0);
	out8(COM1(4), 0);
	out8(COM1(3), 0x03);
}

/*
 * A state with one field wrong (and another of the same device valid but
 * new) refuses to load, naming the field, and changes nothing of that
 * device; a UART refused drives no line.
 */
static void refuse(const char *dev, const char *key, json_t *value, const char *named)
{
	bool uart = !strcmp(dev, "uart");
	const char *other = uart ? (strcmp(key, "scr") ? "scr" : "dll")
				 : (strcmp(key, "pm1_en") ? "pm1_en" : "cmos_index");
	json_t *bad = platform_of(&dst), *before, *after;
	char why[160] = "";

	json_object_set_new(json_object_get(bad, dev), other, json_integer(0x42));
	if (value)
		json_object_set_new(json_object_get(bad, dev), key, value);
	else
		json_object_del(json_object_get(bad, dev), key);
	before = registers_of(&dst);
	line_len = 0;
	assert_int_equal(vm_load_platform(&dst, bad, why, sizeof(why)), -EINVAL);
	print_message("refused %s.%s: %s\n", dev, key, why);
	assert_non_null(strstr(why, named));
	after = registers_of(&dst);
	assert_true(json_equal(json_object_get(before, dev), json_object_get(after, dev)));
	if (uart)
		assert_int_equal(line_len, 0);
	json_decref(before);
	json_decref(after);
	json_decref(bad);
}

static void test_platform_state_refused_when_malformed(void **state)
{
	json_t *o;
	char why[160] = "";

	(void)state;
	refuse("uart", "ier", json_integer(0x10), "ier");	/* the upper bits read 0 */
	refuse("uart", "ier", json_integer(-1), "ier");
	refuse("uart", "lcr", json_integer(256), "lcr");
	refuse("uart", "mcr", json_integer(0x20), "mcr");
	refuse("uart", "scr", json_string("7"), "scr");
	refuse("uart", "dll", json_real(1.0), "dll");
	refuse("uart", "dlm", NULL, "dlm");
	refuse("uart", "fifo", json_integer(1), "fifo");
	refuse("uart", "thre_pending", json_null(), "thre_pending");
	refuse("pc", "cmos_index", json_integer(0x80), "cmos_index");	/* bit 7 is the NMI mask */
	refuse("pc", "pm1_sts", json_integer(0x10000), "pm1_sts");
	refuse("pc", "pm1_en", json_true(), "pm1_en");
	refuse("pc", "pm1_cnt", json_integer(0x2000), "SLP_EN");	/* held by no register */
	refuse("pc", "pm_tmr", json_integer(0x100000000), "pm_tmr");
	refuse("pc", "pm_tmr", NULL, "pm_tmr");
	/* A device's state that is not an object, or not there at all. */
	o = platform_of(&dst);
	json_object_set_new(o, "uart", json_array());
	assert_int_equal(vm_load_platform(&dst, o, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "uart"));
	json_object_del(o, "uart");
	assert_int_equal(vm_load_platform(&dst, o, why, sizeof(why)), -EINVAL);
	json_decref(o);
	/* A kvmem guest's machine has no such devices: another VM's state. */
	o = platform_of(&dst);
	dst.linux_machine = false;
	assert_int_equal(vm_load_platform(&dst, o, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "UART"));
	json_decref(o);
	o = json_object();
	assert_int_equal(vm_save_platform(&dst, o), 0);
	assert_int_equal(json_object_size(o), 0);	/* and saves none */
	assert_int_equal(vm_load_platform(&dst, o, why, sizeof(why)), 0);
	json_decref(o);
	dst.linux_machine = true;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_uart_passes_linux_8250_probes_as_a_16550a),
		cmocka_unit_test(test_uart_thre_interrupt_as_the_driver_expects),
		cmocka_unit_test(test_pc_ports_answer_what_linux_polls),
		cmocka_unit_test(test_pc_pm_timer_counts_at_its_rate),
		cmocka_unit_test(test_pc_power_off_and_reset_stop_the_vm),
		cmocka_unit_test(test_platform_state_moves_whole),
		cmocka_unit_test(test_platform_state_refused_when_malformed),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
