"""Shared by the bench scripts: the control-socket client, result lines, and
the accelerator the figures come from (every script takes `--accel NAME`)."""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

# The accelerator of the figures this script emits (take_accel sets it).
ACCEL = None


def kvm_here():
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def resolve(accel):
    """What `auto` means on this machine, as kvmem decides it."""
    if accel == "auto":
        return "kvm" if kvm_here() else "thread"
    return accel


def take_accel(argv=sys.argv, default="auto"):
    """Remove `--accel NAME` from argv (the positional arguments stay where
    they were) and return the accelerator it names, resolved; it also goes
    into every line emit() prints."""
    global ACCEL
    name = default
    if "--accel" in argv:
        i = argv.index("--accel")
        if i + 1 >= len(argv):
            sys.exit("--accel needs a name: auto, kvm or thread")
        name = argv[i + 1]
        del argv[i:i + 2]
    if name not in ("auto", "kvm", "thread"):
        sys.exit(f"--accel {name}: must be auto, kvm or thread")
    ACCEL = resolve(name)
    return ACCEL


def cmd(kvmem, sub, *args, accel=None):
    """The kvmem command line for `run` or `host` on this script's accelerator."""
    return [kvmem, sub, "--accel", accel or ACCEL or "auto", *args]


def request(path, req, timeout=30):
    """One request to a kvmem control socket; returns the decoded reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall((json.dumps(req) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)


def emit(name, unit, value, config, **extra):
    """One machine-readable result line: name, unit, value, config (+ ref etc.).
    A float value is rounded to 4 places; others (series, objects) go as they are."""
    if isinstance(value, float):
        value = round(value, 4)
    line = {"name": name, "unit": unit, "value": value, "config": config}
    if ACCEL and "accel" not in extra:
        line["accel"] = ACCEL
    line.update(extra)
    print(json.dumps(line), flush=True)


def take_opt(flag, default, argv=sys.argv):
    """Remove `FLAG VALUE` from argv and return VALUE (default when absent)."""
    if flag in argv:
        i = argv.index(flag)
        if i + 1 >= len(argv):
            sys.exit(f"{flag} needs a value")
        v = argv[i + 1]
        del argv[i:i + 2]
        return v
    return default


class Host:
    """A kvmem host process whose output (console and log) is kept line by line."""

    def __init__(self, args):
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def count(self, s):
        return sum(1 for l in list(self.lines) if s in l)

    def wait(self, s, n=1, deadline=300, step=0.1):
        end = time.monotonic() + deadline
        while time.monotonic() < end and self.p.poll() is None:
            if self.count(s) >= n:
                return True
            time.sleep(step)
        return self.count(s) >= n

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
        try:
            self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()


def wait_sock(path, deadline=60):
    """Wait until a host answers on its control socket."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            request(path, {"verb": "list"}, timeout=5)
            return True
        except OSError:
            time.sleep(0.1)
    return False


def rss_split(pid, guest_min_bytes):
    """A process's RSS and the part of it in guest RAM, in KiB: guest RAM is every mapping of
    guest_min_bytes or more (each VM's RAM region; the binary, libraries, heap and stacks
    are far smaller), from the kernel's per-VMA figures in /proc/PID/smaps."""
    total = guest = size = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                size = hi - lo
            elif line.startswith("Rss:"):
                kib = int(line.split()[1])
                total += kib
                if size >= guest_min_bytes:
                    guest += kib
    return total, guest


def read(path):
    """A sysfs or procfs file's content, stripped."""
    with open(path) as f:
        return f.read().strip()


def write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def memory_cgroup():
    """The directory of the memory cgroup this process is in, and its limit file (v1, else v2)."""
    v2 = None
    with open("/proc/self/cgroup") as f:
        for line in f:
            n, ctrl, path = line.rstrip("\n").split(":", 2)
            if ctrl == "memory":
                return "/sys/fs/cgroup/memory" + path.rstrip("/"), "memory.limit_in_bytes"
            if n == "0" and not ctrl:
                v2 = "/sys/fs/cgroup" + path.rstrip("/")
    return v2, "memory.max"
