"""The scenario runner (bench/scenario.py) on its tiny scenario: one host, two
small guests for a few seconds (one arriving late and leaving early), a
budget change and a balloon target on the way. It must leave the CSV of
every host's and VM's figures, the plots as PNG files and a summary whose
figures are the guests' own; and a scenario with a mistake is refused with
the field named, before any host starts."""
import csv
import json
import os
import subprocess
import sys

from kvmemtest import ACCEL, KVMEM, check, finish, require_accel
from ctlhelp import tmpdir

require_accel()
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RUNNER = os.path.join(ROOT, "bench", "scenario.py")
TINY = os.path.join(ROOT, "bench", "scenarios", "tiny.json")


def runner(*args, timeout=300):
    return subprocess.run([sys.executable, RUNNER, *args, "--kvmem", KVMEM, "--accel", ACCEL,
                           "--quiet"], capture_output=True, text=True, timeout=timeout)


d = tmpdir()
out = os.path.join(d, "out")
r = runner(TINY, "--out", out)
check(r.returncode == 0, f"the runner exits 0 ({r.returncode}: {r.stderr.strip()[-500:]})")

with open(os.path.join(out, "hosts.csv")) as f:
    hosts = list(csv.DictReader(f))
with open(os.path.join(out, "vms.csv")) as f:
    vms = list(csv.DictReader(f))
check(len(hosts) >= 12 and {h["host"] for h in hosts} == {"h1"},
      f"hosts.csv: a row per sample of h1 ({len(hosts)} rows)")
check(all(int(h["resident_bytes"]) + sum(int(v) for k, v in h.items()
                                         if k.startswith("saved_by.")) ==
          int(h["configured_bytes"]) for h in hosts),
      "hosts.csv: resident and saved_by add up to configured in every row")
check(any(h["budget_bytes"] == str(1 << 30) for h in hosts) and
      hosts[-1]["budget_bytes"] == str(768 << 20), "the budget change shows (1 GiB, then 768 MiB)")
a = [v for v in vms if v["vm"] == "a"]
b = [v for v in vms if v["vm"] == "b"]
check(len(a) >= 12 and b and float(b[0]["t_s"]) >= 1 and float(b[-1]["t_s"]) <= 7,
      f"vms.csv: a all along, b from its start to its removal ({len(a)}, {len(b)} rows)")
check(int(a[-1]["balloon.target_bytes"]) == 96 << 20,
      f"a's balloon target shows ({a[-1]['balloon.target_bytes']})")
check(any(v["wl_ops"] for v in a), "a's workload progress is in vms.csv")

for png in ("host-h1-stack.png", "host-h1-memory.png", "vms-resident.png", "vms-rate.png"):
    p = os.path.join(out, png)
    with open(p, "rb") as f:
        head = f.read(8) if os.path.exists(p) else b""
    check(head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(p) > 2000, f"{png} is a PNG image")

with open(os.path.join(out, "summary.json")) as f:
    s = json.load(f)
check(s["failed_events"] == 0 and s["events"] == 5,
      f"summary: 5 actions, none failed ({s['events']}, {s['failed_events']})")
# A rate needs two progress reports of the workload. b lives five seconds of
# the scenario's clock, and a loaded host (the nested VM's emulated KVM beside
# other work) may boot it too late for two: its rate is asked for only then.
reported = {n: len({r["wl_ms"] for r in vms if r["vm"] == n and r["wl_ms"]}) for n in s["vms"]}
check(all(v["verify_failures"] == 0 for v in s["vms"].values()) and reported["a"] >= 2 and
      all(v["rate_ops_s_median"] and v["rate_ops_s_median"] > 0
          for n, v in s["vms"].items() if reported[n] >= 2),
      f"summary: the guests verified and kept their rate (progress reports {reported}; "
      f"{s['vms']})")
check(os.path.exists(os.path.join(out, "summary.txt")) and "host h1: used peak" in r.stdout,
      "the summary is printed and kept")

# A mistake is one line naming the field, status 2, and nothing runs.
bad = os.path.join(d, "bad.json")
with open(TINY) as f:
    sc = json.load(f)
sc["vms"][1]["host"] = "h9"
with open(bad, "w") as f:
    json.dump(sc, f)
r = runner(bad, "--out", os.path.join(d, "bad-out"))
check(r.returncode == 2 and "vms[1].host" in r.stderr and not os.path.exists(
    os.path.join(d, "bad-out")), f"a VM on an unknown host is refused ({r.returncode}: "
      f"{r.stderr.strip()})")
finish()
