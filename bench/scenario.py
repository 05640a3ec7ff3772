#!/usr/bin/env python3
"""bench/scenario: run a consolidation or density experiment from one scenario
file, and get CSV, plots and a summary.

    bench/scenario.py SCENARIO.json [--kvmem PATH] [--accel auto|kvm|thread]
                      [--out DIR] [--swap-dir DIR] [--corpora DIR] [--quiet]

The scenario (JSON; unknown keys are refused, every error names its field):

  name          a name for the run (default: the file's)
  duration_s    how long the experiment runs after the hosts are up
  interval_s    how often every host's stats are sampled (default 1)
  hosts         [{name, budget, dedup: on|off|ksm, swap: {size, pool} | null,
                  policy_interval, hard_limit, access, balloon_stats_interval,
                  accel}]: one `kvmem host` each, taking VMs in (migrations
                  between the scenario's hosts work); a host's swap file is
                  made on a disk: next to the kvmem binary, else in /var/tmp
                  (--swap-dir DIR says where)
  corpora       a directory of content corpora (bench/corpora.py's output;
                  --corpora DIR says another): every host's corpus_dir
  vms           [{name, host, mem, min, shares, cpus, accel, swap_max,
                  workload (the kvmem.wl= spec) or append (a whole command
                  line), corpus (a file name in corpora: the workload's
                  corpus= pages come from it), sharing_group, start_s
                  (default 0), stop_s}]: each VM is started on
                  its host at start_s (the "start" verb) and removed at
                  stop_s (the "remove" verb: its memory goes back)
  events        [{at_s, do, ...}]: what happens meanwhile, each a control
                  verb: budget {host, budget}, migrate {vm, to (a host),
                  downtime_ms, bandwidth_mib_s}, balloon {vm, target},
                  swap {vm, to}, pause {vm}, resume {vm}, dedup {host, ...the
                  verb's fields}, reclaim {host}
  plots         optional [{title, file, what: "host_memory" | "vm_resident"
                  | "vm_rate"}] (default: host_memory for each host, then
                  vm_resident and, when a workload reports, vm_rate)
  controller    optional {placement, interval_s, hold_s, cooldown_s, k}: moves
                  VMs off a host that stays over its budget (below);
                  placement "content" (by fingerprints), "least_loaded"
                  (content-blind) or "none" (the default: no controller);
                  interval_s how often it looks (default 1), hold_s how long a
                  host must stay over its budget before it acts (default 5),
                  cooldown_s how long a host that a migration left or reached
                  takes no part in another (default 10), k the fingerprints'
                  sketch size (default 1024)

The controller. Every interval_s it reads every host's stats. A host is over
its budget while its resident_bytes exceed its budget_bytes. A host is ready
when it is not cooling down and every VM on it is "running" with no
migration under way. A ready host that has stayed over its budget for hold_s
(the one over longest first) gets one of its VMs moved to another ready host
(a destination), through the same migrate verb as the events; both then cool
down. A VM's excess is its resident_bytes less its entitlement_bytes.
  least_loaded  the VM of largest excess (ties: largest resident, then name)
                goes to the destination of most headroom (budget less
                resident; ties: name).
  content       takes the fingerprint of every VM of the host and of the
                destinations (the "fingerprint" verb, k hashes) and predicts,
                for each VM V and destination D, with bench/fingerprint.py's
                estimate: arrival, the pages V shares with D's VMs (V's sketch
                against the union of theirs), and departure, those it shares
                with the other VMs of its host (what it gives up by leaving).
                V's footprint is its resident + its saved_by.shared_across
                (what it holds on its own). After the move D would hold D's
                resident + footprint - arrival, V's host its resident -
                footprint + departure. A pair is a candidate when it lowers
                the memory the two hosts hold over their budgets (the sum of
                each one's resident above its budget), and fits when D stays
                within its budget. Score: (arrival - departure) x 4 KiB + V's
                excess. The fitting candidate of highest score moves (ties:
                VM name, then destination); when none fits, the candidate of
                highest score among those to the destination of most headroom;
                with no candidate nothing moves.
Each move is an events.csv row whose why column holds the figures the
controller saw (every host's resident and budget, every candidate's figures),
and a printed line.

Under the thread accelerator a guest holds host addresses and resumes only at
its RAM's address, so a VM moves only to a host where no VM sits there; each
kvmem process hands out its VMs' addresses from a place of its own, so the
VMs of the scenario's hosts have addresses of their own and may move
anywhere.

The output directory (default ./scenario-NAME) gets:
  hosts.csv     t_s, host, then each figure of the host (the stats' names,
                nested ones dotted: saved_by.zero, ...)
  vms.csv       t_s, host, vm, state, then each figure of the VM, and its
                workload's reported operations (wl_ops, wl_ms: the last
                `kvmem-wl: progress` line), verify failures so far, and the
                policy's last action and balloon reason
  events.csv    t_s, what, the reply, and why (the controller's figures)
  *.png         the plots (gnuplot), with the .dat and .gp they came from
  summary.json, summary.txt   the key figures (per host, per VM, and for the
                whole: migrations done and started, seconds each host's
                resident spent over its budget, the mean and peak of the
                hosts' resident summed, the sharing across and within VMs at
                the end, the controller's settings); host-NAME.log each
                host's output

Times are seconds from the moment every host answers. The hosts run on this
machine; the same scenario gives the same figures within noise, run to run.
"""
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Host, cmd, request, take_accel, take_opt, wait_sock  # noqa: E402
from fingerprint import estimate, hashes, union_sketch  # noqa: E402

HOST_KEYS = {"name", "budget", "dedup", "swap", "policy_interval", "hard_limit", "access",
             "balloon_stats_interval", "accel"}
VM_KEYS = {"name", "host", "mem", "min", "shares", "cpus", "accel", "swap_max", "workload",
           "append", "corpus", "sharing_group", "start_s", "stop_s"}
EVENT_ARGS = {"budget": {"host", "budget"}, "migrate": {"vm", "to", "downtime_ms",
                                                         "bandwidth_mib_s"},
              "balloon": {"vm", "target"}, "swap": {"vm", "to"}, "pause": {"vm"},
              "resume": {"vm"}, "dedup": {"host", "enabled", "pages_per_sec", "cpu_percent",
                                          "windows"},
              "reclaim": {"host"}}
TOP_KEYS = {"name", "duration_s", "interval_s", "corpora", "hosts", "vms", "events", "plots",
            "controller"}
CONTROLLER = {"placement": "none", "interval_s": 1, "hold_s": 5, "cooldown_s": 10, "k": 1024}
PLACEMENTS = ("content", "least_loaded", "none")
MIB = 1 << 20
PAGE = 4096


class ScenarioError(Exception):
    pass


def need(cond, what):
    if not cond:
        raise ScenarioError(what)


def check_keys(obj, known, where):
    need(isinstance(obj, dict), f"{where}: must be an object")
    for k in obj:
        need(k in known, f"{where}.{k}: unknown field (known: {', '.join(sorted(known))})")


def number(obj, key, where, default=None, low=0):
    v = obj.get(key, default)
    need(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= low,
         f"{where}.{key}: must be a number >= {low}")
    return v


def load(path):
    """The scenario, checked: every problem is one line naming its field."""
    try:
        with open(path) as f:
            sc = json.load(f)
    except (OSError, ValueError) as e:
        raise ScenarioError(f"{path}: {e}")
    check_keys(sc, TOP_KEYS, "scenario")
    sc.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    number(sc, "duration_s", "scenario", low=1)
    number(sc, "interval_s", "scenario", default=1, low=0.1)
    hosts = sc.get("hosts")
    need(isinstance(hosts, list) and hosts, "scenario.hosts: a non-empty list")
    names = set()
    for i, h in enumerate(hosts):
        where = f"hosts[{i}]"
        check_keys(h, HOST_KEYS, where)
        need(isinstance(h.get("name"), str) and h["name"] not in names,
             f"{where}.name: a name of its own")
        names.add(h["name"])
        need(h.get("swap") is None or isinstance(h["swap"], dict), f"{where}.swap: an object")
    vms = sc.get("vms", [])
    need(isinstance(vms, list), "scenario.vms: a list")
    vnames = set()
    for i, v in enumerate(vms):
        where = f"vms[{i}]"
        check_keys(v, VM_KEYS, where)
        need(isinstance(v.get("name"), str) and v["name"] not in vnames,
             f"{where}.name: a name of its own")
        vnames.add(v["name"])
        need(v.get("host") in names, f"{where}.host: one of the scenario's hosts")
        need("mem" in v, f"{where}.mem: missing")
        need(not ("workload" in v and "append" in v), f"{where}: workload or append, not both")
        start = number(v, "start_s", where, default=0)
        if "stop_s" in v:
            need(number(v, "stop_s", where) > start, f"{where}.stop_s: after start_s")
    events = sc.get("events", [])
    need(isinstance(events, list), "scenario.events: a list")
    for i, e in enumerate(events):
        where = f"events[{i}]"
        need(isinstance(e, dict) and e.get("do") in EVENT_ARGS,
             f"{where}.do: one of {', '.join(sorted(EVENT_ARGS))}")
        check_keys(e, EVENT_ARGS[e["do"]] | {"at_s", "do"}, where)
        number(e, "at_s", where)
        if "vm" in EVENT_ARGS[e["do"]]:
            need(e.get("vm") in vnames, f"{where}.vm: one of the scenario's VMs")
        if "host" in EVENT_ARGS[e["do"]]:
            need(e.get("host") in names, f"{where}.host: one of the scenario's hosts")
        if e["do"] == "migrate":
            need(e.get("to") in names, f"{where}.to: one of the scenario's hosts")
    for i, p in enumerate(sc.get("plots", [])):
        check_keys(p, {"title", "file", "what", "host"}, f"plots[{i}]")
        need(p.get("what") in ("host_memory", "vm_resident", "vm_rate"),
             f"plots[{i}].what: host_memory, vm_resident or vm_rate")
    sc["controller"] = controller_settings(sc.get("controller", {}))
    return sc


def controller_settings(c):
    """The controller's settings, checked, with the defaults filled in."""
    check_keys(c, set(CONTROLLER), "controller")
    c = dict(CONTROLLER, **c)
    need(c["placement"] in PLACEMENTS, f"controller.placement: one of {', '.join(PLACEMENTS)}")
    number(c, "interval_s", "controller", low=0.1)
    number(c, "hold_s", "controller")
    number(c, "cooldown_s", "controller")
    need(isinstance(c["k"], int) and not isinstance(c["k"], bool) and 1 <= c["k"] <= 65536,
         "controller.k: an integer from 1 to 65536")
    return c


def flatten(obj, prefix=""):
    """Numbers of a stats object, nested objects dotted (saved_by.zero); booleans as 0/1."""
    out = {}
    for k, v in obj.items():
        if isinstance(v, bool):
            out[prefix + k] = int(v)
        elif isinstance(v, (int, float)):
            out[prefix + k] = v
        elif isinstance(v, dict) and k not in ("pages", "txn", "uffd", "damon", "guest",
                                               "counters", "migration", "restore", "console"):
            out.update(flatten(v, prefix + k + "."))
    return out


class Run:
    def __init__(self, sc, kvmem, out, quiet):
        self.sc, self.kvmem, self.out, self.quiet = sc, kvmem, out, quiet
        self.hosts = {}		# name -> (Host, socket, incoming address)
        self.where = {}		# VM -> host it runs on
        self.rows_h, self.rows_v, self.events = [], [], []
        # Sockets on the local filesystem (not a 9p or NFS share, where bind fails).
        self.tmp = tempfile.mkdtemp(prefix="kvmem-scenario-")
        self.swap_dirs = []
        c = sc["controller"]
        self.controller = Controller(self, c) if c["placement"] != "none" else None

    def say(self, msg):
        if not self.quiet:
            print(f"scenario: {msg}", flush=True)

    def start_hosts(self):
        corpora = CORPORA or self.sc.get("corpora")
        if any("corpus" in v for v in self.sc.get("vms", [])) and not corpora:
            raise ScenarioError("a VM has a corpus: the scenario needs corpora (or --corpora "
                                "DIR; bench/corpora.py makes them)")
        for h in self.sc["hosts"]:
            d = os.path.join(self.tmp, h["name"])
            os.makedirs(d)
            cfg = {k: v for k, v in h.items() if k not in ("name", "swap")}
            cfg.update({"socket": f"{d}/ctl.sock", "incoming": f"unix:{d}/in.sock",
                        "console_prefix": True, "vms": []})
            if corpora:
                cfg["corpus_dir"] = os.path.abspath(corpora)
            if h.get("swap"):
                cfg["swap"] = dict(h["swap"], path=self.disk_dir(h["name"]))
            with open(f"{d}/host.json", "w") as f:
                json.dump(cfg, f)
            p = Host(cmd(self.kvmem, "host", "--config", f"{d}/host.json",
                         accel=h.get("accel") or ACCEL))
            self.hosts[h["name"]] = (p, f"{d}/ctl.sock", f"unix:{d}/in.sock")
        for name, (p, sock, _) in self.hosts.items():
            if not wait_sock(sock):
                raise ScenarioError(f"host {name} did not come up: {p.lines[-3:]}")

    def disk_dir(self, host):
        """A fresh directory for a host's swap file, on a disk (not tmpfs)."""
        bases = [SWAP_DIR] if SWAP_DIR else [os.path.dirname(os.path.abspath(self.kvmem)),
                                             "/var/tmp"]
        for base in bases:
            try:
                d = tempfile.mkdtemp(prefix=f"kvmem-scenario-swap-{host}-", dir=base)
            except OSError:
                continue
            r = subprocess.run(["stat", "-f", "-c", "%T", d], capture_output=True, text=True)
            if r.stdout.strip() not in ("tmpfs", "ramfs"):
                self.swap_dirs.append(d)
                return d
            os.rmdir(d)
        raise ScenarioError(f"host {host}: no disk directory for its swap file in "
                            f"{' or '.join(bases)} (--swap-dir DIR)")

    def act(self, t, what, host, req, why=""):
        try:
            r = request(self.hosts[host][1], req, timeout=120)
        except OSError as e:
            r = {"ok": False, "error": str(e)}
        self.events.append((round(t, 2), what, json.dumps(r), why))
        self.say(f"{t:6.1f} s  {what}: {'ok' if r.get('ok') else r.get('error')}")
        return r

    def all_stats(self):
        """{host: its stats reply} of the hosts that answer. A host too busy
        to answer within its verb deadline replies ETIMEDOUT: that sample is
        missing for it (the summary's samples per host say how many came)."""
        out = {}
        for name, (_, sock, _) in self.hosts.items():
            try:
                r = request(sock, {"verb": "stats"}, timeout=30)
            except (OSError, ValueError):
                continue
            if r.get("ok") is not False and "host" in r:
                out[name] = r
        return out

    def timeline(self):
        """(at_s, what, function) in time order: VM starts and stops, then events."""
        acts = []
        for v in self.sc.get("vms", []):
            spec = {k: v[k] for k in ("name", "mem", "min", "shares", "cpus", "accel",
                                      "swap_max", "corpus", "sharing_group") if k in v}
            if "workload" in v:
                spec["append"] = "kvmem.wl=" + v["workload"]
            elif "append" in v:
                spec["append"] = v["append"]
            acts.append((v.get("start_s", 0), f"start {v['name']} on {v['host']}",
                         lambda t, v=v, spec=spec: self.start_vm(t, v, spec)))
            if "stop_s" in v:
                acts.append((v["stop_s"], f"remove {v['name']}",
                             lambda t, v=v: self.act(t, f"remove {v['name']}",
                                                     self.where.get(v["name"], v["host"]),
                                                     {"verb": "remove", "vm": v["name"]})))
        for e in self.sc.get("events", []):
            acts.append((e["at_s"], e["do"], lambda t, e=e: self.event(t, e)))
        return sorted(acts, key=lambda a: a[0])

    def start_vm(self, t, v, spec):
        r = self.act(t, f"start {v['name']} on {v['host']}", v["host"],
                     {"verb": "start", "vm": spec})
        if r.get("ok"):
            self.where[v["name"]] = v["host"]

    def event(self, t, e, why=""):
        args = {k: x for k, x in e.items() if k not in ("at_s", "do")}
        if e["do"] == "migrate":
            src = self.where.get(e["vm"])
            req = dict(args, verb="migrate", to=self.hosts[e["to"]][2])
            r = (self.act(t, f"migrate {e['vm']} {src} -> {e['to']}", src, req, why)
                 if src else None)
            if r and r.get("ok"):
                self.where[e["vm"]] = e["to"]
            return
        host = args.pop("host", None) or self.where.get(e.get("vm"))
        what = f"{e['do']} {json.dumps(args)}"
        if e["do"] == "budget":
            args = {"bytes": args["budget"]}
        self.act(t, what, host, dict(args, verb=e["do"]))

    def progress(self, host, vm):
        """The VM's last workload progress (ms, ops) and its verify failures so far."""
        p = self.hosts[host][0]
        last, fails = (None, None), 0
        tag = f"[{vm}] kvmem-wl: "
        for line in list(p.lines):
            if not line.startswith(tag):
                continue
            rest = line[len(tag):].split()
            if rest[:1] == ["progress"] and len(rest) >= 5:
                last = (int(rest[1]), int(rest[4]))
            elif rest[:2] == ["verify", "FAIL"]:
                fails += 1
        return last, fails

    def sample(self, t, stats):
        for name, st in stats.items():
            self.rows_h.append(dict(flatten(st["host"]), t_s=round(t, 2), host=name))
            for v in st.get("vms", []):
                if v.get("state") == "running":
                    # Where the hosts say it runs: a migration that failed after
                    # it started leaves the VM where it was.
                    self.where[v["name"]] = name
                (ms, ops), fails = self.progress(name, v["name"])
                row = dict(flatten(v), t_s=round(t, 2), host=name, vm=v["name"],
                           state=v.get("state"), wl_ms=ms, wl_ops=ops, verify_fail=fails,
                           last_action=v.get("last_action"),
                           balloon_reason=(v.get("balloon") or {}).get("reason"))
                self.rows_v.append(row)

    def run(self):
        self.start_hosts()
        acts = self.timeline()
        t0 = time.monotonic()
        dur, step = self.sc["duration_s"], self.sc.get("interval_s", 1)
        look = self.sc["controller"]["interval_s"]
        next_sample, next_look = 0.0, 0.0 if self.controller else float("inf")
        self.say(f"{len(self.hosts)} host(s) up; running {dur} s")
        while True:
            t = time.monotonic() - t0
            while acts and acts[0][0] <= t:
                acts.pop(0)[2](t)
            stats = None
            if t >= next_sample:
                stats = self.all_stats()
                self.sample(t, stats)
                next_sample += step
            if t >= next_look:
                self.controller.look(t, stats or self.all_stats())
                next_look += look
            if t >= dur:
                break
            nxt = min([next_sample, next_look, dur] + ([acts[0][0]] if acts else []))
            time.sleep(max(0.0, nxt - (time.monotonic() - t0)))

    def stop(self):
        for name, (p, _, _) in self.hosts.items():
            p.stop()
            with open(os.path.join(self.out, f"host-{name}.log"), "w") as f:
                f.write("\n".join(p.lines) + "\n")
        for d in [self.tmp] + self.swap_dirs:
            shutil.rmtree(d, ignore_errors=True)


def excess(v):
    """How far a VM's resident memory is above its share of the budget (the policy's)."""
    return v["resident_bytes"] - v["entitlement_bytes"]


def headroom(st):
    return st["host"]["budget_bytes"] - st["host"]["resident_bytes"]


def steady(st):
    """No VM of the host is arriving or leaving: its figures are what will stay."""
    return all(v["state"] == "running" and (v.get("migration") or {}).get("stage")
               in (None, "done", "failed", "cancelled") for v in st["vms"])


def in_mib(c):
    """A candidate's figures for people: bytes as MiB to a tenth."""
    return {k.replace("_bytes", "_mib"): round(x / MIB, 1) if k.endswith("_bytes") else x
            for k, x in c.items()}


def least_loaded(src, dests, stats):
    """Content-blind: the VM of largest excess to the destination of most headroom."""
    cands = [{"vm": v["name"], "excess_bytes": excess(v), "resident_bytes": v["resident_bytes"]}
             for v in stats[src]["vms"]]
    best = min(cands, key=lambda c: (-c["excess_bytes"], -c["resident_bytes"], c["vm"]))
    to = min(dests, key=lambda h: (-headroom(stats[h]), h))
    return dict(best, to=to, headroom_bytes=headroom(stats[to])), cands


def content(src, dests, stats, sketches, k):
    """Content-aware: the move that gains the most sharing and relief, within
    the destination's budget if one is (the rule in the docstring)."""
    def shared(v, others):
        theirs = [sketches[o["name"]] for o in others if o["name"] in sketches]
        if not theirs:
            return 0.0
        return estimate(sketches[v["name"]], union_sketch(theirs, k), k)["common"] * PAGE

    def over(resident, st):
        return max(0, resident - st["host"]["budget_bytes"])

    here = stats[src]["host"]["resident_bytes"]
    cands = []
    for v in stats[src]["vms"]:
        if v["name"] not in sketches:
            continue
        gone = shared(v, [o for o in stats[src]["vms"] if o is not v])
        alone = v["resident_bytes"] + v["saved_by"]["shared_across"]
        for d in dests:
            came = shared(v, stats[d]["vms"])
            there = stats[d]["host"]["resident_bytes"]
            after = there + alone - came
            lowers = (over(here, stats[src]) + over(there, stats[d]) -
                      over(here - alone + gone, stats[src]) - over(after, stats[d]))
            cands.append({"vm": v["name"], "to": d, "excess_bytes": excess(v),
                          "arrival_bytes": came, "departure_bytes": gone, "after_bytes": after,
                          "budget_bytes": stats[d]["host"]["budget_bytes"],
                          "fits": after <= stats[d]["host"]["budget_bytes"],
                          "lowers_bytes": lowers, "score_bytes": came - gone + excess(v)})
    useful = [c for c in cands if c["lowers_bytes"] > 0]
    pick = [c for c in useful if c["fits"]]
    if not pick and useful:
        to = min(dests, key=lambda h: (-headroom(stats[h]), h))
        pick = [c for c in useful if c["to"] == to]
    best = min(pick, key=lambda c: (-c["score_bytes"], c["vm"], c["to"])) if pick else None
    return best, cands


class Controller:
    """Moves a VM off a host that stays over its budget (the scenario's "controller")."""

    def __init__(self, run, c):
        self.run, self.c = run, c
        self.over_since = {}	# host -> when it went over its budget
        self.busy_until = {}	# host -> when its cooldown ends

    def ready(self, host, st, t):
        return t >= self.busy_until.get(host, 0) and steady(st)

    def look(self, t, stats):
        for h, st in stats.items():
            if st["host"]["resident_bytes"] > st["host"]["budget_bytes"]:
                self.over_since.setdefault(h, t)
            else:
                self.over_since.pop(h, None)
        for since, src in sorted((x, h) for h, x in self.over_since.items() if h in stats):
            if t - since < self.c["hold_s"] or not self.ready(src, stats[src], t):
                continue
            dests = [h for h in sorted(stats) if h != src and self.ready(h, stats[h], t)]
            if not dests or not stats[src]["vms"]:
                continue
            if self.c["placement"] == "content":
                sketches = self.sketches([src] + dests, stats)
                best, cands = content(src, dests, stats, sketches, self.c["k"])
            else:
                best, cands = least_loaded(src, dests, stats)
            if best:
                self.move(t, src, since, best, cands, stats)

    def sketches(self, hosts, stats):
        """{VM: its sketch's hashes} of every VM of these hosts that gives one."""
        out = {}
        for h in hosts:
            for v in stats[h]["vms"]:
                req = {"verb": "fingerprint", "vm": v["name"], "k": self.c["k"]}
                try:
                    r = request(self.run.hosts[h][1], req, timeout=120)
                except (OSError, ValueError):
                    continue
                if r.get("ok"):
                    out[v["name"]] = hashes(r["fingerprint"])
        return out

    def move(self, t, src, since, best, cands, stats):
        """Migrate best's VM (through the runner's migrate, which keeps where
        VMs are), the figures seen in the event's why, and cool both hosts."""
        h = stats[src]["host"]
        why = {"placement": self.c["placement"], "host": src, "over_s": round(t - since, 1),
               "hosts": {n: in_mib({"resident_bytes": st["host"]["resident_bytes"],
                                    "budget_bytes": st["host"]["budget_bytes"]})
                         for n, st in stats.items()},
               "chose": in_mib(best), "candidates": [in_mib(c) for c in cands]}
        figures = ", ".join(f"{k} {x}" for k, x in in_mib(best).items() if k not in ("vm", "to"))
        self.run.say(f"{t:6.1f} s  controller ({self.c['placement']}): {src} over its budget "
                     f"for {t - since:.0f} s ({h['resident_bytes'] / MIB:.1f} of "
                     f"{h['budget_bytes'] / MIB:.1f} MiB): {best['vm']} -> {best['to']} "
                     f"({figures})")
        self.run.event(t, {"do": "migrate", "vm": best["vm"], "to": best["to"]},
                       why=json.dumps(why))
        for n in (src, best["to"]):
            self.busy_until[n] = t + self.c["cooldown_s"]


def write_csv(path, rows, first):
    keys = list(first)
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        w.writerows(rows)
    return keys


# Distinct colours for up to a dozen series (gnuplot's own cycle repeats after 8).
COLOURS = ["#4b0082", "#2ca02c", "#9ecae1", "#ff7f0e", "#f0e442", "#1f77b4", "#d62728",
           "#7f7f7f", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def quoted(s):
    """A gnuplot single-quoted string."""
    return "'" + str(s).replace("'", "''") + "'"


def gnuplot(out, base, title, ylabel, series, stacked=False):
    """series: [(label, [(t, value)])]; stacked: cumulative filled bands. The PNG's name,
    or None when there is nothing to plot."""
    series = [(label, pts) for label, pts in series if pts]
    if not series:
        return None
    dat = os.path.join(out, base + ".dat")
    ts = sorted({t for _, pts in series for t, _ in pts})
    cols = [dict(pts) for _, pts in series]
    with open(dat, "w") as f:
        f.write("# t_s " + " ".join(label.replace(" ", "_") for label, _ in series) + "\n")
        for t in ts:
            vals, acc = [], 0.0
            for c in cols:
                x = c.get(t)
                if stacked:
                    acc += x or 0
                    vals.append(acc)
                else:
                    vals.append("NaN" if x is None else x)
            f.write(f"{t} " + " ".join(str(v) for v in vals) + "\n")
    lines = []
    for i, (label, _) in enumerate(series):
        if stacked:
            below = "(0)" if i == 0 else str(i + 1)
            lines.append(f"{quoted(base + '.dat')} using 1:{below}:{i + 2} with filledcurves "
                         f"lc rgb {quoted(COLOURS[i % len(COLOURS)])} title {quoted(label)}")
        else:
            lines.append(f"{quoted(base + '.dat')} using 1:{i + 2} with lines lw 2 "
                         f"lc rgb {quoted(COLOURS[i % len(COLOURS)])} title {quoted(label)}")
    gp = os.path.join(out, base + ".gp")
    with open(gp, "w") as f:
        f.write(f"""set terminal pngcairo size 1000,600 noenhanced
set output {quoted(base + '.png')}
set title {quoted(title)}
set xlabel 'seconds'
set ylabel {quoted(ylabel)}
set key outside right
set grid
set style fill transparent solid 0.6 noborder
plot {', '.join(lines)}
""")
    r = subprocess.run(["gnuplot", base + ".gp"], cwd=out, capture_output=True, text=True)
    if r.returncode:
        raise ScenarioError(f"gnuplot {gp}: {r.stderr.strip()[-300:]}")
    return base + ".png"


def plots(sc, out, rows_h, rows_v):
    made = []
    wanted = sc.get("plots") or (
        [{"what": "host_memory", "host": h["name"]} for h in sc["hosts"]] +
        [{"what": "vm_resident"}] +
        ([{"what": "vm_rate"}] if any(r.get("wl_ops") is not None for r in rows_v) else []))
    for i, p in enumerate(wanted):
        if p["what"] == "host_memory":
            host = p.get("host") or sc["hosts"][0]["name"]
            rows = [r for r in rows_h if r["host"] == host]
            if not rows:
                continue
            sources = [k for k in rows[-1] if k.startswith("saved_by.")]
            series = [("resident", [(r["t_s"], r["resident_bytes"] / MIB) for r in rows])]
            series += [(k[len("saved_by."):], [(r["t_s"], r.get(k, 0) / MIB) for r in rows])
                       for k in sources if any(r.get(k) for r in rows)]
            stacked = gnuplot(out, p.get("file", f"host-{host}-stack"),
                              p.get("title", f"{sc['name']}: where {host}'s guest memory is"),
                              "MiB", series, stacked=True)
            lines = [(k, [(r["t_s"], r.get(k + "_bytes", 0) / MIB) for r in rows])
                     for k in ("budget", "used", "resident", "configured")]
            made += [stacked, gnuplot(out, f"host-{host}-memory",
                                      f"{sc['name']}: {host}'s memory", "MiB", lines)]
        else:
            vms = sorted({r["vm"] for r in rows_v})
            if p["what"] == "vm_resident":
                series = [(v, [(r["t_s"], r["resident_bytes"] / MIB) for r in rows_v
                               if r["vm"] == v and "resident_bytes" in r]) for v in vms]
                made.append(gnuplot(out, p.get("file", "vms-resident"),
                                    p.get("title", f"{sc['name']}: resident memory per VM"),
                                    "MiB", series))
            else:
                series = [(v, rates(rows_v, v)) for v in vms]
                made.append(gnuplot(out, p.get("file", "vms-rate"),
                                    p.get("title", f"{sc['name']}: workload rate per VM"),
                                    "operations/s", [s for s in series if s[1]]))
    return [m for m in made if m]


def rates(rows_v, vm):
    """Operations per second between successive progress reports of one VM."""
    pts, last = [], None
    for r in rows_v:
        if r["vm"] != vm or r.get("wl_ms") is None:
            continue
        cur = (r["wl_ms"], r["wl_ops"])
        if last and cur[0] > last[0]:
            pts.append((r["t_s"], (cur[1] - last[1]) * 1000 / (cur[0] - last[0])))
        if not last or cur[0] != last[0]:
            last = cur
    return pts


def summarize(sc, rows_h, rows_v, events):
    s = {"scenario": sc["name"], "accel": ACCEL, "duration_s": sc["duration_s"], "hosts": {},
         "vms": {}, "events": len(events),
         "failed_events": sum(1 for e in events if not json.loads(e[2]).get("ok"))}
    for h in sc["hosts"]:
        rows = [r for r in rows_h if r["host"] == h["name"]]
        if not rows:
            continue
        used = [r["used_bytes"] for r in rows]
        step = sc.get("interval_s", 1)
        sources = [k for k in rows[-1] if k.startswith("saved_by.")]
        s["hosts"][h["name"]] = {
            "samples": len(rows),
            "used_mib_peak": round(max(used) / MIB, 1),
            "used_mib_median": round(statistics.median(used) / MIB, 1),
            "resident_mib_end": round(rows[-1]["resident_bytes"] / MIB, 1),
            "saved_mib_median": round(statistics.median(r["saved_bytes"] for r in rows) / MIB, 1),
            "over_budget_s": round(sum(step for r in rows if r.get("over_budget")), 1),
            "resident_over_budget_s": round(sum(
                b["t_s"] - a["t_s"] for a, b in zip(rows, rows[1:])
                if a["resident_bytes"] > a["budget_bytes"]), 1),
            "saved_by_mib_median": {k[len("saved_by."):]: round(statistics.median(
                r.get(k, 0) for r in rows) / MIB, 1) for k in sources},
        }
    for v in sorted({r["vm"] for r in rows_v}):
        rows = [r for r in rows_v if r["vm"] == v]
        rs = [x for _, x in rates(rows_v, v)]
        s["vms"][v] = {
            "hosts": sorted({r["host"] for r in rows}),
            "resident_mib_median": round(statistics.median(
                r.get("resident_bytes", 0) for r in rows) / MIB, 1),
            "verify_failures": max(r["verify_fail"] for r in rows),
            "rate_ops_s_median": round(statistics.median(rs), 1) if rs else None,
            "rate_ops_s_p90": round(sorted(rs)[int(0.9 * (len(rs) - 1))], 1) if rs else None,
        }
    s["cluster"] = dict(cluster(sc, rows_h, rows_v, events), host_s_over_budget=round(sum(
        h["resident_over_budget_s"] for h in s["hosts"].values()), 1))
    s["controller"] = sc["controller"]
    return s


def cluster(sc, rows_h, rows_v, events):
    """The figures of all hosts together, what placement changes: migrations
    done (a VM seen running on another host than at its last sample) and
    started (a migrate verb answered ok: one can still fail after), the
    hosts' resident memory summed (at the samples every host answered), and
    the sharing at the last sample of each host."""
    totals, last = {}, {}
    for r in rows_h:
        totals.setdefault(r["t_s"], []).append(r["resident_bytes"])
        last[r["host"]] = r
    full = [sum(x) for x in totals.values() if len(x) == len(sc["hosts"])] or [0]
    moves, seen = 0, {}
    for r in rows_v:
        if r["state"] == "running":
            moves += r["vm"] in seen and seen[r["vm"]] != r["host"]
            seen[r["vm"]] = r["host"]
    return {"migrations": moves,
            "migrations_started": sum(1 for e in events if e[1].startswith("migrate ") and
                                      json.loads(e[2]).get("ok")),
            "resident_mib_mean": round(statistics.mean(full) / MIB, 1),
            "resident_mib_peak": round(max(full) / MIB, 1),
            "shared_across_mib_end": round(sum(r.get("saved_by.shared_across", 0)
                                               for r in last.values()) / MIB, 1),
            "shared_within_mib_end": round(sum(r.get("saved_by.shared_within", 0)
                                               for r in last.values()) / MIB, 1)}


def summary_text(s):
    out = [f"scenario {s['scenario']} ({s['accel']}, {s['duration_s']} s): "
           f"{s['events']} actions, {s['failed_events']} failed"]
    for name, h in s["hosts"].items():
        by = ", ".join(f"{k} {x}" for k, x in h["saved_by_mib_median"].items() if x)
        out.append(f"host {name}: used peak {h['used_mib_peak']} MiB (median "
                   f"{h['used_mib_median']}), saved median {h['saved_mib_median']} MiB ({by}), "
                   f"over budget {h['over_budget_s']} s (resident over it "
                   f"{h['resident_over_budget_s']} s)")
    c = s["cluster"]
    out.append(f"all hosts: {c['migrations']} migrations done ({c['migrations_started']} "
               f"started), over budget (resident) "
               f"{c['host_s_over_budget']} host-s, resident summed mean "
               f"{c['resident_mib_mean']} MiB (peak {c['resident_mib_peak']}), shared at the "
               f"end across {c['shared_across_mib_end']} MiB and within "
               f"{c['shared_within_mib_end']} MiB; controller: {s['controller']['placement']}")
    for name, v in s["vms"].items():
        rate = (f", rate median {v['rate_ops_s_median']} ops/s"
                if v["rate_ops_s_median"] is not None else "")
        out.append(f"vm {name} on {'/'.join(v['hosts'])}: resident median "
                   f"{v['resident_mib_median']} MiB, {v['verify_failures']} verify failures{rate}")
    return "\n".join(out) + "\n"


def scenario_arg(usage, prog):
    """The scenario the command line names (its one argument once the options
    are taken), loaded; exits with the usage, or status 2 and the mistake."""
    args = [a for a in sys.argv[1:] if a != "--quiet"]
    if len(args) != 1:
        sys.exit(usage)
    try:
        return load(args[0])
    except ScenarioError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(2)


def main():
    global ACCEL, SWAP_DIR, CORPORA
    ACCEL = take_accel()
    kvmem = take_opt("--kvmem", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                             "build", "kvmem"))
    out = take_opt("--out", None)
    SWAP_DIR = take_opt("--swap-dir", None)
    CORPORA = take_opt("--corpora", None)
    quiet = "--quiet" in sys.argv
    sc = scenario_arg(__doc__.split("\n\n")[1], "scenario")
    if not shutil.which("gnuplot"):
        print("scenario: gnuplot is missing (apt-get install gnuplot-nox; .ci/setup does)",
              file=sys.stderr)
        return 2
    out = out or f"scenario-{sc['name']}"
    os.makedirs(out, exist_ok=True)
    run = Run(sc, kvmem, out, quiet)
    try:
        run.run()
    except ScenarioError as e:
        print(f"scenario: {e}", file=sys.stderr)
        return 1
    finally:
        run.stop()
    write_csv(os.path.join(out, "hosts.csv"), run.rows_h, ["t_s", "host"])
    write_csv(os.path.join(out, "vms.csv"), run.rows_v, ["t_s", "host", "vm", "state"])
    with open(os.path.join(out, "events.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "what", "reply", "why"])
        w.writerows(run.events)
    try:
        pngs = plots(sc, out, run.rows_h, run.rows_v)
    except ScenarioError as e:
        print(f"scenario: {e}", file=sys.stderr)
        return 1
    s = summarize(sc, run.rows_h, run.rows_v, run.events)
    s["plots"] = pngs
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(s, f, indent=2)
    text = summary_text(s)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(text)
    print(text + f"scenario: CSV, plots ({', '.join(pngs)}) and summary in {out}", end="\n",
          flush=True)
    return 0


ACCEL = None
SWAP_DIR = CORPORA = None
if __name__ == "__main__":
    sys.exit(main())
