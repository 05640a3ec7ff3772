#!/usr/bin/env python3
"""bench/soak: many small guests for a long time, every mechanism at once, and
what must not happen: a verify failure, an error, or the VMM's own memory growing.

    bench/soak.py [--minutes N] [--guests N] [--kvmem PATH] [--accel auto|kvm|thread]
                  [--out DIR] [--swap-dir DIR] [--seed N]

Two hosts (page sharing on, a swap file with a pool, a budget below what the
guests would use, so the balloon policy, sharing and swap all work) run
--guests guests (default 16) for --minutes (default 30), through
bench/scenario.py (the scenario it writes is in the output directory):
  - a quarter of them live the whole run and migrate to the other host and
    back, one every 45 s in turn;
  - the rest churn: each lives 60 to 240 s, is removed, and 5 s later a new
    guest takes its place on the same host (the seed picks the lifetimes).
Every guest writes, reads and checks its pages all the time (each read checks
the page) and verifies all of them every 20 s.

The report (also soak.json in the output directory), and exit status 1 when a
goal fails:
  verify failures      must be 0 (the guests' "verify FAIL" lines, all hosts)
  errors               must be 0: actions the hosts refused (events.csv) and
                       error lines in the hosts' logs
  guests started       how many guests ran, and migrations done
  VMM memory           per host, the VMM's own memory (its PSS less the guest
                       memory it holds: used_bytes - resident_bytes -
                       the swap pool's used bytes) and its heap metadata
                       (vmm_heap_bytes, 0 in sanitizer builds), as the median
                       of the first and of the last fifth of the run after a
                       two-minute warm-up: growth must stay under 10% + 16 MiB
A soak is not a test: it runs by hand (or on a schedule), never in .ci/run.
"""
import csv
import json
import os
import random
import statistics
import subprocess
import sys

from benchlib import take_opt

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20
WL = "size=48,dup=40,zero=10,id={id},seed={seed},rate=2,read=4,hot=30,verify=20,report=5,then=sleep"
WARMUP_S = 120
GROWTH_PCT, GROWTH_MIB = 10, 16


def take(args, opt, default, conv=str):
    """take_opt, converted; a value that does not convert is a usage error."""
    v = take_opt(opt, None, args)
    if v is None:
        return default
    try:
        return conv(v)
    except ValueError:
        sys.exit(f"soak: {opt} {v}: not a number")


def scenario(minutes, guests, seed):
    """The soak's scenario for bench/scenario.py: hosts, guests, churn and migrations."""
    rnd = random.Random(seed)
    dur = int(minutes * 60)
    # Each guest keeps about 45 MiB resident on its own: a budget of 32 MiB a guest (and
    # the VMM's 16) makes the policy balloon, share and swap all the time.
    budget = (guests + 1) // 2 * 32 + 16
    hosts = [{"name": h, "budget": f"{budget}M", "dedup": "on",
              "swap": {"size": "2G", "pool": "32M"}} for h in ("h1", "h2")]
    vms, events, n = [], [], 0
    stayers = max(2, guests // 4)
    for i in range(stayers):
        n += 1
        vms.append({"name": f"m{i}", "host": hosts[i % 2]["name"], "mem": "96M", "min": "24M",
                    "workload": WL.format(id=n, seed=n)})
    for i in range(guests - stayers):
        host, t, gen = hosts[i % 2]["name"], rnd.randint(0, 30), 0
        while t < dur - 30:
            life = rnd.randint(60, 240)
            n += 1
            vm = {"name": f"c{i}g{gen}", "host": host, "mem": "96M", "min": "24M",
                  "workload": WL.format(id=n, seed=i + 1), "start_s": t}
            if t + life < dur - 10:
                vm["stop_s"] = t + life
            vms.append(vm)
            t, gen = t + life + 5, gen + 1
    # The stayers move in turn: each goes to the other host, and on its next turn back.
    where = {f"m{i}": hosts[i % 2]["name"] for i in range(stayers)}
    for k, at in enumerate(range(60, dur - 30, 45)):
        vm = f"m{k % stayers}"
        to = "h2" if where[vm] == "h1" else "h1"
        events.append({"at_s": at, "do": "migrate", "vm": vm, "to": to})
        where[vm] = to
    return {"name": "soak", "duration_s": dur, "interval_s": 2, "hosts": hosts,
            "vms": vms, "events": events}


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def num(r, k):
    try:
        return float(r.get(k) or 0)
    except ValueError:
        return 0.0


def growth(samples):
    """Median of the first and the last fifth of (t, value) after the warm-up."""
    s = [v for t, v in samples if t >= WARMUP_S] or [v for _, v in samples]
    if len(s) < 5:
        return None
    fifth = max(1, len(s) // 5)
    first, last = statistics.median(s[:fifth]), statistics.median(s[-fifth:])
    return {"first_mib": round(first / MIB, 1), "last_mib": round(last / MIB, 1),
            "ok": last <= first * (1 + GROWTH_PCT / 100) + GROWTH_MIB * MIB}


def report(out, sc):
    hosts = rows(os.path.join(out, "hosts.csv"))
    events = rows(os.path.join(out, "events.csv"))
    fails, errors = 0, []
    for h in sc["hosts"]:
        with open(os.path.join(out, f"host-{h['name']}.log"), errors="replace") as f:
            for line in f:
                fails += "kvmem-wl: verify FAIL" in line
                if "kvmem: error:" in line:
                    errors.append(f"{h['name']}: {line.strip()}")
    for e in events:
        try:
            ok = json.loads(e["reply"]).get("ok")
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            errors.append(f"{e['what']} at {e['t_s']} s: {e['reply']}")
    summary = json.load(open(os.path.join(out, "summary.json")))
    r = {"minutes": round(sc["duration_s"] / 60, 1), "verify_failures": fails,
         "errors": len(errors), "error_lines": errors[:20],
         "guests_started": len(sc["vms"]),
         "migrations_done": summary["cluster"]["migrations"],
         "migrations_asked": len(sc["events"]), "vmm": {}}
    for h in sc["hosts"]:
        mine = [x for x in hosts if x["host"] == h["name"]]
        own = [(num(x, "t_s"), num(x, "used_bytes") - num(x, "resident_bytes") -
                num(x, "swap.pool.used_bytes")) for x in mine]
        heap = [(num(x, "t_s"), num(x, "vmm_heap_bytes")) for x in mine]
        r["vmm"][h["name"]] = {"own_memory": growth(own), "heap": growth(heap)}
        # A host too busy to answer a stats request within its deadline misses a sample.
        r.setdefault("stats_samples", {})[h["name"]] = (
            f"{len(mine)} of {sc['duration_s'] // sc['interval_s'] + 1}")
    goals = [fails == 0, not errors] + [g["ok"] for v in r["vmm"].values()
                                        for g in v.values() if g]
    r["ok"] = all(goals)
    return r


def main():
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        print(__doc__)
        return 0
    minutes = take(args, "--minutes", 30.0, float)
    guests = take(args, "--guests", 16, int)
    seed = take(args, "--seed", 1, int)
    out = take(args, "--out", os.path.abspath("soak-out"))
    passthrough = []
    for opt in ("--kvmem", "--accel", "--swap-dir"):
        v = take(args, opt, None)
        if v is not None:
            passthrough += [opt, v]
    if args:
        sys.exit(f"soak: unknown argument {args[0]} (see --help)")
    if minutes < 3 or guests < 4:
        sys.exit("soak: at least 3 minutes and 4 guests (the warm-up alone is 2 minutes)")
    os.makedirs(out, exist_ok=True)
    sc = scenario(minutes, guests, seed)
    path = os.path.join(out, "soak-scenario.json")
    with open(path, "w") as f:
        json.dump(sc, f, indent=1)
    print(f"soak: {guests} guests ({len(sc['vms'])} over the run), {minutes:g} min, "
          f"{len(sc['events'])} migrations asked; scenario {path}", flush=True)
    rc = subprocess.call([sys.executable, os.path.join(HERE, "scenario.py"), path,
                          "--out", out, "--quiet"] + passthrough)
    if rc != 0 or not os.path.exists(os.path.join(out, "summary.json")):
        print(f"soak: the scenario runner failed (status {rc}); see {out}")
        return 1
    r = report(out, sc)
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump(r, f, indent=1)
    print(f"soak: {r['minutes']} min, {r['guests_started']} guests, "
          f"{r['migrations_done']} of {r['migrations_asked']} migrations done")
    print(f"soak: verify failures {r['verify_failures']} (goal 0), errors {r['errors']} (goal 0); "
          f"stats samples per host {r['stats_samples']}")
    for line in r["error_lines"]:
        print(f"soak:   {line}")
    for h, v in r["vmm"].items():
        for what, g in v.items():
            if g:
                print(f"soak: {h} VMM {what.replace('_', ' ')}: {g['first_mib']} MiB -> "
                      f"{g['last_mib']} MiB ({'ok' if g['ok'] else 'GROWS'}; goal under "
                      f"{GROWTH_PCT}% + {GROWTH_MIB} MiB)")
    print(f"soak: {'passed' if r['ok'] else 'FAILED'}")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
