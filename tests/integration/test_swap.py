"""Host swap: a guest swapped out by the `swap` verb keeps its memory.

1. A host without swap: the verb says ENODEV, the stats have no swap.
2. A host with a 1 GiB swap file on a disk filesystem (a temporary directory
   next to the build, else under /var/tmp; never tmpfs) runs a 256 MiB guest
   whose workload fills 200 MiB of pages of its own, reads and rewrites
   some of them all the time (each read checks the page) and verifies all
   of them every 15 s. Dedup is off (shared pages are not swapped). Right
   after a verification the verb swaps it down to 64 MiB: its resident
   memory falls below 100 MiB with more than 100 MiB in swap, the guest's
   touches read pages back (swap_ins), and its verifications, which read
   every page, find every page as it wrote it. Swapped out again and
   paused, the VM's page states all match its mappings (memcheck), and no
   write or read of the swap file failed. `kvmem swap` and `kvmem stat` show
   the same.
3. Two VMs, one swapped out, and then its swap file cut to nothing behind
   the host's back: reading a page back fails, and that VM alone stops
   with the reason (never a page of zeros) while the other runs on.
4. A swap file of 8 MiB on a small tmpfs (allowed for tests only: without
   allow_tmpfs the host refuses tmpfs): the verb fills it and answers that
   the file is full, and the guest still verifies all its memory (nothing
   was dropped that was not written). Skipped when a tmpfs cannot be
   mounted (not root).

Every wait is a poll with a generous deadline; nothing asserts on timing."""
import atexit
import os
import shutil
import subprocess
import tempfile

from kvmemtest import check, finish, require_accel, run, wait_for
from ctlhelp import (Host, host_config, no_verify_fail, request, stats, tmpdir, vm_of,
                     wait_socket, wait_state)
from swaphelp import (MIB, PAGE, disk_dir, host_swap, resume_and_read_back, show_vm, swap_host,
                      swap_out)

MEM, FILL, TO = 256, 200, 64           # MiB: the VM's RAM, its fill, what the verb swaps it to
WL = f"kvmem.wl=size={FILL},id=7,read=1,rate=1,verify=15,then=sleep"
VERIFY = r"kvmem-wl: verify ok \d+$"
HOST_SWAP_KEYS = ("file_bytes", "used_bytes", "swap_outs", "swap_ins", "discarded",
                  "write_errors", "read_errors", "full", "engine", "pool")

require_accel()


def one_vm_host(dirname, swap, vms=None):
    """A host with dedup off and the given swap object (or none), of one VM "a"
    unless vms says otherwise."""
    return swap_host(dirname, swap, vms or [{"name": "a", "mem": f"{MEM}M", "append": WL}])


def wait_fill(h):
    ok = h.wait_line(r"kvmem-wl: filled \d+ in", deadline_s=300) and h.wait_line(VERIFY, 1, 300)
    check(ok, f"the guest filled {FILL} MiB and verified it")
    return ok


def next_verify(h):
    """Wait for the guest's next full verification: the verb runs right after
    one, so the guest reads only a few pages back before the following one."""
    return h.wait_line(VERIFY, h.count(VERIFY) + 1, 120)


# ---- 1. No swap configured ----------------------------------------------------------------
d = tmpdir()
sock = os.path.join(d, "n.sock")
h = Host(["run", "--mem", "64M", "--socket", sock, "--dedup", "off",
          "--append", "kvmem.wl=size=8,then=sleep"])
try:
    check(wait_socket(h, sock), "a host without swap serves its control socket")
    r = request(sock, {"verb": "swap", "vm": "vm0", "to": "32M"})
    check(r.get("ok") is False and r.get("code") == "ENODEV" and "no swap" in r.get("error", ""),
          f"without swap the verb says ENODEV, clearly ({r})")
    st = stats(sock)
    check("swap" in st["host"] and st["host"]["swap"] is None,
          f"without swap the host's swap figures are null ({st['host'].get('swap', 'absent')})")
    check("swap" not in vm_of(st, "vm0"), "without swap a VM has no swap object")
finally:
    h.stop()

# ---- 1b. Malformed swap settings: one line naming the problem, status 2 -------------------
for swap, says in (({"path": "/var/tmp", "size": 512}, 'swap.size 512: give the unit'),
                   ({"path": "/var/tmp", "sise": "1G"}, "swap.sise: unknown field"),
                   ({"size": "1G"}, "swap.path: missing"),
                   ({"path": "/var/tmp", "size": "6000B"}, "swap.size: must be a multiple of 4K"),
                   ({"path": "/var/tmp", "allow_tmpfs": "yes"}, "swap.allow_tmpfs: must be"),
                   ({"path": "/var/tmp", "pool": 64}, 'swap.pool 64: give the unit'),
                   ("/var/tmp", "swap: must be an object")):
    cfg = host_config(d, {"swap": swap, "vms": [{"name": "a", "mem": "64M"}]})
    r = run(["host", "--config", cfg], timeout=60)
    err = r.stderr.strip().splitlines()
    check(r.returncode == 2 and len(err) == 1 and says in err[0],
          f"config swap {swap}: status 2, one line saying {says!r} ({r.returncode}, {err})")
for arg, says in (("/var/tmp,12X", "--swap SIZE 12X"), (",1G", "no path"),
                  ("/var/tmp,0", "multiple of 4 KiB above 0"),
                  ("/var/tmp --swap-pool 5000B", "--swap-pool 5000B: not a multiple of 4 KiB")):
    r = run(["run", "--mem", "64M", "--swap"] + arg.split(), timeout=60)
    err = r.stderr.strip().splitlines()
    check(r.returncode == 2 and len(err) == 1 and says in err[0],
          f"--swap {arg}: status 2, one line saying {says!r} ({r.returncode}, {err})")
r = run(["run", "--mem", "64M", "--swap-pool", "64M"], timeout=60)
check(r.returncode == 2 and "needs --swap" in r.stderr,
      f"--swap-pool without --swap: status 2 ({r.returncode}, {r.stderr.strip()})")

# ---- 2. A swap file on a disk ----------------------------------------------------------------
ddir, dfs = disk_dir()
if not check(ddir is not None, f"a directory on a disk filesystem for the swap file ({dfs})"):
    finish()
print(f"info   swap file in {ddir} ({dfs})", flush=True)
d = tmpdir()
h, sock = one_vm_host(d, {"path": ddir, "size": "1G", "pool": "16M"})
try:
    hs = host_swap(sock)
    check(isinstance(hs, dict) and all(k in hs for k in HOST_SWAP_KEYS) and
          hs["file_bytes"] == 1 << 30 and hs["engine"] in ("io_uring", "threads") and hs["used_bytes"] == 0 and
          hs["pool"]["size_bytes"] == 16 * MIB and hs["pool"]["pages"] == 0,
          f"stats: the host's swap object ({hs})")
    check(os.listdir(ddir) == [], f"the swap file has no name in its directory "
          f"({os.listdir(ddir)})")
    wait_fill(h)
    v = vm_of(stats(sock), "a")
    check(v.get("swap", {}).get("swapped_bytes") == 0 and v["swap"].get("faults") == 0 and
          len(v["swap"].get("fault_hist", [])) > 0, f"stats: the VM's swap object ({v.get('swap')})")

    # Swapped out while paused: no guest touch races the swap-out, so what it
    # leaves is what the test sees, however slow the machine (a nested VM
    # writing over 9p may outlast the verb's deadline: the swap goes on, and
    # the next request continues it).
    next_verify(h)
    r = request(sock, {"verb": "pause", "vm": "a"})
    check(r.get("ok") is True, f"the VM pauses ({r})")

    def swapped_enough(v):
        return (v["resident_bytes"] < 100 * MIB and v["swap"]["swapped_bytes"] > 100 * MIB and
                v["pages"]["swapped"] > 0)

    answers = swap_out(sock, "a", f"{TO}M", swapped_enough, id=5)
    oks = [r for r in answers if r.get("ok") is True]
    check(all(r.get("ok") is True or r.get("code") == "ETIMEDOUT" for r in answers) and
          all(r.get("id") == 5 and r.get("vm") == "a" and isinstance(r.get("resident_bytes"), int)
              and isinstance(r.get("reached"), bool) for r in oks),
          f"swap to {TO} MiB answers ({answers[-1]}, {len(answers)} request(s))")
    wait_state(sock, "a", swapped_enough,
               "stats: the VM holds less than 100 MiB, more than 100 MiB of it in swap",
               show=show_vm)
    v = vm_of(stats(sock), "a")
    check(v["state"] == "paused" and v["swap"]["swapped_bytes"] > 0,
          f"paused with pages in swap ({show_vm(v)})")
    resume_and_read_back(h, sock, "a", VERIFY, "its memory")

    # The verb's refusals, like the other per-VM verbs'.
    r = request(sock, {"verb": "swap", "vm": "nosuch", "to": "1M"})
    check(r == {"ok": False, "error": 'vm "nosuch": no such VM', "code": "ENOENT"},
          f"swap of an unknown VM: the usual error ({r})")
    r = request(sock, {"verb": "swap", "vm": "a"})
    check(r.get("ok") is False and r.get("code") == "EINVAL" and "to" in r.get("error", ""),
          f"swap without a size: EINVAL naming the field ({r})")
    r = request(sock, {"verb": "verbs"})
    check("swap" in r.get("verbs", []), f"verbs lists swap ({r.get('verbs')})")

    # The CLI: kvmem swap and kvmem stat.
    # A size above what the VM holds: answered at once, on any machine.
    r = run(["swap", "--socket", sock, "--vm", "a", "--to", f"{4 * MEM}M"], timeout=60)
    check(r.returncode == 0 and r.stdout.startswith("a: swapped out "),
          f"kvmem swap ({r.returncode}, {r.stdout.strip()!r}, {r.stderr.strip()!r})")
    r = run(["stat", "--socket", sock], timeout=60)
    swap_line = [l for l in r.stdout.splitlines() if l.strip().startswith("swap:")]
    head = next((l for l in r.stdout.splitlines() if l.startswith("NAME")), "")
    check(r.returncode == 0 and len(swap_line) == 1 and "file_bytes 1.0 GiB" in swap_line[0] and
          ("engine io_uring" in swap_line[0] or "engine threads" in swap_line[0]),
          f"kvmem stat shows the host's swap line ({r.returncode}, {swap_line})")
    check(head.split().count("SWAP") == 1 and "SWAP_SWAPPED" not in head,
          f"kvmem stat shows swapped bytes in one SWAP column ({head!r})")

    check(h.wait_line(VERIFY, h.count(VERIFY) + 1, 300), "the guest verifies all its memory again")
    no_verify_fail(h, "swapped out, paused, checked and resumed")
    hs = host_swap(sock)
    print(f"info   swap figures: {hs}", flush=True)
    check(hs["write_errors"] == 0 and hs["read_errors"] == 0 and hs["full"] == 0,
          f"no write or read of the swap file failed, and it never filled ({hs})")
    check(hs["swap_outs"] > 100 * MIB // PAGE and hs["swap_ins"] > 0,
          f"the figures count what went out and came back ({hs['swap_outs']} out, "
          f"{hs['swap_ins']} in)")
    v = vm_of(stats(sock), "a")["swap"]
    print(f"info   a's swap figures: {v}", flush=True)
    check(v["swap_outs"] > 100 * MIB // PAGE and v["faults"] > 0 and
          sum(v["fault_hist"]) > 0 and 0 < v["fault_p50_us"] <= v["fault_p99_us"],
          f"stats: the VM's own figures, its faults' service times among them "
          f"({v['swap_outs']} out, {v['faults']} faults, p50 {v['fault_p50_us']} us, "
          f"p99 {v['fault_p99_us']} us)")
finally:
    rc = h.stop()
check(rc == 0, f"the host stops cleanly ({rc}; last log lines {h.stderr()[-3:]})")
check(h.alive() is False and os.listdir(ddir) == [], "no swap file is left behind")

# ---- 3. A swap file that cannot be read back --------------------------------------------------
# Two VMs; "a" is swapped out, then the swap file is cut to nothing behind the host's back
# (through /proc/PID/fd: it has no name), so reading a page back fails as on a dead disk.
# "a" must stop, alone, with the reason; "b" runs on; never a page of zeros.
# The file lives under /tmp here, tmpfs or not (allowed for tests): a file of a disk shared over
# 9p (the nested VM's) cannot be reopened through /proc once unlinked, and cutting it is all
# this part needs.
ddir = tempfile.mkdtemp(prefix="kvmem-swap-")
atexit.register(shutil.rmtree, ddir, True)
d = tmpdir()
small = "kvmem.wl=size=64,id={},read=1,verify=5,then=sleep"
h, sock = one_vm_host(d, {"path": ddir, "size": "256M", "allow_tmpfs": True},
                    [{"name": n, "mem": "128M", "append": small.format(i + 1)}
                     for i, n in enumerate("ab")])
try:
    check(h.wait_line(r"^\[a\] " + VERIFY, 1, 300) and
          h.wait_line(r"^\[b\] " + VERIFY, 1, 300), "both guests filled and verified")
    r = swap_out(sock, "a", "16M", lambda v: v["swap"]["swapped_bytes"] > 32 * MIB)[-1]
    v = vm_of(stats(sock), "a")
    check(r.get("ok") is True and v["swap"]["swapped_bytes"] > 32 * MIB,
          f"a swapped out ({r}; {show_vm(v)})")
    cut = []
    for n in os.listdir(f"/proc/{h.p.pid}/fd"):
        try:
            target = os.readlink(f"/proc/{h.p.pid}/fd/{n}")
        except OSError:
            continue
        if target.startswith(ddir + "/"):
            fd = os.open(f"/proc/{h.p.pid}/fd/{n}", os.O_RDWR)
            os.ftruncate(fd, 0)
            os.close(fd)
            cut.append(target)
    check(len(cut) == 1, f"the swap file is cut to nothing ({cut})")
    ok, v = wait_state(sock, "a", lambda v: v["state"] == "stopped" and "error" in v["swap"],
                       "a stops, its swap object saying why",
                       show=lambda v: f"{v['state']}, {v['swap']}")
    check(ok and "cannot be read back" in v["swap"]["error"],
          f"the reason names the page that could not be read ({v['swap'].get('error')})")
    hs = host_swap(sock)
    check(hs["read_errors"] > 0, f"stats: the failed read is counted ({hs})")
    # The stats may show the error before the log line reaches us: wait for it.
    check(wait_for(lambda: any("a: swap: " in l and "stopping the VM" in l for l in h.stderr()),
                   60), f"the log names the VM and the reason ({h.stderr()[-3:]})")
    b0 = len([l for l in h.stdout() if l.startswith("[b] ") and "verify ok" in l])
    check(h.wait_line(r"^\[b\] kvmem-wl: verify ok", b0 + 2, 120), "b runs on and verifies")
    v = vm_of(stats(sock), "b")
    check(v["state"] == "running", f"b is still running ({v['state']})")
    check(not [l for l in h.stdout() if "verify FAIL" in l],
          "no guest verified a page of zeros or anything else it did not write")
finally:
    rc = h.stop()
check(rc == 1, f"the host exits 1, a VMM failure of a's ({rc})")

# ---- 4. A swap file that fills (tmpfs, for tests only) ------------------------------------
mnt = tempfile.mkdtemp(prefix="kvmem-swap-tmpfs-")
atexit.register(shutil.rmtree, mnt, True)
m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16M,mode=0700", "kvmem-test", mnt],
                   capture_output=True, text=True)
if m.returncode != 0:
    print(f"SKIP   the full swap file: cannot mount a tmpfs ({m.stderr.strip() or m.returncode}; "
          f"needs root)", flush=True)
    finish()
atexit.register(subprocess.run, ["umount", "-l", mnt], capture_output=True)
d = tmpdir()
cfg = host_config(d, {"socket": os.path.join(d, "r.sock"), "swap": {"path": mnt, "size": "8M"},
                      "vms": [{"name": "a", "mem": f"{MEM}M", "append": WL}]})
r = run(["host", "--config", cfg], timeout=120)
err = r.stderr.strip().splitlines()
check(r.returncode == 2 and len(err) == 1 and "tmpfs" in err[0] and mnt in err[0],
      f"a swap file on tmpfs is refused on one line, status 2 ({r.returncode}, {err})")
h, sock = one_vm_host(d, {"path": mnt, "size": "8M", "allow_tmpfs": True})
try:
    wait_fill(h)
    next_verify(h)
    r = request(sock, {"verb": "swap", "vm": "a", "to": f"{TO}M"}, timeout=60)
    check(r.get("ok") is False and r.get("code") == "ENOSPC" and "full" in r.get("error", ""),
          f"swap into a file too small: an error saying it is full ({r})")
    hs = host_swap(sock)
    check(hs["full"] > 0 and hs["write_errors"] == 0 and hs["used_bytes"] <= hs["file_bytes"] and
          hs["swap_outs"] > 0, f"stats: the file filled, no write failed ({hs})")
    check(h.wait_line(VERIFY, h.count(VERIFY) + 2, 180),
          "the guest verifies all its memory twice more: nothing was lost")
    no_verify_fail(h, "a swap file that filled")
    hs = host_swap(sock)
    check(hs["read_errors"] == 0, f"no read of the swap file failed ({hs})")
finally:
    rc = h.stop()
check(rc == 0, f"the host stops cleanly ({rc})")
subprocess.run(["umount", mnt], capture_output=True)
finish()
