#!/usr/bin/env python3
"""bench/overcommit: a host with budget B runs VMs whose mem sums to 2B.

Every VM fills most of its memory with the workload's mix and keeps
rewriting a hot part of it; the script samples the host's stats over the
control socket once a second and prints one JSON line per sample
(configured vs the host's used bytes, as the kernel reports them), then a
summary line: where usage settled against the budget, its peak, and how long
it stayed more than 2% over the budget after it first got there (the
policy's reaction). Usage: bench_overcommit.py KVMEM [budget_MiB] [seconds]
[dedup] [--accel auto|kvm|thread] [--swap DIR] (--swap: a host swap file of
twice the budget in DIR, so the policy can end at swap)
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from benchlib import cmd, request, take_accel

ACCEL = take_accel()
SWAP = None
if "--swap" in sys.argv:
    i = sys.argv.index("--swap")
    if i + 1 >= len(sys.argv):
        sys.exit("--swap needs a directory on a disk")
    SWAP = sys.argv[i + 1]
    del sys.argv[i:i + 2]
KVMEM = sys.argv[1]
BUDGET = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
SECONDS = int(sys.argv[3]) if len(sys.argv) > 3 else 30
DEDUP = sys.argv[4] if len(sys.argv) > 4 else "off"
NVMS = 4
MEM = 2 * BUDGET // NVMS   # the VMs' mem adds up to twice the budget
FILL = MEM * 3 // 4


with tempfile.TemporaryDirectory() as d:
    sock = os.path.join(d, "k.sock")
    cfg = {"budget": f"{BUDGET}M", "socket": sock, "dedup": DEDUP, "console_prefix": True,
           "vms": [{"name": f"vm{i}", "mem": f"{MEM}M", "min": f"{MEM // 8}M",
                    "append": f"kvmem.wl=size={FILL},dup=50,zero=25,id={i},rate=4,hot=10"}
                   for i in range(NVMS)]}
    if SWAP:
        cfg["swap"] = {"path": SWAP, "size": f"{2 * BUDGET}M"}
    path = os.path.join(d, "host.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    host = subprocess.Popen(cmd(KVMEM, "host", "--config", path), stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not os.path.exists(sock) and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    peak = 0
    last = None
    first_over = last_over = None   # seconds: first sample over budget, last one 2% over
    while time.monotonic() - t0 < SECONDS:
        time.sleep(1)
        st = request(sock, {"verb": "stats"})
        h = st["host"]
        t = time.monotonic() - t0
        peak = max(peak, h["used_bytes"])
        if h["used_bytes"] > h["budget_bytes"]:
            first_over = first_over if first_over is not None else t
        if h["used_bytes"] > h["budget_bytes"] * 1.02:
            last_over = t
        last = h
        print(json.dumps({"t": round(time.monotonic() - t0, 1), "accel": ACCEL,
                          "configured_bytes": h["configured_bytes"],
                          "budget_bytes": h["budget_bytes"], "used_bytes": h["used_bytes"],
                          "saved_bytes": h["saved_bytes"],
                          "touched_bytes": sum(v["resident_bytes"] for v in st["vms"])}),
              flush=True)
    host.send_signal(subprocess.signal.SIGINT)
    host.wait(timeout=60)
    print(json.dumps({"name": "overcommit_used_over_budget", "unit": "ratio", "accel": ACCEL,
                      "value": round(last["used_bytes"] / last["budget_bytes"], 3),
                      "config": f"{NVMS} VMs x {MEM} MiB (2x budget {BUDGET} MiB), fill {FILL} "
                                f"MiB dup=50 zero=25, dedup={DEDUP}, swap={'on' if SWAP else 'off'}, "
                                f"after {SECONDS} s",
                      "peak_used_bytes": peak,
                      "peak_over_budget_mib": max(0, peak - last["budget_bytes"]) >> 20,
                      "seconds_over_budget": round(last_over - first_over, 1)
                      if first_over is not None and last_over is not None else 0}), flush=True)
