#!/usr/bin/env python3
"""bench/density: how many guests fit in one memory budget while each keeps its
service level, with kvmem's mechanisms and with the usual alternative.

    bench_density.py KVMEM SWAP_DIR [--accel A] [--budget 1G] [--mem 256M]
                     [--wl SPEC] [--corpora DIR] [--max N] [--settle S] [--window S]
                     [--variants all,dedup,balloon,swap,ksm,none] [--plot FILE]

Every guest runs the same workload (--wl; default a 192 MiB fill, 40% of it
alike across guests, 15% zero, a quarter of it hot: rewritten at 2 MiB/s and
read at 4 MiB/s, reporting its progress every second). With --corpora DIR
(bench/corpora.py's output) the guests' memory looks like real guests'
instead: 45% of the fill copied from a corpus, the guests taking DIR's
py.corpus and pl.corpus in turn (two kinds of service whose libraries and
executables are the same), 15% zero, the rest their own. A trial starts N
guests of --mem each on one host, waits for every fill, lets the host settle
(--settle s), then measures for --window s. N guests fit when, over the
window:

  - every guest's workload rate is at least 90% of a guest's rate alone (one
    guest, no budget pressure, measured first in the same run);
  - no guest ever fails a verification;
  - the host's memory stays within the budget: its used memory (the kernel's
    figure for the kvmem process) at the median of the window at most 5%
    above it.

For each variant the density is the largest N that fits: the search starts
where the budget holds every guest's whole memory (that many must fit: no
overcommit is needed), climbs in growing steps until a trial fails, and
bisects between the last N that fit and the first that did not (a trial per
step, not one for every N).

The variants:

  all       kvmem with everything: page sharing, the balloon, host swap (a
            file with a 64 MiB compressed pool), zero pages
  dedup     page sharing (and zero pages) only
  balloon   the balloon (and zero pages) only
  swap      host swap (and zero pages) only
  ksm       the usual way: no kvmem reclaim (a budget far above use), the
            host kernel's KSM (`dedup: ksm`, ksmd at 5000 pages per 20 ms)
            and the kernel's swap (a swap file in SWAP_DIR), the kvmem
            process in a memory cgroup limited to the budget (root needed)
  none      no overcommit: as many guests as their memory fits in the budget

Prints one JSON line per variant (density, and the rates and use of the
last trial that fit and of the first that did not), then a table; --plot
writes a bar chart (gnuplot PNG). Long: each trial takes a fill, the settle
and the window.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import (Host, cmd, emit, memory_cgroup, read, request, take_accel, take_opt,
                      wait_sock, write)

ACCEL = take_accel()
BUDGET = take_opt("--budget", "1G")
MEM = take_opt("--mem", "256M")
CORPORA = take_opt("--corpora", None)
WL = take_opt("--wl", "size=192,corpus=45,zero=15,hot=25,rate=2,read=4,report=1,then=sleep"
              if CORPORA else "size=192,dup=40,zero=15,hot=25,rate=2,read=4,report=1,then=sleep")
MAXN = int(take_opt("--max", "12"))
SETTLE = int(take_opt("--settle", "20"))
WINDOW = int(take_opt("--window", "20"))
VARIANTS = take_opt("--variants", "none,all,dedup,balloon,swap,ksm").split(",")
PLOT = take_opt("--plot", None)
if len(sys.argv) != 3:
    sys.exit(__doc__.split("\n\n")[1])
KVMEM, SWAPDIR = sys.argv[1], sys.argv[2]
MIB = {"M": 1, "G": 1024}
BUDGET_MIB = int(BUDGET[:-1]) * MIB[BUDGET[-1]]
MEM_MIB = int(MEM[:-1]) * MIB[MEM[-1]]
KSM = "/sys/kernel/mm/ksm/"


def config(variant, d, n):
    # Without the balloon the guest binds no driver (nor reports free pages).
    nob = " kvmem.balloon=off" if variant in ("dedup", "swap", "ksm") else ""
    cfg = {"budget": BUDGET, "socket": f"{d}/k.sock", "console_prefix": True,
           "dedup": "on" if variant in ("all", "dedup") else "off",
           "vms": [{"name": f"g{i}", "mem": MEM, "append": f"kvmem.wl={WL},id={i + 1}{nob}"}
                   for i in range(n)]}
    if CORPORA:
        for i, vm in enumerate(cfg["vms"]):
            vm["corpus"] = os.path.join(CORPORA, ("py", "pl")[i % 2] + ".corpus")
    if variant in ("all", "swap"):
        cfg["swap"] = {"path": SWAPDIR, "size": f"{n * MEM_MIB}M",
                       **({"pool": "64M"} if variant == "all" else {})}
    if variant == "ksm":
        cfg.update(dedup="ksm", budget="64G")
    if variant == "none":
        cfg["budget"] = "64G"
    return cfg


def progress(host, name):
    """(guest ms, ops) of every progress line of guest name so far."""
    tag = f"[{name}] kvmem-wl: progress "
    out = []
    for line in list(host.lines):
        if line.startswith(tag):
            f = line[len(tag):].split()
            out.append((int(f[0]), int(f[3])))
    return out


def trial(variant, n):
    """One trial of n guests: (fit, {rates, used, failures}) or raise on a broken host."""
    d = tempfile.mkdtemp(prefix="kvmem-density-")
    cg = swapfile = None
    saved_ksm = None
    try:
        with open(f"{d}/host.json", "w") as f:
            json.dump(config(variant, d, n), f)
        argv = cmd(KVMEM, "host", "--config", f"{d}/host.json")
        if variant == "ksm":
            swapfile = os.path.join(SWAPDIR, f"kvmem-density-swap-{os.getpid()}")
            subprocess.run(["fallocate", "-l", f"{n * MEM_MIB}M", swapfile], check=True)
            os.chmod(swapfile, 0o600)
            subprocess.run(["mkswap", swapfile], check=True, capture_output=True)
            subprocess.run(["swapon", swapfile], check=True, capture_output=True)
            parent, limit_file = memory_cgroup()
            cg = os.path.join(parent, f"kvmem-density-{os.getpid()}")
            os.mkdir(cg)
            write(os.path.join(cg, limit_file), BUDGET_MIB << 20)
            argv = ["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh", *argv]
            saved_ksm = {k: read(KSM + k) for k in ("run", "pages_to_scan", "sleep_millisecs")}
            write(KSM + "pages_to_scan", 5000)
            write(KSM + "sleep_millisecs", 20)
            write(KSM + "run", 1)
        h = Host(argv)
        try:
            if not wait_sock(f"{d}/k.sock"):
                raise RuntimeError(f"the host did not come up: {h.lines[-3:]}")
            if not h.wait("kvmem-wl: filled", n, deadline=120 + 60 * n):
                return False, {"why": f"{h.count('kvmem-wl: filled')} of {n} guests filled"}
            time.sleep(SETTLE)
            start = {f"g{i}": progress(h, f"g{i}")[-1:] for i in range(n)}
            used = []
            for _ in range(WINDOW):
                time.sleep(1)
                st = request(f"{d}/k.sock", {"verb": "stats"})
                used.append(st["host"]["used_bytes"] >> 20)
            rates = []
            for i in range(n):
                # A guest that reported nothing did no work: rate 0, it does not fit.
                a, b = (start[f"g{i}"] or [(0, 0)])[0], (progress(h, f"g{i}") or [(0, 0)])[-1]
                rates.append((b[1] - a[1]) * 1000 / (b[0] - a[0]) if b[0] > a[0] else 0.0)
            fails = h.count("verify FAIL")
            return True, {"rates": [round(r, 1) for r in rates], "used_mib": statistics.median(used),
                          "verify_failures": fails}
        finally:
            h.stop()
    finally:
        if saved_ksm:
            for k, v in saved_ksm.items():
                write(KSM + k, v)
        if swapfile:
            subprocess.run(["swapoff", swapfile], capture_output=True)
            os.unlink(swapfile)
        if cg:
            os.rmdir(cg)
        shutil.rmtree(d, ignore_errors=True)


def fits(res, alone):
    return (res["verify_failures"] == 0 and min(res["rates"]) >= 0.9 * alone and
            res["used_mib"] <= 1.05 * BUDGET_MIB)


ok, alone_res = trial("none", 1)
if not ok:
    sys.exit(f"bench/density: a guest alone did not run: {alone_res}")
alone = alone_res["rates"][0]
config_line = {"budget": BUDGET, "mem": MEM, "wl": WL, "corpora": CORPORA, "settle_s": SETTLE,
               "window_s": WINDOW}


def attempt(variant, n):
    """One trial of n guests: (fit, its figures)."""
    try:
        ran, res = trial(variant, n)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        ran, res = False, {"error": str(e)}
    res["n"] = n
    ok = ran and "error" not in res and fits(res, alone)
    print(f"# {variant}: {n} {'fit' if ok else 'do not fit'} ({res})", flush=True)
    return ok, res


def density(variant):
    """(largest n that fit, its figures, the figures of the smallest n that did not)."""
    lo, last_fit, first_fail = 0, None, None
    hi, step = max(1, min(BUDGET_MIB // MEM_MIB, MAXN)), 1
    while True:
        ok, res = attempt(variant, hi)
        if not ok:
            first_fail = res
            break
        lo, last_fit = hi, res
        if hi == MAXN:
            return lo, last_fit, None
        hi, step = min(hi + step, MAXN), step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok, res = attempt(variant, mid)
        if ok:
            lo, last_fit = mid, res
        else:
            hi, first_fail = mid, res
    return lo, last_fit, first_fail


table = []
for variant in VARIANTS:
    if variant == "none":
        best, last_fit, first_fail = BUDGET_MIB // MEM_MIB, None, None
    else:
        best, last_fit, first_fail = density(variant)
    capped = variant != "none" and best == MAXN
    emit("density", "guests", best, dict(config_line, variant=variant), alone_ops_s=alone,
         capped=capped, last_fit=last_fit, first_fail=first_fail)
    table.append((variant, best, capped))

print(f"\n{'variant':10} guests in {BUDGET} ({MEM} each, rate >= 90% of alone {alone:.0f} ops/s)")
for variant, best, capped in table:
    print(f"{variant:10} {best}{f' or more (--max {MAXN})' if capped else ''}")
if PLOT:
    with tempfile.TemporaryDirectory() as d:
        with open(f"{d}/d.dat", "w") as f:
            for i, (variant, best, _) in enumerate(table):
                f.write(f"{i} {variant} {best}\n")
        with open(f"{d}/d.gp", "w") as f:
            f.write(f"""set terminal pngcairo size 800,500 noenhanced
set output '{os.path.abspath(PLOT)}'
set title 'guests of {MEM} that fit in {BUDGET} at their service level ({ACCEL})'
set style fill solid 0.7
set boxwidth 0.6
set yrange [0:*]
set offsets 0, 0, 1, 0
set grid y
plot '{d}/d.dat' using 1:3:xtic(2) with boxes notitle, '' using 1:3:3 with labels offset 0,1 notitle
""")
        subprocess.run(["gnuplot", f"{d}/d.gp"], check=True)
