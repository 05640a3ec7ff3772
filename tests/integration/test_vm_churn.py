"""A long-lived host takes VMs in and lets them go for ever: the room it has
("max_vms", VMs at a time) is room for that many at a time, not in its life.

1. A host of max_vms 3 with one VM of its config: two more start, a fourth
   is refused (ENOSPC, the limit named), and max_vms below the config's VMs
   is refused with a reason.
2. Twelve times over (thread): a VM starts, verifies and is removed. Each takes the
   room the last one left (a start while the last is still leaving is told
   EAGAIN, and starts once it has gone); the host lists only what runs.
3. A VM migrates between two such hosts and back twenty times (thread): every arrival
   finds room on both (the entries of the VMs that left, and the arrivals
   that brought them, are given back), the stats keep how the last ones
   went, no more (a bounded history), and the guest verifies at the end.

The VMM's own tables are the same under every accelerator. Under kvm it
takes 5 VMs in turn and 3 round trips (still past the room of both hosts):
each is a KVM VM made and destroyed, and the nested SVM VM that tests kvm
on machines without /dev/kvm does not survive a few hundred of those in one
boot (the whole suite makes about a hundred)."""
import os

from kvmemtest import ACCEL, check, finish, require_accel, require_root, run
from ctlhelp import (Host, host_config, no_verify_fail, request, stats, tmpdir, vm_of,
                     wait_for, wait_incoming, wait_socket)

require_accel()
require_root("live migration hands guest memory between processes")

d = tmpdir()
a_sock, b_sock = f"{d}/a.sock", f"{d}/b.sock"
a_in, b_in = f"unix:{d}/a-in.sock", f"unix:{d}/b-in.sock"
WL = "kvmem.wl=size=4,id={},verify=1,then=sleep"
ROUNDS, TRIPS = (12, 20) if ACCEL == "thread" else (5, 3)
HISTORY_MAX = 16                      # how the last VMs that left went: the host keeps these

for sub in ("a", "b", "bad"):
    os.makedirs(f"{d}/{sub}")
bad = host_config(f"{d}/bad", {"budget": "1G", "max_vms": 1, "vms": [
    {"name": "x", "mem": "32M"}, {"name": "y", "mem": "32M"}]})
r = run(["host", "--config", bad], timeout=60)
check(r.returncode == 2 and "max_vms: 1 is fewer than the 2 VMs of the config" in r.stderr,
      f"max_vms below the config's VMs is refused ({r.stderr.strip()[-200:]})")

a = Host(["host", "--config", host_config(f"{d}/a", {
    "budget": "2G", "socket": a_sock, "console_prefix": True, "incoming": a_in, "max_vms": 3,
    "vms": [{"name": "a", "mem": "32M", "append": WL.format(1)}]})])
b = Host(["host", "--config", host_config(f"{d}/b", {
    "budget": "2G", "socket": b_sock, "console_prefix": True, "incoming": b_in,
    "max_vms": 2})])


def start(sock, name, n):
    """Start a VM; a host whose room is taken by VMs still leaving says EAGAIN: again then."""
    def once():
        r = request(sock, {"verb": "start", "vm": {"name": name, "mem": "32M",
                                                   "append": WL.format(n)}}, timeout=60)
        return None if r.get("code") == "EAGAIN" else r
    return wait_for(once, 60) or {"ok": False, "error": "EAGAIN for a minute"}


def names(sock):
    return sorted(v["name"] for v in stats(sock)["vms"])


def migrated(sock, vm):
    """The last migration of vm the host at sock shows, among those of the VMs that left."""
    found = [m for m in stats(sock).get("migrated", []) if m["vm"] == vm]
    return found[-1] if found else {}


def move(frm, to, dst_sock):
    """Migrate m from the host at frm to the incoming socket to: its stage as the source
    saw it ("done" once the destination runs m and the source no longer has it)."""
    def last():
        ms = [m for m in stats(frm).get("migrated", []) if m["vm"] == "m"]
        return ms[-1] if ms else None
    before = last()
    r = request(frm, {"verb": "migrate", "vm": "m", "to": to}, timeout=30)
    if r.get("ok") is not True:
        return {"stage": "not started", "error": r.get("error")}

    def end():
        if (not vm_of(stats(frm), "m") and
                (vm_of(stats(dst_sock), "m") or {}).get("state") == "running"):
            return last()
        m = last()
        return m if m != before and m.get("stage") in ("failed", "cancelled") else None
    return wait_for(end, 180) or {"stage": "no end seen"}


try:
    check(wait_socket(a, a_sock) and wait_socket(b, b_sock) and wait_incoming(a) and
          wait_incoming(b), "both hosts serve their sockets and take VMs in")
    # 1. Room for three at a time.
    for n, name in ((2, "b1"), (3, "b2")):
        r = start(a_sock, name, n)
        check(r.get("ok") is True, f"{name} starts ({r.get('error', 'ok')})")
    r = start(a_sock, "b3", 4)
    check(r.get("ok") is False and r.get("code") == "ENOSPC" and "room for 3 VMs" in
          r.get("error", ""), f"a fourth is refused: {r.get('error')}")
    for name in ("b1", "b2"):
        r = request(a_sock, {"verb": "remove", "vm": name}, timeout=60)
        check(r.get("ok") is True, f"{name} is removed ({r.get('error', 'ok')})")

    # 2. Many more than three over the host's life.
    started = 0
    for i in range(ROUNDS):
        name = f"c{i}"
        r = start(a_sock, name, 10 + i)
        if r.get("ok") is not True:
            print(f"info   {name}: {r.get('error')}", flush=True)
            break
        ok = a.wait_line(rf"\[{name}\] kvmem-wl: verify ok", deadline_s=120)
        r = request(a_sock, {"verb": "remove", "vm": name}, timeout=60)
        started += bool(ok) and r.get("ok") is True
    check(started == ROUNDS, f"{ROUNDS} VMs in turn started, verified and were removed "
          f"({started}), in room for 3")
    check(wait_for(lambda: names(a_sock) == ["a"], 60), f"only a is listed ({names(a_sock)})")

    # 3. Back and forth between the two hosts.
    r = start(a_sock, "m", 99)
    check(r.get("ok") is True, f"m starts ({r.get('error', 'ok')})")
    check(a.wait_line(r"\[m\] kvmem-wl: verify ok"), "m verifies")
    trips = 0
    for t in range(TRIPS):
        there = move(a_sock, b_in, b_sock)
        back = move(b_sock, a_in, a_sock) if there.get("stage") == "done" else {}
        if there.get("stage") != "done" or back.get("stage") != "done":
            print(f"info   trip {t}: there {there.get('stage')} {there.get('error', '')}, "
                  f"back {back.get('stage')} {back.get('error', '')}", flush=True)
            break
        trips += 1
    check(trips == TRIPS, f"m went to b and back {trips} times of {TRIPS}, on hosts with room "
          "for 3 and 2 VMs at a time")
    shown = len([m for m in stats(a_sock).get("migrated", []) if m["vm"] == "m"])
    check(0 < shown <= HISTORY_MAX + 1, f"a's stats show the last {shown} migrations of VMs that "
          f"left (at most {HISTORY_MAX} kept, and one still in its entry)")
    check((vm_of(stats(a_sock), "m") or {}).get("state") == "running", "m runs on a at the end")
    n = a.count(r"\[m\] kvmem-wl: verify ok")
    check(a.wait_line(r"\[m\] kvmem-wl: verify ok", n=n + 1), "and verifies there")
    no_verify_fail(a, "a")
    no_verify_fail(b, "b")
finally:
    a.stop()
    b.stop()
finish()
