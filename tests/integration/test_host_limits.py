"""A host's limits and failures, each named on one line, the exit status 1
or 2 (never an errno):
- more VMs than the per-module tables once held (256) run to the end;
- a config whose VMs need more address space than one process has is
  refused before anything runs, with the limit named;
- with too few file descriptors for one step or another (creating the host,
  the signalfd of host_run, loading the guest image), the step that failed
  says so;
- when the host's own wait for its VMs fails (poll refuses more descriptors
  than RLIMIT_NOFILE), it stops every VM and exits 1 instead of waiting for
  them forever.
The many-VM and descriptor-sweep parts check the VMM's own tables and
messages, which no accelerator changes: they run under thread only, where a
VM costs a thread; under kvm they would create hundreds of KVM VMs, which the
nested SVM VM used to test kvm on machines without /dev/kvm does not
survive (its kernel dies after ~100-150 VM creations)."""
import json
import os
import resource
import subprocess

from kvmemtest import ACCEL, GUEST, KVMEM, check, finish, require_accel, with_accel
from ctlhelp import Host, connect, host_config, read_line, tmpdir, wait_socket, wait_state

require_accel()
d = tmpdir()
ENV = dict(os.environ, KVMEM_GUEST=GUEST)


def kvmem(args, nofile=None, timeout=120):
    """Run kvmem to the end; (status, stdout lines, stderr lines), status None if it hung."""
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    try:
        r = subprocess.run([KVMEM] + with_accel(args), capture_output=True, text=True,
                           timeout=timeout, env=ENV, preexec_fn=limit if nofile else None)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, out.splitlines(), err.splitlines()
    return r.returncode, r.stdout.splitlines(), r.stderr.splitlines()


def failures(lines):
    """kvmem's lines that name a failure: its errors, and usage errors (no level)."""
    return [l for l in lines if l.startswith("kvmem") and
            not l.startswith(("kvmem: warning:", "kvmem: info:", "kvmem: debug:"))]


# A ThreadSanitizer build's arena (mem/memmap.h): the 444 GiB TSan leaves below the
# executable, 74 of the smallest VMs, instead of 25600 GiB.
TSAN = os.environ.get("KVMEM_TSAN") == "1"
ARENA_GIB = 444 if TSAN else 25600

# More VMs than 256 (as many as that arena holds under TSan), each to its own power-off.
if ACCEL == "thread":
    N = 70 if TSAN else 300
    cfg = host_config(d, {"budget": "8G", "socket": os.path.join(d, "many.sock"), "vms": [
        {"name": f"v{i}", "mem": "8M", "append": f"kvmem.wl=size=1,id={i},then=poweroff"}
        for i in range(N)]})
    rc, out, err = kvmem(["host", "--config", cfg], timeout=240)
    verified = sum(1 for l in out if "verify ok" in l)
    check(rc == 0 and verified == N,
          f"{N} VMs in one host all run and power off (status {rc}, {verified} verified; "
          f"{err[-2:]})")

# Address space: 150 VMs of 170 GiB need about 26 TiB of it; a process has 25 TiB (or 444 GiB).
cfg = host_config(d, {"budget": "8G", "socket": os.path.join(d, "huge.sock"), "vms": [
    {"name": f"h{i}", "mem": "170G"} for i in range(150)]})
rc, out, err = kvmem(["host", "--config", cfg])
check(rc == 2 and len(err) == 1 and f"{ARENA_GIB} GiB of address space" in err[0] and
      "150 VMs" in err[0] and not out,
      f"VMs beyond the address space of a process: status 2, one line naming the limit, "
      f"nothing run (status {rc}: {err[:3]})")

# Every number of descriptors from too few to enough: success, or one error line.
if ACCEL == "thread":
    cfg = host_config(d, {"budget": "1G", "socket": os.path.join(d, "fd.sock"), "vms": [
        {"name": "solo", "mem": "16M", "append": "kvmem.wl=size=1,then=poweroff"}]})
    seen, ok_at, bad = [], None, []
    for n in range(4, 65):
        rc, out, err = kvmem(["host", "--config", cfg], nofile=n, timeout=60)
        if any("error while loading shared libraries" in l for l in err):
            continue  # the dynamic loader's, before kvmem runs
        if rc == 0 and any("verify ok" in l for l in out):
            ok_at = n
            break
        if rc not in (1, 2) or len(failures(err)) != 1:
            bad.append((n, rc, err[-3:]))
        else:
            seen.append(failures(err)[0])
    check(ok_at is not None, f"the host runs once it has enough descriptors ({ok_at})")
    check(not bad, "with too few descriptors, every failure is status 1 or 2 and one error line "
          f"naming it ({len(seen)} failing limits; wrong: {bad})")
    check(any(s.startswith("kvmem: error: host: signalfd:") for s in seen),
          f"a failed signalfd is named ({sorted(set(seen))})")

# The host's wait for its VMs fails: poll with more fds than RLIMIT_NOFILE is EINVAL.
sock = os.path.join(d, "poll.sock")
cfg = host_config(d, {"budget": "1G", "socket": sock, "vms": [
    {"name": "a", "mem": "16M", "append": "kvmem.wl=size=1,then=sleep"},
    {"name": "b", "mem": "16M", "append": "kvmem.wl=size=1,then=sleep"}]})
# LeakSanitizer cannot scan a process left with one descriptor at its exit: off for this one.
if "ASAN_OPTIONS" in os.environ:
    os.environ["ASAN_OPTIONS"] += ":detect_leaks=0"
host = Host(["host", "--config", cfg])
try:
    check(wait_socket(host, sock), "the host serves its control socket")
    # Both guests loaded (a VM still being created opens its guest image: with
    # one descriptor left that fails first, and says so, not the poll).
    for name in ("a", "b"):
        wait_state(sock, name, lambda v: v["state"] == "running", f"VM {name} runs")
    # Accepted first (a reply proves it: connect() alone only reaches the listen
    # backlog): with a limit of one descriptor the host accepts no one.
    s = connect(sock)
    s.sendall((json.dumps({"verb": "list"}) + "\n").encode())
    line, _ = read_line(s)
    check(line is not None and json.loads(line).get("ok"), f"list on the connection ({line})")
    resource.prlimit(host.p.pid, resource.RLIMIT_NOFILE, (1, 1))
    # Stopping a wakes the host's wait, whose next poll() fails.
    s.sendall((json.dumps({"verb": "stop", "vm": "a"}) + "\n").encode())
    line, _ = read_line(s)
    check(line is not None and json.loads(line).get("ok"), f"stop a ({line})")
    s.close()
    try:
        rc = host.p.wait(60)
    except subprocess.TimeoutExpired:
        rc = None
    # Exited: its last log lines are ours once the readers have reached the end.
    for t in host.readers if rc is not None else ():
        t.join(10)
    why = [l for l in host.stderr() if "stopping every VM" in l]
    check(rc == 1 and len(why) == 1 and why[0].startswith("kvmem: error: host: poll: "),
          f"a failed poll stops every VM and the host exits 1, saying why (status {rc}; "
          f"{host.stderr()[-3:]})")
finally:
    host.stop()
finish()
