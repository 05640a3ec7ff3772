#!/usr/bin/env python3
"""bench/migrate: live migration of a 1 GiB guest between two hosts on this machine, by dirty rate.

One guest with 1 GiB of RAM fills 768 MiB (unique pages, a fifth of them zero) and then rewrites
random pages of it at RATE MiB/s (0, 10, 50, 100, 200), for ever; WARM seconds after its fill it
migrates over a UNIX socket to a second host (`--incoming`), unlimited bandwidth, the default
300 ms downtime limit. Per rate, medians of --runs runs:

  total_ms, downtime_ms, bytes, rounds, throttle_pct   as the source's stats give them
  bound_bytes    the lower bound on bytes: the pages with content of their own when the
                 migration started (non-zero, not shared, not ballooned) plus every page
                 written during the rounds; bytes / bound_bytes is the overhead (goal: <= 1.2)
  floor_ms       the same number of bytes pushed through a UNIX socket pair by this script in
                 the same run: what the link alone costs (total_ms / floor_ms is the price of
                 reading, classifying and rewriting pages)
  verified       the guest verified its memory at the destination after the move (it must)

Root is needed (only root migrates). Usage:
  bench_migrate.py KVMEM [--accel auto|kvm|thread] [--runs N] [--rates 0,10,50,100,200]
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import Host, cmd, emit, request, take_accel, take_opt, wait_sock

ACCEL = take_accel()


RUNS = int(take_opt("--runs", "3"))
RATES = [int(r) for r in take_opt("--rates", "0,10,50,100,200").split(",")]
WARM = 3
KVMEM = sys.argv[1]


def floor_ms(nbytes):
    """Milliseconds to push nbytes through a UNIX socket pair, 1 MiB at a time."""
    a, b = socket.socketpair()
    buf = b"\x5a" * (1 << 20)

    def drain():
        left = nbytes
        while left > 0:
            left -= len(b.recv(1 << 20))
    t = threading.Thread(target=drain)
    t0 = time.monotonic()
    t.start()
    left = nbytes
    while left > 0:
        n = min(left, len(buf))
        a.sendall(buf[:n])
        left -= n
    t.join()
    ms = (time.monotonic() - t0) * 1000
    a.close()
    b.close()
    return ms


def one(rate):
    d = tempfile.mkdtemp(prefix="kvmem-bmig-")
    a_sock, b_sock, b_in = f"{d}/a.sock", f"{d}/b.sock", f"unix:{d}/in.sock"
    wl = f"kvmem.wl=size=768,zero=20,id=1,rate={rate},verify=5,then=sleep"
    cfg = {"budget": "8G", "socket": a_sock, "dedup": "off",
           "vms": [{"name": "m", "mem": "1G", "cpus": 2, "append": wl}]}
    with open(f"{d}/a.json", "w") as f:
        json.dump(cfg, f)
    src = Host(cmd(KVMEM, "host", "--config", f"{d}/a.json"))
    dst = Host(cmd(KVMEM, "host", "--incoming", b_in, "--socket", b_sock))
    try:
        if not (wait_sock(a_sock) and wait_sock(b_sock) and src.wait("kvmem-wl: filled")):
            return None
        time.sleep(WARM)
        pages = [v for v in request(a_sock, {"verb": "stats"})["vms"] if v["name"] == "m"][0]
        r = request(a_sock, {"verb": "migrate", "vm": "m", "to": b_in})
        if not r.get("ok"):
            print(f"# migrate refused: {r}", flush=True)
            return None
        end = time.monotonic() + 600
        m = {}
        while time.monotonic() < end:
            try:
                st = request(a_sock, {"verb": "stats"})
            except OSError:
                # The source host ends a few seconds after its last VM left.
                print(f"# the source host went away; last seen: {m.get('stage')}", flush=True)
                break
            found = [x for x in st.get("migrated", []) if x["vm"] == "m"] + \
                [v["migration"] for v in st["vms"] if v["name"] == "m" and v.get("migration")]
            m = found[-1] if found else {}
            if m.get("stage") in ("done", "failed", "cancelled"):
                break
            time.sleep(0.1)
        if m.get("stage") != "done":
            print(f"# migration did not finish: {m}", flush=True)
            return None
        n = dst.count("verify ok")
        verified = dst.wait("verify ok", n + 1, deadline=120) and not dst.count("verify FAIL")
        own = pages["resident_bytes"] // 4096
        bound = (own + m["dirtied_pages"]) * 4096
        return {"total_ms": m["total_ms"], "downtime_ms": m["downtime_ms"], "bytes": m["bytes"],
                "rounds": m["round"], "throttle_pct": m.get("throttle_pct", 0),
                "bound_bytes": bound, "floor_ms": floor_ms(m["bytes"]), "verified": verified}
    finally:
        src.stop()
        dst.stop()


if os.geteuid() != 0:
    sys.exit("bench/migrate: only root migrates")
for rate in RATES:
    runs = [r for r in (one(rate) for _ in range(RUNS)) if r]
    if not runs:
        emit("migrate", "failed", 0, {"rate_mib_s": rate})
        continue
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "verified"}
    config = {"rate_mib_s": rate, "mem": "1G", "filled_mib": 768, "runs": len(runs),
              "link": "unix"}
    emit("migrate_total", "ms", float(med["total_ms"]), config, ref_floor_ms=med["floor_ms"])
    emit("migrate_downtime", "ms", float(med["downtime_ms"]), config)
    emit("migrate_bytes", "bytes", int(med["bytes"]), config, ref_bound_bytes=int(med["bound_bytes"]),
         ratio=round(med["bytes"] / med["bound_bytes"], 3) if med["bound_bytes"] else None)
    emit("migrate_rounds", "rounds", float(med["rounds"]), config,
         throttle_pct=med["throttle_pct"], verified=all(r["verified"] for r in runs))
