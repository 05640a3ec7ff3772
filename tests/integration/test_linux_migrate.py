"""A stock Linux guest moves between two kvmem hosts on this machine, and
through a snapshot file, and goes on as it was (Debian's kernel, 512 MiB, the
workload kvmem-linux-wl verifying its pages every 2 s, some of its memory in
the balloon of the stock virtio_balloon driver):

1. live migration over a UNIX socket: the migration is done; a digest of
   every guest page where the VM stopped equals the one where it starts; the
   ballooned pages travelled as such; the source no longer has the VM; the
   destination runs it as a Linux machine, the balloon device as the driver
   left it (features, driver ok); the guest's console goes on there (the
   UART moved) with new "verify ok" lines and no "verify FAIL";
2. its devices work after the move: the driver answers the balloon's stats
   requests, and gives back every page the balloon held (the destination's
   policy or its target), through its queues and interrupts there;
3. a save (stopped) and a restore on the destination: the pages as saved,
   the VM runs again and the guest verifies on.
kvm only (linuxhelp.require_linux skips elsewhere, saying why). Every wait is
a poll with a generous deadline (a third level under emulation in the nested
VM is slow); nothing asserts on timing."""
import os

from kvmemtest import check, finish, require_accel, require_root, wait_for
from ctlhelp import (Host, host_config, no_verify_fail, request, stats, tmpdir, vm_of,
                     wait_incoming, wait_socket, wait_state)
from linuxhelp import CPUS, TIMERS, cmdline, require_linux, without_timers

MIB = 1 << 20
PAGES_PER_MIB = MIB // 4096
FILL = 64
BALLOON = 64
# Far above what the guest uses: the policy never balloons it on its own.
BUDGET = "16G"
# Under the nested VM's emulation a boot takes a minute or two, a migration of the guest's
# few hundred MiB as long; natively seconds.
BOOT_S = 600
MOVE_S = 900
# ... and a 64 MiB inflate or deflate, 64 of the driver's requests, minutes on a loaded machine.
BALLOON_S = 900

require_accel()
require_root("live migration hands guest memory between processes")
kernel, initrd = require_linux()
d = tmpdir()
a_sock, b_sock = f"{d}/a.sock", f"{d}/b.sock"
a_in, b_in = f"unix:{d}/a-in.sock", f"unix:{d}/b-in.sock"
VERIFY = r"\[lnx\] kvmem-wl: verify ok"
# Without timer interrupts the workload cannot sleep between verifications: it verifies once.
wl = f"size={FILL},dup=25,zero=25,id=3,verify={2 if TIMERS else 0},then=sleep"
cfg = {"budget": BUDGET, "socket": a_sock, "console_prefix": True, "incoming": a_in,
       "vms": [{"name": "lnx", "mem": "512M", "cpus": CPUS, "kernel": kernel, "initrd": initrd,
                "cmdline": cmdline(f"quiet kvmem.wl={wl}")}]}
src = Host(["host", "--config", host_config(d, cfg)])
dst = Host(["host", "--incoming", b_in, "--socket", b_sock])


def job(sock, kind, direction=None):
    """The last job of that kind of VM lnx the host shows (live VM first, then those that left)."""
    st = stats(sock)
    jobs = [v["migration"] for v in st.get("vms", [])
            if v["name"] == "lnx" and isinstance(v.get("migration"), dict)]
    jobs += [m for m in st.get("migrated", []) if m["vm"] == "lnx"]
    jobs = [m for m in jobs if m["kind"] == kind and direction in (None, m["direction"])]
    return jobs[0] if jobs else None


def wait_job(sock, kind, direction=None):
    end = {"done", "failed", "cancelled"}
    wait_for(lambda: (job(sock, kind, direction) or {}).get("stage") in end, MOVE_S)
    return job(sock, kind, direction) or {}


def verifies_on(host, what):
    """The guest's console goes on at host: new "verify ok" lines (where it has timers), no FAIL."""
    if TIMERS:
        n = host.count(VERIFY)
        check(host.wait_line(VERIFY, n=n + 2, deadline_s=BOOT_S),
              f"{what}: the guest verifies its memory again, on the console")
    no_verify_fail(host, what)


def set_target(sock, size, what):
    r = request(sock, {"verb": "balloon", "vm": "lnx", "target": size})
    check(r.get("ok") is True, f"{what}: balloon target {size} ({r})")


try:
    check(wait_socket(src, a_sock, deadline_s=120) and wait_socket(dst, b_sock) and
          wait_incoming(src) and wait_incoming(dst),
          "both hosts serve their sockets and take VMs in")
    check(src.wait_line(r"\[lnx\] kvmem-linux: virtio_balloon bound to virtio\d+",
                        deadline_s=BOOT_S), "the stock virtio_balloon driver binds the device")
    check(src.wait_line(rf"{VERIFY} {FILL * PAGES_PER_MIB}$", deadline_s=BOOT_S),
          f"the workload filled and verified {FILL} MiB")
    if not TIMERS:
        without_timers("verifications after the move (the workload sleeps between them)")
    set_target(a_sock, f"{512 - BALLOON}M", "before")
    wait_state(a_sock, "lnx", lambda v: v["balloon"]["balloon_actual_bytes"] == BALLOON * MIB,
               f"the driver gave {BALLOON} MiB to the balloon",
               show=lambda v: v["balloon"]["balloon_actual_bytes"] // MIB, deadline_s=BALLOON_S)
    features = vm_of(stats(a_sock), "lnx")["balloon"]["features"]
    verifies_on(src, "before the move")

    # 1. Live migration.
    r = request(a_sock, {"verb": "migrate", "vm": "lnx", "to": b_in, "checksum": True})
    check(r.get("ok") is True, f"the migration starts ({r.get('error', 'ok')})")
    out = wait_job(a_sock, "migration", "out")
    print(f"info   out: {out}", flush=True)
    check(out.get("stage") == "done", f"the migration is done ({out.get('error', '')})")
    inn = wait_job(b_sock, "migration", "in")
    check(inn.get("stage") == "done", f"the destination took it ({inn.get('error', '')})")
    check(out.get("checksum") and out.get("checksum") == inn.get("checksum"),
          f"every guest page arrived as it stopped (digests {out.get('checksum')} and "
          f"{inn.get('checksum')})")
    check(out.get("pages", {}).get("ballooned", 0) >= BALLOON * PAGES_PER_MIB,
          f"the ballooned pages travelled as such ({out.get('pages')})")
    check(wait_for(lambda: not vm_of(stats(a_sock), "lnx"), 60),
          "the source no longer has the VM")
    v = vm_of(stats(b_sock), "lnx") or {}
    check(v.get("state") == "running" and v.get("linux") is True,
          f"the destination runs it as a Linux machine ({v.get('state')}, linux "
          f"{v.get('linux')})")
    b = v.get("balloon") or {}
    check(b.get("driver_ok") is True and b.get("needs_reset") is False and
          b.get("features") == features,
          f"its balloon device as the driver left it (driver ok, features {b.get('features')})")
    verifies_on(dst, "after the migration")

    # 2. Its devices work here: the driver's stats, and its deflate through the queues. With
    # room to spare the destination's policy may give the pages back before the target does.
    updates = (b.get("guest") or {}).get("updates", 0)
    wait_state(b_sock, "lnx", lambda v: v["balloon"]["guest"].get("updates", 0) > updates + 2,
               "after the move: the driver answers the balloon's stats requests",
               show=lambda v: v["balloon"]["guest"].get("updates"), deadline_s=BALLOON_S)
    set_target(b_sock, "512M", "after the move")
    wait_state(b_sock, "lnx", lambda v: v["balloon"]["balloon_actual_bytes"] == 0 and
               v["balloon"]["counters"]["deflated_pages"] >= BALLOON * PAGES_PER_MIB and
               v["balloon"]["counters"]["needs_reset"] == 0,
               f"after the move: the balloon gave back the {BALLOON} MiB it held",
               show=lambda v: v["balloon"], deadline_s=BALLOON_S)
    verifies_on(dst, "after the deflate")

    # 3. A save with the VM stopped, and a restore on the same host.
    saved = f"{d}/lnx.snap"
    r = request(b_sock, {"verb": "save", "vm": "lnx", "to": saved, "stop": True,
                         "checksum": True})
    check(r.get("ok") is True, f"the save starts ({r.get('error', 'ok')})")
    sv = wait_job(b_sock, "save")
    check(sv.get("stage") == "done", f"the save is done ({sv.get('error', '')})")
    check(wait_for(lambda: not vm_of(stats(b_sock), "lnx"), 60), "the saved VM is gone")
    r = request(b_sock, {"verb": "restore", "file": saved, "checksum": True}, timeout=MOVE_S)
    check(r.get("ok") is True, f"the restore starts ({r.get('error', 'ok')})")
    # The verb answers once it is done or after its own deadline: then the stats tell.
    rs = r.get("migration") or {}
    if rs.get("stage") != "done":
        rs = wait_job(b_sock, "restore")
    check(rs.get("stage") == "done", f"the restore is done ({rs.get('error', '')})")
    check(rs.get("checksum") and rs.get("checksum") == sv.get("checksum"),
          f"every guest page as it was saved (digests {sv.get('checksum')} and "
          f"{rs.get('checksum')})")
    v = vm_of(stats(b_sock), "lnx") or {}
    check(v.get("state") == "running" and v.get("linux") is True,
          f"the restored VM runs as a Linux machine ({v.get('state')})")
    verifies_on(dst, "after the restore")
    check(not any(l.startswith("[lnx] kvmem-linux: FAIL") for l in src.stdout() + dst.stdout()),
          "no step of the guest's init failed")
    check(os.path.exists(saved), "the snapshot file is there")
finally:
    rcs = [dst.stop(), src.stop()]
check(rcs == [0, 0], f"both hosts exit 0 on SIGTERM (got {rcs})")
finish()
