"""A stock Linux kernel boots under kvmem on hardware-virtualized KVM: Debian's
bzImage (linux-image-amd64; KVMEM_TEST_KERNEL names another) with a tiny
initramfs made here (tests/linux/mkinitramfs.sh: a static init and the virtio
modules). The kernel finds both vCPUs and its RAM, prints on the 8250 UART
(the console lines), the stock virtio_mmio and virtio_balloon drivers bind
kvmem's balloon device from the ACPI tables, and the guest's power-off (ACPI
S5) ends kvmem with status 0. A second boot ends through the system-control
device with the init's own status, the way a guest hands kvmem its result. A
third runs a kvmem guest's workload (kvmem.wl=) in the Linux guest: the init
runs kvmem-linux-wl (src/guest/linux), whose kvmem-wl: lines are the kvmem
guest's, and its status becomes kvmem's.

kvm only: thread cannot run an unmodified kernel and kvm-pvm emulates its
CPL0 code (both refuse in one line, which test_linux checks); there this
test skips saying why. Two vCPUs, or what KVMEM_LINUX_CPUS says, with
KVMEM_LINUX_APPEND on the kernel command line."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

from kvmemtest import check, finish, require_accel, spawn
from linuxhelp import CPUS, TIMERS, cmdline, require_linux, without_timers

# Under the nested VM's emulation a boot takes a minute or two; natively seconds.
BOOT_TIMEOUT = 600

require_accel()
kernel, initrd = require_linux()


def boot_once(args):
    """Run kvmem to its end, BOOT_TIMEOUT at most; returns the run (status -1 when stopped,
    its stderr saying so)."""
    p = spawn(args, start_new_session=True)
    out, err = [], []
    readers = [threading.Thread(target=lambda: out.extend(p.stdout)),
               threading.Thread(target=lambda: err.extend(p.stderr))]
    for t in readers:
        t.start()
    try:
        p.wait(BOOT_TIMEOUT)
        why = ""
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        why = f"no end in {BOOT_TIMEOUT} s"
    for t in readers:
        t.join()
    return subprocess.CompletedProcess(args, -1 if why else p.returncode, "".join(out),
                                       "".join(err) + why)


def boot(extra, what):
    """Boot the kernel with 2 vCPUs and 512 MiB; returns the run, its console lines,
    and the minutes it took."""
    args = ["run", "--mem", "512M", "--cpus", str(CPUS), "--kernel", kernel, "--initrd",
            initrd, "--cmdline", cmdline(extra)]
    t0 = time.monotonic()
    r = boot_once(args)
    minutes = (time.monotonic() - t0) / 60
    lines = r.stdout.splitlines()
    print(f"info   {what}: status {r.returncode} after {minutes:.1f} min", flush=True)
    if r.returncode == 2 and "kvm-pvm" in r.stderr:
        print(f"SKIP   {r.stderr.strip()}", flush=True)
        sys.exit(77)
    return r, lines, minutes


def said(lines, pattern):
    rx = re.compile(pattern)
    return next((m for m in (rx.search(l) for l in lines) if m), None)


def show_tail(r, lines):
    print("info   console tail:\n       " + "\n       ".join(lines[-25:]), flush=True)
    print("info   stderr: " + r.stderr.strip()[-2000:], flush=True)


# The ordinary boot: everything the guest sees, and its power-off.
r, lines, minutes = boot("", "boot to power-off")
ok = check(said(lines, r"Linux version \S+") is not None,
           "the kernel prints on the serial console from its first lines")
ok &= check(said(lines, r"ttyS0 at I/O 0x3f8 \(irq = 4.*16550A") is not None,
            "Linux's 8250 driver finds a 16550A at 0x3f8, IRQ 4")
ok &= check(said(lines, r"^kvmem-linux: init$") is not None, "the init runs and prints")
ok &= check(said(lines, rf"^kvmem-linux: cpus {CPUS}$") is not None,
            f"all {CPUS} vCPUs are online (the MADT, INIT/SIPI to the others)")
m = said(lines, r"^kvmem-linux: MemTotal:\s+(\d+) kB")
ok &= check(m is not None and 400 * 1024 <= int(m.group(1)) <= 512 * 1024,
            f"MemTotal is most of the 512 MiB of RAM ({m.group(0) if m else 'none'})")
m = said(lines, r"^kvmem-linux: virtio_balloon bound to (virtio\d+), features ([01]+)")
ok &= check(m is not None, "the stock virtio_balloon driver binds kvmem's balloon device "
                           "(virtio-mmio from the DSDT, its interrupt from the IOAPIC)")
if m:
    bits = m.group(2)
    ok &= check(len(bits) > 32 and bits[32] == "1",
                f"it negotiated VIRTIO_F_VERSION_1 (features {bits})")
ok &= check(not any(l.startswith("kvmem-linux: FAIL") for l in lines),
            "no step of the init failed")
ok &= check(said(lines, r"^kvmem-linux: poweroff$") is not None and r.returncode == 0 and
            "powered off (ACPI S5)" in r.stderr,
            f"the guest's power-off ends kvmem with status 0 (status {r.returncode})")
if not ok:
    show_tail(r, lines)
print(f"info   one Linux boot to power-off took {minutes:.1f} min", flush=True)

# The init's status through the system-control device (mapped from /dev/mem).
r, lines, _ = boot("quiet kvmem.status=7", "boot to status 7")
if not check(r.returncode == 7 and said(lines, r"^kvmem-linux: exit 7$") is not None,
             f"the guest's status reaches kvmem's (status {r.returncode})"):
    show_tail(r, lines)

# A kvmem guest's workload in the Linux guest: its lines, and its status as kvmem's. Its timed
# phase (rates, then a second verification) sleeps, which needs the guest's timer interrupts.
timed = ",rate=1,read=4,time=2" if TIMERS else ""
if not TIMERS:
    without_timers("the workload's timed phase (time=2 with rewrite and read rates)")
r, lines, _ = boot(f"quiet kvmem.wl=size=16,dup=25,zero=25,id=7{timed}", "boot with a workload")
ok = check(said(lines, r"^kvmem-linux: workload /bin/kvmem-linux-wl$") is not None,
           "the init runs the workload for kvmem.wl=")
ok &= check(said(lines, rf"^kvmem-linux-wl: {CPUS} cpus, \d+ MiB at ") is not None,
            "the workload has every vCPU and memory to fill")
ok &= check(said(lines, r"^kvmem-wl: size 16 MiB \(4096 pages\) dup 25% zero 25% "
                        r"unique 50% id 7 ") is not None, "kvmem-wl: the mix it was given")
ok &= check(said(lines, r"^kvmem-wl: filled 16 in \d+ ms$") is not None,
            "kvmem-wl: filled 16, on the Linux guest's console")
verifies = 2 if TIMERS else 1
ok &= check(sum(1 for l in lines if l == "kvmem-wl: verify ok 4096") == verifies,
            "kvmem-wl: verify ok 4096 after the fill" + (" and after time=" if TIMERS else ""))
if TIMERS:
    m = said(lines, r"^kvmem-wl: rewrites (\d+) reads (\d+) ")
    ok &= check(m is not None and int(m.group(1)) > 0 and int(m.group(2)) > 0,
                f"pages rewritten and read at the rates ({m.group(0) if m else 'no such line'})")
ok &= check(not any("verify FAIL" in l or l.startswith("kvmem-linux: FAIL") for l in lines),
            "no verification and no step of the init failed")
ok &= check(said(lines, r"^kvmem-wl: done$") is not None and
            said(lines, r"^kvmem-linux: workload status 0$") is not None and
            said(lines, r"^kvmem-linux: exit 0$") is not None and r.returncode == 0,
            f"the workload's status 0 reaches kvmem's (status {r.returncode})")
if not ok:
    show_tail(r, lines)

finish()
