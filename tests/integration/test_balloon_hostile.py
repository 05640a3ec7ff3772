"""The hostile balloon driver cannot hurt the host: three VMs in one host;
`a` submits every malformed request kind at boot (kvmem.balloon.hostile=all),
`c` submits them on its live queues while its balloon holds pages
(kvmem.balloon.hostile.live=all), `b` is a well-behaved neighbour. Each case
puts the device into needs-reset (the guest says so, the device counts it),
the drivers recover and balloon normally afterwards, and the host and every
VM keep running and verifying. Nothing asserts on timing."""
import os
import re

from kvmemtest import check, finish, require_accel
from ctlhelp import (Host, host_config, no_verify_fail, request, stats, tmpdir, vm_of, wait_socket,
                     wait_state)

MIB = 1 << 20
CASES = ["loop", "long", "oob", "wrap", "dir", "indirect-oob", "indirect-nested", "avail-jump",
         "badlen", "huge"]
WL = "kvmem.wl=size=32,verify=1"
OK = r"^\[{}\] kvmem-wl: verify ok 8192$"

require_accel()
d = tmpdir()
sock = os.path.join(d, "k.sock")
cfg = host_config(d, {
    "budget": "16G", "socket": sock, "console_prefix": True, "vms": [
        {"name": "a", "mem": "256M", "append": "kvmem.balloon.hostile=all " + WL + ",id=1"},
        {"name": "b", "mem": "256M", "append": WL + ",id=2"},
        {"name": "c", "mem": "256M", "cpus": 2,
         "append": "kvmem.balloon.hostile.live=all " + WL + ",id=3"},
    ]})


def balloon(name):
    return vm_of(stats(sock), name)["balloon"]


def set_target(name, size):
    r = request(sock, {"verb": "balloon", "vm": name, "target": size})
    check(r.get("ok") is True, f"{name}: balloon target {size} ({r})")


def reaches(name, mib, what):
    wait_state(sock, name, lambda v: v["balloon"]["balloon_actual_bytes"] == mib * MIB, what,
               show=lambda v: f"balloon holds {v['balloon']['balloon_actual_bytes'] / MIB:.0f} "
               f"MiB, driver_ok {v['balloon']['driver_ok']}", deadline_s=120)


def outcomes(host, name):
    r = re.compile(r"^\[" + name + r"\] kvmem-balloon: hostile (\S+) -> (\S+)$")
    return [m.groups() for l in host.stdout() for m in [r.search(l)] if m]


host = Host(["host", "--config", cfg])
try:
    check(wait_socket(host, sock), "the host serves its control socket")
    check(all(host.wait_line(OK.format(n), 2) for n in "abc"), "all three guests run and verify")

    # a: every case at boot, before the driver starts for real.
    got = outcomes(host, "a")
    check(got == [(c, "needs-reset") for c in CASES],
          f"a: every malformed request kind leaves the device needing a reset ({got})")
    # The device counted each reset before the guest saw it and printed its line,
    # and the driver ran the device again before the workload started: one sample.
    ba = balloon("a")
    check(ba["counters"]["needs_reset"] == len(CASES) and ba["counters"]["bad_descs"] >= len(CASES),
          f"a: the device counted {len(CASES)} resets ({ba['counters']})")
    check(ba["driver_ok"] and not ba["needs_reset"], "a: the driver runs the device again")
    set_target("a", "128M")
    reaches("a", 128, "a: after the hostile cases the balloon inflates normally")
    set_target("a", "256M")
    reaches("a", 0, "a: ... and deflates")

    # b: a neighbour that never misbehaved is untouched.
    bb = balloon("b")
    check(bb["counters"]["needs_reset"] == 0 and bb["counters"]["bad_descs"] == 0 and
          bb["driver_ok"], f"b: its device never needed a reset ({bb['counters']})")
    set_target("b", "160M")
    reaches("b", 96, "b: its balloon works")

    # c: every case on the live queues, each time its balloon holds its target.
    set_target("c", "128M")
    check(host.wait_line(r"^\[c\] kvmem-balloon: hostile " + CASES[-1] + r" -> \S+$"),
          "c: the live hostile cases ran")
    got = outcomes(host, "c")
    check(got == [(c, "needs-reset") for c in CASES],
          f"c: every malformed request on a live queue needs a reset ({got})")
    # The driver prints that it reinitialises after each outcome line: the last may follow.
    check(host.wait_line(r"^\[c\] kvmem-balloon: device needs reset, reinitialising$", len(CASES)),
          "c: the driver noticed each reset and reinitialised")
    ok, vc = wait_state(sock, "c", lambda v: v["balloon"]["driver_ok"] and
                        v["balloon"]["balloon_actual_bytes"] == 128 * MIB,
                        "c: after the resets the device runs and holds the balloon again",
                        show=lambda v: v["balloon"], deadline_s=120)
    # Every reset was counted when the device gave up on its request, before the guest saw it.
    check(ok and vc["balloon"]["counters"]["needs_reset"] == len(CASES),
          f"c: the device counted {len(CASES)} resets ({vc and vc['balloon']['counters']})")
    set_target("c", "256M")
    reaches("c", 0, "c: the balloon it kept across resets deflates normally")

    # Everyone still runs and verifies.
    st = stats(sock)
    check(host.alive() and all(vm_of(st, n)["state"] == "running" for n in "abc"),
          "the host and all three VMs are running")
    check(all(host.wait_line(OK.format(n), host.count(OK.format(n)) + 2) for n in "abc"),
          "all three guests go on verifying")
    no_verify_fail(host, "hostile balloon drivers")
finally:
    rc = host.stop()
check(rc == 0, f"the host exits 0 on SIGTERM (got {rc})")
finish()
