#!/usr/bin/env python3
"""bench/balloon: time to reclaim 1 GiB from a guest by inflating its balloon
and by free page reporting, and the host memory left after, next to the
floor: one MADV_DONTNEED of 1 GiB of touched memory in a host process, same
run. One JSON line per metric (median of runs). Polling the control socket
every 2 ms bounds the resolution of the balloon figures; reporting is timed
on the process's RssAnon. The guest looks for freed memory to report every
kvmem.balloon.report_ms (200 ms by default), which the reporting figure
includes.
Usage: bench_balloon.py KVMEM MADV_REF [runs] [--accel auto|kvm|thread]
"""
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import cmd, emit, request, take_accel

take_accel()
KVMEM, MADV = sys.argv[1], sys.argv[2]
RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
MIB, GIB = 1 << 20, 1 << 30
REPORT_ARG = os.environ.get("KVMEM_BENCH_REPORT_ARG", "")


def vm0(path):
    return request(path, {"verb": "stats"})["vms"][0]


def start(d, append):
    sock = os.path.join(d, "k.sock")
    p = subprocess.Popen(cmd(KVMEM, "run", "--mem", "2G", "--socket", sock, "--append", append),
                         stdout=subprocess.PIPE, text=True, bufsize=1)
    # then=free prints "done" before it frees: wait for "freed".
    for line in p.stdout:
        if "kvmem-wl: freed" in line:
            break
    return p, sock


def stop(p):
    p.send_signal(signal.SIGINT)
    p.wait(60)


def until(pred, step=0.002, deadline=120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline:
        v = pred()
        if v is not None:
            return v
        time.sleep(step)
    raise TimeoutError


def inflate_once():
    with tempfile.TemporaryDirectory() as d:
        # 1.5 GiB touched and freed inside the guest; reporting off so the
        # memory stays resident until the balloon takes it.
        p, sock = start(d, "kvmem.wl=size=1536,then=free kvmem.balloon.report=off")
        before = until(lambda: vm0(sock) if vm0(sock)["resident_bytes"] > 1400 * MIB else None)
        time.sleep(1)  # let the guest settle into its idle loop: measure reclaim alone
        target = before["mem_bytes"] - GIB
        t0 = time.monotonic()
        request(sock, {"verb": "balloon", "vm": "vm0", "target": target})
        until(lambda: True if vm0(sock)["balloon"]["actual_bytes"] <= target else None)
        t = time.monotonic() - t0
        time.sleep(0.3)  # past the stats' residency cache (200 ms)
        after = vm0(sock)["resident_bytes"]
        stop(p)
        return t, before["resident_bytes"] - after


def rss_anon(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def report_once():
    with tempfile.TemporaryDirectory() as d:
        p, sock = start(d, "kvmem.wl=size=1024,then=free" + REPORT_ARG)
        # Free page reporting starts when the guest frees: time from the
        # guest's "freed" line until the process holds 1 GiB less (the
        # kernel's live RssAnon counter: no sampling delay of our own).
        t0 = time.monotonic()
        peak = rss_anon(p.pid)
        # 1 GiB minus the guest's own metadata and the stats buffers it keeps
        # touching: 960 MiB is what reporting can give back of this fill.
        until(lambda: True if rss_anon(p.pid) <= peak - 960 * MIB else None)
        t = time.monotonic() - t0
        time.sleep(0.3)
        after = vm0(sock)["resident_bytes"]
        stop(p)
        return t, after


floor = statistics.median(float(subprocess.check_output([MADV, "1024"], text=True))
                          for _ in range(max(RUNS, 3)))
inf = [inflate_once() for _ in range(RUNS)]
rep = [report_once() for _ in range(RUNS)]
ref = {"name": "host_madv_dontneed_1gib_s", "value": round(floor, 4)}
cfg = f"2 GiB guest, 1 GiB reclaimed, median of {RUNS}"
emit("inflate_1gib_s", "s", statistics.median(t for t, _ in inf), cfg, ref=ref)
emit("inflate_host_freed_mib", "MiB", round(statistics.median(f for _, f in inf) / MIB, 1), cfg)
emit("report_1gib_s", "s", statistics.median(t for t, _ in rep), cfg, ref=ref)
emit("report_resident_after_mib", "MiB", round(statistics.median(a for _, a in rep) / MIB, 1),
     cfg)
