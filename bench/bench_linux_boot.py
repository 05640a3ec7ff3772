#!/usr/bin/env python3
"""bench/linux_boot: a stock Linux kernel's boot under kvmem and under QEMU + KVM, side by side.

The same kernel (Debian's /boot/vmlinuz-*, or --kernel), the same initramfs
(tests/linux/mkinitramfs.sh, made here unless --initrd names one), the same
command line and the same workload, a fill and its verification that never
sleeps (kvmem.wl=size=64,dup=25,zero=25,then=poweroff: the boot and one
pass, no timed phase), in 512 MiB and one vCPU, booted
RUNS times by each VMM in turn. Per boot, from the process's start:

  first_console_ms   the kernel's first line on the serial console ("Linux
                     version ...", its first message, printed once the
                     console is up; under QEMU the real-mode setup code,
                     which kvmem's 64-bit entry skips, prints "Probing
                     EDD" before it)
  init_ms            the init's first line ("kvmem-linux: init")
  wl_ms              the workload's first line ("kvmem-wl: ...")
  exit_ms            the process's end, once the workload is done
  fill_guest_ms      the fill as the guest timed it ("kvmem-wl: filled N in M ms")
  overhead_mib       the VMM's RSS less its guest RAM mappings' (the kernel's
                     per-VMA figures from /proc/PID/smaps: every mapping of
                     at least half the guest's RAM is guest RAM), sampled at
                     the workload's first line

One JSON line per metric and VMM: {"name", "unit", "value", "config", "ref",
"vmm"}, the median of the boots that finished (the config says how many of
RUNS, and how many hung); kvmem's lines carry QEMU's figure as ref, and
`kvmem_vs_qemu.*` lines give the ratios kvmem / QEMU, the comparable figures
where emulation makes absolute times meaningless. A boot that has not ended
after --deadline seconds is killed and counted (`linux_boot.unfinished`),
and the other boots go on.

QEMU boots with -accel kvm -cpu host (kvmem passes the host's CPUID too),
-M microvm,auto-kernel-cmdline=off (Debian's kernel finds its 8250 and,
in the ACPI tables, a virtio-mmio balloon there, as under kvmem; off: the
command line stays the same), -nodefaults -no-user-config -nographic
-serial stdio -no-reboot and -device virtio-balloon-device, because the
init waits for its driver to bind (on -M pc the balloon would be PCI, and
the initramfs has no virtio_pci module: the init would wait for good where
nothing wakes it). The kernel probes an RTC there and finds it "broken or
not accessible", 3-4 s in the nested VM; rtc=off changes nothing (the
kernel then probes the ports of one it assumes), while kvmem's FADT says
there is none. The workload's status ends kvmem through its
system-control register, which QEMU does not have; there the write goes
nowhere and the init powers off (ACPI S5), so QEMU's exit_ms has the
kernel's power-off in it.

Needs hardware-virtualized KVM (VMX or SVM; kvm-pvm cannot run an
unmodified kernel), a kernel image and qemu-system-x86_64: otherwise one
line saying which is missing and status 77. KVMEM_LINUX_APPEND goes on both
command lines.
--consoles DIR keeps each boot's console there (VMM-RUN.txt), every line
after the milliseconds since the process started, to see where the time goes.
Usage: bench_linux_boot.py KVMEM [runs] [--kernel IMAGE] [--initrd FILE]
       [--qemu PATH] [--deadline S] [--size MIB]
       [--consoles DIR]
"""
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import emit, rss_split, take_opt

HERE = os.path.dirname(os.path.abspath(__file__))
MKINITRAMFS = os.path.join(HERE, "..", "tests", "linux", "mkinitramfs.sh")
KERNEL = take_opt("--kernel", os.environ.get("KVMEM_TEST_KERNEL"))
INITRD = take_opt("--initrd", None)
QEMU = take_opt("--qemu", shutil.which("qemu-system-x86_64"))
DEADLINE = float(take_opt("--deadline", "240"))
SIZE = int(take_opt("--size", "64"))
CONSOLES = take_opt("--consoles", None)
KVMEM = sys.argv[1]
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
MEM = 512
APPEND = " ".join(s for s in ("console=ttyS0 panic=-1", os.environ.get("KVMEM_LINUX_APPEND", ""),
                              f"kvmem.wl=size={SIZE},dup=25,zero=25,id=1,then=poweroff") if s)
# The markers of a boot's progress, in the order a boot passes them.
STAGES = ("first_console", "init", "wl")
# QEMU's machine: like kvmem's platform, an 8250, KVM's interrupt controllers and PIT, ACPI and
# virtio-mmio, without an HPET; unlike it, an RTC.
MACHINE = "microvm,auto-kernel-cmdline=off"
METRICS = {"first_console_ms": "ms", "init_ms": "ms", "wl_ms": "ms", "exit_ms": "ms",
           "fill_guest_ms": "ms", "overhead_mib": "MiB"}


def rnd(v):
    return round(v, 4) if isinstance(v, float) else v


def refuse(why):
    print(f"bench_linux_boot: not run: {why}", flush=True)
    sys.exit(77)


def hardware_kvm():
    """Why a stock kernel cannot boot here, or None."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as e:
        return f"no usable /dev/kvm ({e.strerror}): Linux guests need hardware-virtualized KVM"
    with open("/proc/cpuinfo") as f:
        flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    if "vmx" not in flags and "svm" not in flags:
        return ("the CPU has neither VMX nor SVM, so this /dev/kvm is kvm-pvm, which cannot run "
                "an unmodified kernel")
    return None


def find_kernel():
    if KERNEL:
        return KERNEL if os.access(KERNEL, os.R_OK) else None
    return next((p for p in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True)
                 if os.access(p, os.R_OK)), None)


def kvmem_cmd(kernel, initrd):
    return [KVMEM, "run", "--accel", "kvm", "--mem", f"{MEM}M", "--cpus", "1",
            "--kernel", kernel, "--initrd", initrd, "--cmdline", APPEND]


def qemu_cmd(kernel, initrd):
    return [QEMU, "-M", MACHINE, "-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", f"{MEM}M",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
            "-device", "virtio-balloon-device", "-kernel", kernel, "-initrd", initrd,
            "-append", APPEND]


def boot(args, keep=None):
    """One boot: its figures, or the stage it reached and why it did not finish. keep: a
    file for the console, each line after its time."""
    marks = {}
    lines = []
    times = []
    # stderr in a file: a pipe nobody reads while the VM runs could fill and stop the VMM.
    errf = tempfile.TemporaryFile("w+")
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=errf, text=True, errors="replace")

    def follow():
        for line in p.stdout:
            now = time.monotonic() - t0
            line = line.rstrip("\r\n")
            lines.append(line)
            times.append(now)
            if "first_console" not in marks and re.search(r"Linux version \S+", line):
                marks["first_console"] = now
            if line.startswith("kvmem-linux: "):
                marks.setdefault("init", now)
            if line.startswith("kvmem-wl: ") and "wl" not in marks:
                marks["wl"] = now
                try:
                    marks["rss"] = rss_split(p.pid, (MEM << 20) // 2)
                except OSError:
                    pass

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        status = p.wait(DEADLINE)
        end = time.monotonic() - t0
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        status = None
    reader.join(10)
    errf.seek(0)
    err = errf.read().strip()
    errf.close()
    if keep:
        with open(keep, "w") as f:
            f.writelines(f"{t * 1e3:9.1f} {ln}\n" for t, ln in zip(times, lines))
            f.write(f"# status {status}; stderr:\n{err}\n")
    reached = next((s for s in reversed(STAGES) if s in marks), "nothing on the console")
    if status is None:
        return None, f"hung: no end in {DEADLINE:.0f} s, last stage {reached}"
    fill = next((m for m in (re.match(r"kvmem-wl: filled \d+ in (\d+) ms$", ln) for ln in lines)
                 if m), None)
    ok = status == 0 and fill and "kvmem-wl: done" in lines and \
        not any("verify FAIL" in ln or ln.startswith("kvmem-linux: FAIL") for ln in lines)
    if not ok or "rss" not in marks:
        tail = " | ".join((lines + err.splitlines())[-4:])
        return None, f"failed: status {status}, last stage {reached}: {tail}"
    total, guest = marks["rss"]
    return {"first_console_ms": marks["first_console"] * 1e3, "init_ms": marks["init"] * 1e3,
            "wl_ms": marks["wl"] * 1e3, "exit_ms": end * 1e3,
            "fill_guest_ms": float(fill.group(1)), "overhead_mib": (total - guest) / 1024}, None


def main():
    why = hardware_kvm()
    if why:
        refuse(why)
    kernel = find_kernel()
    if kernel is None:
        refuse("no readable kernel image (/boot/vmlinuz-*: Debian's linux-image-amd64; or "
               "--kernel, KVMEM_TEST_KERNEL)")
    if not QEMU or not os.access(QEMU, os.X_OK):
        refuse("no qemu-system-x86_64 to compare with (--qemu names one)")
    if CONSOLES:
        os.makedirs(CONSOLES, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="kvmem-bench-linux-")
    try:
        initrd = INITRD
        if initrd is None:
            initrd = os.path.join(tmp, "initramfs.gz")
            r = subprocess.run(["bash", MKINITRAMFS, kernel, initrd], capture_output=True,
                               text=True, timeout=1200)
            if r.returncode:
                sys.exit(f"bench_linux_boot: {r.stderr.strip() or r.stdout.strip()}")
        run_all(kernel, initrd)
    finally:
        shutil.rmtree(tmp, True)


def run_all(kernel, initrd):
    vmms = {"kvmem": kvmem_cmd(kernel, initrd), "qemu": qemu_cmd(kernel, initrd)}
    res = {v: [] for v in vmms}
    lost = {v: [] for v in vmms}
    print(f"bench_linux_boot: {os.path.basename(kernel)}, {MEM} MiB, 1 vCPU, {RUNS} runs each, "
          f"QEMU -M {MACHINE}; cmdline: {APPEND}", file=sys.stderr, flush=True)
    for i in range(RUNS):
        # In turn, so that a slow phase of the machine touches both alike.
        for vmm, args in vmms.items():
            keep = CONSOLES and os.path.join(CONSOLES, f"{vmm}-{i + 1}.txt")
            r, why = boot(args, keep)
            if r:
                res[vmm].append(r)
                print(f"  run {i + 1} {vmm}: " + ", ".join(f"{k} {v:.0f}" for k, v in r.items()),
                      file=sys.stderr, flush=True)
            else:
                lost[vmm].append(why)
                print(f"  run {i + 1} {vmm}: {why}", file=sys.stderr, flush=True)
    med = {v: {k: statistics.median(r[k] for r in res[v]) if res[v] else None for k in METRICS}
           for v in vmms}
    what = {"kvmem": "kvmem run --accel kvm",
            "qemu": f"qemu-system-x86_64 -accel kvm -cpu host -M {MACHINE}"}
    base = (f"{os.path.basename(kernel)}, {MEM} MiB, 1 vCPU, cmdline '{APPEND}'")
    for vmm in vmms:
        cfg = f"{what[vmm]}: {base}, median of the {len(res[vmm])} of {RUNS} boots that finished"
        for k, unit in METRICS.items():
            ref = None
            if vmm == "kvmem":
                ref = {"name": f"qemu_kvm.{k}", "value": rnd(med["qemu"][k])}
            emit(f"linux_boot.{k}", unit, med[vmm][k], cfg, ref=ref, vmm=vmm, accel="kvm")
        emit("linux_boot.unfinished", "boots", len(lost[vmm]),
             f"{what[vmm]}: of {RUNS}, each given {DEADLINE:.0f} s", ref=None, vmm=vmm,
             accel="kvm", why=lost[vmm])
    for k in METRICS:
        kv, q = med["kvmem"][k], med["qemu"][k]
        emit(f"kvmem_vs_qemu.{k}", "ratio", kv / q if kv is not None and q else None,
             "kvmem / QEMU + KVM (-M microvm), medians of the same run",
             ref={"kvmem": rnd(kv), "qemu": rnd(q)}, vmm="both", accel="kvm")


if __name__ == "__main__":
    main()
