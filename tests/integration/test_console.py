"""A console nobody reads never stops the guest or the host.

- A host whose stdout is a pipe nobody reads, with a guest that prints far
  more than the pipe holds: the guest keeps working (its console lines keep
  coming, counted as queued or dropped), pause and resume answer, the stats
  count the dropped lines, and SIGTERM ends the host.
- `kvmem run ... | head -1`: the pipeline ends; kvmem carries on without its
  reader and exits with the guest's status.
Before the console wrote from the vCPU thread with a blocking write, all of
these hung once the pipe was full."""
import os
import signal
import subprocess

from kvmemtest import KVMEM, check, finish, require_accel, wait_for, with_accel
from ctlhelp import request, stats, tmpdir, vm_of, wait_socket

require_accel()
d = tmpdir()
sock = os.path.join(d, "c.sock")

# stdout is a pipe we never read; stderr goes to a file (we do read that one).
err = open(os.path.join(d, "stderr"), "w+")
p = subprocess.Popen([KVMEM] + with_accel(["run", "--mem", "64M", "--socket", sock, "--append",
                                           "kvmem.debug=print20000 kvmem.wl=size=16,verify=1"]),
                     stdout=subprocess.PIPE, stderr=err)


class Proc:
    """Enough of ctlhelp.Host for wait_socket."""
    def alive(self):
        return p.poll() is None


def console():
    vm = vm_of(stats(sock), "vm0")
    return vm["console"] if vm else None


try:
    check(wait_socket(Proc(), sock), "the host serves its control socket")
    c = wait_for(lambda: (lambda c: c if c and c["dropped_lines"] > 0 else None)(console()), 120)
    check(c is not None, f"lines that do not fit are dropped and counted ({console()})")
    # The guest goes on: its verify lines keep arriving at the console (dropped or not).
    seen = c["queued_lines"] + c["dropped_lines"] if c else 0
    check(wait_for(lambda: (lambda c: c["queued_lines"] + c["dropped_lines"] >= seen + 3)(
        console()), 120), "the guest keeps printing (it verifies every second)")
    r = request(sock, {"verb": "pause", "vm": "vm0"})
    check(r.get("ok") is True, f"pause answers while the output is stalled ({r})")
    r = request(sock, {"verb": "resume", "vm": "vm0"})
    check(r.get("ok") is True, f"and resume ({r})")
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(120)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 0, f"SIGTERM ends the host although its output is stalled (status {rc})")
finally:
    if p.poll() is None:
        p.kill()
        p.wait()
err.seek(0)
check("console output blocked" in err.read(), "the lines still queued at the stop are reported")

# `kvmem run ... | head -1`: the reader leaves after one line.
r = subprocess.run(["bash", "-c", "set -o pipefail; \"$0\" \"$@\" | head -1; "
                    "echo \"status ${PIPESTATUS[0]}\" >&2",
                    KVMEM] + with_accel(["run", "--mem", "64M", "--append",
                                         "kvmem.debug=print20000 kvmem.wl=size=16,then=poweroff"]),
                   capture_output=True, text=True, timeout=240)
check(r.stdout.count("\n") == 1 and "status 0" in r.stderr,
      f"kvmem run | head -1 ends, kvmem with the guest's status 0 ({r.stderr.strip()[-200:]})")
finish()
