#!/usr/bin/env python3
"""bench/boot: boot time, fill throughput and VMM overhead per VM.

Prints one JSON line per metric: {"name", "unit", "value", "config", "ref"}:
- first_line_ms: process start to the guest's first console line (median of runs)
- filled_ms: process start to `kvmem-wl: filled` for 256 MiB
- fill_gbps: guest fill throughput (from the guest's own timing) next to
  `ref`, a memset of the same size of fresh memory in a host process, same run
- overhead_mib: host RSS minus the RSS of guest RAM mappings (the kernel's
  per-VMA figures from /proc/PID/smaps), for 1 VM and for 4 VMs, and the
  marginal overhead of each VM beyond the first
Every figure is measured on each accelerator the machine has (or the one
--accel names) and says which; with both, `thread_vs_kvm` lines give the
ratios side by side (first console line, fill throughput, overhead per VM).
Usage: bench_boot.py KVMEM MEMSET_REF [runs] [--accel auto|kvm|thread]
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib
from benchlib import cmd, emit, kvm_here, rss_split, take_accel

ASKED = "--accel" in sys.argv
take_accel()
ACCELS = [benchlib.ACCEL] if ASKED else ["thread"] + (["kvm"] if kvm_here() else [])
KVMEM, MEMSET = sys.argv[1], sys.argv[2]
RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 5
SIZE = 256


def one_boot(accel):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd(KVMEM, "run", "--mem", "512M", "--append",
                             f"kvmem.wl=size={SIZE},dup=50,zero=25,then=poweroff", accel=accel),
                         stdout=subprocess.PIPE, text=True, bufsize=1)
    first = filled = None
    guest_ms = None
    for line in p.stdout:
        now = time.monotonic()
        if first is None:
            first = now - t0
        m = re.match(r"kvmem-wl: filled (\d+) in (\d+) ms", line)
        if m:
            filled = now - t0
            guest_ms = int(m.group(2))
    p.wait()
    return first * 1e3, filled * 1e3, SIZE * 1048576 / (guest_ms / 1e3) / 1e9


def overhead(nvms, accel):
    with tempfile.TemporaryDirectory() as d:
        cfg = {"budget": "20G", "console_prefix": True, "vms": [
            {"name": f"vm{i}", "mem": "512M",
             "append": f"kvmem.wl=size=64,dup=50,zero=25,id={i},then=sleep"}
            for i in range(nvms)]}
        path = os.path.join(d, "cfg.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        p = subprocess.Popen(cmd(KVMEM, "host", "--config", path, accel=accel),
                             stdout=subprocess.PIPE, text=True, bufsize=1)
        done = 0
        for line in p.stdout:
            if "kvmem-wl: done" in line:
                done += 1
                if done == nvms:
                    break
        time.sleep(0.5)
        rss, guest = rss_split(p.pid, 256 << 20)
        p.send_signal(subprocess.signal.SIGTERM)
        p.wait()
        return (rss - guest) / 1024


ref = [float(subprocess.check_output([MEMSET, str(SIZE)], text=True)) for _ in range(RUNS)]
cfg = f"256 MiB dup=50 zero=25, 1 vCPU, median of {RUNS}"
res = {}
for accel in ACCELS:
    firsts, filleds, gbps = [], [], []
    for _ in range(RUNS):
        f, fl, g = one_boot(accel)
        firsts.append(f)
        filleds.append(fl)
        gbps.append(g)
    one = statistics.median([overhead(1, accel) for _ in range(3)])
    four = statistics.median([overhead(4, accel) for _ in range(3)])
    r = res[accel] = {"first_line_ms": statistics.median(firsts),
                      "fill_gbps": statistics.median(gbps),
                      "overhead_per_extra_vm_mib": (four - one) / 3}
    emit("first_line_ms", "ms", r["first_line_ms"], cfg, accel=accel)
    emit("filled_ms", "ms", statistics.median(filleds), cfg, accel=accel)
    emit("fill_gbps", "GB/s", r["fill_gbps"], cfg, accel=accel,
         ref={"name": "host_memset_fresh_gbps", "value": round(statistics.median(ref), 3)})
    emit("overhead_mib", "MiB", one, "1 VM of 512M, 64 MiB touched, whole process, median of 3",
         accel=accel)
    emit("overhead_mib", "MiB", four,
         "4 VMs of 512M, 64 MiB touched each, whole process, median of 3", accel=accel)
    emit("overhead_per_extra_vm_mib", "MiB", r["overhead_per_extra_vm_mib"],
         "(4 VMs - 1 VM) / 3", accel=accel)
if len(res) == 2:
    for k in res["thread"]:
        kvm = res["kvm"][k]
        emit("thread_vs_kvm." + k, "ratio", res["thread"][k] / kvm if kvm else None,
             "thread / kvm, same run", accel="both",
             thread=round(res["thread"][k], 4), kvm=round(kvm, 4))
