"""Shared helpers for kvmem integration tests: run the real binary, its guests
on the accelerator KVMEM_ACCEL names (kvm or thread; every run/host command
gets --accel), so the whole suite runs once per accelerator.

Tests assert outcomes (exit status, guest verification lines, figures the
kernel reports), never timing: every wait is a poll with a generous deadline
that only exists so a broken build fails instead of hanging.
"""
import os
import subprocess
import sys
import time

KVMEM = os.environ.get("KVMEM", "build/kvmem")
GUEST = os.environ.get("KVMEM_GUEST", "build/src/guest/kvmem-guest.elf")
ACCEL = os.environ.get("KVMEM_ACCEL", "auto")

failures = []


def check(cond, what):
    """Record one assertion; print it like a test line."""
    print(("ok     " if cond else "FAIL   ") + what, flush=True)
    if not cond:
        failures.append(what)
    return cond


def require_accel():
    """Skip (status 77, meson's SKIP) with the reason when the accelerator is missing."""
    print(f"accelerator: {ACCEL}", flush=True)
    if ACCEL == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("SKIP   /dev/kvm is missing: the kvm accelerator cannot run here (the thread "
              "suite covers the same tests; the nested SVM VM runs the kvm one)", flush=True)
        sys.exit(77)


def require_root(why):
    """Skip (status 77) unless root, saying what needs it."""
    if os.geteuid() != 0:
        print(f"SKIP   needs root: {why}", flush=True)
        sys.exit(77)


def fault_points():
    """The fault injection points this kvmem has (kvmem --fault-points), and None with the
    reason where it has none (a build without -Dfault_injection=true)."""
    r = subprocess.run([KVMEM, "--fault-points"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return None, r.stderr.strip()
    return [l.split()[0] for l in r.stdout.splitlines() if l.strip()], None


def with_accel(args):
    """args with --accel ACCEL after a run/host subcommand that names none."""
    if args and args[0] in ("run", "host") and "--accel" not in args:
        return [args[0], "--accel", ACCEL] + list(args[1:])
    return list(args)


def run(args, timeout=240, **kw):
    """Run kvmem to completion; returns CompletedProcess (text)."""
    return subprocess.run([KVMEM] + with_accel(args), capture_output=True, text=True,
                          timeout=timeout, **kw)


def spawn(args, **kw):
    return subprocess.Popen([KVMEM] + with_accel(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for(pred, deadline_s=120, step=0.2):
    """Poll pred() until it returns a truthy value or the deadline passes."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    ran_out(deadline_s)
    return None


def ran_out(deadline_s):
    """Say where a wait ran out: a wait that always does (one asking for the wrong thing)
    passes its checks all the same and only costs its deadline, every run."""
    f = sys._getframe(2)
    while f and os.path.basename(f.f_code.co_filename) in ("kvmemtest.py", "ctlhelp.py"):
        f = f.f_back
    where = f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}" if f else "?"
    print(f"info   a wait of {deadline_s} s ran out ({where})", flush=True)


def wait_until(sample, pred, deadline_s=180, step=0.25):
    """Poll sample() until pred(value) holds or the deadline passes; returns
    (held, the last value sampled), so a check that gives up can say what it
    saw last. The value is always sampled once more after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        last = sample()
        if pred(last):
            return True, last
        if time.monotonic() >= end:
            ran_out(deadline_s)
            return False, last
        time.sleep(step)


def finish():
    total = len(failures)
    print(f"{'all checks passed' if not total else str(total) + ' check(s) failed'}", flush=True)
    sys.exit(1 if total else 0)
