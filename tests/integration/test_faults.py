"""Injected faults lose nothing (a build with -Dfault_injection=true; skipped otherwise).

Two hosts. Host A runs guests a and b (48 MiB each of zero, shared and unique pages, rewritten
at 4 MiB/s and verified every 2 s), page sharing, a swap file (io_uring where the kernel allows
it) and a console log file per VM. Host B takes VMs in (--incoming), runs guest c and swaps
through the thread engine. Point by point family, the `faults` verb arms failures at the
moment the test chooses (kvmem --fault-points lists the points; core/fault.h the grammar), the
test makes the path run, waits until each armed failure was injected, and checks that the
guests verify their memory again, the mechanism's counters say what failed, and the host goes
on serving its other VMs:

1. userfaultfd (A, a swapped out and read back): write protection failing whole and part way,
   registrations, copies failing whole and part way, zero-page fills. The failed calls are
   counted (txn.uffd_errors), commits kept (txn.failed), faults retried (txn.fault_retries): no
   VM stops for a copy that failed on a page that was read.
2. swap file writes (A, io_uring): the swap verb answers EIO, the pages stay; then it works.
3. page sharing and the policy (A): the mapping a window is rebuilt in, its mremap, the
   engine's and the policy's allocations (dedup.window_aborts, dedup.errors); then sharing and
   the policy go on.
4. the console log on a full disk (A): lines lost to the log are counted, later lines written.
5. a VM being started (A): each module's allocations failing in turn, the start verb answers
   ENOMEM and leaves nothing; then two identical VMs start and merge page by page while a
   page's own mapping onto its frame fails (txn.failed). Then, guests paused, every page's
   state agrees with its mapping (memcheck).
6. the migration socket (A to B): a send and a receive reset mid-stream fail the migration,
   b runs on at A and B keeps nothing; then b migrates.
7. swap file I/O on the thread engine (B): a failed write keeps c's pages; a failed read of a
   swapped page stops c alone, saying why, while b runs on at B.
A exits 0; B exits 1 (c's VMM failure), both with nothing leaked (the sanitizer build checks at
exit). Every wait is a poll with a generous deadline; nothing depends on timing."""
import json
import os
import sys

from kvmemtest import check, fault_points, finish, require_accel, require_root, wait_for
from ctlhelp import (Host, host_config, request, stats, tmpdir, vm_of, wait_incoming, wait_socket,
                     wait_state)
from swaphelp import disk_dir, swap_out

require_accel()
POINTS, why = fault_points()
if POINTS is None:
    print(f"SKIP   this kvmem has no fault injection ({why}): build with "
          f"-Dfault_injection=true (.ci/setup's build-asan does)", flush=True)
    sys.exit(77)
WANT = ["alloc.dedup", "alloc.policy", "alloc.balloon", "alloc.mem", "uffd.writeprotect",
        "uffd.writeprotect.partial", "uffd.copy", "uffd.copy.partial", "uffd.zeropage",
        "uffd.register", "dedup.window.mmap", "dedup.window.mremap", "dedup.frame.mmap",
        "console.log.write", "swap.file.read", "swap.file.write", "migrate.send", "migrate.recv"]
check(all(p in POINTS for p in WANT), f"kvmem --fault-points lists every point the test uses "
      f"(missing: {[p for p in WANT if p not in POINTS]})")
require_root("migration hands guest memory between processes")
ddir, dfs = disk_dir()
if not check(ddir is not None, f"a directory on a disk filesystem for the swap files ({dfs})"):
    finish()

# Rewrites in a quarter of each guest: the rest keeps the pages a and b have alike.
WL = "kvmem.wl=size=48,dup=30,zero=10,id={},rate=4,hot=25,verify=2,wait=balloon,then=sleep"
VERIFY = r"kvmem-wl: verify ok \d+$"
d = tmpdir()
a_sock, b_sock, b_in = f"{d}/a.sock", f"{d}/b.sock", f"unix:{d}/b-in.sock"
os.makedirs(f"{ddir}/b")
A = Host(["host", "--config", host_config(d, {
    "budget": "4G", "socket": a_sock, "console_prefix": True, "dedup": "on",
    "swap": {"path": ddir, "size": "256M"},
    "vms": [{"name": n, "mem": "128M", "append": WL.format(i + 1),
             "console_log": f"{d}/{n}.log"} for i, n in enumerate("ab")]})])
with open(f"{d}/b.json", "w") as f:
    json.dump({"budget": "4G", "socket": b_sock, "console_prefix": True, "dedup": "off",
               "incoming": b_in, "swap": {"path": f"{ddir}/b", "size": "256M", "io": "threads"},
               "vms": [{"name": "c", "mem": "128M",
                        "append": "kvmem.wl=size=32,id=3,read=1,verify=2,then=sleep"}]}, f)
B = Host(["host", "--config", f"{d}/b.json"])


def faults(sock, **kw):
    r = request(sock, dict(verb="faults", **kw))
    if not r.get("ok"):
        raise RuntimeError(f"faults verb: {r}")
    return {p["name"]: p for p in r["points"]}


def arm(sock, spec, what):
    """Arm spec (disarming all else) and return how many injections each point owes.
    The counts are taken before arming: the points may fire before the verb answers."""
    pts = faults(sock)
    faults(sock, clear=True, set=spec)
    owed = {}
    for part in spec.split(","):
        name = part.split(":")[0].split("@")[0].split("*")[0]
        n = part.split("*")[1] if "*" in part else "1"
        owed[name] = pts[name]["injected"] + (1 if n == "all" else int(n))
    print(f"info   {what}: armed {spec}", flush=True)
    return owed


def injected(sock, owed, what, poke=None, deadline_s=120):
    """Wait until every point of owed has failed as often as armed (poke() meanwhile)."""
    last = {}

    def done():
        if poke:
            poke()
        last.update({n: p["injected"] for n, p in faults(sock).items() if n in owed})
        return all(last[n] >= owed[n] for n in owed)
    ok = bool(wait_for(done, deadline_s, step=0.5))
    check(ok, f"{what}: every armed failure was injected ({last}, wanted {owed})")
    faults(sock, clear=True)
    return ok


def verifies(host, names, what, more=2):
    """Each guest of names verifies all its memory `more` times from now, and none failed."""
    names = list(names)
    base = {n: host.count(rf"^\[{n}\] {VERIFY}") for n in names}
    ok = all(host.wait_line(rf"^\[{n}\] {VERIFY}", base[n] + more, 120) for n in names)
    fails = [l for l in host.stdout() if "verify FAIL" in l]
    check(ok and not fails, f"{what}: {', '.join(names)} verify all their memory again, no FAIL "
          f"({fails[:3]})")


def host_figures(sock):
    return stats(sock)["host"]


try:
    check(wait_socket(A, a_sock) and wait_socket(B, b_sock) and wait_incoming(B),
          "both hosts serve their sockets; B takes VMs in")
    # Sharing waits until the guests have filled (so zero pages are still theirs for swap-out).
    r = request(a_sock, {"verb": "dedup", "enabled": False})
    check(r.get("ok") is True, f"A: the sharing scanner is off for now ({r.get('error', 'ok')})")
    for n in "ab":
        request(a_sock, {"verb": "balloon", "vm": n, "target": "120M"})
    check(A.wait_line(rf"^\[a\] {VERIFY}") and A.wait_line(rf"^\[b\] {VERIFY}") and
          B.wait_line(rf"^\[c\] {VERIFY}"), "a, b (at A) and c (at B) filled and verified")

    # 1. userfaultfd.
    t0 = host_figures(a_sock)["txn"]
    owed = arm(a_sock, "uffd.writeprotect*10,uffd.writeprotect.partial*10,uffd.register*3,"
               "uffd.copy*10,uffd.copy.partial*10,uffd.zeropage*3", "userfaultfd")
    injected(a_sock, owed, "userfaultfd", poke=lambda: request(
        a_sock, {"verb": "swap", "vm": "a", "to": "8M"}, timeout=60))
    verifies(A, "ab", "after failed userfaultfd calls")
    t1 = host_figures(a_sock)["txn"]
    # Every injected failure but a copy stopped part way is one the callers did not expect.
    check(t1["uffd_errors"] - t0["uffd_errors"] >= 10 + 10 + 3 + 10 + 3 and
          t1["failed"] > t0["failed"] and t1["fault_retries"] > t0["fault_retries"],
          f"stats: failed calls ({t1['uffd_errors'] - t0['uffd_errors']}), commits kept "
          f"({t1['failed'] - t0['failed']}), faults retried "
          f"({t1['fault_retries'] - t0['fault_retries']}), claims undone "
          f"({t1['claim_errors'] - t0['claim_errors']})")
    st = stats(a_sock)
    check(all(vm_of(st, n)["state"] == "running" and "error" not in vm_of(st, n)["swap"]
              for n in "ab"), "a and b run, neither stopped for a page it could not have")

    # 2. Swap file writes, io_uring (or what the kernel allows).
    h0 = host_figures(a_sock)["swap"]
    arm(a_sock, "swap.file.write*all", "swap writes")
    r = request(a_sock, {"verb": "swap", "vm": "b", "to": "8M"}, timeout=60)
    check(r.get("ok") is False and r.get("code") == "EIO" and "stay resident" in r.get("error", ""),
          f"swapping b out while writes fail: EIO, its pages stay ({r})")
    faults(a_sock, clear=True)
    h1 = host_figures(a_sock)["swap"]
    check(h1["write_errors"] > h0["write_errors"],
          f"stats: the failed writes are counted ({h1['write_errors'] - h0['write_errors']}, "
          f"engine {h1['engine']})")
    r = swap_out(a_sock, "b", "8M", lambda v: v["swap"]["swapped_bytes"] > 0)[-1]
    check(r.get("ok") is True and vm_of(stats(a_sock), "b")["swap"]["swapped_bytes"] > 0,
          f"then b swaps out ({r})")
    verifies(A, "ab", "after failed swap writes")

    # 3. Page sharing and the policy.
    d0 = host_figures(a_sock)["dedup"]
    owed = arm(a_sock, "dedup.window.mmap*2,dedup.window.mremap*2,alloc.dedup*10,alloc.policy*3",
               "sharing and policy")
    r = request(a_sock, {"verb": "dedup", "enabled": True})
    check(r.get("ok") is True, "A: the sharing scanner is on")
    injected(a_sock, owed, "sharing and policy")
    d1 = host_figures(a_sock)["dedup"]
    check(d1["window_aborts"] > d0["window_aborts"] and d1["errors"] > d0["errors"],
          f"stats: windows given up ({d1['window_aborts'] - d0['window_aborts']}) and the "
          f"engine's errors ({d1['errors'] - d0['errors']}) are counted")
    m0 = host_figures(a_sock)["dedup"]["merges"]
    wait_state(a_sock, None, lambda s: s["host"]["dedup"]["merges"] > m0 and
               s["host"]["dedup"]["pages_sharing"] > 0,
               "sharing goes on after: more merges, pages shared",
               show=lambda s: f"merges {s['host']['dedup']['merges']}, sharing "
               f"{s['host']['dedup']['pages_sharing']}", deadline_s=120)
    p0 = host_figures(a_sock)["policy_passes"]
    wait_state(a_sock, None, lambda s: s["host"]["policy_passes"] >= p0 + 2,
               "the policy goes on after its failed allocations", deadline_s=60)
    verifies(A, "ab", "after failed sharing and policy calls")

    # 4. The console log on a full disk.
    lost0 = sum(vm_of(stats(a_sock), n)["console"]["log_lost_lines"] for n in "ab")
    owed = arm(a_sock, "console.log.write:ENOSPC*3", "console log")
    injected(a_sock, owed, "console log")
    lost1 = sum(vm_of(stats(a_sock), n)["console"]["log_lost_lines"] for n in "ab")
    check(lost1 - lost0 == 3, f"stats: the 3 lines the log lost are counted ({lost1 - lost0})")
    check(any("console log: No space left on device" in l for l in A.stderr()),
          "the log says the console log is losing lines")
    sizes = {n: os.path.getsize(f"{d}/{n}.log") for n in "ab"}
    verifies(A, "ab", "after a full disk")
    check(all(os.path.getsize(f"{d}/{n}.log") > sizes[n] for n in "ab"),
          "later lines reach the log files again")

    # 5. Allocations of a VM being started: each module's in turn fails (the scanner and the
    # policy may meet the failures too meanwhile), then it starts.
    NEW = "kvmem.wl=size=8,dup=100,id=9,verify=1,then=sleep"
    for spec in ("alloc.balloon", "alloc.mem", "alloc.dedup", "alloc.policy"):
        arm(a_sock, spec + "*all", f"start with {spec}")
        r = request(a_sock, {"verb": "start", "vm": {"name": "n1", "mem": "64M", "append": NEW}},
                    timeout=60)
        faults(a_sock, clear=True)
        check(r.get("ok") is False and r.get("code") == "ENOMEM",
              f"starting a VM while {spec} fails: ENOMEM ({r})")
        check(vm_of(stats(a_sock), "n1") is None, "... and nothing of it is left")
    # Two identical VMs merged page by page (no windows): a page's own mapping onto its frame.
    f0 = host_figures(a_sock)["txn"]["failed"]
    r = request(a_sock, {"verb": "dedup", "windows": False})
    check(r.get("ok") is True, "A: sharing merges page by page for now")
    owed = arm(a_sock, "dedup.frame.mmap*5", "per-page merges")
    for n in ("n1", "n2"):
        r = request(a_sock, {"verb": "start", "vm": {"name": n, "mem": "64M", "append": NEW}},
                    timeout=60)
        check(r.get("ok") is True, f"then {n} starts ({r.get('error', 'ok')})")
    injected(a_sock, owed, "per-page merges")
    check(host_figures(a_sock)["txn"]["failed"] > f0, "stats: the merges not mapped are counted")
    request(a_sock, {"verb": "dedup", "windows": True})
    verifies(A, ("a", "b", "n1", "n2"), "after failed starts and merges")
    for n in ("n1", "n2"):
        r = request(a_sock, {"verb": "remove", "vm": n}, timeout=60)
        check(r.get("ok") is True, f"{n} is removed ({r.get('error', 'ok')})")

    # After every failure so far: each page's state agrees with its mapping (guests paused).
    for n in "ab":
        r = request(a_sock, {"verb": "pause", "vm": n})
        check(r.get("ok") is True, f"{n} pauses ({r.get('error', 'ok')})")
    for n in "ab":
        r = request(a_sock, {"verb": "memcheck", "vm": n}, timeout=60)
        check(r.get("ok") is True and r.get("checked", 0) > 0 and r.get("mismatches") == 0,
              f"{n}: no page's state contradicts its mapping ({r.get('mismatches')} of "
              f"{r.get('checked')}; first {r.get('first_bad')})")
    for n in "ab":
        r = request(a_sock, {"verb": "resume", "vm": n})
        check(r.get("ok") is True, f"{n} resumes ({r.get('error', 'ok')})")

    # 6. The migration socket, mid-stream.
    def migration_end(vm):
        end = {"done", "failed", "cancelled"}

        def m():
            st = stats(a_sock)
            v = vm_of(st, vm)
            if v and isinstance(v.get("migration"), dict):
                return v["migration"]
            f = [x for x in st.get("migrated", []) if x["vm"] == vm]
            return f[-1] if f else None
        wait_for(lambda: (m() or {}).get("stage") in end, 180)
        return m() or {}

    for sock, spec in ((a_sock, "migrate.send@20"), (b_sock, "migrate.recv@20")):
        owed = arm(sock, spec, "migration")
        r = request(a_sock, {"verb": "migrate", "vm": "b", "to": b_in}, timeout=60)
        check(r.get("ok") is True, f"b's migration starts ({r.get('error', 'ok')})")
        m = migration_end("b")
        check(m.get("stage") == "failed" and "Connection reset by peer" in m.get("error", "") +
              str([x.get("error") for x in stats(b_sock).get("migrated", [])]),
              f"{spec}: the migration fails on a reset connection ({m.get('error')})")
        injected(sock, owed, f"migration ({spec})")
        check(vm_of(stats(a_sock), "b")["state"] == "running", "b runs on at A")
        ok, _ = wait_state(b_sock, None, lambda s: vm_of(s, "b") is None,
                           "B keeps nothing of b", deadline_s=60)
        verifies(A, "ab", f"after a migration broken by {spec}")
    r = request(a_sock, {"verb": "migrate", "vm": "b", "to": b_in}, timeout=60)
    check(r.get("ok") is True and migration_end("b").get("stage") == "done",
          "then b migrates to B")
    verifies(B, "bc", "b at B, beside c")
    verifies(A, "a", "a at A, alone")

    # 7. Swap file I/O on the thread engine (B).
    check(host_figures(b_sock)["swap"]["engine"] == "threads", "B's swap runs on the thread engine")
    arm(b_sock, "swap.file.write", "swap writes (threads)")
    r = request(b_sock, {"verb": "swap", "vm": "c", "to": "8M"}, timeout=60)
    faults(b_sock, clear=True)
    check(r.get("ok") is False and r.get("code") == "EIO",
          f"swapping c out while a write fails: EIO ({r})")
    r = request(b_sock, {"verb": "swap", "vm": "c", "to": "8M"}, timeout=60)
    check(r.get("ok") is True and r.get("swapped_bytes", 0) > 0, f"then c swaps out ({r})")
    owed = arm(b_sock, "swap.file.read", "swap reads (threads)")
    ok, v = wait_state(b_sock, "c", lambda v: v["state"] == "stopped" and "error" in v["swap"],
                       "a read of c's swapped page fails: c stops, saying why",
                       show=lambda v: f"{v['state']}, {v['swap'].get('error')}")
    check(ok and "cannot be read back" in v["swap"]["error"] and
          "Input/output error" in v["swap"]["error"], f"the reason names the I/O error")
    injected(b_sock, owed, "swap reads (threads)")
    check(host_figures(b_sock)["swap"]["read_errors"] >= 1, "stats: the failed read is counted")
    verifies(B, "b", "b runs on at B")
    check(vm_of(stats(b_sock), "b")["state"] == "running", "b is still running at B")
finally:
    rc_a, rc_b = A.stop(), B.stop()
check(rc_a == 0, f"A stops cleanly ({rc_a}; {A.stderr()[-3:]})")
check(rc_b == 1, f"B exits 1, c's VMM failure ({rc_b}; {B.stderr()[-3:]})")
finish()
