#!/usr/bin/env python3
"""bench/clone: memory and start time of N clones of one snapshot, against N guests booted alike.

kvm only (clones are). A guest with --mem of RAM fills three quarters of it (a third of the
pages alike across guests, a fifth zero) and rewrites pages at 4 MiB/s; it is saved with stop.
Then, per N (--counts, default 1,4,16), in a fresh host with page sharing on:

  clones       `clone` N times from the file; each takes an identity of its own and refills
               its workload's pages under its own id, as a guest that must differ would
  booted       N guests booted with the same workload (ids of their own), the reference

and after SETTLE seconds (the scanner merging what is alike), the host's used memory:

  clones_used_mib, booted_used_mib     the host's used_bytes (shared frames counted once)
  image_mib                            the snapshot's data: N x image_mib is what N full copies
                                       would cost
  clones_start_ms, booted_start_ms     from the request (or the host's start) to every VM's
                                       workload running (identity taken / filled)

Usage: bench_clone.py KVMEM [--mem 1G] [--counts 1,4,16] [--runs N] [--dir DIR]
"""
import json
import os
import statistics
import sys
import tempfile
import time

from benchlib import Host, cmd, emit, request, take_accel, take_opt, wait_sock

ACCEL = take_accel()
MEM = take_opt("--mem", "1G")
COUNTS = [int(c) for c in take_opt("--counts", "1,4,16").split(",")]
RUNS = int(take_opt("--runs", "1"))
WHERE = take_opt("--dir", "/var/tmp")
KVMEM = sys.argv[1]
SETTLE = 15
DEADLINE = 1800
MIB = {"K": 1 / 1024, "M": 1, "G": 1024}[MEM[-1]] * int(MEM[:-1])
WL = f"kvmem.wl=size={int(MIB * 3 / 4)},dup=30,zero=20,id=1,rate=4,verify=5,then=sleep"


def used(sock):
    return request(sock, {"verb": "stats"})["host"]["used_bytes"]


def snapshot(d):
    sock = f"{d}/s.sock"
    cfg = {"budget": "64G", "socket": sock, "dedup": "on", "incoming": f"unix:{d}/s-in.sock",
           "vms": [{"name": "base", "mem": MEM, "cpus": 1, "append": WL}]}
    with open(f"{d}/s.json", "w") as f:
        json.dump(cfg, f)
    h = Host(cmd(KVMEM, "host", "--config", f"{d}/s.json"))
    try:
        if not (wait_sock(sock) and h.wait("kvmem-wl: filled", deadline=600)):
            return None
        snap = f"{d}/base.snap"
        request(sock, {"verb": "save", "vm": "base", "to": snap, "stop": True})
        end = time.monotonic() + 600
        while time.monotonic() < end and os.path.exists(f"{d}/s.sock"):
            st = request(sock, {"verb": "stats"})
            if any(m["kind"] == "save" and m["stage"] in ("done", "failed")
                   for m in st.get("migrated", [])):
                break
            time.sleep(0.2)
        return snap if os.path.exists(snap) else None
    finally:
        h.stop()


def write_cfg(d, tag, sock, vms):
    cfg = {"budget": "64G", "socket": sock, "dedup": "on", "incoming": f"unix:{d}/{tag}-in.sock",
           "vms": vms}
    with open(f"{d}/{tag}.json", "w") as f:
        json.dump(cfg, f)
    return f"{d}/{tag}.json"


def clones(d, snap, n):
    sock = f"{d}/c.sock"
    h = Host(cmd(KVMEM, "host", "--config", write_cfg(d, "c", sock, [])))
    try:
        if not wait_sock(sock):
            return None
        t0 = time.monotonic()
        r = request(sock, {"verb": "clone", "file": snap, "count": n, "prefix": "c"})
        # Clones start one after the other on the host's clone thread; under emulation
        # (the nested VM) each takes many seconds.
        if not r.get("ok") or not h.wait("refilled", n, deadline=DEADLINE):
            jobs = request(sock, {"verb": "stats"}).get("clones") if r.get("ok") else r
            print(f"# clone failed: {jobs}", flush=True)
            return None
        start = (time.monotonic() - t0) * 1000
        time.sleep(SETTLE)
        return used(sock), start
    finally:
        h.stop()


def booted(d, n):
    sock = f"{d}/b.sock"
    vms = [{"name": f"b-{i}", "mem": MEM, "cpus": 1,
            "append": WL.replace("id=1", f"id={2 + i}")} for i in range(n)]
    t0 = time.monotonic()
    h = Host(cmd(KVMEM, "host", "--config", write_cfg(d, "b", sock, vms)))
    try:
        if not (wait_sock(sock) and h.wait("kvmem-wl: filled", n, deadline=DEADLINE)):
            return None
        start = (time.monotonic() - t0) * 1000
        time.sleep(SETTLE)
        return used(sock), start
    finally:
        h.stop()


if ACCEL != "kvm":
    sys.exit("bench/clone: clones are for the kvm accelerator (run with --accel kvm where "
             "/dev/kvm is, or inside tests/nested)")
d = tempfile.mkdtemp(prefix="kvmem-bclone-", dir=WHERE)
snap = snapshot(d)
if not snap:
    emit("clone", "failed", 0, {"mem": MEM})
    sys.exit(1)
image = os.stat(snap).st_blocks * 512
for n in COUNTS:
    cl = [r for r in (clones(d, snap, n) for _ in range(RUNS)) if r]
    bo = [r for r in (booted(d, n) for _ in range(RUNS)) if r]
    if not cl or not bo:
        emit("clone_used", "failed", 0, {"n": n, "mem": MEM})
        continue
    config = {"n": n, "mem": MEM, "filled_mib": int(MIB * 3 / 4), "runs": len(cl),
              "settle_s": SETTLE}
    cu, cs = statistics.median(r[0] for r in cl), statistics.median(r[1] for r in cl)
    bu, bs = statistics.median(r[0] for r in bo), statistics.median(r[1] for r in bo)
    emit("clone_used", "MiB", cu / 2**20, config, ref_booted_mib=bu / 2**20,
         ref_n_images_mib=n * image / 2**20, ratio_to_booted=round(cu / bu, 3) if bu else None)
    emit("clone_start", "ms", cs, config, ref_booted_ms=bs)
for f in os.listdir(d):
    os.unlink(os.path.join(d, f))
os.rmdir(d)
