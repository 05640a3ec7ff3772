"""Helpers for the control-socket and `kvmem stat` integration tests: a kvmem
host process whose console and log are collected line by line, and raw
control-socket clients. Waits are polls with generous deadlines (a broken
build fails instead of hanging); nothing asserts on timing."""
import atexit
import json
import time
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

from kvmemtest import KVMEM, GUEST, check, wait_for, wait_until, with_accel


class Host:
    """A running `kvmem run ...` or `kvmem host ...` with its output collected."""

    def __init__(self, args, prefix=()):
        """prefix: a command the host runs under (e.g. ip netns exec NS)."""
        self.p = subprocess.Popen(list(prefix) + [KVMEM] + with_accel(args), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, KVMEM_GUEST=GUEST))
        self.out, self.err = [], []
        self.lock = threading.Lock()
        self.readers = [threading.Thread(target=self._read, args=(f, l), daemon=True)
                        for f, l in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self.readers:
            t.start()
        # A test that dies halfway must not leave a VM running behind it.
        atexit.register(self._reap)

    def _reap(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def _read(self, f, lines):
        for line in f:
            with self.lock:
                lines.append(line.rstrip("\n"))

    def stdout(self):
        with self.lock:
            return list(self.out)

    def stderr(self):
        with self.lock:
            return list(self.err)

    def count(self, regex):
        r = re.compile(regex)
        return sum(1 for l in self.stdout() if r.search(l))

    def alive(self):
        return self.p.poll() is None

    def wait_line(self, regex, n=1, deadline_s=180):
        """Wait until regex has matched n console lines (or the host died); on
        giving up, say what was seen."""
        ok = wait_for(lambda: self.count(regex) >= n or not self.alive(),
                      deadline_s) and self.count(regex) >= n
        if not ok:
            self.gave_up(f"{n} console line(s) matching {regex!r}: {self.count(regex)} seen")
        return ok

    def gave_up(self, what):
        """An info line for a wait that gave up: what it saw, and the host's last words."""
        state = "running" if self.alive() else f"exited {self.p.returncode}"
        print(f"info   gave up waiting for {what}; host {state}, last console lines "
              f"{self.stdout()[-3:]}, last log lines {self.stderr()[-3:]}", flush=True)

    def stop(self, timeout=120):
        """SIGTERM the host (it stops every VM) and return its exit status."""
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        for t in self.readers:
            t.join(10)
        return rc


def wait_incoming(host, deadline_s=60):
    """Wait until a host started with --incoming says it accepts VMs (after its control socket)."""
    ok = wait_for(lambda: any("accepting VMs at" in l for l in host.stderr()) or not host.alive(),
                  deadline_s) and any("accepting VMs at" in l for l in host.stderr())
    if not ok:
        host.gave_up("the line saying it accepts VMs")
    return ok


def tmpdir():
    d = tempfile.mkdtemp(prefix="kvmem-ctl-")
    atexit.register(shutil.rmtree, d, True)
    return d


def wait_socket(host, path, deadline_s=60):
    """Wait until the host answers on path; False if it died first."""
    def up():
        if not host.alive():
            return "dead"
        try:
            return request(path, {"verb": "list"}, timeout=5).get("ok") and "up"
        except OSError:
            return None
    return wait_for(up, deadline_s) == "up"


def connect(path, timeout=30):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Blocking connect: with a timeout set, a full backlog fails with EAGAIN at once.
    s.connect(path)
    s.settimeout(timeout)
    return s


def read_line(s, buf=b""):
    """Read one reply line; returns (line or None at EOF/reset, rest of buffer)."""
    while b"\n" not in buf:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return None, b""
        if not chunk:
            return None, b""
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    return line, rest


def request(path, req, timeout=30):
    """One request on a fresh connection; the decoded reply."""
    s = connect(path, timeout)
    try:
        s.sendall((json.dumps(req) + "\n").encode())
        line, _ = read_line(s)
    finally:
        s.close()
    if line is None:
        raise ConnectionResetError("no reply")
    return json.loads(line)


# A client for request_as, run as another user: one connection, each argument
# after the path a request line, one reply read for each; prints one JSON line:
# {"connect": errno} when the connect fails, else {"connect": 0, "replies":
# [...]}, fewer replies than requests when the server closed first.
AS_USER_CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(60)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect": e.errno})); sys.exit(0)
replies, buf = [], b""
for req in sys.argv[2:]:
    try:
        s.sendall(req.encode() + b"\n")
    except OSError:
        pass  # a peer that refused us may have said why: read it
    try:
        while b"\n" not in buf:
            c = s.recv(65536)
            if not c:
                break
            buf += c
    except OSError:
        pass
    if b"\n" not in buf:
        break
    line, buf = buf.split(b"\n", 1)
    replies.append(json.loads(line))
print(json.dumps({"connect": 0, "replies": replies}))
"""


def request_as(ids, path, *reqs):
    """Requests on one connection as another user, ids being setpriv's
    options (["--reuid", U, "--regid", G, "--clear-groups"]): the client's
    answer (AS_USER_CLIENT), or {"error": ...} when it did not run."""
    r = subprocess.run(["setpriv"] + list(ids) + [sys.executable, "-c", AS_USER_CLIENT, path] +
                       [json.dumps(q) for q in reqs], capture_output=True, text=True,
                       timeout=120, cwd="/")
    return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr}


def stats(path, busy_retries=30):
    """The host's stats. A host too busy to answer within its verb deadline
    (ETIMEDOUT: many VMs under emulation) is asked again, once a second."""
    for _ in range(busy_retries):
        r = request(path, {"verb": "stats"})
        if r.get("code") != "ETIMEDOUT":
            break
        time.sleep(1)
    if not r.get("ok"):
        raise RuntimeError(f"stats failed: {r}")
    return r


def vm_of(st, name):
    return next((v for v in st["vms"] if v["name"] == name), None)


def wait_state(path, vm, pred, what, show=None, deadline_s=180, step=0.25):
    """Wait until the host reaches a state: poll the stats until pred(sample)
    holds, the sample being VM vm's entry (the whole stats with vm=None), and
    check(held, what). show(sample) gives the figures that matter, printed
    after what; a check that gives up prints the last sample it saw (all of
    it without show). A host that stops answering ends the wait. Returns
    (held, last sample)."""
    gone, seen = [], [None]

    def sample():
        try:
            st = stats(path)
        except OSError as e:
            gone.append(e)
            return seen[0]
        seen[0] = vm_of(st, vm) if vm else st
        return seen[0]

    t0 = time.monotonic()
    ok, last = wait_until(sample, lambda s: gone or (s is not None and pred(s)), deadline_s, step)
    ok = bool(ok and not gone)
    shown = (show(last) if show else json.dumps(last, sort_keys=True)) if last is not None else None
    if ok:
        text = what + (f" ({shown})" if show else "")
    else:
        why = (f"the host stopped answering: {gone[0]}" if gone else
               f"gave up after {time.monotonic() - t0:.0f} s")
        text = f"{what} [{why}; last seen: {shown}]"
    check(ok, text)
    return ok, last


def host_config(dirname, cfg):
    path = os.path.join(dirname, "host.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def no_verify_fail(host, what):
    fails = [l for l in host.stdout() if "verify FAIL" in l]
    return check(not fails, f"{what}: no guest reports verify FAIL ({fails[:3]})")
