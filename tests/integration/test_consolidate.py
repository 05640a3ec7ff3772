"""The scenario runner's placement controller (bench/scenario.py, "controller")
with placement "content": a host over its budget gets relief by moving the
VM whose content its destination holds.

Host h1 (budget 140 MiB) runs a1 and a2 (family A: 64 MiB each, 60% of it
alike) and b1 (family B: 96 MiB, 60% alike with B); h2 (budget 1 GiB) runs
b2. h1 holds more than its budget, whether A's sharing has merged yet or
not. The controller must move b1, which shares its family's pages with b2
(a1 or a2 would give up what they share with each other and share nothing on
h2), and b1 must end on h2 beside b2. Once it left, a1 and a2 fit h1 even
unmerged, so nothing else moves. The guests verify throughout. What is
asserted is where VMs end and what the controller recorded, never when. A
controller field with a mistake is refused with the field named."""
import csv
import json
import os
import subprocess
import sys

from kvmemtest import ACCEL, KVMEM, check, finish, require_accel, require_root
from ctlhelp import tmpdir

require_accel()
if ACCEL == "kvm":
    # Not registered for kvm (see tests/meson.build); run by hand, say why it stops.
    print("SKIP   the placement controller runs on thread (the same verbs; a migration under "
          "emulated KVM outlasts the scenario)")
    raise SystemExit(77)
require_root("the controller migrates VMs")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RUNNER = os.path.join(ROOT, "bench", "scenario.py")
A = "size=64,dup=60,zero=10,seed=1,rate=1,read=2,hot=10,report=1,then=sleep,id="
B = "size=96,dup=60,zero=10,seed=2,rate=1,read=2,hot=10,report=1,then=sleep,id="
FAMILY = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}
SCENARIO = {
    "name": "consolidate-tiny", "duration_s": 45, "interval_s": 1,
    "hosts": [{"name": "h1", "budget": "140M", "dedup": "on"},
              {"name": "h2", "budget": "1G", "dedup": "on"}],
    "vms": [{"name": "a1", "host": "h1", "mem": "128M", "workload": A + "1"},
            {"name": "a2", "host": "h1", "mem": "128M", "workload": A + "2"},
            {"name": "b1", "host": "h1", "mem": "128M", "workload": B + "11"},
            {"name": "b2", "host": "h2", "mem": "128M", "workload": B + "12"}],
    "controller": {"placement": "content", "hold_s": 5, "cooldown_s": 10},
}


def runner(sc, out):
    path = out + ".json"
    with open(path, "w") as f:
        json.dump(sc, f)
    return subprocess.run([sys.executable, RUNNER, path, "--out", out, "--kvmem", KVMEM,
                           "--accel", ACCEL], capture_output=True, text=True, timeout=600)


def rows(out, name):
    with open(os.path.join(out, name)) as f:
        return list(csv.DictReader(f))


d = tmpdir()
out = os.path.join(d, "content")
r = runner(SCENARIO, out)
print(r.stdout, end="", flush=True)
check(r.returncode == 0, f"the runner exits 0 ({r.returncode}: {r.stderr.strip()[-500:]})")
for name in ("hosts.csv", "vms.csv", "events.csv", "summary.json", "summary.txt"):
    check(os.path.exists(os.path.join(out, name)), f"{name} is written")

moves = [e for e in rows(out, "events.csv") if e["why"]]
check(moves and all(json.loads(e["reply"]).get("ok") for e in moves),
      f"the controller migrated ({[(e['what'], e['reply'][:80]) for e in moves]})")
why = json.loads(moves[0]["why"]) if moves else {}
check(why.get("placement") == "content" and why.get("host") == "h1" and
      why.get("chose", {}).get("vm") == "b1" and why["chose"].get("to") == "h2" and
      why["chose"].get("arrival_mib", 0) > 0 and len(why.get("candidates", [])) == 3,
      f"its first move is b1 to h2, with the figures it saw ({why.get('chose')})")
check(all(json.loads(e["why"])["chose"]["vm"] == "b1" for e in moves),
      f"b1 is the only VM moved ({[e['what'] for e in moves]})")

end, bases = {}, {}
for v in rows(out, "vms.csv"):
    if v["state"] == "running":
        end[v["vm"]] = v["host"]
    bases.setdefault(v["t_s"], {}).setdefault(v["ram_base"], set()).add(v["vm"])
if ACCEL == "thread":
    check(all(len(vms) == 1 for at in bases.values() for vms in at.values()),
          "no two VMs of the two hosts hold the same address (a thread VM moves only there)")
check(end.get("b1") == "h2" == end.get("b2"), f"b1 ends on h2, beside b2 ({end})")
check(all(any(FAMILY[o] == FAMILY[m] and end.get(o) == end.get(m) for o in end if o != m)
          for m in {json.loads(e["why"])["chose"]["vm"] for e in moves}),
      "every VM moved ends on a host holding its family")

with open(os.path.join(out, "summary.json")) as f:
    s = json.load(f)
check(s["controller"]["placement"] == "content" and
      s["cluster"]["migrations"] == s["cluster"]["migrations_started"] >= 1,
      f"the summary counts the migration, started and done ({s['cluster']})")
fails = {n: v["verify_failures"] for n, v in s["vms"].items()}
check(set(fails) == set(FAMILY) and not any(fails.values()),
      f"no guest failed a verification ({fails})")

bad = dict(SCENARIO, controller={"placement": "nearest"})
r = runner(bad, os.path.join(d, "bad"))
check(r.returncode == 2 and "controller.placement" in r.stderr and
      not os.path.exists(os.path.join(d, "bad")),
      f"an unknown placement is refused ({r.returncode}: {r.stderr.strip()})")
finish()
