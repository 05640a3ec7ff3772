"""The workload engine as a Linux program (src/guest/linux: kvmem-linux-wl), run on
this host as an ordinary process: no VM, so on every machine. What a Linux guest's
init runs from its command line (tests/linux/init.c) is the same program, and
test_linux_boot checks it there.

It prints the kvmem guest's kvmem-wl: lines and exits with the kvmem guest's
power-off status: a fill with dup and zero pages verified; a hot set rewritten,
read and moved at a rate for time= seconds; then=free giving the pages back to
Linux (the program's RAM measured in /proc/PID/smaps) and idling; a page
corrupted from outside (through /proc/PID/mem, as a host could scribble on a
guest's page) found by the next verification, status 1; a bad spec, no spec and
a spec larger than memory, statuses 2 and 3.

Run by meson (suite unit) with KVMEM_LINUX_WL set to the built program."""
import os
import re
import struct
import subprocess
import sys
import threading
import time

from kvmemtest import check, finish

PROG = os.environ.get("KVMEM_LINUX_WL", "build/src/guest/linux/kvmem-linux-wl")
# Generous: a loaded CI machine and a sanitizer build; none of the checks is on timing.
DEADLINE_S = 120
PAGE = 4096
# The gpa the program gives its memory (src/guest/linux/arena.h).
ARENA_GPA = 1 << 32
LINE = re.compile(r"^kvmem-(wl|linux-wl): ")

if not os.access(PROG, os.X_OK):
    print(f"FAIL   no program {PROG} (KVMEM_LINUX_WL names it)", flush=True)
    sys.exit(1)


class Run:
    """One run of the program, its lines collected as they come."""

    def __init__(self, *args):
        self.p = subprocess.Popen([PROG, *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.err = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for l in self.p.stdout:
            self.lines.append(l.rstrip("\n"))

    def said(self, pattern):
        rx = re.compile(pattern)
        return next((m for m in (rx.search(l) for l in list(self.lines)) if m), None)

    def all(self, pattern):
        rx = re.compile(pattern)
        return [m for m in (rx.search(l) for l in list(self.lines)) if m]

    def wait_line(self, pattern):
        """The first line matching, once it came; None if the program ended without it
        or the deadline passed."""
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            m = self.said(pattern)
            if m:
                return m
            if self.p.poll() is not None:
                self.reader.join()
                return self.said(pattern)
            time.sleep(0.05)
        print(f"info   no line {pattern!r} in {DEADLINE_S} s", flush=True)
        return None

    def wait(self):
        """The exit status, once the program ended and its lines are all read."""
        try:
            rc = self.p.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        self.reader.join()
        self.err = self.p.stderr.read()
        return rc

    def kill(self):
        self.p.kill()
        return self.wait()

    def show(self):
        print("info   output:\n       " + "\n       ".join(self.lines[-30:]), flush=True)
        if self.err.strip():
            print("info   stderr: " + self.err.strip()[-2000:], flush=True)

    def arena(self):
        """The program's memory: its host address and its gpa's base."""
        m = self.wait_line(r"^kvmem-linux-wl: (\d+) cpus, (\d+) MiB at (0x[0-9a-f]+) "
                           r"\(gpa (0x[0-9a-f]+)\)$")
        return (int(m.group(3), 16), int(m.group(4), 16)) if m else (None, None)

    def rss_kib(self, addr):
        """Resident KiB of the mapping that holds addr (/proc/PID/smaps)."""
        inside = False
        with open(f"/proc/{self.p.pid}/smaps") as f:
            for l in f:
                m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", l)
                if m:
                    inside = int(m.group(1), 16) <= addr < int(m.group(2), 16)
                elif inside and l.startswith("Rss:"):
                    return int(l.split()[1])
        return None


def common(r, rc, pages, what):
    """What every workload that ends says: whole lines, the fill, its verification, done."""
    ok = check(rc == 0, f"{what}: status 0 (status {rc})")
    ok &= check(all(LINE.match(l) for l in r.lines),
                f"{what}: every line whole, a kvmem-wl: or kvmem-linux-wl: line")
    ok &= check(r.said(rf"^kvmem-wl: filled {pages // 256} in \d+ ms$") is not None,
                f"{what}: kvmem-wl: filled {pages // 256}")
    ok &= check(r.said(rf"^kvmem-wl: verify ok {pages}$") is not None,
                f"{what}: kvmem-wl: verify ok {pages}")
    ok &= check(r.said(r"^kvmem-wl: done$") is not None, f"{what}: kvmem-wl: done")
    m = r.said(r"^kvmem-linux-wl: (\d+) cpus")
    cpus = int(m.group(1)) if m else 0
    shares = [int(m.group(2)) for m in r.all(r"^kvmem-wl: cpu (\d+) pages (\d+)$")]
    ok &= check(cpus >= 1 and (shares == [] if cpus == 1 else
                               len(shares) == cpus and sum(shares) == pages),
                f"{what}: the pages shared out over the {cpus} CPUs, a thread each ({shares})")
    return ok


# A fill of every page class, verified once.
r = Run("size=16,dup=30,zero=20,id=3,seed=0x1234")
rc = r.wait()
ok = common(r, rc, 4096, "dup and zero pages")
ok &= check(r.said(r"^kvmem-wl: size 16 MiB \(4096 pages\) dup 30% zero 20% unique 50% id 3 "
                   r"seed 0x1234$") is not None, "the mix as the kvmem guest says it")
if not ok:
    r.show()

# A hot set rewritten, read and moved at a rate, for time= seconds.
r = Run("size=64,id=1,rate=4,read=16,churn=1,hot=10,time=3,report=1")
rc = r.wait()
ok = common(r, rc, 16384, "rate, read and churn for 3 s")
ok &= check(len(r.all(r"^kvmem-wl: verify ok 16384$")) == 2,
            "verified after the fill and again after time=")
m = r.said(r"^kvmem-wl: rewrites (\d+) reads (\d+) moves (\d+) \((\d+) without a free page\) "
           r"cold reads 0$")
ok &= check(m is not None and all(int(m.group(i)) > 0 for i in (1, 2, 3)) and m.group(4) == "0",
            f"pages rewritten, read and moved ({m.group(0) if m else 'no such line'})")
ok &= check(len(r.all(r"^kvmem-wl: progress \d+ ms ops \d+$")) >= 1, "report= progress lines")
if not ok:
    r.show()

# then=free: the pages go back to palloc, and from there to Linux; the program idles.
r = Run("size=32,id=2,hold=3,then=free")
base, _ = r.arena()
m = r.wait_line(r"^kvmem-linux-wl: palloc .* bitmap (\d+) KiB$")
bitmap_kib = int(m.group(1)) if m else 0
held = r.wait_line(r"^kvmem-wl: hold 3 s$")
rss_held = r.rss_kib(base) if held and base else None
idle = r.wait_line(r"^kvmem-linux-wl: idle, free pages given back to Linux$")
rss_idle = r.rss_kib(base) if idle and base else None
running = r.p.poll() is None
rc = r.kill()
ok = check(r.said(r"^kvmem-wl: verify ok 8192$") is not None and
           r.said(r"^kvmem-wl: freed 32$") is not None, "then=free: filled, verified, freed")
ok &= check(rss_held is not None and rss_held >= 32 * 1024,
            f"the filled pages are resident while held ({rss_held} KiB)")
ok &= check(rss_idle is not None and rss_idle <= bitmap_kib + 1024,
            f"given back to Linux once freed: palloc's bitmap ({bitmap_kib} KiB) is about "
            f"what stays ({rss_idle} KiB)")
ok &= check(running, "the program idles after then=free, as a kvmem guest does")
if not ok:
    r.show()

# A page corrupted from outside: the next verification finds it, and the status says so.
r = Run("size=16,verify=1,time=600")
base, gpa_base = r.arena()
m = r.wait_line(r"^kvmem-linux-wl: palloc .* bitmap (\d+) KiB$")
first = r.wait_line(r"^kvmem-wl: verify ok 4096$")
# The slots' pages follow palloc's bitmap and the engine's few metadata pages: 8 MiB on
# is the middle of the fill.
wrote = None
if base is not None and m and first:
    off = int(m.group(1)) * 1024 + 8 * 1024 * 1024
    word = 0x6b766d656d2d6c78
    try:
        with open(f"/proc/{r.p.pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(base + off)
            mem.write(struct.pack("<Q", word))
        wrote = (gpa_base + off) // PAGE, word
    except OSError as e:
        print(f"info   SKIP the corrupted page: this kernel refuses writes to "
              f"/proc/PID/mem ({e})", flush=True)
if wrote:
    rc = r.wait()
    gfn, word = wrote
    ok = check(rc == 1, f"a corrupted page ends the workload with status 1 (status {rc})")
    ok &= check(r.said(rf"^kvmem-wl: verify FAIL 0x{gfn:x}$") is not None,
                f"kvmem-wl: verify FAIL names the page's gfn 0x{gfn:x}")
    ok &= check(r.said(rf"^kvmem-wl: 1 bad pages; first: slot \d+ class unique index \d+ "
                       rf"version 0 offset 0 expected 0x[0-9a-f]{{16}} found 0x{word:016x}$")
                is not None, "what was found there, and where")
    if not ok:
        r.show()
else:
    r.kill()

# Statuses of a workload that cannot run.
r = Run("size=4,bogus=1")
rc = r.wait()
if not check(rc == 2 and r.said(r"^kvmem-wl: bad kvmem.wl: unknown key 'bogus'$") is not None,
             f"a bad spec: said, status 2 (status {rc})"):
    r.show()
r = Run("size=16000000")
rc = r.wait()
if not check(rc == 3 and r.said(r"^kvmem-wl: out of memory: need \d+ pages") is not None,
             f"more than this machine has: out of memory, status 3 (status {rc})"):
    r.show()
with open("/proc/cmdline") as f:
    host_has_wl = "kvmem.wl=" in f.read()
if not host_has_wl:
    r = Run()
    rc = r.wait()
    if not check(rc == 2 and r.said(r"^kvmem-linux-wl: no workload") is not None,
                 f"no spec and no kvmem.wl= in /proc/cmdline: said, status 2 (status {rc})"):
        r.show()

finish()
