/* SPDX-License-Identifier: MIT */
/*
 * An 8250-family UART (a 16550A) on a PC's first serial port, for a Linux
 * guest's console: what Linux's 8250 driver probes and drives, and what
 * earlyprintk polls. Output only: the transmitter is always empty, because
 * a byte written goes to the VM's console at once (console_put: queued for
 * the console's writer thread, dropped and counted when its ring is full),
 * so a vCPU never waits for the host's output. The receiver never has
 * data. The registers, after the 16550A data sheet (offsets from the base):
 *
 *   0  RBR (read, always 0) / THR (write)    DLL with LCR.DLAB
 *   1  IER (the low 4 bits)                  DLM with LCR.DLAB
 *   2  IIR (read) / FCR (write)
 *   3  LCR   4  MCR   5  LSR   6  MSR   7  SCR
 *
 * Interrupts: of the four sources only "transmitter holding register
 * empty" ever happens. It is pending from the moment THR empties (at once,
 * after every write) or IER.ETBEI is turned on, until the driver reads IIR
 * while IIR names it, or writes THR; the line (an ISA interrupt, edge
 * triggered) is high while an enabled source is pending. A THR write drops
 * and raises it again, the edge that interrupts the guest again after the
 * driver's handler filled the FIFO.
 *
 * Runs on vCPU threads; `lock` guards the registers (a guest's vCPUs may
 * reach the port at once). Lock order: uart->lock, then the console's.
 * Migration and snapshots move the registers (uart_save, uart_load); the
 * line is not state of its own but what they say, driven again on load.
 */
#define LOG_TAG "uart"
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/vm_internal.h"

#define UART_PORTS 8

#define REG_DATA 0
#define REG_IER 1
#define REG_IIR 2 /* FCR when written */
#define REG_LCR 3
#define REG_MCR 4
#define REG_LSR 5
#define REG_MSR 6
#define REG_SCR 7

#define IER_ETBEI 0x02	/* interrupt when THR is empty */
#define IER_MASK 0x0f	/* the four source enables; the upper bits read 0 on a 16550A */
#define IIR_NONE 0x01
#define IIR_THRE 0x02
#define IIR_FIFO 0xc0	/* FIFOs enabled (FCR bit 0): the driver's test for a 16550A */
#define FCR_ENABLE 0x01
#define LCR_DLAB 0x80
#define MCR_DTR 0x01
#define MCR_RTS 0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10
#define MCR_MASK 0x1f
#define LSR_THRE 0x20	/* THR empty */
#define LSR_TEMT 0x40	/* transmitter empty */
#define MSR_CTS 0x10
#define MSR_DSR 0x20
#define MSR_RI 0x40
#define MSR_DCD 0x80

struct uart {
	struct vm *vm;
	uint32_t gsi;
	pthread_mutex_t lock;	/* guards everything below */
	uint8_t ier, lcr, mcr, scr, dll, dlm;
	bool fifo;		/* FCR bit 0 */
	bool thre_pending;	/* the THR-empty interrupt is pending */
	bool line;		/* the level last driven on gsi */
	bool line_failed;	/* driving it failed once (logged): no interrupts */
};

/* The IIR the registers give now. Lock held. */
static uint8_t iir(const struct uart *u)
{
	uint8_t v = u->fifo ? IIR_FIFO : 0;

	if ((u->ier & IER_ETBEI) && u->thre_pending)
		return v | IIR_THRE;
	return v | IIR_NONE;
}

/*
 * Drive the line to what the pending, enabled sources say: when it changes,
 * or always (force: the kernel's idea of it is not known). Lock held.
 */
static void drive_line(struct uart *u, bool force)
{
	bool level = !(iir(u) & IIR_NONE);
	int ret;

	if ((level == u->line && !force) || u->line_failed)
		return;
	ret = vm_irq_line(u->vm, u->gsi, level);
	if (ret) {
		log_warn("%s: uart interrupt line %u: %s: the guest's driver gets no interrupts",
			 u->vm->name, u->gsi, strerror(-ret));
		u->line_failed = true;
		return;
	}
	u->line = level;
}

static void update_line(struct uart *u)
{
	drive_line(u, false);
}

/* Modem status: in loopback the outputs feed the inputs, else a modem is there. */
static uint8_t msr(const struct uart *u)
{
	if (!(u->mcr & MCR_LOOP))
		return MSR_DCD | MSR_DSR | MSR_CTS;
	return (u->mcr & MCR_DTR ? MSR_DSR : 0) | (u->mcr & MCR_RTS ? MSR_CTS : 0) |
	       (u->mcr & MCR_OUT1 ? MSR_RI : 0) | (u->mcr & MCR_OUT2 ? MSR_DCD : 0);
}

static void uart_read(void *opaque, struct vcpu *vcpu, uint64_t off, void *data,
		      unsigned int len)
{
	struct uart *u = opaque;
	uint8_t v = 0;

	(void)vcpu;
	pthread_mutex_lock(&u->lock);
	switch (off) {
	case REG_DATA:
		v = u->lcr & LCR_DLAB ? u->dll : 0;
		break;
	case REG_IER:
		v = u->lcr & LCR_DLAB ? u->dlm : u->ier;
		break;
	case REG_IIR:
		v = iir(u);
		/* Reading IIR while it names THR empty is what clears that interrupt. */
		if ((v & ~IIR_FIFO) == IIR_THRE)
			u->thre_pending = false;
		break;
	case REG_LCR:
		v = u->lcr;
		break;
	case REG_MCR:
		v = u->mcr;
		break;
	case REG_LSR:
		v = LSR_THRE | LSR_TEMT;
		break;
	case REG_MSR:
		v = msr(u);
		break;
	case REG_SCR:
		v = u->scr;
		break;
	}
	update_line(u);
	pthread_mutex_unlock(&u->lock);
	/* Byte registers: a wider access reads the byte and zeros above it. */
	bus_data_put(data, len, v);
}

static void uart_write(void *opaque, struct vcpu *vcpu, uint64_t off, const void *data,
		       unsigned int len)
{
	struct uart *u = opaque;
	uint8_t v = (uint8_t)bus_data_get(data, len);

	(void)vcpu;
	pthread_mutex_lock(&u->lock);
	switch (off) {
	case REG_DATA:
		if (u->lcr & LCR_DLAB) {
			u->dll = v;
			break;
		}
		/* In loopback a real UART keeps the byte to itself. */
		if (!(u->mcr & MCR_LOOP) && u->vm->console)
			console_put(u->vm->console, &v, 1);
		/* Sent at once: THR empties again, with a fresh edge on the line. */
		u->thre_pending = false;
		update_line(u);
		u->thre_pending = true;
		break;
	case REG_IER:
		if (u->lcr & LCR_DLAB) {
			u->dlm = v;
			break;
		}
		/* Enabling it with THR empty makes the interrupt pending (the driver tests this). */
		if (!(u->ier & IER_ETBEI) && (v & IER_ETBEI))
			u->thre_pending = true;
		u->ier = v & IER_MASK;
		break;
	case REG_IIR:
		u->fifo = v & FCR_ENABLE;
		break;
	case REG_LCR:
		u->lcr = v;
		break;
	case REG_MCR:
		u->mcr = v & MCR_MASK;
		break;
	case REG_SCR:
		u->scr = v;
		break;
	default:
		break; /* LSR and MSR are read-only */
	}
	update_line(u);
	pthread_mutex_unlock(&u->lock);
}

static const struct bus_ops uart_ops = {
	.read = uart_read,
	.write = uart_write,
};

int uart_create(struct vm *vm, uint16_t port, uint32_t gsi, struct uart **out)
{
	struct uart *u = kv_zalloc(sizeof(*u));
	int ret;

	if (!u)
		return -ENOMEM;
	u->vm = vm;
	u->gsi = gsi;
	pthread_mutex_init(&u->lock, NULL);
	ret = bus_register(&vm->pio_bus, port, UART_PORTS, &uart_ops, u);
	if (ret) {
		pthread_mutex_destroy(&u->lock);
		kv_free(u);
		return ret;
	}
	*out = u;
	return 0;
}

json_t *uart_save(struct uart *u)
{
	json_t *st;

	pthread_mutex_lock(&u->lock);
	st = json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:b, s:b}", "ier", u->ier, "lcr", u->lcr,
		       "mcr", u->mcr, "scr", u->scr, "dll", u->dll, "dlm", u->dlm, "fifo", u->fifo,
		       "thre_pending", u->thre_pending);
	pthread_mutex_unlock(&u->lock);
	return st;
}

int uart_load(struct uart *u, json_t *st, char *why, size_t whylen)
{
	json_t *fifo = json_object_get(st, "fifo"), *thre = json_object_get(st, "thre_pending");
	uint32_t ier, lcr, mcr, scr, dll, dlm;

	/*
	 * Checked whole before any register changes (a refused state leaves the
	 * UART as it was), each as a guest's writes could leave it.
	 */
	if (dev_state_reg(st, "uart", "ier", IER_MASK, &ier, why, whylen) ||
	    dev_state_reg(st, "uart", "lcr", UINT8_MAX, &lcr, why, whylen) ||
	    dev_state_reg(st, "uart", "mcr", MCR_MASK, &mcr, why, whylen) ||
	    dev_state_reg(st, "uart", "scr", UINT8_MAX, &scr, why, whylen) ||
	    dev_state_reg(st, "uart", "dll", UINT8_MAX, &dll, why, whylen) ||
	    dev_state_reg(st, "uart", "dlm", UINT8_MAX, &dlm, why, whylen))
		return -EINVAL;
	if (!json_is_boolean(fifo) || !json_is_boolean(thre)) {
		snprintf(why, whylen, "uart.%s: must be true or false",
			 json_is_boolean(fifo) ? "thre_pending" : "fifo");
		return -EINVAL;
	}
	pthread_mutex_lock(&u->lock);
	u->ier = (uint8_t)ier;
	u->lcr = (uint8_t)lcr;
	u->mcr = (uint8_t)mcr;
	u->scr = (uint8_t)scr;
	u->dll = (uint8_t)dll;
	u->dlm = (uint8_t)dlm;
	u->fifo = json_is_true(fifo);
	u->thre_pending = json_is_true(thre);
	/*
	 * The interrupt controllers came with the machine's state, but the level
	 * this device holds on its line is KVM's own per-source record, which
	 * travels with nothing: driven now, whatever it was here before (a
	 * rollback), so the next change is an edge the guest sees.
	 */
	u->line_failed = false;
	drive_line(u, true);
	pthread_mutex_unlock(&u->lock);
	return 0;
}

void uart_destroy(struct uart *u)
{
	if (!u)
		return;
	pthread_mutex_destroy(&u->lock);
	kv_free(u);
}
