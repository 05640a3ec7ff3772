"""Seccomp filters per thread kind (core/sandbox.c). On by default: every
thread of a host has the host filter, and each kind's thread one more that
narrows it. A forbidden system call ends the process with status 159 and
one line naming the thread's kind and the call. A guest's own system call
stays the guest's crash (status 3): under thread, Syscall User Dispatch
takes it before any filter sees it. --no-seccomp (or "seccomp": false in a
host config) turns the filters off.

The forbidden call comes from KVMEM_SECCOMP_SELFTEST=KIND, which builds with
assertions honour (the builds the tests run): the first thread of that kind
makes one system call that no filter allows (getpgrp), right after its own
filter is on."""
import os
import re
import subprocess

from kvmemtest import ACCEL, KVMEM, check, finish, require_accel, run, wait_for
from ctlhelp import Host, host_config, tmpdir, wait_socket
from swaphelp import disk_dir

require_accel()
d = tmpdir()
VCPU = "vcpu-kvm" if ACCEL == "kvm" else "vcpu-thread"
WL = "kvmem.wl=size=16,then=poweroff"
VIOLATION = "forbidden system call getpgrp (111)"


def selftest_env(kind):
    return dict(os.environ, KVMEM_SECCOMP_SELFTEST=kind)


def bites(kind, rc, err, what):
    """A process that ended with rc and stderr lines err stopped at the
    self-test's call in a thread of `kind`: status 159, one line naming both."""
    named = [l for l in err if l.startswith("kvmem: error: seccomp:")]
    ok = (rc == 159 and len(named) == 1 and
          named[0].startswith(f"kvmem: error: seccomp: kind {kind}: {VIOLATION} at 0x") and
          named[0].endswith(": ending the process"))
    check(ok, f"{what}: a forbidden call in a {kind} thread ends the process with status 159 "
              f"and one line naming the kind and the call ({rc}: {named or err[-3:]})")


# The kernel's own workers inside the process (PF_USER_WORKER: KVM's
# kvm-nx-lpage-recovery, made from the thread that first ran a vCPU) copy
# that thread's filters but never run code of kvmem's: not kvmem's threads.
PF_USER_WORKER = 0x4000


def threads(pid):
    """{tid: (comm, seccomp mode, number of filters)} of a live process's own threads."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                flags = int(f.read().rsplit(")", 1)[1].split()[6])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                st = dict(l.rstrip("\n").split(":\t", 1) for l in f if ":\t" in l)
        except OSError:
            continue  # ended meanwhile
        if flags & PF_USER_WORKER:
            continue
        out[int(tid)] = (comm, int(st.get("Seccomp", "-1")), int(st.get("Seccomp_filters", "-1")))
    return out


# --- on by default: one filter for the host's own threads, two for every kind's ---

sock = os.path.join(d, "on.sock")
h = Host(["run", "--mem", "64M", "--socket", sock, "--dedup", "on",
          "--append", "kvmem.wl=size=16,then=sleep"])
up = wait_socket(h, sock) and h.wait_line(r"kvmem-wl: filled")
check(up, "a host with filters on serves its socket and runs its guest")
narrowed = re.compile(r"^(vcpu\d+|uffd|policy|policy-watch|dedup|control|con-.*|vio-.*|call_rcu)$")
want = {"vcpu0", "uffd", "policy", "dedup", "control", "con-vm0", "call_rcu", "thread-creator"}


def all_there():
    s = threads(h.p.pid)
    return s if want <= {c for c, _, _ in s.values()} else None


t = wait_for(all_there, 30) or threads(h.p.pid)
comms = {c for c, _, _ in t.values()}
check(want <= comms, f"its threads are there ({sorted(comms)})")
check(all(mode == 2 for _, mode, _ in t.values()),
      f"every thread runs under a seccomp filter ({sorted(set(t.values()))})")
check(all(n == 2 for c, _, n in t.values() if narrowed.match(c)),
      "every kind's thread has narrowed the host filter with its own "
      f"({sorted((c, n) for c, _, n in t.values() if narrowed.match(c))})")
check(all(n == 1 for c, _, n in t.values() if not narrowed.match(c)),
      "the host's own threads (main, the thread creator) have the host filter alone "
      f"({sorted((c, n) for c, _, n in t.values() if not narrowed.match(c))})")
check(h.stop() == 0, "the host exits 0 on SIGTERM")

# --- a guest's system call is the guest's crash, not a violation ---

r = run(["run", "--mem", "64M", "--append", "kvmem.debug=syscall"])
check(r.returncode == 3 and re.search(r"guest (system call \d+|exception #UD invalid opcode "
                                      r"\(vector 6\)) at rip", r.stderr) and
      "seccomp: kind" not in r.stderr,
      f"with filters on, a guest system call still ends its VM as a guest crash, status 3 "
      f"({r.returncode}: {r.stderr.strip()[-200:]})")

# --- the filters bite: a forbidden call in each kind of thread ---

kinds = [("host", []), (VCPU, []), ("uffd", []), ("policy", []), ("device", []),
         ("console", []), ("rcu", []), ("dedup", ["--dedup", "on"]),
         ("control", ["--socket", os.path.join(d, "ctl.sock")])]
# The hard limit's watch runs where the host finds its memory cgroup's usage.
if "policy-watch" in comms:
    kinds.append(("policy-watch", []))
for kind, extra in kinds:
    r = run(["run", "--mem", "64M", "--append", WL] + extra, env=selftest_env(kind))
    bites(kind, r.returncode, r.stderr.splitlines(), f"run ({kind})")
    check("verify ok" not in r.stdout, f"{kind}: the guest never got to verify")

# Host swap's threads: the swap-out worker, and the thread I/O engine.
swap_dir, fs = disk_dir()
if swap_dir:
    for kind in ("swap-out", "swap-io"):
        cfg = host_config(d, {"budget": "1G", "socket": os.path.join(d, "swap.sock"),
                              "swap": {"path": swap_dir, "size": "64M", "io": "threads"},
                              "vms": [{"name": "a", "mem": "64M", "append": WL}]})
        r = run(["host", "--config", cfg], env=selftest_env(kind))
        bites(kind, r.returncode, r.stderr.splitlines(), f"host with swap ({kind})")
else:
    print(f"info   no disk for a swap file ({fs}): swap-out and swap-io not tried", flush=True)

# A migration job's thread: a snapshot save over the control socket.
sock = os.path.join(d, "mig.sock")
os.environ["KVMEM_SECCOMP_SELFTEST"] = "migration"
h = Host(["run", "--mem", "64M", "--socket", sock, "--append", "kvmem.wl=size=16,then=sleep"])
del os.environ["KVMEM_SECCOMP_SELFTEST"]
if wait_socket(h, sock) and h.wait_line(r"kvmem-wl: filled"):
    subprocess.run([KVMEM, "save", "--socket", sock, "--vm", "vm0", "--to",
                    os.path.join(d, "vm0.snap")], capture_output=True, text=True, timeout=120)
    wait_for(lambda: not h.alive(), 60)
bites("migration", h.stop(), h.stderr(), "a snapshot save's job")

# --- off: --no-seccomp, and "seccomp": false ---

r = run(["run", "--no-seccomp", "--mem", "64M", "--append", WL], env=selftest_env(VCPU))
check(r.returncode == 0 and "kvmem-wl: verify ok" in r.stdout and
      "seccomp filters are off: asked for" in r.stderr and
      f"self-test: kind {VCPU} makes a forbidden system call (getpgrp); filters are off" in
      r.stderr and "seccomp: kind" not in r.stderr,
      f"--no-seccomp: the same forbidden call is allowed and the guest verifies "
      f"({r.returncode}: {r.stderr.strip()[-300:]})")

cfg = host_config(d, {"budget": "1G", "seccomp": False,
                      "vms": [{"name": "a", "mem": "64M", "append": WL}]})
r = run(["host", "--config", cfg], env=selftest_env("uffd"))
check(r.returncode == 0 and "seccomp filters are off" in r.stderr and
      "seccomp: kind" not in r.stderr,
      f"\"seccomp\": false in a host config: the same ({r.returncode}: {r.stderr.strip()[-200:]})")

cfg = host_config(d, {"budget": "1G", "seccomp": "off",
                      "vms": [{"name": "a", "mem": "64M", "append": WL}]})
r = run(["host", "--config", cfg])
check(r.returncode == 2 and "seccomp: must be true or false" in r.stderr,
      f"\"seccomp\" must be a boolean ({r.returncode}: {r.stderr.strip()[-200:]})")

sock = os.path.join(d, "off.sock")
h = Host(["run", "--no-seccomp", "--mem", "64M", "--socket", sock,
          "--append", "kvmem.wl=size=16,then=sleep"])
if wait_socket(h, sock) and h.wait_line(r"kvmem-wl: filled"):
    t = threads(h.p.pid)
    check(t and all(mode == 0 and n == 0 for _, mode, n in t.values()),
          f"--no-seccomp: no thread has a filter ({sorted(set(t.values()))})")
else:
    check(False, "a host with --no-seccomp runs its guest")
check(h.stop() == 0, "... and exits 0 on SIGTERM")

finish()
