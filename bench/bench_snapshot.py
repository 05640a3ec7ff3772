#!/usr/bin/env python3
"""bench/snapshot: saving a 1 GiB guest to a snapshot file and restoring it, eagerly and lazily.

One guest with 1 GiB of RAM fills 768 MiB (unique pages, a fifth of them zero) and rewrites random
pages of it at 8 MiB/s. WARM seconds after its fill it is saved and stopped (`save`, stop: the file
durable and named). The file is then restored into a fresh host, once loading every page first
(eager) and once lazily (the VM runs at once; its pages come from the file on touch and from the
prefetcher). Per mode, medians of --runs runs:

  save_ms          the save, from the request to the file durable and named
  running_ms       restore: from the request to the VM running (the verb's answer)
  first_line_ms    restore: from the request to the guest's first console line ("resumed from a
                   saved state", printed at its first sleep once it runs again)
  resident_ms      restore: from the request to the last page of the file in memory
  write_floor_ms   writing as many bytes as the file holds to a file in the same directory and
                   fsync: what the disk alone costs a save
  read_floor_ms    reading the whole snapshot file once: what reading alone costs a restore

The file is in the page cache for the warm restores (it was just written); --cold drops the
caches before each restore too (root). Where: --dir (default /var/tmp). Usage:
  bench_snapshot.py KVMEM [--accel auto|kvm|thread] [--runs N] [--dir DIR] [--cold]
"""
import json
import os
import statistics
import sys
import tempfile
import time

from benchlib import Host, cmd, emit, request, take_accel, take_opt, wait_sock

ACCEL = take_accel()
RUNS = int(take_opt("--runs", "3"))
WHERE = take_opt("--dir", "/var/tmp")
COLD = "--cold" in sys.argv
if COLD:
    sys.argv.remove("--cold")
WARM = 3
KVMEM = sys.argv[1]
WL = "kvmem.wl=size=768,zero=20,id=1,rate=8,verify=5,then=sleep"


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def write_floor_ms(path, nbytes):
    """Write nbytes to a new file in path's directory, 1 MiB at a time, and fsync it."""
    buf = os.urandom(1 << 20)
    tmp = path + ".floor"
    t0 = time.monotonic()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    left = nbytes
    while left > 0:
        left -= os.write(fd, buf[:min(left, len(buf))])
    os.fsync(fd)
    os.close(fd)
    ms = (time.monotonic() - t0) * 1000
    os.unlink(tmp)
    return ms


def read_floor_ms(path):
    t0 = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    while os.read(fd, 1 << 20):
        pass
    os.close(fd)
    return (time.monotonic() - t0) * 1000


def job_of(sock, vm, kind):
    st = request(sock, {"verb": "stats"})
    found = [m for m in st.get("migrated", []) if m["vm"] == vm and m["kind"] == kind] + \
        [v["migration"] for v in st["vms"] if v["name"] == vm and
         (v.get("migration") or {}).get("kind") == kind]
    return found[-1] if found else {}


def restore(d, snap, lazy):
    """Restore snap into a fresh host: (running_ms, first_line_ms, resident_ms, verified)."""
    sock, inc = f"{d}/r.sock", f"unix:{d}/r-in.sock"
    h = Host(cmd(KVMEM, "host", "--incoming", inc, "--socket", sock))
    try:
        if not wait_sock(sock):
            return None
        if COLD:
            drop_caches()
        t0 = time.monotonic()
        r = request(sock, {"verb": "restore", "file": snap, "lazy": lazy}, timeout=120)
        running = (time.monotonic() - t0) * 1000
        if not r.get("ok"):
            print(f"# restore refused: {r}", flush=True)
            return None
        if not h.wait("resumed from a saved state", deadline=120, step=0.001):
            return None
        first = (time.monotonic() - t0) * 1000
        resident = running
        while lazy:
            v = [v for v in request(sock, {"verb": "stats"})["vms"] if v["name"] == "s"][0]
            if (v.get("restore") or {}).get("pages_left") == 0:
                resident = (time.monotonic() - t0) * 1000
                break
            time.sleep(0.005)
        n = h.count("verify ok")
        verified = h.wait("verify ok", n + 1, deadline=120) and not h.count("verify FAIL")
        return running, first, resident, verified
    finally:
        h.stop()


def one():
    d = tempfile.mkdtemp(prefix="kvmem-bsnap-", dir=WHERE)
    sock, snap = f"{d}/a.sock", f"{d}/s.snap"
    cfg = {"budget": "8G", "socket": sock, "dedup": "off", "incoming": f"unix:{d}/a-in.sock",
           "vms": [{"name": "s", "mem": "1G", "cpus": 2, "append": WL}]}
    with open(f"{d}/a.json", "w") as f:
        json.dump(cfg, f)
    src = Host(cmd(KVMEM, "host", "--config", f"{d}/a.json"))
    try:
        if not (wait_sock(sock) and src.wait("kvmem-wl: filled")):
            return None
        time.sleep(WARM)
        t0 = time.monotonic()
        r = request(sock, {"verb": "save", "vm": "s", "to": snap, "stop": True})
        if not r.get("ok"):
            print(f"# save refused: {r}", flush=True)
            return None
        m = {}
        while m.get("stage") not in ("done", "failed"):
            time.sleep(0.005)
            m = job_of(sock, "s", "save")
        save = (time.monotonic() - t0) * 1000
        if m.get("stage") != "done":
            print(f"# save failed: {m}", flush=True)
            return None
        src.stop()
        on_disk = os.stat(snap).st_blocks * 512
        out = {"save_ms": save, "save_downtime_ms": m["downtime_ms"], "file_bytes": on_disk,
               "write_floor_ms": write_floor_ms(snap, on_disk)}
        if COLD:
            drop_caches()
        out["read_floor_ms"] = read_floor_ms(snap)
        for mode, lazy in (("eager", False), ("lazy", True)):
            res = restore(d, snap, lazy)
            if not res:
                return None
            out[f"{mode}_running_ms"], out[f"{mode}_first_line_ms"], \
                out[f"{mode}_resident_ms"], out[f"{mode}_verified"] = res
        return out
    finally:
        src.stop()
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)


if COLD and os.geteuid() != 0:
    sys.exit("bench/snapshot: --cold drops the page cache: root only")
runs = [r for r in (one() for _ in range(RUNS)) if r]
if not runs:
    emit("snapshot", "failed", 0, {})
    sys.exit(1)
med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if not k.endswith("verified")}
config = {"mem": "1G", "filled_mib": 768, "runs": len(runs), "cache": "cold" if COLD else "warm",
          "dir": WHERE}
emit("snapshot_save", "ms", float(med["save_ms"]), config, ref_write_floor_ms=med["write_floor_ms"],
     downtime_ms=med["save_downtime_ms"], file_bytes=int(med["file_bytes"]))
for mode in ("eager", "lazy"):
    c = dict(config, mode=mode)
    emit("snapshot_restore_running", "ms", float(med[f"{mode}_running_ms"]), c,
         ref_read_floor_ms=med["read_floor_ms"])
    emit("snapshot_restore_first_line", "ms", float(med[f"{mode}_first_line_ms"]), c)
    emit("snapshot_restore_resident", "ms", float(med[f"{mode}_resident_ms"]), c,
         ref_read_floor_ms=med["read_floor_ms"],
         verified=all(r[f"{mode}_verified"] for r in runs))
