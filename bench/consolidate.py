#!/usr/bin/env python3
"""bench/consolidate: content-aware placement against content-blind placement
on the same arrivals.

    bench/consolidate.py SCENARIO.json [--kvmem PATH] [--accel auto|kvm|thread]
                         [--out DIR] [--swap-dir DIR] [--quiet]

Runs the scenario twice with bench/scenario.py, everything the same but the
controller's placement: "content" (the VM and destination that gain the most
sharing, by fingerprints) and "least_loaded" (the VM furthest above its
entitlement to the host of most headroom); the scenario's other controller
settings stay. Each run's CSV, plots and summary go to DIR/PLACEMENT (default
DIR: ./consolidate-NAME), the scenario it ran to DIR/PLACEMENT.json. Then it
prints the two side by side: migrations done and started, host-seconds over
budget (resident above budget), the hosts' resident summed (mean and peak),
the sharing at the end (across and within VMs, all hosts), verify failures
and failed actions, and keeps the table in DIR/comparison.txt. Status 0 when
both runs finished without a verify failure.

bench/scenarios/consolidate.json is made for it: two hosts with page sharing
and budgets of 380 MiB, guests of two families (A fills 224 MiB, B 128 MiB;
60% of a guest's pages alike within its family, a tenth zero, nothing alike
across families; their rewrites, 1 MiB/s, stay within a tenth of the pages,
as a page rewritten is alike no more) arriving over 100 s, each family started on both hosts, one
A leaving at 90 s. When a3 joins a1 and b2 on h1 (at 30 s) h1 is over its
budget: b2 moving to the B on h2 fits h2's budget, an A moving to the A there
does not (it gives up on h1 what it finds on h2). When a4, then a5, join the
Bs and an A on h2, an A moving to the As on h1 fits. The content-blind rule
moves an A each time (the VM furthest above its entitlement), and the
overload goes from host to host.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import take_accel, take_opt  # noqa: E402
from scenario import scenario_arg  # noqa: E402

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenario.py")
PLACEMENTS = ("content", "least_loaded")


def run(sc, placement, out, args):
    """One run of the scenario with this placement; its summary, or None."""
    path = os.path.join(out, placement + ".json")
    with open(path, "w") as f:
        json.dump(dict(sc, controller=dict(sc["controller"], placement=placement)), f, indent=1)
    r = subprocess.run([sys.executable, RUNNER, path, "--out", os.path.join(out, placement),
                        *args])
    if r.returncode:
        print(f"consolidate: the {placement} run failed (status {r.returncode})",
              file=sys.stderr)
        return None
    with open(os.path.join(out, placement, "summary.json")) as f:
        return json.load(f)


def rows(s):
    """The figures compared, as (label, value) for one run's summary."""
    c = s["cluster"]
    return [("migrations done", c["migrations"]),
            ("migrations started", c["migrations_started"]),
            ("host-seconds over budget", c["host_s_over_budget"]),
            ("resident summed, mean MiB", c["resident_mib_mean"]),
            ("resident summed, peak MiB", c["resident_mib_peak"]),
            ("shared at the end, across MiB", c["shared_across_mib_end"]),
            ("shared at the end, within MiB", c["shared_within_mib_end"]),
            ("verify failures", sum(v["verify_failures"] for v in s["vms"].values())),
            ("failed actions", s["failed_events"])]


def table(summaries):
    cols = [rows(summaries[p]) for p in PLACEMENTS]
    out = [f"{'':32}" + "".join(f"{p:>14}" for p in PLACEMENTS)]
    for i, (label, _) in enumerate(cols[0]):
        out.append(f"{label:32}" + "".join(f"{c[i][1]:>14}" for c in cols))
    return "\n".join(out) + "\n"


def main():
    command = " ".join(["python3"] + sys.argv)
    accel = take_accel()
    args = ["--accel", accel]
    for flag in ("--kvmem", "--swap-dir"):
        v = take_opt(flag, None)
        args += [flag, v] if v else []
    out = take_opt("--out", None)
    args += ["--quiet"] if "--quiet" in sys.argv else []
    sc = scenario_arg(__doc__.split("\n\n")[1], "consolidate")
    out = out or f"consolidate-{sc['name']}"
    os.makedirs(out, exist_ok=True)
    summaries = {p: run(sc, p, out, args) for p in PLACEMENTS}
    if None in summaries.values():
        return 1
    text = f"{command}\nscenario {sc['name']} ({accel}):\n" + table(summaries)
    with open(os.path.join(out, "comparison.txt"), "w") as f:
        f.write(text)
    print(text + f"consolidate: both runs in {out}", flush=True)
    fails = sum(v["verify_failures"] for s in summaries.values() for v in s["vms"].values())
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
