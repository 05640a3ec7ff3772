"""Clones: many VMs from one snapshot, their memory shared from birth.

kvm: a guest with 512 MiB of RAM fills 32 MiB (a third of it pages alike across guests, a fifth
zero) and keeps rewriting and verifying it; a snapshot of it is taken, and 8 clones are started
from the snapshot with `kvmem clone`:
- each clone comes up with an identity of its own (its workload refills its pages under an id of
  its own) and verifies its memory, no FAIL: writes in one never show in another (each checks
  every page against its own id, the original's and its siblings' content differ);
- each names the file it is a clone of;
- the host uses far less than 8 x 512 MiB for them: the snapshot's pages are frames of the
  sharing store, mapped copy-on-write into every clone, and only what a clone writes is its own.
Both accelerators: a host without page sharing refuses to clone, saying why; under thread a clone
is refused, saying why (a guest holds host addresses and resumes only at its original place)."""
import os
import subprocess

from kvmemtest import ACCEL, KVMEM, check, finish, require_accel, wait_for
from ctlhelp import Host, host_config, no_verify_fail, request, stats, tmpdir, vm_of, wait_socket

require_accel()
d = tmpdir()
sock, nosh_sock = f"{d}/a.sock", f"{d}/b.sock"
WL = "kvmem.wl=size=32,dup=30,zero=20,id=1,rate=4,hot=30,verify=2,then=sleep"
N = 8
cfg = {"budget": "8G", "socket": sock, "console_prefix": True, "dedup": "on",
       "vms": [{"name": "base", "mem": "512M", "cpus": 1, "append": WL}]}
host = Host(["host", "--config", host_config(d, cfg)])
others = []

try:
    check(wait_socket(host, sock), "the host serves its socket")
    check(host.wait_line(r"\[base\] kvmem-wl: verify ok", n=2), "the original verifies")
    snap = f"{d}/base.snap"
    r = request(sock, {"verb": "save", "vm": "base", "to": snap})
    check(r.get("ok") is True, f"a snapshot of it ({r.get('error', 'ok')})")
    wait_for(lambda: (vm_of(stats(sock), "base").get("migration") or {}).get("stage")
             in ("done", "failed"), 120)
    check(vm_of(stats(sock), "base")["migration"]["stage"] == "done", "the snapshot is taken")

    # A host without page sharing has nothing to share the pages through.
    nosh = Host(["host", "--config", host_config(d, {
        "budget": "1G", "socket": nosh_sock, "dedup": "off", "vms": [],
        "incoming": f"unix:{d}/b-in.sock"})])
    others.append(nosh)
    check(wait_socket(nosh, nosh_sock), "a host without page sharing serves its socket")
    r = request(nosh_sock, {"verb": "clone", "file": snap, "count": 2})
    check(r.get("ok") is False and "dedup on" in r.get("error", ""),
          f"it refuses to clone, saying why ({r.get('error')})")
    nosh.stop()

    p = subprocess.run([KVMEM, "clone", "--socket", sock, snap, "--count", str(N),
                        "--prefix", "c"], capture_output=True, text=True, timeout=300)
    print(f"info   kvmem clone: {p.stdout.strip()[-300:]} {p.stderr.strip()[-300:]}", flush=True)
    if ACCEL == "thread":
        check(p.returncode != 0 and "clones are for the kvm accelerator" in p.stderr,
              "thread: clones are refused, saying why")
        check(not [v for v in stats(sock)["vms"] if v["name"].startswith("c-")],
              "thread: no clone was left")
    else:
        check(p.returncode == 0 and f"{N} clones" in p.stdout, f"kvm: {N} clones started")
        jobs = stats(sock).get("clones", [])
        check(len(jobs) == 1 and jobs[0]["stage"] == "done" and jobs[0]["started"] == N and
              jobs[0]["file"] == snap, f"the stats show the clone request, done ({jobs})")
        for i in range(1, N + 1):
            name = f"c-{i}"
            check(host.wait_line(rf"\[{name}\] kvmem-wl: identity {i}: id {1 + i}, refilled"),
                  f"{name}: took identity {i} (its own id)")
        for i in range(1, N + 1):
            name = f"c-{i}"
            n = host.count(rf"\[{name}\] kvmem-wl: verify ok")
            check(host.wait_line(rf"\[{name}\] kvmem-wl: verify ok", n=n + 2, deadline_s=300),
                  f"{name}: verifies its own pages")
            v = vm_of(stats(sock), name)
            check(v and v["clone_of"] == snap and v["state"] == "running",
                  f"{name}: runs, a clone of the snapshot ({v and v['clone_of']})")
        no_verify_fail(host, "the clones and the original")
        st = stats(sock)
        used = st["host"]["used_bytes"]
        shared = sum(vm_of(st, f"c-{i}")["pages"]["shared"] for i in range(1, N + 1))
        print(f"info   used {used >> 20} MiB for the original and {N} clones of 512 MiB; "
              f"clone pages still shared: {shared}", flush=True)
        check(used < N * (512 << 20) // 4,
              f"the host uses {used >> 20} MiB, far less than {N} x 512 MiB")
        check(shared > 0, f"the clones still share pages of the snapshot ({shared})")
finally:
    for h in others:
        h.stop()
    host.stop()
finish()
