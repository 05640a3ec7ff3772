#!/usr/bin/env python3
"""bench/dedup: kvmem's page sharing against the host kernel's KSM, same guests.

Four kvmem guests of 1 GiB fill 960 MiB each with the same mix (50% pages
identical across guests, 25% zero, 25% unique) and then idle. Each run starts
sharing only once every guest has filled and verified, and samples, once a
second, the memory the kvmem host really uses: the usage of a memory cgroup of
its own (cgroup v1: anonymous pages, the frame store's shmem pages and the
kernel memory charged to it, such as the VMAs every shared run costs), plus,
under KSM, ksmd's own rmap items (which no cgroup is charged for; derived from
/sys/kernel/mm/ksm/general_profit). KSM's counters alone undercount what it
saves, so both are compared on that used memory.

Runs (--runs, comma separated):
  kvmem           kvmem's scanner at its defaults (`dedup: on`)
  kvmem-cpu100    kvmem's scanner with a whole core (cpu_percent 100, no rate limit)
  ksm-default     `dedup: ksm`, ksmd at its defaults (pages_to_scan 100, 20 ms)
  ksm-5000        `dedup: ksm`, ksmd with pages_to_scan 5000 (20 ms)
The KSM settings are restored afterwards (run, pages_to_scan, sleep_millisecs).

A run ends when the saving (once above 5% of the maximum) has not grown by 0.5%
of the maximum for 20 s, or at its time limit. Metrics, one JSON line each (name, unit, value, config):
saved_mib_over_time (a list of [s, MiB]), final_saved_mib, share_of_max_pct,
time_to_90pct_s and cpu_to_90pct_s (to 90% of that run's final saving, and the
CPU seconds of the scanner thread or ksmd by then), the same to 90% of the
maximum (null if never reached), cpu_total_s, used_mib (after), and the ratios
of each kvmem run against each KSM run. The maximum: 3 of 4 copies of the identical pages plus every
zero page, (3 * 480 + 4 * 240) MiB.

Usage: bench_dedup.py KVMEM [--runs R] [--guests 4] [--mem-mib 1024]
       [--size-mib 960] [--limit-s 300] [--ksm-default-limit-s 300]
       [--accel auto|kvm|thread]
Needs root (cgroup, KSM sysfs) and about 5 GiB of free memory.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import cmd, emit, read, request, take_accel, write

KSM = "/sys/kernel/mm/ksm/"


def ksmd_cpu():
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if read(f"/proc/{pid}/comm") == "ksmd":
                    f = read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
                    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                pass
    return 0.0


def ksm_meta_bytes():
    """ksmd's rmap items: pages_sharing * 4 KiB - general_profit (mm/ksm.c)."""
    try:
        return max(0, int(read(KSM + "pages_sharing")) * 4096 - int(read(KSM + "general_profit")))
    except (OSError, ValueError):
        return 0


class Cgroup:
    """A cgroup v1 memory group of our own for the kvmem process."""

    def __init__(self, name):
        mine = next(l.split(":", 2)[2] for l in read("/proc/self/cgroup").splitlines()
                    if l.split(":")[1] == "memory")
        self.path = f"/sys/fs/cgroup/memory{mine.rstrip('/')}/{name}"
        os.makedirs(self.path, exist_ok=True)

    def enter(self):
        write(self.path + "/cgroup.procs", os.getpid())

    def usage(self):
        return int(read(self.path + "/memory.usage_in_bytes"))

    def remove(self):
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.2)


def run_one(args, name, kvmem, tmp):
    mode = "on" if name.startswith("kvmem") else "ksm"
    sock = os.path.join(tmp, name + ".sock")
    wl = f"size={args.size_mib},dup=50,zero=25,then=sleep"
    cfg = {"budget": f"{args.guests * args.mem_mib * 2}M", "socket": sock, "dedup": mode,
           "console_prefix": True,
           "vms": [{"name": f"g{i}", "mem": f"{args.mem_mib}M", "append": f"kvmem.wl={wl},id={i + 1}"}
                   for i in range(args.guests)]}
    path = os.path.join(tmp, name + ".json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    cg = Cgroup(f"kvmem-bench-dedup-{os.getpid()}")
    p = subprocess.Popen(cmd(kvmem, "host", "--config", path), stdout=subprocess.PIPE,
                         stderr=open(os.path.join(tmp, name + ".err"), "w"), text=True,
                         preexec_fn=cg.enter)
    lines = []
    threading.Thread(target=lambda: [lines.append(l) for l in p.stdout], daemon=True).start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        try:
            request(sock, {"verb": "list"})
            break
        except OSError:
            time.sleep(0.05)
    if mode == "on":
        request(sock, {"verb": "dedup", "enabled": False})
    while sum("verify ok" in l for l in lines) < args.guests:
        if p.poll() is not None:
            sys.exit(f"{name}: kvmem exited early: {read(os.path.join(tmp, name + '.err'))}")
        time.sleep(0.2)
    time.sleep(2)
    base = cg.usage()
    limit = args.ksm_default_limit_s if name == "ksm-default" else args.limit_s
    # Start sharing.
    if mode == "on":
        full = {"cpu_percent": 100, "pages_per_sec": 1 << 24} if name == "kvmem-cpu100" else {}
        d = request(sock, dict(verb="dedup", enabled=True, **full))["dedup"]
        cpu0 = d["cpu_seconds"]
        conf = f"kvmem scanner, {d['pages_per_sec']} pages/s, {d['cpu_percent']:.0f}% CPU"
    else:
        saved_ksm = {k: read(KSM + k) for k in ("run", "pages_to_scan", "sleep_millisecs")}
        write(KSM + "pages_to_scan", 5000 if name == "ksm-5000" else 100)
        write(KSM + "sleep_millisecs", 20)
        cpu0 = ksmd_cpu()
        write(KSM + "run", 1)
        conf = f"host ksmd, pages_to_scan {read(KSM + 'pages_to_scan')}, sleep 20 ms"
    start = time.monotonic()
    series, cpus = [], []
    best, best_t = 0, start
    try:
        while True:
            time.sleep(1)
            now = time.monotonic()
            used = cg.usage() + (ksm_meta_bytes() if mode == "ksm" else 0)
            if mode == "on":
                cpu = request(sock, {"verb": "dedup"})["dedup"]["cpu_seconds"] - cpu0
            else:
                cpu = ksmd_cpu() - cpu0
            saved = (base - used) / 2**20
            series.append([round(now - start, 1), round(saved, 1)])
            cpus.append(cpu)
            if saved > best + 0.005 * args.max_mib:
                best, best_t = saved, now
            # A plateau ends the run once something was saved (ksmd starts slowly).
            if (best > 0.05 * args.max_mib and now - best_t >= 20) or now - start >= limit:
                break
        stats = request(sock, {"verb": "stats"})["host"]["dedup"]
    finally:
        if mode == "ksm":
            write(KSM + "run", saved_ksm["run"])
            write(KSM + "pages_to_scan", saved_ksm["pages_to_scan"])
            write(KSM + "sleep_millisecs", saved_ksm["sleep_millisecs"])
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
        cg.remove()
    final = max(s for _, s in series[-5:])
    i90 = next((i for i, (_, s) in enumerate(series) if s >= 0.9 * final), None) \
        if final > 0 else None
    m90 = next((i for i, (_, s) in enumerate(series) if s >= 0.9 * args.max_mib), None)
    r = {"name": name, "final": final, "t90": series[i90][0] if i90 is not None else None,
         "cpu90": cpus[i90] if i90 is not None else None, "cpu": cpus[-1],
         "t90max": series[m90][0] if m90 is not None else None,
         "cpu90max": cpus[m90] if m90 is not None else None,
         "used": (base - final * 2**20) / 2**20, "conf": conf, "series": series, "stats": stats,
         "limited": series[-1][0] >= limit - 1}
    emit("dedup.saved_mib_over_time", "MiB", series, f"{name}: {conf}")
    emit("dedup.final_saved_mib", "MiB", round(final, 1), f"{name}: {conf}",
         hit_time_limit=r["limited"])
    emit("dedup.share_of_max_pct", "%", round(100 * final / args.max_mib, 1), f"{name}: {conf}",
         max_mib=args.max_mib)
    emit("dedup.time_to_90pct_s", "s", r["t90"], f"{name}: {conf}")
    emit("dedup.cpu_to_90pct_s", "s", round(r["cpu90"], 2) if r["cpu90"] is not None else None,
         f"{name}: {conf}")
    emit("dedup.time_to_90pct_of_max_s", "s", r["t90max"], f"{name}: {conf}")
    emit("dedup.cpu_to_90pct_of_max_s", "s",
         round(r["cpu90max"], 2) if r["cpu90max"] is not None else None, f"{name}: {conf}")
    emit("dedup.cpu_total_s", "s", round(r["cpu"], 2), f"{name}: {conf}",
         seconds=series[-1][0])
    emit("dedup.used_mib", "MiB", round(r["used"], 1), f"{name}: {conf}", before_mib=round(base / 2**20, 1))
    emit("dedup.figures", "json", stats, f"{name}: {conf}")
    return r


def main():
    take_accel()
    ap = argparse.ArgumentParser()
    ap.add_argument("kvmem")
    ap.add_argument("--runs", default="kvmem,kvmem-cpu100,ksm-5000,ksm-default")
    ap.add_argument("--guests", type=int, default=4)
    ap.add_argument("--mem-mib", type=int, default=1024)
    ap.add_argument("--size-mib", type=int, default=960)
    ap.add_argument("--limit-s", type=float, default=300)
    ap.add_argument("--ksm-default-limit-s", type=float, default=300)
    args = ap.parse_args()
    n = args.guests
    args.max_mib = (n - 1) * args.size_mib // 2 + n * args.size_mib // 4
    if os.geteuid() != 0:
        sys.exit("bench_dedup needs root (cgroup, /sys/kernel/mm/ksm)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs.split(","):
            results[name] = run_one(args, name, args.kvmem, tmp)
    for ref in (r for n, r in results.items() if n.startswith("kvmem")):
        for name, r in results.items():
            if not name.startswith("ksm") or not ref["t90"]:
                continue
            ratio = {"saving": round(ref["final"] / r["final"], 3) if r["final"] > 0 else None}
            if r["t90"] and r["final"] >= 0.5 * ref["final"]:
                ratio["time_to_90pct"] = round(r["t90"] / ref["t90"], 2)
                ratio["cpu_to_90pct"] = round(r["cpu90"] / ref["cpu90"], 2) if ref["cpu90"] else None
            if r["t90max"] and ref["t90max"]:
                ratio["time_to_90pct_of_max"] = round(r["t90max"] / ref["t90max"], 2)
                ratio["cpu_to_90pct_of_max"] = round(r["cpu90max"] / ref["cpu90max"], 2) \
                    if ref["cpu90max"] else None
            emit("dedup.kvmem_vs_ksm", "ratio", ratio,
                 f"{ref['name']} against {name} (>1: kvmem better)")


if __name__ == "__main__":
    main()
