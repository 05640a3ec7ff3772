"""Helpers for the tests that boot a stock Linux kernel under kvmem: the kernel
image (Debian's linux-image-amd64; KVMEM_TEST_KERNEL names another), the
initramfs tests/linux/mkinitramfs.sh makes from it, and what the environment
asks of every boot (KVMEM_LINUX_CPUS vCPUs, KVMEM_LINUX_APPEND on the command
line, KVMEM_LINUX_TIMERS=0 where they must boot without timer interrupts;
the defaults are right for hardware KVM and the nested SVM VM alike).
Booting needs hardware-virtualized KVM: require_linux() skips,
saying why, everywhere else."""
import atexit
import glob
import os
import shutil
import subprocess
import sys
import tempfile

from kvmemtest import ACCEL, check, finish

HERE = os.path.dirname(os.path.abspath(__file__))
MKINITRAMFS = os.path.join(HERE, "..", "linux", "mkinitramfs.sh")
APPEND = os.environ.get("KVMEM_LINUX_APPEND", "")
CPUS = int(os.environ.get("KVMEM_LINUX_CPUS", "2"))
# Whether the guests have timer interrupts (KVMEM_LINUX_TIMERS=0: booted
# without, nothing that sleeps in a guest wakes, and the tests leave that out).
TIMERS = os.environ.get("KVMEM_LINUX_TIMERS", "1") != "0"


def without_timers(what):
    """Say that a part of a test does not run because the guests have no timer interrupts."""
    print(f"info   not checked here: {what}: it needs the guest's timer interrupts, which this "
          "environment's Linux guests do not have (KVMEM_LINUX_TIMERS=0)", flush=True)


def find_kernel():
    env = os.environ.get("KVMEM_TEST_KERNEL")
    if env:
        return env if os.access(env, os.R_OK) else None
    for path in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        if os.access(path, os.R_OK):
            return path
    return None


def cmdline(extra):
    """The kernel command line of a test's boot: the serial console, a panic that ends the VM,
    what the environment asks for, and the test's own."""
    return " ".join(s for s in ("console=ttyS0 panic=-1", APPEND, extra) if s)


def require_linux():
    """Skip (77) unless a stock kernel can boot here; returns (kernel, initramfs), the
    initramfs made for this test in a directory removed at exit."""
    if ACCEL != "kvm":
        print(f"SKIP   Linux guests need hardware-virtualized KVM: the {ACCEL} accelerator "
              "cannot run an unmodified kernel (test_linux checks that it says so)", flush=True)
        sys.exit(77)
    kernel = find_kernel()
    if kernel is None:
        print("SKIP   no readable /boot/vmlinuz-* (install Debian's linux-image-amd64) and no "
              "KVMEM_TEST_KERNEL", flush=True)
        sys.exit(77)
    print(f"kernel image: {kernel}", flush=True)
    tmp = tempfile.mkdtemp(prefix="kvmem-test-linux-")
    atexit.register(shutil.rmtree, tmp, True)
    initrd = os.path.join(tmp, "initramfs.gz")
    r = subprocess.run(["bash", MKINITRAMFS, kernel, initrd], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        check(False, f"mkinitramfs.sh makes the initramfs ({r.stdout.strip()} "
                     f"{r.stderr.strip()})")
        finish()
    print(r.stdout.strip(), flush=True)
    return kernel, initrd
