/* SPDX-License-Identifier: MIT */
/*
 * Every warning a guest can trigger is rate-limited per VM: a hostile guest
 * flooding one (a write to no device, to an unknown sysctl or console
 * register, to a read-only virtio register, a balloon request with PFNs
 * outside its RAM) keeps its own log within a burst and does not silence the
 * same warning for another VM. Two VMs without a guest: each device is
 * driven through its bus handlers, as a vCPU's MMIO exit would.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "balloon/balloon.h"
#include "core/log.h"
#include "core/virtio/virtio_mmio.h"
#include "core/vm_internal.h"
#include "fake_virtq.h"
#include "mem/gm.h"

#define FLOOD 200
/* A second may turn over during a flood: at most two bursts of it are logged. */
#define MOST (2 * LOG_RATELIMIT_BURST)

static int saved_stderr = -1, capture_fd = -1;

static void capture_start(void)
{
	capture_fd = memfd_create("stderr", MFD_CLOEXEC);
	assert_true(capture_fd >= 0);
	saved_stderr = dup(STDERR_FILENO);
	assert_true(saved_stderr >= 0);
	assert_int_equal(dup2(capture_fd, STDERR_FILENO), STDERR_FILENO);
}

static char *capture_end(void)
{
	off_t len = lseek(capture_fd, 0, SEEK_END);
	char *s = calloc(1, (size_t)len + 1);

	assert_int_equal(dup2(saved_stderr, STDERR_FILENO), STDERR_FILENO);
	close(saved_stderr);
	assert_non_null(s);
	assert_int_equal(pread(capture_fd, s, (size_t)len, 0), len);
	close(capture_fd);
	return s;
}

/* Lines of `out` holding both `a` and `b`. */
static unsigned int lines_with(const char *out, const char *a, const char *b)
{
	unsigned int n = 0;

	for (const char *l = out; *l;) {
		const char *end = strchr(l, '\n');
		size_t len = end ? (size_t)(end - l) : strlen(l);
		char line[1024];

		snprintf(line, sizeof(line), "%.*s", (int)len, l);
		n += strstr(line, a) && strstr(line, b);
		l += len + (end ? 1 : 0);
	}
	return n;
}

/* The hostile VM's flood is held to a burst; the quiet VM's one warning is there. */
static void assert_quiet_vm_heard(const char *out, const char *what)
{
	unsigned int hostile = lines_with(out, "hostile", what);

	if (hostile < 1 || hostile > MOST || lines_with(out, "quiet", what) != 1)
		fail_msg("\"%s\": %u lines of the hostile VM (1-%d expected), %u of the quiet one "
			 "(1 expected); the log:\n%s",
			 what, hostile, MOST, lines_with(out, "quiet", what), out);
}

static struct vm hostile_vm = { .name = (char *)"hostile" };
static struct vm quiet_vm = { .name = (char *)"quiet" };

static void write_u64(const struct bus_ops *ops, void *opaque, struct vcpu *vcpu, uint64_t off)
{
	uint64_t v = 1;

	ops->write(opaque, vcpu, off, &v, sizeof(v));
}

/* --- the VM's own devices --- */

static void test_sysctl_unknown_register(void **state)
{
	char *out;

	(void)state;
	capture_start();
	for (int i = 0; i < FLOOD; i++)
		write_u64(&sysctl_ops, &hostile_vm, NULL, 0x7f8);
	write_u64(&sysctl_ops, &quiet_vm, NULL, 0x7f8);
	out = capture_end();
	assert_quiet_vm_heard(out, "sysctl write to unknown register");
	free(out);
}

static void test_bus_access_to_no_device(void **state)
{
	struct vcpu hostile_cpu = { .vm = &hostile_vm }, quiet_cpu = { .vm = &quiet_vm };
	struct bus empty = { 0 };
	uint32_t v = 0;
	char *out;

	(void)state;
	capture_start();
	for (int i = 0; i < FLOOD; i++)
		bus_dispatch(&empty, &hostile_cpu, 0xd0000000, &v, 4, true);
	bus_dispatch(&empty, &quiet_cpu, 0xd0000000, &v, 4, true);
	out = capture_end();
	assert_quiet_vm_heard(out, "hits no device");
	free(out);
}

static void test_console_unknown_register(void **state)
{
	struct console *hostile, *quiet;
	int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
	char *out;

	(void)state;
	assert_true(null >= 0);
	assert_int_equal(console_create(&hostile_vm, null, false, NULL, &hostile), 0);
	assert_int_equal(console_create(&quiet_vm, null, false, NULL, &quiet), 0);
	capture_start();
	for (int i = 0; i < FLOOD; i++)
		write_u64(&console_ops, hostile, NULL, 0x7f8);
	write_u64(&console_ops, quiet, NULL, 0x7f8);
	out = capture_end();
	console_destroy(hostile);
	console_destroy(quiet);
	close(null);
	assert_quiet_vm_heard(out, "console write to unknown register");
	free(out);
}

/* --- a virtio balloon in each VM: its transport and the device --- */

#define RAM (16ULL << 20)
#define RING(q) (0x300000ULL + 0x10000ULL * (q))
#define DATA 0x400000ULL
#define QSIZE 256

struct balloon_vm {
	struct gm *gm;
	struct balloon *b;
	struct virtio_dev *vdev;
	struct fake_vq fq[2];
};

static int no_discard(void *arg, gpa_t gpa, uint64_t len, enum balloon_discard_why why)
{
	(void)arg;
	(void)gpa;
	(void)why;
	return (int)(len / 4096);
}

static int no_undiscard(void *arg, gpa_t gpa, uint64_t len)
{
	(void)arg;
	(void)gpa;
	(void)len;
	return 0;
}

/* A balloon named after its VM, as balloon_create names it, up to DRIVER_OK. */
static void balloon_vm_up(struct balloon_vm *v, const char *vm)
{
	struct balloon_mem_ops mem = { no_discard, no_undiscard, NULL };
	struct balloon_params p = { .name = NULL };
	char name[32];

	snprintf(name, sizeof(name), "%s-balloon", vm);
	p.name = name;
	assert_int_equal(mem_create_anon(RAM, &v->gm), 0);
	assert_int_equal(balloon_create_on_gm(v->gm, &p, &mem, &v->b), 0);
	v->vdev = balloon_virtio_dev(v->b);
	for (unsigned int q = 0; q < 2; q++)
		fake_vq_init(&v->fq[q], v->gm, QSIZE, RING(q));
	assert_true(fake_virtio_negotiate(v->vdev, 1ULL << VIRTIO_F_VERSION_1));
	for (unsigned int q = 0; q < 2; q++)
		fake_virtio_setup_queue(v->vdev, q, &v->fq[q]);
	fake_virtio_driver_ok(v->vdev);
}

static void balloon_vm_down(struct balloon_vm *v)
{
	balloon_destroy(v->b);
	mem_destroy(v->gm);
}

/* Inflate a PFN the VM does not have: skipped, and a warning. */
static void inflate_outside_ram(struct balloon_vm *v)
{
	uint32_t pfn = 0xffffffff;
	struct fake_buf b = { DATA, sizeof(pfn), false };

	assert_int_equal(mem_write(v->gm, DATA, &pfn, sizeof(pfn)), 0);
	fake_vq_add_chain(&v->fq[0], &b, 1);
	virtio_dev_poll(v->vdev, false);
}

static void test_virtio_write_to_a_read_only_register(void **state)
{
	struct balloon_vm hostile, quiet;
	char *out;

	(void)state;
	balloon_vm_up(&hostile, "hostile");
	balloon_vm_up(&quiet, "quiet");
	capture_start();
	for (int i = 0; i < FLOOD; i++)
		fake_mmio_write(hostile.vdev, VIRTIO_MMIO_MAGIC_VALUE, 1);
	fake_mmio_write(quiet.vdev, VIRTIO_MMIO_MAGIC_VALUE, 1);
	out = capture_end();
	balloon_vm_down(&hostile);
	balloon_vm_down(&quiet);
	assert_quiet_vm_heard(out, "write to read-only or reserved register");
	free(out);
}

static void test_balloon_pfns_outside_ram(void **state)
{
	struct balloon_vm hostile, quiet;
	char *out;

	(void)state;
	balloon_vm_up(&hostile, "hostile");
	balloon_vm_up(&quiet, "quiet");
	capture_start();
	for (int i = 0; i < QSIZE - 1; i++)
		inflate_outside_ram(&hostile);
	inflate_outside_ram(&quiet);
	out = capture_end();
	balloon_vm_down(&hostile);
	balloon_vm_down(&quiet);
	assert_quiet_vm_heard(out, "PFNs outside guest RAM skipped");
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sysctl_unknown_register),
		cmocka_unit_test(test_bus_access_to_no_device),
		cmocka_unit_test(test_console_unknown_register),
		cmocka_unit_test(test_virtio_write_to_a_read_only_register),
		cmocka_unit_test(test_balloon_pfns_outside_ram),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
