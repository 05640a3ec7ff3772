"""Live migration between two kvmem hosts on this machine, over a UNIX socket.

1. A guest that keeps rewriting its pages and verifies all of them every second (with zero and
   duplicate pages, shared by kvmem's page sharing, some given to the balloon and some swapped
   out to the host's swap file where there is a disk for one) migrates with
   `kvmem migrate`: the command ends "done"; the source no longer has the VM and shows the
   migration; the destination runs it and the guest goes on verifying there, no FAIL; a digest of
   every guest page taken where the VM stopped equals the one taken where it starts; the bytes
   sent are below the memory it has (zero, shared and ballooned pages travel as markers or once).
2. It migrates back: the first destination is a source as well, and a VM
   started at the first host meanwhile has not taken its place (thread).
3. Failures leave the source running its VM, verifying, and the destination holding nothing:
   a refused reservation (a VM of that name runs there), a destination that dies in pre-copy
   (SIGKILL), a peer that sends garbage, a peer that never answers (the stream's timeout), and a
   cancel (migrate_cancel) in pre-copy.

Nothing asserts on timing: the pre-copy is kept long where a failure must land in it by a
bandwidth limit, and every wait is a poll with a generous deadline."""
import os
import socket
import subprocess
import threading
import time

from kvmemtest import ACCEL, KVMEM, check, finish, require_accel, require_root, wait_for
from ctlhelp import (Host, host_config, no_verify_fail, request, stats, tmpdir, vm_of,
                     wait_incoming, wait_socket)
from swaphelp import disk_dir

require_accel()
require_root("live migration hands guest memory between processes")

d = tmpdir()
a_sock, b_sock = f"{d}/a.sock", f"{d}/b.sock"
a_in, b_in = f"unix:{d}/a-in.sock", f"unix:{d}/b-in.sock"
# Rewrites in a hot 30%, the rest read only by the verification every 3 s: pages swapped out
# right after one stay out for a while.
WL = "kvmem.wl=size=48,dup=30,zero=20,id=1,rate=8,hot=30,verify=3,then=sleep"
cfg = {"budget": "4G", "socket": a_sock, "console_prefix": True, "dedup": "on",
       "incoming": a_in,
       "vms": [{"name": "mig", "mem": "128M", "cpus": 2, "append": WL}]}
swap_dir, fs = disk_dir()
if swap_dir:
    cfg["swap"] = {"path": swap_dir, "size": "256M"}
else:
    print(f"info   no disk for a swap file ({fs}): no swapped pages travel", flush=True)
src = Host(["host", "--config", host_config(d, cfg)])
dst = Host(["host", "--incoming", b_in, "--socket", b_sock])


def migration(sock, vm, direction):
    """The last migration of vm seen by the host at sock (live VM first, then those that left)."""
    st = stats(sock)
    for v in st.get("vms", []):
        if v["name"] == vm and isinstance(v.get("migration"), dict) \
                and v["migration"]["direction"] == direction:
            return v["migration"]
    found = [m for m in st.get("migrated", []) if m["vm"] == vm and m["direction"] == direction]
    return found[-1] if found else None


def migrate(sock, to, *extra):
    return subprocess.run([KVMEM, "migrate", "--socket", sock, "--vm", "mig", "--to", to]
                          + list(extra), capture_output=True, text=True, timeout=600)


def verifies_on(host, what):
    """The guest verifies again after now (a new "verify ok" line), no FAIL."""
    n = host.count(r"\[mig\] kvmem-wl: verify ok")
    ok = host.wait_line(r"\[mig\] kvmem-wl: verify ok", n=n + 2, deadline_s=120)
    check(ok, f"{what}: the guest verifies its memory again")
    no_verify_fail(host, what)


def holds_nothing(sock, what):
    st = stats(sock)
    check(not [v for v in st["vms"] if v["name"] == "mig"],
          f"{what}: the destination holds no VM ({[v['name'] for v in st['vms']]})")


def ask_migrate(sock, to, **kw):
    req = dict({"verb": "migrate", "vm": "mig", "to": to}, **kw)
    return request(sock, req, timeout=30)


def wait_end(sock, direction="out", deadline_s=300):
    end = {"done", "failed", "cancelled"}
    wait_for(lambda: (migration(sock, "mig", direction) or {}).get("stage") in end, deadline_s)
    return migration(sock, "mig", direction) or {}


try:
    check(wait_socket(src, a_sock) and wait_socket(dst, b_sock) and wait_incoming(src) and
          wait_incoming(dst), "both hosts serve their sockets and take VMs in")
    check(src.wait_line(r"\[mig\] kvmem-wl: verify ok", n=2), "the guest filled and verifies")
    # Some of its memory to the balloon, so that ballooned pages travel too.
    r = request(a_sock, {"verb": "balloon", "vm": "mig", "target": "96M"})
    check(r.get("ok") is True, f"the balloon takes 32 MiB ({r})")
    wait_for(lambda: vm_of(stats(a_sock), "mig")["pages"]["ballooned"] > 0, 60)
    if swap_dir:
        # And some to swap, right after a verification: those travel from their slots.
        src.wait_line(r"\[mig\] kvmem-wl: verify ok",
                      n=src.count(r"\[mig\] kvmem-wl: verify ok") + 1)
        r = request(a_sock, {"verb": "swap", "vm": "mig", "to": "24M"}, timeout=60)
        check(r.get("ok") is True, f"part of it is swapped out ({r})")
    before = vm_of(stats(a_sock), "mig")
    if swap_dir:
        # Not asserted: the guest's next verification reads them back in when it comes.
        print(f"info   swapped pages as it starts: {before['pages']['swapped']}", flush=True)
    print(f"info   before: pages {before['pages']}", flush=True)

    # 1. There.
    r = ask_migrate(a_sock, b_in, checksum=True)
    check(r.get("ok") is True, f"the migration starts ({r.get('error', 'ok')})")
    out = wait_end(a_sock)
    print(f"info   out: {out}", flush=True)
    check(out.get("stage") == "done", f"the migration is done ({out.get('error', '')})")
    inn = migration(b_sock, "mig", "in") or {}
    print(f"info   in: {inn}", flush=True)
    check(inn.get("stage") == "done", f"the destination took it ({inn.get('error', '')})")
    check(out.get("checksum") and out.get("checksum") == inn.get("checksum"),
          f"every guest page arrived as it stopped (digests {out.get('checksum')} and "
          f"{inn.get('checksum')})")
    # The job ends first; the source's main thread lets the VM go right after.
    check(wait_for(lambda: not [v for v in stats(a_sock)["vms"] if v["name"] == "mig"], 60),
          "the source no longer has the VM")
    vb = vm_of(stats(b_sock), "mig")
    check(vb is not None and vb["state"] == "running", f"the destination runs it ({vb and vb['state']})")
    verifies_on(dst, "after the migration")
    # The bound: the pages with content of their own, plus every page written meanwhile.
    own = before["pages"]["anon"] + before["pages"]["shared"]
    bound = (own + out["dirtied_pages"]) * 4096
    check(out["pages"]["data"] + out["pages"]["shared"] <= own + out["dirtied_pages"],
          f"pages sent with content ({out['pages']['data'] + out['pages']['shared']}) within "
          f"the VM's own ({own}) plus those it dirtied ({out['dirtied_pages']})")
    check(out["bytes"] <= bound * 1.05, f"bytes sent ({out['bytes'] >> 20} MiB) within 1.05x "
          f"of that bound ({bound >> 20} MiB): zero, shared and ballooned pages are markers "
          f"or sent once")
    check(out["pages"]["zero"] > 0 and out["pages"]["ballooned"] > 0,
          f"zero and ballooned pages travelled as markers ({out['pages']})")
    check(out["round"] >= 2, f"pre-copy, then stop-and-copy ({out['round']} rounds)")

    # A VM started where mig was must not take its place: mig could not come back (thread).
    r = request(a_sock, {"verb": "start", "vm": {"name": "y", "mem": "128M",
                                                 "append": "kvmem.wl=size=4,then=sleep"}})
    check(r.get("ok") is True, f"a VM starts where mig left ({r.get('error', 'ok')})")
    if ACCEL == "thread":
        yb = vm_of(stats(a_sock), "y")["ram_base"]
        check(yb != vb["ram_base"], f"it takes another address than mig's ({yb:#x})")

    # 2. And back, with the CLI.
    r = migrate(b_sock, a_in, "--downtime", "300")
    print(f"info   kvmem migrate: {r.stdout.strip()[-300:]} {r.stderr.strip()[-300:]}", flush=True)
    check(r.returncode == 0 and "mig: done" in r.stdout, "kvmem migrate brings it back: done")
    check(vm_of(stats(a_sock), "mig")["state"] == "running", "it runs at the first host again")
    verifies_on(src, "back home")
    request(a_sock, {"verb": "remove", "vm": "y"})

    # 3. Failures: the source keeps it running, the destination holds nothing.
    # A refused reservation: a VM of that name runs there already.
    clash = Host(["host", "--config", host_config(f"{d}", {
        "budget": "1G", "socket": f"{d}/c.sock", "incoming": f"unix:{d}/c-in.sock",
        "vms": [{"name": "mig", "mem": "32M", "append": "kvmem.wl=size=4,then=sleep"}]})])
    check(wait_socket(clash, f"{d}/c.sock") and wait_incoming(clash),
          "a host with its own VM named mig")
    r = ask_migrate(a_sock, f"unix:{d}/c-in.sock")
    out = wait_end(a_sock)
    check(out.get("stage") == "failed" and "refused" in out.get("error", ""),
          f"a refused reservation fails the migration ({out.get('error')})")
    clash.stop()
    verifies_on(src, "after a refused reservation")

    # A destination killed during pre-copy (slowed to 8 MiB/s: many seconds of it).
    r = ask_migrate(a_sock, b_in, bandwidth_mib_s=8)
    wait_for(lambda: (migration(a_sock, "mig", "out") or {}).get("stage") == "pre-copy", 60)
    time.sleep(1)
    dst.p.kill()
    out = wait_end(a_sock)
    check(out.get("stage") == "failed", f"a destination that dies fails it ({out.get('error')})")
    check(vm_of(stats(a_sock), "mig")["state"] == "running", "the source runs it on")
    verifies_on(src, "after the destination died")

    # A peer that answers with garbage, and one that never answers.
    def fake(path, garbage):
        ls = socket.socket(socket.AF_UNIX)
        ls.bind(path)
        ls.listen(1)

        def serve():
            c, _ = ls.accept()
            if garbage:
                c.sendall(b"KVMEMMIG" + b"\x01\x00\x00\x00\x00\x00\x00\x00" + os.urandom(64))
            time.sleep(30)
            c.close()
        threading.Thread(target=serve, daemon=True).start()
        return ls

    for garbage, what in ((True, "a peer sending garbage"), (False, "a silent peer")):
        path = f"{d}/fake-{int(garbage)}.sock"
        ls = fake(path, garbage)
        r = ask_migrate(a_sock, f"unix:{path}")
        out = wait_end(a_sock, deadline_s=120)
        check(out.get("stage") == "failed", f"{what} fails it ({out.get('error')})")
        ls.close()
        verifies_on(src, f"after {what}")

    # A cancel in pre-copy.
    dst = Host(["host", "--incoming", b_in, "--socket", b_sock])
    check(wait_socket(dst, b_sock) and wait_incoming(dst), "a new destination")
    r = ask_migrate(a_sock, b_in, bandwidth_mib_s=8)
    wait_for(lambda: (migration(a_sock, "mig", "out") or {}).get("stage") == "pre-copy", 60)
    r = request(a_sock, {"verb": "migrate_cancel", "vm": "mig"})
    check(r.get("ok") is True, f"migrate_cancel is taken ({r})")
    out = wait_end(a_sock)
    check(out.get("stage") == "cancelled", f"the migration is cancelled ({out.get('error')})")
    wait_for(lambda: not [v for v in stats(b_sock)["vms"] if v["name"] == "mig"], 30)
    holds_nothing(b_sock, "after a cancel")
    verifies_on(src, "after a cancel")

    # The destination's side of a corrupt stream: a source whose records are garbage is
    # refused and leaves nothing behind; one that stops halfway through a VM too.
    for what, payload in (("garbage", os.urandom(256)),
                          ("a truncated record", b"\x01\x00\x00\x00\xff\x00\x00\x00")):
        c = socket.socket(socket.AF_UNIX)
        c.connect(b_in[5:])
        c.sendall(b"KVMEMMIG" + b"\x01\x00\x00\x00\x00\x00\x00\x00" + payload)
        c.shutdown(socket.SHUT_WR)
        wait_for(lambda: [m for m in stats(b_sock).get("migrated", [])
                          if m["direction"] == "in" and m["stage"] == "failed"], 60)
        c.close()
        holds_nothing(b_sock, f"after a source sending {what}")
    fails = [m for m in stats(b_sock).get("migrated", []) if m["stage"] == "failed"]
    check(len(fails) >= 1, f"the destination says why ({[m.get('error') for m in fails]})")

    # Bad requests.
    for req, code in (({"verb": "migrate", "vm": "nope", "to": b_in}, "ENOENT"),
                      ({"verb": "migrate", "vm": "mig", "to": "carrier-pigeon:x"}, "EINVAL"),
                      ({"verb": "migrate", "vm": "mig", "to": b_in, "downtime_ms": -1}, "EINVAL"),
                      ({"verb": "migrate_cancel", "vm": "mig"}, "ENOENT")):
        r = request(a_sock, req)
        check(r.get("ok") is False and r.get("code") == code, f"{req} is refused: {code} ({r})")
finally:
    rc_src = src.stop()
    rc_dst = dst.stop()
check(rc_src == 0, f"the source host stops cleanly ({rc_src})")
check(rc_dst == 0, f"the destination host stops cleanly ({rc_dst})")
finish()
