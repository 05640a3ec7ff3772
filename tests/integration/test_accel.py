"""The accelerator: choosing one, and what a guest can do to the host under
each. On every accelerator: a guest system call and a store past everything
the guest has are guest crashes (status 3, reported like any exception), a
guest spinning without ever touching a device can be paused, resumed and
stopped, and the stats name the accelerator. Under thread, where the guest
shares the VMM's address space: the store lands in the guard gap after the
VM's reservation and ends that VM alone while a neighbour keeps verifying,
and dedup merges the identical code of two guests (their text runs from
store frames) while both keep running."""
import os
import re

from kvmemtest import ACCEL, GUEST, check, finish, require_accel, run, wait_for
from ctlhelp import (Host, host_config, no_verify_fail, request, stats, tmpdir, vm_of, wait_socket,
                     wait_state)

require_accel()
d = tmpdir()


# A guest system call: a crash, never a host system call.
r = run(["run", "--mem", "64M", "--append", "kvmem.debug=syscall"])
crash = re.search(r"guest (system call \d+|exception #UD invalid opcode \(vector 6\)) at rip",
                  r.stderr)
check(r.returncode == 3 and crash is not None,
      f"a guest syscall ends the VM with status 3 and a report ({r.returncode}: "
      f"{r.stderr.strip()[-200:]})")

# Port I/O at user level: a #GP on every accelerator (no I/O bitmap), never an exit.
r = run(["run", "--mem", "64M", "--append", "kvmem.debug=pio"])
check(r.returncode == 3 and "#GP general protection (vector 13)" in r.stderr,
      f"port I/O from the guest is a #GP with status 3 ({r.returncode}: "
      f"{r.stderr.strip()[-200:]})")

# A store past everything the guest has: a #PF with the guest-physical address.
r = run(["run", "--mem", "64M", "--append", "kvmem.debug=fault"])
check(r.returncode == 3 and re.search(r"#PF page fault \(vector 14\) at rip 0x[0-9a-f]+ "
                                      r"error 0x[0-9a-f]+ address 0x100000000 ", r.stderr),
      f"a store past the guest's span is a #PF at gpa 0x100000000 ({r.stderr.strip()[-200:]})")

# The accelerator each VM runs on, in the stats and the list.
sock = os.path.join(d, "s.sock")
host = Host(["run", "--mem", "64M", "--socket", sock, "--append", "kvmem.debug=spin600"])
try:
    check(wait_socket(host, sock), "the host serves its control socket")
    vm = vm_of(stats(sock), "vm0")
    check(vm and vm.get("accel") == ACCEL, f"stats say accel {ACCEL} ({vm and vm.get('accel')})")
    check(vm and isinstance(vm.get("ram_base"), int) and vm["ram_base"] > 0,
          "stats give the VM's RAM base")
    lst = request(sock, {"verb": "list"})
    check([v.get("accel") for v in lst.get("vms", [])] == [ACCEL], f"list says it too ({lst})")
    wait_state(sock, "vm0", lambda v: v["state"] == "running", "the VM runs",
               show=lambda v: v["state"], deadline_s=60)
    # A guest spinning in a loop that never exits on its own: pause, resume, stop.
    r = request(sock, {"verb": "pause", "vm": "vm0"})
    check(r == {"ok": True, "vm": "vm0"}, f"pause a spinning guest ({r})")
    # pause answers once every vCPU is parked: the next sample must say so.
    r = request(sock, {"verb": "list"})
    check(r["vms"][0]["state"] == "paused", f"it is paused ({r['vms'][0]['state']})")
    r = request(sock, {"verb": "resume", "vm": "vm0"})
    check(r == {"ok": True, "vm": "vm0"}, f"resume it ({r})")
    r = request(sock, {"verb": "stop", "vm": "vm0"})
    check(r.get("ok") is True, f"stop it ({r})")
    check(wait_for(lambda: not host.alive(), 60), "the host ends with its only VM stopped")
finally:
    rc = host.stop()
check(rc == 0, f"a stopped VM exits 0 ({rc})")

# A spinning guest paused and resumed goes on to the end of its loop.
host = Host(["run", "--mem", "64M", "--socket", sock, "--append", "kvmem.debug=spin3"])
try:
    check(wait_socket(host, sock), "the host serves its control socket")
    wait_state(sock, "vm0", lambda v: v["state"] == "running", "the VM runs",
               show=lambda v: v["state"], deadline_s=60)
    r = request(sock, {"verb": "pause", "vm": "vm0"})
    check(r.get("ok") is True, f"pause ({r})")
    r = request(sock, {"verb": "resume", "vm": "vm0"})
    check(r.get("ok") is True, f"resume ({r})")
    check(host.wait_line(r"kvmem guest: spin done"), "the guest finishes its loop after resume")
finally:
    rc = host.stop()
check(rc == 0, f"and powers off with 0 ({rc})")

if ACCEL == "thread":
    # Three VMs in one host: one stores past its RAM into the guard gap, one makes a
    # system call; both end alone, and the third goes on verifying.
    sock2 = os.path.join(d, "g.sock")
    WL = "kvmem.wl=size=32,verify=1,id=2"
    cfg = host_config(d, {"budget": "1G", "socket": sock2, "dedup": "off", "vms": [
        {"name": "good", "mem": "128M", "append": WL},
        {"name": "bad", "mem": "64M", "append": "kvmem.debug=fault"},
        {"name": "sys", "mem": "64M", "append": "kvmem.debug=syscall"},
    ]})
    host = Host(["host", "--config", cfg])
    try:
        check(wait_socket(host, sock2), "the host serves its control socket")
        for name in ("bad", "sys"):
            wait_state(sock2, name, lambda v: v["state"] == "stopped", f"the VM '{name}' stopped",
                       show=lambda v: v["state"], deadline_s=120)
        n = host.count(r"^\[good\] kvmem-wl: verify ok")
        check(host.wait_line(r"^\[good\] kvmem-wl: verify ok", n + 2),
              "its neighbour keeps verifying")
        # The reports are on their way through the host's stderr pipe: wait for them.
        for report, what in (("bad: vcpu 0: guest exception #PF", "the store into the guard gap"),
                             ("sys: vcpu 0: guest system call", "the system call")):
            check(wait_for(lambda: any(report in l for l in host.stderr()), 60),
                  f"{what} is reported for the VM that made it ({host.stderr()[-3:]})")
        no_verify_fail(host, "guard gap")
    finally:
        rc = host.stop()
    check(rc == 3, f"the host ends on SIGTERM with its crashed VMs' status, 3 ({rc})")

    # Identical guest code in two VMs is merged; both guests keep running from store frames.
    sock3 = os.path.join(d, "c.sock")
    cfg = host_config(d, {"budget": "2G", "socket": sock3, "dedup": "on", "vms": [
        {"name": "c1", "mem": "128M", "append": "kvmem.wl=size=16,verify=1,id=1"},
        {"name": "c2", "mem": "128M", "append": "kvmem.wl=size=16,verify=1,id=2"},
    ]})
    host = Host(["host", "--config", cfg])

    def text_from_store(base):
        """The mapping of gpa 0x200000 (the image's text) in the host: a store frame, executable."""
        addr = base + 0x200000
        with open(f"/proc/{host.p.pid}/maps") as f:
            for line in f:
                rng, perms = line.split()[:2]
                lo, hi = (int(x, 16) for x in rng.split("-"))
                if lo <= addr < hi:
                    return "kvmem-dedup-store" in line and "x" in perms
        return False

    try:
        check(wait_socket(host, sock3), "the host serves its control socket")
        st = stats(sock3)
        bases = [vm_of(st, n)["ram_base"] for n in ("c1", "c2")]
        check(wait_for(lambda: all(text_from_store(b) for b in bases), 120),
              "both guests' code pages are mapped from the sharing store, executable")
        for n in ("c1", "c2"):
            k = host.count(rf"^\[{n}\] kvmem-wl: verify ok")
            check(host.wait_line(rf"^\[{n}\] kvmem-wl: verify ok", k + 2),
                  f"{n} keeps running and verifying on merged code")
        no_verify_fail(host, "merged code")
    finally:
        host.stop()

# Choosing: a missing accelerator is one line and status 2.
if not os.access("/dev/kvm", os.R_OK | os.W_OK):
    r = run(["run", "--accel", "kvm", "--mem", "64M"], timeout=30)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    check(r.returncode == 2 and len(lines) == 1 and "/dev/kvm" in lines[0],
          f"--accel kvm without /dev/kvm: status 2, one line ({r.returncode}: {lines})")
    # auto picks thread, and then runs only the built-in guest unless thread is asked for.
    r = run(["run", "--accel", "auto", "--mem", "64M", "--append", "kvmem.debug=exit0"])
    check(r.returncode == 0 and "thread accelerator" in r.stderr,
          f"auto falls back to thread and says so ({r.returncode}: {r.stderr.strip()})")
    other = os.path.join(d, "other.elf")
    with open(GUEST, "rb") as src, open(other, "wb") as dst:
        dst.write(src.read())
    r = run(["run", "--accel", "auto", "--mem", "64M", "--guest", other], timeout=30)
    check(r.returncode == 2 and "--accel thread" in r.stderr,
          f"another image under auto->thread needs --accel thread ({r.stderr.strip()})")
r = run(["run", "--accel", "warp", "--mem", "64M"], timeout=30)
check(r.returncode == 2 and "--accel warp" in r.stderr, "an unknown accelerator is a usage error")

finish()
