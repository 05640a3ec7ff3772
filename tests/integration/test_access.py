"""Where the policy's access information comes from: DAMON where the kernel offers it, else
write-protect sampling, and two hosts on one machine that share DAMON without disturbing each
other.

1. A host with the default access source says which one it uses, in its log and its stats. On a
   kernel whose DAMON this process can use (root, fvaddr operations, a kdamond no one else holds)
   that is DAMON: the stats name its kdamond and its thread's CPU time, and its regions are read
   every pass. Elsewhere it is sampling, and the log says why DAMON is not used.
2. With DAMON: a second host on the same machine takes a kdamond of its own; both keep reading
   their regions while the other runs and after the other stops, and the first one's kdamond
   thread is the same throughout (never restarted or taken over).
3. With DAMON, in a build with fault injection: DAMON's sysfs busy with other users' commands
   (every write failing EBUSY, as when other hosts' kdamonds hold its one command slot) is no
   reason to give DAMON up. The passes meanwhile read nothing; a VM started meanwhile is handed
   to the kdamond once DAMON is free again, and the same kdamond goes on reading.
4. "access": "damon" where DAMON cannot be had: the host refuses to start, with the reason.

Every wait is a poll with a generous deadline; nothing asserts on timing."""
import os
import re
import time

from kvmemtest import check, fault_points, finish, require_accel, wait_for
from ctlhelp import Host, host_config, request, stats, tmpdir, vm_of, wait_socket, wait_state

require_accel()


def start(name, access="auto"):
    d = tmpdir()
    sock = f"{d}/k.sock"
    cfg = {"budget": "4G", "socket": sock, "console_prefix": True, "access": access,
           "vms": [{"name": name, "mem": "128M",
                    "append": f"kvmem.wl=size=64,id=1,rate=2,hot=20,then=sleep"}]}
    h = Host(["host", "--config", host_config(d, cfg)])
    return h, sock


KDAMONDS = "/sys/kernel/mm/damon/admin/kdamonds"


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        return f"({e.strerror})"


def damon_sysfs():
    """Every kdamond's state, contexts and target, and kvmem's lock files: what a host that
    could not take one was looking at."""
    base = KDAMONDS
    nr = read(f"{base}/nr_kdamonds")
    kd = [f"{i}: {read(f'{base}/{i}/state')}, contexts {read(f'{base}/{i}/contexts/nr_contexts')}, "
          f"pid {read(f'{base}/{i}/pid')}, target "
          f"{read(f'{base}/{i}/contexts/0/targets/0/pid_target')}"
          for i in range(int(nr) if nr.isdigit() else 0)]
    locks = sorted(os.listdir("/run/kvmem")) if os.path.isdir("/run/kvmem") else []
    return f"kdamonds {kd}, lock files {locks}"


def region_starts(kdamond):
    """Where the target regions kdamond was given start."""
    base = f"{KDAMONDS}/{kdamond}/contexts/0/targets/0/regions"
    return [int(read(f"{base}/{i}/start")) for i in range(int(read(f"{base}/nr_regions")))]


def injected(sock):
    r = request(sock, {"verb": "faults"})
    return next(p["injected"] for p in r["points"] if p["name"] == "damon.write")


def damon_busy(sock, dm):
    """Every DAMON write fails EBUSY while a VM starts: nothing read, nothing given up; then
    the new VM's RAM is in the kdamond's regions and it reads on."""
    i0 = injected(sock)
    request(sock, {"verb": "faults", "clear": True, "set": "damon.write:EBUSY*all"})
    r = request(sock, {"verb": "start", "vm": {"name": "c", "mem": "64M",
                                               "append": "kvmem.wl=size=32,id=3,then=sleep"}},
                timeout=60)
    check(r.get("ok"), f"a VM starts while DAMON is busy ({r})")
    check(wait_for(lambda: injected(sock) >= i0 + 1), "the policy's passes find DAMON busy")
    u1 = stats(sock)["host"]["damon"]["updates"]
    n1 = injected(sock)
    check(wait_for(lambda: injected(sock) >= n1 + 3), "pass after pass")
    st = stats(sock)
    c = vm_of(st, "c")
    check(st["host"]["access_source"] == "damon" and st["host"]["damon"]["updates"] == u1,
          f"DAMON is kept, reading nothing meanwhile ({st['host']['damon']}, {u1} before)")
    inside = lambda: [a for a in region_starts(dm["kdamond"])
                      if c["ram_base"] <= a < c["ram_base"] + c["mem_bytes"]]
    check(not inside(), f"the new VM's RAM is not the kdamond's yet ({region_starts(dm['kdamond'])})")
    request(sock, {"verb": "faults", "clear": True})
    same_kdamond(sock, dm, "DAMON free again: the regions are read on")
    check(inside(), f"the new VM's RAM is the kdamond's now ({region_starts(dm['kdamond'])}, its "
          f"RAM at {c['ram_base']})")


def passes_on(sock, what, n=3):
    """The host's DAMON reads its regions n more times."""
    u0 = stats(sock)["host"]["damon"]["updates"]
    return wait_state(sock, None, lambda st: st["host"]["damon"] is not None and
                      st["host"]["damon"]["updates"] >= u0 + n, what,
                      show=lambda st: str(st["host"]["damon"]))


def same_kdamond(sock, dm, what):
    """The host's DAMON reads its regions on, on the kdamond thread dm named."""
    ok, st = passes_on(sock, what)
    check(st["host"]["damon"]["pid"] == dm["pid"],
          f"{what}: on the same kdamond thread ({st['host']['damon']})")


# ---- 1. The source in use, named -------------------------------------------------------------
a, sock_a = start("a")
try:
    check(wait_socket(a, sock_a), "the host serves its control socket")
    # Said once the VMs run (a host that cannot start says only why).
    t0 = time.monotonic()
    while not [l for l in a.stderr() if "access information:" in l] and a.alive() and \
            time.monotonic() - t0 < 60:  # a deadline only
        time.sleep(0.1)
    line = [l for l in a.stderr() if "access information:" in l]
    check(len(line) == 1, f"the log names the access source ({line})")
    st = stats(sock_a)["host"]
    src = st["access_source"]
    check(src in ("damon", "sampling"), f"the stats name it too ({src})")
    check(isinstance(st["vmm_cpu_ms"], int), f"and the VMM's CPU time ({st['vmm_cpu_ms']} ms)")
    if src == "sampling":
        check(st["damon"] is None and line and re.search(r"sampling \(DAMON: .+\)", line[0]),
              f"sampling, with why DAMON is not used ({line})")
    else:
        ok, st = passes_on(sock_a, "DAMON's regions are read every pass")
        dm = st["host"]["damon"]
        check(dm["pid"] > 0 and dm["regions"] > 0 and dm["cpu_ms"] >= 0,
              f"its kdamond, thread, regions and CPU time ({dm})")
        # ---- 2. A second host beside it takes another kdamond; neither disturbs the other --
        b, sock_b = start("b")
        try:
            check(wait_socket(b, sock_b), "a second host on the same machine starts")
            ok, st_b = wait_state(sock_b, None, lambda st: st["host"]["damon"] is not None,
                                  "it takes DAMON once its VM runs")
            sb = st_b["host"]
            why_b = [l for l in b.stderr() if "access information:" in l]
            check(sb["access_source"] == "damon" and
                  sb["damon"]["kdamond"] != dm["kdamond"],
                  f"it has DAMON too, on a kdamond of its own ({sb['damon']} beside {dm}; "
                  f"{why_b}; {damon_sysfs() if sb['damon'] is None else ''})")
            passes_on(sock_b, "the second host's regions are read")
            same_kdamond(sock_a, dm, "the first host's too, while the second runs")
        finally:
            rc = b.stop()
        check(rc == 0, f"the second host stops cleanly ({rc})")
        same_kdamond(sock_a, dm, "the first host's regions are read after the second stopped")
        # ---- 3. DAMON busy with other users' commands ----------------------------------------
        if "damon.write" in (fault_points()[0] or []):
            damon_busy(sock_a, dm)
        else:
            print("info   not checked here: DAMON busy (a build with fault injection does)")
finally:
    rc = a.stop()
check(rc == 0, f"the host stops cleanly ({rc}; last log lines {a.stderr()[-3:]})")

# ---- 4. DAMON demanded where it cannot be had --------------------------------------------------
if src == "sampling":
    h, sock = start("c", access="damon")
    t0 = time.monotonic()
    while h.alive() and time.monotonic() - t0 < 60:  # a deadline only: it exits at once
        time.sleep(0.2)
    rc = h.stop()
    err = [l for l in h.stderr() if "DAMON" in l]
    check(rc != 0 and err, f"\"access\": \"damon\" without DAMON: the host refuses ({rc}, {err})")
finish()
