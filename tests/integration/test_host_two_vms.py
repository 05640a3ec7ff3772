"""Two VMs in one host: both run and verify; pause/resume one through the
control socket; stop one, and the other goes on (still running, verifying).
Each VM's console also goes to its log file: a's to a real file (its lines,
without the host's prefix), b's to /dev/full (a full disk: one warning, the
VM runs on)."""
import os

from kvmemtest import check, finish, require_accel
from ctlhelp import (Host, host_config, no_verify_fail, request, stats, tmpdir, vm_of, wait_socket,
                     wait_state)

require_accel()
d = tmpdir()
sock = os.path.join(d, "k.sock")
WL = "kvmem.wl=size=32,verify=1"
LOG_A = os.path.join(d, "a.log")
cfg = host_config(d, {
    "budget": "1G", "socket": sock, "console_prefix": True, "vms": [
        {"name": "a", "mem": "256M", "append": WL + ",id=1", "console_log": LOG_A},
        {"name": "b", "mem": "256M", "append": WL + ",id=2", "console_log": "/dev/full"},
    ]})
OK_A, OK_B = r"^\[a\] kvmem-wl: verify ok 8192$", r"^\[b\] kvmem-wl: verify ok 8192$"


def state(name):
    r = request(sock, {"verb": "list"})
    return next((v["state"] for v in r.get("vms", []) if v["name"] == name), None)


host = Host(["host", "--config", cfg])
try:
    check(wait_socket(host, sock), "the host serves its control socket")
    check(host.wait_line(OK_A, 2) and host.wait_line(OK_B, 2), "both guests run and verify")
    r = request(sock, {"verb": "list"})
    check(r.get("ok") and [(v["name"], v["state"]) for v in r["vms"]] ==
          [("a", "running"), ("b", "running")], f"list: a and b running ({r})")

    # Pause b: it stops verifying until resumed, then goes on.
    r = request(sock, {"verb": "pause", "vm": "b"})
    check(r == {"ok": True, "vm": "b"}, f"pause b ({r})")
    # pause answers once every vCPU of b is parked: the next sample must say so.
    check(state("b") == "paused", "b is paused")
    r = request(sock, {"verb": "pause", "vm": "b"})
    check(r.get("ok") is False and r.get("code") == "EINVAL", f"pausing it twice: EINVAL ({r})")
    n = host.count(OK_B)
    check(host.wait_line(OK_A, host.count(OK_A) + 2), "a goes on while b is paused")
    check(host.count(OK_B) <= n + 1, "b did not keep verifying while paused")
    r = request(sock, {"verb": "resume", "vm": "b"})
    check(r == {"ok": True, "vm": "b"} and state("b") == "running", f"resume b ({r})")
    check(host.wait_line(OK_B, host.count(OK_B) + 2), "b verifies again after resume")

    # Stop a: it ends, b goes on.
    r = request(sock, {"verb": "stop", "vm": "a", "id": 9})
    check(r == {"ok": True, "id": 9, "vm": "a"}, f"stop a ({r})")
    wait_state(sock, "a", lambda v: v["state"] == "stopped", "a reaches stopped",
               show=lambda v: v["state"], deadline_s=120)
    check(host.alive() and state("b") == "running", "the host and b are still running")
    # a's last lines may still be on their way to us when it is stopped: count them
    # once lines b printed after the stop have come through the same stdout (two:
    # the first may have been on its way too).
    check(host.wait_line(OK_B, host.count(OK_B) + 2), "b verifies twice after a stopped")
    n_a = host.count(OK_A)
    check(host.wait_line(OK_B, host.count(OK_B) + 2), "b verifies two more times")
    check(host.count(OK_A) == n_a, f"a printed nothing after it stopped ({host.count(OK_A)} "
          f"verifications, {n_a} when b verified after the stop)")
    st = stats(sock)
    check(vm_of(st, "a")["state"] == "stopped" and vm_of(st, "b")["state"] == "running",
          "stats shows a stopped, b running")
    r = request(sock, {"verb": "pause", "vm": "a"})
    check(r.get("ok") is False and r.get("code") == "EINVAL", f"pausing a stopped VM: EINVAL ({r})")
    no_verify_fail(host, "two VMs")

    with open(LOG_A) as f:
        logged = f.read().splitlines()
    n_a = host.count(OK_A)
    check(n_a > 0 and logged.count("kvmem-wl: verify ok 8192") == n_a and
          not any(l.startswith("[") for l in logged),
          f"a's console log has its lines, unprefixed ({n_a} verifications, {len(logged)} lines)")
    full = [l for l in host.stderr() if "console log" in l]
    check(len(full) == 1 and "b: console log: No space left on device" in full[0],
          f"b's full log disk: one warning, and b ran on ({full})")
finally:
    rc = host.stop()
check(rc == 0, f"the host exits 0 on SIGTERM (got {rc}; {host.stderr()[-3:]})")
finish()
