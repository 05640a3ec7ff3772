/* SPDX-License-Identifier: MIT */
/*
 * /init of the initramfs tests/linux/mkinitramfs.sh makes for a Linux guest
 * of kvmem: a static program that needs nothing else in the image. It
 * mounts /proc, /sys and /dev, says on the console what the guest sees
 * (kernel, vCPUs, MemTotal), loads the virtio modules the image carries
 * (in the order of /lib/modules/load) and waits for the balloon driver to
 * bind kvmem's device. With kvmem.wl= on the command line it then runs the
 * workload, /bin/kvmem-linux-wl (src/guest/linux: the kvmem guest's engine,
 * which reads kvmem.wl= itself), whose kvmem-wl: lines go to the console as
 * they come. Then it ends the VM. Every line of its own starts
 * "kvmem-linux: ".
 *
 * How it ends, from the kernel command line:
 *   kvmem.end=poweroff   (default) reboot(RB_POWER_OFF): ACPI S5, status 0
 *   kvmem.end=reboot     reboot(RB_AUTOBOOT): the keyboard controller's reset
 *   kvmem.status=N       status N through kvmem's system-control device
 *   kvmem.wl=SPEC        the workload's status the same way (kvmem.status=
 *                        wins), as a kvmem guest's power-off gives it;
 *                        then=sleep and then=free never end: the VM runs
 *                        until kvmem stops it, as a kvmem guest's would
 * and whenever a step failed, with status 1 the same way, so a broken guest
 * never looks like a clean power-off. The device's window is mapped from
 * /dev/mem: it lies outside RAM, where the kernel lets root map it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "core/layout.h"

#define MODULES "/lib/modules"
#define BALLOON_DRIVER "/sys/bus/virtio/drivers/virtio_balloon"
#define BIND_WAIT_S 60
#define WL_PROGRAM "/bin/kvmem-linux-wl"

static int failed;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n = snprintf(line, sizeof(line), "kvmem-linux: ");

	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	if (write(STDOUT_FILENO, line, (size_t)n) < 0)
		failed = 1;
}

/* A step that did not work: said, and remembered for the exit status. */
static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
	char msg[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	say("FAIL %s", msg);
	failed = 1;
}

static void mount_fs(const char *type, const char *dir)
{
	mkdir(dir, 0755);
	if (mount(type, dir, type, 0, NULL) < 0 && errno != EBUSY)
		fail("mount %s on %s: %s", type, dir, strerror(errno));
}

/* The first line of path that starts with key, into buf; 0 or -1. */
static int read_line(const char *path, const char *key, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	int ret = -1;

	if (!f)
		return -1;
	while (fgets(buf, (int)len, f)) {
		if (!strncmp(buf, key, strlen(key))) {
			buf[strcspn(buf, "\n")] = '\0';
			ret = 0;
			break;
		}
	}
	fclose(f);
	return ret;
}

/* The value of name= on the kernel command line, or NULL. */
static const char *cmdline_arg(const char *name, char *buf, size_t len)
{
	char line[4096];
	size_t n = strlen(name);

	if (read_line("/proc/cmdline", "", line, sizeof(line)))
		return NULL;
	for (char *tok = strtok(line, " "); tok; tok = strtok(NULL, " ")) {
		if (!strncmp(tok, name, n) && tok[n] == '=') {
			snprintf(buf, len, "%s", tok + n + 1);
			return buf;
		}
	}
	return NULL;
}

static void load_modules(void)
{
	char name[256];
	FILE *list = fopen(MODULES "/load", "r");

	if (!list) {
		say("no " MODULES "/load: no modules to load");
		return;
	}
	while (fgets(name, sizeof(name), list)) {
		char path[512];
		int fd;

		name[strcspn(name, "\n")] = '\0';
		if (!name[0])
			continue;
		snprintf(path, sizeof(path), MODULES "/%s", name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			fail("module %s: %s", name, strerror(errno));
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
			fail("loading %s: %s", name, strerror(errno));
		else
			say("module %s loaded", name);
		close(fd);
	}
	fclose(list);
}

/* The virtio device the balloon driver bound, once it has: its name into dev. */
static int balloon_bound(char *dev, size_t len)
{
	DIR *d = opendir(BALLOON_DRIVER);
	struct dirent *e;
	int ret = -1;

	if (!d)
		return -1;
	while ((e = readdir(d))) {
		if (!strncmp(e->d_name, "virtio", 6)) {
			snprintf(dev, len, "%s", e->d_name);
			ret = 0;
			break;
		}
	}
	closedir(d);
	return ret;
}

static void wait_balloon(void)
{
	char dev[256], path[320], features[128] = "";

	for (int i = 0; i < BIND_WAIT_S * 10; i++) {
		if (!balloon_bound(dev, sizeof(dev))) {
			snprintf(path, sizeof(path), "/sys/bus/virtio/devices/%s/features", dev);
			read_line(path, "", features, sizeof(features));
			say("virtio_balloon bound to %s, features %s", dev, features);
			return;
		}
		usleep(100 * 1000);
	}
	fail("virtio_balloon bound no device in %d s", BIND_WAIT_S);
}

/* The workload, run to its end: its exit status, or 1 when it could not run or was killed (said). */
static int run_workload(void)
{
	pid_t pid;
	int st;

	say("workload %s", WL_PROGRAM);
	pid = fork();
	if (pid < 0) {
		fail("fork: %s", strerror(errno));
		return 1;
	}
	if (!pid) {
		execl(WL_PROGRAM, WL_PROGRAM, (char *)NULL);
		say("FAIL exec %s: %s", WL_PROGRAM, strerror(errno));
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0) {
		if (errno != EINTR) {
			fail("waiting for the workload: %s", strerror(errno));
			return 1;
		}
	}
	if (!WIFEXITED(st)) {
		fail("the workload was killed by signal %d", WTERMSIG(st));
		return 1;
	}
	say("workload status %d", WEXITSTATUS(st));
	return WEXITSTATUS(st);
}

/*
 * Before the VM ends: the console's lines are in the UART driver's buffer,
 * sent as the UART's interrupts come, and would be lost with the VM.
 */
static void drain_console(void)
{
	tcdrain(STDOUT_FILENO);
}

/* Status through kvmem's system-control device; returns only if that failed. */
static void exit_status(int status)
{
	int fd = open("/dev/mem", O_RDWR | O_SYNC | O_CLOEXEC);
	volatile uint32_t *reg;
	void *p;

	say("exit %d", status);
	if (fd < 0) {
		say("FAIL /dev/mem: %s", strerror(errno));
		return;
	}
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)LAYOUT_MMIO_SYSCTL);
	close(fd);
	if (p == MAP_FAILED) {
		say("FAIL mapping the system-control device: %s", strerror(errno));
		return;
	}
	reg = (volatile uint32_t *)((char *)p + ABI_SYS_POWEROFF);
	drain_console();
	*reg = (uint32_t)status;
}

int main(void)
{
	char buf[256], end[32], status[16], wl[512];
	struct utsname u;
	int wl_status = -1;
	long cpus;

	mount_fs("proc", "/proc");
	mount_fs("sysfs", "/sys");
	mount_fs("devtmpfs", "/dev");
	/* The kernel opened /dev/console for us only if the image had one. */
	if (fcntl(STDOUT_FILENO, F_GETFD) < 0) {
		int fd = open("/dev/console", O_RDWR);

		if (fd >= 0) {
			dup2(fd, STDIN_FILENO);
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
		}
	}
	say("init");
	if (!uname(&u))
		say("kernel %s %s", u.release, u.machine);
	cpus = sysconf(_SC_NPROCESSORS_ONLN);
	say("cpus %ld", cpus);
	if (!read_line("/proc/meminfo", "MemTotal:", buf, sizeof(buf)))
		say("%s", buf);
	else
		fail("no MemTotal in /proc/meminfo");
	load_modules();
	wait_balloon();
	if (cmdline_arg("kvmem.wl", wl, sizeof(wl)))
		wl_status = run_workload();

	sync();
	if (cmdline_arg("kvmem.status", status, sizeof(status)))
		exit_status(atoi(status));
	else if (wl_status >= 0)
		exit_status(wl_status ? wl_status : failed);
	else if (failed)
		exit_status(1);
	else if (cmdline_arg("kvmem.end", end, sizeof(end)) && !strcmp(end, "reboot")) {
		say("reboot");
		drain_console();
		reboot(RB_AUTOBOOT);
	}
	/* The default, and the way out when the status could not be given (said above). */
	say("poweroff");
	drain_console();
	reboot(RB_POWER_OFF);
	/* Still here: the power-off did not end the VM. init must not exit (the kernel panics). */
	say("FAIL the VM did not end: %s", strerror(errno));
	for (;;)
		pause();
}
