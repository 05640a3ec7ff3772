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
Usage: bench_boot.py KVMEM MEMSET_REF [runs]
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import emit

KVMEM, MEMSET = sys.argv[1], sys.argv[2]
RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 5
SIZE = 256


def one_boot():
    t0 = time.monotonic()
    p = subprocess.Popen([KVMEM, "run", "--mem", "512M", "--append",
                          f"kvmem.wl=size={SIZE},dup=50,zero=25,then=poweroff"],
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


def rss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1])
    return 0


def overhead(nvms):
    with tempfile.TemporaryDirectory() as d:
        cfg = {"budget": "20G", "console_prefix": True, "vms": [
            {"name": f"vm{i}", "mem": "512M",
             "append": f"kvmem.wl=size=64,dup=50,zero=25,id={i},then=sleep"}
            for i in range(nvms)]}
        path = os.path.join(d, "cfg.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        p = subprocess.Popen([KVMEM, "host", "--config", path], stdout=subprocess.PIPE,
                             text=True, bufsize=1)
        done = 0
        for line in p.stdout:
            if "kvmem-wl: done" in line:
                done += 1
                if done == nvms:
                    break
        time.sleep(0.5)
        rss = rss_kib(p.pid)
        # Guest RAM is every mapping of 256 MiB or more (each VM's RAM region);
        # everything else (binary, libraries, heap, stacks) is the VMM's.
        guest = 0
        with open(f"/proc/{p.pid}/smaps") as f:
            cur = None
            for line in f:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    cur = hi - lo
                elif line.startswith("Rss:") and cur and cur >= (256 << 20):
                    guest += int(line.split()[1])
        p.send_signal(subprocess.signal.SIGTERM)
        p.wait()
        return (rss - guest) / 1024


firsts, filleds, gbps = [], [], []
for _ in range(RUNS):
    f, fl, g = one_boot()
    firsts.append(f)
    filleds.append(fl)
    gbps.append(g)
ref = [float(subprocess.check_output([MEMSET, str(SIZE)], text=True)) for _ in range(RUNS)]
cfg = f"256 MiB dup=50 zero=25, 1 vCPU, median of {RUNS}"
emit("first_line_ms", "ms", statistics.median(firsts), cfg)
emit("filled_ms", "ms", statistics.median(filleds), cfg)
emit("fill_gbps", "GB/s", statistics.median(gbps), cfg,
     ref={"name": "host_memset_fresh_gbps", "value": round(statistics.median(ref), 3)})
one = statistics.median([overhead(1) for _ in range(3)])
four = statistics.median([overhead(4) for _ in range(3)])
emit("overhead_mib", "MiB", one, "1 VM of 512M, 64 MiB touched, whole process, median of 3")
emit("overhead_mib", "MiB", four, "4 VMs of 512M, 64 MiB touched each, whole process, median of 3")
emit("overhead_per_extra_vm_mib", "MiB", (four - one) / 3, "(4 VMs - 1 VM) / 3")
