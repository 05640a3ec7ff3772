/* SPDX-License-Identifier: MIT */
/*
 * A Linux guest's PC ports without a guest, driven through the port bus as
 * a vCPU's exits would: the 8250 UART through the probes Linux's 8250
 * driver makes (IER, loopback, FIFO, EFR, scratch) and the THR-empty
 * interrupt it relies on (raised when enabled, cleared by reading IIR,
 * a fresh edge after every byte), its bytes as console lines; the ports
 * that end the VM (the keyboard controller's reset, ACPI S5), and the
 * PM timer's rate.
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
static struct vm vm = { .name = (char *)"lnx", .accel = &fake_accel };
static struct vcpu vcpu = { .vm = &vm };
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_uart_passes_linux_8250_probes_as_a_16550a),
		cmocka_unit_test(test_uart_thre_interrupt_as_the_driver_expects),
		cmocka_unit_test(test_pc_ports_answer_what_linux_polls),
		cmocka_unit_test(test_pc_pm_timer_counts_at_its_rate),
		cmocka_unit_test(test_pc_power_off_and_reset_stop_the_vm),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
